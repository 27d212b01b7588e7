//! The app container's health endpoint: the kubelet probes the app through it, on
//! the pod's [`HealthArgs::health_port`] (`supervise --health-port`).
//!
//! Why not probe the app directly: the kubelet probes on a one-second tick, and a
//! startup probe's tick is not moved by anything, so a new pod became Ready up to a
//! second (half a second on average) after its app listened. Here `/ready` *holds* the
//! kubelet's request until the app first answers, and the kubelet sends that request
//! as soon as it sees the container running: the pod is Ready within milliseconds of
//! the app listening, which is what every rollout waits for.
//!
//! - `GET /ready`: until the app has answered once, waits for it until shortly
//!   before the kubelet's timeout (200, else 503); afterwards, the latest check.
//! - `GET /live`: 200 while the app is still starting, within its start allowance
//!   (what a startup probe gave it: fetch deadline + two minutes), 503 once that
//!   passed without an answer; afterwards, the latest check.
//!
//! Only [`Health::watch_app`] checks the app: every 10 ms until its first answer, then
//! once a second; no request reaches the app. A check is the app's own, where the
//! Service reaches it (the pod's IP): an HTTP GET of its health path (200–399 is
//! healthy, as for the kubelet), or, without a path, a TCP connection to its port.
//! The target is fixed by the operator's arguments; nothing in a request chooses it.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// How long one check of the app may take (the kubelet's former probe timeout).
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once, and from one address. The kubelet sends two at most
/// (readiness, liveness) from the node, but the port is on the pod's network: a
/// client must come from many pods to crowd the kubelet out (and none can where the
/// app's NetworkPolicy is on: it admits only the app's port). Probes never wait on
/// the app once it answered, so a connection lasts as long as its client takes.
const CONNECTIONS: usize = 256;
const CONNECTIONS_PER_PEER: usize = 8;
/// How long a client may take to send its request (the kubelet sends it at once).
const HEADER_TIMEOUT: Duration = Duration::from_secs(1);

/// What the operator tells `supervise` about the app's health.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// Serve `/ready` and `/live` on this port of the pod.
    #[arg(long)]
    pub health_port: Option<u16>,
    /// The app's port.
    #[arg(long, requires = "health_port")]
    pub check_port: Option<u16>,
    /// The pod's IP, where the checks reach the app as the Service does (an app
    /// listening on loopback only is not ready); loopback without it.
    #[arg(long, env = "AETHER_POD_IP")]
    pub check_host: Option<IpAddr>,
    /// The app's health path (an HTTP GET); without it, a check is a TCP connection.
    #[arg(long, requires = "check_port")]
    pub check_path: Option<String>,
    /// Seconds from the container's start the app may take to answer a first check.
    #[arg(long, default_value_t = 120)]
    pub start_seconds: u64,
    /// The kubelet's timeout for `/ready`: a request for an app that never answered
    /// is held until shortly before it.
    #[arg(long, default_value_t = 10)]
    pub ready_timeout_seconds: u64,
}

/// The app as the health endpoint sees it.
#[derive(Debug)]
pub struct Health {
    pub target: Target,
    pub path: Option<String>,
    started: Instant,
    allowance: Duration,
    hold: Duration,
    /// Kept by [`Health::watch_app`], the only one that checks the app: probes read
    /// it and never reach the app themselves.
    state: watch::Sender<State>,
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    /// The app has not answered yet: why not (the last check).
    Starting(String),
    /// It has: the latest check, once a second since.
    Answered(Result<(), String>),
}

impl Health {
    /// `allowance`: from now, for a first answer; `hold`: how long `/ready` waits
    /// for it.
    pub fn new(target: Target, path: Option<String>, allowance: Duration, hold: Duration) -> Self {
        Health {
            target,
            path,
            started: Instant::now(),
            allowance,
            hold,
            state: watch::Sender::new(State::Starting("not checked yet".into())),
        }
    }

    /// Whether the app answers one check now.
    pub async fn check(&self) -> Result<(), String> {
        let addr = SocketAddr::new(self.target.host, self.target.port.load(Ordering::SeqCst));
        match tokio::time::timeout(CHECK_TIMEOUT, check(addr, self.path.as_deref())).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
        }
    }

    /// Check the app, for as long as the process runs: until its first answer as
    /// often as is cheap, then once a second. What changes is logged (the kubelet's
    /// events say only "503").
    pub async fn watch_app(&self) {
        let mut overdue = false;
        loop {
            let result = self.check().await;
            let pause = match (self.state.borrow().clone(), &result) {
                (State::Starting(_), Ok(())) => 0,
                // Refused connections are cheap to retry; an app that answers "not
                // yet" is asked less often.
                (State::Starting(_), Err(e)) if e.starts_with("connecting") => 10,
                (State::Starting(_), Err(_)) => 100,
                (State::Answered(Ok(())), Err(e)) => {
                    eprintln!("aether-runtime: the app fails its health check: {e}");
                    1000
                }
                (State::Answered(Err(_)), Ok(())) => {
                    eprintln!("aether-runtime: the app answers its health check again");
                    1000
                }
                (State::Answered(_), _) => 1000,
            };
            let next = match (self.state.borrow().clone(), result) {
                (State::Starting(_), Err(why)) => {
                    if !overdue && self.started.elapsed() >= self.allowance {
                        overdue = true;
                        eprintln!(
                            "aether-runtime: the app has not answered within {} s of starting: {why}",
                            self.allowance.as_secs()
                        );
                    }
                    State::Starting(why)
                }
                (_, result) => State::Answered(result),
            };
            self.state.send_replace(next);
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
    }

    /// `/ready`: a request for an app that never answered waits until it does.
    pub async fn ready(&self) -> Result<(), String> {
        let mut state = self.state.subscribe();
        let answered = |s: &State| matches!(s, State::Answered(_));
        let state = match tokio::time::timeout(self.hold, state.wait_for(answered)).await {
            Ok(Ok(state)) => state.clone(),
            _ => self.state.borrow().clone(),
        };
        match state {
            State::Answered(result) => result,
            State::Starting(why) => Err(why),
        }
    }

    /// `/live`: starting is alive, within the allowance.
    pub fn live(&self) -> Result<(), String> {
        match self.state.borrow().clone() {
            State::Answered(result) => result,
            State::Starting(_) if self.started.elapsed() < self.allowance => Ok(()),
            State::Starting(why) => Err(format!(
                "the app has not answered within {} s of starting: {why}",
                self.allowance.as_secs()
            )),
        }
    }
}

/// Where the app is checked.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: IpAddr,
    /// Where the app listens now (in dev-hot mode, the current process's port).
    pub port: Arc<AtomicU16>,
}

impl Target {
    /// The app's port on the pod's IP (`--check-host`), as the Service reaches it.
    pub fn app(args: &HealthArgs) -> Self {
        Target {
            host: args.check_host.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
            port: Arc::new(AtomicU16::new(args.check_port.unwrap_or_default())),
        }
    }

    /// A port of this process's own on loopback (dev-hot mode's current process).
    pub fn loopback(port: Arc<AtomicU16>) -> Self {
        Target {
            host: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port,
        }
    }
}

/// One check of the app at `addr`.
async fn check(addr: SocketAddr, path: Option<&str>) -> Result<(), String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    let Some(path) = path else {
        return Ok(());
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, addr.to_string())
        // Apps often keep the kubelet's probes out of their access logs by this name.
        .header(hyper::header::USER_AGENT, "kube-probe (aether-runtime)")
        .header(hyper::header::ACCEPT, "*/*")
        .body(Empty::<Bytes>::new())
        .map_err(|e| format!("GET {path}: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = response.status();
    // Read what the kubelet would (10 KiB) before closing: a health path may answer
    // with a whole status dump.
    let _ = http_body_util::Limited::new(response.into_body(), 10 << 10)
        .collect()
        .await;
    if (200..400).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(format!("GET {path}: {status}"))
    }
}

/// Bind the health port on every address of the pod: IPv6 and IPv4 on one socket
/// where the pod has IPv6 (whatever the node's `bindv6only`), else IPv4.
pub fn bind(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let listen = |domain: Domain, addr: SocketAddr| -> std::io::Result<TcpListener> {
        let socket = Socket::new(domain, Type::STREAM, None)?;
        if domain == Domain::IPV6 {
            socket.set_only_v6(false)?;
        }
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(128)?;
        TcpListener::from_std(socket.into())
    };
    listen(
        Domain::IPV6,
        SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), port),
    )
    .or_else(|_| {
        listen(
            Domain::IPV4,
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port),
        )
    })
    .map_err(|e| std::io::Error::new(e.kind(), format!("listening on the health port {port}: {e}")))
}

/// Connections being served: in all, and by client address.
#[derive(Debug, Default)]
struct Peers(std::sync::Mutex<(usize, HashMap<IpAddr, usize>)>);

/// A connection's place among [`Peers`], given back when dropped.
struct Admitted<'a>(&'a Peers, IpAddr);

impl Peers {
    fn admit(&self, peer: IpAddr) -> Option<Admitted<'_>> {
        let mut guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_peer) = &mut *guard;
        let mine = by_peer.entry(peer).or_default();
        if *total >= CONNECTIONS || *mine >= CONNECTIONS_PER_PEER {
            return None;
        }
        *mine += 1;
        *total += 1;
        Some(Admitted(self, peer))
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        let mut guard = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        let (total, by_peer) = &mut *guard;
        *total -= 1;
        if let Some(n) = by_peer.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                by_peer.remove(&self.1);
            }
        }
    }
}

/// Answer probes on `listener` for as long as the process runs.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    let peers = Arc::new(Peers::default());
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(_) => {
                // Out of file descriptors, say: wait rather than spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (health, peers) = (health.clone(), peers.clone());
        tokio::spawn(async move {
            let Some(_admitted) = peers.admit(peer.ip()) else {
                return; // far more than the kubelet sends: not probes
            };
            let service = hyper::service::service_fn(move |req| respond(req, health.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(req: Request<Incoming>, health: Arc<Health>) -> Result<Response<Full<Bytes>>, Infallible> {
    let result = match req.uri().path() {
        "/ready" => Some(health.ready().await),
        "/live" => Some(health.live()),
        _ => None,
    };
    let (status, body) = match result {
        Some(Ok(())) => (StatusCode::OK, "ok\n".to_string()),
        Some(Err(why)) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        None => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    Ok(response)
}

/// Start answering probes, if the operator asked for it, for the app at `target`.
pub fn start(args: &HealthArgs, target: Target) -> std::io::Result<()> {
    let Some(port) = args.health_port else {
        return Ok(());
    };
    let listener = bind(port)?;
    let health = Health::new(
        target,
        args.check_path.clone(),
        Duration::from_secs(args.start_seconds),
        // Room for the last check and the answer within the kubelet's timeout.
        Duration::from_secs(args.ready_timeout_seconds)
            .saturating_sub(CHECK_TIMEOUT + Duration::from_secs(1)),
    );
    let health = Arc::new(health);
    let checker = health.clone();
    tokio::spawn(async move { checker.watch_app().await });
    tokio::spawn(serve(listener, health));
    Ok(())
}

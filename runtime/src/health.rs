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
//!   before the kubelet's timeout (200, else 503); afterwards, one check now.
//! - `GET /live`: 200 while the app is still starting, within its start allowance
//!   (what a startup probe gave it: fetch deadline + two minutes), 503 once that
//!   passed without an answer; afterwards, one check now.
//!
//! A check is the app's own: an HTTP GET of its health path on its port (200–399 is
//! healthy, as for the kubelet), or, without a path, a TCP connection to the port.
//! The target is fixed by the operator's arguments; nothing in a request chooses it.

use std::convert::Infallible;
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
/// Connections served at once. The kubelet sends two at most (readiness,
/// liveness), but the port is on the pod's network: a bound that anyone able to
/// reach it must flood, like the app's own port, to crowd the kubelet out. (The
/// app's NetworkPolicy admits only the app's port.)
const CONNECTIONS: usize = 512;
/// How long a client may take to send its request (the kubelet sends it at once).
const HEADER_TIMEOUT: Duration = Duration::from_secs(2);

/// What the operator tells `supervise` about the app's health.
#[derive(Debug, Clone, clap::Args)]
pub struct HealthArgs {
    /// Serve `/ready` and `/live` on this port of the pod.
    #[arg(long)]
    pub health_port: Option<u16>,
    /// The app's port, which the checks reach on loopback.
    #[arg(long, requires = "health_port")]
    pub check_port: Option<u16>,
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
    /// Where the app listens now (in dev-hot mode, the current process's port).
    pub port: Arc<AtomicU16>,
    pub path: Option<String>,
    started: Instant,
    allowance: Duration,
    hold: Duration,
    /// Until the app first answers: why not yet (from [`Health::await_first_answer`]);
    /// then None.
    starting: watch::Sender<Option<String>>,
}

impl Health {
    /// `allowance`: from now, for a first answer; `hold`: how long `/ready` waits
    /// for it.
    pub fn new(port: Arc<AtomicU16>, path: Option<String>, allowance: Duration, hold: Duration) -> Self {
        Health {
            port,
            path,
            started: Instant::now(),
            allowance,
            hold,
            starting: watch::Sender::new(Some("not checked yet".into())),
        }
    }

    /// Whether the app answers one check now.
    pub async fn check(&self) -> Result<(), String> {
        let port = self.port.load(Ordering::SeqCst);
        match tokio::time::timeout(CHECK_TIMEOUT, check(port, self.path.as_deref())).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
        }
    }

    /// Check the app until it first answers: one poller however many probes wait.
    pub async fn await_first_answer(&self) {
        loop {
            let result = self.check().await;
            // Refused connections are cheap to retry; an app that answers "not yet"
            // is asked less often.
            let pause = match &result {
                Ok(()) => break,
                Err(e) if e.starts_with("connecting") => 10,
                Err(_) => 100,
            };
            self.starting.send_replace(result.err());
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        self.starting.send_replace(None);
    }

    /// `/ready`: a request for an app that never answered waits until it does.
    pub async fn ready(&self) -> Result<(), String> {
        let mut starting = self.starting.subscribe();
        if starting.borrow().is_none() {
            return self.check().await;
        }
        match tokio::time::timeout(self.hold, starting.wait_for(Option::is_none)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(self.starting.borrow().clone().unwrap_or_default()),
        }
    }

    /// `/live`: starting is alive, within the allowance.
    pub async fn live(&self) -> Result<(), String> {
        let Some(why) = self.starting.borrow().clone() else {
            return self.check().await;
        };
        if self.started.elapsed() < self.allowance {
            return Ok(());
        }
        Err(format!(
            "the app has not answered within {} s of starting: {why}",
            self.allowance.as_secs()
        ))
    }
}

/// One check of the app on 127.0.0.1:`port`.
async fn check(port: u16, path: Option<&str>) -> Result<(), String> {
    let stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connecting to port {port}: {e}"))?;
    let Some(path) = path else {
        return Ok(());
    };
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header(hyper::header::HOST, format!("localhost:{port}"))
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
    // Read the body so the app is not left writing to a closed connection.
    let _ = response.into_body().collect().await;
    if (200..400).contains(&status.as_u16()) {
        Ok(())
    } else {
        Err(format!("GET {path}: {status}"))
    }
}

/// Bind the health port on every address of the pod (IPv6 and IPv4 where the pod
/// has IPv6, else IPv4).
pub async fn bind(port: u16) -> std::io::Result<TcpListener> {
    match TcpListener::bind(("::", port)).await {
        Ok(listener) => Ok(listener),
        Err(_) => TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("listening on the health port {port}: {e}"))),
    }
}

/// Answer probes on `listener` for as long as the process runs.
pub async fn serve(listener: TcpListener, health: Arc<Health>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            drop(stream); // far more than the kubelet sends: not probes
            continue;
        };
        let health = health.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| respond(req, health.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            drop(slot);
        });
    }
}

async fn respond(req: Request<Incoming>, health: Arc<Health>) -> Result<Response<Full<Bytes>>, Infallible> {
    let result = match req.uri().path() {
        "/ready" => Some(health.ready().await),
        "/live" => Some(health.live().await),
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

/// Start answering probes, if the operator asked for it: the app's port is
/// `backend` (the check port in a plain pod; the current process's in dev-hot mode).
pub async fn start(args: &HealthArgs, backend: Arc<AtomicU16>) -> std::io::Result<()> {
    let Some(port) = args.health_port else {
        return Ok(());
    };
    let listener = bind(port).await?;
    let health = Health::new(
        backend,
        args.check_path.clone(),
        Duration::from_secs(args.start_seconds),
        // Room for the last check and the answer within the kubelet's timeout.
        Duration::from_secs(args.ready_timeout_seconds)
            .saturating_sub(CHECK_TIMEOUT + Duration::from_secs(1)),
    );
    let health = Arc::new(health);
    let poller = health.clone();
    tokio::spawn(async move { poller.await_first_answer().await });
    tokio::spawn(serve(listener, health));
    Ok(())
}

//! `supervise --health-port`: the kubelet's probes, answered for the app.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `supervise` with a health port, for an app (`sleep`) that never listens itself:
/// the test plays the app on `check_port`.
fn supervise(health_port: u16, check_port: u16, start_seconds: u64, ready_timeout: u64) -> Child {
    supervise_at("127.0.0.1", health_port, check_port, start_seconds, ready_timeout)
}

/// The same, checking the app at `host` (the pod's IP in a pod).
fn supervise_at(
    host: &str,
    health_port: u16,
    check_port: u16,
    start_seconds: u64,
    ready_timeout: u64,
) -> Child {
    let child = Command::new(env!("CARGO_BIN_EXE_aether-runtime"))
        .env("AETHER_POD_IP", host)
        .args(["supervise", "--health-port", &health_port.to_string()])
        .args([
            "--check-port",
            &check_port.to_string(),
            "--check-path",
            "/healthz",
        ])
        .args(["--start-seconds", &start_seconds.to_string()])
        .args(["--ready-timeout-seconds", &ready_timeout.to_string()])
        .args(["--", "sleep", "60"])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", health_port)).is_err() {
        assert!(Instant::now() < deadline, "the health port never opened");
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// GET `path` of the health port: the status code and the body.
fn get(port: u16, path: &str) -> (u16, String) {
    get_from("127.0.0.1", port, path)
}

/// The same from the client address `from` (another loopback address).
fn get_from(from: &str, port: u16, path: &str) -> (u16, String) {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    socket.bind(&from.into()).unwrap();
    let to: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    socket.connect(&to.into()).unwrap();
    let mut s: TcpStream = socket.into();
    write!(s, "GET {path} HTTP/1.1\r\nHost: pod\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Answer HTTP on 127.0.0.1:`port` with the status in `status`, from `after` on.
fn app(port: u16, after: Duration, status: Arc<AtomicU16>) {
    app_on("127.0.0.1", port, after, status);
}

/// The same on `host`.
fn app_on(host: &'static str, port: u16, after: Duration, status: Arc<AtomicU16>) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        let listener = TcpListener::bind((host, port)).unwrap();
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let code = status.load(Ordering::SeqCst);
            let _ = write!(
                conn,
                "HTTP/1.1 {code} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
}

/// Ask until the answer has status `code` (within 5 s).
fn until(mut ask: impl FnMut() -> (u16, String), code: u16) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = ask();
        if answer.0 == code {
            return answer;
        }
        assert!(Instant::now() < deadline, "still {answer:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn ready_waits_for_the_apps_first_answer_then_reports_its_checks_at_once() {
    let (health, port) = (free_port(), free_port());
    let child = supervise(health, port, 60, 10);
    // Starting: alive, and the readiness probe is held until the app answers.
    assert_eq!(get(health, "/live").0, 200);
    let status = Arc::new(AtomicU16::new(200));
    app(port, Duration::from_millis(700), status.clone());
    let asked = Instant::now();
    assert_eq!(get(health, "/ready").0, 200);
    let waited = asked.elapsed();
    assert!(
        waited >= Duration::from_millis(600) && waited < Duration::from_secs(3),
        "answered after {waited:?}, the app listened after 700 ms"
    );
    // Once it answered, the app is checked once a second and each probe is answered
    // at once with the latest check.
    status.store(500, Ordering::SeqCst);
    let changed = Instant::now();
    let (_, body) = until(
        || {
            let asked = Instant::now();
            let answer = get(health, "/ready");
            assert!(asked.elapsed() < Duration::from_secs(1), "a probe waited");
            answer
        },
        503,
    );
    assert!(body.contains("GET /healthz: 500"), "{body}");
    assert!(changed.elapsed() < Duration::from_secs(3));
    assert_eq!(get(health, "/live").0, 503);
    status.store(204, Ordering::SeqCst);
    until(|| get(health, "/ready"), 200);
    assert_eq!(get(health, "/live").0, 200);
    assert_eq!(get(health, "/other").0, 404);
    stop(child);
}

#[test]
fn an_app_that_never_answers_is_unready_and_dead_once_its_start_allowance_passes() {
    let (health, port) = (free_port(), free_port());
    // A readiness timeout of 4 s: held 1 s (room for a check and the answer).
    let child = supervise(health, port, 2, 4);
    assert_eq!(get(health, "/live").0, 200, "starting");
    let asked = Instant::now();
    let (code, body) = get(health, "/ready");
    assert_eq!(code, 503);
    assert!(
        body.contains(&format!("connecting to 127.0.0.1:{port}")),
        "{body}"
    );
    let held = asked.elapsed();
    assert!(
        held >= Duration::from_millis(900) && held < Duration::from_secs(3),
        "held {held:?}"
    );
    std::thread::sleep(Duration::from_secs(2).saturating_sub(asked.elapsed()));
    let (code, body) = get(health, "/live");
    assert_eq!(code, 503);
    assert!(body.contains("has not answered within 2 s"), "{body}");
    stop(child);
}

/// The checks reach the app where the Service does, the pod's IP: an app listening
/// on loopback only is never ready. (127.0.0.2 plays the pod's IP: an app bound to
/// 127.0.0.1 alone does not answer there, one bound to every address does.)
#[test]
fn an_app_listening_on_loopback_only_is_not_ready() {
    let (health, port) = (free_port(), free_port());
    let child = supervise_at("127.0.0.2", health, port, 60, 4);
    app_on("127.0.0.1", port, Duration::ZERO, Arc::new(AtomicU16::new(200)));
    let (code, body) = get(health, "/ready");
    assert_eq!(code, 503);
    assert!(
        body.contains(&format!("connecting to 127.0.0.2:{port}")),
        "{body}"
    );
    stop(child);

    let (health, port) = (free_port(), free_port());
    let child = supervise_at("127.0.0.2", health, port, 60, 4);
    app_on("0.0.0.0", port, Duration::ZERO, Arc::new(AtomicU16::new(200)));
    assert_eq!(get(health, "/ready").0, 200);
    stop(child);
}

/// The port is on the pod's network: one client address holding many connections
/// does not crowd out the kubelet's, and idle ones are closed within a second.
#[test]
fn a_client_holding_connections_open_does_not_crowd_out_the_kubelet() {
    let (health, port) = (free_port(), free_port());
    let child = supervise(health, port, 60, 10);
    app(port, Duration::ZERO, Arc::new(AtomicU16::new(200)));
    assert_eq!(get(health, "/ready").0, 200);
    let idle: Vec<TcpStream> = (0..8)
        .map(|_| TcpStream::connect(("127.0.0.1", health)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // A ninth from the same address is closed unanswered ...
    let mut ninth = TcpStream::connect(("127.0.0.1", health)).unwrap();
    let _ = write!(ninth, "GET /ready HTTP/1.1\r\nHost: pod\r\n\r\n");
    let mut answer = String::new();
    let _ = ninth.read_to_string(&mut answer);
    assert_eq!(answer, "", "a ninth connection from one address was served");
    // ... while another address (the node's, for the kubelet) is answered.
    assert_eq!(get_from("127.0.0.2", health, "/ready").0, 200);
    // Connections that send nothing are closed within a second: the first address
    // is answered again.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(health, "/ready").0, 200);
    drop(idle);
    stop(child);
}

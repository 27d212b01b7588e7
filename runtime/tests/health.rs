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
    let child = Command::new(env!("CARGO_BIN_EXE_aether-runtime"))
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
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
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

/// Answer HTTP on `port` with the status in `status`, from `after` on.
fn app(port: u16, after: Duration, status: Arc<AtomicU16>) {
    std::thread::spawn(move || {
        std::thread::sleep(after);
        let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
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

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn ready_waits_for_the_apps_first_answer_then_checks_it_each_time() {
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
    // Once it answered, each probe is one check of its health path, held no more.
    status.store(500, Ordering::SeqCst);
    let asked = Instant::now();
    let (code, body) = get(health, "/ready");
    assert_eq!(code, 503);
    assert!(body.contains("GET /healthz: 500"), "{body}");
    assert!(asked.elapsed() < Duration::from_secs(1));
    assert_eq!(get(health, "/live").0, 503);
    status.store(204, Ordering::SeqCst);
    assert_eq!(get(health, "/ready").0, 200);
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
    assert!(body.contains(&format!("connecting to port {port}")), "{body}");
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

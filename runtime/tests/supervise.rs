//! The main container's PID 1: exit codes pass through and signals reach the app.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn runtime() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aether-runtime"))
}

#[test]
fn exits_with_the_apps_code() {
    let status = runtime()
        .args(["supervise", "--", "sh", "-c", "exit 3"])
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3));
    let missing = runtime()
        .args(["supervise", "/no/such/program"])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(127));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("starting /no/such/program"));
}

#[test]
fn forwards_sigterm_to_the_app() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    // The app traps TERM and exits 7; it only gets TERM if supervise forwards it.
    let script = format!(
        "trap 'exit 7' TERM; touch {}; while true; do sleep 0.05; done",
        ready.display()
    );
    let mut child = runtime()
        .args(["supervise", "sh", "-c", &script])
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "the app did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(7));
}

//! The main container's PID 1: exit codes pass through and signals reach the app.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn runtime() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aether-runtime"))
}

/// Wait up to 10 s for the app under test to create `path`.
fn wait_for_file(path: &std::path::Path, failure: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{failure}");
        std::thread::sleep(Duration::from_millis(20));
    }
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
    wait_for_file(&ready, "the app did not start");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(7));
}

#[test]
fn sigterm_reaches_the_server_behind_a_start_script_and_supervise_waits_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ready, stopped) = (dir.path().join("ready"), dir.path().join("stopped"));
    // `sh -c` does not pass signals on to the command it waits for, and dies of TERM
    // at once: the inner "server" only learns of TERM if the whole process group
    // gets it, and only finishes draining (0.3 s) if supervise waits for it.
    let server = format!(
        "trap 'sleep 0.3; touch {}; exit 0' TERM; touch {}; while true; do sleep 0.05; done",
        stopped.display(),
        ready.display()
    );
    let mut child = runtime()
        .args([
            "supervise",
            "--",
            "/bin/sh",
            "-c",
            &format!("sh -c \"{server}\"; echo done"),
        ])
        .spawn()
        .unwrap();
    wait_for_file(&ready, "the app did not start");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    child.wait().unwrap();
    assert!(
        stopped.exists(),
        "supervise exited before the server finished draining"
    );
}

#[test]
fn start_scripts_find_clis_in_node_modules_bin() {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("node_modules/.bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::write(bin.join("hello-cli"), "#!/bin/sh\necho \"hello $1\"\n").unwrap();
    std::fs::set_permissions(bin.join("hello-cli"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let app = dir.path().join("apps/web");
    std::fs::create_dir_all(&app).unwrap();
    // From a workspace package's folder, the root's node_modules/.bin counts too.
    let out = runtime()
        .args(["supervise", "--", "/bin/sh", "-c", "hello-cli ${NAME:-world}"])
        .current_dir(&app)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello world\n");
}

#[test]
fn code_loading_variables_are_recognised() {
    use aether_runtime::supervise::runs_code;
    for name in [
        "NODE_OPTIONS",
        "NODE_PATH",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LD_AUDIT",
    ] {
        assert!(runs_code(name), "{name}");
    }
    for name in ["NODE_ENV", "PORT", "PATH", "HOME", "OLD_PRELOAD"] {
        assert!(!runs_code(name), "{name}");
    }
}

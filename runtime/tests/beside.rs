//! The fetch container beside the app, as the kubelet runs them: the app container's
//! `supervise --code` starts while the download runs and must wait for the verified
//! tree; the fetch container stays up after fetching and leaves on SIGTERM with 0;
//! restarted, it leaves the running app's tree alone.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use aether_artifact::{Digest, Manifest};
use aether_runtime::fetch::READY_FILE;
use common::{layer, manifest};

fn runtime() -> Command {
    Command::new(env!("CARGO_BIN_EXE_aether-runtime"))
}

/// Storage on loopback: GET `/<hex>` answers that blob, slowly (`delay` before each
/// answer), so the app container is seen waiting.
fn storage(blobs: BTreeMap<String, Vec<u8>>, delay: Duration) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut buf = [0u8; 4096];
            let n = conn.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let hex = path.trim_start_matches('/').split('?').next().unwrap_or("");
            std::thread::sleep(delay);
            let (status, body) = match blobs.get(hex) {
                Some(b) => (200, b.clone()),
                None => (404, Vec::new()),
            };
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        }
    });
    format!("http://{addr}")
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn terminate(mut child: Child) -> std::process::ExitStatus {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "no exit within 10 s of SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The fetch container's postStart hook.
fn install(vol: &Path) {
    let status = runtime().args(["install", "--into"]).arg(vol).status().unwrap();
    assert!(status.success());
}

fn fetch_sidecar(manifest: &Manifest, vol: &Path, downloads: &Path, spool: &Path) -> Child {
    fetch_pinned(manifest, &manifest.digest(), vol, downloads, spool)
}

/// `fetch --sidecar` of `manifest`, which the pod template pins to `digest`.
fn fetch_pinned(manifest: &Manifest, digest: &Digest, vol: &Path, downloads: &Path, spool: &Path) -> Child {
    runtime()
        .args(["fetch", "--sidecar", "--into"])
        .arg(vol)
        .env(
            "AETHER_MANIFEST",
            String::from_utf8(manifest.to_canonical_json()).unwrap(),
        )
        .env("AETHER_ARTIFACT_DIGEST", digest.to_string())
        .env("AETHER_NAMESPACE", "team-a")
        .env("AETHER_APP", "web")
        .env("AETHER_VERIFY_MODE", "off")
        .env("AETHER_DOWNLOADS_DIR", downloads)
        .env("AETHER_SPOOL_DIR", spool)
        .env(
            "AETHER_TERMINATION_LOG",
            vol.parent().unwrap().join("termination-log"),
        )
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn the_app_starts_only_on_the_verified_tree_and_a_restarted_sidecar_keeps_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (deps, deps_layer) = layer(
        &tmp.path().join("src/deps"),
        &[("node_modules/left-pad/index.js", "module.exports = 1;\n")],
    );
    let (app, app_layer) = layer(&tmp.path().join("src/app"), &[("server.js", "release one\n")]);
    let manifest = manifest(vec![deps_layer.clone(), app_layer.clone()]);
    let blobs: BTreeMap<String, Vec<u8>> = [
        (deps_layer.digest.hex().to_string(), deps),
        (app_layer.digest.hex().to_string(), app),
    ]
    .into();
    let base = storage(blobs, Duration::from_millis(500));
    let (vol, downloads, spool) = (
        tmp.path().join("aether"),
        tmp.path().join("downloads"),
        tmp.path().join("spool"),
    );
    std::fs::create_dir_all(&downloads).unwrap();
    for l in &manifest.layers {
        let hex = l.digest.hex();
        std::fs::write(downloads.join(format!("sha256-{hex}")), format!("{base}/{hex}")).unwrap();
    }

    // The postStart hook, then the app container, while the fetch downloads.
    install(&vol);
    let sidecar = fetch_sidecar(&manifest, &vol, &downloads, &spool);
    let out = tmp.path().join("served");
    // In the app's directory, which does not exist yet.
    let mut app = Command::new(vol.join("bin/aether-runtime"))
        .args(["supervise", "--code"])
        .arg(&vol)
        .arg("--workdir")
        .arg(vol.join("app"))
        .args(["--", "sh", "-c"])
        .arg(format!("cat server.js > {}", out.display()))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(!out.exists(), "the app started before the code was verified");
    assert_eq!(app.wait().unwrap().code(), Some(0));
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "release one\n");
    assert_eq!(
        std::fs::read_to_string(vol.join(READY_FILE)).unwrap(),
        manifest.digest().to_string()
    );

    let mut sidecar = sidecar;
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        sidecar.try_wait().unwrap().is_none(),
        "the fetch container stays up after fetching"
    );
    assert!(terminate(sidecar).success(), "SIGTERM ends the sidecar with 0");

    // Restarted (the kubelet restarts a container that exits), with no URL left: it
    // neither downloads nor touches the tree the app runs from.
    std::fs::remove_dir_all(&downloads).unwrap();
    std::fs::write(vol.join("app/running.txt"), "the app's tree").unwrap();
    let again = fetch_sidecar(&manifest, &vol, &downloads, &spool);
    std::thread::sleep(Duration::from_millis(500));
    let mut again = again;
    assert!(
        again.try_wait().unwrap().is_none(),
        "a restarted fetch container idles"
    );
    assert!(vol.join("app/running.txt").exists(), "and leaves the tree alone");
    assert!(terminate(again).success());
    wait_until("nothing is left in the spool", || {
        std::fs::read_dir(&spool).map(|d| d.count() == 0).unwrap_or(true)
    });
}

#[test]
fn a_failed_fetch_ends_with_its_reason_and_marks_nothing_ready() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, app_layer) = layer(&tmp.path().join("src/app"), &[("server.js", "x\n")]);
    let manifest = manifest(vec![app_layer]);
    let vol = tmp.path().join("aether");
    install(&vol);
    // A manifest other than the one the template pins.
    let d = tmp.path();
    let mut fetch = fetch_pinned(
        &manifest,
        &Digest::of(b"another"),
        &vol,
        &d.join("d"),
        &d.join("s"),
    );
    let t = Instant::now();
    let status = loop {
        if let Some(status) = fetch.try_wait().unwrap() {
            break status;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the failed fetch did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(11));
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "it outlasts the postStart hook before it exits"
    );
    let message = std::fs::read_to_string(vol.parent().unwrap().join("termination-log")).unwrap();
    assert!(message.starts_with("DigestMismatch: "), "{message}");
    assert!(!vol.join(READY_FILE).exists());
}

#[test]
fn an_app_still_waiting_for_its_code_leaves_at_once_on_sigterm() {
    let tmp = tempfile::tempdir().unwrap();
    let app = runtime()
        .args(["supervise", "--code"])
        .arg(tmp.path())
        .args(["--", "sh", "-c", "exit 0"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let status = terminate(app);
    assert_eq!(status.code(), Some(143), "128 + SIGTERM, as a shell reports it");
    assert!(t.elapsed() < Duration::from_secs(2));
}

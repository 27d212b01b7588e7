//! The CLI's client when the API server goes away mid-command: it connects again
//! once the server is back, but does not wait for a server it never reached. A
//! local HTTP server plays the API server.
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aether_cli::args::{GlobalArgs, OutputFormat};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CONFIG_MAP: &str =
    r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"c","namespace":"default"}}"#;

/// Answer every request on `listener` with the ConfigMap, counting connections;
/// connection number `cut` (from 1) is closed without an answer, as by a server
/// shutting down mid-request.
fn serve(listener: tokio::net::TcpListener, count: Arc<AtomicUsize>, cut: Option<usize>) {
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            let n = count.fetch_add(1, Ordering::SeqCst) + 1;
            tokio::spawn(async move {
                let mut buf = vec![0; 64 << 10];
                let _ = conn.read(&mut buf).await;
                if cut == Some(n) {
                    return;
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{CONFIG_MAP}",
                    CONFIG_MAP.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            });
        }
    });
}

/// A kubeconfig for a plain-HTTP server at `addr`, and the CLI's client for it.
async fn client_for(addr: SocketAddr, dir: &std::path::Path) -> kube::Client {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: t\nclusters:\n- name: t\n  cluster: {{server: \"http://{addr}\"}}\ncontexts:\n- name: t\n  context: {{cluster: t, user: t}}\nusers:\n- name: t\n  user: {{}}\n"
        ),
    )
    .unwrap();
    let global = GlobalArgs {
        namespace: Some("default".into()),
        context: None,
        kubeconfig: Some(path),
        output: OutputFormat::Json,
        quiet: true,
    };
    aether_cli::cluster::connect(&global).await.unwrap().0
}

#[tokio::test]
async fn a_command_that_reached_the_api_server_waits_for_it_to_come_back() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = client_for(addr, dir.path()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");

    // Reached once; then the server is gone for 3 s (refused), then back.
    let count = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let first = count.clone();
    tokio::spawn(async move {
        let (mut conn, _) = listener.accept().await.unwrap();
        first.fetch_add(1, Ordering::SeqCst);
        let mut buf = vec![0; 64 << 10];
        let _ = conn.read(&mut buf).await;
        let reply = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{CONFIG_MAP}",
            CONFIG_MAP.len()
        );
        conn.write_all(reply.as_bytes()).await.unwrap();
        drop(listener);
        rx.await.unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        serve(tokio::net::TcpListener::bind(addr).await.unwrap(), first, None);
    });
    api.get("c").await.unwrap();
    tx.send(()).unwrap();
    let started = Instant::now();
    api.get("c").await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_read_cut_off_by_a_server_shutting_down_is_asked_again() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    // The second connection is closed before its answer.
    serve(listener, count.clone(), Some(2));
    let client = client_for(addr, dir.path()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    api.get("c").await.unwrap();
    api.get("c").await.unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 3, "the cut-off GET was sent again");
}

#[tokio::test]
async fn a_first_request_cut_off_is_not_waited_for() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    serve(listener, count.clone(), Some(1));
    let client = client_for(addr, dir.path()).await;
    let api: Api<ConfigMap> = Api::namespaced(client, "default");
    assert!(api.get("c").await.is_err(), "never reached: no retry");
    assert_eq!(count.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_cluster_never_reached_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = client_for(closed, dir.path()).await;
    let started = Instant::now();
    let err = Api::<ConfigMap>::namespaced(client, "default")
        .get("c")
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(format!("{err:?}").contains("Connect"), "{err:?}");
}

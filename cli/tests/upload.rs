//! Presigned uploads when storage is down or failing: retries with backoff until the
//! push's deadline, then a clear error, against a local HTTP server playing a broken
//! storage.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aether_cli::upload::{http_client, put_with_retries};
use hyper::body::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A server answering every request with `status`; returns its URL and a request count.
async fn storage_answering(status: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://{}/bucket/blob?X-Amz-Signature=x",
        listener.local_addr().unwrap()
    );
    let count = Arc::new(AtomicUsize::new(0));
    tokio::spawn(answer(listener, status, count.clone()));
    (url, count)
}

/// Answer every connection on `listener` with `status`, counting them.
async fn answer(listener: tokio::net::TcpListener, status: &'static str, count: Arc<AtomicUsize>) {
    loop {
        let (mut conn, _) = listener.accept().await.unwrap();
        count.fetch_add(1, Ordering::SeqCst);
        tokio::spawn(async move {
            let mut buf = vec![0; 64 << 10];
            let _ = conn.read(&mut buf).await;
            let reply = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = conn.write_all(reply.as_bytes()).await;
        });
    }
}

#[tokio::test]
async fn a_failing_storage_is_retried_with_backoff_then_reported() {
    let (url, count) = storage_answering("503 Service Unavailable").await;
    let started = Instant::now();
    let err = put_with_retries(
        &http_client().unwrap(),
        &url,
        &Default::default(),
        Bytes::from_static(b"blob"),
        tokio::time::Instant::now(),
    )
    .await
    .unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 4, "4 attempts");
    assert!(!err.expired);
    assert!(
        err.detail.contains("503") && err.detail.contains("after 4 attempts"),
        "{}",
        err.detail
    );
    // 0.3 + 0.6 + 1.2 s of backoff at least (plus jitter).
    assert!(
        started.elapsed() >= Duration::from_millis(2100),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn storage_that_is_gone_is_reported_as_a_connection_failure() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let err = put_with_retries(
        &http_client().unwrap(),
        &format!("http://{closed}/bucket/blob"),
        &Default::default(),
        Bytes::from_static(b"blob"),
        tokio::time::Instant::now(),
    )
    .await
    .unwrap_err();
    assert!(
        err.detail.contains("connection failed") && err.detail.contains("after 4 attempts"),
        "{}",
        err.detail
    );
}

#[tokio::test]
async fn an_expired_url_is_not_retried_but_flagged_for_renewal() {
    let (url, count) = storage_answering("403 Forbidden").await;
    let err = put_with_retries(
        &http_client().unwrap(),
        &url,
        &Default::default(),
        Bytes::from_static(b"blob"),
        tokio::time::Instant::now(),
    )
    .await
    .unwrap_err();
    assert_eq!(count.load(Ordering::SeqCst), 1);
    assert!(err.expired, "the CLI asks the operator for new URLs");
}

#[tokio::test]
async fn storage_that_comes_back_before_the_deadline_gets_the_upload() {
    // A port nothing listens on for 4 s (a storage restarting), then a server.
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(4)).await;
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        answer(listener, "200 OK", seen).await;
    });
    let started = Instant::now();
    put_with_retries(
        &http_client().unwrap(),
        &format!("http://{addr}/bucket/blob"),
        &Default::default(),
        Bytes::from_static(b"blob"),
        tokio::time::Instant::now() + Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!(count.load(Ordering::SeqCst), 1, "stored once it answered");
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

//! Downloads through presigned URLs, against a local HTTP server that answers as
//! storage would: the right bytes, wrong bytes, too many bytes, 404, 403, 503.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aether_artifact::Digest;
use aether_runtime::download::{client, fetch, url_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Serve each connection the next canned (status, body), then close.
async fn storage(answers: Vec<(u16, Vec<u8>)>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        for (status, body) in answers {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            conn.write_all(head.as_bytes()).await.unwrap();
            conn.write_all(&body).await.unwrap();
        }
    });
    format!("http://{addr}/b/ns/team-a/blobs/sha256/x?X-Amz-Signature=0")
}

#[tokio::test]
async fn a_download_is_exactly_the_digest_s_bytes() {
    let data = b"layer bytes".to_vec();
    let d = Digest::of(&data);
    let size = data.len() as u64;
    let http = client().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("layer");
    let fetch = |url: String| {
        let (http, to) = (http.clone(), to.clone());
        async move {
            fetch(&http, &url, &d, size, &to)
                .await
                .map(|()| std::fs::read(&to).unwrap())
        }
    };

    let url = storage(vec![(200, data.clone())]).await;
    assert_eq!(fetch(url).await.unwrap(), data);

    let url = storage(vec![(200, b"other bytes".to_vec())]).await;
    let e = fetch(url).await.unwrap_err();
    assert_eq!(e.reason(), "DigestMismatch", "{e}");
    assert!(!to.exists(), "wrong bytes are not left behind");

    let mut long = data.clone();
    long.extend_from_slice(&[0; 1000]);
    let url = storage(vec![(200, long)]).await;
    let e = fetch(url).await.unwrap_err();
    assert_eq!(e.reason(), "DigestMismatch", "{e}");

    let url = storage(vec![(404, vec![])]).await;
    assert_eq!(fetch(url).await.unwrap_err().reason(), "ArtifactNotFound");

    let url = storage(vec![(403, b"<Error>expired</Error>".to_vec())]).await;
    let e = fetch(url).await.unwrap_err();
    assert_eq!(e.reason(), "StorageUnauthorized");
    assert!(
        !e.to_string().contains("Signature"),
        "the URL is not repeated: {e}"
    );

    // 5xx is retried.
    let url = storage(vec![(503, vec![]), (200, data.clone())]).await;
    assert_eq!(fetch(url).await.unwrap(), data);

    // For as long as storage is down (the container's deadline bounds it), not a
    // fixed number of times: six failures, then the bytes.
    let mut answers = vec![(503, vec![]); 6];
    answers.push((200, data.clone()));
    let url = storage(answers).await;
    let fetched = tokio::time::timeout(Duration::from_secs(60), fetch(url)).await;
    assert_eq!(fetched.expect("retried for good").unwrap(), data);
}

#[tokio::test]
async fn a_url_is_read_from_the_mounted_secret_and_waited_for_briefly() {
    let dir = tempfile::tempdir().unwrap();
    let d = Digest::of(b"x");
    let e = url_for(dir.path(), &d, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no download URL"), "{e}");

    // Written while waiting (as kubelet refreshes the volume): found.
    let path = dir.path().join(format!("sha256-{}", d.hex()));
    let writer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(path, "http://s3/u\n").unwrap();
    });
    let url = url_for(dir.path(), &d, Duration::from_secs(5)).await.unwrap();
    assert_eq!(url, "http://s3/u");
    writer.await.unwrap();
}

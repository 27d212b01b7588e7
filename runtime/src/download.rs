//! Downloads through the presigned URLs of the app's fetch Secret: the pod holds no
//! storage credential, only URLs for its own namespace's blobs that expire.
//!
//! Blobs are streamed to a spool file (a disk volume of the pod), checked as they
//! arrive, so a layer is never held in memory.
//!
//! The Secret is mounted as a directory with one file per blob, `sha256-<hex>`,
//! holding the URL. Kubelet writes a new release's URLs into running pods' volumes
//! with some delay; a pod that starts just after the operator added them normally
//! sees them at once. A missing file is waited for up to the fetch's own deadline:
//! after an API server outage the operator and the kubelet can take over a minute
//! to catch up, and exiting would put the container into the kubelet's crash
//! backoff instead (as for storage outages, see [`fetch`]).

use std::path::Path;
use std::time::Duration;

use aether_artifact::Digest;
use aether_storage::{Checked, StorageError, root_cause};
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;

pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Empty<Bytes>,
>;

pub fn client() -> Result<HttpClient, StorageError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(|e| StorageError::Other(format!("loading the system's CA certificates: {e}")))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}

/// The URL for `digest` in `dir`, waiting up to `wait` for the file to appear.
pub async fn url_for(dir: &Path, digest: &Digest, wait: Duration) -> Result<String, StorageError> {
    let path = dir.join(format!("sha256-{}", digest.hex()));
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::fs::read_to_string(&path).await {
            Ok(url) if !url.trim().is_empty() => return Ok(url.trim().to_string()),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(StorageError::Other(format!("reading {}: {e}", path.display()))),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StorageError::Other(format!(
                "no download URL for {digest} in {} after {} s: the operator has not issued one (is it running?)",
                dir.display(),
                wait.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// GET the blob into the file `to`, checking it as it streams (at most `size + 1`
/// bytes are read, none held in memory): once this returns Ok, the file holds
/// exactly the bytes the digest names; on any error it is removed. Connection
/// errors and 5xx are retried with jittered backoff, at most 2 s apart, for as long
/// as storage is down: the caller's deadline bounds the whole. (Exiting instead
/// would put the container into the kubelet's crash backoff, which grows to minutes
/// and outlasts the outage.)
pub async fn fetch(
    client: &HttpClient,
    url: &str,
    digest: &Digest,
    size: u64,
    to: &Path,
) -> Result<(), StorageError> {
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        let result = fetch_once(client, url, digest, size, to).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(to).await;
        }
        match result {
            Err(StorageError::Unavailable(why)) => {
                // The first failure, then about every half minute.
                if attempt % 15 == 1 {
                    eprintln!("aether-runtime: storage unavailable ({why}); retrying");
                }
                let jitter = Duration::from_millis(fastrand::u64(0..delay.as_millis() as u64));
                tokio::time::sleep(delay + jitter).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn fetch_once(
    client: &HttpClient,
    url: &str,
    digest: &Digest,
    size: u64,
    to: &Path,
) -> Result<(), StorageError> {
    use tokio::io::AsyncWriteExt as _;
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| StorageError::Other(format!("the download URL for {digest} is not a URL")))?;
    let resp = client
        .get(uri)
        .await
        .map_err(|e| StorageError::Unavailable(root_cause(&e)))?;
    let status = resp.status().as_u16();
    match status {
        200 => {}
        404 => return Err(StorageError::NotFound(*digest)),
        // The URL expired or its signature is refused: the operator renews it.
        400 | 401 | 403 => {
            return Err(StorageError::Unauthorized {
                code: format!("HTTP {status} for the download URL of {digest} (expired or refused)"),
            });
        }
        s if s >= 500 => return Err(StorageError::Unavailable(format!("HTTP {s}"))),
        s => return Err(StorageError::Other(format!("HTTP {s} for {digest}"))),
    }
    let spool = |e: std::io::Error| StorageError::Other(format!("writing {}: {e}", to.display()));
    let mut out = tokio::io::BufWriter::new(tokio::fs::File::create(to).await.map_err(spool)?);
    let mut body = resp.into_body();
    let mut check = Checked::new(*digest, size);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| StorageError::Unavailable(root_cause(&e)))?;
        if let Ok(chunk) = frame.into_data() {
            if !check.update(&chunk) {
                break;
            }
            out.write_all(&chunk).await.map_err(spool)?;
        }
    }
    check.finish()?;
    out.flush().await.map_err(spool)?;
    Ok(())
}

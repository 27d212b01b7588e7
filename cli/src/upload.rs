//! Uploads through presigned URLs: plain HTTP PUTs (whole blobs or parts), with
//! retries and jittered backoff, until the push's deadline, when storage is down or
//! failing.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use aether_crds::BlobUpload;
use http_body_util::Full;
use hyper::body::Bytes;

use crate::errors::CliError;

pub type HttpClient = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

pub fn http_client() -> Result<HttpClient, CliError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .map_err(CliError::io("loading the system's CA certificates"))?
        .https_or_http()
        .enable_http1()
        .build();
    Ok(hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https))
}

/// A failed PUT; `expired` when storage refused the URL (400/403), which new URLs fix.
#[derive(Debug)]
pub struct PutError {
    pub expired: bool,
    pub detail: String,
}

fn put_error(detail: impl Into<String>) -> PutError {
    PutError {
        expired: false,
        detail: detail.into(),
    }
}

/// Upload one blob (whole, or part by part) from the packed output; returns bytes sent.
/// Storage that is down is waited for until `until`.
pub async fn upload_blob(
    client: &HttpClient,
    blobs_dir: &Path,
    blob: &BlobUpload,
    until: Instant,
) -> Result<u64, PutError> {
    let hex = blob.digest.trim_start_matches("sha256:");
    let data =
        std::fs::read(blobs_dir.join(hex)).map_err(|e| put_error(format!("reading the packed blob: {e}")))?;
    if let Some(url) = &blob.url {
        put_with_retries(client, url, &blob.headers, Bytes::from(data.clone()), until).await?;
        return Ok(data.len() as u64);
    }
    let part_size = blob.part_size.unwrap_or(0).max(1) as usize;
    let mut sent = 0;
    for part in &blob.parts {
        let start = (part.number.max(1) as usize - 1) * part_size;
        let end = (start + part_size).min(data.len());
        let chunk = data
            .get(start..end)
            .ok_or_else(|| put_error("part out of range"))?;
        sent += chunk.len() as u64;
        put_with_retries(
            client,
            &part.url,
            &BTreeMap::new(),
            Bytes::copy_from_slice(chunk),
            until,
        )
        .await?;
    }
    Ok(sent)
}

/// PUT with the URL's signed headers, retried with jittered exponential backoff
/// (at most 5 s apart) on connection errors and 5xx: at least 4 attempts, and
/// more until `until` (storage restarting mid-push is waited for). 4xx (expired or
/// wrong URL) fails at once.
pub async fn put_with_retries(
    client: &HttpClient,
    url: &str,
    headers: &BTreeMap<String, String>,
    body: Bytes,
    until: Instant,
) -> Result<(), PutError> {
    let mut delay = Duration::from_millis(300);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let mut req = hyper::Request::put(url).header(hyper::header::CONTENT_LENGTH, body.len());
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(Full::new(body.clone()))
            .map_err(|e| put_error(e.to_string()))?;
        let last = match tokio::time::timeout(Duration::from_secs(120), client.request(req)).await {
            Ok(Ok(resp)) if resp.status().is_success() => return Ok(()),
            Ok(Ok(resp)) if resp.status().is_client_error() => {
                return Err(PutError {
                    // S3 says 403 for an expired URL, Garage 400: new URLs fix both.
                    expired: matches!(resp.status().as_u16(), 400 | 403),
                    detail: format!("storage answered {} (the URL may have expired)", resp.status()),
                });
            }
            Ok(Ok(resp)) => format!("storage answered {}", resp.status()),
            Ok(Err(e)) => format!("connection failed: {e}"),
            Err(_) => "no answer within 120 s".into(),
        };
        let jitter = Duration::from_millis(fastrand::u64(0..delay.as_millis() as u64));
        if attempts >= 4 && Instant::now() + delay + jitter > until {
            return Err(put_error(format!("{last} (after {attempts} attempts)")));
        }
        tokio::time::sleep(delay + jitter).await;
        delay = (delay * 2).min(Duration::from_millis(2500));
    }
}

//! A plain HTTP/1.1 GET, enough to ask an app "what do you answer?" from the host.

use std::time::Duration;

use anyhow::Context as _;
use http_body_util::{BodyExt, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;

/// GET `http://{host}:{port}{path}`; returns status and body. Times out after 10 s.
pub async fn get(host: &str, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    tokio::time::timeout(Duration::from_secs(10), async {
        let stream = tokio::net::TcpStream::connect((host, port))
            .await
            .with_context(|| format!("connecting to {host}:{port}"))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let req = hyper::Request::get(path)
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .body(Empty::<Bytes>::new())?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
    .await
    .with_context(|| format!("GET http://{host}:{port}{path} timed out"))?
}

/// PUT `body` to an `http://` URL (e.g. a presigned upload URL) with the headers it
/// was signed with; returns status and body.
pub async fn put(
    url: &str,
    headers: &std::collections::BTreeMap<String, String>,
    body: Vec<u8>,
) -> anyhow::Result<(u16, String)> {
    let uri: hyper::Uri = url.parse().with_context(|| format!("not a URL: {url}"))?;
    anyhow::ensure!(
        uri.scheme_str() == Some("http"),
        "only http:// URLs are supported here: {url}"
    );
    let host = uri.host().context("URL without a host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    tokio::time::timeout(Duration::from_secs(60), async {
        let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(conn);
        let len = body.len();
        let mut req = hyper::Request::put(path)
            .header(hyper::header::HOST, format!("{host}:{port}"))
            .header(hyper::header::CONTENT_LENGTH, len);
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(http_body_util::Full::new(Bytes::from(body)))?;
        let resp = sender.send_request(req).await?;
        let status = resp.status().as_u16();
        let text = resp.into_body().collect().await?.to_bytes();
        Ok((status, String::from_utf8_lossy(&text).into_owned()))
    })
    .await
    .with_context(|| format!("PUT {} timed out", uri.path()))?
}

/// Did a PUT store `body`? Only a 200 says yes: storage that refuses a request may
/// answer before reading the body and close the connection, which is a refusal too.
pub async fn stored(url: &str, headers: &std::collections::BTreeMap<String, String>, body: Vec<u8>) -> bool {
    matches!(put(url, headers, body).await, Ok((200, _)))
}

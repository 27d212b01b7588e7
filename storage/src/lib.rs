//! Content-addressed blobs on S3-compatible storage, shared by the operator (presigns
//! uploads, verifies, deletes), the in-pod runtime (fetches) and the CLI's direct mode.
//!
//! Every blob lives at `<prefix>/ns/<namespace>/blobs/sha256/<hex>`: identical layers
//! are stored once per namespace, and nothing done for one namespace (an upload URL,
//! a verification, a deletion) can name a key of another. Only verified bytes reach
//! a blob key: a presigned PUT signs the blob's sha256 (storage refuses other bytes),
//! and multipart uploads land under an upload key of their own, are verified there
//! and only then copied into place.
//!
//! Presigning, multipart and retries (bounded, exponential backoff with jitter) come
//! from the AWS SDK; nothing here signs requests by hand.

use std::collections::BTreeMap;
use std::time::Duration;

use aether_artifact::Digest;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_http_client::{Builder, tls};
use sha2::{Digest as _, Sha256};

/// Where blobs live and how to reach them.
#[derive(Clone)]
pub struct StorageConfig {
    /// e.g. `http://10.88.0.1:3900`; None means AWS's regional endpoint.
    pub endpoint: Option<String>,
    /// Endpoint written into presigned URLs, when uploaders reach storage at another
    /// address than this process does (an in-cluster Service vs. a public hostname).
    pub public_endpoint: Option<String>,
    /// Endpoint written into presigned download URLs: where app pods reach storage,
    /// when that differs from this process's address.
    pub download_endpoint: Option<String>,
    pub region: String,
    pub bucket: String,
    /// Key prefix, e.g. `aether` → `aether/ns/<namespace>/blobs/sha256/<hex>`.
    pub prefix: String,
    /// Path-style addressing (`endpoint/bucket/key`), which self-hosted servers need.
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// Attempts per request (first try included) on throttling, 5xx and timeouts.
    pub max_attempts: u32,
    /// Deadline for one whole operation, retries included.
    pub operation_timeout: Duration,
}

impl std::fmt::Debug for StorageConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StorageConfig")
            .field("endpoint", &self.endpoint)
            .field("public_endpoint", &self.public_endpoint)
            .field("download_endpoint", &self.download_endpoint)
            .field("region", &self.region)
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"<redacted>")
            .finish()
    }
}

impl StorageConfig {
    /// From `AETHER_S3_{ENDPOINT,REGION,BUCKET,PREFIX,PATH_STYLE}` and the standard
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` (and `AWS_REGION`).
    pub fn from_env() -> Result<Self, StorageError> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let required = |k: &str| var(k).ok_or_else(|| StorageError::NotConfigured(k.to_string()));
        Ok(Self {
            endpoint: var("AETHER_S3_ENDPOINT"),
            public_endpoint: var("AETHER_S3_PUBLIC_ENDPOINT"),
            download_endpoint: None,
            region: var("AETHER_S3_REGION")
                .or_else(|| var("AWS_REGION"))
                .unwrap_or_else(|| "us-east-1".into()),
            bucket: required("AETHER_S3_BUCKET")?,
            prefix: var("AETHER_S3_PREFIX").unwrap_or_default(),
            path_style: var("AETHER_S3_PATH_STYLE").is_none_or(|v| v != "false"),
            access_key_id: required("AWS_ACCESS_KEY_ID")?,
            secret_access_key: required("AWS_SECRET_ACCESS_KEY")?,
            max_attempts: 5,
            operation_timeout: Duration::from_secs(300),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage is not configured: {0} is not set")]
    NotConfigured(String),
    /// 404: retrying will not help.
    #[error("blob {0} is not in storage")]
    NotFound(Digest),
    #[error("storage refused the credentials ({code}): check the access key, its secret and the clock")]
    Unauthorized { code: String },
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    #[error("blob {digest} in storage does not match: {source}")]
    Mismatch {
        digest: Digest,
        #[source]
        source: aether_artifact::digest::VerifyError,
    },
    #[error("storage request failed: {0}")]
    Other(String),
}

impl StorageError {
    /// CamelCase reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NotConfigured(_) => "StorageNotConfigured",
            Self::NotFound(_) => "ArtifactNotFound",
            Self::Unauthorized { .. } => "StorageUnauthorized",
            Self::Unavailable(_) => "StorageUnavailable",
            Self::Mismatch { .. } => "DigestMismatch",
            Self::Other(_) => "StorageError",
        }
    }

    fn from_sdk<E: ProvideErrorMetadata + std::error::Error + 'static>(
        digest: &Digest,
        err: SdkError<E, HttpResponse>,
    ) -> Self {
        let status = err.raw_response().map(|r| r.status().as_u16());
        let code = err.code().unwrap_or_default().to_string();
        match (status, code.as_str()) {
            (Some(404), _) | (_, "NoSuchKey" | "NotFound" | "NoSuchUpload") => Self::NotFound(*digest),
            (Some(401 | 403), _)
            | (_, "AccessDenied" | "InvalidAccessKeyId" | "SignatureDoesNotMatch" | "RequestTimeTooSkewed") => {
                Self::Unauthorized {
                    code: if code.is_empty() {
                        format!("HTTP {}", status.unwrap_or(403))
                    } else {
                        code
                    },
                }
            }
            (Some(s), _) if s >= 500 => Self::Unavailable(format!("HTTP {s} {code}")),
            _ if matches!(err, SdkError::TimeoutError(_)) => Self::Unavailable("no answer in time".into()),
            // The innermost cause ("Connection refused", a DNS failure) is what a user
            // can act on; the layers above it are the SDK's plumbing.
            _ if matches!(err, SdkError::DispatchFailure(_)) => Self::Unavailable(root_cause(&err)),
            _ => Self::Other(format!("{}", aws_sdk_s3::error::DisplayErrorContext(&err))),
        }
    }
}

/// The innermost cause of an error ("Connection refused", a DNS failure): what a
/// user can act on, without the layers of plumbing above it.
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut e = err;
    while let Some(source) = e.source() {
        e = source;
    }
    e.to_string()
}

/// `<prefix>/ns/<namespace>`, with the prefix's slashes tidied: everything stored
/// for one namespace is under it.
pub fn namespace_prefix(prefix: &str, namespace: &str) -> String {
    match prefix.trim_matches('/') {
        "" => format!("ns/{namespace}"),
        prefix => format!("{prefix}/ns/{namespace}"),
    }
}

/// `<namespace prefix>/blobs/sha256/<hex>`: where a verified blob lives.
pub fn blob_key(namespace_prefix: &str, digest: &Digest) -> String {
    format!("{namespace_prefix}/blobs/sha256/{}", digest.hex())
}

/// `<namespace prefix>/uploads/<upload>/sha256/<hex>`: where a multipart upload is
/// assembled; `upload` names the conversation (the artifact's uid), so two uploads of
/// one digest never share parts.
pub fn upload_key(namespace_prefix: &str, upload: &str, digest: &Digest) -> String {
    format!("{namespace_prefix}/uploads/{upload}/sha256/{}", digest.hex())
}

/// A presigned request: the URL and the headers the request must carry (they are
/// signed, so storage refuses a request without them or with other values).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presigned {
    pub url: String,
    pub headers: BTreeMap<String, String>,
}

/// CopyObject's limit: larger blobs cannot be copied into place in one request.
pub const MAX_COPY_SIZE: u64 = 5 << 30;

/// One part of a multipart upload: S3 numbers parts from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    pub number: i32,
    pub offset: u64,
    pub len: u64,
}

/// S3's limits: parts of at least 5 MiB (but the last), at most 10,000 parts.
pub const MIN_PART_SIZE: u64 = 5 << 20;
pub const MAX_PARTS: u64 = 10_000;

/// Split `size` bytes into parts of `part_size` (raised to S3's minimum, and further
/// if the blob would need more than 10,000 parts).
pub fn plan_parts(size: u64, part_size: u64) -> Vec<PartPlan> {
    let mut part = part_size.max(MIN_PART_SIZE);
    if size.div_ceil(part) > MAX_PARTS {
        part = size.div_ceil(MAX_PARTS);
    }
    let mut plans = Vec::new();
    let mut offset = 0;
    while offset < size || plans.is_empty() {
        let len = part.min(size - offset);
        plans.push(PartPlan {
            number: plans.len() as i32 + 1,
            offset,
            len,
        });
        offset += len;
        if len == 0 {
            break;
        }
    }
    plans
}

/// The bucket, as the operator holds it. Every blob operation goes through
/// [`Storage::namespace`], so each names the namespace whose keys it touches.
#[derive(Debug, Clone)]
pub struct Storage {
    client: aws_sdk_s3::Client,
    /// Signs URLs for uploaders: `client`, or one aimed at the public endpoint.
    presigner: aws_sdk_s3::Client,
    /// Signs URLs for app pods: `client`, or one aimed at the pods' endpoint.
    downloader: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl Storage {
    pub fn new(config: &StorageConfig) -> Self {
        let client = sdk_client(config, config.endpoint.as_deref());
        let aimed_at = |endpoint: &Option<String>| match endpoint {
            Some(endpoint) => sdk_client(config, Some(endpoint)),
            None => client.clone(),
        };
        Self {
            presigner: aimed_at(&config.public_endpoint),
            downloader: aimed_at(&config.download_endpoint),
            client,
            bucket: config.bucket.clone(),
            prefix: config.prefix.clone(),
        }
    }

    /// The underlying SDK client, for what this crate does not wrap.
    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The blobs of one namespace.
    pub fn namespace(&self, namespace: &str) -> Blobs {
        Blobs {
            client: self.client.clone(),
            presigner: self.presigner.clone(),
            downloader: self.downloader.clone(),
            bucket: self.bucket.clone(),
            prefix: namespace_prefix(&self.prefix, namespace),
        }
    }
}

/// One namespace's blobs: no method here can name a key outside its prefix.
#[derive(Debug, Clone)]
pub struct Blobs {
    client: aws_sdk_s3::Client,
    presigner: aws_sdk_s3::Client,
    downloader: aws_sdk_s3::Client,
    bucket: String,
    prefix: String,
}

impl Blobs {
    /// The key prefix of this namespace's blobs (`<prefix>/ns/<namespace>`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn key(&self, digest: &Digest) -> String {
        blob_key(&self.prefix, digest)
    }

    fn upload_key(&self, upload: &str, digest: &Digest) -> String {
        upload_key(&self.prefix, upload, digest)
    }

    /// The blob's size, or None if it is not stored.
    pub async fn head(&self, digest: &Digest) -> Result<Option<u64>, StorageError> {
        Ok(self.stat(digest).await?.map(|s| s.size))
    }

    /// The blob's size and ETag, or None if it is not stored.
    pub async fn stat(&self, digest: &Digest) -> Result<Option<Stat>, StorageError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.key(digest))
            .send()
            .await
        {
            Ok(out) => Ok(Some(Stat {
                size: out.content_length().unwrap_or(0).max(0) as u64,
                etag: out.e_tag().map(String::from),
            })),
            Err(e) => match StorageError::from_sdk(digest, e) {
                StorageError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    /// A request that lets its holder PUT exactly this blob until it expires: its
    /// size and its sha256 are signed, so storage refuses any other bytes.
    pub async fn presign_put(
        &self,
        digest: &Digest,
        size: u64,
        expires: Duration,
    ) -> Result<Presigned, StorageError> {
        let req = self
            .presigner
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(digest))
            .content_length(size as i64)
            .checksum_sha256(base64(digest.as_bytes()))
            .presigned(presigning(expires)?)
            .await
            .map_err(|e| StorageError::from_sdk(digest, e))?;
        Ok(Presigned {
            url: req.uri().to_string(),
            headers: req
                .headers()
                .filter(|(name, _)| !name.eq_ignore_ascii_case("content-length"))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        })
    }

    /// A URL that lets its holder GET this blob until it expires (at most 7 days:
    /// SigV4's limit).
    pub async fn presign_get(&self, digest: &Digest, expires: Duration) -> Result<String, StorageError> {
        let req = self
            .downloader
            .get_object()
            .bucket(&self.bucket)
            .key(self.key(digest))
            .presigned(presigning(expires)?)
            .await
            .map_err(|e| StorageError::from_sdk(digest, e))?;
        Ok(req.uri().to_string())
    }

    /// Start a multipart upload under the upload key of `upload`; the parts never
    /// touch the blob key (see [`Blobs::promote`]).
    pub async fn start_multipart(&self, upload: &str, digest: &Digest) -> Result<String, StorageError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(self.upload_key(upload, digest))
            .send()
            .await
            .map_err(|e| StorageError::from_sdk(digest, e))?;
        out.upload_id()
            .map(String::from)
            .ok_or_else(|| StorageError::Other("no upload id returned".into()))
    }

    pub async fn presign_part(
        &self,
        upload: &str,
        digest: &Digest,
        upload_id: &str,
        part: &PartPlan,
        expires: Duration,
    ) -> Result<String, StorageError> {
        let req = self
            .presigner
            .upload_part()
            .bucket(&self.bucket)
            .key(self.upload_key(upload, digest))
            .upload_id(upload_id)
            .part_number(part.number)
            .content_length(part.len as i64)
            .presigned(presigning(expires)?)
            .await
            .map_err(|e| StorageError::from_sdk(digest, e))?;
        Ok(req.uri().to_string())
    }

    /// Complete a multipart upload from the parts the server holds (the uploader
    /// needs no credentials to report ETags), every page of them.
    pub async fn complete_multipart(
        &self,
        upload: &str,
        digest: &Digest,
        upload_id: &str,
    ) -> Result<(), StorageError> {
        let key = self.upload_key(upload, digest);
        let mut parts = Vec::new();
        let mut pages = self
            .client
            .list_parts()
            .bucket(&self.bucket)
            .key(&key)
            .upload_id(upload_id)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| StorageError::from_sdk(digest, e))?;
            parts.extend(page.parts().iter().map(|p| {
                CompletedPart::builder()
                    .set_part_number(p.part_number())
                    .set_e_tag(p.e_tag().map(String::from))
                    .build()
            }));
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| StorageError::from_sdk(digest, e))?;
        Ok(())
    }

    pub async fn abort_multipart(
        &self,
        upload: &str,
        digest: &Digest,
        upload_id: &str,
    ) -> Result<(), StorageError> {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(self.upload_key(upload, digest))
            .upload_id(upload_id)
            .send()
            .await
            .map_err(|e| StorageError::from_sdk(digest, e))?;
        Ok(())
    }

    /// The multipart uploads in progress under `upload` (digest and upload id), every
    /// page: what status records may miss some (a crash between starting one and
    /// writing status), storage does not.
    pub async fn open_multipart(&self, upload: &str) -> Result<Vec<(Digest, String)>, StorageError> {
        let prefix = format!("{}/uploads/{upload}/sha256/", self.prefix);
        // Listing names no blob: a 404 is the bucket's, not a digest's.
        let listing_error = |e| match StorageError::from_sdk(&Digest::of(b""), e) {
            StorageError::NotFound(_) => StorageError::Other(format!("bucket {} not found", self.bucket)),
            other => other,
        };
        let mut open = Vec::new();
        let (mut key_marker, mut id_marker) = (None, None);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(&self.bucket)
                .prefix(&prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(listing_error)?;
            for u in page.uploads() {
                let digest = u
                    .key()
                    .and_then(|k| k.strip_prefix(&prefix))
                    .and_then(|hex| format!("sha256:{hex}").parse::<Digest>().ok());
                if let (Some(digest), Some(id)) = (digest, u.upload_id()) {
                    open.push((digest, id.to_string()));
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(open);
            }
            let next = (
                page.next_key_marker().map(String::from),
                page.next_upload_id_marker().map(String::from),
            );
            // A server that hands back the same place (or none) would loop forever.
            if next == (None, None) || next == (key_marker.clone(), id_marker.clone()) {
                return Ok(open);
            }
            (key_marker, id_marker) = next;
        }
    }

    /// Move a completed multipart upload into place: its bytes are checked against the
    /// digest at the upload key, then copied to the blob key. Wrong bytes never reach
    /// the blob key (they are deleted, and the error says why).
    pub async fn promote(&self, upload: &str, digest: &Digest, size: u64) -> Result<(), StorageError> {
        let from = self.upload_key(upload, digest);
        let checked = self.read_checked(&from, digest, size, |_| {}).await.map(|_| ());
        if let Ok(()) = checked {
            self.client
                .copy_object()
                .bucket(&self.bucket)
                .copy_source(format!("{}/{from}", self.bucket))
                .key(self.key(digest))
                .send()
                .await
                .map_err(|e| StorageError::from_sdk(digest, e))?;
        }
        // The upload key goes once it has served (copied, or proven wrong); after a
        // transient failure it stays, so the next attempt can promote it.
        if matches!(checked, Ok(()) | Err(StorageError::Mismatch { .. })) {
            self.delete_key(&from, digest).await?;
        }
        checked
    }

    /// Upload bytes directly (the CLI's direct mode, tests).
    pub async fn put(&self, digest: &Digest, bytes: Vec<u8>) -> Result<(), StorageError> {
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(self.key(digest))
            .body(bytes.into())
            .send()
            .await
            .map_err(|e| StorageError::from_sdk(digest, e))?;
        Ok(())
    }

    /// Stream the blob back and check its size and sha256, reading at most
    /// `size + 1` bytes: a stored object cannot make this read without bound.
    /// Returns the ETag storage gave with the bytes it sent.
    pub async fn verify(&self, digest: &Digest, size: u64) -> Result<Option<String>, StorageError> {
        self.read_checked(&self.key(digest), digest, size, |_| {}).await
    }

    /// Download the blob into memory, checked like [`Blobs::verify`]: the bytes
    /// returned are exactly the ones the digest names.
    pub async fn fetch(&self, digest: &Digest, size: u64) -> Result<Vec<u8>, StorageError> {
        let mut out = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 30));
        self.read_checked(&self.key(digest), digest, size, |chunk| {
            out.extend_from_slice(chunk)
        })
        .await?;
        Ok(out)
    }

    async fn read_checked(
        &self,
        key: &str,
        digest: &Digest,
        size: u64,
        mut sink: impl FnMut(&[u8]),
    ) -> Result<Option<String>, StorageError> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| StorageError::from_sdk(digest, e))?;
        let etag = out.e_tag().map(String::from);
        let mut body = out.body;
        let mut check = Checked::new(*digest, size);
        while let Some(chunk) = body
            .try_next()
            .await
            .map_err(|e| StorageError::Unavailable(e.to_string()))?
        {
            if !check.update(&chunk) {
                break;
            }
            sink(&chunk);
        }
        check.finish().map(|()| etag)
    }

    pub async fn delete(&self, digest: &Digest) -> Result<(), StorageError> {
        self.delete_key(&self.key(digest), digest).await
    }

    async fn delete_key(&self, key: &str, digest: &Digest) -> Result<(), StorageError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| StorageError::from_sdk(digest, e))?;
        Ok(())
    }
}

/// A stored blob's size and ETag (storage's tag of those very bytes: another
/// write of the key gives another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    pub etag: Option<String>,
}

/// Checks a download as it streams: never more than `size + 1` bytes are taken, and
/// the result is the digest's verdict. Shared by every reader of blobs (the operator
/// through the SDK, pods through presigned URLs).
#[derive(Debug)]
pub struct Checked {
    digest: Digest,
    size: u64,
    read: u64,
    hasher: Sha256,
}

impl Checked {
    pub fn new(digest: Digest, size: u64) -> Self {
        Self {
            digest,
            size,
            read: 0,
            hasher: Sha256::new(),
        }
    }

    /// Take a chunk; false once more than `size` bytes arrived (stop reading).
    pub fn update(&mut self, chunk: &[u8]) -> bool {
        self.read += chunk.len() as u64;
        if self.read > self.size {
            return false;
        }
        self.hasher.update(chunk);
        true
    }

    pub fn finish(self) -> Result<(), StorageError> {
        use aether_artifact::digest::VerifyError;
        let mismatch = |source| StorageError::Mismatch {
            digest: self.digest,
            source,
        };
        if self.read != self.size {
            return Err(mismatch(VerifyError::SizeMismatch {
                expected: self.size,
                actual: self.read,
                more: self.read > self.size,
            }));
        }
        let actual = Digest::from_raw(self.hasher.finalize().into());
        if actual != self.digest {
            return Err(mismatch(VerifyError::DigestMismatch {
                expected: self.digest,
                actual,
            }));
        }
        Ok(())
    }
}

/// Standard base64 (with padding), as S3's checksum headers want it.
fn base64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn sdk_client(config: &StorageConfig, endpoint: Option<&str>) -> aws_sdk_s3::Client {
    let http = Builder::new()
        .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
        .build_https();
    let mut builder = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(config.region.clone()))
        .credentials_provider(Credentials::new(
            &config.access_key_id,
            &config.secret_access_key,
            None,
            None,
            "aether",
        ))
        .force_path_style(config.path_style)
        .http_client(http)
        .retry_config(RetryConfig::standard().with_max_attempts(config.max_attempts.max(1)))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(config.operation_timeout)
                .build(),
        );
    if let Some(endpoint) = endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    aws_sdk_s3::Client::from_conf(builder.build())
}

fn presigning(expires: Duration) -> Result<PresigningConfig, StorageError> {
    PresigningConfig::expires_in(expires).map_err(|e| StorageError::Other(format!("presigning: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_content_addressed_under_the_namespace() {
        let d = Digest::of(b"layer");
        let ns = namespace_prefix("", "team-a");
        assert_eq!(blob_key(&ns, &d), format!("ns/team-a/blobs/sha256/{}", d.hex()));
        let ns = namespace_prefix("/team/aether/", "b");
        assert_eq!(
            blob_key(&ns, &d),
            format!("team/aether/ns/b/blobs/sha256/{}", d.hex())
        );
        assert_eq!(
            upload_key(&ns, "uid-1", &d),
            format!("team/aether/ns/b/uploads/uid-1/sha256/{}", d.hex())
        );
    }

    #[test]
    fn downloads_are_checked_and_bounded() {
        let data = b"hello, blob";
        let d = Digest::of(data);
        let mut ok = Checked::new(d, data.len() as u64);
        assert!(ok.update(&data[..4]) && ok.update(&data[4..]));
        ok.finish().unwrap();
        let mut long = Checked::new(d, 3);
        assert!(!long.update(data), "reading stops past the size");
        assert_eq!(long.finish().unwrap_err().reason(), "DigestMismatch");
        let mut wrong = Checked::new(d, data.len() as u64);
        wrong.update(b"hello, blub");
        assert!(wrong.finish().unwrap_err().to_string().contains("does not match"));
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }

    #[test]
    fn parts_cover_the_blob_exactly() {
        let plans = plan_parts(12 << 20, 5 << 20);
        assert_eq!(plans.len(), 3);
        assert_eq!(
            plans[0],
            PartPlan {
                number: 1,
                offset: 0,
                len: 5 << 20
            }
        );
        assert_eq!(
            plans[2],
            PartPlan {
                number: 3,
                offset: 10 << 20,
                len: 2 << 20
            }
        );
        assert_eq!(plans.iter().map(|p| p.len).sum::<u64>(), 12 << 20);
        // Below S3's minimum the part size is raised.
        assert_eq!(plan_parts(12 << 20, 1 << 20).len(), 3);
        // Huge blobs stay within 10,000 parts.
        let huge = plan_parts(100 << 30, 5 << 20);
        assert!(huge.len() as u64 <= MAX_PARTS);
        assert_eq!(huge.iter().map(|p| p.len).sum::<u64>(), 100 << 30);
        // An empty blob is one empty part.
        assert_eq!(
            plan_parts(0, 5 << 20),
            [PartPlan {
                number: 1,
                offset: 0,
                len: 0
            }]
        );
    }

    #[tokio::test]
    async fn presigned_urls_name_the_blob_expire_and_never_carry_the_secret() {
        let config = StorageConfig {
            endpoint: Some("http://127.0.0.1:9".into()),
            public_endpoint: None,
            download_endpoint: None,
            region: "garage".into(),
            bucket: "aether".into(),
            prefix: "p".into(),
            path_style: true,
            access_key_id: "GKTESTKEY".into(),
            secret_access_key: "very-secret".into(),
            max_attempts: 1,
            operation_timeout: Duration::from_secs(1),
        };
        let storage = Storage::new(&config).namespace("team-a");
        let d = Digest::of(b"x");
        let put = storage
            .presign_put(&d, 1234, Duration::from_secs(600))
            .await
            .unwrap();
        let url = put.url;
        assert!(
            url.starts_with(&format!(
                "http://127.0.0.1:9/aether/p/ns/team-a/blobs/sha256/{}?",
                d.hex()
            )),
            "{url}"
        );
        // The content is signed: the uploader must send the digest's checksum.
        assert!(url.contains("x-amz-checksum-sha256"), "{url}");
        assert_eq!(
            put.headers.get("x-amz-checksum-sha256"),
            Some(&base64(d.as_bytes())),
            "{:?}",
            put.headers
        );
        assert!(url.contains("X-Amz-Expires=600"), "{url}");
        assert!(url.contains("X-Amz-Credential=GKTESTKEY%2F"), "{url}");
        assert!(url.contains("content-length"), "the size is signed: {url}");
        assert!(!url.contains("very-secret"));
        let part = storage
            .presign_part(
                "uid-1",
                &d,
                "upload-1",
                &PartPlan {
                    number: 2,
                    offset: 5 << 20,
                    len: 100,
                },
                Duration::from_secs(60),
            )
            .await
            .unwrap();
        assert!(
            part.contains("partNumber=2") && part.contains("uploadId=upload-1"),
            "{part}"
        );
        assert!(
            part.contains("/ns/team-a/uploads/uid-1/"),
            "parts never write the blob key: {part}"
        );
        assert!(format!("{config:?}").contains("<redacted>"));

        // Uploaders get URLs for the public address; the operator keeps its own.
        let public = Storage::new(&StorageConfig {
            public_endpoint: Some("https://s3.example.test".into()),
            download_endpoint: Some("http://10.0.0.1:3900".into()),
            ..config
        })
        .namespace("team-a");
        let url = public
            .presign_put(&d, 1, Duration::from_secs(60))
            .await
            .unwrap()
            .url;
        assert!(
            url.starts_with("https://s3.example.test/aether/p/ns/team-a/blobs/sha256/"),
            "{url}"
        );
        // Pods download from the address they reach storage at.
        let get = public.presign_get(&d, Duration::from_secs(60)).await.unwrap();
        assert!(
            get.starts_with("http://10.0.0.1:3900/aether/p/ns/team-a/blobs/sha256/"),
            "{get}"
        );
    }
}

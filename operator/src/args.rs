//! Operator flags; each has an `AETHER_…` (or standard AWS) environment fallback.

use std::time::Duration;

use aether_storage::StorageConfig;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "aether-operator", version, about = "Aether's Kubernetes operator")]
pub struct Args {
    /// S3 endpoint; empty for AWS's regional endpoint.
    #[arg(long, env = "AETHER_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Endpoint put into presigned upload URLs, when developers reach storage at
    /// another address than the operator does [default: --s3-endpoint].
    #[arg(long, env = "AETHER_S3_PUBLIC_ENDPOINT")]
    pub s3_public_endpoint: Option<String>,
    #[arg(long, env = "AETHER_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    #[arg(long, env = "AETHER_S3_BUCKET")]
    pub s3_bucket: String,
    /// Key prefix for blobs: `<prefix>/blobs/sha256/<hex>`.
    #[arg(long, env = "AETHER_S3_PREFIX", default_value = "")]
    pub s3_prefix: String,
    #[arg(long, env = "AETHER_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: String,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: String,
    /// How long presigned upload URLs stay valid.
    #[arg(long, env = "AETHER_UPLOAD_URL_TTL_SECONDS", default_value_t = 900)]
    pub upload_url_ttl_seconds: u64,
    /// Blobs larger than this are uploaded in parts.
    #[arg(long, env = "AETHER_MULTIPART_THRESHOLD_BYTES", default_value_t = 64 << 20)]
    pub multipart_threshold_bytes: u64,
    #[arg(long, env = "AETHER_PART_SIZE_BYTES", default_value_t = 16 << 20)]
    pub part_size_bytes: u64,
}

impl Args {
    pub fn storage(&self) -> StorageConfig {
        StorageConfig {
            endpoint: self.s3_endpoint.clone().filter(|e| !e.is_empty()),
            public_endpoint: self.s3_public_endpoint.clone().filter(|e| !e.is_empty()),
            region: self.s3_region.clone(),
            bucket: self.s3_bucket.clone(),
            prefix: self.s3_prefix.clone(),
            path_style: self.s3_path_style,
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
            max_attempts: 4,
            operation_timeout: Duration::from_secs(120),
        }
    }
}

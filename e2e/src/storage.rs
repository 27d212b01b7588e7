//! The S3-compatible storage under test, from the environment that
//! `hack/cluster.sh env` prints (or the user's own, for another cluster).

use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_smithy_http_client::{Builder, tls};

#[derive(Clone, Debug)]
pub struct StorageSettings {
    /// Endpoint as the host reaches it (`AETHER_S3_ENDPOINT`).
    pub endpoint: String,
    /// Endpoint as pods reach it (`AETHER_S3_POD_ENDPOINT`, default: the same).
    pub pod_endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key_id: String,
    secret_access_key: String,
}

impl StorageSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let var = |k: &str| {
            std::env::var(k).with_context(|| {
                format!("{k} is not set: run `eval \"$(hack/cluster.sh env)\"` or set the storage variables for your cluster")
            })
        };
        let endpoint = var("AETHER_S3_ENDPOINT")?;
        Ok(Self {
            pod_endpoint: std::env::var("AETHER_S3_POD_ENDPOINT").unwrap_or_else(|_| endpoint.clone()),
            endpoint,
            region: var("AETHER_S3_REGION")?,
            bucket: var("AETHER_S3_BUCKET")?,
            access_key_id: var("AWS_ACCESS_KEY_ID")?,
            secret_access_key: var("AWS_SECRET_ACCESS_KEY")?,
        })
    }

    /// A SigV4 client for `endpoint` (path-style addressing, as self-hosted S3 needs).
    pub fn client_for(&self, endpoint: &str) -> aws_sdk_s3::Client {
        let http = Builder::new()
            .tls_provider(tls::Provider::Rustls(tls::rustls_provider::CryptoMode::Ring))
            .build_https();
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint)
            .region(Region::new(self.region.clone()))
            .credentials_provider(Credentials::new(
                &self.access_key_id,
                &self.secret_access_key,
                None,
                None,
                "aether-e2e",
            ))
            .force_path_style(true)
            .http_client(http)
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            )
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub fn host_client(&self) -> aws_sdk_s3::Client {
        self.client_for(&self.endpoint)
    }

    /// A client whose presigned URLs carry the address pods use.
    pub fn pod_client(&self) -> aws_sdk_s3::Client {
        self.client_for(&self.pod_endpoint)
    }
}

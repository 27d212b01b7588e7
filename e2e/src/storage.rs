//! The S3-compatible storage under test, from the environment that
//! `hack/cluster.sh env` prints (or the user's own, for another cluster).

use aether_storage::{Storage, StorageConfig};
use anyhow::Context as _;

#[derive(Clone, Debug)]
pub struct StorageSettings {
    /// As the host reaches it (`AETHER_S3_ENDPOINT` and friends).
    pub config: StorageConfig,
    /// Endpoint as pods reach it (`AETHER_S3_POD_ENDPOINT`, default: the same).
    pub pod_endpoint: Option<String>,
}

impl StorageSettings {
    pub fn from_env() -> anyhow::Result<Self> {
        let mut config = StorageConfig::from_env()
            .context("run `eval \"$(hack/cluster.sh env)\"` or set the storage variables for your cluster")?;
        config.max_attempts = 2;
        let pod_endpoint = std::env::var("AETHER_S3_POD_ENDPOINT")
            .ok()
            .or_else(|| config.endpoint.clone());
        Ok(Self { config, pod_endpoint })
    }

    pub fn host(&self) -> Storage {
        Storage::new(&self.config)
    }

    /// Storage whose presigned URLs carry the address pods use.
    pub fn pod(&self) -> Storage {
        Storage::new(&StorageConfig {
            endpoint: self.pod_endpoint.clone(),
            ..self.config.clone()
        })
    }
}

/// The keys of the multipart uploads in progress under namespace `ns`'s prefix.
pub async fn open_uploads(storage: &Storage, ns: &str) -> anyhow::Result<Vec<String>> {
    let uploads = storage
        .client()
        .list_multipart_uploads()
        .bucket(storage.bucket())
        .prefix(namespace_prefix(ns))
        .send()
        .await?;
    Ok(uploads
        .uploads()
        .iter()
        .filter_map(|u| u.key().map(String::from))
        .collect())
}

/// Where namespace `ns`'s objects live (`AETHER_S3_PREFIX` as the operator has it).
pub fn namespace_prefix(ns: &str) -> String {
    aether_storage::namespace_prefix(&std::env::var("AETHER_S3_PREFIX").unwrap_or_default(), ns)
}

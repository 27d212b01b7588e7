//! Aether's operator. One controller per custom resource; this build reconciles
//! AetherArtifacts (the upload conversation). `main.rs` only parses flags.

pub mod args;
pub mod artifact;
pub mod conditions;

use std::sync::Arc;

use aether_crds::AetherArtifact;
use anyhow::Context as _;
use futures::StreamExt;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use tracing::{info, warn};

pub async fn run(args: args::Args) -> anyhow::Result<()> {
    info!(version = env!("CARGO_PKG_VERSION"), "aether-operator starting");
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let artifacts: Api<AetherArtifact> = Api::all(client.clone());
    artifacts
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .context(
            "listing AetherArtifacts: are the CRDs installed (kubectl apply --server-side -k config/crd)?",
        )?;

    let ctx = Arc::new(artifact::Context {
        client: client.clone(),
        storage: aether_storage::Storage::new(&args.storage()),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: artifact::MANAGER.into(),
                instance: None,
            },
        ),
        upload: artifact::UploadPolicy {
            url_ttl: std::time::Duration::from_secs(args.upload_url_ttl_seconds),
            multipart_threshold: args.multipart_threshold_bytes,
            part_size: args.part_size_bytes,
        },
    });
    Controller::new(artifacts, watcher::Config::default())
        .shutdown_on_signal()
        .run(artifact::reconcile, artifact::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                warn!(error = %e, "reconcile error");
            }
        })
        .await;
    info!("aether-operator stopped");
    Ok(())
}

//! Dev-hot apps (`spec.devHot`): `aether dev` swaps new code into the running pods
//! and then records it as the app's release (`spec.artifactRef`, with the
//! [`HOT_SWAPPED_ANNOTATION`] naming the same artifact). Such a release must not roll
//! the pods, which already run it, yet a pod created later must start on it. Pure
//! decisions, so the rule is in one place:
//! - the pod template names the release the pods were created with for as long as
//!   only code changes ([`template_release`]);
//! - the fetch Secret names the latest release ([`release_entry`]), which a new pod
//!   fetches.
//!
//! Any other change of `artifactRef` (`aether push`, a GitOps commit) rolls as usual.

use aether_artifact::hot::{HotPolicy, Release};
use aether_crds::AetherApp;
use aether_crds::pod::HOT_SWAPPED_ANNOTATION;
use k8s_openapi::api::apps::v1::Deployment;
use kube::ResourceExt;

use super::build::{ARTIFACT_ANNOTATION, DEV_HOT_BASE_ANNOTATION, DIGEST_ANNOTATION};
use super::validate::Validated;

/// The fetch Secret's key naming the release a new pod fetches (the runtime's
/// `fetch::RELEASE_FILE`).
pub const RELEASE_KEY: &str = "release";
/// The fetch Secret's key with the policy dev-hot pods check updates against, kept
/// current on every reconcile (the pods' env is frozen while the app is invalid).
pub const POLICY_KEY: &str = "hot-policy";

/// The [`POLICY_KEY`] entry: updates are taken only while the app's release is valid,
/// under the policy and keys it was validated with. `None`: the app is not dev-hot.
pub fn policy_entry(app: &AetherApp, release: Option<&Validated>) -> Option<String> {
    app.spec.dev_hot.then(|| {
        let policy = release.map_or_else(HotPolicy::default, |r| HotPolicy {
            enabled: true,
            mode: Some(super::build::mode_name(r.policy).into()),
            trusted_keys: r.trusted_pem.clone(),
        });
        serde_json::to_string(&policy).unwrap_or_default()
    })
}

/// The release as the pod template should name it: `release` itself, unless the app
/// is dev-hot, its pods already run `release` (swapped in) and the Deployment's
/// template was made for the same base (dependencies, Node, start command): then the
/// template's own release stays, and nothing rolls.
pub fn template_release(app: &AetherApp, release: &Validated, running: Option<&Deployment>) -> Validated {
    let swapped = app.annotations().get(HOT_SWAPPED_ANNOTATION) == Some(&release.artifact);
    let template = running.and_then(|d| d.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref());
    let kept = template.filter(|a| a.get(DEV_HOT_BASE_ANNOTATION) == Some(&release.base_key));
    match kept.map(|a| {
        (
            a.get(ARTIFACT_ANNOTATION),
            a.get(DIGEST_ANNOTATION).and_then(|d| d.parse().ok()),
        )
    }) {
        Some((Some(artifact), Some(digest))) if app.spec.dev_hot && swapped => Validated {
            artifact: artifact.clone(),
            digest,
            ..release.clone()
        },
        _ => release.clone(),
    }
}

/// The fetch Secret's `release` entry for a dev-hot app: what its new pods fetch and
/// verify (the runtime's `fetch::Release`). None for any other app.
pub fn release_entry(app: &AetherApp, release: &Validated) -> Option<String> {
    app.spec.dev_hot.then(|| {
        let (signature_key_id, signature) = release.signature.clone().unzip();
        let entry = Release {
            digest: release.digest.to_string(),
            manifest: release.manifest_json.clone(),
            signature_key_id,
            signature,
        };
        serde_json::to_string(&entry).unwrap_or_default()
    })
}

/// The layers of a [`RELEASE_KEY`] entry (none if it cannot be read).
pub fn release_layers(entry: &str) -> Vec<aether_artifact::Digest> {
    serde_json::from_str::<Release>(entry)
        .ok()
        .and_then(|r| aether_artifact::Manifest::from_json(r.manifest.as_bytes()).ok())
        .map(|m| m.layers.iter().map(|l| l.digest).collect())
        .unwrap_or_default()
}

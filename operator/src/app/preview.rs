//! Preview environments (`spec.preview`, `aether push --preview`): an app the
//! operator deletes once its `expiresAt` passes, with the artifacts only it ran
//! (its children go with it by owner references). Pure.

use std::time::Duration;

use aether_crds::{AetherApp, AetherArtifact};
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

/// How long until the app, a preview, expires: zero once it has (`None`: not a
/// preview).
pub fn remaining(app: &AetherApp, now: Timestamp) -> Option<Duration> {
    let expires = app.spec.preview.as_ref()?.expires_at.0;
    let left = expires
        .as_millisecond()
        .saturating_sub(now.as_millisecond())
        .max(0);
    Some(Duration::from_millis(u64::try_from(left).unwrap_or(0)))
}

/// The next look at an app: `next`, or sooner when it expires before.
pub fn bound(app: &AetherApp, next: Duration, now: Timestamp) -> Duration {
    match remaining(app, now) {
        // A second past expiry, so that the look finds it expired.
        Some(left) => next.min(left + Duration::from_secs(1)),
        None => next,
    }
}

/// The artifacts to delete with the expired preview `app`: those made for it
/// (`spec.app`) that no other app of the namespace (`others`) runs, points at or
/// keeps among its releases.
pub fn artifacts_only_it_ran(app: &str, artifacts: &[AetherArtifact], others: &[&AetherApp]) -> Vec<String> {
    let used = |name: &str| {
        others.iter().any(|o| {
            o.spec.artifact_ref.name == name
                || o.status.as_ref().is_some_and(|s| {
                    s.artifact.as_ref().is_some_and(|a| a.name == name)
                        || s.history.iter().any(|r| r.artifact == name)
                })
        })
    };
    artifacts
        .iter()
        .filter(|a| a.spec.app == app && !used(&a.name_any()))
        .map(ResourceExt::name_any)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, artifact: &str, expires: Option<i64>) -> AetherApp {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherApp",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {
                "artifactRef": {"name": artifact},
                "preview": expires.map(|at| serde_json::json!({
                    "of": "shop", "expiresAt": Timestamp::from_second(at).unwrap().to_string(),
                })),
            },
        }))
        .unwrap()
    }

    fn artifact(name: &str, app: &str) -> AetherArtifact {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherArtifact",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {"app": app, "digest": format!("sha256:{}", "a".repeat(64)), "layers": [],
                     "runtime": {"nodeMajor": 20, "platform": "linux/amd64", "libc": "Glibc"},
                     "entrypoint": ["node", "server.js"]},
        }))
        .unwrap()
    }

    #[test]
    fn a_preview_is_looked_at_again_when_it_expires() {
        let now = Timestamp::from_second(1_000).unwrap();
        let preview = app("shop-pr-1", "a", Some(1_060));
        assert_eq!(remaining(&preview, now), Some(Duration::from_secs(60)));
        assert_eq!(
            bound(&preview, Duration::from_secs(300), now),
            Duration::from_secs(61)
        );
        assert_eq!(
            bound(&preview, Duration::from_secs(2), now),
            Duration::from_secs(2)
        );
        let past = Timestamp::from_second(2_000).unwrap();
        assert_eq!(remaining(&preview, past), Some(Duration::ZERO));
        let plain = app("shop", "a", None);
        assert_eq!(remaining(&plain, now), None);
        assert_eq!(
            bound(&plain, Duration::from_secs(300), now),
            Duration::from_secs(300)
        );
    }

    #[test]
    fn only_the_previews_own_artifacts_no_other_app_uses_go_with_it() {
        let artifacts = [
            artifact("shop-pr-1-aaa", "shop-pr-1"),
            artifact("shop-pr-1-bbb", "shop-pr-1"),
            artifact("shop-ccc", "shop"),
        ];
        // Another app was pointed at one of the preview's artifacts (by hand, GitOps).
        let other = app("shop", "shop-pr-1-bbb", None);
        let gone = artifacts_only_it_ran("shop-pr-1", &artifacts, &[&other]);
        assert_eq!(gone, vec!["shop-pr-1-aaa".to_string()]);
    }
}

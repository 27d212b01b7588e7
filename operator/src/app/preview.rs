//! Preview environments (`spec.preview`, `aether push --preview`): an app the
//! operator deletes once its `expiresAt` passes, with the artifacts only it ran
//! (its children go with it by owner references). Pure.

use std::time::Duration;

use aether_crds::{AetherApp, AetherArtifact, AetherRelease};
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

/// The artifacts to delete with the preview `app`, which expired at `expired`: those
/// made for it (`spec.app`) before then (a later one is a push bringing it back) that
/// no other app of the namespace (`others`) runs, points at or keeps, and no release
/// of another app (`releases`) names.
pub fn artifacts_only_it_ran(
    (app, expired): (&str, Timestamp),
    artifacts: &[AetherArtifact],
    others: &[&AetherApp],
    releases: &[AetherRelease],
) -> Vec<String> {
    let used = |name: &str| {
        others.iter().any(|o| {
            o.spec.artifact_ref.name == name
                || o.status.as_ref().is_some_and(|s| {
                    s.artifact.as_ref().is_some_and(|a| a.name == name)
                        || s.history.iter().any(|r| r.artifact == name)
                })
        }) || releases
            .iter()
            .any(|r| r.spec.artifact.name == name && r.spec.app != app)
    };
    artifacts
        .iter()
        .filter(|a| a.spec.app == app && !used(&a.name_any()))
        .filter(|a| {
            a.metadata
                .creation_timestamp
                .as_ref()
                .is_none_or(|t| t.0 <= expired)
        })
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
        let expired = Timestamp::from_second(1_000).unwrap();
        let gone = artifacts_only_it_ran(("shop-pr-1", expired), &artifacts, &[&other], &[]);
        assert_eq!(gone, vec!["shop-pr-1-aaa".to_string()]);
        // Nor one a release of another app names, nor one made after the expiry (a
        // push bringing the preview back).
        let kept: AetherRelease = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherRelease",
            "metadata": {"name": "shop-v1", "namespace": "team-a"},
            "spec": {"app": "shop", "version": 1, "cause": "Push",
                     "artifact": {"name": "shop-pr-1-aaa", "digest": format!("sha256:{}", "a".repeat(64))}},
        }))
        .unwrap();
        assert!(artifacts_only_it_ran(("shop-pr-1", expired), &artifacts, &[], &[kept]).len() == 1);
        let mut pushed_again = artifacts[0].clone();
        pushed_again.metadata.creation_timestamp = Some(
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(Timestamp::from_second(1_001).unwrap()),
        );
        assert!(artifacts_only_it_ran(("shop-pr-1", expired), &[pushed_again], &[], &[]).is_empty());
    }
}

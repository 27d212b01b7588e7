//! Which AetherArtifacts to keep. Pure: the artifact controller reads the apps of the
//! namespace and acts on the [`Decision`]; deleting an artifact then frees its blobs
//! through the finalizer (see [`crate::blobs`]).
//!
//! - An artifact an app runs or points at (`spec.artifactRef`, `status.artifact`) is
//!   kept, and so are the current and the last `keep_releases` releases of each app,
//!   and every artifact an AetherRelease of an app still names (the operator deletes
//!   releases past `keep_releases`; a rollback needs the artifact of each it keeps).
//! - An artifact that was deployed and has since fallen out of those releases is
//!   deleted: it was superseded.
//! - An artifact no app has ever deployed is kept for `unreferenced_grace` (a GitOps
//!   change that will reference it may be under review), then deleted.
//! - An upload never completed (the artifact never became Ready) is abandoned
//!   `abandoned_after` after the operator first answered its uploader (the Ready
//!   condition's first transition, to False): its multipart uploads are aborted and
//!   the artifact deleted. Not from its creation: an uploader cannot upload before
//!   that answer, and one waiting through an outage of the API server or of the
//!   operator has abandoned nothing.

use std::time::Duration;

use aether_crds::condition::READY;
use aether_crds::{AetherApp, AetherArtifact, AetherRelease};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::ResourceExt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Previous releases kept per app, besides the current one.
    pub keep_releases: usize,
    pub unreferenced_grace: Duration,
    pub abandoned_after: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep,
    /// Nothing refers to it yet: look again at this time.
    KeepUntil(Timestamp),
    Delete(Reason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Superseded,
    NeverDeployed,
    AbandonedUpload,
}

impl Reason {
    /// CamelCase, for Events and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Superseded => "Superseded",
            Self::NeverDeployed => "NeverDeployed",
            Self::AbandonedUpload => "AbandonedUpload",
        }
    }
}

/// The fate of `artifact`, given every AetherApp and AetherRelease of its namespace.
pub fn decide<A: std::borrow::Borrow<AetherApp>>(
    artifact: &AetherArtifact,
    apps: &[A],
    releases: &[AetherRelease],
    policy: &Policy,
    now: Timestamp,
) -> Decision {
    let name = artifact.name_any();
    // Releases go with their app (owner references), so a release here is one of an
    // app that exists, or one the garbage collector is about to remove.
    if releases.iter().any(|r| r.spec.artifact.name == name) {
        return Decision::Keep;
    }
    let mut deployed_before = false;
    for app in apps.iter().map(std::borrow::Borrow::borrow) {
        if app.spec.artifact_ref.name == name {
            return Decision::Keep;
        }
        let Some(status) = &app.status else { continue };
        if status.artifact.as_ref().is_some_and(|a| a.name == name) {
            return Decision::Keep;
        }
        if let Some(position) = status.history.iter().position(|r| r.artifact == name) {
            // history[0] is the current release; keep it and `keep_releases` more.
            if position <= policy.keep_releases {
                return Decision::Keep;
            }
            deployed_before = true;
        }
    }
    if deployed_before {
        return Decision::Delete(Reason::Superseded);
    }
    let created = artifact.metadata.creation_timestamp.as_ref().map_or(now, |t| t.0);
    // Verified once counts as uploaded: a blob lost from storage later makes the
    // artifact ask for it again, which is a repair waiting for a push, not an
    // abandoned upload.
    let uploaded = artifact.status.as_ref().is_some_and(|s| {
        s.verified_at.is_some()
            || s.conditions
                .iter()
                .any(|c| c.type_ == READY && c.status == "True")
    });
    let (limit, reason, since) = if uploaded {
        (policy.unreferenced_grace, Reason::NeverDeployed, created)
    } else {
        // Never uploaded, so Ready has been False since the first answer.
        let answered = artifact
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
            .map(|c| c.last_transition_time.0);
        let Some(answered) = answered else {
            // Not answered yet: this reconcile is the first to.
            return Decision::Keep;
        };
        (
            policy.abandoned_after,
            Reason::AbandonedUpload,
            answered.max(created),
        )
    };
    let deadline = since
        .checked_add(SignedDuration::try_from(limit).unwrap_or(SignedDuration::MAX))
        .unwrap_or(Timestamp::MAX);
    if now >= deadline {
        Decision::Delete(reason)
    } else {
        Decision::KeepUntil(deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_crds::{AetherAppStatus, DeployedArtifact, Release};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn policy() -> Policy {
        Policy {
            keep_releases: 2,
            unreferenced_grace: Duration::from_secs(3600),
            abandoned_after: Duration::from_secs(600),
        }
    }

    fn artifact(name: &str, created: i64, ready: bool) -> AetherArtifact {
        let mut a: AetherArtifact = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherArtifact",
            "metadata": {"name": name, "namespace": "ns"},
            "spec": {"app": "web", "digest": format!("sha256:{}", "a".repeat(64)), "layers": [],
                     "runtime": {"nodeMajor": 20, "platform": "linux/amd64", "libc": "Glibc"},
                     "entrypoint": ["node", "server.js"]}
        }))
        .unwrap();
        a.metadata.creation_timestamp = Some(Time(at(created)));
        a.status = Some(aether_crds::AetherArtifactStatus {
            conditions: vec![Condition {
                type_: READY.into(),
                status: if ready { "True" } else { "False" }.into(),
                reason: if ready { "Verified" } else { "AwaitingUpload" }.into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: Time(at(created)),
            }],
            ..Default::default()
        });
        a
    }

    /// An app pointing at `current`, having deployed `history` (newest first).
    fn app(current: &str, history: &[&str]) -> AetherApp {
        let mut app: AetherApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherApp",
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"artifactRef": {"name": current}}
        }))
        .unwrap();
        app.status = Some(AetherAppStatus {
            artifact: history.first().map(|h| DeployedArtifact {
                name: h.to_string(),
                digest: String::new(),
            }),
            history: history
                .iter()
                .map(|h| Release {
                    artifact: h.to_string(),
                    digest: String::new(),
                    deployed_at: Time(at(0)),
                })
                .collect(),
            ..Default::default()
        });
        app
    }

    #[test]
    fn the_current_and_last_releases_are_kept_older_ones_deleted() {
        let apps = [app("v5", &["v5", "v4", "v3", "v2", "v1"])];
        let now = at(100_000);
        for kept in ["v5", "v4", "v3"] {
            assert_eq!(
                decide(&artifact(kept, 0, true), &apps, &[], &policy(), now),
                Decision::Keep,
                "{kept}"
            );
        }
        for gone in ["v2", "v1"] {
            assert_eq!(
                decide(&artifact(gone, 0, true), &apps, &[], &policy(), now),
                Decision::Delete(Reason::Superseded),
                "{gone}"
            );
        }
    }

    #[test]
    fn an_artifact_a_kept_release_names_is_kept_past_the_history() {
        let apps = [app("v5", &["v5", "v4", "v3", "v2", "v1"])];
        let release: aether_crds::AetherRelease = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherRelease",
            "metadata": {"name": "web-v1", "namespace": "ns"},
            "spec": {"app": "web", "version": 1, "cause": "Push",
                     "artifact": {"name": "v1", "digest": "sha256:1"}}
        }))
        .unwrap();
        let now = at(100_000);
        assert_eq!(
            decide(
                &artifact("v1", 0, true),
                &apps,
                std::slice::from_ref(&release),
                &policy(),
                now
            ),
            Decision::Keep
        );
        assert_eq!(
            decide(&artifact("v2", 0, true), &apps, &[release], &policy(), now),
            Decision::Delete(Reason::Superseded)
        );
    }

    #[test]
    fn what_an_app_points_at_is_kept_even_while_it_rolls_out_or_fails() {
        // spec points at v6 (not yet in history), status still runs v5.
        let apps = [app("v6", &["v5", "v4"])];
        let now = at(100_000);
        assert_eq!(
            decide(&artifact("v6", 0, true), &apps, &[], &policy(), now),
            Decision::Keep
        );
        assert_eq!(
            decide(&artifact("v5", 0, true), &apps, &[], &policy(), now),
            Decision::Keep
        );
        // Even an artifact far down the history stays while the spec names it (rollback).
        let rollback = [app("v1", &["v5", "v4", "v3", "v2", "v1"])];
        assert_eq!(
            decide(&artifact("v1", 0, true), &rollback, &[], &policy(), now),
            Decision::Keep
        );
    }

    #[test]
    fn never_deployed_artifacts_wait_out_the_grace_period() {
        let apps = [app("v2", &["v2"])];
        let pushed = artifact("gitops-candidate", 0, true);
        assert_eq!(
            decide(&pushed, &apps, &[], &policy(), at(60)),
            Decision::KeepUntil(at(3600))
        );
        assert_eq!(
            decide(&pushed, &apps, &[], &policy(), at(3600)),
            Decision::Delete(Reason::NeverDeployed)
        );
        // With no app at all (e.g. `push --no-deploy` for a GitOps repository), likewise.
        assert_eq!(
            decide(&pushed, &[] as &[AetherApp], &[], &policy(), at(60)),
            Decision::KeepUntil(at(3600))
        );
    }

    #[test]
    fn uploads_never_completed_are_abandoned_sooner() {
        let stuck = artifact("half-uploaded", 0, false);
        assert_eq!(
            decide(&stuck, &[] as &[AetherApp], &[], &policy(), at(599)),
            Decision::KeepUntil(at(600))
        );
        assert_eq!(
            decide(&stuck, &[] as &[AetherApp], &[], &policy(), at(600)),
            Decision::Delete(Reason::AbandonedUpload)
        );
        // The clock starts when the uploader was first answered, not at creation
        // (the operator or the API server may have been away meanwhile).
        let mut late = stuck.clone();
        late.status.as_mut().unwrap().conditions[0].last_transition_time = Time(at(500));
        assert_eq!(
            decide(&late, &[] as &[AetherApp], &[], &policy(), at(600)),
            Decision::KeepUntil(at(1100))
        );
        let mut unanswered = stuck.clone();
        unanswered.status = None;
        assert_eq!(
            decide(&unanswered, &[] as &[AetherApp], &[], &policy(), at(9999)),
            Decision::Keep,
            "never answered: nothing to abandon yet"
        );
        // ... unless an app already points at it (a push is waiting for it).
        let waiting = [app("half-uploaded", &[])];
        assert_eq!(decide(&stuck, &waiting, &[], &policy(), at(9999)), Decision::Keep);
        // An artifact verified once that lost a blob waits for a repair, as long as a
        // verified one would.
        let mut lost = stuck.clone();
        lost.status.as_mut().unwrap().verified_at =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(10)));
        assert_eq!(
            decide(&lost, &[] as &[AetherApp], &[], &policy(), at(600)),
            decide(
                &artifact("verified", 0, true),
                &[] as &[AetherApp],
                &[],
                &policy(),
                at(600)
            )
        );
    }
}

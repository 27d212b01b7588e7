//! The app's releases (AetherRelease objects): which to record, which state each is
//! in, which fall out of retention. Pure: the reconcile lists the app's releases,
//! calls [`plan`] once its Deployment is applied, and carries the plan out.
//!
//! - A release is recorded whenever what the pods run changes: the artifact (its
//!   digest) or the configuration (`spec.env`, `spec.envFrom`). Its version is one
//!   more than the newest. Its cause is `Rollback` when the app carries
//!   `aether.dev/rollback-to: N` and the content is release N's, else `Config` when
//!   only the configuration changed, else `Push`.
//! - A release has no state until the operator has judged its rollout: it becomes
//!   `Active` with `readyAt` once the rollout completes (the app served it), or
//!   `Failed` if it fails before that. The others are `Superseded` once a newer one
//!   is made (a `Failed` one stays `Failed`).
//! - The newest `keep + 1` releases are kept, the older ones deleted, except the
//!   newest older one that served and, while the app is fallen back (below), the
//!   release it went back to and the one that failed. Artifact
//!   retention keeps whatever a kept release names; the app's config Secrets
//!   (`aether config set --secret`) that only deleted releases named go with them.
//! - With `spec.autoRollback`, an app whose spec names the content of a `Failed`
//!   release runs the newest older release that served instead ([`automatic`]),
//!   recorded once as an `AutomaticRollback` release, until the spec changes.

use std::collections::BTreeSet;

use aether_crds::{
    AetherApp, AetherRelease, AetherReleaseSpec, AetherReleaseStatus, ROLLBACK_TO_ANNOTATION, ReleaseCause,
    ReleaseConfig, ReleaseState, ReleasedArtifact, is_config_secret_name,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};

use super::build::secret_names;
use super::status::Rollout;
use super::validate::Validated;

/// What a release records of the app as applied.
pub fn content(app: &AetherApp, release: &Validated) -> (ReleasedArtifact, ReleaseConfig) {
    (
        ReleasedArtifact {
            name: release.artifact.clone(),
            digest: release.digest.to_string(),
        },
        ReleaseConfig {
            env: app.spec.env.clone(),
            env_from: app.spec.env_from.clone(),
        },
    )
}

/// The app's spec asks for a release whose rollout failed, and it goes back.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fallback<'a> {
    /// The newest release of the spec's content, `Failed`.
    pub failed: &'a AetherRelease,
    /// The newest older release that served, which runs instead.
    pub to: &'a AetherRelease,
}

/// The newest release of the spec's content (artifact name, which is
/// content-addressed, and configuration), if one was recorded.
fn spec_release<'a>(app: &AetherApp, releases: &'a [AetherRelease]) -> Option<&'a AetherRelease> {
    releases
        .iter()
        .filter(|r| r.spec.artifact.name == app.spec.artifact_ref.name)
        .filter(|r| r.spec.config.env == app.spec.env && r.spec.config.env_from == app.spec.env_from)
        .max_by_key(|r| r.spec.version)
}

/// The release to go back to from `from` (a version, or the spec's newest): the
/// newest older one that served and did not fail, of other content, that reads no
/// Secret or ConfigMap the spec does not (the admission policy judged the spec's
/// references; a release's older ones may have been removed on purpose).
fn last_good<'a>(
    app: &AetherApp,
    releases: &'a [AetherRelease],
    from: Option<i64>,
) -> Option<&'a AetherRelease> {
    let spec_sources = super::build::config_sources_of(&app.spec.env, &app.spec.env_from);
    releases
        .iter()
        .filter(|r| from.is_none_or(|v| r.spec.version < v))
        .filter(|r| {
            r.spec.artifact.name != app.spec.artifact_ref.name
                || r.spec.config.env != app.spec.env
                || r.spec.config.env_from != app.spec.env_from
        })
        .filter(|r| {
            let status = r.status.clone().unwrap_or_default();
            status.ready_at.is_some() && status.state != Some(ReleaseState::Failed)
        })
        .filter(|r| {
            super::build::config_sources_of(&r.spec.config.env, &r.spec.config.env_from)
                .is_subset(&spec_sources)
        })
        .max_by_key(|r| r.spec.version)
}

/// With `spec.autoRollback`: does the app go back, and to which release? Only while
/// the spec is the one whose release failed (`failedGeneration`): any change of the
/// app (a push, `aether rollback` to that content, an edit) tries it again.
pub fn automatic<'a>(app: &AetherApp, releases: &'a [AetherRelease]) -> Option<Fallback<'a>> {
    if !app.spec.auto_rollback {
        return None;
    }
    let failed = spec_release(app, releases).filter(|r| {
        let status = r.status.clone().unwrap_or_default();
        status.state == Some(ReleaseState::Failed) && status.failed_generation == app.metadata.generation
    })?;
    let to = last_good(app, releases, Some(failed.spec.version))?;
    Some(Fallback { failed, to })
}

/// With `spec.autoRollback`, the spec's rollout just failed: will the next look go
/// back? Exactly when [`automatic`] will, once the spec's release is marked Failed
/// (it is, having never served).
pub fn can_fall_back(app: &AetherApp, releases: &[AetherRelease]) -> bool {
    let spec = spec_release(app, releases);
    app.spec.auto_rollback
        && spec.is_none_or(|r| r.status.as_ref().is_none_or(|s| s.ready_at.is_none()))
        && last_good(app, releases, spec.map(|r| r.spec.version)).is_some()
}

/// `app` as it runs when it falls back: the release's artifact and configuration.
pub fn fallen_back(app: &AetherApp, to: &AetherRelease) -> AetherApp {
    let mut app = app.clone();
    app.spec.artifact_ref.name = to.spec.artifact.name.clone();
    app.spec.env = to.spec.config.env.clone();
    app.spec.env_from = to.spec.config.env_from.clone();
    app
}

/// What to write.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// A new release to create (with no status: its rollout is judged on a later look,
    /// unless it already is, in `statuses`).
    pub create: Option<AetherRelease>,
    /// Status changes, by release name.
    pub statuses: Vec<(String, AetherReleaseStatus)>,
    /// Releases past retention, by name.
    pub delete: Vec<String>,
    /// The app's config Secrets (see [`aether_crds::config_secret_name`]) that only
    /// the deleted releases name: neither the app's spec, what it runs, nor a kept
    /// release reads them. The executor deletes those the app owns.
    pub config_secrets: Vec<String>,
}

/// The versions of an automatic rollback the app is in ([`automatic`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FellBack {
    /// The spec's release, whose rollout failed.
    pub failed: i64,
    /// The release the app runs instead.
    pub to: i64,
}

/// Decide, from the app's `existing` releases, what the applied `artifact` and
/// `config` and the `rollout` they are in make of them. `fallback`: set when they
/// are an earlier release's, the operator having fallen back to it by itself.
pub fn plan(
    app: &AetherApp,
    (artifact, config): (ReleasedArtifact, ReleaseConfig),
    existing: &[AetherRelease],
    (rollout, fallback): (&Rollout, Option<FellBack>),
    keep: usize,
    now: Timestamp,
) -> Plan {
    let mut releases: Vec<&AetherRelease> = existing.iter().collect();
    releases.sort_by_key(|r| std::cmp::Reverse(r.spec.version));
    let newest = releases.first().copied();
    let same = |r: &AetherRelease| r.spec.artifact == artifact && r.spec.config == config;

    let mut plan = Plan::default();
    let current = match newest.filter(|r| same(r)) {
        Some(r) => r.name_any(),
        None => {
            let version = newest.map_or(1, |r| r.spec.version + 1);
            let rollback_of = app
                .annotations()
                .get(ROLLBACK_TO_ANNOTATION)
                .and_then(|v| v.trim().parse::<i64>().ok())
                .filter(|v| releases.iter().any(|r| r.spec.version == *v && same(r)));
            let (cause, rollback_of) = match (fallback.map(|f| f.to), rollback_of, newest) {
                (Some(v), _, _) => (ReleaseCause::AutomaticRollback, Some(v)),
                (None, Some(v), _) => (ReleaseCause::Rollback, Some(v)),
                (None, None, Some(r)) if r.spec.artifact.digest == artifact.digest => {
                    (ReleaseCause::Config, None)
                }
                (None, None, _) => (ReleaseCause::Push, None),
            };
            let name = app.name_any();
            let release = AetherRelease {
                metadata: ObjectMeta {
                    name: Some(AetherRelease::name_for(&name, version)),
                    namespace: app.namespace(),
                    labels: Some(AetherRelease::labels_for(&name)),
                    owner_references: app.controller_owner_ref(&()).map(|o| vec![o]),
                    ..Default::default()
                },
                spec: AetherReleaseSpec {
                    app: name,
                    version,
                    artifact: artifact.clone(),
                    config: config.clone(),
                    cause,
                    rollback_of,
                },
                status: None,
            };
            let created = release.name_any();
            plan.create = Some(release);
            created
        }
    };

    let created = plan.create.as_ref();
    for r in created.into_iter().chain(releases.iter().copied()) {
        let old = r.status.clone().unwrap_or_default();
        let mut new = old.clone();
        if r.name_any() == current {
            match rollout {
                Rollout::Complete { .. } => {
                    new.state = Some(ReleaseState::Active);
                    new.ready_at.get_or_insert(Time(now));
                }
                Rollout::Failed { .. } if old.ready_at.is_none() => {
                    new.state = Some(ReleaseState::Failed);
                    if old.state != Some(ReleaseState::Failed) {
                        new.failed_generation = app.metadata.generation;
                    }
                }
                // Still rolling out: a release is Active once it has served, so one
                // made just now has no state yet (a status write fewer per release;
                // the rollout's end writes `readyAt` anyway).
                _ => {
                    if old.ready_at.is_some() && old.state != Some(ReleaseState::Failed) {
                        new.state = Some(ReleaseState::Active);
                    }
                }
            }
        } else if old.state != Some(ReleaseState::Failed) {
            new.state = Some(ReleaseState::Superseded);
        }
        if new != old {
            plan.statuses.push((r.name_any(), new));
        }
    }

    let keep_good = last_good(app, existing, None).map(|g| g.name_any());
    // Newest first: the created one (if any), then the rest.
    let kept = keep + 1 - usize::from(created.is_some());
    plan.delete = releases
        .iter()
        .skip(kept)
        // While fallen back, neither the release gone back to (`app` runs its
        // content, so `last_good` passes it over) nor the failed one: the next
        // look's `automatic` needs both, or it applies the failed content again.
        .filter(|r| fallback.is_none_or(|f| r.spec.version != f.to && r.spec.version != f.failed))
        .map(|r| r.name_any())
        .filter(|n| *n != current)
        // The release an automatic rollback would go back to stays.
        .filter(|n| keep_good.as_ref() != Some(n))
        .collect();

    let named = |c: &ReleaseConfig| secret_names(&c.env, &c.env_from);
    let (deleted, kept): (Vec<&AetherRelease>, Vec<&AetherRelease>) =
        releases.iter().partition(|r| plan.delete.contains(&r.name_any()));
    let mut in_use: BTreeSet<String> = kept.iter().flat_map(|r| named(&r.spec.config)).collect();
    in_use.extend(named(&config));
    in_use.extend(secret_names(&app.spec.env, &app.spec.env_from));
    plan.config_secrets = deleted
        .iter()
        .flat_map(|r| named(&r.spec.config))
        .filter(|n| is_config_secret_name(&app.name_any(), n) && !in_use.contains(n))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_crds::AetherAppSpec;
    use k8s_openapi::api::core::v1::EnvVar;

    fn app(env: &[(&str, &str)], rollback_to: Option<&str>) -> AetherApp {
        let mut app = AetherApp::new(
            "web",
            serde_json::from_value::<AetherAppSpec>(serde_json::json!({"artifactRef": {"name": "web-a"}}))
                .unwrap(),
        );
        app.metadata.namespace = Some("team".into());
        app.metadata.uid = Some("uid-1".into());
        app.metadata.generation = Some(1);
        app.spec.env = env
            .iter()
            .map(|(k, v)| EnvVar {
                name: (*k).into(),
                value: Some((*v).into()),
                ..Default::default()
            })
            .collect();
        if let Some(v) = rollback_to {
            app.metadata.annotations = Some([(ROLLBACK_TO_ANNOTATION.to_string(), v.to_string())].into());
        }
        app
    }

    fn content_of(artifact: &str, app: &AetherApp) -> (ReleasedArtifact, ReleaseConfig) {
        (
            ReleasedArtifact {
                name: format!("web-{artifact}"),
                digest: format!("sha256:{artifact}"),
            },
            ReleaseConfig {
                env: app.spec.env.clone(),
                env_from: app.spec.env_from.clone(),
            },
        )
    }

    /// Release `version` of `artifact` with `app`'s config, in `state`.
    fn release(
        version: i64,
        artifact: &str,
        app: &AetherApp,
        state: ReleaseState,
        ready: bool,
    ) -> AetherRelease {
        let (artifact, config) = content_of(artifact, app);
        let mut r = AetherRelease::new(
            &AetherRelease::name_for("web", version),
            AetherReleaseSpec {
                app: "web".into(),
                version,
                artifact,
                config,
                cause: ReleaseCause::Push,
                rollback_of: None,
            },
        );
        r.status = Some(AetherReleaseStatus {
            state: Some(state),
            ready_at: ready.then_some(Time(Timestamp::UNIX_EPOCH)),
            failed_generation: (state == ReleaseState::Failed).then_some(1),
        });
        r
    }

    /// Release `version` as the operator makes it: no state until its rollout is
    /// judged.
    fn unjudged(version: i64, artifact: &str, app: &AetherApp) -> AetherRelease {
        AetherRelease {
            status: None,
            ..release(version, artifact, app, ReleaseState::Active, false)
        }
    }

    fn now() -> Timestamp {
        "2026-11-28T12:00:00Z".parse().unwrap()
    }

    fn progressing() -> Rollout {
        Rollout::Progressing {
            message: String::new(),
        }
    }

    fn state_of(plan: &Plan, name: &str) -> Option<ReleaseState> {
        plan.statuses
            .iter()
            .find(|(n, _)| n == name)
            .and_then(|(_, s)| s.state)
    }

    #[test]
    fn the_first_release_is_version_1_caused_by_a_push_and_owned_by_the_app() {
        let a = app(&[], None);
        let plan = plan(&a, content_of("a", &a), &[], (&progressing(), None), 5, now());
        let created = plan.create.clone().unwrap();
        assert_eq!(created.name_any(), "web-v1");
        assert_eq!(created.spec.version, 1);
        assert_eq!(created.spec.cause, ReleaseCause::Push);
        assert_eq!(created.labels()["aether.dev/app"], "web");
        assert_eq!(created.owner_references()[0].uid, "uid-1");
        assert!(plan.statuses.is_empty(), "no state until its rollout is judged");

        // The next looks: nothing while it rolls out, then Active once it served.
        let made = [created];
        let rolling = plan_for(&a, &made, &progressing());
        assert_eq!(rolling, Plan::default());
        let complete = Rollout::Complete { ready: 1, desired: 1 };
        let served = plan_for(&a, &made, &complete);
        assert_eq!(
            served.statuses,
            [(
                "web-v1".to_string(),
                AetherReleaseStatus {
                    state: Some(ReleaseState::Active),
                    ready_at: Some(Time(now())),
                    failed_generation: None,
                }
            )]
        );
    }

    /// The plan for `a`'s own artifact "a" over `existing`, keeping 5.
    fn plan_for(a: &AetherApp, existing: &[AetherRelease], rollout: &Rollout) -> Plan {
        plan(a, content_of("a", a), existing, (rollout, None), 5, now())
    }

    #[test]
    fn nothing_changes_while_the_same_release_rolls_out() {
        let a = app(&[], None);
        let existing = [release(1, "a", &a, ReleaseState::Active, false)];
        let plan = plan(
            &a,
            content_of("a", &a),
            &existing,
            (&progressing(), None),
            5,
            now(),
        );
        assert_eq!(plan, Plan::default());
    }

    #[test]
    fn a_new_artifact_is_a_push_and_supersedes_the_last() {
        let a = app(&[], None);
        let existing = [release(1, "a", &a, ReleaseState::Active, true)];
        let plan = plan(
            &a,
            content_of("b", &a),
            &existing,
            (&progressing(), None),
            5,
            now(),
        );
        let created = plan.create.as_ref().unwrap();
        assert_eq!(
            (created.spec.version, created.spec.cause),
            (2, ReleaseCause::Push)
        );
        assert_eq!(
            plan.statuses
                .iter()
                .map(|(n, s)| (n.as_str(), s.state))
                .collect::<Vec<_>>(),
            [("web-v1", Some(ReleaseState::Superseded))],
            "the new one has no state until its rollout is judged"
        );
    }

    #[test]
    fn new_configuration_for_the_same_artifact_is_a_config_release() {
        let before = app(&[("A", "1")], None);
        let after = app(&[("A", "2")], None);
        let existing = [release(1, "a", &before, ReleaseState::Active, true)];
        let plan = plan(
            &after,
            content_of("a", &after),
            &existing,
            (&progressing(), None),
            5,
            now(),
        );
        let created = plan.create.unwrap();
        assert_eq!(created.spec.cause, ReleaseCause::Config);
        assert_eq!(created.spec.config.env[0].value.as_deref(), Some("2"));
    }

    #[test]
    fn a_rollback_is_recorded_as_one_only_when_the_content_is_that_release() {
        let a = app(&[], Some("1"));
        let existing = [
            release(1, "a", &a, ReleaseState::Superseded, true),
            release(2, "b", &a, ReleaseState::Active, true),
        ];
        let back = plan(
            &a,
            content_of("a", &a),
            &existing,
            (&progressing(), None),
            5,
            now(),
        );
        let created = back.create.unwrap();
        assert_eq!(created.spec.cause, ReleaseCause::Rollback);
        assert_eq!((created.spec.version, created.spec.rollback_of), (3, Some(1)));

        // A stale annotation with other content (a later push) is a push.
        let later = plan(
            &a,
            content_of("c", &a),
            &existing,
            (&progressing(), None),
            5,
            now(),
        );
        let created = later.create.unwrap();
        assert_eq!(
            (created.spec.cause, created.spec.rollback_of),
            (ReleaseCause::Push, None)
        );
    }

    #[test]
    fn a_complete_rollout_marks_the_release_ready_once() {
        let a = app(&[], None);
        let existing = [release(1, "a", &a, ReleaseState::Active, false)];
        let complete = Rollout::Complete { ready: 1, desired: 1 };
        let plan1 = plan(&a, content_of("a", &a), &existing, (&complete, None), 5, now());
        let (_, status) = &plan1.statuses[0];
        assert_eq!(status.ready_at, Some(Time(now())));

        let ready = [release(1, "a", &a, ReleaseState::Active, true)];
        assert_eq!(
            plan(&a, content_of("a", &a), &ready, (&complete, None), 5, now()),
            Plan::default()
        );
    }

    #[test]
    fn a_failed_rollout_fails_a_release_that_never_served_and_it_stays_failed() {
        let a = app(&[], None);
        let failed = Rollout::Failed {
            reason: "CrashLoopBackOff".into(),
            message: String::new(),
        };
        let existing = [
            release(1, "a", &a, ReleaseState::Superseded, true),
            release(2, "b", &a, ReleaseState::Active, false),
        ];
        let plan1 = plan(&a, content_of("b", &a), &existing, (&failed, None), 5, now());
        assert_eq!(state_of(&plan1, "web-v2"), Some(ReleaseState::Failed));

        // A release that served once is not failed by a later crash.
        let served = [release(2, "b", &a, ReleaseState::Active, true)];
        assert_eq!(
            plan(&a, content_of("b", &a), &served, (&failed, None), 5, now()),
            Plan::default()
        );

        // The next push supersedes the others, but the failed one stays failed.
        let after = [
            release(1, "a", &a, ReleaseState::Superseded, true),
            release(2, "b", &a, ReleaseState::Failed, false),
        ];
        let plan2 = plan(&a, content_of("c", &a), &after, (&progressing(), None), 5, now());
        assert!(plan2.create.is_some());
        assert_eq!(
            plan2.statuses,
            [],
            "v1 was superseded already, v2 stays failed, v3 has no state yet"
        );
    }

    #[test]
    fn with_auto_rollback_a_failed_release_falls_back_to_the_last_that_served_once() {
        let mut a = app(&[], None);
        a.spec.artifact_ref.name = "web-b".into();
        let existing = [
            release(1, "a", &a, ReleaseState::Superseded, true),
            release(2, "b", &a, ReleaseState::Failed, false),
        ];
        assert_eq!(automatic(&a, &existing), None, "off by default");
        assert!(!can_fall_back(&a, &existing));
        a.spec.auto_rollback = true;
        assert!(can_fall_back(&a, &existing));
        assert!(!can_fall_back(&a, &existing[1..]), "nothing served before");
        let fallback = automatic(&a, &existing).unwrap();
        assert_eq!((fallback.failed.spec.version, fallback.to.spec.version), (2, 1));
        let runs = fallen_back(&a, fallback.to);
        assert_eq!(runs.spec.artifact_ref.name, "web-a");

        // Recorded once, as an automatic rollback; the failed release stays failed.
        let first = plan(
            &runs,
            content_of("a", &runs),
            &existing,
            (&progressing(), Some(FellBack { failed: 2, to: 1 })),
            5,
            now(),
        );
        let created = first.create.clone().unwrap();
        assert_eq!(
            (created.spec.version, created.spec.cause, created.spec.rollback_of),
            (3, ReleaseCause::AutomaticRollback, Some(1))
        );
        assert_eq!(state_of(&first, "web-v2"), None);
        let after = [
            existing[0].clone(),
            existing[1].clone(),
            release(3, "a", &a, ReleaseState::Active, true),
        ];
        let again = automatic(&a, &after).unwrap();
        assert_eq!(again.to.spec.version, 1);
        let steady = plan(
            &runs,
            content_of("a", &runs),
            &after,
            (&progressing(), Some(FellBack { failed: 2, to: 1 })),
            5,
            now(),
        );
        assert_eq!(steady.create, None);

        // A new spec (another artifact) is tried again; a release still rolling out
        // is not given up on.
        a.spec.artifact_ref.name = "web-c".into();
        assert_eq!(automatic(&a, &after), None);
        a.spec.artifact_ref.name = "web-b".into();
        let rolling = [
            existing[0].clone(),
            release(2, "b", &a, ReleaseState::Active, false),
        ];
        assert_eq!(automatic(&a, &rolling), None);
        // Nothing served before: nothing to go back to.
        assert_eq!(automatic(&a, &existing[1..]), None);
    }

    #[test]
    fn auto_rollback_retries_on_any_change_and_never_brings_back_a_secret_the_spec_dropped() {
        let mut a = app(&[], None);
        a.spec.auto_rollback = true;
        a.spec.artifact_ref.name = "web-b".into();
        let existing = [
            release(1, "a", &a, ReleaseState::Superseded, true),
            release(2, "b", &a, ReleaseState::Failed, false),
        ];
        assert!(automatic(&a, &existing).is_some());
        // The app changed since the release failed (a new generation): tried again.
        a.metadata.generation = Some(2);
        assert_eq!(automatic(&a, &existing), None);
        a.metadata.generation = Some(1);

        // v1 read a Secret the spec no longer names: it is no release to go back to.
        let mut reading = a.clone();
        reading.spec.env_from =
            serde_json::from_value(serde_json::json!([{"secretRef": {"name": "db-creds"}}])).unwrap();
        let with_secret = [
            release(1, "a", &reading, ReleaseState::Superseded, true),
            release(2, "b", &a, ReleaseState::Failed, false),
        ];
        assert_eq!(automatic(&a, &with_secret), None);
        assert!(!can_fall_back(&a, &with_secret[..1]));
        // The spec still naming it, it is.
        let mut b = reading.clone();
        b.spec.artifact_ref.name = "web-b".into();
        let both = [
            release(1, "a", &reading, ReleaseState::Superseded, true),
            release(2, "b", &b, ReleaseState::Failed, false),
        ];
        assert!(automatic(&b, &both).is_some());
    }

    #[test]
    fn a_release_that_served_and_crashes_later_is_not_given_up_on() {
        let mut a = app(&[], None);
        a.spec.auto_rollback = true;
        a.spec.artifact_ref.name = "web-b".into();
        let existing = [
            release(1, "a", &a, ReleaseState::Superseded, true),
            release(2, "b", &a, ReleaseState::Active, true),
        ];
        assert!(
            !can_fall_back(&a, &existing),
            "v2 served: a crash now is no failed rollout"
        );
        let rolling = [
            existing[0].clone(),
            release(2, "b", &a, ReleaseState::Active, false),
        ];
        assert!(can_fall_back(&a, &rolling));
    }

    #[test]
    fn a_release_not_judged_yet_fails_is_superseded_and_falls_back_as_an_active_one_did() {
        let mut a = app(&[], None);
        a.spec.artifact_ref.name = "web-b".into();
        let rolling = [
            release(1, "a", &a, ReleaseState::Superseded, true),
            unjudged(2, "b", &a),
        ];
        let failed = Rollout::Failed {
            reason: "CrashLoopBackOff".into(),
            message: String::new(),
        };
        let plan1 = plan(&a, content_of("b", &a), &rolling, (&failed, None), 5, now());
        assert_eq!(
            plan1.statuses,
            [(
                "web-v2".to_string(),
                AetherReleaseStatus {
                    state: Some(ReleaseState::Failed),
                    ready_at: None,
                    failed_generation: Some(1),
                }
            )]
        );

        // A newer push supersedes it before it was judged.
        let pushed = plan(
            &a,
            content_of("c", &a),
            &rolling,
            (&progressing(), None),
            5,
            now(),
        );
        assert_eq!(state_of(&pushed, "web-v2"), Some(ReleaseState::Superseded));

        // Its rollout failing, the app goes back to v1.
        a.spec.auto_rollback = true;
        assert!(can_fall_back(&a, &rolling));
        let judged = [
            rolling[0].clone(),
            AetherRelease {
                status: Some(plan1.statuses[0].1.clone()),
                ..rolling[1].clone()
            },
        ];
        assert_eq!(automatic(&a, &judged).map(|f| f.to.spec.version), Some(1));
    }

    #[test]
    fn the_release_fallen_back_to_outlives_retention() {
        let a = app(&[], None);
        // v1 served; v2 was superseded before it did; v3 failed. Keeping 2 + 1.
        let existing = [
            release(1, "a", &a, ReleaseState::Superseded, true),
            release(2, "b", &a, ReleaseState::Superseded, false),
            release(3, "c", &a, ReleaseState::Failed, false),
        ];
        // The app fell back to v1: it runs v1's content, recorded as v4.
        let fell_back = Some(FellBack { failed: 3, to: 1 });
        let plan1 = plan(
            &a,
            content_of("a", &a),
            &existing,
            (&progressing(), fell_back),
            2,
            now(),
        );
        assert_eq!(plan1.create.map(|r| r.spec.version), Some(4));
        assert_eq!(
            plan1.delete,
            Vec::<String>::new(),
            "v1 is what the next look goes back to"
        );

        // Keeping none but the newest, neither v1 nor the failed v3 goes while the
        // app is fallen back (the next look's `automatic` reads both); v2 does.
        let both = plan(
            &a,
            content_of("a", &a),
            &existing,
            (&progressing(), fell_back),
            0,
            now(),
        );
        assert_eq!(both.delete, ["web-v2"]);
        let recorded = [
            existing.to_vec(),
            vec![release(4, "a", &a, ReleaseState::Active, true)],
        ]
        .concat();
        let steady = plan(
            &a,
            content_of("a", &a),
            &recorded,
            (&progressing(), fell_back),
            0,
            now(),
        );
        assert_eq!(steady.delete, ["web-v2"]);
        // Once the app changes (no fallback), they age out as any other; the last
        // that served stays.
        let mut d = a.clone();
        d.spec.artifact_ref.name = "web-d".into();
        let changed = plan(
            &d,
            content_of("d", &d),
            &recorded,
            (&progressing(), None),
            0,
            now(),
        );
        assert_eq!(changed.delete, ["web-v3", "web-v2", "web-v1"]);
    }

    #[test]
    fn the_release_to_go_back_to_outlives_retention() {
        let a = app(&[], None);
        let existing = [
            release(1, "1", &a, ReleaseState::Superseded, true),
            release(2, "2", &a, ReleaseState::Failed, false),
            release(3, "3", &a, ReleaseState::Failed, false),
        ];
        let plan = plan(
            &a,
            content_of("4", &a),
            &existing,
            (&progressing(), None),
            1,
            now(),
        );
        assert_eq!(plan.delete, ["web-v2"], "v1 is the last that served");
    }

    #[test]
    fn the_newest_keep_plus_one_releases_are_kept() {
        let a = app(&[], None);
        let existing: Vec<_> = (1..=4)
            .map(|v| release(v, &v.to_string(), &a, ReleaseState::Superseded, true))
            .collect();
        // keep 2: the new v5 plus v4 and v3.
        let plan = plan(
            &a,
            content_of("5", &a),
            &existing,
            (&progressing(), None),
            2,
            now(),
        );
        assert_eq!(plan.delete, ["web-v2", "web-v1"]);
        // Without a new release: v4, v3, v2.
        let same = super::plan(
            &a,
            content_of("4", &a),
            &existing,
            (&progressing(), None),
            2,
            now(),
        );
        assert_eq!(same.delete, ["web-v1"]);
    }

    #[test]
    fn config_secrets_only_deleted_releases_name_go_with_them() {
        use k8s_openapi::api::core::v1::{EnvFromSource, SecretEnvSource};
        let reading = |secrets: &[&str]| {
            let mut a = app(&[], None);
            a.spec.env_from = secrets
                .iter()
                .map(|name| EnvFromSource {
                    secret_ref: Some(SecretEnvSource {
                        name: (*name).into(),
                        optional: None,
                    }),
                    ..Default::default()
                })
                .collect();
            a
        };
        let (one, two, three) = (
            "web-config-1111111111",
            "web-config-2222222222",
            "web-config-3333333333",
        );
        let (in_spec, running) = ("web-config-sp3c", "web-config-run5");
        let existing = [
            release(
                1,
                "a",
                &reading(&[one, "db", in_spec]),
                ReleaseState::Superseded,
                true,
            ),
            release(2, "a", &reading(&[two, running]), ReleaseState::Superseded, true),
            release(3, "a", &reading(&[one, three]), ReleaseState::Superseded, true),
            release(4, "a", &reading(&[three]), ReleaseState::Active, true),
        ];
        // keep 1: the new v5 and v4 stay; v1..v3 go.
        let now_reading = reading(&[in_spec]);
        let plan = plan(
            &now_reading,
            content_of("a", &reading(&[running])),
            &existing,
            (&progressing(), None),
            1,
            now(),
        );
        assert_eq!(plan.delete, ["web-v3", "web-v2", "web-v1"]);
        assert_eq!(
            plan.config_secrets,
            [one, two],
            "not v4's (kept), not what runs, not what the spec reads, not someone else's Secret (db)"
        );
        let nothing_deleted = super::plan(
            &now_reading,
            content_of("a", &now_reading),
            &existing,
            (&progressing(), None),
            5,
            now(),
        );
        assert!(nothing_deleted.config_secrets.is_empty());
    }
}

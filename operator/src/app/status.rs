//! AetherApp status, derived from what was applied and what the cluster reports
//! (the Deployment and its pods), never from what was hoped for. Pure.

use aether_crds::condition::app::{ROLLED_BACK, ROLLING_BACK};
use aether_crds::condition::{READY, RECONCILING, STALLED};
use aether_crds::{AetherAppStatus, AetherRelease, DeployTimings, DeployedArtifact, Release};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use super::validate::{Invalid, Validated};
use crate::conditions;
use aether_crds::pod::{
    APP_CONTAINER, DIGEST_ANNOTATION, FETCH_CONTAINER, TEMPLATE_ANNOTATION, failure_message,
    fetch_failed_now, fetch_pending, termination_text,
};

/// Releases kept in `status.history`.
pub const HISTORY: usize = 10;

/// Where the current release's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rollout {
    /// Every replica runs the current template and is available.
    Complete {
        ready: i32,
        desired: i32,
    },
    Progressing {
        message: String,
    },
    /// New pods cannot start; old ones (if any) keep serving.
    Failed {
        reason: String,
        message: String,
    },
}

/// Rollout state of `deployment` (as last read), whose pods are `pods`.
pub fn rollout(deployment: &Deployment, pods: &[Pod], digest: &str) -> Rollout {
    let desired = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let generation = deployment.metadata.generation.unwrap_or(0);
    let status = deployment.status.clone().unwrap_or_default();
    let observed = status.observed_generation.unwrap_or(0) >= generation;
    let updated = status.updated_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);

    // Failures of the new template's pods say more than any count (a pod of an
    // older one, even of the same artifact, says nothing about this rollout).
    let template = super::build::template_hash(deployment);
    let of_rollout = |p: &&Pod| match &template {
        Some(t) => {
            p.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(TEMPLATE_ANNOTATION))
                == Some(t)
        }
        None => pod_digest(p) == Some(digest),
    };
    for pod in pods.iter().filter(of_rollout) {
        if let Some((reason, message)) = pod_failure(pod) {
            return Rollout::Failed { reason, message };
        }
    }
    // Only a deadline the Deployment judged with this template in it.
    if let Some(c) = status
        .conditions
        .iter()
        .flatten()
        .filter(|_| observed)
        .find(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
    {
        return Rollout::Failed {
            reason: "ProgressDeadlineExceeded".into(),
            message: c.message.clone().unwrap_or_default(),
        };
    }
    if observed && updated == desired && total == desired && available == desired {
        return Rollout::Complete { ready, desired };
    }
    Rollout::Progressing {
        message: format!("{updated} of {desired} pod(s) updated, {available} available, {total} in total"),
    }
}

/// Pods of the release (`digest`) still stuck in their fetch, which last failed on
/// the bytes in storage (`DigestMismatch`, `ArtifactNotFound`) before the artifact
/// was verified again at `verified_at`: storage was repaired since, so they only
/// wait out kubelet's back-off, and replacing them starts the release now. Only
/// pods a ReplicaSet controls whose app never started (their fetch container is
/// failed or backing off right now), so a serving pod is never touched.
pub fn stale_fetch_failures(pods: &[Pod], digest: &str, verified_at: Option<Timestamp>) -> Vec<String> {
    let Some(verified_at) = verified_at else {
        return Vec::new();
    };
    let replicated = |p: &Pod| {
        p.metadata
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.kind == "ReplicaSet" && o.controller == Some(true))
    };
    let stuck_before_repair = |p: &Pod| {
        p.status.as_ref().and_then(fetch_failed_now).is_some_and(|t| {
            let message = t.message.as_deref().unwrap_or_default();
            (message.starts_with("DigestMismatch") || message.starts_with("ArtifactNotFound"))
                && t.finished_at.as_ref().is_some_and(|f| f.0 < verified_at)
        })
    };
    pods.iter()
        .filter(|p| !leaving(p))
        .filter(|p| pod_digest(p) == Some(digest) && replicated(p) && stuck_before_repair(p))
        .filter_map(|p| p.metadata.name.clone())
        .collect()
}

fn pod_digest(pod: &Pod) -> Option<&str> {
    pod.metadata
        .annotations
        .as_ref()?
        .get(DIGEST_ANNOTATION)
        .map(String::as_str)
}

/// A watched pod kept with what [`rollout`], [`stale_fetch_failures`] and
/// [`pod_failure`] read: its name, selector labels, digest and template annotations,
/// ReplicaSet, deletion, phase and the fetch and app containers' statuses (messages
/// cut short). Any pod of any namespace may carry the labels the operator watches:
/// nothing else it holds is kept, and nothing of unbounded size.
pub fn slim_pod(pod: &mut Pod) {
    const MAX_VALUE: usize = 100;
    const MAX_MESSAGE: usize = 1024;
    let meta = std::mem::take(&mut pod.metadata);
    let keep = |map: Option<std::collections::BTreeMap<String, String>>, keys: &[&str]| {
        map.map(|m| {
            m.into_iter()
                .filter(|(k, v)| keys.contains(&k.as_str()) && v.len() <= MAX_VALUE)
                .collect()
        })
    };
    pod.metadata = ObjectMeta {
        name: meta.name,
        namespace: meta.namespace,
        uid: meta.uid,
        resource_version: meta.resource_version,
        deletion_timestamp: meta.deletion_timestamp,
        labels: keep(
            meta.labels,
            &[super::build::NAME_LABEL, "app.kubernetes.io/instance"],
        ),
        annotations: keep(meta.annotations, &[DIGEST_ANNOTATION, TEMPLATE_ANNOTATION]),
        owner_references: meta.owner_references.map(|o| {
            o.into_iter()
                .filter(|o| o.kind == "ReplicaSet" && o.controller == Some(true))
                .take(1)
                .collect()
        }),
        ..Default::default()
    };
    pod.spec = None;
    let cut = |text: &mut Option<String>| {
        if let Some(t) = text
            && t.len() > MAX_MESSAGE
        {
            let mut end = MAX_MESSAGE;
            while !t.is_char_boundary(end) {
                end -= 1;
            }
            t.truncate(end);
        }
    };
    let ours = |statuses: Option<Vec<k8s_openapi::api::core::v1::ContainerStatus>>| {
        statuses.map(|all| {
            all.into_iter()
                .filter(|c| c.name == FETCH_CONTAINER || c.name == APP_CONTAINER)
                .map(|mut c| {
                    for state in [c.state.as_mut(), c.last_state.as_mut()].into_iter().flatten() {
                        if let Some(t) = state.terminated.as_mut() {
                            cut(&mut t.message);
                        }
                        if let Some(w) = state.waiting.as_mut() {
                            cut(&mut w.message);
                        }
                    }
                    c
                })
                .collect()
        })
    };
    pod.status = pod.status.take().map(|s| k8s_openapi::api::core::v1::PodStatus {
        phase: s.phase,
        container_statuses: ours(s.container_statuses),
        init_container_statuses: ours(s.init_container_statuses),
        ..Default::default()
    });
}

/// A pod on its way out (deleted, or evicted: phase `Failed`): its containers were
/// stopped, which says nothing about the release.
fn leaving(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some()
        || pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Failed")
}

/// The fetch container failed (its termination message says why), or the app keeps
/// crashing.
pub fn pod_failure(pod: &Pod) -> Option<(String, String)> {
    if leaving(pod) {
        return None;
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let status = pod.status.as_ref()?;
    if let Some(t) = fetch_failed_now(status) {
        let message = termination_text(t);
        // The runtime writes `Reason: detail`.
        let reason = message
            .split_once(':')
            .map(|(r, _)| r.trim())
            .filter(|r| !r.is_empty() && r.chars().all(|ch| ch.is_ascii_alphanumeric()))
            .unwrap_or("FetchFailed")
            .to_string();
        return Some((reason, format!("pod {name}: {FETCH_CONTAINER}: {message}")));
    }
    if fetch_pending(status) {
        // The app container cannot run its code before the fetch container did
        // (beside it, it is started anyway, and fails): not the app's failure.
        return None;
    }
    for c in status
        .container_statuses
        .iter()
        .flatten()
        .filter(|c| c.name == APP_CONTAINER)
    {
        if c.restart_count >= 2
            && let Some(message) = failure_message(c)
        {
            return Some((
                "AppCrashing".into(),
                format!(
                    "pod {name}: {} restarted {} times: {message}",
                    c.name, c.restart_count
                ),
            ));
        }
    }
    None
}

/// What was observed after applying a valid release.
#[derive(Debug)]
pub struct Observed<'a> {
    pub deployment: &'a Deployment,
    /// Where its rollout stands ([`rollout`] of it and its pods).
    pub rollout: Rollout,
    pub url: Option<String>,
    pub selector: String,
    /// When this reconcile began (it found the release valid) and when its apply
    /// finished.
    pub began_at: Timestamp,
    pub applied_at: Timestamp,
}

pub fn applied(
    old: &AetherAppStatus,
    generation: Option<i64>,
    release: &Validated,
    observed: &Observed<'_>,
    now: Timestamp,
) -> AetherAppStatus {
    let mut s = old.clone();
    s.observed_generation = generation;
    s.selector = Some(observed.selector.clone());
    s.template = super::build::template_hash(observed.deployment);
    s.url = observed.url.clone();
    let dep_status = observed.deployment.status.clone().unwrap_or_default();
    s.replicas = dep_status.replicas.unwrap_or(0);
    s.ready_replicas = dep_status.ready_replicas.unwrap_or(0);
    s.artifact = Some(DeployedArtifact {
        name: release.artifact.clone(),
        digest: release.digest.to_string(),
    });

    // Timings run from the start of the first reconcile that applied this artifact:
    // the artifact was Ready and the app pointed at it.
    let mut timings = match old.last_deploy.clone() {
        Some(t) if t.artifact == release.artifact => t,
        _ => DeployTimings {
            artifact: release.artifact.clone(),
            started_at: MicroTime(observed.began_at),
            applied_after_milliseconds: None,
            ready_after_milliseconds: None,
        },
    };
    let since_start = |t: Timestamp| (t.as_millisecond() - timings.started_at.0.as_millisecond()).max(0);
    if timings.applied_after_milliseconds.is_none() {
        timings.applied_after_milliseconds = Some(since_start(observed.applied_at));
    }

    let digest = release.digest.to_string();
    match observed.rollout.clone() {
        Rollout::Complete { ready, desired } => {
            if timings.ready_after_milliseconds.is_none() {
                timings.ready_after_milliseconds = Some(since_start(now));
            }
            let message = format!("{ready}/{desired} pod(s) ready running {}", release.artifact);
            conditions::set(&mut s.conditions, READY, true, "Deployed", &message, generation);
            conditions::set(&mut s.conditions, RECONCILING, false, "Deployed", "", generation);
            conditions::set(&mut s.conditions, STALLED, false, "Deployed", "", generation);
            if s.history.first().is_none_or(|r| r.digest != digest) {
                s.history.insert(
                    0,
                    Release {
                        artifact: release.artifact.clone(),
                        digest,
                        deployed_at: Time(now),
                    },
                );
                s.history.truncate(HISTORY);
            }
        }
        Rollout::Progressing { message } => {
            conditions::set(
                &mut s.conditions,
                READY,
                false,
                aether_crds::condition::app::ROLLING_OUT,
                &message,
                generation,
            );
            conditions::set(
                &mut s.conditions,
                RECONCILING,
                true,
                aether_crds::condition::app::ROLLING_OUT,
                &message,
                generation,
            );
            conditions::set(
                &mut s.conditions,
                STALLED,
                false,
                aether_crds::condition::app::ROLLING_OUT,
                "",
                generation,
            );
        }
        Rollout::Failed { reason, message } => {
            let message = match s.history.first() {
                Some(previous) => format!("{message}; {} keeps serving", previous.artifact),
                None => message,
            };
            conditions::set(&mut s.conditions, READY, false, &reason, &message, generation);
            conditions::set(&mut s.conditions, RECONCILING, false, &reason, "", generation);
            conditions::set(&mut s.conditions, STALLED, true, &reason, &message, generation);
        }
    }
    s.last_deploy = Some(timings);
    s
}

/// `spec.autoRollback` went back from the `failed` release to `to`: whatever the
/// rollout of `to` says, what the spec asks for does not serve.
pub fn fell_back(
    mut s: AetherAppStatus,
    generation: Option<i64>,
    failed: &AetherRelease,
    to: &AetherRelease,
) -> AetherAppStatus {
    let message = format!(
        "release v{} ({}) failed before it served; spec.autoRollback went back to v{} ({}): push a fix or change the app to try again",
        failed.spec.version, failed.spec.artifact.name, to.spec.version, to.spec.artifact.name
    );
    conditions::set(&mut s.conditions, READY, false, ROLLED_BACK, &message, generation);
    conditions::set(&mut s.conditions, RECONCILING, false, ROLLED_BACK, "", generation);
    conditions::set(
        &mut s.conditions,
        STALLED,
        true,
        ROLLED_BACK,
        &message,
        generation,
    );
    s
}

/// The rollout failed, and `spec.autoRollback` goes back on the next look: still in
/// progress, not yet stalled (what failed stays in `Ready`'s message).
pub fn falling_back(mut s: AetherAppStatus, generation: Option<i64>) -> AetherAppStatus {
    let failure = aether_crds::condition::find(&s.conditions, READY)
        .map(|c| c.message.clone())
        .unwrap_or_default();
    let message = format!("{failure}; going back to the last release that served (spec.autoRollback)");
    conditions::set(
        &mut s.conditions,
        READY,
        false,
        ROLLING_BACK,
        &message,
        generation,
    );
    conditions::set(
        &mut s.conditions,
        RECONCILING,
        true,
        ROLLING_BACK,
        &message,
        generation,
    );
    conditions::set(&mut s.conditions, STALLED, false, ROLLING_BACK, "", generation);
    s
}

/// The release cannot be applied: say why, keep reporting the running Deployment.
pub fn invalid(
    old: &AetherAppStatus,
    generation: Option<i64>,
    invalid: &Invalid,
    running: Option<&Deployment>,
) -> AetherAppStatus {
    let mut s = old.clone();
    s.observed_generation = generation;
    if let Some(status) = running.and_then(|d| d.status.as_ref()) {
        s.replicas = status.replicas.unwrap_or(0);
        s.ready_replicas = status.ready_replicas.unwrap_or(0);
    }
    let message = if running.is_some() {
        format!("{}; the running release is unchanged", invalid.message)
    } else {
        invalid.message.clone()
    };
    conditions::set(
        &mut s.conditions,
        READY,
        false,
        invalid.reason,
        &message,
        generation,
    );
    conditions::set(
        &mut s.conditions,
        RECONCILING,
        invalid.waiting,
        invalid.reason,
        if invalid.waiting { message.as_str() } else { "" },
        generation,
    );
    conditions::set(
        &mut s.conditions,
        STALLED,
        !invalid.waiting,
        invalid.reason,
        if invalid.waiting { "" } else { message.as_str() },
        generation,
    );
    s
}

/// `spec.suspend`: nothing is changed, and status says so.
pub fn suspended(old: &AetherAppStatus, generation: Option<i64>) -> AetherAppStatus {
    let mut s = old.clone();
    s.observed_generation = generation;
    let message = "spec.suspend is true: the operator leaves this app as it is";
    conditions::set(
        &mut s.conditions,
        RECONCILING,
        false,
        "Suspended",
        message,
        generation,
    );
    conditions::set(&mut s.conditions, STALLED, false, "Suspended", "", generation);
    s
}

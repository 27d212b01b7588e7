//! What Aether's app pods say about themselves, read by the operator (status) and by
//! `aether status` alike.

use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, PodStatus};

/// The container that runs the app (from the Node image).
pub const APP_CONTAINER: &str = "app";
/// The container that fetches, verifies and extracts the app: beside it, or an init
/// container in dev-hot pods.
pub const FETCH_CONTAINER: &str = "fetch";

/// The port of the pod where the app container's runtime answers the kubelet's
/// probes for the app (`/ready`, `/live`). An app may not take it (nor the dev-hot
/// port, 39127, on loopback).
pub const HEALTH_PORT: u16 = 39128;
/// Ports of the pod an app may not listen on: the runtime's.
pub const RESERVED_PORTS: [u16; 2] = [aether_artifact::hot::PORT, HEALTH_PORT];

/// Pod-template annotation holding the artifact digest: a new artifact changes the
/// template, so the Deployment rolls exactly once.
pub const DIGEST_ANNOTATION: &str = "aether.dev/artifact-digest";
/// Pod-template annotation naming the AetherArtifact the pod runs.
pub const ARTIFACT_ANNOTATION: &str = "aether.dev/artifact";
/// Pod-template annotation of a dev-hot app: what code swaps cannot change (the
/// dependencies, Node, the start command), hashed. The template changes, and the
/// pods roll, exactly when it does.
pub const DEV_HOT_BASE_ANNOTATION: &str = "aether.dev/dev-hot-base";
/// AetherApp annotation `aether dev` sets with `spec.artifactRef`: the pods already
/// run this artifact (swapped in), so a dev-hot app does not roll for it.
pub const HOT_SWAPPED_ANNOTATION: &str = "aether.dev/hot-swapped";
/// Pod-template annotation: a hash of the rest of the template, so a pod says which
/// template it was made from (`status.template` names the current one). Two
/// releases of one artifact with other configuration differ here.
pub const TEMPLATE_ANNOTATION: &str = "aether.dev/template";
/// The fetch container's termination message once it extracted a release:
/// `Fetched sha256:<hex>` (the runtime writes it).
pub const FETCHED: &str = "Fetched";

/// The digest a pod started on: the one its fetch container extracted (in dev-hot
/// mode, the latest code when the pod started), else its template's. A dev-hot pod
/// may have taken newer code since: only the pod knows (`aether status` asks it).
pub fn started_digest(pod: &k8s_openapi::api::core::v1::Pod) -> Option<String> {
    let annotations = pod.metadata.annotations.as_ref();
    let fetched = || {
        fetch_status(pod.status.as_ref()?)?
            .state
            .as_ref()?
            .terminated
            .as_ref()?
            .message
            .as_deref()?
            .strip_prefix(FETCHED)
            .map(|d| d.trim().to_string())
    };
    let template = || annotations.and_then(|a| a.get(DIGEST_ANNOTATION)).cloned();
    fetched().or_else(template)
}

/// The fetch container's status, wherever the pod runs it.
pub fn fetch_status(status: &PodStatus) -> Option<&ContainerStatus> {
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == FETCH_CONTAINER)
}

/// The fetch container's failure, if it is failed right now: exited non-zero, or
/// waiting to be restarted after that. Not while it runs (retrying, or beside the
/// app, done: it stays up, and a failure before stays in its `lastState`), nor once
/// the app started on what it fetched.
pub fn fetch_failed_now(status: &PodStatus) -> Option<&ContainerStateTerminated> {
    if app_ready(status) {
        return None;
    }
    let c = fetch_status(status)?;
    let state = c.state.as_ref()?;
    let failure = match (&state.terminated, &state.waiting) {
        (Some(t), _) => Some(t),
        (None, Some(_)) => c.last_state.as_ref()?.terminated.as_ref(),
        (None, None) => None,
    };
    failure.filter(|t| t.exit_code != 0)
}

/// Whether the fetch container stands between the app and its code right now: it
/// never ran yet (its image still pulling, say) or is waiting to run again. The app
/// container's own failures then follow from it.
pub fn fetch_pending(status: &PodStatus) -> bool {
    !app_ready(status)
        && fetch_status(status)
            .and_then(|c| c.state.as_ref())
            .is_some_and(|s| s.waiting.is_some())
}

/// `Reason: detail` the runtime wrote when it ended, or the exit code.
pub fn termination_text(t: &ContainerStateTerminated) -> String {
    let message = t.message.as_deref().unwrap_or_default().trim();
    if message.is_empty() {
        format!("exit code {}", t.exit_code)
    } else {
        message.chars().take(1000).collect()
    }
}

/// Whether the app answers in this pod (its container is ready): the fetch
/// container did its work. (There is no startup probe, so the container's `started`
/// says only that it runs, maybe still waiting for its code.)
pub fn app_ready(status: &PodStatus) -> bool {
    status
        .container_statuses
        .iter()
        .flatten()
        .any(|c| c.name == APP_CONTAINER && c.ready)
}

/// The message of the container's current or last non-zero exit (the runtime writes
/// `Reason: detail` there), or its exit code; None if it never failed.
pub fn failure_message(c: &ContainerStatus) -> Option<String> {
    let current = c.state.as_ref().and_then(|s| s.terminated.as_ref());
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let t = current
        .filter(|t| t.exit_code != 0)
        .or(last.filter(|t| t.exit_code != 0))?;
    Some(termination_text(t))
}

#[cfg(test)]
mod tests {
    use kube::CustomResourceExt;

    /// The CRD refuses an app port the runtime holds in the pod.
    #[test]
    fn the_runtime_ports_are_refused_as_app_ports() {
        let crd = serde_json::to_string(&crate::AetherApp::crd()).unwrap_or_default();
        let [a, b] = super::RESERVED_PORTS;
        let rule = format!("self != {a} && self != {b}");
        assert!(crd.contains(&rule), "no rule {rule:?} in the CRD");
    }
}

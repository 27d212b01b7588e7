//! What Aether's app pods say about themselves, read by the operator (status) and by
//! `aether status` alike.

use k8s_openapi::api::core::v1::ContainerStatus;

/// Pod-template annotation holding the artifact digest: a new artifact changes the
/// template, so the Deployment rolls exactly once.
pub const DIGEST_ANNOTATION: &str = "aether.dev/artifact-digest";
/// Pod-template annotation naming the AetherArtifact the pod runs.
pub const ARTIFACT_ANNOTATION: &str = "aether.dev/artifact";

/// The message of the container's current or last non-zero exit (the runtime writes
/// `Reason: detail` there), or its exit code; None if it never failed.
pub fn failure_message(c: &ContainerStatus) -> Option<String> {
    let current = c.state.as_ref().and_then(|s| s.terminated.as_ref());
    let last = c.last_state.as_ref().and_then(|s| s.terminated.as_ref());
    let t = current
        .filter(|t| t.exit_code != 0)
        .or(last.filter(|t| t.exit_code != 0))?;
    let message = t.message.as_deref().unwrap_or_default().trim();
    Some(if message.is_empty() {
        format!("exit code {}", t.exit_code)
    } else {
        message.chars().take(1000).collect()
    })
}

//! Condition types and reasons, as constants so the operator, the CLI and the
//! printer columns can never disagree on spelling. Reasons are CamelCase.
//!
//! `Ready` is the summary a user reads; `Reconciling` and `Stalled` follow kstatus:
//! `Reconciling=True` while work is in progress, `Stalled=True` when progress needs a
//! change from the user (an invalid spec, a missing reference).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const UPLOADED: &str = "Uploaded";
pub const VERIFIED: &str = "Verified";

/// The condition of this type, if there is one.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Is the condition of this type `True`?
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Reasons of an AetherArtifact's `Ready` condition: the upload conversation between
/// `aether push` and the operator turns on them.
pub mod artifact {
    /// Blobs are missing: `status.upload` says where to put them.
    pub const AWAITING_UPLOAD: &str = "AwaitingUpload";
    /// The uploader said it was done, but storage lacks a blob.
    pub const UPLOAD_INCOMPLETE: &str = "UploadIncomplete";
    /// Every blob is stored and matches its digest.
    pub const VERIFIED: &str = "Verified";
    /// Stored bytes did not match their digest (and were removed): upload again.
    pub const DIGEST_MISMATCH: &str = "DigestMismatch";
    /// The spec cannot be right (it does not reproduce its digest, or contradicts
    /// what storage holds); it is immutable, so only a new artifact helps.
    pub const INVALID_SPEC: &str = "InvalidSpec";
    /// No cluster admin enabled the namespace: nothing is uploaded.
    pub const NAMESPACE_NOT_ENABLED: &str = "NamespaceNotEnabled";
    /// The namespace's storage cap (an AetherPolicy) leaves no room.
    pub const QUOTA_EXCEEDED: &str = "QuotaExceeded";

    /// Still in the conversation: an uploader waits on.
    pub fn in_progress(reason: &str) -> bool {
        matches!(reason, AWAITING_UPLOAD | UPLOAD_INCOMPLETE)
    }

    /// The operator refuses the artifact as it is: no upload can help.
    pub fn refused(reason: &str) -> bool {
        matches!(reason, INVALID_SPEC | NAMESPACE_NOT_ENABLED | QUOTA_EXCEEDED)
    }
}

/// What `status.hosts[].certificate` and `.route` of an AetherApp say: written by
/// the operator, read by the CLI.
pub mod host {
    /// The certificate serving the host is there.
    pub const READY: &str = "Ready";
    /// cert-manager is issuing it.
    pub const ISSUING: &str = "Issuing";
    /// The Secret the host names does not exist.
    pub const SECRET_MISSING: &str = "SecretMissing";
    /// The Gateway's listener for the host has no usable certificate (yet).
    pub const NOT_READY: &str = "NotReady";
    /// Plain HTTP.
    pub const NONE: &str = "None";
    /// The Gateway routes the app's HTTPRoute.
    pub const ACCEPTED: &str = "Accepted";
    /// The Gateway has not said yet.
    pub const PENDING: &str = "Pending";
    /// The HTTPRoute could not be written.
    pub const UNAVAILABLE: &str = "Unavailable";

    /// Not there yet, and looked at again soon: the operator's certificate and
    /// Gateway are not watched.
    pub fn waiting(certificate: &str, route: Option<&str>) -> bool {
        matches!(certificate, ISSUING | NOT_READY) || route == Some(UNAVAILABLE)
    }

    /// Everything about the host serves.
    pub fn ready(certificate: &str, route: Option<&str>) -> bool {
        certificate == READY && route.is_none_or(|r| r == ACCEPTED)
    }
}

/// Reasons of an AetherApp's conditions that more than the operator acts on.
pub mod app {
    /// `spec.autoRollback` went back to the last release that served: the spec's
    /// release failed (`Ready=False`, `Stalled=True`).
    pub const ROLLED_BACK: &str = "RolledBack";
    /// The rollout failed and `spec.autoRollback` is about to go back
    /// (`Reconciling=True`).
    pub const ROLLING_BACK: &str = "RollingBack";
    /// `spec.hosts` names a host another app holds: nothing of the spec is applied
    /// (`Ready=False`, `Stalled=True`).
    pub const HOST_CLAIMED: &str = "HostClaimed";
    /// The artifact named does not exist (`Stalled=True`).
    pub const ARTIFACT_NOT_FOUND: &str = "ArtifactNotFound";
    /// The artifact named is not Ready, and is not being uploaded (`Stalled=True`).
    pub const ARTIFACT_FAILED: &str = "ArtifactFailed";
    /// The artifact named is being uploaded or looked at (`Stalled=False`).
    pub const AWAITING_ARTIFACT: &str = "AwaitingArtifact";
    /// The release is applied and its pods are rolling out (`Reconciling=True`).
    pub const ROLLING_OUT: &str = "RollingOut";
    /// No cluster admin enabled the namespace (`Stalled=True`).
    pub const NAMESPACE_NOT_ENABLED: &str = "NamespaceNotEnabled";

    /// A stall that an artifact becoming Ready ends (the app is woken by its
    /// artifact's every change): one reported before the artifact was verified is
    /// stale once it is.
    pub fn ended_by_a_ready_artifact(reason: &str) -> bool {
        matches!(
            reason,
            ARTIFACT_NOT_FOUND | ARTIFACT_FAILED | NAMESPACE_NOT_ENABLED
        )
    }
}

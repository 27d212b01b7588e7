//! Dev-hot updates: what `aether dev` sends to a running pod, and what the pod's
//! runtime answers. The pod listens on loopback only ([`PORT`]): the only way in is
//! the API server's port-forward, which RBAC grants per namespace
//! (`pods/portforward`). Nothing is trusted because of the channel, though: an update
//! is a whole artifact manifest, signed like one, whose `app` layer travels along;
//! the pod verifies it exactly as the fetch container verifies a release.
//!
//! Wire format (one update per connection):
//! ```text
//! MAGIC  u32-be header length  header JSON  u64-be layer length  app layer bytes
//! ```
//! answered by one line of [`Reply`] JSON. A header length of 0 (and nothing after
//! it) asks which code the pod runs: `aether status` uses it ([`query`]).

use serde::{Deserialize, Serialize};

/// The runtime's dev-hot port, on 127.0.0.1 inside the pod.
pub const PORT: u16 = 39127;
/// First bytes of every update.
pub const MAGIC: &[u8; 12] = b"AETHER-HOT/1";
/// Bound of the header (the manifest and a signature): a manifest is a few KiB.
pub const MAX_HEADER_BYTES: u32 = 1 << 20;
/// The largest app layer a pod takes (compressed): what its volumes leave room for
/// beside the dependencies (the operator's `DEV_APP_ALLOWANCE`). Larger code rolls out.
pub const MAX_APP_LAYER_BYTES: u64 = 16 << 20;

/// The update's manifest (canonical JSON, its sha256 is the digest the signature
/// covers) and signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    pub manifest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The pod's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Reply {
    /// The new code answers on the app's port.
    pub ok: bool,
    /// CamelCase, as in the fetch container's termination messages (`Swapped`,
    /// `SignatureRejected`, `NeedsRollout`, ...).
    pub reason: String,
    pub message: String,
    /// The digest the pod runs now.
    pub digest: String,
    /// From the update's last byte to the new process answering.
    pub millis: u64,
}

/// Reasons a pod gives for an update it cannot take without a rollout.
pub const NEEDS_ROLLOUT: &str = "NeedsRollout";
pub const SWAPPED: &str = "Swapped";

/// The bytes of one update.
pub fn encode(header: &Header, app_layer: &[u8]) -> Vec<u8> {
    let json = serde_json::to_vec(header).expect("a header always serialises");
    let mut out = Vec::with_capacity(MAGIC.len() + 12 + json.len() + app_layer.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&(app_layer.len() as u64).to_be_bytes());
    out.extend_from_slice(app_layer);
    out
}

/// The bytes asking a pod which code it runs (its [`Reply`] names the digest).
pub fn query() -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&0u32.to_be_bytes());
    out
}

/// The reason of the answer to [`query`].
pub const RUNNING: &str = "Running";

/// The fetch Secret's `release` entry of a dev-hot app: the release a new pod fetches
/// (its template does not name it), written by the operator, read by `fetch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub digest: String,
    pub manifest: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

/// The fetch Secret's `hot-policy` entry: whether a dev-hot pod takes updates now,
/// and under which verify mode (`enforce`, `warn`, `off`) and trusted keys (PEM).
/// Written by the operator on every reconcile, read by the runtime per update.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HotPolicy {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub trusted_keys: String,
}

// kube-derive takes one `printcolumn(...)` per column, so their keys repeat by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A packed, content-addressed build of a Node.js app: two layers (dependencies and
/// code) in object storage, described here by their digests. Immutable once created:
/// a new build is a new AetherArtifact, so an app can always roll back to an old one.
///
/// The object name is chosen by the client; `aether push` uses `<app>-<first 12 hex
/// digits of the digest>`, so `kubectl get aart` shows the short digest as the name.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aether.dev",
    version = "v1alpha1",
    kind = "AetherArtifact",
    namespaced,
    status = "AetherArtifactStatus",
    shortname = "aart",
    category = "aether",
    doc = "A packed, signed, content-addressed build of a Node.js app",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.app"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].status"#
    ),
    printcolumn(
        name = "Reason",
        type_ = "string",
        json_path = r#".status.conditions[?(@.type=="Ready")].reason"#
    ),
    printcolumn(name = "Node", type_ = "integer", json_path = ".spec.runtime.nodeMajor"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Digest", type_ = "string", json_path = ".spec.digest", priority = 1)
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("an AetherArtifact is immutable: push a new artifact instead of editing this one"))]
#[serde(rename_all = "camelCase")]
pub struct AetherArtifactSpec {
    /// Name of the AetherApp this artifact was built for (a DNS label). The signature
    /// binds it, so an artifact cannot be replayed into another app.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new(crate::validation::DNS_LABEL_RULE).message(crate::validation::DNS_LABEL_MESSAGE))]
    pub app: String,

    /// sha256 of the artifact manifest (canonical JSON listing layers, runtime and
    /// entrypoint): the identity of this build.
    #[schemars(length(max = 71))]
    #[x_kube(validation = Rule::new(crate::validation::DIGEST_RULE).message(crate::validation::DIGEST_MESSAGE))]
    pub digest: String,

    /// The layers, in extraction order: `deps` (node_modules) then `app` (the code).
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(validation = Rule::new("self.all(l, self.exists_one(m, m.name == l.name))").message("each layer name may appear only once"))]
    pub layers: Vec<Layer>,

    /// What the artifact needs to run.
    pub runtime: Runtime,

    /// The command that starts the app, run in `workdir`, e.g.
    /// `["node", "server.js"]` or `["/bin/sh", "-c", "<start script>"]`.
    #[schemars(length(min = 1, max = 32), inner(length(max = 4096)))]
    pub entrypoint: Vec<String>,

    /// The working directory relative to the extracted app root, for a workspace
    /// package (e.g. `apps/web`); absent means the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new(crate::validation::WORKDIR_RULE).message(crate::validation::WORKDIR_MESSAGE))]
    pub workdir: Option<String>,

    /// The CycloneDX SBOM describing the dependencies, stored next to the layers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbom: Option<Blob>,

    /// Ed25519 signature over a statement binding digest, app and namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<Signature>,

    /// Where the code came from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

/// One compressed tar layer in object storage, addressed by its digest.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Layer {
    /// `deps` or `app`. These are layer names (they match the manifest and the files
    /// in storage), not modes, hence lowercase.
    pub name: LayerName,
    /// sha256 of the exact compressed bytes.
    #[schemars(length(max = 71))]
    #[x_kube(validation = Rule::new(crate::validation::DIGEST_RULE).message(crate::validation::DIGEST_MESSAGE))]
    pub digest: String,
    /// Compressed size in bytes, at most 5 GiB (what storage copies in one request).
    #[schemars(range(min = 0, max = 5_368_709_120_i64))]
    pub size: i64,
    /// e.g. `application/vnd.aether.layer.v1.tar+zstd`.
    #[schemars(length(min = 1, max = 255))]
    pub media_type: String,
    /// Entries in the tar (files, directories, symlinks), at most a million.
    #[schemars(range(min = 0, max = 1000000))]
    pub entries: i64,
    /// Digest of the layer's file list (path, mode, size and sha256 of every file).
    #[schemars(length(max = 71))]
    #[x_kube(validation = Rule::new(crate::validation::DIGEST_RULE).message(crate::validation::DIGEST_MESSAGE))]
    pub files_digest: String,
    /// For `deps`: hash of what the installed tree depends on (lockfile, Node major,
    /// platform, libc). A push with the same key reuses this layer without installing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    pub cache_key: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum LayerName {
    /// `node_modules`, installed from the lockfile for the target runtime.
    Deps,
    /// Everything else that is not ignored.
    App,
}

/// A blob in object storage other than a layer (e.g. the SBOM).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    #[schemars(length(max = 71))]
    #[x_kube(validation = Rule::new(crate::validation::DIGEST_RULE).message(crate::validation::DIGEST_MESSAGE))]
    pub digest: String,
    /// Size in bytes, at most 64 MiB.
    #[schemars(range(min = 0, max = 67108864))]
    pub size: i64,
    #[schemars(length(min = 1, max = 255))]
    pub media_type: String,
}

/// The runtime an artifact was built for. Native modules in the deps layer only work
/// on a matching platform and libc.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    /// Major version of Node.js, e.g. 20.
    #[schemars(range(min = 16, max = 99))]
    pub node_major: i32,
    pub platform: Platform,
    pub libc: Libc,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Platform {
    #[serde(rename = "linux/amd64")]
    LinuxAmd64,
    #[serde(rename = "linux/arm64")]
    LinuxArm64,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Libc {
    Glibc,
    Musl,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Signature {
    /// Short hash of the public key that made the signature.
    #[schemars(length(min = 1, max = 64))]
    pub key_id: String,
    /// Base64 of the 64-byte Ed25519 signature.
    #[schemars(length(min = 1, max = 128))]
    pub value: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// VCS revision (e.g. a git commit), if the project is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub revision: Option<String>,
    /// True when the working tree had uncommitted changes.
    #[serde(default)]
    pub dirty: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AetherArtifactStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Uploaded`, `Verified` and the `Ready` summary.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// When every blob was last checked against its digest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<Time>,
    /// Where to upload the blobs storage does not have yet, while `Uploaded` is False.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload: Option<UploadInstructions>,
    /// The value of the last `aether.dev/reissue-upload` request answered (as Flux's
    /// `lastHandledReconcileAt`): the annotation stays, a new value is a new request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub reissue_handled: Option<String>,
    /// The value of the last `aether.dev/upload-complete` request answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 128))]
    pub complete_handled: Option<String>,
}

/// Presigned, short-lived upload URLs: the only storage access a developer gets.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct UploadInstructions {
    /// After this, ask for new URLs with the `aether.dev/reissue-upload` annotation.
    pub expires_at: Time,
    /// Only the blobs that are missing; an empty list means nothing to upload.
    #[serde(default)]
    #[schemars(length(max = 8))]
    pub blobs: Vec<BlobUpload>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BlobUpload {
    pub digest: String,
    pub size: i64,
    /// Single PUT of the whole blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Headers the PUT must carry: they are signed (the blob's sha256 among them), so
    /// storage refuses any other bytes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 16))]
    pub headers: BTreeMap<String, String>,
    /// Multipart upload: PUT each part to its URL; the operator completes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub part_size: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10000))]
    pub parts: Vec<PartUpload>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PartUpload {
    pub number: i32,
    pub url: String,
}

/// Set by the uploader when every blob in `status.upload` is in storage; the
/// operator then completes multipart uploads and verifies. A new value is a new
/// request (`aether push` writes a unique one); the operator answers it by copying
/// it to `status.completeHandled` and never removes the annotation.
pub const UPLOAD_COMPLETE_ANNOTATION: &str = "aether.dev/upload-complete";
/// Set to ask for fresh upload URLs (after they expired) or a fresh look at the
/// stored blobs; a new value is a new request, answered in `status.reissueHandled`.
pub const REISSUE_UPLOAD_ANNOTATION: &str = "aether.dev/reissue-upload";

/// The operator's finalizer: held by every artifact until the operator has freed
/// the blobs no other artifact of its namespace names. `aether push` creates
/// artifacts with it (the operator adds it to any that lack it), which saves the
/// operator a write of each new artifact before it can answer.
pub const BLOBS_FINALIZER: &str = "aether.dev/blobs";

/// Longest request value echoed in status: a longer one is compared by this prefix.
pub const HANDLED_MAX_CHARS: usize = 128;

/// The requests an artifact carries that the operator has not answered yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PendingRequests {
    /// An `aether.dev/reissue-upload` value, as it will be echoed.
    pub reissue: Option<String>,
    /// An `aether.dev/upload-complete` value, as it will be echoed.
    pub complete: Option<String>,
}

impl AetherArtifact {
    /// Requests whose value differs from the one status says was answered.
    pub fn pending_requests(&self) -> PendingRequests {
        let status = self.status.as_ref();
        let annotations = self.metadata.annotations.as_ref();
        let pending = |key: &str, handled: Option<&String>| {
            let value: String = annotations?.get(key)?.chars().take(HANDLED_MAX_CHARS).collect();
            (handled != Some(&value)).then_some(value)
        };
        PendingRequests {
            reissue: pending(
                REISSUE_UPLOAD_ANNOTATION,
                status.and_then(|s| s.reissue_handled.as_ref()),
            ),
            complete: pending(
                UPLOAD_COMPLETE_ANNOTATION,
                status.and_then(|s| s.complete_handled.as_ref()),
            ),
        }
    }
}

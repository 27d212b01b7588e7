// kube-derive takes one `printcolumn(...)` per column, so their keys repeat by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::VerifyMode;

/// A cluster admin's floor for the apps of some namespaces. Cluster-scoped, so only
/// cluster admins write it, and no AetherApp field can loosen it: an app may ask for
/// more (a stricter signature mode, fewer keys), never less. Where several policies
/// select a namespace, each one holds.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "aether.dev",
    version = "v1alpha1",
    kind = "AetherPolicy",
    shortname = "apol",
    category = "aether",
    doc = "A cluster admin's floor for the AetherApps of the namespaces it selects",
    printcolumn(name = "Verify", type_ = "string", json_path = ".spec.verify.minimumMode"),
    printcolumn(name = "Command", type_ = "boolean", json_path = ".spec.allowCommand"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct AetherPolicySpec {
    /// The namespaces it applies to (their labels); empty selects every namespace.
    /// A selector that cannot select as written is refused, rather than silently
    /// switching the floor off.
    #[serde(default)]
    #[x_kube(validation = Rule::new("!has(self.matchExpressions) || self.matchExpressions.all(e, e.operator in ['In', 'NotIn', 'Exists', 'DoesNotExist'] && ((e.operator == 'In' || e.operator == 'NotIn') == (has(e.values) && size(e.values) > 0)))").message("namespaceSelector.matchExpressions: operator must be In, NotIn (with values), Exists or DoesNotExist (without)"))]
    pub namespace_selector: LabelSelector,

    /// Signature checks the apps may not go below.
    #[serde(default)]
    pub verify: PolicyVerify,

    /// Images an app may name in `spec.runtime.image`; `*` matches any run of
    /// characters (`node:*-slim`). Absent: any image. The operator's own image for
    /// the artifact's Node version is always allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 512)))]
    pub allowed_images: Option<Vec<String>>,

    /// Public hosts an app may ask for in `spec.hosts`; `*` matches any run of
    /// characters (`*.team-a.example.com`). Absent: any host no other app holds.
    /// An empty list: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 253)))]
    pub allowed_hosts: Option<Vec<String>>,
    /// Whether an app may replace its artifact's entrypoint with `spec.command`.
    #[serde(default = "allow")]
    pub allow_command: bool,

    /// The most bytes the blobs of one namespace's artifacts may take in storage
    /// together (each distinct blob counted once). An artifact that would go past it
    /// gets no upload URL (`QuotaExceeded`) until others are deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub max_storage_bytes: Option<i64>,
}

fn allow() -> bool {
    true
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyVerify {
    /// The weakest `spec.verify.mode` that takes effect: an app asking for less gets
    /// this (`Enforce` > `Warn` > `Off`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum_mode: Option<VerifyMode>,
    /// The only public keys trusted in these namespaces: a ConfigMap of PEM keys
    /// (any namespace; the operator reads it). An app's own `keysRef` can only narrow
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_keys: Option<PolicyKeysRef>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyKeysRef {
    #[schemars(length(min = 1, max = 63))]
    pub namespace: String,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

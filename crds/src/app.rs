// kube-derive takes one `printcolumn(...)` per column, so their keys repeat by design.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, MicroTime, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A Node.js app: which artifact runs, how many replicas, on which port, with which
/// configuration. The operator turns it into a Deployment, a Service and a
/// ServiceAccount of the same name, so the name must be a DNS label.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aether.dev",
    version = "v1alpha1",
    kind = "AetherApp",
    namespaced,
    status = "AetherAppStatus",
    shortname = "aapp",
    category = "aether",
    doc = "A Node.js app run by Aether from an AetherArtifact",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].status"#),
    printcolumn(name = "Reason", type_ = "string", json_path = r#".status.conditions[?(@.type=="Ready")].reason"#),
    printcolumn(name = "Artifact", type_ = "string", json_path = ".spec.artifactRef.name"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Available", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "URL", type_ = "string", json_path = ".status.url", priority = 1),
    printcolumn(name = "Digest", type_ = "string", json_path = ".status.artifact.digest", priority = 1),
    printcolumn(name = "Expires", type_ = "date", json_path = ".spec.preview.expiresAt", priority = 1),
    validation = Rule::new("size(self.metadata.name) <= 63").message("an AetherApp name may be at most 63 characters: it names the app's Service and labels"),
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("an AetherApp name must be a DNS label: lowercase letters, digits and '-', starting with a letter")
)]
#[serde(rename_all = "camelCase")]
pub struct AetherAppSpec {
    /// The AetherArtifact to run, in the same namespace.
    pub artifact_ref: ArtifactRef,

    /// Number of pods. 0 keeps the app defined but stopped.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,

    /// Scale between `minReplicas` and `maxReplicas` on CPU use: the operator makes a
    /// HorizontalPodAutoscaler of the app's Deployment, which then sets the pod count.
    /// `replicas` is not read meanwhile, so a value kept in Git fights nothing
    /// (`aether scale` refuses). CPU targets need the cluster's metrics-server; the
    /// bounds hold without it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("autoscaling.minReplicas may not exceed maxReplicas"))]
    pub autoscaling: Option<Autoscaling>,

    /// Port the app listens on; passed to it as `PORT`. Not 39127 or 39128: the
    /// Aether runtime's ports in the pod (dev-hot updates, health).
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self != 39127 && self != 39128").message("ports 39127 and 39128 are the Aether runtime's in the pod: choose another port"))]
    pub port: i32,

    /// Environment variables for the app container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.all(e, !has(e.value) || size(e.value) <= 32768)").message("an env value may be at most 32 KiB: put larger configuration in a ConfigMap and use envFrom"))]
    #[x_kube(validation = Rule::new("self.all(e, size(e.name) <= 256)").message("an env name may be at most 256 characters"))]
    #[x_kube(validation = Rule::new("self.all(e, !has(e.valueFrom) || ((!has(e.valueFrom.secretKeyRef) || (size(e.valueFrom.secretKeyRef.name) <= 253 && size(e.valueFrom.secretKeyRef.key) <= 253)) && (!has(e.valueFrom.configMapKeyRef) || (size(e.valueFrom.configMapKeyRef.name) <= 253 && size(e.valueFrom.configMapKeyRef.key) <= 253)) && (!has(e.valueFrom.fieldRef) || size(e.valueFrom.fieldRef.fieldPath) <= 256) && (!has(e.valueFrom.resourceFieldRef) || size(e.valueFrom.resourceFieldRef.resource) <= 256) && !has(e.valueFrom.fileKeyRef)))").message("env valueFrom: names and keys may be at most 253 characters, field paths 256; fileKeyRef is not supported"))]
    pub env: Vec<EnvVar>,

    /// Sources of environment variables (ConfigMaps, Secrets) for the app container.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(e, !has(e.prefix) || size(e.prefix) <= 256)").message("an envFrom prefix may be at most 256 characters"))]
    #[x_kube(validation = Rule::new("self.all(e, (!has(e.configMapRef) || size(e.configMapRef.name) <= 253) && (!has(e.secretRef) || size(e.secretRef.name) <= 253))").message("an envFrom ConfigMap or Secret name may be at most 253 characters"))]
    pub env_from: Vec<EnvFromSource>,

    /// CPU and memory for the app container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("(!has(self.claims) || size(self.claims) <= 8) && (!has(self.limits) || size(self.limits) <= 16) && (!has(self.requests) || size(self.requests) <= 16)").message("resources may list at most 16 limits, 16 requests and 8 claims"))]
    pub resources: Option<ResourceRequirements>,

    /// Overrides the artifact's entrypoint, e.g. `["node", "worker.js"]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 32), inner(length(max = 4096)))]
    pub command: Option<Vec<String>>,

    /// Overrides the runtime image chosen from the artifact's Node major version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<AppRuntime>,

    /// Swap new code into running pods without restarting them (development only).
    #[serde(default)]
    pub dev_hot: bool,

    /// HTTP health check used for readiness, liveness and startup probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,

    /// Signature policy for the artifacts this app runs.
    #[serde(default)]
    pub verify: VerifyPolicy,

    /// Stop reconciling: the operator leaves the app's children as they are.
    #[serde(default)]
    pub suspend: bool,

    /// When the rollout of a new release fails (its pods crash-loop or cannot start,
    /// or the progress deadline passes) before it ever served, go back to the last
    /// release that served, by itself: recorded as an `AutomaticRollback` release,
    /// with a Warning event and `Ready=False`, `Stalled=True` (reason `RolledBack`)
    /// until the app changes again. Off by default.
    #[serde(default)]
    pub auto_rollback: bool,

    /// Public hostnames the app answers at, through the cluster's ingress controller
    /// (an Ingress of the app's name; its class is the cluster admin's setting). A
    /// host is the first app's to hold it, cluster-wide: an app asking for a host
    /// another app holds is refused (`HostClaimed`) until that app lets it go.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(h, self.exists_one(o, o.name == h.name))").message("a host may be listed once"))]
    pub hosts: Vec<Host>,

    /// A preview environment of another app (`aether push --preview NAME`): the
    /// operator deletes it, and the artifacts only it ran, once `expiresAt` passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<Preview>,
}

/// What an app previews, and until when.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Preview {
    /// The app it is a preview of, in the same namespace (for listing; it need not
    /// exist).
    #[schemars(length(min = 1, max = 63))]
    pub of: String,
    /// When the operator deletes it. Pushing the preview again moves it.
    pub expires_at: Time,
}

/// A public hostname of the app, served over HTTPS when it has a certificate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Host {
    /// A DNS name, e.g. `shop.example.com` (lowercase, no wildcard).
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?([.][a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$')").message("a host must be a lowercase DNS name, e.g. shop.example.com (no wildcard, no port, labels of at most 63 characters)"))]
    #[x_kube(validation = Rule::new("!self.matches('^[0-9.]+$')").message("a host must be a DNS name, not an IP address"))]
    pub name: String,
    /// A `kubernetes.io/tls` Secret of the app's namespace holding the host's
    /// certificate and key. Unset: the cluster's certificate issuer, when the admin
    /// configured one, issues one (cert-manager); else the host is plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("tlsSecretName must be the name of a Secret: lowercase letters, digits, '-' and '.'"))]
    pub tls_secret_name: Option<String>,
}

fn default_replicas() -> i32 {
    1
}
fn default_port() -> i32 {
    3000
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Autoscaling {
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Average CPU use, as a percentage of the app container's CPU request, that the
    /// autoscaler keeps the pods at.
    #[serde(default = "default_cpu_target")]
    #[schemars(range(min = 1, max = 100))]
    pub target_cpu_utilization_percentage: i32,
}

fn default_cpu_target() -> i32 {
    80
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ArtifactRef {
    /// Name of an AetherArtifact in the app's namespace.
    #[schemars(length(min = 1, max = 253))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$')").message("must be the name of an AetherArtifact: lowercase letters, digits, '-' and '.'"))]
    pub name: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AppRuntime {
    /// Container image providing `node`, e.g. `node:20-slim`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 512))]
    pub image: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// HTTP path probed on the app's port.
    #[serde(default = "default_health_path")]
    #[schemars(length(min = 1, max = 1024))]
    #[x_kube(validation = Rule::new("self.startsWith('/')").message("a health check path must start with '/'"))]
    pub path: String,
}

fn default_health_path() -> String {
    "/".into()
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct VerifyPolicy {
    /// `Enforce` (default) refuses to run an unsigned or wrongly signed artifact,
    /// `Warn` runs it with a Warning event, `Off` skips signature checks. Digests are
    /// always checked.
    #[serde(default)]
    pub mode: VerifyMode,
    /// Public keys trusted for this app; the operator's default keys when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys_ref: Option<KeysRef>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VerifyMode {
    #[default]
    Enforce,
    Warn,
    Off,
}

/// A ConfigMap in the app's namespace whose entries are PEM public keys. (`Secret`
/// is refused: trusted keys are public, and the operator copies no Secret into a
/// pod spec.)
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KeysRef {
    pub kind: KeysKind,
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeysKind {
    ConfigMap,
    Secret,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AetherAppStatus {
    /// The `metadata.generation` the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Reconciling` and `Stalled`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The artifact the running Deployment was built from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<DeployedArtifact>,
    /// Pods of the current Deployment.
    #[serde(default)]
    pub replicas: i32,
    /// Pods of the current Deployment that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
    /// The pod template the operator applied last, as its pods carry it in the
    /// `aether.dev/template` annotation: pods with another are of an older release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Label selector of the app's pods, for the scale subresource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Where the app answers HTTP: its first public host when it has one, else
    /// inside the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The public hosts the app holds, with their certificates.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub hosts: Vec<HostStatus>,
    /// Recent releases, newest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub history: Vec<Release>,
    /// How long the last deploy took, phase by phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_deploy: Option<DeployTimings>,
}

/// A host the app holds.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HostStatus {
    pub name: String,
    /// `https://<name>/`, or `http://` when the host has no certificate.
    pub url: String,
    /// When the app first held the host: of two apps asking for one host, the
    /// earlier holder keeps it.
    pub claimed_at: Time,
    /// The certificate: `Ready`, `Issuing`, `SecretMissing`, `NotReady` (the
    /// Gateway's listener for the host), or `None` (plain HTTP).
    pub certificate: String,
    /// Where apps' hosts go through a Gateway: what it says of the app's HTTPRoute,
    /// `Accepted`, `Pending`, or why it does not route it (`NotAllowedByListeners`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
    /// Why the certificate or route is not ready, as the issuer or Gateway says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeployedArtifact {
    pub name: String,
    pub digest: String,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Release {
    pub artifact: String,
    pub digest: String,
    pub deployed_at: Time,
}

/// Phase timings of one deploy, measured from the start of the reconcile that first
/// applied the new artifact (which was then Ready).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeployTimings {
    pub artifact: String,
    /// When the operator first applied this artifact (microseconds: the phases below
    /// are often shorter than a second).
    pub started_at: MicroTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_after_milliseconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_after_milliseconds: Option<i64>,
}

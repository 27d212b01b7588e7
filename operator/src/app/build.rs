//! AetherApp + validated artifact → the children the operator applies. Pure: the same
//! inputs always give the same objects (no clocks, no randomness), so re-applying
//! them after an operator restart changes nothing and rolls nothing.

use std::collections::BTreeMap;

use aether_artifact::signature::Policy;
use aether_crds::AetherApp;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::autoscaling::v2::{
    ContainerResourceMetricSource, CrossVersionObjectReference, HorizontalPodAutoscaler,
    HorizontalPodAutoscalerSpec, MetricSpec, MetricTarget,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource, ExecAction,
    HTTPGetAction, KeyToPath, Lifecycle, LifecycleHandler, ObjectFieldSelector, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret, SecretVolumeSource,
    SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, SleepAction, Sysctl, Volume,
    VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use super::downloads;
use super::validate::Validated;

pub use aether_crds::pod::{
    APP_CONTAINER, ARTIFACT_ANNOTATION, DEV_HOT_BASE_ANNOTATION, DIGEST_ANNOTATION, FETCH_CONTAINER,
    HEALTH_PORT, RESERVED_PORTS, TEMPLATE_ANNOTATION,
};
pub const MANAGED_BY: &str = "aether-operator";
/// The port of every app's Service (to the app's own port).
pub const SERVICE_PORT: i32 = 80;
/// The shared volume: the fetch container extracts into it, the app runs from it.
const VOLUME_PATH: &str = "/aether";
/// The non-root user every container runs as.
const UID: i64 = 10001;
/// Set for the app when a policy forbids replacing its entrypoint (the runtime then
/// drops `NODE_OPTIONS`, `LD_*` and the like); the runtime's name for it.
const ENTRYPOINT_LOCKED: &str = "AETHER_ENTRYPOINT_LOCKED";
/// Set (to `true`) for a dev-hot app's runtime; the runtime's name for it.
const DEV_HOT: &str = "AETHER_DEV_HOT";
/// Where a dev-hot app's runtime reads the policy updates are checked against (the
/// fetch Secret's `hot-policy`, which the operator keeps current).
const HOT_POLICY_PATH: &str = "/var/run/aether/hot";

/// Where the fetch container spools layers before extracting them (a disk volume).
const SPOOL_PATH: &str = "/var/run/aether/spool";
/// The runtime image's binary (its entrypoint), for the fetch container's hook.
const RUNTIME_IN_IMAGE: &str = "/usr/local/bin/aether-runtime";
/// Seconds the app may take to answer its first health check once its code is there
/// (the runtime's `/live` says "starting" until then).
const APP_START_SECONDS: i64 = 120;
/// The kubelet's timeout for the app's `/ready` probe: the runtime holds a probe for
/// an app that has not answered yet until shortly before it.
const READY_TIMEOUT_SECONDS: i32 = 10;
/// Room for the runtime binary the fetch container copies next to the app.
const RUNTIME_BYTES: u64 = 64 << 20;

/// Bytes an app may take once extracted: 32 times its compressed layers (a
/// node_modules tree compresses about 5 times), at least 256 MiB, at most 4 GiB. The
/// unpacker stops there, and the in-memory volume and the fetch container's memory
/// (tmpfs pages are charged to it) are sized to match, so a layer that inflates past
/// it is refused with a reason instead of the pod being evicted.
pub fn unpacked_limit(compressed: u64) -> u64 {
    compressed.saturating_mul(32).clamp(256 << 20, 4 << 30)
}

/// Compressed app-layer bytes a dev-hot pod's volumes leave room for, whatever the
/// current code's size: sizes that followed each save would roll the pods.
const DEV_APP_ALLOWANCE: u64 = aether_artifact::hot::MAX_APP_LAYER_BYTES;

/// The compressed bytes the pod's volumes and limits are sized for.
fn sized_for(app: &AetherApp, release: &Validated) -> u64 {
    if app.spec.dev_hot {
        release.deps_bytes + DEV_APP_ALLOWANCE
    } else {
        release.layer_bytes
    }
}

/// How long a replaced pod keeps serving before it is stopped.
const PRE_STOP_SECONDS: i64 = 3;

/// How pods get their runtime: operator configuration. (Storage is reached through
/// the download URLs of the app's fetch Secret, see [`downloads`].)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodConfig {
    pub runtime_image: String,
    /// `{major}` is replaced by the artifact's Node major version.
    pub node_image: String,
    /// Likewise, for artifacts built against musl.
    pub node_image_musl: String,
    pub image_pull_policy: String,
    pub fetch_deadline_seconds: i64,
}

/// Everything built for one app.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub service_account: ServiceAccount,
    /// Download URLs for the fetch container (see [`downloads`]).
    pub downloads: Secret,
    pub deployment: Deployment,
    pub service: Service,
}

/// The label that names a child's app (its pods' too).
pub const NAME_LABEL: &str = "app.kubernetes.io/name";

/// The labels every app's pods carry (not `managed-by`: see [`pod_template`]),
/// as a selector.
pub const PODS_SELECTOR: &str =
    "app.kubernetes.io/part-of=aether,app.kubernetes.io/name,app.kubernetes.io/instance";

/// `app.kubernetes.io/*` labels of every child; the first two also select the pods.
pub fn labels(app: &str) -> BTreeMap<String, String> {
    [
        (NAME_LABEL, app),
        ("app.kubernetes.io/instance", app),
        ("app.kubernetes.io/managed-by", MANAGED_BY),
        ("app.kubernetes.io/part-of", "aether"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The metadata of a child named `name`: in the app's namespace, with [`labels`],
/// and owned (as its controller) by the app.
pub fn owned_meta(app: &AetherApp, name: String) -> ObjectMeta {
    ObjectMeta {
        labels: Some(labels(&app.name_any())),
        name: Some(name),
        namespace: app.namespace(),
        owner_references: app.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

pub fn selector_labels(app: &str) -> BTreeMap<String, String> {
    labels(app)
        .into_iter()
        .filter(|(k, _)| k == NAME_LABEL || k == "app.kubernetes.io/instance")
        .collect()
}

/// The selector as a string, for the scale subresource and pod lists.
pub fn selector_string(app: &str) -> String {
    selector_labels(app)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The app's own ServiceAccount: `aether.<app>`, a name no AetherApp (a DNS label)
/// can have and no RoleBinding names by accident, so an app cannot take over an
/// account a binding was left waiting for (should its token ever be mounted).
pub fn service_account_name(app: &str) -> String {
    format!("aether.{app}")
}

/// Where earlier operators copied bucket-wide read credentials; pruned when owned.
pub fn legacy_secret_name(app: &str) -> String {
    format!("{app}-storage")
}

/// The app's own image if it names one, else the admin's for the artifact's Node
/// major and libc. (The runtime copied into it is static: any libc runs it.)
pub fn node_image(app: &AetherApp, release: &Validated, config: &PodConfig) -> String {
    app.spec
        .runtime
        .as_ref()
        .and_then(|r| r.image.clone())
        .unwrap_or_else(|| {
            let template = match release.libc {
                aether_crds::Libc::Glibc => &config.node_image,
                aether_crds::Libc::Musl => &config.node_image_musl,
            };
            template.replace("{major}", &release.node_major.to_string())
        })
}

/// Pod template annotation: the resourceVersion of each Secret and ConfigMap the app
/// reads its environment from, so that editing one rolls the pods.
pub const CONFIG_VERSIONS_ANNOTATION: &str = "aether.dev/config-versions";

/// The Secrets and ConfigMaps the app's environment reads (`env[].valueFrom`,
/// `envFrom`), as `(kind, name)`: `kind` is `secret` or `configmap`.
pub fn config_sources(app: &AetherApp) -> std::collections::BTreeSet<(&'static str, String)> {
    config_sources_of(&app.spec.env, &app.spec.env_from)
}

/// [`config_sources`] of an `env` and `envFrom`.
pub fn config_sources_of(
    env: &[k8s_openapi::api::core::v1::EnvVar],
    env_from: &[k8s_openapi::api::core::v1::EnvFromSource],
) -> std::collections::BTreeSet<(&'static str, String)> {
    let from_env = env.iter().filter_map(|e| e.value_from.as_ref()).flat_map(|f| {
        let secret = f.secret_key_ref.as_ref().map(|s| ("secret", s.name.clone()));
        let configmap = f
            .config_map_key_ref
            .as_ref()
            .map(|c| ("configmap", c.name.clone()));
        secret.into_iter().chain(configmap)
    });
    let from_sources = env_from.iter().flat_map(|e| {
        let secret = e.secret_ref.as_ref().map(|s| ("secret", s.name.clone()));
        let configmap = e.config_map_ref.as_ref().map(|c| ("configmap", c.name.clone()));
        secret.into_iter().chain(configmap)
    });
    from_env.chain(from_sources).collect()
}

/// The names of the Secrets among [`config_sources_of`] an `env` and `envFrom`.
pub fn secret_names(
    env: &[k8s_openapi::api::core::v1::EnvVar],
    env_from: &[k8s_openapi::api::core::v1::EnvFromSource],
) -> std::collections::BTreeSet<String> {
    config_sources_of(env, env_from)
        .into_iter()
        .filter(|(kind, _)| *kind == "secret")
        .map(|(_, name)| name)
        .collect()
}

/// `download_urls`: the fetch Secret's data, as [`downloads::plan`] left it.
/// `config_versions`: `kind/name` → resourceVersion of each of [`config_sources`].
/// `running`: the app's Deployment as it is, if any (see [`replicas`]).
pub fn build(
    app: &AetherApp,
    release: &Validated,
    download_urls: &BTreeMap<String, String>,
    config_versions: &BTreeMap<String, String>,
    config: &PodConfig,
    running: Option<&Deployment>,
) -> Children {
    let name = app.name_any();
    let meta = || owned_meta(app, name.clone());
    let replicas = replicas(app, running);
    // While the operator still holds an autoscaled app's count, it writes it only
    // onto the version of the Deployment it read: an autoscaler's write in between
    // wins (the apply conflicts, and the next look leaves the count to it).
    let read_version = running
        .filter(|_| app.spec.autoscaling.is_some() && replicas.is_some())
        .and_then(|d| d.metadata.resource_version.clone());
    Children {
        service_account: ServiceAccount {
            metadata: ObjectMeta {
                name: Some(service_account_name(&name)),
                ..meta()
            },
            // The app does not talk to the API (dev-hot updates come in through a
            // port-forward, see aether_artifact::hot).
            automount_service_account_token: Some(false),
            ..Default::default()
        },
        deployment: Deployment {
            metadata: ObjectMeta {
                resource_version: read_version,
                ..meta()
            },
            spec: Some(DeploymentSpec {
                replicas,
                selector: LabelSelector {
                    match_labels: Some(selector_labels(&name)),
                    ..Default::default()
                },
                // Surge one new pod and keep every old one until it is Ready: a
                // release that fails to start never takes the app down.
                strategy: Some(DeploymentStrategy {
                    type_: Some("RollingUpdate".into()),
                    rolling_update: Some(RollingUpdateDeployment {
                        max_surge: Some(IntOrString::Int(1)),
                        max_unavailable: Some(IntOrString::Int(0)),
                    }),
                }),
                revision_history_limit: Some(5),
                progress_deadline_seconds: Some(300),
                template: hashed(pod_template(app, release, config_versions, config)),
                ..Default::default()
            }),
            ..Default::default()
        },
        service: Service {
            metadata: meta(),
            spec: Some(ServiceSpec {
                type_: Some("ClusterIP".into()),
                selector: Some(selector_labels(&name)),
                ports: Some(vec![ServicePort {
                    name: Some("http".into()),
                    port: SERVICE_PORT,
                    target_port: Some(IntOrString::String("http".into())),
                    protocol: Some("TCP".into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        },
        downloads: downloads_secret(app, download_urls),
    }
}

/// `template` with its own hash in [`TEMPLATE_ANNOTATION`] (sha256 of its JSON,
/// whose maps are ordered, so the same template always has the same hash).
fn hashed(mut template: PodTemplateSpec) -> PodTemplateSpec {
    let json = serde_json::to_vec(&template).unwrap_or_default();
    let hash = aether_artifact::Digest::of(&json).hex()[..16].to_string();
    template
        .metadata
        .get_or_insert_with(Default::default)
        .annotations
        .get_or_insert_with(Default::default)
        .insert(TEMPLATE_ANNOTATION.into(), hash);
    template
}

/// The template hash a Deployment's pods carry.
pub fn template_hash(deployment: &Deployment) -> Option<String> {
    deployment
        .spec
        .as_ref()?
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(TEMPLATE_ANNOTATION)
        .cloned()
}

/// The Deployment's `replicas` as the operator applies it (`None`: left out).
///
/// Without autoscaling it is `spec.replicas`. With it, the autoscaler scales the
/// Deployment and `spec.replicas` is not read, so a value kept in Git fights
/// nothing. The operator then starts a new Deployment within the bounds and keeps
/// the count it finds (brought within the bounds) until another manager (the
/// autoscaler) has written it; from then on it leaves the field out. It cannot
/// leave it out before: a field its only owner drops is reset to its default, 1.
/// A count out of the bounds (someone's `kubectl scale deployment --replicas 0`,
/// which would also switch the autoscaler off) is brought back within them.
pub fn replicas(app: &AetherApp, running: Option<&Deployment>) -> Option<i32> {
    let Some(scaling) = &app.spec.autoscaling else {
        return Some(app.spec.replicas);
    };
    let current = running
        .and_then(|d| d.spec.as_ref()?.replicas)
        .unwrap_or(app.spec.replicas);
    let bounded = current.max(scaling.min_replicas).min(scaling.max_replicas);
    let autoscaled = running.is_some_and(replicas_written_by_another_manager);
    (!autoscaled || bounded != current).then_some(bounded)
}

/// Whether a field manager other than the operator owns the Deployment's `replicas`.
fn replicas_written_by_another_manager(deployment: &Deployment) -> bool {
    deployment.metadata.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() != Some(crate::artifact::MANAGER)
            && entry
                .fields_v1
                .as_ref()
                .and_then(|fields| fields.0.get("f:spec")?.get("f:replicas"))
                .is_some()
    })
}

/// The app's HorizontalPodAutoscaler, when `spec.autoscaling` asks for one. It
/// scales the app's Deployment (not the AetherApp's scale subresource, whose
/// `spec.replicas` a GitOps tool may keep; see [`replicas`]).
pub fn autoscaler(app: &AetherApp) -> Option<HorizontalPodAutoscaler> {
    let scaling = app.spec.autoscaling.as_ref()?;
    let name = app.name_any();
    Some(HorizontalPodAutoscaler {
        metadata: owned_meta(app, name.clone()),
        spec: Some(HorizontalPodAutoscalerSpec {
            scale_target_ref: CrossVersionObjectReference {
                api_version: Some(Deployment::api_version(&()).into()),
                kind: Deployment::kind(&()).into(),
                name,
            },
            min_replicas: Some(scaling.min_replicas),
            max_replicas: scaling.max_replicas,
            // The app container's CPU alone: the idle fetch container beside it would
            // count its request and dilute a pod-wide utilization.
            metrics: Some(vec![MetricSpec {
                type_: "ContainerResource".into(),
                container_resource: Some(ContainerResourceMetricSource {
                    container: APP_CONTAINER.into(),
                    name: "cpu".into(),
                    target: MetricTarget {
                        type_: "Utilization".into(),
                        average_utilization: Some(scaling.target_cpu_utilization_percentage),
                        ..Default::default()
                    },
                }),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    })
}

/// The app's fetch Secret holding `download_urls` (see [`downloads`]).
pub fn downloads_secret(app: &AetherApp, download_urls: &BTreeMap<String, String>) -> Secret {
    let name = app.name_any();
    Secret {
        metadata: owned_meta(app, downloads::secret_name(&name)),
        type_: Some("Opaque".into()),
        data: Some(
            download_urls
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Default::default()
    }
}

fn pod_template(
    app: &AetherApp,
    release: &Validated,
    config_versions: &BTreeMap<String, String>,
    config: &PodConfig,
) -> PodTemplateSpec {
    let name = app.name_any();
    let mut labels = labels(&name);
    labels.retain(|k, _| k != "app.kubernetes.io/managed-by");
    let mut annotations: BTreeMap<String, String> = [
        (DIGEST_ANNOTATION.to_string(), release.digest.to_string()),
        (ARTIFACT_ANNOTATION.to_string(), release.artifact.clone()),
    ]
    .into();
    if app.spec.dev_hot {
        annotations.insert(DEV_HOT_BASE_ANNOTATION.into(), release.base_key.clone());
    }
    if !config_versions.is_empty() {
        let versions: Vec<String> = config_versions.iter().map(|(k, v)| format!("{k}={v}")).collect();
        annotations.insert(CONFIG_VERSIONS_ANNOTATION.into(), versions.join(","));
    }
    // The fetch container runs first, beside the app: the kubelet starts both in one
    // pass, where an init container's exit (or a sidecar's start) is only noticed at
    // its next relist, about a second later. It starts a pod's containers in order,
    // each after the one before's postStart hook (as Istio's
    // holdApplicationUntilProxyStarts relies on), so the runtime the fetch
    // container's hook installs is there for the app container's command; that
    // `supervise --code` waits for the verified tree. A dev-hot pod keeps an init
    // container, whose termination message says which code it started on (its
    // template does not name it).
    let (fetch, main) = (
        fetch_container(app, release, config),
        app_container(app, release, config),
    );
    let (init_containers, containers) = if app.spec.dev_hot {
        (Some(vec![fetch]), vec![main])
    } else {
        (None, vec![fetch, main])
    };
    // `kubectl logs` and `kubectl exec` without `-c` mean the app.
    annotations.insert(
        "kubectl.kubernetes.io/default-container".into(),
        APP_CONTAINER.into(),
    );
    PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(labels),
            annotations: Some(annotations),
            ..Default::default()
        }),
        spec: Some(PodSpec {
            service_account_name: Some(service_account_name(&name)),
            automount_service_account_token: Some(false),
            enable_service_links: Some(false),
            security_context: Some(PodSecurityContext {
                run_as_non_root: Some(true),
                run_as_user: Some(UID),
                run_as_group: Some(UID),
                fs_group: Some(UID),
                seccomp_profile: Some(SeccompProfile {
                    type_: "RuntimeDefault".into(),
                    ..Default::default()
                }),
                // The runtime's ports (health, dev-hot updates) lie in the kernel's
                // ephemeral range: a connection of the pod's (the fetch's download,
                // the app's own) could take one as its source port, and the runtime
                // then could not listen there until it closed and its TIME_WAIT
                // passed (seen: an app crash-looping for a minute). A safe sysctl,
                // allowed under Pod Security `restricted`.
                sysctls: Some(vec![Sysctl {
                    name: "net.ipv4.ip_local_reserved_ports".into(),
                    value: RESERVED_PORTS.map(|p| p.to_string()).join(","),
                }]),
                ..Default::default()
            }),
            init_containers,
            containers,
            volumes: Some(
                vec![
                    // In memory: extracting ~20k files of node_modules to this kind of
                    // disk took ~14 s, to tmpfs well under one.
                    Volume {
                        name: "aether".into(),
                        empty_dir: Some(EmptyDirVolumeSource {
                            medium: Some("Memory".into()),
                            size_limit: Some(Quantity(
                                (unpacked_limit(sized_for(app, release)) + RUNTIME_BYTES).to_string(),
                            )),
                        }),
                        ..Default::default()
                    },
                    // The downloaded layers, checked there before extraction (fetch only).
                    Volume {
                        name: "spool".into(),
                        empty_dir: Some(EmptyDirVolumeSource {
                            medium: None,
                            size_limit: Some(Quantity((sized_for(app, release) + (1 << 20)).to_string())),
                        }),
                        ..Default::default()
                    },
                    Volume {
                        name: "tmp".into(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Default::default()
                    },
                    // Only the fetch container mounts it.
                    Volume {
                        name: "downloads".into(),
                        secret: Some(SecretVolumeSource {
                            secret_name: Some(downloads::secret_name(&name)),
                            default_mode: Some(0o440),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                ]
                .into_iter()
                // Dev-hot: the app container sees the policy entry of that Secret only
                // (kubelet refreshes it in running pods), never the download URLs.
                .chain(app.spec.dev_hot.then(|| Volume {
                    name: "hot-policy".into(),
                    secret: Some(SecretVolumeSource {
                        secret_name: Some(downloads::secret_name(&name)),
                        default_mode: Some(0o440),
                        items: Some(vec![KeyToPath {
                            key: super::hot::POLICY_KEY.into(),
                            path: "policy.json".into(),
                            ..Default::default()
                        }]),
                        optional: Some(true),
                    }),
                    ..Default::default()
                }))
                .collect(),
            ),
            ..Default::default()
        }),
    }
}

fn restricted() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Default::default()
        }),
        seccomp_profile: Some(SeccompProfile {
            type_: "RuntimeDefault".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    }
}

/// The runtime's name for a verify policy.
pub fn mode_name(policy: Policy) -> &'static str {
    match policy {
        Policy::Enforce => "enforce",
        Policy::Warn => "warn",
        Policy::Off => "off",
    }
}

/// What the runtime checks a release against: the app, its namespace, the policy
/// and the keys it trusts (the fetch container, and in dev-hot mode the app's).
fn verification_env(app: &AetherApp, release: &Validated) -> Vec<EnvVar> {
    let mut vars = vec![
        env("AETHER_APP", app.name_any()),
        field_env("AETHER_NAMESPACE", "metadata.namespace"),
        env("AETHER_VERIFY_MODE", mode_name(release.policy)),
    ];
    if release.policy != Policy::Off {
        vars.push(env("AETHER_TRUSTED_KEYS", &release.trusted_pem));
    }
    vars.push(env(
        "AETHER_MAX_UNPACKED_BYTES",
        unpacked_limit(sized_for(app, release)).to_string(),
    ));
    vars
}

fn fetch_container(app: &AetherApp, release: &Validated, config: &PodConfig) -> Container {
    let mut vars = verification_env(app, release);
    // A dev-hot pod starts on the latest code, which the fetch Secret names (it
    // changes without a rollout); any other pod on the release its template names.
    if !app.spec.dev_hot {
        vars.push(env("AETHER_ARTIFACT_DIGEST", release.digest.to_string()));
        vars.push(env("AETHER_MANIFEST", &release.manifest_json));
        if let Some((key_id, value)) = &release.signature {
            vars.push(env("AETHER_SIGNATURE_KEY_ID", key_id));
            vars.push(env("AETHER_SIGNATURE", value));
        }
    }
    vars.extend([
        env("AETHER_DOWNLOADS_DIR", downloads::MOUNT_PATH),
        env("AETHER_SPOOL_DIR", SPOOL_PATH),
        env(
            "AETHER_FETCH_DEADLINE_SECONDS",
            config.fetch_deadline_seconds.to_string(),
        ),
    ]);
    // Beside the app (not dev-hot): see `pod_template`. It stays up once it fetched,
    // and its postStart hook puts the runtime in the volume for the app container's
    // command, which the kubelet starts only after the hook.
    let beside = !app.spec.dev_hot;
    let mut args = vec!["fetch".to_string(), "--into".into(), VOLUME_PATH.into()];
    if beside {
        args.push("--sidecar".into());
    }
    Container {
        name: FETCH_CONTAINER.into(),
        image: Some(config.runtime_image.clone()),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        args: Some(args),
        lifecycle: beside.then(|| Lifecycle {
            post_start: Some(LifecycleHandler {
                exec: Some(ExecAction {
                    command: Some(vec![
                        RUNTIME_IN_IMAGE.into(),
                        "install".into(),
                        "--into".into(),
                        VOLUME_PATH.into(),
                    ]),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        env: Some(vars),
        // Layers stream through the spool volume; what is extracted lands in tmpfs,
        // whose pages count as this container's memory.
        resources: Some(ResourceRequirements {
            // It stays up, idle, once it fetched: a small CPU request (it adds to the
            // app's; an init container's did not).
            requests: Some(quantities(&[("cpu", "10m"), ("memory", "64Mi")])),
            limits: Some(
                [(
                    "memory".to_string(),
                    Quantity(
                        (unpacked_limit(sized_for(app, release)) + RUNTIME_BYTES + (128 << 20)).to_string(),
                    ),
                )]
                .into(),
            ),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "aether".into(),
                mount_path: VOLUME_PATH.into(),
                ..Default::default()
            },
            VolumeMount {
                name: "downloads".into(),
                mount_path: downloads::MOUNT_PATH.into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: "spool".into(),
                mount_path: SPOOL_PATH.into(),
                ..Default::default()
            },
        ]),
        // The runtime writes `Reason: detail` there; logs if it could not.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(restricted()),
        ..Default::default()
    }
}

/// A variable from the pod's own fields (the downward API).
fn field_env(name: &str, path: &str) -> EnvVar {
    EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn quantities(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
        .collect()
}

fn app_container(app: &AetherApp, release: &Validated, config: &PodConfig) -> Container {
    let argv = app
        .spec
        .command
        .clone()
        .unwrap_or_else(|| release.entrypoint.clone());
    let workdir = match &release.workdir {
        Some(dir) => format!("{VOLUME_PATH}/app/{dir}"),
        None => format!("{VOLUME_PATH}/app"),
    };
    let mut command = vec![format!("{VOLUME_PATH}/bin/aether-runtime"), "supervise".into()];
    if !app.spec.dev_hot {
        // Beside the fetch container: wait for its verified tree, then go into it (it
        // is not there yet when the container starts, in a volume the app may not
        // write to).
        command.extend([
            "--code".into(),
            VOLUME_PATH.into(),
            "--workdir".into(),
            workdir.clone(),
        ]);
    }
    // The runtime answers the kubelet's probes for the app (see its `health`
    // module): a new pod is Ready as soon as the app answers, not at the next tick.
    command.extend([
        "--health-port".into(),
        HEALTH_PORT.to_string(),
        "--check-port".into(),
        app.spec.port.to_string(),
        "--start-seconds".into(),
        APP_START_SECONDS
            .saturating_add(config.fetch_deadline_seconds)
            .to_string(),
        "--ready-timeout-seconds".into(),
        READY_TIMEOUT_SECONDS.to_string(),
    ]);
    if let Some(check) = &app.spec.health_check {
        command.extend(["--check-path".into(), check.path.clone()]);
    }
    command.push("--".into());
    command.extend(argv);
    // Defaults the app's own env may override (names must be unique for apply).
    let mut vars: Vec<EnvVar> = [
        ("PORT", app.spec.port.to_string()),
        ("NODE_ENV", "production".into()),
        ("HOME", "/tmp".into()),
    ]
    .into_iter()
    .filter(|(k, _)| !app.spec.env.iter().any(|e| e.name == *k))
    .map(|(k, v)| env(k, v))
    .collect();
    // `AETHER_*` is the runtime's: an app cannot set it (nor unset what is set here).
    vars.extend(
        app.spec
            .env
            .iter()
            .filter(|e| !e.name.starts_with("AETHER_"))
            .cloned(),
    );
    if release.entrypoint_locked {
        // Explicit env outranks envFrom, so no ConfigMap can unset it.
        vars.push(env(ENTRYPOINT_LOCKED, "true"));
    }
    // Explicit, so that no envFrom ConfigMap can switch dev-hot mode on.
    vars.push(env(DEV_HOT, app.spec.dev_hot.to_string()));
    // Where the runtime checks the app for the kubelet: as the Service reaches it.
    vars.push(field_env("AETHER_POD_IP", "status.podIP"));
    if app.spec.dev_hot {
        // The runtime takes updates and checks them as the fetch container does; it
        // holds the app's port and gives the app a loopback one (see the runtime's
        // `hot` module).
        vars.push(env("AETHER_PUBLIC_PORT", app.spec.port.to_string()));
        vars.push(env("AETHER_HOT_POLICY", format!("{HOT_POLICY_PATH}/policy.json")));
        vars.extend(verification_env(app, release));
    }
    let probe = |path: &str, period: i32, timeout: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::Int(i32::from(HEALTH_PORT)),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(3),
        timeout_seconds: Some(timeout),
        ..Default::default()
    };
    Container {
        name: APP_CONTAINER.into(),
        image: Some(node_image(app, release, config)),
        image_pull_policy: Some(config.image_pull_policy.clone()),
        command: Some(command),
        working_dir: Some(if app.spec.dev_hot {
            workdir
        } else {
            VOLUME_PATH.into()
        }),
        env: Some(vars),
        env_from: (!app.spec.env_from.is_empty()).then(|| app.spec.env_from.clone()),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: app.spec.port,
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
        // No startup probe: its ticks would hold readiness back. `/ready` waits for
        // the app's first answer (within the runtime's hold, which this timeout
        // covers); `/live` counts the start allowance itself, as a startup probe did.
        readiness_probe: Some(probe("/ready", 1, READY_TIMEOUT_SECONDS)),
        liveness_probe: Some(probe("/live", 10, 5)),
        resources: app.spec.resources.clone(),
        volume_mounts: Some(
            vec![
                VolumeMount {
                    name: "aether".into(),
                    mount_path: VOLUME_PATH.into(),
                    // Dev-hot updates replace the code in place.
                    read_only: Some(!app.spec.dev_hot),
                    ..Default::default()
                },
                VolumeMount {
                    name: "tmp".into(),
                    mount_path: "/tmp".into(),
                    ..Default::default()
                },
            ]
            .into_iter()
            .chain(app.spec.dev_hot.then(|| VolumeMount {
                name: "hot-policy".into(),
                mount_path: HOT_POLICY_PATH.into(),
                read_only: Some(true),
                ..Default::default()
            }))
            .collect(),
        ),
        // A pod leaving a rollout keeps answering while kube-proxy and load balancers
        // drop it from their rules; it gets SIGTERM afterwards.
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRE_STOP_SECONDS,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        security_context: Some(restricted()),
        ..Default::default()
    }
}

//! Operator flags; each has an `AETHER_…` (or standard AWS) environment fallback.

use std::time::Duration;

use aether_storage::StorageConfig;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "aether-operator", version, about = "Aether's Kubernetes operator")]
pub struct Args {
    /// S3 endpoint; empty for AWS's regional endpoint.
    #[arg(long, env = "AETHER_S3_ENDPOINT")]
    pub s3_endpoint: Option<String>,
    /// Endpoint put into presigned upload URLs, when developers reach storage at
    /// another address than the operator does [default: --s3-endpoint].
    #[arg(long, env = "AETHER_S3_PUBLIC_ENDPOINT")]
    pub s3_public_endpoint: Option<String>,
    #[arg(long, env = "AETHER_S3_REGION", default_value = "us-east-1")]
    pub s3_region: String,
    #[arg(long, env = "AETHER_S3_BUCKET")]
    pub s3_bucket: String,
    /// Key prefix for blobs: `<prefix>/blobs/sha256/<hex>`.
    #[arg(long, env = "AETHER_S3_PREFIX", default_value = "")]
    pub s3_prefix: String,
    #[arg(long, env = "AETHER_S3_PATH_STYLE", default_value_t = true, action = clap::ArgAction::Set)]
    pub s3_path_style: bool,
    #[arg(long, env = "AWS_ACCESS_KEY_ID", hide_env_values = true)]
    pub s3_access_key_id: String,
    #[arg(long, env = "AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub s3_secret_access_key: String,
    /// How long presigned upload URLs stay valid.
    #[arg(long, env = "AETHER_UPLOAD_URL_TTL_SECONDS", default_value_t = 900)]
    pub upload_url_ttl_seconds: u64,
    /// Blobs larger than this are uploaded in parts.
    #[arg(long, env = "AETHER_MULTIPART_THRESHOLD_BYTES", default_value_t = 64 << 20)]
    pub multipart_threshold_bytes: u64,
    #[arg(long, env = "AETHER_PART_SIZE_BYTES", default_value_t = 16 << 20)]
    pub part_size_bytes: u64,

    /// The operator's namespace: its Lease and the default trusted keys live there.
    #[arg(long, env = "POD_NAMESPACE", default_value = "aether-system")]
    pub namespace: String,
    /// Image of the in-pod runtime (the `fetch` container); it must hold the runtime at
    /// /usr/local/bin/aether-runtime, which the fetch container's postStart hook runs.
    #[arg(long, env = "AETHER_RUNTIME_IMAGE", default_value = concat!("ghcr.io/aether-dev/aether-runtime:", env!("CARGO_PKG_VERSION")))]
    pub runtime_image: String,
    /// Image that runs the app; `{major}` becomes the artifact's Node major version.
    #[arg(long, env = "AETHER_NODE_IMAGE", default_value = "node:{major}-slim")]
    pub node_image: String,
    /// Image that runs apps whose artifact says `libc: musl` (native modules built on
    /// Alpine); `{major}` likewise.
    #[arg(long, env = "AETHER_NODE_IMAGE_MUSL", default_value = "node:{major}-alpine")]
    pub node_image_musl: String,
    #[arg(long, env = "AETHER_IMAGE_PULL_POLICY", default_value = "IfNotPresent", value_parser = ["Always", "IfNotPresent", "Never"])]
    pub image_pull_policy: String,
    /// Storage endpoint as pods reach it [default: --s3-endpoint].
    #[arg(long, env = "AETHER_RUNTIME_S3_ENDPOINT")]
    pub runtime_s3_endpoint: Option<String>,
    /// How long the download URLs given to app pods stay valid (renewed at half
    /// their life; SigV4 allows at most 7 days).
    #[arg(long, env = "AETHER_DOWNLOAD_URL_TTL_SECONDS", default_value_t = 12 * 3600,
          value_parser = clap::value_parser!(u64).range(120..=7 * 24 * 3600))]
    pub download_url_ttl_seconds: u64,
    /// The fetch container gives up after this long (then restarts, with back-off).
    #[arg(long, env = "AETHER_FETCH_DEADLINE_SECONDS", default_value_t = 300)]
    pub fetch_deadline_seconds: i64,
    /// ConfigMap in --namespace whose entries are the public keys trusted by apps
    /// that name no `verify.keysRef`.
    #[arg(
        long,
        env = "AETHER_TRUSTED_KEYS_CONFIGMAP",
        default_value = "aether-trusted-keys"
    )]
    pub trusted_keys_configmap: String,
    /// What `status.url` holds.
    #[arg(long, env = "AETHER_URL_MODE", value_enum, default_value = "service-dns")]
    pub url_mode: crate::app::UrlMode,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "AETHER_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: std::net::SocketAddr,
    /// Reconciles each controller runs at once, at most half of them for one
    /// namespace. Bounded so that many objects at once (an operator restart with 1000
    /// apps) queue instead of each holding requests and buffers in memory together,
    /// and shared so that they do not queue in front of another namespace's.
    #[arg(long, env = "AETHER_MAX_CONCURRENT_RECONCILES", default_value_t = 16)]
    pub max_concurrent_reconciles: u16,
    /// Releases kept per app besides the current one; older artifacts are deleted.
    #[arg(long, env = "AETHER_KEEP_RELEASES", default_value_t = 5)]
    pub keep_releases: usize,
    /// An artifact no app ever deployed is deleted after this long (a GitOps change
    /// referencing it may still be in review).
    #[arg(long, env = "AETHER_UNREFERENCED_GRACE_SECONDS", default_value_t = 72 * 3600)]
    pub unreferenced_grace_seconds: u64,
    /// An upload never completed is abandoned (multipart uploads aborted, the
    /// artifact deleted) after this long.
    #[arg(long, env = "AETHER_ABANDONED_UPLOAD_SECONDS", default_value_t = 3600)]
    pub abandoned_upload_seconds: u64,
    /// Give every app a NetworkPolicy: its pods take connections only from their
    /// namespace and --network-policy-ingress-namespaces, and reach only DNS, storage
    /// and --network-policy-egress.
    #[arg(long, env = "AETHER_APP_NETWORK_POLICIES", default_value_t = false, action = clap::ArgAction::Set)]
    pub app_network_policies: bool,
    /// Labels (`key=value,...`) of the namespaces whose pods may also connect to apps:
    /// the ingress controller's.
    #[arg(long, env = "AETHER_NETWORK_POLICY_INGRESS_NAMESPACES", default_value = "")]
    pub network_policy_ingress_namespaces: String,
    /// Where pods download from, `CIDR:PORT` [default: the host of
    /// --runtime-s3-endpoint, when it is an IP address].
    #[arg(long, env = "AETHER_NETWORK_POLICY_STORAGE")]
    pub network_policy_storage: Option<String>,
    /// Other destinations apps may connect to: `CIDR[:PORT],...`.
    #[arg(long, env = "AETHER_NETWORK_POLICY_EGRESS", default_value = "")]
    pub network_policy_egress: String,
    /// The IngressClass of the Ingresses routing apps' public hosts (`spec.hosts`)
    /// [default: the cluster's default class].
    #[arg(long, env = "AETHER_INGRESS_CLASS")]
    pub ingress_class: Option<String>,
    /// The Gateway (`NAMESPACE/NAME`, Gateway API; `NAMESPACE/NAME/LISTENER`: that
    /// listener alone) that apps' HTTPRoutes attach to;
    /// TLS then ends there, with the certificates of its listeners. Set alone, hosts
    /// are routed only by HTTPRoutes; with --ingress-class too, by both [default:
    /// none, Ingresses only].
    #[arg(long, env = "AETHER_GATEWAY")]
    pub gateway: Option<String>,
    /// The cert-manager issuer of certificates for apps' hosts that name no Secret
    /// of their own: `ClusterIssuer/NAME` or `Issuer/NAME` (in each app's
    /// namespace) [default: none; such hosts are plain HTTP].
    #[arg(long, env = "AETHER_CERTIFICATE_ISSUER")]
    pub certificate_issuer: Option<String>,
    /// The hosts apps may ask for, `pattern,...` where `*` matches any run of
    /// characters (`*.apps.example.com`) [default: any host no other app holds;
    /// AetherPolicies' allowedHosts bound it per namespace].
    #[arg(long, env = "AETHER_ALLOWED_HOSTS", default_value = "")]
    pub allowed_hosts: String,
    /// Hold a Lease so that only one replica reconciles at a time.
    #[arg(long, env = "AETHER_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
}

impl Args {
    /// What the app controller needs; Err: settings that do not fit together.
    pub fn app_config(&self) -> Result<crate::app::AppConfig, String> {
        let storage = self.storage();
        let network_policy = crate::app::network_policy::Config::from_flags(
            self.app_network_policies,
            &self.network_policy_ingress_namespaces,
            self.network_policy_storage.as_deref(),
            &self.network_policy_egress,
            storage
                .download_endpoint
                .as_deref()
                .or(storage.endpoint.as_deref()),
        )?;
        Ok(crate::app::AppConfig {
            pod: crate::app::build::PodConfig {
                runtime_image: self.runtime_image.clone(),
                node_image: self.node_image.clone(),
                node_image_musl: self.node_image_musl.clone(),
                image_pull_policy: self.image_pull_policy.clone(),
                fetch_deadline_seconds: self.fetch_deadline_seconds,
            },
            operator_namespace: self.namespace.clone(),
            download_url_ttl: Duration::from_secs(self.download_url_ttl_seconds),
            trusted_keys_configmap: self.trusted_keys_configmap.clone(),
            url_mode: self.url_mode,
            keep_releases: self.keep_releases,
            network_policy,
            route: crate::app::route::Config {
                ingress_class: self.ingress_class.clone().filter(|c| !c.is_empty()),
                gateway: match self.gateway.as_deref() {
                    None | Some("") => None,
                    Some(gateway) => Some(gateway.parse().map_err(|e| format!("--gateway: {e}"))?),
                },
                issuer: match self.certificate_issuer.as_deref() {
                    None | Some("") => None,
                    Some(issuer) => Some(issuer.parse().map_err(|e| format!("--certificate-issuer: {e}"))?),
                },
                allowed_hosts: self
                    .allowed_hosts
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_string)
                    .collect(),
            },
        })
    }

    pub fn retention(&self) -> crate::retention::Policy {
        crate::retention::Policy {
            keep_releases: self.keep_releases,
            unreferenced_grace: Duration::from_secs(self.unreferenced_grace_seconds),
            abandoned_after: Duration::from_secs(self.abandoned_upload_seconds),
        }
    }

    pub fn storage(&self) -> StorageConfig {
        StorageConfig {
            endpoint: self.s3_endpoint.clone().filter(|e| !e.is_empty()),
            public_endpoint: self.s3_public_endpoint.clone().filter(|e| !e.is_empty()),
            download_endpoint: self.runtime_s3_endpoint.clone().filter(|e| !e.is_empty()),
            region: self.s3_region.clone(),
            bucket: self.s3_bucket.clone(),
            prefix: self.s3_prefix.clone(),
            path_style: self.s3_path_style,
            access_key_id: self.s3_access_key_id.clone(),
            secret_access_key: self.s3_secret_access_key.clone(),
            max_attempts: 4,
            operation_timeout: Duration::from_secs(120),
        }
    }
}

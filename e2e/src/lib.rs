//! The e2e harness: connects to whatever cluster `KUBECONFIG` names (the local one
//! from `hack/cluster.sh`, k3d, kind), gives every test its own labelled temporary
//! namespace, and waits on conditions with deadlines instead of sleeping.
//!
//! Everything cluster-specific comes from the environment (see [`Settings`]); the
//! e2e tests are `#[ignore]`d so plain `cargo test` needs no cluster, and
//! `make e2e` runs them with `--ignored`.

use std::future::Future;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, PostParams};
use kube::runtime::wait::{Condition, await_condition};
use kube::{Api, Client, Resource};

pub mod app;
pub mod http;
pub mod pods;
pub mod registry;
pub mod storage;

/// Label on every namespace the tests create, so leftovers are easy to find:
/// `kubectl delete ns -l aether.dev/e2e`.
pub const E2E_LABEL: &str = "aether.dev/e2e";

/// What differs between clusters, read once from the environment.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Image with `node` on its PATH (`AETHER_NODE_IMAGE`, default `node:20-slim`).
    pub node_image: String,
    /// `AETHER_IMAGE_PULL_POLICY` (default `IfNotPresent`; the local cluster uses `Never`).
    pub image_pull_policy: String,
    pub storage: storage::StorageSettings,
}

impl Settings {
    pub fn from_env() -> anyhow::Result<Self> {
        Ok(Self {
            node_image: env_or("AETHER_NODE_IMAGE", "node:20-slim"),
            image_pull_policy: env_or("AETHER_IMAGE_PULL_POLICY", "IfNotPresent"),
            storage: storage::StorageSettings::from_env()?,
        })
    }
}

fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

/// A client for the cluster in `KUBECONFIG`, with a hint when there is none.
pub async fn client() -> anyhow::Result<Client> {
    Client::try_default().await.context(
        "no cluster to test against: run `make up` and `eval \"$(hack/cluster.sh env)\"`, or point KUBECONFIG at a cluster",
    )
}

/// Enable Aether in `ns` as a cluster admin does (config/tenant): bind the operator's
/// namespaced ClusterRole to its ServiceAccount (`AETHER_OPERATOR_NAMESPACE`, default
/// `aether-system`).
pub async fn enable_namespace(client: &Client, ns: &str) -> anyhow::Result<()> {
    let operator_ns = env_or("AETHER_OPERATOR_NAMESPACE", "aether-system");
    let binding = RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some("aether-operator".into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: "aether-operator-namespace".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "aether-operator".into(),
            namespace: Some(operator_ns),
            ..Default::default()
        }]),
    };
    let api: Api<RoleBinding> = Api::namespaced(client.clone(), ns);
    match api.create(&PostParams::default(), &binding).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).context("enabling Aether in the test namespace"),
    }
}

/// Give the person `user` the ClusterRole `role` in `ns` (a RoleBinding, as an admin
/// does), to act as them with `kubectl --as`.
pub async fn bind_user(client: &Client, ns: &str, user: &str, role: &str) -> anyhow::Result<()> {
    let binding = RoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some(format!("{role}-{}", user.split('@').next().unwrap_or(user))),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: user.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .with_context(|| format!("binding {user} to {role} in {ns}"))?;
    Ok(())
}

/// A new namespace `PREFIX-…`, labelled [`E2E_LABEL`]`=label` and enabled for Aether.
pub async fn enabled_namespace(client: &Client, prefix: &str, label: &str) -> anyhow::Result<String> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.generate_name = Some(format!("{prefix}-"));
    ns.metadata.labels = Some([(E2E_LABEL.to_string(), label.to_string())].into());
    let ns = namespaces.create(&PostParams::default(), &ns).await?;
    let name = ns.metadata.name.context("namespace without a name")?;
    enable_namespace(client, &name).await?;
    Ok(name)
}

/// Run `test` in a fresh namespace, enabled for Aether, and delete the namespace
/// afterwards, whether the test passed, failed or panicked.
pub async fn with_temp_ns<F, Fut>(prefix: &str, test: F) -> anyhow::Result<()>
where
    F: FnOnce(Client, String) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let client = client().await?;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let name = enabled_namespace(&client, &format!("e2e-{prefix}"), prefix).await?;

    // Pods cannot be admitted until the namespace's default ServiceAccount exists.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &name);
    wait_until("the default ServiceAccount", Duration::from_secs(60), || {
        let sas = sas.clone();
        async move { Ok(sas.get_opt("default").await?.map(|_| ())) }
    })
    .await?;

    let outcome = tokio::spawn(test(client, name.clone())).await;
    if std::env::var_os("AETHER_E2E_KEEP").is_none() {
        namespaces.delete(&name, &DeleteParams::background()).await?;
    }
    match outcome {
        Ok(result) => result.with_context(|| format!("in namespace {name}")),
        Err(join) => std::panic::resume_unwind(join.into_panic()),
    }
}

/// Wait until `cond` holds for the object `name`, or fail after `timeout`.
pub async fn wait_for<K>(
    api: Api<K>,
    name: &str,
    what: &str,
    timeout: Duration,
    cond: impl Condition<K>,
) -> anyhow::Result<K>
where
    K: Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
{
    match tokio::time::timeout(timeout, await_condition(api, name, cond)).await {
        Ok(Ok(Some(obj))) => Ok(obj),
        Ok(Ok(None)) => bail!("{name} was deleted while waiting for {what}"),
        Ok(Err(e)) => Err(e).with_context(|| format!("watching {name} for {what}")),
        Err(_) => bail!("timed out after {timeout:?} waiting for {name}: {what}"),
    }
}

/// Poll `check` every 250 ms until it returns `Some`, or fail after `timeout` with the
/// last error seen.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if tokio::time::Instant::now() >= deadline {
            return match last_error {
                Some(e) => Err(e.context(format!("timed out after {timeout:?} waiting for {what}"))),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            };
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

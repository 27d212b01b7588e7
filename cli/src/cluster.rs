//! The CLI's connection to Kubernetes: the kubeconfig, context and namespace chosen
//! once, and API errors turned into ones a user can act on.

use aether_crds::AetherApp;
use kube::Client;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::args::GlobalArgs;
use crate::errors::CliError;

/// The client for the chosen kubeconfig and context, and the namespace to use
/// (`-n`, else the context's, else `default`).
pub async fn connect(global: &GlobalArgs) -> Result<(Client, String), CliError> {
    let options = KubeConfigOptions {
        context: global.context.clone(),
        ..Default::default()
    };
    let config = match &global.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|e| CliError::NoKubeconfig(e.to_string()))?;
            kube::Config::from_custom_kubeconfig(kc, &options).await
        }
        None => kube::Config::from_kubeconfig(&options).await,
    }
    .map_err(|e| CliError::NoKubeconfig(e.to_string()))?;
    let namespace = global
        .namespace
        .clone()
        .unwrap_or_else(|| config.default_namespace.clone());
    let client = Client::try_from(config).map_err(|e| CliError::NoKubeconfig(e.to_string()))?;
    Ok((client, namespace))
}

/// `verb` on `resource` (plural, e.g. `aetherapps`) in `namespace` failed.
pub fn kube_error(e: kube::Error, verb: &str, resource: &str, namespace: &str) -> CliError {
    match e {
        kube::Error::Api(s) if s.code == 403 => CliError::Forbidden {
            verb: verb.into(),
            resource: resource.into(),
            namespace: namespace.into(),
        },
        e => CliError::Kube {
            what: format!("{verb} {resource} in {namespace}"),
            source: e,
        },
    }
}

/// The AetherApp `name`; a missing one is an error naming app and namespace.
pub async fn get_app(api: &kube::Api<AetherApp>, name: &str) -> Result<AetherApp, CliError> {
    let namespace = api.namespace().unwrap_or("default");
    api.get_opt(name)
        .await
        .map_err(|e| kube_error(e, "get", "aetherapps", namespace))?
        .ok_or_else(|| CliError::AppNotFound {
            app: name.into(),
            namespace: namespace.into(),
        })
}

/// The label selector of an app's pods: what the operator publishes for the scale
/// subresource, else the labels it puts on them (`app.kubernetes.io/{instance,name}`).
pub fn pod_selector(app: &AetherApp) -> String {
    let name = kube::ResourceExt::name_any(app);
    app.status
        .as_ref()
        .and_then(|s| s.selector.clone())
        .unwrap_or_else(|| format!("app.kubernetes.io/instance={name},app.kubernetes.io/name={name}"))
}

/// Watch `name` until `done` returns a value (no polling: each change arrives as it
/// happens). `what` names the wait in the timeout error.
pub async fn wait_for<K, T>(
    api: &kube::Api<K>,
    name: &str,
    timeout: std::time::Duration,
    what: &str,
    mut done: impl FnMut(&K) -> Option<T>,
) -> Result<T, CliError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
    K::DynamicType: Default,
{
    use futures::StreamExt as _;
    use kube::runtime::watcher::Error as WatchError;
    let resource = K::plural(&K::DynamicType::default()).to_string();
    let namespace = api.namespace().unwrap_or("default").to_string();
    let watch = async {
        let mut stream = std::pin::pin!(kube::runtime::watcher::watch_object(api.clone(), name));
        while let Some(item) = stream.next().await {
            match item {
                Ok(Some(object)) => {
                    if let Some(value) = done(&object) {
                        return Ok(value);
                    }
                }
                Ok(None) => {}
                Err(WatchError::InitialListFailed(e) | WatchError::WatchStartFailed(e)) => {
                    return Err(kube_error(e, "watch", &resource, &namespace));
                }
                // The watcher re-lists after transient errors; do not spin meanwhile.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
            }
        }
        Err(CliError::Timeout {
            what: what.into(),
            seconds: 0,
        })
    };
    tokio::time::timeout(timeout, watch).await.unwrap_or_else(|_| {
        Err(CliError::Timeout {
            what: what.into(),
            seconds: timeout.as_secs(),
        })
    })
}

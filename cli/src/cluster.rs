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
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| CliError::NoKubeconfig(e.to_string()))?
        // Retry needs a service it can clone: the buffer is one.
        .with_layer(&tower::buffer::BufferLayer::new(64))
        .with_layer(&tower::retry::RetryLayer::new(Reconnect::new(global.quiet)))
        .build();
    Ok((client, namespace))
}

/// How long a command that has reached the API server waits for it when it stops
/// answering: a restart of the API server (or of the machine behind it) does not
/// end a push half-way.
const RECONNECT_FOR: std::time::Duration = std::time::Duration::from_secs(120);

/// Sends a request again when the connection to the API server could not be made
/// (nothing was sent, so any request is safe to repeat), for up to
/// [`RECONNECT_FOR`], but only once this command has reached the API server: a
/// wrong or unreachable cluster still fails at once. Statuses (429, 503) are kube's
/// own retry policy's, inside.
#[derive(Clone)]
struct Reconnect {
    reached: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Said once per outage.
    warned: std::sync::Arc<std::sync::atomic::AtomicBool>,
    quiet: bool,
    /// This request's: when it gives up, and the next pause.
    until: Option<tokio::time::Instant>,
    delay: std::time::Duration,
}

impl Reconnect {
    fn new(quiet: bool) -> Self {
        Self {
            reached: Default::default(),
            warned: Default::default(),
            quiet,
            until: None,
            delay: std::time::Duration::from_millis(250),
        }
    }
}

/// The connection was never made (refused, unreachable, timed out connecting).
fn not_connected(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(e);
    while let Some(e) = source {
        if e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|e| e.is_connect())
        {
            return true;
        }
        source = e.source();
    }
    false
}

impl<Res> tower::retry::Policy<http::Request<kube::client::Body>, http::Response<Res>, tower::BoxError>
    for Reconnect
{
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut http::Request<kube::client::Body>,
        result: &mut Result<http::Response<Res>, tower::BoxError>,
    ) -> Option<Self::Future> {
        use std::sync::atomic::Ordering;
        let e = match result {
            Ok(_) => {
                self.reached.store(true, Ordering::Relaxed);
                self.warned.store(false, Ordering::Relaxed);
                return None;
            }
            Err(e) => e,
        };
        if !self.reached.load(Ordering::Relaxed) || !not_connected(e.as_ref()) {
            return None;
        }
        let now = tokio::time::Instant::now();
        let until = *self.until.get_or_insert(now + RECONNECT_FOR);
        if now + self.delay > until {
            return None;
        }
        if !self.quiet && !self.warned.swap(true, Ordering::Relaxed) {
            eprintln!(
                "warning: the API server stopped answering; trying again for up to {} s",
                RECONNECT_FOR.as_secs()
            );
        }
        let pause = tokio::time::sleep(self.delay);
        self.delay = (self.delay * 2).min(std::time::Duration::from_secs(2));
        Some(pause)
    }

    fn clone_request(
        &mut self,
        req: &http::Request<kube::client::Body>,
    ) -> Option<http::Request<kube::client::Body>> {
        let mut copy = http::Request::new(req.body().try_clone()?);
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        Some(copy)
    }
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
                // Refused (403, 404...): no use waiting.
                Err(WatchError::InitialListFailed(e) | WatchError::WatchStartFailed(e)) if matches!(&e, kube::Error::Api(s) if s.code < 500 && s.code != 429) =>
                {
                    return Err(kube_error(e, "watch", &resource, &namespace));
                }
                // The API server is away or overloaded (the client has already waited
                // for it to come back; see Reconnect), or a watch expired: the
                // watcher lists again. Until the deadline, without spinning.
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(500)).await,
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

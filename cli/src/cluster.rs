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
/// (refused, reset, unreachable, timed out: nothing was sent, so any request is safe
/// to repeat), or when a read or an update (GET, PUT, PATCH: the CLI's patches are
/// merges and applies, the same when repeated) lost its connection before the
/// answer (a server shutting down). Only once this command has reached the API
/// server (a wrong or unreachable cluster still fails at once), and for one
/// [`RECONNECT_FOR`] per outage, shared by all of the command's requests. Statuses
/// (429, 503) are kube's own retry policy's, inside.
#[derive(Clone)]
struct Reconnect {
    shared: std::sync::Arc<std::sync::Mutex<Outage>>,
    quiet: bool,
    /// This request's next pause.
    delay: std::time::Duration,
}

#[derive(Default)]
struct Outage {
    reached: bool,
    /// When requests started failing, if they are failing.
    since: Option<tokio::time::Instant>,
    /// Said so (once the outage lasted a moment: one cut connection is not news).
    warned: bool,
}

impl Reconnect {
    fn new(quiet: bool) -> Self {
        Self {
            shared: Default::default(),
            quiet,
            delay: std::time::Duration::from_millis(250),
        }
    }
}

/// The connection was never made, or broke: the API server is not there (now).
fn not_connected(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::*;
    let connect = caused_by(e, |e| {
        e.downcast_ref::<hyper_util::client::legacy::Error>()
            .is_some_and(|e| e.is_connect())
    });
    // Not a certificate, DNS or proxy error: those do not go away by waiting.
    connect
        && caused_by(e, |e| {
            e.downcast_ref::<std::io::Error>().is_some_and(|e| {
                matches!(
                    e.kind(),
                    ConnectionRefused
                        | ConnectionReset
                        | ConnectionAborted
                        | TimedOut
                        | HostUnreachable
                        | NetworkUnreachable
                        | NotConnected
                )
            })
        })
}

/// The connection closed before the answer came: the request may have been done.
fn cut_off(e: &(dyn std::error::Error + 'static)) -> bool {
    caused_by(e, |e| {
        e.downcast_ref::<hyper::Error>()
            .is_some_and(|e| e.is_incomplete_message() || e.is_canceled())
    })
}

fn caused_by(
    e: &(dyn std::error::Error + 'static),
    is: impl Fn(&(dyn std::error::Error + 'static)) -> bool,
) -> bool {
    let mut source = Some(e);
    while let Some(e) = source {
        if is(e) {
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
        req: &mut http::Request<kube::client::Body>,
        result: &mut Result<http::Response<Res>, tower::BoxError>,
    ) -> Option<Self::Future> {
        let mut outage = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        let e = match result {
            // (A 5xx may come from a proxy in front of an API server still away.)
            Ok(response) if response.status().is_server_error() => return None,
            Ok(_) => {
                outage.reached = true;
                outage.since = None;
                if std::mem::take(&mut outage.warned) && !self.quiet {
                    eprintln!("the API server answers again");
                }
                return None;
            }
            Err(e) => e,
        };
        let repeatable = matches!(
            *req.method(),
            http::Method::GET | http::Method::PUT | http::Method::PATCH
        );
        let resend = not_connected(e.as_ref()) || (repeatable && cut_off(e.as_ref()));
        if !outage.reached || !resend {
            return None;
        }
        let now = tokio::time::Instant::now();
        let since = *outage.since.get_or_insert(now);
        if now >= since + std::time::Duration::from_secs(2) && !outage.warned {
            outage.warned = true;
            if !self.quiet {
                eprintln!(
                    "warning: the API server stopped answering; trying again for up to {} s",
                    RECONNECT_FOR.as_secs()
                );
            }
        }
        if now + self.delay > since + RECONNECT_FOR {
            return None;
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
        *copy.extensions_mut() = req.extensions().clone();
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

/// How often [`wait_for`] asks again about the object it last saw.
const RECHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// Watch `name` until `done` returns a value (no polling: each change arrives as it
/// happens, and the object last seen is asked about again every [`RECHECK`], for a
/// `done` that depends on time). `what` names the wait in the timeout error.
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
        let mut seen = false;
        // `done` may depend on time too (how long a verdict has stood): the object
        // last seen is asked again now and then, not only when it changes.
        let mut last: Option<K> = None;
        let mut again = tokio::time::interval(RECHECK);
        again.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let item = tokio::select! {
                item = stream.next() => item,
                _ = again.tick() => {
                    if let Some(value) = last.as_ref().and_then(&mut done) {
                        return Ok(value);
                    }
                    continue;
                }
            };
            let Some(item) = item else { break };
            match item {
                Ok(Some(object)) => {
                    seen = true;
                    if let Some(value) = done(&object) {
                        return Ok(value);
                    }
                    last = Some(object);
                }
                // Gone after it was there: nothing more will come.
                Ok(None) if seen => {
                    return Err(CliError::Deleted {
                        resource: resource.clone(),
                        name: name.into(),
                        namespace: namespace.clone(),
                        what: what.into(),
                    });
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

//! The AetherApp controller: dereference → validate → build → apply → update_status.
//!
//! Only `dereference`, `apply` and the status patch touch the API; [`validate`],
//! [`build`] and [`status`] are pure and tested from fixtures. An invalid release
//! (missing artifact, another app's artifact, a signature the policy refuses) changes
//! nothing that runs: the app reports `Stalled` with the reason and the previous
//! Deployment keeps serving.

pub mod build;
pub mod downloads;
pub mod gateway;
pub mod hot;
pub mod network_policy;
pub mod observed;
pub mod ownership;
pub mod policy;
pub mod preview;
pub mod releases;
pub mod route;
pub mod status;
pub mod validate;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aether_artifact::signature::{PolicyRefusal, Verdict};
use aether_crds::{
    AetherApp, AetherAppStatus, AetherArtifact, AetherPolicy, AetherRelease, KeysKind, RELEASE_APP_LABEL,
    VerifyMode,
};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{debug, info, instrument, warn};

use self::build::{Children, PodConfig};
use self::policy::Floor;
use self::validate::{Invalid, TrustedKeys, Validated};
use crate::events;
use crate::metrics::{ControllerLabels, Metrics, PhaseLabels};

const CONTROLLER: &str = "aetherapp";

/// Operator settings for apps.
#[derive(Debug, Clone)]
pub struct AppConfig {
    pub pod: PodConfig,
    /// Namespace of the operator: default trusted keys, Lease.
    pub operator_namespace: String,
    /// Lifetime of the download URLs in each app's fetch Secret.
    pub download_url_ttl: Duration,
    /// ConfigMap there whose entries are trusted public keys (PEM).
    pub trusted_keys_configmap: String,
    pub url_mode: UrlMode,
    /// Releases kept per app besides the current one (older AetherReleases are
    /// deleted, and with them the hold on their artifacts).
    pub keep_releases: usize,
    /// Each app's NetworkPolicy, when a cluster admin asked for them.
    pub network_policy: Option<network_policy::Config>,
    /// Public hosts: the ingress class, the Gateway and the certificate issuer.
    pub route: route::Config,
}

/// What `status.url` holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UrlMode {
    /// `http://<name>.<namespace>.svc`, reachable inside the cluster.
    ServiceDns,
    /// `http://<cluster IP>`, for clusters whose host routes the service network
    /// (the local cluster).
    ClusterIp,
}

pub struct Context {
    pub client: kube::Client,
    /// Apps are built only in namespaces a cluster admin enabled.
    pub enabled: Arc<crate::enabled::Enablement>,
    /// Nor in namespaces being deleted.
    pub namespaces: crate::namespaces::Namespaces,
    /// Signs the pods' download URLs (see [`downloads`]).
    pub storage: aether_storage::Storage,
    /// The AetherPolicies, as watched.
    pub policies: crate::policies::Policies,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub config: AppConfig,
    /// Retries of apps whose reconcile failed, per app.
    pub backoff: crate::backoff::Backoff,
    /// Reconciles take turns, shared fairly between namespaces.
    pub turns: Arc<crate::turns::Turns>,
    /// Every AetherApp, as the controller watches them, every Ingress and, wherever
    /// Gateway API is installed, every HTTPRoute: who holds which host.
    pub apps: kube::runtime::reflector::Store<AetherApp>,
    pub ingresses: kube::runtime::reflector::Store<Ingress>,
    pub http_routes: kube::runtime::reflector::Store<gateway::HttpRoute>,
    /// Every AetherArtifact, as the artifact controller watches them, and whether
    /// they are all listed yet (its store's own wait takes one waiter only: see
    /// crate::readiness).
    pub artifacts: kube::runtime::reflector::Store<AetherArtifact>,
    pub artifacts_ready: crate::readiness::Readiness,
    /// The apps' pods, as watched (see [`status::slim_pod`]), and whether they are
    /// all listed yet.
    pub pods: kube::runtime::reflector::Store<Pod>,
    pub pods_ready: crate::readiness::Readiness,
    /// Per app, the resourceVersion its last status write made (see `patch_status`);
    /// an app's entry goes with the app.
    pub written: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>>,
    /// The children, their ReplicaSets and the releases, as last watched.
    pub children: observed::Children,
    /// The default trusted keys (`trusted_keys_configmap` in the operator's
    /// namespace), watched.
    pub default_keys: observed::Watched<ConfigMap>,
    /// What was last applied to each child (see [`observed`]).
    pub applied: Arc<observed::Applied>,
    /// Each app's fetch Secret as last written or read, for a short while.
    pub fetch_secrets: Arc<observed::FetchSecrets>,
    /// The apps whose legacy credentials Secret was looked for since the operator
    /// started (see [`prune_legacy_secret`]), forgotten with the app.
    pub legacy_checked: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    /// Apps to look at again now (one that lost a host to another).
    pub nudge: futures::channel::mpsc::UnboundedSender<kube::runtime::reflector::ObjectRef<AetherApp>>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("config", &self.config).finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {what}: {source}")]
    Dereference {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("applying {what}: {source}")]
    Apply {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("updating status: {0}")]
    UpdateStatus(#[source] kube::Error),
    #[error("signing download URLs: {0}")]
    Presign(#[source] aether_storage::StorageError),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Dereference { .. } => "Dereference",
            Error::Apply { .. } => "Apply",
            Error::UpdateStatus(_) => "UpdateStatus",
            Error::Presign(_) => "Presign",
        }
    }
}

fn dereference_error(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
    let what = what.into();
    move |source| Error::Dereference { what, source }
}

/// What the reconcile reads before deciding anything.
struct Dereferenced {
    artifact: Option<AetherArtifact>,
    /// The cluster admin's floor for the app's namespace.
    floor: Result<Floor, Invalid>,
    trusted: Result<TrustedKeys, Invalid>,
    /// Whether a cluster admin let the operator work in the namespace. The app's
    /// fetch Secret and Deployment are read only once they are needed (see
    /// [`read_downloads`], [`read_running`]): an app waiting for its artifact
    /// reads neither, most often.
    enabled: Result<(), Invalid>,
    /// The app's releases (those it owns).
    releases: Vec<AetherRelease>,
    /// `kind/name` → resourceVersion of the Secrets and ConfigMaps its environment
    /// reads (see [`build::config_sources`]).
    config_versions: BTreeMap<String, String>,
}

#[instrument(skip_all, fields(app = %app.name_any(), ns = app.namespace().unwrap_or_default()))]
pub async fn reconcile(app: Arc<AetherApp>, ctx: Arc<Context>) -> Result<Action, Error> {
    if ctx.namespaces.going(app.meta()) {
        return Ok(going());
    }
    // (None: the operator is shutting down; the next one looks at the app.)
    let Some(_turn) = ctx
        .turns
        .take_for(&app.namespace().unwrap_or_default(), &app.name_any())
        .await
    else {
        return Ok(Action::await_change());
    };
    // As it is now, not as it was when it became due: it may have waited.
    let Some(app) = ctx
        .apps
        .get(&kube::runtime::reflector::ObjectRef::from_obj(&*app))
    else {
        return Ok(Action::await_change());
    };
    // (Again: its namespace may have begun to go while it waited.)
    if ctx.namespaces.going(app.meta()) {
        return Ok(going());
    }
    let started = Instant::now();
    let labels = ControllerLabels {
        controller: CONTROLLER,
    };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    // Boxed here, once it runs: a reconcile waiting for its turn holds only the
    // pointer (a thousand of them wait after a restart).
    let result = Box::pin(reconcile_inner(&app, &ctx)).await;
    if result.is_ok() {
        ctx.backoff.succeeded(&app_key(&app));
    }
    ctx.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// An app whose namespace is being deleted is left alone: it goes, with everything
/// in it (see crate::namespaces). Looked at again later all the same, in case the
/// watch of namespaces was wrong.
fn going() -> Action {
    debug!("its namespace is being deleted: left alone");
    Action::requeue(crate::namespaces::LOOK_AGAIN)
}

async fn reconcile_inner(app: &AetherApp, ctx: &Context) -> Result<Action, Error> {
    let began_at = Timestamp::now();
    let ns = app.namespace().unwrap_or_default();
    let generation = app.metadata.generation;
    let old = app.status.clone().unwrap_or_default();
    if preview::remaining(app, Timestamp::now()) == Some(Duration::ZERO) {
        return expire_preview(ctx, app, &ns).await;
    }
    if app.spec.suspend {
        patch_status(ctx, app, &status::suspended(&old, generation)).await?;
        return Ok(match preview::remaining(app, Timestamp::now()) {
            Some(_) => Action::requeue(preview::bound(app, Duration::MAX, Timestamp::now())),
            None => Action::await_change(),
        });
    }

    let mut d = dereference(ctx, app, &ns).await?;
    // With spec.autoRollback, a spec whose release failed runs the last release that
    // served instead, from here on (see [`releases::automatic`]).
    let mut fallback = releases::automatic(app, &d.releases).map(|f| (f.failed.clone(), f.to.clone()));
    let mut fallen_artifact = None;
    if let Some((_, to)) = &fallback {
        let artifacts: Api<AetherArtifact> = Api::namespaced(ctx.client.clone(), &ns);
        let artifact = artifacts
            .get_opt(&to.spec.artifact.name)
            .await
            .map_err(dereference_error("the artifact of the release fallen back to"))?;
        // Only the very bytes the release ran: an artifact of that name made since
        // (deleted and pushed again) is not it.
        match artifact.filter(|a| a.spec.digest == to.spec.artifact.digest) {
            Some(artifact) => fallen_artifact = Some(artifact),
            None => {
                warn!(release = %to.name_any(), "its artifact is gone or another now: not going back to it");
                fallback = None;
            }
        }
    }
    let fallen;
    let app = match (&fallback, fallen_artifact) {
        (Some((_, to)), Some(artifact)) => {
            fallen = releases::fallen_back(app, to);
            // It reads no Secret or ConfigMap the spec does not (see releases::last_good).
            let sources = build::config_sources(&fallen);
            d.config_versions.retain(|key, _| {
                sources
                    .iter()
                    .any(|(kind, name)| *key == format!("{kind}/{name}"))
            });
            d.artifact = Some(artifact);
            &fallen
        }
        _ => app,
    };
    // Who holds the hosts the app asks for; an app that lost one of them to this one
    // looks again, and lets it go.
    // (Apps without hosts, most of them, skip the look through every app.)
    let claims = if app.spec.hosts.is_empty() {
        route::Claims::default()
    } else {
        let ingresses = ctx.ingresses.state();
        let http_routes = ctx.http_routes.state();
        let routes = ingresses
            .iter()
            .map(|i| route::Routing::from(i.as_ref()))
            .chain(http_routes.iter().map(|r| route::Routing::from(r.as_ref())));
        route::claims(
            app,
            ctx.apps.state().iter().map(AsRef::as_ref),
            routes,
            Timestamp::now(),
        )
    };
    for outranked in &claims.outranked {
        let _ = ctx.nudge.unbounded_send(outranked.clone());
    }
    // Whatever becomes of this release, the pods of every release still running may
    // restart: their download URLs are kept fresh.
    let serving = serving_layers(ctx, app, &ns, d.artifact.as_ref()).await?;
    let hosts_floor = d.floor.as_ref().ok().cloned();
    let enabled = d.enabled.is_ok();
    let valid = d.enabled.and_then(|()| {
        let floor = d.floor?;
        d.trusted
            .and_then(|trusted| validate::validate(app, d.artifact.as_ref(), &trusted, &floor))
            .and_then(|release| {
                let refusal = claims
                    .refusal(&ns)
                    .or_else(|| route::unservable(app, &ctx.config.route));
                refusal.map_or(Ok(release), Err)
            })
    });
    // The children are written only where the app may write (see [`ownership`]).
    let ttl = ctx.config.download_url_ttl;
    let mut renew_in = None;
    // What the way to a valid release read before it was refused: not read again.
    let mut read_secret = None;
    let mut read_deployment = None;
    let valid = match valid {
        Ok(release) => {
            // Everything the release is applied over, read at once: for a new app each
            // one is a request (the caches hold none), and one after the other they
            // were most of its deploy's time.
            let (downloads, running, children) = futures::join!(
                read_downloads(ctx, app, &ns),
                read_running(ctx, app, &ns),
                read_children(ctx, app, &ns),
            );
            let downloads = downloads?;
            read_secret = Some(downloads.clone());
            match downloads {
                Ok(secret) => Ok((release, secret, running?, children?)),
                // The namespace is not enabled (any more): what was read besides is
                // not used, nor its errors (a Deployment that could not be read is
                // read again where the refusal needs it).
                Err(invalid) => {
                    read_deployment = running.ok();
                    Err(invalid)
                }
            }
        }
        Err(invalid) => Err(invalid),
    };
    let valid = match valid {
        Ok((release, secret, running, read)) => {
            let wanted = [release.layers.clone(), serving.clone()].concat();
            let mut urls = download_urls(ctx, app, &ns, secret.as_ref(), &wanted, began_at).await?;
            renew_in = Some(downloads::renew_in(&urls, &wanted, began_at, ttl));
            if let Some(entry) = hot::release_entry(app, &release) {
                urls.insert(hot::RELEASE_KEY.into(), entry);
            }
            if let Some(entry) = hot::policy_entry(app, Some(&release)) {
                urls.insert(hot::POLICY_KEY.into(), entry);
            }
            let template = hot::template_release(app, &release, running.as_ref());
            let children = build::build(
                app,
                &template,
                &urls,
                &d.config_versions,
                &ctx.config.pod,
                running.as_ref(),
            );
            match claim_children(app, &children, read, secret, running.as_ref()) {
                Ok(current) => Ok((release, children, current, running)),
                Err(invalid) => {
                    read_deployment = Some(running);
                    Err(invalid)
                }
            }
        }
        Err(invalid) => Err(invalid),
    };
    let (release, children, current, running) = match valid {
        Ok(valid) => valid,
        Err(invalid) => {
            // Nothing new is applied, but the running release's URLs are renewed in
            // its own Secret (only if the app owns it).
            let downloads = match read_secret {
                Some(read) => read,
                None if enabled && !serving.is_empty() => read_downloads(ctx, app, &ns).await?,
                None => Ok(None),
            };
            // The Secret may not be read: the admin's RoleBinding was taken back since
            // the enablement was read. That is what the app says, as it comes first.
            let invalid = match &downloads {
                Err(not_enabled) => not_enabled.clone(),
                Ok(_) => invalid,
            };
            let owned = downloads
                .ok()
                .flatten()
                .filter(|s| ownership::owned_by(&s.metadata, &app.uid().unwrap_or_default()));
            if let Some(secret) = owned.filter(|_| !serving.is_empty()) {
                let current = secret_strings(&secret);
                // A dev-hot app's new pods keep starting on the release they would have
                // (whose code its templates do not name), but its pods take no update
                // until the app is valid again.
                let release = current.get(hot::RELEASE_KEY);
                let wanted = [
                    serving.clone(),
                    release.map(|r| hot::release_layers(r)).unwrap_or_default(),
                ]
                .concat();
                let mut urls = download_urls(ctx, app, &ns, Some(&secret), &wanted, began_at).await?;
                if let Some(entry) = release {
                    urls.insert(hot::RELEASE_KEY.into(), entry.clone());
                }
                if let Some(entry) = hot::policy_entry(app, None) {
                    urls.insert(hot::POLICY_KEY.into(), entry);
                }
                if urls != current {
                    let written =
                        apply_one(ctx, &ns, &build::downloads_secret(app, &urls), Some(&secret)).await?;
                    ctx.fetch_secrets
                        .applied(Some(&secret), &written, std::time::Instant::now());
                }
                renew_in = Some(downloads::renew_in(&urls, &wanted, began_at, ttl));
            }
            // Counts of a Deployment of that name the app does not own are not its own.
            // (An app that never ran has none the operator labelled, and is not read.)
            let uid = app.uid().unwrap_or_default();
            let running = match read_deployment {
                Some(read) => read,
                None if old.replicas == 0 && ctx.children.deployments.none_of_ours(&ns, &app.name_any()) => {
                    None
                }
                None => read_running(ctx, app, &ns).await?,
            };
            let running = running
                .as_ref()
                .filter(|r| ownership::owned_by(&r.metadata, &uid));
            let mut new = status::invalid(&old, generation, &invalid, running);
            // The hosts it held and now may not (another holds it, a policy no
            // longer allows it, its spec no longer asks) are no longer routed to
            // it; the rest stay as they were.
            let kept: Vec<aether_crds::Host> = claims
                .held
                .iter()
                .filter(|(h, _)| old.hosts.iter().any(|o| o.name == h.name))
                .filter(|(h, _)| hosts_floor.as_ref().is_none_or(|f| f.allows_host(&h.name)))
                .map(|(h, _)| h.clone())
                .collect();
            // (Or a route is left from a Gateway unset since.)
            if kept.len() < old.hosts.len()
                || (ctx.config.route.gateway.is_none() && has_http_route(ctx, app, &ns))
            {
                // Hosts must not stay routed to an app whose status lets them go: a
                // route that cannot be rewritten fails the reconcile (retried).
                reconcile_routes(ctx, app, &ns, &kept, RouteErrors::Fail).await?;
                let dropped_url = new
                    .url
                    .as_ref()
                    .is_some_and(|u| new.hosts.iter().any(|h| &h.url == u));
                new.hosts.retain(|h| kept.iter().any(|k| k.name == h.name));
                if dropped_url {
                    // The in-cluster URL comes back with the app's next valid look.
                    new.url = new.hosts.first().map(|h| h.url.clone());
                }
            }
            let type_ = if invalid.waiting {
                EventType::Normal
            } else {
                EventType::Warning
            };
            announce(ctx, app, &old, &new, type_).await;
            patch_status(ctx, app, &new).await?;
            info!(reason = invalid.reason, "release not applied");
            // An artifact's every change wakes its app (the watch in lib.rs): waiting
            // for one needs no quick polling, which 1000 waiting apps would make a
            // flood. Other waits (an enablement, a Secret) are polled.
            let next = match (invalid.waiting, invalid.reason) {
                (true, aether_crds::condition::app::AWAITING_ARTIFACT) => Duration::from_secs(30),
                (true, _) => Duration::from_secs(2),
                // Whether the host's holder let it go is seen on a look (its
                // deletion wakes nobody).
                (false, aether_crds::condition::app::HOST_CLAIMED) => Duration::from_secs(30),
                (false, _) => Duration::from_secs(300),
            };
            let next = preview::bound(app, renew_in.map_or(next, |r| r.min(next)), Timestamp::now());
            return Ok(Action::requeue(next));
        }
    };

    // The policy before the pods it fences: if it cannot be applied, neither are they.
    let policy = ctx
        .config
        .network_policy
        .as_ref()
        .map(|c| network_policy::build(app, c));
    let absent_if_forbidden = true;
    let policy_name = network_policy::name(&app.name_any());
    // The policy before the pods it fences, and the URLs before the pods that read
    // them: those and the rest at once, then the Deployment.
    let (_, _, _, service) = futures::try_join!(
        reconcile_optional(
            ctx,
            app,
            &ns,
            (&policy_name, policy),
            (
                // Read to claim it when asked for (else nothing was claimed or read).
                ctx.config
                    .network_policy
                    .as_ref()
                    .map(|_| current.network_policy.clone()),
                Some(&ctx.children.network_policies),
            ),
            "the app's pods are not isolated",
            absent_if_forbidden,
        ),
        apply_one(
            ctx,
            &ns,
            &children.service_account,
            current.service_account.as_ref()
        ),
        // (Remembered as soon as it is written, whatever becomes of the others.)
        async {
            let before = current.downloads.as_ref();
            let written = apply_one(ctx, &ns, &children.downloads, before).await?;
            ctx.fetch_secrets
                .applied(before, &written, std::time::Instant::now());
            Ok(written)
        },
        apply_one(ctx, &ns, &children.service, current.service.as_ref()),
    )?;
    let deployment = apply_one(ctx, &ns, &children.deployment, running.as_ref()).await?;
    reconcile_optional(
        ctx,
        app,
        &ns,
        (&app.name_any(), build::autoscaler(app)),
        (None, Some(&ctx.children.autoscalers)),
        "spec.autoscaling is not applied",
        false,
    )
    .await?;
    let held: Vec<aether_crds::Host> = claims.held.iter().map(|(h, _)| h.clone()).collect();
    // An app that never had hosts costs no request here (most apps).
    let has_ingress = ctx
        .ingresses
        .get(&kube::runtime::reflector::ObjectRef::new(&app.name_any()).within(&ns))
        .is_some()
        || has_http_route(ctx, app, &ns);
    let routes = if held.is_empty() && old.hosts.is_empty() && !has_ingress {
        None
    } else {
        reconcile_routes(ctx, app, &ns, &held, RouteErrors::InStatus).await?
    };
    let applied_at = Timestamp::now();
    let selector = build::selector_string(&app.name_any());
    let mut pods = app_pods(ctx, app, &ns, &selector).await?;
    let stale = status::stale_fetch_failures(&pods, &release.digest.to_string(), release.verified_at);
    if !stale.is_empty() {
        replace_pods(ctx, &ns, &stale).await?;
        pods.retain(|p| p.metadata.name.as_ref().is_none_or(|n| !stale.contains(n)));
    }
    let url = url(ctx.config.url_mode, &app.name_any(), &ns, &service);
    let rollout = status::rollout(&deployment, &pods, &release.digest.to_string());
    let observed = status::Observed {
        deployment: &deployment,
        rollout: rollout.clone(),
        url,
        selector,
        began_at,
        applied_at,
    };
    let mut new = status::applied(&old, generation, &release, &observed, Timestamp::now());
    new.hosts = routes
        .map(|seen| route::status(app, &claims, &ctx.config.route, &seen))
        .unwrap_or_default();
    if let Some(host) = new.hosts.first() {
        new.url = Some(host.url.clone());
    }
    let fell_back = fallback.as_ref().map(|(failed, to)| releases::FellBack {
        failed: failed.spec.version,
        to: to.spec.version,
    });
    let content = releases::content(app, &release);
    record_releases(ctx, app, &ns, content, &d.releases, (&rollout, fell_back)).await?;
    // The rollout failed and the app may go back: it does on the next look.
    let falls_back = fallback.is_none()
        && matches!(rollout, status::Rollout::Failed { .. })
        && releases::can_fall_back(app, &d.releases);
    let new = match &fallback {
        Some((failed, to)) => status::fell_back(new, generation, failed, to),
        None if falls_back => status::falling_back(new, generation),
        None => new,
    };
    record_phases(&ctx.metrics, &old, &new);
    warn_if_unverified(ctx, app, &old, &release).await;
    announce(ctx, app, &old, &new, EventType::Normal).await;
    patch_status(ctx, app, &new).await?;

    // The rollout was judged once, into the status: its conditions say what comes next.
    let condition = |t: &str| crate::conditions::is_true(&new.conditions, t);
    if condition(aether_crds::condition::READY) {
        // Only once no pod of an older template (which read it) can start again.
        prune_legacy_secret(ctx, app, &ns).await?;
    }
    let already_falling_back = aether_crds::condition::find(&old.conditions, aether_crds::condition::READY)
        .is_some_and(|c| c.reason == aether_crds::condition::app::ROLLING_BACK);
    // Certificates and Gateways are not watched (an app's HTTPRoute is): their
    // progress is seen on a look.
    let hosts_waiting = new
        .hosts
        .iter()
        .any(|h| aether_crds::condition::host::waiting(&h.certificate, h.route.as_deref()));
    let next = if falls_back && !already_falling_back {
        // The release is now Failed: the next look goes back (once soon; should it
        // not, as a Stalled app after that).
        Duration::from_secs(1)
    } else if falls_back {
        Duration::from_secs(10)
    } else if condition(aether_crds::condition::READY) && hosts_waiting {
        Duration::from_secs(30)
    } else if condition(aether_crds::condition::READY) && !build::config_sources(app).is_empty() {
        // Secrets and ConfigMaps are not watched (that would need reading every one
        // in the cluster): an edit of one the app reads is seen on this look.
        Duration::from_secs(60)
    } else if condition(aether_crds::condition::READY) {
        Duration::from_secs(300)
    } else if condition(aether_crds::condition::STALLED) {
        Duration::from_secs(10)
    } else if hosts_waiting {
        Duration::from_secs(5)
    } else {
        // The rollout's progress wakes the app (its Deployment's status, a pod's
        // failure): this look is only in case a watch missed one.
        Duration::from_secs(30)
    };
    // And in time to renew the download URLs, and to delete an expired preview.
    let next = renew_in.map_or(next, |r| r.min(next));
    Ok(Action::requeue(preview::bound(app, next, Timestamp::now())))
}

/// Delete the app, a preview whose time is up (its children go with it by owner
/// references), then the artifacts only it ran. Only the version read: a push that
/// extended it since keeps it.
async fn expire_preview(ctx: &Context, app: &AetherApp, ns: &str) -> Result<Action, Error> {
    let name = app.name_any();
    let apps: Api<AetherApp> = Api::namespaced(ctx.client.clone(), ns);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: app.uid(),
            resource_version: app.resource_version(),
        }),
        ..Default::default()
    };
    match apps.delete(&name, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => return Ok(Action::await_change()),
        // Changed since (pushed again): the next look sees the new expiry.
        Err(kube::Error::Api(e)) if e.code == 409 => return Ok(Action::requeue(Duration::from_secs(1))),
        Err(source) => {
            return Err(Error::Apply {
                what: format!("deleting the expired preview {ns}/{name}"),
                source,
            });
        }
    }
    let expired = app
        .spec
        .preview
        .as_ref()
        .map(|p| p.expires_at.0.to_string())
        .unwrap_or_default();
    info!(expired, "preview expired: deleted");
    events::publish(
        &ctx.recorder,
        &app.object_ref(&()),
        EventType::Normal,
        "PreviewExpired",
        &format!("the preview expired at {expired}: deleted, with its objects and the artifacts only it ran"),
    )
    .await;
    let artifacts: Api<AetherArtifact> = Api::namespaced(ctx.client.clone(), ns);
    let listed = artifacts
        .list(&ListParams::default())
        .await
        .map_err(dereference_error("the namespace's artifacts"))?
        .items;
    // Read afresh, not from the cache: an artifact another app took up just now stays.
    let apps = apps
        .list(&ListParams::default())
        .await
        .map_err(dereference_error("the namespace's apps"))?
        .items;
    let others: Vec<&AetherApp> = apps.iter().filter(|a| a.uid() != app.uid()).collect();
    let releases = Api::<AetherRelease>::namespaced(ctx.client.clone(), ns)
        .list(&ListParams::default())
        .await
        .map_err(dereference_error("the namespace's releases"))?
        .items;
    let expired_at = app
        .spec
        .preview
        .as_ref()
        .map_or_else(Timestamp::now, |p| p.expires_at.0);
    for artifact in preview::artifacts_only_it_ran((&name, expired_at), &listed, &others, &releases) {
        match artifacts.delete(&artifact, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => {
                warn!(%artifact, error = %e, "could not delete an expired preview's artifact; retention will")
            }
        }
    }
    Ok(Action::await_change())
}

/// The fetch Secret's data: what [`downloads::plan`] keeps of the Secret as it is
/// (only if the app owns it: another object's data is never copied), plus new URLs
/// for what it asks to sign.
async fn download_urls(
    ctx: &Context,
    app: &AetherApp,
    ns: &str,
    secret: Option<&Secret>,
    layers: &[aether_artifact::Digest],
    now: Timestamp,
) -> Result<BTreeMap<String, String>, Error> {
    let uid = app.uid().unwrap_or_default();
    let existing = secret
        .filter(|s| ownership::owned_by(&s.metadata, &uid))
        .map(secret_strings)
        .unwrap_or_default();
    let ttl = ctx.config.download_url_ttl;
    let plan = downloads::plan(&existing, layers, now, ttl);
    let storage = ctx.storage.namespace(ns);
    let mut urls = plan.keep;
    for digest in &plan.sign {
        let url = storage.presign_get(digest, ttl).await.map_err(Error::Presign)?;
        urls.insert(downloads::key(digest), url);
    }
    Ok(urls)
}

/// The artifact `name`: from the artifact controller's cache once it has listed
/// them all (every change of an artifact wakes its app), else read.
async fn artifact(ctx: &Context, ns: &str, name: &str) -> Result<Option<AetherArtifact>, kube::Error> {
    if ctx.artifacts_ready.is_ready() {
        let key = kube::runtime::reflector::ObjectRef::new(name).within(ns);
        return Ok(ctx.artifacts.get(&key).map(|a| AetherArtifact::clone(&a)));
    }
    Api::<AetherArtifact>::namespaced(ctx.client.clone(), ns)
        .get_opt(name)
        .await
}

async fn dereference(ctx: &Context, app: &AetherApp, ns: &str) -> Result<Dereferenced, Error> {
    let artifact = artifact(ctx, ns, &app.spec.artifact_ref.name)
        .await
        .map_err(dereference_error("the artifact"))?;
    let floor = floor(ctx, ns).await?;
    let trusted = match &floor {
        Ok(floor) => trusted_keys(ctx, app, ns, floor).await?,
        Err(invalid) => Err(invalid.clone()),
    };
    // The operator works only where a cluster admin let it: an installation step,
    // not the app's fault, and the app says which.
    let enabled = ctx
        .enabled
        .check(ns)
        .await
        .map_err(dereference_error("the namespace's enablement"))?;
    let enabled = if enabled {
        Ok(())
    } else {
        Err(not_enabled(ctx, ns))
    };
    let uid = app.uid().unwrap_or_default();
    let labels = [(RELEASE_APP_LABEL.to_string(), app.name_any())].into();
    let releases = ctx
        .children
        .releases
        .list(&ctx.client, ns, &labels)
        .await
        .map_err(dereference_error("the app's releases"))?
        .into_iter()
        .filter(|r| ownership::owned_by(&r.metadata, &uid))
        .collect();
    let config_versions = config_versions(ctx, app, ns).await?;
    Ok(Dereferenced {
        artifact,
        floor,
        trusted,
        enabled,
        releases,
        config_versions,
    })
}

fn not_enabled(ctx: &Context, ns: &str) -> Invalid {
    Invalid {
        reason: aether_crds::condition::app::NAMESPACE_NOT_ENABLED,
        message: ctx.enabled.message(ns),
        waiting: false,
    }
}

/// The app's fetch Secret as it is, or as the operator wrote or read it a moment ago
/// (see [`observed::FETCH_SECRET_MEMO`]); refused as not enabled when the operator
/// may not read Secrets in the namespace (an admin's RoleBinding taken back since the
/// enablement was last read).
async fn read_downloads(
    ctx: &Context,
    app: &AetherApp,
    ns: &str,
) -> Result<Result<Option<Secret>, Invalid>, Error> {
    let name = downloads::secret_name(&app.name_any());
    let now = std::time::Instant::now();
    let uid = app.uid().unwrap_or_default();
    if let Some(recent) = ctx.fetch_secrets.recent(ns, &name, &uid, now) {
        return Ok(Ok(Some(recent)));
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    match secrets.get_opt(&name).await {
        Ok(secret) => {
            if let Some(read) = &secret {
                ctx.fetch_secrets.read(read, &uid, now);
            }
            Ok(Ok(secret))
        }
        Err(kube::Error::Api(e)) if e.code == 403 => Ok(Err(not_enabled(ctx, ns))),
        Err(e) => Err(dereference_error("the app's fetch Secret")(e)),
    }
}

/// The Deployment of the app's name, whoever made it.
async fn read_running(ctx: &Context, app: &AetherApp, ns: &str) -> Result<Option<Deployment>, Error> {
    ctx.children
        .deployments
        .get(&ctx.client, ns, &app.name_any())
        .await
        .map_err(dereference_error("the Deployment"))
}

/// The resourceVersion of each Secret and ConfigMap the app's environment reads
/// (metadata only: their data is the kubelet's to read, not the operator's). One
/// that is missing, or that the operator may not read, is left out.
async fn config_versions(
    ctx: &Context,
    app: &AetherApp,
    ns: &str,
) -> Result<BTreeMap<String, String>, Error> {
    let mut versions = BTreeMap::new();
    for (kind, name) in build::config_sources(app) {
        let version = match kind {
            "secret" => Api::<Secret>::namespaced(ctx.client.clone(), ns)
                .get_metadata_opt(&name)
                .await
                .map(|m| m.and_then(|m| m.resource_version())),
            _ => Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
                .get_metadata_opt(&name)
                .await
                .map(|m| m.and_then(|m| m.resource_version())),
        };
        match version {
            Ok(Some(version)) => {
                versions.insert(format!("{kind}/{name}"), version);
            }
            Ok(None) => {}
            Err(kube::Error::Api(e)) if e.code == 403 => {}
            Err(e) => return Err(dereference_error(format!("{kind} {name}"))(e)),
        }
    }
    Ok(versions)
}

/// The Secret's data as text (what is not UTF-8 is no URL, and is dropped).
fn secret_strings(secret: &Secret) -> BTreeMap<String, String> {
    secret
        .data
        .iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
        .collect()
}

/// The layers of every release a ReplicaSet of the app's Deployment still runs.
/// `known`: an artifact already read (the app's current one), not read again.
/// The app's ReplicaSets that have or want pods (old releases during a rollout, or
/// the only ones serving while a rollout is stuck): as last watched (kept without
/// their pods' spec), or with `fresh` read whole from the API server.
async fn running_sets(
    ctx: &Context,
    app: &AetherApp,
    ns: &str,
    fresh: bool,
) -> Result<Vec<ReplicaSet>, Error> {
    let name = app.name_any();
    let labels = build::selector_labels(&name);
    let sets = if fresh {
        let selector = build::selector_string(&name);
        Api::<ReplicaSet>::namespaced(ctx.client.clone(), ns)
            .list(&ListParams::default().labels(&selector))
            .await
            .map(|l| l.items)
    } else {
        ctx.children.replica_sets.list(&ctx.client, ns, &labels).await
    }
    .map_err(dereference_error("the app's ReplicaSets"))?;
    Ok(sets
        .into_iter()
        .filter(|rs| {
            let ours = rs
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.kind == "Deployment" && o.name == name && o.controller == Some(true));
            let replicas = rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
                + rs.status.as_ref().map_or(0, |s| s.replicas);
            ours && replicas > 0
        })
        .collect())
}

/// The Secrets the app may still read: those its spec names and those the pods of
/// its running ReplicaSets read, both read afresh (a Secret is deleted on this: a
/// rollback or `aether config` may have named one again since this reconcile
/// began, and a cache may not show a ReplicaSet just made).
async fn secrets_in_use(ctx: &Context, app: &AetherApp, ns: &str) -> Result<BTreeSet<String>, Error> {
    let apps: Api<AetherApp> = Api::namespaced(ctx.client.clone(), ns);
    let fresh = apps
        .get(&app.name_any())
        .await
        .map_err(dereference_error("the app"))?;
    let mut secrets = build::secret_names(&fresh.spec.env, &fresh.spec.env_from);
    for rs in running_sets(ctx, app, ns, true).await? {
        let containers = rs
            .spec
            .and_then(|s| s.template)
            .and_then(|t| t.spec)
            .map(|p| p.containers)
            .unwrap_or_default();
        for c in containers {
            secrets.extend(build::secret_names(
                &c.env.unwrap_or_default(),
                &c.env_from.unwrap_or_default(),
            ));
        }
    }
    Ok(secrets)
}

async fn serving_layers(
    ctx: &Context,
    app: &AetherApp,
    ns: &str,
    known: Option<&AetherArtifact>,
) -> Result<Vec<aether_artifact::Digest>, Error> {
    let mut artifacts: Vec<String> = running_sets(ctx, app, ns, false)
        .await?
        .iter()
        .filter_map(|rs| {
            rs.spec
                .as_ref()?
                .template
                .as_ref()?
                .metadata
                .as_ref()?
                .annotations
                .as_ref()?
                .get(build::ARTIFACT_ANNOTATION)
                .cloned()
        })
        .collect();
    artifacts.sort();
    artifacts.dedup();
    let mut layers = Vec::new();
    for name in artifacts {
        let read;
        let art = match known.filter(|k| k.name_any() == name) {
            Some(k) => k,
            None => match artifact(ctx, ns, &name)
                .await
                .map_err(dereference_error("a running release's artifact"))?
            {
                Some(a) => {
                    read = a;
                    &read
                }
                None => continue,
            },
        };
        if let Ok(manifest) = art.spec.manifest() {
            layers.extend(manifest.layers.iter().map(|l| l.digest));
        }
    }
    Ok(layers)
}

/// The AetherPolicies selecting the namespace, with the key sets they pin.
async fn floor(ctx: &Context, ns: &str) -> Result<Result<Floor, Invalid>, Error> {
    // Unknown policies judge nothing (the app waits), but the running release's
    // download URLs are still renewed on the way out.
    let selecting = match ctx.policies.for_namespace(ns).await {
        Ok(selecting) => selecting,
        Err(e) => {
            warn!(error = %e, "AetherPolicies unknown");
            return Ok(Err(Invalid {
                reason: "PoliciesUnknown",
                message: e.to_string(),
                waiting: true,
            }));
        }
    };
    let selecting: Vec<&AetherPolicy> = selecting.iter().collect();

    let mut pinned = BTreeMap::new();
    for p in &selecting {
        if let Some(r) = &p.spec.verify.trusted_keys {
            let source = format!("ConfigMap {}/{}", r.namespace, r.name);
            let texts = configmap_values(ctx, &r.namespace, &r.name)
                .await?
                .unwrap_or_default();
            match validate::trusted_keys_from(source, &texts) {
                Ok(keys) => {
                    pinned.insert(p.name_any(), keys);
                }
                Err(invalid) => return Ok(Err(invalid)),
            }
        }
    }
    Ok(Ok(
        Floor::new(&selecting, &pinned).with_allowed_hosts(&ctx.config.route.allowed_hosts)
    ))
}

/// The app's `verify.keysRef`, else the operator's default ConfigMap, narrowed to
/// what the floor pins. A missing source means no trusted keys (Enforce then
/// refuses, and says where it looked).
async fn trusted_keys(
    ctx: &Context,
    app: &AetherApp,
    ns: &str,
    floor: &Floor,
) -> Result<Result<TrustedKeys, Invalid>, Error> {
    if floor.mode(app.spec.verify.mode) == VerifyMode::Off {
        return Ok(Ok(TrustedKeys::default()));
    }
    let asked = match &app.spec.verify.keys_ref {
        // Trusted keys are public: the operator reads no Secret on a tenant's behalf,
        // so a reference cannot make it copy one into a pod spec.
        Some(r) if r.kind == KeysKind::Secret => {
            return Ok(Err(Invalid {
                reason: "SecretKeysRef",
                message: format!(
                    "verify.keysRef names Secret {ns}/{}: trusted keys are public keys, so they belong in a ConfigMap (kind: ConfigMap)",
                    r.name
                ),
                waiting: false,
            }));
        }
        Some(r) => match read_keys(ctx, ns, &r.name).await? {
            Ok(keys) => Some(keys),
            Err(invalid) => return Ok(Err(invalid)),
        },
        None => None,
    };
    if floor.pins_keys() || asked.is_some() {
        return Ok(Ok(floor.trusted(asked, TrustedKeys::default)));
    }
    let ons = &ctx.config.operator_namespace;
    read_keys(ctx, ons, &ctx.config.trusted_keys_configmap).await
}

/// The public keys in a ConfigMap; none if it does not exist.
async fn read_keys(ctx: &Context, ns: &str, name: &str) -> Result<Result<TrustedKeys, Invalid>, Error> {
    let source = format!("ConfigMap {ns}/{name}");
    Ok(match configmap_values(ctx, ns, name).await? {
        Some(texts) => validate::trusted_keys_from(source, &texts),
        None => Ok(TrustedKeys {
            source: format!("{source} (not found)"),
            ..Default::default()
        }),
    })
}

async fn configmap_values(ctx: &Context, ns: &str, name: &str) -> Result<Option<Vec<String>>, Error> {
    let cm = if ns == ctx.config.operator_namespace && name == ctx.config.trusted_keys_configmap {
        ctx.default_keys.lookup(&ctx.client, ns, name).await
    } else {
        Api::<ConfigMap>::namespaced(ctx.client.clone(), ns)
            .get_opt(name)
            .await
    }
    .map_err(dereference_error("trusted keys"))?;
    Ok(cm.map(|c| c.data.unwrap_or_default().into_values().collect()))
}

/// The children the release is applied over that the look does not read otherwise
/// (its fetch Secret and Deployment), by the names [`build::build`] gives them: as
/// last watched, or read where the cache holds none of that name (someone else's
/// object carries no label). The NetworkPolicy only when the admin asks for them.
struct ReadChildren {
    service_account: Option<ServiceAccount>,
    service: Option<Service>,
    network_policy: Option<NetworkPolicy>,
}

async fn read_children(ctx: &Context, app: &AetherApp, ns: &str) -> Result<ReadChildren, Error> {
    let observed = &ctx.children;
    let name = app.name_any();
    let policy_name = network_policy::name(&name);
    // (None where the admin does not ask for them: then none is claimed either.)
    let policy = async {
        match &ctx.config.network_policy {
            Some(_) => observed.network_policies.get(&ctx.client, ns, &policy_name).await,
            None => Ok(None),
        }
    };
    let account_name = build::service_account_name(&name);
    let (service_account, service, network_policy) = futures::try_join!(
        observed.service_accounts.get(&ctx.client, ns, &account_name),
        observed.services.get(&ctx.client, ns, &name),
        policy,
    )
    .map_err(dereference_error("the app's objects"))?;
    Ok(ReadChildren {
        service_account,
        service,
        network_policy,
    })
}

/// The children as they are now: as last watched, or read where the cache holds
/// none of that name.
struct Current {
    service_account: Option<ServiceAccount>,
    service: Option<Service>,
    downloads: Option<Secret>,
    network_policy: Option<NetworkPolicy>,
}

/// Refuse to write any child whose name an object the app does not own already
/// holds. `read`, `downloads` and `running`: those objects, as read.
fn claim_children(
    app: &AetherApp,
    children: &Children,
    read: ReadChildren,
    downloads: Option<Secret>,
    running: Option<&Deployment>,
) -> Result<Current, Invalid> {
    let uid = app.uid().unwrap_or_default();
    let app_name = app.name_any();
    let name = |meta: &ObjectMeta| meta.name.clone().unwrap_or_default();
    let ReadChildren {
        service_account,
        service,
        network_policy,
    } = read;
    // Its NetworkPolicy too, when the admin asked for them (and so it was read): the
    // app does not run without it (its name is one no app can take; someone else's
    // object of that name stops the app rather than leave its pods open).
    let policy = network_policy.as_ref().map(|p| {
        (
            "NetworkPolicy",
            network_policy::name(&app_name),
            Some(p.metadata.clone()),
        )
    });
    let wanted = [
        (
            "ServiceAccount",
            name(&children.service_account.metadata),
            service_account.as_ref().map(|o| o.metadata.clone()),
        ),
        (
            "Service",
            name(&children.service.metadata),
            service.as_ref().map(|o| o.metadata.clone()),
        ),
        (
            "Deployment",
            name(&children.deployment.metadata),
            running.map(|o| o.metadata.clone()),
        ),
        (
            "Secret",
            name(&children.downloads.metadata),
            downloads.as_ref().map(|o| o.metadata.clone()),
        ),
    ];
    wanted
        .iter()
        .chain(policy.iter())
        .try_for_each(|(kind, name, meta)| ownership::claim(kind, name, meta.as_ref(), &app_name, &uid))?;
    Ok(Current {
        service_account,
        service,
        downloads,
        network_policy,
    })
}

/// Server-side apply of `object` with the operator's field manager, forcing
/// conflicts on the fields it owns; unless what was last applied to it is the same
/// and nobody wrote it since (see [`observed::Applied`]): then it is `current`, as
/// last seen.
async fn apply_one<K>(ctx: &Context, ns: &str, object: &K, current: Option<&K>) -> Result<K, Error>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Serialize
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let name = object.meta().name.clone().unwrap_or_default();
    let mut body = serde_json::to_value(object).unwrap_or_default();
    // Typed objects serialise without apiVersion/kind, which apply needs.
    body["apiVersion"] = K::api_version(&()).as_ref().into();
    body["kind"] = K::kind(&()).as_ref().into();
    let wanted = observed::wanted(&body);
    if let Some(current) = current.filter(|c| ctx.applied.unchanged(Some(*c), wanted)) {
        return Ok(current.clone());
    }
    // Only over the object judged the app's (as last watched, it may since have been
    // deleted and made again by someone else): the API server refuses another UID.
    if let Some(uid) = current.and_then(|c| c.meta().uid.clone()) {
        body["metadata"]["uid"] = uid.into();
    }
    let applied = api
        .patch(
            &name,
            &PatchParams::apply(crate::artifact::MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|source| Error::Apply {
            what: format!("{} {ns}/{name}", K::kind(&())),
            source,
        })?;
    ctx.applied.record(&applied, wanted);
    crate::faults::point("app: applied a child");
    Ok(applied)
}

/// An object of the app's that it has only while asked for (its
/// HorizontalPodAutoscaler while `spec.autoscaling` asks for one, its NetworkPolicy
/// while the admin does): `desired` is its name and the object, applied, or deleted
/// once None. One of that name the app does not own is left alone, with a Warning
/// saying `unapplied`, as any object the operator did not create. With
/// `absent_if_forbidden`, a 403 on reading it while not asked for means none (the RBAC
/// of an install from before the kind was used).
async fn reconcile_optional<K>(
    ctx: &Context,
    app: &AetherApp,
    ns: &str,
    (name, desired): (&str, Option<K>),
    (known, watched): (Option<Option<K>>, Option<&observed::Watched<K>>),
    unapplied: &str,
    absent_if_forbidden: bool,
) -> Result<Option<K>, Error>
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::Serialize
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), ns);
    let kind = K::kind(&());
    // Not asked for, and none the operator labelled: nothing to delete (one made
    // by someone else is left alone anyway).
    if desired.is_none() && watched.is_some_and(|w| w.none_of_ours(ns, name)) {
        return Ok(None);
    }
    // (`known`: already read in this look.)
    let read = match (known, watched) {
        (Some(known), _) => Ok(known),
        (None, Some(watched)) => watched.get(&ctx.client, ns, name).await,
        (None, None) => api.get_opt(name).await,
    };
    let existing = match read {
        Ok(existing) => existing,
        Err(kube::Error::Api(e)) if e.code == 403 && absent_if_forbidden && desired.is_none() => {
            return Ok(None);
        }
        Err(source) => {
            return Err(Error::Dereference {
                what: format!("the app's {kind}"),
                source,
            });
        }
    };
    let owned = existing
        .as_ref()
        .map(|o| ownership::owned_by(o.meta(), &app.uid().unwrap_or_default()));
    match (desired, owned) {
        (Some(_), Some(false)) => {
            let note = format!("{kind} {ns}/{name} exists and is not this app's: {unapplied}");
            name_conflict(ctx, app, &note).await;
        }
        (Some(object), _) => {
            return apply_one(ctx, ns, &object, existing.as_ref()).await.map(Some);
        }
        (None, Some(true)) => {
            // Only the one read: not another created under its name meanwhile.
            let uid = existing.as_ref().and_then(|o| o.meta().uid.clone());
            let params = DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    uid,
                    resource_version: None,
                }),
                ..Default::default()
            };
            match api.delete(name, &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                Err(source) => {
                    return Err(Error::Apply {
                        what: format!("deleting {kind} {ns}/{name}"),
                        source,
                    });
                }
            }
        }
        (None, _) => {}
    }
    Ok(None)
}

/// The app's Ingress and HTTPRoute for the `held` hosts (none: deleted), and the
/// Certificate for those without a Secret of their own. `None` when a route's name
/// is another object's (a `NameConflict` event says so): the hosts are not routed.
async fn reconcile_routes(
    ctx: &Context,
    app: &AetherApp,
    ns: &str,
    held: &[aether_crds::Host],
    errors: RouteErrors,
) -> Result<Option<route::Observed>, Error> {
    let config = &ctx.config.route;
    let name = app.name_any();
    let not_routed = "its hosts are not routed";
    let ingress = route::ingress(app, held, config);
    let wanted = ingress.is_some();
    let mut routed = reconcile_optional(ctx, app, ns, (&name, ingress), (None, None), not_routed, false)
        .await?
        .is_some()
        || !wanted;
    let mut http_route = None;
    let mut gateway = None;
    let mut route_error = None;
    // One left from when the admin named a Gateway goes too (or it would route the
    // hosts on, unseen by the app's status).
    if config.gateway.is_some() || has_http_route(ctx, app, ns) {
        // Both kinds route the hosts, or neither (one's name taken by another
        // object): the app's status says what its routes route.
        let desired = config
            .gateway
            .as_ref()
            .and_then(|g| gateway::http_route(app, held, g))
            .filter(|_| routed);
        let wanted = desired.is_some();
        match reconcile_optional(ctx, app, ns, (&name, desired), (None, None), not_routed, false).await {
            Ok(applied) => {
                http_route = applied;
                if wanted && http_route.is_none() {
                    routed = false;
                    reconcile_optional::<Ingress>(
                        ctx,
                        app,
                        ns,
                        (&name, None),
                        (None, None),
                        not_routed,
                        false,
                    )
                    .await?;
                }
            }
            // Gateway API not installed, a permission missing, a host the API
            // refuses: said in the hosts' status rather than failing the reconcile,
            // whose Deployment is applied by now. A route that must go is retried.
            Err(e) if wanted && errors == RouteErrors::InStatus => {
                warn!(error = %e, "the app's HTTPRoute could not be written");
                route_error = Some(format!("the HTTPRoute could not be written: {e}"));
            }
            Err(e) => return Err(e),
        }
        // Where the Gateway alone serves the hosts, its listeners say whether each
        // host's certificate is there.
        let alone = config
            .gateway
            .as_ref()
            .filter(|_| wanted && !config.ingress() && route_error.is_none());
        if let Some(gateway_ref) = alone {
            let gateways: Api<gateway::Gateway> = Api::namespaced(ctx.client.clone(), &gateway_ref.namespace);
            match gateways.get_opt(&gateway_ref.name).await {
                Ok(found) => gateway = found,
                Err(e) => route_error = Some(format!("Gateway {gateway_ref} could not be read: {e}")),
            }
        }
    }
    // No route of its own: no certificate either (one issued before goes).
    // Without an issuer there is no Certificate kind to ask about.
    let certificate = match &config.issuer {
        Some(_) => {
            let desired = route::certificate(app, held, config).filter(|_| routed);
            reconcile_optional(
                ctx,
                app,
                ns,
                (&route::certificate_name(&name), desired),
                (None, None),
                "its hosts have no certificate",
                true,
            )
            .await?
        }
        None => None,
    };
    if !routed {
        return Ok(None);
    }
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let mut secrets_present = Vec::new();
    for secret in held.iter().filter_map(|h| h.tls_secret_name.as_ref()) {
        // Metadata only: the certificate is the ingress controller's to read.
        match secrets.get_metadata_opt(secret).await {
            Ok(Some(_)) => secrets_present.push(secret.clone()),
            Ok(None) => {}
            Err(kube::Error::Api(e)) if e.code == 403 => {}
            Err(e) => return Err(dereference_error(format!("Secret {secret}"))(e)),
        }
    }
    Ok(Some(route::Observed {
        certificate,
        secrets_present,
        http_route,
        gateway,
        route_error,
    }))
}

/// What becomes of an HTTPRoute that cannot be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteErrors {
    /// The reconcile fails (and is retried): the route must not stay as it is.
    Fail,
    /// The hosts' status says why (`Unavailable`): an admin's setting to fix.
    InStatus,
}

/// Whether the app has an HTTPRoute (as watched, wherever Gateway API is installed).
fn has_http_route(ctx: &Context, app: &AetherApp, ns: &str) -> bool {
    ctx.http_routes
        .get(&kube::runtime::reflector::ObjectRef::new(&app.name_any()).within(ns))
        .is_some()
}

/// A Warning that an object of a name the app would use is not the app's.
async fn name_conflict(ctx: &Context, app: &AetherApp, note: &str) {
    events::publish(
        &ctx.recorder,
        &app.object_ref(&()),
        EventType::Warning,
        "NameConflict",
        note,
    )
    .await;
}

/// Carry out [`releases::plan`] for the app's releases (those it owns).
async fn record_releases(
    ctx: &Context,
    app: &AetherApp,
    ns: &str,
    content: (aether_crds::ReleasedArtifact, aether_crds::ReleaseConfig),
    existing: &[AetherRelease],
    rollout: (&status::Rollout, Option<releases::FellBack>),
) -> Result<(), Error> {
    let api: Api<AetherRelease> = Api::namespaced(ctx.client.clone(), ns);
    let now = Timestamp::now();
    let plan = releases::plan(app, content, existing, rollout, ctx.config.keep_releases, now);
    let apply_error = |what: String| move |source| Error::Apply { what, source };
    if let Some(release) = &plan.create {
        let name = release.name_any();
        match api.create(&PostParams::default(), release).await {
            Ok(_) => crate::faults::point("app: recorded a release"),
            // Recorded by a reconcile this one raced with (an operator restart): the
            // next look sees it.
            Err(kube::Error::Api(e)) if e.code == 409 => {
                let other = api.get_opt(&name).await.ok().flatten();
                if other.is_some_and(|r| !ownership::owned_by(&r.metadata, &app.uid().unwrap_or_default())) {
                    let note = format!(
                        "AetherRelease {ns}/{name} exists and is not this app's (left from an app of that name?): no release is recorded until it is deleted"
                    );
                    name_conflict(ctx, app, &note).await;
                }
                return Ok(());
            }
            Err(source) => return Err(apply_error(format!("AetherRelease {ns}/{name}"))(source)),
        }
        let cause = format!("{:?}", release.spec.cause);
        let note = format!(
            "release v{} ({cause}): {}",
            release.spec.version, release.spec.artifact.name
        );
        let (type_, reason) = match release.spec.cause {
            aether_crds::ReleaseCause::AutomaticRollback => (EventType::Warning, "RolledBack"),
            _ => (EventType::Normal, "Released"),
        };
        events::publish(&ctx.recorder, &app.object_ref(&()), type_, reason, &note).await;
        info!(release = %name, %cause, "recorded a release");
    }
    for (name, status) in &plan.statuses {
        let patch = serde_json::json!({"status": status});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(apply_error(format!("the status of AetherRelease {ns}/{name}")))?;
    }
    for name in &plan.delete {
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => info!(release = %name, "deleted a release past retention"),
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => return Err(apply_error(format!("deleting AetherRelease {ns}/{name}"))(source)),
        }
    }
    if plan.config_secrets.is_empty() {
        return Ok(());
    }
    // Only the app's own (a Secret of that name someone else made stays), and none
    // the app may still read.
    let in_use = secrets_in_use(ctx, app, ns).await?;
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    for name in plan.config_secrets.iter().filter(|n| !in_use.contains(*n)) {
        let owned = secrets
            .get_metadata_opt(name)
            .await
            .map_err(dereference_error("the app's config Secrets"))?
            .filter(|s| ownership::owned_by(&s.metadata, &app.uid().unwrap_or_default()));
        let Some(owned) = owned else { continue };
        // That very Secret: not one made again under the name since.
        let this_one = DeleteParams {
            preconditions: Some(Preconditions {
                uid: owned.metadata.uid,
                resource_version: None,
            }),
            ..Default::default()
        };
        match secrets.delete(name, &this_one).await {
            Ok(_) => info!(secret = %name, "deleted a config Secret no kept release names"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(source) => return Err(apply_error(format!("deleting Secret {ns}/{name}"))(source)),
        }
    }
    Ok(())
}

/// The app's pods, as last watched; listed while the watch has not listed them yet
/// (the operator just started).
async fn app_pods(ctx: &Context, app: &AetherApp, ns: &str, selector: &str) -> Result<Vec<Pod>, Error> {
    if ctx.pods_ready.is_ready() {
        let labels = build::selector_labels(&app.name_any());
        return Ok(ctx
            .pods
            .state()
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(ns))
            .filter(|p| labels.iter().all(|(k, v)| p.labels().get(k) == Some(v)))
            .map(|p| Pod::clone(p))
            .collect());
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    Ok(pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(dereference_error("pods"))?
        .items)
}

/// Delete pods whose fetch failed on bytes since repaired: their ReplicaSet starts
/// new ones at once, instead of after kubelet's back-off (up to 5 minutes).
async fn replace_pods(ctx: &Context, ns: &str, names: &[String]) -> Result<(), Error> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    for name in names {
        info!(pod = %name, "replacing a pod whose fetch failed before storage was repaired");
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(source) => {
                return Err(Error::Apply {
                    what: format!("replacing pod {ns}/{name}"),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// Earlier operators copied bucket-wide read credentials next to each app: remove
/// such a copy (only if this app owns it) once the app is Ready on this operator's
/// template. Looked for once per app while the operator runs (nothing makes one
/// any more).
async fn prune_legacy_secret(ctx: &Context, app: &AetherApp, ns: &str) -> Result<(), Error> {
    let key = app_key(app);
    let checked = || ctx.legacy_checked.lock().unwrap_or_else(|e| e.into_inner());
    if checked().contains(&key) {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let name = build::legacy_secret_name(&app.name_any());
    // Its metadata is enough: the operator has no need of the data.
    let ours = api
        .get_metadata_opt(&name)
        .await
        .map_err(dereference_error("the legacy credentials Secret"))?
        .is_some_and(|s| ownership::owned_by(&s.metadata, &app.uid().unwrap_or_default()));
    if ours {
        api.delete(&name, &DeleteParams::default())
            .await
            .map_err(|source| Error::Apply {
                what: format!("pruning Secret {ns}/{name}"),
                source,
            })?;
    }
    checked().insert(key);
    Ok(())
}

fn url(mode: UrlMode, name: &str, ns: &str, service: &Service) -> Option<String> {
    match mode {
        UrlMode::ServiceDns => Some(format!("http://{name}.{ns}.svc")),
        UrlMode::ClusterIp => service
            .spec
            .as_ref()?
            .cluster_ip
            .as_ref()
            .filter(|ip| !ip.is_empty() && *ip != "None")
            .map(|ip| format!("http://{ip}")),
    }
}

/// Deploy phase durations, observed once each, when they first appear.
fn record_phases(metrics: &Metrics, old: &AetherAppStatus, new: &AetherAppStatus) {
    let Some(t) = &new.last_deploy else { return };
    let before = old.last_deploy.as_ref().filter(|o| o.artifact == t.artifact);
    let phases = [
        (
            "applied",
            t.applied_after_milliseconds,
            before.and_then(|o| o.applied_after_milliseconds),
        ),
        (
            "ready",
            t.ready_after_milliseconds,
            before.and_then(|o| o.ready_after_milliseconds),
        ),
    ];
    for (phase, now, then) in phases {
        if let (Some(ms), None) = (now, then) {
            metrics
                .deploy_phase
                .get_or_create(&PhaseLabels { phase })
                .observe(ms as f64 / 1000.0);
        }
    }
}

/// Policy `Warn` runs an unverified artifact, once per new artifact, with a Warning.
async fn warn_if_unverified(ctx: &Context, app: &AetherApp, old: &AetherAppStatus, release: &Validated) {
    let Verdict::Unverified(why) = &release.verdict else {
        return;
    };
    let new_artifact = old
        .artifact
        .as_ref()
        .is_none_or(|a| a.digest != release.digest.to_string());
    if new_artifact {
        let reason = match why {
            PolicyRefusal::Unsigned => "UnsignedArtifact",
            PolicyRefusal::Invalid(_) => "UnverifiedArtifact",
        };
        let note = format!("verify policy Warn: running {} anyway: {why}", release.artifact);
        events::publish(
            &ctx.recorder,
            &app.object_ref(&()),
            EventType::Warning,
            reason,
            &note,
        )
        .await;
    }
}

/// An Event when Ready changes to where a deploy got: Normal for Ready, Warning for
/// failures. Not for the way there (waiting for the artifact, rolling out): the
/// status says that, and a thousand apps deploying at once made two Events each of
/// it (as many requests, and as many kept for their series).
async fn announce(
    ctx: &Context,
    app: &AetherApp,
    old: &AetherAppStatus,
    new: &AetherAppStatus,
    type_: EventType,
) {
    if !events::ready_changed(&old.conditions, &new.conditions) {
        return;
    }
    let Some(ready) = new
        .conditions
        .iter()
        .find(|c| c.type_ == aether_crds::condition::READY)
    else {
        return;
    };
    let stalled = crate::conditions::is_true(&new.conditions, aether_crds::condition::STALLED);
    let on_the_way = [
        aether_crds::condition::app::AWAITING_ARTIFACT,
        aether_crds::condition::app::ROLLING_OUT,
    ];
    if !stalled && on_the_way.contains(&ready.reason.as_str()) {
        return;
    }
    let type_ = if stalled { EventType::Warning } else { type_ };
    events::publish(
        &ctx.recorder,
        &app.object_ref(&()),
        type_,
        &ready.reason,
        &ready.message,
    )
    .await;
}

async fn patch_status(ctx: &Context, app: &AetherApp, status: &AetherAppStatus) -> Result<(), Error> {
    // Unchanged (most looks at rest): no request. Only on the app as this operator
    // last wrote it: a cache that has not seen that write yet may show an older
    // status equal to this one while the API server holds another.
    let key = app_key(app);
    let current = ctx
        .written
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key)
        .is_none_or(|v| Some(v) == app.metadata.resource_version.as_ref());
    if current && app.status.as_ref() == Some(status) {
        return Ok(());
    }
    let api: Api<AetherApp> = Api::namespaced(ctx.client.clone(), &app.namespace().unwrap_or_default());
    let patch = serde_json::json!({
        "apiVersion": "aether.dev/v1alpha1",
        "kind": "AetherApp",
        "status": status,
    });
    crate::faults::point("app: before writing status");
    let written_version = api
        .patch_status(
            &app.name_any(),
            &PatchParams::apply(crate::artifact::MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
        .map_err(Error::UpdateStatus)?
        .metadata
        .resource_version;
    if let Some(version) = written_version {
        let mut written = ctx.written.lock().unwrap_or_else(|e| e.into_inner());
        written.insert(key, version);
    }
    crate::faults::point("app: wrote status");
    Ok(())
}

pub fn error_policy(app: Arc<AetherApp>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(app = %app.name_any(), reason = err.metric_label(), error = %err, "reconcile failed; retrying");
    ctx.metrics.failed(CONTROLLER, err.metric_label());
    Action::requeue(ctx.backoff.failed(&app_key(&app)))
}

/// `namespace/name`: an app's key in the operator's own tables.
pub fn app_key(app: &AetherApp) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

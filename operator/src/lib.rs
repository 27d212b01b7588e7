//! Aether's operator: one controller per custom resource.
//! - [`artifact`]: the storage side of `aether push` (upload conversation, verification);
//! - [`app`]: AetherApp → Deployment, Service, ServiceAccount, fetch Secret (download
//!   URLs).
//!
//! `main.rs` only parses flags. [`run`] serves metrics and health, takes the Lease
//! (when leader election is on) and then runs both controllers until a signal, or
//! until the Lease is lost (the process then exits and is restarted as a standby).

pub mod app;
pub mod args;
pub mod artifact;
pub mod backoff;
pub mod blobs;
pub mod conditions;
pub mod enabled;
pub mod events;
pub mod faults;
pub mod http;
pub mod leader;
pub mod lists;
pub mod metrics;
pub mod namespaces;
pub mod policies;
pub mod readiness;
pub mod retention;
pub mod triggers;
pub mod turns;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aether_crds::{AetherApp, AetherArtifact, AetherPolicy, AetherRelease};
use anyhow::Context as _;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::networking::v1::Ingress;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, WatchStreamExt, controller, reflector, watcher};
use kube::{Api, Client, ResourceExt};
use tracing::{info, warn};

pub async fn run(args: args::Args) -> anyhow::Result<()> {
    info!(
        version = env!("CARGO_PKG_VERSION"),
        namespace = %args.namespace,
        leader_election = args.leader_election,
        "aether-operator starting"
    );
    let app_config = args.app_config().map_err(anyhow::Error::msg)?;
    let client = Client::try_default()
        .await
        .context("connecting to the Kubernetes API (in-cluster or KUBECONFIG)")?;
    let metrics = Arc::new(metrics::Metrics::default());
    let state = Arc::new(http::State {
        metrics: metrics.clone(),
        ..Default::default()
    });
    let server = tokio::spawn(http::serve(args.metrics_addr, state.clone()));

    let artifacts: Api<AetherArtifact> = Api::all(client.clone());
    artifacts
        .list(&kube::api::ListParams::default().limit(1))
        .await
        .context(
            "listing AetherArtifacts: are the CRDs installed (kubectl apply --server-side -k config/crd)?",
        )?;
    state.ready.store(true, Ordering::Relaxed);

    let mut leadership = if args.leader_election {
        // A standby waits here, maybe for the pod's whole life: as PID 1 it would
        // ignore SIGTERM (no default action) and hold up every rollout and drain of
        // the operator for its grace period.
        tokio::select! {
            leadership = leader::lead(&client, &args.namespace) => Some(leadership?),
            () = shutdown_signal() => {
                info!("stopping before holding the leader Lease");
                return Ok(());
            }
        }
    } else {
        None
    };
    let lost = async {
        match leadership.as_mut() {
            Some((rx, _)) => while rx.changed().await.is_ok() && *rx.borrow() {},
            None => std::future::pending().await,
        }
    };

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: artifact::MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let lists = lists::Lists::probe(&client).await;
    // Every AetherPolicy, cached; any change re-judges every app.
    let (policies, policy_writer) = reflector::store::<AetherPolicy>();
    let (policy_events, policies_ready) = readiness::Readiness::follow(reflector(
        policy_writer,
        watcher(Api::<AetherPolicy>::all(client.clone()), lists.config())
            // A missing CRD or permission is retried every 2 s, not in a tight loop.
            .backoff(backoff::WatchBackoff::default()),
    ));
    let policy_changes = policy_events
        .touched_objects()
        .filter_map(|change| async move { change.ok().map(|_| ()) });
    let policies = policies::Policies {
        client: client.clone(),
        ready: policies_ready,
        store: policies,
    };
    // Which namespaces are being deleted: what is in them is left alone.
    let (namespaces, namespace_events) = namespaces::Namespaces::watch(&client, lists);
    tokio::spawn(namespace_events.for_each(|_| futures::future::ready(())));
    let storage = aether_storage::Storage::new(&args.storage());
    let enabled = Arc::new(enabled::Enablement::new(client.clone(), args.namespace.clone()));
    // Each controller's reconciles take turns (crate::turns) shared fairly between
    // namespaces; kube-runtime's own limit would serve them in the order they came.
    let unbounded = controller::Config::default();
    let max_reconciles = usize::from(args.max_concurrent_reconciles);
    let app_turns = Arc::new(turns::Turns::halved(max_reconciles));
    let artifact_turns = Arc::new(turns::Turns::halved(max_reconciles));
    // The app controller's cache of every AetherApp serves the artifact controller's
    // retention too.
    // (Its reflector is built here, as Controller::new would, so that its readiness
    // can be followed: see crate::readiness.)
    let (apps_store, apps_writer) = reflector::store::<AetherApp>();
    let (app_events, apps_ready) = readiness::Readiness::follow(reflector(
        apps_writer,
        watcher(Api::<AetherApp>::all(client.clone()), lists.config()).modify(app::observed::slim_resource),
    ));
    // One watch of the artifacts feeds both controllers: the app controller reads
    // artifacts in this cache, and each change reaches it only once it is there.
    let (artifacts_store, artifacts_writer) = reflector::store::<AetherArtifact>();
    let (artifact_events, artifacts_ready) = readiness::Readiness::follow(
        reflector(
            artifacts_writer,
            watcher(artifacts.clone(), lists.config()).modify(app::observed::slim_resource),
        )
        .backoff(backoff::WatchBackoff::default()),
    );
    // Each app's last status write (see app::patch_status) and whether its legacy
    // Secret was looked for, forgotten with the app.
    let written: Arc<std::sync::Mutex<std::collections::HashMap<String, String>>> = Arc::default();
    let legacy_checked: Arc<std::sync::Mutex<std::collections::HashSet<String>>> = Arc::default();
    // What was last applied to each child (see app::observed), forgotten with it.
    let applied = Arc::new(app::observed::Applied::default());
    let fetch_secrets = Arc::new(app::observed::FetchSecrets::default());
    // The same watch tells the artifacts' retention what apps run (see crate::triggers):
    // an app's new release may push an older one out of the kept releases. (Wake-ups
    // name objects in the other's cache only: one not there would be a warning.)
    let (app_seen, app_changes) = futures::channel::mpsc::unbounded();
    let mut runs = triggers::Changes::of(triggers::app_for_artifacts);
    let app_events = app_events
        .inspect_ok({
            let (artifacts, written, legacy_checked, applied, fetch_secrets) = (
                artifacts_store.clone(),
                written.clone(),
                legacy_checked.clone(),
                applied.clone(),
                fetch_secrets.clone(),
            );
            move |event| {
                if let watcher::Event::Delete(app) = event {
                    let key = app::app_key(app);
                    applied.forget_app(&key);
                    fetch_secrets.forget(
                        &app.namespace().unwrap_or_default(),
                        &app::downloads::secret_name(&app.name_any()),
                    );
                    written.lock().unwrap_or_else(|e| e.into_inner()).remove(&key);
                    legacy_checked
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&key);
                }
                for app in runs.admit(event) {
                    let ns = app.namespace().unwrap_or_default();
                    for release in app.status.map(|s| s.history).unwrap_or_default() {
                        let artifact = ObjectRef::<AetherArtifact>::new(&release.artifact).within(&ns);
                        if artifacts.get(&artifact).is_some() {
                            let _ = app_seen.unbounded_send(artifact);
                        }
                    }
                }
            }
        })
        .try_filter(turns::changes_unless_waiting(&app_turns))
        .applied_objects()
        .predicate_filter(triggers::asked::<AetherApp>, Default::default());
    let apps = Controller::for_stream(app_events, apps_store.clone())
        .with_config(unbounded.clone())
        .trigger_backoff(backoff::WatchBackoff::default());
    let (artifact_seen, artifact_changes) = futures::channel::mpsc::unbounded();
    let (finalizer_stripped, finalizers_stripped) = futures::channel::mpsc::unbounded();
    let artifact_events = artifact_events
        .inspect_ok({
            let mut verdicts = triggers::Changes::of(triggers::artifact_for_app);
            let mut stripped = triggers::Stripped::of(artifact::FINALIZER);
            let apps = apps_store.clone();
            // An artifact names its app: a push (or a verdict) wakes that app.
            move |event| {
                for art in stripped.admit(event) {
                    let _ = finalizer_stripped.unbounded_send(ObjectRef::from_obj(&art));
                }
                for art in verdicts.admit(event) {
                    if let Some(ns) = art.namespace() {
                        let app = ObjectRef::<AetherApp>::new(&art.spec.app).within(&ns);
                        if apps.get(&app).is_some() {
                            let _ = artifact_seen.unbounded_send(app);
                        }
                    }
                }
            }
        })
        .try_filter(turns::changes_unless_waiting(&artifact_turns))
        .applied_objects()
        .predicate_filter(triggers::asked::<AetherArtifact>, Default::default());
    let artifact_controller = Controller::for_stream(artifact_events, artifacts_store)
        .with_config(unbounded)
        .reconcile_on(finalizers_stripped)
        .trigger_backoff(backoff::WatchBackoff::default());
    let artifact_ctx = Arc::new(artifact::Context {
        client: client.clone(),
        storage: storage.clone(),
        recorder: recorder.clone(),
        upload: artifact::UploadPolicy {
            url_ttl: Duration::from_secs(args.upload_url_ttl_seconds),
            multipart_threshold: args.multipart_threshold_bytes,
            part_size: args.part_size_bytes,
        },
        retention: args.retention(),
        locks: blobs::BlobLocks::default(),
        verified: blobs::Verified::default(),
        turns: artifact_turns.clone(),
        artifacts: artifact_controller.store(),
        hashing: turns::Turns::new(artifact::HASHING_PERMITS, 1),
        enabled: enabled.clone(),
        namespaces: namespaces.clone(),
        policies: policies.clone(),
        metrics: metrics.clone(),
        apps: apps.store(),
        apps_ready,
        backoff: Default::default(),
    });
    let (nudge, nudged) = futures::channel::mpsc::unbounded();
    // The label every child of an app carries.
    let managed_by = format!("app.kubernetes.io/managed-by={}", app::build::MANAGED_BY);
    // The children, watched into caches that the looks read (see app::observed).
    let (children, child_watches) =
        app::observed::watch(&client, lists, &managed_by, apps_store.clone(), applied.clone());
    tokio::spawn(
        child_watches
            .replica_sets
            .for_each(|()| futures::future::ready(())),
    );
    // The default trusted keys, read by every app's look.
    let (default_keys, key_events) = app::observed::cache(
        Api::namespaced(client.clone(), &args.namespace),
        lists
            .config()
            .fields(&format!("metadata.name={}", app_config.trusted_keys_configmap)),
        app::observed::slim_meta,
    );
    tokio::spawn(key_events.for_each(|_| futures::future::ready(())));
    // Every Ingress, for who holds which host (see app::route). Apps are reconciled
    // only once it has listed them all, lest a host look free that is not.
    let (ingresses, ingresses_writer) = reflector::store::<Ingress>();
    let ingress_events = reflector(
        ingresses_writer,
        watcher(Api::<Ingress>::all(client.clone()), lists.config()),
    )
    .backoff(backoff::WatchBackoff::default());
    tokio::spawn(ingress_events.for_each(|_| futures::future::ready(())));
    // The apps' pods, for their rollouts: metadata and status only. Their
    // Deployment's status follows their progress; a pod's own failure (its fetch
    // refused, the app crashing) is seen only here, and wakes its app.
    // A pod names its app by label (a pod that claims another app's wakes it, nothing
    // more).
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (pod_seen, pod_changes) = futures::channel::mpsc::unbounded();
    let mut failures = triggers::Changes::of(triggers::pod_for_app);
    let (pod_events, pods_ready) = readiness::Readiness::follow(
        reflector(
            pods_writer,
            watcher(
                Api::<Pod>::all(client.clone()),
                lists.config().labels(app::build::PODS_SELECTOR),
            )
            .modify(app::status::slim_pod),
        )
        .backoff(backoff::WatchBackoff::default()),
    );
    let pod_events = pod_events.for_each({
        let apps = apps_store.clone();
        move |event| {
            if let Err(e) = &event {
                warn!(error = %e, "watching the apps' pods: their failures are not seen until it works");
            }
            for pod in event.iter().flat_map(|e| failures.admit(e)) {
                if let (Some(ns), Some(name)) = (pod.namespace(), pod.labels().get(app::build::NAME_LABEL)) {
                    let app = ObjectRef::<AetherApp>::new(name).within(&ns);
                    if apps.get(&app).is_some() {
                        let _ = pod_seen.unbounded_send(app);
                    }
                }
            }
            futures::future::ready(())
        }
    });
    tokio::spawn(pod_events);
    // And every HTTPRoute, wherever Gateway API is installed: those of apps whose
    // hosts go through the admin's Gateway, and those left from when they did.
    let gateway = app_config.route.gateway.clone();
    // Only "no such resource" says it is not installed: anything else (the API
    // server away a moment, RBAC not there yet) is the watch's to retry.
    let http_routes_served = !matches!(
        Api::<app::gateway::HttpRoute>::all(client.clone())
            .list_metadata(&kube::api::ListParams::default().limit(1))
            .await,
        Err(kube::Error::Api(e)) if e.code == 404
    );
    if let (Some(gateway), false) = (&gateway, http_routes_served) {
        warn!(
            %gateway,
            "Gateway API is not installed (no HTTPRoutes): apps' hosts say so in their status; restart the operator once it is"
        );
    }
    let (http_routes, http_routes_writer) = reflector::store::<app::gateway::HttpRoute>();
    if http_routes_served {
        let route_events = reflector(
            http_routes_writer,
            watcher(
                Api::<app::gateway::HttpRoute>::all(client.clone()),
                lists.config(),
            ),
        )
        .backoff(backoff::WatchBackoff::default());
        tokio::spawn(route_events.for_each(|_| futures::future::ready(())));
    }
    let app_ctx = Arc::new(app::Context {
        client: client.clone(),
        enabled,
        namespaces,
        storage,
        policies: policies.clone(),
        recorder,
        metrics,
        config: app_config,
        backoff: Default::default(),
        turns: app_turns.clone(),
        written,
        children,
        default_keys,
        applied,
        fetch_secrets,
        legacy_checked,
        apps: apps.store(),
        ingresses: ingresses.clone(),
        http_routes: http_routes.clone(),
        artifacts: artifact_controller.store(),
        artifacts_ready,
        pods,
        pods_ready,
        nudge,
    });

    // On SIGTERM the controllers finish what runs; what only waits for a turn stops
    // waiting, or shutting down would first work through everything due.
    tokio::spawn({
        let (app_ctx, artifact_ctx) = (app_ctx.clone(), artifact_ctx.clone());
        async move {
            shutdown_signal().await;
            app_ctx.turns.close();
            artifact_ctx.turns.close();
        }
    });
    let artifact_controller = artifact_controller
        .reconcile_on(turns::unless_waiting(app_changes, artifact_turns))
        // A release keeps its artifact: once it is deleted (--keep-releases, or
        // `aether delete`), the artifact may go, and is looked at now. (Only then: a
        // new release changes nothing for its artifact. A deletion missed while the
        // watch was down is seen on the artifact's next look.)
        .watches_stream(child_watches.deleted_releases, |release: AetherRelease| {
            let ns = release.namespace()?;
            Some(ObjectRef::<AetherArtifact>::new(&release.spec.artifact.name).within(&ns))
        })
        .shutdown_on_signal()
        .run(artifact::reconcile, artifact::error_policy, artifact_ctx)
        .for_each(log_result);
    // Children are watched by the label every one of them carries.
    let owned = lists.config().labels(&managed_by);
    // (Deployments, Services and ServiceAccounts are watched in app::observed.)
    let mut apps = apps.owns(Api::<Ingress>::all(client.clone()), owned.clone());
    // The Gateway's word on an app's route (its status) is seen at once.
    if http_routes_served {
        apps = apps.owns(Api::<app::gateway::HttpRoute>::all(client.clone()), owned);
    }
    let app_controller = apps
        .reconcile_on(turns::unless_waiting(child_watches.wakes, app_turns.clone()))
        .reconcile_on(turns::unless_waiting(artifact_changes, app_turns.clone()))
        .reconcile_on(turns::unless_waiting(pod_changes, app_turns.clone()))
        .reconcile_all_on(policy_changes)
        .reconcile_on(turns::unless_waiting(nudged, app_turns))
        .shutdown_on_signal()
        .run(app::reconcile, app::error_policy, app_ctx)
        .for_each(log_result);
    // Not forever: apps without hosts (most) must not wait on a permission only
    // hosts need (an install whose RBAC lags the operator).
    let app_controller = async move {
        match tokio::time::timeout(Duration::from_secs(60), ingresses.wait_until_ready()).await {
            Ok(Ok(())) => {}
            _ => warn!(
                "Ingresses could not be listed: hosts routed by Ingresses no app owns are not seen until they can"
            ),
        }
        if http_routes_served {
            match tokio::time::timeout(Duration::from_secs(60), http_routes.wait_until_ready()).await {
                Ok(Ok(())) => {}
                _ => warn!(
                    "HTTPRoutes could not be listed: hosts routed by HTTPRoutes no app owns are not seen until they can"
                ),
            }
        }
        app_controller.await
    };

    let result = tokio::select! {
        _ = futures::future::join(artifact_controller, app_controller) => {
            info!("aether-operator stopped");
            Ok(())
        }
        _ = lost => Err(anyhow::anyhow!("lost the leader Lease: exiting so that another replica takes over")),
        r = server => Err(anyhow::anyhow!("the metrics server stopped: {r:?}")),
    };
    // Hand the Lease over now rather than letting a successor wait for it to expire:
    // closing the receiver makes the lease task release it.
    if let Some((rx, task)) = leadership {
        drop(rx);
        let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
    }
    result
}

/// SIGTERM (the kubelet stopping the pod) or SIGINT.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        () = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

async fn log_result<T: std::fmt::Debug, E: std::fmt::Display>(result: Result<T, E>) {
    if let Err(e) = result {
        warn!(error = %e, "reconcile error");
    }
}

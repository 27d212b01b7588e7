//! `aether dev`: every save served by the running pods, without new pods.
//!
//! 1. A normal push, then the app is switched to dev-hot mode (`spec.devHot`, under
//!    the field manager `aether-dev`), which rolls its pods once.
//! 2. On each save, only the app layer is packed and signed, and the whole update (a
//!    signed manifest and the layer) goes to every running pod through the API
//!    server's port-forward (`pods/portforward`); each pod verifies it as its fetch
//!    container would and swaps the process (see the runtime's `hot` module).
//! 3. Once saves pause for a second, the latest update is uploaded and recorded as
//!    the app's release (`spec.artifactRef`, marked swapped so nothing rolls), so a
//!    pod created later starts on it. A change of dependencies, Node or start command cannot be swapped
//!    in: it is pushed and rolled out, and `aether dev` says so.
//! 4. Ctrl-C waits for the last upload, and, if `aether dev` switched dev-hot mode
//!    on, switches it off: the app is left on its last release, as after a push.
//!
//! Rights needed (the aether-editor role): what `aether push` needs, plus pods
//! `list` and `pods/portforward` `create`. Nothing is written to the pods: which
//! code a pod runs, only the pod knows ([`ask`] with [`hot::query`]).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aether_artifact::hot::{self, Header, Reply};
use aether_crds::pod::{DEV_HOT_BASE_ANNOTATION, HOT_SWAPPED_ANNOTATION};
use aether_crds::{AetherApp, AetherArtifact};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

use crate::args::{DevArgs, GlobalArgs, PushArgs};
use crate::errors::CliError;
use crate::pack::PackOutcome;
use crate::printer::Printer;

/// Field manager of dev-hot mode and of the releases `aether dev` records.
pub const FIELD_MANAGER: &str = "aether-dev";
/// Saves closer together than this are one update.
const SETTLE: Duration = Duration::from_millis(15);
/// How long a pod may take to verify and start an update.
const SWAP_TIMEOUT: Duration = Duration::from_secs(40);

pub async fn run(args: &DevArgs, global: &GlobalArgs, printer: &Printer) -> Result<(), CliError> {
    let (client, namespace) = crate::cluster::connect(global).await?;
    let global = GlobalArgs {
        namespace: Some(namespace.clone()),
        ..global.clone()
    };
    let timeout = args.timeout;
    let push_args = PushArgs {
        pack: args.pack.clone(),
        no_deploy: false,
        wait: true,
        no_wait: false,
        timeout: args.timeout,
        storage: args.storage,
        hosts: Vec::new(),
        tls_secret: None,
        preview: None,
        ttl: std::time::Duration::ZERO,
    };
    let pushed = super::push::run(&push_args, &global, printer).await?;
    let app = pushed.app.clone();
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), &namespace);
    let was_dev = apps
        .get(&app)
        .await
        .map_err(|e| crate::cluster::kube_error(e, "get", "aetherapps", &namespace))?
        .spec
        .dev_hot;
    if !was_dev {
        printer.info(format!("Switching {app} to dev-hot mode (its pods roll once)"));
    }
    // From here on, Ctrl-C (even during the waits below) ends the session cleanly:
    // dev-hot mode is switched off again.
    let mut stop = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(CliError::io("listening for Ctrl-C"))?;
    record(&apps, &app, &pushed.artifact, false, &namespace).await?;
    let dev_pods = |p: &Pod| p.annotations().contains_key(DEV_HOT_BASE_ANNOTATION);
    await_ready(&apps, &app, timeout).await?;
    super::deploy::await_routed(
        &client,
        &namespace,
        &app,
        ("dev-hot pods", &dev_pods),
        timeout,
        printer,
    )
    .await?;

    let dir = args
        .pack
        .dir
        .canonicalize()
        .map_err(CliError::io("reading the project folder"))?;
    let (mut project, mut changes) = ProjectWatch::new(&dir)?;
    printer.info(format!(
        "Watching {} for {app} in {namespace}: saves are served by the running pods (Ctrl-C to stop)",
        dir.display()
    ));
    let quiet = Printer::new(global.output, true);
    let (releases, latest) = tokio::sync::watch::channel(None::<(PackOutcome, bool)>);
    let mut session = Session {
        client: client.clone(),
        namespace: namespace.clone(),
        app: app.clone(),
        deps_key: super::pack::request(&args.pack, &global, &quiet)?.deps_key,
        remote: None,
        serving: pushed.digest.parse().ok(),
        releases,
        spares: Spares::default(),
        spares_used: Default::default(),
        printer,
    };
    let spare_keeper = tokio::spawn(keep_spares(
        Api::namespaced(client.clone(), &namespace),
        app.clone(),
        session.spares.clone(),
        session.spares_used.clone(),
    ));

    let recorder = tokio::spawn(recorder(
        client.clone(),
        namespace.clone(),
        app.clone(),
        args.storage,
        timeout,
        latest,
    ));
    loop {
        tokio::select! {
            _ = stop.recv() => break,
            Some(()) = changes.recv() => {
                // Editors write a file in several steps: take them as one save.
                tokio::time::sleep(SETTLE).await;
                while changes.try_recv().is_ok() {}
                project.rescan();
                if let Err(e) = session.update(args, &global, &push_args, &quiet).await {
                    printer.warn(format!("{e}"));
                }
            }
        }
    }

    printer.info("Stopping: recording the last update as the app's release");
    spare_keeper.abort();
    drop(session);
    let _ = recorder.await;
    // The last release recorded: a swapped-in save or a rollout's push.
    let artifact = apps
        .get(&app)
        .await
        .map_err(|e| crate::cluster::kube_error(e, "get", "aetherapps", &namespace))?
        .spec
        .artifact_ref
        .name;
    if !was_dev {
        // Hand dev-hot mode back: `aether-dev` no longer sets it, so it is off again
        // and the pods roll to a plain release of the same code.
        let body = serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherApp", "metadata": {"name": app},
            "spec": {"artifactRef": {"name": artifact}},
        });
        apps.patch(
            &app,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| crate::cluster::kube_error(e, "apply", "aetherapps", &namespace))?;
        let follow = super::deploy::Follow {
            timeout,
            repaired_at: None,
            artifact_verified_at: None,
        };
        let target = super::deploy::Target::default();
        super::deploy::deploy(
            client,
            &namespace,
            (&app, &artifact),
            target,
            Some(follow),
            printer,
        )
        .await?;
    }
    printer.info(format!("{app} runs {artifact}, a retained release"));
    Ok(())
}

/// One `aether dev` run's view of the app.
struct Session<'a> {
    client: Client,
    namespace: String,
    app: String,
    /// The dependencies the pods run: another key needs a rollout.
    deps_key: String,
    /// Where they come from when this machine has not installed them.
    remote: Option<crate::pack::RemoteDeps>,
    /// The code the pods were last given.
    serving: Option<aether_artifact::Digest>,
    /// To the recorder: the latest swapped-in update (None after a rollout: nothing
    /// older may be recorded over the release it pushed).
    /// With it: whether every pod took it (else recording it rolls them).
    releases: tokio::sync::watch::Sender<Option<(PackOutcome, bool)>>,
    /// Connections to the pods opened ahead of the next save.
    spares: Spares,
    /// Tells [`keep_spares`] that spares were used.
    spares_used: std::sync::Arc<tokio::sync::Notify>,
    printer: &'a Printer,
}

impl Session<'_> {
    /// Pack and swap in the project as it is now, and have it recorded as the app's
    /// release.
    async fn update(
        &mut self,
        args: &DevArgs,
        global: &GlobalArgs,
        push_args: &PushArgs,
        quiet: &Printer,
    ) -> Result<(), CliError> {
        let started = Instant::now();
        let mut request = super::pack::request(&args.pack, global, quiet)?;
        if request.deps_key != self.deps_key {
            return self.roll_out("the dependencies changed", push_args, global).await;
        }
        // As `aether push` on a clean machine: the deps layer in storage, not a new
        // install, when this machine has none for the key.
        if !crate::install::is_installed(&request.deps_key, &request.cache_dir) {
            if self.remote.is_none() {
                let artifacts: Api<AetherArtifact> = Api::namespaced(self.client.clone(), &self.namespace);
                self.remote = super::push::remote_deps(&artifacts, &request.app, &request.deps_key)
                    .await
                    .map_err(|e| crate::cluster::kube_error(e, "list", "aetherartifacts", &self.namespace))?;
            }
            request.remote_deps = self.remote.clone();
        }
        let packed = tokio::task::block_in_place(|| crate::pack::pack(&request, quiet))?;
        let pack_ms = started.elapsed().as_millis();
        if self.serving.as_ref() == Some(&packed.digest) {
            // A save that changed nothing the app is made of (or an ignored file).
            return Ok(());
        }
        let blobs = packed.out.join("blobs").join("sha256");
        let read = |digest: &aether_artifact::Digest| {
            std::fs::read(blobs.join(digest.hex())).map_err(CliError::io("reading a packed blob"))
        };
        let manifest = read(&packed.digest)?;
        let app_layer = packed
            .layers
            .iter()
            .find(|l| l.name == "app")
            .ok_or_else(|| CliError::io("packing")(std::io::Error::other("no app layer")))?;
        if app_layer.size > hot::MAX_APP_LAYER_BYTES {
            let why = format!(
                "the app layer is {}, more than a dev-hot pod takes ({})",
                crate::pack::human_bytes(app_layer.size),
                crate::pack::human_bytes(hot::MAX_APP_LAYER_BYTES)
            );
            return self.roll_out(&why, push_args, global).await;
        }
        let header = Header {
            manifest: String::from_utf8_lossy(&manifest).into_owned(),
            signature_key_id: packed.signature.as_ref().map(|s| s.key_id.clone()),
            signature: packed.signature.as_ref().map(|s| s.value.clone()),
        };
        let update = hot::encode(&header, &read(&app_layer.digest)?);

        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &self.namespace);
        let running = running_pods(&pods, &self.app).await?;
        if running.is_empty() {
            self.printer
                .warn("no running pod of the app to update; recorded for the next one");
            self.releases.send_replace(Some((packed, false)));
            return Ok(());
        }
        let swaps = running
            .iter()
            .map(|name| send_update(&pods, &self.spares, name, &update));
        let replies = futures::future::join_all(swaps).await;
        self.spares_used.notify_one();
        let short = &packed.digest.hex()[..12];
        if let Some((_, r)) = replies.iter().find(|(_, r)| r.reason == hot::NEEDS_ROLLOUT) {
            let why = r.message.clone();
            return self.roll_out(&why, push_args, global).await;
        }
        let mut swapped = 0;
        for (pod, reply) in &replies {
            if reply.ok {
                swapped += 1;
            } else {
                self.printer.warn(format!(
                    "pod {pod} refused {short}: {}: {}",
                    reply.reason, reply.message
                ));
            }
        }
        if swapped == 0 {
            return Ok(());
        }
        self.serving = Some(packed.digest);
        let slowest = replies.iter().map(|(_, r)| r.millis).max().unwrap_or(0);
        self.printer.info(format!(
            "{short} served by {swapped} of {} pod(s) in {} ms (pack {pack_ms} ms, slowest pod {slowest} ms)",
            replies.len(),
            started.elapsed().as_millis()
        ));
        let everywhere = swapped == replies.len();
        if !everywhere {
            self.printer
                .warn("not every pod took it: once recorded, the pods roll to it");
        }
        self.releases.send_replace(Some((packed, everywhere)));
        Ok(())
    }

    /// What cannot be swapped in is pushed: the pods roll.
    async fn roll_out(
        &mut self,
        why: &str,
        push_args: &PushArgs,
        global: &GlobalArgs,
    ) -> Result<(), CliError> {
        self.printer
            .info(format!("{why}: pushing a new release (the pods roll)"));
        self.releases.send_replace(None);
        let pushed = super::push::run(push_args, global, self.printer).await?;
        let apps: Api<AetherApp> = Api::namespaced(self.client.clone(), &self.namespace);
        record(&apps, &self.app, &pushed.artifact, false, &self.namespace).await?;
        self.deps_key =
            super::pack::request(&push_args.pack, global, &Printer::new(global.output, true))?.deps_key;
        self.remote = None;
        self.serving = pushed.digest.parse().ok();
        Ok(())
    }
}

/// Names of the app's pods that run in dev-hot mode and are not leaving.
async fn running_pods(pods: &Api<Pod>, app: &str) -> Result<Vec<String>, CliError> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={app}"));
    let list = pods
        .list(&lp)
        .await
        .map_err(|e| crate::cluster::kube_error(e, "list", "pods", pods.namespace().unwrap_or_default()))?;
    Ok(list
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.annotations().contains_key(DEV_HOT_BASE_ANNOTATION))
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .map(|p| p.name_any())
        .collect())
}

/// Send `request` (an update, or [`hot::query`]) to the pod's runtime through a
/// port-forward; its answer.
pub async fn ask(pods: &Api<Pod>, pod: &str, request: &[u8], timeout: Duration) -> (String, Reply) {
    let exchange = async {
        let mut connection = Connection::open(pods, pod).await?;
        connection.exchange(request).await
    };
    (pod.to_string(), answer_within(timeout, exchange).await)
}

fn port_forward_failed(message: String) -> Reply {
    Reply {
        ok: false,
        reason: "PortForwardFailed".into(),
        message,
        digest: String::new(),
        millis: 0,
    }
}

async fn answer_within(timeout: Duration, exchange: impl Future<Output = Result<Reply, Reply>>) -> Reply {
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(reply)) | Ok(Err(reply)) => reply,
        Err(_) => Reply {
            message: format!("no answer within {} s", timeout.as_secs()),
            reason: "Timeout".into(),
            ..port_forward_failed(String::new())
        },
    }
}

/// A port-forward to a pod's update port. Opening one (API server, kubelet, then the
/// pod) is most of what an update costs outside the pod, so `aether dev` keeps one
/// open per pod ahead of the next save ([`keep_spares`]).
struct Connection {
    forwarder: kube::api::Portforwarder,
    stream: Option<tokio::io::DuplexStream>,
    opened: Instant,
}

impl Connection {
    async fn open(pods: &Api<Pod>, pod: &str) -> Result<Self, Reply> {
        let mut forwarder = pods
            .portforward(pod, &[hot::PORT])
            .await
            .map_err(|e| port_forward_failed(e.to_string()))?;
        let stream = forwarder.take_stream(hot::PORT);
        if stream.is_none() {
            forwarder.abort();
            return Err(port_forward_failed("no stream".into()));
        }
        Ok(Self {
            forwarder,
            stream,
            opened: Instant::now(),
        })
    }

    /// One request and its answer (a connection carries one).
    async fn exchange(&mut self, request: &[u8]) -> Result<Reply, Reply> {
        let failed = |e: std::io::Error| port_forward_failed(e.to_string());
        let mut stream = self
            .stream
            .take()
            .ok_or_else(|| port_forward_failed("the connection was used".into()))?;
        stream.write_all(request).await.map_err(failed)?;
        let mut line = String::new();
        tokio::io::BufReader::new(&mut stream)
            .read_line(&mut line)
            .await
            .map_err(failed)?;
        serde_json::from_str::<Reply>(&line).map_err(|_| {
            port_forward_failed(format!(
                "the pod answered {:?} (is it in dev-hot mode?)",
                line.trim()
            ))
        })
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.forwarder.abort();
    }
}

/// How long a spare connection is used: the pod waits 90 s for an update on it.
const SPARE_FRESH: Duration = Duration::from_secs(40);
/// How often spares are checked (pods come and go, spares age).
const SPARE_CHECK: Duration = Duration::from_secs(10);

/// Connections opened ahead of the next save, by pod.
type Spares = std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Connection>>>;

/// Keep a fresh spare connection to each running dev-hot pod of the app; `wake`
/// after spares were used.
async fn keep_spares(pods: Api<Pod>, app: String, spares: Spares, wake: std::sync::Arc<tokio::sync::Notify>) {
    loop {
        if let Ok(running) = running_pods(&pods, &app).await {
            let missing: Vec<String> = {
                let mut spares = spares.lock().unwrap_or_else(|e| e.into_inner());
                spares.retain(|pod, c| running.contains(pod) && c.opened.elapsed() < SPARE_FRESH);
                running.into_iter().filter(|p| !spares.contains_key(p)).collect()
            };
            for pod in missing {
                let opening = tokio::time::timeout(Duration::from_secs(10), Connection::open(&pods, &pod));
                if let Ok(Ok(connection)) = opening.await {
                    spares
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(pod, connection);
                }
            }
        }
        tokio::select! {
            () = tokio::time::sleep(SPARE_CHECK) => {}
            () = wake.notified() => {}
        }
    }
}

/// Send an update to `pod`, on its spare connection if it has a fresh one (again on
/// a new one if that broke before answering).
async fn send_update(pods: &Api<Pod>, spares: &Spares, pod: &str, update: &[u8]) -> (String, Reply) {
    let spare = spares
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(pod)
        .filter(|c| c.opened.elapsed() < SPARE_FRESH);
    if let Some(mut connection) = spare {
        let reply = answer_within(SWAP_TIMEOUT, connection.exchange(update)).await;
        if reply.reason != "PortForwardFailed" {
            return (pod.to_string(), reply);
        }
    }
    ask(pods, pod, update, SWAP_TIMEOUT).await
}

/// Point the app at `artifact` in dev-hot mode; `swapped`: its pods already run it.
async fn record(
    apps: &Api<AetherApp>,
    app: &str,
    artifact: &str,
    swapped: bool,
    namespace: &str,
) -> Result<(), CliError> {
    let mut metadata = serde_json::json!({"name": app});
    if swapped {
        metadata["annotations"] = serde_json::json!({HOT_SWAPPED_ANNOTATION: artifact});
    }
    let body = serde_json::json!({
        "apiVersion": "aether.dev/v1alpha1",
        "kind": "AetherApp",
        "metadata": metadata,
        "spec": {"devHot": true, "artifactRef": {"name": artifact}},
    });
    apps.patch(
        app,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| crate::cluster::kube_error(e, "apply", "aetherapps", namespace))?;
    Ok(())
}

/// Wait until the operator reports the app Ready for its current generation.
async fn await_ready(apps: &Api<AetherApp>, app: &str, timeout: Duration) -> Result<(), CliError> {
    let generation = apps
        .get(app)
        .await
        .map_err(|e| {
            crate::cluster::kube_error(e, "get", "aetherapps", apps.namespace().unwrap_or_default())
        })?
        .metadata
        .generation
        .unwrap_or(0);
    crate::cluster::wait_for(apps, app, timeout, "the app's dev-hot pods", |a| {
        let status = a.status.as_ref()?;
        let observed = status.observed_generation.unwrap_or(0) >= generation;
        let ready = aether_crds::condition::is_true(&status.conditions, aether_crds::condition::READY);
        (observed && ready).then_some(())
    })
    .await
}

/// How long saves must pause before the latest is recorded.
const RECORD_QUIET: Duration = Duration::from_secs(1);

/// Upload and record the latest swapped-in update once saves pause, one at a time: a
/// pod created later starts on it.
async fn recorder(
    client: Client,
    namespace: String,
    app: String,
    storage: crate::args::StorageMode,
    timeout: Duration,
    mut latest: tokio::sync::watch::Receiver<Option<(PackOutcome, bool)>>,
) {
    let artifacts: Api<AetherArtifact> = Api::namespaced(client.clone(), &namespace);
    let apps: Api<AetherApp> = Api::namespaced(client, &namespace);
    let quiet = Printer::new(crate::args::OutputFormat::Human, true);
    while latest.changed().await.is_ok() {
        // Saves come in bursts: record once they pause (or the session ends), so
        // uploading and verifying one does not slow swapping in the next, and only
        // the last of a burst is uploaded.
        while let Ok(Ok(())) = tokio::time::timeout(RECORD_QUIET, latest.changed()).await {}
        let Some((packed, swapped)) = latest.borrow_and_update().clone() else {
            continue;
        };
        let outcome = async {
            let published =
                super::push::publish(&artifacts, &namespace, &packed, storage, timeout, &quiet).await?;
            // Something newer came meanwhile (a later save, or a rollout whose
            // release must stay): this one is not the app's release any more.
            let newest = latest.borrow().as_ref().map(|(p, _)| p.digest);
            if newest != Some(packed.digest) {
                return Ok(());
            }
            record(&apps, &app, &published.name, swapped, &namespace).await
        };
        if let Err(e) = outcome.await {
            eprintln!(
                "warning: recording {} as the app's release failed: {e}",
                packed.digest
            );
        }
    }
}

/// The project's folders being watched (not `node_modules`, `.git` or Aether's
/// output); each change sends `()`.
struct ProjectWatch {
    watcher: notify::RecommendedWatcher,
    watched: BTreeSet<PathBuf>,
    dir: PathBuf,
}

impl ProjectWatch {
    fn new(dir: &Path) -> Result<(Self, tokio::sync::mpsc::UnboundedReceiver<()>), CliError> {
        use notify::EventKind;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            let Ok(event) = event else { return };
            if matches!(event.kind, EventKind::Access(_)) || event.paths.iter().all(|p| ignored(p)) {
                return;
            }
            let _ = tx.send(());
        })
        .map_err(|e| CliError::io("watching the project")(std::io::Error::other(e)))?;
        let mut watch = Self {
            watcher,
            watched: BTreeSet::new(),
            dir: dir.to_path_buf(),
        };
        watch.rescan();
        Ok((watch, rx))
    }

    /// Watch folders created since (one watch per folder: a recursive one would
    /// walk node_modules).
    fn rescan(&mut self) {
        use notify::{RecursiveMode, Watcher};
        for d in folders(&self.dir) {
            if !self.watched.contains(&d) && self.watcher.watch(&d, RecursiveMode::NonRecursive).is_ok() {
                self.watched.insert(d);
            }
        }
    }
}

/// `dir` and the folders below it that can hold app code.
fn folders(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                let p = e.path();
                if e.file_type().is_ok_and(|t| t.is_dir()) && !ignored(&p) {
                    out.push(p);
                }
            }
        }
        i += 1;
    }
    out
}

fn ignored(path: &Path) -> bool {
    path.components()
        .any(|c| matches!(c.as_os_str().to_str(), Some("node_modules" | ".git" | ".aether")))
}

//! `supervise` in dev-hot mode (`AETHER_DEV_HOT=true`, set by the operator for an app
//! with `spec.devHot`): new code is swapped into the running pod, no new pod.
//!
//! - The app listens on a loopback port of its own (its `PORT`); this process holds
//!   the app's public port and forwards each connection to the current app process.
//!   A swap starts the new process beside the old one, switches new connections to
//!   it once it accepts them, then stops the old one: no connection is refused.
//! - Updates arrive on 127.0.0.1:[`hot::PORT`] (through the API server's
//!   port-forward only; see [`aether_artifact::hot`]). Each is verified as the fetch
//!   container verifies a release: the manifest's digest, its signature for this
//!   namespace and app under the app's policy, the app layer's digest, and the
//!   hardened unpacker. Only the `app` layer may change; anything else needs a
//!   rollout, and the pod says so.
//! - The verified manifest the pod runs is kept in `/aether/state/manifest.json`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use aether_artifact::hot::{self, Header, Reply};
use aether_artifact::signature::{self, Policy, PublicKey};
use aether_artifact::{Digest, Limits, Manifest, Unpacker};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::Child;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::fetch::{APP_DIR, STATE_DIR, parse_policy};
use crate::health::HealthArgs;
use crate::supervise::{app_command, exit_code, next_signal, signal_streams};

/// The runtime's switch for this mode.
pub const DEV_HOT: &str = "AETHER_DEV_HOT";
/// The reason of a refusal while the operator does not allow updates.
const DEV_HOT_DISABLED: &str = "DevHotDisabled";
/// How long a new process may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a replaced process may take to exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// What the pod checks updates against, from the environment the operator set.
#[derive(Debug, Clone)]
pub struct HotConfig {
    pub namespace: String,
    pub app: String,
    pub policy: Policy,
    pub trusted: Vec<PublicKey>,
    pub max_unpacked_bytes: u64,
    /// The shared volume (`/aether`): the app in `app/`, the state in `state/`.
    pub root: PathBuf,
    /// The app's public port.
    pub port: u16,
    /// The policy file the operator keeps current (see [`current_policy`]).
    pub policy_file: Option<PathBuf>,
}

/// What the operator says now, from its policy file: updates are taken only while
/// the app's release is valid, under the mode and keys it was last validated with.
/// (The pod's env is frozen while an app is invalid; this file is not: kubelet
/// refreshes it within about a minute.) Without the file, the env's policy holds.
fn current_policy(config: &HotConfig) -> Result<(Policy, Vec<PublicKey>), String> {
    let Some(path) = &config.policy_file else {
        return Ok((config.policy, config.trusted.clone()));
    };
    let text = std::fs::read_to_string(path)
        .map_err(|_| "the operator has not allowed updates to this pod (yet)".to_string())?;
    let current: hot::HotPolicy =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if !current.enabled {
        return Err("the app's release is not valid now (its AetherApp status says why)".into());
    }
    let policy = parse_policy(current.mode.as_deref().unwrap_or("enforce"))?;
    let trusted = signature::public_keys_from_pem_bundle(&current.trusted_keys)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((policy, trusted))
}

impl HotConfig {
    pub fn from_env(root: &Path) -> Result<Self, String> {
        let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
        let policy = parse_policy(&var("AETHER_VERIFY_MODE").unwrap_or_else(|_| "enforce".into()))?;
        let trusted =
            signature::public_keys_from_pem_bundle(&std::env::var("AETHER_TRUSTED_KEYS").unwrap_or_default())
                .map_err(|e| format!("AETHER_TRUSTED_KEYS: {e}"))?;
        Ok(Self {
            namespace: var("AETHER_NAMESPACE")?,
            app: var("AETHER_APP")?,
            policy,
            trusted,
            max_unpacked_bytes: var("AETHER_MAX_UNPACKED_BYTES")?
                .parse()
                .map_err(|e| format!("AETHER_MAX_UNPACKED_BYTES: {e}"))?,
            root: root.to_path_buf(),
            policy_file: std::env::var_os("AETHER_HOT_POLICY").map(PathBuf::from),
            port: var("AETHER_PUBLIC_PORT")?
                .parse()
                .map_err(|e| format!("AETHER_PUBLIC_PORT: {e}"))?,
        })
    }
}

/// A running app process.
struct Running {
    child: Child,
    pid: Option<Pid>,
    group: bool,
    port: u16,
}

impl Running {
    fn signal(&self, sig: Signal) {
        if let Some(pid) = self.pid {
            // It may have exited meanwhile; that is reported elsewhere.
            let _ = if self.group {
                killpg(pid, sig)
            } else {
                kill(pid, sig)
            };
        }
    }
}

/// Start the app on a free loopback port.
fn start(argv: &[String], cwd: &Path) -> std::io::Result<Running> {
    let port = std::net::TcpListener::bind(("127.0.0.1", 0))?
        .local_addr()?
        .port();
    let (mut command, group) = app_command(argv)?;
    // The runtime's own settings are not the app's.
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n.starts_with("AETHER_") && n != crate::supervise::ENTRYPOINT_LOCKED)
        {
            command.env_remove(&name);
        }
    }
    command
        .current_dir(cwd)
        .env("PORT", port.to_string())
        .kill_on_drop(false);
    // Each swap starts Node again on mostly the same modules (the dependencies):
    // Node 22+ keeps their compiled code between starts here.
    if std::env::var_os("NODE_COMPILE_CACHE").is_none() {
        command.env("NODE_COMPILE_CACHE", "/tmp/aether-node-compile-cache");
    }
    let child = command
        .spawn()
        .map_err(|e| std::io::Error::new(e.kind(), format!("starting {}: {e}", argv[0])))?;
    let pid = child.id().map(|id| Pid::from_raw(id as i32));
    Ok(Running {
        child,
        pid,
        group,
        port,
    })
}

/// Wait until `running` accepts connections; Err with its exit status if it exits.
async fn accepting(running: &mut Running, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        if TcpStream::connect(("127.0.0.1", running.port)).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = running.child.try_wait() {
            return Err(format!(
                "the new code exited ({status}) before it listened on $PORT"
            ));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the new code did not listen on $PORT within {} s",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Stop a replaced process: TERM, then KILL after the grace period; reaped.
async fn retire(mut old: Running) {
    old.signal(Signal::SIGTERM);
    if tokio::time::timeout(STOP_GRACE, old.child.wait()).await.is_err() {
        old.signal(Signal::SIGKILL);
        let _ = old.child.wait().await;
    }
}

/// A verified, extracted update waiting to be started, and where to answer.
struct Swap {
    digest: Digest,
    received: Instant,
    reply: oneshot::Sender<Reply>,
}

pub async fn run(argv: &[String], config: HotConfig, health: &HealthArgs) -> std::io::Result<u8> {
    let mut streams = signal_streams()?;
    let public = TcpListener::bind(("0.0.0.0", config.port)).await?;
    let updates = TcpListener::bind(("127.0.0.1", hot::PORT)).await?;
    let cwd = std::env::current_dir()?;
    // Probes check the current process itself (the public port accepts at once);
    // the health port is taken before the app could take it.
    let backend = Arc::new(AtomicU16::new(0));
    crate::health::start(health, crate::health::Target::loopback(backend.clone()))?;
    let mut current = start(argv, &cwd)?;
    backend.store(current.port, Ordering::SeqCst);
    tokio::spawn(forward(public, backend.clone()));
    let (swaps, mut swapped) = mpsc::channel::<Swap>(1);
    tokio::spawn(receive(updates, Arc::new(config), swaps));
    loop {
        let received = next_signal(&mut streams);
        tokio::select! {
            status = current.child.wait() => return Ok(exit_code(status?)),
            sig = received => current.signal(sig),
            Some(swap) = swapped.recv() => {
                let reply = match start(argv, &cwd) {
                    Err(e) => failed("AppNotStarted", e.to_string(), &swap),
                    Ok(mut next) => match accepting(&mut next, START_TIMEOUT).await {
                        Err(message) => {
                            tokio::spawn(retire(next));
                            failed("AppNotStarted", format!("{message}; the previous process keeps serving"), &swap)
                        }
                        Ok(()) => {
                            backend.store(next.port, Ordering::SeqCst);
                            tokio::spawn(retire(std::mem::replace(&mut current, next)));
                            Reply {
                                ok: true,
                                reason: hot::SWAPPED.into(),
                                message: "the new code serves".into(),
                                digest: swap.digest.to_string(),
                                millis: swap.received.elapsed().as_millis() as u64,
                            }
                        }
                    },
                };
                let _ = swap.reply.send(reply);
            }
        }
    }
}

fn failed(reason: &str, message: String, swap: &Swap) -> Reply {
    Reply {
        ok: false,
        reason: reason.into(),
        message,
        digest: swap.digest.to_string(),
        millis: swap.received.elapsed().as_millis() as u64,
    }
}

/// The app's public port: each connection goes to the process current when it
/// arrives (retried briefly while a process starts).
async fn forward(listener: TcpListener, backend: Arc<AtomicU16>) {
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let backend = backend.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(5);
            let mut outbound = loop {
                match TcpStream::connect(("127.0.0.1", backend.load(Ordering::SeqCst))).await {
                    Ok(s) => break s,
                    Err(_) if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    Err(_) => return,
                }
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}

/// Updates: each is read in full (within [`READ_TIMEOUT`]; at most
/// [`READING_AT_ONCE`] at a time), then verified, extracted and handed to the main
/// loop one at a time.
async fn receive(listener: TcpListener, config: Arc<HotConfig>, swaps: mpsc::Sender<Swap>) {
    let one_at_a_time = Arc::new(Mutex::new(()));
    let readers = Arc::new(tokio::sync::Semaphore::new(READING_AT_ONCE));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let Ok(reading) = readers.clone().try_acquire_owned() else {
            drop(stream); // busy: `aether dev` sends one update per pod at a time
            continue;
        };
        let (config, swaps, lock) = (config.clone(), swaps.clone(), one_at_a_time.clone());
        tokio::spawn(async move {
            serve_update(stream, &config, &swaps, reading, &lock).await;
        });
    }
}

/// How long sending one update may take.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a connection may wait for an update to start.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Updates read concurrently (each holds its layer in memory until checked): the
/// connection `aether dev` keeps open for its next save, one in use, a query.
const READING_AT_ONCE: usize = 3;

async fn serve_update(
    mut stream: TcpStream,
    config: &HotConfig,
    swaps: &mpsc::Sender<Swap>,
    reading: tokio::sync::OwnedSemaphorePermit,
    one_at_a_time: &Mutex<()>,
) {
    let max_layer = hot::MAX_APP_LAYER_BYTES.min(config.max_unpacked_bytes);
    // A connection `aether dev` opened ahead of its next save waits for it here (it
    // renews the connection sooner); the update then has READ_TIMEOUT to arrive.
    let idle = tokio::time::timeout(IDLE_TIMEOUT, stream.readable()).await;
    let read = match idle {
        Ok(_) => tokio::time::timeout(READ_TIMEOUT, read_update(&mut stream, max_layer)).await,
        Err(_) => Ok(Err(format!("nothing sent within {} s", IDLE_TIMEOUT.as_secs()))),
    };
    let _turn = one_at_a_time.lock().await;
    drop(reading);
    let reply = match read.unwrap_or_else(|_| Err(format!("not sent within {} s", READ_TIMEOUT.as_secs()))) {
        Err(message) => refused("InvalidUpdate", message, None),
        Ok(None) => running(&config.root),
        Ok(Some((header, layer))) => {
            let received = Instant::now();
            let root = config.root.clone();
            let config2 = config.clone();
            let prepared =
                tokio::task::spawn_blocking(move || prepare(&config2, &root, &header, &layer)).await;
            match prepared {
                Err(e) => refused("InvalidUpdate", format!("verification task: {e}"), None),
                Ok(Err(refusal)) => refusal,
                Ok(Ok(digest)) => {
                    let (reply, answer) = oneshot::channel();
                    let swap = Swap {
                        digest,
                        received,
                        reply,
                    };
                    if swaps.send(swap).await.is_err() {
                        refused("AppNotStarted", "the supervisor is stopping".into(), None)
                    } else {
                        answer
                            .await
                            .unwrap_or_else(|_| refused("AppNotStarted", "no answer".into(), None))
                    }
                }
            }
        }
    };
    let mut line = serde_json::to_vec(&reply).unwrap_or_default();
    line.push(b'\n');
    let _ = stream.write_all(&line).await;
    let _ = stream.shutdown().await;
}

fn refused(reason: &str, message: String, digest: Option<&Digest>) -> Reply {
    Reply {
        ok: false,
        reason: reason.into(),
        message,
        digest: digest.map(ToString::to_string).unwrap_or_default(),
        millis: 0,
    }
}

/// The answer to a query: the digest of the manifest the pod runs.
fn running(root: &Path) -> Reply {
    let manifest = std::fs::read(root.join(STATE_DIR).join("manifest.json"))
        .ok()
        .and_then(|b| Manifest::from_json(&b).ok());
    Reply {
        ok: manifest.is_some(),
        reason: hot::RUNNING.into(),
        message: String::new(),
        digest: manifest.map(|m| m.digest().to_string()).unwrap_or_default(),
        millis: 0,
    }
}

/// An update, or None for a query (see [`hot::query`]).
async fn read_update(stream: &mut TcpStream, max_layer: u64) -> Result<Option<(Header, Vec<u8>)>, String> {
    let mut magic = [0u8; hot::MAGIC.len()];
    stream
        .read_exact(&mut magic)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    if &magic != hot::MAGIC {
        return Err("not an Aether dev-hot update".into());
    }
    let len = stream.read_u32().await.map_err(|e| format!("reading: {e}"))?;
    if len == 0 {
        return Ok(None);
    }
    if len > hot::MAX_HEADER_BYTES {
        return Err(format!(
            "header of {len} bytes (at most {})",
            hot::MAX_HEADER_BYTES
        ));
    }
    let mut json = vec![0u8; len as usize];
    stream
        .read_exact(&mut json)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    let header: Header = serde_json::from_slice(&json).map_err(|e| format!("header: {e}"))?;
    let len = stream.read_u64().await.map_err(|e| format!("reading: {e}"))?;
    if len > max_layer {
        return Err(format!("an app layer of {len} bytes (at most {max_layer})"));
    }
    // Grown as bytes arrive: a length alone reserves nothing.
    let mut layer = Vec::with_capacity((len as usize).min(1 << 20));
    (&mut *stream)
        .take(len)
        .read_to_end(&mut layer)
        .await
        .map_err(|e| format!("reading: {e}"))?;
    if layer.len() as u64 != len {
        return Err(format!(
            "the update ended after {} of {len} layer bytes",
            layer.len()
        ));
    }
    Ok(Some((header, layer)))
}

/// Verify the update against the running release and put its app layer in place of
/// the old one. Returns the new digest; the caller starts the new process.
fn prepare(config: &HotConfig, root: &Path, header: &Header, layer: &[u8]) -> Result<Digest, Reply> {
    let manifest = Manifest::from_json(header.manifest.as_bytes())
        .map_err(|e| refused("InvalidUpdate", format!("manifest: {e}"), None))?;
    let digest = manifest.digest();
    let sig = header
        .signature_key_id
        .as_deref()
        .zip(header.signature.as_deref());
    let (policy, trusted) =
        current_policy(config).map_err(|why| refused(DEV_HOT_DISABLED, why, Some(&digest)))?;
    let verdict = signature::check(policy, &trusted, sig, &digest, &config.namespace, &config.app)
        .map_err(|r| refused(r.reason(), r.to_string(), Some(&digest)))?;
    if let signature::Verdict::Unverified(why) = verdict {
        eprintln!("aether-runtime: warning: swapping in unverified code {digest}: {why}");
    }
    let state = root.join(STATE_DIR);
    let current_path = state.join("manifest.json");
    let current = std::fs::read(&current_path)
        .ok()
        .and_then(|b| Manifest::from_json(&b).ok())
        .ok_or_else(|| {
            refused(
                hot::NEEDS_ROLLOUT,
                "the pod does not know which release it runs (started by an older runtime)".into(),
                Some(&digest),
            )
        })?;
    if let Some(what) = needs_rollout(&current, &manifest) {
        return Err(refused(
            hot::NEEDS_ROLLOUT,
            format!("{what} changed: only code can be swapped in"),
            Some(&digest),
        ));
    }
    let app_layer = manifest.layers.iter().find(|l| l.name == "app").ok_or_else(|| {
        refused(
            "InvalidUpdate",
            "the manifest has no app layer".into(),
            Some(&digest),
        )
    })?;
    if layer.len() as u64 != app_layer.size || Digest::of(layer) != app_layer.digest {
        return Err(refused(
            "DigestMismatch",
            format!(
                "the app layer sent is not {} ({} bytes)",
                app_layer.digest, app_layer.size
            ),
            Some(&digest),
        ));
    }
    let next = state.join("next");
    let io = |what: &str, e: std::io::Error| refused("ExtractFailed", format!("{what}: {e}"), Some(&digest));
    if next.exists() {
        std::fs::remove_dir_all(&next).map_err(|e| io("clearing the staging folder", e))?;
    }
    std::fs::create_dir_all(&next).map_err(|e| io("creating the staging folder", e))?;
    let limits = Limits {
        max_total_bytes: config.max_unpacked_bytes,
        deadline: Some(Instant::now() + Duration::from_secs(60)),
        ..Limits::default()
    };
    let unpack = || -> Result<(), aether_artifact::UnpackError> {
        let mut unpacker = Unpacker::new(&next, limits)?;
        unpacker.unpack_layer(layer)?;
        unpacker.finish().map(drop)
    };
    unpack().map_err(|e| refused(e.reason(), format!("extracting: {e}"), Some(&digest)))?;
    let app = root.join(APP_DIR);
    if let Some(p) = conflict(&app, &next).map_err(|e| io("comparing the code", e))? {
        return Err(refused(
            hot::NEEDS_ROLLOUT,
            format!(
                "{} is a folder in the running code and a file in the update",
                p.display()
            ),
            Some(&digest),
        ));
    }
    replace_app(&app, &next).map_err(|e| io("replacing the code", e))?;
    let tmp = state.join(".manifest.json.tmp");
    std::fs::write(&tmp, manifest.to_canonical_json()).map_err(|e| io("recording the manifest", e))?;
    std::fs::rename(&tmp, &current_path).map_err(|e| io("recording the manifest", e))?;
    Ok(digest)
}

/// What differs between the running release and an update, other than the app layer:
/// the dependencies, the Node runtime, the entrypoint or the working directory.
pub fn needs_rollout(current: &Manifest, update: &Manifest) -> Option<&'static str> {
    let deps = |m: &Manifest| m.layers.iter().find(|l| l.name == "deps").map(|l| l.digest);
    if deps(current) != deps(update) || update.layers.len() != current.layers.len() {
        Some("the dependencies")
    } else if current.runtime != update.runtime {
        Some("the Node runtime")
    } else if current.entrypoint != update.entrypoint {
        Some("the start command")
    } else if current.workdir != update.workdir {
        Some("the working directory")
    } else {
        None
    }
}

/// True for a path inside an installed dependency tree: those belong to the deps
/// layer, never to the app layer (the CLI leaves every `node_modules` out of it).
fn in_deps(relative: &Path) -> bool {
    relative.components().any(|c| c.as_os_str() == "node_modules")
}

/// Replace the app layer's files in `app` with those of `next` (extracted by the
/// unpacker): every file and symlink outside `node_modules` is removed, with the
/// folders left empty, then `next`'s entries are moved in. A `node_modules` in `next`
/// is refused before anything is touched. Moves stay on one filesystem (renames).
pub fn replace_app(app: &Path, next: &Path) -> std::io::Result<()> {
    let incoming = walk(next, Path::new(""), false)?;
    if let Some((p, _)) = incoming.iter().find(|(p, _)| in_deps(p)) {
        return Err(std::io::Error::other(format!(
            "the app layer holds {}: dependencies travel in the deps layer",
            p.display()
        )));
    }
    // Old code: everything but the dependency trees (not descended into).
    let old = walk(app, Path::new(""), true)?;
    for (p, is_dir) in old.iter().rev() {
        let path = app.join(p);
        if !is_dir {
            std::fs::remove_file(&path)?;
        } else if std::fs::read_dir(&path)?.next().is_none() {
            std::fs::remove_dir(&path)?;
        }
    }
    for (p, is_dir) in &incoming {
        let to = app.join(p);
        if *is_dir {
            match std::fs::symlink_metadata(&to) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => return Err(std::io::Error::other(format!("{} is not a folder", to.display()))),
                Err(_) => std::fs::create_dir(&to)?,
            }
        } else {
            std::fs::rename(next.join(p), &to)?;
        }
    }
    Ok(())
}

/// A file of the update where the running code has a folder (which may hold
/// dependencies): checked before anything is replaced, so the pod keeps its code.
pub fn conflict(app: &Path, next: &Path) -> std::io::Result<Option<PathBuf>> {
    for (p, is_dir) in walk(next, Path::new(""), false)? {
        let existing = std::fs::symlink_metadata(app.join(&p));
        if !is_dir && existing.is_ok_and(|m| m.is_dir()) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Entries under `dir` (relative, parents before children), leaving out
/// `node_modules` with `skip_deps`; `true` marks folders. Symlinks are entries, never
/// followed.
fn walk(root: &Path, relative: &Path, skip_deps: bool) -> std::io::Result<Vec<(PathBuf, bool)>> {
    let mut out = Vec::new();
    let mut entries = std::fs::read_dir(root.join(relative))?.collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let p = relative.join(entry.file_name());
        if skip_deps && entry.file_name() == "node_modules" {
            continue;
        }
        let is_dir = entry.file_type()?.is_dir();
        out.push((p.clone(), is_dir));
        if is_dir {
            out.extend(walk(root, &p, skip_deps)?);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, p: &str, body: &str) {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, body).unwrap();
    }

    #[test]
    fn new_code_replaces_old_code_and_dependencies_stay() {
        let app = tempfile::tempdir().unwrap();
        let next = tempfile::tempdir().unwrap();
        write(app.path(), "server.js", "old");
        write(app.path(), "lib/gone.js", "old");
        write(app.path(), "node_modules/express/index.js", "dep");
        write(app.path(), "packages/web/node_modules/x/index.js", "dep");
        write(app.path(), "packages/web/index.js", "old");
        write(next.path(), "server.js", "new");
        write(next.path(), "routes/a.js", "new");
        write(next.path(), "packages/web/index.js", "new");
        replace_app(app.path(), next.path()).unwrap();
        let read = |p: &str| std::fs::read_to_string(app.path().join(p)).ok();
        assert_eq!(read("server.js").as_deref(), Some("new"));
        assert_eq!(read("routes/a.js").as_deref(), Some("new"));
        assert_eq!(read("packages/web/index.js").as_deref(), Some("new"));
        assert_eq!(read("lib/gone.js"), None);
        assert!(!app.path().join("lib").exists(), "an emptied folder stays");
        assert_eq!(read("node_modules/express/index.js").as_deref(), Some("dep"));
        assert_eq!(
            read("packages/web/node_modules/x/index.js").as_deref(),
            Some("dep")
        );
    }

    #[test]
    fn a_file_where_the_running_code_has_a_folder_is_found_before_anything_changes() {
        let app = tempfile::tempdir().unwrap();
        let next = tempfile::tempdir().unwrap();
        write(app.path(), "server.js", "old");
        write(app.path(), "packages/web/node_modules/x/index.js", "dep");
        write(next.path(), "server.js", "new");
        write(next.path(), "packages/web", "a file now");
        assert_eq!(
            conflict(app.path(), next.path()).unwrap(),
            Some(PathBuf::from("packages/web"))
        );
        assert_eq!(
            std::fs::read_to_string(app.path().join("server.js")).unwrap(),
            "old"
        );
        std::fs::remove_file(next.path().join("packages/web")).unwrap();
        assert_eq!(conflict(app.path(), next.path()).unwrap(), None);
    }

    #[test]
    fn an_app_layer_carrying_node_modules_is_refused_before_anything_changes() {
        let app = tempfile::tempdir().unwrap();
        let next = tempfile::tempdir().unwrap();
        write(app.path(), "server.js", "old");
        write(app.path(), "node_modules/express/index.js", "dep");
        write(next.path(), "node_modules/express/index.js", "evil");
        assert!(replace_app(app.path(), next.path()).is_err());
        assert_eq!(
            std::fs::read_to_string(app.path().join("server.js")).unwrap(),
            "old"
        );
        assert_eq!(
            std::fs::read_to_string(app.path().join("node_modules/express/index.js")).unwrap(),
            "dep"
        );
    }

    fn manifest(deps: &str, entrypoint: &str) -> Manifest {
        serde_json::from_value(serde_json::json!({
            "schemaVersion": 1, "mediaType": "m",
            "layers": [
                {"name": "deps", "mediaType": "l", "digest": Digest::of(deps.as_bytes()).to_string(), "size": 1, "entries": 1, "filesDigest": Digest::of(b"f").to_string()},
                {"name": "app", "mediaType": "l", "digest": Digest::of(entrypoint.as_bytes()).to_string(), "size": 1, "entries": 1, "filesDigest": Digest::of(b"f").to_string()},
            ],
            "runtime": {"nodeMajor": 22, "platform": "linux/amd64", "libc": "glibc"},
            "entrypoint": ["node", entrypoint],
        }))
        .unwrap()
    }

    #[test]
    fn only_code_changes_are_swapped_in() {
        let running = manifest("a", "server.js");
        assert_eq!(needs_rollout(&running, &manifest("a", "server.js")), None);
        assert_eq!(
            needs_rollout(&running, &manifest("b", "server.js")),
            Some("the dependencies")
        );
        assert_eq!(
            needs_rollout(&running, &manifest("a", "main.js")),
            Some("the start command")
        );
        let mut node24 = manifest("a", "server.js");
        node24.runtime.node_major = 24;
        assert_eq!(needs_rollout(&running, &node24), Some("the Node runtime"));
    }
}

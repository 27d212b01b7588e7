//! `aether-runtime fetch`: the fetch container.
//!
//! It runs beside the app container (`--sidecar`: it stays up once it fetched), so
//! the kubelet starts both at once instead of noticing an init container's exit at
//! its next relist (about a second later); the app's `supervise --code` waits for
//! [`READY_FILE`]. Dev-hot pods keep it as an init container: its termination
//! message says which code the pod started on.
//!
//! Everything it needs comes from the pod template the operator wrote: the manifest
//! (canonical JSON) and its digest, the signature and the trusted public keys; and
//! from the app's fetch Secret, mounted read-only: a presigned download URL per blob
//! (see [`crate::download`]). The pod holds no storage credential; the operator
//! renews the URLs in place, so a pod rescheduled days later still starts.
//!
//! Order matters: nothing is extracted before every check passed. Failures end the
//! container with a distinct exit code and a `Reason: detail` termination message,
//! which Kubernetes shows in the pod status (and `aether status` shows to users).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use aether_artifact::signature::{self, Policy, PolicyRefusal, PublicKey, Verdict};
use aether_artifact::{Digest, Limits, Manifest, UnpackError, Unpacker};
use aether_storage::StorageError;

use crate::download;

/// Where, under `--into`, the app is extracted and the runtime copies itself.
pub const APP_DIR: &str = "app";
/// Under `--into`: `manifest.json`, the verified manifest of the code in `app/` (which
/// dev-hot updates compare against and replace).
pub const STATE_DIR: &str = "state";
/// In the fetch Secret: the release to fetch, as JSON ([`Release`]), when the pod
/// template does not name one (dev-hot mode, where new pods start on the latest code
/// without a rollout).
pub const RELEASE_FILE: &str = "release";
pub const BIN_DIR: &str = "bin";
/// Under `--into`: written last (atomically, holding the digest), once the app is
/// verified and extracted. The app starts only then; a restarted sidecar that finds
/// it leaves the running app's tree alone.
pub const READY_FILE: &str = "state/ready";
pub const BINARY_NAME: &str = "aether-runtime";

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// The artifact manifest, canonical JSON (else the fetch Secret's `release`).
    #[arg(long, env = "AETHER_MANIFEST", hide_env_values = true, default_value = "")]
    pub manifest: String,
    /// The digest the manifest must have.
    #[arg(long, env = "AETHER_ARTIFACT_DIGEST", default_value = "")]
    pub digest: String,
    /// Namespace and app the signature must be made for.
    #[arg(long, env = "AETHER_NAMESPACE")]
    pub namespace: String,
    #[arg(long, env = "AETHER_APP")]
    pub app: String,
    /// Signature policy: enforce, warn or off.
    #[arg(long, env = "AETHER_VERIFY_MODE", default_value = "enforce", value_parser = parse_policy)]
    pub verify: Policy,
    #[arg(long, env = "AETHER_SIGNATURE_KEY_ID", default_value = "")]
    pub signature_key_id: String,
    #[arg(long, env = "AETHER_SIGNATURE", default_value = "")]
    pub signature: String,
    /// Trusted public keys, PEM (any number of blocks).
    #[arg(long, env = "AETHER_TRUSTED_KEYS", default_value = "", hide_env_values = true)]
    pub trusted_keys: String,
    /// The mounted fetch Secret: one file per blob, `sha256-<hex>`, holding its URL.
    #[arg(
        long,
        env = "AETHER_DOWNLOADS_DIR",
        default_value = "/var/run/aether/downloads"
    )]
    pub downloads_dir: PathBuf,
    /// Where layers are downloaded (and checked) before extraction: a disk volume.
    #[arg(long, env = "AETHER_SPOOL_DIR", default_value = "/var/run/aether/spool")]
    pub spool_dir: PathBuf,
    /// Bytes the extracted app may take (the operator sizes the volume to match).
    #[arg(long, env = "AETHER_MAX_UNPACKED_BYTES")]
    pub max_unpacked_bytes: Option<u64>,
    /// The shared volume: the app goes to `INTO/app`, this binary to `INTO/bin`.
    #[arg(long, default_value = "/aether")]
    pub into: PathBuf,
    /// Give up after this long, retries included.
    #[arg(long, env = "AETHER_FETCH_DEADLINE_SECONDS", default_value_t = 300)]
    pub deadline_seconds: u64,
    /// Keep running after a successful fetch, until SIGTERM (beside the app, in a pod
    /// whose containers restart).
    #[arg(long)]
    pub sidecar: bool,
    /// Where Kubernetes reads the container's termination message.
    #[arg(long, env = "AETHER_TERMINATION_LOG", default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,
}

pub fn parse_policy(s: &str) -> Result<Policy, String> {
    match s.to_ascii_lowercase().as_str() {
        "enforce" => Ok(Policy::Enforce),
        "warn" => Ok(Policy::Warn),
        "off" => Ok(Policy::Off),
        _ => Err(format!("{s}: expected enforce, warn or off")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("the manifest does not have digest {expected} (it has {actual})")]
    ManifestMismatch { expected: Digest, actual: Digest },
    #[error(transparent)]
    Signature(#[from] PolicyRefusal),
    #[error("{0}")]
    Storage(#[from] StorageError),
    #[error("extracting: {0}")]
    Unpack(#[from] UnpackError),
    #[error("preparing {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("not done within {0} s")]
    Deadline(u64),
}

impl FetchError {
    /// CamelCase reason: the first word of the termination message.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Config(_) => "InvalidConfiguration",
            Self::ManifestMismatch { .. } => "DigestMismatch",
            Self::Signature(r) => r.reason(),
            Self::Storage(e) => e.reason(),
            Self::Unpack(e) => e.reason(),
            Self::Io { .. } => "ExtractFailed",
            Self::Deadline(_) => "FetchDeadlineExceeded",
        }
    }

    /// Distinct exit codes, so the reason survives even without the message.
    pub fn exit_code(&self) -> u8 {
        match self.reason() {
            "InvalidConfiguration" => 2,
            "ArtifactNotFound" => 10,
            "DigestMismatch" => 11,
            "ArtifactUnsigned" | "SignatureRejected" => 12,
            "StorageUnavailable" | "StorageUnauthorized" | "StorageError" | "StorageNotConfigured" => 13,
            "FetchDeadlineExceeded" => 14,
            _ => 15,
        }
    }
}

/// What a successful fetch did, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub verdict: Verdict,
    pub bytes: u64,
    pub files: u64,
    pub download: Duration,
    pub extract: Duration,
}

/// The release named by the fetch Secret (dev-hot mode): what the pod template
/// carries otherwise.
pub use aether_artifact::hot::Release;

/// Fill the release from the fetch Secret when the template named none.
async fn resolve_release(args: &mut FetchArgs) -> Result<(), FetchError> {
    if !args.manifest.is_empty() {
        return Ok(());
    }
    let path = args.downloads_dir.join(RELEASE_FILE);
    let bytes = tokio::fs::read(&path)
        .await
        .map_err(|e| FetchError::Config(format!("no manifest given and {}: {e}", path.display())))?;
    let release: Release =
        serde_json::from_slice(&bytes).map_err(|e| FetchError::Config(format!("{}: {e}", path.display())))?;
    args.manifest = release.manifest;
    args.digest = release.digest;
    args.signature_key_id = release.signature_key_id.unwrap_or_default();
    args.signature = release.signature.unwrap_or_default();
    Ok(())
}

pub async fn main(args: FetchArgs) -> ExitCode {
    if !args.sidecar {
        return fetch_once(args).await.unwrap_or_else(|code| code);
    }
    // Beside the app it lives as long as the pod: SIGTERM (as PID 1 it has no default
    // action) ends it at any point.
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            eprintln!("aether-runtime: cannot listen for SIGTERM: {e}");
            return ExitCode::from(2);
        }
    };
    let ready = args.into.join(READY_FILE);
    tokio::select! {
        code = beside(args) => code,
        _ = term.recv() => if ready.exists() { ExitCode::SUCCESS } else { ExitCode::from(143) },
    }
}

/// How long a failed fetch beside the app waits before it exits: the postStart hook
/// of this start may still run, and a container that ends under its hook is
/// reported `FailedPostStartHook` and killed again. (The kubelet's restart back-off
/// is 10 s and more.)
const LINGER_AFTER_FAILURE: Duration = Duration::from_secs(2);

/// The fetch beside the app: fetch unless a run before this restart did, then stay.
async fn beside(args: FetchArgs) -> ExitCode {
    if args.into.join(READY_FILE).exists() {
        eprintln!("aether-runtime: the app was fetched before this restart; leaving it as it is");
    } else {
        // Not before the postStart hook installed the runtime, for the same reason.
        await_install(&args.into.join(BIN_DIR).join(BINARY_NAME)).await;
        if let Err(code) = fetch_once(args).await {
            tokio::time::sleep(LINGER_AFTER_FAILURE).await;
            return code;
        }
    }
    std::future::pending().await
}

/// Fetch, verify and extract, then mark the tree ready; Err: the exit code of the
/// failure (its reason is in the termination log).
async fn fetch_once(mut args: FetchArgs) -> Result<ExitCode, ExitCode> {
    let ready = args.into.join(READY_FILE);
    // An earlier attempt's (an init container runs again when its pod's sandbox is
    // recreated): nothing may start on a tree being replaced.
    remove_if_present(&ready).map_err(|e| failed(&args, &e))?;
    let started = Instant::now();
    resolve_release(&mut args).await.map_err(|e| failed(&args, &e))?;
    let deadline = Duration::from_secs(args.deadline_seconds);
    let result = match tokio::time::timeout(deadline, fetch(&args, started + deadline)).await {
        Ok(result) => result,
        // Extraction (a blocking task) may have finished just as time ran out.
        Err(_) if ready.exists() => {
            eprintln!("aether-runtime: fetched, just at the deadline");
            return Ok(ExitCode::SUCCESS);
        }
        Err(_) => Err(FetchError::Deadline(args.deadline_seconds)),
    };
    let done = result.map_err(|e| failed(&args, &e))?;
    if let Verdict::Unverified(why) = &done.verdict {
        eprintln!("aether-runtime: warning: running an unverified artifact: {why}");
    }
    eprintln!(
        "aether-runtime: fetched {} bytes in {} ms, extracted {} files in {} ms, total {} ms",
        done.bytes,
        done.download.as_millis(),
        done.files,
        done.extract.as_millis(),
        started.elapsed().as_millis()
    );
    // Which code the pod started on, for `aether status` (the pod's status keeps an
    // init container's last message).
    let _ = std::fs::write(&args.termination_log, format!("{FETCHED} {}", args.digest));
    Ok(ExitCode::SUCCESS)
}

/// Wait (at most 30 s: the fetch itself installs the binary too) for `binary`.
async fn await_install(binary: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !binary.exists() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn remove_if_present(path: &Path) -> Result<(), FetchError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(path)(e)),
        _ => Ok(()),
    }
}

/// The fetch container's termination message on success: `Fetched sha256:<hex>`.
pub const FETCHED: &str = "Fetched";

fn failed(args: &FetchArgs, e: &FetchError) -> ExitCode {
    let message = format!("{}: {e}", e.reason());
    eprintln!("aether-runtime: {message}");
    // Best effort: the log line above carries the same text.
    let _ = std::fs::write(&args.termination_log, &message);
    ExitCode::from(e.exit_code())
}

/// The checks that need no network: the manifest is the one the digest names, and
/// the signature satisfies the policy.
pub fn check(args: &FetchArgs) -> Result<(Manifest, Verdict), FetchError> {
    let expected: Digest = args
        .digest
        .parse()
        .map_err(|e| FetchError::Config(format!("--digest: {e}")))?;
    let manifest = Manifest::from_json(args.manifest.as_bytes())
        .map_err(|e| FetchError::Config(format!("--manifest: {e}")))?;
    let actual = manifest.digest();
    if actual != expected {
        return Err(FetchError::ManifestMismatch { expected, actual });
    }
    let trusted: Vec<PublicKey> = signature::public_keys_from_pem_bundle(&args.trusted_keys)
        .map_err(|e| FetchError::Config(format!("--trusted-keys: {e}")))?;
    let sig =
        (!args.signature.is_empty()).then_some((args.signature_key_id.as_str(), args.signature.as_str()));
    let verdict = signature::check(args.verify, &trusted, sig, &expected, &args.namespace, &args.app)?;
    Ok((manifest, verdict))
}

async fn fetch(args: &FetchArgs, deadline: std::time::Instant) -> Result<Fetched, FetchError> {
    let (manifest, verdict) = check(args)?;
    let client = download::client()?;

    let t = Instant::now();
    // All layers at once, each streamed to a spool file and checked against its
    // digest as it arrives.
    std::fs::create_dir_all(&args.spool_dir).map_err(io(&args.spool_dir))?;
    // URLs not there yet are waited for until just before the deadline, so that the
    // error names what was missing rather than only the deadline.
    let url_wait = deadline
        .saturating_duration_since(std::time::Instant::now())
        .saturating_sub(Duration::from_secs(1));
    let downloads = manifest.layers.iter().map(|layer| {
        let client = &client;
        let to = args.spool_dir.join(layer.digest.hex());
        async move {
            let url = download::url_for(&args.downloads_dir, &layer.digest, url_wait).await?;
            download::fetch(client, &url, &layer.digest, layer.size, &to).await?;
            Ok::<_, FetchError>(to)
        }
    });
    let spooled: Vec<PathBuf> = futures::future::try_join_all(downloads).await?;
    let download = t.elapsed();
    let bytes = manifest.layers.iter().map(|l| l.size).sum();

    let t = Instant::now();
    let into = args.into.clone();
    let limits = Limits {
        max_total_bytes: args
            .max_unpacked_bytes
            .unwrap_or(Limits::default().max_total_bytes),
        // Extraction stops at the container's deadline, not after it.
        deadline: Some(deadline),
        ..Limits::default()
    };
    let manifest = manifest.clone();
    let files = tokio::task::spawn_blocking(move || {
        let layers = spooled
            .iter()
            .map(|p| std::fs::File::open(p).map(std::io::BufReader::new).map_err(io(p)))
            .collect::<Result<Vec<_>, _>>()?;
        let files = extract(&into, layers, limits).and_then(|files| {
            record(&into, &manifest)?;
            mark_ready(&into, &manifest.digest())?;
            Ok(files)
        });
        // The spool volume is the pod's for its lifetime: give the disk back.
        for p in &spooled {
            let _ = std::fs::remove_file(p);
        }
        files
    })
    .await
    .map_err(|e| FetchError::Config(format!("extraction task: {e}")))??;
    Ok(Fetched {
        verdict,
        bytes,
        files,
        download,
        extract: t.elapsed(),
    })
}

/// Extract verified layers (in manifest order) into a fresh `into/app`, and copy this
/// binary to `into/bin`. An earlier, failed attempt of the fetch container may have
/// left a partial tree: it is removed first. Returns the number of files.
pub fn extract(
    into: &Path,
    layers: impl IntoIterator<Item = impl std::io::Read>,
    limits: Limits,
) -> Result<u64, FetchError> {
    let app = into.join(APP_DIR);
    if app.exists() {
        std::fs::remove_dir_all(&app).map_err(io(&app))?;
    }
    std::fs::create_dir_all(&app).map_err(io(&app))?;
    let mut unpacker = Unpacker::new(&app, limits)?;
    for layer in layers {
        unpacker.unpack_layer(layer)?;
    }
    let summary = unpacker.finish()?;
    install_self(&into.join(BIN_DIR))?;
    Ok(summary.files)
}

/// Keep the verified manifest of what `into/app` holds, in `into/state`.
pub fn record(into: &Path, manifest: &Manifest) -> Result<(), FetchError> {
    let state = into.join(STATE_DIR);
    std::fs::create_dir_all(&state).map_err(io(&state))?;
    let path = state.join("manifest.json");
    std::fs::write(&path, manifest.to_canonical_json()).map_err(io(&path))
}

/// Write [`READY_FILE`] under `into`, atomically: the app may start now.
pub fn mark_ready(into: &Path, digest: &Digest) -> Result<(), FetchError> {
    let path = into.join(READY_FILE);
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, digest.to_string()).map_err(io(&tmp))?;
    std::fs::rename(&tmp, &path).map_err(io(&path))
}

/// Copy the running binary to `dir/aether-runtime` (atomically, 0755), for the main
/// container's `supervise`.
pub fn install_self(dir: &Path) -> Result<(), FetchError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let exe = std::env::current_exe().map_err(io(Path::new("/proc/self/exe")))?;
    // Per process: the fetch container's hook and its fetch may both install.
    let tmp = dir.join(format!(".{BINARY_NAME}.{}.tmp", std::process::id()));
    std::fs::copy(&exe, &tmp).map_err(io(&tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).map_err(io(&tmp))?;
    let dest = dir.join(BINARY_NAME);
    std::fs::rename(&tmp, &dest).map_err(io(&dest))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError {
    let path = path.to_path_buf();
    move |source| FetchError::Io { path, source }
}

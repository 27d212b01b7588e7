//! `aether pack` as a pipeline: install (cached) → pack deps (cached) → build (when
//! the project has a build script) → check the start command → pack app → manifest
//! → SBOM → sign, writing content-addressed blobs to the output folder.
//! Progress goes through [`Reporter`], so this module carries no UI code.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use aether_artifact::layer::{self, LayerStats, PackOptions};
use aether_artifact::manifest::{LayerDescriptor, Manifest, RuntimeDescriptor, SourceDescriptor};
use aether_artifact::signature::SigningKey;
use aether_artifact::{Digest, LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use serde::Serialize;

use crate::errors::CliError;
use crate::install::{self, Installed, Mode, Target, path_with};
use crate::project::{self, Missing, PackageManager, Project};
use crate::sbom;
use crate::tools::{Tool, ToolSpec, tail};

/// Long-running steps, for progress display and timings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Install,
    PackDeps,
    Build,
    PackApp,
    Sbom,
}

impl Phase {
    pub fn label(self) -> &'static str {
        match self {
            Phase::Install => "Installing production dependencies",
            Phase::PackDeps => "Packing dependencies",
            Phase::Build => "Building",
            Phase::PackApp => "Packing app",
            Phase::Sbom => "Writing SBOM",
        }
    }
}

pub trait Reporter {
    fn started(&self, phase: Phase);
    /// `detail` is a short human summary ("cached", "18,479 entries").
    fn finished(&self, phase: Phase, detail: &str);
}

#[derive(Debug)]
pub struct PackRequest {
    pub project: Project,
    /// The package manager, at the release the project pins.
    pub tool: ToolSpec,
    /// Cache key of the production install (the deps layer).
    pub deps_key: String,
    /// Run the project's build script, if it has one.
    pub build: bool,
    pub app: String,
    pub namespace: String,
    pub target: Target,
    pub out_dir: PathBuf,
    pub cache_dir: PathBuf,
    pub signing_key: Option<SigningKey>,
    /// A deps layer already in storage for the same cache key (from a Ready
    /// artifact): used instead of installing when the local cache lacks it.
    pub remote_deps: Option<RemoteDeps>,
}

/// A deps layer (and the SBOM that goes with it) another artifact already stored.
#[derive(Debug, Clone)]
pub struct RemoteDeps {
    pub artifact: String,
    pub layer: LayerDescriptor,
    pub sbom: SbomOut,
}

/// What `aether pack -o json` prints.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PackOutcome {
    pub app: String,
    pub namespace: String,
    /// The artifact digest: sha256 of the manifest.
    pub digest: Digest,
    pub manifest: BlobOut,
    pub layers: Vec<LayerOut>,
    pub sbom: SbomOut,
    pub signature: Option<SignatureOut>,
    pub runtime: Target,
    pub entrypoint: Vec<String>,
    pub package_manager: String,
    /// True when no package manager ran.
    pub install_skipped: bool,
    /// Where the deps layer came from: `installed`, `updated` (npm updated the last
    /// install of the project), `local-cache` or `remote:<artifact>`.
    pub deps_source: String,
    /// Folder holding `blobs/sha256/<hex>` and `artifact.json`.
    pub out: PathBuf,
    pub timings_ms: Timings,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BlobOut {
    pub digest: Digest,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerOut {
    pub name: String,
    pub digest: Digest,
    pub size: u64,
    pub entries: u64,
    /// Bytes of file content before compression.
    pub content_bytes: u64,
    /// True when the packed layer came from the cache.
    pub cached: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SbomOut {
    pub digest: Digest,
    pub size: u64,
    pub media_type: String,
    pub components: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignatureOut {
    pub key_id: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Timings {
    pub install: u64,
    pub pack_deps: u64,
    pub build: u64,
    pub pack_app: u64,
    pub sbom: u64,
    pub total: u64,
}

/// Names never packed into the app layer, wherever they appear: VCS data, secrets
/// (registry tokens live in the rc files), installed dependencies and yarn's own
/// state (the deps layer is the node_modules tree) and Aether's own output.
fn always_excluded(name: &str) -> bool {
    matches!(
        name,
        ".git"
            | "node_modules"
            | ".aether"
            | ".npmrc"
            | ".yarnrc"
            | ".yarnrc.yml"
            | ".yarn"
            | ".pnp.cjs"
            | ".pnp.loader.mjs"
    ) || name.starts_with(".env")
}

pub fn pack(req: &PackRequest, reporter: &dyn Reporter) -> Result<PackOutcome, CliError> {
    let started = Instant::now();
    let mut timings = Timings::default();
    let blobs = req.out_dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).map_err(CliError::io(format!("creating {}", blobs.display())))?;
    let options = PackOptions::default();

    // Where the deps layer comes from: a layer storage already has for this key (when
    // the local cache lacks it), or a local install, packed once per key.
    let key = req.deps_key.clone();
    let t = Instant::now();
    reporter.started(Phase::Install);
    let (local, deps, deps_cached, deps_source) = match &req.remote_deps {
        Some(remote) if !install::is_installed(&key, &req.cache_dir) => {
            reporter.finished(
                Phase::Install,
                &format!("skipped: deps layer of {} reused", remote.artifact),
            );
            timings.install = ms(t);
            reporter.started(Phase::PackDeps);
            (
                None,
                stats_of(&remote.layer),
                true,
                format!("remote:{}", remote.artifact),
            )
        }
        _ => {
            let installed = install::ensure_installed(
                &req.project,
                &req.target,
                &req.tool,
                Mode::Production,
                &key,
                &req.cache_dir,
            )?;
            let detail = match (installed.cached, installed.updated) {
                (true, _) => "cached",
                (false, true) => "done (updated the last install)",
                (false, false) => "done",
            };
            reporter.finished(Phase::Install, detail);
            timings.install = ms(t);
            reporter.started(Phase::PackDeps);
            let t = Instant::now();
            let (stats, cached) = pack_deps(&installed.dir, &blobs, &options)?;
            timings.pack_deps = ms(t);
            let source = match (installed.cached, installed.updated) {
                (true, _) => "local-cache",
                (false, true) => "updated",
                (false, false) => "installed",
            };
            (Some(installed), stats, cached, source.to_string())
        }
    };
    reporter.finished(Phase::PackDeps, &layer_detail(&deps, deps_cached));

    let out_dir = req.out_dir.canonicalize().unwrap_or_else(|_| req.out_dir.clone());
    let project = &req.project;
    let sources = app_paths(&project.root, &out_dir, &project.local_packages)?;
    // With a build, the app layer is packed from the build's folder: the sources
    // plus everything the build wrote, whatever .gitignore says of it.
    let built = match project.build_script().filter(|_| req.build) {
        Some(script) => {
            let t = Instant::now();
            reporter.started(Phase::Build);
            let full_key = install::cache_key(project, &req.target, &req.tool, Mode::Full)?;
            let full = install::ensure_installed(
                project,
                &req.target,
                &req.tool,
                Mode::Full,
                &full_key,
                &req.cache_dir,
            )?;
            let tool = req.tool.ensure(&req.cache_dir)?;
            let dir = build(project, script, &sources, &full, &tool, &req.cache_dir)?;
            let paths = built_paths(dir.path(), &project.local_packages)?;
            reporter.finished(Phase::Build, &format!("{} files", paths.len()));
            timings.build = ms(t);
            Some((dir, paths))
        }
        None => None,
    };
    let (layer_root, paths) = match &built {
        Some((dir, paths)) => (dir.path(), paths),
        None => (project.root.as_path(), &sources),
    };
    check_start(project, paths, local.as_ref())?;

    let t = Instant::now();
    reporter.started(Phase::PackApp);
    let app = write_layer(layer_root, paths, &blobs, &options)?;
    reporter.finished(Phase::PackApp, &layer_detail(&app, false));
    timings.pack_app = ms(t);

    let manifest = Manifest {
        schema_version: 1,
        media_type: MANIFEST_MEDIA_TYPE.into(),
        layers: vec![
            descriptor("deps", &deps, Some(key.clone())),
            descriptor("app", &app, None),
        ],
        runtime: RuntimeDescriptor {
            node_major: req.target.node_major,
            platform: req.target.platform.clone(),
            libc: req.target.libc.clone(),
        },
        entrypoint: req.project.entrypoint.clone(),
        workdir: req.project.workdir(),
        source: source_info(&req.project.dir()),
    };
    let manifest_bytes = manifest.to_canonical_json();
    let digest = Digest::of(&manifest_bytes);
    write_blob(&blobs, &digest, &manifest_bytes)?;

    let t = Instant::now();
    reporter.started(Phase::Sbom);
    let sbom = match (&local, &req.remote_deps) {
        (None, Some(remote)) => remote.sbom.clone(),
        _ => {
            let packages = match (&req.project.manager, &req.project.lockfile, &local) {
                (PackageManager::Npm, Some(lock), _) => sbom::from_npm_lockfile(
                    &fs::read_to_string(lock).map_err(CliError::io("reading the lockfile"))?,
                )?,
                (_, _, Some(installed)) => sbom::from_installed_tree(&installed.dir.join("node_modules")),
                _ => Vec::new(),
            };
            let version = req.project.package_json["version"].as_str().unwrap_or("0.0.0");
            let bytes = sbom::cyclonedx_json(&req.app, version, &packages)?;
            let digest = Digest::of(&bytes);
            write_blob(&blobs, &digest, &bytes)?;
            SbomOut {
                digest,
                size: bytes.len() as u64,
                media_type: sbom::MEDIA_TYPE.into(),
                components: packages.len(),
            }
        }
    };
    reporter.finished(Phase::Sbom, &format!("{} components", sbom.components));
    timings.sbom = ms(t);

    let signature = req.signing_key.as_ref().map(|key| SignatureOut {
        key_id: key.public_key().key_id(),
        value: key.sign(&digest, &req.namespace, &req.app),
    });
    timings.total = ms(started);

    let outcome = PackOutcome {
        app: req.app.clone(),
        namespace: req.namespace.clone(),
        digest,
        manifest: BlobOut {
            digest,
            size: manifest_bytes.len() as u64,
        },
        layers: vec![
            layer_out("deps", &deps, deps_cached, Some(key)),
            layer_out("app", &app, false, None),
        ],
        sbom,
        signature,
        runtime: req.target.clone(),
        entrypoint: req.project.entrypoint.clone(),
        package_manager: req.tool.describe(),
        install_skipped: local.as_ref().is_none_or(|i| i.cached),
        deps_source,
        out: req.out_dir.clone(),
        timings_ms: timings,
    };
    let summary = serde_json::to_vec_pretty(&outcome).expect("the outcome serialises");
    fs::write(req.out_dir.join("artifact.json"), summary).map_err(CliError::io("writing artifact.json"))?;
    Ok(outcome)
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

fn layer_detail(stats: &LayerStats, cached: bool) -> String {
    let cached = if cached { ", cached" } else { "" };
    format!("{} entries, {}{cached}", stats.entries, human_bytes(stats.size))
}

pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

fn descriptor(name: &str, s: &LayerStats, cache_key: Option<String>) -> LayerDescriptor {
    LayerDescriptor {
        name: name.into(),
        media_type: LAYER_MEDIA_TYPE.into(),
        digest: s.digest,
        size: s.size,
        entries: s.entries,
        files_digest: s.files_digest,
        cache_key,
    }
}

/// Layer stats from a descriptor (content size is not recorded there).
fn stats_of(l: &LayerDescriptor) -> LayerStats {
    LayerStats {
        digest: l.digest,
        size: l.size,
        content_bytes: 0,
        entries: l.entries,
        files_digest: l.files_digest,
    }
}

fn layer_out(name: &str, s: &LayerStats, cached: bool, cache_key: Option<String>) -> LayerOut {
    LayerOut {
        name: name.into(),
        digest: s.digest,
        size: s.size,
        entries: s.entries,
        content_bytes: s.content_bytes,
        cached,
        cache_key,
    }
}

/// The deps layer for an install folder, packed once and kept in the cache next to
/// its stats (`layer.json`).
fn pack_deps(
    install_dir: &Path,
    blobs: &Path,
    options: &PackOptions,
) -> Result<(LayerStats, bool), CliError> {
    let meta_path = install_dir.join("layer.json");
    let cached = install_dir.join("layer.tar.zst");
    if let Some(stats) = fs::read(&meta_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<LayerStats>(&b).ok())
        && link_or_copy(&cached, &blobs.join(stats.digest.hex())).is_ok()
    {
        return Ok((stats, true));
    }
    // Every node_modules folder: the root's, and a workspace's packages' own (the
    // install folder holds nothing else but their package.json files), with the
    // folders on the way to them.
    let in_node_modules = |p: &str| p.split('/').any(|part| part == "node_modules");
    let candidates = layer::collect(install_dir, &mut |p, is_dir| {
        in_node_modules(p) || (is_dir && !p.starts_with('.'))
    })?;
    let roots: Vec<&String> = candidates
        .iter()
        .filter(|p| p.rsplit('/').next() == Some("node_modules"))
        .collect();
    let paths: Vec<String> = candidates
        .iter()
        .filter(|p| {
            in_node_modules(p)
                || roots
                    .iter()
                    .any(|r| r.strip_prefix(p.as_str()).is_some_and(|s| s.starts_with('/')))
        })
        .cloned()
        .collect();
    let tmp =
        tempfile::NamedTempFile::new_in(install_dir).map_err(CliError::io("creating the deps layer"))?;
    let stats = layer::pack_layer(install_dir, &paths, tmp.as_file(), options)?;
    tmp.persist(&cached)
        .map_err(|e| CliError::io("saving the deps layer")(e.error))?;
    fs::write(&meta_path, serde_json::to_vec(&stats).expect("serialises"))
        .map_err(CliError::io("saving layer.json"))?;
    link_or_copy(&cached, &blobs.join(stats.digest.hex())).map_err(CliError::io("writing the deps blob"))?;
    Ok((stats, false))
}

/// Put `src` at `dst` unless something is there already: a hard link when both are on
/// one filesystem (instant), else a copy.
fn link_or_copy(src: &Path, dst: &Path) -> std::io::Result<()> {
    if dst.is_file() {
        return Ok(());
    }
    fs::hard_link(src, dst).or_else(|_| fs::copy(src, dst).map(|_| ()))
}

/// The app layer's paths: everything not ignored by `.aetherignore` (or, without
/// one, `.gitignore`) and not [`always_excluded`]. Ignored folders are pruned.
pub fn app_paths(root: &Path, out_dir: &Path, scope: &[String]) -> Result<Vec<String>, CliError> {
    let mut builder = ignore::WalkBuilder::new(root);
    builder
        .hidden(false)
        .parents(false)
        .ignore(false)
        .git_global(false)
        .git_exclude(false)
        .require_git(false);
    if root.join(".aetherignore").is_file() {
        builder
            .git_ignore(false)
            .add_custom_ignore_filename(".aetherignore");
    } else {
        builder.git_ignore(true);
    }
    let out_dir = out_dir.to_path_buf();
    builder.filter_entry(move |e| {
        !always_excluded(&e.file_name().to_string_lossy()) && e.path() != out_dir.as_path()
    });
    walk_paths(root, &builder, scope, "listing the project")
}

/// The sorted relative paths a configured walk of `root` yields, within `scope`.
fn walk_paths(
    root: &Path,
    builder: &ignore::WalkBuilder,
    scope: &[String],
    what: &str,
) -> Result<Vec<String>, CliError> {
    let mut paths = Vec::new();
    for entry in builder.build() {
        let entry = entry.map_err(|e| CliError::io(what)(std::io::Error::other(e.to_string())))?;
        if entry.depth() == 0 {
            continue;
        }
        let rel = entry
            .path()
            .strip_prefix(root)
            .expect("walk stays under the root");
        let rel = rel.to_str().ok_or_else(|| aether_artifact::PackError::NotUtf8 {
            path: entry.path().into(),
        })?;
        if in_scope(rel, scope, entry.file_type().is_some_and(|t| t.is_dir())) {
            paths.push(rel.to_string());
        }
    }
    paths.sort_unstable();
    Ok(paths)
}

/// Whether a path belongs in a workspace package's artifact: the root's own files
/// (configuration builds read, such as a shared tsconfig), the `scope` packages and
/// the folders above them. An empty scope takes everything.
fn in_scope(rel: &str, scope: &[String], is_dir: bool) -> bool {
    scope.is_empty()
        || (!is_dir && !rel.contains('/'))
        || scope.iter().any(|p| {
            rel == p
                || rel.strip_prefix(p.as_str()).is_some_and(|r| r.starts_with('/'))
                || p.strip_prefix(rel).is_some_and(|r| r.starts_with('/'))
        })
}

/// Run the build in a copy of the sources whose node_modules folders point at the
/// full install (dev dependencies included): `prebuild`, `build` and `postbuild`
/// as npm would run them, with node_modules/.bin and the package manager on PATH.
fn build(
    project: &Project,
    script: &str,
    sources: &[String],
    full: &Installed,
    tool: &Tool,
    cache: &Path,
) -> Result<tempfile::TempDir, CliError> {
    let parent = cache.join("builds");
    fs::create_dir_all(&parent).map_err(CliError::io(format!("creating {}", parent.display())))?;
    let dir = tempfile::Builder::new()
        .prefix("build-")
        .tempdir_in(&parent)
        .map_err(CliError::io("creating the build folder"))?;
    for rel in sources {
        copy_entry(&project.root.join(rel), &dir.path().join(rel))
            .map_err(CliError::io(format!("copying {rel}")))?;
    }
    let package_dir = dir.path().join(&project.member);
    let mut bins = Vec::new();
    // Each build gets its own node_modules, hard-linked from the cached install:
    // what the build adds (caches, generated code) stays out of the cache, and the
    // relative links to workspace packages resolve to the sources in the build folder.
    for rel in std::iter::once("").chain(project.members.iter().map(String::as_str)) {
        let installed = full.dir.join(rel).join("node_modules");
        if installed.is_dir() {
            clone_tree(&installed, &dir.path().join(rel).join("node_modules"))
                .map_err(CliError::io("preparing node_modules for the build"))?;
        }
    }
    if !project.member.is_empty() {
        bins.push(package_dir.join("node_modules/.bin"));
    }
    bins.push(dir.path().join("node_modules/.bin"));
    bins.extend(tool.bin_dir.clone());

    let scripts = &project.package_json["scripts"];
    let steps: Vec<&str> = [
        scripts["prebuild"].as_str(),
        Some(script),
        scripts["postbuild"].as_str(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let command = steps.join(" && ");
    let output = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&command)
        .current_dir(&package_dir)
        .env("PATH", path_with(&bins))
        .env("npm_lifecycle_event", "build")
        .env(
            "npm_package_name",
            project.package_json["name"].as_str().unwrap_or_default(),
        )
        .env(
            "npm_package_version",
            project.package_json["version"].as_str().unwrap_or_default(),
        )
        .env("INIT_CWD", &package_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(CliError::io("running the build"))?;
    if !output.status.success() {
        let mut text = output.stdout.clone();
        text.extend_from_slice(&output.stderr);
        return Err(CliError::BuildFailed {
            script: command,
            code: output.status.code().map_or("signal".into(), |c| c.to_string()),
            output: tail(&text, 30),
        });
    }
    Ok(dir)
}

/// Copy a file, folder (not its content) or symlink as it is.
fn copy_entry(src: &Path, dst: &Path) -> std::io::Result<()> {
    let meta = fs::symlink_metadata(src)?;
    if let Some(parent) = dst.parent() {
        fs::create_dir_all(parent)?;
    }
    if meta.is_dir() {
        fs::create_dir_all(dst)
    } else if meta.file_type().is_symlink() {
        std::os::unix::fs::symlink(fs::read_link(src)?, dst)
    } else if meta.is_file() {
        fs::copy(src, dst).map(|_| ())
    } else {
        // Reading a FIFO would block; packing refuses special files anyway.
        Err(std::io::Error::other("not a regular file, folder or symlink"))
    }
}

/// `src` again at `dst`: folders made, files hard-linked (copied across
/// filesystems), symlinks recreated as they are.
fn clone_tree(src: &Path, dst: &Path) -> std::io::Result<()> {
    fs::create_dir_all(dst)?;
    for entry in fs::read_dir(src)? {
        let entry = entry?;
        let (from, to) = (entry.path(), dst.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            clone_tree(&from, &to)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(&from)?, &to)?;
        } else {
            fs::hard_link(&from, &to).or_else(|_| fs::copy(&from, &to).map(|_| ()))?;
        }
    }
    Ok(())
}

/// Everything in the build folder but node_modules and what is never packed.
fn built_paths(dir: &Path, scope: &[String]) -> Result<Vec<String>, CliError> {
    let mut builder = ignore::WalkBuilder::new(dir);
    // .gitignore does not apply to build output; .aetherignore (build caches such as
    // .next/cache or *.tsbuildinfo) does.
    builder
        .standard_filters(false)
        .add_custom_ignore_filename(".aetherignore");
    builder.filter_entry(|e| !always_excluded(&e.file_name().to_string_lossy()));
    walk_paths(dir, &builder, scope, "listing the build output")
}

/// Refuse, before anything is uploaded, a start command whose file or command the
/// artifact lacks. Commands are looked up in the production install's .bin
/// folders; a deps layer reused from storage was checked when it was packed.
fn check_start(project: &Project, paths: &[String], deps: Option<&Installed>) -> Result<(), CliError> {
    let prefix = if project.member.is_empty() {
        String::new()
    } else {
        format!("{}/", project.member)
    };
    // A path under node_modules is the deps layer's (a reused one is trusted).
    let has_file = |f: &str| {
        let rel = format!("{prefix}{}", f.trim_end_matches('/'));
        paths.binary_search(&rel).is_ok()
            || (f.starts_with("node_modules/")
                && deps.is_none_or(|d| d.dir.join(&rel).exists() || d.dir.join(f).exists()))
    };
    let has_bin = |name: &str| {
        deps.is_none_or(|d| {
            [d.dir.join(&project.member), d.dir.clone()]
                .iter()
                .any(|base| base.join("node_modules/.bin").join(name).exists())
        })
    };
    let argv = &project.entrypoint;
    project::check_start(argv, has_file, has_bin).map_err(|missing| {
        let command = argv.last().cloned().unwrap_or_default();
        let command = if argv.first().is_some_and(|a| a == "/bin/sh") {
            command
        } else {
            argv.join(" ")
        };
        let (missing, hint) = match missing {
            Missing::File(f) if project.build_script().is_some() => (
                f,
                "check the build writes it (the build ran in a clean copy of the project), or fix the start script".to_string(),
            ),
            Missing::File(f) => (
                f,
                "add a \"build\" script that produces it, or fix the start script (files ignored by .gitignore or .aetherignore are not packed)".to_string(),
            ),
            Missing::Command(c) => (
                format!("`{c}`"),
                format!("add the package that provides `{c}` to \"dependencies\" (dev dependencies are not installed for production)"),
            ),
        };
        CliError::StartMissing { command, missing, hint }
    })
}

fn write_layer(
    root: &Path,
    paths: &[String],
    blobs: &Path,
    options: &PackOptions,
) -> Result<LayerStats, CliError> {
    let tmp = tempfile::NamedTempFile::new_in(blobs).map_err(CliError::io("creating the app layer"))?;
    let stats = layer::pack_layer(root, paths, tmp.as_file(), options)?;
    tmp.persist(blobs.join(stats.digest.hex()))
        .map_err(|e| CliError::io("saving the app layer")(e.error))?;
    Ok(stats)
}

fn write_blob(blobs: &Path, digest: &Digest, bytes: &[u8]) -> Result<(), CliError> {
    fs::write(blobs.join(digest.hex()), bytes).map_err(CliError::io("writing a blob"))
}

/// The git revision and whether the project folder has uncommitted changes.
fn source_info(root: &Path) -> Option<SourceDescriptor> {
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .arg("-C")
            .arg(root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let revision = git(&["rev-parse", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--", "."]).is_none_or(|s| !s.is_empty());
    Some(SourceDescriptor {
        revision: Some(revision),
        dirty,
    })
}

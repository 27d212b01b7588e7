//! Dependencies, installed with the project's own package manager into a staging
//! copy (never the user's node_modules), cached by what the installed tree depends
//! on: lockfile, dependency fields of every package.json involved, manager and its
//! version, Node major, platform and libc. A code-only change reinstalls nothing.
//! Production installs become the deps layer; full installs (dev dependencies too)
//! serve only the build step and are cached under their own keys.

use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::errors::CliError;
use crate::project::{PackageManager, Project};
use crate::tools::{Tool, ToolSpec, tail};

/// What an install is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Production dependencies only: the deps layer.
    Production,
    /// Dev dependencies too, for the build step; never packed.
    Full,
}

/// The runtime the dependencies are installed for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub node_major: u32,
    pub platform: String,
    pub libc: String,
}

/// Files copied from the project root for the install; `.npmrc` and the yarn rc
/// files carry private registry settings and tokens, so they are used here and
/// never packed.
const INSTALL_INPUTS: [&str; 10] = [
    "package.json",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    "pnpm-workspace.yaml",
    ".pnpmfile.cjs",
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
];

/// Folders the install may need: a berry project's own yarn release and plugins,
/// and patches that yarn's `patch:` protocol or pnpm's patchedDependencies apply.
const INSTALL_INPUT_DIRS: [&str; 4] = [".yarn/releases", ".yarn/plugins", ".yarn/patches", "patches"];

/// Files the managers write next to the tree that record when and where it was
/// installed: not needed to run, and they would make the layer differ per machine.
const INSTALL_RECORDS: [&str; 5] = [
    "node_modules/.modules.yaml",
    "node_modules/.pnpm-workspace-state.json",
    "node_modules/.pnpm-workspace-state-v1.json",
    "node_modules/.yarn-integrity",
    "node_modules/.yarn-state.yml",
];

/// The cache key of the deps layer: hex sha256 over everything the installed tree
/// depends on.
pub fn cache_key(
    project: &Project,
    target: &Target,
    tool: &ToolSpec,
    mode: Mode,
) -> Result<String, CliError> {
    let mut h = Sha256::new();
    // v3: npm installs for the target (npm_config_*), not this machine.
    h.update(b"aether-deps-v3\n");
    h.update(tool.describe());
    if mode == Mode::Full {
        h.update(b"\nfull");
    }
    if let Some(lock) = &project.lockfile {
        h.update(std::fs::read(lock).map_err(CliError::io("reading the lockfile"))?);
    }
    h.update(format!("\nmember {}\n", project.member));
    // Settings that change the tree (.npmrc's legacy-peer-deps, .yarnrc.yml's
    // packageExtensions, pnpm-workspace.yaml's overrides, patches, a yarn release),
    // without the lines that hold credentials: a rotated token reinstalls nothing.
    for name in INSTALL_INPUTS
        .iter()
        .filter(|n| n.starts_with('.') || n.ends_with(".yaml"))
    {
        if let Ok(text) = std::fs::read_to_string(project.root.join(name)) {
            h.update(format!("\n{name}\n"));
            for line in text.lines().filter(|l| !holds_credentials(l)) {
                h.update(line);
                h.update(b"\n");
            }
        }
    }
    for dir in INSTALL_INPUT_DIRS {
        let mut files: Vec<_> = std::fs::read_dir(project.root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
            .map(|e| e.path())
            .collect();
        files.sort();
        for file in files {
            h.update(
                file.strip_prefix(&project.root)
                    .unwrap_or(&file)
                    .to_string_lossy()
                    .as_bytes(),
            );
            h.update(std::fs::read(&file).map_err(CliError::io(format!("reading {}", file.display())))?);
        }
    }
    // Only the fields that change what gets installed, so a version bump or a new
    // script does not force a reinstall; for a workspace, those of every package.
    let mut manifests = vec![(String::new(), project.root_package_json.clone())];
    for member in &project.members {
        let text = std::fs::read_to_string(project.root.join(member).join("package.json"))
            .map_err(CliError::io(format!("reading {member}/package.json")))?;
        manifests.push((member.clone(), serde_json::from_str(&text).unwrap_or_default()));
    }
    for (member, pkg) in &manifests {
        h.update(member);
        for field in [
            "name",
            "dependencies",
            "devDependencies",
            "optionalDependencies",
            "overrides",
            "resolutions",
            "pnpm",
            "workspaces",
        ] {
            if field == "devDependencies" && mode == Mode::Production {
                continue;
            }
            h.update(field);
            h.update(pkg.get(field).map(|v| v.to_string()).unwrap_or_default());
        }
    }
    h.update(format!(
        "\n{}\n{}\n{}",
        target.node_major, target.platform, target.libc
    ));
    Ok(hex(&h.finalize()))
}

/// A registry setting line that carries a secret (`_authToken`, `npmAuthToken`,
/// `_password`, …).
fn holds_credentials(line: &str) -> bool {
    let line = line.to_ascii_lowercase();
    ["_auth", "token", "password", "npmauthident"]
        .iter()
        .any(|s| line.contains(s))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where installs and packed deps layers are cached.
pub fn default_cache_dir() -> PathBuf {
    dirs::cache_dir()
        .unwrap_or_else(std::env::temp_dir)
        .join("aether")
}

/// Does the local cache hold a finished install for `key`?
pub fn is_installed(key: &str, cache: &Path) -> bool {
    cache.join("deps").join(key).join(".complete").is_file()
}

/// A finished install: `dir/node_modules` is the deps layer's content.
#[derive(Debug)]
pub struct Installed {
    pub dir: PathBuf,
    /// True when the cache already had it and nothing ran.
    pub cached: bool,
    /// True when npm updated a copy of this project's previous install instead of
    /// installing from nothing.
    pub updated: bool,
}

/// Install (or find in the cache) the dependencies of `project` for `target`.
/// The package manager is fetched only when an install runs. Native modules are
/// checked once, before the install is cached: the target is part of the key, so a
/// cached install has passed the check.
pub fn ensure_installed(
    project: &Project,
    target: &Target,
    tool: &ToolSpec,
    mode: Mode,
    key: &str,
    cache: &Path,
) -> Result<Installed, CliError> {
    let dir = cache.join("deps").join(key);
    if is_installed(key, cache) {
        return Ok(Installed {
            dir,
            cached: true,
            updated: false,
        });
    }
    let parent = cache.join("deps");
    std::fs::create_dir_all(&parent).map_err(CliError::io(format!("creating {}", parent.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(".install-")
        .tempdir_in(&parent)
        .map_err(CliError::io("creating a staging folder"))?;
    copy_install_inputs(project, staging.path())?;
    let tool = tool.ensure(cache)?;
    let lineage = lineage(project, target, &tool.spec, mode);
    let updated = match previous_install(project, &lineage, cache) {
        Some(previous) => update_install(project, &tool, mode, target, cache, &previous, staging.path())?,
        None => false,
    };
    if !updated {
        run_install(project, &tool, mode, target, cache, staging.path(), false)?;
    }
    // Secrets used for the install must not outlive it.
    for name in [".npmrc", ".yarnrc", ".yarnrc.yml"] {
        let _ = std::fs::remove_file(staging.path().join(name));
    }
    for record in INSTALL_RECORDS {
        let _ = std::fs::remove_file(staging.path().join(record));
    }
    if !staging.path().join("node_modules").is_dir() {
        std::fs::create_dir(staging.path().join("node_modules"))
            .map_err(CliError::io("creating node_modules"))?;
    }
    if mode == Mode::Production {
        check_native_modules(&staging.path().join("node_modules"), target)?;
    }
    std::fs::write(staging.path().join(LINEAGE), &lineage)
        .map_err(CliError::io("recording which project the install is of"))?;
    std::fs::write(staging.path().join(".complete"), key)
        .map_err(CliError::io("marking the install complete"))?;
    let staged = staging.keep();
    match std::fs::rename(&staged, &dir) {
        Ok(()) => {}
        // Another pack finished the same install first: theirs is as good as ours.
        Err(_) if dir.join(".complete").is_file() => {
            let _ = std::fs::remove_dir_all(&staged);
        }
        Err(e) => return Err(CliError::io(format!("moving the install into {}", dir.display()))(e)),
    }
    Ok(Installed {
        dir,
        cached: false,
        updated,
    })
}

/// Next to each finished install: which project, manager, mode and target it is
/// an install of, so a later install of the same project can start from it.
const LINEAGE: &str = ".lineage";

fn lineage(project: &Project, target: &Target, tool: &ToolSpec, mode: Mode) -> String {
    let root = project
        .root
        .canonicalize()
        .unwrap_or_else(|_| project.root.clone());
    let mut h = Sha256::new();
    h.update(b"aether-lineage-v2\n");
    h.update(root.as_os_str().as_encoded_bytes());
    h.update(format!(
        "\n{}\n{}\n{mode:?}\n{}\n{}\n{}",
        project.member,
        tool.describe(),
        target.node_major,
        target.platform,
        target.libc
    ));
    hex(&h.finalize())
}

/// The newest finished install of the same lineage, when npm can update a copy of
/// it: a lockfile (so the result is what `npm ci` makes of it) and no workspaces.
fn previous_install(project: &Project, lineage: &str, cache: &Path) -> Option<PathBuf> {
    let updatable =
        project.manager == PackageManager::Npm && project.lockfile.is_some() && project.members.is_empty();
    if !updatable {
        return None;
    }
    std::fs::read_dir(cache.join("deps"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|dir| std::fs::read_to_string(dir.join(LINEAGE)).is_ok_and(|l| l == lineage))
        .filter_map(|dir| {
            let finished = dir.join(".complete").metadata().ok()?.modified().ok()?;
            Some((finished, dir))
        })
        .max()
        .map(|(_, dir)| dir)
}

/// Install by updating a copy of `previous`'s tree, as a developer's `npm install`
/// after editing package.json does: only the packages that changed are fetched and
/// written (about 1 s instead of 10 s for the example). Equivalent to `npm ci` when
/// the lockfile is in sync with package.json, so anything else (npm rewrote the
/// lockfile, or failed) undoes the attempt and returns false for a clean install,
/// which reports an out-of-sync lockfile as `npm ci` does.
fn update_install(
    project: &Project,
    tool: &Tool,
    mode: Mode,
    target: &Target,
    cache: &Path,
    previous: &Path,
    staging: &Path,
) -> Result<bool, CliError> {
    let Some(lockfile) = project.lockfile.as_ref().and_then(|l| l.file_name()) else {
        return Ok(false);
    };
    let lock = staging.join(lockfile);
    let committed = std::fs::read(&lock).map_err(CliError::io("reading the lockfile"))?;
    let tree = staging.join("node_modules");
    copy_tree(&previous.join("node_modules"), &tree).map_err(CliError::io(format!(
        "copying the install in {}",
        previous.display()
    )))?;
    let ok = run_install(project, tool, mode, target, cache, staging, true).is_ok()
        && std::fs::read(&lock).is_ok_and(|now| now == committed);
    if ok {
        // npm leaves the folders of packages it un-nested behind, empty; `npm ci`
        // never makes an empty node_modules.
        remove_empty_nests(&tree).map_err(CliError::io("tidying node_modules"))?;
        return Ok(true);
    }
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::write(&lock, committed).map_err(CliError::io("restoring the lockfile"))?;
    Ok(false)
}

/// Copy a folder tree: files (with their modes), folders and symlinks as links.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&src, &dst)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else {
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}

/// Remove every empty `node_modules` folder below `tree` (not `tree` itself).
fn remove_empty_nests(tree: &Path) -> std::io::Result<()> {
    // Whether `dir` is empty once its empty nests are gone.
    fn visit(dir: &Path) -> std::io::Result<bool> {
        let mut empty = true;
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if !entry.file_type()?.is_dir() {
                empty = false;
                continue;
            }
            let path = entry.path();
            let nest_empty = visit(&path)?;
            if nest_empty && entry.file_name() == "node_modules" {
                std::fs::remove_dir(&path)?;
            } else {
                empty = false;
            }
        }
        Ok(empty)
    }
    visit(tree).map(drop)
}

/// The root's install inputs, and every workspace package's package.json at its
/// place (the managers need them all to read the lockfile).
fn copy_install_inputs(project: &Project, staging: &Path) -> Result<(), CliError> {
    let copy = |rel: &str| -> Result<(), CliError> {
        let src = project.root.join(rel);
        if src.is_file() {
            let dst = staging.join(rel);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(CliError::io(format!("creating {}", parent.display())))?;
            }
            std::fs::copy(&src, &dst).map_err(CliError::io(format!("copying {rel}")))?;
        }
        Ok(())
    };
    for name in INSTALL_INPUTS {
        copy(name)?;
    }
    for member in &project.members {
        copy(&format!("{member}/package.json"))?;
    }
    for dir in INSTALL_INPUT_DIRS {
        let Ok(entries) = std::fs::read_dir(project.root.join(dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_file()) {
                copy(&format!("{dir}/{}", entry.file_name().to_string_lossy()))?;
            }
        }
    }
    Ok(())
}

/// A workspace package to install for: its folder and its package name.
#[derive(Debug, Clone, Copy)]
pub struct Member<'a> {
    pub path: &'a str,
    pub name: &'a str,
}

/// The install command for a manager, mode and workspace package. `focus` says
/// whether yarn 2+ has `workspaces focus` (built in from yarn 4, a plugin before):
/// without it a berry install keeps dev dependencies. Pure.
pub fn install_args(
    manager: PackageManager,
    mode: Mode,
    frozen: bool,
    member: Option<Member>,
    focus: bool,
) -> Vec<String> {
    let prod = mode == Mode::Production;
    // A build may need the root's dev dependencies (typescript is often only there)
    // and every local package: full installs take the whole workspace.
    let member = member.filter(|_| prod);
    match manager {
        PackageManager::Npm => {
            let mut args = if frozen {
                vec!["ci", "--no-audit", "--no-fund", "--loglevel=error"]
            } else {
                vec!["install", "--no-audit", "--no-fund", "--no-package-lock"]
            };
            if prod {
                args.push("--omit=dev");
            }
            let mut args: Vec<String> = args.into_iter().map(String::from).collect();
            if let Some(m) = member {
                args.extend([
                    format!("--workspace={}", m.path),
                    "--include-workspace-root=false".into(),
                ]);
            }
            args
        }
        PackageManager::YarnClassic => {
            let mut args = vec!["install", "--frozen-lockfile", "--non-interactive", "--silent"];
            if prod {
                args.push("--production");
            }
            args.into_iter().map(String::from).collect()
        }
        // `focus` installs one workspace (or all) and, unlike `install`, can leave
        // dev dependencies out; it takes workspace names, not folders.
        PackageManager::YarnBerry if focus && prod => {
            let target = member.map_or_else(|| "--all".to_string(), |m| m.name.to_string());
            vec!["workspaces".into(), "focus".into(), "--production".into(), target]
        }
        PackageManager::YarnBerry => vec!["install".into()],
        PackageManager::Pnpm => {
            let mut args = vec!["install".to_string(), "--frozen-lockfile".into()];
            if prod {
                args.push("--prod".into());
            }
            if let Some(m) = member {
                // The package and the workspace packages it depends on.
                args.push(format!("--filter={{./{}}}...", m.path));
            }
            args
        }
    }
}

/// npm's install over an existing tree, by the committed lockfile. Pure.
pub fn update_args(mode: Mode) -> Vec<String> {
    let mut args = vec!["install", "--no-audit", "--no-fund", "--loglevel=error"];
    if mode == Mode::Production {
        args.push("--omit=dev");
    }
    args.into_iter().map(String::from).collect()
}

/// Run the install in `dir`; `update`: npm updates the tree already there
/// (`npm install`, keeping the lockfile) instead of replacing it (`npm ci`).
fn run_install(
    project: &Project,
    tool: &Tool,
    mode: Mode,
    target: &Target,
    cache: &Path,
    dir: &Path,
    update: bool,
) -> Result<(), CliError> {
    let member = (!project.member.is_empty()).then(|| Member {
        path: &project.member,
        name: project.package_json["name"].as_str().unwrap_or(&project.member),
    });
    let focus = tool
        .spec
        .version
        .as_deref()
        .is_some_and(|v| !v.starts_with(['2', '3']))
        || std::fs::read_to_string(project.root.join(".yarnrc.yml"))
            .is_ok_and(|t| t.contains("workspace-tools"));
    let mut cmd = tool.command();
    let args = if update {
        update_args(mode)
    } else {
        install_args(project.manager, mode, project.lockfile.is_some(), member, focus)
    };
    cmd.args(args)
        .current_dir(dir)
        .env("CI", "true")
        // A production NODE_ENV would make yarn and pnpm leave out dev dependencies.
        .env_remove("NODE_ENV");
    if let Some(bin) = &tool.bin_dir {
        cmd.env("PATH", path_with(std::slice::from_ref(bin)));
    }
    match project.manager {
        PackageManager::YarnClassic => {
            cmd.env("YARN_CACHE_FOLDER", cache.join("yarn-classic-cache"));
        }
        PackageManager::YarnBerry => {
            // A node_modules tree is what the layer carries, PnP projects included.
            // The release Aether chose runs, not one a yarnPath it refused names.
            cmd.env("YARN_IGNORE_PATH", "1")
                .env("YARN_NODE_LINKER", "node-modules")
                .env(
                    "YARN_ENABLE_IMMUTABLE_INSTALLS",
                    project.lockfile.is_some().to_string(),
                )
                .env("YARN_ENABLE_GLOBAL_CACHE", "false")
                .env("YARN_CACHE_FOLDER", cache.join("yarn-berry-cache"))
                .env("YARN_ENABLE_TELEMETRY", "0");
        }
        PackageManager::Pnpm => {
            cmd.arg(format!("--store-dir={}", cache.join("pnpm-store").display()))
                .arg("--config.confirmModulesPurge=false");
        }
        // Packed dependencies are for the target, not this machine: npm picks the
        // optional platform packages (`os`/`cpu`/`libc` in their package.json, as
        // prebuilt native modules ship) by these. A build step's install runs here.
        PackageManager::Npm if mode == Mode::Production => {
            cmd.envs(npm_target_config(target));
        }
        PackageManager::Npm => {}
    }
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::NoPackageManager {
                manager: project.manager.to_string(),
            });
        }
        Err(e) => return Err(CliError::io(format!("running {}", tool.describe()))(e)),
    };
    if !output.status.success() {
        let mut text = output.stdout.clone();
        text.extend_from_slice(&output.stderr);
        return Err(CliError::InstallFailed {
            manager: tool.describe(),
            code: output.status.code().map_or("signal".into(), |c| c.to_string()),
            output: tail(without_usage(&text), 15),
        });
    }
    Ok(())
}

/// A usage error (npm's `EUSAGE`: "`npm ci` can only install packages when your
/// package.json and package-lock.json … are in sync") is followed by the whole
/// usage text, which would push the reason out of the lines shown: cut it there.
fn without_usage(output: &[u8]) -> &[u8] {
    const USAGE: &[u8] = b"npm error Usage:";
    output
        .windows(USAGE.len())
        .position(|w| w == USAGE)
        .map_or(output, |at| &output[..at])
}

/// `$PATH` with `dirs` in front.
pub fn path_with(dirs: &[PathBuf]) -> std::ffi::OsString {
    let current = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(dirs.iter().cloned().chain(std::env::split_paths(&current))).unwrap_or(current)
}

/// Node's name (`process.arch`) for the target's CPU.
fn node_cpu(target: &Target) -> &'static str {
    match target.platform.as_str() {
        "linux/arm64" => "arm64",
        _ => "x64",
    }
}

/// npm's settings (as `npm_config_*` variables) that select optional packages for
/// `target`'s platform and libc, and the architecture install scripts such as
/// prebuild-install download prebuilt addons for. Pure.
pub fn npm_target_config(target: &Target) -> [(&'static str, String); 4] {
    [
        ("npm_config_os", "linux".into()),
        ("npm_config_cpu", node_cpu(target).into()),
        ("npm_config_arch", node_cpu(target).into()),
        ("npm_config_libc", target.libc.clone()),
    ]
}

/// Whether a package's `os`, `cpu` and `libc` fields (as npm reads them: a list of
/// names, `!name` to exclude) rule the target out: npm may still have installed it
/// (lockfiles without these fields), but Node on the target never loads it. Pure.
pub fn package_excludes(package_json: &serde_json::Value, target: &Target) -> bool {
    let excludes = |field: &str, value: &str| {
        let Some(list) = package_json[field].as_array() else {
            return false;
        };
        let names: Vec<&str> = list.iter().filter_map(|v| v.as_str()).collect();
        let allowed: Vec<&str> = names.iter().copied().filter(|n| !n.starts_with('!')).collect();
        names.contains(&format!("!{value}").as_str()) || (!allowed.is_empty() && !allowed.contains(&value))
    };
    excludes("os", "linux") || excludes("cpu", node_cpu(target)) || excludes("libc", &target.libc)
}

/// The package.json of the package holding `file` (the nearest one above it, below
/// `node_modules`).
fn owning_package(node_modules: &Path, file: &Path) -> Option<serde_json::Value> {
    let dir = file
        .ancestors()
        .skip(1)
        .take_while(|d| *d != node_modules)
        .find(|d| d.join("package.json").is_file())?;
    serde_json::from_slice(&std::fs::read(dir.join("package.json")).ok()?).ok()
}

/// Native addons (`*.node` ELF files) must match the runtime's architecture and libc.
pub fn check_native_modules(node_modules: &Path, target: &Target) -> Result<(), CliError> {
    let wanted_machine = match target.platform.as_str() {
        "linux/arm64" => 183, // EM_AARCH64
        _ => 62,              // EM_X86_64
    };
    let mut stack = vec![node_modules.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            let path = entry.path();
            if ft.is_dir() {
                stack.push(path);
            } else if ft.is_file() && path.extension().is_some_and(|e| e == "node") {
                // A platform package for another target (`@x/addon-linux-x64-musl` next
                // to its `-gnu` twin) is never loaded there.
                if owning_package(node_modules, &path).is_some_and(|p| package_excludes(&p, target)) {
                    continue;
                }
                let Ok(bytes) = std::fs::read(&path) else { continue };
                if let Some((machine, libc)) = elf_facts(&bytes) {
                    // A module that names no C library runs on either.
                    let libc = libc.unwrap_or(target.libc.as_str());
                    if machine != wanted_machine || libc != target.libc {
                        let arch = match machine {
                            62 => "linux/amd64".to_string(),
                            183 => "linux/arm64".to_string(),
                            m => format!("ELF machine {m}"),
                        };
                        let module = path
                            .strip_prefix(node_modules)
                            .unwrap_or(&path)
                            .display()
                            .to_string();
                        return Err(CliError::NativeMismatch {
                            module,
                            found: format!("{arch} ({libc})"),
                            wanted: format!("{} ({})", target.platform, target.libc),
                        });
                    }
                }
            }
        }
    }
    Ok(())
}

/// ELF machine and the C library the file links against, if it names one: glibc's
/// is `libc.so.6` with versioned `GLIBC_*` symbols; musl's is `libc.so` (as musl
/// toolchains link addons), `libc.musl-<arch>.so.1` or its loader `ld-musl-*`.
fn elf_facts(bytes: &[u8]) -> Option<(u16, Option<&'static str>)> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return None;
    }
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
    let libc = if has(b"\0libc.so.6\0") || has(b"\0GLIBC_2.") {
        Some("glibc")
    } else if has(b"ld-musl-") || has(b"\0libc.musl-") || has(b"\0libc.so\0") {
        Some("musl")
    } else {
        None
    };
    Some((machine, libc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npm_installs_optional_packages_for_the_target_not_this_machine() {
        let target = |platform: &str, libc: &str| Target {
            node_major: 20,
            platform: platform.into(),
            libc: libc.into(),
        };
        let config = |t| npm_target_config(&t).map(|(k, v)| format!("{k}={v}"));
        assert_eq!(
            config(target("linux/amd64", "musl")),
            [
                "npm_config_os=linux",
                "npm_config_cpu=x64",
                "npm_config_arch=x64",
                "npm_config_libc=musl"
            ]
        );
        assert_eq!(
            config(target("linux/arm64", "glibc")),
            [
                "npm_config_os=linux",
                "npm_config_cpu=arm64",
                "npm_config_arch=arm64",
                "npm_config_libc=glibc"
            ]
        );
    }

    #[test]
    fn install_commands_per_manager_mode_and_workspace() {
        use PackageManager::*;
        let web = Some(Member {
            path: "apps/web",
            name: "web",
        });
        let args = |m, mode, member, focus| install_args(m, mode, true, member, focus).join(" ");
        assert_eq!(
            args(Npm, Mode::Production, web, true),
            "ci --no-audit --no-fund --loglevel=error --omit=dev --workspace=apps/web --include-workspace-root=false"
        );
        assert_eq!(
            args(Pnpm, Mode::Production, web, true),
            "install --frozen-lockfile --prod --filter={./apps/web}..."
        );
        assert_eq!(
            args(YarnBerry, Mode::Production, web, true),
            "workspaces focus --production web"
        );
        assert_eq!(
            args(YarnBerry, Mode::Production, None, true),
            "workspaces focus --production --all"
        );
        // Builds get the whole workspace, root dev dependencies included.
        assert_eq!(
            args(Npm, Mode::Full, web, true),
            "ci --no-audit --no-fund --loglevel=error"
        );
        assert_eq!(args(Pnpm, Mode::Full, web, true), "install --frozen-lockfile");
        // yarn 2/3 without the workspace-tools plugin has no `focus`.
        assert_eq!(args(YarnBerry, Mode::Production, None, false), "install");
    }

    #[test]
    fn an_npm_usage_error_keeps_its_reason() {
        let mut output = b"npm error code EUSAGE\nnpm error\nnpm error `npm ci` can only install packages when your package.json and package-lock.json are in sync.\nnpm error Missing: is-number@7.0.0 from lock file\nnpm error\nnpm error Clean install a project\nnpm error\n".to_vec();
        output.extend(
            b"npm error Usage:\n"
                .iter()
                .chain(b"npm error [--flag]\n".repeat(40).iter()),
        );
        let shown = tail(without_usage(&output), 15);
        assert!(shown.contains("are in sync"), "{shown}");
        assert!(shown.contains("Missing: is-number@7.0.0"), "{shown}");
        assert!(!shown.contains("--flag"), "{shown}");
        assert_eq!(without_usage(b"npm error 404"), b"npm error 404");
    }

    #[test]
    fn credentials_are_not_part_of_the_cache_key() {
        assert!(holds_credentials("//registry.example/:_authToken=abc"));
        assert!(holds_credentials("  npmAuthToken: abc"));
        assert!(!holds_credentials("legacy-peer-deps=true"));
    }

    #[test]
    fn platform_packages_for_other_targets_are_recognised() {
        let glibc = Target {
            node_major: 20,
            platform: "linux/amd64".into(),
            libc: "glibc".into(),
        };
        let musl = Target {
            libc: "musl".into(),
            ..glibc.clone()
        };
        let musl_pkg = serde_json::json!({"os": ["linux"], "cpu": ["x64"], "libc": ["musl"]});
        assert!(package_excludes(&musl_pkg, &glibc));
        assert!(!package_excludes(&musl_pkg, &musl));
        let not_glibc = serde_json::json!({"libc": ["!glibc"]});
        assert!(package_excludes(&not_glibc, &glibc) && !package_excludes(&not_glibc, &musl));
        let darwin = serde_json::json!({"os": ["darwin"], "cpu": ["arm64"]});
        assert!(package_excludes(&darwin, &musl));
        assert!(package_excludes(&serde_json::json!({"cpu": ["arm64"]}), &glibc));
        // No fields, or empty ones: for every target.
        assert!(!package_excludes(&serde_json::json!({"name": "bcrypt"}), &glibc));
        assert!(!package_excludes(&serde_json::json!({"libc": []}), &glibc));
    }

    #[test]
    fn a_musl_twin_installed_beside_the_glibc_addon_is_not_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(20, 0);
        elf[18] = 62;
        let twins: [(&str, &[u8]); 2] = [("glibc", b"\0libc.so.6\0GLIBC_2.2.5\0"), ("musl", b"\0libc.so\0")];
        for (libc, needed) in twins {
            let pkg = dir.path().join(format!("@node-rs/crc32-linux-x64-{libc}"));
            std::fs::create_dir_all(&pkg).unwrap();
            let fields = serde_json::json!({"os": ["linux"], "cpu": ["x64"], "libc": [libc]});
            std::fs::write(pkg.join("package.json"), fields.to_string()).unwrap();
            std::fs::write(pkg.join("crc32.node"), [&elf[..], needed].concat()).unwrap();
        }
        let glibc = Target {
            node_major: 20,
            platform: "linux/amd64".into(),
            libc: "glibc".into(),
        };
        check_native_modules(dir.path(), &glibc).unwrap();
        let musl = Target {
            libc: "musl".into(),
            ..glibc.clone()
        };
        check_native_modules(dir.path(), &musl).unwrap();
        // Without its package's fields, the musl build is refused for glibc.
        std::fs::write(
            dir.path().join("@node-rs/crc32-linux-x64-musl/package.json"),
            "{}",
        )
        .unwrap();
        let err = check_native_modules(dir.path(), &glibc).unwrap_err();
        assert!(
            err.to_string().contains("crc32-linux-x64-musl/crc32.node"),
            "{err}"
        );
    }

    #[test]
    fn elf_detection() {
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(20, 0);
        elf[18] = 62;
        assert_eq!(elf_facts(&elf), Some((62, None)));
        let with = |names: &[u8]| [&elf[..], names].concat();
        let glibc = Some((62, Some("glibc")));
        let musl = Some((62, Some("musl")));
        assert_eq!(elf_facts(&with(b"\0libc.so.6\0GLIBC_2.2.5\0")), glibc);
        assert_eq!(elf_facts(&with(b"\0libstdc++.so.6\0GLIBC_2.34\0")), glibc);
        // As napi-rs's musl builds link: a bare libc.so.
        assert_eq!(elf_facts(&with(b"\0libgcc_s.so.1\0libc.so\0")), musl);
        assert_eq!(elf_facts(&with(b"\0libc.musl-x86_64.so.1\0")), musl);
        assert_eq!(elf_facts(&with(b"/lib/ld-musl-x86_64.so.1")), musl);
        assert_eq!(elf_facts(b"not elf at all, just text"), None);
    }

    #[test]
    fn a_mismatched_native_module_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let m = dir.path().join("bcrypt/build/Release");
        std::fs::create_dir_all(&m).unwrap();
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(64, 0);
        elf[18] = 183; // arm64
        std::fs::write(m.join("bcrypt_lib.node"), &elf).unwrap();
        let amd64 = Target {
            node_major: 20,
            platform: "linux/amd64".into(),
            libc: "glibc".into(),
        };
        let err = check_native_modules(dir.path(), &amd64).unwrap_err();
        assert!(
            err.to_string().contains("bcrypt/build/Release/bcrypt_lib.node"),
            "{err}"
        );
        let arm64 = Target {
            platform: "linux/arm64".into(),
            ..amd64
        };
        check_native_modules(dir.path(), &arm64).unwrap();
    }
}

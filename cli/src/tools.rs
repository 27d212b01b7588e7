//! The package manager a project pins, run without any global install: yarn and
//! pnpm are fetched once from the npm registry (with the npm that ships with Node,
//! which checks the registry's integrity hashes) into Aether's cache, and run with
//! `node`. npm itself comes with Node.
//!
//! The version is the one `packageManager` names (`pnpm@9.15.9+sha512…`), else the
//! newest release we know for the lockfile's format, so two machines with empty
//! caches run the same tool and produce the same tree.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::errors::CliError;
use crate::project::PackageManager;

/// Releases used when the project pins nothing, by lockfile format.
const YARN_CLASSIC: &str = "1.22.22";
const YARN_BERRY_V3: &str = "3.8.6";
const YARN_BERRY: &str = "4.18.1";
const PNPM_V7: &str = "7.33.7";
const PNPM_V8: &str = "8.15.9";
const PNPM: &str = "9.15.9";

/// Which package manager, at which release: what the cache keys name. Nothing is
/// fetched until [`ToolSpec::ensure`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolSpec {
    pub manager: PackageManager,
    /// `None` for the npm that ships with Node.
    pub version: Option<String>,
    /// A berry project's own release (`.yarnrc.yml` `yarnPath`), run as it is.
    pub yarn_path: Option<PathBuf>,
}

impl ToolSpec {
    /// The manager `project` uses, at the release it pins.
    pub fn for_project(project: &crate::project::Project) -> Self {
        let manager = project.manager;
        let field = project.root_package_json["packageManager"]
            .as_str()
            .or_else(|| project.package_json["packageManager"].as_str());
        let lockfile = project
            .lockfile
            .as_ref()
            .and_then(|l| std::fs::read_to_string(l).ok());
        let yarn_path = (manager == PackageManager::YarnBerry)
            .then(|| yarn_path(&project.root))
            .flatten();
        Self {
            manager,
            version: pinned_version(manager, field, lockfile.as_deref()),
            yarn_path,
        }
    }

    /// `manager@version`, for messages and cache keys.
    pub fn describe(&self) -> String {
        match &self.version {
            Some(v) => format!("{}@{v}", self.manager),
            None => self.manager.to_string(),
        }
    }

    /// The tool, fetched into `cache/tools/` the first time.
    pub fn ensure(&self, cache: &Path) -> Result<Tool, CliError> {
        let (program, prefix, bin_dir) = ensure(
            self.manager,
            self.version.as_deref(),
            self.yarn_path.as_deref(),
            cache,
        )?;
        Ok(Tool {
            spec: self.clone(),
            program,
            prefix,
            bin_dir,
        })
    }
}

/// `yarnPath` from `.yarnrc.yml`, when that file exists in the project.
fn yarn_path(root: &Path) -> Option<PathBuf> {
    let text = std::fs::read_to_string(root.join(".yarnrc.yml")).ok()?;
    let rc: serde_json::Value = serde_yaml::from_str(&text).ok()?;
    let rel = rc.get("yarnPath")?.as_str()?;
    let path = root.join(rel).canonicalize().ok()?;
    (path.starts_with(root) && path.is_file()).then_some(path)
}

/// A package manager ready to run: `program args_prefix... <its own args>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tool {
    /// What runs: manager and release.
    pub spec: ToolSpec,
    program: PathBuf,
    prefix: Vec<OsString>,
    /// A folder holding a `yarn`/`pnpm` shim, put first on PATH for scripts that
    /// call the manager by name.
    pub bin_dir: Option<PathBuf>,
}

impl Tool {
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.prefix);
        cmd
    }

    /// `manager@version`, for messages.
    pub fn describe(&self) -> String {
        self.spec.describe()
    }
}

/// Which release of `manager` to run: the project's `packageManager` pin when it
/// names the same manager, else by lockfile format. Pure.
pub fn pinned_version(
    manager: PackageManager,
    package_manager_field: Option<&str>,
    lockfile_text: Option<&str>,
) -> Option<String> {
    if manager == PackageManager::Npm {
        return None;
    }
    if let Some((name, rest)) = package_manager_field.and_then(|f| f.split_once('@')) {
        let version = rest.split('+').next().unwrap_or(rest);
        // yarn 1 and yarn 2+ write different lockfiles: the lockfile decided which.
        let same = match manager {
            PackageManager::Pnpm => name == "pnpm",
            PackageManager::YarnClassic => name == "yarn" && version.starts_with("1."),
            _ => name == "yarn" && !version.starts_with("1."),
        };
        let plausible = !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        if same && plausible {
            return Some(version.to_string());
        }
    }
    let text = lockfile_text.unwrap_or_default();
    Some(
        match manager {
            PackageManager::YarnClassic => YARN_CLASSIC,
            PackageManager::YarnBerry => match berry_lockfile_version(text) {
                Some(v) if v < 8 => YARN_BERRY_V3,
                _ => YARN_BERRY,
            },
            PackageManager::Pnpm => match pnpm_lockfile_major(text) {
                Some(5) => PNPM_V7,
                Some(6) => PNPM_V8,
                _ => PNPM,
            },
            PackageManager::Npm => unreachable!("returned above"),
        }
        .to_string(),
    )
}

/// `__metadata:\n  version: 8` in a berry lockfile.
fn berry_lockfile_version(text: &str) -> Option<u32> {
    let meta = text.split("__metadata:").nth(1)?;
    let line = meta.lines().find(|l| l.trim_start().starts_with("version:"))?;
    line.split(':').nth(1)?.trim().parse().ok()
}

/// `lockfileVersion: '9.0'` (or 5.4, 6.0) → 9.
fn pnpm_lockfile_major(text: &str) -> Option<u32> {
    let line = text.lines().find(|l| l.starts_with("lockfileVersion:"))?;
    let value = line.split(':').nth(1)?.trim().trim_matches(['\'', '"']);
    value.split('.').next()?.parse().ok()
}

/// The npm package and the script inside it that is the manager's CLI.
fn package_of(manager: PackageManager) -> (&'static str, &'static str, &'static str) {
    match manager {
        PackageManager::YarnClassic => ("yarn", "bin/yarn.js", "yarn"),
        PackageManager::YarnBerry => ("@yarnpkg/cli-dist", "bin/yarn.js", "yarn"),
        PackageManager::Pnpm => ("pnpm", "bin/pnpm.cjs", "pnpm"),
        PackageManager::Npm => ("npm", "bin/npm-cli.js", "npm"),
    }
}

/// How to run `manager` at `version` (from [`pinned_version`]): program, its
/// leading arguments and a shim folder. The release is fetched into `cache/tools/`
/// the first time; a berry project's own `yarnPath` release is used as it is.
fn ensure(
    manager: PackageManager,
    version: Option<&str>,
    yarn_path: Option<&Path>,
    cache: &Path,
) -> Result<(PathBuf, Vec<OsString>, Option<PathBuf>), CliError> {
    let Some(version) = version else {
        return Ok(("npm".into(), Vec::new(), None));
    };
    let (package, script, bin_name) = package_of(manager);
    let (dir, js) = match yarn_path {
        // Keyed by the release file, so two projects' releases never share a shim.
        Some(path) => {
            use sha2::Digest as _;
            let key = sha2::Sha256::digest(path.as_os_str().as_encoded_bytes());
            let key: String = key[..8].iter().map(|b| format!("{b:02x}")).collect();
            (
                cache.join("tools").join(format!("yarnpath-{key}")),
                path.to_path_buf(),
            )
        }
        None => {
            let dir = cache
                .join("tools")
                .join(format!("{}-{version}", package.replace('/', "+")));
            if !dir.join(".complete").is_file() {
                fetch(package, version, &dir)?;
            }
            let js = dir.join("node_modules").join(package).join(script);
            (dir, js)
        }
    };
    let bin_dir = dir.join("bin");
    write_shim(&bin_dir, bin_name, &js)?;
    Ok(("node".into(), vec![js.into_os_string()], Some(bin_dir)))
}

/// `npm install` one package with no dependencies of its own into `dir`, staged
/// and renamed so a half-done fetch is never used.
fn fetch(package: &str, version: &str, dir: &Path) -> Result<(), CliError> {
    let parent = dir.parent().expect("tools dir has a parent");
    std::fs::create_dir_all(parent).map_err(CliError::io(format!("creating {}", parent.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(".fetch-")
        .tempdir_in(parent)
        .map_err(CliError::io("creating a staging folder"))?;
    let spec = format!("{package}@{version}");
    let output = Command::new("npm")
        .args([
            "install",
            "--prefix",
            &staging.path().to_string_lossy(),
            "--no-save",
            "--no-package-lock",
            "--no-audit",
            "--no-fund",
            "--ignore-scripts",
            "--loglevel=error",
            &spec,
        ])
        .env_remove("NODE_ENV")
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => CliError::NoPackageManager {
                manager: "npm".into(),
            },
            _ => CliError::io("running npm")(e),
        })?;
    if !output.status.success() {
        return Err(CliError::ToolFetch {
            tool: spec,
            output: tail(&output.stderr, 10),
        });
    }
    std::fs::write(staging.path().join(".complete"), &spec)
        .map_err(CliError::io("marking the tool fetched"))?;
    let staged = staging.keep();
    if std::fs::rename(&staged, dir).is_err() {
        // Another pack fetched it first.
        let _ = std::fs::remove_dir_all(&staged);
    }
    if dir.join(".complete").is_file() {
        Ok(())
    } else {
        Err(CliError::ToolFetch {
            tool: spec,
            output: format!("{} is incomplete", dir.display()),
        })
    }
}

/// `bin/<name>`: `exec node <js> "$@"`, so scripts that run `yarn …` get this one.
fn write_shim(bin_dir: &Path, name: &str, js: &Path) -> Result<(), CliError> {
    use std::os::unix::fs::PermissionsExt as _;
    let path = bin_dir.join(name);
    // Single-quoted for sh, so no character of the path is special.
    let quoted = js.display().to_string().replace('\'', r"'\''");
    let text = format!("#!/bin/sh\nexec node '{quoted}' \"$@\"\n");
    if std::fs::read_to_string(&path).is_ok_and(|t| t == text) {
        return Ok(());
    }
    std::fs::create_dir_all(bin_dir).map_err(CliError::io("creating the tool shim folder"))?;
    let tmp = bin_dir.join(format!(".{name}.{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(CliError::io("writing the tool shim"))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
        .map_err(CliError::io("writing the tool shim"))?;
    std::fs::rename(&tmp, &path).map_err(CliError::io("writing the tool shim"))
}

/// The last `lines` lines of a process's output.
pub fn tail(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use PackageManager::*;

    #[test]
    fn the_pin_wins_for_its_own_manager() {
        assert_eq!(
            pinned_version(Pnpm, Some("pnpm@9.12.1+sha512.abc"), None).as_deref(),
            Some("9.12.1")
        );
        assert_eq!(
            pinned_version(YarnBerry, Some("yarn@4.5.3"), None).as_deref(),
            Some("4.5.3")
        );
        // A pin for another manager, or a malformed one, falls back to the lockfile.
        assert_eq!(
            pinned_version(Pnpm, Some("yarn@4.5.3"), Some("lockfileVersion: '6.0'\n")).as_deref(),
            Some(PNPM_V8)
        );
        assert_eq!(
            pinned_version(Pnpm, Some("pnpm@9; rm -rf /"), None).as_deref(),
            Some(PNPM)
        );
        assert_eq!(pinned_version(Npm, Some("npm@10.0.0"), None), None);
    }

    #[test]
    fn lockfile_formats_pick_a_release() {
        assert_eq!(
            pinned_version(Pnpm, None, Some("lockfileVersion: 5.4\n")).as_deref(),
            Some(PNPM_V7)
        );
        assert_eq!(
            pinned_version(Pnpm, None, Some("lockfileVersion: '9.0'\n")).as_deref(),
            Some(PNPM)
        );
        assert_eq!(
            pinned_version(
                YarnBerry,
                None,
                Some("__metadata:\n  version: 6\n  cacheKey: 8\n")
            )
            .as_deref(),
            Some(YARN_BERRY_V3)
        );
        assert_eq!(
            pinned_version(YarnBerry, None, Some("__metadata:\n  version: 8\n")).as_deref(),
            Some(YARN_BERRY)
        );
        assert_eq!(
            pinned_version(YarnClassic, None, Some("# yarn lockfile v1\n")).as_deref(),
            Some(YARN_CLASSIC)
        );
    }
}

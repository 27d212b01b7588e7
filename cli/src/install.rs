//! Production dependencies, installed with the project's own package manager into a
//! staging copy (never the user's node_modules), cached by what the installed tree
//! depends on: lockfile, dependency fields of package.json, manager, Node major,
//! platform and libc. A code-only change reinstalls nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

use crate::errors::CliError;
use crate::project::{PackageManager, Project};

/// The runtime the dependencies are installed for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Target {
    pub node_major: u32,
    pub platform: String,
    pub libc: String,
}

/// Files copied next to package.json for the install; `.npmrc` carries private
/// registry settings and tokens, so it is used here and never packed.
const INSTALL_INPUTS: [&str; 8] = [
    "package.json",
    "package-lock.json",
    "npm-shrinkwrap.json",
    "yarn.lock",
    "pnpm-lock.yaml",
    ".npmrc",
    ".yarnrc",
    ".yarnrc.yml",
];

/// The cache key of the deps layer: hex sha256 over everything the installed tree
/// depends on.
pub fn cache_key(project: &Project, target: &Target) -> Result<String, CliError> {
    let mut h = Sha256::new();
    h.update(b"aether-deps-v1\n");
    h.update(project.manager.to_string());
    if let Some(lock) = &project.lockfile {
        h.update(std::fs::read(lock).map_err(CliError::io("reading the lockfile"))?);
    }
    // Only the fields that change what gets installed, so a version bump or a new
    // script does not force a reinstall.
    for field in [
        "dependencies",
        "optionalDependencies",
        "overrides",
        "resolutions",
        "pnpm",
    ] {
        h.update(field);
        h.update(
            project
                .package_json
                .get(field)
                .map(|v| v.to_string())
                .unwrap_or_default(),
        );
    }
    h.update(format!(
        "\n{}\n{}\n{}",
        target.node_major, target.platform, target.libc
    ));
    Ok(hex(&h.finalize()))
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
}

/// Install (or find in the cache) the production dependencies of `project` for
/// `target`. Native modules are checked once, before the install is cached: the
/// target is part of the key, so a cached install has passed the check.
pub fn ensure_installed(
    project: &Project,
    target: &Target,
    key: &str,
    cache: &Path,
) -> Result<Installed, CliError> {
    let dir = cache.join("deps").join(key);
    if is_installed(key, cache) {
        return Ok(Installed { dir, cached: true });
    }
    let parent = cache.join("deps");
    std::fs::create_dir_all(&parent).map_err(CliError::io(format!("creating {}", parent.display())))?;
    let staging = tempfile::Builder::new()
        .prefix(".install-")
        .tempdir_in(&parent)
        .map_err(CliError::io("creating a staging folder"))?;
    for name in INSTALL_INPUTS {
        let src = project.root.join(name);
        if src.is_file() {
            std::fs::copy(&src, staging.path().join(name))
                .map_err(CliError::io(format!("copying {name}")))?;
        }
    }
    run_install(project.manager, project.lockfile.is_some(), staging.path())?;
    // Secrets used for the install must not outlive it.
    let _ = std::fs::remove_file(staging.path().join(".npmrc"));
    if !staging.path().join("node_modules").is_dir() {
        std::fs::create_dir(staging.path().join("node_modules"))
            .map_err(CliError::io("creating node_modules"))?;
    }
    check_native_modules(&staging.path().join("node_modules"), target)?;
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
    Ok(Installed { dir, cached: false })
}

fn run_install(manager: PackageManager, frozen: bool, dir: &Path) -> Result<(), CliError> {
    let (program, args): (&str, Vec<&str>) = match (manager, frozen) {
        (PackageManager::Npm, true) => (
            "npm",
            vec!["ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"],
        ),
        (PackageManager::Npm, false) => (
            "npm",
            vec![
                "install",
                "--omit=dev",
                "--no-audit",
                "--no-fund",
                "--no-package-lock",
            ],
        ),
        (PackageManager::YarnClassic, _) => (
            "yarn",
            vec![
                "install",
                "--frozen-lockfile",
                "--production",
                "--non-interactive",
                "--silent",
            ],
        ),
        (PackageManager::YarnBerry, _) => ("yarn", vec!["workspaces", "focus", "--all", "--production"]),
        (PackageManager::Pnpm, _) => ("pnpm", vec!["install", "--frozen-lockfile", "--prod"]),
    };
    let mut cmd = Command::new(program);
    cmd.args(&args).current_dir(dir).env("CI", "true");
    if manager == PackageManager::YarnBerry {
        // A node_modules tree is what the layer carries.
        cmd.env("YARN_NODE_LINKER", "node-modules")
            .env("YARN_ENABLE_IMMUTABLE_INSTALLS", "true");
    }
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(CliError::NoPackageManager {
                manager: manager.to_string(),
            });
        }
        Err(e) => return Err(CliError::io(format!("running {program}"))(e)),
    };
    if !output.status.success() {
        let text = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        return Err(CliError::InstallFailed {
            manager: manager.to_string(),
            code: output.status.code().map_or("signal".into(), |c| c.to_string()),
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(())
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
                let Ok(bytes) = std::fs::read(&path) else { continue };
                if let Some((machine, musl)) = elf_facts(&bytes) {
                    let libc = if musl { "musl" } else { "glibc" };
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

/// ELF machine and whether it links against musl (its loader is named ld-musl-*).
fn elf_facts(bytes: &[u8]) -> Option<(u16, bool)> {
    if bytes.len() < 20 || &bytes[..4] != b"\x7fELF" {
        return None;
    }
    let machine = u16::from_le_bytes([bytes[18], bytes[19]]);
    let musl = bytes.windows(7).any(|w| w == b"ld-musl" || w == b"libc.mu");
    Some((machine, musl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_detection() {
        let mut elf = b"\x7fELF".to_vec();
        elf.resize(20, 0);
        elf[18] = 62;
        assert_eq!(elf_facts(&elf), Some((62, false)));
        elf.extend_from_slice(b"/lib/ld-musl-x86_64.so.1");
        assert_eq!(elf_facts(&elf), Some((62, true)));
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

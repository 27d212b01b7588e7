//! What kind of Node.js project a folder is: package manager, lockfile, entrypoint,
//! Node version, app name. Pure reads of the folder; nothing is run.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::errors::CliError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackageManager {
    Npm,
    YarnClassic,
    YarnBerry,
    Pnpm,
}

impl fmt::Display for PackageManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Npm => "npm",
            Self::YarnClassic | Self::YarnBerry => "yarn",
            Self::Pnpm => "pnpm",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Project {
    pub root: PathBuf,
    pub package_json: serde_json::Value,
    pub manager: PackageManager,
    /// None only with `--allow-no-lockfile`.
    pub lockfile: Option<PathBuf>,
    pub entrypoint: Vec<String>,
}

/// Lockfiles in order of preference, with the manager each implies.
const LOCKFILES: [(&str, PackageManager); 4] = [
    ("package-lock.json", PackageManager::Npm),
    ("npm-shrinkwrap.json", PackageManager::Npm),
    ("pnpm-lock.yaml", PackageManager::Pnpm),
    ("yarn.lock", PackageManager::YarnClassic),
];

pub fn detect(dir: &Path, allow_no_lockfile: bool) -> Result<Project, CliError> {
    let root = dir
        .canonicalize()
        .map_err(CliError::io(format!("opening {}", dir.display())))?;
    let manifest = root.join("package.json");
    let text = match std::fs::read_to_string(&manifest) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(CliError::NotNodeProject(root)),
        Err(e) => return Err(CliError::io("reading package.json")(e)),
    };
    let package_json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| CliError::BadPackageJson(e.to_string()))?;

    let found = LOCKFILES.iter().find(|(name, _)| root.join(name).is_file());
    let (manager, lockfile) = match found {
        Some((name, pm)) => {
            let path = root.join(name);
            let pm = if *pm == PackageManager::YarnClassic && is_yarn_berry(&path) {
                PackageManager::YarnBerry
            } else {
                *pm
            };
            (pm, Some(path))
        }
        None if allow_no_lockfile => (PackageManager::Npm, None),
        None => return Err(CliError::NoLockfile(root)),
    };
    let entrypoint = entrypoint(&root, &package_json).ok_or(CliError::NoEntrypoint)?;
    Ok(Project {
        root,
        package_json,
        manager,
        lockfile,
        entrypoint,
    })
}

/// Berry lockfiles are YAML with a `__metadata` block; classic ones are not YAML.
fn is_yarn_berry(lockfile: &Path) -> bool {
    std::fs::read_to_string(lockfile).is_ok_and(|t| t.contains("__metadata:"))
}

/// `scripts.start` when it is `node <file> [args]`, else `main`, else server.js or
/// index.js. The runtime image has `node` but not necessarily npm, so scripts that
/// need another tool are not used.
pub fn entrypoint(root: &Path, pkg: &serde_json::Value) -> Option<Vec<String>> {
    if let Some(start) = pkg.pointer("/scripts/start").and_then(|s| s.as_str()) {
        let words: Vec<&str> = start.split_whitespace().collect();
        let plain = words
            .iter()
            .all(|w| !w.contains(['&', '|', ';', '$', '>', '<', '`', '=']));
        if plain && words.len() >= 2 && words[0] == "node" {
            return Some(words.iter().map(|w| w.to_string()).collect());
        }
    }
    if let Some(main) = pkg.get("main").and_then(|m| m.as_str())
        && root.join(main).is_file()
    {
        return Some(vec!["node".into(), main.into()]);
    }
    ["server.js", "index.js"]
        .into_iter()
        .find(|f| root.join(f).is_file())
        .map(|f| vec!["node".into(), f.into()])
}

/// The first number in `engines.node` (">=20", "^18.12", "20.x" → 20, 18, 20).
pub fn engines_node_major(pkg: &serde_json::Value) -> Option<u32> {
    let range = pkg.pointer("/engines/node")?.as_str()?;
    let digits: String = range
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// A DNS-label app name from package.json's name: `@acme/Web_API` → `web-api`.
/// The app name: `explicit` if given (it must be a DNS label), else from
/// package.json's name, else from the folder's name.
pub fn app_name(project: &Project, explicit: Option<&str>) -> Result<String, CliError> {
    match explicit {
        Some(a) if aether_crds::validation::is_dns_label(a) => Ok(a.to_string()),
        Some(a) => Err(CliError::BadAppName(a.to_string())),
        None => {
            let name = project.package_json["name"].as_str().unwrap_or_default();
            let dir_name = project
                .root
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            app_name_from(name)
                .or_else(|| app_name_from(&dir_name))
                .ok_or_else(|| CliError::BadAppName(name.to_string()))
        }
    }
}

pub fn app_name_from(pkg_name: &str) -> Option<String> {
    let base = pkg_name
        .rsplit('/')
        .next()
        .unwrap_or(pkg_name)
        .to_ascii_lowercase();
    let mut name: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    while name.contains("--") {
        name = name.replace("--", "-");
    }
    let name = name
        .trim_matches(|c: char| c == '-' || c.is_ascii_digit())
        .to_string();
    let name: String = name.chars().take(63).collect();
    let name = name.trim_end_matches('-').to_string();
    (!name.is_empty()).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn entrypoints() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        assert_eq!(
            entrypoint(r, &json!({"scripts": {"start": "node server.js --port 3"}})).unwrap(),
            ["node", "server.js", "--port", "3"]
        );
        assert_eq!(entrypoint(r, &json!({"scripts": {"start": "nest start"}})), None);
        assert_eq!(
            entrypoint(r, &json!({"scripts": {"start": "node a.js && rm -rf /"}})),
            None
        );
        std::fs::write(r.join("app.js"), "").unwrap();
        assert_eq!(
            entrypoint(r, &json!({"main": "app.js"})).unwrap(),
            ["node", "app.js"]
        );
        std::fs::write(r.join("index.js"), "").unwrap();
        assert_eq!(
            entrypoint(r, &json!({"main": "missing.js"})).unwrap(),
            ["node", "index.js"]
        );
    }

    #[test]
    fn engines_and_names() {
        assert_eq!(
            engines_node_major(&json!({"engines": {"node": ">=20"}})),
            Some(20)
        );
        assert_eq!(
            engines_node_major(&json!({"engines": {"node": "^18.12.0"}})),
            Some(18)
        );
        assert_eq!(engines_node_major(&json!({})), None);
        assert_eq!(app_name_from("@acme/Web_API").as_deref(), Some("web-api"));
        assert_eq!(app_name_from("express-api").as_deref(), Some("express-api"));
        assert_eq!(app_name_from("123").as_deref(), None);
    }

    #[test]
    fn refuses_what_is_not_a_project() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            detect(dir.path(), false),
            Err(CliError::NotNodeProject(_))
        ));
        std::fs::write(
            dir.path().join("package.json"),
            r#"{"name":"x","main":"index.js"}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("index.js"), "").unwrap();
        assert!(matches!(detect(dir.path(), false), Err(CliError::NoLockfile(_))));
        assert_eq!(detect(dir.path(), true).unwrap().lockfile, None);
        std::fs::write(dir.path().join("pnpm-lock.yaml"), "lockfileVersion: '9.0'\n").unwrap();
        assert_eq!(detect(dir.path(), false).unwrap().manager, PackageManager::Pnpm);
        std::fs::write(dir.path().join("package.json"), "{not json").unwrap();
        assert!(matches!(
            detect(dir.path(), false),
            Err(CliError::BadPackageJson(_))
        ));
    }
}

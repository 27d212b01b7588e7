//! A CycloneDX 1.5 SBOM of the production dependencies: names, versions, purls and
//! the lockfile's integrity hashes. Deterministic (no serial number or timestamp,
//! components sorted), so the same lockfile gives the same SBOM bytes.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use cyclonedx_bom::external_models::uri::Purl;
use cyclonedx_bom::models::bom::Bom;
use cyclonedx_bom::models::component::{Classification, Component, Components};
use cyclonedx_bom::models::hash::{Hash, HashAlgorithm, HashValue, Hashes};
use cyclonedx_bom::models::metadata::Metadata;

use crate::errors::CliError;

pub const MEDIA_TYPE: &str = "application/vnd.cyclonedx+json;version=1.5";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// e.g. `sha512-<base64>` from the lockfile.
    pub integrity: Option<String>,
}

/// Production packages from an npm lockfile (v2/v3 `packages` map), dev ones skipped.
pub fn from_npm_lockfile(text: &str) -> Result<Vec<Package>, CliError> {
    let lock: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| CliError::BadPackageJson(format!("package-lock.json: {e}")))?;
    let mut out = Vec::new();
    if let Some(packages) = lock.get("packages").and_then(|p| p.as_object()) {
        for (path, meta) in packages {
            let Some(idx) = path.rfind("node_modules/") else {
                continue;
            };
            if meta.get("dev").and_then(|d| d.as_bool()) == Some(true) || meta.get("link").is_some() {
                continue;
            }
            let name = meta
                .get("name")
                .and_then(|n| n.as_str())
                .unwrap_or(&path[idx + 13..]);
            let Some(version) = meta.get("version").and_then(|v| v.as_str()) else {
                continue;
            };
            out.push(Package {
                name: name.to_string(),
                version: version.to_string(),
                integrity: meta.get("integrity").and_then(|i| i.as_str()).map(String::from),
            });
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Packages found in an installed node_modules tree (yarn and pnpm lockfiles are
/// not parsed; the installed tree is what they resolved to).
pub fn from_installed_tree(node_modules: &Path) -> Vec<Package> {
    let mut found = BTreeMap::new();
    let mut stack = vec![node_modules.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
            if !is_dir {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('@') || name == "node_modules" || name == ".pnpm" {
                stack.push(path);
                continue;
            }
            if let Ok(text) = std::fs::read_to_string(path.join("package.json")) {
                if let Ok(pkg) = serde_json::from_str::<serde_json::Value>(&text)
                    && let (Some(n), Some(v)) = (pkg["name"].as_str(), pkg["version"].as_str())
                {
                    found.insert((n.to_string(), v.to_string()), ());
                }
                stack.push(path.join("node_modules"));
            }
        }
    }
    found
        .into_keys()
        .map(|(name, version)| Package {
            name,
            version,
            integrity: None,
        })
        .collect()
}

/// The SBOM as CycloneDX 1.5 JSON bytes.
pub fn cyclonedx_json(app: &str, app_version: &str, packages: &[Package]) -> Result<Vec<u8>, CliError> {
    let components = packages
        .iter()
        .map(|p| {
            let bom_ref = format!("{}@{}", p.name, p.version);
            let mut c = Component::new(Classification::Library, &p.name, &p.version, Some(bom_ref));
            c.purl = Purl::new("npm", &p.name, &p.version).ok();
            c.hashes = p
                .integrity
                .as_deref()
                .and_then(integrity_hash)
                .map(|h| Hashes(vec![h]));
            c
        })
        .collect();
    let metadata = Metadata {
        component: Some(Component::new(
            Classification::Application,
            app,
            app_version,
            None,
        )),
        timestamp: None,
        ..Metadata::default()
    };
    let bom = Bom {
        serial_number: None,
        metadata: Some(metadata),
        components: Some(Components(components)),
        ..Bom::default()
    };
    let mut out = Vec::new();
    bom.output_as_json_v1_5(&mut out)
        .map_err(|e| CliError::io("writing the SBOM")(std::io::Error::other(e.to_string())))?;
    Ok(out)
}

/// `sha512-<base64>` → a CycloneDX hash with hex content.
fn integrity_hash(sri: &str) -> Option<Hash> {
    let (alg, b64) = sri.split_whitespace().next()?.split_once('-')?;
    let alg = match alg {
        "sha512" => HashAlgorithm::SHA_512,
        "sha384" => HashAlgorithm::SHA_384,
        "sha256" => HashAlgorithm::SHA_256,
        "sha1" => HashAlgorithm::SHA1,
        _ => return None,
    };
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Some(Hash {
        alg,
        content: HashValue(hex),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCK: &str = r#"{
      "name": "demo", "lockfileVersion": 3,
      "packages": {
        "": {"name": "demo", "dependencies": {"ms": "^2"}},
        "node_modules/ms": {"version": "2.1.3", "integrity": "sha512-6FlzubTLZG3J2a/NVCAleEhjzq5oxgHyaCU9yYXvcLsvoVaHJq/s5xXI6/XXP6tz7R9xAOtHnSO/tXtF3WRTlA=="},
        "node_modules/@types/node": {"version": "20.0.0", "dev": true},
        "node_modules/a/node_modules/ms": {"version": "2.0.0"}
      }
    }"#;

    #[test]
    fn npm_lockfile_production_packages_with_hashes() {
        let pkgs = from_npm_lockfile(LOCK).unwrap();
        let names: Vec<String> = pkgs.iter().map(|p| format!("{}@{}", p.name, p.version)).collect();
        assert_eq!(names, ["ms@2.0.0", "ms@2.1.3"]);
        let json = cyclonedx_json("demo", "1.0.0", &pkgs).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(v["specVersion"], "1.5");
        assert_eq!(v["bomFormat"], "CycloneDX");
        assert!(
            v.get("serialNumber").is_none(),
            "no random serial: the SBOM must be reproducible"
        );
        let ms = &v["components"][1];
        assert_eq!(ms["purl"], "pkg:npm/ms@2.1.3");
        assert_eq!(ms["hashes"][0]["alg"], "SHA-512");
        assert!(
            ms["hashes"][0]["content"]
                .as_str()
                .unwrap()
                .starts_with("e85973b9")
        );
        assert_eq!(json, cyclonedx_json("demo", "1.0.0", &pkgs).unwrap());
    }
}

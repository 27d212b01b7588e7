//! An AetherArtifact's spec carries its whole manifest, so the manifest — and with it
//! the artifact digest that signatures cover — can be recomputed from the spec alone.
//! A spec whose fields were edited no longer matches its digest.

use aether_artifact::manifest::{LayerDescriptor, Manifest, RuntimeDescriptor, SourceDescriptor};
use aether_artifact::{Digest, MANIFEST_MEDIA_TYPE};

use crate::{AetherArtifactSpec, Layer, LayerName, Libc, Platform, Runtime, Source};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("spec.digest is {claimed} but the spec describes {actual}: the artifact was altered")]
    DigestMismatch { claimed: String, actual: String },
}

fn invalid(field: &str, message: impl ToString) -> SpecError {
    SpecError::Invalid {
        field: field.into(),
        message: message.to_string(),
    }
}

fn digest(field: &str, s: &str) -> Result<Digest, SpecError> {
    s.parse().map_err(|e| invalid(field, e))
}

/// A blob an artifact needs in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    pub digest: Digest,
    pub size: u64,
}

impl AetherArtifactSpec {
    /// Layers and SBOM, each once (layers shared between artifacts are stored once).
    pub fn blobs(&self) -> Result<Vec<BlobRef>, SpecError> {
        let mut out: Vec<BlobRef> = Vec::new();
        let sbom = self.sbom.as_ref().map(|s| (&s.digest, s.size));
        for (digest, size) in self.layers.iter().map(|l| (&l.digest, l.size)).chain(sbom) {
            let digest = self::digest("spec.layers[].digest", digest)?;
            let size = u64::try_from(size).map_err(|_| invalid("spec.layers[].size", "negative size"))?;
            if !out.iter().any(|b| b.digest == digest) {
                out.push(BlobRef { digest, size });
            }
        }
        Ok(out)
    }

    /// The manifest this spec describes.
    pub fn manifest(&self) -> Result<Manifest, SpecError> {
        let layers = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                Ok(LayerDescriptor {
                    name: match l.name {
                        LayerName::Deps => "deps".into(),
                        LayerName::App => "app".into(),
                    },
                    media_type: l.media_type.clone(),
                    digest: digest(&format!("spec.layers[{i}].digest"), &l.digest)?,
                    size: u64::try_from(l.size).map_err(|e| invalid("spec.layers.size", e))?,
                    entries: u64::try_from(l.entries).map_err(|e| invalid("spec.layers.entries", e))?,
                    files_digest: digest(&format!("spec.layers[{i}].filesDigest"), &l.files_digest)?,
                    cache_key: l.cache_key.clone(),
                })
            })
            .collect::<Result<_, SpecError>>()?;
        Ok(Manifest {
            schema_version: 1,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            layers,
            runtime: RuntimeDescriptor {
                node_major: u32::try_from(self.runtime.node_major)
                    .map_err(|e| invalid("spec.runtime.nodeMajor", e))?,
                platform: match self.runtime.platform {
                    Platform::LinuxAmd64 => "linux/amd64".into(),
                    Platform::LinuxArm64 => "linux/arm64".into(),
                },
                libc: match self.runtime.libc {
                    Libc::Glibc => "glibc".into(),
                    Libc::Musl => "musl".into(),
                },
            },
            entrypoint: self.entrypoint.clone(),
            workdir: match &self.workdir {
                // Exactly the normal form the CRD's rule allows: `a/b`, nothing looser.
                Some(w) => {
                    let parts =
                        aether_artifact::path::components(w, 32).map_err(|e| invalid("spec.workdir", e))?;
                    if parts.join("/") != *w {
                        return Err(invalid(
                            "spec.workdir",
                            "must be a plain relative folder such as apps/web",
                        ));
                    }
                    Some(w.clone())
                }
                None => None,
            },
            source: self.source.as_ref().map(|s| SourceDescriptor {
                revision: s.revision.clone(),
                dirty: s.dirty,
            }),
        })
    }

    /// The manifest, checked against `spec.digest`.
    pub fn verified_manifest(&self) -> Result<(Manifest, Digest), SpecError> {
        let manifest = self.manifest()?;
        let actual = manifest.digest();
        if actual.to_string() != self.digest {
            return Err(SpecError::DigestMismatch {
                claimed: self.digest.clone(),
                actual: actual.to_string(),
            });
        }
        Ok((manifest, actual))
    }

    /// The spec for a packed manifest (the inverse of [`AetherArtifactSpec::manifest`]).
    pub fn from_manifest(app: &str, manifest: &Manifest) -> Result<Self, SpecError> {
        let layers = manifest
            .layers
            .iter()
            .map(|l| {
                Ok(Layer {
                    name: match l.name.as_str() {
                        "deps" => LayerName::Deps,
                        "app" => LayerName::App,
                        other => return Err(invalid("layers.name", format!("unknown layer '{other}'"))),
                    },
                    digest: l.digest.to_string(),
                    size: l.size as i64,
                    media_type: l.media_type.clone(),
                    entries: l.entries as i64,
                    files_digest: l.files_digest.to_string(),
                    cache_key: l.cache_key.clone(),
                })
            })
            .collect::<Result<_, SpecError>>()?;
        let runtime = Runtime {
            node_major: manifest.runtime.node_major as i32,
            platform: match manifest.runtime.platform.as_str() {
                "linux/arm64" => Platform::LinuxArm64,
                "linux/amd64" => Platform::LinuxAmd64,
                other => {
                    return Err(invalid(
                        "runtime.platform",
                        format!("unsupported platform '{other}'"),
                    ));
                }
            },
            libc: match manifest.runtime.libc.as_str() {
                "musl" => Libc::Musl,
                "glibc" => Libc::Glibc,
                other => return Err(invalid("runtime.libc", format!("unsupported libc '{other}'"))),
            },
        };
        Ok(Self {
            app: app.into(),
            digest: manifest.digest().to_string(),
            layers,
            runtime,
            entrypoint: manifest.entrypoint.clone(),
            workdir: manifest.workdir.clone(),
            sbom: None,
            signature: None,
            source: manifest.source.as_ref().map(|s| Source {
                revision: s.revision.clone(),
                dirty: s.dirty,
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        let layer = |name: &str, seed: &[u8]| LayerDescriptor {
            name: name.into(),
            media_type: aether_artifact::LAYER_MEDIA_TYPE.into(),
            digest: Digest::of(seed),
            size: 10,
            entries: 3,
            files_digest: Digest::of(b"files"),
            cache_key: (name == "deps").then(|| "k".repeat(64)),
        };
        Manifest {
            schema_version: 1,
            media_type: MANIFEST_MEDIA_TYPE.into(),
            layers: vec![layer("deps", b"d"), layer("app", b"a")],
            runtime: RuntimeDescriptor {
                node_major: 20,
                platform: "linux/amd64".into(),
                libc: "glibc".into(),
            },
            entrypoint: vec!["node".into(), "server.js".into()],
            workdir: None,
            source: Some(SourceDescriptor {
                revision: Some("abc".into()),
                dirty: false,
            }),
        }
    }

    #[test]
    fn spec_and_manifest_round_trip_to_the_same_digest() {
        let m = manifest();
        let spec = AetherArtifactSpec::from_manifest("web", &m).unwrap();
        let (back, digest) = spec.verified_manifest().unwrap();
        assert_eq!(back, m);
        assert_eq!(digest, m.digest());
    }

    #[test]
    fn an_edited_spec_no_longer_matches_its_digest() {
        let mut spec = AetherArtifactSpec::from_manifest("web", &manifest()).unwrap();
        spec.entrypoint = vec!["node".into(), "evil.js".into()];
        assert!(matches!(
            spec.verified_manifest(),
            Err(SpecError::DigestMismatch { .. })
        ));
    }

    #[test]
    fn a_workdir_round_trips_and_only_a_plain_relative_folder_is_accepted() {
        let mut m = manifest();
        m.workdir = Some("apps/web".into());
        let spec = AetherArtifactSpec::from_manifest("web", &m).unwrap();
        assert_eq!(
            spec.verified_manifest().unwrap().0.workdir.as_deref(),
            Some("apps/web")
        );
        for bad in ["../x", "/etc", "./a", "a//b", "a/", "a/../../b", ""] {
            let mut spec = spec.clone();
            spec.workdir = Some(bad.into());
            assert!(
                matches!(spec.manifest(), Err(SpecError::Invalid { ref field, .. }) if field == "spec.workdir"),
                "{bad:?} was accepted"
            );
        }
    }
}

//! The artifact manifest: canonical JSON (keys sorted, no whitespace) whose sha256 is
//! the artifact digest.

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    pub media_type: String,
    /// In extraction order: `deps`, then `app`.
    pub layers: Vec<LayerDescriptor>,
    pub runtime: RuntimeDescriptor,
    /// argv run in the working directory, e.g. `["node", "server.js"]`, or
    /// `["/bin/sh", "-c", "<start script>"]`.
    pub entrypoint: Vec<String>,
    /// The working directory relative to the app root, for a workspace package
    /// (`apps/web`); absent means the root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceDescriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LayerDescriptor {
    /// `deps` or `app`.
    pub name: String,
    pub media_type: String,
    /// sha256 of the compressed bytes.
    pub digest: Digest,
    /// Compressed size in bytes.
    pub size: u64,
    /// Entries in the tar (files, directories, symlinks).
    pub entries: u64,
    /// Digest of the layer's file list (path, mode, size and sha256 of every file).
    pub files_digest: Digest,
    /// For `deps`: what the installed tree depends on (lockfile, Node major, platform,
    /// libc), so an unchanged lockfile can reuse an already uploaded layer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeDescriptor {
    pub node_major: u32,
    /// `linux/amd64` or `linux/arm64`.
    pub platform: String,
    /// `glibc` or `musl`.
    pub libc: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceDescriptor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    pub dirty: bool,
}

impl Manifest {
    /// The canonical bytes: what is stored, hashed and signed.
    pub fn to_canonical_json(&self) -> Vec<u8> {
        let value = serde_json::to_value(self).expect("a manifest always serialises");
        let mut out = Vec::new();
        write_canonical(&value, &mut out);
        out
    }

    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_canonical_json())
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }
}

/// JSON with object keys sorted bytewise at every level and no insignificant
/// whitespace, independent of serde_json's map ordering features.
fn write_canonical(value: &serde_json::Value, out: &mut Vec<u8>) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend(serde_json::to_vec(k).expect("strings serialise"));
                out.push(b':');
                write_canonical(&map[k], out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        scalar => out.extend(serde_json::to_vec(scalar).expect("scalars serialise")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> Manifest {
        Manifest {
            schema_version: 1,
            media_type: crate::MANIFEST_MEDIA_TYPE.into(),
            layers: vec![LayerDescriptor {
                name: "app".into(),
                media_type: crate::LAYER_MEDIA_TYPE.into(),
                digest: Digest::of(b"x"),
                size: 1,
                entries: 1,
                files_digest: Digest::of(b"y"),
                cache_key: None,
            }],
            runtime: RuntimeDescriptor {
                node_major: 20,
                platform: "linux/amd64".into(),
                libc: "glibc".into(),
            },
            entrypoint: vec!["node".into(), "server.js".into()],
            workdir: None,
            source: None,
        }
    }

    #[test]
    fn canonical_json_is_sorted_and_compact_and_round_trips() {
        let m = manifest();
        let bytes = m.to_canonical_json();
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(
            text.starts_with(r#"{"entrypoint":["node","server.js"],"layers":[{"digest":"sha256:"#),
            "{text}"
        );
        assert!(!text.contains(' '));
        assert_eq!(Manifest::from_json(&bytes).unwrap(), m);
        assert_eq!(m.digest(), Digest::of(&bytes));
    }

    #[test]
    fn any_change_changes_the_digest() {
        let mut m = manifest();
        let before = m.digest();
        m.entrypoint[1] = "index.js".into();
        assert_ne!(before, m.digest());
    }
}

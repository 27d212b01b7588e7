//! Artifacts for the runtime's tests: layers packed from files, a manifest of them.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use aether_artifact::Manifest;
use aether_artifact::layer::{PackOptions, collect, pack_layer};
use aether_artifact::manifest::{LayerDescriptor, RuntimeDescriptor};

/// A layer of `files` (path, text), written under `root` and packed.
pub fn layer(root: &Path, files: &[(&str, &str)]) -> (Vec<u8>, LayerDescriptor) {
    for (path, text) in files {
        let p = root.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let paths = collect(root, &mut |_, _| true).unwrap();
    let mut out = Vec::new();
    let stats = pack_layer(root, &paths, &mut out, &PackOptions::default()).unwrap();
    let descriptor = LayerDescriptor {
        name: String::new(),
        media_type: aether_artifact::LAYER_MEDIA_TYPE.into(),
        digest: stats.digest,
        size: stats.size,
        entries: stats.entries,
        files_digest: stats.files_digest,
        cache_key: None,
    };
    (out, descriptor)
}

/// A Node 20 manifest of `layers`, started with `node server.js`.
pub fn manifest(layers: Vec<LayerDescriptor>) -> Manifest {
    Manifest {
        schema_version: 1,
        media_type: aether_artifact::MANIFEST_MEDIA_TYPE.into(),
        layers,
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

//! Helpers shared by the CLI tests: run the real `aether` binary, read layers back.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn aether(dir: &Path, cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_aether"))
        .args(args)
        .current_dir(dir)
        .env("AETHER_CACHE_DIR", cache)
        .env("HOME", cache.join("home"))
        .env("XDG_CONFIG_HOME", cache.join("config"))
        .env_remove("AETHER_SIGNING_KEY")
        .output()
        .expect("running aether")
}

pub fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "aether failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// Every path in a packed layer.
pub fn layer_paths(blob: &Path) -> Vec<String> {
    let file = std::fs::File::open(blob).expect("layer blob");
    let mut archive = tar::Archive::new(zstd::stream::read::Decoder::new(file).expect("zstd"));
    archive
        .entries()
        .expect("entries")
        .map(|e| {
            e.expect("entry")
                .path()
                .expect("path")
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Copy a project folder, leaving out installed dependencies and outputs.
pub fn copy_project(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read project") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if name == "node_modules" || name == ".aether" {
            continue;
        }
        let target = to.join(&name);
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_project(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

//! The CLI as a user meets it, on small fixture projects with no dependencies (no
//! registry access needed).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aether_artifact::signature::{self, PublicKey};
use common::{aether, json, layer_paths};

fn fixture(dir: &Path) {
    fs::write(dir.join("package.json"), r#"{"name":"@acme/Hello_App","version":"1.2.3","scripts":{"start":"node server.js"},"engines":{"node":">=20"}}"#).unwrap();
    fs::write(
        dir.join("package-lock.json"),
        r#"{"name":"@acme/hello_app","version":"1.2.3","lockfileVersion":3,"requires":true,"packages":{"":{"name":"@acme/hello_app","version":"1.2.3"}}}"#,
    )
    .unwrap();
    fs::write(
        dir.join("server.js"),
        "require('http').createServer((q, s) => s.end('hi')).listen(process.env.PORT)\n",
    )
    .unwrap();
}

#[test]
fn not_a_node_project_fails_with_a_hint_and_exit_code_3() {
    let dir = tempfile::tempdir().unwrap();
    let out = aether(dir.path(), dir.path(), &["pack"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is not a Node.js project"), "{err}");
    assert!(err.contains("package.json"), "{err}");
}

#[test]
fn no_lockfile_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    fixture(dir.path());
    fs::remove_file(dir.path().join("package-lock.json")).unwrap();
    let out = aether(dir.path(), dir.path(), &["pack"]);
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no lockfile") && err.contains("--allow-no-lockfile"),
        "{err}"
    );
}

#[test]
fn packs_signs_and_leaves_secrets_out() {
    let project = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let p = project.path();
    fixture(p);
    fs::write(p.join(".env"), "DB_PASSWORD=hunter2\n").unwrap();
    fs::write(p.join(".env.production"), "X=1\n").unwrap();
    fs::write(
        p.join(".npmrc"),
        "//npm.example.invalid/:_authToken=SECRET-TOKEN\n",
    )
    .unwrap();
    fs::create_dir_all(p.join(".git/objects")).unwrap();
    fs::write(p.join(".git/config"), "[core]\n").unwrap();
    fs::create_dir_all(p.join("sub/node_modules/x")).unwrap();
    fs::write(p.join("sub/node_modules/x/index.js"), "").unwrap();
    fs::write(p.join("sub/.env.local"), "TOKEN=x\n").unwrap();
    fs::write(p.join("sub/keep.js"), "").unwrap();
    fs::write(p.join(".gitignore"), "logs/\n").unwrap();
    fs::create_dir_all(p.join("logs")).unwrap();
    fs::write(p.join("logs/app.log"), "noise").unwrap();

    let keygen = aether(p, cache.path(), &["keys", "generate", "-o", "json"]);
    let keys = json(&keygen);
    let private = Path::new(keys["privateKey"].as_str().unwrap());
    assert_eq!(fs::metadata(private).unwrap().permissions().mode() & 0o777, 0o600);
    let again = aether(p, cache.path(), &["keys", "generate"]);
    assert_eq!(
        again.status.code(),
        Some(6),
        "an existing key is not overwritten silently"
    );

    let out = json(&aether(p, cache.path(), &["pack", "-n", "team-a", "-o", "json"]));
    assert_eq!(out["app"], "hello-app");
    assert_eq!(
        out["runtime"]["nodeMajor"], 24,
        "the newest major engines.node allows"
    );
    assert_eq!(out["entrypoint"], serde_json::json!(["node", "server.js"]));

    let blobs = p.join(".aether/out/blobs/sha256");
    let mut all = Vec::new();
    for layer in out["layers"].as_array().unwrap() {
        let hex = &layer["digest"].as_str().unwrap()[7..];
        all.extend(layer_paths(&blobs.join(hex)));
    }
    for secret in [
        ".env",
        ".env.production",
        ".npmrc",
        ".git",
        ".git/config",
        "sub/.env.local",
        "logs/app.log",
    ] {
        assert!(
            !all.iter().any(|p| p.trim_end_matches('/') == secret),
            "{secret} was packed: {all:?}"
        );
    }
    assert!(
        !all.iter().any(|p| p.starts_with("sub/node_modules")),
        "nested node_modules packed: {all:?}"
    );
    assert!(all.iter().any(|p| p == "sub/keep.js"), "{all:?}");
    assert!(all.iter().any(|p| p == "server.js"), "{all:?}");
    // The .npmrc was used for the install only; it is not left in the cache either.
    let leftover = walk_names(cache.path());
    assert!(
        !leftover.iter().any(|n| n == ".npmrc"),
        "the .npmrc outlived the install"
    );

    // The signature verifies for team-a/hello-app with the generated public key, and
    // not for another namespace.
    let public =
        PublicKey::from_pem(&fs::read_to_string(keys["publicKey"].as_str().unwrap()).unwrap()).unwrap();
    let digest = out["digest"].as_str().unwrap().parse().unwrap();
    let key_id = out["signature"]["keyId"].as_str().unwrap();
    let sig = out["signature"]["value"].as_str().unwrap();
    assert_eq!(key_id, keys["keyId"]);
    signature::verify(
        std::slice::from_ref(&public),
        key_id,
        sig,
        &digest,
        "team-a",
        "hello-app",
    )
    .unwrap();
    assert!(signature::verify(&[public], key_id, sig, &digest, "team-b", "hello-app").is_err());

    // The manifest blob is the artifact digest's preimage.
    let manifest = fs::read(blobs.join(&out["digest"].as_str().unwrap()[7..])).unwrap();
    assert_eq!(
        aether_artifact::Digest::of(&manifest).to_string(),
        out["digest"].as_str().unwrap()
    );
}

#[test]
fn a_symlink_out_of_the_project_is_refused_by_name() {
    let project = tempfile::tempdir().unwrap();
    fixture(project.path());
    std::os::unix::fs::symlink("/etc/passwd", project.path().join("passwd")).unwrap();
    let out = aether(project.path(), project.path(), &["pack", "--no-sign"]);
    assert_eq!(out.status.code(), Some(5));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("passwd") && err.contains("outside the layer"),
        "{err}"
    );
}

fn walk_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        out.push(e.file_name().to_string_lossy().into_owned());
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk_names(&e.path()));
        }
    }
    out
}

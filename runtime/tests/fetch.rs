//! The fetch container's offline half: what it refuses before touching storage, and
//! extraction into the shared volume (including after a failed earlier attempt).
#![allow(clippy::unwrap_used)]

mod common;

use aether_artifact::signature::{Policy, SigningKey, Verdict};
use aether_artifact::{Digest, Limits, Manifest};
use aether_runtime::fetch::{FetchArgs, FetchError, check, extract};
use common::{layer, manifest};

fn args(manifest: &Manifest, digest: Digest, policy: Policy) -> FetchArgs {
    FetchArgs {
        manifest: String::from_utf8(manifest.to_canonical_json()).unwrap(),
        digest: digest.to_string(),
        namespace: "team-a".into(),
        app: "web".into(),
        verify: policy,
        signature_key_id: String::new(),
        signature: String::new(),
        trusted_keys: String::new(),
        downloads_dir: "/nonexistent".into(),
        spool_dir: "/nonexistent".into(),
        max_unpacked_bytes: None,
        into: "/nonexistent".into(),
        deadline_seconds: 10,
        sidecar: false,
        termination_log: "/dev/null".into(),
    }
}

#[test]
fn refuses_a_manifest_other_than_the_pinned_digest() {
    let m = manifest(vec![]);
    let e = check(&args(&m, Digest::of(b"another build"), Policy::Off)).unwrap_err();
    assert!(matches!(e, FetchError::ManifestMismatch { .. }), "{e}");
    assert_eq!((e.reason(), e.exit_code()), ("DigestMismatch", 11));
}

#[test]
fn applies_the_signature_policy_before_any_download() {
    let m = manifest(vec![]);
    let digest = m.digest();
    let key = SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap();

    let unsigned = check(&args(&m, digest, Policy::Enforce)).unwrap_err();
    assert_eq!(
        (unsigned.reason(), unsigned.exit_code()),
        ("ArtifactUnsigned", 12)
    );
    assert!(matches!(
        check(&args(&m, digest, Policy::Warn)).unwrap().1,
        Verdict::Unverified(_)
    ));

    let mut signed = args(&m, digest, Policy::Enforce);
    signed.signature_key_id = key.public_key().key_id();
    signed.signature = key.sign(&digest, "team-a", "web");
    // Signed, but the key is not among the trusted ones.
    let e = check(&signed).unwrap_err();
    assert_eq!(e.reason(), "SignatureRejected");
    assert!(e.to_string().contains("not trusted"), "{e}");
    signed.trusted_keys = key.public_key().to_pem();
    assert!(matches!(check(&signed).unwrap().1, Verdict::Verified { .. }));
    // The same signature for another app is a replay.
    signed.app = "api".into();
    assert_eq!(check(&signed).unwrap_err().reason(), "SignatureRejected");
}

#[test]
fn extracts_layers_and_itself_and_replaces_a_partial_earlier_attempt() {
    let src = tempfile::tempdir().unwrap();
    let (deps, ..) = layer(
        &src.path().join("d"),
        &[("node_modules/left-pad/index.js", "module.exports = 1;\n")],
    );
    let (app, ..) = layer(&src.path().join("a"), &[("server.js", "console.log('hi')\n")]);
    let vol = tempfile::tempdir().unwrap();
    // A crashed earlier attempt left a partial tree.
    std::fs::create_dir_all(vol.path().join("app/node_modules")).unwrap();
    std::fs::write(vol.path().join("app/stale.js"), "old").unwrap();

    let files = extract(vol.path(), [&deps[..], &app[..]], Limits::default()).unwrap();
    assert_eq!(files, 2);
    assert_eq!(
        std::fs::read_to_string(vol.path().join("app/server.js")).unwrap(),
        "console.log('hi')\n"
    );
    assert!(vol.path().join("app/node_modules/left-pad/index.js").is_file());
    assert!(!vol.path().join("app/stale.js").exists());
    let bin = vol.path().join("bin/aether-runtime");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
}

#[test]
fn corrupt_layers_are_refused_with_a_reason() {
    let vol = tempfile::tempdir().unwrap();
    let e = extract(vol.path(), [&b"not zstd at all"[..]], Limits::default()).unwrap_err();
    assert_eq!(e.reason(), "ArtifactCorrupt");
}

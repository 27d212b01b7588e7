//! What `aether pack` writes, the runtime unpacks to the same tree.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use aether_artifact::digest::{self, VerifyError};
use aether_artifact::layer::{PackOptions, collect, pack_layer};
use aether_artifact::unpack::{Limits, Unpacker};

#[test]
fn pack_verify_unpack_reproduces_the_tree() {
    let src = tempfile::tempdir().expect("src");
    let s = src.path();
    fs::create_dir_all(s.join("node_modules/pkg/bin")).expect("dirs");
    fs::create_dir_all(s.join("node_modules/.bin")).expect("dirs");
    fs::create_dir_all(s.join("empty")).expect("dirs");
    let long = format!("node_modules/{}/index.js", "deep-name".repeat(20));
    fs::create_dir_all(s.join(&long).parent().expect("parent")).expect("dirs");
    fs::write(s.join(&long), "long").expect("write");
    fs::write(s.join("node_modules/pkg/index.js"), "module.exports = 42;\n").expect("write");
    fs::write(s.join("node_modules/pkg/bin/cli.js"), "#!/usr/bin/env node\n").expect("write");
    fs::set_permissions(
        s.join("node_modules/pkg/bin/cli.js"),
        fs::Permissions::from_mode(0o755),
    )
    .expect("chmod");
    std::os::unix::fs::symlink("../pkg/bin/cli.js", s.join("node_modules/.bin/pkg")).expect("symlink");

    let paths = collect(s, &mut |_, _| true).expect("collect");
    let mut layer = Vec::new();
    let stats = pack_layer(s, &paths, &mut layer, &PackOptions::default()).expect("pack");

    digest::verify(&layer[..], &stats.digest, stats.size).expect("verify");
    let mut flipped = layer.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x10;
    assert!(matches!(
        digest::verify(&flipped[..], &stats.digest, stats.size),
        Err(VerifyError::DigestMismatch { .. })
    ));

    let dst = tempfile::tempdir().expect("dst");
    let mut u = Unpacker::new(dst.path(), Limits::default()).expect("unpacker");
    u.unpack_layer(&layer[..]).expect("unpack");
    let summary = u.finish().expect("finish");
    assert_eq!(summary.files, 3);
    assert_eq!(summary.symlinks, 1);

    let d = dst.path();
    assert_eq!(
        fs::read_to_string(d.join("node_modules/pkg/index.js")).expect("read"),
        "module.exports = 42;\n"
    );
    assert_eq!(fs::read_to_string(d.join(&long)).expect("read long"), "long");
    assert_eq!(
        fs::read_to_string(d.join("node_modules/.bin/pkg")).expect("through link"),
        "#!/usr/bin/env node\n"
    );
    let mode = fs::metadata(d.join("node_modules/pkg/bin/cli.js"))
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o755);
    assert!(d.join("empty").is_dir());
}

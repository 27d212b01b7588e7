//! Arbitrary bytes as a layer's tar stream (compressed here, so the fuzzer explores
//! tar headers rather than zstd framing) and as a raw zstd stream. Whatever the
//! input: no panic, no hang, and nothing outside the extraction root.

#![no_main]

use aether_artifact::unpack::{Limits, Unpacker};
use libfuzzer_sys::fuzz_target;

fn unpack_contained(layer: &[u8]) {
    let base = tempfile::tempdir().expect("tempdir");
    let root = base.path().join("root");
    std::fs::create_dir(&root).expect("root");
    let limits = Limits { max_total_bytes: 8 << 20, max_file_bytes: 4 << 20, max_entries: 4096, ..Limits::default() };
    if let Ok(mut u) = Unpacker::new(&root, limits) {
        if u.unpack_layer(layer).is_ok() {
            let _ = u.finish();
        }
    }
    let names: Vec<_> = std::fs::read_dir(base.path()).expect("base").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["root"], "something was written outside the root");
    assert_links_inside(&root, &root);
}

/// Every symlink that resolves, resolves inside the root.
fn assert_links_inside(root: &std::path::Path, dir: &std::path::Path) {
    for entry in std::fs::read_dir(dir).expect("dir").flatten() {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).expect("meta");
        if meta.file_type().is_symlink() {
            if let Ok(real) = std::fs::canonicalize(&path) {
                assert!(real.starts_with(root.canonicalize().expect("root")), "{path:?} -> {real:?}");
            }
        } else if meta.is_dir() {
            assert_links_inside(root, &path);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(compressed) = zstd::encode_all(data, 1) {
        unpack_contained(&compressed);
    }
    unpack_contained(data);
});

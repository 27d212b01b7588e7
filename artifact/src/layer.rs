//! Packing a layer: a deterministic tar (sorted entries, fixed owner and mtime,
//! normalised modes, no special files, symlinks only inside the layer) compressed with
//! multi-threaded zstd, hashed while it is written.
//!
//! Same input tree → byte-identical output on any machine: zstd's multi-threaded
//! output does not depend on the number of worker threads, nor the tar stream on
//! the number of reader threads (tested below).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

use crate::digest::{Digest, HashingReader, HashingWriter};
use crate::path::{self, PathError};

/// Every entry carries this mtime, so unchanged files give unchanged bytes.
pub const FIXED_MTIME: u64 = 0;
/// Files up to this size are read in one go; larger ones are streamed.
const SMALL_FILE: u64 = 1 << 20;
/// Deepest path the packer writes (the unpacker's default limit is the same).
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, Clone)]
pub struct PackOptions {
    /// zstd level; 3 is zstd's default and a good speed/size balance.
    pub level: i32,
    /// zstd worker threads besides the caller (≥ 1). Does not change the output bytes.
    pub threads: u32,
}

impl Default for PackOptions {
    fn default() -> Self {
        // A worker per core: compression is the longest stage (about half the CPU
        // time of a pack), and reading, hashing and tarring run on other threads
        // beside it. On 2 cores, 2 workers measured a little faster than 1 (the
        // last jobs finish in parallel).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Self {
            level: 3,
            threads: cores.max(1),
        }
    }
}

/// What a packed layer is, for the manifest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LayerStats {
    /// sha256 of the compressed bytes.
    pub digest: Digest,
    /// Compressed size.
    pub size: u64,
    /// Size of the file contents before compression.
    pub content_bytes: u64,
    /// Number of entries (files, directories, symlinks).
    pub entries: u64,
    /// Digest of the sorted list of `kind mode size sha256-or-target path` lines.
    pub files_digest: Digest,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("{path}: {source}")]
    InvalidPath {
        path: String,
        #[source]
        source: PathError,
    },
    #[error("{path}: file name is not valid UTF-8")]
    NotUtf8 { path: PathBuf },
    #[error("{path}: symlink to '{target}' points outside the layer; replace it with the file or ignore it")]
    LinkOutside { path: String, target: String },
    #[error("{path}: {kind} cannot be packed; delete it or add it to .aetherignore")]
    SpecialFile { path: String, kind: &'static str },
    #[error("{path} and {other} differ only in case or Unicode normalisation; rename one")]
    Collision { path: String, other: String },
    #[error("{path} changed while it was being packed; try again")]
    Changed { path: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &str) -> impl FnOnce(io::Error) -> PackError + '_ {
    move |source| PackError::Io {
        path: path.to_string(),
        source,
    }
}

/// Every path below `root` (directories included), relative and `/`-separated, in
/// packing order. `keep(path, is_dir)` may prune entries; a pruned directory is not
/// descended into.
pub fn collect(root: &Path, keep: &mut dyn FnMut(&str, bool) -> bool) -> Result<Vec<String>, PackError> {
    let mut out = Vec::new();
    walk(root, "", keep, &mut out)?;
    out.sort_unstable();
    Ok(out)
}

fn walk(
    dir: &Path,
    rel: &str,
    keep: &mut dyn FnMut(&str, bool) -> bool,
    out: &mut Vec<String>,
) -> Result<(), PackError> {
    let entries = fs::read_dir(dir).map_err(io_err(rel))?;
    for entry in entries {
        let entry = entry.map_err(io_err(rel))?;
        let name = entry.file_name();
        let name = name
            .to_str()
            .ok_or_else(|| PackError::NotUtf8 { path: entry.path() })?;
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let is_dir = entry.file_type().map_err(io_err(&path))?.is_dir();
        if !keep(&path, is_dir) {
            continue;
        }
        out.push(path.clone());
        if is_dir {
            walk(&entry.path(), &path, keep, out)?;
        }
    }
    Ok(())
}

/// One entry, checked and (for small files) read and hashed.
enum Prepared {
    Dir,
    /// A file read whole (small files: most of node_modules), already hashed; its
    /// bytes follow the previous small file's in [`Part::data`].
    Small {
        mode: u32,
        len: usize,
        digest: Digest,
    },
    /// A file to stream from disk.
    Large {
        mode: u32,
        size: u64,
    },
    Link {
        target: String,
    },
}

/// Consecutive entries prepared by a reader thread.
#[derive(Default)]
struct Part {
    /// Ends at the first error: the entries after it are not read.
    items: Vec<Result<Prepared, PackError>>,
    /// The small files' contents, back to back, in `data[..used]`. The rest is
    /// initialised space kept from earlier use, so it is not zeroed again.
    data: Vec<u8>,
    used: usize,
    /// The last part of its chunk.
    last: bool,
}

/// Entries per chunk: reader `r` of `R` prepares chunks `r`, `r + R`, … in order.
const CHUNK_ENTRIES: usize = 64;
/// A reader hands a part over once it holds this many bytes (or at the end of its
/// chunk).
const PART_BYTES: usize = 1 << 20;
/// Parts queued per reader: at most (2 + this) × readers × ~2 MiB in memory.
const PARTS_QUEUED: usize = 4;
/// Reader threads, at most.
const MAX_READERS: usize = 4;

/// Pack `paths` (relative to `root`, as returned by [`collect`]) into `out`.
///
/// Three stages run at once: reader threads stat, read and hash the files (chunks
/// of consecutive entries, in turn); this thread writes the tar stream, in order,
/// into zstd; zstd's workers compress. The bytes written do not depend on how many
/// threads there are: the tar stream is the same, and so is zstd's output.
pub fn pack_layer(
    root: &Path,
    paths: &[String],
    out: impl Write,
    options: &PackOptions,
) -> Result<LayerStats, PackError> {
    pack_with_readers(root, paths, out, options, reader_threads())
}

fn pack_with_readers(
    root: &Path,
    paths: &[String],
    out: impl Write,
    options: &PackOptions,
    readers: usize,
) -> Result<LayerStats, PackError> {
    let mut sorted: Vec<&String> = paths.iter().collect();
    sorted.sort_unstable();

    let mut encoder =
        zstd::stream::write::Encoder::new(HashingWriter::new(BufWriter::new(out)), options.level)
            .map_err(io_err("<zstd>"))?;
    encoder
        .multithread(options.threads.max(1))
        .map_err(io_err("<zstd>"))?;
    // tar writes 512-byte headers and small files: batch them before each call into zstd.
    let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, encoder));
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);

    let mut list = HashingWriter::new(io::sink());
    let mut content_bytes = 0u64;
    let chunks: Vec<&[&String]> = sorted.chunks(CHUNK_ENTRIES).collect();
    let readers = readers.max(1).min(chunks.len());
    std::thread::scope(|scope| -> Result<(), PackError> {
        let mut queues = Vec::with_capacity(readers);
        for r in 0..readers {
            let (tx, rx) = mpsc::sync_channel::<Part>(PARTS_QUEUED);
            let (back_tx, back_rx) = mpsc::channel::<Part>();
            let mine: Vec<&[&String]> = chunks.iter().skip(r).step_by(readers).copied().collect();
            scope.spawn(move || read_chunks(root, &mine, &tx, &back_rx));
            queues.push((rx, back_tx));
        }
        // While the readers start.
        check_collisions(&sorted)?;
        let mut rels = sorted.iter();
        for c in 0..chunks.len() {
            let (rx, back) = &queues[c % readers];
            loop {
                // A reader only goes away early by panicking; the scope re-raises that.
                let mut part = rx
                    .recv()
                    .map_err(|_| io_err("<reader>")(io::Error::other("a reader thread stopped")))?;
                let mut offset = 0;
                for (item, rel) in part.items.drain(..).zip(&mut rels) {
                    let item = item?;
                    let mut header = tar::Header::new_gnu();
                    header.set_mtime(FIXED_MTIME);
                    header.set_uid(0);
                    header.set_gid(0);
                    match item {
                        Prepared::Dir => {
                            header.set_entry_type(tar::EntryType::Directory);
                            header.set_mode(0o755);
                            header.set_size(0);
                            tar.append_data(&mut header, format!("{rel}/"), io::empty())
                                .map_err(io_err(rel))?;
                            writeln!(list, "d 755 0 - {rel}").map_err(io_err(rel))?;
                        }
                        Prepared::Small { mode, len, digest } => {
                            let data = &part.data[offset..offset + len];
                            offset += len;
                            header.set_entry_type(tar::EntryType::Regular);
                            header.set_mode(mode);
                            header.set_size(len as u64);
                            tar.append_data(&mut header, rel.as_str(), data)
                                .map_err(io_err(rel))?;
                            content_bytes += len as u64;
                            writeln!(list, "f {mode:o} {len} {} {rel}", digest.hex()).map_err(io_err(rel))?;
                        }
                        Prepared::Large { mode, size } => {
                            header.set_entry_type(tar::EntryType::Regular);
                            header.set_mode(mode);
                            header.set_size(size);
                            let digest = append_large(&mut tar, &mut header, root, rel, size)?;
                            content_bytes += size;
                            writeln!(list, "f {mode:o} {size} {} {rel}", digest.hex())
                                .map_err(io_err(rel))?;
                        }
                        Prepared::Link { target } => {
                            header.set_entry_type(tar::EntryType::Symlink);
                            header.set_mode(0o777);
                            header.set_size(0);
                            tar.append_link(&mut header, rel.as_str(), &target)
                                .map_err(io_err(rel))?;
                            writeln!(list, "l 777 0 {target} {rel}").map_err(io_err(rel))?;
                        }
                    }
                }
                let last = part.last;
                // Its buffer goes back to the reader (which may have finished).
                let _ = back.send(part);
                if last {
                    break;
                }
            }
        }
        Ok(())
        // Dropping the queues stops readers still running (after an error).
    })?;

    let buffered = tar.into_inner().map_err(io_err("<tar>"))?;
    let encoder = buffered
        .into_inner()
        .map_err(|e| io_err("<tar>")(e.into_error()))?;
    let hashing = encoder.finish().map_err(io_err("<zstd>"))?;
    let (digest, size, mut output) = hashing.finish();
    output.flush().map_err(io_err("<output>"))?;
    let (files_digest, _, _) = list.finish();
    Ok(LayerStats {
        digest,
        size,
        content_bytes,
        entries: sorted.len() as u64,
        files_digest,
    })
}

fn reader_threads() -> usize {
    // Half the cores: reading and hashing take about half of what zstd takes.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).clamp(1, MAX_READERS)
}

/// A reader thread: prepare `chunks` in order, in parts, until done, the first
/// error, or the packing thread going away.
fn read_chunks(root: &Path, chunks: &[&[&String]], tx: &SyncSender<Part>, back: &Receiver<Part>) {
    let mut dirs = match Dirs::new(root) {
        Ok(dirs) => dirs,
        Err(e) => {
            let mut part = spare(back);
            part.items.push(Err(io_err("<root>")(e)));
            part.last = true;
            let _ = tx.send(part);
            return;
        }
    };
    for chunk in chunks {
        let mut part = spare(back);
        for rel in chunk.iter() {
            let item = prepare(root, &mut dirs, rel, &mut part);
            let failed = item.is_err();
            part.items.push(item);
            if failed {
                part.last = true;
                let _ = tx.send(part);
                return;
            }
            if part.used >= PART_BYTES && tx.send(std::mem::replace(&mut part, spare(back))).is_err() {
                return;
            }
        }
        part.last = true;
        if tx.send(part).is_err() {
            return;
        }
    }
}

/// A part to fill: one the packing thread is done with, or a new one.
fn spare(back: &Receiver<Part>) -> Part {
    match back.try_recv() {
        Ok(mut part) => {
            part.items.clear();
            part.used = 0;
            part.last = false;
            part
        }
        Err(_) => Part::default(),
    }
}

/// Stream a large file into the tar, hashing it on the way.
fn append_large(
    tar: &mut tar::Builder<impl Write>,
    header: &mut tar::Header,
    root: &Path,
    rel: &str,
    size: u64,
) -> Result<Digest, PackError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(root.join(rel))
        .map_err(io_err(rel))?;
    let mut reader = HashingReader::new(io::BufReader::with_capacity(1 << 18, file.take(size)));
    tar.append_data(header, rel, &mut reader).map_err(|e| {
        // tar reports a short read as UnexpectedEof: the file shrank.
        if e.kind() == io::ErrorKind::UnexpectedEof {
            PackError::Changed {
                path: rel.to_string(),
            }
        } else {
            PackError::Io {
                path: rel.to_string(),
                source: e,
            }
        }
    })?;
    let (digest, read) = reader.finish();
    if read != size {
        return Err(PackError::Changed {
            path: rel.to_string(),
        });
    }
    Ok(digest)
}

/// The directories from the layer's root down to the entry being read, kept open:
/// an entry is looked up by its name alone, relative to its parent (no walk of the
/// whole path for each call), and never through a symlink.
struct Dirs {
    root: OwnedFd,
    /// Name and descriptor of each directory below the root, outermost first.
    open: Vec<(String, OwnedFd)>,
}

impl Dirs {
    fn new(root: &Path) -> io::Result<Self> {
        let root = rfs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Self {
            root,
            open: Vec::new(),
        })
    }

    /// The directory `parents` (components below the root), opened.
    fn get(&mut self, parents: &[&str]) -> io::Result<&OwnedFd> {
        let keep = self
            .open
            .iter()
            .zip(parents)
            .take_while(|((open, _), name)| open == *name)
            .count();
        self.open.truncate(keep);
        for name in &parents[keep..] {
            let dir = self.open.last().map_or(&self.root, |(_, fd)| fd);
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let fd = rfs::openat(dir, *name, flags, Mode::empty())?;
            self.open.push((name.to_string(), fd));
        }
        Ok(self.open.last().map_or(&self.root, |(_, fd)| fd))
    }
}

/// Check, stat and (for small files) read into `part` and hash one entry.
fn prepare(root: &Path, dirs: &mut Dirs, rel: &str, part: &mut Part) -> Result<Prepared, PackError> {
    let parts = path::components(rel, MAX_DEPTH).map_err(|source| PackError::InvalidPath {
        path: rel.to_string(),
        source,
    })?;
    let errno = |e: rustix::io::Errno| io_err(rel)(e.into());
    let (name, parents) = parts.split_last().ok_or(PackError::InvalidPath {
        path: rel.to_string(),
        source: PathError::Empty,
    })?;
    let dir = dirs.get(parents).map_err(io_err(rel))?;
    let stat = rfs::statat(dir, *name, AtFlags::SYMLINK_NOFOLLOW).map_err(errno)?;
    match rfs::FileType::from_raw_mode(stat.st_mode) {
        rfs::FileType::Directory => Ok(Prepared::Dir),
        rfs::FileType::RegularFile => {
            let mode = if stat.st_mode & 0o111 != 0 { 0o755 } else { 0o644 };
            let size = u64::try_from(stat.st_size).unwrap_or(0);
            if size > SMALL_FILE {
                return Ok(Prepared::Large { mode, size });
            }
            let len = size as usize;
            let start = part.used;
            // One byte more than expected, so a file that grew is noticed.
            if part.data.len() < start + len + 1 {
                part.data.resize((start + len + 1).max(PART_BYTES), 0);
            }
            let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::CLOEXEC;
            let file = File::from(rfs::openat(dir, *name, flags, Mode::empty()).map_err(errno)?);
            let read = read_file(file, &mut part.data[start..start + len + 1], len).map_err(io_err(rel))?;
            if read != len {
                return Err(PackError::Changed {
                    path: rel.to_string(),
                });
            }
            part.used += len;
            let digest = Digest::of(&part.data[start..start + len]);
            Ok(Prepared::Small { mode, len, digest })
        }
        rfs::FileType::Symlink => {
            let target = rfs::readlinkat(dir, *name, Vec::new()).map_err(errno)?;
            let target = target
                .into_string()
                .map_err(|_| PackError::NotUtf8 { path: root.join(rel) })?;
            if !link_stays_inside(rel, &target) {
                return Err(PackError::LinkOutside {
                    path: rel.to_string(),
                    target,
                });
            }
            Ok(Prepared::Link { target })
        }
        other => Err(PackError::SpecialFile {
            path: rel.to_string(),
            kind: special_kind(other),
        }),
    }
}

/// Read `file`, expected to hold `expected` bytes, into `buf` (one byte longer, so
/// a file that grew is noticed); how many bytes it held. A short read that brings
/// the total to the expected size is the end of a regular file: no extra read.
fn read_file(mut file: File, buf: &mut [u8], expected: usize) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let want = buf.len() - filled;
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => {
                filled += n;
                if n < want && filled == expected {
                    break;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn check_collisions(sorted: &[&String]) -> Result<(), PackError> {
    let mut seen: HashMap<String, &str> = HashMap::with_capacity(sorted.len());
    for rel in sorted {
        let parts: Vec<&str> = rel.split('/').filter(|p| !p.is_empty()).collect();
        if let Some(other) = seen.insert(path::collision_key(&parts), rel) {
            return Err(PackError::Collision {
                path: rel.to_string(),
                other: other.to_string(),
            });
        }
    }
    Ok(())
}

/// Does a symlink at `link` (relative to the layer root) with `target` resolve,
/// lexically, to a place inside the layer? The unpacker re-checks against the real
/// tree, links through links included.
fn link_stays_inside(link: &str, target: &str) -> bool {
    if target.is_empty() || target.starts_with('/') || target.contains('\\') {
        return false;
    }
    let mut stack: Vec<&str> = link.split('/').filter(|p| !p.is_empty()).collect();
    stack.pop();
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if stack.pop().is_none() {
                    return false;
                }
            }
            p => stack.push(p),
        }
    }
    true
}

fn special_kind(ft: rfs::FileType) -> &'static str {
    match ft {
        rfs::FileType::Fifo => "a FIFO",
        rfs::FileType::Socket => "a socket",
        rfs::FileType::BlockDevice | rfs::FileType::CharacterDevice => "a device",
        _ => "a special file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        fs::create_dir_all(r.join("node_modules/pkg/bin")).unwrap();
        fs::create_dir_all(r.join("node_modules/.bin")).unwrap();
        fs::write(
            r.join("node_modules/pkg/index.js"),
            "module.exports = 1;\n".repeat(100),
        )
        .unwrap();
        fs::write(r.join("node_modules/pkg/bin/cli.js"), "#!/usr/bin/env node\n").unwrap();
        fs::set_permissions(
            r.join("node_modules/pkg/bin/cli.js"),
            fs::Permissions::from_mode(0o4777),
        )
        .unwrap();
        std::os::unix::fs::symlink("../pkg/bin/cli.js", r.join("node_modules/.bin/pkg")).unwrap();
        dir
    }

    fn pack(root: &Path, threads: u32) -> (Vec<u8>, LayerStats) {
        let paths = collect(root, &mut |_, _| true).unwrap();
        let mut out = Vec::new();
        let stats = pack_layer(root, &paths, &mut out, &PackOptions { level: 3, threads }).unwrap();
        (out, stats)
    }

    #[test]
    fn output_is_identical_across_runs_and_thread_counts() {
        let t = tree();
        let (a, sa) = pack(t.path(), 1);
        let (b, sb) = pack(t.path(), 4);
        assert_eq!(a, b);
        assert_eq!(sa, sb);
        assert_eq!(sa.digest, Digest::of(&a));
        assert_eq!(sa.size, a.len() as u64);
        assert_eq!(sa.entries, 7);
    }

    /// Enough entries for many chunks, parts cut by size, and every kind of entry.
    fn big_tree() -> tempfile::TempDir {
        let t = tree();
        let r = t.path();
        for d in 0..12 {
            let dir = r.join(format!("node_modules/dep{d}/lib"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..30 {
                let len = (d * 131 + f * 977) % 9000;
                fs::write(dir.join(format!("f{f}.js")), vec![b'a' + (f % 26) as u8; len]).unwrap();
            }
            fs::write(dir.join("empty.js"), "").unwrap();
            std::os::unix::fs::symlink("f1.js", dir.join("link.js")).unwrap();
        }
        // Files around the part size and above the size read whole.
        for (name, len) in [("p1", 700 << 10), ("p2", 700 << 10), ("large", (1 << 20) + 1)] {
            fs::write(r.join("node_modules/dep3").join(name), vec![7u8; len]).unwrap();
        }
        t
    }

    #[test]
    fn output_is_identical_across_reader_counts() {
        let t = big_tree();
        let paths = collect(t.path(), &mut |_, _| true).unwrap();
        let mut outputs = Vec::new();
        for (readers, threads) in [(1, 1), (2, 1), (3, 2), (4, 4)] {
            let mut out = Vec::new();
            let options = PackOptions { level: 3, threads };
            let stats = pack_with_readers(t.path(), &paths, &mut out, &options, readers).unwrap();
            assert_eq!(stats.entries, paths.len() as u64);
            outputs.push((out, stats));
        }
        assert!(outputs.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn the_first_bad_entry_is_reported_whatever_the_reader_count() {
        let t = big_tree();
        let mut paths = collect(t.path(), &mut |_, _| true).unwrap();
        paths.push("node_modules/dep7/lib/gone.js".into());
        paths.push("node_modules/dep9/lib/gone.js".into());
        for readers in [1, 2, 3] {
            let err = pack_with_readers(t.path(), &paths, io::sink(), &PackOptions::default(), readers)
                .unwrap_err();
            assert!(
                matches!(err, PackError::Io { ref path, .. } if path == "node_modules/dep7/lib/gone.js"),
                "{readers}: {err}"
            );
        }
    }

    #[test]
    fn paths_differing_only_in_case_are_refused() {
        let t = big_tree();
        fs::write(t.path().join("node_modules/dep5/lib/F3.js"), "x").unwrap();
        let paths = collect(t.path(), &mut |_, _| true).unwrap();
        for readers in [1, 3] {
            let err = pack_with_readers(t.path(), &paths, io::sink(), &PackOptions::default(), readers)
                .unwrap_err();
            assert!(matches!(err, PackError::Collision { .. }), "{readers}: {err}");
        }
    }

    #[test]
    fn a_file_that_grew_or_shrank_is_noticed() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("f");
        fs::write(&path, "abcd").unwrap();
        let mut buf = [0u8; 4];
        assert_eq!(read_file(File::open(&path).unwrap(), &mut buf, 3).unwrap(), 4);
        let mut buf = [0u8; 6];
        assert_eq!(read_file(File::open(&path).unwrap(), &mut buf, 5).unwrap(), 4);
        let mut buf = [0u8; 5];
        assert_eq!(read_file(File::open(&path).unwrap(), &mut buf, 4).unwrap(), 4);
        assert_eq!(&buf[..4], b"abcd");
    }

    #[test]
    fn modes_owners_and_times_are_normalised() {
        let t = tree();
        let (bytes, _) = pack(t.path(), 1);
        let mut archive = tar::Archive::new(zstd::stream::read::Decoder::new(&bytes[..]).unwrap());
        for entry in archive.entries().unwrap() {
            let e = entry.unwrap();
            let h = e.header();
            assert_eq!(h.mtime().unwrap(), FIXED_MTIME);
            assert_eq!((h.uid().unwrap(), h.gid().unwrap()), (0, 0));
            let mode = h.mode().unwrap();
            let path = e.path().unwrap().to_string_lossy().into_owned();
            match h.entry_type() {
                tar::EntryType::Directory => assert_eq!(mode, 0o755, "{path}"),
                tar::EntryType::Symlink => assert_eq!(mode, 0o777, "{path}"),
                _ if path.ends_with("cli.js") => assert_eq!(mode, 0o755, "setuid dropped: {path}"),
                _ => assert_eq!(mode, 0o644, "{path}"),
            }
        }
    }

    #[test]
    fn refuses_links_out_of_the_layer_and_special_files() {
        let t = tree();
        std::os::unix::fs::symlink("../../../etc/passwd", t.path().join("node_modules/.bin/evil")).unwrap();
        let paths = collect(t.path(), &mut |_, _| true).unwrap();
        let err = pack_layer(t.path(), &paths, io::sink(), &PackOptions::default()).unwrap_err();
        assert!(
            matches!(err, PackError::LinkOutside { ref path, .. } if path == "node_modules/.bin/evil"),
            "{err}"
        );

        let t = tree();
        let fifo = t.path().join("queue");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let paths = collect(t.path(), &mut |_, _| true).unwrap();
        let err = pack_layer(t.path(), &paths, io::sink(), &PackOptions::default()).unwrap_err();
        assert!(
            matches!(err, PackError::SpecialFile { ref path, .. } if path == "queue"),
            "{err}"
        );
    }

    #[test]
    fn collect_prunes_directories() {
        let t = tree();
        let paths = collect(t.path(), &mut |p, is_dir| !(is_dir && p.ends_with(".bin"))).unwrap();
        assert!(paths.iter().all(|p| !p.contains(".bin")), "{paths:?}");
        assert!(paths.contains(&"node_modules/pkg/index.js".to_string()));
    }

    #[test]
    fn link_checks() {
        assert!(link_stays_inside("a/b/link", "../c"));
        assert!(link_stays_inside("a/link", "../c"));
        assert!(!link_stays_inside("link", "../c"));
        assert!(!link_stays_inside("a/link", "/etc"));
        assert!(!link_stays_inside("a/link", ""));
    }
}

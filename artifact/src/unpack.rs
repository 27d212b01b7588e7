//! Hardened extraction of layers into a fresh, empty root.
//!
//! The rules, and why they are enough:
//! - Every path is checked by [`crate::path::components`]: relative, no `..`, no
//!   backslashes or control characters, bounded depth. Duplicates, and paths that
//!   differ only in case or Unicode normalisation, are refused.
//! - Only regular files, directories and symlinks exist. Hardlinks, devices, FIFOs,
//!   sparse files and PAX headers (which `aether pack` never writes) are refused, as
//!   are directories and symlinks that carry data; GNU long names are read with a
//!   size cap, and a long link must belong to the symlink that follows it.
//! - Symlinks are created last, after every file, and only once their target has
//!   been resolved against the archive's own tree (links through links included) and
//!   found inside the root. While files are written, the root therefore holds no
//!   symlink at all, files are created with `O_EXCL`, and no entry may sit beneath a
//!   symlink entry: nothing can be written through a link.
//! - Modes are normalised (0644, 0755 for executables and directories); owners and
//!   mtimes from the archive are ignored.
//! - Caps bound the work and memory a hostile layer can cause: entries, bytes per
//!   file, depth, the zstd window, and every byte the decoder produces (headers, long
//!   names, padding and skipped data as well as file contents) counts toward the
//!   total. Symlinks are capped in number, in total target length and in the steps
//!   spent resolving them. An optional deadline is checked on every read of the
//!   compressed and the decompressed stream, so a slow or huge entry is stopped in
//!   the middle.
//! - The tar must end with its end-of-archive marker (two zero blocks): a layer cut
//!   short at an entry boundary is refused. Data after the marker (other than zero
//!   padding) is refused.
//!
//! Layers are streamed: [`Unpacker::unpack_layer`] reads from any [`Read`] (a file,
//! a socket, a slice) with bounded buffers. The calling thread decompresses, parses,
//! checks every entry and creates the directories; small files are handed, in
//! batches, to writer threads, so creating and filling files overlaps with
//! decompression. That changes nothing above: see [`Writers`] for why.
//!
//! On any error the caller must discard the root: it may hold a partial tree.

use std::cell::Cell;
use std::collections::HashMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::{self, Scope};
use std::time::Instant;

use crate::path::{self, PathError};

/// Longest GNU long name / long link accepted (Linux PATH_MAX).
const MAX_LONG_NAME: u64 = 4096;
/// Zero padding accepted after the end-of-archive marker.
const MAX_TRAILING_ZEROS: u64 = 1 << 20;
/// Symlinks followed while resolving one target (Linux: 40).
const MAX_LINK_HOPS: usize = 40;
/// One tar block: the end-of-archive marker is two of them, all zeros.
const BLOCK: u64 = 512;
/// `path` of errors raised before the first entry's header was read.
const FIRST_ENTRY: &str = "(first entry)";
/// Files up to this size are read whole and written by a writer thread; larger ones
/// are streamed to disk by the reading thread, chunk by chunk, so memory stays
/// bounded and a deadline stops them in the middle.
const BATCH_FILE_MAX: u64 = 256 << 10;
/// A batch of small files is handed to a writer once it holds this many bytes or
/// files: few hand-overs (each may wake a thread), little memory in flight.
const BATCH_BYTES: usize = 512 << 10;
const BATCH_FILES: usize = 128;
/// Batches queued for each writer; with the one it writes and the one being filled,
/// at most (2 + this) × writers × ~768 KiB are in memory.
const BATCHES_QUEUED: usize = 2;
/// Writer threads, at most.
const MAX_WRITERS: usize = 4;

/// Caps on what one root may receive, across all its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Every byte the zstd decoder produces, across all layers: file contents, tar
    /// headers, long names, padding, skipped data and the end-of-archive marker.
    pub max_total_bytes: u64,
    pub max_file_bytes: u64,
    pub max_entries: u64,
    pub max_depth: usize,
    /// log2 of the largest zstd window accepted (decoder memory ≈ 2^this bytes).
    pub max_window_log: u32,
    /// Symlinks in the root, across all layers.
    pub max_symlinks: u64,
    /// Total length of all symlink targets, across all layers.
    pub max_link_target_bytes: u64,
    /// Path components walked while resolving every symlink (links through links
    /// included), across all layers.
    pub max_link_resolution_steps: u64,
    /// Extraction (each layer and [`Unpacker::finish`]) stops with
    /// [`UnpackError::DeadlineExceeded`] once this instant has passed. Checked on
    /// every read, so also in the middle of an entry's data.
    pub deadline: Option<Instant>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_total_bytes: 4 << 30,
            max_file_bytes: 1 << 30,
            max_entries: 1_000_000,
            max_depth: crate::layer::MAX_DEPTH,
            // 32 MiB: zstd levels up to 19 stay below it (`aether pack` uses 3: 2 MiB).
            max_window_log: 25,
            // A large pnpm-style node_modules has tens of thousands of links.
            max_symlinks: 100_000,
            max_link_target_bytes: 16 << 20,
            // ~40 steps for each of the links allowed; well under a second.
            max_link_resolution_steps: 4_000_000,
            deadline: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("the extraction root {0} must be an existing, empty directory")]
    RootNotEmpty(PathBuf),
    #[error("{path}: {source}")]
    BadPath {
        path: String,
        #[source]
        source: PathError,
    },
    #[error("{path}: {kind} entries are not allowed")]
    UnsupportedEntry { path: String, kind: String },
    #[error("{path}: appears twice in the artifact")]
    Duplicate { path: String },
    #[error("{path} and {other} differ only in case or Unicode normalisation")]
    Collision { path: String, other: String },
    #[error("{path}: lies beneath {link}, which is a symlink")]
    BeneathSymlink { path: String, link: String },
    #[error("{path}: lies beneath {file}, which is a file")]
    BeneathFile { path: String, file: String },
    #[error("{path}: symlink to '{target}' leaves the extraction root")]
    LinkEscape { path: String, target: String },
    #[error("{path}: symlink to '{target}' loops or is too deeply chained")]
    LinkLoop { path: String, target: String },
    #[error("the artifact has more than {limit} symlinks")]
    TooManySymlinks { limit: u64 },
    #[error("{path}: the artifact's symlink targets exceed {limit} bytes in total")]
    LinkTargetsTooLarge { path: String, limit: u64 },
    #[error("{path}: resolving the artifact's symlinks takes more than {limit} steps")]
    LinkResolutionTooCostly { path: String, limit: u64 },
    #[error("{path}: {size} bytes exceeds the per-file limit of {limit}")]
    FileTooLarge { path: String, size: u64, limit: u64 },
    #[error("{path}: the artifact exceeds the limit of {limit} bytes in total")]
    TotalTooLarge { path: String, limit: u64 },
    #[error("the artifact has more than {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("{path}: long name of {size} bytes exceeds {MAX_LONG_NAME}")]
    LongNameTooLong { path: String, size: u64 },
    #[error("{path}: the archive ends in the middle of this entry")]
    Truncated { path: String },
    #[error("the archive ends without its end-of-archive marker (after {path}): it is truncated")]
    MissingEndOfArchive { path: String },
    #[error("unexpected data after the end of the archive")]
    TrailingData,
    #[error("{path}: extraction did not finish before its deadline")]
    DeadlineExceeded { path: String },
    #[error("the layer is not a valid zstd-compressed tar: {0}")]
    Corrupt(#[source] io::Error),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

impl UnpackError {
    /// CamelCase reason for status conditions, Events and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::RootNotEmpty(_) | Self::Io { .. } => "ExtractFailed",
            Self::FileTooLarge { .. }
            | Self::TotalTooLarge { .. }
            | Self::TooManyEntries { .. }
            | Self::TooManySymlinks { .. }
            | Self::LinkTargetsTooLarge { .. }
            | Self::LinkResolutionTooCostly { .. } => "ArtifactTooLarge",
            Self::Truncated { .. }
            | Self::MissingEndOfArchive { .. }
            | Self::TrailingData
            | Self::Corrupt(_) => "ArtifactCorrupt",
            // The runtime's own reason (and exit code) for a fetch that ran out of time.
            Self::DeadlineExceeded { .. } => "FetchDeadlineExceeded",
            _ => "UnsafeArtifact",
        }
    }
}

/// Why a [`Meter`] stopped the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Trip {
    Total,
    Deadline,
}

/// Shared by both sides of the decoder for one layer: counts every decompressed
/// byte against the total cap and checks the deadline on every read. Once tripped,
/// every further read fails, and the typed error replaces whatever error the tar
/// or zstd reader made of it.
#[derive(Debug)]
struct Meter {
    used: Cell<u64>,
    limit: u64,
    deadline: Option<Instant>,
    tripped: Cell<Option<Trip>>,
    /// The decompressed stream has ended.
    eof: Cell<bool>,
}

impl Meter {
    fn check(&self) -> io::Result<()> {
        if let Some(trip) = self.tripped.get() {
            return Err(io::Error::other(format!("extraction stopped: {trip:?}")));
        }
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return self.trip(Trip::Deadline);
        }
        Ok(())
    }

    fn trip(&self, trip: Trip) -> io::Result<()> {
        self.tripped.set(Some(trip));
        Err(io::Error::other(format!("extraction stopped: {trip:?}")))
    }
}

/// The compressed side: the deadline is checked around every read, so a slow source
/// (or a stream that decompresses to nothing) cannot hold extraction past it.
struct Compressed<'m, R> {
    inner: R,
    meter: &'m Meter,
}

impl<R: Read> Read for Compressed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.meter.check()?;
        let n = self.inner.read(buf)?;
        self.meter.check()?;
        Ok(n)
    }
}

/// The decompressed side: every byte counts toward the total, whoever reads it.
struct Decompressed<'m, R> {
    inner: R,
    meter: &'m Meter,
}

impl<R: Read> Read for Decompressed<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.meter.check()?;
        if buf.is_empty() {
            return Ok(0);
        }
        let used = self.meter.used.get();
        // Decode at most one byte beyond the cap: enough to know it was exceeded.
        let allowed = self.meter.limit.saturating_sub(used).saturating_add(1);
        let len = buf.len().min(usize::try_from(allowed).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..len])?;
        if n == 0 {
            self.meter.eof.set(true);
        }
        let used = used.saturating_add(n as u64);
        self.meter.used.set(used);
        if used > self.meter.limit {
            self.meter.trip(Trip::Total)?;
        }
        Ok(n)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

/// What was extracted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    pub bytes: u64,
}

/// Extracts one or more layers into `root`, which must start empty.
#[derive(Debug)]
pub struct Unpacker {
    root: PathBuf,
    limits: Limits,
    /// collision key → (path, kind) of everything in the root so far.
    seen: HashMap<String, (String, Kind)>,
    /// Symlinks, created by [`Unpacker::finish`]: path → target.
    links: HashMap<String, String>,
    /// Total length of the targets in `links`.
    link_target_bytes: u64,
    entries: u64,
    /// Bytes the decoder produced, across layers.
    decompressed: u64,
    summary: Summary,
    /// The parent directory most recently checked: entries arrive sorted, so most
    /// share it and need no further checks.
    last_parent: String,
    /// The entry being read, for errors raised by the stream itself.
    current: String,
    buf: Vec<u8>,
    /// Writer threads per layer (0: the calling thread writes everything).
    writers: usize,
}

impl Unpacker {
    pub fn new(root: &Path, limits: Limits) -> Result<Self, UnpackError> {
        let empty = fs::read_dir(root)
            .map(|mut d| d.next().is_none())
            .unwrap_or(false);
        if !empty {
            return Err(UnpackError::RootNotEmpty(root.to_path_buf()));
        }
        Ok(Self {
            root: root.to_path_buf(),
            limits,
            seen: HashMap::new(),
            links: HashMap::new(),
            link_target_bytes: 0,
            entries: 0,
            decompressed: 0,
            summary: Summary::default(),
            last_parent: String::new(),
            current: String::new(),
            buf: vec![0; 1 << 18],
            writers: default_writers(),
        })
    }

    /// Bytes the zstd decoder has produced so far, across layers: what
    /// [`Limits::max_total_bytes`] caps.
    pub fn decompressed_bytes(&self) -> u64 {
        self.decompressed
    }

    /// Extract one zstd-compressed tar layer, streamed from `compressed` (a file, a
    /// socket, or a `&[u8]`). Verify its digest first.
    pub fn unpack_layer(&mut self, compressed: impl Read) -> Result<(), UnpackError> {
        let meter = Meter {
            used: Cell::new(self.decompressed),
            limit: self.limits.max_total_bytes,
            deadline: self.limits.deadline,
            tripped: Cell::new(None),
            eof: Cell::new(false),
        };
        self.current = FIRST_ENTRY.into();
        let root = self.root.clone();
        let failure = Failure::default();
        let result = thread::scope(|scope| {
            let mut writers = Writers::new(scope, &root, &failure, self.writers);
            // Dropped before `writers` (reverse order): a panic below stops them
            // before their queues close, so nothing queued is written after it.
            let _stop = StopOnPanic(&failure);
            let result = self
                .extract(compressed, &meter, &mut writers)
                .and_then(|()| writers.flush());
            if result.is_err() {
                // The root is to be discarded: what is still queued is not written.
                failure.stop();
            }
            result
            // Dropping `writers` closes their queues: they write what is queued (or,
            // after a failure, skip it) and exit; the scope waits for all of them.
        });
        // Every writer has finished: no file is written after this point.
        let result = match (result, failure.take()) {
            (Ok(()), Some(e)) => Err(e),
            (result, _) => result,
        };
        self.decompressed = meter.used.get();
        let path = std::mem::take(&mut self.current);
        match meter.tripped.get() {
            Some(Trip::Total) => Err(UnpackError::TotalTooLarge {
                path,
                limit: self.limits.max_total_bytes,
            }),
            Some(Trip::Deadline) => Err(UnpackError::DeadlineExceeded { path }),
            // The tar reader's "failed to read entire block" and the like, once the
            // stream has ended: the layer was cut short.
            None if meter.eof.get() && matches!(result, Err(UnpackError::Corrupt(_))) => {
                Err(UnpackError::Truncated { path })
            }
            None => result,
        }
    }

    fn extract(
        &mut self,
        compressed: impl Read,
        meter: &Meter,
        writers: &mut Writers<'_, '_>,
    ) -> Result<(), UnpackError> {
        meter.check().map_err(UnpackError::Corrupt)?;
        let mut decoder = zstd::stream::read::Decoder::new(Compressed {
            inner: compressed,
            meter,
        })
        .map_err(UnpackError::Corrupt)?;
        decoder
            .window_log_max(self.limits.max_window_log)
            .map_err(UnpackError::Corrupt)?;
        let mut archive = tar::Archive::new(Decompressed {
            inner: decoder,
            meter,
        });
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;

        for entry in archive.entries().map_err(UnpackError::Corrupt)?.raw(true) {
            let mut entry = entry.map_err(|e| stream_error(e, &self.current))?;
            self.entries += 1;
            if self.entries > self.limits.max_entries {
                return Err(UnpackError::TooManyEntries {
                    limit: self.limits.max_entries,
                });
            }
            let header = entry.header();
            let kind = header.entry_type();
            let size = header.entry_size().map_err(UnpackError::Corrupt)?;

            if kind.is_gnu_longname() || kind.is_gnu_longlink() {
                if size > MAX_LONG_NAME {
                    return Err(UnpackError::LongNameTooLong {
                        path: self.current.clone(),
                        size,
                    });
                }
                let mut buf = Vec::with_capacity(size as usize);
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| stream_error(e, &self.current))?;
                if buf.len() as u64 != size {
                    return Err(UnpackError::Truncated {
                        path: self.current.clone(),
                    });
                }
                while buf.last() == Some(&0) {
                    buf.pop();
                }
                let slot = if kind.is_gnu_longname() {
                    &mut long_name
                } else {
                    &mut long_link
                };
                if slot.replace(buf).is_some() {
                    return Err(UnpackError::UnsupportedEntry {
                        path: self.current.clone(),
                        kind: "repeated long name".into(),
                    });
                }
                continue;
            }

            let raw_path = long_name
                .take()
                .unwrap_or_else(|| header.path_bytes().into_owned());
            let raw_path = String::from_utf8(raw_path).map_err(|e| UnpackError::BadPath {
                path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
                source: PathError::NotUtf8,
            })?;
            let parts = path::components(&raw_path, self.limits.max_depth).map_err(|source| {
                UnpackError::BadPath {
                    path: raw_path.clone(),
                    source,
                }
            })?;
            let rel = parts.join("/");
            self.current.clone_from(&rel);

            use tar::EntryType as E;
            // A long link names the target of the symlink right after it, nothing else.
            if long_link.is_some() && kind != E::Symlink {
                return Err(UnpackError::UnsupportedEntry {
                    path: rel,
                    kind: "long link before a non-symlink".into(),
                });
            }
            // `aether pack` writes directories and symlinks with no data; readers
            // disagree on what such data means, so it is refused before it is read.
            if size > 0 && matches!(kind, E::Directory | E::Symlink) {
                let kind = if kind == E::Directory {
                    "directory with data"
                } else {
                    "symlink with data"
                };
                return Err(UnpackError::UnsupportedEntry {
                    path: rel,
                    kind: kind.into(),
                });
            }
            match kind {
                E::Regular | E::Continuous => {
                    if size > self.limits.max_file_bytes {
                        return Err(UnpackError::FileTooLarge {
                            path: rel,
                            size,
                            limit: self.limits.max_file_bytes,
                        });
                    }
                    // Refused before a byte is written if it cannot fit.
                    if meter.used.get().saturating_add(size) > self.limits.max_total_bytes {
                        return Err(UnpackError::TotalTooLarge {
                            path: rel,
                            limit: self.limits.max_total_bytes,
                        });
                    }
                    self.check_parents(&parts)?;
                    self.claim(&parts, &rel, Kind::File)?;
                    let mode = normal_mode(header.mode().unwrap_or(0o644));
                    if size <= BATCH_FILE_MAX {
                        writers.add(rel, size, mode, &mut entry)?;
                    } else {
                        writers.check()?;
                        self.write_file(&rel, size, mode, &mut entry)?;
                    }
                    self.summary.files += 1;
                    self.summary.bytes += size;
                }
                E::Directory => {
                    self.check_parents(&parts)?;
                    self.make_dir(&parts, &rel)?;
                }
                E::Symlink => {
                    let target = long_link.take().unwrap_or_else(|| {
                        header
                            .link_name_bytes()
                            .map(|b| b.into_owned())
                            .unwrap_or_default()
                    });
                    let target = String::from_utf8(target).map_err(|_| UnpackError::LinkEscape {
                        path: rel.clone(),
                        target: "<not UTF-8>".into(),
                    })?;
                    if self.links.len() as u64 >= self.limits.max_symlinks {
                        return Err(UnpackError::TooManySymlinks {
                            limit: self.limits.max_symlinks,
                        });
                    }
                    let target_bytes = self.link_target_bytes + target.len() as u64;
                    if target_bytes > self.limits.max_link_target_bytes {
                        return Err(UnpackError::LinkTargetsTooLarge {
                            path: rel,
                            limit: self.limits.max_link_target_bytes,
                        });
                    }
                    self.check_parents(&parts)?;
                    self.claim(&parts, &rel, Kind::Symlink)?;
                    self.link_target_bytes = target_bytes;
                    self.links.insert(rel, target);
                }
                other => {
                    let kind = match other {
                        E::Link => "hardlink",
                        E::Char | E::Block => "device",
                        E::Fifo => "FIFO",
                        E::GNUSparse => "sparse file",
                        E::XHeader | E::XGlobalHeader => "PAX header",
                        _ => "unknown",
                    };
                    return Err(UnpackError::UnsupportedEntry {
                        path: rel,
                        kind: kind.into(),
                    });
                }
            }
        }
        if long_name.is_some() || long_link.is_some() {
            return Err(UnpackError::Truncated {
                path: self.current.clone(),
            });
        }
        // The tar reader stops at the first zero block, or quietly at the end of the
        // stream: the latter is a layer cut short at an entry boundary.
        let missing_end = || UnpackError::MissingEndOfArchive {
            path: self.current.clone(),
        };
        if meter.eof.get() {
            return Err(missing_end());
        }

        // The second zero block of the marker, then only zero padding.
        let mut rest = archive.into_inner().take(MAX_TRAILING_ZEROS + 1);
        let mut buf = [0u8; 8192];
        let mut total = 0u64;
        loop {
            let n = rest.read(&mut buf).map_err(|_| UnpackError::TrailingData)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > MAX_TRAILING_ZEROS || buf[..n].iter().any(|&b| b != 0) {
                return Err(UnpackError::TrailingData);
            }
        }
        if total < BLOCK {
            return Err(missing_end());
        }
        Ok(())
    }

    /// Check and create the symlinks. Call once, after the last layer.
    pub fn finish(mut self) -> Result<Summary, UnpackError> {
        let mut links: Vec<(&String, &String)> = self.links.iter().collect();
        links.sort_unstable();
        let tree = LinkTree::new(&links);
        let mut budget = self.limits.max_link_resolution_steps;
        for (rel, target) in &links {
            self.check_deadline(rel)?;
            self.resolve_inside(&tree, rel, target, &mut budget)?;
        }
        for (rel, target) in &links {
            self.check_deadline(rel)?;
            let full = self.root.join(rel);
            std::os::unix::fs::symlink(target, &full).map_err(|source| UnpackError::Io {
                path: rel.to_string(),
                source,
            })?;
            self.summary.symlinks += 1;
        }
        Ok(std::mem::take(&mut self.summary))
    }

    fn check_deadline(&self, rel: &str) -> Result<(), UnpackError> {
        if self.limits.deadline.is_some_and(|d| Instant::now() >= d) {
            return Err(UnpackError::DeadlineExceeded { path: rel.into() });
        }
        Ok(())
    }

    /// Follow `target` from the directory holding `rel` through the archive's own
    /// symlinks, as the kernel would, and make sure it never leaves the root. Each
    /// component walked costs one step of `budget` (shared by all links) and one
    /// lookup of that component alone, so the cost is bounded whatever the depth.
    fn resolve_inside(
        &self,
        tree: &LinkTree,
        rel: &str,
        target: &str,
        budget: &mut u64,
    ) -> Result<(), UnpackError> {
        let escape = || UnpackError::LinkEscape {
            path: rel.into(),
            target: target.into(),
        };
        if target.is_empty() || target.starts_with('/') || target.contains('\\') || target.contains('\0') {
            return Err(escape());
        }
        // Where we are: nodes of the link tree from the root down, then `beyond`
        // components below which the archive has no symlink.
        let mut stack = vec![LinkTree::ROOT];
        let mut beyond = 0usize;
        // Start in the link's own directory: a real one, since no entry may lie
        // beneath a symlink.
        let mut parents: Vec<&str> = rel.split('/').collect();
        parents.pop();
        for part in parents {
            match tree.child(stack[stack.len() - 1], part) {
                Some(node) if beyond == 0 => stack.push(node),
                _ => beyond += 1,
            }
        }
        let mut pending: Vec<&str> = target.split('/').rev().collect();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            if *budget == 0 {
                return Err(UnpackError::LinkResolutionTooCostly {
                    path: rel.into(),
                    limit: self.limits.max_link_resolution_steps,
                });
            }
            *budget -= 1;
            match part {
                "" | "." => {}
                ".." => {
                    if beyond > 0 {
                        beyond -= 1;
                    } else if stack.len() > 1 {
                        stack.pop();
                    } else {
                        return Err(escape());
                    }
                }
                name => {
                    let top = stack[stack.len() - 1];
                    match (beyond, tree.child(top, name)) {
                        (0, Some(node)) => match tree.target(node) {
                            Some(next) => {
                                hops += 1;
                                if hops > MAX_LINK_HOPS {
                                    return Err(UnpackError::LinkLoop {
                                        path: rel.into(),
                                        target: target.into(),
                                    });
                                }
                                if next.starts_with('/') {
                                    return Err(escape());
                                }
                                pending.extend(next.split('/').rev());
                            }
                            None => stack.push(node),
                        },
                        _ => beyond += 1,
                    }
                }
            }
        }
        Ok(())
    }

    /// Every proper prefix of `parts` must be a directory (created here if missing).
    fn check_parents(&mut self, parts: &[&str]) -> Result<(), UnpackError> {
        if parts.len() > 1 {
            let parent = &parts[..parts.len() - 1];
            // Prefixes shared with the last parent checked are directories already:
            // nothing turns a directory into anything else (the same key, claimed
            // again, is a Duplicate or a Collision).
            let mut checked = self.last_parent.split('/').filter(|p| !p.is_empty());
            let shared = parent
                .iter()
                .zip(&mut checked)
                .take_while(|(a, b)| *a == b)
                .count();
            if shared == parent.len() && checked.next().is_none() {
                return Ok(());
            }
            self.check_prefixes(parts, shared)?;
            self.last_parent = parent.join("/");
        }
        Ok(())
    }

    /// Check the prefixes of `parts` longer than `shared` components.
    fn check_prefixes(&mut self, parts: &[&str], shared: usize) -> Result<(), UnpackError> {
        for end in shared + 1..parts.len() {
            let prefix = &parts[..end];
            let key = path::collision_key(prefix);
            let rel = prefix.join("/");
            match self.seen.get(&key) {
                Some((existing, Kind::Dir)) if *existing == rel => {}
                Some((existing, Kind::Dir)) => {
                    return Err(UnpackError::Collision {
                        path: rel,
                        other: existing.clone(),
                    });
                }
                Some((existing, Kind::Symlink)) => {
                    return Err(UnpackError::BeneathSymlink {
                        path: parts.join("/"),
                        link: existing.clone(),
                    });
                }
                Some((existing, Kind::File)) => {
                    return Err(UnpackError::BeneathFile {
                        path: parts.join("/"),
                        file: existing.clone(),
                    });
                }
                None => self.create_dir(key, rel)?,
            }
        }
        Ok(())
    }

    fn make_dir(&mut self, parts: &[&str], rel: &str) -> Result<(), UnpackError> {
        let key = path::collision_key(parts);
        match self.seen.get(&key) {
            Some((existing, Kind::Dir)) if existing == rel => Ok(()), // implied earlier by a child
            Some((existing, _)) if existing == rel => Err(UnpackError::Duplicate { path: rel.into() }),
            Some((existing, _)) => Err(UnpackError::Collision {
                path: rel.into(),
                other: existing.clone(),
            }),
            None => self.create_dir(key, rel.to_string()),
        }
    }

    fn create_dir(&mut self, key: String, rel: String) -> Result<(), UnpackError> {
        DirBuilder::new()
            .mode(0o755)
            .create(self.root.join(&rel))
            .map_err(|source| UnpackError::Io {
                path: rel.clone(),
                source,
            })?;
        self.summary.dirs += 1;
        self.seen.insert(key, (rel, Kind::Dir));
        Ok(())
    }

    fn claim(&mut self, parts: &[&str], rel: &str, kind: Kind) -> Result<(), UnpackError> {
        let key = path::collision_key(parts);
        match self.seen.get(&key) {
            Some((existing, _)) if existing == rel => Err(UnpackError::Duplicate { path: rel.into() }),
            Some((existing, _)) => Err(UnpackError::Collision {
                path: rel.into(),
                other: existing.clone(),
            }),
            None => {
                self.seen.insert(key, (rel.to_string(), kind));
                Ok(())
            }
        }
    }

    /// Stream a large file to disk: created first, then filled chunk by chunk.
    fn write_file(
        &mut self,
        rel: &str,
        size: u64,
        mode: u32,
        data: &mut impl Read,
    ) -> Result<(), UnpackError> {
        let mut file = create_file(&self.root, rel, mode)?;
        let mut remaining = size;
        while remaining > 0 {
            let want = remaining.min(self.buf.len() as u64) as usize;
            data.read_exact(&mut self.buf[..want])
                .map_err(|e| stream_error(e, rel))?;
            file.write_all(&self.buf[..want]).map_err(io_error(rel))?;
            remaining -= want as u64;
        }
        Ok(())
    }
}

/// 0755 for executables, 0644 for the rest.
fn normal_mode(mode: u32) -> u32 {
    if mode & 0o111 != 0 { 0o755 } else { 0o644 }
}

/// Create `rel` below `root`: a new file (`O_EXCL`), never through a symlink
/// (`O_NOFOLLOW`; and no symlink exists in the root while files are written).
fn create_file(root: &Path, rel: &str, mode: u32) -> Result<File, UnpackError> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(root.join(rel))
        .map_err(io_error(rel))
}

fn io_error(rel: &str) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: rel.into(),
        source,
    }
}

fn default_writers() -> usize {
    // Creating and filling files (system calls) is most of the work: a writer per
    // core (on 2 cores, 2 writers took 220 ms where the calling thread alone took
    // 320). On one core the calling thread writes everything itself: threads would
    // only add hand-overs.
    match thread::available_parallelism().map_or(1, |n| n.get()) {
        1 => 0,
        n => n.min(MAX_WRITERS),
    }
}

/// Small files, read whole, on their way to a writer: contents back to back.
#[derive(Debug, Default)]
struct Batch {
    /// The contents in `data[..used]`; the rest is initialised space kept from
    /// earlier use, so it is not zeroed again.
    data: Vec<u8>,
    used: usize,
    /// Path relative to the root, mode, end of the contents in `data`.
    files: Vec<(String, u32, usize)>,
}

impl Batch {
    fn write(&self, root: &Path, failure: &Failure) -> Result<(), UnpackError> {
        let mut start = 0;
        for (rel, mode, end) in &self.files {
            if failure.failed() {
                break;
            }
            let mut file = create_file(root, rel, *mode)?;
            file.write_all(&self.data[start..*end]).map_err(io_error(rel))?;
            start = *end;
        }
        Ok(())
    }

    fn clear(&mut self) {
        self.used = 0;
        self.files.clear();
    }
}

/// The first error of a writer, for the reading thread.
#[derive(Debug, Default)]
struct Failure {
    failed: AtomicBool,
    error: Mutex<Option<UnpackError>>,
}

/// Stops the writers if dropped while the extracting thread panics.
struct StopOnPanic<'a>(&'a Failure);

impl Drop for StopOnPanic<'_> {
    fn drop(&mut self) {
        if thread::panicking() {
            self.0.stop();
        }
    }
}

impl Failure {
    fn failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    fn set(&self, e: UnpackError) {
        let mut error = self.error.lock().unwrap_or_else(|p| p.into_inner());
        error.get_or_insert(e);
        self.failed.store(true, Ordering::Release);
    }

    /// Writers skip whatever is left.
    fn stop(&self) {
        self.failed.store(true, Ordering::Release);
    }

    fn take(&self) -> Option<UnpackError> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// The writer threads of one layer, and the batch being filled for them.
///
/// Why no file is ever written through a symlink, threads or not:
/// - Symlinks are only created by [`Unpacker::finish`], which takes the unpacker by
///   value, so it cannot run during [`Unpacker::unpack_layer`]; and the writers are
///   scoped threads of `unpack_layer`, all joined before it returns. While any file
///   is written, the root therefore holds no symlink at all.
/// - Every entry is checked (path, duplicates, collisions, not beneath a file or a
///   symlink entry) and claimed by the reading thread, in archive order, before its
///   data is read; writers only receive claimed paths, each exactly once.
/// - Directories are created by the reading thread before the batch holding any file
///   beneath them is sent; the channel's send happens-before its receive.
/// - Files are still opened with `O_CREAT | O_EXCL | O_NOFOLLOW`.
///
/// The caps and the deadline are enforced where the bytes are decoded, on the
/// reading thread; after a writer fails the others skip what is queued, and the
/// reading thread stops at its next file.
#[derive(Debug)]
struct Writers<'scope, 'env> {
    scope: &'scope Scope<'scope, 'env>,
    root: &'env Path,
    failure: &'env Failure,
    /// Threads to start (lazily, at the first batch: a layer refused early, or one
    /// with no small file, starts none).
    threads: usize,
    queues: Vec<SyncSender<Batch>>,
    next: usize,
    filling: Batch,
    /// Written batches come back here, so their buffers are reused.
    returned: (Sender<Batch>, Receiver<Batch>),
}

impl<'scope, 'env> Writers<'scope, 'env> {
    fn new(
        scope: &'scope Scope<'scope, 'env>,
        root: &'env Path,
        failure: &'env Failure,
        threads: usize,
    ) -> Self {
        Self {
            scope,
            root,
            failure,
            threads,
            queues: Vec::new(),
            next: 0,
            filling: Batch::default(),
            returned: mpsc::channel(),
        }
    }

    /// A writer's error, if one has failed.
    fn check(&self) -> Result<(), UnpackError> {
        if self.failure.failed()
            && let Some(e) = self.failure.take()
        {
            return Err(e);
        }
        Ok(())
    }

    /// Read a claimed file's `size` bytes of `data` into the batch.
    fn add(&mut self, rel: String, size: u64, mode: u32, data: &mut impl Read) -> Result<(), UnpackError> {
        self.check()?;
        let batch = &mut self.filling;
        let start = batch.used;
        let end = start + size as usize;
        if batch.data.len() < end {
            batch.data.resize(end.max(BATCH_BYTES), 0);
        }
        data.read_exact(&mut batch.data[start..end])
            .map_err(|e| stream_error(e, &rel))?;
        batch.used = end;
        batch.files.push((rel, mode, end));
        if end >= BATCH_BYTES || self.filling.files.len() >= BATCH_FILES {
            self.send()?;
        }
        Ok(())
    }

    /// Hand the last, partial batch over.
    fn flush(&mut self) -> Result<(), UnpackError> {
        self.send()
    }

    fn send(&mut self) -> Result<(), UnpackError> {
        if self.filling.files.is_empty() {
            return Ok(());
        }
        if self.threads == 0 {
            let result = self.filling.write(self.root, self.failure);
            self.filling.clear();
            return result;
        }
        let spare = self.returned.1.try_recv().unwrap_or_default();
        let batch = std::mem::replace(&mut self.filling, spare);
        if self.queues.is_empty() {
            for _ in 0..self.threads {
                let (tx, rx) = mpsc::sync_channel::<Batch>(BATCHES_QUEUED);
                let (root, failure, back) = (self.root, self.failure, self.returned.0.clone());
                self.scope.spawn(move || {
                    for mut batch in rx {
                        if !failure.failed()
                            && let Err(e) = batch.write(root, failure)
                        {
                            failure.set(e);
                        }
                        batch.clear();
                        let _ = back.send(batch);
                    }
                });
                self.queues.push(tx);
            }
        }
        // Round robin: batches are alike in size.
        let queue = &self.queues[self.next];
        self.next = (self.next + 1) % self.queues.len();
        if let Err(mpsc::SendError(batch)) = queue.send(batch) {
            // A writer only leaves early by panicking; the scope re-raises that.
            return Err(UnpackError::Io {
                path: batch.files.into_iter().next().map(|f| f.0).unwrap_or_default(),
                source: io::Error::other("a writer thread stopped"),
            });
        }
        self.check()
    }
}

/// An error while reading the stream: a premature end is a truncated entry.
fn stream_error(e: io::Error, path: &str) -> UnpackError {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        UnpackError::Truncated {
            path: path.to_string(),
        }
    } else {
        UnpackError::Corrupt(e)
    }
}

/// The archive's symlinks as a tree of path components (the links and their parent
/// directories), so resolution looks up one component at a time.
#[derive(Debug)]
struct LinkTree<'a> {
    children: Vec<HashMap<&'a str, usize>>,
    targets: Vec<Option<&'a str>>,
}

impl<'a> LinkTree<'a> {
    const ROOT: usize = 0;

    fn new(links: &[(&'a String, &'a String)]) -> Self {
        let mut tree = Self {
            children: vec![HashMap::new()],
            targets: vec![None],
        };
        for (rel, target) in links {
            let mut node = Self::ROOT;
            for part in rel.split('/') {
                node = match tree.children[node].get(part) {
                    Some(&child) => child,
                    None => {
                        let child = tree.children.len();
                        tree.children.push(HashMap::new());
                        tree.targets.push(None);
                        tree.children[node].insert(part, child);
                        child
                    }
                };
            }
            tree.targets[node] = Some(target.as_str());
        }
        tree
    }

    fn child(&self, node: usize, name: &str) -> Option<usize> {
        self.children[node].get(name).copied()
    }

    fn target(&self, node: usize) -> Option<&'a str> {
        self.targets[node]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append(b: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, mode: u32, data: &[u8]) {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data).unwrap();
    }

    /// Many small files in many directories, empty ones, files around the batch
    /// sizes, one streamed, executables and symlinks.
    fn layer(extra: &[&str]) -> Vec<u8> {
        use tar::EntryType as E;
        let mut b = tar::Builder::new(Vec::new());
        for path in extra {
            append(&mut b, E::Regular, path, 0o644, b"extra");
        }
        for d in 0..8 {
            append(&mut b, E::Directory, &format!("nm/d{d}/"), 0o755, b"");
            for f in 0..25 {
                let len = (d * 37 + f * 1013) % 9000;
                let mode = if f % 9 == 0 { 0o755 } else { 0o644 };
                let data = vec![(d + f) as u8; len];
                append(&mut b, E::Regular, &format!("nm/d{d}/sub/f{f}.js"), mode, &data);
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(E::Symlink);
            h.set_size(0);
            b.append_link(&mut h, format!("nm/d{d}/link"), "sub/f1.js")
                .unwrap();
        }
        let sizes = [
            0,
            BATCH_FILE_MAX as usize,
            BATCH_FILE_MAX as usize + 1,
            BATCH_BYTES,
            3 << 20,
        ];
        for (i, len) in sizes.into_iter().enumerate() {
            append(
                &mut b,
                E::Regular,
                &format!("sizes/s{i}"),
                0o644,
                &vec![i as u8; len],
            );
        }
        zstd::encode_all(&b.into_inner().unwrap()[..], 3).unwrap()
    }

    fn unpacker(root: &Path, writers: usize) -> Unpacker {
        let mut u = Unpacker::new(root, Limits::default()).unwrap();
        u.writers = writers;
        u
    }

    /// Every path below `dir` with its kind, mode and contents (or target).
    fn listing(root: &Path, dir: &Path, out: &mut Vec<(String, u32, Vec<u8>)>) {
        use std::os::unix::fs::PermissionsExt;
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let meta = fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode();
            if meta.is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.push((rel, mode, target.to_string_lossy().as_bytes().to_vec()));
            } else if meta.is_dir() {
                out.push((rel, mode, Vec::new()));
                listing(root, &path, out);
            } else {
                out.push((rel, mode, fs::read(&path).unwrap()));
            }
        }
    }

    #[test]
    fn the_same_tree_whatever_the_number_of_writers() {
        let layer = layer(&[]);
        let mut trees = Vec::new();
        for writers in [0, 1, 3] {
            let dir = tempfile::tempdir().unwrap();
            let mut u = unpacker(dir.path(), writers);
            u.unpack_layer(&layer[..]).unwrap();
            let summary = u.finish().unwrap();
            assert_eq!((summary.files, summary.symlinks), (205, 8), "{writers}");
            let mut tree = Vec::new();
            listing(dir.path(), dir.path(), &mut tree);
            tree.sort();
            trees.push((summary, tree));
        }
        assert!(trees.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn a_writers_failure_stops_the_layer() {
        for writers in [0, 1, 3] {
            let dir = tempfile::tempdir().unwrap();
            let mut u = unpacker(dir.path(), writers);
            // Planted after the check that the root is empty: creating it fails.
            fs::write(dir.path().join("planted.js"), "planted").unwrap();
            let err = u.unpack_layer(&layer(&["planted.js"])[..]).unwrap_err();
            assert!(
                matches!(err, UnpackError::Io { ref path, ref source }
                    if path == "planted.js" && source.kind() == io::ErrorKind::AlreadyExists),
                "{writers}: {err}"
            );
        }
    }
}

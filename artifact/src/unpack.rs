//! Hardened extraction of layers into a fresh, empty root.
//!
//! The rules, and why they are enough:
//! - Every path is checked by [`crate::path::components`]: relative, no `..`, no
//!   backslashes or control characters, bounded depth. Duplicates, and paths that
//!   differ only in case or Unicode normalisation, are refused.
//! - Only regular files, directories and symlinks exist. Hardlinks, devices, FIFOs,
//!   sparse files and PAX headers (which `aether pack` never writes) are refused;
//!   GNU long names are read with a size cap.
//! - Symlinks are created last, after every file, and only once their target has
//!   been resolved against the archive's own tree (links through links included) and
//!   found inside the root. While files are written, the root therefore holds no
//!   symlink at all, files are created with `O_EXCL`, and no entry may sit beneath a
//!   symlink entry: nothing can be written through a link.
//! - Modes are normalised (0644, 0755 for executables and directories); owners and
//!   mtimes from the archive are ignored.
//! - Caps on entries, bytes per file, total bytes, depth, and the zstd window bound
//!   the work and memory a hostile layer can cause. Data after the end of the tar
//!   (other than zero padding) is refused.
//!
//! On any error the caller must discard the root: it may hold a partial tree.

use std::collections::HashMap;
use std::fs::{self, DirBuilder, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::path::{self, PathError};

/// Longest GNU long name / long link accepted (Linux PATH_MAX).
const MAX_LONG_NAME: u64 = 4096;
/// Zero padding accepted after the end-of-archive marker.
const MAX_TRAILING_ZEROS: u64 = 1 << 20;
/// Symlinks followed while resolving one target (Linux: 40).
const MAX_LINK_HOPS: usize = 40;

/// Caps on what one root may receive, across all its layers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    pub max_total_bytes: u64,
    pub max_file_bytes: u64,
    pub max_entries: u64,
    pub max_depth: usize,
    /// log2 of the largest zstd window accepted (decoder memory ≈ 2^this bytes).
    pub max_window_log: u32,
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
    #[error("unexpected data after the end of the archive")]
    TrailingData,
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
            Self::FileTooLarge { .. } | Self::TotalTooLarge { .. } | Self::TooManyEntries { .. } => {
                "ArtifactTooLarge"
            }
            Self::Truncated { .. } | Self::TrailingData | Self::Corrupt(_) => "ArtifactCorrupt",
            _ => "UnsafeArtifact",
        }
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
    entries: u64,
    summary: Summary,
    /// The parent directory most recently checked: entries arrive sorted, so most
    /// share it and need no further checks.
    last_parent: String,
    buf: Vec<u8>,
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
            entries: 0,
            summary: Summary::default(),
            last_parent: String::new(),
            buf: vec![0; 1 << 18],
        })
    }

    /// Extract one zstd-compressed tar layer. Verify its digest first.
    pub fn unpack_layer(&mut self, compressed: impl Read) -> Result<(), UnpackError> {
        let mut decoder = zstd::stream::read::Decoder::new(compressed).map_err(UnpackError::Corrupt)?;
        decoder
            .window_log_max(self.limits.max_window_log)
            .map_err(UnpackError::Corrupt)?;
        let mut archive = tar::Archive::new(decoder);
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        let mut last_path = String::from("(first entry)");

        for entry in archive.entries().map_err(UnpackError::Corrupt)?.raw(true) {
            let mut entry = entry.map_err(|e| stream_error(e, &last_path))?;
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
                        path: last_path,
                        size,
                    });
                }
                let mut buf = Vec::with_capacity(size as usize);
                entry
                    .read_to_end(&mut buf)
                    .map_err(|e| stream_error(e, &last_path))?;
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
                        path: last_path,
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
            last_path.clone_from(&rel);

            use tar::EntryType as E;
            match kind {
                E::Regular | E::Continuous => {
                    self.check_parents(&parts)?;
                    self.claim(&parts, &rel, Kind::File)?;
                    self.write_file(&rel, size, header.mode().unwrap_or(0o644), &mut entry)?;
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
                    self.check_parents(&parts)?;
                    self.claim(&parts, &rel, Kind::Symlink)?;
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
            return Err(UnpackError::Truncated { path: last_path });
        }

        // Only zero padding may follow the end-of-archive marker.
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
        Ok(())
    }

    /// Check and create the symlinks. Call once, after the last layer.
    pub fn finish(mut self) -> Result<Summary, UnpackError> {
        let mut links: Vec<(String, String)> =
            self.links.iter().map(|(p, t)| (p.clone(), t.clone())).collect();
        links.sort_unstable();
        for (rel, target) in &links {
            self.resolve_inside(rel, target)?;
        }
        for (rel, target) in links {
            let full = self.root.join(&rel);
            std::os::unix::fs::symlink(&target, &full)
                .map_err(|source| UnpackError::Io { path: rel, source })?;
            self.summary.symlinks += 1;
        }
        Ok(self.summary)
    }

    /// Follow `target` from the directory holding `rel` through the archive's own
    /// symlinks, as the kernel would, and make sure it never leaves the root.
    fn resolve_inside(&self, rel: &str, target: &str) -> Result<(), UnpackError> {
        let escape = || UnpackError::LinkEscape {
            path: rel.into(),
            target: target.into(),
        };
        if target.is_empty() || target.starts_with('/') || target.contains('\\') || target.contains('\0') {
            return Err(escape());
        }
        let mut stack: Vec<String> = rel.split('/').map(String::from).collect();
        stack.pop();
        let mut pending: Vec<String> = target.split('/').rev().map(String::from).collect();
        let mut hops = 0;
        while let Some(part) = pending.pop() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    stack.pop().ok_or_else(escape)?;
                }
                name => {
                    stack.push(name.to_string());
                    if let Some(next) = self.links.get(&stack.join("/")) {
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
                        stack.pop();
                        pending.extend(next.split('/').rev().map(String::from));
                    }
                }
            }
        }
        Ok(())
    }

    /// Every proper prefix of `parts` must be a directory (created here if missing).
    fn check_parents(&mut self, parts: &[&str]) -> Result<(), UnpackError> {
        if parts.len() > 1 {
            let parent = parts[..parts.len() - 1].join("/");
            if parent == self.last_parent {
                return Ok(());
            }
            self.check_prefixes(parts)?;
            self.last_parent = parent;
        }
        Ok(())
    }

    fn check_prefixes(&mut self, parts: &[&str]) -> Result<(), UnpackError> {
        for end in 1..parts.len() {
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

    fn write_file(
        &mut self,
        rel: &str,
        size: u64,
        mode: u32,
        data: &mut impl Read,
    ) -> Result<(), UnpackError> {
        if size > self.limits.max_file_bytes {
            return Err(UnpackError::FileTooLarge {
                path: rel.into(),
                size,
                limit: self.limits.max_file_bytes,
            });
        }
        if self.summary.bytes + size > self.limits.max_total_bytes {
            return Err(UnpackError::TotalTooLarge {
                path: rel.into(),
                limit: self.limits.max_total_bytes,
            });
        }
        let mode = if mode & 0o111 != 0 { 0o755 } else { 0o644 };
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(self.root.join(rel))
            .map_err(|source| UnpackError::Io {
                path: rel.into(),
                source,
            })?;
        // Read whole chunks before writing: one write for most files.
        let mut remaining = size;
        while remaining > 0 {
            let want = remaining.min(self.buf.len() as u64) as usize;
            data.read_exact(&mut self.buf[..want])
                .map_err(|e| stream_error(e, rel))?;
            file.write_all(&self.buf[..want])
                .map_err(|source| UnpackError::Io {
                    path: rel.into(),
                    source,
                })?;
            remaining -= want as u64;
        }
        self.summary.files += 1;
        self.summary.bytes += size;
        Ok(())
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

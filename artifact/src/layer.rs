//! Packing a layer: a deterministic tar (sorted entries, fixed owner and mtime,
//! normalised modes, no special files, symlinks only inside the layer) compressed with
//! multi-threaded zstd, hashed while it is written.
//!
//! Same input tree → byte-identical output on any machine: zstd's multi-threaded
//! output does not depend on the number of worker threads (tested below).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

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
        // The calling thread reads, hashes and tars; leave it a core and give zstd
        // the rest (on 2 cores an extra worker only contends: measured 0.5x).
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        Self {
            level: 3,
            threads: cores.saturating_sub(1).max(1),
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
    /// A file read whole (small files: most of node_modules), already hashed.
    Small {
        mode: u32,
        data: Vec<u8>,
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

/// Pack `paths` (relative to `root`, as returned by [`collect`]) into `out`.
///
/// This thread reads, hashes and writes tar entries while zstd's workers compress.
/// (A separate reader thread was measured slower on 2 cores: three busy threads.)
pub fn pack_layer(
    root: &Path,
    paths: &[String],
    out: impl Write,
    options: &PackOptions,
) -> Result<LayerStats, PackError> {
    let mut sorted: Vec<&String> = paths.iter().collect();
    sorted.sort_unstable();
    check_collisions(&sorted)?;

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
    {
        for rel in sorted.iter() {
            let item = prepare(root, rel)?;
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
                Prepared::Small { mode, data, digest } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(mode);
                    header.set_size(data.len() as u64);
                    tar.append_data(&mut header, rel.as_str(), &data[..])
                        .map_err(io_err(rel))?;
                    content_bytes += data.len() as u64;
                    writeln!(list, "f {mode:o} {} {} {rel}", data.len(), digest.hex())
                        .map_err(io_err(rel))?;
                }
                Prepared::Large { mode, size } => {
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_mode(mode);
                    header.set_size(size);
                    let file = File::open(root.join(rel)).map_err(io_err(rel))?;
                    let mut reader =
                        HashingReader::new(io::BufReader::with_capacity(1 << 18, file.take(size)));
                    tar.append_data(&mut header, rel.as_str(), &mut reader)
                        .map_err(|e| {
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
                    content_bytes += size;
                    writeln!(list, "f {mode:o} {size} {} {rel}", digest.hex()).map_err(io_err(rel))?;
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
    }

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

/// Check, stat and (for small files) read and hash one entry.
fn prepare(root: &Path, rel: &str) -> Result<Prepared, PackError> {
    path::components(rel, MAX_DEPTH).map_err(|source| PackError::InvalidPath {
        path: rel.to_string(),
        source,
    })?;
    let full = root.join(rel);
    let meta = fs::symlink_metadata(&full).map_err(io_err(rel))?;
    let ft = meta.file_type();
    if ft.is_dir() {
        Ok(Prepared::Dir)
    } else if ft.is_file() {
        let mode = if meta.permissions().mode() & 0o111 != 0 {
            0o755
        } else {
            0o644
        };
        let size = meta.len();
        if size > SMALL_FILE {
            return Ok(Prepared::Large { mode, size });
        }
        let mut data = Vec::with_capacity(size as usize);
        File::open(&full)
            .and_then(|f| f.take(size + 1).read_to_end(&mut data))
            .map_err(io_err(rel))?;
        if data.len() as u64 != size {
            return Err(PackError::Changed {
                path: rel.to_string(),
            });
        }
        let digest = Digest::of(&data);
        Ok(Prepared::Small { mode, data, digest })
    } else if ft.is_symlink() {
        let target = fs::read_link(&full).map_err(io_err(rel))?;
        let target = target
            .to_str()
            .ok_or_else(|| PackError::NotUtf8 { path: full.clone() })?;
        if !link_stays_inside(rel, target) {
            return Err(PackError::LinkOutside {
                path: rel.to_string(),
                target: target.into(),
            });
        }
        Ok(Prepared::Link {
            target: target.to_string(),
        })
    } else {
        Err(PackError::SpecialFile {
            path: rel.to_string(),
            kind: special_kind(&ft),
        })
    }
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

fn special_kind(ft: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "a device"
    } else {
        "a special file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

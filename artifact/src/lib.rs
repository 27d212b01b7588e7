//! Aether's artifact format, shared by the CLI (which packs) and the in-pod runtime
//! (which fetches, verifies and unpacks), so the two can never disagree.
//!
//! An artifact is a [`Manifest`] (canonical JSON) plus two layers, each a
//! deterministic tar compressed with zstd:
//! - `deps`: `node_modules`, installed from the lockfile for the target runtime;
//! - `app`: the rest of the project that is not ignored.
//!
//! The artifact digest is the sha256 of the manifest bytes; the manifest holds each
//! layer's sha256 (of the exact compressed bytes) and the digest of its file list.
//! Signatures ([`signature`]) bind the artifact digest to an app and a namespace.

pub mod digest;
pub mod hot;
pub mod layer;
pub mod manifest;
pub mod path;
pub mod signature;
pub mod unpack;

pub use digest::Digest;
pub use layer::{LayerStats, PackError, pack_layer};
pub use manifest::{LayerDescriptor, Manifest};
pub use unpack::{Limits, Summary, UnpackError, Unpacker};

/// Media type of a layer: a POSIX tar stream compressed with zstd.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.aether.layer.v1.tar+zstd";
/// Media type of the manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.aether.manifest.v1+json";

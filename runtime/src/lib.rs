//! The in-pod half of Aether, one small binary in its own image:
//! - [`fetch`] runs beside the app container (before it, as an init container, in
//!   dev-hot pods): it downloads the artifact's layers through
//!   the presigned URLs of the app's fetch Secret ([`download`]), checks the manifest digest, the signature (per the
//!   app's policy) and every layer digest, then extracts with the hardened unpacker
//!   into the shared volume, and copies itself there;
//! - [`supervise`] is the main container's entrypoint (from that copy, so any Node
//!   image works): it runs the app, forwards signals and exits with the app's code,
//!   and answers the kubelet's probes for it ([`health`]).

pub mod download;
pub mod fetch;
pub mod health;
pub mod hot;
pub mod supervise;

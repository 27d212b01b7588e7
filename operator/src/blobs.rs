//! Blob garbage collection, race-free with respect to concurrent pushes.
//!
//! Blobs are stored per namespace (see `aether_storage`). A blob is shared by every
//! AetherArtifact of its namespace that lists its digest. When an artifact is
//! deleted, its finalizer deletes each of its blobs that no other live artifact of
//! the namespace lists. The race to rule out: a push of the same digest that the
//! operator finds already stored (HEAD) and marks Ready just as the collector deletes
//! it. Both decisions run in this process (the Lease holder) under a per-digest lock:
//!
//! - the collector, holding the lock, lists the namespace's artifacts *from the API
//!   server* (not the cache) and deletes the blob only if none but the dying one
//!   lists it;
//! - the artifact controller holds the same locks from its HEAD to its verdict.
//!
//! A pushed artifact exists in the API before the operator looks at its blobs, so
//! either the collector's list sees it (the blob is kept), or the collector ran first
//! and the controller's HEAD finds the blob gone and asks for an upload.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use aether_artifact::Digest;
use aether_crds::AetherArtifact;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use tokio::sync::OwnedMutexGuard;

/// A blob: its namespace and digest.
type BlobId = (String, Digest);

/// Per-blob async locks.
#[derive(Debug, Default)]
pub struct BlobLocks {
    locks: Mutex<HashMap<BlobId, Arc<tokio::sync::Mutex<()>>>>,
}

impl BlobLocks {
    /// Lock every digest of the namespace, in sorted order (so two callers cannot
    /// deadlock).
    pub async fn lock_all(
        &self,
        namespace: &str,
        digests: impl IntoIterator<Item = Digest>,
    ) -> Vec<OwnedMutexGuard<()>> {
        let sorted: BTreeSet<BlobId> = digests.into_iter().map(|d| (namespace.to_string(), d)).collect();
        let mut guards = Vec::with_capacity(sorted.len());
        for d in sorted {
            let lock = {
                let mut map = self.locks.lock().unwrap_or_else(|e| e.into_inner());
                // Drop entries nobody holds, so the map stays as small as the work.
                map.retain(|_, l| Arc::strong_count(l) > 1);
                map.entry(d).or_default().clone()
            };
            guards.push(lock.lock_owned().await);
        }
        guards
    }
}

/// The digests an artifact lists (layers and SBOM); none for a spec that does not
/// parse (it never passed validation, so nothing was stored for it).
pub fn digests(art: &AetherArtifact) -> Vec<Digest> {
    art.spec
        .blobs()
        .map(|b| b.into_iter().map(|b| b.digest).collect())
        .unwrap_or_default()
}

/// Of `candidates`, those that no artifact in `all` other than `dying` (and none
/// being deleted) lists: safe to delete. Pure.
pub fn unreferenced(dying: &AetherArtifact, candidates: &[Digest], all: &[AetherArtifact]) -> Vec<Digest> {
    let live: Vec<&AetherArtifact> = all
        .iter()
        .filter(|a| a.uid() != dying.uid() && a.metadata.deletion_timestamp.is_none())
        .collect();
    candidates
        .iter()
        .filter(|d| !live.iter().any(|a| digests(a).contains(d)))
        .copied()
        .collect()
}

/// Storage a namespace's artifacts take: each distinct blob once. Returns the bytes
/// the live artifacts other than `this` list, and the bytes `this` adds to them.
/// Pure.
pub fn usage(this: &AetherArtifact, all: &[AetherArtifact]) -> (u64, u64) {
    let mut counted: BTreeSet<Digest> = BTreeSet::new();
    let mut others = 0;
    for a in all
        .iter()
        .filter(|a| a.uid() != this.uid() && a.metadata.deletion_timestamp.is_none())
    {
        for b in a.spec.blobs().unwrap_or_default() {
            if counted.insert(b.digest) {
                others += b.size;
            }
        }
    }
    let adds = this
        .spec
        .blobs()
        .unwrap_or_default()
        .iter()
        .filter(|b| counted.insert(b.digest))
        .map(|b| b.size)
        .sum();
    (others, adds)
}

/// A fresh list of the namespace's AetherArtifacts, straight from the API server.
pub async fn list_namespace(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<AetherArtifact>, kube::Error> {
    let api: Api<AetherArtifact> = Api::namespaced(client.clone(), namespace);
    Ok(api.list(&ListParams::default()).await?.items)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn art(uid: &str, blobs: &[char], deleting: bool) -> AetherArtifact {
        let layer = |c: &char| {
            serde_json::json!({"name": "app", "digest": format!("sha256:{}", c.to_string().repeat(64)),
                "size": 1, "mediaType": "x", "entries": 1, "filesDigest": format!("sha256:{}", "f".repeat(64))})
        };
        let mut a: AetherArtifact = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherArtifact",
            "metadata": {"name": uid, "namespace": "ns", "uid": uid},
            "spec": {"app": "web", "digest": format!("sha256:{}", "0".repeat(64)),
                     "layers": blobs.iter().map(layer).collect::<Vec<_>>(),
                     "runtime": {"nodeMajor": 20, "platform": "linux/amd64", "libc": "Glibc"},
                     "entrypoint": ["node"]}
        }))
        .unwrap();
        if deleting {
            a.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            ));
        }
        a
    }

    #[test]
    fn shared_blobs_stay_until_the_last_artifact_listing_them_goes() {
        let dying = art("a", &['1', '2'], true);
        let candidates = digests(&dying);
        // Another artifact shares blob 1; one being deleted lists blob 2.
        let all = [
            dying.clone(),
            art("b", &['1', '3'], false),
            art("c", &['2'], true),
        ];
        let free = unreferenced(&dying, &candidates, &all);
        assert_eq!(
            free,
            vec![
                "sha256:2222222222222222222222222222222222222222222222222222222222222222"
                    .parse()
                    .unwrap()
            ]
        );
        assert_eq!(
            unreferenced(&dying, &candidates, std::slice::from_ref(&dying)).len(),
            2
        );
    }

    #[tokio::test]
    async fn locks_exclude_per_digest_and_not_across_digests() {
        let locks = Arc::new(BlobLocks::default());
        let d1 = Digest::of(b"1");
        let d2 = Digest::of(b"2");
        let held = locks.lock_all("a", [d1, d2]).await;
        // Another digest is free, and so is the same digest in another namespace...
        let free = |ns: &'static str, d: Digest| {
            let locks = locks.clone();
            async move {
                tokio::time::timeout(std::time::Duration::from_millis(50), locks.lock_all(ns, [d]))
                    .await
                    .is_ok()
            }
        };
        assert!(free("a", Digest::of(b"3")).await);
        assert!(free("b", d1).await);
        // ... a held one waits until released.
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move { l2.lock_all("a", [d2]).await.len() });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(waiter.await.unwrap(), 1);
    }
}

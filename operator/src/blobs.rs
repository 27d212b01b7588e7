//! Blob garbage collection, race-free with respect to concurrent pushes.
//!
//! Blobs are stored per namespace (see `aether_storage`). A blob is shared by every
//! AetherArtifact of its namespace that lists its digest. When an artifact is
//! deleted, its finalizer deletes each of its blobs that no other live artifact of
//! the namespace lists. The race to rule out: a push of the same digest that the
//! operator finds already stored (HEAD) and marks Ready just as the collector deletes
//! it. Both decisions run in this process (the Lease holder) under a per-digest lock:
//!
//! - the collector, holding the lock, reads the namespace's artifacts *from the API
//!   server* (a consistent list, not the cache) and deletes the blob only if none
//!   but the dying one lists it. The list may be one another deletion took, if it
//!   was asked for after this deletion began (its artifact seen being deleted) and
//!   no look at storage asked for a blob lock in the namespace since (see
//!   [`BlobLocks::artifacts_since`]);
//! - the artifact controller holds the same locks from its HEAD to its verdict:
//!   shared with other artifacts' reconciles while it only reads the blobs (a
//!   thousand artifacts of the same layers verify side by side), alone when it
//!   writes or deletes them.
//!
//! A pushed artifact exists in the API before the operator looks at its blobs, so
//! either the collector's list sees it (the blob is kept), or the collector ran first
//! and the controller's HEAD finds the blob gone and asks for an upload.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_artifact::Digest;
use aether_crds::AetherArtifact;
use kube::{Api, ResourceExt};
use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

/// A blob: its namespace and digest.
type BlobId = (String, Digest);

/// Per-blob async locks, and per namespace the collector's last list.
#[derive(Debug, Default)]
pub struct BlobLocks {
    locks: Mutex<HashMap<BlobId, Arc<RwLock<()>>>>,
    namespaces: Mutex<HashMap<String, BlobWork>>,
}

/// A namespace's blob work, kept while the collector lists its artifacts or has a
/// list of them fresh enough to be used again.
#[derive(Debug, Default)]
struct BlobWork {
    /// Looks other than the collector's that asked for blob locks, while kept.
    looks: u64,
    /// The collector's lists under way.
    listing: usize,
    listed: Option<Listed>,
}

/// A list of a namespace's artifacts the collector took, and no other look asked
/// for blob locks in the namespace since it was asked for.
#[derive(Debug)]
struct Listed {
    /// When it was asked for.
    at: Instant,
    artifacts: Arc<Vec<AetherArtifact>>,
}

/// How long the collector's last list of a namespace is kept for other deletions.
/// Only deletions that began before it was asked for may use it, so it serves
/// those under way at once (a namespace being deleted) and is soon of no use.
/// This bounds the memory it holds; what makes it safe to use does not depend on
/// time (see [`BlobLocks::artifacts_since`]).
const LISTED_FOR: Duration = Duration::from_secs(30);

/// Blob locks held, shared or alone.
#[derive(Debug)]
pub enum Held {
    Shared(Vec<OwnedRwLockReadGuard<()>>),
    Alone(Vec<OwnedRwLockWriteGuard<()>>),
}

impl BlobLocks {
    /// Lock every digest of the namespace for this caller alone, in sorted order
    /// (so two callers cannot deadlock).
    pub async fn lock_all(
        &self,
        namespace: &str,
        digests: impl IntoIterator<Item = Digest>,
    ) -> Vec<OwnedRwLockWriteGuard<()>> {
        self.looked(namespace);
        self.lock_to_free(namespace, digests).await
    }

    /// [`lock_all`](Self::lock_all), for the collector: other deletions may go on
    /// using the list it last took (see [`artifacts_since`](Self::artifacts_since)).
    pub async fn lock_to_free(
        &self,
        namespace: &str,
        digests: impl IntoIterator<Item = Digest>,
    ) -> Vec<OwnedRwLockWriteGuard<()>> {
        let mut guards = Vec::new();
        for lock in self.sorted(namespace, digests) {
            guards.push(lock.write_owned().await);
        }
        guards
    }

    /// Lock every digest of the namespace, shared with others that share them (not
    /// with a caller of [`BlobLocks::lock_all`]), in sorted order.
    pub async fn share_all(
        &self,
        namespace: &str,
        digests: impl IntoIterator<Item = Digest>,
    ) -> Vec<OwnedRwLockReadGuard<()>> {
        self.looked(namespace);
        let mut guards = Vec::new();
        for lock in self.sorted(namespace, digests) {
            guards.push(lock.read_owned().await);
        }
        guards
    }

    /// The namespace's artifacts, for the collector holding its locks (from
    /// [`lock_to_free`](Self::lock_to_free)) in a deletion that began at `since`,
    /// which must be once its artifact's deletion was committed (it was seen being
    /// deleted): the last list it took there if that was asked for after `since`
    /// and no look at storage asked for a blob lock in the namespace since, else
    /// `list`ed anew. A namespace of 1000 artifacts being deleted listed them all
    /// once per artifact (each deletion waits for the one before, as they share
    /// their blobs): 5000 pages of 100, most of its 122-155 s.
    ///
    /// `list` must be a consistent read (not the API server's cache: no
    /// `resourceVersion`). Such a list, asked for after `since`, shows every
    /// artifact deleted before this deletion began as being deleted (so of two
    /// deletions sharing a blob, the later frees it), and every artifact live now
    /// that was made before it. One made since is marked Ready only by a look at
    /// storage holding a blob lock: if it asked for one before this check, the list
    /// is taken anew; if after, it waits for this collector's locks, then finds the
    /// blob gone and asks for an upload.
    pub async fn artifacts_since<F>(
        &self,
        namespace: &str,
        since: Instant,
        list: impl FnOnce() -> F,
    ) -> Result<Arc<Vec<AetherArtifact>>, kube::Error>
    where
        F: std::future::Future<Output = Result<Vec<AetherArtifact>, kube::Error>>,
    {
        let (at, looks) = {
            let mut work = self.work();
            let fresh = work
                .get(namespace)
                .and_then(|w| w.listed.as_ref())
                .filter(|l| l.at > since && l.at.elapsed() < LISTED_FOR);
            if let Some(listed) = fresh {
                return Ok(listed.artifacts.clone());
            }
            let entry = work.entry(namespace.to_string()).or_default();
            entry.listing += 1;
            (Instant::now(), entry.looks)
        };
        // (Counted as under way until it ends, even if this future is dropped.)
        let listing = Listing {
            locks: self,
            namespace,
        };
        let artifacts = Arc::new(list().await?);
        let mut work = self.work();
        if let Some(entry) = work.get_mut(namespace)
            && entry.looks == looks
            && entry.listed.as_ref().is_none_or(|l| l.at < at)
        {
            entry.listed = Some(Listed {
                at,
                artifacts: artifacts.clone(),
            });
        }
        drop(work);
        drop(listing);
        Ok(artifacts)
    }

    /// A look other than the collector's asks for blob locks in `namespace`: the
    /// collector's lists there are not used again.
    fn looked(&self, namespace: &str) {
        if let Some(entry) = self.work().get_mut(namespace) {
            entry.looks += 1;
            entry.listed = None;
        }
    }

    /// Each namespace's blob work, those with nothing left to keep dropped.
    fn work(&self) -> std::sync::MutexGuard<'_, HashMap<String, BlobWork>> {
        let mut work = lock(&self.namespaces);
        work.retain(|_, w| {
            w.listed.take_if(|l| l.at.elapsed() >= LISTED_FOR);
            w.listing > 0 || w.listed.is_some()
        });
        work
    }

    fn sorted(&self, namespace: &str, digests: impl IntoIterator<Item = Digest>) -> Vec<Arc<RwLock<()>>> {
        let sorted: BTreeSet<BlobId> = digests.into_iter().map(|d| (namespace.to_string(), d)).collect();
        let mut map = lock(&self.locks);
        // Drop entries nobody holds, so the map stays as small as the work.
        map.retain(|_, l| Arc::strong_count(l) > 1);
        sorted
            .into_iter()
            .map(|d| map.entry(d).or_default().clone())
            .collect()
    }
}

/// A mutex's value, even if a holder panicked: every table here stays usable (at
/// worst one entry is stale), and the operator must not stop freeing blobs.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A collector's list under way in a namespace, until dropped.
struct Listing<'a> {
    locks: &'a BlobLocks,
    namespace: &'a str,
}

impl Drop for Listing<'_> {
    fn drop(&mut self) {
        let mut work = lock(&self.locks.namespaces);
        if let Some(entry) = work.get_mut(self.namespace) {
            entry.listing = entry.listing.saturating_sub(1);
        }
    }
}

/// Blobs whose bytes were read back and matched their digest, by the ETag storage
/// sent with those bytes: a blob whose ETag is still that one holds the same bytes
/// and is not read again. (Any write of the key gives it another ETag. A reissue
/// request, which says the bytes may be bad, reads them again all the same.) The
/// layers many artifacts share, a push's unchanged dependencies above all, are then
/// read once, not once per artifact.
#[derive(Debug, Default)]
pub struct Verified(Mutex<HashMap<BlobId, (String, Instant)>>);

/// How long a read is trusted for.
const VERIFIED_FOR: Duration = Duration::from_secs(600);
/// At most this many blobs are remembered (then all are forgotten at once).
const MAX_VERIFIED: usize = 10_000;

impl Verified {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<BlobId, (String, Instant)>> {
        lock(&self.0)
    }

    /// Whether the blob's bytes, which storage tags `etag` now, were read and matched.
    pub fn matches(&self, namespace: &str, digest: &Digest, etag: &str) -> bool {
        self.lock()
            .get(&(namespace.to_string(), *digest))
            .is_some_and(|(tag, at)| tag == etag && at.elapsed() < VERIFIED_FOR)
    }

    /// The blob's bytes, tagged `etag`, were read and matched.
    pub fn record(&self, namespace: &str, digest: &Digest, etag: String) {
        let mut map = self.lock();
        if map.len() >= MAX_VERIFIED {
            map.clear();
        }
        map.insert((namespace.to_string(), *digest), (etag, Instant::now()));
    }

    pub fn forget(&self, namespace: &str, digest: &Digest) {
        self.lock().remove(&(namespace.to_string(), *digest));
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

/// A fresh list of the namespace's AetherArtifacts, straight from the API server
/// (a consistent read, which [`BlobLocks::artifacts_since`] needs):
/// each with only what [`unreferenced`] and [`usage`] read (its spec, UID and
/// whether it is being deleted), 100 a page. Each artifact being deleted lists
/// them all: whole and in one page, a namespace of 1000 being deleted took the
/// operator from 77 to 131 MiB.
pub async fn list_namespace(
    client: &kube::Client,
    namespace: &str,
) -> Result<Vec<AetherArtifact>, kube::Error> {
    let api: Api<AetherArtifact> = Api::namespaced(client.clone(), namespace);
    crate::lists::paged(&api, |art| {
        art.status = None;
        crate::app::observed::slim_meta(art);
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt as _;

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
    async fn shared_locks_exclude_only_one_held_alone() {
        let locks = Arc::new(BlobLocks::default());
        let d = Digest::of(b"1");
        let first = locks.share_all("a", [d]).await;
        let within = |f| tokio::time::timeout(std::time::Duration::from_millis(50), f);
        assert!(within(locks.share_all("a", [d])).await.is_ok(), "shared twice");
        let l2 = locks.clone();
        let alone = tokio::spawn(async move { l2.lock_all("a", [d]).await.len() });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!alone.is_finished(), "held alone while shared");
        drop(first);
        assert_eq!(alone.await.unwrap(), 1);
    }

    /// `artifacts_since` as the collector calls it, counting the lists it takes.
    async fn collect(
        locks: &BlobLocks,
        ns: &str,
        since: Instant,
        lists: &std::sync::atomic::AtomicUsize,
    ) -> usize {
        let listed = locks
            .artifacts_since(ns, since, || async {
                lists.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(vec![art("a", &['1'], true)])
            })
            .await
            .unwrap();
        listed.len()
    }

    #[tokio::test]
    async fn a_deletion_uses_a_list_asked_for_after_it_began() {
        let locks = BlobLocks::default();
        let lists = std::sync::atomic::AtomicUsize::new(0);
        let (first, second) = (Instant::now(), Instant::now());
        assert_eq!(collect(&locks, "a", first, &lists).await, 1);
        // The second deletion began before that list was asked for: it uses it.
        collect(&locks, "a", second, &lists).await;
        assert_eq!(lists.load(std::sync::atomic::Ordering::SeqCst), 1);
        // One that began after lists anew, and so does another namespace's.
        collect(&locks, "a", Instant::now() + Duration::from_millis(1), &lists).await;
        collect(&locks, "b", second, &lists).await;
        assert_eq!(lists.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_look_asking_for_blob_locks_makes_the_next_deletion_list_anew() {
        let locks = BlobLocks::default();
        let lists = std::sync::atomic::AtomicUsize::new(0);
        let since = Instant::now();
        collect(&locks, "a", since, &lists).await;
        // Another namespace's look changes nothing here...
        drop(locks.share_all("b", [Digest::of(b"1")]).await);
        collect(&locks, "a", since, &lists).await;
        assert_eq!(lists.load(std::sync::atomic::Ordering::SeqCst), 1);
        // ... this one's does (an artifact pushed since may have been marked Ready).
        drop(locks.share_all("a", [Digest::of(b"2")]).await);
        collect(&locks, "a", since, &lists).await;
        drop(locks.lock_all("a", [Digest::of(b"2")]).await);
        collect(&locks, "a", since, &lists).await;
        assert_eq!(lists.load(std::sync::atomic::Ordering::SeqCst), 3);
        // The collector's own locks do not.
        drop(locks.lock_to_free("a", [Digest::of(b"2")]).await);
        collect(&locks, "a", since, &lists).await;
        assert_eq!(lists.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn a_list_during_which_a_look_asked_for_blob_locks_is_not_used_again() {
        let locks = BlobLocks::default();
        let lists = std::sync::atomic::AtomicUsize::new(0);
        let since = Instant::now();
        locks
            .artifacts_since("a", since, || async {
                drop(locks.share_all("a", [Digest::of(b"1")]).await);
                Ok(vec![])
            })
            .await
            .unwrap();
        collect(&locks, "a", since, &lists).await;
        assert_eq!(lists.load(std::sync::atomic::Ordering::SeqCst), 1);
        // A list that failed is not kept either, nor is anything of it.
        let failed = locks
            .artifacts_since("c", since, || async {
                Err(kube::Error::Api(
                    kube::core::Status::failure("unavailable", "ServiceUnavailable")
                        .with_code(503)
                        .boxed(),
                ))
            })
            .await;
        assert!(failed.is_err());
        assert!(!locks.work().contains_key("c"));
        // Nor one given up half way (the operator shutting down).
        let given_up = locks
            .artifacts_since("d", since, std::future::pending)
            .now_or_never();
        assert!(given_up.is_none());
        assert!(!locks.work().contains_key("d"));
    }

    #[test]
    fn a_blob_read_and_matched_is_trusted_while_its_etag_is_the_same() {
        let verified = Verified::default();
        let d = Digest::of(b"1");
        assert!(!verified.matches("a", &d, "\"e1\""));
        verified.record("a", &d, "\"e1\"".into());
        assert!(verified.matches("a", &d, "\"e1\""));
        assert!(!verified.matches("a", &d, "\"e2\""), "written again since");
        assert!(!verified.matches("b", &d, "\"e1\""), "another namespace's blob");
        verified.forget("a", &d);
        assert!(!verified.matches("a", &d, "\"e1\""));
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

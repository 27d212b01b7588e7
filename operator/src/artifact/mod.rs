//! The AetherArtifact controller: the storage side of `aether push`.
//!
//! validate (the spec reproduces its digest) → look at storage (HEAD every blob of the
//! artifact's namespace) → either hand out presigned upload URLs for the missing blobs
//! (`Uploaded=False`, `AwaitingUpload`) or, once everything is there, re-hash every
//! blob in storage (`Verified`, `Ready`). Developers never hold storage credentials:
//! URLs travel through `status.upload`.
//!
//! What a requester claims never costs anyone else a blob: storage is per namespace
//! (see `aether_storage`), a URL stores only the bytes of its digest, and a stored
//! blob whose size disagrees with the spec is hashed: if it is right, the spec is
//! wrong (`InvalidSpec`); only bytes that do not match their own digest are deleted.
//! A Ready artifact is looked at again (HEAD) every few minutes and re-verified when
//! asked, so a lost blob is uploaded again by the next push.

use std::sync::Arc;
use std::time::Duration;

use aether_artifact::Digest;
use aether_crds::condition::{READY, STALLED, UPLOADED, VERIFIED, artifact as reason};
use aether_crds::{
    AetherApp, AetherArtifact, AetherArtifactStatus, AetherRelease, BlobRef, BlobUpload, PartUpload,
    REISSUE_UPLOAD_ANNOTATION, UPLOAD_COMPLETE_ANNOTATION, UploadInstructions,
};
use aether_storage::{Blobs, Storage, StorageError, plan_parts};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::Event as FinalizerEvent;
use kube::{Api, Resource, ResourceExt};
use tracing::{info, instrument, warn};

use crate::blobs::{self, BlobLocks};
use crate::metrics::{ControllerLabels, Metrics};
use crate::{conditions, events, retention};

/// Field manager for everything the operator writes.
pub const MANAGER: &str = "aether-operator";
const CONTROLLER: &str = "aetherartifact";

/// What the artifact controller needs.
pub struct Context {
    pub client: kube::Client,
    pub storage: Storage,
    pub recorder: Recorder,
    pub upload: UploadPolicy,
    pub retention: retention::Policy,
    pub locks: BlobLocks,
    /// [`HASHING_PERMITS`] permits: held while reading a blob back to hash it.
    pub hashing: tokio::sync::Semaphore,
    /// Per namespace, the turn to hash (see [`hash`]).
    pub hashing_turns: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Storage is used only for namespaces a cluster admin enabled.
    pub enabled: Arc<crate::enabled::Enablement>,
    /// The AetherPolicies: a namespace's storage cap.
    pub policies: crate::policies::Policies,
    pub metrics: Arc<Metrics>,
    /// Every AetherApp, as the app controller's watch keeps them: retention reads
    /// them here instead of listing the namespace's apps for each artifact (which
    /// at 1000 apps was a million objects per pass, and most of the memory).
    pub apps: kube::runtime::reflector::Store<AetherApp>,
    /// Retries of artifacts whose reconcile failed, per artifact.
    pub backoff: crate::backoff::Backoff,
}

impl Context {
    fn hashing_turn(&self, namespace: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut turns = self.hashing_turns.lock().unwrap_or_else(|e| e.into_inner());
        turns.retain(|_, t| Arc::strong_count(t) > 1);
        turns.entry(namespace.to_string()).or_default().clone()
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("storage", &self.storage)
            .field("upload", &self.upload)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct UploadPolicy {
    pub url_ttl: Duration,
    pub multipart_threshold: u64,
    pub part_size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error(transparent)]
    Policies(#[from] crate::policies::PolicyError),
    /// Not a failure: a deleted artifact's upload URLs have not expired yet.
    #[error("upload URLs are still valid for {0:?}")]
    UrlsOutstanding(Duration),
}

impl Error {
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Storage(e) => e.reason(),
            Error::Kube(_) => "KubeError",
            Error::Finalizer(_) => "Finalizer",
            Error::Policies(_) => "Policies",
            Error::UrlsOutstanding(_) => "UrlsOutstanding",
        }
    }
}

/// Held by every artifact until its blobs have been released (see [`crate::blobs`]).
pub const FINALIZER: &str = "aether.dev/blobs";

/// How often a Ready artifact's blobs are looked at (HEAD) again: a blob lost from
/// storage makes the artifact ask for an upload instead of failing pods.
pub const RECHECK: Duration = Duration::from_secs(300);

/// Upload URLs per blob at most: with three blobs of ~700-byte URLs, status stays
/// under half a megabyte (etcd refuses objects past 1.5 MiB).
pub const MAX_PARTS_PER_BLOB: u64 = 200;

/// An artifact is hashed again on request at most this often.
pub const REHASH_INTERVAL: Duration = Duration::from_secs(10);

/// Blobs hashed at once, across all artifacts: hashing is what an uploader can ask
/// for most cheaply, so it is what must not starve the rest of the operator.
pub const HASHING_PERMITS: usize = 2;

/// Are these upload instructions still usable for at least `margin`?
pub fn still_valid(upload: &UploadInstructions, now: Timestamp, margin: Duration) -> bool {
    let margin = SignedDuration::try_from(margin).unwrap_or(SignedDuration::ZERO);
    upload.expires_at.0 > now.checked_add(margin).unwrap_or(now)
}

/// URLs are renewed this long before they expire: a quarter of their lifetime, at
/// most 30 s, so short lifetimes do not make every loop issue new ones.
pub fn renewal_margin(ttl: Duration) -> Duration {
    (ttl / 4).min(Duration::from_secs(30))
}

#[instrument(skip_all, fields(artifact = %art.name_any(), ns = art.namespace().unwrap_or_default()))]
pub async fn reconcile(art: Arc<AetherArtifact>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let labels = ControllerLabels {
        controller: CONTROLLER,
    };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let key = backoff_key(&art);
    let api: Api<AetherArtifact> = Api::namespaced(ctx.client.clone(), &art.namespace().unwrap_or_default());
    let result = kube::runtime::finalizer::finalizer(&api, FINALIZER, art, |event| async {
        match event {
            FinalizerEvent::Apply(art) => apply(art, &ctx).await,
            FinalizerEvent::Cleanup(art) => release_blobs(&art, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)));
    if result.is_ok() {
        ctx.backoff.succeeded(&key);
    }
    ctx.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Retention first (an artifact past its time is deleted, and its finalizer frees
/// the blobs), then the upload conversation.
async fn apply(art: Arc<AetherArtifact>, ctx: &Context) -> Result<Action, Error> {
    let ns = art.namespace().unwrap_or_default();
    let now = Timestamp::now();
    // From the watched apps first (at rest, nearly every artifact is some app's
    // current one). Only what they would not keep is judged again on a fresh read
    // of the namespace's apps and releases, so a deletion never rests on a cache.
    let _ = ctx.apps.wait_until_ready().await;
    let cached: Vec<Arc<AetherApp>> = ctx
        .apps
        .state()
        .into_iter()
        .filter(|a| a.namespace().as_deref() == Some(ns.as_str()))
        .collect();
    let mut decision = retention::decide(&art, &cached, &[], &ctx.retention, now);
    if decision != retention::Decision::Keep {
        let apps: Api<AetherApp> = Api::namespaced(ctx.client.clone(), &ns);
        let apps = apps.list(&ListParams::default()).await?.items;
        let releases: Api<AetherRelease> = Api::namespaced(ctx.client.clone(), &ns);
        let releases = releases.list(&ListParams::default()).await?.items;
        decision = retention::decide(&art, &apps, &releases, &ctx.retention, now);
    }
    if let retention::Decision::Delete(reason) = decision {
        info!(reason = reason.as_str(), "deleting the artifact (retention)");
        let note = format!("deleted by retention: {}", reason.as_str());
        events::publish(
            &ctx.recorder,
            &art.object_ref(&()),
            EventType::Normal,
            reason.as_str(),
            &note,
        )
        .await;
        let api: Api<AetherArtifact> = Api::namespaced(ctx.client.clone(), &ns);
        match api.delete(&art.name_any(), &DeleteParams::background()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
        return Ok(Action::await_change());
    }
    let action = reconcile_inner(art, ctx).await?;
    // Come back when the retention grace ends, if that is sooner.
    Ok(match decision {
        retention::Decision::KeepUntil(t) => {
            let wait =
                Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO) + Duration::from_secs(1);
            if action == Action::await_change() {
                Action::requeue(wait)
            } else {
                action
            }
        }
        _ => action,
    })
}

/// The finalizer: abort unfinished multipart uploads, then delete every blob no
/// other live artifact lists, under the blob locks.
async fn release_blobs(art: &AetherArtifact, ctx: &Context) -> Result<Action, Error> {
    let ns = art.namespace().unwrap_or_default();
    let storage = ctx.storage.namespace(&ns);
    let upload = art.status.as_ref().and_then(|s| s.upload.as_ref());
    abort_uploads(&storage, art, upload).await?;
    // A single-PUT URL handed out for this artifact still stores bytes until it
    // expires: free the blobs after that, or they would land uncounted and unowned.
    if let Some(upload) = upload.filter(|u| u.blobs.iter().any(|b| b.url.is_some())) {
        let left = upload.expires_at.0.duration_since(Timestamp::now());
        if let Ok(left) = Duration::try_from(left)
            && !left.is_zero()
        {
            info!(
                seconds = left.as_secs(),
                "waiting for the upload URLs to expire before freeing blobs"
            );
            return Ok(Action::requeue(left + Duration::from_secs(1)));
        }
    }
    let candidates = blobs::digests(art);
    let _locks = ctx.locks.lock_all(&ns, candidates.iter().copied()).await;
    let all = blobs::list_namespace(&ctx.client, &ns).await?;
    let free = blobs::unreferenced(art, &candidates, &all);
    for digest in &free {
        storage.delete(digest).await?;
    }
    info!(
        deleted = free.len(),
        shared = candidates.len() - free.len(),
        "released the artifact's blobs"
    );
    Ok(Action::await_change())
}

/// Abort the unfinished multipart uploads of `upload` (superseded instructions, or
/// an artifact going away): storage would keep their parts, unlisted, forever.
async fn abort_uploads(
    storage: &Blobs,
    art: &AetherArtifact,
    upload: Option<&UploadInstructions>,
) -> Result<(), Error> {
    for b in upload.iter().flat_map(|u| u.blobs.iter()) {
        let (Some(id), Ok(digest)) = (b.upload_id.as_deref(), b.digest.parse::<Digest>()) else {
            continue;
        };
        match storage.abort_multipart(&upload_name(art), &digest, id).await {
            Ok(()) | Err(StorageError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Multipart uploads are assembled under a key named after the artifact's uid: one
/// conversation's parts never mix with another's.
fn upload_name(art: &AetherArtifact) -> String {
    art.uid().unwrap_or_else(|| art.name_any())
}

async fn reconcile_inner(art: Arc<AetherArtifact>, ctx: &Context) -> Result<Action, Error> {
    let ns = art.namespace().unwrap_or_default();
    let api: Api<AetherArtifact> = Api::namespaced(ctx.client.clone(), &ns);
    let storage = ctx.storage.namespace(&ns);
    let generation = art.metadata.generation;
    let old = art.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = generation;
    let annotations = art.annotations();
    // A reissue request is acted on once: an event can show it again (with the status
    // that answered it) before the annotation's removal arrives.
    let request = annotations.get(REISSUE_UPLOAD_ANNOTATION);
    let reissue = request.is_some_and(|r| old.reissue_handled.as_ref() != Some(r));
    if reissue {
        status.reissue_handled = request.map(|r| r.chars().take(128).collect());
    }
    let completed = annotations.contains_key(UPLOAD_COMPLETE_ANNOTATION);

    // Validate: a spec that does not reproduce its digest, or names bad blobs, waits
    // for the user (it is immutable, so in practice: for a new artifact).
    let blobs = match art
        .spec
        .verified_manifest()
        .map_err(|e| e.to_string())
        .and_then(|_| art.spec.blobs().map_err(|e| e.to_string()))
    {
        Ok(b) => b,
        Err(message) => return invalid_spec(&api, ctx, &art, &old, status, &message).await,
    };
    // In a namespace no admin enabled, storage is not touched (an admin may enable
    // it: look again).
    if !ctx.enabled.check(&ns).await? {
        let message = ctx.enabled.message(&ns);
        let retry = Some(Duration::from_secs(60));
        return refuse(
            &api,
            ctx,
            &art,
            &old,
            status,
            (reason::NAMESPACE_NOT_ENABLED, &message),
            retry,
        )
        .await;
    }
    // A spec judged invalid stays so (it is immutable): not judged again, so asking
    // costs nothing.
    let invalid = old
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.reason == reason::INVALID_SPEC);
    if invalid && old.observed_generation == generation {
        clear_annotations(&api, &art).await?;
        return Ok(Action::await_change());
    }
    let was_ready = conditions::is_true(&old.conditions, READY) && old.observed_generation == generation;
    if was_ready && !reissue && still_stored(&storage, &blobs).await? {
        return Ok(Action::requeue(RECHECK));
    }
    // A verdict on bad bytes stands until the uploader asks for new URLs: otherwise
    // the next loop would hand out fresh ones and hide it.
    let rejected = old
        .conditions
        .iter()
        .any(|c| c.type_ == READY && c.reason == reason::DIGEST_MISMATCH);
    if rejected && old.observed_generation == generation && !reissue {
        return Ok(Action::await_change());
    }

    // From the first HEAD to the verdict, no blob of this artifact may be collected
    // (see crate::blobs).
    let _locks = ctx.locks.lock_all(&ns, blobs.iter().map(|b| b.digest)).await;

    // The uploader says it is done: finish multipart uploads and move them into place
    // once their bytes match (wrong ones never reach the blob key).
    if completed
        && !reissue
        && let Some(upload) = &old.upload
    {
        for b in upload.blobs.iter().filter(|b| b.upload_id.is_some()) {
            let Some(blob) = blobs.iter().find(|x| x.digest.to_string() == b.digest) else {
                continue;
            };
            let name = upload_name(&art);
            match storage
                .complete_multipart(&name, &blob.digest, b.upload_id.as_deref().unwrap_or_default())
                .await
            {
                Ok(()) | Err(StorageError::NotFound(_)) => {} // completed earlier
                Err(e) => return Err(e.into()),
            }
            let promoted = {
                let _permit = ctx.hashing.acquire().await;
                storage.promote(&name, &blob.digest, blob.size).await
            };
            match promoted {
                Ok(()) | Err(StorageError::NotFound(_)) => {} // promoted earlier, or never uploaded
                Err(e @ StorageError::Mismatch { .. }) => {
                    return reject(&api, ctx, &art, &old, status, &e.to_string()).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    let mut missing = Vec::new();
    for b in &blobs {
        match storage.head(&b.digest).await? {
            Some(size) if size == b.size => {}
            // The spec's size disagrees with what is stored under the digest. The
            // stored bytes decide: if they match the digest, the claim is wrong and
            // nothing is touched; only bytes that match nothing are removed.
            Some(size) => match hash(ctx, &storage, &b.digest, size).await {
                Ok(()) => {
                    let message = format!(
                        "blob {} is {size} bytes, not {} as the spec says",
                        b.digest, b.size
                    );
                    return invalid_spec(&api, ctx, &art, &old, status, &message).await;
                }
                Err(StorageError::Mismatch { .. }) => {
                    warn!(digest = %b.digest, size, "stored bytes do not match their digest; removing them");
                    storage.delete(&b.digest).await?;
                    missing.push(*b);
                }
                Err(StorageError::NotFound(_)) => missing.push(*b),
                Err(e) => return Err(e.into()),
            },
            None => missing.push(*b),
        }
    }

    if missing.is_empty() {
        // A cache can lag the API server (just after a leader change, say): if another
        // reconcile already verified this artifact, do not re-hash it, or judge bytes
        // that changed since (and that the pods will judge themselves). Unless asked
        // to: a re-verification request hashes again, at most once per
        // REHASH_INTERVAL (requests are cheap to make, hashing is not).
        let fresh = api.get(&art.name_any()).await?;
        let verified_recently = fresh
            .status
            .as_ref()
            .and_then(|s| s.verified_at.as_ref())
            .is_some_and(|t| {
                let since = Timestamp::now().duration_since(t.0);
                since < SignedDuration::try_from(REHASH_INTERVAL).unwrap_or(SignedDuration::ZERO)
            });
        if (!reissue || verified_recently)
            && fresh.status.as_ref().is_some_and(|s| {
                conditions::is_true(&s.conditions, READY) && s.observed_generation == generation
            })
        {
            // Answer any pending request: the artifact is ready as it is.
            clear_annotations(&api, &art).await?;
            return Ok(Action::requeue(RECHECK));
        }
        return verify(&api, &storage, ctx, &art, old, status, &blobs).await;
    }

    // Whatever is missing would add to the namespace's storage: within its cap?
    if let Some(message) = over_quota(ctx, &art, &ns).await? {
        // Deleting other artifacts frees room: look again.
        let retry = Some(Duration::from_secs(60));
        return refuse(
            &api,
            ctx,
            &art,
            &old,
            status,
            (reason::QUOTA_EXCEEDED, &message),
            retry,
        )
        .await;
    }

    let now = Timestamp::now();
    let margin = renewal_margin(ctx.upload.url_ttl);
    let usable = old.upload.as_ref().is_some_and(|u| still_valid(u, now, margin));
    if completed && usable && !reissue {
        let list: Vec<String> = missing.iter().map(|b| b.digest.to_string()).collect();
        let message = format!("upload marked complete, but storage lacks {}", list.join(", "));
        conditions::set_all(
            &mut status.conditions,
            &[UPLOADED, READY],
            false,
            reason::UPLOAD_INCOMPLETE,
            &message,
            generation,
        );
        patch_status(&api, &art, &status).await?;
        clear_annotations(&api, &art).await?;
        return Ok(Action::requeue(Duration::from_secs(30)));
    }
    if !usable || reissue {
        // New instructions replace the old ones: their multipart uploads end here.
        abort_uploads(&storage, &art, old.upload.as_ref()).await?;
        status.upload = Some(instructions(ctx, &storage, &upload_name(&art), &missing, now).await?);
    }
    let bytes: u64 = missing.iter().map(|b| b.size).sum();
    let message = format!("{} blob(s), {bytes} bytes, to upload", missing.len());
    conditions::set_all(
        &mut status.conditions,
        &[UPLOADED, READY],
        false,
        reason::AWAITING_UPLOAD,
        &message,
        generation,
    );
    conditions::set(
        &mut status.conditions,
        STALLED,
        false,
        reason::AWAITING_UPLOAD,
        "",
        generation,
    );
    patch_status(&api, &art, &status).await?;
    // The request is answered only once the answer is in status: an uploader that
    // sees its annotation gone reads the new URLs, never the previous verdict.
    if reissue || completed {
        clear_annotations(&api, &art).await?;
    }
    info!(missing = missing.len(), bytes, "awaiting upload");
    // Come back shortly before the URLs expire, to hand out fresh ones if still needed.
    Ok(Action::requeue(
        ctx.upload
            .url_ttl
            .saturating_sub(margin)
            .max(Duration::from_secs(1)),
    ))
}

/// The spec names blobs it cannot have (it is immutable, so in practice this waits
/// for a new artifact).
async fn invalid_spec(
    api: &Api<AetherArtifact>,
    ctx: &Context,
    art: &AetherArtifact,
    old: &AetherArtifactStatus,
    status: AetherArtifactStatus,
    message: &str,
) -> Result<Action, Error> {
    refuse(api, ctx, art, old, status, (reason::INVALID_SPEC, message), None).await
}

/// The artifact cannot be uploaded as it is (`reason`): `Stalled`, its unfinished
/// uploads aborted, nothing else in storage touched, a waiting push answered. Looked
/// at again after `retry` when something else may change the verdict.
async fn refuse(
    api: &Api<AetherArtifact>,
    ctx: &Context,
    art: &AetherArtifact,
    old: &AetherArtifactStatus,
    mut status: AetherArtifactStatus,
    (reason, message): (&str, &str),
    retry: Option<Duration>,
) -> Result<Action, Error> {
    let generation = art.metadata.generation;
    let storage = ctx.storage.namespace(&art.namespace().unwrap_or_default());
    abort_uploads(&storage, art, old.upload.as_ref()).await?;
    status.upload = None;
    conditions::set(&mut status.conditions, READY, false, reason, message, generation);
    conditions::set(&mut status.conditions, STALLED, true, reason, message, generation);
    publish_on_change(ctx, art, old, &status, EventType::Warning, reason, message).await;
    patch_status(api, art, &status).await?;
    // Answer a waiting uploader: the verdict is in status.
    clear_annotations(api, art).await?;
    Ok(retry.map_or_else(Action::await_change, Action::requeue))
}

/// Uploaded bytes did not match their digest: the verdict stands until the uploader
/// asks for new URLs.
async fn reject(
    api: &Api<AetherArtifact>,
    ctx: &Context,
    art: &AetherArtifact,
    old: &AetherArtifactStatus,
    mut status: AetherArtifactStatus,
    message: &str,
) -> Result<Action, Error> {
    let generation = art.metadata.generation;
    let storage = ctx.storage.namespace(&art.namespace().unwrap_or_default());
    abort_uploads(&storage, art, old.upload.as_ref()).await?;
    status.upload = None;
    conditions::set_all(
        &mut status.conditions,
        &[UPLOADED, VERIFIED, READY],
        false,
        reason::DIGEST_MISMATCH,
        message,
        generation,
    );
    publish_on_change(
        ctx,
        art,
        old,
        &status,
        EventType::Warning,
        reason::DIGEST_MISMATCH,
        message,
    )
    .await;
    patch_status(api, art, &status).await?;
    clear_annotations(api, art).await?;
    Ok(Action::await_change())
}

/// Read a stored blob back and check it against its digest, within the hashing
/// budget ([`HASHING_PERMITS`]).
async fn hash(ctx: &Context, storage: &Blobs, digest: &Digest, size: u64) -> Result<(), StorageError> {
    // One blob per namespace at a time, then one of the global permits: a namespace
    // that asks for a lot waits behind itself, not in front of everyone.
    let _turn = ctx.hashing_turn(storage.prefix()).lock_owned().await;
    let _permit = ctx.hashing.acquire().await;
    storage.verify(digest, size).await
}

/// Would this artifact's blobs take its namespace past an AetherPolicy's
/// `maxStorageBytes`? The message that says so, if they would.
async fn over_quota(ctx: &Context, art: &AetherArtifact, ns: &str) -> Result<Option<String>, Error> {
    let caps: Vec<(u64, String)> = ctx
        .policies
        .for_namespace(ns)
        .await?
        .iter()
        .filter_map(|p| {
            Some((
                u64::try_from(p.spec.max_storage_bytes?).unwrap_or(0),
                p.name_any(),
            ))
        })
        .collect();
    let Some((cap, policy)) = caps.into_iter().min() else {
        return Ok(None);
    };
    let all = blobs::list_namespace(&ctx.client, ns).await?;
    let (used, adds) = blobs::usage(art, &all);
    Ok((used + adds > cap).then(|| {
        format!(
            "namespace {ns} may store {cap} bytes (AetherPolicy {policy}); its other artifacts take {used}, this one would add {adds}: delete unused artifacts or ask an admin for more"
        )
    }))
}

/// Is every blob still stored, with its size? A cheap look (HEAD), for Ready artifacts.
async fn still_stored(storage: &Blobs, blobs: &[BlobRef]) -> Result<bool, Error> {
    for b in blobs {
        if storage.head(&b.digest).await? != Some(b.size) {
            info!(digest = %b.digest, "a blob of this Ready artifact is gone from storage; asking for it again");
            return Ok(false);
        }
    }
    Ok(true)
}

/// Every blob is stored: check each against its digest. Bytes that do not match are
/// removed (they are no blob's), and the artifact waits for a new upload.
async fn verify(
    api: &Api<AetherArtifact>,
    storage: &Blobs,
    ctx: &Context,
    art: &AetherArtifact,
    old: AetherArtifactStatus,
    mut status: AetherArtifactStatus,
    blobs: &[BlobRef],
) -> Result<Action, Error> {
    let generation = art.metadata.generation;
    for b in blobs {
        match hash(ctx, storage, &b.digest, b.size).await {
            Ok(()) => {}
            Err(e @ StorageError::Mismatch { .. }) => {
                let message = e.to_string();
                warn!(%message, "deleting stored bytes that do not match their digest");
                storage.delete(&b.digest).await?;
                return reject(api, ctx, art, &old, status, &message).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let message = format!("{} blob(s) stored and verified", blobs.len());
    status.upload = None;
    status.verified_at = Some(Time(Timestamp::now()));
    conditions::set(
        &mut status.conditions,
        UPLOADED,
        true,
        "Uploaded",
        "every blob is in storage",
        generation,
    );
    conditions::set_all(
        &mut status.conditions,
        &[VERIFIED, READY],
        true,
        reason::VERIFIED,
        &message,
        generation,
    );
    conditions::set(
        &mut status.conditions,
        STALLED,
        false,
        reason::VERIFIED,
        "",
        generation,
    );
    publish_on_change(
        ctx,
        art,
        &old,
        &status,
        EventType::Normal,
        reason::VERIFIED,
        &message,
    )
    .await;
    patch_status(api, art, &status).await?;
    clear_annotations(api, art).await?;
    info!("verified");
    Ok(Action::requeue(RECHECK))
}

async fn instructions(
    ctx: &Context,
    storage: &Blobs,
    upload: &str,
    missing: &[BlobRef],
    now: Timestamp,
) -> Result<UploadInstructions, Error> {
    let ttl = ctx.upload.url_ttl;
    let mut blobs = Vec::with_capacity(missing.len());
    for b in missing {
        if b.size > ctx.upload.multipart_threshold {
            let upload_id = storage.start_multipart(upload, &b.digest).await?;
            // Parts grow rather than multiply, so status stays far below etcd's limit.
            let part_size = ctx.upload.part_size.max(b.size.div_ceil(MAX_PARTS_PER_BLOB));
            let plans = plan_parts(b.size, part_size);
            let mut parts = Vec::with_capacity(plans.len());
            for p in &plans {
                parts.push(PartUpload {
                    number: p.number,
                    url: storage
                        .presign_part(upload, &b.digest, &upload_id, p, ttl)
                        .await?,
                });
            }
            blobs.push(BlobUpload {
                digest: b.digest.to_string(),
                size: b.size as i64,
                url: None,
                headers: Default::default(),
                upload_id: Some(upload_id),
                part_size: plans.first().map(|p| p.len as i64),
                parts,
            });
        } else {
            let put = storage.presign_put(&b.digest, b.size, ttl).await?;
            blobs.push(BlobUpload {
                digest: b.digest.to_string(),
                size: b.size as i64,
                url: Some(put.url),
                headers: put.headers,
                upload_id: None,
                part_size: None,
                parts: Vec::new(),
            });
        }
    }
    let ttl = SignedDuration::try_from(ttl).unwrap_or(SignedDuration::from_secs(900));
    Ok(UploadInstructions {
        expires_at: Time(now.checked_add(ttl).unwrap_or(now)),
        blobs,
    })
}

async fn patch_status(
    api: &Api<AetherArtifact>,
    art: &AetherArtifact,
    status: &AetherArtifactStatus,
) -> Result<(), Error> {
    let patch = serde_json::json!({
        "apiVersion": "aether.dev/v1alpha1",
        "kind": "AetherArtifact",
        "status": status,
    });
    api.patch_status(
        &art.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

/// The upload signals are consumed once acted upon.
async fn clear_annotations(api: &Api<AetherArtifact>, art: &AetherArtifact) -> Result<(), Error> {
    let a = art.annotations();
    if !a.contains_key(UPLOAD_COMPLETE_ANNOTATION) && !a.contains_key(REISSUE_UPLOAD_ANNOTATION) {
        return Ok(());
    }
    let patch = serde_json::json!({"metadata": {"annotations": {
        UPLOAD_COMPLETE_ANNOTATION: null,
        REISSUE_UPLOAD_ANNOTATION: null,
    }}});
    api.patch(&art.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Events on transitions of Ready, not on every loop.
async fn publish_on_change(
    ctx: &Context,
    art: &AetherArtifact,
    old: &AetherArtifactStatus,
    new: &AetherArtifactStatus,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    if events::ready_changed(&old.conditions, &new.conditions) {
        events::publish(&ctx.recorder, &art.object_ref(&()), type_, reason, note).await;
    }
}

pub fn error_policy(art: Arc<AetherArtifact>, err: &Error, ctx: Arc<Context>) -> Action {
    use kube::runtime::finalizer::Error as Finalizer;
    // The finalizer wraps every error of the reconcile: judge the one inside.
    let err = match err {
        Error::Finalizer(wrapped) => match wrapped.as_ref() {
            Finalizer::ApplyFailed(inner) | Finalizer::CleanupFailed(inner) => inner,
            _ => err,
        },
        _ => err,
    };
    if let Error::UrlsOutstanding(wait) = err {
        return Action::requeue(*wait);
    }
    warn!(artifact = %art.name_any(), reason = err.metric_label(), error = %err, "reconcile failed; retrying");
    ctx.metrics.failed(CONTROLLER, err.metric_label());
    let backoff = ctx.backoff.failed(&backoff_key(&art));
    match err {
        Error::Storage(StorageError::Unauthorized { .. } | StorageError::NotConfigured(_)) => {
            Action::requeue(backoff.max(Duration::from_secs(60)))
        }
        // Storage is down: every Ready artifact's recheck would fail alike.
        Error::Storage(StorageError::Unavailable(_)) => Action::requeue(backoff.max(Duration::from_secs(30))),
        _ => Action::requeue(backoff),
    }
}

fn backoff_key(art: &AetherArtifact) -> String {
    format!("{}/{}", art.namespace().unwrap_or_default(), art.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_crds::{AetherArtifactSpec, Blob};

    fn spec() -> AetherArtifactSpec {
        serde_json::from_value(serde_json::json!({
            "app": "web",
            "digest": format!("sha256:{}", "a".repeat(64)),
            "layers": [
                {"name": "deps", "digest": format!("sha256:{}", "b".repeat(64)), "size": 100, "mediaType": "x", "entries": 1, "filesDigest": format!("sha256:{}", "c".repeat(64))},
                {"name": "app", "digest": format!("sha256:{}", "b".repeat(64)), "size": 100, "mediaType": "x", "entries": 1, "filesDigest": format!("sha256:{}", "c".repeat(64))}
            ],
            "runtime": {"nodeMajor": 20, "platform": "linux/amd64", "libc": "Glibc"},
            "entrypoint": ["node", "server.js"]
        }))
        .unwrap()
    }

    #[test]
    fn blobs_are_listed_once_with_the_sbom() {
        let mut s = spec();
        assert_eq!(s.blobs().unwrap().len(), 1, "identical layers are one blob");
        s.sbom = Some(Blob {
            digest: format!("sha256:{}", "d".repeat(64)),
            size: 5,
            media_type: "x".into(),
        });
        let b = s.blobs().unwrap();
        assert_eq!(b.len(), 2);
        assert_eq!(b[1].size, 5);
    }

    #[test]
    fn instructions_expire() {
        let now = Timestamp::now();
        let upload = |secs: i64| UploadInstructions {
            expires_at: Time(now.checked_add(SignedDuration::from_secs(secs)).unwrap()),
            blobs: vec![],
        };
        assert!(still_valid(&upload(600), now, Duration::from_secs(30)));
        assert!(!still_valid(&upload(10), now, Duration::from_secs(30)));
        assert!(!still_valid(&upload(-5), now, Duration::ZERO));
        assert_eq!(renewal_margin(Duration::from_secs(900)), Duration::from_secs(30));
        assert_eq!(renewal_margin(Duration::from_secs(20)), Duration::from_secs(5));
    }
}

//! The AetherArtifact controller: the storage side of `aether push`.
//!
//! retention (a pure decision, [`crate::retention`]) → observe and decide
//! ([`decide`]: what to look at next, then the verdict) → execute the verdict (delete
//! bytes that match nothing, abort superseded multipart uploads, presign upload URLs,
//! write status, publish the event). Developers never hold storage credentials: URLs
//! travel through `status.upload`.
//!
//! What a requester claims never costs anyone else a blob: storage is per namespace
//! (see `aether_storage`), a URL stores only the bytes of its digest, and a stored
//! blob whose size disagrees with the spec is hashed: if it is right, the spec is
//! wrong (`InvalidSpec`); only bytes that do not match their own digest are deleted.
//! A Ready artifact is looked at again (HEAD) every few minutes and re-verified when
//! asked, so a lost blob is uploaded again by the next push.

pub mod decide;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aether_artifact::Digest;
use aether_crds::{
    AetherApp, AetherArtifact, AetherArtifactStatus, AetherRelease, BlobRef, BlobUpload, PartUpload,
    UploadInstructions,
};
use aether_storage::{Blobs, Stat, Storage, StorageError, plan_parts};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::finalizer::Event as FinalizerEvent;
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use crate::blobs::{self, BlobLocks};
use crate::metrics::{ControllerLabels, Metrics};
use crate::turns::Turn;
use crate::{events, retention};
use decide::{Hashed, Look, Next, Seen, Verdict};

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
    /// Blobs read back and matched, by their ETag.
    pub verified: blobs::Verified,
    /// Reconciles take turns, shared fairly between namespaces.
    pub turns: Arc<crate::turns::Turns>,
    /// The controller's cache of every artifact: a reconcile that waited for its turn
    /// reads the artifact again there.
    pub artifacts: kube::runtime::reflector::Store<AetherArtifact>,
    /// [`HASHING_PERMITS`] turns, one per namespace: held while reading a blob back to
    /// hash it.
    pub hashing: crate::turns::Turns,
    /// Storage is used only for namespaces a cluster admin enabled.
    pub enabled: Arc<crate::enabled::Enablement>,
    /// In a namespace being deleted, only an artifact's own deletion is carried out.
    pub namespaces: crate::namespaces::Namespaces,
    /// The AetherPolicies: a namespace's storage cap.
    pub policies: crate::policies::Policies,
    pub metrics: Arc<Metrics>,
    /// Every AetherApp, as the app controller's watch keeps them: retention reads
    /// them here instead of listing the namespace's apps for each artifact (which
    /// at 1000 apps was a million objects per pass, and most of the memory).
    pub apps: kube::runtime::reflector::Store<AetherApp>,
    /// When `apps` has had its first full list.
    pub apps_ready: crate::readiness::Readiness,
    /// Retries of artifacts whose reconcile failed, per artifact.
    pub backoff: crate::backoff::Backoff,
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

/// The step of a reconcile that failed: errors are named (and counted) by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Adding the blobs finalizer.
    Finalizer,
    /// Reading the namespace's apps and releases to judge retention.
    Retention,
    /// Asking whether an admin enabled the namespace.
    Enablement,
    /// Completing multipart uploads.
    Complete,
    /// Looking at what storage holds (HEAD).
    Head,
    /// Reading stored blobs back to hash them.
    Hash,
    /// Reading the artifact again from the API server.
    Fresh,
    /// Measuring the namespace against its storage cap.
    Quota,
    /// Deleting stored bytes, or the artifact.
    Delete,
    /// Aborting superseded multipart uploads.
    Abort,
    /// Signing upload URLs.
    Presign,
    /// Writing status.
    Status,
    /// Freeing a deleted artifact's blobs.
    Release,
}

impl Step {
    pub fn as_str(self) -> &'static str {
        match self {
            Step::Finalizer => "Finalizer",
            Step::Retention => "Retention",
            Step::Enablement => "Enablement",
            Step::Complete => "Complete",
            Step::Head => "Head",
            Step::Hash => "Hash",
            Step::Fresh => "Fresh",
            Step::Quota => "Quota",
            Step::Delete => "Delete",
            Step::Abort => "Abort",
            Step::Presign => "Presign",
            Step::Status => "Status",
            Step::Release => "Release",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{step}: storage: {source}")]
    Storage {
        step: Step,
        #[source]
        source: StorageError,
    },
    #[error("{step}: kubernetes API: {source}")]
    Kube {
        step: Step,
        #[source]
        source: kube::Error,
    },
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    #[error("Quota: {0}")]
    Policies(#[from] crate::policies::PolicyError),
    /// The apps cache has not had its first list yet.
    #[error("Retention: the AetherApps are not known yet (may the operator list them?)")]
    AppsNotCached,
    /// A bug: the decision asked for more looks than there are.
    #[error("the decision asked for {0:?} again")]
    NoProgress(Look),
    /// Not a failure: a deleted artifact's upload URLs still store bytes for this long,
    /// so its blobs are freed after that. (An error keeps the finalizer: kube's
    /// finalizer helper removes it once a cleanup returns Ok.)
    #[error("the upload URLs still store bytes for {0:?}: blobs are freed after that")]
    UploadUrlsLive(Duration),
}

impl Error {
    /// The step, for the failure metric (the finalizer's wrapper is looked through).
    pub fn metric_label(&self) -> &'static str {
        use kube::runtime::finalizer::Error as Finalizer;
        match self {
            Error::Storage { step, .. } | Error::Kube { step, .. } => step.as_str(),
            Error::Finalizer(wrapped) => match wrapped.as_ref() {
                Finalizer::ApplyFailed(inner) | Finalizer::CleanupFailed(inner) => inner.metric_label(),
                _ => "Finalizer",
            },
            Error::Policies(_) => Step::Quota.as_str(),
            Error::NoProgress(_) => "NoProgress",
            Error::AppsNotCached => Step::Retention.as_str(),
            Error::UploadUrlsLive(_) => Step::Release.as_str(),
        }
    }
}

fn storage_at(step: Step) -> impl FnOnce(StorageError) -> Error {
    move |source| Error::Storage { step, source }
}

fn kube_at(step: Step) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube { step, source }
}

/// Held by every artifact until its blobs have been released (see [`crate::blobs`]).
pub const FINALIZER: &str = aether_crds::BLOBS_FINALIZER;

/// Upload URLs per blob at most: with three blobs of ~700-byte URLs, status stays
/// under half a megabyte (etcd refuses objects past 1.5 MiB).
pub const MAX_PARTS_PER_BLOB: u64 = 200;

/// How long a reconcile waits for the apps cache's first list before failing.
const APPS_CACHE_WAIT: Duration = Duration::from_secs(30);

/// Blobs hashed at once, across all artifacts: hashing is what an uploader can ask
/// for most cheaply, so it is what must not starve the rest of the operator.
pub const HASHING_PERMITS: usize = 2;

#[instrument(skip_all, fields(artifact = %art.name_any(), ns = art.namespace().unwrap_or_default()))]
pub async fn reconcile(art: Arc<AetherArtifact>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Seen being deleted, before the wait for a turn: the deletions of a namespace
    // (a thousand due at once) then share the collector's lists (see release_blobs).
    let seen_deleting = art
        .meta()
        .deletion_timestamp
        .is_some()
        .then(|| (art.uid(), std::time::Instant::now()));
    if going(&art, &ctx) {
        return Ok(Action::requeue(crate::namespaces::LOOK_AGAIN));
    }
    // (None: the operator is shutting down; the next one looks at the artifact.)
    let Some(turn) = ctx
        .turns
        .take_for(&art.namespace().unwrap_or_default(), &art.name_any())
        .await
    else {
        return Ok(Action::await_change());
    };
    // As it is now, not as it was when it became due: it may have waited.
    let Some(art) = ctx.artifacts.get(&ObjectRef::from_obj(&*art)) else {
        return Ok(Action::await_change());
    };
    // (Again: its namespace may have begun to go while it waited.)
    if going(&art, &ctx) {
        return Ok(Action::requeue(crate::namespaces::LOOK_AGAIN));
    }
    let started = std::time::Instant::now();
    let labels = ControllerLabels {
        controller: CONTROLLER,
    };
    ctx.metrics.reconciles.get_or_create(&labels).inc();
    let key = backoff_key(&art);
    let api: Api<AetherArtifact> = Api::namespaced(ctx.client.clone(), &art.namespace().unwrap_or_default());
    debug!("reconciling");
    // Boxed once it runs (see the app controller's reconcile).
    let result = Box::pin(async {
        // (None: deleted since: its deletion comes as its own event.)
        let Some(art) = with_finalizer(&api, art).await? else {
            return Ok(Action::await_change());
        };
        kube::runtime::finalizer::finalizer(&api, FINALIZER, art, |event| async {
            match event {
                FinalizerEvent::Apply(art) => apply(art, &ctx, &turn).await,
                FinalizerEvent::Cleanup(art) => release_blobs(&art, &ctx, seen_deleting).await,
            }
        })
        .await
        .map_err(|e| Error::Finalizer(Box::new(e)))
    })
    .await;
    if result.is_ok() {
        ctx.backoff.succeeded(&key);
    }
    ctx.metrics
        .reconcile_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// Whether the artifact is left alone: its namespace is being deleted and it is not
/// yet. Its own deletion comes as an event of its own, and is carried out (see
/// crate::namespaces).
fn going(art: &AetherArtifact, ctx: &Context) -> bool {
    let going = ctx.namespaces.going(art.meta()) && art.meta().deletion_timestamp.is_none();
    if going {
        debug!("its namespace is being deleted: left alone until the artifact is");
    }
    going
}

/// The artifact, with [`FINALIZER`] added if it has none and is not being deleted,
/// so that its first reconcile goes on to its verdict. (kube's finalizer helper adds
/// it and ends the reconcile, and the change comes back behind every artifact due:
/// after a restart with a thousand new ones, all of them.) Applied: finalizers are a
/// set, so one someone else adds meanwhile stays, and so does whatever the uploader
/// writes; the UID makes it fail rather than make again an object deleted since
/// (None), or take over one made again under its name (refused: retried on that one).
async fn with_finalizer(
    api: &Api<AetherArtifact>,
    art: Arc<AetherArtifact>,
) -> Result<Option<Arc<AetherArtifact>>, Error> {
    if art.meta().deletion_timestamp.is_some() || art.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(Some(art));
    }
    let patch = serde_json::json!({
        "apiVersion": "aether.dev/v1alpha1",
        "kind": "AetherArtifact",
        "metadata": {"name": art.name_any(), "uid": art.uid(), "finalizers": [FINALIZER]},
    });
    let added = match api
        .patch(
            &art.name_any(),
            &PatchParams::apply(MANAGER),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(added) => added,
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => return Ok(None),
        Err(e) => return Err(kube_at(Step::Finalizer)(e)),
    };
    crate::faults::point("artifact: added the finalizer");
    Ok(Some(Arc::new(added)))
}

/// Retention first (an artifact past its time is deleted, and its finalizer frees
/// the blobs), then the upload conversation.
async fn apply(art: Arc<AetherArtifact>, ctx: &Context, turn: &Turn) -> Result<Action, Error> {
    let ns = art.namespace().unwrap_or_default();
    let now = Timestamp::now();
    // From the watched apps first (at rest, nearly every artifact is some app's
    // current one). Only what they would not keep is judged again on a fresh read
    // of the namespace's apps and releases, so a deletion never rests on a cache.
    debug!("waiting for the apps cache");
    // (Bounded: if the apps cannot be listed at all, this fails and is retried.)
    tokio::time::timeout(APPS_CACHE_WAIT, ctx.apps_ready.wait())
        .await
        .map_err(|_| Error::AppsNotCached)?;
    debug!("judging retention");
    let cached: Vec<Arc<AetherApp>> = ctx
        .apps
        .state()
        .into_iter()
        .filter(|a| a.namespace().as_deref() == Some(ns.as_str()))
        .collect();
    let mut decision = retention::decide(&art, &cached, &[], &ctx.retention, now);
    if decision != retention::Decision::Keep {
        let apps: Api<AetherApp> = Api::namespaced(ctx.client.clone(), &ns);
        let apps = crate::lists::paged(&apps, crate::app::observed::slim_resource)
            .await
            .map_err(kube_at(Step::Retention))?;
        let releases: Api<AetherRelease> = Api::namespaced(ctx.client.clone(), &ns);
        let releases = crate::lists::paged(&releases, crate::app::observed::slim_resource)
            .await
            .map_err(kube_at(Step::Retention))?;
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
            Err(e) => return Err(kube_at(Step::Delete)(e)),
        }
        return Ok(Action::await_change());
    }
    let action = reconcile_inner(art, ctx, turn).await?;
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
/// other live artifact lists, under the blob locks. `seen_deleting`: the UID and
/// the moment this reconcile began, if it began with the artifact being deleted.
async fn release_blobs(
    art: &AetherArtifact,
    ctx: &Context,
    seen_deleting: Option<(Option<String>, std::time::Instant)>,
) -> Result<Action, Error> {
    let ns = art.namespace().unwrap_or_default();
    let storage = ctx.storage.namespace(&ns);
    let upload = art.status.as_ref().and_then(|s| s.upload.as_ref());
    abort_uploads(&storage, art, None).await?;
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
            return Err(Error::UploadUrlsLive(left + Duration::from_secs(1)));
        }
    }
    // Its deletion was committed by then: any list asked for since shows it. (Not
    // another artifact's of its name, deleted and made again while this one waited.)
    let since = seen_deleting
        .filter(|(uid, _)| *uid == art.uid())
        .map_or_else(std::time::Instant::now, |(_, at)| at);
    let candidates = blobs::digests(art);
    let _locks = ctx.locks.lock_to_free(&ns, candidates.iter().copied()).await;
    let all = ctx
        .locks
        .artifacts_since(&ns, since, || blobs::list_namespace(&ctx.client, &ns))
        .await
        .map_err(kube_at(Step::Release))?;
    let free = blobs::unreferenced(art, &candidates, &all);
    for digest in &free {
        ctx.verified.forget(&ns, digest);
        storage.delete(digest).await.map_err(storage_at(Step::Release))?;
        crate::faults::point("artifact: freed a blob");
    }
    info!(
        deleted = free.len(),
        shared = candidates.len() - free.len(),
        "released the artifact's blobs"
    );
    Ok(Action::await_change())
}

/// Abort every unfinished multipart upload of the artifact but those `keep` hands
/// out: storage would keep their parts, unlisted, forever. Storage is asked which are
/// open, not status: a crash between starting an upload and writing status leaves
/// one that status never named.
async fn abort_uploads(
    storage: &Blobs,
    art: &AetherArtifact,
    keep: Option<&UploadInstructions>,
) -> Result<(), Error> {
    let name = upload_name(art);
    let open = storage
        .open_multipart(&name)
        .await
        .map_err(storage_at(Step::Abort))?;
    let kept = |id: &str| {
        keep.iter()
            .flat_map(|u| u.blobs.iter())
            .any(|b| b.upload_id.as_deref() == Some(id))
    };
    for (digest, id) in open.iter().filter(|(_, id)| !kept(id)) {
        match storage.abort_multipart(&name, digest, id).await {
            Ok(()) | Err(StorageError::NotFound(_)) => {}
            Err(e) => return Err(storage_at(Step::Abort)(e)),
        }
    }
    Ok(())
}

/// Multipart uploads are assembled under a key named after the artifact's uid: one
/// conversation's parts never mix with another's.
fn upload_name(art: &AetherArtifact) -> String {
    art.uid().unwrap_or_else(|| art.name_any())
}

/// Observe and decide until there is a verdict, then carry it out: first holding the
/// artifact's blobs shared with others that only read them; when the verdict would
/// write or delete blobs, all over again holding them alone.
async fn reconcile_inner(art: Arc<AetherArtifact>, ctx: &Context, turn: &Turn) -> Result<Action, Error> {
    match decide_and_execute(&art, ctx, false, turn).await? {
        Some(then) => Ok(then),
        None => decide_and_execute(&art, ctx, true, turn)
            .await?
            .ok_or(Error::NoProgress(Look::Stored)),
    }
}

/// One pass of [`reconcile_inner`]; `None` when it held the blobs shared
/// (`alone` false) and its verdict would write or delete them.
async fn decide_and_execute(
    art: &AetherArtifact,
    ctx: &Context,
    alone: bool,
    turn: &Turn,
) -> Result<Option<Action>, Error> {
    let ns = art.namespace().unwrap_or_default();
    let storage = ctx.storage.namespace(&ns);
    let mut seen = Seen::of(art, Timestamp::now());
    // From the first storage look to the verdict, no blob of this artifact may be
    // collected (see crate::blobs).
    let mut locks = None;
    // What storage said of each blob (size and ETag), under those locks.
    let mut stats = BTreeMap::new();
    // Each look answers one question, so a verdict comes after a few of them.
    for _ in 0..12 {
        seen.now = Timestamp::now();
        let look = match decide::decide(&seen, ctx.upload.url_ttl) {
            Next::Verdict(verdict) => {
                // Not the whole verdict: its status may hold presigned URLs.
                let ready =
                    aether_crds::condition::find(&verdict.status.conditions, aether_crds::condition::READY);
                debug!(
                    ready = ready.map(|c| c.reason.as_str()),
                    write = verdict.write,
                    delete = verdict.delete.len(),
                    abort = verdict.abort_previous,
                    issue = verdict.issue.as_ref().map(Vec::len),
                    then = ?verdict.then,
                    "verdict"
                );
                if !alone && !verdict.delete.is_empty() {
                    return Ok(None);
                }
                return execute(*verdict, &seen, art, ctx, &storage).await.map(Some);
            }
            Next::Look(look) => look,
        };
        // Completing an upload writes the blob.
        if !alone && matches!(look, Look::Complete(_)) {
            return Ok(None);
        }
        if locks.is_none() && matches!(look, Look::Complete(_) | Look::Stored) {
            let digests = seen.spec.iter().flatten().map(|b| b.digest);
            locks = Some(if alone {
                blobs::Held::Alone(ctx.locks.lock_all(&ns, digests).await)
            } else {
                blobs::Held::Shared(ctx.locks.share_all(&ns, digests).await)
            });
            debug!(alone, "holding the blob locks");
        }
        debug!(?look, "looking");
        observe(&look, &mut seen, &mut stats, art, ctx, &storage, turn).await?;
        crate::faults::point(look.fault_point());
    }
    Err(Error::NoProgress(Look::Stored))
}

/// Find out what `look` asks and write it into `seen` (and what storage said of each
/// blob into `stats`). Reading blobs back waits for the namespace's hashing turn:
/// the reconcile's `turn` steps aside first.
async fn observe(
    look: &Look,
    seen: &mut Seen,
    stats: &mut BTreeMap<Digest, Stat>,
    art: &AetherArtifact,
    ctx: &Context,
    storage: &Blobs,
    turn: &Turn,
) -> Result<(), Error> {
    let ns = art.namespace().unwrap_or_default();
    match look {
        Look::Enabled | Look::EnabledAgain => {
            let enabled = if *look == Look::EnabledAgain {
                seen.asked_again = true;
                ctx.enabled.check_after_lag(&ns).await
            } else {
                ctx.enabled.check(&ns).await
            };
            let enabled = enabled.map_err(kube_at(Step::Enablement))?;
            seen.enabled = Some(if enabled {
                Ok(())
            } else {
                Err(ctx.enabled.message(&ns))
            });
        }
        Look::Complete(uploads) => {
            let name = upload_name(art);
            let mut outcome = Ok(());
            for c in uploads {
                match storage
                    .complete_multipart(&name, &c.blob.digest, &c.upload_id)
                    .await
                {
                    Ok(()) | Err(StorageError::NotFound(_)) => {} // completed earlier
                    Err(e) => return Err(storage_at(Step::Complete)(e)),
                }
                let promoted = {
                    turn.step_aside();
                    let _hashing = ctx.hashing.take(storage.prefix()).await;
                    storage.promote(&name, &c.blob.digest, c.blob.size).await
                };
                match promoted {
                    Ok(()) | Err(StorageError::NotFound(_)) => {} // promoted earlier, or never uploaded
                    Err(e @ StorageError::Mismatch { .. }) => {
                        outcome = Err(e.to_string());
                        break;
                    }
                    Err(e) => return Err(storage_at(Step::Complete)(e)),
                }
            }
            seen.completed = Some(outcome);
        }
        Look::Stored => {
            let mut stored = Vec::new();
            for b in seen.spec.iter().flatten() {
                let stat = storage.stat(&b.digest).await.map_err(storage_at(Step::Head))?;
                stored.push(stat.as_ref().map(|s| s.size));
                match stat {
                    Some(stat) => stats.insert(b.digest, stat),
                    None => stats.remove(&b.digest),
                };
            }
            seen.stored = Some(stored);
            seen.read_before = seen.requests.reissue.is_none()
                && seen.spec.iter().flatten().all(|b| {
                    stats.get(&b.digest).is_some_and(|s| {
                        s.size == b.size && read_back_before(ctx, &ns, &b.digest, s.etag.as_deref())
                    })
                });
        }
        Look::Hash(blobs) => {
            // A reissue request says the bytes may be bad: read them whatever was seen.
            let trust_earlier_reads = seen.requests.reissue.is_none();
            for b in blobs {
                let seen_etag = stats
                    .get(&b.digest)
                    .filter(|s| trust_earlier_reads && s.size == b.size)
                    .and_then(|s| s.etag.as_deref());
                let hashed = match hash(ctx, storage, &ns, &b.digest, b.size, seen_etag, turn).await {
                    Ok(()) => Hashed::Matches,
                    Err(e @ StorageError::Mismatch { .. }) => {
                        ctx.verified.forget(&ns, &b.digest);
                        warn!(digest = %b.digest, error = %e, "stored bytes do not match their digest");
                        Hashed::Mismatch(e.to_string())
                    }
                    Err(StorageError::NotFound(_)) => Hashed::Gone,
                    Err(e) => return Err(storage_at(Step::Hash)(e)),
                };
                seen.hashed.insert(b.digest, hashed);
            }
        }
        Look::Fresh => {
            let api: Api<AetherArtifact> = Api::namespaced(ctx.client.clone(), &ns);
            let fresh = api.get(&art.name_any()).await.map_err(kube_at(Step::Fresh))?;
            seen.requests = fresh.pending_requests();
            seen.generation = fresh.metadata.generation;
            seen.status = fresh.status.unwrap_or_default();
            seen.fresh = true;
        }
        Look::Quota => seen.quota = Some(over_quota(ctx, art, &ns).await?),
    }
    Ok(())
}

/// Carry out a verdict: storage first, then status (a waiting uploader reads the
/// answer from status, so it must already hold), then the event.
async fn execute(
    verdict: Verdict,
    seen: &Seen,
    art: &AetherArtifact,
    ctx: &Context,
    storage: &Blobs,
) -> Result<Action, Error> {
    let Verdict {
        mut status,
        write,
        delete,
        abort_previous,
        issue,
        event,
        then,
    } = verdict;
    for digest in &delete {
        warn!(%digest, "deleting stored bytes that match no digest");
        ctx.verified.forget(&art.namespace().unwrap_or_default(), digest);
        storage.delete(digest).await.map_err(storage_at(Step::Delete))?;
        crate::faults::point("artifact: deleted bytes that match nothing");
    }
    if let Some(missing) = &issue {
        status.upload = Some(instructions(ctx, storage, &upload_name(art), missing, seen.now).await?);
        crate::faults::point("artifact: started uploads, status not written");
    }
    if abort_previous {
        abort_uploads(storage, art, status.upload.as_ref()).await?;
        crate::faults::point("artifact: aborted multipart uploads");
    }
    if write || issue.is_some() {
        let api: Api<AetherArtifact> =
            Api::namespaced(ctx.client.clone(), &art.namespace().unwrap_or_default());
        patch_status(&api, art, &status).await?;
        crate::faults::point("artifact: wrote status");
    }
    if let Some(e) = event {
        events::publish(&ctx.recorder, &art.object_ref(&()), e.type_, e.reason, &e.note).await;
    }
    if write && let Some(c) = aether_crds::condition::find(&status.conditions, aether_crds::condition::READY)
    {
        info!(ready = %c.status, reason = %c.reason, "{}", c.message);
    }
    Ok(then)
}

/// Whether the bytes storage tags `etag` under `digest` were read back and matched
/// before (see [`blobs::Verified`]).
fn read_back_before(ctx: &Context, ns: &str, digest: &Digest, etag: Option<&str>) -> bool {
    etag.is_some_and(|e| ctx.verified.matches(ns, digest, e))
}

/// Read a stored blob back and check it against its digest, within the hashing
/// budget ([`HASHING_PERMITS`]). Not if bytes with `seen_etag` (the ETag this
/// reconcile's look at storage saw, under the blob locks) were read and matched
/// before (see [`blobs::Verified`]): asked before waiting for a turn, and again once
/// it comes, since the artifacts that share a blob all wait for the one reading it.
async fn hash(
    ctx: &Context,
    storage: &Blobs,
    ns: &str,
    digest: &Digest,
    size: u64,
    seen_etag: Option<&str>,
    turn: &Turn,
) -> Result<(), StorageError> {
    let read_before = || read_back_before(ctx, ns, digest, seen_etag);
    if read_before() {
        return Ok(());
    }
    // One blob per namespace at a time: a namespace that asks for a lot waits behind
    // itself, not in front of everyone, and not holding a turn everyone shares.
    // (Never closed: at most one hash per running reconcile is left at shutdown.)
    turn.step_aside();
    let _hashing = ctx.hashing.take(storage.prefix()).await;
    if read_before() {
        return Ok(());
    }
    let etag = storage.verify(digest, size).await?;
    if let Some(etag) = etag {
        ctx.verified.record(ns, digest, etag);
    }
    Ok(())
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
    let all = blobs::list_namespace(&ctx.client, ns)
        .await
        .map_err(kube_at(Step::Quota))?;
    let (used, adds) = blobs::usage(art, &all);
    Ok((used + adds > cap).then(|| {
        format!(
            "namespace {ns} may store {cap} bytes (AetherPolicy {policy}); its other artifacts take {used}, this one would add {adds}: delete unused artifacts or ask an admin for more"
        )
    }))
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
            let upload_id = storage
                .start_multipart(upload, &b.digest)
                .await
                .map_err(storage_at(Step::Presign))?;
            // Parts grow rather than multiply, so status stays far below etcd's limit.
            let part_size = ctx.upload.part_size.max(b.size.div_ceil(MAX_PARTS_PER_BLOB));
            let plans = plan_parts(b.size, part_size);
            let mut parts = Vec::with_capacity(plans.len());
            for p in &plans {
                parts.push(PartUpload {
                    number: p.number,
                    url: storage
                        .presign_part(upload, &b.digest, &upload_id, p, ttl)
                        .await
                        .map_err(storage_at(Step::Presign))?,
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
            let put = storage
                .presign_put(&b.digest, b.size, ttl)
                .await
                .map_err(storage_at(Step::Presign))?;
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
    .await
    .map_err(kube_at(Step::Status))?;
    Ok(())
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
    if let Error::UploadUrlsLive(left) = err {
        return Action::requeue(*left);
    }
    warn!(artifact = %art.name_any(), reason = err.metric_label(), error = %err, "reconcile failed; retrying");
    ctx.metrics.failed(CONTROLLER, err.metric_label());
    let backoff = ctx.backoff.failed(&backoff_key(&art));
    match err {
        Error::Storage {
            source: StorageError::Unauthorized { .. } | StorageError::NotConfigured(_),
            ..
        } => Action::requeue(backoff.max(Duration::from_secs(60))),
        // Storage is down: every Ready artifact's recheck would fail alike.
        Error::Storage {
            source: StorageError::Unavailable(_),
            ..
        } => Action::requeue(backoff.max(Duration::from_secs(30))),
        _ => Action::requeue(backoff),
    }
}

fn backoff_key(art: &AetherArtifact) -> String {
    format!("{}/{}", art.namespace().unwrap_or_default(), art.name_any())
}

#[cfg(test)]
mod tests {
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
}

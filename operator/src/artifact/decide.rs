//! The artifact controller's decision, pure.
//!
//! From what was seen of one artifact ([`Seen`]), [`decide`] says either what to find
//! out next ([`Look`]) or the verdict ([`Verdict`]: the new status, what to delete,
//! abort and presign in storage, the event, when to look again). The reconcile
//! (`super`) looks, writes the answer into `Seen` and asks again; it decides nothing
//! itself. Looks are asked for only when the verdict depends on them, so a Ready
//! artifact costs one HEAD per blob and a push costs no hashing before its upload.
//! Every branch is tested from fixtures in `operator/tests/artifact.rs`.
//!
//! Requests (`aether.dev/reissue-upload`, `aether.dev/upload-complete`) are answered
//! by echoing their values in status, never by removing the annotations: a GitOps tool
//! that applied them does not see its object change under it.

use std::collections::BTreeMap;
use std::time::Duration;

use aether_artifact::Digest;
use aether_crds::condition::{self, READY, STALLED, UPLOADED, VERIFIED, artifact as reason};
use aether_crds::{AetherArtifact, AetherArtifactStatus, BlobRef, PendingRequests, UploadInstructions};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

use crate::{conditions, events};

/// How often a Ready artifact's blobs are looked at (HEAD) again: a blob lost from
/// storage makes the artifact ask for an upload instead of failing pods.
pub const RECHECK: Duration = Duration::from_secs(300);

/// An artifact is hashed again on request at most this often.
pub const REHASH_INTERVAL: Duration = Duration::from_secs(10);

/// A refusal that an admin may lift (enabling the namespace, raising a cap) is
/// looked at again after this.
pub const RETRY_REFUSED: Duration = Duration::from_secs(60);

/// What was seen of one artifact. The first fields are known from the object; the
/// others start empty and are filled in as [`decide`] asks for them.
#[derive(Debug, Clone)]
pub struct Seen {
    pub generation: Option<i64>,
    /// Status as the watch delivered it.
    pub status: AetherArtifactStatus,
    pub requests: PendingRequests,
    /// The blobs the spec names (layers and SBOM, each once), or why the spec cannot
    /// be right.
    pub spec: Result<Vec<BlobRef>, String>,
    pub now: Timestamp,
    /// [`Look::Enabled`]: `Err(message)` when no admin enabled the namespace.
    pub enabled: Option<Result<(), String>>,
    /// [`Look::EnabledAgain`] was answered.
    pub asked_again: bool,
    /// [`Look::Complete`]: `Err(message)` names bytes that did not match their digest.
    pub completed: Option<Result<(), String>>,
    /// [`Look::Stored`]: the size storage holds under each blob's digest, in spec order.
    pub stored: Option<Vec<Option<u64>>>,
    /// [`Look::Hash`]: stored bytes read back and hashed.
    pub hashed: BTreeMap<Digest, Hashed>,
    /// [`Look::Stored`]: every blob's bytes, as storage tags them now, were read back
    /// and matched before (see [`crate::blobs::Verified`]) and no reissue request
    /// doubts them: hashing them costs nothing.
    pub read_before: bool,
    /// [`Look::Fresh`]: `status` and `requests` were read from the API server just now,
    /// not from the watch, which may lag a verdict an earlier reconcile wrote.
    pub fresh: bool,
    /// [`Look::Quota`]: `Some(message)` when the missing blobs would take the
    /// namespace past its storage cap.
    pub quota: Option<Option<String>>,
}

impl Seen {
    /// What the object itself says, before any look.
    pub fn of(art: &AetherArtifact, now: Timestamp) -> Self {
        let spec = art
            .spec
            .verified_manifest()
            .map_err(|e| e.to_string())
            .and_then(|_| art.spec.blobs().map_err(|e| e.to_string()));
        Seen {
            generation: art.metadata.generation,
            status: art.status.clone().unwrap_or_default(),
            requests: art.pending_requests(),
            spec,
            now,
            enabled: None,
            asked_again: false,
            completed: None,
            stored: None,
            hashed: BTreeMap::new(),
            read_before: false,
            fresh: false,
            quota: None,
        }
    }
}

/// A stored blob read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hashed {
    Matches,
    /// The bytes do not match the digest they are stored under.
    Mismatch(String),
    /// Gone from storage since it was looked at.
    Gone,
}

/// What to find out (or, for [`Look::Complete`], do) before a verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Look {
    /// May the namespace use storage?
    Enabled,
    /// The same, a moment later ([`crate::enabled::LAG`]).
    EnabledAgain,
    /// Complete these multipart uploads and move their bytes into place once they
    /// match (the uploader said it was done).
    Complete(Vec<Completion>),
    /// HEAD every blob.
    Stored,
    /// Read these blobs back and hash them; `size` is what storage holds.
    Hash(Vec<BlobRef>),
    /// Read the artifact's status and requests from the API server.
    Fresh,
    /// Measure the namespace's storage against its cap.
    Quota,
}

impl Look {
    /// The fault point after it (see [`crate::faults`]).
    pub fn fault_point(&self) -> &'static str {
        match self {
            Look::Enabled | Look::EnabledAgain => "artifact: looked at enablement",
            Look::Complete(_) => "artifact: completed uploads, status not written",
            Look::Stored => "artifact: looked at storage",
            Look::Hash(_) => "artifact: hashed blobs",
            Look::Fresh => "artifact: read fresh status",
            Look::Quota => "artifact: measured quota",
        }
    }
}

/// A multipart upload the uploader says is done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    pub blob: BlobRef,
    pub upload_id: String,
}

/// The outcome of a reconcile.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: AetherArtifactStatus,
    /// Status differs from what it was built on: write it.
    pub write: bool,
    /// Delete these stored bytes: they match no digest.
    pub delete: Vec<Digest>,
    /// Abort every multipart upload of the artifact but those `issue` starts: storage
    /// would keep their parts, unlisted, forever.
    pub abort_previous: bool,
    /// Presign new upload instructions for these blobs into `status.upload`.
    pub issue: Option<Vec<BlobRef>>,
    /// Published when `Ready` changes.
    pub event: Option<Event>,
    pub then: Action,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub type_: EventType,
    pub reason: &'static str,
    pub note: String,
}

/// Either look at something and decide again, or act on the verdict.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    Look(Look),
    Verdict(Box<Verdict>),
}

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

/// The next step for the artifact `seen` describes, with upload URLs living `url_ttl`.
pub fn decide(seen: &Seen, url_ttl: Duration) -> Next {
    let old = &seen.status;
    let generation = seen.generation;
    let same_generation = old.observed_generation == generation;
    let reissue = seen.requests.reissue.is_some();
    let complete = seen.requests.complete.is_some();
    let ready_reason = condition::find(&old.conditions, READY)
        .filter(|c| c.status == "False" && same_generation)
        .map(|c| c.reason.as_str());
    let base = Base::answering(old, seen);

    // Validate: a spec that does not reproduce its digest, or names bad blobs, waits
    // for the user (it is immutable, so in practice: for a new artifact).
    let blobs = match &seen.spec {
        Ok(blobs) => blobs,
        Err(message) => return base.refuse(reason::INVALID_SPEC, message, None),
    };
    // In a namespace no admin enabled, storage is not touched.
    match &seen.enabled {
        None => return Next::Look(Look::Enabled),
        // Asked again after a refusal: most likely a push that an admin's enablement
        // made possible, and the API server's authorizer learns of a new RoleBinding a
        // moment after it is created.
        Some(Err(_))
            if ready_reason == Some(reason::NAMESPACE_NOT_ENABLED)
                && (reissue || complete)
                && !seen.asked_again =>
        {
            return Next::Look(Look::EnabledAgain);
        }
        Some(Err(message)) => {
            return base.refuse(reason::NAMESPACE_NOT_ENABLED, message, Some(RETRY_REFUSED));
        }
        Some(Ok(())) => {}
    }
    // A request is answered from what the API server holds: on the watch's view, one
    // this operator answered a moment ago would still look pending, and answering it
    // again would replace URLs the uploader is using.
    if (reissue || complete) && !seen.fresh {
        return Next::Look(Look::Fresh);
    }
    // A spec judged invalid stays so: not judged again, so asking costs nothing.
    if ready_reason == Some(reason::INVALID_SPEC) {
        return base.settle(Action::await_change());
    }
    // A verdict on bad bytes stands until the uploader asks for new URLs: otherwise
    // the next loop would hand out fresh ones and hide it.
    if ready_reason == Some(reason::DIGEST_MISMATCH) && !reissue {
        return base.settle(Action::await_change());
    }

    // The uploader says it is done: finish its multipart uploads (wrong bytes never
    // reach the blob key).
    if complete && !reissue {
        let multipart = completions(old.upload.as_ref(), blobs);
        if !multipart.is_empty() {
            match &seen.completed {
                None => return Next::Look(Look::Complete(multipart)),
                Some(Err(message)) => return base.reject(message, Vec::new()),
                Some(Ok(())) => {}
            }
        }
    }

    let Some(stored) = &seen.stored else {
        return Next::Look(Look::Stored);
    };
    let intact = blobs.iter().zip(stored).all(|(b, s)| *s == Some(b.size));
    let was_ready = condition::is_true(&old.conditions, READY) && same_generation;
    if was_ready && !reissue && intact {
        return base.settle(Action::requeue(RECHECK));
    }

    // A stored size that disagrees with the spec: the stored bytes decide. If they
    // match the digest the spec is wrong and nothing is touched; only bytes that match
    // nothing are removed.
    let wrong_size: Vec<BlobRef> = blobs
        .iter()
        .zip(stored)
        .filter_map(|(b, s)| {
            s.filter(|size| *size != b.size).map(|size| BlobRef {
                digest: b.digest,
                size,
            })
        })
        .collect();
    let to_hash = unhashed(&wrong_size, &seen.hashed);
    if !to_hash.is_empty() {
        return Next::Look(Look::Hash(to_hash));
    }
    let mut missing = Vec::new();
    let mut delete = Vec::new();
    for (b, s) in blobs.iter().zip(stored) {
        match (s, seen.hashed.get(&b.digest)) {
            (Some(size), _) if *size == b.size => {}
            (None, _) => missing.push(*b),
            (Some(size), Some(Hashed::Matches)) => {
                let message = format!(
                    "blob {} is {size} bytes, not {} as the spec says",
                    b.digest, b.size
                );
                return base
                    .with_delete(delete)
                    .refuse(reason::INVALID_SPEC, &message, None);
            }
            (Some(_), Some(Hashed::Mismatch(_))) => {
                delete.push(b.digest);
                missing.push(*b);
            }
            (Some(_), _) => missing.push(*b),
        }
    }

    if missing.is_empty() {
        // If another reconcile verified this artifact since the watch last said, do
        // not hash it again. Unless asked to: a reissue request hashes again, at most
        // once per REHASH_INTERVAL (requests are cheap to make, hashing is not).
        // Bytes read back before cost no hashing: then the read is not worth its
        // request. At worst a verdict the watch lags is written again (its Event
        // published twice, a handled request echoed as the lagging status has it,
        // which is answered again).
        if !seen.fresh && !seen.read_before {
            return Next::Look(Look::Fresh);
        }
        let verified_recently = old.verified_at.as_ref().is_some_and(|t| {
            seen.now.duration_since(t.0) < SignedDuration::try_from(REHASH_INTERVAL).unwrap_or_default()
        });
        let ready = condition::is_true(&old.conditions, READY) && same_generation;
        if ready && (!reissue || verified_recently) {
            return base.settle(Action::requeue(RECHECK));
        }
        if let Some((b, message)) = blobs.iter().find_map(|b| match seen.hashed.get(&b.digest) {
            Some(Hashed::Mismatch(m)) => Some((b, m)),
            _ => None,
        }) {
            return base.reject(message, vec![b.digest]);
        }
        let to_hash = unhashed(blobs, &seen.hashed);
        if !to_hash.is_empty() {
            return Next::Look(Look::Hash(to_hash));
        }
        missing.extend(
            blobs
                .iter()
                .filter(|b| seen.hashed.get(&b.digest) == Some(&Hashed::Gone)),
        );
        if missing.is_empty() {
            return base.verified(blobs.len(), seen.now);
        }
    }

    // URLs are handed out (and others aborted) on what the API server holds: the
    // watch may not show yet the URLs an earlier reconcile gave the uploader.
    if !seen.fresh {
        return Next::Look(Look::Fresh);
    }
    // Whatever is missing would add to the namespace's storage: within its cap?
    // (Deleting other artifacts frees room: look again.)
    let Some(over) = &seen.quota else {
        return Next::Look(Look::Quota);
    };
    let base = base.with_delete(delete);
    if let Some(message) = over {
        return base.refuse(reason::QUOTA_EXCEEDED, message, Some(RETRY_REFUSED));
    }
    let margin = renewal_margin(url_ttl);
    let usable = old.upload.as_ref().filter(|u| still_valid(u, seen.now, margin));
    let issue = usable.is_none() || reissue;
    // Come back shortly before the URLs expire, to hand out fresh ones if still needed.
    let expires = match usable {
        Some(u) if !issue => u.expires_at.0,
        _ => seen
            .now
            .checked_add(SignedDuration::try_from(url_ttl).unwrap_or_default())
            .unwrap_or(seen.now),
    };
    let renew = Duration::try_from(expires.duration_since(seen.now)).unwrap_or_default();
    let then = Action::requeue(renew.saturating_sub(margin).max(Duration::from_secs(1)));
    // The uploader said it was done with these URLs and something is still missing:
    // that stays the verdict while they are usable (the uploader may still fix it).
    if (complete || ready_reason == Some(reason::UPLOAD_INCOMPLETE)) && !issue {
        let list: Vec<String> = missing.iter().map(|b| b.digest.to_string()).collect();
        let message = format!("upload marked complete, but storage lacks {}", list.join(", "));
        return base.awaiting(reason::UPLOAD_INCOMPLETE, &message, None, then);
    }
    let bytes: u64 = missing.iter().map(|b| b.size).sum();
    let message = format!("{} blob(s), {bytes} bytes, to upload", missing.len());
    base.awaiting(reason::AWAITING_UPLOAD, &message, issue.then_some(missing), then)
}

/// The multipart uploads of `upload` that belong to `blobs`.
fn completions(upload: Option<&UploadInstructions>, blobs: &[BlobRef]) -> Vec<Completion> {
    upload
        .iter()
        .flat_map(|u| u.blobs.iter())
        .filter_map(|b| {
            let upload_id = b.upload_id.clone()?;
            let blob = *blobs.iter().find(|x| x.digest.to_string() == b.digest)?;
            Some(Completion { blob, upload_id })
        })
        .collect()
}

fn unhashed(blobs: &[BlobRef], hashed: &BTreeMap<Digest, Hashed>) -> Vec<BlobRef> {
    blobs
        .iter()
        .filter(|b| !hashed.contains_key(&b.digest))
        .copied()
        .collect()
}

/// The status a verdict starts from, with the pending requests answered: whatever
/// the verdict, it is the answer to them.
struct Base<'a> {
    from: &'a AetherArtifactStatus,
    status: AetherArtifactStatus,
    generation: Option<i64>,
    delete: Vec<Digest>,
}

impl<'a> Base<'a> {
    fn answering(from: &'a AetherArtifactStatus, seen: &Seen) -> Self {
        let mut status = from.clone();
        status.observed_generation = seen.generation;
        if let Some(r) = &seen.requests.reissue {
            status.reissue_handled = Some(r.clone());
        }
        if let Some(c) = &seen.requests.complete {
            status.complete_handled = Some(c.clone());
        }
        Base {
            from,
            status,
            generation: seen.generation,
            delete: Vec::new(),
        }
    }

    fn with_delete(mut self, delete: Vec<Digest>) -> Self {
        self.delete = delete;
        self
    }

    fn verdict(
        self,
        abort_previous: bool,
        issue: Option<Vec<BlobRef>>,
        event: Option<Event>,
        then: Action,
    ) -> Next {
        let event = event.filter(|_| events::ready_changed(&self.from.conditions, &self.status.conditions));
        Next::Verdict(Box::new(Verdict {
            write: &self.status != self.from,
            status: self.status,
            delete: self.delete,
            abort_previous,
            issue,
            event,
            then,
        }))
    }

    /// Nothing to do but answer requests.
    fn settle(self, then: Action) -> Next {
        Next::Verdict(Box::new(Verdict {
            write: &self.status != self.from,
            status: self.status,
            delete: self.delete,
            abort_previous: false,
            issue: None,
            event: None,
            then,
        }))
    }

    /// The artifact cannot be uploaded as it is: `Stalled`, its unfinished uploads
    /// aborted, nothing else in storage touched (in a namespace never enabled, nothing
    /// at all: it never had uploads). Looked at again after `retry` when something
    /// else (an admin) may change the verdict.
    fn refuse(mut self, reason: &'static str, message: &str, retry: Option<Duration>) -> Next {
        let g = self.generation;
        let abort = self.status.upload.take().is_some();
        conditions::set(&mut self.status.conditions, READY, false, reason, message, g);
        conditions::set(&mut self.status.conditions, STALLED, true, reason, message, g);
        let event = Event {
            type_: EventType::Warning,
            reason,
            note: message.into(),
        };
        self.verdict(
            abort,
            None,
            Some(event),
            retry.map_or_else(Action::await_change, Action::requeue),
        )
    }

    /// Uploaded bytes did not match their digest: the verdict stands until the
    /// uploader asks for new URLs.
    fn reject(mut self, message: &str, delete: Vec<Digest>) -> Next {
        let g = self.generation;
        self.status.upload = None;
        let types = [UPLOADED, VERIFIED, READY];
        conditions::set_all(
            &mut self.status.conditions,
            &types,
            false,
            reason::DIGEST_MISMATCH,
            message,
            g,
        );
        let event = Event {
            type_: EventType::Warning,
            reason: reason::DIGEST_MISMATCH,
            note: message.into(),
        };
        self.delete = delete;
        self.verdict(true, None, Some(event), Action::await_change())
    }

    /// Blobs are missing: `Uploaded` and `Ready` False for `reason`, new
    /// instructions for `issue` (replacing and aborting the old ones) if given.
    fn awaiting(
        mut self,
        reason: &'static str,
        message: &str,
        issue: Option<Vec<BlobRef>>,
        then: Action,
    ) -> Next {
        let g = self.generation;
        let types = [UPLOADED, READY];
        conditions::set_all(&mut self.status.conditions, &types, false, reason, message, g);
        conditions::set(&mut self.status.conditions, STALLED, false, reason, "", g);
        // No event: every push passes through here, and `aether push` says it.
        let abort = issue.is_some();
        self.verdict(abort, issue, None, then)
    }

    /// Every blob is stored and matches its digest.
    fn verified(mut self, count: usize, now: Timestamp) -> Next {
        let g = self.generation;
        let message = format!("{count} blob(s) stored and verified");
        // Any multipart upload still open is done with (one never completed because the
        // blob came another way, one a crash left out of status).
        self.status.upload = None;
        self.status.verified_at = Some(Time(now));
        let conds = &mut self.status.conditions;
        conditions::set(conds, UPLOADED, true, "Uploaded", "every blob is in storage", g);
        conditions::set_all(conds, &[VERIFIED, READY], true, reason::VERIFIED, &message, g);
        conditions::set(conds, STALLED, false, reason::VERIFIED, "", g);
        let event = Event {
            type_: EventType::Normal,
            reason: reason::VERIFIED,
            note: message,
        };
        self.verdict(true, None, Some(event), Action::requeue(RECHECK))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! The AetherArtifact controller's decision, branch by branch, from fixtures: what it
//! looks at next, and the verdict it reaches once it has seen enough.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use aether_artifact::manifest::{LayerDescriptor, RuntimeDescriptor};
use aether_artifact::{Digest, LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, Manifest};
use aether_crds::condition::{self, READY, STALLED, UPLOADED, VERIFIED, artifact as reason};
use aether_crds::{
    AetherArtifact, AetherArtifactSpec, AetherArtifactStatus, Blob, BlobRef, REISSUE_UPLOAD_ANNOTATION,
    UPLOAD_COMPLETE_ANNOTATION,
};
use aether_operator::artifact::decide::{
    Completion, Hashed, Look, Next, RECHECK, RETRY_REFUSED, Seen, Verdict, decide,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;

/// The operator's default URL lifetime; renewal comes 30 s before expiry.
const TTL: Duration = Duration::from_secs(900);

fn fixture(name: &str) -> AetherArtifactStatus {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn at(t: &str) -> Timestamp {
    t.parse().unwrap()
}

/// Five minutes into the uploading fixture's fifteen.
fn now() -> Timestamp {
    at("2026-11-29T12:05:00Z")
}

fn deps() -> BlobRef {
    BlobRef {
        digest: Digest::of(b"deps"),
        size: 100,
    }
}

fn app_layer() -> BlobRef {
    BlobRef {
        digest: Digest::of(b"app v1"),
        size: 200,
    }
}

fn sbom() -> BlobRef {
    BlobRef {
        digest: Digest::of(b"sbom"),
        size: 50,
    }
}

/// Generation 1 of an artifact with the deps and app layers and an SBOM.
fn artifact(status: Option<AetherArtifactStatus>, annotations: &[(&str, &str)]) -> AetherArtifact {
    let layer = |name: &str, b: BlobRef| LayerDescriptor {
        name: name.into(),
        media_type: LAYER_MEDIA_TYPE.into(),
        digest: b.digest,
        size: b.size,
        entries: 3,
        files_digest: Digest::of(format!("files {name}").as_bytes()),
        cache_key: None,
    };
    let manifest = Manifest {
        schema_version: 1,
        media_type: MANIFEST_MEDIA_TYPE.into(),
        layers: vec![layer("deps", deps()), layer("app", app_layer())],
        runtime: RuntimeDescriptor {
            node_major: 20,
            platform: "linux/amd64".into(),
            libc: "glibc".into(),
        },
        entrypoint: vec!["node".into(), "server.js".into()],
        workdir: None,
        source: None,
    };
    let mut spec = AetherArtifactSpec::from_manifest("web", &manifest).unwrap();
    spec.sbom = Some(Blob {
        digest: sbom().digest.to_string(),
        size: 50,
        media_type: "application/spdx+json".into(),
    });
    let mut art = AetherArtifact::new("web-0123456789ab", spec);
    art.metadata.namespace = Some("team-a".into());
    art.metadata.generation = Some(1);
    art.metadata.annotations = Some(
        annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    art.status = status;
    art
}

/// Seen once the namespace is known to be enabled, with the watch as current as the
/// API server (`fresh`).
fn seen(art: &AetherArtifact) -> Seen {
    let mut seen = Seen::of(art, now());
    seen.enabled = Some(Ok(()));
    seen.fresh = true;
    seen
}

fn look(next: Next) -> Look {
    match next {
        Next::Look(look) => look,
        Next::Verdict(v) => panic!("expected a look, got the verdict {v:#?}"),
    }
}

fn verdict(next: Next) -> Verdict {
    match next {
        Next::Verdict(v) => *v,
        Next::Look(l) => panic!("expected a verdict, got a look at {l:?}"),
    }
}

/// `(status, reason)` of a condition.
fn cond(status: &AetherArtifactStatus, type_: &str) -> (String, String) {
    let c = condition::find(&status.conditions, type_).unwrap();
    (c.status.clone(), c.reason.clone())
}

fn is(status: &str, reason: &str) -> (String, String) {
    (status.into(), reason.into())
}

fn all_stored() -> Option<Vec<Option<u64>>> {
    Some(vec![Some(100), Some(200), Some(50)])
}

#[test]
fn the_spec_lists_layers_then_the_sbom() {
    let s = seen(&artifact(None, &[]));
    assert_eq!(s.spec, Ok(vec![deps(), app_layer(), sbom()]));
}

#[test]
fn a_new_artifact_asks_for_every_missing_blob() {
    let art = artifact(None, &[]);
    let mut s = Seen::of(&art, now());
    assert_eq!(look(decide(&s, TTL)), Look::Enabled);
    s.enabled = Some(Ok(()));
    assert_eq!(
        look(decide(&s, TTL)),
        Look::Stored,
        "nothing is hashed before the upload"
    );
    s.stored = Some(vec![None, None, Some(50)]);
    assert_eq!(
        look(decide(&s, TTL)),
        Look::Fresh,
        "URLs are handed out on what the API server holds, not the watch"
    );
    s.fresh = true;
    assert_eq!(look(decide(&s, TTL)), Look::Quota);
    s.quota = Some(None);
    let v = verdict(decide(&s, TTL));
    assert_eq!(
        v.issue,
        Some(vec![deps(), app_layer()]),
        "the stored SBOM is not asked for"
    );
    assert_eq!(cond(&v.status, READY), is("False", reason::AWAITING_UPLOAD));
    assert_eq!(cond(&v.status, UPLOADED), is("False", reason::AWAITING_UPLOAD));
    assert_eq!(cond(&v.status, STALLED), is("False", reason::AWAITING_UPLOAD));
    assert_eq!(
        condition::find(&v.status.conditions, READY).unwrap().message,
        "2 blob(s), 300 bytes, to upload"
    );
    assert_eq!(v.status.observed_generation, Some(1));
    assert!(v.write && v.abort_previous && v.delete.is_empty());
    assert_eq!(v.event, None, "every push passes here: no event");
    assert_eq!(
        v.then,
        Action::requeue(Duration::from_secs(870)),
        "back 30 s before the new URLs expire"
    );
}

#[test]
fn a_namespace_no_admin_enabled_is_refused_and_looked_at_again() {
    let art = artifact(Some(fixture("artifact-status-uploading.yaml")), &[]);
    let mut s = Seen::of(&art, now());
    s.enabled = Some(Err("a cluster admin enables the namespace".into()));
    let v = verdict(decide(&s, TTL));
    assert_eq!(cond(&v.status, READY), is("False", reason::NAMESPACE_NOT_ENABLED));
    assert_eq!(
        cond(&v.status, STALLED),
        is("True", reason::NAMESPACE_NOT_ENABLED)
    );
    assert_eq!(v.status.upload, None, "the URLs are withdrawn");
    assert!(v.abort_previous, "and their multipart uploads aborted");
    assert_eq!(v.then, Action::requeue(RETRY_REFUSED));
    let event = v.event.unwrap();
    assert_eq!(
        (event.type_, event.reason),
        (EventType::Warning, reason::NAMESPACE_NOT_ENABLED)
    );

    // Asked again after the refusal (a push once an admin enabled the namespace):
    // the authorizer may lag the new RoleBinding, so it looks once more, a moment later.
    let asked = artifact(Some(v.status), &[(REISSUE_UPLOAD_ANNOTATION, "push again")]);
    let mut s = Seen::of(&asked, now());
    s.enabled = Some(Err("not yet".into()));
    assert_eq!(look(decide(&s, TTL)), Look::EnabledAgain);
    let mut refused = s.clone();
    refused.asked_again = true;
    let v = verdict(decide(&refused, TTL));
    assert_eq!(cond(&v.status, READY), is("False", reason::NAMESPACE_NOT_ENABLED));
    assert_eq!(v.status.reissue_handled.as_deref(), Some("push again"));
    s.asked_again = true;
    s.enabled = Some(Ok(()));
    assert_eq!(look(decide(&s, TTL)), Look::Fresh);
    s.fresh = true;
    assert_eq!(look(decide(&s, TTL)), Look::Stored);

    // An artifact that never had URLs: storage is not touched at all.
    let mut s = Seen::of(&artifact(None, &[]), now());
    s.enabled = Some(Err("not enabled".into()));
    let v = verdict(decide(&s, TTL));
    assert!(!v.abort_previous && v.delete.is_empty() && v.issue.is_none());
}

#[test]
fn a_spec_that_does_not_reproduce_its_digest_is_refused_for_good() {
    let mut art = artifact(None, &[]);
    art.spec.entrypoint = vec!["node".into(), "evil.js".into()];
    let s = Seen::of(&art, now());
    let v = verdict(decide(&s, TTL));
    assert_eq!(cond(&v.status, READY), is("False", reason::INVALID_SPEC));
    assert_eq!(cond(&v.status, STALLED), is("True", reason::INVALID_SPEC));
    assert_eq!(
        v.then,
        Action::await_change(),
        "it is immutable: nothing to retry"
    );
    assert!(v.issue.is_none() && v.delete.is_empty() && !v.abort_previous);

    // Judged once: asking again costs nothing, storage is not looked at.
    let judged = artifact(Some(v.status), &[]);
    let mut s = seen(&judged);
    s.spec = Ok(vec![deps(), app_layer(), sbom()]);
    let v = verdict(decide(&s, TTL));
    assert!(!v.write);
    assert_eq!(v.then, Action::await_change());
}

#[test]
fn an_upload_marked_complete_finishes_multipart_uploads_first() {
    let art = artifact(
        Some(fixture("artifact-status-uploading.yaml")),
        &[(UPLOAD_COMPLETE_ANNOTATION, "aether push 1-a")],
    );
    let mut s = Seen::of(&art, now());
    s.enabled = Some(Ok(()));
    assert_eq!(
        look(decide(&s, TTL)),
        Look::Fresh,
        "a request is answered from what the API server holds"
    );
    s.fresh = true;
    assert_eq!(
        look(decide(&s, TTL)),
        Look::Complete(vec![Completion {
            blob: app_layer(),
            upload_id: "upload-7".into()
        }])
    );
    s.completed = Some(Ok(()));
    assert_eq!(look(decide(&s, TTL)), Look::Stored);
    s.stored = all_stored();
    assert_eq!(
        look(decide(&s, TTL)),
        Look::Hash(vec![deps(), app_layer(), sbom()])
    );
    for b in [deps(), app_layer(), sbom()] {
        s.hashed.insert(b.digest, Hashed::Matches);
    }
    s.now = at("2026-11-29T12:05:02Z");
    let v = verdict(decide(&s, TTL));
    assert_eq!(cond(&v.status, READY), is("True", reason::VERIFIED));
    assert_eq!(cond(&v.status, VERIFIED), is("True", reason::VERIFIED));
    assert_eq!(cond(&v.status, UPLOADED), is("True", "Uploaded"));
    assert_eq!(cond(&v.status, STALLED), is("False", reason::VERIFIED));
    assert_eq!(v.status.upload, None);
    assert_eq!(v.status.verified_at, Some(Time(at("2026-11-29T12:05:02Z"))));
    assert_eq!(v.status.complete_handled.as_deref(), Some("aether push 1-a"));
    assert!(v.abort_previous, "nothing multipart is left open");
    assert_eq!(v.then, Action::requeue(RECHECK));
    let event = v.event.unwrap();
    assert_eq!((event.type_, event.reason), (EventType::Normal, reason::VERIFIED));

    // The annotation stays; the echo says it was answered.
    let answered = artifact(Some(v.status), &[(UPLOAD_COMPLETE_ANNOTATION, "aether push 1-a")]);
    assert_eq!(answered.pending_requests(), Default::default());
}

#[test]
fn wrong_bytes_in_a_multipart_upload_are_rejected_before_they_reach_the_blob() {
    let art = artifact(
        Some(fixture("artifact-status-uploading.yaml")),
        &[(UPLOAD_COMPLETE_ANNOTATION, "x")],
    );
    let mut s = seen(&art);
    s.completed = Some(Err("blob sha256:495f… does not match its digest".into()));
    let v = verdict(decide(&s, TTL));
    for type_ in [READY, UPLOADED, VERIFIED] {
        assert_eq!(cond(&v.status, type_), is("False", reason::DIGEST_MISMATCH));
    }
    assert!(v.delete.is_empty(), "the blob key never held them");
    assert!(v.abort_previous);
    assert_eq!(v.status.upload, None);
    assert_eq!(v.then, Action::await_change());
    assert_eq!(v.event.unwrap().type_, EventType::Warning);

    // The verdict stands until the uploader asks for new URLs.
    let rejected = artifact(Some(v.status), &[(UPLOAD_COMPLETE_ANNOTATION, "x")]);
    let v = verdict(decide(&seen(&rejected), TTL));
    assert!(!v.write && v.issue.is_none());
    let asked = artifact(
        rejected.status.clone(),
        &[
            (UPLOAD_COMPLETE_ANNOTATION, "x"),
            (REISSUE_UPLOAD_ANNOTATION, "again"),
        ],
    );
    let mut s = seen(&asked);
    assert_eq!(look(decide(&s, TTL)), Look::Stored);
    s.stored = Some(vec![Some(100), None, Some(50)]);
    s.quota = Some(None);
    let v = verdict(decide(&s, TTL));
    assert_eq!(v.issue, Some(vec![app_layer()]));
    assert_eq!(v.status.reissue_handled.as_deref(), Some("again"));
}

#[test]
fn bytes_that_do_not_match_on_verification_are_deleted() {
    let art = artifact(Some(fixture("artifact-status-uploading.yaml")), &[]);
    let mut s = seen(&art);
    s.stored = all_stored();
    s.hashed.insert(deps().digest, Hashed::Matches);
    s.hashed
        .insert(app_layer().digest, Hashed::Mismatch("does not match".into()));
    s.hashed.insert(sbom().digest, Hashed::Matches);
    let v = verdict(decide(&s, TTL));
    assert_eq!(cond(&v.status, READY), is("False", reason::DIGEST_MISMATCH));
    assert_eq!(v.delete, vec![app_layer().digest]);
    assert_eq!(
        condition::find(&v.status.conditions, READY).unwrap().message,
        "does not match"
    );
}

#[test]
fn a_blob_gone_while_it_was_hashed_is_asked_for_again() {
    let art = artifact(Some(fixture("artifact-status-uploading.yaml")), &[]);
    let mut s = seen(&art);
    s.stored = all_stored();
    s.hashed.insert(deps().digest, Hashed::Matches);
    s.hashed.insert(app_layer().digest, Hashed::Gone);
    s.hashed.insert(sbom().digest, Hashed::Matches);
    assert_eq!(look(decide(&s, TTL)), Look::Quota);
    s.quota = Some(None);
    let v = verdict(decide(&s, TTL));
    assert_eq!(cond(&v.status, READY), is("False", reason::AWAITING_UPLOAD));
    assert_eq!(v.issue, None, "the URLs handed out are still good for 10 minutes");
}

#[test]
fn usable_urls_are_kept_and_renewed_before_they_expire() {
    let art = artifact(Some(fixture("artifact-status-uploading.yaml")), &[]);
    let mut s = seen(&art);
    s.stored = Some(vec![None, None, Some(50)]);
    s.quota = Some(None);
    let v = verdict(decide(&s, TTL));
    assert_eq!(v.issue, None);
    assert!(!v.abort_previous);
    assert!(!v.write, "nothing changed: no write");
    assert_eq!(
        v.then,
        Action::requeue(Duration::from_secs(570)),
        "30 s before 12:15"
    );

    s.now = at("2026-11-29T12:14:40Z");
    let v = verdict(decide(&s, TTL));
    assert_eq!(v.issue, Some(vec![deps(), app_layer()]), "renewed");
    assert!(v.abort_previous, "the old multipart upload ends");
    assert_eq!(v.then, Action::requeue(Duration::from_secs(870)));
}

#[test]
fn a_reissue_request_gets_new_urls_even_while_the_old_ones_are_good() {
    let art = artifact(
        Some(fixture("artifact-status-uploading.yaml")),
        &[(REISSUE_UPLOAD_ANNOTATION, "aether push 2-b")],
    );
    let mut s = seen(&art);
    assert_eq!(look(decide(&s, TTL)), Look::Stored, "no completion on a reissue");
    s.stored = Some(vec![None, None, Some(50)]);
    s.quota = Some(None);
    let v = verdict(decide(&s, TTL));
    assert_eq!(v.issue, Some(vec![deps(), app_layer()]));
    assert!(v.abort_previous && v.write);
    assert_eq!(v.status.reissue_handled.as_deref(), Some("aether push 2-b"));
}

#[test]
fn an_upload_marked_complete_with_a_blob_missing_says_so_while_the_urls_last() {
    let art = artifact(
        Some(fixture("artifact-status-uploading.yaml")),
        &[(UPLOAD_COMPLETE_ANNOTATION, "c1")],
    );
    let mut s = seen(&art);
    s.completed = Some(Ok(()));
    s.stored = Some(vec![Some(100), None, Some(50)]);
    s.quota = Some(None);
    let v = verdict(decide(&s, TTL));
    assert_eq!(cond(&v.status, READY), is("False", reason::UPLOAD_INCOMPLETE));
    assert_eq!(
        condition::find(&v.status.conditions, READY).unwrap().message,
        format!("upload marked complete, but storage lacks {}", app_layer().digest)
    );
    assert_eq!(v.issue, None, "the uploader may still use the same URLs");
    assert_eq!(v.status.complete_handled.as_deref(), Some("c1"));

    // Answered, and the verdict stays (it is not overwritten by AwaitingUpload)...
    let answered = artifact(Some(v.status), &[(UPLOAD_COMPLETE_ANNOTATION, "c1")]);
    let mut s = seen(&answered);
    assert_eq!(
        look(decide(&s, TTL)),
        Look::Stored,
        "an answered request completes nothing"
    );
    s.stored = Some(vec![Some(100), None, Some(50)]);
    s.quota = Some(None);
    let v = verdict(decide(&s, TTL));
    assert_eq!(cond(&v.status, READY), is("False", reason::UPLOAD_INCOMPLETE));
    assert!(!v.write);
    // ...until the URLs are renewed.
    s.now = at("2026-11-29T12:14:40Z");
    let v = verdict(decide(&s, TTL));
    assert_eq!(cond(&v.status, READY), is("False", reason::AWAITING_UPLOAD));
    assert!(v.issue.is_some());
}

#[test]
fn over_the_namespace_cap_nothing_is_handed_out() {
    let art = artifact(None, &[]);
    let mut s = seen(&art);
    s.stored = Some(vec![None, None, None]);
    s.quota = Some(Some("namespace team-a may store 100 bytes".into()));
    let v = verdict(decide(&s, TTL));
    assert_eq!(cond(&v.status, READY), is("False", reason::QUOTA_EXCEEDED));
    assert_eq!(cond(&v.status, STALLED), is("True", reason::QUOTA_EXCEEDED));
    assert_eq!(v.issue, None);
    assert_eq!(
        v.then,
        Action::requeue(RETRY_REFUSED),
        "deleting artifacts frees room"
    );
}

#[test]
fn a_ready_artifact_costs_one_head_per_blob() {
    let art = artifact(Some(fixture("artifact-status-ready.yaml")), &[]);
    let mut s = seen(&art);
    assert_eq!(look(decide(&s, TTL)), Look::Stored);
    s.stored = all_stored();
    let v = verdict(decide(&s, TTL));
    assert!(!v.write && !v.abort_previous && v.issue.is_none() && v.event.is_none());
    assert_eq!(v.then, Action::requeue(RECHECK));
}

#[test]
fn a_blob_lost_from_storage_is_asked_for_again() {
    let art = artifact(Some(fixture("artifact-status-ready.yaml")), &[]);
    let mut s = seen(&art);
    s.stored = Some(vec![Some(100), None, Some(50)]);
    assert_eq!(look(decide(&s, TTL)), Look::Quota);
    s.quota = Some(None);
    let v = verdict(decide(&s, TTL));
    assert_eq!(cond(&v.status, READY), is("False", reason::AWAITING_UPLOAD));
    assert_eq!(v.issue, Some(vec![app_layer()]));
}

#[test]
fn a_reissue_on_a_ready_artifact_hashes_again_unless_it_just_did() {
    let art = artifact(
        Some(fixture("artifact-status-ready.yaml")),
        &[(REISSUE_UPLOAD_ANNOTATION, "push 3")],
    );
    let mut s = seen(&art);
    s.stored = all_stored();
    let mut fresh = fixture("artifact-status-ready.yaml");
    fresh.verified_at = Some(Time(at("2026-11-29T12:04:55Z")));
    s.status = fresh.clone();
    let v = verdict(decide(&s, TTL));
    assert_eq!(v.status.reissue_handled.as_deref(), Some("push 3"));
    assert_eq!(v.status.verified_at, fresh.verified_at, "built on the fresh read");
    assert!(v.write, "the answer is written");
    assert_eq!(v.then, Action::requeue(RECHECK));

    s.status = fixture("artifact-status-ready.yaml"); // verified 4 minutes ago
    assert_eq!(
        look(decide(&s, TTL)),
        Look::Hash(vec![deps(), app_layer(), sbom()])
    );
}

#[test]
fn a_verdict_another_reconcile_wrote_is_not_hashed_again() {
    // The watch still shows the upload; the API server already has the verdict.
    let art = artifact(Some(fixture("artifact-status-uploading.yaml")), &[]);
    let mut s = Seen::of(&art, now());
    s.enabled = Some(Ok(()));
    s.stored = all_stored();
    assert_eq!(look(decide(&s, TTL)), Look::Fresh);
    s.status = fixture("artifact-status-ready.yaml");
    s.fresh = true;
    let v = verdict(decide(&s, TTL));
    assert!(!v.write, "the fresh status is already right");
    assert_eq!(cond(&v.status, READY), is("True", reason::VERIFIED));
    assert!(v.event.is_none());
}

#[test]
fn bytes_read_back_before_are_verified_without_a_fresh_read() {
    // Another artifact's look read these very bytes back: hashing them costs nothing,
    // so the watch's word is not checked against the API server first.
    let art = artifact(Some(fixture("artifact-status-uploading.yaml")), &[]);
    let mut s = Seen::of(&art, now());
    s.enabled = Some(Ok(()));
    s.stored = all_stored();
    s.read_before = true;
    assert_eq!(
        look(decide(&s, TTL)),
        Look::Hash(vec![deps(), app_layer(), sbom()])
    );
    for b in [deps(), app_layer(), sbom()] {
        s.hashed.insert(b.digest, Hashed::Matches);
    }
    let v = verdict(decide(&s, TTL));
    assert!(v.write);
    assert_eq!(cond(&v.status, READY), is("True", reason::VERIFIED));

    // Bytes not read before are: a verdict written meanwhile saves hashing them.
    s.read_before = false;
    s.hashed.clear();
    assert_eq!(look(decide(&s, TTL)), Look::Fresh);
}

#[test]
fn a_stored_size_that_disagrees_with_the_spec_is_settled_by_the_bytes() {
    let art = artifact(None, &[]);
    let mut s = seen(&art);
    s.stored = Some(vec![Some(100), Some(999), None]);
    let stored_app = BlobRef {
        digest: app_layer().digest,
        size: 999,
    };
    assert_eq!(look(decide(&s, TTL)), Look::Hash(vec![stored_app]));

    // The stored bytes are right: the spec lies about the size.
    let mut right = s.clone();
    right.hashed.insert(app_layer().digest, Hashed::Matches);
    let v = verdict(decide(&right, TTL));
    assert_eq!(cond(&v.status, READY), is("False", reason::INVALID_SPEC));
    assert!(
        v.delete.is_empty(),
        "bytes that match their digest are never deleted"
    );
    assert_eq!(
        condition::find(&v.status.conditions, READY).unwrap().message,
        format!(
            "blob {} is 999 bytes, not 200 as the spec says",
            app_layer().digest
        )
    );

    // The stored bytes match nothing: removed, and asked for.
    let mut wrong = s.clone();
    wrong
        .hashed
        .insert(app_layer().digest, Hashed::Mismatch("junk".into()));
    wrong.quota = Some(None);
    let v = verdict(decide(&wrong, TTL));
    assert_eq!(v.delete, vec![app_layer().digest]);
    assert_eq!(v.issue, Some(vec![app_layer(), sbom()]));

    // Gone meanwhile: simply missing.
    let mut gone = s;
    gone.hashed.insert(app_layer().digest, Hashed::Gone);
    gone.quota = Some(None);
    let v = verdict(decide(&gone, TTL));
    assert!(v.delete.is_empty());
    assert_eq!(v.issue, Some(vec![app_layer(), sbom()]));
}

#[test]
fn requests_are_pending_until_status_echoes_them() {
    let mut art = artifact(
        Some(fixture("artifact-status-ready.yaml")),
        &[
            (REISSUE_UPLOAD_ANNOTATION, "r1"),
            (UPLOAD_COMPLETE_ANNOTATION, "c1"),
        ],
    );
    let pending = art.pending_requests();
    assert_eq!(pending.reissue.as_deref(), Some("r1"));
    assert_eq!(pending.complete.as_deref(), Some("c1"));
    let status = art.status.as_mut().unwrap();
    status.reissue_handled = Some("r1".into());
    status.complete_handled = Some("c0".into());
    let pending = art.pending_requests();
    assert_eq!(pending.reissue, None);
    assert_eq!(
        pending.complete.as_deref(),
        Some("c1"),
        "a new value is a new request"
    );

    // A value longer than status holds is compared by what status can hold.
    let long = "x".repeat(300);
    let mut art = artifact(None, &[(REISSUE_UPLOAD_ANNOTATION, &long)]);
    let echoed = art.pending_requests().reissue.unwrap();
    assert_eq!(echoed.len(), 128);
    art.status = Some(AetherArtifactStatus {
        reissue_handled: Some(echoed),
        ..Default::default()
    });
    assert_eq!(art.pending_requests().reissue, None);
}

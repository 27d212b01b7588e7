//! `aether push`: pack → AetherArtifact → upload what storage lacks (through the
//! presigned URLs the operator writes into status) → wait until it is verified →
//! point the AetherApp at it and wait until it serves ([`super::deploy`]).
//! The developer needs a kubeconfig allowed to create AetherArtifacts and
//! AetherApps (the aether-editor role); storage credentials stay with the operator.

use std::path::Path;
use std::time::{Duration, Instant};

use aether_crds::condition::{self, READY, artifact as reason};
use aether_crds::{
    AetherArtifact, AetherArtifactSpec, Blob, LayerName, REISSUE_UPLOAD_ANNOTATION, Signature,
    UPLOAD_COMPLETE_ANNOTATION,
};
use aether_storage::{Storage, StorageConfig};
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde::Serialize;

use crate::args::{GlobalArgs, OutputFormat, PushArgs, StorageMode};
use crate::errors::CliError;
use crate::pack::{PackOutcome, RemoteDeps, SbomOut, human_bytes};
use crate::printer::Printer;
use crate::upload::{PutError, http_client, upload_blob};

/// What `aether push -o json` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushOutcome {
    pub app: String,
    pub namespace: String,
    pub artifact: String,
    pub digest: String,
    /// Bytes sent to storage by this push (0 when everything was already there).
    pub bytes_uploaded: u64,
    pub blobs_uploaded: usize,
    /// True when an identical, verified artifact already existed.
    pub reused: bool,
    pub install_skipped: bool,
    /// `installed`, `updated`, `local-cache`, or `remote:<artifact>` when a Ready artifact with
    /// the same dependencies supplied the deps layer.
    pub deps_source: String,
    /// Where the app answers (absent with --no-deploy).
    pub url: Option<String>,
    /// The deploy, as the operator measured it (absent with --no-deploy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deploy: Option<super::deploy::Deployed>,
    pub timings_ms: PushTimings,
}

#[derive(Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PushTimings {
    pub pack: u64,
    pub upload: u64,
    pub verify: u64,
    /// From pointing the app at the artifact to the new version serving.
    pub deploy: u64,
    pub total: u64,
}

pub async fn run(args: &PushArgs, global: &GlobalArgs, printer: &Printer) -> Result<PushOutcome, CliError> {
    let started = Instant::now();
    let (client, namespace) = crate::cluster::connect(global).await?;
    let global = GlobalArgs {
        namespace: Some(namespace.clone()),
        ..global.clone()
    };

    let api: Api<AetherArtifact> = Api::namespaced(client.clone(), &namespace);
    let t = Instant::now();
    let mut request = super::pack::request(&args.pack, &global, printer)?;
    let key = request.deps_key.clone();
    if !crate::install::is_installed(&key, &request.cache_dir) {
        request.remote_deps = remote_deps(&api, &request.app, &key)
            .await
            .map_err(|e| kube_error(e, "list", &namespace))?;
    }
    // A preview is an app of its own: its artifact is signed for that name.
    let base = request.app.clone();
    if let Some(preview) = &args.preview {
        request.app = preview_name(&base, preview)?;
        // A preview push never takes over an app that is not that app's preview.
        let apps: Api<aether_crds::AetherApp> = Api::namespaced(client.clone(), &namespace);
        let existing = apps
            .get_opt(&request.app)
            .await
            .map_err(|e| crate::cluster::kube_error(e, "get", "aetherapps", &namespace))?;
        if existing.is_some_and(|a| a.spec.preview.is_none_or(|p| p.of != base)) {
            return Err(CliError::NotAPreview {
                app: request.app.clone(),
                of: base,
            });
        }
    }
    let packed = tokio::task::block_in_place(|| super::pack::run_request(&request, printer))?;
    let mut timings = PushTimings {
        pack: ms(t),
        ..Default::default()
    };

    let timeout = args.timeout;
    let Published {
        name,
        artifact: art,
        reused,
        bytes_uploaded,
        blobs_uploaded,
        upload_ms,
        verify_ms,
    } = publish(&api, &namespace, &packed, args.storage, timeout, printer).await?;
    timings.upload = upload_ms;
    timings.verify = verify_ms;

    let deploy = if args.no_deploy {
        None
    } else {
        let t = Instant::now();
        let verified_at = art
            .status
            .as_ref()
            .and_then(|s| s.verified_at.as_ref())
            .map(|t| t.0);
        let follow = super::deploy::Follow {
            timeout,
            // Blobs of an artifact that was Ready went missing or bad, and this push
            // uploaded them again: the pods' failures before that are stale.
            repaired_at: verified_at.filter(|_| reused && bytes_uploaded > 0),
            artifact_verified_at: verified_at,
        };
        let mut hosts: Vec<aether_crds::Host> = args
            .hosts
            .iter()
            .map(|name| aether_crds::Host {
                name: name.clone(),
                tls_secret_name: args.tls_secret.clone(),
            })
            .collect();
        let preview = match &args.preview {
            Some(preview) => {
                if hosts.is_empty() {
                    hosts = preview_hosts(&client, &namespace, &base, preview).await?;
                }
                let expires_at = k8s_openapi::jiff::Timestamp::now()
                    .checked_add(k8s_openapi::jiff::SignedDuration::try_from(args.ttl).unwrap_or_default())
                    .unwrap_or(k8s_openapi::jiff::Timestamp::MAX);
                Some(aether_crds::Preview {
                    of: base.clone(),
                    expires_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(expires_at),
                })
            }
            None => None,
        };
        let target = super::deploy::Target {
            hosts: &hosts,
            preview: preview.as_ref(),
        };
        let deployed = super::deploy::deploy(
            client,
            &namespace,
            (&packed.app, &name),
            target,
            (!args.no_wait).then_some(follow),
            printer,
        )
        .await?;
        timings.deploy = ms(t);
        Some(deployed)
    };
    timings.total = ms(started);

    let outcome = PushOutcome {
        app: packed.app.clone(),
        namespace,
        artifact: name,
        digest: packed.digest.to_string(),
        bytes_uploaded,
        blobs_uploaded,
        reused,
        install_skipped: packed.install_skipped,
        deps_source: packed.deps_source.clone(),
        url: deploy.as_ref().and_then(|d| d.url.clone()),
        deploy,
        timings_ms: timings,
    };
    match printer.format {
        OutputFormat::Json | OutputFormat::Yaml => printer.value(&outcome),
        OutputFormat::Human => {
            let t = &outcome.timings_ms;
            printer.info(format!(
                "Artifact {} ready in {}: {} uploaded (pack {:.1}s, upload {:.1}s, verify {:.1}s)",
                outcome.artifact,
                outcome.namespace,
                human_bytes(outcome.bytes_uploaded),
                t.pack as f64 / 1000.0,
                t.upload as f64 / 1000.0,
                t.verify as f64 / 1000.0,
            ));
            match &outcome.deploy {
                Some(d) if d.serving => {
                    printer.info(format!(
                        "{} serves {} at {} (deploy {:.1}s, total {:.1}s)",
                        outcome.app,
                        outcome.artifact,
                        d.url.as_deref().unwrap_or("(no URL yet)"),
                        t.deploy as f64 / 1000.0,
                        t.total as f64 / 1000.0
                    ));
                    for host in &d.hosts {
                        printer.info(format!("  {}  {}", host.url, super::status::host_state(host)));
                    }
                    printer.data(d.url.as_deref().unwrap_or(&outcome.artifact));
                }
                _ => printer.data(&outcome.artifact),
            }
        }
    }
    Ok(outcome)
}

/// An artifact in the cluster, uploaded and verified.
#[derive(Debug)]
pub struct Published {
    pub name: String,
    pub artifact: AetherArtifact,
    /// An identical, verified artifact already existed.
    pub reused: bool,
    pub bytes_uploaded: u64,
    pub blobs_uploaded: usize,
    pub upload_ms: u64,
    pub verify_ms: u64,
}

/// Create the AetherArtifact for `packed`, upload what storage lacks and wait until
/// the operator verified it (`aether push` and `aether dev` alike).
pub async fn publish(
    api: &Api<AetherArtifact>,
    namespace: &str,
    packed: &PackOutcome,
    storage: StorageMode,
    timeout: Duration,
    printer: &Printer,
) -> Result<Published, CliError> {
    let name = artifact_name(packed);
    let wanted = artifact_for(packed)?;

    let mut existing = api
        .get_opt(&name)
        .await
        .map_err(|e| kube_error(e, "get", namespace))?;
    // Being deleted (retention took an old version this push brings back): made
    // again once it is gone, not uploaded into.
    if let Some(dying) = existing.take_if(|a| a.metadata.deletion_timestamp.is_some()) {
        printer.info(format!(
            "Artifact {name} is being deleted (kubectl get events -n {namespace}); creating it again once it is gone"
        ));
        let uid = dying.metadata.uid.clone().unwrap_or_default();
        let gone = kube::runtime::wait::await_condition(
            api.clone(),
            &name,
            kube::runtime::conditions::is_deleted(&uid),
        );
        match tokio::time::timeout(timeout, gone).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(CliError::Kube {
                    what: format!("watch aetherartifacts in {namespace}"),
                    source: kube::Error::Service(Box::new(e)),
                });
            }
            Err(_) => {
                return Err(CliError::Timeout {
                    what: format!("artifact {name} to be deleted"),
                    seconds: timeout.as_secs(),
                });
            }
        }
    }
    let reused = existing
        .as_ref()
        .is_some_and(|a| a.spec.digest == wanted.spec.digest && ready(a).is_some_and(|r| r));
    if reused {
        // Storage may have lost a blob since: the operator looks again (and hashes),
        // and asks for whatever is missing, so pushing again repairs it.
        printer.info(format!(
            "Artifact {name} is already uploaded and verified; checking it is still intact"
        ));
    }
    let t = Instant::now();
    let blobs_dir = packed.out.join("blobs").join("sha256");
    let target = Target {
        api,
        name: &name,
        namespace,
        existing: existing.is_some(),
        wanted: &wanted,
        blobs_dir: &blobs_dir,
    };
    let (bytes_uploaded, blobs_uploaded) = match storage {
        StorageMode::Presigned => upload_presigned(&target, timeout, printer).await?,
        StorageMode::Direct => upload_direct(&target, printer).await?,
    };
    let upload_ms = ms(t);

    let t = Instant::now();
    let art = crate::cluster::wait_for(api, &name, timeout, "the operator to verify the upload", |a| {
        let c = a.status.as_ref()?.conditions.iter().find(|c| c.type_ == READY)?;
        // A verdict counts once it answers this push's requests, not an earlier one.
        let answered = a.pending_requests() == Default::default();
        let settled = answered && (c.status == "True" || !reason::in_progress(&c.reason));
        settled.then(|| a.clone())
    })
    .await?;
    if ready(&art) != Some(true) {
        let c = art
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
        return Err(CliError::ArtifactFailed {
            name,
            reason: c.map(|c| c.reason.clone()).unwrap_or_default(),
            message: c.map(|c| c.message.clone()).unwrap_or_default(),
        });
    }
    Ok(Published {
        name,
        artifact: art,
        reused,
        bytes_uploaded,
        blobs_uploaded,
        upload_ms,
        verify_ms: ms(t),
    })
}

/// Where a push's blobs go: the artifact they belong to.
struct Target<'a> {
    api: &'a Api<AetherArtifact>,
    name: &'a str,
    namespace: &'a str,
    /// An artifact of this name exists (an earlier push stopped part-way).
    existing: bool,
    wanted: &'a AetherArtifact,
    blobs_dir: &'a Path,
}

/// The default: create the artifact, upload what the operator asks for through the
/// presigned URLs it writes into status, then mark the upload complete. Returns bytes
/// and blobs sent.
async fn upload_presigned(
    t: &Target<'_>,
    timeout: Duration,
    printer: &Printer,
) -> Result<(u64, usize), CliError> {
    let Target {
        api,
        name,
        namespace,
        existing,
        wanted,
        blobs_dir,
    } = *t;
    let (mut bytes_uploaded, mut blobs_uploaded) = (0, 0);
    if existing {
        // An earlier push failed part-way (or its URLs expired): ask for fresh ones.
        request_reissue(api, name, namespace).await?;
    } else {
        create(api, wanted, namespace).await?;
    }
    let mut art = wait_for_instructions(api, name, timeout).await?;
    // Storage held wrong bytes under one of these digests (an earlier upload went
    // wrong, or the object was damaged): the operator deleted them, so ask for URLs
    // and upload the right ones.
    if rejected(&art) {
        printer.info("  storage held damaged copies of some blobs; uploading them again");
        request_reissue(api, name, namespace).await?;
        art = wait_for_instructions(api, name, timeout).await?;
    }
    // Upload what the operator asks for. URLs that expired meanwhile (storage
    // answers 403) are renewed once through the reissue annotation.
    let http = http_client()?;
    let until = tokio::time::Instant::now() + timeout;
    for round in 0..2 {
        let Some(upload) = art
            .status
            .as_ref()
            .and_then(|s| s.upload.clone())
            .filter(|_| ready(&art) != Some(true))
        else {
            break;
        };
        let mut expired = false;
        for blob in &upload.blobs {
            printer.info(format!(
                "  uploading {} ({})",
                blob.digest,
                human_bytes(blob.size as u64)
            ));
            match upload_blob(&http, blobs_dir, blob, until).await {
                Ok(n) => {
                    bytes_uploaded += n;
                    blobs_uploaded += 1;
                }
                Err(PutError { expired: true, .. }) if round == 0 => {
                    printer.info("  upload URLs expired; asking the operator for new ones");
                    expired = true;
                    break;
                }
                Err(e) => {
                    return Err(CliError::UploadFailed {
                        digest: blob.digest.clone(),
                        detail: e.detail,
                    });
                }
            }
        }
        if expired {
            request_reissue(api, name, namespace).await?;
            art = wait_for_instructions(api, name, timeout).await?;
            continue;
        }
        let patch = serde_json::json!({"metadata": {"annotations": {
            UPLOAD_COMPLETE_ANNOTATION: request_value(),
        }}});
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| kube_error(e, "update", namespace))?;
        break;
    }
    Ok((bytes_uploaded, blobs_uploaded))
}

/// `--storage direct`: the developer holds bucket credentials (AETHER_S3_* and the
/// standard AWS_* variables). Upload what the bucket lacks, same layout, then let the
/// operator verify as usual (it still decides Ready). Returns bytes and blobs sent.
async fn upload_direct(t: &Target<'_>, printer: &Printer) -> Result<(u64, usize), CliError> {
    let config = StorageConfig::from_env().map_err(|e| CliError::DirectStorage(e.to_string()))?;
    let storage = Storage::new(&config).namespace(t.namespace);
    let blobs = t
        .wanted
        .spec
        .blobs()
        .map_err(|e| CliError::io("describing the artifact")(std::io::Error::other(e.to_string())))?;
    let (mut bytes, mut count) = (0, 0);
    for b in blobs {
        let failed = |e: aether_storage::StorageError| CliError::UploadFailed {
            digest: b.digest.to_string(),
            detail: e.to_string(),
        };
        if storage.head(&b.digest).await.map_err(failed)? == Some(b.size) {
            continue;
        }
        printer.info(format!(
            "  uploading {} ({}) directly",
            b.digest,
            human_bytes(b.size)
        ));
        let data =
            std::fs::read(t.blobs_dir.join(b.digest.hex())).map_err(CliError::io("reading a packed blob"))?;
        storage.put(&b.digest, data).await.map_err(failed)?;
        bytes += b.size;
        count += 1;
    }
    if t.existing {
        // The operator may hold an earlier verdict: ask it to look again.
        request_reissue(t.api, t.name, t.namespace).await?;
    } else {
        create(t.api, t.wanted, t.namespace).await?;
    }
    Ok((bytes, count))
}

async fn create(api: &Api<AetherArtifact>, wanted: &AetherArtifact, namespace: &str) -> Result<(), CliError> {
    match api.create(&PostParams::default(), wanted).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()), // created meanwhile
        Err(e) => Err(kube_error(e, "create", namespace)),
    }
}

fn ms(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// The app a preview `name` of `app` is: `<app>-<name>`, a DNS label.
fn preview_name(app: &str, name: &str) -> Result<String, CliError> {
    let full = format!("{app}-{name}");
    if full.len() > 63 {
        return Err(CliError::BadAppName(format!(
            "{full} (the preview's app name: choose a shorter --preview name, or a shorter --app)"
        )));
    }
    Ok(full)
}

/// A preview's hosts: one per host of the app it previews, `<name>-<host>` (the
/// same domain, so a wildcard certificate or DNS entry of the app's covers it).
async fn preview_hosts(
    client: &kube::Client,
    namespace: &str,
    app: &str,
    name: &str,
) -> Result<Vec<aether_crds::Host>, CliError> {
    let apps: Api<aether_crds::AetherApp> = Api::namespaced(client.clone(), namespace);
    let base = apps
        .get_opt(app)
        .await
        .map_err(|e| crate::cluster::kube_error(e, "get", "aetherapps", namespace))?;
    Ok(base
        .map(|a| a.spec.hosts)
        .unwrap_or_default()
        .into_iter()
        .map(|h| aether_crds::Host {
            name: preview_host(&h.name, name),
            tls_secret_name: None,
        })
        .collect())
}

/// `shop.example.com` previewed as `pr-1`: `pr-1-shop.example.com`.
pub fn preview_host(host: &str, name: &str) -> String {
    format!("{name}-{host}")
}

/// `<app>-<first 12 hex digits of the digest>`: the short digest is the name.
pub fn artifact_name(packed: &PackOutcome) -> String {
    format!("{}-{}", packed.app, &packed.digest.hex()[..12])
}

fn artifact_for(packed: &PackOutcome) -> Result<AetherArtifact, CliError> {
    let manifest_path = packed.out.join("blobs").join("sha256").join(packed.digest.hex());
    let bytes = std::fs::read(&manifest_path).map_err(CliError::io("reading the packed manifest"))?;
    let manifest = aether_artifact::Manifest::from_json(&bytes)
        .map_err(|e| CliError::io("reading the packed manifest")(std::io::Error::other(e)))?;
    let mut spec = AetherArtifactSpec::from_manifest(&packed.app, &manifest)
        .map_err(|e| CliError::io("describing the artifact")(std::io::Error::other(e.to_string())))?;
    spec.sbom = Some(Blob {
        digest: packed.sbom.digest.to_string(),
        size: packed.sbom.size as i64,
        media_type: packed.sbom.media_type.clone(),
    });
    spec.signature = packed.signature.as_ref().map(|s| Signature {
        key_id: s.key_id.clone(),
        value: s.value.clone(),
    });
    let mut art = AetherArtifact::new(&artifact_name(packed), spec);
    art.metadata.labels = Some(
        [
            ("app.kubernetes.io/name".to_string(), packed.app.clone()),
            ("app.kubernetes.io/managed-by".to_string(), "aether".to_string()),
        ]
        .into(),
    );
    // The operator would add it first thing: one write fewer before it answers.
    art.metadata.finalizers = Some(vec![aether_crds::BLOBS_FINALIZER.to_string()]);
    Ok(art)
}

/// The deps layer (and SBOM) of the newest Ready artifact of `app` whose dependencies
/// have the same cache key: a clean machine with an unchanged lockfile then installs
/// and uploads nothing for them.
pub async fn remote_deps(
    api: &Api<AetherArtifact>,
    app: &str,
    key: &str,
) -> Result<Option<RemoteDeps>, kube::Error> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/name={app}"));
    let mut candidates: Vec<AetherArtifact> = api
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|a| a.spec.app == app && ready(a) == Some(true))
        .collect();
    candidates.sort_by_key(|a| std::cmp::Reverse(a.metadata.creation_timestamp.clone()));
    for a in candidates {
        let Some(layer) = a
            .spec
            .layers
            .iter()
            .find(|l| l.name == LayerName::Deps && l.cache_key.as_deref() == Some(key))
        else {
            continue;
        };
        let (Ok(manifest), Some(sbom)) = (a.spec.manifest(), a.spec.sbom.as_ref()) else {
            continue;
        };
        let (Some(descriptor), Ok(sbom_digest)) = (
            manifest
                .layers
                .into_iter()
                .find(|l| l.digest.to_string() == layer.digest),
            sbom.digest.parse(),
        ) else {
            continue;
        };
        return Ok(Some(RemoteDeps {
            artifact: a.name_any(),
            layer: descriptor,
            sbom: SbomOut {
                digest: sbom_digest,
                size: sbom.size.max(0) as u64,
                media_type: sbom.media_type.clone(),
                components: 0,
            },
        }));
    }
    Ok(None)
}

fn ready(a: &AetherArtifact) -> Option<bool> {
    let c = condition::find(&a.status.as_ref()?.conditions, READY)?;
    Some(c.status == "True")
}

fn kube_error(e: kube::Error, verb: &str, namespace: &str) -> CliError {
    crate::cluster::kube_error(e, verb, "aetherartifacts", namespace)
}

/// A request value of its own: the operator answers each value once (and says so in
/// status), so asking again needs a new one.
fn request_value() -> String {
    format!(
        "aether push {}-{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
        fastrand::u32(..)
    )
}

async fn request_reissue(api: &Api<AetherArtifact>, name: &str, namespace: &str) -> Result<(), CliError> {
    let patch =
        serde_json::json!({"metadata": {"annotations": {REISSUE_UPLOAD_ANNOTATION: request_value()}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| kube_error(e, "update", namespace))?;
    Ok(())
}

/// Wait until the operator has answered: upload URLs (after any pending reissue), or Ready.
async fn wait_for_instructions(
    api: &Api<AetherArtifact>,
    name: &str,
    timeout: Duration,
) -> Result<AetherArtifact, CliError> {
    crate::cluster::wait_for(api, name, timeout, "upload instructions from the operator", |a| {
        let status = a.status.as_ref()?;
        let pending = a.pending_requests().reissue.is_some();
        let answered = ready(a) == Some(true) || status.upload.is_some() || rejected(a) || invalid(a);
        (!pending && answered).then(|| a.clone())
    })
    .await
}

/// The operator refuses the artifact (`InvalidSpec`, `NamespaceNotEnabled`,
/// `QuotaExceeded`): no upload can help.
fn invalid(a: &AetherArtifact) -> bool {
    not_ready_because(a).is_some_and(reason::refused)
}

/// The operator found wrong bytes in storage (and deleted them).
fn rejected(a: &AetherArtifact) -> bool {
    not_ready_because(a) == Some(reason::DIGEST_MISMATCH)
}

/// Why the artifact is not Ready, if the operator says it is not.
fn not_ready_because(a: &AetherArtifact) -> Option<&str> {
    let c = condition::find(&a.status.as_ref()?.conditions, READY)?;
    (c.status == "False").then_some(c.reason.as_str())
}

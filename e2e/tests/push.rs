//! The upload conversation: `aether push --no-deploy` → AetherArtifact → operator
//! → presigned uploads → verified, with only the missing blobs sent.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};

use base64::Engine as _;
use std::process::Command;
use std::time::Duration;

use aether_crds::condition::READY;
use aether_crds::{AetherArtifact, UPLOAD_COMPLETE_ANNOTATION};
use aether_e2e::app::{aether_bin, copy_project};
use aether_e2e::{http, storage::StorageSettings, wait_for, with_temp_ns};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use kube::api::{Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};

/// A small project with no dependencies (no registry access needed).
fn project(dir: &Path, greeting: &str) {
    std::fs::write(
        dir.join("package.json"),
        r#"{"name":"hello","version":"1.0.0","scripts":{"start":"node server.js"}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("package-lock.json"),
        r#"{"name":"hello","version":"1.0.0","lockfileVersion":3,"requires":true,"packages":{"":{"name":"hello","version":"1.0.0"}}}"#,
    )
    .unwrap();
    std::fs::write(
        dir.join("server.js"),
        format!("require('http').createServer((q, s) => s.end('{greeting}')).listen(process.env.PORT)\n"),
    )
    .unwrap();
}

fn push(dir: &Path, cache: &Path, ns: &str, extra: &[&str]) -> (Option<i32>, serde_json::Value, String) {
    let out = Command::new(aether_bin())
        .args([
            "push",
            "--no-deploy",
            "--no-sign",
            "-n",
            ns,
            "-o",
            "json",
            "--timeout-seconds",
            "60",
        ])
        .args(extra)
        .current_dir(dir)
        .env("AETHER_CACHE_DIR", cache)
        .output()
        .expect("running aether (build it: cargo build -p aether-cli)");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code(), json, stderr)
}

#[tokio::test]
#[ignore = "needs a cluster and the operator: run `make e2e`"]
async fn push_uploads_what_is_missing_and_nothing_twice() -> anyhow::Result<()> {
    with_temp_ns("push", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        project(dir.path(), &format!("hello {ns}"));

        let (code, first, err) = push(dir.path(), cache.path(), &ns, &[]);
        assert_eq!(code, Some(0), "{err}");
        assert!(first["bytesUploaded"].as_u64().unwrap() > 0, "{first}");
        let name = first["artifact"].as_str().unwrap().to_string();
        let art: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        let a = art.get(&name).await?;
        let ready = ready_condition(&a);
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", "Verified")
        );

        // Same code again: nothing to upload.
        let (code, second, err) = push(dir.path(), cache.path(), &ns, &[]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(second["bytesUploaded"], 0, "{second}");
        assert_eq!(second["artifact"], first["artifact"]);

        // One changed line: only the app layer travels.
        project(dir.path(), &format!("hello again {ns}"));
        let (code, third, err) = push(dir.path(), cache.path(), &ns, &[]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(third["blobsUploaded"], 1, "{third}");
        assert_ne!(third["artifact"], first["artifact"]);

        // A clean machine (empty local cache) with the same lockfile: the deps layer of
        // a Ready artifact is reused, nothing is installed, only the app layer travels.
        project(dir.path(), &format!("hello from a clean machine {ns}"));
        let clean_cache = tempfile::tempdir()?;
        let (code, fourth, err) = push(dir.path(), clean_cache.path(), &ns, &[]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(fourth["installSkipped"], true, "{fourth}");
        assert!(
            fourth["depsSource"].as_str().unwrap().starts_with("remote:"),
            "{fourth}"
        );
        assert_eq!(fourth["blobsUploaded"], 1, "{fourth}");
        assert!(
            !clean_cache.path().join("deps").exists(),
            "an install ran on the clean machine"
        );
        println!("first {first}\nsecond {second}\nthird {third}\nclean machine {fourth}");
        Ok(())
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster and the operator: run `make e2e`"]
async fn an_upload_url_stores_only_its_digest_s_bytes() -> anyhow::Result<()> {
    let storage = StorageSettings::from_env()?.host();
    with_temp_ns("mismatch", |client, ns| async move {
        let storage = storage.namespace(&ns);
        // A real artifact created by hand, so the test can try wrong bytes of the
        // right length through the operator's URLs.
        let dir = tempfile::tempdir()?;
        let (art, blobs) = create_packed_artifact(&client, &ns, dir.path(), "hello-corrupt").await?;

        let a = wait_for(
            art.clone(),
            "hello-corrupt",
            "upload instructions",
            Duration::from_secs(60),
            |a: Option<&AetherArtifact>| {
                a.and_then(|a| a.status.as_ref())
                    .is_some_and(|s| s.upload.is_some())
            },
        )
        .await?;
        let upload = a.status.unwrap().upload.unwrap();
        for b in &upload.blobs {
            let url = b.url.as_ref().unwrap();
            let bytes = std::fs::read(blobs.join(&b.digest[7..]))?;
            let mut corrupt = bytes.clone();
            let mid = corrupt.len() / 2;
            corrupt[mid] ^= 0x01; // one flipped bit
            assert!(
                !http::stored(url, &b.headers, corrupt).await,
                "the URL for {} stored other bytes",
                b.digest
            );
            assert_eq!(storage.head(&b.digest.parse()?).await?, None);
            let (status, body) = http::put(url, &b.headers, bytes).await?;
            assert_eq!(status, 200, "{body}");
        }
        let patch = serde_json::json!({"metadata": {"annotations": {UPLOAD_COMPLETE_ANNOTATION: "now"}}});
        art.patch("hello-corrupt", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let a = wait_for(
            art.clone(),
            "hello-corrupt",
            "a verdict",
            Duration::from_secs(60),
            |a: Option<&AetherArtifact>| {
                a.and_then(|a| a.status.as_ref())
                    .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY))
                    .is_some_and(|c| c.status == "True")
            },
        )
        .await?;
        assert_eq!(ready_condition(&a).reason, "Verified");
        Ok(())
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster and the operator: run `make e2e`"]
async fn a_user_without_create_permission_gets_a_clear_error() -> anyhow::Result<()> {
    with_temp_ns("rbac", |client, ns| async move {
        // A ServiceAccount that may read AetherArtifacts but not create them.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some("reader".into());
        sas.create(&PostParams::default(), &sa).await?;
        let mut role = Role::default();
        role.metadata.name = Some("aart-reader".into());
        role.rules = Some(vec![PolicyRule {
            api_groups: Some(vec!["aether.dev".into()]),
            resources: Some(vec!["aetherartifacts".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]);
        Api::<Role>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &role)
            .await?;
        let binding = RoleBinding {
            metadata: kube::api::ObjectMeta {
                name: Some("reader".into()),
                ..Default::default()
            },
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: "aart-reader".into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: "reader".into(),
                namespace: Some(ns.clone()),
                ..Default::default()
            }]),
        };
        Api::<RoleBinding>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &binding)
            .await?;
        let token = Command::new("kubectl")
            .args(["create", "token", "reader", "-n", &ns])
            .output()?;
        assert!(
            token.status.success(),
            "{}",
            String::from_utf8_lossy(&token.stderr)
        );
        let token = String::from_utf8(token.stdout)?.trim().to_string();

        // A kubeconfig for that account, next to the admin's.
        let dir = tempfile::tempdir()?;
        let kubeconfig = dir.path().join("reader.kubeconfig");
        let admin = std::env::var("KUBECONFIG")?;
        let run = |args: &[&str]| {
            let ok = Command::new("kubectl")
                .args(args)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .output()
                .unwrap();
            assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        };
        let view = Command::new("kubectl")
            .args([
                "config",
                "view",
                "--raw",
                "--minify",
                "--kubeconfig",
                &admin,
                "-o",
                "json",
            ])
            .output()?;
        let view: serde_json::Value = serde_json::from_slice(&view.stdout)?;
        let server = view["clusters"][0]["cluster"]["server"]
            .as_str()
            .unwrap()
            .to_string();
        let ca = view["clusters"][0]["cluster"]["certificate-authority-data"]
            .as_str()
            .unwrap()
            .to_string();
        std::fs::write(
            dir.path().join("ca.crt"),
            base64::engine::general_purpose::STANDARD.decode(&ca)?,
        )?;
        let ca_path = dir.path().join("ca.crt").to_string_lossy().into_owned();
        run(&[
            "config",
            "set-cluster",
            "c",
            "--server",
            &server,
            "--certificate-authority",
            &ca_path,
        ]);
        run(&["config", "set-credentials", "reader", "--token", &token]);
        run(&[
            "config",
            "set-context",
            "reader",
            "--cluster",
            "c",
            "--user",
            "reader",
            "--namespace",
            &ns,
        ]);
        run(&["config", "use-context", "reader"]);

        let project_dir = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        project(project_dir.path(), "forbidden");
        let kc = kubeconfig.to_string_lossy().into_owned();
        let (code, _, err) = push(project_dir.path(), cache.path(), &ns, &["--kubeconfig", &kc]);
        println!("{err}");
        assert_eq!(code, Some(7), "{err}");
        assert!(
            err.contains("may not create aetherartifacts in namespace"),
            "{err}"
        );
        assert!(
            err.contains("aether-editor"),
            "the hint names the role to ask for: {err}"
        );
        let left = Api::<AetherArtifact>::namespaced(client, &ns)
            .list(&Default::default())
            .await?;
        assert!(
            left.items.is_empty(),
            "nothing half-written: {:?}",
            left.items.iter().map(|a| a.name_any()).collect::<Vec<_>>()
        );
        Ok(())
    })
    .await
}

/// Copy a project folder, leaving out installed dependencies and outputs.
#[tokio::test]
#[ignore = "needs a cluster, the operator and the npm registry: run `make e2e`"]
async fn the_example_app_pushes_to_a_ready_artifact_and_repeats_upload_nothing() -> anyhow::Result<()> {
    with_temp_ns("example", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        copy_project(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/express-api"),
            dir.path(),
        )?;

        // Storage may already hold these blobs from an earlier run: the first push
        // reports what it sent, whatever that is, and must end Ready.
        let (code, first, err) = push(dir.path(), cache.path(), &ns, &[]);
        assert_eq!(code, Some(0), "{err}");
        assert!(first["bytesUploaded"].is_u64(), "{first}");
        let name = first["artifact"].as_str().unwrap().to_string();
        let art = Api::<AetherArtifact>::namespaced(client.clone(), &ns)
            .get(&name)
            .await?;
        assert_eq!(ready_condition(&art).status, "True");
        assert!(
            art.spec.layers.iter().any(|l| l.entries > 1000),
            "the deps layer holds node_modules"
        );

        let (code, second, err) = push(dir.path(), cache.path(), &ns, &[]);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(second["bytesUploaded"], 0, "{second}");
        assert_eq!(second["reused"], true, "{second}");
        println!("example: first {first}\nrepeat {second}");
        Ok(())
    })
    .await
}

/// Pack a unique project and create its AetherArtifact directly (no upload yet);
/// returns the API and the folder holding the packed blobs.
async fn create_packed_artifact(
    client: &kube::Client,
    ns: &str,
    dir: &Path,
    name: &str,
) -> anyhow::Result<(Api<AetherArtifact>, PathBuf)> {
    let cache = dir.join("cache");
    let project_dir = dir.join("project");
    std::fs::create_dir_all(&project_dir)?;
    project(&project_dir, &format!("{name} in {ns}"));
    let out = Command::new(aether_bin())
        .args(["pack", "--no-sign", "-n", ns, "-o", "json"])
        .current_dir(&project_dir)
        .env("AETHER_CACHE_DIR", &cache)
        .output()?;
    anyhow::ensure!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let packed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let blobs = project_dir.join(".aether/out/blobs/sha256");
    let digest = packed["digest"]
        .as_str()
        .unwrap_or_default()
        .trim_start_matches("sha256:")
        .to_string();
    let manifest = aether_artifact::Manifest::from_json(&std::fs::read(blobs.join(digest))?)?;
    let spec = aether_crds::AetherArtifactSpec::from_manifest("hello", &manifest)?;
    let art: Api<AetherArtifact> = Api::namespaced(client.clone(), ns);
    art.create(&PostParams::default(), &AetherArtifact::new(name, spec))
        .await?;
    Ok((art, blobs))
}

fn upload_expiry(a: &AetherArtifact) -> Option<String> {
    let upload = a.status.as_ref()?.upload.as_ref()?;
    serde_json::to_value(&upload.expires_at)
        .ok()?
        .as_str()
        .map(String::from)
}

#[tokio::test]
#[ignore = "needs a cluster and the operator: run `make e2e`"]
async fn expired_upload_urls_are_renewed_and_old_ones_refused() -> anyhow::Result<()> {
    with_temp_ns("expiry", move |client, ns| async move {
        let dir = tempfile::tempdir()?;
        let (art, blobs) = create_packed_artifact(&client, &ns, dir.path(), "hello-expiry").await?;
        let has_upload = |a: Option<&AetherArtifact>| a.and_then(upload_expiry).is_some();
        let first = wait_for(
            art.clone(),
            "hello-expiry",
            "upload instructions",
            Duration::from_secs(30),
            has_upload,
        )
        .await?;
        // Created without the operator's finalizer (as kubectl or GitOps would): the
        // operator added it before answering.
        assert!(
            first.finalizers().iter().any(|f| f == aether_crds::BLOBS_FINALIZER),
            "{:?}",
            first.finalizers()
        );
        let first_expiry = upload_expiry(&first).unwrap();
        let old = first.status.unwrap().upload.unwrap();
        // The operator's URL lifetime, as it shows in the first expiry.
        let ttl = (old.expires_at.0 - k8s_openapi::jiff::Timestamp::now()).get_seconds().max(1) as u64;
        anyhow::ensure!(
            ttl <= 90,
            "URLs live {ttl} s: run the operator with AETHER_UPLOAD_URL_TTL_SECONDS of at most 60 (the local overlay uses 30)"
        );

        // Nobody uploads: before they expire the operator hands out new URLs.
        let seen = first_expiry.clone();
        let renewed_cond =
            move |a: Option<&AetherArtifact>| a.and_then(upload_expiry).is_some_and(|e| e != seen);
        let renewed = wait_for(
            art.clone(),
            "hello-expiry",
            "renewed URLs",
            Duration::from_secs(ttl * 3),
            renewed_cond,
        )
        .await?;
        println!(
            "URLs expiring {first_expiry} renewed to expire {}",
            upload_expiry(&renewed).unwrap()
        );
        let new = renewed.status.unwrap().upload.unwrap();

        // Once past its expiry, an old URL is refused by storage.
        let deadline = old.expires_at.0;
        aether_e2e::wait_until(
            "the first URLs to expire",
            Duration::from_secs(ttl * 2),
            || async move {
                let past = deadline.checked_add(k8s_openapi::jiff::SignedDuration::from_secs(2))?;
                Ok((k8s_openapi::jiff::Timestamp::now() > past).then_some(()))
            },
        )
        .await?;
        let stale = &old.blobs[0];
        let (status, body) = http::put(
            stale.url.as_ref().unwrap(),
            &stale.headers,
            std::fs::read(blobs.join(&stale.digest[7..]))?,
        )
        .await?;
        println!("expired URL: HTTP {status}: {body}");
        assert!(
            (400..500).contains(&status),
            "storage accepted an expired URL: {status}"
        );

        // The renewed URLs work, and the artifact becomes Ready.
        for b in &new.blobs {
            let (status, body) = http::put(
                b.url.as_ref().unwrap(),
                &b.headers,
                std::fs::read(blobs.join(&b.digest[7..]))?,
            )
            .await?;
            assert_eq!(status, 200, "{body}");
        }
        let patch = serde_json::json!({"metadata": {"annotations": {UPLOAD_COMPLETE_ANNOTATION: "now"}}});
        art.patch("hello-expiry", &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        let is_ready = |a: Option<&AetherArtifact>| {
            a.and_then(|a| a.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == READY && c.status == "True")
            })
        };
        wait_for(art, "hello-expiry", "Ready", Duration::from_secs(30), is_ready).await?;
        Ok(())
    })
    .await
}

fn ready_condition(a: &AetherArtifact) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
    let conditions = a
        .status
        .as_ref()
        .map(|s| s.conditions.clone())
        .unwrap_or_default();
    conditions
        .into_iter()
        .find(|c| c.type_ == READY)
        .expect("a Ready condition")
}

#[tokio::test]
#[ignore = "needs a cluster, the operator and storage credentials: run `make e2e`"]
async fn direct_mode_uploads_with_the_developers_credentials_in_the_same_layout() -> anyhow::Result<()> {
    let storage = StorageSettings::from_env()?.host();
    with_temp_ns("direct", move |client, ns| async move {
        let storage = storage.namespace(&ns);
        let dir = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        project(dir.path(), &format!("direct to {ns}"));
        // The e2e environment holds the bucket's credentials, as a developer in direct
        // mode would.
        let (code, out, err) = push(dir.path(), cache.path(), &ns, &["--storage", "direct"]);
        assert_eq!(code, Some(0), "{err}");
        assert!(out["bytesUploaded"].as_u64().unwrap() > 0, "{out}");
        let art = Api::<AetherArtifact>::namespaced(client.clone(), &ns)
            .get(out["artifact"].as_str().unwrap())
            .await?;
        assert_eq!(ready_condition(&art).status, "True", "the operator verified it");
        for layer in &art.spec.layers {
            let stored = storage.head(&layer.digest.parse()?).await?;
            assert_eq!(
                stored,
                Some(layer.size as u64),
                "{} at the usual key",
                layer.digest
            );
        }
        Ok(())
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster and the operator: run `make e2e`"]
async fn storage_down_during_upload_fails_clearly_and_nothing_becomes_ready() -> anyhow::Result<()> {
    with_temp_ns("outage", move |client, ns| async move {
        let dir = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        project(dir.path(), &format!("outage in {ns}"));
        // Storage that refuses every connection: a port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let started = std::time::Instant::now();
        let out = Command::new(aether_bin())
            .args([
                "push",
                "--no-deploy",
                "--no-sign",
                "--storage",
                "direct",
                "-n",
                &ns,
            ])
            .current_dir(dir.path())
            .env("AETHER_CACHE_DIR", cache.path())
            .env("AETHER_S3_ENDPOINT", format!("http://{closed}"))
            .output()?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        println!(
            "after {:?}: exit {:?}\n{stderr}",
            started.elapsed(),
            out.status.code()
        );
        // The report as one line, without miette's wrapping and gutter.
        let stderr = stderr
            .replace(['│', '×'], " ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(out.status.code(), Some(8), "{stderr}");
        assert!(
            stderr.contains("storage is unavailable"),
            "a clear reason: {stderr}"
        );
        assert!(
            stderr.contains("run the same command again"),
            "what to do: {stderr}"
        );
        // The SDK retried with backoff before giving up (it did not fail at once).
        assert!(started.elapsed() > Duration::from_millis(500));
        let arts = Api::<AetherArtifact>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await?;
        assert!(
            arts.items.iter().all(|a| a.status.as_ref().is_none_or(|s| s
                .conditions
                .iter()
                .all(|c| c.type_ != READY || c.status != "True"))),
            "nothing is Ready"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster and the operator (abandoned uploads after AETHER_E2E_ABANDONED_SECONDS): run `make e2e`"]
async fn an_upload_never_completed_is_abandoned_and_cleaned_up() -> anyhow::Result<()> {
    // The operator's --abandoned-upload-seconds (the local overlay sets 300).
    let ttl: u64 = std::env::var("AETHER_E2E_ABANDONED_SECONDS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(300);
    with_temp_ns("abandoned", move |client, ns| async move {
        let dir = tempfile::tempdir()?;
        let (art, _) = create_packed_artifact(&client, &ns, dir.path(), "hello-abandoned").await?;
        let created = std::time::Instant::now();
        let has_upload = |a: Option<&AetherArtifact>| a.and_then(upload_expiry).is_some();
        wait_for(
            art.clone(),
            "hello-abandoned",
            "upload instructions",
            Duration::from_secs(30),
            has_upload,
        )
        .await?;
        // Nobody uploads.
        let api = art.clone();
        aether_e2e::wait_until(
            "the abandoned artifact to be deleted",
            Duration::from_secs(ttl + 90),
            || {
                let api = api.clone();
                async move { Ok(api.get_opt("hello-abandoned").await?.is_none().then_some(())) }
            },
        )
        .await?;
        let after = created.elapsed();
        println!("abandoned upload deleted after {after:?} (limit {ttl} s)");
        assert!(
            after >= Duration::from_secs(ttl.saturating_sub(5)),
            "not before its time: {after:?}"
        );
        let events = Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await?;
        assert!(
            events
                .items
                .iter()
                .any(|e| e.reason.as_deref() == Some("AbandonedUpload")),
            "an Event says why"
        );
        Ok(())
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster and the operator: run `make e2e`"]
async fn pushing_an_artifact_being_deleted_makes_it_again_once_it_is_gone() -> anyhow::Result<()> {
    with_temp_ns("push-dying", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        project(dir.path(), &format!("back again {ns}"));
        let (code, first, err) = push(dir.path(), cache.path(), &ns, &[]);
        assert_eq!(code, Some(0), "{err}");
        let name = first["artifact"].as_str().unwrap().to_string();

        // Deleted (as retention deletes an old version), held by a finalizer of ours
        // the way a slow cleanup would hold it.
        let api: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        // (Added to the list: the operator's own stays.)
        let hold = serde_json::json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "e2e.aether.dev/hold"}]);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(hold)?),
        )
        .await?;
        api.delete(&name, &Default::default()).await?;
        let old_uid = api.get(&name).await?.uid();

        // The same code pushed again: it waits for the old one to go.
        let again = {
            let (dir, cache, ns) = (dir.path().to_path_buf(), cache.path().to_path_buf(), ns.clone());
            tokio::task::spawn_blocking(move || push(&dir, &cache, &ns, &[]))
        };
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(
            !again.is_finished(),
            "the push waits while the artifact is being deleted"
        );
        // Only our finalizer is left once the operator released the blobs.
        wait_for(
            api.clone(),
            &name,
            "the operator's finalizer to finish",
            Duration::from_secs(60),
            |a: Option<&AetherArtifact>| a.is_some_and(|a| a.finalizers() == ["e2e.aether.dev/hold"]),
        )
        .await?;
        let release = serde_json::json!([{"op": "replace", "path": "/metadata/finalizers", "value": []}]);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(release)?),
        )
        .await?;

        let (code, second, err) = again.await?;
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(second["artifact"].as_str(), Some(name.as_str()));
        let made_again = api.get(&name).await?;
        assert_ne!(made_again.uid(), old_uid, "a new artifact, not the dying one");
        assert_eq!(ready_condition(&made_again).status, "True");
        Ok(())
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster and the operator: run `make e2e`"]
async fn the_operator_s_finalizer_taken_away_is_put_back() -> anyhow::Result<()> {
    with_temp_ns("finalizer", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        let cache = tempfile::tempdir()?;
        project(dir.path(), &format!("held {ns}"));
        let (code, pushed, err) = push(dir.path(), cache.path(), &ns, &[]);
        assert_eq!(code, Some(0), "{err}");
        let name = pushed["artifact"].as_str().unwrap().to_string();
        let api: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        let holds = |a: Option<&AetherArtifact>| {
            a.is_some_and(|a| a.finalizers().iter().any(|f| f == "aether.dev/blobs"))
        };
        assert!(
            holds(Some(&api.get(&name).await?)),
            "a Ready artifact holds its blobs"
        );

        // Someone writes the list without it (`kubectl edit`, a merge patch): without
        // it, deleting the artifact would leave its blobs stored and uncounted.
        let strip = serde_json::json!([{"op": "replace", "path": "/metadata/finalizers", "value": []}]);
        api.patch(
            &name,
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(strip)?),
        )
        .await?;
        wait_for(
            api.clone(),
            &name,
            "the operator to put its finalizer back",
            Duration::from_secs(30),
            holds,
        )
        .await?;
        Ok(())
    })
    .await
}

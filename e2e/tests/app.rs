//! `aether push` to a pod serving HTTP, end to end, against the operator running in
//! the cluster (hack/deploy.sh on the local cluster; any cluster with Aether
//! installed and the developer's signing key trusted).
//!
//! Every test pushes a copy of examples/express-api into its own namespace and
//! asserts what a developer notices: the exit code, the JSON, and the app's answer.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use aether_crds::pod::ARTIFACT_ANNOTATION;
use aether_crds::{AetherApp, AetherArtifact};
use aether_e2e::app::{Run, aether, body, example_app, set_greeting, wait_for_body};
use aether_e2e::storage::StorageSettings;
use aether_e2e::{wait_for, wait_until, with_temp_ns};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams};
use kube::{Api, Client, ResourceExt};

const APP: &str = "express-api";

/// The restart test kills the operator, and a freshly started operator may act once on
/// a cache older than the cluster: that test runs alone (write), the others together
/// (read), so each asserts what a user sees from an operator that stays up.
static OPERATOR: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

fn ok(run: &Run) -> &serde_json::Value {
    assert_eq!(run.code, Some(0), "aether failed:\n{}", run.stderr);
    &run.json
}

fn push(dir: &std::path::Path, ns: &str, extra: &[&str]) -> Run {
    let mut args = vec!["push", "--timeout-seconds", "240"];
    args.extend_from_slice(extra);
    aether(dir, ns, &args)
}

async fn replica_sets(client: &Client, ns: &str) -> anyhow::Result<Vec<ReplicaSet>> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/name={APP}"));
    Ok(Api::<ReplicaSet>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items)
}

/// The pods behind the ready endpoints of the app's Service, with the artifact each
/// runs.
async fn routed_pods(client: &Client, ns: &str) -> anyhow::Result<Vec<(String, String)>> {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={APP}"));
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let mut routed = Vec::new();
    for endpoint in slices.items.iter().flat_map(|s| &s.endpoints) {
        if endpoint.conditions.as_ref().and_then(|c| c.ready) != Some(true) {
            continue;
        }
        let name = endpoint
            .target_ref
            .as_ref()
            .and_then(|t| t.name.clone())
            .unwrap_or_default();
        let artifact = match pods.get_opt(&name).await? {
            Some(pod) => pod
                .annotations()
                .get(ARTIFACT_ANNOTATION)
                .cloned()
                .unwrap_or_default(),
            None => "(no such pod)".into(),
        };
        routed.push((name, artifact));
    }
    Ok(routed)
}

/// Push the example answering `greeting` and wait until it does.
async fn serve(client: &Client, ns: &str, dir: &std::path::Path, greeting: &str) -> anyhow::Result<String> {
    set_greeting(dir, greeting)?;
    let run = tokio::task::block_in_place(|| push(dir, ns, &[]));
    let json = ok(&run);
    let url = json["url"].as_str().unwrap().to_string();
    wait_for_body(
        client,
        ns,
        APP,
        &url,
        &format!("{greeting}\n"),
        Duration::from_secs(10),
    )
    .await?;
    Ok(url)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn push_serves_the_example_and_a_code_change_rolls_exactly_once() -> anyhow::Result<()> {
    let _shared = OPERATOR.read().await;
    with_temp_ns("push", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "Hello from Aether!")?;

        // 1. First push: Ready, and the Service answers with the example's body.
        let run = tokio::task::block_in_place(|| push(dir.path(), &ns, &[]));
        let first = ok(&run).clone();
        println!("first push: {first}");
        for key in [
            "app",
            "namespace",
            "artifact",
            "digest",
            "bytesUploaded",
            "url",
            "timingsMs",
        ] {
            assert!(!first[key].is_null(), "push -o json lacks {key}: {first}");
        }
        assert_eq!(first["app"], APP);
        assert_eq!(first["deploy"]["serving"], true);
        let url = first["url"].as_str().unwrap().to_string();
        assert_eq!(body(&client, &ns, APP, &url).await?, "Hello from Aether!\n");
        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);
        let app = apps.get(APP).await?;
        let status = app.status.unwrap();
        assert_eq!(status.artifact.unwrap().digest, first["digest"].as_str().unwrap());
        assert_eq!(status.ready_replicas, 1);
        assert_eq!(replica_sets(&client, &ns).await?.len(), 1);

        // 2. One source line changes: only the app layer is uploaded, the new body is
        // served, and the Deployment rolled exactly once.
        // Unique per run: storage is content-addressed and outlives test namespaces.
        let second_greeting = format!("Hello, second release of {ns}!");
        set_greeting(dir.path(), &second_greeting)?;
        let run = tokio::task::block_in_place(|| push(dir.path(), &ns, &[]));
        let second = ok(&run).clone();
        println!("code-only push: {second}");
        assert_ne!(second["digest"], first["digest"]);
        assert_eq!(second["blobsUploaded"], 1, "only the app layer: {second}");
        assert_eq!(second["installSkipped"], true);
        // `--wait` returned: the Service already routes to the new release alone, so
        // no client is sent to the old version any more.
        let routed = routed_pods(&client, &ns).await?;
        let second_artifact = second["artifact"].as_str().unwrap();
        assert!(
            !routed.is_empty() && routed.iter().all(|(_, a)| a == second_artifact),
            "push returned while the Service routes to {routed:?}"
        );
        // kube-proxy programs what the EndpointSlices say within moments.
        wait_for_body(
            &client,
            &ns,
            APP,
            &url,
            &format!("{second_greeting}\n"),
            Duration::from_secs(2),
        )
        .await?;
        let sets = replica_sets(&client, &ns).await?;
        assert_eq!(sets.len(), 2, "exactly one new ReplicaSet");
        let history = apps.get(APP).await?.status.unwrap().history;
        assert_eq!(history.len(), 2);
        assert_eq!(history[0].digest, second["digest"].as_str().unwrap());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn an_applied_aetherapp_yaml_deploys_an_existing_artifact() -> anyhow::Result<()> {
    let _shared = OPERATOR.read().await;
    with_temp_ns("gitops", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "Hello, GitOps!")?;
        let run = tokio::task::block_in_place(|| push(dir.path(), &ns, &["--no-deploy"]));
        let artifact = ok(&run)["artifact"].as_str().unwrap().to_string();
        assert!(Api::<AetherApp>::namespaced(client.clone(), &ns).get_opt(APP).await?.is_none());

        // What a GitOps tool commits and applies: YAML, no CLI.
        let yaml = format!(
            "apiVersion: aether.dev/v1alpha1\nkind: AetherApp\nmetadata:\n  name: {APP}\nspec:\n  artifactRef:\n    name: {artifact}\n  healthCheck:\n    path: /healthz\n"
        );
        let out = std::process::Command::new("kubectl")
            .args(["apply", "--server-side", "--field-manager", "gitops", "-n", &ns, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().unwrap().write_all(yaml.as_bytes())?;
                child.wait_with_output()
            })?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);
        let app = wait_for(apps, APP, "Ready", Duration::from_secs(120), |a: Option<&AetherApp>| {
            a.and_then(|a| a.status.as_ref())
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .await?;
        let url = app.status.unwrap().url.unwrap();
        // No CLI waited for the Service here: give kube-proxy its second.
        wait_for_body(&client, &ns, APP, &url, "Hello, GitOps!\n", Duration::from_secs(10)).await?;
        // The health path from the YAML is what the pods are checked on (the runtime
        // answers the kubelet's probes with it).
        let dep = Api::<Deployment>::namespaced(client.clone(), &ns).get(APP).await?;
        let pod = dep.spec.unwrap().template.spec.unwrap();
        let main = pod.containers.iter().find(|c| c.name == "app").unwrap();
        let command = main.command.clone().unwrap();
        let path = command.iter().position(|a| a == "--check-path").map(|i| command[i + 1].as_str());
        assert_eq!(path, Some("/healthz"), "{command:?}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn enforce_refuses_an_unsigned_artifact_and_the_old_version_keeps_serving() -> anyhow::Result<()> {
    let _shared = OPERATOR.read().await;
    with_temp_ns("enforce", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "Signed release")?;
        let url = serve(&client, &ns, dir.path(), "Signed release").await?;
        let sets = replica_sets(&client, &ns).await?.len();

        set_greeting(dir.path(), "Unsigned release")?;
        let run = tokio::task::block_in_place(|| push(dir.path(), &ns, &["--no-sign"]));
        println!("unsigned push: exit {:?}\n{}", run.code, run.stderr);
        assert_eq!(run.code, Some(11), "{}", run.stderr);
        assert!(run.stderr.contains("ArtifactUnsigned"), "{}", run.stderr);
        assert!(
            run.stderr.contains("not signed"),
            "a readable reason: {}",
            run.stderr
        );

        let status = Api::<AetherApp>::namespaced(client.clone(), &ns)
            .get(APP)
            .await?
            .status
            .unwrap();
        let stalled = status.conditions.iter().find(|c| c.type_ == "Stalled").unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "ArtifactUnsigned")
        );
        assert_eq!(body(&client, &ns, APP, &url).await?, "Signed release\n");
        assert_eq!(replica_sets(&client, &ns).await?.len(), sets, "nothing rolled");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed and its storage: run `make e2e`"]
async fn a_corrupted_blob_stops_the_new_pods_and_a_push_repairs_it() -> anyhow::Result<()> {
    let _shared = OPERATOR.read().await;
    let storage = StorageSettings::from_env()?.host();
    with_temp_ns("corrupt", move |client, ns| async move {
        let storage = storage.namespace(&ns);
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "Intact release")?;
        let url = serve(&client, &ns, dir.path(), "Intact release").await?;

        // A verified artifact whose app layer is then damaged in storage.
        let repaired = format!("Repaired release of {ns}\n");
        set_greeting(dir.path(), repaired.trim_end())?;
        let run = tokio::task::block_in_place(|| push(dir.path(), &ns, &["--no-deploy"]));
        let name = ok(&run)["artifact"].as_str().unwrap().to_string();
        let art = Api::<AetherArtifact>::namespaced(client.clone(), &ns)
            .get(&name)
            .await?;
        let layer = art
            .spec
            .layers
            .iter()
            .find(|l| l.name == aether_crds::LayerName::App)
            .unwrap();
        let digest: aether_artifact::Digest = layer.digest.parse()?;
        storage.put(&digest, vec![b'x'; layer.size as usize]).await?;

        // The app is pointed at it (as a GitOps commit would): the new pods refuse
        // the bytes, the old ones keep serving, and `aether status` says why.
        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);
        let patch = serde_json::json!({"spec": {"artifactRef": {"name": name}}});
        apps.patch(
            APP,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await?;
        let view = wait_until(
            "the app to report DigestMismatch",
            Duration::from_secs(120),
            || {
                let dir = dir.path().to_path_buf();
                let ns = ns.clone();
                async move {
                    let status = tokio::task::block_in_place(|| aether(&dir, &ns, &["status", APP]));
                    let view = ok(&status).clone();
                    Ok((view["reason"] == "DigestMismatch").then_some(view))
                }
            },
        )
        .await?;
        println!("aether status: {view}");
        let problems: Vec<&str> = view["pods"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["problem"].as_str())
            .collect();
        assert!(
            problems.iter().any(|p| p.starts_with("fetch: DigestMismatch")),
            "the init container's reason is visible: {view}"
        );
        assert_eq!(body(&client, &ns, APP, &url).await?, "Intact release\n");

        // The operator hashes an artifact again on request at most every 10 s.
        let verified_at = art.status.as_ref().and_then(|s| s.verified_at.clone()).unwrap().0;
        let since = k8s_openapi::jiff::Timestamp::now().duration_since(verified_at);
        if let Ok(wait) = Duration::try_from(k8s_openapi::jiff::SignedDuration::from_secs(11) - since) {
            tokio::time::sleep(wait).await;
        }
        // Pushing the same code again repairs it: the operator hashes the stored
        // blobs again, removes the damaged bytes and asks for them; the CLI uploads
        // them, and the release serves.
        let run = tokio::task::block_in_place(|| push(dir.path(), &ns, &[]));
        println!("push onto a damaged blob: exit {:?}\n{}", run.code, run.stderr);
        let out = ok(&run);
        assert_eq!(out["artifact"], name.as_str());
        assert!(out["bytesUploaded"].as_u64().unwrap() > 0, "{out}");
        wait_for_body(&client, &ns, APP, &url, &repaired, Duration::from_secs(60)).await?;
        storage.verify(&digest, layer.size as u64).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed (restarts its operator): run `make e2e`"]
async fn an_operator_restarted_mid_rollout_converges_without_an_extra_rollout() -> anyhow::Result<()> {
    let _alone = OPERATOR.write().await;
    let operator_ns = std::env::var("AETHER_OPERATOR_NAMESPACE").unwrap_or_else(|_| "aether-system".into());
    with_temp_ns("restart", move |client, ns| async move {
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "Before the restart")?;
        let url = serve(&client, &ns, dir.path(), "Before the restart").await?;

        set_greeting(dir.path(), "After the restart")?;
        let run = tokio::task::block_in_place(|| push(dir.path(), &ns, &["--no-wait"]));
        let artifact = ok(&run)["artifact"].as_str().unwrap().to_string();
        // The rollout has started (or is about to): kill the operator now.
        let pods: Api<Pod> = Api::namespaced(client.clone(), &operator_ns);
        let lp = ListParams::default().labels("app.kubernetes.io/name=aether-operator");
        let operators = pods.list(&lp).await?.items;
        anyhow::ensure!(!operators.is_empty(), "no operator pods in {operator_ns}");
        for p in &operators {
            pods.delete(
                p.metadata.name.as_deref().unwrap(),
                &DeleteParams::default().grace_period(0),
            )
            .await?;
        }

        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);
        let name = artifact.clone();
        wait_for(
            apps.clone(),
            APP,
            "Ready on the new artifact",
            Duration::from_secs(180),
            move |a: Option<&AetherApp>| {
                a.and_then(|a| a.status.as_ref()).is_some_and(|s| {
                    s.artifact.as_ref().is_some_and(|x| x.name == name)
                        && s.conditions
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                })
            },
        )
        .await?;
        wait_for_body(
            &client,
            &ns,
            APP,
            &url,
            "After the restart\n",
            Duration::from_secs(10),
        )
        .await?;
        // The new operator re-applied the same objects: no third ReplicaSet, revision 2.
        let sets = replica_sets(&client, &ns).await?;
        assert_eq!(sets.len(), 2, "one rollout per artifact");
        let dep = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get(APP)
            .await?;
        let revision =
            dep.metadata.annotations.unwrap_or_default()["deployment.kubernetes.io/revision"].clone();
        assert_eq!(revision, "2");
        // Status converged: it describes the current generation.
        let app = apps.get(APP).await?;
        assert_eq!(app.status.unwrap().observed_generation, app.metadata.generation);
        // And the operator is back and leading (later tests need it).
        wait_until("an operator pod Ready", Duration::from_secs(120), || {
            let pods = pods.clone();
            let lp = lp.clone();
            async move {
                let ready = pods.list(&lp).await?.items.iter().any(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                });
                Ok(ready.then_some(()))
            }
        })
        .await?;
        Ok(())
    })
    .await
}

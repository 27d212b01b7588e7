//! `aether dev`: saves served by the running pods, without new pods; what cannot be
//! swapped in rolls out; the pods refuse updates their policy refuses.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::io::Read as _;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aether_artifact::hot::{self, Header, Reply};
use aether_artifact::{Digest, Manifest};
use aether_crds::{AetherApp, AetherArtifact};
use aether_e2e::app::{aether, aether_bin, example_app, set_greeting, shared_cache};
use aether_e2e::{wait_until, with_temp_ns};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

const APP: &str = "express-api";

/// `aether dev` running in the background; stopped (SIGINT, as Ctrl-C) when dropped.
struct Dev {
    child: Child,
    log: std::path::PathBuf,
    _logs: tempfile::TempDir,
}

impl Dev {
    fn start(dir: &Path, ns: &str) -> Self {
        // Outside the project: a file written there is a change to serve.
        let logs = tempfile::tempdir().unwrap();
        let log = logs.path().join("dev.log");
        let child = Command::new(aether_bin())
            .args(["dev", ".", "-n", ns, "--timeout-seconds", "240"])
            .current_dir(dir)
            .env("AETHER_CACHE_DIR", shared_cache())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("running aether dev");
        Self {
            child,
            log,
            _logs: logs,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn watching(&self) -> anyhow::Result<()> {
        wait_until("aether dev to watch", Duration::from_secs(240), || async {
            let log = self.log();
            anyhow::ensure!(
                !log.contains("Error") && !log.contains("×"),
                "aether dev failed:\n{log}"
            );
            Ok(log.contains("Watching").then_some(()))
        })
        .await
    }

    /// Ctrl-C, and what it printed until it exited.
    fn stop(mut self) -> (Option<i32>, String) {
        // Ctrl-C, as a developer stops it.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        // It records the last save and rolls the pods off dev-hot mode: bounded.
        let deadline = std::time::Instant::now() + Duration::from_secs(240);
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("aether dev did not stop after Ctrl-C:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let mut log = String::new();
        std::fs::File::open(&self.log)
            .unwrap()
            .read_to_string(&mut log)
            .unwrap();
        (status.code(), log)
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The app's pods that are not leaving: name → (uid, restarts).
async fn app_pods(client: &Client, ns: &str) -> anyhow::Result<Vec<Pod>> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/instance={APP}"));
    Ok(Api::<Pod>::namespaced(client.clone(), ns)
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect())
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, |c| c.iter().map(|c| c.restart_count).sum())
}

/// What one pod answers on `/`, through the API server's pod proxy (works with any
/// cluster a kubeconfig reaches).
async fn pod_body(client: &Client, ns: &str, pod: &str) -> anyhow::Result<String> {
    let port = Api::<AetherApp>::namespaced(client.clone(), ns)
        .get(APP)
        .await?
        .spec
        .port;
    let path = format!("/api/v1/namespaces/{ns}/pods/{pod}:{port}/proxy/");
    Ok(client
        .request_text(http::Request::get(&path).body(Vec::new())?)
        .await?)
}

/// Wait until every pod in `pods` answers `expected`.
async fn all_answer(client: &Client, ns: &str, pods: &[String], expected: &str) -> anyhow::Result<()> {
    wait_until(
        &format!("{pods:?} to answer {expected:?}"),
        Duration::from_secs(15),
        || async {
            for pod in pods {
                let answer = pod_body(client, ns, pod).await?;
                anyhow::ensure!(answer == expected, "{pod} answered {answer:?}");
            }
            Ok(Some(()))
        },
    )
    .await
}

async fn scale(client: &Client, ns: &str, replicas: i32) -> anyhow::Result<()> {
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), ns);
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    apps.patch(APP, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    wait_until(
        &format!("{replicas} ready pods"),
        Duration::from_secs(120),
        || async {
            let ready = app_pods(client, ns)
                .await?
                .iter()
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
                })
                .count();
            Ok((ready == replicas as usize).then_some(()))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn saves_are_served_by_the_running_pods_and_new_pods_start_on_the_latest_code() -> anyhow::Result<()> {
    with_temp_ns("dev", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), &format!("first release of {ns}"))?;
        let run =
            tokio::task::block_in_place(|| aether(dir.path(), &ns, &["push", "--timeout-seconds", "240"]));
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        scale(&client, &ns, 2).await?;

        let dev = Dev::start(dir.path(), &ns);
        dev.watching().await?;
        let before = app_pods(&client, &ns).await?;
        assert_eq!(before.len(), 2, "dev-hot mode rolled to two pods");
        let names: Vec<String> = before.iter().map(|p| p.name_any()).collect();

        // Two saves: each is served by both pods, which are the same pods, never
        // restarted.
        for edit in 1..=2 {
            let greeting = format!("dev edit {edit} of {ns}");
            set_greeting(dir.path(), &greeting)?;
            all_answer(&client, &ns, &names, &format!("{greeting}\n")).await?;
        }
        let after = app_pods(&client, &ns).await?;
        for pod in &before {
            let same = after.iter().find(|p| p.uid() == pod.uid());
            let same = same.unwrap_or_else(|| panic!("pod {} was replaced:\n{}", pod.name_any(), dev.log()));
            assert_eq!(restarts(same), restarts(pod), "{} restarted", pod.name_any());
        }
        // Each pod says which code it runs: the same.
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let mut running = Vec::new();
        for name in &names {
            let reply = ask(&pods_api, name, &hot::query()).await?;
            assert_eq!(
                (reply.ok, reply.reason.as_str()),
                (true, hot::RUNNING),
                "{reply:?}"
            );
            running.push(reply.digest);
        }
        assert_eq!(running[0], running[1], "both pods run the last save");
        let swapped = running[0].clone();

        // The last save becomes the app's release: a pod created now starts on it.
        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);
        wait_until(
            "the last save to be the app's release",
            Duration::from_secs(60),
            || async {
                let app = apps.get(APP).await?;
                let digest = app.status.and_then(|s| s.artifact).map(|a| a.digest);
                Ok((digest.as_deref() == Some(swapped.as_str())).then_some(()))
            },
        )
        .await?;
        scale(&client, &ns, 3).await?;
        let newcomer = app_pods(&client, &ns)
            .await?
            .into_iter()
            .find(|p| !names.contains(&p.name_any()))
            .unwrap();
        assert_eq!(
            pod_body(&client, &ns, &newcomer.name_any()).await?,
            format!("dev edit 2 of {ns}\n"),
            "a scaled-up pod serves the latest code"
        );
        let status = tokio::task::block_in_place(|| aether(dir.path(), &ns, &["status", APP]));
        assert!(
            status.stderr.contains(&swapped[7..19]) || status.json.to_string().contains(&swapped),
            "aether status shows the code each pod runs:\n{}{}",
            status.stderr,
            status.json
        );

        // Leaving dev-hot mode leaves the app on that release (retained), off dev-hot.
        let (code, log) = tokio::task::block_in_place(|| dev.stop());
        assert_eq!(code, Some(0), "{log}");
        let app = apps.get(APP).await?;
        assert!(!app.spec.dev_hot, "dev-hot mode is switched off again");
        let artifact = app.spec.artifact_ref.name.clone();
        let art: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        assert_eq!(art.get(&artifact).await?.spec.digest, swapped);
        let history = app.status.unwrap().history;
        assert!(
            history.iter().any(|h| h.artifact == artifact),
            "the release is in the history"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_dependency_change_rolls_out_and_says_so() -> anyhow::Result<()> {
    with_temp_ns("dev-deps", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), &format!("deps test of {ns}"))?;
        let dev = Dev::start(dir.path(), &ns);
        dev.watching().await?;
        let before: Vec<String> = app_pods(&client, &ns)
            .await?
            .iter()
            .map(|p| p.name_any())
            .collect();

        // A new dependency (from the registry) and code using it.
        let out = Command::new("npm")
            .args([
                "install",
                "--package-lock-only",
                "--no-audit",
                "--no-fund",
                "ms@2.1.3",
            ])
            .current_dir(dir.path())
            .output()?;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let greeting = format!("with ms in {ns}");
        set_greeting(dir.path(), &greeting)?;
        wait_until("the rollout", Duration::from_secs(240), || async {
            let pods = app_pods(&client, &ns).await?;
            let fresh: Vec<String> = pods
                .iter()
                .map(|p| p.name_any())
                .filter(|n| !before.contains(n))
                .collect();
            if fresh.is_empty() {
                return Ok(None);
            }
            all_answer(&client, &ns, &fresh, &format!("{greeting}\n")).await?;
            Ok(Some(()))
        })
        .await?;
        let (code, log) = tokio::task::block_in_place(|| dev.stop());
        assert_eq!(code, Some(0), "{log}");
        assert!(
            log.contains("the dependencies changed: pushing a new release"),
            "{log}"
        );
        Ok(())
    })
    .await
}

/// Send an update straight to a pod's runtime, as `aether dev` does.
async fn send(client: &Client, ns: &str, pod: &str, header: &Header, layer: &[u8]) -> anyhow::Result<Reply> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    ask(&pods, pod, &hot::encode(header, layer)).await
}

/// `request` to a pod's runtime through a port-forward; its answer.
async fn ask(pods: &Api<Pod>, pod: &str, request: &[u8]) -> anyhow::Result<Reply> {
    let mut forwarder = pods.portforward(pod, &[hot::PORT]).await?;
    let mut stream = forwarder.take_stream(hot::PORT).unwrap();
    stream.write_all(request).await?;
    let mut line = String::new();
    tokio::io::BufReader::new(&mut stream)
        .read_line(&mut line)
        .await?;
    forwarder.abort();
    Ok(serde_json::from_str(&line)?)
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn pods_refuse_unsigned_and_tampered_updates_under_enforce() -> anyhow::Result<()> {
    with_temp_ns("dev-refuse", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        let greeting = format!("untouched {ns}");
        example_app(dir.path(), &greeting)?;
        let dev = Dev::start(dir.path(), &ns);
        dev.watching().await?;
        let (code, log) = tokio::task::block_in_place(|| dev.stop());
        assert_eq!(code, Some(0), "{log}");
        // Dev-hot mode on again (as GitOps or a second `aether dev` would leave it).
        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);
        apps.patch(
            APP,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"devHot": true}})),
        )
        .await?;
        wait_until("a dev-hot pod", Duration::from_secs(120), || async {
            let pods = app_pods(&client, &ns).await?;
            let ready = pods.iter().any(|p| {
                p.annotations()
                    .contains_key(aether_crds::pod::DEV_HOT_BASE_ANNOTATION)
                    && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
            });
            Ok(ready.then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let pod = app_pods(&client, &ns)
            .await?
            .into_iter()
            .find(|p| {
                p.annotations()
                    .contains_key(aether_crds::pod::DEV_HOT_BASE_ANNOTATION)
            })
            .unwrap()
            .name_any();

        // The running release's manifest and signature, with another app layer.
        let app = apps.get(APP).await?;
        let art = Api::<AetherArtifact>::namespaced(client.clone(), &ns)
            .get(&app.spec.artifact_ref.name)
            .await?;
        let signed: Manifest = art.spec.manifest()?;
        let evil = b"not the signed code".to_vec();
        let mut tampered = signed.clone();
        let layer = tampered.layers.iter_mut().find(|l| l.name == "app").unwrap();
        layer.digest = Digest::of(&evil);
        layer.size = evil.len() as u64;
        let manifest = String::from_utf8(tampered.to_canonical_json())?;
        let signature = art.spec.signature.clone().unwrap();

        let unsigned = Header {
            manifest: manifest.clone(),
            signature_key_id: None,
            signature: None,
        };
        let reply = send(&client, &ns, &pod, &unsigned, &evil).await?;
        assert_eq!(
            (reply.ok, reply.reason.as_str()),
            (false, "ArtifactUnsigned"),
            "{reply:?}"
        );

        let resigned = Header {
            manifest,
            signature_key_id: Some(signature.key_id.clone()),
            signature: Some(signature.value.clone()),
        };
        let reply = send(&client, &ns, &pod, &resigned, &evil).await?;
        assert_eq!(
            (reply.ok, reply.reason.as_str()),
            (false, "SignatureRejected"),
            "{reply:?}"
        );

        // The signed manifest with other bytes than it names.
        let honest = Header {
            manifest: String::from_utf8(signed.to_canonical_json())?,
            signature_key_id: Some(signature.key_id),
            signature: Some(signature.value),
        };
        let reply = send(&client, &ns, &pod, &honest, &evil).await?;
        assert_eq!(
            (reply.ok, reply.reason.as_str()),
            (false, "DigestMismatch"),
            "{reply:?}"
        );

        assert_eq!(
            pod_body(&client, &ns, &pod).await?,
            format!("{greeting}\n"),
            "the pod still runs its code"
        );

        // Once the app's release is not valid (here: it names an artifact that does
        // not exist), its pods take no update at all, though nothing can roll them.
        apps.patch(
            APP,
            &PatchParams::default(),
            &Patch::Merge(&serde_json::json!({"spec": {"artifactRef": {"name": "no-such-artifact"}}})),
        )
        .await?;
        wait_until(
            "the pod to refuse every update",
            Duration::from_secs(180),
            || async {
                let reply = send(&client, &ns, &pod, &unsigned, &evil).await?;
                Ok((reply.reason == "DevHotDisabled").then_some(()))
            },
        )
        .await?;
        Ok(())
    })
    .await
}

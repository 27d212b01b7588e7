//! Day-2 commands on a pushed app: `aether apps`, `scale`, `logs` (with -f across a
//! scale and until the app is deleted), `delete`, and the binary as the kubectl
//! plugin `kubectl aether`. One push serves every step, in the order a developer
//! would run them, asserting what they would notice.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use aether_crds::AetherApp;
use aether_e2e::app::{aether, aether_bin, example_app, one_line, set_greeting, shared_cache};
use aether_e2e::{wait_until, with_temp_ns};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

const APP: &str = "express-api";
/// What the example prints once it accepts connections (examples/express-api/server.js).
const LISTENING: &str = "express-api listening on :3000";

/// `aether ARGS -n NS` in `dir` as a person types it: no `-o json` added, stdin not
/// a terminal.
fn cli(dir: &Path, ns: &str, args: &[&str]) -> Output {
    Command::new(aether_bin())
        .args(args)
        .args(["-n", ns])
        .current_dir(dir)
        .env("AETHER_CACHE_DIR", shared_cache())
        .stdin(Stdio::null())
        .output()
        .expect("running aether (build it: cargo build -p aether-cli)")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// stderr as one line (see [`one_line`]).
fn said(out: &Output) -> String {
    one_line(&String::from_utf8_lossy(&out.stderr))
}

fn succeeded(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
}

/// The app's pods, by the labels the operator puts on them.
async fn pods(client: &Client, ns: &str) -> anyhow::Result<Vec<Pod>> {
    let lp = ListParams::default().labels(&format!("app.kubernetes.io/name={APP}"));
    Ok(Api::<Pod>::namespaced(client.clone(), ns).list(&lp).await?.items)
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn suffix(pod: &str) -> &str {
    pod.rsplit('-').next().unwrap()
}

/// `aether logs -f` in the background, its output in files; killed if still running
/// when dropped.
struct Follow {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    _files: tempfile::TempDir,
}

impl Follow {
    fn start(dir: &Path, ns: &str) -> Self {
        let files = tempfile::tempdir().unwrap();
        let (out, err) = (files.path().join("out"), files.path().join("err"));
        let child = Command::new(aether_bin())
            .args(["logs", "-f", "-n", ns])
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .spawn()
            .expect("running aether logs -f");
        Self {
            child,
            out,
            err,
            _files: files,
        }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Wait until stdout holds `line`.
    async fn printed(&self, line: &str, timeout: Duration) -> anyhow::Result<()> {
        wait_until(&format!("aether logs -f to print {line:?}"), timeout, || async {
            let out = self.stdout();
            anyhow::ensure!(
                out.lines().any(|l| l == line),
                "it printed:\n{out}\nstderr:\n{}",
                self.stderr()
            );
            Ok(Some(()))
        })
        .await
    }
}

impl Drop for Follow {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn apps_scale_logs_and_delete_work_on_a_pushed_app() -> anyhow::Result<()> {
    with_temp_ns("day2", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), &format!("Hello, day 2 in {ns}!"))?;
        let dir = dir.path();
        // The new duration form on push.
        let run = tokio::task::block_in_place(|| aether(dir, &ns, &["push", "--timeout", "4m"]));
        assert_eq!(run.code, Some(0), "push failed:\n{}", run.stderr);
        let url = run.json["url"].as_str().unwrap().to_string();

        // 1. `aether apps`: the app, Ready, in JSON, YAML and the table.
        let json: serde_json::Value = serde_json::from_str(&succeeded(
            &cli(dir, &ns, &["apps", "-o", "json"]),
            "apps -o json",
        ))?;
        let items = json["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{json}");
        let item = &items[0];
        assert_eq!(item["name"], APP);
        assert_eq!(item["ready"], true, "{json}");
        assert_eq!(item["readyReplicas"], 1);
        assert_eq!(item["replicas"], 1);
        assert_eq!(item["url"].as_str(), Some(url.as_str()));
        let yaml: serde_json::Value = serde_yaml::from_str(&succeeded(
            &cli(dir, &ns, &["apps", "-o", "yaml"]),
            "apps -o yaml",
        ))?;
        assert_eq!(yaml, json, "YAML and JSON say the same");
        let table = succeeded(&cli(dir, &ns, &["apps"]), "apps");
        let header = table.lines().next().unwrap();
        for column in ["NAME", "READY", "REASON", "ARTIFACT", "REPLICAS", "URL", "AGE"] {
            assert!(header.contains(column), "{table}");
        }
        let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(&row[..3], [APP, "True", "Deployed"], "{table}");
        assert_eq!(row[4], "1/1", "{table}");
        assert_eq!(row[5], url, "{table}");

        // 2. kubectl's own wait understands the app's Ready condition.
        let wait = Command::new("kubectl")
            .args([
                "wait",
                "--for=condition=Ready",
                &format!("aetherapp/{APP}"),
                "--timeout=60s",
                "-n",
                &ns,
            ])
            .output()?;
        assert!(wait.status.success(), "{}", String::from_utf8_lossy(&wait.stderr));

        // 3. As a kubectl plugin: `kubectl aether` finds `kubectl-aether` on PATH.
        let bin = tempfile::tempdir()?;
        std::os::unix::fs::symlink(aether_bin().canonicalize()?, bin.path().join("kubectl-aether"))?;
        let path = format!(
            "{}:{}",
            bin.path().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let plugin = |args: &[&str]| {
            Command::new("kubectl")
                .arg("aether")
                .args(args)
                .env("PATH", &path)
                .current_dir(dir)
                .output()
                .unwrap()
        };
        let listed = succeeded(&plugin(&["apps", "-n", &ns]), "kubectl aether apps");
        assert!(
            listed.lines().any(|l| l.starts_with(APP) && l.contains("True")),
            "{listed}"
        );
        let help = succeeded(&plugin(&["scale", "--help"]), "kubectl aether scale --help");
        assert!(help.contains("Usage: kubectl aether scale"), "{help}");

        // 4. `aether logs`: what the app printed, prefixed with its pod.
        let first = pods(&client, &ns).await?;
        assert_eq!(first.len(), 1);
        let first = first[0].name_any();
        let logs = succeeded(&cli(dir, &ns, &["logs"]), "logs");
        let expected = format!("[{}] {LISTENING}", suffix(&first));
        assert!(logs.lines().any(|l| l == expected), "no {expected:?} in:\n{logs}");

        // 5. `aether logs -f` runs across a scale: the new pod's lines appear too.
        let follow = Follow::start(dir, &ns);
        follow.printed(&expected, Duration::from_secs(30)).await?;
        let scaled =
            tokio::task::block_in_place(|| cli(dir, &ns, &["scale", "2", "--timeout", "3m", "-o", "json"]));
        let scaled: serde_json::Value = serde_json::from_str(&succeeded(&scaled, "scale 2"))?;
        assert_eq!(scaled["readyReplicas"], 2, "{scaled}");
        // What the user notices: the Deployment asks for two pods, and two are ready.
        let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get(APP)
            .await?;
        assert_eq!(deployment.spec.unwrap().replicas, Some(2));
        let now = pods(&client, &ns).await?;
        assert_eq!(
            now.iter().filter(|p| is_ready(p)).count(),
            2,
            "scale returned before two pods were ready"
        );
        let second = now.iter().map(|p| p.name_any()).find(|n| *n != first).unwrap();
        follow
            .printed(
                &format!("[{}] {LISTENING}", suffix(&second)),
                Duration::from_secs(30),
            )
            .await?;

        // 6. Without a terminal and without --yes, delete refuses, and nothing goes.
        let refused = cli(dir, &ns, &["delete"]);
        assert_eq!(refused.status.code(), Some(2), "{}", said(&refused));
        let why = said(&refused);
        assert!(
            why.contains(&format!("refusing to delete app {APP} in namespace {ns}")),
            "{why}"
        );
        assert!(why.contains("pass --yes"), "{why}");
        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);
        assert!(
            apps.get_opt(APP).await?.is_some(),
            "delete without --yes deleted the app"
        );

        // 7. `delete --yes` returns once the app and its pods are gone.
        let deleted = tokio::task::block_in_place(|| cli(dir, &ns, &["delete", "--yes", "--timeout", "3m"]));
        succeeded(&deleted, "delete --yes");
        assert!(apps.get_opt(APP).await?.is_none(), "the app is still there");
        let left: Vec<String> = pods(&client, &ns).await?.iter().map(|p| p.name_any()).collect();
        assert!(left.is_empty(), "pods left after delete returned: {left:?}");

        // 8. ... and `logs -f` ended by itself, cleanly, saying why.
        let mut follow = follow;
        let status = wait_until("aether logs -f to end", Duration::from_secs(30), || {
            let exited = follow.child.try_wait();
            async move { Ok(exited?) }
        })
        .await?;
        assert!(
            status.success(),
            "logs -f exited {status:?}:\n{}",
            follow.stderr()
        );
        assert!(follow.stderr().contains("was deleted"), "{}", follow.stderr());

        // 9. A missing app is an error naming it and the namespace.
        let missing = cli(dir, &ns, &["logs"]);
        let why = said(&missing);
        assert_eq!(missing.status.code(), Some(12), "{why}");
        assert!(why.contains(&format!("no app {APP} in namespace {ns}")), "{why}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn autoscaling_holds_its_bounds_and_does_not_fight_replicas_kept_in_git() -> anyhow::Result<()> {
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    with_temp_ns("autoscale", |client: Client, ns: String| async move {
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "scaled")?;
        succeeded(&cli(dir.path(), &ns, &["push", "--timeout", "4m"]), "push");

        // As a GitOps tool keeping `replicas: 1` in Git applies the app.
        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);
        let git = |autoscaling: serde_json::Value| {
            let apps = apps.clone();
            async move {
                let mut manifest = serde_json::json!({
                    "apiVersion": "aether.dev/v1alpha1", "kind": "AetherApp",
                    "metadata": {"name": APP},
                    "spec": {"replicas": 1},
                });
                // Left out of the manifest, the field goes (the tool owned it).
                if !autoscaling.is_null() {
                    manifest["spec"]["autoscaling"] = autoscaling;
                }
                let gitops = PatchParams::apply("kustomize-controller").force();
                apps.patch(APP, &gitops, &Patch::Apply(&manifest)).await
            }
        };
        git(serde_json::json!({"minReplicas": 2, "maxReplicas": 3})).await?;
        let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
        let hpa = wait_until("the app's autoscaler", Duration::from_secs(60), || async {
            Ok(hpas.get_opt(APP).await?)
        })
        .await?;
        let spec = hpa.spec.unwrap();
        assert_eq!(
            (
                spec.scale_target_ref.kind.as_str(),
                spec.scale_target_ref.name.as_str()
            ),
            ("Deployment", APP)
        );
        assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 3));

        // The app is raised to its minimum (no metrics needed for that) while Git's
        // `replicas: 1` stays as it is.
        let ready_pods = || async {
            Ok::<_, anyhow::Error>(pods(&client, &ns).await?.iter().filter(|p| is_ready(p)).count())
        };
        wait_until("two ready pods", Duration::from_secs(180), || async {
            Ok((ready_pods().await? == 2).then_some(()))
        })
        .await?;
        assert_eq!(
            apps.get(APP).await?.spec.replicas,
            1,
            "Git's value is not rewritten"
        );

        // The autoscaler raises the count (done here through the Deployment's scale
        // subresource, as it does, since the local cluster has no metrics); then the
        // GitOps tool applies again and a new release rolls out: the count holds.
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let scale = Patch::Merge(serde_json::json!({"spec": {"replicas": 3}}));
        let autoscaler = PatchParams {
            field_manager: Some("horizontal-pod-autoscaler".into()),
            ..Default::default()
        };
        deployments.patch_scale(APP, &autoscaler, &scale).await?;
        wait_until("three ready pods", Duration::from_secs(180), || async {
            Ok((ready_pods().await? == 3).then_some(()))
        })
        .await?;
        git(serde_json::json!({"minReplicas": 2, "maxReplicas": 3})).await?;
        set_greeting(dir.path(), "scaled again")?;
        succeeded(&cli(dir.path(), &ns, &["push", "--timeout", "4m"]), "second push");
        let replicas = deployments.get(APP).await?.spec.unwrap().replicas;
        assert_eq!(replicas, Some(3), "the Deployment keeps the autoscaler's count");
        wait_until(
            "three ready pods after the rollout",
            Duration::from_secs(60),
            || async { Ok((ready_pods().await? == 3).then_some(())) },
        )
        .await?;
        let listed = stdout(&cli(dir.path(), &ns, &["apps"]));
        assert!(listed.contains("3/3 (2-3)"), "{listed}");

        // `aether scale` does not fight the autoscaler.
        let refused = cli(dir.path(), &ns, &["scale", "1"]);
        assert_eq!(refused.status.code(), Some(13), "{}", said(&refused));
        assert!(
            said(&refused).contains("autoscaled between 2 and 3"),
            "{}",
            said(&refused)
        );

        // Without autoscaling, the autoscaler goes and Git's count holds again.
        git(serde_json::Value::Null).await?;
        wait_until("the autoscaler gone", Duration::from_secs(60), || async {
            Ok(hpas.get_opt(APP).await?.is_none().then_some(()))
        })
        .await?;
        wait_until("one pod, as Git says", Duration::from_secs(120), || async {
            let d = deployments.get(APP).await?;
            let total = d.status.and_then(|s| s.replicas).unwrap_or(0);
            Ok((d.spec.unwrap().replicas == Some(1) && total == 1).then_some(()))
        })
        .await?;
        Ok(())
    })
    .await
}

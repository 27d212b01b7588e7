//! `make chaos`: the operator crashes at random points while apps are pushed and
//! deployed, again and again; afterwards nothing is lost, doubled or left open.
//!
//! The operator runs with `AETHER_CRASH_WITHIN` (operator/src/faults.rs): each process
//! aborts at a random one of the next N fault points it passes, between the steps of
//! its reconciles. An abort is what SIGKILL would be there (nothing runs after it: no
//! graceful shutdown, no Lease handover), at the places that matter; a Kubernetes API
//! cannot send SIGKILL, and the image has no shell to send one from. Each crashed
//! pod is replaced at once (the kubelet would otherwise back off for minutes), with
//! one replica and leader election off so that a replacement does not wait for a dead
//! leader's Lease (the failover test covers the Lease). Multipart uploads start at
//! 1 KiB, so every upload is one that a crash can leave open. An exit other than the
//! injected abort (a panic, an OOM kill) is a violation.
//!
//! Meanwhile three apps are pushed, each push a code change, retried as a user would
//! when it fails; a push cut short when the faults stop is run once more. Then, with
//! the operator as it always runs:
//! - every app is Ready and serves its last push, from one Deployment;
//! - no artifact was rolled out twice (two ReplicaSets of one artifact, or one brought
//!   back), and the Deployment's revision is at most the number of changes;
//! - every kept AetherRelease names an artifact that exists and is Ready; an artifact
//!   that is not Ready waits for an upload (a push given up on), and only such an
//!   artifact has a multipart upload open.
//!
//! The test ends with `N faults injected, M invariant violations`. A test binary of
//! its own, run by `make chaos` (in `make test`), not `make e2e`: nothing else runs
//! while the operator crashes. It restores the operator's environment whatever
//! happens, and a later run repairs what an interrupted one left.
//!
//! `AETHER_CHAOS_FAULTS` (50): faults to inject; `AETHER_CHAOS_CRASH_WITHIN` (60).

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aether_crds::pod::ARTIFACT_ANNOTATION;
use aether_crds::{AetherApp, AetherArtifact, AetherRelease, condition};
use aether_e2e::app::{aether, body, example_app, set_greeting};
use aether_e2e::storage::{StorageSettings, open_uploads};
use aether_e2e::{client, wait_until, with_temp_ns};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client, ResourceExt};

const APPS: [&str; 3] = ["chaos-a", "chaos-b", "chaos-c"];
const OPERATOR: &str = "aether-operator";
/// What this test sets in the operator's environment.
const CHAOS_ENV: [&str; 3] = [
    "AETHER_CRASH_WITHIN",
    "AETHER_LEADER_ELECTION",
    "AETHER_MULTIPART_THRESHOLD_BYTES",
];

fn operator_ns() -> String {
    std::env::var("AETHER_OPERATOR_NAMESPACE").unwrap_or_else(|_| "aether-system".into())
}

fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The operator's replicas, its container's env, and where that is in the pod template.
async fn operator_env(client: &Client) -> anyhow::Result<(i32, usize, Vec<EnvVar>)> {
    let deployment = Api::<Deployment>::namespaced(client.clone(), &operator_ns())
        .get(OPERATOR)
        .await?;
    let spec = deployment.spec.unwrap();
    let containers = spec.template.spec.unwrap().containers;
    let index = containers
        .iter()
        .position(|c| c.name == "operator")
        .ok_or_else(|| anyhow::anyhow!("the {OPERATOR} Deployment has no container named operator"))?;
    Ok((
        spec.replicas.unwrap_or(1),
        index,
        containers[index].env.clone().unwrap_or_default(),
    ))
}

async fn scale_operator(client: &Client, replicas: i32) -> anyhow::Result<()> {
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    Api::<Deployment>::namespaced(client.clone(), &operator_ns())
        .patch_scale(OPERATOR, &PatchParams::default(), &Patch::Merge(&patch))
        .await?;
    Ok(())
}

/// Replace the operator container's env; `wait` until the rollout is done.
async fn set_operator_env(client: &Client, index: usize, env: &[EnvVar], wait: bool) -> anyhow::Result<()> {
    let patch = serde_json::json!([{
        "op": "replace",
        "path": format!("/spec/template/spec/containers/{index}/env"),
        "value": env,
    }]);
    Api::<Deployment>::namespaced(client.clone(), &operator_ns())
        .patch(
            OPERATOR,
            &PatchParams::default(),
            &Patch::Json::<()>(serde_json::from_value(patch)?),
        )
        .await?;
    if !wait {
        return Ok(());
    }
    let out = tokio::process::Command::new("kubectl")
        .args([
            "-n",
            &operator_ns(),
            "rollout",
            "status",
            "deployment",
            OPERATOR,
            "--timeout=180s",
        ])
        .output()
        .await?;
    anyhow::ensure!(
        out.status.success(),
        "operator rollout: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A rollout is done before the old ReplicaSet's last pods are gone (one it had
    // just started to replace a killed pod, still running its shutdown): wait until
    // every operator pod is of the new template, so that no operator of the chaos
    // environment (without leader election) acts beside the restored one.
    let rollout = deployment_hash(client).await?;
    aether_e2e::wait_until(
        "the old operator pods to be gone",
        Duration::from_secs(120),
        || {
            let (client, rollout) = (client.clone(), rollout.clone());
            async move {
                let pods = Api::<Pod>::namespaced(client, &operator_ns())
                    .list(&ListParams::default().labels("app.kubernetes.io/name=aether-operator"))
                    .await?
                    .items;
                let old = pods
                    .iter()
                    .filter(|p| p.labels().get("pod-template-hash") != Some(&rollout))
                    .count();
                Ok((old == 0).then_some(()))
            }
        },
    )
    .await
}

/// The pod-template-hash of the operator Deployment's newest ReplicaSet.
async fn deployment_hash(client: &Client) -> anyhow::Result<String> {
    let sets = Api::<ReplicaSet>::namespaced(client.clone(), &operator_ns())
        .list(&ListParams::default().labels("app.kubernetes.io/name=aether-operator"))
        .await?
        .items;
    let newest = sets
        .iter()
        .max_by_key(|rs| {
            rs.annotations()
                .get("deployment.kubernetes.io/revision")
                .and_then(|r| r.parse::<i64>().ok())
                .unwrap_or(0)
        })
        .and_then(|rs| rs.labels().get("pod-template-hash").cloned());
    newest.ok_or_else(|| anyhow::anyhow!("the operator has no ReplicaSet"))
}

fn with_env(mut env: Vec<EnvVar>, name: &str, value: String) -> Vec<EnvVar> {
    env.retain(|e| e.name != name);
    env.push(EnvVar {
        name: name.into(),
        value: Some(value),
        value_from: None,
    });
    env
}

/// The termination message of an injected crash (operator/src/faults.rs).
const INJECTED: &str = "crash injected at fault point";

/// Crashes seen in a pod (its restarts, and one more while it is down), and how the
/// last one ended: whether it was injected, and its exit code.
fn crashes(pod: &Pod) -> (usize, bool, Option<i32>) {
    let Some(cs) = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|cs| cs.iter().find(|c| c.name == "operator"))
    else {
        return (0, false, None);
    };
    let terminated = cs
        .state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .or_else(|| cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()));
    let down = cs.state.as_ref().is_some_and(|s| s.running.is_none()) && terminated.is_some();
    let n = usize::try_from(cs.restart_count).unwrap_or(0) + usize::from(down);
    let injected = terminated
        .and_then(|t| t.message.as_deref())
        .is_some_and(|m| m.starts_with(INJECTED));
    (n, injected, terminated.map(|t| t.exit_code))
}

/// Replace every operator pod that crashed, counting the crashes, until `stop`.
/// Returns the exits that were not injected (a panic, an OOM kill).
async fn reap(
    client: Client,
    faults: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<String>> {
    let pods: Api<Pod> = Api::namespaced(client, &operator_ns());
    let selector = ListParams::default().labels("app.kubernetes.io/name=aether-operator");
    // Crashes counted per pod: a pod is seen again until its deletion shows.
    let mut counted: std::collections::HashMap<String, usize> = Default::default();
    let mut other_exits = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The API server may be slow under the churn: look again rather than stop.
        let Ok(list) = pods.list(&selector).await else {
            continue;
        };
        for pod in list.items {
            let (n, injected, code) = crashes(&pod);
            if n == 0 || pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            let seen = counted.entry(pod.uid().unwrap_or_default()).or_default();
            faults.fetch_add(n.saturating_sub(*seen), Ordering::SeqCst);
            *seen = n.max(*seen);
            if !injected {
                other_exits.push(format!("{} exited with {code:?}", pod.name_any()));
            }
            let _ = pods
                .delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
                .await;
        }
    }
    Ok(other_exits)
}

/// What one app's pusher did.
#[derive(Debug, Default)]
struct Pushed {
    /// Code changes attempted (each retried until it served, or the time ran out).
    changes: usize,
    /// The greeting of the last push that succeeded.
    last_served: Option<String>,
    /// The greeting of the last push tried.
    last_tried: Option<String>,
    failed_pushes: usize,
}

/// Push `app` again and again, each time a new greeting, until `enough`.
fn push_until(dir: &Path, ns: &str, app: &str, enough: &AtomicBool, deadline: Instant) -> Pushed {
    let mut pushed = Pushed::default();
    let mut change = 0;
    while !enough.load(Ordering::SeqCst) && Instant::now() < deadline {
        change += 1;
        let greeting = format!("{app} change {change}");
        set_greeting(dir, &greeting).unwrap();
        pushed.changes += 1;
        pushed.last_tried = Some(greeting.clone());
        // Retried as a user would: the same code is the same artifact, not a new change.
        for _ in 0..5 {
            let run = aether(dir, ns, &["push", "--app", app, "--timeout", "60s"]);
            if run.code == Some(0) {
                pushed.last_served = Some(greeting.clone());
                break;
            }
            pushed.failed_pushes += 1;
            println!(
                "{app}: push of {greeting:?} failed ({:?}), again: {}",
                run.code, run.stderr
            );
            if Instant::now() >= deadline || enough.load(Ordering::SeqCst) {
                break;
            }
        }
    }
    pushed
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make chaos`"]
async fn operator_crashes_during_pushes_and_deploys_lose_nothing() -> anyhow::Result<()> {
    let client = client().await?;
    let wanted_faults = setting("AETHER_CHAOS_FAULTS", 50);
    let within = setting("AETHER_CHAOS_CRASH_WITHIN", 60);
    let (replicas, index, original) = operator_env(&client).await?;
    // As the operator runs normally, even after an earlier run of this test was cut
    // short before it could restore it.
    let original: Vec<EnvVar> = original
        .into_iter()
        .filter(|e| !CHAOS_ENV.contains(&e.name.as_str()))
        .collect();

    with_temp_ns("chaos", move |client, ns| async move {
        // Each app installs its dependencies once, before the faults start.
        let root = tempfile::tempdir()?;
        let dirs: Vec<PathBuf> = APPS.iter().map(|a| root.path().join(a)).collect();
        for (dir, app) in dirs.iter().zip(APPS) {
            std::fs::create_dir_all(dir)?;
            example_app(dir, &format!("{app} change 0"))?;
        }

        let chaos = with_env(original.clone(), "AETHER_CRASH_WITHIN", within.to_string());
        let chaos = with_env(chaos, "AETHER_LEADER_ELECTION", "false".into());
        let chaos = with_env(chaos, "AETHER_MULTIPART_THRESHOLD_BYTES", "1024".into());

        // One replica: with leader election off, two would both reconcile.
        scale_operator(&client, 1).await?;
        // The reaper first: a new pod may crash before it is ever Ready.
        let faults = Arc::new(AtomicUsize::new(0));
        let stop_reaper = Arc::new(AtomicBool::new(false));
        let reaper = tokio::spawn(reap(client.clone(), faults.clone(), stop_reaper.clone()));
        let started = Instant::now();
        let chaos_phase = async {
            set_operator_env(&client, index, &chaos, false).await?;
            let enough = Arc::new(AtomicBool::new(false));
            let deadline = started + Duration::from_secs(600);
            let pushers: Vec<_> = dirs
                .iter()
                .zip(APPS)
                .map(|(dir, app)| {
                    let (dir, ns, enough) = (dir.clone(), ns.clone(), enough.clone());
                    tokio::task::spawn_blocking(move || push_until(&dir, &ns, app, &enough, deadline))
                })
                .collect();
            while faults.load(Ordering::SeqCst) < wanted_faults && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            enough.store(true, Ordering::SeqCst);
            let mut results = Vec::new();
            for p in pushers {
                results.push(p.await?);
            }
            anyhow::Ok(results)
        }
        .await;
        let chaos_took = started.elapsed();

        // The operator as it always runs, whatever happened above; a crash still in
        // flight is reaped meanwhile.
        let restored = set_operator_env(&client, index, &original, true).await;
        stop_reaper.store(true, Ordering::SeqCst);
        let reaped = reaper.await;
        let scaled = scale_operator(&client, replicas).await;
        restored?;
        scaled?;
        let other_exits = reaped??;
        let mut results = chaos_phase?;
        let injected = faults.load(Ordering::SeqCst);
        println!(
            "{injected} faults in {:.0} s; changes and failed pushes per app: {:?}",
            chaos_took.as_secs_f64(),
            results
                .iter()
                .map(|r| (r.changes, r.failed_pushes))
                .collect::<Vec<_>>()
        );

        // A push cut short by the end of the faults is what a user would run again.
        for ((dir, app), pushed) in dirs.iter().zip(APPS).zip(&mut results) {
            if pushed.last_served != pushed.last_tried {
                let run = tokio::task::block_in_place(|| {
                    aether(dir, &ns, &["push", "--app", app, "--timeout", "120s"])
                });
                anyhow::ensure!(run.code == Some(0), "{app}: pushing again: {}", run.stderr);
                pushed.last_served = pushed.last_tried.clone();
            }
        }

        let mut violations = check_invariants(&client, &ns, &results).await?;
        violations.extend(
            other_exits
                .into_iter()
                .map(|e| format!("a crash not injected: {e}")),
        );
        for v in &violations {
            println!("invariant violated: {v}");
        }
        println!(
            "{injected} faults injected, {} invariant violations",
            violations.len()
        );
        anyhow::ensure!(
            violations.is_empty(),
            "{} invariant violations: {violations:#?}",
            violations.len()
        );
        anyhow::ensure!(
            injected >= wanted_faults,
            "only {injected} of {wanted_faults} faults in {chaos_took:?}"
        );
        Ok(())
    })
    .await
}

/// Every invariant that does not hold, as a sentence.
async fn check_invariants(client: &Client, ns: &str, results: &[Pushed]) -> anyhow::Result<Vec<String>> {
    let mut violations = Vec::new();
    let mut released = BTreeSet::new();
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), ns);
    for (app, pushed) in APPS.iter().zip(results) {
        // Ready, and serving its last push (or, if that push failed for good, the one
        // before it: the failed one may have been applied or not).
        let ready = wait_until(&format!("{app} Ready"), Duration::from_secs(180), || {
            let apps = apps.clone();
            async move {
                let a = apps.get(app).await?;
                let ready = a
                    .status
                    .as_ref()
                    .is_some_and(|s| condition::is_true(&s.conditions, condition::READY));
                Ok(ready.then_some(a))
            }
        })
        .await;
        let app_obj = match ready {
            Ok(a) => a,
            Err(e) => {
                violations.push(format!("{app} is not Ready: {e:#}"));
                continue;
            }
        };
        let url = app_obj
            .status
            .as_ref()
            .and_then(|s| s.url.clone())
            .unwrap_or_default();
        let expected = format!("{}\n", pushed.last_served.clone().unwrap_or_default());
        let serves = wait_until(
            &format!("{app} to serve {expected:?}"),
            Duration::from_secs(60),
            || {
                let (expected, url) = (expected.clone(), url.clone());
                async move {
                    let answer = body(client, ns, app, &url).await?;
                    anyhow::ensure!(answer == expected, "it answered {answer:?}");
                    Ok(Some(()))
                }
            },
        )
        .await;
        if let Err(e) = serves {
            violations.push(format!("{app} does not serve its last push: {e:#}"));
        }

        let deployments = Api::<Deployment>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={app}")))
            .await?
            .items;
        if deployments.len() != 1 {
            violations.push(format!("{app} has {} Deployments", deployments.len()));
        }
        // Each change: one new pod template, no more. (A ReplicaSet per template;
        // the Deployment keeps the last few.)
        let sets = Api::<ReplicaSet>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={app}")))
            .await?
            .items;
        let mut rolled: BTreeMap<String, usize> = BTreeMap::new();
        for set in &sets {
            let artifact = set
                .spec
                .as_ref()
                .and_then(|s| s.template.as_ref())
                .and_then(|t| t.metadata.as_ref())
                .and_then(|m| m.annotations.as_ref())
                .and_then(|a| a.get(ARTIFACT_ANNOTATION))
                .cloned()
                .unwrap_or_default();
            *rolled.entry(artifact).or_default() += 1;
        }
        for (artifact, n) in rolled.iter().filter(|(_, n)| **n > 1) {
            violations.push(format!("{app} rolled out {artifact} {n} times"));
        }
        // A ReplicaSet brought back (A, B, then A again) keeps its old revisions.
        for set in &sets {
            if let Some(history) = set.annotations().get("deployment.kubernetes.io/revision-history") {
                violations.push(format!(
                    "{app}: ReplicaSet {} rolled out again (revisions {history})",
                    set.name_any()
                ));
            }
        }
        for d in &deployments {
            let revision: usize = d
                .annotations()
                .get("deployment.kubernetes.io/revision")
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            if revision > pushed.changes {
                violations.push(format!(
                    "{app}'s Deployment rolled out {revision} times for {} changes",
                    pushed.changes
                ));
            }
        }
    }

    let artifacts = Api::<AetherArtifact>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items;
    // Every release kept names an artifact that is there, and Ready.
    for r in Api::<AetherRelease>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await?
        .items
    {
        released.insert(r.spec.artifact.name.clone());
    }
    // Artifacts still waiting for an upload: pushes given up when the faults stopped.
    let mut waiting = BTreeSet::new();
    for a in &artifacts {
        let ready = a
            .status
            .as_ref()
            .is_some_and(|s| condition::is_true(&s.conditions, condition::READY));
        if ready {
            continue;
        }
        let reason = a
            .status
            .as_ref()
            .and_then(|s| condition::find(&s.conditions, condition::READY))
            .map(|c| format!("{}: {}", c.reason, c.message))
            .unwrap_or_default();
        let awaiting = reason
            .split(':')
            .next()
            .is_some_and(condition::artifact::in_progress);
        if released.contains(&a.name_any()) || !awaiting {
            violations.push(format!("artifact {} is not Ready ({reason})", a.name_any()));
        } else {
            waiting.insert(a.uid().unwrap_or_default());
        }
    }
    let names: BTreeSet<String> = artifacts.iter().map(|a| a.name_any()).collect();
    for missing in released.difference(&names) {
        violations.push(format!("released artifact {missing} is gone"));
    }

    // An open multipart upload is fine only while its artifact waits for it.
    let storage = StorageSettings::from_env()?.host();
    // (Where the operator stores this namespace's blobs, or this looks nowhere.)
    let blobs = storage
        .client()
        .list_objects_v2()
        .bucket(storage.bucket())
        .prefix(format!("{}/blobs/", aether_e2e::storage::namespace_prefix(ns)))
        .max_keys(1)
        .send()
        .await?;
    anyhow::ensure!(
        !blobs.contents().is_empty(),
        "no blob under {}: is AETHER_S3_PREFIX the operator's?",
        aether_e2e::storage::namespace_prefix(ns)
    );
    let uploads = format!("{}/uploads/", aether_e2e::storage::namespace_prefix(ns));
    let leaked: Vec<String> = open_uploads(&storage, ns)
        .await?
        .into_iter()
        .filter(|key| {
            let uid = key.strip_prefix(&uploads).and_then(|k| k.split('/').next());
            !uid.is_some_and(|uid| waiting.contains(uid))
        })
        .collect();
    if !leaked.is_empty() {
        violations.push(format!("multipart uploads left open: {leaked:?}"));
    }
    Ok(violations)
}

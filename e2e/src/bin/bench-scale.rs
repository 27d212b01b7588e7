//! `make bench`'s scale figures (issue: 1000 apps). In a fresh namespace: one
//! `aether push --no-deploy` of a small app (a one-file server without
//! dependencies; BENCH_PROJECT=example takes examples/express-api, whose 10 MiB
//! dependency layer each artifact's verification reads again) uploads its blobs,
//! then APPS (1000) AetherApps
//! with `replicas: 0` are applied at once, each with its own AetherArtifact (the
//! pushed spec, signed for that app with your signing key, so every app is
//! verified on its own). The operator is restarted as soon as they are all written.
//! Prints, and writes to BENCH_JSON (target/bench/scale.json): seconds from the
//! restart until the operator has reconciled every app (its release applied: the
//! app's Ready condition, for its generation, says RollingOut or Deployed; also per
//! second the bench took to write the apps and artifacts just before, as the same
//! API server's pace at that moment varies from run to run), until
//! Kubernetes' Deployment controller has observed every Deployment, and until every
//! app is Ready (which waits for that controller: kube-controller-manager's client
//! makes 20 requests a second by default, about four per new Deployment), the
//! operator's peak and settled resident
//! memory (its `aether_operator_resident_memory_bytes`, read through the API
//! server), and whether another namespace's app deployed meanwhile. Then, at rest:
//! reconciles per app per minute, and after a second restart the seconds until the
//! operator has looked at every app and artifact again. Last, the namespace is
//! deleted: the seconds until it is gone (each artifact's finalizer frees its
//! blobs). The operator's memory peak is printed for those two as well. A benchmark
//! that prints numbers, not a test: it fails only when something does not happen.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use aether_artifact::Digest;
use aether_artifact::signature::SigningKey;
use aether_crds::{AetherApp, AetherArtifact, Signature};
use aether_e2e::app::{aether, example_app};
use anyhow::Context as _;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{reflector, watcher};
use kube::{Api, Client, ResourceExt};

const APP: &str = "scale";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let apps_wanted: usize = std::env::var("APPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let out = PathBuf::from(std::env::var("BENCH_JSON").unwrap_or_else(|_| "target/bench/scale.json".into()));
    let operator_ns = std::env::var("AETHER_OPERATOR_NAMESPACE").unwrap_or_else(|_| "aether-system".into());
    let client = aether_e2e::client().await?;
    let ns = aether_e2e::enabled_namespace(&client, "aether-scale", "bench-scale").await?;
    let other = aether_e2e::enabled_namespace(&client, "aether-scale-other", "bench-scale").await?;
    let result = run(&client, &ns, &other, &operator_ns, apps_wanted, &out).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    for name in [&ns, &other] {
        let _ = namespaces.delete(name, &DeleteParams::background()).await;
    }
    result
}

async fn run(
    client: &Client,
    ns: &str,
    other: &str,
    operator_ns: &str,
    count: usize,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    if std::env::var("BENCH_PROJECT").as_deref() == Ok("example") {
        example_app(dir.path(), "scale")?;
    } else {
        small_app(dir.path())?;
    }
    eprintln!("pushing the app once (its blobs serve every app)");
    let first = push(dir.path(), ns, &format!("{APP}-0"))?;
    let arts: Api<AetherArtifact> = Api::namespaced(client.clone(), ns);
    let template = arts.get(&first).await?;
    let key_path = std::env::var("AETHER_SIGNING_KEY")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".config/aether/signing-key.pem")
        });
    let key = SigningKey::from_pem(
        &std::fs::read_to_string(&key_path).with_context(|| format!("reading {}", key_path.display()))?,
    )?;
    let digest: Digest = template
        .spec
        .digest
        .parse()
        .context("the pushed artifact's digest")?;

    let base = rss(client, operator_ns).await?;
    eprintln!(
        "applying {count} apps with their artifacts (operator at {} MiB)",
        base >> 20
    );
    let started = Instant::now();
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), ns);
    futures::stream::iter(0..count)
        .map(|i| {
            let (arts, apps, template, key) = (arts.clone(), apps.clone(), template.clone(), &key);
            async move {
                let app = format!("{APP}-{i}");
                let name = format!("{app}-{}", &digest.hex()[..12]);
                let mut spec = template.spec.clone();
                spec.app = app.clone();
                spec.signature = Some(Signature {
                    key_id: key.public_key().key_id(),
                    value: key.sign(&digest, ns, &app),
                });
                let mut art = AetherArtifact::new(&name, spec);
                // As `aether push` creates it.
                art.metadata.finalizers = Some(vec![aether_crds::BLOBS_FINALIZER.to_string()]);
                match arts.create(&PostParams::default(), &art).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(anyhow::Error::from(e)),
                }
                let body = serde_json::json!({
                    "apiVersion": "aether.dev/v1alpha1", "kind": "AetherApp",
                    "metadata": {"name": app},
                    "spec": {"artifactRef": {"name": name}, "replicas": 0},
                });
                apps.patch(&app, &PatchParams::apply("bench-scale"), &Patch::Apply(&body))
                    .await?;
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    // The same API server's pace at writing, just before: what the restart's figure
    // is measured against (it varied by 1.8x between runs of the same code).
    let written = started.elapsed();
    eprintln!(
        "written in {:.1} s; restarting the operator",
        written.as_secs_f64()
    );

    let pods: Api<Pod> = Api::namespaced(client.clone(), operator_ns);
    let operators = ListParams::default().labels("app.kubernetes.io/name=aether-operator");
    for pod in pods.list(&operators).await? {
        pods.delete(&pod.name_any(), &DeleteParams::default()).await?;
    }
    let restarted = Instant::now();
    let requests_before = api_requests(client).await.ok();

    // Meanwhile another tenant deploys: it must not wait for this namespace.
    let other_dir = tempfile::tempdir()?;
    example_app(other_dir.path(), "other")?;
    let other_run = {
        let dir = other_dir.path().to_path_buf();
        let other = other.to_string();
        tokio::task::spawn_blocking(move || {
            let began = Instant::now();
            let run = aether(&dir, &other, &["push", "--timeout", "10m"]);
            (run.code, began.elapsed())
        })
    };

    // Watched, not listed again and again: a thousand apps listed every second
    // would be load of the bench's own on the API server it measures.
    let (app_store, app_writer) = reflector::store::<AetherApp>();
    let app_watch = reflector(app_writer, watcher(apps.clone(), watcher::Config::default()));
    let (deployment_store, deployment_writer) = reflector::store::<Deployment>();
    let deployment_watch = reflector(
        deployment_writer,
        watcher(
            Api::<Deployment>::namespaced(client.clone(), ns),
            watcher::Config::default(),
        ),
    );
    let watches = tokio::spawn(futures::future::join(
        app_watch.for_each(|_| futures::future::ready(())),
        deployment_watch.for_each(|_| futures::future::ready(())),
    ));
    let mut peak = 0u64;
    let (mut reconciled_at, mut observed_at) = (None, None);
    let mut said = Instant::now();
    let mut now_mib = 0;
    let all_ready = loop {
        if let Ok(bytes) = rss(client, operator_ns).await {
            peak = peak.max(bytes);
            now_mib = bytes >> 20;
        }
        let apps_now = app_store.state();
        let ready = apps_now
            .iter()
            .filter(|a| {
                a.status
                    .as_ref()
                    .is_some_and(|s| aether_crds::condition::is_true(&s.conditions, "Ready"))
            })
            .count();
        let reconciled = apps_now
            .iter()
            .filter(|a| app_is(a, &["Deployed", "RollingOut"]))
            .count();
        let observed = deployment_store
            .state()
            .iter()
            .filter(|d| {
                d.status.as_ref().and_then(|s| s.observed_generation).is_some()
                    && d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation
            })
            .count();
        if reconciled >= count && reconciled_at.is_none() {
            reconciled_at = Some(restarted.elapsed());
        }
        if observed >= count && observed_at.is_none() {
            observed_at = Some(restarted.elapsed());
        }
        if ready >= count {
            break restarted.elapsed();
        }
        anyhow::ensure!(
            restarted.elapsed() < Duration::from_secs(900),
            "{ready} of {count} apps Ready 15 minutes after the restart"
        );
        if said.elapsed() >= Duration::from_secs(5) {
            said = Instant::now();
            eprintln!(
                "  after {:.0} s: {reconciled}/{count} reconciled, {observed} Deployments observed, {ready} Ready; operator {now_mib} MiB",
                restarted.elapsed().as_secs_f64()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    watches.abort();
    let reconciled_at = reconciled_at.unwrap_or(all_ready);
    let observed_at = observed_at.unwrap_or(all_ready);
    // What it took: the operator's reconciles (its counters start at the restart)
    // and the API server's requests from every client (the operator's most of them).
    let (app_passes, artifact_passes) = reconciles(client, operator_ns).await.unwrap_or_default();
    let requests = match (requests_before, api_requests(client).await.ok()) {
        (Some(before), Some(after)) => Some(requests_per_app(&before, &after, count)),
        _ => None,
    };
    let (other_code, other_took) = other_run.await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let settled = rss(client, operator_ns).await?;

    eprintln!("at rest for a minute");
    let before = reconciles(client, operator_ns).await?;
    tokio::time::sleep(Duration::from_secs(60)).await;
    let after = reconciles(client, operator_ns).await?;
    let per_app_minute = (after.0 + after.1).saturating_sub(before.0 + before.1) as f64 / count as f64;

    eprintln!("restarting the operator at rest");
    let old: Vec<String> = pods
        .list(&operators)
        .await?
        .iter()
        .map(|p| p.name_any())
        .collect();
    for pod in &old {
        pods.delete(pod, &DeleteParams::default()).await?;
    }
    let restarted = Instant::now();
    // Counters start at zero in the new process: wait until only it answers, then
    // for a pass over every app and artifact (its first list reconciles each once).
    loop {
        let now = pods.list(&operators).await?;
        if now.iter().all(|p| !old.contains(&p.name_any())) && !now.items.is_empty() {
            break;
        }
        anyhow::ensure!(
            restarted.elapsed() < Duration::from_secs(300),
            "the old operator pod did not go"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mut relook_peak = 0;
    let relooked = loop {
        relook_peak = relook_peak.max(rss(client, operator_ns).await.unwrap_or(0));
        if let Ok((apps_done, arts_done)) = reconciles(client, operator_ns).await
            && apps_done >= count as u64
            && arts_done >= count as u64
        {
            break restarted.elapsed();
        }
        anyhow::ensure!(
            restarted.elapsed() < Duration::from_secs(900),
            "the restarted operator had not looked at every app within 15 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    // Until 30 s after, as the last apps' looks may still be under way.
    for _ in 0..30 {
        relook_peak = relook_peak.max(rss(client, operator_ns).await.unwrap_or(0));
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    eprintln!("deleting the namespace");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces.delete(ns, &DeleteParams::background()).await?;
    let deleting = Instant::now();
    let mut delete_peak = 0;
    let deleted = loop {
        delete_peak = delete_peak.max(rss(client, operator_ns).await.unwrap_or(0));
        if namespaces.get_opt(ns).await?.is_none() {
            break deleting.elapsed();
        }
        anyhow::ensure!(
            deleting.elapsed() < Duration::from_secs(900),
            "the namespace was not gone 15 minutes after its deletion"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
    };

    let figures = serde_json::json!({
        "apps": count,
        "reconciledAfterRestartSeconds": reconciled_at.as_secs_f64(),
        "appsAndArtifactsWrittenSeconds": written.as_secs_f64(),
        "deploymentsObservedAfterRestartSeconds": observed_at.as_secs_f64(),
        "readyAfterRestartSeconds": all_ready.as_secs_f64(),
        "operatorPeakMiB": peak >> 20,
        "operatorSettledMiB": settled >> 20,
        "operatorIdleMiB": base >> 20,
        "reconcilesPerAppUntilReady": app_passes as f64 / count as f64,
        "artifactReconcilesPerArtifactUntilReady": artifact_passes as f64 / count as f64,
        "apiRequestsPerAppUntilReady": requests.as_ref().map(|r| r.0),
        "apiRequestsPerAppByKind": requests.as_ref().map(|r| &r.1),
        "otherTenantPushSeconds": other_took.as_secs_f64(),
        "otherTenantPushSucceeded": other_code == Some(0),
        "reconcilesPerAppMinuteAtRest": per_app_minute,
        "relookedAfterRestartAtRestSeconds": relooked.as_secs_f64(),
        "operatorPeakMiBRelooking": relook_peak >> 20,
        "namespaceDeletedSeconds": deleted.as_secs_f64(),
        "operatorPeakMiBDeleting": delete_peak >> 20,
    });
    if let Some((total, by_kind)) = &requests {
        eprintln!("API requests per app until all Ready: {total:.1}; the most:");
        for (kind, n) in by_kind.iter().take(12) {
            eprintln!("  {n:>6.2}  {kind}");
        }
    }
    eprintln!(
        "reconciles per app until all Ready: {:.2} (artifacts {:.2})",
        app_passes as f64 / count as f64,
        artifact_passes as f64 / count as f64
    );
    println!(
        "| apps | all reconciled after the restart (per second the bench took to write the apps and artifacts) | Deployments all observed / apps all Ready | operator memory peak / settled (idle) | another tenant's push meanwhile | reconciles per app per minute at rest | every app looked at again after a restart at rest (memory peak) | the namespace deleted (memory peak) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {count} | {:.1} s ({:.1}) | {:.1} s / {:.1} s | {} / {} MiB ({} MiB) | {:.1} s{} | {per_app_minute:.2} | {:.1} s ({} MiB) | {:.1} s ({} MiB) |",
        reconciled_at.as_secs_f64(),
        reconciled_at.as_secs_f64() / written.as_secs_f64(),
        observed_at.as_secs_f64(),
        all_ready.as_secs_f64(),
        peak >> 20,
        settled >> 20,
        base >> 20,
        other_took.as_secs_f64(),
        if other_code == Some(0) { "" } else { " (failed)" },
        relooked.as_secs_f64(),
        relook_peak >> 20,
        deleted.as_secs_f64(),
        delete_peak >> 20,
    );
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(out, serde_json::to_vec_pretty(&figures)?)?;
    eprintln!("wrote {}", out.display());
    Ok(())
}

/// Whether the operator says `reasons` in the app's Ready condition, for the app's
/// current generation.
fn app_is(app: &AetherApp, reasons: &[&str]) -> bool {
    app.status
        .as_ref()
        .and_then(|s| aether_crds::condition::find(&s.conditions, "Ready"))
        .is_some_and(|c| {
            reasons.contains(&c.reason.as_str()) && c.observed_generation == app.metadata.generation
        })
}

/// `aether push --no-deploy --app APP`: the Ready artifact's name.
fn push(dir: &std::path::Path, ns: &str, app: &str) -> anyhow::Result<String> {
    let run = aether(dir, ns, &["push", "--no-deploy", "--app", app, "--timeout", "5m"]);
    anyhow::ensure!(run.code == Some(0), "push failed: {}", run.stderr);
    Ok(run.json["artifact"]
        .as_str()
        .context("no artifact in the push's output")?
        .to_string())
}

/// The operator's resident memory, from its metrics.
async fn rss(client: &Client, operator_ns: &str) -> anyhow::Result<u64> {
    let text = metrics(client, operator_ns).await?;
    text.lines()
        .find_map(|l| l.strip_prefix("aether_operator_resident_memory_bytes "))
        .and_then(|v| v.trim().parse().ok())
        .context("the operator reports no aether_operator_resident_memory_bytes")
}

/// The operator's reconciles so far: (apps, artifacts).
async fn reconciles(client: &Client, operator_ns: &str) -> anyhow::Result<(u64, u64)> {
    let text = metrics(client, operator_ns).await?;
    let count = |controller: &str| {
        let prefix = format!("aether_operator_reconciles_total{{controller=\"{controller}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    Ok((count("aetherapp"), count("aetherartifact")))
}

/// `apiserver_request_total` by `VERB resource[/subresource]`, from the API
/// server's /metrics.
async fn api_requests(client: &Client) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let text = client
        .request_text(http::Request::get("/metrics").body(Vec::new())?)
        .await?;
    let mut counts = std::collections::BTreeMap::new();
    for line in text.lines().filter(|l| l.starts_with("apiserver_request_total{")) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let label = |name: &str| {
            let start = labels.find(&format!("{name}=\""))? + name.len() + 2;
            let len = labels[start..].find('"')?;
            Some(&labels[start..start + len])
        };
        let mut kind = format!(
            "{} {}",
            label("verb").unwrap_or("?"),
            label("resource").unwrap_or("?")
        );
        if let Some(sub) = label("subresource").filter(|s| !s.is_empty()) {
            kind = format!("{kind}/{sub}");
        }
        *counts.entry(kind).or_insert(0.0) += value.parse::<f64>().unwrap_or(0.0);
    }
    Ok(counts)
}

/// Requests per app between two [`api_requests`], in all and by kind (most first).
fn requests_per_app(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    apps: usize,
) -> (f64, Vec<(String, f64)>) {
    let mut by_kind: Vec<(String, f64)> = after
        .iter()
        .map(|(k, n)| (k.clone(), (n - before.get(k).unwrap_or(&0.0)) / apps as f64))
        .filter(|(_, n)| *n >= 0.005)
        .collect();
    by_kind.sort_by(|a, b| b.1.total_cmp(&a.1));
    (by_kind.iter().map(|(_, n)| n).sum(), by_kind)
}

/// The operator's /metrics, through the API server's Service proxy.
async fn metrics(client: &Client, operator_ns: &str) -> anyhow::Result<String> {
    let path =
        format!("/api/v1/namespaces/{operator_ns}/services/aether-operator-metrics:metrics/proxy/metrics");
    let request = client.request_text(http::Request::get(&path).body(Vec::new())?);
    // An operator that is down (OOMKilled) leaves the proxy hanging.
    Ok(tokio::time::timeout(Duration::from_secs(5), request)
        .await
        .context("the operator's metrics did not answer within 5 s")??)
}

/// A one-file Node server without dependencies.
fn small_app(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::write(
        dir.join("package.json"),
        r#"{"name": "scale", "version": "1.0.0", "private": true, "scripts": {"start": "node server.js"}}"#,
    )?;
    std::fs::write(
        dir.join("package-lock.json"),
        r#"{"name": "scale", "version": "1.0.0", "lockfileVersion": 3, "requires": true, "packages": {"": {"name": "scale", "version": "1.0.0"}}}"#,
    )?;
    std::fs::write(
        dir.join("server.js"),
        "require('http').createServer((_, res) => res.end('scale\\n')).listen(process.env.PORT || 3000);\n",
    )?;
    Ok(())
}

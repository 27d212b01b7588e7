//! `aether status [APP]`: what a developer asks after a push — is it serving, which
//! artifact, where, and if not, why (conditions, the pods' own failure messages,
//! recent events) — in one view.

use aether_crds::AetherApp;
use k8s_openapi::api::core::v1::{ContainerStatus, Event, Pod};
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::Serialize;

use crate::args::{GlobalArgs, OutputFormat, StatusArgs};
use crate::errors::CliError;
use crate::printer::Printer;

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppView {
    pub app: String,
    pub namespace: String,
    pub ready: bool,
    pub reason: String,
    pub message: String,
    pub artifact: Option<String>,
    pub digest: Option<String>,
    pub url: Option<String>,
    /// Public hosts the app holds, with their certificates.
    pub hosts: Vec<aether_crds::HostStatus>,
    pub replicas: i32,
    pub ready_replicas: i32,
    pub conditions: Vec<ConditionView>,
    pub pods: Vec<PodView>,
    pub events: Vec<EventView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionView {
    pub r#type: String,
    pub status: String,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    pub name: String,
    /// The artifact whose code the pod runs (in dev-hot mode, the one swapped in
    /// last), when the app's status names it.
    pub artifact: Option<String>,
    /// The digest of that code.
    pub digest: Option<String>,
    pub phase: String,
    pub ready: bool,
    /// The last failure of a container (init or app), with its message.
    pub problem: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EventView {
    pub r#type: String,
    pub reason: String,
    pub object: String,
    pub message: String,
    pub count: i32,
}

pub async fn run(args: &StatusArgs, global: &GlobalArgs, printer: &Printer) -> Result<(), CliError> {
    let app = crate::project::target_app(args.app.as_deref().or(args.app_flag.as_deref()))?;
    let (client, namespace) = crate::cluster::connect(global).await?;
    let view = gather(&client, &namespace, &app, args.events).await?;
    match printer.format {
        OutputFormat::Json | OutputFormat::Yaml => printer.value(&view),
        OutputFormat::Human => printer.data(render(&view).trim_end()),
    }
    Ok(())
}

pub async fn gather(client: &kube::Client, ns: &str, app: &str, events: usize) -> Result<AppView, CliError> {
    let err = |resource: &'static str| move |e| crate::cluster::kube_error(e, "get", resource, ns);
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), ns);
    let a = crate::cluster::get_app(&apps, app).await?;
    let status = a.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .find(|c| c.type_ == aether_crds::condition::READY);

    let known = status
        .history
        .iter()
        .map(|r| (r.digest.as_str(), r.artifact.as_str()))
        .chain(
            status
                .artifact
                .iter()
                .map(|a| (a.digest.as_str(), a.name.as_str())),
        )
        .collect();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = crate::cluster::pod_selector(&a);
    let listed = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(err("pods"))?
        .items;
    let asked = ask_dev_hot_pods(&pods, &listed).await;
    let mut pods: Vec<PodView> = listed.iter().map(|p| pod_view(p, &known, &asked)).collect();
    pods.sort_by(|x, y| x.name.cmp(&y.name));

    // The app's events and its pods' (image, init and probe failures show there).
    let api: Api<Event> = Api::namespaced(client.clone(), ns);
    let mut list: Vec<Event> = api
        .list(&ListParams::default())
        .await
        .map_err(err("events"))?
        .items;
    list.retain(|e| {
        let o = &e.involved_object;
        let name = o.name.as_deref().unwrap_or_default();
        (o.kind.as_deref() == Some("AetherApp") && name == app) || pods.iter().any(|p| p.name == name)
    });
    list.sort_by_key(|e| {
        std::cmp::Reverse(
            e.last_timestamp
                .as_ref()
                .map(|t| t.0)
                .or(e.event_time.as_ref().map(|t| t.0))
                .or(e.metadata.creation_timestamp.as_ref().map(|t| t.0)),
        )
    });
    let events = list
        .into_iter()
        .take(events)
        .map(|e| EventView {
            r#type: e.type_.unwrap_or_default(),
            reason: e.reason.unwrap_or_default(),
            object: format!(
                "{}/{}",
                e.involved_object.kind.unwrap_or_default().to_lowercase(),
                e.involved_object.name.unwrap_or_default()
            ),
            message: e.message.unwrap_or_default().trim().to_string(),
            count: e.count.unwrap_or(1),
        })
        .collect();

    Ok(AppView {
        app: a.name_any(),
        namespace: ns.into(),
        ready: ready.is_some_and(|c| c.status == "True"),
        reason: ready
            .map(|c| c.reason.clone())
            .unwrap_or_else(|| "Pending".into()),
        message: ready.map(|c| c.message.clone()).unwrap_or_default(),
        artifact: status.artifact.as_ref().map(|x| x.name.clone()),
        digest: status.artifact.as_ref().map(|x| x.digest.clone()),
        url: status.url.clone(),
        hosts: status.hosts.clone(),
        replicas: status.replicas,
        ready_replicas: status.ready_replicas,
        conditions: status
            .conditions
            .iter()
            .map(|c| ConditionView {
                r#type: c.type_.clone(),
                status: c.status.clone(),
                reason: c.reason.clone(),
                message: c.message.clone(),
            })
            .collect(),
        pods,
        events,
    })
}

/// `known`: artifact names by digest (the app's release and its history); `asked`:
/// what dev-hot pods said they run.
fn pod_view(
    p: &Pod,
    known: &std::collections::BTreeMap<&str, &str>,
    asked: &std::collections::BTreeMap<String, String>,
) -> PodView {
    let status = p.status.clone().unwrap_or_default();
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    // The fetch container's first: the app container waits on it, and its failure
    // is the cause of the app's.
    let problem = aether_crds::pod::fetch_status(&status)
        .into_iter()
        .chain(status.init_container_statuses.iter().flatten())
        .chain(status.container_statuses.iter().flatten())
        .find_map(container_problem);
    let digest = asked
        .get(&p.name_any())
        .cloned()
        .or_else(|| aether_crds::pod::started_digest(p));
    PodView {
        name: p.name_any(),
        artifact: digest
            .as_deref()
            .and_then(|d| known.get(d))
            .map(|a| a.to_string()),
        digest,
        // A pod is Running as soon as a container runs, while its app may still wait
        // for the fetch container or be starting: until it answers its health check.
        phase: match status.phase.as_deref() {
            Some("Running") if !aether_crds::pod::app_ready(&status) && !unready_since_serving(&status) => {
                "Starting".into()
            }
            _ => status.phase.clone().unwrap_or_default(),
        },
        ready,
        problem,
    }
}

/// The pod was Ready since its app container started, and is not now (the app
/// stopped answering its health check): Running, not Starting.
fn unready_since_serving(status: &k8s_openapi::api::core::v1::PodStatus) -> bool {
    let started = status
        .container_statuses
        .iter()
        .flatten()
        .find(|c| c.name == aether_crds::pod::APP_CONTAINER)
        .and_then(|c| c.state.as_ref()?.running.as_ref()?.started_at.as_ref());
    let unready = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "Ready" && c.status == "False")
        .and_then(|c| c.last_transition_time.as_ref());
    matches!((started, unready), (Some(s), Some(u)) if u.0 > s.0)
}

/// Dev-hot pods may run newer code than they started on: ask each (through a
/// port-forward, as `aether dev` sends updates) which. A pod that cannot be asked
/// (no `pods/portforward` right, not running) is shown with the code it started on.
async fn ask_dev_hot_pods(api: &Api<Pod>, pods: &[Pod]) -> std::collections::BTreeMap<String, String> {
    let query = aether_artifact::hot::query();
    let asks = pods
        .iter()
        .filter(|p| {
            p.annotations()
                .contains_key(aether_crds::pod::DEV_HOT_BASE_ANNOTATION)
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        })
        .map(|p| {
            super::dev::ask(
                api,
                p.metadata.name.as_deref().unwrap_or_default(),
                &query,
                std::time::Duration::from_secs(3),
            )
        });
    futures::future::join_all(asks)
        .await
        .into_iter()
        .filter(|(_, reply)| reply.ok && reply.reason == aether_artifact::hot::RUNNING)
        .map(|(pod, reply)| (pod, reply.digest))
        .collect()
}

/// `fetch: DigestMismatch: …` from a container's current or last failed exit, or
/// its waiting reason (e.g. `ErrImageNeverPull`).
fn container_problem(c: &ContainerStatus) -> Option<String> {
    if let Some(message) = aether_crds::pod::failure_message(c) {
        return Some(format!("{}: {message}", c.name));
    }
    let waiting = c.state.as_ref()?.waiting.as_ref()?;
    let reason = waiting.reason.as_deref()?;
    (!matches!(reason, "PodInitializing" | "ContainerCreating")).then(|| {
        format!(
            "{}: {reason} {}",
            c.name,
            waiting.message.as_deref().unwrap_or_default()
        )
        .trim()
        .to_string()
    })
}

/// A host's certificate and, where a Gateway routes it, its route, as a line says
/// them; why, when either is not ready.
pub fn host_state(host: &aether_crds::HostStatus) -> String {
    let mut said = format!("certificate: {}", host.certificate);
    if let Some(route) = &host.route {
        said.push_str(&format!("  route: {route}"));
    }
    let ready = aether_crds::condition::host::ready(&host.certificate, host.route.as_deref());
    match &host.message {
        Some(why) if !ready => format!("{said} ({why})"),
        _ => said,
    }
}

pub fn render(v: &AppView) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let state = if v.ready { "Ready" } else { "Not ready" };
    let _ = writeln!(
        out,
        "App {} in {}: {state} ({}) {}",
        v.app, v.namespace, v.reason, v.message
    );
    let _ = writeln!(out, "  URL:      {}", v.url.as_deref().unwrap_or("-"));
    for host in &v.hosts {
        let _ = writeln!(out, "  Host:     {}  {}", host.url, host_state(host));
    }
    let _ = writeln!(
        out,
        "  Artifact: {} {}",
        v.artifact.as_deref().unwrap_or("-"),
        v.digest.as_deref().unwrap_or("")
    );
    let _ = writeln!(out, "  Pods:     {}/{} ready", v.ready_replicas, v.replicas);
    let _ = writeln!(out, "Conditions:");
    for c in &v.conditions {
        let _ = writeln!(
            out,
            "  {:<12} {:<6} {:<24} {}",
            c.r#type, c.status, c.reason, c.message
        );
    }
    let _ = writeln!(out, "Pods:");
    for p in &v.pods {
        let _ = writeln!(
            out,
            "  {:<36} {:<10} {:<6} {:<24} {}",
            p.name,
            p.phase,
            if p.ready { "ready" } else { "-" },
            p.artifact
                .clone()
                .or_else(|| p.digest.as_ref().map(|d| d.chars().take(19).collect()))
                .unwrap_or_else(|| "-".into()),
            p.problem.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(out, "Recent events:");
    for e in &v.events {
        let times = if e.count > 1 {
            format!(" (x{})", e.count)
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "  {:<8} {:<22} {:<40} {}{times}",
            e.r#type, e.reason, e.object, e.message
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_line_says_why_its_certificate_or_route_is_not_ready() {
        let host = |certificate: &str, route: Option<&str>, message: Option<&str>| aether_crds::HostStatus {
            name: "shop.example.com".into(),
            url: "https://shop.example.com/".into(),
            claimed_at: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::from_second(0).unwrap(),
            ),
            certificate: certificate.into(),
            route: route.map(Into::into),
            message: message.map(Into::into),
        };
        assert_eq!(host_state(&host("Ready", None, None)), "certificate: Ready");
        assert_eq!(
            host_state(&host("Issuing", None, Some("pending"))),
            "certificate: Issuing (pending)"
        );
        assert_eq!(
            host_state(&host("Ready", Some("Accepted"), None)),
            "certificate: Ready  route: Accepted"
        );
        assert_eq!(
            host_state(&host(
                "Ready",
                Some("NotAllowedByListeners"),
                Some("Gateway infra/public does not route it")
            )),
            "certificate: Ready  route: NotAllowedByListeners (Gateway infra/public does not route it)"
        );
    }

    #[test]
    fn a_pod_s_problem_is_its_fetch_failure_before_the_app_s_that_follows_from_it() {
        // Statuses come sorted by name: the app's before the fetch container's.
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-1"},
            "status": {"phase": "Running", "containerStatuses": [
                {"name": "app", "image": "node", "imageID": "", "ready": false, "restartCount": 2,
                 "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off restarting"}}},
                {"name": "fetch", "image": "r", "imageID": "", "ready": false, "restartCount": 1,
                 "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                 "lastState": {"terminated": {"exitCode": 11, "message": "DigestMismatch: blob in storage does not match"}}}
            ]}
        }))
        .unwrap();
        let view = pod_view(&pod, &Default::default(), &Default::default());
        assert_eq!(view.phase, "Starting", "not Running before its app started");

        // A pod that served since its app started, then stopped answering: Running.
        let served: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-2"},
            "status": {"phase": "Running",
                "conditions": [{"type": "Ready", "status": "False", "lastTransitionTime": "2026-11-28T10:05:00Z"}],
                "containerStatuses": [
                {"name": "app", "image": "node", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"running": {"startedAt": "2026-11-28T10:00:00Z"}}},
                {"name": "fetch", "image": "r", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"running": {"startedAt": "2026-11-28T09:59:59Z"}}}
            ]}
        }))
        .unwrap();
        assert_eq!(
            pod_view(&served, &Default::default(), &Default::default()).phase,
            "Running"
        );
        // Before it first answered, the pod's Ready=False dates from before its start.
        let mut starting = served.clone();
        let conditions = starting.status.as_mut().unwrap().conditions.as_mut().unwrap();
        conditions[0].last_transition_time =
            Some(serde_json::from_value(serde_json::json!("2026-11-28T09:59:58Z")).unwrap());
        assert_eq!(
            pod_view(&starting, &Default::default(), &Default::default()).phase,
            "Starting"
        );
        assert_eq!(
            view.problem.as_deref(),
            Some("fetch: DigestMismatch: blob in storage does not match")
        );
    }
}

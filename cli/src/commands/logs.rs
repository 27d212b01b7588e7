//! `aether logs`: what an app's pods print, each line prefixed with the pod's short
//! name (`[x7k2p] `), like `kubectl logs -l ... --prefix`.
//!
//! Without -f the lines of every pod are merged in time order (by the kubelet's
//! timestamps, which are not printed) and it exits. With -f each pod's stream is
//! printed as it comes; pods that start later (a rollout, a scale) are picked up
//! once their container runs, and it ends by itself when the app is deleted.
//!
//! Rights needed: pods `list` and `watch`, and `pods/log` `get` (the aether-editor
//! and aether-viewer roles).

use std::collections::BTreeSet;
use std::pin::pin;
use std::time::Duration;

use aether_crds::AetherApp;
use futures::{AsyncBufReadExt as _, StreamExt as _};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, LogParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, ResourceExt};
use tokio::sync::mpsc;

use crate::args::{GlobalArgs, LogContainer, LogsArgs};
use crate::errors::CliError;
use crate::printer::Printer;

/// After the app is deleted, how long its pods' last lines are awaited.
const LAST_LINES: Duration = Duration::from_secs(5);

/// What a pod's stream sends to the printing loop.
#[derive(Debug)]
enum Output {
    Line(String),
    Warning(String),
    Failed(CliError),
}

pub async fn run(args: &LogsArgs, global: &GlobalArgs, printer: &Printer) -> Result<(), CliError> {
    let app = crate::project::target_app(args.app.app.as_deref())?;
    let (client, namespace) = crate::cluster::connect(global).await?;
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), &namespace);
    let found = crate::cluster::get_app(&apps, &app).await?;
    let selector = crate::cluster::pod_selector(&found);
    let pods: Api<Pod> = Api::namespaced(client, &namespace);
    let container = match args.container {
        LogContainer::App => "app",
        LogContainer::Fetch => "fetch",
    };
    let params = LogParams {
        container: Some(container.into()),
        previous: args.previous,
        since_seconds: args.since.map(|d| d.as_secs_f64().ceil().max(1.0) as i64),
        tail_lines: args.tail.map(i64::from),
        ..Default::default()
    };
    if !args.follow {
        return print_once(&pods, &selector, &namespace, params, printer).await;
    }
    let target = Target {
        app,
        uid: found.uid().unwrap_or_default(),
        namespace,
        selector,
        container,
    };
    follow(&apps, &pods, &target, params, printer).await
}

/// Every pod's log as it is now, merged in time order.
async fn print_once(
    pods: &Api<Pod>,
    selector: &str,
    namespace: &str,
    params: LogParams,
    printer: &Printer,
) -> Result<(), CliError> {
    let listed = pods
        .list(&ListParams::default().labels(selector))
        .await
        .map_err(|e| crate::cluster::kube_error(e, "list", "pods", namespace))?
        .items;
    if listed.is_empty() {
        printer.info("The app has no pods");
        return Ok(());
    }
    let params = LogParams {
        timestamps: true,
        ..params
    };
    let fetches = listed.iter().map(|p| {
        let name = p.name_any();
        let params = &params;
        async move {
            let log = pods.logs(&name, params).await;
            (name, log)
        }
    });
    let mut logs = Vec::new();
    for (pod, log) in futures::future::join_all(fetches).await {
        match log {
            Ok(text) => logs.push((short_name(&pod).to_string(), text)),
            Err(e) => match unusable(e, namespace) {
                Ok(warning) => printer.warn(format!("[{}] {warning}", short_name(&pod))),
                Err(fatal) => return Err(fatal),
            },
        }
    }
    for line in merge(&logs) {
        printer.data(&line);
    }
    Ok(())
}

/// The app -f follows.
#[derive(Debug)]
struct Target {
    app: String,
    uid: String,
    namespace: String,
    selector: String,
    container: &'static str,
}

async fn follow(
    apps: &Api<AetherApp>,
    pods: &Api<Pod>,
    target: &Target,
    params: LogParams,
    printer: &Printer,
) -> Result<(), CliError> {
    // Pods there from the start honour --tail/--since; a pod that starts later is
    // printed from its first line, so nothing it says is missed.
    let from_start = LogParams {
        follow: true,
        ..params.clone()
    };
    let whole = LogParams {
        follow: true,
        tail_lines: None,
        since_seconds: None,
        ..params
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut sender = Some(tx);
    let mut streams = tokio::task::JoinSet::new();
    // (pod, container id): a restarted container is a new stream.
    let mut streaming = BTreeSet::new();
    let mut listed = false;
    let config = watcher::Config::default().labels(&target.selector);
    let mut pod_events = pin!(watcher(pods.clone(), config).default_backoff());
    let mut app_events = pin!(watcher::watch_object(apps.clone(), &target.app));
    let mut deadline = None;

    loop {
        tokio::select! {
            output = rx.recv() => match output {
                Some(Output::Line(line)) => printer.data(&line),
                Some(Output::Warning(warning)) => printer.warn(warning),
                Some(Output::Failed(e)) => return Err(e),
                // The app is gone and every stream has ended.
                None => break,
            },
            Some(event) = pod_events.next(), if sender.is_some() => {
                let (pod, initial) = match event {
                    Ok(watcher::Event::InitApply(pod)) => (pod, !listed),
                    Ok(watcher::Event::Apply(pod)) => (pod, false),
                    Ok(watcher::Event::InitDone) => {
                        listed = true;
                        continue;
                    }
                    Ok(_) => continue,
                    Err(watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e)) => {
                        return Err(crate::cluster::kube_error(e, "watch", "pods", &target.namespace));
                    }
                    // The watcher retries with backoff.
                    Err(_) => continue,
                };
                let Some(id) = started_container(&pod, target.container) else {
                    continue;
                };
                let name = pod.name_any();
                if streaming.insert((name.clone(), id)) && let Some(tx) = &sender {
                    if listed {
                        printer.info(format!("Following pod {name}"));
                    }
                    let params = if initial { from_start.clone() } else { whole.clone() };
                    streams.spawn(stream(pods.clone(), name, params, target.namespace.clone(), tx.clone()));
                }
            },
            Some(event) = app_events.next(), if sender.is_some() => {
                let gone = match event {
                    Ok(None) => true,
                    Ok(Some(app)) => app.uid().as_deref() != Some(target.uid.as_str()),
                    Err(watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e)) => {
                        return Err(crate::cluster::kube_error(e, "watch", "aetherapps", &target.namespace));
                    }
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        false
                    }
                };
                if gone {
                    printer.info(format!(
                        "App {} in {} was deleted: stopped following its logs",
                        target.app, target.namespace
                    ));
                    // Its pods are stopping: print their last lines, for a while.
                    sender = None;
                    deadline = Some(tokio::time::Instant::now() + LAST_LINES);
                }
            },
            () = until(deadline) => break,
        }
    }
    streams.abort_all();
    Ok(())
}

async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Send `pod`'s log, line by line, until its container stops.
async fn stream(
    pods: Api<Pod>,
    pod: String,
    params: LogParams,
    namespace: String,
    tx: mpsc::UnboundedSender<Output>,
) {
    let short = short_name(&pod).to_string();
    let reader = match pods.log_stream(&pod, &params).await {
        Ok(reader) => reader,
        Err(e) => {
            let _ = tx.send(match unusable(e, &namespace) {
                Ok(warning) => Output::Warning(format!("[{short}] {warning}")),
                Err(fatal) => Output::Failed(fatal),
            });
            return;
        }
    };
    let mut reader = pin!(reader);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        // Bytes, not `lines()`: a line that is not UTF-8 must not end the stream.
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = String::from_utf8_lossy(&buf);
                if tx.send(Output::Line(prefixed(&short, &text))).is_err() {
                    return;
                }
            }
        }
    }
}

/// A failed log request: a warning about that pod (its container has not started,
/// it has no previous container), or an error that ends the command.
fn unusable(e: kube::Error, namespace: &str) -> Result<String, CliError> {
    match e {
        kube::Error::Api(s) if s.code == 403 => Err(CliError::Forbidden {
            verb: "get".into(),
            resource: "pods/log".into(),
            namespace: namespace.into(),
        }),
        kube::Error::Api(s) => Ok(s.message),
        e => Err(crate::cluster::kube_error(e, "get", "pods/log", namespace)),
    }
}

/// The id of `container`'s current instance in `pod`, once it runs or has run
/// (`None` while it waits to start: there is no log to read yet).
pub fn started_container(pod: &Pod, container: &str) -> Option<String> {
    let status = pod.status.as_ref()?;
    let c = status
        .container_statuses
        .iter()
        .chain(&status.init_container_statuses)
        .flatten()
        .find(|c| c.name == container)?;
    let state = c.state.as_ref()?;
    (state.running.is_some() || state.terminated.is_some()).then(|| {
        c.container_id
            .clone()
            .unwrap_or_else(|| c.restart_count.to_string())
    })
}

/// A pod's random suffix (`web-5d9f8c7b6-x7k2p` → `x7k2p`): short, and unique
/// among an app's pods.
pub fn short_name(pod: &str) -> &str {
    pod.rsplit('-').next().filter(|s| !s.is_empty()).unwrap_or(pod)
}

/// `[x7k2p] listening on :3000`, without the line's own line ending.
pub fn prefixed(short: &str, line: &str) -> String {
    format!("[{short}] {}", line.trim_end_matches(['\n', '\r']))
}

/// Lines of several pods' logs (`(short name, log with kubelet timestamps)`),
/// prefixed and in time order; lines of one pod keep their order.
pub fn merge(logs: &[(String, String)]) -> Vec<String> {
    let mut lines = Vec::new();
    for (short, log) in logs {
        let mut last = Timestamp::MIN;
        for line in log.lines() {
            let (at, text) = match line
                .split_once(' ')
                .map(|(t, rest)| (t.parse::<Timestamp>(), rest))
            {
                Some((Ok(at), text)) => (at, text),
                // No timestamp (a line the kubelet did not write): keep it in place.
                _ => (last, line),
            };
            last = at;
            lines.push((at, prefixed(short, text)));
        }
    }
    // Stable: equal times keep each pod's order.
    lines.sort_by_key(|(at, _)| *at);
    lines.into_iter().map(|(_, line)| line).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_with_the_pod_s_suffix() {
        assert_eq!(short_name("express-api-5d9f8c7b6-x7k2p"), "x7k2p");
        assert_eq!(short_name("web"), "web");
        assert_eq!(short_name("web-"), "web-");
        assert_eq!(
            prefixed("x7k2p", "listening on :3000\r\n"),
            "[x7k2p] listening on :3000"
        );
        assert_eq!(prefixed("x7k2p", ""), "[x7k2p] ");
    }

    #[test]
    fn pods_logs_merge_in_time_order_without_their_timestamps() {
        let logs = [
            (
                "aaaaa".to_string(),
                "2025-01-01T10:00:00.5Z starting\n2025-01-01T10:00:02Z listening\ncontinued\n".to_string(),
            ),
            (
                "bbbbb".to_string(),
                "2025-01-01T10:00:00.51Z starting\n2025-01-01T10:00:01.123456789Z listening\n".to_string(),
            ),
        ];
        assert_eq!(
            merge(&logs),
            [
                "[aaaaa] starting",
                "[bbbbb] starting",
                "[bbbbb] listening",
                "[aaaaa] listening",
                "[aaaaa] continued",
            ]
        );
        assert!(merge(&[("a".into(), String::new())]).is_empty());
    }

    fn pod(statuses: serde_json::Value) -> Pod {
        serde_json::from_value(serde_json::json!({"metadata": {"name": "web-1-abcde"}, "status": statuses}))
            .unwrap()
    }

    #[test]
    fn a_container_is_streamed_once_it_runs_and_again_after_a_restart() {
        let waiting = pod(serde_json::json!({
            "initContainerStatuses": [{"name": "fetch", "image": "r", "imageID": "", "ready": false, "restartCount": 0,
                "containerID": "containerd://f1", "state": {"running": {}}}],
            "containerStatuses": [{"name": "app", "image": "n", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "PodInitializing"}}}],
        }));
        assert_eq!(started_container(&waiting, "app"), None);
        assert_eq!(
            started_container(&waiting, "fetch").as_deref(),
            Some("containerd://f1")
        );
        let restarted = pod(serde_json::json!({
            "containerStatuses": [{"name": "app", "image": "n", "imageID": "", "ready": true, "restartCount": 1,
                "containerID": "containerd://a2", "state": {"running": {}},
                "lastState": {"terminated": {"exitCode": 1, "containerID": "containerd://a1"}}}],
        }));
        assert_eq!(
            started_container(&restarted, "app").as_deref(),
            Some("containerd://a2")
        );
        assert_eq!(started_container(&pod(serde_json::json!({})), "app"), None);
    }
}

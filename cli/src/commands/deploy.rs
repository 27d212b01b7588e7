//! The deploy half of `aether push`: point the AetherApp at the new artifact (created
//! on first push, with the CRD's defaults) and follow its conditions until the new
//! version serves, or the operator says why it cannot.

use std::time::Duration;

use aether_crds::AetherApp;
use aether_crds::condition::{READY, STALLED};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;

use crate::errors::CliError;
use crate::printer::Printer;

/// Field manager of the CLI: it owns `spec.artifactRef` and nothing else, so
/// `kubectl scale`, GitOps edits of env or replicas and the CLI do not fight.
pub const FIELD_MANAGER: &str = "aether-cli";

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployed {
    /// Where the app answers HTTP (the Service address the operator reports).
    pub url: Option<String>,
    /// False with --no-wait: the app points at the artifact, pods may still start.
    pub serving: bool,
    /// The operator's phase timings, from the start of its reconcile that first took
    /// the (Ready) artifact: → Deployment applied, → pods Ready.
    pub applied_after_ms: Option<i64>,
    pub ready_after_ms: Option<i64>,
}

/// How [`deploy`] follows the rollout.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    pub timeout: Duration,
    /// The push repaired the artifact's blobs at this instant: a failure the operator
    /// reported before it was about the damaged bytes, not this rollout.
    pub repaired_at: Option<Timestamp>,
}

/// Point the app at `artifact`; with `follow`, wait until it serves it.
pub async fn deploy(
    client: Client,
    namespace: &str,
    app: &str,
    artifact: &str,
    follow: Option<Follow>,
    printer: &Printer,
) -> Result<Deployed, CliError> {
    let api: Api<AetherApp> = Api::namespaced(client, namespace);
    let body = serde_json::json!({
        "apiVersion": "aether.dev/v1alpha1",
        "kind": "AetherApp",
        "metadata": {
            "name": app,
            "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "aether"},
        },
        "spec": {"artifactRef": {"name": artifact}},
    });
    // Forced: `aether push` is an explicit request to run this artifact, even if
    // another manager (a GitOps tool) set artifactRef before.
    let applied = api
        .patch(
            app,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| crate::cluster::kube_error(e, "apply", "aetherapps", namespace))?;
    let generation = applied.metadata.generation.unwrap_or(0);
    printer.info(format!("App {app} in {namespace} now runs {artifact}"));
    let Some(Follow { timeout, repaired_at }) = follow else {
        return Ok(Deployed {
            url: applied.status.and_then(|s| s.url),
            ..Default::default()
        });
    };

    let mut last_message = String::new();
    let outcome = crate::cluster::wait_for(
        &api,
        app,
        timeout,
        "the app to serve the new artifact",
        |current| {
            let status = current.status.as_ref()?;
            let observed = status.observed_generation.unwrap_or(0) >= generation;
            let condition = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
            let ready = condition(READY);
            let ours = status.artifact.as_ref().is_some_and(|a| a.name == artifact);
            if observed && ours && ready.is_some_and(|c| c.status == "True") {
                let timings = status.last_deploy.as_ref().filter(|t| t.artifact == artifact);
                return Some(Ok(Deployed {
                    url: status.url.clone(),
                    serving: true,
                    applied_after_ms: timings.and_then(|t| t.applied_after_milliseconds),
                    ready_after_ms: timings.and_then(|t| t.ready_after_milliseconds),
                }));
            }
            let current = |c: &&Condition| repaired_at.is_none_or(|t| c.last_transition_time.0 >= t);
            if observed
                && let Some(stalled) = condition(STALLED).filter(|c| c.status == "True").filter(current)
            {
                return Some(Err(deploy_failed(
                    app,
                    namespace,
                    artifact,
                    (&stalled.reason, &stalled.message),
                    status.ready_replicas,
                )));
            }
            if let Some(c) = ready.filter(|_| observed) {
                let message = format!("  {}: {}", c.reason, c.message);
                if message != last_message {
                    printer.info(&message);
                    last_message = message;
                }
            }
            None
        },
    )
    .await;
    match outcome {
        Ok(Ok(deployed)) => {
            if let Some(url) = &deployed.url {
                await_reachable(url, printer).await;
            }
            Ok(deployed)
        }
        Ok(Err(e)) => Err(e),
        Err(CliError::Timeout { seconds, .. }) => Err(CliError::Timeout {
            what: format!("app {app} to serve {artifact} (last: {})", last_message.trim()),
            seconds,
        }),
        Err(e) => Err(e),
    }
}

/// The pods are Ready, but a brand-new Service's address may take kube-proxy up to
/// a second to route: when the URL is an address this machine can reach (the local
/// cluster's cluster IPs), wait until it accepts connections, so "serving" is true
/// the moment it is printed. In-cluster names are not resolvable here: skipped.
async fn await_reachable(url: &str, printer: &Printer) {
    let Some(addr) = url
        .strip_prefix("http://")
        .map(|rest| rest.split('/').next().unwrap_or_default())
        .and_then(|host| {
            host.parse::<std::net::SocketAddr>()
                .ok()
                .or_else(|| host.parse::<std::net::IpAddr>().ok().map(|ip| (ip, 80).into()))
        })
    else {
        return;
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        let attempt = tokio::time::timeout(Duration::from_millis(500), tokio::net::TcpStream::connect(addr));
        if let Ok(Ok(_)) = attempt.await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    printer.warn(format!("{url} does not accept connections from this machine yet"));
}

/// `serving`: ready pods of the app (of earlier releases: this one failed). The hint
/// says whether the app still answers, never more than the pods show.
fn deploy_failed(
    app: &str,
    namespace: &str,
    artifact: &str,
    (reason, message): (&str, &str),
    serving: i32,
) -> CliError {
    let still = match serving {
        0 => "no pod of the app is serving".to_string(),
        n => format!("{n} ready pod(s) of the previous release keep serving"),
    };
    let hint = match reason {
        "ArtifactUnsigned" => "sign it (`aether keys generate`, then push without --no-sign), or set the app's spec.verify.mode".to_string(),
        "SignatureRejected" => "ask a cluster admin to trust your key: `aether keys show` prints it for the aether-trusted-keys ConfigMap in aether-system (or the app's spec.verify.keysRef)".to_string(),
        _ => format!("`aether status {app} -n {namespace}` shows the pods and events; {still}"),
    };
    CliError::DeployFailed {
        app: app.into(),
        artifact: artifact.into(),
        reason: reason.into(),
        message: message.into(),
        hint,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(serving: i32) -> String {
        match deploy_failed("web", "team-a", "web-1", ("AppCrashing", "exit 1"), serving) {
            CliError::DeployFailed { hint, .. } => hint,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_failed_deploy_says_whether_anything_still_serves() {
        assert!(hint(0).contains("no pod of the app is serving"), "{}", hint(0));
        assert!(!hint(0).contains("keep serving"));
        assert!(hint(2).contains("2 ready pod(s) of the previous release keep serving"));
    }
}

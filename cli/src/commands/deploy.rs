//! The deploy half of `aether push`: point the AetherApp at the new artifact (created
//! on first push, with the CRD's defaults) and follow its conditions until the new
//! version serves, or the operator says why it cannot.

use std::time::Duration;

use aether_crds::AetherApp;
use aether_crds::condition::app::{HOST_CLAIMED, ROLLED_BACK};
use aether_crds::condition::{READY, STALLED};
use aether_crds::pod::{TEMPLATE_ANNOTATION, started_digest};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, Patch, PatchParams};
use kube::{Api, Client};
use serde::Serialize;

use crate::errors::CliError;
use crate::printer::Printer;

/// Field manager of the CLI: it owns `spec.artifactRef` and nothing else, so
/// `kubectl scale`, GitOps edits of env or replicas and the CLI do not fight.
pub const FIELD_MANAGER: &str = "aether-cli";
/// Field manager of `spec.hosts` when `aether push --host` sets them: apart from
/// [`FIELD_MANAGER`], so that a push without `--host` leaves the hosts as they are.
pub const HOSTS_MANAGER: &str = "aether-cli-hosts";

#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deployed {
    /// Where the app answers HTTP (the Service address the operator reports).
    pub url: Option<String>,
    /// False with --no-wait: the app points at the artifact, pods may still start.
    pub serving: bool,
    /// The digest of the code served.
    #[serde(skip)]
    pub digest: String,
    /// The pod template serving it (`status.template`).
    #[serde(skip)]
    pub template: Option<String>,
    /// The operator's phase timings, from the start of its reconcile that first took
    /// the (Ready) artifact: → Deployment applied, → pods Ready.
    pub applied_after_ms: Option<i64>,
    pub ready_after_ms: Option<i64>,
    /// The public hosts the app holds, and their certificates.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<aether_crds::HostStatus>,
}

/// How [`deploy`] follows the rollout.
#[derive(Debug, Clone, Copy)]
pub struct Follow {
    pub timeout: Duration,
    /// The push repaired the artifact's blobs at this instant: a failure the operator
    /// reported before it was about the damaged bytes, not this rollout.
    pub repaired_at: Option<Timestamp>,
    /// When the operator verified the artifact (`status.verifiedAt`): a stall about
    /// the artifact or the namespace's enablement that began before then may be
    /// stale (an app applied before its artifact was uploaded, or before an admin
    /// enabled the namespace, and a push that leaves its spec as it was). The app
    /// is woken by the artifact's change; [`STALE_GRACE`] gives it the time to say
    /// so, and a stall that outlasts it is the rollout's.
    pub artifact_verified_at: Option<Timestamp>,
}

/// How long a stall that a Ready artifact may have ended is not taken as the
/// rollout's ([`Follow::artifact_verified_at`]). Its start time cannot tell: a
/// condition keeps it while it stays true, whatever the reason says since.
const STALE_GRACE: Duration = Duration::from_secs(30);

impl Follow {
    /// Does the operator's `Stalled` condition speak of this rollout, `waited` into
    /// following it?
    fn is_current(&self, stalled: &Condition, waited: Duration) -> bool {
        let at = stalled.last_transition_time.0;
        let repaired_since = self.repaired_at.is_some_and(|t| at < t);
        let artifact_since = self.artifact_verified_at.is_some_and(|t| at <= t)
            && aether_crds::condition::app::ended_by_a_ready_artifact(&stalled.reason)
            && waited < STALE_GRACE;
        !repaired_since && !artifact_since
    }
}

/// What a push sets besides the artifact.
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    /// Public hosts; empty: the app's stay as they are.
    pub hosts: &'a [aether_crds::Host],
    /// The app is a preview environment, until then.
    pub preview: Option<&'a aether_crds::Preview>,
}

/// Point the app at `artifact` (and, unless empty, serve it at `target.hosts`);
/// with `follow`, wait until it serves it.
pub async fn deploy(
    client: Client,
    namespace: &str,
    (app, artifact): (&str, &str),
    target: Target<'_>,
    follow: Option<Follow>,
    printer: &Printer,
) -> Result<Deployed, CliError> {
    let hosts = target.hosts;
    let mut spec = serde_json::json!({"artifactRef": {"name": artifact}});
    if let Some(preview) = target.preview {
        spec["preview"] = serde_json::to_value(preview).unwrap_or_default();
    }
    let body = serde_json::json!({
        "apiVersion": "aether.dev/v1alpha1",
        "kind": "AetherApp",
        "metadata": {
            "name": app,
            "labels": {"app.kubernetes.io/name": app, "app.kubernetes.io/managed-by": "aether"},
        },
        "spec": spec,
    });
    let announce = format!("App {app} in {namespace} now runs {artifact}");
    if hosts.is_empty() {
        return apply_and_follow(
            client,
            namespace,
            (app, artifact),
            (&body, FIELD_MANAGER, &announce),
            follow,
            printer,
        )
        .await;
    }
    // The hosts as their own manager. An existing app's hosts are written first, so
    // that a host it may not have stops the new artifact too (its running release
    // keeps serving); a new app is made with its artifact first (it needs one). The
    // wait follows the last write.
    let api: Api<AetherApp> = Api::namespaced(client.clone(), namespace);
    let failed = |e| crate::cluster::kube_error(e, "apply", "aetherapps", namespace);
    let hosts_body = serde_json::json!({
        "apiVersion": "aether.dev/v1alpha1",
        "kind": "AetherApp",
        "metadata": {"name": app},
        "spec": {"hosts": hosts},
    });
    let exists = api.get_metadata_opt(app).await.map_err(failed)?.is_some();
    if exists {
        apply_app(&api, app, &hosts_body, HOSTS_MANAGER)
            .await
            .map_err(failed)?;
    }
    let mut applied = apply_app(&api, app, &body, FIELD_MANAGER).await.map_err(failed)?;
    if !exists {
        applied = apply_app(&api, app, &hosts_body, HOSTS_MANAGER)
            .await
            .map_err(failed)?;
    }
    follow_applied(
        client,
        namespace,
        (app, artifact),
        (&applied, &announce),
        follow,
        printer,
    )
    .await
}

/// Server-side apply `body` to the app as `manager`, which names `artifact`, and say
/// `announce`; with `follow`, wait until the app serves it alone.
pub async fn apply_and_follow(
    client: Client,
    namespace: &str,
    (app, artifact): (&str, &str),
    (body, manager, announce): (&serde_json::Value, &str, &str),
    follow: Option<Follow>,
    printer: &Printer,
) -> Result<Deployed, CliError> {
    let api: Api<AetherApp> = Api::namespaced(client.clone(), namespace);
    let applied = apply_app(&api, app, body, manager)
        .await
        .map_err(|e| crate::cluster::kube_error(e, "apply", "aetherapps", namespace))?;
    follow_applied(
        client,
        namespace,
        (app, artifact),
        (&applied, announce),
        follow,
        printer,
    )
    .await
}

/// Server-side apply `body` to the app as `manager`. Forced: the command is an
/// explicit request to run this, even if another manager (a GitOps tool) set these
/// fields before (`aether rollback` and `aether config` check for that first).
pub async fn apply_app(
    api: &Api<AetherApp>,
    app: &str,
    body: &serde_json::Value,
    manager: &str,
) -> Result<AetherApp, kube::Error> {
    api.patch(app, &PatchParams::apply(manager).force(), &Patch::Apply(body))
        .await
}

/// Say `announce` about the `applied` app, which names `artifact`; with `follow`,
/// wait until it serves it alone.
pub async fn follow_applied(
    client: Client,
    namespace: &str,
    (app, artifact): (&str, &str),
    (applied, announce): (&AetherApp, &str),
    follow: Option<Follow>,
    printer: &Printer,
) -> Result<Deployed, CliError> {
    let started = std::time::Instant::now();
    let api: Api<AetherApp> = Api::namespaced(client.clone(), namespace);
    let generation = applied.metadata.generation.unwrap_or(0);
    printer.info(announce);
    let Some(follow) = follow else {
        return Ok(Deployed {
            url: applied.status.as_ref().and_then(|s| s.url.clone()),
            ..Default::default()
        });
    };

    let mut last_message = String::new();
    let outcome = crate::cluster::wait_for(
        &api,
        app,
        follow.timeout,
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
                    digest: status
                        .artifact
                        .as_ref()
                        .map(|a| a.digest.clone())
                        .unwrap_or_default(),
                    serving: true,
                    template: status.template.clone(),
                    applied_after_ms: timings.and_then(|t| t.applied_after_milliseconds),
                    ready_after_ms: timings.and_then(|t| t.ready_after_milliseconds),
                    hosts: status.hosts.clone(),
                }));
            }
            if observed
                && let Some(stalled) = condition(STALLED)
                    .filter(|c| c.status == "True")
                    .filter(|c| follow.is_current(c, started.elapsed()))
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
            // Ready pods are not yet the Service's only answer: wait until its
            // EndpointSlices route to this release alone.
            let left = follow.timeout.saturating_sub(started.elapsed());
            let digest = deployed.digest.clone();
            let template = deployed.template.clone();
            let runs = runs_digest(&digest);
            // Of the template applied last (a configuration change keeps the digest),
            // where the operator says which that is.
            let of_release = |pod: &Pod| runs(pod) && template.as_ref().is_none_or(|t| has_template(pod, t));
            await_routed(&client, namespace, app, (artifact, &of_release), left, printer).await?;
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

/// Which pods a Service's EndpointSlices send new connections to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    /// Only pods of the release: what users now get is the new version.
    Only,
    /// Some ready endpoints are pods of another release (or not pods of the app).
    Mixed { release: usize, others: usize },
    /// No ready endpoint of the release yet.
    NotYet,
}

/// `slices`: the Service's EndpointSlices; `pods`: the app's pods. An endpoint counts
/// when it is ready (a terminating pod is not, and kube-proxy sends new connections
/// only to ready endpoints while there are any); it belongs to the release when its
/// pod is one `of_release` accepts.
pub fn routing(slices: &[EndpointSlice], pods: &[Pod], of_release: impl Fn(&Pod) -> bool) -> Routing {
    let (mut release, mut others) = (0, 0);
    let ready = slices
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false));
    for endpoint in ready {
        let name = endpoint
            .target_ref
            .as_ref()
            .filter(|t| t.kind.as_deref() == Some("Pod"))
            .and_then(|t| t.name.as_deref());
        let pod = name.and_then(|n| pods.iter().find(|p| p.metadata.name.as_deref() == Some(n)));
        match pod {
            Some(pod) if of_release(pod) => release += 1,
            _ => others += 1,
        }
    }
    match (release, others) {
        (0, _) => Routing::NotYet,
        (_, 0) => Routing::Only,
        (release, others) => Routing::Mixed { release, others },
    }
}

/// A pod made from the pod template whose hash is `template`.
pub fn has_template(pod: &Pod, template: &str) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TEMPLATE_ANNOTATION))
        .is_some_and(|t| t == template)
}

/// A pod that started on the code of `digest` (see [`started_digest`]: a dev-hot
/// pod may have started on newer code than its template names).
pub fn runs_digest(digest: &str) -> impl Fn(&Pod) -> bool + '_ {
    move |pod| started_digest(pod).as_deref() == Some(digest)
}

/// Wait until the app's Service routes only to pods `of_release` accepts (`what`
/// names them). Without the right to read EndpointSlices (a role older than this
/// CLI) it says so and returns.
pub async fn await_routed(
    client: &Client,
    namespace: &str,
    app: &str,
    (what, of_release): (&str, &dyn Fn(&Pod) -> bool),
    timeout: Duration,
    printer: &Printer,
) -> Result<(), CliError> {
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let by_service = ListParams::default().labels(&format!("kubernetes.io/service-name={app}"));
    let by_app = ListParams::default().labels(&format!("app.kubernetes.io/instance={app}"));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let last = match tokio::try_join!(slices.list(&by_service), pods.list(&by_app)) {
            Ok((s, p)) => routing(&s.items, &p.items, of_release),
            Err(kube::Error::Api(e)) if e.code == 403 => {
                printer.warn(format!(
                    "cannot tell whether the Service routes only to the new pods: {} (the aether-editor role allows it)",
                    e.message
                ));
                return Ok(());
            }
            Err(e) => return Err(crate::cluster::kube_error(e, "list", "endpointslices", namespace)),
        };
        if last == Routing::Only {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            let now = match last {
                Routing::Mixed { release, others } => {
                    format!("{release} endpoint(s) of {what} and {others} of others are ready")
                }
                _ => format!("no endpoint of {what} is ready"),
            };
            return Err(CliError::Timeout {
                what: format!("the Service of {app} to route only to {what} ({now})"),
                seconds: timeout.as_secs(),
            });
        }
        // Routing changes within a second of readiness: poll briefly rather than
        // keep two watches.
        tokio::time::sleep(Duration::from_millis(50)).await;
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
        HOST_CLAIMED => format!(
            "push with another --host, or have that app drop the host (its spec.hosts); the release running before keeps serving: {still}"
        ),
        ROLLED_BACK => format!(
            "the app went back to its last good release by itself (spec.autoRollback); `aether logs --app {app} -n {namespace}` and `aether releases` show what failed"
        ),
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

    fn stalled(reason: &str, at: i64) -> Condition {
        Condition {
            type_: STALLED.into(),
            status: "True".into(),
            reason: reason.into(),
            message: String::new(),
            last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                Timestamp::from_second(at).unwrap(),
            ),
            observed_generation: None,
        }
    }

    fn follow(repaired_at: Option<i64>, artifact_verified_at: Option<i64>) -> Follow {
        let at = |s: i64| Timestamp::from_second(s).unwrap();
        Follow {
            timeout: Duration::from_secs(60),
            repaired_at: repaired_at.map(at),
            artifact_verified_at: artifact_verified_at.map(at),
        }
    }

    #[test]
    fn a_stall_from_before_the_artifact_was_verified_is_stale_only_if_the_artifact_ends_it() {
        let pushed = follow(None, Some(100));
        let soon = Duration::from_secs(1);
        // The app was applied before the upload, or before an admin enabled the
        // namespace: what it said then does not fail this push at once.
        for reason in ["ArtifactFailed", "ArtifactNotFound", "NamespaceNotEnabled"] {
            assert!(!pushed.is_current(&stalled(reason, 90), soon), "{reason}");
            assert!(
                !pushed.is_current(&stalled(reason, 100), soon),
                "{reason}, same second"
            );
            assert!(pushed.is_current(&stalled(reason, 101), soon), "{reason}, after");
            // Still said once the operator had the time to look again: it is so.
            assert!(
                pushed.is_current(&stalled(reason, 90), STALE_GRACE),
                "{reason}, later"
            );
        }
        // A verdict a Ready artifact does not change stands.
        assert!(pushed.is_current(&stalled("SignatureRejected", 90), soon));
        assert!(pushed.is_current(&stalled("AppCrashing", 90), soon));
        // Nothing known about the artifact: every stall counts.
        assert!(follow(None, None).is_current(&stalled("ArtifactFailed", 90), soon));
        // Repaired blobs: the crashes on the damaged bytes before are stale.
        let repaired = follow(Some(100), Some(100));
        assert!(!repaired.is_current(&stalled("AppCrashing", 99), soon));
        assert!(repaired.is_current(&stalled("AppCrashing", 100), soon));
    }

    #[test]
    fn a_failed_deploy_says_whether_anything_still_serves() {
        assert!(hint(0).contains("no pod of the app is serving"), "{}", hint(0));
        assert!(!hint(0).contains("keep serving"));
        assert!(hint(2).contains("2 ready pod(s) of the previous release keep serving"));
    }
}

#[cfg(test)]
mod routing_tests {
    use super::*;

    fn pod(name: &str, digest: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "annotations": {aether_crds::pod::DIGEST_ANNOTATION: digest}}
        }))
        .unwrap()
    }

    fn slice(endpoints: &[(&str, bool)]) -> EndpointSlice {
        serde_json::from_value(serde_json::json!({
            "addressType": "IPv4",
            "metadata": {"name": "web-abcde"},
            "endpoints": endpoints.iter().map(|(pod, ready)| serde_json::json!({
                "addresses": ["10.88.0.9"],
                "conditions": {"ready": ready, "terminating": !ready},
                "targetRef": {"kind": "Pod", "name": pod},
            })).collect::<Vec<_>>(),
        }))
        .unwrap()
    }

    #[test]
    fn served_means_only_the_new_release_s_pods_are_ready_endpoints() {
        let pods = [pod("old", "sha256:1"), pod("new", "sha256:2")];
        // The new pod is Ready but kube-proxy still has the old one: not served yet.
        assert_eq!(
            routing(
                &[slice(&[("old", true), ("new", true)])],
                &pods,
                runs_digest("sha256:2")
            ),
            Routing::Mixed {
                release: 1,
                others: 1
            }
        );
        // The old pod is terminating (not ready): only the new release is routed.
        assert_eq!(
            routing(
                &[slice(&[("old", false), ("new", true)])],
                &pods,
                runs_digest("sha256:2")
            ),
            Routing::Only
        );
        assert_eq!(
            routing(&[slice(&[("old", true)])], &pods, runs_digest("sha256:2")),
            Routing::NotYet
        );
        assert_eq!(routing(&[], &pods, runs_digest("sha256:2")), Routing::NotYet);
        // An endpoint that is not a pod of the app is not the release.
        assert_eq!(
            routing(
                &[slice(&[("new", true), ("stranger", true)])],
                &pods,
                runs_digest("sha256:2")
            ),
            Routing::Mixed {
                release: 1,
                others: 1
            }
        );
    }
}

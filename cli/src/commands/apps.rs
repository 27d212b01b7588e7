//! `aether apps`: the namespace's apps at a glance — what `kubectl get aetherapps`
//! shows, with the URL and the reason an app is not ready.

use aether_crds::AetherApp;
use aether_crds::condition::READY;
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use serde::Serialize;

use crate::args::{GlobalArgs, OutputFormat};
use crate::errors::CliError;
use crate::printer::{Printer, table};

/// What `aether apps -o json|yaml` prints.
#[derive(Debug, Serialize)]
pub struct AppList {
    pub items: Vec<AppItem>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AppItem {
    pub name: String,
    pub namespace: String,
    pub ready: bool,
    /// The Ready condition's status (`True`, `False`, `Unknown`); absent until the
    /// operator first looked at the app.
    pub ready_status: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// The artifact the app is set to run.
    pub artifact: String,
    /// The digest of the artifact deployed (during a rollout, still the old one).
    pub digest: Option<String>,
    /// Pods asked for: `spec.replicas`, or for an autoscaled app the pods its
    /// autoscaler keeps (`status.replicas`).
    pub replicas: i32,
    /// The autoscaler's bounds, when the app has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<Bounds>,
    pub ready_replicas: i32,
    pub url: Option<String>,
    pub created: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Bounds {
    pub min_replicas: i32,
    pub max_replicas: i32,
}

/// Every AetherApp of the namespace the command works in, and that namespace.
pub async fn list_apps(global: &GlobalArgs) -> Result<(Vec<AetherApp>, String), CliError> {
    let (client, namespace) = crate::cluster::connect(global).await?;
    let api: Api<AetherApp> = Api::namespaced(client, &namespace);
    let apps = api
        .list(&ListParams::default())
        .await
        .map_err(|e| crate::cluster::kube_error(e, "list", "aetherapps", &namespace))?;
    Ok((apps.items, namespace))
}

pub async fn run(global: &GlobalArgs, printer: &Printer) -> Result<(), CliError> {
    let (apps, namespace) = list_apps(global).await?;
    let list = AppList {
        items: apps.iter().map(item).collect(),
    };
    match printer.format {
        OutputFormat::Json | OutputFormat::Yaml => printer.value(&list),
        OutputFormat::Human if list.items.is_empty() => {
            printer.info(format!("No apps in namespace {namespace}"));
        }
        OutputFormat::Human => printer.data(render(&list.items, Timestamp::now()).trim_end()),
    }
    Ok(())
}

fn item(app: &AetherApp) -> AppItem {
    let status = app.status.clone().unwrap_or_default();
    let ready = status.conditions.iter().find(|c| c.type_ == READY);
    AppItem {
        name: app.name_any(),
        namespace: app.namespace().unwrap_or_default(),
        ready: ready.is_some_and(|c| c.status == "True"),
        ready_status: ready.map(|c| c.status.clone()),
        reason: ready.map(|c| c.reason.clone()),
        message: ready.map(|c| c.message.clone()),
        artifact: app.spec.artifact_ref.name.clone(),
        digest: status.artifact.map(|a| a.digest),
        // An autoscaled app's spec.replicas is not read (a GitOps tool may keep it).
        replicas: match &app.spec.autoscaling {
            Some(_) => status.replicas,
            None => app.spec.replicas,
        },
        autoscaling: app.spec.autoscaling.as_ref().map(|a| Bounds {
            min_replicas: a.min_replicas,
            max_replicas: a.max_replicas,
        }),
        ready_replicas: status.ready_replicas,
        url: status.url,
        created: app.metadata.creation_timestamp.as_ref().map(|t| t.0.to_string()),
    }
}

/// The table `aether apps` prints, ages counted to `now`.
pub fn render(items: &[AppItem], now: Timestamp) -> String {
    let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            let age = i
                .created
                .as_deref()
                .and_then(|t| t.parse::<Timestamp>().ok())
                .map(|t| age(now.as_second() - t.as_second()))
                .unwrap_or_else(|| "-".into());
            vec![
                i.name.clone(),
                dash(&i.ready_status),
                dash(&i.reason),
                i.artifact.clone(),
                match &i.autoscaling {
                    Some(b) => format!(
                        "{}/{} ({}-{})",
                        i.ready_replicas, i.replicas, b.min_replicas, b.max_replicas
                    ),
                    None => format!("{}/{}", i.ready_replicas, i.replicas),
                },
                dash(&i.url),
                age,
            ]
        })
        .collect();
    table(
        &["NAME", "READY", "REASON", "ARTIFACT", "REPLICAS", "URL", "AGE"],
        &rows,
    )
}

/// An age as `kubectl get` writes it: precise when recent, coarser as it grows
/// (`45s`, `2m30s`, `17m`, `5h3m`, `3d4h`, `400d`, `2y30d`).
pub fn age(seconds: i64) -> String {
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    match () {
        _ if s < 120 => format!("{s}s"),
        _ if m < 10 && s % 60 == 0 => format!("{m}m"),
        _ if m < 10 => format!("{m}m{}s", s % 60),
        _ if h < 3 => format!("{m}m"),
        _ if h < 8 && m % 60 == 0 => format!("{h}h"),
        _ if h < 8 => format!("{h}h{}m", m % 60),
        _ if h < 48 => format!("{h}h"),
        _ if h < 24 * 8 && h % 24 == 0 => format!("{d}d"),
        _ if h < 24 * 8 => format!("{d}d{}h", h % 24),
        _ if d < 365 * 2 => format!("{d}d"),
        _ if d < 365 * 8 && d % 365 == 0 => format!("{}y", d / 365),
        _ if d < 365 * 8 => format!("{}y{}d", d / 365, d % 365),
        _ => format!("{}y", d / 365),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(yaml: &str) -> AetherApp {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (-3, "0s"),
            (45, "45s"),
            (119, "119s"),
            (150, "2m30s"),
            (300, "5m"),
            (17 * 60 + 5, "17m"),
            (5 * 3600 + 3 * 60, "5h3m"),
            (30 * 3600, "30h"),
            (3 * 86_400 + 4 * 3600, "3d4h"),
            (400 * 86_400, "400d"),
            (3 * 365 * 86_400 + 30 * 86_400, "3y30d"),
        ];
        for (seconds, want) in cases {
            assert_eq!(age(seconds), want, "{seconds}s");
        }
    }

    #[test]
    fn the_table_shows_readiness_replicas_and_url() {
        let ready = app(r#"
metadata: {name: web, namespace: team-a, creationTimestamp: "2025-01-01T10:00:00Z"}
spec: {artifactRef: {name: web-0123456789ab}, replicas: 2}
status:
  readyReplicas: 2
  url: http://10.96.0.12
  artifact: {name: web-0123456789ab, digest: "sha256:01"}
  conditions:
    - {type: Ready, status: "True", reason: Deployed, message: "2/2 pod(s) ready", lastTransitionTime: "2025-01-01T10:00:05Z"}
"#);
        let new = app(r#"
metadata: {name: api, namespace: team-a, creationTimestamp: "2025-01-01T10:04:00Z"}
spec: {artifactRef: {name: api-ba9876543210}}
"#);
        let scaled = app(r#"
metadata: {name: shop, namespace: team-a, creationTimestamp: "2025-01-01T09:05:00Z"}
spec: {artifactRef: {name: shop-0123456789ab}, replicas: 1, autoscaling: {minReplicas: 2, maxReplicas: 5}}
status: {replicas: 3, readyReplicas: 3}
"#);
        let items = [item(&ready), item(&new), item(&scaled)];
        let now: Timestamp = "2025-01-01T10:05:00Z".parse().unwrap();
        assert_eq!(
            render(&items, now),
            "NAME   READY   REASON     ARTIFACT            REPLICAS    URL                 AGE\n\
             web    True    Deployed   web-0123456789ab    2/2         http://10.96.0.12   5m\n\
             api    -       -          api-ba9876543210    0/1         -                   60s\n\
             shop   -       -          shop-0123456789ab   3/3 (2-5)   -                   60m\n"
        );
        let json = serde_json::to_value(AppList { items: items.into() }).unwrap();
        assert_eq!(json["items"][0]["ready"], true);
        assert_eq!(json["items"][0]["readyReplicas"], 2);
        assert_eq!(json["items"][1]["ready"], false);
        assert_eq!(json["items"][1]["url"], serde_json::Value::Null);
        assert_eq!(
            json["items"][2]["replicas"], 3,
            "the autoscaler's count, not Git's 1"
        );
        assert_eq!(json["items"][2]["autoscaling"]["maxReplicas"], 5);
    }
}

//! `aether releases` and `aether rollback`: the app's releases are AetherRelease
//! objects the operator records (crds/src/release.rs), so `kubectl get arel` and
//! GitOps tools see the same history. A rollback writes an earlier release's
//! artifact and configuration back into the app, under its own field manager, and
//! refuses when someone else (a GitOps tool, a hand-applied manifest) owns those
//! fields: the change belongs where they come from.

use aether_crds::{AetherApp, AetherRelease, RELEASE_APP_LABEL, ROLLBACK_TO_ANNOTATION, ReleaseState};
use k8s_openapi::jiff::Timestamp;
use kube::api::ListParams;
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use super::apps::age;
use super::deploy::{self, Follow};
use crate::args::{GlobalArgs, OutputFormat, ReleasesArgs, RollbackArgs};
use crate::errors::CliError;
use crate::printer::{Printer, table};

/// Field manager of `aether rollback`: it owns the artifact and configuration it
/// restores. (`aether push` has its own, which owns only `spec.artifactRef`: a push
/// after a rollback takes the artifact back and leaves the configuration.)
pub const ROLLBACK_MANAGER: &str = "aether-rollback";

/// Field managers that are Aether's own commands: a rollback may take their fields.
const OWN_MANAGERS: [&str; 3] = [deploy::FIELD_MANAGER, ROLLBACK_MANAGER, "aether-config"];

/// The spec fields a rollback writes, as managedFields name them.
const ROLLED_BACK_FIELDS: [(&str, &str); 3] = [
    ("artifactRef", "spec.artifactRef"),
    ("env", "spec.env"),
    ("envFrom", "spec.envFrom"),
];

/// One release, as `aether releases -o json` prints it.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseItem {
    pub name: String,
    pub version: i64,
    pub state: Option<ReleaseState>,
    pub cause: aether_crds::ReleaseCause,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<i64>,
    pub artifact: String,
    pub digest: String,
    pub created_at: Option<Timestamp>,
    pub ready_at: Option<Timestamp>,
    pub config: aether_crds::ReleaseConfig,
}

impl From<&AetherRelease> for ReleaseItem {
    fn from(r: &AetherRelease) -> Self {
        let status = r.status.clone().unwrap_or_default();
        Self {
            name: r.name_any(),
            version: r.spec.version,
            state: status.state,
            cause: r.spec.cause,
            rollback_of: r.spec.rollback_of,
            artifact: r.spec.artifact.name.clone(),
            digest: r.spec.artifact.digest.clone(),
            created_at: r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            ready_at: status.ready_at.map(|t| t.0),
            config: r.spec.config.clone(),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ReleaseList {
    pub items: Vec<ReleaseItem>,
}

pub async fn list(args: &ReleasesArgs, global: &GlobalArgs, printer: &Printer) -> Result<(), CliError> {
    let app = crate::project::target_app(args.app.app.as_deref())?;
    let (client, namespace) = crate::cluster::connect(global).await?;
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), &namespace);
    let found = crate::cluster::get_app(&apps, &app).await?;
    let releases = releases_of(&client, &namespace, &found).await?;
    let items: Vec<ReleaseItem> = releases.iter().map(ReleaseItem::from).collect();
    match printer.format {
        OutputFormat::Human if items.is_empty() => {
            printer.info(format!(
                "app {app} has no releases yet (the operator records one when it first rolls out)"
            ));
        }
        OutputFormat::Human => printer.data(render(&items, Timestamp::now()).trim_end()),
        _ => printer.value(&ReleaseList { items }),
    }
    Ok(())
}

/// The app's releases, newest first (only those the app owns: the operator's).
async fn releases_of(
    client: &Client,
    namespace: &str,
    app: &AetherApp,
) -> Result<Vec<AetherRelease>, CliError> {
    let api: Api<AetherRelease> = Api::namespaced(client.clone(), namespace);
    let selector = format!("{RELEASE_APP_LABEL}={}", app.name_any());
    let uid = app.uid().unwrap_or_default();
    let mut releases: Vec<AetherRelease> = api
        .list(&ListParams::default().labels(&selector))
        .await
        .map_err(|e| crate::cluster::kube_error(e, "list", "aetherreleases", namespace))?
        .items
        .into_iter()
        .filter(|r| r.owner_references().iter().any(|o| o.uid == uid))
        .collect();
    releases.sort_by_key(|r| std::cmp::Reverse(r.spec.version));
    Ok(releases)
}

/// The human table, newest first.
pub fn render(items: &[ReleaseItem], now: Timestamp) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|r| {
            let cause = match r.rollback_of {
                Some(v) => format!("{:?} to v{v}", r.cause),
                None => format!("{:?}", r.cause),
            };
            vec![
                format!("v{}", r.version),
                r.state.map_or("-".into(), |s| format!("{s:?}")),
                cause,
                r.artifact.clone(),
                r.created_at
                    .map_or("-".into(), |t| age(now.duration_since(t).as_secs())),
            ]
        })
        .collect();
    table(&["VERSION", "STATE", "CAUSE", "ARTIFACT", "AGE"], &rows)
}

/// Which release to go back to: `--to`, else the newest release older than the one
/// the app runs that did not fail. Pure.
pub fn target(releases: &[AetherRelease], to: Option<i64>) -> Result<&AetherRelease, String> {
    let current = releases
        .iter()
        .find(|r| r.status.as_ref().and_then(|s| s.state) == Some(ReleaseState::Active))
        .or_else(|| releases.iter().max_by_key(|r| r.spec.version));
    let Some(current) = current else {
        return Err("it has no releases yet".into());
    };
    let chosen = match to {
        Some(v) => releases
            .iter()
            .find(|r| r.spec.version == v)
            .ok_or_else(|| format!("it has no release v{v} (`aether releases` lists those kept)"))?,
        None => releases
            .iter()
            .filter(|r| r.spec.version < current.spec.version)
            .filter(|r| r.status.as_ref().and_then(|s| s.state) != Some(ReleaseState::Failed))
            .max_by_key(|r| r.spec.version)
            .ok_or_else(|| format!("v{} is its oldest release kept", current.spec.version))?,
    };
    if chosen.spec.artifact == current.spec.artifact && chosen.spec.config == current.spec.config {
        return Err(format!(
            "v{} runs the same artifact and configuration as v{}, which it runs now",
            chosen.spec.version, current.spec.version
        ));
    }
    Ok(chosen)
}

/// The fields a rollback would write that a field manager other than Aether's own
/// commands owns: `(field, manager)`. Pure.
pub fn foreign_owners(app: &AetherApp) -> Vec<(String, String)> {
    let mut owners = Vec::new();
    for entry in app.metadata.managed_fields.iter().flatten() {
        let manager = entry.manager.clone().unwrap_or_default();
        if OWN_MANAGERS.contains(&manager.as_str()) || entry.subresource.is_some() {
            continue;
        }
        let spec = entry
            .fields_v1
            .as_ref()
            .and_then(|f| f.0.get("f:spec"))
            .and_then(|s| s.as_object());
        for (key, field) in ROLLED_BACK_FIELDS {
            if spec.is_some_and(|s| s.contains_key(&format!("f:{key}"))) {
                owners.push((field.to_string(), manager.clone()));
            }
        }
    }
    owners
}

/// Refuse (unless `force`) a change of `fields` (as [`foreign_owners`] names them)
/// that another field manager owns: it would undo the change.
pub fn refuse_foreign_owners(app: &AetherApp, fields: &[&str], force: bool) -> Result<(), CliError> {
    let owners: Vec<String> = foreign_owners(app)
        .into_iter()
        .filter(|(field, _)| fields.contains(&field.as_str()))
        .map(|(field, manager)| format!("{field} by {manager}"))
        .collect();
    if owners.is_empty() || force {
        return Ok(());
    }
    Err(CliError::ManagedElsewhere {
        app: app.name_any(),
        owners: owners.join(", "),
    })
}

pub async fn rollback(args: &RollbackArgs, global: &GlobalArgs, printer: &Printer) -> Result<(), CliError> {
    let app = crate::project::target_app(args.app.app.as_deref())?;
    let (client, namespace) = crate::cluster::connect(global).await?;
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), &namespace);
    let found = crate::cluster::get_app(&apps, &app).await?;
    let releases = releases_of(&client, &namespace, &found).await?;
    let release = target(&releases, args.to).map_err(|reason| CliError::NoRollback {
        app: app.clone(),
        reason,
    })?;
    let fields = ROLLED_BACK_FIELDS.map(|(_, field)| field);
    refuse_foreign_owners(&found, &fields, args.force)?;
    let version = release.spec.version;
    let body = serde_json::json!({
        "apiVersion": "aether.dev/v1alpha1",
        "kind": "AetherApp",
        "metadata": {
            "name": app,
            "annotations": {ROLLBACK_TO_ANNOTATION: version.to_string()},
        },
        "spec": {
            "artifactRef": {"name": release.spec.artifact.name},
            "env": release.spec.config.env,
            "envFrom": release.spec.config.env_from,
        },
    });
    let announce = format!(
        "Rolling {app} in {namespace} back to v{version} ({})",
        release.spec.artifact.name
    );
    let follow = args.wait.timeout().map(|timeout| Follow {
        timeout,
        repaired_at: None,
        artifact_verified_at: None,
    });
    let deployed = deploy::apply_and_follow(
        client,
        &namespace,
        (&app, &release.spec.artifact.name),
        (&body, ROLLBACK_MANAGER, &announce),
        follow,
        printer,
    )
    .await?;
    match printer.format {
        OutputFormat::Human => match (&deployed.url, deployed.serving) {
            (Some(url), true) => printer.info(format!("v{version} serves at {url}")),
            _ => printer.info(format!(
                "{app} now points at v{version}'s artifact and configuration"
            )),
        },
        _ => printer.value(&serde_json::json!({
            "app": app,
            "namespace": namespace,
            "rolledBackTo": version,
            "artifact": release.spec.artifact.name,
            "url": deployed.url,
            "serving": deployed.serving,
        })),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_crds::{
        AetherReleaseSpec, AetherReleaseStatus, ReleaseCause, ReleaseConfig, ReleasedArtifact,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};

    fn release(version: i64, artifact: &str, state: ReleaseState) -> AetherRelease {
        let mut r = AetherRelease::new(
            &AetherRelease::name_for("web", version),
            AetherReleaseSpec {
                app: "web".into(),
                version,
                artifact: ReleasedArtifact {
                    name: artifact.into(),
                    digest: format!("sha256:{artifact}"),
                },
                config: ReleaseConfig::default(),
                cause: ReleaseCause::Push,
                rollback_of: None,
            },
        );
        r.status = Some(AetherReleaseStatus {
            state: Some(state),
            ..Default::default()
        });
        r
    }

    #[test]
    fn rollback_goes_to_the_newest_older_release_that_did_not_fail() {
        use ReleaseState::*;
        let releases = [
            release(4, "d", Active),
            release(3, "c", Failed),
            release(2, "b", Superseded),
            release(1, "a", Superseded),
        ];
        assert_eq!(target(&releases, None).unwrap().spec.version, 2);
        assert_eq!(target(&releases, Some(1)).unwrap().spec.version, 1);
        assert!(target(&releases, Some(9)).unwrap_err().contains("no release v9"));
        assert!(target(&releases, Some(4)).unwrap_err().contains("runs now"));
        assert!(target(&releases[..1], None).unwrap_err().contains("oldest"));
        assert!(target(&[], None).unwrap_err().contains("no releases"));
    }

    #[test]
    fn fields_owned_by_a_gitops_tool_are_named_and_aethers_own_are_not() {
        let entry = |manager: &str, fields: serde_json::Value| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Apply".into()),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        };
        let mut app: AetherApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherApp",
            "metadata": {"name": "web"}, "spec": {"artifactRef": {"name": "a"}}
        }))
        .unwrap();
        app.metadata.managed_fields = Some(vec![
            entry("aether-cli", serde_json::json!({"f:spec": {"f:artifactRef": {}}})),
            entry(
                "kustomize-controller",
                serde_json::json!({"f:spec": {"f:env": {}, "f:replicas": {}}}),
            ),
            entry("aether-operator", serde_json::json!({"f:status": {}})),
        ]);
        assert_eq!(
            foreign_owners(&app),
            [("spec.env".to_string(), "kustomize-controller".to_string())]
        );
        assert!(matches!(
            refuse_foreign_owners(&app, &["spec.env"], false),
            Err(CliError::ManagedElsewhere { owners, .. }) if owners == "spec.env by kustomize-controller"
        ));
        assert!(
            refuse_foreign_owners(&app, &["spec.env"], true).is_ok(),
            "--force"
        );
        assert!(
            refuse_foreign_owners(&app, &["spec.artifactRef"], false).is_ok(),
            "Aether's own field"
        );
    }

    #[test]
    fn the_table_says_what_each_release_was() {
        let mut back = release(3, "web-aaa", ReleaseState::Active);
        back.spec.cause = ReleaseCause::Rollback;
        back.spec.rollback_of = Some(1);
        let items: Vec<ReleaseItem> = [&back, &release(2, "web-bbb", ReleaseState::Superseded)]
            .into_iter()
            .map(ReleaseItem::from)
            .collect();
        let text = render(&items, Timestamp::now());
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("VERSION"), "{text}");
        assert!(
            lines[1].starts_with("v3") && lines[1].contains("Rollback to v1"),
            "{text}"
        );
        assert!(
            lines[2].contains("Superseded") && lines[2].contains("web-bbb"),
            "{text}"
        );
    }
}

//! `aether config set|unset|get`: the app's environment, changed as a release.
//!
//! Plain values go into `spec.env` (field manager `aether-config`). Secret values
//! (`--secret`) never go into the AetherApp or any status: they go into the Secret
//! `<app>-config`, written with the user's own rights, which the app reads through
//! `spec.envFrom`. The operator sees only the Secret's name and version, and rolls
//! the pods when the version changes. A change of `env` or `envFrom` is a release; a
//! new value in the Secret rolls the pods without one (releases record references).

use std::collections::BTreeMap;

use aether_crds::AetherApp;
use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, Secret, SecretEnvSource};
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt};
use serde::Serialize;

use super::deploy::{self, Follow};
use super::releases::refuse_foreign_owners;
use crate::args::{
    ConfigChangeArgs, ConfigGetArgs, ConfigSetArgs, ConfigUnsetArgs, GlobalArgs, OutputFormat,
};
use crate::errors::CliError;
use crate::printer::{Printer, table};

/// Field manager of `aether config`: it owns `spec.env` and `spec.envFrom` once it
/// changed them, and the keys it wrote into the config Secret.
pub const CONFIG_MANAGER: &str = "aether-config";

/// The Secret holding an app's secret values.
pub fn secret_name(app: &str) -> String {
    format!("{app}-config")
}

/// `KEY=VALUE`, with KEY an environment variable name (clap's value parser). Pure.
pub fn parse_pair(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))?;
    check_key(key)?;
    Ok((key.to_string(), value.to_string()))
}

/// An environment variable name: letters, digits and `_`, not starting with a
/// digit (clap's value parser). Pure.
pub fn check_key(key: &str) -> Result<String, String> {
    let mut chars = key.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Ok(key.to_string())
    } else {
        Err(format!(
            "{key:?} is not an environment variable name (letters, digits and _, not starting with a digit)"
        ))
    }
}

/// `env` with each of `pairs` set as a plain value: in place where the name is
/// there, else appended. Pure.
pub fn with_values(env: &[EnvVar], pairs: &[(String, String)]) -> Vec<EnvVar> {
    let mut env = env.to_vec();
    for (key, value) in pairs {
        let var = EnvVar {
            name: key.clone(),
            value: Some(value.clone()),
            value_from: None,
        };
        match env.iter_mut().find(|e| &e.name == key) {
            Some(existing) => *existing = var,
            None => env.push(var),
        }
    }
    env
}

/// `env` without `keys`. Pure.
pub fn without(env: &[EnvVar], keys: &[String]) -> Vec<EnvVar> {
    env.iter().filter(|e| !keys.contains(&e.name)).cloned().collect()
}

/// `env_from` reading the Secret `name` (once). Pure.
pub fn with_secret_source(env_from: &[EnvFromSource], name: &str) -> Vec<EnvFromSource> {
    let mut env_from = env_from.to_vec();
    let present = env_from
        .iter()
        .any(|e| e.prefix.is_none() && e.secret_ref.as_ref().is_some_and(|s| s.name == name));
    if !present {
        env_from.push(EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: name.into(),
                optional: None,
            }),
            ..Default::default()
        });
    }
    env_from
}

/// A change of the app's environment.
#[derive(Debug, Clone, Copy)]
pub enum Change<'a> {
    /// Plain values into `spec.env`.
    Set(&'a [(String, String)]),
    /// Values into the config Secret, which `spec.envFrom` then reads; a plain entry
    /// of the same name would hide it, so it goes.
    SetSecret(&'a [(String, String)]),
    /// Gone from `spec.env` and from the config Secret.
    Unset(&'a [String]),
}

impl Change<'_> {
    /// The app's `env` and `envFrom` after the change. Pure.
    pub fn apply_to(self, app: &AetherApp) -> (Vec<EnvVar>, Vec<EnvFromSource>) {
        let keys = |pairs: &[(String, String)]| pairs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        match self {
            Change::Set(pairs) => (with_values(&app.spec.env, pairs), app.spec.env_from.clone()),
            Change::SetSecret(pairs) => (
                without(&app.spec.env, &keys(pairs)),
                with_secret_source(&app.spec.env_from, &secret_name(&app.name_any())),
            ),
            Change::Unset(keys) => (without(&app.spec.env, keys), app.spec.env_from.clone()),
        }
    }
}

pub async fn set(args: &ConfigSetArgs, global: &GlobalArgs, printer: &Printer) -> Result<(), CliError> {
    let change = match args.secret {
        true => Change::SetSecret(&args.pairs),
        false => Change::Set(&args.pairs),
    };
    apply(&args.change, change, global, printer).await
}

pub async fn unset(args: &ConfigUnsetArgs, global: &GlobalArgs, printer: &Printer) -> Result<(), CliError> {
    apply(&args.change, Change::Unset(&args.keys), global, printer).await
}

async fn apply(
    target: &ConfigChangeArgs,
    change: Change<'_>,
    global: &GlobalArgs,
    printer: &Printer,
) -> Result<(), CliError> {
    let name = crate::project::target_app(target.app.app.as_deref())?;
    let (client, namespace) = crate::cluster::connect(global).await?;
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), &namespace);
    let app = crate::cluster::get_app(&apps, &name).await?;
    refuse_foreign_owners(&app, &["spec.env", "spec.envFrom"], target.force)?;

    let revision = match change {
        Change::Set(_) => None,
        Change::SetSecret(pairs) => Some(write_secret(&client, &namespace, &app, pairs).await?),
        Change::Unset(keys) => remove_from_secret(&client, &namespace, &app, keys).await?,
    };
    let (env, env_from) = change.apply_to(&app);
    if env == app.spec.env && env_from == app.spec.env_from && revision.is_none() {
        printer.info(format!(
            "app {name}'s configuration is already so: nothing to change"
        ));
        return Ok(());
    }
    // The Secret's new version, in the spec: a new generation, which rolls the pods
    // and which the wait below follows like any other change.
    let revision = revision.or_else(|| app.spec.config_revision.clone());
    let mut spec = serde_json::json!({"env": env, "envFrom": env_from});
    if let Some(revision) = revision {
        spec["configRevision"] = revision.into();
    }
    let body = serde_json::json!({
        "apiVersion": "aether.dev/v1alpha1",
        "kind": "AetherApp",
        "metadata": {"name": name},
        "spec": spec,
    });
    let follow = target.wait.timeout().map(|timeout| Follow {
        timeout,
        repaired_at: None,
    });
    let artifact = app.spec.artifact_ref.name.clone();
    let announce = format!("App {name} in {namespace}: new configuration for {artifact}");
    let deployed = deploy::apply_and_follow(
        client,
        &namespace,
        (&name, &artifact),
        (&body, CONFIG_MANAGER, &announce),
        follow,
        printer,
    )
    .await?;
    match printer.format {
        OutputFormat::Human if deployed.serving => {
            printer.info(format!("app {name} serves with the new configuration"));
        }
        OutputFormat::Human => printer.info(format!("app {name} rolls out the new configuration")),
        _ => printer.value(&serde_json::json!({
            "app": name,
            "namespace": namespace,
            "serving": deployed.serving,
            "url": deployed.url,
        })),
    }
    Ok(())
}

/// Put `pairs` into the app's config Secret (created on first use); its new
/// resourceVersion.
/// The app owns the Secret, so it goes with the app.
async fn write_secret(
    client: &Client,
    namespace: &str,
    app: &AetherApp,
    pairs: &[(String, String)],
) -> Result<String, CliError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = secret_name(&app.name_any());
    // Never another Secret of that name: the app would read all of it, and delete it
    // with itself.
    let existing = api
        .get_opt(&name)
        .await
        .map_err(|e| secret_error(e, "read", namespace))?;
    if existing.is_some_and(|existing| !is_apps(&existing, app)) {
        return Err(CliError::SecretNotOurs {
            name,
            app: app.name_any(),
            namespace: namespace.into(),
        });
    }
    let data: BTreeMap<&str, &str> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let owner = serde_json::json!({
        "apiVersion": "aether.dev/v1alpha1",
        "kind": "AetherApp",
        "name": app.name_any(),
        "uid": app.uid().unwrap_or_default(),
    });
    let body = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "labels": {"aether.dev/app": app.name_any(), "app.kubernetes.io/managed-by": "aether"},
            "ownerReferences": [owner],
        },
        "type": "Opaque",
        "stringData": data,
    });
    let written = api
        .patch(
            &name,
            &PatchParams::apply(CONFIG_MANAGER).force(),
            &Patch::Apply(&body),
        )
        .await
        .map_err(|e| secret_error(e, "write", namespace))?;
    Ok(written.resource_version().unwrap_or_default())
}

/// Remove `keys` from the app's config Secret; its new resourceVersion, or None
/// when it held none of them (or does not exist).
async fn remove_from_secret(
    client: &Client,
    namespace: &str,
    app: &AetherApp,
    keys: &[String],
) -> Result<Option<String>, CliError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let name = secret_name(&app.name_any());
    let secret = match api.get_opt(&name).await {
        // Only the app's own: another Secret of that name is not aether's to edit.
        Ok(Some(secret)) if is_apps(&secret, app) => secret,
        Ok(_) => return Ok(None),
        // Someone without rights on Secrets can still unset plain values.
        Err(kube::Error::Api(e)) if e.code == 403 => return Ok(None),
        Err(e) => return Err(secret_error(e, "read", namespace)),
    };
    let held: Vec<&String> = keys
        .iter()
        .filter(|k| secret.data.as_ref().is_some_and(|d| d.contains_key(*k)))
        .collect();
    if held.is_empty() {
        return Ok(None);
    }
    // A merge patch with null values removes those keys.
    let data: serde_json::Map<String, serde_json::Value> = held
        .iter()
        .map(|k| ((*k).clone(), serde_json::Value::Null))
        .collect();
    let written = api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({ "data": data })),
        )
        .await
        .map_err(|e| secret_error(e, "write", namespace))?;
    Ok(Some(written.resource_version().unwrap_or_default()))
}

/// The app's own config Secret: labelled for it and owned by it (by uid).
fn is_apps(secret: &Secret, app: &AetherApp) -> bool {
    secret.labels().get("aether.dev/app") == Some(&app.name_any())
        && secret
            .owner_references()
            .iter()
            .any(|o| Some(&o.uid) == app.uid().as_ref())
}

fn secret_error(e: kube::Error, verb: &str, namespace: &str) -> CliError {
    match e {
        kube::Error::Api(s) if s.code == 403 => CliError::SecretForbidden {
            verb: verb.into(),
            namespace: namespace.into(),
        },
        e => crate::cluster::kube_error(e, verb, "secrets", namespace),
    }
}

/// One variable, as `aether config get` shows it: a plain value, or where the value
/// comes from. Secret values are never shown.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ConfigItem {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `secret NAME`, `configmap NAME` or `field PATH` for what is not a plain value.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ConfigView {
    pub app: String,
    pub items: Vec<ConfigItem>,
    /// Whole Secrets and ConfigMaps the app reads (`spec.envFrom`).
    pub sources: Vec<String>,
}

/// The app's configuration as shown. Pure.
pub fn view(app: &AetherApp) -> ConfigView {
    let items = app
        .spec
        .env
        .iter()
        .map(|e| {
            let from = e.value_from.as_ref().map(|f| {
                if let Some(s) = &f.secret_key_ref {
                    format!("secret {} key {}", s.name, s.key)
                } else if let Some(c) = &f.config_map_key_ref {
                    format!("configmap {} key {}", c.name, c.key)
                } else if let Some(field) = &f.field_ref {
                    format!("field {}", field.field_path)
                } else {
                    "resource".to_string()
                }
            });
            ConfigItem {
                name: e.name.clone(),
                value: e.value.clone().filter(|_| from.is_none()),
                from,
            }
        })
        .collect();
    let sources = app
        .spec
        .env_from
        .iter()
        .filter_map(|e| {
            let prefix = e
                .prefix
                .as_deref()
                .map(|p| format!(" (prefix {p})"))
                .unwrap_or_default();
            match (&e.secret_ref, &e.config_map_ref) {
                (Some(s), _) => Some(format!("secret {}{prefix}", s.name)),
                (None, Some(c)) => Some(format!("configmap {}{prefix}", c.name)),
                (None, None) => None,
            }
        })
        .collect();
    ConfigView {
        app: app.name_any(),
        items,
        sources,
    }
}

pub async fn get(args: &ConfigGetArgs, global: &GlobalArgs, printer: &Printer) -> Result<(), CliError> {
    let name = crate::project::target_app(args.app.app.as_deref())?;
    let (client, namespace) = crate::cluster::connect(global).await?;
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), &namespace);
    let app = crate::cluster::get_app(&apps, &name).await?;
    let mut view = view(&app);
    // The config Secret's keys (never its values), for those who may read it.
    let secrets: Api<Secret> = Api::namespaced(client, &namespace);
    let config = secret_name(&name);
    if view.sources.iter().any(|s| s == &format!("secret {config}"))
        && let Ok(Some(secret)) = secrets.get_opt(&config).await
    {
        for key in secret.data.unwrap_or_default().into_keys() {
            view.items.push(ConfigItem {
                name: key.clone(),
                value: None,
                from: Some(format!("secret {config} key {key}")),
            });
        }
    }
    match printer.format {
        OutputFormat::Human => {
            let rows: Vec<Vec<String>> = view
                .items
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.value
                            .clone()
                            .unwrap_or_else(|| format!("({})", i.from.clone().unwrap_or_default())),
                    ]
                })
                .collect();
            printer.data(table(&["NAME", "VALUE"], &rows).trim_end());
            for source in &view.sources {
                printer.data(&format!("all keys of {source}"));
            }
        }
        _ => printer.value(&view),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: Some(value.into()),
            value_from: None,
        }
    }

    #[test]
    fn pairs_and_keys_are_checked() {
        assert_eq!(parse_pair("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert_eq!(parse_pair("EMPTY=").unwrap(), ("EMPTY".into(), String::new()));
        assert!(parse_pair("novalue").unwrap_err().contains("KEY=VALUE"));
        for bad in ["1A=x", "A-B=x", "=x", "A B=x"] {
            assert!(parse_pair(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn values_are_set_in_place_or_appended_and_removed_by_name() {
        let env = [plain("A", "1"), plain("B", "2")];
        let set = with_values(&env, &[("B".into(), "3".into()), ("C".into(), "4".into())]);
        assert_eq!(set, [plain("A", "1"), plain("B", "3"), plain("C", "4")]);
        assert_eq!(without(&set, &["A".into(), "C".into()]), [plain("B", "3")]);
    }

    #[test]
    fn the_config_secret_is_referenced_once() {
        let once = with_secret_source(&[], "web-config");
        assert_eq!(once.len(), 1);
        assert_eq!(with_secret_source(&once, "web-config"), once);
    }

    #[test]
    fn secret_values_are_never_shown_only_where_they_come_from() {
        let mut app: AetherApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherApp",
            "metadata": {"name": "web"},
            "spec": {"artifactRef": {"name": "a"},
                     "env": [{"name": "A", "value": "1"},
                             {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}]}
        }))
        .unwrap();
        app.spec.env_from = with_secret_source(&[], "web-config");
        let v = view(&app);
        assert_eq!(v.items[0].value.as_deref(), Some("1"));
        assert_eq!(v.items[1].value, None);
        assert_eq!(v.items[1].from.as_deref(), Some("secret db key url"));
        assert_eq!(v.sources, ["secret web-config"]);
    }
}

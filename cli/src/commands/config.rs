//! `aether config set|unset|get`: the app's environment, changed as a release.
//!
//! Plain values go into `spec.env` (field manager `aether-config`). Secret values
//! (`--secret`) never go into the AetherApp or any status: they go into a new
//! immutable Secret (`<app>-config-<random>`, see
//! [`aether_crds::config_secret_prefix`]), written with the user's own rights, which
//! the app reads through `spec.envFrom`. New values are a new Secret and a new
//! reference, so every change is a release, and a rollback restores the values the
//! release ran with. The operator sees only the Secret's name and version.

use std::collections::BTreeMap;

use aether_crds::{AetherApp, RELEASE_APP_LABEL, config_secret_prefix, is_config_secret_name};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar, Secret, SecretEnvSource};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::PostParams;
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;

use super::deploy::{self, Follow};
use super::releases::refuse_foreign_owners;
use crate::args::{
    ConfigChangeArgs, ConfigGetArgs, ConfigSetArgs, ConfigUnsetArgs, GlobalArgs, OutputFormat,
};
use crate::errors::CliError;
use crate::printer::{Printer, table};

/// Field manager of `aether config`: it owns `spec.env` and `spec.envFrom` once it
/// changed them.
pub const CONFIG_MANAGER: &str = "aether-config";

/// Secret values by key.
pub type Values = BTreeMap<String, Vec<u8>>;

/// The app's config Secret: the Secret `spec.envFrom` reads (without a prefix) that
/// `aether config` wrote (earlier versions wrote one mutable `<app>-config`, whose
/// values carry over into the first new one). Pure.
pub fn config_source(app: &AetherApp) -> Option<String> {
    let name = app.name_any();
    app.spec
        .env_from
        .iter()
        .filter(|e| e.prefix.is_none())
        .filter_map(|e| e.secret_ref.as_ref())
        .map(|s| s.name.clone())
        .find(|n| is_config_secret_name(&name, n))
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

/// `env_from` reading the Secret `to` instead of `from`: in its place, appended when
/// `from` is not read, and `from` dropped when `to` is None. Pure.
pub fn switch_secret_source(
    env_from: &[EnvFromSource],
    from: Option<&str>,
    to: Option<&str>,
) -> Vec<EnvFromSource> {
    let reads = |e: &EnvFromSource, name: &str| {
        e.prefix.is_none() && e.secret_ref.as_ref().is_some_and(|s| s.name == name)
    };
    let source = |name: &str| EnvFromSource {
        secret_ref: Some(SecretEnvSource {
            name: name.into(),
            optional: None,
        }),
        ..Default::default()
    };
    let mut switched = Vec::new();
    for e in env_from {
        match (from, to) {
            (Some(from), Some(to)) if reads(e, from) && !switched.iter().any(|s| reads(s, to)) => {
                switched.push(source(to));
            }
            (Some(from), _) if reads(e, from) => {}
            _ => switched.push(e.clone()),
        }
    }
    if let Some(to) = to.filter(|to| !switched.iter().any(|s| reads(s, to))) {
        switched.push(source(to));
    }
    switched
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
    /// The config Secret's values after the change, from those it `held`; None when
    /// the change leaves them as they are. Pure.
    pub fn secret_values(self, held: &Values) -> Option<Values> {
        self.changed_values(held).filter(|values| values != held)
    }

    fn changed_values(self, held: &Values) -> Option<Values> {
        match self {
            Change::Set(_) => None,
            Change::SetSecret(pairs) => {
                let mut values = held.clone();
                values.extend(pairs.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())));
                Some(values)
            }
            Change::Unset(keys) if keys.iter().any(|k| held.contains_key(k)) => Some(
                held.iter()
                    .filter(|(k, _)| !keys.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
            Change::Unset(_) => None,
        }
    }

    /// The app's `env` and `envFrom` after the change, `secret` being the config
    /// Secret it leaves (None: none, the values are all gone). Pure.
    pub fn apply_to(self, app: &AetherApp, secret: Option<&str>) -> (Vec<EnvVar>, Vec<EnvFromSource>) {
        let keys = |pairs: &[(String, String)]| pairs.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        let env = match self {
            Change::Set(pairs) => with_values(&app.spec.env, pairs),
            Change::SetSecret(pairs) => without(&app.spec.env, &keys(pairs)),
            Change::Unset(keys) => without(&app.spec.env, keys),
        };
        let env_from = switch_secret_source(&app.spec.env_from, config_source(app).as_deref(), secret);
        (env, env_from)
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

/// Attempts at a change while other changes of the app keep landing between the
/// read and the write.
const ATTEMPTS: usize = 5;

async fn apply(
    target: &ConfigChangeArgs,
    change: Change<'_>,
    global: &GlobalArgs,
    printer: &Printer,
) -> Result<(), CliError> {
    let name = crate::project::target_app(target.app.app.as_deref())?;
    let (client, namespace) = crate::cluster::connect(global).await?;
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), &namespace);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    let mut attempt = 0;
    let applied = loop {
        attempt += 1;
        let app = crate::cluster::get_app(&apps, &name).await?;
        refuse_foreign_owners(&app, &["spec.env", "spec.envFrom"], target.force)?;

        let current = config_source(&app);
        let held = match (change, &current) {
            (Change::Set(_), _) | (_, None) => Values::new(),
            (_, Some(source)) => held_values(&secrets, &app, source, change, printer).await?,
        };
        let (secret, created) = match change.secret_values(&held) {
            None => (current, None),
            Some(values) if values.is_empty() => (None, None),
            Some(values) => {
                let created = write_secret(&secrets, &app, &values).await?;
                (Some(created.clone()), Some(created))
            }
        };
        let (env, env_from) = change.apply_to(&app, secret.as_deref());
        if env == app.spec.env && env_from == app.spec.env_from {
            printer.info(format!(
                "app {name}'s configuration is already so: nothing to change"
            ));
            return Ok(());
        }
        // Against the version read: a change made meanwhile (another `config set`)
        // is not overwritten with values copied before it; the API refuses, and the
        // change is made again on what is there now.
        let body = serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1",
            "kind": "AetherApp",
            "metadata": {"name": name, "resourceVersion": app.resource_version()},
            "spec": {"env": env, "envFrom": env_from},
        });
        let outcome = match deploy::apply_app(&apps, &name, &body, CONFIG_MANAGER).await {
            // The client sends an apply again when the API server cut the connection
            // before answering (a restart): if the first one was done, the second is
            // refused against the version read. The app naming the new Secret says so;
            // the Secret must not be deleted then.
            Err(kube::Error::Api(e)) if e.code == 409 => match (&created, apps.get_opt(&name).await) {
                (Some(created), Ok(Some(now))) if config_source(&now).as_ref() == Some(created) => Ok(now),
                _ => Err(kube::Error::Api(e)),
            },
            other => other,
        };
        if let (Err(_), Some(created)) = (&outcome, &created) {
            // Not read by the app: gone again (what stays goes with the app).
            let _ = secrets.delete(created, &Default::default()).await;
        }
        match outcome {
            Ok(applied) => break applied,
            Err(kube::Error::Api(e)) if e.code == 409 && attempt < ATTEMPTS => continue,
            Err(e) => return Err(crate::cluster::kube_error(e, "apply", "aetherapps", &namespace)),
        }
    };
    let follow = target.wait.timeout().map(|timeout| Follow {
        timeout,
        repaired_at: None,
        artifact_verified_at: None,
    });
    let artifact = applied.spec.artifact_ref.name.clone();
    let announce = format!("App {name} in {namespace}: new configuration for {artifact}");
    let deployed = deploy::follow_applied(
        client,
        &namespace,
        (&name, &artifact),
        (&applied, &announce),
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

/// The values the app's config Secret `name` holds. A Secret of that name that is
/// not the app's is refused for `--secret` (the app would keep reading it) and
/// ignored by `unset`. One the user may not read is refused unless the change needs
/// none of it (`unset` of plain values only).
async fn held_values(
    api: &Api<Secret>,
    app: &AetherApp,
    name: &str,
    change: Change<'_>,
    printer: &Printer,
) -> Result<Values, CliError> {
    let namespace = app.namespace().unwrap_or_default();
    let setting = matches!(change, Change::SetSecret(_));
    let plain_only = match change {
        Change::Unset(keys) => keys.iter().all(|k| app.spec.env.iter().any(|e| &e.name == k)),
        _ => false,
    };
    match api.get_opt(name).await {
        Ok(Some(secret)) if is_apps(&secret, app) => Ok(values_of(&secret)),
        Ok(Some(_)) if setting => Err(CliError::SecretNotOurs {
            name: name.into(),
            app: app.name_any(),
            namespace,
        }),
        Ok(Some(_)) => Ok(Values::new()),
        Ok(None) => {
            printer.warn(format!(
                "the config Secret {name} app {} reads is gone: its values are lost",
                app.name_any()
            ));
            Ok(Values::new())
        }
        Err(kube::Error::Api(e)) if e.code == 403 && plain_only => Ok(Values::new()),
        Err(e) => Err(secret_error(e, "read", &namespace)),
    }
}

fn values_of(secret: &Secret) -> Values {
    let data = secret.data.clone().unwrap_or_default();
    data.into_iter().map(|(k, v)| (k, v.0)).collect()
}

/// Create a new immutable config Secret of the app holding `values`; its name (the
/// API server's, from [`config_secret_prefix`]). The app owns it, so it goes with
/// the app; the operator deletes it once no release the app keeps names it.
async fn write_secret(api: &Api<Secret>, app: &AetherApp, values: &Values) -> Result<String, CliError> {
    let secret = Secret {
        metadata: ObjectMeta {
            generate_name: Some(config_secret_prefix(&app.name_any())),
            labels: Some(BTreeMap::from([
                (RELEASE_APP_LABEL.to_string(), app.name_any()),
                ("app.kubernetes.io/managed-by".to_string(), "aether".to_string()),
            ])),
            // The app controls it (the operator deletes it past retention), without
            // blockOwnerDeletion, which would need rights on the app's finalizers.
            owner_references: Some(vec![OwnerReference {
                api_version: AetherApp::api_version(&()).into(),
                kind: AetherApp::kind(&()).into(),
                name: app.name_any(),
                uid: app.uid().unwrap_or_default(),
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..Default::default()
        },
        type_: Some("Opaque".into()),
        immutable: Some(true),
        data: Some(
            values
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone())))
                .collect(),
        ),
        ..Default::default()
    };
    let created = api
        .create(&PostParams::default(), &secret)
        .await
        .map_err(|e| secret_error(e, "write", &app.namespace().unwrap_or_default()))?;
    Ok(created.name_any())
}

/// The app's own config Secret: labelled for it and owned by it (by uid).
fn is_apps(secret: &Secret, app: &AetherApp) -> bool {
    secret.labels().get(RELEASE_APP_LABEL) == Some(&app.name_any())
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
    if let Some(config) = config_source(&app)
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

    fn source(name: &str, prefix: Option<&str>) -> EnvFromSource {
        EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: name.into(),
                optional: None,
            }),
            prefix: prefix.map(Into::into),
            ..Default::default()
        }
    }

    #[test]
    fn the_config_secret_is_switched_in_place_and_read_once() {
        let theirs = source("db", None);
        let env_from = [source("web-config-0000000000", None), theirs.clone()];
        let next = "web-config-1111111111";
        let names = |e: &[EnvFromSource]| {
            e.iter()
                .map(|s| s.secret_ref.as_ref().unwrap().name.clone())
                .collect::<Vec<_>>()
        };
        let switched = switch_secret_source(&env_from, Some("web-config-0000000000"), Some(next));
        assert_eq!(names(&switched), [next, "db"], "in its place");
        assert_eq!(
            names(&switch_secret_source(
                std::slice::from_ref(&theirs),
                None,
                Some(next)
            )),
            ["db", next]
        );
        assert_eq!(
            names(&switch_secret_source(
                &env_from,
                Some("web-config-0000000000"),
                None
            )),
            ["db"],
            "no values left, no reference"
        );
        assert_eq!(switch_secret_source(&switched, Some(next), Some(next)), switched);
        let prefixed = [source(next, Some("X_"))];
        assert_eq!(
            switch_secret_source(&prefixed, None, Some(next)).len(),
            2,
            "a prefixed source is someone else's use of it"
        );
    }

    #[test]
    fn secret_values_merge_and_unset_and_only_secret_changes_touch_them() {
        let held: Values = [("A".to_string(), b"1".to_vec()), ("B".to_string(), b"2".to_vec())].into();
        let set = [
            ("B".to_string(), "3".to_string()),
            ("C".to_string(), "4".to_string()),
        ];
        let values = Change::SetSecret(&set).secret_values(&held).unwrap();
        assert_eq!(values.get("B").unwrap(), b"3");
        assert_eq!(values.len(), 3);
        let gone = Change::Unset(&["A".to_string()]).secret_values(&held).unwrap();
        assert_eq!(gone.keys().collect::<Vec<_>>(), ["B"]);
        assert_eq!(
            Change::Unset(&["Z".to_string()]).secret_values(&held),
            None,
            "nothing held"
        );
        assert_eq!(Change::Set(&set).secret_values(&held), None);
        let same = [("A".to_string(), "1".to_string())];
        assert_eq!(
            Change::SetSecret(&same).secret_values(&held),
            None,
            "already so: no new Secret"
        );
    }

    #[test]
    fn the_app_s_config_secret_is_the_one_aether_config_wrote() {
        let mut app: AetherApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherApp",
            "metadata": {"name": "web"}, "spec": {"artifactRef": {"name": "a"}}
        }))
        .unwrap();
        assert_eq!(config_source(&app), None);
        app.spec.env_from = vec![source("db", None), source("web-config-0123456789", Some("X_"))];
        assert_eq!(
            config_source(&app),
            None,
            "not a config Secret, or read with a prefix"
        );
        app.spec.env_from.push(source("web-config", None));
        assert_eq!(
            config_source(&app).as_deref(),
            Some("web-config"),
            "an earlier version's"
        );
        app.spec.env_from = vec![source("web-config-0123456789", None)];
        assert_eq!(config_source(&app).as_deref(), Some("web-config-0123456789"));
        let (_, env_from) = Change::SetSecret(&[]).apply_to(&app, Some("web-config-abcdefabcd"));
        assert_eq!(env_from, [source("web-config-abcdefabcd", None)]);
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
        app.spec.env_from = switch_secret_source(&[], None, Some("web-config"));
        let v = view(&app);
        assert_eq!(v.items[0].value.as_deref(), Some("1"));
        assert_eq!(v.items[1].value, None);
        assert_eq!(v.items[1].from.as_deref(), Some("secret db key url"));
        assert_eq!(v.sources, ["secret web-config"]);
    }
}

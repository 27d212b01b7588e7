// kube-derive takes one `printcolumn(...)` per column, so their keys repeat by design.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{EnvFromSource, EnvVar};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Label on each release naming its app (releases are listed by it).
pub const RELEASE_APP_LABEL: &str = "aether.dev/app";

/// Annotation `aether rollback` sets on the AetherApp together with the spec it
/// restores: the version it goes back to. The operator records the release that
/// follows as a rollback only when its content is that version's.
pub const ROLLBACK_TO_ANNOTATION: &str = "aether.dev/rollback-to";

/// The prefix of the Secrets `aether config set --secret` writes an app's secret
/// values into: each immutable, named by the API server from this prefix
/// (`generateName`), so a release that names one names the values it ran with, and
/// a rollback restores them. A change of values is a new Secret and a new
/// `spec.envFrom` reference, hence a release. The name says nothing of the values
/// (a digest of them would let anyone who sees the app check guesses).
pub fn config_secret_prefix(app: &str) -> String {
    format!("{app}-config-")
}

/// Whether `name` is one of `app`'s config Secrets by its form: a
/// [`config_secret_prefix`] name, or `<app>-config`, the single mutable Secret
/// earlier versions used (whose Secret it is, its owner reference says).
pub fn is_config_secret_name(app: &str, name: &str) -> bool {
    match name
        .strip_prefix(app)
        .and_then(|rest| rest.strip_prefix("-config"))
    {
        Some("") => true,
        Some(rest) => rest.strip_prefix('-').is_some_and(|suffix| {
            !suffix.is_empty()
                && suffix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        }),
        None => false,
    }
}

/// One immutable, numbered release of an app: the artifact and the configuration its
/// pods ran with. The operator records one each time an app's pods roll to a new
/// artifact or configuration (`spec.artifactRef`, `spec.env`, `spec.envFrom`), names
/// it `<app>-v<version>`, owns it by the app, and keeps the newest ones (its
/// `--keep-releases`); the artifacts they name are kept with them. `aether rollback`
/// copies a release's artifact and configuration back into the app.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "aether.dev",
    version = "v1alpha1",
    kind = "AetherRelease",
    namespaced,
    status = "AetherReleaseStatus",
    derive = "PartialEq",
    shortname = "arel",
    category = "aether",
    doc = "An immutable, numbered release of an AetherApp: artifact and configuration",
    printcolumn(name = "App", type_ = "string", json_path = ".spec.app"),
    printcolumn(name = "Version", type_ = "integer", json_path = ".spec.version"),
    printcolumn(name = "Artifact", type_ = "string", json_path = ".spec.artifact.name"),
    printcolumn(name = "Cause", type_ = "string", json_path = ".spec.cause"),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    printcolumn(name = "Digest", type_ = "string", json_path = ".spec.artifact.digest", priority = 1),
    validation = Rule::new("self.spec == oldSelf.spec").message("a release is immutable: roll back or push to make a new one")
)]
#[serde(rename_all = "camelCase")]
pub struct AetherReleaseSpec {
    /// The AetherApp this is a release of.
    #[schemars(length(min = 1, max = 63))]
    pub app: String,
    /// 1 for the app's first release, then one more for each.
    #[schemars(range(min = 1))]
    pub version: i64,
    pub artifact: ReleasedArtifact,
    /// The configuration the pods ran with.
    #[serde(default)]
    pub config: ReleaseConfig,
    pub cause: ReleaseCause,
    /// For a rollback (either cause): the version whose artifact and configuration
    /// it restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_of: Option<i64>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReleasedArtifact {
    /// The AetherArtifact's name.
    pub name: String,
    /// Its digest (`sha256:…`).
    pub digest: String,
}

/// An app's environment: `spec.env` and `spec.envFrom` as they were. Secret values
/// are never here, only references to them.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
}

/// Why the release was made.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseCause {
    /// A new artifact (`aether push`, or a GitOps change of `spec.artifactRef`).
    Push,
    /// The same artifact with other configuration.
    Config,
    /// `aether rollback`: an earlier release's artifact and configuration.
    Rollback,
    /// The operator went back to the last release that served, because the rollout
    /// of the app's newest one failed (`spec.autoRollback`).
    AutomaticRollback,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AetherReleaseStatus {
    /// Unset until its rollout is judged: `Active` once the app served it, until a
    /// newer release is made (`Superseded`); `Failed` when its rollout failed before
    /// it ever served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<ReleaseState>,
    /// When the app first served it with every pod ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_at: Option<Time>,
    /// The app's generation when its rollout failed: `spec.autoRollback` goes back
    /// only while the app is unchanged since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_generation: Option<i64>,
}

#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseState {
    Active,
    Superseded,
    Failed,
}

impl AetherRelease {
    /// The object name of `app`'s release `version`.
    pub fn name_for(app: &str, version: i64) -> String {
        format!("{app}-v{version}")
    }

    /// Labels every release of `app` carries.
    pub fn labels_for(app: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            (RELEASE_APP_LABEL.to_string(), app.to_string()),
            ("app.kubernetes.io/name".to_string(), app.to_string()),
            (
                "app.kubernetes.io/managed-by".to_string(),
                "aether-operator".to_string(),
            ),
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_s_config_secrets_are_known_by_their_name_s_form() {
        for ours in ["web-config-x7k2q", "web-config", "web-config-0a"] {
            assert!(is_config_secret_name("web", ours), "{ours}");
        }
        for other in [
            "web-config-",
            "web-configx",
            "web-config-A1",
            "web-config-a-b",
            "webx-config-abc",
            "db",
        ] {
            assert!(!is_config_secret_name("web", other), "{other}");
        }
        let theirs = format!("{}abcde", config_secret_prefix("web-config"));
        assert!(
            !is_config_secret_name("web", &theirs),
            "app web-config's is not app web's"
        );
    }
}

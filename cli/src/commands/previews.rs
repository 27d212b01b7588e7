//! `aether previews`: the namespace's preview environments (`aether push --preview`),
//! what each previews, where it answers and when the operator deletes it.

use aether_crds::AetherApp;
use aether_crds::condition::READY;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use serde::Serialize;

use crate::args::{GlobalArgs, OutputFormat, PreviewsArgs};
use crate::errors::CliError;
use crate::printer::{Printer, table};

/// What `aether previews -o json|yaml` prints.
#[derive(Debug, Serialize)]
pub struct PreviewList {
    pub items: Vec<PreviewItem>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PreviewItem {
    pub name: String,
    /// The app it previews.
    pub of: String,
    pub ready: bool,
    pub url: Option<String>,
    /// When the operator deletes it (RFC 3339).
    pub expires_at: String,
    /// Seconds left (0 once past: the operator is deleting it).
    pub expires_in_seconds: i64,
}

pub async fn run(args: &PreviewsArgs, global: &GlobalArgs, printer: &Printer) -> Result<(), CliError> {
    let (apps, namespace) = super::apps::list_apps(global).await?;
    let list = PreviewList {
        items: items(&apps, args.app.as_deref(), Timestamp::now()),
    };
    match printer.format {
        OutputFormat::Json | OutputFormat::Yaml => printer.value(&list),
        OutputFormat::Human if list.items.is_empty() => {
            printer.info(format!("No previews in namespace {namespace}"));
        }
        OutputFormat::Human => printer.data(render(&list.items).trim_end()),
    }
    Ok(())
}

/// The previews among `apps` (of `of`, when given), soonest to expire first.
pub fn items(apps: &[AetherApp], of: Option<&str>, now: Timestamp) -> Vec<PreviewItem> {
    let mut items: Vec<PreviewItem> = apps
        .iter()
        .filter_map(|app| {
            let preview = app.spec.preview.as_ref()?;
            if of.is_some_and(|of| of != preview.of) {
                return None;
            }
            let status = app.status.clone().unwrap_or_default();
            Some(PreviewItem {
                name: app.name_any(),
                of: preview.of.clone(),
                ready: status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == READY && c.status == "True"),
                url: status.url,
                expires_at: preview.expires_at.0.to_string(),
                expires_in_seconds: (preview.expires_at.0.as_second() - now.as_second()).max(0),
            })
        })
        .collect();
    items.sort_by_key(|i| i.expires_in_seconds);
    items
}

pub fn render(items: &[PreviewItem]) -> String {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|i| {
            vec![
                i.name.clone(),
                i.of.clone(),
                if i.ready { "True" } else { "False" }.into(),
                i.url.clone().unwrap_or_else(|| "-".into()),
                format!("in {}", super::apps::age(i.expires_in_seconds)),
            ]
        })
        .collect();
    table(&["NAME", "OF", "READY", "URL", "EXPIRES"], &rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, preview: Option<(&str, i64)>) -> AetherApp {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherApp",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": {
                "artifactRef": {"name": "a"},
                "preview": preview.map(|(of, at)| serde_json::json!({
                    "of": of,
                    "expiresAt": Timestamp::from_second(at).unwrap().to_string(),
                })),
            },
        }))
        .unwrap()
    }

    #[test]
    fn only_previews_are_listed_soonest_to_expire_first() {
        let now = Timestamp::from_second(1_000_000).unwrap();
        let apps = [
            app("shop", None),
            app("shop-pr-2", Some(("shop", 1_000_000 + 7200))),
            app("shop-pr-1", Some(("shop", 1_000_000 + 90))),
            app("blog-pr-1", Some(("blog", 1_000_000 - 5))),
        ];
        let all = items(&apps, None, now);
        let names: Vec<&str> = all.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["blog-pr-1", "shop-pr-1", "shop-pr-2"]);
        assert_eq!(all[0].expires_in_seconds, 0, "past: being deleted");
        assert_eq!(items(&apps, Some("shop"), now).len(), 2);
        let table = render(&items(&apps, Some("shop"), now));
        assert!(table.contains("shop-pr-1") && table.contains("in 90s"), "{table}");
    }
}

//! `aether delete`: delete an app. Its Deployment, Service, ServiceAccount and fetch
//! Secret carry it as owner, so Kubernetes' garbage collector removes them, and with
//! them the pods; its artifacts stay until retention removes them. Destructive, so
//! it asks first, and refuses rather than guess when there is no one to ask.

use std::io::IsTerminal as _;
use std::pin::pin;
use std::time::Duration;

use aether_crds::AetherApp;
use futures::StreamExt as _;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DeleteParams, Preconditions};
use kube::runtime::{reflector, watcher};
use kube::{Api, ResourceExt};
use serde::Serialize;

use crate::args::{DeleteArgs, GlobalArgs, OutputFormat};
use crate::errors::CliError;
use crate::printer::Printer;

/// What `aether delete -o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Deleted {
    pub app: String,
    pub namespace: String,
    /// False with --no-wait: the app and its pods may still be going.
    pub gone: bool,
}

/// Whether to delete without asking, ask, or refuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    Proceed,
    Ask,
    Refuse,
}

/// `--yes` proceeds; otherwise a person at a terminal is asked, and a script (no
/// terminal on stdin) is refused rather than taken for a yes.
pub fn confirm(yes: bool, stdin_is_terminal: bool) -> Confirm {
    match (yes, stdin_is_terminal) {
        (true, _) => Confirm::Proceed,
        (false, true) => Confirm::Ask,
        (false, false) => Confirm::Refuse,
    }
}

/// Only an explicit yes deletes: the default answer is no.
pub fn accepted(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

pub async fn run(args: &DeleteArgs, global: &GlobalArgs, printer: &Printer) -> Result<(), CliError> {
    let app = crate::project::target_app(args.app.app.as_deref())?;
    let (client, namespace) = crate::cluster::connect(global).await?;
    let api: Api<AetherApp> = Api::namespaced(client.clone(), &namespace);
    let found = crate::cluster::get_app(&api, &app).await?;
    match confirm(args.yes, std::io::stdin().is_terminal()) {
        Confirm::Proceed => {}
        Confirm::Refuse => {
            return Err(CliError::ConfirmationRequired { app, namespace });
        }
        Confirm::Ask => {
            let question = format!("Delete app {app} in namespace {namespace}? [y/N]");
            let answer = tokio::task::block_in_place(|| printer.ask(&question))
                .map_err(CliError::io("reading the answer"))?;
            if !accepted(&answer) {
                return Err(CliError::NotConfirmed { app });
            }
        }
    }

    // Only the app that was asked about: one deleted and recreated since is not it.
    let uid = found.uid().unwrap_or_default();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid.clone()),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&app, &params).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 404 => {
            return Err(CliError::AppNotFound { app, namespace });
        }
        Err(e) => return Err(crate::cluster::kube_error(e, "delete", "aetherapps", &namespace)),
    }
    printer.info(format!(
        "Deleting app {app} in {namespace} (its Deployment, Service and pods go with it)"
    ));

    if !args.wait.no_wait {
        let pods: Api<Pod> = Api::namespaced(client, &namespace);
        let selector = crate::cluster::pod_selector(&found);
        let gone = async {
            app_gone(&api, &app, &uid, &namespace).await?;
            pods_gone(&pods, &selector, &namespace, printer).await
        };
        tokio::time::timeout(args.wait.timeout, gone)
            .await
            .map_err(|_| CliError::Timeout {
                what: format!("app {app} and its pods to be gone"),
                seconds: args.wait.timeout.as_secs(),
            })??;
    }

    let deleted = Deleted {
        app,
        namespace,
        gone: !args.wait.no_wait,
    };
    match printer.format {
        OutputFormat::Json | OutputFormat::Yaml => printer.value(&deleted),
        OutputFormat::Human if deleted.gone => printer.info(format!(
            "Deleted app {} in {}: it and its pods are gone",
            deleted.app, deleted.namespace
        )),
        OutputFormat::Human => printer.info(format!(
            "Deletion of app {} in {} accepted: its pods stop in the background",
            deleted.app, deleted.namespace
        )),
    }
    Ok(())
}

/// Watch the app until it is gone (or another app of that name replaced it).
async fn app_gone(api: &Api<AetherApp>, app: &str, uid: &str, namespace: &str) -> Result<(), CliError> {
    let mut events = pin!(watcher::watch_object(api.clone(), app));
    while let Some(event) = events.next().await {
        match event {
            Ok(None) => return Ok(()),
            Ok(Some(current)) if current.uid().as_deref() != Some(uid) => return Ok(()),
            Ok(Some(_)) => {}
            Err(watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e)) => {
                return Err(crate::cluster::kube_error(e, "watch", "aetherapps", namespace));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
    Ok(())
}

/// Watch the pods `selector` matches until there are none, saying how many are left.
async fn pods_gone(
    pods: &Api<Pod>,
    selector: &str,
    namespace: &str,
    printer: &Printer,
) -> Result<(), CliError> {
    let (store, writer) = reflector::store();
    let config = watcher::Config::default().labels(selector);
    let mut events = pin!(reflector(writer, watcher(pods.clone(), config)));
    let (mut listed, mut shown) = (false, None);
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::InitDone) => listed = true,
            Ok(_) => {}
            Err(watcher::Error::InitialListFailed(e) | watcher::Error::WatchStartFailed(e)) => {
                return Err(crate::cluster::kube_error(e, "watch", "pods", namespace));
            }
            // The watcher re-lists after transient errors; do not spin meanwhile.
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
        if !listed {
            continue;
        }
        let left = store.state().len();
        if left == 0 {
            return Ok(());
        }
        if shown != Some(left) {
            printer.info(format!("  waiting for {left} pod(s) to stop"));
            shown = Some(left);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_terminal_is_asked_and_a_script_needs_yes() {
        assert_eq!(confirm(true, false), Confirm::Proceed);
        assert_eq!(confirm(true, true), Confirm::Proceed);
        assert_eq!(confirm(false, true), Confirm::Ask);
        assert_eq!(confirm(false, false), Confirm::Refuse);
    }

    #[test]
    fn only_an_explicit_yes_deletes() {
        for yes in ["y", "Y", "yes\n", " YES "] {
            assert!(accepted(yes), "{yes:?}");
        }
        for no in ["", "\n", "n", "no", "yeah", "y e s"] {
            assert!(!accepted(no), "{no:?}");
        }
    }

    #[test]
    fn a_script_without_yes_gets_a_usage_exit_code_and_the_flag_to_pass() {
        let err = CliError::ConfirmationRequired {
            app: "web".into(),
            namespace: "team-a".into(),
        };
        assert_eq!(err.exit_code(), 2);
        let shown = format!("{:?}", miette::Report::new(err));
        assert!(shown.contains("--yes") && shown.contains("team-a"), "{shown}");
    }
}

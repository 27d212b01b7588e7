//! `aether scale N`: set an app's replicas through its scale subresource, as
//! `kubectl scale` does (the aether-editor role may patch `aetherapps/scale`, and
//! no other field of the app is touched), then follow it until N pods are ready.

use aether_crds::AetherApp;
use aether_crds::condition::{READY, STALLED};
use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};
use serde::Serialize;

use crate::args::{GlobalArgs, OutputFormat, ScaleArgs};
use crate::errors::CliError;
use crate::printer::Printer;

/// Field manager of the replicas `aether scale` sets.
pub const FIELD_MANAGER: &str = "aether-scale";

/// What `aether scale -o json|yaml` prints.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Scaled {
    pub app: String,
    pub namespace: String,
    pub previous_replicas: i32,
    pub replicas: i32,
    /// Pods ready when the command returned (with --no-wait, maybe fewer).
    pub ready_replicas: i32,
}

/// Where the app stands against the replicas asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    Done { ready: i32 },
    Waiting { ready: i32, message: String },
    Failed { reason: String, message: String },
}

pub async fn run(args: &ScaleArgs, global: &GlobalArgs, printer: &Printer) -> Result<(), CliError> {
    let app = crate::project::target_app(args.app.app.as_deref())?;
    let (client, namespace) = crate::cluster::connect(global).await?;
    let api: Api<AetherApp> = Api::namespaced(client, &namespace);
    let found = crate::cluster::get_app(&api, &app).await?;
    if let Some(scaling) = &found.spec.autoscaling {
        return Err(CliError::Autoscaled {
            app,
            min: scaling.min_replicas,
            max: scaling.max_replicas,
        });
    }
    let previous = found.spec.replicas;
    let patch = serde_json::json!({"spec": {"replicas": args.replicas}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch_scale(&app, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| crate::cluster::kube_error(e, "patch", "aetherapps/scale", &namespace))?;
    printer.info(format!(
        "Scaling app {app} in {namespace} from {previous} to {} pod(s)",
        args.replicas
    ));

    let ready_replicas = if args.wait.no_wait {
        0
    } else {
        let mut last = String::new();
        let outcome = crate::cluster::wait_for(
            &api,
            &app,
            args.wait.timeout,
            &format!("{} ready pod(s) of {app}", args.replicas),
            |current| match progress(current, args.replicas) {
                Progress::Done { ready } => Some(Ok(ready)),
                Progress::Failed { reason, message } => Some(Err(CliError::ScaleFailed {
                    app: app.clone(),
                    namespace: namespace.clone(),
                    replicas: args.replicas,
                    reason,
                    message,
                })),
                Progress::Waiting { message, .. } => {
                    if message != last {
                        printer.info(format!("  {message}"));
                        last = message;
                    }
                    None
                }
            },
        )
        .await;
        match outcome {
            Ok(result) => result?,
            Err(CliError::Timeout { seconds, .. }) => {
                return Err(CliError::Timeout {
                    what: format!("{} ready pod(s) of {app} (last: {})", args.replicas, last.trim()),
                    seconds,
                });
            }
            Err(e) => return Err(e),
        }
    };

    let scaled = Scaled {
        app: app.clone(),
        namespace: namespace.clone(),
        previous_replicas: previous,
        replicas: args.replicas,
        ready_replicas,
    };
    match printer.format {
        OutputFormat::Json | OutputFormat::Yaml => printer.value(&scaled),
        OutputFormat::Human if args.wait.no_wait => {}
        OutputFormat::Human => printer.info(format!(
            "App {app} in {namespace}: {ready_replicas}/{} pod(s) ready",
            args.replicas
        )),
    }
    Ok(())
}

/// Whether `app` runs `replicas` ready pods, as its status reports once the operator
/// has seen the new count: the Deployment's pods all ready and no others, and Ready.
pub fn progress(app: &AetherApp, replicas: i32) -> Progress {
    let status = app.status.clone().unwrap_or_default();
    let ready = status.ready_replicas;
    let observed = status.observed_generation.unwrap_or(0) >= app.metadata.generation.unwrap_or(0);
    let condition = |t: &str| status.conditions.iter().find(|c| c.type_ == t);
    // Someone else scaled it meanwhile: the wait is for a count nobody asks for.
    if app.spec.replicas != replicas {
        return Progress::Failed {
            reason: "ScaledElsewhere".into(),
            message: format!(
                "{} now asks for {} pod(s) (changed by someone else)",
                app.name_any(),
                app.spec.replicas
            ),
        };
    }
    if observed && let Some(stalled) = condition(STALLED).filter(|c| c.status == "True") {
        return Progress::Failed {
            reason: stalled.reason.clone(),
            message: stalled.message.clone(),
        };
    }
    let is_ready = condition(READY).is_some_and(|c| c.status == "True");
    if observed && is_ready && ready == replicas && status.replicas == replicas {
        return Progress::Done { ready };
    }
    let detail = condition(READY)
        .filter(|c| observed && !c.message.is_empty())
        .map(|c| format!(" ({}: {})", c.reason, c.message))
        .unwrap_or_default();
    Progress::Waiting {
        ready,
        message: format!("{ready}/{replicas} pod(s) ready{detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(generation: i64, spec_replicas: i32, status: &str) -> AetherApp {
        serde_yaml::from_str(&format!(
            "metadata: {{name: web, generation: {generation}}}\nspec: {{artifactRef: {{name: web-1}}, replicas: {spec_replicas}}}\nstatus: {status}"
        ))
        .unwrap()
    }

    const T: &str = "lastTransitionTime: '2025-01-01T00:00:00Z'";

    #[test]
    fn done_only_once_the_operator_saw_the_new_count_and_all_pods_are_ready() {
        // The operator has not reconciled generation 3 yet: its old Ready says nothing.
        let stale = app(
            3,
            2,
            &format!(
                "{{observedGeneration: 2, replicas: 1, readyReplicas: 1, conditions: [{{type: Ready, status: 'True', reason: Deployed, message: '1/1 pod(s) ready', {T}}}]}}"
            ),
        );
        assert!(matches!(progress(&stale, 2), Progress::Waiting { ready: 1, .. }));
        let rolling = app(
            3,
            2,
            &format!(
                "{{observedGeneration: 3, replicas: 2, readyReplicas: 1, conditions: [{{type: Ready, status: 'False', reason: RollingOut, message: '2 of 2 updated, 1 available', {T}}}]}}"
            ),
        );
        assert_eq!(
            progress(&rolling, 2),
            Progress::Waiting {
                ready: 1,
                message: "1/2 pod(s) ready (RollingOut: 2 of 2 updated, 1 available)".into()
            }
        );
        let done = app(
            3,
            2,
            &format!(
                "{{observedGeneration: 3, replicas: 2, readyReplicas: 2, conditions: [{{type: Ready, status: 'True', reason: Deployed, message: '2/2', {T}}}]}}"
            ),
        );
        assert_eq!(progress(&done, 2), Progress::Done { ready: 2 });
        // Scaling down: a pod still counted is not done.
        let down = app(
            4,
            1,
            &format!(
                "{{observedGeneration: 4, replicas: 2, readyReplicas: 2, conditions: [{{type: Ready, status: 'True', reason: Deployed, message: '', {T}}}]}}"
            ),
        );
        assert!(matches!(progress(&down, 1), Progress::Waiting { .. }));
    }

    #[test]
    fn a_stalled_app_or_another_scale_ends_the_wait() {
        let crashing = app(
            3,
            2,
            &format!(
                "{{observedGeneration: 3, replicas: 2, readyReplicas: 1, conditions: [{{type: Stalled, status: 'True', reason: AppCrashing, message: 'exit 1', {T}}}]}}"
            ),
        );
        assert_eq!(
            progress(&crashing, 2),
            Progress::Failed {
                reason: "AppCrashing".into(),
                message: "exit 1".into()
            }
        );
        let other = app(4, 5, "{observedGeneration: 3}");
        assert!(
            matches!(progress(&other, 2), Progress::Failed { reason, .. } if reason == "ScaledElsewhere")
        );
    }
}

//! What a user holding `aether-editor` in a namespace cannot reach through the
//! operator, tried as that user (`kubectl --as`): objects the operator did not
//! create, and Secrets.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::{Command, Stdio};
use std::time::Duration;

use aether_crds::AetherApp;
use aether_e2e::app::{aether, example_app};
use aether_e2e::{wait_for, with_temp_ns};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount, ServiceSpec};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};

const EDITOR: &str = "mallory@example.com";

/// Bind `EDITOR` to the aether-editor ClusterRole in `ns`, as a cluster admin would.
async fn editor(client: &Client, ns: &str) -> anyhow::Result<()> {
    let user = Subject {
        kind: "User".into(),
        name: EDITOR.into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        ..Default::default()
    };
    bind(client, ns, "mallory-aether", "aether-editor", user).await
}

/// A RoleBinding `name` in `ns` giving `subject` the ClusterRole `role`.
async fn bind(client: &Client, ns: &str, name: &str, role: &str, subject: Subject) -> anyhow::Result<()> {
    let binding = RoleBinding {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: role.into(),
        },
        subjects: Some(vec![subject]),
    };
    Api::<RoleBinding>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await?;
    Ok(())
}

/// `kubectl --as EDITOR apply` of `yaml` in `ns`, which must succeed.
fn apply_as_editor(ns: &str, yaml: &str) {
    let out = kubectl_apply(ns, Some(EDITOR), yaml);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// `kubectl [--as USER] apply` of `yaml` in `ns`.
fn kubectl_apply(ns: &str, user: Option<&str>, yaml: &str) -> std::process::Output {
    let mut args = vec!["apply", "-n", ns, "-f", "-"];
    if let Some(user) = user {
        args.splice(0..0, ["--as", user]);
    }
    Command::new("kubectl")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(yaml.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap()
}

/// A Ready artifact signed for app `app` (what `aether push --no-deploy` leaves).
fn artifact_for(ns: &str, app: &str) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    example_app(dir.path(), "tenancy")?;
    let run = tokio::task::block_in_place(|| {
        aether(
            dir.path(),
            ns,
            &["push", "--no-deploy", "--app", app, "--timeout-seconds", "240"],
        )
    });
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    Ok(run.json["artifact"].as_str().unwrap().to_string())
}

/// Wait until the app is Stalled for `reason`; its Stalled message.
async fn stalled(client: &Client, ns: &str, app: &str, reason: &str) -> anyhow::Result<String> {
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), ns);
    let reason = reason.to_string();
    let app = wait_for(
        apps,
        app,
        "Stalled",
        Duration::from_secs(60),
        move |a: Option<&AetherApp>| {
            a.and_then(|a| a.status.as_ref()).is_some_and(|s| {
                s.conditions
                    .iter()
                    .any(|c| c.type_ == "Stalled" && c.status == "True" && c.reason == reason)
            })
        },
    )
    .await?;
    let status = app.status.unwrap();
    Ok(status
        .conditions
        .iter()
        .find(|c| c.type_ == "Stalled")
        .unwrap()
        .message
        .clone())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn an_app_named_after_objects_it_did_not_create_changes_none_of_them() -> anyhow::Result<()> {
    with_temp_ns("names", |client, ns| async move {
        editor(&client, &ns).await?;
        // What the namespace already has, made by someone else: a ServiceAccount
        // (say, bound to a powerful role) and a Service with its own selector.
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        let mut sa = ServiceAccount::default();
        sa.metadata.name = Some("victim".into());
        sas.create(&PostParams::default(), &sa).await?;
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let service = Service {
            metadata: ObjectMeta {
                name: Some("victim".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                selector: Some([("role".to_string(), "database".to_string())].into()),
                ports: Some(vec![k8s_openapi::api::core::v1::ServicePort {
                    port: 5432,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        services.create(&PostParams::default(), &service).await?;

        let artifact = artifact_for(&ns, "victim")?;
        apply_as_editor(
            &ns,
            &format!(
                "apiVersion: aether.dev/v1alpha1\nkind: AetherApp\nmetadata:\n  name: victim\nspec:\n  artifactRef:\n    name: {artifact}\n  devHot: true\n"
            ),
        );
        let message = stalled(&client, &ns, "victim", "NameConflict").await?;
        assert!(message.contains("victim"), "{message}");

        // Both objects are exactly as they were: not adopted, not rewritten.
        let sa = sas.get("victim").await?;
        assert!(sa.metadata.owner_references.is_none(), "adopted: {:?}", sa.metadata.owner_references);
        let svc = services.get("victim").await?;
        assert!(svc.metadata.owner_references.is_none());
        assert_eq!(
            svc.spec.unwrap().selector.unwrap(),
            [("role".to_string(), "database".to_string())].into()
        );
        // And nothing runs under that name.
        assert!(Api::<Deployment>::namespaced(client.clone(), &ns).get_opt("victim").await?.is_none());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_keys_ref_naming_a_secret_is_refused_and_copies_nothing() -> anyhow::Result<()> {
    with_temp_ns("keysref", |client, ns| async move {
        editor(&client, &ns).await?;
        // A Secret the editor cannot read.
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some("db".into()),
                ..Default::default()
            },
            string_data: Some([("password".to_string(), "s3cr3t-value-9f2c".to_string())].into()),
            ..Default::default()
        };
        secrets.create(&PostParams::default(), &secret).await?;
        let denied = Command::new("kubectl")
            .args(["--as", EDITOR, "get", "secret", "db", "-n", &ns])
            .output()?;
        assert!(!denied.status.success(), "the editor can read Secrets here: the test proves nothing");

        let artifact = artifact_for(&ns, "peek")?;
        apply_as_editor(
            &ns,
            &format!(
                "apiVersion: aether.dev/v1alpha1\nkind: AetherApp\nmetadata:\n  name: peek\nspec:\n  artifactRef:\n    name: {artifact}\n  verify:\n    mode: Warn\n    keysRef:\n      kind: Secret\n      name: db\n"
            ),
        );
        let message = stalled(&client, &ns, "peek", "SecretKeysRef").await?;
        assert!(!message.contains("s3cr3t"), "{message}");

        // Nothing runs with it, and the app's object and status do not hold it.
        assert!(Api::<Deployment>::namespaced(client.clone(), &ns).get_opt("peek").await?.is_none());
        let app = Api::<AetherApp>::namespaced(client.clone(), &ns).get("peek").await?;
        assert!(!serde_json::to_string(&app)?.contains("s3cr3t"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn an_editor_cannot_wire_in_a_secret_they_cannot_read_but_can_push_to_an_app_that_has_one()
-> anyhow::Result<()> {
    with_temp_ns("envref", |client, ns| async move {
        editor(&client, &ns).await?;
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        for name in ["db", "other"] {
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name.into()),
                    ..Default::default()
                },
                string_data: Some([("password".to_string(), "s3cr3t".to_string())].into()),
                ..Default::default()
            };
            secrets.create(&PostParams::default(), &secret).await?;
        }
        let artifact = artifact_for(&ns, "envy")?;
        let app = |refs: &[&str], replicas: u32| {
            let env: String = refs
                .iter()
                .map(|r| format!("    - name: {}\n      valueFrom:\n        secretKeyRef:\n          name: {r}\n          key: password\n", r.to_uppercase()))
                .collect();
            format!(
                "apiVersion: aether.dev/v1alpha1\nkind: AetherApp\nmetadata:\n  name: envy\nspec:\n  artifactRef:\n    name: {artifact}\n  replicas: {replicas}\n  env:\n{env}"
            )
        };

        // The editor may not read Secret db, so may not have a pod read it either.
        let refused = kubectl_apply(&ns, Some(EDITOR), &app(&["db"], 1));
        assert!(!refused.status.success(), "an editor wired in a Secret they cannot read");
        let stderr = String::from_utf8_lossy(&refused.stderr);
        assert!(
            stderr.contains("may name only Secrets you may read; this change adds: db"),
            "{stderr}"
        );
        assert!(Api::<AetherApp>::namespaced(client.clone(), &ns).get_opt("envy").await?.is_none());

        // Someone who may read it (here the cluster admin) wires it in ...
        let admin = kubectl_apply(&ns, None, &app(&["db"], 1));
        assert!(admin.status.success(), "{}", String::from_utf8_lossy(&admin.stderr));
        // ... and the editor can still change the app, just not add another Secret.
        let scaled = kubectl_apply(&ns, Some(EDITOR), &app(&["db"], 2));
        assert!(scaled.status.success(), "{}", String::from_utf8_lossy(&scaled.stderr));
        let added = kubectl_apply(&ns, Some(EDITOR), &app(&["db", "other"], 2));
        assert!(!added.status.success());
        let stderr = String::from_utf8_lossy(&added.stderr);
        assert!(stderr.contains("this change adds: other"), "{stderr}");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn an_app_cannot_claim_a_service_account_a_binding_waits_for() -> anyhow::Result<()> {
    with_temp_ns("ghost", |client, ns| async move {
        editor(&client, &ns).await?;
        // A RoleBinding left naming a ServiceAccount that does not exist (yet).
        let ghost = Subject {
            kind: "ServiceAccount".into(),
            name: "ghost".into(),
            namespace: Some(ns.clone()),
            ..Default::default()
        };
        bind(&client, &ns, "ghost-admin", "admin", ghost).await?;

        let artifact = artifact_for(&ns, "ghost")?;
        apply_as_editor(
            &ns,
            &format!(
                "apiVersion: aether.dev/v1alpha1\nkind: AetherApp\nmetadata:\n  name: ghost\nspec:\n  artifactRef:\n    name: {artifact}\n  devHot: true\n"
            ),
        );
        // The app runs (nothing conflicts) under an account of its own.
        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);
        wait_for(apps, "ghost", "Ready", Duration::from_secs(120), |a: Option<&AetherApp>| {
            a.and_then(|a| a.status.as_ref())
                .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        assert!(sas.get_opt("ghost").await?.is_none(), "the app created the account the binding names");
        let dep = Api::<Deployment>::namespaced(client.clone(), &ns).get("ghost").await?;
        let pod = dep.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("aether.ghost"));
        Ok(())
    })
    .await
}

//! What a user holding `aether-editor` in a namespace cannot reach through the
//! operator, tried as that user (`kubectl --as`): objects the operator did not
//! create, Secrets, another namespace's blobs; and what app pods and the operator
//! itself hold.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::{Command, Stdio};
use std::time::Duration;

use aether_crds::condition::{find, is_true};
use aether_crds::{AetherApp, AetherArtifact, AetherArtifactSpec, AetherPolicy};
use aether_e2e::app::{aether, body, example_app, wait_for_body};
use aether_e2e::storage::StorageSettings;
use aether_e2e::{enable_namespace, http, wait_for, with_temp_ns};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount, ServiceSpec};
use k8s_openapi::api::rbac::v1::{RoleBinding, RoleRef, Subject};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
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
    push_artifact(ns, app, &[])
}

/// `aether push --no-deploy --app APP EXTRA...`: the Ready artifact's name.
fn push_artifact(ns: &str, app: &str, extra: &[&str]) -> anyhow::Result<String> {
    let dir = tempfile::tempdir()?;
    example_app(dir.path(), "tenancy")?;
    let mut args = vec!["push", "--no-deploy", "--app", app, "--timeout-seconds", "240"];
    args.extend(extra);
    let run = tokio::task::block_in_place(|| aether(dir.path(), ns, &args));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    Ok(run.json["artifact"].as_str().unwrap().to_string())
}

/// Wait until the app is Ready.
async fn ready(client: &Client, ns: &str, app: &str) -> anyhow::Result<()> {
    let apps: Api<AetherApp> = Api::namespaced(client.clone(), ns);
    wait_for(
        apps,
        app,
        "Ready",
        Duration::from_secs(120),
        |a: Option<&AetherApp>| {
            a.and_then(|a| a.status.as_ref())
                .is_some_and(|s| is_true(&s.conditions, "Ready"))
        },
    )
    .await?;
    Ok(())
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
    Ok(find(&status.conditions, "Stalled").unwrap().message.clone())
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
        ready(&client, &ns, "ghost").await?;
        let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
        assert!(sas.get_opt("ghost").await?.is_none(), "the app created the account the binding names");
        let dep = Api::<Deployment>::namespaced(client.clone(), &ns).get("ghost").await?;
        let pod = dep.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some("aether.ghost"));
        Ok(())
    })
    .await
}

/// Push the example app to `ns` and wait until it serves `greeting`; its URL and
/// its artifact.
async fn serve(client: &Client, ns: &str, greeting: &str) -> anyhow::Result<(String, AetherArtifact)> {
    let dir = tempfile::tempdir()?;
    example_app(dir.path(), greeting)?;
    let run = tokio::task::block_in_place(|| aether(dir.path(), ns, &["push", "--timeout-seconds", "240"]));
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let url = run.json["url"].as_str().unwrap().to_string();
    let app = run.json["app"].as_str().unwrap().to_string();
    wait_for_body(
        client,
        ns,
        &app,
        &url,
        &format!("{greeting}\n"),
        Duration::from_secs(30),
    )
    .await?;
    let art = Api::<AetherArtifact>::namespaced(client.clone(), ns)
        .get(run.json["artifact"].as_str().unwrap())
        .await?;
    Ok((url, art))
}

/// Delete the app's pods (as a node drain would) and wait until a new one is Ready:
/// it fetched and verified its blobs from storage as they are now.
async fn reschedule(client: &Client, ns: &str) -> anyhow::Result<()> {
    let pods: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), ns);
    let old: Vec<String> = pods
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|p| p.metadata.name)
        .collect();
    for name in &old {
        pods.delete(name, &DeleteParams::default()).await?;
    }
    aether_e2e::wait_until("a new Ready pod", Duration::from_secs(120), || {
        let (pods, old) = (pods.clone(), old.clone());
        async move {
            let ready = pods
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .any(|p| {
                    !old.contains(p.metadata.name.as_ref().unwrap())
                        && p.status
                            .and_then(|s| s.conditions)
                            .unwrap_or_default()
                            .iter()
                            .any(|c| c.type_ == "Ready" && c.status == "True")
                });
            Ok(ready.then_some(()))
        }
    })
    .await
}

/// `spec` as an AetherArtifact named `name` for app `app`, in YAML (JSON is YAML).
fn artifact_yaml(name: &str, spec: &AetherArtifactSpec) -> String {
    serde_json::json!({
        "apiVersion": "aether.dev/v1alpha1",
        "kind": "AetherArtifact",
        "metadata": {"name": name},
        "spec": spec,
    })
    .to_string()
}

/// The artifact's upload instructions, once the operator wrote them.
async fn upload_of(client: &Client, ns: &str, name: &str) -> anyhow::Result<AetherArtifact> {
    let arts: Api<AetherArtifact> = Api::namespaced(client.clone(), ns);
    wait_for(
        arts,
        name,
        "upload instructions",
        Duration::from_secs(60),
        |a: Option<&AetherArtifact>| {
            a.and_then(|a| a.status.as_ref())
                .is_some_and(|s| s.upload.is_some())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed and its storage: run `make e2e`"]
async fn another_namespace_s_blobs_cannot_be_claimed_overwritten_or_run() -> anyhow::Result<()> {
    let storage = StorageSettings::from_env()?.host();
    with_temp_ns("victim", move |client, victim| async move {
        let greeting = format!("Victim {victim}");
        let (url, theirs) = serve(&client, &victim, &greeting).await?;
        let victim_blobs = storage.namespace(&victim);
        let digests: Vec<(aether_artifact::Digest, u64)> = theirs
            .spec
            .layers
            .iter()
            .map(|l| (l.digest.parse().unwrap(), l.size as u64))
            .collect();

        let attack = {
            let client = client.clone();
            let storage = storage.clone();
            let spec = theirs.spec.clone();
            with_temp_ns("attacker", move |_, ns| async move {
                editor(&client, &ns).await?;
                // The victim's artifact, copied as is: same digests, same signature.
                let mut copy = spec.clone();
                copy.app = "thief".into();
                apply_as_editor(&ns, &artifact_yaml("stolen", &copy));
                // And with the deps layer one byte short (digest recomputed), the
                // claim that once made the operator delete the stored blob.
                let mut manifest = spec.manifest()?;
                manifest.layers[0].size -= 1;
                let mut short = AetherArtifactSpec::from_manifest("thief", &manifest)?;
                short.signature = None;
                apply_as_editor(&ns, &artifact_yaml("short", &short));

                // Neither is Ready on the victim's bytes: storage is per namespace, so
                // both wait for the attacker to upload what they name.
                for name in ["stolen", "short"] {
                    let art = upload_of(&client, &ns, name).await?;
                    let status = art.status.unwrap();
                    let ready = find(&status.conditions, "Ready").unwrap();
                    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "AwaitingUpload"));
                }
                // The upload URL for the victim's code layer takes only its bytes:
                // random bytes of the right length are refused.
                let art = upload_of(&client, &ns, "stolen").await?;
                let upload = art.status.unwrap().upload.unwrap();
                let mut parts_sent = false;
                for b in &upload.blobs {
                    let junk = |len: i64| -> Vec<u8> { (0..len).map(|i| (i * 7 + 3) as u8).collect() };
                    if let Some(url) = &b.url {
                        assert!(
                            !http::stored(url, &b.headers, junk(b.size)).await,
                            "an upload URL stored junk under {}",
                            b.digest
                        );
                        assert!(
                            !http::stored(url, &Default::default(), junk(b.size)).await,
                            "an upload URL worked without its checksum"
                        );
                    } else {
                        // Parts take any bytes, but land under the upload's own key.
                        let part_size = b.part_size.unwrap();
                        for p in &b.parts {
                            let len = part_size.min(b.size - (i64::from(p.number) - 1) * part_size);
                            assert!(http::stored(&p.url, &Default::default(), junk(len)).await);
                        }
                        parts_sent = true;
                    }
                    assert_eq!(storage.namespace(&ns).head(&b.digest.parse()?).await?, None);
                }
                if parts_sent {
                    // Completed as an uploader would: the junk is hashed where it was
                    // assembled and never reaches the blob key.
                    let out = Command::new("kubectl")
                        .args(["--as", EDITOR, "-n", &ns, "annotate", "aetherartifact", "stolen"])
                        .arg(format!("{}=now", aether_crds::UPLOAD_COMPLETE_ANNOTATION))
                        .output()?;
                    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                    let arts: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
                    wait_for(arts, "stolen", "DigestMismatch", Duration::from_secs(60), |a: Option<&AetherArtifact>| {
                        a.and_then(|a| a.status.as_ref())
                            .is_some_and(|s| s.conditions.iter().any(|c| c.type_ == "Ready" && c.reason == "DigestMismatch"))
                    })
                    .await?;
                    for b in &upload.blobs {
                        assert_eq!(storage.namespace(&ns).head(&b.digest.parse()?).await?, None);
                    }
                }
                // An app on the copy runs nothing.
                apply_as_editor(
                    &ns,
                    "apiVersion: aether.dev/v1alpha1\nkind: AetherApp\nmetadata:\n  name: thief\nspec:\n  artifactRef:\n    name: stolen\n",
                );
                tokio::time::sleep(Duration::from_secs(3)).await;
                let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), &ns)
                    .list(&ListParams::default())
                    .await?;
                assert!(pods.items.is_empty(), "pods run in the attacker's namespace");
                Ok(())
            })
        };
        attack.await?;

        // The victim's blobs are intact, and a new pod (rescheduled, say) starts on
        // them and serves.
        for (digest, size) in &digests {
            victim_blobs.verify(digest, *size).await?;
        }
        reschedule(&client, &victim).await?;
        wait_for_body(&client, &victim, "express-api", &url, &format!("{greeting}\n"), Duration::from_secs(60)).await?;
        assert_eq!(body(&client, &victim, "express-api", &url).await?, format!("{greeting}\n"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed and its storage: run `make e2e`"]
async fn app_pods_hold_no_storage_credentials_only_urls_for_their_namespace() -> anyhow::Result<()> {
    with_temp_ns("creds", |client, ns| async move {
        let (_, art) = serve(&client, &ns, "No keys here").await?;
        let dep = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get("express-api")
            .await?;
        let template = serde_json::to_string(&dep.spec.as_ref().unwrap().template)?;
        assert!(
            !template.contains("AWS_"),
            "credentials in the pod template: {template}"
        );
        // The fetch Secret: one presigned URL per layer, all under this namespace.
        let secret = Api::<Secret>::namespaced(client.clone(), &ns)
            .get("aether.express-api.fetch")
            .await?;
        let urls: Vec<String> = secret
            .data
            .unwrap_or_default()
            .into_values()
            .map(|v| String::from_utf8(v.0).unwrap())
            .collect();
        assert_eq!(urls.len(), art.spec.layers.len());
        for url in &urls {
            assert!(url.contains(&format!("/ns/{ns}/blobs/sha256/")), "{url}");
            assert!(url.contains("X-Amz-Expires="), "{url}");
            // The same signature for another namespace's key is refused.
            let other = url.replace(&format!("/ns/{ns}/"), "/ns/kube-system/");
            let uri: hyper::Uri = other.parse()?;
            let (status, _) = http::get(
                uri.host().unwrap(),
                uri.port_u16().unwrap_or(80),
                uri.path_and_query().unwrap().as_str(),
            )
            .await?;
            assert_eq!(status, 403, "a download URL was good for another key");
        }
        // Only the fetch container mounts it.
        let pod = dep.spec.unwrap().template.spec.unwrap();
        let app = pod.containers.iter().find(|c| c.name == "app").unwrap();
        assert!(app.volume_mounts.iter().flatten().all(|m| m.name != "downloads"));
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn the_operator_writes_nothing_where_no_admin_enabled_it() -> anyhow::Result<()> {
    let operator_ns = std::env::var("AETHER_OPERATOR_NAMESPACE").unwrap_or_else(|_| "aether-system".into());
    let storage = StorageSettings::from_env()?.host();
    with_temp_ns("disabled", move |client, ns| async move {
        // The cluster admin has not enabled this namespace (the harness did: undo it).
        Api::<RoleBinding>::namespaced(client.clone(), &ns)
            .delete("aether-operator", &DeleteParams::default())
            .await?;
        let operator = format!("system:serviceaccount:{operator_ns}:aether-operator");
        let can = |verb: &str, resource: &str, namespace: &str| {
            let out = Command::new("kubectl")
                .args([
                    "auth", "can-i", verb, resource, "-n", namespace, "--as", &operator,
                ])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim() == "yes"
        };
        for namespace in [ns.as_str(), "kube-system"] {
            for (verb, resource) in [
                ("create", "secrets"),
                ("get", "secrets"),
                ("create", "deployments.apps"),
                ("patch", "services"),
                ("delete", "pods"),
                ("create", "ingresses.networking.k8s.io"),
                ("create", "certificates.cert-manager.io"),
                ("create", "httproutes.gateway.networking.k8s.io"),
            ] {
                assert!(
                    !can(verb, resource, namespace),
                    "the operator may {verb} {resource} in {namespace}"
                );
            }
        }
        let out = Command::new("kubectl")
            .args([
                "auth",
                "can-i",
                "list",
                "secrets",
                "--all-namespaces",
                "--as",
                &operator,
            ])
            .output()?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "no",
            "the operator may list every Secret"
        );
        // Not even the namespace's own admin can enable it: binding the operator's
        // role needs a permission no built-in role holds.
        let admin = Subject {
            kind: "User".into(),
            name: EDITOR.into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        };
        bind(&client, &ns, "mallory-admin", "admin", admin).await?;
        let out = Command::new("kubectl")
            .args([
                "--as",
                EDITOR,
                "-n",
                &ns,
                "create",
                "rolebinding",
                "aether-operator",
            ])
            .args(["--clusterrole", "aether-operator-namespace", "--serviceaccount"])
            .arg(format!("{operator_ns}:aether-operator"))
            .output()?;
        assert!(!out.status.success(), "a namespace admin enabled their namespace");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("forbidden"),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );

        // A push is told why nothing happens, and storage gets nothing.
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "nowhere")?;
        let run = tokio::task::block_in_place(|| {
            aether(
                dir.path(),
                &ns,
                &["push", "--app", "orphan", "--timeout-seconds", "60"],
            )
        });
        assert_ne!(run.code, Some(0), "{}", run.stderr);
        assert!(run.stderr.contains("NamespaceNotEnabled"), "{}", run.stderr);
        assert!(
            run.stderr.contains("create rolebinding"),
            "the fix is named: {}",
            run.stderr
        );
        assert_eq!(
            stored_objects(&storage, &ns).await?,
            0,
            "storage holds something for {ns}"
        );

        // An app written anyway stays a description: nothing of it is created.
        let artifacts: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        let artifact = artifacts.list(&ListParams::default()).await?.items[0]
            .metadata
            .name
            .clone()
            .unwrap();
        let out = kubectl_apply(&ns, None, &app_yaml("orphan", &artifact, ""));
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let message = stalled(&client, &ns, "orphan", "NamespaceNotEnabled").await?;
        assert!(
            message.contains("create rolebinding"),
            "the fix is named: {message}"
        );
        assert!(
            Api::<Deployment>::namespaced(client.clone(), &ns)
                .get_opt("orphan")
                .await?
                .is_none()
        );
        assert!(
            Api::<Secret>::namespaced(client.clone(), &ns)
                .list(&ListParams::default())
                .await?
                .items
                .is_empty()
        );

        // Once a cluster admin enables the namespace, pushing again (what the refusal
        // said to do) works at once, and the app serves.
        enable_namespace(&client, &ns).await?;
        let run = tokio::task::block_in_place(|| {
            aether(
                dir.path(),
                &ns,
                &["push", "--app", "orphan", "--timeout-seconds", "120"],
            )
        });
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let url = Api::<AetherApp>::namespaced(client.clone(), &ns)
            .get("orphan")
            .await?
            .status
            .and_then(|s| s.url)
            .unwrap_or_default();
        wait_for_body(&client, &ns, "orphan", &url, "nowhere\n", Duration::from_secs(10)).await?;
        Ok(())
    })
    .await
}

/// An AetherApp `name` on `artifact`, with `extra` YAML lines under `spec`.
fn app_yaml(name: &str, artifact: &str, extra: &str) -> String {
    format!(
        "apiVersion: aether.dev/v1alpha1\nkind: AetherApp\nmetadata:\n  name: {name}\nspec:\n  artifactRef:\n    name: {artifact}\n{extra}"
    )
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_cluster_admin_s_policy_floor_holds_whatever_an_editor_writes() -> anyhow::Result<()> {
    with_temp_ns("floor", |client, ns| async move {
        editor(&client, &ns).await?;
        // The floor for this namespace (the label every namespace has selects it).
        let policies: Api<AetherPolicy> = Api::all(client.clone());
        let name = format!("e2e-{ns}");
        let policy: AetherPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherPolicy",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "verify": {"minimumMode": "Enforce"},
                "allowedImages": ["registry.example/node:*-slim"],
                "allowCommand": false,
            },
        }))?;
        policies.create(&PostParams::default(), &policy).await?;
        let outcome = async {
            // The editor can neither loosen nor remove it.
            for verb in ["delete", "patch"] {
                let out = Command::new("kubectl")
                    .args([
                        "--as",
                        EDITOR,
                        "auth",
                        "can-i",
                        verb,
                        &format!("aetherpolicies/{name}"),
                    ])
                    .output()?;
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout).trim(),
                    "no",
                    "the editor may {verb} the policy"
                );
            }
            // Signature checks off, on an unsigned artifact: the floor's Enforce holds.
            let unsigned = push_artifact(&ns, "loose", &["--no-sign"])?;
            apply_as_editor(
                &ns,
                &app_yaml("loose", &unsigned, "  verify:\n    mode: \"Off\"\n"),
            );
            let message = stalled(&client, &ns, "loose", "ArtifactUnsigned").await?;
            assert!(message.contains(&format!("AetherPolicy {name}")), "{message}");
            // An image of the editor's choosing, or a command of their own: refused.
            let signed = artifact_for(&ns, "miner")?;
            apply_as_editor(
                &ns,
                &app_yaml("miner", &signed, "  runtime:\n    image: evil.example/miner:1\n"),
            );
            let message = stalled(&client, &ns, "miner", "PolicyRefused").await?;
            assert!(message.contains(&format!("AetherPolicy {name}")), "{message}");
            let shell = artifact_for(&ns, "shell")?;
            apply_as_editor(
                &ns,
                &app_yaml(
                    "shell",
                    &shell,
                    "  command: [\"node\", \"-e\", \"require('child_process')\"]\n",
                ),
            );
            let message = stalled(&client, &ns, "shell", "PolicyRefused").await?;
            assert!(message.contains("spec.command"), "{message}");
            for app in ["loose", "miner", "shell"] {
                let dep = Api::<Deployment>::namespaced(client.clone(), &ns)
                    .get_opt(app)
                    .await?;
                assert!(dep.is_none(), "{app} runs");
            }
            // Within the floor, an app runs (the operator's own image is allowed); code
            // slipped in through NODE_OPTIONS is not loaded (else node would fail to
            // start: the module does not exist).
            let fine = artifact_for(&ns, "fine")?;
            apply_as_editor(
                &ns,
                &app_yaml(
                    "fine",
                    &fine,
                    "  env:\n    - name: NODE_OPTIONS\n      value: --require=/nonexistent/evil.js\n",
                ),
            );
            ready(&client, &ns, "fine").await?;
            anyhow::Ok(())
        }
        .await;
        policies.delete(&name, &DeleteParams::default()).await?;
        outcome
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed and its storage: run `make e2e`"]
async fn a_wrong_size_claim_is_the_claimant_s_invalid_spec_and_the_blob_stays() -> anyhow::Result<()> {
    let storage = StorageSettings::from_env()?.host();
    with_temp_ns("claims", move |client, ns| async move {
        editor(&client, &ns).await?;
        let storage = storage.namespace(&ns);
        let (url, theirs) = serve(&client, &ns, "Sized right").await?;
        // Another artifact in the same namespace naming the stored deps layer with a
        // size one byte short (its digest recomputed so the spec is consistent).
        let mut manifest = theirs.spec.manifest()?;
        let deps = manifest.layers[0].clone();
        manifest.layers[0].size -= 1;
        let mut liar = AetherArtifactSpec::from_manifest("liar", &manifest)?;
        liar.signature = None;
        apply_as_editor(&ns, &artifact_yaml("liar", &liar));
        let arts: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        let art = wait_for(
            arts,
            "liar",
            "a verdict",
            Duration::from_secs(60),
            |a: Option<&AetherArtifact>| {
                a.and_then(|a| a.status.as_ref())
                    .is_some_and(|s| is_true(&s.conditions, "Stalled"))
            },
        )
        .await?;
        let status = art.status.unwrap();
        let ready = find(&status.conditions, "Ready").unwrap();
        assert_eq!(ready.reason, "InvalidSpec");
        assert!(
            ready.message.contains(&format!("is {} bytes", deps.size)),
            "{}",
            ready.message
        );
        // The stored blob is untouched, and a new pod of the app starts on it.
        storage.verify(&deps.digest, deps.size).await?;
        reschedule(&client, &ns).await?;
        wait_for_body(
            &client,
            &ns,
            "express-api",
            &url,
            "Sized right\n",
            Duration::from_secs(60),
        )
        .await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed and its storage: run `make e2e`"]
async fn a_namespace_stays_within_its_object_quota_and_its_storage_cap() -> anyhow::Result<()> {
    let storage = StorageSettings::from_env()?.host();
    with_temp_ns("quota", move |client, ns| async move {
        editor(&client, &ns).await?;
        // The overlay's quota (config/tenant), with room for one artifact.
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/tenant/quota.yaml");
        let quota = std::fs::read_to_string(path)?.replace(
            "count/aetherartifacts.aether.dev: \"500\"",
            "count/aetherartifacts.aether.dev: \"1\"",
        );
        assert!(quota.contains("\"1\""), "config/tenant/quota.yaml changed shape");
        let out = kubectl_apply(&ns, None, &quota);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        // A storage cap far below the example's dependencies.
        let policies: Api<AetherPolicy> = Api::all(client.clone());
        let name = format!("e2e-{ns}");
        let policy: AetherPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherPolicy",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "maxStorageBytes": 100_000,
            },
        }))?;
        policies.create(&PostParams::default(), &policy).await?;
        let outcome = async {
            let dir = tempfile::tempdir()?;
            example_app(dir.path(), "too big")?;
            let run = tokio::task::block_in_place(|| {
                aether(
                    dir.path(),
                    &ns,
                    &["push", "--no-deploy", "--timeout-seconds", "60"],
                )
            });
            assert_ne!(run.code, Some(0), "{}", run.stderr);
            assert!(run.stderr.contains("QuotaExceeded"), "{}", run.stderr);
            assert!(
                run.stderr.contains(&format!("AetherPolicy {name}")),
                "{}",
                run.stderr
            );
            assert_eq!(
                stored_objects(&storage, &ns).await?,
                0,
                "storage holds something for {ns}"
            );
            // A second artifact is past the object quota, whatever it holds.
            let mut another = AetherArtifactSpec::from_manifest(
                "other",
                &Api::<AetherArtifact>::namespaced(client.clone(), &ns)
                    .list(&ListParams::default())
                    .await?
                    .items[0]
                    .spec
                    .manifest()?,
            )?;
            another.signature = None;
            let out = kubectl_apply(&ns, Some(EDITOR), &artifact_yaml("another", &another));
            assert!(!out.status.success());
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("exceeded quota"),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // With room enough, the same push goes through.
            let raise = serde_json::json!({"spec": {"maxStorageBytes": 1_i64 << 30}});
            policies
                .patch(
                    &name,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(&raise),
                )
                .await?;
            let run = tokio::task::block_in_place(|| {
                aether(
                    dir.path(),
                    &ns,
                    &["push", "--no-deploy", "--timeout-seconds", "120"],
                )
            });
            assert_eq!(run.code, Some(0), "{}", run.stderr);
            assert!(stored_objects(&storage, &ns).await? > 0);
            anyhow::Ok(())
        }
        .await;
        policies.delete(&name, &DeleteParams::default()).await?;
        outcome
    })
    .await
}

/// How many objects, and multipart uploads in progress, storage holds under the
/// namespace's prefix.
async fn stored_objects(storage: &aether_storage::Storage, ns: &str) -> anyhow::Result<usize> {
    let objects = storage
        .client()
        .list_objects_v2()
        .bucket(storage.bucket())
        .prefix(aether_e2e::storage::namespace_prefix(ns))
        .send()
        .await?;
    let uploads = aether_e2e::storage::open_uploads(storage, ns).await?;
    Ok(objects.contents().len() + uploads.len())
}

/// A ConfigMap `name` in `ns` holding `pem` under `key.pem`, created as the admin.
async fn keys_configmap(client: &Client, ns: &str, name: &str, pem: &str) -> anyhow::Result<()> {
    let cm: k8s_openapi::api::core::v1::ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "data": {"key.pem": pem},
    }))?;
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn keys_an_admin_pins_cannot_be_widened_by_an_app_s_own_keys() -> anyhow::Result<()> {
    with_temp_ns("pinned", |client, ns| async move {
        editor(&client, &ns).await?;
        // The admin pins a key the artifacts here are not signed with (a CI key).
        let dir = tempfile::tempdir()?;
        let ci_key = dir.path().join("ci.pem");
        let ci = std::process::Command::new(aether_e2e::app::aether_bin())
            .args(["-q", "keys", "generate", "--out"])
            .arg(&ci_key)
            .output()?;
        assert!(ci.status.success(), "{}", String::from_utf8_lossy(&ci.stderr));
        let show = |key: Option<&std::path::Path>| -> anyhow::Result<String> {
            let mut cmd = std::process::Command::new(aether_e2e::app::aether_bin());
            cmd.args(["keys", "show", "-o", "json"]);
            if let Some(key) = key {
                cmd.arg("--key").arg(key);
            }
            let out: serde_json::Value = serde_json::from_slice(&cmd.output()?.stdout)?;
            Ok(out["publicKeyPem"].as_str().unwrap_or_default().to_string())
        };
        keys_configmap(&client, &ns, "ci-keys", &show(Some(&ci_key))?).await?;
        let policies: Api<AetherPolicy> = Api::all(client.clone());
        let name = format!("e2e-{ns}");
        let policy: AetherPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherPolicy",
            "metadata": {"name": name},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}},
                "verify": {"trustedKeys": {"namespace": ns, "name": "ci-keys"}},
            },
        }))?;
        policies.create(&PostParams::default(), &policy).await?;
        let outcome = async {
            // The developer's own key (which signed the artifact), trusted by the
            // app's own keysRef: not enough, the policy's keys are the only ones.
            let mine = show(None)?;
            assert!(mine.contains("PUBLIC KEY"), "no signing key to show");
            let out = kubectl_apply(
                &ns,
                Some(EDITOR),
                &serde_json::json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "my-keys"},
                    "data": {"mine.pem": mine},
                })
                .to_string(),
            );
            // (An editor may not write ConfigMaps: aether-editor grants none. The admin
            // does it here, as a tenant with `edit` could.)
            if !out.status.success() {
                keys_configmap(&client, &ns, "my-keys", &mine).await?;
            }
            let artifact = artifact_for(&ns, "signed")?;
            apply_as_editor(
                &ns,
                &app_yaml(
                    "signed",
                    &artifact,
                    "  verify:\n    mode: Enforce\n    keysRef:\n      kind: ConfigMap\n      name: my-keys\n",
                ),
            );
            let message = stalled(&client, &ns, "signed", "SignatureRejected").await?;
            assert!(message.contains(&format!("AetherPolicy {name}")), "{message}");
            assert!(Api::<Deployment>::namespaced(client.clone(), &ns).get_opt("signed").await?.is_none());
            anyhow::Ok(())
        }
        .await;
        policies.delete(&name, &DeleteParams::default()).await?;
        outcome
    })
    .await
}

/// Whether the operator gives apps NetworkPolicies (`AETHER_APP_NETWORK_POLICIES` in
/// its ConfigMap, as the local overlay sets it).
async fn operator_makes_network_policies(client: &Client) -> anyhow::Result<bool> {
    let operator_ns = std::env::var("AETHER_OPERATOR_NAMESPACE").unwrap_or_else(|_| "aether-system".into());
    let config = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &operator_ns)
        .get_opt("aether-operator-config")
        .await?;
    Ok(config
        .and_then(|c| c.data)
        .and_then(|d| d.get("AETHER_APP_NETWORK_POLICIES").cloned())
        .is_some_and(|v| v == "true"))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn the_tenant_overlay_runs_apps_under_restricted_pod_security_each_fenced_by_its_policy()
-> anyhow::Result<()> {
    with_temp_ns("restricted", |client, ns| async move {
        // config/tenant/namespace and config/tenant, applied to this namespace as their
        // headers say (kustomize takes a base by a relative path only).
        for part in ["config/tenant/namespace", "config/tenant"] {
            let overlay = tempfile::tempdir()?;
            let dir = std::fs::canonicalize(format!("{}/../{part}", env!("CARGO_MANIFEST_DIR")))?;
            let up = "../".repeat(overlay.path().components().count() - 1);
            let base = format!("{up}{}", dir.strip_prefix("/")?.display());
            std::fs::write(
                overlay.path().join("kustomization.yaml"),
                format!("namespace: {ns}\nresources:\n  - {base}\n"),
            )?;
            let out = Command::new("kubectl").arg("apply").arg("-k").arg(overlay.path()).output()?;
            assert!(out.status.success(), "{part}: {}", String::from_utf8_lossy(&out.stderr));
        }
        let labels = Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
            .get(&ns)
            .await?
            .metadata
            .labels
            .unwrap_or_default();
        assert_eq!(
            labels.get("pod-security.kubernetes.io/enforce").map(String::as_str),
            Some("restricted")
        );
        // Pod Security admission holds there: a root pod is refused.
        let root_pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: root\nspec:\n  containers:\n    - name: c\n      image: busybox\n      securityContext:\n        runAsUser: 0\n";
        let out = kubectl_apply(&ns, None, root_pod);
        assert!(!out.status.success(), "a root pod was admitted: the label has no effect");
        assert!(String::from_utf8_lossy(&out.stderr).contains("restricted"));

        // An app's pods (the fetch container and the app's) are admitted and serve.
        editor(&client, &ns).await?;
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "Restricted")?;
        let run = tokio::task::block_in_place(|| aether(dir.path(), &ns, &["push", "--timeout-seconds", "240"]));
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let app = run.json["app"].as_str().unwrap().to_string();
        let url = run.json["url"].as_str().unwrap().to_string();
        wait_for_body(&client, &ns, &app, &url, "Restricted\n", Duration::from_secs(5)).await?;

        if !operator_makes_network_policies(&client).await? {
            println!("the operator gives apps no NetworkPolicy (AETHER_APP_NETWORK_POLICIES): not checked");
            return Ok(());
        }
        let policy_name = format!("aether.{app}");
        let policy = Api::<k8s_openapi::api::networking::v1::NetworkPolicy>::namespaced(client.clone(), &ns)
            .get(&policy_name)
            .await?;
        let spec = serde_json::to_value(policy.spec.unwrap())?;
        assert_eq!(spec["podSelector"]["matchLabels"]["app.kubernetes.io/instance"], app.as_str());
        assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
        assert_eq!(spec["podSelector"]["matchLabels"]["app.kubernetes.io/part-of"], "aether");
        assert_eq!(spec["ingress"][0]["from"][0], serde_json::json!({"podSelector": {}}));
        let egress = spec["egress"].as_array().unwrap();
        assert_eq!(egress[1]["to"][0]["podSelector"]["matchLabels"]["k8s-app"], "kube-dns");
        assert!(
            egress[2]["to"][0]["ipBlock"]["cidr"].as_str().is_some_and(|c| c.contains('/')),
            "storage is reachable: {spec}"
        );
        // The editor can neither remove nor widen it.
        let out = Command::new("kubectl")
            .args(["--as", EDITOR, "-n", &ns, "delete", "networkpolicy", &policy_name])
            .output()?;
        assert!(!out.status.success(), "the editor deleted the app's NetworkPolicy");
        let allow_all = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: open\nspec:\n  podSelector: {}\n  ingress: [{}]\n  egress: [{}]\n";
        let out = kubectl_apply(&ns, Some(EDITOR), allow_all);
        assert!(!out.status.success(), "the editor created an allow-all NetworkPolicy");

        // Someone else's policy holding an app's policy name stops that app: its pods
        // do not run unfenced.
        let foreign = allow_all.replace("name: open", "name: aether.shadow");
        let out = kubectl_apply(&ns, None, &foreign);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let artifact = artifact_for(&ns, "shadow")?;
        apply_as_editor(
            &ns,
            &format!(
                "apiVersion: aether.dev/v1alpha1\nkind: AetherApp\nmetadata:\n  name: shadow\nspec:\n  artifactRef:\n    name: {artifact}\n"
            ),
        );
        let message = stalled(&client, &ns, "shadow", "NameConflict").await?;
        assert!(message.contains("NetworkPolicy aether.shadow"), "{message}");
        assert!(Api::<Deployment>::namespaced(client.clone(), &ns).get_opt("shadow").await?.is_none());
        Ok(())
    })
    .await
}

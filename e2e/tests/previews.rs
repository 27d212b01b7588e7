//! Preview environments: `aether push --preview NAME --ttl D` deploys a separate app
//! `<app>-<NAME>` with its own URL (and, when the app has hosts, its own host),
//! `aether previews` lists it with its expiry, pushing it again extends it, and once
//! the TTL passes the operator deletes it with its objects and the artifacts only it
//! ran, leaving the app it previewed alone.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use aether_crds::{AetherApp, AetherArtifact};
use aether_e2e::app::{Run, aether, example_app, wait_for_body};
use aether_e2e::{wait_until, with_temp_ns};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;

const APP: &str = "express-api";
const PREVIEW: &str = "express-api-pr-1";

fn apps_api(client: &kube::Client, ns: &str) -> Api<AetherApp> {
    Api::namespaced(client.clone(), ns)
}

fn ok(run: &Run) -> &serde_json::Value {
    assert_eq!(run.code, Some(0), "aether failed:\n{}", run.stderr);
    &run.json
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_preview_serves_on_its_own_then_goes_with_what_only_it_used() -> anyhow::Result<()> {
    with_temp_ns("previews", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "the app itself")?;
        // The app, with a public host where this cluster has an ingress controller.
        let host = format!("{ns}.apps.example.test");
        let mut args = vec!["push", "--timeout", "4m"];
        let ingress = std::env::var_os("AETHER_INGRESS_HTTPS").is_some();
        if ingress {
            args.extend(["--host", &host]);
        }
        let base = ok(&tokio::task::block_in_place(|| aether(dir.path(), &ns, &args))).clone();
        // A preview push never takes over an app that is not that app's preview
        // (`--app express --preview api` would be express-api, the app itself).
        let run = tokio::task::block_in_place(|| {
            aether(dir.path(), &ns, &["push", "--app", "express", "--preview", "api"])
        });
        assert_eq!(run.code, Some(13), "{}", run.stderr);
        let said = aether_e2e::app::one_line(&run.stderr);
        assert!(said.contains("is not a preview of express"), "{said}");
        assert!(apps_api(&client, &ns).get(APP).await?.spec.preview.is_none());

        // 1. The preview: its own app, artifact and URL, serving the new code.
        let greeting = format!("a preview in {ns}");
        example_app(dir.path(), &greeting)?;
        let run = tokio::task::block_in_place(|| {
            aether(
                dir.path(),
                &ns,
                &["push", "--timeout", "4m", "--preview", "pr-1", "--ttl", "60s"],
            )
        });
        let pushed = ok(&run).clone();
        assert_eq!(pushed["app"], PREVIEW);
        assert!(
            pushed["artifact"].as_str().unwrap().starts_with(PREVIEW),
            "{pushed}"
        );
        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);
        let preview = apps.get(PREVIEW).await?;
        let status = preview.status.clone().unwrap();
        let in_cluster = match ingress {
            true => {
                // Its own host, beside the app's: pr-1-<host>.
                let own = format!("pr-1-{host}");
                assert_eq!(status.hosts[0].name, own);
                assert_eq!(pushed["url"], format!("https://{own}/"));
                let rules = Api::<Ingress>::namespaced(client.clone(), &ns)
                    .get(PREVIEW)
                    .await?
                    .spec
                    .unwrap()
                    .rules
                    .unwrap();
                assert_eq!(rules[0].host.as_deref(), Some(own.as_str()));
                format!(
                    "http://{}",
                    Api::<Service>::namespaced(client.clone(), &ns)
                        .get(PREVIEW)
                        .await?
                        .spec
                        .unwrap()
                        .cluster_ip
                        .unwrap()
                )
            }
            false => pushed["url"].as_str().unwrap().to_string(),
        };
        assert_ne!(pushed["url"], base["url"]);
        wait_for_body(
            &client,
            &ns,
            PREVIEW,
            &in_cluster,
            &format!("{greeting}\n"),
            Duration::from_secs(10),
        )
        .await?;
        let first_expiry = preview.spec.preview.unwrap().expires_at.0;

        // 2. `aether previews` lists it, with its expiry.
        let listed = ok(&tokio::task::block_in_place(|| {
            aether(dir.path(), &ns, &["previews"])
        }))
        .clone();
        let items = listed["items"].as_array().unwrap();
        assert_eq!(items.len(), 1, "{listed}");
        assert_eq!(items[0]["name"], PREVIEW);
        assert_eq!(items[0]["of"], APP);
        let left = items[0]["expiresInSeconds"].as_i64().unwrap();
        assert!((1..=60).contains(&left), "{listed}");

        // 3. Pushing it again extends it.
        let run = tokio::task::block_in_place(|| {
            aether(
                dir.path(),
                &ns,
                &["push", "--timeout", "4m", "--preview", "pr-1", "--ttl", "75s"],
            )
        });
        ok(&run);
        let extended = apps.get(PREVIEW).await?.spec.preview.unwrap().expires_at.0;
        assert!(extended > first_expiry, "{extended} is not after {first_expiry}");
        let artifact = run.json["artifact"].as_str().unwrap().to_string();

        // 4. Once the TTL passes it is gone, with its Deployment, Service and
        // artifact; the app it previewed still runs.
        wait_until("the preview to be deleted", Duration::from_secs(150), || {
            let apps = apps.clone();
            async move { Ok(apps.get_opt(PREVIEW).await?.is_none().then_some(())) }
        })
        .await?;
        let gone_at = k8s_openapi::jiff::Timestamp::now();
        println!(
            "preview deleted {:.1}s after its expiry",
            (gone_at - extended).total(k8s_openapi::jiff::Unit::Second)?
        );
        assert!(gone_at >= extended, "deleted before it expired");
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let artifacts: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        wait_until("its objects and artifact to go", Duration::from_secs(60), || {
            let (deployments, artifacts, artifact) =
                (deployments.clone(), artifacts.clone(), artifact.clone());
            async move {
                let left = deployments.get_opt(PREVIEW).await?.is_some()
                    || artifacts.get_opt(&artifact).await?.is_some();
                Ok((!left).then_some(()))
            }
        })
        .await?;
        assert!(apps.get_opt(APP).await?.is_some(), "the previewed app went too");
        assert!(deployments.get_opt(APP).await?.is_some());
        Ok(())
    })
    .await
}

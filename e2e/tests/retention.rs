//! Retention and blob garbage collection with the real operator and storage: shared
//! blobs outlive the artifacts that listed them until the last one goes.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::time::Duration;

use aether_artifact::Digest;
use aether_crds::{AetherArtifact, LayerName};
use aether_e2e::app::{aether, example_app, set_greeting};
use aether_e2e::storage::StorageSettings;
use aether_e2e::{wait_until, with_temp_ns};
use kube::api::DeleteParams;
use kube::{Api, ResourceExt};

fn push(dir: &std::path::Path, ns: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["push", "--timeout-seconds", "240"];
    args.extend_from_slice(extra);
    let run = aether(dir, ns, &args);
    assert_eq!(run.code, Some(0), "aether push failed:\n{}", run.stderr);
    run.json
}

fn layer(art: &AetherArtifact, name: LayerName) -> Digest {
    art.spec
        .layers
        .iter()
        .find(|l| l.name == name)
        .unwrap()
        .digest
        .parse()
        .unwrap()
}

async fn wait_gone(api: &Api<AetherArtifact>, name: &str) -> anyhow::Result<()> {
    // The operator looks at an artifact as soon as a release naming it goes (not at
    // its next periodic look, minutes later).
    wait_until(
        &format!("AetherArtifact {name} to be deleted"),
        Duration::from_secs(20),
        || async move { Ok(api.get_opt(name).await?.is_none().then_some(())) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed and its storage: run `make e2e`"]
async fn deleting_an_artifact_frees_only_the_blobs_no_other_artifact_lists() -> anyhow::Result<()> {
    let storage = StorageSettings::from_env()?.host();
    with_temp_ns("gc", move |client, ns| async move {
        let storage = storage.namespace(&ns);
        let dir = tempfile::tempdir()?;
        // Two apps from the same lockfile: same deps layer, different code.
        example_app(dir.path(), &format!("Collected in {ns}"))?;
        let a = tokio::task::block_in_place(|| push(dir.path(), &ns, &["--no-deploy", "--app", "gc-a"]));
        set_greeting(dir.path(), &format!("Kept in {ns}"))?;
        let b = tokio::task::block_in_place(|| push(dir.path(), &ns, &["--no-deploy", "--app", "gc-b"]));
        let arts: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        let art_a = arts.get(a["artifact"].as_str().unwrap()).await?;
        let art_b = arts.get(b["artifact"].as_str().unwrap()).await?;
        assert!(
            art_a.finalizers().iter().any(|f| f == "aether.dev/blobs"),
            "it holds the operator's finalizer (aether push creates it with it)"
        );
        let deps = layer(&art_a, LayerName::Deps);
        assert_eq!(deps, layer(&art_b, LayerName::Deps));
        let code_a = layer(&art_a, LayerName::App);
        assert!(storage.head(&code_a).await?.is_some());

        arts.delete(&art_a.metadata.name.clone().unwrap(), &DeleteParams::default())
            .await?;
        wait_gone(&arts, art_a.metadata.name.as_deref().unwrap()).await?;
        assert_eq!(
            storage.head(&code_a).await?,
            None,
            "its own code layer is deleted"
        );
        assert!(
            storage.head(&deps).await?.is_some(),
            "the deps layer gc-b lists stays"
        );
        assert!(storage.head(&layer(&art_b, LayerName::App)).await?.is_some());
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed and its storage: run `make e2e`"]
async fn releases_older_than_the_kept_ones_are_deleted_with_their_blobs() -> anyhow::Result<()> {
    // The operator's --keep-releases (the local overlay sets 2).
    let keep: usize = std::env::var("AETHER_E2E_KEEP_RELEASES")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(2);
    let storage = StorageSettings::from_env()?.host();
    with_temp_ns("retention", move |client, ns| async move {
        let storage = storage.namespace(&ns);
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "release 0")?;
        let arts: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        let mut names = Vec::new();
        let mut oldest_code = None;
        for i in 0..keep + 2 {
            set_greeting(dir.path(), &format!("release {i} of {ns}"))?;
            let out = tokio::task::block_in_place(|| push(dir.path(), &ns, &[]));
            let name = out["artifact"].as_str().unwrap().to_string();
            if i == 0 {
                oldest_code = Some(layer(&arts.get(&name).await?, LayerName::App));
            }
            names.push(name);
        }
        // The current release and `keep` before it stay; the one before those goes.
        let (oldest, code) = (names[0].clone(), oldest_code.unwrap());
        wait_gone(&arts, &oldest).await?;
        assert_eq!(storage.head(&code).await?, None, "its code layer is deleted");
        for kept in &names[1..] {
            assert!(
                arts.get_opt(kept).await?.is_some(),
                "{kept} is among the kept releases"
            );
        }
        Ok(())
    })
    .await
}

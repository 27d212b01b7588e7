//! Real Node projects in the shapes people have (examples/): each is pushed with
//! `aether push` as a developer would, from a copy with no node_modules and no
//! yarn or pnpm installed on the machine, and must answer over HTTP.
//!
//! Each test runs in its own namespace against the operator running in the cluster.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::path::{Path, PathBuf};
use std::time::Duration;

use aether_crds::AetherArtifact;
use aether_e2e::app::{Run, aether, copy_project, shared_cache, wait_for_body};
use aether_e2e::registry::{PrivateRegistry, private_dependency_project};
use aether_e2e::with_temp_ns;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};

fn example(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name)
}

fn push(dir: &Path, ns: &str, extra: &[&str]) -> Run {
    let mut args = vec!["push", "--timeout-seconds", "240"];
    args.extend_from_slice(extra);
    tokio::task::block_in_place(|| aether(dir, ns, &args))
}

/// Push `dir` and wait until the app answers `expected`; the push's JSON.
async fn serves(
    client: &Client,
    ns: &str,
    dir: &Path,
    extra: &[&str],
    expected: &str,
) -> anyhow::Result<serde_json::Value> {
    let run = push(dir, ns, extra);
    assert_eq!(run.code, Some(0), "aether push failed:\n{}", run.stderr);
    let json = run.json;
    println!("{}: {json}", dir.display());
    let app = json["app"].as_str().unwrap();
    let url = json["url"].as_str().unwrap();
    wait_for_body(client, ns, app, url, expected, Duration::from_secs(20)).await?;
    Ok(json)
}

/// A copy of examples/NAME in a temp folder: what a fresh clone holds.
fn checkout(name: &str) -> anyhow::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    copy_project(&example(name), dir.path())?;
    Ok(dir)
}

async fn example_serves(name: &'static str, expected: &'static str) -> anyhow::Result<()> {
    with_temp_ns(name, move |client, ns| async move {
        let dir = checkout(name)?;
        serves(&client, &ns, dir.path(), &[], expected).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_typescript_build_is_built_packed_and_served_and_a_broken_build_uploads_nothing()
-> anyhow::Result<()> {
    with_temp_ns("tsc", |client, ns| async move {
        let dir = checkout("typescript-api")?;
        // dist/ is in .gitignore and absent from the checkout: only the build makes it.
        assert!(!dir.path().join("dist").exists());
        let json = serves(&client, &ns, dir.path(), &[], "typescript-api ok\n").await?;
        assert!(json["timingsMs"].is_object(), "{json}");
        assert!(
            !dir.path().join("dist").exists(),
            "the build ran in a copy, not in the project"
        );

        // A type error: the build's own output, exit 4, and nothing new in the cluster.
        let artifacts: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        let before = artifacts.list(&Default::default()).await?.items.len();
        let index = dir.path().join("src/index.ts");
        let text = std::fs::read_to_string(&index)?;
        std::fs::write(
            &index,
            format!("{text}\nconst broken: number = 'not a number';\n"),
        )?;
        let run = push(dir.path(), &ns, &[]);
        assert_eq!(run.code, Some(4), "{}", run.stderr);
        assert!(run.stderr.contains("build script failed"), "{}", run.stderr);
        assert!(
            run.stderr.contains("TS2322"),
            "the compiler's message is shown:\n{}",
            run.stderr
        );
        assert_eq!(artifacts.list(&Default::default()).await?.items.len(), before);
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_framework_cli_start_script_with_shell_syntax_serves_on_the_node_its_engines_ask_for()
-> anyhow::Result<()> {
    with_temp_ns("fastify", |client, ns| async move {
        let dir = checkout("fastify-cli")?;
        serves(&client, &ns, dir.path(), &[], "fastify-cli ok\n").await?;
        // engines.node "22.x": the artifact asks for Node 22 and the pod runs it.
        let artifacts: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        let artifact = &artifacts.list(&Default::default()).await?.items[0];
        assert_eq!(artifact.spec.runtime.node_major, 22);
        let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
        let pods = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=fastify-cli"))
            .await?;
        let versions: Vec<String> = pods
            .items
            .iter()
            .filter_map(|p| p.status.as_ref()?.container_statuses.as_ref())
            .flatten()
            .filter(|c| c.name == "app")
            .map(|c| c.image.clone())
            .collect();
        assert!(
            !versions.is_empty() && versions.iter().all(|i| i.contains("22")),
            "{versions:?}"
        );
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn an_esm_app_serves() -> anyhow::Result<()> {
    example_serves("esm-app", "esm-app ok\n").await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_yarn_classic_app_serves() -> anyhow::Result<()> {
    example_serves("yarn-classic", "yarn-classic ok\n").await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_yarn_berry_app_serves() -> anyhow::Result<()> {
    example_serves("yarn-berry", "yarn-berry ok\n").await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_yarn_pnp_app_serves() -> anyhow::Result<()> {
    example_serves("yarn-pnp", "yarn-pnp ok\n").await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_pnpm_app_serves() -> anyhow::Result<()> {
    example_serves("pnpm-app", "pnpm-app ok\n").await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn an_npm_workspace_package_pushed_from_its_folder_serves_with_its_local_package() -> anyhow::Result<()>
{
    with_temp_ns("npm-ws", |client, ns| async move {
        let dir = checkout("npm-workspaces")?;
        let json = serves(
            &client,
            &ns,
            &dir.path().join("apps/web"),
            &[],
            "npm-workspaces ok\n",
        )
        .await?;
        assert_eq!(json["app"], "web");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_pnpm_workspace_package_pushed_from_the_root_by_name_serves() -> anyhow::Result<()> {
    with_temp_ns("pnpm-ws", |client, ns| async move {
        let dir = checkout("pnpm-workspace")?;
        let json = serves(
            &client,
            &ns,
            dir.path(),
            &["--workspace", "web"],
            "pnpm-workspace ok\n",
        )
        .await?;
        assert_eq!(json["app"], "web");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_yarn_workspace_package_pushed_from_its_folder_serves() -> anyhow::Result<()> {
    with_temp_ns("yarn-ws", |client, ns| async move {
        let dir = checkout("yarn-workspaces")?;
        let json = serves(
            &client,
            &ns,
            &dir.path().join("apps/api"),
            &[],
            "yarn-workspaces ok\n",
        )
        .await?;
        assert_eq!(json["app"], "api");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_private_registry_dependency_installs_with_the_token_that_never_leaves_the_machine()
-> anyhow::Result<()> {
    with_temp_ns("private", |client, ns| async move {
        let registry =
            tokio::task::block_in_place(|| PrivateRegistry::start(&shared_cache().join("verdaccio")))?;
        let dir = tempfile::tempdir()?;
        tokio::task::block_in_place(|| private_dependency_project(&registry, dir.path()))?;
        let run = push(dir.path(), &ns, &[]);
        assert_eq!(run.code, Some(0), "aether push failed:\n{}", run.stderr);
        assert!(!run.stderr.contains(&registry.token), "the token is printed");
        let app = run.json["app"].as_str().unwrap();
        let url = run.json["url"].as_str().unwrap();
        wait_for_body(
            &client,
            &ns,
            app,
            url,
            "private registry ok\n",
            Duration::from_secs(20),
        )
        .await?;

        // No blob of the artifact (layers, manifest, SBOM) holds the token.
        let blobs = dir.path().join(".aether/out/blobs/sha256");
        let mut seen = 0;
        for entry in std::fs::read_dir(&blobs)? {
            let bytes = std::fs::read(entry?.path())?;
            let plain = zstd::decode_all(bytes.as_slice()).unwrap_or(bytes);
            let text = String::from_utf8_lossy(&plain);
            assert!(!text.contains(&registry.token), "a blob holds the registry token");
            assert!(!text.contains("_authToken"), "a blob holds an .npmrc");
            seen += 1;
        }
        assert!(seen >= 3, "layers, manifest and SBOM were written ({seen})");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn an_app_reaches_another_service_by_its_dns_name() -> anyhow::Result<()> {
    with_temp_ns("dns", |client, ns| async move {
        // The backend: the express example, deployed as the app (and Service) `backend`.
        let backend = tempfile::tempdir()?;
        let greeting = format!("backend of {ns}");
        aether_e2e::app::example_app(backend.path(), &greeting)?;
        serves(
            &client,
            &ns,
            backend.path(),
            &["--app", "backend"],
            &format!("{greeting}\n"),
        )
        .await?;

        let dir = checkout("dns-client")?;
        serves(
            &client,
            &ns,
            dir.path(),
            &[],
            &format!("dns-client got: {greeting}\n"),
        )
        .await?;
        Ok(())
    })
    .await
}

/// `aether push --libc musl` installs the musl build of a prebuilt native module (on
/// this glibc machine) and the app runs on the admin's musl Node image
/// (`AETHER_NODE_IMAGE_MUSL`, like node:20-alpine), with Aether's runtime beside it
/// as its PID 1. Pushed again for glibc, it moves back.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_native_module_app_pushed_for_musl_runs_on_an_alpine_node() -> anyhow::Result<()> {
    with_temp_ns("musl", |client, ns| async move {
        let dir = checkout("alpine-native")?;
        let crc = "crc32 27a0a7c0"; // of "aether": the native module answers
        let json = serves(
            &client,
            &ns,
            dir.path(),
            &["--libc", "musl"],
            &format!("alpine-native ok on musl, {crc}\n"),
        )
        .await?;
        let artifacts: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        let artifact = artifacts.get(json["artifact"].as_str().unwrap()).await?;
        assert_eq!(artifact.spec.runtime.libc, aether_crds::Libc::Musl);

        serves(
            &client,
            &ns,
            dir.path(),
            &[],
            &format!("alpine-native ok on glibc, {crc}\n"),
        )
        .await?;
        Ok(())
    })
    .await
}

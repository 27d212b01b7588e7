//! Releases and rollback on a pushed app: each push is a numbered AetherRelease that
//! `kubectl` and `aether releases` show alike; `aether rollback` serves the earlier
//! code again and is recorded as a rollback; a configuration change is a release;
//! fields a GitOps tool owns are not rolled back behind its back; releases are the
//! operator's record, not an editor's to write.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;
use std::time::Duration;

use aether_crds::{AetherArtifact, AetherRelease};
use aether_e2e::app::{aether, example_app, one_line, set_greeting, wait_for_body};
use aether_e2e::{bind_user, wait_until, with_temp_ns};
use kube::{Api, Client};

const APP: &str = "express-api";
const EDITOR: &str = "erin@example.com";
/// After a command that waits returned: kube-proxy programs what the EndpointSlices
/// say within moments.
const SOON: Duration = Duration::from_secs(5);

/// `aether push` of the project in `dir`, which must serve; its URL.
fn push(dir: &std::path::Path, ns: &str) -> String {
    let run = tokio::task::block_in_place(|| aether(dir, ns, &["push", "--timeout", "4m"]));
    assert_eq!(run.code, Some(0), "push failed: {}", run.stderr);
    run.json["url"].as_str().unwrap().to_string()
}

/// `aether releases -o json`: (version, cause, state, rollbackOf) newest first.
fn releases(dir: &std::path::Path, ns: &str) -> Vec<(i64, String, String, Option<i64>)> {
    let run = aether(dir, ns, &["releases"]);
    assert_eq!(run.code, Some(0), "aether releases failed: {}", run.stderr);
    run.json["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["version"].as_i64().unwrap(),
                r["cause"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap_or("-").to_string(),
                r["rollbackOf"].as_i64(),
            )
        })
        .collect()
}

fn kubectl(args: &[&str]) -> std::process::Output {
    Command::new("kubectl").args(args).output().unwrap()
}

/// `kubectl patch --type merge` of the app with `patch`, as an admin or a GitOps
/// tool would, asserting that it took.
fn patch_app(ns: &str, patch: &str) {
    let out = kubectl(&[
        "-n",
        ns,
        "patch",
        "aetherapp",
        APP,
        "--type",
        "merge",
        "-p",
        patch,
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn pushes_are_releases_and_rollback_serves_the_earlier_one_again() -> anyhow::Result<()> {
    with_temp_ns("releases", |client: Client, ns: String| async move {
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "release one")?;
        let url = push(dir.path(), &ns);
        set_greeting(dir.path(), "release two")?;
        push(dir.path(), &ns);

        // The operator records the second release once it rolls out; its state
        // follows the rollout.
        let expected = |r: &[(i64, String, String, Option<i64>)]| {
            r.iter().map(|(v, c, s, _)| (*v, c.clone(), s.clone())).collect::<Vec<_>>()
        };
        wait_until("two releases, v2 Active", Duration::from_secs(60), || async {
            let r = releases(dir.path(), &ns);
            Ok((expected(&r)
                == [
                    (2, "Push".to_string(), "Active".to_string()),
                    (1, "Push".to_string(), "Superseded".to_string()),
                ])
            .then_some(()))
        })
        .await?;
        let table = kubectl(&["get", "aetherreleases", "-n", &ns]);
        let text = String::from_utf8_lossy(&table.stdout);
        let header = text.lines().next().unwrap_or_default();
        for column in ["APP", "VERSION", "ARTIFACT", "CAUSE", "STATE", "AGE"] {
            assert!(header.contains(column), "kubectl get arel: {text}");
        }
        assert!(text.contains(&format!("{APP}-v2")), "{text}");

        // Back to v1: its code answers again, and the rollback is release v3.
        let run = tokio::task::block_in_place(|| aether(dir.path(), &ns, &["rollback", "--timeout", "4m"]));
        assert_eq!(run.code, Some(0), "rollback failed: {}", run.stderr);
        assert_eq!(run.json["rolledBackTo"], 1, "{}", run.json);
        // --wait returned once the Service routes to v1's pods alone; kube-proxy
        // programs what the EndpointSlices say within moments.
        wait_for_body(&client, &ns, APP, &url, "release one\n", SOON).await?;
        wait_until("v3, a rollback to v1", Duration::from_secs(30), || async {
            let r = releases(dir.path(), &ns);
            Ok((r.first() == Some(&(3, "Rollback".into(), "Active".into(), Some(1)))).then_some(()))
        })
        .await?;

        // A configuration change made by a GitOps tool (its own field manager) is a
        // release too, and a rollback would undo it behind the tool's back: refused,
        // naming the manager, and nothing changes.
        let patch = r#"{"apiVersion":"aether.dev/v1alpha1","kind":"AetherApp","metadata":{"name":"express-api"},"spec":{"env":[{"name":"FEATURE","value":"on"}]}}"#;
        let applied = Command::new("kubectl")
            .args(["apply", "--server-side", "--force-conflicts", "--field-manager", "kustomize-controller", "-n", &ns, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write as _;
                child.stdin.take().unwrap().write_all(patch.as_bytes())?;
                child.wait_with_output()
            })?;
        assert!(applied.status.success(), "{}", String::from_utf8_lossy(&applied.stderr));
        // Active once its rollout is done (no CLI waited for it here).
        wait_until("v4, a config release, Active", Duration::from_secs(240), || async {
            let r = releases(dir.path(), &ns);
            Ok((r.first().map(|(v, c, s, _)| (*v, c.as_str(), s.as_str())) == Some((4, "Config", "Active"))).then_some(()))
        })
        .await?;
        let refused = aether(dir.path(), &ns, &["rollback"]);
        assert_eq!(refused.code, Some(13), "{}", refused.stderr);
        let said = one_line(&refused.stderr);
        assert!(
            said.contains("spec.env by kustomize-controller") && said.contains("in Git instead"),
            "{said}"
        );
        assert_eq!(releases(dir.path(), &ns)[0].0, 4, "the refused rollback changed nothing");

        // Retention (the local overlay keeps 2 + 1 releases): v1 is gone, but its
        // artifact stays, since v3 (the rollback) runs the same one.
        wait_until("v1 deleted", Duration::from_secs(30), || async {
            let versions: Vec<i64> = releases(dir.path(), &ns).iter().map(|r| r.0).collect();
            Ok((versions == [4, 3, 2]).then_some(()))
        })
        .await?;
        let v3: AetherRelease = Api::namespaced(client.clone(), &ns).get(&format!("{APP}-v3")).await?;
        let artifacts: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        assert!(artifacts.get_opt(&v3.spec.artifact.name).await?.is_some());
        wait_for_body(&client, &ns, APP, &url, "release one\n", Duration::from_secs(60)).await?;

        // An editor reads releases but cannot write one (it would forge history).
        bind_user(&client, &ns, EDITOR, "aether-editor").await?;
        let can = |verb: &str| {
            let out = kubectl(&["auth", "can-i", verb, "aetherreleases", "-n", &ns, "--as", EDITOR]);
            String::from_utf8_lossy(&out.stdout).trim() == "yes"
        };
        assert!(can("list") && can("get"), "an editor reads releases");
        for verb in ["create", "update", "patch", "delete"] {
            assert!(!can(verb), "an editor may {verb} releases");
        }
        let forged = kubectl(&[
            "--as", EDITOR, "-n", &ns, "label", "aetherrelease", &format!("{APP}-v2"), "forged=yes",
        ]);
        assert!(!forged.status.success(), "an editor changed a release");
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn with_auto_rollback_a_crashing_push_goes_back_to_the_last_good_release() -> anyhow::Result<()> {
    with_temp_ns("autorollback", |client: Client, ns: String| async move {
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "good")?;
        let url = push(dir.path(), &ns);
        patch_app(&ns, r#"{"spec":{"autoRollback":true}}"#);

        // A release whose app throws as it starts: its pods crash-loop.
        let greeting = dir.path().join("lib/greeting.js");
        let working = std::fs::read_to_string(&greeting)?;
        std::fs::write(&greeting, "throw new Error('broken on purpose');\n")?;
        let run = tokio::task::block_in_place(|| aether(dir.path(), &ns, &["push", "--timeout", "4m"]));
        assert_eq!(run.code, Some(11), "the push must fail: {}", run.stderr);
        let said = one_line(&run.stderr);
        assert!(
            said.contains("RolledBack") && said.contains("spec.autoRollback went back to v1"),
            "{said}"
        );

        // The good code serves; the releases say what happened.
        wait_for_body(&client, &ns, APP, &url, "good\n", Duration::from_secs(120)).await?;
        wait_until(
            "v3, an automatic rollback to v1",
            Duration::from_secs(120),
            || async {
                let r = releases(dir.path(), &ns);
                let want = [
                    (3, "AutomaticRollback".to_string(), "Active".to_string(), Some(1)),
                    (2, "Push".to_string(), "Failed".to_string(), None),
                    (1, "Push".to_string(), "Superseded".to_string(), None),
                ];
                Ok((r == want).then_some(()))
            },
        )
        .await?;
        let app: aether_crds::AetherApp = Api::namespaced(client.clone(), &ns).get(APP).await?;
        let ready = aether_crds::condition::find(&app.status.unwrap().conditions, "Ready")
            .cloned()
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("False", "RolledBack")
        );
        let events = kubectl(&[
            "-n",
            &ns,
            "get",
            "events",
            "--field-selector",
            "reason=RolledBack",
            "-o",
            "name",
        ]);
        assert!(
            !String::from_utf8_lossy(&events.stdout).trim().is_empty(),
            "no RolledBack event"
        );

        // A fixed push is tried again, and serves.
        std::fs::write(&greeting, working)?;
        set_greeting(dir.path(), "fixed")?;
        push(dir.path(), &ns);
        wait_for_body(&client, &ns, APP, &url, "fixed\n", SOON).await?;
        Ok(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn config_changes_roll_out_as_releases_and_secret_values_stay_out_of_sight() -> anyhow::Result<()> {
    const VIEWER: &str = "vic@example.com";
    const SECRET: &str = "s3cr3t-value-7f2a";
    with_temp_ns("config", |client: Client, ns: String| async move {
        let dir = tempfile::tempdir()?;
        example_app(dir.path(), "unused")?;
        // The app answers with its GREETING variable.
        std::fs::write(
            dir.path().join("lib/greeting.js"),
            "exports.greeting = () => `${process.env.GREETING || 'unset'}\\n`;\n",
        )?;
        let url = push(dir.path(), &ns);
        assert_eq!(aether_e2e::app::body(&client, &ns, APP, &url).await?, "unset\n");

        // A plain value: served when the command returns, and a Config release.
        let run = tokio::task::block_in_place(|| {
            aether(
                dir.path(),
                &ns,
                &["config", "set", "GREETING=hello", "MODE=fast", "--timeout", "4m"],
            )
        });
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        wait_for_body(&client, &ns, APP, &url, "hello\n", SOON).await?;
        let get = aether(dir.path(), &ns, &["config", "get"]);
        assert_eq!(get.code, Some(0), "{}", get.stderr);
        assert_eq!(get.json["items"][0]["name"], "GREETING", "{}", get.json);
        assert_eq!(get.json["items"][0]["value"], "hello");
        wait_until("v2, a config release", Duration::from_secs(30), || async {
            let r = releases(dir.path(), &ns);
            Ok((r.first().map(|(v, c, _, _)| (*v, c.clone())) == Some((2, "Config".into()))).then_some(()))
        })
        .await?;

        // A Secret the app reads in the form of a config Secret, which the app did not
        // make, is neither written nor adopted.
        let theirs = kubectl(&[
            "-n",
            &ns,
            "create",
            "secret",
            "generic",
            "express-api-config-h4ndm",
            "--from-literal=OTHER=x",
        ]);
        assert!(
            theirs.status.success(),
            "{}",
            String::from_utf8_lossy(&theirs.stderr)
        );
        let reads = |source: &str| patch_app(&ns, &format!(r#"{{"spec":{{"envFrom":{source}}}}}"#));
        reads(r#"[{"secretRef":{"name":"express-api-config-h4ndm"}}]"#);
        // (kubectl-patch owns envFrom now: `--force` takes it over, as a user would.)
        let refused = aether(
            dir.path(),
            &ns,
            &["config", "set", "--secret", "GREETING=nope", "--force"],
        );
        assert_eq!(refused.code, Some(13), "{}", refused.stderr);
        let said = one_line(&refused.stderr);
        assert!(said.contains("is not app express-api's config Secret"), "{said}");
        reads("null");
        let gone = kubectl(&["-n", &ns, "delete", "secret", "express-api-config-h4ndm"]);
        assert!(gone.status.success());

        // A secret value: served, in a new immutable Secret only, never in what a
        // viewer reads.
        let set_secret = |value: &str| {
            let run = tokio::task::block_in_place(|| {
                aether(
                    dir.path(),
                    &ns,
                    &[
                        "config",
                        "set",
                        "--secret",
                        &format!("GREETING={value}"),
                        "--timeout",
                        "4m",
                    ],
                )
            });
            assert_eq!(run.code, Some(0), "{}", run.stderr);
        };
        let apps: Api<aether_crds::AetherApp> = Api::namespaced(client.clone(), &ns);
        let config_secret = || async {
            let app = apps.get(APP).await.unwrap();
            let sources = app.spec.env_from.iter().filter_map(|e| e.secret_ref.clone());
            sources.map(|s| s.name).collect::<Vec<_>>()
        };
        set_secret(SECRET);
        wait_for_body(&client, &ns, APP, &url, &format!("{SECRET}\n"), SOON).await?;
        let first = config_secret().await;
        assert!(
            first.len() == 1 && first[0].starts_with("express-api-config-"),
            "{first:?}"
        );
        let first = first[0].clone();
        let get = aether(dir.path(), &ns, &["config", "get"]);
        let text = get.json.to_string();
        let from = format!("secret {first} key GREETING");
        assert!(!text.contains(SECRET) && text.contains(&from), "{text}");
        let edit = kubectl(&[
            "-n",
            &ns,
            "patch",
            "secret",
            &first,
            "-p",
            r#"{"stringData":{"GREETING":"changed"}}"#,
        ]);
        assert!(!edit.status.success(), "a release's config Secret is immutable");
        bind_user(&client, &ns, VIEWER, "aether-viewer").await?;
        let seen = kubectl(&[
            "--as",
            VIEWER,
            "-n",
            &ns,
            "get",
            "aetherapps,aetherreleases,aetherartifacts,pods,events",
            "-o",
            "yaml",
        ]);
        assert!(seen.status.success(), "{}", String::from_utf8_lossy(&seen.stderr));
        let seen = String::from_utf8_lossy(&seen.stdout);
        assert!(seen.contains(&first), "the viewer sees the reference");
        assert!(!seen.contains(SECRET), "a viewer can read the secret value");
        let secret = kubectl(&["--as", VIEWER, "-n", &ns, "get", "secret", &first]);
        assert!(!secret.status.success(), "a viewer read the config Secret");

        // A new secret value is a release, and a rollback serves the earlier value.
        set_secret("second");
        wait_for_body(&client, &ns, APP, &url, "second\n", SOON).await?;
        let run = tokio::task::block_in_place(|| aether(dir.path(), &ns, &["rollback", "--timeout", "4m"]));
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        wait_for_body(&client, &ns, APP, &url, &format!("{SECRET}\n"), SOON).await?;
        assert_eq!(config_secret().await, [first], "the first values' Secret again");
        let r = releases(dir.path(), &ns);
        // (Versions depend on which of the quick edits above the operator saw apart.)
        let causes: Vec<_> = r.iter().take(3).map(|(_, c, _, _)| c.as_str()).collect();
        assert_eq!(causes, ["Rollback", "Config", "Config"], "{r:?}");
        assert_eq!(r[0].3, Some(r[2].0), "back to the first value's release: {r:?}");

        // Unset: the variable is gone from the app (and no config Secret is read).
        let run = tokio::task::block_in_place(|| {
            aether(
                dir.path(),
                &ns,
                &["config", "unset", "GREETING", "--timeout", "4m"],
            )
        });
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        wait_for_body(&client, &ns, APP, &url, "unset\n", SOON).await?;

        // Editing, by hand, a Secret the app reads rolls the pods too.
        let hand = kubectl(&[
            "-n",
            &ns,
            "create",
            "secret",
            "generic",
            "by-hand",
            "--from-literal=GREETING=by hand",
        ]);
        assert!(hand.status.success(), "{}", String::from_utf8_lossy(&hand.stderr));
        patch_app(&ns, r#"{"spec":{"envFrom":[{"secretRef":{"name":"by-hand"}}]}}"#);
        wait_for_body(&client, &ns, APP, &url, "by hand\n", Duration::from_secs(150)).await?;
        let edited = kubectl(&[
            "-n",
            &ns,
            "patch",
            "secret",
            "by-hand",
            "--type",
            "merge",
            "-p",
            r#"{"stringData":{"GREETING":"edited by hand"}}"#,
        ]);
        assert!(
            edited.status.success(),
            "{}",
            String::from_utf8_lossy(&edited.stderr)
        );
        wait_for_body(
            &client,
            &ns,
            APP,
            &url,
            "edited by hand\n",
            Duration::from_secs(150),
        )
        .await?;
        Ok(())
    })
    .await
}

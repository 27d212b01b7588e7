//! The AetherApp controller's pure steps (validate → build → status), from fixtures.
#![allow(clippy::unwrap_used)]

use aether_artifact::Manifest;
use aether_artifact::manifest::{LayerDescriptor, RuntimeDescriptor};
use aether_artifact::signature::{SigningKey, Verdict};
use aether_artifact::{Digest, LAYER_MEDIA_TYPE, MANIFEST_MEDIA_TYPE};
use aether_crds::condition::{READY, RECONCILING, STALLED};
use aether_crds::{AetherApp, AetherAppStatus, AetherArtifact, AetherArtifactSpec, Signature, VerifyMode};
use aether_operator::app::build::{self, Children, PodConfig};
use aether_operator::app::policy::Floor;
use aether_operator::app::status::{self, Observed, Rollout};
use aether_operator::app::validate::{TrustedKeys, Validated, validate};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

fn fixture<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn app() -> AetherApp {
    fixture("app.yaml")
}

fn config() -> PodConfig {
    PodConfig {
        runtime_image: "registry.example/aether-runtime:1".into(),
        node_image: "node:{major}-slim".into(),
        node_image_musl: "node:{major}-alpine".into(),
        image_pull_policy: "IfNotPresent".into(),
        fetch_deadline_seconds: 300,
    }
}

/// A Ready artifact for `app` whose code is `code`, signed by `key` if given.
fn artifact(app: &str, code: &str, key: Option<&SigningKey>) -> AetherArtifact {
    let layer = |name: &str, seed: &str| LayerDescriptor {
        name: name.into(),
        media_type: LAYER_MEDIA_TYPE.into(),
        digest: Digest::of(seed.as_bytes()),
        size: 100,
        entries: 3,
        files_digest: Digest::of(format!("files {seed}").as_bytes()),
        cache_key: None,
    };
    let manifest = Manifest {
        schema_version: 1,
        media_type: MANIFEST_MEDIA_TYPE.into(),
        layers: vec![layer("deps", "deps"), layer("app", code)],
        runtime: RuntimeDescriptor {
            node_major: 20,
            platform: "linux/amd64".into(),
            libc: "glibc".into(),
        },
        entrypoint: vec!["node".into(), "server.js".into()],
        workdir: None,
        source: None,
    };
    let mut spec = AetherArtifactSpec::from_manifest(app, &manifest).unwrap();
    spec.signature = key.map(|k| Signature {
        key_id: k.public_key().key_id(),
        value: k.sign(&manifest.digest(), "team-a", app),
    });
    let mut art = AetherArtifact::new("web-0123456789ab", spec);
    art.metadata.namespace = Some("team-a".into());
    art.status = Some(
        serde_json::from_value(serde_json::json!({
            "conditions": [{"type": "Ready", "status": "True", "reason": "Verified", "message": "",
                            "lastTransitionTime": "2026-11-27T08:00:00Z"}]
        }))
        .unwrap(),
    );
    art
}

fn key() -> SigningKey {
    SigningKey::from_pem(&SigningKey::generate_pem().unwrap()).unwrap()
}

fn trusting(key: &SigningKey) -> TrustedKeys {
    let pem = key.public_key().to_pem();
    TrustedKeys {
        source: "ConfigMap aether-system/aether-trusted-keys".into(),
        keys: vec![key.public_key()],
        pem,
    }
}

fn release(code: &str) -> (Validated, SigningKey) {
    let k = key();
    let v = validate(
        &app(),
        Some(&artifact("web", code, Some(&k))),
        &trusting(&k),
        &Floor::default(),
    )
    .unwrap();
    (v, k)
}

fn build_for(app: &AetherApp, code: &str) -> Children {
    build::build(
        app,
        &release(code).0,
        &Default::default(),
        &Default::default(),
        &config(),
        None,
    )
}

fn env_of<'a>(c: &'a Container, name: &str) -> Option<&'a EnvVar> {
    c.env.iter().flatten().find(|e| e.name == name)
}

/// Native modules built on Alpine need an Alpine Node: the artifact's libc picks the
/// admin's image, and an image the app names itself wins over both.
#[test]
fn the_artifacts_libc_picks_the_node_image() {
    let (mut release, _) = release("v1");
    let image = |app: &AetherApp, release: &Validated| build::node_image(app, release, &config());
    assert_eq!(image(&app(), &release), "node:20-slim");
    release.libc = aether_crds::Libc::Musl;
    assert_eq!(image(&app(), &release), "node:20-alpine");
    let mut own = app();
    own.spec.runtime =
        Some(serde_json::from_value(serde_json::json!({"image": "registry.example/node:20"})).unwrap());
    assert_eq!(image(&own, &release), "registry.example/node:20");
}

#[test]
fn validate_refuses_what_must_not_run_and_says_why() {
    let app = app();
    let k = key();
    let trusted = trusting(&k);

    let missing = validate(&app, None, &trusted, &Floor::default()).unwrap_err();
    assert_eq!(missing.reason, "ArtifactNotFound");
    assert!(missing.message.contains("web-0123456789ab") && !missing.waiting);

    // An app applied before its port was reserved for the runtime cannot start there.
    let mut on_health_port = app.clone();
    on_health_port.spec.port = 39128;
    let reserved = validate(
        &on_health_port,
        Some(&artifact("web", "v1", Some(&k))),
        &trusted,
        &Floor::default(),
    )
    .unwrap_err();
    assert_eq!(reserved.reason, "ReservedPort");
    assert!(reserved.message.contains("39128") && !reserved.waiting);

    let other = validate(
        &app,
        Some(&artifact("api", "v1", Some(&k))),
        &trusted,
        &Floor::default(),
    )
    .unwrap_err();
    assert_eq!(other.reason, "ArtifactOfAnotherApp");

    let mut uploading = artifact("web", "v1", Some(&k));
    uploading.status.as_mut().unwrap().conditions[0] = Condition {
        status: "False".into(),
        reason: "AwaitingUpload".into(),
        ..uploading.status.as_ref().unwrap().conditions[0].clone()
    };
    let waiting = validate(&app, Some(&uploading), &trusted, &Floor::default()).unwrap_err();
    assert_eq!((waiting.reason, waiting.waiting), ("AwaitingArtifact", true));

    // Refused while the namespace was not enabled: validated now, it is (apps are
    // validated only where it is), so the app waits for the artifact's second look.
    let mut refused = uploading.clone();
    refused.status.as_mut().unwrap().conditions[0].reason = "NamespaceNotEnabled".into();
    let waiting = validate(&app, Some(&refused), &trusted, &Floor::default()).unwrap_err();
    assert_eq!((waiting.reason, waiting.waiting), ("AwaitingArtifact", true));
    let mut quota = uploading.clone();
    quota.status.as_mut().unwrap().conditions[0].reason = "QuotaExceeded".into();
    let failed = validate(&app, Some(&quota), &trusted, &Floor::default()).unwrap_err();
    assert_eq!((failed.reason, failed.waiting), ("ArtifactFailed", false));

    let unsigned = validate(
        &app,
        Some(&artifact("web", "v1", None)),
        &trusted,
        &Floor::default(),
    )
    .unwrap_err();
    assert_eq!(unsigned.reason, "ArtifactUnsigned");
    assert!(unsigned.message.contains("Enforce"), "{}", unsigned.message);

    // Signed by a key nobody trusts: the message says where trusted keys come from.
    let stranger = validate(
        &app,
        Some(&artifact("web", "v1", Some(&key()))),
        &trusted,
        &Floor::default(),
    )
    .unwrap_err();
    assert_eq!(stranger.reason, "SignatureRejected");
    assert!(
        stranger.message.contains("aether-trusted-keys"),
        "{}",
        stranger.message
    );
    let none = validate(
        &app,
        Some(&artifact("web", "v1", Some(&k))),
        &TrustedKeys::default(),
        &Floor::default(),
    )
    .unwrap_err();
    assert!(none.message.contains("no trusted keys"), "{}", none.message);

    // Warn runs it anyway (the controller emits a Warning event); a good signature verifies.
    let mut warn = app.clone();
    warn.spec.verify.mode = VerifyMode::Warn;
    let v = validate(
        &warn,
        Some(&artifact("web", "v1", None)),
        &trusted,
        &Floor::default(),
    )
    .unwrap();
    assert!(matches!(v.verdict, Verdict::Unverified(_)));
    let v = validate(
        &app,
        Some(&artifact("web", "v1", Some(&k))),
        &trusted,
        &Floor::default(),
    )
    .unwrap();
    assert_eq!(
        v.verdict,
        Verdict::Verified {
            key_id: k.public_key().key_id()
        }
    );
    assert_eq!(
        Manifest::from_json(v.manifest_json.as_bytes()).unwrap().digest(),
        v.digest
    );
}

#[test]
fn build_makes_a_restricted_deployment_that_fetches_then_supervises() {
    let app = app();
    let (release, _) = release("v1");
    let urls = [(
        "sha256-abc".to_string(),
        "http://s3/b/ns/team-a/blobs/sha256/abc?X-Amz-Signature=1".to_string(),
    )]
    .into();
    let c = build::build(&app, &release, &urls, &Default::default(), &config(), None);

    // Every child: named after the app, the app's labels, owned by the app. The
    // ServiceAccount's name is one no app can have and no binding names by accident.
    for (meta, name) in [
        (&c.deployment.metadata, "web"),
        (&c.service.metadata, "web"),
        (&c.service_account.metadata, "aether.web"),
        (&c.downloads.metadata, "aether.web.fetch"),
    ] {
        assert_eq!(meta.name.as_deref(), Some(name));
        assert_eq!(meta.namespace.as_deref(), Some("team-a"));
        assert_eq!(
            meta.labels.as_ref().unwrap()["app.kubernetes.io/managed-by"],
            "aether-operator"
        );
        let owner = &meta.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.controller), ("AetherApp", Some(true)));
    }
    // The fetch Secret holds the download URLs, and nothing else.
    let data = c.downloads.data.as_ref().unwrap();
    assert_eq!(data.len(), 1);
    assert!(String::from_utf8_lossy(&data["sha256-abc"].0).starts_with("http://s3/b/ns/team-a/"));
    assert_eq!(c.service_account.automount_service_account_token, Some(false));
    let pod = c
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("aether.web"));
    // The operator's watch of the apps' pods selects them.
    let pod_labels = c
        .deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    for term in build::PODS_SELECTOR.split(',') {
        match term.split_once('=') {
            Some((key, value)) => assert_eq!(pod_labels.get(key).map(String::as_str), Some(value), "{term}"),
            None => assert_eq!(pod_labels.get(term).map(String::as_str), Some("web"), "{term}"),
        }
    }

    let spec = c.deployment.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let rolling = spec.strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
    assert_eq!(
        serde_json::to_value(rolling).unwrap(),
        serde_json::json!({"maxSurge": 1, "maxUnavailable": 0}),
        "old pods serve until new ones are Ready"
    );
    let template = &spec.template;
    let annotations = template.metadata.as_ref().unwrap().annotations.as_ref().unwrap();
    assert_eq!(annotations[build::DIGEST_ANNOTATION], release.digest.to_string());
    let pod = template.spec.as_ref().unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!((psc.run_as_non_root, psc.run_as_user), (Some(true), Some(10001)));
    assert_eq!(psc.seccomp_profile.as_ref().unwrap().type_, "RuntimeDefault");
    // No connection of the pod takes the runtime's ports as its source port.
    let sysctls = psc.sysctls.as_ref().unwrap();
    assert_eq!(
        (sysctls[0].name.as_str(), sysctls[0].value.as_str()),
        ("net.ipv4.ip_local_reserved_ports", "39127,39128")
    );

    // The fetch container runs first, beside the app: the kubelet starts both in one
    // pass (the app's `supervise --code` waits for the verified tree), after the
    // fetch container's hook installed the runtime the app container runs.
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["fetch", "app"]);
    assert_eq!(pod.init_containers, None);
    assert_eq!(
        annotations["kubectl.kubernetes.io/default-container"], "app",
        "kubectl logs without -c shows the app"
    );
    let fetch = &pod.containers[0];
    assert_eq!(fetch.image.as_deref(), Some("registry.example/aether-runtime:1"));
    assert_eq!(
        fetch.args.as_ref().unwrap().last().map(String::as_str),
        Some("--sidecar")
    );
    let hook = fetch.lifecycle.as_ref().unwrap().post_start.as_ref().unwrap();
    assert_eq!(
        hook.exec.as_ref().unwrap().command.as_ref().unwrap(),
        &["/usr/local/bin/aether-runtime", "install", "--into", "/aether"]
    );
    assert_eq!(
        env_of(fetch, "AETHER_ARTIFACT_DIGEST").unwrap().value.as_deref(),
        Some(release.digest.to_string().as_str())
    );
    let manifest = env_of(fetch, "AETHER_MANIFEST").unwrap().value.clone().unwrap();
    assert_eq!(
        Manifest::from_json(manifest.as_bytes()).unwrap().digest(),
        release.digest
    );
    assert!(env_of(fetch, "AETHER_SIGNATURE").is_some());
    assert!(
        env_of(fetch, "AETHER_TRUSTED_KEYS")
            .unwrap()
            .value
            .as_ref()
            .unwrap()
            .contains("PUBLIC KEY")
    );
    // No storage credential anywhere in the pod: the fetch container reads download
    // URLs from the mounted fetch Secret (renewed in place, so a pod rescheduled days
    // later still starts); the app container does not mount it.
    let template_text = serde_json::to_string(template).unwrap();
    assert!(!template_text.contains("X-Amz-Signature"), "{template_text}");
    assert!(!template_text.contains("AWS_"), "{template_text}");
    let volume = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "downloads")
        .unwrap();
    assert_eq!(
        volume.secret.as_ref().unwrap().secret_name.as_deref(),
        Some("aether.web.fetch")
    );
    let mounts =
        |c: &Container| -> Vec<String> { c.volume_mounts.iter().flatten().map(|m| m.name.clone()).collect() };
    assert!(mounts(fetch).contains(&"downloads".to_string()));
    assert!(!mounts(&pod.containers[1]).contains(&"downloads".to_string()));
    assert_eq!(
        env_of(fetch, "AETHER_DOWNLOADS_DIR").unwrap().value.as_deref(),
        Some("/var/run/aether/downloads")
    );
    // The unpacker's cap, the in-memory volume and the fetch container's memory agree.
    let cap = build::unpacked_limit(200);
    assert_eq!(cap, 256 << 20, "small artifacts get the floor");
    assert_eq!(
        env_of(fetch, "AETHER_MAX_UNPACKED_BYTES")
            .unwrap()
            .value
            .as_deref(),
        Some(cap.to_string().as_str())
    );
    let volume = |name: &str| pod.volumes.iter().flatten().find(|v| v.name == name).unwrap();
    let tmpfs = volume("aether").empty_dir.clone().unwrap();
    assert_eq!(tmpfs.medium.as_deref(), Some("Memory"));
    let tmpfs_bytes: u64 = tmpfs.size_limit.unwrap().0.parse().unwrap();
    assert!(tmpfs_bytes > cap);
    let memory: u64 = fetch.resources.as_ref().unwrap().limits.as_ref().unwrap()["memory"]
        .0
        .parse()
        .unwrap();
    assert!(
        memory > tmpfs_bytes,
        "extraction fills tmpfs, charged to the fetch container"
    );
    let spool = volume("spool").empty_dir.clone().unwrap();
    assert_eq!(spool.medium, None, "layers spool to disk, not memory");
    assert_eq!(build::unpacked_limit(1 << 30), 4 << 30, "at most 4 GiB");
    assert_eq!(build::unpacked_limit(20 << 20), 640 << 20);

    let main = &pod.containers[1];
    assert_eq!(main.image.as_deref(), Some("node:20-slim"));
    assert_eq!(
        main.command.as_ref().unwrap(),
        &[
            "/aether/bin/aether-runtime",
            "supervise",
            "--code",
            "/aether",
            "--workdir",
            "/aether/app",
            "--health-port",
            "39128",
            "--check-port",
            "8080",
            "--start-seconds",
            "420",
            "--ready-timeout-seconds",
            "10",
            "--check-path",
            "/healthz",
            "--",
            "node",
            "server.js"
        ]
    );
    assert_eq!(
        main.working_dir.as_deref(),
        Some("/aether"),
        "there before the code"
    );
    assert_eq!(env_of(main, "PORT").unwrap().value.as_deref(), Some("8080"));
    // The app's own NODE_ENV wins over the default, once (apply needs unique names).
    let node_env: Vec<_> = main
        .env
        .iter()
        .flatten()
        .filter(|e| e.name == "NODE_ENV")
        .collect();
    assert_eq!(node_env.len(), 1);
    assert_eq!(node_env[0].value.as_deref(), Some("staging"));
    // The kubelet probes the app through the runtime, which checks the health path
    // above; no startup probe holds readiness back to its ticks.
    assert!(main.startup_probe.is_none());
    for (probe, path) in [(&main.readiness_probe, "/ready"), (&main.liveness_probe, "/live")] {
        let probe = probe.as_ref().unwrap();
        let get = probe.http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(get.port, IntOrString::Int(39128));
    }
    assert_eq!(main.readiness_probe.as_ref().unwrap().timeout_seconds, Some(10));
    for container in [fetch, main] {
        let sc = container.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.capabilities.as_ref().unwrap().drop.as_ref().unwrap(), &["ALL"]);
    }
    let port = &c.service.spec.as_ref().unwrap().ports.as_ref().unwrap()[0];
    assert_eq!(port.port, 80);
}

#[test]
fn the_pod_template_changes_exactly_when_a_rollout_is_due() {
    let app = app();
    let (release, _) = release("v1");
    let one = build::build(
        &app,
        &release,
        &Default::default(),
        &Default::default(),
        &config(),
        None,
    );
    let again = build::build(
        &app,
        &release,
        &Default::default(),
        &Default::default(),
        &config(),
        None,
    );
    assert_eq!(
        one, again,
        "same inputs, same objects: a restarted operator rolls nothing"
    );
    // Renewed download URLs change the Secret, never the template.
    let renewed = build::build(
        &app,
        &release,
        &[("sha256-x".to_string(), "http://s3/new".to_string())].into(),
        &Default::default(),
        &config(),
        None,
    );
    assert_ne!(one.downloads, renewed.downloads);
    assert_eq!(one.deployment, renewed.deployment);

    let template =
        |c: &Children| serde_json::to_value(&c.deployment.spec.as_ref().unwrap().template).unwrap();
    let code_change = build_for(&app, "v2");
    assert_ne!(template(&one), template(&code_change), "a new artifact rolls");

    let mut scaled = app.clone();
    scaled.spec.replicas = 5;
    assert_eq!(
        template(&one),
        template(&build_for_release(&scaled, &release)),
        "scaling does not roll"
    );

    let mut configured = app.clone();
    configured.spec.env[0].value = Some("bonjour".into());
    assert_ne!(
        template(&one),
        template(&build_for_release(&configured, &release)),
        "env changes roll"
    );

    // A new version of a Secret or ConfigMap the environment reads rolls, and the
    // operator knows which ones those are.
    let versions = |v: &str| [("secret/web-config".to_string(), v.to_string())].into();
    let build_with =
        |v: &str| build::build(&app, &release, &Default::default(), &versions(v), &config(), None);
    assert_ne!(template(&build_with("1")), template(&one));
    assert_ne!(
        template(&build_with("1")),
        template(&build_with("2")),
        "an edited Secret rolls"
    );
    assert_eq!(template(&build_with("2")), template(&build_with("2")));
    let mut reading = app.clone();
    reading.spec.env_from = serde_json::from_value(serde_json::json!([
        {"secretRef": {"name": "web-config"}}, {"configMapRef": {"name": "flags"}}
    ]))
    .unwrap();
    reading.spec.env.push(
        serde_json::from_value(serde_json::json!(
            {"name": "DB", "valueFrom": {"secretKeyRef": {"name": "db", "key": "url"}}}
        ))
        .unwrap(),
    );
    let sources: Vec<(&str, String)> = build::config_sources(&reading).into_iter().collect();
    assert_eq!(
        sources,
        [
            ("configmap", "flags".into()),
            ("secret", "db".into()),
            ("secret", "web-config".into())
        ]
    );

    // Without a health path, the runtime only checks that the port accepts connections.
    let mut bare = app.clone();
    bare.spec.health_check = None;
    let c = build_for_release(&bare, &release);
    let command = c.deployment.spec.unwrap().template.spec.unwrap().containers[1]
        .command
        .clone()
        .unwrap();
    assert!(command.contains(&"--check-port".to_string()));
    assert!(!command.contains(&"--check-path".to_string()));
}

fn build_for_release(app: &AetherApp, release: &Validated) -> Children {
    build::build(
        app,
        release,
        &Default::default(),
        &Default::default(),
        &config(),
        None,
    )
}

fn pods(digest: &Digest) -> Vec<Pod> {
    pods_of("pods-init-failed.yaml", digest)
}

fn pods_of(fixture: &str, digest: &Digest) -> Vec<Pod> {
    let path = format!("{}/tests/fixtures/{fixture}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("${DIGEST}", &digest.to_string());
    let list: serde_json::Value = serde_yaml::from_str(&text).unwrap();
    serde_json::from_value(list["items"].clone()).unwrap()
}

#[test]
fn a_locked_entrypoint_reaches_the_runtime_and_the_app_cannot_unset_it() {
    let mut app = app();
    app.spec.env.push(EnvVar {
        name: "AETHER_ENTRYPOINT_LOCKED".into(),
        value: Some("false".into()),
        ..Default::default()
    });
    let (mut release, _) = release("v1");
    let locked = |release: &Validated| {
        let c = build::build(
            &app,
            release,
            &Default::default(),
            &Default::default(),
            &config(),
            None,
        );
        let pod = c.deployment.spec.unwrap().template.spec.unwrap();
        let vars: Vec<_> = pod.containers[1]
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == "AETHER_ENTRYPOINT_LOCKED")
            .map(|e| e.value.clone().unwrap_or_default())
            .collect();
        vars
    };
    assert!(locked(&release).is_empty(), "the app's own value is dropped");
    release.entrypoint_locked = true;
    assert_eq!(locked(&release), ["true"]);
}

#[test]
fn only_pods_stuck_on_since_repaired_bytes_are_replaced() {
    let (release, _) = release("v1");
    let pods = pods(&release.digest);
    let digest = release.digest.to_string();
    let at = |s: &str| -> Timestamp { s.parse().unwrap() };
    assert!(status::stale_fetch_failures(&pods, &digest, None).is_empty());
    assert!(
        status::stale_fetch_failures(&pods, &digest, Some(at("2026-11-28T09:00:00Z"))).is_empty(),
        "verified before the failure: the failure stands"
    );
    // Repaired after: only the pod still backing off, never one that runs.
    assert_eq!(
        status::stale_fetch_failures(&pods, &digest, Some(at("2026-11-28T11:00:00Z"))),
        vec!["web-7d9f-new".to_string()]
    );
    // A pod no ReplicaSet controls is left alone.
    let mut orphan = pods.clone();
    orphan[0].metadata.owner_references = None;
    assert!(status::stale_fetch_failures(&orphan, &digest, Some(at("2026-11-28T11:00:00Z"))).is_empty());
}

#[test]
fn a_fetch_beside_the_app_fails_the_rollout_only_until_the_app_starts() {
    let (release, _) = release("v1");
    let digest = release.digest.to_string();
    let rolling: Deployment = fixture("deployment-rolling.yaml");
    let at = |s: &str| -> Timestamp { s.parse().unwrap() };
    let pods = pods_of("pods-fetch-beside.yaml", &release.digest);
    let (waiting, serving, crashing, pulling) = (&pods[..1], &pods[1..2], &pods[2..3], &pods[3..]);
    assert!(matches!(
        status::rollout(&rolling, waiting, &digest),
        Rollout::Failed { ref reason, ref message } if reason == "DigestMismatch" && message.contains("web-7d9f-waiting")
    ));
    // Its earlier failure stays in lastState while it runs on: not a failure.
    assert!(matches!(
        status::rollout(&rolling, serving, &digest),
        Rollout::Progressing { .. }
    ));
    // Its app crashing later is the app's failure, not that old one.
    assert!(matches!(
        status::rollout(&rolling, crashing, &digest),
        Rollout::Failed { ref reason, ref message } if reason == "AppCrashing" && message.contains("TypeError")
    ));
    // Its image still pulling: the app container, started anyway, fails for want of
    // the runtime, which is not the release failing.
    assert!(matches!(
        status::rollout(&rolling, pulling, &digest),
        Rollout::Progressing { .. }
    ));
    // Running pods still waiting on a since-repaired blob are replaced; serving ones not.
    assert_eq!(
        status::stale_fetch_failures(&pods, &digest, Some(at("2026-11-28T11:00:00Z"))),
        vec!["web-7d9f-waiting".to_string()]
    );
}

fn observe<'a>(deployment: &'a Deployment, pods: &[Pod], applied_at: Timestamp) -> Observed<'a> {
    let digest = release("v1").0.digest.to_string();
    Observed {
        deployment,
        rollout: status::rollout(deployment, pods, &digest),
        url: Some("http://10.96.0.20".into()),
        selector: build::selector_string("web"),
        began_at: applied_at.checked_sub(SignedDuration::from_millis(40)).unwrap(),
        applied_at,
    }
}

fn condition<'a>(s: &'a AetherAppStatus, type_: &str) -> &'a Condition {
    s.conditions.iter().find(|c| c.type_ == type_).unwrap()
}

#[test]
fn status_follows_the_rollout_and_reports_init_failures() {
    let (release, _) = release("v1");
    let digest = release.digest.to_string();
    let rolling: Deployment = fixture("deployment-rolling.yaml");
    let complete: Deployment = fixture("deployment-complete.yaml");
    let t0 = Timestamp::now();
    let later = |ms: i64| t0.checked_add(SignedDuration::from_millis(ms)).unwrap();
    let (rolling, complete, no_pods) = (&rolling, &complete, &[][..]);

    let s1 = status::applied(
        &AetherAppStatus::default(),
        Some(3),
        &release,
        &observe(rolling, no_pods, t0),
        t0,
    );
    assert_eq!(condition(&s1, READY).status, "False");
    assert_eq!(condition(&s1, RECONCILING).status, "True");
    assert_eq!(s1.artifact.as_ref().unwrap().name, "web-0123456789ab");
    assert_eq!(
        s1.selector.as_deref(),
        Some("app.kubernetes.io/instance=web,app.kubernetes.io/name=web")
    );
    assert_eq!(s1.last_deploy.as_ref().unwrap().ready_after_milliseconds, None);

    let s2 = status::applied(
        &s1,
        Some(3),
        &release,
        &observe(complete, no_pods, later(500)),
        later(1800),
    );
    assert_eq!(condition(&s2, READY).status, "True");
    assert_eq!(condition(&s2, STALLED).status, "False");
    let timings = s2.last_deploy.as_ref().unwrap();
    assert_eq!(
        timings.applied_after_milliseconds,
        Some(40),
        "reconcile start → applied, kept from the first apply"
    );
    assert_eq!(timings.ready_after_milliseconds, Some(1840));
    assert_eq!(s2.history.len(), 1);
    assert_eq!(
        (s2.ready_replicas, s2.url.as_deref()),
        (2, Some("http://10.96.0.20"))
    );
    // Re-observing the same release adds no history.
    let s3 = status::applied(
        &s2,
        Some(3),
        &release,
        &observe(complete, no_pods, later(9000)),
        later(9000),
    );
    assert_eq!(s3.history.len(), 1);
    assert_eq!(s3.last_deploy, s2.last_deploy);

    // The new release's init container failed: Stalled with the runtime's reason.
    let failing = &pods(&release.digest)[..];
    assert!(matches!(
        status::rollout(rolling, failing, &digest),
        Rollout::Failed { ref reason, .. } if reason == "DigestMismatch"
    ));
    let s4 = status::applied(
        &s3,
        Some(4),
        &release,
        &observe(rolling, failing, later(10)),
        later(10),
    );
    let stalled = condition(&s4, STALLED);
    assert_eq!(
        (stalled.status.as_str(), stalled.reason.as_str()),
        ("True", "DigestMismatch")
    );
    assert!(stalled.message.contains("web-7d9f-new"), "{}", stalled.message);
    assert!(
        stalled.message.contains("web-0123456789ab keeps serving"),
        "{}",
        stalled.message
    );
    // A failure of another release's pods is not this release's.
    let other = status::rollout(rolling, failing, &Digest::of(b"other").to_string());
    assert!(matches!(other, Rollout::Progressing { .. }));
}

#[test]
fn only_public_keys_reach_the_pod_never_the_text_around_them() {
    use aether_operator::app::validate::trusted_keys_from;
    let signer = key();
    let public = signer.public_key().to_pem();
    let noisy = format!("db-password=hunter2\n{public}\ntrailing note\n");
    let trusted = trusted_keys_from("ConfigMap t/keys".into(), &[noisy]).unwrap();
    assert_eq!(trusted.keys.len(), 1);
    assert_eq!(trusted.pem, public, "the keys, re-encoded");
    assert!(!trusted.pem.contains("hunter2"));

    // A private key is not a trusted key, and its text is not repeated back.
    let private = SigningKey::generate_pem().unwrap();
    let refused = trusted_keys_from("ConfigMap t/keys".into(), std::slice::from_ref(&private)).unwrap_err();
    assert_eq!(refused.reason, "InvalidTrustedKeys");
    let body: String = private.lines().filter(|l| !l.starts_with("-----")).collect();
    assert!(!refused.message.contains(&body), "{}", refused.message);
    // Nor is any text of a block that is not a key (a header line, a label).
    let labelled = "-----BEGIN DB PASSWORD-----\nc2VjcmV0LXZhbHVl\n-----END DB PASSWORD-----\n";
    let refused = trusted_keys_from("ConfigMap t/keys".into(), &[labelled.into()]).unwrap_err();
    assert!(!refused.message.contains("PASSWORD"), "{}", refused.message);
}

#[test]
fn a_dev_hot_app_rolls_for_a_push_but_not_for_code_its_pods_already_run() {
    use aether_crds::pod::HOT_SWAPPED_ANNOTATION;
    use aether_operator::app::hot;
    use kube::ResourceExt;

    let mut app = app();
    app.spec.dev_hot = true;
    let k = key();
    let named = |code: &str| {
        let art = artifact("web", code, Some(&k));
        let mut v = validate(&app, Some(&art), &trusting(&k), &Floor::default()).unwrap();
        v.artifact = format!("web-{code}");
        v
    };
    let (v1, v2) = (named("v1"), named("v2"));
    let template =
        |c: &Children| serde_json::to_value(&c.deployment.spec.as_ref().unwrap().template).unwrap();
    let first = build_for_release(&app, &hot::template_release(&app, &v1, None));
    let running = Some(&first.deployment);

    // `aether push` of new code: the pods roll, as for any app.
    let pushed = build_for_release(&app, &hot::template_release(&app, &v2, running));
    assert_ne!(template(&first), template(&pushed), "a push rolls");

    // `aether dev` swapped v2 into the pods and recorded it: nothing rolls, and a
    // pod created now fetches v2, which the Secret names.
    let mut swapped = app.clone();
    swapped
        .annotations_mut()
        .insert(HOT_SWAPPED_ANNOTATION.into(), "web-v2".into());
    let kept = hot::template_release(&swapped, &v2, running);
    assert_eq!(kept.artifact, "web-v1");
    assert_eq!(template(&first), template(&build_for_release(&swapped, &kept)));
    let entry = hot::release_entry(&swapped, &v2).unwrap();
    let named: aether_artifact::hot::Release = serde_json::from_str(&entry).unwrap();
    assert_eq!(
        named.digest,
        v2.digest.to_string(),
        "the runtime reads what the operator wrote"
    );
    assert_eq!(hot::release_layers(&entry), v2.layers);
    let policy = |r| -> aether_artifact::hot::HotPolicy {
        serde_json::from_str(&hot::policy_entry(&swapped, r).unwrap()).unwrap()
    };
    assert!(policy(Some(&v2)).enabled && policy(Some(&v2)).mode.as_deref() == Some("enforce"));
    assert!(!policy(None).enabled, "an invalid app's pods take no update");
    assert_eq!(hot::release_entry(&self::app(), &v2), None, "only dev-hot apps");

    // New dependencies cannot be swapped in: the pods roll even when marked swapped.
    let mut new_deps = v2.clone();
    new_deps.base_key = "another base".into();
    let rolled = hot::template_release(&swapped, &new_deps, running);
    assert_eq!(rolled.artifact, "web-v2");

    // The pod: no API token; the fetch container reads the release from the Secret;
    // the app container's runtime takes updates, checks them like fetch, and may
    // replace the code in the volume.
    let pod = first.deployment.spec.unwrap().template.spec.unwrap();
    assert_eq!(pod.automount_service_account_token, Some(false));
    let fetch = &pod.init_containers.as_ref().unwrap()[0];
    assert!(env_of(fetch, "AETHER_MANIFEST").is_none());
    // An init container, whose termination message names the code the pod started on.
    assert_eq!(pod.containers.len(), 1);
    let main = &pod.containers[0];
    assert_eq!(
        env_of(main, "AETHER_DEV_HOT").unwrap().value.as_deref(),
        Some("true")
    );
    assert_eq!(
        env_of(main, "AETHER_VERIFY_MODE").unwrap().value.as_deref(),
        Some("enforce")
    );
    assert!(env_of(main, "AETHER_TRUSTED_KEYS").is_some());
    let volume = main
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == "aether")
        .unwrap();
    assert_eq!(volume.read_only, Some(false));
}

#[test]
fn an_app_cannot_set_the_runtime_s_variables() {
    let mut app = app();
    app.spec.env.push(
        serde_json::from_value(serde_json::json!({"name": "AETHER_DEV_HOT", "value": "true"})).unwrap(),
    );
    app.spec.env.push(
        serde_json::from_value(serde_json::json!({"name": "AETHER_VERIFY_MODE", "value": "off"})).unwrap(),
    );
    let c = build_for(&app, "v1");
    let main = &c.deployment.spec.unwrap().template.spec.unwrap().containers[1];
    let values = |name: &str| {
        main.env
            .iter()
            .flatten()
            .filter(|e| e.name == name)
            .map(|e| e.value.clone().unwrap_or_default())
            .collect::<Vec<_>>()
    };
    // Set explicitly, so an envFrom ConfigMap cannot switch it on either.
    assert_eq!(values("AETHER_DEV_HOT"), ["false"]);
    assert!(values("AETHER_VERIFY_MODE").is_empty());
}

#[test]
fn autoscaling_makes_an_autoscaler_of_the_app_s_deployment() {
    let mut app = app();
    assert!(build::autoscaler(&app).is_none(), "none unless asked for");
    app.spec.autoscaling =
        serde_json::from_value(serde_json::json!({"minReplicas": 2, "maxReplicas": 5})).unwrap();
    let hpa = build::autoscaler(&app).unwrap();
    let spec = hpa.spec.unwrap();
    assert_eq!(spec.scale_target_ref.kind, "Deployment");
    assert_eq!(spec.scale_target_ref.api_version.as_deref(), Some("apps/v1"));
    assert_eq!(spec.scale_target_ref.name, app.metadata.name.clone().unwrap());
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(2), 5));
    let cpu = &spec.metrics.unwrap()[0];
    let cpu = cpu.container_resource.as_ref().unwrap();
    assert_eq!(cpu.target.average_utilization, Some(80), "the default target");
    assert_eq!(cpu.container, "app", "not diluted by the idle fetch container");
    assert_eq!(hpa.metadata.owner_references.unwrap()[0].kind, "AetherApp");
}

/// The app's Deployment as the API returns it: `replicas`, written last by `manager`.
fn deployment_scaled_by(replicas: i32, manager: &str) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web", "managedFields": [
            {"manager": "aether-operator", "operation": "Apply", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:template": {}, "f:selector": {}}}},
            {"manager": manager, "operation": "Update", "subresource": "scale", "fieldsType": "FieldsV1",
             "fieldsV1": {"f:spec": {"f:replicas": {}}}},
        ]},
        "spec": {"replicas": replicas, "selector": {}, "template": {}},
    }))
    .unwrap()
}

#[test]
fn an_autoscaled_deployment_s_count_is_the_autoscaler_s_and_spec_replicas_is_not_read() {
    let mut app = app();
    app.spec.replicas = 1; // as kept in Git
    let ours = |replicas: i32| {
        let mut d = deployment_scaled_by(replicas, "aether-operator");
        d.metadata.managed_fields.as_mut().unwrap().truncate(1);
        d.metadata.managed_fields.as_mut().unwrap()[0]
            .fields_v1
            .as_mut()
            .unwrap()
            .0["f:spec"]["f:replicas"] = serde_json::json!({});
        d
    };
    assert_eq!(
        build::replicas(&app, None),
        Some(1),
        "without autoscaling: spec.replicas"
    );
    assert_eq!(build::replicas(&app, Some(&ours(4))), Some(1));

    app.spec.autoscaling =
        serde_json::from_value(serde_json::json!({"minReplicas": 2, "maxReplicas": 5})).unwrap();
    assert_eq!(
        build::replicas(&app, None),
        Some(2),
        "a new Deployment starts within the bounds"
    );
    assert_eq!(
        build::replicas(&app, Some(&ours(4))),
        Some(4),
        "the count found is kept while the operator alone owns it"
    );
    assert_eq!(
        build::replicas(&app, Some(&ours(9))),
        Some(5),
        "brought within the bounds"
    );
    let scaled = deployment_scaled_by(3, "kube-controller-manager");
    assert_eq!(
        build::replicas(&app, Some(&scaled)),
        None,
        "once the autoscaler wrote it, the field is its own"
    );
    assert_eq!(
        build::replicas(&app, Some(&deployment_scaled_by(0, "kubectl"))),
        Some(2),
        "a count out of the bounds is brought back within them"
    );
    let build_on = |running: &Deployment| {
        build::build(
            &app,
            &release("v1").0,
            &Default::default(),
            &Default::default(),
            &config(),
            Some(running),
        )
    };
    let applied = serde_json::to_value(&build_on(&scaled).deployment).unwrap();
    assert!(
        applied["spec"].get("replicas").is_none(),
        "left out of the applied Deployment: {}",
        applied["spec"]
    );
    assert!(
        applied["metadata"].get("resourceVersion").is_none(),
        "nothing to guard"
    );
    let mut held = ours(2);
    held.metadata.resource_version = Some("41".into());
    assert_eq!(
        build_on(&held).deployment.metadata.resource_version.as_deref(),
        Some("41"),
        "the count the operator still holds is written onto the version read"
    );

    app.spec.autoscaling = None;
    assert_eq!(
        build::replicas(&app, Some(&scaled)),
        Some(1),
        "without autoscaling the operator takes the count back"
    );
}

#[test]
fn pods_kept_slim_are_judged_alike_and_pods_on_their_way_out_fail_nothing() {
    use kube::ResourceExt;
    let (release, _) = release("v1");
    let digest = release.digest.to_string();
    let rolling: Deployment = fixture("deployment-rolling.yaml");
    let at = |s: &str| -> Timestamp { s.parse().unwrap() };
    let full = [
        pods(&release.digest),
        pods_of("pods-fetch-beside.yaml", &release.digest),
    ]
    .concat();
    let mut slim = full.clone();
    for pod in &mut slim {
        // What a tenant's pod may carry besides: none of it is kept.
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert("x".into(), "y".repeat(200_000));
        if let Some(statuses) = pod.status.as_mut().and_then(|s| s.container_statuses.as_mut())
            && let Some(first) = statuses.first().cloned()
        {
            statuses.push(ContainerStatus {
                name: "sidecar".into(),
                ..first
            });
        }
        status::slim_pod(pod);
        assert!(pod.spec.is_none());
        assert!(!pod.annotations().contains_key("x"));
        assert!(
            serde_json::to_vec(pod).unwrap().len() < 16 * 1024,
            "{}",
            pod.name_any()
        );
        assert!(
            pod.status
                .iter()
                .flat_map(|s| s.container_statuses.iter().flatten())
                .all(|c| c.name != "sidecar")
        );
    }
    for (full, slim) in full.iter().zip(&slim) {
        let one = |p: &Pod| status::rollout(&rolling, std::slice::from_ref(p), &digest);
        assert_eq!(one(full), one(slim), "{}", full.name_any());
    }
    let repaired = Some(at("2026-11-28T11:00:00Z"));
    assert_eq!(
        status::stale_fetch_failures(&full, &digest, repaired),
        status::stale_fetch_failures(&slim, &digest, repaired)
    );
    // A failed pod being deleted (a scale-down stops its fetch) or evicted says
    // nothing about the release.
    let failing: Vec<Pod> = slim
        .iter()
        .filter(|p| status::pod_failure(p).is_some())
        .cloned()
        .collect();
    assert!(!failing.is_empty());
    for mut pod in failing {
        pod.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(at(
            "2026-11-28T12:00:00Z",
        )));
        assert!(status::pod_failure(&pod).is_none());
        assert!(status::stale_fetch_failures(std::slice::from_ref(&pod), &digest, repaired).is_empty());
        pod.metadata.deletion_timestamp = None;
        pod.status.as_mut().unwrap().phase = Some("Failed".into());
        assert!(status::pod_failure(&pod).is_none(), "evicted");
    }
}

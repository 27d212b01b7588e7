//! Spine I: the cluster, the CRDs and the storage work as a user needs them to.
//! Run with `make e2e` (a cluster in KUBECONFIG, storage in AETHER_S3_*).

use std::time::Duration;

use aether_crds::{
    AetherApp, AetherAppSpec, AetherArtifact, AetherArtifactSpec, Layer, LayerName, Libc, Platform, Runtime,
};
use aether_e2e::{Settings, http, pods, wait_for, wait_until, with_temp_ns};
use anyhow::{Context as _, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{EnvVar, Event, Pod, Service, ServicePort, ServiceSpec};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::conditions;

fn digest(fill: char) -> String {
    format!("sha256:{}", fill.to_string().repeat(64))
}

fn artifact(name: &str, app: &str) -> AetherArtifact {
    AetherArtifact::new(
        name,
        AetherArtifactSpec {
            app: app.into(),
            digest: digest('a'),
            layers: vec![
                Layer {
                    name: LayerName::Deps,
                    digest: digest('b'),
                    size: 1000,
                    media_type: "application/vnd.aether.layer.v1.tar+zstd".into(),
                    entries: 10,
                    files_digest: digest('d'),
                    cache_key: Some("e".repeat(64)),
                },
                Layer {
                    name: LayerName::App,
                    digest: digest('c'),
                    size: 10,
                    media_type: "application/vnd.aether.layer.v1.tar+zstd".into(),
                    entries: 2,
                    files_digest: digest('f'),
                    cache_key: None,
                },
            ],
            runtime: Runtime {
                node_major: 20,
                platform: Platform::LinuxAmd64,
                libc: Libc::Glibc,
            },
            entrypoint: vec!["node".into(), "server.js".into()],
            workdir: None,
            sbom: None,
            signature: None,
            source: None,
        },
    )
}

fn app(name: &str, artifact: &str) -> AetherApp {
    let spec: AetherAppSpec = serde_json::from_value(serde_json::json!({
        "artifactRef": {"name": artifact}
    }))
    .expect("minimal spec with defaults");
    AetherApp::new(name, spec)
}

fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    let out = std::process::Command::new("kubectl")
        .args(args)
        .output()
        .context("running kubectl")?;
    ensure!(
        out.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
#[ignore = "needs a cluster: run `make e2e`"]
async fn crds_are_installed_and_kubectl_shows_printer_columns() -> anyhow::Result<()> {
    let client = aether_e2e::client().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client);
    for name in ["aetherapps.aether.dev", "aetherartifacts.aether.dev"] {
        wait_for(
            crds.clone(),
            name,
            "Established",
            Duration::from_secs(30),
            conditions::is_crd_established(),
        )
        .await?;
    }

    with_temp_ns("crds", |client, ns| async move {
        let pp = PostParams::default();
        Api::<AetherArtifact>::namespaced(client.clone(), &ns)
            .create(&pp, &artifact("web-aaaaaaaaaaaa", "web"))
            .await?;
        Api::<AetherApp>::namespaced(client.clone(), &ns)
            .create(&pp, &app("web", "web-aaaaaaaaaaaa"))
            .await?;

        let apps = kubectl(&["get", "aetherapps", "-n", &ns])?;
        println!("{apps}");
        let header: Vec<&str> = apps
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            [
                "NAME",
                "READY",
                "REASON",
                "ARTIFACT",
                "REPLICAS",
                "AVAILABLE",
                "AGE"
            ]
        );
        let row: Vec<&str> = apps
            .lines()
            .nth(1)
            .context("no AetherApp row")?
            .split_whitespace()
            .collect();
        assert_eq!(row[0], "web");
        assert!(
            row.contains(&"web-aaaaaaaaaaaa"),
            "artifact column missing in {row:?}"
        );
        assert!(row.contains(&"1"), "defaulted replicas (1) missing in {row:?}");

        let arts = kubectl(&["get", "aart", "-n", &ns, "-o", "wide"])?;
        println!("{arts}");
        let header: Vec<&str> = arts
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .collect();
        assert_eq!(
            header,
            ["NAME", "APP", "READY", "REASON", "NODE", "AGE", "DIGEST"]
        );
        assert!(arts.contains(&digest('a')), "wide output shows the full digest");

        // The `aether` category lists both kinds; the short name works for apps too.
        let all = kubectl(&["get", "aether", "-n", &ns, "-o", "name"])?;
        assert!(all.contains("aetherapp.aether.dev/web"), "{all}");
        assert!(
            all.contains("aetherartifact.aether.dev/web-aaaaaaaaaaaa"),
            "{all}"
        );
        kubectl(&["get", "aapp", "web", "-n", &ns])?;
        Ok(())
    })
    .await
}

/// Create `obj` and return the API server's refusal message.
async fn refused<K>(api: &Api<K>, obj: &K) -> anyhow::Result<String>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    match api.create(&PostParams::default(), obj).await {
        Ok(_) => bail!("the API server accepted an invalid object: {obj:?}"),
        Err(kube::Error::Api(status)) => {
            println!("refused: {}", status.message);
            Ok(status.message)
        }
        Err(e) => Err(e.into()),
    }
}

#[tokio::test]
#[ignore = "needs a cluster: run `make e2e`"]
async fn invalid_specs_are_refused_with_a_readable_message() -> anyhow::Result<()> {
    with_temp_ns("invalid", |client, ns| async move {
        let arts: Api<AetherArtifact> = Api::namespaced(client.clone(), &ns);
        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);

        let mut bad = artifact("bad-digest", "web");
        bad.spec.digest = "sha256:XYZ".into();
        let msg = refused(&arts, &bad).await?;
        assert!(
            msg.contains("spec.digest") && msg.contains("'sha256:' followed by 64 lowercase hexadecimal"),
            "{msg}"
        );

        let mut bad = app("negative", "web-1");
        bad.spec.replicas = -1;
        let msg = refused(&apps, &bad).await?;
        assert!(
            msg.contains("spec.replicas") && msg.contains("greater than or equal to 0"),
            "{msg}"
        );

        let mut bad = app("bigport", "web-1");
        bad.spec.port = 70000;
        let msg = refused(&apps, &bad).await?;
        assert!(
            msg.contains("spec.port") && msg.contains("less than or equal to 65535"),
            "{msg}"
        );

        let msg = refused(&apps, &app(&"a".repeat(64), "web-1")).await?;
        assert!(msg.contains("at most 63 characters"), "{msg}");

        let msg = refused(&apps, &app("Web_App", "web-1")).await?;
        assert!(
            msg.contains("must be a DNS label") || msg.contains("RFC 1123"),
            "{msg}"
        );

        let mut bad = app("hugeenv", "web-1");
        bad.spec.env = vec![EnvVar {
            name: "BIG".into(),
            value: Some("x".repeat(1 << 20)),
            ..Default::default()
        }];
        let msg = refused(&apps, &bad).await?;
        assert!(msg.contains("at most 32 KiB"), "{msg}");

        // Artifacts are immutable once created.
        arts.create(&PostParams::default(), &artifact("web-1", "web"))
            .await?;
        let patch = serde_json::json!({"spec": {"entrypoint": ["node", "evil.js"]}});
        match arts
            .patch("web-1", &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Err(kube::Error::Api(status)) => {
                println!("refused: {}", status.message);
                assert!(status.message.contains("immutable"), "{}", status.message);
            }
            other => bail!("editing an artifact's spec was not refused: {other:?}"),
        }
        Ok(())
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster: run `make e2e`"]
async fn a_node_deployment_serves_http_through_its_service() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    with_temp_ns("workload", |client, ns| async move {
        let script = "require('http').createServer((q, s) => s.end('hello from ' + require('os').hostname())).listen(8080)";
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments.create(&PostParams::default(), &pods::http_deployment(&settings, "hello", 8080, script)).await?;
        let services: Api<Service> = Api::namespaced(client.clone(), &ns);
        let svc = Service {
            metadata: ObjectMeta { name: Some("hello".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                selector: Some([("app.kubernetes.io/name".to_string(), "hello".to_string())].into()),
                ports: Some(vec![ServicePort { port: 80, target_port: Some(IntOrString::Int(8080)), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let svc = services.create(&PostParams::default(), &svc).await?;
        let ip = svc.spec.and_then(|s| s.cluster_ip).context("Service has no cluster IP")?;

        wait_for(deployments, "hello", "rollout", Duration::from_secs(120), conditions::is_deployment_completed()).await?;
        // Endpoints follow readiness; the first request may race kube-proxy's sync.
        let body = wait_until("the Service to answer HTTP", Duration::from_secs(30), || {
            let ip = ip.clone();
            async move {
                let (status, body) = http::get(&ip, 80, "/").await?;
                Ok((status == 200).then_some(body))
            }
        })
        .await?;
        println!("GET http://{ip}/ -> {body}");
        assert!(body.starts_with("hello from hello-"), "unexpected body: {body}");
        Ok(())
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster: run `make e2e`"]
async fn a_pod_reaches_the_api_server_and_kubectl_logs_shows_its_output() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    with_temp_ns("apiaccess", |client, ns| async move {
        // A SelfSubjectReview needs a valid token: it proves authentication, not just reachability.
        let script = r#"
const fs = require('fs'), https = require('https');
const dir = '/var/run/secrets/kubernetes.io/serviceaccount/';
const body = JSON.stringify({apiVersion: 'authentication.k8s.io/v1', kind: 'SelfSubjectReview'});
const req = https.request({
  host: process.env.KUBERNETES_SERVICE_HOST, port: process.env.KUBERNETES_SERVICE_PORT,
  method: 'POST', path: '/apis/authentication.k8s.io/v1/selfsubjectreviews',
  ca: fs.readFileSync(dir + 'ca.crt'),
  headers: {Authorization: 'Bearer ' + fs.readFileSync(dir + 'token', 'utf8'), 'Content-Type': 'application/json'},
}, res => {
  let data = ''; res.on('data', d => data += d);
  res.on('end', () => {
    console.log('status ' + res.statusCode + ' user ' + JSON.parse(data).status.userInfo.username);
    process.exit(res.statusCode === 201 ? 0 : 1);
  });
});
req.on('error', e => { console.error('request failed: ' + e.message); process.exit(2); });
req.end(body);
"#;
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods_api.create(&PostParams::default(), &pods::script_pod(&settings, "whoami", script, true)).await?;
        let pod = wait_for(pods_api, "whoami", "completion", Duration::from_secs(120), is_pod_finished).await?;
        let logs = kubectl(&["logs", "-n", &ns, "whoami"])?;
        println!("kubectl logs: {logs}");
        let phase = pod.status.and_then(|s| s.phase).unwrap_or_default();
        assert_eq!(phase, "Succeeded", "pod failed; its logs: {logs}");
        assert!(logs.contains(&format!("status 201 user system:serviceaccount:{ns}:default")), "{logs}");
        Ok(())
    })
    .await
}

fn is_pod_finished(pod: Option<&Pod>) -> bool {
    let phase = pod
        .and_then(|p| p.status.as_ref())
        .and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded" | "Failed"))
}

#[tokio::test]
#[ignore = "needs a cluster: run `make e2e`"]
async fn storage_answers_sigv4_requests_from_the_host_and_from_a_pod() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    with_temp_ns("storage", |client, ns| async move {
        let host = settings.storage.host();
        let (s3, bucket) = (host.client(), host.bucket().to_string());
        let key = format!("e2e/{ns}/from-host");
        let written = format!("written by the host for {ns}");
        s3.put_object()
            .bucket(&bucket)
            .key(&key)
            .checksum_algorithm(aws_sdk_s3::types::ChecksumAlgorithm::Sha256)
            .body(written.clone().into_bytes().into())
            .send()
            .await
            .context("PUT from the host")?;
        let got = s3
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .context("GET from the host")?;
        let got = got.body.collect().await?.into_bytes();
        assert_eq!(got, written.as_bytes());

        // Wrong credentials are refused: the server really checks signatures.
        let mut wrong = settings.storage.config.clone();
        wrong.access_key_id = "GK000000000000000000000000".into();
        let err = aether_storage::Storage::new(&wrong)
            .client()
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await;
        assert!(err.is_err(), "storage accepted an unknown access key");

        // From a pod: fetch what the host wrote, upload something back, both with
        // SigV4-presigned URLs addressed to the endpoint pods use.
        let presign = aws_sdk_s3::presigning::PresigningConfig::expires_in(Duration::from_secs(300))?;
        let pod_storage = settings.storage.pod();
        let pod_s3 = pod_storage.client();
        let get_url = pod_s3
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .presigned(presign.clone())
            .await?;
        let pod_key = format!("e2e/{ns}/from-pod");
        let put_url = pod_s3
            .put_object()
            .bucket(&bucket)
            .key(&pod_key)
            .presigned(presign)
            .await?;
        let script = r#"
const lib = u => require(u.startsWith('https') ? 'https' : 'http');
const fail = m => { console.error(m); process.exit(1); };
lib(process.env.GET_URL).get(process.env.GET_URL, res => {
  let got = ''; res.on('data', d => got += d);
  res.on('end', () => {
    console.log('GET ' + res.statusCode + ': ' + got);
    if (res.statusCode !== 200) fail('GET failed');
    const req = lib(process.env.PUT_URL).request(process.env.PUT_URL, {method: 'PUT'}, r => {
      console.log('PUT ' + r.statusCode); r.resume(); process.exit(r.statusCode === 200 ? 0 : 1);
    });
    req.on('error', e => fail('PUT failed: ' + e.message));
    req.end('pod saw: ' + got);
  });
}).on('error', e => fail('GET failed: ' + e.message));
"#;
        let mut pod = pods::script_pod(&settings, "s3", script, false);
        if let Some(c) = pod.spec.as_mut().map(|s| &mut s.containers[0]) {
            c.env = Some(vec![
                EnvVar {
                    name: "GET_URL".into(),
                    value: Some(get_url.uri().to_string()),
                    ..Default::default()
                },
                EnvVar {
                    name: "PUT_URL".into(),
                    value: Some(put_url.uri().to_string()),
                    ..Default::default()
                },
            ]);
        }
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods_api.create(&PostParams::default(), &pod).await?;
        let pod = wait_for(
            pods_api.clone(),
            "s3",
            "completion",
            Duration::from_secs(120),
            is_pod_finished,
        )
        .await?;
        let logs = pods_api.logs("s3", &Default::default()).await?;
        println!("pod logs: {logs}");
        assert_eq!(
            pod.status.and_then(|s| s.phase).as_deref(),
            Some("Succeeded"),
            "{logs}"
        );

        let back = s3
            .get_object()
            .bucket(&bucket)
            .key(&pod_key)
            .send()
            .await
            .context("GET of the pod's object")?;
        let back = back.body.collect().await?.into_bytes();
        assert_eq!(String::from_utf8_lossy(&back), format!("pod saw: {written}"));
        Ok(())
    })
    .await
}

#[tokio::test]
#[ignore = "needs a cluster: run `make e2e`"]
async fn a_pod_reaches_a_service_by_its_dns_names() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    with_temp_ns("dns", |client, ns| async move {
        let script = "require('http').createServer((q, s) => s.end('hello from the backend')).listen(8080)";
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        deployments
            .create(&PostParams::default(), &pods::http_deployment(&settings, "backend", 8080, script))
            .await?;
        let svc = Service {
            metadata: ObjectMeta { name: Some("backend".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                selector: Some([("app.kubernetes.io/name".to_string(), "backend".to_string())].into()),
                ports: Some(vec![ServicePort { port: 8080, target_port: Some(IntOrString::Int(8080)), ..Default::default() }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        let svc = Api::<Service>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &svc)
            .await?;
        let ip = svc.spec.and_then(|s| s.cluster_ip).context("Service has no cluster IP")?;
        wait_for(deployments, "backend", "rollout", Duration::from_secs(120), conditions::is_deployment_completed()).await?;

        // Both names through the pod's resolv.conf (search list, then the FQDN); retried
        // because kube-proxy may sync the new endpoint a moment after the rollout.
        let script = r#"
const dns = require('dns'), http = require('http'), fs = require('fs');
for (const line of fs.readFileSync('/etc/resolv.conf', 'utf8').trim().split('\n')) console.log('resolv.conf: ' + line);
const get = host => new Promise((ok, fail) => {
  http.get({host, port: 8080, path: '/', timeout: 5000}, res => {
    let body = ''; res.on('data', d => body += d);
    res.on('end', () => ok(res.statusCode + ' ' + body));
  }).on('timeout', function () { this.destroy(new Error('timed out')); }).on('error', fail);
});
(async () => {
  for (const host of ['backend', `backend.${process.env.NS}.svc.cluster.local`]) {
    for (let attempt = 1; ; attempt++) {
      try {
        const {address} = await dns.promises.lookup(host, {family: 4});
        console.log(`GET http://${host}:8080/ via ${address} -> ${await get(host)}`);
        break;
      } catch (e) {
        if (attempt === 40) { console.error(`${host}: ${e.message}`); process.exit(1); }
        await new Promise(r => setTimeout(r, 500));
      }
    }
  }
})();
"#;
        let mut pod = pods::script_pod(&settings, "client", script, false);
        if let Some(c) = pod.spec.as_mut().map(|s| &mut s.containers[0]) {
            c.env = Some(vec![EnvVar { name: "NS".into(), value: Some(ns.clone()), ..Default::default() }]);
        }
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        pods_api.create(&PostParams::default(), &pod).await?;
        let pod = wait_for(pods_api.clone(), "client", "completion", Duration::from_secs(120), is_pod_finished).await?;
        let logs = pods_api.logs("client", &Default::default()).await?;
        println!("pod logs:\n{logs}");
        assert_eq!(pod.status.and_then(|s| s.phase).as_deref(), Some("Succeeded"), "{logs}");
        let search = logs
            .lines()
            .find_map(|l| l.strip_prefix("resolv.conf: search "))
            .context("no search line in the pod's resolv.conf")?;
        assert!(
            search.starts_with(&format!("{ns}.svc.cluster.local svc.cluster.local cluster.local")),
            "search list: {search}"
        );
        for host in ["backend".to_string(), format!("backend.{ns}.svc.cluster.local")] {
            let want = format!("GET http://{host}:8080/ via {ip} -> 200 hello from the backend");
            assert!(logs.lines().any(|l| l == want), "missing `{want}` in:\n{logs}");
        }

        // The kubelet warns on every pod when it has no cluster DNS to hand out.
        let events = Api::<Event>::namespaced(client.clone(), &ns).list(&Default::default()).await?;
        let missing: Vec<_> = events
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("MissingClusterDNS"))
            .map(|e| e.message.clone().unwrap_or_default())
            .collect();
        assert!(missing.is_empty(), "MissingClusterDNS events: {missing:?}");
        Ok(())
    })
    .await
}

/// `AETHER_NODE_IMAGE` with its major swapped: `aether.local/node:20` → `…:22`,
/// `node:20-slim` → `node:22-slim`.
fn node_image_for(image: &str, major: &str) -> String {
    let (repo, tag) = image.rsplit_once(':').unwrap_or((image, ""));
    let rest = tag.trim_start_matches(|c: char| c.is_ascii_digit());
    format!("{repo}:{major}{rest}")
}

#[tokio::test]
#[ignore = "needs a cluster: run `make e2e`"]
async fn node_images_run_shell_start_scripts_and_env_shebangs() -> anyhow::Result<()> {
    let settings = Settings::from_env()?;
    // The majors the cluster's images serve (hack/cluster.sh env); else just the default image's.
    let majors: Vec<String> = match std::env::var("AETHER_NODE_MAJORS") {
        Ok(list) => list.split_whitespace().map(str::to_string).collect(),
        Err(_) => {
            let tag = settings
                .node_image
                .rsplit_once(':')
                .map(|(_, t)| t)
                .unwrap_or_default();
            vec![tag.chars().take_while(char::is_ascii_digit).collect()]
        }
    };
    with_temp_ns("nodeimages", |client, ns| async move {
        let pods_api: Api<Pod> = Api::namespaced(client.clone(), &ns);
        // What a start script (`/bin/sh -c`) and a node_modules/.bin shebang need.
        let command = r#"echo $((1+2)); /usr/bin/env node -e "console.log(process.version)""#;
        for major in &majors {
            let mut pod = pods::script_pod(&settings, &format!("node-{major}"), "", false);
            if let Some(c) = pod.spec.as_mut().map(|s| &mut s.containers[0]) {
                c.image = Some(node_image_for(&settings.node_image, major));
                c.command = Some(vec!["/bin/sh".into(), "-c".into(), command.into()]);
            }
            pods_api.create(&PostParams::default(), &pod).await?;
        }
        for major in &majors {
            let name = format!("node-{major}");
            let pod = wait_for(
                pods_api.clone(),
                &name,
                "completion",
                Duration::from_secs(120),
                is_pod_finished,
            )
            .await?;
            let logs = pods_api.logs(&name, &Default::default()).await?;
            println!("{name}: {logs:?}");
            assert_eq!(
                pod.status.and_then(|s| s.phase).as_deref(),
                Some("Succeeded"),
                "{name}: {logs}"
            );
            let lines: Vec<&str> = logs.lines().collect();
            assert_eq!(lines.first(), Some(&"3"), "{name}: {logs}");
            assert!(
                lines.get(1).is_some_and(|v| v.starts_with(&format!("v{major}."))),
                "{name} runs another Node: {logs}"
            );
        }
        Ok(())
    })
    .await
}

//! Public hosts: `aether push --host NAME` makes the app answer at `https://NAME/`
//! through the cluster's ingress controller, with a certificate for that name from
//! the cluster's issuer; a host another app holds is refused with a clear reason,
//! and its holder keeps answering there.
//!
//! Needs the address where the ingress controller terminates TLS
//! (`AETHER_INGRESS_HTTPS`, from `hack/cluster.sh env`) and, to verify certificates
//! fully, the CA of the cluster's issuer (`AETHER_INGRESS_CA`); without the address
//! the tests print `skipped` (a cluster with no ingress controller). Uses `curl` and
//! `openssl`, which the local cluster's scripts need too.
//!
//! Where the operator also routes hosts through a Gateway (Gateway API), the
//! address of its HTTPS listener (`AETHER_GATEWAY_HTTPS`) and the domain it serves
//! (`AETHER_GATEWAY_DOMAIN`) let the HTTPRoute path be tested the same way.

#![allow(clippy::unwrap_used)] // test code: a panic is the failure report

use std::process::Command;
use std::time::Duration;

use aether_crds::{AetherApp, AetherPolicy};
use aether_e2e::app::{aether, example_app};
use aether_e2e::{bind_user, enabled_namespace, wait_until, with_temp_ns};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::networking::v1::Ingress;
use kube::Api;
use kube::api::{ApiResource, DeleteParams, DynamicObject, GroupVersionKind, PostParams};

const APP: &str = "express-api";
/// A person with aether-editor in the rival namespace.
const RIVAL: &str = "rival@example.com";

/// `host:port` of an `https://` address in the environment variable `var`.
fn address_in(var: &str) -> Option<String> {
    let url = std::env::var(var).ok()?;
    let rest = url.strip_prefix("https://")?;
    Some(rest.trim_end_matches('/').to_string())
}

/// `host:port` of the ingress controller's HTTPS listener, if this cluster has one.
fn ingress_address() -> Option<String> {
    address_in("AETHER_INGRESS_HTTPS")
}

/// The body `host` answers at `address`, once it does (a certificate may take a few
/// seconds to be issued, a route to be taken up).
async fn answer(address: &str, host: &str) -> anyhow::Result<String> {
    wait_until("the host to answer over HTTPS", Duration::from_secs(90), || {
        let (address, host) = (address.to_string(), host.to_string());
        async move { get(&address, &host).map(Some) }
    })
    .await
}

/// GET `https://HOST/` at the ingress controller (the name resolved to its address,
/// as DNS would), the certificate verified against the issuer's CA when it is known.
fn get(address: &str, host: &str) -> anyhow::Result<String> {
    let port = address.rsplit(':').next().unwrap_or("443");
    let ip = address.rsplit_once(':').map_or(address, |(ip, _)| ip);
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--fail-with-body", "--max-time", "5"])
        .args(["--resolve", &format!("{host}:{port}:{ip}")]);
    match std::env::var("AETHER_INGRESS_CA") {
        Ok(ca) => curl.args(["--cacert", &ca]),
        Err(_) => curl.arg("-k"),
    };
    let out = curl.arg(format!("https://{host}:{port}/")).output()?;
    anyhow::ensure!(
        out.status.success(),
        "curl https://{host}/: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The subjectAltName of the certificate the ingress controller presents for `host`
/// (SNI).
fn served_names(address: &str, host: &str) -> anyhow::Result<String> {
    let script = format!(
        "openssl s_client -connect {address} -servername {host} </dev/null 2>/dev/null | openssl x509 -noout -ext subjectAltName"
    );
    let out = Command::new("sh").args(["-c", &script]).output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_pushed_host_answers_over_https_and_another_app_cannot_take_it() -> anyhow::Result<()> {
    let Some(address) = ingress_address() else {
        println!("skipped: AETHER_INGRESS_HTTPS is not set (a cluster without an ingress controller)");
        return Ok(());
    };
    with_temp_ns("hosts", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        let greeting = format!("Hello from the host of {ns}!");
        example_app(dir.path(), &greeting)?;
        let host = format!("{ns}.apps.example.test");

        // 1. Pushed with --host: the JSON and the status name the HTTPS URL.
        let run = tokio::task::block_in_place(|| {
            aether(dir.path(), &ns, &["push", "--timeout", "4m", "--host", &host])
        });
        assert_eq!(run.code, Some(0), "push --host failed:\n{}", run.stderr);
        assert_eq!(run.json["url"], format!("https://{host}/"), "{}", run.json);
        let ingress = Api::<Ingress>::namespaced(client.clone(), &ns).get(APP).await?;
        let rules = ingress.spec.unwrap().rules.unwrap();
        assert_eq!(rules[0].host.as_deref(), Some(host.as_str()));

        // 2. It answers at https://HOST/ with the app's body, over a certificate for
        // that name (issued by the cluster's issuer: it may take a few seconds).
        let body = answer(&address, &host).await?;
        assert_eq!(body, format!("{greeting}\n"));
        let names = served_names(&address, &host)?;
        assert!(
            names.contains(&format!("DNS:{host}")),
            "the certificate names {names:?}"
        );
        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);
        let status = wait_until(
            "the certificate to be reported Ready",
            Duration::from_secs(60),
            || {
                let apps = apps.clone();
                async move {
                    let status = apps.get(APP).await?.status.unwrap_or_default();
                    Ok(status
                        .hosts
                        .first()
                        .filter(|h| h.certificate == "Ready")
                        .map(|_| status.clone()))
                }
            },
        )
        .await?;
        assert_eq!(status.url.as_deref(), Some(format!("https://{host}/").as_str()));
        let shown = tokio::task::block_in_place(|| aether(dir.path(), &ns, &["status"]));
        assert_eq!(shown.code, Some(0), "{}", shown.stderr);
        assert_eq!(shown.json["hosts"][0]["certificate"], "Ready", "{}", shown.json);

        // 3. An app in another namespace asking for the same host is refused, says
        // who holds it, and takes nothing: the host still answers the first app. Its
        // editor cannot route a host around the claim, nor forge one.
        let other = enabled_namespace(&client, "e2e-hosts-rival", "hosts").await?;
        bind_user(&client, &other, RIVAL, "aether-editor").await?;
        for (verb, resource, sub) in [
            ("create", "ingresses.networking.k8s.io", None),
            ("create", "certificates.cert-manager.io", None),
            ("patch", "aetherapps.aether.dev", Some("status")),
        ] {
            let mut can = Command::new("kubectl");
            can.args(["auth", "can-i", verb, resource, "-n", &other, "--as", RIVAL]);
            if let Some(sub) = sub {
                can.arg(format!("--subresource={sub}"));
            }
            let out = can.output()?;
            let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
            assert_eq!(said, "no", "an aether-editor may {verb} {resource} {sub:?}");
        }
        let rival = tempfile::tempdir()?;
        example_app(rival.path(), "the rival")?;
        let run = tokio::task::block_in_place(|| {
            aether(
                rival.path(),
                &other,
                &["push", "--timeout", "4m", "--host", &host],
            )
        });
        assert_ne!(run.code, Some(0), "a second app took the host:\n{}", run.stderr);
        let said = aether_e2e::app::one_line(&run.stderr);
        assert!(said.contains("HostClaimed"), "{said}");
        // The holder is another namespace's: not named to this one.
        assert!(
            said.contains(&format!("{host} (held by an app of another namespace)")),
            "{said}"
        );
        assert!(!said.contains(&format!("{ns}/")), "{said}");
        assert!(
            Api::<Ingress>::namespaced(client.clone(), &other)
                .get_opt(APP)
                .await?
                .is_none(),
            "the refused app got an Ingress"
        );
        assert_eq!(get(&address, &host)?, format!("{greeting}\n"));

        // 4. A cluster admin's AetherPolicy bounds the hosts of that namespace.
        let policies: Api<AetherPolicy> = Api::all(client.clone());
        let policy: AetherPolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherPolicy",
            "metadata": {"name": other.clone()},
            "spec": {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": other.clone()}},
                "allowedHosts": ["*.team.example.test"],
            },
        }))?;
        policies.create(&PostParams::default(), &policy).await?;
        let free = format!("{other}.apps.example.test");
        let run = tokio::task::block_in_place(|| {
            aether(
                rival.path(),
                &other,
                &["push", "--timeout", "2m", "--host", &free],
            )
        });
        let _ = policies.delete(&other, &DeleteParams::default()).await;
        let said = aether_e2e::app::one_line(&run.stderr);
        assert_ne!(run.code, Some(0), "a host outside the policy was taken:\n{said}");
        assert!(said.contains("PolicyRefused") && said.contains(&free), "{said}");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        namespaces.delete(&other, &DeleteParams::background()).await?;
        Ok(())
    })
    .await
}

/// `host:port` of the Gateway's HTTPS listener that the operator attaches apps'
/// HTTPRoutes to (`AETHER_GATEWAY_HTTPS`), and the domain it serves
/// (`AETHER_GATEWAY_DOMAIN`), if this cluster has one.
fn gateway() -> Option<(String, String)> {
    let address = address_in("AETHER_GATEWAY_HTTPS")?;
    Some((address, std::env::var("AETHER_GATEWAY_DOMAIN").ok()?))
}

fn http_routes(client: &kube::Client, ns: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk(&gvk))
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs a cluster with Aether installed: run `make e2e`"]
async fn a_pushed_host_answers_through_the_gateway_and_an_admin_s_http_route_keeps_its_host()
-> anyhow::Result<()> {
    let Some((address, domain)) = gateway() else {
        println!("skipped: AETHER_GATEWAY_HTTPS is not set (no Gateway the operator routes to)");
        return Ok(());
    };
    with_temp_ns("gateway", |client, ns| async move {
        let dir = tempfile::tempdir()?;
        let greeting = format!("Hello through the Gateway, from {ns}!");
        example_app(dir.path(), &greeting)?;
        let host = format!("{ns}.{domain}");

        // 1. The push's host gets an HTTPRoute: the host, attached to the admin's
        // Gateway, towards the app's Service.
        let run = tokio::task::block_in_place(|| {
            aether(dir.path(), &ns, &["push", "--timeout", "4m", "--host", &host])
        });
        assert_eq!(run.code, Some(0), "push --host failed:\n{}", run.stderr);
        let route = http_routes(&client, &ns).get(APP).await?.data;
        assert_eq!(route["spec"]["hostnames"], serde_json::json!([host]), "{route}");
        assert_eq!(route["spec"]["parentRefs"][0]["kind"], "Gateway", "{route}");
        assert_eq!(
            route["spec"]["rules"][0]["backendRefs"][0]["name"], APP,
            "{route}"
        );

        // 2. The Gateway accepts it, and the host answers there over HTTPS (the
        // certificate verified against the cluster's CA).
        let body = answer(&address, &host).await?;
        assert_eq!(body, format!("{greeting}\n"));
        let apps: Api<AetherApp> = Api::namespaced(client.clone(), &ns);
        wait_until(
            "the route to be reported Accepted",
            Duration::from_secs(60),
            || {
                let apps = apps.clone();
                async move {
                    let status = apps.get(APP).await?.status.unwrap_or_default();
                    Ok(status
                        .hosts
                        .first()
                        .filter(|h| h.route.as_deref() == Some("Accepted"))
                        .cloned())
                }
            },
        )
        .await?;
        let shown = tokio::task::block_in_place(|| aether(dir.path(), &ns, &["status"]));
        assert_eq!(shown.code, Some(0), "{}", shown.stderr);
        assert_eq!(shown.json["hosts"][0]["route"], "Accepted", "{}", shown.json);

        // 3. An HTTPRoute that is no app's (a cluster admin's, in a namespace of
        // theirs) holds its host: an app asking for it is refused, without being
        // told where, and gets no route. An editor cannot write HTTPRoutes to get
        // around the claims.
        let held = format!("admin-{ns}.{domain}");
        let admin_ns = format!("{ns}-admin");
        let namespaces: Api<Namespace> = Api::all(client.clone());
        let namespace: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": admin_ns}}))?;
        namespaces.create(&PostParams::default(), &namespace).await?;
        let admins: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "admins", "namespace": admin_ns},
            "spec": {
                "hostnames": [held],
                "rules": [{"backendRefs": [{"name": "grafana", "port": 80}]}],
            },
        }))?;
        http_routes(&client, &admin_ns)
            .create(&PostParams::default(), &admins)
            .await?;
        let other = tempfile::tempdir()?;
        example_app(other.path(), "the squatter")?;
        let run = tokio::task::block_in_place(|| {
            aether(
                other.path(),
                &ns,
                &["push", "--app", "squatter", "--timeout", "2m", "--host", &held],
            )
        });
        let said = aether_e2e::app::one_line(&run.stderr);
        assert_ne!(run.code, Some(0), "an app took an admin's host:\n{said}");
        assert!(said.contains("HostClaimed"), "{said}");
        assert!(
            said.contains(&format!("{held} (routed by an HTTPRoute of another namespace)")),
            "{said}"
        );
        assert!(!said.contains(&admin_ns), "{said}");
        assert!(
            http_routes(&client, &ns).get_opt("squatter").await?.is_none(),
            "the refused app got an HTTPRoute"
        );
        let kept = http_routes(&client, &admin_ns).get("admins").await?.data;
        assert_eq!(kept["spec"]["hostnames"], serde_json::json!([held]));
        namespaces.delete(&admin_ns, &DeleteParams::background()).await?;
        bind_user(&client, &ns, RIVAL, "aether-editor").await?;
        let out = Command::new("kubectl")
            .args(["auth", "can-i", "create", "httproutes.gateway.networking.k8s.io"])
            .args(["-n", &ns, "--as", RIVAL])
            .output()?;
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "no");
        Ok(())
    })
    .await
}

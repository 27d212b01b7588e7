//! The NetworkPolicy an admin may have every app get: the settings parsed, and the
//! policy built from them and the app (operator/src/app/network_policy.rs).
#![allow(clippy::unwrap_used)]

use aether_crds::AetherApp;
use aether_operator::app::network_policy::{Config, Destination, build};

fn app() -> AetherApp {
    let path = format!("{}/tests/fixtures/app.yaml", env!("CARGO_MANIFEST_DIR"));
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn dest(cidr: &str, port: Option<u16>) -> Destination {
    Destination {
        cidr: cidr.into(),
        port,
        protocol: "TCP",
    }
}

#[test]
fn settings_are_parsed_and_storage_comes_from_the_download_endpoint() {
    assert_eq!(
        Config::from_flags(false, "", None, "", None).unwrap(),
        None,
        "off by default"
    );
    let c = Config::from_flags(
        true,
        "kubernetes.io/metadata.name=traefik",
        None,
        "10.0.0.0/8:5432, 192.168.1.7/32",
        Some("http://10.88.0.1:3900"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(c.storage, dest("10.88.0.1/32", Some(3900)));
    assert_eq!(
        c.egress,
        [dest("10.0.0.0/8", Some(5432)), dest("192.168.1.7/32", None)]
    );
    assert_eq!(c.ingress_namespaces["kubernetes.io/metadata.name"], "traefik");
    let https = Config::from_flags(true, "", None, "", Some("https://[fd00::5]"))
        .unwrap()
        .unwrap();
    assert_eq!(https.storage, dest("fd00::5/128", Some(443)));
    assert_eq!(
        "[fd00::/8]:443".parse::<Destination>().unwrap(),
        dest("fd00::/8", Some(443))
    );

    // A host name cannot be put in a policy: the admin must say where storage is.
    let e = Config::from_flags(true, "", None, "", Some("https://s3.eu-west-1.amazonaws.com")).unwrap_err();
    assert!(e.contains("AETHER_NETWORK_POLICY_STORAGE"), "{e}");
    let c = Config::from_flags(
        true,
        "",
        Some("52.218.0.0/17:443"),
        "",
        Some("https://s3.amazonaws.com"),
    )
    .unwrap()
    .unwrap();
    assert_eq!(c.storage, dest("52.218.0.0/17", Some(443)));
    // Canonical networks, UDP on request (a node-local DNS cache, say).
    assert_eq!(
        "10.1.2.3/8".parse::<Destination>().unwrap(),
        dest("10.0.0.0/8", None)
    );
    let dns = "169.254.20.10/32:53/udp".parse::<Destination>().unwrap();
    assert_eq!((dns.port, dns.protocol), (Some(53), "UDP"));
    // Nothing half-read that would open more than written.
    for bad in [
        "10.0.0.1",
        "10.0.0.0/33",
        "10.0.0.0/+8",
        "nonsense/8",
        "10.0.0.0/8:http",
        "10.0.0.0/8:0",
        "10.0.0.0/8:+443",
        "10.0.0.0/8:53/sctp",
        "[fd00::/8]443",
        "[fd00::/8]junk",
    ] {
        assert!(bad.parse::<Destination>().is_err(), "{bad} accepted");
    }
    for labels in ["traefik", "=x", "k="] {
        assert!(
            Config::from_flags(true, labels, None, "", Some("http://10.0.0.1")).is_err(),
            "{labels}"
        );
    }
}

#[test]
fn an_app_takes_connections_from_its_namespace_and_the_ingress_and_reaches_dns_and_storage() {
    let app = app();
    let config = Config::from_flags(
        true,
        "kubernetes.io/metadata.name=traefik",
        None,
        "10.0.0.0/8:5432",
        Some("http://10.88.0.1:3900"),
    )
    .unwrap()
    .unwrap();
    let np = build(&app, &config);
    let v = serde_json::to_value(&np).unwrap();
    assert_eq!(v["metadata"]["name"], "aether.web", "a name no app can take");
    assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "AetherApp");
    let spec = &v["spec"];
    assert_eq!(
        spec["podSelector"]["matchLabels"],
        serde_json::json!({
            "app.kubernetes.io/name": "web",
            "app.kubernetes.io/instance": "web",
            "app.kubernetes.io/part-of": "aether"
        }),
        "only Aether's pods, not another workload labelled like the app"
    );
    assert_eq!(spec["policyTypes"], serde_json::json!(["Ingress", "Egress"]));
    assert_eq!(
        spec["ingress"],
        serde_json::json!([{
            "from": [
                {"podSelector": {}},
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "traefik"}}}
            ],
            "ports": [{"protocol": "TCP", "port": 8080}]
        }])
    );
    assert_eq!(
        spec["egress"],
        serde_json::json!([
            {"to": [{"podSelector": {}}]},
            {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                     "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
             "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]},
            {"to": [{"ipBlock": {"cidr": "10.88.0.1/32"}}], "ports": [{"protocol": "TCP", "port": 3900}]},
            {"to": [{"ipBlock": {"cidr": "10.0.0.0/8"}}], "ports": [{"protocol": "TCP", "port": 5432}]}
        ])
    );

    // Without ingress namespaces, only the app's own namespace connects.
    let own = Config {
        ingress_namespaces: Default::default(),
        ..config
    };
    let v = serde_json::to_value(build(&app, &own)).unwrap();
    assert_eq!(
        v["spec"]["ingress"][0]["from"],
        serde_json::json!([{"podSelector": {}}])
    );
}

//! Gateway API routes for an app's public hosts, where the cluster admin named a
//! Gateway (`--gateway NAMESPACE/NAME[/LISTENER]`): each app's HTTPRoute attaches to
//! it (to that one listener, when named: not to a plain-HTTP or internal one). TLS is
//! the Gateway's: its listeners hold the certificates (a wildcard one, or those
//! cert-manager's gateway-shim issues for it), so a host naming a Secret of its own
//! cannot be served this way. What the Gateway says of the route and of the
//! listener serving a host is what `status.hosts` shows. Pure.

use aether_crds::Host;
use aether_crds::condition::host;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::build;

pub const GROUP: &str = "gateway.networking.k8s.io";

/// The Gateway every app's HTTPRoute attaches to, and the listener, if one is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRef {
    pub namespace: String,
    pub name: String,
    /// The listener (`sectionName`); none: every listener that admits the route.
    pub section: Option<String>,
}

impl std::fmt::Display for GatewayRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        match &self.section {
            Some(section) => write!(f, " (listener {section})"),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for GatewayRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split('/').collect();
        match parts[..] {
            [namespace, name] | [namespace, name, _]
                if !namespace.is_empty() && !name.is_empty() && parts.get(2) != Some(&"") =>
            {
                Ok(GatewayRef {
                    namespace: namespace.into(),
                    name: name.into(),
                    section: parts.get(2).map(|s| s.to_string()),
                })
            }
            _ => Err(format!(
                "{s}: expected NAMESPACE/NAME of a Gateway, or NAMESPACE/NAME/LISTENER"
            )),
        }
    }
}

/// Gateway API's HTTPRoute, as much of it as the operator writes and reads.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "HTTPRoute",
    root = "HttpRoute",
    namespaced,
    status = "HttpRouteStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<HttpRouteRule>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteRule {
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<i32>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct HttpRouteStatus {
    #[serde(default)]
    pub parents: Vec<RouteParentStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RouteParentStatus {
    pub parent_ref: ParentRef,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Gateway API's Gateway, read only: its listeners, and what its controller says of them.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "gateway.networking.k8s.io",
    version = "v1",
    kind = "Gateway",
    namespaced,
    status = "GatewayStatus",
    schema = "disabled"
)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    #[serde(default)]
    pub listeners: Vec<Listener>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct Listener {
    pub name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub protocol: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct GatewayStatus {
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct ListenerStatus {
    pub name: String,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// Does a route's or listener's hostname `pattern` cover `host`? `*.example.com`
/// covers any name below example.com (Gateway API: one or more labels), not
/// example.com itself.
pub fn covers(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .and_then(|rest| rest.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty()),
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// The app's HTTPRoute for the `held` hosts, attached to `gateway` (none without
/// hosts). Named after the app, like its Ingress.
pub fn http_route(app: &aether_crds::AetherApp, held: &[Host], gateway: &GatewayRef) -> Option<HttpRoute> {
    if held.is_empty() {
        return None;
    }
    let name = app.name_any();
    Some(HttpRoute {
        metadata: build::owned_meta(app, name.clone()),
        spec: HttpRouteSpec {
            parent_refs: vec![ParentRef {
                group: Some(GROUP.into()),
                kind: Some("Gateway".into()),
                namespace: Some(gateway.namespace.clone()),
                name: gateway.name.clone(),
                section_name: gateway.section.clone(),
            }],
            hostnames: held.iter().map(|h| h.name.clone()).collect(),
            rules: vec![HttpRouteRule {
                backend_refs: vec![BackendRef {
                    name,
                    port: Some(build::SERVICE_PORT),
                }],
            }],
        },
        status: None,
    })
}

/// What the Gateway says of the app's route, as it is now (its word on an earlier
/// generation does not count): `Accepted` (and its backend resolved), `Pending` (no
/// word yet), or the reason it does not route it, with its message.
pub fn route_state(route: Option<&HttpRoute>, gateway: &GatewayRef) -> (String, Option<String>) {
    let generation = route.and_then(|r| r.metadata.generation);
    let conditions = route
        .and_then(|r| r.status.as_ref())
        .and_then(|s| {
            s.parents.iter().find(|p| {
                p.parent_ref.name == gateway.name
                    && p.parent_ref
                        .namespace
                        .as_deref()
                        .is_none_or(|n| n == gateway.namespace)
                    && p.parent_ref.section_name == gateway.section
            })
        })
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let current = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_)
            .filter(|c| generation.is_none_or(|g| c.observed_generation.is_none_or(|o| o >= g)))
    };
    match (current("Accepted"), current("ResolvedRefs")) {
        (Some(a), _) if a.status != "True" => (
            a.reason.clone(),
            Some(format!("Gateway {gateway} does not route it: {}", a.message)),
        ),
        (Some(_), Some(r)) if r.status != "True" => (
            r.reason.clone(),
            Some(format!("Gateway {gateway} cannot reach the app: {}", r.message)),
        ),
        (Some(_), _) => (host::ACCEPTED.into(), None),
        (None, _) => (
            host::PENDING.into(),
            Some(format!("Gateway {gateway} has not accepted the route yet")),
        ),
    }
}

/// The certificate serving `host` at the Gateway: `Ready` when the HTTPS listener
/// covering it has its certificate and is programmed, `NotReady` (with the
/// listener's reason: its message is the admin's business) when it is not yet,
/// `None` when only plain HTTP listeners cover it. The listener is the named one,
/// or, HTTPS before HTTP, the one that covers the host most narrowly (an exact
/// name, then the longest wildcard, then none).
pub fn listener_certificate(
    gateway: Option<&Gateway>,
    gateway_ref: &GatewayRef,
    host: &str,
) -> (&'static str, Option<String>) {
    let Some(gateway) = gateway else {
        return (
            host::NOT_READY,
            Some(format!("Gateway {gateway_ref} does not exist")),
        );
    };
    let rank = |l: &Listener| {
        let narrowness = match l.hostname.as_deref() {
            Some(h) if !h.starts_with('*') => (0, 0),
            Some(h) => (1, usize::MAX - h.len()),
            None => (2, 0),
        };
        (l.protocol != "HTTPS", narrowness)
    };
    let listener = gateway
        .spec
        .listeners
        .iter()
        .filter(|l| gateway_ref.section.as_ref().is_none_or(|s| *s == l.name))
        .filter(|l| l.hostname.as_deref().is_none_or(|h| covers(h, host)))
        .min_by_key(|l| rank(l));
    let Some(listener) = listener else {
        return (
            host::NOT_READY,
            Some(format!("no listener of Gateway {gateway_ref} covers {host}")),
        );
    };
    if listener.protocol != "HTTPS" {
        return (host::NONE, None);
    }
    let conditions = gateway
        .status
        .as_ref()
        .and_then(|s| s.listeners.iter().find(|l| l.name == listener.name))
        .map(|l| l.conditions.as_slice())
        .unwrap_or_default();
    let not_yet = ["ResolvedRefs", "Programmed"]
        .iter()
        .find_map(|t| conditions.iter().find(|c| c.type_ == *t && c.status != "True"));
    match (conditions.is_empty(), not_yet) {
        (true, _) => (
            host::NOT_READY,
            Some(format!("listener {} has no status yet", listener.name)),
        ),
        (false, Some(c)) => (
            host::NOT_READY,
            Some(format!(
                "listener {} of Gateway {gateway_ref}: {}",
                listener.name, c.reason
            )),
        ),
        (false, None) => (host::READY, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    fn gateway_ref() -> GatewayRef {
        "infra/public".parse().unwrap()
    }

    fn condition(type_: &str, status: &str, reason: &str) -> Condition {
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message: format!("{reason} said"),
            last_transition_time: Time(Timestamp::from_second(0).unwrap()),
            observed_generation: None,
        }
    }

    #[test]
    fn gateways_parse_from_the_admins_flag() {
        assert_eq!(
            gateway_ref(),
            GatewayRef {
                namespace: "infra".into(),
                name: "public".into(),
                section: None,
            }
        );
        let listener: GatewayRef = "infra/public/https".parse().unwrap();
        assert_eq!(listener.section.as_deref(), Some("https"));
        assert_eq!(listener.to_string(), "infra/public (listener https)");
        for bad in ["public", "/public", "infra/", "a/b/c/d", "/b/c", "a/b/"] {
            assert!(bad.parse::<GatewayRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn a_wildcard_covers_names_below_it_only() {
        assert!(covers("*.example.com", "shop.example.com"));
        assert!(covers("*.example.com", "a.shop.example.com"));
        assert!(!covers("*.example.com", "example.com"));
        assert!(!covers("*.example.com", "shopexample.com"));
        assert!(covers("shop.example.com", "SHOP.example.com"));
        assert!(!covers("shop.example.com", "a.shop.example.com"));
    }

    #[test]
    fn the_route_attaches_the_held_hosts_to_the_gateway_and_the_service() {
        let app: aether_crds::AetherApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherApp",
            "metadata": {"name": "shop", "namespace": "a", "uid": "u1"},
            "spec": {"artifactRef": {"name": "x"}},
        }))
        .unwrap();
        assert!(http_route(&app, &[], &gateway_ref()).is_none());
        let held = [Host {
            name: "shop.example.com".into(),
            tls_secret_name: None,
        }];
        let route = http_route(&app, &held, &gateway_ref()).unwrap();
        assert_eq!(route.metadata.name.as_deref(), Some("shop"));
        assert_eq!(route.metadata.owner_references.as_ref().unwrap()[0].uid, "u1");
        let json = serde_json::to_value(&route).unwrap();
        assert_eq!(json["apiVersion"], "gateway.networking.k8s.io/v1");
        assert_eq!(json["kind"], "HTTPRoute");
        assert_eq!(
            json["spec"]["parentRefs"][0],
            serde_json::json!({"group": GROUP, "kind": "Gateway", "namespace": "infra", "name": "public"})
        );
        assert_eq!(json["spec"]["hostnames"], serde_json::json!(["shop.example.com"]));
        assert_eq!(
            json["spec"]["rules"][0]["backendRefs"][0],
            serde_json::json!({"name": "shop", "port": 80})
        );
        // A named listener: the route attaches to it alone.
        let https = http_route(&app, &held, &"infra/public/https".parse().unwrap()).unwrap();
        let json = serde_json::to_value(&https).unwrap();
        assert_eq!(json["spec"]["parentRefs"][0]["sectionName"], "https");
    }

    #[test]
    fn the_route_state_is_the_gateway_s_word_on_the_route_as_it_is() {
        let gw = gateway_ref();
        let mut route = HttpRoute::new("shop", HttpRouteSpec::default());
        route.metadata.generation = Some(2);
        assert_eq!(route_state(Some(&route), &gw).0, "Pending");
        let parent = |name: &str, conditions: Vec<Condition>| RouteParentStatus {
            parent_ref: ParentRef {
                namespace: Some("infra".into()),
                name: name.into(),
                ..Default::default()
            },
            conditions,
        };
        route.status = Some(HttpRouteStatus {
            parents: vec![
                parent("other", vec![condition("Accepted", "True", "Accepted")]),
                parent(
                    "public",
                    vec![condition("Accepted", "False", "NotAllowedByListeners")],
                ),
            ],
        });
        let (state, message) = route_state(Some(&route), &gw);
        assert_eq!(state, "NotAllowedByListeners");
        assert!(message.unwrap().contains("infra/public"));
        let accepted = condition("Accepted", "True", "Accepted");
        route.status.as_mut().unwrap().parents[1].conditions = vec![accepted.clone()];
        assert_eq!(route_state(Some(&route), &gw), ("Accepted".into(), None));
        // Its word on the generation before (a host added since) is not its word now.
        let earlier = Condition {
            observed_generation: Some(1),
            ..accepted.clone()
        };
        route.status.as_mut().unwrap().parents[1].conditions = vec![earlier];
        assert_eq!(route_state(Some(&route), &gw).0, "Pending");
        // Accepted, but the Service cannot be reached.
        route.status.as_mut().unwrap().parents[1].conditions =
            vec![accepted, condition("ResolvedRefs", "False", "BackendNotFound")];
        assert_eq!(route_state(Some(&route), &gw).0, "BackendNotFound");
        // Attached to another listener than the one named: no word on this one.
        let listener: GatewayRef = "infra/public/https".parse().unwrap();
        assert_eq!(route_state(Some(&route), &listener).0, "Pending");
    }

    fn listener(name: &str, hostname: Option<&str>, protocol: &str) -> Listener {
        Listener {
            name: name.into(),
            hostname: hostname.map(Into::into),
            protocol: protocol.into(),
        }
    }

    fn programmed(name: &str) -> ListenerStatus {
        ListenerStatus {
            name: name.into(),
            conditions: vec![
                condition("ResolvedRefs", "True", "ResolvedRefs"),
                condition("Programmed", "True", "Programmed"),
            ],
        }
    }

    fn gateway(listeners: Vec<Listener>) -> Gateway {
        let statuses = listeners.iter().map(|l| programmed(&l.name)).collect();
        let mut gateway = Gateway::new("public", GatewaySpec { listeners });
        gateway.metadata.namespace = Some("infra".into());
        gateway.status = Some(GatewayStatus { listeners: statuses });
        gateway
    }

    #[test]
    fn the_certificate_is_that_of_the_listener_serving_the_host() {
        let gw = gateway_ref();
        let mut gateway = gateway(vec![
            listener("http", None, "HTTP"),
            listener("apps", Some("*.apps.example.com"), "HTTPS"),
            listener("shop", Some("shop.apps.example.com"), "HTTPS"),
        ]);
        assert_eq!(
            listener_certificate(Some(&gateway), &gw, "x.apps.example.com"),
            ("Ready", None)
        );
        assert_eq!(
            listener_certificate(Some(&gateway), &gw, "elsewhere.com"),
            ("None", None)
        );
        // The exact listener serves its host, and its certificate is not there yet:
        // its reason is said, not the admin's message (Secret names).
        gateway.status.as_mut().unwrap().listeners[2].conditions[0] =
            condition("ResolvedRefs", "False", "InvalidCertificateRef");
        let (state, message) = listener_certificate(Some(&gateway), &gw, "shop.apps.example.com");
        assert_eq!(state, "NotReady");
        let message = message.unwrap();
        assert!(message.contains("InvalidCertificateRef"), "{message}");
        assert!(!message.contains("said"), "{message}");
        assert_eq!(
            listener_certificate(None, &gw, "shop.apps.example.com").0,
            "NotReady"
        );
        // No status yet: not ready.
        gateway.status = None;
        assert_eq!(
            listener_certificate(Some(&gateway), &gw, "x.apps.example.com").0,
            "NotReady"
        );
        gateway.spec.listeners.remove(0);
        assert_eq!(
            listener_certificate(Some(&gateway), &gw, "elsewhere.com").0,
            "NotReady"
        );
    }

    #[test]
    fn the_narrowest_listener_serves_a_host_https_first_or_the_named_one() {
        let gw = gateway_ref();
        // cert-manager's gateway-shim layout: HTTP and HTTPS per hostname, HTTP first.
        let mut gateway = gateway(vec![
            listener("wide", Some("*.example.com"), "HTTPS"),
            listener("apps-http", Some("*.apps.example.com"), "HTTP"),
            listener("apps", Some("*.apps.example.com"), "HTTPS"),
        ]);
        gateway.status.as_mut().unwrap().listeners[0].conditions[0] =
            condition("ResolvedRefs", "False", "InvalidCertificateRef");
        // The longer wildcard, over HTTPS: Ready (not the broken wide one).
        assert_eq!(
            listener_certificate(Some(&gateway), &gw, "x.apps.example.com"),
            ("Ready", None)
        );
        // The one the admin named, whatever covers the host more narrowly.
        let wide: GatewayRef = "infra/public/wide".parse().unwrap();
        assert_eq!(
            listener_certificate(Some(&gateway), &wide, "x.apps.example.com").0,
            "NotReady"
        );
        let http: GatewayRef = "infra/public/apps-http".parse().unwrap();
        assert_eq!(
            listener_certificate(Some(&gateway), &http, "x.apps.example.com"),
            ("None", None)
        );
        // An exact HTTP listener and a wildcard HTTPS one: the host has HTTPS.
        let mixed = super::tests::gateway(vec![
            listener("shop-http", Some("shop.example.com"), "HTTP"),
            listener("any", Some("*.example.com"), "HTTPS"),
        ]);
        assert_eq!(
            listener_certificate(Some(&mixed), &gw, "shop.example.com"),
            ("Ready", None)
        );
    }
}

//! Gateway API routes for an app's public hosts, where the cluster admin named a
//! Gateway (`--gateway NAMESPACE/NAME`): each app's HTTPRoute attaches to it. TLS is
//! the Gateway's: its listeners hold the certificates (a wildcard one, or those
//! cert-manager's gateway-shim issues for it), so a host naming a Secret of its own
//! cannot be served this way. What the Gateway says of the route and of the
//! listener serving a host is what `status.hosts` shows. Pure.

use aether_crds::Host;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, ResourceExt};
use serde::{Deserialize, Serialize};

use super::build;

pub const GROUP: &str = "gateway.networking.k8s.io";

/// The Gateway every app's HTTPRoute attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRef {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for GatewayRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

impl std::str::FromStr for GatewayRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() && !name.contains('/') => {
                Ok(GatewayRef {
                    namespace: namespace.into(),
                    name: name.into(),
                })
            }
            _ => Err(format!("{s}: expected NAMESPACE/NAME of a Gateway")),
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

/// What the Gateway says of the app's route: `Accepted`, `Pending` (no word yet),
/// or the reason it does not route it, with its message.
pub fn route_state(route: Option<&HttpRoute>, gateway: &GatewayRef) -> (String, Option<String>) {
    let accepted = route
        .and_then(|r| r.status.as_ref())
        .and_then(|s| {
            s.parents.iter().find(|p| {
                p.parent_ref.name == gateway.name
                    && p.parent_ref
                        .namespace
                        .as_deref()
                        .is_none_or(|n| n == gateway.namespace)
            })
        })
        .and_then(|p| p.conditions.iter().find(|c| c.type_ == "Accepted"));
    match accepted {
        Some(c) if c.status == "True" => ("Accepted".into(), None),
        Some(c) => (
            c.reason.clone(),
            Some(format!("Gateway {gateway} does not route it: {}", c.message)),
        ),
        None => (
            "Pending".into(),
            Some(format!("Gateway {gateway} has not accepted the route yet")),
        ),
    }
}

/// The certificate serving `host` at the Gateway: `Ready` when an HTTPS listener
/// covering it has its certificate and is programmed, `NotReady` (with the
/// listener's word) when it is not yet, `None` when only plain HTTP listeners cover
/// it. The first listener that covers the host most narrowly is the one it gets.
pub fn listener_certificate(gateway: Option<&Gateway>, host: &str) -> (&'static str, Option<String>) {
    let Some(gateway) = gateway else {
        return ("NotReady", Some("the Gateway does not exist".into()));
    };
    // An exact hostname beats a wildcard, a wildcard beats none (Gateway API).
    let rank = |l: &Listener| match l.hostname.as_deref() {
        Some(h) if !h.starts_with('*') => 0,
        Some(_) => 1,
        None => 2,
    };
    let listener = gateway
        .spec
        .listeners
        .iter()
        .filter(|l| l.hostname.as_deref().is_none_or(|h| covers(h, host)))
        .min_by_key(|l| rank(l));
    let Some(listener) = listener else {
        return (
            "NotReady",
            Some(format!(
                "no listener of Gateway {}/{} covers {host}",
                gateway.namespace().unwrap_or_default(),
                gateway.name_any()
            )),
        );
    };
    if listener.protocol != "HTTPS" {
        return ("None", None);
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
            "NotReady",
            Some(format!("listener {} has no status yet", listener.name)),
        ),
        (false, Some(c)) => (
            "NotReady",
            Some(format!("listener {}: {}: {}", listener.name, c.reason, c.message)),
        ),
        (false, None) => ("Ready", None),
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
                name: "public".into()
            }
        );
        for bad in ["public", "/public", "infra/", "a/b/c"] {
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
    }

    #[test]
    fn the_route_state_is_the_gateway_s_word_on_it() {
        let gw = gateway_ref();
        let mut route = HttpRoute::new("shop", HttpRouteSpec::default());
        assert_eq!(route_state(Some(&route), &gw).0, "Pending");
        let parent = |name: &str, accepted: Condition| RouteParentStatus {
            parent_ref: ParentRef {
                namespace: Some("infra".into()),
                name: name.into(),
                ..Default::default()
            },
            conditions: vec![accepted],
        };
        route.status = Some(HttpRouteStatus {
            parents: vec![
                parent("other", condition("Accepted", "True", "Accepted")),
                parent("public", condition("Accepted", "False", "NotAllowedByListeners")),
            ],
        });
        let (state, message) = route_state(Some(&route), &gw);
        assert_eq!(state, "NotAllowedByListeners");
        assert!(message.unwrap().contains("infra/public"));
        route.status.as_mut().unwrap().parents[1].conditions[0] = condition("Accepted", "True", "Accepted");
        assert_eq!(route_state(Some(&route), &gw), ("Accepted".into(), None));
    }

    #[test]
    fn the_certificate_is_the_covering_listener_s() {
        let listener = |name: &str, hostname: Option<&str>, protocol: &str| Listener {
            name: name.into(),
            hostname: hostname.map(Into::into),
            protocol: protocol.into(),
        };
        let mut gateway = Gateway::new(
            "public",
            GatewaySpec {
                listeners: vec![
                    listener("http", None, "HTTP"),
                    listener("apps", Some("*.apps.example.com"), "HTTPS"),
                    listener("shop", Some("shop.apps.example.com"), "HTTPS"),
                ],
            },
        );
        gateway.metadata.namespace = Some("infra".into());
        let ok = |name: &str| ListenerStatus {
            name: name.into(),
            conditions: vec![
                condition("ResolvedRefs", "True", "ResolvedRefs"),
                condition("Programmed", "True", "Programmed"),
            ],
        };
        assert_eq!(
            listener_certificate(Some(&gateway), "x.apps.example.com").0,
            "NotReady"
        );
        gateway.status = Some(GatewayStatus {
            listeners: vec![ok("http"), ok("apps"), ok("shop")],
        });
        assert_eq!(
            listener_certificate(Some(&gateway), "x.apps.example.com"),
            ("Ready", None)
        );
        assert_eq!(
            listener_certificate(Some(&gateway), "elsewhere.com"),
            ("None", None)
        );
        // The exact listener serves its host, and its certificate is not there yet.
        gateway.status.as_mut().unwrap().listeners[2].conditions[0] =
            condition("ResolvedRefs", "False", "InvalidCertificateRef");
        let (state, message) = listener_certificate(Some(&gateway), "shop.apps.example.com");
        assert_eq!(state, "NotReady");
        assert!(message.unwrap().contains("InvalidCertificateRef"));
        assert_eq!(listener_certificate(None, "shop.apps.example.com").0, "NotReady");
        gateway.spec.listeners.remove(0);
        assert_eq!(
            listener_certificate(Some(&gateway), "elsewhere.com").0,
            "NotReady"
        );
    }
}

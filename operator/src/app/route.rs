//! An app's public hosts (`spec.hosts`): who holds each host, the Ingress that
//! routes them to the app's Service (and the HTTPRoute, where the admin named a
//! Gateway: see [`super::gateway`]), the cert-manager Certificate for those without
//! a Secret of their own, and what `status.hosts` says of them. Pure.
//!
//! A host is held cluster-wide by one app: the one that has held it longest. An app
//! holds a host while its `status.hosts` lists it (written only by the operator, in
//! step with the app's Ingress: a suspended app's routes stay, and so does its
//! hold); ties are broken by namespace and name, so that two apps claiming a host
//! at once agree on who won. An Ingress or HTTPRoute that is no app's (a cluster
//! admin's, or one orphaned by `kubectl delete --cascade=orphan`) holds the hosts it
//! names, unless an app held them before it was made (a wildcard one holds none: an
//! app's exact host takes precedence over it at the controller). An app
//! asking for a host held by another is refused, and its previous release keeps
//! running; an app that lost a race drops the host from its Ingress on its next
//! look, which the winner asks for ([`Claims::outranked`]). A tenant is told that
//! another namespace holds a host, not which app there does.

use std::collections::BTreeMap;

use aether_crds::{AetherApp, Host, HostStatus};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec, IngressTLS, ServiceBackendPort,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use kube::{CustomResource, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use aether_crds::condition::host as host_state;

use super::build;
use super::gateway::{self, Gateway, GatewayRef, HttpRoute};
use super::validate::Invalid;

/// The cluster admin's settings for public hosts.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// The IngressClass of every app's Ingress; unset: the cluster's default class.
    pub ingress_class: Option<String>,
    /// The Gateway apps' HTTPRoutes attach to; unset: no HTTPRoutes.
    pub gateway: Option<GatewayRef>,
    /// Who issues certificates for hosts without a Secret of their own.
    pub issuer: Option<Issuer>,
    /// The hosts any app may ask for (`*` patterns); empty: any (AetherPolicies may
    /// still bound them per namespace).
    pub allowed_hosts: Vec<String>,
}

impl Config {
    /// Hosts are routed by Ingresses unless the admin named only a Gateway (both:
    /// by both, as while moving from one to the other).
    pub fn ingress(&self) -> bool {
        self.gateway.is_none() || self.ingress_class.is_some()
    }
}

/// A cert-manager issuer: `ClusterIssuer/NAME`, or `Issuer/NAME` (one of that name
/// in each app's namespace).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issuer {
    pub kind: String,
    pub name: String,
}

impl std::str::FromStr for Issuer {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.split_once('/') {
            Some((kind @ ("ClusterIssuer" | "Issuer"), name)) if !name.is_empty() => Ok(Issuer {
                kind: kind.into(),
                name: name.into(),
            }),
            _ => Err(format!("{s}: expected ClusterIssuer/NAME or Issuer/NAME")),
        }
    }
}

/// cert-manager's Certificate, as much of it as the operator writes and reads.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "cert-manager.io",
    version = "v1",
    kind = "Certificate",
    namespaced,
    status = "CertificateStatus"
)]
#[serde(rename_all = "camelCase")]
pub struct CertificateSpec {
    pub secret_name: String,
    pub dns_names: Vec<String>,
    pub issuer_ref: IssuerRef,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct IssuerRef {
    pub name: String,
    pub kind: String,
    pub group: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct CertificateStatus {
    #[serde(default)]
    #[schemars(skip)]
    pub conditions: Vec<Condition>,
}

/// What holds a host the app may not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// `AetherApp`, `Ingress` or `HTTPRoute`.
    pub kind: &'static str,
    pub namespace: String,
    pub name: String,
}

/// Who holds each host the app asks for.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Claims {
    /// The hosts the app holds, with when it first did.
    pub held: Vec<(Host, Timestamp)>,
    /// Hosts something else holds.
    pub refused: Vec<(String, Holder)>,
    /// Apps that also hold one of the app's hosts but rank after it: they must look
    /// again, and let it go.
    pub outranked: Vec<ObjectRef<AetherApp>>,
}

impl Claims {
    /// The release of an app in `namespace` is refused while it asks for a host held
    /// by something else. What holds it is named only within the namespace.
    pub fn refusal(&self, namespace: &str) -> Option<Invalid> {
        if self.refused.is_empty() {
            return None;
        }
        let held = self
            .refused
            .iter()
            .map(|(host, by)| match (by.kind, by.namespace == namespace) {
                ("AetherApp", true) => format!("{host} (held by AetherApp {})", by.name),
                ("AetherApp", false) => format!("{host} (held by an app of another namespace)"),
                (kind, true) => format!("{host} (routed by {kind} {}, which is no app's)", by.name),
                (kind, false) => format!("{host} (routed by an {kind} of another namespace)"),
            })
            .collect::<Vec<_>>()
            .join(", ");
        Some(Invalid {
            reason: aether_crds::condition::app::HOST_CLAIMED,
            message: format!(
                "spec.hosts: {held}: a host belongs to whatever routed it first; choose another host, or have it released"
            ),
            waiting: false,
        })
    }
}

/// A host named with a Secret of its own cannot be served where TLS ends at the
/// Gateway alone: its listeners hold the certificates.
pub fn unservable(app: &AetherApp, config: &Config) -> Option<Invalid> {
    let gateway = config.gateway.as_ref().filter(|_| !config.ingress())?;
    let named: Vec<&str> = app
        .spec
        .hosts
        .iter()
        .filter(|h| h.tls_secret_name.is_some())
        .map(|h| h.name.as_str())
        .collect();
    if named.is_empty() {
        return None;
    }
    Some(Invalid::stalled(
        "CertificateAtGateway",
        format!(
            "spec.hosts: {}: tlsSecretName cannot be served here: TLS ends at Gateway {gateway}, whose listeners hold the certificates; drop tlsSecretName (the Gateway's certificate serves the host), or ask a cluster admin for a listener",
            named.join(", ")
        ),
    ))
}

/// A route some controller serves, as claims see it: an Ingress or an HTTPRoute.
#[derive(Debug)]
pub struct Routing<'a> {
    pub kind: &'static str,
    pub meta: &'a ObjectMeta,
    pub hosts: Vec<&'a str>,
}

impl<'a> From<&'a Ingress> for Routing<'a> {
    fn from(ingress: &'a Ingress) -> Self {
        let rules = ingress.spec.as_ref().and_then(|s| s.rules.as_ref());
        Routing {
            kind: "Ingress",
            meta: &ingress.metadata,
            hosts: rules
                .into_iter()
                .flatten()
                .filter_map(|r| r.host.as_deref())
                .collect(),
        }
    }
}

impl<'a> From<&'a HttpRoute> for Routing<'a> {
    fn from(route: &'a HttpRoute) -> Self {
        Routing {
            kind: "HTTPRoute",
            meta: &route.metadata,
            hosts: route.spec.hostnames.iter().map(String::as_str).collect(),
        }
    }
}

/// When an app claimed `host`, if it holds it: its status lists it (its Ingress
/// routes it, whatever its spec now asks) and it is not being deleted.
fn claimed_at(app: &AetherApp, host: &str) -> Option<Timestamp> {
    if app.meta().deletion_timestamp.is_some() {
        return None;
    }
    let status = app.status.as_ref()?;
    status
        .hosts
        .iter()
        .find(|h| h.name == host)
        .map(|h| h.claimed_at.0)
}

/// Who holds each of `app`'s hosts, among `apps` (every AetherApp, `app` among them
/// or not) and `routes` (every Ingress, and every HTTPRoute wherever Gateway API is
/// installed) at `now`.
pub fn claims<'a, 'b>(
    app: &AetherApp,
    apps: impl IntoIterator<Item = &'a AetherApp>,
    routes: impl IntoIterator<Item = impl Into<Routing<'b>>>,
    now: Timestamp,
) -> Claims {
    let uid = app.uid();
    let rank = |a: &AetherApp, at: Timestamp| (at, a.namespace().unwrap_or_default(), a.name_any());
    let apps: Vec<&AetherApp> = apps.into_iter().collect();
    let others: Vec<&AetherApp> = apps.iter().copied().filter(|a| a.uid() != uid).collect();
    // A route an app owns is that app's claim (its status says which hosts: the
    // operator writes both routes, or neither, before it), or one of a deleted app
    // the garbage collector is about to remove; any other holds what it routes, if
    // it was there first.
    let foreign: Vec<Routing> = routes
        .into_iter()
        .map(Into::into)
        .filter(|r: &Routing| {
            !r.meta
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.controller == Some(true) && o.kind == "AetherApp")
        })
        .collect();
    let mut claims = Claims::default();
    for host in &app.spec.hosts {
        let held_since = claimed_at(app, &host.name);
        let routing = foreign.iter().find(|r| {
            let routes = r.hosts.contains(&host.name.as_str());
            // One made after the app held the host takes nothing from it.
            let created = r.meta.creation_timestamp.as_ref().map(|t| t.0);
            routes && held_since.is_none_or(|since| created.is_none_or(|c| c < since))
        });
        if let Some(route) = routing {
            let holder = Holder {
                kind: route.kind,
                namespace: route.meta.namespace.clone().unwrap_or_default(),
                name: route.meta.name.clone().unwrap_or_default(),
            };
            claims.refused.push((host.name.clone(), holder));
            continue;
        }
        let mine = rank(app, claimed_at(app, &host.name).unwrap_or(now));
        let mut first: Option<(Timestamp, String, String)> = None;
        for other in &others {
            let Some(at) = claimed_at(other, &host.name) else {
                continue;
            };
            let theirs = rank(other, at);
            if theirs < mine {
                if first.as_ref().is_none_or(|f| theirs < *f) {
                    first = Some(theirs);
                }
            } else {
                let r = ObjectRef::from_obj(*other);
                if !claims.outranked.contains(&r) {
                    claims.outranked.push(r);
                }
            }
        }
        match first {
            Some((_, namespace, name)) => {
                let holder = Holder {
                    kind: "AetherApp",
                    namespace,
                    name,
                };
                claims.refused.push((host.name.clone(), holder));
            }
            None => claims.held.push((host.clone(), mine.0)),
        }
    }
    claims
}

/// The name of the app's Certificate, and of the Secret cert-manager writes it to:
/// `aether.<app>.tls`, a name no user-chosen Secret of an app (a DNS label) takes by
/// accident.
pub fn certificate_name(app: &str) -> String {
    format!("aether.{app}.tls")
}

/// The Secret holding `host`'s certificate, if it has one.
fn tls_secret(app: &str, host: &Host, config: &Config) -> Option<String> {
    match &host.tls_secret_name {
        Some(secret) => Some(secret.clone()),
        None => config.issuer.as_ref().map(|_| certificate_name(app)),
    }
}

/// The Ingress routing the held hosts to the app's Service (none without hosts, or
/// where only a Gateway routes them).
pub fn ingress(app: &AetherApp, held: &[Host], config: &Config) -> Option<Ingress> {
    if held.is_empty() || !config.ingress() {
        return None;
    }
    let name = app.name_any();
    let rules = held
        .iter()
        .map(|host| IngressRule {
            host: Some(host.name.clone()),
            http: Some(HTTPIngressRuleValue {
                paths: vec![HTTPIngressPath {
                    path: Some("/".into()),
                    path_type: "Prefix".into(),
                    backend: IngressBackend {
                        service: Some(IngressServiceBackend {
                            name: name.clone(),
                            port: Some(ServiceBackendPort {
                                number: Some(build::SERVICE_PORT),
                                ..Default::default()
                            }),
                        }),
                        ..Default::default()
                    },
                }],
            }),
        })
        .collect();
    // One TLS entry per Secret, listing the hosts it serves.
    let mut by_secret: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for host in held {
        if let Some(secret) = tls_secret(&name, host, config) {
            by_secret.entry(secret).or_default().push(host.name.clone());
        }
    }
    let tls: Vec<IngressTLS> = by_secret
        .into_iter()
        .map(|(secret, hosts)| IngressTLS {
            hosts: Some(hosts),
            secret_name: Some(secret),
        })
        .collect();
    Some(Ingress {
        metadata: build::owned_meta(app, name.clone()),
        spec: Some(IngressSpec {
            ingress_class_name: config.ingress_class.clone(),
            rules: Some(rules),
            tls: (!tls.is_empty()).then_some(tls),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// The Certificate for the held hosts without a Secret of their own, when the
/// cluster admin configured an issuer (for the app's Ingress: at a Gateway, its
/// listeners hold the certificates).
pub fn certificate(app: &AetherApp, held: &[Host], config: &Config) -> Option<Certificate> {
    let issuer = config.issuer.as_ref().filter(|_| config.ingress())?;
    let dns_names: Vec<String> = held
        .iter()
        .filter(|h| h.tls_secret_name.is_none())
        .map(|h| h.name.clone())
        .collect();
    if dns_names.is_empty() {
        return None;
    }
    let name = certificate_name(&app.name_any());
    Some(Certificate {
        metadata: build::owned_meta(app, name.clone()),
        spec: CertificateSpec {
            secret_name: name,
            dns_names,
            issuer_ref: IssuerRef {
                name: issuer.name.clone(),
                kind: issuer.kind.clone(),
                group: "cert-manager.io".into(),
            },
        },
        status: None,
    })
}

/// What is known of the routes and certificates: the Certificate as applied (with
/// cert-manager's status), which of the Secrets the hosts name exist, and, where
/// the admin named a Gateway, the app's HTTPRoute as applied and the Gateway (read
/// only where it serves the hosts alone), or why they could not be written or read
/// (Gateway API not installed, a permission missing).
#[derive(Debug, Default)]
pub struct Observed {
    pub certificate: Option<Certificate>,
    pub secrets_present: Vec<String>,
    pub http_route: Option<HttpRoute>,
    pub gateway: Option<Gateway>,
    pub route_error: Option<String>,
}

/// `status.hosts`: each held host, its URL and its certificate.
pub fn status(app: &AetherApp, claims: &Claims, config: &Config, seen: &Observed) -> Vec<HostStatus> {
    let name = app.name_any();
    claims
        .held
        .iter()
        .map(|(host, at)| {
            // With both, the Ingress's (the admin's own Secret or issuer) is shown.
            let route = config.gateway.as_ref().map(|g| match &seen.route_error {
                Some(error) => (host_state::UNAVAILABLE.to_string(), Some(error.clone())),
                None => gateway::route_state(seen.http_route.as_ref(), g),
            });
            let (certificate, message) = match (&config.gateway, config.ingress()) {
                (Some(g), false) if seen.route_error.is_none() => {
                    gateway::listener_certificate(seen.gateway.as_ref(), g, &host.name)
                }
                (Some(_), false) => (host_state::NOT_READY, None),
                _ => ingress_certificate(app, host, config, seen),
            };
            let message = [message, route.as_ref().and_then(|r| r.1.clone())]
                .into_iter()
                .flatten()
                .reduce(|a, b| format!("{a}; {b}"));
            let tls = if config.ingress() {
                tls_secret(&name, host, config).is_some()
            } else {
                certificate != host_state::NONE
            };
            let scheme = if tls { "https" } else { "http" };
            HostStatus {
                name: host.name.clone(),
                url: format!("{scheme}://{}/", host.name),
                claimed_at: Time(*at),
                certificate: certificate.into(),
                route: route.map(|r| r.0),
                message,
            }
        })
        .collect()
}

/// The certificate of a host the app's Ingress routes: its own Secret's, or the
/// issuer's Certificate.
fn ingress_certificate(
    app: &AetherApp,
    host: &Host,
    config: &Config,
    seen: &Observed,
) -> (&'static str, Option<String>) {
    let name = app.name_any();
    match (&host.tls_secret_name, &config.issuer) {
        (Some(secret), _) if seen.secrets_present.contains(secret) => (host_state::READY, None),
        (Some(secret), _) => (
            host_state::SECRET_MISSING,
            Some(format!(
                "Secret {}/{secret} does not exist: create it (kubectl create secret tls {secret} --cert=... --key=...)",
                app.namespace().unwrap_or_default()
            )),
        ),
        (None, Some(_)) => {
            let ready = seen
                .certificate
                .as_ref()
                .and_then(|c| c.status.as_ref())
                .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
            match ready {
                Some(c) if c.status == "True" => (host_state::READY, None),
                Some(c) => (host_state::ISSUING, Some(format!("{}: {}", c.reason, c.message))),
                None => (
                    host_state::ISSUING,
                    Some(format!(
                        "Certificate {} has no verdict yet",
                        certificate_name(&name)
                    )),
                ),
            }
        }
        (None, None) => (host_state::NONE, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(ns: &str, name: &str, hosts: &[&str], held: &[(&str, i64)]) -> AetherApp {
        let mut app: AetherApp = serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1",
            "kind": "AetherApp",
            "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{ns}-{name}")},
            "spec": {
                "artifactRef": {"name": "a"},
                "hosts": hosts.iter().map(|h| serde_json::json!({"name": h})).collect::<Vec<_>>(),
            },
        }))
        .unwrap();
        if !held.is_empty() {
            let mut status = aether_crds::AetherAppStatus::default();
            for (h, at) in held {
                status.hosts.push(HostStatus {
                    name: h.to_string(),
                    url: format!("https://{h}/"),
                    claimed_at: Time(Timestamp::from_second(*at).unwrap()),
                    certificate: "Ready".into(),
                    route: None,
                    message: None,
                });
            }
            app.status = Some(status);
        }
        app
    }

    fn no_ingress() -> [&'static Ingress; 0] {
        []
    }

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).unwrap()
    }

    #[test]
    fn a_host_nobody_holds_is_the_apps_from_now() {
        let shop = app("a", "shop", &["shop.example.com"], &[]);
        let claims = claims(&shop, [&shop], no_ingress(), now());
        assert_eq!(claims.held.len(), 1);
        assert_eq!(claims.held[0].1, now());
        assert!(claims.refusal("a").is_none());
    }

    #[test]
    fn a_host_another_app_holds_is_refused_and_says_who_holds_it() {
        let holder = app("b", "web", &["shop.example.com"], &[("shop.example.com", 10)]);
        let shop = app("a", "shop", &["shop.example.com", "free.example.com"], &[]);
        let claims = claims(&shop, [&holder, &shop], no_ingress(), now());
        assert_eq!(claims.refused.len(), 1);
        assert_eq!(claims.refused[0].1.name, "web");
        assert_eq!(claims.held.len(), 1, "the free host is still the app's");
        let refusal = claims.refusal("a").unwrap();
        assert_eq!(refusal.reason, "HostClaimed");
        assert!(!refusal.waiting);
        // Another namespace's app is not named to a tenant; one of its own is.
        let said = &refusal.message;
        assert!(
            said.contains("shop.example.com (held by an app of another namespace)"),
            "{said}"
        );
        assert!(!said.contains("web"), "{said}");
        let own = claims.refusal("b").unwrap();
        assert!(own.message.contains("held by AetherApp web"), "{}", own.message);
    }

    #[test]
    fn a_holder_keeps_its_host_and_asks_a_later_holder_to_look_again() {
        // Two apps that claimed at once (neither saw the other): the earlier wins.
        let first = app("b", "web", &["shop.example.com"], &[("shop.example.com", 10)]);
        let later = app("a", "shop", &["shop.example.com"], &[("shop.example.com", 11)]);
        let of_first = claims(&first, [&first, &later], no_ingress(), now());
        assert!(of_first.refused.is_empty());
        assert_eq!(of_first.outranked, vec![ObjectRef::from_obj(&later)]);
        let of_later = claims(&later, [&first, &later], no_ingress(), now());
        assert_eq!(of_later.refused.len(), 1);
        assert!(of_later.held.is_empty());
    }

    #[test]
    fn a_tie_is_broken_by_namespace_and_name_the_same_way_for_both() {
        let a = app("a", "shop", &["shop.example.com"], &[("shop.example.com", 10)]);
        let b = app("b", "shop", &["shop.example.com"], &[("shop.example.com", 10)]);
        assert!(claims(&a, [&a, &b], no_ingress(), now()).refused.is_empty());
        assert_eq!(claims(&b, [&a, &b], no_ingress(), now()).refused.len(), 1);
    }

    #[test]
    fn an_app_holds_what_its_status_routes_until_it_lets_go_or_is_deleted() {
        // Its spec no longer asks (it may be suspended: its Ingress still routes).
        let suspended = app("b", "web", &[], &[("shop.example.com", 10)]);
        let shop = app("a", "shop", &["shop.example.com"], &[]);
        assert_eq!(
            claims(&shop, [&suspended, &shop], no_ingress(), now())
                .refused
                .len(),
            1
        );
        let mut let_go = suspended.clone();
        let_go.status = None;
        let mut deleted = app("c", "web", &["shop.example.com"], &[("shop.example.com", 5)]);
        deleted.metadata.deletion_timestamp = Some(Time(now()));
        assert!(
            claims(&shop, [&let_go, &deleted, &shop], no_ingress(), now())
                .refused
                .is_empty()
        );
    }

    fn routing(ns: &str, name: &str, host: &str, owner_uid: Option<&str>) -> Ingress {
        serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": name, "namespace": ns,
                "ownerReferences": owner_uid.map(|uid| vec![serde_json::json!({
                    "apiVersion": "aether.dev/v1alpha1", "kind": "AetherApp", "name": name,
                    "uid": uid, "controller": true,
                })]),
            },
            "spec": {"rules": [{"host": host}]},
        }))
        .unwrap()
    }

    #[test]
    fn an_ingress_no_app_owns_holds_its_hosts() {
        let shop = app("a", "shop", &["shop.example.com"], &[]);
        // A cluster admin's, or one orphaned by `kubectl delete --cascade=orphan`
        // (the garbage collector strips its owner).
        let admins = routing("ops", "grafana", "shop.example.com", None);
        let orphan = routing("b", "squat", "shop.example.com", None);
        for ingress in [&admins, &orphan] {
            let claims = claims(&shop, [&shop], [ingress], now());
            assert!(claims.held.is_empty());
            let refusal = claims.refusal("a").unwrap();
            assert!(
                refusal
                    .message
                    .contains("routed by an Ingress of another namespace"),
                "{}",
                refusal.message
            );
        }
        // Its own Ingress, another app's (whose status decides), and a deleted app's
        // (about to be collected) hold nothing.
        let own = routing("a", "shop", "shop.example.com", Some("uid-a-shop"));
        let rival = app("b", "web", &["shop.example.com"], &[]);
        let rivals = routing("b", "web", "shop.example.com", Some("uid-b-web"));
        let collected = routing("a", "shop", "shop.example.com", Some("uid-deleted"));
        let ingresses = [&own, &rivals, &collected];
        assert!(
            claims(&shop, [&shop, &rival], ingresses, now())
                .refused
                .is_empty()
        );
        // One made after the app held the host takes nothing from it.
        let holder = app("a", "shop", &["shop.example.com"], &[("shop.example.com", 10)]);
        let mut later = routing("ops", "grafana", "shop.example.com", None);
        later.metadata.creation_timestamp = Some(Time(Timestamp::from_second(20).unwrap()));
        assert!(claims(&holder, [&holder], [&later], now()).refused.is_empty());
        let mut earlier = later.clone();
        earlier.metadata.creation_timestamp = Some(Time(Timestamp::from_second(5).unwrap()));
        assert_eq!(claims(&holder, [&holder], [&earlier], now()).refused.len(), 1);
    }

    #[test]
    fn the_ingress_routes_held_hosts_to_the_service_with_their_certificates() {
        let mut shop = app("a", "shop", &["shop.example.com", "own.example.com"], &[]);
        shop.spec.hosts[1].tls_secret_name = Some("own-cert".into());
        let config = Config {
            ingress_class: Some("traefik".into()),
            issuer: Some("ClusterIssuer/local-ca".parse().unwrap()),
            ..Default::default()
        };
        let held: Vec<Host> = shop.spec.hosts.clone();
        let ingress = ingress(&shop, &held, &config).unwrap();
        assert_eq!(ingress.metadata.name.as_deref(), Some("shop"));
        assert!(ingress.metadata.owner_references.is_some());
        let spec = ingress.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("traefik"));
        let rules = spec.rules.unwrap();
        assert_eq!(rules[0].host.as_deref(), Some("shop.example.com"));
        let backend = rules[0].http.as_ref().unwrap().paths[0]
            .backend
            .service
            .clone()
            .unwrap();
        assert_eq!(
            (backend.name.as_str(), backend.port.unwrap().number),
            ("shop", Some(80))
        );
        let tls = spec.tls.unwrap();
        assert_eq!(tls.len(), 2);
        assert_eq!(tls[0].secret_name.as_deref(), Some("aether.shop.tls"));
        assert_eq!(tls[0].hosts, Some(vec!["shop.example.com".into()]));
        assert_eq!(tls[1].secret_name.as_deref(), Some("own-cert"));

        let cert = certificate(&shop, &held, &config).unwrap();
        assert_eq!(cert.spec.dns_names, vec!["shop.example.com".to_string()]);
        assert_eq!(cert.spec.secret_name, "aether.shop.tls");
        assert_eq!(cert.spec.issuer_ref.kind, "ClusterIssuer");
        assert_eq!(cert.spec.issuer_ref.name, "local-ca");
    }

    #[test]
    fn without_hosts_or_issuer_nothing_is_made_and_hosts_are_plain_http() {
        let shop = app("a", "shop", &["shop.example.com"], &[]);
        assert!(ingress(&shop, &[], &Config::default()).is_none());
        let held = shop.spec.hosts.clone();
        assert!(certificate(&shop, &held, &Config::default()).is_none());
        let ingress = ingress(&shop, &held, &Config::default()).unwrap();
        assert!(ingress.spec.unwrap().tls.is_none());
        let claims = claims(&shop, [&shop], no_ingress(), now());
        let status = status(&shop, &claims, &Config::default(), &Observed::default());
        assert_eq!(status[0].url, "http://shop.example.com/");
        assert_eq!(status[0].certificate, "None");
    }

    #[test]
    fn status_says_whether_each_certificate_is_ready() {
        let mut shop = app("a", "shop", &["shop.example.com", "own.example.com"], &[]);
        shop.spec.hosts[1].tls_secret_name = Some("own-cert".into());
        let config = Config {
            ingress_class: None,
            issuer: Some("ClusterIssuer/local-ca".parse().unwrap()),
            ..Default::default()
        };
        let claims = claims(&shop, [&shop], no_ingress(), now());
        let mut cert = certificate(&shop, &shop.spec.hosts, &config).unwrap();
        let issuing = status(
            &shop,
            &claims,
            &config,
            &Observed {
                certificate: Some(cert.clone()),
                secrets_present: vec![],
                ..Default::default()
            },
        );
        assert_eq!(issuing[0].certificate, "Issuing");
        assert_eq!(issuing[0].url, "https://shop.example.com/");
        assert_eq!(issuing[1].certificate, "SecretMissing");
        assert!(issuing[1].message.as_ref().unwrap().contains("a/own-cert"));

        cert.status = Some(CertificateStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: "issued".into(),
                last_transition_time: Time(now()),
                observed_generation: None,
            }],
        });
        let ready = status(
            &shop,
            &claims,
            &config,
            &Observed {
                certificate: Some(cert.clone()),
                secrets_present: vec!["own-cert".into()],
                ..Default::default()
            },
        );
        assert_eq!(ready[0].certificate, "Ready");
        assert_eq!(ready[1].certificate, "Ready");
    }

    #[test]
    fn an_http_route_no_app_owns_holds_its_hosts_like_an_ingress() {
        let shop = app("a", "shop", &["shop.example.com"], &[]);
        let route = |ns: &str, hostnames: &[&str]| {
            let mut r = HttpRoute::new(
                "admins",
                gateway::HttpRouteSpec {
                    hostnames: hostnames.iter().map(|h| h.to_string()).collect(),
                    ..Default::default()
                },
            );
            r.metadata.namespace = Some(ns.into());
            r
        };
        let admins = route("ops", &["shop.example.com"]);
        let held_by_admins = claims(&shop, [&shop], [Routing::from(&admins)], now());
        assert!(held_by_admins.held.is_empty());
        let said = held_by_admins.refusal("a").unwrap().message;
        assert!(
            said.contains("routed by an HTTPRoute of another namespace"),
            "{said}"
        );
        assert!(!said.contains("ops") && !said.contains("admins"), "{said}");
        let own_namespace = claims_of(&shop, &route("a", &["shop.example.com"]));
        assert!(
            own_namespace.contains("routed by HTTPRoute admins, which is no app's"),
            "{own_namespace}"
        );
        // A wildcard route yields to an app's exact host at the controller.
        let wildcard = route("ops", &["*.example.com"]);
        assert!(
            claims(&shop, [&shop], [Routing::from(&wildcard)], now())
                .refused
                .is_empty()
        );
    }

    fn claims_of(app: &AetherApp, route: &HttpRoute) -> String {
        claims(app, [app], [Routing::from(route)], now())
            .refusal("a")
            .unwrap()
            .message
    }

    fn gateway_only() -> Config {
        Config {
            gateway: Some("infra/public".parse().unwrap()),
            issuer: Some("ClusterIssuer/local-ca".parse().unwrap()),
            ..Default::default()
        }
    }

    #[test]
    fn with_only_a_gateway_named_hosts_are_routed_by_http_routes_with_the_gateway_s_tls() {
        let config = gateway_only();
        assert!(!config.ingress());
        let shop = app("a", "shop", &["shop.apps.example.com"], &[]);
        let held = shop.spec.hosts.clone();
        assert!(ingress(&shop, &held, &config).is_none(), "no Ingress");
        assert!(
            certificate(&shop, &held, &config).is_none(),
            "the Gateway's listeners hold it"
        );
        let claims = claims(&shop, [&shop], no_ingress(), now());
        let mut gw = Gateway::new(
            "public",
            gateway::GatewaySpec {
                listeners: vec![gateway::Listener {
                    name: "apps".into(),
                    hostname: Some("*.apps.example.com".into()),
                    protocol: "HTTPS".into(),
                }],
            },
        );
        gw.status = Some(gateway::GatewayStatus {
            listeners: vec![gateway::ListenerStatus {
                name: "apps".into(),
                conditions: vec![Condition {
                    type_: "Programmed".into(),
                    status: "True".into(),
                    reason: "Programmed".into(),
                    message: String::new(),
                    last_transition_time: Time(now()),
                    observed_generation: None,
                }],
            }],
        });
        let mut route = gateway::http_route(&shop, &held, config.gateway.as_ref().unwrap()).unwrap();
        let seen = |route: &HttpRoute| Observed {
            http_route: Some(route.clone()),
            gateway: Some(gw.clone()),
            ..Default::default()
        };
        let pending = status(&shop, &claims, &config, &seen(&route));
        assert_eq!(pending[0].url, "https://shop.apps.example.com/");
        assert_eq!(pending[0].certificate, "Ready");
        assert_eq!(pending[0].route.as_deref(), Some("Pending"));
        assert!(pending[0].message.as_ref().unwrap().contains("not accepted"));
        route.status = Some(gateway::HttpRouteStatus {
            parents: vec![gateway::RouteParentStatus {
                parent_ref: route.spec.parent_refs[0].clone(),
                conditions: vec![Condition {
                    type_: "Accepted".into(),
                    status: "True".into(),
                    reason: "Accepted".into(),
                    message: String::new(),
                    last_transition_time: Time(now()),
                    observed_generation: None,
                }],
            }],
        });
        let accepted = status(&shop, &claims, &config, &seen(&route));
        assert_eq!(accepted[0].route.as_deref(), Some("Accepted"));
        assert_eq!(accepted[0].message, None);
        assert!(unservable(&shop, &config).is_none());
        // Gateway API missing, or a permission: the hosts say so (and stay held).
        let failed = Observed {
            route_error: Some("the HTTPRoute could not be written: 404".into()),
            ..Default::default()
        };
        let unavailable = status(&shop, &claims, &config, &failed);
        assert_eq!(unavailable.len(), 1);
        assert_eq!(unavailable[0].route.as_deref(), Some("Unavailable"));
        assert_eq!(unavailable[0].certificate, "NotReady");
        assert!(unavailable[0].message.as_ref().unwrap().contains("404"));
    }

    #[test]
    fn a_host_s_own_secret_is_refused_where_tls_ends_only_at_the_gateway() {
        let mut shop = app("a", "shop", &["shop.example.com", "own.example.com"], &[]);
        shop.spec.hosts[1].tls_secret_name = Some("own-cert".into());
        let refusal = unservable(&shop, &gateway_only()).unwrap();
        assert!(!refusal.waiting);
        assert!(refusal.message.contains("own.example.com"), "{}", refusal.message);
        assert!(
            !refusal.message.contains("shop.example.com"),
            "{}",
            refusal.message
        );
        assert!(refusal.message.contains("infra/public"), "{}", refusal.message);
        // With an ingress class too, the Ingress serves the Secret, the HTTPRoute the rest.
        let both = Config {
            ingress_class: Some("traefik".into()),
            ..gateway_only()
        };
        assert!(both.ingress());
        assert!(unservable(&shop, &both).is_none());
        assert!(unservable(&shop, &Config::default()).is_none());
        let held = shop.spec.hosts.clone();
        assert!(ingress(&shop, &held, &both).is_some());
        let claims = claims(&shop, [&shop], no_ingress(), now());
        let shown = status(&shop, &claims, &both, &Observed::default());
        assert_eq!(
            shown[1].certificate, "SecretMissing",
            "the Ingress's certificate is shown"
        );
        assert_eq!(shown[1].route.as_deref(), Some("Pending"));
        let ingress_only = status(&shop, &claims, &Config::default(), &Observed::default());
        assert_eq!(ingress_only[0].route, None);
    }

    #[test]
    fn issuers_parse_from_the_admins_flag() {
        assert_eq!(
            "Issuer/ca".parse::<Issuer>(),
            Ok(Issuer {
                kind: "Issuer".into(),
                name: "ca".into()
            })
        );
        assert!("ca".parse::<Issuer>().is_err());
        assert!("Secret/ca".parse::<Issuer>().is_err());
    }
}

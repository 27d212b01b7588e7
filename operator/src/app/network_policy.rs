//! The NetworkPolicy a cluster admin may have the operator give every app
//! (`--app-network-policies`): its pods take connections only from their own
//! namespace and from the ingress controller's, and reach only DNS, the storage
//! their fetch container downloads from, and what the admin allows. Named after the
//! app and owned by it; an aether-editor can neither change nor delete it.
//!
//! Pure: the admin's settings parsed once at start ([`Config::from_flags`]), the
//! policy built from them and the app ([`build`]).

use std::collections::BTreeMap;
use std::net::IpAddr;

use aether_crds::AetherApp;
use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

/// An address range apps may reach, on one port (TCP, or UDP) or any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The network, canonical (`10.0.0.0/8`, never `10.1.2.3/8`).
    pub cidr: String,
    pub port: Option<u16>,
    /// `TCP` or `UDP`, for a port.
    pub protocol: &'static str,
}

impl std::str::FromStr for Destination {
    type Err = String;

    /// `CIDR`, `CIDR:PORT` or `CIDR:PORT/UDP` (an IPv6 CIDR with a port in brackets:
    /// `[fd00::/8]:443`).
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (cidr, port) = match s.strip_prefix('[') {
            Some(rest) => {
                let (cidr, tail) = rest
                    .split_once(']')
                    .ok_or_else(|| format!("{s}: expected [CIDR]:PORT"))?;
                match tail {
                    "" => (cidr, None),
                    _ => (
                        cidr,
                        Some(
                            tail.strip_prefix(':')
                                .ok_or_else(|| format!("{s}: expected [CIDR]:PORT"))?,
                        ),
                    ),
                }
            }
            None => match s.rsplit_once(':') {
                Some((cidr, port)) if !cidr.contains(':') => (cidr, Some(port)),
                _ => (s, None),
            },
        };
        let (ip, bits) = cidr
            .split_once('/')
            .ok_or_else(|| format!("{s}: expected CIDR (address/prefix length)"))?;
        let ip: IpAddr = ip.parse().map_err(|e| format!("{s}: {e}"))?;
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let bits: u8 = match bits.parse() {
            Ok(b) if b <= max && bits.chars().all(|c| c.is_ascii_digit()) => b,
            _ => return Err(format!("{s}: prefix length must be 0 to {max}")),
        };
        let (port, protocol) = match port {
            None => (None, "TCP"),
            Some(p) => {
                let (number, protocol) = match p.split_once('/') {
                    Some((n, proto)) if proto.eq_ignore_ascii_case("udp") => (n, "UDP"),
                    Some((n, proto)) if proto.eq_ignore_ascii_case("tcp") => (n, "TCP"),
                    Some(_) => return Err(format!("{s}: protocol must be TCP or UDP")),
                    None => (p, "TCP"),
                };
                let number = number
                    .parse::<u16>()
                    .ok()
                    .filter(|n| *n > 0 && number.chars().all(|c| c.is_ascii_digit()))
                    .ok_or(format!("{s}: bad port {number}"))?;
                (Some(number), protocol)
            }
        };
        Ok(Self {
            cidr: format!("{}/{bits}", network(ip, bits)),
            port,
            protocol,
        })
    }
}

/// The first address of `ip/bits`.
fn network(ip: IpAddr, bits: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(bits)).unwrap_or(0);
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(bits)).unwrap_or(0);
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

/// The NetworkPolicy's name for app `app`: one no AetherApp can take (app names have
/// no dot), as its ServiceAccount's.
pub fn name(app: &str) -> String {
    format!("aether.{app}")
}

/// The admin's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Labels of the namespaces whose pods may connect besides the app's own (the
    /// ingress controller's); empty: none.
    pub ingress_namespaces: BTreeMap<String, String>,
    /// Where the fetch container downloads the app from.
    pub storage: Destination,
    /// Anything else the admin lets apps reach.
    pub egress: Vec<Destination>,
}

impl Config {
    /// None unless `enabled`. `storage` defaults to the host of the endpoint pods
    /// download from, when that is an IP address (a NetworkPolicy cannot name a
    /// host); `ingress_namespaces` is `key=value,...`, `egress` a list of
    /// destinations.
    pub fn from_flags(
        enabled: bool,
        ingress_namespaces: &str,
        storage: Option<&str>,
        egress: &str,
        download_endpoint: Option<&str>,
    ) -> Result<Option<Self>, String> {
        if !enabled {
            return Ok(None);
        }
        let ingress_namespaces = ingress_namespaces
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|pair| match pair.split_once('=') {
                Some((k, v)) if !k.trim().is_empty() && !v.trim().is_empty() => {
                    Ok((k.trim().to_string(), v.trim().to_string()))
                }
                _ => Err(format!("ingress namespaces: {pair}: expected key=value")),
            })
            .collect::<Result<BTreeMap<_, _>, String>>()?;
        let storage = match storage.filter(|s| !s.trim().is_empty()) {
            Some(s) => s.parse()?,
            None => storage_from_endpoint(download_endpoint).ok_or_else(|| {
                format!(
                    "app network policies need the storage's address range \
                     (AETHER_NETWORK_POLICY_STORAGE, CIDR:PORT): the endpoint pods download \
                     from ({}) is not an IP address",
                    download_endpoint.unwrap_or("AWS's regional one")
                )
            })?,
        };
        let egress = egress
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(str::parse)
            .collect::<Result<Vec<Destination>, String>>()?;
        Ok(Some(Self {
            ingress_namespaces,
            storage,
            egress,
        }))
    }
}

/// `http://10.88.0.1:3900` → `10.88.0.1/32:3900`; None for a host name.
fn storage_from_endpoint(endpoint: Option<&str>) -> Option<Destination> {
    let uri: hyper::Uri = endpoint?.parse().ok()?;
    let host = uri.host()?.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = host.parse().ok()?;
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") {
        443
    } else {
        80
    });
    Some(Destination {
        cidr: format!("{ip}/{}", if ip.is_ipv4() { 32 } else { 128 }),
        port: Some(port),
        protocol: "TCP",
    })
}

fn port(port: Option<u16>, protocol: &str) -> Option<Vec<NetworkPolicyPort>> {
    port.map(|p| {
        vec![NetworkPolicyPort {
            protocol: Some(protocol.into()),
            port: Some(IntOrString::Int(p.into())),
            ..Default::default()
        }]
    })
}

fn to(d: &Destination) -> NetworkPolicyEgressRule {
    NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: d.cidr.clone(),
                except: None,
            }),
            ..Default::default()
        }]),
        ports: port(d.port, d.protocol),
    }
}

fn matching(labels: BTreeMap<String, String>) -> LabelSelector {
    LabelSelector {
        match_labels: Some(labels),
        ..Default::default()
    }
}

/// The app's policy: its pods (the Deployment's selector, and Aether's own label, so
/// no other workload labelled like them is caught) take connections on the app's
/// port from pods of their namespace and of the ingress namespaces, and connect to
/// pods of their namespace, cluster DNS, storage and the admin's destinations.
pub fn build(app: &AetherApp, config: &Config) -> NetworkPolicy {
    let name = app.name_any();
    let own_namespace = NetworkPolicyPeer {
        pod_selector: Some(LabelSelector::default()),
        ..Default::default()
    };
    let mut from = vec![own_namespace.clone()];
    if !config.ingress_namespaces.is_empty() {
        from.push(NetworkPolicyPeer {
            namespace_selector: Some(matching(config.ingress_namespaces.clone())),
            ..Default::default()
        });
    }
    let dns = NetworkPolicyEgressRule {
        to: Some(vec![NetworkPolicyPeer {
            namespace_selector: Some(matching(
                [(
                    "kubernetes.io/metadata.name".to_string(),
                    "kube-system".to_string(),
                )]
                .into(),
            )),
            pod_selector: Some(matching([("k8s-app".to_string(), "kube-dns".to_string())].into())),
            ..Default::default()
        }]),
        ports: Some(
            ["UDP", "TCP"]
                .into_iter()
                .map(|protocol| NetworkPolicyPort {
                    protocol: Some(protocol.into()),
                    port: Some(IntOrString::Int(53)),
                    ..Default::default()
                })
                .collect(),
        ),
    };
    let mut pods = super::build::selector_labels(&name);
    pods.insert("app.kubernetes.io/part-of".into(), "aether".into());
    NetworkPolicy {
        metadata: super::build::owned_meta(app, self::name(&name)),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(matching(pods)),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: port(u16::try_from(app.spec.port).ok(), "TCP"),
            }]),
            egress: Some(
                [
                    NetworkPolicyEgressRule {
                        to: Some(vec![own_namespace]),
                        ports: None,
                    },
                    dns,
                    to(&config.storage),
                ]
                .into_iter()
                .chain(config.egress.iter().map(to))
                .collect(),
            ),
        }),
    }
}

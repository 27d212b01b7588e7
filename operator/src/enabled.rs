//! Which namespaces a cluster admin enabled for Aether: those where the operator's
//! ServiceAccount holds `aether-operator-namespace` (config/tenant). The operator
//! asks the API server (a SelfSubjectAccessReview) for a permission only that role
//! grants, `use` of `aether.dev/enablement`: no built-in role holds it, so a
//! tenant, even one with `admin` in the namespace, cannot bind the role (RBAC
//! refuses to grant what the granter lacks) and enable the namespace themselves.
//! A "yes" is remembered briefly. In a namespace nobody enabled the operator
//! writes nothing and touches no storage: apps and artifacts there say so instead.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use kube::Api;
use kube::api::PostParams;

/// How long a "yes" is trusted: disabling a namespace takes effect this fast. A "no"
/// is not remembered: an admin enabling one is followed at once by a push ("push
/// again", the refusal says), which must then work. (Otherwise, objects in a
/// namespace nobody enabled are looked at again within a minute, apps five.)
const REMEMBER: Duration = Duration::from_secs(30);

/// How long after a RoleBinding is created the API server's authorizer may still
/// answer as if it were not (it learns of bindings through a watch).
pub const LAG: Duration = Duration::from_secs(1);

pub struct Enablement {
    client: kube::Client,
    /// Where the operator runs, for the message that says how to enable a namespace.
    operator_namespace: String,
    answers: Mutex<HashMap<String, (bool, Instant)>>,
    /// When each namespace was last asked about again after [`LAG`].
    rechecks: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for Enablement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Enablement")
            .field("operator_namespace", &self.operator_namespace)
            .finish()
    }
}

impl Enablement {
    pub fn new(client: kube::Client, operator_namespace: String) -> Self {
        Self {
            client,
            operator_namespace,
            answers: Mutex::default(),
            rechecks: Mutex::default(),
        }
    }

    /// Is `ns` enabled, asked once more after [`LAG`]? Once per namespace per `LAG`
    /// at most (a later caller gets the answer now): the wait holds a reconcile slot,
    /// and a tenant could otherwise keep every slot waiting by asking again and again.
    pub async fn check_after_lag(&self, ns: &str) -> Result<bool, kube::Error> {
        let wait = {
            let mut rechecks = self.rechecks.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            rechecks.retain(|_, at| now.duration_since(*at) < LAG);
            let first = !rechecks.contains_key(ns);
            if first {
                rechecks.insert(ns.to_string(), now);
            }
            first
        };
        if wait {
            tokio::time::sleep(LAG).await;
        }
        self.check(ns).await
    }

    /// Is `ns` enabled?
    pub async fn check(&self, ns: &str) -> Result<bool, kube::Error> {
        if let Some((enabled, at)) = self.answers.lock().unwrap_or_else(|e| e.into_inner()).get(ns)
            && *enabled
            && at.elapsed() < REMEMBER
        {
            return Ok(*enabled);
        }
        let review = SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns.to_string()),
                    group: Some(aether_crds::GROUP.into()),
                    verb: Some("use".into()),
                    resource: Some("enablement".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SelfSubjectAccessReview> = Api::all(self.client.clone());
        let answer = api.create(&PostParams::default(), &review).await?;
        let enabled = answer.status.is_some_and(|s| s.allowed);
        self.answers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ns.to_string(), (enabled, Instant::now()));
        Ok(enabled)
    }

    /// What an app or artifact in `ns` says while the namespace is not enabled.
    pub fn message(&self, ns: &str) -> String {
        message(ns, &self.operator_namespace)
    }
}

/// The `NamespaceNotEnabled` message: what is missing, and the command that fixes it.
pub fn message(ns: &str, operator_namespace: &str) -> String {
    format!(
        "the operator may not manage apps in {ns}; a cluster admin enables the namespace: kubectl -n {ns} create rolebinding aether-operator --clusterrole aether-operator-namespace --serviceaccount {operator_namespace}:aether-operator"
    )
}

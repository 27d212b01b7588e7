//! The AetherPolicies that apply to a namespace, from the operator's cache of them
//! and the namespace's labels. Both controllers ask: the app controller for the
//! floor under an app, the artifact controller for the namespace's storage cap.

use std::time::Duration;

use aether_crds::AetherPolicy;
use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::runtime::reflector::Store;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("the AetherPolicies are not known yet (is their CRD installed, and may the operator list them?)")]
    Unknown,
    #[error("reading namespace {0}: {1}")]
    Namespace(String, #[source] kube::Error),
}

#[derive(Clone)]
pub struct Policies {
    pub client: kube::Client,
    /// Every AetherPolicy, as watched.
    pub store: Store<AetherPolicy>,
    /// When `store` has had its first full list.
    pub ready: crate::readiness::Readiness,
}

impl std::fmt::Debug for Policies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Policies").finish_non_exhaustive()
    }
}

impl Policies {
    /// The policies selecting `ns`, by name.
    pub async fn for_namespace(&self, ns: &str) -> Result<Vec<AetherPolicy>, PolicyError> {
        // Until the first list arrives no policy is known: never judge then (and fail,
        // rather than wait forever, when they cannot be listed at all).
        tokio::time::timeout(Duration::from_secs(10), self.ready.wait())
            .await
            .map_err(|_| PolicyError::Unknown)?;
        let all: Vec<AetherPolicy> = self.store.state().iter().map(|p| (**p).clone()).collect();
        // No policy, nothing to select (and no request).
        if all.is_empty() {
            return Ok(Vec::new());
        }
        let namespaces: Api<Namespace> = Api::all(self.client.clone());
        let labels = namespaces
            .get_metadata(ns)
            .await
            .map_err(|e| PolicyError::Namespace(ns.to_string(), e))?
            .metadata
            .labels
            .unwrap_or_default();
        Ok(crate::app::policy::selecting(&all, &labels)
            .into_iter()
            .cloned()
            .collect())
    }
}

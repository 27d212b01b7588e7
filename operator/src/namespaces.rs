//! Which namespaces are being deleted, from a watch of every namespace's metadata.
//!
//! Deleting a namespace deletes its apps' children as well as the apps, in no set
//! order. Each child's deletion woke its app, whose look then failed to write it
//! again (403: the namespace is terminating) and, once the admin's RoleBinding was
//! gone too, wrote NamespaceNotEnabled into the app's status: about 6000 looks for a
//! namespace of 1000 apps, each building every child and asking the API server, for
//! objects about to go. Nothing written there lasts, so apps and artifacts in a
//! namespace being deleted are left alone; only an artifact's own deletion (its
//! finalizer freeing its blobs) still runs.

use futures::Stream;
use k8s_openapi::api::core::v1::Namespace;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};

/// The namespaces as watched: names, and whether each is being deleted.
#[derive(Clone)]
pub struct Namespaces {
    store: Store<PartialObjectMeta<Namespace>>,
}

impl std::fmt::Debug for Namespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespaces").finish_non_exhaustive()
    }
}

impl Namespaces {
    /// The cache, and the watch that fills it (to drive). Metadata only, without its
    /// field managers and annotations: a namespace costs the operator a few hundred
    /// bytes.
    pub fn watch(
        client: &Client,
        lists: crate::lists::Lists,
    ) -> (
        Self,
        impl Stream<Item = Result<(), watcher::Error>> + Send + 'static,
    ) {
        let (store, writer) = reflector::store();
        let events = reflector(
            writer,
            watcher(
                Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
                lists.config(),
            )
            .modify(crate::app::observed::slim_meta),
        )
        .backoff(crate::backoff::WatchBackoff::default());
        (Self { store }, futures::StreamExt::map(events, |e| e.map(|_| ())))
    }

    /// Whether `ns` is being deleted, as last seen. False while the watch has not
    /// seen it (the first list not in yet, or no permission): the looks then go on
    /// as they would without this.
    pub fn terminating(&self, ns: &str) -> bool {
        self.store
            .get(&ObjectRef::new(ns))
            .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
    }

    #[cfg(test)]
    pub fn of(namespaces: Vec<PartialObjectMeta<Namespace>>) -> Self {
        let (store, mut writer) = reflector::store();
        for n in namespaces {
            writer.apply_watcher_event(&watcher::Event::Apply(n));
        }
        Self { store }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use kube::core::PartialObjectMetaExt as _;

    fn namespace(name: &str, deleting: bool) -> PartialObjectMeta<Namespace> {
        let mut n: PartialObjectMeta<Namespace> = ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        }
        .into_response_partial();
        if deleting {
            n.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::now()));
        }
        n
    }

    #[test]
    fn only_a_namespace_seen_being_deleted_is_terminating() {
        let namespaces = Namespaces::of(vec![namespace("going", true), namespace("staying", false)]);
        assert!(namespaces.terminating("going"));
        assert!(!namespaces.terminating("staying"));
        assert!(!namespaces.terminating("unseen"), "not seen: looked at as usual");
    }
}

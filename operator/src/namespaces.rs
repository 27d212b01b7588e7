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
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client};

/// When what is left alone in a namespace being deleted is looked at again all the
/// same (a safety net: it should be gone long before).
pub const LOOK_AGAIN: std::time::Duration = std::time::Duration::from_secs(300);

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
        let (watched, events) = crate::app::observed::cache(
            Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
            lists.config(),
            crate::app::observed::slim_meta,
        );
        let store = watched.store().clone();
        (Self { store }, futures::StreamExt::map(events, |e| e.map(|_| ())))
    }

    /// Whether the object of `meta` goes with its namespace: the namespace, as last
    /// seen, is being deleted, and the object was made before that began. One made
    /// since (or in the same second) is looked at as usual: it is in a namespace of
    /// the same name made again, which the watch has not seen yet, or slipped in
    /// while the API server was learning of the deletion. False too without a
    /// namespace or a creation time, and while the watch has not seen the namespace
    /// (its first list not in yet, or no permission): the looks then go on as they
    /// would without this.
    pub fn going(&self, meta: &ObjectMeta) -> bool {
        let Some(ns) = meta.namespace.as_deref() else {
            return false;
        };
        let deleted_at = self
            .store
            .get(&ObjectRef::new(ns))
            .and_then(|n| n.metadata.deletion_timestamp.clone());
        match (deleted_at, &meta.creation_timestamp) {
            (Some(deleted), Some(created)) => created.0 < deleted.0,
            _ => false,
        }
    }

    #[cfg(test)]
    pub fn of(namespaces: Vec<PartialObjectMeta<Namespace>>) -> Self {
        let (store, mut writer) = kube::runtime::reflector::store();
        for n in namespaces {
            writer.apply_watcher_event(&watcher::Event::Apply(n));
        }
        Self { store }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::{Timestamp, ToSpan};
    use kube::core::PartialObjectMetaExt as _;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::UNIX_EPOCH + seconds.seconds())
    }

    fn namespace(name: &str, deleted_at: Option<i64>) -> PartialObjectMeta<Namespace> {
        ObjectMeta {
            name: Some(name.into()),
            deletion_timestamp: deleted_at.map(at),
            ..ObjectMeta::default()
        }
        .into_response_partial()
    }

    fn object(ns: &str, created_at: i64) -> ObjectMeta {
        ObjectMeta {
            name: Some("web".into()),
            namespace: Some(ns.into()),
            creation_timestamp: Some(at(created_at)),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn what_was_made_before_its_namespace_began_to_go_goes_with_it() {
        let namespaces = Namespaces::of(vec![namespace("going", Some(100)), namespace("staying", None)]);
        assert!(namespaces.going(&object("going", 50)));
        assert!(!namespaces.going(&object("staying", 50)));
        assert!(
            !namespaces.going(&object("unseen", 50)),
            "not seen: looked at as usual"
        );
    }

    #[test]
    fn what_was_made_since_is_in_a_namespace_made_again() {
        // The watch still holds the old namespace of that name.
        let namespaces = Namespaces::of(vec![namespace("again", Some(100))]);
        assert!(!namespaces.going(&object("again", 100)));
        assert!(!namespaces.going(&object("again", 130)));
    }

    #[test]
    fn without_a_namespace_or_a_creation_time_nothing_goes() {
        let namespaces = Namespaces::of(vec![namespace("going", Some(100))]);
        let mut unmade = object("going", 50);
        unmade.creation_timestamp = None;
        assert!(!namespaces.going(&unmade));
        let mut cluster_wide = object("going", 50);
        cluster_wide.namespace = None;
        assert!(!namespaces.going(&cluster_wide));
    }
}

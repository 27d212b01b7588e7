//! An app's children as last watched, and what the operator last applied to them.
//!
//! Each look used to read every child from the API server and apply each one again:
//! about 19 requests a look, and a look more for each child's creation that its watch
//! reported back. On the 1000-app bench that was 95 requests per app, and the API
//! server (not the operator) was what every app waited for. Now:
//! - the children (Deployments, Services, ServiceAccounts, NetworkPolicies and
//!   HorizontalPodAutoscalers carrying the operator's label), the apps' ReplicaSets
//!   and every AetherRelease are watched into caches, each object kept with only what
//!   a look reads ([`slim_deployment`] and the others). A look reads there once a
//!   cache has listed them all, and asks the API server only about a name its cache
//!   does not hold: an object someone else made under that name carries no label,
//!   and must still be seen (see [`super::ownership`]);
//! - [`Applied`] remembers what was last applied to each child and the version that
//!   came back. A child whose wanted state is the same, and which nobody wrote since,
//!   is not applied again; the watch's report of the operator's own write wakes nobody;
//! - a Deployment wakes its app only on what its rollout is judged from;
//! - the fetch Secrets are not watched (that takes `list` on every Secret of the
//!   cluster, and their bytes in memory): [`FetchSecrets`] keeps each as the
//!   operator last wrote or read it, for a short while.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aether_crds::{AetherApp, AetherRelease};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount, ServiceSpec};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, ObjectMeta};
use kube::api::ListParams;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::warn;

use crate::readiness::Readiness;
use crate::triggers::{Changes, hash};

/// One kind of object, watched into a cache.
#[derive(Debug)]
pub struct Watched<K: Resource<DynamicType = ()> + 'static> {
    store: Store<K>,
    ready: Readiness,
}

impl<K: Resource<DynamicType = ()> + 'static> Clone for Watched<K> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            ready: self.ready.clone(),
        }
    }
}

impl<K: Resource<DynamicType = ()> + 'static> Watched<K> {
    /// The cache itself, for what is read by other than `ns/name` (cluster-scoped
    /// objects).
    pub fn store(&self) -> &Store<K> {
        &self.store
    }
}

impl<K> Watched<K>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    /// `ns/name` as the cache holds it; `None` also while it has not listed them all.
    pub fn cached(&self, ns: &str, name: &str) -> Option<K> {
        if !self.ready.is_ready() {
            return None;
        }
        self.store
            .get(&ObjectRef::new(name).within(ns))
            .map(|o| K::clone(&o))
    }

    /// Whether the cache has listed them all and holds no `ns/name`: there is none
    /// the operator labelled (one made by someone else may still exist).
    pub fn none_of_ours(&self, ns: &str, name: &str) -> bool {
        self.ready.is_ready() && self.store.get(&ObjectRef::new(name).within(ns)).is_none()
    }

    /// `ns/name`: from the cache if it holds it, else read.
    pub async fn get(&self, client: &Client, ns: &str, name: &str) -> Result<Option<K>, kube::Error> {
        match self.cached(ns, name) {
            Some(cached) => Ok(Some(cached)),
            None => Api::<K>::namespaced(client.clone(), ns).get_opt(name).await,
        }
    }

    /// `ns/name`, from a cache of every object that could be asked for (not only
    /// those the operator labelled): its word once it has listed them all, else read.
    pub async fn lookup(&self, client: &Client, ns: &str, name: &str) -> Result<Option<K>, kube::Error> {
        if self.ready.is_ready() {
            return Ok(self.cached(ns, name));
        }
        Api::<K>::namespaced(client.clone(), ns).get_opt(name).await
    }

    /// The objects in `ns` carrying every one of `labels`: from the cache once it
    /// has listed them all, else listed.
    pub async fn list(
        &self,
        client: &Client,
        ns: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<K>, kube::Error> {
        let labelled = |o: &K| labels.iter().all(|(k, v)| o.labels().get(k) == Some(v));
        if self.ready.is_ready() {
            return Ok(self
                .store
                .state()
                .iter()
                .filter(|o| o.meta().namespace.as_deref() == Some(ns) && labelled(o))
                .map(|o| K::clone(o))
                .collect());
        }
        let selector = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Api::<K>::namespaced(client.clone(), ns)
            .list(&ListParams::default().labels(&selector))
            .await?
            .items)
    }
}

/// The caches of the apps' children, ReplicaSets and releases.
#[derive(Clone, Debug)]
pub struct Children {
    pub deployments: Watched<Deployment>,
    pub services: Watched<Service>,
    pub service_accounts: Watched<ServiceAccount>,
    pub network_policies: Watched<NetworkPolicy>,
    pub autoscalers: Watched<HorizontalPodAutoscaler>,
    pub replica_sets: Watched<ReplicaSet>,
    pub releases: Watched<AetherRelease>,
}

/// The watches that fill [`Children`]: the streams to drive, each yielding what it
/// is for.
pub struct Watches {
    /// The apps whose children changed other than by the operator's own writes.
    pub wakes: BoxStream<'static, ObjectRef<AetherApp>>,
    /// The ReplicaSets' watch, which wakes nobody.
    pub replica_sets: BoxStream<'static, ()>,
    /// Deleted releases (their artifacts may go now).
    pub deleted_releases: BoxStream<'static, Result<AetherRelease, watcher::Error>>,
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches").finish_non_exhaustive()
    }
}

/// Watch the apps' children (by the label every one carries), their ReplicaSets
/// (by their pods' labels) and every AetherRelease.
pub fn watch(
    client: &Client,
    lists: crate::lists::Lists,
    managed_by: &str,
    apps: Store<AetherApp>,
    applied: Arc<Applied>,
) -> (Children, Watches) {
    let owned = lists.config().labels(managed_by);
    let (deployments, deployment_events) = cache(
        Api::<Deployment>::all(client.clone()),
        owned.clone(),
        slim_deployment,
    );
    let (services, service_events) = cache(Api::<Service>::all(client.clone()), owned.clone(), slim_service);
    let (service_accounts, account_events) = cache(
        Api::<ServiceAccount>::all(client.clone()),
        owned.clone(),
        slim_meta,
    );
    let (network_policies, policy_events) = cache(
        Api::<NetworkPolicy>::all(client.clone()),
        owned.clone(),
        slim_meta,
    );
    let (autoscalers, autoscaler_events) = cache(
        Api::<HorizontalPodAutoscaler>::all(client.clone()),
        owned,
        slim_meta,
    );
    let pods = lists.config().labels(super::build::PODS_SELECTOR);
    let (replica_sets, set_events) = cache(Api::<ReplicaSet>::all(client.clone()), pods, slim_replica_set);
    let (releases, release_events) = cache(
        Api::<AetherRelease>::all(client.clone()),
        lists.config(),
        slim_meta,
    );
    let wakes = futures::stream::select_all([
        wakes_of(deployment_events, deployment_for_app, &apps, &applied).boxed(),
        wakes_of(service_events, written::<Service>, &apps, &applied).boxed(),
        wakes_of(account_events, written::<ServiceAccount>, &apps, &applied).boxed(),
        wakes_of(policy_events, written::<NetworkPolicy>, &apps, &applied).boxed(),
        wakes_of(
            autoscaler_events,
            written::<HorizontalPodAutoscaler>,
            &apps,
            &applied,
        )
        .boxed(),
    ]);
    let replica_sets_driven = set_events.map(|_| ());
    let deleted_releases = release_events.try_filter_map(|event| {
        futures::future::ready(Ok(match event {
            watcher::Event::Delete(release) => Some(release),
            _ => None,
        }))
    });
    (
        Children {
            deployments,
            services,
            service_accounts,
            network_policies,
            autoscalers,
            replica_sets,
            releases,
        },
        Watches {
            wakes: wakes.boxed(),
            replica_sets: replica_sets_driven.boxed(),
            deleted_releases: deleted_releases.boxed(),
        },
    )
}

pub type Events<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// A cache of what `api` and `config` select, each object as `slim` leaves it, and
/// the watch that fills it (to drive).
pub fn cache<K>(api: Api<K>, config: watcher::Config, slim: fn(&mut K)) -> (Watched<K>, Events<K>)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + Sync + 'static,
{
    let (store, writer) = reflector::store::<K>();
    let (events, ready) = Readiness::follow(
        reflector::reflector(writer, watcher(api, config).modify(slim))
            // A missing permission (an install whose RBAC predates the watch) is retried
            // every 2 s; meanwhile looks read the API server.
            .backoff(crate::backoff::WatchBackoff::default()),
    );
    (Watched { store, ready }, events.boxed())
}

/// The apps to wake for a watch of children: each child's controlling app, when
/// `part` of the child changed (every deletion too) and the change is not the
/// operator's own last write of it.
fn wakes_of<K>(
    events: Events<K>,
    part: fn(&K) -> u64,
    apps: &Store<AetherApp>,
    applied: &Arc<Applied>,
) -> impl Stream<Item = ObjectRef<AetherApp>> + Send + 'static
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    let mut changes = Changes::of(part);
    let (apps, applied) = (apps.clone(), applied.clone());
    events
        .map(move |event| {
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    warn!(kind = %K::kind(&()), error = %e, "watching the apps' children: their changes are seen on the apps' next looks");
                    return Vec::new();
                }
            };
            let deleted = matches!(event, watcher::Event::Delete(_));
            changes
                .admit(&event)
                .into_iter()
                .filter(|child| {
                    if deleted {
                        applied.forget::<K>(child.meta());
                        true
                    } else {
                        !applied.is_own_write::<K>(child.meta())
                    }
                })
                .filter_map(|child| owning_app(child.meta()))
                .filter(|app| apps.get(app).is_some())
                .collect()
        })
        .flat_map(futures::stream::iter)
}

/// The AetherApp that controls `meta`.
fn owning_app(meta: &ObjectMeta) -> Option<ObjectRef<AetherApp>> {
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && o.kind == "AetherApp")?;
    Some(ObjectRef::new(&owner.name).within(meta.namespace.as_deref()?))
}

/// The labels and owners of an object: what an apply writes besides its spec.
fn labels_and_owners(meta: &ObjectMeta) -> u64 {
    hash((
        &meta.labels,
        serde_json::to_string(&meta.owner_references).unwrap_or_default(),
    ))
}

/// The children whose status others write (the Deployment and autoscaler
/// controllers): of those, what matters is the spec's generation, not the object's
/// every version.
fn status_written_by_others<K: Resource<DynamicType = ()>>() -> bool {
    matches!(K::kind(&()).as_ref(), "Deployment" | "HorizontalPodAutoscaler")
}

/// What others may write of a child: its spec (the whole object's version, or its
/// generation where others write its status), labels, owners and deletion.
fn written<K: Resource<DynamicType = ()>>(child: &K) -> u64 {
    let meta = child.meta();
    let spec = if status_written_by_others::<K>() {
        meta.generation.map(|g| g.to_string())
    } else {
        meta.resource_version.clone()
    };
    hash((
        &meta.uid,
        spec,
        labels_and_owners(meta),
        meta.deletion_timestamp.as_ref().map(|t| t.0),
    ))
}

/// What of a Deployment its app's look reads: what others may write of it and the
/// rollout's progress ([`super::status::rollout`]); not the conditions' times and
/// messages the Deployment controller rewrites.
pub fn deployment_for_app(deployment: &Deployment) -> u64 {
    let status = deployment.status.clone().unwrap_or_default();
    let deadline = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded"));
    hash((
        written(deployment),
        status.observed_generation,
        status.replicas,
        status.updated_replicas,
        status.available_replicas,
        status.ready_replicas,
        deadline,
    ))
}

/// What the operator last applied to each child, and the version that came back.
#[derive(Debug, Default)]
pub struct Applied(Mutex<HashMap<String, Record>>);

#[derive(Debug)]
struct Record {
    /// The hash of what was applied.
    wanted: u64,
    /// The object written (one made again under its name is another).
    uid: Option<String>,
    /// `namespace/name` of the app that owns it.
    app: Option<String>,
    version: Option<String>,
    generation: Option<i64>,
    labels_and_owners: u64,
}

impl Applied {
    fn key<K: Resource<DynamicType = ()>>(meta: &ObjectMeta) -> String {
        format!(
            "{}/{}/{}",
            K::kind(&()),
            meta.namespace.as_deref().unwrap_or_default(),
            meta.name.as_deref().unwrap_or_default()
        )
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Record>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether applying `wanted` over `current` (as last seen) would change
    /// nothing: the same was applied last, and nobody wrote the object since. Its
    /// version is the one the apply came back with or, where others write its
    /// status, its spec's generation, labels and owners are.
    pub fn unchanged<K: Resource<DynamicType = ()>>(&self, current: Option<&K>, wanted: u64) -> bool {
        let Some(meta) = current.map(Resource::meta) else {
            return false;
        };
        self.lock().get(&Self::key::<K>(meta)).is_some_and(|r| {
            r.wanted == wanted
                && r.uid == meta.uid
                && (r.version.is_some() && r.version == meta.resource_version
                    || r.generation.is_some()
                        && r.generation == meta.generation
                        && r.labels_and_owners == labels_and_owners(meta))
        })
    }

    /// `written` is what applying `wanted` came back with.
    pub fn record<K: Resource<DynamicType = ()>>(&self, written: &K, wanted: u64) {
        let meta = written.meta();
        self.lock().insert(
            Self::key::<K>(meta),
            Record {
                wanted,
                uid: meta.uid.clone(),
                app: owning_app(meta)
                    .map(|app| format!("{}/{}", app.namespace.unwrap_or_default(), app.name)),
                version: meta.resource_version.clone(),
                generation: meta.generation.filter(|_| status_written_by_others::<K>()),
                labels_and_owners: labels_and_owners(meta),
            },
        );
    }

    /// Whether `meta` is the version the operator's own last apply came back with.
    pub fn is_own_write<K: Resource<DynamicType = ()>>(&self, meta: &ObjectMeta) -> bool {
        self.lock()
            .get(&Self::key::<K>(meta))
            .is_some_and(|r| r.version.is_some() && r.version == meta.resource_version)
    }

    pub fn forget<K: Resource<DynamicType = ()>>(&self, meta: &ObjectMeta) {
        self.lock().remove(&Self::key::<K>(meta));
    }

    /// Forget every child of the app `namespace/name` (deleted): those of kinds not
    /// watched (its fetch Secret, its routes) are not forgotten otherwise.
    pub fn forget_app(&self, app: &str) {
        self.lock().retain(|_, r| r.app.as_deref() != Some(app));
    }
}

/// How long a fetch Secret the operator wrote or read stands for it.
///
/// Each look of an app used to read its fetch Secret: six GETs per app on its way to
/// Ready, the most of any request on the 1000-app bench. The Secret is the
/// operator's own and the fetch container checks every byte it downloads, so a
/// change someone else makes to it (or its deletion) goes unseen by the looks within
/// this time; the first look after it reads the Secret again and undoes the change
/// (nothing looks sooner for it: the Secret is not watched). Likewise a namespace
/// whose RoleBinding an admin took back says NamespaceNotEnabled only once the memo
/// has lapsed; meanwhile the operator's writes there are refused.
pub const FETCH_SECRET_MEMO: Duration = Duration::from_secs(120);

/// Each app's fetch Secret as the operator last wrote or read it, and when; kept
/// [`FETCH_SECRET_MEMO`], forgotten with the app.
#[derive(Debug, Default)]
pub struct FetchSecrets(Mutex<Memo>);

#[derive(Debug, Default)]
struct Memo {
    entries: HashMap<String, (Instant, Secret)>,
    /// When expired entries were last dropped.
    swept: Option<Instant>,
}

impl FetchSecrets {
    fn key(ns: &str, name: &str) -> String {
        format!("{ns}/{name}")
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Memo> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The Secret `ns/name` as last written or read, if that was within the memo's
    /// time, and it is owned by the app of UID `owner` (an app made again under its
    /// name, whose deletion the watch did not report, reads it afresh).
    pub fn recent(&self, ns: &str, name: &str, owner: &str, now: Instant) -> Option<Secret> {
        self.lock()
            .entries
            .get(&Self::key(ns, name))
            .filter(|(at, _)| now.saturating_duration_since(*at) < FETCH_SECRET_MEMO)
            .map(|(_, secret)| secret)
            .filter(|secret| super::ownership::owned_by(&secret.metadata, owner))
            .cloned()
    }

    /// `secret`, just read: remembered if the app of UID `owner` owns it (another's
    /// is never taken from here).
    pub fn read(&self, secret: &Secret, owner: &str, now: Instant) {
        if super::ownership::owned_by(&secret.metadata, owner) {
            self.insert(secret, now);
        }
    }

    /// An apply of the Secret came back with `after`: remembered, unless it is
    /// `before` as it was (an apply skipped as unchanged, or one that changed
    /// nothing, learned nothing new of it, and does not make the memo younger).
    pub fn applied(&self, before: Option<&Secret>, after: &Secret, now: Instant) {
        let version = |s: &Secret| (s.metadata.uid.clone(), s.metadata.resource_version.clone());
        if before.is_none_or(|before| version(before) != version(after)) {
            self.insert(after, now);
        }
    }

    fn insert(&self, secret: &Secret, now: Instant) {
        let mut secret = secret.clone();
        slim_meta(&mut secret);
        let key = Self::key(
            secret.metadata.namespace.as_deref().unwrap_or_default(),
            secret.metadata.name.as_deref().unwrap_or_default(),
        );
        let mut memo = self.lock();
        memo.entries.insert(key, (now, secret));
        // Those no look asked for since expired are dropped, every so often.
        if memo
            .swept
            .is_none_or(|at| now.saturating_duration_since(at) >= FETCH_SECRET_MEMO)
        {
            memo.entries
                .retain(|_, (at, _)| now.saturating_duration_since(*at) < FETCH_SECRET_MEMO);
            memo.swept = Some(now);
        }
    }

    /// Forget `ns/name`.
    pub fn forget(&self, ns: &str, name: &str) {
        self.lock().entries.remove(&Self::key(ns, name));
    }
}

/// The hash of an object as it would be applied.
pub fn wanted(body: &serde_json::Value) -> u64 {
    hash(serde_json::to_string(body).unwrap_or_default())
}

/// Any object, without its field managers and annotations (what a look never
/// reads, and what anyone may make large on objects that carry the label).
pub fn slim_meta<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    meta.annotations = None;
}

/// An app or artifact as the controllers cache it: without its field managers and
/// kubectl's copy of the spec it last applied, which no look reads (its other
/// annotations carry requests). With their field managers (every status write
/// adds to them) the operator peaked at 96-100 MiB on the 1000-app bench; without,
/// at 77 MiB.
pub fn slim_resource<K: Resource>(object: &mut K) {
    let meta = object.meta_mut();
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

/// A Deployment as a look reads it: metadata but its annotations, replicas, the pod
/// template's metadata (its hash and release annotations) and status but the
/// conditions other than a missed deadline. Of the field managers, only which of
/// them write `replicas` ([`super::build::replicas`]).
pub fn slim_deployment(deployment: &mut Deployment) {
    let replicas_writers = deployment.metadata.managed_fields.take().map(|entries| {
        entries
            .into_iter()
            .filter(|e| {
                e.fields_v1
                    .as_ref()
                    .and_then(|f| f.0.get("f:spec")?.get("f:replicas"))
                    .is_some()
            })
            .map(|e| ManagedFieldsEntry {
                manager: e.manager,
                fields_v1: Some(FieldsV1(serde_json::json!({"f:spec": {"f:replicas": {}}}))),
                ..Default::default()
            })
            .collect()
    });
    deployment.metadata.managed_fields = replicas_writers;
    deployment.metadata.annotations = None;
    if let Some(spec) = deployment.spec.as_mut() {
        spec.template.spec = None;
    }
    // Of the conditions, only a missed deadline is read (and its message).
    if let Some(status) = deployment.status.as_mut() {
        status.conditions = status.conditions.take().map(|conditions| {
            conditions
                .into_iter()
                .filter(|c| c.reason.as_deref() == Some("ProgressDeadlineExceeded"))
                .collect()
        });
    }
}

/// A Service as a look reads it: metadata and its cluster IP.
pub fn slim_service(service: &mut Service) {
    slim_meta(service);
    service.spec = service.spec.take().map(|s| ServiceSpec {
        cluster_ip: s.cluster_ip,
        ..Default::default()
    });
}

/// A ReplicaSet as a look reads it: metadata, replicas and its pods' annotations
/// (their release). (Which Secrets its pods read decides a deletion: that is read
/// afresh.)
pub fn slim_replica_set(set: &mut ReplicaSet) {
    slim_meta(set);
    if let Some(template) = set.spec.as_mut().and_then(|s| s.template.as_mut()) {
        if let Some(meta) = template.metadata.as_mut() {
            *meta = ObjectMeta {
                annotations: meta.annotations.take(),
                ..Default::default()
            };
        }
        template.spec = None;
    }
}

#[cfg(test)]
mod tests {
    mod fetch_secrets {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

        use super::super::*;

        fn secret(version: &str, owner: &str) -> Secret {
            Secret {
                metadata: ObjectMeta {
                    name: Some("aether.web.fetch".into()),
                    namespace: Some("team-a".into()),
                    uid: Some("s-1".into()),
                    resource_version: Some(version.into()),
                    owner_references: Some(vec![OwnerReference {
                        kind: "AetherApp".into(),
                        name: "web".into(),
                        uid: owner.into(),
                        controller: Some(true),
                        ..Default::default()
                    }]),
                    ..Default::default()
                },
                ..Default::default()
            }
        }

        fn version(s: Option<Secret>) -> Option<String> {
            s.and_then(|s| s.metadata.resource_version)
        }

        #[test]
        fn a_secret_written_stands_for_the_memo_s_time_then_is_read_again() {
            let memo = FetchSecrets::default();
            let t0 = Instant::now();
            assert_eq!(memo.recent("team-a", "aether.web.fetch", "app-1", t0), None);
            memo.applied(None, &secret("7", "app-1"), t0);
            let almost = t0 + FETCH_SECRET_MEMO - Duration::from_secs(1);
            assert_eq!(
                version(memo.recent("team-a", "aether.web.fetch", "app-1", almost)),
                Some("7".into())
            );
            assert_eq!(
                memo.recent("team-a", "aether.web.fetch", "app-1", t0 + FETCH_SECRET_MEMO),
                None
            );
            assert_eq!(memo.recent("team-b", "aether.web.fetch", "app-1", t0), None);
        }

        #[test]
        fn an_apply_that_wrote_nothing_does_not_make_it_younger_a_new_version_does() {
            let memo = FetchSecrets::default();
            let t0 = Instant::now();
            memo.applied(None, &secret("7", "app-1"), t0);
            // A look took it from here (even at the last moment), applied nothing,
            // and hands it back after the memo's time.
            let after = t0 + FETCH_SECRET_MEMO + Duration::from_secs(1);
            memo.applied(Some(&secret("7", "app-1")), &secret("7", "app-1"), after);
            assert_eq!(memo.recent("team-a", "aether.web.fetch", "app-1", after), None);
            // A write made a new version: that stands from then.
            let later = t0 + FETCH_SECRET_MEMO / 2;
            memo.applied(Some(&secret("7", "app-1")), &secret("8", "app-1"), later);
            assert_eq!(
                version(memo.recent("team-a", "aether.web.fetch", "app-1", t0 + FETCH_SECRET_MEMO)),
                Some("8".into())
            );
        }

        #[test]
        fn an_app_made_again_under_its_name_reads_its_secret_afresh() {
            let memo = FetchSecrets::default();
            let t0 = Instant::now();
            memo.read(&secret("7", "app-1"), "app-1", t0);
            assert_eq!(memo.recent("team-a", "aether.web.fetch", "app-2", t0), None);
            // Someone else's Secret of that name is not remembered at all.
            memo.read(&secret("9", "app-9"), "app-1", t0);
            assert_eq!(
                version(memo.recent("team-a", "aether.web.fetch", "app-1", t0)),
                Some("7".into())
            );
            memo.forget("team-a", "aether.web.fetch");
            assert_eq!(memo.recent("team-a", "aether.web.fetch", "app-1", t0), None);
        }
    }

    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::core::v1::{PodSpec, PodTemplateSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    fn deployment(version: &str, generation: i64) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("team-a".into()),
                uid: Some("d-1".into()),
                resource_version: Some(version.into()),
                generation: Some(generation),
                labels: Some([("app.kubernetes.io/name".to_string(), "web".to_string())].into()),
                owner_references: Some(vec![OwnerReference {
                    api_version: "aether.dev/v1alpha1".into(),
                    kind: "AetherApp".into(),
                    name: "web".into(),
                    uid: "app-1".into(),
                    controller: Some(true),
                    ..Default::default()
                }]),
                ..Default::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(2),
                template: PodTemplateSpec {
                    spec: Some(PodSpec::default()),
                    ..Default::default()
                },
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_child_is_applied_again_only_when_wanted_otherwise_or_written_by_another() {
        let applied = Applied::default();
        let written = deployment("10", 1);
        assert!(
            !applied.unchanged(Some(&written), 7),
            "nothing applied yet: apply"
        );
        applied.record(&written, 7);
        assert!(applied.unchanged(Some(&written), 7), "as the apply left it");
        assert!(!applied.unchanged(Some(&written), 8), "wanted otherwise");
        assert!(!applied.unchanged(None::<&Deployment>, 7), "gone");

        // The Deployment controller writes its status (and an annotation): a new
        // version of the same generation.
        let mut status_written = deployment("11", 1);
        status_written.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            ..Default::default()
        });
        assert!(applied.unchanged(Some(&status_written), 7));
        // Someone edits its spec, or its labels or owners.
        assert!(!applied.unchanged(Some(&deployment("12", 2)), 7));
        let mut relabelled = deployment("13", 1);
        relabelled.metadata.labels = None;
        assert!(!applied.unchanged(Some(&relabelled), 7));
        let mut disowned = deployment("14", 1);
        disowned.metadata.owner_references = None;
        assert!(!applied.unchanged(Some(&disowned), 7));

        // Others: only the version the apply came back with.
        let account = |version: &str| ServiceAccount {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("team-a".into()),
                resource_version: Some(version.into()),
                ..Default::default()
            },
            ..Default::default()
        };
        applied.record(&account("20"), 3);
        assert!(applied.unchanged(Some(&account("20")), 3));
        assert!(!applied.unchanged(Some(&account("21")), 3));
        // A NetworkPolicy has a generation too, but nobody else writes its status:
        // any new version is someone's edit.
        let policy = |version: &str| NetworkPolicy {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("team-a".into()),
                resource_version: Some(version.into()),
                generation: Some(1),
                ..Default::default()
            },
            ..Default::default()
        };
        applied.record(&policy("30"), 4);
        assert!(applied.unchanged(Some(&policy("30")), 4));
        assert!(!applied.unchanged(Some(&policy("31")), 4));
        // Kinds do not mix: the Deployment of the same name is its own record.
        assert!(applied.unchanged(Some(&written), 7));
    }

    #[test]
    fn the_operators_own_write_is_known_and_forgotten_with_the_object() {
        let applied = Applied::default();
        let written = deployment("10", 1);
        applied.record(&written, 7);
        assert!(applied.is_own_write::<Deployment>(&written.metadata));
        assert!(!applied.is_own_write::<Deployment>(&deployment("11", 1).metadata));
        assert!(!applied.is_own_write::<Service>(&written.metadata));
        applied.forget::<Deployment>(&written.metadata);
        assert!(!applied.is_own_write::<Deployment>(&written.metadata));
        assert!(!applied.unchanged(Some(&written), 7));

        // Made again under its name (a watch down meanwhile saw no deletion).
        applied.record(&written, 7);
        let mut again = deployment("10", 1);
        again.metadata.uid = Some("d-2".into());
        assert!(!applied.unchanged(Some(&again), 7));
        // Forgotten with its app.
        applied.forget_app("team-a/other");
        assert!(applied.unchanged(Some(&written), 7));
        applied.forget_app("team-a/web");
        assert!(!applied.unchanged(Some(&written), 7));
    }

    #[test]
    fn a_deployment_wakes_its_app_on_its_rollout_not_on_the_controllers_rewrites() {
        let mut before = deployment("10", 1);
        before.status = Some(DeploymentStatus {
            observed_generation: Some(1),
            replicas: Some(1),
            conditions: Some(vec![k8s_openapi::api::apps::v1::DeploymentCondition {
                type_: "Progressing".into(),
                status: "True".into(),
                reason: Some("ReplicaSetUpdated".into()),
                message: Some("progressing".into()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        let mut rewritten = before.clone();
        rewritten.metadata.resource_version = Some("11".into());
        if let Some(c) = rewritten.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[0].message = Some("still progressing".into());
        }
        assert_eq!(deployment_for_app(&before), deployment_for_app(&rewritten));

        let mut available = rewritten.clone();
        available.status.as_mut().unwrap().available_replicas = Some(1);
        assert_ne!(deployment_for_app(&before), deployment_for_app(&available));
        let mut stuck = rewritten.clone();
        if let Some(c) = stuck.status.as_mut().and_then(|s| s.conditions.as_mut()) {
            c[0].reason = Some("ProgressDeadlineExceeded".into());
        }
        assert_ne!(deployment_for_app(&before), deployment_for_app(&stuck));
        assert_ne!(
            deployment_for_app(&before),
            deployment_for_app(&deployment("12", 2)),
            "a spec edit"
        );
        assert_eq!(
            owning_app(&before.metadata),
            Some(ObjectRef::new("web").within("team-a"))
        );
    }

    #[test]
    fn cached_objects_keep_what_a_look_reads() {
        let mut d = deployment("10", 1);
        d.metadata.managed_fields = Some(vec![
            ManagedFieldsEntry {
                manager: Some("aether-operator".into()),
                fields_v1: Some(FieldsV1(serde_json::json!({"f:spec": {"f:template": {}}}))),
                ..Default::default()
            },
            ManagedFieldsEntry {
                manager: Some("kube-controller-manager".into()),
                fields_v1: Some(FieldsV1(
                    serde_json::json!({"f:spec": {"f:replicas": {}, "f:paused": {}}}),
                )),
                ..Default::default()
            },
        ]);
        slim_deployment(&mut d);
        let managers: Vec<_> = d
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .map(|e| e.manager.clone().unwrap_or_default())
            .collect();
        assert_eq!(managers, ["kube-controller-manager"]);
        assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(2));
        assert!(d.spec.as_ref().unwrap().template.spec.is_none());
        assert_eq!(d.metadata.generation, Some(1));
    }
}

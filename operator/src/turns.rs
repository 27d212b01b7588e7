//! Turns shared fairly between namespaces: at most `total` holders at once, and at
//! most `per_namespace` of them from one namespace.
//!
//! A controller's own concurrency limit (kube-runtime's) serves its queue in the
//! order objects became due: after an operator restart with 1000 apps in one
//! namespace, another tenant's push waited behind all of them (183.8 s on the
//! local cluster). Here a namespace first waits for one of its own turns, then for a
//! shared one: however many objects a namespace has due, at most `per_namespace`
//! of them stand in the shared line, so another namespace's object waits behind
//! those few, not behind the whole namespace. Both semaphores are first come,
//! first served.
//!
//! A namespace's semaphore is dropped when nobody holds or waits for it.
//!
//! kube-runtime runs these controllers unbounded (the turns bound them), so every
//! object due sits in its runner while it waits for a turn, and a wake-up for such
//! an object is held aside until that look ends, then runs it again. After a
//! restart with 1000 apps due that was most of the operator's CPU: its runner
//! scans the held wake-ups on every poll (36% of the samples in a profile), and the
//! looks ran twice. A look reads its object, and what it depends on, only once its
//! turn comes: a wake-up meanwhile adds nothing. [`Turns::waits`] says which
//! objects' looks still wait, for the wake-ups to be dropped (see [`unless_waiting`]).
//! That holds only for a wake-up sent once the cache the look reads holds its cause,
//! and only for looks that read nothing before [`Turns::take_for`] returns.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::Resource;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Turns {
    shared: Arc<Semaphore>,
    per_namespace: usize,
    namespaces: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// `namespace/name` of each object whose look waits for its turn, with how many
    /// of its looks do (kube-runtime runs at most one per object; counted all the
    /// same, so that one ending cannot unmark another).
    waiting: Mutex<HashMap<String, usize>>,
}

/// Held for as long as the work runs; dropping it lets the next one in.
#[derive(Debug)]
pub struct Turn {
    shared: Mutex<Option<OwnedSemaphorePermit>>,
    _namespace: OwnedSemaphorePermit,
}

impl Turn {
    /// Give the shared turn back before a long wait that is this namespace's own
    /// (an artifact waiting for its namespace's hashing turn): other namespaces'
    /// work goes on meanwhile. The namespace's turn is kept, so the namespace still
    /// has no more work under way than its share; what is left of the work runs
    /// within it.
    pub fn step_aside(&self) {
        lock(&self.shared).take();
    }
}

impl Turns {
    /// `total` turns at once, at most `per_namespace` of them (at least one) from one
    /// namespace.
    pub fn new(total: usize, per_namespace: usize) -> Self {
        let total = total.max(1);
        Self {
            shared: Arc::new(Semaphore::new(total)),
            per_namespace: per_namespace.clamp(1, total),
            namespaces: Mutex::default(),
            waiting: Mutex::default(),
        }
    }

    /// Half of `total` (rounded up) per namespace: two busy namespaces share them all,
    /// and a third waits for at most one turn of each.
    pub fn halved(total: usize) -> Self {
        Self::new(total, total.div_ceil(2))
    }

    /// Wait for a turn for work in namespace `ns`; none once [`close`](Self::close)d.
    pub async fn take(&self, ns: &str) -> Option<Turn> {
        let own = self.namespace(ns);
        // (A namespace's semaphore is never closed.)
        let namespace = own.acquire_owned().await.ok()?;
        let shared = self.shared.clone().acquire_owned().await.ok()?;
        Some(Turn {
            shared: Mutex::new(Some(shared)),
            _namespace: namespace,
        })
    }

    /// Wait for a turn for a look at `ns/name`; meanwhile [`waits`](Self::waits)
    /// says so of it. The look must read its object (and what it depends on) only
    /// once it has the turn.
    pub async fn take_for(&self, ns: &str, name: &str) -> Option<Turn> {
        let _waiting = Waiting::new(&self.waiting, format!("{ns}/{name}"));
        self.take(ns).await
    }

    /// Whether a look at `ns/name` waits for its turn (see [`take_for`](Self::take_for)).
    pub fn waits(&self, ns: &str, name: &str) -> bool {
        lock(&self.waiting).contains_key(&format!("{ns}/{name}"))
    }

    /// No more turns: whatever waits for one stops waiting (the operator is shutting
    /// down, and would otherwise first work through everything due).
    pub fn close(&self) {
        self.shared.close();
    }

    fn namespace(&self, ns: &str) -> Arc<Semaphore> {
        let mut namespaces = lock(&self.namespaces);
        // A permit and a waiter each hold a clone: one held only here is idle.
        namespaces.retain(|_, s| Arc::strong_count(s) > 1);
        namespaces
            .entry(ns.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_namespace)))
            .clone()
    }

    /// Namespaces with work holding or waiting for a turn.
    #[cfg(test)]
    fn busy(&self) -> usize {
        let mut namespaces = lock(&self.namespaces);
        namespaces.retain(|_, s| Arc::strong_count(s) > 1);
        namespaces.len()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// An object counted as waiting for as long as this lives.
struct Waiting<'a> {
    waiting: &'a Mutex<HashMap<String, usize>>,
    key: String,
}

impl<'a> Waiting<'a> {
    fn new(waiting: &'a Mutex<HashMap<String, usize>>, key: String) -> Self {
        *lock(waiting).entry(key.clone()).or_default() += 1;
        Self { waiting, key }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut waiting = lock(self.waiting);
        if let Some(count) = waiting.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                waiting.remove(&self.key);
            }
        }
    }
}

/// `wakes` but those of objects whose look waits for its turn in `turns`: that look
/// sees whatever woke them. Only for wake-ups sent once the cache the look reads
/// holds their cause (as [`crate::triggers::Changes`] sends them: a relist's at its
/// end); not for kube-runtime's own (`owns`), whose watch is not the look's cache.
pub fn unless_waiting<K: Resource>(
    wakes: impl Stream<Item = ObjectRef<K>> + Send + 'static,
    turns: Arc<Turns>,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static
where
    K::DynamicType: Send,
{
    wakes.filter(move |o| {
        let ns = o.namespace.as_deref().unwrap_or_default();
        futures::future::ready(!turns.waits(ns, &o.name))
    })
}

/// For a controller's own watch (ahead of `applied_objects`): its events but the
/// changes of objects whose look waits for its turn in `turns`. A relist's objects
/// (`InitApply`) pass: the cache takes them only at the relist's end, after the look
/// may have read it.
pub fn changes_unless_waiting<K: Resource>(
    turns: &Arc<Turns>,
) -> impl FnMut(&watcher::Event<K>) -> futures::future::Ready<bool> + use<K> {
    let turns = turns.clone();
    move |event| {
        let waits = match event {
            watcher::Event::Apply(object) => {
                let meta = object.meta();
                let ns = meta.namespace.as_deref().unwrap_or_default();
                turns.waits(ns, meta.name.as_deref().unwrap_or_default())
            }
            _ => false,
        };
        futures::future::ready(!waits)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `fut` finishes within a short while (one that can, does at once).
    async fn done<F: std::future::Future>(fut: F) -> Option<F::Output> {
        tokio::time::timeout(Duration::from_millis(10), fut).await.ok()
    }

    #[tokio::test]
    async fn a_busy_namespace_leaves_a_turn_for_another() {
        let turns = Arc::new(Turns::new(4, 2));
        // Namespace a has a thousand objects due: only two of them get turns.
        let mut a = Vec::new();
        for _ in 0..1000 {
            let turns = turns.clone();
            a.push(tokio::spawn(async move { turns.take("a").await.unwrap() }));
        }
        let settle = || tokio::time::sleep(Duration::from_millis(10));
        let finished = |a: &[tokio::task::JoinHandle<Turn>]| a.iter().filter(|t| t.is_finished()).count();
        settle().await;
        assert_eq!(finished(&a), 2, "two of a's get turns, the rest wait for a's own");
        // b comes last and still goes at once.
        let b = done(turns.take("b")).await.expect("b does not wait behind a");
        let c = done(turns.take("c")).await.expect("c neither: four shared turns");
        // All four shared turns are held: d waits, and goes when one is let go.
        let mut d = Box::pin(turns.take("d"));
        assert!(done(&mut d).await.is_none());
        drop(b);
        assert!(done(&mut d).await.is_some(), "d takes the turn b let go");
        drop(c);
        settle().await;
        assert_eq!(finished(&a), 2, "a shared turn free is not one of a's own");
        let first = a.remove(a.iter().position(|t| t.is_finished()).unwrap());
        drop(first.await.unwrap());
        settle().await;
        assert_eq!(finished(&a), 2, "one of a's ended: the next of a's goes");
    }

    #[tokio::test]
    async fn a_turn_stepping_aside_lets_another_namespace_in_but_not_its_own() {
        let turns = Turns::new(2, 2);
        let a1 = turns.take("a").await.unwrap();
        let _a2 = turns.take("a").await.unwrap();
        let mut a3 = Box::pin(turns.take("a"));
        let mut b = Box::pin(turns.take("b"));
        assert!(done(&mut b).await.is_none(), "both shared turns are a's");
        a1.step_aside();
        assert!(done(&mut a3).await.is_none(), "a still holds all of its own");
        let _b = done(&mut b).await.expect("b takes the shared turn a gave back");
        drop(a1);
        assert!(
            done(&mut a3).await.is_none(),
            "a's own turn is free, but b and a's other hold both shared ones"
        );
    }

    #[tokio::test]
    async fn the_shared_line_is_first_come_first_served() {
        let turns = Turns::new(1, 1);
        let first = turns.take("a").await.unwrap();
        let mut second = Box::pin(turns.take("b"));
        let mut third = Box::pin(turns.take("c"));
        assert!(done(&mut second).await.is_none());
        drop(first);
        assert!(done(&mut third).await.is_none(), "c does not jump b");
        assert!(done(&mut second).await.is_some());
    }

    #[tokio::test]
    async fn idle_namespaces_are_forgotten() {
        let turns = Turns::new(2, 1);
        let a = turns.take("a").await.unwrap();
        let b = turns.take("b").await.unwrap();
        assert_eq!(turns.busy(), 2);
        drop(a);
        assert_eq!(turns.busy(), 1);
        drop(b);
        assert_eq!(turns.busy(), 0);
    }

    #[tokio::test]
    async fn closing_ends_every_wait() {
        let turns = Turns::new(1, 1);
        let held = turns.take("a").await.unwrap();
        let mut waiting = Box::pin(turns.take("b"));
        assert!(done(&mut waiting).await.is_none());
        turns.close();
        assert!(done(&mut waiting).await.expect("it stops waiting").is_none());
        assert!(turns.take("c").await.is_none());
        drop(held);
    }

    #[tokio::test]
    async fn a_look_waits_until_its_turn_comes_and_no_longer() {
        let turns = Turns::new(1, 1);
        let held = turns.take_for("a", "web").await.unwrap();
        assert!(!turns.waits("a", "web"), "it has its turn");
        let mut api = Box::pin(turns.take_for("a", "api"));
        assert!(done(&mut api).await.is_none());
        assert!(turns.waits("a", "api"));
        assert!(
            !turns.waits("b", "api"),
            "the same name in another namespace is another"
        );
        drop(held);
        let api = done(&mut api).await.flatten().expect("api's turn comes");
        assert!(!turns.waits("a", "api"), "it no longer waits once its turn came");
        // A wait given up (the look cancelled) no longer counts either.
        let mut db = Box::pin(turns.take_for("a", "db"));
        assert!(done(&mut db).await.is_none());
        assert!(turns.waits("a", "db"));
        drop(db);
        assert!(!turns.waits("a", "db"));
        drop(api);
    }

    /// One turn in all: web's look (in namespace a) holds it, api's waits for it.
    async fn web_runs_api_waits() -> (Arc<Turns>, Turn) {
        let turns = Arc::new(Turns::new(1, 1));
        let held = turns.take_for("a", "web").await.unwrap();
        tokio::spawn({
            let turns = turns.clone();
            async move { turns.take_for("a", "api").await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(turns.waits("a", "api"));
        (turns, held)
    }

    #[tokio::test]
    async fn wake_ups_of_waiting_looks_are_dropped() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let (turns, held) = web_runs_api_waits().await;
        let wakes = ["web", "api", "db"].map(|n| ObjectRef::<ConfigMap>::new(n).within("a"));
        let passed: Vec<String> = unless_waiting(futures::stream::iter(wakes), turns.clone())
            .map(|o| o.name)
            .collect()
            .await;
        // web's look runs already: a change now must run it again.
        assert_eq!(passed, ["web", "db"]);
        drop(held);
    }

    #[tokio::test]
    async fn a_waiting_look_s_own_changes_are_dropped_but_not_a_relist_s() {
        use k8s_openapi::api::core::v1::ConfigMap;
        let (turns, held) = web_runs_api_waits().await;
        let map = |name: &str| ConfigMap {
            metadata: kube::api::ObjectMeta {
                name: Some(name.into()),
                namespace: Some("a".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut keep = changes_unless_waiting::<ConfigMap>(&turns);
        assert!(
            keep(&watcher::Event::Apply(map("web"))).await,
            "web's look runs already"
        );
        assert!(
            !keep(&watcher::Event::Apply(map("api"))).await,
            "api's look waits"
        );
        assert!(
            keep(&watcher::Event::InitApply(map("api"))).await,
            "a relist's objects reach the cache only at its end"
        );
        assert!(keep(&watcher::Event::Delete(map("api"))).await);
        drop(held);
    }

    #[test]
    fn every_namespace_gets_at_least_one_turn_and_never_more_than_all() {
        assert_eq!(Turns::new(0, 0).per_namespace, 1);
        assert_eq!(Turns::new(4, 9).per_namespace, 4);
        assert_eq!(Turns::halved(16).per_namespace, 8);
        assert_eq!(Turns::halved(1).per_namespace, 1);
    }
}

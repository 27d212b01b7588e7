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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

#[derive(Debug)]
pub struct Turns {
    shared: Arc<Semaphore>,
    per_namespace: usize,
    namespaces: Mutex<HashMap<String, Arc<Semaphore>>>,
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
        self.shared.lock().unwrap_or_else(|e| e.into_inner()).take();
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

    /// No more turns: whatever waits for one stops waiting (the operator is shutting
    /// down, and would otherwise first work through everything due).
    pub fn close(&self) {
        self.shared.close();
    }

    fn namespace(&self, ns: &str) -> Arc<Semaphore> {
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
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
        let mut namespaces = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        namespaces.retain(|_, s| Arc::strong_count(s) > 1);
        namespaces.len()
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

    #[test]
    fn every_namespace_gets_at_least_one_turn_and_never_more_than_all() {
        assert_eq!(Turns::new(0, 0).per_namespace, 1);
        assert_eq!(Turns::new(4, 9).per_namespace, 4);
        assert_eq!(Turns::halved(16).per_namespace, 8);
        assert_eq!(Turns::halved(1).per_namespace, 1);
    }
}

//! Waiting for a watched cache's first full list, from any number of tasks at once.
//!
//! kube-runtime's `Store::wait_until_ready` is safe for one waiter only: its
//! `DelayedInit` polls a single oneshot receiver with each waiter's waker, and the
//! receiver keeps only the last one, so when the list arrives one waiter wakes and
//! the others wait forever. Every artifact reconcile started before the apps cache was
//! ready (an operator restart, a new leader) hung that way, holding a reconcile slot,
//! and pushes waited for upload instructions that never came. Here one task waits
//! and a watch channel wakes everyone.

use kube::runtime::reflector::Store;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Readiness(watch::Receiver<bool>);

impl Readiness {
    /// Follows `store`'s readiness (spawns the one task that waits for it).
    pub fn of<K>(store: Store<K>) -> Self
    where
        K: kube::Resource + Clone + Send + Sync + 'static,
        K::DynamicType: std::hash::Hash + Eq + Clone + Send + Sync,
    {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            if store.wait_until_ready().await.is_ok() {
                let _ = tx.send(true);
            }
        });
        Readiness(rx)
    }

    /// Once the store has had its first full list. Never, if its writer is dropped
    /// first (the operator is shutting down).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|ready| *ready).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::runtime::{reflector, watcher};
    use std::time::Duration;

    #[tokio::test]
    async fn every_waiter_wakes_when_the_first_list_arrives() {
        let (store, mut writer) = reflector::store::<ConfigMap>();
        let ready = Readiness::of(store);
        let waiters: Vec<_> = (0..16)
            .map(|_| {
                let ready = ready.clone();
                tokio::spawn(async move { ready.wait().await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await; // all of them waiting
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitDone);
        for w in waiters {
            tokio::time::timeout(Duration::from_secs(2), w)
                .await
                .expect("a waiter was never woken")
                .unwrap();
        }
        // And later ones return at once.
        tokio::time::timeout(Duration::from_millis(100), ready.wait())
            .await
            .unwrap();
    }
}

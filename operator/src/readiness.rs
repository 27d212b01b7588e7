//! Waiting for a watched cache's first full list, from any number of tasks at once.
//!
//! kube-runtime's `Store::wait_until_ready` is safe for one waiter only: its
//! `DelayedInit` polls a single oneshot receiver with each waiter's waker, and the
//! receiver keeps only the last one, so when the list arrives one waiter wakes and
//! the others wait forever (checked: 1 of 16 woke). A controller's runner already
//! waits on its own store that way, so nothing else may: every artifact reconcile
//! started before the apps cache was ready (an operator restart, a new leader) hung
//! in its slot for good, and pushes waited for upload instructions that never came.
//! Instead, [`Readiness::follow`] watches the reflector's own events and a watch
//! channel wakes everyone.

use futures::{Stream, StreamExt};
use kube::runtime::watcher;
use tokio::sync::watch;

#[derive(Clone, Debug)]
pub struct Readiness(watch::Receiver<bool>);

impl Readiness {
    /// Pass a reflector's events through: ready once it has yielded its first
    /// `InitDone`, when the reflector has filled its store.
    pub fn follow<K, E, S>(events: S) -> (impl Stream<Item = Result<watcher::Event<K>, E>>, Readiness)
    where
        S: Stream<Item = Result<watcher::Event<K>, E>>,
    {
        let (tx, rx) = watch::channel(false);
        let events = events.inspect(move |event| {
            if matches!(event, Ok(watcher::Event::InitDone)) {
                tx.send_replace(true);
            }
        });
        (events, Readiness(rx))
    }

    /// Whether the store has had its first full list, now.
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }

    /// Once the store has had its first full list. Never, if its stream is dropped
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
    use kube::runtime::reflector;
    use std::time::Duration;

    #[tokio::test]
    async fn every_waiter_wakes_when_the_first_list_is_in_the_store() {
        let (store, writer) = reflector::store::<ConfigMap>();
        let (tx, rx) =
            futures::channel::mpsc::unbounded::<Result<watcher::Event<ConfigMap>, watcher::Error>>();
        let (events, ready) = Readiness::follow(reflector::reflector(writer, rx));
        let driver = tokio::spawn(events.for_each(|_| async {}));
        let waiters: Vec<_> = (0..16)
            .map(|_| {
                let (ready, store) = (ready.clone(), store.clone());
                tokio::spawn(async move {
                    ready.wait().await;
                    store.state().len()
                })
            })
            .collect();
        // The runner's own wait on the store, as a controller has it: it must still wake too.
        let runner = {
            let store = store.clone();
            tokio::spawn(async move { store.wait_until_ready().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("one".into());
        cm.metadata.namespace = Some("default".into());
        for event in [
            watcher::Event::Init,
            watcher::Event::InitApply(cm),
            watcher::Event::InitDone,
        ] {
            tx.unbounded_send(Ok(event)).unwrap();
        }
        for w in waiters {
            let seen = tokio::time::timeout(Duration::from_secs(2), w)
                .await
                .expect("a waiter was never woken")
                .unwrap();
            assert_eq!(seen, 1, "woken before the store held the list");
        }
        tokio::time::timeout(Duration::from_secs(2), runner)
            .await
            .expect("the runner's wait was never woken")
            .unwrap()
            .unwrap();
        tokio::time::timeout(Duration::from_millis(100), ready.wait())
            .await
            .unwrap();
        driver.abort();
    }
}

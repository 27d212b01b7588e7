//! Leader election: the `aether-operator` Lease in the operator's namespace, held
//! through kube-lease-manager, so that of several replicas one acts.

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::{Api, Client};
use tracing::{info, warn};

/// The leader Lease's name.
const LEASE: &str = "aether-operator";

/// Until the leader Lease is free, or its holder's term is over without a renewal.
/// kube-lease-manager, finding it held, sleeps until the term ends (up to its 15 s)
/// even when the holder hands it over a moment later, as it does in every rollout
/// and restart of the operator: it took the new operator 1 to 6 s to take over after
/// a restart. The Lease is watched instead, term after term (a standby replica waits
/// here for as long as the leader lives), and the manager started once it is free.
/// (Should two wait, both try: the first apply takes it, the other's conflicts, as
/// each applies under a field manager of its own.)
async fn until_free(api: &Api<Lease>, identity: &str) {
    loop {
        // None yet, or not readable: the manager finds out.
        let Ok(Some(lease)) = api.get_opt(LEASE).await else {
            return;
        };
        let Some(left) = term_left(&lease, identity, Timestamp::now()) else {
            return;
        };
        let deadline = tokio::time::Instant::now() + left;
        let free = kube::runtime::wait::await_condition(api.clone(), LEASE, |lease: Option<&_>| {
            lease.is_none_or(|l| term_left(l, identity, Timestamp::now()).is_none())
        });
        match tokio::time::timeout_at(deadline, free).await {
            Ok(Ok(_)) => return,
            // The watch failed (the API server away a moment): the rest of the term
            // is waited out, and the Lease read again.
            Ok(Err(e)) => {
                warn!(error = %e, "watching the leader Lease");
                tokio::time::sleep_until(deadline).await;
            }
            // The term ran out as seen here: renewed meanwhile, or over.
            Err(_) => {}
        }
    }
}

/// How long to wait for the Lease at `now`: `None` when nobody holds it (handed
/// over), this process does (a container restarted in its pod takes it back at
/// once), or the holder's term is over.
fn term_left(lease: &Lease, identity: &str, now: Timestamp) -> Option<Duration> {
    let spec = lease.spec.as_ref()?;
    spec.holder_identity
        .as_deref()
        .filter(|h| !h.is_empty() && *h != identity)?;
    let renewed = spec.renew_time.as_ref()?.0;
    let term = SignedDuration::from_secs(i64::from(spec.lease_duration_seconds?));
    let left = Duration::try_from(renewed.checked_add(term).ok()?.duration_since(now)).ok()?;
    (!left.is_zero()).then_some(left)
}

/// The leader Lease's state (false once lost) and the task that renews it.
pub type Leadership = (
    tokio::sync::watch::Receiver<bool>,
    tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>,
);

/// Wait until this process holds the `aether-operator` Lease in `namespace`.
pub async fn lead(client: &Client, namespace: &str) -> anyhow::Result<Leadership> {
    let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
        format!(
            "{}-{}",
            std::env::var("HOSTNAME").unwrap_or_else(|_| "aether-operator".into()),
            std::process::id()
        )
    });
    let manager = kube_lease_manager::LeaseManagerBuilder::new(client.clone(), LEASE)
        .with_namespace(namespace)
        .with_identity(&identity)
        .with_duration(15)
        .with_grace(5)
        // One of its own: under one shared by every replica, two applies taking a free
        // Lease at once would both succeed (SSA sees no conflict within a manager).
        .with_field_manager(format!("{}-{identity}", crate::artifact::MANAGER))
        .build()
        .await
        .with_context(|| format!("setting up the leader Lease in namespace {namespace}"))?;
    info!(%identity, "waiting for the leader Lease");
    until_free(&Api::namespaced(client.clone(), namespace), &identity).await;
    let (mut rx, task) = manager.watch().await;
    while !*rx.borrow_and_update() {
        rx.changed().await.context("the leader election task stopped")?;
    }
    info!(%identity, "holding the leader Lease");
    Ok((rx, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
    use k8s_openapi::jiff::ToSpan;

    fn lease(holder: Option<&str>, renewed: i64) -> Lease {
        Lease {
            spec: Some(LeaseSpec {
                holder_identity: holder.map(String::from),
                renew_time: Some(MicroTime(Timestamp::UNIX_EPOCH + renewed.seconds())),
                lease_duration_seconds: Some(15),
                ..LeaseSpec::default()
            }),
            ..Lease::default()
        }
    }

    #[test]
    fn a_lease_held_is_waited_for_until_its_term_is_over() {
        let at = |s: i64| Timestamp::UNIX_EPOCH + s.seconds();
        let held = lease(Some("old-pod"), 100);
        assert_eq!(
            term_left(&held, "new-pod", at(105)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(term_left(&held, "new-pod", at(115)), None, "over");
        assert_eq!(term_left(&held, "new-pod", at(130)), None, "long over");
    }

    #[test]
    fn a_lease_handed_over_or_held_by_this_process_is_not_waited_for() {
        let at = Timestamp::UNIX_EPOCH + 105.seconds();
        assert_eq!(term_left(&lease(None, 100), "new-pod", at), None);
        assert_eq!(term_left(&lease(Some(""), 100), "new-pod", at), None);
        assert_eq!(term_left(&Lease::default(), "new-pod", at), None);
        // Its container restarted after a crash: the Lease is its own still.
        assert_eq!(term_left(&lease(Some("new-pod"), 100), "new-pod", at), None);
    }

    #[test]
    fn a_lease_of_nonsense_times_is_not_waited_for() {
        let mut far = lease(Some("old-pod"), 0);
        far.spec.as_mut().unwrap().renew_time = Some(MicroTime(Timestamp::MAX));
        let at = Timestamp::UNIX_EPOCH + 105.seconds();
        assert_eq!(term_left(&far, "new-pod", at), None);
    }
}

//! Download URLs for the fetch container: how app pods read their blobs without
//! holding any storage credential.
//!
//! The operator keeps one Secret per app (`aether.<app>.fetch`) with a presigned GET
//! URL per blob the pods may need, under the key `sha256-<hex>`. The fetch container
//! mounts it (the app container does not), so a pod can read exactly its own
//! namespace's blobs, and only until the URLs expire. Kubelet refreshes mounted
//! Secrets, so a pod started later (rescheduled, scaled) finds URLs that still work.
//!
//! What to keep and what to sign again is a pure decision ([`plan`]): the Secret
//! holds a URL for each blob the app's pods may need (the release being applied and
//! every release a ReplicaSet of the app still runs, whether or not the app is valid
//! right now), renewed once less than half its lifetime is left, and nothing else.

use std::collections::BTreeMap;
use std::time::Duration;

use aether_artifact::Digest;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Where the fetch container finds the Secret's files.
pub const MOUNT_PATH: &str = "/var/run/aether/downloads";

/// The Secret key (and file name) of a blob's URL.
pub fn key(digest: &Digest) -> String {
    format!("sha256-{}", digest.hex())
}

/// The Secret's name: like the ServiceAccount's, one no user object is likely to have.
pub fn secret_name(app: &str) -> String {
    format!("aether.{app}.fetch")
}

/// When a presigned URL stops working, from its own SigV4 query (`X-Amz-Date`, as
/// `YYYYMMDDTHHMMSSZ`, plus `X-Amz-Expires` seconds). None if it does not say.
pub fn expiry(url: &str) -> Option<Timestamp> {
    let query = url.split_once('?')?.1;
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    let date = param("X-Amz-Date")?;
    let expires: i64 = param("X-Amz-Expires")?.parse().ok()?;
    let iso = format!(
        "{}-{}-{}T{}:{}:{}Z",
        date.get(0..4)?,
        date.get(4..6)?,
        date.get(6..8)?,
        date.get(9..11)?,
        date.get(11..13)?,
        date.get(13..15)?
    );
    let signed: Timestamp = iso.parse().ok()?;
    signed.checked_add(SignedDuration::from_secs(expires)).ok()
}

/// What to write into the Secret.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Entries kept as they are.
    pub keep: BTreeMap<String, String>,
    /// Blobs to sign (again).
    pub sign: Vec<Digest>,
}

impl Plan {
    /// Nothing to sign and nothing dropped: the Secret stays as it is.
    pub fn unchanged(&self, existing: &BTreeMap<String, String>) -> bool {
        self.sign.is_empty() && self.keep == *existing
    }
}

/// Which URLs stay and which blobs get new ones. `wanted`: every blob the app's
/// pods may need. `ttl`: the lifetime of new URLs (renewed past half of it).
pub fn plan(existing: &BTreeMap<String, String>, wanted: &[Digest], now: Timestamp, ttl: Duration) -> Plan {
    let half = SignedDuration::try_from(ttl / 2).unwrap_or(SignedDuration::ZERO);
    let renew_after = now.checked_add(half).unwrap_or(now);
    let valid = |url: &str| expiry(url).is_some_and(|t| t > renew_after);
    let mut plan = Plan::default();
    for d in wanted {
        match existing.get(&key(d)) {
            Some(url) if valid(url) => {
                plan.keep.insert(key(d), url.clone());
            }
            _ if !plan.sign.contains(d) => plan.sign.push(*d),
            _ => {}
        }
    }
    plan
}

/// When to look again: once the first of the current release's URLs passes half
/// its lifetime.
pub fn renew_in(
    data: &BTreeMap<String, String>,
    wanted: &[Digest],
    now: Timestamp,
    ttl: Duration,
) -> Duration {
    let half = SignedDuration::try_from(ttl / 2).unwrap_or(SignedDuration::ZERO);
    wanted
        .iter()
        .filter_map(|d| expiry(data.get(&key(d))?))
        .map(|t| t.checked_sub(half).unwrap_or(t))
        .min()
        .map(|t| Duration::try_from(t.duration_since(now)).unwrap_or(Duration::ZERO))
        .unwrap_or(ttl / 2)
        .max(Duration::from_secs(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(12 * 3600);

    fn url(signed: &str, expires: u64) -> String {
        format!(
            "http://s3/b/ns/a/blobs/sha256/x?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date={signed}&X-Amz-Expires={expires}&X-Amz-Signature=00"
        )
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn expiry_is_read_from_the_signed_query() {
        assert_eq!(
            expiry(&url("20261128T100000Z", 3600)),
            Some(at("2026-11-28T11:00:00Z"))
        );
        assert_eq!(expiry("http://s3/b/key"), None);
        assert_eq!(expiry("http://s3/b/key?X-Amz-Date=2026&X-Amz-Expires=5"), None);
    }

    #[test]
    fn current_blobs_are_signed_when_missing_or_past_half_their_life() {
        let (d1, d2) = (Digest::of(b"deps"), Digest::of(b"app"));
        let now = at("2026-11-28T12:00:00Z");
        let fresh = url("20261128T113000Z", 12 * 3600);
        let old = url("20261128T000000Z", 12 * 3600); // 30 min left
        let existing = BTreeMap::from([(key(&d1), fresh.clone()), (key(&d2), old)]);
        let p = plan(&existing, &[d1, d2], now, TTL);
        assert_eq!(p.sign, vec![d2]);
        assert_eq!(p.keep, BTreeMap::from([(key(&d1), fresh.clone())]));
        assert!(!p.unchanged(&existing));

        let settled = BTreeMap::from([(key(&d1), fresh.clone()), (key(&d2), fresh)]);
        assert!(plan(&settled, &[d1, d2], now, TTL).unchanged(&settled));
        assert_eq!(plan(&BTreeMap::new(), &[d1, d2], now, TTL).sign, vec![d1, d2]);
    }

    #[test]
    fn only_wanted_blobs_stay() {
        let now = at("2026-11-28T12:00:00Z");
        let (current, running) = (Digest::of(b"now"), Digest::of(b"serving"));
        let fresh = url("20261128T113000Z", 12 * 3600);
        let existing = BTreeMap::from([
            (key(&running), fresh.clone()),
            ("sha256-gone".to_string(), fresh.clone()),
        ]);
        let p = plan(&existing, &[current, running, current], now, TTL);
        assert_eq!(p.sign, vec![current], "signed once");
        assert_eq!(p.keep, BTreeMap::from([(key(&running), fresh)]));
    }

    #[test]
    fn renewal_is_scheduled_at_half_life() {
        let d = Digest::of(b"x");
        let data = BTreeMap::from([(key(&d), url("20261128T100000Z", 12 * 3600))]);
        let now = at("2026-11-28T12:00:00Z");
        assert_eq!(renew_in(&data, &[d], now, TTL), Duration::from_secs(4 * 3600));
        assert_eq!(renew_in(&BTreeMap::new(), &[d], now, TTL), TTL / 2);
    }
}

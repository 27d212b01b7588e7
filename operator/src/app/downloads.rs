//! Download URLs for the fetch container: how app pods read their blobs without
//! holding any storage credential.
//!
//! The operator keeps one Secret per app (`aether.<app>.fetch`) with a presigned GET
//! URL per blob the pods may need, under the key `sha256-<hex>`. The fetch container
//! mounts it (the app container does not), so a pod can read exactly its own
//! namespace's blobs, and only until the URLs expire. Kubelet refreshes mounted
//! Secrets, so a pod started later (rescheduled, scaled) finds URLs that still work.
//!
//! What to keep and what to sign again is a pure decision ([`plan`]): the current
//! release's blobs are always there and renewed once less than half their lifetime
//! is left; URLs of earlier releases stay until they expire (a pod of the previous
//! ReplicaSet may still start during a rollout), at most [`MAX_CARRIED`] of them.

use std::collections::BTreeMap;
use std::time::Duration;

use aether_artifact::Digest;
use k8s_openapi::jiff::{SignedDuration, Timestamp};

/// Earlier releases' URLs kept besides the current release's.
pub const MAX_CARRIED: usize = 8;

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

/// Which URLs stay and which blobs get new ones. `wanted`: the current release's
/// blobs. `ttl`: the lifetime of new URLs (renewed past half of it).
pub fn plan(existing: &BTreeMap<String, String>, wanted: &[Digest], now: Timestamp, ttl: Duration) -> Plan {
    let half = SignedDuration::try_from(ttl / 2).unwrap_or(SignedDuration::ZERO);
    let renew_after = now.checked_add(half).unwrap_or(now);
    let valid = |url: &str, until: Timestamp| expiry(url).is_some_and(|t| t > until);
    let mut plan = Plan::default();
    for d in wanted {
        match existing.get(&key(d)) {
            Some(url) if valid(url, renew_after) => {
                plan.keep.insert(key(d), url.clone());
            }
            _ => plan.sign.push(*d),
        }
    }
    plan.sign.dedup();
    // Earlier releases' URLs, newest expiry first, while they work.
    let mut carried: Vec<(Timestamp, &String, &String)> = existing
        .iter()
        .filter(|(k, _)| !wanted.iter().any(|d| key(d) == **k))
        .filter_map(|(k, url)| Some((expiry(url)?, k, url)))
        .filter(|(t, _, _)| *t > now)
        .collect();
    carried.sort_by_key(|c| std::cmp::Reverse(c.0));
    for (_, k, url) in carried.into_iter().take(MAX_CARRIED) {
        plan.keep.insert(k.clone(), url.clone());
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
    fn earlier_releases_stay_until_they_expire_and_are_bounded() {
        let now = at("2026-11-28T12:00:00Z");
        let current = Digest::of(b"now");
        let mut existing = BTreeMap::new();
        existing.insert("sha256-expired".to_string(), url("20261127T000000Z", 3600));
        existing.insert("sha256-nodate".to_string(), "http://s3/x".to_string());
        for i in 0..MAX_CARRIED + 3 {
            existing.insert(
                format!("sha256-old{i:02}"),
                url(&format!("20261128T11{i:02}00Z"), 3600),
            );
        }
        let p = plan(&existing, &[current], now, TTL);
        assert_eq!(p.sign, vec![current]);
        assert_eq!(p.keep.len(), MAX_CARRIED);
        assert!(!p.keep.contains_key("sha256-expired") && !p.keep.contains_key("sha256-nodate"));
        // The newest ones are kept.
        assert!(p.keep.contains_key(&format!("sha256-old{:02}", MAX_CARRIED + 2)));
        assert!(!p.keep.contains_key("sha256-old00"));
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

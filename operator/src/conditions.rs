//! Conditions as Flux and kstatus use them: one per type, `lastTransitionTime` moves
//! only when the status flips, `observedGeneration` says which spec they describe.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

/// Set `type_` in `conditions` to the given state, keeping its transition time when
/// the status did not change.
pub fn set(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: impl Into<String>,
    generation: Option<i64>,
) {
    let status = if status { "True" } else { "False" }.to_string();
    let previous = conditions.iter().position(|c| c.type_ == type_);
    let last_transition_time = match previous.map(|i| &conditions[i]) {
        Some(c) if c.status == status => c.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    let condition = Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message: message.into(),
        observed_generation: generation,
        last_transition_time,
    };
    match previous {
        Some(i) => conditions[i] = condition,
        None => conditions.push(condition),
    }
}

/// [`set`] for several condition types that share one state (e.g. `Uploaded` and
/// `Ready` both False because an upload is awaited).
pub fn set_all(
    conditions: &mut Vec<Condition>,
    types: &[&str],
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    for type_ in types {
        set(conditions, type_, status, reason, message, generation);
    }
}

pub use aether_crds::condition::is_true;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_flips() {
        let mut cs = Vec::new();
        set(&mut cs, "Ready", false, "AwaitingUpload", "waiting", Some(1));
        let first = cs[0].last_transition_time.clone();
        std::thread::sleep(std::time::Duration::from_millis(5));
        set(&mut cs, "Ready", false, "Verifying", "checking", Some(2));
        assert_eq!(cs[0].last_transition_time, first, "same status: time kept");
        assert_eq!(cs[0].reason, "Verifying");
        set(&mut cs, "Ready", true, "Verified", "ok", Some(2));
        assert_ne!(cs[0].last_transition_time, first);
        assert_eq!(cs.len(), 1);
        assert!(is_true(&cs, "Ready"));
    }
}

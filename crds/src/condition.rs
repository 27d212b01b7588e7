//! Condition types and reasons, as constants so the operator, the CLI and the
//! printer columns can never disagree on spelling. Reasons are CamelCase.
//!
//! `Ready` is the summary a user reads; `Reconciling` and `Stalled` follow kstatus:
//! `Reconciling=True` while work is in progress, `Stalled=True` when progress needs a
//! change from the user (an invalid spec, a missing reference).

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";
pub const UPLOADED: &str = "Uploaded";
pub const VERIFIED: &str = "Verified";

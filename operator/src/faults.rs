//! Crash injection, for `make chaos` only.
//!
//! With `AETHER_CRASH_WITHIN=N` in its environment the operator crashes at a random
//! one of the next N fault points it passes: points sit between the steps of a
//! reconcile (after each look at storage, each object written, each status write),
//! where a crash leaves the most half-done. The crash is `abort()`: like SIGKILL,
//! nothing runs after it (no destructor, no Lease handover, no graceful shutdown).
//! Unset, which is how the operator always runs outside that test, a point costs one
//! atomic load.

use std::sync::atomic::{AtomicI64, Ordering};

/// The environment variable that arms the crash.
pub const CRASH_WITHIN: &str = "AETHER_CRASH_WITHIN";

/// How an injected crash begins its termination message.
pub const INJECTED: &str = "crash injected at fault point";

/// Points left before the crash; negative when disarmed.
static COUNTDOWN: AtomicI64 = AtomicI64::new(-1);

/// Arm the crash if [`CRASH_WITHIN`] says so (at startup, once).
pub fn arm_from_env() {
    let Some(within) = std::env::var(CRASH_WITHIN)
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .filter(|n| *n > 0)
    else {
        return;
    };
    // Randomness enough for a test: the clock's nanoseconds.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let at = i64::from(nanos % within) + 1;
    tracing::warn!(
        at,
        within,
        "crash injection armed: this process will abort at fault point {at}"
    );
    COUNTDOWN.store(at, Ordering::SeqCst);
}

/// A place where a crash leaves work half-done.
pub fn point(name: &'static str) {
    if COUNTDOWN.load(Ordering::Relaxed) < 0 {
        return;
    }
    if COUNTDOWN.fetch_sub(1, Ordering::SeqCst) == 1 {
        let note = format!("{INJECTED} {name:?}");
        // eprintln: tracing's writer may buffer, and nothing is flushed after abort.
        eprintln!("aether-operator: {note}");
        // The kubelet reports this file as the container's termination message: how
        // the test tells an injected crash from another one. (As PID 1 the process
        // ignores its own SIGABRT, and abort() ends in SIGSEGV instead: the exit code
        // cannot tell.)
        let _ = std::fs::write("/dev/termination-log", &note);
        std::process::abort();
    }
}

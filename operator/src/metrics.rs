//! Prometheus metrics (prometheus-client), prefixed `aether_operator_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub controller: &'static str,
    pub error: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PhaseLabels {
    /// `applied` (artifact seen → Deployment applied) or `ready` (→ pods Ready).
    pub phase: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Family<ControllerLabels, Counter>,
    pub failures: Family<FailureLabels, Counter>,
    pub reconcile_duration: Histograms<ControllerLabels>,
    pub deploy_phase: Histograms<PhaseLabels>,
    /// The process's resident memory, read at each scrape (`make bench`'s scale
    /// figures read it through the API server).
    pub resident_memory: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("aether_operator");
        let reconciles = Family::<ControllerLabels, Counter>::default();
        let failures = Family::<FailureLabels, Counter>::default();
        let reconcile_duration: Histograms<ControllerLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.005, 2.0, 12)));
        let deploy_phase: Histograms<PhaseLabels> =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.1, 2.0, 12)));
        registry.register("reconciles", "Reconcile runs", reconciles.clone());
        registry.register(
            "reconcile_failures",
            "Reconciles that returned an error",
            failures.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            reconcile_duration.clone(),
        );
        registry.register(
            "deploy_phase_seconds",
            "Time from the reconcile that first applies a new artifact to each deploy phase",
            deploy_phase.clone(),
        );
        let resident_memory = Gauge::default();
        registry.register(
            "resident_memory_bytes",
            "Resident memory of the operator process (Linux)",
            resident_memory.clone(),
        );
        Self {
            reconciles,
            failures,
            reconcile_duration,
            deploy_phase,
            resident_memory,
            registry,
        }
    }
}

impl Metrics {
    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        if let Some(bytes) = resident_bytes() {
            self.resident_memory.set(bytes);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    pub fn failed(&self, controller: &'static str, error: &'static str) {
        self.failures
            .get_or_create(&FailureLabels { controller, error })
            .inc();
    }
}

/// Resident set size from `/proc/self/statm` (pages × 4 KiB, the page size of every
/// platform the operator image is built for); None elsewhere.
fn resident_bytes() -> Option<i64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: i64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_exposition_reports_resident_memory() {
        let text = super::Metrics::default().encode();
        let line = text
            .lines()
            .find(|l| l.starts_with("aether_operator_resident_memory_bytes "))
            .expect(&text);
        let bytes: i64 = line.split(' ').nth(1).unwrap().parse().unwrap();
        assert!(bytes > 1 << 20, "{line}");
    }
}

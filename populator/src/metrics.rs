//! The populator's Prometheus metrics, and `/metrics` + `/healthz`.

use std::sync::{Arc, OnceLock};

use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::controller::failure::FailureReason;
use crate::controller::follow::Followers;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabel {
    /// succeeded, failed (terminal) or retried.
    pub result: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    /// The failure's reason code, as the mover spells it (`ChecksumMismatch`, ...).
    pub reason: &'static str,
}

/// How an import attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Succeeded,
    /// Failed, and will be tried again.
    Retried(FailureReason),
    /// Failed terminally.
    Failed(FailureReason),
}

impl Finished {
    fn result(self) -> &'static str {
        match self {
            Finished::Succeeded => "succeeded",
            Finished::Retried(_) => "retried",
            Finished::Failed(_) => "failed",
        }
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Counter,
    pub reconcile_errors: Counter,
    pub populations: Family<ResultLabel, Counter>,
    /// Failed attempts (retried or terminal), by reason.
    pub failures: Family<ReasonLabel, Counter>,
    /// From the target PVC's creation to its import's end.
    pub population_duration: Histogram,
    running: Gauge,
    followers: OnceLock<Arc<Followers>>,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("cdi_populator");
        let reconciles = Counter::default();
        registry.register("reconciles", "Reconciles of target PVCs", reconciles.clone());
        let reconcile_errors = Counter::default();
        registry.register("reconcile_errors", "Reconciles that failed (and were retried)", reconcile_errors.clone());
        let populations = Family::<ResultLabel, Counter>::default();
        registry.register("populations", "Imports finished, by result", populations.clone());
        let failures = Family::<ReasonLabel, Counter>::default();
        registry.register("population_failures", "Failed import attempts, by reason", failures.clone());
        let population_duration = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        registry.register(
            "population_duration_seconds",
            "From PVC creation to the end of its import",
            population_duration.clone(),
        );
        let running = Gauge::default();
        registry.register("populations_running", "Mover tasks followed now", running.clone());
        Arc::new(Metrics {
            reconciles,
            reconcile_errors,
            populations,
            failures,
            population_duration,
            running,
            followers: OnceLock::new(),
            registry,
        })
    }

    pub fn set_followers(&self, followers: Arc<Followers>) {
        let _ = self.followers.set(followers);
    }

    pub fn population_finished(&self, how: Finished, pvc: &PersistentVolumeClaim) {
        self.populations.get_or_create(&ResultLabel { result: how.result() }).inc();
        match how {
            Finished::Retried(reason) | Finished::Failed(reason) => {
                self.failures.get_or_create(&ReasonLabel { reason: reason.as_str() }).inc();
            }
            Finished::Succeeded => {
                if let Some(created) = &pvc.metadata.creation_timestamp {
                    let secs = (jiff::Timestamp::now() - created.0).get_seconds().max(0) as f64;
                    self.population_duration.observe(secs);
                }
            }
        }
    }

    pub fn encode(&self) -> String {
        if let Some(f) = self.followers.get() {
            self.running.set(f.running() as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Serves `/metrics` and `/healthz` until the listener fails.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) -> std::io::Result<()> {
    cdi_common::http::serve_metrics(listener, move || metrics.encode(), std::future::pending()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_by_their_typed_reason() {
        let m = Metrics::new();
        let pvc = PersistentVolumeClaim::default();
        m.population_finished(Finished::Failed(FailureReason::ChecksumMismatch), &pvc);
        m.population_finished(Finished::Retried(FailureReason::SourceUnavailable), &pvc);
        m.population_finished(Finished::Succeeded, &pvc);
        let text = m.encode();
        for line in [
            "cdi_populator_populations_total{result=\"failed\"} 1",
            "cdi_populator_populations_total{result=\"retried\"} 1",
            "cdi_populator_populations_total{result=\"succeeded\"} 1",
            "cdi_populator_population_failures_total{reason=\"ChecksumMismatch\"} 1",
            "cdi_populator_population_failures_total{reason=\"SourceUnavailable\"} 1",
        ] {
            assert!(text.contains(line), "no {line} in {text}");
        }
    }
}

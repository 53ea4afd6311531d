//! Prometheus metrics of the mover, and the small HTTP server for `/metrics` and `/healthz`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use super::tasks::State;

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResultLabels {
    /// succeeded, failed or cancelled.
    pub result: String,
    /// The failure's reason code; empty on success.
    pub reason: String,
}

/// Every metric the mover exports.
#[derive(Debug)]
pub struct Metrics {
    pub tasks_running: Gauge,
    pub tasks_total: Family<ResultLabels, Counter>,
    pub bytes_written: Counter,
    pub task_duration: Histogram,
    pub throughput: Gauge<f64, AtomicU64>,
    registry: Registry,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::with_prefix("cdi_mover");
        let tasks_running = Gauge::default();
        registry.register("tasks_running", "Imports running now", tasks_running.clone());
        let tasks_total = Family::<ResultLabels, Counter>::default();
        registry.register("tasks", "Imports finished, by result and reason", tasks_total.clone());
        let bytes_written = Counter::default();
        registry.register("written_bytes", "Data bytes written to targets by finished imports", bytes_written.clone());
        // 1 s to ~4.5 h.
        let task_duration = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        registry.register("task_duration_seconds", "How long imports took", task_duration.clone());
        let throughput = Gauge::<f64, AtomicU64>::default();
        registry.register(
            "throughput_bytes_per_second",
            "Current transfer rate of all running imports",
            throughput.clone(),
        );
        Arc::new(Metrics { tasks_running, tasks_total, bytes_written, task_duration, throughput, registry })
    }

    pub fn record_finished(&self, state: State, reason: &str, took: Duration) {
        let result = match state {
            State::Succeeded => "succeeded",
            State::Cancelled => "cancelled",
            _ => "failed",
        };
        self.tasks_total.get_or_create(&ResultLabels { result: result.into(), reason: reason.into() }).inc();
        self.task_duration.observe(took.as_secs_f64());
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String");
        out
    }
}

/// Serves `/metrics` and `/healthz` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    cdi_common::http::serve_metrics(listener, move || metrics.encode(), shutdown).await
}

//! `GET /metrics`: the server's figures in Prometheus' text exposition format (0.0.4).
//!
//! The figures are gathered per scrape (the shards' counters, the control thread's, the
//! history's) and written by the `prometheus` crate, which keeps the format's rules (escaping,
//! label order, HELP and TYPE lines) out of our code. Its metrics are made afresh per scrape
//! from the figures: the server's counters live where they are counted, not in a registry.
//! Pure: figures in, text out.

use prometheus::core::Collector;
use prometheus::{IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::figures::{ClusterFigures, ControlFigures, HistoryFigures, ShardFigures};

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything a scrape reports.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Each worker's figures, by worker number; `None` for a worker that did not answer.
    pub workers: Vec<Option<ShardFigures>>,
    /// The control thread's counters.
    pub control: ControlFigures,
    /// What the history holds.
    pub history: HistoryFigures,
    /// The cluster's state, in cluster mode.
    pub cluster: Option<ClusterFigures>,
}

/// Metric families of one scrape. Names and label names are ours and fixed, so the crate's
/// checks of them cannot fail at run time; a unit test renders every one.
struct Scrape(Registry);

impl Scrape {
    fn add(&self, metric: impl Collector + 'static) {
        self.0.register(Box::new(metric)).expect("fixed, distinct metric names");
    }

    fn gauge(&self, name: &str, help: &str, value: u64) {
        let gauge = IntGauge::new(name, help).expect("a valid metric name");
        gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
        self.add(gauge);
    }

    fn counter(&self, name: &str, help: &str, value: u64) {
        let counter = IntCounter::new(name, help).expect("a valid metric name");
        counter.inc_by(value);
        self.add(counter);
    }

    fn labelled_gauge(&self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        let gauges = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("a valid metric name");
        for (value, n) in values {
            gauges.with_label_values(&[value]).set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
        self.add(gauges);
    }

    fn labelled_counter(&self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        let counters = IntCounterVec::new(Opts::new(name, help), &[label]).expect("a valid metric name");
        for (value, n) in values {
            counters.with_label_values(&[value]).inc_by(*n);
        }
        self.add(counters);
    }
}

/// The snapshot as exposition text.
pub fn render(snapshot: &Snapshot) -> String {
    let mut total = ShardFigures::default();
    snapshot.workers.iter().flatten().for_each(|figures| total += *figures);
    let scrape = Scrape(Registry::new());
    scrape.gauge("hasses_connections", "Open client connections, all workers", total.connections);
    let numbers: Vec<String> = (0..snapshot.workers.len()).map(|n| n.to_string()).collect();
    let per_worker: Vec<(&str, u64)> = snapshot
        .workers
        .iter()
        .zip(&numbers)
        .filter_map(|(figures, number)| figures.map(|f| (number.as_str(), f.connections)))
        .collect();
    scrape.labelled_gauge(
        "hasses_worker_connections",
        "Open client connections per worker",
        "worker",
        &per_worker,
    );
    scrape.counter("hasses_connections_accepted_total", "Client connections accepted", total.accepted);
    scrape.labelled_counter(
        "hasses_connections_refused_total",
        "Client connections refused with 503 for a connection limit",
        "reason",
        &[("limit", total.refused)],
    );
    let published = snapshot.control.published;
    scrape.labelled_counter(
        "hasses_messages_published_total",
        "Events published, by where they came from",
        "source",
        &[("tcp", published.tcp), ("fifo", published.fifo), ("http", published.http)],
    );
    scrape.counter("hasses_deliveries_total", "Events queued to clients", total.deliveries);
    scrape.counter(
        "hasses_slow_clients_dropped_total",
        "Clients dropped for unsent bytes over --max-backlog",
        total.dropped_slow,
    );
    scrape.labelled_counter(
        "hasses_resumes_total",
        "Resumes with Last-Event-ID: complete, or told of a gap (reset)",
        "result",
        &[("complete", total.resumes_complete), ("reset", total.resumes_with_gap)],
    );
    scrape.labelled_counter(
        "hasses_auth_refused_total",
        "Subscriptions refused by the token check",
        "reason",
        &[
            ("missing", total.auth_refused_missing),
            ("invalid", total.auth_refused_invalid),
            ("forbidden", total.auth_refused_forbidden),
        ],
    );
    scrape.gauge("hasses_history_events", "Events kept for resume", snapshot.history.events);
    scrape.gauge("hasses_history_bytes", "Bytes of events kept for resume", snapshot.history.bytes);
    if let Some(cluster) = snapshot.cluster {
        scrape.gauge(
            "hasses_cluster_connected",
            "1 while this node reaches Redis both ways",
            u64::from(cluster.connected),
        );
        scrape.gauge("hasses_cluster_nodes", "Live nodes of the cluster", cluster.nodes);
        scrape.gauge(
            "hasses_cluster_lag_ms",
            "How far this node's tail of the stream is behind",
            cluster.lag_ms,
        );
        scrape.gauge("hasses_cluster_buffered", "Publishes held for the stream", cluster.buffered);
    }
    scrape.labelled_gauge(
        "hasses_build_info",
        "The running version",
        "version",
        &[(env!("CARGO_PKG_VERSION"), 1)],
    );
    TextEncoder::new().encode_to_string(&scrape.0.gather()).expect("text encoding of valid metrics")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::figures::Published;

    #[test]
    fn every_metric_is_there_with_its_labels() {
        let worker = ShardFigures {
            connections: 3,
            accepted: 5,
            deliveries: 7,
            resumes_with_gap: 1,
            ..Default::default()
        };
        let snapshot = Snapshot {
            workers: vec![Some(worker), None, Some(worker)],
            control: ControlFigures {
                published: Published { tcp: 1, fifo: 2, http: 3 },
                ..Default::default()
            },
            history: HistoryFigures { events: 4, bytes: 400, oldest: None },
            cluster: None,
        };
        let text = render(&snapshot);
        for line in [
            "hasses_connections 6",
            "hasses_worker_connections{worker=\"0\"} 3",
            "hasses_worker_connections{worker=\"2\"} 3",
            "hasses_connections_accepted_total 10",
            "hasses_connections_refused_total{reason=\"limit\"} 0",
            "hasses_messages_published_total{source=\"http\"} 3",
            "hasses_messages_published_total{source=\"fifo\"} 2",
            "hasses_deliveries_total 14",
            "hasses_slow_clients_dropped_total 0",
            "hasses_resumes_total{result=\"reset\"} 2",
            "hasses_auth_refused_total{reason=\"forbidden\"} 0",
            "hasses_history_events 4",
            "hasses_history_bytes 400",
            &format!("hasses_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION")),
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
        assert!(!text.contains("worker=\"1\""), "a worker that did not answer is left out");
        assert!(!text.contains("hasses_cluster"), "alone, nothing of a cluster");
        let cluster = ClusterFigures { connected: true, lag_ms: 3, buffered: 0, nodes: 3 };
        let text = render(&Snapshot { cluster: Some(cluster), ..snapshot });
        for line in ["hasses_cluster_connected 1", "hasses_cluster_nodes 3", "hasses_cluster_lag_ms 3"] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
        }
    }
}

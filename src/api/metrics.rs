//! `GET /metrics`: the server's figures in Prometheus' text exposition format (0.0.4).
//!
//! The figures are gathered per scrape (the shards' counters, the control thread's, the
//! history's) and written by the `prometheus` crate, which keeps the format's rules (escaping,
//! label order, HELP and TYPE lines) out of our code. Its metrics are made afresh per scrape
//! from the figures: the server's counters live where they are counted, not in a registry.
//! The shards' figures are written as `figures` declares them, each name, help and label
//! there; the few others (per worker, published by source, history, cluster) are named here.
//! Pure: figures in, text out.

use prometheus::core::Collector;
use prometheus::proto::{Bucket, Histogram, Metric, MetricFamily, MetricType};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder};

use crate::figures::{
    ClusterFigures, ControlFigures, DeliveryLatency, Family, Figure, HistoryFigures, HistoryFileFigures,
    Kind, ShardFigures,
};

/// The `Content-Type` of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Everything a scrape reports.
#[derive(Debug, Clone)]
pub struct Snapshot {
    /// Each worker's figures, by worker number; `None` for a worker that did not answer.
    pub workers: Vec<Option<ShardFigures>>,
    /// How long the workers' deliveries took, all added up.
    pub latency: DeliveryLatency,
    /// The control thread's counters.
    pub control: ControlFigures,
    /// What the history holds.
    pub history: HistoryFigures,
    /// The history file's state, with `--history-file`.
    pub history_file: Option<HistoryFileFigures>,
    /// The cluster's state, in cluster mode.
    pub cluster: Option<ClusterFigures>,
}

/// One series of a family: its value of the family's label (none without a label), and its figure.
type Sample<'a> = (Option<&'a str>, u64);

/// Metric families of one scrape. Names and label names are ours and fixed, so the crate's
/// checks of them cannot fail at run time; a unit test renders every one.
struct Scrape(Registry);

impl Scrape {
    fn add(&self, metric: impl Collector + 'static) {
        self.0.register(Box::new(metric)).expect("fixed, distinct metric names");
    }

    /// One family with its series. A family without a label is a vector of no labels, which
    /// the crate writes as it writes a lone counter or gauge.
    fn family(&self, family: &Family, series: &[Sample]) {
        let opts = Opts::new(family.name, family.help);
        let labels = family.label.as_slice();
        match family.kind {
            Kind::Counter => {
                let counters = IntCounterVec::new(opts, labels).expect("a valid metric name");
                for (value, n) in series {
                    counters.with_label_values(value.as_slice()).inc_by(*n);
                }
                self.add(counters);
            }
            Kind::Gauge => {
                let gauges = IntGaugeVec::new(opts, labels).expect("a valid metric name");
                for (value, n) in series {
                    gauges.with_label_values(value.as_slice()).set(i64::try_from(*n).unwrap_or(i64::MAX));
                }
                self.add(gauges);
            }
        }
    }

    fn gauge(&self, name: &'static str, help: &'static str, value: u64) {
        self.family(&Family::gauge(name, help), &[(None, value)]);
    }

    /// Declared figures, as their declaration says: the series of one family gathered first,
    /// as a family is registered once.
    fn figures(&self, figures: impl Iterator<Item = (&'static Figure, u64)>) {
        let mut families: Vec<(Family, Vec<Sample>)> = Vec::new();
        for (figure, n) in figures {
            let (family, value) = (figure.metric.family, figure.metric.value);
            match families.iter_mut().find(|(known, _)| known.name == family.name) {
                Some((_, series)) => series.push((value, n)),
                None => families.push((family, vec![(value, n)])),
            }
        }
        for (family, series) in &families {
            self.family(family, series);
        }
    }
}

/// The snapshot as exposition text.
pub fn render(snapshot: &Snapshot) -> String {
    let mut total = ShardFigures::default();
    snapshot.workers.iter().flatten().for_each(|figures| total += *figures);
    let scrape = Scrape(Registry::new());
    scrape.figures(total.figures());
    let numbers: Vec<String> = (0..snapshot.workers.len()).map(|n| n.to_string()).collect();
    let per_worker: Vec<Sample> = snapshot
        .workers
        .iter()
        .zip(&numbers)
        .filter_map(|(figures, number)| figures.map(|f| (Some(number.as_str()), f.connections)))
        .collect();
    scrape.family(
        &Family::gauge("hasses_worker_connections", "Open client connections per worker").by("worker"),
        &per_worker,
    );
    let published = snapshot.control.published;
    scrape.family(
        &Family::counter("hasses_messages_published_total", "Events published, by where they came from")
            .by("source"),
        &[(Some("tcp"), published.tcp), (Some("fifo"), published.fifo), (Some("http"), published.http)],
    );
    scrape.gauge("hasses_history_events", "Events kept for resume", snapshot.history.events);
    scrape.gauge("hasses_history_bytes", "Bytes of events kept for resume", snapshot.history.bytes);
    if let Some(file) = snapshot.history_file {
        scrape.gauge("hasses_history_file_bytes", "The history file's length", file.bytes);
        scrape.family(
            &Family::counter(
                "hasses_history_file_events_written_total",
                "Events written to the history file",
            ),
            &[(None, file.written)],
        );
        scrape.gauge(
            "hasses_history_file_writing",
            "1 while the history file is written, 0 once a write failed",
            u64::from(file.writing),
        );
    }
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
    scrape.family(
        &Family::gauge("hasses_build_info", "The running version").by("version"),
        &[(Some(env!("CARGO_PKG_VERSION")), 1)],
    );
    let mut families = scrape.0.gather();
    families.push(latency_family(&snapshot.latency));
    TextEncoder::new().encode_to_string(&families).expect("text encoding of valid metrics")
}

/// `hasses_delivery_latency_seconds`: the histogram of how long deliveries took, from the
/// event's sequencing to the write that handed it to the kernel. Its buckets are counted by the
/// shards, so it is written from them rather than observed into the crate's own histogram.
fn latency_family(latency: &DeliveryLatency) -> MetricFamily {
    let buckets = latency
        .cumulative()
        .map(|(bound, count)| {
            let mut bucket = Bucket::default();
            bucket.set_upper_bound(bound);
            bucket.set_cumulative_count(count);
            bucket
        })
        .collect();
    let mut histogram = Histogram::default();
    histogram.set_bucket(buckets);
    histogram.set_sample_count(latency.count());
    histogram.set_sample_sum(latency.sum_ns as f64 / 1e9);
    let mut metric = Metric::default();
    metric.set_histogram(histogram);
    let mut family = MetricFamily::default();
    family.set_name("hasses_delivery_latency_seconds".into());
    family.set_help(
        "How long deliveries took, from the event's sequencing to the write that handed it to the kernel"
            .into(),
    );
    family.set_field_type(MetricType::HISTOGRAM);
    family.set_metric(vec![metric]);
    family
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
        let mut latency = DeliveryLatency::default();
        latency.observe(std::time::Duration::from_micros(300), 5);
        latency.observe(std::time::Duration::from_secs(3), 1);
        let snapshot = Snapshot {
            workers: vec![Some(worker), None, Some(worker)],
            latency,
            control: ControlFigures {
                published: Published { tcp: 1, fifo: 2, http: 3 },
                ..Default::default()
            },
            history: HistoryFigures { events: 4, bytes: 400, oldest: None },
            history_file: None,
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
            "# TYPE hasses_delivery_latency_seconds histogram",
            "hasses_delivery_latency_seconds_bucket{le=\"0.00025\"} 0",
            "hasses_delivery_latency_seconds_bucket{le=\"0.0005\"} 5",
            "hasses_delivery_latency_seconds_bucket{le=\"2.5\"} 5",
            "hasses_delivery_latency_seconds_bucket{le=\"+Inf\"} 6",
            "hasses_delivery_latency_seconds_count 6",
            "hasses_delivery_latency_seconds_sum 3.0015",
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

    #[test]
    fn every_declared_figure_is_a_series_of_its_family() {
        let figures = ShardFigures::numbered();
        let snapshot = Snapshot {
            workers: vec![Some(figures)],
            latency: DeliveryLatency::default(),
            control: ControlFigures::default(),
            history: HistoryFigures::default(),
            history_file: None,
            cluster: None,
        };
        let text = render(&snapshot);
        for (figure, value) in figures.figures() {
            let family = figure.metric.family;
            let kind = match family.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let series = match (family.label, figure.metric.value) {
                (Some(label), Some(value)) => format!("{}{{{label}=\"{value}\"}}", family.name),
                _ => family.name.to_string(),
            };
            for line in [format!("# TYPE {} {kind}", family.name), format!("{series} {value}")] {
                assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
            }
        }
    }
}

//! The outputs: a table for people (stdout) and one JSON object per phase (`--json-out`), both
//! from a phase's typed [`Figures`].

use std::fmt::Write as _;

use serde::Serialize;

use crate::cli::Options;
use crate::figures::{Figures, Usage};
use crate::run::PhaseResult;

/// One JSON line: the run's context (repeated, so that lines from several runs can be mixed),
/// the receivers' counts, the phase's own figures and the CPU used.
#[derive(Serialize)]
struct JsonLine<'a> {
    scenario: &'static str,
    ok: bool,
    incomplete: Option<&'a str>,
    connections: u32,
    /// How many `--sse` addresses the connections were spread over, when several.
    #[serde(skip_serializing_if = "Option::is_none")]
    sse_addresses: Option<usize>,
    live_connections: u64,
    /// With `--http2`: the streams open, all connections together.
    #[serde(skip_serializing_if = "Option::is_none")]
    live_streams: Option<u64>,
    http2: bool,
    streams_per_connection: u32,
    threads: u32,
    payload: u32,
    tls: bool,
    time_s: f64,
    lost: u64,
    duplicated: u64,
    misrouted: u64,
    id_errors: u64,
    foreign: u64,
    resets: u64,
    connect_failed: u64,
    closed: u64,
    protocol_errors: u64,
    #[serde(flatten)]
    figures: &'a Figures,
    #[serde(flatten)]
    usage: &'a Usage,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    notes: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    error_samples: &'a [String],
}

/// A phase as one line of JSON.
pub fn json_line(opts: &Options, r: &PhaseResult) -> String {
    let c = &r.counters;
    let line = JsonLine {
        scenario: r.phase().name(),
        ok: r.ok(),
        incomplete: r.incomplete.as_deref(),
        connections: opts.connections,
        sse_addresses: Some(opts.sse.all().len()).filter(|&k| k > 1),
        live_connections: c.live_connections,
        live_streams: opts.http2.then_some(c.live),
        http2: opts.http2,
        streams_per_connection: opts.streams_per_connection,
        threads: opts.threads,
        payload: opts.payload,
        tls: opts.tls,
        time_s: r.time_s,
        lost: c.lost(),
        duplicated: c.duplicated(),
        misrouted: c.misrouted,
        id_errors: c.id_errors,
        foreign: c.foreign,
        resets: c.resets,
        connect_failed: c.connect_failed,
        closed: c.closed,
        protocol_errors: c.proto_errors,
        figures: &r.figures,
        usage: &r.usage,
        notes: &r.notes,
        error_samples: &c.error_samples,
    };
    serde_json::to_string(&line).expect("plain numbers and strings serialize")
}

/// The table's columns, in order.
const HEAD: [&str; 12] = [
    "phase",
    "time s",
    "rate",
    "latency",
    "srv CPU s",
    "srv CPU/unit",
    "memory",
    "tool CPU s",
    "lost",
    "dup",
    "misr",
    "status",
];

/// The columns whose content depends on the phase.
struct PhaseCells {
    rate: String,
    latency: String,
    per_unit: String,
    memory: String,
}

impl PhaseCells {
    fn of(figures: &Figures, tls: bool) -> PhaseCells {
        let none = || "-".to_string();
        match figures {
            Figures::Connect(f) | Figures::Reconnect(f) => {
                let mut cells = PhaseCells {
                    rate: format!("{:.0} conn/s", f.connections_per_s),
                    latency: none(),
                    per_unit: per_unit(f.server_cpu_us_per_connection, "conn"),
                    memory: f.server_rss_after_bytes.map_or_else(none, |b| format!("RSS {:.1} MiB", mib(b))),
                };
                if let Some(h2) = &f.http2 {
                    cells.rate = format!("{}, {:.0} streams/s", cells.rate, h2.streams_per_s);
                    if h2.server_cpu_us_per_stream.is_some() {
                        let stream = per_unit(h2.server_cpu_us_per_stream, "stream");
                        cells.per_unit = format!("{}, {stream}", cells.per_unit);
                    }
                }
                if let Some(t) = &f.tls {
                    cells.rate = format!("{}, {:.0} TLS hs/s", cells.rate, t.tls_handshakes_per_s);
                    if t.tls_resumed_handshakes > 0 {
                        cells.rate = format!("{} ({} resumed)", cells.rate, t.tls_resumed_handshakes);
                    }
                    cells.per_unit = per_unit(t.server_cpu_us_per_tls_handshake, "TLS hs");
                }
                cells
            }
            Figures::Idle(f) => PhaseCells {
                rate: none(),
                latency: none(),
                per_unit: none(),
                memory: match (f.rss_bytes_per_connection, f.rss_bytes_per_stream) {
                    (Some(conn), Some(stream)) => format!("{conn:.0} B/conn, {stream:.0} B/stream"),
                    (Some(b), None) => format!("{b:.0} B/{}", if tls { "TLS conn" } else { "conn" }),
                    _ => none(),
                },
            },
            Figures::Broadcast(f) => PhaseCells {
                rate: format!("{} msgs / {} ms", f.messages, f.interval_ms),
                latency: format!(
                    "last rcv {:.1}/{:.1}/{:.1} ms",
                    f.last_receiver.last_receiver_ms_p50,
                    f.last_receiver.last_receiver_ms_p99,
                    f.last_receiver.last_receiver_ms_max
                ),
                per_unit: per_unit(f.server_cpu_us_per_delivery, "deliv"),
                memory: none(),
            },
            Figures::Burst(f) => PhaseCells {
                rate: format!("{:.0} deliv/s", f.deliveries_per_s),
                latency: format!("all in {:.1} ms", f.all_received_s * 1e3),
                per_unit: per_unit(f.server_cpu_us_per_delivery, "deliv"),
                memory: none(),
            },
            Figures::Targeted(f) => PhaseCells {
                rate: match f.rate_per_s {
                    Some(r) => format!("{:.0} msg/s (paced {r}/s)", f.messages_per_s),
                    None => format!("{:.0} msg/s", f.messages_per_s),
                },
                latency: format!(
                    "p50/p99/max {:.2}/{:.2}/{:.2} ms",
                    f.last_receiver.last_receiver_ms_p50,
                    f.last_receiver.last_receiver_ms_p99,
                    f.last_receiver.last_receiver_ms_max
                ),
                per_unit: per_unit(f.server_cpu_us_per_message, "msg"),
                memory: none(),
            },
            Figures::Presence(f) => PhaseCells {
                rate: format!("{} polls, count {}", f.polls, f.presence_count),
                latency: format!(
                    "p50/p99/max {:.3}/{:.3}/{:.3} ms",
                    f.poll_ms_p50, f.poll_ms_p99, f.poll_ms_max
                ),
                per_unit: per_unit(f.server_cpu_us_per_poll, "poll"),
                memory: none(),
            },
            Figures::Resume(f) => PhaseCells {
                rate: format!("{} resumed, {} missed each", f.resumed, f.missed_per_connection),
                latency: format!("all replayed in {:.1} ms", f.all_replayed_s * 1e3),
                per_unit: match f.budget_us_per_resume {
                    Some(budget) => {
                        format!("{} (budget {budget:.2})", per_unit(f.server_cpu_us_per_resume, "resume"))
                    }
                    None => per_unit(f.server_cpu_us_per_resume, "resume"),
                },
                memory: none(),
            },
            Figures::Switched(f) => PhaseCells {
                rate: format!(
                    "{} back, {} published (none for {:.2} s)",
                    f.returned, f.published, f.longest_publish_gap_s
                ),
                latency: format!(
                    "switch {:.2} s, back {}, caught up {}",
                    f.switch_s,
                    seconds(f.all_back_s),
                    seconds(f.all_caught_up_s)
                ),
                per_unit: match f.budget_us_per_return {
                    Some(budget) => {
                        format!("{} (budget {budget:.2})", per_unit(f.server_cpu_us_per_return, "return"))
                    }
                    None => per_unit(f.server_cpu_us_per_return, "return"),
                },
                memory: none(),
            },
        }
    }
}

fn seconds(s: Option<f64>) -> String {
    s.map_or("-".into(), |s| format!("{s:.2} s"))
}

/// A phase's row, column by column as in [`HEAD`].
fn row(r: &PhaseResult, tls: bool) -> [String; HEAD.len()] {
    let c = &r.counters;
    let status = match (&r.incomplete, r.ok()) {
        (Some(why), _) => format!("FAIL: {why}"),
        (None, true) => "ok".into(),
        (None, false) => "FAIL".into(),
    };
    let PhaseCells { rate, latency, per_unit, memory } = PhaseCells::of(&r.figures, tls);
    [
        r.phase().name().into(),
        format!("{:.3}", r.time_s),
        rate,
        latency,
        r.usage.server_cpu_s.map_or("-".into(), |s| format!("{s:.3}")),
        per_unit,
        memory,
        format!("{:.3}", r.usage.tool_cpu_s),
        c.lost().to_string(),
        c.duplicated().to_string(),
        c.misrouted.to_string(),
        status,
    ]
}

/// The table printed at the end, then each phase's errors and warnings.
pub fn table(opts: &Options, results: &[PhaseResult]) -> String {
    let mut rows = vec![HEAD.map(String::from)];
    rows.extend(results.iter().map(|r| row(r, opts.tls)));
    let widths: Vec<usize> =
        (0..HEAD.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let spread = match opts.sse.all().len() {
        1 => String::new(),
        k => format!(" to {k} SSE addresses"),
    };
    let http2 = match (opts.http2, opts.tls) {
        (false, _) => String::new(),
        (true, tls) => format!(
            " × {} streams over HTTP/2 ({})",
            opts.streams_per_connection,
            if tls { "h2" } else { "h2c" }
        ),
    };
    let mut out = format!(
        "hasses-bench: {} connections{http2}{spread}{}, {} receiver thread(s), payload {} B\n",
        opts.connections,
        if opts.tls { " over TLS" } else { "" },
        opts.threads,
        opts.payload
    );
    for row in &rows {
        let mut line = String::new();
        for (cell, w) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<w$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    for r in results {
        let c = &r.counters;
        let name = r.phase().name();
        let extra = c.id_errors + c.foreign + c.resets + c.failed_connections();
        if extra > 0 {
            let _ = writeln!(
                out,
                "{name}: id errors {}, foreign events {}, resets {}, connect failures {}, closed {}, \
                 protocol errors {}",
                c.id_errors, c.foreign, c.resets, c.connect_failed, c.closed, c.proto_errors
            );
        }
        for e in &c.error_samples {
            let _ = writeln!(out, "  e.g. {e}");
        }
        if !r.usage.server_cpu_s_each.is_empty() {
            let each: Vec<String> = (r.usage.server_cpu_s_each.iter().zip(&opts.server_pid))
                .map(|(s, pid)| format!("{s:.3} (pid {pid})"))
                .collect();
            let _ = writeln!(out, "{name}: server CPU s by process: {}", each.join(" + "));
        }
        for n in &r.notes {
            let _ = writeln!(out, "{name}: warning: {n}");
        }
    }
    out
}

fn per_unit(us: Option<f64>, unit: &str) -> String {
    us.map_or("-".into(), |v| format!("{v:.2} µs/{unit}"))
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use serde_json::Value;

    use super::*;
    use crate::figures::{
        Broadcast, Burst, Connect, Idle, LastReceiver, Latency, Resume, StreamsConnect, Targeted,
        TlsHandshakes,
    };
    use crate::run::resume_budget;
    use crate::stats::Counters;

    fn options(args: &[&str]) -> Options {
        Options::try_parse_from([&["hasses-bench", "all", "-n", "3"], args].concat()).unwrap()
    }

    fn result(figures: Figures) -> PhaseResult {
        PhaseResult {
            incomplete: None,
            counters: Counters { handshaked: 3, live: 3, ..Counters::default() },
            time_s: 0.5,
            usage: Usage {
                server_cpu_s: Some(0.25),
                server_cpu_stat_s: Some(0.2),
                server_cpu_s_each: Vec::new(),
                tool_cpu_s: 0.125,
            },
            figures,
            notes: Vec::new(),
        }
    }

    fn connect(tls: Option<TlsHandshakes>) -> Figures {
        Figures::Connect(Connect {
            handshaked: 3,
            connections_per_s: 6.0,
            server_cpu_us_per_connection: Some(83.3),
            server_clients: Some(3),
            server_rss_before_bytes: None,
            server_rss_after_bytes: Some(3 << 20),
            http2: None,
            tls,
        })
    }

    fn json(opts: &Options, r: &PhaseResult) -> serde_json::Map<String, Value> {
        match serde_json::from_str(&json_line(opts, r)).unwrap() {
            Value::Object(map) => map,
            other => panic!("not an object: {other}"),
        }
    }

    #[test]
    fn a_json_line_holds_the_context_the_counts_the_figures_and_the_cpu() {
        let line = json(&options(&[]), &result(connect(None)));
        assert_eq!(line["scenario"], "connect");
        assert_eq!(line["ok"], true);
        assert_eq!(line["incomplete"], Value::Null);
        assert_eq!(line["connections"], 3);
        assert_eq!(line["lost"], 0);
        assert_eq!(line["handshaked"], 3);
        assert_eq!(line["server_clients"], 3);
        // A figure that could not be taken is null, not missing.
        assert_eq!(line["server_rss_before_bytes"], Value::Null);
        assert_eq!(line["server_cpu_s"], 0.25);
        assert_eq!(line["tool_cpu_s"], 0.125);
        for absent in ["tls_handshakes", "notes", "error_samples", "sse_addresses", "server_cpu_s_each"] {
            assert!(!line.contains_key(absent), "{absent} in {line:?}");
        }
    }

    #[test]
    fn several_sse_addresses_are_counted_in_the_json_and_the_heading() {
        let opts = options(&["--sse", "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3"]);
        let r = result(connect(None));
        assert_eq!(json(&opts, &r)["sse_addresses"], 3);
        let table = table(&opts, &[r]);
        assert!(table.starts_with("hasses-bench: 3 connections to 3 SSE addresses, 1 receiver"), "{table}");
        let one = table_heading(&options(&[]));
        assert!(one.starts_with("hasses-bench: 3 connections, 1 receiver"), "{one}");
    }

    #[test]
    fn several_server_pids_show_each_ones_cpu() {
        let opts = options(&["--server-pid", "11,12"]);
        let mut r = result(connect(None));
        r.usage.server_cpu_s_each = vec![0.125, 0.125];
        assert_eq!(json(&opts, &r)["server_cpu_s_each"], serde_json::json!([0.125, 0.125]));
        let table = table(&opts, &[r]);
        assert!(
            table.contains("connect: server CPU s by process: 0.125 (pid 11) + 0.125 (pid 12)"),
            "{table}"
        );
    }

    fn table_heading(opts: &Options) -> String {
        table(opts, &[]).lines().next().unwrap_or_default().to_string()
    }

    #[test]
    fn tls_figures_appear_with_tls_only() {
        let opts = options(&["--tls", "--ca", "ca.pem"]);
        let tls = TlsHandshakes {
            tls_handshakes: 3,
            tls_resumed_handshakes: 0,
            tls_handshakes_per_s: 5.0,
            server_cpu_us_per_tls_handshake: Some(250.0),
            tool_cpu_us_per_tls_handshake: None,
        };
        let r = result(connect(Some(tls)));
        let line = json(&opts, &r);
        assert_eq!(line["tls"], true);
        assert_eq!(line["tls_handshakes"], 3);
        assert_eq!(line["tool_cpu_us_per_tls_handshake"], Value::Null);
        let table = table(&opts, &[r]);
        assert!(table.contains("6 conn/s, 5 TLS hs/s"), "{table}");
        assert!(table.contains("250.00 µs/TLS hs"), "{table}");
    }

    #[test]
    fn the_table_shows_each_phase_in_its_columns() {
        let idle = Figures::Idle(Idle {
            idle_s: 0.2,
            rss_before_bytes: Some(1000),
            rss_after_bytes: Some(2200),
            rss_bytes_per_connection: Some(400.0),
            rss_bytes_per_stream: None,
            rss_bytes_per_tls_connection: None,
        });
        let broadcast = Figures::Broadcast(Broadcast {
            messages: 5,
            interval_ms: 20,
            deliveries: 15,
            expected_deliveries: 15,
            last_receiver: LastReceiver {
                last_receiver_ms_p50: 1.5,
                last_receiver_ms_p99: 2.0,
                last_receiver_ms_max: 3.0,
            },
            latency: Latency::default(),
            server_cpu_us_per_delivery: None,
        });
        let mut failed = result(broadcast);
        failed.incomplete = Some("timeout".into());
        let table = table(&options(&[]), &[result(connect(None)), result(idle), failed]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[1].starts_with("phase") && lines[1].ends_with("status"), "{table}");
        let cells = |line: &str| line.split("  ").map(str::trim).filter(|c| !c.is_empty()).count();
        assert_eq!(cells(lines[1]), HEAD.len(), "{table}");
        assert!(lines[2].starts_with("connect ") && lines[2].contains("RSS 3.0 MiB"), "{table}");
        assert!(lines[3].starts_with("idle ") && lines[3].contains("400 B/conn"), "{table}");
        assert!(
            lines[4].contains("5 msgs / 20 ms") && lines[4].contains("last rcv 1.5/2.0/3.0 ms"),
            "{table}"
        );
        assert!(lines[4].ends_with("FAIL: timeout"), "{table}");
    }

    #[test]
    fn http2_figures_are_per_connection_and_per_stream() {
        let opts = options(&["--http2", "--streams-per-connection", "10"]);
        let mut connect = connect(None);
        if let Figures::Connect(f) = &mut connect {
            f.http2 = Some(StreamsConnect {
                streams_per_connection: 10,
                streams_per_s: 60.0,
                server_cpu_us_per_stream: Some(8.33),
            });
        }
        let idle = Figures::Idle(Idle {
            idle_s: 0.2,
            rss_before_bytes: Some(1000),
            rss_after_bytes: Some(9000),
            rss_bytes_per_connection: Some(4000.0),
            rss_bytes_per_stream: Some(400.0),
            rss_bytes_per_tls_connection: None,
        });
        let mut r = result(idle);
        r.counters.live = 20;
        r.counters.live_connections = 2;
        let line = json(&opts, &r);
        assert_eq!((line["live_connections"].as_u64(), line["live_streams"].as_u64()), (Some(2), Some(20)));
        assert_eq!(
            (line["http2"].as_bool(), line["streams_per_connection"].as_u64()),
            (Some(true), Some(10))
        );
        assert_eq!(line["rss_bytes_per_stream"], 400.0);
        let connect = result(connect);
        assert_eq!(json(&opts, &connect)["server_cpu_us_per_stream"], 8.33);
        let table = table(&opts, &[connect, r]);
        assert!(table.starts_with("hasses-bench: 3 connections × 10 streams over HTTP/2 (h2c)"), "{table}");
        assert!(table.contains("60 streams/s") && table.contains("8.33 µs/stream"), "{table}");
        assert!(table.contains("4000 B/conn, 400 B/stream"), "{table}");
        let plain = json(&options(&[]), &result(super::tests::connect(None)));
        assert!(!plain.contains_key("live_streams") && !plain.contains_key("streams_per_s"), "{plain:?}");
    }

    #[test]
    fn the_targeted_row_shows_each_messages_latency_and_the_pace() {
        let targeted = |rate_per_s| {
            Figures::Targeted(Targeted {
                messages: 500,
                received: 500,
                all_received_s: 0.25,
                messages_per_s: 1999.6,
                rate_per_s,
                latency: Latency { latency_ms_p50: 0.3, latency_ms_p99: 0.9, latency_ms_max: 1.25 },
                last_receiver: LastReceiver {
                    last_receiver_ms_p50: 0.31,
                    last_receiver_ms_p99: 0.92,
                    last_receiver_ms_max: 1.25,
                },
                server_cpu_us_per_message: Some(12.0),
            })
        };
        let paced = result(targeted(Some(2000)));
        let line = json(&options(&[]), &paced);
        assert_eq!(line["rate_per_s"], 2000);
        assert_eq!(line["last_receiver_ms_p50"], 0.31);
        assert_eq!(line["last_receiver_ms_p99"], 0.92);
        assert_eq!(line["last_receiver_ms_max"], 1.25);
        assert_eq!(line["latency_ms_p50"], 0.3, "the histogram's figures stay beside");
        let table = table(&options(&[]), &[paced]);
        assert!(table.contains("2000 msg/s (paced 2000/s)"), "{table}");
        assert!(table.contains("p50/p99/max 0.31/0.92/1.25 ms"), "{table}");
        let unpaced = result(targeted(None));
        assert_eq!(json(&options(&[]), &unpaced)["rate_per_s"], Value::Null);
        let table = super::table(&options(&[]), &[unpaced]);
        assert!(table.contains("2000 msg/s ") && !table.contains("paced"), "{table}");
    }

    #[test]
    fn the_resume_row_shows_its_cpu_against_a_budget_from_connect_and_burst() {
        let burst = Figures::Burst(Burst {
            messages: 100,
            deliveries: 300,
            expected_deliveries: 300,
            all_received_s: 0.1,
            deliveries_per_s: 3000.0,
            latency: Latency::default(),
            server_cpu_us_per_delivery: Some(0.2),
        });
        let earlier = [result(connect(None)), result(burst)];
        // 1.5 × (83.3 + 100 × 0.2)
        let budget = resume_budget(&earlier, 100.0).unwrap();
        assert!((budget - 154.95).abs() < 1e-9, "{budget}");
        assert_eq!(resume_budget(&earlier[..1], 100.0), None, "no burst, no budget");
        let resume = Figures::Resume(Resume {
            resumed: 3,
            missed_per_connection: 100,
            replayed: 300,
            expected_replayed: 300,
            all_replayed_s: 0.25,
            live_after_replay: 3,
            server_cpu_us_per_resume: Some(60.0),
            budget_us_per_resume: Some(budget),
        });
        let mut r = result(resume);
        r.counters.resets = 1;
        let line = json(&options(&[]), &r);
        assert_eq!((line["resets"].as_u64(), line["replayed"].as_u64()), (Some(1), Some(300)));
        let table = table(&options(&[]), &[r]);
        assert!(table.contains("3 resumed, 100 missed each"), "{table}");
        assert!(table.contains("all replayed in 250.0 ms"), "{table}");
        assert!(table.contains("60.00 µs/resume (budget 154.95)"), "{table}");
        assert!(table.contains("resets 1"), "{table}");
    }
}

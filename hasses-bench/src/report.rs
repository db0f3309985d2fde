//! The outputs: a table for people (stdout) and one JSON object per phase (`--json-out`).

use std::fmt::Write as _;

use serde_json::{json, Map, Value};

use crate::cli::Options;
use crate::run::PhaseResult;

/// The whole-run context every JSON line repeats, so lines from several runs can be mixed.
pub fn json_line(opts: &Options, r: &PhaseResult) -> String {
    let c = &r.counters;
    let mut m = Map::new();
    m.insert("scenario".into(), json!(r.phase.name()));
    m.insert("ok".into(), json!(r.ok()));
    m.insert("incomplete".into(), json!(r.incomplete));
    m.insert("connections".into(), json!(opts.connections));
    m.insert("live_connections".into(), json!(c.live));
    m.insert("threads".into(), json!(opts.threads));
    m.insert("payload".into(), json!(opts.payload));
    m.insert("tls".into(), json!(opts.tls));
    m.insert("time_s".into(), json!(r.time_s));
    m.insert("lost".into(), json!(c.lost()));
    m.insert("duplicated".into(), json!(c.duplicated()));
    m.insert("misrouted".into(), json!(c.misrouted));
    m.insert("id_errors".into(), json!(c.id_errors));
    m.insert("foreign".into(), json!(c.foreign));
    m.insert("connect_failed".into(), json!(c.connect_failed));
    m.insert("closed".into(), json!(c.closed));
    m.insert("protocol_errors".into(), json!(c.proto_errors));
    for (k, v) in &r.figures {
        m.insert(k.clone(), v.clone());
    }
    if !r.notes.is_empty() {
        m.insert("notes".into(), json!(r.notes));
    }
    if !c.error_samples.is_empty() {
        m.insert("error_samples".into(), json!(c.error_samples));
    }
    Value::Object(m).to_string()
}

/// The table printed at the end.
pub fn table(opts: &Options, results: &[PhaseResult]) -> String {
    let head = [
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
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| s.to_string()).collect()];
    for r in results {
        let c = &r.counters;
        let status = match (&r.incomplete, r.ok()) {
            (Some(why), _) => format!("FAIL: {why}"),
            (None, true) => "ok".into(),
            (None, false) => "FAIL".into(),
        };
        let [rate, latency, unit, mem] = r.cells.clone();
        rows.push(vec![
            r.phase.name().into(),
            format!("{:.3}", r.time_s),
            rate,
            latency,
            r.server_cpu_s.map_or("-".into(), |s| format!("{s:.3}")),
            unit,
            mem,
            format!("{:.3}", r.tool_cpu_s),
            c.lost().to_string(),
            c.duplicated().to_string(),
            c.misrouted.to_string(),
            status,
        ]);
    }
    let widths: Vec<usize> =
        (0..head.len()).map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = format!(
        "hasses-bench: {} connections{}, {} receiver thread(s), payload {} B\n",
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
        let extra = c.id_errors + c.foreign + c.failed_connections();
        if extra > 0 {
            let _ = writeln!(
                out,
                "{}: id errors {}, foreign events {}, connect failures {}, closed {}, protocol errors {}",
                r.phase.name(),
                c.id_errors,
                c.foreign,
                c.connect_failed,
                c.closed,
                c.proto_errors
            );
        }
        for e in &c.error_samples {
            let _ = writeln!(out, "  e.g. {e}");
        }
        for n in &r.notes {
            let _ = writeln!(out, "{}: warning: {n}", r.phase.name());
        }
    }
    out
}

//! # hasses-bench: capacity benchmark for hasses
//!
//! Opens N SSE connections, publishes through the control port, and measures what the
//! server does with them: connect rate, idle memory, broadcast latency, burst and targeted
//! throughput, resumes after missed events, the server's CPU per unit of work and the tool's own
//! CPU beside it. Every receiver counts lost, duplicated and misrouted messages; any of them
//! fails the run. The server may be a cluster: connections spread over its nodes' addresses,
//! messages published on one node, the CPU summed over the nodes' processes.
//!
//! ```text
//!   orchestrator (main thread) ── Control: one TCP connection, line protocol ──► server
//!        │  Cmd + Waker                                                            │
//!        ▼                                                                         │
//!   receiver 0 … T-1: one mio Poll each, connection i on thread i mod T ◄── SSE ────┘
//!        └── Progress atomics (handshaked, failed, delivered) ──► orchestrator
//! ```
//!
//! ## Layout
//! - [`cli`]: the command line and the scenarios.
//! - [`run`]: the orchestrator, one function per phase.
//! - [`receiver`]: receiver threads: connecting, reading, counting.
//! - [`parse`]: the response head, chunked coding and SSE events (pure).
//! - [`control`]: the publisher and the payload format.
//! - [`presence`]: the presence phase's polls of the HTTP API.
//! - [`floor`]: `floor-server`, the least an epoll server does, to read the figures against.
//! - [`hop`]: `stream-hop`, the least a cluster's hop through Redis takes, likewise.
//! - [`stats`]: counters and the latency histogram.
//! - [`steady`]: the restart scenario's publisher: steady, acknowledged, reconnecting.
//! - [`switch`]: the server giving way to a new one (restart), and the process left serving.
//! - [`figures`]: what each phase measured, typed.
//! - [`report`]: the table and the JSON lines, from the figures.
//! - [`sys`]: clock, rusage, rlimit, socket option (through nix), `/proc/PID`.
//! - [`tls`]: the rustls client settings (`--tls`).
//! - [`h2`]: a connection's HTTP/2, client side (`--http2`): frames in and out (pure).
#![forbid(unsafe_code)]

mod cli;
mod control;
mod figures;
mod floor;
mod h2;
mod handshakes;
mod hop;
mod parse;
mod presence;
mod publish;
mod receiver;
mod report;
mod run;
mod stats;
mod steady;
mod switch;
mod sys;
mod tls;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let opts = cli::Options::parse();
    if let Err(why) = opts.validate() {
        eprintln!("hasses-bench: {why}");
        return ExitCode::from(2);
    }
    let nofile = sys::raise_nofile();
    if opts.scenario == cli::Scenario::PublishHttp {
        let pids = &opts.server_pid;
        return match publish::run(opts.publishes as usize, opts.via, pids, opts.control.addr, opts.api.addr) {
            Ok((by_line, by_http)) => {
                print!("{}", publish::table(by_line.as_ref(), by_http.as_ref()));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hasses-bench: publish-http: {e}");
                ExitCode::FAILURE
            }
        };
    }
    if opts.scenario == cli::Scenario::TlsHandshakes {
        return tls_handshakes(&opts);
    }
    if opts.scenario == cli::Scenario::StreamHop {
        return stream_hop(&opts);
    }
    if opts.scenario == cli::Scenario::FloorServer {
        if let Err(e) = nofile.and_then(|_| {
            floor::serve(opts.sse.first().addr, opts.control.addr, opts.floor_workers(), &opts.path)
        }) {
            eprintln!("hasses-bench: floor-server: {e}");
        }
        return ExitCode::from(2);
    }
    match nofile {
        Ok(limit) if limit < u64::from(opts.connections) + 16 => eprintln!(
            "hasses-bench: warning: the open-files limit ({limit}) is below {} connections",
            opts.connections
        ),
        Ok(_) => {}
        Err(e) => eprintln!("hasses-bench: warning: cannot raise the open-files limit: {e}"),
    }
    let Ok(mut json_out) = open_json(&opts) else { return ExitCode::from(2) };
    let mut bench = match run::Bench::new(opts.clone()) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("hasses-bench: cannot start: {e}");
            return ExitCode::from(2);
        }
    };
    let results = bench.run();
    bench.stop();
    print!("{}", report::table(&opts, &results));
    let lines: String = results.iter().map(|r| report::json_line(&opts, r) + "\n").collect();
    if write_json(&mut json_out, &lines).is_err() {
        return ExitCode::from(2);
    }
    let complete = results.len() == opts.phases().len();
    if complete && results.iter().all(run::PhaseResult::ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The `tls-handshakes` scenario: handshakes one after the other, and their server CPU.
fn tls_handshakes(opts: &cli::Options) -> ExitCode {
    let figures = tls::TlsSetup::from_options(opts).and_then(|setup| {
        let setup = setup.ok_or_else(|| std::io::Error::other("--tls is needed"))?;
        handshakes::run(&setup, opts.sse.first().addr, opts.connections, opts.tls_resume, &opts.server_pid)
    });
    match figures {
        Ok(figures) => {
            print!("{}", handshakes::table(&figures));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("hasses-bench: tls-handshakes: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `stream-hop`: no connections, no server; its own table and JSON line.
fn stream_hop(opts: &cli::Options) -> ExitCode {
    let Ok(mut json_out) = open_json(opts) else { return ExitCode::from(2) };
    let figures = match hop::run(&opts.redis, opts.targeted, opts.rate.unwrap_or(1000)) {
        Ok(figures) => figures,
        Err(e) => {
            eprintln!("hasses-bench: stream-hop: {e}");
            return ExitCode::FAILURE;
        }
    };
    print!("{}", figures.table());
    let line = serde_json::to_string(&figures).expect("plain numbers and strings serialize") + "\n";
    if write_json(&mut json_out, &line).is_err() {
        return ExitCode::from(2);
    }
    if figures.ok() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The --json-out file, opened to append before anything runs, so that a bad path fails first.
fn open_json(opts: &cli::Options) -> Result<Option<File>, ()> {
    let Some(path) = &opts.json_out else { return Ok(None) };
    OpenOptions::new().create(true).append(true).open(path).map(Some).map_err(|e| {
        eprintln!("hasses-bench: {}: {e}", path.display());
    })
}

/// Appends these JSON lines, if there is a file to.
fn write_json(json_out: &mut Option<File>, lines: &str) -> Result<(), ()> {
    let Some(f) = json_out else { return Ok(()) };
    f.write_all(lines.as_bytes()).map_err(|e| eprintln!("hasses-bench: writing the JSON lines: {e}"))
}

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
//! - [`floor`]: `floor-server`, the least an epoll server does, to read the figures against.
//! - [`stats`]: counters and the latency histogram.
//! - [`figures`]: what each phase measured, typed.
//! - [`report`]: the table and the JSON lines, from the figures.
//! - [`sys`]: clock, rusage, rlimit, socket option (through nix), `/proc/PID`.
//! - [`tls`]: the rustls client settings (`--tls`).
#![forbid(unsafe_code)]

mod cli;
mod control;
mod figures;
mod floor;
mod parse;
mod publish;
mod receiver;
mod report;
mod run;
mod stats;
mod sys;
mod tls;

use std::fs::OpenOptions;
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
        return match publish::run(opts.publishes as usize, pids, opts.control.addr, opts.api.addr) {
            Ok((by_line, by_http)) => {
                print!("{}", publish::table(&by_line, &by_http));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("hasses-bench: publish-http: {e}");
                ExitCode::FAILURE
            }
        };
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
    let mut json_out = match &opts.json_out {
        Some(path) => match OpenOptions::new().create(true).append(true).open(path) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("hasses-bench: {}: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => None,
    };
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
    if let Some(f) = json_out.as_mut() {
        let lines: String = results.iter().map(|r| report::json_line(&opts, r) + "\n").collect();
        if let Err(e) = f.write_all(lines.as_bytes()) {
            eprintln!("hasses-bench: writing the JSON lines: {e}");
            return ExitCode::from(2);
        }
    }
    let complete = results.len() == opts.phases().len();
    if complete && results.iter().all(run::PhaseResult::ok) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

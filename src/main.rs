//! The `hasses` binary: read the command line, start the server, wait for a signal.

use std::process::ExitCode;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use tracing::{info, warn};

use hasses::config::{self, Config, Invocation};
use hasses::log::{Sink, REPORT};
use hasses::server;

fn main() -> ExitCode {
    let config = match config::parse_args(std::env::args_os().skip(1)) {
        Ok(Invocation::Run(config)) => config,
        Ok(Invocation::Print(text)) => {
            println!("{}", text.trim_end());
            return ExitCode::SUCCESS;
        }
        Err(e) => return fail(&e),
    };
    match run(&config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("hasses: {error}");
    ExitCode::FAILURE
}

/// Everything is opened while we still have the terminal and our privileges; threads start last.
fn run(config: &Config) -> Result<(), Box<dyn std::error::Error>> {
    let sink = Sink::open(&config.log_target)?;
    let bound = server::bind(config)?;
    if config.daemon {
        server::daemonize()?;
    }
    if let Some(path) = &config.pidfile {
        server::write_pidfile(path)?;
    }
    if let Some(user) = &config.user {
        server::drop_privileges(user)?;
    }
    // Registered before any thread starts, so no thread is left with the default handlers.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let log_guard = sink.install(config.log_level)?;
    let running = server::start(config, bound)?;
    running.notify_ready();
    for signal in signals.forever() {
        if signal != SIGHUP {
            break;
        }
        match sink.reopen() {
            Ok(()) => info!("Log file reopened"),
            Err(e) => warn!("{e}"),
        }
        running.reload_tls();
    }
    info!(target: REPORT, "Shutting down");
    server::notify_systemd("STOPPING=1");
    let stopped = running.shutdown();
    if let Some(path) = &config.pidfile {
        if let Err(e) = std::fs::remove_file(path) {
            warn!("Cannot remove pid file {}: {e}", path.display());
        }
    }
    drop(log_guard);
    Ok(stopped?)
}

//! The `hasses` binary: read the command line, start the server, wait for a signal.

use std::process::ExitCode;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGUSR2};
use signal_hook::iterator::Signals;
use tracing::{error, info, warn};

use hasses::config::{self, Config, Invocation};
use hasses::log::{Sink, REPORT};
use hasses::{server, upgrade};

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
    // The binary an upgrade starts: this path, where a new build is installed over this one.
    let binary = std::env::current_exe()?;
    let args: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    let sink = Sink::open(&config.log_target)?;
    let inherited = upgrade::inherited()?;
    // A process that takes over is detached already: its predecessor was.
    let detach = config.daemon && inherited.is_none();
    let bound = server::bind(config, inherited)?;
    if detach {
        server::daemonize()?;
    }
    if let Some(path) = &config.pidfile {
        server::write_pidfile(path)?;
    }
    if let Some(user) = &config.user {
        server::drop_privileges(user)?;
    }
    // Registered before any thread starts, so no thread is left with the default handlers.
    let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP, SIGUSR2])?;
    let log_guard = sink.install(config.log_level)?;
    let mut running = server::start(config, bound)?;
    running.notify_ready();
    let mut handed_over = false;
    for signal in signals.forever() {
        match signal {
            SIGHUP => {
                match sink.reopen() {
                    Ok(()) => info!("Log file reopened"),
                    Err(e) => warn!("{e}"),
                }
                running.reload_tls();
            }
            SIGUSR2 => match running.upgrade(&binary, &args) {
                Ok(successor) => {
                    info!(target: REPORT, "Upgrade: pid {} serves; draining", successor.pid);
                    handed_over = true;
                    break;
                }
                Err(e) => error!("Upgrade failed, serving on: {e}"),
            },
            _ => break,
        }
    }
    if !handed_over {
        info!(target: REPORT, "Shutting down");
        server::notify_systemd("STOPPING=1");
    }
    let stopped = running.shutdown();
    // After an upgrade the pid file is the new process's.
    if let Some(path) = config.pidfile.as_ref().filter(|_| !handed_over) {
        if let Err(e) = std::fs::remove_file(path) {
            warn!("Cannot remove pid file {}: {e}", path.display());
        }
    }
    drop(log_guard);
    Ok(stopped?)
}

//! The command line: hasses' legacy `-name=value` flags, our `--long` flags, and the config file.
//!
//! Owns turning argv (and `--config FILE`) into one validated [`Config`]. It never opens a
//! socket, the FIFO or the log: it only says what the operator asked for, or why that is wrong.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::limits::Limits;

/// Everything the server needs to know to start, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the SSE listeners bind (`--bind`, default `[::]` dual-stack; port from `-p`/`--port`).
    pub sse_addr: SocketAddr,
    /// The path SSE clients request (`-murl` / `--match-url`).
    pub match_url: String,
    /// The control TCP listener (`-cp` / `--control-port`, address from `--control-bind`,
    /// default 127.0.0.1); `None` when there is none.
    pub control_addr: Option<SocketAddr>,
    /// The control FIFO (`-fifo` / `--fifo`), absolute.
    pub fifo: Option<PathBuf>,
    /// Mode for a FIFO we create (`--fifo-mode`, octal, default 0o666; the umask applies).
    pub fifo_mode: u32,
    /// The separator between commands on one control line (`-sep` / `--separator`, default `;`).
    pub separator: u8,
    /// 0 quiet, 1 normal, 2 debug (`-q` / `-debug` / `--log-level`).
    pub log_level: u8,
    /// Where log lines go.
    pub log_target: LogTarget,
    /// The pid file (`-pidfile` / `--pidfile`), absolute.
    pub pidfile: Option<PathBuf>,
    /// `Access-Control-Allow-Origin` (`-cors-base` / `--cors-base`, default `*`).
    pub cors_base: String,
    /// Reinit allowed at start (`-ra` / `--reinit`).
    pub reinit: bool,
    /// Drop privileges to this user after binding (`-user` / `--user`).
    pub user: Option<String>,
    /// Detach from the terminal (legacy flags without `-nodaemon`, or `--daemon`).
    pub daemon: bool,
    /// Worker (shard) threads (`--workers`, default: available cores).
    pub workers: usize,
    /// Pin worker i to core i (`--pin-cpus`).
    pub pin_cpus: bool,
    /// Close a connection that has not handshaked after this long (`--handshake-timeout`, 20 s).
    pub handshake_timeout: Duration,
    /// Close a handshaked connection this long after its (last) handshake (`--max-age`, 3600 s).
    pub max_age: Duration,
    /// Drop a client whose unsent bytes exceed this (`--max-backlog`, 1 MiB).
    pub max_backlog: usize,
    /// Parser limits (`--max-message`, 64 KiB).
    pub limits: Limits,
}

/// Where log lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output, no prefix (legacy `-nodaemon`).
    Stdout,
    /// Standard error, no prefix (modern flags, in the foreground).
    Stderr,
    /// This file, each line prefixed `YYYY-MM-DD HH:MM:SS hasses: `.
    File(PathBuf),
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// Run the server.
    Run(Box<Config>),
    /// Print this text (help or version) to stdout and exit 0.
    Print(String),
}

/// Why the command line cannot be run. `Display` is the one line printed before exiting non-zero.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // Variants are the helper's to choose.
}

/// Parses argv (without the program name).
pub fn parse_args<I, S>(args: I) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<std::ffi::OsString>,
{
    todo!()
}

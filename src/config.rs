//! The command line: hasses' legacy `-name=value` flags, our `--long` flags, and the config file.
//!
//! Owns turning argv (and `--config FILE`) into one validated [`Config`]. It never opens a
//! socket, the FIFO or the log: it only says what the operator asked for, or why that is wrong.
//!
//! How: every token is first translated to a self-contained `--long[=value]` token (legacy
//! `-p=8080` becomes `--port=8080`), remembering how the operator spelled each flag and whether
//! any legacy flag was seen. clap then parses the translated tokens (the last of a repeated flag
//! wins, so the command line overrides the config file), and `Given::config` checks the values
//! and applies the defaults of the mode: hasses' own with legacy flags, modern ones without.
//! clap never sees a raw single-dash token: it would read `-help` as `-h -e -l -p`.

use std::collections::HashMap;
use std::ffi::OsString;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ColorChoice, Command, CommandFactory, FromArgMatches, Parser};

use crate::auth::{AuthKey, AuthSettings};
use crate::auth_hook::HookSettings;
use crate::cluster::ClusterSettings;
use crate::history::HistoryLimits;
use crate::limits::Limits;
use crate::log::LogTarget;
use crate::tls::TlsFiles;

/// How long a stop spreads the streams' closes over, without legacy flags.
const DEFAULT_DRAIN: Duration = Duration::from_secs(5);
/// How long a subscription waits for the backend's answer (`--auth-timeout`).
const DEFAULT_AUTH_TIMEOUT: Duration = Duration::from_secs(2);
/// SSE port without legacy flags (that of the original's container image).
const DEFAULT_PORT: u16 = 8080;
/// SSE path without legacy flags.
const DEFAULT_MATCH_URL: &str = "/sse";
/// Control port without legacy flags.
const DEFAULT_CONTROL_PORT: u16 = 8085;
/// The HTTP API's address without legacy flags: loopback, beside the control port.
const DEFAULT_API_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8086);
/// The log file when daemonized and none is given (as hasses).
const DEFAULT_LOG_FILE: &str = "/var/log/hasses.log";
/// Mode of a FIFO we create, before the umask (as hasses).
const DEFAULT_FIFO_MODE: u32 = 0o666;
/// The most worker threads we accept: far beyond any core count, low enough to catch a typo.
const MAX_WORKERS: usize = 1024;

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
    /// Send every streaming client an SSE comment this often, so proxies with idle timeouts
    /// keep the stream and dead peers are found (`--heartbeat`, 30 s; `None` with 0).
    pub heartbeat: Option<Duration>,
    /// At a stop, how long the streams' closes are spread over (`--drain-secs`, 5 s; `None` with
    /// 0, and by default with legacy flags: hasses closed every connection at once).
    pub drain: Option<Duration>,
    /// Let the kernel hold a new connection until its request arrives, at most this long
    /// (`--defer-accept`, TCP_DEFER_ACCEPT; off by default: such connections are not counted
    /// until then, which hasses' figures would count).
    pub defer_accept: Option<Duration>,
    /// Refuse new connections with 503 beyond this many open at once (`--max-connections`).
    pub max_connections: Option<usize>,
    /// Refuse new connections with 503 beyond this many from one IP (`--max-connections-per-ip`).
    pub max_connections_per_ip: Option<usize>,
    /// The most streams of one HTTP/2 connection at once; `None` with HTTP/2 off
    /// (`--http2-max-streams`, 100; `--no-http2`).
    pub http2_max_streams: Option<u32>,
    /// Tell a token's subscribers when another client of it comes or goes, a leave only once
    /// it has not come back for this long (`--presence-events`, `--presence-debounce`, 5 s).
    pub presence_events: Option<Duration>,
    /// A TCP publisher must first send `auth SECRET` (`--control-secret`).
    pub control_secret: Option<String>,
    /// Serve HTTPS with these files (`-ssl -cert-file= -privatekey-file=`, `--tls-cert --tls-key`).
    pub tls: Option<TlsFiles>,
    /// How long a TLS session ticket resumes a session, at most (`--tls-ticket-lifetime`, 6 hours;
    /// see [`crate::tls::Tls::load`]).
    pub tls_ticket_lifetime: Duration,
    /// Unsent bytes a client may have before its worker holds publishing for it (`--max-backlog`,
    /// 1 MiB); see `shard::stalls`.
    pub max_backlog: usize,
    /// Parser limits (`--max-message`, 64 KiB).
    pub limits: Limits,
    /// What is kept for resume (`--history` 1000 per target, `--history-age` 3600 s,
    /// `--history-memory` 64 MiB).
    pub history: HistoryLimits,
    /// Where the history is kept across restarts (`--history-file`, absolute; off by default).
    pub history_file: Option<PathBuf>,
    /// How often the history file is synced to the disk (`--history-fsync`, 1000 ms; 0: after
    /// every write).
    pub history_fsync: Duration,
    /// Sent as `retry:` at the start of every stream (`--retry`, milliseconds).
    pub retry: Option<u32>,
    /// Subscriptions need a signed token (`--jwt-secret`, `--jwt-secret-file` or `--jwt-key`).
    pub auth: Option<AuthSettings>,
    /// Subscriptions are put to the web backend first (`--auth-url`, `--auth-timeout` 2 s,
    /// `--auth-cache-secs` 0).
    pub auth_hook: Option<HookSettings>,
    /// The HTTP API's listener (`--api-bind`, `--no-api`).
    pub api: ApiBind,
    /// Every API request but `/healthz` must carry this key (`--api-key`, `--api-key-file`).
    pub api_key: Option<Vec<u8>>,
    /// Act as one with other nodes through a Redis stream (`--cluster URL`).
    pub cluster: Option<ClusterSettings>,
}

/// Where the HTTP API listens, and how hard to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiBind {
    /// No API: `--no-api`, or legacy flags without `--api-bind` (hasses had none).
    Off,
    /// The default address: if it is taken, the server starts without an API and says so, since
    /// nobody asked for that port.
    Default(SocketAddr),
    /// `--api-bind`: not being able to listen there stops the start.
    Asked(SocketAddr),
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
///
/// A flag is named as the operator wrote it (`-p` or `--port`), prefixed `FILE:LINE: ` when it
/// came from the config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A `-switch` or `--flag` that neither hasses nor we know, and the known one nearest to it.
    #[error("unknown switch: {written}{}", did_you_mean(.nearest))]
    UnknownSwitch {
        /// As the operator wrote it.
        written: String,
        /// The known switch it most looks like, if one is close.
        nearest: Option<String>,
    },
    /// A word that is not a flag, nor the value of the flag before it.
    #[error("unexpected argument: {0}")]
    Unexpected(String),
    /// An argument that is not valid UTF-8 (shown lossily).
    #[error("argument is not valid UTF-8: {0}")]
    NotUtf8(String),
    /// A flag that takes a value, given without one (or with an empty one).
    #[error("{flag}: needs a value ({usage})")]
    MissingValue {
        /// The flag as written.
        flag: String,
        /// How to write it with a value.
        usage: String,
    },
    /// A switch given a value (`-q=1`, `--reinit=yes`).
    #[error("{0}: takes no value")]
    UnexpectedValue(String),
    /// A value that is not acceptable for its flag.
    #[error("{flag}: {reason}: {value}")]
    Invalid {
        /// The flag as written.
        flag: String,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// With legacy flags, hasses' required flags apply; this one is missing.
    #[error("{0} is required with legacy flags")]
    LegacyRequired(&'static str),
    /// Neither a control port nor a FIFO: nothing could publish.
    #[error("no control channel: give -cp=PORT (--control-port) or -fifo=/ABS/PATH (--fifo)")]
    NoControl,
    /// TLS was asked for (by this flag) without both of its files.
    #[error("{0}: TLS needs both a certificate and a key (-cert-file= and -privatekey-file=, or --tls-cert and --tls-key)")]
    TlsIncomplete(String),
    /// The `--config` file cannot be read.
    #[error("config file {}: {source}", path.display())]
    ConfigFile {
        /// The path given to `--config`.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// A line of the `--config` file is wrong.
    #[error("{}:{line}: {source}", path.display())]
    ConfigLine {
        /// The config file the line is in.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What is wrong on that line.
        source: Box<ConfigError>,
    },
    /// Two keys for tokens, or a claim to check without a key.
    #[error("{0}")]
    JwtKey(&'static str),
    /// The `--jwt-secret-file` cannot be read.
    #[error("--jwt-secret-file {}: {source}", path.display())]
    JwtSecretFile {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// `--auth-timeout` or `--auth-cache-secs` without a backend to ask.
    #[error("--auth-timeout and --auth-cache-secs need --auth-url")]
    AuthHookWithoutUrl,
    /// The `--api-key-file` cannot be read.
    #[error("--api-key-file {}: {source}", path.display())]
    ApiKeyFile {
        /// The path given.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// Both `--api-key` and `--api-key-file`.
    #[error("give one of --api-key and --api-key-file")]
    ApiKeyTwice,
    /// `--history-file` with `--cluster`.
    #[error("--history-file cannot be used with --cluster: a cluster's history is its Redis stream")]
    HistoryFileInCluster,
    /// `--config` inside a config file (files do not include files).
    #[error("--config cannot be used inside a config file")]
    NestedConfig,
    /// Anything else clap refuses (the first line of its message). The translation before clap
    /// catches every mistake we know of; this keeps an unforeseen one to one line too.
    #[error("{0}")]
    Clap(String),
}

/// The modern flags. Values are kept as text: [`Given::config`] checks them, so that an error
/// names the flag as the operator spelled it (`-p` or `--port`) and where (the config file line).
#[derive(Parser, Debug)]
#[command(
    name = "hasses",
    version,
    about = "A sharded Server-Sent Events notification server; drop-in replacement for hasses 1.30",
    after_help = "Legacy hasses 1.30 flags (-name=value, in brackets above) are accepted too, and may be \
                  mixed with these; so are -nodaemon (stay in the foreground, log to stdout), -ssl, -help, \
                  -v and -version. With any legacy flag hasses' rules apply: -p, -murl and one of -cp or \
                  -fifo are required, and the server daemonizes and logs to the log file unless -nodaemon.",
    args_override_self = true,
    color = ColorChoice::Never
)]
struct Cli {
    /// SSE port; 0 picks a free one [default: 8080] [-p=PORT]
    #[arg(long, value_name = "PORT")]
    port: Option<String>,
    /// The URL path SSE clients request [default: /sse] [-murl=PATH]
    #[arg(long, value_name = "PATH")]
    match_url: Option<String>,
    /// Control TCP port; 0 picks a free one [default: 8085] [-cp=PORT]
    #[arg(long, value_name = "PORT", overrides_with = "no_control_port")]
    control_port: Option<String>,
    /// No control TCP port (then --fifo is needed)
    #[arg(long, overrides_with = "control_port")]
    no_control_port: bool,
    /// Address of the control listener; anyone who reaches it can publish [default: 127.0.0.1]
    #[arg(long, value_name = "ADDR")]
    control_bind: Option<String>,
    /// Address of the SSE listeners [default: ::, all interfaces, IPv4 and IPv6]
    #[arg(long, value_name = "ADDR")]
    bind: Option<String>,
    /// Control FIFO, absolute; created if missing [-fifo=PATH]
    #[arg(long, value_name = "PATH")]
    fifo: Option<String>,
    /// Mode of a FIFO we create, octal; the umask applies [default: 666]
    #[arg(long, value_name = "OCTAL")]
    fifo_mode: Option<String>,
    /// One-byte separator between commands on a control line [default: ;] [-sep=C]
    #[arg(long, value_name = "C")]
    separator: Option<String>,
    /// 0 quiet, 1 normal, 2 debug [default: 1] [-q is 0, -debug is 2]
    #[arg(long, value_name = "0|1|2")]
    log_level: Option<String>,
    /// Log file, absolute [default when daemonized: /var/log/hasses.log] [-l=PATH]
    #[arg(long, value_name = "PATH")]
    log_file: Option<String>,
    /// Write the pid to this absolute path, remove it at exit [-pidfile=PATH]
    #[arg(long, value_name = "PATH")]
    pidfile: Option<String>,
    /// Value of Access-Control-Allow-Origin [default: *] [-cors-base=URL]
    #[arg(long, value_name = "URL")]
    cors_base: Option<String>,
    /// Allow reinit: a connected client may send a new GET to re-subscribe [-ra]
    #[arg(long)]
    reinit: bool,
    /// Drop privileges to this user once every socket and file is open [-user=NAME]
    #[arg(long, value_name = "NAME")]
    user: Option<String>,
    /// Detach, and log to the log file
    #[arg(long, overrides_with = "nodaemon")]
    daemon: bool,
    /// Legacy -nodaemon: stay in the foreground, log to stdout.
    #[arg(long, hide = true, overrides_with = "daemon")]
    nodaemon: bool,
    /// Worker (shard) threads [default: the number of cores]
    #[arg(long, value_name = "N")]
    workers: Option<String>,
    /// Pin worker i to core i
    #[arg(long)]
    pin_cpus: bool,
    /// Close a connection not handshaked after SECS (fractions allowed) [default: 20]
    #[arg(long, value_name = "SECS")]
    handshake_timeout: Option<String>,
    /// Close a handshaked connection SECS after its last handshake [default: 3600]
    #[arg(long, value_name = "SECS")]
    max_age: Option<String>,
    /// Send each stream an SSE comment every SECS, for proxies' idle timeouts; 0: never [default: 30]
    #[arg(long, value_name = "SECS")]
    heartbeat: Option<String>,
    /// At a stop, tell each stream to come back after a random wait (`retry:`) and close the
    /// streams over at most SECS, so that clients do not all reconnect at once; 0: close at once
    /// [default: 5; 0 with legacy flags]
    #[arg(long, value_name = "SECS")]
    drain_secs: Option<String>,
    /// Accept a connection only once its request arrived, waiting at most SECS (TCP_DEFER_ACCEPT):
    /// fewer wake-ups per connection; silent connections are not counted meanwhile [default: 0, off]
    #[arg(long, value_name = "SECS")]
    defer_accept: Option<String>,
    /// Answer 503 to new connections beyond N open at once [default: no limit]
    #[arg(long, value_name = "N")]
    max_connections: Option<String>,
    /// Answer 503 to new connections beyond N open from one IP address [default: no limit]
    #[arg(long, value_name = "N")]
    max_connections_per_ip: Option<String>,
    /// Speak HTTP/1.1 only: no `h2` in TLS' ALPN, and no HTTP/2 with prior knowledge on the
    /// plain port
    #[arg(long)]
    no_http2: bool,
    /// The most streams (EventSources) one HTTP/2 connection may have open at once, 1 to 1000
    /// [default: 100]
    #[arg(long, value_name = "N")]
    http2_max_streams: Option<String>,
    /// Send a token's subscribers `event: join` / `event: leave` when another client (with an id)
    /// of the token comes or goes
    #[arg(long)]
    presence_events: bool,
    /// With --presence-events: a client whose last stream ended leaves only if it does not come
    /// back within SECS (fractions allowed) [default: 5]
    #[arg(long, value_name = "SECS")]
    presence_debounce: Option<String>,
    /// TCP publishers must first send the line `auth SECRET`; anything else gets `ERR unauthorized`
    /// and the connection is closed [default: none]
    #[arg(long, value_name = "SECRET")]
    control_secret: Option<String>,
    /// The longest message; longer ones are refused [default: 65536]
    #[arg(long, value_name = "BYTES")]
    max_message: Option<String>,
    /// Unsent bytes a client may have before its worker stops taking events (and publishers are
    /// held) until the client catches up; one that takes nothing for 2 s then is cut
    /// [default: 1048576]
    #[arg(long, value_name = "BYTES")]
    max_backlog: Option<String>,
    /// Keep the last N events of each target for clients that resume with Last-Event-ID;
    /// 0: none [default: 1000]
    #[arg(long, value_name = "N")]
    history: Option<String>,
    /// Keep an event for resume at most SECS [default: 3600]
    #[arg(long, value_name = "SECS")]
    history_age: Option<String>,
    /// Keep at most BYTES of events for resume in all, the oldest going first [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    history_memory: Option<String>,
    /// Keep the history in FILE (absolute) too, written as events are sent and read back at
    /// start, so that clients resume across a restart without a reset [default: none, memory only]
    #[arg(long, value_name = "FILE")]
    history_file: Option<String>,
    /// Sync the history file to the disk every MS milliseconds (what a power loss can take);
    /// 0: after every write [default: 1000]
    #[arg(long, value_name = "MS")]
    history_fsync: Option<String>,
    /// Subscriptions need a JWT signed with this HMAC secret (HS256/384/512) [default: none, open]
    #[arg(long, value_name = "SECRET")]
    jwt_secret: Option<String>,
    /// The same, the secret read from FILE (its trailing newline dropped)
    #[arg(long, value_name = "FILE")]
    jwt_secret_file: Option<String>,
    /// Subscriptions need a JWT signed with the private key whose public key is the PEM file at
    /// PATH: RSA (RS*, PS*), EC (ES256, ES384) or Ed25519 (EdDSA)
    #[arg(long, value_name = "PATH")]
    jwt_key: Option<String>,
    /// A token must carry this `iss`
    #[arg(long, value_name = "ISSUER")]
    jwt_issuer: Option<String>,
    /// A token must carry this `aud`
    #[arg(long, value_name = "AUDIENCE")]
    jwt_audience: Option<String>,
    /// Put every subscription to this backend URL first (the client's Cookie, Authorization,
    /// Origin, address and query); it answers 200, optionally with a JSON grant, or 401/403
    /// [default: none]
    #[arg(long, value_name = "URL")]
    auth_url: Option<String>,
    /// Disconnect a subscription the backend has not answered in SECS, without an answer, so
    /// that it retries [default: 2]
    #[arg(long, value_name = "SECS")]
    auth_timeout: Option<String>,
    /// Reuse the backend's answer to the same cookie, authorization and query for SECS; 0: ask
    /// every time [default: 0]
    #[arg(long, value_name = "SECS")]
    auth_cache_secs: Option<String>,
    /// Start every stream with `retry: MS`: how long a browser waits before it reconnects
    /// [default: none, the browser's own]
    #[arg(long, value_name = "MS")]
    retry: Option<String>,
    /// Serve the HTTP API (publish, status, clients, metrics, health, a status page) on ADDR:PORT
    /// [default: 127.0.0.1:8086; off with legacy flags]
    #[arg(long, value_name = "ADDR:PORT", overrides_with = "no_api")]
    api_bind: Option<String>,
    /// No HTTP API
    #[arg(long, overrides_with = "api_bind")]
    no_api: bool,
    /// Every API request but /healthz needs `Authorization: Bearer KEY` or `X-API-Key: KEY`
    /// [default: none, open]
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,
    /// The same, the key read from FILE (its trailing newline dropped)
    #[arg(long, value_name = "FILE")]
    api_key_file: Option<String>,
    /// Act as one with other nodes through a Redis (or Valkey) stream:
    /// redis://[user:password@]host:port[/db], or rediss:// for TLS [default: none, alone]
    #[arg(long, value_name = "URL")]
    cluster: Option<String>,
    /// The prefix of the cluster's Redis keys (PREFIX:events, PREFIX:node:*, PREFIX:read:*) [default: hasses]
    #[arg(long, value_name = "PREFIX")]
    cluster_key: Option<String>,
    /// Publishes held while Redis is unreachable; more are refused [default: 10000]
    #[arg(long, value_name = "N")]
    cluster_buffer: Option<String>,
    /// The same, in bytes of data [default: 67108864]
    #[arg(long, value_name = "BYTES")]
    cluster_buffer_memory: Option<String>,
    /// Read flags from FILE first (/etc/hasses.conf format: legacy flags, # comments);
    /// the command line overrides them
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Legacy -ssl: serve HTTPS.
    #[arg(long, hide = true)]
    ssl: bool,
    /// Serve HTTPS with this certificate chain, PEM (with --tls-key) [-cert-file=PEM]
    #[arg(long, value_name = "PEM")]
    tls_cert: Option<String>,
    /// The certificate's private key, PEM: PKCS#8, PKCS#1 or SEC1 [-privatekey-file=PEM]
    #[arg(long, value_name = "PEM")]
    tls_key: Option<String>,
    /// The lifetime of TLS session tickets, in seconds (at most 43200): a reconnecting client
    /// resumes with one for between half of it and all of it after it was issued; the keys
    /// that encrypt tickets rotate every half lifetime [default: 21600]
    #[arg(long, value_name = "SECS")]
    tls_ticket_lifetime: Option<String>,
}

/// Parses argv (without the program name).
pub fn parse_args<I, S>(args: I) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let cmd = command();
    let given = translate_argv(&cmd, args)?;
    // Checked before reading the config file, so that help works whatever the file holds.
    if let Some(text) = print_request(&cmd, &given) {
        return Ok(Invocation::Print(text));
    }
    let cli = run_clap(&cmd, &given)?;
    let all = match &cli.config {
        None => given,
        Some(path) => read_config(&cmd, path)?.then(given),
    };
    if let Some(text) = print_request(&cmd, &all) {
        return Ok(Invocation::Print(text));
    }
    let given = Given { cli: run_clap(&cmd, &all)?, seen: all.seen, legacy: all.legacy };
    Ok(Invocation::Run(Box::new(given.config()?)))
}

/// The clap command, built so that `--help` and `--version` are among its arguments.
fn command() -> Command {
    let mut cmd = Cli::command();
    cmd.build();
    cmd
}

/// The help or version text, when one was asked for (help wins).
fn print_request(cmd: &Command, tokens: &Translated) -> Option<String> {
    if tokens.seen.contains_key("help") {
        Some(cmd.clone().render_help().to_string())
    } else if tokens.seen.contains_key("version") {
        Some(cmd.render_version())
    } else {
        None
    }
}

/// Parses translated tokens.
fn run_clap(cmd: &Command, tokens: &Translated) -> Result<Cli, ConfigError> {
    let argv = std::iter::once("hasses".to_owned()).chain(tokens.tokens.iter().cloned());
    let matches = cmd.clone().try_get_matches_from(argv).map_err(clap_error)?;
    Cli::from_arg_matches(&matches).map_err(clap_error)
}

/// clap's refusal as one line: the first of its message (the rest are tips and usage).
fn clap_error(err: clap::Error) -> ConfigError {
    let text = err.render().to_string();
    let first = text.lines().next().unwrap_or_default();
    ConfigError::Clap(first.trim_start_matches("error: ").to_owned())
}

/// How a legacy switch maps onto its modern flag.
enum Form {
    /// `-name=value` becomes `--long=value`.
    Value,
    /// `-name` becomes `--long`.
    Switch,
    /// `-name` becomes `--long=` this value (`-q` is `--log-level=0`).
    Fixed(&'static str),
}

/// hasses 1.30's switches, spelled exactly as it accepts them: (legacy name, modern flag, form).
const LEGACY: &[(&str, &str, Form)] = &[
    ("p", "port", Form::Value),
    ("murl", "match-url", Form::Value),
    ("cp", "control-port", Form::Value),
    ("fifo", "fifo", Form::Value),
    ("sep", "separator", Form::Value),
    ("q", "log-level", Form::Fixed("0")),
    ("debug", "log-level", Form::Fixed("2")),
    ("l", "log-file", Form::Value),
    ("pidfile", "pidfile", Form::Value),
    ("ssl", "ssl", Form::Switch),
    ("cert-file", "tls-cert", Form::Value),
    ("privatekey-file", "tls-key", Form::Value),
    ("cors-base", "cors-base", Form::Value),
    ("ra", "reinit", Form::Switch),
    ("user", "user", Form::Value),
    ("nodaemon", "nodaemon", Form::Switch),
    ("h", "help", Form::Switch),
    ("help", "help", Form::Switch),
    ("v", "version", Form::Switch),
    ("V", "version", Form::Switch),
    ("version", "version", Form::Switch),
];

/// How a flag was last given.
#[derive(Debug, Clone)]
struct Seen {
    /// As written, with `FILE:LINE: ` before it when it came from the config file.
    label: String,
    /// Spelled the hasses way.
    legacy: bool,
}

/// Tokens translated for clap, and how each flag (by modern long name) was given.
#[derive(Debug, Default)]
struct Translated {
    tokens: Vec<String>,
    seen: HashMap<String, Seen>,
    /// Any legacy flag was given.
    legacy: bool,
}

impl Translated {
    /// Appends one flag; a later one replaces an earlier one, as in clap.
    fn push(&mut self, long: &str, value: Option<&str>, label: String, legacy: bool) {
        self.tokens.push(match value {
            Some(value) => format!("--{long}={value}"),
            None => format!("--{long}"),
        });
        self.seen.insert(long.to_owned(), Seen { label, legacy });
        self.legacy |= legacy;
    }

    /// These tokens followed by `later`'s, which win where both give a flag.
    fn then(mut self, later: Translated) -> Translated {
        self.tokens.extend(later.tokens);
        self.seen.extend(later.seen);
        self.legacy |= later.legacy;
        self
    }
}

/// Translates the command line.
fn translate_argv<I, S>(cmd: &Command, args: I) -> Result<Translated, ConfigError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let words = args
        .into_iter()
        .map(|arg| {
            arg.into().into_string().map_err(|bad| ConfigError::NotUtf8(bad.to_string_lossy().into_owned()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut out = Translated::default();
    translate(cmd, words, "", &mut out)?;
    Ok(out)
}

/// Translates words into `out`; `place` prefixes the labels (the config file line, or nothing).
fn translate(
    cmd: &Command,
    words: Vec<String>,
    place: &str,
    out: &mut Translated,
) -> Result<(), ConfigError> {
    let mut words = words.into_iter().peekable();
    while let Some(word) = words.next() {
        if let Some(flag) = word.strip_prefix("--") {
            let value = || words.next_if(|next| !next.is_empty() && !looks_like_flag(next));
            modern_flag(cmd, flag, value, place, out)?;
        } else if let Some(flag) = word.strip_prefix('-').filter(|flag| !flag.is_empty()) {
            legacy_flag(cmd, flag, place, out)?;
        } else {
            return Err(ConfigError::Unexpected(word));
        }
    }
    Ok(())
}

/// A word that is a flag rather than a value. A lone `-` is a value (a separator), and so is
/// a negative number (`--heartbeat -1`): no flag starts with a digit, and taking it as the
/// value lets the error say what is wrong with it rather than that the value is missing.
fn looks_like_flag(word: &str) -> bool {
    word.strip_prefix('-')
        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with(|c: char| c.is_ascii_digit()))
}

/// Splits `name=value`; an empty value counts as none.
fn split_value(flag: &str) -> (&str, Option<&str>) {
    match flag.split_once('=') {
        Some((name, value)) => (name, Some(value).filter(|value| !value.is_empty())),
        None => (flag, None),
    }
}

/// Translates `--name[=value]`; `next` yields the following word when it is the value.
fn modern_flag(
    cmd: &Command,
    flag: &str,
    next: impl FnOnce() -> Option<String>,
    place: &str,
    out: &mut Translated,
) -> Result<(), ConfigError> {
    let (name, inline) = split_value(flag);
    let written = format!("--{name}");
    let arg = cmd
        .get_arguments()
        .find(|arg| arg.get_long() == Some(name))
        .ok_or_else(|| unknown_switch(cmd, &written))?;
    let takes_value = arg.get_action().takes_values();
    let value = match (takes_value, flag.contains('=')) {
        (true, true) => inline.map(str::to_owned),
        (true, false) => next(),
        (false, false) => None,
        (false, true) => return Err(ConfigError::UnexpectedValue(written)),
    };
    if takes_value && value.is_none() {
        let usage = format!("{written} VALUE");
        return Err(ConfigError::MissingValue { flag: written, usage });
    }
    out.push(name, value.as_deref(), format!("{place}{written}"), false);
    Ok(())
}

/// Translates hasses' `-name[=value]`.
fn legacy_flag(cmd: &Command, flag: &str, place: &str, out: &mut Translated) -> Result<(), ConfigError> {
    let (name, value) = split_value(flag);
    let written = format!("-{name}");
    let (_, long, form) =
        LEGACY.iter().find(|(legacy, ..)| *legacy == name).ok_or_else(|| unknown_switch(cmd, &written))?;
    let value = match (form, value, flag.contains('=')) {
        (Form::Value, Some(value), _) => Some(value),
        (Form::Value, None, _) => {
            let usage = format!("{written}=VALUE");
            return Err(ConfigError::MissingValue { flag: written, usage });
        }
        (Form::Fixed(value), _, false) => Some(*value),
        (Form::Switch, _, false) => None,
        (_, _, true) => return Err(ConfigError::UnexpectedValue(written)),
    };
    out.push(long, value, format!("{place}{written}"), true);
    Ok(())
}

/// How alike a mistyped switch and a known one must be (Jaro similarity) to be suggested:
/// stricter than clap's 0.7, under which one letter (`-x`) looks like many switches.
const SUGGESTION_SIMILARITY: f64 = 0.8;

/// The error for a switch nobody knows, with the known switch it most looks like: any of ours
/// (`--name`) and hasses' (`-name`), whichever dash it was written with, so `-port` finds
/// `--port` and `--murl` finds `-murl`.
fn unknown_switch(cmd: &Command, written: &str) -> ConfigError {
    let bare = written.trim_start_matches('-');
    let modern = cmd.get_arguments().filter_map(|arg| arg.get_long()).map(|long| (long, "--"));
    let legacy = LEGACY.iter().map(|(name, ..)| (*name, "-"));
    let nearest = modern
        .chain(legacy)
        .map(|(name, dashes)| (strsim::jaro(bare, name), name, dashes))
        .filter(|(similarity, ..)| *similarity > SUGGESTION_SIMILARITY)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, name, dashes)| format!("{dashes}{name}"));
    ConfigError::UnknownSwitch { written: written.to_owned(), nearest }
}

/// `; did you mean --port?`, or nothing without a suggestion.
fn did_you_mean(nearest: &Option<String>) -> String {
    nearest.as_ref().map(|switch| format!("; did you mean {switch}?")).unwrap_or_default()
}

/// Reads and translates a config file: `/etc/hasses.conf`, one flag per line (more than one,
/// split on whitespace, as `build-hasses-parameters` lets the shell do), `#` to the end of a
/// line is a comment.
fn read_config(cmd: &Command, path: &Path) -> Result<Translated, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::ConfigFile { path: path.to_owned(), source })?;
    let mut out = Translated::default();
    for (index, line) in text.lines().enumerate() {
        let line_no = index + 1;
        config_line(cmd, line, &format!("{}:{line_no}: ", path.display()), &mut out).map_err(|source| {
            ConfigError::ConfigLine { path: path.to_owned(), line: line_no, source: Box::new(source) }
        })?;
    }
    Ok(out)
}

/// Translates one line of the config file into `out`.
fn config_line(cmd: &Command, line: &str, place: &str, out: &mut Translated) -> Result<(), ConfigError> {
    let content = line.split_once('#').map_or(line, |(before, _)| before);
    let words = content.split_whitespace().map(str::to_owned).collect();
    translate(cmd, words, place, out)?;
    if out.seen.contains_key("config") {
        return Err(ConfigError::NestedConfig);
    }
    Ok(())
}

/// The parsed flags with how each was given: turns into the [`Config`].
struct Given {
    cli: Cli,
    seen: HashMap<String, Seen>,
    legacy: bool,
}

/// Checks one flag's text: the parsed value, or what is wrong with it.
type Check<T> = fn(&str) -> Result<T, &'static str>;

impl Given {
    /// Checks every value and applies the defaults of the mode (legacy or modern).
    fn config(&self) -> Result<Config, ConfigError> {
        let tls = self.tls()?;
        let cli = &self.cli;
        // hasses' required flags first, in its order: port, path, then a control channel.
        let sse_addr = self.sse_addr()?;
        let match_url = self
            .required("match-url", &cli.match_url, match_url, "-murl=PATH (--match-url)")?
            .unwrap_or_else(|| DEFAULT_MATCH_URL.to_owned());
        let fifo = self.value("fifo", &cli.fifo, absolute_path)?;
        let control_addr = self.control_addr()?;
        if control_addr.is_none() && fifo.is_none() {
            return Err(ConfigError::NoControl);
        }
        let daemon = self.daemon();
        Ok(Config {
            sse_addr,
            match_url,
            control_addr,
            fifo,
            fifo_mode: self.value("fifo-mode", &cli.fifo_mode, file_mode)?.unwrap_or(DEFAULT_FIFO_MODE),
            separator: self.value("separator", &cli.separator, one_byte)?.unwrap_or(b';'),
            log_level: self.value("log-level", &cli.log_level, log_level)?.unwrap_or(1),
            log_target: self.log_target(daemon)?,
            pidfile: self.value("pidfile", &cli.pidfile, absolute_path)?,
            cors_base: self
                .value("cors-base", &cli.cors_base, header_text)?
                .unwrap_or_else(|| "*".to_owned()),
            reinit: cli.reinit,
            user: self.value("user", &cli.user, header_text)?,
            daemon,
            workers: self.value("workers", &cli.workers, workers)?.unwrap_or_else(default_workers),
            pin_cpus: cli.pin_cpus,
            handshake_timeout: self
                .value("handshake-timeout", &cli.handshake_timeout, seconds)?
                .unwrap_or(Duration::from_secs(20)),
            max_age: self.value("max-age", &cli.max_age, seconds)?.unwrap_or(Duration::from_secs(3600)),
            heartbeat: self
                .value("heartbeat", &cli.heartbeat, interval)?
                .unwrap_or(Some(Duration::from_secs(30))),
            drain: self
                .value("drain-secs", &cli.drain_secs, interval)?
                .unwrap_or((!self.legacy).then_some(DEFAULT_DRAIN)),
            defer_accept: self.value("defer-accept", &cli.defer_accept, interval)?.flatten(),
            max_connections: self.value("max-connections", &cli.max_connections, positive)?,
            max_connections_per_ip: self.value(
                "max-connections-per-ip",
                &cli.max_connections_per_ip,
                positive,
            )?,
            http2_max_streams: {
                let max = self.value("http2-max-streams", &cli.http2_max_streams, stream_limit)?;
                (!cli.no_http2).then(|| max.unwrap_or(DEFAULT_HTTP2_MAX_STREAMS))
            },
            presence_events: {
                let debounce = self.value("presence-debounce", &cli.presence_debounce, seconds)?;
                cli.presence_events.then(|| debounce.unwrap_or(DEFAULT_PRESENCE_DEBOUNCE))
            },
            control_secret: self.value("control-secret", &cli.control_secret, secret)?,
            tls,
            tls_ticket_lifetime: self
                .value("tls-ticket-lifetime", &cli.tls_ticket_lifetime, ticket_lifetime)?
                .unwrap_or(Duration::from_secs(6 * 60 * 60)),
            max_backlog: self.value("max-backlog", &cli.max_backlog, positive)?.unwrap_or(1 << 20),
            limits: Limits {
                max_message: self
                    .value("max-message", &cli.max_message, positive)?
                    .unwrap_or(Limits::default().max_message),
            },
            history: HistoryLimits {
                per_audience: self.value("history", &cli.history, whole)?.unwrap_or(1000),
                max_age: self
                    .value("history-age", &cli.history_age, seconds)?
                    .unwrap_or(Duration::from_secs(3600)),
                max_bytes: self.value("history-memory", &cli.history_memory, positive)?.unwrap_or(64 << 20),
            },
            history_file: self.history_file()?,
            history_fsync: Duration::from_millis(
                self.value("history-fsync", &cli.history_fsync, milliseconds)?.map_or(1000, u64::from),
            ),
            retry: self.value("retry", &cli.retry, milliseconds)?,
            auth: self.auth()?,
            auth_hook: self.auth_hook()?,
            api: self.api_bind()?,
            api_key: self.api_key()?,
            cluster: self.cluster()?,
        })
    }

    /// The history file, if given; a cluster's history is its Redis stream, so not with one.
    fn history_file(&self) -> Result<Option<PathBuf>, ConfigError> {
        let path = self.value("history-file", &self.cli.history_file, absolute_path)?;
        if path.is_some() && self.cli.cluster.is_some() {
            return Err(ConfigError::HistoryFileInCluster);
        }
        Ok(path)
    }

    /// The API is on by default with modern flags; hasses had none, so legacy flags leave it off
    /// unless it is asked for.
    fn api_bind(&self) -> Result<ApiBind, ConfigError> {
        let asked = self.value("api-bind", &self.cli.api_bind, socket_addr)?;
        Ok(match asked {
            _ if self.cli.no_api => ApiBind::Off,
            Some(addr) => ApiBind::Asked(addr),
            None if self.legacy => ApiBind::Off,
            None => ApiBind::Default(DEFAULT_API_ADDR),
        })
    }

    fn api_key(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let key = self.value("api-key", &self.cli.api_key, secret)?;
        let file = self.value("api-key-file", &self.cli.api_key_file, any_path)?;
        match (key, file) {
            (Some(_), Some(_)) => Err(ConfigError::ApiKeyTwice),
            (Some(key), None) => Ok(Some(key.into_bytes())),
            (None, Some(path)) => {
                read_secret(&path).map(Some).map_err(|source| ConfigError::ApiKeyFile { path, source })
            }
            (None, None) => Ok(None),
        }
    }

    /// The cluster's settings, if `--cluster` is given.
    fn cluster(&self) -> Result<Option<ClusterSettings>, ConfigError> {
        let cli = &self.cli;
        let Some(url) = self.value("cluster", &cli.cluster, cluster_url)? else { return Ok(None) };
        Ok(Some(ClusterSettings {
            url,
            key: self.value("cluster-key", &cli.cluster_key, header_text)?.unwrap_or_else(|| "hasses".into()),
            buffer_events: self.value("cluster-buffer", &cli.cluster_buffer, positive)?.unwrap_or(10_000)
                as u64,
            buffer_bytes: self
                .value("cluster-buffer-memory", &cli.cluster_buffer_memory, positive)?
                .unwrap_or(64 << 20) as u64,
        }))
    }

    /// The flag as the operator wrote it.
    fn label(&self, long: &str) -> String {
        self.seen.get(long).map_or_else(|| format!("--{long}"), |seen| seen.label.clone())
    }

    /// Whether the flag was given, spelled the hasses way.
    fn spelled_legacy(&self, long: &str) -> bool {
        self.seen.get(long).is_some_and(|seen| seen.legacy)
    }

    /// The checked value of flag `long`, if given.
    fn value<T>(&self, long: &str, raw: &Option<String>, check: Check<T>) -> Result<Option<T>, ConfigError> {
        raw.as_deref()
            .map(|text| {
                check(text).map_err(|reason| ConfigError::Invalid {
                    flag: self.label(long),
                    value: text.to_owned(),
                    reason,
                })
            })
            .transpose()
    }

    /// Like [`Given::value`], but hasses requires it: missing with legacy flags is an error.
    fn required<T>(
        &self,
        long: &str,
        raw: &Option<String>,
        check: Check<T>,
        what: &'static str,
    ) -> Result<Option<T>, ConfigError> {
        match self.value(long, raw, check)? {
            None if self.legacy => Err(ConfigError::LegacyRequired(what)),
            value => Ok(value),
        }
    }

    /// hasses' `-ssl` asks for TLS; its `-cert-file`/`-privatekey-file` alone do not (it
    /// ignored them), but our `--tls-cert`/`--tls-key` do. The paths are made absolute, so that
    /// a reload after daemonizing (which changes directory to `/`) finds the same files.
    fn tls(&self) -> Result<Option<TlsFiles>, ConfigError> {
        let modern = |given: bool, long| given && !self.spelled_legacy(long);
        let asked = if self.cli.ssl {
            "ssl"
        } else if modern(self.cli.tls_cert.is_some(), "tls-cert") {
            "tls-cert"
        } else if modern(self.cli.tls_key.is_some(), "tls-key") {
            "tls-key"
        } else {
            return Ok(None);
        };
        let cert = self.value("tls-cert", &self.cli.tls_cert, any_path)?;
        let key = self.value("tls-key", &self.cli.tls_key, any_path)?;
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles { cert, key })),
            _ => Err(ConfigError::TlsIncomplete(self.label(asked))),
        }
    }

    /// How subscribers' tokens are checked, if they are: one key, and the claims to check.
    fn auth(&self) -> Result<Option<AuthSettings>, ConfigError> {
        let cli = &self.cli;
        let secret = self.value("jwt-secret", &cli.jwt_secret, secret)?;
        let secret_file = self.value("jwt-secret-file", &cli.jwt_secret_file, any_path)?;
        let public_key = self.value("jwt-key", &cli.jwt_key, any_path)?;
        let key = match (secret, secret_file, public_key) {
            (None, None, None) if cli.jwt_issuer.is_some() || cli.jwt_audience.is_some() => {
                return Err(ConfigError::JwtKey(
                    "--jwt-issuer and --jwt-audience need --jwt-secret or --jwt-key",
                ))
            }
            (None, None, None) => return Ok(None),
            (Some(secret), None, None) => AuthKey::Secret(secret.into_bytes()),
            (None, Some(path), None) => AuthKey::Secret(
                read_secret(&path).map_err(|source| ConfigError::JwtSecretFile { path, source })?,
            ),
            (None, None, Some(path)) => AuthKey::PublicKey(path),
            _ => {
                return Err(ConfigError::JwtKey("give one of --jwt-secret, --jwt-secret-file and --jwt-key"))
            }
        };
        let issuer = self.value("jwt-issuer", &cli.jwt_issuer, header_text)?;
        let audience = self.value("jwt-audience", &cli.jwt_audience, header_text)?;
        Ok(Some(AuthSettings { key, issuer, audience }))
    }

    /// The backend subscriptions are put to, if any, and how long it is waited for.
    fn auth_hook(&self) -> Result<Option<HookSettings>, ConfigError> {
        let cli = &self.cli;
        let timeout = self.value("auth-timeout", &cli.auth_timeout, seconds)?;
        let cache = self.value("auth-cache-secs", &cli.auth_cache_secs, interval)?;
        let Some(url) = self.value("auth-url", &cli.auth_url, auth_url)? else {
            return match (timeout, cache) {
                (None, None) => Ok(None),
                _ => Err(ConfigError::AuthHookWithoutUrl),
            };
        };
        Ok(Some(HookSettings {
            url,
            timeout: timeout.unwrap_or(DEFAULT_AUTH_TIMEOUT),
            cache: cache.flatten(),
        }))
    }

    fn sse_addr(&self) -> Result<SocketAddr, ConfigError> {
        let ip = self.value("bind", &self.cli.bind, ip_addr)?;
        let port = self.required("port", &self.cli.port, port, "-p=PORT (--port)")?;
        Ok(SocketAddr::new(ip.unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED)), port.unwrap_or(DEFAULT_PORT)))
    }

    /// The control listener: hasses had none unless `-cp`; we default to one, on loopback.
    fn control_addr(&self) -> Result<Option<SocketAddr>, ConfigError> {
        let ip = self.value("control-bind", &self.cli.control_bind, ip_addr)?;
        let port = self.value("control-port", &self.cli.control_port, port)?;
        if self.cli.no_control_port {
            return Ok(None);
        }
        let port = port.or((!self.legacy).then_some(DEFAULT_CONTROL_PORT));
        let ip = ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        Ok(port.map(|port| SocketAddr::new(ip, port)))
    }

    /// With legacy flags hasses daemonizes unless `-nodaemon`; modern flags only with `--daemon`.
    fn daemon(&self) -> bool {
        if self.legacy {
            !self.cli.nodaemon
        } else {
            self.cli.daemon
        }
    }

    /// Daemonized: the log file. In the foreground hasses logs to stdout even with `-l`; an
    /// explicit `--log-file` is honoured.
    fn log_target(&self, daemon: bool) -> Result<LogTarget, ConfigError> {
        let file = self.value("log-file", &self.cli.log_file, absolute_path)?;
        Ok(match file {
            Some(file) if daemon || !self.spelled_legacy("log-file") => LogTarget::File(file),
            None if daemon => LogTarget::File(PathBuf::from(DEFAULT_LOG_FILE)),
            _ if self.legacy => LogTarget::Stdout,
            _ => LogTarget::Stderr,
        })
    }
}

fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn port(text: &str) -> Result<u16, &'static str> {
    text.parse().map_err(|_| "not a port number (0-65535)")
}

fn ip_addr(text: &str) -> Result<IpAddr, &'static str> {
    text.parse().map_err(|_| "not an IP address")
}

/// hasses refuses relative paths: the daemon's working directory is `/`.
fn absolute_path(text: &str) -> Result<PathBuf, &'static str> {
    let path = PathBuf::from(text);
    if path.is_absolute() {
        Ok(path)
    } else {
        Err("path must be absolute")
    }
}

/// The path must start with `/`: a request target always does, so another could never match.
fn match_url(text: &str) -> Result<String, &'static str> {
    if text.starts_with('/') && !text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Ok(text.to_owned())
    } else {
        Err("must start with / and hold no spaces")
    }
}

fn one_byte(text: &str) -> Result<u8, &'static str> {
    match text.as_bytes() {
        [byte] => Ok(*byte),
        _ => Err("must be exactly one byte"),
    }
}

fn file_mode(text: &str) -> Result<u32, &'static str> {
    u32::from_str_radix(text, 8).ok().filter(|mode| *mode <= 0o7777).ok_or("not an octal file mode (0-7777)")
}

fn log_level(text: &str) -> Result<u8, &'static str> {
    match text {
        "0" => Ok(0),
        "1" => Ok(1),
        "2" => Ok(2),
        _ => Err("must be 0, 1 or 2"),
    }
}

/// Text that goes into a header or a user lookup: control characters would corrupt either.
fn header_text(text: &str) -> Result<String, &'static str> {
    if text.chars().any(char::is_control) {
        Err("must not contain control characters")
    } else {
        Ok(text.to_owned())
    }
}

/// A control secret: one that could never be typed on an `auth` line is refused.
fn secret(text: &str) -> Result<String, &'static str> {
    if text.is_empty() || text.trim() != text {
        return Err("must not be empty or start or end with white space");
    }
    header_text(text)
}

/// A Redis URL: its scheme is checked here, the rest by the Redis client at start.
fn cluster_url(text: &str) -> Result<String, &'static str> {
    if text.starts_with("redis://") || text.starts_with("rediss://") {
        header_text(text)
    } else {
        Err("must be redis://[user:password@]host:port[/db] or rediss://… (TLS)")
    }
}

/// How many streams an HTTP/2 connection may have open at once, unless told.
const DEFAULT_HTTP2_MAX_STREAMS: u32 = 100;

/// `--http2-max-streams`: 1 to 1000 (a connection's streams are slots of its key).
fn stream_limit(text: &str) -> Result<u32, &'static str> {
    text.parse().ok().filter(|n| (1..=1000).contains(n)).ok_or("must be a whole number from 1 to 1000")
}

fn positive(text: &str) -> Result<usize, &'static str> {
    text.parse().ok().filter(|n| *n > 0).ok_or("must be a whole number above 0")
}

/// A secret file's bytes, without the newline an editor or `echo` leaves at its end.
fn read_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    if bytes.is_empty() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty"));
    }
    Ok(bytes)
}

fn socket_addr(text: &str) -> Result<SocketAddr, &'static str> {
    text.parse().map_err(|_| "not ADDR:PORT (127.0.0.1:8086, [::1]:8086)")
}

fn whole(text: &str) -> Result<usize, &'static str> {
    text.parse().map_err(|_| "must be a whole number, 0 or more")
}

fn milliseconds(text: &str) -> Result<u32, &'static str> {
    text.parse().map_err(|_| "must be a whole number of milliseconds, 0 or more")
}

fn workers(text: &str) -> Result<usize, &'static str> {
    positive(text).ok().filter(|n| *n <= MAX_WORKERS).ok_or("must be a whole number from 1 to 1024")
}

/// How long a client whose last stream ended may take to come back before it leaves.
const DEFAULT_PRESENCE_DEBOUNCE: Duration = Duration::from_secs(5);

fn seconds(text: &str) -> Result<Duration, &'static str> {
    text.parse()
        .ok()
        .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
        .filter(|duration| !duration.is_zero())
        .ok_or("must be a number of seconds above 0")
}

/// Whole seconds, from 2 (a rotation every second) up to what rustls' ticket keys allow.
fn ticket_lifetime(text: &str) -> Result<Duration, &'static str> {
    let max = crate::tls::MAX_TICKET_LIFETIME.as_secs();
    text.parse()
        .ok()
        .filter(|secs| (2..=max).contains(secs))
        .map(Duration::from_secs)
        .ok_or("must be whole seconds from 2 to 43200 (12 hours)")
}

/// The backend's URL, checked now rather than at the first subscription.
fn auth_url(text: &str) -> Result<String, &'static str> {
    crate::auth_hook::check_url(text).map(|()| text.to_owned())
}

/// A path, relative ones taken from the current directory.
fn any_path(text: &str) -> Result<PathBuf, &'static str> {
    std::path::absolute(text).map_err(|_| "not a usable path")
}

/// An interval in seconds, or 0 for never.
fn interval(text: &str) -> Result<Option<Duration>, &'static str> {
    match text.parse::<f64>() {
        Ok(0.0) => Ok(None),
        _ => seconds(text).map(Some).map_err(|_| "must be a number of seconds, 0 for never"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn parse(args: &[&str]) -> Result<Invocation, ConfigError> {
        parse_args(args.iter().copied())
    }

    fn run(args: &[&str]) -> Config {
        match parse(args) {
            Ok(Invocation::Run(config)) => *config,
            other => panic!("{args:?}: expected a config, got {other:?}"),
        }
    }

    fn error(args: &[&str]) -> String {
        match parse(args) {
            Err(err) => err.to_string(),
            Ok(other) => panic!("{args:?}: expected an error, got {other:?}"),
        }
    }

    fn printed(args: &[&str]) -> String {
        match parse(args) {
            Ok(Invocation::Print(text)) => text,
            other => panic!("{args:?}: expected text to print, got {other:?}"),
        }
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    /// A config file under the temp dir, removed when dropped.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!("hasses-config-{}-{name}.conf", std::process::id()));
            std::fs::write(&path, text).unwrap();
            TempFile(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    const LEGACY_LINE: &[&str] = &[
        "-p=8080",
        "-cp=8085",
        "-murl=/sse",
        "-fifo=/run/hasses.fifo",
        "-nodaemon",
        "-q",
        "-ra",
        "-sep=|",
        "-cors-base=http://example.com",
        "-l=/var/log/h.log",
        "-pidfile=/run/hasses.pid",
        "-user=nobody",
    ];

    #[test]
    fn legacy_full_command_line() {
        let config = run(LEGACY_LINE);
        assert_eq!(config.sse_addr, addr("[::]:8080"));
        assert_eq!(config.match_url, "/sse");
        assert_eq!(config.control_addr, Some(addr("127.0.0.1:8085")));
        assert_eq!(config.fifo, Some(PathBuf::from("/run/hasses.fifo")));
        assert_eq!(config.separator, b'|');
        assert_eq!(config.log_level, 0);
        // -nodaemon logs to stdout even with -l, as hasses does.
        assert_eq!(config.log_target, LogTarget::Stdout);
        assert_eq!(config.pidfile, Some(PathBuf::from("/run/hasses.pid")));
        assert_eq!(config.cors_base, "http://example.com");
        assert!(config.reinit);
        assert_eq!(config.user.as_deref(), Some("nobody"));
        assert!(!config.daemon);
    }

    #[test]
    fn legacy_daemonizes_and_logs_to_the_file() {
        let config = run(&["-p=80", "-murl=/e", "-cp=1"]);
        assert!(config.daemon);
        assert_eq!(config.log_target, LogTarget::File(DEFAULT_LOG_FILE.into()));
        assert_eq!(config.control_addr, Some(addr("127.0.0.1:1")));
        let config = run(&["-p=80", "-murl=/e", "-fifo=/f", "-l=/tmp/h.log", "-debug"]);
        assert_eq!(config.log_target, LogTarget::File("/tmp/h.log".into()));
        assert_eq!(config.control_addr, None, "no control port unless -cp, as hasses");
        assert_eq!(config.log_level, 2);
    }

    #[test]
    fn modern_defaults_with_no_flags() {
        let config = run(&[]);
        assert_eq!(config.sse_addr, addr("[::]:8080"));
        assert_eq!(config.match_url, "/sse");
        assert_eq!(config.control_addr, Some(addr("127.0.0.1:8085")));
        assert_eq!(config.fifo, None);
        assert_eq!(config.fifo_mode, 0o666);
        assert_eq!(config.separator, b';');
        assert_eq!(config.log_level, 1);
        assert_eq!(config.log_target, LogTarget::Stderr);
        assert_eq!(config.pidfile, None);
        assert_eq!(config.cors_base, "*");
        assert!(!config.reinit);
        assert_eq!(config.user, None);
        assert!(!config.daemon);
        assert_eq!(config.workers, default_workers());
        assert!(config.workers >= 1);
        assert!(!config.pin_cpus);
        assert_eq!(config.handshake_timeout, Duration::from_secs(20));
        assert_eq!(config.max_age, Duration::from_secs(3600));
        assert_eq!(config.heartbeat, Some(Duration::from_secs(30)));
        assert_eq!(config.defer_accept, None);
        assert_eq!((config.max_connections, config.max_connections_per_ip), (None, None));
        assert_eq!(config.presence_events, None);
        assert_eq!(config.control_secret, None);
        assert_eq!(config.max_backlog, 1 << 20);
        let history =
            HistoryLimits { per_audience: 1000, max_age: Duration::from_secs(3600), max_bytes: 64 << 20 };
        assert_eq!((config.history, config.retry), (history, None));
        assert_eq!((config.history_file, config.history_fsync), (None, Duration::from_secs(1)));
        assert_eq!(config.limits, Limits { max_message: 65536 });
    }

    #[test]
    fn modern_flags() {
        let line = "--port 9000 --match-url=/events --control-port 0 --control-bind 0.0.0.0 \
                    --bind 127.0.0.1 --fifo /tmp/f --fifo-mode 600 --separator - --log-level 2 \
                    --log-file /tmp/l --pidfile /tmp/p --cors-base https://a.example --reinit \
                    --user www --workers 3 --pin-cpus --handshake-timeout 0.5 --max-age 10 \
                    --max-message 100 --max-backlog 1000 --heartbeat 0 --defer-accept 5 \
                    --max-connections 9 --max-connections-per-ip 3 --control-secret s3 \
                    --history 0 --history-age 60 --history-memory 4096 --retry 2500 \
                    --history-file /var/lib/h --history-fsync 0 --presence-events \
                    --presence-debounce 0.5";
        let config = run(&line.split_whitespace().collect::<Vec<_>>());
        assert_eq!(config.sse_addr, addr("127.0.0.1:9000"));
        assert_eq!(config.match_url, "/events");
        assert_eq!(config.control_addr, Some(addr("0.0.0.0:0")));
        assert_eq!(config.fifo, Some(PathBuf::from("/tmp/f")));
        assert_eq!(config.fifo_mode, 0o600);
        assert_eq!(config.separator, b'-');
        assert_eq!(config.log_level, 2);
        assert_eq!(config.log_target, LogTarget::File("/tmp/l".into()));
        assert_eq!(config.pidfile, Some(PathBuf::from("/tmp/p")));
        assert_eq!(config.cors_base, "https://a.example");
        assert!(config.reinit);
        assert_eq!(config.user.as_deref(), Some("www"));
        assert!(!config.daemon);
        assert_eq!(config.workers, 3);
        assert!(config.pin_cpus);
        assert_eq!(config.handshake_timeout, Duration::from_millis(500));
        assert_eq!(config.max_age, Duration::from_secs(10));
        assert_eq!(config.heartbeat, None);
        assert_eq!(config.defer_accept, Some(Duration::from_secs(5)));
        assert_eq!((config.max_connections, config.max_connections_per_ip), (Some(9), Some(3)));
        assert_eq!(config.presence_events, Some(Duration::from_millis(500)));
        assert_eq!(config.control_secret.as_deref(), Some("s3"));
        assert_eq!(config.limits.max_message, 100);
        assert_eq!(config.max_backlog, 1000);
        let history = HistoryLimits { per_audience: 0, max_age: Duration::from_secs(60), max_bytes: 4096 };
        assert_eq!((config.history, config.retry), (history, Some(2500)));
        assert_eq!((config.history_file, config.history_fsync), (Some("/var/lib/h".into()), Duration::ZERO));
    }

    #[test]
    fn the_history_file_is_absolute_and_not_for_a_cluster() {
        assert_eq!(error(&["--history-file", "h"]), "--history-file: path must be absolute: h");
        assert_eq!(
            error(&["--history-file", "/h", "--cluster", "redis://127.0.0.1:6379"]),
            "--history-file cannot be used with --cluster: a cluster's history is its Redis stream"
        );
        assert_eq!(
            error(&["--history-fsync", "soon"]),
            "--history-fsync: must be a whole number of milliseconds, 0 or more: soon"
        );
        let legacy = run(&["-p=1", "-murl=/a", "-cp=2", "--history-file=/h"]);
        assert_eq!(legacy.history_file, Some("/h".into()), "with legacy flags, only when given");
    }

    #[test]
    fn modern_daemon_logs_to_a_file() {
        let config = run(&["--daemon"]);
        assert!(config.daemon);
        assert_eq!(config.log_target, LogTarget::File(DEFAULT_LOG_FILE.into()));
        let config = run(&["--daemon", "--log-file", "/tmp/x.log"]);
        assert_eq!(config.log_target, LogTarget::File("/tmp/x.log".into()));
    }

    #[test]
    fn no_control_port_needs_a_fifo() {
        let config = run(&["--no-control-port", "--fifo", "/run/f"]);
        assert_eq!(config.control_addr, None);
        assert_eq!(config.fifo, Some(PathBuf::from("/run/f")));
        assert_eq!(
            error(&["--no-control-port"]),
            "no control channel: give -cp=PORT (--control-port) or -fifo=/ABS/PATH (--fifo)"
        );
        // The later of the two wins.
        let config = run(&["--no-control-port", "--control-port", "9"]);
        assert_eq!(config.control_addr, Some(addr("127.0.0.1:9")));
        let config = run(&["--control-port", "9", "--no-control-port", "--fifo=/f"]);
        assert_eq!(config.control_addr, None);
    }

    #[test]
    fn legacy_and_modern_mix() {
        let config = run(&["-p=9000", "--match-url", "/x", "--fifo", "/f", "-nodaemon", "--workers=2"]);
        assert_eq!(config.sse_addr.port(), 9000);
        assert_eq!(config.match_url, "/x");
        assert_eq!(config.control_addr, None, "legacy mode: no default control port");
        assert_eq!(config.log_target, LogTarget::Stdout);
        assert_eq!(config.workers, 2);
        // A modern --log-file is honoured in the foreground; hasses' -l is not.
        let base = ["-p=1", "-murl=/x", "-cp=2", "-nodaemon"];
        let config = run(&[&base[..], &["--log-file", "/tmp/m.log"]].concat());
        assert_eq!(config.log_target, LogTarget::File("/tmp/m.log".into()));
        let config = run(&[&base[..], &["-l=/tmp/m.log"]].concat());
        assert_eq!(config.log_target, LogTarget::Stdout);
        // The later of -nodaemon and --daemon wins.
        assert!(run(&[&base[..], &["--daemon"]].concat()).daemon);
        assert!(!run(&["--daemon", "-nodaemon", "-p=1", "-murl=/x", "-cp=2"]).daemon);
    }

    #[test]
    fn a_repeated_flag_takes_the_last_value() {
        assert_eq!(run(&["--port", "1", "--port", "2"]).sse_addr.port(), 2);
        assert_eq!(run(&["-p=1", "-murl=/a", "-cp=3", "--port", "2"]).sse_addr.port(), 2);
        assert_eq!(run(&["-q", "-debug", "-p=1", "-murl=/a", "-cp=3"]).log_level, 2);
    }

    #[test]
    fn legacy_values_may_start_with_a_dash_or_hold_equals() {
        let config = run(&["-p=1", "-murl=/a", "-cp=3", "-sep=-", "-cors-base=http://a/?b=c"]);
        assert_eq!(config.separator, b'-');
        assert_eq!(config.cors_base, "http://a/?b=c");
    }

    #[test]
    fn config_file_then_command_line() {
        let file = TempFile::new(
            "good",
            "# hasses.conf\n\n  -p=8080  \n-cp=8085 # control\n-murl=/sse-event\r\n\
             -fifo=/var/run/hasses/SSE_EVENT\n-ra\n#-user=hyper\n--workers 2\n",
        );
        let config = run(&["--config", file.path(), "-p=9000", "-nodaemon"]);
        assert_eq!(config.sse_addr.port(), 9000, "the command line wins");
        assert_eq!(config.control_addr, Some(addr("127.0.0.1:8085")));
        assert_eq!(config.match_url, "/sse-event");
        assert_eq!(config.fifo, Some(PathBuf::from("/var/run/hasses/SSE_EVENT")));
        assert!(config.reinit);
        assert_eq!(config.user, None);
        assert_eq!(config.workers, 2);
        assert_eq!(config.log_target, LogTarget::Stdout);
        // Legacy flags in the file alone put us in legacy mode.
        assert!(run(&[&format!("--config={}", file.path())]).daemon);
    }

    #[test]
    fn config_file_errors_name_the_file_and_line() {
        let missing = std::env::temp_dir().join("hasses-config-does-not-exist.conf");
        let message = error(&["--config", missing.to_str().unwrap()]);
        assert!(message.starts_with(&format!("config file {}: ", missing.display())), "{message}");

        let file = TempFile::new("unknown", "-p=8080\n\n-bogus=1\n");
        assert_eq!(error(&["--config", file.path()]), format!("{}:3: unknown switch: -bogus", file.path()));
        let file = TempFile::new("value", "-murl=/a\n-p=abc\n-cp=1\n");
        assert_eq!(
            error(&["--config", file.path()]),
            format!("{}:2: -p: not a port number (0-65535): abc", file.path())
        );
        let file = TempFile::new("nested", "--config /etc/hasses.conf\n");
        assert_eq!(
            error(&["--config", file.path()]),
            format!("{}:1: --config cannot be used inside a config file", file.path())
        );
        let file = TempFile::new("stray", "-p 8080\n");
        assert_eq!(
            error(&["--config", file.path()]),
            format!("{}:1: -p: needs a value (-p=VALUE)", file.path())
        );
    }

    #[test]
    fn legacy_mode_requires_hasses_flags() {
        assert_eq!(error(&["-murl=/a", "-cp=1"]), "-p=PORT (--port) is required with legacy flags");
        assert_eq!(error(&["-p=1", "-cp=1"]), "-murl=PATH (--match-url) is required with legacy flags");
        assert_eq!(
            error(&["-p=1", "-murl=/a"]),
            "no control channel: give -cp=PORT (--control-port) or -fifo=/ABS/PATH (--fifo)"
        );
        // Either spelling counts.
        run(&["--port", "1", "--match-url", "/a", "--control-port", "2", "-ra"]);
    }

    #[test]
    fn the_auth_hook_needs_a_usable_url() {
        assert_eq!(run(&[]).auth_hook, None);
        let hook = run(&["--auth-url", "http://127.0.0.1:8000/auth.php"]).auth_hook.unwrap();
        assert_eq!(
            hook,
            HookSettings {
                url: "http://127.0.0.1:8000/auth.php".into(),
                timeout: Duration::from_secs(2),
                cache: None
            }
        );
        let tuned = run(&["--auth-url=https://app/a", "--auth-timeout=0.5", "--auth-cache-secs=30"]);
        let tuned = tuned.auth_hook.unwrap();
        assert_eq!((tuned.timeout, tuned.cache), (Duration::from_millis(500), Some(Duration::from_secs(30))));
        assert_eq!(run(&["--auth-url=http://a/", "--auth-cache-secs=0"]).auth_hook.unwrap().cache, None);
        assert_eq!(
            error(&["--auth-url", "127.0.0.1:8000/auth"]),
            "--auth-url: must be an http:// or https:// URL: 127.0.0.1:8000/auth"
        );
        assert_eq!(error(&["--auth-url", "http://a b/"]), "--auth-url: not a URL: http://a b/");
        assert_eq!(error(&["--auth-timeout", "2"]), "--auth-timeout and --auth-cache-secs need --auth-url");
        assert_eq!(
            error(&["--auth-url=http://a/", "--auth-timeout=0"]),
            "--auth-timeout: must be a number of seconds above 0: 0"
        );
    }

    #[test]
    fn paths_must_be_absolute() {
        let base = ["-p=1", "-murl=/a", "-cp=2"];
        let cases = [
            ("-fifo=run/x.fifo", "-fifo: path must be absolute: run/x.fifo"),
            ("-l=h.log", "-l: path must be absolute: h.log"),
            ("-pidfile=./h.pid", "-pidfile: path must be absolute: ./h.pid"),
            ("--log-file=h.log", "--log-file: path must be absolute: h.log"),
        ];
        for (flag, message) in cases {
            assert_eq!(error(&[&base[..], &[flag]].concat()), message);
        }
    }

    #[test]
    fn an_unknown_switch_names_the_nearest_known_one() {
        assert_eq!(error(&["--prot", "80"]), "unknown switch: --prot; did you mean --port?");
        assert_eq!(error(&["--max-backlg=1"]), "unknown switch: --max-backlg; did you mean --max-backlog?");
        assert_eq!(error(&["-port=80"]), "unknown switch: -port; did you mean --port?");
        assert_eq!(error(&["--murl=/sse"]), "unknown switch: --murl; did you mean -murl?");
        assert_eq!(error(&["--zzzzzzzz"]), "unknown switch: --zzzzzzzz");
    }

    #[test]
    fn unknown_and_malformed_switches() {
        assert_eq!(error(&["-x"]), "unknown switch: -x");
        assert_eq!(error(&["-pp=1"]), "unknown switch: -pp; did you mean -p?");
        assert_eq!(error(&["-daemon"]), "unknown switch: -daemon; did you mean --daemon?");
        assert_eq!(error(&["--bogus"]), "unknown switch: --bogus");
        assert_eq!(error(&["--"]), "unknown switch: --");
        assert_eq!(error(&["foo"]), "unexpected argument: foo");
        assert_eq!(error(&["-"]), "unexpected argument: -");
        assert_eq!(error(&["-p"]), "-p: needs a value (-p=VALUE)");
        assert_eq!(error(&["-p="]), "-p: needs a value (-p=VALUE)");
        assert_eq!(error(&["--port"]), "--port: needs a value (--port VALUE)");
        assert_eq!(error(&["--port="]), "--port: needs a value (--port VALUE)");
        assert_eq!(error(&["--cors-base", "--reinit"]), "--cors-base: needs a value (--cors-base VALUE)");
        assert_eq!(error(&["-q=1"]), "-q: takes no value");
        assert_eq!(error(&["-ra="]), "-ra: takes no value");
        assert_eq!(error(&["--reinit=yes"]), "--reinit: takes no value");
    }

    #[test]
    fn one_jwt_key_and_the_claims_to_check() {
        assert_eq!(run(&[]).auth, None);
        let hmac = run(&["--jwt-secret", "s3", "--jwt-issuer", "backend"]).auth.unwrap();
        assert_eq!(
            (hmac.key, hmac.issuer.as_deref(), hmac.audience),
            (AuthKey::Secret(b"s3".to_vec()), Some("backend"), None)
        );
        let key = run(&["--jwt-key", "/etc/hasses/jwt.pem", "--jwt-audience", "hasses"]).auth.unwrap();
        assert_eq!(key.key, AuthKey::PublicKey("/etc/hasses/jwt.pem".into()));
        let file = std::env::temp_dir().join(format!("hasses-jwt-secret-{}", std::process::id()));
        std::fs::write(&file, "from a file\n").unwrap();
        let from_file = run(&["--jwt-secret-file", file.to_str().unwrap()]).auth.unwrap();
        assert_eq!(from_file.key, AuthKey::Secret(b"from a file".to_vec()));
        std::fs::remove_file(&file).unwrap();
        assert!(error(&["--jwt-secret-file", file.to_str().unwrap()]).starts_with("--jwt-secret-file /"));
        assert_eq!(
            error(&["--jwt-secret", "a", "--jwt-key", "/k.pem"]),
            "give one of --jwt-secret, --jwt-secret-file and --jwt-key"
        );
        assert_eq!(
            error(&["--jwt-issuer", "x"]),
            "--jwt-issuer and --jwt-audience need --jwt-secret or --jwt-key"
        );
    }

    #[test]
    fn a_negative_number_is_a_wrong_value_not_a_missing_one() {
        let cases: &[(&str, &str)] = &[
            ("--heartbeat", "--heartbeat: must be a number of seconds, 0 for never: -1"),
            ("--defer-accept", "--defer-accept: must be a number of seconds, 0 for never: -1"),
            ("--handshake-timeout", "--handshake-timeout: must be a number of seconds above 0: -1"),
            ("--max-age", "--max-age: must be a number of seconds above 0: -1"),
            ("--port", "--port: not a port number (0-65535): -1"),
            ("--control-port", "--control-port: not a port number (0-65535): -1"),
            ("--workers", "--workers: must be a whole number from 1 to 1024: -1"),
            ("--max-connections", "--max-connections: must be a whole number above 0: -1"),
            ("--max-connections-per-ip", "--max-connections-per-ip: must be a whole number above 0: -1"),
            ("--max-message", "--max-message: must be a whole number above 0: -1"),
            ("--max-backlog", "--max-backlog: must be a whole number above 0: -1"),
            ("--log-level", "--log-level: must be 0, 1 or 2: -1"),
            ("--history", "--history: must be a whole number, 0 or more: -1"),
            ("--history-age", "--history-age: must be a number of seconds above 0: -1"),
            ("--history-memory", "--history-memory: must be a whole number above 0: -1"),
            ("--retry", "--retry: must be a whole number of milliseconds, 0 or more: -1"),
            ("--fifo-mode", "--fifo-mode: not an octal file mode (0-7777): -1"),
        ];
        for (flag, expected) in cases {
            assert_eq!(error(&[flag, "-1"]), *expected);
            assert_eq!(error(&[&format!("{flag}=-1")]), *expected);
        }
        assert_eq!(error(&["-p=-1", "-murl=/a", "-cp=2"]), "-p: not a port number (0-65535): -1");
        assert_eq!(
            error(&["--heartbeat", "-0.5"]),
            "--heartbeat: must be a number of seconds, 0 for never: -0.5"
        );
        // A word that is a flag is still not taken as a value.
        assert_eq!(error(&["--heartbeat", "-q"]), "--heartbeat: needs a value (--heartbeat VALUE)");
        assert_eq!(error(&["--heartbeat", "--reinit"]), "--heartbeat: needs a value (--heartbeat VALUE)");
    }

    #[test]
    fn separator_is_one_byte() {
        let base = ["-p=1", "-murl=/a", "-cp=2"];
        assert_eq!(error(&[&base[..], &["-sep=ab"]].concat()), "-sep: must be exactly one byte: ab");
        assert_eq!(error(&[&base[..], &["-sep=é"]].concat()), "-sep: must be exactly one byte: é");
        assert_eq!(error(&[&base[..], &["-sep="]].concat()), "-sep: needs a value (-sep=VALUE)");
        assert_eq!(error(&["--separator", "::"]), "--separator: must be exactly one byte: ::");
    }

    #[test]
    fn bad_values() {
        let cases: &[(&[&str], &str)] = &[
            (&["--port", "70000"], "--port: not a port number (0-65535): 70000"),
            (&["--control-port=x"], "--control-port: not a port number (0-65535): x"),
            (&["--bind", "nope"], "--bind: not an IP address: nope"),
            (&["--control-bind", "localhost"], "--control-bind: not an IP address: localhost"),
            (&["--match-url", "sse"], "--match-url: must start with / and hold no spaces: sse"),
            (&["--fifo-mode", "9"], "--fifo-mode: not an octal file mode (0-7777): 9"),
            (&["--fifo-mode", "17777"], "--fifo-mode: not an octal file mode (0-7777): 17777"),
            (&["--log-level", "3"], "--log-level: must be 0, 1 or 2: 3"),
            (&["--workers", "0"], "--workers: must be a whole number from 1 to 1024: 0"),
            (&["--workers", "5000"], "--workers: must be a whole number from 1 to 1024: 5000"),
            (&["--max-message", "0"], "--max-message: must be a whole number above 0: 0"),
            (&["--max-backlog", "1k"], "--max-backlog: must be a whole number above 0: 1k"),
            (&["--handshake-timeout", "0"], "--handshake-timeout: must be a number of seconds above 0: 0"),
            (&["--max-age=-1"], "--max-age: must be a number of seconds above 0: -1"),
            (&["--max-age", "inf"], "--max-age: must be a number of seconds above 0: inf"),
            (
                &["--control-secret= s"],
                "--control-secret: must not be empty or start or end with white space:  s",
            ),
            (&["--heartbeat=-1"], "--heartbeat: must be a number of seconds, 0 for never: -1"),
            (&["--heartbeat", "soon"], "--heartbeat: must be a number of seconds, 0 for never: soon"),
            (&["--user", "a\u{7}"], "--user: must not contain control characters: a\u{7}"),
        ];
        for (args, message) in cases {
            assert_eq!(error(args), *message, "{args:?}");
        }
    }

    #[test]
    fn tls_takes_both_files_either_way() {
        let base = ["-p=1", "-murl=/a", "-cp=2"];
        let legacy = run(&[&base[..], &["-ssl", "-cert-file=/c.pem", "-privatekey-file=k.pem"]].concat());
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(legacy.tls, Some(TlsFiles { cert: "/c.pem".into(), key: cwd.join("k.pem") }));
        let modern = run(&["--tls-cert", "/c.pem", "--tls-key=/k.pem"]);
        assert_eq!(modern.tls, Some(TlsFiles { cert: "/c.pem".into(), key: "/k.pem".into() }));
        let needs_both = "TLS needs both a certificate and a key (-cert-file= and -privatekey-file=, or \
                          --tls-cert and --tls-key)";
        assert_eq!(
            error(&[&base[..], &["-ssl", "-cert-file=c.pem"]].concat()),
            format!("-ssl: {needs_both}")
        );
        assert_eq!(error(&["--tls-cert", "/c.pem"]), format!("--tls-cert: {needs_both}"));
        assert_eq!(error(&["--tls-key=/k.pem"]), format!("--tls-key: {needs_both}"));
        // hasses ignores the file flags without -ssl.
        assert_eq!(run(&[&base[..], &["-cert-file=c.pem", "-privatekey-file=k.pem"]].concat()).tls, None);
    }

    #[test]
    fn ticket_lifetime_is_whole_seconds_up_to_what_rustls_keys_allow() {
        assert_eq!(run(&[]).tls_ticket_lifetime, Duration::from_secs(21600));
        assert_eq!(run(&["--tls-ticket-lifetime=600"]).tls_ticket_lifetime, Duration::from_secs(600));
        let reason = "must be whole seconds from 2 to 43200 (12 hours)";
        for bad in ["1", "43201", "1.5", "x"] {
            assert_eq!(
                error(&[&format!("--tls-ticket-lifetime={bad}")]),
                format!("--tls-ticket-lifetime: {reason}: {bad}")
            );
        }
    }

    #[test]
    fn help_and_version() {
        for flag in ["-h", "-help", "--help"] {
            let help = printed(&[flag]);
            assert!(help.contains("Usage: hasses"), "{help}");
            assert!(help.contains("--control-bind <ADDR>"), "{help}");
            assert!(help.contains("[-murl=PATH]"), "{help}");
            assert!(!help.contains("--nodaemon"), "hidden flags stay hidden");
        }
        for flag in ["-v", "-V", "-version", "--version"] {
            assert_eq!(printed(&[flag]), format!("hasses {}\n", env!("CARGO_PKG_VERSION")));
        }
        // Help is answered even when the rest would not run.
        printed(&["-murl=/a", "-h"]);
        printed(&["--config", "/nonexistent/hasses.conf", "--help"]);
    }

    #[test]
    fn non_utf8_argument() {
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![b'-', b'p', b'=', 0xff]);
        let err = parse_args([bad]).unwrap_err();
        assert_eq!(err.to_string(), "argument is not valid UTF-8: -p=\u{fffd}");
    }

    proptest! {
        #[test]
        fn any_argv_parses_or_fails_in_one_line(
            args in proptest::collection::vec("-{0,2}[a-z=/.|0-9-]{0,10}", 0..6)
        ) {
            if let Err(err) = parse_args(args) {
                let message = err.to_string();
                prop_assert!(!message.is_empty() && !message.contains('\n'), "{message:?}");
            }
        }
    }
}

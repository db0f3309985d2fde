//! Starting and stopping the server: sockets, FIFO, pid file, privileges, threads.
//!
//! Owns the order of start-up that an install depends on (bind every socket and open every file
//! first, then daemonize, write the pid, drop privileges, start threads) and an orderly stop. It
//! holds no connection and parses no input.

use std::fs::{File, OpenOptions};
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::fcntl::Flock;
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{error, info, warn};

use crate::admin::{Admin, ServerFacts};
use crate::auth::Auth;
use crate::auth_hook::AuthHook;
use crate::cluster::Cluster;
use crate::config::{ApiBind, Config};
use crate::control::handover::{Adopted, Verdict};
use crate::control::{AdminLink, Control, ControlSettings, ControlStop, PresenceEvents, Sequencer};
use crate::forward::{Forward, Relay};
use crate::history::History;
use crate::history_file::{self, FileFigures, HistoryWriter, HISTORY_QUEUE};
use crate::log::REPORT;
use crate::pipeline::{PresenceLink, SharedState};
use crate::shard::{PerIpLimit, Settings, Shard};
use crate::sse::EventIds;
use crate::tls::Tls;
use crate::upgrade::{self, Inherited, Parcel, ReadyPipe, UpgradeError};

/// Commands a shard may have queued before the control thread waits for room. With a client over
/// its cap a shard stops taking commands, so this bounds what a burst holds in memory: at most
/// this many events (each at most `--max-message`, shared by every shard) wait on the channels.
const SHARD_QUEUE: usize = 1024;
/// Questions about the server that may wait for the admin thread before the control thread
/// waits for room (only a flood of `tcpclientlist` would fill it).
const ADMIN_QUEUE: usize = 1024;
/// Streams started and ended, told by the shards, that the control thread has not taken yet
/// (`--presence-events`); beyond, a change is lost and logged.
const PRESENCE_QUEUE: usize = 65_536;
/// The accept backlog asked of the kernel (it caps it at `net.core.somaxconn`).
const LISTEN_BACKLOG: i32 = 4096;

/// Why the server cannot start. `Display` is the one line printed before exiting non-zero.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listening socket could not be set up.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
    /// The FIFO could not be created or opened.
    #[error("control FIFO {path}: {reason}")]
    Fifo {
        /// Its path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// The pid file could not be written.
    #[error("cannot write pid file {path}: {source}")]
    Pidfile {
        /// Its path.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// Privileges could not be dropped.
    #[error("cannot switch to user {user}: {reason}")]
    User {
        /// The user asked for.
        user: String,
        /// What went wrong.
        reason: String,
    },
    /// Detaching from the terminal failed.
    #[error("cannot daemonize: {0}")]
    Daemon(nix::Error),
    /// The TLS certificate or key cannot be used.
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The key subscribers' tokens are checked with cannot be used.
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// The node cannot join its cluster (bad URL, Redis unreachable, credentials refused).
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
    /// The auth hook's threads cannot start.
    #[error(transparent)]
    AuthHook(#[from] crate::auth_hook::HookError),
    /// The history file cannot be read or written, or is of another format.
    #[error(transparent)]
    HistoryFile(#[from] crate::history_file::HistoryFileError),
    /// A thread or its poller could not be made.
    #[error("cannot start a thread: {0}")]
    Thread(io::Error),
}

/// Every socket and file the server needs, opened before privileges are dropped.
#[derive(Debug)]
pub struct Bound {
    sse: Vec<TcpListener>,
    control: Option<TcpListener>,
    api: Option<TcpListener>,
    /// Why the API is not served on its default address (said once the log is set up).
    api_unavailable: Option<StartError>,
    fifo: Option<File>,
    tls: Option<Tls>,
    auth: Option<Auth>,
    /// What a predecessor handed over beyond its listeners (an upgrade).
    taken_over: Option<TakenOver>,
}

/// What a process that takes over from a predecessor goes on with, beyond the listeners.
#[derive(Debug)]
struct TakenOver {
    adopted: Adopted,
    history_lock: Option<File>,
    history: Vec<u8>,
    forward: Option<std::os::unix::net::UnixStream>,
    present: Vec<crate::presence::Present>,
    ready: ReadyPipe,
}

impl Bound {
    /// Where SSE clients connect (the port resolved when 0 was asked).
    pub fn sse_addr(&self) -> io::Result<SocketAddr> {
        self.sse[0].local_addr()
    }

    /// Where publishers connect, if there is a control port.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Where the HTTP API listens, if it does.
    pub fn api_addr(&self) -> Option<SocketAddr> {
        self.api.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Binds one SSE listener per worker (all on one port, `SO_REUSEPORT`), the control listener,
/// and opens (creating if missing) the FIFO.
///
/// A process that takes over from a predecessor (`inherited`, an upgrade) serves the listeners
/// and the FIFO it was handed, where they are still the ones the configuration asks for; it
/// opens anew only what the configuration changed.
pub fn bind(config: &Config, inherited: Option<Inherited>) -> Result<Bound, StartError> {
    let Some(inherited) = inherited else { return bind_fresh(config) };
    let mut sse = inherited.sse;
    if !sse.first().is_some_and(|listener| listens_at(listener, config.sse_addr)) {
        info!("Upgrade: SSE moves to {}; the old listeners are closed", config.sse_addr);
        sse.clear();
    }
    if sse.is_empty() {
        sse.push(listen_sse(config.sse_addr, config.defer_accept)?);
    }
    // Workers added get listeners of their own on the port; workers gone take theirs along
    // (a connection waiting in such a listener's queue is reset, and retried by its client).
    sse.truncate(config.workers);
    let addr = sse[0].local_addr().map_err(|source| StartError::Listen { addr: config.sse_addr, source })?;
    while sse.len() < config.workers {
        sse.push(listen_sse(addr, config.defer_accept)?);
    }
    let control = match (config.control_addr, inherited.control) {
        (Some(addr), Some(listener)) if listens_at(&listener, addr) => Some(listener),
        (addr, _) => addr.map(|addr| listen(addr, false)).transpose()?,
    };
    let (api, api_unavailable) = match (config.api, inherited.api) {
        (ApiBind::Asked(addr) | ApiBind::Default(addr), Some(listener)) if listens_at(&listener, addr) => {
            (Some(listener), None)
        }
        _ => bind_api(config.api)?,
    };
    let fifo = match inherited.fifo {
        Some(fifo) if config.fifo.is_some() => Some(fifo),
        _ => config.fifo.as_deref().map(|path| open_fifo(path, config.fifo_mode)).transpose()?,
    };
    let (tls, auth) = load_keys(config)?;
    let taken_over = TakenOver {
        adopted: inherited.adopted,
        history_lock: inherited.history_lock,
        history: inherited.history,
        forward: inherited.forward,
        present: inherited.present,
        ready: inherited.ready,
    };
    Ok(Bound { sse, control, api, api_unavailable, fifo, tls, auth, taken_over: Some(taken_over) })
}

/// Whether an inherited `listener` is where the configuration asks for one (port 0: any port).
fn listens_at(listener: &TcpListener, asked: SocketAddr) -> bool {
    listener
        .local_addr()
        .is_ok_and(|at| at.ip() == asked.ip() && (asked.port() == 0 || at.port() == asked.port()))
}

/// Binds and opens everything anew: a start, not an upgrade.
fn bind_fresh(config: &Config) -> Result<Bound, StartError> {
    if config.sse_addr.port() != 0 {
        ensure_port_free(config.sse_addr)?;
    }
    let first = listen_sse(config.sse_addr, config.defer_accept)?;
    let addr = first.local_addr().map_err(|source| StartError::Listen { addr: config.sse_addr, source })?;
    let mut sse = vec![first];
    for _ in 1..config.workers {
        sse.push(listen_sse(addr, config.defer_accept)?);
    }
    let control = config.control_addr.map(|addr| listen(addr, false)).transpose()?;
    let (api, api_unavailable) = bind_api(config.api)?;
    let fifo = config.fifo.as_deref().map(|path| open_fifo(path, config.fifo_mode)).transpose()?;
    let (tls, auth) = load_keys(config)?;
    Ok(Bound { sse, control, api, api_unavailable, fifo, tls, auth, taken_over: None })
}

/// The HTTP API's listener. A default port someone else holds costs the API, not the start:
/// nobody asked for it.
fn bind_api(api: ApiBind) -> Result<(Option<TcpListener>, Option<StartError>), StartError> {
    Ok(match api {
        ApiBind::Off => (None, None),
        ApiBind::Asked(addr) => (Some(listen(addr, false)?), None),
        ApiBind::Default(addr) => match listen(addr, false) {
            Ok(listener) => (Some(listener), None),
            Err(e) => (None, Some(e)),
        },
    })
}

/// The TLS keys and the subscribers' token key, read while we still have our privileges.
fn load_keys(config: &Config) -> Result<(Option<Tls>, Option<Auth>), StartError> {
    let tls = config
        .tls
        .as_ref()
        .map(|files| Tls::load(files, config.tls_ticket_lifetime, config.http2_max_streams.is_some()))
        .transpose()?;
    let auth = config.auth.as_ref().map(Auth::new).transpose()?;
    Ok((tls, auth))
}

/// A worker's SSE listener: a share of the port, with what every accepted socket inherits.
fn listen_sse(addr: SocketAddr, defer: Option<Duration>) -> Result<TcpListener, StartError> {
    let listener = Socket::from(listen(addr, true)?);
    let fail = |source| StartError::Listen { addr, source };
    // Events are small and written whole: send each at once. Set here, it is inherited by
    // every accepted socket, without a setsockopt per connection.
    listener.set_nodelay(true).map_err(fail)?;
    if let Some(defer) = defer {
        defer_accept(&listener, defer).map_err(fail)?;
    }
    Ok(listener.into())
}

/// Asks the kernel to hand over a connection only once its first bytes (the request) arrived:
/// the worker then accepts and reads in one wake-up instead of two.
fn defer_accept(socket: &Socket, wait: Duration) -> io::Result<()> {
    use nix::libc::{c_int, c_void, setsockopt, socklen_t, IPPROTO_TCP, TCP_DEFER_ACCEPT};
    use std::os::fd::AsRawFd;
    let seconds = c_int::try_from(wait.as_secs().max(1)).unwrap_or(c_int::MAX);
    // SAFETY: a valid socket descriptor, and a pointer to a c_int with its exact size.
    let rc = unsafe {
        setsockopt(
            socket.as_raw_fd(),
            IPPROTO_TCP,
            TCP_DEFER_ACCEPT,
            (&seconds as *const c_int).cast::<c_void>(),
            std::mem::size_of::<c_int>() as socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A listening socket on `addr` as the server opens each of its own: `SO_REUSEADDR`, the accept
/// backlog it asks for, non-blocking, and on an IPv6 address IPv4 clients served too. With
/// `shared_port`, `SO_REUSEPORT`: several listeners (one per worker) share the port.
///
/// Public so that the capacity tool's floor server listens exactly as the server does.
pub fn listen(addr: SocketAddr, shared_port: bool) -> Result<TcpListener, StartError> {
    let fail = |source| StartError::Listen { addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    if shared_port {
        // Each worker has its own listener on the one port; the kernel spreads connections.
        socket.set_reuse_port(true).map_err(fail)?;
    }
    if addr.is_ipv6() {
        // `[::]` serves IPv4 clients too.
        socket.set_only_v6(false).map_err(fail)?;
    }
    socket.bind(&addr.into()).map_err(fail)?;
    socket.listen(LISTEN_BACKLOG).map_err(fail)?;
    socket.set_nonblocking(true).map_err(fail)?;
    Ok(socket.into())
}

/// Fails when something already listens on `addr`. `SO_REUSEPORT` would otherwise let a second
/// server (the same user's) join the port silently and take a share of the clients; a probe
/// bound without it is refused while any listener holds the port.
fn ensure_port_free(addr: SocketAddr) -> Result<(), StartError> {
    listen(addr, false).map(drop)
}

/// Opens the FIFO for reading and writing, so it never reports end of input when publishers
/// come and go; creates it first (mode less the umask) if missing, as hasses does.
fn open_fifo(path: &Path, mode: u32) -> Result<File, StartError> {
    let fail = |reason: String| StartError::Fifo { path: path.to_path_buf(), reason };
    match std::fs::metadata(path) {
        Ok(meta) if !meta.file_type().is_fifo() => return Err(fail("exists and is not a FIFO".into())),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            let mode = nix::sys::stat::Mode::from_bits_truncate(mode as nix::libc::mode_t);
            nix::unistd::mkfifo(path, mode).map_err(|e| fail(format!("cannot create: {e}")))?;
        }
        Err(e) => return Err(fail(e.to_string())),
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(format!("cannot open: {e}")))
}

/// Detaches from the terminal; call before any thread starts.
pub fn daemonize() -> Result<(), StartError> {
    nix::unistd::daemon(false, false).map_err(StartError::Daemon)
}

/// Writes our pid to `path`.
pub fn write_pidfile(path: &Path) -> Result<(), StartError> {
    std::fs::write(path, format!("{}\n", std::process::id()))
        .map_err(|source| StartError::Pidfile { path: path.to_path_buf(), source })
}

/// Switches to `user` (its uid, gid and groups) for good.
pub fn drop_privileges(user: &str) -> Result<(), StartError> {
    use nix::unistd::{initgroups, setgid, setuid, User};
    let fail = |reason: String| StartError::User { user: user.to_string(), reason };
    let account =
        User::from_name(user).map_err(|e| fail(e.to_string()))?.ok_or_else(|| fail("no such user".into()))?;
    if nix::unistd::getuid() == account.uid && nix::unistd::getgid() == account.gid {
        // Already that user: a process an upgrade started, as its predecessor ran.
        return Ok(());
    }
    let name = std::ffi::CString::new(user).map_err(|e| fail(e.to_string()))?;
    initgroups(&name, account.gid).map_err(|e| fail(format!("initgroups: {e}")))?;
    setgid(account.gid).map_err(|e| fail(format!("setgid: {e}")))?;
    setuid(account.uid).map_err(|e| fail(format!("setuid: {e}")))?;
    Ok(())
}

/// Tells systemd (`Type=notify`) our state, e.g. `READY=1`, when it gave us `NOTIFY_SOCKET`.
/// The sd-notify protocol is one datagram; an error is logged and otherwise ignored.
pub fn notify_systemd(state: &str) {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let bytes = path.as_encoded_bytes();
    // A leading `@` names a socket in the abstract namespace.
    let addr = match bytes.strip_prefix(b"@") {
        Some(name) => UnixAddr::from_abstract_name(name),
        None => UnixAddr::from_pathname(&path),
    };
    let sent = UnixDatagram::unbound().and_then(|socket| socket.send_to_addr(state.as_bytes(), &addr?));
    if let Err(e) = sent {
        tracing::warn!("Cannot notify systemd ({}): {e}", path.to_string_lossy());
    }
}

/// The running threads.
pub struct Running {
    control: ControlStop,
    threads: Vec<JoinHandle<()>>,
    settings: Arc<Settings>,
    failures: Arc<Failures>,
    /// What [`Running::notify_ready`] sends.
    ready: String,
    /// What an upgrade hands over besides the control thread's sources.
    handover: HandoverSide,
}

/// What the main thread keeps to hand over at an upgrade, and to tell its predecessor it serves.
struct HandoverSide {
    /// Duplicates of the workers' SSE listeners.
    sse: Vec<OwnedFd>,
    /// The history file's lock, and what its writer did, with a history file.
    history_file: Option<(OwnedFd, Arc<FileFigures>)>,
    /// In a cluster, whose history is the stream's: what the outbox still holds.
    cluster: Option<Arc<crate::cluster::ClusterShared>>,
    state: Arc<SharedState>,
    /// Where to say this process serves, when it took over from a predecessor.
    predecessor: Option<ReadyPipe>,
    /// How long this process drains once it handed over (`--drain-secs`).
    drain: Duration,
}

/// The sd-notify message of a started server: `READY=1`; a `STATUS=` line naming what it listens
/// on, which `systemctl status` shows; and the same addresses as `X_HASSES_SSE=` and
/// `X_HASSES_CONTROL=` (and `X_HASSES_API=`) lines, for programs (asked for port 0, the port the kernel picked is
/// there, so no one has to parse the log).
fn ready_message(
    sse: SocketAddr,
    path: &str,
    https: bool,
    control: Option<SocketAddr>,
    api: Option<SocketAddr>,
) -> String {
    let https = if https { " (https)" } else { "" };
    let mut status = format!("SSE on {sse} path {path}{https}");
    let mut addresses = format!("X_HASSES_SSE={sse}\n");
    if let Some(control) = control {
        status.push_str(&format!(", control on {control}"));
        addresses.push_str(&format!("X_HASSES_CONTROL={control}\n"));
    }
    if let Some(api) = api {
        status.push_str(&format!(", API on {api}"));
        addresses.push_str(&format!("X_HASSES_API={api}\n"));
    }
    format!("READY=1\nSTATUS={status}\n{addresses}")
}

/// A thread of the server ended by an error or a panic. The server does not run on without a
/// share of its clients or its control input: it stops and exits non-zero, and its supervisor
/// (systemd's `Restart=on-failure`) starts it again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("thread {thread} failed: {reason}")]
pub struct ThreadFailed {
    /// The thread's name (`hasses-worker-N`, `hasses-control`).
    pub thread: String,
    /// Its error, or its panic's message.
    pub reason: String,
}

/// Where threads report how they ended: the first failure is kept.
#[derive(Debug, Default)]
struct Failures {
    first: parking_lot::Mutex<Option<ThreadFailed>>,
}

impl Failures {
    /// Runs a thread's body; a failure or a panic is logged and kept. True when it failed.
    fn supervise(&self, thread: &str, body: impl FnOnce() -> io::Result<()>) -> bool {
        let reason = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(body)) {
            Ok(Ok(())) => return false,
            Ok(Err(e)) => e.to_string(),
            Err(panic) => panic_message(panic.as_ref()),
        };
        error!("Thread {thread} failed: {reason}; stopping the server");
        self.first.lock().get_or_insert(ThreadFailed { thread: thread.to_string(), reason });
        true
    }
}

/// What a panic said, when it said it as text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text =
        panic.downcast_ref::<&str>().copied().or_else(|| panic.downcast_ref::<String>().map(String::as_str));
    format!("panicked: {}", text.unwrap_or("(no message)"))
}

/// Starts the workers and the control thread.
pub fn start(config: &Config, mut bound: Bound) -> Result<Running, StartError> {
    let sse_addr = bound.sse_addr().map_err(StartError::Thread)?;
    let taken_over = bound.taken_over.take();
    let (adopted, predecessor, handed_history, forward, present) = match taken_over {
        Some(t) => (t.adopted, Some(t.ready), Some((t.history, t.history_lock)), t.forward, t.present),
        None => (Adopted::default(), None, None, None, Vec::new()),
    };
    let control_addr = bound.control_addr();
    let api_addr = bound.api_addr();
    let auth_hook = config.auth_hook.as_ref().map(AuthHook::start).transpose()?;
    let mut settings = Settings::new(config, bound.tls, bound.auth, auth_hook);
    // With --presence-events, shards tell the control thread of streams that start and end; it
    // is woken through a waker set once it is built.
    let presence = config.presence_events.map(|debounce| {
        let (changes, changed) = crossbeam_channel::bounded(PRESENCE_QUEUE);
        let link = PresenceLink { changes, control: Arc::default() };
        settings.presence = Some(link.clone());
        // A predecessor's clients come back within its drain and their retry wait.
        let away = config.drain.unwrap_or_default() * 2 + Duration::from_secs(1);
        (link, PresenceEvents::new(changed, debounce).expecting(present, away))
    });
    let settings = Arc::new(settings);
    let mut ids = EventIds::starting_now();
    let mut on_disk = None;
    // In a cluster, the history is the stream's; alone, its file's, if it has one: either is
    // read before any client is served.
    let (mut cluster, history) = match &config.cluster {
        Some(settings) => {
            let (cluster, history) = Cluster::open(settings, config.history)?;
            (Some(cluster), history)
        }
        None => {
            let (history, disk) = local_history(config, ids.peek(), handed_history)?;
            // Ids go on above every id the history holds (read back from its file).
            ids = ids.above(history.newest());
            on_disk = disk;
            (None, history)
        }
    };
    let newest = history.newest();
    let state = Arc::new(SharedState::new(config.reinit, history));
    if cluster.is_some() {
        // What was read from the stream is delivered: the tail goes on after it.
        state.published.store(newest, std::sync::atomic::Ordering::Relaxed);
    }
    let per_ip = PerIpLimit::from_config(config).map(Arc::new);
    let failures = Arc::new(Failures::default());
    let cores = if config.pin_cpus { core_affinity::get_core_ids().unwrap_or_default() } else { Vec::new() };
    let mut threads = Vec::new();
    let mut handles = Vec::new();
    let sse_copies = bound.sse.iter().map(|l| l.as_fd().try_clone_to_owned()).collect::<io::Result<_>>();
    let sse_copies = sse_copies.map_err(StartError::Thread)?;
    for (number, listener) in bound.sse.into_iter().enumerate() {
        let listener = mio::net::TcpListener::from_std(listener);
        let (shard, handle) = Shard::new(
            number,
            listener,
            Arc::clone(&settings),
            Arc::clone(&state),
            per_ip.clone(),
            SHARD_QUEUE,
        )
        .map_err(StartError::Thread)?;
        handles.push(handle);
        let core = (!cores.is_empty()).then(|| cores[number % cores.len()]);
        threads.push(spawn(format!("hasses-worker-{number}"), &failures, move || {
            if let Some(core) = core {
                core_affinity::set_for_current(core);
            }
            shard.run()
        })?);
    }
    let file_figures = on_disk.as_ref().map(|_| Arc::new(FileFigures::default()));
    let facts = ServerFacts {
        user: config.user.clone(),
        started: Instant::now(),
        cors_base: config.cors_base.clone(),
        tls: config.tls.clone(),
        workers: handles.len(),
        cluster: cluster.as_ref().map(Cluster::shared),
        history_file: file_figures.clone(),
    };
    let control_settings = ControlSettings {
        separator: config.separator,
        limits: config.limits.clone(),
        secret: config.control_secret.clone(),
        api_key: config.api_key.clone(),
    };
    let (questions, asked) = crossbeam_channel::bounded(ADMIN_QUEUE);
    let (replies, answered) = crossbeam_channel::unbounded();
    // In a cluster the tail delivers too, through handles of its own.
    let tail_shards = if cluster.is_some() { handles.clone() } else { Vec::new() };
    let mut sequencer = Sequencer::new(handles, Arc::clone(&state), ids);
    if let Some(link) = cluster.as_mut().and_then(Cluster::link) {
        sequencer = sequencer.with_cluster(link);
    }
    if let Some(feed) = forward.filter(|_| cluster.is_none()) {
        sequencer = sequencer.with_forward(Forward::new(feed).map_err(StartError::Thread)?);
    }
    let mut history_writer = None;
    let mut history_file = None;
    if let (Some(OnDisk { path, lock, file, written_up_to }), Some(figures)) = (on_disk, file_figures) {
        let lock_copy = lock.as_fd().try_clone_to_owned().map_err(StartError::Thread)?;
        history_file = Some((lock_copy, Arc::clone(&figures)));
        let (disk, events) = crossbeam_channel::bounded(HISTORY_QUEUE);
        sequencer = sequencer.with_history_file(disk);
        let fsync = config.history_fsync;
        history_writer = Some(HistoryWriter::new(
            (path, lock, figures),
            file,
            written_up_to,
            events,
            Arc::clone(&state),
            fsync,
        ));
    }
    let admin_link = AdminLink { questions, replies: answered };
    let (control, stop) = Control::new(
        (bound.control, bound.api, bound.fifo),
        adopted,
        sequencer,
        Arc::clone(&state),
        control_settings,
        admin_link,
    )
    .map_err(StartError::Thread)?;
    let handover = HandoverSide {
        sse: sse_copies,
        history_file,
        cluster: cluster.as_ref().map(Cluster::shared),
        state: Arc::clone(&state),
        predecessor,
        drain: config.drain.unwrap_or_default(),
    };
    let control = match presence {
        Some((link, events)) => {
            let _ = link.control.set(stop.waker());
            // In a cluster each notice names its node: every tail reads them cluster-wide.
            let events = match &cluster {
                Some(cluster) => events.of_node(cluster.node().to_owned()),
                None => events,
            };
            control.with_presence(events)
        }
        None => control,
    };
    let mut admin = Admin::new(asked, replies, stop.waker(), facts, Arc::clone(&state));
    if let Some(cluster) = &cluster {
        admin = admin.with_cluster(cluster.asker());
    }
    let cluster_threads = cluster.map(|cluster| {
        info!(target: REPORT, "Cluster: stream {}:events at {}", cluster.key(), cluster.url());
        cluster.threads(tail_shards, Arc::clone(&state), stop.waker(), config.presence_events.is_some())
    });
    threads.push(spawn("hasses-control".into(), &failures, move || control.run())?);
    threads.push(spawn("hasses-admin".into(), &failures, move || admin.run())?);
    if let Some(writer) = history_writer {
        threads.push(spawn("hasses-history".into(), &failures, move || writer.run())?);
    }
    if let Some((outbox, tail, orders)) = cluster_threads {
        threads.push(spawn("hasses-cluster-out".into(), &failures, move || outbox.run())?);
        threads.push(spawn("hasses-cluster-tail".into(), &failures, move || tail.run())?);
        threads.push(spawn("hasses-cluster-orders".into(), &failures, move || orders.run())?);
    }
    info!(target: REPORT, "hasses {} started with {} workers", env!("CARGO_PKG_VERSION"), config.workers);
    let https = if config.tls.is_some() { " (https)" } else { "" };
    info!(target: REPORT, "SSE listening on {sse_addr} path {}{https}", config.match_url);
    if let Some(addr) = control_addr {
        info!(target: REPORT, "Control listening on {addr}");
    }
    if let Some(fifo) = &config.fifo {
        info!(target: REPORT, "Control FIFO {}", fifo.display());
    }
    if let Some(addr) = api_addr {
        info!(target: REPORT, "HTTP API listening on {addr}");
    }
    if let Some(e) = &bound.api_unavailable {
        warn!("No HTTP API: {e} (choose an address with --api-bind, or turn it off with --no-api)");
    }
    let ready = ready_message(sse_addr, &config.match_url, config.tls.is_some(), control_addr, api_addr);
    Ok(Running { control: stop, threads, settings, failures, ready, handover })
}

/// The history file, rewritten at start, for its writer.
struct OnDisk {
    path: PathBuf,
    /// Held for as long as the file is written: no second server writes it.
    lock: Flock<File>,
    /// The file open for appending, and its length.
    file: (File, u64),
    /// The newest id the rewrite holds.
    written_up_to: u64,
}

/// A lone node's history, for a run whose first id would be `first_id`: the one a predecessor
/// handed over (an upgrade: `handed` is it and the history file's lock), or read back from
/// `--history-file`; rewritten there if it is given; else empty.
fn local_history(
    config: &Config,
    first_id: u64,
    handed: Option<(Vec<u8>, Option<File>)>,
) -> Result<(History, Option<OnDisk>), StartError> {
    let (handed, handed_lock) = match handed {
        Some((history, lock)) => (Some(history), lock),
        None => (None, None),
    };
    let restore = |path: &Path| match &handed {
        Some(bytes) => {
            history_file::restore_bytes(bytes, Path::new(HANDED_HISTORY), config.history, first_id)
        }
        None => history_file::restore(path, config.history, first_id),
    };
    let Some(path) = &config.history_file else {
        return match &handed {
            Some(_) => Ok((restore(Path::new(HANDED_HISTORY))?, None)),
            None => Ok((History::new(config.history, first_id, Instant::now()), None)),
        };
    };
    let lock = history_file::lock_with(path, handed_lock)?;
    let history = restore(path)?;
    // Rewritten at once: a damaged tail is gone before anything is appended, and a file that
    // cannot be written stops the start rather than the first publish.
    let snapshot = history.snapshot(Instant::now());
    let file = history_file::rewrite(path, &snapshot)?;
    Ok((history, Some(OnDisk { path: path.clone(), lock, file, written_up_to: snapshot.newest })))
}

/// How a history handed over by a predecessor is named in the log.
const HANDED_HISTORY: &str = "(handed over by the old process)";
/// How long the control thread may take to pack its sources for an upgrade.
const PACK_WAIT: Duration = Duration::from_secs(10);
/// How long the history writer and a cluster's outbox may take to catch up before an upgrade.
const CATCH_UP: Duration = Duration::from_secs(2);
/// What a drain takes beyond `--drain-secs`: the shards' last writes (a second), and a margin.
const DRAIN_LAST_WRITES: Duration = Duration::from_millis(1500);
/// How long a new process may take to start serving before the upgrade is given up.
const SUCCESSOR_WAIT: Duration = Duration::from_secs(60);

/// Starts a thread of the server; if it fails, the main thread is woken (as by `SIGTERM`) to
/// stop the others.
fn spawn(
    name: String,
    failures: &Arc<Failures>,
    body: impl FnOnce() -> io::Result<()> + Send + 'static,
) -> Result<JoinHandle<()>, StartError> {
    let failures = Arc::clone(failures);
    let thread_name = name.clone();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            if failures.supervise(&thread_name, body) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::this(), nix::sys::signal::Signal::SIGTERM);
            }
        })
        .map_err(StartError::Thread)
}

impl Running {
    /// Tells systemd the server is ready and where it listens (`STATUS=` for people, `X_HASSES_*` for programs).
    /// A process that took over from a predecessor also tells systemd it is the service's main
    /// process now (the unit's `NotifyAccess=all` lets it), and tells the predecessor to drain.
    pub fn notify_ready(&mut self) {
        let Some(predecessor) = self.handover.predecessor.take() else {
            return notify_systemd(&self.ready);
        };
        notify_systemd(&format!("MAINPID={}\n{}", std::process::id(), self.ready));
        match predecessor.say_ready() {
            Ok(()) => info!(target: REPORT, "Upgrade: serving; the old process drains its clients"),
            Err(e) => warn!("Upgrade: cannot tell the old process this one serves: {e}"),
        }
    }

    /// Replaces this process with `binary` (an upgrade): the control thread packs its sources,
    /// the history is taken once its writer caught up, and the new process is started with all
    /// of it. Once it serves, this process lets go of the control sources and should drain
    /// ([`Running::shutdown`]); on failure it goes on serving as before.
    pub fn upgrade(
        &self,
        binary: &Path,
        args: &[std::ffi::OsString],
    ) -> Result<upgrade::Successor, UpgradeError> {
        info!(target: REPORT, "Upgrade: starting {}", binary.display());
        let control = self.control.handover().pack(PACK_WAIT).map_err(UpgradeError::Pack)?;
        let started = self.parcel(control).and_then(|(parcel, relay)| {
            let successor = upgrade::start_successor(binary, args, parcel, SUCCESSOR_WAIT)?;
            Ok((successor, relay))
        });
        match started {
            Ok((successor, relay)) => {
                let until = Instant::now() + self.handover.drain + DRAIN_LAST_WRITES;
                self.control.handover().decide(Verdict::Release(relay, until));
                Ok(successor)
            }
            Err(e) => {
                self.control.handover().decide(Verdict::Resume);
                Err(e)
            }
        }
    }

    /// Everything but the control sources, once the history writer and a cluster's outbox
    /// caught up with what the control thread took before it packed.
    fn parcel(
        &self,
        control: crate::control::handover::ControlParcel,
    ) -> Result<(Parcel, Option<Relay>), UpgradeError> {
        let side = &self.handover;
        let sequenced = side.state.published.load(std::sync::atomic::Ordering::Acquire);
        let caught_up = || {
            let written = side.history_file.as_ref().is_none_or(|(_, figures)| figures.done_with(sequenced));
            let sent = side.cluster.as_ref().is_none_or(|cluster| cluster.figures().buffered == 0);
            written && sent
        };
        let deadline = Instant::now() + CATCH_UP;
        while !caught_up() {
            if Instant::now() >= deadline {
                return Err(UpgradeError::NotNow(
                    "the history file or Redis has not taken every event yet; try again".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let copy = |fd: &OwnedFd| fd.try_clone().map_err(UpgradeError::Prepare);
        let history = if side.cluster.is_some() {
            // The new process reads the history from the stream, as every node does.
            Vec::new()
        } else {
            let snapshot = side.state.history.read().snapshot(Instant::now());
            history_file::encode_handover(&snapshot, sequenced.max(snapshot.newest))
        };
        // A lone node's clients get the new process's events while they drain; a cluster
        // node's get them from its tail.
        let (forward, relay) = if side.cluster.is_some() {
            (None, None)
        } else {
            let (theirs, ours) = std::os::unix::net::UnixStream::pair().map_err(UpgradeError::Prepare)?;
            (Some(theirs.into()), Some(Relay::new(ours).map_err(UpgradeError::Prepare)?))
        };
        let parcel = Parcel {
            sse: side.sse.iter().map(copy).collect::<Result<_, _>>()?,
            control,
            history_lock: side.history_file.as_ref().map(|(lock, _)| copy(lock)).transpose()?,
            history,
            forward,
        };
        Ok((parcel, relay))
    }

    /// Reads the TLS certificate and key again for new connections (SIGHUP); connections
    /// already open keep theirs. On failure the old ones stay and the reason is logged.
    pub fn reload_tls(&self) {
        let Some(tls) = &self.settings.tls else { return };
        match tls.reload() {
            Ok(()) => info!("TLS certificate and key reloaded"),
            Err(e) => error!("TLS reload failed, keeping the certificate in use: {e}"),
        }
    }

    /// Stops accepting, closes every connection, and waits for every thread; says which thread
    /// failed, if one did (the reason the server is stopping, or a failure while it stopped).
    pub fn shutdown(self) -> Result<(), ThreadFailed> {
        self.control.stop();
        for thread in self.threads {
            let _ = thread.join();
        }
        self.failures.first.lock().take().map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_message_names_the_addresses_for_people_and_programs() {
        let sse = "[::]:8080".parse().unwrap();
        let control = "127.0.0.1:8085".parse().ok();
        assert_eq!(
            ready_message(sse, "/sse", false, control, None),
            "READY=1\nSTATUS=SSE on [::]:8080 path /sse, control on 127.0.0.1:8085\n\
             X_HASSES_SSE=[::]:8080\nX_HASSES_CONTROL=127.0.0.1:8085\n"
        );
        assert_eq!(
            ready_message(sse, "/sse", false, control, "127.0.0.1:8086".parse().ok()),
            "READY=1\nSTATUS=SSE on [::]:8080 path /sse, control on 127.0.0.1:8085, API on 127.0.0.1:8086\n\
             X_HASSES_SSE=[::]:8080\nX_HASSES_CONTROL=127.0.0.1:8085\nX_HASSES_API=127.0.0.1:8086\n"
        );
        // A FIFO-only server has no control address to name.
        assert_eq!(
            ready_message(sse, "/events", true, None, None),
            "READY=1\nSTATUS=SSE on [::]:8080 path /events (https)\nX_HASSES_SSE=[::]:8080\n"
        );
    }

    #[test]
    fn a_failed_or_panicking_thread_is_kept_as_the_reason_to_stop() {
        let failures = Failures::default();
        assert!(!failures.supervise("hasses-worker-0", || Ok(())));
        assert!(failures.supervise("hasses-worker-1", || Err(io::Error::other("epoll gone"))));
        assert!(failures.supervise("hasses-worker-2", || panic!("index out of bounds")));
        let first = failures.first.lock().clone();
        let expected = ThreadFailed { thread: "hasses-worker-1".into(), reason: "epoll gone".into() };
        assert_eq!(first, Some(expected));

        let failures = Failures::default();
        failures.supervise("hasses-control", || panic!("{} is not a token", 42));
        let reason = failures.first.lock().clone().map(|f| f.reason);
        assert_eq!(reason.as_deref(), Some("panicked: 42 is not a token"));
    }
}

//! Replacing the running binary with no gap (`SIGUSR2`, `systemctl reload`): the running process
//! starts the binary again (the new one, once it was installed over the old) and hands it every
//! socket it serves and its history; once the new process serves, the old one drains.
//!
//! Owns the hand-over between the two processes: what passes (a [`Parcel`]), how (the
//! descriptors are inherited across `exec`, named in a description the new process finds
//! through [`ENV`]; the history passes in the history file's format), and the new process's
//! word that it serves (a byte on a pipe). What the sources hold is the control thread's
//! business ([`crate::control::handover`]); when to do it, the main thread's ([`crate::server`]).
//!
//! The same listening sockets pass, not new ones on the same port: no connection waiting in a
//! listener's queue is lost, and no client is ever refused. The new process reads every
//! control connection, the FIFO and the HTTP API from where the old one stopped; the old one
//! ends its streams over `--drain-secs`, each told to come back after a random wait, and they
//! come back to the new process, which has every event they missed.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::stat::{fstat, SFlag};
use serde::{Deserialize, Serialize};

use crate::control::handover::{Adopted, ApiState, ControlParcel, PublisherState};
use crate::control::lines::HeldLine;
use crate::presence::Present;

/// The environment variable that tells a process it takes over from a predecessor: the number
/// of the descriptor holding the hand-over's description.
pub const ENV: &str = "HASSES_UPGRADE_FD";
/// What the new process writes on its pipe once it serves.
const READY: u8 = b'R';

/// Why an upgrade did not happen (the old process goes on serving), or why a process told to
/// take over cannot.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// The hand-over could not be prepared (descriptors, memory files).
    #[error("cannot prepare the hand-over: {0}")]
    Prepare(io::Error),
    /// The new process could not be started.
    #[error("cannot start {}: {source}", binary.display())]
    Spawn {
        /// The binary started.
        binary: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// The new process ended before it served (its log says why; a bad setting, say).
    #[error("the new process (pid {pid}) exited before it served: {status}")]
    Exited {
        /// Its pid.
        pid: u32,
        /// How it ended.
        status: String,
    },
    /// The new process did not say it serves in time; it was stopped.
    #[error("the new process (pid {pid}) did not serve within {wait:?}; it was stopped")]
    Late {
        /// Its pid.
        pid: u32,
        /// How long it was given.
        wait: Duration,
    },
    /// The control thread did not pack its sources.
    #[error(transparent)]
    Pack(#[from] crate::control::handover::PackError),
    /// What was taken is not yet where the new process will read it.
    #[error("not now: {0}")]
    NotNow(String),
    /// The hand-over a predecessor described cannot be used (`HASSES_UPGRADE_FD` set by hand?).
    #[error("{ENV}: {0}")]
    Inherit(String),
}

/// What the old process hands the new one.
#[derive(Debug)]
pub struct Parcel {
    /// Every worker's SSE listener.
    pub sse: Vec<OwnedFd>,
    /// The control thread's sources.
    pub control: ControlParcel,
    /// The history file's lock, held on: no other server may take the file between the two.
    pub history_lock: Option<OwnedFd>,
    /// The history in the history file's format, ended as a clean stop is.
    pub history: Vec<u8>,
    /// Where the new process forwards its events while this one drains (a lone node).
    pub forward: Option<OwnedFd>,
}

/// The description of a hand-over, as the new process reads it: descriptor numbers, inherited.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Description {
    sse: Vec<RawFd>,
    control: Option<RawFd>,
    api: Option<RawFd>,
    fifo: Option<(RawFd, HeldLine)>,
    publishers: Vec<(RawFd, PublisherState)>,
    apis: Vec<(RawFd, ApiState)>,
    history_lock: Option<RawFd>,
    history: RawFd,
    forward: Option<RawFd>,
    ready: RawFd,
    present: Vec<Present>,
}

/// What a process that takes over from a predecessor inherited.
#[derive(Debug)]
pub struct Inherited {
    /// Every SSE listener of the predecessor (one per worker it had).
    pub sse: Vec<TcpListener>,
    /// The control port's listener.
    pub control: Option<TcpListener>,
    /// The HTTP API's listener.
    pub api: Option<TcpListener>,
    /// The FIFO.
    pub fifo: Option<File>,
    /// Open control and API connections, and the FIFO's line in progress.
    pub adopted: Adopted,
    /// The history file's lock, when the predecessor wrote one.
    pub history_lock: Option<File>,
    /// The predecessor's history, in the history file's format.
    pub history: Vec<u8>,
    /// Where to forward events while the predecessor drains.
    pub forward: Option<std::os::unix::net::UnixStream>,
    /// Who was on each token (`--presence-events`).
    pub present: Vec<Present>,
    /// Where to say that this process serves.
    pub ready: ReadyPipe,
}

/// The pipe on which a new process tells its predecessor it serves.
#[derive(Debug)]
pub struct ReadyPipe(File);

impl ReadyPipe {
    /// Tells the predecessor this process serves: it lets go of everything and drains.
    pub fn say_ready(mut self) -> io::Result<()> {
        self.0.write_all(&[READY])
    }
}

/// The new process, started and waited for.
#[derive(Debug)]
pub struct Successor {
    /// Its pid.
    pub pid: u32,
}

/// Starts `binary` with `args` to take over `parcel`, and waits (at most `wait`) until it says
/// it serves. On failure the new process is gone and nothing was taken from this one.
pub fn start_successor(
    binary: &Path,
    args: &[OsString],
    parcel: Parcel,
    wait: Duration,
) -> Result<Successor, UpgradeError> {
    let prepare = UpgradeError::Prepare;
    let (ready_read, ready_write) = nix::unistd::pipe().map_err(|e| prepare(e.into()))?;
    let history = memory_file("hasses-history", &parcel.history).map_err(prepare)?;
    let description = describe(&parcel, &history, &ready_write);
    let text = serde_json::to_vec(&description).map_err(|e| prepare(io::Error::other(e)))?;
    let described = memory_file("hasses-upgrade", &text).map_err(prepare)?;
    let mut passed: Vec<&OwnedFd> = parcel.sse.iter().collect();
    passed.extend(parcel.control.listener.iter().chain(&parcel.control.api_listener));
    passed.extend(parcel.control.fifo.iter().map(|(fd, _)| fd));
    passed.extend(parcel.control.publishers.iter().map(|(fd, _)| fd));
    passed.extend(parcel.control.apis.iter().map(|(fd, _)| fd));
    passed.extend(parcel.history_lock.iter().chain(&parcel.forward));
    passed.extend([&history, &ready_write, &described]);
    for fd in passed {
        // Every descriptor of ours is close-on-exec; these few are to be inherited.
        fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(FdFlag::empty())).map_err(|e| prepare(e.into()))?;
    }
    let spawned = std::process::Command::new(binary)
        .args(args)
        .env(ENV, described.as_raw_fd().to_string())
        .spawn()
        .map_err(|source| UpgradeError::Spawn { binary: binary.to_path_buf(), source })?;
    // Ours are closed, so the pipe reads end-of-file once the new process is gone.
    drop((ready_write, history, described, parcel));
    await_ready(spawned, File::from(ready_read), wait)
}

/// The description of `parcel` with the descriptors as they are inherited.
fn describe(parcel: &Parcel, history: &OwnedFd, ready: &OwnedFd) -> Description {
    let raw = |fd: &OwnedFd| fd.as_raw_fd();
    let control = &parcel.control;
    Description {
        sse: parcel.sse.iter().map(raw).collect(),
        control: control.listener.as_ref().map(raw),
        api: control.api_listener.as_ref().map(raw),
        fifo: control.fifo.as_ref().map(|(fd, line)| (raw(fd), line.clone())),
        publishers: control.publishers.iter().map(|(fd, state)| (raw(fd), state.clone())).collect(),
        apis: control.apis.iter().map(|(fd, state)| (raw(fd), state.clone())).collect(),
        history_lock: parcel.history_lock.as_ref().map(raw),
        history: raw(history),
        forward: parcel.forward.as_ref().map(raw),
        ready: raw(ready),
        present: control.present.clone(),
    }
}

/// An anonymous file in memory holding `bytes`, read from its start.
fn memory_file(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MemFdCreateFlag};
    let name = std::ffi::CString::new(name).map_err(io::Error::other)?;
    let fd = memfd_create(&name, MemFdCreateFlag::MFD_CLOEXEC)?;
    let mut file = File::from(fd);
    file.write_all(bytes)?;
    io::Seek::rewind(&mut file)?;
    Ok(file.into())
}

/// Waits for the new process's byte on the pipe; kills it if it is late.
fn await_ready(
    mut child: std::process::Child,
    ready: File,
    wait: Duration,
) -> Result<Successor, UpgradeError> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let pid = child.id();
    let deadline = Instant::now() + wait;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let timeout = PollTimeout::try_from(left).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(ready.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, timeout) {
            Ok(0) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(UpgradeError::Late { pid, wait });
            }
            Ok(_) => break,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(UpgradeError::Prepare(e.into())),
        }
    }
    let mut byte = [0u8; 1];
    match (&ready).read(&mut byte) {
        Ok(1) if byte[0] == READY => Ok(Successor { pid }),
        _ => {
            let status = child.wait().map_or_else(|e| e.to_string(), |status| status.to_string());
            Err(UpgradeError::Exited { pid, status })
        }
    }
}

/// What this process inherited from a predecessor, if [`ENV`] says it takes over from one.
pub fn inherited() -> Result<Option<Inherited>, UpgradeError> {
    let Some(value) = std::env::var_os(ENV) else { return Ok(None) };
    let fail = |what: String| UpgradeError::Inherit(what);
    let fd: RawFd = value
        .to_str()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| fail(format!("{value:?} is not a descriptor number")))?;
    let mut taken = Taken::default();
    let mut text = Vec::new();
    File::from(taken.take(fd, Kind::File)?).read_to_end(&mut text).map_err(|e| fail(e.to_string()))?;
    let description: Description =
        serde_json::from_slice(&text).map_err(|e| fail(format!("the description cannot be read: {e}")))?;
    let mut history = Vec::new();
    File::from(taken.take(description.history, Kind::File)?)
        .read_to_end(&mut history)
        .map_err(|e| fail(e.to_string()))?;
    let listener = |taken: &mut Taken, fd| taken.take(fd, Kind::Socket).map(TcpListener::from);
    let stream = |taken: &mut Taken, fd| taken.take(fd, Kind::Socket).map(TcpStream::from);
    let mut adopted = Adopted::default();
    for (fd, state) in description.publishers {
        adopted.publishers.push((stream(&mut taken, fd)?, state));
    }
    for (fd, state) in description.apis {
        adopted.apis.push((stream(&mut taken, fd)?, state));
    }
    let fifo = match description.fifo {
        Some((fd, line)) => {
            adopted.fifo_line = line;
            Some(File::from(taken.take(fd, Kind::Fifo)?))
        }
        None => None,
    };
    Ok(Some(Inherited {
        sse: description.sse.into_iter().map(|fd| listener(&mut taken, fd)).collect::<Result<_, _>>()?,
        control: description.control.map(|fd| listener(&mut taken, fd)).transpose()?,
        api: description.api.map(|fd| listener(&mut taken, fd)).transpose()?,
        fifo,
        adopted,
        history_lock: description
            .history_lock
            .map(|fd| taken.take(fd, Kind::File).map(File::from))
            .transpose()?,
        history,
        forward: description.forward.map(|fd| taken.take(fd, Kind::Socket).map(Into::into)).transpose()?,
        ready: ReadyPipe(File::from(taken.take(description.ready, Kind::Fifo)?)),
        present: description.present,
    }))
}

/// What an inherited descriptor must be.
#[derive(Debug, Clone, Copy)]
enum Kind {
    Socket,
    Fifo,
    File,
}

/// The descriptors taken so far: each is taken once.
#[derive(Debug, Default)]
struct Taken(Vec<RawFd>);

impl Taken {
    /// Takes ownership of inherited descriptor `fd`, after checking it is open, of `kind`, and
    /// not taken already; makes it close-on-exec again.
    fn take(&mut self, fd: RawFd, kind: Kind) -> Result<OwnedFd, UpgradeError> {
        let fail = |why: String| UpgradeError::Inherit(format!("descriptor {fd}: {why}"));
        if fd <= 2 || self.0.contains(&fd) {
            return Err(fail("named twice, or a standard stream".into()));
        }
        let stat = fstat(fd).map_err(|e| fail(e.to_string()))?;
        let format = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT;
        let fits = match kind {
            Kind::Socket => format == SFlag::S_IFSOCK,
            Kind::Fifo => format == SFlag::S_IFIFO,
            Kind::File => format == SFlag::S_IFREG,
        };
        if !fits {
            return Err(fail(format!("not a {kind:?}")));
        }
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(|e| fail(e.to_string()))?;
        self.0.push(fd);
        // SAFETY: `fd` is open (fstat said so), was inherited for this process to own (the
        // predecessor named it in the description, and gave it up), and is taken once: nothing
        // else in this process owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_description_comes_back_as_it_went() {
        let description = Description {
            sse: vec![3, 4],
            control: Some(5),
            fifo: Some((6, HeldLine { partial: b"room1=he".to_vec(), discarding: false, split: false })),
            publishers: vec![(
                7,
                PublisherState {
                    peer: "127.0.0.1:4000".parse().unwrap(),
                    line: HeldLine::default(),
                    acks: true,
                    authorized: true,
                },
            )],
            history: 8,
            ready: 9,
            ..Description::default()
        };
        let text = serde_json::to_vec(&description).unwrap();
        let back: Description = serde_json::from_slice(&text).unwrap();
        assert_eq!(format!("{back:?}"), format!("{description:?}"));
    }

    #[test]
    fn a_descriptor_is_taken_once_and_only_of_its_kind() {
        let file = memory_file("test", b"x").unwrap();
        let fd = file.as_raw_fd();
        std::mem::forget(file);
        let mut taken = Taken::default();
        assert!(taken.take(fd, Kind::Socket).is_err(), "a file is not a socket");
        let owned = taken.take(fd, Kind::File).unwrap();
        assert!(taken.take(fd, Kind::File).is_err(), "taken twice");
        assert!(Taken::default().take(1, Kind::File).is_err(), "a standard stream");
        drop(owned);
    }
}

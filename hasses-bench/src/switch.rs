//! Switching the server under its clients: the step the restart scenario takes while every
//! connection is open and a publisher publishes ([`crate::steady`]).
//!
//! [`Switch`] is how the running server gives way to a new one; each way is one variant and
//! one arm of [`Switch::run`], which hands back the process serving afterwards. Owns stopping
//! and starting server processes; it touches no connection and measures nothing.

use std::io;
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How often a process that should end is looked at.
const LOOK_EVERY: Duration = Duration::from_millis(10);

/// How the running server gives way to a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// SIGTERM (the server drains: its streams are told to come back, then ended), wait until
    /// the process is gone, then start `--server-cmd`: a deploy's `systemctl restart`.
    Restart,
    /// SIGUSR2: the server starts its binary again and hands it its sockets and history, then
    /// drains; the new process (its child) serves from then on: `systemctl reload`.
    Upgrade,
}

impl Switch {
    /// The phase's name in the table and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Switch::Restart => "restart",
            Switch::Upgrade => "upgrade",
        }
    }

    /// Makes the server process `old` give way; `command` (a shell command line) starts a new
    /// one where the switch needs it. Returns the process serving afterwards, once it runs.
    /// Takes as long as the old one's drain; gives up after `timeout`.
    pub fn run(self, old: u32, command: &str, timeout: Duration) -> io::Result<Server> {
        match self {
            Switch::Restart => {
                signal(old, Signal::SIGTERM)?;
                wait_gone(old, timeout)?;
                Server::start(command)
            }
            Switch::Upgrade => {
                signal(old, Signal::SIGUSR2)?;
                let pid = wait_child(old, timeout)?;
                Ok(Server { pid, child: None })
            }
        }
    }
}

/// Waits until process `parent` has a child (the new process of an upgrade), at most `timeout`.
fn wait_child(parent: u32, timeout: Duration) -> io::Result<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(child) = child_of(parent)? {
            return Ok(child);
        }
        if Instant::now() >= deadline || ended(parent) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("server process {parent} started no new process after SIGUSR2"),
            ));
        }
        sleep(LOOK_EVERY);
    }
}

/// A child of process `parent`, if it has one: read from every process's `stat`.
fn child_of(parent: u32) -> io::Result<Option<u32>> {
    for entry in std::fs::read_dir("/proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The parent's pid is the second field after the command name's last ')'.
        let ppid = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse().ok());
        if ppid == Some(parent) && !ended(pid) {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

/// A server process a switch left serving; the bench stops it when it ends.
#[derive(Debug)]
pub struct Server {
    /// Its process id.
    pub pid: u32,
    /// When the bench started it itself, to reap it.
    child: Option<Child>,
}

impl Server {
    /// Starts `command` with `sh -c` (its output where the command sends it, else nowhere):
    /// `exec` in it makes the server the process started, whose CPU is then measured.
    fn start(command: &str) -> io::Result<Server> {
        let child = Command::new("sh")
            .args(["-c", command])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("--server-cmd: {e}")))?;
        Ok(Server { pid: child.id(), child: Some(child) })
    }

    /// Stops it (SIGTERM) and waits until it is gone, at most `timeout`.
    pub fn stop(mut self, timeout: Duration) -> io::Result<()> {
        signal(self.pid, Signal::SIGTERM)?;
        let gone = wait_gone(self.pid, timeout);
        if let Some(child) = &mut self.child {
            if gone.is_err() {
                let _ = child.kill();
            }
            child.wait()?;
        }
        gone
    }
}

fn signal(pid: u32, signal: Signal) -> io::Result<()> {
    let raw = i32::try_from(pid).map_err(|_| io::Error::other(format!("{pid}: not a process id")))?;
    kill(Pid::from_raw(raw), signal)
        .map_err(|e| io::Error::other(format!("{signal} to server process {pid}: {e}")))
}

/// Waits until process `pid` has ended (gone, or a zombie its parent has not reaped yet).
fn wait_gone(pid: u32, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    while !ended(pid) {
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("server process {pid} still runs {} s after SIGTERM", timeout.as_secs_f64()),
            ));
        }
        sleep(LOOK_EVERY);
    }
    Ok(())
}

/// Whether process `pid` has ended: no `/proc/PID`, or its state is `Z` (zombie) or `X`.
fn ended(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return true };
    // The command name may hold spaces and parentheses: the state follows the last ')'.
    let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
    matches!(state, Some("Z" | "X") | None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_stops_the_old_process_and_starts_the_command() {
        let mut old = Command::new("sleep").arg("30").spawn().unwrap();
        let server = Switch::Restart.run(old.id(), "exec sleep 30", Duration::from_secs(5)).unwrap();
        assert!(ended(old.id()), "the old one was stopped");
        assert!(!ended(server.pid), "the new one runs");
        let pid = server.pid;
        server.stop(Duration::from_secs(5)).unwrap();
        assert!(ended(pid));
        old.wait().unwrap();
        let err = Switch::Restart.run(old.id(), "true", Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("SIGTERM to server process"), "{err}");
    }
}

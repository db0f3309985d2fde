//! What the bench asks of the operating system: the shared monotonic clock, its own CPU use,
//! its open-files limit, the source-address socket option, and the server's CPU and memory
//! read from `/proc/PID`.
//!
//! Every `unsafe` block of the tool is here, each a plain libc call on local values.

use std::fs;
use std::io;
use std::os::fd::AsRawFd;

use nix::libc;

/// Nanoseconds on `CLOCK_MONOTONIC`: the clock every process of one host shares, so a
/// timestamp written by the publisher can be compared with the receive time.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// This process's CPU time so far (user + system), in nanoseconds.
pub fn own_cpu_ns() -> u64 {
    // SAFETY: an all-zero rusage is a valid value for getrusage to overwrite.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1_000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a valid, writable rlimit.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: `lim` is a valid rlimit whose soft value does not exceed the hard one.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(lim.rlim_cur)
}

/// Sets `IP_BIND_ADDRESS_NO_PORT`: a `bind` to an address with port 0 then picks no port
/// until `connect`, which picks one unique for the whole 4-tuple, so the ephemeral range is
/// not shared by every source address.
pub fn set_bind_address_no_port(sock: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and a pointer to a c_int of the length given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads one server process's figures from `/proc/PID`.
#[derive(Debug, Clone, Copy)]
pub struct ServerProbe {
    pid: u32,
    tick_ns: u64,
}

/// One sample of the server's CPU time.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuSample {
    /// utime + stime of `/proc/PID/stat`, in ns (clock-tick resolution, 10 ms here).
    pub stat_ns: u64,
    /// The sum of the run times in `/proc/PID/task/*/schedstat` (ns resolution), when the
    /// kernel provides it.
    pub sched_ns: Option<u64>,
}

impl CpuSample {
    /// CPU seconds from `earlier` to `self`: schedstat where both have it, else stat.
    pub fn since(&self, earlier: &CpuSample) -> f64 {
        match (self.sched_ns, earlier.sched_ns) {
            (Some(a), Some(b)) if a >= b => (a - b) as f64 / 1e9,
            _ => self.stat_since(earlier),
        }
    }

    /// CPU seconds from `earlier` to `self` by `/proc/PID/stat` alone.
    pub fn stat_since(&self, earlier: &CpuSample) -> f64 {
        self.stat_ns.saturating_sub(earlier.stat_ns) as f64 / 1e9
    }
}

impl ServerProbe {
    /// A probe of `pid`; fails when the process cannot be read.
    pub fn new(pid: u32) -> io::Result<Self> {
        // SAFETY: sysconf has no memory effects.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let tick_ns = if ticks > 0 { 1_000_000_000 / ticks as u64 } else { 10_000_000 };
        let probe = ServerProbe { pid, tick_ns };
        probe.cpu()?;
        Ok(probe)
    }

    /// The server's resident memory (`VmRSS`), in bytes.
    pub fn rss(&self) -> io::Result<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"))
    }

    /// The server's CPU time so far.
    pub fn cpu(&self) -> io::Result<CpuSample> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid))?;
        // The command name may hold spaces and parentheses: count fields after the last ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state is field 3 of proc(5), so utime (14) and stime (15) are at 11, 12.
        let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let (Some(utime), Some(stime)) = (num(11), num(12)) else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "short /proc/PID/stat"));
        };
        Ok(CpuSample { stat_ns: (utime + stime) * self.tick_ns, sched_ns: self.sched_ns() })
    }

    fn sched_ns(&self) -> Option<u64> {
        let mut total = 0;
        for task in fs::read_dir(format!("/proc/{}/task", self.pid)).ok()? {
            let mut path = task.ok()?.path();
            path.push("schedstat");
            // A thread that ended between the listing and the read has no more time to add.
            let Ok(text) = fs::read_to_string(path) else { continue };
            total += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
        (total > 0).then_some(total)
    }
}

//! What the bench asks of the operating system: the shared monotonic clock, its own CPU use,
//! its open-files limit, the source-address socket option, and the server's CPU and memory
//! read from `/proc/PID`.
//!
//! The system calls go through nix's safe wrappers: the tool has no `unsafe` of its own.

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use nix::sys::resource::{getrlimit, getrusage, setrlimit, Resource, UsageWho};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::{TimeVal, TimeValLike};
use nix::time::{clock_gettime, ClockId};
use nix::unistd::{sysconf, SysconfVar};

/// Nanoseconds on `CLOCK_MONOTONIC`: the clock every process of one host shares, so a
/// timestamp written by the publisher can be compared with the receive time.
pub fn mono_ns() -> u64 {
    let now = clock_gettime(ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC exists on Linux");
    Duration::from(now).as_nanos() as u64
}

/// This process's CPU time so far (user + system), in nanoseconds.
pub fn own_cpu_ns() -> u64 {
    // It fails only for a `who` the kernel does not know; RUSAGE_SELF is always known.
    let usage = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage(RUSAGE_SELF)");
    let ns = |t: TimeVal| u64::try_from(t.num_microseconds()).unwrap_or(0) * 1_000;
    ns(usage.user_time()) + ns(usage.system_time())
}

/// Raises the soft open-files limit to the hard limit; returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard)?;
    }
    Ok(hard)
}

/// Sets `IP_BIND_ADDRESS_NO_PORT`: a `bind` to an address with port 0 then picks no port
/// until `connect`, which picks one unique for the whole 4-tuple, so the ephemeral range is
/// not shared by every source address.
pub fn set_bind_address_no_port(sock: &impl AsFd) -> io::Result<()> {
    Ok(setsockopt(sock, sockopt::IpBindAddressNoPort, &true)?)
}

/// Reads the server's figures from `/proc/PID`: one process, or the sum over several (the
/// nodes of a cluster, and whatever else serves it, such as their Redis).
#[derive(Debug, Clone)]
pub struct ServerProbe {
    pids: Vec<u32>,
    tick_ns: u64,
}

/// One sample of the server's CPU time, summed over its processes.
#[derive(Debug, Clone, Default)]
pub struct CpuSample {
    /// utime + stime of `/proc/PID/stat`, in ns (clock-tick resolution, 10 ms here).
    pub stat_ns: u64,
    /// The sum of the run times in `/proc/PID/task/*/schedstat` (ns resolution), when the
    /// kernel provides it for every process.
    pub sched_ns: Option<u64>,
    /// Each process's own, in the order of the pids.
    pub each: Vec<CpuSample>,
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

    /// Each process's CPU seconds from `earlier` to `self`, as [`CpuSample::since`]; empty for
    /// one process (its figure is the sum).
    pub fn each_since(&self, earlier: &CpuSample) -> Vec<f64> {
        if self.each.len() < 2 {
            return Vec::new();
        }
        self.each.iter().zip(&earlier.each).map(|(now, then)| now.since(then)).collect()
    }
}

impl ServerProbe {
    /// A probe of `pids` (at least one); fails, naming it, when a process cannot be read.
    pub fn new(pids: &[u32]) -> io::Result<Self> {
        if pids.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no server process id"));
        }
        // Linux's clock tick is 100 Hz on every architecture; sysconf only confirms it.
        let ticks = sysconf(SysconfVar::CLK_TCK).ok().flatten().and_then(|t| u64::try_from(t).ok());
        let tick_ns = ticks.filter(|&t| t > 0).map_or(10_000_000, |t| 1_000_000_000 / t);
        let probe = ServerProbe { pids: pids.to_vec(), tick_ns };
        for &pid in pids {
            probe.cpu_of(pid).map_err(|e| io::Error::new(e.kind(), format!("server process {pid}: {e}")))?;
        }
        Ok(probe)
    }

    /// The server's resident memory (`VmRSS`), in bytes: the sum over its processes (pages
    /// they share, such as the program's own, count once per process).
    pub fn rss(&self) -> io::Result<u64> {
        self.pids.iter().map(|&pid| rss_of(pid)).sum()
    }

    /// The server's CPU time so far: the sum over its processes, and each one's.
    pub fn cpu(&self) -> io::Result<CpuSample> {
        let each = self.pids.iter().map(|&pid| self.cpu_of(pid)).collect::<io::Result<Vec<_>>>()?;
        if each.len() == 1 {
            return Ok(each.into_iter().next().expect("one sample"));
        }
        let stat_ns = each.iter().map(|s| s.stat_ns).sum();
        let sched_ns = each.iter().map(|s| s.sched_ns).sum();
        Ok(CpuSample { stat_ns, sched_ns, each })
    }

    fn cpu_of(&self, pid: u32) -> io::Result<CpuSample> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat"))?;
        // The command name may hold spaces and parentheses: count fields after the last ')'.
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': state is field 3 of proc(5), so utime (14) and stime (15) are at 11, 12.
        let num = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
        let (Some(utime), Some(stime)) = (num(11), num(12)) else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "short /proc/PID/stat"));
        };
        Ok(CpuSample { stat_ns: (utime + stime) * self.tick_ns, sched_ns: sched_ns(pid), each: Vec::new() })
    }
}

/// One process's resident memory (`VmRSS`), in bytes.
fn rss_of(pid: u32) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS line"))
}

/// One process's run time over its threads, from schedstat.
fn sched_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let mut path = task.ok()?.path();
        path.push("schedstat");
        // A thread that ended between the listing and the read has no more time to add.
        let Ok(text) = fs::read_to_string(path) else { continue };
        total += text.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    (total > 0).then_some(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::getsockopt;

    #[test]
    fn clocks_move_forward() {
        let (t0, cpu0) = (mono_ns(), own_cpu_ns());
        let mut x = 0u64;
        while mono_ns() - t0 < 5_000_000 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(own_cpu_ns() > cpu0);
    }

    #[test]
    fn the_open_files_limit_is_the_hard_one_after() {
        let limit = raise_nofile().unwrap();
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap(), (limit, limit));
    }

    #[test]
    fn bind_address_no_port_is_accepted() {
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        set_bind_address_no_port(&sock).unwrap();
        assert!(getsockopt(&sock, sockopt::IpBindAddressNoPort).unwrap());
    }

    #[test]
    fn this_process_can_be_probed() {
        let probe = ServerProbe::new(&[std::process::id()]).unwrap();
        assert!(probe.rss().unwrap() > 0);
        let cpu = probe.cpu().unwrap();
        assert!(cpu.stat_ns > 0 || cpu.sched_ns.is_some());
        assert!(cpu.each.is_empty());
        assert!(cpu.each_since(&cpu).is_empty(), "one process: its figure is the sum");
    }

    #[test]
    fn several_processes_are_summed_and_kept_each() {
        let me = std::process::id();
        let parent = std::os::unix::process::parent_id();
        let one = ServerProbe::new(&[me]).unwrap();
        let two = ServerProbe::new(&[me, parent]).unwrap();
        let (rss_one, rss_two) = (one.rss().unwrap(), two.rss().unwrap());
        assert!(rss_two > rss_one, "{rss_two} <= {rss_one}");
        let before = two.cpu().unwrap();
        let t0 = mono_ns();
        let mut x = 0u64;
        while mono_ns() - t0 < 20_000_000 {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        let after = two.cpu().unwrap();
        assert_eq!(after.each.len(), 2);
        let each = after.each_since(&before);
        assert_eq!(each.len(), 2);
        assert!(each[0] > 0.0, "{each:?}");
        let sum: f64 = each.iter().sum();
        if after.sched_ns.is_some() && before.sched_ns.is_some() {
            assert!((after.since(&before) - sum).abs() < 1e-6, "{each:?}");
        }
    }

    #[test]
    fn a_process_that_cannot_be_read_is_named() {
        let err = ServerProbe::new(&[std::process::id(), u32::MAX]).unwrap_err();
        assert!(err.to_string().contains(&format!("server process {}", u32::MAX)), "{err}");
        assert!(ServerProbe::new(&[]).is_err());
    }
}

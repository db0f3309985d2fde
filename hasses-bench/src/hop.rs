//! `stream-hop`: the floor of a cluster's hop through Redis, with no server at all.
//!
//! Owns appending `--targeted` entries at `--rate` a second to a stream of its own (`XADD` on
//! one connection, one entry at a time, as a node's outbox does at that rate) and reading them
//! back with `XREAD BLOCK` on a second connection on a thread of its own (as a node's tail
//! does), and the time per entry from just before its `XADD` to just after its read. A
//! cluster's publish crosses this hop once on its way to delivery: read the cluster's
//! publish-to-delivery latency, less a single node's, against these figures from the same run.

use std::thread;
use std::time::Duration;

use redis::streams::StreamReadReply;
use serde::Serialize;

use crate::run::{due_at, ms, pick};
use crate::sys;

/// How long one read waits for an entry.
const BLOCK_MS: u64 = 1000;
/// Reads that come back empty, in a row, before the reader gives up on the rest.
const EMPTY_READS: u32 = 5;

/// What the hop measured.
#[derive(Debug, Clone, Serialize)]
pub struct HopFigures {
    /// Always "stream-hop", for the JSON line.
    pub scenario: &'static str,
    /// Entries appended.
    pub sent: u64,
    /// Entries read back.
    pub received: u64,
    /// The pace asked for.
    pub rate_per_s: u32,
    /// Per entry, `XADD` to read: the median, the 99th percentile and the worst, ms.
    pub hop_ms_p50: f64,
    pub hop_ms_p99: f64,
    pub hop_ms_max: f64,
}

impl HopFigures {
    /// Every entry came back.
    pub fn ok(&self) -> bool {
        self.received == self.sent
    }

    /// The table: one line under a heading.
    pub fn table(&self) -> String {
        format!(
            "phase       entries  rate      XADD to XREAD p50/p99/max    status\n\
             stream-hop  {:<7}  {:<4}/s   {:.2}/{:.2}/{:.2} ms{:>9}\n",
            format!("{}/{}", self.received, self.sent),
            self.rate_per_s,
            self.hop_ms_p50,
            self.hop_ms_p99,
            self.hop_ms_max,
            if self.ok() { "ok" } else { "LOST" },
        )
    }
}

/// Measures the hop through the Redis at `url`: `count` entries at `rate` a second.
pub fn run(url: &str, count: u32, rate: u32) -> Result<HopFigures, String> {
    // As a node's connections are made (no Nagle).
    let client = hasses::cluster::client(url).map_err(|e| format!("--redis {url}: {e}"))?;
    let connect = || client.get_connection().map_err(|e| format!("--redis {url}: {e}"));
    let (mut writer, mut reader) = (connect()?, connect()?);
    let stream = format!("hasses-bench:hop:{}", std::process::id());
    let del = |con: &mut redis::Connection| redis::cmd("DEL").arg(&stream).query::<()>(con);
    del(&mut writer).map_err(|e| e.to_string())?;
    let read_stream = stream.clone();
    let readback = thread::spawn(move || read_back(&mut reader, &read_stream, count));
    let appended = append(&mut writer, &stream, count, rate);
    let mut sorted = readback.join().map_err(|_| "the reader thread panicked".to_string())??;
    let _ = del(&mut writer);
    appended?;
    sorted.sort_unstable();
    Ok(HopFigures {
        scenario: "stream-hop",
        sent: u64::from(count),
        received: sorted.len() as u64,
        rate_per_s: rate,
        hop_ms_p50: ms(pick(&sorted, 0.50)),
        hop_ms_p99: ms(pick(&sorted, 0.99)),
        hop_ms_max: ms(pick(&sorted, 1.0)),
    })
}

/// Appends entry k at k/rate seconds after the first, each carrying its send time.
fn append(con: &mut redis::Connection, stream: &str, count: u32, rate: u32) -> Result<(), String> {
    let start = sys::mono_ns();
    for k in 0..u64::from(count) {
        let due = start + due_at(k, rate);
        let now = sys::mono_ns();
        if due > now {
            thread::sleep(Duration::from_nanos(due - now));
        }
        redis::cmd("XADD")
            .arg(stream)
            .arg("*")
            .arg("t")
            .arg(sys::mono_ns())
            .query::<String>(con)
            .map_err(|e| format!("XADD: {e}"))?;
    }
    Ok(())
}

/// Reads entries as they come until `count` are in (or the stream stays quiet); the latency
/// of each, ns.
fn read_back(con: &mut redis::Connection, stream: &str, count: u32) -> Result<Vec<u64>, String> {
    let mut latencies = Vec::with_capacity(count as usize);
    let mut after = "0-0".to_string();
    let mut empty = 0;
    while latencies.len() < count as usize && empty < EMPTY_READS {
        let reply: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("BLOCK")
            .arg(BLOCK_MS)
            .arg("STREAMS")
            .arg(stream)
            .arg(&after)
            .query(con)
            .map_err(|e| format!("XREAD: {e}"))?;
        let read_at = sys::mono_ns();
        let entries: Vec<_> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
        empty = if entries.is_empty() { empty + 1 } else { 0 };
        for entry in entries {
            let sent: u64 = entry.get("t").ok_or_else(|| format!("entry {} has no t", entry.id))?;
            latencies.push(read_at.saturating_sub(sent));
            after = entry.id;
        }
    }
    Ok(latencies)
}

//! What the receivers count: per phase, per thread, merged by the orchestrator at the end of
//! the phase; plus a fixed-size latency histogram (no allocation when recording).

use std::sync::atomic::{AtomicU64, Ordering};

/// Sub-buckets per power of two: about 6 % resolution.
const SUB_BITS: u32 = 4;
const SUB: usize = 1 << SUB_BITS;
const BUCKETS: usize = (64 - SUB_BITS as usize + 1) * SUB;

/// A log-linear histogram of nanosecond values.
#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64; BUCKETS]>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { counts: Box::new([0; BUCKETS]), total: 0, max: 0 }
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram").field("total", &self.total).field("max", &self.max).finish()
    }
}

fn bucket(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let exp = 63 - v.leading_zeros();
    let sub = (v >> (exp - SUB_BITS)) as usize & (SUB - 1);
    (exp - SUB_BITS + 1) as usize * SUB + sub
}

fn bucket_low(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let exp = (i / SUB) as u32 + SUB_BITS - 1;
    let sub = (i % SUB) as u64;
    (1u64 << exp) | (sub << (exp - SUB_BITS))
}

impl Histogram {
    /// Counts one value.
    #[inline]
    pub fn record(&mut self, v: u64) {
        self.counts[bucket(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
    }

    /// Adds another histogram's counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    /// The largest value recorded.
    pub fn max(&self) -> u64 {
        self.max
    }

    /// The value at quantile `q` (0..=1), to the histogram's resolution; 0 when empty.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        if rank == self.total {
            return self.max;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                // The middle of the bucket, but never past the largest value seen.
                let lo = bucket_low(i);
                let hi = if i + 1 < BUCKETS { bucket_low(i + 1) } else { u64::MAX };
                return (lo + (hi - lo) / 2).min(self.max);
            }
        }
        self.max
    }
}

/// Per message of a phase, the largest latency any receiver saw: when its last receiver had
/// it (a targeted message has one receiver, so its own latency). Sized when the phase begins,
/// so recording allocates nothing. A slot of 0 is a message nobody received: a latency is
/// recorded as at least 1 ns.
#[derive(Debug, Clone, Default)]
pub struct PerMessage {
    /// The sequence number of the phase's first message (slot 0).
    base: u64,
    slots: Vec<u64>,
}

impl PerMessage {
    /// Room for `count` messages numbered from `base`.
    pub fn new(base: u64, count: usize) -> PerMessage {
        PerMessage { base, slots: vec![0; count] }
    }

    /// Message `seq` was received `latency` ns after it was sent; one outside the phase's
    /// numbers is ignored.
    #[inline]
    pub fn record(&mut self, seq: u64, latency: u64) {
        if let Some(slot) = seq.checked_sub(self.base).and_then(|k| self.slots.get_mut(k as usize)) {
            *slot = (*slot).max(latency.max(1));
        }
    }

    /// Adds another thread's: per message, the later of the two.
    pub fn merge(&mut self, other: &PerMessage) {
        if self.slots.is_empty() {
            self.base = other.base;
        }
        if self.slots.len() < other.slots.len() {
            self.slots.resize(other.slots.len(), 0);
        }
        for (a, b) in self.slots.iter_mut().zip(&other.slots) {
            *a = (*a).max(*b);
        }
    }

    /// The latencies of the messages that were received, sorted.
    pub fn sorted(&self) -> Vec<u64> {
        let mut received: Vec<u64> = self.slots.iter().copied().filter(|&l| l > 0).collect();
        received.sort_unstable();
        received
    }
}

/// Figures the orchestrator watches while a phase runs (one per receiver thread; written by
/// that thread once per poll round, read by the orchestrator).
#[derive(Debug, Default)]
pub struct Progress {
    /// Connections whose response head has arrived (ever).
    pub handshaked: AtomicU64,
    /// Connections that failed to connect, closed, or broke the protocol (ever).
    pub failed: AtomicU64,
    /// Events received (ever).
    pub delivered: AtomicU64,
    /// Connections that came back after the server ended them (ever; see [`Counters::returned`]).
    pub returned: AtomicU64,
    /// Connections away now: ended by the server, waiting out their `retry` or reconnecting.
    pub away: AtomicU64,
}

impl Progress {
    /// Reads one figure.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// What one receiver thread counted during one phase.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Response heads received.
    pub handshaked: u64,
    /// Connect errors (refused, reset, unreachable, a failed request write).
    pub connect_failed: u64,
    /// Streams the server closed or reset after the handshake.
    pub closed: u64,
    /// Streams that broke the protocol (not 200, bad chunking).
    pub proto_errors: u64,
    /// Broadcast events received.
    pub delivered_b: u64,
    /// Targeted events received.
    pub delivered_t: u64,
    /// Broadcasts never received.
    pub lost_b: u64,
    /// Broadcasts received again (or out of order).
    pub dup_b: u64,
    /// Targeted messages never received.
    pub lost_t: u64,
    /// Targeted messages received again (or out of order).
    pub dup_t: u64,
    /// Targeted messages received by a connection they were not for.
    pub misrouted: u64,
    /// Events whose id is missing, not numeric, or not above the connection's previous one.
    pub id_errors: u64,
    /// Events whose data the bench did not send.
    pub foreign: u64,
    /// Resumes the server told of a gap (`event: reset`): something it kept is gone.
    pub resets: u64,
    /// Connections the server ended (or refused) that came back, once they were not to fail
    /// but to come back as EventSource does: handshaked again, resuming.
    pub returned: u64,
    /// Connects refused (or reset) while coming back: the server was away.
    pub refused: u64,
    /// Earliest receive time of an event (mono ns; 0 = none).
    pub first_recv: u64,
    /// Latest receive time of an event (mono ns).
    pub last_recv: u64,
    /// Latest handshake time (mono ns).
    pub last_handshake: u64,
    /// TLS handshakes completed (`--tls`).
    pub tls_handshaked: u64,
    /// Of those, the ones that resumed a session (`--tls-resume`).
    pub tls_resumed: u64,
    /// Latest TLS handshake completion time (mono ns).
    pub last_tls_handshake: u64,
    /// Receive latency of every delivery (receive time minus the payload's send time).
    pub latency: Histogram,
    /// Per broadcast of the phase, when its last receiver had it.
    pub last_b: PerMessage,
    /// Per targeted message of the phase, when it was received.
    pub last_t: PerMessage,
    /// Subscribers (connections, or HTTP/2 streams) still answered and open when the phase's
    /// counters were collected.
    pub live: u64,
    /// Connections with a subscriber still open then (as many as `live` over HTTP/1.1).
    pub live_connections: u64,
    /// A few connection errors, as examples for the report.
    pub error_samples: Vec<String>,
}

impl Counters {
    /// Adds another thread's counts.
    pub fn merge(&mut self, o: &Counters) {
        self.handshaked += o.handshaked;
        self.connect_failed += o.connect_failed;
        self.closed += o.closed;
        self.proto_errors += o.proto_errors;
        self.delivered_b += o.delivered_b;
        self.delivered_t += o.delivered_t;
        self.lost_b += o.lost_b;
        self.dup_b += o.dup_b;
        self.lost_t += o.lost_t;
        self.dup_t += o.dup_t;
        self.misrouted += o.misrouted;
        self.id_errors += o.id_errors;
        self.foreign += o.foreign;
        self.resets += o.resets;
        self.returned += o.returned;
        self.refused += o.refused;
        self.live += o.live;
        self.live_connections += o.live_connections;
        if o.first_recv != 0 && (self.first_recv == 0 || o.first_recv < self.first_recv) {
            self.first_recv = o.first_recv;
        }
        self.last_recv = self.last_recv.max(o.last_recv);
        self.last_handshake = self.last_handshake.max(o.last_handshake);
        self.tls_handshaked += o.tls_handshaked;
        self.tls_resumed += o.tls_resumed;
        self.last_tls_handshake = self.last_tls_handshake.max(o.last_tls_handshake);
        self.latency.merge(&o.latency);
        self.last_b.merge(&o.last_b);
        self.last_t.merge(&o.last_t);
        let room = 5usize.saturating_sub(self.error_samples.len());
        self.error_samples.extend(o.error_samples.iter().take(room).cloned());
    }

    /// Lost messages of both kinds.
    pub fn lost(&self) -> u64 {
        self.lost_b + self.lost_t
    }

    /// Duplicated messages of both kinds.
    pub fn duplicated(&self) -> u64 {
        self.dup_b + self.dup_t
    }

    /// Connections that failed in any way.
    pub fn failed_connections(&self) -> u64 {
        self.connect_failed + self.closed + self.proto_errors
    }

    /// Whether anything went wrong.
    pub fn any_error(&self) -> bool {
        self.lost()
            + self.duplicated()
            + self.misrouted
            + self.id_errors
            + self.foreign
            + self.resets
            + self.failed_connections()
            > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_tight() {
        let mut last = 0;
        for v in [0u64, 1, 15, 16, 17, 100, 1_000, 65_535, 1 << 40, u64::MAX] {
            let b = bucket(v);
            assert!(b >= last);
            last = b;
            assert!(bucket_low(b) <= v, "{v}");
            if b + 1 < BUCKETS {
                assert!(bucket_low(b + 1) > v, "{v}");
            }
        }
    }

    #[test]
    fn per_message_keeps_the_last_receiver_of_each_and_skips_the_unreceived() {
        let mut a = PerMessage::new(100, 4);
        a.record(100, 5);
        a.record(100, 3);
        a.record(102, 0);
        a.record(99, 1_000);
        a.record(104, 1_000);
        let mut b = PerMessage::new(100, 4);
        b.record(100, 4);
        b.record(101, 7);
        let mut merged = PerMessage::default();
        merged.merge(&a);
        merged.merge(&b);
        // 103 was never received; 102's latency of 0 counts as 1 ns, not as unreceived.
        assert_eq!(merged.sorted(), [1, 5, 7]);
        assert!(PerMessage::default().sorted().is_empty());
    }

    #[test]
    fn quantiles_are_close() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5) as f64;
        assert!((p50 - 500_000.0).abs() / 500_000.0 < 0.07, "{p50}");
        assert_eq!(h.quantile(1.0), 1_000_000);
        assert_eq!(h.max(), 1_000_000);
    }
}

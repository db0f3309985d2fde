//! The events kept for resume ([`History`]): where a resume starts, what keeping an event costs,
//! and the memory each kept event takes beyond its frame.
//!
//! - `history/replay_near_end`: a resume from a few events before the newest, with 1,000 and
//!   100,000 events kept. `one_audience`: every event to `all`, one ring holding them all.
//!   `many_audiences`: one event in ten to `*`, the nine after it to one token, the tokens in
//!   turn, one token per hundred events (10 / 1,000 of them, each ring holding 90 events, `*`'s
//!   100 / 10,000); the client has the newest events' token. Either way it is owed the newest
//!   5 events. Finding where each ring's replay starts is a binary search, so 100k should cost
//!   a few to tens of ns more than 1k, not 100×. `senders` / `actors`: 250,000 events to 200,000
//!   audiences `room1-<sender>` / `*-<actor>` (hasses' "to all but the one who sent it"), with
//!   `--history-memory` full at 10,000 events; a client of `room1` resumes 5 events back, among
//!   the 112,000 rings that can reach it.
//! - `history/append`: one event kept, to one of 1,000 audiences in turn. `no_eviction`: every
//!   limit far away; `evict_by_count`: one audience at its `--history`, so each append lets go of
//!   one event; `evict_by_memory`: `--history-memory` full, so each append lets go of the oldest.
//!   `many_empty_rings`: the same over 200,000 audiences (a site with a token per user), so that
//!   rings empty as their one event goes and, past `MAX_EMPTY_RINGS` of them, the oldest empty
//!   one is forgotten; `history_off`: `--history 0`, to the 18,000 audiences of `hasses-bench
//!   targeted -n 18000` in turn, every event let go of as it comes. Both start past 100,000
//!   appends, where forgetting starts.
//! - `history_memory`: not timed. Appends 100,000 events of a typical frame (a 64-byte message,
//!   99 bytes framed) over 1, 1,000 and 100,000 audiences and prints the heap the history holds
//!   beyond the frames' own bytes, per event, as the allocator was asked for it (malloc's own
//!   header and rounding per allocation come on top).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use hasses::event::{Audience, ResumeFrom, Target};
use hasses::history::{History, HistoryLimits};
use hasses::sse::{encode_event, Frame};

use crate::counting::counted;
use crate::TYPICAL_ID;

/// The size of the kept histories.
const SIZES: [(&str, usize); 2] = [("1k", 1_000), ("100k", 100_000)];
/// Events a resume in `replay_near_end` is behind the newest.
const BEHIND: u64 = 5;
/// Audiences the appends go to in turn, and the memory measurement's.
const AUDIENCES: usize = 1_000;
/// A typical message: what the capacity benchmark publishes.
const MESSAGE: &[u8] = &[b'x'; 64];
const HOUR: Duration = Duration::from_secs(3600);

fn limits(per_audience: usize, max_bytes: usize) -> HistoryLimits {
    HistoryLimits { per_audience, max_age: HOUR, max_bytes }
}

fn token(name: &str) -> Audience {
    Audience { targets: smallvec::smallvec![Target::Token(name.into())], except: None }
}

fn everyone() -> Audience {
    Audience { targets: smallvec::smallvec![Target::All], except: None }
}

/// `c0` … `c<n-1>`.
fn audiences(n: usize) -> Vec<Audience> {
    (0..n).map(|i| token(&format!("c{i}"))).collect()
}

/// A history with `n` events from `TYPICAL_ID` on, event i to `audience(i)`, all kept.
fn filled(n: usize, origin: Instant, audience: impl Fn(usize) -> Audience) -> History {
    let mut history = History::new(limits(n, usize::MAX), TYPICAL_ID, origin);
    let frame = encode_event(TYPICAL_ID, MESSAGE);
    for i in 0..n {
        history.append(TYPICAL_ID + i as u64, &audience(i), &frame, origin);
    }
    history
}

pub fn replay_near_end(c: &mut Criterion) {
    let mut group = c.benchmark_group("history/replay_near_end");
    group.throughput(Throughput::Elements(1));
    let origin = Instant::now();
    for (name, n) in SIZES {
        let from = ResumeFrom::After(TYPICAL_ID + n as u64 - 1 - BEHIND);
        let one = filled(n, origin, |_| token("all"));
        assert_eq!(one.replay(from, ["all", "c7"].into_iter(), "c7", origin).frames.len(), BEHIND as usize);
        group.bench_function(BenchmarkId::new("one_audience", name), |b| {
            b.iter(|| one.replay(black_box(from), ["all", "c7"].into_iter(), "c7", origin))
        });
        let tokens = audiences(n / 100);
        let token_of = |i: usize| i / 10 % tokens.len();
        let many = filled(n, origin, |i| if i % 10 == 0 { everyone() } else { tokens[token_of(i)].clone() });
        let client = format!("c{}", token_of(n - 1));
        let client = client.as_str();
        assert_eq!(many.replay(from, [client].into_iter(), client, origin).frames.len(), BEHIND as usize);
        group.bench_function(BenchmarkId::new("many_audiences", name), |b| {
            b.iter(|| many.replay(black_box(from), [client].into_iter(), client, origin))
        });
    }
    for (name, target) in [("senders", Target::Token("room1".into())), ("actors", Target::All)] {
        let but = |i: usize| Audience {
            targets: smallvec::smallvec![target.clone()],
            except: Some(format!("u{i}")),
        };
        let frame = encode_event(TYPICAL_ID, MESSAGE);
        let mut history = History::new(limits(1_000, 10_000 * frame.len()), TYPICAL_ID, origin);
        let events: usize = 250_000;
        for i in 0..events {
            history.append(TYPICAL_ID + i as u64, &but(i.wrapping_mul(7_919) % 200_000), &frame, origin);
        }
        let from = ResumeFrom::After(TYPICAL_ID + events as u64 - 1 - BEHIND);
        assert_eq!(history.replay(from, ["room1"].into_iter(), "me", origin).frames.len(), BEHIND as usize);
        group.bench_function(name, |b| {
            b.iter(|| history.replay(black_box(from), ["room1"].into_iter(), "me", origin))
        });
    }
    group.finish();
}

pub fn append(c: &mut Criterion) {
    let mut group = c.benchmark_group("history/append");
    group.throughput(Throughput::Elements(1));
    let origin = Instant::now();
    let frame = encode_event(TYPICAL_ID, MESSAGE);
    let targets = audiences(AUDIENCES);
    // Each round appends up to 99,000 events to a fresh history whose 1,000 rings exist, so
    // nothing is let go of; building and dropping it are outside the timing.
    group.bench_function("no_eviction", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let mut history = History::new(limits(usize::MAX, usize::MAX), TYPICAL_ID, origin);
                for (i, audience) in targets.iter().enumerate() {
                    history.append(TYPICAL_ID + i as u64, audience, &frame, origin);
                }
                let round = left.min(99_000);
                let start = Instant::now();
                for i in AUDIENCES as u64..AUDIENCES as u64 + round {
                    history.append(TYPICAL_ID + i, &targets[i as usize % AUDIENCES], &frame, origin);
                }
                timed += start.elapsed();
                left -= round;
            }
            timed
        })
    });
    let at_count = |n: usize, audience: &Audience| {
        let mut history = History::new(limits(n, usize::MAX), TYPICAL_ID, origin);
        for i in 0..n as u64 {
            history.append(TYPICAL_ID + i, audience, &frame, origin);
        }
        history
    };
    let mut history = at_count(1_000, &targets[0]);
    let mut id = TYPICAL_ID + 1_000;
    group.bench_function("evict_by_count", |b| {
        b.iter(|| {
            id += 1;
            history.append(id, &targets[0], &frame, origin);
        })
    });
    let mut history = History::new(limits(usize::MAX, 100_000 * frame.len()), TYPICAL_ID, origin);
    let mut id = TYPICAL_ID;
    for _ in 0..100_000 {
        id += 1;
        history.append(id, &targets[id as usize % AUDIENCES], &frame, origin);
    }
    group.bench_function("evict_by_memory", |b| {
        b.iter(|| {
            id += 1;
            history.append(id, &targets[id as usize % AUDIENCES], &frame, origin);
        })
    });
    let users = audiences(200_000);
    let full = limits(usize::MAX, 10_000 * frame.len());
    bench_turns(&mut group, "many_empty_rings", History::new(full, TYPICAL_ID, origin), &users, &frame);
    let off = History::new(limits(0, usize::MAX), TYPICAL_ID, origin);
    bench_turns(&mut group, "history_off", off, &audiences(18_000), &frame);
    group.finish();
}

/// Times appends to `targets` in turn (a stride through them), after 150,000 untimed ones.
fn bench_turns(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    mut history: History,
    targets: &[Audience],
    frame: &Frame,
) {
    let origin = Instant::now();
    let mut id = TYPICAL_ID;
    let mut append = |history: &mut History| {
        id += 1;
        history.append(id, &targets[(id as usize).wrapping_mul(7_919) % targets.len()], frame, origin);
    };
    (0..150_000).for_each(|_| append(&mut history));
    group.bench_function(name, |b| b.iter(|| append(&mut history)));
}

/// Prints the heap a history of 100,000 events holds beyond their frames' bytes, per event: for
/// events over 1, 1,000 (100 each) and 100,000 audiences (one each: a user token apiece).
pub fn memory(_: &mut Criterion) {
    const EVENTS: usize = 100_000;
    let origin = Instant::now();
    for audiences_n in [1, AUDIENCES, EVENTS] {
        let targets = audiences(audiences_n);
        // Each event its own frame, as the sequencer makes them; built before counting starts.
        let frames: Vec<Frame> = (0..EVENTS).map(|i| encode_event(TYPICAL_ID + i as u64, MESSAGE)).collect();
        let frame_bytes: usize = frames.iter().map(Frame::len).sum();
        let (history, held) = counted(|| {
            let mut history = History::new(limits(usize::MAX, usize::MAX), TYPICAL_ID, origin);
            for (i, frame) in frames.iter().enumerate() {
                history.append(TYPICAL_ID + i as u64, &targets[i % audiences_n], frame, origin);
            }
            history
        });
        // What appending allocated: the history's own structures, and the shared header each
        // frame gets once a second owner holds it (in the server the shards hold it too).
        let beyond = held.bytes as f64 / EVENTS as f64;
        println!(
            "history_memory: {EVENTS} events of {} B frames over {audiences_n} audiences: \
             {beyond:.1} B per kept event beyond its frame",
            frame_bytes / EVENTS
        );
        black_box((history, frames));
    }
}

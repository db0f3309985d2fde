//! `idle_memory`: not timed. What the subscription index and the reach view hold per idle
//! connection, counted by the allocator as `hasses-bench idle` sets them up: 18,000
//! connections over two shards, connection i on `all` and `c<i>`, in connect order. It prints
//! the bytes asked for and the blocks they are in, per connection; malloc adds its header and
//! rounding per block (about 8 to 16 bytes each with glibc).

use std::hint::black_box;

use criterion::Criterion;
use hasses::reach::Reach;
use hasses::shard::keys::{ConnKey, StreamKey};
use hasses::shard::subscriptions::Subscriptions;

use crate::counting::{counted, Held};

const CONNECTIONS: usize = 18_000;
const SHARDS: usize = 2;

/// Connection i's shard, its stream, and its tokens.
fn connection(i: usize) -> (usize, StreamKey, [String; 2]) {
    let key = StreamKey::on(ConnKey::new(i / SHARDS).expect("a small key"));
    (i % SHARDS, key, ["all".to_owned(), format!("c{i}")])
}

fn per_connection(held: Held) -> String {
    let bytes = held.bytes as f64 / CONNECTIONS as f64;
    let blocks = held.blocks as f64 / CONNECTIONS as f64;
    format!("{bytes:.1} B in {blocks:.2} blocks")
}

pub fn memory(_: &mut Criterion) {
    let connections: Vec<_> = (0..CONNECTIONS).map(connection).collect();
    let (indexes, index) = counted(|| {
        let mut indexes: Vec<Subscriptions> = (0..SHARDS).map(|_| Subscriptions::default()).collect();
        for (shard, key, tokens) in &connections {
            indexes[*shard].add(*key, tokens.iter().map(String::as_str), |_| {});
        }
        indexes
    });
    let (reach, view) = counted(|| {
        let reach = Reach::default();
        // A shard tells the view of a token's first stream; telling it again changes nothing.
        for (shard, _, tokens) in &connections {
            tokens.iter().for_each(|token| reach.hold(*shard, token));
        }
        reach
    });
    println!(
        "idle_memory: {CONNECTIONS} connections over {SHARDS} shards, each on `all` and its own \
         token; per connection: the shard's index {}, the reach view {}",
        per_connection(index),
        per_connection(view)
    );
    black_box((indexes, reach));
}

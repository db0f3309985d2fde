//! The micro-benchmarks' allocator: `System`'s, counting the heap in use while [`counted`]
//! runs. Off, it costs every allocation of the other benchmarks one relaxed load, so their
//! figures stay comparable with earlier runs.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static BYTES: AtomicIsize = AtomicIsize::new(0);
static BLOCKS: AtomicIsize = AtomicIsize::new(0);

fn count(bytes: isize, blocks: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        BYTES.fetch_add(bytes, Ordering::Relaxed);
        BLOCKS.fetch_add(blocks, Ordering::Relaxed);
    }
}

// SAFETY: every call goes to `System` unchanged; the counting touches only atomics.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize, 1);
        System.alloc(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize), -1);
        System.dealloc(ptr, layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize, 1);
        System.alloc_zeroed(layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize, 0);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What `build` left allocated: the bytes asked of the allocator, and the blocks they are in
/// (each block costs malloc its header and rounding on top).
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub bytes: isize,
    pub blocks: isize,
}

/// Runs `build` and counts what it leaves on the heap (not thread-safe: one measurement at a
/// time, and nothing else allocating meanwhile).
pub fn counted<T>(build: impl FnOnce() -> T) -> (T, Held) {
    BYTES.store(0, Ordering::Relaxed);
    BLOCKS.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let built = build();
    COUNTING.store(false, Ordering::Relaxed);
    (built, Held { bytes: BYTES.load(Ordering::Relaxed), blocks: BLOCKS.load(Ordering::Relaxed) })
}

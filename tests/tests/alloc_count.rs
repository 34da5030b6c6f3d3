//! Heap allocations per command on the common path, counted by a global
//! allocator over every thread of this test process: the in-process
//! initiator, the target core on its I/O thread, the `mem` backend. The
//! figures are the guard of the per-command cost table in
//! `docs/architecture.md`: a change that adds an allocation per command
//! fails here until the table (and this bound) say why.
//!
//! This binary holds one test, so nothing else allocates meanwhile.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use common::*;
use lunar_block::Backend;
use lunar_core::{wait, ErrorPolicies, ErrorPolicy, Target};
use lunar_loopback::{cdb, Initiator, ResponseExt};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
/// Bytes asked for by those allocations (a copy of a command's data shows
/// here as its size).
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// only addition is a relaxed counter increment, which cannot allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size.saturating_sub(layout.size()) as u64, Ordering::Relaxed);
        // SAFETY: `ptr` was allocated by `System` through this allocator
        // with `layout`, as the caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations per 4 KiB command through the in-process initiator at QD1
/// under lunard's default error policies, measured on 2026-12-07
/// (docs/architecture.md, "Per-command cost"): 6 per read (its data-in
/// buffer one of them: this initiator lends no memory), 6 per write (one
/// of them the 32-byte header that shares the write's data between the
/// backend and the copy kept for a retry). 7 and 7 before the CDB was
/// held inline. The bound leaves no slack: lower it when a change removes
/// one.
const MAX_ALLOCS_PER_READ: u64 = 6;
const MAX_ALLOCS_PER_WRITE: u64 = 6;
/// Heap bytes per 4 KiB write under lunard's default error policies
/// (`werror = enospc`, which keeps a write's data for a retry after ENOSPC): the data
/// is shared with the backend, never copied to be kept, so a write costs
/// less than its own size (2,384 bytes of bookkeeping measured, most of it
/// the command's future; 5,936 while the kept data was a copy).
const MAX_BYTES_PER_WRITE: u64 = 3072;

/// Allocations and heap bytes per call of `f`, over `inputs` (made before
/// counting, so that the caller's own buffers are not counted), after a
/// warm-up.
fn per_command(inputs: Vec<Vec<u8>>, mut f: impl FnMut(u64, Vec<u8>)) -> (f64, f64) {
    for i in 0..100 {
        f(i, vec![0; 4096]); // warm-up: the queue's maps, the backend's chunks, thread locals
    }
    let n = inputs.len() as u64;
    let (before, bytes_before) = (ALLOCS.load(Ordering::Relaxed), BYTES.load(Ordering::Relaxed));
    for (i, data) in inputs.into_iter().enumerate() {
        f(i as u64 % 100, data);
    }
    let allocs = (ALLOCS.load(Ordering::Relaxed) - before) as f64 / n as f64;
    (allocs, (BYTES.load(Ordering::Relaxed) - bytes_before) as f64 / n as f64)
}

#[test]
fn allocations_per_command_stay_within_the_cost_table() {
    let target = Target::new("alloc", 1).unwrap();
    // lunard's default error policies (`werror = enospc` keeps a write's
    // data for a retry after ENOSPC).
    let policies = ErrorPolicies { write: ErrorPolicy::Enospc, ..ErrorPolicies::default() };
    add(&target, 0, Backend::mem(1 << 20), policies);
    let ini = wait(Initiator::connect(&target, &[0], 1)).unwrap();
    let (writes, write_bytes) = per_command((0..2000).map(|i| pattern(i, 4096)).collect(), |i, data| {
        let r = ini.command_blocking(0, &cdb::write16(i * 8, 8, false), data).unwrap();
        assert!(r.is_good());
    });
    let (reads, _) = per_command((0..2000).map(|_| Vec::new()).collect(), |i, none| {
        let r = ini.command_blocking(0, &cdb::read16(i * 8, 8), none).unwrap();
        assert!(r.is_good());
    });
    println!(
        "allocations per 4 KiB command (in-process initiator, QD1): read {reads:.2}, write {writes:.2} ({write_bytes:.0} bytes)"
    );
    assert!(reads <= MAX_ALLOCS_PER_READ as f64, "{reads:.2} allocations per read");
    assert!(writes <= MAX_ALLOCS_PER_WRITE as f64, "{writes:.2} allocations per write");
    assert!(write_bytes <= MAX_BYTES_PER_WRITE as f64, "{write_bytes:.0} heap bytes per 4 KiB write: its data copied");
}

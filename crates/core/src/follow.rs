//! The ownership-following protocol: how work reaches the thread that holds a
//! queue's request list, when that thread may change at any time.
//!
//! This is the piece of the seed that had the use-after-free: a bottom half
//! that found the device had moved rescheduled itself to the new thread, but
//! its data was freed on return. Here the job is a `Box<dyn FnOnce>`: when it
//! must follow, the very same box (with everything it owns, such as the
//! `Arc` of the device) is moved into the next bottom half, so nothing can be
//! freed behind it, and it cannot be run twice.
//!
//! The rules, each relied on below and model-checked in `tests/model_follow.rs`:
//! - The ground truth of "who holds the list" is the holder thread's own
//!   registry (`holds`), never the `owner` hint alone.
//! - A holder gives the list away with [`Home::transfer`]: it first schedules
//!   the arrival on the destination, then publishes the new owner. Per-thread
//!   bottom halves are FIFO, so any job sent to the new owner after it read
//!   the new `owner` runs after the arrival.
//! - Each transfer takes a generation number before it schedules the arrival,
//!   and the owner is published with it (`fetch_max`): the destination may
//!   receive the list and give it away again before the first holder's
//!   publish lands, and that late publish must not overwrite the newer owner
//!   (it did: a stop quickly followed by a cont left the owner pointing at the
//!   main loop while the list was on its I/O thread, and every job for it
//!   chased itself on the main loop forever).
//! - A job that runs where the list is not (yet) held re-dispatches itself to
//!   the current owner; a job for a closed home runs with [`Arrival::Closed`].

use crate::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use crate::sync::Arc;

/// A unit of work sent to a thread.
pub type Job = Box<dyn FnOnce() + Send + 'static>;

/// Sends jobs to threads by index (FIFO per thread).
pub trait Executor: Send + Sync + 'static {
    /// Schedules `job` on thread `thread`. Returns it back if that thread is gone.
    fn schedule(&self, thread: usize, job: Job) -> Result<(), Job>;
}

/// Where the job found the list when it ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// The list is held by the current thread.
    Here,
    /// The home was closed (its list destroyed); nothing to do.
    Closed,
}

/// The shared, `Send + Sync` half of a thread-confined list: its identity and
/// a hint of which thread holds it.
pub struct Home {
    id: u64,
    /// `(generation << THREAD_BITS) | thread` of the latest transfer published.
    owner: AtomicU64,
    /// Transfers begun (the generation of the next one, minus one).
    transfers: AtomicU64,
    closed: AtomicBool,
}

/// Bits of [`Home::owner`] holding the thread index.
const THREAD_BITS: u32 = 16;
const THREAD_MASK: u64 = (1 << THREAD_BITS) - 1;

/// Whether the calling thread holds the list of a home (looked up in the
/// calling thread's own registry).
pub type Holds = fn(&Home) -> bool;

impl Home {
    pub fn new(id: u64, owner: usize) -> Self {
        assert!(owner as u64 <= THREAD_MASK, "thread index {owner} too large");
        Home { id, owner: AtomicU64::new(owner as u64), transfers: AtomicU64::new(0), closed: AtomicBool::new(false) }
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// The thread that holds the list, or will hold it once an arrival in its
    /// queue has run.
    pub fn owner(&self) -> usize {
        (self.owner.load(Ordering::Acquire) & THREAD_MASK) as usize
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Called by the holder after it removed the list from its registry:
    /// schedules `arrive` (which must insert the list into `to`'s registry) on
    /// `to`, then publishes `to` as the owner.
    pub fn transfer<E: Executor + ?Sized>(&self, exec: &E, to: usize, arrive: Job) -> Result<(), Job> {
        assert!(to as u64 <= THREAD_MASK, "thread index {to} too large");
        // Taken before the arrival is scheduled: a transfer by the destination
        // (which needs the arrival first) gets a larger generation.
        let generation = self.transfers.fetch_add(1, Ordering::AcqRel) + 1;
        exec.schedule(to, arrive)?;
        self.owner.fetch_max((generation << THREAD_BITS) | to as u64, Ordering::AcqRel);
        Ok(())
    }

    /// Called by an arrival on `to`, once the list is there: publishes `to`
    /// now, so that whoever the arrival tells sees the exact owner (the
    /// transfer's own publish, on the sending thread, may land later; it
    /// carries the same value). No other transfer can have begun since this
    /// one (that needs the list, which only now arrived), so the count of
    /// transfers is this one's generation.
    pub fn arrived(&self, to: usize) {
        let generation = self.transfers.load(Ordering::Acquire);
        self.owner.fetch_max((generation << THREAD_BITS) | to as u64, Ordering::AcqRel);
    }

    /// Called by the holder after it destroyed the list.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// Runs `job` once, on the thread that holds `home`'s list at the time it runs
/// (or with `Closed` if the list was destroyed first). Never drops the job
/// unrun unless every thread it could go to is gone.
pub fn dispatch<E: Executor + ?Sized>(
    exec: &Arc<E>,
    home: &Arc<Home>,
    holds: Holds,
    job: Box<dyn FnOnce(Arrival) + Send>,
) {
    let to = home.owner();
    let exec2 = exec.clone();
    let home2 = home.clone();
    let bh: Job = Box::new(move || arrive(exec2, home2, holds, job));
    if let Err(bh) = exec.schedule(to, bh) {
        // The owner thread is gone (shutdown): run here so the job's
        // completion logic still sees the home as it is.
        tracing::warn!(home = home.id(), "owner thread gone; running job in place");
        bh();
    }
}

fn arrive<E: Executor + ?Sized>(exec: Arc<E>, home: Arc<Home>, holds: Holds, job: Box<dyn FnOnce(Arrival) + Send>) {
    if holds(&home) {
        job(Arrival::Here);
    } else if home.is_closed() {
        job(Arrival::Closed);
    } else {
        // Moved, or about to arrive here behind us: follow. The box moves on.
        #[cfg(feature = "broken-follow")]
        {
            // Deliberately broken (test-only): the seed's bug class, a job
            // lost when the list moved.
            drop(job);
            let _ = exec;
            return;
        }
        #[allow(unreachable_code)]
        dispatch(&exec, &home, holds, job);
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;

    /// Runs every job at once, on the calling thread (as if the destination
    /// ran the arrival before the sender got on).
    struct Immediate;

    impl Executor for Immediate {
        fn schedule(&self, _thread: usize, job: Job) -> Result<(), Job> {
            job();
            Ok(())
        }
    }

    #[test]
    fn a_late_publish_does_not_overwrite_a_newer_owner() {
        // Thread 1 gives the list to the main loop (0); before thread 1
        // publishes, the main loop runs the arrival and gives the list back
        // to thread 1 (a stop quickly followed by a cont).
        let home = Arc::new(Home::new(7, 1));
        let h = home.clone();
        let arrive: Job = Box::new(move || {
            let back: Job = Box::new(|| {});
            assert!(h.transfer(&Immediate, 1, back).is_ok());
            assert_eq!(h.owner(), 1);
        });
        assert!(home.transfer(&Immediate, 0, arrive).is_ok());
        assert_eq!(home.owner(), 1, "the first transfer's late publish won");
        // Ordinary transfers still publish their destination.
        assert!(home.transfer(&Immediate, 3, Box::new(|| {})).is_ok());
        assert_eq!(home.owner(), 3);
    }
}

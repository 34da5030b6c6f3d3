//! The commands a request virtqueue has in the core, by descriptor head,
//! without a lock: one slot per possible head, written by the I/O thread
//! that takes the chain off the ring and by the thread that completes it
//! (the same one unless the LUN was moved), read by the control queue.
//!
//! A head is in flight at most once (the driver cannot make it available
//! again before the device has used it; a driver that does anyway only
//! confuses its own commands), so each slot has one writer at a time and
//! plain atomic loads and stores suffice on the I/O path. The count of
//! commands in flight is one atomic add and subtract per command, on the
//! thread that serves the ring (the completing thread is another one only
//! after the LUN was moved): uncontended, no lock. The control path (QUERY
//! TASK, marking the commands a reset cancels) scans the slots.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// A command in flight on a request virtqueue, as the control queue sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pending {
    pub(crate) lun: u64,
    pub(crate) tag: u64,
    /// A LOGICAL UNIT or I_T NEXUS RESET is cancelling it: if it ends
    /// aborted, the response is `VIRTIO_SCSI_S_RESET` (Linux retries it),
    /// not `S_ABORTED` (which is for ABORT TASK / ABORT TASK SET).
    pub(crate) reset: bool,
}

const FREE: u8 = 0;
const BUSY: u8 = 1;
const BUSY_RESET: u8 = 2;

#[derive(Default)]
struct Slot {
    lun: AtomicU64,
    tag: AtomicU64,
    state: AtomicU8,
}

/// What [`PendingTable::insert`] says about the in-flight limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Below the limit (or no limit).
    Room,
    /// This command reached the limit: take no more chains until one completes.
    Full,
}

pub(crate) struct PendingTable {
    slots: Box<[Slot]>,
    /// The in-flight limit the last command was admitted under
    /// (`usize::MAX`: none).
    cap: AtomicUsize,
    count: AtomicUsize,
    /// At the limit: no chain is taken off the ring until a completion
    /// clears it (and processes the ring again).
    throttled: AtomicBool,
}

impl PendingTable {
    /// A table for heads below `heads` (the largest ring).
    pub(crate) fn new(heads: usize) -> PendingTable {
        PendingTable {
            slots: (0..heads).map(|_| Slot::default()).collect(),
            cap: AtomicUsize::new(usize::MAX),
            count: AtomicUsize::new(0),
            throttled: AtomicBool::new(false),
        }
    }

    /// Whether the queue is at its limit (the ring is left alone).
    pub(crate) fn throttled(&self) -> bool {
        self.throttled.load(Ordering::Acquire)
    }

    /// Records `head` as in flight under the limit `cap` (`usize::MAX`:
    /// none): `Full` when it reached the limit (the caller stops taking
    /// chains). A head out of range (never: the ring's size bounds it) is
    /// not recorded.
    pub(crate) fn insert(&self, head: u16, p: Pending, cap: usize) -> Admit {
        let Some(s) = self.slots.get(usize::from(head)) else { return Admit::Room };
        s.lun.store(p.lun, Ordering::Relaxed);
        s.tag.store(p.tag, Ordering::Relaxed);
        s.state.store(if p.reset { BUSY_RESET } else { BUSY }, Ordering::Release);
        if self.cap.load(Ordering::Relaxed) != cap {
            self.cap.store(cap, Ordering::Relaxed);
        }
        // SeqCst on the count and the flag, with `remove`: a completion on
        // another thread (a moved LUN) either sees the flag set, or this
        // sees its decrement and lifts the flag itself.
        if self.count.fetch_add(1, Ordering::SeqCst) + 1 < cap {
            return Admit::Room;
        }
        self.throttled.store(true, Ordering::SeqCst);
        if self.count.load(Ordering::SeqCst) < cap && self.throttled.swap(false, Ordering::SeqCst) {
            return Admit::Room;
        }
        Admit::Full
    }

    /// Whether `head` was marked by a reset (looked at when it ends aborted).
    pub(crate) fn is_reset(&self, head: u16) -> bool {
        self.slots.get(usize::from(head)).is_some_and(|s| s.state.load(Ordering::Acquire) == BUSY_RESET)
    }

    /// `head` completed. True if that took the queue below its limit and
    /// it had stopped taking chains: the caller processes the ring again.
    pub(crate) fn remove(&self, head: u16) -> bool {
        let Some(s) = self.slots.get(usize::from(head)) else { return false };
        if s.state.swap(FREE, Ordering::AcqRel) == FREE {
            return false;
        }
        let cap = self.cap.load(Ordering::Relaxed);
        self.count.fetch_sub(1, Ordering::SeqCst) == cap && self.throttled.swap(false, Ordering::SeqCst)
    }

    /// The commands in flight (control path: a scan of every slot).
    pub(crate) fn snapshot(&self) -> impl Iterator<Item = Pending> + '_ {
        self.slots.iter().filter_map(|s| {
            let state = s.state.load(Ordering::Acquire);
            (state != FREE).then(|| Pending {
                lun: s.lun.load(Ordering::Relaxed),
                tag: s.tag.load(Ordering::Relaxed),
                reset: state == BUSY_RESET,
            })
        })
    }

    /// Commands in flight.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Marks the commands in flight matching `pred` as cancelled by a reset.
    pub(crate) fn mark_reset(&self, pred: impl Fn(&Pending) -> bool) {
        for s in self.slots.iter() {
            let p = Pending { lun: s.lun.load(Ordering::Relaxed), tag: s.tag.load(Ordering::Relaxed), reset: false };
            if s.state.load(Ordering::Acquire) != FREE && pred(&p) {
                // Only a slot still busy is marked (it may complete meanwhile).
                let _ = s.state.compare_exchange(BUSY, BUSY_RESET, Ordering::AcqRel, Ordering::Acquire);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(lun: u64, tag: u64) -> Pending {
        Pending { lun, tag, reset: false }
    }

    #[test]
    fn insert_remove_reset() {
        let t = PendingTable::new(8);
        assert!(t.is_empty());
        assert_eq!(t.insert(3, p(1, 30), usize::MAX), Admit::Room);
        assert_eq!(t.insert(5, p(2, 50), usize::MAX), Admit::Room);
        assert_eq!(t.snapshot().collect::<Vec<_>>(), vec![p(1, 30), p(2, 50)]);
        t.mark_reset(|x| x.lun == 2);
        assert!(t.is_reset(5) && !t.is_reset(3));
        assert!(!t.remove(5));
        assert!(!t.remove(5), "twice: nothing");
        assert!(!t.is_reset(5));
        assert_eq!(t.snapshot().collect::<Vec<_>>(), vec![p(1, 30)]);
        assert!(!t.remove(3));
        assert!(t.is_empty());
        assert_eq!(t.insert(200, p(0, 0), usize::MAX), Admit::Room, "out of range: ignored");
        assert!(t.is_empty());
    }

    #[test]
    fn the_limit_throttles_and_the_completion_at_it_resumes() {
        let t = PendingTable::new(8);
        assert_eq!(t.insert(0, p(0, 0), 2), Admit::Room);
        assert_eq!(t.insert(1, p(0, 1), 2), Admit::Full);
        assert!(t.throttled());
        assert!(t.remove(0), "below the limit again: resume");
        assert!(!t.throttled());
        assert_eq!(t.insert(2, p(0, 2), 2), Admit::Full);
        assert!(t.remove(2));
        assert!(!t.remove(1), "not throttled: nothing to resume");
        assert!(t.is_empty());
    }

    /// Completions on another thread while the queue fills: every time the
    /// queue is reported full, a later completion resumes it (or the
    /// submitter lifted the flag itself); it never stays throttled with
    /// room.
    #[test]
    fn a_completion_on_another_thread_never_leaves_it_throttled_with_room() {
        use std::sync::mpsc;
        let t = std::sync::Arc::new(PendingTable::new(64));
        let (tx, rx) = mpsc::channel::<u16>();
        let (resumed_tx, resumed_rx) = mpsc::channel::<()>();
        let tc = t.clone();
        let completer = std::thread::spawn(move || {
            for head in rx {
                if tc.remove(head) {
                    resumed_tx.send(()).unwrap();
                }
            }
        });
        let mut next = 0u16;
        let mut in_flight = std::collections::VecDeque::new();
        for _ in 0..20_000 {
            let head = next % 64;
            next = next.wrapping_add(1);
            in_flight.push_back(head);
            if t.insert(head, p(0, u64::from(head)), 4) == Admit::Full {
                // Hand the oldest to the completer; wait until the ring may
                // be processed again (as the resumed pass would).
                while t.throttled() {
                    if let Some(h) = in_flight.pop_front() {
                        tx.send(h).unwrap();
                    }
                    let _ = resumed_rx.recv_timeout(std::time::Duration::from_millis(200));
                }
            } else if in_flight.len() > 2 {
                tx.send(in_flight.pop_front().unwrap()).unwrap();
            }
        }
        drop(tx);
        completer.join().unwrap();
    }
}

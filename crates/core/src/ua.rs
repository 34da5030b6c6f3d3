//! Unit attention conditions, per I_T_L nexus (SAM-5 5.14).
//!
//! A logical unit keeps its pending unit attentions per I_T nexus, not per
//! front-end queue: a vhost-user-scsi controller is one I_T nexus that opens
//! one core queue of each LUN per request virtqueue, each on its own I/O
//! thread, and the guest must be told of a condition once, on whichever
//! queue it sends its next command, and then never again on any of them.
//! So every core queue of a device opened for the same nexus shares one
//! [`UnitAttentions`] (the device hands it out when the queue opens and
//! forgets it when the nexus's last queue closes, `Device::share_unit_attentions`).
//! Queues opened without a nexus (the anonymous one: the in-process
//! initiator) cannot be told apart, so each keeps a set of its own.
//!
//! The set is not part of the request list: it stays with the `Queue`
//! (shared, `Send + Sync`) and does not move with the list, so a move
//! cannot lose or duplicate it.
//!
//! No lock on the I/O path in the common case: a command reads one atomic
//! (the number of pending conditions); the set's mutex is taken only while
//! a condition is pending (to report it) or being raised (control plane:
//! reset, resize, hot plug; reservation commands' side effects), and is
//! shared only by the queues of one nexus of one LU.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lunar_scsi::Sense;

/// The pending unit attentions of one I_T_L nexus, oldest first.
#[derive(Debug, Default)]
pub(crate) struct UnitAttentions {
    /// `list.len()`, written under the lock, read without it by every command.
    pending: AtomicUsize,
    list: Mutex<VecDeque<Sense>>,
}

impl UnitAttentions {
    pub(crate) fn new() -> Arc<UnitAttentions> {
        Arc::new(UnitAttentions::default())
    }

    /// Establishes `sense`, unless the same condition is already pending.
    pub(crate) fn push(&self, sense: Sense) {
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        if !list.contains(&sense) {
            list.push_back(sense);
        }
        self.pending.store(list.len(), Ordering::Release);
    }

    /// Reports and clears the oldest pending condition, if any (one atomic
    /// load when there is none).
    pub(crate) fn pop(&self) -> Option<Sense> {
        if self.pending.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut list = self.list.lock().unwrap_or_else(|e| e.into_inner());
        let sense = list.pop_front();
        self.pending.store(list.len(), Ordering::Release);
        sense
    }

    /// The number of conditions pending.
    pub(crate) fn pending(&self) -> usize {
        self.pending.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lunar_scsi::sense;

    #[test]
    fn conditions_come_oldest_first_once_each() {
        let ua = UnitAttentions::new();
        assert_eq!((ua.pending(), ua.pop()), (0, None));
        ua.push(sense::BUS_DEVICE_RESET.sense());
        ua.push(sense::CAPACITY_DATA_HAS_CHANGED.sense());
        ua.push(sense::BUS_DEVICE_RESET.sense());
        assert_eq!(ua.pending(), 2, "the same condition is pending once");
        assert_eq!(ua.pop(), Some(sense::BUS_DEVICE_RESET.sense()));
        assert_eq!(ua.pending(), 1);
        // Reported and cleared: raising it again establishes it again.
        ua.push(sense::BUS_DEVICE_RESET.sense());
        assert_eq!(ua.pop(), Some(sense::CAPACITY_DATA_HAS_CHANGED.sense()));
        assert_eq!(ua.pop(), Some(sense::BUS_DEVICE_RESET.sense()));
        assert_eq!((ua.pending(), ua.pop()), (0, None));
    }
}

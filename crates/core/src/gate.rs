//! The device's atomicity gate: COMPARE AND WRITE is atomic with respect to
//! every other command on the device (SBC-4 5.3), including commands that
//! arrive on queues held by other I/O threads.
//!
//! Every other command passes the gate *shared*: it counts itself in its own
//! queue's `active` cell (written only by the thread that holds the queue,
//! so no cache line is shared between I/O threads on this path) and checks
//! that no exclusive holder is in. A COMPARE AND WRITE enters *exclusive*:
//! it raises the device's flag, then waits until no queue of the device
//! counts an active command; commands that see the flag step back out and
//! wait for the release. Both sides store, then load, with sequentially
//! consistent ordering, so at least one of them sees the other (the
//! store-buffering pattern): either the command runs and the exclusive side
//! waits for it, or the command waits.
//!
//! The exclusive side reads the device's queue list (the control-plane
//! lock): only COMPARE AND WRITE pays that, never an ordinary command.
//!
//! An EXTENDED COPY sent to another logical unit reads and writes this one
//! directly: each of its I/Os enters as a *foreign* pass, counted in the
//! gate's own `foreign` cell (shared between threads: a rare path). A
//! foreign pass waits only while an exclusive holder is *inside* (it has
//! drained and runs), never for one that is still waiting to get in: the
//! copy already holds its own unit's gate, and waiting here for an
//! exclusive holder that waits for the copy's unit would close a cycle
//! (two copies in opposite directions, each unit with a COMPARE AND WRITE
//! pending). The exclusive side therefore also waits for the foreign count
//! to drain, then marks itself inside and checks it once more (store then
//! load against the foreign side's store then load, as above); if a copy
//! slipped in it steps back out and waits again. A long copy can so delay
//! a COMPARE AND WRITE of its destination until the copy ends; a copy is
//! finite (at most 16 segments of 65535 blocks).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::device::Device;
use crate::queue::Queue;

#[derive(Default)]
pub(crate) struct Gate {
    /// An exclusive holder is waiting to get in, or is in.
    exclusive: AtomicBool,
    /// The exclusive holder is in (drained); foreign passes wait.
    inside: AtomicBool,
    released: Notify,
    /// Foreign passes in (copies from another unit's EXTENDED COPY).
    foreign: AtomicU64,
    /// A foreign pass left.
    foreign_left: Notify,
}

/// An ordinary command inside the gate: leaves it on drop.
pub(crate) struct OrdinaryPass<'a> {
    active: &'a AtomicU64,
}

impl Drop for OrdinaryPass<'_> {
    fn drop(&mut self) {
        self.active.fetch_sub(1, SeqCst);
    }
}

/// The one COMPARE AND WRITE inside the gate: reopens it on drop.
pub(crate) struct Exclusive<'a> {
    gate: &'a Gate,
}

impl Drop for Exclusive<'_> {
    fn drop(&mut self) {
        self.gate.inside.store(false, SeqCst);
        self.gate.exclusive.store(false, SeqCst);
        self.gate.released.notify_waiters();
    }
}

/// One I/O of another unit's copy inside the gate: leaves it on drop. Owns
/// its device, so that it can outlive the borrow of the copy's resolver.
pub(crate) struct Foreign {
    device: Arc<Device>,
}

impl Drop for Foreign {
    fn drop(&mut self) {
        let gate = self.device.gate();
        gate.foreign.fetch_sub(1, SeqCst);
        gate.foreign_left.notify_waiters();
    }
}

impl Gate {
    /// Waits until no exclusive holder is in (at once, in the common case).
    pub(crate) async fn shared<'a>(&self, active: &'a AtomicU64) -> OrdinaryPass<'a> {
        loop {
            active.fetch_add(1, SeqCst);
            if !self.exclusive.load(SeqCst) {
                return OrdinaryPass { active };
            }
            active.fetch_sub(1, SeqCst);
            self.wait_release().await;
        }
    }

    /// Waits for the gate to be free, closes it, then waits until no
    /// command of `queues` is inside.
    pub(crate) async fn exclusive(&self, queues: impl Fn() -> Vec<Arc<Queue>>) -> Exclusive<'_> {
        while self.exclusive.compare_exchange(false, true, SeqCst, SeqCst).is_err() {
            self.wait_release().await;
        }
        let guard = Exclusive { gate: self };
        let mut rounds = 0u32;
        loop {
            while self.foreign.load(SeqCst) != 0 || queues().iter().any(|q| q.active().load(SeqCst) != 0) {
                // The commands inside are running on their threads (this one
                // included): let them finish.
                if rounds < 64 {
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
                rounds += 1;
            }
            self.inside.store(true, SeqCst);
            if self.foreign.load(SeqCst) == 0 {
                return guard;
            }
            // A copy's I/O got in meanwhile: let it finish first.
            self.inside.store(false, SeqCst);
            self.released.notify_waiters();
        }
    }

    /// Admits one I/O of another unit's copy to `device` (whose gate this
    /// is): waits only while an exclusive holder is inside.
    pub(crate) async fn foreign(device: &Arc<Device>) -> Foreign {
        let gate = device.gate();
        loop {
            gate.foreign.fetch_add(1, SeqCst);
            let pass = Foreign { device: device.clone() };
            if !gate.inside.load(SeqCst) {
                return pass;
            }
            drop(pass);
            let released = gate.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if gate.inside.load(SeqCst) {
                released.await;
            }
        }
    }

    /// Resolves once no foreign pass is in. Call after pausing the device
    /// (a paused device admits none: see `device.rs`).
    pub(crate) async fn foreign_drained(&self) {
        loop {
            let left = self.foreign_left.notified();
            tokio::pin!(left);
            left.as_mut().enable();
            if self.foreign.load(SeqCst) == 0 {
                return;
            }
            left.await;
        }
    }

    async fn wait_release(&self) {
        let released = self.released.notified();
        tokio::pin!(released);
        released.as_mut().enable();
        if self.exclusive.load(SeqCst) {
            released.await;
        }
    }
}

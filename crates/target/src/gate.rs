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

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::queue::Queue;

#[derive(Default)]
pub(crate) struct Gate {
    exclusive: AtomicBool,
    released: Notify,
}

/// An ordinary command inside the gate: leaves it on drop.
pub(crate) struct Shared<'a> {
    active: &'a AtomicU64,
}

impl Drop for Shared<'_> {
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
        self.gate.exclusive.store(false, SeqCst);
        self.gate.released.notify_waiters();
    }
}

impl Gate {
    /// Waits until no exclusive holder is in (at once, in the common case).
    pub(crate) async fn shared<'a>(&self, active: &'a AtomicU64) -> Shared<'a> {
        loop {
            active.fetch_add(1, SeqCst);
            if !self.exclusive.load(SeqCst) {
                return Shared { active };
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
        while queues().iter().any(|q| q.active().load(SeqCst) != 0) {
            // The commands inside are running on their threads (this one
            // included): let them finish.
            if rounds < 64 {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_micros(100)).await;
            }
            rounds += 1;
        }
        guard
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

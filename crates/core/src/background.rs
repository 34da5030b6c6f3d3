//! Device operations that outlive the command that began them: a sanitize
//! operation (SBC-4 4.11) goes on to its end whatever happens to its
//! SANITIZE command (ABORT TASK, LOGICAL UNIT RESET, I_T nexus loss).
//!
//! The operation runs in a task of its own on the I/O thread that executed
//! the command, one step at a time ([`lunar_scsi::SanitizeOperation::step`]),
//! holding the device. It is not a request: the request lists know nothing
//! of it, so it never holds up a move, a cancel or a reset. The command
//! waits for it as a request in state [`RequestState::Waiting`] (IMMED=0),
//! which a cancel completes at once and the operation's end completes
//! through [`Queue::dispatch`], wherever the list is then; with IMMED=1 the
//! command completes as soon as the operation has begun.
//!
//! Between steps the operation waits while the device is paused (operator,
//! I/O error, resize) or the target is stopped, and stops if the device is
//! removed (the operation then fails, with the unit). Those control-plane
//! operations wait for a step in progress to end ([`Background::idle`]),
//! so that "stopped" still means no backend I/O of the device. The check
//! between steps and the control plane's wait pair up as in the gate: each
//! side stores (its busy count, or the pause/stop/removed state) then loads
//! the other's, sequentially consistent, so at least one sees the other.
//!
//! [`RequestState::Waiting`]: crate::RequestState::Waiting

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use lunar_scsi::{Command, SanitizeOperation, ScsiError};
use tokio::sync::Notify;

use crate::device::Device;
use crate::follow::Arrival;
use crate::queue::{LocalQueue, Queue};

/// The detached operations of one device.
#[derive(Default)]
pub(crate) struct Background {
    /// Operations begun and not ended.
    alive: AtomicUsize,
    /// Operations inside a step (doing backend I/O).
    busy: AtomicUsize,
    /// The target is stopped: operations wait between steps.
    held: AtomicBool,
    /// Any of the above, the device's pause bits or its removal changed.
    changed: Notify,
}

/// An operation inside a step: leaves it on drop.
struct Step<'a>(&'a Background);

impl Drop for Step<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, SeqCst);
        self.0.changed.notify_waiters();
    }
}

impl Background {
    /// Number of operations begun and not ended.
    pub(crate) fn alive(&self) -> usize {
        self.alive.load(SeqCst)
    }

    /// Wakes operations waiting between steps (the device was resumed or removed).
    pub(crate) fn wake(&self) {
        self.changed.notify_waiters();
    }

    /// Target stopped (`true`) or running again.
    pub(crate) fn set_held(&self, held: bool) {
        self.held.store(held, SeqCst);
        self.changed.notify_waiters();
    }

    /// Resolves once no operation is inside a step. Call after pausing,
    /// holding or removing the device, so that none enters one.
    pub(crate) async fn idle(&self) {
        self.wait_until(|| self.busy.load(SeqCst) == 0).await;
    }

    /// Resolves once every operation has ended (after removing the device).
    pub(crate) async fn ended(&self) {
        self.wait_until(|| self.alive.load(SeqCst) == 0).await;
    }

    async fn wait_until(&self, done: impl Fn() -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if done() {
                return;
            }
            changed.await;
        }
    }

    /// Waits until the operation may do its next step; `None` if the
    /// device was removed (the operation must end).
    async fn enter(&self, device: &Device) -> Option<Step<'_>> {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            self.busy.fetch_add(1, SeqCst);
            let step = Step(self);
            if device.is_removed_seqcst() {
                return None;
            }
            if !device.is_paused_seqcst() && !self.held.load(SeqCst) {
                return Some(step);
            }
            drop(step);
            changed.await;
        }
    }
}

/// The request waiting for an operation: its queue and its id in the list.
pub(crate) struct Waiter {
    pub(crate) queue: Arc<Queue>,
    pub(crate) id: u64,
    pub(crate) cmd: Command,
}

/// Runs a sanitize operation of `device` to its end in a task of this I/O
/// thread, then completes the waiting request, if any, with its outcome.
pub(crate) fn run_sanitize(device: Arc<Device>, mut op: SanitizeOperation, waiter: Option<Waiter>) {
    let bg = device.background();
    bg.alive.fetch_add(1, SeqCst);
    tokio::task::spawn_local(async move {
        let began = std::time::Instant::now();
        // Commands that entered the gate before the operation began (and
        // passed their sanitize check then) finish first; later ones are
        // refused with SANITIZE IN PROGRESS.
        drop(device.gate().exclusive(|| device.queues()).await);
        let result = loop {
            let Some(step) = device.background().enter(&device).await else {
                break Err(ScsiError::Sense(lunar_scsi::sense::LUN_NOT_SUPPORTED.sense()));
            };
            let r = op.step().await;
            drop(step);
            match r {
                Ok(true) => break Ok(Vec::new()),
                Ok(false) => tokio::task::yield_now().await,
                Err(e) => break Err(e),
            }
        };
        let ms = began.elapsed().as_millis();
        match &result {
            Ok(_) => tracing::info!(lun = device.lun(), ms, "sanitize operation completed"),
            Err(e) => tracing::warn!(lun = device.lun(), ms, "sanitize operation failed: {e}"),
        }
        drop(op);
        device.background().alive.fetch_sub(1, SeqCst);
        device.background().changed.notify_waiters();
        if let Some(Waiter { queue, id, cmd }) = waiter {
            let qid = queue.id();
            queue.dispatch(move |arrival| {
                if let (Arrival::Here, Some(lq)) = (arrival, LocalQueue::get(qid)) {
                    LocalQueue::finish(&lq, id, &cmd, result);
                }
            });
        }
    });
}

//! Task management (SAM-5 7): the one API both front-ends call.
//!
//! A front-end decodes its own wire form (an iSCSI Task Management Function
//! Request, a virtio-scsi control queue request) into a [`TaskManagement`],
//! passes the queues of the issuing I_T nexus, and answers once
//! [`Target::task_management`] resolves: by then every command the function
//! aborted has completed (its completion ran, with TASK ABORTED or with its
//! own status if it finished first), and every condition it raises (unit
//! attentions, released reservations) is in place. What stays with the
//! front-end is what the core never saw: commands still gathering their
//! data-out, and how the transport words the answer.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::queue::Queue;
use crate::request::{Action, Completion, Request};
use crate::target::{Target, TargetError};

/// A task management function (SAM-5 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskManagement {
    /// ABORT TASK: the nexus's command with this tag on the LU.
    AbortTask { tag: u64 },
    /// ABORT TASK SET: every command of the nexus on the LU.
    AbortTaskSet,
    /// CLEAR TASK SET: as ABORT TASK SET (the task set is per I_T nexus
    /// here: TST = 001b in the Control mode page).
    ClearTaskSet,
    /// LOGICAL UNIT RESET: every command of every nexus on the LU aborted,
    /// then the LU reset (SPC-2 reservations, PREVENT state, held copy
    /// results) and BUS DEVICE RESET FUNCTION OCCURRED for every nexus,
    /// the issuer included.
    LogicalUnitReset,
    /// I_T NEXUS RESET: every command of the nexus on every LU aborted, then
    /// an I_T nexus loss on each LU (SAM-5 6.3.4): SPC-2 reservation
    /// released, PREVENT state ended, I_T NEXUS LOSS OCCURRED for the nexus.
    ITNexusReset,
    /// TARGET WARM RESET (iSCSI): every LU reset as for LOGICAL UNIT RESET,
    /// except that the issuing nexus learns of it from the response rather
    /// than a unit attention (RFC 7143 11.5.1).
    TargetReset,
}

impl TaskManagement {
    pub fn name(self) -> &'static str {
        match self {
            TaskManagement::AbortTask { .. } => "ABORT TASK",
            TaskManagement::AbortTaskSet => "ABORT TASK SET",
            TaskManagement::ClearTaskSet => "CLEAR TASK SET",
            TaskManagement::LogicalUnitReset => "LOGICAL UNIT RESET",
            TaskManagement::ITNexusReset => "I_T NEXUS RESET",
            TaskManagement::TargetReset => "TARGET RESET",
        }
    }

    /// Whether the function reaches every LU of the nexus (the caller
    /// passes the nexus's queues of every LU) rather than one.
    pub fn all_luns(self) -> bool {
        matches!(self, TaskManagement::ITNexusReset | TaskManagement::TargetReset)
    }
}

/// What a task management function did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TaskManagementDone {
    /// Commands of the given queues it aborted (all completed by now).
    pub aborted: usize,
}

impl Target {
    /// Runs `tmf` for the I_T nexus whose queues are `queues`: on LU `lun`
    /// (its queues of that LU), or, for [`TaskManagement::all_luns`], on
    /// every LU (its queues of every LU; `lun` is ignored). Resolves once
    /// every command it aborted has completed and its conditions are in
    /// place. Call it from any thread; resets run on the main loop.
    pub async fn task_management(
        &self,
        tmf: TaskManagement,
        lun: u64,
        queues: &[Arc<Queue>],
    ) -> Result<TaskManagementDone, TargetError> {
        let aborted = match tmf {
            TaskManagement::AbortTask { tag } => abort_all(queues, move |r| r.tag == tag).await,
            TaskManagement::AbortTaskSet | TaskManagement::ClearTaskSet => abort_all(queues, |_| true).await,
            TaskManagement::LogicalUnitReset => {
                // The nexus's own commands are counted; the reset aborts
                // every nexus's and returns once they all completed.
                let own = abort_all(queues, |_| true);
                self.reset_device(lun).await?;
                own.await
            }
            TaskManagement::ITNexusReset => {
                let n = abort_all(queues, |_| true).await;
                let mut done = BTreeSet::new();
                for q in queues {
                    if done.insert(q.device().lun()) {
                        q.nexus_lost(true);
                    }
                }
                n
            }
            TaskManagement::TargetReset => {
                let issuer = queues.first().and_then(|q| q.nexus().cloned());
                let own = abort_all(queues, |_| true);
                for lun in self.luns() {
                    match self.reset_device_except(lun, issuer.clone()).await {
                        // Removed meanwhile: nothing of it left to reset.
                        Ok(()) | Err(TargetError::NoSuchLun(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
                own.await
            }
        };
        Ok(TaskManagementDone { aborted })
    }
}

/// Aborts the requests matching `pred` on every queue of `queues`; resolves
/// with how many once all of them completed.
fn abort_all(
    queues: &[Arc<Queue>],
    pred: impl Fn(&Request) -> bool + Clone + Send + Sync + 'static,
) -> impl std::future::Future<Output = usize> + 'static {
    let waits: Vec<_> = queues.iter().map(|q| q.abort_where(pred.clone())).collect();
    async move {
        let mut n = 0;
        for w in waits {
            n += w.await;
        }
        n
    }
}

/// Counts the completions of the requests one abort cancelled: starts at
/// one (the abort's own hold while it marks them), each marked request adds
/// one and its completion takes one away; the last one out reports.
struct AbortCount {
    remaining: AtomicUsize,
    marked: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<usize>>>,
}

impl AbortCount {
    fn new() -> (Arc<AbortCount>, oneshot::Receiver<usize>) {
        let (tx, rx) = oneshot::channel();
        let count =
            AbortCount { remaining: AtomicUsize::new(1), marked: AtomicUsize::new(0), done: Mutex::new(Some(tx)) };
        (Arc::new(count), rx)
    }

    /// Marks `r`: its completion, whenever and wherever it runs (the
    /// request may move with its queue), counts it as done.
    fn mark(self: &Arc<Self>, r: &mut Request) {
        self.remaining.fetch_add(1, Ordering::AcqRel);
        self.marked.fetch_add(1, Ordering::AcqRel);
        let inner = r.completion.take();
        let me = self.clone();
        r.completion = Some(Completion::new(move |resp| {
            if let Some(c) = inner {
                c.complete(resp);
            }
            me.release();
        }));
    }

    fn release(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(tx) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(self.marked.load(Ordering::Acquire));
            }
        }
    }
}

impl Drop for AbortCount {
    fn drop(&mut self) {
        // The job never reached a list (the queue closed first): nothing
        // was marked, nothing waits.
        if let Some(tx) = self.done.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = tx.send(*self.marked.get_mut());
        }
    }
}

impl Queue {
    /// Cancels the requests of this queue that match `pred` (task
    /// management) and resolves, with how many, once each of them has
    /// completed: its completion ran (TASK ABORTED, or its real status if
    /// it finished first), an executing one's once its I/O ended. Runs on
    /// the holder of the list, following a move.
    pub fn abort_where(
        self: &Arc<Self>,
        pred: impl Fn(&Request) -> bool + Send + Sync + 'static,
    ) -> impl std::future::Future<Output = usize> + Send + 'static {
        let (count, done) = AbortCount::new();
        let marker = count.clone();
        let mark = move |r: &mut Request| {
            if pred(r) {
                marker.mark(r);
                Action::Cancel
            } else {
                Action::Keep
            }
        };
        self.iterate_here(mark, move || count.release());
        async move { done.await.unwrap_or(0) }
    }
}

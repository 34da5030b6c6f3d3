//! Task management (RFC 7143 §11.5, §11.6; SAM-5 7): the connection drops
//! its own tasks still gathering data-out (the core never saw them), marks
//! those in the core, and calls the core's one task management API with
//! the session's queues; the function is answered once both parts
//! resolved. Each request and response is counted and logged.

use std::collections::HashSet;
use std::sync::Arc;

use lunar_core::{Queue, TaskManagement};

use super::{Conn, Event, Flow};
use crate::pdu::{Pdu, RejectReason, TaskMgmtFunction, TaskMgmtRequest, TaskMgmtResponse, TmfResponseCode};
use crate::server::task::Task;

/// A task management function waiting for the tasks it aborted and for
/// the core's part.
pub(super) struct PendingTmf {
    itt: u32,
    function: TaskMgmtFunction,
    lun: u64,
    /// When it arrived (its response says how long it waited).
    since: std::time::Instant,
    waiting: HashSet<u32>,
    core_pending: usize,
    close_after: bool,
}

impl Conn {
    /// The core's part of the function `itt` resolved: answers the
    /// functions that are done.
    pub(super) fn on_core_tmf_done(&mut self, itt: u32) -> Flow {
        if let Some(t) = self.tmfs.iter_mut().find(|t| t.itt == itt) {
            t.core_pending = t.core_pending.saturating_sub(1);
        }
        self.finish_tmfs()
    }

    /// Task `itt` completed: no function waits for it any more (the
    /// caller queues its answer first, then [`Conn::finish_tmfs`]).
    pub(super) fn tmfs_stop_waiting_for(&mut self, itt: u32) {
        for t in &mut self.tmfs {
            t.waiting.remove(&itt);
        }
    }

    /// The connection ends: a TMF still waiting for its commands has no
    /// connection to be answered on (ErrorRecoveryLevel 0): the initiator
    /// gave up on it.
    pub(super) fn abandon_tmfs(&mut self) {
        for t in std::mem::take(&mut self.tmfs) {
            tracing::info!(
                peer = %self.peer,
                function = crate::server::tmf::function_name(t.function),
                lun = t.lun,
                waited_ms = t.since.elapsed().as_millis() as u64,
                "task management not answered: the connection ended first"
            );
        }
    }

    /// A Task Management Function Request in its turn: answered at once
    /// when there is nothing to wait for, else once the tasks it aborted
    /// completed and the core's part resolved.
    pub(super) fn on_tmf(&mut self, t: TaskMgmtRequest) -> Flow {
        if self.session.is_none() {
            return self.reject_pdu(&Pdu::TaskMgmtRequest(t), RejectReason::ProtocolError);
        }
        let lun = lunar_scsi::lun::decode_lun(t.lun.to_be_bytes()).unwrap_or(u64::MAX);
        self.shared.tmfs.received(t.function);
        tracing::info!(
            peer = %self.peer,
            function = crate::server::tmf::function_name(t.function),
            lun,
            referenced_itt = t.referenced_task_tag,
            "task management request"
        );
        let mut pending = PendingTmf {
            itt: t.itt,
            function: t.function,
            lun,
            since: std::time::Instant::now(),
            waiting: HashSet::new(),
            core_pending: 0,
            close_after: false,
        };
        let response = match t.function {
            TaskMgmtFunction::AbortTask => match self.tasks.get(&t.referenced_task_tag).map(|task| task.lun) {
                Some(task_lun) => {
                    let tag = t.referenced_task_tag;
                    self.abort_tasks(|task| task.itt == tag, &mut pending);
                    self.core_tmf(TaskManagement::AbortTask { tag: u64::from(tag) }, task_lun, t.itt, &mut pending);
                    TmfResponseCode::FunctionComplete
                }
                // Completed before the abort arrived (its status was
                // sent), or never received (RFC 7143 §11.6.1).
                None => TmfResponseCode::TaskDoesNotExist,
            },
            TaskMgmtFunction::AbortTaskSet | TaskMgmtFunction::ClearTaskSet => {
                self.abort_tasks(|task| task.lun == lun, &mut pending);
                let tmf = if t.function == TaskMgmtFunction::AbortTaskSet {
                    TaskManagement::AbortTaskSet
                } else {
                    TaskManagement::ClearTaskSet
                };
                self.core_tmf(tmf, lun, t.itt, &mut pending);
                TmfResponseCode::FunctionComplete
            }
            TaskMgmtFunction::LogicalUnitReset => {
                let exists = self.session.as_ref().is_some_and(|s| s.entry.core.device(lun).is_some());
                if exists {
                    self.abort_tasks(|task| task.lun == lun, &mut pending);
                    self.core_tmf(TaskManagement::LogicalUnitReset, lun, t.itt, &mut pending);
                    TmfResponseCode::FunctionComplete
                } else {
                    TmfResponseCode::LunDoesNotExist
                }
            }
            TaskMgmtFunction::TargetWarmReset | TaskMgmtFunction::TargetColdReset => {
                self.abort_tasks(|_| true, &mut pending);
                self.core_tmf(TaskManagement::TargetReset, lun, t.itt, &mut pending);
                if t.function == TaskMgmtFunction::TargetColdReset {
                    // Every session of the target ends; this one right after
                    // its response.
                    pending.close_after = true;
                    if let Some(s) = &self.session {
                        let name = s.entry.config.name.clone();
                        self.shared.kill_sessions_of(&name, s.tsih);
                    }
                }
                TmfResponseCode::FunctionComplete
            }
            TaskMgmtFunction::TaskReassign => TmfResponseCode::TaskAllegianceReassignmentNotSupported,
            _ => TmfResponseCode::FunctionNotSupported,
        };
        if response != TmfResponseCode::FunctionComplete || (pending.waiting.is_empty() && pending.core_pending == 0) {
            self.tmf_answered(&pending, response);
            let flow = self.send(Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response,
                itt: t.itt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
            }));
            return if pending.close_after { Flow::Close } else { flow };
        }
        self.tmfs.push(pending);
        Flow::Continue
    }

    /// The connection's part of an abort: this session's tasks matching
    /// `pred` that are still gathering data are dropped (the core never saw
    /// them); those in the core are marked, and the TMF waits for their
    /// completion as well as for the core's part ([`Conn::core_tmf`]).
    fn abort_tasks(&mut self, pred: impl Fn(&Task) -> bool, pending: &mut PendingTmf) {
        let itts: Vec<u32> = self.tasks.values().filter(|t| pred(t)).map(|t| t.itt).collect();
        for itt in itts {
            let Some(task) = self.tasks.get_mut(&itt) else { continue };
            if task.submitted {
                task.aborted = true;
                pending.waiting.insert(itt);
            } else if let Some(task) = self.tasks.remove(&itt) {
                self.buffers.release_after_write(task.reserved);
            }
        }
    }

    /// The core's part of a task management function, through the one API
    /// both front-ends use (`Target::task_management`), with this
    /// session's queues: of LU `lun`, or of every LU for a target reset.
    /// The TMF is answered once it resolved (every command it aborted has
    /// completed, its unit attentions are in place).
    fn core_tmf(&mut self, tmf: TaskManagement, lun: u64, itt: u32, pending: &mut PendingTmf) {
        let Some(s) = &self.session else { return };
        let queues: Vec<Arc<Queue>> = if tmf.all_luns() {
            s.queues.values().cloned().collect()
        } else {
            s.queues.get(&lun).cloned().into_iter().collect()
        };
        let core = s.entry.core.clone();
        pending.core_pending += 1;
        let tx = self.tx.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = core.task_management(tmf, lun, &queues).await {
                tracing::debug!(lun, tmf = tmf.name(), "task management: {e}");
            }
            let _ = tx.send(Event::CoreTmfDone { itt });
        });
    }

    /// Queues the responses of task management functions that are done.
    pub(super) fn finish_tmfs(&mut self) -> Flow {
        let mut flow = Flow::Continue;
        let done: Vec<PendingTmf> = {
            let (done, keep): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.tmfs).into_iter().partition(|t| t.waiting.is_empty() && t.core_pending == 0);
            self.tmfs = keep;
            done
        };
        for t in done {
            self.tmf_answered(&t, TmfResponseCode::FunctionComplete);
            self.queue_out(Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: TmfResponseCode::FunctionComplete,
                itt: t.itt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
            }));
            if t.close_after {
                flow = Flow::Close;
            }
        }
        flow
    }

    /// Counts and logs the response to a task management function.
    fn tmf_answered(&self, t: &PendingTmf, response: TmfResponseCode) {
        self.shared.tmfs.answered(response);
        tracing::info!(
            peer = %self.peer,
            function = crate::server::tmf::function_name(t.function),
            lun = t.lun,
            response = crate::server::tmf::response_name(response),
            waited_ms = t.since.elapsed().as_millis() as u64,
            "task management response"
        );
    }
}

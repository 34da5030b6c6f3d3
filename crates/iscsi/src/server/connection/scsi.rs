//! SCSI commands (RFC 7143 §11.3, §11.7, §11.8): a command's data-out is
//! sized from its CDB and gathered (immediate, unsolicited, then solicited
//! by R2T within the connection's buffer budget), the command goes to the
//! core once its data is here and its data-in has room, and its completion
//! becomes Data-In and SCSI Response PDUs. Tasks without room wait in
//! order (`deferred`) until answers written free some.

use std::collections::VecDeque;

use lunar_core::Response;

use super::{Conn, Event, Flow};
use crate::pdu::{DataOut, Pdu, RejectReason, ScsiCommand, RESERVED_TAG};
use crate::server::limits::{Budget, LimitCounters};
use crate::server::task::{answer, Task};

/// The connection's buffer space for data-out and data-in, and the tasks
/// waiting for some.
pub(super) struct Buffers {
    budget: Budget,
    /// Room to give back once the answers queued are written (that of the
    /// tasks they finish).
    release_after_write: u64,
    /// Tasks waiting for buffer space (to be sent an R2T, or submitted), in
    /// arrival order.
    deferred: VecDeque<u32>,
}

impl Buffers {
    /// Buffers of at most `limit` bytes (`buffered-bytes`).
    pub(super) fn new(limit: u64) -> Buffers {
        Buffers { budget: Budget { limit, held: 0 }, release_after_write: 0, deferred: VecDeque::new() }
    }

    /// `n` bytes of a task that ended, free once its answers are written.
    pub(super) fn release_after_write(&mut self, n: u64) {
        self.release_after_write += n;
    }

    /// The answers queued were written: their tasks' room is free.
    pub(super) fn written(&mut self) {
        if self.release_after_write > 0 {
            self.budget.give(std::mem::take(&mut self.release_after_write));
        }
    }

    /// No room, or tasks waiting for some: the command window must not open.
    pub(super) fn stalled(&self) -> bool {
        self.budget.full() || !self.deferred.is_empty()
    }

    /// Tasks wait for room.
    pub(super) fn waiting(&self) -> bool {
        !self.deferred.is_empty()
    }
}

impl Conn {
    /// Lets the tasks waiting for buffer space go on, in order, while
    /// there is room: R2Ts for writes, submission for the others.
    pub(super) async fn resume_deferred(&mut self) -> Flow {
        while let Some(&itt) = self.buffers.deferred.front() {
            // When every holder of buffer space is itself waiting, nothing
            // would ever give any back: the first in line goes on.
            let waiting: u64 = self.buffers.deferred.iter().filter_map(|i| self.tasks.get(i)).map(|t| t.reserved).sum();
            let overdraw = waiting == self.buffers.budget.held;
            let Some(task) = self.tasks.get_mut(&itt) else {
                self.buffers.deferred.pop_front();
                continue;
            };
            if task.submitted {
                self.buffers.deferred.pop_front();
                continue;
            }
            if !task.data_complete() || !task.solicited.is_empty() {
                let (r2ts, room) = task.next_r2ts(&self.params, &mut self.next_ttt, &mut self.buffers.budget, overdraw);
                let sent = !r2ts.is_empty();
                for r in r2ts {
                    self.queue_out(Pdu::R2t(r));
                }
                if !room && !sent {
                    return Flow::Continue;
                }
                if room {
                    self.buffers.deferred.pop_front();
                }
                continue;
            }
            if !task.take_data_in(&mut self.buffers.budget, overdraw) {
                return Flow::Continue;
            }
            self.buffers.deferred.pop_front();
            if let Some(task) = self.tasks.remove(&itt) {
                if self.submit_now(task).await == Flow::Close {
                    return Flow::Close;
                }
            }
        }
        Flow::Continue
    }

    /// A SCSI Command in its turn: its task is made, its data-out sized
    /// and its immediate data taken; it goes to the core at once when it
    /// needs no more data, else R2Ts (or the unsolicited data) follow.
    pub(super) async fn on_command(&mut self, c: ScsiCommand) -> Flow {
        tracing::trace!(
            itt = c.itt,
            cmd_sn = c.cmd_sn,
            edtl = c.expected_data_transfer_length,
            imm = c.data.len(),
            last = c.final_bit,
            op = c.cdb.first().copied().unwrap_or(0),
            "SCSI Command"
        );
        if self.session.is_none() {
            // Discovery sessions carry no SCSI commands (RFC 7143 §4.3).
            return self.reject_pdu(&Pdu::ScsiCommand(c), RejectReason::ProtocolError);
        }
        if self.tasks.contains_key(&c.itt) {
            return self.reject_pdu(&Pdu::ScsiCommand(c), RejectReason::TaskInProgress);
        }
        let imm = c.data.len() as u32;
        if imm > 0
            && (!c.write
                || !self.params.immediate_data
                || imm > c.expected_data_transfer_length
                || imm > self.params.first_burst_length)
        {
            self.warn(format_args!("unexpected immediate data (ITT {:#x})", c.itt));
            return self.reject_pdu(&Pdu::ScsiCommand(c), RejectReason::ProtocolError);
        }
        let lun = lunar_scsi::lun::decode_lun(c.lun.to_be_bytes()).unwrap_or(u64::MAX);
        let edtl = if c.read || c.write { c.expected_data_transfer_length } else { 0 };
        let mut task = Task::new(c.itt, lun, c.lun, c.cdb, c.read, c.write, edtl);
        let itt = task.itt;
        if task.write {
            if let Err(response) = self.size_data_out(&mut task).await {
                // Answered without asking for any data-out (what arrives
                // unasked is drained and dropped).
                task.early = Some(response);
                task.want = 0;
            }
            let stored = task.accept(0, &c.data).unwrap_or(0);
            task.reserved += u64::from(stored);
            self.buffers.budget.force(u64::from(stored));
            let unsolicited_end = if c.final_bit || self.params.initial_r2t {
                imm
            } else {
                self.params.first_burst_length.min(task.edtl)
            };
            task.unsolicited_open = !c.final_bit && !self.params.initial_r2t && unsolicited_end > imm;
            task.next_r2t_offset = unsolicited_end.max(imm);
        }
        if task.data_complete() && !task.unsolicited_open {
            return self.submit(task).await;
        }
        self.tasks.insert(itt, task);
        self.solicit(itt);
        Flow::Continue
    }

    /// Sizes a write's data-out from its CDB before asking for any
    /// (RFC 7143 §11.4.5.2, SAM-5 5.4 residuals): an EDTL below what the
    /// CDB asks for cuts a block write to EDTL's whole blocks; above it,
    /// only what the CDB takes is asked for and stored. A command the unit
    /// will refuse without its data (no such LUN, transfer too long, LBA
    /// out of range, invalid CDB) is answered now: `Err` with the answer.
    async fn size_data_out(&mut self, task: &mut Task) -> Result<(), Response> {
        let Some(queue) = self.queue_for(task.lun).await else { return Err(self.no_such_lun(task)) };
        let disk = queue.device().disk();
        let block_size = disk.block_size();
        // A command that does not decode or validate is left to the core,
        // with no data: it answers the same error after the checks that
        // come first (unit attention, reservation conflict).
        let Ok(mut cmd) = lunar_scsi::Command::decode(&task.cdb) else {
            LimitCounters::bump(&self.shared.hits.refused_before_data);
            return Ok(());
        };
        let needed = cmd.data_out_len(block_size);
        task.scsi_write_len = Some(needed);
        if (task.edtl as usize) < needed {
            match lunar_scsi::cut_write(&task.cdb, task.edtl, block_size) {
                lunar_scsi::CutWrite::Cut(cdb) => {
                    task.cdb = cdb;
                    // A cut CDB decodes as the original did, but for its length.
                    let Ok(cut) = lunar_scsi::Command::decode(&task.cdb) else { return Ok(()) };
                    cmd = cut;
                }
                lunar_scsi::CutWrite::NotWholeBlocks => {
                    // INVALID FIELD IN INFORMATION UNIT (RFC 7143 11.4.7.2).
                    LimitCounters::bump(&self.shared.hits.refused_before_data);
                    let sense = lunar_scsi::Sense::new(lunar_scsi::SenseKey::IllegalRequest, 0x0e, 0x03);
                    return Err(Response::check_condition(sense.fixed()));
                }
                lunar_scsi::CutWrite::NotABlockWrite => {}
            }
        }
        if disk.validate(&cmd).is_err() {
            LimitCounters::bump(&self.shared.hits.refused_before_data);
            return Ok(());
        }
        match disk.data_out_checked(&cmd, task.edtl as usize) {
            Ok(n) => task.want = u32::try_from(n).unwrap_or(u32::MAX).min(task.edtl),
            Err(e) => {
                LimitCounters::bump(&self.shared.hits.refused_before_data);
                return Err(Response::check_condition(e.sense().fixed()));
            }
        }
        Ok(())
    }

    /// Sends the R2Ts a task may have now; one that finds no buffer space
    /// waits in `deferred` for completions to free some.
    fn solicit(&mut self, itt: u32) {
        let Some(task) = self.tasks.get_mut(&itt) else { return };
        let (r2ts, room) = task.next_r2ts(&self.params, &mut self.next_ttt, &mut self.buffers.budget, false);
        for r in r2ts {
            self.queue_out(Pdu::R2t(r));
        }
        if !room && !self.buffers.deferred.contains(&itt) {
            LimitCounters::bump(&self.shared.hits.buffer_waits);
            self.buffers.deferred.push_back(itt);
        }
    }

    /// Data-Out for a task gathering its data: checked against the
    /// sequence it belongs to (unsolicited, or an R2T's), stored, and the
    /// task submitted once its data is whole.
    pub(super) async fn on_data_out(&mut self, d: DataOut) -> Flow {
        tracing::trace!(
            itt = d.itt,
            ttt = d.ttt,
            data_sn = d.data_sn,
            offset = d.buffer_offset,
            len = d.data.len(),
            last = d.final_bit,
            "Data-Out"
        );
        let params = self.params.clone();
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            tracing::debug!(peer = %self.peer, itt = d.itt, "Data-Out for no task: ignored");
            return Flow::Continue;
        };
        if task.submitted {
            return Flow::Continue;
        }
        if d.data.len() as u32 > params.target_max_recv_data_segment_length {
            return self.reject_pdu(&Pdu::DataOut(d), RejectReason::ProtocolError);
        }
        if d.ttt == RESERVED_TAG {
            if d.data_sn != task.unsolicited_data_sn {
                return self.data_sn_error(d);
            }
            task.unsolicited_data_sn += 1;
            if !task.unsolicited_open || d.buffer_offset.saturating_add(d.data.len() as u32) > params.first_burst_length
            {
                return self.reject_pdu(&Pdu::DataOut(d), RejectReason::ProtocolError);
            }
            let Some(stored) = task.accept(d.buffer_offset, &d.data) else {
                return self.reject_pdu(&Pdu::DataOut(d), RejectReason::ProtocolError);
            };
            // Unasked-for data is held whatever the budget (it is bounded
            // by FirstBurstLength per command).
            task.reserved += u64::from(stored);
            self.buffers.budget.force(u64::from(stored));
            if d.final_bit {
                task.unsolicited_open = false;
            }
        } else {
            let Some(i) = task.solicited.iter().position(|s| s.ttt == d.ttt) else {
                return self.reject_pdu(&Pdu::DataOut(d), RejectReason::InvalidPduField);
            };
            let s = task.solicited[i];
            if d.data_sn != s.next_data_sn {
                return self.data_sn_error(d);
            }
            task.solicited[i].next_data_sn += 1;
            let end = d.buffer_offset.saturating_add(d.data.len() as u32);
            // Solicited data was counted against the budget by its R2T.
            if d.buffer_offset < s.offset || end > s.offset + s.len || task.accept(d.buffer_offset, &d.data).is_none() {
                return self.reject_pdu(&Pdu::DataOut(d), RejectReason::ProtocolError);
            }
            task.solicited[i].received += d.data.len() as u32;
            if d.final_bit {
                task.solicited.remove(i);
            }
        }
        if task.data_complete() && task.solicited.is_empty() && !task.unsolicited_open {
            if let Some(task) = self.tasks.remove(&d.itt) {
                return self.submit(task).await;
            }
            return Flow::Continue;
        }
        self.solicit(d.itt);
        Flow::Continue
    }

    /// A Data-Out out of sequence: at ErrorRecoveryLevel 0 the recovery is
    /// the session's (RFC 7143 §7.1.1, §7.3): reject it and drop the connection.
    fn data_sn_error(&mut self, d: DataOut) -> Flow {
        self.warn(format_args!(
            "Data-Out with a wrong DataSN {} (ITT {:#x}): dropping the connection",
            d.data_sn, d.itt
        ));
        let _ = self.reject_pdu(&Pdu::DataOut(d), RejectReason::ProtocolError);
        Flow::Close
    }

    /// A command with all its data: answered here if it was refused before
    /// its data, else handed to the core once its data-in has room in the
    /// connection's buffers (it waits in `deferred` otherwise, behind any
    /// task already waiting).
    async fn submit(&mut self, mut task: Task) -> Flow {
        let itt = task.itt;
        if let Some(response) = task.early.take() {
            task.submitted = true;
            self.tasks.insert(itt, task);
            return self.on_done(itt, response);
        }
        // A read waits behind the tasks already waiting; a write's data is
        // already here (its room taken), so it never waits.
        if task.read && (!self.buffers.deferred.is_empty() || !task.take_data_in(&mut self.buffers.budget, false)) {
            LimitCounters::bump(&self.shared.hits.buffer_waits);
            self.tasks.insert(itt, task);
            self.buffers.deferred.push_back(itt);
            return Flow::Continue;
        }
        self.submit_now(task).await
    }

    /// Hands a command with all its data to the core (or answers it here
    /// when its LUN does not exist).
    async fn submit_now(&mut self, mut task: Task) -> Flow {
        let itt = task.itt;
        let lun = task.lun;
        let Some(queue) = self.queue_for(lun).await else {
            let response = self.no_such_lun(&task);
            task.submitted = true;
            self.tasks.insert(itt, task);
            return self.on_done(itt, response);
        };
        let data = std::mem::take(&mut task.data);
        let tx = self.tx.clone();
        let req = lunar_core::request(u64::from(itt), lun, &task.cdb, data, move |response| {
            let _ = tx.send(Event::Done { itt, response });
        });
        task.submitted = true;
        self.tasks.insert(itt, task);
        queue.submit(req);
        Flow::Continue
    }

    /// INQUIRY, REPORT LUNS and others addressed to a LUN that does not
    /// exist (SPC-5 §4.6.4 and §6.7.2: peripheral qualifier 011b).
    fn no_such_lun(&self, task: &Task) -> Response {
        let luns = self.session.as_ref().map(|s| s.entry.core.luns()).unwrap_or_default();
        match lunar_scsi::answer_without_lun(&task.cdb, &luns) {
            Ok(data) => Response::good(data),
            Err(sense) => Response::check_condition(sense.fixed()),
        }
    }

    /// A command's completion: its Data-In and SCSI Response are queued
    /// (nothing for an aborted one), its room is given back once they are
    /// written, and task management waiting for it may be answered.
    pub(super) fn on_done(&mut self, itt: u32, response: Response) -> Flow {
        let Some(mut task) = self.tasks.remove(&itt) else { return Flow::Continue };
        self.buffers.release_after_write(task.reserved);
        self.tmfs_stop_waiting_for(itt);
        if !task.aborted {
            let write_len = task.scsi_write_len;
            let ans = answer(
                &mut task,
                response.status.code(),
                response.sense,
                response.data,
                write_len,
                self.params.initiator_max_recv_data_segment_length,
            );
            for d in ans.data_in {
                self.queue_out(Pdu::DataIn(d));
            }
            if let Some(r) = ans.response {
                self.queue_out(Pdu::ScsiResponse(r));
            }
        }
        self.finish_tmfs()
    }
}

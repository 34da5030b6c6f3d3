//! One SCSI command on a connection: gathering its data-out (immediate,
//! unsolicited, solicited by R2T) before it goes to the core, and turning
//! the core's response into Data-In and SCSI Response PDUs.

use bytes::Bytes;

use crate::params::NegotiatedParams;
use crate::pdu::{DataIn, R2t, ScsiResponse, ServiceResponse, RESERVED_TAG};

/// The next Target Transfer Tag from `counter` (R2Ts and pings share
/// it), never the reserved 0xffffffff (RFC 7143 §11.8.3).
pub(crate) fn next_tag(counter: &mut u32) -> u32 {
    *counter = counter.wrapping_add(1);
    if *counter == RESERVED_TAG {
        *counter = 1;
    }
    *counter
}

/// An outstanding R2T: the data sequence it asked for.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Solicited {
    pub ttt: u32,
    pub offset: u32,
    pub len: u32,
    pub received: u32,
    /// DataSN the next Data-Out of this sequence must carry (§11.7.5).
    pub next_data_sn: u32,
}

#[derive(Debug)]
pub(crate) struct Task {
    pub itt: u32,
    pub lun: u64,
    /// The raw LUN field, echoed in Data-In and R2T.
    pub lun_field: u64,
    pub cdb: Vec<u8>,
    pub read: bool,
    pub write: bool,
    /// Expected Data Transfer Length from the command.
    pub edtl: u32,
    /// Data-out to gather: what the CDB takes ([`lunar_scsi::Disk::data_out_expected`]),
    /// at most EDTL; zero when the command will fail without its data.
    /// Data the initiator sends beyond it (up to EDTL) is accepted and
    /// dropped, never stored.
    pub want: u32,
    /// Data-out gathered so far; grows as data arrives (never sized from
    /// an announced length), `want` bytes once complete.
    pub data: Vec<u8>,
    /// Bytes of data-out stored.
    pub received: u32,
    /// Bytes of the connection's buffer budget this task holds (solicited
    /// and unsolicited data-out, or room for its data-in).
    pub reserved: u64,
    /// Whether `reserved` covers all of `want` (taken before the first R2T).
    pub granted: bool,
    /// Unsolicited data still allowed (FirstBurstLength budget) and whether
    /// the unsolicited sequence is still open (command F bit 0).
    pub unsolicited_open: bool,
    /// Next offset not yet solicited.
    pub next_r2t_offset: u32,
    pub r2t_sn: u32,
    pub solicited: Vec<Solicited>,
    /// Handed to the core; waiting for its completion.
    pub submitted: bool,
    /// Aborted by task management: its completion sends nothing.
    pub aborted: bool,
    /// Data-In and R2T PDUs sent (ExpDataSN of the response).
    pub data_sn: u32,
    /// DataSN the next unsolicited Data-Out must carry.
    pub unsolicited_data_sn: u32,
    /// Data-out length the CDB asks for (writes), for residuals.
    pub scsi_write_len: Option<usize>,
    /// The answer of a command refused before its data-out was asked for:
    /// given once the initiator's unsolicited data has gone by.
    pub early: Option<lunar_core::Response>,
}

impl Task {
    /// The task of a command just received: no data-out asked for or
    /// gathered yet, nothing sent.
    pub fn new(itt: u32, lun: u64, lun_field: u64, cdb: Vec<u8>, read: bool, write: bool, edtl: u32) -> Task {
        Task {
            itt,
            lun,
            lun_field,
            cdb,
            read,
            write,
            edtl,
            want: 0,
            data: Vec::new(),
            received: 0,
            reserved: 0,
            granted: false,
            unsolicited_open: false,
            next_r2t_offset: 0,
            r2t_sn: 0,
            solicited: Vec::new(),
            submitted: false,
            aborted: false,
            data_sn: 0,
            unsolicited_data_sn: 0,
            scsi_write_len: None,
            early: None,
        }
    }

    pub fn data_complete(&self) -> bool {
        !self.write || self.received >= self.want
    }

    /// Accepts `data` at `offset`: stores the part below `want` and
    /// returns how many bytes it stored, or `None` if the data falls
    /// outside the expected transfer (a protocol error).
    pub fn accept(&mut self, offset: u32, data: &[u8]) -> Option<u32> {
        let len = u32::try_from(data.len()).ok()?;
        let end = offset.checked_add(len)?;
        if end > self.edtl {
            return None;
        }
        let keep_end = end.min(self.want);
        if offset >= keep_end {
            return Some(0);
        }
        let (from, to) = (offset as usize, keep_end as usize);
        if self.data.len() < to {
            self.data.resize(to, 0);
        }
        self.data[from..to].copy_from_slice(&data[..to - from]);
        let stored = keep_end - offset;
        self.received = self.received.saturating_add(stored).min(self.want);
        Some(stored)
    }

    /// Room for a read's data-in (at most one command's largest transfer,
    /// and no more than EDTL); false if the budget has none now.
    pub fn take_data_in(&mut self, budget: &mut super::limits::Budget, overdraw: bool) -> bool {
        if !self.read {
            return true;
        }
        let n = u64::from(self.edtl).min(lunar_scsi::MAX_TRANSFER_BYTES);
        if !budget.take(self.reserved, n, overdraw) {
            return false;
        }
        self.reserved += n;
        true
    }

    /// R2Ts to send now to solicit the rest of the data (RFC 7143 §10.8),
    /// keeping at most MaxOutstandingR2T outstanding. Before the first,
    /// the whole of the data still to come is taken from the connection's
    /// `budget` (so that a task holding buffer space never waits for more,
    /// and tasks cannot hold each other up): the bool is false when the
    /// budget has no room now (the task must wait).
    pub fn next_r2ts(
        &mut self,
        params: &NegotiatedParams,
        next_ttt: &mut u32,
        budget: &mut super::limits::Budget,
        overdraw: bool,
    ) -> (Vec<R2t>, bool) {
        let mut out = Vec::new();
        if self.unsolicited_open {
            return (out, true);
        }
        if !self.granted && self.next_r2t_offset < self.want {
            let rest = u64::from(self.want).saturating_sub(self.reserved);
            if !budget.take(self.reserved, rest, overdraw) {
                return (out, false);
            }
            self.reserved += rest;
            self.granted = true;
        }
        while self.next_r2t_offset < self.want && self.solicited.len() < params.max_outstanding_r2t.max(1) as usize {
            let len = (self.want - self.next_r2t_offset).min(params.max_burst_length);
            let ttt = next_tag(next_ttt);
            self.solicited.push(Solicited { ttt, offset: self.next_r2t_offset, len, received: 0, next_data_sn: 0 });
            out.push(R2t {
                lun: self.lun_field,
                itt: self.itt,
                ttt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                r2t_sn: self.r2t_sn,
                buffer_offset: self.next_r2t_offset,
                desired_data_transfer_length: len,
            });
            self.r2t_sn += 1;
            self.data_sn += 1;
            self.next_r2t_offset += len;
        }
        (out, true)
    }
}

/// The PDUs answering a completed command: Data-In PDUs (the last one may
/// carry the status) and, when needed, a SCSI Response.
pub(crate) struct Answer {
    pub data_in: Vec<DataIn>,
    pub response: Option<ScsiResponse>,
}

/// Residual of a transfer: (overflow, underflow, count) per RFC 7143 §11.4.5.
fn residual(expected: u32, actual: usize) -> (bool, bool, u32) {
    let actual = u32::try_from(actual).unwrap_or(u32::MAX);
    if actual > expected {
        (true, false, actual - expected)
    } else if actual < expected {
        (false, true, expected - actual)
    } else {
        (false, false, 0)
    }
}

/// Builds the answer. `scsi_len` is the transfer length the command really
/// has (data-in produced, or data-out the CDB asked for); `status`/`sense`
/// come from the core. Sequence numbers are filled in by the connection.
///
/// The data-in is the backend's buffer itself: each Data-In PDU's data is
/// a slice of it, never a copy, down to the socket (see
/// [`super::output::Output`]).
pub(crate) fn answer(
    task: &mut Task,
    status: u8,
    sense: Vec<u8>,
    mut data: Vec<u8>,
    scsi_write_len: Option<usize>,
    max_pdu: u32,
) -> Answer {
    let (overflow, underflow, count) = if task.read {
        residual(task.edtl, data.len())
    } else if let Some(w) = scsi_write_len {
        residual(task.edtl, w)
    } else {
        residual(task.edtl, 0)
    };
    let (overflow, underflow, count) =
        if task.read || task.write || task.edtl > 0 { (overflow, underflow, count) } else { (false, false, 0) };
    data.truncate(task.edtl as usize);
    if !task.read {
        data.clear();
    }
    let collapse = status == 0 && sense.is_empty() && !data.is_empty();
    let max = max_pdu.max(512) as usize;
    // Takes the Vec's buffer as it is (no copy); each PDU's data is a
    // slice of it, sharing it.
    let mut rest = Bytes::from(data);
    let n = rest.len().div_ceil(max);
    let mut data_in = Vec::with_capacity(n);
    for i in 0..n {
        let last = i + 1 == n;
        let chunk = if last { std::mem::take(&mut rest) } else { rest.split_to(max) };
        let with_status = last && collapse;
        data_in.push(DataIn {
            final_bit: last,
            acknowledge: false,
            overflow: with_status && overflow,
            underflow: with_status && underflow,
            status: with_status.then_some(status),
            lun: if with_status { 0 } else { task.lun_field },
            itt: task.itt,
            ttt: RESERVED_TAG,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data_sn: task.data_sn,
            buffer_offset: (i * max) as u32,
            residual_count: if with_status { count } else { 0 },
            data: chunk,
        });
        task.data_sn += 1;
    }
    let response = (!collapse).then(|| ScsiResponse {
        bidi_read_overflow: false,
        bidi_read_underflow: false,
        overflow,
        underflow,
        response: ServiceResponse::CommandCompleted,
        status,
        itt: task.itt,
        snack_tag: 0,
        stat_sn: 0,
        exp_cmd_sn: 0,
        max_cmd_sn: 0,
        exp_data_sn: task.data_sn,
        bidi_read_residual_count: 0,
        residual_count: count,
        sense,
        response_data: Vec::new(),
    });
    Answer { data_in, response }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A READ task waiting for its answer.
    pub(crate) fn read_task(itt: u32, edtl: u32) -> Task {
        Task { submitted: true, ..Task::new(itt, 0, 0, vec![0x88; 16], true, false, edtl) }
    }

    #[test]
    fn data_in_pdus_are_slices_of_the_response() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let expected = data.clone();
        let ptr = data.as_ptr();
        let mut task = read_task(3, 12_000);
        let ans = answer(&mut task, 0, Vec::new(), data, None, 4096);
        let lens: Vec<usize> = ans.data_in.iter().map(|d| d.data.len()).collect();
        assert_eq!(lens, [4096, 4096, 1808]);
        for (i, d) in ans.data_in.iter().enumerate() {
            assert_eq!(d.data.as_ptr(), ptr.wrapping_add(i * 4096), "PDU {i} copied");
            assert_eq!(d.buffer_offset as usize, i * 4096);
            assert_eq!(d.data_sn, i as u32);
            assert_eq!(&d.data[..], &expected[i * 4096..i * 4096 + d.data.len()]);
        }
        let last = ans.data_in.last().expect("data-in");
        assert_eq!((last.final_bit, last.status, last.underflow, last.residual_count), (true, Some(0), true, 2000));
        assert!(ans.response.is_none());
    }
}

//! SCSI Data-Out (RFC 7143 §11.7) and SCSI Data-In (§11.7).

use bytes::Bytes;
use zerocopy::{transmute, transmute_ref};

use super::bhs::*;
use super::header::{DataInHeader, DataOutHeader, Framing, FINAL};
use super::{invalid, DataSegment, PduCodec, PduError};

/// SCSI Data-Out (initiator→target, opcode 0x05, RFC 7143 §11.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataOut {
    /// F: last PDU of the sequence (unsolicited burst or R2T answer).
    pub final_bit: bool,
    pub lun: u64,
    pub itt: u32,
    /// TTT of the R2T answered, or 0xffffffff for unsolicited data.
    pub ttt: u32,
    pub exp_stat_sn: u32,
    /// DataSN within the sequence (§11.7.5).
    pub data_sn: u32,
    /// Byte offset of this data within the command's buffer (§11.7.6).
    pub buffer_offset: u32,
    pub data: Vec<u8>,
}

impl PduCodec for DataOut {
    const OPCODE: Opcode = Opcode::DataOut;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        let w: &DataOutHeader = transmute_ref!(h);
        Ok(DataOut {
            final_bit: w.flags & FINAL != 0,
            lun: w.lun.get(),
            itt: w.itt.get(),
            ttt: w.ttt.get(),
            exp_stat_sn: w.exp_stat_sn.get(),
            data_sn: w.data_sn.get(),
            buffer_offset: w.buffer_offset.get(),
            data: data.to_vec(),
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(DataOutHeader {
            opcode,
            flags: if self.final_bit { FINAL } else { 0 },
            _reserved1: [0; 2],
            framing,
            lun: self.lun.into(),
            itt: self.itt.into(),
            ttt: self.ttt.into(),
            _reserved2: [0; 4],
            exp_stat_sn: self.exp_stat_sn.into(),
            _reserved3: [0; 4],
            data_sn: self.data_sn.into(),
            buffer_offset: self.buffer_offset.into(),
            _reserved4: [0; 4],
        })
    }

    fn data_segment(&self) -> DataSegment<'_> {
        DataSegment::Borrowed(&self.data)
    }
}

/// SCSI Data-In (target→initiator, opcode 0x25, RFC 7143 §11.7).
///
/// With the S bit (`status` is `Some`) the PDU also carries the command's
/// status, so no SCSI Response follows (§11.7.4, "phase collapse").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataIn {
    pub final_bit: bool,
    /// A: the initiator must acknowledge with a DataACK SNACK (ERL ≥ 1).
    pub acknowledge: bool,
    /// O: residual overflow, only meaningful with status.
    pub overflow: bool,
    /// U: residual underflow, only meaningful with status.
    pub underflow: bool,
    /// SCSI status, present when the S bit is set.
    pub status: Option<u8>,
    pub lun: u64,
    pub itt: u32,
    /// 0xffffffff unless `acknowledge` is set.
    pub ttt: u32,
    /// StatSN, meaningful only with status (reserved otherwise).
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual_count: u32,
    /// The data segment, shared with whoever produced it (a read's
    /// data-in from the backend: each PDU of a read is a slice of the one
    /// buffer), so that encoding it for the server's output queue takes a
    /// reference instead of a copy.
    pub data: Bytes,
}

impl PduCodec for DataIn {
    const OPCODE: Opcode = Opcode::DataIn;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        let w: &DataInHeader = transmute_ref!(h);
        let flags = w.flags;
        let has_status = flags & DataInHeader::STATUS != 0;
        let d = DataIn {
            final_bit: flags & FINAL != 0,
            acknowledge: flags & DataInHeader::ACKNOWLEDGE != 0,
            overflow: flags & DataInHeader::OVERFLOW != 0,
            underflow: flags & DataInHeader::UNDERFLOW != 0,
            status: has_status.then_some(w.status),
            lun: w.lun.get(),
            itt: w.itt.get(),
            ttt: w.ttt.get(),
            stat_sn: w.stat_sn.get(),
            exp_cmd_sn: w.exp_cmd_sn.get(),
            max_cmd_sn: w.max_cmd_sn.get(),
            data_sn: w.data_sn.get(),
            buffer_offset: w.buffer_offset.get(),
            residual_count: w.residual_count.get(),
            data: Bytes::copy_from_slice(data),
        };
        // §11.7.1: S may be set only with F; O and U are exclusive.
        if d.status.is_some() && !d.final_bit {
            return Err(invalid(Self::OPCODE, "S without F", flags));
        }
        if d.overflow && d.underflow {
            return Err(invalid(Self::OPCODE, "flags", flags));
        }
        Ok(d)
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        let mut flags = 0u8;
        if self.final_bit {
            flags |= FINAL;
        }
        if self.acknowledge {
            flags |= DataInHeader::ACKNOWLEDGE;
        }
        if self.overflow {
            flags |= DataInHeader::OVERFLOW;
        }
        if self.underflow {
            flags |= DataInHeader::UNDERFLOW;
        }
        if self.status.is_some() {
            flags |= DataInHeader::STATUS;
        }
        transmute!(DataInHeader {
            opcode,
            flags,
            _reserved1: 0,
            status: self.status.unwrap_or(0),
            framing,
            lun: self.lun.into(),
            itt: self.itt.into(),
            ttt: self.ttt.into(),
            stat_sn: self.stat_sn.into(),
            exp_cmd_sn: self.exp_cmd_sn.into(),
            max_cmd_sn: self.max_cmd_sn.into(),
            data_sn: self.data_sn.into(),
            buffer_offset: self.buffer_offset.into(),
            residual_count: self.residual_count.into(),
        })
    }

    fn data_segment(&self) -> DataSegment<'_> {
        DataSegment::Shared(&self.data)
    }
}

//! SCSI Data-Out (RFC 7143 §11.7) and SCSI Data-In (§11.7).

use std::borrow::Cow;

use super::bhs::*;
use super::{invalid, PduCodec, PduError};

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
        Ok(DataOut {
            final_bit: bit(h, 1, 0x80),
            lun: get_u64(h, 8),
            itt: get_u32(h, 16),
            ttt: get_u32(h, 20),
            exp_stat_sn: get_u32(h, 28),
            data_sn: get_u32(h, 36),
            buffer_offset: get_u32(h, 40),
            data: data.to_vec(),
        })
    }

    fn encode_header(&self, h: &mut [u8; BHS_LEN]) {
        set_bit(h, 1, 0x80, self.final_bit);
        put_u64(h, 8, self.lun);
        put_u32(h, 16, self.itt);
        put_u32(h, 20, self.ttt);
        put_u32(h, 28, self.exp_stat_sn);
        put_u32(h, 36, self.data_sn);
        put_u32(h, 40, self.buffer_offset);
    }

    fn data_segment(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
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
    pub data: Vec<u8>,
}

impl PduCodec for DataIn {
    const OPCODE: Opcode = Opcode::DataIn;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        let flags = get_u8(h, 1);
        let has_status = flags & 0x01 != 0;
        let d = DataIn {
            final_bit: flags & 0x80 != 0,
            acknowledge: flags & 0x40 != 0,
            overflow: flags & 0x04 != 0,
            underflow: flags & 0x02 != 0,
            status: has_status.then(|| get_u8(h, 3)),
            lun: get_u64(h, 8),
            itt: get_u32(h, 16),
            ttt: get_u32(h, 20),
            stat_sn: get_u32(h, 24),
            exp_cmd_sn: get_u32(h, 28),
            max_cmd_sn: get_u32(h, 32),
            data_sn: get_u32(h, 36),
            buffer_offset: get_u32(h, 40),
            residual_count: get_u32(h, 44),
            data: data.to_vec(),
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

    fn encode_header(&self, h: &mut [u8; BHS_LEN]) {
        let mut flags = 0u8;
        if self.final_bit {
            flags |= 0x80;
        }
        if self.acknowledge {
            flags |= 0x40;
        }
        if self.overflow {
            flags |= 0x04;
        }
        if self.underflow {
            flags |= 0x02;
        }
        if self.status.is_some() {
            flags |= 0x01;
        }
        put_u8(h, 1, flags);
        put_u8(h, 3, self.status.unwrap_or(0));
        put_u64(h, 8, self.lun);
        put_u32(h, 16, self.itt);
        put_u32(h, 20, self.ttt);
        put_u32(h, 24, self.stat_sn);
        put_u32(h, 28, self.exp_cmd_sn);
        put_u32(h, 32, self.max_cmd_sn);
        put_u32(h, 36, self.data_sn);
        put_u32(h, 40, self.buffer_offset);
        put_u32(h, 44, self.residual_count);
    }

    fn data_segment(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
}

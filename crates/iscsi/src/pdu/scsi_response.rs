//! SCSI Response (RFC 7143 §11.4).

use zerocopy::{transmute, transmute_ref};

use super::bhs::*;
use super::header::{Framing, ScsiResponseHeader, FINAL};
use super::{invalid, DataSegment, PduCodec, PduError};

/// iSCSI service response (RFC 7143 §11.4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceResponse {
    /// 0x00: command completed at target (Status is valid).
    CommandCompleted,
    /// 0x01: target failure.
    TargetFailure,
    /// 0x80-0xff: vendor specific; other values are reserved.
    Other(u8),
}

impl ServiceResponse {
    pub fn code(self) -> u8 {
        match self {
            ServiceResponse::CommandCompleted => 0,
            ServiceResponse::TargetFailure => 1,
            ServiceResponse::Other(v) => v,
        }
    }

    pub fn from_code(v: u8) -> ServiceResponse {
        match v {
            0 => ServiceResponse::CommandCompleted,
            1 => ServiceResponse::TargetFailure,
            v => ServiceResponse::Other(v),
        }
    }
}

/// SCSI Response (target→initiator, opcode 0x21, RFC 7143 §11.4).
///
/// The data segment carries SenseLength (2 bytes), the sense data, and the
/// iSCSI response data (§11.4.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiResponse {
    /// o: bidirectional read residual overflow.
    pub bidi_read_overflow: bool,
    /// u: bidirectional read residual underflow.
    pub bidi_read_underflow: bool,
    /// O: residual overflow (§11.4.5.1).
    pub overflow: bool,
    /// U: residual underflow.
    pub underflow: bool,
    pub response: ServiceResponse,
    /// SCSI status byte (SAM), valid when `response` is CommandCompleted.
    pub status: u8,
    pub itt: u32,
    /// SNACK Tag (§11.4.4), zero unless answering an R-Data SNACK.
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// Number of Data-In PDUs sent for the command (§11.4.6).
    pub exp_data_sn: u32,
    pub bidi_read_residual_count: u32,
    pub residual_count: u32,
    /// Sense data (SPC), empty when none.
    pub sense: Vec<u8>,
    /// iSCSI response data after the sense data, usually empty.
    pub response_data: Vec<u8>,
}

impl PduCodec for ScsiResponse {
    const OPCODE: Opcode = Opcode::ScsiResponse;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        let w: &ScsiResponseHeader = transmute_ref!(h);
        let flags = w.flags;
        let (sense, response_data) = if data.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let (len, rest) =
                data.split_first_chunk::<2>().ok_or_else(|| invalid(Self::OPCODE, "SenseLength", data.len() as u32))?;
            let sense_len = usize::from(u16::from_be_bytes(*len));
            let (sense, response) = rest
                .split_at_checked(sense_len)
                .ok_or_else(|| invalid(Self::OPCODE, "SenseLength", sense_len as u32))?;
            (sense.to_vec(), response.to_vec())
        };
        let r = ScsiResponse {
            bidi_read_overflow: flags & ScsiResponseHeader::BIDI_READ_OVERFLOW != 0,
            bidi_read_underflow: flags & ScsiResponseHeader::BIDI_READ_UNDERFLOW != 0,
            overflow: flags & ScsiResponseHeader::OVERFLOW != 0,
            underflow: flags & ScsiResponseHeader::UNDERFLOW != 0,
            response: ServiceResponse::from_code(w.response),
            status: w.status,
            itt: w.itt.get(),
            snack_tag: w.snack_tag.get(),
            stat_sn: w.stat_sn.get(),
            exp_cmd_sn: w.exp_cmd_sn.get(),
            max_cmd_sn: w.max_cmd_sn.get(),
            exp_data_sn: w.exp_data_sn.get(),
            bidi_read_residual_count: w.bidi_read_residual_count.get(),
            residual_count: w.residual_count.get(),
            sense,
            response_data,
        };
        // §11.4.1: O and U (and o and u) are mutually exclusive.
        if (r.overflow && r.underflow) || (r.bidi_read_overflow && r.bidi_read_underflow) {
            return Err(invalid(Self::OPCODE, "flags", flags));
        }
        Ok(r)
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        let mut flags = FINAL;
        if self.bidi_read_overflow {
            flags |= ScsiResponseHeader::BIDI_READ_OVERFLOW;
        }
        if self.bidi_read_underflow {
            flags |= ScsiResponseHeader::BIDI_READ_UNDERFLOW;
        }
        if self.overflow {
            flags |= ScsiResponseHeader::OVERFLOW;
        }
        if self.underflow {
            flags |= ScsiResponseHeader::UNDERFLOW;
        }
        transmute!(ScsiResponseHeader {
            opcode,
            flags,
            response: self.response.code(),
            status: self.status,
            framing,
            _reserved1: [0; 8],
            itt: self.itt.into(),
            snack_tag: self.snack_tag.into(),
            stat_sn: self.stat_sn.into(),
            exp_cmd_sn: self.exp_cmd_sn.into(),
            max_cmd_sn: self.max_cmd_sn.into(),
            exp_data_sn: self.exp_data_sn.into(),
            bidi_read_residual_count: self.bidi_read_residual_count.into(),
            residual_count: self.residual_count.into(),
        })
    }

    fn data_segment(&self) -> DataSegment<'_> {
        if self.sense.is_empty() && self.response_data.is_empty() {
            return DataSegment::Borrowed(&[]);
        }
        let sense_len = u16::try_from(self.sense.len()).unwrap_or(u16::MAX);
        let sense = self.sense.get(..usize::from(sense_len)).unwrap_or_default();
        let mut out = Vec::with_capacity(2 + sense.len() + self.response_data.len());
        out.extend_from_slice(&sense_len.to_be_bytes());
        out.extend_from_slice(sense);
        out.extend_from_slice(&self.response_data);
        DataSegment::Owned(out)
    }
}

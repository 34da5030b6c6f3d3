//! Reject PDU (RFC 7143 §11.17).

use zerocopy::{transmute, transmute_ref};

use super::bhs::*;
use super::header::{Framing, RejectHeader, FINAL};
use super::{DataSegment, PduCodec, PduError};

/// Reject reason codes (RFC 7143 §11.17.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// 0x02: data (payload) digest error; the initiator may resend.
    DataDigestError,
    /// 0x03: SNACK reject.
    SnackReject,
    /// 0x04: protocol error (e.g., SNACK for a status already acknowledged).
    ProtocolError,
    /// 0x05: command not supported.
    CommandNotSupported,
    /// 0x06: immediate command reject, too many immediate commands.
    ImmediateCommandReject,
    /// 0x07: task in progress.
    TaskInProgress,
    /// 0x08: invalid data ack.
    InvalidDataAck,
    /// 0x09: invalid PDU field.
    InvalidPduField,
    /// 0x0a: long operation reject, out of resources to generate a TTT.
    LongOperationReject,
    /// 0x0b: deprecated (was "negotiation reset").
    Deprecated,
    /// 0x0c: waiting for logout.
    WaitingForLogout,
    /// Any other value, kept for round trips.
    Other(u8),
}

impl RejectReason {
    /// The wire value.
    pub fn code(self) -> u8 {
        match self {
            RejectReason::DataDigestError => 0x02,
            RejectReason::SnackReject => 0x03,
            RejectReason::ProtocolError => 0x04,
            RejectReason::CommandNotSupported => 0x05,
            RejectReason::ImmediateCommandReject => 0x06,
            RejectReason::TaskInProgress => 0x07,
            RejectReason::InvalidDataAck => 0x08,
            RejectReason::InvalidPduField => 0x09,
            RejectReason::LongOperationReject => 0x0a,
            RejectReason::Deprecated => 0x0b,
            RejectReason::WaitingForLogout => 0x0c,
            RejectReason::Other(v) => v,
        }
    }

    /// The reason for a wire value.
    pub fn from_code(v: u8) -> RejectReason {
        match v {
            0x02 => RejectReason::DataDigestError,
            0x03 => RejectReason::SnackReject,
            0x04 => RejectReason::ProtocolError,
            0x05 => RejectReason::CommandNotSupported,
            0x06 => RejectReason::ImmediateCommandReject,
            0x07 => RejectReason::TaskInProgress,
            0x08 => RejectReason::InvalidDataAck,
            0x09 => RejectReason::InvalidPduField,
            0x0a => RejectReason::LongOperationReject,
            0x0b => RejectReason::Deprecated,
            0x0c => RejectReason::WaitingForLogout,
            v => RejectReason::Other(v),
        }
    }
}

/// Reject (target→initiator, opcode 0x3f, RFC 7143 §11.17). The data
/// segment holds the complete header of the rejected PDU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    pub reason: RejectReason,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// DataSN/R2TSN, only for rejected Data/R2T SNACKs; otherwise reserved.
    pub data_sn_or_r2t_sn: u32,
    /// The rejected PDU's header (BHS, and AHS if any).
    pub header: Vec<u8>,
}

impl Reject {
    /// A Reject of `rejected` for `reason`; the connection fills in the
    /// sequence numbers.
    pub fn of(rejected: &Bhs, reason: RejectReason) -> Reject {
        Reject {
            reason,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data_sn_or_r2t_sn: 0,
            header: rejected.raw().to_vec(),
        }
    }
}

impl PduCodec for Reject {
    const OPCODE: Opcode = Opcode::Reject;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        let w: &RejectHeader = transmute_ref!(h);
        Ok(Reject {
            reason: RejectReason::from_code(w.reason),
            stat_sn: w.stat_sn.get(),
            exp_cmd_sn: w.exp_cmd_sn.get(),
            max_cmd_sn: w.max_cmd_sn.get(),
            data_sn_or_r2t_sn: w.data_sn_or_r2t_sn.get(),
            header: data.to_vec(),
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(RejectHeader {
            opcode,
            flags: FINAL,
            reason: self.reason.code(),
            _reserved1: 0,
            framing,
            _reserved2: [0; 8],
            itt: RESERVED_TAG.into(),
            _reserved3: [0; 4],
            stat_sn: self.stat_sn.into(),
            exp_cmd_sn: self.exp_cmd_sn.into(),
            max_cmd_sn: self.max_cmd_sn.into(),
            data_sn_or_r2t_sn: self.data_sn_or_r2t_sn.into(),
            _reserved4: [0; 8],
        })
    }

    fn data_segment(&self) -> DataSegment<'_> {
        DataSegment::Borrowed(&self.header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for v in 0..=255u8 {
            assert_eq!(RejectReason::from_code(v).code(), v);
        }
        assert_eq!(RejectReason::ProtocolError.code(), 0x04);
        assert_eq!(RejectReason::CommandNotSupported.code(), 0x05);
        assert_eq!(RejectReason::InvalidPduField.code(), 0x09);
        assert_eq!(RejectReason::DataDigestError.code(), 0x02);
    }
}

//! SNACK Request (RFC 7143 §11.16).
//!
//! Lunar runs at ErrorRecoveryLevel 0, where the initiator must not send
//! SNACKs; the PDU is decoded so that it can be answered with a Reject
//! (see [`super::Pdu::reject_at_target_erl0`]).

use zerocopy::{transmute, transmute_ref};

use super::bhs::*;
use super::header::{Framing, SnackRequestHeader, FINAL};
use super::{expect_no_data, PduCodec, PduError};

/// SNACK Request (initiator→target, opcode 0x10, RFC 7143 §11.16).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnackRequest {
    /// SNACK type (§11.16.1): 0 Data/R2T, 1 Status, 2 DataACK, 3 R-Data.
    pub snack_type: u8,
    pub lun: u64,
    pub itt: u32,
    /// TTT (DataACK) or SNACK Tag (R-Data), else reserved.
    pub ttt_or_snack_tag: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

impl PduCodec for SnackRequest {
    const OPCODE: Opcode = Opcode::SnackRequest;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        expect_no_data(Self::OPCODE, data)?;
        let w: &SnackRequestHeader = transmute_ref!(h);
        Ok(SnackRequest {
            snack_type: w.snack_type & SnackRequestHeader::TYPE_MASK,
            lun: w.lun.get(),
            itt: w.itt.get(),
            ttt_or_snack_tag: w.ttt_or_snack_tag.get(),
            exp_stat_sn: w.exp_stat_sn.get(),
            beg_run: w.beg_run.get(),
            run_length: w.run_length.get(),
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(SnackRequestHeader {
            opcode,
            snack_type: FINAL | (self.snack_type & SnackRequestHeader::TYPE_MASK),
            _reserved1: [0; 2],
            framing,
            lun: self.lun.into(),
            itt: self.itt.into(),
            ttt_or_snack_tag: self.ttt_or_snack_tag.into(),
            _reserved2: [0; 4],
            exp_stat_sn: self.exp_stat_sn.into(),
            _reserved3: [0; 8],
            beg_run: self.beg_run.into(),
            run_length: self.run_length.into(),
        })
    }
}

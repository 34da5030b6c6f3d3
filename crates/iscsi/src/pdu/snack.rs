//! SNACK Request (RFC 7143 §11.16).
//!
//! Lunar runs at ErrorRecoveryLevel 0, where the initiator must not send
//! SNACKs; the PDU is decoded so that it can be answered with a Reject
//! (see [`super::Pdu::reject_at_target_erl0`]).

use super::bhs::*;
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
        Ok(SnackRequest {
            snack_type: get_u8(h, 1) & 0x0f,
            lun: get_u64(h, 8),
            itt: get_u32(h, 16),
            ttt_or_snack_tag: get_u32(h, 20),
            exp_stat_sn: get_u32(h, 28),
            beg_run: get_u32(h, 40),
            run_length: get_u32(h, 44),
        })
    }

    fn encode_header(&self, h: &mut [u8; BHS_LEN]) {
        put_u8(h, 1, 0x80 | (self.snack_type & 0x0f));
        put_u64(h, 8, self.lun);
        put_u32(h, 16, self.itt);
        put_u32(h, 20, self.ttt_or_snack_tag);
        put_u32(h, 28, self.exp_stat_sn);
        put_u32(h, 40, self.beg_run);
        put_u32(h, 44, self.run_length);
    }
}

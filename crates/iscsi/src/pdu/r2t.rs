//! Ready To Transfer (RFC 7143 §11.8).

use zerocopy::{transmute, transmute_ref};

use super::bhs::*;
use super::header::{Framing, R2tHeader, FINAL};
use super::{expect_no_data, PduCodec, PduError};

/// R2T (target→initiator, opcode 0x31, RFC 7143 §11.8): asks for
/// `desired_data_transfer_length` bytes of write data at `buffer_offset`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    /// Tag the initiator copies into the Data-Out PDUs that answer.
    pub ttt: u32,
    /// The next StatSN; the R2T does not advance it.
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_data_transfer_length: u32,
}

impl PduCodec for R2t {
    const OPCODE: Opcode = Opcode::R2t;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        expect_no_data(Self::OPCODE, data)?;
        let w: &R2tHeader = transmute_ref!(h);
        Ok(R2t {
            lun: w.lun.get(),
            itt: w.itt.get(),
            ttt: w.ttt.get(),
            stat_sn: w.stat_sn.get(),
            exp_cmd_sn: w.exp_cmd_sn.get(),
            max_cmd_sn: w.max_cmd_sn.get(),
            r2t_sn: w.r2t_sn.get(),
            buffer_offset: w.buffer_offset.get(),
            desired_data_transfer_length: w.desired_data_transfer_length.get(),
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(R2tHeader {
            opcode,
            flags: FINAL,
            _reserved1: [0; 2],
            framing,
            lun: self.lun.into(),
            itt: self.itt.into(),
            ttt: self.ttt.into(),
            stat_sn: self.stat_sn.into(),
            exp_cmd_sn: self.exp_cmd_sn.into(),
            max_cmd_sn: self.max_cmd_sn.into(),
            r2t_sn: self.r2t_sn.into(),
            buffer_offset: self.buffer_offset.into(),
            desired_data_transfer_length: self.desired_data_transfer_length.into(),
        })
    }
}

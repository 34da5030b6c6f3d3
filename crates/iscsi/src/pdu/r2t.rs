//! Ready To Transfer (RFC 7143 §11.8).

use super::bhs::*;
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
        Ok(R2t {
            lun: get_u64(h, 8),
            itt: get_u32(h, 16),
            ttt: get_u32(h, 20),
            stat_sn: get_u32(h, 24),
            exp_cmd_sn: get_u32(h, 28),
            max_cmd_sn: get_u32(h, 32),
            r2t_sn: get_u32(h, 36),
            buffer_offset: get_u32(h, 40),
            desired_data_transfer_length: get_u32(h, 44),
        })
    }

    fn encode_header(&self, h: &mut [u8; BHS_LEN]) {
        put_u8(h, 1, 0x80);
        put_u64(h, 8, self.lun);
        put_u32(h, 16, self.itt);
        put_u32(h, 20, self.ttt);
        put_u32(h, 24, self.stat_sn);
        put_u32(h, 28, self.exp_cmd_sn);
        put_u32(h, 32, self.max_cmd_sn);
        put_u32(h, 36, self.r2t_sn);
        put_u32(h, 40, self.buffer_offset);
        put_u32(h, 44, self.desired_data_transfer_length);
    }
}

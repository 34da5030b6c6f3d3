//! Text Request (RFC 7143 §11.10) and Text Response (§11.11).

use std::borrow::Cow;

use super::bhs::*;
use super::{invalid, PduCodec, PduError};

/// Text Request (initiator→target, opcode 0x04, RFC 7143 §11.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextRequest {
    pub immediate: bool,
    /// F: last PDU of the request.
    pub final_bit: bool,
    /// C: the text continues in the next PDU (§11.10.2).
    pub continue_bit: bool,
    pub lun: u64,
    pub itt: u32,
    /// 0xffffffff for a new request, else the TTT of the Text Response
    /// being continued (§11.10.4).
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// `key=value\0` pairs (§6).
    pub data: Vec<u8>,
}

impl PduCodec for TextRequest {
    const OPCODE: Opcode = Opcode::TextRequest;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        let flags = get_u8(h, 1);
        let r = TextRequest {
            immediate: bit(h, 0, 0x40),
            final_bit: flags & 0x80 != 0,
            continue_bit: flags & 0x40 != 0,
            lun: get_u64(h, 8),
            itt: get_u32(h, 16),
            ttt: get_u32(h, 20),
            cmd_sn: get_u32(h, 24),
            exp_stat_sn: get_u32(h, 28),
            data: data.to_vec(),
        };
        // §11.10.2: F and C must not both be set.
        if r.final_bit && r.continue_bit {
            return Err(invalid(Self::OPCODE, "F and C", flags));
        }
        Ok(r)
    }

    fn encode_header(&self, h: &mut [u8; BHS_LEN]) {
        set_bit(h, 1, 0x80, self.final_bit);
        set_bit(h, 1, 0x40, self.continue_bit);
        put_u64(h, 8, self.lun);
        put_u32(h, 16, self.itt);
        put_u32(h, 20, self.ttt);
        put_u32(h, 24, self.cmd_sn);
        put_u32(h, 28, self.exp_stat_sn);
    }

    fn immediate(&self) -> bool {
        self.immediate
    }

    fn data_segment(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
}

/// Text Response (target→initiator, opcode 0x24, RFC 7143 §11.11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextResponse {
    pub final_bit: bool,
    pub continue_bit: bool,
    pub lun: u64,
    pub itt: u32,
    /// 0xffffffff on the final response, else a tag the initiator returns
    /// to fetch more (§11.11.4).
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data: Vec<u8>,
}

impl PduCodec for TextResponse {
    const OPCODE: Opcode = Opcode::TextResponse;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        let flags = get_u8(h, 1);
        let r = TextResponse {
            final_bit: flags & 0x80 != 0,
            continue_bit: flags & 0x40 != 0,
            lun: get_u64(h, 8),
            itt: get_u32(h, 16),
            ttt: get_u32(h, 20),
            stat_sn: get_u32(h, 24),
            exp_cmd_sn: get_u32(h, 28),
            max_cmd_sn: get_u32(h, 32),
            data: data.to_vec(),
        };
        if r.final_bit && r.continue_bit {
            return Err(invalid(Self::OPCODE, "F and C", flags));
        }
        Ok(r)
    }

    fn encode_header(&self, h: &mut [u8; BHS_LEN]) {
        set_bit(h, 1, 0x80, self.final_bit);
        set_bit(h, 1, 0x40, self.continue_bit);
        put_u64(h, 8, self.lun);
        put_u32(h, 16, self.itt);
        put_u32(h, 20, self.ttt);
        put_u32(h, 24, self.stat_sn);
        put_u32(h, 28, self.exp_cmd_sn);
        put_u32(h, 32, self.max_cmd_sn);
    }

    fn data_segment(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
}

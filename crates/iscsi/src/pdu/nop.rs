//! NOP-Out (RFC 7143 §11.18) and NOP-In (§11.19): pings in both directions.

use std::borrow::Cow;

use super::bhs::*;
use super::{PduCodec, PduError};

/// NOP-Out (initiator→target, opcode 0x00, RFC 7143 §11.18).
///
/// ITT is valid only when the initiator wants a NOP-In back (a ping);
/// otherwise it is 0xffffffff. TTT echoes a target's NOP-In when this
/// answers one, else it is 0xffffffff (§11.18.2, §11.18.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopOut {
    pub immediate: bool,
    /// LUN (8 bytes, SAM encoding) echoed from a NOP-In, else reserved.
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// Ping data, echoed in the NOP-In answer (§11.18.5).
    pub data: Vec<u8>,
}

impl PduCodec for NopOut {
    const OPCODE: Opcode = Opcode::NopOut;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        Ok(NopOut {
            immediate: bit(h, 0, 0x40),
            lun: get_u64(h, 8),
            itt: get_u32(h, 16),
            ttt: get_u32(h, 20),
            cmd_sn: get_u32(h, 24),
            exp_stat_sn: get_u32(h, 28),
            data: data.to_vec(),
        })
    }

    fn encode_header(&self, h: &mut [u8; BHS_LEN]) {
        put_u8(h, 1, 0x80);
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

/// NOP-In (target→initiator, opcode 0x20, RFC 7143 §11.19).
///
/// Answers a NOP-Out (ITT echoed, TTT 0xffffffff) or pings the initiator
/// (ITT 0xffffffff, TTT chosen by the target, which expects a NOP-Out).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data: Vec<u8>,
}

impl PduCodec for NopIn {
    const OPCODE: Opcode = Opcode::NopIn;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        Ok(NopIn {
            lun: get_u64(h, 8),
            itt: get_u32(h, 16),
            ttt: get_u32(h, 20),
            stat_sn: get_u32(h, 24),
            exp_cmd_sn: get_u32(h, 28),
            max_cmd_sn: get_u32(h, 32),
            data: data.to_vec(),
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
    }

    fn data_segment(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
}

//! NOP-Out (RFC 7143 §11.18) and NOP-In (§11.19): pings in both directions.

use zerocopy::{transmute, transmute_ref};

use super::bhs::*;
use super::header::{byte0, Framing, NopInHeader, NopOutHeader, FINAL};
use super::{DataSegment, PduCodec, PduError};

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
        let w: &NopOutHeader = transmute_ref!(h);
        Ok(NopOut {
            immediate: w.opcode & byte0::IMMEDIATE != 0,
            lun: w.lun.get(),
            itt: w.itt.get(),
            ttt: w.ttt.get(),
            cmd_sn: w.cmd_sn.get(),
            exp_stat_sn: w.exp_stat_sn.get(),
            data: data.to_vec(),
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(NopOutHeader {
            opcode,
            flags: FINAL,
            _reserved1: [0; 2],
            framing,
            lun: self.lun.into(),
            itt: self.itt.into(),
            ttt: self.ttt.into(),
            cmd_sn: self.cmd_sn.into(),
            exp_stat_sn: self.exp_stat_sn.into(),
            _reserved2: [0; 16],
        })
    }

    fn immediate(&self) -> bool {
        self.immediate
    }

    fn data_segment(&self) -> DataSegment<'_> {
        DataSegment::Borrowed(&self.data)
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
        let w: &NopInHeader = transmute_ref!(h);
        Ok(NopIn {
            lun: w.lun.get(),
            itt: w.itt.get(),
            ttt: w.ttt.get(),
            stat_sn: w.stat_sn.get(),
            exp_cmd_sn: w.exp_cmd_sn.get(),
            max_cmd_sn: w.max_cmd_sn.get(),
            data: data.to_vec(),
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(NopInHeader {
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
            _reserved2: [0; 12],
        })
    }

    fn data_segment(&self) -> DataSegment<'_> {
        DataSegment::Borrowed(&self.data)
    }
}

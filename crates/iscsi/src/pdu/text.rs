//! Text Request (RFC 7143 §11.10) and Text Response (§11.11).

use zerocopy::{transmute, transmute_ref};

use super::bhs::*;
use super::header::{byte0, Framing, TextRequestHeader, TextResponseHeader, CONTINUE, FINAL};
use super::{invalid, DataSegment, PduCodec, PduError};

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
        let w: &TextRequestHeader = transmute_ref!(h);
        let flags = w.flags;
        let r = TextRequest {
            immediate: w.opcode & byte0::IMMEDIATE != 0,
            final_bit: flags & FINAL != 0,
            continue_bit: flags & CONTINUE != 0,
            lun: w.lun.get(),
            itt: w.itt.get(),
            ttt: w.ttt.get(),
            cmd_sn: w.cmd_sn.get(),
            exp_stat_sn: w.exp_stat_sn.get(),
            data: data.to_vec(),
        };
        // §11.10.2: F and C must not both be set.
        if r.final_bit && r.continue_bit {
            return Err(invalid(Self::OPCODE, "F and C", flags));
        }
        Ok(r)
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(TextRequestHeader {
            opcode,
            flags: text_flags(self.final_bit, self.continue_bit),
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
        let w: &TextResponseHeader = transmute_ref!(h);
        let flags = w.flags;
        let r = TextResponse {
            final_bit: flags & FINAL != 0,
            continue_bit: flags & CONTINUE != 0,
            lun: w.lun.get(),
            itt: w.itt.get(),
            ttt: w.ttt.get(),
            stat_sn: w.stat_sn.get(),
            exp_cmd_sn: w.exp_cmd_sn.get(),
            max_cmd_sn: w.max_cmd_sn.get(),
            data: data.to_vec(),
        };
        if r.final_bit && r.continue_bit {
            return Err(invalid(Self::OPCODE, "F and C", flags));
        }
        Ok(r)
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(TextResponseHeader {
            opcode,
            flags: text_flags(self.final_bit, self.continue_bit),
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

/// Byte 1 of both Text PDUs: F and C.
fn text_flags(final_bit: bool, continue_bit: bool) -> u8 {
    (if final_bit { FINAL } else { 0 }) | if continue_bit { CONTINUE } else { 0 }
}

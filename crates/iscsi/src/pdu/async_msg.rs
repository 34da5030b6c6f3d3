//! Asynchronous Message (RFC 7143 §11.9).

use zerocopy::{transmute, transmute_ref};

use super::bhs::*;
use super::header::{AsyncMessageHeader, Framing, FINAL};
use super::{invalid, DataSegment, PduCodec, PduError};

/// AsyncEvent codes (RFC 7143 §11.9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AsyncEvent {
    /// 0: a SCSI asynchronous event; sense data holds it.
    ScsiEvent,
    /// 1: the target asks for a logout (Parameter3: seconds to do so).
    RequestLogout,
    /// 2: the target will drop the connection named by Parameter1.
    DropConnection,
    /// 3: the target will drop all connections of the session.
    DropAllConnections,
    /// 4: the target asks to renegotiate parameters.
    RequestRenegotiation,
    /// 5: iSCSI-level task management event (RFC 7144 / 7143 §11.9.1).
    TaskManagement,
    /// 255: vendor specific.
    VendorSpecific,
    Other(u8),
}

impl AsyncEvent {
    pub fn code(self) -> u8 {
        match self {
            AsyncEvent::ScsiEvent => 0,
            AsyncEvent::RequestLogout => 1,
            AsyncEvent::DropConnection => 2,
            AsyncEvent::DropAllConnections => 3,
            AsyncEvent::RequestRenegotiation => 4,
            AsyncEvent::TaskManagement => 5,
            AsyncEvent::VendorSpecific => 255,
            AsyncEvent::Other(v) => v,
        }
    }

    pub fn from_code(v: u8) -> AsyncEvent {
        match v {
            0 => AsyncEvent::ScsiEvent,
            1 => AsyncEvent::RequestLogout,
            2 => AsyncEvent::DropConnection,
            3 => AsyncEvent::DropAllConnections,
            4 => AsyncEvent::RequestRenegotiation,
            5 => AsyncEvent::TaskManagement,
            255 => AsyncEvent::VendorSpecific,
            v => AsyncEvent::Other(v),
        }
    }
}

/// Asynchronous Message (target→initiator, opcode 0x32, RFC 7143 §11.9).
/// Its ITT is always 0xffffffff. The data segment holds SenseLength, sense
/// data and iSCSI event data (§11.9.4).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsyncMessage {
    pub lun: u64,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub event: AsyncEvent,
    pub vcode: u8,
    pub parameter1: u16,
    pub parameter2: u16,
    pub parameter3: u16,
    pub sense: Vec<u8>,
    pub event_data: Vec<u8>,
}

impl PduCodec for AsyncMessage {
    const OPCODE: Opcode = Opcode::AsyncMessage;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        let (sense, event_data) = if data.is_empty() {
            (Vec::new(), Vec::new())
        } else {
            let (len, rest) =
                data.split_first_chunk::<2>().ok_or_else(|| invalid(Self::OPCODE, "SenseLength", data.len() as u32))?;
            let sense_len = usize::from(u16::from_be_bytes(*len));
            let (sense, event) = rest
                .split_at_checked(sense_len)
                .ok_or_else(|| invalid(Self::OPCODE, "SenseLength", sense_len as u32))?;
            (sense.to_vec(), event.to_vec())
        };
        let w: &AsyncMessageHeader = transmute_ref!(h);
        Ok(AsyncMessage {
            lun: w.lun.get(),
            stat_sn: w.stat_sn.get(),
            exp_cmd_sn: w.exp_cmd_sn.get(),
            max_cmd_sn: w.max_cmd_sn.get(),
            event: AsyncEvent::from_code(w.async_event),
            vcode: w.async_vcode,
            parameter1: w.parameter1.get(),
            parameter2: w.parameter2.get(),
            parameter3: w.parameter3.get(),
            sense,
            event_data,
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(AsyncMessageHeader {
            opcode,
            flags: FINAL,
            _reserved1: [0; 2],
            framing,
            lun: self.lun.into(),
            itt: RESERVED_TAG.into(),
            _reserved2: [0; 4],
            stat_sn: self.stat_sn.into(),
            exp_cmd_sn: self.exp_cmd_sn.into(),
            max_cmd_sn: self.max_cmd_sn.into(),
            async_event: self.event.code(),
            async_vcode: self.vcode,
            parameter1: self.parameter1.into(),
            parameter2: self.parameter2.into(),
            parameter3: self.parameter3.into(),
            _reserved3: [0; 4],
        })
    }

    fn data_segment(&self) -> DataSegment<'_> {
        if self.sense.is_empty() && self.event_data.is_empty() {
            return DataSegment::Borrowed(&[]);
        }
        let sense_len = u16::try_from(self.sense.len()).unwrap_or(u16::MAX);
        let sense = self.sense.get(..usize::from(sense_len)).unwrap_or_default();
        let mut out = Vec::with_capacity(2 + sense.len() + self.event_data.len());
        out.extend_from_slice(&sense_len.to_be_bytes());
        out.extend_from_slice(sense);
        out.extend_from_slice(&self.event_data);
        DataSegment::Owned(out)
    }
}

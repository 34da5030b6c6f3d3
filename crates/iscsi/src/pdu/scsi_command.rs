//! SCSI Command (RFC 7143 §11.3), with the Extended CDB and Bidirectional
//! Expected Read-Data Length AHS (§11.2.2).

use std::borrow::Cow;

use super::bhs::*;
use super::{invalid, PduCodec, PduError};

/// Longest CDB: 16 bytes in the BHS plus an Extended CDB AHS whose
/// AHSLength (CDB length - 15) fits 16 bits; SPC limits CDBs to 260 bytes.
pub const MAX_CDB_LEN: usize = 260;

const AHS_EXTENDED_CDB: u8 = 1;
const AHS_BIDI_READ_LENGTH: u8 = 2;

/// Task attributes (RFC 7143 §11.3.1, SAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskAttribute {
    Untagged,
    Simple,
    Ordered,
    HeadOfQueue,
    Aca,
}

impl TaskAttribute {
    /// The 3-bit ATTR value.
    pub fn code(self) -> u8 {
        match self {
            TaskAttribute::Untagged => 0,
            TaskAttribute::Simple => 1,
            TaskAttribute::Ordered => 2,
            TaskAttribute::HeadOfQueue => 3,
            TaskAttribute::Aca => 4,
        }
    }

    /// The attribute for an ATTR value; 5-7 are reserved.
    pub fn from_code(v: u8) -> Option<TaskAttribute> {
        Some(match v {
            0 => TaskAttribute::Untagged,
            1 => TaskAttribute::Simple,
            2 => TaskAttribute::Ordered,
            3 => TaskAttribute::HeadOfQueue,
            4 => TaskAttribute::Aca,
            _ => return None,
        })
    }
}

/// SCSI Command (initiator→target, opcode 0x01, RFC 7143 §11.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScsiCommand {
    pub immediate: bool,
    /// F: no unsolicited Data-Out PDUs follow (§11.3.1).
    pub final_bit: bool,
    /// R: the command reads data (Data-In expected).
    pub read: bool,
    /// W: the command writes data (Data-Out expected).
    pub write: bool,
    pub attr: TaskAttribute,
    pub lun: u64,
    pub itt: u32,
    /// Expected Data Transfer Length (§11.3.5); for bidirectional commands
    /// the write length.
    pub expected_data_transfer_length: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// The CDB, at least 16 bytes (short CDBs are zero-padded in the BHS);
    /// bytes past 16 travel in an Extended CDB AHS (§11.2.2.3).
    pub cdb: Vec<u8>,
    /// Bidirectional Expected Read-Data Length AHS (§11.2.2.4).
    pub bidi_read_length: Option<u32>,
    /// Immediate (unsolicited) data (§11.3.7).
    pub data: Vec<u8>,
}

impl ScsiCommand {
    /// The CDB's operation code (its first byte).
    pub fn operation_code(&self) -> u8 {
        self.cdb.first().copied().unwrap_or(0)
    }
}

impl PduCodec for ScsiCommand {
    const OPCODE: Opcode = Opcode::ScsiCommand;

    fn decode(h: &[u8; BHS_LEN], ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        let flags = get_u8(h, 1);
        let attr = TaskAttribute::from_code(flags & 0x07).ok_or_else(|| invalid(Self::OPCODE, "ATTR", flags & 0x07))?;
        let mut cdb = h.get(32..48).unwrap_or_default().to_vec();
        let mut bidi_read_length = None;
        let mut extended = false;
        let mut rest = ahs;
        // §11.2.2: AHSLength (2 bytes), AHSType, one type-specific byte,
        // then AHSLength - 1 more bytes, padded to 4.
        while !rest.is_empty() {
            let (head, body) =
                rest.split_first_chunk::<4>().ok_or(PduError::MalformedAhs("AHS shorter than its 4-byte header"))?;
            let length = usize::from(u16::from_be_bytes([head[0], head[1]]));
            if length == 0 {
                return Err(PduError::MalformedAhs("AHSLength is zero"));
            }
            let specific =
                body.get(..length - 1).ok_or(PduError::MalformedAhs("AHSLength runs past TotalAHSLength"))?;
            match head[2] {
                AHS_EXTENDED_CDB => {
                    if extended {
                        return Err(PduError::MalformedAhs("two Extended CDB AHS"));
                    }
                    extended = true;
                    cdb.extend_from_slice(specific);
                }
                AHS_BIDI_READ_LENGTH => {
                    if bidi_read_length.is_some() || length != 5 {
                        return Err(PduError::MalformedAhs("bad Bidirectional Read-Data Length AHS"));
                    }
                    let v = <[u8; 4]>::try_from(specific).map_err(|_| PduError::MalformedAhs("bad bidi AHS length"))?;
                    bidi_read_length = Some(u32::from_be_bytes(v));
                }
                _ => return Err(PduError::MalformedAhs("unknown AHSType")),
            }
            // The AHS is padded to 4 bytes; 3 + length rounds up.
            let consumed = pad4(3 + length);
            rest = rest.get(consumed..).unwrap_or_default();
        }
        let cmd = ScsiCommand {
            immediate: bit(h, 0, 0x40),
            final_bit: flags & 0x80 != 0,
            read: flags & 0x40 != 0,
            write: flags & 0x20 != 0,
            attr,
            lun: get_u64(h, 8),
            itt: get_u32(h, 16),
            expected_data_transfer_length: get_u32(h, 20),
            cmd_sn: get_u32(h, 24),
            exp_stat_sn: get_u32(h, 28),
            cdb,
            bidi_read_length,
            data: data.to_vec(),
        };
        if cmd.itt == RESERVED_TAG {
            return Err(invalid(Self::OPCODE, "ITT", cmd.itt));
        }
        // §11.3.1: immediate data only for commands that write.
        if !cmd.data.is_empty() && !cmd.write {
            return Err(PduError::Protocol("immediate data on a command without W"));
        }
        if cmd.bidi_read_length.is_some() && !(cmd.read && cmd.write) {
            return Err(PduError::MalformedAhs("bidirectional read length on a non-bidirectional command"));
        }
        Ok(cmd)
    }

    fn encode_header(&self, h: &mut [u8; BHS_LEN]) {
        let mut flags = self.attr.code();
        if self.final_bit {
            flags |= 0x80;
        }
        if self.read {
            flags |= 0x40;
        }
        if self.write {
            flags |= 0x20;
        }
        put_u8(h, 1, flags);
        put_u64(h, 8, self.lun);
        put_u32(h, 16, self.itt);
        put_u32(h, 20, self.expected_data_transfer_length);
        put_u32(h, 24, self.cmd_sn);
        put_u32(h, 28, self.exp_stat_sn);
        let head = self.cdb.get(..16).unwrap_or(&self.cdb);
        put(h, 32, head);
    }

    fn immediate(&self) -> bool {
        self.immediate
    }

    fn data_segment(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }

    fn ahs(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(ext) = self.cdb.get(16..).filter(|e| !e.is_empty()) {
            let length = u16::try_from(ext.len() + 1).unwrap_or(u16::MAX);
            out.extend_from_slice(&length.to_be_bytes());
            out.push(AHS_EXTENDED_CDB);
            out.push(0);
            out.extend_from_slice(ext);
            out.resize(pad4(out.len()), 0);
        }
        if let Some(len) = self.bidi_read_length {
            out.extend_from_slice(&[0, 5, AHS_BIDI_READ_LENGTH, 0]);
            out.extend_from_slice(&len.to_be_bytes());
        }
        out
    }
}

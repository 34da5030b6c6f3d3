//! SCSI Command (RFC 7143 §11.3), with the Extended CDB and Bidirectional
//! Expected Read-Data Length AHS (§11.2.2).

use zerocopy::{transmute, transmute_ref, FromBytes, IntoBytes};

use super::bhs::*;
use super::header::{
    byte0, AhsHeader, BidiReadLengthAhs, Framing, ScsiCommandHeader, AHS_BIDI_READ_LENGTH, AHS_EXTENDED_CDB,
    BHS_CDB_LEN, BIDI_READ_LENGTH_AHS_LENGTH, FINAL,
};
use super::{invalid, DataSegment, PduCodec, PduError};

/// Longest CDB: 16 bytes in the BHS plus an Extended CDB AHS whose
/// AHSLength (CDB length - 15) fits 16 bits; SPC limits CDBs to 260 bytes.
pub const MAX_CDB_LEN: usize = 260;

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
        let w: &ScsiCommandHeader = transmute_ref!(h);
        let flags = w.flags;
        let attr_code = flags & ScsiCommandHeader::ATTR_MASK;
        let attr = TaskAttribute::from_code(attr_code).ok_or_else(|| invalid(Self::OPCODE, "ATTR", attr_code))?;
        let mut cdb = w.cdb.to_vec();
        let mut bidi_read_length = None;
        let mut extended = false;
        let mut rest = ahs;
        // §11.2.2: an AhsHeader, whose AHSLength counts its type-specific
        // byte and the AHSLength - 1 bytes after it; each AHS is padded to 4.
        while !rest.is_empty() {
            let (head, body) = AhsHeader::ref_from_prefix(rest)
                .map_err(|_| PduError::MalformedAhs("AHS shorter than its 4-byte header"))?;
            let length = usize::from(head.length.get());
            if length == 0 {
                return Err(PduError::MalformedAhs("AHSLength is zero"));
            }
            let specific =
                body.get(..length - 1).ok_or(PduError::MalformedAhs("AHSLength runs past TotalAHSLength"))?;
            match head.ahs_type {
                AHS_EXTENDED_CDB => {
                    if extended {
                        return Err(PduError::MalformedAhs("two Extended CDB AHS"));
                    }
                    extended = true;
                    cdb.extend_from_slice(specific);
                }
                AHS_BIDI_READ_LENGTH => {
                    if bidi_read_length.is_some() || length != usize::from(BIDI_READ_LENGTH_AHS_LENGTH) {
                        return Err(PduError::MalformedAhs("bad Bidirectional Read-Data Length AHS"));
                    }
                    let ahs = BidiReadLengthAhs::ref_from_prefix(rest)
                        .map_err(|_| PduError::MalformedAhs("bad bidi AHS length"))?
                        .0;
                    bidi_read_length = Some(ahs.read_length.get());
                }
                _ => return Err(PduError::MalformedAhs("unknown AHSType")),
            }
            // AHSLength counts from the header's last byte on; the AHS is
            // padded to 4 bytes.
            let consumed = pad4(size_of::<AhsHeader>() - 1 + length);
            rest = rest.get(consumed..).unwrap_or_default();
        }
        let cmd = ScsiCommand {
            immediate: w.opcode & byte0::IMMEDIATE != 0,
            final_bit: flags & FINAL != 0,
            read: flags & ScsiCommandHeader::READ != 0,
            write: flags & ScsiCommandHeader::WRITE != 0,
            attr,
            lun: w.lun.get(),
            itt: w.itt.get(),
            expected_data_transfer_length: w.expected_data_transfer_length.get(),
            cmd_sn: w.cmd_sn.get(),
            exp_stat_sn: w.exp_stat_sn.get(),
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

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        let mut flags = self.attr.code();
        if self.final_bit {
            flags |= FINAL;
        }
        if self.read {
            flags |= ScsiCommandHeader::READ;
        }
        if self.write {
            flags |= ScsiCommandHeader::WRITE;
        }
        // The CDB's head, zero-padded; the rest goes in the AHS.
        let mut cdb = [0u8; BHS_CDB_LEN];
        for (to, from) in cdb.iter_mut().zip(&self.cdb) {
            *to = *from;
        }
        transmute!(ScsiCommandHeader {
            opcode,
            flags,
            _reserved1: [0; 2],
            framing,
            lun: self.lun.into(),
            itt: self.itt.into(),
            expected_data_transfer_length: self.expected_data_transfer_length.into(),
            cmd_sn: self.cmd_sn.into(),
            exp_stat_sn: self.exp_stat_sn.into(),
            cdb,
        })
    }

    fn immediate(&self) -> bool {
        self.immediate
    }

    fn data_segment(&self) -> DataSegment<'_> {
        DataSegment::Borrowed(&self.data)
    }

    fn ahs(&self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Some(ext) = self.cdb.get(BHS_CDB_LEN..).filter(|e| !e.is_empty()) {
            let length = u16::try_from(ext.len() + 1).unwrap_or(u16::MAX);
            let head = AhsHeader { length: length.into(), ahs_type: AHS_EXTENDED_CDB, specific: 0 };
            out.extend_from_slice(head.as_bytes());
            out.extend_from_slice(ext);
            out.resize(pad4(out.len()), 0);
        }
        if let Some(len) = self.bidi_read_length {
            let ahs = BidiReadLengthAhs {
                header: AhsHeader {
                    length: BIDI_READ_LENGTH_AHS_LENGTH.into(),
                    ahs_type: AHS_BIDI_READ_LENGTH,
                    specific: 0,
                },
                read_length: len.into(),
            };
            out.extend_from_slice(ahs.as_bytes());
        }
        out
    }
}

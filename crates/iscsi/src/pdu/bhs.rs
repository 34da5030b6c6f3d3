//! The Basic Header Segment (RFC 7143 §11.2.1) and its opcodes (§11.2.1.2).
//!
//! Every iSCSI PDU starts with a 48-byte BHS. Its first eight bytes are laid
//! out the same for every opcode and tell the reader how many more bytes
//! belong to the PDU (§11.2): the Additional Header Segments (AHS), an
//! optional header digest, the data segment padded to 4 bytes, and an
//! optional data digest.

use zerocopy::transmute_ref;

use super::error::PduError;
use super::header::{byte0, BasicHeader, FINAL};

/// Length of the Basic Header Segment (RFC 7143 §11.2.1).
pub const BHS_LEN: usize = 48;

/// Largest value of the 24-bit DataSegmentLength field (RFC 7143 §11.2.1.6).
pub const MAX_DATA_SEGMENT_LENGTH: usize = (1 << 24) - 1;

/// Length of a CRC32C digest on the wire (RFC 7143 §11.2.4).
pub const DIGEST_LEN: usize = 4;

/// The reserved Initiator/Target Task Tag value (RFC 7143 §11.2.1.8).
pub const RESERVED_TAG: u32 = 0xffff_ffff;

/// iSCSI opcodes (RFC 7143 §11.2.1.2): 0x00-0x1f are sent by initiators,
/// 0x20-0x3f by targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    NopOut = 0x00,
    ScsiCommand = 0x01,
    TaskMgmtRequest = 0x02,
    LoginRequest = 0x03,
    TextRequest = 0x04,
    DataOut = 0x05,
    LogoutRequest = 0x06,
    SnackRequest = 0x10,
    NopIn = 0x20,
    ScsiResponse = 0x21,
    TaskMgmtResponse = 0x22,
    LoginResponse = 0x23,
    TextResponse = 0x24,
    DataIn = 0x25,
    LogoutResponse = 0x26,
    R2t = 0x31,
    AsyncMessage = 0x32,
    Reject = 0x3f,
}

impl Opcode {
    /// Every opcode, for tests and tables.
    pub const ALL: [Opcode; 18] = [
        Opcode::NopOut,
        Opcode::ScsiCommand,
        Opcode::TaskMgmtRequest,
        Opcode::LoginRequest,
        Opcode::TextRequest,
        Opcode::DataOut,
        Opcode::LogoutRequest,
        Opcode::SnackRequest,
        Opcode::NopIn,
        Opcode::ScsiResponse,
        Opcode::TaskMgmtResponse,
        Opcode::LoginResponse,
        Opcode::TextResponse,
        Opcode::DataIn,
        Opcode::LogoutResponse,
        Opcode::R2t,
        Opcode::AsyncMessage,
        Opcode::Reject,
    ];

    /// The opcode for a 6-bit opcode value, if RFC 7143 defines one.
    pub fn from_u8(value: u8) -> Option<Opcode> {
        Opcode::ALL.iter().copied().find(|op| *op as u8 == value)
    }

    /// True for initiator→target opcodes (RFC 7143 §11.2.1.2).
    pub fn is_initiator_opcode(self) -> bool {
        (self as u8) < 0x20
    }
}

/// A received Basic Header Segment whose framing fields have been read.
///
/// Build it with [`decode_bhs`]; then read [`Bhs::remaining_length`] more
/// bytes and hand everything to [`super::Pdu::decode`].
#[derive(Clone, PartialEq, Eq)]
pub struct Bhs {
    raw: [u8; BHS_LEN],
}

impl std::fmt::Debug for Bhs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bhs")
            .field("opcode", &format_args!("{:#04x}", self.opcode_raw()))
            .field("immediate", &self.immediate())
            .field("ahs_len", &self.total_ahs_length())
            .field("data_len", &self.data_segment_length())
            .field("itt", &format_args!("{:#010x}", self.itt()))
            .finish()
    }
}

/// Reads the framing fields of a Basic Header Segment (RFC 7143 §11.2.1).
///
/// This never fails on an unknown opcode: the reader still needs the
/// lengths to skip the PDU and answer it with a Reject (reason "Command not
/// supported", §11.17.1); [`super::Pdu::decode`] reports the opcode error.
/// Reserved bits are ignored on receipt. The `Result` is kept so that
/// framing checks can be added without changing callers; today every
/// 48-byte header frames.
pub fn decode_bhs(raw: &[u8; BHS_LEN]) -> Result<Bhs, PduError> {
    Ok(Bhs { raw: *raw })
}

impl Bhs {
    /// The 48 raw bytes, e.g. to echo them in a Reject PDU (RFC 7143 §11.17).
    pub fn raw(&self) -> &[u8; BHS_LEN] {
        &self.raw
    }

    /// The fields every BHS shares, read in place.
    fn header(&self) -> &BasicHeader {
        transmute_ref!(&self.raw)
    }

    /// The 6-bit opcode value (RFC 7143 §11.2.1.2).
    pub fn opcode_raw(&self) -> u8 {
        self.header().opcode & byte0::OPCODE_MASK
    }

    /// The opcode, or `None` when RFC 7143 defines none for the value.
    pub fn opcode(&self) -> Option<Opcode> {
        Opcode::from_u8(self.opcode_raw())
    }

    /// The I (immediate delivery) bit (RFC 7143 §11.2.1.1).
    pub fn immediate(&self) -> bool {
        self.header().opcode & byte0::IMMEDIATE != 0
    }

    /// The F (final) bit, bit 7 of byte 1.
    pub fn final_bit(&self) -> bool {
        self.header().flags & FINAL != 0
    }

    /// Total length of the AHS in bytes (TotalAHSLength × 4, §11.2.1.5).
    pub fn total_ahs_length(&self) -> usize {
        self.header().framing.ahs_bytes()
    }

    /// Length of the data segment without padding (§11.2.1.6).
    pub fn data_segment_length(&self) -> usize {
        self.header().framing.data_bytes()
    }

    /// Length of the data segment padded to a multiple of 4 (§11.2.3).
    pub fn padded_data_length(&self) -> usize {
        pad4(self.data_segment_length())
    }

    /// The Initiator Task Tag (§11.2.1.8).
    pub fn itt(&self) -> u32 {
        self.header().itt.get()
    }

    /// Bytes of the PDU that follow the BHS on the wire: AHS, header digest,
    /// padded data segment and data digest (RFC 7143 §11.2). The data digest
    /// is present only when the data segment is not empty.
    pub fn remaining_length(&self, header_digest: bool, data_digest: bool) -> usize {
        let data = self.padded_data_length();
        self.total_ahs_length()
            + if header_digest { DIGEST_LEN } else { 0 }
            + data
            + if data_digest && data > 0 { DIGEST_LEN } else { 0 }
    }

    /// Checks the data segment against the receiver's declared
    /// MaxRecvDataSegmentLength (RFC 7143 §13.12).
    pub fn check_data_segment_length(&self, max: u32) -> Result<(), PduError> {
        let length = self.data_segment_length();
        if length > max as usize {
            return Err(PduError::DataSegmentTooLong { length, max });
        }
        Ok(())
    }
}

/// Rounds up to the next multiple of 4 (RFC 7143 §11.2.3 padding).
pub fn pad4(n: usize) -> usize {
    n.saturating_add(3) & !3
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths() {
        let mut raw = [0u8; BHS_LEN];
        raw[0] = 0x41;
        raw[4] = 2;
        raw[5..8].copy_from_slice(&[0, 1, 3]);
        let bhs = decode_bhs(&raw).unwrap();
        assert_eq!(bhs.opcode(), Some(Opcode::ScsiCommand));
        assert!(bhs.immediate());
        assert_eq!(bhs.total_ahs_length(), 8);
        assert_eq!(bhs.data_segment_length(), 259);
        assert_eq!(bhs.padded_data_length(), 260);
        assert_eq!(bhs.remaining_length(false, false), 268);
        assert_eq!(bhs.remaining_length(true, true), 276);
        assert!(bhs.check_data_segment_length(258).is_err());
        assert!(bhs.check_data_segment_length(259).is_ok());
    }

    #[test]
    fn no_data_digest_without_data() {
        let raw = [0u8; BHS_LEN];
        let bhs = decode_bhs(&raw).unwrap();
        assert_eq!(bhs.remaining_length(true, true), 4);
    }

    #[test]
    fn unknown_opcode_still_frames() {
        let mut raw = [0u8; BHS_LEN];
        raw[0] = 0x1c;
        let bhs = decode_bhs(&raw).unwrap();
        assert_eq!(bhs.opcode(), None);
    }

    #[test]
    fn opcode_table() {
        for op in Opcode::ALL {
            assert_eq!(Opcode::from_u8(op as u8), Some(op));
        }
        assert!(Opcode::NopOut.is_initiator_opcode());
        assert!(!Opcode::Reject.is_initiator_opcode());
    }
}

//! The wire layout of every Basic Header Segment (RFC 7143 §11) and of the
//! Additional Header Segments (§11.2.2), declared once.
//!
//! Each PDU type has one `#[repr(C)]` struct of 48 bytes whose fields follow
//! the RFC's figure in order, with big-endian integer types and byte arrays
//! for everything else; a field's place on the wire is its place in the
//! struct, and the codecs name no byte offset. The structs
//! have no padding and alignment 1 (`Unaligned`), so any 48 bytes are a valid
//! value of any of them: decoding reads fields, never fails on layout, and
//! checks values in the PDU's codec. `const` assertions pin every size.
//!
//! Bytes 0 and 4-7 are the same for every opcode (§11.2.1): the opcode
//! byte, and the [`Framing`] lengths. Fields the RFC marks reserved are
//! written as zero and ignored on receipt.

use zerocopy::byteorder::{BigEndian, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::bhs::BHS_LEN;

type Be16 = U16<BigEndian>;
type Be32 = U32<BigEndian>;
type Be64 = U64<BigEndian>;

/// Byte 0 of every BHS (§11.2.1.1, §11.2.1.2): bit 7 reserved, bit 6 the I
/// (immediate delivery) bit, bits 0-5 the opcode.
pub(crate) mod byte0 {
    pub(crate) const IMMEDIATE: u8 = 0x40;
    pub(crate) const OPCODE_MASK: u8 = 0x3f;

    /// Byte 0 for `opcode`, with the I bit when `immediate`.
    pub(crate) fn new(opcode: u8, immediate: bool) -> u8 {
        (opcode & OPCODE_MASK) | if immediate { IMMEDIATE } else { 0 }
    }
}

/// F (final), bit 7 of byte 1 in every PDU that has it; set and without
/// meaning in the PDUs whose figure shows a plain `1` there.
pub(crate) const FINAL: u8 = 0x80;

/// Bytes 4-7 of every BHS: TotalAHSLength (§11.2.1.5) in 4-byte words and
/// the 24-bit DataSegmentLength (§11.2.1.6) in bytes, without padding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct Framing {
    pub total_ahs_length: u8,
    pub data_segment_length: [u8; 3],
}

impl Framing {
    /// The framing of a PDU with `ahs_words` words of AHS and `data_len`
    /// bytes of data; `None` when either does not fit its field.
    pub(crate) fn new(ahs_words: usize, data_len: usize) -> Option<Framing> {
        let total_ahs_length = u8::try_from(ahs_words).ok()?;
        let [high, a, b, c] = u32::try_from(data_len).ok()?.to_be_bytes();
        (high == 0).then_some(Framing { total_ahs_length, data_segment_length: [a, b, c] })
    }

    /// TotalAHSLength in bytes.
    pub(crate) fn ahs_bytes(&self) -> usize {
        usize::from(self.total_ahs_length) * 4
    }

    /// DataSegmentLength in bytes.
    pub(crate) fn data_bytes(&self) -> usize {
        let [a, b, c] = self.data_segment_length;
        usize::from(a) << 16 | usize::from(b) << 8 | usize::from(c)
    }
}

/// The fields every BHS shares (§11.2.1); the rest is opcode-specific.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct BasicHeader {
    pub opcode: u8,
    /// F (bit 7) and opcode-specific flags.
    pub flags: u8,
    pub _specific1: [u8; 2],
    pub framing: Framing,
    /// LUN or opcode-specific (§11.2.1.7).
    pub _lun: [u8; 8],
    /// Initiator Task Tag (§11.2.1.8).
    pub itt: Be32,
    pub _specific2: [u8; 28],
}

/// SCSI Command (§11.3).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct ScsiCommandHeader {
    pub opcode: u8,
    /// F R W . . ATTR.
    pub flags: u8,
    pub _reserved1: [u8; 2],
    pub framing: Framing,
    pub lun: Be64,
    pub itt: Be32,
    /// Expected Data Transfer Length.
    pub expected_data_transfer_length: Be32,
    pub cmd_sn: Be32,
    pub exp_stat_sn: Be32,
    /// SCSI Command Descriptor Block: its first bytes, zero-padded; the
    /// rest travels in an Extended CDB AHS (§11.2.2.3).
    pub cdb: [u8; BHS_CDB_LEN],
}

/// CDB bytes that the SCSI Command BHS holds.
pub(crate) const BHS_CDB_LEN: usize = 16;

impl ScsiCommandHeader {
    pub(crate) const READ: u8 = 0x40;
    pub(crate) const WRITE: u8 = 0x20;
    pub(crate) const ATTR_MASK: u8 = 0x07;
}

/// SCSI Response (§11.4).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct ScsiResponseHeader {
    pub opcode: u8,
    /// 1 . . o u O U ..
    pub flags: u8,
    /// Response.
    pub response: u8,
    /// Status.
    pub status: u8,
    pub framing: Framing,
    pub _reserved1: [u8; 8],
    pub itt: Be32,
    /// SNACK Tag.
    pub snack_tag: Be32,
    pub stat_sn: Be32,
    pub exp_cmd_sn: Be32,
    pub max_cmd_sn: Be32,
    /// ExpDataSN.
    pub exp_data_sn: Be32,
    /// Bidirectional Read Residual Count.
    pub bidi_read_residual_count: Be32,
    /// Residual Count.
    pub residual_count: Be32,
}

impl ScsiResponseHeader {
    pub(crate) const BIDI_READ_OVERFLOW: u8 = 0x10;
    pub(crate) const BIDI_READ_UNDERFLOW: u8 = 0x08;
    pub(crate) const OVERFLOW: u8 = 0x04;
    pub(crate) const UNDERFLOW: u8 = 0x02;
}

/// Task Management Function Request (§11.5).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct TaskMgmtRequestHeader {
    pub opcode: u8,
    /// 1, then the Function in bits 0-6.
    pub function: u8,
    pub _reserved1: [u8; 2],
    pub framing: Framing,
    pub lun: Be64,
    pub itt: Be32,
    /// Referenced Task Tag.
    pub referenced_task_tag: Be32,
    pub cmd_sn: Be32,
    pub exp_stat_sn: Be32,
    /// RefCmdSN.
    pub ref_cmd_sn: Be32,
    /// ExpDataSN.
    pub exp_data_sn: Be32,
    pub _reserved2: [u8; 8],
}

/// Task Management Function Response (§11.6).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct TaskMgmtResponseHeader {
    pub opcode: u8,
    pub flags: u8,
    /// Response.
    pub response: u8,
    pub _reserved1: u8,
    pub framing: Framing,
    pub _reserved2: [u8; 8],
    pub itt: Be32,
    pub _reserved3: [u8; 4],
    pub stat_sn: Be32,
    pub exp_cmd_sn: Be32,
    pub max_cmd_sn: Be32,
    pub _reserved4: [u8; 12],
}

/// SCSI Data-Out (§11.7).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DataOutHeader {
    pub opcode: u8,
    /// F.
    pub flags: u8,
    pub _reserved1: [u8; 2],
    pub framing: Framing,
    pub lun: Be64,
    pub itt: Be32,
    /// Target Transfer Tag.
    pub ttt: Be32,
    pub _reserved2: [u8; 4],
    pub exp_stat_sn: Be32,
    pub _reserved3: [u8; 4],
    /// DataSN.
    pub data_sn: Be32,
    /// Buffer Offset.
    pub buffer_offset: Be32,
    pub _reserved4: [u8; 4],
}

/// SCSI Data-In (§11.7).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct DataInHeader {
    pub opcode: u8,
    /// F A 0 0 0 O U S.
    pub flags: u8,
    pub _reserved1: u8,
    /// Status, valid with S.
    pub status: u8,
    pub framing: Framing,
    pub lun: Be64,
    pub itt: Be32,
    /// Target Transfer Tag.
    pub ttt: Be32,
    /// StatSN, valid with S.
    pub stat_sn: Be32,
    pub exp_cmd_sn: Be32,
    pub max_cmd_sn: Be32,
    /// DataSN.
    pub data_sn: Be32,
    /// Buffer Offset.
    pub buffer_offset: Be32,
    /// Residual Count.
    pub residual_count: Be32,
}

impl DataInHeader {
    pub(crate) const ACKNOWLEDGE: u8 = 0x40;
    pub(crate) const OVERFLOW: u8 = 0x04;
    pub(crate) const UNDERFLOW: u8 = 0x02;
    pub(crate) const STATUS: u8 = 0x01;
}

/// Ready To Transfer (§11.8).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct R2tHeader {
    pub opcode: u8,
    pub flags: u8,
    pub _reserved1: [u8; 2],
    pub framing: Framing,
    pub lun: Be64,
    pub itt: Be32,
    /// Target Transfer Tag.
    pub ttt: Be32,
    pub stat_sn: Be32,
    pub exp_cmd_sn: Be32,
    pub max_cmd_sn: Be32,
    /// R2TSN.
    pub r2t_sn: Be32,
    /// Buffer Offset.
    pub buffer_offset: Be32,
    /// Desired Data Transfer Length.
    pub desired_data_transfer_length: Be32,
}

/// Asynchronous Message (§11.9).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct AsyncMessageHeader {
    pub opcode: u8,
    pub flags: u8,
    pub _reserved1: [u8; 2],
    pub framing: Framing,
    pub lun: Be64,
    /// Always 0xffffffff.
    pub itt: Be32,
    pub _reserved2: [u8; 4],
    pub stat_sn: Be32,
    pub exp_cmd_sn: Be32,
    pub max_cmd_sn: Be32,
    /// AsyncEvent.
    pub async_event: u8,
    /// AsyncVCode.
    pub async_vcode: u8,
    pub parameter1: Be16,
    pub parameter2: Be16,
    pub parameter3: Be16,
    pub _reserved3: [u8; 4],
}

/// Text Request (§11.10).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct TextRequestHeader {
    pub opcode: u8,
    /// F C.
    pub flags: u8,
    pub _reserved1: [u8; 2],
    pub framing: Framing,
    pub lun: Be64,
    pub itt: Be32,
    /// Target Transfer Tag.
    pub ttt: Be32,
    pub cmd_sn: Be32,
    pub exp_stat_sn: Be32,
    pub _reserved2: [u8; 16],
}

/// Text Response (§11.11).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct TextResponseHeader {
    pub opcode: u8,
    /// F C.
    pub flags: u8,
    pub _reserved1: [u8; 2],
    pub framing: Framing,
    pub lun: Be64,
    pub itt: Be32,
    /// Target Transfer Tag.
    pub ttt: Be32,
    pub stat_sn: Be32,
    pub exp_cmd_sn: Be32,
    pub max_cmd_sn: Be32,
    pub _reserved2: [u8; 12],
}

/// C (continue), bit 6 of byte 1 in Text and Login PDUs (§11.10, §11.12).
pub(crate) const CONTINUE: u8 = 0x40;

/// Login Request (§11.12).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct LoginRequestHeader {
    pub opcode: u8,
    /// T C . . CSG NSG.
    pub flags: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub framing: Framing,
    /// ISID.
    pub isid: [u8; 6],
    /// TSIH.
    pub tsih: Be16,
    pub itt: Be32,
    /// CID.
    pub cid: Be16,
    pub _reserved1: [u8; 2],
    pub cmd_sn: Be32,
    pub exp_stat_sn: Be32,
    pub _reserved2: [u8; 16],
}

/// Login Response (§11.13).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct LoginResponseHeader {
    pub opcode: u8,
    /// T C . . CSG NSG.
    pub flags: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub framing: Framing,
    pub isid: [u8; 6],
    pub tsih: Be16,
    pub itt: Be32,
    pub _reserved1: [u8; 4],
    pub stat_sn: Be32,
    pub exp_cmd_sn: Be32,
    pub max_cmd_sn: Be32,
    /// Status-Class.
    pub status_class: u8,
    /// Status-Detail.
    pub status_detail: u8,
    pub _reserved2: [u8; 10],
}

/// Byte 1 of both Login PDUs: T C . . CSG NSG.
pub(crate) mod login_flags {
    pub(crate) const TRANSIT: u8 = 0x80;
    pub(crate) const CSG_SHIFT: u8 = 2;
    pub(crate) const STAGE_MASK: u8 = 0x03;
}

/// Logout Request (§11.14).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct LogoutRequestHeader {
    pub opcode: u8,
    /// 1, then the Reason Code in bits 0-6.
    pub reason: u8,
    pub _reserved1: [u8; 2],
    pub framing: Framing,
    pub _reserved2: [u8; 8],
    pub itt: Be32,
    /// CID.
    pub cid: Be16,
    pub _reserved3: [u8; 2],
    pub cmd_sn: Be32,
    pub exp_stat_sn: Be32,
    pub _reserved4: [u8; 16],
}

/// Logout Response (§11.15).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct LogoutResponseHeader {
    pub opcode: u8,
    pub flags: u8,
    /// Response.
    pub response: u8,
    pub _reserved1: u8,
    pub framing: Framing,
    pub _reserved2: [u8; 8],
    pub itt: Be32,
    pub _reserved3: [u8; 4],
    pub stat_sn: Be32,
    pub exp_cmd_sn: Be32,
    pub max_cmd_sn: Be32,
    pub _reserved4: [u8; 4],
    /// Time2Wait.
    pub time2wait: Be16,
    /// Time2Retain.
    pub time2retain: Be16,
    pub _reserved5: [u8; 4],
}

/// SNACK Request (§11.16).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct SnackRequestHeader {
    pub opcode: u8,
    /// 1 . . . Type.
    pub snack_type: u8,
    pub _reserved1: [u8; 2],
    pub framing: Framing,
    pub lun: Be64,
    pub itt: Be32,
    /// Target Transfer Tag or SNACK Tag.
    pub ttt_or_snack_tag: Be32,
    pub _reserved2: [u8; 4],
    pub exp_stat_sn: Be32,
    pub _reserved3: [u8; 8],
    /// BegRun.
    pub beg_run: Be32,
    /// RunLength.
    pub run_length: Be32,
}

impl SnackRequestHeader {
    pub(crate) const TYPE_MASK: u8 = 0x0f;
}

/// Reject (§11.17).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct RejectHeader {
    pub opcode: u8,
    pub flags: u8,
    /// Reason.
    pub reason: u8,
    pub _reserved1: u8,
    pub framing: Framing,
    pub _reserved2: [u8; 8],
    /// Always 0xffffffff.
    pub itt: Be32,
    pub _reserved3: [u8; 4],
    pub stat_sn: Be32,
    pub exp_cmd_sn: Be32,
    pub max_cmd_sn: Be32,
    /// DataSN/R2TSN.
    pub data_sn_or_r2t_sn: Be32,
    pub _reserved4: [u8; 8],
}

/// NOP-Out (§11.18).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct NopOutHeader {
    pub opcode: u8,
    pub flags: u8,
    pub _reserved1: [u8; 2],
    pub framing: Framing,
    /// LUN, echoed from the NOP-In this answers.
    pub lun: Be64,
    pub itt: Be32,
    /// Target Transfer Tag.
    pub ttt: Be32,
    pub cmd_sn: Be32,
    pub exp_stat_sn: Be32,
    pub _reserved2: [u8; 16],
}

/// NOP-In (§11.19).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct NopInHeader {
    pub opcode: u8,
    pub flags: u8,
    pub _reserved1: [u8; 2],
    pub framing: Framing,
    pub lun: Be64,
    pub itt: Be32,
    /// Target Transfer Tag.
    pub ttt: Be32,
    pub stat_sn: Be32,
    pub exp_cmd_sn: Be32,
    pub max_cmd_sn: Be32,
    pub _reserved2: [u8; 12],
}

/// The header of one Additional Header Segment (§11.2.2): AHSLength counts
/// the bytes from `specific` on, without padding.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct AhsHeader {
    /// AHSLength (§11.2.2.1).
    pub length: Be16,
    /// AHSType (§11.2.2.2).
    pub ahs_type: u8,
    /// AHS-Specific: reserved in both types RFC 7143 defines.
    pub specific: u8,
}

/// Bidirectional Expected Read-Data Length AHS (§11.2.2.4).
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub(crate) struct BidiReadLengthAhs {
    pub header: AhsHeader,
    /// Expected Read-Data Length.
    pub read_length: Be32,
}

/// AHSType of the Extended CDB AHS (§11.2.2.3).
pub(crate) const AHS_EXTENDED_CDB: u8 = 1;
/// AHSType of the Bidirectional Expected Read-Data Length AHS (§11.2.2.4).
pub(crate) const AHS_BIDI_READ_LENGTH: u8 = 2;
/// AHSLength of the Bidirectional Expected Read-Data Length AHS.
pub(crate) const BIDI_READ_LENGTH_AHS_LENGTH: u16 = 5;

// Every BHS is 48 bytes (§11.2.1); the AHS headers are 4 and 8.
const _: () = {
    use core::mem::size_of;
    assert!(size_of::<Framing>() == 4);
    assert!(size_of::<BasicHeader>() == BHS_LEN);
    assert!(size_of::<ScsiCommandHeader>() == BHS_LEN);
    assert!(size_of::<ScsiResponseHeader>() == BHS_LEN);
    assert!(size_of::<TaskMgmtRequestHeader>() == BHS_LEN);
    assert!(size_of::<TaskMgmtResponseHeader>() == BHS_LEN);
    assert!(size_of::<DataOutHeader>() == BHS_LEN);
    assert!(size_of::<DataInHeader>() == BHS_LEN);
    assert!(size_of::<R2tHeader>() == BHS_LEN);
    assert!(size_of::<AsyncMessageHeader>() == BHS_LEN);
    assert!(size_of::<TextRequestHeader>() == BHS_LEN);
    assert!(size_of::<TextResponseHeader>() == BHS_LEN);
    assert!(size_of::<LoginRequestHeader>() == BHS_LEN);
    assert!(size_of::<LoginResponseHeader>() == BHS_LEN);
    assert!(size_of::<LogoutRequestHeader>() == BHS_LEN);
    assert!(size_of::<LogoutResponseHeader>() == BHS_LEN);
    assert!(size_of::<SnackRequestHeader>() == BHS_LEN);
    assert!(size_of::<RejectHeader>() == BHS_LEN);
    assert!(size_of::<NopOutHeader>() == BHS_LEN);
    assert!(size_of::<NopInHeader>() == BHS_LEN);
    assert!(size_of::<AhsHeader>() == 4);
    assert!(size_of::<BidiReadLengthAhs>() == 8);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_fits_its_fields_or_is_refused() {
        let f = Framing::new(255, (1 << 24) - 1).unwrap();
        assert_eq!(f.as_bytes(), &[255, 0xff, 0xff, 0xff]);
        assert_eq!((f.ahs_bytes(), f.data_bytes()), (1020, (1 << 24) - 1));
        let f = Framing::new(1, 0x01_0203).unwrap();
        assert_eq!(f.as_bytes(), &[1, 1, 2, 3]);
        assert_eq!(Framing::new(256, 0), None);
        assert_eq!(Framing::new(0, 1 << 24), None);
    }

    #[test]
    fn byte0_keeps_the_opcode_to_six_bits() {
        assert_eq!(byte0::new(0x01, true), 0x41);
        assert_eq!(byte0::new(0x3f, false), 0x3f);
        assert_eq!(byte0::new(0xff, false), 0x3f);
    }
}

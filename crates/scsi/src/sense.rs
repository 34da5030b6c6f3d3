//! Sense data (SPC-5 4.4): the sense key, additional sense code and
//! qualifier, the INFORMATION field and the sense-key-specific field (a
//! field pointer, or a progress indication), encoded in fixed (4.4.3) or
//! descriptor (4.4.2) format.
//!
//! Every sense this crate and the target core report is a named constant
//! here ([`SenseCode`]), so that a reader can look up each one in SPC-5
//! annex F (ASC and ASCQ assignments).

/// The sense key (SPC-5 4.4.5, table 52).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SenseKey {
    NoSense = 0x0,
    RecoveredError = 0x1,
    NotReady = 0x2,
    MediumError = 0x3,
    HardwareError = 0x4,
    IllegalRequest = 0x5,
    UnitAttention = 0x6,
    DataProtect = 0x7,
    BlankCheck = 0x8,
    VendorSpecific = 0x9,
    CopyAborted = 0xA,
    AbortedCommand = 0xB,
    VolumeOverflow = 0xD,
    Miscompare = 0xE,
}

impl SenseKey {
    /// Decodes the 4-bit sense key; `None` for the reserved values 0xC and 0xF.
    pub fn from_u8(v: u8) -> Option<SenseKey> {
        Some(match v {
            0x0 => SenseKey::NoSense,
            0x1 => SenseKey::RecoveredError,
            0x2 => SenseKey::NotReady,
            0x3 => SenseKey::MediumError,
            0x4 => SenseKey::HardwareError,
            0x5 => SenseKey::IllegalRequest,
            0x6 => SenseKey::UnitAttention,
            0x7 => SenseKey::DataProtect,
            0x8 => SenseKey::BlankCheck,
            0x9 => SenseKey::VendorSpecific,
            0xA => SenseKey::CopyAborted,
            0xB => SenseKey::AbortedCommand,
            0xD => SenseKey::VolumeOverflow,
            0xE => SenseKey::Miscompare,
            _ => return None,
        })
    }
}

/// The field pointer form of the sense-key-specific data (SPC-5 4.4.4.2):
/// which byte (and optionally which bit) of the CDB or of the parameter
/// list was invalid.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FieldPointer {
    /// C/D: `true` if the error is in the CDB, `false` if in the parameter data.
    pub in_cdb: bool,
    /// BIT POINTER (0..=7) when BPV is set: the most significant bit of the field.
    pub bit: Option<u8>,
    /// FIELD POINTER: the byte of the CDB or parameter list.
    pub byte: u16,
}

impl FieldPointer {
    /// A pointer into the CDB.
    pub fn cdb(byte: u16, bit: Option<u8>) -> FieldPointer {
        FieldPointer { in_cdb: true, bit: bit.map(|b| b & 7), byte }
    }

    /// A pointer into the parameter list (data-out).
    pub fn data(byte: u16, bit: Option<u8>) -> FieldPointer {
        FieldPointer { in_cdb: false, bit: bit.map(|b| b & 7), byte }
    }

    /// The 3 sense-key-specific bytes with SKSV set.
    fn encode(&self) -> [u8; 3] {
        let mut b0 = 0x80;
        if self.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 7);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }

    /// Decodes 3 sense-key-specific bytes; `None` unless SKSV is set.
    fn decode(b: [u8; 3]) -> Option<FieldPointer> {
        if b[0] & 0x80 == 0 {
            return None;
        }
        Some(FieldPointer {
            in_cdb: b[0] & 0x40 != 0,
            bit: (b[0] & 0x08 != 0).then_some(b[0] & 7),
            byte: u16::from_be_bytes([b[1], b[2]]),
        })
    }
}

/// Sense data as a value; encode it with [`Sense::fixed`] or [`Sense::descriptor`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sense {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
    /// The INFORMATION field (for example the LBA in error, or the offset of a miscompare).
    pub information: Option<u64>,
    /// Sense-key-specific field pointer (SKSV set; ILLEGAL REQUEST and the
    /// other sense keys but NO SENSE and NOT READY).
    pub field_pointer: Option<FieldPointer>,
    /// Sense-key-specific PROGRESS INDICATION (SKSV set; NO SENSE and NOT
    /// READY, SPC-5 4.4.2.4.4): the fraction of an operation done, of
    /// 65536. Encoded only when there is no field pointer.
    pub progress: Option<u16>,
}

/// Response codes (SPC-5 4.4.1, table 27).
const FIXED_CURRENT: u8 = 0x70;
const FIXED_DEFERRED: u8 = 0x71;
const DESC_CURRENT: u8 = 0x72;
const DESC_DEFERRED: u8 = 0x73;
/// Length of fixed format sense data as this crate writes it.
pub const FIXED_LEN: usize = 18;

impl Sense {
    pub fn new(key: SenseKey, asc: u8, ascq: u8) -> Sense {
        Sense { key, asc, ascq, information: None, field_pointer: None, progress: None }
    }

    /// Sets the INFORMATION field.
    pub fn with_information(mut self, information: u64) -> Sense {
        self.information = Some(information);
        self
    }

    /// Sets the sense-key-specific field pointer.
    pub fn with_field_pointer(mut self, fp: FieldPointer) -> Sense {
        self.field_pointer = Some(fp);
        self
    }

    /// Sets the sense-key-specific progress indication (of 65536).
    pub fn with_progress(mut self, progress: u16) -> Sense {
        self.progress = Some(progress);
        self
    }

    /// Whether the sense-key-specific field of this sense key is a progress
    /// indication (SPC-5 table 49) rather than a field pointer.
    fn key_has_progress(key: SenseKey) -> bool {
        matches!(key, SenseKey::NoSense | SenseKey::NotReady)
    }

    /// The 3 sense-key-specific bytes, SKSV set, if there are any.
    fn sense_key_specific(&self) -> Option<[u8; 3]> {
        if let Some(fp) = self.field_pointer {
            return Some(fp.encode());
        }
        let [hi, lo] = self.progress?.to_be_bytes();
        Some([0x80, hi, lo])
    }

    /// Reads 3 sense-key-specific bytes according to the sense key.
    fn set_sense_key_specific(&mut self, b: [u8; 3]) {
        if b[0] & 0x80 == 0 {
            return;
        }
        if Self::key_has_progress(self.key) {
            self.progress = Some(u16::from_be_bytes([b[1], b[2]]));
        } else {
            self.field_pointer = FieldPointer::decode(b);
        }
    }

    /// The (key, ASC, ASCQ) triple.
    pub fn code(&self) -> SenseCode {
        SenseCode { key: self.key, asc: self.asc, ascq: self.ascq }
    }

    /// Fixed format, 18 bytes, response code 70h (SPC-5 4.4.3). An
    /// INFORMATION value wider than 32 bits cannot be represented: VALID is
    /// then zero (SPC-5 4.4.3, and SBC-4 4.18.1 for LBAs).
    pub fn fixed(&self) -> Vec<u8> {
        let mut b = vec![0u8; FIXED_LEN];
        b[0] = FIXED_CURRENT;
        if let Some(info) = self.information {
            if let Ok(info) = u32::try_from(info) {
                b[0] |= 0x80;
                b[3..7].copy_from_slice(&info.to_be_bytes());
            }
        }
        b[2] = self.key as u8;
        b[7] = (FIXED_LEN - 8) as u8;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(sks) = self.sense_key_specific() {
            b[15..18].copy_from_slice(&sks);
        }
        b
    }

    /// Descriptor format, response code 72h (SPC-5 4.4.2), with an
    /// information descriptor (4.4.2.2) and a sense key specific descriptor
    /// (4.4.2.3) when those fields are present.
    pub fn descriptor(&self) -> Vec<u8> {
        let mut b = vec![0u8; 8];
        b[0] = DESC_CURRENT;
        b[1] = self.key as u8;
        b[2] = self.asc;
        b[3] = self.ascq;
        if let Some(info) = self.information {
            b.extend_from_slice(&[0x00, 0x0A, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(sks) = self.sense_key_specific() {
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&sks);
            b.push(0);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }

    /// Descriptor format if `descriptor` (D_SENSE set in the control mode
    /// page, or DESC in REQUEST SENSE), fixed otherwise.
    pub fn encode(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            self.descriptor()
        } else {
            self.fixed()
        }
    }

    /// Decodes fixed or descriptor format sense data (current or deferred).
    /// Returns `None` for malformed data; never panics.
    pub fn decode(bytes: &[u8]) -> Option<Sense> {
        let code = bytes.first()? & 0x7F;
        match code {
            FIXED_CURRENT | FIXED_DEFERRED => Self::decode_fixed(bytes),
            DESC_CURRENT | DESC_DEFERRED => Self::decode_descriptor(bytes),
            _ => None,
        }
    }

    fn decode_fixed(b: &[u8]) -> Option<Sense> {
        let key = SenseKey::from_u8(b.get(2)? & 0x0F)?;
        // The additional sense length bounds what follows byte 7.
        let end = b.len().min(8 + usize::from(*b.get(7)?));
        let b = &b[..end];
        let at = |i: usize| b.get(i).copied().unwrap_or(0);
        let information = (at(0) & 0x80 != 0).then(|| u64::from(u32::from_be_bytes([at(3), at(4), at(5), at(6)])));
        let mut sense = Sense { information, ..Sense::new(key, at(12), at(13)) };
        if b.len() >= 18 {
            sense.set_sense_key_specific([at(15), at(16), at(17)]);
        }
        Some(sense)
    }

    fn decode_descriptor(b: &[u8]) -> Option<Sense> {
        if b.len() < 8 {
            return None;
        }
        let key = SenseKey::from_u8(b[1] & 0x0F)?;
        let mut sense = Sense::new(key, b[2], b[3]);
        let end = b.len().min(8 + usize::from(b[7]));
        let mut pos = 8;
        while pos + 2 <= end {
            let kind = b[pos];
            let len = usize::from(b[pos + 1]);
            let body = b.get(pos + 2..(pos + 2 + len).min(end))?;
            match kind {
                0x00 if body.len() >= 10 && body[0] & 0x80 != 0 => {
                    let mut v = [0u8; 8];
                    v.copy_from_slice(&body[2..10]);
                    sense.information = Some(u64::from_be_bytes(v));
                }
                0x02 if body.len() >= 5 => sense.set_sense_key_specific([body[2], body[3], body[4]]),
                _ => {}
            }
            pos += 2 + len;
        }
        Some(sense)
    }
}

/// A sense key with its additional sense code and qualifier: the name of a
/// condition (SPC-5 annex F.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SenseCode {
    pub key: SenseKey,
    pub asc: u8,
    pub ascq: u8,
}

impl SenseCode {
    pub const fn new(key: SenseKey, asc: u8, ascq: u8) -> SenseCode {
        SenseCode { key, asc, ascq }
    }

    /// The sense data for this condition, with no INFORMATION or field pointer.
    pub fn sense(self) -> Sense {
        Sense::new(self.key, self.asc, self.ascq)
    }
}

impl From<SenseCode> for Sense {
    fn from(c: SenseCode) -> Sense {
        c.sense()
    }
}

macro_rules! codes {
    ($($(#[$m:meta])* $name:ident = $key:ident, $asc:expr, $ascq:expr;)*) => {
        $($(#[$m])* pub const $name: SenseCode = SenseCode::new(SenseKey::$key, $asc, $ascq);)*
    };
}

codes! {
    /// NO SENSE, NO ADDITIONAL SENSE INFORMATION.
    NO_SENSE = NoSense, 0x00, 0x00;
    /// LOGICAL UNIT NOT READY, CAUSE NOT REPORTABLE.
    NOT_READY = NotReady, 0x04, 0x00;
    /// LOGICAL UNIT IS IN PROCESS OF BECOMING READY (initiators retry it):
    /// a gateway re-reading the cluster's reservation state.
    BECOMING_READY = NotReady, 0x04, 0x01;
    /// LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED (after STOP UNIT).
    NOT_READY_INITIALIZING_COMMAND_REQUIRED = NotReady, 0x04, 0x02;
    /// LOGICAL UNIT NOT READY, MANUAL INTERVENTION REQUIRED.
    NOT_READY_MANUAL_INTERVENTION_REQUIRED = NotReady, 0x04, 0x03;
    /// LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS.
    SANITIZE_IN_PROGRESS = NotReady, 0x04, 0x1B;
    /// LOGICAL UNIT NOT ACCESSIBLE, ASYMMETRIC ACCESS STATE TRANSITION (SPC-5 5.16.2.5).
    LU_NOT_ACCESSIBLE_ASYMMETRIC_ACCESS_STATE_TRANSITION = NotReady, 0x04, 0x0A;
    /// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN STANDBY STATE (SPC-5 5.16.2.4.4).
    LU_NOT_ACCESSIBLE_TARGET_PORT_IN_STANDBY = NotReady, 0x04, 0x0B;
    /// LOGICAL UNIT NOT ACCESSIBLE, TARGET PORT IN UNAVAILABLE STATE (SPC-5 5.16.2.4.5).
    LU_NOT_ACCESSIBLE_TARGET_PORT_UNAVAILABLE = NotReady, 0x04, 0x0C;
    /// LOGICAL UNIT NOT READY, OFFLINE (a target port in the offline state).
    NOT_READY_OFFLINE = NotReady, 0x04, 0x12;
    /// MEDIUM NOT PRESENT.
    MEDIUM_NOT_PRESENT = NotReady, 0x3A, 0x00;
    /// WRITE ERROR.
    WRITE_ERROR = MediumError, 0x0C, 0x00;
    /// UNRECOVERED READ ERROR.
    UNRECOVERED_READ_ERROR = MediumError, 0x11, 0x00;
    /// SANITIZE COMMAND FAILED.
    SANITIZE_COMMAND_FAILED = MediumError, 0x31, 0x03;
    /// INTERNAL TARGET FAILURE.
    INTERNAL_TARGET_FAILURE = HardwareError, 0x44, 0x00;
    /// SET TARGET PORT GROUPS COMMAND FAILED (SPC-5 6.45).
    SET_TARGET_PORT_GROUPS_COMMAND_FAILED = HardwareError, 0x67, 0x0A;
    /// ABORTED COMMAND, COMMAND TIMEOUT DURING PROCESSING (SPC-5: the
    /// backend did not answer in time; initiators retry ABORTED COMMAND).
    COMMAND_TIMEOUT_DURING_PROCESSING = AbortedCommand, 0x2E, 0x02;
    /// PARAMETER LIST LENGTH ERROR.
    PARAMETER_LIST_LENGTH_ERROR = IllegalRequest, 0x1A, 0x00;
    /// INVALID COMMAND OPERATION CODE.
    INVALID_OPCODE = IllegalRequest, 0x20, 0x00;
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE.
    LBA_OUT_OF_RANGE = IllegalRequest, 0x21, 0x00;
    /// INVALID FIELD IN CDB.
    INVALID_FIELD_IN_CDB = IllegalRequest, 0x24, 0x00;
    /// COMMAND SEQUENCE ERROR.
    COMMAND_SEQUENCE_ERROR = IllegalRequest, 0x2C, 0x00;
    /// OPERATION IN PROGRESS (an EXTENDED COPY whose list identifier is in use).
    OPERATION_IN_PROGRESS = IllegalRequest, 0x00, 0x16;
    /// LOGICAL UNIT NOT SUPPORTED.
    LUN_NOT_SUPPORTED = IllegalRequest, 0x25, 0x00;
    /// INVALID FIELD IN PARAMETER LIST.
    INVALID_FIELD_IN_PARAMETER_LIST = IllegalRequest, 0x26, 0x00;
    /// TOO MANY TARGET DESCRIPTORS (EXTENDED COPY).
    TOO_MANY_TARGET_DESCRIPTORS = IllegalRequest, 0x26, 0x06;
    /// UNSUPPORTED TARGET DESCRIPTOR TYPE CODE.
    UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE = IllegalRequest, 0x26, 0x07;
    /// TOO MANY SEGMENT DESCRIPTORS.
    TOO_MANY_SEGMENT_DESCRIPTORS = IllegalRequest, 0x26, 0x08;
    /// UNSUPPORTED SEGMENT DESCRIPTOR TYPE CODE.
    UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE = IllegalRequest, 0x26, 0x09;
    /// UNREACHABLE COPY TARGET.
    UNREACHABLE_COPY_TARGET = CopyAborted, 0x08, 0x04;
    /// COPY TARGET DEVICE NOT REACHABLE.
    COPY_TARGET_DEVICE_NOT_REACHABLE = CopyAborted, 0x0D, 0x02;
    /// INCORRECT COPY TARGET DEVICE TYPE.
    INCORRECT_COPY_TARGET_DEVICE_TYPE = CopyAborted, 0x0D, 0x03;
    /// PARAMETER NOT SUPPORTED.
    PARAMETER_NOT_SUPPORTED = IllegalRequest, 0x26, 0x01;
    /// PARAMETER VALUE INVALID.
    PARAMETER_VALUE_INVALID = IllegalRequest, 0x26, 0x02;
    /// INVALID RELEASE OF PERSISTENT RESERVATION.
    INVALID_RELEASE_OF_PERSISTENT_RESERVATION = IllegalRequest, 0x26, 0x04;
    /// SAVING PARAMETERS NOT SUPPORTED.
    SAVING_PARAMETERS_NOT_SUPPORTED = IllegalRequest, 0x39, 0x00;
    /// MEDIUM REMOVAL PREVENTED.
    MEDIUM_REMOVAL_PREVENTED = IllegalRequest, 0x53, 0x02;
    /// INSUFFICIENT REGISTRATION RESOURCES.
    INSUFFICIENT_REGISTRATION_RESOURCES = IllegalRequest, 0x55, 0x04;
    /// NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED.
    NOT_READY_TO_READY_CHANGE = UnitAttention, 0x28, 0x00;
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED.
    POWER_ON_RESET = UnitAttention, 0x29, 0x00;
    /// POWER ON OCCURRED.
    POWER_ON_OCCURRED = UnitAttention, 0x29, 0x01;
    /// SCSI BUS RESET OCCURRED.
    SCSI_BUS_RESET = UnitAttention, 0x29, 0x02;
    /// BUS DEVICE RESET FUNCTION OCCURRED (logical unit reset).
    BUS_DEVICE_RESET = UnitAttention, 0x29, 0x03;
    /// DEVICE INTERNAL RESET.
    DEVICE_INTERNAL_RESET = UnitAttention, 0x29, 0x04;
    /// I_T NEXUS LOSS OCCURRED.
    I_T_NEXUS_LOSS = UnitAttention, 0x29, 0x07;
    /// MODE PARAMETERS CHANGED.
    MODE_PARAMETERS_CHANGED = UnitAttention, 0x2A, 0x01;
    /// RESERVATIONS PREEMPTED.
    RESERVATIONS_PREEMPTED = UnitAttention, 0x2A, 0x03;
    /// RESERVATIONS RELEASED.
    RESERVATIONS_RELEASED = UnitAttention, 0x2A, 0x04;
    /// REGISTRATIONS PREEMPTED.
    REGISTRATIONS_PREEMPTED = UnitAttention, 0x2A, 0x05;
    /// ASYMMETRIC ACCESS STATE CHANGED (SPC-5 5.16.2.5).
    ASYMMETRIC_ACCESS_STATE_CHANGED = UnitAttention, 0x2A, 0x06;
    /// CAPACITY DATA HAS CHANGED.
    CAPACITY_DATA_HAS_CHANGED = UnitAttention, 0x2A, 0x09;
    /// COMMANDS CLEARED BY ANOTHER INITIATOR.
    COMMANDS_CLEARED_BY_ANOTHER_INITIATOR = UnitAttention, 0x2F, 0x00;
    /// COMMANDS CLEARED BY POWER LOSS NOTIFICATION.
    COMMANDS_CLEARED_BY_POWER_LOSS = UnitAttention, 0x2F, 0x01;
    /// COMMANDS CLEARED BY DEVICE SERVER.
    COMMANDS_CLEARED_BY_DEVICE_SERVER = UnitAttention, 0x2F, 0x02;
    /// THIN PROVISIONING SOFT THRESHOLD REACHED.
    THIN_PROVISIONING_SOFT_THRESHOLD_REACHED = UnitAttention, 0x38, 0x07;
    /// INQUIRY DATA HAS CHANGED.
    INQUIRY_DATA_HAS_CHANGED = UnitAttention, 0x3F, 0x03;
    /// REPORTED LUNS DATA HAS CHANGED.
    REPORTED_LUNS_DATA_HAS_CHANGED = UnitAttention, 0x3F, 0x0E;
    /// WRITE PROTECTED.
    WRITE_PROTECTED = DataProtect, 0x27, 0x00;
    /// HARDWARE WRITE PROTECTED.
    HARDWARE_WRITE_PROTECTED = DataProtect, 0x27, 0x01;
    /// LOGICAL UNIT SOFTWARE WRITE PROTECTED (SWP in the control mode page).
    SOFTWARE_WRITE_PROTECTED = DataProtect, 0x27, 0x02;
    /// SPACE ALLOCATION FAILED WRITE PROTECT (thin pool out of space).
    SPACE_ALLOCATION_FAILED_WRITE_PROTECT = DataProtect, 0x27, 0x07;
    /// DATA PHASE ERROR.
    DATA_PHASE_ERROR = AbortedCommand, 0x4B, 0x00;
    /// OVERLAPPED COMMANDS ATTEMPTED.
    OVERLAPPED_COMMANDS_ATTEMPTED = AbortedCommand, 0x4E, 0x00;
    /// MISCOMPARE DURING VERIFY OPERATION.
    MISCOMPARE_DURING_VERIFY = Miscompare, 0x1D, 0x00;
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fixed_layout() {
        let s = INVALID_FIELD_IN_CDB.sense().with_field_pointer(FieldPointer::cdb(1, Some(5)));
        let b = s.fixed();
        assert_eq!(b.len(), 18);
        assert_eq!(b[0], 0x70);
        assert_eq!(b[2], 0x05);
        assert_eq!(b[7], 10);
        assert_eq!((b[12], b[13]), (0x24, 0x00));
        assert_eq!(&b[15..18], &[0x80 | 0x40 | 0x08 | 5, 0, 1]);
        assert_eq!(Sense::decode(&b), Some(s));
    }

    #[test]
    fn fixed_information_valid_only_when_it_fits() {
        let s = LBA_OUT_OF_RANGE.sense().with_information(0x1234);
        let b = s.fixed();
        assert_eq!(b[0], 0xF0);
        assert_eq!(&b[3..7], &[0, 0, 0x12, 0x34]);
        let big = LBA_OUT_OF_RANGE.sense().with_information(1 << 40);
        let b = big.fixed();
        assert_eq!(b[0], 0x70);
        assert_eq!(Sense::decode(&b).unwrap().information, None);
    }

    #[test]
    fn descriptor_layout() {
        let s = LBA_OUT_OF_RANGE.sense().with_information(1 << 40).with_field_pointer(FieldPointer::data(300, None));
        let b = s.descriptor();
        assert_eq!(&b[..4], &[0x72, 0x05, 0x21, 0x00]);
        assert_eq!(b[7] as usize, b.len() - 8);
        assert_eq!(&b[8..12], &[0x00, 0x0A, 0x80, 0x00]);
        assert_eq!(&b[20..24], &[0x02, 0x06, 0, 0]);
        assert_eq!(&b[24..27], &[0x80, 0x01, 0x2C]);
        assert_eq!(Sense::decode(&b), Some(s));
        let plain = POWER_ON_RESET.sense().descriptor();
        assert_eq!(plain, vec![0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]);
        assert_eq!(Sense::decode(&plain), Some(POWER_ON_RESET.sense()));
    }

    #[test]
    fn progress_indication_layout() {
        // SPC-5 4.4.2.4.4: SKSV, then PROGRESS INDICATION in bytes 16-17
        // (fixed) or in the sense key specific descriptor.
        let s = SANITIZE_IN_PROGRESS.sense().with_progress(0x4000);
        let f = s.fixed();
        assert_eq!((f[2], f[12], f[13]), (0x02, 0x04, 0x1B));
        assert_eq!(&f[15..18], &[0x80, 0x40, 0x00]);
        assert_eq!(Sense::decode(&f), Some(s.clone()));
        let d = s.descriptor();
        assert_eq!(&d[8..16], &[0x02, 0x06, 0, 0, 0x80, 0x40, 0x00, 0]);
        assert_eq!(Sense::decode(&d), Some(s));
        // The same bytes under ILLEGAL REQUEST are a field pointer.
        let mut ir = f.clone();
        ir[2] = 0x05;
        let decoded = Sense::decode(&ir).unwrap();
        assert_eq!((decoded.progress, decoded.field_pointer), (None, Some(FieldPointer::data(0x4000, None))));
        // Without SKSV there is neither.
        let mut none = f;
        none[15] = 0;
        assert_eq!(Sense::decode(&none).unwrap().progress, None);
    }

    #[test]
    fn decode_rejects_garbage() {
        assert_eq!(Sense::decode(&[]), None);
        assert_eq!(Sense::decode(&[0x00; 18]), None);
        assert_eq!(Sense::decode(&[0x72, 0x0C, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(Sense::decode(&[0x72, 0x05]), None);
        // A descriptor claiming more bytes than exist is cut, not read past.
        assert!(Sense::decode(&[0x72, 0x05, 0x24, 0, 0, 0, 0, 200, 0x00, 0x0A, 0x80]).is_some());
        let short_fixed = Sense::decode(&[0x70, 0, 0x06, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(short_fixed, Sense::new(SenseKey::UnitAttention, 0, 0));
    }

    fn any_key() -> impl Strategy<Value = SenseKey> {
        (0u8..16).prop_filter_map("reserved key", SenseKey::from_u8)
    }

    fn any_fp() -> impl Strategy<Value = Option<FieldPointer>> {
        proptest::option::of(
            (any::<bool>(), proptest::option::of(0u8..8), any::<u16>()).prop_map(|(in_cdb, bit, byte)| FieldPointer {
                in_cdb,
                bit,
                byte,
            }),
        )
    }

    /// The sense-key-specific field the key carries: a field pointer, or a
    /// progress indication for NO SENSE and NOT READY.
    fn with_sks(key: SenseKey, fp: Option<FieldPointer>, progress: Option<u16>) -> (Option<FieldPointer>, Option<u16>) {
        if Sense::key_has_progress(key) {
            (None, progress)
        } else {
            (fp, None)
        }
    }

    proptest! {
        #[test]
        fn descriptor_round_trips(key in any_key(), asc: u8, ascq: u8,
                                  info in proptest::option::of(any::<u64>()), fp in any_fp(),
                                  progress in proptest::option::of(any::<u16>())) {
            let (field_pointer, progress) = with_sks(key, fp, progress);
            let s = Sense { key, asc, ascq, information: info, field_pointer, progress };
            prop_assert_eq!(Sense::decode(&s.descriptor()), Some(s.clone()));
            prop_assert_eq!(Sense::decode(&s.encode(true)), Some(s));
        }

        #[test]
        fn fixed_round_trips(key in any_key(), asc: u8, ascq: u8,
                             info in proptest::option::of(any::<u32>()), fp in any_fp(),
                             progress in proptest::option::of(any::<u16>())) {
            let (field_pointer, progress) = with_sks(key, fp, progress);
            let s = Sense { key, asc, ascq, information: info.map(u64::from), field_pointer, progress };
            prop_assert_eq!(Sense::decode(&s.fixed()), Some(s.clone()));
            prop_assert_eq!(Sense::decode(&s.encode(false)), Some(s));
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = Sense::decode(&bytes);
        }
    }
}

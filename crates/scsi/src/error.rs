//! The typed error of a command and its one mapping to status and sense.

use lunar_block::{BlockError, ErrorKind};
use thiserror::Error;

use crate::sense::{self, FieldPointer, Sense, SenseCode};
use crate::status::Status;

/// Why a command did not complete with GOOD status. Each variant maps to
/// exactly one sense in [`ScsiError::sense`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScsiError {
    /// The operation code is not supported (SPC-5 4.4.7: INVALID COMMAND OPERATION CODE).
    #[error("invalid command operation code {0:#04x}")]
    InvalidOpcode(u8),
    /// The CDB is shorter than its operation code requires.
    #[error("CDB of {len} bytes is too short for operation code {opcode:#04x} ({needed} bytes)")]
    CdbTooShort { opcode: u8, len: usize, needed: usize },
    /// A field of the CDB is reserved, unsupported or out of range.
    #[error("invalid field in CDB at byte {byte}, bit {bit:?}")]
    InvalidFieldInCdb { byte: u16, bit: Option<u8> },
    /// A field of the parameter list (data-out) is invalid.
    #[error("invalid field in parameter list at byte {byte}, bit {bit:?}")]
    InvalidFieldInParameterList { byte: u16, bit: Option<u8> },
    /// The parameter list is too short or its length fields disagree.
    #[error("parameter list length error")]
    ParameterListLengthError,
    /// The data-out buffer is shorter than the command needs.
    #[error("data-out of {actual} bytes, command needs {expected}")]
    DataOutLength { expected: usize, actual: usize },
    /// An LBA or a range is outside the medium (SBC-4 4.5).
    #[error("LBA {lba} out of range")]
    LbaOutOfRange { lba: u64 },
    /// A write to a write-protected (readonly) logical unit.
    #[error("write protected")]
    WriteProtected,
    /// A write while SWP is set in the control mode page (SPC-5 7.5.8).
    #[error("software write protected")]
    SoftwareWriteProtected,
    /// VERIFY, WRITE AND VERIFY or COMPARE AND WRITE found different data;
    /// `offset` is the byte offset of the first difference (SBC-4 5.3).
    #[error("miscompare at byte offset {offset}")]
    Miscompare { offset: u64 },
    /// Saved mode or log parameters were asked for; this device keeps none.
    #[error("saving parameters not supported")]
    SavingParametersNotSupported,
    /// START STOP UNIT asked to eject a medium whose removal is prevented.
    #[error("medium removal prevented")]
    MediumRemovalPrevented,
    /// The removable medium was ejected.
    #[error("medium not present")]
    MediumNotPresent,
    /// The logical unit is stopped (START STOP UNIT with START=0).
    #[error("logical unit not ready, initializing command required")]
    NotReady,
    /// A sanitize operation is running (SBC-4 4.11.2); `progress` is the
    /// fraction done, of 65536, reported as the progress indication.
    #[error("sanitize in progress ({progress}/65536)")]
    SanitizeInProgress { progress: u16 },
    /// The last sanitize operation failed: medium access is refused until
    /// one succeeds or EXIT FAILURE MODE (SBC-4 4.11.4).
    #[error("sanitize failed")]
    SanitizeFailed,
    /// A command out of the order its standard asks for (e.g. SANITIZE
    /// EXIT FAILURE MODE without a failed sanitize).
    #[error("command sequence error")]
    CommandSequenceError,
    /// An EXTENDED COPY names the list identifier of a copy of the same
    /// I_T nexus still in progress (SPC-4 6.3.1).
    #[error("operation in progress")]
    OperationInProgress,
    /// The backend failed; mapped by its kind and operation.
    #[error("backend: {0}")]
    Backend(BlockError),
    /// Any other condition, with its sense as is (used by the target core).
    #[error("check condition {0:?}")]
    Sense(Sense),
    /// Completes with RESERVATION CONFLICT status and no sense.
    #[error("reservation conflict")]
    ReservationConflict,
    /// EXTENDED COPY names more CSCD (or segment) descriptors than the copy
    /// manager supports (SPC-4 6.3.1).
    #[error("too many {} descriptors", if *segments { "segment" } else { "CSCD" })]
    TooManyDescriptors { segments: bool },
    /// EXTENDED COPY has a CSCD (or segment) descriptor of an unsupported
    /// type at parameter list byte `byte`.
    #[error("unsupported {} descriptor type at byte {byte}", if *segment { "segment" } else { "CSCD" })]
    UnsupportedDescriptorType { segment: bool, byte: usize },
    /// EXTENDED COPY stopped while processing a segment (COPY ABORTED).
    #[error("copy aborted: {0:?}")]
    CopyAborted(CopyAbort),
}

/// Why a copy was aborted (SPC-4 6.3.1, sense key COPY ABORTED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyAbort {
    /// A segment names a CSCD descriptor that is absent, or whose
    /// designator no logical unit of the target has.
    Unreachable,
    /// The copy source or destination cannot do what the segment asks:
    /// blocks beyond its capacity, not ready, or sanitizing.
    TargetNotReachable,
    /// The logical block length differs from the CSCD descriptor's, or the
    /// segment is not a whole number of blocks of both units.
    IncorrectDeviceType,
}

impl ScsiError {
    /// INVALID FIELD IN CDB pointing at `byte`, `bit`.
    pub fn field(byte: usize, bit: u8) -> ScsiError {
        ScsiError::InvalidFieldInCdb { byte: to_u16(byte), bit: Some(bit) }
    }

    /// INVALID FIELD IN CDB pointing at a whole byte (multi-byte fields).
    pub fn field_byte(byte: usize) -> ScsiError {
        ScsiError::InvalidFieldInCdb { byte: to_u16(byte), bit: None }
    }

    /// INVALID FIELD IN PARAMETER LIST at `byte` (and `bit` if known).
    pub fn param(byte: usize, bit: Option<u8>) -> ScsiError {
        ScsiError::InvalidFieldInParameterList { byte: to_u16(byte), bit }
    }

    /// The status this error completes the command with.
    pub fn status(&self) -> Status {
        match self {
            ScsiError::ReservationConflict => Status::ReservationConflict,
            _ => Status::CheckCondition,
        }
    }

    /// The sense data reported with CHECK CONDITION (SPC-5 4.4).
    pub fn sense(&self) -> Sense {
        match self {
            ScsiError::InvalidOpcode(_) => sense::INVALID_OPCODE.sense(),
            ScsiError::CdbTooShort { .. } => sense::INVALID_FIELD_IN_CDB.sense(),
            ScsiError::InvalidFieldInCdb { byte, bit } => {
                sense::INVALID_FIELD_IN_CDB.sense().with_field_pointer(FieldPointer::cdb(*byte, *bit))
            }
            ScsiError::InvalidFieldInParameterList { byte, bit } => {
                sense::INVALID_FIELD_IN_PARAMETER_LIST.sense().with_field_pointer(FieldPointer::data(*byte, *bit))
            }
            ScsiError::DataOutLength { .. } => sense::INVALID_FIELD_IN_CDB.sense(),
            ScsiError::ParameterListLengthError => sense::PARAMETER_LIST_LENGTH_ERROR.sense(),
            ScsiError::LbaOutOfRange { lba } => sense::LBA_OUT_OF_RANGE.sense().with_information(*lba),
            ScsiError::WriteProtected => sense::WRITE_PROTECTED.sense(),
            ScsiError::SoftwareWriteProtected => sense::SOFTWARE_WRITE_PROTECTED.sense(),
            ScsiError::Miscompare { offset } => sense::MISCOMPARE_DURING_VERIFY.sense().with_information(*offset),
            ScsiError::SavingParametersNotSupported => sense::SAVING_PARAMETERS_NOT_SUPPORTED.sense(),
            ScsiError::MediumRemovalPrevented => sense::MEDIUM_REMOVAL_PREVENTED.sense(),
            ScsiError::MediumNotPresent => sense::MEDIUM_NOT_PRESENT.sense(),
            ScsiError::NotReady => sense::NOT_READY_INITIALIZING_COMMAND_REQUIRED.sense(),
            ScsiError::SanitizeInProgress { progress } => sense::SANITIZE_IN_PROGRESS.sense().with_progress(*progress),
            ScsiError::SanitizeFailed => sense::SANITIZE_COMMAND_FAILED.sense(),
            ScsiError::CommandSequenceError => sense::COMMAND_SEQUENCE_ERROR.sense(),
            ScsiError::OperationInProgress => sense::OPERATION_IN_PROGRESS.sense(),
            ScsiError::Backend(e) => backend_sense(e).sense(),
            ScsiError::Sense(s) => s.clone(),
            ScsiError::ReservationConflict => sense::NO_SENSE.sense(),
            ScsiError::TooManyDescriptors { segments: false } => sense::TOO_MANY_TARGET_DESCRIPTORS.sense(),
            ScsiError::TooManyDescriptors { segments: true } => sense::TOO_MANY_SEGMENT_DESCRIPTORS.sense(),
            ScsiError::UnsupportedDescriptorType { segment, byte } => {
                let code = if *segment {
                    sense::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE
                } else {
                    sense::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE
                };
                code.sense().with_field_pointer(FieldPointer::data(to_u16(*byte), None))
            }
            ScsiError::CopyAborted(CopyAbort::Unreachable) => sense::UNREACHABLE_COPY_TARGET.sense(),
            ScsiError::CopyAborted(CopyAbort::TargetNotReachable) => sense::COPY_TARGET_DEVICE_NOT_REACHABLE.sense(),
            ScsiError::CopyAborted(CopyAbort::IncorrectDeviceType) => sense::INCORRECT_COPY_TARGET_DEVICE_TYPE.sense(),
        }
    }

    /// Whether the backend failed (for the error policies of the core).
    pub fn backend_error(&self) -> Option<&BlockError> {
        match self {
            ScsiError::Backend(e) => Some(e),
            _ => None,
        }
    }
}

fn to_u16(v: usize) -> u16 {
    u16::try_from(v).unwrap_or(u16::MAX)
}

/// Backend failures as sense: media errors by direction, ENOSPC as the thin
/// provisioning condition (SBC-4 4.7.3.6), EROFS as write protect, a
/// fenced backend (Ceph's blocklist) as NOT READY, MANUAL INTERVENTION REQUIRED,
/// a backend timeout (a Ceph cluster away) as ABORTED COMMAND, COMMAND TIMEOUT
/// DURING PROCESSING.
fn backend_sense(e: &BlockError) -> SenseCode {
    let is_read = e.op == "read";
    match e.kind {
        ErrorKind::NoSpace => sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT,
        ErrorKind::ReadOnly => sense::WRITE_PROTECTED,
        ErrorKind::OutOfRange => sense::LBA_OUT_OF_RANGE,
        ErrorKind::Unsupported => sense::INTERNAL_TARGET_FAILURE,
        // A fenced (blocklisted) cluster client: nothing reaches the image until reopened.
        ErrorKind::Offline => sense::NOT_READY_MANUAL_INTERVENTION_REQUIRED,
        // The cluster did not answer in time (rbd's I/O timeout): retryable.
        ErrorKind::TimedOut => sense::COMMAND_TIMEOUT_DURING_PROCESSING,
        ErrorKind::Io | ErrorKind::Other if is_read => sense::UNRECOVERED_READ_ERROR,
        ErrorKind::Io | ErrorKind::Other => sense::WRITE_ERROR,
    }
}

impl From<BlockError> for ScsiError {
    fn from(e: BlockError) -> ScsiError {
        ScsiError::Backend(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sense::SenseKey;

    #[test]
    fn mapping() {
        let s = ScsiError::field(2, 7).sense();
        assert_eq!(s.code(), sense::INVALID_FIELD_IN_CDB);
        assert_eq!(s.field_pointer, Some(FieldPointer::cdb(2, Some(7))));
        assert_eq!(ScsiError::InvalidOpcode(0xFF).sense().code(), sense::INVALID_OPCODE);
        let s = ScsiError::LbaOutOfRange { lba: 99 }.sense();
        assert_eq!((s.code(), s.information), (sense::LBA_OUT_OF_RANGE, Some(99)));
        assert_eq!(ScsiError::Miscompare { offset: 3 }.sense().key, SenseKey::Miscompare);
        assert_eq!(ScsiError::ReservationConflict.status(), Status::ReservationConflict);
        assert_eq!(ScsiError::WriteProtected.status(), Status::CheckCondition);
    }

    #[test]
    fn backend_errors() {
        let e = |kind, op| ScsiError::Backend(BlockError::new(kind, 5, op, 0, 512)).sense().code();
        assert_eq!(e(ErrorKind::Io, "read"), sense::UNRECOVERED_READ_ERROR);
        assert_eq!(e(ErrorKind::Io, "write"), sense::WRITE_ERROR);
        assert_eq!(e(ErrorKind::Io, "flush"), sense::WRITE_ERROR);
        assert_eq!(e(ErrorKind::NoSpace, "write"), sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT);
        assert_eq!(e(ErrorKind::ReadOnly, "write"), sense::WRITE_PROTECTED);
        assert_eq!(e(ErrorKind::Unsupported, "discard"), sense::INTERNAL_TARGET_FAILURE);
        assert_eq!(e(ErrorKind::Offline, "write"), sense::NOT_READY_MANUAL_INTERVENTION_REQUIRED);
        assert_eq!(e(ErrorKind::TimedOut, "write"), sense::COMMAND_TIMEOUT_DURING_PROCESSING);
        assert_eq!(e(ErrorKind::TimedOut, "read").key, SenseKey::AbortedCommand);
    }
}

//! Errors of PDU decoding and what RFC 7143 says to do about each.

use super::bhs::Opcode;
use super::reject::RejectReason;

/// What was wrong with a received PDU.
///
/// Every error maps to the reaction RFC 7143 prescribes through
/// [`PduError::reaction`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PduError {
    /// The opcode is not defined by RFC 7143 (§11.2.1.2).
    #[error("unsupported opcode {0:#04x}")]
    UnsupportedOpcode(u8),
    /// The caller passed an AHS whose length differs from TotalAHSLength.
    #[error("AHS is {actual} bytes but the BHS announces {expected}")]
    AhsLength { expected: usize, actual: usize },
    /// The caller passed a data segment whose length differs from the BHS.
    #[error("data segment is {actual} bytes but the BHS announces {expected}")]
    DataLength { expected: usize, actual: usize },
    /// An Additional Header Segment is malformed (§11.2.2).
    #[error("malformed AHS: {0}")]
    MalformedAhs(&'static str),
    /// A header field holds a value the RFC does not allow.
    #[error("invalid {field} ({value:#x}) in {opcode:?}")]
    InvalidField { opcode: Opcode, field: &'static str, value: u32 },
    /// The PDU breaks a rule of the protocol.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The data segment exceeds the receiver's MaxRecvDataSegmentLength
    /// (§13.12).
    #[error("data segment of {length} bytes exceeds MaxRecvDataSegmentLength {max}")]
    DataSegmentTooLong { length: usize, max: u32 },
    /// The header digest does not match (§11.2.4, §7.8).
    #[error("header digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    HeaderDigest { received: u32, computed: u32 },
    /// The data digest does not match (§11.2.4, §7.8).
    #[error("data digest mismatch: received {received:#010x}, computed {computed:#010x}")]
    DataDigest { received: u32, computed: u32 },
    /// A frame buffer ended before the PDU did (only from
    /// [`super::decode_frame`] callers that require a whole PDU).
    #[error("PDU truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
}

/// What the target does about a bad PDU (RFC 7143 §7.8, §11.17).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorReaction {
    /// Answer with a Reject PDU carrying the bad header, keep the
    /// connection (§11.17.1).
    Reject(RejectReason),
    /// Close the connection: the byte stream can no longer be trusted
    /// (§7.8: a header digest error at ErrorRecoveryLevel 0, lost framing).
    DropConnection,
}

impl PduError {
    /// The reaction RFC 7143 prescribes for this error.
    ///
    /// - unknown opcode: Reject "Command not supported" (§11.17.1);
    /// - bad field values: Reject "Invalid PDU field" (§11.17.1);
    /// - rule violations and oversize data segments: Reject "Protocol
    ///   Error" (§11.17.1, §13.12);
    /// - data digest error: Reject "Data (payload) digest error" and the
    ///   PDU is discarded (§7.8.1);
    /// - header digest error or broken framing: the header cannot be
    ///   trusted, so at ErrorRecoveryLevel 0 the connection is dropped
    ///   (§7.8.1).
    pub fn reaction(&self) -> ErrorReaction {
        match self {
            PduError::UnsupportedOpcode(_) => ErrorReaction::Reject(RejectReason::CommandNotSupported),
            PduError::InvalidField { .. } | PduError::MalformedAhs(_) => {
                ErrorReaction::Reject(RejectReason::InvalidPduField)
            }
            PduError::Protocol(_) | PduError::DataSegmentTooLong { .. } => {
                ErrorReaction::Reject(RejectReason::ProtocolError)
            }
            PduError::DataDigest { .. } => ErrorReaction::Reject(RejectReason::DataDigestError),
            PduError::HeaderDigest { .. }
            | PduError::AhsLength { .. }
            | PduError::DataLength { .. }
            | PduError::Truncated { .. } => ErrorReaction::DropConnection,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reactions() {
        assert_eq!(
            PduError::UnsupportedOpcode(0x1c).reaction(),
            ErrorReaction::Reject(RejectReason::CommandNotSupported)
        );
        assert_eq!(PduError::HeaderDigest { received: 1, computed: 2 }.reaction(), ErrorReaction::DropConnection);
        assert_eq!(
            PduError::DataDigest { received: 1, computed: 2 }.reaction(),
            ErrorReaction::Reject(RejectReason::DataDigestError)
        );
        let e = PduError::InvalidField { opcode: Opcode::ScsiCommand, field: "ATTR", value: 7 };
        assert_eq!(e.reaction(), ErrorReaction::Reject(RejectReason::InvalidPduField));
        assert!(e.to_string().contains("ATTR"));
    }
}

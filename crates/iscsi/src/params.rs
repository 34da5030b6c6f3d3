//! Negotiated session and connection parameters, with the defaults of
//! RFC 7143 §13 (used when a key is not negotiated).

/// A digest choice (RFC 7143 §13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Digest {
    #[default]
    None,
    Crc32c,
}

impl Digest {
    /// The key value.
    pub fn as_str(self) -> &'static str {
        match self {
            Digest::None => "None",
            Digest::Crc32c => "CRC32C",
        }
    }

    /// The digest for a key value.
    pub fn from_value(v: &str) -> Option<Digest> {
        match v {
            "None" => Some(Digest::None),
            "CRC32C" => Some(Digest::Crc32c),
            _ => None,
        }
    }

    pub fn enabled(self) -> bool {
        self == Digest::Crc32c
    }
}

/// SessionType (RFC 7143 §13.21).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SessionType {
    Discovery,
    #[default]
    Normal,
}

impl SessionType {
    pub fn as_str(self) -> &'static str {
        match self {
            SessionType::Discovery => "Discovery",
            SessionType::Normal => "Normal",
        }
    }

    pub fn from_value(v: &str) -> Option<SessionType> {
        match v {
            "Discovery" => Some(SessionType::Discovery),
            "Normal" => Some(SessionType::Normal),
            _ => None,
        }
    }
}

/// Parameters negotiated at login: the ones scoped to the session (SW) and
/// the ones scoped to this connection (CO), RFC 7143 §13.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NegotiatedParams {
    /// HeaderDigest (§13.1, CO). Applies from the first full-feature PDU.
    pub header_digest: Digest,
    /// DataDigest (§13.1, CO).
    pub data_digest: Digest,
    /// MaxConnections (§13.2, SW).
    pub max_connections: u16,
    /// InitialR2T (§13.10, SW): Yes means no unsolicited Data-Out PDUs.
    pub initial_r2t: bool,
    /// ImmediateData (§13.11, SW): data may ride in the SCSI Command PDU.
    pub immediate_data: bool,
    /// Our MaxRecvDataSegmentLength (§13.12, CO): the largest data segment
    /// the initiator may send us.
    pub target_max_recv_data_segment_length: u32,
    /// The initiator's declared MaxRecvDataSegmentLength: the largest data
    /// segment we may send it.
    pub initiator_max_recv_data_segment_length: u32,
    /// MaxBurstLength (§13.13, SW).
    pub max_burst_length: u32,
    /// FirstBurstLength (§13.14, SW): unsolicited data limit, ≤
    /// MaxBurstLength.
    pub first_burst_length: u32,
    /// DefaultTime2Wait (§13.15, SW), seconds.
    pub default_time2wait: u16,
    /// DefaultTime2Retain (§13.16, SW), seconds.
    pub default_time2retain: u16,
    /// MaxOutstandingR2T (§13.17, SW), per task.
    pub max_outstanding_r2t: u16,
    /// DataPDUInOrder (§13.18, SW).
    pub data_pdu_in_order: bool,
    /// DataSequenceInOrder (§13.19, SW).
    pub data_sequence_in_order: bool,
    /// ErrorRecoveryLevel (§13.20, SW).
    pub error_recovery_level: u8,
    /// iSCSIProtocolLevel (§13.24, RFC 7144), 1 for RFC 7143.
    pub protocol_level: u8,
}

/// Default MaxRecvDataSegmentLength (§13.12).
pub const DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH: u32 = 8192;
/// Default MaxBurstLength (§13.13).
pub const DEFAULT_MAX_BURST_LENGTH: u32 = 262_144;
/// Default FirstBurstLength (§13.14).
pub const DEFAULT_FIRST_BURST_LENGTH: u32 = 65_536;
/// Smallest legal value of the three lengths above.
pub const MIN_LENGTH: u32 = 512;
/// Largest legal value of the three lengths above (2^24 - 1).
pub const MAX_LENGTH: u32 = 16_777_215;

impl Default for NegotiatedParams {
    /// The values in force when nothing is negotiated (RFC 7143 §13).
    fn default() -> Self {
        NegotiatedParams {
            header_digest: Digest::None,
            data_digest: Digest::None,
            max_connections: 1,
            initial_r2t: true,
            immediate_data: true,
            target_max_recv_data_segment_length: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
            initiator_max_recv_data_segment_length: DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH,
            max_burst_length: DEFAULT_MAX_BURST_LENGTH,
            first_burst_length: DEFAULT_FIRST_BURST_LENGTH,
            default_time2wait: 2,
            default_time2retain: 20,
            max_outstanding_r2t: 1,
            data_pdu_in_order: true,
            data_sequence_in_order: true,
            error_recovery_level: 0,
            protocol_level: 1,
        }
    }
}

impl NegotiatedParams {
    /// The most unsolicited data (immediate plus unsolicited Data-Out) the
    /// initiator may send with one command: 0 when InitialR2T=Yes and
    /// ImmediateData=No, where FirstBurstLength is irrelevant (§13.14).
    pub fn unsolicited_data_limit(&self) -> u32 {
        if self.initial_r2t && !self.immediate_data {
            0
        } else {
            self.first_burst_length
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_rfc7143_section_13() {
        let p = NegotiatedParams::default();
        assert_eq!(p.header_digest, Digest::None);
        assert_eq!(p.max_connections, 1);
        assert!(p.initial_r2t);
        assert!(p.immediate_data);
        assert_eq!(p.target_max_recv_data_segment_length, 8192);
        assert_eq!(p.max_burst_length, 262_144);
        assert_eq!(p.first_burst_length, 65_536);
        assert_eq!(p.default_time2wait, 2);
        assert_eq!(p.default_time2retain, 20);
        assert_eq!(p.max_outstanding_r2t, 1);
        assert!(p.data_pdu_in_order && p.data_sequence_in_order);
        assert_eq!(p.error_recovery_level, 0);
        assert_eq!(p.unsolicited_data_limit(), 65_536);
    }

    #[test]
    fn value_literals() {
        assert_eq!(Digest::from_value("CRC32C"), Some(Digest::Crc32c));
        assert_eq!(Digest::from_value("crc32c"), None);
        assert_eq!(SessionType::from_value("Discovery"), Some(SessionType::Discovery));
        assert_eq!(SessionType::Normal.as_str(), "Normal");
    }
}

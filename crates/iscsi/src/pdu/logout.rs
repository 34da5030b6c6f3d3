//! Logout Request (RFC 7143 §11.14) and Logout Response (§11.15).

use super::bhs::*;
use super::{expect_no_data, PduCodec, PduError};

/// Logout reason codes (RFC 7143 §11.14.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogoutReason {
    /// 0: close the session (all its connections).
    CloseSession,
    /// 1: close the connection named by CID.
    CloseConnection,
    /// 2: remove the connection for recovery (ERL 2).
    RemoveConnectionForRecovery,
    /// Reserved values, kept so the target can answer them.
    Other(u8),
}

impl LogoutReason {
    pub fn code(self) -> u8 {
        match self {
            LogoutReason::CloseSession => 0,
            LogoutReason::CloseConnection => 1,
            LogoutReason::RemoveConnectionForRecovery => 2,
            LogoutReason::Other(v) => v & 0x7f,
        }
    }

    pub fn from_code(v: u8) -> LogoutReason {
        match v & 0x7f {
            0 => LogoutReason::CloseSession,
            1 => LogoutReason::CloseConnection,
            2 => LogoutReason::RemoveConnectionForRecovery,
            v => LogoutReason::Other(v),
        }
    }
}

/// Logout Request (initiator→target, opcode 0x06, RFC 7143 §11.14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutRequest {
    pub immediate: bool,
    pub reason: LogoutReason,
    pub itt: u32,
    /// The connection to close, for reasons 1 and 2.
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

impl PduCodec for LogoutRequest {
    const OPCODE: Opcode = Opcode::LogoutRequest;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        expect_no_data(Self::OPCODE, data)?;
        Ok(LogoutRequest {
            immediate: bit(h, 0, 0x40),
            reason: LogoutReason::from_code(get_u8(h, 1)),
            itt: get_u32(h, 16),
            cid: get_u16(h, 20),
            cmd_sn: get_u32(h, 24),
            exp_stat_sn: get_u32(h, 28),
        })
    }

    fn encode_header(&self, h: &mut [u8; BHS_LEN]) {
        put_u8(h, 1, 0x80 | self.reason.code());
        put_u32(h, 16, self.itt);
        put_u16(h, 20, self.cid);
        put_u32(h, 24, self.cmd_sn);
        put_u32(h, 28, self.exp_stat_sn);
    }

    fn immediate(&self) -> bool {
        self.immediate
    }
}

/// Logout response codes (RFC 7143 §11.15.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogoutResponseCode {
    /// 0: connection or session closed successfully.
    Closed,
    /// 1: CID not found.
    CidNotFound,
    /// 2: connection recovery is not supported (ERL < 2).
    RecoveryNotSupported,
    /// 3: cleanup failed for various reasons.
    CleanupFailed,
    Other(u8),
}

impl LogoutResponseCode {
    pub fn code(self) -> u8 {
        match self {
            LogoutResponseCode::Closed => 0,
            LogoutResponseCode::CidNotFound => 1,
            LogoutResponseCode::RecoveryNotSupported => 2,
            LogoutResponseCode::CleanupFailed => 3,
            LogoutResponseCode::Other(v) => v,
        }
    }

    pub fn from_code(v: u8) -> LogoutResponseCode {
        match v {
            0 => LogoutResponseCode::Closed,
            1 => LogoutResponseCode::CidNotFound,
            2 => LogoutResponseCode::RecoveryNotSupported,
            3 => LogoutResponseCode::CleanupFailed,
            v => LogoutResponseCode::Other(v),
        }
    }
}

/// Logout Response (target→initiator, opcode 0x26, RFC 7143 §11.15).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogoutResponse {
    pub response: LogoutResponseCode,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// Seconds to wait before reconnecting (§11.15.2).
    pub time2wait: u16,
    /// Seconds the target keeps connection state (§11.15.3).
    pub time2retain: u16,
}

impl PduCodec for LogoutResponse {
    const OPCODE: Opcode = Opcode::LogoutResponse;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        expect_no_data(Self::OPCODE, data)?;
        Ok(LogoutResponse {
            response: LogoutResponseCode::from_code(get_u8(h, 2)),
            itt: get_u32(h, 16),
            stat_sn: get_u32(h, 24),
            exp_cmd_sn: get_u32(h, 28),
            max_cmd_sn: get_u32(h, 32),
            time2wait: get_u16(h, 40),
            time2retain: get_u16(h, 42),
        })
    }

    fn encode_header(&self, h: &mut [u8; BHS_LEN]) {
        put_u8(h, 1, 0x80);
        put_u8(h, 2, self.response.code());
        put_u32(h, 16, self.itt);
        put_u32(h, 24, self.stat_sn);
        put_u32(h, 28, self.exp_cmd_sn);
        put_u32(h, 32, self.max_cmd_sn);
        put_u16(h, 40, self.time2wait);
        put_u16(h, 42, self.time2retain);
    }
}

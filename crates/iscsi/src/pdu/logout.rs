//! Logout Request (RFC 7143 §11.14) and Logout Response (§11.15).

use zerocopy::{transmute, transmute_ref};

use super::bhs::*;
use super::header::{byte0, Framing, LogoutRequestHeader, LogoutResponseHeader, FINAL};
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
        let w: &LogoutRequestHeader = transmute_ref!(h);
        Ok(LogoutRequest {
            immediate: w.opcode & byte0::IMMEDIATE != 0,
            reason: LogoutReason::from_code(w.reason),
            itt: w.itt.get(),
            cid: w.cid.get(),
            cmd_sn: w.cmd_sn.get(),
            exp_stat_sn: w.exp_stat_sn.get(),
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(LogoutRequestHeader {
            opcode,
            reason: FINAL | self.reason.code(),
            _reserved1: [0; 2],
            framing,
            _reserved2: [0; 8],
            itt: self.itt.into(),
            cid: self.cid.into(),
            _reserved3: [0; 2],
            cmd_sn: self.cmd_sn.into(),
            exp_stat_sn: self.exp_stat_sn.into(),
            _reserved4: [0; 16],
        })
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
        let w: &LogoutResponseHeader = transmute_ref!(h);
        Ok(LogoutResponse {
            response: LogoutResponseCode::from_code(w.response),
            itt: w.itt.get(),
            stat_sn: w.stat_sn.get(),
            exp_cmd_sn: w.exp_cmd_sn.get(),
            max_cmd_sn: w.max_cmd_sn.get(),
            time2wait: w.time2wait.get(),
            time2retain: w.time2retain.get(),
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(LogoutResponseHeader {
            opcode,
            flags: FINAL,
            response: self.response.code(),
            _reserved1: 0,
            framing,
            _reserved2: [0; 8],
            itt: self.itt.into(),
            _reserved3: [0; 4],
            stat_sn: self.stat_sn.into(),
            exp_cmd_sn: self.exp_cmd_sn.into(),
            max_cmd_sn: self.max_cmd_sn.into(),
            _reserved4: [0; 4],
            time2wait: self.time2wait.into(),
            time2retain: self.time2retain.into(),
            _reserved5: [0; 4],
        })
    }
}

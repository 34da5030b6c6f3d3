//! Login Request (RFC 7143 §11.12) and Login Response (§11.13).
//!
//! Decoding is lenient about the stage fields: a bad CSG/NSG or T+C is a
//! login failure answered with a Login Response status (§11.13.5), not a
//! Reject, so [`crate::login::LoginSession`] judges them.

use std::borrow::Cow;

use super::bhs::*;
use super::{PduCodec, PduError};

/// Login stages, the CSG and NSG fields (RFC 7143 §11.12.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum LoginStage {
    /// 0: SecurityNegotiation.
    Security,
    /// 1: LoginOperationalNegotiation.
    Operational,
    /// 2: reserved.
    Reserved,
    /// 3: FullFeaturePhase.
    FullFeature,
}

impl LoginStage {
    pub fn code(self) -> u8 {
        match self {
            LoginStage::Security => 0,
            LoginStage::Operational => 1,
            LoginStage::Reserved => 2,
            LoginStage::FullFeature => 3,
        }
    }

    /// Total on the 2-bit field.
    pub fn from_code(v: u8) -> LoginStage {
        match v & 3 {
            0 => LoginStage::Security,
            1 => LoginStage::Operational,
            2 => LoginStage::Reserved,
            _ => LoginStage::FullFeature,
        }
    }
}

/// The Initiator Session ID (RFC 7143 §11.12.5), 6 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Isid(pub [u8; 6]);

impl std::fmt::Display for Isid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

fn get_isid(h: &[u8; BHS_LEN]) -> Isid {
    let mut isid = [0u8; 6];
    if let Some(s) = h.get(8..14) {
        isid.copy_from_slice(s);
    }
    Isid(isid)
}

/// Login Request (initiator→target, opcode 0x03, always immediate,
/// RFC 7143 §11.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginRequest {
    /// T: the initiator is ready to move to `nsg`.
    pub transit: bool,
    /// C: the text continues in the next PDU.
    pub continue_bit: bool,
    pub csg: LoginStage,
    pub nsg: LoginStage,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: Isid,
    /// 0 to create a session, else the session to add this connection to.
    pub tsih: u16,
    pub itt: u32,
    /// Connection ID (§11.12.6).
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub data: Vec<u8>,
}

impl PduCodec for LoginRequest {
    const OPCODE: Opcode = Opcode::LoginRequest;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        let flags = get_u8(h, 1);
        Ok(LoginRequest {
            transit: flags & 0x80 != 0,
            continue_bit: flags & 0x40 != 0,
            csg: LoginStage::from_code(flags >> 2),
            nsg: LoginStage::from_code(flags),
            version_max: get_u8(h, 2),
            version_min: get_u8(h, 3),
            isid: get_isid(h),
            tsih: get_u16(h, 14),
            itt: get_u32(h, 16),
            cid: get_u16(h, 20),
            cmd_sn: get_u32(h, 24),
            exp_stat_sn: get_u32(h, 28),
            data: data.to_vec(),
        })
    }

    fn encode_header(&self, h: &mut [u8; BHS_LEN]) {
        put_u8(h, 1, stage_flags(self.transit, self.continue_bit, self.csg, self.nsg));
        put_u8(h, 2, self.version_max);
        put_u8(h, 3, self.version_min);
        put(h, 8, &self.isid.0);
        put_u16(h, 14, self.tsih);
        put_u32(h, 16, self.itt);
        put_u16(h, 20, self.cid);
        put_u32(h, 24, self.cmd_sn);
        put_u32(h, 28, self.exp_stat_sn);
    }

    fn immediate(&self) -> bool {
        true
    }

    fn data_segment(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
}

fn stage_flags(transit: bool, cont: bool, csg: LoginStage, nsg: LoginStage) -> u8 {
    let mut flags = csg.code() << 2 | nsg.code();
    if transit {
        flags |= 0x80;
    }
    if cont {
        flags |= 0x40;
    }
    flags
}

/// Login Response (target→initiator, opcode 0x23, RFC 7143 §11.13).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_bit: bool,
    pub csg: LoginStage,
    pub nsg: LoginStage,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: Isid,
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    /// Status-Class (§11.13.5); 0 is success.
    pub status_class: u8,
    pub status_detail: u8,
    pub data: Vec<u8>,
}

impl PduCodec for LoginResponse {
    const OPCODE: Opcode = Opcode::LoginResponse;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        let flags = get_u8(h, 1);
        Ok(LoginResponse {
            transit: flags & 0x80 != 0,
            continue_bit: flags & 0x40 != 0,
            csg: LoginStage::from_code(flags >> 2),
            nsg: LoginStage::from_code(flags),
            version_max: get_u8(h, 2),
            version_active: get_u8(h, 3),
            isid: get_isid(h),
            tsih: get_u16(h, 14),
            itt: get_u32(h, 16),
            stat_sn: get_u32(h, 24),
            exp_cmd_sn: get_u32(h, 28),
            max_cmd_sn: get_u32(h, 32),
            status_class: get_u8(h, 36),
            status_detail: get_u8(h, 37),
            data: data.to_vec(),
        })
    }

    fn encode_header(&self, h: &mut [u8; BHS_LEN]) {
        put_u8(h, 1, stage_flags(self.transit, self.continue_bit, self.csg, self.nsg));
        put_u8(h, 2, self.version_max);
        put_u8(h, 3, self.version_active);
        put(h, 8, &self.isid.0);
        put_u16(h, 14, self.tsih);
        put_u32(h, 16, self.itt);
        put_u32(h, 24, self.stat_sn);
        put_u32(h, 28, self.exp_cmd_sn);
        put_u32(h, 32, self.max_cmd_sn);
        put_u8(h, 36, self.status_class);
        put_u8(h, 37, self.status_detail);
    }

    fn data_segment(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
}

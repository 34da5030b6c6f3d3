//! Login Request (RFC 7143 §11.12) and Login Response (§11.13).
//!
//! Decoding is lenient about the stage fields: a bad CSG/NSG or T+C is a
//! login failure answered with a Login Response status (§11.13.5), not a
//! Reject, so [`crate::login::LoginSession`] judges them.

use zerocopy::{transmute, transmute_ref};

use super::bhs::*;
use super::header::{login_flags, Framing, LoginRequestHeader, LoginResponseHeader, CONTINUE};
use super::{DataSegment, PduCodec, PduError};

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
        let w: &LoginRequestHeader = transmute_ref!(h);
        let (transit, continue_bit, csg, nsg) = read_stage_flags(w.flags);
        Ok(LoginRequest {
            transit,
            continue_bit,
            csg,
            nsg,
            version_max: w.version_max,
            version_min: w.version_min,
            isid: Isid(w.isid),
            tsih: w.tsih.get(),
            itt: w.itt.get(),
            cid: w.cid.get(),
            cmd_sn: w.cmd_sn.get(),
            exp_stat_sn: w.exp_stat_sn.get(),
            data: data.to_vec(),
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(LoginRequestHeader {
            opcode,
            flags: stage_flags(self.transit, self.continue_bit, self.csg, self.nsg),
            version_max: self.version_max,
            version_min: self.version_min,
            framing,
            isid: self.isid.0,
            tsih: self.tsih.into(),
            itt: self.itt.into(),
            cid: self.cid.into(),
            _reserved1: [0; 2],
            cmd_sn: self.cmd_sn.into(),
            exp_stat_sn: self.exp_stat_sn.into(),
            _reserved2: [0; 16],
        })
    }

    fn immediate(&self) -> bool {
        true
    }

    fn data_segment(&self) -> DataSegment<'_> {
        DataSegment::Borrowed(&self.data)
    }
}

/// Byte 1 of both Login PDUs: T C . . CSG NSG.
fn stage_flags(transit: bool, cont: bool, csg: LoginStage, nsg: LoginStage) -> u8 {
    let mut flags = (csg.code() << login_flags::CSG_SHIFT) | nsg.code();
    if transit {
        flags |= login_flags::TRANSIT;
    }
    if cont {
        flags |= CONTINUE;
    }
    flags
}

/// T, C, CSG and NSG from byte 1 of a Login PDU.
fn read_stage_flags(flags: u8) -> (bool, bool, LoginStage, LoginStage) {
    (
        flags & login_flags::TRANSIT != 0,
        flags & CONTINUE != 0,
        LoginStage::from_code((flags >> login_flags::CSG_SHIFT) & login_flags::STAGE_MASK),
        LoginStage::from_code(flags & login_flags::STAGE_MASK),
    )
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
        let w: &LoginResponseHeader = transmute_ref!(h);
        let (transit, continue_bit, csg, nsg) = read_stage_flags(w.flags);
        Ok(LoginResponse {
            transit,
            continue_bit,
            csg,
            nsg,
            version_max: w.version_max,
            version_active: w.version_active,
            isid: Isid(w.isid),
            tsih: w.tsih.get(),
            itt: w.itt.get(),
            stat_sn: w.stat_sn.get(),
            exp_cmd_sn: w.exp_cmd_sn.get(),
            max_cmd_sn: w.max_cmd_sn.get(),
            status_class: w.status_class,
            status_detail: w.status_detail,
            data: data.to_vec(),
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(LoginResponseHeader {
            opcode,
            flags: stage_flags(self.transit, self.continue_bit, self.csg, self.nsg),
            version_max: self.version_max,
            version_active: self.version_active,
            framing,
            isid: self.isid.0,
            tsih: self.tsih.into(),
            itt: self.itt.into(),
            _reserved1: [0; 4],
            stat_sn: self.stat_sn.into(),
            exp_cmd_sn: self.exp_cmd_sn.into(),
            max_cmd_sn: self.max_cmd_sn.into(),
            status_class: self.status_class,
            status_detail: self.status_detail,
            _reserved2: [0; 10],
        })
    }

    fn data_segment(&self) -> DataSegment<'_> {
        DataSegment::Borrowed(&self.data)
    }
}

//! PERSISTENT RESERVE IN (SPC-5 6.16) and PERSISTENT RESERVE OUT (SPC-5
//! 6.17). The state they read and change, and the conflict check, live in
//! [`crate::reservation`].

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{truncate, Disk, ExecContext};
use crate::error::ScsiError;
use crate::reservation::{
    nexus_of, Nexus, PersistentReservation, PrType, Registration, ReservationState, SideEffect, MAX_REGISTRATIONS,
};
use crate::sense;

/// PERSISTENT RESERVE IN service actions (SPC-5 table 237).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrInAction {
    ReadKeys = 0x00,
    ReadReservation = 0x01,
    ReportCapabilities = 0x02,
    ReadFullStatus = 0x03,
}

/// PERSISTENT RESERVE IN fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrIn {
    pub action: PrInAction,
    pub alloc_len: u16,
}

/// PERSISTENT RESERVE OUT service actions (SPC-5 table 243).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrOutAction {
    Register = 0x00,
    Reserve = 0x01,
    Release = 0x02,
    Clear = 0x03,
    Preempt = 0x04,
    PreemptAndAbort = 0x05,
    RegisterAndIgnoreExistingKey = 0x06,
    RegisterAndMove = 0x07,
}

/// PERSISTENT RESERVE OUT fields. SCOPE and TYPE are checked by
/// [`PrOut::pr_type`] for the service actions that evaluate them
/// ([`PrOutAction::uses_type`]); the others ignore those fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PrOut {
    pub action: PrOutAction,
    pub scope: u8,
    pub type_code: u8,
    pub param_len: u32,
}

impl PrOutAction {
    fn from_u8(v: u8) -> Option<PrOutAction> {
        use PrOutAction::*;
        Some(match v {
            0x00 => Register,
            0x01 => Reserve,
            0x02 => Release,
            0x03 => Clear,
            0x04 => Preempt,
            0x05 => PreemptAndAbort,
            0x06 => RegisterAndIgnoreExistingKey,
            0x07 => RegisterAndMove,
            _ => return None,
        })
    }

    /// SCOPE and TYPE are evaluated (SPC-5 6.17.3): the others ignore them.
    pub fn uses_type(self) -> bool {
        matches!(
            self,
            PrOutAction::Reserve | PrOutAction::Release | PrOutAction::Preempt | PrOutAction::PreemptAndAbort
        )
    }
}

/// Length of the basic PERSISTENT RESERVE OUT parameter list (SPC-5 6.17.4).
pub const BASIC_PARAM_LEN: u32 = 24;
/// Longest REGISTER AND MOVE parameter list accepted: the 24-byte header and
/// an iSCSI TransportID (SPC-5 7.6.4.6: at most 4 + 224 + 4 + 12 bytes, kept
/// generous).
pub const MAX_MOVE_PARAM_LEN: u32 = 24 + 512;
/// LU_SCOPE, the only scope (SPC-5 6.17.2).
const LU_SCOPE: u8 = 0;
/// PROTOCOL IDENTIFIER of iSCSI (SPC-5 table 444).
const PROTOCOL_ISCSI: u8 = 0x5;

pub(crate) fn decode_in(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let action = match c.bits(1, 0, 5) {
        0x00 => PrInAction::ReadKeys,
        0x01 => PrInAction::ReadReservation,
        0x02 => PrInAction::ReportCapabilities,
        0x03 => PrInAction::ReadFullStatus,
        _ => return Err(ScsiError::field(1, 4)),
    };
    Ok(Command::PersistentReserveIn(PrIn { action, alloc_len: c.be16(7) }))
}

pub(crate) fn decode_out(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let action = PrOutAction::from_u8(c.bits(1, 0, 5)).ok_or(ScsiError::field(1, 4))?;
    Ok(Command::PersistentReserveOut(PrOut {
        action,
        scope: c.bits(2, 4, 4),
        type_code: c.bits(2, 0, 4),
        param_len: c.be32(5),
    }))
}

impl PrOut {
    /// The reservation type, for the service actions that evaluate SCOPE
    /// and TYPE (`None` for the others): LU_SCOPE and a type of table 244,
    /// else INVALID FIELD IN CDB (SPC-5 6.17.2, 6.17.3).
    pub fn pr_type(&self) -> Result<Option<PrType>, ScsiError> {
        if !self.action.uses_type() {
            return Ok(None);
        }
        if self.scope != LU_SCOPE {
            return Err(ScsiError::field(2, 7));
        }
        PrType::from_u8(self.type_code).map(Some).ok_or(ScsiError::field(2, 3))
    }

    /// The checks that need no data-out: SCOPE and TYPE, then the
    /// PARAMETER LIST LENGTH, which must fit the service action (SPC-5
    /// 6.17.3): 24 bytes (SPEC_I_PT is not supported), or a header and one
    /// TransportID for REGISTER AND MOVE.
    pub(crate) fn validate(&self) -> Result<(), ScsiError> {
        self.pr_type()?;
        let ok = match self.action {
            PrOutAction::RegisterAndMove => (BASIC_PARAM_LEN..=MAX_MOVE_PARAM_LEN).contains(&self.param_len),
            _ => self.param_len == BASIC_PARAM_LEN,
        };
        if ok {
            Ok(())
        } else {
            Err(ScsiError::ParameterListLengthError)
        }
    }
}

/// The basic parameter list (SPC-5 6.17.4, table 245).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct BasicParams {
    key: u64,
    sa_key: u64,
    aptpl: bool,
}

fn be64(d: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = d.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

fn decode_basic(d: &[u8]) -> Result<BasicParams, ScsiError> {
    let flags = d.get(20).copied().unwrap_or(0);
    if flags & 0x08 != 0 {
        return Err(ScsiError::param(20, Some(3))); // SPEC_I_PT: SIP_C is zero
    }
    if flags & 0x04 != 0 {
        return Err(ScsiError::param(20, Some(2))); // ALL_TG_PT: ATP_C is zero
    }
    Ok(BasicParams { key: be64(d, 0), sa_key: be64(d, 8), aptpl: flags & 0x01 != 0 })
}

/// The REGISTER AND MOVE parameter list (SPC-5 6.17.5, table 247).
#[derive(Clone, Debug, PartialEq, Eq)]
struct MoveParams {
    key: u64,
    sa_key: u64,
    unreg: bool,
    aptpl: bool,
    dest: Nexus,
}

fn decode_move(d: &[u8]) -> Result<MoveParams, ScsiError> {
    let flags = d.get(17).copied().unwrap_or(0);
    let rtpi = u16::from_be_bytes([d.get(18).copied().unwrap_or(0), d.get(19).copied().unwrap_or(0)]);
    let tid_len = d.get(20..24).map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
    let tid_len = usize::try_from(tid_len).unwrap_or(usize::MAX);
    if d.len().checked_sub(24) != Some(tid_len) {
        return Err(ScsiError::ParameterListLengthError);
    }
    let dest = Nexus::new(decode_transport_id(&d[24..])?, rtpi);
    Ok(MoveParams { key: be64(d, 0), sa_key: be64(d, 8), unreg: flags & 0x02 != 0, aptpl: flags & 0x01 != 0, dest })
}

/// An iSCSI TransportID (SPC-5 7.6.4.6) as an initiator port name: format
/// 00b (the iSCSI name) or 01b (the name, ",i,0x" and the ISID).
/// `tid` starts at byte 24 of the parameter list (for field pointers).
fn decode_transport_id(tid: &[u8]) -> Result<String, ScsiError> {
    let b0 = tid.first().copied().ok_or(ScsiError::ParameterListLengthError)?;
    let format = b0 >> 6;
    if b0 & 0x0F != PROTOCOL_ISCSI || format > 1 {
        return Err(ScsiError::param(24, Some(7)));
    }
    let len = usize::from(u16::from_be_bytes([tid.get(2).copied().unwrap_or(0), tid.get(3).copied().unwrap_or(0)]));
    let name = tid.get(4..4 + len).ok_or(ScsiError::ParameterListLengthError)?;
    let end = name.iter().position(|&b| b == 0).ok_or(ScsiError::param(26, None))?;
    let name = std::str::from_utf8(&name[..end]).map_err(|_| ScsiError::param(28, None))?;
    if name.is_empty() || name.contains(",i,") != (format == 1) {
        return Err(ScsiError::param(28, None));
    }
    Ok(name.to_string())
}

/// An iSCSI TransportID for an initiator port name (SPC-5 7.6.4.6): format
/// 01b when the name carries an ISID, 00b otherwise; NUL terminated and
/// padded to a multiple of 4, at least 20 bytes of name.
pub(crate) fn encode_transport_id(port: &str) -> Vec<u8> {
    let format = if port.contains(",i,") { 0x40 } else { 0x00 };
    let mut name = port.as_bytes().to_vec();
    name.push(0);
    let padded = name.len().next_multiple_of(4).max(20);
    name.resize(padded, 0);
    let mut t = vec![format | PROTOCOL_ISCSI, 0];
    t.extend_from_slice(&u16::try_from(padded).unwrap_or(u16::MAX).to_be_bytes());
    t.extend_from_slice(&name);
    t
}

/// Establishes `sense` for every nexus of `regs` but `except`.
fn notify<'a>(
    regs: impl IntoIterator<Item = &'a Registration>,
    except: &Nexus,
    sense: sense::SenseCode,
    fx: &mut Vec<SideEffect>,
) {
    for r in regs {
        if !r.nexus.covers(except) {
            fx.push(SideEffect::UnitAttention { nexus: r.nexus.clone(), sense: sense.sense() });
        }
    }
}

impl ReservationState {
    /// The registration of `nexus` whose key is `key`: RESERVATION
    /// CONFLICT if the nexus is not registered or the key differs (SPC-5
    /// 5.13.11.2, 6.17.4).
    fn checked_registration(&self, nexus: &Nexus, key: u64) -> Result<&Registration, ScsiError> {
        match self.registration(nexus) {
            Some(r) if r.key == key => Ok(r),
            _ => Err(ScsiError::ReservationConflict),
        }
    }

    /// REGISTER and REGISTER AND IGNORE EXISTING KEY (SPC-5 5.13.7, 5.13.11.3).
    fn register(
        &mut self,
        nexus: &Nexus,
        p: BasicParams,
        ignore: bool,
        fx: &mut Vec<SideEffect>,
    ) -> Result<(), ScsiError> {
        match self.registration(nexus).map(|r| r.key) {
            None => {
                if !ignore && p.key != 0 {
                    return Err(ScsiError::ReservationConflict);
                }
                if p.sa_key == 0 {
                    return Ok(()); // nothing to register
                }
                if self.registrations.len() >= MAX_REGISTRATIONS {
                    return Err(ScsiError::Sense(sense::INSUFFICIENT_REGISTRATION_RESOURCES.sense()));
                }
                self.registrations.push(Registration { nexus: nexus.clone(), key: p.sa_key });
            }
            Some(key) => {
                if !ignore && p.key != key {
                    return Err(ScsiError::ReservationConflict);
                }
                if p.sa_key == 0 {
                    self.unregister(nexus, fx);
                } else if let Some(r) = self.registration_mut(nexus) {
                    r.key = p.sa_key;
                }
            }
        }
        self.aptpl = p.aptpl;
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }

    /// Removes the registration of `nexus`, releasing a reservation it held
    /// alone (SPC-5 5.13.11.3, 5.13.10.1).
    fn unregister(&mut self, nexus: &Nexus, fx: &mut Vec<SideEffect>) {
        let was_holder = self.is_holder(nexus);
        self.registrations.retain(|r| !r.nexus.covers(nexus));
        let Some(res) = &self.reservation else { return };
        if res.pr_type.all_registrants() {
            if self.registrations.is_empty() {
                self.reservation = None;
            }
        } else if was_holder {
            if res.pr_type.admits_registrants() {
                notify(&self.registrations, nexus, sense::RESERVATIONS_RELEASED, fx);
            }
            self.reservation = None;
        }
    }

    /// RESERVE (SPC-5 5.13.9).
    fn reserve(&mut self, nexus: &Nexus, key: u64, pr_type: PrType) -> Result<(), ScsiError> {
        self.checked_registration(nexus, key)?;
        match &self.reservation {
            Some(r) if self.is_holder(nexus) && r.pr_type == pr_type => Ok(()),
            Some(_) => Err(ScsiError::ReservationConflict),
            None => {
                self.reservation = Some(PersistentReservation { holder: nexus.clone(), pr_type });
                Ok(())
            }
        }
    }

    /// RELEASE (SPC-5 5.13.10.2).
    fn release(&mut self, nexus: &Nexus, key: u64, pr_type: PrType, fx: &mut Vec<SideEffect>) -> Result<(), ScsiError> {
        self.checked_registration(nexus, key)?;
        let Some(res) = &self.reservation else { return Ok(()) };
        if !self.is_holder(nexus) {
            return Ok(()); // not an error, and no effect
        }
        if res.pr_type != pr_type {
            return Err(ScsiError::Sense(sense::INVALID_RELEASE_OF_PERSISTENT_RESERVATION.sense()));
        }
        if res.pr_type.admits_registrants() {
            notify(&self.registrations, nexus, sense::RESERVATIONS_RELEASED, fx);
        }
        self.reservation = None;
        Ok(())
    }

    /// CLEAR (SPC-5 5.13.10.3).
    fn clear(&mut self, nexus: &Nexus, key: u64, fx: &mut Vec<SideEffect>) -> Result<(), ScsiError> {
        self.checked_registration(nexus, key)?;
        notify(&self.registrations, nexus, sense::RESERVATIONS_PREEMPTED, fx);
        self.registrations.clear();
        self.reservation = None;
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }

    /// PREEMPT and PREEMPT AND ABORT (SPC-5 5.13.11.4).
    fn preempt(
        &mut self,
        nexus: &Nexus,
        p: BasicParams,
        pr_type: PrType,
        abort: bool,
        fx: &mut Vec<SideEffect>,
    ) -> Result<(), ScsiError> {
        self.checked_registration(nexus, p.key)?;
        let sark = p.sa_key;
        let all_registrants = self.reservation.as_ref().is_some_and(|r| r.pr_type.all_registrants());
        // Which registrations go (all, or those with the key), and whether
        // the reservation moves to the preempting nexus.
        let (all, take_reservation) = if all_registrants {
            (sark == 0, sark == 0)
        } else {
            if sark == 0 {
                return Err(ScsiError::param(8, None));
            }
            (false, self.reservation.is_some() && self.reservation_key() == sark)
        };
        let victim = |r: &Registration| all || r.key == sark;
        if !take_reservation && !self.registrations.iter().any(victim) {
            return Err(ScsiError::ReservationConflict);
        }
        let (gone, kept): (Vec<Registration>, Vec<Registration>) =
            self.registrations.drain(..).partition(|r| victim(r) && !r.nexus.covers(nexus));
        self.registrations = kept;
        for r in &gone {
            fx.push(SideEffect::UnitAttention {
                nexus: r.nexus.clone(),
                sense: sense::REGISTRATIONS_PREEMPTED.sense(),
            });
            if abort {
                fx.push(SideEffect::AbortTasks { nexus: r.nexus.clone() });
            }
        }
        if take_reservation {
            let changed = self.reservation.as_ref().is_some_and(|r| r.pr_type != pr_type);
            if changed {
                notify(&self.registrations, nexus, sense::RESERVATIONS_RELEASED, fx);
            }
            self.reservation = Some(PersistentReservation { holder: nexus.clone(), pr_type });
        } else if let Some(res) = &self.reservation {
            // A preempted registrant that held the reservation alone loses it.
            if res.pr_type.all_registrants() && self.registrations.is_empty() {
                self.reservation = None;
            }
        }
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }

    /// REGISTER AND MOVE (SPC-5 5.13.8).
    fn register_and_move(&mut self, nexus: &Nexus, p: MoveParams) -> Result<(), ScsiError> {
        self.checked_registration(nexus, p.key)?;
        if p.sa_key == 0 {
            return Err(ScsiError::param(8, None));
        }
        let Some(res) = self.reservation.clone() else { return Err(ScsiError::ReservationConflict) };
        if res.pr_type.all_registrants() || !self.is_holder(nexus) {
            return Err(ScsiError::ReservationConflict);
        }
        if p.dest.covers(nexus) || nexus.covers(&p.dest) {
            return Err(ScsiError::param(24, None));
        }
        match self.registrations.iter_mut().find(|r| r.nexus == p.dest) {
            Some(r) => r.key = p.sa_key,
            None => {
                if self.registrations.len() >= MAX_REGISTRATIONS {
                    return Err(ScsiError::Sense(sense::INSUFFICIENT_REGISTRATION_RESOURCES.sense()));
                }
                self.registrations.push(Registration { nexus: p.dest.clone(), key: p.sa_key });
            }
        }
        self.reservation = Some(PersistentReservation { holder: p.dest, pr_type: res.pr_type });
        if p.unreg {
            self.registrations.retain(|r| !r.nexus.covers(nexus));
        }
        self.aptpl = p.aptpl;
        self.generation = self.generation.wrapping_add(1);
        Ok(())
    }
}

/// PERSISTENT RESERVE IN parameter data header: PRGENERATION and ADDITIONAL LENGTH.
fn header(generation: u32, additional: usize) -> Vec<u8> {
    let mut d = generation.to_be_bytes().to_vec();
    d.extend_from_slice(&u32::try_from(additional).unwrap_or(u32::MAX).to_be_bytes());
    d
}

/// REPORT CAPABILITIES bits (SPC-5 6.16.4): PTPL_C; TMV and ALLOW COMMANDS
/// 011b (TEST UNIT READY allowed through Exclusive Access; MODE SENSE, READ
/// DEFECT DATA, REPORT SUPPORTED OPERATION CODES and the like allowed
/// through Write Exclusive, as the opcode table's access column says).
const CAPS_PTPL_C: u8 = 0x01;
const CAPS_TMV_ALLOW_COMMANDS: u8 = 0x80 | (0b011 << 4);
/// PERSISTENT RESERVATION TYPE MASK: every type of [`PrType`].
const TYPE_MASK: [u8; 2] = [0x80 | 0x40 | 0x20 | 0x08 | 0x02, 0x01];

impl Disk {
    pub(crate) fn persistent_reserve_in(&self, p: &PrIn) -> Vec<u8> {
        let s = self.reservations.snapshot();
        let d = match p.action {
            PrInAction::ReadKeys => {
                let mut d = header(s.generation, 8 * s.registrations.len());
                for r in &s.registrations {
                    d.extend_from_slice(&r.key.to_be_bytes());
                }
                d
            }
            PrInAction::ReadReservation => match &s.reservation {
                None => header(s.generation, 0),
                Some(r) => {
                    let mut d = header(s.generation, 16);
                    d.extend_from_slice(&s.reservation_key().to_be_bytes());
                    d.extend_from_slice(&[0, 0, 0, 0, 0, (LU_SCOPE << 4) | r.pr_type as u8, 0, 0]);
                    d
                }
            },
            PrInAction::ReportCapabilities => {
                vec![0, 8, CAPS_PTPL_C, CAPS_TMV_ALLOW_COMMANDS | u8::from(s.aptpl), TYPE_MASK[0], TYPE_MASK[1], 0, 0]
            }
            PrInAction::ReadFullStatus => read_full_status(&s),
        };
        truncate(d, usize::from(p.alloc_len))
    }

    pub(crate) async fn persistent_reserve_out(
        &self,
        p: &PrOut,
        data: &[u8],
        ctx: &ExecContext,
        fx: &mut Vec<SideEffect>,
    ) -> Result<Vec<u8>, ScsiError> {
        let req = PrOutRequest::decode(p, data)?;
        let nexus = nexus_of(ctx);
        if let Some(store) = self.reservations.store() {
            // Shared with other gateways: the store runs the same rules on
            // the cluster's copy (compare-and-set) and publishes the result here.
            fx.extend(store.apply(nexus.clone(), req).await?);
            return Ok(Vec::new());
        }
        self.reservations.update(fx, |s, fx| s.apply_pr_out(nexus, &req, fx)).map(|()| Vec::new())
    }
}

/// A PERSISTENT RESERVE OUT with its parameter list decoded and checked:
/// what [`ReservationState::apply_pr_out`] applies to a state, here or, for
/// a logical unit shared by several gateways, in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrOutRequest {
    action: PrOutAction,
    pr_type: PrType,
    params: PrOutParams,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum PrOutParams {
    Basic(BasicParams),
    Move(MoveParams),
}

impl PrOutRequest {
    /// Checks the CDB fields and decodes the parameter list (SPC-5 6.17.3-5).
    pub fn decode(p: &PrOut, data: &[u8]) -> Result<PrOutRequest, ScsiError> {
        p.validate()?;
        let len = usize::try_from(p.param_len).unwrap_or(usize::MAX);
        let data = data.get(..len).ok_or(ScsiError::ParameterListLengthError)?;
        let pr_type = p.pr_type()?.unwrap_or(PrType::WriteExclusive);
        let params = match p.action {
            PrOutAction::RegisterAndMove => PrOutParams::Move(decode_move(data)?),
            _ => PrOutParams::Basic(decode_basic(data)?),
        };
        Ok(PrOutRequest { action: p.action, pr_type, params })
    }

    pub fn action(&self) -> PrOutAction {
        self.action
    }

    /// Whether a success of this request changes PRGENERATION (SPC-5
    /// 6.16.2: REGISTER, REGISTER AND IGNORE EXISTING KEY, CLEAR, PREEMPT,
    /// PREEMPT AND ABORT and REGISTER AND MOVE; a REGISTER of key zero by
    /// an unregistered nexus changes nothing at all).
    pub fn bumps_generation(&self) -> bool {
        !matches!(self.action, PrOutAction::Reserve | PrOutAction::Release)
    }
}

impl ReservationState {
    /// Applies a PERSISTENT RESERVE OUT received on `nexus` (SPC-5 5.13):
    /// the rules, in one place, whether the state is this process's or the
    /// cluster's. Unit attentions and aborts it calls for go to `fx`; on an
    /// error the state may be partly changed and must be dropped.
    pub fn apply_pr_out(
        &mut self,
        nexus: &Nexus,
        req: &PrOutRequest,
        fx: &mut Vec<SideEffect>,
    ) -> Result<(), ScsiError> {
        let b = match &req.params {
            PrOutParams::Move(m) => return self.register_and_move(nexus, m.clone()),
            PrOutParams::Basic(b) => *b,
        };
        match req.action {
            PrOutAction::Register => self.register(nexus, b, false, fx),
            PrOutAction::RegisterAndIgnoreExistingKey => self.register(nexus, b, true, fx),
            PrOutAction::Reserve => self.reserve(nexus, b.key, req.pr_type),
            PrOutAction::Release => self.release(nexus, b.key, req.pr_type, fx),
            PrOutAction::Clear => self.clear(nexus, b.key, fx),
            PrOutAction::Preempt => self.preempt(nexus, b, req.pr_type, false, fx),
            PrOutAction::PreemptAndAbort => self.preempt(nexus, b, req.pr_type, true, fx),
            PrOutAction::RegisterAndMove => Err(ScsiError::field(1, 4)),
        }
    }
}

/// READ FULL STATUS (SPC-5 6.16.5): one descriptor per registration.
fn read_full_status(s: &ReservationState) -> Vec<u8> {
    let mut body = Vec::new();
    for r in &s.registrations {
        let holder = s.is_holder(&r.nexus);
        body.extend_from_slice(&r.key.to_be_bytes());
        body.extend_from_slice(&[0; 4]);
        body.push(u8::from(holder)); // R_HOLDER; ALL_TG_PT is never set
        body.push(match (&s.reservation, holder) {
            (Some(res), true) => (LU_SCOPE << 4) | res.pr_type as u8,
            _ => 0,
        });
        body.extend_from_slice(&[0; 4]);
        body.extend_from_slice(&r.nexus.target_port.to_be_bytes());
        let tid = encode_transport_id(&r.nexus.initiator_port);
        body.extend_from_slice(&u32::try_from(tid.len()).unwrap_or(u32::MAX).to_be_bytes());
        body.extend_from_slice(&tid);
    }
    let mut d = header(s.generation, body.len());
    d.extend_from_slice(&body);
    d
}

#[cfg(test)]
mod tests;

//! Asymmetric logical unit access (ALUA, SPC-5 5.16): the target port
//! groups of a logical unit, their asymmetric access states, and which
//! commands each state admits.
//!
//! Model (issue 16, several gateways serving one image): every gateway
//! (one `lunard` process) is one target port group with one target port;
//! group id and relative target port identifier are both the gateway's
//! index + 1. Per logical unit, this process keeps
//! - its own group's state in one atomic ([`Alua::local_state`]), the only
//!   thing the I/O path reads ([`Alua::admit`], from [`crate::Disk::validate`]);
//! - every group's state, status code and ports as an immutable snapshot
//!   behind an `ArcSwap` ([`Alua::groups`]), for REPORT TARGET PORT GROUPS.
//!
//! Changes go through [`Alua::set_states`] (serialised by a mutex of the
//! control plane, never taken on the I/O path), which then calls the
//! observer the target core installed ([`Alua::set_observer`]): the core
//! raises ASYMMETRIC ACCESS STATE CHANGED for the I_T nexuses of the LU.
//! Who decides a change asked for by SET TARGET PORT GROUPS is an
//! [`AluaControl`]: [`LocalAluaControl`] (one process: apply it) by
//! default; a cluster implementation takes the image's lock first.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use crate::cdb::Command;
use crate::error::ScsiError;
use crate::reservation::Nexus;
use crate::sense::{self, Sense};

/// A target port asymmetric access state (SPC-5 6.37, table of the
/// ASYMMETRIC ACCESS STATE field).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AccessState {
    ActiveOptimized = 0x0,
    ActiveNonOptimized = 0x1,
    Standby = 0x2,
    Unavailable = 0x3,
    /// A secondary state of a target port, not of a group (SPC-5 5.16.2.4.6).
    Offline = 0xE,
    Transitioning = 0xF,
}

impl AccessState {
    pub const ALL: [AccessState; 6] = [
        AccessState::ActiveOptimized,
        AccessState::ActiveNonOptimized,
        AccessState::Standby,
        AccessState::Unavailable,
        AccessState::Offline,
        AccessState::Transitioning,
    ];

    /// The state of an ASYMMETRIC ACCESS STATE code; `None` for a reserved
    /// code (4h, logical block dependent, is not supported: reserved here).
    pub fn from_code(code: u8) -> Option<AccessState> {
        AccessState::ALL.into_iter().find(|s| s.code() == code)
    }

    pub fn code(self) -> u8 {
        self as u8
    }

    /// The name used by the configuration, the control socket and lunarctl.
    pub fn name(self) -> &'static str {
        match self {
            AccessState::ActiveOptimized => "active-optimized",
            AccessState::ActiveNonOptimized => "active-non-optimized",
            AccessState::Standby => "standby",
            AccessState::Unavailable => "unavailable",
            AccessState::Offline => "offline",
            AccessState::Transitioning => "transitioning",
        }
    }

    /// Parses [`AccessState::name`], or the short forms `ao`, `an`.
    pub fn parse(s: &str) -> Option<AccessState> {
        let s = s.trim().to_ascii_lowercase();
        match s.as_str() {
            "ao" | "optimized" => Some(AccessState::ActiveOptimized),
            "an" | "non-optimized" => Some(AccessState::ActiveNonOptimized),
            _ => AccessState::ALL.into_iter().find(|st| st.name() == s),
        }
    }

    /// The bit of this state in the supported states byte of a target port
    /// group descriptor (T_SUP, O_SUP, U_SUP, S_SUP, AN_SUP, AO_SUP).
    pub fn support_bit(self) -> u8 {
        match self {
            AccessState::Transitioning => SupportedStates::T_SUP,
            AccessState::Offline => SupportedStates::O_SUP,
            AccessState::Unavailable => SupportedStates::U_SUP,
            AccessState::Standby => SupportedStates::S_SUP,
            AccessState::ActiveNonOptimized => SupportedStates::AN_SUP,
            AccessState::ActiveOptimized => SupportedStates::AO_SUP,
        }
    }

    /// Whether every command is processed in this state.
    pub fn is_active(self) -> bool {
        matches!(self, AccessState::ActiveOptimized | AccessState::ActiveNonOptimized)
    }

    /// The sense of a command this state does not admit (SPC-5 5.16.2.4).
    pub fn refusal(self) -> Option<Sense> {
        Some(match self {
            AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => return None,
            AccessState::Standby => sense::LU_NOT_ACCESSIBLE_TARGET_PORT_IN_STANDBY.sense(),
            AccessState::Unavailable => sense::LU_NOT_ACCESSIBLE_TARGET_PORT_UNAVAILABLE.sense(),
            AccessState::Offline => sense::NOT_READY_OFFLINE.sense(),
            AccessState::Transitioning => sense::LU_NOT_ACCESSIBLE_ASYMMETRIC_ACCESS_STATE_TRANSITION.sense(),
        })
    }
}

impl fmt::Display for AccessState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The supported states byte of a target port group descriptor (SPC-5 6.37).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SupportedStates(pub u8);

impl SupportedStates {
    pub const T_SUP: u8 = 0x80;
    pub const O_SUP: u8 = 0x40;
    pub const U_SUP: u8 = 0x08;
    pub const S_SUP: u8 = 0x04;
    pub const AN_SUP: u8 = 0x02;
    pub const AO_SUP: u8 = 0x01;

    /// What Lunar's groups support: every primary state and transitioning;
    /// not offline (a secondary state of single ports, which a gateway
    /// that is its own group has no use for) nor logical block dependent.
    pub const LUNAR: SupportedStates = SupportedStates(
        SupportedStates::T_SUP
            | SupportedStates::U_SUP
            | SupportedStates::S_SUP
            | SupportedStates::AN_SUP
            | SupportedStates::AO_SUP,
    );

    pub fn supports(self, state: AccessState) -> bool {
        self.0 & state.support_bit() != 0
    }
}

/// The STATUS CODE of a target port group descriptor (SPC-5 6.37).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum StatusCode {
    /// No status available.
    None = 0x00,
    /// The state was altered by a SET TARGET PORT GROUPS command.
    AlteredBySetTargetPortGroups = 0x01,
    /// The state was altered by an implicit transition (the device server
    /// itself: here the operator, or the cluster's lock moving).
    AlteredByImplicitTransition = 0x02,
}

impl StatusCode {
    pub fn code(self) -> u8 {
        self as u8
    }
}

/// Which kinds of transition the logical unit supports: the TPGS field of
/// the standard INQUIRY data (SPC-5 6.6.2, bits 5:4 of byte 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tpgs {
    /// 00b: no asymmetric access.
    None,
    /// 01b: implicit transitions only.
    Implicit,
    /// 10b: explicit (SET TARGET PORT GROUPS) only.
    Explicit,
    /// 11b: both.
    Both,
}

impl Tpgs {
    /// The value of byte 5 bits 5:4, in place.
    pub fn bits(self) -> u8 {
        (match self {
            Tpgs::None => 0,
            Tpgs::Implicit => 1,
            Tpgs::Explicit => 2,
            Tpgs::Both => 3,
        }) << 4
    }
}

/// One target port group as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortGroupConfig {
    /// TARGET PORT GROUP identifier (not 0).
    pub id: u16,
    /// RELATIVE TARGET PORT IDENTIFIERs of its ports (not 0; at least one).
    pub relative_ports: Vec<u16>,
    /// The state it starts in.
    pub state: AccessState,
    /// PREF: a preferred group (SPC-5 6.37).
    pub preferred: bool,
}

/// Why an [`AluaConfig`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AluaConfigError {
    #[error("no target port group")]
    NoGroups,
    #[error("{0} target port groups: at most 255 fit REPORT TARGET PORT GROUPS")]
    TooManyGroups(usize),
    #[error("target port group id 0 is reserved")]
    ZeroGroupId,
    #[error("target port group {0} appears twice")]
    DuplicateGroup(u16),
    #[error("target port group {0} has no target port")]
    NoPorts(u16),
    #[error("target port group {0} has more than 255 target ports")]
    TooManyPorts(u16),
    #[error("relative target port identifier 0 is reserved")]
    ZeroPort,
    #[error("relative target port {0} is in two groups or twice in one")]
    DuplicatePort(u16),
    #[error("this process's target port group {0} is not among the groups")]
    UnknownLocal(u16),
    #[error("target port group {group} cannot start {state}: not a state Lunar supports")]
    UnsupportedState { group: u16, state: AccessState },
}

/// The target port groups of a logical unit and which one is this
/// process's, checked once ([`AluaConfig::new`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AluaConfig {
    groups: Vec<PortGroupConfig>,
    local: u16,
    /// IMPLICIT TRANSITION TIME in seconds (extended header of REPORT
    /// TARGET PORT GROUPS): how long an implicit transition may take.
    implicit_transition_secs: u8,
}

/// The IMPLICIT TRANSITION TIME reported unless configured: enough for a
/// cluster lock to move between gateways.
pub const DEFAULT_IMPLICIT_TRANSITION_SECS: u8 = 10;

impl AluaConfig {
    /// Checks ids (non-zero, unique), ports (non-zero, unique across
    /// groups), that `local` is one of the groups and that every start
    /// state is supported.
    pub fn new(groups: Vec<PortGroupConfig>, local: u16) -> Result<AluaConfig, AluaConfigError> {
        if groups.is_empty() {
            return Err(AluaConfigError::NoGroups);
        }
        if groups.len() > 255 {
            return Err(AluaConfigError::TooManyGroups(groups.len()));
        }
        let mut ports = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            if g.id == 0 {
                return Err(AluaConfigError::ZeroGroupId);
            }
            if groups[..i].iter().any(|o| o.id == g.id) {
                return Err(AluaConfigError::DuplicateGroup(g.id));
            }
            if g.relative_ports.is_empty() {
                return Err(AluaConfigError::NoPorts(g.id));
            }
            if g.relative_ports.len() > 255 {
                return Err(AluaConfigError::TooManyPorts(g.id));
            }
            for &p in &g.relative_ports {
                if p == 0 {
                    return Err(AluaConfigError::ZeroPort);
                }
                if ports.contains(&p) {
                    return Err(AluaConfigError::DuplicatePort(p));
                }
                ports.push(p);
            }
            if !SupportedStates::LUNAR.supports(g.state) {
                return Err(AluaConfigError::UnsupportedState { group: g.id, state: g.state });
            }
        }
        if !groups.iter().any(|g| g.id == local) {
            return Err(AluaConfigError::UnknownLocal(local));
        }
        Ok(AluaConfig { groups, local, implicit_transition_secs: DEFAULT_IMPLICIT_TRANSITION_SECS })
    }

    /// One group per gateway of `gateways` (ids and relative ports
    /// 1..=gateways), this process being gateway `local_index` (0-based);
    /// the first gateway starts Active/Optimized, the others Standby.
    pub fn gateways(gateways: usize, local_index: usize) -> Result<AluaConfig, AluaConfigError> {
        let groups = (0..gateways)
            .map(|i| {
                let id = u16::try_from(i + 1).unwrap_or(u16::MAX);
                PortGroupConfig {
                    id,
                    relative_ports: vec![id],
                    state: if i == 0 { AccessState::ActiveOptimized } else { AccessState::Standby },
                    preferred: false,
                }
            })
            .collect();
        AluaConfig::new(groups, u16::try_from(local_index + 1).unwrap_or(u16::MAX))
    }

    /// Sets PREF of group `id` (no such group: nothing).
    pub fn with_preferred(mut self, id: u16, preferred: bool) -> AluaConfig {
        if let Some(g) = self.groups.iter_mut().find(|g| g.id == id) {
            g.preferred = preferred;
        }
        self
    }

    pub fn with_implicit_transition_secs(mut self, secs: u8) -> AluaConfig {
        self.implicit_transition_secs = secs;
        self
    }

    pub fn groups(&self) -> &[PortGroupConfig] {
        &self.groups
    }

    /// This process's target port group id.
    pub fn local_group(&self) -> u16 {
        self.local
    }

    pub fn implicit_transition_secs(&self) -> u8 {
        self.implicit_transition_secs
    }
}

/// A target port group as it is now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupState {
    pub id: u16,
    pub state: AccessState,
    pub status: StatusCode,
    pub preferred: bool,
    pub relative_ports: Vec<u16>,
}

/// A change of states, as the observer is told of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AluaChange {
    pub before: Arc<Vec<GroupState>>,
    pub after: Arc<Vec<GroupState>>,
    /// The I_T nexus whose SET TARGET PORT GROUPS made the change: it gets
    /// no unit attention (SPC-5 5.16.2.5); `None` for implicit changes.
    pub cause: Option<Nexus>,
}

/// Why [`Alua::set_states`] refused a change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AluaError {
    #[error("no target port group {0}")]
    NoSuchGroup(u16),
    #[error("target port group {group}: state {state} is not supported")]
    Unsupported { group: u16, state: AccessState },
    #[error("target port group {0} named twice")]
    Duplicate(u16),
}

/// A future of an [`AluaControl`] (not `Send`: it runs on the I/O thread
/// that executes the SET TARGET PORT GROUPS command).
pub type AluaFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ScsiError>> + 'a>>;

/// One descriptor of a SET TARGET PORT GROUPS parameter list (SPC-5 6.45),
/// decoded and checked against the defined codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetGroupState {
    pub group: u16,
    pub state: AccessState,
}

/// Decides SET TARGET PORT GROUPS requests. The request has been checked
/// against the logical unit's groups and supported states
/// ([`Alua::check_request`]); the implementation carries it out (or not:
/// an error completes the command with its sense, e.g. HARDWARE ERROR,
/// SET TARGET PORT GROUPS COMMAND FAILED) and applies the resulting states
/// through [`Alua::set_states`], naming `nexus` as the cause.
pub trait AluaControl: Send + Sync {
    fn set_target_port_groups<'a>(
        &'a self,
        alua: &'a Alua,
        request: &'a [SetGroupState],
        nexus: &'a Nexus,
    ) -> AluaFuture<'a>;
}

/// The decision-maker of a single process: applies the request as it is.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalAluaControl;

impl AluaControl for LocalAluaControl {
    fn set_target_port_groups<'a>(
        &'a self,
        alua: &'a Alua,
        request: &'a [SetGroupState],
        nexus: &'a Nexus,
    ) -> AluaFuture<'a> {
        Box::pin(async move {
            alua.set_states(request, StatusCode::AlteredBySetTargetPortGroups, Some(nexus))
                .map(|_| ())
                .map_err(|_| ScsiError::Sense(sense::SET_TARGET_PORT_GROUPS_COMMAND_FAILED.sense()))
        })
    }
}

type Observer = Box<dyn Fn(&AluaChange) + Send + Sync>;

/// The ALUA state of one logical unit in this process.
pub struct Alua {
    config: AluaConfig,
    /// This process's group's state code: the one load of the I/O path.
    local: AtomicU8,
    groups: ArcSwap<Vec<GroupState>>,
    /// Serialises changes (control plane and SET TARGET PORT GROUPS).
    writer: Mutex<()>,
    control: Mutex<Arc<dyn AluaControl>>,
    observer: OnceLock<Observer>,
}

impl fmt::Debug for Alua {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alua").field("local_group", &self.config.local).field("groups", &self.groups.load()).finish()
    }
}

impl Alua {
    pub fn new(config: AluaConfig) -> Alua {
        let groups: Vec<GroupState> = config
            .groups
            .iter()
            .map(|g| GroupState {
                id: g.id,
                state: g.state,
                status: StatusCode::None,
                preferred: g.preferred,
                relative_ports: g.relative_ports.clone(),
            })
            .collect();
        let local = groups.iter().find(|g| g.id == config.local).map_or(AccessState::Unavailable, |g| g.state);
        Alua {
            config,
            local: AtomicU8::new(local.code()),
            groups: ArcSwap::from_pointee(groups),
            writer: Mutex::new(()),
            control: Mutex::new(Arc::new(LocalAluaControl)),
            observer: OnceLock::new(),
        }
    }

    pub fn config(&self) -> &AluaConfig {
        &self.config
    }

    /// This process's target port group id.
    pub fn local_group(&self) -> u16 {
        self.config.local
    }

    /// This process's group's state (one atomic load).
    pub fn local_state(&self) -> AccessState {
        AccessState::from_code(self.local.load(Ordering::Acquire)).unwrap_or(AccessState::Unavailable)
    }

    /// Every group as it is now (a snapshot).
    pub fn groups(&self) -> Arc<Vec<GroupState>> {
        self.groups.load_full()
    }

    /// Replaces the decision-maker of SET TARGET PORT GROUPS.
    pub fn set_control(&self, control: Arc<dyn AluaControl>) {
        *self.control.lock().unwrap_or_else(|e| e.into_inner()) = control;
    }

    /// Carries out `request` through the LU's decision-maker, as a SET
    /// TARGET PORT GROUPS from `cause` would be (for the operator: the
    /// anonymous nexus). With a cluster decision-maker this moves the
    /// image's ownership instead of only this process's view of it.
    pub async fn request(&self, request: &[SetGroupState], cause: &Nexus) -> Result<(), ScsiError> {
        self.check_request(request)
            .map_err(|_| ScsiError::Sense(sense::SET_TARGET_PORT_GROUPS_COMMAND_FAILED.sense()))?;
        let control = self.control();
        control.set_target_port_groups(self, request, cause).await
    }

    pub(crate) fn control(&self) -> Arc<dyn AluaControl> {
        self.control.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Installs the function told of every change (once: the target core's;
    /// a second call is ignored and returns false).
    pub fn set_observer(&self, f: impl Fn(&AluaChange) + Send + Sync + 'static) -> bool {
        self.observer.set(Box::new(f)).is_ok()
    }

    /// Checks a request against the groups and the supported states:
    /// every group exists, none is named twice, every state is supported.
    pub fn check_request(&self, request: &[SetGroupState]) -> Result<(), AluaError> {
        let groups = self.groups.load();
        for (i, r) in request.iter().enumerate() {
            if !groups.iter().any(|g| g.id == r.group) {
                return Err(AluaError::NoSuchGroup(r.group));
            }
            if request[..i].iter().any(|o| o.group == r.group) {
                return Err(AluaError::Duplicate(r.group));
            }
            if !SupportedStates::LUNAR.supports(r.state) {
                return Err(AluaError::Unsupported { group: r.group, state: r.state });
            }
        }
        Ok(())
    }

    /// Sets the states of the named groups (the others keep theirs), with
    /// `status` as their STATUS CODE, and tells the observer if any state
    /// changed (`cause`: the nexus of the SET TARGET PORT GROUPS that asked,
    /// which is spared the unit attention). Returns whether anything
    /// changed. Control plane (takes the writers' mutex).
    pub fn set_states(
        &self,
        request: &[SetGroupState],
        status: StatusCode,
        cause: Option<&Nexus>,
    ) -> Result<bool, AluaError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.check_request(request)?;
        let before = self.groups.load_full();
        let mut after: Vec<GroupState> = (*before).clone();
        let mut changed = false;
        for r in request {
            if let Some(g) = after.iter_mut().find(|g| g.id == r.group) {
                if g.state != r.state {
                    g.state = r.state;
                    g.status = status;
                    changed = true;
                }
            }
        }
        if !changed {
            return Ok(false);
        }
        let after = Arc::new(after);
        self.groups.store(after.clone());
        if let Some(g) = after.iter().find(|g| g.id == self.config.local) {
            self.local.store(g.state.code(), Ordering::Release);
        }
        tracing::info!(
            local_group = self.config.local,
            groups = ?after.iter().map(|g| (g.id, g.state.name())).collect::<Vec<_>>(),
            "asymmetric access states changed"
        );
        if let Some(observer) = self.observer.get() {
            observer(&AluaChange { before, after, cause: cause.cloned() });
        }
        Ok(true)
    }

    /// Whether this process's group's state admits `cmd` (SPC-5 5.16.2.4);
    /// reads one atomic. The error is NOT READY with the state's
    /// additional sense code.
    pub fn admit(&self, cmd: &Command) -> Result<(), ScsiError> {
        admit(self.local_state(), cmd)
    }
}

/// The most restrictive state in which a command is still processed: the
/// sets of SPC-5 5.16.2.4 are nested (transitioning's list is part of
/// unavailable's, which is part of standby's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Admitted {
    /// Only Active/Optimized and Active/Non-optimized.
    Active,
    /// Also Standby (SPC-5 5.16.2.4.4).
    Standby,
    /// Also Unavailable and Offline (5.16.2.4.5).
    Unavailable,
    /// Also Transitioning (5.16.2.5): in every state.
    Always,
}

/// Where each command is admitted. The standard's lists name commands
/// Lunar does not implement too (LOG SELECT, RECEIVE DIAGNOSTIC RESULTS,
/// SEND DIAGNOSTIC, the echo buffer modes of READ/WRITE BUFFER): they do
/// not decode, and fail as invalid operation codes in every state.
///
/// | command | standby | unavailable, offline | transitioning |
/// |---|---|---|---|
/// | INQUIRY, REPORT LUNS, REPORT TARGET PORT GROUPS, REQUEST SENSE | yes | yes | yes |
/// | SET TARGET PORT GROUPS | yes | yes | no |
/// | LOG SENSE, MODE SENSE, MODE SELECT, PERSISTENT RESERVE IN/OUT, READ CAPACITY (10) and (16) | yes | no | no |
/// | everything else (TEST UNIT READY, READ, WRITE, ...) | no | no | no |
///
/// READ CAPACITY is not in the standard's list for Standby, which lets a
/// device server "support other commands" there; Lunar answers it, as
/// Linux's own target (LIO) does, because Linux's `sd` sizes a disk once
/// when it attaches it: a standby path refused READ CAPACITY becomes a
/// 0-byte disk whose I/O fails ("beyond end of device") after
/// dm-multipath activates it in a failover.
pub fn admitted(cmd: &Command) -> Admitted {
    use Command::*;
    match cmd {
        Inquiry(_) | ReportLuns { .. } | ReportTargetPortGroups { .. } | RequestSense { .. } => Admitted::Always,
        SetTargetPortGroups { .. } => Admitted::Unavailable,
        LogSense(_)
        | ModeSense(_)
        | ModeSelect(_)
        | PersistentReserveIn(_)
        | PersistentReserveOut(_)
        | ReadCapacity10
        | ReadCapacity16 { .. } => Admitted::Standby,
        TestUnitReady
        | StartStopUnit(_)
        | PreventAllowMediumRemoval { .. }
        | Read { .. }
        | Write { .. }
        | WriteAndVerify { .. }
        | Verify { .. }
        | CompareAndWrite { .. }
        | WriteAtomic { .. }
        | OrWrite { .. }
        | WriteSame { .. }
        | Sanitize(_)
        | Unmap { .. }
        | PreFetch { .. }
        | SynchronizeCache { .. }
        | GetLbaStatus { .. }
        | ReadDefectData { .. }
        | ReportSupportedOperationCodes(_)
        | ReportSupportedTaskManagementFunctions { .. }
        | Reserve { .. }
        | Release { .. }
        | ExtendedCopy(_)
        | ReceiveCopyResults(_) => Admitted::Active,
    }
}

/// Whether `state` admits `cmd`; if not, the error to complete it with.
pub fn admit(state: AccessState, cmd: &Command) -> Result<(), ScsiError> {
    let needed = match state {
        AccessState::ActiveOptimized | AccessState::ActiveNonOptimized => return Ok(()),
        AccessState::Standby => Admitted::Standby,
        AccessState::Unavailable | AccessState::Offline => Admitted::Unavailable,
        AccessState::Transitioning => Admitted::Always,
    };
    if admitted(cmd) >= needed {
        return Ok(());
    }
    Err(ScsiError::Sense(state.refusal().unwrap_or_else(|| sense::NOT_READY.sense())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> Alua {
        Alua::new(AluaConfig::gateways(2, 1).unwrap())
    }

    #[test]
    fn codes_round_trip_and_reserved_codes_are_none() {
        for s in AccessState::ALL {
            assert_eq!(AccessState::from_code(s.code()), Some(s));
            assert_eq!(AccessState::parse(s.name()), Some(s));
        }
        for c in [4u8, 5, 6, 7, 8, 9, 0xA, 0xB, 0xC, 0xD, 0x10, 0xFF] {
            assert_eq!(AccessState::from_code(c), None, "{c:#x}");
        }
        assert_eq!(AccessState::parse("AO"), Some(AccessState::ActiveOptimized));
        assert_eq!(AccessState::parse("bogus"), None);
        assert_eq!(SupportedStates::LUNAR.0, 0x8F, "T_SUP U_SUP S_SUP AN_SUP AO_SUP");
        assert!(!SupportedStates::LUNAR.supports(AccessState::Offline));
        assert_eq!(Tpgs::Both.bits(), 0x30);
        assert_eq!(Tpgs::None.bits(), 0);
    }

    #[test]
    fn config_is_checked() {
        let g = |id: u16, ports: Vec<u16>| PortGroupConfig {
            id,
            relative_ports: ports,
            state: AccessState::Standby,
            preferred: false,
        };
        assert_eq!(AluaConfig::new(vec![], 1), Err(AluaConfigError::NoGroups));
        assert_eq!(AluaConfig::new(vec![g(0, vec![1])], 0), Err(AluaConfigError::ZeroGroupId));
        assert_eq!(AluaConfig::new(vec![g(1, vec![1]), g(1, vec![2])], 1), Err(AluaConfigError::DuplicateGroup(1)));
        assert_eq!(AluaConfig::new(vec![g(1, vec![])], 1), Err(AluaConfigError::NoPorts(1)));
        assert_eq!(AluaConfig::new(vec![g(1, vec![0])], 1), Err(AluaConfigError::ZeroPort));
        assert_eq!(AluaConfig::new(vec![g(1, vec![1]), g(2, vec![1])], 1), Err(AluaConfigError::DuplicatePort(1)));
        assert_eq!(AluaConfig::new(vec![g(1, vec![1])], 2), Err(AluaConfigError::UnknownLocal(2)));
        let off = PortGroupConfig { state: AccessState::Offline, ..g(1, vec![1]) };
        assert!(matches!(AluaConfig::new(vec![off], 1), Err(AluaConfigError::UnsupportedState { .. })));
        let c = AluaConfig::gateways(3, 2).unwrap();
        assert_eq!(c.local_group(), 3);
        let states: Vec<_> = c.groups().iter().map(|g| (g.id, g.relative_ports.clone(), g.state)).collect();
        assert_eq!(
            states,
            vec![
                (1, vec![1], AccessState::ActiveOptimized),
                (2, vec![2], AccessState::Standby),
                (3, vec![3], AccessState::Standby)
            ]
        );
    }

    #[test]
    fn set_states_updates_the_atomic_the_snapshot_and_tells_the_observer() {
        let a = two();
        assert_eq!(a.local_group(), 2);
        assert_eq!(a.local_state(), AccessState::Standby);
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        assert!(a.set_observer(move |c| s.lock().unwrap().push(c.clone())));
        assert!(!a.set_observer(|_| {}), "one observer");
        let nexus = Nexus::new("iqn.x,i,0x1", 2);
        let req = [
            SetGroupState { group: 2, state: AccessState::ActiveOptimized },
            SetGroupState { group: 1, state: AccessState::Standby },
        ];
        assert_eq!(a.set_states(&req, StatusCode::AlteredBySetTargetPortGroups, Some(&nexus)), Ok(true));
        assert_eq!(a.local_state(), AccessState::ActiveOptimized);
        let g = a.groups();
        assert_eq!((g[0].state, g[0].status), (AccessState::Standby, StatusCode::AlteredBySetTargetPortGroups));
        assert_eq!(g[1].state, AccessState::ActiveOptimized);
        {
            let seen = seen.lock().unwrap();
            assert_eq!(seen.len(), 1);
            assert_eq!(seen[0].cause, Some(nexus.clone()));
            assert_eq!(seen[0].before[1].state, AccessState::Standby);
        }
        // The same states again: nothing changes, nobody is told.
        assert_eq!(a.set_states(&req, StatusCode::AlteredByImplicitTransition, None), Ok(false));
        assert_eq!(seen.lock().unwrap().len(), 1);
        // Refusals change nothing.
        let bad = [SetGroupState { group: 9, state: AccessState::Standby }];
        assert_eq!(a.set_states(&bad, StatusCode::None, None), Err(AluaError::NoSuchGroup(9)));
        let dup = [
            SetGroupState { group: 1, state: AccessState::Standby },
            SetGroupState { group: 1, state: AccessState::Unavailable },
        ];
        assert_eq!(a.set_states(&dup, StatusCode::None, None), Err(AluaError::Duplicate(1)));
        let off = [SetGroupState { group: 1, state: AccessState::Offline }];
        assert!(matches!(a.set_states(&off, StatusCode::None, None), Err(AluaError::Unsupported { .. })));
        assert_eq!(a.groups(), g);
    }

    /// The table of SPC-5 5.16.2.4: one command of each class in each state.
    #[test]
    fn each_state_admits_its_list() {
        use crate::sense::SenseKey;
        let cmd = |cdb: &[u8]| Command::decode(cdb).unwrap();
        let inquiry = cmd(&[0x12, 0, 0, 0, 36, 0]);
        let rtpg = cmd(&[0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        let stpg = cmd(&[0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let mode_sense = cmd(&[0x1A, 0, 0x3F, 0, 255, 0]);
        let pr_in = cmd(&[0x5E, 0, 0, 0, 0, 0, 0, 0, 8, 0]);
        let read_capacity = cmd(&[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]);
        let tur = cmd(&[0, 0, 0, 0, 0, 0]);
        let read = cmd(&[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0]);
        let rsoc = cmd(&[0xA3, 0x0C, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        let all = [&inquiry, &rtpg, &stpg, &mode_sense, &pr_in, &read_capacity, &tur, &read, &rsoc];
        let table: [(AccessState, usize, (u8, u8)); 6] = [
            (AccessState::ActiveOptimized, 9, (0, 0)),
            (AccessState::ActiveNonOptimized, 9, (0, 0)),
            (AccessState::Standby, 6, (0x04, 0x0B)),
            (AccessState::Unavailable, 3, (0x04, 0x0C)),
            (AccessState::Offline, 3, (0x04, 0x12)),
            (AccessState::Transitioning, 2, (0x04, 0x0A)),
        ];
        for (state, admitted_count, (asc, ascq)) in table {
            // `all` is ordered from most to least admitted.
            for (i, c) in all.iter().enumerate() {
                match admit(state, c) {
                    Ok(()) => assert!(i < admitted_count, "{state}: {} admitted", c.name()),
                    Err(e) => {
                        assert!(i >= admitted_count, "{state}: {} refused", c.name());
                        let s = e.sense();
                        assert_eq!((s.key, s.asc, s.ascq), (SenseKey::NotReady, asc, ascq), "{state} {}", c.name());
                    }
                }
            }
        }
    }

    #[test]
    fn the_local_control_applies_the_request() {
        let a = two();
        let nexus = Nexus::new("iqn.y,i,0x1", 2);
        let req = [SetGroupState { group: 2, state: AccessState::ActiveNonOptimized }];
        let control = a.control();
        crate::test_util::block_on(control.set_target_port_groups(&a, &req, &nexus)).unwrap();
        assert_eq!(a.local_state(), AccessState::ActiveNonOptimized);
    }
}

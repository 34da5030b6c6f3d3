//! Reservations (SPC-5 5.13): the device-wide state of persistent
//! reservations and of SPC-2 RESERVE/RELEASE, the one conflict check every
//! command goes through ([`Disk::check_reservation`]), and the versioned
//! encoding the daemon stores beside the backend (APTPL).
//!
//! Which commands a reservation lets through is a column of the opcode
//! table ([`Access`] in [`crate::cdb::table::OpcodeEntry::access`]), so the
//! table stays the one source of truth; [`access_of`] resolves the few rows
//! whose class depends on CDB fields.
//!
//! Concurrency: every command reads the state, PR OUT writes it rarely. The
//! state is an immutable [`ReservationState`] published through `ArcSwap`:
//! readers load a snapshot without a lock. Writers copy, modify and publish
//! under a `Mutex` (`Reservations::update`).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use thiserror::Error;

use crate::cdb::{table, Command};
use crate::commands::persistent_reserve::PrOutRequest;
use crate::disk::{Disk, ExecContext};
use crate::error::ScsiError;
use crate::sense::Sense;

/// An I_T nexus as the transport names it (SAM-5 4.6): the SCSI initiator
/// port name and the relative port identifier of the target port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Nexus {
    /// SCSI initiator port name. iSCSI: `"<initiator name>,i,0x<isid>"`
    /// (RFC 7143 and SPC-5 7.6.4.6); a bare `"<initiator name>"` names every
    /// port of that initiator (a TransportID of format 00b).
    pub initiator_port: String,
    /// RELATIVE TARGET PORT IDENTIFIER of the target port.
    pub target_port: u16,
}

/// The nexus of commands whose context names none.
static ANONYMOUS: Nexus = Nexus { initiator_port: String::new(), target_port: 0 };

impl Nexus {
    pub fn new(initiator_port: impl Into<String>, target_port: u16) -> Nexus {
        Nexus { initiator_port: initiator_port.into(), target_port }
    }

    /// The single nexus assumed when [`ExecContext::nexus`] is `None`.
    pub fn anonymous() -> Nexus {
        ANONYMOUS.clone()
    }

    /// Whether a registration or reservation made for `self` covers the I_T
    /// nexus `actual`. Names compare without regard to ASCII case (iSCSI
    /// names are lower case after normalization, ISIDs are hex); a bare
    /// initiator name covers every port of that initiator.
    pub fn covers(&self, actual: &Nexus) -> bool {
        if self.target_port != actual.target_port {
            return false;
        }
        let (mine, theirs) = (self.initiator_port.as_bytes(), actual.initiator_port.as_bytes());
        if mine.eq_ignore_ascii_case(theirs) {
            return true;
        }
        let bare = !self.initiator_port.contains(",i,");
        bare && theirs.len() > mine.len()
            && theirs[..mine.len()].eq_ignore_ascii_case(mine)
            && theirs[mine.len()..].starts_with(b",i,")
    }
}

/// The nexus a command came from.
pub(crate) fn nexus_of(ctx: &ExecContext) -> &Nexus {
    ctx.nexus.as_ref().unwrap_or(&ANONYMOUS)
}

/// Persistent reservation types (SPC-5 6.17.3, table 244).
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrType {
    WriteExclusive = 0x1,
    ExclusiveAccess = 0x3,
    WriteExclusiveRegistrantsOnly = 0x5,
    ExclusiveAccessRegistrantsOnly = 0x6,
    WriteExclusiveAllRegistrants = 0x7,
    ExclusiveAccessAllRegistrants = 0x8,
}

impl PrType {
    pub const ALL: [PrType; 6] = [
        PrType::WriteExclusive,
        PrType::ExclusiveAccess,
        PrType::WriteExclusiveRegistrantsOnly,
        PrType::ExclusiveAccessRegistrantsOnly,
        PrType::WriteExclusiveAllRegistrants,
        PrType::ExclusiveAccessAllRegistrants,
    ];

    /// Decodes the TYPE field; `None` for reserved and obsolete values.
    pub fn from_u8(v: u8) -> Option<PrType> {
        PrType::ALL.into_iter().find(|t| *t as u8 == v)
    }

    /// Every registrant is a reservation holder (SPC-5 5.13.9).
    pub fn all_registrants(self) -> bool {
        matches!(self, PrType::WriteExclusiveAllRegistrants | PrType::ExclusiveAccessAllRegistrants)
    }

    /// Registrants (not only the holder) get access: the "registrants only"
    /// and "all registrants" types.
    pub fn admits_registrants(self) -> bool {
        !matches!(self, PrType::WriteExclusive | PrType::ExclusiveAccess)
    }

    /// Reads are refused to those without access (Exclusive Access types).
    pub fn exclusive_access(self) -> bool {
        matches!(
            self,
            PrType::ExclusiveAccess | PrType::ExclusiveAccessRegistrantsOnly | PrType::ExclusiveAccessAllRegistrants
        )
    }
}

/// How a command fares under reservations: the conflict class column of
/// the opcode table. SPC-5 table 63 (and SBC-4 table 13 for the block
/// commands) says, per command, "Allowed" or "Conflict" for: any nexus
/// under Write Exclusive, any nexus under Exclusive Access, a registered
/// nexus under the registrants-only / all-registrants types, and an
/// unregistered one under those. Every row falls in one of these classes.
/// The holder of a reservation is never refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Access {
    /// Allowed in every column, and not refused by an SPC-2 reservation
    /// either (INQUIRY, REQUEST SENSE, REPORT LUNS, LOG SENSE, RELEASE).
    Unrestricted,
    /// Allowed in every column; refused by another nexus's SPC-2
    /// reservation (TEST UNIT READY, READ CAPACITY, PERSISTENT RESERVE
    /// IN/OUT, RESERVE, whose own rules are checked when they execute).
    Shared,
    /// Reads: allowed under Write Exclusive types, refused under Exclusive
    /// Access types to all but the holder (and registrants for RO/AR).
    Read,
    /// Writes or changes device state: refused to all but the holder (and
    /// registrants for RO/AR).
    Write,
    /// Decided by CDB fields (resolved by [`access_of`]): PREVENT ALLOW
    /// MEDIUM REMOVAL (PREVENT=0 unrestricted, else write) and START STOP
    /// UNIT (START=1 with POWER CONDITION 0 shared, else write).
    ByField,
}

/// The class of a decoded command.
pub fn access_of(cmd: &Command) -> Access {
    match cmd {
        Command::PreventAllowMediumRemoval { prevent: false } => Access::Unrestricted,
        Command::PreventAllowMediumRemoval { prevent: true } => Access::Write,
        Command::StartStopUnit(s) if s.start && s.power_condition == 0 => Access::Shared,
        Command::StartStopUnit(_) => Access::Write,
        _ => table::lookup(cmd.opcode(), cmd.service_action()).map_or(Access::Write, |e| e.access),
    }
}

/// One registered I_T nexus and its reservation key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    pub nexus: Nexus,
    pub key: u64,
}

/// A persistent reservation (LU scope, the only scope of SPC-5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersistentReservation {
    /// The nexus that holds it; for the all-registrants types every
    /// registrant holds it and this is only the one that created it.
    pub holder: Nexus,
    pub pr_type: PrType,
}

/// The reservation state of a logical unit: an immutable snapshot.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReservationState {
    /// PRGENERATION (SPC-5 6.16.2).
    pub generation: u32,
    /// Activate persist through power loss, as last set by a registration.
    pub aptpl: bool,
    pub registrations: Vec<Registration>,
    pub reservation: Option<PersistentReservation>,
    /// Holder of an SPC-2 RESERVE(6)/(10) reservation (never persisted).
    pub spc2_holder: Option<Nexus>,
}

/// Most registrations kept; more fail with INSUFFICIENT REGISTRATION RESOURCES.
pub const MAX_REGISTRATIONS: usize = 1024;

impl ReservationState {
    /// Nothing to enforce: the fast path of the conflict check.
    fn is_idle(&self) -> bool {
        self.reservation.is_none() && self.spc2_holder.is_none()
    }

    /// The registration of `nexus`, if any.
    pub fn registration(&self, nexus: &Nexus) -> Option<&Registration> {
        self.registrations.iter().find(|r| r.nexus.covers(nexus))
    }

    pub(crate) fn registration_mut(&mut self, nexus: &Nexus) -> Option<&mut Registration> {
        self.registrations.iter_mut().find(|r| r.nexus.covers(nexus))
    }

    /// Whether `nexus` holds the persistent reservation.
    pub fn is_holder(&self, nexus: &Nexus) -> bool {
        match &self.reservation {
            None => false,
            Some(r) if r.pr_type.all_registrants() => self.registration(nexus).is_some(),
            Some(r) => r.holder.covers(nexus) && self.registration(nexus).is_some(),
        }
    }

    /// The reservation key reported for the reservation (READ
    /// RESERVATION): zero for the all-registrants types (SPC-5 6.16.3.2).
    pub fn reservation_key(&self) -> u64 {
        match &self.reservation {
            Some(r) if !r.pr_type.all_registrants() => self.registration(&r.holder).map_or(0, |g| g.key),
            _ => 0,
        }
    }

    /// SPC-5 5.13.1 and table 63; SPC-2 5.5.1 for RESERVE/RELEASE.
    pub fn check(&self, access: Access, nexus: &Nexus) -> Result<(), ScsiError> {
        if let Some(h) = &self.spc2_holder {
            if !h.covers(nexus) && access != Access::Unrestricted {
                return Err(ScsiError::ReservationConflict);
            }
        }
        let Some(res) = &self.reservation else { return Ok(()) };
        let allowed = match access {
            Access::Unrestricted | Access::Shared => true,
            _ if self.is_holder(nexus) => true,
            _ if res.pr_type.admits_registrants() && self.registration(nexus).is_some() => true,
            Access::Read => !res.pr_type.exclusive_access(),
            Access::Write | Access::ByField => false,
        };
        if allowed {
            Ok(())
        } else {
            Err(ScsiError::ReservationConflict)
        }
    }

    /// The part that persists through power loss.
    fn persistent_part(&self) -> (u32, bool, &[Registration], &Option<PersistentReservation>) {
        (self.generation, self.aptpl, &self.registrations, &self.reservation)
    }
}

/// What a command asks of the target core beyond its status: the core
/// holds unit attentions and tasks per I_T nexus, the disk does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SideEffect {
    /// Establish this unit attention for the I_T nexus (SAM-5 5.14).
    UnitAttention { nexus: Nexus, sense: Sense },
    /// Establish this unit attention for every I_T nexus of the logical
    /// unit but this one (e.g. MODE PARAMETERS CHANGED, SPC-5 6.11 / SAM-5
    /// 5.14: the nexus that changed them is not told).
    UnitAttentionOthers { except: Nexus, sense: Sense },
    /// PREEMPT AND ABORT (SPC-5 5.13.11.2.6): abort every task of this I_T
    /// nexus on this logical unit, as ABORT TASK SET would. The PR OUT
    /// command itself is never on such a nexus.
    AbortTasks { nexus: Nexus },
    /// The persistent part of the state changed while APTPL is or was set:
    /// store [`Disk::reservation_state_bytes`] beside the backend before
    /// completing the command.
    SaveReservations,
}

/// The reservation state of a disk, published for lock-free readers.
pub(crate) struct Reservations {
    current: ArcSwap<ReservationState>,
    /// Serializes writers (PR OUT, RESERVE, RELEASE, resets). The measured
    /// exception to "no lock shared between I/O threads": it is taken only
    /// by those commands (a handful per failover, never per I/O), never on
    /// the read path, and not held across an await. Without it two
    /// concurrent PR OUTs could each publish a copy missing the other's
    /// change (a lost registration).
    /// Also holds the version of the shared store's object last published
    /// ([`Reservations::publish`]; 0 for a state of this process only).
    writer: Mutex<u64>,
    /// Where the state is shared with other gateways, if it is.
    store: OnceLock<Arc<dyn ReservationStore>>,
    /// With a store: the copy here is trusted until this instant (nanoseconds
    /// of [`monotonic_nanos`]); past it, or 0 (the store's watch broke), every
    /// command but the unrestricted ones is refused NOT READY, BECOMING
    /// READY, until the store has confirmed its watch or read the state
    /// again ([`Disk::renew_reservations`]). A process that was stopped
    /// (SIGSTOP) and missed a change finds its lease expired when it runs
    /// again, before its watcher thread has noticed anything.
    lease_until: AtomicU64,
    /// A store is set: the lease is checked (one load; false for a state of
    /// this process, whose checks are as before).
    shared: AtomicBool,
}

/// Nanoseconds since the first call, on the monotonic clock (which runs on
/// while the process is stopped).
pub fn monotonic_nanos() -> u64 {
    static EPOCH: OnceLock<std::time::Instant> = OnceLock::new();
    let e = *EPOCH.get_or_init(std::time::Instant::now);
    u64::try_from(e.elapsed().as_nanos()).unwrap_or(u64::MAX).max(1)
}

/// The future of [`ReservationStore::apply`].
pub type StoreFuture = Pin<Box<dyn Future<Output = Result<Vec<SideEffect>, ScsiError>> + Send>>;

/// Where the reservation state of a logical unit served by several
/// gateways lives (the cluster; see `lunar-core`'s `cluster_reservations`).
/// Without one the state is this process's: PERSISTENT RESERVE OUT changes
/// it in memory under [`Reservations`]' writer lock. With one, every PR OUT
/// goes through [`ReservationStore::apply`], which applies the same rules
/// ([`ReservationState::apply_pr_out`]) to the shared copy, publishes the
/// result into this disk's copy ([`Disk::publish_reservations`]) and
/// completes only when every other gateway has it too (or was fenced).
/// Commands are still checked against this disk's copy, without a lock.
pub trait ReservationStore: Send + Sync {
    /// Applies `req`, received on `nexus`, to the shared state; returns the
    /// side effects for this gateway (unit attentions, aborts). Runs its
    /// blocking work off the calling (I/O) thread.
    fn apply(&self, nexus: Nexus, req: PrOutRequest) -> StoreFuture;

    /// Tells the other gateways that this logical unit was reset here
    /// (LOGICAL UNIT RESET, or a target reset), so that each resets its
    /// side of it too: aborts its commands on it and raises the unit
    /// attention for its own I_T nexuses (SAM-5 6.3.2: a logical unit
    /// reset reaches every I_T nexus). Resolves once every other gateway
    /// has done so or was fenced. By default (nothing shared) at once.
    fn announce_reset(&self) -> ResetFuture {
        Box::pin(async {})
    }
}

/// The future of [`ReservationStore::announce_reset`].
pub type ResetFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

impl std::fmt::Debug for Reservations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.current.load().fmt(f)
    }
}

impl Default for Reservations {
    fn default() -> Self {
        Reservations {
            current: ArcSwap::from_pointee(ReservationState::default()),
            writer: Mutex::new(0),
            store: OnceLock::new(),
            lease_until: AtomicU64::new(0),
            shared: AtomicBool::new(false),
        }
    }
}

impl Reservations {
    /// The current snapshot (lock-free).
    pub(crate) fn snapshot(&self) -> Arc<ReservationState> {
        self.current.load_full()
    }

    /// A borrowed view of the current snapshot for the per-command check:
    /// lock-free and without touching the shared reference count, so I/O
    /// threads do not contend on its cache line.
    fn peek(&self) -> arc_swap::Guard<Arc<ReservationState>> {
        self.current.load()
    }

    /// The conflict check of an access by `nexus` (lock-free; with no
    /// reservation it only loads the snapshot pointer).
    pub(crate) fn check(&self, access: Access, nexus: &Nexus) -> Result<(), ScsiError> {
        if access != Access::Unrestricted
            && self.shared.load(Ordering::Acquire)
            && monotonic_nanos() >= self.lease_until.load(Ordering::Acquire)
        {
            return Err(ScsiError::Sense(crate::sense::BECOMING_READY.sense()));
        }
        let s = self.peek();
        if s.is_idle() {
            return Ok(());
        }
        s.check(access, nexus)
    }

    /// Runs `f` on a copy of the state and publishes the copy if `f`
    /// succeeds and changed it. Adds [`SideEffect::SaveReservations`] when
    /// the persistent part changed under APTPL.
    pub(crate) fn update<T>(
        &self,
        fx: &mut Vec<SideEffect>,
        f: impl FnOnce(&mut ReservationState, &mut Vec<SideEffect>) -> Result<T, ScsiError>,
    ) -> Result<T, ScsiError> {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.current.load_full();
        let mut next = ReservationState::clone(&old);
        let mut effects = Vec::new();
        let out = f(&mut next, &mut effects)?;
        if next != *old {
            if (old.aptpl || next.aptpl) && old.persistent_part() != next.persistent_part() {
                effects.push(SideEffect::SaveReservations);
            }
            self.current.store(Arc::new(next));
        }
        fx.extend(effects);
        Ok(out)
    }

    fn replace(&self, state: ReservationState) {
        let _writer = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        self.current.store(Arc::new(state));
    }

    pub(crate) fn store(&self) -> Option<&Arc<dyn ReservationStore>> {
        self.store.get()
    }

    /// Publishes the shared store's state of object version `version`,
    /// unless a newer one was published already (the watcher and a PR OUT
    /// of this gateway may publish in either order). Returns the state it
    /// replaced. The SPC-2 holder stays this process's.
    fn publish(&self, version: u64, mut state: ReservationState) -> Option<Arc<ReservationState>> {
        let mut published = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        if version <= *published {
            return None;
        }
        *published = version;
        let old = self.current.load_full();
        state.spc2_holder.clone_from(&old.spc2_holder);
        self.current.store(Arc::new(state));
        Some(old)
    }
}

/// The unit attentions a change of the shared state from `old` to `new`,
/// made by a PERSISTENT RESERVE OUT received on `changed_by`, calls for
/// (SPC-5 5.13.10, 5.13.11): what a gateway that learns of the change from
/// the cluster raises for its own I_T nexuses (the gateway that made the
/// change has them from [`ReservationState::apply_pr_out`] itself).
///
/// - A registration removed by another nexus: REGISTRATIONS PREEMPTED if
///   that nexus is still registered (PREEMPT), RESERVATIONS PREEMPTED if
///   not (CLEAR removes every registration, its own too).
/// - A reservation of a registrants-only or all-registrants type released
///   (RELEASE, or its holder unregistered), or any reservation whose type
///   changed (PREEMPT with another type): RESERVATIONS RELEASED for every
///   nexus registered before and after, but the one that made the change.
///
/// A PREEMPT AND ABORT also aborts the tasks of the preempted nexuses
/// ([`SideEffect::AbortTasks`], SPC-5 5.13.11.2.6).
///
/// When several changes are seen at once (a gateway that was behind), the
/// result is the union over the end points, attributed to the last
/// change.
pub fn unit_attentions(old: &ReservationState, new: &ReservationState, change: Option<&Change>) -> Vec<SideEffect> {
    use crate::sense::{REGISTRATIONS_PREEMPTED, RESERVATIONS_PREEMPTED, RESERVATIONS_RELEASED};
    let changed_by = change.map(|c| &c.by);
    let by = |n: &Nexus| changed_by.is_some_and(|c| n.covers(c) || c.covers(n));
    let actor_registered = changed_by.is_some_and(|c| new.registration(c).is_some());
    let mut out = Vec::new();
    for r in &old.registrations {
        if by(&r.nexus) || new.registrations.iter().any(|g| g.nexus == r.nexus) {
            continue;
        }
        let sense = if actor_registered { REGISTRATIONS_PREEMPTED } else { RESERVATIONS_PREEMPTED };
        out.push(SideEffect::UnitAttention { nexus: r.nexus.clone(), sense: sense.sense() });
        if actor_registered && change.is_some_and(|c| c.preempt_and_abort) {
            out.push(SideEffect::AbortTasks { nexus: r.nexus.clone() });
        }
    }
    let released = match (&old.reservation, &new.reservation) {
        (Some(o), None) => o.pr_type.admits_registrants(),
        (Some(o), Some(n)) => o.pr_type != n.pr_type,
        _ => false,
    };
    if released {
        for r in &new.registrations {
            if !by(&r.nexus) && old.registrations.iter().any(|g| g.nexus == r.nexus) {
                out.push(SideEffect::UnitAttention { nexus: r.nexus.clone(), sense: RESERVATIONS_RELEASED.sense() });
            }
        }
    }
    out
}

/// Why [`Disk::restore_reservations`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RestoreError {
    #[error("not a Lunar reservation state (bad magic)")]
    BadMagic,
    #[error("unsupported reservation state version {0}")]
    UnsupportedVersion(u8),
    #[error("reservation state truncated")]
    Truncated,
    #[error("invalid reservation state: {0}")]
    Invalid(&'static str),
}

/// Encoding (all integers big endian). Version 1: `"LPRS"`, version u8,
/// generation u32, aptpl u8, reservation type u8 (0: none), holder index u32
/// (into the registrations; u32::MAX for none), registration count u32,
/// then per registration: key u64, target port u16, initiator port length
/// u16, initiator port (UTF-8).
///
/// The change that made a shared state: the nexus whose PERSISTENT RESERVE
/// OUT it was, and whether it was a PREEMPT AND ABORT (the other gateways
/// then abort the preempted nexuses' tasks too).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub by: Nexus,
    pub preempt_and_abort: bool,
}

/// Version 2 (written since the state is shared between gateways, see
/// [`encode_shared`]): the same up to the reservation type, then, when
/// there is a reservation, its holder as a nexus (target port u16, length
/// u16, name: an all-registrants reservation outlives the registration of
/// the nexus that created it, which version 1 could not say), the
/// registration count and registrations as in version 1, and last the
/// [`Change`] that made the state (u8: 0 none, 1 a nexus follows, 2 a nexus
/// follows and it was a PREEMPT AND ABORT), from which other gateways decide
/// their unit attentions ([`unit_attentions`]). Both versions decode.
const MAGIC: &[u8; 4] = b"LPRS";
const VERSION_1: u8 = 1;
const VERSION: u8 = 2;
const NO_HOLDER: u32 = u32::MAX;

fn put_nexus(b: &mut Vec<u8>, n: &Nexus) {
    b.extend_from_slice(&n.target_port.to_be_bytes());
    b.extend_from_slice(&(n.initiator_port.len() as u16).to_be_bytes());
    b.extend_from_slice(n.initiator_port.as_bytes());
}

/// Names longer than a u16 length cannot be encoded (no transport makes
/// them: an iSCSI name has at most 223 bytes).
fn encodable(n: &Nexus) -> bool {
    u16::try_from(n.initiator_port.len()).is_ok()
}

fn encode(s: &ReservationState) -> Vec<u8> {
    encode_shared(s, None)
}

/// The versioned encoding of the persistent part of `s` (the SPC-2
/// reservation is never part of it) and of the change that made it:
/// what the APTPL file and the cluster's reservation object hold.
pub fn encode_shared(s: &ReservationState, change: Option<&Change>) -> Vec<u8> {
    let mut b = Vec::with_capacity(24 + s.registrations.len() * 64);
    b.extend_from_slice(MAGIC);
    b.push(VERSION);
    b.extend_from_slice(&s.generation.to_be_bytes());
    b.push(u8::from(s.aptpl));
    match &s.reservation {
        Some(r) if encodable(&r.holder) => {
            b.push(r.pr_type as u8);
            put_nexus(&mut b, &r.holder);
        }
        _ => b.push(0),
    }
    let regs: Vec<&Registration> = s.registrations.iter().filter(|r| encodable(&r.nexus)).collect();
    b.extend_from_slice(&(regs.len() as u32).to_be_bytes());
    for r in regs {
        b.extend_from_slice(&r.key.to_be_bytes());
        put_nexus(&mut b, &r.nexus);
    }
    match change.filter(|c| encodable(&c.by)) {
        Some(c) => {
            b.push(if c.preempt_and_abort { 2 } else { 1 });
            put_nexus(&mut b, &c.by);
        }
        None => b.push(0),
    }
    b
}

/// A bounds-checked reader over the encoding.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RestoreError> {
        if self.0.len() < n {
            return Err(RestoreError::Truncated);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, RestoreError> {
        Ok(self.take(1)?[0])
    }

    fn be<const N: usize>(&mut self) -> Result<[u8; N], RestoreError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn nexus(&mut self) -> Result<Nexus, RestoreError> {
        let target_port = u16::from_be_bytes(self.be()?);
        let len = usize::from(u16::from_be_bytes(self.be()?));
        let name = std::str::from_utf8(self.take(len)?).map_err(|_| RestoreError::Invalid("initiator port name"))?;
        Ok(Nexus::new(name, target_port))
    }
}

fn decode(bytes: &[u8]) -> Result<ReservationState, RestoreError> {
    decode_shared(bytes).map(|(s, _)| s)
}

/// Decodes what [`encode_shared`] (or a version 1 APTPL file) holds: the
/// state and the change that made it. Never panics: the bytes may
/// come from the cluster, written by anyone.
pub fn decode_shared(bytes: &[u8]) -> Result<(ReservationState, Option<Change>), RestoreError> {
    let mut r = Reader(bytes);
    if r.take(4).map_err(|_| RestoreError::BadMagic)? != MAGIC {
        return Err(RestoreError::BadMagic);
    }
    let version = r.u8()?;
    if version != VERSION && version != VERSION_1 {
        return Err(RestoreError::UnsupportedVersion(version));
    }
    let generation = u32::from_be_bytes(r.be()?);
    let aptpl = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(RestoreError::Invalid("APTPL")),
    };
    let ty = r.u8()?;
    let pr_type = match ty {
        0 => None,
        t => Some(PrType::from_u8(t).ok_or(RestoreError::Invalid("reservation type"))?),
    };
    let (holder_index, holder) = if version == VERSION_1 {
        (u32::from_be_bytes(r.be()?), None)
    } else {
        (NO_HOLDER, pr_type.map(|_| r.nexus()).transpose()?)
    };
    let count = u32::from_be_bytes(r.be()?) as usize;
    if count > MAX_REGISTRATIONS {
        return Err(RestoreError::Invalid("too many registrations"));
    }
    let mut registrations = Vec::with_capacity(count);
    for _ in 0..count {
        let key = u64::from_be_bytes(r.be()?);
        let nexus = r.nexus()?;
        if key == 0 {
            return Err(RestoreError::Invalid("zero reservation key"));
        }
        registrations.push(Registration { nexus, key });
    }
    let changed_by = match version {
        VERSION_1 => None,
        _ => match r.u8()? {
            0 => None,
            f @ (1 | 2) => Some(Change { by: r.nexus()?, preempt_and_abort: f == 2 }),
            _ => return Err(RestoreError::Invalid("change flag")),
        },
    };
    if !r.0.is_empty() {
        return Err(RestoreError::Invalid("trailing bytes"));
    }
    let reservation = match pr_type {
        None => None,
        Some(pr_type) => {
            let holder = match holder {
                Some(h) => h,
                None => usize::try_from(holder_index)
                    .ok()
                    .and_then(|i| registrations.get(i))
                    .ok_or(RestoreError::Invalid("reservation holder"))?
                    .nexus
                    .clone(),
            };
            // Only an all-registrants reservation outlives its creator's registration.
            if !pr_type.all_registrants() && !registrations.iter().any(|g| g.nexus.covers(&holder)) {
                return Err(RestoreError::Invalid("reservation holder"));
            }
            Some(PersistentReservation { holder, pr_type })
        }
    };
    Ok((ReservationState { generation, aptpl, registrations, reservation, spc2_holder: None }, changed_by))
}

impl Disk {
    /// The reservation conflict check (SPC-5 5.13.1, table 63). [`Disk::execute`]
    /// runs it first; the core may also call it, with [`Disk::validate`],
    /// before receiving data-out. Lock-free; with no reservation it only
    /// loads the snapshot pointer.
    pub fn check_reservation(&self, cmd: &Command, ctx: &ExecContext) -> Result<(), ScsiError> {
        self.reservations.check(access_of(cmd), nexus_of(ctx))
    }

    /// A snapshot of the reservation state (for the control plane and tests).
    pub fn reservation_state(&self) -> Arc<ReservationState> {
        self.reservations.snapshot()
    }

    /// The persistent reservation state in a versioned encoding, for the
    /// daemon to store beside the backend when told so by
    /// [`SideEffect::SaveReservations`]. The SPC-2 reservation is not part of it.
    pub fn reservation_state_bytes(&self) -> Vec<u8> {
        encode(&self.reservations.snapshot())
    }

    /// Restores what [`Disk::reservation_state_bytes`] encoded, at power on
    /// (before the first command). State saved without APTPL does not
    /// persist through power loss (SPC-5 5.13.5): it restores as empty,
    /// except for the generation. Invalid input leaves the state unchanged.
    pub fn restore_reservations(&self, bytes: &[u8]) -> Result<(), RestoreError> {
        let mut s = decode(bytes)?;
        if !s.aptpl {
            s = ReservationState { generation: s.generation, ..Default::default() };
        }
        self.reservations.replace(s);
        Ok(())
    }

    /// Makes the state of this logical unit the one of `store`, shared with
    /// other gateways (set once, before the first command; a second call is
    /// ignored). RESERVE and RELEASE (SPC-2) are then refused: they are not
    /// shared.
    /// The copy starts stale: call [`Disk::renew_reservations`] once it
    /// holds the shared state.
    pub fn set_reservation_store(&self, store: Arc<dyn ReservationStore>) {
        if self.reservations.store.set(store).is_ok() {
            self.reservations.shared.store(true, Ordering::Release);
        }
    }

    /// Whether the state is shared through a [`ReservationStore`].
    pub fn has_reservation_store(&self) -> bool {
        self.reservations.store().is_some()
    }

    /// Tells the other gateways of this logical unit that it was reset
    /// ([`ReservationStore::announce_reset`]); at once without a store.
    pub fn announce_reset(&self) -> ResetFuture {
        match self.reservations.store() {
            Some(store) => store.announce_reset(),
            None => Box::pin(async {}),
        }
    }

    /// Publishes a state read from the shared store, of object version
    /// `version`: returns the state it replaced, or `None` when this copy
    /// already has that version or a newer one.
    pub fn publish_reservations(&self, version: u64, state: ReservationState) -> Option<Arc<ReservationState>> {
        self.reservations.publish(version, state)
    }

    /// Marks this copy of the shared state as possibly behind (its watch
    /// broke): commands but the unrestricted ones are refused NOT READY,
    /// BECOMING READY, until [`Disk::renew_reservations`].
    pub fn set_reservations_stale(&self) {
        self.reservations.lease_until.store(0, Ordering::Release);
    }

    /// Trusts this copy of the shared state until `until` (a
    /// [`monotonic_nanos`] instant): the store has confirmed its watch, so
    /// no change can have been missed before then.
    pub fn renew_reservations(&self, until: u64) {
        self.reservations.lease_until.store(until, Ordering::Release);
    }

    /// Whether the copy is trusted now (always, without a store).
    pub fn reservations_current(&self) -> bool {
        !self.reservations.shared.load(Ordering::Acquire)
            || monotonic_nanos() < self.reservations.lease_until.load(Ordering::Acquire)
    }

    /// Logical unit reset, hard reset or power on: releases the SPC-2
    /// reservation (SPC-2 5.5.1); persistent reservations are kept.
    pub fn reset_reservations(&self) {
        let _ = self.reservations.update(&mut Vec::new(), |s, _| {
            s.spc2_holder = None;
            Ok(())
        });
    }

    /// I_T nexus loss: releases an SPC-2 reservation that nexus holds and
    /// drops the copy results held for it. Registrations and persistent
    /// reservations survive (SPC-5 5.13.1).
    pub fn nexus_lost(&self, nexus: &Nexus) {
        self.copy_nexus_lost(nexus);
        let _ = self.reservations.update(&mut Vec::new(), |s, _| {
            if s.spc2_holder.as_ref().is_some_and(|h| h.covers(nexus)) {
                s.spc2_holder = None;
            }
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests;

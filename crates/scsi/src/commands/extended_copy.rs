//! Third-party copy between logical units of one target: EXTENDED COPY
//! (LID1, SPC-4 6.3) with identification CSCD descriptors (E4h) and
//! block-to-block segment descriptors (02h), RECEIVE COPY RESULTS (SPC-4
//! 6.18: COPY STATUS and OPERATING PARAMETERS), and the limits the
//! Third-party Copy VPD page reports ([`crate::vpd`]).
//!
//! A CSCD descriptor names its logical unit by a designator of VPD page 83h.
//! The disk resolves its own NAA designator itself; another LUN of the
//! target is found through [`ExecContext::copy_resolver`], which the target
//! core fills (see [`CopyTargets`]). The copy runs inside the command, on
//! the I/O thread that executes it, in chunks of at most
//! [`MAX_TRANSFER_BYTES`].
//!
//! The command's own unit admitted the EXTENDED COPY as one of its
//! commands. Another unit is reached directly, not through its request
//! lists, so each chunk read from or written to it is admitted by that
//! unit's [`CopyGate`] (the core's: the unit's COMPARE AND WRITE
//! atomicity, and its pause), one unit at a time, and checked there
//! against its state (sanitize, medium, write protection) and its
//! reservations for the I_T nexus of the EXTENDED COPY, as a READ or a
//! WRITE from that nexus would be. A conflict, or a unit its gate does not
//! admit, aborts the copy (COPY ABORTED, COPY TARGET DEVICE NOT REACHABLE).
//!
//! Copy status is kept per I_T nexus and list identifier in a short list
//! behind a mutex: an explicit exception to "no lock on the I/O path",
//! taken a few times per EXTENDED COPY (begin, each segment, end) and once
//! per RECEIVE COPY RESULTS, never by reads or writes. A copy with a list
//! identifier (LIST ID USAGE 00b or 10b) is listed while it runs: COPY
//! STATUS reports it in progress, and another EXTENDED COPY with its list
//! identifier on the same nexus is refused with OPERATION IN PROGRESS
//! (SPC-4 6.3.1). When it ends its status is held if LIST ID USAGE is 00b,
//! until one of the events after which the copy manager discards the data
//! held for RECEIVE COPY RESULTS (as SPC-2 7.14.2 lists them for COPY
//! STATUS): COPY STATUS returned all of it (or was asked for none, with
//! ALLOCATION LENGTH 0), another EXTENDED COPY with the same list
//! identifier arrived from that nexus, a logical unit reset or hard reset
//! ([`Disk::discard_copy_results`]), the nexus was lost, or room was needed
//! for newer results ([`MAX_HELD`] per logical unit, oldest first).

use lunar_block::Bytes;
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use lunar_block::Backend;

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{truncate, Disk, DiskState, ExecContext, MAX_TRANSFER_BYTES};
use crate::error::{CopyAbort, ScsiError};
use crate::reservation::{Access, Nexus, Reservations};

/// Most CSCD (target) descriptors in one parameter list.
pub const MAX_CSCD_DESCRIPTORS: u16 = 4;
/// Most segment descriptors in one parameter list.
pub const MAX_SEGMENT_DESCRIPTORS: u16 = 16;
/// Longest CSCD plus segment descriptor lists, in bytes: exactly the
/// maximum counts of the descriptors supported.
pub const MAX_DESCRIPTOR_LIST_LENGTH: u32 =
    MAX_CSCD_DESCRIPTORS as u32 * CSCD_LEN as u32 + MAX_SEGMENT_DESCRIPTORS as u32 * B2B_LEN as u32;
/// Largest parameter list accepted before it is received (the header,
/// the lists, and room for padding).
pub const MAX_PARAMETER_LIST_LENGTH: u32 = 64 * 1024;
/// Held copy results kept per logical unit (oldest dropped first).
const MAX_HELD: usize = 32;

/// Parameter list header length (SPC-4 6.3.3).
const HEADER_LEN: usize = 16;
/// Identification CSCD descriptor (SPC-4 6.3.6.2).
pub const IDENTIFICATION_CSCD: u8 = 0xE4;
const CSCD_LEN: usize = 32;
/// Block device to block device segment descriptor (SPC-4 6.3.7.5).
pub const BLOCK_TO_BLOCK: u8 = 0x02;
const B2B_LEN: usize = 28;
/// Longest designator an identification CSCD descriptor holds.
const MAX_DESIGNATOR_LEN: usize = 20;

/// EXTENDED COPY (LID1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExtendedCopy {
    pub param_len: u32,
}

/// The RECEIVE COPY RESULTS service actions supported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyResultsAction {
    CopyStatus = 0x00,
    OperatingParameters = 0x03,
}

/// RECEIVE COPY RESULTS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReceiveCopyResults {
    pub action: CopyResultsAction,
    pub list_id: u8,
    pub alloc_len: u32,
}

pub(crate) fn decode(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::ExtendedCopy(ExtendedCopy { param_len: c.be32(10) }))
}

pub(crate) fn decode_results(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let action = match c.bits(1, 0, 5) {
        0x00 => CopyResultsAction::CopyStatus,
        0x03 => CopyResultsAction::OperatingParameters,
        _ => return Err(ScsiError::field(1, 4)),
    };
    Ok(Command::ReceiveCopyResults(ReceiveCopyResults { action, list_id: c.u8(2), alloc_len: c.be32(10) }))
}

/// A logical unit as a copy source or destination: cheap to clone, shares
/// the disk's backend, device-wide state and reservations.
#[derive(Clone)]
pub struct CopyTarget {
    backend: Backend,
    block_size: u32,
    readonly: bool,
    state: Arc<DiskState>,
    reservations: Arc<Reservations>,
    /// Admits the copy's I/O to this unit when the command came to another
    /// (set by the core: [`CopyTargets::with_gates`]).
    gate: Option<Arc<dyn CopyGate>>,
}

/// How the target core admits a copy's I/O to one of its logical units
/// that is not the unit the EXTENDED COPY came to, as it admits that
/// unit's own commands (COMPARE AND WRITE atomicity, SBC-4 5.3; a paused
/// or removed unit). The copy holds the pass while one read or write runs,
/// and never holds two passes at once.
pub trait CopyGate: Send + Sync + std::fmt::Debug {
    /// Waits until the unit admits one I/O of the copy; an error aborts
    /// the copy (the unit is not reachable now).
    fn enter(&self) -> Pin<Box<dyn Future<Output = Result<CopyPass, ScsiError>> + '_>>;
}

/// A copy's admission to a unit ([`CopyGate::enter`]): dropping it leaves.
pub struct CopyPass(#[allow(dead_code)] Box<dyn std::any::Any>);

impl CopyPass {
    /// A pass that holds `guard` (whose drop leaves the unit's gate).
    pub fn new(guard: impl std::any::Any) -> CopyPass {
        CopyPass(Box::new(guard))
    }
}

impl std::fmt::Debug for CopyTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyTarget")
            .field("backend", &self.backend.kind_name())
            .field("block_size", &self.block_size)
            .field("num_blocks", &self.state.num_blocks.load(Ordering::Relaxed))
            .finish()
    }
}

/// Finds the logical units of the target by designator, for EXTENDED COPY.
/// The target core implements it (or uses [`CopyTargets`]) and passes it in
/// [`ExecContext::copy_resolver`].
pub trait CopyResolver: Send + Sync + std::fmt::Debug {
    /// The logical unit whose Device Identification VPD page holds this
    /// designation descriptor (4-byte header, then the designator; see
    /// [`Disk::copy_designator`]), or `None`.
    fn disk_by_designator(&self, desig: &[u8]) -> Option<CopyTarget>;
}

/// The LUNs of one target as a [`CopyResolver`]: built once when the LUN
/// set is made or changes, shared by `Arc` with every command's context.
#[derive(Clone, Debug, Default)]
pub struct CopyTargets {
    targets: Vec<(Vec<u8>, CopyTarget)>,
}

impl CopyTargets {
    /// The units, reached without a gate (tests, or a core whose units
    /// take no other command meanwhile).
    pub fn new<'a>(disks: impl IntoIterator<Item = &'a Disk>) -> CopyTargets {
        CopyTargets { targets: disks.into_iter().map(|d| (d.copy_designator(), d.copy_target())).collect() }
    }

    /// The units, each reached through its gate.
    pub fn with_gates<'a>(units: impl IntoIterator<Item = (&'a Disk, Arc<dyn CopyGate>)>) -> CopyTargets {
        let targets = units
            .into_iter()
            .map(|(d, gate)| (d.copy_designator(), CopyTarget { gate: Some(gate), ..d.copy_target() }))
            .collect();
        CopyTargets { targets }
    }
}

impl CopyResolver for CopyTargets {
    fn disk_by_designator(&self, desig: &[u8]) -> Option<CopyTarget> {
        let key = designator_key(desig)?;
        self.targets.iter().find(|(k, _)| designator_key(k).as_ref() == Some(&key)).map(|(_, t)| t.clone())
    }
}

/// A designation descriptor reduced to what identifies the unit: code set,
/// association, designator type and the designator (PROTOCOL IDENTIFIER
/// and PIV do not).
fn designator_key(d: &[u8]) -> Option<(u8, u8, Vec<u8>)> {
    let len = usize::from(*d.get(3)?);
    let id = d.get(4..4 + len)?;
    Some((d[0] & 0x0F, d[1] & 0x3F, id.to_vec()))
}

impl CopyTarget {
    /// Admits one I/O of the copy to this unit (at once if it has no gate:
    /// the command's own unit, which admitted the command itself), then
    /// checks the unit's state and, for another unit than the command's,
    /// its reservations for `nexus`.
    async fn admit(&self, write: bool, nexus: &Nexus) -> Result<Option<CopyPass>, ScsiError> {
        let pass = match &self.gate {
            Some(gate) => Some(gate.enter().await?),
            None => None,
        };
        self.check(write)?;
        if pass.is_some() {
            let access = if write { Access::Write } else { Access::Read };
            if self.reservations.check(access, nexus).is_err() {
                return Err(ScsiError::CopyAborted(CopyAbort::TargetNotReachable));
            }
        }
        Ok(pass)
    }

    /// Checks that the unit can take part: ready, not sanitizing, and, for
    /// a destination, not write protected.
    fn check(&self, write: bool) -> Result<(), ScsiError> {
        if self.state.sanitize.in_progress().is_some()
            || self.state.sanitize.failed()
            || !self.state.medium_present.load(Ordering::Relaxed)
        {
            return Err(ScsiError::CopyAborted(CopyAbort::TargetNotReachable));
        }
        if write && self.readonly {
            return Err(ScsiError::WriteProtected);
        }
        if write && self.state.swp.load(Ordering::Relaxed) {
            return Err(ScsiError::SoftwareWriteProtected);
        }
        Ok(())
    }

    /// Whether `bytes` from the block at `lba` lie on the medium.
    pub(crate) fn holds(&self, lba: u64, bytes: u64) -> bool {
        let blocks = bytes / u64::from(self.block_size);
        let num_blocks = self.state.num_blocks.load(Ordering::Acquire);
        lba.checked_add(blocks).is_some_and(|end| end <= num_blocks)
    }
}

/// A decoded CSCD descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Cscd {
    /// The designation descriptor (header and designator).
    designator: Vec<u8>,
    block_len: u32,
}

/// A decoded block-to-block segment descriptor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Segment {
    src: u16,
    dst: u16,
    /// NUMBER OF BLOCKS counts destination blocks (DC=1) or source blocks.
    dc: bool,
    blocks: u16,
    src_lba: u64,
    dst_lba: u64,
}

/// A decoded parameter list.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CopyList {
    list_id: u8,
    /// LIST ID USAGE 00b or 10b: the list identifier names the copy.
    has_id: bool,
    /// LIST ID USAGE 00b: hold the copy status for RECEIVE COPY RESULTS.
    hold: bool,
    cscds: Vec<Cscd>,
    segments: Vec<Segment>,
}

fn be16(d: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([d[i], d[i + 1]])
}

fn be32(d: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]])
}

fn be64(d: &[u8], i: usize) -> u64 {
    (u64::from(be32(d, i)) << 32) | u64::from(be32(d, i + 4))
}

/// Decodes the parameter list (SPC-4 6.3.3), in this order: lengths
/// against the data and the limits, descriptor counts, then each CSCD
/// and segment descriptor.
fn parse(data: &[u8]) -> Result<CopyList, ScsiError> {
    if data.len() < HEADER_LEN {
        return Err(ScsiError::ParameterListLengthError);
    }
    let list_id = data[0];
    let usage = (data[1] >> 3) & 0x03;
    match usage {
        0b01 => return Err(ScsiError::param(1, Some(4))),
        0b11 if list_id != 0 => return Err(ScsiError::param(0, None)),
        _ => {}
    }
    let cscd_len = usize::from(be16(data, 2));
    let seg_len = be32(data, 8) as usize;
    let inline_len = be32(data, 12);
    if cscd_len as u64 + seg_len as u64 > u64::from(MAX_DESCRIPTOR_LIST_LENGTH) {
        return Err(ScsiError::ParameterListLengthError);
    }
    if inline_len != 0 {
        return Err(ScsiError::param(12, None)); // MAXIMUM INLINE DATA LENGTH is 0
    }
    let end = HEADER_LEN + cscd_len + seg_len;
    if end > data.len() {
        return Err(ScsiError::ParameterListLengthError);
    }
    if cscd_len % CSCD_LEN != 0 {
        return Err(ScsiError::param(2, None));
    }
    if cscd_len / CSCD_LEN > usize::from(MAX_CSCD_DESCRIPTORS) {
        return Err(ScsiError::TooManyDescriptors { segments: false });
    }
    // Segment descriptors have their own lengths: find their starts.
    let mut starts = Vec::new();
    let mut pos = HEADER_LEN + cscd_len;
    while pos < end {
        if pos + 4 > end {
            return Err(ScsiError::ParameterListLengthError);
        }
        let len = 4 + usize::from(be16(data, pos + 2));
        if pos + len > end {
            return Err(ScsiError::ParameterListLengthError);
        }
        starts.push(pos);
        pos += len;
    }
    if starts.len() > usize::from(MAX_SEGMENT_DESCRIPTORS) {
        return Err(ScsiError::TooManyDescriptors { segments: true });
    }
    let cscds = (HEADER_LEN..HEADER_LEN + cscd_len)
        .step_by(CSCD_LEN)
        .map(|at| parse_cscd(data, at))
        .collect::<Result<_, _>>()?;
    let segments = starts.into_iter().map(|at| parse_segment(data, at)).collect::<Result<_, _>>()?;
    Ok(CopyList { list_id, has_id: usage != 0b11, hold: usage == 0b00, cscds, segments })
}

/// An identification CSCD descriptor (SPC-4 6.3.6.2) of a block device.
/// The LU ID TYPE and NUL bits of SPC-3 are obsolete since SPC-4 and
/// ignored, as SPC-4 asks.
fn parse_cscd(data: &[u8], at: usize) -> Result<Cscd, ScsiError> {
    let d = &data[at..at + CSCD_LEN];
    if d[0] != IDENTIFICATION_CSCD {
        return Err(ScsiError::UnsupportedDescriptorType { segment: false, byte: at });
    }
    if d[1] & 0x1F != 0 {
        return Err(ScsiError::param(at + 1, Some(4))); // PERIPHERAL DEVICE TYPE: block devices only
    }
    let len = usize::from(d[7]);
    if len > MAX_DESIGNATOR_LEN {
        return Err(ScsiError::param(at + 7, None));
    }
    Ok(Cscd { designator: d[4..8 + len].to_vec(), block_len: u32::from_be_bytes([0, d[29], d[30], d[31]]) })
}

/// A block device to block device segment descriptor (SPC-4 6.3.7.5).
fn parse_segment(data: &[u8], at: usize) -> Result<Segment, ScsiError> {
    if data[at] != BLOCK_TO_BLOCK {
        return Err(ScsiError::UnsupportedDescriptorType { segment: true, byte: at });
    }
    if usize::from(be16(data, at + 2)) != B2B_LEN - 4 {
        return Err(ScsiError::param(at + 2, None));
    }
    let d = &data[at..at + B2B_LEN];
    if d[1] & 0x01 != 0 {
        return Err(ScsiError::param(at + 1, Some(0))); // CAT: no residue handling
    }
    Ok(Segment {
        src: be16(d, 4),
        dst: be16(d, 6),
        dc: d[1] & 0x02 != 0,
        blocks: be16(d, 10),
        src_lba: be64(d, 12),
        dst_lba: be64(d, 20),
    })
}

/// Where a copy with a list identifier stands (COPY MANAGER STATUS, SPC-4
/// 6.18.3, table 353).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CopyState {
    InProgress = 0x00,
    Completed = 0x01,
    Failed = 0x02,
}

/// The status of a copy: in progress, or finished and held for RECEIVE
/// COPY RESULTS.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Held {
    nexus: Nexus,
    list_id: u8,
    state: CopyState,
    segments: u16,
    bytes: u64,
}

/// Length of COPY STATUS data: once an allocation length this large has
/// returned it, it has all been transferred.
const COPY_STATUS_LEN: u32 = 12;

/// Copies in progress and copy results held, oldest first.
#[derive(Debug, Default)]
pub(crate) struct HeldResults(Mutex<VecDeque<Held>>);

impl HeldResults {
    fn with<R>(&self, f: impl FnOnce(&mut VecDeque<Held>) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut g)
    }

    /// A copy with this list identifier begins on `nexus`: refused while one
    /// is in progress; otherwise what was held for it is discarded and the
    /// copy is listed in progress until [`Tracked`] ends it.
    fn begin(&self, nexus: &Nexus, list_id: u8) -> Result<Tracked<'_>, ScsiError> {
        self.with(|q| {
            let same = |h: &Held| &h.nexus == nexus && h.list_id == list_id;
            if q.iter().any(|h| same(h) && h.state == CopyState::InProgress) {
                return Err(ScsiError::OperationInProgress);
            }
            q.retain(|h| !same(h));
            if q.len() >= MAX_HELD {
                // Room for it: the oldest held result goes (never a copy in progress).
                if let Some(i) = q.iter().position(|h| h.state != CopyState::InProgress) {
                    q.remove(i);
                }
            }
            let state = CopyState::InProgress;
            q.push_back(Held { nexus: nexus.clone(), list_id, state, segments: 0, bytes: 0 });
            Ok(())
        })?;
        Ok(Tracked { held: self, nexus: nexus.clone(), list_id, done: (0, 0), ended: false })
    }

    fn update(&self, nexus: &Nexus, list_id: u8, f: impl FnOnce(&mut Held)) {
        self.with(|q| {
            if let Some(h) = q.iter_mut().find(|h| &h.nexus == nexus && h.list_id == list_id) {
                f(h);
            }
        });
    }

    fn remove(&self, nexus: &Nexus, list_id: u8) {
        self.with(|q| q.retain(|h| !(&h.nexus == nexus && h.list_id == list_id)));
    }

    /// The status COPY STATUS returns with `alloc_len`: a finished copy's
    /// is discarded once returned whole, or when none of it is asked for.
    fn copy_status(&self, nexus: &Nexus, list_id: u8, alloc_len: u32) -> Option<Held> {
        self.with(|q| {
            let i = q.iter().position(|h| &h.nexus == nexus && h.list_id == list_id)?;
            let h = q[i].clone();
            if h.state != CopyState::InProgress && (alloc_len == 0 || alloc_len >= COPY_STATUS_LEN) {
                q.remove(i);
            }
            Some(h)
        })
    }

    /// I_T nexus loss: its held results go (SPC-4 6.18.1).
    pub(crate) fn nexus_lost(&self, nexus: &Nexus) {
        self.with(|q| q.retain(|h| &h.nexus != nexus || h.state == CopyState::InProgress));
    }

    /// Logical unit reset or hard reset: every held result goes (the
    /// copies themselves were aborted and waited for by the reset).
    fn discard_all(&self) {
        self.with(|q| q.retain(|h| h.state == CopyState::InProgress));
    }
}

/// A copy listed in progress: counts what it did; ends it held (or not)
/// with [`Tracked::end`], or unlisted if dropped before (the command was
/// dropped).
struct Tracked<'a> {
    held: &'a HeldResults,
    nexus: Nexus,
    list_id: u8,
    /// Segments and bytes done.
    done: (u16, u64),
    ended: bool,
}

impl Tracked<'_> {
    fn segment_done(&mut self, bytes: u64) {
        self.done.0 += 1;
        self.done.1 += bytes;
        let done = self.done;
        self.held.update(&self.nexus, self.list_id, |h| (h.segments, h.bytes) = done);
    }

    fn end(mut self, ok: bool, hold: bool) {
        self.ended = true;
        if hold {
            let state = if ok { CopyState::Completed } else { CopyState::Failed };
            self.held.update(&self.nexus, self.list_id, |h| h.state = state);
        } else {
            self.held.remove(&self.nexus, self.list_id);
        }
    }
}

impl Drop for Tracked<'_> {
    fn drop(&mut self) {
        if !self.ended {
            self.held.remove(&self.nexus, self.list_id);
        }
    }
}

impl Disk {
    /// This unit as a copy source or destination.
    pub fn copy_target(&self) -> CopyTarget {
        CopyTarget {
            backend: self.backend().clone(),
            block_size: self.block_size(),
            readonly: self.config().readonly,
            state: Arc::clone(&self.state),
            reservations: Arc::clone(&self.reservations),
            gate: None,
        }
    }

    /// The designation descriptor that names this unit in a CSCD
    /// descriptor: the NAA designator of VPD page 83h, header included.
    pub fn copy_designator(&self) -> Vec<u8> {
        crate::vpd::naa_designator(self)
    }

    pub(crate) fn validate_extended_copy(&self, x: &ExtendedCopy) -> Result<(), ScsiError> {
        if x.param_len > MAX_PARAMETER_LIST_LENGTH {
            return Err(ScsiError::ParameterListLengthError);
        }
        Ok(())
    }

    /// EXTENDED COPY: decodes the whole list, then runs its segments in
    /// order; the status is held when LIST ID USAGE asks for it.
    pub(crate) async fn extended_copy(
        &self,
        x: &ExtendedCopy,
        data: Bytes,
        ctx: &ExecContext,
    ) -> Result<Vec<u8>, ScsiError> {
        let len = x.param_len as usize;
        if len == 0 {
            return Ok(Vec::new());
        }
        let data = data.get(..len).ok_or(ScsiError::ParameterListLengthError)?;
        let list = parse(data)?;
        let nexus = ctx.nexus.clone().unwrap_or_else(Nexus::anonymous);
        // LIST ID USAGE 11b names no list: nothing to track or hold.
        let mut tracked = match list.has_id {
            true => Some(self.copy_results.begin(&nexus, list.list_id)?),
            false => None,
        };
        let result = self.run_segments(&list, ctx, tracked.as_mut()).await;
        if let Some(t) = tracked {
            t.end(result.is_ok(), list.hold);
        }
        result.map(|()| Vec::new())
    }

    async fn run_segments(
        &self,
        list: &CopyList,
        ctx: &ExecContext,
        mut tracked: Option<&mut Tracked<'_>>,
    ) -> Result<(), ScsiError> {
        for seg in &list.segments {
            let src = self.resolve_cscd(list, seg.src, ctx)?;
            let dst = self.resolve_cscd(list, seg.dst, ctx)?;
            let bytes = copy_segment(seg, &src, &dst, reservation_nexus(ctx)).await?;
            if let Some(t) = tracked.as_deref_mut() {
                t.segment_done(bytes);
            }
        }
        Ok(())
    }

    /// The unit a segment names by CSCD descriptor index.
    fn resolve_cscd(&self, list: &CopyList, index: u16, ctx: &ExecContext) -> Result<CopyTarget, ScsiError> {
        let unreachable = ScsiError::CopyAborted(CopyAbort::Unreachable);
        let cscd = list.cscds.get(usize::from(index)).ok_or(unreachable.clone())?;
        let target = if designator_key(&cscd.designator) == designator_key(&self.copy_designator()) {
            self.copy_target()
        } else {
            let resolver = ctx.copy_resolver.as_ref().ok_or(unreachable.clone())?;
            resolver.disk_by_designator(&cscd.designator).ok_or(unreachable)?
        };
        if target.block_size != cscd.block_len {
            return Err(ScsiError::CopyAborted(CopyAbort::IncorrectDeviceType));
        }
        Ok(target)
    }

    /// RECEIVE COPY RESULTS (SPC-4 6.18).
    pub(crate) fn receive_copy_results(&self, r: &ReceiveCopyResults, ctx: &ExecContext) -> Result<Vec<u8>, ScsiError> {
        let d = match r.action {
            CopyResultsAction::CopyStatus => {
                let nexus = ctx.nexus.clone().unwrap_or_else(Nexus::anonymous);
                let held =
                    self.copy_results.copy_status(&nexus, r.list_id, r.alloc_len).ok_or(ScsiError::field_byte(2))?;
                copy_status(&held)
            }
            CopyResultsAction::OperatingParameters => operating_parameters(self.block_size()),
        };
        Ok(truncate(d, r.alloc_len as usize))
    }

    /// I_T nexus loss for the copy manager: held results of that nexus go.
    pub(crate) fn copy_nexus_lost(&self, nexus: &Nexus) {
        self.copy_results.nexus_lost(nexus);
    }

    /// Logical unit reset or hard reset for the copy manager: every copy
    /// result held for RECEIVE COPY RESULTS is discarded. The core calls
    /// this once the reset has aborted (and waited for) the unit's commands.
    pub fn discard_copy_results(&self) {
        self.copy_results.discard_all();
    }
}

/// The I_T nexus the copy acts for at another unit.
fn reservation_nexus(ctx: &ExecContext) -> &Nexus {
    crate::reservation::nexus_of(ctx)
}

/// Copies one segment; returns the bytes copied. Each chunk is read under
/// the source's admission, then written under the destination's.
async fn copy_segment(seg: &Segment, src: &CopyTarget, dst: &CopyTarget, nexus: &Nexus) -> Result<u64, ScsiError> {
    let counted = if seg.dc { dst.block_size } else { src.block_size };
    let bytes = u64::from(seg.blocks) * u64::from(counted);
    if bytes % u64::from(src.block_size) != 0 || bytes % u64::from(dst.block_size) != 0 {
        return Err(ScsiError::CopyAborted(CopyAbort::IncorrectDeviceType));
    }
    if !src.holds(seg.src_lba, bytes) || !dst.holds(seg.dst_lba, bytes) {
        return Err(ScsiError::CopyAborted(CopyAbort::TargetNotReachable));
    }
    src.check(false)?;
    dst.check(true)?;
    let src_off = seg.src_lba.saturating_mul(u64::from(src.block_size));
    let dst_off = seg.dst_lba.saturating_mul(u64::from(dst.block_size));
    let fua = !dst.state.wce.load(Ordering::Relaxed);
    // Chunks go backwards when the destination starts past the source, so
    // an overlapping copy within one unit reads each block before it is
    // overwritten (as memmove does).
    let chunk = MAX_TRANSFER_BYTES;
    let n = bytes.div_ceil(chunk);
    for i in 0..n {
        let k = if dst_off > src_off { n - 1 - i } else { i };
        let at = k * chunk;
        let len = chunk.min(bytes - at);
        let buf = {
            let _pass = src.admit(false, nexus).await?;
            src.backend.read(src_off + at, len as usize).await?
        };
        let _pass = dst.admit(true, nexus).await?;
        dst.backend.write(dst_off + at, buf, fua).await?;
    }
    Ok(bytes)
}

/// COPY STATUS data (SPC-4 6.18.2).
fn copy_status(h: &Held) -> Vec<u8> {
    let mut d = vec![0u8; COPY_STATUS_LEN as usize];
    d[0..4].copy_from_slice(&(COPY_STATUS_LEN - 4).to_be_bytes());
    d[4] = h.state as u8; // HDD 0: no held data was discarded
    d[5..7].copy_from_slice(&h.segments.to_be_bytes());
    // TRANSFER COUNT in bytes, or in KiB when bytes do not fit.
    match u32::try_from(h.bytes) {
        Ok(b) => d[8..12].copy_from_slice(&b.to_be_bytes()),
        Err(_) => {
            d[7] = 0x01;
            d[8..12].copy_from_slice(&u32::try_from(h.bytes >> 10).unwrap_or(u32::MAX).to_be_bytes());
        }
    }
    d
}

/// The descriptor type codes implemented, ascending.
pub(crate) const IMPLEMENTED_DESCRIPTORS: [u8; 2] = [BLOCK_TO_BLOCK, IDENTIFICATION_CSCD];

/// Largest segment, in bytes (MAXIMUM SEGMENT LENGTH): a block-to-block
/// segment counts up to 65535 blocks.
pub(crate) fn max_segment_bytes(block_size: u32) -> u32 {
    0xFFFF_u32.saturating_mul(block_size)
}

/// OPERATING PARAMETERS data (SPC-4 6.18.4).
fn operating_parameters(block_size: u32) -> Vec<u8> {
    let mut d = vec![0u8; 44];
    d[4] = 0x01; // SNLID: LIST ID USAGE 11b is supported
    d[8..10].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    d[10..12].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    d[12..16].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    d[16..20].copy_from_slice(&max_segment_bytes(block_size).to_be_bytes());
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE
    // TRANSFER SIZE: 0 (no inline data, no held data, no streams).
    d[34..36].copy_from_slice(&(MAX_HELD as u16).to_be_bytes()); // TOTAL CONCURRENT COPIES
    d[36] = MAX_HELD as u8; // MAXIMUM CONCURRENT COPIES
    d[43] = IMPLEMENTED_DESCRIPTORS.len() as u8;
    d.extend_from_slice(&IMPLEMENTED_DESCRIPTORS);
    let avail = (d.len() - 4) as u32;
    d[0..4].copy_from_slice(&avail.to_be_bytes());
    d
}

#[cfg(test)]
mod tests;

//! Devices (logical units).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use lunar_block::{BlockError, ErrorKind};
use lunar_scsi::{Disk, Nexus, ScsiError, Sense, SideEffect};
use tokio::sync::Notify;

use crate::background::Background;
use crate::event::Event;
use crate::gate::Gate;
use crate::policy::{ErrorPolicies, ErrorPolicy};
use crate::queue::Queue;
use crate::stats::DeviceStats;
use crate::target::Target;
use crate::ua::UnitAttentions;

/// A logical unit: an emulated disk, its queues and its life cycle.
pub struct Device {
    lun: u64,
    disk: Disk,
    read_policy: AtomicU8,
    write_policy: AtomicU8,
    /// Queues of this device. Control plane only: read and changed on the
    /// main loop, never on the I/O path.
    queues: Mutex<Vec<Arc<Queue>>>,
    /// The unit attentions of each I_T nexus with an open queue here (SAM-5
    /// 5.14: per I_T_L nexus), with its number of open queues, which all
    /// share the set. Control plane only: changed when a queue opens or
    /// closes (queues of the anonymous nexus have sets of their own).
    nexuses: Mutex<Vec<NexusUnitAttentions>>,
    removed: AtomicBool,
    /// Async iterations scheduled and not finished; drain waits for them.
    iterations: AtomicUsize,
    iterations_done: Notify,
    target: Weak<Target>,
    drop_hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    reservation_file: OnceLock<PathBuf>,
    /// Commands, bytes, errors and latency of the device's queues.
    stats: DeviceStats,
    /// Why the device is paused ([`PAUSE_OPERATOR`] | [`PAUSE_IO_ERROR`] |
    /// [`PAUSE_RESIZE`]; 0: not paused). Read by every start on the I/O
    /// path (one atomic load); set by the control plane, and by an I/O
    /// thread under the `stop`/`enospc` error policy.
    pause: AtomicU8,
    /// The I/O thread the device's queues are placed on whatever thread
    /// opens them (set by [`crate::Target::move_device`]; 0: none, each
    /// queue on the thread that asks for it). Control plane only: read when
    /// a queue opens.
    pinned: AtomicUsize,
    /// The errno and direction of the I/O error that paused the device.
    pause_errno: AtomicI32,
    pause_write: AtomicBool,
    /// The errno of the backend error that took the device offline (its
    /// storage is gone for this process: see [`Device::went_offline`]); 0:
    /// online. Read by every start on the I/O path (one atomic load).
    offline: AtomicI32,
    /// Makes COMPARE AND WRITE atomic against every other command of the device.
    gate: Gate,
    /// Operations that outlive their command (a sanitize operation).
    background: Background,
}

/// The unit attentions of one I_T nexus on a device, and its open queues.
struct NexusUnitAttentions {
    nexus: Nexus,
    queues: usize,
    set: Arc<UnitAttentions>,
}

/// Paused by the operator (`Target::stop_device`).
pub(crate) const PAUSE_OPERATOR: u8 = 1;
/// Paused by the `stop`/`enospc` error policy.
pub(crate) const PAUSE_IO_ERROR: u8 = 2;
/// Quiesced for a resize (`Target::resize_device`), for its duration only.
pub(crate) const PAUSE_RESIZE: u8 = 4;
/// Quiesced while its backend is reopened (`Target::reopen_device`).
pub(crate) const PAUSE_REOPEN: u8 = 8;

/// Why a device is paused (several reasons may hold at once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Paused {
    /// By the operator (`stop` of the LUN); only `cont` of the LUN ends it.
    pub operator: bool,
    /// By the `stop`/`enospc` error policy: the first error since the last
    /// resume. `cont` of the LUN or of the target ends it.
    pub io_error: Option<IoErrorPause>,
    /// Quiesced while being resized.
    pub resizing: bool,
    /// Quiesced while its backend is reopened.
    pub reopening: bool,
}

/// The I/O error that paused a device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoErrorPause {
    pub errno: i32,
    pub kind: ErrorKind,
    pub write: bool,
}

/// Writes a small file so that a crash leaves the old or the new content:
/// temporary file, fsync, rename, fsync of the directory.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn policy_to_u8(p: ErrorPolicy) -> u8 {
    match p {
        ErrorPolicy::Report => 0,
        ErrorPolicy::Ignore => 1,
        ErrorPolicy::Stop => 2,
        ErrorPolicy::Enospc => 3,
    }
}

fn policy_from_u8(v: u8) -> ErrorPolicy {
    match v {
        1 => ErrorPolicy::Ignore,
        2 => ErrorPolicy::Stop,
        3 => ErrorPolicy::Enospc,
        _ => ErrorPolicy::Report,
    }
}

impl Device {
    /// The I/O thread the device's queues go to when they open, if it was
    /// moved to one ([`crate::Target::move_device`]).
    pub fn pinned_thread(&self) -> Option<usize> {
        match self.pinned.load(Ordering::Acquire) {
            0 => None,
            t => Some(t),
        }
    }

    pub(crate) fn pin(&self, io_thread: usize) {
        self.pinned.store(io_thread, Ordering::Release);
    }

    pub(crate) fn new(lun: u64, disk: Disk, policies: ErrorPolicies, target: Weak<Target>) -> Arc<Device> {
        Arc::new(Device {
            lun,
            disk,
            read_policy: AtomicU8::new(policy_to_u8(policies.read)),
            write_policy: AtomicU8::new(policy_to_u8(policies.write)),
            queues: Mutex::new(Vec::new()),
            nexuses: Mutex::new(Vec::new()),
            removed: AtomicBool::new(false),
            iterations: AtomicUsize::new(0),
            iterations_done: Notify::new(),
            target,
            drop_hook: Mutex::new(None),
            reservation_file: OnceLock::new(),
            stats: DeviceStats::default(),
            pause: AtomicU8::new(0),
            pinned: AtomicUsize::new(0),
            pause_errno: AtomicI32::new(0),
            offline: AtomicI32::new(0),
            pause_write: AtomicBool::new(false),
            gate: Gate::default(),
            background: Background::default(),
        })
    }

    pub fn lun(&self) -> u64 {
        self.lun
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// The statistics of the device (summed over its queues, open and closed).
    pub fn stats(&self) -> &DeviceStats {
        &self.stats
    }

    pub fn policies(&self) -> ErrorPolicies {
        ErrorPolicies {
            read: policy_from_u8(self.read_policy.load(Ordering::Relaxed)),
            write: policy_from_u8(self.write_policy.load(Ordering::Relaxed)),
        }
    }

    pub fn set_policies(&self, p: ErrorPolicies) {
        self.read_policy.store(policy_to_u8(p.read), Ordering::Relaxed);
        self.write_policy.store(policy_to_u8(p.write), Ordering::Relaxed);
    }

    pub(crate) fn policy_for(&self, write: bool) -> ErrorPolicy {
        if write {
            policy_from_u8(self.write_policy.load(Ordering::Relaxed))
        } else {
            policy_from_u8(self.read_policy.load(Ordering::Relaxed))
        }
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }

    pub(crate) fn mark_removed(&self) {
        self.removed.store(true, Ordering::SeqCst);
        self.background.wake();
    }

    /// [`Device::is_removed`], ordered with the background operations' steps.
    pub(crate) fn is_removed_seqcst(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// [`Device::is_paused`], ordered with the background operations' steps.
    pub(crate) fn is_paused_seqcst(&self) -> bool {
        self.pause.load(Ordering::SeqCst) != 0
    }

    /// The operations of this device that outlive their command.
    pub(crate) fn background(&self) -> &Background {
        &self.background
    }

    /// Number of operations of this device running detached from their
    /// command (a sanitize operation), for status and tests.
    pub fn background_operations(&self) -> usize {
        self.background.alive()
    }

    /// The queues of this device (control plane).
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn add_queue(&self, q: Arc<Queue>) {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).push(q);
    }

    /// Forgets a queue (closing); the last queue of an I_T nexus takes the
    /// nexus's unit attentions with it.
    pub(crate) fn remove_queue(&self, id: u64) {
        let removed = {
            let mut queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
            let at = queues.iter().position(|q| q.id() == id);
            at.map(|at| queues.remove(at))
        };
        if let Some(q) = removed {
            self.release_unit_attentions(q.nexus());
        }
    }

    pub(crate) fn clear_queues(&self) -> Vec<Arc<Queue>> {
        self.nexuses.lock().unwrap_or_else(|e| e.into_inner()).clear();
        std::mem::take(&mut *self.queues.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The unit attentions of I_T nexus `nexus` on this LU, for a queue
    /// being opened: shared with the nexus's other open queues, a new set if
    /// it has none. The anonymous nexus (`None`) cannot tell its initiators
    /// apart: each of its queues gets a set of its own. Control plane; a
    /// queue given a set is counted until [`Device::release_unit_attentions`].
    pub(crate) fn share_unit_attentions(&self, nexus: Option<&Nexus>) -> Arc<UnitAttentions> {
        let Some(nexus) = nexus else { return UnitAttentions::new() };
        let mut nexuses = self.nexuses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nexuses.iter_mut().find(|n| n.nexus == *nexus) {
            n.queues += 1;
            return n.set.clone();
        }
        let set = UnitAttentions::new();
        nexuses.push(NexusUnitAttentions { nexus: nexus.clone(), queues: 1, set: set.clone() });
        set
    }

    /// A queue of `nexus` closed (or failed to open): when it was the
    /// nexus's last, its pending unit attentions end with it (a queue opened
    /// later for the same nexus starts with none).
    pub(crate) fn release_unit_attentions(&self, nexus: Option<&Nexus>) {
        let Some(nexus) = nexus else { return };
        let mut nexuses = self.nexuses.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(at) = nexuses.iter().position(|n| n.nexus == *nexus) {
            nexuses[at].queues -= 1;
            if nexuses[at].queues == 0 {
                nexuses.remove(at);
            }
        }
    }

    /// Establishes the unit attention `sense` for every I_T nexus with an
    /// open queue of this LU that `to` selects: once per nexus, however many
    /// queues (threads) it has here, since they share one set. Control plane
    /// and reservation side effects (rare paths: takes the sets' locks).
    pub(crate) fn raise_unit_attention(&self, sense: &Sense, to: impl Fn(&Queue) -> bool) {
        let mut raised: Vec<Arc<UnitAttentions>> = Vec::new();
        for q in self.queues() {
            if to(&q) && !raised.iter().any(|s| Arc::ptr_eq(s, q.unit_attentions())) {
                q.unit_attentions().push(sense.clone());
                raised.push(q.unit_attentions().clone());
            }
        }
    }

    /// Makes the disk's ALUA state changes (SET TARGET PORT GROUPS, the
    /// control plane, a cluster) raise ASYMMETRIC ACCESS STATE CHANGED for
    /// every I_T nexus of this LU in this process, except the one whose SET
    /// TARGET PORT GROUPS caused it (SPC-5 5.16.2.5), and emit
    /// [`Event::AluaStateChanged`]. The observer holds the device weakly.
    pub(crate) fn observe_alua(self: &Arc<Device>) {
        let Some(alua) = self.disk.alua() else { return };
        let me = Arc::downgrade(self);
        alua.set_observer(move |change| {
            let Some(dev) = me.upgrade() else { return };
            let sense = lunar_scsi::sense::ASYMMETRIC_ACCESS_STATE_CHANGED.sense();
            match &change.cause {
                Some(cause) => dev.raise_unit_attention(&sense, |q| !q.is_nexus(cause)),
                None => dev.raise_unit_attention(&sense, |_| true),
            }
            let changes = change
                .after
                .iter()
                .filter_map(|g| {
                    let before = change.before.iter().find(|b| b.id == g.id)?;
                    (before.state != g.state).then_some((g.id, before.state, g.state))
                })
                .collect();
            if let (Some(t), Some(alua)) = (dev.target.upgrade(), dev.disk.alua()) {
                t.emit(Event::AluaStateChanged {
                    lun: dev.lun,
                    changes,
                    local_group: alua.local_group(),
                    local_state: alua.local_state(),
                    explicit: change.cause.is_some(),
                });
            }
        });
    }

    /// Test hook: runs once when the device is freed.
    pub fn set_drop_hook(&self, f: impl FnOnce() + Send + 'static) {
        *self.drop_hook.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    pub(crate) fn iteration_started(&self) {
        self.iterations.fetch_add(1, Ordering::AcqRel);
    }

    pub(crate) fn iteration_finished(&self) {
        if self.iterations.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.iterations_done.notify_waiters();
        }
    }

    /// Number of async iterations scheduled and not finished.
    pub fn pending_iterations(&self) -> usize {
        self.iterations.load(Ordering::Acquire)
    }

    /// Waits until no async iteration of this device is pending.
    pub(crate) async fn iterations_drained(&self) {
        loop {
            let notified = self.iterations_done.notified();
            if self.iterations.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }

    /// The LUNs of the target, for REPORT LUNS (rare path: read under the
    /// control-plane lock).
    /// The target this device belongs to, while it lives.
    pub fn target(&self) -> Option<Arc<Target>> {
        self.target.upgrade()
    }

    pub(crate) fn luns(&self) -> Vec<u64> {
        self.target.upgrade().map(|t| t.luns()).unwrap_or_default()
    }

    /// The logical units of the target as EXTENDED COPY sources and
    /// destinations, each reached through its [`DeviceCopyGate`] (rare
    /// path: built per EXTENDED COPY, under the control-plane lock, like
    /// REPORT LUNS).
    pub(crate) fn copy_targets(&self) -> Option<Arc<lunar_scsi::CopyTargets>> {
        let target = self.target.upgrade()?;
        let devices = target.devices();
        let units =
            devices.iter().map(|d| (d.disk(), Arc::new(DeviceCopyGate(d.clone())) as Arc<dyn lunar_scsi::CopyGate>));
        Some(Arc::new(lunar_scsi::CopyTargets::with_gates(units)))
    }

    /// Where reservations persist (APTPL), if anywhere.
    pub fn set_reservation_file(&self, path: PathBuf) {
        let _ = self.reservation_file.set(path);
    }

    /// Carries out what a command asked beyond its own completion (SPC-5
    /// 5.13: unit attentions for other nexuses, PREEMPT AND ABORT, APTPL),
    /// before the command completes. Runs on the command's thread; unit
    /// attentions go straight into the nexuses' shared sets, aborts to the
    /// other queues of the device through their jobs (a rare path:
    /// reservation commands only).
    pub(crate) fn apply_effects(&self, from: &Arc<Queue>, effects: Vec<SideEffect>) -> Result<(), ScsiError> {
        for e in effects {
            match e {
                SideEffect::UnitAttention { nexus, sense } => {
                    self.raise_unit_attention(&sense, |q| q.is_nexus(&nexus));
                }
                SideEffect::UnitAttentionOthers { except, sense } => {
                    self.raise_unit_attention(&sense, |q| !q.is_nexus(&except));
                }
                SideEffect::AbortTasks { nexus } => {
                    for q in self.queues() {
                        if q.id() != from.id() && q.is_nexus(&nexus) {
                            q.cancel_where(|_| true);
                        }
                    }
                }
                SideEffect::SaveReservations => {
                    if let Some(path) = self.reservation_file.get() {
                        if let Err(e) = write_atomically(path, &self.disk.reservation_state_bytes()) {
                            tracing::error!(lun = self.lun, "cannot save reservations to {}: {e}", path.display());
                            return Err(ScsiError::Sense(lunar_scsi::sense::INTERNAL_TARGET_FAILURE.sense()));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Whether new commands of this device are held (I/O path: one load).
    pub fn is_paused(&self) -> bool {
        self.pause.load(Ordering::Acquire) != 0
    }

    /// Why the device is paused, or `None` if it is not.
    pub fn paused(&self) -> Option<Paused> {
        let bits = self.pause.load(Ordering::Acquire);
        if bits == 0 {
            return None;
        }
        let io_error = (bits & PAUSE_IO_ERROR != 0).then(|| {
            let errno = self.pause_errno.load(Ordering::Acquire);
            IoErrorPause {
                errno,
                kind: BlockError::from_errno(errno, "", 0, 0).kind,
                write: self.pause_write.load(Ordering::Acquire),
            }
        });
        Some(Paused {
            operator: bits & PAUSE_OPERATOR != 0,
            io_error,
            resizing: bits & PAUSE_RESIZE != 0,
            reopening: bits & PAUSE_REOPEN != 0,
        })
    }

    /// Sets pause reasons; returns the bits set before. (Sequentially
    /// consistent: a background operation checks the bits between its
    /// steps, see [`crate::background`].)
    pub(crate) fn pause(&self, bits: u8) -> u8 {
        self.pause.fetch_or(bits, Ordering::SeqCst)
    }

    /// Clears pause reasons; returns the bits set before. Background
    /// operations waiting for the resume go on.
    pub(crate) fn unpause(&self, bits: u8) -> u8 {
        let before = self.pause.fetch_and(!bits, Ordering::SeqCst);
        self.background.wake();
        before
    }

    /// The errno that took the device offline, or `None` while it is online.
    pub fn offline(&self) -> Option<i32> {
        match self.offline.load(Ordering::Acquire) {
            0 => None,
            errno => Some(errno),
        }
    }

    /// The backend failed with [`ErrorKind::Offline`] (on an I/O thread):
    /// its storage is gone for this process and retrying cannot help (a
    /// blocklisted RBD client stays fenced). The device answers NOT READY to
    /// the commands that need the medium until [`Target::reopen_device`];
    /// the first such error of an outage raises an event.
    pub(crate) fn went_offline(&self, e: &BlockError) {
        // 0 means online: an errno-less offline error (none is made so) counts as EIO.
        let errno = if e.errno == 0 { 5 } else { e.errno };
        if self.offline.compare_exchange(0, errno, Ordering::AcqRel, Ordering::Acquire).is_err() {
            return;
        }
        tracing::error!(lun = self.lun, errno, "the LUN's storage is gone for this process: LUN offline ({e})");
        if let Some(t) = self.target.upgrade() {
            t.emit(Event::DeviceOffline { lun: self.lun, errno });
        }
    }

    /// Back online (the control plane, after reopening the backend); returns
    /// whether it was offline.
    pub(crate) fn back_online(&self) -> bool {
        self.offline.swap(0, Ordering::AcqRel) != 0
    }

    /// A request was parked under the `stop`/`enospc` policy (on its I/O
    /// thread): the device pauses (new commands are held, other devices go
    /// on) and the first such error since the last resume raises an event.
    pub(crate) fn paused_on_error(&self, e: &BlockError, write: bool) {
        if self.pause.load(Ordering::Acquire) & PAUSE_IO_ERROR != 0 {
            return;
        }
        // The details first, so whoever sees the bit sees them.
        self.pause_errno.store(e.errno, Ordering::Release);
        self.pause_write.store(write, Ordering::Release);
        if self.pause(PAUSE_IO_ERROR) & PAUSE_IO_ERROR != 0 {
            return;
        }
        tracing::warn!(lun = self.lun, errno = e.errno, write, "I/O error: pausing the LUN ({e})");
        if let Some(t) = self.target.upgrade() {
            t.emit(Event::PausedOnIoError { lun: self.lun, errno: e.errno, kind: e.kind, write });
        }
    }
}

/// Admits the I/O of an EXTENDED COPY sent to another unit to this device
/// as the device admits its own commands: through its gate (COMPARE AND
/// WRITE atomicity), and not while it is paused or removed, which aborts
/// the copy (its drain for a pause or a resize waits for the I/O inside).
pub(crate) struct DeviceCopyGate(Arc<Device>);

impl std::fmt::Debug for DeviceCopyGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceCopyGate(lun {})", self.0.lun)
    }
}

impl lunar_scsi::CopyGate for DeviceCopyGate {
    fn enter(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<lunar_scsi::CopyPass, ScsiError>> + '_>> {
        Box::pin(async move {
            let pass = Gate::foreign(&self.0).await;
            if self.0.is_paused_seqcst() || self.0.is_removed_seqcst() {
                return Err(ScsiError::CopyAborted(lunar_scsi::CopyAbort::TargetNotReachable));
            }
            Ok(lunar_scsi::CopyPass::new(pass))
        })
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(f) = self.drop_hook.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lunar_block::Backend;
    use lunar_scsi::DiskConfig;

    #[test]
    fn pause_reasons_add_up_and_the_first_error_is_kept() {
        let d =
            Device::new(3, Disk::new(DiskConfig::default(), Backend::mem(4096)), ErrorPolicies::default(), Weak::new());
        assert!(!d.is_paused() && d.paused().is_none());
        assert_eq!(d.pause(PAUSE_OPERATOR), 0);
        d.paused_on_error(&BlockError::from_errno(libc::ENOSPC, "write", 0, 512), true);
        d.paused_on_error(&BlockError::from_errno(libc::EIO, "read", 0, 512), false);
        let p = d.paused().unwrap();
        assert!(p.operator && !p.resizing);
        assert_eq!(p.io_error, Some(IoErrorPause { errno: libc::ENOSPC, kind: ErrorKind::NoSpace, write: true }));
        // Resuming the operator's pause leaves the error's.
        assert_eq!(d.unpause(PAUSE_OPERATOR) & PAUSE_OPERATOR, PAUSE_OPERATOR);
        assert!(d.is_paused());
        d.unpause(PAUSE_IO_ERROR);
        assert!(d.paused().is_none());
        // A new error after the resume is recorded afresh.
        d.paused_on_error(&BlockError::from_errno(libc::EIO, "read", 0, 512), false);
        assert_eq!(
            d.paused().unwrap().io_error,
            Some(IoErrorPause { errno: libc::EIO, kind: ErrorKind::Io, write: false })
        );
    }

    #[test]
    fn the_queues_of_a_nexus_share_its_unit_attentions_until_the_last_closes() {
        let d =
            Device::new(0, Disk::new(DiskConfig::default(), Backend::mem(4096)), ErrorPolicies::default(), Weak::new());
        let (a, b) = (Nexus::new("a,i,0x1", 1), Nexus::new("b,i,0x1", 1));
        let a1 = d.share_unit_attentions(Some(&a));
        let a2 = d.share_unit_attentions(Some(&a));
        assert!(Arc::ptr_eq(&a1, &a2), "one set per I_T nexus");
        assert!(!Arc::ptr_eq(&a1, &d.share_unit_attentions(Some(&b))), "another nexus, another set");
        let (x, y) = (d.share_unit_attentions(None), d.share_unit_attentions(None));
        assert!(!Arc::ptr_eq(&x, &y), "queues without a nexus cannot be told apart: one set each");
        a1.push(lunar_scsi::sense::BUS_DEVICE_RESET.sense());
        // One queue of the nexus closes: the set stays for the other.
        d.release_unit_attentions(Some(&a));
        assert!(Arc::ptr_eq(&a1, &d.share_unit_attentions(Some(&a))));
        // Its last queues close: a queue opened later starts afresh.
        d.release_unit_attentions(Some(&a));
        d.release_unit_attentions(Some(&a));
        let later = d.share_unit_attentions(Some(&a));
        assert!(!Arc::ptr_eq(&a1, &later));
        assert_eq!(later.pending(), 0);
    }
}

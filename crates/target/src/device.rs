//! Devices (logical units).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use lunar_block::BlockError;
use lunar_scsi::{Disk, ScsiError, SideEffect};
use tokio::sync::Notify;

use crate::event::Event;
use crate::policy::{ErrorPolicies, ErrorPolicy};
use crate::queue::Queue;
use crate::target::Target;

/// A logical unit: an emulated disk, its queues and its life cycle.
pub struct Device {
    lun: u64,
    disk: Disk,
    read_policy: AtomicU8,
    write_policy: AtomicU8,
    /// Queues of this device. Control plane only: read and changed on the
    /// main loop, never on the I/O path.
    queues: Mutex<Vec<Arc<Queue>>>,
    removed: AtomicBool,
    /// Async iterations scheduled and not finished; drain waits for them.
    iterations: AtomicUsize,
    iterations_done: Notify,
    target: Weak<Target>,
    drop_hook: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    reservation_file: OnceLock<PathBuf>,
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
    pub(crate) fn new(lun: u64, disk: Disk, policies: ErrorPolicies, target: Weak<Target>) -> Arc<Device> {
        Arc::new(Device {
            lun,
            disk,
            read_policy: AtomicU8::new(policy_to_u8(policies.read)),
            write_policy: AtomicU8::new(policy_to_u8(policies.write)),
            queues: Mutex::new(Vec::new()),
            removed: AtomicBool::new(false),
            iterations: AtomicUsize::new(0),
            iterations_done: Notify::new(),
            target,
            drop_hook: Mutex::new(None),
            reservation_file: OnceLock::new(),
        })
    }

    pub fn lun(&self) -> u64 {
        self.lun
    }

    pub fn disk(&self) -> &Disk {
        &self.disk
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
        self.removed.store(true, Ordering::Release);
    }

    /// The queues of this device (control plane).
    pub fn queues(&self) -> Vec<Arc<Queue>> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn add_queue(&self, q: Arc<Queue>) {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).push(q);
    }

    pub(crate) fn remove_queue(&self, id: u64) {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).retain(|q| q.id() != id);
    }

    pub(crate) fn clear_queues(&self) -> Vec<Arc<Queue>> {
        std::mem::take(&mut *self.queues.lock().unwrap_or_else(|e| e.into_inner()))
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
    pub(crate) fn luns(&self) -> Vec<u64> {
        self.target.upgrade().map(|t| t.luns()).unwrap_or_default()
    }

    /// Where reservations persist (APTPL), if anywhere.
    pub fn set_reservation_file(&self, path: PathBuf) {
        let _ = self.reservation_file.set(path);
    }

    /// Carries out what a command asked beyond its own completion (SPC-5
    /// 5.13: unit attentions for other nexuses, PREEMPT AND ABORT, APTPL),
    /// before the command completes. Runs on the command's thread; reaching
    /// the other queues of the device goes through their jobs (a rare path:
    /// reservation commands only).
    pub(crate) fn apply_effects(&self, from: &Arc<Queue>, effects: Vec<SideEffect>) -> Result<(), ScsiError> {
        for e in effects {
            match e {
                SideEffect::UnitAttention { nexus, sense } => {
                    for q in self.queues() {
                        if q.is_nexus(&nexus) {
                            q.push_unit_attention(sense.clone());
                        }
                    }
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

    /// A request was parked under the `stop` policy (on its I/O thread).
    pub(crate) fn paused_on_error(&self, e: &BlockError, write: bool) {
        tracing::warn!(lun = self.lun, errno = e.errno, write, "I/O error: stopping the target ({e})");
        if let Some(t) = self.target.upgrade() {
            t.emit(Event::PausedOnIoError { lun: self.lun, errno: e.errno, kind: e.kind, write });
            t.request_stop();
        }
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if let Some(f) = self.drop_hook.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            f();
        }
    }
}

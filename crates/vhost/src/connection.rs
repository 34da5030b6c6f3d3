//! One vhost-user connection: the front-end's (QEMU's) messages, as the
//! `vhost` crate parses them, applied to the device.
//!
//! `vhost-user-backend` 0.24 answers `GET_INFLIGHT_FD`/`SET_INFLIGHT_FD`
//! with "not supported" and has no hook for them (its handler is private),
//! so the device implements the message handler itself: guest memory
//! (`vm-memory` mappings of the front-end's regions), the vrings (the
//! crate's `VringRwLock` and `virtio-queue`), a thread that relays the kick
//! eventfds to [`ScsiBackend::kick`] (the same entry point as
//! before), and the inflight region ([`crate::inflight`]).
//!
//! A request ring that starts (its kick fd arrives, or it is enabled) with
//! an inflight region looks in the region first: the heads a previous
//! process took off the ring and never answered are submitted again, in
//! the order it took them, before anything new, and the next available
//! index is the used index plus their number. If the used ring has history
//! (its index is not 0), the driver is notified once, as soon as the ring
//! runs and has its call fd: a previous process may have died between
//! writing a used entry and notifying the driver (the notification is a
//! bottom half queued behind the completion), and then nothing else would
//! tell the driver, which would wait for that answer for good (Linux's
//! virtio-scsi driver re-arms a command's timer instead of aborting it).
//! A notification with nothing new is harmless to a driver.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight, VhostUserLog,
    VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg,
    VhostUserSingleMemoryRegion, VhostUserVirtioFeatures, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Backend, Error as VuError, GpuBackend, Result as VuResult, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::{GuestAddress, GuestMemoryAtomic, GuestMemoryMmap, GuestRegionMmap};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::EventFd;

use crate::device::ScsiBackend;
use crate::inflight::InflightRegion;
use crate::{Mem, Vring, MAX_QUEUE_SIZE};

/// Event data of the relay thread's exit eventfd.
const EXIT: u64 = u64::MAX;

/// A front-end memory region: where it is in QEMU's address space.
struct Mapping {
    user_addr: u64,
    size: u64,
    gpa: u64,
}

/// The kick eventfds: a request queue's is watched by its own I/O thread
/// ([`crate::RequestVq::watch_kick`]); the control and event queues' (and
/// a request queue's whose I/O thread cannot take it) by one epoll thread
/// per connection, which relays them.
struct Kicks {
    backend: Arc<ScsiBackend>,
    /// Request queue kicks the epoll thread relayed (none while every
    /// request queue's I/O thread watches its own).
    relayed: Arc<AtomicU64>,
    epoll: Arc<Epoll>,
    exit: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl Kicks {
    fn start(backend: Arc<ScsiBackend>, vrings: Vec<Vring>) -> io::Result<Kicks> {
        let epoll = Arc::new(Epoll::new()?);
        let exit = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC)?;
        epoll.ctl(ControlOperation::Add, exit.as_raw_fd(), EpollEvent::new(EventSet::IN, EXIT))?;
        let relayed = Arc::new(AtomicU64::new(0));
        let (ep, ex, b, r) = (epoll.clone(), exit.try_clone()?, backend.clone(), relayed.clone());
        let thread =
            std::thread::Builder::new().name("vhost-kicks".into()).spawn(move || relay(ep, ex, b, vrings, &r))?;
        Ok(Kicks { backend, relayed, epoll, exit, thread: Some(thread) })
    }

    fn watch(&self, vring: &Vring, index: usize) {
        if let Some(vq) = index.checked_sub(2).and_then(|i| self.backend.vqs.get(i)) {
            if vq.watch_kick(vring) {
                return;
            }
        }
        if let Some(k) = vring.get_ref().get_kick() {
            let r = self.epoll.ctl(ControlOperation::Add, k.as_raw_fd(), EpollEvent::new(EventSet::IN, index as u64));
            if let Err(e) = r {
                if e.kind() != io::ErrorKind::AlreadyExists {
                    tracing::warn!(index, "vhost-user: cannot watch the kick eventfd: {e}");
                }
            }
        }
    }

    fn unwatch(&self, vring: &Vring, index: usize) {
        if let Some(vq) = index.checked_sub(2).and_then(|i| self.backend.vqs.get(i)) {
            vq.unwatch_kick();
        }
        if let Some(k) = vring.get_ref().get_kick() {
            let _ = self.epoll.ctl(ControlOperation::Delete, k.as_raw_fd(), EpollEvent::default());
        }
    }

    fn stop(&mut self) {
        for vq in &self.backend.vqs {
            vq.unwatch_kick();
        }
        let relayed = self.relayed.swap(0, Ordering::Relaxed);
        if relayed > 0 {
            tracing::info!(relayed, "vhost-user: request queue kicks relayed (their I/O thread could not watch them)");
        }
        let _ = self.exit.write(1);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Kicks {
    fn drop(&mut self) {
        self.stop();
    }
}

fn relay(epoll: Arc<Epoll>, exit: EventFd, backend: Arc<ScsiBackend>, vrings: Vec<Vring>, relayed: &AtomicU64) {
    let mut events = vec![EpollEvent::default(); vrings.len() + 1];
    loop {
        let n = match epoll.wait(-1, &mut events) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                tracing::error!("vhost-user: kick relay: {e}");
                return;
            }
        };
        for ev in &events[..n] {
            let index = ev.data();
            if index == EXIT {
                let _ = exit.read();
                return;
            }
            if let Some(v) = vrings.get(index as usize) {
                let _ = v.read_kick();
                if index >= 2 {
                    relayed.fetch_add(1, Ordering::Relaxed);
                }
                backend.kick(&vrings, index as usize);
            }
        }
    }
}

/// The message handler of one connection.
pub(crate) struct Connection {
    backend: Arc<ScsiBackend>,
    mem: Mem,
    vrings: Vec<Vring>,
    mappings: Vec<Mapping>,
    owned: bool,
    acked_features: u64,
    acked_protocol_features: u64,
    inflight: Option<Arc<InflightRegion>>,
    kicks: Kicks,
    /// Per virtqueue: notify the driver once the ring runs (it started on a
    /// used ring with history, see the module's documentation).
    wake: Vec<bool>,
}

fn internal(e: impl std::fmt::Display) -> VuError {
    VuError::ReqHandlerError(io::Error::other(e.to_string()))
}

impl Connection {
    pub(crate) fn new(backend: Arc<ScsiBackend>) -> io::Result<Connection> {
        let mem: Mem = GuestMemoryAtomic::new(GuestMemoryMmap::new());
        let mut vrings = Vec::new();
        for _ in 0..backend.num_queues() {
            vrings.push(Vring::new(mem.clone(), MAX_QUEUE_SIZE as u16).map_err(io::Error::other)?);
        }
        let kicks = Kicks::start(backend.clone(), vrings.clone())?;
        let wake = vec![false; vrings.len()];
        Ok(Connection {
            backend,
            mem,
            vrings,
            mappings: Vec::new(),
            owned: false,
            acked_features: 0,
            acked_protocol_features: 0,
            inflight: None,
            kicks,
            wake,
        })
    }

    /// The inflight region's file, as the front-end keeps it.
    #[cfg(test)]
    pub(crate) fn inflight_file(&self) -> Option<File> {
        self.inflight.as_ref().and_then(|r| r.file().try_clone().ok())
    }

    /// Request queue kicks the relay thread handled (not their I/O thread).
    #[cfg(test)]
    pub(crate) fn relayed_request_kicks(&self) -> u64 {
        self.kicks.relayed.load(Ordering::Relaxed)
    }

    /// Ends the kick relay (the front-end went away).
    pub(crate) fn stop(&mut self) {
        self.kicks.stop();
    }

    fn vring(&self, index: usize) -> VuResult<&Vring> {
        self.vrings.get(index).ok_or(VuError::InvalidParam)
    }

    fn gpa(&self, user_addr: u64) -> VuResult<u64> {
        self.mappings
            .iter()
            .find(|m| user_addr >= m.user_addr && user_addr - m.user_addr < m.size)
            .map(|m| user_addr - m.user_addr + m.gpa)
            .ok_or(VuError::InvalidParam)
    }

    fn protocol_features_acked(&self) -> bool {
        self.acked_features & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0
    }

    /// The ring has its kick fd: it runs (once enabled).
    fn start_ring(&mut self, index: usize) -> VuResult<()> {
        let vring = self.vring(index)?.clone();
        if vring.get_ref().get_queue().ready() || vring.get_ref().get_kick().is_none() {
            return Ok(());
        }
        let due = self.recover(index, &vring);
        if let Some(w) = self.wake.get_mut(index) {
            *w = due;
        }
        vring.set_queue_ready(true);
        if vring.get_ref().is_enabled() {
            self.kicks.watch(&vring, index);
            self.backend.kick(&self.vrings, index);
            self.wake_driver(index);
        }
        Ok(())
    }

    /// Notifies the driver of ring `index` if it is due (see `wake`) and the
    /// ring runs, enabled, with a call fd.
    fn wake_driver(&mut self, index: usize) {
        let (Some(vring), Some(due)) = (self.vrings.get(index), self.wake.get_mut(index)) else { return };
        let runs = {
            let r = vring.get_ref();
            r.is_enabled() && r.get_queue().ready() && r.get_call().is_some()
        };
        if *due && runs {
            *due = false;
            if let Err(e) = vring.signal_used_queue() {
                tracing::warn!(index, "vhost-user: cannot notify the driver: {e}");
            }
        }
    }

    /// Before a request ring runs: its inflight tracking, and what a
    /// previous process left in flight. True if the ring is tracked and its
    /// used ring has history (the driver is then notified once it runs).
    fn recover(&self, index: usize, vring: &Vring) -> bool {
        let Some(vq) = index.checked_sub(2).and_then(|i| self.backend.vqs.get(i)) else { return false };
        let tracker = self.inflight.as_ref().and_then(|r| r.queue(index as u16));
        let Some(tracker) = tracker else {
            vq.set_tracking(None, Vec::new());
            return false;
        };
        let size = vring.get_ref().get_queue().size();
        if tracker.desc_num() != size {
            tracing::warn!(
                queue = vq.index,
                size,
                "vhost-user-scsi: inflight region for another ring size; not tracking"
            );
            vq.set_tracking(None, Vec::new());
            return false;
        }
        let used = match vring.queue_used_idx() {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(queue = vq.index, "vhost-user-scsi: cannot read the used index: {e}");
                vq.set_tracking(None, Vec::new());
                return false;
            }
        };
        match tracker.recover(used) {
            Ok(heads) => {
                if !heads.is_empty() {
                    tracing::info!(
                        queue = vq.index,
                        requests = heads.len(),
                        used,
                        "vhost-user-scsi: resubmitting the requests a previous process left in flight"
                    );
                }
                vring.set_queue_next_used(used);
                vring.set_queue_next_avail(used.wrapping_add(heads.len() as u16));
                vq.set_tracking(Some(Arc::new(tracker)), heads);
                used != 0
            }
            Err(e) => {
                tracing::warn!(queue = vq.index, "vhost-user-scsi: inflight region unusable: {e}");
                vq.set_tracking(None, Vec::new());
                false
            }
        }
    }
}

impl VhostUserBackendReqHandlerMut for Connection {
    fn set_owner(&mut self) -> VuResult<()> {
        if self.owned {
            return Err(VuError::InvalidOperation("already claimed"));
        }
        self.owned = true;
        Ok(())
    }

    fn reset_owner(&mut self) -> VuResult<()> {
        self.owned = false;
        self.acked_features = 0;
        self.acked_protocol_features = 0;
        Ok(())
    }

    fn reset_device(&mut self) -> VuResult<()> {
        for (i, v) in self.vrings.iter().enumerate() {
            v.set_enabled(false);
            self.kicks.unwatch(v, i);
        }
        self.acked_features = 0;
        Ok(())
    }

    fn get_features(&mut self) -> VuResult<u64> {
        Ok(self.backend.features())
    }

    fn set_features(&mut self, features: u64) -> VuResult<()> {
        if features & !self.backend.features() != 0 {
            return Err(VuError::InvalidParam);
        }
        self.acked_features = features;
        // Without VHOST_USER_F_PROTOCOL_FEATURES the rings start enabled.
        if !self.protocol_features_acked() {
            for (i, v) in self.vrings.iter().enumerate() {
                v.set_enabled(true);
                if v.get_ref().get_queue().ready() {
                    self.kicks.watch(v, i);
                }
            }
        }
        let event_idx = features & (1 << crate::virtio::VIRTIO_RING_F_EVENT_IDX) != 0;
        for v in &self.vrings {
            v.set_queue_event_idx(event_idx);
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        postcopy_listening: Option<bool>,
    ) -> VuResult<Option<Vec<VhostUserMemoryRegionBase>>> {
        if postcopy_listening.is_some() {
            return Err(VuError::InvalidOperation("postcopy not supported"));
        }
        let mut regions = Vec::new();
        let mut mappings = Vec::new();
        for (region, file) in ctx.iter().zip(files) {
            let mmap = region.mmap_region::<()>(file)?;
            let r = GuestRegionMmap::new(mmap, GuestAddress(region.guest_phys_addr)).ok_or(VuError::InvalidParam)?;
            regions.push(r);
            mappings.push(Mapping {
                user_addr: region.user_addr,
                size: region.memory_size,
                gpa: region.guest_phys_addr,
            });
        }
        let mem = GuestMemoryMmap::from_regions(regions).map_err(internal)?;
        self.mem.lock().map_err(internal)?.replace(mem);
        self.backend.update_memory(self.mem.clone());
        self.mappings = mappings;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> VuResult<()> {
        if num == 0 || num as usize > MAX_QUEUE_SIZE {
            return Err(VuError::InvalidParam);
        }
        self.vring(index as usize)?.set_queue_size(num as u16);
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> VuResult<()> {
        let (d, a, u) = (self.gpa(descriptor)?, self.gpa(available)?, self.gpa(used)?);
        let vring = self.vring(index as usize)?;
        vring.set_queue_info(d, a, u).map_err(|_| VuError::InvalidParam)?;
        // The used index the driver sees (it restarts at 0 after a reset).
        let idx = vring.queue_used_idx().map_err(|_| VuError::BackendInternalError)?;
        vring.set_queue_next_used(idx);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> VuResult<()> {
        self.vring(index as usize)?.set_queue_next_avail(base as u16);
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> VuResult<VhostUserVringState> {
        let vring = self.vring(index as usize)?.clone();
        vring.set_queue_ready(false);
        if let Some(w) = self.wake.get_mut(index as usize) {
            *w = false;
        }
        self.kicks.unwatch(&vring, index as usize);
        self.backend.stop_vring(index);
        let next_avail = vring.queue_next_avail();
        vring.set_kick(None);
        vring.set_call(None);
        Ok(VhostUserVringState::new(index, next_avail as u32))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let vring = self.vring(index as usize)?.clone();
        self.kicks.unwatch(&vring, index as usize);
        vring.set_kick(fd);
        if vring.get_ref().get_queue().ready() {
            if vring.get_ref().is_enabled() {
                self.kicks.watch(&vring, index as usize);
            }
            return Ok(());
        }
        self.start_ring(index as usize)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        let vring = self.vring(index as usize)?;
        let runs = {
            let r = vring.get_ref();
            r.is_enabled() && r.get_queue().ready()
        };
        vring.set_call(fd);
        // A running ring's notifications may have gone to the call fd being
        // replaced, or nowhere (none yet): QEMU switches call fds when it
        // masks and unmasks the queue's vector, while the I/O thread keeps
        // completing. Notify once through the new one; a spurious
        // notification costs the driver one look at its used ring.
        if runs {
            if let Some(w) = self.wake.get_mut(index as usize) {
                *w = true;
            }
        }
        self.wake_driver(index as usize);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, fd: Option<File>) -> VuResult<()> {
        self.vring(index as usize)?.set_err(fd);
        Ok(())
    }

    fn get_protocol_features(&mut self) -> VuResult<VhostUserProtocolFeatures> {
        Ok(self.backend.protocol_features())
    }

    fn set_protocol_features(&mut self, features: u64) -> VuResult<()> {
        self.acked_protocol_features = features;
        Ok(())
    }

    fn get_queue_num(&mut self) -> VuResult<u64> {
        Ok(self.vrings.len() as u64)
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> VuResult<()> {
        if !self.protocol_features_acked() {
            return Err(VuError::InactiveFeature(VhostUserVirtioFeatures::PROTOCOL_FEATURES));
        }
        let vring = self.vring(index as usize)?.clone();
        vring.set_enabled(enable);
        if !enable {
            self.kicks.unwatch(&vring, index as usize);
        } else if vring.get_ref().get_queue().ready() {
            self.kicks.watch(&vring, index as usize);
            // Kicks that came while it was disabled, and requests to resubmit.
            self.backend.kick(&self.vrings, index as usize);
            self.wake_driver(index as usize);
        }
        Ok(())
    }

    fn get_config(&mut self, offset: u32, size: u32, _flags: VhostUserConfigFlags) -> VuResult<Vec<u8>> {
        Ok(self.backend.get_config(offset, size))
    }

    fn set_config(&mut self, offset: u32, buf: &[u8], _flags: VhostUserConfigFlags) -> VuResult<()> {
        self.backend.set_config(offset, buf).map_err(VuError::ReqHandlerError)
    }

    fn set_backend_req_fd(&mut self, _backend: Backend) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> VuResult<()> {
        Err(VuError::InvalidOperation("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> VuResult<File> {
        Err(VuError::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(&mut self, inflight: &VhostUserInflight) -> VuResult<(VhostUserInflight, File)> {
        let region = InflightRegion::create(inflight.num_queues, inflight.queue_size).map_err(internal)?;
        let file = region.file().try_clone().map_err(VuError::ReqHandlerError)?;
        let answer = VhostUserInflight {
            mmap_size: region.size(),
            mmap_offset: 0,
            num_queues: inflight.num_queues,
            queue_size: inflight.queue_size,
        };
        tracing::info!(
            queues = inflight.num_queues,
            queue_size = inflight.queue_size,
            bytes = region.size(),
            "vhost-user-scsi: inflight region created"
        );
        Ok((answer, file))
    }

    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> VuResult<()> {
        let region = InflightRegion::open(
            file,
            inflight.mmap_offset,
            inflight.mmap_size,
            inflight.num_queues,
            inflight.queue_size,
        )
        .map_err(internal)?;
        self.inflight = Some(Arc::new(region));
        Ok(())
    }

    fn get_max_mem_slots(&mut self) -> VuResult<u64> {
        Err(VuError::InvalidOperation("CONFIGURE_MEM_SLOTS not offered"))
    }

    fn add_mem_region(
        &mut self,
        _region: &VhostUserSingleMemoryRegion,
        _fd: File,
        _postcopy_listening: Option<bool>,
    ) -> VuResult<Option<VhostUserMemoryRegionBase>> {
        Err(VuError::InvalidOperation("CONFIGURE_MEM_SLOTS not offered"))
    }

    fn remove_mem_region(&mut self, _region: &VhostUserSingleMemoryRegion) -> VuResult<()> {
        Err(VuError::InvalidOperation("CONFIGURE_MEM_SLOTS not offered"))
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> VuResult<Option<File>> {
        Err(VuError::InvalidOperation("DEVICE_STATE not offered"))
    }

    fn check_device_state(&mut self) -> VuResult<()> {
        Err(VuError::InvalidOperation("DEVICE_STATE not offered"))
    }

    fn get_shmem_config(&mut self) -> VuResult<VhostUserShMemConfig> {
        Err(VuError::InvalidOperation("SHMEM not offered"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> VuResult<()> {
        Err(VuError::InvalidOperation("LOG_SHMFD not offered"))
    }
}

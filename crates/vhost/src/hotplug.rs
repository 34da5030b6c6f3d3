//! Hot plug: the event queue and the LUN tables, all on the main loop
//! (`VIRTIO_SCSI_F_HOTPLUG` and `VIRTIO_SCSI_F_CHANGE`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use lunar_core::Event;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, Notify};
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::GuestAddressSpace;

use crate::device::ScsiBackend;
use crate::events::{EventQueue, ScsiEvent, EVENT_LEN};
use crate::limits::HitCounters;
use crate::virtio::Buffers;
use crate::Vring;

/// The event virtqueue as the other threads see it; its state (the events
/// not yet delivered) belongs to the event task on the main loop.
pub(crate) struct EventVq {
    /// The ring, kept from the first kick of a connection (the worker thread
    /// that relays the kick hands it over); `None` once it stopped.
    pub(crate) vring: Mutex<Option<Vring>>,
    /// The driver posted buffers (or the ring was reset, or the controller stops).
    pub(crate) kick: Notify,
    /// The ring was reset: the pending events are for a driver that is gone.
    pub(crate) reset: AtomicBool,
    pub(crate) stop: AtomicBool,
}

impl ScsiBackend {
    fn exposes(&self, lun: u64) -> bool {
        self.hotplug || self.initial.contains(&lun)
    }

    /// Whether every request virtqueue has an open core queue for `lun`.
    fn attached(&self, lun: u64) -> bool {
        self.vqs.iter().all(|v| v.queues().get(&lun).is_some_and(|q| !q.is_closed()))
    }

    /// Opens the core queues of `lun` (one per request virtqueue, on its I/O
    /// thread) and installs them; false if the LUN cannot be opened.
    async fn attach(&self, lun: u64) -> bool {
        if self.attached(lun) {
            return true;
        }
        let target = &self.shared.target;
        let mut opened = Vec::with_capacity(self.vqs.len());
        for v in &self.vqs {
            match target.open_queue_for(lun, v.io_thread, Some(self.nexus.clone())).await {
                Ok(q) => opened.push(q),
                Err(e) => {
                    tracing::warn!(lun, "vhost-user-scsi: cannot open the LUN's queues: {e}");
                    for q in opened {
                        let _ = target.close_queue(q).await;
                    }
                    return false;
                }
            }
        }
        for (v, q) in self.vqs.iter().zip(opened) {
            if let Some(old) = v.set_queue(lun, Some(q)) {
                if !old.is_closed() {
                    let _ = target.close_queue(old).await;
                }
            }
        }
        true
    }

    /// Drops the core queues of `lun` (the target closed them); whether it was exposed.
    fn detach(&self, lun: u64) -> bool {
        let mut was = false;
        for v in &self.vqs {
            was |= v.set_queue(lun, None).is_some();
        }
        was
    }

    /// Follows one event of the target.
    async fn on_target_event(&self, event: Event, out: &mut EventQueue) {
        let (lun, added) = match event {
            Event::DeviceResized { lun, .. } => {
                if self.vqs.first().is_some_and(|v| v.queues().contains_key(&lun)) {
                    // CAPACITY DATA HAS CHANGED (2Ah/09h): Linux rescans the disk.
                    tracing::info!(lun, "vhost-user-scsi: LUN resized, telling the guest");
                    out.push(ScsiEvent::param_change(lun, 0x2a, 0x09));
                }
                return;
            }
            Event::DeviceAdded { lun } if self.exposes(lun) => (lun, true),
            Event::DeviceRemoved { lun } => (lun, false),
            // Other events (moves, resets, run state...) change nothing the guest sees.
            _ => return,
        };
        if added && self.attach(lun).await {
            tracing::info!(lun, "vhost-user-scsi: LUN added, telling the guest");
            out.push(ScsiEvent::rescan(lun));
        } else if !added && self.detach(lun) {
            tracing::info!(lun, "vhost-user-scsi: LUN removed, telling the guest");
            out.push(ScsiEvent::removed(lun));
        }
    }

    /// Events were lost (the broadcast lagged): compare the LUN tables with
    /// the target's LUNs and report the differences.
    async fn resync(&self, out: &mut EventQueue) {
        let now = self.shared.target.luns();
        let known: Vec<u64> = self.vqs.first().map(|v| v.queues().keys().copied().collect()).unwrap_or_default();
        for lun in known.iter().filter(|l| !now.contains(l)) {
            if self.detach(*lun) {
                out.push(ScsiEvent::removed(*lun));
            }
        }
        for lun in now.into_iter().filter(|&l| self.exposes(l)) {
            if !self.attached(lun) && self.attach(lun).await {
                out.push(ScsiEvent::rescan(lun));
            }
        }
    }

    /// Fills the buffers the driver posted on the event queue with pending
    /// events. Only the event task (main loop) calls this: the used ring of
    /// the event queue has one writer.
    fn deliver_events(&self, out: &mut EventQueue) {
        let Some(vring) = self.event.vring.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        let Some(mem) = self.ctrl_mem.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        let mut used_any = false;
        loop {
            while let Some(event) = out.peek() {
                // Ready check, pop and used-ring update under one ring lock:
                // a ring stopped meanwhile (GET_VRING_BASE) is not touched.
                let mut ring = vring.get_mut();
                if !ring.get_queue().ready() {
                    return;
                }
                let Some(chain) = ring.get_queue_mut().pop_descriptor_chain(mem.memory()) else { break };
                let head = chain.head_index();
                let max = self.shared.limits.max_chain_descriptors;
                let written = match Buffers::collect(chain.map(|d| (d.addr().0, d.len(), d.is_write_only())), max) {
                    Ok(b) if b.readable.is_empty() && b.writable_len() >= EVENT_LEN as u64 => {
                        match b.write_at(&*mem.memory(), 0, &event) {
                            Ok(n) => {
                                out.consume();
                                n
                            }
                            Err(e) => {
                                self.shared.log.warn(&e);
                                0
                            }
                        }
                    }
                    Ok(_) => {
                        HitCounters::bump(&self.shared.hits.bad_chain);
                        self.shared.log.warn(&"event queue buffer not a 16-byte writable buffer");
                        0
                    }
                    Err(bad) => {
                        self.shared.refused(&bad.error);
                        0
                    }
                };
                used_any |= ring.add_used(head, written as u32).is_ok();
            }
            // Ask for a kick when the driver posts more (EVENT_IDX), and
            // catch buffers posted meanwhile.
            match vring.enable_notification() {
                Ok(true) if out.peek().is_some() => continue,
                _ => break,
            }
        }
        if used_any && vring.needs_notification().unwrap_or(true) {
            let _ = vring.signal_used_queue();
        }
    }
}

/// The event task: owns the events not yet delivered; follows the target's
/// events and the driver's kicks of the event queue until the controller stops.
pub(crate) async fn event_task(
    backend: Arc<ScsiBackend>,
    mut events: broadcast::Receiver<Event>,
    done: std::sync::mpsc::Sender<()>,
) {
    let mut out = EventQueue::default();
    loop {
        tokio::select! {
            r = events.recv() => match r {
                Ok(e) => backend.on_target_event(e, &mut out).await,
                Err(RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "vhost-user-scsi: target events lagged; resynchronising the LUNs");
                    backend.resync(&mut out).await;
                }
                Err(RecvError::Closed) => break,
            },
            _ = backend.event.kick.notified() => {}
        }
        if backend.event.stop.load(Ordering::Acquire) {
            break;
        }
        if backend.event.reset.swap(false, Ordering::AcqRel) {
            out.clear();
        }
        backend.deliver_events(&mut out);
    }
    let _ = done.send(());
}

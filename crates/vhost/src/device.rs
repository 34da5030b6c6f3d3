//! The virtio-scsi device as the vhost-user message handler
//! (`connection.rs`) sees it: features, configuration space, guest memory,
//! ring stops and kicks. The request queues are `request_queue.rs`, the
//! control queue `control.rs`, the event queue and hot plug `hotplug.rs`.

use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lunar_scsi::Nexus;
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};

use crate::hotplug::EventVq;
use crate::request_queue::{QueueMem, RequestVq};
use crate::virtio::*;
use crate::{ControllerState, Mem, Vring};

/// `seg_max` of the config space: QEMU's default ring size minus 2 (fewer
/// if [`crate::VhostLimits::max_chain_descriptors`] is below 128).
const SEG_MAX: u32 = 126;

/// One virtio-scsi device: what a controller serves to each frontend that
/// connects (the device outlives its connections).
pub(crate) struct ScsiBackend {
    pub(crate) shared: Arc<ControllerState>,
    pub(crate) vqs: Vec<Arc<RequestVq>>,
    /// Guest memory for the control and event queues.
    pub(crate) ctrl_mem: Mutex<Option<Mem>>,
    /// Task management functions not yet answered.
    pub(crate) ctrl_pending: Arc<AtomicUsize>,
    /// The controller's I_T nexus (every core queue it opens).
    pub(crate) nexus: Nexus,
    /// LUNs exposed at start; with `hotplug`, every LUN added later too.
    pub(crate) initial: Vec<u64>,
    pub(crate) hotplug: bool,
    pub(crate) event: EventVq,
}

impl ScsiBackend {
    /// Virtqueues: control, event, then the request queues.
    pub(crate) fn num_queues(&self) -> usize {
        self.vqs.len() + 2
    }

    /// The virtio features offered (`VHOST_USER_GET_FEATURES`).
    pub(crate) fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_SCSI_F_HOTPLUG)
            | (1 << VIRTIO_SCSI_F_CHANGE)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    /// The vhost-user protocol features offered.
    pub(crate) fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    pub(crate) fn config_space(&self) -> [u8; CONFIG_LEN] {
        let mut c = [0u8; CONFIG_LEN];
        let limits = &self.shared.limits;
        let fields: [u32; 7] = [
            self.vqs.len() as u32,
            limits.seg_max(SEG_MAX),
            limits.max_sectors(),
            128,
            16,
            self.shared.sense_size.load(Ordering::Relaxed),
            self.shared.cdb_size.load(Ordering::Relaxed),
        ];
        for (i, f) in fields.iter().enumerate() {
            c[i * 4..i * 4 + 4].copy_from_slice(&f.to_le_bytes());
        }
        // max_channel = 0 (28..30), max_target = 0 (30..32), max_lun (32..36).
        c[32..36].copy_from_slice(&16383u32.to_le_bytes());
        c
    }

    /// `size` bytes of the configuration space from `offset` (clipped to it).
    pub(crate) fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = self.config_space();
        let start = (offset as usize).min(c.len());
        let end = start.saturating_add(size as usize).min(c.len());
        c[start..end].to_vec()
    }

    /// The driver writes `sense_size` or `cdb_size` (the only writable fields).
    pub(crate) fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        let value = |b: &[u8]| b.get(0..4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
        let (field, max, min) = match offset {
            CONFIG_SENSE_SIZE => (&self.shared.sense_size, MAX_SENSE_SIZE, 0),
            CONFIG_CDB_SIZE => (&self.shared.cdb_size, MAX_CDB_SIZE, 6),
            _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "read-only config field")),
        };
        match value(buf) {
            Some(v) if (min..=max).contains(&v) => {
                field.store(v, Ordering::Relaxed);
                Ok(())
            }
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "bad config value")),
        }
    }

    /// A new guest memory map (`VHOST_USER_SET_MEM_TABLE`): each request
    /// queue gets its own handle on it.
    pub(crate) fn update_memory(&self, mem: Mem) {
        for v in &self.vqs {
            *v.mem.lock().unwrap_or_else(|e| e.into_inner()) = Some(QueueMem::new(&mem));
        }
        *self.ctrl_mem.lock().unwrap_or_else(|e| e.into_inner()) = Some(mem);
    }

    /// A ring stops (`GET_VRING_BASE`): returns once what it holds is done
    /// (bounded wait).
    pub(crate) fn stop_vring(&self, queue_index: u32) {
        match queue_index as usize {
            0 => {
                let end = Instant::now() + Duration::from_secs(30);
                while self.ctrl_pending.load(Ordering::Acquire) > 0 && Instant::now() < end {
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            1 => {
                // The guest reset the device (or went away): its event
                // buffers are gone, and so is the interest in older events.
                *self.event.vring.lock().unwrap_or_else(|e| e.into_inner()) = None;
                self.event.reset.store(true, Ordering::Release);
                self.event.kick.notify_one();
            }
            i => {
                if let Some(v) = self.vqs.get(i - 2) {
                    v.drain(Duration::from_secs(30));
                    tracing::info!(
                        queue = v.index,
                        io_thread = v.io_thread,
                        requests = v.served.load(Ordering::Relaxed),
                        "vhost-user-scsi: request queue stopped"
                    );
                    self.shared.log.flush();
                }
            }
        }
    }

    /// The driver kicked the control queue.
    pub(crate) fn kick_control(&self, control: &Vring) {
        self.process_control(control);
    }

    /// The driver kicked the event queue (posted buffers): relayed to the
    /// event task, which owns the event queue.
    pub(crate) fn kick_event(&self, event: &Vring) {
        let mut slot = self.event.vring.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(event.clone());
        }
        drop(slot);
        self.event.kick.notify_one();
    }

    /// The driver kicked request queue `queue` (virtqueue `queue + 2`) and
    /// its I/O thread does not watch the kick itself: the ring is processed
    /// there.
    pub(crate) fn kick_request(&self, queue: usize, vring: &Vring) {
        if let Some(vq) = self.vqs.get(queue) {
            vq.schedule_process(vring);
        }
    }

    /// A kick of virtqueue `index` (0 control, 1 event, `2 + i` request
    /// queue `i`), `vrings` every virtqueue of the connection.
    pub(crate) fn kick(&self, vrings: &[Vring], index: usize) {
        match (index, vrings.get(index)) {
            (_, None) => {}
            (0, Some(v)) => self.kick_control(v),
            (1, Some(v)) => self.kick_event(v),
            (i, Some(v)) => self.kick_request(i - 2, v),
        }
    }
}

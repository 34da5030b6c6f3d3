//! Lunar layer 5: a virtio-scsi device (virtio 1.2, section 5.6) served over
//! vhost-user, so that QEMU guests (`-device vhost-user-scsi-pci`) use the
//! LUNs of a [`Target`].
//!
//! The vhost-user protocol messages, the guest memory map and the rings are
//! the rust-vmm crates' (`vhost`, `vhost-user-backend`'s `VringRwLock`,
//! `virtio-queue`, `vm-memory`); this crate is the device, and its message
//! handler (`connection.rs`): `vhost-user-backend`'s own handler refuses the
//! inflight messages and has no hook for them.
//!
//! # Threads: one Lunar I/O thread per request queue
//!
//! The protocol runs on the controller's thread. Each request queue's kick
//! eventfd is watched by that queue's Lunar I/O thread itself: a task on
//! its loop owns a duplicate of the eventfd (`AsyncFd`), and on a kick
//! reads it and processes the ring right there. After serving the ring it
//! polls it for a short, adaptive window (`poll-us`, like QEMU's
//! `poll-max-ns`: halved when a poll finds nothing, doubled when a sleep
//! ends sooner than the longest window), yielding to the loop between
//! looks, so a driver that posts its next batch quickly costs no kick and
//! no wake-up. Everything on the I/O path runs on that thread: popping
//! descriptor chains, reading the request and data-out from guest memory,
//! submitting to the core [`Queue`]s opened for that thread (one per LUN,
//! for the controller's I_T nexus: a LUN's queues of every request queue
//! share that nexus's unit attentions, so the guest is told of a condition
//! once, on whichever queue it sends next), and, in the completion that
//! the core runs on the queue's holder thread, writing status, sense and
//! data-in, the used ring and (once per batch) the call eventfd. One thread
//! per connection watches the control and event queues' kicks (and relays a
//! request queue's only if its I/O thread cannot take it).

//! Virtqueue `i + 2` (request queue `i`) is served by I/O thread
//! `i % io_threads + 1`. The locks on the I/O path are per virtqueue, never
//! shared between queues: the ring's `RwLock` (the crate's `VringRwLock`;
//! otherwise taken only by the protocol thread while it sets the ring up),
//! the table of commands in flight (otherwise taken only by task
//! management, to wait for the commands it aborts) and the virtqueue's
//! LUN table (an `Arc` snapshot taken once per kick; replaced by the main
//! loop when a LUN comes or goes). Each request virtqueue counts the
//! commands it served and logs the count when the ring stops.
//!
//! # Limits on what a guest can make the device hold
//!
//! Each controller has [`VhostLimits`] ([`ControllerConfig::limits`]):
//! descriptors per chain (only that many are walked), bytes per request
//! each way, and requests in flight per request queue. A chain over the
//! first two is answered at once, never dropped (`VIRTIO_SCSI_S_FAILURE`,
//! or CHECK CONDITION with INVALID FIELD IN CDB for a request too large;
//! used length 0 if the chain has no room for a response). At the third,
//! the queue's I/O thread takes no more chains off its ring (and stops
//! polling it) until a completion frees a slot and schedules a pass over
//! the ring: back-pressure, nothing fails. Only the data-out the CDB asks
//! for is copied out of guest memory, and a data-in area is a bound, never
//! an allocation. [`Controller::limit_hits`] counts the hits (atomics
//! bumped only on a hit); the warnings go through one rate limit.
//!
//! # Control and event queues
//!
//! The control queue is processed on the kick thread; task management
//! runs on the main loop and is answered only once every command it aborts
//! has completed (LOGICAL UNIT RESET is [`Target::reset_device`]; I_T
//! NEXUS RESET is also an I_T nexus loss on every LUN: SPC-2 reservations
//! of the controller's nexus released, I_T NEXUS LOSS OCCURRED reported).
//! Asynchronous notification query/subscribe is answered with no events
//! supported.
//!
//! The event queue (hot plug, `VIRTIO_SCSI_F_HOTPLUG`) is owned by one task
//! on the main loop: the kick thread only relays its kick (the driver
//! posted buffers). The task follows the target's events: on
//! `DeviceAdded` it opens the LUN's core queues on every request
//! virtqueue's thread, installs them, *then* tells the driver
//! (`TRANSPORT_RESET`/`RESCAN`, so the driver's INQUIRY finds the LUN); on
//! `DeviceRemoved` it drops them and sends `TRANSPORT_RESET`/`REMOVED`; on
//! `DeviceResized`, `PARAM_CHANGE` with CAPACITY DATA HAS CHANGED (2Ah/09h).
//! Events that find no buffer wait (in order, up to
//! [`events::MAX_PENDING`]); beyond that they are dropped and the next event
//! carries `VIRTIO_SCSI_T_EVENTS_MISSED` (Linux then rescans the bus). Only
//! that task writes the event queue's used ring.
//!
//! # Reconnect: inflight I/O tracking
//!
//! The device offers `VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD`: it answers
//! `GET_INFLIGHT_FD` with a memfd laid out as the specification's split-ring
//! format ([`inflight`]) and tracks, in the region the front-end hands back
//! (`SET_INFLIGHT_FD`), every head of a request queue between the moment it
//! is taken off the available ring and the moment its used entry is written
//! (both under the ring's lock). A new process given the region of a dead
//! one submits the heads still marked again, in the order they were taken,
//! before new requests, and notifies the driver once (the dead one may have
//! written a used entry and not notified it). The control and event queues
//! are not tracked.
//!
//! QEMU 8.2 and later reconnect a vhost-user-scsi device
//! (`-chardev socket,...,reconnect=1`) and hand a new process the region;
//! `tests/vm/vhost-reconnect.sh` kills `lunard` twice under a Linux guest's
//! write loop on QEMU 10.0 (QEMU 7.2, Debian 12's, cannot reconnect it).

mod connection;
mod control;
mod controller;
mod device;
pub mod events;
mod hotplug;
pub mod inflight;
mod lent;
pub mod limits;
mod pending;
mod request_queue;
pub mod virtio;

use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;

use lunar_core::Target;
use vhost_user_backend::VringRwLock;
use vm_memory::{GuestMemoryAtomic, GuestMemoryMmap};

pub use controller::Controller;
pub use limits::{VhostLimitHits, VhostLimits};
pub use virtio::{decode_lun, parse_cmd, BadChain, Buffers, ChainError};

use limits::HitCounters;

pub(crate) type Mem = GuestMemoryAtomic<GuestMemoryMmap>;
pub(crate) type Vring = VringRwLock<Mem>;

/// Errors starting a controller.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    #[error("cannot listen on {0}: {1}")]
    Listen(PathBuf, String),
    #[error("cannot open the queues of LUN {0}: {1}")]
    Queue(u64, lunar_core::TargetError),
    #[error("num_queues must be 1..=1022, not {0}")]
    NumQueues(usize),
    #[error("cannot start the controller thread: {0}")]
    Thread(io::Error),
    #[error("bad vhost-user-scsi limit: {0}")]
    Limits(&'static str),
}

/// A controller's settings.
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// The unix socket to listen on (QEMU's `-chardev socket,path=...`).
    pub socket: PathBuf,
    /// Request virtqueues.
    pub num_queues: usize,
    /// The LUNs of the target to expose at start (`None`: all of them).
    pub luns: Option<Vec<u64>>,
    /// Also expose LUNs added to the target later (hot plug: the guest is
    /// told through the event queue). LUNs removed from the target always
    /// disappear.
    pub hotplug: bool,
    /// How long a request queue's I/O thread may poll its ring after
    /// serving it before it sleeps until the next kick (adaptive, up to
    /// this; zero: never). [`DEFAULT_POLL`] unless told otherwise.
    pub poll: Duration,
    /// What the guest's requests may make the controller hold (chain
    /// length, request size, requests in flight per queue);
    /// `VhostLimits::default()` unless told otherwise.
    pub limits: VhostLimits,
}

/// Virtqueue size the device supports (QEMU's default is 128).
pub const MAX_QUEUE_SIZE: usize = 1024;
/// How long a request queue's I/O thread polls its ring after serving it,
/// at most, before it sleeps until the next kick. QEMU's `poll-max-ns`
/// default is 32 µs; on the 2-core machine of `docs/benchmarks.md` a
/// driver's round trip (notification, wake-up, next request) takes longer
/// than that, and 200 µs served 1.3x the QD1 IOPS of 32 µs (more than
/// vhost-device-scsi's, where 32 µs served less) and no fewer at QD32. The
/// window adapts (halved on every empty poll), so an idle queue stops
/// polling after a few hundred microseconds.
pub const DEFAULT_POLL: Duration = Duration::from_micros(200);

/// Rate-limited logging of bad guest input ([`lunar_aio::LogLimit`]: at
/// most one line a second, which says how many were suppressed since the
/// last one; so does [`RateLimit::flush`] when a request queue stops).
pub(crate) struct RateLimit(lunar_aio::LogLimit);

impl RateLimit {
    pub(crate) fn new() -> Self {
        RateLimit(lunar_aio::LogLimit::default())
    }

    /// Logs the count of warnings suppressed since the last one logged, if any.
    pub(crate) fn flush(&self) {
        let n = self.0.take_suppressed();
        if n > 0 {
            tracing::warn!(suppressed = n, "vhost-user-scsi: bad requests from the guest not logged");
        }
    }

    pub(crate) fn warn(&self, what: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.0.allow() {
            tracing::warn!(suppressed, "vhost-user-scsi: bad request from the guest: {what}");
        }
    }

    /// Every warning suppressed since the controller started.
    pub(crate) fn suppressed_total(&self) -> u64 {
        self.0.suppressed_total()
    }
}

/// What a controller shares between its queues (read-only on the I/O path
/// except for the error counter).
pub(crate) struct ControllerState {
    pub(crate) target: Arc<Target>,
    pub(crate) cdb_size: AtomicU32,
    pub(crate) sense_size: AtomicU32,
    pub(crate) log: RateLimit,
    /// The longest poll of a request ring ([`ControllerConfig::poll`]).
    pub(crate) poll: Duration,
    pub(crate) limits: VhostLimits,
    /// Limits the guest ran into (bumped only then).
    pub(crate) hits: HitCounters,
}

impl ControllerState {
    /// Logs (rate-limited) and counts a refused chain.
    pub(crate) fn refused(&self, e: &ChainError) {
        let counter = match e {
            ChainError::TooLong(_) => &self.hits.chain_too_long,
            ChainError::TooLarge { .. } => &self.hits.request_too_large,
            _ => &self.hits.bad_chain,
        };
        HitCounters::bump(counter);
        self.log.warn(e);
    }
}

#[cfg(test)]
mod tests;

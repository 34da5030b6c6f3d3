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
pub mod events;
pub mod inflight;
pub mod limits;
pub mod virtio;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lunar_scsi::{Nexus, Status};
use lunar_target::{Event, Queue, Request, Response, Target};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, oneshot, Notify};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{BackendListener, Listener};
use vhost_user_backend::{VhostUserBackend, VringRwLock, VringT};
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::event::{new_event_consumer_and_notifier, EventConsumer, EventFlag, EventNotifier};

use events::{EventQueue, ScsiEvent, EVENT_LEN};
use inflight::InflightQueue;
pub use limits::{VhostLimitHits, VhostLimits};
use virtio::*;
pub use virtio::{decode_lun, parse_cmd, BadChain, Buffers, ChainError};

use limits::HitCounters;

type Mem = GuestMemoryAtomic<GuestMemoryMmap>;
type Vring = VringRwLock<Mem>;

/// A request queue's own handle on the guest memory map (the map as of the
/// last SET_MEM_TABLE): each command clones it, on its queue's I/O thread,
/// so that the I/O path touches no reference count (and loads no
/// `ArcSwap`) shared between the I/O threads. Commands in flight keep the
/// map they started with.
#[derive(Clone)]
// The outer `Arc` is the point: a count of this queue's own.
#[allow(clippy::redundant_allocation)]
struct QueueMem(Arc<Arc<GuestMemoryMmap>>);

impl QueueMem {
    fn new(mem: &Mem) -> QueueMem {
        QueueMem(Arc::new(mem.memory().into_inner()))
    }

    fn get(&self) -> &GuestMemoryMmap {
        &self.0
    }
}
/// A request virtqueue's core queues, by LUN.
type LunMap = BTreeMap<u64, Arc<Queue>>;

/// Errors starting a controller.
#[derive(Debug, thiserror::Error)]
pub enum VhostError {
    #[error("cannot listen on {0}: {1}")]
    Listen(PathBuf, String),
    #[error("cannot open the queues of LUN {0}: {1}")]
    Queue(u64, lunar_target::TargetError),
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
/// A pass over a request ring notifies the driver every this many
/// completions (and once at its end): at QD32 on one queue, 16 served 1.4x
/// the 4 KiB IOPS of one notification per pass (the driver refills while
/// the device works), where 1 (every completion) lost 10% to the cost of
/// notifying, and 8 did no better than 16.
const NOTIFY_EVERY: u32 = 16;
/// The shortest poll: below it the I/O thread sleeps at once.
const POLL_MIN: Duration = Duration::from_micros(2);

/// `seg_max` of the config space: QEMU's default ring size minus 2 (fewer
/// if [`VhostLimits::max_chain_descriptors`] is below 128).
const SEG_MAX: u32 = 126;
/// The longest control queue request (a TMF: type, subtype, LUN, tag).
const CTRL_REQ_MAX: usize = 24;

/// Rate-limited logging of bad guest input ([`lunar_aio::LogLimit`]: at
/// most one line a second, which says how many were suppressed since the
/// last one; so does [`RateLimit::flush`] when a request queue stops).
struct RateLimit(lunar_aio::LogLimit);

impl RateLimit {
    fn new() -> Self {
        RateLimit(lunar_aio::LogLimit::default())
    }

    /// Logs the count of warnings suppressed since the last one logged, if any.
    fn flush(&self) {
        let n = self.0.take_suppressed();
        if n > 0 {
            tracing::warn!(suppressed = n, "vhost-user-scsi: bad requests from the guest not logged");
        }
    }

    fn warn(&self, what: &dyn std::fmt::Display) {
        if let Some(suppressed) = self.0.allow() {
            tracing::warn!(suppressed, "vhost-user-scsi: bad request from the guest: {what}");
        }
    }

    /// Every warning suppressed since the controller started.
    fn suppressed_total(&self) -> u64 {
        self.0.suppressed_total()
    }
}

/// What a controller shares between its queues (read-only on the I/O path
/// except for the error counter).
struct Shared {
    target: Arc<Target>,
    cdb_size: AtomicU32,
    sense_size: AtomicU32,
    log: RateLimit,
    /// The longest poll of a request ring ([`ControllerConfig::poll`]).
    poll: Duration,
    limits: VhostLimits,
    /// Limits the guest ran into (bumped only then).
    hits: HitCounters,
}

impl Shared {
    /// Logs (rate-limited) and counts a refused chain.
    fn refused(&self, e: &ChainError) {
        let counter = match e {
            ChainError::TooLong(_) => &self.hits.chain_too_long,
            ChainError::TooLarge { .. } => &self.hits.request_too_large,
            _ => &self.hits.bad_chain,
        };
        HitCounters::bump(counter);
        self.log.warn(e);
    }
}

/// A command in flight on a request virtqueue, and who waits for it.
struct Pending {
    lun: u64,
    tag: u64,
    /// A LOGICAL UNIT or I_T NEXUS RESET is cancelling it: if it ends
    /// aborted, the response is `VIRTIO_SCSI_S_RESET` (Linux retries it),
    /// not `S_ABORTED` (which is for ABORT TASK / ABORT TASK SET).
    reset: bool,
    waiters: Vec<oneshot::Sender<()>>,
}

/// A request virtqueue's kick eventfd as its I/O thread watches it: a task
/// on that thread's loop that processes the ring on every kick, until
/// `stop` (the ring stopped, or got another eventfd).
#[derive(Default)]
struct KickWatch {
    stop: AtomicBool,
    wake: Notify,
}

impl KickWatch {
    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }
}

/// Makes a kick eventfd non-blocking: its I/O thread must never block on
/// it (it reads it only once its loop says it is readable, and after a
/// reconnect the front-end's descriptor may be a blocking one).
fn set_nonblocking(fd: &EventConsumer) -> io::Result<()> {
    let raw = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor this function borrows (it stays open
    // for the call); F_GETFL/F_SETFL only read and set its status flags.
    let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// One request virtqueue.
struct RequestVq {
    shared: Arc<Shared>,
    /// Request queue number (virtqueue `index + 2`).
    index: usize,
    io_thread: usize,
    /// The core queues of this virtqueue, one per LUN, on `io_thread`: a
    /// snapshot the I/O thread clones once per kick, replaced whole by the
    /// main loop on hot plug (this virtqueue's lock, no other's).
    queues: Mutex<Arc<LunMap>>,
    mem: Mutex<Option<QueueMem>>,
    /// A processing job is scheduled on the I/O thread (coalesces kicks).
    scheduled: AtomicBool,
    /// The I/O thread is taking chains off the ring (`process` runs).
    busy: AtomicBool,
    /// The queue has [`VhostLimits::max_inflight_per_queue`] commands in
    /// the core: no chain is taken off the ring until one completes (and
    /// processes the ring again). Set and cleared only under the lock of
    /// `inflight`, when its size crosses the limit.
    throttled: AtomicBool,
    /// The watch of the kick eventfd on `io_thread`, while the ring runs.
    kick: Mutex<Option<Arc<KickWatch>>>,
    /// Commands in flight, by descriptor head.
    inflight: Mutex<HashMap<u16, Pending>>,
    /// Commands submitted to the core since the controller started
    /// (written only by `io_thread`).
    served: AtomicU64,
    /// A bottom half that notifies the driver of the used entries added so
    /// far is queued (one notification per batch of completions).
    notify_queued: AtomicBool,
    /// Completions since the driver was last notified (`io_thread` only).
    since_notify: AtomicU32,
    /// Inflight tracking of this ring (the front-end gave an inflight
    /// region), set when the ring starts.
    track: Mutex<Option<Arc<InflightQueue>>>,
    /// Heads a previous process left in flight, oldest first: submitted
    /// again before anything new is taken off the ring.
    resubmit: Mutex<Vec<u16>>,
}

impl RequestVq {
    fn lock_inflight(&self) -> std::sync::MutexGuard<'_, HashMap<u16, Pending>> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queues(&self) -> Arc<LunMap> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn tracker(&self) -> Option<Arc<InflightQueue>> {
        self.track.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The ring starts: its inflight tracking and the heads to resubmit.
    fn set_tracking(&self, tracker: Option<Arc<InflightQueue>>, resubmit: Vec<u16>) {
        *self.track.lock().unwrap_or_else(|e| e.into_inner()) = tracker;
        *self.resubmit.lock().unwrap_or_else(|e| e.into_inner()) = resubmit;
    }

    /// Takes the next chain off the available ring, and records its head
    /// as in flight in the same critical section (the ring's lock).
    fn pop(
        &self,
        vring: &Vring,
        mem: &QueueMem,
        tracker: Option<&InflightQueue>,
    ) -> Option<(u16, Result<Buffers, BadChain>)> {
        let mut ring = vring.get_mut();
        // Under the lock that GET_VRING_BASE takes to stop the ring: no
        // chain is taken off a stopped ring.
        if !ring.get_queue().ready() {
            return None;
        }
        let chain = ring.get_queue_mut().pop_descriptor_chain(mem.get())?;
        let head = chain.head_index();
        if let Some(t) = tracker {
            if let Err(e) = t.mark(head) {
                self.shared.log.warn(&e);
            }
        }
        drop(ring);
        let max = self.shared.limits.max_chain_descriptors;
        Some((head, Buffers::collect(chain.map(|d| (d.addr().0, d.len(), d.is_write_only())), max)))
    }

    /// Puts a chain on the used ring; with inflight tracking, the region's
    /// batch list, flag and used index around it, all under the ring's lock.
    fn add_used(&self, vring: &Vring, head: u16, len: u32) -> bool {
        let Some(t) = self.tracker() else { return vring.add_used(head, len).is_ok() };
        let mut ring = vring.get_mut();
        let done = t.complete(head, || {
            ring.add_used(head, len).ok()?;
            Some(ring.get_queue().next_used())
        });
        match done {
            Ok(done) => done,
            Err(e) => {
                self.shared.log.warn(&e);
                false
            }
        }
    }

    /// Puts a chain on the used ring and notifies the guest if it wants it.
    fn used_now(&self, vring: &Vring, head: u16, len: u32) {
        if self.add_used(vring, head, len) && vring.needs_notification().unwrap_or(true) {
            let _ = vring.signal_used_queue();
        }
    }

    /// Installs (`Some`) or drops (`None`) the core queue of `lun`; returns the old one.
    fn set_queue(&self, lun: u64, queue: Option<Arc<Queue>>) -> Option<Arc<Queue>> {
        let mut guard = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = LunMap::clone(&guard);
        let old = match queue {
            Some(q) => map.insert(lun, q),
            None => map.remove(&lun),
        };
        *guard = Arc::new(map);
        old
    }

    /// Registers a waiter for every command in flight matching `pred`
    /// (and marks them as cancelled by a reset if `reset`).
    fn waiters(&self, pred: impl Fn(&Pending) -> bool, reset: bool) -> Vec<oneshot::Receiver<()>> {
        let mut out = Vec::new();
        for p in self.lock_inflight().values_mut().filter(|p| pred(p)) {
            let (tx, rx) = oneshot::channel();
            p.waiters.push(tx);
            p.reset |= reset;
            out.push(rx);
        }
        out
    }

    /// On the I/O thread: takes every available chain and submits it;
    /// true if it stopped at the in-flight limit (chains may be left).
    fn process(self: &Arc<Self>, vring: &Vring) -> bool {
        self.busy.store(true, Ordering::Release);
        let throttled = self.process_ring(vring);
        self.busy.store(false, Ordering::Release);
        throttled
    }

    /// Has the ring processed on the I/O thread, once, soon (a job already
    /// scheduled and not yet started covers this call too).
    fn schedule_process(self: &Arc<Self>, vring: &Vring) {
        if self.scheduled.swap(true, Ordering::AcqRel) {
            return;
        }
        let (vq, vring) = (self.clone(), vring.clone());
        let job = move || {
            vq.scheduled.store(false, Ordering::Release);
            vq.process(&vring);
        };
        let scheduled = self.shared.target.contexts().get(self.io_thread).map(|c| c.schedule(job));
        if !matches!(scheduled, Some(Ok(()))) {
            self.scheduled.store(false, Ordering::Release);
        }
    }

    /// Requests this queue may have in the core at once: no limit if the
    /// configured one is not below the ring's size (looked at only when a
    /// limit below the largest ring is configured).
    fn inflight_cap(&self, vring: &Vring) -> usize {
        let max = self.shared.limits.max_inflight_per_queue as usize;
        if max >= MAX_QUEUE_SIZE || max >= vring.get_ref().get_queue().size() as usize {
            usize::MAX
        } else {
            max
        }
    }

    /// Watches the kick eventfd of `vring` on this virtqueue's I/O thread
    /// (replacing an earlier watch) and processes the ring there once (the
    /// kicks that came before). False if the eventfd cannot be watched there.
    fn watch_kick(self: &Arc<Self>, vring: &Vring) -> bool {
        self.unwatch_kick();
        let Some(fd) = vring.get_ref().get_kick().as_ref().map(|k| k.try_clone()) else { return true };
        let fd = match fd.and_then(|fd| set_nonblocking(&fd).map(|()| fd)) {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(queue = self.index, "vhost-user-scsi: cannot use the kick eventfd: {e}");
                return false;
            }
        };
        let Some(ctx) = self.shared.target.contexts().get(self.io_thread) else { return false };
        let watch = Arc::new(KickWatch::default());
        let (vq, ring, w) = (self.clone(), vring.clone(), watch.clone());
        if ctx.spawn(move || vq.kick_loop(fd, ring, w)).is_err() {
            return false;
        }
        *self.kick.lock().unwrap_or_else(|e| e.into_inner()) = Some(watch);
        true
    }

    fn unwatch_kick(&self) {
        if let Some(w) = self.kick.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.stop();
        }
    }

    /// The kick task, on the I/O thread: a kick is read and the ring
    /// processed right there (no other thread on the way).
    async fn kick_loop(self: Arc<Self>, fd: EventConsumer, vring: Vring, watch: Arc<KickWatch>) {
        // SAFETY: `AsyncFd` owns the `EventConsumer` (a duplicate of the
        // front-end's kick eventfd, this task's own): its descriptor stays
        // open and refers to the same eventfd until the `AsyncFd` is dropped.
        let fd = match unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) } {
            Ok(fd) => fd,
            Err(e) => {
                tracing::warn!(queue = self.index, "vhost-user-scsi: cannot watch the kick eventfd: {e}");
                return;
            }
        };
        let max = self.shared.poll;
        let mut window = max;
        loop {
            if watch.stop.load(Ordering::Acquire) {
                return;
            }
            // At the in-flight limit there is nothing to poll for: the
            // completion that frees a slot processes the ring again.
            let throttled = self.process(&vring);
            // Poll the ring a little before sleeping, as QEMU's I/O threads
            // do (adaptive `poll-max-ns`): a driver that posts its next batch
            // within the window costs no kick and no wake-up. Each round
            // yields, so completions and bottom halves on this thread run.
            // The window halves when polling finds nothing (a driver that
            // needs this CPU to post is not starved by it) and doubles when
            // a sleep ends sooner than the longest window.
            let polled = Instant::now();
            // The memory map once per window, not once per look.
            let mem = self.mem.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let mut more = false;
            while !throttled && polled.elapsed() < window && !watch.stop.load(Ordering::Acquire) {
                tokio::task::yield_now().await;
                if mem.as_ref().is_some_and(|m| has_available(&vring, m.get())) {
                    more = true;
                    break;
                }
            }
            if more {
                continue;
            }
            if !throttled {
                window /= 2;
                if window < POLL_MIN {
                    window = Duration::ZERO;
                }
            }
            let slept = Instant::now();
            tokio::select! {
                _ = watch.wake.notified() => {}
                ready = fd.readable() => match ready {
                    Ok(mut guard) => {
                        // One read takes the whole count: a burst of kicks is one wake-up.
                        let _ = guard.get_inner().consume();
                        guard.clear_ready();
                    }
                    Err(e) => {
                        tracing::warn!(queue = self.index, "vhost-user-scsi: kick eventfd: {e}");
                        return;
                    }
                },
            }
            if slept.elapsed() < max {
                window = (window * 2).clamp(POLL_MIN, max);
            }
        }
    }

    /// Takes chains off the ring until it is empty, or until the queue has
    /// its limit of commands in flight (then true: the completion that
    /// frees a slot calls this again; notifications stay off meanwhile).
    fn process_ring(self: &Arc<Self>, vring: &Vring) -> bool {
        let Some(mem) = self.mem.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return false };
        let luns = self.queues();
        let tracker = self.tracker();
        let cap = self.inflight_cap(vring);
        let resubmit = std::mem::take(&mut *self.resubmit.lock().unwrap_or_else(|e| e.into_inner()));
        if !resubmit.is_empty() {
            let (table, size) = {
                let r = vring.get_ref();
                (r.get_queue().desc_table(), r.get_queue().size())
            };
            let max = self.shared.limits.max_chain_descriptors;
            for head in resubmit {
                // Taken off the ring already (by the dead process): submitted
                // whatever the in-flight limit.
                let buffers = match chain_at(mem.get(), table, size, head, max.saturating_add(1)) {
                    Ok(d) => Buffers::collect(d.into_iter(), max),
                    Err(error) => Err(BadChain { error, partial: Buffers::default() }),
                };
                self.submit(vring, &mem, &luns, head, buffers, cap);
            }
        }
        // Once per pass (a completion clears it and processes the ring again).
        if self.throttled.load(Ordering::Acquire) {
            return true;
        }
        loop {
            let _ = vring.disable_notification();
            loop {
                if !vring.get_ref().get_queue().ready() {
                    return false;
                }
                let Some((head, buffers)) = self.pop(vring, &mem, tracker.as_deref()) else { break };
                if self.submit(vring, &mem, &luns, head, buffers, cap) {
                    return true;
                }
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                _ => break,
            }
        }
        false
    }

    /// Answers a chain refused before it reached the core: `header` in its
    /// response area if its writable buffers hold one (`resp_len` bytes),
    /// used length 0 otherwise.
    fn refuse(&self, vring: &Vring, mem: &QueueMem, head: u16, buffers: &Buffers, resp_len: u64, header: &[u8]) {
        let n =
            if buffers.writable_len() >= resp_len { buffers.write_at(mem.get(), 0, header).unwrap_or(0) } else { 0 };
        self.used_now(vring, head, n as u32);
    }

    /// Submits one chain to the core (or answers it at once if it is bad or
    /// over a limit); true if the queue now has `cap` commands in flight
    /// (the caller stops taking chains: [`RequestVq::throttled`]).
    fn submit(
        self: &Arc<Self>,
        vring: &Vring,
        mem: &QueueMem,
        luns: &LunMap,
        head: u16,
        buffers: Result<Buffers, BadChain>,
        cap: usize,
    ) -> bool {
        let sense_size = self.shared.sense_size.load(Ordering::Relaxed) as usize;
        let cdb_size = self.shared.cdb_size.load(Ordering::Relaxed) as usize;
        let resp_len = (RESP_HEADER + sense_size) as u64;
        let buffers = match buffers {
            Ok(b) => b,
            Err(BadChain { error, partial }) => {
                // Too long, or out of order: S_FAILURE if the buffers seen
                // before the refusal hold a response.
                self.shared.refused(&error);
                let r = encode_resp(&[], sense_size, 0, 0, S_FAILURE);
                self.refuse(vring, mem, head, &partial, resp_len, &r);
                return false;
            }
        };
        if buffers.writable_len() < resp_len {
            self.shared.refused(&ChainError::ShortResponse(buffers.writable_len() as usize));
            self.used_now(vring, head, 0);
            return false;
        }
        let fail = |response: u8, e: &ChainError| {
            self.shared.refused(e);
            let r = encode_resp(&[], sense_size, 0, 0, response);
            self.refuse(vring, mem, head, &buffers, resp_len, &r);
            false
        };
        // The header and CDB, then the data-out straight into its own
        // buffer (the one the core takes): one copy out of guest memory.
        let header_len = REQ_HEADER + cdb_size;
        let header = buffers.read_at(mem.get(), 0, header_len.min(buffers.readable_len() as usize));
        let (hdr, _) = match header.and_then(|h| parse_cmd(&h, cdb_size).map(|(hdr, _)| (hdr, ()))) {
            Ok(x) => x,
            Err(e) => return fail(S_FAILURE, &e),
        };
        let queue = match decode_lun(&hdr.lun) {
            Some((0, lun)) => luns.get(&lun),
            _ => None,
        };
        let Some(queue) = queue else {
            let r = encode_resp(&[], sense_size, 0, 0, S_BAD_TARGET);
            let n = buffers.write_at(mem.get(), 0, &r).unwrap_or(0);
            self.used_now(vring, head, n as u32);
            return false;
        };
        let limit = self.shared.limits.max_request_bytes;
        let bytes = buffers.readable_len().max(buffers.writable_len());
        if bytes > limit {
            // As the LU answers a transfer over its MAXIMUM TRANSFER LENGTH.
            self.shared.refused(&ChainError::TooLarge { bytes, limit });
            let descriptor = queue.device().disk().descriptor_sense();
            let sense = lunar_scsi::sense::INVALID_FIELD_IN_CDB.sense().encode(descriptor);
            let r = encode_resp(&sense, sense_size, 0, Status::CheckCondition.code(), S_OK);
            self.refuse(vring, mem, head, &buffers, resp_len, &r);
            return false;
        }
        let lun = queue.device().lun();
        let cdb = &hdr.cdb[..cdb_len(&hdr.cdb).min(hdr.cdb.len())];
        let data_in_cap = buffers.writable_len() - resp_len;
        // Only the data-out the CDB asks for (none for a CDB that does not
        // decode: the core refuses it), never more than the chain has: the
        // core is given, and the device holds, no more of the guest's
        // buffers than the command uses.
        // A command that does not decode or validate is left to the core
        // (it answers after the checks that come first); one whose data-out
        // alone is wrong (a COMPARE AND WRITE of zero blocks with data) is
        // answered here, as over iSCSI.
        let offered = (buffers.readable_len() - header_len as u64) as usize;
        let disk = queue.device().disk();
        let data_out_len = match lunar_scsi::Command::decode(cdb) {
            Ok(c) if offered > 0 && disk.validate(&c).is_ok() => match disk.data_out_checked(&c, offered) {
                Ok(n) => n.min(offered),
                Err(e) => {
                    let sense = e.sense().encode(disk.descriptor_sense());
                    let r = encode_resp(&sense, sense_size, 0, Status::CheckCondition.code(), S_OK);
                    self.refuse(vring, mem, head, &buffers, resp_len, &r);
                    return false;
                }
            },
            _ => 0,
        };
        let data_out = match buffers.read_at(mem.get(), header_len as u64, data_out_len) {
            Ok(d) => d,
            Err(e) => return fail(S_FAILURE, &e),
        };
        let full = {
            let mut inflight = self.lock_inflight();
            inflight.insert(head, Pending { lun, tag: hdr.tag, reset: false, waiters: Vec::new() });
            let full = inflight.len() >= cap;
            if full && !self.throttled.swap(true, Ordering::AcqRel) {
                HitCounters::bump(&self.shared.hits.inflight_throttled);
            }
            full
        };
        self.served.fetch_add(1, Ordering::Relaxed);
        let (me, vring, mem) = (self.clone(), vring.clone(), mem.clone());
        let request = lunar_target::request(hdr.tag, lun, cdb, data_out, move |resp| {
            me.complete(&vring, &mem, head, &buffers, data_in_cap, sense_size, resp);
        });
        queue.submit(request);
        full
    }

    /// On the queue's holder thread: writes the response and returns the chain.
    #[allow(clippy::too_many_arguments)]
    fn complete(
        self: &Arc<Self>,
        vring: &Vring,
        mem: &QueueMem,
        head: u16,
        buffers: &Buffers,
        data_in_cap: u64,
        sense_size: usize,
        resp: Response,
    ) {
        let m = mem.get();
        let response = match resp.status {
            Status::TaskAborted if self.lock_inflight().get(&head).is_some_and(|p| p.reset) => S_RESET,
            Status::TaskAborted => S_ABORTED,
            _ => S_OK,
        };
        let data = &resp.data[..resp.data.len().min(data_in_cap as usize)];
        let resp_len = (RESP_HEADER + sense_size) as u64;
        let written = match buffers.write_at(m, resp_len, data) {
            Ok(n) => n,
            Err(e) => {
                self.shared.log.warn(&e);
                0
            }
        };
        let residual = (data_in_cap - written as u64).min(u32::MAX as u64) as u32;
        let header = encode_resp(&resp.sense, sense_size, residual, resp.status.code(), response);
        let n = buffers.write_at(m, 0, &header).unwrap_or(0);
        self.used_batched(vring, head, (n + written) as u32);
        let (pending, resume) = {
            let mut inflight = self.lock_inflight();
            let pending = inflight.remove(&head);
            // The queue fell below the in-flight limit (an integer compare
            // on every completion; the flag only when it just did: the
            // size crosses the limit one removal at a time).
            let at_limit =
                pending.is_some() && inflight.len() + 1 == self.shared.limits.max_inflight_per_queue as usize;
            (pending, at_limit && self.throttled.swap(false, Ordering::AcqRel))
        };
        if resume {
            // The chains left on the ring are taken now, kick or no kick.
            self.schedule_process(vring);
        }
        if let Some(p) = pending {
            for w in p.waiters {
                let _ = w.send(());
            }
        }
    }

    /// Puts a completed chain in the used ring and notifies the driver.
    ///
    /// A notification wakes the driver (a vCPU interrupt), so completions
    /// share them: a bottom half queued behind the work already on the I/O
    /// thread notifies once for the completions of one pass over the ring.
    /// A long pass also notifies every [`NOTIFY_EVERY`] completions, so
    /// that the driver refills its ring while the rest of the pass is
    /// served instead of after it (with EVENT_IDX, only if the driver
    /// re-armed since the last one).
    fn used_batched(self: &Arc<Self>, vring: &Vring, head: u16, len: u32) {
        if !self.add_used(vring, head, len) {
            return;
        }
        if self.since_notify.fetch_add(1, Ordering::Relaxed) + 1 >= NOTIFY_EVERY {
            self.since_notify.store(0, Ordering::Relaxed);
            if vring.needs_notification().unwrap_or(true) {
                let _ = vring.signal_used_queue();
            }
        }
        if self.notify_queued.swap(true, Ordering::AcqRel) {
            return;
        }
        let (me, ring) = (self.clone(), vring.clone());
        let notify = move || {
            me.notify_queued.store(false, Ordering::Release);
            me.since_notify.store(0, Ordering::Relaxed);
            if ring.needs_notification().unwrap_or(true) {
                let _ = ring.signal_used_queue();
            }
        };
        let queued = self.shared.target.contexts().get(self.io_thread).map(|c| c.schedule(notify));
        if !matches!(queued, Some(Ok(()))) {
            self.notify_queued.store(false, Ordering::Release);
            let _ = vring.signal_used_queue();
        }
    }

    /// Waits (bounded) until no command is in flight (the ring is being stopped).
    fn drain(&self, timeout: Duration) {
        let end = Instant::now() + timeout;
        // First the chains being taken off (the ring is no longer ready:
        // no new ones), then the commands they became.
        while (self.scheduled.load(Ordering::Acquire) || self.busy.load(Ordering::Acquire)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        while !self.lock_inflight().is_empty() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Whether the driver posted chains not yet taken off the ring.
fn has_available(vring: &Vring, mem: &GuestMemoryMmap) -> bool {
    let ring = vring.get_ref();
    let q = ring.get_queue();
    q.ready() && q.avail_idx(mem, Ordering::Acquire).is_ok_and(|i| i.0 != q.next_avail())
}

/// Puts a chain on the used ring and notifies the guest if it wants it.
fn used(vring: &Vring, head: u16, len: u32) {
    if vring.add_used(head, len).is_err() {
        return;
    }
    if vring.needs_notification().unwrap_or(true) {
        let _ = vring.signal_used_queue();
    }
}

/// The event virtqueue as the other threads see it; its state (the events
/// not yet delivered) belongs to the event task on the main loop.
struct EventVq {
    /// The ring, kept from the first kick of a connection (the worker thread
    /// that relays the kick hands it over); `None` once it stopped.
    vring: Mutex<Option<Vring>>,
    /// The driver posted buffers (or the ring was reset, or the controller stops).
    kick: Notify,
    /// The ring was reset: the pending events are for a driver that is gone.
    reset: AtomicBool,
    stop: AtomicBool,
}

/// The vhost-user backend: one virtio-scsi device.
struct ScsiBackend {
    shared: Arc<Shared>,
    vqs: Vec<Arc<RequestVq>>,
    /// Guest memory for the control and event queues.
    ctrl_mem: Mutex<Option<Mem>>,
    /// Task management functions not yet answered.
    ctrl_pending: Arc<AtomicUsize>,
    /// The controller's I_T nexus (every core queue it opens).
    nexus: Nexus,
    /// LUNs exposed at start; with `hotplug`, every LUN added later too.
    initial: Vec<u64>,
    hotplug: bool,
    event: EventVq,
}

impl ScsiBackend {
    fn config_space(&self) -> [u8; CONFIG_LEN] {
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

    fn process_control(&self, vring: &Vring) {
        let Some(mem) = self.ctrl_mem.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return };
        loop {
            let _ = vring.disable_notification();
            loop {
                if !vring.get_ref().get_queue().ready() {
                    return;
                }
                let chain = vring.get_mut().get_queue_mut().pop_descriptor_chain(mem.memory());
                let Some(chain) = chain else { break };
                let head = chain.head_index();
                let max = self.shared.limits.max_chain_descriptors;
                match Buffers::collect(chain.map(|d| (d.addr().0, d.len(), d.is_write_only())), max) {
                    Ok(b) => self.control(vring, &mem, head, b),
                    Err(bad) => {
                        self.shared.refused(&bad.error);
                        used(vring, head, 0);
                    }
                }
            }
            match vring.enable_notification() {
                Ok(true) => continue,
                _ => break,
            }
        }
    }

    fn control(&self, vring: &Vring, mem: &Mem, head: u16, b: Buffers) {
        // The longest control request is a TMF's 24 bytes: nothing past
        // them is read (a guest's huge buffer claims no memory here).
        let len = b.readable_len().min(CTRL_REQ_MAX as u64) as usize;
        let bytes = match b.read_at(&*mem.memory(), 0, len) {
            Ok(x) => x,
            Err(e) => {
                self.shared.refused(&e);
                return used(vring, head, 0);
            }
        };
        let u32_at = |o: usize| bytes.get(o..o + 4).map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]));
        let reply = |data: &[u8]| {
            let n = b.write_at(&*mem.memory(), 0, data).unwrap_or(0);
            used(vring, head, n as u32);
        };
        match u32_at(0) {
            Some(T_TMF) if bytes.len() >= 24 && b.writable_len() >= 1 => {
                let subtype = u32_at(4).unwrap_or(u32::MAX);
                let mut lun = [0u8; 8];
                lun.copy_from_slice(&bytes[8..16]);
                let mut tag = [0u8; 8];
                tag.copy_from_slice(&bytes[16..24]);
                let tag = u64::from_le_bytes(tag);
                let lun = match decode_lun(&lun) {
                    Some((0, l)) if self.vqs.first().is_some_and(|v| v.queues().contains_key(&l)) => l,
                    _ => return reply(&[S_BAD_TARGET]),
                };
                self.tmf(vring, mem, head, b, subtype, lun, tag);
            }
            Some(T_AN_QUERY) | Some(T_AN_SUBSCRIBE) if bytes.len() >= 16 && b.writable_len() >= 5 => {
                // No asynchronous events supported: event_actual = 0.
                reply(&[0, 0, 0, 0, S_OK]);
            }
            _ => {
                HitCounters::bump(&self.shared.hits.bad_chain);
                self.shared.log.warn(&"bad control request");
                if b.writable_len() >= 1 && b.writable_len() < 5 {
                    reply(&[S_FAILURE]);
                } else {
                    used(vring, head, 0);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn tmf(&self, vring: &Vring, mem: &Mem, head: u16, b: Buffers, subtype: u32, lun: u64, tag: u64) {
        let reply = move |vring: &Vring, mem: &Mem, code: u8| {
            let n = b.write_at(&*mem.memory(), 0, &[code]).unwrap_or(0);
            used(vring, head, n as u32);
        };
        let all_luns = subtype == TMF_I_T_NEXUS_RESET;
        let matches = move |p: &Pending| (all_luns || p.lun == lun) && (subtype != TMF_ABORT_TASK || p.tag == tag);
        match subtype {
            TMF_QUERY_TASK | TMF_QUERY_TASK_SET => {
                let found = self.vqs.iter().any(|v| v.lock_inflight().values().any(&matches));
                reply(vring, mem, if found { S_FUNCTION_SUCCEEDED } else { S_FUNCTION_COMPLETE })
            }
            TMF_ABORT_TASK | TMF_ABORT_TASK_SET | TMF_CLEAR_TASK_SET | TMF_I_T_NEXUS_RESET | TMF_LOGICAL_UNIT_RESET => {
                let mut waits = Vec::new();
                for v in &self.vqs {
                    waits.extend(v.waiters(matches, matches!(subtype, TMF_I_T_NEXUS_RESET | TMF_LOGICAL_UNIT_RESET)));
                }
                let mut cancel = Vec::new();
                for v in &self.vqs {
                    for (l, q) in v.queues().iter() {
                        if all_luns || *l == lun {
                            cancel.push(q.clone());
                        }
                    }
                }
                // I_T NEXUS RESET is an I_T nexus loss for every LU (SAM-5
                // 6.3.4): SPC-2 reservations of the nexus released, its held
                // copy results dropped, I_T NEXUS LOSS OCCURRED (29h/07h) to
                // report once on every LUN (the LUN's queues of every
                // virtqueue share the nexus's unit attentions: whichever the
                // guest sends on next reports it).
                let nexus_lost: Vec<Arc<Queue>> = if subtype == TMF_I_T_NEXUS_RESET {
                    self.vqs.iter().flat_map(|v| v.queues().values().cloned().collect::<Vec<_>>()).collect()
                } else {
                    Vec::new()
                };
                let target = self.shared.target.clone();
                let (vring, mem, pending) = (vring.clone(), mem.clone(), self.ctrl_pending.clone());
                pending.fetch_add(1, Ordering::AcqRel);
                let run = move || async move {
                    if subtype == TMF_LOGICAL_UNIT_RESET {
                        if let Err(e) = target.reset_device(lun).await {
                            tracing::warn!(lun, "LUN reset: {e}");
                        }
                    } else {
                        for q in cancel {
                            q.cancel_where(move |r: &Request| subtype != TMF_ABORT_TASK || r.tag == tag);
                        }
                    }
                    let waited = waits.len();
                    for w in waits {
                        let _ = w.await;
                    }
                    // The unit attentions are in place when `push_unit_attention`
                    // returns, before the guest hears the reset is done.
                    let mut released = std::collections::BTreeSet::new();
                    for q in nexus_lost {
                        if released.insert(q.device().lun()) {
                            q.nexus_lost(true);
                        }
                    }
                    reply(&vring, &mem, S_FUNCTION_COMPLETE);
                    tracing::info!(lun, tmf = tmf_name(subtype), waited, "vhost-user-scsi: task management done");
                    pending.fetch_sub(1, Ordering::AcqRel);
                };
                if self.shared.target.contexts().main_loop().spawn(run).is_err() {
                    self.ctrl_pending.fetch_sub(1, Ordering::AcqRel);
                }
            }
            _ => reply(vring, mem, S_FUNCTION_REJECTED),
        }
    }
}

/// Hot plug: the event queue and the LUN tables, all on the main loop.
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
async fn event_task(
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

fn tmf_name(subtype: u32) -> &'static str {
    match subtype {
        TMF_ABORT_TASK => "ABORT TASK",
        TMF_ABORT_TASK_SET => "ABORT TASK SET",
        TMF_CLEAR_TASK_SET => "CLEAR TASK SET",
        TMF_I_T_NEXUS_RESET => "I_T NEXUS RESET",
        TMF_LOGICAL_UNIT_RESET => "LOGICAL UNIT RESET",
        _ => "?",
    }
}

impl VhostUserBackend for ScsiBackend {
    type Bitmap = ();
    type Vring = Vring;

    fn num_queues(&self) -> usize {
        self.vqs.len() + 2
    }

    fn max_queue_size(&self) -> usize {
        MAX_QUEUE_SIZE
    }

    fn features(&self) -> u64 {
        (1 << VIRTIO_F_VERSION_1)
            | (1 << VIRTIO_RING_F_INDIRECT_DESC)
            | (1 << VIRTIO_RING_F_EVENT_IDX)
            | (1 << VIRTIO_SCSI_F_HOTPLUG)
            | (1 << VIRTIO_SCSI_F_CHANGE)
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    fn protocol_features(&self) -> VhostUserProtocolFeatures {
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::INFLIGHT_SHMFD
    }

    fn set_event_idx(&self, _enabled: bool) {}

    fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        let c = self.config_space();
        let start = (offset as usize).min(c.len());
        let end = start.saturating_add(size as usize).min(c.len());
        c[start..end].to_vec()
    }

    fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
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

    fn update_memory(&self, mem: Mem) -> io::Result<()> {
        for v in &self.vqs {
            *v.mem.lock().unwrap_or_else(|e| e.into_inner()) = Some(QueueMem::new(&mem));
        }
        *self.ctrl_mem.lock().unwrap_or_else(|e| e.into_inner()) = Some(mem);
        Ok(())
    }

    fn queues_per_thread(&self) -> Vec<u64> {
        // Control and event queues on one worker; each request queue on its own.
        let mut v = vec![0b11];
        v.extend((0..self.vqs.len()).map(|i| 1u64 << (i + 2)));
        v
    }

    /// Each worker gets an exit eventfd, so that dropping a connection's
    /// handler ends its workers.
    fn exit_event(&self, _thread_index: usize) -> Option<(EventConsumer, EventNotifier)> {
        new_event_consumer_and_notifier(EventFlag::NONBLOCK | EventFlag::CLOEXEC).ok()
    }

    fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
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
        Ok(())
    }

    /// `vhost-user-backend` numbers events and vrings per worker thread:
    /// worker 0 has the control (event 0) and event (event 1) queues, worker
    /// `k >= 1` has request queue `k - 1` alone (event 0).
    fn handle_event(&self, device_event: u16, evset: EventSet, vrings: &[Vring], thread: usize) -> io::Result<()> {
        if evset != EventSet::IN {
            return Ok(());
        }
        if thread == 0 {
            match (device_event, vrings) {
                (0, [control, ..]) => self.process_control(control),
                (1, [_, event, ..]) => {
                    // Relay to the event task, which owns the event queue.
                    let mut slot = self.event.vring.lock().unwrap_or_else(|e| e.into_inner());
                    if slot.is_none() {
                        *slot = Some(event.clone());
                    }
                    drop(slot);
                    self.event.kick.notify_one();
                }
                _ => {}
            }
            return Ok(());
        }
        let (Some(vq), Some(vring)) = (self.vqs.get(thread - 1), vrings.first()) else { return Ok(()) };
        if device_event == 0 {
            vq.schedule_process(vring);
        }
        Ok(())
    }
}

/// A running vhost-user-scsi controller: listens on its socket and serves
/// one frontend (QEMU) at a time; a frontend that goes away may reconnect.
pub struct Controller {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<UnixStream>>>,
    thread: Option<JoinHandle<()>>,
    backend: Arc<ScsiBackend>,
    /// Closed (or sent on) when the event task ends.
    event_task: Option<std::sync::mpsc::Receiver<()>>,
}

impl Controller {
    /// Opens the core queues (request queue `i` on I/O thread
    /// `i % io_threads + 1`) and starts listening; returns once the socket
    /// accepts connections. Blocking: call it off the I/O threads.
    pub fn start(target: Arc<Target>, config: ControllerConfig) -> Result<Controller, VhostError> {
        if !(1..=1022).contains(&config.num_queues) {
            return Err(VhostError::NumQueues(config.num_queues));
        }
        config.limits.validate()?;
        let shared = Arc::new(Shared {
            target: target.clone(),
            cdb_size: AtomicU32::new(DEFAULT_CDB_SIZE),
            sense_size: AtomicU32::new(DEFAULT_SENSE_SIZE),
            log: RateLimit::new(),
            poll: config.poll,
            limits: config.limits,
            hits: HitCounters::default(),
        });
        let nexus = Nexus::new(format!("vhost-user:{}", config.socket.display()), 1);
        let threads = target.io_threads().max(1);
        // Subscribe before listing the LUNs: a LUN added meanwhile is seen
        // at least once (attaching twice is a no-op).
        let events = target.events();
        let initial: Vec<u64> =
            target.luns().into_iter().filter(|lun| config.luns.as_ref().is_none_or(|l| l.contains(lun))).collect();
        let mut vqs = Vec::new();
        for i in 0..config.num_queues {
            let io_thread = i % threads + 1;
            let mut queues = BTreeMap::new();
            for &lun in &initial {
                let q = lunar_target::wait(target.open_queue_for(lun, io_thread, Some(nexus.clone())))
                    .map_err(|e| VhostError::Queue(lun, e))?;
                queues.insert(lun, q);
            }
            vqs.push(Arc::new(RequestVq {
                shared: shared.clone(),
                index: i,
                io_thread,
                queues: Mutex::new(Arc::new(queues)),
                mem: Mutex::new(None),
                scheduled: AtomicBool::new(false),
                busy: AtomicBool::new(false),
                throttled: AtomicBool::new(false),
                kick: Mutex::new(None),
                inflight: Mutex::new(HashMap::new()),
                served: AtomicU64::new(0),
                notify_queued: AtomicBool::new(false),
                since_notify: AtomicU32::new(0),
                track: Mutex::new(None),
                resubmit: Mutex::new(Vec::new()),
            }));
        }
        let backend = Arc::new(ScsiBackend {
            shared,
            vqs,
            ctrl_mem: Mutex::new(None),
            ctrl_pending: Arc::new(AtomicUsize::new(0)),
            nexus,
            initial,
            hotplug: config.hotplug,
            event: EventVq {
                vring: Mutex::new(None),
                kick: Notify::new(),
                reset: AtomicBool::new(false),
                stop: AtomicBool::new(false),
            },
        });
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        {
            let backend = backend.clone();
            target
                .contexts()
                .main_loop()
                .spawn(move || event_task(backend, events, done_tx))
                .map_err(|e| VhostError::Thread(io::Error::other(e.to_string())))?;
        }
        let mut listener = Listener::new(&config.socket, true)
            .map_err(|e| VhostError::Listen(config.socket.clone(), e.to_string()))?;
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, current, backend) = (stop.clone(), current.clone(), backend.clone());
            let name = format!("vhost-user {}", config.socket.display());
            std::thread::Builder::new()
                .name("vhost-listen".into())
                .spawn(move || serve(&mut listener, &name, backend, &stop, &current))
                .map_err(VhostError::Thread)?
        };
        tracing::info!(socket = %config.socket.display(), queues = config.num_queues, "vhost-user-scsi controller listening");
        Ok(Controller {
            socket: config.socket,
            stop,
            current,
            thread: Some(thread),
            backend,
            event_task: Some(done_rx),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The LUNs the guest can use now (hot plug included).
    pub fn luns(&self) -> Vec<u64> {
        self.backend.vqs.first().map(|v| v.queues().keys().copied().collect()).unwrap_or_default()
    }

    /// Commands each request queue submitted to the core since the start.
    pub fn requests_served(&self) -> Vec<u64> {
        self.backend.vqs.iter().map(|v| v.served.load(Ordering::Relaxed)).collect()
    }

    /// The controller's limits ([`ControllerConfig::limits`]).
    pub fn limits(&self) -> VhostLimits {
        self.backend.shared.limits
    }

    /// How many times the guest ran into a limit, or sent a malformed
    /// request, since the controller started.
    pub fn limit_hits(&self) -> VhostLimitHits {
        let shared = &self.backend.shared;
        shared.hits.snapshot(shared.log.suppressed_total())
    }

    /// [`Controller::limit_hits`] for the control plane, which outlives no
    /// controller but does not own them.
    pub fn limit_hits_probe(&self) -> Arc<dyn Fn() -> VhostLimitHits + Send + Sync> {
        let backend = self.backend.clone();
        Arc::new(move || {
            let shared = &backend.shared;
            shared.hits.snapshot(shared.log.suppressed_total())
        })
    }

    /// Disconnects the frontend, stops listening, closes the core queues.
    pub fn shutdown(mut self) {
        self.stop_thread();
        let target = self.backend.shared.target.clone();
        for v in &self.backend.vqs {
            for q in v.queues().values() {
                let _ = lunar_target::wait(target.close_queue(q.clone()));
            }
        }
    }

    /// Ends the event task (it may be attaching a LUN: bounded wait).
    fn stop_events(&mut self) {
        self.backend.event.stop.store(true, Ordering::Release);
        self.backend.event.kick.notify_one();
        if let Some(done) = self.event_task.take() {
            let _ = done.recv_timeout(Duration::from_secs(10));
        }
    }

    fn stop_thread(&mut self) {
        self.stop_events();
        self.stop.store(true, Ordering::Release);
        if let Some(c) = self.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // Wake a listener blocked in accept().
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_thread();
        }
    }
}

fn serve(
    listener: &mut Listener,
    name: &str,
    backend: Arc<ScsiBackend>,
    stop: &AtomicBool,
    current: &Mutex<Option<UnixStream>>,
) {
    while !stop.load(Ordering::Acquire) {
        let conn = match connection::Connection::new(backend.clone()) {
            Ok(c) => Arc::new(Mutex::new(c)),
            Err(e) => {
                tracing::error!("vhost-user: cannot set up a connection: {e}");
                return;
            }
        };
        let accepted = BackendListener::new(listener, conn.clone()).and_then(|mut l| l.accept());
        let mut handler = match accepted {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!("vhost-user: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        *current.lock().unwrap_or_else(|e| e.into_inner()) = handler.try_clone_connection().ok();
        if stop.load(Ordering::Acquire) {
            break;
        }
        tracing::info!("{name}: frontend connected");
        let why = loop {
            if let Err(e) = handler.handle_request() {
                break e;
            }
        };
        tracing::info!("{name}: frontend gone: {why}");
        *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        conn.lock().unwrap_or_else(|e| e.into_inner()).stop();
        for v in &backend.vqs {
            v.drain(Duration::from_secs(30));
            *v.mem.lock().unwrap_or_else(|e| e.into_inner()) = None;
            v.set_tracking(None, Vec::new());
        }
        *backend.ctrl_mem.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *backend.event.vring.lock().unwrap_or_else(|e| e.into_inner()) = None;
        backend.event.reset.store(true, Ordering::Release);
        backend.event.kick.notify_one();
    }
}

#[cfg(test)]
mod tests;

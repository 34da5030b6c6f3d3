//! A request virtqueue, served by one Lunar I/O thread: descriptor chains
//! taken off the ring, submitted to the core queues of that thread, and
//! answered from the completions the core runs there.

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lunar_core::{Queue, Response};
use lunar_scsi::Status;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tokio::sync::Notify;
use vhost_user_backend::VringT;
use virtio_queue::QueueT;
use vm_memory::{GuestAddressSpace, GuestMemoryMmap};
use vmm_sys_util::event::EventConsumer;

use crate::inflight::InflightQueue;
use crate::limits::HitCounters;
use crate::pending::{Admit, Pending, PendingTable};
use crate::virtio::*;
use crate::{ControllerState, Mem, Vring, MAX_QUEUE_SIZE};

/// A pass over a request ring notifies the driver every this many
/// completions (and once at its end): at QD32 on one queue, 16 served 1.4x
/// the 4 KiB IOPS of one notification per pass (the driver refills while
/// the device works), where 1 (every completion) lost 10% to the cost of
/// notifying, and 8 did no better than 16.
pub(crate) const NOTIFY_EVERY: u32 = 16;
thread_local! {
    /// The request queue (its address) whose pass over its ring runs on
    /// this thread now, if any: a command completed inside the pass is
    /// notified by the pass's end.
    static IN_PASS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The shortest poll: below it the I/O thread sleeps at once.
const POLL_MIN: Duration = Duration::from_micros(2);
/// How long a poll spins on the ring between yields to its thread's loop.
const SPIN: Duration = Duration::from_micros(20);

/// A request queue's own handle on the guest memory map (the map as of the
/// last SET_MEM_TABLE): each command clones it, on its queue's I/O thread,
/// so that the I/O path touches no reference count (and loads no
/// `ArcSwap`) shared between the I/O threads. Commands in flight keep the
/// map they started with.
#[derive(Clone)]
// The outer `Arc` is the point: a count of this queue's own.
#[allow(clippy::redundant_allocation)]
pub(crate) struct QueueMem(Arc<Arc<GuestMemoryMmap>>);

impl QueueMem {
    pub(crate) fn new(mem: &Mem) -> QueueMem {
        QueueMem(Arc::new(mem.memory().into_inner()))
    }

    pub(crate) fn get(&self) -> &GuestMemoryMmap {
        &self.0
    }

    /// A handle that keeps this map (its regions mapped) alive: this
    /// queue's count, for memory lent to the core.
    pub(crate) fn handle(&self) -> Arc<dyn Send + Sync> {
        self.0.clone()
    }
}
/// Whether a pass over a ring ends with the driver's notifications on
/// (kicks wanted) or leaves them off for its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Notifications {
    On,
    Off,
}

/// What the commands of one pass over a ring share.
pub(crate) struct Pass {
    mem: QueueMem,
    luns: Arc<LunMap>,
    tracker: Option<Arc<InflightQueue>>,
    cap: usize,
}

/// How to answer a command: its chain and what the response may hold.
pub(crate) struct Answer<'a> {
    head: u16,
    buffers: &'a Buffers,
    data_in_cap: u64,
    sense_size: usize,
    tracker: Option<&'a InflightQueue>,
}

/// A request virtqueue's core queues, by LUN.
pub(crate) type LunMap = BTreeMap<u64, Arc<Queue>>;

/// A request virtqueue's kick eventfd as its I/O thread watches it: a task
/// on that thread's loop that processes the ring on every kick, until
/// `stop` (the ring stopped, or got another eventfd).
#[derive(Default)]
pub(crate) struct KickWatch {
    pub(crate) stop: AtomicBool,
    pub(crate) wake: Notify,
}

impl KickWatch {
    pub(crate) fn stop(&self) {
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
pub(crate) struct RequestVq {
    pub(crate) shared: Arc<ControllerState>,
    /// Request queue number (virtqueue `index + 2`).
    pub(crate) index: usize,
    pub(crate) io_thread: usize,
    /// The core queues of this virtqueue, one per LUN, on `io_thread`: a
    /// snapshot the I/O thread clones once per kick, replaced whole by the
    /// main loop on hot plug (this virtqueue's lock, no other's).
    pub(crate) queues: Mutex<Arc<LunMap>>,
    pub(crate) mem: Mutex<Option<QueueMem>>,
    /// A processing job is scheduled on the I/O thread (coalesces kicks).
    pub(crate) scheduled: AtomicBool,
    /// The I/O thread is taking chains off the ring (`process` runs).
    pub(crate) busy: AtomicBool,
    /// The watch of the kick eventfd on `io_thread`, while the ring runs.
    pub(crate) kick: Mutex<Option<Arc<KickWatch>>>,
    /// Commands in flight, by descriptor head (no lock: `pending.rs`), and
    /// whether the queue is at [`VhostLimits::max_inflight_per_queue`].
    pub(crate) inflight: PendingTable,
    /// Commands submitted to the core since the controller started
    /// (written only by `io_thread`).
    pub(crate) served: AtomicU64,
    /// A bottom half that notifies the driver of the used entries added so
    /// far is queued (one notification per batch of completions).
    pub(crate) notify_queued: AtomicBool,
    /// A command completed inside the pass running on the I/O thread (only
    /// that thread reads or writes it, while its pass runs).
    pub(crate) completed_in_pass: AtomicBool,
    /// Completions since the driver was last notified (`io_thread` only).
    pub(crate) since_notify: AtomicU32,
    /// Inflight tracking of this ring (the front-end gave an inflight
    /// region), set when the ring starts.
    pub(crate) track: Mutex<Option<Arc<InflightQueue>>>,
    /// Heads a previous process left in flight, oldest first: submitted
    /// again before anything new is taken off the ring.
    pub(crate) resubmit: Mutex<Vec<u16>>,
}

impl RequestVq {
    pub(crate) fn queues(&self) -> Arc<LunMap> {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn tracker(&self) -> Option<Arc<InflightQueue>> {
        self.track.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The ring starts: its inflight tracking and the heads to resubmit.
    pub(crate) fn set_tracking(&self, tracker: Option<Arc<InflightQueue>>, resubmit: Vec<u16>) {
        *self.track.lock().unwrap_or_else(|e| e.into_inner()) = tracker;
        *self.resubmit.lock().unwrap_or_else(|e| e.into_inner()) = resubmit;
    }

    /// Takes the next chain off the available ring, and records its head
    /// as in flight in the same critical section (the ring's lock).
    pub(crate) fn pop(
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
    pub(crate) fn add_used(&self, vring: &Vring, head: u16, len: u32) -> bool {
        self.add_used_tracked(vring, head, len, self.tracker().as_deref())
    }

    /// [`RequestVq::add_used`] with the tracking the command was taken
    /// under (its pass's, so the completion takes no lock for it).
    pub(crate) fn add_used_tracked(&self, vring: &Vring, head: u16, len: u32, tracker: Option<&InflightQueue>) -> bool {
        let Some(t) = tracker else { return vring.add_used(head, len).is_ok() };
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
    pub(crate) fn used_now(&self, vring: &Vring, head: u16, len: u32) {
        if self.add_used(vring, head, len) && vring.needs_notification().unwrap_or(true) {
            let _ = vring.signal_used_queue();
        }
    }

    /// Installs (`Some`) or drops (`None`) the core queue of `lun`; returns the old one.
    pub(crate) fn set_queue(&self, lun: u64, queue: Option<Arc<Queue>>) -> Option<Arc<Queue>> {
        let mut guard = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        let mut map = LunMap::clone(&guard);
        let old = match queue {
            Some(q) => map.insert(lun, q),
            None => map.remove(&lun),
        };
        *guard = Arc::new(map);
        old
    }

    /// Marks the commands in flight matching `pred` as cancelled by a
    /// reset: if they end aborted, the answer is `VIRTIO_SCSI_S_RESET`.
    pub(crate) fn mark_reset(&self, pred: impl Fn(&Pending) -> bool) {
        self.inflight.mark_reset(pred);
    }

    /// On the I/O thread: takes every available chain and submits it;
    /// true if it stopped at the in-flight limit (chains may be left).
    pub(crate) fn process(self: &Arc<Self>, vring: &Vring) -> bool {
        self.process_then(vring, Notifications::On)
    }

    /// [`RequestVq::process`], leaving the driver's notifications off when
    /// told (`Off`): the caller polls the ring next and turns them on
    /// before it sleeps, so a driver posting meanwhile need not kick.
    pub(crate) fn process_then(self: &Arc<Self>, vring: &Vring, after: Notifications) -> bool {
        self.busy.store(true, Ordering::Release);
        let outer = IN_PASS.replace(Arc::as_ptr(self) as usize);
        let throttled = self.process_ring(vring, after);
        IN_PASS.set(outer);
        self.busy.store(false, Ordering::Release);
        // The completions of the pass (commands answered at once) are
        // notified together, now.
        if self.completed_in_pass.load(Ordering::Relaxed) {
            self.completed_in_pass.store(false, Ordering::Relaxed);
            self.since_notify.store(0, Ordering::Relaxed);
            if vring.needs_notification().unwrap_or(true) {
                let _ = vring.signal_used_queue();
            }
        }
        throttled
    }

    /// Has the ring processed on the I/O thread, once, soon (a job already
    /// scheduled and not yet started covers this call too).
    pub(crate) fn schedule_process(self: &Arc<Self>, vring: &Vring) {
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
    pub(crate) fn inflight_cap(&self, vring: &Vring) -> usize {
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
    pub(crate) fn watch_kick(self: &Arc<Self>, vring: &Vring) -> bool {
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

    pub(crate) fn unwatch_kick(&self) {
        if let Some(w) = self.kick.lock().unwrap_or_else(|e| e.into_inner()).take() {
            w.stop();
        }
    }

    /// The kick task, on the I/O thread: a kick is read and the ring
    /// processed right there (no other thread on the way).
    pub(crate) async fn kick_loop(self: Arc<Self>, fd: EventConsumer, vring: Vring, watch: Arc<KickWatch>) {
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
            let throttled = self.process_then(&vring, Notifications::Off);
            // Poll the ring a little before sleeping, as QEMU's I/O threads
            // do (adaptive `poll-max-ns`): a driver that posts its next batch
            // within the window costs no kick and no wake-up. The window
            // follows the driver: after a sleep that a kick ended sooner
            // than the longest window, it is twice the time the request
            // took to come (so a steady QD1 driver is caught by polling);
            // it halves when polling finds nothing (a driver that needs
            // this CPU to post is not starved by it, and an idle queue stops
            // polling within a few windows).
            let polled = Instant::now();
            // The memory map once per window, not once per look.
            let mem = self.mem.lock().unwrap_or_else(|e| e.into_inner()).clone();
            let look = || mem.as_ref().is_some_and(|m| has_available(&vring, m.get()));
            let mut more = false;
            while !throttled && polled.elapsed() < window && !watch.stop.load(Ordering::Acquire) {
                // Yield first: the notification of the pass just served is
                // a bottom half of this thread, and so are completions.
                tokio::task::yield_now().await;
                // Then spin: a yield costs a system call (the runtime looks
                // for I/O events), a look at the ring does not.
                let spin_end = (Instant::now() + SPIN).min(polled + window);
                loop {
                    more = look();
                    if more || Instant::now() >= spin_end {
                        break;
                    }
                    std::hint::spin_loop();
                }
                if more {
                    break;
                }
            }
            if more {
                continue;
            }
            // Notifications back on before sleeping; what the driver posted
            // just before that is taken now (it did not kick for it).
            // (Not on a ring being stopped: its memory is no longer ours to write.)
            let running = !watch.stop.load(Ordering::Acquire) && vring.get_ref().get_queue().ready();
            if running && !throttled && matches!(vring.enable_notification(), Ok(true)) {
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
            // The time from the end of the pass to this wake-up: how long
            // the driver took to post (a kick) or a completion to arrive.
            let gap = polled.elapsed();
            if slept.elapsed() < max {
                window = (gap * 2).max(window * 2).clamp(POLL_MIN, max);
            }
        }
    }

    /// Takes chains off the ring until it is empty, or until the queue has
    /// its limit of commands in flight (then true: the completion that
    /// frees a slot calls this again; notifications stay off meanwhile).
    pub(crate) fn process_ring(self: &Arc<Self>, vring: &Vring, after: Notifications) -> bool {
        // What the commands of this pass share: taken once, under this
        // virtqueue's locks, not once per command.
        let Some(mem) = self.mem.lock().unwrap_or_else(|e| e.into_inner()).clone() else { return false };
        let pass = Pass { mem, luns: self.queues(), tracker: self.tracker(), cap: self.inflight_cap(vring) };
        let mem = &pass.mem;
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
                self.submit(vring, &pass, head, buffers);
            }
        }
        // Once per pass (a completion clears it and processes the ring again).
        if self.inflight.throttled() {
            return true;
        }
        loop {
            let _ = vring.disable_notification();
            loop {
                if !vring.get_ref().get_queue().ready() {
                    return false;
                }
                let Some((head, buffers)) = self.pop(vring, mem, pass.tracker.as_deref()) else { break };
                if self.submit(vring, &pass, head, buffers) {
                    return true;
                }
            }
            if after == Notifications::Off {
                break;
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
    pub(crate) fn refuse(
        &self,
        vring: &Vring,
        mem: &QueueMem,
        head: u16,
        buffers: &Buffers,
        resp_len: u64,
        header: &[u8],
    ) {
        let n =
            if buffers.writable_len() >= resp_len { buffers.write_at(mem.get(), 0, header).unwrap_or(0) } else { 0 };
        self.used_now(vring, head, n as u32);
    }

    /// Submits one chain to the core (or answers it at once if it is bad or
    /// over a limit); true if the queue now has `cap` commands in flight
    /// (the caller stops taking chains: [`PendingTable::throttled`]).
    pub(crate) fn submit(
        self: &Arc<Self>,
        vring: &Vring,
        pass: &Pass,
        head: u16,
        buffers: Result<Buffers, BadChain>,
    ) -> bool {
        let (mem, luns, cap) = (&pass.mem, &*pass.luns, pass.cap);
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
        // On the stack for the default CDB size.
        let mut header = smallvec::SmallVec::<[u8; REQ_HEADER + 32]>::new();
        let read = buffers.read_into(mem.get(), 0, header_len.min(buffers.readable_len() as usize), |n| {
            header.resize(n, 0);
            &mut header[..]
        });
        let (hdr, _) = match read.and_then(|()| parse_cmd(&header, cdb_size).map(|(hdr, _)| (hdr, ()))) {
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
        let cdb = &hdr.cdb[..lunar_scsi::cdb_length(&hdr.cdb).min(hdr.cdb.len())];
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
        // Read by the backend straight from the guest's buffer when it is
        // one piece of guest memory, else copied out of the chain.
        let data_out = match crate::lent::lend_readable(mem, &buffers, header_len as u64, data_out_len) {
            Some(lent) => lent,
            None => match buffers.read_at(mem.get(), header_len as u64, data_out_len) {
                Ok(d) => d.into(),
                Err(e) => return fail(S_FAILURE, &e),
            },
        };
        let full = self.inflight.insert(head, Pending { lun, tag: hdr.tag, reset: false }, cap) == Admit::Full;
        if full {
            HitCounters::bump(&self.shared.hits.inflight_throttled);
        }
        // Written by this I/O thread only: a load and a store, no locked add.
        self.served.store(self.served.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
        // The data-in area is lent to the core: a READ lands in the guest's
        // buffers straight from the backend.
        let lent =
            if data_in_cap > 0 { crate::lent::lend_writable(mem, &buffers, resp_len, data_in_cap) } else { None };
        let (me, vring, mem, tracker) = (self.clone(), vring.clone(), mem.clone(), pass.tracker.clone());
        let mut request = lunar_core::request(hdr.tag, lun, cdb, data_out, move |resp| {
            let answer = Answer { head, buffers: &buffers, data_in_cap, sense_size, tracker: tracker.as_deref() };
            me.complete(&vring, &mem, answer, resp);
        });
        if let Some(lent) = lent {
            request = request.with_data_in(lent);
        }
        queue.submit(request);
        full
    }

    /// On the queue's holder thread: writes the response and returns the chain.
    pub(crate) fn complete(self: &Arc<Self>, vring: &Vring, mem: &QueueMem, a: Answer<'_>, resp: Response) {
        let Answer { head, buffers, data_in_cap, sense_size, tracker } = a;
        let m = mem.get();
        let response = match resp.status {
            Status::TaskAborted if self.inflight.is_reset(head) => S_RESET,
            Status::TaskAborted => S_ABORTED,
            _ => S_OK,
        };
        let data = &resp.data[..resp.data.len().min(data_in_cap as usize)];
        let resp_len = (RESP_HEADER + sense_size) as u64;
        let written = if data.is_empty() {
            // In the guest's buffers already (lent to the core), or none.
            resp.placed.min(data_in_cap as usize)
        } else {
            match buffers.write_at(m, resp_len, data) {
                Ok(n) => n,
                Err(e) => {
                    self.shared.log.warn(&e);
                    0
                }
            }
        };
        let residual = (data_in_cap - written as u64).min(u32::MAX as u64) as u32;
        let header = encode_resp(&resp.sense, sense_size, residual, resp.status.code(), response);
        let n = buffers.write_at(m, 0, &header).unwrap_or(0);
        self.used_batched(vring, head, (n + written) as u32, tracker);
        // True when this took the queue below its in-flight limit, at which
        // it had stopped taking chains.
        if self.inflight.remove(head) {
            // The chains left on the ring are taken now, kick or no kick.
            self.schedule_process(vring);
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
    pub(crate) fn used_batched(self: &Arc<Self>, vring: &Vring, head: u16, len: u32, tracker: Option<&InflightQueue>) {
        if !self.add_used_tracked(vring, head, len, tracker) {
            return;
        }
        // Both counters belong to the I/O thread (completions run there
        // unless the LUN was moved): loads and stores, no locked
        // instructions. A completion elsewhere racing the bottom half can
        // only cause one notification too many (the entry is on the used
        // ring before the flag is looked at).
        let since = self.since_notify.load(Ordering::Relaxed) + 1;
        self.since_notify.store(since, Ordering::Relaxed);
        if since >= NOTIFY_EVERY {
            self.since_notify.store(0, Ordering::Relaxed);
            if vring.needs_notification().unwrap_or(true) {
                let _ = vring.signal_used_queue();
            }
        }
        // Completed inside a pass over this ring, on this thread: the pass
        // notifies when it ends (no bottom half to allocate and queue).
        if IN_PASS.get() == Arc::as_ptr(self) as usize {
            self.completed_in_pass.store(true, Ordering::Relaxed);
            return;
        }
        if self.notify_queued.load(Ordering::Acquire) {
            return;
        }
        self.notify_queued.store(true, Ordering::Release);
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
    pub(crate) fn drain(&self, timeout: Duration) {
        let end = Instant::now() + timeout;
        // First the chains being taken off (the ring is no longer ready:
        // no new ones), then the commands they became.
        while (self.scheduled.load(Ordering::Acquire) || self.busy.load(Ordering::Acquire)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        while !self.inflight.is_empty() && Instant::now() < end {
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
pub(crate) fn used(vring: &Vring, head: u16, len: u32) {
    if vring.add_used(head, len).is_err() {
        return;
    }
    if vring.needs_notification().unwrap_or(true) {
        let _ = vring.signal_used_queue();
    }
}

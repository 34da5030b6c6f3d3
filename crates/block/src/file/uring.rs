//! The per-thread io_uring of the file backend.
//!
//! Every thread that polls a file backend future gets its own ring, created
//! lazily on first use and kept in a thread-local. Nothing here is shared
//! between threads: the ring, its slab of in-flight operations and the reaper
//! task are all `!Send` state of one thread.
//!
//! * An operation ([`Op`]) moves its buffer into a slab slot, pushes one SQE
//!   whose `user_data` is the slot index and submits it at once.
//! * The ring signals completions on an eventfd. A reaper task, spawned with
//!   `spawn_local` on first use, waits for the eventfd with `AsyncFd`, drains
//!   the completion queue into the slots and wakes the operations.
//! * A dropped (cancelled) operation marks its slot orphaned; the buffer stays
//!   in the slot until the kernel completes the SQE, then the reaper frees it.
//! * When the ring itself is dropped (thread exit), it waits for whatever the
//!   kernel still owns before freeing the buffers.

use std::cell::{OnceCell, RefCell};
use std::future::Future;
use std::io;
use std::os::unix::io::{AsRawFd, FromRawFd, OwnedFd};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Once;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue, IoUring, Probe};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::buf::Buf;

/// Submission queue size; the completion queue is twice this.
const RING_ENTRIES: u32 = 256;

fn os_errno(e: &io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

enum Slot {
    Free,
    /// Owned by the kernel: `buf` must not be touched or freed until the CQE.
    InFlight {
        waker: Option<Waker>,
        buf: Option<Buf>,
        /// The future was dropped: free the slot when the CQE arrives.
        orphaned: bool,
    },
    /// The CQE arrived; waiting for the future to collect it.
    Done {
        res: i32,
        buf: Option<Buf>,
    },
}

#[derive(Default)]
struct Slab {
    slots: Vec<Slot>,
    free: Vec<usize>,
    /// SQEs handed to the ring whose CQE has not been reaped yet.
    in_flight: usize,
}

impl Slab {
    fn insert(&mut self, slot: Slot) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.slots[i] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        }
    }

    fn remove(&mut self, i: usize) -> Slot {
        let s = std::mem::replace(&mut self.slots[i], Slot::Free);
        self.free.push(i);
        s
    }

    /// Records a completion; returns the waker to wake, if any.
    fn complete(&mut self, i: usize, res: i32) -> Option<Waker> {
        match self.slots.get_mut(i) {
            Some(slot @ Slot::InFlight { .. }) => {
                self.in_flight -= 1;
                let Slot::InFlight { waker, buf, orphaned } = std::mem::replace(slot, Slot::Free) else {
                    unreachable!()
                };
                if orphaned {
                    // The future is gone: the kernel is done with the buffer, free it.
                    drop(buf);
                    self.free.push(i);
                    None
                } else {
                    *slot = Slot::Done { res, buf };
                    waker
                }
            }
            _ => {
                tracing::error!(slot = i, res, "io_uring completion for a slot that is not in flight");
                None
            }
        }
    }
}

/// One thread's io_uring.
pub(crate) struct Ring {
    uring: RefCell<IoUring>,
    slab: RefCell<Slab>,
    eventfd: OwnedFd,
    reaper_alive: std::cell::Cell<bool>,
    /// Operations waiting for room in the rings.
    room_waiters: RefCell<Vec<Waker>>,
    /// At most this many SQEs in flight, so the completion queue never overflows.
    max_in_flight: usize,
}

thread_local! {
    static RING: OnceCell<Option<Rc<Ring>>> = const { OnceCell::new() };
}

static FALLBACK_WARNING: Once = Once::new();

/// This thread's ring, created on first use; `None` when io_uring is not
/// available (the caller falls back to blocking I/O on tokio's blocking pool).
pub(crate) fn current() -> Option<Rc<Ring>> {
    RING.try_with(|cell| {
        cell.get_or_init(|| match disabled_by_env().map_or_else(Ring::new, Err) {
            Ok(r) => Some(Rc::new(r)),
            Err(e) => {
                FALLBACK_WARNING.call_once(|| {
                    tracing::warn!(
                        error = %e,
                        "io_uring unavailable, the file backend falls back to blocking I/O on the blocking pool"
                    );
                });
                None
            }
        })
        .clone()
    })
    .ok()
    .flatten()
}

/// Name of the environment variable that turns io_uring off (for kernels or
/// sandboxes where it misbehaves, and to test the fallback).
pub(crate) const DISABLE_ENV: &str = "LUNAR_FILE_NO_URING";

fn disabled_by_env() -> Option<io::Error> {
    match std::env::var_os(DISABLE_ENV) {
        Some(v) if !v.is_empty() && v != "0" => {
            Some(io::Error::new(io::ErrorKind::Unsupported, format!("disabled by {DISABLE_ENV}")))
        }
        _ => None,
    }
}

impl Ring {
    /// `(slots in use, SQEs in flight)`: for leak checks in tests.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        let slab = self.slab.borrow();
        (slab.slots.len() - slab.free.len(), slab.in_flight)
    }

    fn new() -> io::Result<Ring> {
        let uring = IoUring::new(RING_ENTRIES)?;
        let mut probe = Probe::new();
        uring.submitter().register_probe(&mut probe)?;
        for code in [opcode::Read::CODE, opcode::Write::CODE, opcode::Fsync::CODE, opcode::Fallocate::CODE] {
            if !probe.is_supported(code) {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("io_uring opcode {code} not supported by this kernel"),
                ));
            }
        }
        // SAFETY: plain system call; no memory is passed.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let eventfd = unsafe { OwnedFd::from_raw_fd(fd) };
        // (register_eventfd_async would spare a wake-up for completions
        // posted inside the submit call, but some completions, e.g. an
        // ENOSPC write to /dev/full, then never signal at all.)
        uring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        let max_in_flight = uring.params().cq_entries() as usize;
        Ok(Ring {
            uring: RefCell::new(uring),
            slab: RefCell::new(Slab::default()),
            eventfd,
            reaper_alive: std::cell::Cell::new(false),
            room_waiters: RefCell::new(Vec::new()),
            max_in_flight,
        })
    }

    /// Starts the reaper task on the current `LocalSet` unless one is running.
    fn ensure_reaper(self: &Rc<Self>) -> Result<(), i32> {
        if self.reaper_alive.get() {
            return Ok(());
        }
        // The reaper owns its own descriptor for the eventfd so that its
        // `AsyncFd` (bound to the current runtime) can come and go with it.
        let fd = self.eventfd.try_clone().map_err(|e| os_errno(&e))?;
        // SAFETY: `fd` is an open descriptor owned by the `OwnedFd` that the
        // `AsyncFd` takes ownership of; it stays open, refers to the same
        // eventfd and is returned unchanged by `as_raw_fd` until it is dropped.
        let afd = unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }
            .map_err(|e| os_errno(&e.into_parts().1))?;
        self.reaper_alive.set(true);
        // `Alive` is moved into the task's future, so it clears the flag even
        // if the task is dropped (its `LocalSet` goes away) before it first runs.
        tokio::task::spawn_local(reaper(Alive(self.clone()), afd));
        Ok(())
    }

    /// Moves every available completion into its slot and wakes the futures
    /// (and the submitters waiting for room).
    fn reap(&self) {
        let mut wakers = Vec::new();
        let mut reaped = 0usize;
        {
            let mut uring = self.uring.borrow_mut();
            let mut slab = self.slab.borrow_mut();
            // Bounded: a CQ overflow flush is retried a few times at most.
            for _ in 0..8 {
                for cqe in uring.completion() {
                    reaped += 1;
                    wakers.extend(slab.complete(cqe.user_data() as usize, cqe.result()));
                }
                let (overflow, unsubmitted) = {
                    let sq = uring.submission();
                    (sq.cq_overflow(), !sq.is_empty())
                };
                if !(overflow || unsubmitted) {
                    break;
                }
                // Hands over SQEs a failed submit left behind; with a CQ
                // overflow it also flushes the kernel's overflow list.
                if let Err(e) = uring.submit() {
                    tracing::debug!(error = %e, "io_uring submit from the reaper failed");
                    break;
                }
                if !overflow {
                    break;
                }
            }
        }
        if reaped > 0 {
            wakers.append(&mut self.room_waiters.borrow_mut());
        }
        for w in wakers {
            w.wake();
        }
    }

    /// Wakes every future parked on this ring, so that one of them starts a
    /// new reaper (used when the reaper goes away).
    fn wake_all(&self) {
        let mut wakers: Vec<Waker> = match self.room_waiters.try_borrow_mut() {
            Ok(mut w) => w.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        if let Ok(mut slab) = self.slab.try_borrow_mut() {
            for slot in slab.slots.iter_mut() {
                if let Slot::InFlight { waker, .. } = slot {
                    wakers.extend(waker.take());
                }
            }
        }
        for w in wakers {
            w.wake();
        }
    }

    /// Puts `entry` (with `buf`, which it points into) in flight. On `Full`
    /// the buffer comes back and the caller waits for room.
    fn try_submit(&self, entry: squeue::Entry, buf: Option<Buf>, waker: &Waker) -> Submit {
        let mut slab = self.slab.borrow_mut();
        if slab.in_flight >= self.max_in_flight {
            return Submit::Full(buf);
        }
        let idx = slab.insert(Slot::InFlight { waker: Some(waker.clone()), buf, orphaned: false });
        let entry = entry.user_data(idx as u64);
        let mut uring = self.uring.borrow_mut();
        // SAFETY: the SQE's buffer (if any) is the heap memory of the `Buf` now
        // stored in slot `idx`; it is freed only after the CQE for `idx` has been
        // reaped (or never, if the ring goes away with it still in flight), and
        // the fd it names is kept open by the caller's `FileBackend` for as long
        // as the future lives (and by the submission, which holds a reference).
        let mut pushed = unsafe { uring.submission().push(&entry) }.is_ok();
        if !pushed {
            // Submission queue full: hand what is queued to the kernel, retry.
            match uring.submit() {
                Ok(_) => {
                    // SAFETY: as above.
                    pushed = unsafe { uring.submission().push(&entry) }.is_ok();
                }
                Err(e) => tracing::debug!(error = %e, "io_uring submit with a full SQ failed"),
            }
        }
        if !pushed {
            // Nothing of ours reached the ring: take the buffer back.
            let Slot::InFlight { buf, .. } = slab.remove(idx) else { unreachable!() };
            return Submit::Full(buf);
        }
        slab.in_flight += 1;
        loop {
            match uring.submit() {
                Ok(_) => return Submit::InFlight(idx),
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                // The SQE stays queued; the reaper submits it after the next
                // completion frees resources (EBUSY/EAGAIN mean some are due).
                Err(e) if matches!(e.raw_os_error(), Some(libc::EBUSY) | Some(libc::EAGAIN)) => {
                    return Submit::InFlight(idx)
                }
                Err(e) => {
                    // The SQE is in the queue and may still reach the kernel on a
                    // later submit: orphan the slot so its buffer outlives it.
                    if let Slot::InFlight { waker, orphaned, .. } = &mut slab.slots[idx] {
                        *waker = None;
                        *orphaned = true;
                    }
                    return Submit::Failed(os_errno(&e));
                }
            }
        }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // Every `Op` holds an `Rc<Ring>`, so anything still in flight here is
        // orphaned. The kernel may still write into those buffers: wait for it.
        let uring = self.uring.get_mut();
        let slab = self.slab.get_mut();
        while slab.in_flight > 0 {
            for cqe in uring.completion() {
                slab.complete(cqe.user_data() as usize, cqe.result());
            }
            if slab.in_flight == 0 {
                break;
            }
            match uring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => {
                    tracing::error!(error = %e, in_flight = slab.in_flight, "io_uring teardown: leaking in-flight buffers");
                    for slot in slab.slots.iter_mut() {
                        if let Slot::InFlight { buf, .. } = slot {
                            // Leak rather than free memory the kernel may still use.
                            std::mem::forget(buf.take());
                        }
                    }
                    break;
                }
            }
        }
    }
}

enum Submit {
    InFlight(usize),
    Full(Option<Buf>),
    Failed(i32),
}

/// Marks the reaper of a ring as running; dropping it (the task ended or was
/// dropped) lets the next poll of an op start a new one.
struct Alive(Rc<Ring>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.reaper_alive.set(false);
        self.0.wake_all();
    }
}

async fn reaper(alive: Alive, afd: AsyncFd<OwnedFd>) {
    let ring = &alive.0;
    loop {
        ring.reap();
        let mut guard = match afd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(error = %e, "io_uring reaper: waiting for the eventfd failed");
                return;
            }
        };
        guard.clear_ready();
        let mut counter = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live 8-byte stack buffer; the
        // eventfd is non-blocking, so this never blocks the thread.
        let _ = unsafe { libc::read(afd.get_ref().as_raw_fd(), counter.as_mut_ptr().cast(), counter.len()) };
    }
}

/// One io_uring operation. Resolves to `(res, buf)`: the CQE result
/// (negative errno on failure) and the buffer handed in.
pub(crate) struct Op {
    ring: Rc<Ring>,
    state: OpState,
}

enum OpState {
    Unsubmitted { entry: squeue::Entry, buf: Option<Buf> },
    InFlight(usize),
    Finished,
}

impl Op {
    /// `entry` must point only into `buf`'s heap memory (or at no memory).
    pub(crate) fn new(ring: Rc<Ring>, entry: squeue::Entry, buf: Option<Buf>) -> Op {
        Op { ring, state: OpState::Unsubmitted { entry, buf } }
    }
}

impl Future for Op {
    type Output = (i32, Option<Buf>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Err(errno) = this.ring.ensure_reaper() {
            // Without a reaper no completion would ever be seen: fail the op.
            // An op already in flight stays `InFlight`, so `Drop` orphans its
            // slot and the buffer outlives the kernel's use of it.
            return match std::mem::replace(&mut this.state, OpState::Finished) {
                OpState::Unsubmitted { buf, .. } => Poll::Ready((-errno, buf)),
                other => {
                    this.state = other;
                    Poll::Ready((-errno, None))
                }
            };
        }
        match std::mem::replace(&mut this.state, OpState::Finished) {
            OpState::Unsubmitted { entry, buf } => match this.ring.try_submit(entry.clone(), buf, cx.waker()) {
                Submit::InFlight(idx) => {
                    // Page-cache hits often complete inside the submit
                    // system call: look before going to sleep on the eventfd.
                    this.ring.reap();
                    let mut slab = this.ring.slab.borrow_mut();
                    if matches!(slab.slots[idx], Slot::Done { .. }) {
                        if let Slot::Done { res, buf } = slab.remove(idx) {
                            return Poll::Ready((res, buf));
                        }
                    }
                    drop(slab);
                    this.state = OpState::InFlight(idx);
                    Poll::Pending
                }
                Submit::Full(buf) => {
                    this.ring.room_waiters.borrow_mut().push(cx.waker().clone());
                    this.state = OpState::Unsubmitted { entry, buf };
                    Poll::Pending
                }
                Submit::Failed(errno) => Poll::Ready((-errno, None)),
            },
            OpState::InFlight(idx) => {
                let mut slab = this.ring.slab.borrow_mut();
                match &mut slab.slots[idx] {
                    Slot::Done { .. } => {
                        let Slot::Done { res, buf } = slab.remove(idx) else { unreachable!() };
                        Poll::Ready((res, buf))
                    }
                    Slot::InFlight { waker, .. } => {
                        match waker {
                            Some(w) if w.will_wake(cx.waker()) => {}
                            _ => *waker = Some(cx.waker().clone()),
                        }
                        this.state = OpState::InFlight(idx);
                        Poll::Pending
                    }
                    Slot::Free => unreachable!("in-flight op lost its slot"),
                }
            }
            OpState::Finished => panic!("io_uring Op polled after completion"),
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if let OpState::InFlight(idx) = self.state {
            let mut slab = self.ring.slab.borrow_mut();
            match &mut slab.slots[idx] {
                Slot::InFlight { waker, orphaned, .. } => {
                    // Cancelled: the kernel still owns the buffer; the reaper
                    // frees it with the slot when the CQE arrives.
                    *waker = None;
                    *orphaned = true;
                }
                Slot::Done { .. } => {
                    slab.remove(idx);
                }
                Slot::Free => {}
            }
        }
    }
}

//! Statistics: commands, bytes, errors and a latency histogram, per queue
//! (summed per device) and per thread.
//!
//! No lock and no shared cache line on the I/O path: every [`Cells`] is
//! written by one thread at a time only, the thread that holds the list it
//! counts for (a queue's cells move with the queue, since the list is handed
//! over only after its I/O drained; a thread's cells are written by that
//! thread). The owner adds with a relaxed load and store (no read-modify-
//! write); readers (the control plane) load the words and sum them. Counts
//! are taken when a command completes, so `commands` and the histogram's
//! count always agree for a quiescent device.
//!
//! A device sums the cells of its open queues and what its closed queues
//! counted ([`DeviceStats`]): closing a queue (a logout) or moving it to
//! another thread loses nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use lunar_scsi::Status;

use crate::request::{Request, Response};

/// Latency buckets: bucket `i < LATENCY_BUCKETS - 1` counts commands whose
/// latency `t` (in whole microseconds, rounded up) is in `(2^(i-1), 2^i]`
/// (bucket 0: `t <= 1 us`); the last bucket counts the rest (> 2^(N-2) us,
/// about 33.5 s).
pub const LATENCY_BUCKETS: usize = 27;

/// The upper bound (inclusive) of bucket `i` in microseconds; `None` for the
/// last bucket (+Inf).
pub fn bucket_upper_us(i: usize) -> Option<u64> {
    (i + 1 < LATENCY_BUCKETS).then(|| 1u64 << i)
}

/// The bucket of a latency of `ns` nanoseconds.
pub fn bucket_of(ns: u64) -> usize {
    let us = ns.div_ceil(1000);
    if us <= 1 {
        return 0;
    }
    // ceil(log2(us)): the smallest i with us <= 2^i.
    let i = (u64::BITS - (us - 1).leading_zeros()) as usize;
    i.min(LATENCY_BUCKETS - 1)
}

/// What kind of command a CDB is, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// READ(6)/(10)/(12)/(16).
    Read,
    /// Commands that write the medium with data from the initiator: WRITE,
    /// WRITE AND VERIFY, COMPARE AND WRITE, ORWRITE, WRITE ATOMIC, WRITE SAME.
    Write,
    Other,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Read, Kind::Write, Kind::Other];

    /// From the operation code (the first CDB byte, looked up in the
    /// opcode table of `lunar-scsi`); no decoding needed.
    pub fn of_cdb(cdb: &[u8]) -> Kind {
        match lunar_scsi::IoClass::of_cdb(cdb) {
            lunar_scsi::IoClass::Read => Kind::Read,
            lunar_scsi::IoClass::Write => Kind::Write,
            lunar_scsi::IoClass::Other => Kind::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Read => "read",
            Kind::Write => "write",
            Kind::Other => "other",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The counters of one queue or one thread. Written by one thread at a
/// time (see the module docs); aligned so that two owners never share a
/// cache line.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct Cells {
    commands: [AtomicU64; 3],
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    errors: AtomicU64,
    aborted: AtomicU64,
    io_errors: AtomicU64,
    latency_ns: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS],
}

/// Adds to a counter that only the calling thread writes: a plain load and
/// store (no locked instruction); readers see the old or the new value.
fn bump(a: &AtomicU64, n: u64) {
    a.store(a.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

impl Cells {
    pub fn new() -> Arc<Cells> {
        Arc::new(Cells::default())
    }

    /// Counts one completed command. Owner thread only.
    pub fn record(&self, kind: Kind, status: Status, bytes: u64, latency_ns: u64) {
        bump(&self.commands[kind.index()], 1);
        match status {
            Status::Good => match kind {
                Kind::Read => bump(&self.bytes_read, bytes),
                Kind::Write => bump(&self.bytes_written, bytes),
                Kind::Other => {}
            },
            Status::TaskAborted => bump(&self.aborted, 1),
            _ => bump(&self.errors, 1),
        }
        bump(&self.latency_ns, latency_ns);
        bump(&self.buckets[bucket_of(latency_ns)], 1);
    }

    /// Counts one error of the backend (whatever the error policy did with
    /// it: reported, ignored, or parked). Owner thread only.
    pub fn record_io_error(&self) {
        bump(&self.io_errors, 1);
    }

    /// The counters now (any thread).
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        self.add_to(&mut s);
        s
    }

    fn add_to(&self, s: &mut Snapshot) {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (i, c) in self.commands.iter().enumerate() {
            s.commands[i] += ld(c);
        }
        s.bytes_read += ld(&self.bytes_read);
        s.bytes_written += ld(&self.bytes_written);
        s.errors += ld(&self.errors);
        s.aborted += ld(&self.aborted);
        s.io_errors += ld(&self.io_errors);
        s.latency_ns += ld(&self.latency_ns);
        for (i, b) in self.buckets.iter().enumerate() {
            s.buckets[i] += ld(b);
        }
    }
}

/// Counters as plain numbers (a sum of [`Cells`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Completed commands by [`Kind`] (read, write, other).
    pub commands: [u64; 3],
    /// Data-in bytes of READ commands that completed with GOOD status.
    pub bytes_read: u64,
    /// Data-out bytes of write commands that completed with GOOD status.
    pub bytes_written: u64,
    /// Commands completed with a status other than GOOD and TASK ABORTED
    /// (CHECK CONDITION, RESERVATION CONFLICT, ...).
    pub errors: u64,
    /// Commands completed with TASK ABORTED (task management, reset, removal).
    pub aborted: u64,
    /// Backend I/O errors, whatever the error policy did with them.
    pub io_errors: u64,
    /// Sum of the latencies of the completed commands, in nanoseconds.
    pub latency_ns: u64,
    /// Latency histogram (see [`LATENCY_BUCKETS`]); not cumulative.
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Snapshot {
    pub fn commands_of(&self, kind: Kind) -> u64 {
        self.commands[kind.index()]
    }

    /// Completed commands, all kinds.
    pub fn total(&self) -> u64 {
        self.commands.iter().sum()
    }

    /// Commands in the histogram (equals [`Snapshot::total`] once counted).
    pub fn latency_count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Adds another snapshot to this one.
    pub fn add(&mut self, o: &Snapshot) {
        for i in 0..3 {
            self.commands[i] += o.commands[i];
        }
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.errors += o.errors;
        self.aborted += o.aborted;
        self.io_errors += o.io_errors;
        self.latency_ns += o.latency_ns;
        for i in 0..LATENCY_BUCKETS {
            self.buckets[i] += o.buckets[i];
        }
    }

    /// Estimates the `q` quantile (0..=1) of the latency in microseconds,
    /// interpolating linearly inside the bucket where it falls; `None`
    /// without commands. In the last (unbounded) bucket it answers that
    /// bucket's lower bound.
    pub fn quantile_us(&self, q: f64) -> Option<f64> {
        let count = self.latency_count();
        if count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * count as f64).max(1.0);
        let mut below = 0u64;
        for (i, &n) in self.buckets.iter().enumerate() {
            if n == 0 {
                continue;
            }
            if (below + n) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { (1u64 << (i - 1)) as f64 };
                let Some(upper) = bucket_upper_us(i) else { return Some(lower) };
                let frac = (rank - below as f64) / n as f64;
                return Some(lower + (upper as f64 - lower) * frac);
            }
            below += n;
        }
        None
    }
}

/// What a request carries for the counters: when it arrived in its list,
/// and how much data it brought.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    pub(crate) arrived: Instant,
    pub(crate) data_out: u64,
}

impl Stamp {
    pub(crate) fn now(data_out: usize) -> Stamp {
        Stamp { arrived: Instant::now(), data_out: data_out as u64 }
    }
}

/// The cells one list writes: its queue's and its holder thread's.
pub(crate) struct Recorder {
    pub(crate) queue: Arc<Cells>,
    pub(crate) thread: Arc<Cells>,
}

impl Recorder {
    /// Counts the completion of `req` with `resp` (holder thread).
    pub(crate) fn completed(&self, req: &Request, resp: &Response) {
        let kind = Kind::of_cdb(&req.cdb);
        let (latency, data_out) = match &req.stamp {
            Some(s) => (u64::try_from(s.arrived.elapsed().as_nanos()).unwrap_or(u64::MAX), s.data_out),
            None => (0, req.data_out.len() as u64),
        };
        let bytes = match kind {
            Kind::Read => resp.data_in_len() as u64,
            Kind::Write => data_out,
            Kind::Other => 0,
        };
        self.queue.record(kind, resp.status, bytes, latency);
        self.thread.record(kind, resp.status, bytes, latency);
    }

    pub(crate) fn io_error(&self) {
        self.queue.record_io_error();
        self.thread.record_io_error();
    }
}

/// The counters of a device: its open queues' cells, and the sum of what
/// its closed queues counted. The lock is taken on the control path only
/// (open, close, read), never when a command completes.
#[derive(Debug, Default)]
pub struct DeviceStats {
    inner: Mutex<DeviceStatsInner>,
}

#[derive(Debug, Default)]
struct DeviceStatsInner {
    open: Vec<(u64, Arc<Cells>)>,
    closed: Snapshot,
}

impl DeviceStats {
    fn lock(&self) -> std::sync::MutexGuard<'_, DeviceStatsInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A queue opened: its cells count for the device.
    pub(crate) fn attach(&self, queue: u64, cells: Arc<Cells>) {
        self.lock().open.push((queue, cells));
    }

    /// A queue closed and will count no more: fold its cells into the total.
    pub(crate) fn retire(&self, queue: u64) {
        let mut g = self.lock();
        if let Some(pos) = g.open.iter().position(|(id, _)| *id == queue) {
            let (_, cells) = g.open.swap_remove(pos);
            let s = cells.snapshot();
            g.closed.add(&s);
        }
    }

    /// The device's counters now.
    pub fn snapshot(&self) -> Snapshot {
        let g = self.lock();
        let mut s = g.closed;
        for (_, c) in &g.open {
            c.add_to(&mut s);
        }
        s
    }
}

/// The cells of every thread of a [`crate::threads::ThreadSet`], by index
/// (0: the main loop).
#[derive(Debug)]
pub struct ThreadStats {
    cells: Vec<Arc<Cells>>,
}

impl ThreadStats {
    pub(crate) fn new(threads: usize) -> ThreadStats {
        ThreadStats { cells: (0..threads).map(|_| Cells::new()).collect() }
    }

    pub(crate) fn cells(&self, thread: usize) -> Option<&Arc<Cells>> {
        self.cells.get(thread)
    }

    /// The counters of thread `thread` (0: the main loop; I/O threads from 1).
    pub fn snapshot(&self, thread: usize) -> Option<Snapshot> {
        self.cells.get(thread).map(|c| c.snapshot())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log2_of_microseconds_rounded_up() {
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1_000), 0);
        assert_eq!(bucket_of(1_001), 1, "just over 1 us");
        assert_eq!(bucket_of(2_000), 1);
        assert_eq!(bucket_of(3_000), 2);
        assert_eq!(bucket_of(4_000), 2);
        assert_eq!(bucket_of(4_001), 3);
        assert_eq!(bucket_of(1_000_000), 10, "1 ms is at most 2^10 us");
        assert_eq!(bucket_of(1_000_000_000), 20, "1 s is at most 2^20 us");
        assert_eq!(bucket_of((1 << 25) * 1000), 25);
        assert_eq!(bucket_of((1 << 25) * 1000 + 1), LATENCY_BUCKETS - 1);
        assert_eq!(bucket_of(u64::MAX), LATENCY_BUCKETS - 1);
        for i in 0..LATENCY_BUCKETS - 1 {
            let upper = bucket_upper_us(i).unwrap();
            assert_eq!(bucket_of(upper * 1000), i, "upper bound of bucket {i} is in it");
            assert_eq!(bucket_of(upper * 1000 + 1), i + 1, "just above bucket {i}");
        }
        assert_eq!(bucket_upper_us(LATENCY_BUCKETS - 1), None);
    }

    #[test]
    fn kinds_by_opcode() {
        for op in [0x08, 0x28, 0xA8, 0x88] {
            assert_eq!(Kind::of_cdb(&[op, 0, 0]), Kind::Read, "{op:#x}");
        }
        for op in [0x0A, 0x2A, 0xAA, 0x8A, 0x2E, 0x89, 0x41, 0x93] {
            assert_eq!(Kind::of_cdb(&[op]), Kind::Write, "{op:#x}");
        }
        for op in [0x00, 0x12, 0x25, 0x9E, 0x35, 0x2F, 0xA0] {
            assert_eq!(Kind::of_cdb(&[op]), Kind::Other, "{op:#x}");
        }
        assert_eq!(Kind::of_cdb(&[]), Kind::Other);
    }

    #[test]
    fn record_counts_by_kind_status_and_bytes() {
        let c = Cells::new();
        c.record(Kind::Read, Status::Good, 4096, 3_000);
        c.record(Kind::Read, Status::CheckCondition, 4096, 3_000);
        c.record(Kind::Write, Status::Good, 512, 500);
        c.record(Kind::Other, Status::TaskAborted, 0, 2_000_000);
        c.record(Kind::Other, Status::ReservationConflict, 0, 10);
        c.record_io_error();
        let s = c.snapshot();
        assert_eq!(s.commands, [2, 1, 2]);
        assert_eq!(s.total(), 5);
        assert_eq!(s.latency_count(), 5);
        assert_eq!(s.bytes_read, 4096, "a failed read moves no data");
        assert_eq!(s.bytes_written, 512);
        assert_eq!(s.errors, 2);
        assert_eq!(s.aborted, 1);
        assert_eq!(s.io_errors, 1);
        assert_eq!(s.latency_ns, 3_000 + 3_000 + 500 + 2_000_000 + 10);
        assert_eq!(s.buckets[0], 2, "500 ns and 10 ns");
        assert_eq!(s.buckets[2], 2, "3 us");
        assert_eq!(s.buckets[bucket_of(2_000_000)], 1);
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let mut s = Snapshot::default();
        assert_eq!(s.quantile_us(0.5), None);
        // 100 commands in (64, 128] us.
        s.buckets[7] = 100;
        let p50 = s.quantile_us(0.5).unwrap();
        assert!((p50 - 96.0).abs() < 1e-9, "{p50}");
        assert!((s.quantile_us(1.0).unwrap() - 128.0).abs() < 1e-9);
        // And one slow one, in (512, 1024] us: p99 stays in the first bucket, p100 goes there.
        s.buckets[10] = 1;
        assert!(s.quantile_us(0.99).unwrap() <= 128.0);
        assert!(s.quantile_us(1.0).unwrap() > 512.0);
        // The unbounded bucket answers its lower bound.
        let mut slow = Snapshot::default();
        slow.buckets[LATENCY_BUCKETS - 1] = 3;
        assert_eq!(slow.quantile_us(0.5), Some((1u64 << (LATENCY_BUCKETS - 2)) as f64));
        // Bucket 0 interpolates from 0.
        let mut fast = Snapshot::default();
        fast.buckets[0] = 10;
        assert!((fast.quantile_us(0.5).unwrap() - 0.5).abs() < 1e-9);
    }

    #[test]
    fn device_stats_keep_the_counts_of_closed_queues() {
        let d = DeviceStats::default();
        let (a, b) = (Cells::new(), Cells::new());
        d.attach(1, a.clone());
        d.attach(2, b.clone());
        a.record(Kind::Read, Status::Good, 512, 1_000);
        b.record(Kind::Write, Status::Good, 1024, 1_000);
        assert_eq!(d.snapshot().commands, [1, 1, 0]);
        d.retire(1);
        // Counted once, from the closed total now.
        a.record(Kind::Read, Status::Good, 512, 1_000);
        let s = d.snapshot();
        assert_eq!(s.commands, [1, 1, 0]);
        assert_eq!((s.bytes_read, s.bytes_written), (512, 1024));
        d.retire(1);
        d.retire(2);
        assert_eq!(d.snapshot().commands, [1, 1, 0], "retiring twice counts once");
    }

    #[test]
    fn cells_do_not_share_a_cache_line() {
        assert!(std::mem::align_of::<Cells>() >= 128);
    }
}

//! Inflight I/O tracking (vhost-user protocol feature `INFLIGHT_SHMFD`,
//! section "Inflight I/O tracking" of the vhost-user specification), split
//! virtqueues only.
//!
//! The front-end (QEMU) asks the device for a shared memory region
//! (`GET_INFLIGHT_FD`), keeps its file descriptor, and hands it back
//! (`SET_INFLIGHT_FD`) every time it sets the device up, including to a new
//! device process after the old one died. The device records in it which
//! descriptor heads it took off the available ring and has not yet put on the
//! used ring, so that a new process can submit them again.
//!
//! Layout (little-endian, what the specification gives for split rings), one
//! queue region per virtqueue, each [`queue_region_size`] bytes (the header
//! and `desc_num` entries, rounded up to 64 bytes):
//!
//! ```text
//! queue region: features u64 | version u16 | desc_num u16 | last_batch_head u16 | used_idx u16
//!               then desc_num entries of 16 bytes:
//! entry:        inflight u8 | padding [u8; 5] | next u16 | counter u64
//! ```
//!
//! The order of the writes is the specification's, so that a crash between
//! any two of them is recoverable:
//!
//! - taking a head off the available ring ([`InflightQueue::mark`]): the
//!   entry's counter (one more than the last), then its inflight flag;
//! - putting it on the used ring ([`InflightQueue::complete`]): link it into
//!   the "last batch" list (`next` = old `last_batch_head`,
//!   `last_batch_head` = head), write the used ring (element, then its
//!   index), clear the flag, then store the used ring's new index in
//!   `used_idx`;
//! - after a reconnect ([`InflightQueue::recover`]): if `used_idx` differs
//!   from the used ring's index, the last batch reached the guest but its
//!   flags may still be set: clear the flags of the `ring idx - used_idx`
//!   heads of the batch list, then set `used_idx`. What is still marked was
//!   never answered: it is submitted again, in counter order, before any new
//!   request, and the next available index is `used idx + that count`.

use std::fs::File;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};

/// The region format this device writes in each queue header.
pub const VERSION: u16 = 1;
/// Queue header: features, version, desc_num, last_batch_head, used_idx.
pub const HEADER_LEN: usize = 16;
/// One descriptor entry: inflight, padding, next, counter.
pub const ENTRY_LEN: usize = 16;
const ALIGN: usize = 64;

const OFF_VERSION: usize = 8;
const OFF_DESC_NUM: usize = 10;
const OFF_LAST_BATCH_HEAD: usize = 12;
const OFF_USED_IDX: usize = 14;
const ENTRY_INFLIGHT: usize = 0;
const ENTRY_NEXT: usize = 6;
const ENTRY_COUNTER: usize = 8;

/// Bytes of one queue's region for a ring of `queue_size` descriptors.
pub fn queue_region_size(queue_size: u16) -> usize {
    (HEADER_LEN + ENTRY_LEN * queue_size as usize).div_ceil(ALIGN) * ALIGN
}

/// Why an inflight region could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    #[error("cannot create the inflight region: {0}")]
    Create(std::io::Error),
    #[error("cannot map the inflight region: {0}")]
    Map(vm_memory::mmap::MmapRegionError),
    #[error("bad inflight region: {0}")]
    Invalid(&'static str),
    #[error("inflight region access out of bounds")]
    Bounds,
}

impl From<vm_memory::volatile_memory::Error> for InflightError {
    fn from(_: vm_memory::volatile_memory::Error) -> Self {
        InflightError::Bounds
    }
}

/// The shared region of one device: one queue region per virtqueue.
pub struct InflightRegion {
    file: File,
    map: MmapRegion<()>,
    offset: u64,
    num_queues: u16,
    queue_size: u16,
}

impl std::fmt::Debug for InflightRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InflightRegion")
            .field("num_queues", &self.num_queues)
            .field("queue_size", &self.queue_size)
            .field("size", &self.size())
            .finish()
    }
}

impl InflightRegion {
    /// A new zeroed region in a memfd (answer to `GET_INFLIGHT_FD`), every
    /// queue header initialised (version, desc_num).
    pub fn create(num_queues: u16, queue_size: u16) -> Result<InflightRegion, InflightError> {
        if num_queues == 0 || queue_size == 0 {
            return Err(InflightError::Invalid("no queues or empty queues"));
        }
        // SAFETY: memfd_create takes a NUL-terminated name and flags; it
        // returns a new file descriptor that nothing else owns, or -1.
        let fd = unsafe { libc::memfd_create(c"lunar-vhost-inflight".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(InflightError::Create(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just created above and is owned by nobody else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        let size = queue_region_size(queue_size) * num_queues as usize;
        file.set_len(size as u64).map_err(InflightError::Create)?;
        let region = Self::open(file, 0, size as u64, num_queues, queue_size)?;
        for q in 0..num_queues {
            let base = q as usize * queue_region_size(queue_size);
            let s = region.map.as_volatile_slice();
            s.store(VERSION.to_le(), base + OFF_VERSION, Ordering::Relaxed)?;
            s.store(queue_size.to_le(), base + OFF_DESC_NUM, Ordering::Relaxed)?;
        }
        Ok(region)
    }

    /// Maps a region the front-end handed over (`SET_INFLIGHT_FD`).
    pub fn open(
        file: File,
        offset: u64,
        size: u64,
        num_queues: u16,
        queue_size: u16,
    ) -> Result<InflightRegion, InflightError> {
        if num_queues == 0 || queue_size == 0 {
            return Err(InflightError::Invalid("no queues or empty queues"));
        }
        let need = queue_region_size(queue_size) as u64 * num_queues as u64;
        if size < need {
            return Err(InflightError::Invalid("region smaller than its queues need"));
        }
        let len = usize::try_from(size).map_err(|_| InflightError::Invalid("region too large"))?;
        let fo = FileOffset::new(file.try_clone().map_err(InflightError::Create)?, offset);
        let map = MmapRegion::from_file(fo, len).map_err(InflightError::Map)?;
        Ok(InflightRegion { file, map, offset, num_queues, queue_size })
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn size(&self) -> u64 {
        self.map.size() as u64
    }

    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn num_queues(&self) -> u16 {
        self.num_queues
    }

    pub fn queue_size(&self) -> u16 {
        self.queue_size
    }

    /// The tracker of virtqueue `index`.
    pub fn queue(self: &Arc<Self>, index: u16) -> Option<InflightQueue> {
        if index >= self.num_queues {
            return None;
        }
        Some(InflightQueue {
            region: self.clone(),
            base: index as usize * queue_region_size(self.queue_size),
            desc_num: self.queue_size,
            counter: AtomicU64::new(1),
        })
    }
}

/// The inflight tracking of one split virtqueue. Its writers must be
/// serialised by the caller (the ring's lock): the batch list and `used_idx`
/// are one state.
#[derive(Debug)]
pub struct InflightQueue {
    region: Arc<InflightRegion>,
    base: usize,
    desc_num: u16,
    counter: AtomicU64,
}

impl InflightQueue {
    fn entry(&self, head: u16) -> Result<usize, InflightError> {
        if head >= self.desc_num {
            return Err(InflightError::Invalid("descriptor head beyond the queue"));
        }
        Ok(self.base + HEADER_LEN + head as usize * ENTRY_LEN)
    }

    fn store_u8(&self, at: usize, v: u8, order: Ordering) -> Result<(), InflightError> {
        Ok(self.region.map.as_volatile_slice().store(v, at, order)?)
    }

    fn store_u16(&self, at: usize, v: u16, order: Ordering) -> Result<(), InflightError> {
        Ok(self.region.map.as_volatile_slice().store(v.to_le(), at, order)?)
    }

    fn store_u64(&self, at: usize, v: u64, order: Ordering) -> Result<(), InflightError> {
        Ok(self.region.map.as_volatile_slice().store(v.to_le(), at, order)?)
    }

    fn load_u8(&self, at: usize) -> Result<u8, InflightError> {
        Ok(self.region.map.as_volatile_slice().load(at, Ordering::Acquire)?)
    }

    fn load_u16(&self, at: usize) -> Result<u16, InflightError> {
        Ok(u16::from_le(self.region.map.as_volatile_slice().load(at, Ordering::Acquire)?))
    }

    fn load_u64(&self, at: usize) -> Result<u64, InflightError> {
        Ok(u64::from_le(self.region.map.as_volatile_slice().load(at, Ordering::Acquire)?))
    }

    /// The ring size this queue region tracks.
    pub fn desc_num(&self) -> u16 {
        self.desc_num
    }

    /// `head` was taken off the available ring: counter, then flag.
    pub fn mark(&self, head: u16) -> Result<(), InflightError> {
        let e = self.entry(head)?;
        let counter = self.counter.fetch_add(1, Ordering::Relaxed);
        self.store_u64(e + ENTRY_COUNTER, counter, Ordering::Relaxed)?;
        self.store_u8(e + ENTRY_INFLIGHT, 1, Ordering::Release)
    }

    /// Puts `head` on the used ring through `add_used` (which writes the used
    /// element and index, and returns the ring's new used index, `None` if
    /// it could not), recording each step in the region in the order the
    /// specification gives.
    pub fn complete(&self, head: u16, add_used: impl FnOnce() -> Option<u16>) -> Result<bool, InflightError> {
        let e = self.entry(head)?;
        let last = self.load_u16(self.base + OFF_LAST_BATCH_HEAD)?;
        self.store_u16(e + ENTRY_NEXT, last, Ordering::Relaxed)?;
        self.store_u16(self.base + OFF_LAST_BATCH_HEAD, head, Ordering::Release)?;
        let Some(used_idx) = add_used() else { return Ok(false) };
        self.store_u8(e + ENTRY_INFLIGHT, 0, Ordering::Release)?;
        self.store_u16(self.base + OFF_USED_IDX, used_idx, Ordering::Release)?;
        Ok(true)
    }

    /// After a reconnect, with the used ring's index as the guest sees it:
    /// fixes up the last batch and `used_idx`, and returns the heads still
    /// in flight, oldest first (the next counter follows the newest).
    pub fn recover(&self, ring_used_idx: u16) -> Result<Vec<u16>, InflightError> {
        let desc_num = self.load_u16(self.base + OFF_DESC_NUM)?;
        let version = self.load_u16(self.base + OFF_VERSION)?;
        if desc_num == 0 && version == 0 {
            // Never written by a device: nothing in flight.
            self.store_u16(self.base + OFF_VERSION, VERSION, Ordering::Relaxed)?;
            self.store_u16(self.base + OFF_DESC_NUM, self.desc_num, Ordering::Relaxed)?;
            self.store_u16(self.base + OFF_USED_IDX, ring_used_idx, Ordering::Release)?;
            return Ok(Vec::new());
        }
        if version != VERSION {
            return Err(InflightError::Invalid("unknown region version"));
        }
        if desc_num != self.desc_num {
            return Err(InflightError::Invalid("region written for another queue size"));
        }
        let used_idx = self.load_u16(self.base + OFF_USED_IDX)?;
        let batch = ring_used_idx.wrapping_sub(used_idx);
        if batch > self.desc_num {
            // Not a batch cut short: the region belongs to an older life of
            // the ring (the driver reset the device meanwhile). Nothing in it
            // is for this ring.
            tracing::warn!(used_idx, ring_used_idx, "vhost-user-scsi: stale inflight region; starting afresh");
            for head in 0..self.desc_num {
                self.store_u8(self.entry(head)? + ENTRY_INFLIGHT, 0, Ordering::Relaxed)?;
            }
            self.store_u16(self.base + OFF_USED_IDX, ring_used_idx, Ordering::Release)?;
            self.counter.store(1, Ordering::Relaxed);
            return Ok(Vec::new());
        }
        let mut head = self.load_u16(self.base + OFF_LAST_BATCH_HEAD)?;
        for _ in 0..batch {
            let e = self.entry(head)?;
            self.store_u8(e + ENTRY_INFLIGHT, 0, Ordering::Relaxed)?;
            head = self.load_u16(e + ENTRY_NEXT)?;
        }
        self.store_u16(self.base + OFF_USED_IDX, ring_used_idx, Ordering::Release)?;
        let mut pending = Vec::new();
        for head in 0..self.desc_num {
            let e = self.entry(head)?;
            match self.load_u8(e + ENTRY_INFLIGHT)? {
                0 => {}
                1 => pending.push((self.load_u64(e + ENTRY_COUNTER)?, head)),
                _ => return Err(InflightError::Invalid("inflight flag neither 0 nor 1")),
            }
        }
        pending.sort_unstable();
        let next = pending.last().map_or(1, |&(c, _)| c + 1);
        self.counter.store(next, Ordering::Relaxed);
        Ok(pending.into_iter().map(|(_, h)| h).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Seek, SeekFrom};

    fn raw(region: &InflightRegion) -> Vec<u8> {
        let mut f = region.file().try_clone().unwrap();
        f.seek(SeekFrom::Start(0)).unwrap();
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }

    /// The same memfd opened again, as a new process gets it from QEMU.
    fn reopen(region: &InflightRegion) -> Arc<InflightRegion> {
        let f = region.file().try_clone().unwrap();
        Arc::new(InflightRegion::open(f, 0, region.size(), region.num_queues(), region.queue_size()).unwrap())
    }

    #[test]
    fn layout_is_the_specifications() {
        assert_eq!(queue_region_size(128), 2112);
        assert_eq!(queue_region_size(1), 64);
        let r = Arc::new(InflightRegion::create(3, 128).unwrap());
        assert_eq!(r.size(), 3 * 2112);
        let q = r.queue(2).unwrap();
        assert!(r.queue(3).is_none());
        q.mark(5).unwrap();
        q.mark(7).unwrap();
        let b = raw(&r);
        let base = 2 * 2112;
        assert_eq!(u16::from_le_bytes([b[base + 8], b[base + 9]]), VERSION);
        assert_eq!(u16::from_le_bytes([b[base + 10], b[base + 11]]), 128);
        let e5 = base + 16 + 5 * 16;
        assert_eq!(b[e5], 1, "inflight flag of head 5");
        assert_eq!(u64::from_le_bytes(b[e5 + 8..e5 + 16].try_into().unwrap()), 1);
        let e7 = base + 16 + 7 * 16;
        assert_eq!((b[e7], u64::from_le_bytes(b[e7 + 8..e7 + 16].try_into().unwrap())), (1, 2));
        // Completing 5: it heads the batch list, its flag is clear, used_idx follows the ring.
        assert!(q.complete(5, || Some(1)).unwrap());
        let b = raw(&r);
        assert_eq!(b[e5], 0);
        assert_eq!(u16::from_le_bytes([b[base + 12], b[base + 13]]), 5, "last_batch_head");
        assert_eq!(u16::from_le_bytes([b[base + 14], b[base + 15]]), 1, "used_idx");
        // Queue 0 untouched.
        assert!(b[..2112].iter().enumerate().all(|(i, &x)| x == 0 || (8..12).contains(&i)));
        assert!(q.mark(128).is_err(), "head beyond the ring");
    }

    #[test]
    fn a_new_process_resubmits_what_was_in_flight_in_counter_order() {
        let r = Arc::new(InflightRegion::create(1, 16).unwrap());
        let q = r.queue(0).unwrap();
        let mut used = 0u16;
        for h in [3, 9, 1, 12, 4] {
            q.mark(h).unwrap();
        }
        // 9 and 12 answered.
        for h in [9, 12] {
            used += 1;
            q.complete(h, || Some(used)).unwrap();
        }
        // Another head reused after its completion: marked again, newest.
        q.mark(9).unwrap();
        let r2 = reopen(&r);
        let q2 = r2.queue(0).unwrap();
        assert_eq!(q2.recover(used).unwrap(), vec![3, 1, 4, 9]);
        // Recovering is idempotent and the counter continues after the newest.
        assert_eq!(q2.recover(used).unwrap(), vec![3, 1, 4, 9]);
        q2.mark(7).unwrap();
        let q3 = reopen(&r2).queue(0).unwrap();
        assert_eq!(q3.recover(used).unwrap(), vec![3, 1, 4, 9, 7]);
    }

    #[test]
    fn crash_after_the_used_ring_was_written_clears_the_last_batch() {
        let r = Arc::new(InflightRegion::create(1, 8).unwrap());
        let q = r.queue(0).unwrap();
        for h in 0..4 {
            q.mark(h).unwrap();
        }
        q.complete(0, || Some(1)).unwrap();
        // The process dies after writing the used ring for head 2 (ring idx
        // 2) but before clearing its flag and updating used_idx.
        let died = q.complete(2, || None);
        assert!(!died.unwrap());
        let ring_idx = 2u16;
        let q2 = reopen(&r).queue(0).unwrap();
        assert_eq!(q2.recover(ring_idx).unwrap(), vec![1, 3], "2 reached the guest: not resubmitted");
        // Without the used ring written (ring idx still 1), 2 is resubmitted.
        let r = Arc::new(InflightRegion::create(1, 8).unwrap());
        let q = r.queue(0).unwrap();
        for h in 0..4 {
            q.mark(h).unwrap();
        }
        q.complete(0, || Some(1)).unwrap();
        q.complete(2, || None).unwrap();
        assert_eq!(reopen(&r).queue(0).unwrap().recover(1).unwrap(), vec![1, 2, 3]);
    }

    #[test]
    fn used_index_wraps() {
        let r = Arc::new(InflightRegion::create(1, 4).unwrap());
        let q = r.queue(0).unwrap();
        let mut used = u16::MAX - 1;
        q.recover(used).unwrap();
        for round in 0..6u16 {
            let h = round % 4;
            q.mark(h).unwrap();
            used = used.wrapping_add(1);
            q.complete(h, || Some(used)).unwrap();
        }
        q.mark(2).unwrap();
        q.mark(3).unwrap();
        q.complete(2, || None).unwrap();
        assert_eq!(used, 4);
        let q2 = reopen(&r).queue(0).unwrap();
        assert_eq!(q2.recover(used.wrapping_add(1)).unwrap(), vec![3]);
        // A ring index from another life of the ring: nothing is resubmitted.
        let q3 = reopen(&r).queue(0).unwrap();
        assert_eq!(q3.recover(used.wrapping_add(100)).unwrap(), Vec::<u16>::new());
        assert_eq!(reopen(&r).queue(0).unwrap().recover(used.wrapping_add(100)).unwrap(), Vec::<u16>::new());
    }

    #[test]
    fn a_region_that_does_not_fit_is_refused() {
        let r = InflightRegion::create(2, 64).unwrap();
        let f = r.file().try_clone().unwrap();
        assert!(InflightRegion::open(f, 0, r.size(), 2, 128).is_err(), "too small for 128 descriptors");
        let f = r.file().try_clone().unwrap();
        let other = Arc::new(InflightRegion::open(f, 0, r.size(), 1, 32).unwrap());
        assert!(other.queue(0).unwrap().recover(0).is_err(), "desc_num 64 read as 32");
        // A region the front-end zeroed itself: nothing in flight.
        let zero = tempfile::tempfile().unwrap();
        zero.set_len(queue_region_size(8) as u64).unwrap();
        let z = Arc::new(InflightRegion::open(zero, 0, queue_region_size(8) as u64, 1, 8).unwrap());
        assert!(z.queue(0).unwrap().recover(5).unwrap().is_empty());
    }
}

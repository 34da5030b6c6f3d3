//! A vhost-user-scsi frontend for benchmarks: it plays the part of QEMU and
//! of the guest's virtio-scsi driver at once, so that a backend (Lunar's
//! `lunard --vhost-user`, or another) can be driven at a given queue depth and
//! block size without booting a guest.
//!
//! "Guest memory" is a file on /dev/shm mapped shared here and handed to the
//! backend with SET_MEM_TABLE; the split virtqueues live in it, laid out as
//! the virtio 1.2 spec (2.7) says. Each request queue is driven by its own
//! thread: it keeps `queue_depth` requests in the ring, and on every used
//! entry checks the virtio-scsi response and submits the next request.
//! Only the rust-vmm crates are used for the protocol and memory access; the
//! driver side of the ring is written here (there is no such crate).

use std::fs::File;
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use vhost::vhost_user::message::{VhostUserHeaderFlag, VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VRING_DESC_F_NEXT: u16 = 1;
const VRING_DESC_F_WRITE: u16 = 2;
const VRING_USED_F_NO_NOTIFY: u16 = 1;
/// VIRTIO_RING_F_EVENT_IDX (virtio 1.2, 2.7.10): `used_event` and
/// `avail_event` instead of the flags, as Linux's virtio-scsi negotiates it.
const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
/// virtio-scsi defaults (virtio 1.2, 5.6.4) when the config space is not read.
const CDB_SIZE: u64 = 32;
const SENSE_SIZE: u64 = 96;
/// `lun[8] id[8] task_attr prio crn cdb[cdb_size]`
const REQ_HEADER_LEN: u64 = 19 + CDB_SIZE;
/// `sense_len[4] residual[4] status_qualifier[2] status response sense[sense_size]`
const RESP_LEN: u64 = 12 + SENSE_SIZE;
/// Room for one virtqueue of up to 1024 entries (descriptors, avail, used).
const RING_STRIDE: u64 = 64 << 10;
const PAGE: u64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("guest memory: {0}")]
    Memory(String),
    #[error("vhost-user: {0}")]
    Vhost(#[from] vhost::Error),
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("the backend offers {offered} request queues, {wanted} wanted")]
    Queues { offered: u64, wanted: usize },
    #[error("queue depth {0} does not fit a ring of {1} entries (3 descriptors a request)")]
    Depth(usize, u16),
    #[error("READ CAPACITY(16) failed: status {status:#x}, virtio-scsi response {response}")]
    Capacity { status: u8, response: u8 },
    #[error("the backend made no progress for 10 s")]
    Stalled,
}

/// What each request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    RandRead,
    RandWrite,
    SeqRead,
    SeqWrite,
}

impl Workload {
    fn writes(self) -> bool {
        matches!(self, Workload::RandWrite | Workload::SeqWrite)
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub socket: PathBuf,
    /// Request queues to drive (each on its own thread).
    pub queues: usize,
    pub queue_depth: usize,
    /// Bytes per request; a multiple of the LUN's block size.
    pub block_size: u64,
    pub workload: Workload,
    pub duration: Duration,
    pub lun: u16,
    /// Virtqueue size (a power of two).
    pub ring_size: u16,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX when the backend offers it (Linux's
    /// driver does): the driver asks for a notification only when it has
    /// reaped everything, the backend for a kick only when it stopped looking.
    pub event_idx: bool,
    /// After the run, stay connected this long with the rings set up and no
    /// request posted: the backend's CPU meanwhile is its idle cost.
    pub idle: Duration,
}

#[derive(Clone, Debug, Default)]
pub struct QueueReport {
    pub completed: u64,
    pub errors: u64,
    pub bytes: u64,
    pub first_error: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub queues: Vec<QueueReport>,
    pub elapsed: Duration,
    pub lun_blocks: u64,
    pub lun_block_size: u32,
}

impl Report {
    pub fn completed(&self) -> u64 {
        self.queues.iter().map(|q| q.completed).sum()
    }
    pub fn errors(&self) -> u64 {
        self.queues.iter().map(|q| q.errors).sum()
    }
    pub fn iops(&self) -> f64 {
        self.completed() as f64 / self.elapsed.as_secs_f64()
    }
    pub fn mib_per_s(&self) -> f64 {
        self.queues.iter().map(|q| q.bytes).sum::<u64>() as f64 / self.elapsed.as_secs_f64() / (1 << 20) as f64
    }
}

/// Where the three parts of a split virtqueue are in guest memory.
#[derive(Clone, Copy)]
struct RingLayout {
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
}

impl RingLayout {
    fn at(base: u64, size: u16) -> RingLayout {
        let desc = base;
        let avail = desc + 16 * size as u64;
        let used = (avail + 6 + 2 * size as u64).next_multiple_of(4);
        RingLayout { size, desc, avail, used }
    }
}

/// One request slot: a header, a response and a data buffer in guest memory,
/// and the three descriptors `3 * slot ..` that point at them.
#[derive(Clone, Copy)]
struct Slot {
    index: u16,
    header: u64,
    response: u64,
    data: u64,
}

struct Vring {
    layout: RingLayout,
    kick: EventFd,
    call: EventFd,
}

/// The frontend connection and the shared memory, set up and ready.
struct Device {
    _frontend: Frontend,
    mem: GuestMemoryMmap,
    vrings: Vec<Vring>,
    data_base: u64,
    slot_stride: u64,
    /// VIRTIO_RING_F_EVENT_IDX was negotiated.
    event_idx: bool,
}

fn lun_address(lun: u16) -> [u8; 8] {
    // Single-level LUN structure used by virtio-scsi: 1, target, LUN (flat).
    [1, 0, 0x40 | (lun >> 8) as u8, lun as u8, 0, 0, 0, 0]
}

impl Device {
    fn connect(opts: &Options) -> Result<Device, DriverError> {
        let max_depth = (opts.ring_size / 3) as usize;
        if opts.queue_depth == 0 || opts.queue_depth > max_depth || !opts.ring_size.is_power_of_two() {
            return Err(DriverError::Depth(opts.queue_depth, opts.ring_size));
        }
        let nvrings = 2 + opts.queues;
        let slot_stride = PAGE + opts.block_size.next_multiple_of(PAGE);
        let data_base = nvrings as u64 * RING_STRIDE;
        let size = data_base + (opts.queues * opts.queue_depth) as u64 * slot_stride;

        let file = tempfile::tempfile_in("/dev/shm")
            .or_else(|_| tempfile::tempfile())
            .map_err(|e| DriverError::Memory(e.to_string()))?;
        file.set_len(size).map_err(|e| DriverError::Memory(e.to_string()))?;
        let fd_file: File = file.try_clone().map_err(|e| DriverError::Memory(e.to_string()))?;
        let mem = GuestMemoryMmap::<()>::from_ranges_with_files([(
            GuestAddress(0),
            size as usize,
            Some(FileOffset::new(file, 0)),
        )])
        .map_err(|e| DriverError::Memory(format!("{e:?}")))?;
        let host = mem.get_host_address(GuestAddress(0)).map_err(|e| DriverError::Memory(e.to_string()))? as u64;

        let mut frontend = Frontend::connect(&opts.socket, nvrings as u64)?;
        frontend.set_owner()?;
        let offered = frontend.get_features()?;
        let protocol_bit = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        let event_idx = opts.event_idx && offered & VIRTIO_RING_F_EVENT_IDX != 0;
        let ring_bits = if event_idx { VIRTIO_RING_F_EVENT_IDX } else { 0 };
        frontend.set_features(VIRTIO_F_VERSION_1 | ring_bits | (offered & protocol_bit))?;
        if offered & protocol_bit != 0 {
            let pf = frontend.get_protocol_features()?;
            let wanted = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK;
            frontend.set_protocol_features(pf & wanted)?;
            if pf.contains(VhostUserProtocolFeatures::REPLY_ACK) {
                // Every request acknowledged: a refusal names its request.
                frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
            }
            if pf.contains(VhostUserProtocolFeatures::MQ) {
                let offered = frontend.get_queue_num()?;
                if offered < nvrings as u64 {
                    return Err(DriverError::Queues { offered: offered.saturating_sub(2), wanted: opts.queues });
                }
            }
        }
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host,
            mmap_offset: 0,
            mmap_handle: std::os::fd::AsRawFd::as_raw_fd(&fd_file),
        };
        frontend.set_mem_table(&[region])?;

        let mut vrings = Vec::new();
        for v in 0..nvrings {
            // The control and event queues are set up (backends expect every
            // queue) but left empty.
            let size = if v < 2 { 16 } else { opts.ring_size };
            let layout = RingLayout::at(v as u64 * RING_STRIDE, size);
            let kick = EventFd::new(0).map_err(DriverError::EventFd)?;
            let call = EventFd::new(0).map_err(DriverError::EventFd)?;
            frontend.set_vring_num(v, size)?;
            frontend.set_vring_base(v, 0)?;
            frontend.set_vring_addr(
                v,
                &VringConfigData {
                    queue_max_size: size,
                    queue_size: size,
                    flags: 0,
                    desc_table_addr: host + layout.desc,
                    used_ring_addr: host + layout.used,
                    avail_ring_addr: host + layout.avail,
                    log_addr: None,
                },
            )?;
            frontend.set_vring_kick(v, &kick)?;
            frontend.set_vring_call(v, &call)?;
            vrings.push(Vring { layout, kick, call });
        }
        if offered & protocol_bit != 0 {
            for v in 0..nvrings {
                frontend.set_vring_enable(v, true)?;
            }
        }
        drop(fd_file);
        Ok(Device { _frontend: frontend, mem, vrings, data_base, slot_stride, event_idx })
    }

    fn slot(&self, queue: usize, depth: usize, s: usize) -> Slot {
        let base = self.data_base + (queue * depth + s) as u64 * self.slot_stride;
        Slot { index: s as u16, header: base, response: base + 128, data: base + PAGE }
    }
}

/// The driver side of one request virtqueue.
struct QueueDriver<'a> {
    mem: &'a GuestMemoryMmap,
    vring: &'a Vring,
    next_avail: u16,
    last_used: u16,
    /// The avail index at the last publish (for `avail_event`).
    published: u16,
    event_idx: bool,
}

impl<'a> QueueDriver<'a> {
    fn w<T: vm_memory::ByteValued>(&self, v: T, at: u64) {
        self.mem.write_obj(v, GuestAddress(at)).expect("ring inside guest memory");
    }

    fn desc(&self, i: u16, addr: u64, len: u64, flags: u16, next: u16) {
        let at = self.vring.layout.desc + 16 * i as u64;
        self.w(addr.to_le(), at);
        self.w((len as u32).to_le(), at + 8);
        self.w(flags.to_le(), at + 12);
        self.w(next.to_le(), at + 14);
    }

    /// Writes the header and the descriptor chain of `slot` for `cdb`, with
    /// `data_len` bytes going out (`write`) or in; puts it in the avail ring
    /// (not yet published).
    fn prepare(&mut self, slot: Slot, lun: u16, cdb: &[u8], data_len: u64, write: bool) {
        let mut header = [0u8; REQ_HEADER_LEN as usize];
        header[..8].copy_from_slice(&lun_address(lun));
        header[8..16].copy_from_slice(&(slot.index as u64).to_le_bytes());
        header[19..19 + cdb.len()].copy_from_slice(cdb);
        self.mem.write_slice(&header, GuestAddress(slot.header)).expect("slot inside guest memory");
        self.w(0xffu8, slot.response + 11);
        let d0 = 3 * slot.index;
        self.desc(d0, slot.header, REQ_HEADER_LEN, VRING_DESC_F_NEXT, d0 + 1);
        if data_len == 0 {
            self.desc(d0 + 1, slot.response, RESP_LEN, VRING_DESC_F_WRITE, 0);
        } else if write {
            self.desc(d0 + 1, slot.data, data_len, VRING_DESC_F_NEXT, d0 + 2);
            self.desc(d0 + 2, slot.response, RESP_LEN, VRING_DESC_F_WRITE, 0);
        } else {
            self.desc(d0 + 1, slot.response, RESP_LEN, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, d0 + 2);
            self.desc(d0 + 2, slot.data, data_len, VRING_DESC_F_WRITE, 0);
        }
        let entry = self.vring.layout.avail + 4 + 2 * (self.next_avail % self.vring.layout.size) as u64;
        self.w(d0.to_le(), entry);
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Makes the prepared entries visible and kicks unless told not to:
    /// by the used ring's flags, or with EVENT_IDX by `avail_event` (a kick
    /// only if the backend asked for one within the entries just published).
    fn publish(&mut self) {
        let l = self.vring.layout;
        self.mem
            .store(self.next_avail.to_le(), GuestAddress(l.avail + 2), Ordering::Release)
            .expect("avail idx inside guest memory");
        // The index store before the read of what the backend wants.
        fence(Ordering::SeqCst);
        let kick = if self.event_idx {
            let event: u16 = self
                .mem
                .load(GuestAddress(l.used + 4 + 8 * l.size as u64), Ordering::Acquire)
                .expect("avail_event inside guest memory");
            need_event(u16::from_le(event), self.next_avail, self.published)
        } else {
            let flags: u16 =
                self.mem.load(GuestAddress(l.used), Ordering::Acquire).expect("used flags inside guest memory");
            u16::from_le(flags) & VRING_USED_F_NO_NOTIFY == 0
        };
        self.published = self.next_avail;
        if kick {
            let _ = self.vring.kick.write(1);
        }
    }

    /// Puts `slot` back in the avail ring with a new CDB of the same length
    /// and direction: its descriptors still describe it.
    fn again(&mut self, slot: Slot, cdb: &[u8]) {
        self.mem.write_slice(cdb, GuestAddress(slot.header + 19)).expect("slot inside guest memory");
        self.w(0xffu8, slot.response + 11);
        let entry = self.vring.layout.avail + 4 + 2 * (self.next_avail % self.vring.layout.size) as u64;
        self.w((3 * slot.index).to_le(), entry);
        self.next_avail = self.next_avail.wrapping_add(1);
    }

    /// Before sleeping: with EVENT_IDX, asks for a notification at the next
    /// used entry. False if entries came meanwhile (reap them instead).
    fn arm(&self) -> bool {
        if !self.event_idx {
            return true;
        }
        let l = self.vring.layout;
        self.mem
            .store(self.last_used.to_le(), GuestAddress(l.avail + 4 + 2 * l.size as u64), Ordering::Release)
            .expect("used_event inside guest memory");
        fence(Ordering::SeqCst);
        let used_idx: u16 =
            self.mem.load(GuestAddress(l.used + 2), Ordering::Acquire).expect("used idx inside guest memory");
        u16::from_le(used_idx) == self.last_used
    }

    /// The used entries since the last call: (slot, response, status).
    fn reap(&mut self, out: &mut Vec<u16>) {
        let used_idx: u16 = self
            .mem
            .load(GuestAddress(self.vring.layout.used + 2), Ordering::Acquire)
            .expect("used idx inside guest memory");
        let used_idx = u16::from_le(used_idx);
        while self.last_used != used_idx {
            let at = self.vring.layout.used + 4 + 8 * (self.last_used % self.vring.layout.size) as u64;
            let id: u32 = self.mem.read_obj(GuestAddress(at)).expect("used ring inside guest memory");
            out.push((u32::from_le(id) / 3) as u16);
            self.last_used = self.last_used.wrapping_add(1);
        }
    }

    /// (status, response) of a completed slot.
    fn outcome(&self, slot: Slot) -> (u8, u8) {
        let status: u8 = self.mem.read_obj(GuestAddress(slot.response + 10)).expect("response in memory");
        let response: u8 = self.mem.read_obj(GuestAddress(slot.response + 11)).expect("response in memory");
        (status, response)
    }

    /// Blocks until the backend signals the call eventfd, or `stalled` is set.
    fn wait(&self) {
        let _ = self.vring.call.read();
    }
}

/// virtio 1.2, 2.7.10: whether the other side asked to be told of an index
/// moving from `old` to `new` (it waits for `event` to be passed).
fn need_event(event: u16, new: u16, old: u16) -> bool {
    new.wrapping_sub(event).wrapping_sub(1) < new.wrapping_sub(old)
}

/// READ/WRITE(10) where they can address the blocks (as Linux's sd does:
/// some backends know no other), READ/WRITE(16) beyond; (CDB, length).
fn read_write(write: bool, lba: u64, blocks: u32) -> ([u8; 16], usize) {
    let mut cdb = [0u8; 16];
    match (u32::try_from(lba + blocks as u64), u16::try_from(blocks)) {
        (Ok(_), Ok(n)) => {
            cdb[0] = if write { 0x2a } else { 0x28 };
            cdb[2..6].copy_from_slice(&(lba as u32).to_be_bytes());
            cdb[7..9].copy_from_slice(&n.to_be_bytes());
            (cdb, 10)
        }
        _ => {
            cdb[0] = if write { 0x8a } else { 0x88 };
            cdb[2..10].copy_from_slice(&lba.to_be_bytes());
            cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
            (cdb, 16)
        }
    }
}

/// (blocks, block size) of the LUN.
type Geometry = (u64, u32);
/// (next avail index, last used index) of a ring.
type RingPosition = (u16, u16);

/// READ CAPACITY(16) on the first request queue, and where that queue's
/// avail and used indexes are left.
fn capacity(dev: &Device, opts: &Options) -> Result<(Geometry, RingPosition), DriverError> {
    let mut q = QueueDriver {
        mem: &dev.mem,
        vring: &dev.vrings[2],
        next_avail: 0,
        last_used: 0,
        published: 0,
        event_idx: dev.event_idx,
    };
    let slot = dev.slot(0, opts.queue_depth, 0);
    let mut cdb = [0u8; 16];
    cdb[0] = 0x9e;
    cdb[1] = 0x10;
    cdb[13] = 32;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        q.prepare(slot, opts.lun, &cdb, 32, false);
        q.publish();
        let mut kicked = Instant::now();
        let mut done = Vec::new();
        while done.is_empty() {
            if Instant::now() > deadline {
                return Err(DriverError::Stalled);
            }
            std::thread::sleep(Duration::from_millis(1));
            q.reap(&mut done);
            if done.is_empty() && Instant::now().duration_since(kicked) > Duration::from_millis(100) {
                // A kick sent while the backend was still enabling the ring
                // may be lost: kick again.
                let _ = q.vring.kick.write(1);
                kicked = Instant::now();
            }
        }
        let (status, response) = q.outcome(slot);
        // A unit attention (power on) first is normal: ask again.
        if response == 0 && status == 2 && Instant::now() < deadline {
            continue;
        }
        if response != 0 || status != 0 {
            return Err(DriverError::Capacity { status, response });
        }
        let mut data = [0u8; 12];
        dev.mem.read_slice(&mut data, GuestAddress(slot.data)).expect("slot in memory");
        let last = u64::from_be_bytes(data[0..8].try_into().unwrap_or_default());
        let block_size = u32::from_be_bytes(data[8..12].try_into().unwrap_or_default());
        return Ok(((last + 1, block_size), (q.next_avail, q.last_used)));
    }
}

struct Progress {
    completed: AtomicU64,
    stalled: AtomicBool,
}

fn drive_queue(
    dev: &Device,
    opts: &Options,
    queue: usize,
    start: (u16, u16),
    geometry: (u64, u32),
    stop_at: Instant,
    progress: &Progress,
) -> QueueReport {
    let (blocks, lbs) = geometry;
    let per_request = (opts.block_size / lbs as u64).max(1);
    let span = blocks / per_request;
    let mut q = QueueDriver {
        mem: &dev.mem,
        vring: &dev.vrings[2 + queue],
        next_avail: start.0,
        last_used: start.1,
        published: start.0,
        event_idx: dev.event_idx,
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed ^ queue as u64);
    let mut seq = (queue as u64 * span / opts.queues as u64) % span.max(1);
    let write = opts.workload.writes();
    let mut next_lba = |rng: &mut rand::rngs::StdRng| match opts.workload {
        Workload::RandRead | Workload::RandWrite => rng.gen_range(0..span) * per_request,
        Workload::SeqRead | Workload::SeqWrite => {
            seq = (seq + 1) % span;
            seq * per_request
        }
    };
    for s in 0..opts.queue_depth {
        let slot = dev.slot(queue, opts.queue_depth, s);
        if write {
            let _ = dev.mem.write_slice(&vec![0xa5; opts.block_size as usize], GuestAddress(slot.data));
        }
        let (cdb, len) = read_write(write, next_lba(&mut rng), per_request as u32);
        q.prepare(slot, opts.lun, &cdb[..len], opts.block_size, write);
    }
    q.publish();
    let mut report = QueueReport::default();
    let mut outstanding = opts.queue_depth;
    let mut done = Vec::with_capacity(opts.queue_depth);
    while outstanding > 0 {
        done.clear();
        q.reap(&mut done);
        if done.is_empty() {
            if progress.stalled.load(Ordering::Relaxed) {
                report.first_error.get_or_insert_with(|| "backend stalled".into());
                break;
            }
            if q.arm() {
                q.wait();
            }
            continue;
        }
        let more = Instant::now() < stop_at;
        for &index in &done {
            let slot = dev.slot(queue, opts.queue_depth, index as usize);
            let (status, response) = q.outcome(slot);
            if response != 0 || status != 0 {
                report.errors += 1;
                report
                    .first_error
                    .get_or_insert_with(|| format!("status {status:#x}, virtio-scsi response {response}"));
            } else {
                report.completed += 1;
                report.bytes += opts.block_size;
            }
            if more {
                // The whole 16 bytes: zeros past a 10-byte CDB.
                let (cdb, _) = read_write(write, next_lba(&mut rng), per_request as u32);
                q.again(slot, &cdb);
            } else {
                outstanding -= 1;
            }
        }
        progress.completed.fetch_add(done.len() as u64, Ordering::Relaxed);
        if more {
            q.publish();
        }
    }
    report
}

/// Connects to the backend, runs the workload on every queue for the
/// duration, and returns what completed.
pub fn run(opts: &Options) -> Result<Report, DriverError> {
    let dev = Device::connect(opts)?;
    // The capacity requests used entries of queue 0's ring.
    let (geometry, queue0) = capacity(&dev, opts)?;
    let progress = Arc::new(Progress { completed: AtomicU64::new(0), stalled: AtomicBool::new(false) });
    let finished = AtomicBool::new(false);
    let start = Instant::now();
    let stop_at = start + opts.duration;
    let reports = std::thread::scope(|s| {
        let handles: Vec<_> = (0..opts.queues)
            .map(|qi| {
                let (dev, progress) = (&dev, &progress);
                let first = if qi == 0 { queue0 } else { (0, 0) };
                s.spawn(move || drive_queue(dev, opts, qi, first, geometry, stop_at, progress))
            })
            .collect();
        // Watchdog: a backend that stops answering must not hang the run.
        s.spawn(|| {
            let mut last = 0;
            let mut quiet = Duration::ZERO;
            while !finished.load(Ordering::Acquire) {
                std::thread::sleep(Duration::from_millis(200));
                let now = progress.completed.load(Ordering::Relaxed);
                quiet = if now == last { quiet + Duration::from_millis(200) } else { Duration::ZERO };
                last = now;
                if quiet >= Duration::from_secs(1) {
                    // A kick lost while a ring was being enabled: kick again.
                    for v in &dev.vrings[2..] {
                        let _ = v.kick.write(1);
                    }
                }
                if quiet >= Duration::from_secs(10) {
                    progress.stalled.store(true, Ordering::Relaxed);
                    for v in &dev.vrings {
                        let _ = v.call.write(1);
                    }
                }
            }
        });
        let reports: Vec<_> = handles.into_iter().map(|h| h.join().unwrap_or_default()).collect();
        finished.store(true, Ordering::Release);
        reports
    });
    if progress.stalled.load(Ordering::Relaxed) {
        return Err(DriverError::Stalled);
    }
    let elapsed = start.elapsed();
    std::thread::sleep(opts.idle);
    drop(dev);
    Ok(Report { queues: reports, elapsed, lun_blocks: geometry.0, lun_block_size: geometry.1 })
}

//! The device without QEMU: guest memory and split rings built here, the
//! backend driven through the calls `vhost-user-backend` makes (memory
//! update, kicks as `kick_*`). Covers what a Linux guest cannot
//! provoke on demand: events that find no buffer, and the order of task
//! management answers against the commands they abort.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lunar_core::Target;
use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost_user_backend::VringT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

use crate::device::ScsiBackend;
use crate::events::EVENT_LEN;
use crate::request_queue::NOTIFY_EVERY;
use crate::virtio::*;
use crate::*;
use lunar_block::{Backend, FaultBackend};
use lunar_core::ErrorPolicies;
use lunar_scsi::DiskConfig;
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 128;
const CTRL: u64 = 0x1_0000;
const EVT: u64 = 0x2_0000;
const REQ: u64 = 0x3_0000;
/// Buffers (requests, responses, events) from here on.
const DATA: u64 = 0x10_0000;

fn memory() -> Mem {
    GuestMemoryAtomic::new(GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap())
}

/// The driver's side of one split virtqueue (virtio 1.2, 2.7).
struct Ring {
    base: u64,
    next_desc: u16,
    avail_idx: u16,
}

impl Ring {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 16 * QSIZE as u64
    }
    fn used(&self) -> u64 {
        self.base + 0x1000
    }

    /// A ring and the device's view of it.
    fn new(mem: &Mem, base: u64) -> (Ring, Vring) {
        let ring = Ring { base, next_desc: 0, avail_idx: 0 };
        let vring = Vring::new(mem.clone(), QSIZE).unwrap();
        vring.set_queue_size(QSIZE);
        vring.set_queue_info(ring.desc(), ring.avail(), ring.used()).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        (ring, vring)
    }

    /// Makes a chain of (address, length, device-writable) available.
    fn add(&mut self, mem: &Mem, bufs: &[(u64, u32, bool)]) -> u16 {
        let m = mem.memory();
        let head = self.next_desc;
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let idx = (head + i as u16) % QSIZE;
            let at = self.desc() + 16 * idx as u64;
            let flags = if i + 1 < bufs.len() { 1 } else { 0 } | if write { 2 } else { 0 };
            m.write_obj(addr, GuestAddress(at)).unwrap();
            m.write_obj(len, GuestAddress(at + 8)).unwrap();
            m.write_obj(flags as u16, GuestAddress(at + 12)).unwrap();
            m.write_obj((idx + 1) % QSIZE, GuestAddress(at + 14)).unwrap();
        }
        self.next_desc = (head + bufs.len() as u16) % QSIZE;
        let slot = self.avail() + 4 + 2 * (self.avail_idx % QSIZE) as u64;
        m.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(Ordering::SeqCst);
        m.write_obj(self.avail_idx, GuestAddress(self.avail() + 2)).unwrap();
        head
    }

    fn used_idx(&self, mem: &Mem) -> u16 {
        mem.memory().read_obj(GuestAddress(self.used() + 2)).unwrap()
    }

    /// Used element `i`: (descriptor head, bytes written).
    fn used_elem(&self, mem: &Mem, i: u16) -> (u32, u32) {
        let at = self.used() + 4 + 8 * (i % QSIZE) as u64;
        let m = mem.memory();
        (m.read_obj(GuestAddress(at)).unwrap(), m.read_obj(GuestAddress(at + 4)).unwrap())
    }
}

fn read(mem: &Mem, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.memory().read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

#[track_caller]
fn eventually(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn start(t: &Arc<Target>, num_queues: usize, dir: &Path) -> (Controller, Arc<ScsiBackend>, Mem) {
    start_with(t, num_queues, dir, VhostLimits::default())
}

fn start_with(
    t: &Arc<Target>,
    num_queues: usize,
    dir: &Path,
    limits: VhostLimits,
) -> (Controller, Arc<ScsiBackend>, Mem) {
    let cfg = ControllerConfig {
        socket: dir.join("vus.sock"),
        num_queues,
        luns: None,
        hotplug: true,
        poll: DEFAULT_POLL,
        limits,
    };
    let c = Controller::start(t.clone(), cfg).unwrap();
    let b = c.backend.clone();
    let mem = memory();
    b.update_memory(mem.clone());
    (c, b, mem)
}

/// A target with a 1 MiB RAM LUN 0 and a controller of one request queue
/// on it, listening in `dir` (its frontend is the test's `connect`).
fn one_queue_controller(name: &str, dir: &Path) -> (Arc<Target>, Controller) {
    let t = Target::new(name, 1).unwrap();
    add_lun(&t, 0, Backend::mem(1 << 20));
    let cfg = ControllerConfig {
        socket: dir.join("vq.sock"),
        num_queues: 1,
        luns: None,
        hotplug: false,
        poll: DEFAULT_POLL,
        limits: VhostLimits::default(),
    };
    let c = Controller::start(t.clone(), cfg).unwrap();
    (t, c)
}

fn add_lun(t: &Target, lun: u64, backend: Backend) {
    lunar_core::wait(t.add_device(lun, DiskConfig::default(), backend, ErrorPolicies::default())).unwrap();
}

/// (event, LUN as Linux decodes it, reason) of the event written at `addr`.
fn event_at(mem: &Mem, addr: u64) -> (u32, u16, u32) {
    let b = read(mem, addr, EVENT_LEN);
    let event = u32::from_le_bytes(b[0..4].try_into().unwrap());
    assert_eq!((b[4], b[5]), (1, 0), "target 0 addressed");
    (event, u16::from_be_bytes([b[6], b[7]]), u32::from_le_bytes(b[12..16].try_into().unwrap()))
}

#[test]
fn hot_plug_events_in_order_then_missed_when_the_driver_posts_none() {
    use events::*;
    let dir = tempfile::tempdir().unwrap();
    let t = Target::new("vhost-events", 2).unwrap();
    add_lun(&t, 0, Backend::mem(1 << 20));
    let (c, b, mem) = start(&t, 2, dir.path());
    let (_ctrl_ring, _ctrl) = Ring::new(&mem, CTRL);
    let (mut er, evt) = Ring::new(&mem, EVT);
    let kick = |b: &ScsiBackend| b.kick_event(&evt);
    for i in 0..2 {
        er.add(&mem, &[(DATA + 16 * i, 16, true)]);
    }
    kick(&b);

    add_lun(&t, 5, Backend::mem(1 << 20));
    eventually("the rescan event", || er.used_idx(&mem) == 1);
    // The LUN is usable before the driver hears of it.
    assert!(c.luns().contains(&5));
    assert_eq!(er.used_elem(&mem, 0), (0, 16));
    assert_eq!(event_at(&mem, DATA), (T_TRANSPORT_RESET, 5, EVT_RESET_RESCAN));
    lunar_core::wait(t.remove_device(5)).unwrap();
    eventually("the removed event", || er.used_idx(&mem) == 2);
    assert_eq!(event_at(&mem, DATA + 16), (T_TRANSPORT_RESET, 5, EVT_RESET_REMOVED));
    assert!(!c.luns().contains(&5));

    // No buffer posted: 70 events, then LUN 9 last. (Each waits for the
    // previous to be handled: a LUN removed before the controller could
    // attach it makes no event at all.)
    for _ in 0..35 {
        add_lun(&t, 6, Backend::mem(1 << 20));
        eventually("LUN 6 attached", || c.luns().contains(&6));
        lunar_core::wait(t.remove_device(6)).unwrap();
        eventually("LUN 6 detached", || !c.luns().contains(&6));
    }
    add_lun(&t, 9, Backend::mem(1 << 20));
    eventually("LUN 9 attached", || c.luns().contains(&9));
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(er.used_idx(&mem), 2, "nothing delivered without buffers");

    // Buffers come: the first MAX_PENDING events in order, the first
    // flagged "missed" (the rest, LUN 9's rescan among them, were dropped).
    let base = DATA + 0x1000;
    for i in 0..MAX_PENDING as u64 + 4 {
        er.add(&mem, &[(base + 16 * i, 16, true)]);
    }
    kick(&b);
    eventually("the kept events", || er.used_idx(&mem) >= 2 + MAX_PENDING as u16);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(er.used_idx(&mem), 2 + MAX_PENDING as u16, "only the kept events");
    for i in 0..MAX_PENDING as u64 {
        let (event, lun, reason) = event_at(&mem, base + 16 * i);
        let missed = if i == 0 { T_EVENTS_MISSED } else { 0 };
        let want = if i % 2 == 0 { EVT_RESET_RESCAN } else { EVT_RESET_REMOVED };
        assert_eq!((event, lun, reason), (T_TRANSPORT_RESET | missed, 6, want), "event {i}");
    }
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(er.used_idx(&mem), 2 + MAX_PENDING as u16, "dropped events are not sent late");

    // A resize is a parameter change: CAPACITY DATA HAS CHANGED.
    lunar_core::wait(t.resize_device(9, 2 << 20)).unwrap();
    eventually("the param change event", || er.used_idx(&mem) == 3 + MAX_PENDING as u16);
    assert_eq!(event_at(&mem, base + 16 * MAX_PENDING as u64), (T_PARAM_CHANGE, 9, 0x092a));

    // The driver resets the device: what was pending is forgotten.
    add_lun(&t, 10, Backend::mem(1 << 20));
    eventually("LUN 10 attached", || c.luns().contains(&10));
    er.add(&mem, &[(DATA, 16, true)]);
    kick(&b);
    eventually("the rescan of LUN 10", || er.used_idx(&mem) == 4 + MAX_PENDING as u16);
    lunar_core::wait(t.remove_device(10)).unwrap();
    eventually("LUN 10 detached", || !c.luns().contains(&10));
    b.stop_vring(1);
    let (mut er, evt) = Ring::new(&mem, EVT + 0x8000);
    er.add(&mem, &[(DATA, 16, true)]);
    b.kick_event(&evt);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(er.used_idx(&mem), 0, "no stale event after a reset");
    c.shutdown();
    t.shutdown();
}

/// A virtio-scsi command request header (target 0, `lun`) with `cdb`.
fn request_header(lun: u16, tag: u64, cdb: &[u8]) -> Vec<u8> {
    let mut r = vec![0u8; REQ_HEADER + DEFAULT_CDB_SIZE as usize];
    r[0] = 1;
    r[2] = 0x40 | (lun >> 8) as u8;
    r[3] = lun as u8;
    r[8..16].copy_from_slice(&tag.to_le_bytes());
    r[REQ_HEADER..REQ_HEADER + cdb.len()].copy_from_slice(cdb);
    r
}

/// Puts a WRITE(10) of one block at `lba` of `lun` on a request ring;
/// returns where its response goes.
fn write10(mem: &Mem, ring: &mut Ring, slot: u64, lun: u16, tag: u64, lba: u32) -> u64 {
    let req = DATA + 0x4_0000 + slot * 0x1000;
    let resp = req + 0x800;
    let mut cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    let mut r = request_header(lun, tag, &cdb);
    r.extend_from_slice(&[0xa5; 512]);
    mem.memory().write_slice(&r, GuestAddress(req)).unwrap();
    ring.add(mem, &[(req, r.len() as u32, false), (resp, (RESP_HEADER + DEFAULT_SENSE_SIZE as usize) as u32, true)]);
    resp
}

/// (virtio response, SCSI status) of a command response.
fn cmd_resp(mem: &Mem, resp: u64) -> (u8, u8) {
    let b = read(mem, resp, RESP_HEADER);
    (b[11], b[10])
}

/// Four slow writes on LUN 0 and two on LUN 1, in flight on two request
/// queues; then a task management function. It must be answered only after
/// every command it aborts has been answered, and those with the response
/// the guest expects (`S_RESET` after a reset: Linux retries them).
fn tmf_with_io_in_flight(subtype: u32, lun: u16, tag: u64) -> Vec<(u8, u8)> {
    let dir = tempfile::tempdir().unwrap();
    let t = Target::new("vhost-tmf", 2).unwrap();
    let slow: Vec<_> = (0..2).map(|_| Arc::new(FaultBackend::new(Backend::mem(1 << 20)))).collect();
    for (l, f) in slow.iter().enumerate() {
        f.set_delay(Duration::from_millis(300));
        add_lun(&t, l as u64, Backend::Fault(f.clone()));
    }
    let (c, b, mem) = start(&t, 2, dir.path());
    let (mut cr, ctrl) = Ring::new(&mem, CTRL);
    let (_er, _evt) = Ring::new(&mem, EVT);
    let mut rings: Vec<_> = (0..2).map(|q| Ring::new(&mem, REQ + 0x2000 * q)).collect();
    let mut resps = Vec::new();
    for i in 0..6u64 {
        let (ring, _) = &mut rings[i as usize % 2];
        resps.push(write10(&mem, ring, i, (i / 4) as u16, 100 + i, i as u32));
    }
    for (q, (_, vring)) in rings.iter().enumerate() {
        b.kick_request(q, vring);
    }
    let inflight = || b.vqs.iter().map(|v| v.inflight.len()).sum::<usize>();
    eventually("6 commands in flight", || inflight() == 6);

    let mut req = Vec::new();
    req.extend_from_slice(&T_TMF.to_le_bytes());
    req.extend_from_slice(&subtype.to_le_bytes());
    req.extend_from_slice(&[1, 0, 0x40, lun as u8, 0, 0, 0, 0]);
    req.extend_from_slice(&tag.to_le_bytes());
    let (at, answer) = (DATA + 0x3_0000, DATA + 0x3_0100);
    mem.memory().write_slice(&req, GuestAddress(at)).unwrap();
    mem.memory().write_obj(0xffu8, GuestAddress(answer)).unwrap();
    cr.add(&mem, &[(at, req.len() as u32, false), (answer, 1, true)]);
    b.kick_control(&ctrl);
    eventually("the TMF answer", || cr.used_idx(&mem) == 1);
    let answered: Vec<u16> = rings.iter().map(|(r, _)| r.used_idx(&mem)).collect();
    let tmf: u8 = mem.memory().read_obj(GuestAddress(answer)).unwrap();
    assert_eq!(tmf, S_FUNCTION_COMPLETE);
    eventually("every command answered", || rings.iter().all(|(r, _)| r.used_idx(&mem) == 3));
    let out: Vec<(u8, u8)> = resps.iter().map(|&r| cmd_resp(&mem, r)).collect();
    // Aborted commands were all answered before the TMF.
    let aborted: Vec<usize> = (0..6).filter(|&i| out[i].0 != S_OK).collect();
    for i in aborted {
        let (ring, _) = &rings[i % 2];
        let pos = (0..answered[i % 2]).any(|k| ring.used_elem(&mem, k).0 == 2 * (i as u32 / 2));
        assert!(pos, "command {i} aborted by the TMF but answered after it ({out:?})");
    }
    c.shutdown();
    t.shutdown();
    out
}

const OK: (u8, u8) = (S_OK, 0);
const RESET: (u8, u8) = (S_RESET, 0x40);
const ABORTED: (u8, u8) = (S_ABORTED, 0x40);

#[test]
fn lun_reset_answers_after_its_aborted_commands() {
    let out = tmf_with_io_in_flight(TMF_LOGICAL_UNIT_RESET, 0, 0);
    assert_eq!(out, vec![RESET, RESET, RESET, RESET, OK, OK]);
}

#[test]
fn i_t_nexus_reset_aborts_every_lun() {
    let out = tmf_with_io_in_flight(TMF_I_T_NEXUS_RESET, 0, 0);
    assert_eq!(out, vec![RESET; 6]);
}

#[test]
fn abort_task_aborts_one_command() {
    let out = tmf_with_io_in_flight(TMF_ABORT_TASK, 0, 102);
    assert_eq!(out, vec![OK, OK, ABORTED, OK, OK, OK]);
}

/// Guest memory in a file, as QEMU shares it (`memory-backend-memfd`): the
/// test's view, and the file for `SET_MEM_TABLE`.
fn shared_memory() -> (Mem, std::fs::File) {
    let file = tempfile::tempfile().unwrap();
    file.set_len(4 << 20).unwrap();
    let map = vm_memory::MmapRegion::from_file(vm_memory::FileOffset::new(file.try_clone().unwrap(), 0), 4 << 20);
    let region = vm_memory::GuestRegionMmap::new(map.unwrap(), GuestAddress(0)).unwrap();
    (GuestMemoryAtomic::new(GuestMemoryMmap::from_regions(vec![region]).unwrap()), file)
}

/// Where QEMU's process has the guest's memory (vring addresses are given there).
const USER: u64 = 0x7f00_0000_0000;

/// A front-end's connection set up as QEMU 7.2 does it for one request
/// queue (virtqueue 2): features, inflight region, memory, the ring.
fn connect(
    b: &Arc<ScsiBackend>,
    mem_file: &std::fs::File,
    inflight: Option<std::fs::File>,
    ring: &Ring,
    base: u32,
) -> (connection::Connection, std::io::PipeWriter) {
    use vhost::vhost_user::message::{VhostUserInflight, VhostUserMemoryRegion, VhostUserVringAddrFlags};
    use vhost::vhost_user::VhostUserBackendReqHandlerMut;
    let mut c = connection::Connection::new(b.clone()).unwrap();
    c.set_owner().unwrap();
    c.set_features(b.features()).unwrap();
    c.set_protocol_features(b.protocol_features().bits()).unwrap();
    let msg = VhostUserInflight { mmap_size: 0, mmap_offset: 0, num_queues: 3, queue_size: QSIZE };
    let file = match inflight {
        Some(f) => f,
        None => c.get_inflight_fd(&msg).unwrap().1,
    };
    let size = inflight::queue_region_size(QSIZE) as u64 * 3;
    c.set_inflight_fd(&VhostUserInflight { mmap_size: size, ..msg }, file).unwrap();
    let region = VhostUserMemoryRegion::new(0, 4 << 20, USER, 0);
    c.set_mem_table(&[region], vec![mem_file.try_clone().unwrap()], None).unwrap();
    c.set_vring_num(2, QSIZE as u32).unwrap();
    let flags = VhostUserVringAddrFlags::empty();
    c.set_vring_addr(2, flags, USER + ring.desc(), USER + ring.used(), USER + ring.avail(), 0).unwrap();
    c.set_vring_base(2, base).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    c.set_vring_kick(2, Some(std::fs::File::from(std::os::fd::OwnedFd::from(reader)))).unwrap();
    (c, writer)
}

/// A process dies with three writes taken off the ring and not answered; a
/// new process gets the same inflight region (`SET_INFLIGHT_FD`) and ring:
/// it submits the three again, once each, before the request the driver
/// added meanwhile, and the ring's used index ends at four.
#[test]
fn a_new_process_resubmits_the_requests_the_old_one_left_in_flight() {
    use vhost::vhost_user::VhostUserBackendReqHandlerMut;
    let (mem, mem_file) = shared_memory();
    let mut ring = Ring { base: REQ, next_desc: 0, avail_idx: 0 };
    // The first process: LUN 0 paused, so the writes stay in flight.
    let dir1 = tempfile::tempdir().unwrap();
    let t1 = Target::new("vhost-inflight-1", 1).unwrap();
    add_lun(&t1, 0, Backend::mem(1 << 20));
    lunar_core::wait(t1.stop_device(0)).unwrap();
    let cfg = ControllerConfig {
        socket: dir1.path().join("a.sock"),
        num_queues: 1,
        luns: None,
        hotplug: false,
        poll: DEFAULT_POLL,
        limits: Default::default(),
    };
    let c1 = Controller::start(t1.clone(), cfg).unwrap();
    let b1 = c1.backend.clone();
    let (mut conn1, _kick1) = connect(&b1, &mem_file, None, &ring, 0);
    let region = conn1.inflight_file().unwrap();
    let resps: Vec<u64> = (0..3).map(|i| write10(&mem, &mut ring, i, 0, 500 + i, i as u32)).collect();
    conn1.set_vring_enable(2, true).unwrap();
    eventually("3 commands in flight", || b1.vqs[0].inflight.len() == 3);
    assert_eq!(ring.used_idx(&mem), 0);
    // It dies: nothing of it runs again (its held commands never complete).
    conn1.stop();
    std::mem::forget(conn1);
    std::mem::forget(c1);
    std::mem::forget(t1);

    // The driver adds a fourth request while no device runs.
    let fourth = write10(&mem, &mut ring, 3, 0, 503, 3);
    let dir2 = tempfile::tempdir().unwrap();
    let (t2, c2) = one_queue_controller("vhost-inflight-2", dir2.path());
    let b2 = c2.backend.clone();
    // QEMU could not ask the dead process for the ring base: it sends what
    // it has (here 0); the region says 3 heads were taken.
    let (mut conn2, _kick2) = connect(&b2, &mem_file, Some(region), &ring, 0);
    conn2.set_vring_enable(2, true).unwrap();
    eventually("four answers", || ring.used_idx(&mem) == 4);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ring.used_idx(&mem), 4, "each request answered once");
    assert_eq!(c2.requests_served(), vec![4]);
    let mut heads: Vec<u32> = (0..4).map(|i| ring.used_elem(&mem, i).0).collect();
    heads.sort();
    assert_eq!(heads, vec![0, 2, 4, 6]);
    for r in resps.iter().chain([&fourth]) {
        assert_eq!(cmd_resp(&mem, *r), OK);
    }
    // The region now says nothing is in flight: a third process resubmits nothing.
    let again = b2.vqs[0].tracker().unwrap().recover(4).unwrap();
    assert!(again.is_empty(), "{again:?}");
    conn2.stop();
    c2.shutdown();
    t2.shutdown();
}

/// A process dies after it put an answer on the used ring and before it
/// notified the driver (its notification is a bottom half queued behind
/// the completion): nothing is left in flight, so without a notification
/// from the new process the driver would wait for that answer for good
/// (Linux's virtio-scsi never times a command out). The new process
/// notifies each request ring once when it starts on a used ring with
/// history, and only then.
#[test]
fn a_new_process_notifies_the_driver_of_answers_the_old_one_did_not_signal() {
    use std::io::Read;
    use vhost::vhost_user::VhostUserBackendReqHandlerMut;
    // A call "eventfd" the test can wait on: the device writes 8 bytes.
    let call = || {
        let (device, driver) = std::os::unix::net::UnixStream::pair().unwrap();
        driver.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        (std::fs::File::from(std::os::fd::OwnedFd::from(device)), driver)
    };
    let notified = |mut driver: &std::os::unix::net::UnixStream| driver.read(&mut [0u8; 8]).is_ok_and(|n| n == 8);
    let (mem, mem_file) = shared_memory();
    let mut ring = Ring { base: REQ, next_desc: 0, avail_idx: 0 };
    // The first process answers a write: the driver is not notified (no call fd).
    let dir1 = tempfile::tempdir().unwrap();
    let (t1, c1) = one_queue_controller("vhost-wake-1", dir1.path());
    let (mut conn1, _kick1) = connect(&c1.backend, &mem_file, None, &ring, 0);
    let region = conn1.inflight_file().unwrap();
    let resp = write10(&mem, &mut ring, 0, 0, 600, 0);
    conn1.set_vring_enable(2, true).unwrap();
    eventually("the write answered", || ring.used_idx(&mem) == 1);
    assert_eq!(cmd_resp(&mem, resp), OK);
    conn1.stop();
    c1.shutdown();
    t1.shutdown();

    // The new process, nothing to resubmit: it notifies the driver once.
    let dir2 = tempfile::tempdir().unwrap();
    let (t2, c2) = one_queue_controller("vhost-wake-2", dir2.path());
    let (mut conn2, _kick2) = connect(&c2.backend, &mem_file, Some(region), &ring, 1);
    let (device, driver) = call();
    conn2.set_vring_call(2, Some(device)).unwrap();
    conn2.set_vring_enable(2, true).unwrap();
    assert!(notified(&driver), "the driver is told to look at the used ring");
    assert!(!notified(&driver), "once");
    assert_eq!(ring.used_idx(&mem), 1, "nothing answered again");
    // A ring that starts with no history (a fresh region, used index 0) is not notified.
    conn2.stop();
    c2.shutdown();
    t2.shutdown();
    let (mem, mem_file) = shared_memory();
    let ring = Ring { base: REQ, next_desc: 0, avail_idx: 0 };
    let dir3 = tempfile::tempdir().unwrap();
    let (t3, c3) = one_queue_controller("vhost-wake-3", dir3.path());
    let (mut conn3, _kick3) = connect(&c3.backend, &mem_file, None, &ring, 0);
    let (device, driver) = call();
    conn3.set_vring_call(2, Some(device)).unwrap();
    conn3.set_vring_enable(2, true).unwrap();
    assert!(!notified(&driver), "no notification for a fresh ring");
    assert_eq!(ring.used_idx(&mem), 0);
    // QEMU replaces the call fd of a running ring (it masks and unmasks the
    // queue's vector): a notification sent to the old one may be lost, so
    // the new one is notified once.
    let (device, driver) = call();
    conn3.set_vring_call(2, Some(device)).unwrap();
    assert!(notified(&driver), "the new call fd of a running ring is notified");
    assert!(!notified(&driver), "once");
    conn3.stop();
    c3.shutdown();
    t3.shutdown();
}

const CHILD_SOCKET: &str = "LUNAR_VHOST_TEST_DEVICE_SOCKET";
const CHILD_IMAGE: &str = "LUNAR_VHOST_TEST_DEVICE_IMAGE";
const CHILD_PAUSE: &str = "LUNAR_VHOST_TEST_DEVICE_PAUSE";

/// Not a test of its own: the device process that
/// `a_killed_device_process_is_replaced_without_losing_requests` starts (and
/// kills); without its environment it returns at once.
#[test]
#[ignore]
fn device_process() {
    let Ok(socket) = std::env::var(CHILD_SOCKET) else { return };
    let image = std::env::var(CHILD_IMAGE).unwrap();
    let t = Target::new("vhost-child", 1).unwrap();
    let opts = lunar_block::FileOptions { direct: false, readonly: false };
    let file = lunar_block::FileBackend::open(Path::new(&image), &opts).unwrap();
    add_lun(&t, 0, Backend::File(Arc::new(file)));
    if std::env::var(CHILD_PAUSE).is_ok() {
        // Commands are held in the core: they stay in flight until the kill.
        lunar_core::wait(t.stop_device(0)).unwrap();
    }
    let cfg = ControllerConfig {
        socket: PathBuf::from(socket),
        num_queues: 1,
        luns: None,
        hotplug: false,
        poll: DEFAULT_POLL,
        limits: Default::default(),
    };
    let _c = Controller::start(t.clone(), cfg).unwrap();
    // Bounded: the test kills it long before; it dies as it would be killed.
    std::thread::sleep(Duration::from_secs(30));
    std::process::exit(0);
}

/// A device process, killed (SIGKILL) when dropped, also if the test fails.
struct Device(std::process::Child);

impl Device {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn_device(socket: &Path, image: &Path, pause: bool) -> Device {
    let _ = std::fs::remove_file(socket);
    let mut cmd = std::process::Command::new(std::env::current_exe().unwrap());
    cmd.args(["--ignored", "--exact", "tests::device_process", "--test-threads=1"])
        .env(CHILD_SOCKET, socket)
        .env(CHILD_IMAGE, image)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    if pause {
        cmd.env(CHILD_PAUSE, "1");
    }
    let device = Device(cmd.spawn().unwrap());
    eventually("the device process listening", || socket.exists());
    device
}

/// QEMU's side of a (re)connection, through the `vhost` crate's front-end:
/// features, the inflight region (asked for on the first connection, handed
/// back on the next), memory, request queue 0 (virtqueue 2), enabled.
fn frontend(
    socket: &Path,
    mem_file: &std::fs::File,
    inflight: Option<(vhost::vhost_user::message::VhostUserInflight, std::fs::File)>,
    ring: &Ring,
) -> (
    vhost::vhost_user::Frontend,
    (vhost::vhost_user::message::VhostUserInflight, std::fs::File),
    vmm_sys_util::eventfd::EventFd,
) {
    use std::os::fd::AsRawFd;
    use vhost::vhost_user::message::VhostUserInflight;
    use vhost::vhost_user::{Frontend, VhostUserFrontend};
    use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
    let mut f = Frontend::connect(socket, 3).unwrap();
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    f.set_features(features).unwrap();
    let pf = f.get_protocol_features().unwrap();
    assert!(pf.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD), "INFLIGHT_SHMFD offered");
    f.set_protocol_features(VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::INFLIGHT_SHMFD).unwrap();
    let inflight = inflight.unwrap_or_else(|| {
        let ask = VhostUserInflight { mmap_size: 0, mmap_offset: 0, num_queues: 3, queue_size: QSIZE };
        f.get_inflight_fd(&ask).unwrap()
    });
    f.set_inflight_fd(&inflight.0, inflight.1.as_raw_fd()).unwrap();
    let region = VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: 4 << 20,
        userspace_addr: USER,
        mmap_offset: 0,
        mmap_handle: mem_file.as_raw_fd(),
    };
    f.set_mem_table(&[region]).unwrap();
    f.set_vring_num(2, QSIZE).unwrap();
    let addrs = VringConfigData {
        queue_max_size: QSIZE,
        queue_size: QSIZE,
        flags: 0,
        desc_table_addr: USER + ring.desc(),
        used_ring_addr: USER + ring.used(),
        avail_ring_addr: USER + ring.avail(),
        log_addr: None,
    };
    f.set_vring_addr(2, &addrs).unwrap();
    // After a crash QEMU has no base from the dead process: it sends what it has.
    f.set_vring_base(2, 0).unwrap();
    let kick = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let call = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
    f.set_vring_kick(2, &kick).unwrap();
    f.set_vring_call(2, &call).unwrap();
    f.set_vring_enable(2, true).unwrap();
    (f, inflight, kick)
}

/// The acceptance test of reconnect without QEMU: a device process (file
/// LUN) is killed with SIGKILL while it holds three writes; a new one is
/// started on the same socket and image, the front-end reconnects and hands
/// back the inflight region: every write is answered once, GOOD, a write
/// added meanwhile too, and the data is in the image.
#[test]
fn a_killed_device_process_is_replaced_without_losing_requests() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, image) = (dir.path().join("vus.sock"), dir.path().join("disk.img"));
    std::fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
    let (mem, mem_file) = shared_memory();
    let mut ring = Ring { base: REQ, next_desc: 0, avail_idx: 0 };

    let mut first = spawn_device(&socket, &image, true);
    let (f1, inflight, kick) = frontend(&socket, &mem_file, None, &ring);
    let mut resps: Vec<u64> = (0..3).map(|i| write10(&mem, &mut ring, i, 0, 700 + i, i as u32)).collect();
    kick.write(1).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(ring.used_idx(&mem), 0, "the paused LUN holds the writes");
    first.kill();
    drop(f1);

    resps.push(write10(&mem, &mut ring, 3, 0, 703, 3));
    let mut second = spawn_device(&socket, &image, false);
    let (_f2, _, _kick2) = frontend(&socket, &mem_file, Some(inflight), &ring);
    eventually("four answers", || ring.used_idx(&mem) == 4);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(ring.used_idx(&mem), 4, "each write answered once");
    let mut heads: Vec<u32> = (0..4).map(|i| ring.used_elem(&mem, i).0).collect();
    heads.sort();
    assert_eq!(heads, vec![0, 2, 4, 6]);
    for r in &resps {
        assert_eq!(cmd_resp(&mem, *r), OK);
    }
    let data = std::fs::read(&image).unwrap();
    assert!(data[..4 * 512].iter().all(|&b| b == 0xa5), "the four blocks written");
    assert!(data[4 * 512..].iter().all(|&b| b == 0), "nothing else");
    second.kill();
}

/// A request queue's kicks go to its own I/O thread's loop: five requests,
/// each kicked on its own, are answered, and the connection's relay thread
/// (which watches only the control and event queues now) relays none of them.
#[test]
fn request_kicks_are_watched_by_the_queues_io_thread() {
    use std::io::Write;
    use vhost::vhost_user::VhostUserBackendReqHandlerMut;
    let (mem, mem_file) = shared_memory();
    let mut ring = Ring { base: REQ, next_desc: 0, avail_idx: 0 };
    let dir = tempfile::tempdir().unwrap();
    let (t, c) = one_queue_controller("vhost-kick-thread", dir.path());
    let b = c.backend.clone();
    let (mut conn, mut kick) = connect(&b, &mem_file, None, &ring, 0);
    conn.set_vring_enable(2, true).unwrap();
    for i in 0..5u16 {
        let resp = write10(&mem, &mut ring, i as u64, 0, 700 + i as u64, i as u32);
        kick.write_all(&1u64.to_le_bytes()).unwrap();
        eventually("the request answered", || ring.used_idx(&mem) == i + 1);
        assert_eq!(cmd_resp(&mem, resp), OK);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(c.requests_served(), vec![5]);
    assert_eq!(conn.relayed_request_kicks(), 0, "a request queue kick went through the relay thread");
    conn.stop();
    c.shutdown();
    t.shutdown();
}

/// While a request queue's I/O thread polls its ring after serving it,
/// the driver is told not to kick (with EVENT_IDX, `avail_event` is left
/// behind; without it, VRING_USED_F_NO_NOTIFY): a request posted then is
/// taken without a kick. When the poll window ends, notifications are on
/// again before the thread sleeps, so the next request's kick is asked for.
#[test]
fn the_driver_need_not_kick_while_the_ring_is_polled() {
    use std::io::Write;
    use vhost::vhost_user::VhostUserBackendReqHandlerMut;
    let (mem, mem_file) = shared_memory();
    let mut ring = Ring { base: REQ, next_desc: 0, avail_idx: 0 };
    let dir = tempfile::tempdir().unwrap();
    let t = Target::new("vhost-poll-quiet", 1).unwrap();
    add_lun(&t, 0, Backend::mem(1 << 20));
    let window = Duration::from_millis(400);
    let cfg = ControllerConfig {
        socket: dir.path().join("vq.sock"),
        num_queues: 1,
        luns: None,
        hotplug: false,
        poll: window,
        limits: VhostLimits::default(),
    };
    let c = Controller::start(t.clone(), cfg).unwrap();
    let b = c.backend.clone();
    let event_idx = b.features() & (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX) != 0;
    let (mut conn, mut kick) = connect(&b, &mem_file, None, &ring, 0);
    conn.set_vring_enable(2, true).unwrap();
    // Would the driver kick after making `new` entries available (it had `old`)?
    let wants_kick = |ring: &Ring, old: u16, new: u16| -> bool {
        let m = mem.memory();
        if event_idx {
            // `avail_event`: after the used ring's entries (virtio 1.2, 2.7.8).
            let at = ring.used() + 4 + 8 * QSIZE as u64;
            let avail_event: u16 = m.read_obj(GuestAddress(at)).unwrap();
            new.wrapping_sub(avail_event).wrapping_sub(1) < new.wrapping_sub(old)
        } else {
            let flags: u16 = m.read_obj(GuestAddress(ring.used())).unwrap();
            flags & 1 == 0
        }
    };
    // A first request, and the ring left alone until the start's own passes are over.
    let start = write10(&mem, &mut ring, 0, 0, 1, 0);
    kick.write_all(&1u64.to_le_bytes()).unwrap();
    eventually("the first request answered", || ring.used_idx(&mem) == 1);
    assert_eq!(cmd_resp(&mem, start), OK);
    std::thread::sleep(2 * window);
    assert!(wants_kick(&ring, 1, 2), "notifications on while the thread sleeps");
    let first = write10(&mem, &mut ring, 1, 0, 2, 1);
    kick.write_all(&1u64.to_le_bytes()).unwrap();
    eventually("the kicked request answered", || ring.used_idx(&mem) == 2);
    let answered = Instant::now();
    assert_eq!(cmd_resp(&mem, first), OK);
    assert!(!wants_kick(&ring, 2, 3), "a kick asked for while the ring is polled (event_idx {event_idx})");
    // Posted without a kick: the polling thread takes it.
    let second = write10(&mem, &mut ring, 2, 0, 3, 2);
    eventually("the request posted without a kick answered", || ring.used_idx(&mem) == 3);
    assert_eq!(cmd_resp(&mem, second), OK);
    assert!(answered.elapsed() < window, "served within the poll window (the test's premise)");
    // The window ends (it halves on every empty look: well within 2 windows).
    std::thread::sleep(2 * window);
    assert!(wants_kick(&ring, 3, 4), "notifications off while the thread sleeps: a request would be lost");
    let third = write10(&mem, &mut ring, 3, 0, 4, 3);
    kick.write_all(&1u64.to_le_bytes()).unwrap();
    eventually("the next kicked request answered", || ring.used_idx(&mem) == 4);
    assert_eq!(cmd_resp(&mem, third), OK);
    conn.stop();
    c.shutdown();
    t.shutdown();
}

/// Puts a command with `cdb` for `lun` on a request ring (no data-out,
/// `data_in` bytes of data-in); returns where its response goes.
fn command(mem: &Mem, ring: &mut Ring, slot: u64, lun: u16, tag: u64, cdb: &[u8], data_in: u32) -> u64 {
    let req = DATA + 0x8_0000 + slot * 0x2000;
    let resp = req + 0x800;
    let r = request_header(lun, tag, cdb);
    mem.memory().write_slice(&r, GuestAddress(req)).unwrap();
    let resp_len = (RESP_HEADER + DEFAULT_SENSE_SIZE as usize) as u32;
    let mut chain = vec![(req, r.len() as u32, false), (resp, resp_len, true)];
    if data_in > 0 {
        chain.push((resp + 0x200, data_in, true));
    }
    ring.add(mem, &chain);
    resp
}

/// (sense key, ASC, ASCQ) of the fixed-format sense in a response.
fn sense_at(mem: &Mem, resp: u64) -> (u8, u8, u8) {
    let b = read(mem, resp + RESP_HEADER as u64, 18);
    (b[2] & 0x0f, b[12], b[13])
}

/// A WRITE(10) of one block at LBA 0 from another I_T nexus, straight to
/// the core; its SCSI status.
fn write_from_elsewhere(t: &Arc<Target>, lun: u64) -> u8 {
    let other = lunar_scsi::Nexus::new("another initiator".to_string(), 1);
    let q = lunar_core::wait(t.open_queue_for(lun, 1, Some(other))).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let cdb = [0x2a, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    q.submit(lunar_core::request(1, lun, &cdb, vec![0x5a; 512], move |r| {
        let _ = tx.send(r.status.code());
    }));
    let status = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    lunar_core::wait(t.close_queue(q)).unwrap();
    status
}

/// Sends task management function `subtype` for `lun` on the control queue
/// and waits for its answer (`n`: the number of TMFs sent on it before).
#[allow(clippy::too_many_arguments)]
fn tmf_and_wait(b: &Arc<ScsiBackend>, mem: &Mem, cr: &mut Ring, ctrl: &Vring, n: u16, subtype: u32, lun: u16) -> u8 {
    let mut req = Vec::new();
    req.extend_from_slice(&T_TMF.to_le_bytes());
    req.extend_from_slice(&subtype.to_le_bytes());
    req.extend_from_slice(&request_header(lun, 0, &[])[..8]);
    req.extend_from_slice(&0u64.to_le_bytes());
    let (at, answer) = (DATA + 0x3_0000 + 0x200 * n as u64, DATA + 0x3_0100 + 0x200 * n as u64);
    mem.memory().write_slice(&req, GuestAddress(at)).unwrap();
    mem.memory().write_obj(0xffu8, GuestAddress(answer)).unwrap();
    cr.add(mem, &[(at, req.len() as u32, false), (answer, 1, true)]);
    b.kick_control(ctrl);
    eventually("the TMF answer", || cr.used_idx(mem) == n + 1);
    mem.memory().read_obj::<u8>(GuestAddress(answer)).unwrap()
}

/// A guest's two request queues (each on its own I/O thread) and a
/// control queue, on a controller of LUNs 0 and 1.
struct TwoQueues {
    t: Arc<Target>,
    c: Controller,
    b: Arc<ScsiBackend>,
    mem: Mem,
    cr: Ring,
    ctrl: Vring,
    tmfs: u16,
    rings: Vec<(Ring, Vring)>,
    slot: u64,
    _dir: tempfile::TempDir,
}

impl TwoQueues {
    fn new(name: &str) -> TwoQueues {
        TwoQueues::with(name, VhostLimits::default(), Backend::mem(1 << 20))
    }

    /// LUN 0 on `lun0`, the controller with `limits`.
    fn with(name: &str, limits: VhostLimits, lun0: Backend) -> TwoQueues {
        let dir = tempfile::tempdir().unwrap();
        let t = Target::new(name, 2).unwrap();
        add_lun(&t, 0, lun0);
        add_lun(&t, 1, Backend::mem(1 << 20));
        let (c, b, mem) = start_with(&t, 2, dir.path(), limits);
        let (cr, ctrl) = Ring::new(&mem, CTRL);
        let _ = Ring::new(&mem, EVT);
        let rings: Vec<_> = (0..2).map(|q| Ring::new(&mem, REQ + 0x2000 * q)).collect();
        TwoQueues { t, c, b, mem, cr, ctrl, tmfs: 0, rings, slot: 10, _dir: dir }
    }

    /// Runs `cdb` on LUN `lun` through request queue `q`: (response, sense).
    fn run(&mut self, q: usize, lun: u16, cdb: &[u8]) -> ((u8, u8), (u8, u8, u8)) {
        let base = self.rings[q].0.used_idx(&self.mem);
        self.slot += 1;
        let r = command(&self.mem, &mut self.rings[q].0, self.slot, lun, self.slot, cdb, 0);
        self.b.kick_request(q, &self.rings[q].1);
        eventually("the command answered", || self.rings[q].0.used_idx(&self.mem) == base + 1);
        (cmd_resp(&self.mem, r), sense_at(&self.mem, r))
    }

    fn tur(&mut self, q: usize, lun: u16) -> ((u8, u8), (u8, u8, u8)) {
        self.run(q, lun, &[0u8; 6])
    }

    fn tmf(&mut self, subtype: u32, lun: u16) -> u8 {
        self.tmfs += 1;
        tmf_and_wait(&self.b, &self.mem, &mut self.cr, &self.ctrl, self.tmfs - 1, subtype, lun)
    }

    fn shutdown(self) {
        self.c.shutdown();
        self.t.shutdown();
    }
}

const CHECK: (u8, u8) = (S_OK, 0x02);

/// I_T NEXUS RESET from the guest is an I_T nexus loss on every LUN: the
/// RESERVE(6) the controller's nexus held is released, and the next
/// command to each LUN reports I_T NEXUS LOSS OCCURRED (29h/07h), once: the
/// controller is one I_T nexus, whichever request queue the guest sends it
/// on, so a condition reported on one queue is cleared on the others.
#[test]
fn i_t_nexus_reset_releases_reserve6_and_reports_nexus_loss() {
    let mut g = TwoQueues::new("vhost-itnr");
    // (A vhost-user controller's nexus starts with no unit attention.)
    assert_eq!(g.run(0, 0, &[0x16, 0, 0, 0, 0, 0]).0, OK, "RESERVE(6)");
    assert_eq!(write_from_elsewhere(&g.t, 0), 0x18, "RESERVATION CONFLICT while reserved");
    assert_eq!(g.run(0, 1, &[0x1E, 0, 0, 0, 1, 0]).0, OK, "PREVENT ALLOW MEDIUM REMOVAL (prevent)");
    let lun1 = g.t.device(1).unwrap();
    assert!(lun1.disk().medium_removal_prevented());

    assert_eq!(g.tmf(TMF_I_T_NEXUS_RESET, 0), S_FUNCTION_COMPLETE);
    assert_eq!(write_from_elsewhere(&g.t, 0), 0, "the RESERVE(6) of the reset nexus was released");
    // SBC-4 4.24: the nexus's prevention of medium removal ends with it (as
    // when an iSCSI session ends: one core call for both front-ends).
    assert!(!lun1.disk().medium_removal_prevented(), "PREVENT ended by the I_T nexus loss");
    // Each LUN reports the nexus loss once, on whichever queue comes first
    // (LUN 0 on queue 1, LUN 1 on queue 0); then no queue reports it again.
    for lun in 0..2u16 {
        let first = 1 - lun as usize;
        let (resp, sense) = g.tur(first, lun);
        assert_eq!(resp, CHECK, "LUN {lun}, queue {first}: CHECK CONDITION");
        assert_eq!(sense, (0x6, 0x29, 0x07), "LUN {lun}, queue {first}: I_T NEXUS LOSS OCCURRED");
        for q in [1 - first, first] {
            assert_eq!(g.tur(q, lun).0, OK, "LUN {lun}, queue {q}: the nexus loss was reported once");
        }
    }
    g.shutdown();
}

/// LOGICAL UNIT RESET from the guest: the LUN reports BUS DEVICE RESET
/// FUNCTION OCCURRED (29h/03h) once across the request queues, and REQUEST
/// SENSE on one queue clears it for the others; the other LUN reports none.
#[test]
fn lun_reset_is_reported_once_across_the_request_queues() {
    let mut g = TwoQueues::new("vhost-lur");
    assert_eq!(g.tmf(TMF_LOGICAL_UNIT_RESET, 1), S_FUNCTION_COMPLETE);
    let (resp, sense) = g.tur(1, 1);
    assert_eq!((resp, sense), (CHECK, (0x6, 0x29, 0x03)), "queue 1: BUS DEVICE RESET");
    for q in [0, 1] {
        assert_eq!(g.tur(q, 1).0, OK, "queue {q}: reported once");
        assert_eq!(g.tur(q, 0).0, OK, "queue {q}: LUN 0 was not reset");
    }
    // Reported by REQUEST SENSE on queue 0: cleared on queue 1 too.
    assert_eq!(g.tmf(TMF_LOGICAL_UNIT_RESET, 1), S_FUNCTION_COMPLETE);
    let r = command(&g.mem, &mut g.rings[0].0, 300, 1, 300, &[0x03, 0, 0, 0, 18, 0], 18);
    let base = g.rings[0].0.used_idx(&g.mem);
    g.b.kick_request(0, &g.rings[0].1);
    eventually("REQUEST SENSE answered", || g.rings[0].0.used_idx(&g.mem) == base + 1);
    assert_eq!(cmd_resp(&g.mem, r), OK);
    let data = read(&g.mem, r + 0x200, 18);
    assert_eq!((data[2] & 0x0f, data[12], data[13]), (0x6, 0x29, 0x03), "REQUEST SENSE reports it");
    assert_eq!(g.tur(1, 1).0, OK, "queue 1: cleared by REQUEST SENSE on queue 0");
    g.shutdown();
}

/// A pass over the ring that answers many commands notifies the driver
/// during the pass (every `NOTIFY_EVERY` answers), not only at its end: the
/// driver refills its ring while the device works on the rest.
#[test]
fn a_long_pass_notifies_the_driver_before_it_ends() {
    use std::io::Read;
    use vhost::vhost_user::VhostUserBackendReqHandlerMut;
    let (mem, mem_file) = shared_memory();
    let mut ring = Ring { base: REQ, next_desc: 0, avail_idx: 0 };
    let dir = tempfile::tempdir().unwrap();
    let (t, c) = one_queue_controller("vhost-notify-pass", dir.path());
    let (mut conn, _kick) = connect(&c.backend, &mem_file, None, &ring, 0);
    // Without EVENT_IDX (the driver does not re-arm here): every
    // notification the device sends reaches the driver.
    conn.set_features(c.backend.features() & !(1 << VIRTIO_RING_F_EVENT_IDX)).unwrap();
    let (device, mut driver) = std::os::unix::net::UnixStream::pair().unwrap();
    driver.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
    conn.set_vring_call(2, Some(std::fs::File::from(std::os::fd::OwnedFd::from(device)))).unwrap();
    let n = 3 * NOTIFY_EVERY as u16;
    let resps: Vec<u64> = (0..n).map(|i| write10(&mem, &mut ring, i as u64, 0, 900 + i as u64, i as u32)).collect();
    // One pass takes all of them (the RAM LUN answers each at once).
    conn.set_vring_enable(2, true).unwrap();
    eventually("every write answered", || ring.used_idx(&mem) == n);
    assert!(resps.iter().all(|&r| cmd_resp(&mem, r) == OK));
    let mut bytes = 0;
    let mut buf = [0u8; 64];
    while let Ok(k) = driver.read(&mut buf) {
        if k == 0 {
            break;
        }
        bytes += k;
    }
    assert!(bytes / 8 >= 3, "{} notifications for one pass of {n} answers", bytes / 8);
    conn.stop();
    c.shutdown();
    t.shutdown();
}

/// Guest memory for the limit tests' chains (indirect tables, headers,
/// responses), clear of the rings and of `command`'s slots.
const LIM: u64 = 0x30_0000;
const RESP_LEN: u32 = (RESP_HEADER + DEFAULT_SENSE_SIZE as usize) as u32;

fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut cdb = [op, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
    cdb
}

impl Ring {
    /// Makes a chain available through one indirect table written at `table`.
    fn add_indirect(&mut self, mem: &Mem, table: u64, bufs: &[(u64, u32, bool)]) -> u16 {
        let m = mem.memory();
        for (i, &(addr, len, write)) in bufs.iter().enumerate() {
            let at = table + 16 * i as u64;
            let flags = if i + 1 < bufs.len() { 1 } else { 0 } | if write { 2 } else { 0 };
            m.write_obj(addr, GuestAddress(at)).unwrap();
            m.write_obj(len, GuestAddress(at + 8)).unwrap();
            m.write_obj(flags as u16, GuestAddress(at + 12)).unwrap();
            m.write_obj(i as u16 + 1, GuestAddress(at + 14)).unwrap();
        }
        let head = self.next_desc;
        let at = self.desc() + 16 * head as u64;
        m.write_obj(table, GuestAddress(at)).unwrap();
        m.write_obj(16 * bufs.len() as u32, GuestAddress(at + 8)).unwrap();
        m.write_obj(4u16, GuestAddress(at + 12)).unwrap();
        m.write_obj(0u16, GuestAddress(at + 14)).unwrap();
        self.next_desc = (head + 1) % QSIZE;
        let slot = self.avail() + 4 + 2 * (self.avail_idx % QSIZE) as u64;
        m.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(Ordering::SeqCst);
        m.write_obj(self.avail_idx, GuestAddress(self.avail() + 2)).unwrap();
        head
    }
}

impl TwoQueues {
    fn kick(&self, q: usize) {
        self.b.kick_request(q, &self.rings[q].1);
    }

    /// Writes a request header for `cdb` to LUN `lun` at `at`; its length.
    fn header(&mut self, at: u64, lun: u16, cdb: &[u8]) -> u32 {
        self.slot += 1;
        let r = request_header(lun, self.slot, cdb);
        self.mem.memory().write_slice(&r, GuestAddress(at)).unwrap();
        r.len() as u32
    }

    /// Posts `chain` on request queue `q` (through an indirect table at
    /// `table`, if given), kicks it and waits for its answer: the used length.
    fn post(&mut self, q: usize, chain: &[(u64, u32, bool)], table: Option<u64>) -> u32 {
        let base = self.rings[q].0.used_idx(&self.mem);
        match table {
            Some(t) => self.rings[q].0.add_indirect(&self.mem, t, chain),
            None => self.rings[q].0.add(&self.mem, chain),
        };
        self.kick(q);
        eventually("the chain answered", || self.rings[q].0.used_idx(&self.mem) == base + 1);
        self.rings[q].0.used_elem(&self.mem, base).1
    }

    fn hits(&self) -> VhostLimitHits {
        VhostLimitHits { warnings_suppressed: 0, ..self.c.limit_hits() }
    }
}

/// `max_chain_descriptors` (default 1024): a chain one indirect table
/// longer than that is completed with `S_FAILURE` in its response area
/// when the response comes before the limit, with used length 0 when it
/// does not (the device never walks past the limit to find it); a chain of
/// exactly the limit is served, and so is the next request on the queue
/// and on the other queue.
#[test]
fn a_chain_over_max_chain_descriptors_is_failed_and_the_queue_goes_on() {
    let mut g = TwoQueues::new("vhost-lim-chain");
    let max = VhostLimits::default().max_chain_descriptors as u64;
    let (hdr, resp, data) = (LIM + 0x8000, LIM + 0x9000, LIM + 0xa000);
    g.mem.memory().write_slice(&[0xff; RESP_LEN as usize], GuestAddress(resp)).unwrap();
    // Request, response, then 1100 data-in buffers of 8 bytes.
    let n = g.header(hdr, 0, &rw10(0x28, 0, 1));
    let mut chain = vec![(hdr, n, false), (resp, RESP_LEN, true)];
    chain.extend((0..1100).map(|i| (data + 8 * i, 8, true)));
    assert_eq!(g.post(0, &chain, Some(LIM)), RESP_LEN, "answered in its response area");
    assert_eq!(cmd_resp(&g.mem, resp), (S_FAILURE, 0));

    // Request, 1100 data-out buffers, then the response: no room for an answer.
    g.mem.memory().write_slice(&[0xff; RESP_LEN as usize], GuestAddress(resp)).unwrap();
    let n = g.header(hdr, 0, &rw10(0x2a, 0, 1));
    let mut chain = vec![(hdr, n, false)];
    chain.extend((0..1100).map(|i| (data + 8 * i, 8, false)));
    chain.push((resp, RESP_LEN, true));
    assert_eq!(g.post(0, &chain, Some(LIM)), 0, "completed, used length 0");
    assert_eq!(read(&g.mem, resp, RESP_LEN as usize), vec![0xff; RESP_LEN as usize], "response area untouched");

    // Exactly the limit: served (512 bytes read into the first 64 buffers).
    let n = g.header(hdr, 0, &rw10(0x28, 0, 1));
    let mut chain = vec![(hdr, n, false), (resp, RESP_LEN, true)];
    chain.extend((0..max - 2).map(|i| (data + 8 * i, 8, true)));
    assert_eq!(g.post(0, &chain, Some(LIM)), RESP_LEN + 512);
    assert_eq!(cmd_resp(&g.mem, resp), OK);

    assert_eq!(g.tur(0, 0).0, OK, "the next request on the queue");
    assert_eq!(g.tur(1, 0).0, OK, "the other queue");
    assert_eq!(g.hits(), VhostLimitHits { chain_too_long: 2, ..Default::default() });
    g.shutdown();
}

/// `max_request_bytes` (default 8 MiB + 275): a WRITE(10) whose chain
/// carries 9 MiB of data-out, and a READ(10) into 9 MiB of data-in, get
/// CHECK CONDITION, INVALID FIELD IN CDB (what the LU answers for a
/// transfer over its MAXIMUM TRANSFER LENGTH); a READ(10) of one block into
/// a data-in area of the whole limit is served (the capacity is only a
/// bound: nothing allocates it), and so are the next requests.
#[test]
fn a_request_over_max_request_bytes_gets_invalid_field_in_cdb_and_the_queue_goes_on() {
    let mut g = TwoQueues::new("vhost-lim-bytes");
    let limit = VhostLimits::default().max_request_bytes;
    let (hdr, resp) = (LIM + 0x8000, LIM + 0x9000);
    let mib3 = 3 << 20;
    // Three 3 MiB data-out buffers over the same guest memory.
    let n = g.header(hdr, 0, &rw10(0x2a, 0, 1));
    let chain =
        [(hdr, n, false), (DATA, mib3, false), (DATA, mib3, false), (DATA, mib3, false), (resp, RESP_LEN, true)];
    assert_eq!(g.post(0, &chain, None), RESP_LEN);
    assert_eq!((cmd_resp(&g.mem, resp), sense_at(&g.mem, resp)), (CHECK, (0x5, 0x24, 0x00)));

    let n = g.header(hdr, 0, &rw10(0x28, 0, 1));
    let chain = [(hdr, n, false), (resp, RESP_LEN, true), (DATA, 9 << 20, true)];
    assert_eq!(g.post(0, &chain, None), RESP_LEN);
    assert_eq!((cmd_resp(&g.mem, resp), sense_at(&g.mem, resp)), (CHECK, (0x5, 0x24, 0x00)));

    // Exactly the limit: one block read, the rest of the area a residual.
    let data_in = limit as u32 - RESP_LEN;
    let chain = [(hdr, n, false), (resp, RESP_LEN, true), (DATA, data_in, true)];
    assert_eq!(g.post(0, &chain, None), RESP_LEN + 512);
    assert_eq!(cmd_resp(&g.mem, resp), OK);
    let residual = u32::from_le_bytes(read(&g.mem, resp + 4, 4).try_into().unwrap());
    assert_eq!(residual, data_in - 512);

    assert_eq!(g.tur(0, 0).0, OK, "the next request on the queue");
    assert_eq!(g.tur(1, 0).0, OK, "the other queue");
    assert_eq!(g.hits(), VhostLimitHits { request_too_large: 2, ..Default::default() });
    g.shutdown();
}

/// `max_inflight_per_queue` 2, eight writes posted at once (one kick) to a
/// LUN that holds its writes: the queue never has more than two in the
/// core, the others wait on the ring; each release lets two more in with
/// no kick from the driver (the completions process the ring again), the
/// other queue is served meanwhile, and all eight complete once, GOOD.
#[test]
fn at_max_inflight_per_queue_the_ring_waits_and_every_request_completes_once() {
    let fault = Arc::new(FaultBackend::new(Backend::mem(1 << 20)));
    fault.hold_new_writes(true);
    let limits = VhostLimits { max_inflight_per_queue: 2, ..Default::default() };
    let mut g = TwoQueues::with("vhost-lim-inflight", limits, Backend::Fault(fault.clone()));
    let resps: Vec<u64> = (0..8u64).map(|i| write10(&g.mem, &mut g.rings[0].0, 40 + i, 0, 800 + i, i as u32)).collect();
    g.kick(0);
    for round in 0..4u16 {
        eventually("two writes in the core", || g.rings[0].0.used_idx(&g.mem) == 2 * round && fault.held() == 2);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(fault.held(), 2, "round {round}: two writes in the core, no more");
        assert_eq!(g.b.vqs[0].inflight.len(), 2, "round {round}");
        assert_eq!(g.rings[0].0.used_idx(&g.mem), 2 * round, "round {round}: none answered early");
        if round == 0 {
            assert_eq!(g.tur(1, 1).0, OK, "the other queue is served");
            assert_eq!(g.tur(1, 0).0, OK, "the other queue is served on the same LUN");
        }
        fault.release_held();
    }
    eventually("eight answers", || g.rings[0].0.used_idx(&g.mem) == 8);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(g.rings[0].0.used_idx(&g.mem), 8, "each answered once");
    let mut heads: Vec<u32> = (0..8).map(|i| g.rings[0].0.used_elem(&g.mem, i).0).collect();
    heads.sort();
    assert_eq!(heads, (0..8).map(|i| 2 * i).collect::<Vec<u32>>());
    for r in &resps {
        assert_eq!(cmd_resp(&g.mem, *r), OK);
    }
    assert_eq!(fault.writes(), 8);
    let hits = g.hits();
    assert!((4..=8).contains(&hits.inflight_throttled), "{hits:?}");
    assert_eq!(VhostLimitHits { inflight_throttled: 0, ..hits }, VhostLimitHits::default());
    g.shutdown();
}

/// A WRITE(10) of one block whose chain offers 2 MiB of data-out: the core
/// is handed the block (512 bytes, counted as written), not the chain's
/// readable part; the block lands at its LBA and nothing after it. A CDB
/// that does not decode is handed no data-out.
#[test]
fn only_the_data_out_the_cdb_asks_for_is_copied() {
    let mut g = TwoQueues::new("vhost-lim-dataout");
    let (hdr, block, resp) = (LIM + 0x8000, LIM + 0x9000, LIM + 0xa000);
    g.mem.memory().write_slice(&[0x5a; 512], GuestAddress(block)).unwrap();
    let n = g.header(hdr, 0, &rw10(0x2a, 5, 1));
    let chain = [(hdr, n, false), (block, 512, false), (DATA, 2 << 20, false), (resp, RESP_LEN, true)];
    assert_eq!(g.post(0, &chain, None), RESP_LEN);
    assert_eq!(cmd_resp(&g.mem, resp), OK);
    let device = g.b.vqs[0].queues()[&0].device().clone();
    assert_eq!(device.stats().snapshot().bytes_written, 512, "the data-out handed to the core");
    let r = command(&g.mem, &mut g.rings[0].0, 200, 0, 200, &rw10(0x28, 5, 2), 1024);
    let base = g.rings[0].0.used_idx(&g.mem);
    g.kick(0);
    eventually("the read answered", || g.rings[0].0.used_idx(&g.mem) == base + 1);
    assert_eq!(cmd_resp(&g.mem, r), OK);
    let data = read(&g.mem, r + 0x200, 1024);
    assert!(data[..512].iter().all(|&b| b == 0x5a), "LBA 5 written");
    assert!(data[512..].iter().all(|&b| b == 0), "LBA 6 not");

    // A CDB that does not decode: refused by the core, no data-out taken.
    let n = g.header(hdr, 0, &[0xff, 0, 0, 0, 0, 0]);
    let chain = [(hdr, n, false), (DATA, 1 << 20, false), (resp, RESP_LEN, true)];
    assert_eq!(g.post(0, &chain, None), RESP_LEN);
    assert_eq!((cmd_resp(&g.mem, resp), sense_at(&g.mem, resp).0), (CHECK, 0x5));
    assert_eq!(device.stats().snapshot().bytes_written, 512);
    g.shutdown();
}

/// The same back-pressure through a real kick eventfd, watched by the
/// queue's I/O thread (`kick_loop`, which polls the ring after serving
/// it): at the limit it stops polling (the chains left on the ring are not
/// work it can take) and the completions, not a kick, bring it back.
#[test]
fn back_pressure_through_the_kick_loop() {
    use std::io::Write;
    use vhost::vhost_user::VhostUserBackendReqHandlerMut;
    let (mem, mem_file) = shared_memory();
    let mut ring = Ring { base: REQ, next_desc: 0, avail_idx: 0 };
    let dir = tempfile::tempdir().unwrap();
    let t = Target::new("vhost-lim-kick", 1).unwrap();
    let fault = Arc::new(FaultBackend::new(Backend::mem(1 << 20)));
    fault.hold_new_writes(true);
    add_lun(&t, 0, Backend::Fault(fault.clone()));
    let limits = VhostLimits { max_inflight_per_queue: 3, ..Default::default() };
    let cfg = ControllerConfig {
        socket: dir.path().join("vq.sock"),
        num_queues: 1,
        luns: None,
        hotplug: false,
        poll: DEFAULT_POLL,
        limits,
    };
    let c = Controller::start(t.clone(), cfg).unwrap();
    let (mut conn, mut kick) = connect(&c.backend, &mem_file, None, &ring, 0);
    conn.set_vring_enable(2, true).unwrap();
    let resps: Vec<u64> = (0..9u64).map(|i| write10(&mem, &mut ring, i, 0, 900 + i, i as u32)).collect();
    kick.write_all(&1u64.to_le_bytes()).unwrap();
    for round in 0..3u16 {
        eventually("three writes in the core", || ring.used_idx(&mem) == 3 * round && fault.held() == 3);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(fault.held(), 3, "round {round}: three writes in the core, no more");
        fault.release_held();
    }
    eventually("nine answers", || ring.used_idx(&mem) == 9);
    assert!(resps.iter().all(|&r| cmd_resp(&mem, r) == OK));
    assert_eq!(c.requests_served(), vec![9]);
    conn.stop();
    c.shutdown();
    t.shutdown();
}

/// Shutting a controller down does not depend on its socket's path: with
/// the file removed (by an operator, a cleanup of /run) no frontend can
/// connect to wake the listener, and the shutdown used to hang in its
/// join; a socket another process bound at the path since is left alone.
#[test]
fn shutdown_ends_the_listener_whatever_became_of_its_socket_file() {
    let dir = tempfile::tempdir().unwrap();
    for replaced in [false, true] {
        let (t, c) = one_queue_controller("vhost-socket-gone", dir.path());
        let path = dir.path().join("vq.sock");
        std::fs::remove_file(&path).unwrap();
        let other = replaced.then(|| std::os::unix::net::UnixListener::bind(&path).unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            c.shutdown();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10)).expect("the controller's shutdown hangs");
        assert_eq!(path.exists(), replaced, "another process's socket is not removed");
        drop(other);
        let _ = std::fs::remove_file(&path);
        t.shutdown();
    }
}

//! The device without QEMU: guest memory and split rings built here, the
//! backend driven through the calls `vhost-user-backend` makes (memory
//! update, kicks as `handle_event`). Covers what a Linux guest cannot
//! provoke on demand: events that find no buffer, and the order of task
//! management answers against the commands they abort.

use super::*;
use lunar_block::{Backend, FaultBackend};
use lunar_scsi::DiskConfig;
use lunar_target::ErrorPolicies;
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
    let cfg = ControllerConfig { socket: dir.join("vus.sock"), num_queues, luns: None, hotplug: true };
    let c = Controller::start(t.clone(), cfg).unwrap();
    let b = c.backend.clone();
    let mem = memory();
    b.update_memory(mem.clone()).unwrap();
    (c, b, mem)
}

fn add_lun(t: &Target, lun: u64, backend: Backend) {
    lunar_target::wait(t.add_device(lun, DiskConfig::default(), backend, ErrorPolicies::default())).unwrap();
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
    let (_ctrl_ring, ctrl) = Ring::new(&mem, CTRL);
    let (mut er, evt) = Ring::new(&mem, EVT);
    let kick = |b: &ScsiBackend| b.handle_event(1, EventSet::IN, &[ctrl.clone(), evt.clone()], 0).unwrap();
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
    lunar_target::wait(t.remove_device(5)).unwrap();
    eventually("the removed event", || er.used_idx(&mem) == 2);
    assert_eq!(event_at(&mem, DATA + 16), (T_TRANSPORT_RESET, 5, EVT_RESET_REMOVED));
    assert!(!c.luns().contains(&5));

    // No buffer posted: 70 events, then LUN 9 last. (Each waits for the
    // previous to be handled: a LUN removed before the controller could
    // attach it makes no event at all.)
    for _ in 0..35 {
        add_lun(&t, 6, Backend::mem(1 << 20));
        eventually("LUN 6 attached", || c.luns().contains(&6));
        lunar_target::wait(t.remove_device(6)).unwrap();
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
    lunar_target::wait(t.resize_device(9, 2 << 20)).unwrap();
    eventually("the param change event", || er.used_idx(&mem) == 3 + MAX_PENDING as u16);
    assert_eq!(event_at(&mem, base + 16 * MAX_PENDING as u64), (T_PARAM_CHANGE, 9, 0x092a));

    // The driver resets the device: what was pending is forgotten.
    add_lun(&t, 10, Backend::mem(1 << 20));
    eventually("LUN 10 attached", || c.luns().contains(&10));
    er.add(&mem, &[(DATA, 16, true)]);
    kick(&b);
    eventually("the rescan of LUN 10", || er.used_idx(&mem) == 4 + MAX_PENDING as u16);
    lunar_target::wait(t.remove_device(10)).unwrap();
    eventually("LUN 10 detached", || !c.luns().contains(&10));
    b.stop_vring(1).unwrap();
    let (mut er, evt) = Ring::new(&mem, EVT + 0x8000);
    er.add(&mem, &[(DATA, 16, true)]);
    b.handle_event(1, EventSet::IN, &[ctrl.clone(), evt.clone()], 0).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(er.used_idx(&mem), 0, "no stale event after a reset");
    c.shutdown();
    t.shutdown();
}

/// Puts a WRITE(10) of one block at `lba` of `lun` on a request ring;
/// returns where its response goes.
fn write10(mem: &Mem, ring: &mut Ring, slot: u64, lun: u16, tag: u64, lba: u32) -> u64 {
    let req = DATA + 0x4_0000 + slot * 0x1000;
    let resp = req + 0x800;
    let mut r = vec![0u8; REQ_HEADER + DEFAULT_CDB_SIZE as usize];
    r[0] = 1;
    r[2] = 0x40 | (lun >> 8) as u8;
    r[3] = lun as u8;
    r[8..16].copy_from_slice(&tag.to_le_bytes());
    r[REQ_HEADER] = 0x2a;
    r[REQ_HEADER + 2..REQ_HEADER + 6].copy_from_slice(&lba.to_be_bytes());
    r[REQ_HEADER + 8] = 1;
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
    let (_er, evt) = Ring::new(&mem, EVT);
    let mut rings: Vec<_> = (0..2).map(|q| Ring::new(&mem, REQ + 0x2000 * q)).collect();
    let mut resps = Vec::new();
    for i in 0..6u64 {
        let (ring, _) = &mut rings[i as usize % 2];
        resps.push(write10(&mem, ring, i, (i / 4) as u16, 100 + i, i as u32));
    }
    for (q, (_, vring)) in rings.iter().enumerate() {
        b.handle_event(0, EventSet::IN, std::slice::from_ref(vring), q + 1).unwrap();
    }
    let inflight = || b.vqs.iter().map(|v| v.lock_inflight().len()).sum::<usize>();
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
    b.handle_event(0, EventSet::IN, &[ctrl.clone(), evt.clone()], 0).unwrap();
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

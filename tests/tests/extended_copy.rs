//! EXTENDED COPY between two logical units of one target, through the core:
//! the command names both units by their identification designators, and
//! the core gives it the target's units to resolve them (without it, a copy
//! reaches only the unit it was sent to, and this one fails).

use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use lunar_block::{Backend, FaultBackend};
use lunar_core::{request, wait, ErrorPolicies, Queue, Response, Target};
use lunar_scsi::{Disk, DiskConfig, Nexus, Status};

fn run(q: &Arc<Queue>, lun: u64, cdb: &[u8], data: Vec<u8>) -> Response {
    submit(q, lun, cdb, data).recv_timeout(Duration::from_secs(30)).expect("command completed")
}

fn submit(q: &Arc<Queue>, lun: u64, cdb: &[u8], data: Vec<u8>) -> mpsc::Receiver<Response> {
    let (tx, rx) = mpsc::channel();
    q.submit(request(1, lun, cdb, data, move |r| {
        let _ = tx.send(r);
    }));
    rx
}

fn settle(q: &Arc<Queue>, lun: u64) {
    for _ in 0..8 {
        if run(q, lun, &[0, 0, 0, 0, 0, 0], Vec::new()).status == Status::Good {
            return;
        }
    }
    panic!("unit attentions did not clear");
}

/// An identification CSCD descriptor (E4h) naming `d`.
fn cscd(d: &Disk) -> Vec<u8> {
    let mut c = vec![0u8; 32];
    c[0] = 0xe4;
    let desig = d.copy_designator();
    c[4..4 + desig.len()].copy_from_slice(&desig);
    c[29..32].copy_from_slice(&d.block_size().to_be_bytes()[1..]);
    c
}

/// A block-to-block segment descriptor (02h).
fn b2b(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
    let mut s = vec![0u8; 28];
    s[0] = 0x02;
    s[3] = 0x18;
    s[4..6].copy_from_slice(&src.to_be_bytes());
    s[6..8].copy_from_slice(&dst.to_be_bytes());
    s[10..12].copy_from_slice(&blocks.to_be_bytes());
    s[12..20].copy_from_slice(&src_lba.to_be_bytes());
    s[20..28].copy_from_slice(&dst_lba.to_be_bytes());
    s
}

#[test]
fn extended_copy_between_two_luns_of_a_target() {
    let t = Target::new("xcopy", 2).unwrap();
    for (lun, naa_id) in [(0, 0x11), (1, 0x22)] {
        let config = DiskConfig { naa_id, ..Default::default() };
        wait(t.add_device(lun, config, Backend::mem(1 << 20), ErrorPolicies::default())).unwrap();
    }
    let q0 = wait(t.open_queue(0, 1)).unwrap();
    let q1 = wait(t.open_queue(1, 2)).unwrap();
    settle(&q0, 0);
    settle(&q1, 1);
    let data: Vec<u8> = (0..16 * 512).map(|i| (i * 7 % 251) as u8).collect();
    let write = [0x2a, 0, 0, 0, 0, 100, 0, 0, 16, 0];
    assert_eq!(run(&q0, 0, &write, data.clone()).status, Status::Good);

    let (d0, d1) = (t.device(0).unwrap(), t.device(1).unwrap());
    let targets = [cscd(d0.disk()), cscd(d1.disk())].concat();
    let segment = b2b(0, 1, 16, 100, 300);
    let mut list = vec![0u8; 16];
    list[0] = 1; // list identifier
    list[2..4].copy_from_slice(&(targets.len() as u16).to_be_bytes());
    list[8..12].copy_from_slice(&(segment.len() as u32).to_be_bytes());
    list.extend(targets);
    list.extend(segment);
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(list.len() as u32).to_be_bytes());
    let r = run(&q0, 0, &cdb, list);
    assert_eq!(r.status, Status::Good, "EXTENDED COPY from LUN 0 to LUN 1: sense {:02x?}", r.sense);

    let read = [0x28, 0, 0, 0, 1, 0x2c, 0, 0, 16, 0]; // LBA 300
    let r = run(&q1, 1, &read, Vec::new());
    assert_eq!(r.status, Status::Good);
    assert_eq!(r.data, data, "LUN 1 holds the blocks copied from LUN 0");
    t.shutdown();
}

/// An EXTENDED COPY parameter list (LIST ID USAGE 00b: hold the status)
/// with these CSCD and segment descriptors.
fn copy_list(list_id: u8, cscds: &[Vec<u8>], segments: &[Vec<u8>]) -> Vec<u8> {
    let targets = cscds.concat();
    let segs = segments.concat();
    let mut list = vec![0u8; 16];
    list[0] = list_id;
    list[2..4].copy_from_slice(&(targets.len() as u16).to_be_bytes());
    list[8..12].copy_from_slice(&(segs.len() as u32).to_be_bytes());
    list.extend(targets);
    list.extend(segs);
    list
}

fn xcopy_cdb(len: usize) -> Vec<u8> {
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x83;
    cdb[10..14].copy_from_slice(&(len as u32).to_be_bytes());
    cdb
}

/// RECEIVE COPY RESULTS, COPY STATUS of `list_id`.
fn copy_status_cdb(list_id: u8) -> Vec<u8> {
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x84;
    cdb[2] = list_id;
    cdb[10..14].copy_from_slice(&1024u32.to_be_bytes());
    cdb
}

fn invalid_field_in_cdb(r: &Response) -> bool {
    r.status == Status::CheckCondition
        && r.sense.get(2).map(|k| k & 0x0F) == Some(0x05)
        && r.sense.get(12) == Some(&0x24)
}

/// libiscsi's ExtendedCopy.ValidSegDescr then ReceiveCopyResults.CopyStatus
/// on one I_T nexus, as in a guest over SG_IO (over iSCSI each test logs
/// in anew, and the logout's I_T nexus loss drops what was held): the
/// failed copy's status is held (SPC-4: COPY STATUS reports "completed with
/// errors") until it is returned whole, a logical unit reset, the nexus's
/// loss or another EXTENDED COPY with its list identifier.
#[test]
fn held_copy_status_goes_when_returned_or_on_a_lun_reset() {
    let t = Target::new("xcopy-held", 1).unwrap();
    let blocks = 4096u64;
    wait(t.add_device(
        0,
        DiskConfig { naa_id: 0x33, ..Default::default() },
        Backend::mem(blocks * 512),
        ErrorPolicies::default(),
    ))
    .unwrap();
    let q = wait(t.open_queue(0, 1)).unwrap();
    settle(&q, 0);
    let d = t.device(0).unwrap();
    let beyond_eol = copy_list(1, &[cscd(d.disk())], &[b2b(0, 0, 2048, 0, blocks - 1)]);
    let copy = |list: &Vec<u8>| run(&q, 0, &xcopy_cdb(list.len()), list.clone());

    let r = copy(&beyond_eol);
    assert_eq!((r.status, r.sense[2] & 0x0F), (Status::CheckCondition, 0x0A), "COPY ABORTED");
    let held = run(&q, 0, &copy_status_cdb(1), Vec::new());
    assert_eq!(held.status, Status::Good, "the failed copy's status is held: {:02x?}", held.sense);
    assert_eq!(held.data[4], 0x02, "completed with errors");
    let again = run(&q, 0, &copy_status_cdb(1), Vec::new());
    assert!(invalid_field_in_cdb(&again), "returned whole, so discarded: {again:?}");

    // A logical unit reset discards it too.
    let r = copy(&beyond_eol);
    assert_eq!(r.status, Status::CheckCondition);
    wait(t.reset_device(0)).unwrap();
    settle(&q, 0);
    let after_reset = run(&q, 0, &copy_status_cdb(1), Vec::new());
    assert!(invalid_field_in_cdb(&after_reset), "discarded by the LU reset: {after_reset:?}");
    t.shutdown();
}

/// A target with LUN 0 on RAM and LUN 1 on RAM behind a fault injector,
/// named 0x44 and 0x55 for EXTENDED COPY.
fn two_luns(name: &str) -> (Arc<Target>, Arc<FaultBackend>) {
    let t = Target::new(name, 2).unwrap();
    let config = |naa_id| DiskConfig { naa_id, ..Default::default() };
    wait(t.add_device(0, config(0x44), Backend::mem(1 << 20), ErrorPolicies::default())).unwrap();
    let fault = Arc::new(FaultBackend::new(Backend::mem(1 << 20)));
    wait(t.add_device(1, config(0x55), Backend::Fault(fault.clone()), ErrorPolicies::default())).unwrap();
    (t, fault)
}

/// EXTENDED COPY (no list identifier) of `blocks` blocks from LUN `from` at
/// `src_lba` to LUN `to` at `dst_lba`, both named by their designators.
fn copy_between(t: &Arc<Target>, from: u64, to: u64, blocks: u16, src_lba: u64, dst_lba: u64) -> (Vec<u8>, Vec<u8>) {
    let (a, b) = (t.device(from).unwrap(), t.device(to).unwrap());
    let mut list = copy_list(0, &[cscd(a.disk()), cscd(b.disk())], &[b2b(0, 1, blocks, src_lba, dst_lba)]);
    list[1] = 0b11 << 3; // LIST ID USAGE 11b: no list identifier
    (xcopy_cdb(list.len()), list)
}

fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![0x2a, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = write10(lba, blocks);
    c[0] = 0x28;
    c
}

fn copy_target_not_reachable(r: &Response) -> bool {
    r.status == Status::CheckCondition
        && r.sense.get(2).map(|k| k & 0x0F) == Some(0x0A)
        && r.sense.get(12..14) == Some(&[0x0D, 0x02][..])
}

/// COMPARE AND WRITE is atomic against every other command of its logical
/// unit (SBC-4 5.3), an EXTENDED COPY sent to another unit that writes it
/// included. The COMPARE AND WRITE on LUN 1 has compared and its write is
/// held in the backend; a copy from LUN 0 into the same block must not
/// write (nor complete) until it is done, and then its data is what stays.
/// Without the destination's gate the copy's write lands inside the
/// COMPARE AND WRITE, completes first, and the COMPARE AND WRITE's write
/// then overwrites it: an outcome no serial order gives.
#[test]
fn a_copy_into_another_lun_waits_for_its_compare_and_write() {
    let (t, fault) = two_luns("xcopy-caw");
    let q0 = wait(t.open_queue(0, 1)).unwrap();
    let q1 = wait(t.open_queue(1, 2)).unwrap();
    settle(&q0, 0);
    settle(&q1, 1);
    let (old, caw_new, copied) = (vec![0xAA; 512], vec![0xBB; 512], vec![0xCC; 512]);
    assert_eq!(run(&q1, 1, &write10(5, 1), old.clone()).status, Status::Good);
    assert_eq!(run(&q0, 0, &write10(10, 1), copied.clone()).status, Status::Good);

    fault.hold_writes(true);
    let mut caw = vec![0u8; 16];
    caw[0] = 0x89;
    caw[2..10].copy_from_slice(&5u64.to_be_bytes());
    caw[13] = 1;
    let caw_done = submit(&q1, 1, &caw, [old, caw_new].concat());
    let deadline = Instant::now() + Duration::from_secs(30);
    while fault.held() != 1 {
        assert!(Instant::now() < deadline, "the COMPARE AND WRITE did not reach its write");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Only the COMPARE AND WRITE's write stays held; later writes pass.
    fault.hold_new_writes(false);
    let (cdb, list) = copy_between(&t, 0, 1, 1, 10, 5);
    let copy_done = submit(&q0, 0, &cdb, list);
    if let Ok(r) = copy_done.recv_timeout(Duration::from_millis(500)) {
        panic!("the copy into LUN 1 completed inside its COMPARE AND WRITE: {r:?}");
    }
    fault.release_held();
    let r = caw_done.recv_timeout(Duration::from_secs(30)).expect("COMPARE AND WRITE completed");
    assert_eq!(r.status, Status::Good, "{r:?}");
    let r = copy_done.recv_timeout(Duration::from_secs(30)).expect("EXTENDED COPY completed");
    assert_eq!(r.status, Status::Good, "{r:?}");
    let r = run(&q1, 1, &read10(5, 1), Vec::new());
    assert_eq!(r.data, copied, "COMPARE AND WRITE, then the copy");
    t.shutdown();
}

/// The copy reads and writes another unit as the EXTENDED COPY's I_T
/// nexus: that unit's reservations apply (here an SPC-2 RESERVE, which
/// refuses reads and writes to other nexuses), and a conflict aborts the
/// copy. Without the check, any initiator could write a unit another holds
/// reserved by sending the copy to a unit it may use.
#[test]
fn a_copy_respects_the_other_luns_reservation() {
    let (t, _fault) = two_luns("xcopy-reserve");
    let (x, y) = (Nexus::new("iqn.x,i,0x1", 1), Nexus::new("iqn.y,i,0x1", 1));
    let x0 = wait(t.open_queue_for(0, 1, Some(x.clone()))).unwrap();
    let x1 = wait(t.open_queue_for(1, 1, Some(x))).unwrap();
    let y0 = wait(t.open_queue_for(0, 2, Some(y.clone()))).unwrap();
    let y1 = wait(t.open_queue_for(1, 2, Some(y))).unwrap();
    for (q, lun) in [(&x0, 0), (&x1, 1), (&y0, 0), (&y1, 1)] {
        settle(q, lun);
    }
    assert_eq!(run(&y0, 0, &write10(0, 1), vec![0x11; 512]).status, Status::Good);
    assert_eq!(run(&x1, 1, &[0x16, 0, 0, 0, 0, 0], Vec::new()).status, Status::Good, "RESERVE(6) of LUN 1 by x");

    // y may not write LUN 1, directly or through a copy sent to LUN 0...
    assert_eq!(run(&y1, 1, &write10(7, 1), vec![0x22; 512]).status, Status::ReservationConflict);
    let (cdb, list) = copy_between(&t, 0, 1, 1, 0, 7);
    let r = run(&y0, 0, &cdb, list.clone());
    assert!(copy_target_not_reachable(&r), "copy into a unit reserved by another nexus: {r:?}");
    // ...nor read it.
    let (back, back_list) = copy_between(&t, 1, 0, 1, 7, 3);
    let r = run(&y0, 0, &back, back_list.clone());
    assert!(copy_target_not_reachable(&r), "copy from a unit reserved by another nexus: {r:?}");
    // The holder may, and y once it is released.
    assert_eq!(run(&x0, 0, &cdb, list.clone()).status, Status::Good);
    assert_eq!(run(&x1, 1, &read10(7, 1), Vec::new()).data, vec![0x11; 512]);
    assert_eq!(run(&x1, 1, &[0x17, 0, 0, 0, 0, 0], Vec::new()).status, Status::Good, "RELEASE(6)");
    assert_eq!(run(&y0, 0, &back, back_list).status, Status::Good);
    assert_eq!(run(&y0, 0, &read10(3, 1), Vec::new()).data, vec![0x11; 512]);
    t.shutdown();
}

/// A paused unit takes no I/O, a copy's included: the copy is aborted (not
/// held, which could hold the copy's own unit, and a target stop, until
/// the other unit resumes); once the unit resumes, the copy goes through.
#[test]
fn a_copy_into_a_paused_lun_is_aborted() {
    let (t, _fault) = two_luns("xcopy-paused");
    let q0 = wait(t.open_queue(0, 1)).unwrap();
    settle(&q0, 0);
    assert_eq!(run(&q0, 0, &write10(0, 1), vec![0x5A; 512]).status, Status::Good);
    wait(t.stop_device(1)).unwrap();
    let (cdb, list) = copy_between(&t, 0, 1, 1, 0, 9);
    let r = run(&q0, 0, &cdb, list.clone());
    assert!(copy_target_not_reachable(&r), "copy into a paused unit: {r:?}");
    wait(t.cont_device(1)).unwrap();
    assert_eq!(run(&q0, 0, &cdb, list).status, Status::Good);
    let q1 = wait(t.open_queue(1, 2)).unwrap();
    settle(&q1, 1);
    assert_eq!(run(&q1, 1, &read10(9, 1), Vec::new()).data, vec![0x5A; 512]);
    t.shutdown();
}

/// Copies in both directions between two units while each unit runs
/// COMPARE AND WRITEs: every command completes (a copy's I/O on the other
/// unit never waits for a COMPARE AND WRITE that is itself waiting, so no
/// cycle of waits forms through the two gates), and no increment of
/// either unit's COMPARE AND WRITE counter is lost.
#[test]
fn copies_both_ways_and_compare_and_writes_on_both_luns_all_finish() {
    const INCREMENTS: u64 = 200;
    const COPIES: usize = 100;
    let t = Target::new("xcopy-both-ways", 2).unwrap();
    for (lun, naa_id) in [(0, 0x66), (1, 0x77)] {
        // Every backend operation waits a little, so that commands wait
        // inside the gates and their waits overlap.
        let fault = Arc::new(FaultBackend::new(Backend::mem(1 << 20)));
        fault.set_delay(Duration::from_micros(500));
        let config = DiskConfig { naa_id, ..Default::default() };
        wait(t.add_device(lun, config, Backend::Fault(fault), ErrorPolicies::default())).unwrap();
    }
    let block = |v: u64| v.to_le_bytes().repeat(64);
    let mut workers = Vec::new();
    let (done_tx, done_rx) = mpsc::channel();
    for lun in [0u64, 1] {
        // A COMPARE AND WRITE counter in block 0 of the unit...
        let q = wait(t.open_queue(lun, 1 + lun as usize)).unwrap();
        settle(&q, lun);
        assert_eq!(run(&q, lun, &write10(0, 1), block(0)).status, Status::Good);
        let tx = done_tx.clone();
        workers.push(std::thread::spawn(move || {
            let mut done = 0;
            while done < INCREMENTS {
                let r = run(&q, lun, &read10(0, 1), Vec::new());
                let old = u64::from_le_bytes(r.data[..8].try_into().unwrap());
                let mut cdb = vec![0u8; 16];
                cdb[0] = 0x89;
                cdb[13] = 1;
                let r = run(&q, lun, &cdb, [block(old), block(old + 1)].concat());
                match r.status {
                    Status::Good => done += 1,
                    Status::CheckCondition if r.sense[2] & 0x0F == 0x0E => {}
                    s => panic!("COMPARE AND WRITE on LUN {lun}: {s:?} {:02x?}", r.sense),
                }
            }
            let _ = tx.send(());
            (lun, q)
        }));
        // ...and copies of 64 blocks from it to the other unit, sent to it.
        let q = wait(t.open_queue(lun, 2 - lun as usize)).unwrap();
        settle(&q, lun);
        let (cdb, list) = copy_between(&t, lun, 1 - lun, 64, 100, 200);
        let tx = done_tx.clone();
        workers.push(std::thread::spawn(move || {
            for _ in 0..COPIES {
                let r = run(&q, lun, &cdb, list.clone());
                assert_eq!(r.status, Status::Good, "copy from LUN {lun}: {:02x?}", r.sense);
            }
            let _ = tx.send(());
            (lun, q)
        }));
    }
    for _ in 0..workers.len() {
        done_rx.recv_timeout(Duration::from_secs(120)).expect("a worker is stuck: a cycle of waits between the gates");
    }
    let queues: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    for (lun, q) in queues.iter().step_by(2) {
        let r = run(q, *lun, &read10(0, 1), Vec::new());
        assert_eq!(r.data, block(INCREMENTS), "LUN {lun}: increments lost");
    }
    t.shutdown();
}

/// The cycle the foreign passes avoid, set up on purpose: a copy from each
/// unit to the other is reading its source (slowly) when a COMPARE AND
/// WRITE arrives on each unit and waits for that copy, its unit's command,
/// to finish. Each copy then reaches the other unit, whose COMPARE AND
/// WRITE is waiting to get in. If a copy waited for it, each unit would
/// wait for the other: the copy's I/O must go in first.
#[test]
fn copies_in_opposite_directions_pass_pending_compare_and_writes() {
    let t = Target::new("xcopy-cycle", 2).unwrap();
    let mut faults = Vec::new();
    for (lun, naa_id) in [(0, 0x88), (1, 0x99)] {
        let fault = Arc::new(FaultBackend::new(Backend::mem(1 << 20)));
        let config = DiskConfig { naa_id, ..Default::default() };
        wait(t.add_device(lun, config, Backend::Fault(fault.clone()), ErrorPolicies::default())).unwrap();
        faults.push(fault);
    }
    let copy_q = [wait(t.open_queue(0, 1)).unwrap(), wait(t.open_queue(1, 2)).unwrap()];
    let caw_q = [wait(t.open_queue(0, 2)).unwrap(), wait(t.open_queue(1, 1)).unwrap()];
    for lun in [0, 1] {
        settle(&copy_q[lun], lun as u64);
        settle(&caw_q[lun], lun as u64);
    }
    for f in &faults {
        f.set_delay(Duration::from_millis(300));
    }
    let copies: Vec<_> = [0u64, 1]
        .iter()
        .map(|&lun| {
            let (cdb, list) = copy_between(&t, lun, 1 - lun, 8, 100, 200);
            submit(&copy_q[lun as usize], lun, &cdb, list)
        })
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    let caws: Vec<_> = [0u64, 1]
        .iter()
        .map(|&lun| {
            let mut cdb = vec![0u8; 16];
            cdb[0] = 0x89;
            cdb[13] = 1;
            // Compares against the zeros the block holds, writes ones.
            submit(&caw_q[lun as usize], lun, &cdb, [vec![0; 512], vec![1; 512]].concat())
        })
        .collect();
    for (lun, rx) in copies.into_iter().enumerate() {
        let r = rx.recv_timeout(Duration::from_secs(30)).expect("copies and COMPARE AND WRITEs wait for each other");
        assert_eq!(r.status, Status::Good, "copy from LUN {lun}: {:02x?}", r.sense);
    }
    for (lun, rx) in caws.into_iter().enumerate() {
        let r = rx.recv_timeout(Duration::from_secs(30)).expect("COMPARE AND WRITE completed");
        assert_eq!(r.status, Status::Good, "COMPARE AND WRITE on LUN {lun}: {:02x?}", r.sense);
    }
    t.shutdown();
}

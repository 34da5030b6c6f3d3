//! EXTENDED COPY between two logical units of one target, through the core:
//! the command names both units by their identification designators, and
//! the core gives it the target's units to resolve them (without it, a copy
//! reaches only the unit it was sent to, and this one fails).

use std::sync::{mpsc, Arc};
use std::time::Duration;

use lunar_block::Backend;
use lunar_scsi::{Disk, DiskConfig, Status};
use lunar_target::{request, wait, ErrorPolicies, Queue, Response, Target};

fn run(q: &Arc<Queue>, lun: u64, cdb: &[u8], data: Vec<u8>) -> Response {
    let (tx, rx) = mpsc::channel();
    q.submit(request(1, lun, cdb, data, move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(30)).expect("command completed")
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

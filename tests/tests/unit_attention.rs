//! Unit attentions are kept per I_T_L nexus (SAM-5 5.14), not per core
//! queue: a front-end that is one I_T nexus with several queues of a LUN on
//! several I/O threads (a vhost-user-scsi controller: one queue per request
//! virtqueue) is told of each condition once, on whichever queue it sends
//! its next command that is not exempt, and the condition is then cleared
//! for all of its queues. Each other nexus (and each queue opened without
//! one) has conditions of its own.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use lunar_block::Backend;
use lunar_core::{wait, ErrorPolicies, Queue, Response, Target};
use lunar_loopback::{cdb, ResponseExt};
use lunar_scsi::{Nexus, Sense, SenseKey};

const BUS_DEVICE_RESET: (u8, u8) = (0x29, 0x03);
const CAPACITY_CHANGED: (u8, u8) = (0x2a, 0x09);
const LUNS_CHANGED: (u8, u8) = (0x3f, 0x0e);

fn nexus(name: &str) -> Option<Nexus> {
    Some(Nexus::new(format!("iqn.2025-01.test:{name},i,0x000000000001"), 1))
}

fn open(t: &Arc<Target>, lun: u64, io_thread: usize, nexus: Option<Nexus>) -> Arc<Queue> {
    wait(t.open_queue_for(lun, io_thread, nexus)).expect("open queue")
}

/// Runs one command on a queue; its response (bounded wait).
fn run(q: &Arc<Queue>, cdb: &[u8]) -> Response {
    let (tx, rx) = std::sync::mpsc::channel();
    q.submit(lunar_core::request(1, q.device().lun(), cdb, vec![], move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(30)).expect("a response")
}

#[track_caller]
fn assert_ua(r: &Response, (asc, ascq): (u8, u8), what: &str) {
    assert!(
        r.is_sense(SenseKey::UnitAttention, asc, ascq),
        "{what}: expected UNIT ATTENTION {asc:02x}h/{ascq:02x}h, got {r:?}"
    );
}

#[track_caller]
fn assert_good(r: &Response, what: &str) {
    assert!(r.is_good(), "{what}: expected GOOD, got {r:?}");
}

fn tur(q: &Arc<Queue>) -> Response {
    run(q, &cdb::test_unit_ready())
}

/// A target with two I/O threads and LUNs 0 and 1 (RAM).
fn target(name: &str) -> Arc<Target> {
    let t = Target::new(name, 2).unwrap();
    add(&t, 0, Backend::mem(1 << 20), ErrorPolicies::default());
    add(&t, 1, Backend::mem(1 << 20), ErrorPolicies::default());
    t
}

#[test]
fn a_unit_attention_is_reported_once_across_the_queues_of_a_nexus() {
    let t = target("ua-once");
    // Nexus A has a queue of LUN 0 on each I/O thread (as a vhost-user
    // controller with two request virtqueues); nexus B one; two queues
    // without a nexus one each.
    let (a1, a2) = (open(&t, 0, 1, nexus("a")), open(&t, 0, 2, nexus("a")));
    let b = open(&t, 0, 1, nexus("b"));
    let (x, y) = (open(&t, 0, 1, None), open(&t, 0, 2, None));
    wait(t.reset_device(0)).unwrap();
    assert_eq!(a1.pending_unit_attentions(), 1);
    assert_ua(&tur(&a2), BUS_DEVICE_RESET, "nexus A, first command (thread 2)");
    assert_eq!(a1.pending_unit_attentions(), 0, "cleared for every queue of the nexus");
    assert_good(&tur(&a1), "nexus A, thread 1: already reported on thread 2");
    assert_good(&tur(&a2), "nexus A, thread 2: reported once");
    // Every other nexus still has its own.
    assert_ua(&tur(&b), BUS_DEVICE_RESET, "nexus B");
    assert_good(&tur(&b), "nexus B, reported once");
    assert_ua(&tur(&x), BUS_DEVICE_RESET, "anonymous queue x");
    assert_ua(&tur(&y), BUS_DEVICE_RESET, "anonymous queue y (its own)");
    assert_good(&tur(&x), "anonymous queue x, reported once");
    t.shutdown();
}

#[test]
fn request_sense_on_one_queue_reports_and_clears_for_the_nexus_and_exempt_commands_leave_it() {
    let t = target("ua-request-sense");
    let (a1, a2) = (open(&t, 0, 1, nexus("a")), open(&t, 0, 2, nexus("a")));
    wait(t.reset_device(0)).unwrap();
    // INQUIRY and REPORT LUNS neither report nor clear it, on any queue.
    assert_good(&run(&a1, &cdb::inquiry(false, 0, 96)), "INQUIRY");
    assert_good(&run(&a2, &cdb::report_luns(256)), "REPORT LUNS");
    assert_eq!(a2.pending_unit_attentions(), 1);
    let r = run(&a2, &cdb::request_sense(252));
    assert_good(&r, "REQUEST SENSE");
    let s = Sense::decode(&r.data).expect("sense data");
    assert_eq!((s.key, s.asc, s.ascq), (SenseKey::UnitAttention, 0x29, 0x03), "REQUEST SENSE reports it");
    assert_good(&tur(&a1), "nexus A, thread 1: REQUEST SENSE on thread 2 cleared it");
    let r = run(&a1, &cdb::request_sense(252));
    let s = Sense::decode(&r.data).expect("sense data");
    assert_eq!(s.key, SenseKey::NoSense, "nothing pending any more: {s:?}");
    t.shutdown();
}

#[test]
fn conditions_of_a_nexus_come_oldest_first_each_once_whichever_queue_asks() {
    let t = target("ua-order");
    let (a1, a2) = (open(&t, 0, 1, nexus("a")), open(&t, 0, 2, nexus("a")));
    wait(t.reset_device(0)).unwrap();
    wait(t.resize_device(0, 2 << 20)).unwrap();
    wait(t.reset_device(0)).unwrap(); // the same condition again: pending once
    wait(t.add_device(2, disk(3), Backend::mem(1 << 20), ErrorPolicies::default())).unwrap();
    assert_eq!(a2.pending_unit_attentions(), 3);
    assert_ua(&tur(&a2), BUS_DEVICE_RESET, "oldest first");
    assert_ua(&tur(&a1), CAPACITY_CHANGED, "then the next, on the other queue");
    assert_ua(&tur(&a1), LUNS_CHANGED, "then the last");
    assert_good(&tur(&a2), "all reported once");
    assert_good(&tur(&a1), "all reported once");
    // LUN 1's queues of the nexus have their own (I_T_L): the new LUN only.
    let (l1a, l1b) = (open(&t, 1, 1, nexus("a")), open(&t, 1, 2, nexus("a")));
    wait(t.add_device(3, disk(4), Backend::mem(1 << 20), ErrorPolicies::default())).unwrap();
    assert_ua(&tur(&l1b), LUNS_CHANGED, "LUN 1");
    assert_good(&tur(&l1a), "LUN 1, reported once");
    assert_ua(&tur(&a1), LUNS_CHANGED, "LUN 0 has its own");
    assert_good(&tur(&a2), "LUN 0, reported once");
    t.shutdown();
}

#[test]
fn a_pending_unit_attention_survives_queue_moves_and_stop_cont_once() {
    let t = target("ua-move");
    let (a1, a2) = (open(&t, 0, 1, nexus("a")), open(&t, 0, 2, nexus("a")));
    wait(t.reset_device(0)).unwrap();
    // The lists move (a1 to thread 2, then the whole device to thread 1,
    // then to the main loop and back): the condition is neither lost nor
    // duplicated.
    wait(t.move_queue(a1.clone(), 2)).unwrap();
    wait(t.move_device(0, 1)).unwrap();
    wait(t.stop()).unwrap();
    assert_eq!(a1.pending_unit_attentions(), 1);
    wait(t.cont()).unwrap();
    assert_ua(&tur(&a1), BUS_DEVICE_RESET, "after the moves");
    assert_good(&tur(&a2), "reported once");
    assert_good(&tur(&a1), "reported once");
    t.shutdown();
}

#[test]
fn the_conditions_of_a_nexus_end_with_its_last_queue() {
    let t = target("ua-close");
    let (a1, a2) = (open(&t, 0, 1, nexus("a")), open(&t, 0, 2, nexus("a")));
    wait(t.reset_device(0)).unwrap();
    // One queue of the nexus closes: the others still report it.
    wait(t.close_queue(a1)).unwrap();
    assert_ua(&tur(&a2), BUS_DEVICE_RESET, "the nexus's other queue");
    // A queue opened while the nexus has one shares its conditions.
    let a3 = open(&t, 0, 1, nexus("a"));
    wait(t.reset_device(0)).unwrap();
    assert_ua(&tur(&a3), BUS_DEVICE_RESET, "the newly opened queue");
    assert_good(&tur(&a2), "reported once");
    // Its last queue closes with a condition pending: a queue opened later
    // for the same nexus starts afresh (as a new I_T nexus).
    wait(t.reset_device(0)).unwrap();
    wait(t.close_queue(a2)).unwrap();
    wait(t.close_queue(a3)).unwrap();
    let a4 = open(&t, 0, 2, nexus("a"));
    assert_eq!(a4.pending_unit_attentions(), 0);
    assert_good(&tur(&a4), "a new nexus");
    t.shutdown();
}

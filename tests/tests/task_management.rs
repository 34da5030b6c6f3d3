//! The core's one task management API (`Target::task_management`), as both
//! front-ends call it: it resolves only once every command it aborted has
//! completed, aborts only what its scope covers, and raises the conditions
//! SAM-5 names for each function on the right I_T nexuses.

mod common;

use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use lunar_block::FaultBackend;
use lunar_core::{wait, Completion, ErrorPolicies, Queue, Request, Response, Target, TaskManagement};
use lunar_scsi::{Nexus, Status};

const SIZE: u64 = 1 << 20;

struct Setup {
    target: Arc<Target>,
    fault: Arc<FaultBackend>,
    a: Arc<Queue>,
    b: Arc<Queue>,
}

/// LUN 0 behind a fault injector; two I_T nexuses (A and B), each with a
/// queue on it, on different I/O threads.
fn setup() -> Setup {
    let target = Target::new("tmf", 2).unwrap();
    let (backend, fault) = faulty(SIZE);
    add(&target, 0, backend, ErrorPolicies::default());
    let a = wait(target.open_queue_for(0, 1, Some(Nexus::new("iqn.a", 1)))).unwrap();
    let b = wait(target.open_queue_for(0, 2, Some(Nexus::new("iqn.b", 1)))).unwrap();
    Setup { target, fault, a, b }
}

fn write10(lba: u32) -> Vec<u8> {
    let l = lba.to_be_bytes();
    vec![0x2a, 0, l[0], l[1], l[2], l[3], 0, 0, 1, 0]
}

/// Submits a one-block WRITE(10) with tag `tag`; its response arrives on the returned channel.
fn submit_write(q: &Arc<Queue>, tag: u64) -> mpsc::Receiver<Response> {
    let (tx, rx) = mpsc::channel();
    q.submit(Request::new(
        tag,
        0,
        write10(tag as u32),
        vec![tag as u8; BLOCK],
        Completion::new(move |r| {
            let _ = tx.send(r);
        }),
    ));
    rx
}

/// TEST UNIT READY on `q`: its (status, sense key, ASC, ASCQ).
fn tur(q: &Arc<Queue>) -> (Status, u8, u8, u8) {
    let (tx, rx) = mpsc::channel();
    q.submit(Request::new(
        9999,
        0,
        vec![0; 6],
        Vec::new(),
        Completion::new(move |r| {
            let _ = tx.send(r);
        }),
    ));
    let r = recv(&rx, "TEST UNIT READY");
    let s = &r.sense;
    if s.len() >= 14 {
        (r.status, s[2] & 0x0f, s[12], s[13])
    } else {
        (r.status, 0, 0, 0)
    }
}

/// Runs a TMF on another thread; its result arrives on the channel.
fn start_tmf(t: &Arc<Target>, tmf: TaskManagement, queues: Vec<Arc<Queue>>) -> mpsc::Receiver<usize> {
    let (tx, rx) = mpsc::channel();
    let t = t.clone();
    std::thread::spawn(move || {
        let done = wait(t.task_management(tmf, 0, &queues)).unwrap();
        let _ = tx.send(done.aborted);
    });
    rx
}

/// Waits until the backend holds `n` writes (they are executing).
fn until_held(f: &FaultBackend, n: u64) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while f.held() < n {
        assert!(std::time::Instant::now() < end, "{} of {n} writes reached the backend", f.held());
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn abort_task_resolves_only_after_the_executing_command_completed() {
    let s = setup();
    s.fault.hold_writes(true);
    let w1 = submit_write(&s.a, 1);
    let w2 = submit_write(&s.a, 2);
    until_held(&s.fault, 2);
    let tmf = start_tmf(&s.target, TaskManagement::AbortTask { tag: 1 }, vec![s.a.clone()]);
    // The write is in the backend: the abort cannot be done yet.
    assert!(tmf.recv_timeout(Duration::from_millis(200)).is_err(), "ABORT TASK answered before its command ended");
    s.fault.hold_writes(false);
    s.fault.release_held();
    assert_eq!(recv(&tmf, "ABORT TASK"), 1);
    assert_eq!(recv(&w1, "aborted write").status, Status::TaskAborted);
    assert_eq!(recv(&w2, "other write").status, Status::Good, "only the tagged command");
}

#[test]
fn abort_task_set_reaches_only_the_issuing_nexus() {
    let s = setup();
    s.fault.hold_writes(true);
    let a: Vec<_> = (1..=3).map(|t| submit_write(&s.a, t)).collect();
    let b = submit_write(&s.b, 10);
    until_held(&s.fault, 4);
    let tmf = start_tmf(&s.target, TaskManagement::AbortTaskSet, vec![s.a.clone()]);
    assert!(tmf.recv_timeout(Duration::from_millis(100)).is_err());
    s.fault.hold_writes(false);
    s.fault.release_held();
    assert_eq!(recv(&tmf, "ABORT TASK SET"), 3);
    for rx in a {
        assert_eq!(recv(&rx, "A's write").status, Status::TaskAborted);
    }
    assert_eq!(recv(&b, "B's write").status, Status::Good);
    // No unit attention from an abort.
    assert_eq!(tur(&s.a).0, Status::Good);
    assert_eq!(tur(&s.b).0, Status::Good);
}

#[test]
fn it_nexus_reset_is_a_nexus_loss_for_the_issuer_only() {
    let s = setup();
    let w = submit_write(&s.a, 1);
    assert_eq!(recv(&w, "write").status, Status::Good);
    let tmf = start_tmf(&s.target, TaskManagement::ITNexusReset, vec![s.a.clone()]);
    assert_eq!(recv(&tmf, "I_T NEXUS RESET"), 0);
    assert_eq!(tur(&s.a), (Status::CheckCondition, 0x6, 0x29, 0x07), "I_T NEXUS LOSS OCCURRED");
    assert_eq!(tur(&s.a).0, Status::Good, "reported once");
    assert_eq!(tur(&s.b).0, Status::Good, "not for another nexus");
}

#[test]
fn lu_reset_aborts_every_nexus_and_tells_every_nexus() {
    let s = setup();
    s.fault.hold_writes(true);
    let a = submit_write(&s.a, 1);
    let b = submit_write(&s.b, 2);
    until_held(&s.fault, 2);
    let tmf = start_tmf(&s.target, TaskManagement::LogicalUnitReset, vec![s.a.clone()]);
    assert!(tmf.recv_timeout(Duration::from_millis(100)).is_err());
    s.fault.hold_writes(false);
    s.fault.release_held();
    assert_eq!(recv(&tmf, "LOGICAL UNIT RESET"), 1, "the issuer's own command counted");
    assert_eq!(recv(&a, "A's write").status, Status::TaskAborted);
    assert_eq!(recv(&b, "B's write").status, Status::TaskAborted);
    for q in [&s.a, &s.b] {
        assert_eq!(tur(q), (Status::CheckCondition, 0x6, 0x29, 0x03), "BUS DEVICE RESET FUNCTION OCCURRED");
    }
}

#[test]
fn target_reset_spares_the_issuer_its_unit_attention() {
    let s = setup();
    let tmf = start_tmf(&s.target, TaskManagement::TargetReset, vec![s.a.clone()]);
    assert_eq!(recv(&tmf, "TARGET RESET"), 0);
    assert_eq!(tur(&s.a).0, Status::Good, "the issuer hears it from the response");
    assert_eq!(tur(&s.b), (Status::CheckCondition, 0x6, 0x29, 0x03));
}

#[test]
fn an_abort_of_a_closed_queue_resolves() {
    let s = setup();
    wait(s.target.close_queue(s.a.clone())).unwrap();
    let tmf = start_tmf(&s.target, TaskManagement::AbortTaskSet, vec![s.a.clone()]);
    assert_eq!(recv(&tmf, "abort on a closed queue"), 0);
}

//! MODE SELECT changes device-wide mode pages: every other I_T nexus of the
//! logical unit gets the unit attention MODE PARAMETERS CHANGED (2Ah/01h)
//! once, on whichever of its queues (I/O threads) it sends next; the nexus
//! that changed them does not, and a MODE SELECT that changes nothing
//! raises nothing.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use lunar_block::Backend;
use lunar_core::{request, wait, ErrorPolicies, Queue, Response, Target};
use lunar_scsi::{DiskConfig, Nexus, Status};

fn run(q: &Arc<Queue>, cdb: &[u8], data: Vec<u8>) -> Response {
    let (tx, rx) = mpsc::channel();
    q.submit(request(1, 0, cdb, data, move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(10)).expect("command completed")
}

/// (key, asc, ascq) of fixed-format sense.
fn sense(r: &Response) -> Option<(u8, u8, u8)> {
    (r.status == Status::CheckCondition && r.sense.len() >= 14).then(|| (r.sense[2] & 0x0f, r.sense[12], r.sense[13]))
}

fn tur(q: &Arc<Queue>) -> Response {
    run(q, &[0, 0, 0, 0, 0, 0], Vec::new())
}

/// TEST UNIT READY until GOOD (clears what the queue held at open).
fn settle(q: &Arc<Queue>) {
    for _ in 0..8 {
        if tur(q).status == Status::Good {
            return;
        }
    }
    panic!("unit attentions did not clear");
}

/// The caching mode page (08h) as MODE SENSE(6) returns it.
fn caching_page(q: &Arc<Queue>) -> Vec<u8> {
    let r = run(q, &[0x1a, 0x08, 0x08, 0, 255, 0], Vec::new());
    assert_eq!(r.status, Status::Good, "MODE SENSE: {:?}", sense(&r));
    let header = 4 + r.data[3] as usize;
    r.data[header..header + 2 + r.data[header + 1] as usize].to_vec()
}

fn mode_select(q: &Arc<Queue>, page: &[u8]) -> Response {
    let mut data = vec![0u8; 4];
    data.extend_from_slice(page);
    run(q, &[0x15, 0x10, 0, 0, data.len() as u8, 0], data)
}

#[test]
fn mode_select_raises_mode_parameters_changed_for_the_other_nexuses() {
    let t = Target::new("mode", 2).unwrap();
    wait(t.add_device(0, DiskConfig::default(), Backend::mem(1 << 20), ErrorPolicies::default())).unwrap();
    let a = wait(t.open_queue_for(0, 1, Some(Nexus::new("iqn.a,i,0x1", 1)))).unwrap();
    let b = wait(t.open_queue_for(0, 2, Some(Nexus::new("iqn.b,i,0x2", 1)))).unwrap();
    let b2 = wait(t.open_queue_for(0, 1, Some(Nexus::new("iqn.b,i,0x2", 1)))).unwrap();
    for q in [&a, &b, &b2] {
        settle(q);
    }
    let mut page = caching_page(&a);
    assert_eq!(page[0] & 0x3f, 0x08);

    // The same values again: nothing changed, nobody is told.
    page[0] &= 0x3f; // PS is reserved in MODE SELECT
    let r = mode_select(&a, &page);
    assert_eq!(r.status, Status::Good, "MODE SELECT (no change): {:?}", sense(&r));
    assert_eq!(tur(&b).status, Status::Good, "no unit attention for an unchanged page");

    // WCE flipped on nexus a.
    page[2] ^= 0x04;
    let r = mode_select(&a, &page);
    assert_eq!(r.status, Status::Good, "MODE SELECT: {:?}", sense(&r));
    assert_eq!(tur(&a).status, Status::Good, "the nexus that changed the page is not told");
    // The other nexus is told once (unit attentions are held per I_T_L
    // nexus), on whichever of its queues comes first, whichever I/O thread
    // that is on; its other queue then has nothing to report.
    assert_eq!(sense(&tur(&b2)), Some((6, 0x2a, 0x01)), "other nexus, on a's I/O thread");
    assert_eq!(tur(&b).status, Status::Good, "other nexus, on the other I/O thread: reported once");
    assert_eq!(tur(&b2).status, Status::Good);
    assert_eq!(caching_page(&b)[2] & 0x04, page[2] & 0x04, "the change is device-wide");
    t.shutdown();
}

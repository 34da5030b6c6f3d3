//! COMPARE AND WRITE is atomic with respect to every other command on the
//! device, including those from queues on other I/O threads (SBC-4 5.3).
//!
//! The test is a counter kept in one block and incremented by several
//! initiators at once, each on its own queue and I/O thread, with COMPARE
//! AND WRITE (read, then CAW old -> old + 1, retried on MISCOMPARE). If two
//! compare-and-writes could interleave (both compare against the same old
//! value, then both write), an increment would be lost: the final counter
//! would be less than the number of successful CAWs.

use std::sync::{mpsc, Arc};
use std::time::Duration;

use lunar_block::Backend;
use lunar_core::{request, wait, ErrorPolicies, Queue, Response, Target};
use lunar_scsi::{DiskConfig, Nexus, Status};

const BS: usize = 512;

fn run(q: &Arc<Queue>, cdb: &[u8], data: Vec<u8>) -> Response {
    let (tx, rx) = mpsc::channel();
    q.submit(request(1, 0, cdb, data, move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(30)).expect("command completed")
}

fn block(value: u64) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    for c in b.chunks_mut(8) {
        c.copy_from_slice(&value.to_le_bytes());
    }
    b
}

fn read_counter(q: &Arc<Queue>) -> u64 {
    let r = run(q, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], Vec::new());
    assert_eq!(r.status, Status::Good, "READ: {:?}", r.sense);
    let v = u64::from_le_bytes(r.data[..8].try_into().unwrap());
    assert_eq!(r.data, block(v), "the counter block is torn");
    v
}

fn caw(q: &Arc<Queue>, old: u64, new: u64) -> bool {
    let mut cdb = [0u8; 16];
    cdb[0] = 0x89;
    cdb[13] = 1;
    let r = run(q, &cdb, [block(old), block(new)].concat());
    match r.status {
        Status::Good => true,
        Status::CheckCondition if r.sense.len() > 2 && r.sense[2] & 0x0f == 0x0e => false,
        _ => panic!("COMPARE AND WRITE: {:?} {:?}", r.status, r.sense),
    }
}

#[test]
fn compare_and_write_is_atomic_across_io_threads() {
    const WORKERS: usize = 4;
    const INCREMENTS: u64 = 1500;
    let t = Target::new("caw", 2).unwrap();
    wait(t.add_device(0, DiskConfig::default(), Backend::mem(1 << 20), ErrorPolicies::default())).unwrap();
    let queues: Vec<Arc<Queue>> = (0..WORKERS)
        .map(|i| wait(t.open_queue_for(0, 1 + i % 2, Some(Nexus::new(format!("iqn.w{i},i,0x{i}"), 1)))).unwrap())
        .collect();
    for q in &queues {
        // Clear what the queue holds at open (power on).
        while run(q, &[0, 0, 0, 0, 0, 0], Vec::new()).status != Status::Good {}
    }
    let handles: Vec<_> = queues
        .iter()
        .cloned()
        .map(|q| {
            std::thread::spawn(move || {
                let (mut done, mut retries) = (0, 0);
                while done < INCREMENTS {
                    let old = read_counter(&q);
                    if caw(&q, old, old + 1) {
                        done += 1;
                    } else {
                        retries += 1;
                    }
                }
                (done, retries)
            })
        })
        .collect();
    let results: Vec<(u64, u64)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let successes: u64 = results.iter().map(|r| r.0).sum();
    let retries: u64 = results.iter().map(|r| r.1).sum();
    let counter = read_counter(&queues[0]);
    println!("{successes} successful COMPARE AND WRITEs ({retries} miscompares retried) from {WORKERS} queues on 2 I/O threads: counter {counter}");
    assert_eq!(counter, successes, "increments lost: two COMPARE AND WRITEs interleaved");
    t.shutdown();
}

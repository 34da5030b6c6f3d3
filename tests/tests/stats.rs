//! Statistics of the target core (crates/core/src/stats.rs), end to end
//! through the in-process initiator: exact counts for a known workload, per
//! LUN and per I/O thread, kept across a move between threads, a closed
//! queue, and errors of every kind.

mod common;

use std::time::Duration;

use common::*;
use lunar_block::Backend;
use lunar_core::stats::{Kind, Snapshot};
use lunar_core::{wait, ErrorPolicies, ErrorPolicy, Target};
use lunar_loopback::{cdb, Initiator, ResponseExt};
use lunar_scsi::Status;

fn thread_stats(t: &Target, io_thread: usize) -> Snapshot {
    t.contexts().stats().snapshot(io_thread).expect("a thread of the target")
}

#[test]
fn counts_follow_the_workload_across_moves_and_closes() {
    let target = Target::new("t", 2).unwrap();
    let dev = add(&target, 0, Backend::mem(1 << 20), ErrorPolicies::default());
    let ini = wait(Initiator::connect(&target, &[0], 1)).unwrap();

    // 10 writes of 4 blocks and 6 reads of 2 blocks on I/O thread 1.
    for i in 0..10u64 {
        let r = ini.command_blocking(0, &cdb::write16(i * 4, 4, false), pattern(i, 4 * BLOCK)).unwrap();
        assert!(r.is_good());
    }
    for i in 0..6u64 {
        assert!(ini.command_blocking(0, &cdb::read16(i * 2, 2), Vec::new()).unwrap().is_good());
    }
    let s = dev.stats().snapshot();
    println!("after thread 1: {s:?}");
    assert_eq!(s.commands_of(Kind::Write), 10);
    assert_eq!(s.commands_of(Kind::Read), 6);
    assert_eq!(s.bytes_written, 10 * 4 * BLOCK as u64);
    assert_eq!(s.bytes_read, 6 * 2 * BLOCK as u64);
    assert_eq!(s.errors, 0);
    assert_eq!(s.latency_count(), s.total());
    assert!(s.latency_ns > 0);
    assert_eq!(thread_stats(&target, 1), s, "everything ran on I/O thread 1");
    assert_eq!(thread_stats(&target, 2).total(), 0);

    // Move the LUN to thread 2: its counts stay, new ones go to thread 2.
    wait(target.move_device(0, 2)).unwrap();
    for _ in 0..3 {
        assert!(ini.command_blocking(0, &cdb::test_unit_ready(), Vec::new()).unwrap().is_good());
    }
    // An invalid opcode: CHECK CONDITION, an error of kind "other".
    let bad = ini.command_blocking(0, &[0xFF, 0, 0, 0, 0, 0], Vec::new()).unwrap();
    assert_eq!(bad.status, Status::CheckCondition);
    // A read past the end: CHECK CONDITION, no bytes.
    let past = ini.command_blocking(0, &cdb::read16(1 << 20, 1), Vec::new()).unwrap();
    assert_eq!(past.status, Status::CheckCondition);
    let s = dev.stats().snapshot();
    assert_eq!(s.commands, [7, 10, 4]);
    assert_eq!(s.bytes_read, 6 * 2 * BLOCK as u64, "a failed read moves no data");
    assert_eq!(s.errors, 2);
    let t2 = thread_stats(&target, 2);
    assert_eq!((t2.commands, t2.errors), ([1, 0, 4], 2));
    assert_eq!(thread_stats(&target, 1).total(), 16, "thread 1 keeps what it did");

    // Close the queue: the device keeps its counts.
    wait(ini.disconnect());
    let after = dev.stats().snapshot();
    assert_eq!(after, s, "closing the queue lost or added counts");
    target.shutdown();
}

#[test]
fn backend_errors_and_aborts_are_counted() {
    let target = Target::new("t", 1).unwrap();
    let (backend, fault) = faulty(1 << 20);
    let dev = add(&target, 0, backend, ErrorPolicies { read: ErrorPolicy::Report, write: ErrorPolicy::Ignore });
    let ini = wait(Initiator::connect(&target, &[0], 1)).unwrap();
    fault.fail_reads(libc::EIO);
    fault.fail_writes(libc::EIO);
    let r = ini.command_blocking(0, &cdb::read16(0, 1), Vec::new()).unwrap();
    assert_eq!(r.status, Status::CheckCondition, "rerror=report");
    let w = ini.command_blocking(0, &cdb::write16(0, 1, false), pattern(1, BLOCK)).unwrap();
    assert!(w.is_good(), "werror=ignore");
    fault.fail_reads(0);
    fault.fail_writes(0);
    let s = dev.stats().snapshot();
    assert_eq!(s.io_errors, 2, "both backend errors count, reported or ignored");
    assert_eq!(s.errors, 1, "only the reported one completed with CHECK CONDITION");

    // Commands aborted by a LUN reset while their I/O is delayed.
    fault.set_delay(Duration::from_millis(200));
    let pending: Vec<_> = (0..4).map(|i| ini.submit(0, &cdb::read16(i, 1), Vec::new())).collect();
    std::thread::sleep(Duration::from_millis(50));
    wait(target.reset_device(0)).unwrap();
    fault.set_delay(Duration::ZERO);
    let mut aborted = 0;
    for p in pending {
        let r = p.blocking_recv().unwrap();
        if r.is_aborted() {
            aborted += 1;
        }
    }
    let s = dev.stats().snapshot();
    println!("after the reset: {aborted} aborted, {s:?}");
    assert_eq!(aborted, 4, "a reset aborts every command of the LUN");
    assert_eq!(s.aborted, aborted);
    assert_eq!(s.total(), 6);
    assert_eq!(s.latency_count(), 6);
    target.shutdown();
}

//! One test per invariant of DESIGN.md (1-6), named after it, driving the
//! target core through the in-process initiator.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use common::*;
use lunar_aio::{IoContext, RunState};
use lunar_block::{Backend, FileBackend, FileOptions};
use lunar_core::{request, wait, Action, ErrorPolicies, ErrorPolicy, Event, RequestState, Target, TargetError};
use lunar_loopback::{cdb, Initiator, ResponseExt};
use lunar_scsi::{SenseKey, Status};

/// Submits `n` 1-block writes of a pattern to `lun`; returns the receivers.
fn writes(ini: &Initiator, lun: u64, n: u64) -> Vec<tokio::sync::oneshot::Receiver<lunar_core::Response>> {
    (0..n).map(|i| ini.submit(lun, &cdb::write16(i, 1, false), pattern(i, BLOCK))).collect()
}

#[test]
fn invariant_1_running_lists_touched_only_on_their_owner_thread() {
    // The type side (the list is !Send, only reachable through jobs) is a
    // compile-time check in crates/core/src/queue.rs. Here: at run time,
    // every request of a queue executes and completes on its I/O thread,
    // whichever thread submitted it.
    let target = Target::new("t", 3).unwrap();
    add(&target, 0, Backend::mem(1 << 20), ErrorPolicies::default());
    let ini = Arc::new(wait(Initiator::connect(&target, &[0], 2)).unwrap());
    let q = ini.queue(0).unwrap().clone();
    let (tx, rx) = mpsc::channel();
    let mut submitters = Vec::new();
    for s in 0..4u64 {
        let (q, tx) = (q.clone(), tx.clone());
        submitters.push(std::thread::spawn(move || {
            for i in 0..50u64 {
                let tx = tx.clone();
                q.submit(request(s * 1000 + i, 0, &cdb::write16(s * 50 + i, 1, false), pattern(i, BLOCK), move |r| {
                    tx.send((r.status, IoContext::current().map(|c| c.index()))).unwrap();
                }));
            }
        }));
    }
    for s in submitters {
        s.join().unwrap();
    }
    for _ in 0..200 {
        let (status, thread) = recv(&rx, "completion");
        assert_eq!(status, Status::Good);
        assert_eq!(thread, Some(2), "completion ran off the owner thread");
    }
    target.shutdown();
}

#[test]
fn invariant_2_stopped_lists_touched_only_by_main_loop_after_drain() {
    let target = Target::new("t", 2).unwrap();
    let (backend, fault) = faulty(1 << 20);
    let dev = add(&target, 0, backend, ErrorPolicies::default());
    let ini = wait(Initiator::connect(&target, &[0], 1)).unwrap();
    fault.set_delay(Duration::from_millis(100));
    let pending = writes(&ini, 0, 16);
    std::thread::sleep(Duration::from_millis(20)); // they are executing now
    wait(target.stop()).unwrap();
    assert_eq!(target.run_state(), RunState::Stopped);

    // After stop: drained (nothing executing), and the lists are on the main loop.
    let main = target.contexts().main_loop().clone();
    let (t2, d2) = (target.clone(), dev.clone());
    let states = main
        .run_blocking(move || {
            let mut states = Vec::new();
            t2.for_each_request_sync(&d2, |r| states.push(r.state())).map(|_| states)
        })
        .unwrap()
        .unwrap();
    assert!(states.iter().all(|s| *s != RequestState::Executing), "stopped with I/O in flight: {states:?}");
    // Off the main loop, or while running, the sync iteration refuses.
    assert!(matches!(target.for_each_request_sync(&dev, |_| ()), Err(TargetError::NotMainLoop)));
    // New commands do not start while stopped.
    fault.set_delay(Duration::ZERO);
    let late = ini.submit(0, &cdb::test_unit_ready(), vec![]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(wait(target.in_flight(&dev)), 1, "a command started while stopped");
    wait(target.cont()).unwrap();
    let (t3, d3) = (target.clone(), dev.clone());
    let running = main.run_blocking(move || t3.for_each_request_sync(&d3, |_| ()).err()).unwrap();
    assert!(matches!(running, Some(TargetError::NotStopped)));
    for p in pending {
        assert!(wait(p).unwrap().is_good());
    }
    assert!(wait(late).unwrap().is_good());
    target.shutdown();
}

#[test]
fn invariant_3_async_iteration_runs_once_per_request_on_owner_and_holds_device() {
    let target = Target::new("t", 3).unwrap();
    let (backend, fault) = faulty(1 << 20);
    let dev = add(&target, 0, backend, ErrorPolicies::default());
    let inis: Vec<Initiator> = (1..=3).map(|t| wait(Initiator::connect(&target, &[0], t)).unwrap()).collect();
    fault.set_delay(Duration::from_millis(200));
    let mut pending = Vec::new();
    for ini in &inis {
        pending.extend(writes(ini, 0, 8));
    }
    std::thread::sleep(Duration::from_millis(30));
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    dev.set_drop_hook(move || {
        d.fetch_add(1, Ordering::SeqCst);
    });

    // Start the iteration and, racing with it, move the device.
    let seen: Arc<Mutex<Vec<(u64, u64, usize)>>> = Arc::default();
    let s2 = seen.clone();
    let dropped2 = dropped.clone();
    let iteration = {
        let t = target.clone();
        let dev = dev.clone();
        std::thread::spawn(move || {
            wait(t.for_each_request_async(&dev, move |r| {
                assert_eq!(dropped2.load(Ordering::SeqCst), 0, "device freed while iterating");
                let thread = IoContext::current().unwrap().index();
                s2.lock().unwrap().push((r.tag, r.lun, thread));
                Action::Keep
            }))
        })
    };
    wait(target.move_device(0, 2)).unwrap();
    iteration.join().unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    // 24 requests in 3 lists; each visited once (tags repeat across initiators,
    // so count by (tag, thread) per list: 8 tags x 3 lists).
    assert_eq!(seen.len(), 24, "{seen:?}");
    let mut per_tag: HashMap<u64, usize> = HashMap::new();
    for (tag, _, thread) in &seen {
        *per_tag.entry(*tag).or_default() += 1;
        assert!((1..=3).contains(thread), "callback on the main loop while running");
    }
    assert!(per_tag.values().all(|&n| n == 3));
    for p in pending {
        assert!(wait(p).unwrap().is_good());
    }
    // The device is held by the iteration, by the target and by the queues;
    // once all go, it is freed exactly once.
    drop(dev);
    wait(target.remove_device(0)).unwrap();
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "freed while initiators still hold queues");
    drop(inis);
    assert_eq!(dropped.load(Ordering::SeqCst), 1);
    target.shutdown();
}

#[test]
fn invariant_4_hot_remove_with_io_and_iterations_pending_frees_after_they_finish() {
    let target = Target::new("t", 2).unwrap();
    let (backend, fault) = faulty(1 << 20);
    let dev = add(&target, 0, backend, ErrorPolicies::default());
    add(&target, 1, Backend::mem(1 << 20), ErrorPolicies::default());
    let ini = wait(Initiator::connect(&target, &[0, 1], 1)).unwrap();
    fault.set_delay(Duration::from_millis(150));
    let pending = writes(&ini, 0, 32);
    std::thread::sleep(Duration::from_millis(20));
    let dropped = Arc::new(AtomicUsize::new(0));
    let d = dropped.clone();
    dev.set_drop_hook(move || {
        d.fetch_add(1, Ordering::SeqCst);
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = calls.clone();
    let iteration = {
        let (t, dev) = (target.clone(), dev.clone());
        std::thread::spawn(move || {
            wait(t.for_each_request_async(&dev, move |_| {
                c2.fetch_add(1, Ordering::SeqCst);
                Action::Keep
            }))
        })
    };
    drop(dev);
    wait(target.remove_device(0)).unwrap();
    iteration.join().unwrap().unwrap();
    // Every request completed: good (finished before) or aborted.
    let mut good = 0;
    let mut aborted = 0;
    for p in pending {
        let r = wait(p).expect("no request lost on removal");
        if r.is_good() {
            good += 1;
        } else {
            assert!(r.is_aborted(), "{r:?}");
            aborted += 1;
        }
    }
    assert_eq!(good + aborted, 32);
    // The other LUN is untouched, and tells of the change.
    let r = wait(ini.command(1, &cdb::test_unit_ready(), vec![])).unwrap();
    assert!(r.is_sense(SenseKey::UnitAttention, 0x3f, 0x0e), "{r:?}");
    assert!(wait(ini.command(1, &cdb::test_unit_ready(), vec![])).unwrap().is_good());
    // The removed LUN answers LUN NOT SUPPORTED through the stale queue.
    let r = wait(ini.command(0, &cdb::test_unit_ready(), vec![])).unwrap();
    assert!(r.is_sense(SenseKey::IllegalRequest, 0x25, 0x00), "{r:?}");
    assert_eq!(dropped.load(Ordering::SeqCst), 0);
    drop(ini);
    assert_eq!(dropped.load(Ordering::SeqCst), 1, "freed exactly once, after the last handle");
    target.shutdown();
}

#[test]
fn invariant_5_no_request_lost_across_stop_reset_move_and_save_load() {
    let target = Target::new("t", 2).unwrap();
    let (backend, fault) = faulty(4 << 20);
    let inner = match &backend {
        Backend::Fault(f) => f.inner().clone(),
        _ => unreachable!(),
    };
    add(&target, 0, backend, ErrorPolicies { read: ErrorPolicy::Report, write: ErrorPolicy::Enospc });
    let mut events = target.events();
    let ini = wait(Initiator::connect(&target, &[0], 1)).unwrap();

    // ENOSPC under `enospc`: the writes park, the LUN pauses, nobody is told
    // an error; then the target stops (for the save).
    fault.fail_writes(libc::ENOSPC);
    let parked = writes(&ini, 0, 8);
    let mut paused = false;
    for _ in 0..100 {
        match wait(async { tokio::time::timeout(Duration::from_secs(5), events.recv()).await }) {
            Ok(Ok(Event::PausedOnIoError { lun: 0, .. })) => {
                paused = true;
                break;
            }
            Ok(Ok(_)) => continue,
            _ => break,
        }
    }
    assert!(paused, "the LUN did not pause on ENOSPC");
    wait(target.stop()).unwrap();
    assert_eq!(target.run_state(), RunState::Stopped);

    // Save the stopped target's requests; load them into a fresh target over
    // the same storage, which has space now; resume: every write completes.
    let saved = wait(target.save()).unwrap();
    let loaded = lunar_core::state::load(&saved).unwrap();
    assert_eq!(loaded.len(), 8);
    // Those that ran failed and carry the retry flag; any that reached the
    // queue after the pause began were held, never started, and are saved
    // as in flight. Both are re-issued by the loading target.
    assert!(loaded.iter().any(|r| r.retry), "no request parked by the ENOSPC policy");
    wait(target.discard_saved()).unwrap();
    drop(parked);
    target.shutdown();

    let fresh = Target::new("t2", 2).unwrap();
    add(&fresh, 0, inner.clone(), ErrorPolicies::default());
    wait(fresh.stop()).unwrap();
    let q = wait(fresh.open_queue(0, 2)).unwrap();
    let (tx, rx) = mpsc::channel();
    for s in loaded {
        let tx = tx.clone();
        let tag = s.tag;
        q.submit(s.into_request(lunar_core::Completion::new(move |r| tx.send((tag, r)).unwrap())));
    }
    wait(fresh.cont()).unwrap();
    let mut done = HashMap::new();
    for _ in 0..8 {
        let (tag, r) = recv(&rx, "a loaded request");
        assert!(r.is_good(), "{r:?}");
        assert!(done.insert(tag, ()).is_none(), "completed twice");
    }
    // The data of the re-issued writes is there.
    let ini2 = wait(Initiator::connect(&fresh, &[0], 1)).unwrap();
    for i in 0..8u64 {
        let r = wait(ini2.command(0, &cdb::read16(i, 1), vec![])).unwrap();
        assert_eq!(r.data, pattern(i, BLOCK), "block {i}");
    }

    // Reset with commands executing: all complete (aborted or good), then a UA.
    let (b2, f2) = faulty(1 << 20);
    add(&fresh, 1, b2, ErrorPolicies::default());
    let ini3 = wait(Initiator::connect(&fresh, &[1], 2)).unwrap();
    f2.set_delay(Duration::from_millis(100));
    let pending = writes(&ini3, 1, 16);
    std::thread::sleep(Duration::from_millis(20));
    wait(fresh.move_device(1, 1)).unwrap();
    wait(fresh.reset_device(1)).unwrap();
    let mut n = 0;
    for p in pending {
        let r = wait(p).expect("lost on reset");
        assert!(r.is_good() || r.is_aborted(), "{r:?}");
        n += 1;
    }
    assert_eq!(n, 16);
    let r = wait(ini3.command(1, &cdb::test_unit_ready(), vec![])).unwrap();
    assert!(r.is_sense(SenseKey::UnitAttention, 0x29, 0x03), "{r:?}");
    fresh.shutdown();
}

#[test]
fn invariant_6_acknowledged_fua_and_synced_writes_survive_reopen() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let path = dir.path().join("disk.img");
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let target = Target::new("t", 1).unwrap();
    let file = FileBackend::open(&path, &FileOptions::default()).unwrap();
    add(&target, 0, Backend::File(Arc::new(file)), ErrorPolicies::default());
    let ini = wait(Initiator::connect(&target, &[0], 1)).unwrap();
    for i in 0..16u64 {
        let r = wait(ini.command(0, &cdb::write16(i, 1, i % 2 == 0), pattern(i + 100, BLOCK))).unwrap();
        assert!(r.is_good());
    }
    assert!(wait(ini.command(0, &cdb::synchronize_cache10(), vec![])).unwrap().is_good());
    // Read the file independently of the daemon's state.
    let bytes = std::fs::read(&path).unwrap();
    for i in 0..16usize {
        assert_eq!(&bytes[i * BLOCK..(i + 1) * BLOCK], &pattern(i as u64 + 100, BLOCK)[..], "block {i}");
    }
    target.shutdown();
}

//! Per-LUN operations of the target core, driven through the in-process
//! initiator: pausing one LUN (`stop_device` / `cont_device`, and the
//! `stop`/`enospc` error policy, which pauses only the LUN that failed), and
//! resizing a LUN (CAPACITY DATA HAS CHANGED on every I_T nexus).

mod common;

use std::time::Duration;

use common::*;
use lunar_aio::RunState;
use lunar_block::{Backend, ErrorKind};
use lunar_core::{wait, ErrorPolicies, ErrorPolicy, Event, RequestState, Response, Target, TargetError};
use lunar_loopback::{cdb, Initiator, ResponseExt};
use lunar_scsi::{ResizeError, SenseKey};
use tokio::sync::{broadcast, oneshot};

type Pending = Vec<oneshot::Receiver<Response>>;

fn writes(ini: &Initiator, lun: u64, from: u64, n: u64) -> Pending {
    (from..from + n).map(|i| ini.submit(lun, &cdb::write16(i, 1, false), pattern(i, BLOCK))).collect()
}

/// Waits (bounded) for every response.
fn all(pending: Pending, what: &str) -> Vec<Response> {
    pending
        .into_iter()
        .map(|p| {
            wait(async { tokio::time::timeout(Duration::from_secs(30), p).await })
                .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
                .unwrap_or_else(|_| panic!("{what}: request lost"))
        })
        .collect()
}

/// Whether none of the responses has arrived (they are held).
fn none_done(pending: &mut Pending) -> bool {
    pending.iter_mut().all(|p| matches!(p.try_recv(), Err(oneshot::error::TryRecvError::Empty)))
}

/// The next event matching `f` (bounded).
fn next_event(rx: &mut broadcast::Receiver<Event>, f: impl Fn(&Event) -> bool) -> Event {
    for _ in 0..100 {
        match wait(async { tokio::time::timeout(Duration::from_secs(10), rx.recv()).await }) {
            Ok(Ok(e)) if f(&e) => return e,
            Ok(Ok(_)) => continue,
            other => panic!("no such event: {other:?}"),
        }
    }
    panic!("no such event in 100");
}

/// The states of the requests of a device, through an async iteration.
fn states(target: &std::sync::Arc<Target>, lun: u64) -> Vec<RequestState> {
    let dev = target.device(lun).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    wait(target.for_each_request_async(&dev, move |r| {
        s.lock().unwrap().push(r.state());
        lunar_core::Action::Keep
    }))
    .unwrap();
    let v = seen.lock().unwrap().clone();
    v
}

#[test]
fn a_stopped_lun_holds_its_commands_while_other_luns_run() {
    let target = Target::new("t", 2).unwrap();
    let (backend, fault) = faulty(1 << 20);
    add(&target, 0, backend, ErrorPolicies::default());
    add(&target, 1, Backend::mem(1 << 20), ErrorPolicies::default());
    let mut events = target.events();
    let ini = wait(Initiator::connect(&target, &[0, 1], 1)).unwrap();

    // Writes executing when the stop comes: the stop returns once they drained.
    fault.set_delay(Duration::from_millis(500));
    let mut executing = writes(&ini, 0, 0, 8);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while states(&target, 0) != vec![RequestState::Executing; 8] {
        assert!(std::time::Instant::now() < deadline, "the writes did not start");
        std::thread::sleep(Duration::from_millis(5));
    }
    wait(target.stop_device(0)).unwrap();
    assert_eq!(next_event(&mut events, |e| matches!(e, Event::DevicePaused { .. })), Event::DevicePaused { lun: 0 });
    assert!(
        executing.iter_mut().all(|p| p.try_recv().is_ok_and(|r| r.is_good())),
        "stop_device returned with I/O of the LUN in flight"
    );
    fault.set_delay(Duration::ZERO);
    let paused = target.device(0).unwrap().paused().expect("LUN 0 paused");
    assert!(paused.operator && paused.io_error.is_none());
    assert_eq!(target.run_state(), RunState::Running, "only the LUN stops");

    // New commands of LUN 0 are accepted and held; LUN 1 runs.
    let mut held = writes(&ini, 0, 100, 4);
    held.push(ini.submit(0, &cdb::test_unit_ready(), vec![]));
    let other = all(writes(&ini, 1, 0, 16), "LUN 1 writes");
    assert!(other.iter().all(|r| r.is_good()));
    assert!(none_done(&mut held), "a command of the paused LUN completed");
    let st = states(&target, 0);
    assert_eq!(st.len(), 5, "held commands are in the list: {st:?}");
    assert!(st.iter().all(|s| *s == RequestState::Enqueued), "started while paused: {st:?}");

    // A second stop is harmless; cont starts the held commands.
    wait(target.stop_device(0)).unwrap();
    wait(target.cont_device(0)).unwrap();
    assert_eq!(next_event(&mut events, |e| matches!(e, Event::DeviceResumed { .. })), Event::DeviceResumed { lun: 0 });
    assert!(all(held, "held commands after cont").iter().all(|r| r.is_good()));
    assert!(target.device(0).unwrap().paused().is_none());
    for i in 100..104 {
        let r = wait(ini.command(0, &cdb::read16(i, 1), vec![])).unwrap();
        assert_eq!(r.data, pattern(i, BLOCK), "block {i}");
    }
    assert!(matches!(wait(target.stop_device(9)), Err(TargetError::NoSuchLun(9))));
    assert!(matches!(wait(target.cont_device(9)), Err(TargetError::NoSuchLun(9))));
    target.shutdown();
}

#[test]
fn an_io_error_pauses_only_its_lun_and_cont_reissues_parked_requests() {
    let target = Target::new("t", 2).unwrap();
    let (backend, fault) = faulty(1 << 20);
    add(&target, 0, backend, ErrorPolicies { read: ErrorPolicy::Report, write: ErrorPolicy::Enospc });
    add(&target, 1, Backend::mem(1 << 20), ErrorPolicies::default());
    let mut events = target.events();
    let ini = wait(Initiator::connect(&target, &[0, 1], 2)).unwrap();

    for round in 0..2u64 {
        let base = round * 100;
        fault.fail_writes(libc::ENOSPC);
        let mut parked = writes(&ini, 0, base, 8);
        let e = next_event(&mut events, |e| matches!(e, Event::PausedOnIoError { .. }));
        assert!(matches!(
            e,
            Event::PausedOnIoError { lun: 0, errno: libc::ENOSPC, kind: ErrorKind::NoSpace, write: true }
        ));
        let p = target.device(0).unwrap().paused().expect("LUN 0 paused on the error");
        let io = p.io_error.expect("paused by an I/O error");
        assert!(!p.operator && io.errno == libc::ENOSPC && io.write);
        assert_eq!(target.run_state(), RunState::Running, "the error paused the whole target");
        // The other LUN goes on; nobody on LUN 0 is told an error.
        assert!(all(writes(&ini, 1, base, 8), "LUN 1").iter().all(|r| r.is_good()));
        assert!(none_done(&mut parked), "a parked request completed before cont");
        let mut later = writes(&ini, 0, base + 50, 2);
        assert!(none_done(&mut later));
        // Space again; resume the LUN (round 0) or the whole target (round 1).
        fault.fail_writes(0);
        if round == 0 {
            wait(target.cont_device(0)).unwrap();
        } else {
            wait(target.cont()).unwrap();
        }
        assert_eq!(
            next_event(&mut events, |e| matches!(e, Event::DeviceResumed { .. })),
            Event::DeviceResumed { lun: 0 }
        );
        parked.extend(later);
        let done = all(parked, "re-issued writes");
        assert!(done.iter().all(|r| r.is_good()), "{done:?}");
        for i in (base..base + 8).chain(base + 50..base + 52) {
            let r = wait(ini.command(0, &cdb::read16(i, 1), vec![])).unwrap();
            assert_eq!(r.data, pattern(i, BLOCK), "block {i}");
        }
        assert!(target.device(0).unwrap().paused().is_none());
    }
    target.shutdown();
}

#[test]
fn an_operator_pause_outlives_a_target_stop_and_cont() {
    let target = Target::new("t", 1).unwrap();
    add(&target, 0, Backend::mem(1 << 20), ErrorPolicies::default());
    let ini = wait(Initiator::connect(&target, &[0], 1)).unwrap();
    wait(target.stop_device(0)).unwrap();
    wait(target.stop()).unwrap();
    let mut held = writes(&ini, 0, 0, 2);
    wait(target.cont()).unwrap();
    // (A mem write completes inside its start: had cont started it, it would be done.)
    assert!(none_done(&mut held), "a command of an operator-paused LUN ran after the target's cont");
    assert!(target.device(0).unwrap().paused().is_some_and(|p| p.operator));
    // Resuming the LUN while the target is stopped starts nothing until the target's cont.
    wait(target.stop()).unwrap();
    wait(target.cont_device(0)).unwrap();
    assert!(none_done(&mut held));
    wait(target.cont()).unwrap();
    assert!(all(held, "held write").iter().all(|r| r.is_good()));
    target.shutdown();
}

#[test]
fn resize_raises_capacity_data_has_changed_on_every_nexus() {
    let target = Target::new("t", 2).unwrap();
    add(&target, 0, Backend::mem(1 << 20), ErrorPolicies::default());
    add(&target, 1, Backend::mem(1 << 20), ErrorPolicies::default());
    let mut events = target.events();
    let a = wait(Initiator::connect(&target, &[0, 1], 1)).unwrap();
    let b = wait(Initiator::connect(&target, &[0], 2)).unwrap();
    let capacity = |ini: &Initiator| {
        let r = wait(ini.command(0, &cdb::read_capacity16(), vec![])).unwrap();
        assert!(r.is_good(), "{r:?}");
        u64::from_be_bytes(r.data[..8].try_into().unwrap()) + 1
    };
    a.command_blocking(0, &cdb::write16(2047, 1, false), pattern(7, BLOCK)).unwrap();

    // Refused sizes: a clear error, nothing changes, no unit attention.
    assert!(matches!(wait(target.resize_device(0, 0)), Err(TargetError::Resize(ResizeError::Zero))));
    assert!(matches!(
        wait(target.resize_device(0, 1000)),
        Err(TargetError::Resize(ResizeError::NotBlockMultiple { size: 1000, block_size: 512 }))
    ));
    assert!(matches!(wait(target.resize_device(7, 1 << 20)), Err(TargetError::NoSuchLun(7))));
    assert!(wait(a.command(0, &cdb::test_unit_ready(), vec![])).unwrap().is_good());

    // Grow, with writes executing on both nexuses: none is lost.
    let mut pending = writes(&a, 0, 0, 16);
    pending.extend(writes(&b, 0, 16, 16));
    assert_eq!(wait(target.resize_device(0, 4 << 20)).unwrap(), 8192);
    assert_eq!(
        next_event(&mut events, |e| matches!(e, Event::DeviceResized { .. })),
        Event::DeviceResized { lun: 0, blocks: 8192, block_size: 512 }
    );
    let done = all(pending, "writes across the resize");
    // Each I_T nexus of the LUN gets the unit attention exactly once (a
    // write held by the resize may be the one to get it); LUN 1 gets none.
    for (ini, writes) in [(&a, &done[..16]), (&b, &done[16..])] {
        let mut uas = 0;
        for r in writes {
            assert!(r.is_good() || r.is_sense(SenseKey::UnitAttention, 0x2A, 0x09), "{r:?}");
            uas += usize::from(!r.is_good());
        }
        let r = wait(ini.command(0, &cdb::test_unit_ready(), vec![])).unwrap();
        uas += usize::from(r.is_sense(SenseKey::UnitAttention, 0x2A, 0x09));
        assert!(r.is_good() || uas == 1, "{r:?}");
        assert_eq!(uas, 1, "CAPACITY DATA HAS CHANGED once per nexus");
        assert!(wait(ini.command(0, &cdb::test_unit_ready(), vec![])).unwrap().is_good());
    }
    assert!(wait(a.command(1, &cdb::test_unit_ready(), vec![])).unwrap().is_good());
    assert_eq!((capacity(&a), capacity(&b)), (8192, 8192));
    assert_eq!(wait(a.command(0, &cdb::read16(2047, 1), vec![])).unwrap().data, pattern(7, BLOCK));
    assert!(wait(a.command(0, &cdb::write16(8191, 1, false), pattern(8, BLOCK))).unwrap().is_good());

    // Shrink: past the new end is LBA OUT OF RANGE.
    assert_eq!(wait(target.resize_device(0, 512 << 10)).unwrap(), 1024);
    let r = wait(a.command(0, &cdb::test_unit_ready(), vec![])).unwrap();
    assert!(r.is_sense(SenseKey::UnitAttention, 0x2A, 0x09), "{r:?}");
    let r = wait(a.command(0, &cdb::read16(1024, 1), vec![])).unwrap();
    assert!(r.is_sense(SenseKey::IllegalRequest, 0x21, 0x00), "{r:?}");
    assert_eq!(capacity(&a), 1024);
    target.shutdown();
}

#[test]
fn resize_of_a_paused_lun_keeps_it_paused() {
    let target = Target::new("t", 1).unwrap();
    add(&target, 0, Backend::mem(1 << 20), ErrorPolicies::default());
    let ini = wait(Initiator::connect(&target, &[0], 1)).unwrap();
    wait(target.stop_device(0)).unwrap();
    let mut held = vec![ini.submit(0, &cdb::test_unit_ready(), vec![])];
    assert_eq!(wait(target.resize_device(0, 2 << 20)).unwrap(), 4096);
    assert!(none_done(&mut held), "the resize resumed an operator-paused LUN");
    wait(target.cont_device(0)).unwrap();
    let r = all(held, "held TEST UNIT READY");
    assert!(r[0].is_sense(SenseKey::UnitAttention, 0x2A, 0x09), "{r:?}");
    target.shutdown();
}

/// A LUN moved to an I/O thread keeps its queues there: a queue opened for
/// it afterwards, by a front-end on another thread, goes to that thread
/// (so `iothread = N` in lunard's configuration places every later
/// connection's queue).
#[test]
fn a_moved_lun_gets_its_later_queues_on_its_thread() {
    let target = Target::new("pin", 2).unwrap();
    add(&target, 0, Backend::mem(1 << 20), ErrorPolicies::default());
    add(&target, 1, Backend::mem(1 << 20), ErrorPolicies::default());
    assert_eq!(target.device(0).unwrap().pinned_thread(), None);
    wait(target.move_device(0, 2)).unwrap();
    assert_eq!(target.device(0).unwrap().pinned_thread(), Some(2));
    let moved = wait(target.open_queue_for(0, 1, None)).unwrap();
    let other = wait(target.open_queue_for(1, 1, None)).unwrap();
    assert_eq!((moved.io_thread(), other.io_thread()), (2, 1));
    // And it serves there.
    let ini = wait(Initiator::connect(&target, &[0], 1)).unwrap();
    let r = ini.command_blocking(0, &cdb::write16(0, 1, false), pattern(0, BLOCK)).unwrap();
    assert!(r.is_good());
    assert_eq!(target.device(0).unwrap().queues().iter().map(|q| q.io_thread()).collect::<Vec<_>>(), vec![2, 2]);
}

/// Storage gone for this process (ESHUTDOWN: an RBD client blocklisted):
/// whatever the error policy, the failed write is reported, the LUN goes
/// offline once with an event, the medium is refused at once while it is
/// (TEST UNIT READY included) and what the LUN knows of itself is still
/// answered; other LUNs go on; a reopen brings it back.
#[test]
fn storage_gone_takes_the_lun_offline_until_it_is_reopened() {
    let target = Target::new("t", 2).unwrap();
    let (backend, fault) = faulty(1 << 20);
    add(&target, 0, backend, ErrorPolicies { read: ErrorPolicy::Stop, write: ErrorPolicy::Stop });
    add(&target, 1, Backend::mem(1 << 20), ErrorPolicies::default());
    let mut events = target.events();
    let ini = wait(Initiator::connect(&target, &[0, 1], 2)).unwrap();
    let not_ready = |r: &Response| r.is_sense(SenseKey::NotReady, 0x04, 0x03);

    fault.fail_writes(libc::ESHUTDOWN);
    let failed = all(writes(&ini, 0, 0, 4), "writes to storage gone");
    assert!(failed.iter().all(not_ready), "reported, not parked: {failed:?}");
    let e = next_event(&mut events, |e| matches!(e, Event::DeviceOffline { .. }));
    assert_eq!(e, Event::DeviceOffline { lun: 0, errno: libc::ESHUTDOWN });
    assert_eq!(target.device(0).unwrap().offline(), Some(libc::ESHUTDOWN));
    assert!(target.device(0).unwrap().paused().is_none(), "offline is not a pause");
    // Refused before the backend: reads would succeed there.
    fault.fail_writes(0);
    assert!(not_ready(&wait(ini.command(0, &cdb::test_unit_ready(), vec![])).unwrap()));
    assert!(not_ready(&wait(ini.command(0, &cdb::read16(0, 1), vec![])).unwrap()));
    assert!(wait(ini.command(0, &cdb::inquiry(false, 0, 96), vec![])).unwrap().is_good());
    assert!(all(writes(&ini, 1, 0, 4), "LUN 1").iter().all(|r| r.is_good()));
    // Once per outage.
    assert!(events.try_recv().map_or(true, |e| !matches!(e, Event::DeviceOffline { .. })));

    wait(target.reopen_device(0)).unwrap();
    assert_eq!(next_event(&mut events, |e| matches!(e, Event::DeviceOnline { .. })), Event::DeviceOnline { lun: 0 });
    assert_eq!(target.device(0).unwrap().offline(), None);
    assert!(all(writes(&ini, 0, 0, 4), "writes after the reopen").iter().all(|r| r.is_good()));
    assert!(matches!(wait(target.reopen_device(9)), Err(TargetError::NoSuchLun(9))));
    target.shutdown();
}

//! SANITIZE through the target core: the sanitize operation runs detached
//! from its command (SBC-4 4.11). An ABORT TASK of the SANITIZE or a
//! LOGICAL UNIT RESET completes the command at once while the operation
//! goes on; the unit reports NOT READY, SANITIZE IN PROGRESS (with the
//! progress indication) until the operation ends; IMMED=1 completes the
//! command as soon as the operation has begun; a target stop waits for the
//! step in progress and holds the operation until `cont`; removing the LUN
//! ends it.
//!
//! The backend holds its writes (`FaultBackend::hold_writes`) so that the
//! operation is still running at each check, whatever the machine's speed.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use lunar_block::FaultBackend;
use lunar_core::{wait, ErrorPolicies, Response, Target};
use lunar_loopback::{cdb, Initiator, ResponseExt};
use lunar_scsi::{DiskConfig, SenseKey, Status};
use tokio::sync::oneshot;

/// 4 MiB: four write steps of the operation, then a flush.
const SIZE: u64 = 4 << 20;

/// A target with one LUN (fully provisioned, so that OVERWRITE writes) on a
/// backend whose writes can be held, and an initiator on it.
fn setup() -> (Arc<Target>, Arc<FaultBackend>, Initiator) {
    let target = Target::new("sanitize", 2).unwrap();
    let (backend, fault) = faulty(SIZE);
    let config = DiskConfig { thin: false, ..disk(1) };
    wait(target.add_device(0, config, backend, ErrorPolicies::default())).unwrap();
    let ini = wait(Initiator::connect(&target, &[0], 1)).unwrap();
    // The power-on unit attention first.
    for _ in 0..4 {
        if tur(&ini).is_good() {
            break;
        }
    }
    (target, fault, ini)
}

/// SANITIZE OVERWRITE, one pass of a block of `byte`.
fn sanitize(ini: &Initiator, immed: bool, byte: u8) -> oneshot::Receiver<Response> {
    let mut list = vec![0x01, 0, 0x02, 0x00];
    list.extend_from_slice(&[byte; BLOCK]);
    let len = (list.len() as u16).to_be_bytes();
    let c = [0x48, 0x01 | if immed { 0x80 } else { 0 }, 0, 0, 0, 0, 0, len[0], len[1], 0];
    ini.submit(0, &c, list)
}

fn tur(ini: &Initiator) -> Response {
    ini.command_blocking(0, &cdb::test_unit_ready(), Vec::new()).unwrap()
}

fn in_progress(r: &Response) -> bool {
    r.is_sense(SenseKey::NotReady, 0x04, 0x1B)
}

fn get<T>(rx: oneshot::Receiver<T>, what: &str) -> T {
    wait(async { tokio::time::timeout(Duration::from_secs(30), rx).await })
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap_or_else(|_| panic!("{what}: request lost"))
}

/// Polls TEST UNIT READY until `f` holds (bounded).
fn tur_until(ini: &Initiator, what: &str, f: impl Fn(&Response) -> bool) -> Response {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = tur(ini);
        if f(&r) {
            return r;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}; last: {r:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Whether every block reads as `byte`.
fn reads_as(ini: &Initiator, byte: u8) -> bool {
    let blocks = (SIZE / BLOCK as u64) as u32;
    let step = 2048;
    (0..blocks).step_by(step as usize).all(|lba| {
        let r = ini.command_blocking(0, &cdb::read16(u64::from(lba), step), Vec::new()).unwrap();
        r.is_good() && r.data.iter().all(|&b| b == byte)
    })
}

#[test]
fn a_sanitize_goes_on_across_abort_task_and_lun_reset() {
    let (target, fault, ini) = setup();
    fault.hold_writes(true);
    let command = sanitize(&ini, false, 0xA5);
    tur_until(&ini, "the sanitize to begin", in_progress);

    // ABORT TASK of the SANITIZE: the command completes aborted, at once
    // (the operation's writes are still held), and the operation goes on.
    ini.queue(0).unwrap().cancel_where(|r| r.cdb[0] == 0x48);
    let r = get(command, "the aborted SANITIZE");
    assert_eq!(r.status, Status::TaskAborted);
    assert!(in_progress(&tur(&ini)), "the operation outlives its command");

    // LOGICAL UNIT RESET: returns while the operation runs, which goes on.
    let (done_tx, done_rx) = oneshot::channel();
    let t = target.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(wait(t.reset_device(0)));
    });
    get(done_rx, "the LU reset").unwrap();
    let ua = tur(&ini);
    assert!(ua.is_sense(SenseKey::UnitAttention, 0x29, 0x03), "BUS DEVICE RESET first: {ua:?}");
    let r = tur(&ini);
    assert!(in_progress(&r), "still sanitizing after the reset: {r:?}");
    assert_eq!(r.sense_data().unwrap().progress, Some(0), "progress indication (nothing written yet)");
    let read = ini.command_blocking(0, &cdb::read16(0, 1), Vec::new()).unwrap();
    assert!(in_progress(&read), "medium access refused: {read:?}");
    assert!(ini.command_blocking(0, &cdb::inquiry(false, 0, 96), Vec::new()).unwrap().is_good());
    assert_eq!(target.device(0).unwrap().background_operations(), 1);

    // Let the writes through: it completes, successfully.
    fault.hold_writes(false);
    tur_until(&ini, "the sanitize to end", |r| r.is_good());
    assert!(reads_as(&ini, 0xA5), "the pattern is everywhere");
    assert_eq!(target.device(0).unwrap().background_operations(), 0);
    assert!(fault.writes() >= 5, "four steps and a flush: {}", fault.writes());
    target.shutdown();
}

#[test]
fn progress_is_reported_while_the_operation_advances() {
    let (target, fault, ini) = setup();
    fault.set_delay(Duration::from_millis(20));
    let command = sanitize(&ini, false, 0x3C);
    let mut seen = Vec::new();
    loop {
        let r = tur(&ini);
        if r.is_good() {
            break;
        }
        assert!(in_progress(&r), "{r:?}");
        let p = r.sense_data().unwrap().progress.expect("a progress indication");
        if seen.last() != Some(&p) {
            seen.push(p);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress only grows: {seen:?}");
    assert!(seen.len() >= 2, "several values seen: {seen:?}");
    assert!(get(command, "the SANITIZE").is_good());
    target.shutdown();
}

#[test]
fn immed_completes_the_command_once_the_operation_has_begun() {
    let (target, fault, ini) = setup();
    fault.hold_writes(true);
    let r = get(sanitize(&ini, true, 0x11), "SANITIZE with IMMED");
    assert!(r.is_good(), "{r:?}");
    assert!(in_progress(&tur(&ini)), "the operation runs after the command completed");
    fault.hold_writes(false);
    tur_until(&ini, "the sanitize to end", |r| r.is_good());
    assert!(reads_as(&ini, 0x11));
    target.shutdown();
}

#[test]
fn a_target_stop_holds_the_operation_until_cont() {
    let (target, fault, ini) = setup();
    fault.hold_writes(true);
    let mut command = sanitize(&ini, false, 0x77);
    tur_until(&ini, "the sanitize to begin", in_progress);

    // The stop waits for the step in progress (a held write)...
    let (stopped_tx, mut stopped_rx) = oneshot::channel();
    let t = target.clone();
    std::thread::spawn(move || {
        let _ = stopped_tx.send(wait(t.stop()));
    });
    std::thread::sleep(Duration::from_millis(100));
    assert!(stopped_rx.try_recv().is_err(), "stopped with a step of the operation in progress");
    fault.hold_writes(false);
    get(stopped_rx, "the stop").unwrap();
    // ...and no step runs while the target is stopped.
    let writes = fault.writes();
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(fault.writes(), writes, "backend I/O while stopped");
    assert!(command.try_recv().is_err(), "the SANITIZE waits for its operation");
    assert_eq!(wait(target.in_flight(&target.device(0).unwrap())), 1, "the waiting SANITIZE is in the list");

    wait(target.cont()).unwrap();
    assert!(get(command, "the SANITIZE").is_good());
    assert!(reads_as(&ini, 0x77));
    target.shutdown();
}

#[test]
fn removing_the_lun_ends_the_operation_and_frees_the_device() {
    let (target, fault, ini) = setup();
    let freed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let f = freed.clone();
    target.device(0).unwrap().set_drop_hook(move || f.store(true, std::sync::atomic::Ordering::SeqCst));
    fault.hold_writes(true);
    let command = sanitize(&ini, false, 0x42);
    tur_until(&ini, "the sanitize to begin", in_progress);

    let (removed_tx, removed_rx) = oneshot::channel();
    let t = target.clone();
    std::thread::spawn(move || {
        let _ = removed_tx.send(wait(t.remove_device(0)));
    });
    // The SANITIZE is aborted by the removal at once; the removal returns
    // once the operation's step in progress ended.
    assert_eq!(get(command, "the SANITIZE").status, Status::TaskAborted);
    std::thread::sleep(Duration::from_millis(50));
    fault.hold_writes(false);
    get(removed_rx, "the removal").unwrap();
    drop(ini);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !freed.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "device not freed");
        std::thread::sleep(Duration::from_millis(5));
    }
    target.shutdown();
}

//! What Linux's iSCSI initiator relies on, through the real `lunard`:
//! TargetAlias at login (`--target-alias`, `alias` in the file), task
//! management under a slow backend (`fault=on` and `lunarctl lun fault`),
//! answered and counted in `status`, the metrics and the log; session
//! reinstatement (a login with the ISID of a live session, what open-iscsi
//! does after a connection failure at ErrorRecoveryLevel 0).

use std::time::{Duration, Instant};

use lunar_initiator::{Config, Session, TaskMgmtFunction as F, TmfResponseCode as R};
use serde_json::{json, Value};

mod common;
use common::{Daemon, IQN};

fn login(d: &Daemon) -> Session {
    let config = Config { timeout: Duration::from_secs(20), ..Config::new(IQN) };
    Session::login(d.addr(), &config).unwrap_or_else(|e| panic!("login: {e}\n{}", d.log_tail()))
}

#[test]
fn target_alias_is_sent_at_login() {
    let d = Daemon::start(&["--target", IQN, "--target-alias", "Lunar test disks, rack 4"]);
    assert_eq!(login(&d).params().target_alias.as_deref(), Some("Lunar test disks, rack 4"));
    // And in the running configuration.
    let toml = d.call("config.show", json!({})).unwrap()["toml"].as_str().unwrap_or_default().to_string();
    assert!(toml.contains("alias = \"Lunar test disks, rack 4\""), "{toml}");
    // None by default: the key is not sent.
    let d = Daemon::start(&[]);
    assert_eq!(login(&d).params().target_alias, None);
}

fn tmf_counts(d: &Daemon) -> Value {
    d.call("status", json!({})).unwrap()["task_management"].clone()
}

#[test]
fn task_management_under_a_slow_backend_is_answered_and_counted() {
    let d = Daemon::start(&["--lun", "backend=mem,size=4M,fault=on", "--lun", "backend=mem,size=4M"]);
    let s = login(&d);
    let bs = s.block_size(0) as usize;
    // A LUN without fault=on cannot be slowed down.
    let e = d.call("lun.fault", json!({ "lun": 1, "delay_ms": 10 })).unwrap_err().to_string();
    assert!(e.contains("fault=on"), "{e}");
    let r = d.call("lun.fault", json!({ "lun": 0, "delay_ms": 1500 })).unwrap();
    assert_eq!(r["fault"]["delay_ms"], 1500);
    let st = d.call("status", json!({})).unwrap();
    assert_eq!(st["targets"][0]["luns"][0]["fault"]["delay_ms"], 1500);
    assert_eq!(st["targets"][0]["luns"][1]["fault"], Value::Null);

    // ABORT TASK of a write held in the slow backend: answered FUNCTION
    // COMPLETE once the write's backend operation has ended (never before:
    // SAM-5), and the write gets no status.
    let t0 = Instant::now();
    let tag = s.submit_write(0, 8, vec![0xa5; bs * 8], false).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.task_management(F::AbortTask, 0, Some(tag)).unwrap(), R::FunctionComplete);
    assert!(t0.elapsed() >= Duration::from_millis(1400), "answered after {:?}", t0.elapsed());
    assert_eq!(s.wait_timeout(tag, Duration::from_millis(300)).unwrap(), None, "an aborted task has no status");
    // A tag the target does not hold (completed, or never sent).
    assert_eq!(s.task_management(F::AbortTask, 0, Some(lunar_initiator::Tag(0x7777))).unwrap(), R::TaskDoesNotExist);
    // LU reset with a command in the slow backend, then target reset.
    let tag2 = s.submit_write(0, 16, vec![0x5a; bs * 8], false).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let t1 = Instant::now();
    assert_eq!(s.task_management(F::LogicalUnitReset, 0, None).unwrap(), R::FunctionComplete);
    assert!(t1.elapsed() >= Duration::from_millis(1000), "LU reset answered after {:?}", t1.elapsed());
    assert_eq!(s.wait_timeout(tag2, Duration::from_millis(300)).unwrap(), None);
    assert_eq!(s.task_management(F::LogicalUnitReset, 9, None).unwrap(), R::LunDoesNotExist);
    assert_eq!(s.task_management(F::TargetWarmReset, 0, None).unwrap(), R::FunctionComplete);

    let c = tmf_counts(&d);
    assert_eq!(c["received"]["abort_task"], 2, "{c}");
    assert_eq!(c["received"]["lu_reset"], 2, "{c}");
    assert_eq!(c["received"]["target_warm_reset"], 1, "{c}");
    assert_eq!(c["answered"]["function_complete"], 3, "{c}");
    assert_eq!(c["answered"]["task_does_not_exist"], 1, "{c}");
    assert_eq!(c["answered"]["lun_does_not_exist"], 1, "{c}");
    let out = d.ctl_ok(&["status"]);
    assert!(out.contains("task management received: abort_task 2, lu_reset 2, target_warm_reset 1"), "{out}");
    let log = std::fs::read_to_string(&d.log).unwrap();
    let requests = log.lines().filter(|l| l.contains("task management request")).count();
    let responses = log.lines().filter(|l| l.contains("task management response")).count();
    assert_eq!((requests, responses), (5, 5), "{log}");

    // Without the delay the LUN serves as before (after the reset's unit attention).
    let out = d.ctl_ok(&["lun", "fault", "0", "--delay-ms", "0"]);
    assert!(out.contains("delay 0 ms"), "{out}");
    let data: Vec<u8> = (0..bs * 8).map(|i| (i % 251) as u8).collect();
    let w = s.execute_retrying_ua(&s.write_command(0, 32, data.clone(), false).unwrap(), 3).unwrap();
    assert!(w.response.is_good(), "{:?}", w.response);
    let r = s.execute_retrying_ua(&s.read_command(0, 32, 8), 3).unwrap();
    assert_eq!(r.response.data, data);
}

#[test]
fn a_login_with_the_isid_of_a_live_session_reinstates_it() {
    let d = Daemon::start(&["--lun", "backend=mem,size=4M,fault=on"]);
    let old = login(&d);
    let bs = old.block_size(0) as usize;
    let written: Vec<u8> = (0..bs * 8).map(|i| (i % 253) as u8).collect();
    assert!(old.write(0, 0, written.clone()).unwrap().is_good());
    // A write held in the slow backend when the new login arrives.
    d.call("lun.fault", json!({ "lun": 0, "delay_ms": 1000 })).unwrap();
    let held = old.submit_write(0, 64, vec![7; bs * 8], false).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let sessions = |d: &Daemon| d.call("session.list", json!({})).unwrap();
    let before = sessions(&d);
    let old_tsih = old.tsih();
    assert_eq!(before.as_array().map(Vec::len), Some(1), "{before}");

    let t0 = Instant::now();
    let config = Config { timeout: Duration::from_secs(20), isid: Some(old.isid()), ..Config::new(IQN) };
    let new = Session::login(d.addr(), &config).unwrap_or_else(|e| panic!("reinstatement: {e}\n{}", d.log_tail()));
    // The old session was ended first: its connection is closed and its
    // held write fails there (the initiator retries it on the new session).
    assert_ne!(new.tsih(), old_tsih);
    assert!(old.wait_timeout(held, Duration::from_secs(5)).is_err(), "the old session's write was not ended");
    assert!(old.closed().is_some());
    let after = sessions(&d);
    let list = after.as_array().cloned().unwrap_or_default();
    assert_eq!(list.len(), 1, "{after}");
    assert_eq!(list[0]["tsih"], new.tsih(), "{after}");
    assert!(t0.elapsed() < Duration::from_secs(10), "reinstatement took {:?}", t0.elapsed());
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("session reinstatement: closing the old session"), "{log}");

    // The new session works, and sees what the old one wrote.
    d.call("lun.fault", json!({ "lun": 0, "delay_ms": 0 })).unwrap();
    let r = new.execute_retrying_ua(&new.read_command(0, 0, 8), 3).unwrap();
    assert!(r.response.is_good(), "{:?}", r.response);
    assert_eq!(r.response.data, written);
}

#[test]
fn a_tmf_whose_connection_ends_first_is_logged_not_answered() {
    let d = Daemon::start(&["--lun", "backend=mem,size=4M,fault=on"]);
    // An initiator that gives up on a TMF after 1 s, as Linux does after
    // its abort timeout, and drops the connection.
    let config = Config { timeout: Duration::from_secs(1), ..Config::new(IQN) };
    let s = Session::login(d.addr(), &config).unwrap();
    let bs = s.block_size(0) as usize;
    d.call("lun.fault", json!({ "lun": 0, "delay_ms": 60_000 })).unwrap();
    let tag = s.submit_write(0, 0, vec![1; bs * 8], false).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let e = s.task_management(F::AbortTask, 0, Some(tag)).unwrap_err();
    assert!(e.is_timeout(), "{e}");
    drop(s);
    d.call("lun.fault", json!({ "lun": 0, "delay_ms": 0 })).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(&d.log).unwrap();
        if log.contains("task management not answered: the connection ended first") {
            assert!(!log.contains("task management response"), "{log}");
            break;
        }
        assert!(Instant::now() < deadline, "no log line:\n{log}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let c = tmf_counts(&d);
    assert_eq!((c["received"]["abort_task"].as_u64(), c["answered"]["function_complete"].as_u64()), (Some(1), Some(0)));
    // The LUN serves a new session.
    let s = login(&d);
    assert!(s.execute_retrying_ua(&s.read_command(0, 0, 8), 3).unwrap().response.is_good());
}

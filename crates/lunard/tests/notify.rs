//! The systemd notification protocol without systemd: a unix datagram
//! socket of the test's own as `$NOTIFY_SOCKET`, and `lunard` as systemd
//! starts a `Type=notify` service with `WatchdogSec=`.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

mod common;
use common::Daemon;

/// The datagrams received until `deadline` or until one starts with `until`.
fn receive(rx: &UnixDatagram, until: &str, deadline: Instant) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        rx.set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        match rx.recv(&mut buf) {
            Ok(n) => {
                let d = String::from_utf8_lossy(&buf[..n]).into_owned();
                let done = d.starts_with(until);
                got.push(d);
                if done {
                    break;
                }
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => break,
            Err(e) => panic!("recv: {e}"),
        }
    }
    got
}

#[test]
fn ready_status_watchdog_and_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    // A 400 ms watchdog: keep-alives every 200 ms.
    let d = Daemon::try_start_with_env(&[], &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "400000")])
        .unwrap();
    let first = receive(&rx, "READY=1", Instant::now() + Duration::from_secs(10));
    let ready = first.last().cloned().unwrap_or_default();
    assert!(ready.starts_with("READY=1\nSTATUS=serving 1 LUNs of 1 targets on 127.0.0.1:"), "{first:?}");
    assert!(ready.contains(&d.port.to_string()), "{ready}");
    // The control socket listens by READY=1.
    d.call("status", serde_json::json!({})).unwrap();

    let start = Instant::now();
    let beats = receive(&rx, "never", start + Duration::from_millis(1500));
    let n = beats.iter().filter(|b| *b == "WATCHDOG=1").count();
    assert!((4..=10).contains(&n), "{n} keep-alives in 1.5 s for a 400 ms watchdog: {beats:?}");
    assert_eq!(n, beats.len(), "{beats:?}");

    let status = d.stop();
    assert!(status.success(), "{status:?}");
    let last = receive(&rx, "STOPPING=1", Instant::now() + Duration::from_secs(5));
    assert!(last.iter().any(|m| m == "STOPPING=1\nSTATUS=stopping (SIGTERM)"), "{last:?}");
}

#[test]
fn no_keep_alives_for_the_watchdog_of_another_pid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    let d = Daemon::try_start_with_env(
        &[],
        &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
    )
    .unwrap();
    let got = receive(&rx, "READY=1", Instant::now() + Duration::from_secs(10));
    assert!(got.last().is_some_and(|m| m.starts_with("READY=1")), "{got:?}");
    let more = receive(&rx, "never", Instant::now() + Duration::from_millis(600));
    assert!(more.is_empty(), "keep-alives for another process's watchdog: {more:?}");
    drop(d);
}

/// The watchdog's test hook: `debug.stall` (enabled by LUNARD_TEST_HOOKS)
/// blocks the core's main loop; lunard then sends no keep-alive (systemd
/// would kill and restart it), and sends them again once it answers.
#[test]
fn a_stuck_main_loop_stops_the_keep_alives() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify");
    let rx = UnixDatagram::bind(&path).unwrap();
    let d = Daemon::try_start_with_env(
        &[],
        &[("NOTIFY_SOCKET", path.to_str().unwrap()), ("WATCHDOG_USEC", "400000"), ("LUNARD_TEST_HOOKS", "1")],
    )
    .unwrap();
    let got = receive(&rx, "READY=1", Instant::now() + Duration::from_secs(10));
    assert!(got.last().is_some_and(|m| m.starts_with("READY=1")), "{got:?}");
    let beats = receive(&rx, "never", Instant::now() + Duration::from_millis(600));
    assert!(beats.iter().any(|b| b == "WATCHDOG=1"), "no keep-alive before the stall: {beats:?}");

    d.call("debug.stall", serde_json::json!({ "ms": 2500 })).unwrap();
    // A keep-alive already on its way may arrive; then none while stuck.
    let _ = receive(&rx, "never", Instant::now() + Duration::from_millis(400));
    let stuck = receive(&rx, "never", Instant::now() + Duration::from_millis(1600));
    assert!(stuck.is_empty(), "keep-alives while the main loop is stuck: {stuck:?}");
    let log = std::fs::read_to_string(&d.log).unwrap();
    assert!(log.contains("watchdog: core thread 0 did not answer"), "{log}");

    // Unstuck: the keep-alives come back.
    let after = receive(&rx, "WATCHDOG=1", Instant::now() + Duration::from_secs(3));
    assert!(after.iter().any(|b| b == "WATCHDOG=1"), "no keep-alive after the stall: {after:?}");
    // Without the variable the hook does not exist.
    drop(d);
    let d = Daemon::start(&[]);
    let e = d.call("debug.stall", serde_json::json!({ "ms": 10 })).unwrap_err().to_string();
    assert!(e.contains("method not found"), "{e}");
}

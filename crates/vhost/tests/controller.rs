//! Controller life cycle without a guest: it listens before `start` returns,
//! survives frontends that connect and go away (reconnect), refuses bad
//! settings, and shuts down in bounded time. The guest end-to-end test is
//! `tests/vm/vhost-guest.sh`.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lunar_block::Backend;
use lunar_core::{wait, ErrorPolicies, Target};
use lunar_scsi::DiskConfig;
use lunar_vhost::{Controller, ControllerConfig, VhostError};

fn target(luns: u64) -> Arc<Target> {
    let t = Target::new("vhost-test", 2).unwrap();
    for lun in 0..luns {
        wait(t.add_device(lun, DiskConfig::default(), Backend::mem(1 << 20), ErrorPolicies::default())).unwrap();
    }
    t
}

/// A vhost-user GET_FEATURES request (request 1, flags version 1, no payload).
fn get_features(s: &mut UnixStream) -> u64 {
    let mut msg = Vec::new();
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&1u32.to_le_bytes());
    msg.extend_from_slice(&0u32.to_le_bytes());
    s.write_all(&msg).unwrap();
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(u32::from_le_bytes(reply[0..4].try_into().unwrap()), 1, "reply to GET_FEATURES");
    assert_eq!(u32::from_le_bytes(reply[8..12].try_into().unwrap()), 8, "a u64 payload");
    u64::from_le_bytes(reply[12..20].try_into().unwrap())
}

#[test]
fn listens_serves_reconnects_and_shuts_down() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vus.sock");
    let t = target(2);
    let c = Controller::start(
        t.clone(),
        ControllerConfig {
            socket: socket.clone(),
            num_queues: 3,
            luns: None,
            hotplug: true,
            poll: lunar_vhost::DEFAULT_POLL,
            limits: Default::default(),
        },
    )
    .unwrap();
    for _ in 0..3 {
        // Listening as soon as start returns; each frontend in turn.
        let mut s = UnixStream::connect(&socket).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let f = get_features(&mut s);
        for bit in [32, 28, 29, 1, 2, 30] {
            assert_ne!(f & (1 << bit), 0, "feature bit {bit} offered ({f:#x})");
        }
        drop(s);
    }
    let start = Instant::now();
    c.shutdown();
    assert!(start.elapsed() < Duration::from_secs(10), "shutdown took {:?}", start.elapsed());
    assert!(!socket.exists(), "socket removed");
    t.shutdown();
}

#[test]
fn refuses_bad_queue_counts() {
    let dir = tempfile::tempdir().unwrap();
    let t = target(1);
    for n in [0, 1023] {
        let cfg = ControllerConfig {
            socket: dir.path().join("x.sock"),
            num_queues: n,
            luns: None,
            hotplug: false,
            poll: lunar_vhost::DEFAULT_POLL,
            limits: Default::default(),
        };
        assert!(matches!(Controller::start(t.clone(), cfg), Err(VhostError::NumQueues(m)) if m == n));
    }
    t.shutdown();
}

#[test]
fn drop_while_a_frontend_is_connected_ends_in_bounded_time() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vus.sock");
    let t = target(1);
    let c = Controller::start(
        t.clone(),
        ControllerConfig {
            socket: socket.clone(),
            num_queues: 1,
            luns: Some(vec![0]),
            hotplug: false,
            poll: lunar_vhost::DEFAULT_POLL,
            limits: Default::default(),
        },
    )
    .unwrap();
    let mut s = UnixStream::connect(&socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    get_features(&mut s);
    let start = Instant::now();
    drop(c);
    assert!(start.elapsed() < Duration::from_secs(10));
    // The frontend sees the connection closed.
    let mut buf = [0u8; 1];
    assert_eq!(s.read(&mut buf).unwrap_or(0), 0);
    t.shutdown();
}

/// Polls `f` for up to 10 s.
fn eventually(what: &str, f: impl Fn() -> bool) {
    let end = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn hot_added_luns_follow_the_target() {
    let dir = tempfile::tempdir().unwrap();
    let t = target(1);
    let with = ControllerConfig {
        socket: dir.path().join("a.sock"),
        num_queues: 3,
        luns: None,
        hotplug: true,
        poll: lunar_vhost::DEFAULT_POLL,
        limits: Default::default(),
    };
    let without = ControllerConfig {
        socket: dir.path().join("b.sock"),
        num_queues: 2,
        luns: None,
        hotplug: false,
        poll: lunar_vhost::DEFAULT_POLL,
        limits: Default::default(),
    };
    let (a, b) = (Controller::start(t.clone(), with).unwrap(), Controller::start(t.clone(), without).unwrap());
    assert_eq!((a.luns(), b.luns()), (vec![0], vec![0]));
    wait(t.add_device(7, DiskConfig::default(), Backend::mem(1 << 20), ErrorPolicies::default())).unwrap();
    eventually("LUN 7 on the hot-plug controller", || a.luns() == vec![0, 7]);
    // One core queue per request virtqueue, for the controller's nexus.
    let dev = t.device(7).unwrap();
    eventually("3 queues on LUN 7", || dev.queues().len() == 3);
    wait(t.remove_device(0)).unwrap();
    eventually("LUN 0 gone from both", || a.luns() == vec![7] && b.luns().is_empty());
    assert_eq!(b.luns(), Vec::<u64>::new(), "no hot plug: LUN 7 not exposed");
    // Removed and added again: fresh queues.
    wait(t.remove_device(7)).unwrap();
    eventually("LUN 7 gone", || a.luns().is_empty());
    wait(t.add_device(7, DiskConfig::default(), Backend::mem(1 << 20), ErrorPolicies::default())).unwrap();
    eventually("LUN 7 back", || a.luns() == vec![7]);
    let dev = t.device(7).unwrap();
    eventually("3 queues on the new LUN 7", || dev.queues().len() == 3);
    assert_eq!(a.requests_served(), vec![0, 0, 0]);
    let start = Instant::now();
    a.shutdown();
    b.shutdown();
    assert!(dev.queues().is_empty(), "shutdown closed the hot-added queues");
    assert!(start.elapsed() < Duration::from_secs(10));
    t.shutdown();
}

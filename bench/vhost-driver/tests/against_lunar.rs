//! The benchmark driver against Lunar's vhost-user-scsi controller, in one
//! process: proves the driver's rings and requests are what a backend
//! expects (every request answered GOOD, on every queue), so that the
//! benchmark's figures count real work.

use std::time::Duration;

use lunar_block::Backend;
use lunar_core::{wait, ErrorPolicies, Target};
use lunar_scsi::DiskConfig;
use lunar_vhost::{Controller, ControllerConfig};
use lunar_vhost_driver::{run, Options, Workload};

#[test]
fn drives_two_queues_with_no_error() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vus.sock");
    let t = Target::new("driver-test", 2).unwrap();
    wait(t.add_device(0, DiskConfig::default(), Backend::mem(64 << 20), ErrorPolicies::default())).unwrap();
    let c = Controller::start(
        t.clone(),
        ControllerConfig {
            socket: socket.clone(),
            num_queues: 2,
            luns: None,
            hotplug: false,
            poll: lunar_vhost::DEFAULT_POLL,
            limits: Default::default(),
        },
    )
    .unwrap();
    let runs = [Workload::RandWrite, Workload::RandWrite, Workload::RandRead, Workload::SeqRead];
    for (workload, event_idx) in runs.into_iter().flat_map(|w| [(w, true), (w, false)]) {
        let opts = Options {
            socket: socket.clone(),
            queues: 2,
            queue_depth: 8,
            block_size: 8192,
            workload,
            duration: Duration::from_millis(300),
            lun: 0,
            ring_size: 128,
            event_idx,
            idle: Duration::ZERO,
        };
        let r = run(&opts).unwrap();
        println!("{workload:?} (event_idx {event_idx}): {} completed, {} errors", r.completed(), r.errors());
        assert_eq!(r.lun_blocks, (64 << 20) / 512);
        assert_eq!(r.errors(), 0, "{:?}", r.queues);
        for (i, q) in r.queues.iter().enumerate() {
            assert!(q.completed > 0, "queue {i} completed nothing");
            assert_eq!(q.bytes, q.completed * 8192);
        }
    }
    c.shutdown();
    t.shutdown();
}

//! Helpers shared by the end-to-end tests of the target core.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use lunar_block::{Backend, FaultBackend};
use lunar_core::{wait, Device, ErrorPolicies, Target};
use lunar_scsi::DiskConfig;

pub const BLOCK: usize = 512;

pub fn disk(naa: u64) -> DiskConfig {
    DiskConfig { naa_id: naa, serial: format!("LUNAR{naa:04}"), ..DiskConfig::default() }
}

/// A RAM disk behind a fault injector.
pub fn faulty(size: u64) -> (Backend, Arc<FaultBackend>) {
    let f = Arc::new(FaultBackend::new(Backend::mem(size)));
    (Backend::Fault(f.clone()), f)
}

pub fn add(target: &Arc<Target>, lun: u64, backend: Backend, policies: ErrorPolicies) -> Arc<Device> {
    wait(target.add_device(lun, disk(lun + 1), backend, policies)).expect("add device")
}

/// Fails the test instead of hanging.
pub fn recv<T>(rx: &std::sync::mpsc::Receiver<T>, what: &str) -> T {
    rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

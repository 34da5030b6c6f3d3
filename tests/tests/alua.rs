//! Asymmetric logical unit access end to end, through the target core's
//! queues (SPC-5 5.16): this process is gateway 2 of 2 (target port group 2,
//! relative target port 2), Standby at start; gateway 1 is
//! Active/Optimized. What a multipath initiator sees on this path: TPGS,
//! the designators of VPD 83h, REPORT TARGET PORT GROUPS in both formats,
//! NOT READY for medium access while Standby, SET TARGET PORT GROUPS to
//! Active/Optimized, then I/O; ASYMMETRIC ACCESS STATE CHANGED on every
//! other I_T nexus and not on the one that asked; the same for a change
//! made by the control plane (implicit), on every nexus, with its event.

mod common;

use std::sync::Arc;
use std::time::Duration;

use lunar_block::Backend;
use lunar_core::{wait, ErrorPolicies, Event, Queue, Response, Target};
use lunar_loopback::{cdb, ResponseExt};
use lunar_scsi::{AccessState, AluaConfig, DiskConfig, Nexus, Sense, SenseKey};

const STANDBY: (u8, u8) = (0x04, 0x0B);
const UNAVAILABLE: (u8, u8) = (0x04, 0x0C);
const TRANSITIONING: (u8, u8) = (0x04, 0x0A);
const STATE_CHANGED: (u8, u8) = (0x2A, 0x06);

fn nexus(name: &str) -> Option<Nexus> {
    Some(Nexus::new(format!("iqn.2025-01.test:{name},i,0x000000000001"), 2))
}

fn open(t: &Arc<Target>, lun: u64, io_thread: usize, nexus: Option<Nexus>) -> Arc<Queue> {
    wait(t.open_queue_for(lun, io_thread, nexus)).expect("open queue")
}

fn run_data(q: &Arc<Queue>, cdb: &[u8], data: Vec<u8>) -> Response {
    let (tx, rx) = std::sync::mpsc::channel();
    q.submit(lunar_core::request(1, q.device().lun(), cdb, data, move |r| {
        let _ = tx.send(r);
    }));
    rx.recv_timeout(Duration::from_secs(30)).expect("a response")
}

fn run(q: &Arc<Queue>, cdb: &[u8]) -> Response {
    run_data(q, cdb, Vec::new())
}

#[track_caller]
fn assert_sense(r: &Response, key: SenseKey, (asc, ascq): (u8, u8), what: &str) {
    assert!(r.is_sense(key, asc, ascq), "{what}: expected {key:?} {asc:02x}h/{ascq:02x}h, got {r:?}");
}

#[track_caller]
fn assert_good(r: &Response, what: &str) {
    assert!(r.is_good(), "{what}: expected GOOD, got {r:?}");
}

fn rtpg(extended: bool, alloc: u32) -> Vec<u8> {
    let mut c = vec![0xA3, if extended { 0x2A } else { 0x0A }, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[6..10].copy_from_slice(&alloc.to_be_bytes());
    c
}

fn stpg(list: &[(u8, u16)]) -> (Vec<u8>, Vec<u8>) {
    let mut data = vec![0u8; 4];
    for &(state, group) in list {
        data.extend_from_slice(&[state, 0]);
        data.extend_from_slice(&group.to_be_bytes());
    }
    let mut c = vec![0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    c[6..10].copy_from_slice(&(data.len() as u32).to_be_bytes());
    (c, data)
}

/// (group, state) of each descriptor of REPORT TARGET PORT GROUPS data.
fn states(data: &[u8], header: usize) -> Vec<(u16, u8, u8)> {
    let mut out = Vec::new();
    let mut at = header;
    while at + 8 <= data.len() {
        out.push((u16::from_be_bytes([data[at + 2], data[at + 3]]), data[at] & 0x0F, data[at + 5]));
        at += 8 + 4 * data[at + 7] as usize;
    }
    out
}

/// A target whose LUN 0 is seen through gateway 2 of 2.
fn target(name: &str) -> Arc<Target> {
    let t = Target::new(name, 2).unwrap();
    let config = DiskConfig { relative_port: 2, alua: Some(AluaConfig::gateways(2, 1).unwrap()), ..common::disk(1) };
    wait(t.add_device(0, config, Backend::mem(1 << 20), ErrorPolicies::default())).unwrap();
    t
}

#[test]
fn standby_path_reports_its_groups_refuses_io_and_set_target_port_groups_makes_it_active() {
    let t = target("alua-e2e");
    let mut events = t.events();
    // Nexus A on two I/O threads (one set of unit attentions), nexus B.
    let (a1, a2) = (open(&t, 0, 1, nexus("a")), open(&t, 0, 2, nexus("a")));
    let b = open(&t, 0, 1, nexus("b"));

    // INQUIRY: TPGS 11b (implicit and explicit).
    let r = run(&a1, &cdb::inquiry(false, 0, 96));
    assert_good(&r, "INQUIRY in standby");
    assert_eq!(r.data[5] & 0x30, 0x30, "TPGS");

    // VPD 83h: relative target port 2 and target port group 2, both of
    // association target port.
    let r = run(&a1, &cdb::inquiry(true, 0x83, 512));
    assert_good(&r, "VPD 83h in standby");
    let mut designators = Vec::new();
    let mut at = 4;
    while at + 4 <= r.data.len() {
        let len = r.data[at + 3] as usize;
        designators.push((r.data[at + 1], r.data[at + 4..at + 4 + len].to_vec()));
        at += 4 + len;
    }
    assert!(designators.contains(&(0x14, vec![0, 0, 0, 2])), "relative target port 2: {designators:?}");
    assert!(designators.contains(&(0x15, vec![0, 0, 0, 2])), "target port group 2: {designators:?}");

    // REPORT TARGET PORT GROUPS, both formats.
    let r = run(&a1, &rtpg(false, 1024));
    assert_good(&r, "RTPG in standby");
    assert_eq!(&r.data[..4], &[0, 0, 0, 24]);
    assert_eq!(states(&r.data, 4), vec![(1, 0x0, 0), (2, 0x2, 0)]);
    let r = run(&a1, &rtpg(true, 1024));
    assert_good(&r, "RTPG extended in standby");
    assert_eq!(&r.data[..8], &[0, 0, 0, 24, 0x10, 10, 0, 0], "FORMAT TYPE 1, IMPLICIT TRANSITION TIME 10 s");
    assert_eq!(states(&r.data, 8), vec![(1, 0x0, 0), (2, 0x2, 0)]);

    // Standby: no medium access, no TEST UNIT READY; READ CAPACITY is
    // answered (Linux sizes a standby path's disk with it).
    assert_sense(&run(&a1, &cdb::read10(0, 1)), SenseKey::NotReady, STANDBY, "READ in standby");
    assert_sense(&run_data(&a2, &cdb::write10(0, 1), vec![7; 512]), SenseKey::NotReady, STANDBY, "WRITE");
    assert_sense(&run(&a1, &cdb::test_unit_ready()), SenseKey::NotReady, STANDBY, "TEST UNIT READY");
    let r = run(&b, &cdb::read_capacity16());
    assert_good(&r, "READ CAPACITY(16) in standby");
    assert!(r.data.len() >= 12 && r.data[8..12] == [0, 0, 2, 0], "512-byte blocks: {:?}", r.data);
    // REQUEST SENSE says why.
    let r = run(&b, &cdb::request_sense(252));
    assert_good(&r, "REQUEST SENSE in standby");
    let s = Sense::decode(&r.data).unwrap();
    assert_eq!((s.key, s.asc, s.ascq), (SenseKey::NotReady, 0x04, 0x0B));

    // SET TARGET PORT GROUPS from nexus A: group 2 Active/Optimized, group 1 Standby.
    let (c, data) = stpg(&[(0x0, 2), (0x2, 1)]);
    assert_good(&run_data(&a1, &c, data), "STPG");
    // The I/O path sees it at once.
    assert_good(&run_data(&a2, &cdb::write10(0, 1), vec![7; 512]), "WRITE after STPG (nexus A: no unit attention)");
    let r = run(&a1, &cdb::read10(0, 1));
    assert_good(&r, "READ after STPG");
    assert_eq!(r.data, vec![7; 512]);
    let r = run(&a1, &rtpg(false, 1024));
    assert_eq!(states(&r.data, 4), vec![(1, 0x2, 0x01), (2, 0x0, 0x01)], "status 01h: altered by STPG");
    // Nexus B is told once; then READ works there too.
    assert_sense(&run(&b, &cdb::read10(0, 1)), SenseKey::UnitAttention, STATE_CHANGED, "nexus B");
    assert_good(&run(&b, &cdb::read10(0, 1)), "nexus B after the unit attention");
    match wait(async { tokio::time::timeout(Duration::from_secs(5), events.recv()).await }) {
        Ok(Ok(Event::AluaStateChanged { lun: 0, changes, local_group: 2, local_state, explicit: true })) => {
            assert_eq!(local_state, AccessState::ActiveOptimized);
            assert_eq!(
                changes,
                vec![
                    (1, AccessState::ActiveOptimized, AccessState::Standby),
                    (2, AccessState::Standby, AccessState::ActiveOptimized)
                ]
            );
        }
        other => panic!("expected the ALUA event, got {other:?}"),
    }

    // An implicit change (the control plane: the cluster's or the
    // operator's decision) reaches every nexus, the one that sent STPG too.
    assert!(wait(t.set_alua_state(0, 2, AccessState::Transitioning)).unwrap());
    assert_sense(&run(&a2, &cdb::read10(0, 1)), SenseKey::UnitAttention, STATE_CHANGED, "nexus A, implicit");
    assert_sense(&run(&a1, &cdb::read10(0, 1)), SenseKey::NotReady, TRANSITIONING, "transitioning");
    let r = run(&a1, &rtpg(false, 1024));
    assert_good(&r, "RTPG while transitioning");
    assert_eq!(states(&r.data, 4), vec![(1, 0x2, 0x01), (2, 0xF, 0x02)], "status 02h: implicit");
    let (c, data) = stpg(&[(0x0, 2)]);
    assert_sense(&run_data(&a1, &c, data), SenseKey::NotReady, TRANSITIONING, "no STPG while transitioning");
    assert!(wait(t.set_alua_state(0, 2, AccessState::Unavailable)).unwrap());
    assert_sense(&run(&b, &cdb::read10(0, 1)), SenseKey::UnitAttention, STATE_CHANGED, "nexus B, implicit");
    assert_good(&run(&b, &cdb::inquiry(true, 0x00, 64)), "INQUIRY while unavailable");
    assert_sense(&run(&b, &cdb::read10(0, 1)), SenseKey::NotReady, UNAVAILABLE, "READ while unavailable");
    // Unavailable admits SET TARGET PORT GROUPS (transitioning did not).
    let (c, data) = stpg(&[(0x1, 2)]);
    assert_good(&run_data(&b, &c, data), "STPG to Active/Non-optimized while unavailable");
    assert_good(&run(&b, &cdb::read10(0, 1)), "READ, Active/Non-optimized");
    assert_sense(&run(&a1, &cdb::read10(0, 1)), SenseKey::UnitAttention, STATE_CHANGED, "nexus A: B's STPG");
    t.shutdown();
}

#[test]
fn without_gateways_nothing_changes() {
    let t = Target::new("alua-none", 1).unwrap();
    common::add(&t, 0, Backend::mem(1 << 20), ErrorPolicies::default());
    let q = open(&t, 0, 1, nexus("a"));
    let r = run(&q, &cdb::inquiry(false, 0, 96));
    assert_eq!(r.data[5] & 0x30, 0, "TPGS 00b");
    assert_sense(&run(&q, &rtpg(false, 1024)), SenseKey::IllegalRequest, (0x24, 0), "RTPG not offered");
    assert!(matches!(wait(t.set_alua_state(0, 1, AccessState::Standby)), Err(lunar_core::TargetError::NoAlua(0))));
    t.shutdown();
}

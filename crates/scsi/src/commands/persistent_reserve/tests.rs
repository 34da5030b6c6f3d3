//! PERSISTENT RESERVE IN/OUT: every service action and type, the error
//! paths, unit attentions, and the libiscsi scenarios (two I_T nexuses).

use super::*;
use crate::sense::SenseCode;
use crate::test_util::*;
use crate::{Executed, SenseKey};

const A: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test,i,0x23d000000001";
const B: &str = "iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-test-2,i,0x23d000000002";
const C: &str = "iqn.2007-10.com.example:third,i,0x23d000000003";

fn nexus(name: &str) -> Nexus {
    Nexus::new(name, 1)
}

fn ctx(name: &str) -> ExecContext {
    ExecContext { nexus: Some(nexus(name)), ..Default::default() }
}

fn exec(d: &Disk, cdb: &[u8], data: Vec<u8>, who: &str) -> Executed {
    let cmd = Command::decode(cdb).unwrap();
    block_on(d.execute_with_effects(&cmd, data, &ctx(who)))
}

fn prout_cdb(sa: u8, pr_type: u8, len: u32) -> Vec<u8> {
    let mut c = vec![0x5F, sa, pr_type, 0, 0, 0, 0, 0, 0, 0];
    c[5..9].copy_from_slice(&len.to_be_bytes());
    c
}

fn basic(rk: u64, sark: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&rk.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[20] = flags;
    p
}

/// PERSISTENT RESERVE OUT with a basic parameter list.
fn prout(d: &Disk, who: &str, sa: PrOutAction, pr_type: u8, rk: u64, sark: u64) -> Executed {
    exec(d, &prout_cdb(sa as u8, pr_type, 24), basic(rk, sark, 0), who)
}

fn ok(e: Executed) -> Vec<SideEffect> {
    assert_eq!(e.result, Ok(vec![]));
    e.effects
}

fn prin(d: &Disk, who: &str, sa: u8, alloc: u16) -> Vec<u8> {
    let mut c = vec![0x5E, sa, 0, 0, 0, 0, 0, 0, 0, 0];
    c[7..9].copy_from_slice(&alloc.to_be_bytes());
    exec(d, &c, vec![], who).result.unwrap()
}

fn keys(d: &Disk) -> (u32, Vec<u64>) {
    let r = prin(d, A, 0, 4096);
    let gen = u32::from_be_bytes([r[0], r[1], r[2], r[3]]);
    let len = u32::from_be_bytes([r[4], r[5], r[6], r[7]]) as usize;
    assert_eq!(len, r.len() - 8);
    (gen, r[8..].chunks(8).map(|k| u64::from_be_bytes(k.try_into().unwrap())).collect())
}

/// (key, type) of READ RESERVATION, `None` when not reserved.
fn reservation(d: &Disk, who: &str) -> Option<(u64, u8)> {
    let r = prin(d, who, 1, 4096);
    match u32::from_be_bytes([r[4], r[5], r[6], r[7]]) {
        0 => None,
        16 => Some((u64::from_be_bytes(r[8..16].try_into().unwrap()), r[21])),
        n => panic!("additional length {n}"),
    }
}

fn ua(who: &str, code: SenseCode) -> SideEffect {
    SideEffect::UnitAttention { nexus: nexus(who), sense: code.sense() }
}

fn read(d: &Disk, who: &str) -> Result<Vec<u8>, ScsiError> {
    exec(d, &cdb10(0x28, 0, 1, 1), vec![], who).result
}

fn write(d: &Disk, who: &str) -> Result<Vec<u8>, ScsiError> {
    exec(d, &cdb10(0x2A, 0, 1, 1), vec![0; 512], who).result
}

use PrOutAction::*;

const CONFLICT: Result<Vec<u8>, ScsiError> = Err(ScsiError::ReservationConflict);

#[test]
fn register_and_unregister() {
    let d = disk(16);
    assert_eq!(keys(&d), (0, vec![]));
    ok(prout(&d, A, Register, 0, 0, 0x11));
    assert_eq!(keys(&d), (1, vec![0x11]));
    // Registered: the reservation key must match (libiscsi ProutRegister).
    assert_eq!(prout(&d, A, Register, 0, 0, 0x12).result, CONFLICT);
    assert_eq!(prout(&d, A, Register, 0, 0x99, 0x12).result, CONFLICT);
    ok(prout(&d, A, Register, 0, 0x11, 0x12));
    assert_eq!(keys(&d), (2, vec![0x12]));
    // Unregistered: a nonzero reservation key conflicts.
    assert_eq!(prout(&d, B, Register, 0, 0x12, 0x21).result, CONFLICT);
    // Registering zero while unregistered does nothing.
    ok(prout(&d, B, Register, 0, 0, 0));
    assert_eq!(keys(&d), (2, vec![0x12]));
    ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0xDEAD, 0x21));
    ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0xBEEF, 0x22));
    assert_eq!(keys(&d), (4, vec![0x12, 0x22]));
    ok(prout(&d, A, Register, 0, 0x12, 0));
    ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 0));
    assert_eq!(keys(&d), (6, vec![]));
    // The same key from two nexuses is two registrations.
    ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 5));
    ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 5));
    assert_eq!(keys(&d).1, vec![5, 5]);
    // Another target port is another I_T nexus.
    let other_port = ExecContext { nexus: Some(Nexus::new(A, 2)), ..Default::default() };
    let cmd = Command::decode(&prout_cdb(0, 0, 24)).unwrap();
    let e = block_on(d.execute_with_effects(&cmd, basic(0, 6, 0), &other_port));
    assert_eq!(e.result, Ok(vec![]));
    assert_eq!(keys(&d).1, vec![5, 5, 6]);
}

#[test]
fn reserve_release_every_type() {
    for t in PrType::ALL {
        let d = disk(16);
        ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 0xA));
        ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 0xB));
        let gen = keys(&d).0;
        assert_eq!(prout(&d, C, Reserve, t as u8, 0, 0).result, CONFLICT, "unregistered");
        assert_eq!(prout(&d, A, Reserve, t as u8, 0xB, 0).result, CONFLICT, "key of another nexus");
        ok(prout(&d, A, Reserve, t as u8, 0xA, 0));
        ok(prout(&d, A, Reserve, t as u8, 0xA, 0)); // same type again: GOOD
        let key = if t.all_registrants() { 0 } else { 0xA };
        assert_eq!(reservation(&d, C), Some((key, t as u8)), "{t:?}");
        assert_eq!(keys(&d).0, gen, "RESERVE leaves PRGENERATION alone");
        let other = PrType::ALL.into_iter().find(|o| *o != t).unwrap();
        assert_eq!(prout(&d, A, Reserve, other as u8, 0xA, 0).result, CONFLICT, "{t:?}: another type");
        if t.all_registrants() {
            // Every registrant holds it: B may reserve the same type, and release it.
            ok(prout(&d, B, Reserve, t as u8, 0xB, 0));
        } else {
            assert_eq!(prout(&d, B, Reserve, t as u8, 0xB, 0).result, CONFLICT, "{t:?}: held by A");
            // RELEASE by a registered non-holder: GOOD, no effect.
            assert_eq!(ok(prout(&d, B, Release, t as u8, 0xB, 0)), vec![]);
            assert!(reservation(&d, A).is_some());
        }
        assert_eq!(prout(&d, C, Release, t as u8, 0, 0).result, CONFLICT, "unregistered release");
        let e = prout(&d, A, Release, other as u8, 0xA, 0);
        assert_eq!(e.result.unwrap_err().sense().code(), sense::INVALID_RELEASE_OF_PERSISTENT_RESERVATION);
        let releaser = if t.all_registrants() { B } else { A };
        let key = if t.all_registrants() { 0xB } else { 0xA };
        let fx = ok(prout(&d, releaser, Release, t as u8, key, 0));
        let other_nexus = if releaser == A { B } else { A };
        if t.admits_registrants() {
            assert_eq!(fx, vec![ua(other_nexus, sense::RESERVATIONS_RELEASED)], "{t:?}");
        } else {
            assert_eq!(fx, vec![], "{t:?}");
        }
        assert_eq!(reservation(&d, A), None);
        ok(prout(&d, A, Release, t as u8, 0xA, 0)); // nothing to release: GOOD
        assert_eq!(keys(&d).0, gen);
    }
}

#[test]
fn access_per_type_as_libiscsi_checks_it() {
    // (type, registered B reads, writes, unregistered B reads, writes): ProutReserve.Access*.
    let cases = [
        (PrType::ExclusiveAccess, false, false, false, false),
        (PrType::WriteExclusive, true, false, true, false),
        (PrType::ExclusiveAccessRegistrantsOnly, true, true, false, false),
        (PrType::WriteExclusiveRegistrantsOnly, true, true, true, false),
        (PrType::ExclusiveAccessAllRegistrants, true, true, false, false),
        (PrType::WriteExclusiveAllRegistrants, true, true, true, false),
    ];
    for (t, rr, rw, ur, uw) in cases {
        let d = disk(16);
        ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 1));
        ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 2));
        ok(prout(&d, A, Reserve, t as u8, 1, 0));
        assert!(read(&d, A).is_ok() && write(&d, A).is_ok(), "{t:?}");
        assert_eq!(read(&d, B).is_ok(), rr, "{t:?}");
        assert_eq!(write(&d, B).is_ok(), rw, "{t:?}");
        if !rw {
            assert_eq!(write(&d, B), CONFLICT);
        }
        ok(prout(&d, B, Register, 0, 2, 0));
        assert_eq!(read(&d, B).is_ok(), ur, "{t:?}");
        assert_eq!(write(&d, B).is_ok(), uw, "{t:?}");
        ok(prout(&d, A, Release, t as u8, 1, 0));
        ok(prout(&d, A, Register, 0, 1, 0));
        assert!(read(&d, B).is_ok() && write(&d, B).is_ok());
    }
}

#[test]
fn ownership_when_the_holder_unregisters() {
    // ProutReserve.Ownership*: only the all-registrants types survive.
    for t in PrType::ALL {
        let d = disk(16);
        ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 1));
        ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 2));
        ok(prout(&d, A, Reserve, t as u8, 1, 0));
        let fx = ok(prout(&d, A, Register, 0, 1, 0));
        if t.all_registrants() {
            assert_eq!(reservation(&d, A), Some((0, t as u8)));
            assert_eq!(fx, vec![]);
            ok(prout(&d, B, Release, t as u8, 2, 0));
        } else {
            assert_eq!(reservation(&d, A), None, "{t:?}");
            let want = if t.admits_registrants() { vec![ua(B, sense::RESERVATIONS_RELEASED)] } else { vec![] };
            assert_eq!(fx, want, "{t:?}");
        }
        ok(prout(&d, B, Register, 0, 2, 0));
        assert_eq!(keys(&d).1, vec![]);
    }
    // The last registrant of an all-registrants reservation takes it along.
    let d = disk(16);
    ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 1));
    ok(prout(&d, A, Reserve, PrType::WriteExclusiveAllRegistrants as u8, 1, 0));
    ok(prout(&d, A, Register, 0, 1, 0));
    assert_eq!(reservation(&d, A), None);
}

#[test]
fn clear() {
    let d = disk(16);
    ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 1));
    ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 2));
    ok(prout(&d, A, Reserve, PrType::ExclusiveAccess as u8, 1, 0));
    assert_eq!(prout(&d, C, Clear, 0, 0, 0).result, CONFLICT);
    assert_eq!(prout(&d, B, Clear, 0, 1, 0).result, CONFLICT, "wrong key");
    let gen = keys(&d).0;
    let fx = ok(prout(&d, B, Clear, 0, 2, 0));
    assert_eq!(fx, vec![ua(A, sense::RESERVATIONS_PREEMPTED)]);
    assert_eq!(keys(&d), (gen + 1, vec![]));
    assert_eq!(reservation(&d, A), None);
    assert!(write(&d, C).is_ok());
}

#[test]
fn preempt_removes_registrations_without_reservation() {
    // ProutPreempt.RemoveRegistration.
    let d = disk(16);
    ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 1));
    ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 2));
    let gen = keys(&d).0;
    let fx = ok(prout(&d, B, Preempt, PrType::ExclusiveAccess as u8, 2, 1));
    assert_eq!(fx, vec![ua(A, sense::REGISTRATIONS_PREEMPTED)]);
    assert_eq!(keys(&d), (gen + 1, vec![2]));
    assert_eq!(reservation(&d, A), None, "no reservation is created");
    // SARK zero without an all-registrants reservation; a key nobody has.
    let e = prout(&d, B, Preempt, PrType::ExclusiveAccess as u8, 2, 0);
    assert_eq!(e.result, Err(ScsiError::param(8, None)));
    assert_eq!(prout(&d, B, Preempt, PrType::ExclusiveAccess as u8, 2, 77).result, CONFLICT);
    assert_eq!(prout(&d, A, Preempt, PrType::ExclusiveAccess as u8, 1, 2).result, CONFLICT, "A is gone");
}

#[test]
fn preempt_the_holder_and_abort() {
    for abort in [false, true] {
        let d = disk(16);
        ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 1));
        ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 2));
        ok(prout(&d, C, RegisterAndIgnoreExistingKey, 0, 0, 3));
        ok(prout(&d, A, Reserve, PrType::WriteExclusiveRegistrantsOnly as u8, 1, 0));
        let sa = if abort { PreemptAndAbort } else { Preempt };
        let fx = ok(prout(&d, B, sa, PrType::ExclusiveAccess as u8, 2, 1));
        let mut want = vec![ua(A, sense::REGISTRATIONS_PREEMPTED)];
        if abort {
            want.push(SideEffect::AbortTasks { nexus: nexus(A) });
        }
        // The type changed: the remaining registrants hear of it.
        want.push(ua(C, sense::RESERVATIONS_RELEASED));
        assert_eq!(fx, want);
        assert_eq!(reservation(&d, A), Some((2, PrType::ExclusiveAccess as u8)));
        assert_eq!(keys(&d).1, vec![2, 3]);
        assert_eq!(read(&d, A), CONFLICT);
        assert_eq!(read(&d, C), CONFLICT, "EA: a registrant that does not hold is refused");
        assert!(write(&d, B).is_ok());
        // Preempting a non-holder's key only removes registrations.
        let fx = ok(prout(&d, B, Preempt, PrType::ExclusiveAccess as u8, 2, 3));
        assert_eq!(fx, vec![ua(C, sense::REGISTRATIONS_PREEMPTED)]);
        assert_eq!(reservation(&d, A), Some((2, PrType::ExclusiveAccess as u8)));
        // Preempting oneself changes the type, with nobody else to tell.
        assert_eq!(ok(prout(&d, B, Preempt, PrType::WriteExclusive as u8, 2, 2)), vec![]);
        assert_eq!(reservation(&d, A), Some((2, PrType::WriteExclusive as u8)));
        assert_eq!(keys(&d).1, vec![2]);
    }
}

#[test]
fn preempt_all_registrants() {
    let d = disk(16);
    ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 1));
    ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 2));
    ok(prout(&d, C, RegisterAndIgnoreExistingKey, 0, 0, 3));
    let ar = PrType::ExclusiveAccessAllRegistrants as u8;
    ok(prout(&d, A, Reserve, ar, 1, 0));
    // A nonzero key removes that registration only.
    assert_eq!(ok(prout(&d, A, Preempt, ar, 1, 3)), vec![ua(C, sense::REGISTRATIONS_PREEMPTED)]);
    assert_eq!(reservation(&d, A), Some((0, ar)));
    // Zero removes every other registration and takes the reservation.
    let fx = ok(prout(&d, B, PreemptAndAbort, PrType::WriteExclusive as u8, 2, 0));
    assert_eq!(fx, vec![ua(A, sense::REGISTRATIONS_PREEMPTED), SideEffect::AbortTasks { nexus: nexus(A) }],);
    assert_eq!(keys(&d).1, vec![2]);
    assert_eq!(reservation(&d, A), Some((2, PrType::WriteExclusive as u8)));
}

fn transport_id(name: &str, format: u8) -> Vec<u8> {
    let mut n = name.as_bytes().to_vec();
    n.push(0);
    n.resize(n.len().next_multiple_of(4).max(20), 0);
    let mut t = vec![(format << 6) | 5, 0];
    t.extend_from_slice(&(n.len() as u16).to_be_bytes());
    t.extend_from_slice(&n);
    t
}

fn move_params(rk: u64, sark: u64, unreg: bool, rtpi: u16, tid: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; 24];
    p[0..8].copy_from_slice(&rk.to_be_bytes());
    p[8..16].copy_from_slice(&sark.to_be_bytes());
    p[17] = u8::from(unreg) << 1;
    p[18..20].copy_from_slice(&rtpi.to_be_bytes());
    p[20..24].copy_from_slice(&(tid.len() as u32).to_be_bytes());
    p.extend_from_slice(tid);
    p
}

fn register_and_move(d: &Disk, who: &str, p: Vec<u8>) -> Executed {
    exec(d, &prout_cdb(7, 0, p.len() as u32), p, who)
}

#[test]
fn register_and_move_moves_the_reservation() {
    let d = disk(16);
    ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 1));
    let tid = transport_id(B, 1);
    // No reservation yet.
    assert_eq!(register_and_move(&d, A, move_params(1, 9, false, 1, &tid)).result, CONFLICT);
    ok(prout(&d, A, Reserve, PrType::WriteExclusive as u8, 1, 0));
    assert_eq!(register_and_move(&d, A, move_params(2, 9, false, 1, &tid)).result, CONFLICT, "key");
    assert_eq!(register_and_move(&d, B, move_params(0, 9, false, 1, &tid)).result, CONFLICT, "unregistered");
    assert_eq!(register_and_move(&d, A, move_params(1, 0, false, 1, &tid)).result, Err(ScsiError::param(8, None)));
    let to_self = move_params(1, 9, false, 1, &transport_id(A, 1));
    assert_eq!(register_and_move(&d, A, to_self).result, Err(ScsiError::param(24, None)));
    let gen = keys(&d).0;
    assert_eq!(ok(register_and_move(&d, A, move_params(1, 9, true, 1, &tid))), vec![]);
    assert_eq!(keys(&d), (gen + 1, vec![9]), "UNREG dropped the source");
    assert_eq!(reservation(&d, A), Some((9, PrType::WriteExclusive as u8)));
    assert_eq!(write(&d, A), CONFLICT);
    assert!(write(&d, B).is_ok());
    // Format 00b: the iSCSI name alone, on another target port.
    let bare = transport_id("iqn.2007-10.com.example:third", 0);
    ok(register_and_move(&d, B, move_params(9, 4, false, 2, &bare)));
    let s = d.reservation_state();
    assert_eq!(s.reservation.as_ref().unwrap().holder, Nexus::new("iqn.2007-10.com.example:third", 2));
    let c_port2 = ExecContext { nexus: Some(Nexus::new(C, 2)), ..Default::default() };
    let w = Command::decode(&cdb10(0x2A, 0, 1, 1)).unwrap();
    assert_eq!(block_on(d.execute_with_effects(&w, vec![0; 512], &c_port2)).result, Ok(vec![]));
    assert_eq!(write(&d, B), CONFLICT);
}

#[test]
fn register_and_move_parameter_errors() {
    let d = disk(16);
    ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 1));
    ok(prout(&d, A, Reserve, PrType::WriteExclusive as u8, 1, 0));
    let tid = transport_id(B, 1);
    let mut p = move_params(1, 9, false, 1, &tid);
    p[20..24].copy_from_slice(&1000u32.to_be_bytes());
    assert_eq!(register_and_move(&d, A, p).result, Err(ScsiError::ParameterListLengthError));
    let mut fc = tid.clone();
    fc[0] = 0x00; // Fibre Channel
    assert_eq!(register_and_move(&d, A, move_params(1, 9, false, 1, &fc)).result, Err(ScsiError::param(24, Some(7))));
    let mut unterminated = tid.clone();
    let n = unterminated.len();
    unterminated[4..n].fill(b'a');
    assert!(register_and_move(&d, A, move_params(1, 9, false, 1, &unterminated)).result.is_err());
    assert_eq!(
        register_and_move(&d, A, move_params(1, 9, false, 1, &transport_id(B, 0))).result,
        Err(ScsiError::param(28, None)),
        "format 00b with an ISID"
    );
    assert_eq!(exec(&d, &prout_cdb(7, 0, 23), vec![0; 23], A).result, Err(ScsiError::ParameterListLengthError));
    assert_eq!(
        exec(&d, &prout_cdb(7, 0, MAX_MOVE_PARAM_LEN + 1), vec![], A).result,
        Err(ScsiError::ParameterListLengthError)
    );
    // All-registrants reservations cannot be moved.
    let d = disk(16);
    ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 1));
    ok(prout(&d, A, Reserve, PrType::WriteExclusiveAllRegistrants as u8, 1, 0));
    assert_eq!(register_and_move(&d, A, move_params(1, 9, false, 1, &tid)).result, CONFLICT);
}

#[test]
fn cdb_and_parameter_list_errors() {
    let d = disk(16);
    // Service actions out of range (libiscsi PrinServiceactionRange).
    for sa in 4..0x20u8 {
        let c = [0x5E, sa, 0, 0, 0, 0, 0, 0, 64, 0];
        assert_eq!(Command::decode(&c), Err(ScsiError::field(1, 4)), "PR IN {sa:#x}");
    }
    for sa in 0..4u8 {
        assert!(exec(&d, &[0x5E, sa, 0, 0, 0, 0, 0, 0, 64, 0], vec![], A).result.is_ok());
    }
    for sa in 8..0x20u8 {
        assert_eq!(Command::decode(&prout_cdb(sa, 0, 24)), Err(ScsiError::field(1, 4)), "PR OUT {sa:#x}");
    }
    // Bad TYPE or SCOPE for the service actions that use them.
    for t in [0u8, 2, 4, 9, 0xF] {
        assert_eq!(exec(&d, &prout_cdb(1, t, 24), basic(0, 0, 0), A).result, Err(ScsiError::field(2, 3)), "{t}");
    }
    assert_eq!(exec(&d, &prout_cdb(1, 0x11, 24), basic(0, 0, 0), A).result, Err(ScsiError::field(2, 7)));
    // REGISTER ignores them.
    ok(exec(&d, &prout_cdb(0, 0xFF, 24), basic(0, 1, 0), A));
    // PARAMETER LIST LENGTH must be 24.
    for len in [0u32, 23, 25, 1 << 20, u32::MAX] {
        let e = exec(&d, &prout_cdb(0, 0, len), vec![], A).result;
        assert_eq!(e, Err(ScsiError::ParameterListLengthError), "{len}");
    }
    // Data-out shorter than the list.
    assert_eq!(exec(&d, &prout_cdb(0, 0, 24), vec![0; 10], A).result, Err(ScsiError::ParameterListLengthError));
    // SPEC_I_PT and ALL_TG_PT are not supported.
    let e = exec(&d, &prout_cdb(0, 0, 24), basic(1, 2, 0x08), A).result;
    assert_eq!(e, Err(ScsiError::param(20, Some(3))));
    let e = exec(&d, &prout_cdb(6, 0, 24), basic(1, 2, 0x04), A).result;
    assert_eq!(e, Err(ScsiError::param(20, Some(2))));
    assert_eq!(e.unwrap_err().sense().key, SenseKey::IllegalRequest);
    // Reserved CDB bits.
    assert_eq!(Command::decode(&[0x5F, 0x20, 0, 0, 0, 0, 0, 0, 24, 0]), Err(ScsiError::field(1, 5)));
    assert_eq!(Command::decode(&[0x5E, 0, 1, 0, 0, 0, 0, 0, 24, 0]), Err(ScsiError::field(2, 0)));
    assert_eq!(Command::decode(&[0x5F, 0, 0, 1, 0, 0, 0, 0, 24, 0]), Err(ScsiError::field(3, 0)));
    // Nothing failed left a side effect or changed the generation twice.
    assert_eq!(keys(&d), (1, vec![1]));
}

#[test]
fn decoded_fields_and_directions() {
    let c = Command::decode(&prout_cdb(1, 0x06, 24)).unwrap();
    let Command::PersistentReserveOut(p) = &c else { panic!() };
    assert_eq!(p.pr_type(), Ok(Some(PrType::ExclusiveAccessRegistrantsOnly)));
    assert_eq!((c.direction(), c.data_out_len(512), c.name()), (DataDirection::ToDevice, 24, "PERSISTENT RESERVE OUT"));
    assert!(!c.is_medium_access() && !c.is_write());
    let c = Command::decode(&prout_cdb(3, 0, 0)).unwrap();
    assert_eq!(c.direction(), DataDirection::None);
    let c = Command::decode(&[0x5E, 2, 0, 0, 0, 0, 0, 0x01, 0x00, 0]).unwrap();
    assert_eq!(c, Command::PersistentReserveIn(PrIn { action: PrInAction::ReportCapabilities, alloc_len: 256 }));
    assert_eq!((c.direction(), c.opcode(), c.service_action()), (DataDirection::FromDevice, 0x5E, Some(2)));
}

use crate::cdb::DataDirection;

#[test]
fn read_keys_truncates() {
    // libiscsi PrinReadKeys.Truncate: the header reports the full length.
    let d = disk(16);
    for (who, k) in [(A, 1u64), (B, 2), (C, 3)] {
        ok(prout(&d, who, RegisterAndIgnoreExistingKey, 0, 0, k));
    }
    let full = prin(&d, A, 0, 4096);
    assert_eq!(full.len(), 8 + 24);
    for alloc in [0u16, 1, 4, 8, 9, 16, 31] {
        let r = prin(&d, A, 0, alloc);
        assert_eq!(r, full[..usize::from(alloc)], "{alloc}");
    }
    for sa in 1..4u8 {
        let full = prin(&d, A, sa, 4096);
        for alloc in 0..full.len() as u16 {
            assert_eq!(prin(&d, A, sa, alloc), full[..usize::from(alloc)]);
        }
    }
}

#[test]
fn report_capabilities() {
    let d = disk(16);
    let r = prin(&d, A, 2, 64);
    assert_eq!(r, vec![0, 8, 0x01, 0xB0, 0xEA, 0x01, 0, 0]);
    ok(exec(&d, &prout_cdb(6, 0, 24), basic(0, 1, 0x01), A));
    assert_eq!(prin(&d, A, 2, 64)[3], 0xB1, "PTPL_A");
    let allow_commands = (r[3] >> 4) & 7;
    assert!(allow_commands <= 5);
    // Every type the mask offers can be reserved (libiscsi PrinReportCapabilities).
    for t in PrType::ALL {
        let bit = match t {
            PrType::WriteExclusiveAllRegistrants => (4, 7),
            PrType::ExclusiveAccessRegistrantsOnly => (4, 6),
            PrType::WriteExclusiveRegistrantsOnly => (4, 5),
            PrType::ExclusiveAccess => (4, 3),
            PrType::WriteExclusive => (4, 1),
            PrType::ExclusiveAccessAllRegistrants => (5, 0),
        };
        assert_ne!(r[bit.0] & (1 << bit.1), 0, "{t:?}");
        ok(prout(&d, A, Reserve, t as u8, 1, 0));
        ok(prout(&d, A, Release, t as u8, 1, 0));
    }
}

#[test]
fn read_full_status() {
    let d = disk(16);
    assert_eq!(prin(&d, A, 3, 64), vec![0, 0, 0, 0, 0, 0, 0, 0]);
    ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 0x1111));
    ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 0x2222));
    ok(prout(&d, B, Reserve, PrType::WriteExclusive as u8, 0x2222, 0));
    let r = prin(&d, A, 3, 4096);
    assert_eq!(u32::from_be_bytes(r[0..4].try_into().unwrap()), 2);
    let len = u32::from_be_bytes(r[4..8].try_into().unwrap()) as usize;
    assert_eq!(len, r.len() - 8);
    let mut at = 8;
    let mut seen = Vec::new();
    while at < r.len() {
        let desc = &r[at..];
        let key = u64::from_be_bytes(desc[0..8].try_into().unwrap());
        let holder = desc[12] & 1 != 0;
        let scope_type = desc[13];
        let rtpi = u16::from_be_bytes([desc[18], desc[19]]);
        let tid_len = u32::from_be_bytes(desc[20..24].try_into().unwrap()) as usize;
        let tid = &desc[24..24 + tid_len];
        assert_eq!(tid[0], 0x45, "iSCSI, format 01b");
        assert_eq!(tid_len % 4, 0);
        assert_eq!(u16::from_be_bytes([tid[2], tid[3]]) as usize, tid_len - 4);
        let name = tid[4..].split(|&b| b == 0).next().unwrap();
        seen.push((key, holder, scope_type, rtpi, String::from_utf8(name.to_vec()).unwrap()));
        at += 24 + tid_len;
    }
    assert_eq!(
        seen,
        vec![(0x1111, false, 0, 1, A.to_string()), (0x2222, true, PrType::WriteExclusive as u8, 1, B.to_string())]
    );
    // The TransportID of an anonymous nexus and of a bare name.
    assert_eq!(encode_transport_id(""), [&[0x05, 0, 0, 20][..], &[0; 20][..]].concat());
    assert_eq!(encode_transport_id("iqn.a")[0], 0x05);
    assert_eq!(decode_transport_id(&encode_transport_id(A)), Ok(A.to_string()));
}

#[test]
fn aptpl_asks_the_core_to_save() {
    let d = disk(16);
    assert_eq!(ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 1)), vec![], "no APTPL: nothing to save");
    let fx = ok(exec(&d, &prout_cdb(0, 0, 24), basic(1, 2, 0x01), A));
    assert_eq!(fx, vec![SideEffect::SaveReservations]);
    assert!(d.reservation_state().aptpl);
    let fx = ok(prout(&d, A, Reserve, PrType::ExclusiveAccess as u8, 2, 0));
    assert_eq!(fx, vec![SideEffect::SaveReservations]);
    assert_eq!(ok(prout(&d, A, Reserve, PrType::ExclusiveAccess as u8, 2, 0)), vec![], "no change");
    // Turning APTPL off is saved too, and restores as empty.
    assert_eq!(ok(prout(&d, A, Register, 0, 2, 3)), vec![SideEffect::SaveReservations]);
    let saved = d.reservation_state_bytes();
    let e = disk(16);
    e.restore_reservations(&saved).unwrap();
    assert_eq!(e.reservation_state().registrations, vec![]);
    // With APTPL the restored disk enforces the reservation.
    ok(exec(&d, &prout_cdb(0, 0, 24), basic(3, 4, 0x01), A));
    e.restore_reservations(&d.reservation_state_bytes()).unwrap();
    assert_eq!(reservation(&e, B), Some((4, PrType::ExclusiveAccess as u8)));
    assert_eq!(read(&e, B), CONFLICT);
    assert!(read(&e, A).is_ok());
}

#[test]
fn failed_commands_report_no_effects() {
    let d = disk(16);
    ok(prout(&d, A, RegisterAndIgnoreExistingKey, 0, 0, 1));
    ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 2));
    let e = prout(&d, B, Clear, 0, 99, 0);
    assert_eq!(e, Executed { result: CONFLICT, effects: vec![] });
    assert_eq!(keys(&d).1, vec![1, 2]);
}

#[test]
fn spc2_reservation_holds_off_persistent_ones() {
    let d = disk(16);
    ok(exec(&d, &[0x16, 0, 0, 0, 0, 0], vec![], A));
    assert_eq!(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 2).result, CONFLICT);
    assert_eq!(exec(&d, &[0x5E, 0, 0, 0, 0, 0, 0, 0, 64, 0], vec![], B).result, CONFLICT);
    ok(exec(&d, &[0x17, 0, 0, 0, 0, 0], vec![], A));
    ok(prout(&d, B, RegisterAndIgnoreExistingKey, 0, 0, 2));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 2_000, ..Default::default() })]

    /// Any service action, type and parameter list from any of three
    /// nexuses: never a panic, and the state stays consistent.
    #[test]
    fn prout_never_panics(
        ops in proptest::collection::vec(
            (0u8..8, 0u8..10, 0usize..3, proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64), 0u64..4, 0u64..4),
            1..12,
        )
    ) {
        let d = disk(4);
        for (sa, t, who, mut data, rk, sark) in ops {
            let who = [A, B, C][who];
            if data.len() >= 24 && sa != 7 {
                data.truncate(24);
                data[0..8].copy_from_slice(&rk.to_be_bytes());
                data[8..16].copy_from_slice(&sark.to_be_bytes());
            }
            let e = exec(&d, &prout_cdb(sa, t, data.len() as u32), data, who);
            if e.result.is_err() {
                proptest::prop_assert!(e.effects.is_empty());
            }
            let s = d.reservation_state();
            if let Some(r) = &s.reservation {
                proptest::prop_assert!(!s.registrations.is_empty());
                if !r.pr_type.all_registrants() {
                    proptest::prop_assert!(s.registration(&r.holder).is_some());
                }
            }
            proptest::prop_assert!(s.registrations.iter().all(|r| r.key != 0));
            let e2 = disk(4);
            proptest::prop_assert!(e2.restore_reservations(&d.reservation_state_bytes()).is_ok());
            for sa in 0..4u8 {
                let _ = prin(&d, who, sa, 100);
            }
        }
    }
}

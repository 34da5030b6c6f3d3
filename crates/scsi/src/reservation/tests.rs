//! The conflict check against SPC-5 table 63 / SBC-4 table 13, transcribed
//! here independently of the opcode table's access column; and the
//! persistence encoding.

use super::*;
use crate::cdb::table::OPCODES;
use crate::test_util::*;

/// SPC-5 table 63 and SBC-4 table 13, per command: Allowed or Conflict for
/// [any nexus under WE, any nexus under EA, a registered nexus under RO/AR,
/// an unregistered nexus under WE-RO/AR, an unregistered nexus under
/// EA-RO/AR], then whether another nexus's SPC-2 reservation lets it
/// through (SPC-2 5.5.1). Every command of the opcode table must be here.
const SPEC: &[(&str, &str, bool)] = &[
    ("TEST UNIT READY", "AAAAA", false),
    ("REQUEST SENSE", "AAAAA", true),
    ("INQUIRY", "AAAAA", true),
    ("REPORT LUNS", "AAAAA", true),
    ("LOG SENSE", "AAAAA", true),
    // Multipath software asks for the path states whatever reservation is held.
    ("REPORT TARGET PORT GROUPS", "AAAAA", true),
    ("READ CAPACITY(10)", "AAAAA", false),
    ("READ CAPACITY(16)", "AAAAA", false),
    ("PERSISTENT RESERVE IN", "AAAAA", false),
    ("PERSISTENT RESERVE OUT", "AAAAA", false),
    ("RESERVE(6)", "AAAAA", false),
    ("RESERVE(10)", "AAAAA", false),
    ("RELEASE(6)", "AAAAA", true),
    ("RELEASE(10)", "AAAAA", true),
    ("MODE SENSE(6)", "ACAAC", false),
    ("MODE SENSE(10)", "ACAAC", false),
    ("REPORT SUPPORTED OPERATION CODES", "ACAAC", false),
    ("REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", "ACAAC", false),
    ("READ(6)", "ACAAC", false),
    ("READ(10)", "ACAAC", false),
    ("READ(12)", "ACAAC", false),
    ("READ(16)", "ACAAC", false),
    ("VERIFY(10)", "ACAAC", false),
    ("VERIFY(12)", "ACAAC", false),
    ("VERIFY(16)", "ACAAC", false),
    ("PRE-FETCH(10)", "ACAAC", false),
    ("PRE-FETCH(16)", "ACAAC", false),
    ("READ DEFECT DATA(10)", "ACAAC", false),
    ("READ DEFECT DATA(12)", "ACAAC", false),
    ("GET LBA STATUS", "ACAAC", false),
    ("MODE SELECT(6)", "CCACC", false),
    ("MODE SELECT(10)", "CCACC", false),
    ("WRITE(6)", "CCACC", false),
    ("WRITE(10)", "CCACC", false),
    ("WRITE(12)", "CCACC", false),
    ("WRITE(16)", "CCACC", false),
    ("WRITE AND VERIFY(10)", "CCACC", false),
    ("WRITE AND VERIFY(12)", "CCACC", false),
    ("WRITE AND VERIFY(16)", "CCACC", false),
    ("WRITE SAME(10)", "CCACC", false),
    ("WRITE SAME(16)", "CCACC", false),
    ("COMPARE AND WRITE", "CCACC", false),
    ("ORWRITE(16)", "CCACC", false),
    ("WRITE ATOMIC(16)", "CCACC", false),
    ("SANITIZE", "CCACC", false),
    ("UNMAP", "CCACC", false),
    ("EXTENDED COPY", "CCACC", false),
    ("RECEIVE COPY RESULTS", "CCACC", false),
    ("SYNCHRONIZE CACHE(10)", "CCACC", false),
    ("SYNCHRONIZE CACHE(16)", "CCACC", false),
    ("SET TARGET PORT GROUPS", "CCACC", false),
    // Decided by fields; the zero CDB is START=0 (a stop) and PREVENT=0.
    ("START STOP UNIT", "CCACC", false),
    ("PREVENT ALLOW MEDIUM REMOVAL", "AAAAA", true),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Holder,
    Registrant,
    Other,
}

fn holder() -> Nexus {
    Nexus::new("iqn.1994-05.com.example:holder,i,0x23d000000001", 1)
}
fn registrant() -> Nexus {
    Nexus::new("iqn.1994-05.com.example:registrant,i,0x23d000000002", 1)
}
fn other() -> Nexus {
    Nexus::new("iqn.1994-05.com.example:other,i,0x23d000000003", 1)
}

fn reserved(pr_type: PrType) -> ReservationState {
    ReservationState {
        generation: 2,
        aptpl: false,
        registrations: vec![Registration { nexus: holder(), key: 1 }, Registration { nexus: registrant(), key: 2 }],
        reservation: Some(PersistentReservation { holder: holder(), pr_type }),
        spc2_holder: None,
    }
}

/// The expected outcome from the transcribed table.
fn expected(cols: &str, pr_type: PrType, role: Role) -> bool {
    let c = cols.as_bytes();
    let allowed = |i: usize| c[i] == b'A';
    match role {
        Role::Holder => true,
        Role::Registrant if pr_type.all_registrants() => true,
        _ if !pr_type.admits_registrants() => allowed(if pr_type == PrType::WriteExclusive { 0 } else { 1 }),
        Role::Registrant => allowed(2),
        Role::Other => allowed(if pr_type.exclusive_access() { 4 } else { 3 }),
    }
}

/// A disk that offers every command of the table (ALUA configured, this
/// process Active/Optimized).
fn alua_disk(blocks: u64) -> Disk {
    disk_with(blocks, crate::DiskConfig { alua: crate::AluaConfig::gateways(2, 0).ok(), ..Default::default() })
}

fn zero_cdb(e: &crate::cdb::table::OpcodeEntry) -> Command {
    let mut cdb = vec![0u8; e.cdb_len()];
    cdb[0] = e.opcode;
    if let Some(sa) = e.service_action {
        cdb[1] = sa;
    }
    Command::decode(&cdb).expect(e.name)
}

#[test]
fn every_opcode_every_type_every_role() {
    let d = alua_disk(16);
    let mut checked = 0;
    for e in OPCODES {
        let Some(&(_, cols, _)) = SPEC.iter().find(|s| s.0 == e.name) else {
            panic!("{} is missing from the transcription of SPC-5 table 63", e.name)
        };
        let cmd = zero_cdb(e);
        for pr_type in PrType::ALL {
            d.reservations.replace(reserved(pr_type));
            for (role, nexus) in [(Role::Holder, holder()), (Role::Registrant, registrant()), (Role::Other, other())] {
                let ctx = ExecContext { nexus: Some(nexus), ..Default::default() };
                let want = expected(cols, pr_type, role);
                let got = d.check_reservation(&cmd, &ctx);
                assert_eq!(got.is_ok(), want, "{} under {pr_type:?} from {role:?}", e.name);
                if !want {
                    assert_eq!(got, Err(ScsiError::ReservationConflict));
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, OPCODES.len() * 6 * 3);
}

#[test]
fn every_opcode_under_an_spc2_reservation() {
    let d = alua_disk(16);
    d.reservations.replace(ReservationState { spc2_holder: Some(holder()), ..Default::default() });
    for e in OPCODES {
        let (_, _, passes) = *SPEC.iter().find(|s| s.0 == e.name).expect(e.name);
        let cmd = zero_cdb(e);
        let by = |n: Nexus| d.check_reservation(&cmd, &ExecContext { nexus: Some(n), ..Default::default() });
        assert_eq!(by(holder()), Ok(()), "{}", e.name);
        assert_eq!(by(other()).is_ok(), passes, "{}", e.name);
    }
}

#[test]
fn fields_decide_start_stop_and_prevent() {
    let d = disk(16);
    d.reservations.replace(reserved(PrType::ExclusiveAccess));
    let ctx = ExecContext { nexus: Some(other()), ..Default::default() };
    let check = |cdb: &[u8]| d.check_reservation(&Command::decode(cdb).unwrap(), &ctx);
    assert_eq!(check(&[0x1B, 0, 0, 0, 0x01, 0]), Ok(()), "START");
    assert_eq!(check(&[0x1B, 0, 0, 0, 0x00, 0]), Err(ScsiError::ReservationConflict), "STOP");
    assert_eq!(check(&[0x1B, 0, 0, 0, 0x31, 0]), Err(ScsiError::ReservationConflict), "power condition");
    assert_eq!(check(&[0x1B, 0, 0, 0, 0x03, 0]), Ok(()), "load");
    assert_eq!(check(&[0x1E, 0, 0, 0, 0, 0]), Ok(()), "ALLOW");
    assert_eq!(check(&[0x1E, 0, 0, 0, 1, 0]), Err(ScsiError::ReservationConflict), "PREVENT");
    assert!(OPCODES
        .iter()
        .filter(|e| e.access == Access::ByField)
        .all(|e| { matches!(zero_cdb(e), Command::StartStopUnit(_) | Command::PreventAllowMediumRemoval { .. }) }));
}

#[test]
fn no_reservation_no_conflict_and_anonymous_nexus() {
    let d = disk(16);
    let w = Command::decode(&cdb10(0x2A, 0, 0, 1)).unwrap();
    assert_eq!(d.check_reservation(&w, &ExecContext::default()), Ok(()));
    // Registrations alone restrict nothing.
    d.reservations.replace(ReservationState {
        registrations: reserved(PrType::WriteExclusive).registrations,
        ..Default::default()
    });
    assert_eq!(d.check_reservation(&w, &ExecContext::default()), Ok(()));
    // The anonymous nexus can hold a reservation.
    let mut s = reserved(PrType::ExclusiveAccess);
    s.registrations.push(Registration { nexus: Nexus::anonymous(), key: 9 });
    s.reservation = Some(PersistentReservation { holder: Nexus::anonymous(), pr_type: PrType::ExclusiveAccess });
    d.reservations.replace(s);
    assert_eq!(d.check_reservation(&w, &ExecContext::default()), Ok(()));
    let ctx = ExecContext { nexus: Some(holder()), ..Default::default() };
    assert_eq!(d.check_reservation(&w, &ctx), Err(ScsiError::ReservationConflict));
}

#[test]
fn nexus_identity() {
    let a = Nexus::new("iqn.x:a,i,0x23d000000001", 1);
    assert!(a.covers(&Nexus::new("IQN.X:A,I,0X23D000000001", 1)));
    assert!(!a.covers(&Nexus::new("iqn.x:a,i,0x23d000000001", 2)), "another target port");
    assert!(!a.covers(&Nexus::new("iqn.x:a,i,0x23d000000002", 1)), "another ISID");
    let bare = Nexus::new("iqn.x:a", 1);
    assert!(bare.covers(&a), "a bare name covers every port of the initiator");
    assert!(!a.covers(&bare));
    assert!(!bare.covers(&Nexus::new("iqn.x:ab,i,0x1", 1)));
    assert!(!bare.covers(&Nexus::new("iqn.x:a", 2)));
    assert!(Nexus::anonymous().covers(&Nexus::anonymous()));
}

#[test]
fn encoding_round_trips() {
    let d = disk(16);
    let mut s = reserved(PrType::ExclusiveAccessRegistrantsOnly);
    s.aptpl = true;
    s.generation = 77;
    s.spc2_holder = None;
    d.reservations.replace(s.clone());
    let bytes = d.reservation_state_bytes();
    assert_eq!(&bytes[..5], b"LPRS\x02");
    let e = disk(16);
    e.restore_reservations(&bytes).unwrap();
    assert_eq!(*e.reservation_state(), s);
    assert_eq!(e.reservation_state_bytes(), bytes);
    // Without APTPL nothing persists through power loss but the generation.
    s.aptpl = false;
    d.reservations.replace(s);
    e.restore_reservations(&d.reservation_state_bytes()).unwrap();
    assert_eq!(*e.reservation_state(), ReservationState { generation: 77, ..Default::default() });
    // The SPC-2 reservation is never saved.
    d.reservations.replace(ReservationState { spc2_holder: Some(holder()), aptpl: true, ..Default::default() });
    e.restore_reservations(&d.reservation_state_bytes()).unwrap();
    assert_eq!(e.reservation_state().spc2_holder, None);
}

#[test]
fn restore_refuses_bad_input_and_keeps_state() {
    let d = disk(16);
    let mut s = reserved(PrType::WriteExclusive);
    s.aptpl = true;
    d.reservations.replace(s.clone());
    let good = d.reservation_state_bytes();
    assert_eq!(d.restore_reservations(b""), Err(RestoreError::BadMagic));
    assert_eq!(d.restore_reservations(b"XPRS\x01"), Err(RestoreError::BadMagic));
    assert_eq!(d.restore_reservations(b"LPRS\x03"), Err(RestoreError::UnsupportedVersion(3)));
    for cut in 5..good.len() {
        assert_eq!(d.restore_reservations(&good[..cut]), Err(RestoreError::Truncated), "cut at {cut}");
    }
    let mut trailing = good.clone();
    trailing.push(0);
    assert!(matches!(d.restore_reservations(&trailing), Err(RestoreError::Invalid(_))));
    let mut bad_type = good.clone();
    bad_type[10] = 2;
    assert!(matches!(d.restore_reservations(&bad_type), Err(RestoreError::Invalid(_))));
    // A Write Exclusive holder that is not registered.
    let mut bad_holder = good.clone();
    bad_holder[15 + 20] = b'#';
    assert_eq!(d.restore_reservations(&bad_holder), Err(RestoreError::Invalid("reservation holder")));
    let mut bad_changed_by = good.clone();
    *bad_changed_by.last_mut().unwrap() = 3;
    assert!(matches!(d.restore_reservations(&bad_changed_by), Err(RestoreError::Invalid(_))));
    assert_eq!(*d.reservation_state(), s);
}

proptest::proptest! {
    #[test]
    fn restore_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200)) {
        let d = disk(1);
        for version in [1u8, 2] {
            let mut b = b"LPRS".to_vec();
            b.push(version);
            b.extend_from_slice(&bytes);
            let _ = d.restore_reservations(&b);
            let _ = decode_shared(&b);
        }
        let _ = d.restore_reservations(&bytes);
    }
}

#[test]
fn concurrent_writers_lose_no_registration() {
    let d = std::sync::Arc::new(disk(16));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let d = d.clone();
            std::thread::spawn(move || {
                for i in 0..50u64 {
                    let nexus = Nexus::new(format!("iqn.t{t}:{i}"), 1);
                    let mut fx = Vec::new();
                    d.reservations
                        .update(&mut fx, |s, _| {
                            s.registrations.push(Registration { nexus, key: t * 1000 + i + 1 });
                            s.generation += 1;
                            Ok(())
                        })
                        .unwrap();
                    // Readers meanwhile see a consistent snapshot.
                    let snap = d.reservation_state();
                    assert_eq!(snap.generation as usize, snap.registrations.len());
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(d.reservation_state().registrations.len(), 200);
}

#[test]
fn version_1_files_still_decode() {
    // A version 1 APTPL file: WE-RO held by the second of two registrations.
    let mut b = b"LPRS\x01".to_vec();
    b.extend_from_slice(&9u32.to_be_bytes());
    b.push(1);
    b.push(PrType::WriteExclusiveRegistrantsOnly as u8);
    b.extend_from_slice(&1u32.to_be_bytes());
    b.extend_from_slice(&2u32.to_be_bytes());
    for (key, n) in [(5u64, registrant()), (6, holder())] {
        b.extend_from_slice(&key.to_be_bytes());
        b.extend_from_slice(&n.target_port.to_be_bytes());
        b.extend_from_slice(&(n.initiator_port.len() as u16).to_be_bytes());
        b.extend_from_slice(n.initiator_port.as_bytes());
    }
    let (s, by) = decode_shared(&b).unwrap();
    assert_eq!(by, None);
    assert_eq!(s.generation, 9);
    assert!(s.aptpl);
    assert_eq!(
        s.reservation,
        Some(PersistentReservation { holder: holder(), pr_type: PrType::WriteExclusiveRegistrantsOnly })
    );
    assert_eq!(s.registrations.len(), 2);
}

/// An all-registrants reservation outlives the registration of the nexus
/// that created it; version 1 wrote it with no holder and could not read
/// it back. Version 2 names the holder.
#[test]
fn all_registrants_reservation_without_its_creator_round_trips() {
    let s = ReservationState {
        generation: 4,
        aptpl: true,
        registrations: vec![Registration { nexus: registrant(), key: 2 }],
        reservation: Some(PersistentReservation { holder: holder(), pr_type: PrType::ExclusiveAccessAllRegistrants }),
        spc2_holder: None,
    };
    let change = Change { by: other(), preempt_and_abort: true };
    let (back, by) = decode_shared(&encode_shared(&s, Some(&change))).unwrap();
    assert_eq!(back, s);
    assert_eq!(by, Some(change));
}

fn arb_nexus() -> impl proptest::strategy::Strategy<Value = Nexus> {
    use proptest::prelude::*;
    ("[a-z.:-]{1,24}", proptest::option::of("[0-9a-f]{12}"), 0u16..4).prop_map(|(name, isid, port)| {
        let name = format!("iqn.{name}");
        Nexus::new(isid.map_or(name.clone(), |i| format!("{name},i,0x{i}")), port)
    })
}

fn arb_state() -> impl proptest::strategy::Strategy<Value = ReservationState> {
    use proptest::prelude::*;
    (
        any::<u32>(),
        any::<bool>(),
        proptest::collection::vec((arb_nexus(), 1u64..), 0..6),
        proptest::option::of((0usize..8, proptest::sample::select(PrType::ALL.to_vec()), arb_nexus())),
    )
        .prop_map(|(generation, aptpl, regs, res)| {
            let mut registrations: Vec<Registration> = Vec::new();
            for (nexus, key) in regs {
                if !registrations.iter().any(|r| r.nexus == nexus) {
                    registrations.push(Registration { nexus, key });
                }
            }
            let reservation = res.and_then(|(i, pr_type, stray)| match registrations.get(i) {
                Some(r) => Some(PersistentReservation { holder: r.nexus.clone(), pr_type }),
                // Only an all-registrants reservation may outlive its creator.
                None if pr_type.all_registrants() && !registrations.is_empty() => {
                    Some(PersistentReservation { holder: stray, pr_type })
                }
                None => None,
            });
            ReservationState { generation, aptpl, registrations, reservation, spc2_holder: None }
        })
}

proptest::proptest! {
    #[test]
    fn shared_encoding_round_trips(
        s in arb_state(),
        by in proptest::option::of((arb_nexus(), proptest::prelude::any::<bool>())),
    ) {
        let by = by.map(|(by, preempt_and_abort)| Change { by, preempt_and_abort });
        let bytes = encode_shared(&s, by.as_ref());
        let (back, back_by) = decode_shared(&bytes).unwrap();
        proptest::prop_assert_eq!(back, s);
        proptest::prop_assert_eq!(back_by, by);
    }

    #[test]
    fn shared_decoding_of_damaged_bytes_never_panics(
        s in arb_state(),
        flips in proptest::collection::vec((proptest::prelude::any::<usize>(), proptest::prelude::any::<u8>()), 1..4),
        cut in proptest::prelude::any::<usize>(),
    ) {
        let mut bytes = encode_shared(&s, None);
        for (at, v) in flips {
            let n = bytes.len();
            bytes[at % n] = v;
        }
        let keep = cut % (bytes.len() + 1);
        let _ = decode_shared(&bytes);
        let _ = decode_shared(&bytes[..keep]);
    }
}

/// Builds a PERSISTENT RESERVE OUT from its CDB and parameter list, as an
/// initiator sends it.
pub(crate) fn pr_out(action: u8, pr_type: u8, key: u64, sa_key: u64) -> PrOutRequest {
    let cdb = [0x5F, action, pr_type, 0, 0, 0, 0, 0, 24, 0];
    let Command::PersistentReserveOut(p) = Command::decode(&cdb).unwrap() else { unreachable!() };
    let mut data = vec![0u8; 24];
    data[..8].copy_from_slice(&key.to_be_bytes());
    data[8..16].copy_from_slice(&sa_key.to_be_bytes());
    PrOutRequest::decode(&p, &data).unwrap()
}

fn aborts(fx: &[SideEffect]) -> Vec<String> {
    let mut v: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            SideEffect::AbortTasks { nexus } => Some(nexus.initiator_port.clone()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn ua_set(fx: &[SideEffect]) -> Vec<(String, u8, u8)> {
    let mut v: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            SideEffect::UnitAttention { nexus, sense } => Some((nexus.initiator_port.clone(), sense.asc, sense.ascq)),
            _ => None,
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

#[test]
fn unit_attentions_from_the_change_of_state() {
    let by = |n: Nexus| Change { by: n, preempt_and_abort: false };
    use crate::sense::{REGISTRATIONS_PREEMPTED, RESERVATIONS_PREEMPTED, RESERVATIONS_RELEASED};
    let ua = |n: Nexus, c: crate::sense::SenseCode| SideEffect::UnitAttention { nexus: n, sense: c.sense() };
    let ro = reserved(PrType::WriteExclusiveRegistrantsOnly);
    // PREEMPT of the holder's key by the registrant.
    let mut after = ro.clone();
    after.registrations.retain(|r| r.nexus != holder());
    after.reservation =
        Some(PersistentReservation { holder: registrant(), pr_type: PrType::WriteExclusiveRegistrantsOnly });
    assert_eq!(unit_attentions(&ro, &after, Some(&by(registrant()))), vec![ua(holder(), REGISTRATIONS_PREEMPTED)]);
    // CLEAR by the holder.
    let cleared = ReservationState { generation: 3, ..Default::default() };
    assert_eq!(unit_attentions(&ro, &cleared, Some(&by(holder()))), vec![ua(registrant(), RESERVATIONS_PREEMPTED)]);
    // RELEASE of a registrants-only reservation, and of a Write Exclusive one.
    let mut released = ro.clone();
    released.reservation = None;
    assert_eq!(unit_attentions(&ro, &released, Some(&by(holder()))), vec![ua(registrant(), RESERVATIONS_RELEASED)]);
    let we = reserved(PrType::WriteExclusive);
    let mut we_released = we.clone();
    we_released.reservation = None;
    assert_eq!(unit_attentions(&we, &we_released, Some(&by(holder()))), vec![]);
    // A new registration, or the same state: nothing.
    let mut more = ro.clone();
    more.registrations.push(Registration { nexus: other(), key: 3 });
    assert_eq!(unit_attentions(&ro, &more, Some(&by(other()))), vec![]);
    assert_eq!(unit_attentions(&ro, &ro, None), vec![]);
    // The holder's own unregistration is not preempted.
    let mut gone = ro.clone();
    gone.registrations.retain(|r| r.nexus != holder());
    gone.reservation = None;
    assert_eq!(unit_attentions(&ro, &gone, Some(&by(holder()))), vec![ua(registrant(), RESERVATIONS_RELEASED)]);
}

proptest::proptest! {
    /// For every single PERSISTENT RESERVE OUT, the unit attentions another
    /// gateway derives from the old and new state are those the rules give
    /// the gateway that executed it.
    #[test]
    fn unit_attentions_from_states_match_the_rules(
        start in arb_state(),
        actor in 0usize..4,
        action in 0u8..7,
        type_i in 0usize..6,
        key_i in 0usize..4,
        sa_i in 0usize..5,
    ) {
        let nexuses: Vec<Nexus> = start.registrations.iter().map(|r| r.nexus.clone()).chain([other()]).collect();
        let actor = nexuses[actor % nexuses.len()].clone();
        let keys: Vec<u64> = start.registrations.iter().map(|r| r.key).chain([0, 77]).collect();
        let key = keys[key_i % keys.len()];
        let sa_key = keys[sa_i % keys.len()];
        let req = pr_out(action, PrType::ALL[type_i] as u8, key, sa_key);
        let mut next = start.clone();
        let mut fx = Vec::new();
        if next.apply_pr_out(&actor, &req, &mut fx).is_ok() {
            let change = Change { by: actor.clone(), preempt_and_abort: action == 5 };
            let derived = unit_attentions(&start, &next, Some(&change));
            proptest::prop_assert_eq!(ua_set(&derived), ua_set(&fx), "{:?} by {:?}", req, actor);
            proptest::prop_assert_eq!(aborts(&derived), aborts(&fx), "{:?} by {:?}", req, actor);
        }
    }
}

/// A store that records what it is asked and changes nothing.
#[derive(Default)]
struct RecordingStore(Mutex<Vec<(Nexus, PrOutRequest)>>);

impl ReservationStore for RecordingStore {
    fn apply(&self, nexus: Nexus, req: PrOutRequest) -> StoreFuture {
        self.0.lock().unwrap().push((nexus, req));
        Box::pin(async {
            Ok(vec![SideEffect::UnitAttention { nexus: other(), sense: crate::sense::RESERVATIONS_RELEASED.sense() }])
        })
    }
}

#[test]
fn a_shared_state_goes_through_the_store_and_is_trusted_only_under_its_lease() {
    let d = disk(16);
    let store = Arc::new(RecordingStore::default());
    d.set_reservation_store(store.clone());
    assert!(d.has_reservation_store());
    let not_ready = Err(ScsiError::Sense(crate::sense::BECOMING_READY.sense()));
    // No lease yet: refused, but for the unrestricted commands.
    assert_eq!(run(&d, &cdb10(0x28, 0, 0, 1)), not_ready);
    assert_eq!(run(&d, &[0, 0, 0, 0, 0, 0]), not_ready, "TEST UNIT READY");
    assert!(run(&d, &[0x12, 0, 0, 0, 36, 0]).is_ok(), "INQUIRY");
    assert!(!d.reservations_current());
    d.renew_reservations(monotonic_nanos() + 60_000_000_000);
    assert!(d.reservations_current());
    assert!(run(&d, &cdb10(0x28, 0, 0, 1)).is_ok());
    // PR OUT goes to the store, with its side effects; the copy is the store's to publish.
    let cmd = Command::decode(&[0x5F, 0, 0, 0, 0, 0, 0, 0, 24, 0]).unwrap();
    let mut data = vec![0u8; 24];
    data[15] = 9;
    let done = block_on(d.execute_with_effects(&cmd, data, &ExecContext::default()));
    assert_eq!(done.result, Ok(vec![]));
    assert_eq!(done.effects.len(), 1);
    assert_eq!(store.0.lock().unwrap().len(), 1);
    assert_eq!(store.0.lock().unwrap()[0].1.action(), crate::commands::persistent_reserve::PrOutAction::Register);
    assert_eq!(d.reservation_state().registrations, vec![]);
    // Published states: newer versions only.
    let s = ReservationState {
        generation: 1,
        registrations: vec![Registration { nexus: holder(), key: 9 }],
        ..Default::default()
    };
    assert!(d.publish_reservations(5, s.clone()).is_some());
    assert!(d.publish_reservations(5, ReservationState::default()).is_none());
    assert!(d.publish_reservations(4, ReservationState::default()).is_none());
    assert_eq!(*d.reservation_state(), s);
    // SPC-2 reservations are not shared: refused.
    assert_eq!(run(&d, &[0x16, 0, 0, 0, 0, 0]), Err(ScsiError::Sense(crate::sense::INVALID_OPCODE.sense())));
    assert_eq!(run(&d, &[0x17, 0, 0, 0, 0, 0]), Err(ScsiError::Sense(crate::sense::INVALID_OPCODE.sense())));
    // A broken watch, or a lease run out: refused again.
    d.set_reservations_stale();
    assert_eq!(run(&d, &cdb10(0x28, 0, 0, 1)), not_ready);
    d.renew_reservations(monotonic_nanos());
    assert_eq!(run(&d, &cdb10(0x28, 0, 0, 1)), not_ready);
}

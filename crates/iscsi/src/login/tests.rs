//! Login state machine tests: happy paths, authentication, failures.

use std::cell::Cell;
use std::collections::HashMap;

use md5::Md5;
use sha2::{Digest as _, Sha256};

use super::*;
use crate::chap::{ChapAlgorithm, ChapCredential};
use crate::negotiation::DigestPolicy;
use crate::params::Digest;
use crate::pdu::{NopOut, RESERVED_TAG};

const TARGET: &str = "iqn.2024-01.org.lunar:disk0";
const INITIATOR: &str = "iqn.1993-08.org.debian:01:host";

struct Registry {
    targets: Vec<LoginTarget>,
    discovery: Option<AuthPolicy>,
    next_tsih: Cell<u16>,
}

impl Registry {
    fn new(targets: Vec<LoginTarget>) -> Registry {
        Registry { targets, discovery: Some(AuthPolicy::None), next_tsih: Cell::new(0x10) }
    }
}

impl TargetRegistry for Registry {
    fn target(&self, name: &str) -> Option<LoginTarget> {
        self.targets.iter().find(|t| t.name == name).cloned()
    }
    fn discovery_auth(&self) -> Option<AuthPolicy> {
        self.discovery.clone()
    }
    fn allocate_tsih(&self) -> Option<u16> {
        let t = self.next_tsih.get();
        self.next_tsih.set(t + 1);
        Some(t)
    }
    fn session_exists(&self, _: &str, _: Isid, tsih: u16) -> bool {
        tsih == 0x99
    }
}

const ISID: Isid = Isid([0x80, 0x12, 0x34, 0x56, 0x00, 0x01]);

fn req(csg: LoginStage, nsg: LoginStage, transit: bool, keys: &[(&str, &str)]) -> LoginRequest {
    let pairs: Vec<KeyValue> = keys.iter().map(|(k, v)| KeyValue::new(*k, *v)).collect();
    LoginRequest {
        transit,
        continue_bit: false,
        csg,
        nsg,
        version_max: 0,
        version_min: 0,
        isid: ISID,
        tsih: 0,
        itt: 7,
        cid: 1,
        cmd_sn: 100,
        exp_stat_sn: 0,
        data: keys::encode(&pairs),
    }
}

use LoginStage::{FullFeature as Ffp, Operational as Op, Security as Sec};

fn kv(resp: &LoginResponse) -> HashMap<String, String> {
    keys::parse(&resp.data).unwrap().into_iter().map(|kv| (kv.key, kv.value)).collect()
}

fn cont(step: LoginStep) -> LoginResponse {
    match step {
        LoginStep::Continue(r) => {
            assert_eq!((r.status_class, r.status_detail), (0, 0));
            r
        }
        other => panic!("expected Continue, got {other:?}"),
    }
}

fn complete(step: LoginStep) -> (LoginResponse, LoginOutcome) {
    match step {
        LoginStep::Complete(r, o) => (r, *o),
        other => panic!("expected Complete, got {other:?}"),
    }
}

fn failed(step: LoginStep) -> LoginStatus {
    match step {
        LoginStep::Fail(r, f) => {
            assert_eq!((r.status_class, r.status_detail), (f.status.class, f.status.detail));
            assert!(!r.transit);
            f.status
        }
        other => panic!("expected Fail, got {other:?}"),
    }
}

fn session(reg: &Registry) -> LoginSession<&Registry> {
    LoginSession::new(reg, LoginConfig::default())
}

fn identity() -> Vec<(&'static str, &'static str)> {
    vec![("InitiatorName", INITIATOR), ("SessionType", "Normal"), ("TargetName", TARGET)]
}

fn with(
    mut a: Vec<(&'static str, &'static str)>,
    b: &[(&'static str, &'static str)],
) -> Vec<(&'static str, &'static str)> {
    a.extend_from_slice(b);
    a
}

const OPERATIONAL: &[(&str, &str)] = &[
    ("HeaderDigest", "CRC32C,None"),
    ("DataDigest", "None"),
    ("MaxConnections", "1"),
    ("InitialR2T", "No"),
    ("ImmediateData", "Yes"),
    ("MaxRecvDataSegmentLength", "65536"),
    ("MaxBurstLength", "16776192"),
    ("FirstBurstLength", "262144"),
    ("DefaultTime2Wait", "2"),
    ("DefaultTime2Retain", "0"),
    ("MaxOutstandingR2T", "1"),
    ("DataPDUInOrder", "Yes"),
    ("DataSequenceInOrder", "Yes"),
    ("ErrorRecoveryLevel", "0"),
    ("IFMarker", "No"),
    ("OFMarker", "No"),
];

#[test]
fn no_auth_happy_path() {
    let reg = Registry::new(vec![LoginTarget { alias: Some("disk zero".into()), ..LoginTarget::open(TARGET) }]);
    let mut s = session(&reg);
    let r = cont(s.handle(&req(Sec, Op, true, &with(identity(), &[("AuthMethod", "None")]))));
    assert!(r.transit);
    assert_eq!((r.csg, r.nsg), (Sec, Op));
    assert_eq!(r.tsih, 0);
    assert_eq!(r.itt, 7);
    assert_eq!(r.exp_cmd_sn, 100);
    let k = kv(&r);
    assert_eq!(k["AuthMethod"], "None");
    assert_eq!(k["TargetPortalGroupTag"], "1");
    assert_eq!(k["TargetAlias"], "disk zero");

    let (r2, out) = complete(s.handle(&req(Op, Ffp, true, OPERATIONAL)));
    assert!(r2.transit);
    assert_eq!((r2.csg, r2.nsg), (Op, Ffp));
    assert_eq!(r2.tsih, 0x10);
    assert_eq!(r2.stat_sn, r.stat_sn + 1);
    assert_eq!(r2.max_cmd_sn, 100 + 127);
    let k = kv(&r2);
    assert_eq!(k["HeaderDigest"], "CRC32C");
    assert_eq!(k["DataDigest"], "None");
    assert_eq!(k["InitialR2T"], "No");
    assert_eq!(k["MaxBurstLength"], "1048576");
    assert_eq!(k["FirstBurstLength"], "262144");
    assert_eq!(k["MaxRecvDataSegmentLength"], "262144");
    assert_eq!(k["IFMarker"], "No");
    assert!(!k.contains_key("AuthMethod"));

    assert_eq!(out.session_type, SessionType::Normal);
    assert_eq!(out.initiator_name, INITIATOR);
    assert_eq!(out.target_name.as_deref(), Some(TARGET));
    assert_eq!(out.isid, ISID);
    assert_eq!(out.tsih, 0x10);
    assert!(out.new_session);
    assert_eq!(out.cid, 1);
    assert_eq!(out.exp_cmd_sn, 100);
    assert_eq!(out.next_stat_sn, r2.stat_sn + 1);
    assert_eq!(out.params.header_digest, Digest::Crc32c);
    assert_eq!(out.params.initiator_max_recv_data_segment_length, 65536);
    assert_eq!(out.params.target_max_recv_data_segment_length, 262_144);
    assert_eq!(out.params.max_burst_length, 1 << 20);
    assert!(!out.params.initial_r2t);
    assert_eq!(out.chap_user, None);
    assert!(s.is_finished());
    // Nothing more is accepted.
    assert_eq!(failed(s.handle(&req(Op, Ffp, true, &[]))), LoginStatus::INVALID_DURING_LOGIN);
}

#[test]
fn login_straight_from_operational_stage() {
    let reg = Registry::new(vec![LoginTarget::open(TARGET)]);
    let mut s = session(&reg);
    let (r, out) = complete(s.handle(&req(Op, Ffp, true, &with(identity(), OPERATIONAL))));
    assert_eq!(kv(&r)["TargetPortalGroupTag"], "1");
    assert_eq!(out.params.header_digest, Digest::Crc32c);
}

#[test]
fn security_straight_to_full_feature() {
    let reg = Registry::new(vec![LoginTarget::open(TARGET)]);
    let mut s = session(&reg);
    let (r, _) = complete(s.handle(&req(Sec, Ffp, true, &with(identity(), &[("AuthMethod", "None")]))));
    assert_eq!((r.csg, r.nsg), (Sec, Ffp));
    assert_eq!(kv(&r)["MaxRecvDataSegmentLength"], "262144");
}

#[test]
fn stepwise_without_transit() {
    let reg = Registry::new(vec![LoginTarget::open(TARGET)]);
    let mut s = session(&reg);
    let r = cont(s.handle(&req(Sec, Op, false, &with(identity(), &[("AuthMethod", "None")]))));
    assert!(!r.transit);
    let r = cont(s.handle(&req(Sec, Op, true, &[])));
    assert!(r.transit);
    let r = cont(s.handle(&req(Op, Ffp, false, &[("MaxBurstLength", "8192")])));
    assert!(!r.transit);
    assert_eq!(kv(&r)["MaxBurstLength"], "8192");
    let (_, out) = complete(s.handle(&req(Op, Ffp, true, &[])));
    assert_eq!(out.params.max_burst_length, 8192);
    assert_eq!(out.params.first_burst_length, 8192);
}

fn md5_r(id: u8, secret: &[u8], c: &[u8]) -> Vec<u8> {
    let mut h = Md5::new();
    h.update([id]);
    h.update(secret);
    h.update(c);
    h.finalize().to_vec()
}

fn sha256_r(id: u8, secret: &[u8], c: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update([id]);
    h.update(secret);
    h.update(c);
    h.finalize().to_vec()
}

fn hex(b: &[u8]) -> String {
    let mut s = "0x".to_string();
    for x in b {
        s.push_str(&format!("{x:02X}"));
    }
    s
}

fn chap_target(policy: ChapPolicy) -> Registry {
    Registry::new(vec![LoginTarget {
        auth: AuthPolicy::Chap(policy),
        allowed_initiators: Some(vec![INITIATOR.to_uppercase()]),
        ..LoginTarget::open(TARGET)
    }])
}

const SECRET: &[u8] = b"initiator-secret-16";
const TSECRET: &[u8] = b"target-secret-1234";

/// Runs AuthMethod and CHAP_A; returns (CHAP_I, CHAP_C) sent by the target.
fn start_chap(s: &mut LoginSession<&Registry>, algs: &str) -> (u8, Vec<u8>) {
    let r = cont(s.handle(&req(Sec, Op, true, &with(identity(), &[("AuthMethod", "CHAP,None")]))));
    assert!(!r.transit, "no transit before authentication");
    assert_eq!(kv(&r)["AuthMethod"], "CHAP");
    let r = cont(s.handle(&req(Sec, Op, true, &[("CHAP_A", algs)])));
    assert!(!r.transit);
    let k = kv(&r);
    let id: u8 = k["CHAP_I"].parse().unwrap();
    let c = keys::decode_binary(&k["CHAP_C"]).unwrap();
    assert!(c.len() >= 16);
    (id, c)
}

#[test]
fn chap_md5_one_way() {
    let reg = chap_target(ChapPolicy::one_way(ChapCredential::new("alice", SECRET)));
    let mut s = session(&reg);
    let (id, c) = start_chap(&mut s, "5");
    let resp = hex(&md5_r(id, SECRET, &c));
    let r = cont(s.handle(&req(Sec, Op, true, &[("CHAP_N", "alice"), ("CHAP_R", &resp)])));
    assert!(r.transit);
    assert!(r.data.is_empty());
    let (_, out) = complete(s.handle(&req(Op, Ffp, true, &[])));
    assert_eq!(out.chap_user.as_deref(), Some("alice"));
}

#[test]
fn chap_sha256_with_base64_response() {
    let reg = chap_target(ChapPolicy::one_way(ChapCredential::new("alice", SECRET)));
    let mut s = session(&reg);
    let (id, c) = start_chap(&mut s, "8,7,5");
    assert_eq!(c.len(), 32);
    let resp = keys::encode_base64(&sha256_r(id, SECRET, &c));
    let (_, out) = complete(s.handle(&req(Sec, Ffp, true, &[("CHAP_N", "alice"), ("CHAP_R", &resp)])));
    assert_eq!(out.chap_user.as_deref(), Some("alice"));
}

#[test]
fn chap_mutual() {
    let policy = ChapPolicy::mutual(ChapCredential::new("alice", SECRET), ChapCredential::new("lunar", TSECRET));
    for (alg, h) in [("5", md5_r as fn(u8, &[u8], &[u8]) -> Vec<u8>), ("7", sha256_r)] {
        let reg = chap_target(policy.clone());
        let mut s = session(&reg);
        let (id, c) = start_chap(&mut s, alg);
        let resp = hex(&h(id, SECRET, &c));
        let my_c = [0x5au8; 16];
        let r = cont(s.handle(&req(
            Sec,
            Op,
            true,
            &[("CHAP_N", "alice"), ("CHAP_R", &resp), ("CHAP_I", "33"), ("CHAP_C", &hex(&my_c))],
        )));
        assert!(r.transit);
        let k = kv(&r);
        assert_eq!(k["CHAP_N"], "lunar");
        assert_eq!(keys::decode_binary(&k["CHAP_R"]).unwrap(), h(33, TSECRET, &my_c));
    }
}

#[test]
fn chap_failures() {
    let policy = ChapPolicy::one_way(ChapCredential::new("alice", SECRET));
    type KeysFor = Box<dyn Fn(u8, &[u8]) -> Vec<(&'static str, String)>>;
    let cases: Vec<(&str, KeysFor)> = vec![
        (
            "wrong secret",
            Box::new(|id, c| vec![("CHAP_N", "alice".into()), ("CHAP_R", hex(&md5_r(id, b"wrong-secret-xxx", c)))]),
        ),
        ("wrong user", Box::new(|id, c| vec![("CHAP_N", "mallory".into()), ("CHAP_R", hex(&md5_r(id, SECRET, c)))])),
        (
            "wrong id",
            Box::new(|id, c| vec![("CHAP_N", "alice".into()), ("CHAP_R", hex(&md5_r(id.wrapping_add(1), SECRET, c)))]),
        ),
        ("missing R", Box::new(|_, _| vec![("CHAP_N", "alice".into())])),
        ("garbage R", Box::new(|_, _| vec![("CHAP_N", "alice".into()), ("CHAP_R", "zzz".into())])),
        (
            "mutual unconfigured",
            Box::new(|id, c| {
                vec![
                    ("CHAP_N", "alice".into()),
                    ("CHAP_R", hex(&md5_r(id, SECRET, c))),
                    ("CHAP_I", "1".into()),
                    ("CHAP_C", "0x0102030405060708090a0b0c0d0e0f10".into()),
                ]
            }),
        ),
        (
            "half mutual",
            Box::new(|id, c| {
                vec![("CHAP_N", "alice".into()), ("CHAP_R", hex(&md5_r(id, SECRET, c))), ("CHAP_I", "1".into())]
            }),
        ),
    ];
    for (what, keys_for) in cases {
        let reg = chap_target(policy.clone());
        let mut s = session(&reg);
        let (id, c) = start_chap(&mut s, "5");
        let pairs = keys_for(id, &c);
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(failed(s.handle(&req(Sec, Op, true, &pairs))), LoginStatus::AUTHENTICATION_FAILURE, "{what}");
    }
}

#[test]
fn chap_reflected_challenge_is_refused() {
    let policy = ChapPolicy::mutual(ChapCredential::new("alice", SECRET), ChapCredential::new("lunar", TSECRET));
    let reg = chap_target(policy);
    let mut s = session(&reg);
    let (id, c) = start_chap(&mut s, "5");
    let resp = hex(&md5_r(id, SECRET, &c));
    let status = failed(s.handle(&req(
        Sec,
        Op,
        true,
        &[("CHAP_N", "alice"), ("CHAP_R", &resp), ("CHAP_I", "9"), ("CHAP_C", &hex(&c))],
    )));
    assert_eq!(status, LoginStatus::AUTHENTICATION_FAILURE);
}

#[test]
fn chap_required_paths() {
    let policy = ChapPolicy {
        require_mutual: true,
        ..ChapPolicy::mutual(ChapCredential::new("alice", SECRET), ChapCredential::new("lunar", TSECRET))
    };
    // Only None offered.
    let reg = chap_target(policy.clone());
    let mut s = session(&reg);
    assert_eq!(
        failed(s.handle(&req(Sec, Op, true, &with(identity(), &[("AuthMethod", "None")])))),
        LoginStatus::AUTHENTICATION_FAILURE
    );
    // Security stage skipped.
    let mut s = session(&reg);
    assert_eq!(failed(s.handle(&req(Op, Ffp, true, &identity()))), LoginStatus::AUTHENTICATION_FAILURE);
    // No AuthMethod at all but asks to move on.
    let mut s = session(&reg);
    assert_eq!(failed(s.handle(&req(Sec, Op, true, &identity()))), LoginStatus::AUTHENTICATION_FAILURE);
    // Unsupported algorithm.
    let mut s = session(&reg);
    cont(s.handle(&req(Sec, Op, false, &with(identity(), &[("AuthMethod", "CHAP")]))));
    assert_eq!(failed(s.handle(&req(Sec, Op, false, &[("CHAP_A", "6,8")]))), LoginStatus::AUTHENTICATION_FAILURE);
    // Mutual required but one-way attempted.
    let mut s = session(&reg);
    let (id, c) = start_chap(&mut s, "5");
    let resp = hex(&md5_r(id, SECRET, &c));
    assert_eq!(
        failed(s.handle(&req(Sec, Op, true, &[("CHAP_N", "alice"), ("CHAP_R", &resp)]))),
        LoginStatus::AUTHENTICATION_FAILURE
    );
    // CHAP_R before CHAP_A.
    let mut s = session(&reg);
    cont(s.handle(&req(Sec, Op, false, &with(identity(), &[("AuthMethod", "CHAP")]))));
    assert_eq!(
        failed(s.handle(&req(Sec, Op, false, &[("CHAP_N", "alice"), ("CHAP_R", "0x00")]))),
        LoginStatus::AUTHENTICATION_FAILURE
    );
}

#[test]
fn no_auth_target_refuses_chap_only() {
    let reg = Registry::new(vec![LoginTarget::open(TARGET)]);
    let mut s = session(&reg);
    assert_eq!(
        failed(s.handle(&req(Sec, Op, true, &with(identity(), &[("AuthMethod", "CHAP")])))),
        LoginStatus::AUTHENTICATION_FAILURE
    );
}

#[test]
fn unknown_target_and_acl() {
    let reg = chap_target(ChapPolicy::one_way(ChapCredential::new("alice", SECRET)));
    let mut s = session(&reg);
    let keys = [("InitiatorName", INITIATOR), ("TargetName", "iqn.2024-01.org.lunar:nope")];
    assert_eq!(failed(s.handle(&req(Sec, Op, true, &keys))), LoginStatus::NOT_FOUND);
    let mut s = session(&reg);
    let keys = [("InitiatorName", "iqn.2000-01.com.evil:x"), ("TargetName", TARGET)];
    assert_eq!(failed(s.handle(&req(Sec, Op, true, &keys))), LoginStatus::AUTHORIZATION_FAILURE);
}

#[test]
fn missing_parameters() {
    let reg = Registry::new(vec![LoginTarget::open(TARGET)]);
    let mut s = session(&reg);
    assert_eq!(failed(s.handle(&req(Sec, Op, true, &[("TargetName", TARGET)]))), LoginStatus::MISSING_PARAMETER);
    let mut s = session(&reg);
    assert_eq!(failed(s.handle(&req(Sec, Op, true, &[("InitiatorName", INITIATOR)]))), LoginStatus::MISSING_PARAMETER);
}

#[test]
fn discovery_session() {
    let mut reg = Registry::new(vec![LoginTarget::open(TARGET)]);
    let keys = [("InitiatorName", INITIATOR), ("SessionType", "Discovery"), ("AuthMethod", "None")];
    let mut s = session(&reg);
    let r = cont(s.handle(&req(Sec, Op, true, &keys)));
    assert!(!kv(&r).contains_key("TargetPortalGroupTag"));
    let (r, out) = complete(s.handle(&req(
        Op,
        Ffp,
        true,
        &[("MaxConnections", "1"), ("HeaderDigest", "None"), ("ImmediateData", "Yes")],
    )));
    let k = kv(&r);
    assert_eq!(k["MaxConnections"], "Irrelevant");
    assert_eq!(k["ImmediateData"], "Irrelevant");
    assert_eq!(k["HeaderDigest"], "None");
    assert_eq!(out.session_type, SessionType::Discovery);
    assert_eq!(out.target_name, None);

    reg.discovery = None;
    let mut s = session(&reg);
    assert_eq!(failed(s.handle(&req(Sec, Op, true, &keys))), LoginStatus::SESSION_TYPE_NOT_SUPPORTED);
    let mut s = session(&reg);
    assert_eq!(
        failed(s.handle(&req(Sec, Op, true, &[("InitiatorName", INITIATOR), ("SessionType", "Bogus")]))),
        LoginStatus::SESSION_TYPE_NOT_SUPPORTED
    );
}

#[test]
fn discovery_with_chap() {
    let mut reg = Registry::new(vec![]);
    reg.discovery = Some(AuthPolicy::Chap(ChapPolicy::one_way(ChapCredential::new("disc", SECRET))));
    let mut s = session(&reg);
    let r = cont(s.handle(&req(
        Sec,
        Op,
        true,
        &[("InitiatorName", INITIATOR), ("SessionType", "Discovery"), ("AuthMethod", "CHAP")],
    )));
    assert_eq!(kv(&r)["AuthMethod"], "CHAP");
    let r = cont(s.handle(&req(Sec, Op, true, &[("CHAP_A", "5")])));
    let k = kv(&r);
    let id: u8 = k["CHAP_I"].parse().unwrap();
    let c = keys::decode_binary(&k["CHAP_C"]).unwrap();
    let resp = hex(&md5_r(id, SECRET, &c));
    let r = cont(s.handle(&req(Sec, Op, true, &[("CHAP_N", "disc"), ("CHAP_R", &resp)])));
    assert!(r.transit);
}

#[test]
fn multi_pdu_request_with_c_bit() {
    let reg = Registry::new(vec![LoginTarget::open(TARGET)]);
    let mut s = session(&reg);
    let full = req(Sec, Op, true, &with(identity(), &[("AuthMethod", "None")]));
    // Split in the middle of a key.
    let (a, b) = full.data.split_at(20);
    let mut p1 = full.clone();
    p1.transit = false;
    p1.continue_bit = true;
    p1.data = a.to_vec();
    let r = cont(s.handle(&p1));
    assert!(r.data.is_empty() && !r.transit && !r.continue_bit);
    let mut p2 = full.clone();
    p2.data = b.to_vec();
    let r = cont(s.handle(&p2));
    assert!(r.transit);
    assert_eq!(kv(&r)["AuthMethod"], "None");
}

#[test]
fn long_response_uses_c_bit() {
    let reg = Registry::new(vec![LoginTarget::open(TARGET)]);
    let mut s = session(&reg);
    // 200 unknown keys: each answered NotUnderstood, > 8192 bytes in all.
    let names: Vec<String> = (0..200).map(|i| format!("X-com.example.key-number-{i:04}")).collect();
    let mut keys: Vec<(&str, &str)> = identity();
    keys.extend(names.iter().map(|n| (n.as_str(), "1")));
    keys.push(("AuthMethod", "None"));
    let first = req(Sec, Op, true, &keys);
    let r = cont(s.handle(&first));
    assert!(r.continue_bit && !r.transit);
    assert_eq!(r.data.len(), 8192);
    let mut text = r.data.clone();
    let mut empty = first.clone();
    empty.data.clear();
    loop {
        let r = cont(s.handle(&empty));
        text.extend_from_slice(&r.data);
        if !r.continue_bit {
            assert!(r.transit);
            assert_eq!(r.nsg, Op);
            break;
        }
    }
    let pairs = keys::parse(&text).unwrap();
    assert_eq!(pairs.iter().filter(|kv| kv.value == "NotUnderstood").count(), 200);
    // The stage moved only after the last chunk.
    complete(s.handle(&req(Op, Ffp, true, &[])));
}

#[test]
fn protocol_violations_close_the_login() {
    let reg = Registry::new(vec![LoginTarget::open(TARGET)]);
    let id = with(identity(), &[("AuthMethod", "None")]);

    let mut r = req(Sec, Op, true, &id);
    r.continue_bit = true;
    assert_eq!(failed(session(&reg).handle(&r)), LoginStatus::INITIATOR_ERROR);

    let mut r = req(Sec, Op, true, &id);
    r.version_min = 1;
    r.version_max = 2;
    assert_eq!(failed(session(&reg).handle(&r)), LoginStatus::UNSUPPORTED_VERSION);

    // NSG backwards, reserved stage, FFP as CSG.
    assert_eq!(failed(session(&reg).handle(&req(Op, Sec, true, &id))), LoginStatus::INITIATOR_ERROR);
    assert_eq!(failed(session(&reg).handle(&req(Sec, LoginStage::Reserved, true, &id))), LoginStatus::INITIATOR_ERROR);
    assert_eq!(failed(session(&reg).handle(&req(Ffp, Ffp, true, &id))), LoginStatus::INITIATOR_ERROR);

    // Wrong CSG after the transition.
    let mut s = session(&reg);
    cont(s.handle(&req(Sec, Op, true, &id)));
    assert_eq!(failed(s.handle(&req(Sec, Op, true, &[]))), LoginStatus::INITIATOR_ERROR);

    // ISID changes.
    let mut s = session(&reg);
    cont(s.handle(&req(Sec, Op, false, &id)));
    let mut r = req(Sec, Op, true, &[]);
    r.isid = Isid([0; 6]);
    assert_eq!(failed(s.handle(&r)), LoginStatus::INITIATOR_ERROR);

    // Duplicate key in one text, and redeclared across PDUs.
    let mut s = session(&reg);
    let dup = with(id.clone(), &[("MaxBurstLength", "8192"), ("MaxBurstLength", "8192")]);
    assert_eq!(failed(s.handle(&req(Sec, Op, true, &dup))), LoginStatus::INITIATOR_ERROR);
    let mut s = session(&reg);
    cont(s.handle(&req(Sec, Op, true, &id)));
    cont(s.handle(&req(Op, Ffp, false, &[("MaxBurstLength", "8192")])));
    assert_eq!(failed(s.handle(&req(Op, Ffp, true, &[("MaxBurstLength", "4096")]))), LoginStatus::INITIATOR_ERROR);
    let mut s = session(&reg);
    cont(s.handle(&req(Sec, Op, true, &id)));
    assert_eq!(failed(s.handle(&req(Op, Ffp, true, &[("InitiatorName", INITIATOR)]))), LoginStatus::INITIATOR_ERROR);
    // Security keys in the operational stage.
    let mut s = session(&reg);
    cont(s.handle(&req(Sec, Op, true, &id)));
    assert_eq!(failed(s.handle(&req(Op, Ffp, true, &[("CHAP_A", "5")]))), LoginStatus::INITIATOR_ERROR);
    // Malformed text.
    let mut r = req(Sec, Op, true, &id);
    r.data.pop();
    assert_eq!(failed(session(&reg).handle(&r)), LoginStatus::INITIATOR_ERROR);
}

#[test]
fn non_login_pdu_during_login() {
    let reg = Registry::new(vec![LoginTarget::open(TARGET)]);
    let mut s = session(&reg);
    let nop = Pdu::NopOut(NopOut {
        immediate: true,
        lun: 0,
        itt: 3,
        ttt: RESERVED_TAG,
        cmd_sn: 0,
        exp_stat_sn: 0,
        data: vec![],
    });
    match s.handle_pdu(&nop) {
        LoginStep::Fail(r, f) => {
            assert_eq!(f.status, LoginStatus::INVALID_DURING_LOGIN);
            assert_eq!(r.itt, 3);
            assert_eq!(r.status_detail, 0x0b);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn adding_a_connection_needs_an_existing_session() {
    let reg = Registry::new(vec![LoginTarget::open(TARGET)]);
    let id = with(identity(), &[("AuthMethod", "None")]);
    let mut r = req(Sec, Ffp, true, &id);
    r.tsih = 0x42;
    assert_eq!(failed(session(&reg).handle(&r)), LoginStatus::SESSION_DOES_NOT_EXIST);
    let mut r = req(Sec, Ffp, true, &with(id, &[("MaxBurstLength", "8192")]));
    r.tsih = 0x99;
    let (resp, out) = complete(session(&reg).handle(&r));
    assert_eq!(resp.tsih, 0x99);
    assert!(!out.new_session);
    assert_eq!(kv(&resp)["MaxBurstLength"], "Irrelevant");
}

#[test]
fn target_offers_delay_the_transition() {
    let reg = Registry::new(vec![LoginTarget::open(TARGET)]);
    let config = LoginConfig {
        limits: TargetLimits {
            header_digest: DigestPolicy::Required,
            max_burst_length: 65536,
            ..TargetLimits::default()
        },
        ..LoginConfig::default()
    };
    let mut s = LoginSession::new(&reg, config);
    cont(s.handle(&req(Sec, Op, true, &with(identity(), &[("AuthMethod", "None")]))));
    let r = cont(s.handle(&req(Op, Ffp, true, &[("DataDigest", "None")])));
    assert!(!r.transit, "target must wait for answers to its offers");
    let k = kv(&r);
    assert_eq!(k["HeaderDigest"], "CRC32C");
    assert_eq!(k["MaxBurstLength"], "65536");
    let (_, out) = complete(s.handle(&req(Op, Ffp, true, &[("HeaderDigest", "CRC32C"), ("MaxBurstLength", "65536")])));
    assert_eq!(out.params.header_digest, Digest::Crc32c);
    assert_eq!(out.params.max_burst_length, 65536);
    assert_eq!(out.params.first_burst_length, 65536);
}

#[test]
fn status_codes() {
    assert_eq!(LoginStatus::AUTHENTICATION_FAILURE.code(), 0x0201);
    assert_eq!(LoginStatus::AUTHORIZATION_FAILURE.code(), 0x0202);
    assert_eq!(LoginStatus::NOT_FOUND.code(), 0x0203);
    assert_eq!(LoginStatus::MISSING_PARAMETER.code(), 0x0207);
    assert_eq!(LoginStatus::SESSION_TYPE_NOT_SUPPORTED.code(), 0x0209);
    assert_eq!(LoginStatus::SESSION_DOES_NOT_EXIST.code(), 0x020a);
    assert_eq!(LoginStatus::TARGET_ERROR.code(), 0x0300);
    let _ = ChapAlgorithm::Md5;
}

mod fuzz {
    use super::*;
    use proptest::prelude::*;

    fn any_stage() -> impl Strategy<Value = LoginStage> {
        (0u8..4).prop_map(LoginStage::from_code)
    }

    fn any_keys() -> impl Strategy<Value = Vec<(String, String)>> {
        let key = prop_oneof![
            Just("InitiatorName".to_string()),
            Just("TargetName".to_string()),
            Just("SessionType".to_string()),
            Just("AuthMethod".to_string()),
            Just("CHAP_A".to_string()),
            Just("CHAP_N".to_string()),
            Just("CHAP_R".to_string()),
            Just("CHAP_I".to_string()),
            Just("CHAP_C".to_string()),
            Just("MaxBurstLength".to_string()),
            Just("HeaderDigest".to_string()),
            "[A-Za-z_]{1,8}",
        ];
        let value = prop_oneof![
            Just(INITIATOR.to_string()),
            Just(TARGET.to_string()),
            Just("CHAP,None".to_string()),
            Just("5".to_string()),
            Just("0x00112233".to_string()),
            Just("Discovery".to_string()),
            "[ -~]{0,12}",
        ];
        prop::collection::vec((key, value), 0..6)
    }

    proptest! {
        #[test]
        fn random_logins_never_panic(steps in prop::collection::vec(
            (any::<[bool; 2]>(), any_stage(), any_stage(), any::<u16>(), any_keys()), 1..8)) {
            let reg = chap_target(ChapPolicy::mutual(
                ChapCredential::new("alice", SECRET),
                ChapCredential::new("lunar", TSECRET),
            ));
            let mut s = session(&reg);
            for ([t, c], csg, nsg, tsih, keys) in steps {
                let pairs: Vec<(&str, &str)> =
                    keys.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let mut r = req(csg, nsg, t, &pairs);
                r.continue_bit = c;
                r.tsih = tsih % 3;
                match s.handle(&r) {
                    LoginStep::Continue(resp) => prop_assert_eq!(resp.status_class, 0),
                    LoginStep::Complete(resp, _) => prop_assert!(resp.transit),
                    LoginStep::Fail(resp, _) => {
                        prop_assert!(resp.status_class >= 2);
                        prop_assert!(s.is_finished());
                    }
                }
            }
        }
    }
}

/// What a refused login tells the control plane (`session.login_failed`).
#[test]
fn refused_logins_are_described_for_the_control_plane() {
    use crate::server::LoginFailureInfo;
    let peer: std::net::SocketAddr = "192.0.2.1:50000".parse().unwrap();
    let fail = |step: LoginStep| match step {
        LoginStep::Fail(_, f) => f,
        other => panic!("not a failure: {other:?}"),
    };
    let reg = chap_target(ChapPolicy::one_way(ChapCredential::new("alice", SECRET)));

    // A wrong CHAP secret.
    let mut s = session(&reg);
    let (id, c) = start_chap(&mut s, "5");
    let r = hex(&md5_r(id, b"wrong-secret-xxx", &c));
    let f = fail(s.handle(&req(Sec, Op, true, &[("CHAP_N", "alice"), ("CHAP_R", r.as_str())])));
    let info = LoginFailureInfo::new(&s, &f, peer);
    assert_eq!(info.reason, "chap");
    assert_eq!(info.status, 0x0201);
    assert_eq!(info.initiator.as_deref(), Some(INITIATOR));
    assert_eq!(info.target.as_deref(), Some(TARGET));
    assert_eq!(info.chap_user.as_deref(), Some("alice"));
    assert_eq!(info.peer, peer);
    assert!(!info.detail.is_empty());

    // CHAP required, the initiator offers only None.
    let mut s = session(&reg);
    let f = fail(s.handle(&req(Sec, Op, true, &with(identity(), &[("AuthMethod", "None")]))));
    let info = LoginFailureInfo::new(&s, &f, peer);
    assert_eq!((info.reason, info.chap_user), ("chap", None));

    // No such target; an initiator outside the ACL.
    let mut s = session(&reg);
    let keys = [("InitiatorName", INITIATOR), ("TargetName", "iqn.2024-01.org.lunar:nope")];
    let f = fail(s.handle(&req(Sec, Op, true, &keys)));
    let info = LoginFailureInfo::new(&s, &f, peer);
    assert_eq!((info.reason, info.target.as_deref()), ("not-found", Some("iqn.2024-01.org.lunar:nope")));
    let mut s = session(&reg);
    let keys = [("InitiatorName", "iqn.2000-01.com.evil:x"), ("TargetName", TARGET)];
    let f = fail(s.handle(&req(Sec, Op, true, &keys)));
    let info = LoginFailureInfo::new(&s, &f, peer);
    assert_eq!((info.reason, info.initiator.as_deref()), ("authorization", Some("iqn.2000-01.com.evil:x")));

    // No CHAP configured: a method mismatch is an authentication failure, not CHAP's.
    let open = Registry::new(vec![LoginTarget::open(TARGET)]);
    let mut s = session(&open);
    let f = fail(s.handle(&req(Sec, Op, true, &with(identity(), &[("AuthMethod", "CHAP")]))));
    assert_eq!(LoginFailureInfo::new(&s, &f, peer).reason, "authentication");
}

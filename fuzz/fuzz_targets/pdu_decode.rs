//! The iSCSI byte stream of one connection, as the target reads it.
//!
//! Input: one flag byte (bit 0: header digest, bit 1: data digest during
//! login; bit 2: a CHAP target is the default), then the bytes the
//! initiator sends. PDUs are decoded back to back (`decode_frame`), as a
//! connection does; Login Requests go to the login state machine
//! (`LoginSession`) until it completes or fails; after a completed login
//! the digests negotiated apply, and Text Requests go to the full-feature
//! text exchange (`TextExchange` + `full_feature_answers`, SendTargets
//! included). Checked: no panic; every decoded PDU and every response the
//! target builds re-encodes to bytes that decode to the same PDU; the text
//! the target answers stays within the limits it enforces. Allocation
//! bounds are libFuzzer's (`-malloc_limit_mb`, `-rss_limit_mb`, set by
//! scripts/fuzz.sh).
//!
//! Also: two-step decoding (`decode_bhs` + `Pdu::decode`) of the first PDU
//! with arbitrary split points, and the text key parser on the raw bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunar_iscsi::chap::{ChapAlgorithm, ChapCredential, ChapPolicy};
use lunar_iscsi::keys;
use lunar_iscsi::login::{AuthPolicy, LoginConfig, LoginSession, LoginStep, LoginTarget, TargetRegistry};
use lunar_iscsi::params::SessionType;
use lunar_iscsi::pdu::{decode_bhs, decode_frame, Pdu, BHS_LEN};
use lunar_iscsi::text::{full_feature_answers, SendTargetsEntry, TextExchange};

const OPEN: &str = "iqn.2024-01.org.lunar:fuzz";
const CHAP: &str = "iqn.2024-01.org.lunar:chap";

struct Registry;

impl TargetRegistry for Registry {
    fn target(&self, name: &str) -> Option<LoginTarget> {
        if name == OPEN {
            return Some(LoginTarget::open(name));
        }
        if name == CHAP {
            let mut t = LoginTarget::open(name);
            t.auth = AuthPolicy::Chap(ChapPolicy {
                initiator: ChapCredential::new("user", b"secret-12345".to_vec()),
                target: Some(ChapCredential::new("target", b"tsecret-12345".to_vec())),
                require_mutual: false,
                algorithms: vec![ChapAlgorithm::Sha256, ChapAlgorithm::Md5],
            });
            return Some(t);
        }
        None
    }
    fn discovery_auth(&self) -> Option<AuthPolicy> {
        Some(AuthPolicy::None)
    }
    fn allocate_tsih(&self) -> Option<u16> {
        Some(1)
    }
    fn session_exists(&self, _initiator: &str, _isid: lunar_iscsi::pdu::Isid, tsih: u16) -> bool {
        tsih == 1
    }
}

/// `pdu` encodes to bytes that decode back to `pdu`, whole.
fn round_trip(pdu: &Pdu, hd: bool, dd: bool) {
    let wire = pdu.encode(hd, dd);
    let again = decode_frame(&wire, hd, dd);
    assert!(matches!(again, Ok(Some((ref p, n))) if p == pdu && n == wire.len()), "round trip of {pdu:?}: {again:?}");
}

fn entries() -> Vec<SendTargetsEntry> {
    vec![
        SendTargetsEntry {
            name: OPEN.into(),
            portals: vec![("127.0.0.1:3260".parse().unwrap(), 1), ("[::1]:3260".parse().unwrap(), 1)],
        },
        SendTargetsEntry { name: CHAP.into(), portals: vec![("127.0.0.1:3261".parse().unwrap(), 2)] },
    ]
}

struct Phase {
    session_type: SessionType,
    target: Option<String>,
    max_data: u32,
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (mut hd, mut dd) = (flags & 1 != 0, flags & 2 != 0);

    // Stream framing: decode PDUs back to back, as a connection would.
    let mut buf = rest;
    let mut login = LoginSession::new(Registry, LoginConfig::default());
    let mut full: Option<Phase> = None;
    let mut text = TextExchange::new();
    let visible = entries();
    let mut stat_sn = 0u32;
    while let Ok(Some((pdu, used))) = decode_frame(buf, hd, dd) {
        assert!(used > 0 && used <= buf.len());
        // Whatever decodes must re-encode to something that decodes equal.
        round_trip(&pdu, hd, dd);
        buf = &buf[used..];
        match &mut full {
            None => match login.handle_pdu(&pdu) {
                LoginStep::Continue(resp) => round_trip(&Pdu::LoginResponse(resp), hd, dd),
                LoginStep::Fail(resp, _) => {
                    round_trip(&Pdu::LoginResponse(resp), hd, dd);
                    assert!(login.is_finished());
                    break;
                }
                LoginStep::Complete(resp, outcome) => {
                    round_trip(&Pdu::LoginResponse(resp), hd, dd);
                    assert!(login.is_finished());
                    let p = &outcome.params;
                    // Digests apply from the next PDU (RFC 7143 §13.1).
                    hd = p.header_digest.enabled();
                    dd = p.data_digest.enabled();
                    assert!(p.initiator_max_recv_data_segment_length >= 512);
                    stat_sn = outcome.next_stat_sn;
                    full = Some(Phase {
                        session_type: outcome.session_type,
                        target: outcome.target_name.clone(),
                        max_data: p.initiator_max_recv_data_segment_length,
                    });
                }
            },
            Some(phase) => {
                let Pdu::TextRequest(req) = pdu else {
                    continue;
                };
                let (st, target) = (phase.session_type, phase.target.as_deref());
                match text.handle(&req, phase.max_data, |pairs| full_feature_answers(pairs, st, target, &visible)) {
                    Ok(reply) => {
                        assert!(reply.data.len() <= (phase.max_data as usize).max(512));
                        let resp = reply.into_response(&req, stat_sn, req.cmd_sn, req.cmd_sn.wrapping_add(64));
                        stat_sn = stat_sn.wrapping_add(1);
                        round_trip(&Pdu::TextResponse(resp), hd, dd);
                    }
                    Err(e) => {
                        let _ = e.reject_reason();
                    }
                }
            }
        }
    }

    // Two-step decoding with arbitrary split points.
    if let Some(head) = rest.first_chunk::<BHS_LEN>() {
        if let Ok(bhs) = decode_bhs(head) {
            let tail = rest.get(BHS_LEN..).unwrap_or_default();
            let ahs_len = bhs.total_ahs_length().min(tail.len());
            let (ahs, body) = tail.split_at(ahs_len);
            let _ = Pdu::decode(&bhs, ahs, body);
        }
    }

    if let Ok(pairs) = keys::parse(rest) {
        // What parses re-encodes to text that parses to the same pairs.
        let again = keys::parse(&keys::encode(&pairs));
        assert_eq!(again.as_ref(), Ok(&pairs));
    }
    let _ = keys::parse_allowing_duplicates(rest);
});

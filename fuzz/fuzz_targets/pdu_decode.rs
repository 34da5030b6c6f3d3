//! Fuzzes every decoder that sees untrusted bytes: PDU framing and
//! decoding (with and without digests), text key lists, and the login
//! state machine fed whatever Login Requests decode.
//!
//! Run with `cargo fuzz run pdu_decode` from the repository root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunar_iscsi::login::{AuthPolicy, LoginConfig, LoginSession, TargetConfig, TargetRegistry};
use lunar_iscsi::pdu::{decode_bhs, decode_frame, Pdu, BHS_LEN};

struct OneTarget;

impl TargetRegistry for OneTarget {
    fn target(&self, name: &str) -> Option<TargetConfig> {
        (name == "iqn.2024-01.org.lunar:fuzz").then(|| TargetConfig::open(name))
    }
    fn discovery_auth(&self) -> Option<AuthPolicy> {
        Some(AuthPolicy::None)
    }
    fn allocate_tsih(&self) -> Option<u16> {
        Some(1)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let (hd, dd) = (flags & 1 != 0, flags & 2 != 0);

    // Stream framing: decode PDUs back to back, as a connection would.
    let mut buf = rest;
    let mut login = LoginSession::new(OneTarget, LoginConfig::default());
    while let Ok(Some((pdu, used))) = decode_frame(buf, hd, dd) {
        // Whatever decodes must re-encode to something that decodes equal.
        let wire = pdu.encode(hd, dd);
        let again = decode_frame(&wire, hd, dd);
        assert!(matches!(again, Ok(Some((ref p, n))) if *p == pdu && n == wire.len()));
        let _ = login.handle_pdu(&pdu);
        buf = buf.get(used..).unwrap_or_default();
        if used == 0 {
            break;
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

    let _ = lunar_iscsi::keys::parse(rest);
});

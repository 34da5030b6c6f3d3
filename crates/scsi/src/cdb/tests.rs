//! Decoder tests across the table, and the never-panics property.

use proptest::prelude::*;

use super::table::OPCODES;
use super::*;

#[test]
fn unknown_opcodes() {
    assert_eq!(Command::decode(&[0xFF; 16]), Err(ScsiError::InvalidOpcode(0xFF)));
    assert_eq!(Command::decode(&[0x7F; 32]), Err(ScsiError::InvalidOpcode(0x7F)));
    assert_eq!(Command::decode(&[0x04, 0, 0, 0, 0, 0]), Err(ScsiError::InvalidOpcode(0x04)), "FORMAT UNIT");
    assert!(matches!(Command::decode(&[]), Err(ScsiError::CdbTooShort { .. })));
    assert!(matches!(Command::decode(&[0x9E]), Err(ScsiError::CdbTooShort { .. })));
    let s = ScsiError::InvalidOpcode(0xFF).sense();
    assert_eq!((s.key, s.asc, s.ascq), (crate::SenseKey::IllegalRequest, 0x20, 0x00));
}

#[test]
fn padded_cdbs_decode() {
    let mut cdb = [0u8; 32];
    cdb[0] = 0x28;
    cdb[8] = 1;
    cdb[20] = 0xFF; // beyond READ(10): ignored
    assert!(matches!(Command::decode(&cdb), Ok(Command::Read { blocks: 1, cdb_len: 10, .. })));
}

#[test]
fn every_entry_decodes_its_zero_cdb_and_reports_its_opcode() {
    for e in OPCODES {
        let mut cdb = vec![0u8; e.cdb_len()];
        cdb[0] = e.opcode;
        if let Some(sa) = e.service_action {
            cdb[1] = sa;
        }
        // Options that need a nonzero field to be valid.
        let cmd = match Command::decode(&cdb) {
            Ok(c) => c,
            Err(err) => panic!("{}: {err:?}", e.name),
        };
        assert_eq!(cmd.opcode(), e.opcode, "{}", e.name);
        assert_eq!(cmd.service_action(), e.service_action, "{}", e.name);
        assert_eq!(cmd.name(), e.name);
        // NACA in the CONTROL byte is always refused.
        let last = cdb.len() - 1;
        cdb[last] = 0x04;
        assert_eq!(Command::decode(&cdb), Err(ScsiError::field(last, 2)), "{}", e.name);
        // A CDB one byte short is refused.
        cdb[last] = 0;
        assert!(matches!(Command::decode(&cdb[..last]), Err(ScsiError::CdbTooShort { .. })), "{}", e.name);
    }
}

#[test]
fn every_reserved_bit_is_refused() {
    for e in OPCODES {
        for byte in 1..e.cdb_len() {
            for bit in 0..8u8 {
                if e.allowed(byte) & (1 << bit) != 0 || (byte == 1 && e.service_action.is_some() && bit < 5) {
                    continue;
                }
                let mut cdb = vec![0u8; e.cdb_len()];
                cdb[0] = e.opcode;
                if let Some(sa) = e.service_action {
                    cdb[1] = sa;
                }
                cdb[byte] |= 1 << bit;
                assert_eq!(Command::decode(&cdb), Err(ScsiError::field(byte, bit)), "{} byte {byte} bit {bit}", e.name);
            }
        }
    }
}

#[test]
fn unit_attention_exemptions() {
    let exempt = [vec![0x12, 0, 0, 0, 36, 0], vec![0x03, 0, 0, 0, 18, 0], vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]];
    for c in exempt {
        assert!(Command::decode(&c).unwrap().is_unit_attention_exempt());
    }
    assert!(!Command::decode(&[0, 0, 0, 0, 0, 0]).unwrap().is_unit_attention_exempt());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 20_000, ..ProptestConfig::default() })]

    #[test]
    fn decode_never_panics(cdb in proptest::collection::vec(any::<u8>(), 0..40)) {
        if let Ok(cmd) = Command::decode(&cdb) {
            // Whatever decodes reports its own opcode and sane lengths.
            prop_assert_eq!(cmd.opcode(), cdb[0]);
            let _ = cmd.direction();
            let _ = cmd.data_out_len(4096);
            let _ = cmd.name();
        }
    }

    #[test]
    fn decode_known_opcodes_never_panics(idx in 0..OPCODES.len(), body in proptest::collection::vec(any::<u8>(), 0..20)) {
        let e = &OPCODES[idx];
        let mut cdb = vec![e.opcode];
        if let Some(sa) = e.service_action {
            cdb.push(sa | (body.first().copied().unwrap_or(0) & 0xE0));
        }
        cdb.extend_from_slice(&body);
        if let Ok(cmd) = Command::decode(&cdb) {
            prop_assert_eq!(cmd.opcode(), e.opcode);
            prop_assert_eq!(cmd.service_action(), e.service_action);
        }
    }
}

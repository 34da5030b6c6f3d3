//! REPORT LUNS (SPC-5 6.33). The LUN list comes from the target core
//! through [`crate::ExecContext::luns`]; this only decodes and formats.

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::error::ScsiError;
use crate::lun::report_luns_data;

pub(crate) fn decode(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let select_report = c.u8(2);
    // SPC-5 table 213; the remaining codes are reserved or vendor specific.
    if !matches!(select_report, 0x00 | 0x01 | 0x02 | 0x10 | 0x11 | 0x12) {
        return Err(ScsiError::field_byte(2));
    }
    Ok(Command::ReportLuns { select_report, alloc_len: c.be32(6) })
}

/// The parameter data for a SELECT REPORT code: the LUNs of the target for
/// 00h, 02h and 10h (no well-known or administrative LUs exist), none for
/// 01h (well-known only) and 11h/12h (no subsidiary LUs).
pub(crate) fn report_luns(select_report: u8, luns: &[u64], alloc_len: u32) -> Vec<u8> {
    match select_report {
        0x00 | 0x02 | 0x10 => report_luns_data(luns, alloc_len),
        _ => report_luns_data(&[], alloc_len),
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    fn cdb(select: u8, alloc: u32) -> Vec<u8> {
        let mut c = vec![0xA0, 0, select, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn lists_luns_from_the_context() {
        let d = disk(10);
        let ctx = ExecContext { luns: vec![0, 3], ..Default::default() };
        let r = run_ctx(&d, &cdb(0, 100), vec![], &ctx).unwrap();
        assert_eq!(r, vec![0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(run_ctx(&d, &cdb(2, 100), vec![], &ctx).unwrap().len(), 24);
        assert_eq!(run_ctx(&d, &cdb(1, 100), vec![], &ctx).unwrap(), vec![0; 8]);
        assert_eq!(run_ctx(&d, &cdb(0, 16), vec![], &ctx).unwrap().len(), 16);
        assert_eq!(run(&d, &cdb(3, 100)), Err(ScsiError::field_byte(2)));
        let c = Command::decode(&cdb(0, 16)).unwrap();
        assert!(c.is_unit_attention_exempt());
        assert!(!c.is_medium_access());
    }
}

//! LOG SENSE (SPC-5 6.8): the supported pages lists and the informational
//! exceptions log page (SPC-5 7.3.10). Nothing is saved, so SP and PPC are
//! refused.

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::truncate;
use crate::error::ScsiError;

/// LOG SENSE fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogSense {
    /// PAGE CONTROL: 0 threshold, 1 cumulative, 2 default threshold, 3 default cumulative.
    pub pc: u8,
    pub page: u8,
    pub subpage: u8,
    pub param_ptr: u16,
    pub alloc_len: u16,
}

pub(crate) fn decode(c: Cdb<'_>) -> Result<Command, ScsiError> {
    if c.bit(1, 1) {
        return Err(ScsiError::field(1, 1)); // PPC
    }
    if c.bit(1, 0) {
        return Err(ScsiError::field(1, 0)); // SP
    }
    Ok(Command::LogSense(LogSense {
        pc: c.bits(2, 6, 2),
        page: c.bits(2, 0, 6),
        subpage: c.u8(3),
        param_ptr: c.be16(5),
        alloc_len: c.be16(7),
    }))
}

const SUPPORTED_PAGES: u8 = 0x00;
const INFORMATIONAL_EXCEPTIONS: u8 = 0x2F;

fn page(code: u8, subpage: u8, params: &[u8]) -> Vec<u8> {
    let spf = if subpage != 0 { 0x40 } else { 0 };
    let mut d = vec![code | spf, subpage];
    d.extend_from_slice(&(params.len() as u16).to_be_bytes());
    d.extend_from_slice(params);
    d
}

pub(crate) fn log_sense(l: &LogSense) -> Result<Vec<u8>, ScsiError> {
    let d = match (l.page, l.subpage) {
        (SUPPORTED_PAGES, 0x00) => page(SUPPORTED_PAGES, 0, &[SUPPORTED_PAGES, INFORMATIONAL_EXCEPTIONS]),
        (SUPPORTED_PAGES, 0xFF) => {
            page(SUPPORTED_PAGES, 0xFF, &[SUPPORTED_PAGES, 0x00, SUPPORTED_PAGES, 0xFF, INFORMATIONAL_EXCEPTIONS, 0x00])
        }
        (INFORMATIONAL_EXCEPTIONS, 0x00) => {
            if l.param_ptr > 0 {
                return Err(ScsiError::field_byte(5));
            }
            // Parameter 0000h: no exception, temperature not available (FFh).
            page(INFORMATIONAL_EXCEPTIONS, 0, &[0x00, 0x00, 0x03, 0x03, 0x00, 0x00, 0xFF])
        }
        (SUPPORTED_PAGES | INFORMATIONAL_EXCEPTIONS, _) => return Err(ScsiError::field_byte(3)),
        _ => return Err(ScsiError::field(2, 5)),
    };
    Ok(truncate(d, usize::from(l.alloc_len)))
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    fn cdb(b1: u8, page: u8, sub: u8, alloc: u16) -> Vec<u8> {
        let mut c = vec![0x4D, b1, 0x40 | page, sub, 0, 0, 0, 0, 0, 0];
        c[7..9].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn pages() {
        let d = disk(10);
        assert_eq!(run(&d, &cdb(0, 0, 0, 100)).unwrap(), vec![0, 0, 0, 2, 0x00, 0x2F]);
        let r = run(&d, &cdb(0, 0, 0xFF, 100)).unwrap();
        assert_eq!(&r[..4], &[0x40, 0xFF, 0, 6]);
        let r = run(&d, &cdb(0, 0x2F, 0, 100)).unwrap();
        assert_eq!(&r[..4], &[0x2F, 0, 0, 7]);
        assert_eq!(run(&d, &cdb(0, 0x2F, 0, 2)).unwrap().len(), 2);
        assert_eq!(run(&d, &cdb(0, 0x0D, 0, 100)), Err(ScsiError::field(2, 5)));
        assert_eq!(run(&d, &cdb(0, 0x2F, 1, 100)), Err(ScsiError::field_byte(3)));
        assert_eq!(run(&d, &cdb(1, 0, 0, 100)), Err(ScsiError::field(1, 0)), "SP");
        assert_eq!(run(&d, &cdb(2, 0, 0, 100)), Err(ScsiError::field(1, 1)), "PPC");
    }
}

//! INQUIRY (SPC-5 6.6): standard data (6.6.2) and, with EVPD, the vital
//! product data pages of [`crate::vpd`].

use crate::alua::Tpgs;
use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{truncate, Disk};
use crate::error::ScsiError;
use crate::vpd;

/// INQUIRY fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inquiry {
    /// Return the vital product data page `page_code`.
    pub evpd: bool,
    pub page_code: u8,
    pub alloc_len: u16,
}

pub(crate) fn decode(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let evpd = c.bit(1, 0);
    let page_code = c.u8(2);
    if !evpd && page_code != 0 {
        return Err(ScsiError::field_byte(2));
    }
    Ok(Command::Inquiry(Inquiry { evpd, page_code, alloc_len: c.be16(3) }))
}

/// VERSION: SPC-4 (libiscsi and most initiators know 04h..06h).
const VERSION: u8 = 0x06;
/// Version descriptors (SPC-5 table 149): SAM-5, SPC-4, SBC-3.
const VERSION_DESCRIPTORS: [u16; 3] = [0x00A0, 0x0460, 0x04C0];
/// Standard INQUIRY data length returned.
const STANDARD_LEN: usize = 96;

/// `s` as exactly `n` printable ASCII bytes, space padded (SPC-5 4.3.1).
pub(crate) fn ascii_field(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().map(|b| if (0x20..0x7F).contains(&b) { b } else { b' ' }).take(n).collect();
    v.resize(n, b' ');
    v
}

impl Disk {
    /// Standard INQUIRY data (SPC-5 6.6.2): a direct access block device,
    /// HISUP, response data format 2, CMDQUE.
    pub(crate) fn standard_inquiry(&self) -> Vec<u8> {
        let cfg = self.config();
        let mut d = vec![0u8; STANDARD_LEN];
        d[0] = 0x00; // PERIPHERAL QUALIFIER 000b, DEVICE TYPE 00h
        d[1] = if cfg.removable { 0x80 } else { 0 };
        d[2] = VERSION;
        d[3] = 0x10 | 0x02; // HISUP, RESPONSE DATA FORMAT
        d[4] = (STANDARD_LEN - 5) as u8;
        d[5] = 0x08 | self.tpgs().bits(); // 3PC: EXTENDED COPY (SPC-4 6.3); TPGS
        d[7] = 0x02; // CMDQUE
        d[8..16].copy_from_slice(&ascii_field(&cfg.vendor, 8));
        d[16..32].copy_from_slice(&ascii_field(&cfg.product, 16));
        d[32..36].copy_from_slice(&ascii_field(&cfg.revision, 4));
        for (i, v) in VERSION_DESCRIPTORS.iter().enumerate() {
            d[58 + 2 * i..60 + 2 * i].copy_from_slice(&v.to_be_bytes());
        }
        d
    }

    /// TPGS: implicit and explicit asymmetric access when configured.
    pub(crate) fn tpgs(&self) -> Tpgs {
        if self.alua().is_some() {
            Tpgs::Both
        } else {
            Tpgs::None
        }
    }

    pub(crate) fn inquiry(&self, i: &Inquiry) -> Result<Vec<u8>, ScsiError> {
        let d = if i.evpd {
            vpd::page(self, i.page_code).ok_or(ScsiError::field_byte(2))?
        } else {
            self.standard_inquiry()
        };
        Ok(truncate(d, usize::from(i.alloc_len)))
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    fn inq(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
        let mut c = vec![0x12, u8::from(evpd), page, 0, 0, 0];
        c[3..5].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn standard() {
        let d = disk_with(10, DiskConfig { vendor: "ACME\u{1}".into(), removable: true, ..Default::default() });
        let r = run(&d, &inq(false, 0, 260)).unwrap();
        assert_eq!(r.len(), 96);
        assert_eq!((r[0], r[1], r[2], r[3], r[4] as usize), (0, 0x80, 6, 0x12, r.len() - 5));
        assert_eq!(&r[8..16], b"ACME    ");
        assert_eq!(&r[16..26], b"Lunar disk");
        assert_eq!(&r[58..64], &[0x00, 0xA0, 0x04, 0x60, 0x04, 0xC0]);
        assert_eq!(run(&d, &inq(false, 0, 5)).unwrap().len(), 5);
        assert_eq!(run(&d, &inq(false, 0, 0)).unwrap().len(), 0);
        assert_eq!(run(&d, &inq(false, 0x80, 255)), Err(ScsiError::field_byte(2)), "page without EVPD");
        assert_eq!(Command::decode(&[0x12, 0x02, 0, 0, 36, 0]), Err(ScsiError::field(1, 1)), "CMDDT");
        let c = Command::decode(&inq(false, 0, 36)).unwrap();
        assert!(c.is_unit_attention_exempt() && !c.is_medium_access());
    }

    #[test]
    fn unknown_vpd_page() {
        let d = disk(10);
        assert_eq!(run(&d, &inq(true, 0x42, 255)), Err(ScsiError::field_byte(2)));
    }
}

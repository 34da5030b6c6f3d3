//! MODE SENSE(6)/(10) (SPC-5 6.13, 6.14) and MODE SELECT(6)/(10) (SPC-5
//! 6.11, 6.12) with the read-write error recovery (SBC-4 6.5.9), caching
//! (SBC-4 6.5.6), control (SPC-5 7.5.8) and informational exceptions
//! control (SPC-5 7.5.14) mode pages.
//!
//! Changeable: WCE (caching), D_SENSE and SWP (control). Nothing is saved:
//! saved values are refused, and PS is zero in every page.
//!
//! After a MODE SELECT that succeeds, the target core should establish the
//! unit attention MODE PARAMETERS CHANGED for the other I_T nexuses
//! (SPC-5 7.5.1).

use lunar_block::Bytes;
use std::sync::atomic::Ordering;

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{truncate, Disk};
use crate::error::ScsiError;

/// MODE SENSE fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeSense {
    /// Disable block descriptors.
    pub dbd: bool,
    /// Long LBA block descriptors accepted (10-byte form only).
    pub llbaa: bool,
    /// PAGE CONTROL: 0 current, 1 changeable, 2 default, 3 saved.
    pub pc: u8,
    pub page: u8,
    pub subpage: u8,
    pub alloc_len: u16,
    pub cdb_len: u8,
}

/// MODE SELECT fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModeSelect {
    /// Page format.
    pub pf: bool,
    pub param_len: u16,
    pub cdb_len: u8,
}

/// PAGE CONTROL values (SPC-5 table 143).
pub const PC_CURRENT: u8 = 0;
pub const PC_CHANGEABLE: u8 = 1;
pub const PC_DEFAULT: u8 = 2;
pub const PC_SAVED: u8 = 3;

pub(crate) fn decode_sense6(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::ModeSense(ModeSense {
        dbd: c.bit(1, 3),
        llbaa: false,
        pc: c.bits(2, 6, 2),
        page: c.bits(2, 0, 6),
        subpage: c.u8(3),
        alloc_len: u16::from(c.u8(4)),
        cdb_len: 6,
    }))
}

pub(crate) fn decode_sense10(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::ModeSense(ModeSense {
        dbd: c.bit(1, 3),
        llbaa: c.bit(1, 4),
        pc: c.bits(2, 6, 2),
        page: c.bits(2, 0, 6),
        subpage: c.u8(3),
        alloc_len: c.be16(7),
        cdb_len: 10,
    }))
}

fn select(c: Cdb<'_>, param_len: u16) -> Result<Command, ScsiError> {
    if c.bit(1, 0) {
        return Err(ScsiError::field(1, 0)); // SP: nothing can be saved
    }
    let pf = c.bit(1, 4);
    if !pf && param_len > 0 {
        return Err(ScsiError::field(1, 4)); // only the page format is understood
    }
    Ok(Command::ModeSelect(ModeSelect { pf, param_len, cdb_len: c.len() as u8 }))
}

pub(crate) fn decode_select6(c: Cdb<'_>) -> Result<Command, ScsiError> {
    select(c, u16::from(c.u8(4)))
}

pub(crate) fn decode_select10(c: Cdb<'_>) -> Result<Command, ScsiError> {
    select(c, c.be16(7))
}

const RW_ERROR_RECOVERY: u8 = 0x01;
const CACHING: u8 = 0x08;
const CONTROL: u8 = 0x0A;
const INFORMATIONAL_EXCEPTIONS: u8 = 0x1C;
const ALL_PAGES: u8 = 0x3F;
/// Pages in the order MODE SENSE returns them for "all pages".
const PAGES: [u8; 4] = [RW_ERROR_RECOVERY, CACHING, CONTROL, INFORMATIONAL_EXCEPTIONS];

/// The values of the device-wide changeable bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Bits {
    wce: bool,
    d_sense: bool,
    swp: bool,
}

const DEFAULTS: Bits = Bits { wce: true, d_sense: false, swp: false };

/// A mode page (page_0 format) holding `bits`, or, with `changeable`, the
/// mask of the changeable bits.
fn page(code: u8, bits: Bits, changeable: bool) -> Vec<u8> {
    let f = |v: bool, mask: u8| if changeable || v { mask } else { 0 };
    match code {
        RW_ERROR_RECOVERY => {
            let mut p = vec![0u8; 12];
            p[0] = RW_ERROR_RECOVERY;
            p[1] = 0x0A;
            p
        }
        CACHING => {
            let mut p = vec![0u8; 20];
            p[0] = CACHING;
            p[1] = 0x12;
            p[2] = f(bits.wce, 0x04);
            if !changeable {
                // No read-ahead limits to speak of.
                p[4..6].copy_from_slice(&[0xFF, 0xFF]); // DISABLE PRE-FETCH TRANSFER LENGTH
                p[8..10].copy_from_slice(&[0xFF, 0xFF]); // MAXIMUM PRE-FETCH
                p[10..12].copy_from_slice(&[0xFF, 0xFF]); // MAXIMUM PRE-FETCH CEILING
            }
            p
        }
        CONTROL => {
            let mut p = vec![0u8; 12];
            p[0] = CONTROL;
            p[1] = 0x0A;
            // D_SENSE; GLTSD (no implicit saving of log parameters).
            p[2] = f(bits.d_sense, 0x04) | if changeable { 0 } else { 0x02 };
            // QUEUE ALGORITHM MODIFIER 1h: unrestricted reordering allowed.
            p[3] = if changeable { 0 } else { 0x10 };
            p[4] = f(bits.swp, 0x08);
            p
        }
        _ => {
            let mut p = vec![0u8; 12];
            p[0] = INFORMATIONAL_EXCEPTIONS;
            p[1] = 0x0A;
            p[2] = if changeable { 0 } else { 0x08 }; // DEXCPT: no exceptions reported
            p
        }
    }
}

impl Disk {
    fn mode_bits(&self) -> Bits {
        Bits {
            wce: self.state.wce.load(Ordering::Relaxed),
            d_sense: self.state.d_sense.load(Ordering::Relaxed),
            swp: self.state.swp.load(Ordering::Relaxed),
        }
    }

    /// MODE SENSE: header, optional block descriptor, pages; the MODE DATA
    /// LENGTH is of the whole data even when the allocation length cuts it.
    pub(crate) fn mode_sense(&self, m: &ModeSense) -> Result<Vec<u8>, ScsiError> {
        if m.pc == PC_SAVED {
            return Err(ScsiError::SavingParametersNotSupported);
        }
        let codes: Vec<u8> = match m.page {
            ALL_PAGES => PAGES.to_vec(),
            p if PAGES.contains(&p) => vec![p],
            _ => return Err(ScsiError::field(2, 5)),
        };
        // None of the pages has subpages; FFh asks for all subpages of the page(s).
        if m.subpage != 0 && m.subpage != 0xFF {
            return Err(ScsiError::field_byte(3));
        }
        let changeable = m.pc == PC_CHANGEABLE;
        let bits = if m.pc == PC_DEFAULT { DEFAULTS } else { self.mode_bits() };
        let long = m.cdb_len == 10 && m.llbaa;
        let block_desc = if m.dbd {
            Vec::new()
        } else if long {
            let mut b = vec![0u8; 16];
            if !changeable {
                b[0..8].copy_from_slice(&self.num_blocks().to_be_bytes());
                b[12..16].copy_from_slice(&self.block_size().to_be_bytes());
            }
            b
        } else {
            let mut b = vec![0u8; 8];
            if !changeable {
                let n = u32::try_from(self.num_blocks()).unwrap_or(u32::MAX);
                b[0..4].copy_from_slice(&n.to_be_bytes());
                b[5..8].copy_from_slice(&self.block_size().to_be_bytes()[1..]);
            }
            b
        };
        // DEVICE-SPECIFIC PARAMETER (SBC-4 6.5.2): WP and DPOFUA.
        let dsp = if changeable { 0 } else { (u8::from(self.write_protected()) << 7) | 0x10 };
        let mut d = if m.cdb_len == 6 {
            vec![0, 0, dsp, block_desc.len() as u8]
        } else {
            let mut h = vec![0, 0, 0, dsp, u8::from(long && !m.dbd), 0, 0, 0];
            h[6..8].copy_from_slice(&(block_desc.len() as u16).to_be_bytes());
            h
        };
        d.extend_from_slice(&block_desc);
        for code in codes {
            d.extend_from_slice(&page(code, bits, changeable));
        }
        if m.cdb_len == 6 {
            d[0] = u8::try_from(d.len() - 1).unwrap_or(u8::MAX);
        } else {
            let len = u16::try_from(d.len() - 2).unwrap_or(u16::MAX);
            d[0..2].copy_from_slice(&len.to_be_bytes());
        }
        Ok(truncate(d, usize::from(m.alloc_len)))
    }

    /// MODE SELECT: checks the whole parameter list, then applies it. Every
    /// bit not changeable must equal its current value (SPC-5 6.11). Returns
    /// whether a value changed: the other I_T nexuses then get MODE
    /// PARAMETERS CHANGED (the mode pages are shared by all of them).
    pub(crate) fn mode_select(&self, m: &ModeSelect, data: Bytes) -> Result<bool, ScsiError> {
        let len = usize::from(m.param_len);
        if len == 0 {
            return Ok(false);
        }
        let data = data.get(..len).ok_or(ScsiError::ParameterListLengthError)?;
        let header = if m.cdb_len == 6 { 4 } else { 8 };
        if data.len() < header {
            return Err(ScsiError::ParameterListLengthError);
        }
        let (medium_type, bd_len, long) = if m.cdb_len == 6 {
            (data[1], usize::from(data[3]), false)
        } else {
            (data[2], usize::from(u16::from_be_bytes([data[6], data[7]])), data[4] & 1 != 0)
        };
        if medium_type != 0 {
            return Err(ScsiError::param(if m.cdb_len == 6 { 1 } else { 2 }, None));
        }
        let desc_size = if long { 16 } else { 8 };
        if bd_len != 0 && bd_len != desc_size {
            return Err(ScsiError::param(if m.cdb_len == 6 { 3 } else { 6 }, None));
        }
        if header + bd_len > data.len() {
            return Err(ScsiError::ParameterListLengthError);
        }
        if bd_len > 0 {
            // The block length must stay what it is; the number of blocks is ignored.
            let at = if long { header + 12 } else { header + 5 };
            let bl = if long {
                u32::from_be_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]])
            } else {
                u32::from_be_bytes([0, data[at], data[at + 1], data[at + 2]])
            };
            if bl != self.block_size() {
                return Err(ScsiError::param(at, None));
            }
        }
        let current = self.mode_bits();
        let mut new = current;
        let mut pos = header + bd_len;
        while pos < data.len() {
            let code = data[pos];
            if code & 0x80 != 0 {
                return Err(ScsiError::param(pos, Some(7))); // PS is reserved in MODE SELECT
            }
            if code & 0x40 != 0 || !PAGES.contains(&(code & 0x3F)) {
                return Err(ScsiError::param(pos, Some(5)));
            }
            let cur = page(code, current, false);
            let mask = page(code, current, true);
            let Some(&page_len) = data.get(pos + 1) else {
                return Err(ScsiError::ParameterListLengthError);
            };
            if usize::from(page_len) != cur.len() - 2 {
                return Err(ScsiError::param(pos + 1, None));
            }
            let sent = data.get(pos..pos + cur.len()).ok_or(ScsiError::ParameterListLengthError)?;
            for i in 2..cur.len() {
                let bad = (sent[i] ^ cur[i]) & !mask[i];
                if bad != 0 {
                    return Err(ScsiError::param(pos + i, Some(7 - bad.leading_zeros() as u8)));
                }
            }
            match code {
                CACHING => new.wce = sent[2] & 0x04 != 0,
                CONTROL => {
                    new.d_sense = sent[2] & 0x04 != 0;
                    new.swp = sent[4] & 0x08 != 0;
                }
                _ => {}
            }
            pos += cur.len();
        }
        self.state.wce.store(new.wce, Ordering::Relaxed);
        self.state.d_sense.store(new.d_sense, Ordering::Relaxed);
        self.state.swp.store(new.swp, Ordering::Relaxed);
        Ok(new != current)
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    fn sense6(b1: u8, b2: u8, sub: u8, alloc: u8) -> Vec<u8> {
        vec![0x1A, b1, b2, sub, alloc, 0]
    }

    fn sense10(b1: u8, b2: u8, alloc: u16) -> Vec<u8> {
        let mut c = vec![0x5A, b1, b2, 0, 0, 0, 0, 0, 0, 0];
        c[7..9].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    fn select6(data: &[u8]) -> Vec<u8> {
        vec![0x15, 0x10, 0, 0, data.len() as u8, 0]
    }

    #[test]
    fn all_pages() {
        let d = disk(1000);
        let r = run(&d, &sense6(0, 0x3F, 0, 255)).unwrap();
        assert_eq!(r[0] as usize, r.len() - 1);
        assert_eq!(r[2], 0x10, "DPOFUA, not WP");
        assert_eq!(r[3], 8);
        assert_eq!(&r[4..8], &1000u32.to_be_bytes());
        assert_eq!(&r[9..12], &[0, 2, 0]);
        let pages = &r[12..];
        assert_eq!(pages.len(), 12 + 20 + 12 + 12);
        assert_eq!((pages[0], pages[12], pages[32], pages[44]), (0x01, 0x08, 0x0A, 0x1C));
        assert_eq!(pages[14] & 0x04, 0x04, "WCE");
        // Truncation keeps the full length in the header.
        let short = run(&d, &sense6(0, 0x3F, 0, 4)).unwrap();
        assert_eq!(short.len(), 4);
        assert_eq!(short[0], r[0]);
        let all_sub = run(&d, &sense6(0, 0x3F, 0xFF, 255)).unwrap();
        assert_eq!(all_sub, r);
    }

    #[test]
    fn page_control_and_dbd() {
        let d = disk(1000);
        let r = run(&d, &sense6(0x08, 0x40 | 0x08, 0, 255)).unwrap();
        assert_eq!(r[3], 0, "no block descriptor");
        assert_eq!(&r[4..6], &[0x08, 0x12]);
        assert_eq!(r[6], 0x04, "WCE changeable");
        let r = run(&d, &sense6(0x08, 0x40 | 0x0A, 0, 255)).unwrap();
        assert_eq!((r[6], r[8]), (0x04, 0x08), "D_SENSE and SWP changeable");
        assert!(run(&d, &sense6(0x08, 0x80 | 0x0A, 0, 255)).is_ok(), "default");
        assert_eq!(run(&d, &sense6(0x08, 0xC0 | 0x0A, 0, 255)), Err(ScsiError::SavingParametersNotSupported));
        assert_eq!(run(&d, &sense6(0, 0x02, 0, 255)), Err(ScsiError::field(2, 5)));
        assert_eq!(run(&d, &sense6(0, 0x08, 1, 255)), Err(ScsiError::field_byte(3)));
        assert_eq!(Command::decode(&sense6(0x10, 0x08, 0, 255)), Err(ScsiError::field(1, 4)));
    }

    #[test]
    fn mode_sense10_long_lba() {
        let d = disk(1000);
        let r = run(&d, &sense10(0x10, 0x08, 1000)).unwrap();
        assert_eq!(u16::from_be_bytes([r[0], r[1]]) as usize, r.len() - 2);
        assert_eq!((r[4], r[7]), (1, 16));
        assert_eq!(&r[8..16], &1000u64.to_be_bytes());
        assert_eq!(&r[20..24], &512u32.to_be_bytes());
        assert_eq!(r[24], 0x08);
        let r = run(&d, &sense10(0, 0x08, 1000)).unwrap();
        assert_eq!((r[4], r[7], r.len()), (0, 8, 8 + 8 + 20));
    }

    #[test]
    fn select_changes_wce_dsense_swp() {
        let d = disk(1000);
        let mut caching = run(&d, &sense6(0x08, 0x08, 0, 255)).unwrap();
        caching[0] = 0;
        caching[2] = 0; // WP/DPOFUA are reserved in MODE SELECT... and ignored
        caching[6] &= !0x04;
        assert_eq!(run_data(&d, &select6(&caching), caching.clone()), Ok(vec![]));
        assert!(!d.write_cache_enabled());
        let mut control = run(&d, &sense6(0x08, 0x0A, 0, 255)).unwrap();
        control[0] = 0;
        control[6] |= 0x04;
        control[8] |= 0x08;
        assert_eq!(run_data(&d, &select6(&control), control.clone()), Ok(vec![]));
        assert!(d.descriptor_sense());
        assert_eq!(run_data(&d, &cdb10(0x2A, 0, 0, 1), vec![0; 512]), Err(ScsiError::SoftwareWriteProtected));
        let r = run(&d, &sense6(0x08, 0x0A, 0, 255)).unwrap();
        assert_eq!(r[2] & 0x80, 0x80, "WP");
        assert_eq!(ScsiError::SoftwareWriteProtected.sense().key, SenseKey::DataProtect);
    }

    #[test]
    fn select_errors() {
        let d = disk(1000);
        let mut control = run(&d, &sense6(0x08, 0x0A, 0, 255)).unwrap();
        control[0] = 0;
        let mut bad = control.clone();
        bad[7] = 0x20; // TAS is not changeable
        assert_eq!(run_data(&d, &select6(&bad), bad.clone()), Err(ScsiError::param(7, Some(5))));
        let mut bad = control.clone();
        bad[4] |= 0x80; // PS
        assert_eq!(run_data(&d, &select6(&bad), bad.clone()), Err(ScsiError::param(4, Some(7))));
        let mut bad = control.clone();
        bad[4] = 0x02; // unknown page
        assert_eq!(run_data(&d, &select6(&bad), bad.clone()), Err(ScsiError::param(4, Some(5))));
        let mut bad = control.clone();
        bad[5] = 0x0B;
        assert_eq!(run_data(&d, &select6(&bad), bad.clone()), Err(ScsiError::param(5, None)));
        let cut = control[..10].to_vec();
        assert_eq!(run_data(&d, &select6(&cut), cut.clone()), Err(ScsiError::ParameterListLengthError));
        assert_eq!(run_data(&d, &select6(&control), vec![0; 3]), Err(ScsiError::ParameterListLengthError));
        // A block descriptor with another block length.
        let mut bd = vec![0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x10, 0];
        assert_eq!(run_data(&d, &select6(&bd), bd.clone()), Err(ScsiError::param(9, None)));
        bd[10] = 0x02;
        assert_eq!(run_data(&d, &select6(&bd), bd.clone()), Ok(vec![]));
        assert_eq!(Command::decode(&[0x15, 0x11, 0, 0, 12, 0]), Err(ScsiError::field(1, 0)), "SP");
        assert_eq!(Command::decode(&[0x15, 0x00, 0, 0, 12, 0]), Err(ScsiError::field(1, 4)), "PF=0");
        assert_eq!(run(&d, &[0x15, 0x00, 0, 0, 0, 0]), Ok(vec![]), "empty list");
        assert!(d.write_cache_enabled() && !d.descriptor_sense(), "nothing changed");
    }

    #[test]
    fn select10() {
        let d = disk(1000);
        let mut caching = run(&d, &sense10(0x08, 0x08, 255)).unwrap();
        caching[0] = 0;
        caching[1] = 0;
        caching[3] = 0;
        caching[10] &= !0x04;
        let mut cdb = vec![0x55, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
        cdb[8] = caching.len() as u8;
        assert_eq!(run_data(&d, &cdb, caching), Ok(vec![]));
        assert!(!d.write_cache_enabled());
    }
}

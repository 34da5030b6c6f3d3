//! Vital product data pages (SPC-5 7.7, SBC-4 6.6): supported pages,
//! unit serial number, device identification, extended INQUIRY data, block
//! limits, block device characteristics, logical block provisioning,
//! third-party copy.

use crate::commands::extended_copy::{
    max_segment_bytes, IMPLEMENTED_DESCRIPTORS, MAX_CSCD_DESCRIPTORS, MAX_DESCRIPTOR_LIST_LENGTH,
    MAX_SEGMENT_DESCRIPTORS,
};
use crate::commands::inquiry::ascii_field;
use crate::disk::{Disk, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS};

pub const SUPPORTED_PAGES: u8 = 0x00;
pub const UNIT_SERIAL_NUMBER: u8 = 0x80;
pub const DEVICE_IDENTIFICATION: u8 = 0x83;
pub const EXTENDED_INQUIRY: u8 = 0x86;
pub const THIRD_PARTY_COPY: u8 = 0x8F;
pub const BLOCK_LIMITS: u8 = 0xB0;
pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;

/// Every page, ascending (SPC-5 7.7.16 wants them in order).
const PAGES: [u8; 8] = [
    SUPPORTED_PAGES,
    UNIT_SERIAL_NUMBER,
    DEVICE_IDENTIFICATION,
    EXTENDED_INQUIRY,
    THIRD_PARTY_COPY,
    BLOCK_LIMITS,
    BLOCK_DEVICE_CHARACTERISTICS,
    LOGICAL_BLOCK_PROVISIONING,
];

/// IEEE company id in the NAA 6 designator. Lunar has no OUI of its own;
/// the designator's uniqueness rests on [`crate::DiskConfig::naa_id`].
const COMPANY_ID: u32 = 0x000000;

/// A page: the 4-byte header (device type 0, page code, PAGE LENGTH), then `body`.
fn with_header(code: u8, body: &[u8]) -> Vec<u8> {
    let mut d = vec![0, code];
    d.extend_from_slice(&u16::try_from(body.len()).unwrap_or(u16::MAX).to_be_bytes());
    d.extend_from_slice(body);
    d
}

/// One designation descriptor (SPC-5 7.7.6.1).
fn designator(code_set: u8, association: u8, kind: u8, id: &[u8]) -> Vec<u8> {
    let mut d = vec![code_set, (association << 4) | kind, 0, id.len() as u8];
    d.extend_from_slice(id);
    d
}

/// The NAA 6 designation descriptor of VPD page 83h, IEEE Registered
/// Extended (SPC-5 7.7.6.6.7): it names the unit in EXTENDED COPY too.
pub(crate) fn naa_designator(disk: &Disk) -> Vec<u8> {
    let mut naa = [0u8; 16];
    naa[..8].copy_from_slice(&((0x6u64 << 60) | (u64::from(COMPANY_ID) << 36)).to_be_bytes());
    naa[8..].copy_from_slice(&disk.config().naa_id.to_be_bytes());
    designator(0x01, 0, 0x3, &naa)
}

/// One third-party copy descriptor (SPC-4 7.8.17.1): type, length, body
/// padded to a multiple of 4.
fn tpc_descriptor(kind: u16, body: &[u8]) -> Vec<u8> {
    let mut b = body.to_vec();
    b.resize((b.len() + 4).div_ceil(4) * 4 - 4, 0);
    let mut d = kind.to_be_bytes().to_vec();
    d.extend_from_slice(&(b.len() as u16).to_be_bytes());
    d.extend(b);
    d
}

/// The Third-party Copy VPD page (SPC-4 7.8.17) of a LID1 copy manager:
/// supported commands, parameter data, supported descriptors, supported
/// CSCD IDs (none) and general copy operations.
fn third_party_copy(disk: &Disk) -> Vec<u8> {
    let mut page = Vec::new();
    // Supported Commands (7.8.17.3): EXTENDED COPY (LID1); RECEIVE COPY
    // RESULTS with COPY STATUS and OPERATING PARAMETERS.
    let cmds: [u8; 7] = [0x83, 1, 0x00, 0x84, 2, 0x00, 0x03];
    let mut b = vec![cmds.len() as u8];
    b.extend_from_slice(&cmds);
    page.extend(tpc_descriptor(0x0001, &b));
    // Parameter Data (7.8.17.4).
    let mut b = vec![0u8; 28];
    b[4..6].copy_from_slice(&MAX_CSCD_DESCRIPTORS.to_be_bytes());
    b[6..8].copy_from_slice(&MAX_SEGMENT_DESCRIPTORS.to_be_bytes());
    b[8..12].copy_from_slice(&MAX_DESCRIPTOR_LIST_LENGTH.to_be_bytes());
    page.extend(tpc_descriptor(0x0004, &b));
    // Supported Descriptors (7.8.17.5).
    let mut b = vec![IMPLEMENTED_DESCRIPTORS.len() as u8];
    b.extend_from_slice(&IMPLEMENTED_DESCRIPTORS);
    page.extend(tpc_descriptor(0x0008, &b));
    // Supported CSCD IDs (7.8.17.6): none.
    page.extend(tpc_descriptor(0x000C, &[0, 0]));
    // General Copy Operations (7.8.17.9).
    let mut b = vec![0u8; 32];
    b[0..4].copy_from_slice(&32u32.to_be_bytes()); // TOTAL CONCURRENT COPIES
    b[4..8].copy_from_slice(&32u32.to_be_bytes()); // MAXIMUM IDENTIFIED CONCURRENT COPIES
    b[8..12].copy_from_slice(&max_segment_bytes(disk.block_size()).to_be_bytes());
    page.extend(tpc_descriptor(0x8001, &b));
    with_header(THIRD_PARTY_COPY, &page)
}

/// The VPD page `code`, or `None` if there is no such page.
pub fn page(disk: &Disk, code: u8) -> Option<Vec<u8>> {
    let cfg = disk.config();
    let bs = disk.block_size();
    Some(match code {
        SUPPORTED_PAGES => with_header(code, &PAGES),
        UNIT_SERIAL_NUMBER => {
            let serial = ascii_field(&cfg.serial, cfg.serial.len().min(252));
            with_header(code, &serial)
        }
        DEVICE_IDENTIFICATION => {
            let mut body = naa_designator(disk);
            // T10 vendor ID based (7.7.6.4): vendor, then the serial number.
            let mut t10 = ascii_field(&cfg.vendor, 8);
            t10.extend(ascii_field(&cfg.serial, cfg.serial.len().min(200)));
            body.extend(designator(0x02, 0, 0x1, &t10));
            // Relative target port identifier (7.7.6.7), association: target port.
            let mut rp = [0u8; 4];
            rp[2..].copy_from_slice(&cfg.relative_port.to_be_bytes());
            body.extend(designator(0x01, 1, 0x4, &rp));
            // Target port group (7.7.6.8), association: target port.
            if let Some(alua) = disk.alua() {
                let mut tpg = [0u8; 4];
                tpg[2..].copy_from_slice(&alua.local_group().to_be_bytes());
                body.extend(designator(0x01, 1, 0x5, &tpg));
            }
            // SCSI name string of the target device (7.7.6.11): UTF-8, NUL
            // terminated, padded to a multiple of 4.
            if !cfg.target_name.is_empty() {
                let mut name: Vec<u8> = cfg.target_name.bytes().take(250).collect();
                name.push(0);
                name.resize(name.len().div_ceil(4) * 4, 0);
                body.extend(designator(0x03, 2, 0x8, &name));
            }
            with_header(code, &body)
        }
        EXTENDED_INQUIRY => {
            let mut b = [0u8; 60];
            b[1] = 0x07; // HEADSUP, ORDSUP, SIMPSUP
            b[2] = 0x01; // V_SUP: a volatile cache
            b[3] = 0x01; // LUICLR
            with_header(code, &b)
        }
        BLOCK_LIMITS => {
            let mut b = [0u8; 60];
            let max_transfer = disk.max_transfer_blocks();
            b[0] = 0x01; // WSNZ
            b[1] = disk.max_compare_and_write_blocks();
            b[2..4].copy_from_slice(&1u16.to_be_bytes()); // OPTIMAL TRANSFER LENGTH GRANULARITY
            b[4..8].copy_from_slice(&max_transfer.to_be_bytes());
            b[8..12].copy_from_slice(&max_transfer.to_be_bytes()); // OPTIMAL TRANSFER LENGTH
            b[12..16].copy_from_slice(&max_transfer.to_be_bytes()); // MAXIMUM PREFETCH LENGTH
            if cfg.thin {
                b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
                b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                b[24..28].copy_from_slice(&(4096 / bs).max(1).to_be_bytes()); // OPTIMAL UNMAP GRANULARITY
                b[28] = 0x80; // UGAVALID, alignment 0
            }
            b[32..40].copy_from_slice(&MAX_WRITE_SAME_BLOCKS.to_be_bytes());
            let atomic = disk.atomic_limits();
            b[40..44].copy_from_slice(&atomic.max_blocks.to_be_bytes());
            b[44..48].copy_from_slice(&atomic.alignment.to_be_bytes());
            b[48..52].copy_from_slice(&atomic.granularity.to_be_bytes());
            with_header(code, &b)
        }
        BLOCK_DEVICE_CHARACTERISTICS => {
            let mut b = [0u8; 60];
            b[0..2].copy_from_slice(&1u16.to_be_bytes()); // non-rotating medium
                                                          // WABEREQ and WACEREQ 01b: after a BLOCK ERASE or CRYPTOGRAPHIC
                                                          // ERASE sanitize, reads succeed (they return zeros: deallocated).
            b[3] = 0x50;
            with_header(code, &b)
        }
        LOGICAL_BLOCK_PROVISIONING => {
            let mut b = [0u8; 4];
            if cfg.thin {
                b[1] = 0x80 | 0x40 | 0x20 | 0x04; // LBPU, LBPWS, LBPWS10, LBPRZ 001b
                b[2] = 0x02; // PROVISIONING TYPE: thin
            }
            with_header(code, &b)
        }
        THIRD_PARTY_COPY => third_party_copy(disk),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::*;

    fn vpd(d: &Disk, page: u8) -> Vec<u8> {
        run(d, &[0x12, 1, page, 0x10, 0, 0]).unwrap()
    }

    #[test]
    fn supported_pages_all_exist() {
        let d = disk(10);
        let r = vpd(&d, 0);
        assert_eq!(&r[..4], &[0, 0, 0, PAGES.len() as u8]);
        for &p in &r[4..] {
            let page = vpd(&d, p);
            assert_eq!(page[1], p);
            assert_eq!(u16::from_be_bytes([page[2], page[3]]) as usize, page.len() - 4);
        }
    }

    #[test]
    fn serial_and_identification() {
        let cfg = DiskConfig {
            serial: "SN123".into(),
            naa_id: 0x1122334455667788,
            target_name: "iqn.2024-01.org.lunar:t".into(),
            relative_port: 2,
            ..Default::default()
        };
        let d = disk_with(10, cfg);
        assert_eq!(vpd(&d, 0x80), b"\0\x80\0\x05SN123".to_vec());
        let r = vpd(&d, 0x83);
        // NAA designator first.
        assert_eq!(&r[4..8], &[0x01, 0x03, 0, 16]);
        assert_eq!(r[8] >> 4, 6);
        assert_eq!(&r[16..24], &0x1122334455667788u64.to_be_bytes());
        // T10 vendor id.
        assert_eq!(&r[24..28], &[0x02, 0x01, 0, 13]);
        assert_eq!(&r[28..41], b"LUNAR   SN123");
        // Relative target port.
        assert_eq!(&r[41..49], &[0x01, 0x14, 0, 4, 0, 0, 0, 2]);
        // SCSI name string, padded to a multiple of 4.
        assert_eq!(&r[49..52], &[0x03, 0x28, 0]);
        assert_eq!(r[52] % 4, 0);
        assert_eq!(r.len(), 53 + r[52] as usize);
    }

    /// With ALUA: the target port group designator (type 5h, association
    /// target port) follows the relative target port one, both this
    /// process's; TPGS 11b in the standard data.
    #[test]
    fn target_port_group_designator_with_alua() {
        let cfg = DiskConfig {
            relative_port: 3,
            alua: Some(crate::AluaConfig::gateways(3, 2).unwrap()),
            ..Default::default()
        };
        let d = disk_with(10, cfg);
        let r = vpd(&d, 0x83);
        let mut at = 4;
        let mut seen = Vec::new();
        while at + 4 <= r.len() {
            let len = r[at + 3] as usize;
            seen.push((r[at + 1], r[at + 4..at + 4 + len].to_vec()));
            at += 4 + len;
        }
        assert_eq!(at, r.len());
        let rel = seen.iter().position(|(t, _)| *t == 0x14).unwrap();
        assert_eq!(seen[rel].1, vec![0, 0, 0, 3], "relative target port 3");
        assert_eq!(seen[rel + 1], (0x15, vec![0, 0, 0, 3]), "target port group 3");
        assert_eq!(run(&d, &[0x12, 0, 0, 0, 96, 0]).unwrap()[5], 0x38, "TPGS 11b beside 3PC");
        // Without ALUA: no such designator, TPGS 00b.
        let plain = disk(10);
        assert!(!vpd(&plain, 0x83).windows(2).any(|w| w == [0x01, 0x15]));
        assert_eq!(run(&plain, &[0x12, 0, 0, 0, 96, 0]).unwrap()[5], 0x08);
    }

    #[test]
    fn block_limits_and_provisioning() {
        let d = disk(10);
        let r = vpd(&d, 0xB0);
        assert_eq!(r.len(), 64);
        assert_eq!(r[4], 1, "WSNZ");
        assert_eq!(u32::from_be_bytes([r[8], r[9], r[10], r[11]]), d.max_transfer_blocks());
        assert_eq!(u32::from_be_bytes([r[20], r[21], r[22], r[23]]), MAX_UNMAP_BLOCKS);
        const { assert!(MAX_UNMAP_BLOCKS <= 1 << 20, "libiscsi holds more insanely big") };
        let atomic = |i: usize| u32::from_be_bytes([r[i], r[i + 1], r[i + 2], r[i + 3]]);
        assert_eq!((atomic(44), atomic(48), atomic(52)), (2048, 1, 1), "atomic length, alignment, granularity");
        assert!(atomic(44) <= atomic(8), "atomic limit within MAXIMUM TRANSFER LENGTH");
        assert_eq!(vpd(&d, 0xB1)[7], 0x50, "WABEREQ, WACEREQ");
        assert_eq!(vpd(&d, 0xB2), vec![0, 0xB2, 0, 4, 0, 0xE4, 0x02, 0]);
        let fat = disk_with(10, DiskConfig { thin: false, ..Default::default() });
        assert_eq!(vpd(&fat, 0xB2), vec![0, 0xB2, 0, 4, 0, 0, 0, 0]);
        assert_eq!(vpd(&fat, 0xB0)[20..28], [0; 8]);
        assert_eq!(&vpd(&d, 0xB1)[4..6], &[0, 1]);
        assert_eq!(vpd(&d, 0x86)[5], 0x07);
    }
}

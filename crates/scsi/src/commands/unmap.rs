//! UNMAP (SBC-4 5.31): deallocate the ranges of a parameter list of block
//! descriptors. Offered on thin disks only.

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{Disk, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS};
use crate::error::ScsiError;
use lunar_block::Bytes;

pub(crate) fn decode(c: Cdb<'_>) -> Result<Command, ScsiError> {
    if c.bit(1, 0) {
        // ANCHOR with ANC_SUP zero in the logical block provisioning VPD page.
        return Err(ScsiError::field(1, 0));
    }
    Ok(Command::Unmap { anchor: false, group: c.bits(6, 0, 5), param_len: c.be16(7) })
}

/// One UNMAP block descriptor (SBC-4 5.31.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmapDescriptor {
    pub lba: u64,
    pub blocks: u32,
}

/// Parses and checks the UNMAP parameter list (SBC-4 5.31.2) against a
/// disk of `num_blocks` blocks.
pub fn parse_unmap_list(data: &[u8], num_blocks: u64) -> Result<Vec<UnmapDescriptor>, ScsiError> {
    if data.len() < 8 {
        return Err(ScsiError::ParameterListLengthError);
    }
    let desc_len = usize::from(u16::from_be_bytes([data[2], data[3]]));
    // Descriptors past the parameter list, or a partial one, are ignored.
    let usable = desc_len.min(data.len() - 8) / 16;
    if usable > MAX_UNMAP_DESCRIPTORS as usize {
        return Err(ScsiError::param(2, None));
    }
    let mut total = 0u64;
    let mut out = Vec::with_capacity(usable);
    for (i, d) in data[8..].chunks_exact(16).take(usable).enumerate() {
        let mut lba = [0u8; 8];
        lba.copy_from_slice(&d[..8]);
        let lba = u64::from_be_bytes(lba);
        let blocks = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        match lba.checked_add(u64::from(blocks)) {
            Some(end) if end <= num_blocks && (lba < num_blocks || blocks == 0) => {}
            _ => return Err(ScsiError::LbaOutOfRange { lba }),
        }
        total += u64::from(blocks);
        if total > u64::from(MAX_UNMAP_BLOCKS) {
            return Err(ScsiError::param(8 + i * 16 + 8, None));
        }
        out.push(UnmapDescriptor { lba, blocks });
    }
    Ok(out)
}

impl Disk {
    pub(crate) async fn unmap(&self, param_len: u16, data: Bytes) -> Result<Vec<u8>, ScsiError> {
        if param_len == 0 {
            return Ok(Vec::new());
        }
        let len = usize::from(param_len);
        if data.len() < len {
            return Err(ScsiError::ParameterListLengthError);
        }
        for d in parse_unmap_list(&data[..len], self.num_blocks())? {
            if d.blocks > 0 {
                self.backend().discard(self.offset(d.lba), self.offset(u64::from(d.blocks))).await?;
            }
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::*;

    fn list(descs: &[(u64, u32)]) -> Vec<u8> {
        let mut v = vec![0u8; 8];
        v[0..2].copy_from_slice(&((6 + 16 * descs.len()) as u16).to_be_bytes());
        v[2..4].copy_from_slice(&((16 * descs.len()) as u16).to_be_bytes());
        for &(lba, n) in descs {
            v.extend_from_slice(&lba.to_be_bytes());
            v.extend_from_slice(&n.to_be_bytes());
            v.extend_from_slice(&[0; 4]);
        }
        v
    }

    fn unmap_cdb(len: usize) -> Vec<u8> {
        cdb10(0x42, 0, 0, len as u16)
    }

    #[test]
    fn unmaps_ranges() {
        let d = disk(100);
        run_data(&d, &cdb10(0x2A, 0, 0, 20), vec![0x55; 20 * 512]).unwrap();
        let l = list(&[(0, 2), (10, 5), (19, 0)]);
        assert_eq!(run_data(&d, &unmap_cdb(l.len()), l), Ok(vec![]));
        assert_eq!(run(&d, &cdb10(0x28, 0, 0, 2)).unwrap(), vec![0; 1024]);
        assert_eq!(run(&d, &cdb10(0x28, 0, 2, 1)).unwrap(), vec![0x55; 512]);
        assert_eq!(run(&d, &cdb10(0x28, 0, 10, 5)).unwrap(), vec![0; 2560]);
        assert_eq!(run(&d, &unmap_cdb(0)), Ok(vec![]), "empty parameter list");
        let l = list(&[]);
        assert_eq!(run_data(&d, &unmap_cdb(8), l), Ok(vec![]), "no descriptors");
    }

    #[test]
    fn errors() {
        let d = disk(100);
        let l = list(&[(99, 2)]);
        assert_eq!(run_data(&d, &unmap_cdb(l.len()), l), Err(ScsiError::LbaOutOfRange { lba: 99 }));
        let l = list(&[(u64::MAX, 2)]);
        assert_eq!(run_data(&d, &unmap_cdb(l.len()), l), Err(ScsiError::LbaOutOfRange { lba: u64::MAX }));
        assert_eq!(run_data(&d, &unmap_cdb(4), vec![0; 4]), Err(ScsiError::ParameterListLengthError));
        assert_eq!(run_data(&d, &unmap_cdb(24), vec![0; 8]), Err(ScsiError::ParameterListLengthError));
        assert_eq!(Command::decode(&cdb10(0x42, 1, 0, 24)), Err(ScsiError::field(1, 0)), "ANCHOR");
        let mut reserved = cdb10(0x42, 0, 0, 24);
        reserved[2] = 1;
        assert_eq!(Command::decode(&reserved), Err(ScsiError::field(2, 0)), "reserved");
        let many: Vec<(u64, u32)> = (0..=MAX_UNMAP_DESCRIPTORS as u64).map(|i| (i % 100, 0)).collect();
        let l = list(&many);
        assert_eq!(parse_unmap_list(&l, 100), Err(ScsiError::param(2, None)));
        let ro = disk_with(10, DiskConfig { readonly: true, ..Default::default() });
        let l = list(&[(0, 1)]);
        assert_eq!(run_data(&ro, &unmap_cdb(l.len()), l), Err(ScsiError::WriteProtected));
        let fat = disk_with(10, DiskConfig { thin: false, ..Default::default() });
        let l = list(&[(0, 1)]);
        assert_eq!(run_data(&fat, &unmap_cdb(l.len()), l), Err(ScsiError::InvalidOpcode(0x42)));
    }

    #[test]
    fn partial_descriptors_are_ignored() {
        let mut l = list(&[(1, 1)]);
        l.truncate(20);
        assert_eq!(parse_unmap_list(&l, 100), Ok(vec![]));
    }
}

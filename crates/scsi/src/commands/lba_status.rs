//! GET LBA STATUS (SBC-4 5.7): which LBAs are mapped or deallocated.
//!
//! Only the `mem` backend can tell (`MemBackend::is_allocated`, per 64 KiB
//! chunk); other backends report every LBA mapped, which SBC-4 allows.

use lunar_block::Backend;

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{truncate, Disk};
use crate::error::ScsiError;

/// Most LBAs examined by one command, so a huge disk cannot stall the I/O
/// thread; the last descriptor then ends early, which SBC-4 5.7 allows.
const MAX_SCAN_BLOCKS: u64 = 1 << 20;
/// Most descriptors returned.
const MAX_DESCRIPTORS: usize = 64;

pub(crate) fn decode(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::GetLbaStatus { lba: c.be64(2), alloc_len: c.be32(10) })
}

/// PROVISIONING STATUS (SBC-4 table 66).
const MAPPED: u8 = 0;
const DEALLOCATED: u8 = 1;

impl Disk {
    fn is_mapped(&self, lba: u64) -> bool {
        let mut b = self.backend();
        loop {
            match b {
                Backend::Mem(m) => return m.is_allocated(self.offset(lba)),
                Backend::Fault(f) => b = f.inner(),
                _ => return true,
            }
        }
    }

    /// LBA status descriptors from `lba` on, as many as fit `alloc_len`.
    pub(crate) fn get_lba_status(&self, lba: u64, alloc_len: u32) -> Vec<u8> {
        let alloc = usize::try_from(alloc_len).unwrap_or(usize::MAX);
        let wanted = (alloc.saturating_sub(8) / 16).clamp(1, MAX_DESCRIPTORS);
        let mut descs = Vec::new();
        let mut at = lba;
        let limit = self.num_blocks().min(lba.saturating_add(MAX_SCAN_BLOCKS));
        while descs.len() < wanted && at < limit {
            let mapped = self.is_mapped(at);
            let mut end = at + 1;
            while end < limit && self.is_mapped(end) == mapped {
                end += 1;
            }
            descs.push((at, end - at, if mapped { MAPPED } else { DEALLOCATED }));
            at = end;
        }
        let mut d = Vec::with_capacity(8 + 16 * descs.len());
        d.extend_from_slice(&((4 + 16 * descs.len()) as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        for (start, n, status) in descs {
            d.extend_from_slice(&start.to_be_bytes());
            d.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
            d.extend_from_slice(&[status, 0, 0, 0]);
        }
        truncate(d, alloc)
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    #[test]
    fn reports_mapped_and_deallocated() {
        let d = disk(1024); // 4 chunks of 128 blocks
        run_data(&d, &cdb10(0x2A, 0, 130, 1), vec![1; 512]).unwrap();
        let r = run(&d, &cdb16(0x9E, 0x12, 0, 1000)).unwrap();
        assert_eq!(&r[..4], &[0, 0, 0, 4 + 3 * 16]);
        assert_eq!(&r[8..16], &0u64.to_be_bytes());
        assert_eq!(&r[16..20], &128u32.to_be_bytes());
        assert_eq!(r[20], 1, "deallocated");
        assert_eq!(&r[24..32], &128u64.to_be_bytes());
        assert_eq!(&r[32..36], &128u32.to_be_bytes());
        assert_eq!(r[36], 0, "mapped");
        assert_eq!(&r[40..48], &256u64.to_be_bytes());
        assert_eq!(&r[48..52], &768u32.to_be_bytes());
        let one = run(&d, &cdb16(0x9E, 0x12, 1023, 24)).unwrap();
        assert_eq!(one.len(), 24);
        assert_eq!(&one[8..16], &1023u64.to_be_bytes());
        assert_eq!(run(&d, &cdb16(0x9E, 0x12, 0, 10)).unwrap().len(), 10);
    }

    #[test]
    fn errors() {
        let d = disk(100);
        assert_eq!(run(&d, &cdb16(0x9E, 0x12, 100, 24)), Err(ScsiError::LbaOutOfRange { lba: 100 }));
        assert_eq!(run(&d, &cdb16(0x9E, 0x12, u64::MAX, 24)), Err(ScsiError::LbaOutOfRange { lba: u64::MAX }));
        let fat = disk_with(10, DiskConfig { thin: false, ..Default::default() });
        assert_eq!(run(&fat, &cdb16(0x9E, 0x12, 0, 24)), Err(ScsiError::field(1, 4)));
    }
}

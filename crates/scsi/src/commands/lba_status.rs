//! GET LBA STATUS (SBC-4 5.7): which LBAs are mapped or deallocated.
//!
//! The backend tells ([`lunar_block::Backend::allocation`]): `mem` per
//! 64 KiB chunk, `file` from the file system's holes; a backend that cannot
//! tell reports every LBA mapped, which SBC-4 allows. A logical block that
//! is partly mapped is mapped.

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{truncate, Disk};
use crate::error::ScsiError;

/// Most LBAs examined by one command, so a huge disk cannot stall the I/O
/// thread; the last descriptor then ends early, which SBC-4 5.7 allows.
const MAX_SCAN_BLOCKS: u64 = 1 << 24;
/// Most descriptors returned.
const MAX_DESCRIPTORS: usize = 64;

pub(crate) fn decode(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::GetLbaStatus { lba: c.be64(2), alloc_len: c.be32(10) })
}

/// PROVISIONING STATUS (SBC-4 table 66).
const MAPPED: u8 = 0;
const DEALLOCATED: u8 = 1;

/// Byte extents to block extents of `bs` bytes: a block with any mapped
/// byte is mapped; adjacent extents of one state merge; at most `max`.
fn block_extents(bytes: Vec<(u64, u64, bool)>, bs: u64, max: usize) -> Vec<(u64, u64, bool)> {
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    for (offset, len, mapped) in bytes {
        // Round out to whole blocks: a block with any mapped byte is mapped.
        let mut first = offset / bs;
        let last = (offset + len).div_ceil(bs);
        if let Some(prev) = out.last_mut() {
            let prev_end = prev.0 + prev.1;
            if prev_end > first {
                if mapped && !prev.2 {
                    // The shared block is mapped: take it from the previous extent.
                    prev.1 -= prev_end - first;
                    if prev.1 == 0 {
                        out.pop();
                    }
                } else {
                    first = prev_end;
                }
            }
        }
        if first >= last {
            continue;
        }
        if let Some(prev) = out.last_mut().filter(|p| p.2 == mapped && p.0 + p.1 == first) {
            prev.1 += last - first;
        } else if out.len() == max {
            break;
        } else {
            out.push((first, last - first, mapped));
        }
    }
    out
}

impl Disk {
    /// `(first LBA, blocks, mapped)` extents from `lba` on, in order, at
    /// most `max` of them, covering at most [`MAX_SCAN_BLOCKS`].
    async fn lba_extents(&self, lba: u64, max: usize) -> Result<Vec<(u64, u64, bool)>, ScsiError> {
        let end = self.num_blocks().min(lba.saturating_add(MAX_SCAN_BLOCKS));
        let bs = u64::from(self.block_size());
        let bytes = self.backend().allocation_async(self.offset(lba), self.offset(end - lba)).await?;
        Ok(block_extents(bytes, bs, max))
    }

    /// LBA status descriptors from `lba` on, as many as fit `alloc_len`.
    pub(crate) async fn get_lba_status(&self, lba: u64, alloc_len: u32) -> Result<Vec<u8>, ScsiError> {
        let alloc = usize::try_from(alloc_len).unwrap_or(usize::MAX);
        let wanted = (alloc.saturating_sub(8) / 16).clamp(1, MAX_DESCRIPTORS);
        let descs = self.lba_extents(lba, wanted).await?;
        let mut d = Vec::with_capacity(8 + 16 * descs.len());
        d.extend_from_slice(&((4 + 16 * descs.len()) as u32).to_be_bytes());
        d.extend_from_slice(&[0; 4]);
        for (start, n, mapped) in descs {
            d.extend_from_slice(&start.to_be_bytes());
            d.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_be_bytes());
            d.extend_from_slice(&[if mapped { MAPPED } else { DEALLOCATED }, 0, 0, 0]);
        }
        Ok(truncate(d, alloc))
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
        // Only what fits the allocation length; the last extent runs to the end.
        let two = run(&d, &cdb16(0x9E, 0x12, 0, 40)).unwrap();
        assert_eq!(&two[..4], &[0, 0, 0, 4 + 2 * 16]);
    }

    #[test]
    fn unmap_deallocates_whole_chunks() {
        let d = disk(1024);
        run_data(&d, &cdb10(0x2A, 0, 0, 512), vec![3; 512 * 512]).unwrap();
        let all = run(&d, &cdb16(0x9E, 0x12, 0, 1000)).unwrap();
        assert_eq!(&all[..4], &[0, 0, 0, 4 + 2 * 16]);
        assert_eq!(&all[16..21], &[0, 0, 2, 0, 0], "512 blocks mapped");
        // UNMAP of blocks 120..300: chunk 1 (128..256) is deallocated, the others only zeroed.
        let mut list = vec![0, 22, 0, 16, 0, 0, 0, 0];
        list.extend_from_slice(&120u64.to_be_bytes());
        list.extend_from_slice(&180u32.to_be_bytes());
        list.extend_from_slice(&[0; 4]);
        run_data(&d, &cdb10(0x42, 0, 0, 24), list).unwrap();
        let r = run(&d, &cdb16(0x9E, 0x12, 0, 1000)).unwrap();
        let desc = |i: usize| {
            let b = &r[8 + 16 * i..24 + 16 * i];
            (u64::from_be_bytes(b[..8].try_into().unwrap()), u32::from_be_bytes(b[8..12].try_into().unwrap()), b[12])
        };
        assert_eq!(&r[..4], &[0, 0, 0, 4 + 4 * 16]);
        assert_eq!(desc(0), (0, 128, 0));
        assert_eq!(desc(1), (128, 128, 1));
        assert_eq!(desc(2), (256, 256, 0));
        assert_eq!(desc(3), (512, 512, 1));
        assert_eq!(run(&d, &cdb10(0x28, 0, 130, 1)).unwrap(), vec![0; 512]);
        assert_eq!(run(&d, &cdb10(0x28, 0, 120, 1)).unwrap(), vec![0; 512]);
        assert_eq!(run(&d, &cdb10(0x28, 0, 119, 1)).unwrap(), vec![3; 512]);
        // Starting inside an extent reports from that LBA.
        let r = run(&d, &cdb16(0x9E, 0x12, 200, 24)).unwrap();
        assert_eq!(&r[8..20], &[0, 0, 0, 0, 0, 0, 0, 200, 0, 0, 0, 56]);
        assert_eq!(r[20], 1);
    }

    #[test]
    fn partly_mapped_blocks_are_mapped() {
        use super::block_extents;
        let bytes = vec![(0, 700, false), (700, 100, true), (800, 1248, false)];
        assert_eq!(block_extents(bytes.clone(), 512, 8), vec![(0, 1, false), (1, 1, true), (2, 2, false)]);
        assert_eq!(block_extents(bytes, 512, 2), vec![(0, 1, false), (1, 1, true)]);
        let tail = vec![(0, 1024, true), (1024, 100, false), (1124, 900, true)];
        assert_eq!(block_extents(tail, 512, 8), vec![(0, 4, true)]);
        assert_eq!(block_extents(vec![(0, 512, false), (512, 10, true)], 512, 8), vec![(0, 1, false), (1, 1, true)]);
        assert_eq!(block_extents(vec![(0, 10, true), (10, 502, false)], 512, 8), vec![(0, 1, true)]);
    }

    #[test]
    fn backends_that_cannot_tell_report_mapped() {
        let d = Disk::new(DiskConfig::default(), Backend::null(1 << 20));
        let r = run(&d, &cdb16(0x9E, 0x12, 5, 1000)).unwrap();
        assert_eq!(&r[..4], &[0, 0, 0, 20]);
        assert_eq!(&r[16..21], &[0, 0, 0x07, 0xFB, 0]);
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

//! WRITE ATOMIC(16) (SBC-4 5.48, atomic writes 4.29).
//!
//! What "atomic" means here: the data-out of one WRITE ATOMIC reaches the
//! backend as one backend write, never split into pieces with other
//! commands' writes between them (WRITE(16) of the same size may be, e.g.
//! WRITE SAME). Word for word the `mem` backend is not atomic against a
//! READ running at the same time on another I/O thread; the target core
//! serializes overlapping commands (as it does for COMPARE AND WRITE), and
//! that is what makes the write all-or-nothing to other initiators. Across
//! a crash of the daemon the `file` backend gives what the file system
//! gives a single write: no more.
//!
//! Limits (block limits VPD page, SBC-4 6.6.4): [`MAX_ATOMIC_TRANSFER_BYTES`],
//! an ATOMIC ALIGNMENT and an ATOMIC TRANSFER LENGTH GRANULARITY of one
//! block (none), and no atomic boundaries (ATOMIC BOUNDARY must be zero).

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{Disk, MAX_ATOMIC_TRANSFER_BYTES};
use crate::error::ScsiError;

/// The atomic write limits of a disk, in logical blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AtomicLimits {
    /// MAXIMUM ATOMIC TRANSFER LENGTH.
    pub max_blocks: u32,
    /// ATOMIC ALIGNMENT: the LBA must be a multiple of it.
    pub alignment: u32,
    /// ATOMIC TRANSFER LENGTH GRANULARITY: the length must be a multiple of it.
    pub granularity: u32,
}

impl AtomicLimits {
    /// SBC-4 4.29.2: each limit exceeded is an invalid field in the CDB
    /// (the LBA at byte 2, the TRANSFER LENGTH at byte 12).
    pub fn check(&self, lba: u64, blocks: u32) -> Result<(), ScsiError> {
        if blocks > self.max_blocks || !blocks.is_multiple_of(self.granularity.max(1)) {
            return Err(ScsiError::field_byte(12));
        }
        if !lba.is_multiple_of(u64::from(self.alignment.max(1))) {
            return Err(ScsiError::field_byte(2));
        }
        Ok(())
    }
}

pub(crate) fn decode16(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::WriteAtomic {
        lba: c.be64(2),
        blocks: u32::from(c.be16(12)),
        fua: c.bit(1, 3),
        dpo: c.bit(1, 4),
        group: c.bits(14, 0, 6),
    })
}

impl Disk {
    pub fn atomic_limits(&self) -> AtomicLimits {
        let max = MAX_ATOMIC_TRANSFER_BYTES / u64::from(self.block_size());
        AtomicLimits { max_blocks: u32::try_from(max).unwrap_or(u32::MAX), alignment: 1, granularity: 1 }
    }

    /// Range first (libiscsi's BeyondEol sends lengths past the end that
    /// may also break the limits), then the atomic limits.
    pub(crate) fn validate_write_atomic(&self, lba: u64, blocks: u32) -> Result<(), ScsiError> {
        self.check_range(lba, u64::from(blocks))?;
        self.atomic_limits().check(lba, blocks)
    }
}

#[cfg(test)]
mod tests {
    use super::AtomicLimits;
    use crate::test_util::*;
    use crate::*;

    fn wa16(lba: u64, blocks: u16, b1: u8) -> Vec<u8> {
        let mut c = cdb16(0x9C, b1, lba, 0);
        c[12..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }

    #[test]
    fn writes_and_reads_back() {
        let d = disk(1000);
        let data = pattern(8 * 512, 9);
        let cmd = Command::decode(&wa16(992, 8, 0x18)).unwrap();
        assert_eq!(cmd, Command::WriteAtomic { lba: 992, blocks: 8, fua: true, dpo: true, group: 0 });
        assert_eq!(
            (cmd.name(), cmd.data_out_len(512), cmd.direction()),
            ("WRITE ATOMIC(16)", 4096, DataDirection::ToDevice)
        );
        assert!(cmd.is_write() && cmd.is_medium_access());
        assert_eq!(run_data(&d, &wa16(992, 8, 0x18), data.clone()), Ok(vec![]));
        assert_eq!(run(&d, &cdb10(0x28, 0, 992, 8)).unwrap(), data);
        let zero = Command::decode(&wa16(5, 0, 0)).unwrap();
        assert_eq!((zero.data_out_len(512), zero.direction()), (0, DataDirection::None));
        assert_eq!(run(&d, &wa16(5, 0, 0)), Ok(vec![]), "zero blocks");
    }

    #[test]
    fn errors() {
        let d = disk(1000);
        assert_eq!(run(&d, &wa16(1000, 0, 0)), Err(ScsiError::LbaOutOfRange { lba: 1000 }));
        assert_eq!(run(&d, &wa16(u64::MAX, 1, 0)), Err(ScsiError::LbaOutOfRange { lba: u64::MAX }));
        assert_eq!(run_data(&d, &wa16(999, 2, 0), vec![0; 1024]), Err(ScsiError::LbaOutOfRange { lba: 999 }));
        assert_eq!(Command::decode(&wa16(0, 1, 0x20)), Err(ScsiError::field(1, 5)), "WRPROTECT");
        let mut boundary = wa16(0, 1, 0);
        boundary[11] = 1;
        assert_eq!(Command::decode(&boundary), Err(ScsiError::field(11, 0)), "ATOMIC BOUNDARY");
        assert_eq!(
            run_data(&d, &wa16(0, 2, 0), vec![0; 512]),
            Err(ScsiError::DataOutLength { expected: 1024, actual: 512 })
        );
        let big = Disk::new(DiskConfig::default(), Backend::null(1 << 30));
        let max = big.atomic_limits().max_blocks;
        assert_eq!(max, 2048);
        let too_many = u16::try_from(max + 1).unwrap();
        assert_eq!(
            run_data(&big, &wa16(0, too_many, 0), vec![0; 512 * (max as usize + 1)]),
            Err(ScsiError::field_byte(12))
        );
        let ro = disk_with(10, DiskConfig { readonly: true, ..Default::default() });
        assert_eq!(run_data(&ro, &wa16(0, 1, 0), vec![0; 512]), Err(ScsiError::WriteProtected));
    }

    #[test]
    fn alignment_and_granularity() {
        let l = AtomicLimits { max_blocks: 64, alignment: 8, granularity: 4 };
        assert_eq!(l.check(16, 8), Ok(()));
        assert_eq!(l.check(0, 0), Ok(()));
        assert_eq!(l.check(4, 8), Err(ScsiError::field_byte(2)));
        assert_eq!(l.check(8, 6), Err(ScsiError::field_byte(12)));
        assert_eq!(l.check(8, 68), Err(ScsiError::field_byte(12)));
        let none = AtomicLimits { max_blocks: 8, alignment: 0, granularity: 0 };
        assert_eq!(none.check(3, 5), Ok(()));
    }
}

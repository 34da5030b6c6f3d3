//! READ CAPACITY(10) (SBC-4 5.20) and READ CAPACITY(16) (SBC-4 5.21).

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{truncate, Disk};
use crate::error::ScsiError;

/// PMI and the LOGICAL BLOCK ADDRESS field are obsolete in SBC-4; with PMI
/// clear the LBA must be zero (SBC-3 5.15).
pub(crate) fn decode10(c: Cdb<'_>) -> Result<Command, ScsiError> {
    if !c.bit(8, 0) && c.be32(2) != 0 {
        return Err(ScsiError::field_byte(2));
    }
    Ok(Command::ReadCapacity10)
}

pub(crate) fn decode16(c: Cdb<'_>) -> Result<Command, ScsiError> {
    if !c.bit(14, 0) && c.be64(2) != 0 {
        return Err(ScsiError::field_byte(2));
    }
    Ok(Command::ReadCapacity16 { alloc_len: c.be32(10) })
}

impl Disk {
    fn last_lba(&self) -> u64 {
        self.num_blocks().saturating_sub(1)
    }

    /// READ CAPACITY(10) parameter data (SBC-4 5.20.2): the last LBA, or
    /// FFFFFFFFh when it needs READ CAPACITY(16), and the block length.
    pub(crate) fn read_capacity10(&self) -> Vec<u8> {
        let last = u32::try_from(self.last_lba()).unwrap_or(u32::MAX);
        let mut d = Vec::with_capacity(8);
        d.extend_from_slice(&last.to_be_bytes());
        d.extend_from_slice(&self.block_size().to_be_bytes());
        d
    }

    /// READ CAPACITY(16) parameter data (SBC-4 5.21.2): no protection, one
    /// logical block per physical block, LBPME and LBPRZ when thin.
    pub(crate) fn read_capacity16(&self, alloc_len: u32) -> Vec<u8> {
        let mut d = vec![0u8; 32];
        d[0..8].copy_from_slice(&self.last_lba().to_be_bytes());
        d[8..12].copy_from_slice(&self.block_size().to_be_bytes());
        if self.config().thin {
            d[14] = 0x80 | 0x40;
        }
        truncate(d, usize::try_from(alloc_len).unwrap_or(usize::MAX))
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    #[test]
    fn read_capacity10() {
        let d = disk(1000);
        let r = run(&d, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(r, vec![0, 0, 0x03, 0xE7, 0, 0, 2, 0]);
        assert_eq!(run(&d, &[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0]), Err(ScsiError::field_byte(2)));
        assert!(run(&d, &[0x25, 0, 0, 0, 0, 1, 0, 0, 1, 0]).is_ok(), "PMI with an LBA");
        assert_eq!(run(&d, &[0x25, 1, 0, 0, 0, 0, 0, 0, 0, 0]), Err(ScsiError::field(1, 0)));
        assert_eq!(run(&d, &[0x25, 0, 0, 0, 0, 0, 0, 0, 2, 0]), Err(ScsiError::field(8, 1)));
    }

    #[test]
    fn read_capacity16() {
        let d = disk_with(1000, DiskConfig { block_size: 4096, ..Default::default() });
        let mut cdb = cdb16(0x9E, 0x10, 0, 32);
        let r = run(&d, &cdb).unwrap();
        assert_eq!(r.len(), 32);
        assert_eq!(&r[..12], &[0, 0, 0, 0, 0, 0, 0x03, 0xE7, 0, 0, 0x10, 0]);
        assert_eq!(r[14], 0xC0, "LBPME and LBPRZ");
        cdb[13] = 12;
        assert_eq!(run(&d, &cdb).unwrap().len(), 12);
        cdb[13] = 0;
        assert_eq!(run(&d, &cdb).unwrap(), Vec::<u8>::new(), "allocation length 0 is not an error");
        let fat = disk_with(10, DiskConfig { thin: false, ..Default::default() });
        assert_eq!(run(&fat, &cdb16(0x9E, 0x10, 0, 32)).unwrap()[14], 0);
        assert_eq!(run(&d, &cdb16(0x9E, 0x10, 5, 32)), Err(ScsiError::field_byte(2)));
        assert_eq!(run(&d, &cdb16(0x9E, 0x11, 0, 32)), Err(ScsiError::field(1, 4)), "unknown service action");
    }

    #[test]
    fn capacity_commands_follow_a_resize() {
        let d = disk(1000);
        run_data(&d, &cdb16(0x8A, 0, 999, 1), vec![3; 512]).unwrap();
        d.resize(2000 * 512).unwrap();
        assert_eq!(&run(&d, &cdb16(0x9E, 0x10, 0, 32)).unwrap()[..8], &1999u64.to_be_bytes());
        assert_eq!(&run(&d, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap()[..4], &1999u32.to_be_bytes());
        assert_eq!(run(&d, &cdb16(0x88, 0, 999, 1)).unwrap(), vec![3; 512], "data kept");
        assert_eq!(run(&d, &cdb16(0x88, 0, 1999, 1)).unwrap(), vec![0; 512], "new blocks read as zeros");
        // GET LBA STATUS covers the new end, and stops there after a shrink.
        assert!(run(&d, &cdb16(0x9E, 0x12, 1999, 24)).is_ok());
        d.resize(500 * 512).unwrap();
        assert_eq!(&run(&d, &cdb16(0x9E, 0x10, 0, 32)).unwrap()[..8], &499u64.to_be_bytes());
        assert_eq!(run(&d, &cdb16(0x88, 0, 999, 1)), Err(ScsiError::LbaOutOfRange { lba: 999 }));
        assert_eq!(run_data(&d, &cdb16(0x8A, 0, 500, 1), vec![0; 512]), Err(ScsiError::LbaOutOfRange { lba: 500 }));
        assert_eq!(run(&d, &cdb16(0x9E, 0x12, 500, 24)), Err(ScsiError::LbaOutOfRange { lba: 500 }));
    }

    #[test]
    fn huge_disk_reports_ffffffff() {
        let d = Disk::new(DiskConfig::default(), Backend::null(1 << 45));
        let r = run(&d, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(&r[..4], &[0xFF; 4]);
    }
}

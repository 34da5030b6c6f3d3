//! SYNCHRONIZE CACHE(10)/(16) (SBC-4 5.27, 5.28) and PRE-FETCH(10)/(16)
//! (SBC-4 5.11, 5.12).

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::Disk;
use crate::error::ScsiError;

/// LBA, NUMBER OF LOGICAL BLOCKS / PREFETCH LENGTH, GROUP NUMBER.
fn range(c: Cdb<'_>) -> (u64, u32, u8) {
    if c.len() == 10 {
        (u64::from(c.be32(2)), u32::from(c.be16(7)), c.bits(6, 0, 5))
    } else {
        (c.be64(2), c.be32(10), c.bits(14, 0, 6))
    }
}

fn sync(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let (lba, blocks, _) = range(c);
    Ok(Command::SynchronizeCache { lba, blocks, immed: c.bit(1, 1), cdb_len: c.len() as u8 })
}

fn prefetch(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let (lba, blocks, group) = range(c);
    Ok(Command::PreFetch { lba, blocks, immed: c.bit(1, 1), group, cdb_len: c.len() as u8 })
}

pub(crate) fn decode_sync10(c: Cdb<'_>) -> Result<Command, ScsiError> {
    sync(c)
}

pub(crate) fn decode_sync16(c: Cdb<'_>) -> Result<Command, ScsiError> {
    sync(c)
}

pub(crate) fn decode_prefetch10(c: Cdb<'_>) -> Result<Command, ScsiError> {
    prefetch(c)
}

pub(crate) fn decode_prefetch16(c: Cdb<'_>) -> Result<Command, ScsiError> {
    prefetch(c)
}

impl Disk {
    /// SYNCHRONIZE CACHE: the backend flushes everything, whatever the
    /// range (a superset is allowed, SBC-4 5.27). IMMED is honoured by
    /// completing after the flush anyway.
    pub(crate) async fn synchronize_cache(&self) -> Result<Vec<u8>, ScsiError> {
        self.backend().flush().await?;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    #[test]
    fn synchronize_cache() {
        let d = disk(100);
        assert_eq!(run(&d, &cdb10(0x35, 0, 0, 0)), Ok(vec![]));
        assert_eq!(run(&d, &cdb10(0x35, 0x02, 10, 90)), Ok(vec![]));
        assert_eq!(run(&d, &cdb16(0x91, 0, 0, 100)), Ok(vec![]));
        assert_eq!(run(&d, &cdb16(0x91, 0, 100, 0)), Err(ScsiError::LbaOutOfRange { lba: 100 }));
        assert_eq!(run(&d, &cdb10(0x35, 0, 50, 51)), Err(ScsiError::LbaOutOfRange { lba: 50 }));
        // SYNC_NV (SBC-3) is obsolete in SBC-4: accepted and ignored.
        assert_eq!(run(&d, &cdb10(0x35, 0x06, 0, 0)), Ok(vec![]), "SYNC_NV");
        assert_eq!(run(&d, &cdb16(0x91, 0x04, 0, 0)), Ok(vec![]), "SYNC_NV");
        assert_eq!(Command::decode(&cdb10(0x35, 0x08, 0, 0)), Err(ScsiError::field(1, 3)));
        let c = Command::decode(&cdb10(0x35, 0x02, 1, 2)).unwrap();
        assert_eq!(c, Command::SynchronizeCache { lba: 1, blocks: 2, immed: true, cdb_len: 10 });
        assert!(c.uses_write_error_policy() && !c.is_write());
        // Allowed on a readonly unit.
        let ro = disk_with(10, DiskConfig { readonly: true, ..Default::default() });
        assert_eq!(run(&ro, &cdb10(0x35, 0, 0, 0)), Ok(vec![]));
    }

    #[test]
    fn prefetch() {
        let d = disk(100);
        assert_eq!(run(&d, &cdb10(0x34, 0, 0, 10)), Ok(vec![]));
        assert_eq!(run(&d, &cdb10(0x34, 0x02, 0, 0)), Ok(vec![]), "IMMED, zero blocks");
        assert_eq!(run(&d, &cdb16(0x90, 0, 99, 1)), Ok(vec![]));
        assert_eq!(run(&d, &cdb16(0x90, 0, 99, 2)), Err(ScsiError::LbaOutOfRange { lba: 99 }));
        assert_eq!(run(&d, &cdb10(0x34, 0, 101, 0)), Err(ScsiError::LbaOutOfRange { lba: 101 }));
        assert_eq!(Command::decode(&cdb10(0x34, 0x01, 0, 0)), Err(ScsiError::field(1, 0)));
    }
}

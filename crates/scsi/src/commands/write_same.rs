//! WRITE SAME(10)/(16) (SBC-4 5.45, 5.46).
//!
//! The block limits VPD page sets WSNZ (a NUMBER OF LOGICAL BLOCKS of zero
//! is refused) and ANC_SUP is zero (ANCHOR is refused). With UNMAP on a
//! thin disk an all-zero block deallocates the range (LBPRZ: it reads back
//! as zeros); with NDOB there is no data-out and the block is all zeros.

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{Disk, MAX_WRITE_SAME_BLOCKS};
use crate::error::ScsiError;
use lunar_block::Bytes;

/// Non-zero data is written in pieces of at most this size.
const CHUNK_BYTES: usize = 1024 * 1024;

pub(crate) fn decode10(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::WriteSame {
        lba: u64::from(c.be32(2)),
        blocks: u32::from(c.be16(7)),
        unmap: c.bit(1, 3),
        anchor: c.bit(1, 4),
        ndob: false,
        group: c.bits(6, 0, 5),
        cdb_len: 10,
    })
}

pub(crate) fn decode16(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::WriteSame {
        lba: c.be64(2),
        blocks: c.be32(10),
        unmap: c.bit(1, 3),
        anchor: c.bit(1, 4),
        ndob: c.bit(1, 0),
        group: c.bits(14, 0, 6),
        cdb_len: 16,
    })
}

impl Disk {
    /// The checks of WRITE SAME that need the capacity, in the order
    /// libiscsi expects: range first (even for zero blocks), then WSNZ,
    /// the length limit and ANCHOR.
    pub(crate) fn validate_write_same(
        &self,
        lba: u64,
        blocks: u32,
        anchor: bool,
        cdb_len: u8,
    ) -> Result<(), ScsiError> {
        self.check_range(lba, u64::from(blocks))?;
        let len_byte = if cdb_len == 10 { 7 } else { 10 };
        if blocks == 0 || u64::from(blocks) > MAX_WRITE_SAME_BLOCKS {
            return Err(ScsiError::field_byte(len_byte));
        }
        if anchor {
            return Err(ScsiError::field(1, 4));
        }
        Ok(())
    }

    pub(crate) async fn write_same(
        &self,
        lba: u64,
        blocks: u32,
        unmap: bool,
        ndob: bool,
        data: Bytes,
    ) -> Result<Vec<u8>, ScsiError> {
        let bs = self.bytes(1);
        let block = if ndob {
            Bytes::from(vec![0u8; bs])
        } else if data.len() != bs {
            return Err(ScsiError::DataOutLength { expected: bs, actual: data.len() });
        } else {
            data
        };
        let offset = self.offset(lba);
        let len = self.offset(u64::from(blocks));
        if block.iter().all(|&b| b == 0) {
            if unmap && self.config().thin {
                self.backend().discard(offset, len).await?;
            } else {
                self.backend().write_zeroes(offset, len).await?;
            }
            if !self.write_cache_enabled() {
                self.backend().flush().await?;
            }
            return Ok(Vec::new());
        }
        let per_chunk = (CHUNK_BYTES / bs).max(1) as u64;
        let fua = !self.write_cache_enabled();
        let mut done = 0u64;
        while done < u64::from(blocks) {
            let n = per_chunk.min(u64::from(blocks) - done);
            let buf = block.repeat(n as usize);
            self.backend().write(self.offset(lba + done), buf, fua).await?;
            done += n;
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    #[test]
    fn writes_the_block_everywhere() {
        let d = disk(5000);
        let block = pattern(512, 5);
        assert_eq!(run_data(&d, &cdb10(0x41, 0, 10, 4000), block.clone()), Ok(vec![]));
        let back = run(&d, &cdb16(0x88, 0, 10, 4000)).unwrap();
        assert!(back.chunks(512).all(|b| b == block.as_slice()));
        assert_eq!(run(&d, &cdb10(0x28, 0, 9, 1)).unwrap(), vec![0; 512]);
        assert_eq!(run(&d, &cdb10(0x28, 0, 4010, 1)).unwrap(), vec![0; 512]);
    }

    #[test]
    fn zeros_unmap_and_ndob() {
        let d = disk(100);
        run_data(&d, &cdb10(0x2A, 0, 0, 11), vec![0xEE; 11 * 512]).unwrap();
        assert_eq!(run_data(&d, &cdb10(0x41, 0x08, 0, 5), vec![0; 512]), Ok(vec![]), "UNMAP");
        assert_eq!(run(&d, &cdb10(0x28, 0, 0, 5)).unwrap(), vec![0; 2560]);
        let ndob = Command::decode(&cdb16(0x93, 0x09, 5, 5)).unwrap();
        assert_eq!((ndob.data_out_len(512), ndob.direction()), (0, DataDirection::None));
        assert_eq!(run(&d, &cdb16(0x93, 0x09, 5, 5)), Ok(vec![]), "UNMAP NDOB");
        assert_eq!(run(&d, &cdb10(0x28, 0, 5, 5)).unwrap(), vec![0; 2560]);
        assert_eq!(run(&d, &cdb10(0x28, 0, 10, 1)).unwrap(), vec![0xEE; 512]);
        let c = Command::decode(&cdb16(0x93, 0x08, 5, 5)).unwrap();
        assert_eq!(c.data_out_len(4096), 4096);
    }

    #[test]
    fn errors() {
        let d = disk(100);
        let b = vec![1u8; 512];
        assert_eq!(run_data(&d, &cdb10(0x41, 0, 0, 0), b.clone()), Err(ScsiError::field_byte(7)), "WSNZ");
        assert_eq!(run_data(&d, &cdb16(0x93, 0, 0, 0), b.clone()), Err(ScsiError::field_byte(10)));
        assert_eq!(run_data(&d, &cdb10(0x41, 0, 101, 0), b.clone()), Err(ScsiError::LbaOutOfRange { lba: 101 }));
        assert_eq!(
            run_data(&d, &cdb10(0x41, 0, 0xFFFF_FFFF, 0), b.clone()),
            Err(ScsiError::LbaOutOfRange { lba: 0xFFFF_FFFF })
        );
        assert_eq!(run_data(&d, &cdb10(0x41, 0, 99, 2), b.clone()), Err(ScsiError::LbaOutOfRange { lba: 99 }));
        assert_eq!(run_data(&d, &cdb10(0x41, 0x10, 0, 1), b.clone()), Err(ScsiError::field(1, 4)), "ANCHOR");
        assert_eq!(Command::decode(&cdb10(0x41, 0x01, 0, 1)), Err(ScsiError::field(1, 0)), "NDOB in WS10");
        assert_eq!(Command::decode(&cdb10(0x41, 0x20, 0, 1)), Err(ScsiError::field(1, 5)), "WRPROTECT");
        assert_eq!(Command::decode(&cdb10(0x41, 0x04, 0, 1)), Err(ScsiError::field(1, 2)), "PBDATA");
        assert_eq!(
            run_data(&d, &cdb10(0x41, 0, 0, 1), vec![1; 256]),
            Err(ScsiError::DataOutLength { expected: 512, actual: 256 })
        );
        assert_eq!(
            run_data(&d, &cdb10(0x41, 0, 0, 1), vec![1; 1024]),
            Err(ScsiError::DataOutLength { expected: 512, actual: 1024 })
        );
        let big = Disk::new(DiskConfig::default(), Backend::null(1 << 40));
        let too_many = (MAX_WRITE_SAME_BLOCKS + 1) as u32;
        assert_eq!(run_data(&big, &cdb16(0x93, 0, 0, too_many), b.clone()), Err(ScsiError::field_byte(10)));
        let ro = disk_with(10, DiskConfig { readonly: true, ..Default::default() });
        assert_eq!(run_data(&ro, &cdb10(0x41, 0, 0, 1), b), Err(ScsiError::WriteProtected));
    }
}

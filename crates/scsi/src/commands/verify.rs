//! VERIFY(10)/(12)/(16) (SBC-4 5.32-5.34) and WRITE AND VERIFY(10)/(12)/(16)
//! (SBC-4 5.41-5.43).
//!
//! BYTCHK (SBC-4 table 141): 00b verify the medium only (read it), 01b
//! compare the whole Data-Out Buffer, 11b compare one block of data-out
//! with every block of the range; 10b is reserved. WRITE AND VERIFY takes
//! 00b and 01b only.

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::Disk;
use crate::error::ScsiError;
use lunar_block::Bytes;

/// Verification reads at most this much at a time.
const CHUNK_BYTES: usize = 1024 * 1024;

struct Fields {
    lba: u64,
    blocks: u32,
    bytchk: u8,
    dpo: bool,
    group: u8,
    cdb_len: u8,
}

fn fields(c: Cdb<'_>, max_bytchk: u8) -> Result<Fields, ScsiError> {
    let bytchk = c.bits(1, 1, 2);
    if bytchk == 2 || bytchk > max_bytchk {
        return Err(ScsiError::field(1, 2));
    }
    let (lba, blocks, group) = match c.len() {
        10 => (u64::from(c.be32(2)), u32::from(c.be16(7)), c.bits(6, 0, 5)),
        12 => (u64::from(c.be32(2)), c.be32(6), c.bits(10, 0, 5)),
        _ => (c.be64(2), c.be32(10), c.bits(14, 0, 6)),
    };
    Ok(Fields { lba, blocks, bytchk, dpo: c.bit(1, 4), group, cdb_len: c.len() as u8 })
}

fn verify(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let f = fields(c, 3)?;
    Ok(Command::Verify {
        lba: f.lba,
        blocks: f.blocks,
        bytchk: f.bytchk,
        dpo: f.dpo,
        group: f.group,
        cdb_len: f.cdb_len,
    })
}

fn write_verify(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let f = fields(c, 1)?;
    Ok(Command::WriteAndVerify {
        lba: f.lba,
        blocks: f.blocks,
        bytchk: f.bytchk,
        dpo: f.dpo,
        group: f.group,
        cdb_len: f.cdb_len,
    })
}

pub(crate) fn decode_verify10(c: Cdb<'_>) -> Result<Command, ScsiError> {
    verify(c)
}

pub(crate) fn decode_verify12(c: Cdb<'_>) -> Result<Command, ScsiError> {
    verify(c)
}

pub(crate) fn decode_verify16(c: Cdb<'_>) -> Result<Command, ScsiError> {
    verify(c)
}

pub(crate) fn decode_write_verify10(c: Cdb<'_>) -> Result<Command, ScsiError> {
    write_verify(c)
}

pub(crate) fn decode_write_verify12(c: Cdb<'_>) -> Result<Command, ScsiError> {
    write_verify(c)
}

pub(crate) fn decode_write_verify16(c: Cdb<'_>) -> Result<Command, ScsiError> {
    write_verify(c)
}

/// The offset of the first byte where `a` and `b` differ.
pub(crate) fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

impl Disk {
    /// VERIFY: reads the range in chunks and, with BYTCHK, compares it.
    /// A miscompare reports the offset of the first differing byte from
    /// the start of the range (SBC-4 5.32).
    pub(crate) async fn verify(&self, lba: u64, blocks: u32, bytchk: u8, data: Bytes) -> Result<Vec<u8>, ScsiError> {
        if blocks == 0 {
            return Ok(Vec::new());
        }
        let bs = self.bytes(1);
        let expected = match bytchk {
            1 => Some(self.take_data(data, self.bytes(u64::from(blocks)))?),
            3 => Some(self.take_data(data, bs)?),
            _ => None,
        };
        let total = self.bytes(u64::from(blocks));
        let chunk = (CHUNK_BYTES / bs).max(1) * bs;
        let mut done = 0usize;
        while done < total {
            let n = chunk.min(total - done);
            let got = self.backend().read(self.offset(lba) + done as u64, n).await?;
            let diff = match (bytchk, &expected) {
                (1, Some(exp)) => first_difference(&got, exp.get(done..done + n).unwrap_or(&[])),
                (3, Some(one)) => {
                    got.chunks(bs).enumerate().find_map(|(i, block)| first_difference(block, one).map(|at| i * bs + at))
                }
                _ => None,
            };
            if let Some(at) = diff {
                return Err(ScsiError::Miscompare { offset: (done + at) as u64 });
            }
            done += n;
        }
        Ok(Vec::new())
    }

    /// WRITE AND VERIFY: writes durably, then reads back and compares.
    pub(crate) async fn write_and_verify(&self, lba: u64, blocks: u32, data: Bytes) -> Result<Vec<u8>, ScsiError> {
        if blocks == 0 {
            return Ok(Vec::new());
        }
        let data = self.take_data(data, self.bytes(u64::from(blocks)))?;
        self.write_blocks(lba, blocks, true, data.clone()).await?;
        self.verify(lba, blocks, 1, data).await
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    #[test]
    fn verify_bytchk_forms() {
        let d = disk(1000);
        let data = pattern(512 * 4, 7);
        run_data(&d, &cdb10(0x2A, 0, 100, 4), data.clone()).unwrap();
        assert_eq!(run(&d, &cdb10(0x2F, 0, 100, 4)), Ok(vec![]), "BYTCHK 0");
        assert_eq!(run_data(&d, &cdb10(0x2F, 0x02, 100, 4), data.clone()), Ok(vec![]), "BYTCHK 1");
        let mut bad = data.clone();
        bad[700] ^= 1;
        assert_eq!(run_data(&d, &cdb12(0xAF, 0x02, 100, 4), bad), Err(ScsiError::Miscompare { offset: 700 }));
        let s = ScsiError::Miscompare { offset: 700 }.sense();
        assert_eq!((s.code(), s.information), (sense::MISCOMPARE_DURING_VERIFY, Some(700)));
        // BYTCHK 11b: one block against each block.
        run_data(&d, &cdb10(0x2A, 0, 200, 3), vec![0xAB; 512 * 3]).unwrap();
        assert_eq!(run_data(&d, &cdb16(0x8F, 0x06, 200, 3), vec![0xAB; 512]), Ok(vec![]));
        assert_eq!(run_data(&d, &cdb16(0x8F, 0x06, 199, 3), vec![0xAB; 512]), Err(ScsiError::Miscompare { offset: 0 }));
        assert_eq!(Command::decode(&cdb10(0x2F, 0x04, 0, 1)), Err(ScsiError::field(1, 2)), "BYTCHK 10b");
        assert_eq!(Command::decode(&cdb10(0x2F, 0x20, 0, 1)), Err(ScsiError::field(1, 5)), "VRPROTECT");
        assert_eq!(Command::decode(&cdb10(0x2F, 0x10, 0, 1)).map(|c| c.opcode()), Ok(0x2F), "DPO");
    }

    #[test]
    fn verify_range_and_zero() {
        let d = disk(1000);
        assert_eq!(run(&d, &cdb10(0x2F, 0, 1000, 1)), Err(ScsiError::LbaOutOfRange { lba: 1000 }));
        assert_eq!(run(&d, &cdb16(0x8F, 0, 999, 2)), Err(ScsiError::LbaOutOfRange { lba: 999 }));
        assert_eq!(run(&d, &cdb10(0x2F, 0x02, 0, 0)), Ok(vec![]));
        let c = Command::decode(&cdb10(0x2F, 0x02, 0, 2)).unwrap();
        assert_eq!((c.data_out_len(512), c.direction()), (1024, DataDirection::ToDevice));
        let c = Command::decode(&cdb10(0x2F, 0x06, 0, 2)).unwrap();
        assert_eq!(c.data_out_len(4096), 4096);
        let c = Command::decode(&cdb10(0x2F, 0, 0, 2)).unwrap();
        assert_eq!((c.data_out_len(512), c.direction()), (0, DataDirection::None));
        assert!(!c.is_write());
    }

    #[test]
    fn write_and_verify() {
        let d = disk(1000);
        let data = pattern(512 * 2, 3);
        for cdb in [cdb10(0x2E, 0x02, 10, 2), cdb12(0xAE, 0x10, 10, 2), cdb16(0x8E, 0, 10, 2)] {
            assert_eq!(run_data(&d, &cdb, data.clone()), Ok(vec![]));
            assert_eq!(run(&d, &cdb10(0x28, 0, 10, 2)).unwrap(), data);
        }
        assert_eq!(Command::decode(&cdb10(0x2E, 0x06, 0, 1)), Err(ScsiError::field(1, 2)));
        assert_eq!(Command::decode(&cdb10(0x2E, 0x20, 0, 1)), Err(ScsiError::field(1, 5)), "WRPROTECT");
        assert_eq!(run(&d, &cdb10(0x2E, 0, 1000, 1)), Err(ScsiError::LbaOutOfRange { lba: 1000 }));
        assert_eq!(run(&d, &cdb10(0x2E, 0, 0, 0)), Ok(vec![]));
        let ro = disk_with(10, DiskConfig { readonly: true, ..Default::default() });
        assert_eq!(run_data(&ro, &cdb10(0x2E, 0, 0, 1), vec![0; 512]), Err(ScsiError::WriteProtected));
    }
}

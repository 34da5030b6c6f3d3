//! READ and WRITE (6)/(10)/(12)/(16) (SBC-4 5.14-5.18, 5.36-5.40) and
//! ORWRITE(16) (SBC-4 5.10).
//!
//! RDPROTECT/WRPROTECT/ORPROTECT are outside the usage masks (no protection
//! information), so a nonzero value fails decoding with INVALID FIELD IN CDB
//! at byte 1 bit 7, as SBC-4 4.21.2 requires for a unit without PI.

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::Disk;
use crate::error::ScsiError;
use lunar_block::Bytes;

/// The fields common to the READ/WRITE family.
struct Rw {
    lba: u64,
    blocks: u32,
    fua: bool,
    dpo: bool,
    group: u8,
    cdb_len: u8,
}

/// Reads the LBA, TRANSFER LENGTH, DPO, FUA and GROUP NUMBER of a 10, 12
/// or 16-byte CDB; 6-byte CDBs are read by [`rw6`].
fn rw(c: Cdb<'_>) -> Rw {
    let (lba, blocks, group) = match c.len() {
        10 => (u64::from(c.be32(2)), u32::from(c.be16(7)), c.bits(6, 0, 5)),
        12 => (u64::from(c.be32(2)), c.be32(6), c.bits(10, 0, 5)),
        _ => (c.be64(2), c.be32(10), c.bits(14, 0, 6)),
    };
    Rw { lba, blocks, fua: c.bit(1, 3), dpo: c.bit(1, 4), group, cdb_len: c.len() as u8 }
}

/// READ(6)/WRITE(6) (SBC-4 5.14, 5.36): a 21-bit LBA, and a TRANSFER
/// LENGTH of zero means 256 blocks.
fn rw6(c: Cdb<'_>) -> Rw {
    let lba = u64::from(c.be24(1) & 0x1F_FFFF);
    let blocks = match c.u8(4) {
        0 => 256,
        n => u32::from(n),
    };
    Rw { lba, blocks, fua: false, dpo: false, group: 0, cdb_len: 6 }
}

fn read(r: Rw) -> Result<Command, ScsiError> {
    Ok(Command::Read { lba: r.lba, blocks: r.blocks, fua: r.fua, dpo: r.dpo, group: r.group, cdb_len: r.cdb_len })
}

fn write(r: Rw) -> Result<Command, ScsiError> {
    Ok(Command::Write { lba: r.lba, blocks: r.blocks, fua: r.fua, dpo: r.dpo, group: r.group, cdb_len: r.cdb_len })
}

pub(crate) fn decode_read6(c: Cdb<'_>) -> Result<Command, ScsiError> {
    read(rw6(c))
}

pub(crate) fn decode_read10(c: Cdb<'_>) -> Result<Command, ScsiError> {
    read(rw(c))
}

pub(crate) fn decode_read12(c: Cdb<'_>) -> Result<Command, ScsiError> {
    read(rw(c))
}

pub(crate) fn decode_read16(c: Cdb<'_>) -> Result<Command, ScsiError> {
    read(rw(c))
}

pub(crate) fn decode_write6(c: Cdb<'_>) -> Result<Command, ScsiError> {
    write(rw6(c))
}

pub(crate) fn decode_write10(c: Cdb<'_>) -> Result<Command, ScsiError> {
    write(rw(c))
}

pub(crate) fn decode_write12(c: Cdb<'_>) -> Result<Command, ScsiError> {
    write(rw(c))
}

pub(crate) fn decode_write16(c: Cdb<'_>) -> Result<Command, ScsiError> {
    write(rw(c))
}

pub(crate) fn decode_orwrite16(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let r = rw(c);
    Ok(Command::OrWrite { lba: r.lba, blocks: r.blocks, fua: r.fua, dpo: r.dpo, group: r.group })
}

/// The byte of the TRANSFER LENGTH field, for field pointers.
pub(crate) fn transfer_length_byte(cdb_len: u8) -> usize {
    match cdb_len {
        6 => 4,
        10 => 7,
        12 => 6,
        _ => 10,
    }
}

impl Disk {
    /// READ: the blocks, straight from the backend (FUA needs nothing more:
    /// the backend has no cache of its own that could be stale): into
    /// `data_in` when it is given and holds them all (the data-in returned
    /// is then empty), else into a buffer of its own.
    pub(crate) async fn read_blocks(
        &self,
        lba: u64,
        blocks: u32,
        data_in: Option<&lunar_block::SgBuf>,
    ) -> Result<Vec<u8>, ScsiError> {
        if blocks == 0 {
            return Ok(Vec::new());
        }
        let len = self.bytes(u64::from(blocks));
        match data_in {
            Some(dest) if dest.len() >= len => {
                self.backend().read_into(self.offset(lba), dest, len).await?;
                Ok(Vec::new())
            }
            _ => Ok(self.backend().read(self.offset(lba), len).await?),
        }
    }

    /// Takes exactly `len` bytes of data-out, or fails if fewer were sent.
    pub(crate) fn take_data(&self, mut data: Bytes, len: usize) -> Result<Bytes, ScsiError> {
        if data.len() < len {
            return Err(ScsiError::DataOutLength { expected: len, actual: data.len() });
        }
        data.truncate(len);
        Ok(data)
    }

    /// WRITE: FUA, or a disabled write cache (WCE=0), makes it durable
    /// before completion (SBC-4 4.15).
    pub(crate) async fn write_blocks(
        &self,
        lba: u64,
        blocks: u32,
        fua: bool,
        data: Bytes,
    ) -> Result<Vec<u8>, ScsiError> {
        if blocks == 0 {
            return Ok(Vec::new());
        }
        let data = self.take_data(data, self.bytes(u64::from(blocks)))?;
        let fua = fua || !self.write_cache_enabled();
        self.backend().write(self.offset(lba), data, fua).await?;
        Ok(Vec::new())
    }

    /// ORWRITE(16) without a previous ORWRITE: OR the data-out into the
    /// blocks (SBC-4 4.29, "OR" operation). Atomicity against other
    /// commands to the same blocks is the target core's job.
    pub(crate) async fn or_write(&self, lba: u64, blocks: u32, fua: bool, data: Bytes) -> Result<Vec<u8>, ScsiError> {
        if blocks == 0 {
            return Ok(Vec::new());
        }
        let data = self.take_data(data, self.bytes(u64::from(blocks)))?;
        let mut old = self.backend().read(self.offset(lba), data.len()).await?;
        old.iter_mut().zip(&data).for_each(|(o, d)| *o |= d);
        self.write_blocks(lba, blocks, fua, old.into()).await
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    #[test]
    fn decode_forms() {
        let c = Command::decode(&[0x08, 0x1F, 0xFF, 0xFF, 0, 0]).unwrap();
        assert_eq!(c, Command::Read { lba: 0x1F_FFFF, blocks: 256, fua: false, dpo: false, group: 0, cdb_len: 6 });
        assert_eq!(Command::decode(&[0x08, 0x20, 0, 0, 1, 0]), Err(ScsiError::field(1, 5)));
        let c = Command::decode(&cdb10(0x28, 0x18, 7, 3)).unwrap();
        assert_eq!(c, Command::Read { lba: 7, blocks: 3, fua: true, dpo: true, group: 0, cdb_len: 10 });
        assert_eq!(c.opcode(), 0x28);
        assert_eq!(c.name(), "READ(10)");
        assert_eq!(c.direction(), DataDirection::FromDevice);
        let c = Command::decode(&cdb12(0xAA, 0x08, 7, 3)).unwrap();
        assert!(matches!(c, Command::Write { lba: 7, blocks: 3, fua: true, cdb_len: 12, .. }));
        assert_eq!(c.data_out_len(512), 1536);
        assert_eq!(c.direction(), DataDirection::ToDevice);
        assert!(c.is_write());
        let c = Command::decode(&cdb16(0x8A, 0, 1 << 40, 1)).unwrap();
        assert!(matches!(c, Command::Write { lba: 0x100_0000_0000, blocks: 1, cdb_len: 16, .. }));
        assert_eq!(c.opcode(), 0x8A);
        // Group numbers are accepted and kept.
        let mut g = cdb16(0x88, 0, 0, 1);
        g[14] = 0x3F;
        assert!(matches!(Command::decode(&g), Ok(Command::Read { group: 0x3F, .. })));
        g[14] = 0x40;
        assert_eq!(Command::decode(&g), Err(ScsiError::field(14, 6)));
    }

    #[test]
    fn protect_fields_are_rejected() {
        for op in [0x28u8, 0x2A] {
            assert_eq!(Command::decode(&cdb10(op, 0x20, 0, 1)), Err(ScsiError::field(1, 5)));
            assert_eq!(Command::decode(&cdb10(op, 0xE0, 0, 1)), Err(ScsiError::field(1, 7)));
        }
        assert_eq!(Command::decode(&cdb12(0xA8, 0x40, 0, 1)), Err(ScsiError::field(1, 6)));
        assert_eq!(Command::decode(&cdb16(0x88, 0x80, 0, 1)), Err(ScsiError::field(1, 7)));
        assert_eq!(Command::decode(&cdb16(0x8B, 0x20, 0, 1)), Err(ScsiError::field(1, 5)));
        assert_eq!(Command::decode(&cdb10(0x28, 0x02, 0, 1)), Err(ScsiError::field(1, 1)), "FUA_NV");
    }

    #[test]
    fn write_then_read_every_form() {
        let d = disk(1000);
        let data = pattern(1024, 1);
        run_data(&d, &cdb10(0x2A, 0, 10, 2), data.clone()).unwrap();
        assert_eq!(run(&d, &cdb10(0x28, 0, 10, 2)).unwrap(), data);
        assert_eq!(run(&d, &cdb12(0xA8, 0x08, 10, 2)).unwrap(), data);
        assert_eq!(run(&d, &cdb16(0x88, 0x10, 10, 2)).unwrap(), data);
        assert_eq!(run(&d, &[0x08, 0, 0, 10, 2, 0]).unwrap(), data);
        let data6 = pattern(512, 9);
        run_data(&d, &[0x0A, 0, 0, 20, 1, 0], data6.clone()).unwrap();
        assert_eq!(run(&d, &cdb16(0x88, 0, 20, 1)).unwrap(), data6);
        let data16 = pattern(512 * 3, 4);
        run_data(&d, &cdb16(0x8A, 0x18, 997, 3), data16.clone()).unwrap();
        assert_eq!(run(&d, &cdb10(0x28, 0, 997, 3)).unwrap(), data16);
        // WRITE(6) of 256 blocks.
        let big = pattern(256 * 512, 3);
        run_data(&d, &[0x0A, 0, 0, 0, 0, 0], big.clone()).unwrap();
        assert_eq!(run(&d, &[0x08, 0, 0, 0, 0, 0]).unwrap(), big);
    }

    #[test]
    fn zero_blocks_and_range() {
        let d = disk(1000);
        assert_eq!(run(&d, &cdb10(0x28, 0, 0, 0)), Ok(vec![]));
        assert_eq!(run(&d, &cdb10(0x2A, 0, 999, 0)), Ok(vec![]));
        for op in [0x28, 0x2A] {
            assert_eq!(run(&d, &cdb10(op, 0, 1001, 0)), Err(ScsiError::LbaOutOfRange { lba: 1001 }));
            assert_eq!(run(&d, &cdb10(op, 0, 1000, 1)), Err(ScsiError::LbaOutOfRange { lba: 1000 }));
            assert_eq!(run(&d, &cdb10(op, 0, 999, 2)), Err(ScsiError::LbaOutOfRange { lba: 999 }));
            assert_eq!(run(&d, &cdb10(op, 0, 0xFFFF_FFFF, 1)), Err(ScsiError::LbaOutOfRange { lba: 0xFFFF_FFFF }));
        }
        assert_eq!(run(&d, &cdb16(0x88, 0, u64::MAX, 1)), Err(ScsiError::LbaOutOfRange { lba: u64::MAX }));
        assert_eq!(run(&d, &[0x08, 0, 0x03, 0xE8, 1, 0]), Err(ScsiError::LbaOutOfRange { lba: 1000 }));
        let s = ScsiError::LbaOutOfRange { lba: 1000 }.sense();
        assert_eq!((s.code(), s.information), (sense::LBA_OUT_OF_RANGE, Some(1000)));
    }

    #[test]
    fn transfer_limit() {
        let d = Disk::new(DiskConfig::default(), Backend::null(1 << 40));
        let max = d.max_transfer_blocks();
        assert_eq!(run(&d, &cdb16(0x88, 0, 0, max)).map(|v| v.len()), Ok(MAX_TRANSFER_BYTES as usize));
        assert_eq!(run(&d, &cdb16(0x88, 0, 0, max + 1)), Err(ScsiError::field_byte(10)));
        assert_eq!(run(&d, &cdb12(0xAA, 0, 0, max + 1)), Err(ScsiError::field_byte(6)));
    }

    #[test]
    fn short_data_out_fails() {
        let d = disk(100);
        let r = run_data(&d, &cdb10(0x2A, 0, 0, 2), vec![0; 512]);
        assert_eq!(r, Err(ScsiError::DataOutLength { expected: 1024, actual: 512 }));
    }

    #[test]
    fn readonly_refuses_writes() {
        let d = disk_with(100, DiskConfig { readonly: true, ..Default::default() });
        assert_eq!(run_data(&d, &cdb10(0x2A, 0, 0, 1), vec![0; 512]), Err(ScsiError::WriteProtected));
        assert_eq!(run_data(&d, &cdb16(0x8B, 0, 0, 1), vec![0; 512]), Err(ScsiError::WriteProtected));
        assert!(run(&d, &cdb10(0x28, 0, 0, 1)).is_ok());
        assert_eq!(ScsiError::WriteProtected.sense().code(), sense::WRITE_PROTECTED);
    }

    #[test]
    fn orwrite() {
        let d = disk(100);
        run_data(&d, &cdb10(0x2A, 0, 5, 1), vec![0x0F; 512]).unwrap();
        run_data(&d, &cdb16(0x8B, 0, 5, 1), vec![0xF0; 512]).unwrap();
        assert_eq!(run(&d, &cdb10(0x28, 0, 5, 1)).unwrap(), vec![0xFF; 512]);
        assert_eq!(run(&d, &cdb16(0x8B, 0, 100, 1)), Err(ScsiError::LbaOutOfRange { lba: 100 }));
        assert_eq!(run(&d, &cdb16(0x8B, 0, 5, 0)), Ok(vec![]));
    }

    #[test]
    fn backend_errors_map_to_medium_errors() {
        let fault = std::sync::Arc::new(lunar_block::FaultBackend::new(Backend::mem(512 * 10)));
        let d = Disk::new(DiskConfig::default(), Backend::Fault(fault.clone()));
        fault.fail_reads(5);
        let e = run(&d, &cdb10(0x28, 0, 0, 1)).unwrap_err();
        assert_eq!(e.sense().code(), sense::UNRECOVERED_READ_ERROR);
        fault.fail_writes(28);
        let e = run_data(&d, &cdb10(0x2A, 0, 0, 1), vec![0; 512]).unwrap_err();
        assert_eq!(e.sense().code(), sense::SPACE_ALLOCATION_FAILED_WRITE_PROTECT);
    }
}

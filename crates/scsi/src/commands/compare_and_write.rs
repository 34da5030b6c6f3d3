//! COMPARE AND WRITE (SBC-4 5.3): the Data-Out Buffer holds the verify
//! data then the write data, NUMBER OF LOGICAL BLOCKS each.
//!
//! Atomicity against every other command of the device, on any I/O
//! thread, is the target core's job (the device's gate,
//! `crates/core/src/gate.rs`); this is the compare and write. A backend
//! that other processes write too (`rbd`: other gateways and clients of the
//! image) does it atomically itself (`Backend::compare_and_write`), and its
//! limit caps MAXIMUM COMPARE AND WRITE LENGTH ([`Disk::max_compare_and_write_blocks`]).

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::commands::verify::first_difference;
use crate::disk::Disk;
use crate::error::ScsiError;
use lunar_block::Bytes;

pub(crate) fn decode(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::CompareAndWrite {
        lba: c.be64(2),
        blocks: c.u8(13),
        fua: c.bit(1, 3),
        dpo: c.bit(1, 4),
        group: c.bits(14, 0, 6),
    })
}

impl Disk {
    /// Compares the blocks with the verify half of the data-out; on a
    /// match writes the write half, else MISCOMPARE with the offset of the
    /// first differing byte (SBC-4 5.3). The data-out must be exactly
    /// twice the blocks, also when there are none: a NUMBER OF LOGICAL
    /// BLOCKS of zero with data sent is how an initiator's 256 blocks wrap
    /// in the one-byte field, and must fail rather than succeed unwritten.
    pub(crate) async fn compare_and_write(
        &self,
        lba: u64,
        blocks: u8,
        fua: bool,
        data: Bytes,
    ) -> Result<Vec<u8>, ScsiError> {
        let half = self.bytes(u64::from(blocks));
        if data.len() != 2 * half {
            return Err(ScsiError::DataOutLength { expected: 2 * half, actual: data.len() });
        }
        if blocks == 0 {
            return Ok(Vec::new());
        }
        if self.backend().atomic_compare_and_write().is_some() {
            let offset = self.offset(lba);
            let (verify, write) = data.split_at(half);
            if let Some(at) = self.backend().compare_and_write(offset, verify.to_vec(), write.to_vec()).await? {
                return Err(ScsiError::Miscompare { offset: at });
            }
            if fua || !self.write_cache_enabled() {
                self.backend().flush().await?;
            }
            return Ok(Vec::new());
        }
        // Emulated: atomic against this process's other commands by the
        // core's gate; against other writers only if there are none.
        self.backend().check_sole_writer(self.offset(lba), half as u64)?;
        let current = self.backend().read(self.offset(lba), half).await?;
        if let Some(at) = first_difference(&current, &data[..half]) {
            return Err(ScsiError::Miscompare { offset: at as u64 });
        }
        self.write_blocks(lba, u32::from(blocks), fua, data.slice(half..)).await
    }
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    fn caw(lba: u64, blocks: u8) -> Vec<u8> {
        let mut c = cdb16(0x89, 0, lba, 0);
        c[13] = blocks;
        c
    }

    #[test]
    fn compare_then_write() {
        let d = disk(100);
        let old = pattern(1024, 1);
        let new = pattern(1024, 2);
        run_data(&d, &cdb10(0x2A, 0, 10, 2), old.clone()).unwrap();
        let cmd = Command::decode(&caw(10, 2)).unwrap();
        assert_eq!(cmd.data_out_len(512), 2048);
        assert!(cmd.is_write());
        let buf = [old.clone(), new.clone()].concat();
        assert_eq!(run_data(&d, &caw(10, 2), buf.clone()), Ok(vec![]));
        assert_eq!(run(&d, &cdb10(0x28, 0, 10, 2)).unwrap(), new);
        // The data changed: the same request now miscompares at byte 0.
        assert_eq!(run_data(&d, &caw(10, 2), buf), Err(ScsiError::Miscompare { offset: 0 }));
        let mut verify = new.clone();
        verify[600] ^= 0xFF;
        let r = run_data(&d, &caw(10, 2), [verify, old].concat());
        assert_eq!(r, Err(ScsiError::Miscompare { offset: 600 }));
        assert_eq!(run(&d, &cdb10(0x28, 0, 10, 2)).unwrap(), new, "no write after a miscompare");
    }

    #[test]
    fn errors() {
        let d = disk(100);
        assert_eq!(run_data(&d, &caw(99, 2), vec![0; 2048]), Err(ScsiError::LbaOutOfRange { lba: 99 }));
        assert_eq!(
            run_data(&d, &caw(0, 1), vec![0; 512]),
            Err(ScsiError::DataOutLength { expected: 1024, actual: 512 })
        );
        assert_eq!(
            run_data(&d, &caw(0, 1), vec![0; 2048]),
            Err(ScsiError::DataOutLength { expected: 1024, actual: 2048 })
        );
        assert_eq!(run(&d, &caw(0, 0)), Ok(vec![]));
        assert_eq!(
            run_data(&d, &caw(0, 0), vec![0; 512 * 512]),
            Err(ScsiError::DataOutLength { expected: 0, actual: 512 * 512 }),
            "256 blocks wrapped to 0"
        );
        assert_eq!(ScsiError::DataOutLength { expected: 0, actual: 1 }.sense().code(), sense::INVALID_FIELD_IN_CDB);
        let big = Disk::new(DiskConfig::default(), Backend::null(1 << 30));
        let n = MAX_COMPARE_AND_WRITE_BLOCKS + 1;
        assert_eq!(run_data(&big, &caw(0, n), vec![0; 1024 * n as usize]), Err(ScsiError::field_byte(13)));
        let mut c = caw(0, 1);
        c[1] = 0x20;
        assert_eq!(Command::decode(&c), Err(ScsiError::field(1, 5)), "WRPROTECT");
        c[1] = 0;
        c[11] = 1;
        assert_eq!(Command::decode(&c), Err(ScsiError::field(11, 0)), "reserved byte");
        let ro = disk_with(10, DiskConfig { readonly: true, ..Default::default() });
        assert_eq!(run_data(&ro, &caw(0, 1), vec![0; 1024]), Err(ScsiError::WriteProtected));
    }
}

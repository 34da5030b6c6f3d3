//! Helpers for the unit tests: a mem disk and a one-shot executor.

use lunar_block::Backend;

use crate::{Command, Disk, DiskConfig, ExecContext, ScsiError};

/// A 512-byte-block mem disk of `blocks` blocks.
pub(crate) fn disk(blocks: u64) -> Disk {
    Disk::new(DiskConfig::default(), Backend::mem(blocks * 512))
}

/// A disk with a configuration.
pub(crate) fn disk_with(blocks: u64, config: DiskConfig) -> Disk {
    let size = blocks * u64::from(config.block_size);
    Disk::new(config, Backend::mem(size))
}

pub(crate) fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
}

/// Decodes and executes `cdb` with no data-out.
pub(crate) fn run(d: &Disk, cdb: &[u8]) -> Result<Vec<u8>, ScsiError> {
    run_ctx(d, cdb, Vec::new(), &ExecContext::default())
}

/// Decodes and executes `cdb` with `data` as data-out.
pub(crate) fn run_data(d: &Disk, cdb: &[u8], data: Vec<u8>) -> Result<Vec<u8>, ScsiError> {
    run_ctx(d, cdb, data, &ExecContext::default())
}

pub(crate) fn run_ctx(d: &Disk, cdb: &[u8], data: Vec<u8>, ctx: &ExecContext) -> Result<Vec<u8>, ScsiError> {
    let cmd = Command::decode(cdb)?;
    block_on(d.execute(&cmd, data, ctx))
}

/// A 10-byte CDB with a 32-bit LBA at byte 2 and a 16-bit length at byte 7.
pub(crate) fn cdb10(op: u8, b1: u8, lba: u32, len: u16) -> Vec<u8> {
    let mut c = vec![op, b1, 0, 0, 0, 0, 0, 0, 0, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&len.to_be_bytes());
    c
}

/// A 12-byte CDB with a 32-bit LBA at byte 2 and a 32-bit length at byte 6.
pub(crate) fn cdb12(op: u8, b1: u8, lba: u32, len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 12];
    c[0] = op;
    c[1] = b1;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[6..10].copy_from_slice(&len.to_be_bytes());
    c
}

/// A 16-byte CDB with a 64-bit LBA at byte 2 and a 32-bit length at byte 10.
pub(crate) fn cdb16(op: u8, b1: u8, lba: u64, len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = op;
    c[1] = b1;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

/// A pattern of `len` bytes seeded by `seed`.
pub(crate) fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

//! `mem`: a RAM disk shared by every I/O thread without a lock.
//!
//! Storage is split into chunks allocated on first write (so a 1 GiB disk
//! costs nothing until used) and held as `AtomicU64` words: threads may read
//! and write the same range at once (SCSI gives no ordering between
//! overlapping commands in flight), and every access stays defined and safe.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::error::{BlockError, Result};

const CHUNK_BYTES: u64 = 64 * 1024;
const WORDS_PER_CHUNK: usize = (CHUNK_BYTES / 8) as usize;

pub struct MemBackend {
    size: u64,
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
}

impl MemBackend {
    /// A zero-filled RAM disk of `size` bytes (a multiple of 512).
    pub fn new(size: u64) -> Self {
        let n = size.div_ceil(CHUNK_BYTES) as usize;
        MemBackend { size, chunks: (0..n).map(|_| OnceLock::new()).collect() }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn check(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        if offset & 7 != 0 || len & 7 != 0 {
            return Err(BlockError::new(crate::ErrorKind::Unsupported, libc::EINVAL, op, offset, len));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BlockError::out_of_range(op, offset, len)),
        }
    }

    fn chunk(&self, index: usize) -> &[AtomicU64] {
        self.chunks[index].get_or_init(|| (0..WORDS_PER_CHUNK).map(|_| AtomicU64::new(0)).collect())
    }

    /// Walks `[offset, offset+len)` chunk by chunk: `f(chunk_index, word_in_chunk, byte_in_range, words)`.
    fn walk(&self, offset: u64, len: u64, mut f: impl FnMut(usize, usize, usize, usize)) {
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let chunk = (pos / CHUNK_BYTES) as usize;
            let within = pos % CHUNK_BYTES;
            let n = (CHUNK_BYTES - within).min(end - pos);
            f(chunk, (within / 8) as usize, (pos - offset) as usize, (n / 8) as usize);
            pos += n;
        }
    }

    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.check("read", offset, buf.len() as u64)?;
        self.walk(offset, buf.len() as u64, |c, w, b, words| match self.chunks[c].get() {
            None => buf[b..b + words * 8].fill(0),
            Some(chunk) => {
                for (i, word) in chunk[w..w + words].iter().enumerate() {
                    let at = b + i * 8;
                    buf[at..at + 8].copy_from_slice(&word.load(Ordering::Relaxed).to_ne_bytes());
                }
            }
        });
        Ok(())
    }

    pub fn write_from(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.check("write", offset, data.len() as u64)?;
        self.walk(offset, data.len() as u64, |c, w, b, words| {
            let chunk = self.chunk(c);
            for (i, word) in chunk[w..w + words].iter().enumerate() {
                let at = b + i * 8;
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&data[at..at + 8]);
                word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
            }
        });
        Ok(())
    }

    /// Zeroes a range; chunks never written stay unallocated.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check("write-zeroes", offset, len)?;
        self.walk(offset, len, |c, w, _, words| {
            if let Some(chunk) = self.chunks[c].get() {
                for word in &chunk[w..w + words] {
                    word.store(0, Ordering::Relaxed);
                }
            }
        });
        Ok(())
    }

    /// Whether the chunk holding `offset` was ever written (for thin provisioning).
    pub fn is_allocated(&self, offset: u64) -> bool {
        offset < self.size && self.chunks[(offset / CHUNK_BYTES) as usize].get().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwritten_reads_zero_and_writes_read_back() {
        let m = MemBackend::new(1 << 20);
        let mut buf = vec![0xffu8; 4096];
        m.read_into(4096, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        let data: Vec<u8> = (0..CHUNK_BYTES as usize * 2).map(|i| (i * 7) as u8).collect();
        m.write_from(CHUNK_BYTES - 512, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        m.read_into(CHUNK_BYTES - 512, &mut back).unwrap();
        assert_eq!(back, data);
        m.write_zeroes(CHUNK_BYTES, 512).unwrap();
        m.read_into(CHUNK_BYTES, &mut back[..512]).unwrap();
        assert!(back[..512].iter().all(|&b| b == 0));
    }

    #[test]
    fn out_of_range_and_misaligned_are_errors() {
        let m = MemBackend::new(8192);
        let mut buf = vec![0u8; 512];
        assert_eq!(m.read_into(8192, &mut buf).unwrap_err().kind, crate::ErrorKind::OutOfRange);
        assert_eq!(m.write_from(u64::MAX - 7, &buf).unwrap_err().kind, crate::ErrorKind::OutOfRange);
        assert_eq!(m.read_into(3, &mut buf).unwrap_err().kind, crate::ErrorKind::Unsupported);
    }
}

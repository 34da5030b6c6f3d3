//! `mem`: a RAM disk shared by every I/O thread without a lock.
//!
//! Storage is split into chunks allocated on first write (so a 1 GiB disk
//! costs nothing until used) and held as `AtomicU64` words: threads may read
//! and write the same range at once (SCSI gives no ordering between
//! overlapping commands in flight), and every access stays defined and safe.
//!
//! Each chunk also has a mapped bit (thin provisioning, SBC-4 4.7): set by
//! a write, cleared by a discard that covers the whole chunk (which zeroes
//! it too; a partial discard only zeroes). A discard clears the bit before
//! zeroing and a write sets it after storing, so however a discard and a
//! write of the same chunk interleave, a chunk left unmapped reads as zeros.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use crate::error::{BlockError, Result};

const CHUNK_BYTES: u64 = 64 * 1024;
const WORDS_PER_CHUNK: usize = (CHUNK_BYTES / 8) as usize;

pub struct MemBackend {
    size: u64,
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
    /// Per chunk: written since it was last deallocated.
    mapped: Box<[AtomicBool]>,
}

impl MemBackend {
    /// A zero-filled RAM disk of `size` bytes (a multiple of 512).
    pub fn new(size: u64) -> Self {
        let n = size.div_ceil(CHUNK_BYTES) as usize;
        MemBackend {
            size,
            chunks: (0..n).map(|_| OnceLock::new()).collect(),
            mapped: (0..n).map(|_| AtomicBool::new(false)).collect(),
        }
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
            self.mapped[c].store(true, Ordering::Release);
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

    /// Deallocates a range: chunks it covers whole become unmapped, and
    /// every byte of the range reads as zeros.
    pub fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check("discard", offset, len)?;
        self.walk(offset, len, |c, w, _, words| {
            // Whole: all of the chunk, or all that is left of the last one.
            let end = (c as u64 * CHUNK_BYTES + ((w + words) * 8) as u64).min(self.size);
            if w == 0 && (words == WORDS_PER_CHUNK || end == self.size) {
                self.mapped[c].store(false, Ordering::Release);
            }
            if let Some(chunk) = self.chunks[c].get() {
                for word in &chunk[w..w + words] {
                    word.store(0, Ordering::Relaxed);
                }
            }
        });
        Ok(())
    }

    /// Whether the chunk holding `offset` is mapped (written since it was
    /// last deallocated).
    pub fn is_allocated(&self, offset: u64) -> bool {
        offset < self.size && self.mapped[(offset / CHUNK_BYTES) as usize].load(Ordering::Acquire)
    }

    /// The mapped (`true`) and deallocated (`false`) extents covering
    /// `[offset, offset + len)`, adjacent extents of one state merged.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        self.check("get-lba-status", offset, len)?;
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let chunk = pos / CHUNK_BYTES;
            let n = (CHUNK_BYTES - pos % CHUNK_BYTES).min(end - pos);
            let mapped = self.mapped[chunk as usize].load(Ordering::Acquire);
            match out.last_mut() {
                Some(last) if last.2 == mapped => last.1 += n,
                _ => out.push((pos, n, mapped)),
            }
            pos += n;
        }
        Ok(out)
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
    fn discard_deallocates_whole_chunks_only() {
        let m = MemBackend::new(4 * CHUNK_BYTES);
        let c = CHUNK_BYTES;
        assert_eq!(m.allocation(0, 4 * c).unwrap(), vec![(0, 4 * c, false)]);
        m.write_from(c + 512, &[7u8; 512]).unwrap();
        m.write_from(2 * c, &[7u8; 512]).unwrap();
        assert!(m.is_allocated(c) && m.is_allocated(2 * c) && !m.is_allocated(3 * c));
        assert_eq!(m.allocation(512, 3 * c - 512).unwrap(), vec![(512, c - 512, false), (c, 2 * c, true)]);
        // A partial discard zeroes but keeps the chunk mapped.
        m.discard(c + 512, 512).unwrap();
        assert!(m.is_allocated(c));
        let mut buf = vec![1u8; 512];
        m.read_into(c + 512, &mut buf).unwrap();
        assert_eq!(buf, vec![0; 512]);
        // A whole-chunk discard deallocates.
        m.discard(c, 2 * c).unwrap();
        assert_eq!(m.allocation(0, 4 * c).unwrap(), vec![(0, 4 * c, false)]);
        m.read_into(2 * c, &mut buf).unwrap();
        assert_eq!(buf, vec![0; 512]);
        assert_eq!(m.allocation(0, 0).unwrap(), vec![]);
        assert_eq!(m.allocation(4 * c, 8).unwrap_err().kind, crate::ErrorKind::OutOfRange);
        assert_eq!(m.discard(3, 8).unwrap_err().kind, crate::ErrorKind::Unsupported);
        // The last chunk may be short; discarding all of it deallocates it.
        let short = MemBackend::new(c + 4096);
        short.write_from(c, &[1u8; 4096]).unwrap();
        short.discard(c, 2048).unwrap();
        assert!(short.is_allocated(c));
        short.discard(c, 4096).unwrap();
        assert!(!short.is_allocated(c));
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

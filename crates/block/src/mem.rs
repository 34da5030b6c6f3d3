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
//!
//! Resizing: the size and the chunk table form one immutable [`Table`]
//! behind an `ArcSwap`. Every operation loads the table once (lock-free)
//! and checks its range against that table's size; a resize builds a new
//! table that shares the chunks it keeps (`Arc`s) and swaps it in. An
//! operation still holding the old table writes into the same shared chunks,
//! so nothing written within both sizes is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use crate::error::{BlockError, Result};

const CHUNK_BYTES: u64 = 64 * 1024;
const WORDS_PER_CHUNK: usize = (CHUNK_BYTES / 8) as usize;

/// One chunk: its words (allocated on first write) and its mapped bit.
#[derive(Default)]
struct Chunk {
    words: OnceLock<Box<[AtomicU64]>>,
    /// Written since it was last deallocated.
    mapped: AtomicBool,
}

/// A size and the chunks that hold it (immutable once published).
struct Table {
    size: u64,
    chunks: Box<[Arc<Chunk>]>,
}

pub struct MemBackend {
    table: ArcSwap<Table>,
    /// Serializes resizes (control plane only; never taken by I/O).
    resizing: Mutex<()>,
}

impl Table {
    fn check(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        if offset & 7 != 0 || len & 7 != 0 {
            return Err(BlockError::new(crate::ErrorKind::Unsupported, libc::EINVAL, op, offset, len));
        }
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(BlockError::out_of_range(op, offset, len)),
        }
    }

    fn words(&self, index: usize) -> &[AtomicU64] {
        self.chunks[index].words.get_or_init(|| (0..WORDS_PER_CHUNK).map(|_| AtomicU64::new(0)).collect())
    }
}

/// Walks `[offset, offset+len)` chunk by chunk: `f(chunk_index, word_in_chunk, byte_in_range, words)`.
fn walk(offset: u64, len: u64, mut f: impl FnMut(usize, usize, usize, usize)) {
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

impl MemBackend {
    /// A zero-filled RAM disk of `size` bytes (a multiple of 512).
    pub fn new(size: u64) -> Self {
        let n = size.div_ceil(CHUNK_BYTES) as usize;
        MemBackend {
            table: ArcSwap::from_pointee(Table { size, chunks: (0..n).map(|_| Arc::default()).collect() }),
            resizing: Mutex::new(()),
        }
    }

    pub fn size(&self) -> u64 {
        self.table.load().size
    }

    /// Changes the size. Growing adds unallocated chunks (reading as zeros;
    /// bytes of a shared last chunk past the old end are zeroed first, as a
    /// shrink may have left data there); shrinking drops the chunks past the
    /// new end. Must be a multiple of 8 bytes.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        if new_size & 7 != 0 {
            return Err(BlockError::new(crate::ErrorKind::Unsupported, libc::EINVAL, "resize", new_size, 0));
        }
        let n = usize::try_from(new_size.div_ceil(CHUNK_BYTES))
            .map_err(|_| BlockError::from_errno(libc::EFBIG, "resize", new_size, 0))?;
        let _serial = self.resizing.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.table.load_full();
        if new_size > old.size && !old.size.is_multiple_of(CHUNK_BYTES) {
            // Nobody can reach these bytes through the old table (past its end).
            let last = (old.size / CHUNK_BYTES) as usize;
            if let Some(words) = old.chunks[last].words.get() {
                let from = ((old.size % CHUNK_BYTES) / 8) as usize;
                for w in &words[from..] {
                    w.store(0, Ordering::Relaxed);
                }
            }
        }
        let chunks = (0..n).map(|i| old.chunks.get(i).cloned().unwrap_or_default()).collect();
        self.table.store(Arc::new(Table { size: new_size, chunks }));
        Ok(())
    }

    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let t = self.table.load();
        t.check("read", offset, buf.len() as u64)?;
        walk(offset, buf.len() as u64, |c, w, b, words| match t.chunks[c].words.get() {
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
        let t = self.table.load();
        t.check("write", offset, data.len() as u64)?;
        walk(offset, data.len() as u64, |c, w, b, words| {
            let chunk = t.words(c);
            for (i, word) in chunk[w..w + words].iter().enumerate() {
                let at = b + i * 8;
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(&data[at..at + 8]);
                word.store(u64::from_ne_bytes(bytes), Ordering::Relaxed);
            }
            t.chunks[c].mapped.store(true, Ordering::Release);
        });
        Ok(())
    }

    /// Zeroes a range; chunks never written stay unallocated.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let t = self.table.load();
        t.check("write-zeroes", offset, len)?;
        walk(offset, len, |c, w, _, words| {
            if let Some(chunk) = t.chunks[c].words.get() {
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
        let t = self.table.load();
        t.check("discard", offset, len)?;
        walk(offset, len, |c, w, _, words| {
            // Whole: all of the chunk, or all that is left of the last one.
            let end = (c as u64 * CHUNK_BYTES + ((w + words) * 8) as u64).min(t.size);
            if w == 0 && (words == WORDS_PER_CHUNK || end == t.size) {
                t.chunks[c].mapped.store(false, Ordering::Release);
            }
            if let Some(chunk) = t.chunks[c].words.get() {
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
        let t = self.table.load();
        offset < t.size && t.chunks[(offset / CHUNK_BYTES) as usize].mapped.load(Ordering::Acquire)
    }

    /// The mapped (`true`) and deallocated (`false`) extents covering
    /// `[offset, offset + len)`, adjacent extents of one state merged.
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        let t = self.table.load();
        t.check("get-lba-status", offset, len)?;
        let mut out: Vec<(u64, u64, bool)> = Vec::new();
        let mut pos = offset;
        let end = offset + len;
        while pos < end {
            let chunk = pos / CHUNK_BYTES;
            let n = (CHUNK_BYTES - pos % CHUNK_BYTES).min(end - pos);
            let mapped = t.chunks[chunk as usize].mapped.load(Ordering::Acquire);
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

    #[test]
    fn resize_keeps_data_and_exposes_zeros() {
        let c = CHUNK_BYTES;
        let m = MemBackend::new(2 * c);
        m.write_from(0, &[1u8; 4096]).unwrap();
        m.write_from(c + 1024, &[2u8; 1024]).unwrap();
        // Grow: old data stays, the new range reads as zeros, unmapped.
        m.resize(4 * c).unwrap();
        assert_eq!(m.size(), 4 * c);
        let mut buf = vec![9u8; 4096];
        m.read_into(0, &mut buf).unwrap();
        assert_eq!(buf, vec![1u8; 4096]);
        m.read_into(3 * c, &mut buf).unwrap();
        assert_eq!(buf, vec![0u8; 4096]);
        assert_eq!(m.allocation(2 * c, 2 * c).unwrap(), vec![(2 * c, 2 * c, false)]);
        m.write_from(4 * c - 512, &[3u8; 512]).unwrap();
        // Shrink into the middle of a chunk: past the end is out of range.
        m.resize(c + 1024).unwrap();
        assert_eq!(m.read_into(c + 1024, &mut buf[..8]).unwrap_err().kind, crate::ErrorKind::OutOfRange);
        assert_eq!(m.write_from(c + 1024, &[0u8; 8]).unwrap_err().kind, crate::ErrorKind::OutOfRange);
        // Grow again: what was past the shrunk end reads as zeros.
        m.resize(4 * c).unwrap();
        let mut back = vec![9u8; 2048];
        m.read_into(c, &mut back).unwrap();
        assert_eq!(&back[..1024], &[0u8; 1024][..], "within the kept size: unchanged (never written)");
        assert_eq!(&back[1024..], &[0u8; 1024][..], "past the shrunk end: zeroed");
        let mut last = vec![9u8; 512];
        m.read_into(4 * c - 512, &mut last).unwrap();
        assert_eq!(last, vec![0u8; 512], "a dropped chunk comes back empty");
        assert_eq!(m.resize(12).unwrap_err().kind, crate::ErrorKind::Unsupported);
    }

    #[test]
    fn resize_while_other_threads_write() {
        let c = CHUNK_BYTES;
        let m = Arc::new(MemBackend::new(4 * c));
        let writers: Vec<_> = (0..2u8)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..2000u64 {
                        // Within the smallest size the resizer uses: always in range.
                        m.write_from((i % 2) * c + u64::from(t) * 4096, &[t + 1; 4096]).unwrap();
                    }
                })
            })
            .collect();
        for i in 0..200u64 {
            m.resize((2 + i % 8) * c).unwrap();
        }
        for w in writers {
            w.join().unwrap();
        }
        let mut buf = vec![0u8; 4096];
        for t in 0..2u8 {
            for chunk in 0..2 {
                m.read_into(chunk * c + u64::from(t) * 4096, &mut buf).unwrap();
                assert_eq!(buf, vec![t + 1; 4096], "a write lost across resizes");
            }
        }
    }
}

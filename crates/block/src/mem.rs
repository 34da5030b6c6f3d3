//! `mem`: a RAM disk shared by every I/O thread without a lock.
//!
//! Storage is split into chunks allocated on first write and held as
//! `AtomicU64` words: threads may read
//! and write the same range at once (SCSI gives no ordering between
//! overlapping commands in flight), and every access stays defined and safe.
//! Chunks are grouped by [`GROUP_CHUNKS`]: a group's table of chunks is
//! allocated on the first write into the group too, so a disk costs one
//! pointer per 64 MiB until used (a 1 TiB disk: 128 KiB, not the 128 MiB
//! table and 16 Mi chunk headers of one entry per chunk).
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
//! table that shares the groups and chunks it keeps (`Arc`s) and swaps it
//! in. An operation still holding the old table writes into the same shared
//! chunks, so nothing written within both sizes is lost. A group that the
//! new end cuts (shrinking) is replaced by one sharing its chunks below the
//! end and fresh ones past it, so that growing again exposes zeros.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;

use crate::error::{BlockError, Result};

const CHUNK_BYTES: u64 = 64 * 1024;
const WORDS_PER_CHUNK: usize = (CHUNK_BYTES / 8) as usize;
/// Chunks per group (64 MiB of disk).
const GROUP_CHUNKS: usize = 1024;

/// One chunk: its words (allocated on first write) and its mapped bit.
#[derive(Default)]
struct Chunk {
    words: OnceLock<Box<[AtomicU64]>>,
    /// Written since it was last deallocated.
    mapped: AtomicBool,
}

/// [`GROUP_CHUNKS`] chunks, their table allocated on the first write.
#[derive(Default)]
struct Group {
    chunks: OnceLock<Box<[Arc<Chunk>]>>,
}

impl Group {
    /// The group's chunks, allocating their table.
    fn chunks(&self) -> &[Arc<Chunk>] {
        self.chunks.get_or_init(|| (0..GROUP_CHUNKS).map(|_| Arc::default()).collect())
    }
}

/// A size and the groups of chunks that hold it (immutable once published).
struct Table {
    size: u64,
    groups: Box<[Arc<Group>]>,
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

    /// Chunk `index`, if its group was ever written.
    fn chunk(&self, index: usize) -> Option<&Chunk> {
        self.groups[index / GROUP_CHUNKS].chunks.get().map(|c| &*c[index % GROUP_CHUNKS])
    }

    /// Chunk `index`, allocating its group's table.
    fn chunk_for_write(&self, index: usize) -> &Chunk {
        &self.groups[index / GROUP_CHUNKS].chunks()[index % GROUP_CHUNKS]
    }

    fn words(&self, index: usize) -> &[AtomicU64] {
        self.chunk_for_write(index).words.get_or_init(|| (0..WORDS_PER_CHUNK).map(|_| AtomicU64::new(0)).collect())
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
        let n = size.div_ceil(CHUNK_BYTES).div_ceil(GROUP_CHUNKS as u64) as usize;
        MemBackend {
            table: ArcSwap::from_pointee(Table { size, groups: (0..n).map(|_| Arc::default()).collect() }),
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
            if let Some(words) = old.chunk(last).and_then(|c| c.words.get()) {
                let from = ((old.size % CHUNK_BYTES) / 8) as usize;
                for w in &words[from..] {
                    w.store(0, Ordering::Relaxed);
                }
            }
        }
        let old_n = old.size.div_ceil(CHUNK_BYTES) as usize;
        let groups = (0..n.div_ceil(GROUP_CHUNKS))
            .map(|g| {
                let lo = g * GROUP_CHUNKS;
                match old.groups.get(g) {
                    // Shrinking into this group: its chunks past the new end
                    // may hold data; share those below it only. (Their table
                    // is allocated now, so that a write through the old table
                    // lands in chunks the new one shares.)
                    Some(old_group) if n < old_n && lo + GROUP_CHUNKS > n => {
                        let kept = old_group.chunks();
                        let chunks = (0..GROUP_CHUNKS)
                            .map(|i| if lo + i < n { kept[i].clone() } else { Arc::default() })
                            .collect::<Box<[_]>>();
                        Arc::new(Group { chunks: OnceLock::from(chunks) })
                    }
                    // Wholly kept, or growing: past the old end a group's
                    // chunks were never reachable, so never written.
                    Some(old_group) => old_group.clone(),
                    None => Arc::default(),
                }
            })
            .collect();
        self.table.store(Arc::new(Table { size: new_size, groups }));
        Ok(())
    }

    pub fn read_into(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let t = self.table.load();
        t.check("read", offset, buf.len() as u64)?;
        walk(offset, buf.len() as u64, |c, w, b, words| match t.chunk(c).and_then(|c| c.words.get()) {
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

    /// [`MemBackend::read_into`] into lent memory: segment by segment when
    /// each is whole words, else through a buffer of its own (one more copy).
    pub fn read_into_sg(&self, offset: u64, dest: &crate::SgBuf, len: usize) -> Result<()> {
        self.table.load().check("read", offset, len as u64)?;
        let mut whole_words = true;
        dest.with_slices_mut(len, |_, s| whole_words &= s.len().is_multiple_of(8));
        if !whole_words || !offset.is_multiple_of(8) {
            let mut buf = vec![0u8; len];
            self.read_into(offset, &mut buf)?;
            dest.write_at(0, &buf);
            return Ok(());
        }
        let mut result = Ok(());
        dest.with_slices_mut(len, |at, s| {
            if result.is_ok() {
                result = self.read_into(offset + at as u64, s);
            }
        });
        result
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
            t.chunk_for_write(c).mapped.store(true, Ordering::Release);
        });
        Ok(())
    }

    /// Zeroes a range; chunks never written stay unallocated.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        let t = self.table.load();
        t.check("write-zeroes", offset, len)?;
        walk(offset, len, |c, w, _, words| {
            if let Some(chunk) = t.chunk(c).and_then(|c| c.words.get()) {
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
            let Some(chunk) = t.chunk(c) else { return };
            if w == 0 && (words == WORDS_PER_CHUNK || end == t.size) {
                chunk.mapped.store(false, Ordering::Release);
            }
            if let Some(chunk) = chunk.words.get() {
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
        offset < t.size && t.chunk((offset / CHUNK_BYTES) as usize).is_some_and(|c| c.mapped.load(Ordering::Acquire))
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
            let mapped = t.chunk(chunk as usize).is_some_and(|c| c.mapped.load(Ordering::Acquire));
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
    fn reads_into_lent_memory() {
        let m = MemBackend::new(1 << 20);
        let data: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        m.write_from(4096, &data[..69_632]).unwrap();
        // Whole-word segments (filled in place) and odd ones (through a copy).
        for pieces in [1, 4, 7] {
            let sg = crate::SgBuf::zeroed(69_632, pieces);
            m.read_into_sg(4096, &sg, 69_632).unwrap();
            assert_eq!(sg.to_vec(69_632), &data[..69_632], "{pieces} pieces");
        }
        let sg = crate::SgBuf::zeroed(512, 1);
        assert!(m.read_into_sg((1 << 20) - 256, &sg, 512).is_err());
    }

    /// Counts the bytes each thread allocates (the system allocator
    /// underneath), for tests that bound what an operation allocates.
    mod counting {
        use std::alloc::{GlobalAlloc, Layout, System};
        use std::cell::Cell;

        thread_local! {
            static ALLOCATED: Cell<u64> = const { Cell::new(0) };
        }

        struct Counting;

        // SAFETY: forwards to the system allocator unchanged; the counter
        // is a const-initialised thread local (no allocation, no reentry).
        unsafe impl GlobalAlloc for Counting {
            unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
                let _ = ALLOCATED.try_with(|a| a.set(a.get() + layout.size() as u64));
                unsafe { System.alloc(layout) }
            }
            unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
                unsafe { System.dealloc(ptr, layout) }
            }
            unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
                let _ = ALLOCATED.try_with(|a| a.set(a.get() + new_size as u64));
                unsafe { System.realloc(ptr, layout, new_size) }
            }
        }

        #[global_allocator]
        static A: Counting = Counting;

        /// Bytes allocated by this thread while `f` runs.
        pub fn allocated_by<T>(f: impl FnOnce() -> T) -> (T, u64) {
            let before = ALLOCATED.with(Cell::get);
            let out = f();
            (out, ALLOCATED.with(Cell::get) - before)
        }
    }

    /// Found by the `control_rpc` fuzz target (`lun.resize` of a mem LUN to
    /// 1T): the chunk table had one entry per 64 KiB chunk, allocated up
    /// front: a 128 MiB allocation and 16 Mi chunk headers (~1.7 GB, 50 s
    /// under ASan) for a disk meant to cost nothing until written.
    #[test]
    fn a_large_disk_costs_little_until_written() {
        const TIB: u64 = 1 << 40;
        let (m, bytes) = counting::allocated_by(|| MemBackend::new(TIB));
        assert!(bytes < 1 << 20, "new(1 TiB) allocated {bytes} bytes");
        let ((), bytes) = counting::allocated_by(|| {
            m.resize(TIB / 2).unwrap();
            m.resize(TIB).unwrap();
        });
        assert!(bytes < 4 << 20, "resizes of a 1 TiB disk allocated {bytes} bytes");
        // Writes far apart allocate their groups and chunks only.
        let ((), bytes) = counting::allocated_by(|| {
            m.write_from(0, &[1u8; 512]).unwrap();
            m.write_from(TIB - 512, &[2u8; 512]).unwrap();
        });
        assert!(bytes < 1 << 20, "two writes allocated {bytes} bytes");
        let mut buf = [0u8; 512];
        m.read_into(TIB - 512, &mut buf).unwrap();
        assert_eq!(buf, [2u8; 512]);
        m.read_into(TIB / 2, &mut buf).unwrap();
        assert_eq!(buf, [0u8; 512]);
        assert_eq!(
            m.allocation(0, TIB).unwrap(),
            vec![
                (0, CHUNK_BYTES, true),
                (CHUNK_BYTES, TIB - 2 * CHUNK_BYTES, false),
                (TIB - CHUNK_BYTES, CHUNK_BYTES, true)
            ]
        );
    }

    #[test]
    fn resize_across_groups_keeps_and_drops_what_it_should() {
        let g = CHUNK_BYTES * GROUP_CHUNKS as u64;
        let m = MemBackend::new(3 * g);
        m.write_from(g - 512, &[1u8; 1024]).unwrap(); // across the first group boundary
        m.write_from(g + 4096, &[2u8; 512]).unwrap(); // inside the second group
        m.write_from(2 * g + 8192, &[3u8; 512]).unwrap(); // inside the third group
                                                          // Shrink into the second group, before the write there, then grow back.
        m.resize(g + 2048).unwrap();
        m.resize(3 * g).unwrap();
        let mut buf = vec![9u8; 1024];
        m.read_into(g - 512, &mut buf).unwrap();
        assert_eq!(buf, vec![1u8; 1024], "kept below the shrunk end");
        m.read_into(g + 4096, &mut buf[..512]).unwrap();
        assert_eq!(&buf[..512], &[0u8; 512][..], "past the shrunk end, same group: zeros");
        m.read_into(2 * g + 8192, &mut buf[..512]).unwrap();
        assert_eq!(&buf[..512], &[0u8; 512][..], "a dropped group comes back empty");
        assert!(!m.is_allocated(2 * g + 8192));
    }

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

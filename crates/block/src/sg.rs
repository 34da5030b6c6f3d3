//! Memory a front-end lends a command for its data-in: a scatter-gather
//! list ([`SgBuf`]) that a backend reads into directly, so that a READ's
//! data moves once (the vhost-user front-end lends the guest's own
//! buffers: the backend's read lands in guest memory).
//!
//! This is the one module of `lunar-block` that dereferences memory it did
//! not allocate. The contract is [`SgBuf::from_raw_parts`]'s: every segment
//! stays mapped and writable while the buffer's keeper lives, and this
//! process touches it through no Rust reference meanwhile. Everything
//! else here is bounds-checked against the segments' lengths.

use std::cell::Cell;
use std::fmt;
use std::sync::Arc;

use smallvec::SmallVec;

/// One piece of lent memory.
#[derive(Clone, Copy)]
struct Seg {
    ptr: *mut u8,
    len: usize,
}

/// A command's data-in destination: segments of memory in order, kept
/// mapped by an owner the buffer holds. Reads fill it from the start;
/// [`SgBuf::filled`] says how many bytes of data-in it holds.
pub struct SgBuf {
    segs: SmallVec<[Seg; 4]>,
    len: usize,
    filled: Cell<usize>,
    /// Keeps the segments mapped (a guest memory map, or the `Vec` of
    /// [`SgBuf::zeroed`]).
    _keep: Arc<dyn Send + Sync>,
}

// SAFETY: the segments are plain memory kept alive by `_keep` (which is
// `Send + Sync`), not tied to a thread; the buffer is used by one thread
// at a time (`filled` is a `Cell`, so it is not `Sync`).
unsafe impl Send for SgBuf {}

impl SgBuf {
    /// A buffer over `segs` (address, length), kept mapped by `keep`.
    ///
    /// # Safety
    ///
    /// Each segment must be valid for reads and writes of its length for
    /// as long as `keep` is alive, and nothing in this process may access
    /// it through a Rust reference meanwhile (another party, such as a
    /// guest, may: its own data is all it can corrupt).
    pub unsafe fn from_raw_parts(
        segs: impl IntoIterator<Item = (*mut u8, usize)>,
        keep: Arc<dyn Send + Sync>,
    ) -> SgBuf {
        let segs: SmallVec<[Seg; 4]> =
            segs.into_iter().filter(|s| s.1 > 0).map(|(ptr, len)| Seg { ptr, len }).collect();
        let len = segs.iter().map(|s| s.len).sum();
        SgBuf { segs, len, filled: Cell::new(0), _keep: keep }
    }

    /// A buffer of `len` zero bytes in `pieces` segments of about equal
    /// size (for tests and callers without memory of their own to lend).
    pub fn zeroed(len: usize, pieces: usize) -> SgBuf {
        let pieces = pieces.clamp(1, len.max(1));
        let mut backing: Vec<Box<[u8]>> = Vec::with_capacity(pieces);
        let mut left = len;
        for i in 0..pieces {
            let n = left / (pieces - i);
            backing.push(vec![0u8; n].into_boxed_slice());
            left -= n;
        }
        let segs: Vec<(*mut u8, usize)> = backing.iter_mut().map(|b| (b.as_mut_ptr(), b.len())).collect();
        // SAFETY: the boxed slices are owned by the keeper (moving the
        // `Vec` of boxes does not move their heap memory) and reached only
        // through these pointers from now on.
        unsafe { SgBuf::from_raw_parts(segs, Arc::new(Backing(backing))) }
    }

    /// Bytes the segments hold in all.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of segments.
    pub fn segments(&self) -> usize {
        self.segs.len()
    }

    /// Bytes of data-in written so far (by a backend's read, or
    /// [`SgBuf::write_at`]).
    pub fn filled(&self) -> usize {
        self.filled.get()
    }

    pub fn set_filled(&self, n: usize) {
        self.filled.set(n.min(self.len));
    }

    /// Whether every segment's address and length are multiples of `align`
    /// (O_DIRECT reads need it).
    pub fn is_aligned(&self, align: usize) -> bool {
        self.segs.iter().all(|s| (s.ptr as usize).is_multiple_of(align) && s.len.is_multiple_of(align))
    }

    /// Copies `data` in at `offset`, as much as fits; returns the bytes
    /// copied and records the end as filled.
    pub fn write_at(&self, offset: usize, data: &[u8]) -> usize {
        let mut done = 0;
        self.for_each_piece(offset, data.len(), |ptr, at, n| {
            // SAFETY: `ptr..ptr+n` lies inside one segment (checked by
            // `for_each_piece`), valid for writes by the constructor's
            // contract; `data[at..at+n]` is in bounds and cannot overlap
            // lent memory reached through no reference.
            unsafe { std::ptr::copy_nonoverlapping(data[at..at + n].as_ptr(), ptr, n) };
            done += n;
        });
        if done > 0 {
            self.filled.set(self.filled.get().max(offset + done));
        }
        done
    }

    /// Writes `len` zero bytes at `offset` (as many as fit).
    pub fn fill_zero(&self, offset: usize, len: usize) {
        let mut end = offset;
        self.for_each_piece(offset, len, |ptr, _, n| {
            // SAFETY: as in `write_at`.
            unsafe { std::ptr::write_bytes(ptr, 0, n) };
            end += n;
        });
        self.filled.set(self.filled.get().max(end));
    }

    /// A copy of the first `len` bytes (tests, and front-ends that must
    /// hand the data on).
    pub fn to_vec(&self, len: usize) -> Vec<u8> {
        let len = len.min(self.len);
        let mut out = vec![0u8; len];
        self.for_each_piece(0, len, |ptr, at, n| {
            // SAFETY: `ptr..ptr+n` lies inside one segment, valid for reads;
            // `out[at..at+n]` is in bounds.
            unsafe { std::ptr::copy_nonoverlapping(ptr, out[at..at + n].as_mut_ptr(), n) };
        });
        out
    }

    /// Runs `f` on each segment covering the first `len` bytes, as a
    /// mutable slice (the `mem` backend fills them word by word).
    pub(crate) fn with_slices_mut(&self, len: usize, mut f: impl FnMut(usize, &mut [u8])) {
        self.for_each_piece(0, len, |ptr, at, n| {
            // SAFETY: `ptr..ptr+n` lies inside one segment, valid for writes
            // and reached through no other reference in this process (the
            // constructor's contract); the slice ends with the call.
            let slice = unsafe { std::slice::from_raw_parts_mut(ptr, n) };
            f(at, slice);
        });
    }

    /// The segments covering bytes `offset..offset + len` as `iovec`s, for
    /// a vectored read by the kernel (which writes only inside them).
    pub(crate) fn iovecs(&self, offset: usize, len: usize) -> SmallVec<[libc::iovec; 4]> {
        let mut v = SmallVec::new();
        self.for_each_piece(offset, len, |ptr, _, n| v.push(libc::iovec { iov_base: ptr.cast(), iov_len: n }));
        v
    }

    /// Calls `f(ptr, at, n)` for each piece of `offset..offset+len` that
    /// lies in the buffer: `n` bytes at `ptr` inside one segment, which
    /// are bytes `at..at+n` of the range. Bytes past the end are skipped.
    fn for_each_piece(&self, offset: usize, len: usize, mut f: impl FnMut(*mut u8, usize, usize)) {
        let mut skip = offset;
        let mut at = 0;
        for s in &self.segs {
            if at >= len {
                break;
            }
            if skip >= s.len {
                skip -= s.len;
                continue;
            }
            let n = (s.len - skip).min(len - at);
            // `skip < s.len`: still inside the segment.
            f(s.ptr.wrapping_add(skip), at, n);
            at += n;
            skip = 0;
        }
    }
}

impl Clone for SgBuf {
    /// Another handle on the same memory (the keeper's count), for a read
    /// that may be retried or must outlive a cancelled future.
    fn clone(&self) -> SgBuf {
        SgBuf {
            segs: self.segs.clone(),
            len: self.len,
            filled: Cell::new(self.filled.get()),
            _keep: self._keep.clone(),
        }
    }
}

impl fmt::Debug for SgBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SgBuf")
            .field("len", &self.len)
            .field("segments", &self.segs.len())
            .field("filled", &self.filled.get())
            .finish()
    }
}

/// The `iovec`s of a vectored read into lent memory, on the heap (they
/// stay put while the value moves: an I/O in flight owns them).
pub(crate) struct Iovecs(pub(crate) Box<[libc::iovec]>);

// SAFETY: plain addresses and lengths into memory an `SgBuf` keeps mapped
// (which is `Send` itself); nothing here is tied to a thread.
unsafe impl Send for Iovecs {}

impl SgBuf {
    /// [`SgBuf::iovecs`] on the heap, for an I/O that outlives the call.
    pub(crate) fn iovecs_boxed(&self, offset: usize, len: usize) -> Iovecs {
        Iovecs(self.iovecs(offset, len).into_vec().into_boxed_slice())
    }
}

/// The memory of [`SgBuf::zeroed`].
struct Backing(#[allow(dead_code)] Vec<Box<[u8]>>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_span_segments_and_stop_at_the_end() {
        let b = SgBuf::zeroed(10, 3);
        assert_eq!(b.segments(), 3);
        assert_eq!(b.write_at(2, &[1, 2, 3, 4, 5]), 5);
        assert_eq!(b.filled(), 7);
        assert_eq!(b.to_vec(10), vec![0, 0, 1, 2, 3, 4, 5, 0, 0, 0]);
        assert_eq!(b.write_at(8, &[9, 9, 9, 9]), 2);
        assert_eq!(b.to_vec(10), vec![0, 0, 1, 2, 3, 4, 5, 0, 9, 9]);
        assert_eq!(b.write_at(12, &[1]), 0);
        b.fill_zero(1, 100);
        assert_eq!(b.to_vec(10), vec![0; 10]);
        assert_eq!(b.filled(), 10);
    }

    #[test]
    fn iovecs_cover_a_prefix() {
        let b = SgBuf::zeroed(4096 * 3, 3);
        let v = b.iovecs(0, 4096 + 100);
        assert_eq!(b.iovecs(4000, 200).iter().map(|v| v.iov_len).collect::<Vec<_>>(), vec![96, 104]);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].iov_len, v[1].iov_len), (4096, 100));
        let mut seen = 0;
        b.with_slices_mut(8192, |at, s| {
            assert_eq!(at, seen);
            s.fill(7);
            seen += s.len();
        });
        assert_eq!(seen, 8192);
        assert_eq!(b.to_vec(8193)[8191..], [7, 0]);
    }

    proptest::proptest! {
        #[test]
        fn write_at_matches_a_flat_buffer(len in 0usize..64, pieces in 1usize..8, off in 0usize..80, data in proptest::collection::vec(0u8..255, 0..80)) {
            let b = SgBuf::zeroed(len, pieces);
            let mut flat = vec![0u8; len];
            let n = b.write_at(off, &data);
            let expect = len.saturating_sub(off).min(data.len());
            proptest::prop_assert_eq!(n, expect);
            if expect > 0 {
                flat[off..off + expect].copy_from_slice(&data[..expect]);
            }
            proptest::prop_assert_eq!(b.to_vec(len), flat);
        }
    }
}

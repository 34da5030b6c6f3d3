//! I/O buffers whose memory stays put while the kernel uses it.
//!
//! A [`Buf`] is moved into the per-thread io_uring slab while an operation is
//! in flight; its heap memory never moves when the `Buf` value itself moves,
//! so the pointer handed to the kernel stays valid until the slab drops it.

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use bytes::Bytes;

/// Alignment of buffers used with O_DIRECT (covers 512 and 4096 byte sectors
/// and the page size of the common architectures).
pub(crate) const DIRECT_ALIGN: usize = 4096;

/// A zero-initialised heap buffer aligned to [`DIRECT_ALIGN`].
pub(crate) struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: `AlignedBuf` uniquely owns its allocation (like `Box<[u8]>`); it has
// no shared interior state, so moving it to or sharing it with another thread
// is sound.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above; `&AlignedBuf` only gives read access to the bytes.
unsafe impl Sync for AlignedBuf {}

impl AlignedBuf {
    fn layout(len: usize) -> Layout {
        // `len.max(1)`: a zero-sized allocation is not allowed.
        Layout::from_size_align(len.max(1), DIRECT_ALIGN).expect("I/O buffer size overflows a Layout")
    }

    /// Allocates `len` zero bytes aligned to [`DIRECT_ALIGN`].
    pub(crate) fn zeroed(len: usize) -> Self {
        let layout = Self::layout(len);
        // SAFETY: the layout has a non-zero size (see `layout`).
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `len` initialised (zeroed at allocation) bytes
        // owned by `self`, borrowed for the lifetime of `&self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated by `alloc_zeroed` with exactly this layout
        // and is freed only here, once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) }
    }
}

pub(crate) use crate::sg::Iovecs;

/// A buffer owned by an I/O operation: a plain `Vec` when no alignment is
/// needed (or when the caller's `Vec` happens to be aligned), else an
/// [`AlignedBuf`].
pub(crate) enum Buf {
    Vec(Vec<u8>),
    Aligned(AlignedBuf),
    /// A write's data as the caller handed it (shared, read-only: the
    /// caller may hold it too, for a retry).
    Shared(Bytes),
    /// Memory a front-end lent for a read, and the `iovec`s a vectored read
    /// points at (boxed: they stay put while the `Buf` moves). Kept in the
    /// ring's slab only so that it stays mapped until the kernel is done.
    #[allow(dead_code)] // held, never read: the kernel writes through the iovecs
    Lent(crate::SgBuf, Iovecs),
}

impl Buf {
    /// A zeroed buffer of `len` bytes for a read (or a zero-fill write).
    pub(crate) fn zeroed(len: usize, direct: bool) -> Buf {
        if direct {
            Buf::Aligned(AlignedBuf::zeroed(len))
        } else {
            Buf::Vec(vec![0u8; len])
        }
    }

    /// Wraps the data of a write, copying it into aligned memory only when
    /// `direct` needs it and the data is not aligned already.
    pub(crate) fn for_write(data: Bytes, direct: bool) -> Buf {
        if !direct || (data.as_ptr() as usize) & (DIRECT_ALIGN - 1) == 0 {
            Buf::Shared(data)
        } else {
            let mut b = AlignedBuf::zeroed(data.len());
            b.as_mut_slice().copy_from_slice(&data);
            Buf::Aligned(b)
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        match self {
            Buf::Vec(v) => v,
            Buf::Aligned(a) => a.as_slice(),
            Buf::Shared(b) => b,
            Buf::Lent(..) => &[],
        }
    }

    /// The bytes to read into (read buffers come from [`Buf::zeroed`]; a
    /// shared write buffer asked for them is copied first, never written
    /// through).
    pub(crate) fn as_mut_slice(&mut self) -> &mut [u8] {
        if let Buf::Shared(b) = self {
            *self = Buf::Vec(b.to_vec());
        }
        match self {
            Buf::Vec(v) => v,
            Buf::Aligned(a) => a.as_mut_slice(),
            Buf::Shared(_) | Buf::Lent(..) => &mut [],
        }
    }

    /// The bytes as a `Vec` (free for `Buf::Vec`, one copy for aligned memory).
    pub(crate) fn into_vec(self) -> Vec<u8> {
        match self {
            Buf::Vec(v) => v,
            Buf::Aligned(a) => a.as_slice().to_vec(),
            Buf::Shared(b) => b.to_vec(),
            Buf::Lent(..) => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_zeroed() {
        for len in [0usize, 1, 511, 4096, 65536 + 3] {
            let b = AlignedBuf::zeroed(len);
            assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_ALIGN, 0);
            assert_eq!(b.as_slice().len(), len);
            assert!(b.as_slice().iter().all(|&x| x == 0));
        }
    }

    #[test]
    fn write_buffers_keep_the_data() {
        let data: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        for direct in [false, true] {
            let b = Buf::for_write(Bytes::from(data.clone()), direct);
            if direct {
                assert_eq!(b.as_slice().as_ptr() as usize % DIRECT_ALIGN, 0);
            }
            assert_eq!(b.len(), data.len());
            assert_eq!(b.into_vec(), data);
        }
    }
}

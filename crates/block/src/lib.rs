//! Lunar layer 2: block backends.
//!
//! Every backend is reached through [`Backend`]. Its async methods are called
//! on the I/O thread that owns the request; their futures are not `Send`
//! (the `file` backend submits to that thread's own io_uring).

pub mod error;
pub mod fault;
pub mod file;
pub mod mem;
pub mod rbd;
pub mod sg;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use bytes::Bytes;
pub use error::{BlockError, ErrorKind, Result};
pub use fault::FaultBackend;
pub use file::{FileBackend, FileOptions};
pub use mem::MemBackend;
pub use rbd::{RbdBackend, RbdError, RbdOptions};
pub use sg::SgBuf;

/// The `null` backend: only a size (shared by the clones of its [`Backend`]).
#[derive(Debug)]
pub struct NullBackend {
    size: AtomicU64,
}

/// A block device as the SCSI layer sees it: a byte-addressed range.
#[derive(Clone)]
pub enum Backend {
    /// RAM, lock-free across threads.
    Mem(Arc<MemBackend>),
    /// Reads zeros, drops writes (for benchmarks).
    Null(Arc<NullBackend>),
    /// A raw file or block device, I/O through io_uring.
    File(Arc<FileBackend>),
    /// A wrapper that injects errors and delays (tests of error policies and races).
    Fault(Arc<FaultBackend>),
    /// A Ceph RBD image through librbd's asynchronous API.
    Rbd(Arc<RbdBackend>),
}

impl Backend {
    pub fn mem(size: u64) -> Backend {
        Backend::Mem(Arc::new(MemBackend::new(size)))
    }

    pub fn null(size: u64) -> Backend {
        Backend::Null(Arc::new(NullBackend { size: AtomicU64::new(size) }))
    }

    pub fn size(&self) -> u64 {
        match self {
            Backend::Mem(m) => m.size(),
            Backend::Null(n) => n.size.load(Ordering::Acquire),
            Backend::File(f) => f.size(),
            Backend::Fault(f) => f.inner().size(),
            Backend::Rbd(r) => r.size(),
        }
    }

    /// Changes the size in bytes (control plane; the caller keeps I/O
    /// within both the old and the new size meanwhile). `mem` grows or
    /// shrinks its chunk table, `null` only its size, `file` truncates or
    /// extends the image (a block device's size is its own: only its
    /// current size is accepted), `fault` resizes what it wraps. Bytes past
    /// the old end read as zeros after growing.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        match self {
            Backend::Mem(m) => m.resize(new_size),
            Backend::Null(n) => {
                n.size.store(new_size, Ordering::Release);
                Ok(())
            }
            Backend::File(f) => f.resize(new_size),
            Backend::Fault(f) => f.inner().resize(new_size),
            Backend::Rbd(r) => r.resize(new_size),
        }
    }

    /// Opens the storage again (control plane, blocking; no request in
    /// flight): an `rbd` image as a new client of the cluster, which is how
    /// a LUN whose client was blocklisted comes back. The other backends'
    /// storage is local and stays open: nothing to do.
    pub fn reopen(&self) -> std::result::Result<(), RbdError> {
        match self {
            Backend::Rbd(r) => r.reopen(),
            Backend::Fault(f) => f.inner().reopen(),
            Backend::Mem(_) | Backend::Null(_) | Backend::File(_) => Ok(()),
        }
    }

    /// A short name for status output.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Backend::Mem(_) => "mem",
            Backend::Null(_) => "null",
            Backend::File(_) => "file",
            Backend::Fault(_) => "fault",
            Backend::Rbd(_) => "rbd",
        }
    }

    fn check(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size() => Ok(()),
            _ => Err(BlockError::out_of_range(op, offset, len)),
        }
    }

    /// Reads `len` bytes at `offset`.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        match self {
            Backend::Mem(m) => {
                let mut buf = vec![0u8; len];
                m.read_into(offset, &mut buf)?;
                Ok(buf)
            }
            Backend::Null(_) => {
                self.check("read", offset, len as u64)?;
                Ok(vec![0u8; len])
            }
            Backend::File(f) => f.read(offset, len).await,
            Backend::Fault(f) => Box::pin(f.read(offset, len)).await,
            Backend::Rbd(r) => r.read(offset, len).await,
        }
    }

    /// Reads `len` bytes at `offset` into the first `len` bytes of `dest`
    /// (at most its length), recording them as filled: the data moves once,
    /// from the storage into memory a front-end lent (`file`: `preadv` or
    /// io_uring straight into it; `rbd`: `rbd_aio_readv` into it; `mem`,
    /// `null`: one copy or fill; `fault`: as what it wraps).
    pub async fn read_into(&self, offset: u64, dest: &SgBuf, len: usize) -> Result<()> {
        if len > dest.len() {
            return Err(BlockError::out_of_range("read", offset, len as u64));
        }
        match self {
            Backend::Mem(m) => m.read_into_sg(offset, dest, len)?,
            Backend::Null(_) => {
                self.check("read", offset, len as u64)?;
                dest.fill_zero(0, len);
            }
            Backend::File(f) => f.read_into(offset, dest, len).await?,
            Backend::Fault(f) => Box::pin(f.read_into(offset, dest, len)).await?,
            Backend::Rbd(r) => r.read_into(offset, dest, len).await?,
        }
        dest.set_filled(len);
        Ok(())
    }

    /// Writes `data` at `offset`; with `fua` the data is durable when this
    /// returns. The data is shared, never copied to be kept: a caller that
    /// may retry the write holds a clone of the same [`Bytes`] (a reference
    /// count, not a copy).
    pub async fn write(&self, offset: u64, data: impl Into<Bytes>, fua: bool) -> Result<()> {
        let data: Bytes = data.into();
        match self {
            Backend::Mem(m) => m.write_from(offset, &data),
            Backend::Null(_) => self.check("write", offset, data.len() as u64),
            Backend::File(f) => f.write(offset, data, fua).await,
            Backend::Fault(f) => Box::pin(f.write(offset, data, fua)).await,
            Backend::Rbd(r) => r.write(offset, data, fua).await,
        }
    }

    /// Makes every completed write durable (fdatasync on `file`).
    pub async fn flush(&self) -> Result<()> {
        match self {
            Backend::Mem(_) | Backend::Null(_) => Ok(()),
            Backend::File(f) => f.flush().await,
            Backend::Fault(f) => Box::pin(f.flush()).await,
            Backend::Rbd(r) => r.flush().await,
        }
    }

    /// The largest COMPARE AND WRITE, in bytes, that this backend does
    /// atomically against writers outside this process (inside one aligned
    /// unit of that size), or `None` when the backend has no other writers
    /// and the target core's gate alone makes it atomic. `rbd`: 512, or
    /// `None` with the exclusive lock held ([`RbdOptions::exclusive`]).
    pub fn atomic_compare_and_write(&self) -> Option<u64> {
        match self {
            Backend::Rbd(r) if r.is_exclusive() => None,
            Backend::Rbd(_) => Some(rbd::ATOMIC_COMPARE_AND_WRITE_BYTES),
            Backend::Fault(f) => f.inner().atomic_compare_and_write(),
            _ => None,
        }
    }

    /// Before a COMPARE AND WRITE emulated by the target (read, compare,
    /// write under its gate; backends without
    /// [`Backend::atomic_compare_and_write`]): `Ok` when no writer outside
    /// this process can change the blocks meanwhile. Local backends: always;
    /// `rbd` with the exclusive lock: while the lock is still this client's.
    pub fn check_sole_writer(&self, offset: u64, len: u64) -> Result<()> {
        match self {
            Backend::Rbd(r) => r.check_sole_writer(offset, len),
            Backend::Fault(f) => f.inner().check_sole_writer(offset, len),
            Backend::Mem(_) | Backend::Null(_) | Backend::File(_) => Ok(()),
        }
    }

    /// Compares `[offset, offset + cmp.len())` with `cmp` and, if equal,
    /// writes `data` there, atomically in the backend; `Ok(Some(at))` on a
    /// miscompare at byte `at` (nothing written). Only for backends with
    /// [`Backend::atomic_compare_and_write`], within its limit.
    pub async fn compare_and_write(&self, offset: u64, cmp: Vec<u8>, data: Vec<u8>) -> Result<Option<u64>> {
        match self {
            Backend::Rbd(r) => r.compare_and_write(offset, cmp, data).await,
            Backend::Fault(f) => Box::pin(f.inner().compare_and_write(offset, cmp, data)).await,
            _ => Err(BlockError::new(
                ErrorKind::Unsupported,
                libc::EOPNOTSUPP,
                "compare-and-write",
                offset,
                data.len() as u64,
            )),
        }
    }

    /// Deallocates a range; it reads back as zeros.
    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        match self {
            Backend::Mem(m) => m.discard(offset, len),
            Backend::Null(_) => self.check("discard", offset, len),
            Backend::File(f) => f.discard(offset, len).await,
            Backend::Fault(f) => Box::pin(f.discard(offset, len)).await,
            Backend::Rbd(r) => r.discard(offset, len).await,
        }
    }

    /// The mapped (`true`) and deallocated (`false`) extents of
    /// `[offset, offset + len)` in bytes, in order and covering it (for GET
    /// LBA STATUS, SBC-4 5.7). `mem` knows per 64 KiB chunk, `file` asks the
    /// file system (`SEEK_DATA`/`SEEK_HOLE`); `null` reports all mapped,
    /// which SBC-4 allows of any backend that cannot tell. `rbd` asks the
    /// cluster, blocking: on I/O threads use [`Backend::allocation_async`].
    pub fn allocation(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        match self {
            Backend::Mem(m) => m.allocation(offset, len),
            Backend::Null(_) => {
                self.check("get-lba-status", offset, len)?;
                Ok(if len == 0 { Vec::new() } else { vec![(offset, len, true)] })
            }
            Backend::File(f) => f.is_allocated(offset, len),
            Backend::Fault(f) => f.inner().allocation(offset, len),
            Backend::Rbd(r) => r.allocation_blocking(offset, len),
        }
    }

    /// [`Backend::allocation`] for the I/O path: `rbd` asks the cluster
    /// from tokio's blocking pool instead of blocking the I/O thread.
    pub async fn allocation_async(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        match self {
            Backend::Rbd(r) => r.allocation(offset, len).await,
            Backend::Fault(f) => Box::pin(f.inner().allocation_async(offset, len)).await,
            _ => self.allocation(offset, len),
        }
    }

    /// Writes zeros over a range.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        match self {
            Backend::Mem(m) => m.write_zeroes(offset, len),
            Backend::Null(_) => self.check("write-zeroes", offset, len),
            Backend::File(f) => f.write_zeroes(offset, len).await,
            Backend::Fault(f) => Box::pin(f.write_zeroes(offset, len)).await,
            Backend::Rbd(r) => r.write_zeroes(offset, len).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_by_backend() {
        let mem = Backend::mem(1 << 20);
        assert_eq!(mem.allocation(0, 1 << 20).unwrap(), vec![(0, 1 << 20, false)]);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(mem.write(4096, vec![1; 512], false)).unwrap();
        assert_eq!(mem.allocation(0, 128 << 10).unwrap(), vec![(0, 64 << 10, true), (64 << 10, 64 << 10, false)]);
        rt.block_on(mem.discard(0, 64 << 10)).unwrap();
        assert_eq!(mem.allocation(0, 128 << 10).unwrap(), vec![(0, 128 << 10, false)]);
        let null = Backend::null(4096);
        assert_eq!(null.allocation(512, 1024).unwrap(), vec![(512, 1024, true)]);
        assert_eq!(null.allocation(0, 0).unwrap(), vec![]);
        assert_eq!(null.allocation(4096, 512).unwrap_err().kind, ErrorKind::OutOfRange);
        let fault = Backend::Fault(Arc::new(FaultBackend::new(mem)));
        assert_eq!(fault.allocation(0, 64 << 10).unwrap(), vec![(0, 64 << 10, false)]);
    }

    #[test]
    fn resize_by_backend() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let null = Backend::null(4096);
        let clone = null.clone();
        null.resize(8192).unwrap();
        assert_eq!(clone.size(), 8192, "clones share the size");
        assert!(rt.block_on(clone.read(4096, 4096)).is_ok());
        null.resize(1024).unwrap();
        assert_eq!(rt.block_on(clone.write(1024, vec![0; 512], false)).unwrap_err().kind, ErrorKind::OutOfRange);
        let mem = Backend::mem(4096);
        let fault = Backend::Fault(Arc::new(FaultBackend::new(mem.clone())));
        fault.resize(1 << 20).unwrap();
        assert_eq!((mem.size(), fault.size()), (1 << 20, 1 << 20));
        rt.block_on(fault.write((1 << 20) - 512, vec![5; 512], false)).unwrap();
        assert_eq!(rt.block_on(mem.read((1 << 20) - 512, 512)).unwrap(), vec![5; 512]);
    }
}

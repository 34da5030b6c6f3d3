//! `file`: a raw image file or block device.
//!
//! I/O goes through the io_uring of the thread that polls the future (see
//! [`uring`]): every Lunar I/O thread gets its own ring, created lazily, with
//! no lock shared between threads on the I/O path. The futures are therefore
//! not `Send`, and must be polled inside a `tokio::task::LocalSet` (the ring's
//! completion reaper is a `spawn_local` task).
//!
//! Where io_uring is not available (old kernel, seccomp, `io_uring_disabled`)
//! the backend logs a warning once and runs blocking `pread`/`pwrite` and
//! friends on tokio's blocking pool instead. Block device `BLKDISCARD` and
//! `BLKZEROOUT` always go through the blocking pool (they are ioctls).

mod buf;
mod sys;
mod uring;

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use io_uring::{opcode, types};

use self::buf::Buf;
use self::uring::{Op, Ring};
use crate::{BlockError, Result};

#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// Open with O_DIRECT (bypass the page cache). Offsets and lengths must
    /// then be multiples of 512 (the device may require more: the kernel's
    /// EINVAL is reported as `ErrorKind::Unsupported`).
    pub direct: bool,
    /// Open read-only.
    pub readonly: bool,
}

/// Largest single SQE transfer; longer requests are split (and short
/// transfers are continued) by the loops below.
const MAX_CHUNK: usize = 1 << 30;
/// Size of the zero buffer used when write-zeroes falls back to writes.
const ZERO_CHUNK: usize = 1 << 20;
/// Alignment checked for O_DIRECT offsets and lengths.
const DIRECT_IO_ALIGN: u64 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Regular,
    Block,
    /// Character devices and the like: no meaningful size, no range checks.
    Other,
}

/// A raw image file or block device. `Send + Sync`: share it through an
/// `Arc` between I/O threads; each thread submits to its own ring.
pub struct FileBackend {
    file: Arc<File>,
    /// Bytes; changed only by [`FileBackend::resize`].
    size: AtomicU64,
    kind: Kind,
    direct: bool,
    readonly: bool,
    /// `FALLOC_FL_ZERO_RANGE` returned EOPNOTSUPP once: write zeros instead.
    no_zero_range: AtomicBool,
    /// `FALLOC_FL_PUNCH_HOLE` returned EOPNOTSUPP once: discard writes zeros.
    no_punch_hole: AtomicBool,
    /// `RWF_DSYNC` returned EOPNOTSUPP once: FUA is write + fdatasync.
    no_rwf_dsync: AtomicBool,
    /// `RWF_NOWAIT` reads are unsupported here: every read goes to the ring.
    no_nowait: AtomicBool,
    /// The file lives in memory (tmpfs, ramfs): its reads and writes never
    /// wait for a device, so they are done in place (io_uring would hand
    /// them to a kernel worker thread, as these file systems cannot say
    /// "would block").
    in_memory: bool,
}

fn io_err(e: std::io::Error, op: &'static str, offset: u64, len: u64) -> BlockError {
    BlockError::from_errno(e.raw_os_error().unwrap_or(libc::EIO), op, offset, len)
}

fn join_err(e: tokio::task::JoinError, op: &'static str, offset: u64, len: u64) -> BlockError {
    tracing::error!(error = %e, op, "file backend blocking task failed");
    BlockError::from_errno(libc::EIO, op, offset, len)
}

impl FileBackend {
    /// Opens a raw image file or a block device.
    pub fn open(path: &Path, opts: &FileOptions) -> Result<Self> {
        let mut flags = libc::O_CLOEXEC;
        if opts.direct {
            flags |= libc::O_DIRECT;
        }
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!opts.readonly)
            .custom_flags(flags)
            .open(path)
            .map_err(|e| io_err(e, "open", 0, 0))?;
        let meta = file.metadata().map_err(|e| io_err(e, "stat", 0, 0))?;
        let ft = meta.file_type();
        let (kind, size) = if ft.is_block_device() {
            let size = sys::block_device_size(&file).map_err(|e| BlockError::from_errno(e, "size", 0, 0))?;
            (Kind::Block, size)
        } else if ft.is_file() {
            (Kind::Regular, meta.len())
        } else if ft.is_dir() {
            return Err(BlockError::from_errno(libc::EISDIR, "open", 0, 0));
        } else {
            (Kind::Other, 0)
        };
        tracing::debug!(path = %path.display(), ?kind, size, direct = opts.direct, "file backend opened");
        let in_memory = kind == Kind::Regular && !opts.direct && sys::is_memory_fs(&file);
        Ok(FileBackend {
            file: Arc::new(file),
            size: AtomicU64::new(size),
            kind,
            direct: opts.direct,
            readonly: opts.readonly,
            no_zero_range: AtomicBool::new(false),
            no_punch_hole: AtomicBool::new(false),
            no_rwf_dsync: AtomicBool::new(false),
            no_nowait: AtomicBool::new(false),
            in_memory,
        })
    }

    /// Size in bytes: `BLKGETSIZE64` for block devices, `st_size` for files
    /// (at open time, or as last resized), 0 for other files such as
    /// character devices.
    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    /// Changes the size of the image: `set_len` (truncating or extending
    /// it sparsely; bytes past the old end read as zeros). A block device
    /// keeps its own size: only that size is accepted (after the device
    /// itself was resized). Control plane: a blocking system call.
    pub fn resize(&self, new_size: u64) -> Result<()> {
        if new_size > i64::MAX as u64 || (self.direct && !new_size.is_multiple_of(DIRECT_IO_ALIGN)) {
            return Err(BlockError::from_errno(libc::EINVAL, "resize", new_size, 0));
        }
        match self.kind {
            Kind::Regular => {
                if self.readonly {
                    return Err(BlockError::from_errno(libc::EROFS, "resize", new_size, 0));
                }
                self.file.set_len(new_size).map_err(|e| io_err(e, "resize", new_size, 0))?;
            }
            Kind::Block => {
                let now = sys::block_device_size(&self.file).map_err(|e| BlockError::from_errno(e, "resize", 0, 0))?;
                if now != new_size {
                    return Err(BlockError::from_errno(libc::EOPNOTSUPP, "resize", new_size, 0));
                }
            }
            Kind::Other => return Err(BlockError::from_errno(libc::EOPNOTSUPP, "resize", new_size, 0)),
        }
        self.size.store(new_size, Ordering::Release);
        Ok(())
    }

    fn fd(&self) -> types::Fd {
        types::Fd(self.file.as_raw_fd())
    }

    fn check_range(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        let end = offset.checked_add(len).filter(|&e| e <= i64::MAX as u64);
        match end {
            None => Err(BlockError::out_of_range(op, offset, len)),
            Some(end) if self.kind != Kind::Other && end > self.size() => {
                Err(BlockError::out_of_range(op, offset, len))
            }
            Some(_) => Ok(()),
        }
    }

    fn check_align(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        if self.direct && ((offset | len) & (DIRECT_IO_ALIGN - 1) != 0) {
            return Err(BlockError::from_errno(libc::EINVAL, op, offset, len));
        }
        Ok(())
    }

    fn check_writable(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        if self.readonly {
            return Err(BlockError::from_errno(libc::EROFS, op, offset, len));
        }
        Ok(())
    }

    /// Reads `len` bytes at `offset`. Reading past the end is `OutOfRange`.
    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        self.check_range("read", offset, len as u64)?;
        self.check_align("read", offset, len as u64)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        let mut buf = Buf::zeroed(len, self.direct);
        if self.in_memory {
            return match sys::pread_full(&self.file, buf.as_mut_slice(), offset) {
                Ok(()) => Ok(buf.into_vec()),
                Err(sys::ReadError::Eof) => Err(BlockError::out_of_range("read", offset, len as u64)),
                Err(sys::ReadError::Errno(e)) => Err(BlockError::from_errno(e, "read", offset, len as u64)),
            };
        }
        if !self.direct && !self.no_nowait.load(Ordering::Relaxed) {
            match sys::pread_nowait(&self.file, buf.as_mut_slice(), offset) {
                sys::Nowait::Done => return Ok(buf.into_vec()),
                sys::Nowait::WouldBlock => {}
                sys::Nowait::Unsupported => self.no_nowait.store(true, Ordering::Relaxed),
                sys::Nowait::Errno(e) => return Err(BlockError::from_errno(e, "read", offset, len as u64)),
            }
        }
        let buf = match uring::current() {
            Some(ring) => self.uring_read(&ring, offset, buf).await?,
            None => {
                let file = self.file.clone();
                tokio::task::spawn_blocking(move || {
                    let mut buf = buf;
                    match sys::pread_full(&file, buf.as_mut_slice(), offset) {
                        Ok(()) => Ok(buf),
                        Err(sys::ReadError::Eof) => Err(BlockError::out_of_range("read", offset, len as u64)),
                        Err(sys::ReadError::Errno(e)) => Err(BlockError::from_errno(e, "read", offset, len as u64)),
                    }
                })
                .await
                .map_err(|e| join_err(e, "read", offset, len as u64))??
            }
        };
        Ok(buf.into_vec())
    }

    /// Reads `len` bytes at `offset` straight into lent memory: `preadv`
    /// for a file in memory or a page-cache hit, else a vectored read on
    /// this thread's io_uring. With O_DIRECT and a buffer not aligned for
    /// it, through an aligned buffer of its own and a copy.
    pub async fn read_into(&self, offset: u64, dest: &crate::SgBuf, len: usize) -> Result<()> {
        if len > dest.len() {
            return Err(BlockError::out_of_range("read", offset, len as u64));
        }
        self.read_into_lent(offset, dest, len).await?;
        dest.set_filled(len);
        Ok(())
    }

    async fn read_into_lent(&self, offset: u64, dest: &crate::SgBuf, len: usize) -> Result<()> {
        self.check_range("read", offset, len as u64)?;
        self.check_align("read", offset, len as u64)?;
        if len == 0 {
            return Ok(());
        }
        if self.direct && !dest.is_aligned(DIRECT_IO_ALIGN as usize) {
            let data = self.read(offset, len).await?;
            dest.write_at(0, &data);
            return Ok(());
        }
        let err = |e: sys::ReadError| match e {
            sys::ReadError::Eof => BlockError::out_of_range("read", offset, len as u64),
            sys::ReadError::Errno(e) => BlockError::from_errno(e, "read", offset, len as u64),
        };
        let mut iov = dest.iovecs(0, len);
        if self.in_memory {
            return sys::preadv_full(&self.file, &mut iov, offset).map_err(err);
        }
        if !self.direct && !self.no_nowait.load(Ordering::Relaxed) {
            match sys::preadv_nowait(&self.file, &iov, offset) {
                sys::Nowait::Done => return Ok(()),
                sys::Nowait::WouldBlock => {}
                sys::Nowait::Unsupported => self.no_nowait.store(true, Ordering::Relaxed),
                sys::Nowait::Errno(e) => return Err(BlockError::from_errno(e, "read", offset, len as u64)),
            }
        }
        let Some(ring) = uring::current() else {
            // The handle keeps the memory mapped while the blocking pool reads.
            let (file, keep, iov) = (self.file.clone(), dest.clone(), buf::Iovecs(iov.into_vec().into()));
            return tokio::task::spawn_blocking(move || {
                // The whole `Iovecs` moves here (it is `Send`; its field alone is not).
                let mut iov = iov;
                let result = sys::preadv_full(&file, &mut iov.0, offset);
                drop(keep);
                result
            })
            .await
            .map_err(|e| join_err(e, "read", offset, len as u64))?
            .map_err(err);
        };
        let mut done = 0usize;
        while done < len {
            // The iovecs of what is left, owned (with a handle on the lent
            // memory) by the ring's slot until the kernel is done with them.
            let remaining = buf::Iovecs(dest.iovecs(done, len - done).into_vec().into());
            let (ptr, count) = (remaining.0.as_ptr(), remaining.0.len().min(libc::UIO_MAXIOV as usize) as u32);
            let entry = opcode::Readv::new(self.fd(), ptr, count).offset(offset + done as u64).build();
            let (res, _back) = Op::new(ring.clone(), entry, Some(Buf::Lent(dest.clone(), remaining))).await;
            match res {
                r if r == -libc::EINTR || r == -libc::EAGAIN => continue,
                r if r < 0 => return Err(BlockError::from_errno(-r, "read", offset, len as u64)),
                0 => return Err(BlockError::out_of_range("read", offset, len as u64)),
                r => done += r as usize,
            }
        }
        Ok(())
    }

    async fn uring_read(&self, ring: &Rc<Ring>, offset: u64, mut buf: Buf) -> Result<Buf> {
        let len = buf.len();
        let mut done = 0usize;
        while done < len {
            let n = (len - done).min(MAX_CHUNK);
            // Points into the buffer's heap memory, which stays put while the
            // `Buf` moves into the ring's slab.
            let ptr = buf.as_mut_slice()[done..].as_mut_ptr();
            let entry = opcode::Read::new(self.fd(), ptr, n as u32).offset(offset + done as u64).build();
            let (res, back) = Op::new(ring.clone(), entry, Some(buf)).await;
            let Some(back) = back else {
                return Err(BlockError::from_errno(-res.min(-1), "read", offset, len as u64));
            };
            buf = back;
            match res {
                r if r == -libc::EINTR || r == -libc::EAGAIN => continue,
                r if r < 0 => return Err(BlockError::from_errno(-r, "read", offset, len as u64)),
                0 => return Err(BlockError::out_of_range("read", offset, len as u64)),
                r => done += r as usize,
            }
        }
        Ok(buf)
    }

    /// Writes `data` at `offset`; with `fua` it is durable when this returns
    /// (`RWF_DSYNC` on the write, or write + fdatasync where unsupported).
    pub async fn write(&self, offset: u64, data: impl Into<Bytes>, fua: bool) -> Result<()> {
        let data: Bytes = data.into();
        let len = data.len() as u64;
        self.check_writable("write", offset, len)?;
        self.check_range("write", offset, len)?;
        self.check_align("write", offset, len)?;
        if data.is_empty() {
            return if fua { self.flush().await } else { Ok(()) };
        }
        if self.in_memory {
            // fdatasync of tmpfs/ramfs is a no-op: FUA holds once written.
            return sys::pwrite_full(&self.file, &data, offset)
                .map_err(|e| BlockError::from_errno(e, "write", offset, len));
        }
        let buf = Buf::for_write(data, self.direct);
        match uring::current() {
            Some(ring) => {
                self.uring_write(&ring, offset, buf, fua).await?;
                Ok(())
            }
            None => {
                let file = self.file.clone();
                tokio::task::spawn_blocking(move || {
                    sys::pwrite_full(&file, buf.as_slice(), offset)
                        .map_err(|e| BlockError::from_errno(e, "write", offset, len))?;
                    if fua {
                        sys::fdatasync(&file).map_err(|e| BlockError::from_errno(e, "flush", offset, len))?;
                    }
                    Ok(())
                })
                .await
                .map_err(|e| join_err(e, "write", offset, len))?
            }
        }
    }

    /// Writes all of `buf` at `offset` through `ring`; gives the buffer back.
    async fn uring_write(&self, ring: &Rc<Ring>, offset: u64, mut buf: Buf, fua: bool) -> Result<Buf> {
        let len = buf.len();
        let mut done = 0usize;
        let mut dsync = fua && !self.no_rwf_dsync.load(Ordering::Relaxed);
        while done < len {
            let n = (len - done).min(MAX_CHUNK);
            // Points into the buffer's heap memory, which stays put while the
            // `Buf` moves into the ring's slab.
            let ptr = buf.as_slice()[done..].as_ptr();
            let flags = if dsync { libc::RWF_DSYNC } else { 0 };
            let entry =
                opcode::Write::new(self.fd(), ptr, n as u32).offset(offset + done as u64).rw_flags(flags).build();
            let (res, back) = Op::new(ring.clone(), entry, Some(buf)).await;
            let Some(back) = back else {
                return Err(BlockError::from_errno(-res.min(-1), "write", offset, len as u64));
            };
            buf = back;
            match res {
                r if r == -libc::EINTR || r == -libc::EAGAIN => continue,
                r if dsync && r == -libc::EOPNOTSUPP => {
                    tracing::info!("RWF_DSYNC unsupported here, FUA writes use fdatasync");
                    self.no_rwf_dsync.store(true, Ordering::Relaxed);
                    dsync = false;
                }
                r if r < 0 => return Err(BlockError::from_errno(-r, "write", offset, len as u64)),
                0 => return Err(BlockError::from_errno(libc::EIO, "write", offset, len as u64)),
                r => done += r as usize,
            }
        }
        if fua && !dsync {
            self.uring_fsync(ring, offset, len as u64).await?;
        }
        Ok(buf)
    }

    async fn uring_fsync(&self, ring: &Rc<Ring>, offset: u64, len: u64) -> Result<()> {
        loop {
            let entry = opcode::Fsync::new(self.fd()).flags(types::FsyncFlags::DATASYNC).build();
            let (res, _) = Op::new(ring.clone(), entry, None).await;
            match res {
                r if r == -libc::EINTR => continue,
                r if r < 0 => return Err(BlockError::from_errno(-r, "flush", offset, len)),
                _ => return Ok(()),
            }
        }
    }

    /// fdatasync: every completed write is durable when this returns.
    pub async fn flush(&self) -> Result<()> {
        match uring::current() {
            Some(ring) => self.uring_fsync(&ring, 0, 0).await,
            None => {
                let file = self.file.clone();
                tokio::task::spawn_blocking(move || {
                    sys::fdatasync(&file).map_err(|e| BlockError::from_errno(e, "flush", 0, 0))
                })
                .await
                .map_err(|e| join_err(e, "flush", 0, 0))?
            }
        }
    }

    /// `fallocate(mode)` through the ring, or on the blocking pool. Returns the errno.
    async fn fallocate(&self, mode: i32, offset: u64, len: u64) -> std::result::Result<(), i32> {
        match uring::current() {
            Some(ring) => loop {
                let entry = opcode::Fallocate::new(self.fd(), len).offset(offset).mode(mode).build();
                let (res, _) = Op::new(ring.clone(), entry, None).await;
                match res {
                    r if r == -libc::EINTR => continue,
                    r if r < 0 => return Err(-r),
                    _ => return Ok(()),
                }
            },
            None => {
                let file = self.file.clone();
                tokio::task::spawn_blocking(move || sys::fallocate(&file, mode, offset, len))
                    .await
                    .map_err(|_| libc::EIO)?
            }
        }
    }

    /// Runs a block device range ioctl on the blocking pool.
    async fn blk_ioctl(
        &self,
        op: &'static str,
        f: fn(&File, u64, u64) -> std::result::Result<(), i32>,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || f(&file, offset, len))
            .await
            .map_err(|e| join_err(e, op, offset, len))?
            .map_err(|e| BlockError::from_errno(e, op, offset, len))
    }

    /// Deallocates a range; it reads back as zeros. `FALLOC_FL_PUNCH_HOLE |
    /// FALLOC_FL_KEEP_SIZE` on files (writes zeros where holes are not
    /// supported), `BLKDISCARD` on block devices.
    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable("discard", offset, len)?;
        self.check_range("discard", offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.kind == Kind::Block {
            return self.blk_ioctl("discard", sys::blk_discard, offset, len).await;
        }
        if !self.no_punch_hole.load(Ordering::Relaxed) {
            match self.fallocate(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE, offset, len).await {
                Ok(()) => return Ok(()),
                Err(libc::EOPNOTSUPP) => {
                    tracing::info!("hole punching unsupported here, discard writes zeros");
                    self.no_punch_hole.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(BlockError::from_errno(e, "discard", offset, len)),
            }
        }
        self.write_zero_buffers("discard", offset, len).await
    }

    /// Writes zeros over a range: `FALLOC_FL_ZERO_RANGE` on files (falling
    /// back to writing zero buffers), `BLKZEROOUT` on block devices.
    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.check_writable("write-zeroes", offset, len)?;
        self.check_range("write-zeroes", offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.kind == Kind::Block {
            return self.blk_ioctl("write-zeroes", sys::blk_zeroout, offset, len).await;
        }
        if self.kind == Kind::Regular && !self.no_zero_range.load(Ordering::Relaxed) {
            match self.fallocate(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE, offset, len).await {
                Ok(()) => return Ok(()),
                Err(libc::EOPNOTSUPP) => {
                    tracing::info!("FALLOC_FL_ZERO_RANGE unsupported here, write-zeroes writes zero buffers");
                    self.no_zero_range.store(true, Ordering::Relaxed);
                }
                Err(e) => return Err(BlockError::from_errno(e, "write-zeroes", offset, len)),
            }
        }
        self.write_zero_buffers("write-zeroes", offset, len).await
    }

    /// Writes zeros over `[offset, offset + len)` with one reused zero buffer.
    async fn write_zero_buffers(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        self.check_align(op, offset, len)?;
        let chunk = len.min(ZERO_CHUNK as u64) as usize;
        let mut buf = Buf::zeroed(chunk, self.direct);
        let mut done = 0u64;
        let ring = uring::current();
        while done < len {
            let n = (len - done).min(chunk as u64) as usize;
            let at = offset + done;
            if n < chunk {
                buf = Buf::zeroed(n, self.direct);
            }
            buf = match &ring {
                Some(ring) => {
                    self.uring_write(ring, at, buf, false).await.map_err(|e| BlockError { op, offset, len, ..e })?
                }
                None => {
                    let file = self.file.clone();
                    tokio::task::spawn_blocking(move || sys::pwrite_full(&file, buf.as_slice(), at).map(|()| buf))
                        .await
                        .map_err(|e| join_err(e, op, offset, len))?
                        .map_err(|e| BlockError::from_errno(e, op, offset, len))?
                }
            };
            done += n as u64;
        }
        Ok(())
    }

    /// The allocated (`true`) and unallocated (`false`) extents covering
    /// `[offset, offset + len)`, by `SEEK_DATA`/`SEEK_HOLE` (for GET LBA
    /// STATUS). Block devices and file systems without hole reporting report
    /// the whole range as mapped.
    pub fn is_allocated(&self, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>> {
        self.check_range("get-lba-status", offset, len)?;
        if len == 0 {
            return Ok(Vec::new());
        }
        if self.kind != Kind::Regular {
            return Ok(vec![(offset, len, true)]);
        }
        sys::extents(&self.file, offset, len).map_err(|e| BlockError::from_errno(e, "get-lba-status", offset, len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::future::Future;
    use std::task::Poll;

    fn run<F: Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    #[test]
    fn cancelled_ops_free_their_slots_on_completion() {
        let Some(ring) = uring::current() else {
            println!("skipping: io_uring unavailable on this kernel");
            return;
        };
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(4 << 20).unwrap();
        let b = FileBackend::open(f.path(), &FileOptions::default()).unwrap();
        run(async {
            // An op may complete inside its submit (page cache): only the
            // ones still pending after their first poll are cancelled in flight.
            for _ in 0..20 {
                let mut fut = Box::pin(b.read(0, 4 << 20));
                let _ = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
                drop(fut);
                let mut fut = Box::pin(b.write(0, vec![1; 1 << 20], false));
                let _ = std::future::poll_fn(|cx| Poll::Ready(fut.as_mut().poll(cx))).await;
                drop(fut);
            }
            // Orphaned ops are freed by the reaper as their CQEs arrive.
            b.flush().await.unwrap();
            for _ in 0..1000 {
                if ring.usage() == (0, 0) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            assert_eq!(ring.usage(), (0, 0));
            // And completed ops free theirs at once.
            b.write(0, vec![2; 4096], false).await.unwrap();
            assert_eq!(b.read(0, 4096).await.unwrap(), vec![2; 4096]);
            assert_eq!(ring.usage(), (0, 0));
        });
    }

    #[test]
    fn backend_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<FileBackend>();
        assert_send_sync::<FileOptions>();
    }

    #[test]
    fn each_thread_has_its_own_ring() {
        let Some(here) = uring::current() else {
            println!("skipping: io_uring unavailable on this kernel");
            return;
        };
        assert!(Rc::ptr_eq(&here, &uring::current().unwrap()));
        let other = std::thread::spawn(|| uring::current().map(|r| Rc::as_ptr(&r) as usize)).join().unwrap();
        assert!(other.is_some());
        assert_ne!(other.unwrap(), Rc::as_ptr(&here) as usize);
    }

    #[test]
    fn errno_kinds_are_kept() {
        assert_eq!(BlockError::from_errno(libc::EIO, "read", 0, 512).kind, ErrorKind::Io);
        assert_eq!(BlockError::from_errno(libc::ENOSPC, "write", 0, 512).kind, ErrorKind::NoSpace);
        assert_eq!(BlockError::from_errno(libc::ESHUTDOWN, "write", 0, 512).kind, ErrorKind::Offline);
        assert_eq!(BlockError::from_errno(libc::ETIMEDOUT, "write", 0, 512).kind, ErrorKind::TimedOut);
        let e = io_err(std::io::Error::from_raw_os_error(libc::EIO), "read", 4096, 512);
        assert_eq!((e.kind, e.errno, e.offset, e.len), (ErrorKind::Io, libc::EIO, 4096, 512));
    }

    #[test]
    fn resize_sets_the_image_length() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(1 << 20).unwrap();
        let b = FileBackend::open(f.path(), &FileOptions::default()).unwrap();
        run(async {
            b.write((1 << 20) - 4096, vec![7; 4096], false).await.unwrap();
            b.resize(2 << 20).unwrap();
            assert_eq!((b.size(), f.as_file().metadata().unwrap().len()), (2 << 20, 2 << 20));
            assert_eq!(b.read((1 << 20) - 4096, 4096).await.unwrap(), vec![7; 4096]);
            assert_eq!(b.read((2 << 20) - 4096, 4096).await.unwrap(), vec![0; 4096], "grown range reads zeros");
            b.resize(512 << 10).unwrap();
            assert_eq!(f.as_file().metadata().unwrap().len(), 512 << 10);
            assert_eq!(b.read(512 << 10, 512).await.unwrap_err().kind, ErrorKind::OutOfRange);
            b.resize(1 << 20).unwrap();
            assert_eq!(b.read((1 << 20) - 4096, 4096).await.unwrap(), vec![0; 4096], "shrunk away, then zeros");
        });
        let ro = FileBackend::open(f.path(), &FileOptions { readonly: true, ..Default::default() }).unwrap();
        assert_eq!(ro.resize(4 << 20).unwrap_err().kind, ErrorKind::ReadOnly);
        assert_eq!(ro.size(), 1 << 20);
    }
}

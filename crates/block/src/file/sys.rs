//! Thin wrappers over the system calls the file backend makes outside
//! io_uring: block device ioctls, `lseek(SEEK_DATA/SEEK_HOLE)`, and the
//! blocking positional I/O of the fallback path.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

/// `_IOC(dir, 0x12, nr, size)` for the block device ioctls of `<linux/fs.h>`.
const fn blk_ioc(dir: u64, nr: u64, size: u64) -> u64 {
    // The direction bits sit at bit 30 (generic) or 29 (powerpc, mips, sparc),
    // the size field is 14 bits (generic) or 13 bits.
    #[cfg(any(
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc64"
    ))]
    const DIRSHIFT: u64 = 29;
    #[cfg(not(any(
        target_arch = "powerpc",
        target_arch = "powerpc64",
        target_arch = "mips",
        target_arch = "mips64",
        target_arch = "sparc64"
    )))]
    const DIRSHIFT: u64 = 30;
    (dir << DIRSHIFT) | (size << 16) | (0x12 << 8) | nr
}

#[cfg(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc64"
))]
const IOC_NONE: u64 = 1;
#[cfg(not(any(
    target_arch = "powerpc",
    target_arch = "powerpc64",
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc64"
)))]
const IOC_NONE: u64 = 0;
const IOC_READ: u64 = 2;

/// `BLKGETSIZE64`: `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: u64 = blk_ioc(IOC_READ, 114, std::mem::size_of::<usize>() as u64);
/// `BLKDISCARD`: `_IO(0x12, 119)`, argument `u64[2] = {offset, len}`.
const BLKDISCARD: u64 = blk_ioc(IOC_NONE, 119, 0);
/// `BLKZEROOUT`: `_IO(0x12, 127)`, argument `u64[2] = {offset, len}`.
const BLKZEROOUT: u64 = blk_ioc(IOC_NONE, 127, 0);

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// The size in bytes of a block device.
pub(crate) fn block_device_size(file: &File) -> Result<u64, i32> {
    let mut size: u64 = 0;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to
    // a live, writable u64 on our stack; the fd is open for the whole call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(size)
    }
}

fn blk_range_ioctl(file: &File, request: u64, offset: u64, len: u64) -> Result<(), i32> {
    let range: [u64; 2] = [offset, len];
    // SAFETY: BLKDISCARD and BLKZEROOUT read two u64s through the pointer,
    // which points to a live array on our stack; the fd is open for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), request as _, range.as_ptr()) };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// `BLKDISCARD` on a block device.
pub(crate) fn blk_discard(file: &File, offset: u64, len: u64) -> Result<(), i32> {
    blk_range_ioctl(file, BLKDISCARD, offset, len)
}

/// `BLKZEROOUT` on a block device.
pub(crate) fn blk_zeroout(file: &File, offset: u64, len: u64) -> Result<(), i32> {
    blk_range_ioctl(file, BLKZEROOUT, offset, len)
}

/// `fallocate(2)`.
pub(crate) fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> Result<(), i32> {
    loop {
        // SAFETY: plain system call on an fd we own; no memory is passed.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as libc::off_t, len as libc::off_t) };
        if rc == 0 {
            return Ok(());
        }
        match errno() {
            libc::EINTR => continue,
            e => return Err(e),
        }
    }
}

/// `fdatasync(2)`.
pub(crate) fn fdatasync(file: &File) -> Result<(), i32> {
    file.sync_data().map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))
}

/// Error of a blocking positional read: an errno, or the end of the file
/// before the buffer was full.
pub(crate) enum ReadError {
    Errno(i32),
    Eof,
}

/// Fills `buf` from `offset` (retrying short reads).
pub(crate) fn pread_full(file: &File, buf: &mut [u8], offset: u64) -> Result<(), ReadError> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => return Err(ReadError::Eof),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Errno(e.raw_os_error().unwrap_or(libc::EIO))),
        }
    }
    Ok(())
}

/// Whether `file` is on a file system held in memory (tmpfs, ramfs).
pub(crate) fn is_memory_fs(file: &File) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: fstatfs writes a `statfs` into the pointer on success; the
    // value is read only then. The descriptor is owned by `file`.
    let rc = unsafe { libc::fstatfs(file.as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: fstatfs returned 0, so it initialised the struct.
    // (`f_type`'s width differs between architectures: hence the cast.)
    #[allow(clippy::unnecessary_cast)]
    let kind = unsafe { st.assume_init() }.f_type as i64;
    kind == TMPFS_MAGIC || kind == RAMFS_MAGIC
}

/// What a non-blocking read from the page cache gave.
pub(crate) enum Nowait {
    /// All of `buf` was read without blocking.
    Done,
    /// Not all of it is in the page cache (or a short read): use the ring.
    WouldBlock,
    /// The file system does not support RWF_NOWAIT.
    Unsupported,
    Errno(i32),
}

/// Reads all of `buf` at `offset` only if it can be done without blocking
/// (`preadv2` with `RWF_NOWAIT`: page-cache hits), so that the common case
/// of a cached read costs one system call and no completion round trip.
pub(crate) fn pread_nowait(file: &File, buf: &mut [u8], offset: u64) -> Nowait {
    let iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: `iov` describes `buf`, which is valid for writes of its length
    // for the duration of the call; the descriptor is owned by `file`.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT) };
    if n < 0 {
        return match io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO) {
            libc::EAGAIN | libc::EINTR => Nowait::WouldBlock,
            libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS => Nowait::Unsupported,
            e => Nowait::Errno(e),
        };
    }
    if n as usize == buf.len() {
        Nowait::Done
    } else {
        Nowait::WouldBlock
    }
}

/// Drops the first `n` bytes from the front of `iov` (after a short read).
fn advance(iov: &mut [libc::iovec], mut n: usize) -> &mut [libc::iovec] {
    let mut first = 0;
    while first < iov.len() && n >= iov[first].iov_len {
        n -= iov[first].iov_len;
        first += 1;
    }
    let rest = &mut iov[first..];
    if let Some(v) = rest.first_mut() {
        v.iov_base = v.iov_base.cast::<u8>().wrapping_add(n).cast();
        v.iov_len -= n;
    }
    rest
}

/// One `preadv2` into `iov` (flags as for the system call).
fn preadv2(file: &File, iov: &[libc::iovec], offset: u64, flags: i32) -> Result<usize, i32> {
    let count = iov.len().min(libc::UIO_MAXIOV as usize) as i32;
    // SAFETY: every `iovec` describes memory valid for writes of its length
    // for the duration of the call (the caller's `SgBuf` contract); the
    // descriptor is owned by `file`.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), iov.as_ptr(), count, offset as libc::off_t, flags) };
    if n < 0 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO))
    } else {
        Ok(n as usize)
    }
}

/// Fills every `iovec` from `offset` (retrying short reads).
pub(crate) fn preadv_full(file: &File, iov: &mut [libc::iovec], offset: u64) -> Result<(), ReadError> {
    let total: usize = iov.iter().map(|v| v.iov_len).sum();
    let mut done = 0;
    let mut rest = iov;
    while done < total {
        match preadv2(file, rest, offset + done as u64, 0) {
            Ok(0) => return Err(ReadError::Eof),
            Ok(n) => {
                done += n;
                rest = advance(rest, n);
            }
            Err(libc::EINTR) => {}
            Err(e) => return Err(ReadError::Errno(e)),
        }
    }
    Ok(())
}

/// [`pread_nowait`] into `iovec`s.
pub(crate) fn preadv_nowait(file: &File, iov: &[libc::iovec], offset: u64) -> Nowait {
    let total: usize = iov.iter().map(|v| v.iov_len).sum();
    match preadv2(file, iov, offset, libc::RWF_NOWAIT) {
        Ok(n) if n == total => Nowait::Done,
        Ok(_) | Err(libc::EAGAIN | libc::EINTR) => Nowait::WouldBlock,
        Err(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS) => Nowait::Unsupported,
        Err(e) => Nowait::Errno(e),
    }
}

/// Writes all of `buf` at `offset` (retrying short writes).
pub(crate) fn pwrite_full(file: &File, buf: &[u8], offset: u64) -> Result<(), i32> {
    let mut done = 0;
    while done < buf.len() {
        match file.write_at(&buf[done..], offset + done as u64) {
            Ok(0) => return Err(libc::EIO),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.raw_os_error().unwrap_or(libc::EIO)),
        }
    }
    Ok(())
}

fn lseek(file: &File, offset: u64, whence: i32) -> Result<u64, i32> {
    // SAFETY: plain system call on an fd we own; no memory is passed. The
    // file position it moves is never used (all I/O is positional).
    let rc = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
    if rc < 0 {
        Err(errno())
    } else {
        Ok(rc as u64)
    }
}

/// The data/hole extents of `[offset, offset + len)` by `SEEK_DATA` and
/// `SEEK_HOLE`, adjacent extents of the same kind merged. A file system
/// without hole reporting reports everything mapped.
pub(crate) fn extents(file: &File, offset: u64, len: u64) -> Result<Vec<(u64, u64, bool)>, i32> {
    let end = offset.saturating_add(len);
    let mut out: Vec<(u64, u64, bool)> = Vec::new();
    let mut push = |start: u64, stop: u64, mapped: bool| {
        if stop <= start {
            return;
        }
        match out.last_mut() {
            Some(last) if last.2 == mapped && last.0 + last.1 == start => last.1 += stop - start,
            _ => out.push((start, stop - start, mapped)),
        }
    };
    let mut pos = offset;
    while pos < end {
        let data = match lseek(file, pos, libc::SEEK_DATA) {
            Ok(d) => d,
            // No data at or after `pos`: the rest is a hole.
            Err(libc::ENXIO) => {
                push(pos, end, false);
                break;
            }
            Err(libc::EINVAL) | Err(libc::EOPNOTSUPP) if pos == offset => {
                push(offset, end, true);
                break;
            }
            Err(e) => return Err(e),
        };
        if data > pos {
            let stop = data.min(end);
            push(pos, stop, false);
            pos = stop;
            if pos >= end {
                break;
            }
        }
        let hole = match lseek(file, pos, libc::SEEK_HOLE) {
            Ok(h) => h,
            // Raced with a truncate: treat the rest as a hole.
            Err(libc::ENXIO) => {
                push(pos, end, false);
                break;
            }
            Err(e) => return Err(e),
        };
        // SEEK_HOLE never returns `pos` itself when `pos` is in data; guard
        // against a file system that does anyway so the loop always advances.
        let stop = hole.min(end).max(pos + 1).min(end);
        push(pos, stop, true);
        pos = stop;
    }
    Ok(out)
}

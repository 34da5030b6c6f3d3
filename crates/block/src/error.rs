//! Backend errors that keep their kind, so that the error policies of the
//! target core (`report`, `ignore`, `stop`, `enospc`) can tell ENOSPC from EIO.

use thiserror::Error;

/// What went wrong, in the terms the error policies and sense mapping need.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// EIO and other media errors.
    Io,
    /// ENOSPC / EDQUOT: the storage under a thin image ran out.
    NoSpace,
    /// EROFS / EPERM / EACCES on a write.
    ReadOnly,
    /// The range is outside the backend (a caller bug the SCSI layer should catch first).
    OutOfRange,
    /// The operation or alignment is not supported by this backend.
    Unsupported,
    /// The backend cut this client off (Ceph blocklisted it: EBLOCKLISTED,
    /// which is ESHUTDOWN); it stays so until it is opened again.
    Offline,
    /// The backend did not answer within its bound (ETIMEDOUT: for `rbd`, an
    /// OSD or the whole Ceph cluster away longer than the I/O timeout). The
    /// request may succeed when retried once the backend is back.
    TimedOut,
    /// Anything else; the errno is kept.
    Other,
}

/// A failed backend operation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{op} at offset {offset} length {len}: {kind:?} (errno {errno})")]
pub struct BlockError {
    pub kind: ErrorKind,
    /// The raw errno (0 when the error did not come from the OS).
    pub errno: i32,
    pub op: &'static str,
    pub offset: u64,
    pub len: u64,
}

impl BlockError {
    pub fn new(kind: ErrorKind, errno: i32, op: &'static str, offset: u64, len: u64) -> Self {
        BlockError { kind, errno, op, offset, len }
    }

    /// Classifies an errno the way the error policies need it.
    pub fn from_errno(errno: i32, op: &'static str, offset: u64, len: u64) -> Self {
        let kind = match errno {
            libc::EIO | libc::ENXIO | libc::ENODEV => ErrorKind::Io,
            libc::ENOSPC | libc::EDQUOT => ErrorKind::NoSpace,
            libc::EROFS | libc::EPERM | libc::EACCES | libc::EBADF => ErrorKind::ReadOnly,
            libc::EOPNOTSUPP | libc::EINVAL => ErrorKind::Unsupported,
            libc::ESHUTDOWN => ErrorKind::Offline,
            libc::ETIMEDOUT => ErrorKind::TimedOut,
            _ => ErrorKind::Other,
        };
        BlockError::new(kind, errno, op, offset, len)
    }

    pub fn out_of_range(op: &'static str, offset: u64, len: u64) -> Self {
        BlockError::new(ErrorKind::OutOfRange, libc::EINVAL, op, offset, len)
    }
}

pub type Result<T> = std::result::Result<T, BlockError>;

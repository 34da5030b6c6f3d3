//! `file`: a raw image file or block device. PLACEHOLDER being replaced by the
//! io_uring implementation (see the helper's task); this version uses
//! blocking positional I/O and exists only so the workspace builds.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::{BlockError, Result};

#[derive(Debug, Clone, Default)]
pub struct FileOptions {
    /// Open with O_DIRECT (bypass the page cache).
    pub direct: bool,
    /// Open read-only.
    pub readonly: bool,
}

pub struct FileBackend {
    file: File,
    size: u64,
}

fn io_err(e: std::io::Error, op: &'static str, offset: u64, len: u64) -> BlockError {
    BlockError::from_errno(e.raw_os_error().unwrap_or(libc::EIO), op, offset, len)
}

impl FileBackend {
    pub fn open(path: &Path, opts: &FileOptions) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!opts.readonly)
            .open(path)
            .map_err(|e| io_err(e, "open", 0, 0))?;
        let size = file.metadata().map_err(|e| io_err(e, "stat", 0, 0))?.len();
        Ok(FileBackend { file, size })
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub async fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.file.read_exact_at(&mut buf, offset).map_err(|e| io_err(e, "read", offset, len as u64))?;
        Ok(buf)
    }

    pub async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<()> {
        self.file.write_all_at(&data, offset).map_err(|e| io_err(e, "write", offset, data.len() as u64))?;
        if fua {
            self.file.sync_data().map_err(|e| io_err(e, "flush", offset, 0))?;
        }
        Ok(())
    }

    pub async fn flush(&self) -> Result<()> {
        self.file.sync_data().map_err(|e| io_err(e, "flush", 0, 0))
    }

    pub async fn discard(&self, offset: u64, len: u64) -> Result<()> {
        self.write_zeroes(offset, len).await
    }

    pub async fn write_zeroes(&self, offset: u64, len: u64) -> Result<()> {
        self.write(offset, vec![0u8; len as usize], false).await
    }
}

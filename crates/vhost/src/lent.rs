//! Guest memory lent to the target core for a command's data-in, so that a
//! backend's read lands in the guest's own buffers (no copy in between).
//!
//! The one module of this crate that turns guest addresses into host
//! pointers. Each piece is checked against the memory map (in a region,
//! within its end), and the map itself is kept alive by the buffer: the
//! regions stay mapped until the last handle on them is dropped, even if
//! the front-end replaced the map (SET_MEM_TABLE) while the read ran.

use std::sync::Arc;

use lunar_block::SgBuf;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::request_queue::QueueMem;
use crate::virtio::Buffers;

/// The device-writable buffers of `buffers` from `offset` on, `len` bytes
/// at most, as memory the core can read into; `None` if a piece is outside
/// guest memory (the caller copies instead, and that fails the same way).
pub(crate) fn lend_writable(mem: &QueueMem, buffers: &Buffers, offset: u64, len: u64) -> Option<SgBuf> {
    let map = mem.get();
    let mut pieces: smallvec::SmallVec<[(*mut u8, usize); 4]> = smallvec::SmallVec::new();
    let mut skip = offset;
    let mut left = len;
    for s in &buffers.writable {
        if left == 0 {
            break;
        }
        let seg = u64::from(s.len);
        if skip >= seg {
            skip -= seg;
            continue;
        }
        let mut addr = s.addr.checked_add(skip)?;
        let mut n = (seg - skip).min(left);
        skip = 0;
        left -= n;
        // A buffer may span regions: one piece per region.
        while n > 0 {
            let (region, at) = map.to_region_addr(GuestAddress(addr))?;
            let room = region.len().checked_sub(at.0)?;
            let take = n.min(room);
            if take == 0 {
                return None;
            }
            let ptr = region.get_host_address(at).ok()?;
            pieces.push((ptr, usize::try_from(take).ok()?));
            addr = addr.checked_add(take)?;
            n -= take;
        }
    }
    let keep: Arc<dyn Send + Sync> = mem.handle();
    // SAFETY: each piece lies inside one region of the guest memory map
    // (`to_region_addr` found it, and it ends within the region's length),
    // which is mapped read-write for as long as the map is alive; `keep`
    // holds the map. This process reaches the pieces through no Rust
    // reference while the core reads into them: the virtio chain is this
    // request's alone until its used entry is written, which happens only
    // after the core has completed it. The guest may write them meanwhile
    // (a broken driver): only its own data is then wrong.
    Some(unsafe { SgBuf::from_raw_parts(pieces, keep) })
}

/// Guest memory a write's data-out is read from by the backend, held for
/// as long as the core holds the data (a retry after ENOSPC included).
struct GuestBytes {
    ptr: *const u8,
    len: usize,
    _keep: Arc<dyn Send + Sync>,
}

// SAFETY: a pointer into guest memory kept mapped by `_keep` (`Send +
// Sync`); nothing here is tied to a thread.
unsafe impl Send for GuestBytes {}

impl AsRef<[u8]> for GuestBytes {
    fn as_ref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+len` lies inside one region of the guest memory
        // map that `_keep` keeps mapped (checked by `lend_readable`). The
        // driver may not change a device-readable buffer before the device
        // returns the chain (virtio 1.2, 2.7.13); a guest that does anyway
        // can only make its own write carry torn data, as on any device.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The `len` device-readable bytes of `buffers` from `offset`, without a
/// copy, when they lie in one buffer and one region of guest memory (a
/// page-sized data-out of Linux's driver does); `None` otherwise (the
/// caller copies them).
pub(crate) fn lend_readable(mem: &QueueMem, buffers: &Buffers, offset: u64, len: usize) -> Option<lunar_block::Bytes> {
    if len == 0 {
        return None;
    }
    let mut skip = offset;
    let seg = buffers.readable.iter().find(|s| {
        if skip >= u64::from(s.len) {
            skip -= u64::from(s.len);
            false
        } else {
            true
        }
    })?;
    if u64::from(seg.len) - skip < len as u64 {
        return None;
    }
    let addr = seg.addr.checked_add(skip)?;
    let (region, at) = mem.get().to_region_addr(GuestAddress(addr))?;
    if region.len().checked_sub(at.0)? < len as u64 {
        return None;
    }
    let ptr = region.get_host_address(at).ok()?;
    Some(lunar_block::Bytes::from_owner(GuestBytes { ptr, len, _keep: mem.handle() }))
}

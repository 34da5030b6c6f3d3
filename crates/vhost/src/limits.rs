//! What one guest may make a controller hold: descriptors per chain, bytes
//! per request, requests in flight per request queue ([`VhostLimits`]), and
//! how often a guest ran into them ([`VhostLimitHits`]).
//!
//! A chain over a limit is answered, never dropped: the guest's driver sees
//! the request complete with an error and goes on (see
//! [`VhostLimits::max_chain_descriptors`] and
//! [`VhostLimits::max_request_bytes`] for the answers). The in-flight limit
//! is back-pressure instead: nothing fails, the request queue's I/O thread
//! leaves chains on the ring until completions free slots.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::virtio::{MAX_CDB_SIZE, REQ_HEADER};
use crate::{VhostError, MAX_QUEUE_SIZE};

/// The largest request header (the 19 bytes before the CDB, and a CDB of
/// the largest size a driver may configure): what a request's readable
/// part holds besides its data-out. (The response side, 12 bytes and at
/// most 256 of sense, is smaller.)
pub const REQUEST_OVERHEAD: u64 = (REQ_HEADER + MAX_CDB_SIZE as usize) as u64;

/// Per-controller limits on what the guest's requests may make the device
/// hold. The defaults are above anything a Linux guest or QEMU sends, so
/// only a broken or hostile driver meets them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VhostLimits {
    /// Descriptors in one chain, those of an indirect table included
    /// (default [`DEFAULT_MAX_CHAIN_DESCRIPTORS`], 1024).
    ///
    /// Virtio 1.2 (2.7.5.3.1) forbids a driver a chain longer than the queue
    /// size, indirect or not, and this device offers rings of at most 1024
    /// entries (QEMU's `VIRTQUEUE_MAX_SIZE`, whose own devices refuse
    /// longer chains too). Linux's virtio-scsi driver builds a chain of one
    /// request buffer, one response buffer and at most `seg_max` data
    /// buffers (the config space says 126, or fewer when this limit is
    /// below 128). Only the first descriptors up to the limit are looked
    /// at: a longer chain is completed with `VIRTIO_SCSI_S_FAILURE` if the
    /// writable buffers among them hold a response, with used length 0
    /// otherwise. At least 3 (request, response, one data buffer).
    pub max_chain_descriptors: u32,
    /// Bytes of one request each way: device-readable (request header, CDB
    /// and data-out) and device-writable (response, sense and data-in),
    /// each counted on its own (default [`DEFAULT_MAX_REQUEST_BYTES`]:
    /// 8 MiB and 275 bytes).
    ///
    /// The default is the LU's MAXIMUM TRANSFER LENGTH
    /// ([`lunar_scsi::MAX_TRANSFER_BYTES`], 8 MiB, which the Block Limits
    /// VPD page reports and Linux's sd honours) plus [`REQUEST_OVERHEAD`],
    /// the largest header: a command with a longer transfer is refused by
    /// the LU anyway (INVALID FIELD IN CDB), so a bigger chain would only
    /// make the device walk and hold more of the guest's buffers. The
    /// config space's `max_sectors` tells the driver the same limit. A
    /// request over it is completed with CHECK CONDITION, ILLEGAL REQUEST,
    /// INVALID FIELD IN CDB (24h/00h). At least [`REQUEST_OVERHEAD`] + 512.
    pub max_request_bytes: u64,
    /// Requests of one request queue in the core at once (default
    /// [`MAX_QUEUE_SIZE`], 1024: the largest ring, so no limit beyond the
    /// ring's own size). When a queue has this many in flight, its I/O
    /// thread takes no more chains off the ring until one completes; the
    /// chains wait on the ring, none is failed. At least 1; a value not
    /// below the ring size adds no limit.
    pub max_inflight_per_queue: u32,
}

/// Default of [`VhostLimits::max_chain_descriptors`]: the largest ring.
pub const DEFAULT_MAX_CHAIN_DESCRIPTORS: u32 = MAX_QUEUE_SIZE as u32;
/// Default of [`VhostLimits::max_request_bytes`]: the LU's maximum transfer
/// plus the largest request header.
pub const DEFAULT_MAX_REQUEST_BYTES: u64 = lunar_scsi::MAX_TRANSFER_BYTES + REQUEST_OVERHEAD;

impl Default for VhostLimits {
    fn default() -> Self {
        VhostLimits {
            max_chain_descriptors: DEFAULT_MAX_CHAIN_DESCRIPTORS,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_inflight_per_queue: MAX_QUEUE_SIZE as u32,
        }
    }
}

impl VhostLimits {
    /// Refuses limits no driver could work with.
    pub fn validate(&self) -> Result<(), VhostError> {
        if self.max_chain_descriptors < 3 {
            return Err(VhostError::Limits("max_chain_descriptors must be at least 3"));
        }
        if self.max_request_bytes < REQUEST_OVERHEAD + 512 {
            return Err(VhostError::Limits("max_request_bytes must be at least 787 (header and one 512-byte block)"));
        }
        if self.max_inflight_per_queue == 0 {
            return Err(VhostError::Limits("max_inflight_per_queue must be at least 1"));
        }
        Ok(())
    }

    /// `seg_max` of the config space: data buffers a driver may put in a
    /// chain (besides the request and the response) without meeting
    /// [`VhostLimits::max_chain_descriptors`].
    pub(crate) fn seg_max(&self, default: u32) -> u32 {
        default.min(self.max_chain_descriptors.saturating_sub(2)).max(1)
    }

    /// `max_sectors` of the config space (512-byte sectors per command)
    /// that keeps a request within [`VhostLimits::max_request_bytes`].
    pub(crate) fn max_sectors(&self) -> u32 {
        let sectors = self.max_request_bytes.saturating_sub(REQUEST_OVERHEAD) / 512;
        sectors.clamp(1, 0xffff) as u32
    }
}

/// How many times a controller's guest ran into a limit, since the
/// controller started ([`crate::Controller::limit_hits`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VhostLimitHits {
    /// Chains longer than [`VhostLimits::max_chain_descriptors`] (request,
    /// control and event queues).
    pub chain_too_long: u64,
    /// Requests over [`VhostLimits::max_request_bytes`] one way or the other.
    pub request_too_large: u64,
    /// Times a request queue reached [`VhostLimits::max_inflight_per_queue`]
    /// and stopped taking chains off its ring (once per stall, not per
    /// chain that waited).
    pub inflight_throttled: u64,
    /// Other malformed chains or requests: a readable descriptor after a
    /// writable one, a response area or request header too short, a
    /// buffer outside guest memory, a bad control or event queue buffer.
    pub bad_chain: u64,
    /// Warnings about bad guest input not logged (at most one a second is);
    /// each logged one also says how many it follows.
    pub warnings_suppressed: u64,
}

impl VhostLimitHits {
    /// Each count with its name (as `lunarctl status` and the metrics show it).
    pub fn named(&self) -> [(&'static str, u64); 5] {
        [
            ("chain_too_long", self.chain_too_long),
            ("request_too_large", self.request_too_large),
            ("inflight_throttled", self.inflight_throttled),
            ("bad_chain", self.bad_chain),
            ("warnings_suppressed", self.warnings_suppressed),
        ]
    }
}

/// The counters behind [`VhostLimitHits`]: bumped only when a limit is hit
/// (or a warning suppressed), never on a request that passes.
#[derive(Default)]
pub(crate) struct HitCounters {
    pub(crate) chain_too_long: AtomicU64,
    pub(crate) request_too_large: AtomicU64,
    pub(crate) inflight_throttled: AtomicU64,
    pub(crate) bad_chain: AtomicU64,
}

impl HitCounters {
    pub(crate) fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, warnings_suppressed: u64) -> VhostLimitHits {
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VhostLimitHits {
            chain_too_long: ld(&self.chain_too_long),
            request_too_large: ld(&self.request_too_large),
            inflight_throttled: ld(&self.inflight_throttled),
            bad_chain: ld(&self.bad_chain),
            warnings_suppressed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_config_space() {
        let l = VhostLimits::default();
        assert_eq!(l.max_chain_descriptors, 1024);
        assert_eq!(l.max_request_bytes, (8 << 20) + 275);
        assert_eq!(l.max_inflight_per_queue, 1024);
        assert!(l.validate().is_ok());
        // What the config space tells the driver: Linux never meets the limits.
        assert_eq!((l.seg_max(126), l.max_sectors()), (126, 16384));
        let small = VhostLimits { max_chain_descriptors: 66, max_request_bytes: (1 << 20) + 275, ..l };
        assert_eq!((small.seg_max(126), small.max_sectors()), (64, 2048));
        for bad in [
            VhostLimits { max_chain_descriptors: 2, ..l },
            VhostLimits { max_request_bytes: 786, ..l },
            VhostLimits { max_inflight_per_queue: 0, ..l },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}

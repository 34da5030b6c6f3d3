//! The virtio-scsi event queue (virtio 1.2, section 5.6.6.3): what the
//! device tells the driver about LUNs that come and go (hot plug,
//! `VIRTIO_SCSI_F_HOTPLUG`) or change (`VIRTIO_SCSI_F_CHANGE`).
//!
//! This module is the wire format and the queue of events not yet
//! delivered; the ring itself is driven by `lib.rs` on the thread that owns
//! the event virtqueue (the main loop).

use std::collections::VecDeque;

// Event types (5.6.6.3).
pub const T_NO_EVENT: u32 = virtio_bindings::virtio_scsi::VIRTIO_SCSI_T_NO_EVENT;
pub const T_TRANSPORT_RESET: u32 = virtio_bindings::virtio_scsi::VIRTIO_SCSI_T_TRANSPORT_RESET;
pub const T_ASYNC_NOTIFY: u32 = virtio_bindings::virtio_scsi::VIRTIO_SCSI_T_ASYNC_NOTIFY;
pub const T_PARAM_CHANGE: u32 = virtio_bindings::virtio_scsi::VIRTIO_SCSI_T_PARAM_CHANGE;
/// Set in `event` when the device had to drop events for want of buffers.
pub const T_EVENTS_MISSED: u32 = virtio_bindings::virtio_scsi::VIRTIO_SCSI_T_EVENTS_MISSED;

// Reasons of a transport reset (5.6.6.3.1).
pub const EVT_RESET_HARD: u32 = virtio_bindings::virtio_scsi::VIRTIO_SCSI_EVT_RESET_HARD;
pub const EVT_RESET_RESCAN: u32 = virtio_bindings::virtio_scsi::VIRTIO_SCSI_EVT_RESET_RESCAN;
pub const EVT_RESET_REMOVED: u32 = virtio_bindings::virtio_scsi::VIRTIO_SCSI_EVT_RESET_REMOVED;

/// `struct virtio_scsi_event`: event u32, lun[8], reason u32.
pub const EVENT_LEN: usize = std::mem::size_of::<virtio_bindings::virtio_scsi::virtio_scsi_event>();
const _: () = assert!(EVENT_LEN == 16);

/// Events kept while the driver has no buffer posted; beyond this they are
/// dropped and the next event delivered carries [`T_EVENTS_MISSED`].
pub const MAX_PENDING: usize = 64;

/// One event about one LUN of target 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScsiEvent {
    pub event: u32,
    /// `None`: no LUN (a bare "events missed" notice).
    pub lun: Option<u64>,
    pub reason: u32,
}

impl ScsiEvent {
    /// A LUN appeared: the driver scans it.
    pub fn rescan(lun: u64) -> Self {
        ScsiEvent { event: T_TRANSPORT_RESET, lun: Some(lun), reason: EVT_RESET_RESCAN }
    }

    /// A LUN went away: the driver removes it.
    pub fn removed(lun: u64) -> Self {
        ScsiEvent { event: T_TRANSPORT_RESET, lun: Some(lun), reason: EVT_RESET_REMOVED }
    }

    /// A parameter of a LUN changed, with the additional sense code and
    /// qualifier of the unit attention it stands for (5.6.6.3.3).
    pub fn param_change(lun: u64, asc: u8, ascq: u8) -> Self {
        ScsiEvent { event: T_PARAM_CHANGE, lun: Some(lun), reason: asc as u32 | (ascq as u32) << 8 }
    }

    /// Nothing but "events were missed".
    pub fn none() -> Self {
        ScsiEvent { event: T_NO_EVENT, lun: None, reason: 0 }
    }

    /// The wire form. The LUN is addressed as in a command (byte 0 is 1,
    /// byte 1 the target) with bytes 2-3 in the encoding of REPORT LUNS
    /// (peripheral below 256, flat above), which is what Linux matches its
    /// devices against.
    pub fn encode(&self, missed: bool) -> [u8; EVENT_LEN] {
        let mut b = [0u8; EVENT_LEN];
        let event = self.event | if missed { T_EVENTS_MISSED } else { 0 };
        b[0..4].copy_from_slice(&event.to_le_bytes());
        if let Some(lun) = self.lun {
            let sam = lunar_scsi::lun::encode_lun(lun);
            b[4] = 1;
            b[6] = sam[0];
            b[7] = sam[1];
        }
        b[12..16].copy_from_slice(&self.reason.to_le_bytes());
        b
    }
}

/// Events waiting for a buffer of the driver, in order, and whether some
/// were dropped.
#[derive(Debug, Default)]
pub struct EventQueue {
    pending: VecDeque<ScsiEvent>,
    missed: bool,
}

impl EventQueue {
    pub fn push(&mut self, e: ScsiEvent) {
        if self.pending.len() >= MAX_PENDING {
            self.missed = true;
        } else {
            self.pending.push_back(e);
        }
    }

    /// The next event to deliver, encoded, without taking it.
    pub fn peek(&self) -> Option<[u8; EVENT_LEN]> {
        match self.pending.front() {
            Some(e) => Some(e.encode(self.missed)),
            None if self.missed => Some(ScsiEvent::none().encode(true)),
            None => None,
        }
    }

    /// The event [`EventQueue::peek`] returned was delivered.
    pub fn consume(&mut self) {
        self.pending.pop_front();
        self.missed = false;
    }

    /// The driver reset the device: forget everything.
    pub fn clear(&mut self) {
        self.pending.clear();
        self.missed = false;
    }

    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && !self.missed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(b: &[u8; EVENT_LEN], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn wire_format() {
        let r = ScsiEvent::rescan(3).encode(false);
        assert_eq!((field(&r, 0), field(&r, 12)), (T_TRANSPORT_RESET, EVT_RESET_RESCAN));
        assert_eq!(&r[4..12], &[1, 0, 0, 3, 0, 0, 0, 0]);
        // Flat space addressing above 255, as REPORT LUNS encodes it.
        let r = ScsiEvent::removed(0x123).encode(true);
        assert_eq!(field(&r, 0), T_TRANSPORT_RESET | T_EVENTS_MISSED);
        assert_eq!(&r[4..12], &[1, 0, 0x41, 0x23, 0, 0, 0, 0]);
        assert_eq!(field(&r, 12), EVT_RESET_REMOVED);
        // Parameter change: ASC in bits 0-7, ASCQ in bits 8-15.
        let p = ScsiEvent::param_change(1, 0x2a, 0x09).encode(false);
        assert_eq!((field(&p, 0), field(&p, 12)), (T_PARAM_CHANGE, 0x092a));
        let n = ScsiEvent::none().encode(true);
        assert_eq!(field(&n, 0), T_EVENTS_MISSED);
        assert_eq!(&n[4..16], &[0; 12]);
    }

    #[test]
    fn kept_in_order_then_missed_when_full() {
        let mut q = EventQueue::default();
        assert!(q.is_empty() && q.peek().is_none());
        for lun in 0..MAX_PENDING as u64 + 3 {
            q.push(ScsiEvent::rescan(lun));
        }
        assert_eq!(q.len(), MAX_PENDING);
        // The first delivered event says some were dropped; later ones do not.
        let first = q.peek().unwrap();
        assert_eq!(field(&first, 0), T_TRANSPORT_RESET | T_EVENTS_MISSED);
        assert_eq!(first[7], 0);
        assert_eq!(q.peek(), Some(first), "peek does not consume");
        q.consume();
        for lun in 1..MAX_PENDING as u64 {
            let e = q.peek().unwrap();
            assert_eq!((field(&e, 0), e[7] as u64), (T_TRANSPORT_RESET, lun));
            q.consume();
        }
        assert!(q.is_empty() && q.peek().is_none());
    }

    #[test]
    fn missed_alone_is_a_bare_notice_and_clear_forgets() {
        let mut q = EventQueue::default();
        for lun in 0..MAX_PENDING as u64 + 1 {
            q.push(ScsiEvent::removed(lun));
        }
        for _ in 0..MAX_PENDING {
            q.consume();
        }
        // The missed flag went out with the first event delivered.
        assert!(q.is_empty());
        q.push(ScsiEvent::rescan(1));
        q.clear();
        assert!(q.is_empty() && q.peek().is_none());
        let mut q = EventQueue { missed: true, ..Default::default() };
        assert_eq!(q.peek(), Some(ScsiEvent::none().encode(true)));
        q.consume();
        assert!(q.is_empty());
    }
}

//! What one initiator may claim of the server: sessions, connections,
//! commands, buffered data and time. Every limit has a default that a
//! well-behaved initiator never meets; a hostile or broken one meets it and
//! gets the answer RFC 7143 gives, while other sessions go on. Each hit is
//! counted ([`LimitHits`]) for `lunarctl status` and the metrics.
//!
//! The memory one connection can make the server hold is bounded by
//! (`docs/security.md` has the whole formula):
//!
//! - its read buffer: one PDU, at most our MaxRecvDataSegmentLength plus
//!   headers and digests, plus one read chunk;
//! - unsolicited and immediate data: at most FirstBurstLength per command
//!   and `cmd_window + IMMEDIATE_EXTRA` commands, which the FirstBurstLength
//!   we accept keeps under `max_unsolicited_bytes`;
//! - solicited data (R2Ts) and read data: `max_buffered_bytes`, or one
//!   command's largest transfer when nothing else is held.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Immediate commands (which CmdSN does not hold back) a session may have
/// beyond its command window before they are rejected (RFC 7143 §11.17.1,
/// reason 0x06).
pub const IMMEDIATE_EXTRA: u32 = 8;

/// The resource limits of an iSCSI server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceLimits {
    /// Normal sessions per target; one more is refused at login with
    /// "out of resources" (0x0302). Reinstating a session (same
    /// initiator and ISID) does not count.
    pub max_sessions_per_target: usize,
    /// Open TCP connections per portal, logged in or not; one more is
    /// closed as soon as it is accepted.
    pub max_connections_per_portal: usize,
    /// Open TCP connections from one initiator address (all portals).
    pub max_connections_per_address: usize,
    /// Commands a session may have outstanding: the CmdSN window granted
    /// (MaxCmdSN - ExpCmdSN + 1 with nothing outstanding). MaxCmdSN
    /// advances only as commands complete.
    pub cmd_window: u32,
    /// Immediate and unsolicited data a session may send without being
    /// asked: the FirstBurstLength accepted is at most this divided by
    /// `cmd_window + IMMEDIATE_EXTRA` (and never below 512).
    pub max_unsolicited_bytes: u64,
    /// Solicited data-out and data-in a connection buffers at once; R2Ts
    /// and reads beyond it wait, and MaxCmdSN stops advancing.
    pub max_buffered_bytes: u64,
    /// Time allowed for the whole login phase, for a text negotiation, and
    /// for any PDU to arrive whole once its first byte has: a peer that
    /// sends nothing, or a byte a second, is disconnected after it.
    pub negotiation_timeout: Duration,
    /// How long a connection's thread may poll its socket after answering
    /// before it sleeps until the socket wakes it (adaptive, up to this;
    /// zero: never): the CPU a connection may spend to answer its next
    /// command without a wake-up. [`DEFAULT_POLL`] unless told otherwise.
    pub poll: Duration,
}

/// The default longest poll of a connection's socket. At queue depth 1 an
/// initiator on this kind of machine sends its next command 30-60 µs after
/// reading the answer, well inside it; an idle connection stops polling
/// within a few hundred microseconds (the window halves on every empty poll).
pub const DEFAULT_POLL: Duration = Duration::from_micros(200);

/// The longest poll `poll` may be.
pub const MAX_POLL: Duration = Duration::from_millis(1);

impl Default for ResourceLimits {
    fn default() -> Self {
        ResourceLimits {
            max_sessions_per_target: 64,
            max_connections_per_portal: 256,
            max_connections_per_address: 64,
            cmd_window: 128,
            max_unsolicited_bytes: 64 << 20,
            max_buffered_bytes: 32 << 20,
            negotiation_timeout: Duration::from_secs(15),
            poll: DEFAULT_POLL,
        }
    }
}

impl ResourceLimits {
    /// Largest `cmd_window` (a quarter of the CmdSN space would already be
    /// far beyond any initiator's queue depth).
    pub const MAX_CMD_WINDOW: u32 = 65536;

    /// The FirstBurstLength this server can accept at most, given its
    /// configured upper bound.
    pub fn first_burst_cap(&self, configured: u32) -> u32 {
        let commands = u64::from(self.cmd_window.saturating_add(IMMEDIATE_EXTRA)).max(1);
        let per_command = (self.max_unsolicited_bytes / commands).min(u64::from(configured));
        u32::try_from(per_command).unwrap_or(u32::MAX).max(crate::params::MIN_LENGTH)
    }
}

/// Counts of limits met, since the server started.
#[derive(Debug, Default)]
pub(crate) struct LimitCounters {
    pub connections_refused: AtomicU64,
    pub sessions_refused: AtomicU64,
    pub negotiation_timeouts: AtomicU64,
    pub window_held: AtomicU64,
    pub outside_window: AtomicU64,
    pub immediate_rejected: AtomicU64,
    pub buffer_waits: AtomicU64,
    pub oversized_pdus: AtomicU64,
    pub refused_before_data: AtomicU64,
    pub write_stalls: AtomicU64,
    pub log_suppressed: AtomicU64,
}

/// A snapshot of [`LimitCounters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimitHits {
    /// TCP connections closed at accept (portal or address limit).
    pub connections_refused: u64,
    /// Logins refused because the target had `max_sessions_per_target`.
    pub sessions_refused: u64,
    /// Connections closed for a login, text negotiation or PDU that took
    /// longer than `negotiation_timeout`.
    pub negotiation_timeouts: u64,
    /// Times a connection's command window was held (MaxCmdSN not
    /// advanced) because its buffered data reached `max_buffered_bytes`.
    pub window_held: u64,
    /// Commands ignored because their CmdSN was beyond MaxCmdSN.
    pub outside_window: u64,
    /// Immediate commands rejected (too many outstanding).
    pub immediate_rejected: u64,
    /// R2Ts or reads that waited for buffer space.
    pub buffer_waits: u64,
    /// PDUs whose data segment was longer than our MaxRecvDataSegmentLength.
    pub oversized_pdus: u64,
    /// Commands answered with CHECK CONDITION before any of their data-out
    /// was asked for (transfer too long, LBA out of range...).
    pub refused_before_data: u64,
    /// Connections closed because the peer stopped reading our answers.
    pub write_stalls: u64,
    /// Warnings about peer input dropped by the log rate limit.
    pub log_suppressed: u64,
}

impl LimitHits {
    /// Each count with its name (as `lunarctl status` and the metrics show it).
    pub fn named(&self) -> [(&'static str, u64); 11] {
        [
            ("connections_refused", self.connections_refused),
            ("sessions_refused", self.sessions_refused),
            ("negotiation_timeouts", self.negotiation_timeouts),
            ("window_held", self.window_held),
            ("outside_window", self.outside_window),
            ("immediate_rejected", self.immediate_rejected),
            ("buffer_waits", self.buffer_waits),
            ("oversized_pdus", self.oversized_pdus),
            ("refused_before_data", self.refused_before_data),
            ("write_stalls", self.write_stalls),
            ("log_suppressed", self.log_suppressed),
        ]
    }
}

impl LimitCounters {
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> LimitHits {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LimitHits {
            connections_refused: r(&self.connections_refused),
            sessions_refused: r(&self.sessions_refused),
            negotiation_timeouts: r(&self.negotiation_timeouts),
            window_held: r(&self.window_held),
            outside_window: r(&self.outside_window),
            immediate_rejected: r(&self.immediate_rejected),
            buffer_waits: r(&self.buffer_waits),
            oversized_pdus: r(&self.oversized_pdus),
            refused_before_data: r(&self.refused_before_data),
            write_stalls: r(&self.write_stalls),
            log_suppressed: r(&self.log_suppressed),
        }
    }
}

/// Open connections per portal and per initiator address. Touched at
/// accept and at close only (never per command), so a mutex is fine.
#[derive(Debug, Default)]
pub(crate) struct ConnectionCounts {
    inner: Mutex<Counts>,
}

#[derive(Debug, Default)]
struct Counts {
    per_portal: HashMap<usize, usize>,
    per_address: HashMap<IpAddr, usize>,
}

impl ConnectionCounts {
    /// Counts a new connection, unless it would break a limit.
    pub(crate) fn admit(&self, limits: &ResourceLimits, portal: usize, addr: IpAddr) -> bool {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let on_portal = c.per_portal.get(&portal).copied().unwrap_or(0);
        let from_addr = c.per_address.get(&addr).copied().unwrap_or(0);
        if on_portal >= limits.max_connections_per_portal || from_addr >= limits.max_connections_per_address {
            return false;
        }
        *c.per_portal.entry(portal).or_default() += 1;
        *c.per_address.entry(addr).or_default() += 1;
        true
    }

    /// Uncounts a connection that [`ConnectionCounts::admit`] counted.
    pub(crate) fn release(&self, portal: usize, addr: IpAddr) {
        let mut c = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let dec = |m: &mut usize| {
            *m = m.saturating_sub(1);
            *m == 0
        };
        if c.per_portal.get_mut(&portal).is_some_and(dec) {
            c.per_portal.remove(&portal);
        }
        if c.per_address.get_mut(&addr).is_some_and(dec) {
            c.per_address.remove(&addr);
        }
    }
}

/// The buffer space of one connection (solicited data-out and data-in):
/// owned by the connection's loop, so plain integers.
#[derive(Debug)]
pub(crate) struct Budget {
    pub limit: u64,
    pub held: u64,
}

impl Budget {
    /// Takes `n` bytes for a task that already holds `own`: granted within
    /// the limit, or when nothing but that task holds any (so that one
    /// command larger than the limit still makes progress), or when the
    /// caller says that no holder could ever give any back (`overdraw`:
    /// every holder waits for room itself; the first of them goes on).
    pub(crate) fn take(&mut self, own: u64, n: u64, overdraw: bool) -> bool {
        if self.held.saturating_add(n) <= self.limit || self.held == own || overdraw {
            self.held = self.held.saturating_add(n);
            true
        } else {
            false
        }
    }

    /// Takes `n` bytes whatever the limit (data that arrived unasked).
    pub(crate) fn force(&mut self, n: u64) {
        self.held = self.held.saturating_add(n);
    }

    pub(crate) fn give(&mut self, n: u64) {
        self.held = self.held.saturating_sub(n);
    }

    pub(crate) fn full(&self) -> bool {
        self.held >= self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_grants_within_the_limit_or_to_a_lone_holder() {
        let mut b = Budget { limit: 100, held: 0 };
        assert!(b.take(0, 60, false));
        assert!(!b.take(0, 60, false), "another task past the limit waits");
        assert!(b.take(0, 60, true), "unless every holder waits");
        b.give(60);
        assert!(b.take(60, 60, false), "the only holder goes on past the limit");
        assert!(b.full());
        b.give(120);
        assert!(b.take(0, 500, false), "one command bigger than the limit, alone");
        b.give(500);
        assert_eq!(b.held, 0);
    }

    #[test]
    fn connection_counts_per_portal_and_per_address() {
        let limits =
            ResourceLimits { max_connections_per_portal: 3, max_connections_per_address: 2, ..Default::default() };
        let c = ConnectionCounts::default();
        let (a, b): (IpAddr, IpAddr) = ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        assert!(c.admit(&limits, 0, a));
        assert!(c.admit(&limits, 0, a));
        assert!(!c.admit(&limits, 0, a), "third from one address");
        assert!(c.admit(&limits, 0, b));
        assert!(!c.admit(&limits, 0, b), "fourth on one portal");
        assert!(c.admit(&limits, 1, b), "another portal has its own count");
        c.release(0, a);
        assert!(c.admit(&limits, 0, a), "a closed connection frees its slot");
    }

    #[test]
    fn first_burst_fits_the_unsolicited_limit() {
        let l = ResourceLimits { cmd_window: 120, max_unsolicited_bytes: 128 * 65536, ..Default::default() };
        assert_eq!(l.first_burst_cap(1 << 20), 65536);
        assert_eq!(l.first_burst_cap(4096), 4096, "never above the configured bound");
        let tiny = ResourceLimits { max_unsolicited_bytes: 0, ..Default::default() };
        assert_eq!(tiny.first_burst_cap(65536), 512, "RFC 7143's minimum");
    }
}

//! The command window and the sequence numbers (RFC 7143 §4.2.2): PDUs
//! run in CmdSN order (those received ahead wait, those outside the window
//! are ignored), MaxCmdSN opens as commands complete and stays put while
//! the connection's buffers are full, and every answer carries StatSN,
//! ExpCmdSN and MaxCmdSN.

use std::collections::BTreeMap;

use super::{Conn, Flow};
use crate::pdu::{Pdu, RejectReason, RESERVED_TAG};
use crate::server::limits::{LimitCounters, IMMEDIATE_EXTRA};
use crate::server::{ResourceLimits, ServerState};

/// The number of commands a session may have outstanding (`cmd-window`).
pub(super) fn size(shared: &ServerState) -> u32 {
    shared.resources.cmd_window.clamp(1, ResourceLimits::MAX_CMD_WINDOW)
}

/// Serial number arithmetic (RFC 1982) on 32-bit sequence numbers.
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// The command window (RFC 7143 §4.2.2.1): the CmdSN expected next, the
/// MaxCmdSN granted, and the PDUs received ahead of their turn.
#[derive(Default)]
pub(super) struct CmdWindow {
    /// CmdSN of the next PDU to run in order.
    exp_cmd_sn: u32,
    /// MaxCmdSN granted so far (never decreases, RFC 7143 §4.2.2.1).
    max_cmd_sn: u32,
    /// PDUs received ahead of ExpCmdSN, by CmdSN.
    ahead: BTreeMap<u32, Pdu>,
    /// The window is held for lack of buffer space (counted once per stall).
    held: bool,
}

/// Where a non-immediate PDU falls in the window.
enum Placed {
    /// It is the next in order: run it (ExpCmdSN has moved past it).
    Run(Pdu),
    /// Ahead of its turn, within the window: kept until its turn.
    Ahead,
    /// Outside the window, to be ignored; `beyond` if past MaxCmdSN.
    Outside { beyond: bool },
}

impl CmdWindow {
    /// The window of a session that logged in with `exp_cmd_sn`: `size`
    /// PDUs may be sent.
    pub(super) fn opened(exp_cmd_sn: u32, size: u32) -> CmdWindow {
        CmdWindow { exp_cmd_sn, max_cmd_sn: exp_cmd_sn.wrapping_add(size).wrapping_sub(1), ..CmdWindow::default() }
    }

    /// MaxCmdSN to announce with `size` PDUs allowed, `outstanding` of them
    /// still running: the window opens as commands complete, and stays as
    /// it is while `stalled`. The bool is whether this call began a stall.
    fn max_cmd_sn(&mut self, size: u32, outstanding: usize, stalled: bool) -> (u32, bool) {
        let began = stalled && !self.held;
        self.held = stalled;
        if !stalled {
            let outstanding = u32::try_from(outstanding).unwrap_or(u32::MAX);
            let open = size.saturating_sub(outstanding);
            let candidate = self.exp_cmd_sn.wrapping_add(open).wrapping_sub(1);
            if sn_lt(self.max_cmd_sn, candidate) {
                self.max_cmd_sn = candidate;
            }
        }
        (self.max_cmd_sn, began)
    }

    /// Where a non-immediate PDU with `cmd_sn` falls; a PDU to run now
    /// moves ExpCmdSN past it, one ahead is kept.
    fn place(&mut self, cmd_sn: u32, pdu: Pdu) -> Placed {
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            Placed::Run(pdu)
        } else if sn_lt(self.exp_cmd_sn, cmd_sn) && !sn_lt(self.max_cmd_sn, cmd_sn) {
            self.ahead.insert(cmd_sn, pdu);
            Placed::Ahead
        } else {
            Placed::Outside { beyond: sn_lt(self.max_cmd_sn, cmd_sn) }
        }
    }

    /// The PDU kept ahead whose turn has come, if any.
    fn next_in_order(&mut self) -> Option<Pdu> {
        let pdu = self.ahead.remove(&self.exp_cmd_sn)?;
        self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
        Some(pdu)
    }
}

impl Conn {
    /// The number of commands the session may have outstanding.
    pub(super) fn cmd_window(&self) -> u32 {
        size(&self.shared)
    }

    /// MaxCmdSN to announce: the window stays as it is while the
    /// connection's buffers are full or tasks wait for room (the initiator
    /// then cannot send new commands).
    fn max_cmd_sn(&mut self) -> u32 {
        let stalled = self.buffers.stalled();
        let (max, began) = self.window.max_cmd_sn(self.cmd_window(), self.tasks.len(), stalled);
        if began {
            LimitCounters::bump(&self.shared.hits.window_held);
        }
        max
    }

    /// Fills the sequence numbers of an outgoing PDU, advancing StatSN for
    /// PDUs that carry a status (RFC 7143 §4.2.2.2).
    pub(super) fn number(&mut self, pdu: &mut Pdu) {
        let exp = self.window.exp_cmd_sn;
        let max = self.max_cmd_sn();
        let stat = self.stat_sn;
        let mut advance = true;
        match pdu {
            Pdu::ScsiResponse(p) => (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (stat, exp, max),
            Pdu::DataIn(p) => {
                (p.exp_cmd_sn, p.max_cmd_sn) = (exp, max);
                if p.status.is_some() {
                    p.stat_sn = stat;
                } else {
                    advance = false;
                }
            }
            Pdu::R2t(p) => {
                (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (stat, exp, max);
                advance = false;
            }
            Pdu::NopIn(p) => {
                (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (stat, exp, max);
                advance = p.itt != RESERVED_TAG;
            }
            Pdu::TaskMgmtResponse(p) => (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (stat, exp, max),
            Pdu::TextResponse(p) => (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (stat, exp, max),
            Pdu::LogoutResponse(p) => (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (stat, exp, max),
            Pdu::Reject(p) => {
                (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (stat, exp, max);
                advance = false;
            }
            Pdu::AsyncMessage(p) => (p.stat_sn, p.exp_cmd_sn, p.max_cmd_sn) = (stat, exp, max),
            _ => advance = false,
        }
        if advance {
            self.stat_sn = self.stat_sn.wrapping_add(1);
        }
    }

    /// CmdSN ordering (RFC 7143 §4.2.2.1): immediate PDUs run now; others
    /// run in CmdSN order; outside the window they are ignored.
    pub(super) async fn sequenced(&mut self, pdu: Pdu) -> Flow {
        let (immediate, cmd_sn) = match &pdu {
            Pdu::ScsiCommand(p) => (p.immediate, p.cmd_sn),
            Pdu::TaskMgmtRequest(p) => (p.immediate, p.cmd_sn),
            Pdu::TextRequest(p) => (p.immediate, p.cmd_sn),
            Pdu::LogoutRequest(p) => (p.immediate, p.cmd_sn),
            Pdu::NopOut(p) => (p.immediate, p.cmd_sn),
            _ => (true, 0),
        };
        if immediate {
            let window = self.cmd_window().saturating_add(IMMEDIATE_EXTRA) as usize;
            if matches!(pdu, Pdu::ScsiCommand(_)) && self.tasks.len() >= window {
                // RFC 7143 §11.17.1: too many immediate commands.
                LimitCounters::bump(&self.shared.hits.immediate_rejected);
                self.warn(format_args!("immediate command beyond {window} outstanding: rejected"));
                return self.reject_pdu(&pdu, RejectReason::ImmediateCommandReject);
            }
            return self.execute(pdu).await;
        }
        match self.window.place(cmd_sn, pdu) {
            Placed::Run(pdu) => {
                if self.execute(pdu).await == Flow::Close {
                    return Flow::Close;
                }
                while let Some(next) = self.window.next_in_order() {
                    if self.execute(next).await == Flow::Close {
                        return Flow::Close;
                    }
                }
            }
            Placed::Ahead => {}
            Placed::Outside { beyond } => {
                // §4.2.2.1: outside the window, the PDU is silently ignored.
                if beyond {
                    LimitCounters::bump(&self.shared.hits.outside_window);
                }
                let (exp, max) = (self.window.exp_cmd_sn, self.window.max_cmd_sn);
                self.warn(format_args!("CmdSN {cmd_sn} outside the window [{exp}, {max}]: ignored"));
            }
        }
        Flow::Continue
    }

    /// Runs a request whose turn has come.
    async fn execute(&mut self, pdu: Pdu) -> Flow {
        match pdu {
            Pdu::ScsiCommand(c) => self.on_command(c).await,
            Pdu::TaskMgmtRequest(t) => self.on_tmf(t),
            Pdu::TextRequest(t) => self.on_text(t),
            Pdu::LogoutRequest(l) => self.on_logout(l),
            Pdu::NopOut(n) => self.on_nop(n),
            _ => Flow::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pdu::NopOut;

    fn nop(cmd_sn: u32) -> Pdu {
        Pdu::NopOut(NopOut {
            immediate: false,
            lun: 0,
            itt: cmd_sn,
            ttt: RESERVED_TAG,
            cmd_sn,
            exp_stat_sn: 0,
            data: Vec::new(),
        })
    }

    #[test]
    fn pdus_run_in_cmd_sn_order_within_the_window() {
        let mut w = CmdWindow::opened(u32::MAX - 1, 4);
        assert_eq!(w.max_cmd_sn, 1, "the window wraps");
        assert!(matches!(w.place(0, nop(0)), Placed::Ahead));
        assert!(matches!(w.place(2, nop(2)), Placed::Outside { beyond: true }));
        assert!(matches!(w.place(u32::MAX - 2, nop(1)), Placed::Outside { beyond: false }));
        assert!(matches!(w.place(u32::MAX - 1, nop(2)), Placed::Run(_)));
        assert!(w.next_in_order().is_none(), "u32::MAX has not come");
        assert!(matches!(w.place(u32::MAX, nop(3)), Placed::Run(_)));
        assert!(matches!(w.next_in_order(), Some(Pdu::NopOut(n)) if n.cmd_sn == 0));
        assert_eq!(w.exp_cmd_sn, 1);
    }

    #[test]
    fn max_cmd_sn_opens_as_commands_complete_and_holds_while_stalled() {
        let mut w = CmdWindow::opened(10, 4);
        assert_eq!(w.max_cmd_sn(4, 0, false), (13, false));
        assert!(matches!(w.place(10, nop(10)), Placed::Run(_)));
        assert_eq!(w.max_cmd_sn(4, 1, false), (13, false), "one running");
        assert_eq!(w.max_cmd_sn(4, 0, true), (13, true), "a stall begins");
        assert_eq!(w.max_cmd_sn(4, 0, true), (13, false), "counted once");
        assert_eq!(w.max_cmd_sn(4, 0, false), (14, false));
        assert_eq!(w.max_cmd_sn(1, 0, false), (14, false), "never decreases");
    }
}

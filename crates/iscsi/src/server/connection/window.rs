//! The command window and the sequence numbers (RFC 7143 §4.2.2): PDUs
//! run in CmdSN order (those received ahead wait, those outside the window
//! are ignored), MaxCmdSN opens as commands complete and stays put while
//! the connection's buffers are full, and every answer carries StatSN,
//! ExpCmdSN and MaxCmdSN.

use super::{Conn, Flow};
use crate::pdu::{Pdu, RejectReason, RESERVED_TAG};
use crate::server::limits::{LimitCounters, IMMEDIATE_EXTRA};

/// Serial number arithmetic (RFC 1982) on 32-bit sequence numbers.
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

impl Conn {
    pub(super) fn cmd_window(&self) -> u32 {
        self.shared.resources.cmd_window.clamp(1, crate::server::ResourceLimits::MAX_CMD_WINDOW)
    }

    /// MaxCmdSN to announce: the window opens by the commands that are
    /// done, and stays as it is while the connection's buffers are full or
    /// tasks wait for room (the initiator then cannot send new commands).
    fn max_cmd_sn(&mut self) -> u32 {
        let stalled = self.budget.full() || !self.deferred.is_empty();
        if stalled != self.window_held {
            self.window_held = stalled;
            if stalled {
                LimitCounters::bump(&self.shared.hits.window_held);
            }
        }
        if !stalled {
            let outstanding = u32::try_from(self.tasks.len()).unwrap_or(u32::MAX);
            let open = self.cmd_window().saturating_sub(outstanding);
            let candidate = self.exp_cmd_sn.wrapping_add(open).wrapping_sub(1);
            if sn_lt(self.max_cmd_sn, candidate) {
                self.max_cmd_sn = candidate;
            }
        }
        self.max_cmd_sn
    }

    /// Fills the sequence numbers of an outgoing PDU, advancing StatSN for
    /// PDUs that carry a status (RFC 7143 §4.2.2.2).
    pub(super) fn number(&mut self, pdu: &mut Pdu) {
        let exp = self.exp_cmd_sn;
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
        if cmd_sn == self.exp_cmd_sn {
            self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
            if self.execute(pdu).await == Flow::Close {
                return Flow::Close;
            }
            while let Some(next) = self.ahead.remove(&self.exp_cmd_sn) {
                self.exp_cmd_sn = self.exp_cmd_sn.wrapping_add(1);
                if self.execute(next).await == Flow::Close {
                    return Flow::Close;
                }
            }
            return Flow::Continue;
        }
        if sn_lt(self.exp_cmd_sn, cmd_sn) && !sn_lt(self.max_cmd_sn, cmd_sn) {
            self.ahead.insert(cmd_sn, pdu);
        } else {
            // §4.2.2.1: outside the window, the PDU is silently ignored.
            if sn_lt(self.max_cmd_sn, cmd_sn) {
                LimitCounters::bump(&self.shared.hits.outside_window);
            }
            let (exp, max) = (self.exp_cmd_sn, self.max_cmd_sn);
            self.warn(format_args!("CmdSN {cmd_sn} outside the window [{exp}, {max}]: ignored"));
        }
        Flow::Continue
    }

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

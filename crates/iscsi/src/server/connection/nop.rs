//! NOP-Out and NOP-In (RFC 7143 §11.18, §11.19): the initiator's pings
//! are answered; an initiator silent for [`PING_IDLE`] is pinged, and one
//! that does not answer within [`PING_TIMEOUT`] is disconnected.

use std::time::{Duration, Instant};

use super::{Conn, Flow, Phase};
use crate::pdu::{NopIn, NopOut, Pdu, RESERVED_TAG};
use crate::server::task::next_tag;

/// Idle time before we ping the initiator (NOP-In).
const PING_IDLE: Duration = Duration::from_secs(30);
/// Time the initiator has to answer our ping.
const PING_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the initiator is still there: when a PDU last came from it,
/// and our ping waiting for its answer (TTT, when sent).
pub(super) struct Liveness {
    last_rx: Instant,
    ping: Option<(u32, Instant)>,
}

impl Liveness {
    pub(super) fn new() -> Liveness {
        Liveness { last_rx: Instant::now(), ping: None }
    }

    /// A PDU came from the initiator.
    pub(super) fn heard(&mut self) {
        self.last_rx = Instant::now();
    }
}

impl Conn {
    /// A NOP-Out with ITT 0xffffffff: the answer to our ping, if its TTT
    /// is our ping's (§11.18.1); never answered itself.
    pub(super) fn on_ping_answer(&mut self, n: &NopOut) -> Flow {
        if self.liveness.ping.is_some_and(|(ttt, _)| ttt == n.ttt) {
            self.liveness.ping = None;
        }
        Flow::Continue
    }

    /// Answers the initiator's ping, echoing its data (cut to what the
    /// initiator accepts).
    pub(super) fn on_nop(&mut self, n: NopOut) -> Flow {
        let max = self.params.initiator_max_recv_data_segment_length as usize;
        let mut data = n.data;
        data.truncate(max);
        self.send(Pdu::NopIn(NopIn {
            lun: n.lun,
            itt: n.itt,
            ttt: RESERVED_TAG,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            data,
        }))
    }

    /// Every tick: drops an initiator that left our ping unanswered too
    /// long, or pings one silent for too long.
    pub(super) fn on_tick(&mut self) -> Flow {
        if let Some((_, sent)) = self.liveness.ping {
            if sent.elapsed() > PING_TIMEOUT {
                self.warn(format_args!("no answer to NOP-In ping: dropping the connection"));
                return Flow::Close;
            }
            return Flow::Continue;
        }
        if matches!(self.phase, Phase::Login(_)) {
            // The login's deadline is in the run loop.
            return Flow::Continue;
        }
        if self.liveness.last_rx.elapsed() > PING_IDLE {
            let ttt = next_tag(&mut self.next_ttt);
            self.liveness.ping = Some((ttt, Instant::now()));
            return self.send(Pdu::NopIn(NopIn {
                lun: 0,
                itt: RESERVED_TAG,
                ttt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                data: Vec::new(),
            }));
        }
        Flow::Continue
    }
}

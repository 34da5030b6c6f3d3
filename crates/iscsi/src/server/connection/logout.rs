//! Logout (RFC 7143 §11.14, §11.15), and the target's own request to log
//! out when the server shuts down (Async Message, §11.9.1).

use std::time::{Duration, Instant};

use super::{Conn, Flow, Phase};
use crate::pdu::{LogoutReason, LogoutRequest, LogoutResponse, LogoutResponseCode, Pdu};

/// Time a session has to log out once the target asks it to (Async
/// Message "logout requested", at shutdown), before it is closed.
pub const LOGOUT_GRACE: Duration = Duration::from_secs(3);

impl Conn {
    /// The server shuts down: a logged-in session is asked to log out
    /// (Async Message, RFC 7143 §11.9.1, event 1) and given
    /// [`LOGOUT_GRACE`] to do so, so that initiators log out and come back
    /// when the target does, instead of waiting for a timeout; anything
    /// else ends now.
    pub(super) fn on_shutdown(&mut self) -> Flow {
        if !matches!(self.phase, Phase::Normal) {
            return Flow::Close;
        }
        self.logout_by = Some(Instant::now() + LOGOUT_GRACE);
        self.queue_out(Pdu::AsyncMessage(crate::pdu::AsyncMessage {
            lun: 0,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            event: crate::pdu::AsyncEvent::RequestLogout,
            vcode: 0,
            parameter1: 0,
            parameter2: 0,
            parameter3: LOGOUT_GRACE.as_secs() as u16,
            sense: Vec::new(),
            event_data: Vec::new(),
        }));
        Flow::Continue
    }

    /// Closing the session or the connection (the same at ERL 0 with one
    /// connection) is answered, then the connection closes; removing a
    /// connection for recovery is not supported (§11.15.1).
    pub(super) fn on_logout(&mut self, l: LogoutRequest) -> Flow {
        let response = match l.reason {
            LogoutReason::CloseSession | LogoutReason::CloseConnection => LogoutResponseCode::Closed,
            _ => LogoutResponseCode::RecoveryNotSupported,
        };
        let close = response == LogoutResponseCode::Closed;
        if close {
            if let Some(s) = &self.session {
                self.shared.logged_out(&s.initiator, s.isid, &s.entry.config.name, s.tsih);
            }
        }
        let flow = self.send(Pdu::LogoutResponse(LogoutResponse {
            response,
            itt: l.itt,
            stat_sn: 0,
            exp_cmd_sn: 0,
            max_cmd_sn: 0,
            time2wait: 0,
            time2retain: 0,
        }));
        if close {
            Flow::Close
        } else {
            flow
        }
    }
}

//! Text Requests in the full feature phase (RFC 7143 §11.10): SendTargets
//! and the keys that may be negotiated after login, through
//! [`crate::text::TextExchange`]; an exchange left unfinished has the
//! negotiation deadline.

use std::time::Instant;

use super::{Conn, Flow};
use crate::pdu::{Pdu, TextRequest};
use crate::text::full_feature_answers;

impl Conn {
    /// A Text Request: answered (a long answer in several responses), or
    /// rejected and the exchange reset.
    pub(super) fn on_text(&mut self, t: TextRequest) -> Flow {
        let entries = self.shared.send_targets_entries(self.local);
        let session_type = self.session_type();
        let target = self.session.as_ref().map(|s| s.entry.config.name.clone());
        let max = self.params.initiator_max_recv_data_segment_length;
        let reply =
            self.text.handle(&t, max, |pairs| full_feature_answers(pairs, session_type, target.as_deref(), &entries));
        match reply {
            Ok(r) => {
                let resp = r.into_response(&t, 0, 0, 0);
                self.text_since = if self.text.in_progress() { self.text_since.or(Some(Instant::now())) } else { None };
                self.send(Pdu::TextResponse(resp))
            }
            Err(e) => {
                self.text.reset();
                self.text_since = None;
                self.warn(format_args!("text: {e}"));
                self.reject_pdu(&Pdu::TextRequest(t), e.reject_reason())
            }
        }
    }
}

//! The login phase and the session it opens (RFC 7143 §6, §11.12): each
//! Login Request goes to the login state machine ([`crate::login`]); the
//! final one registers the session (reinstating an older one with the same
//! key), opens one core queue per LUN with the session's I_T nexus, and
//! turns on the negotiated digests. The session's end is an I_T nexus
//! loss on each of its queues.

use std::collections::HashMap;
use std::sync::Arc;

use lunar_core::Queue;

use super::{CmdWindow, Conn, Flow, Phase, Session};
use crate::login::{LoginOutcome, LoginStep};
use crate::params::SessionType;
use crate::pdu::{LoginResponse, Pdu};

impl Conn {
    /// The connection ended: task management still waiting is abandoned,
    /// and the session ends (an I_T nexus loss on each of its queues, then
    /// unregistered, and a login reinstating it told so).
    pub(super) async fn cleanup(&mut self) {
        self.abandon_tmfs();
        if let Some(s) = self.session.take() {
            for (lun, q) in s.queues {
                // I_T nexus loss. Its unit attention outlives the session
                // only while another queue of the same nexus is open on the
                // LU (the core keeps unit attentions per open nexus).
                q.nexus_lost(true);
                if let Err(e) = s.entry.core.close_queue(q).await {
                    tracing::debug!(lun, "close queue: {e}");
                }
            }
            self.shared.unregister_session(&s.initiator, s.isid, &s.entry.config.name, s.tsih);
            let _ = s.closed_tx.send(true);
            tracing::info!(peer = %self.peer, initiator = %s.initiator, target = %s.entry.config.name, "session closed");
        }
    }

    /// Answers a Login Request as the login state machine decided; the
    /// final response opens the session (or refuses it) first.
    pub(super) async fn on_login_step(&mut self, step: LoginStep) -> Flow {
        match step {
            LoginStep::Continue(resp) => self.send_login(Pdu::LoginResponse(resp)),
            LoginStep::Fail(resp, failure) => {
                self.warn(format_args!("login failed ({:#06x}): {}", failure.status.code(), failure.reason));
                if let Phase::Login(login) = &self.phase {
                    self.shared.login_failed(crate::server::LoginFailureInfo::new(login, &failure, self.peer));
                }
                let _ = self.send_login(Pdu::LoginResponse(resp));
                Flow::Close
            }
            LoginStep::Complete(mut resp, outcome) => {
                self.params = outcome.params.clone();
                self.window = CmdWindow::opened(outcome.exp_cmd_sn, self.cmd_window());
                self.stat_sn = outcome.next_stat_sn;
                match outcome.session_type {
                    SessionType::Discovery => {
                        self.phase = Phase::Discovery;
                        tracing::info!(peer = %self.peer, initiator = %outcome.initiator_name, "discovery session");
                    }
                    SessionType::Normal => {
                        if let Err(flow) = self.open_session(&mut resp, &outcome).await {
                            return flow;
                        }
                    }
                }
                // Digests apply from the first PDU after the final Login Response.
                let digests = (self.params.header_digest.enabled(), self.params.data_digest.enabled());
                let flow = self.send_login(Pdu::LoginResponse(resp));
                self.digests = digests;
                flow
            }
        }
    }

    /// Opens the normal session a login completed: registers it (after the
    /// end of an older one with the same key), checks that the target and
    /// the ACL still let it in, and opens a queue per LUN with the
    /// session's I_T nexus. `Err` holds the flow of a refused login.
    async fn open_session(&mut self, resp: &mut LoginResponse, outcome: &LoginOutcome) -> Result<(), Flow> {
        let name = outcome.target_name.clone().unwrap_or_default();
        let Some(entry) = self.shared.targets.load().get(&name).cloned() else {
            return Err(Flow::Close);
        };
        let Some((kill, closed_tx)) =
            self.shared.register_session(&outcome.initiator_name, outcome.isid, &name, outcome.tsih).await
        else {
            return Err(self.refuse_login(resp, outcome, &name));
        };
        // The target removed, or the initiator taken off its ACL, while
        // this login went on.
        if !self.shared.still_allowed(&entry, &outcome.initiator_name) {
            self.shared.unregister_session(&outcome.initiator_name, outcome.isid, &name, outcome.tsih);
            let _ = closed_tx.send(true);
            return Err(self.refuse_changed(resp, outcome, &name));
        }
        let nexus = lunar_scsi::Nexus::new(
            format!("{},i,0x{}", outcome.initiator_name, outcome.isid),
            self.shared.portal_group_tag,
        );
        let mut queues = HashMap::new();
        for lun in entry.core.luns() {
            match entry.core.open_queue_for(lun, self.thread, Some(nexus.clone())).await {
                Ok(q) => {
                    queues.insert(lun, q);
                }
                Err(e) => tracing::warn!(lun, "cannot open queue: {e}"),
            }
        }
        tracing::info!(peer = %self.peer, initiator = %outcome.initiator_name, target = %name,
            tsih = outcome.tsih, thread = self.thread, luns = queues.len(), "session logged in");
        self.session = Some(Session {
            entry,
            nexus,
            queues,
            initiator: outcome.initiator_name.clone(),
            isid: outcome.isid,
            tsih: outcome.tsih,
            closed_tx,
        });
        self.kill = Some(kill);
        self.phase = Phase::Normal;
        Ok(())
    }

    /// A login that negotiated well but finds the target full: "out of
    /// resources" (RFC 7143 §11.13.5, 0x0302) instead of the final response.
    fn refuse_login(&mut self, resp: &mut LoginResponse, outcome: &LoginOutcome, target: &str) -> Flow {
        let max = self.shared.resources.max_sessions_per_target;
        self.warn(format_args!("login to {target} refused: the target has {max} sessions"));
        let detail = format!("the target has {max} sessions (max-sessions-per-target)");
        self.refuse_final(resp, outcome, target, crate::login::LoginStatus::OUT_OF_RESOURCES, "limit", detail)
    }

    /// A login that negotiated well but whose target was removed, or whose
    /// initiator was taken off the ACL, meanwhile.
    fn refuse_changed(&mut self, resp: &mut LoginResponse, outcome: &LoginOutcome, target: &str) -> Flow {
        self.warn(format_args!("login to {target} refused: the target or its ACL changed during the login"));
        let detail = "the target was removed or its ACL changed during the login".to_string();
        self.refuse_final(resp, outcome, target, crate::login::LoginStatus::TARGET_REMOVED, "not-found", detail)
    }

    /// Records the refused login and answers it with `status` in place of
    /// the final Login Response; the connection then closes.
    fn refuse_final(
        &mut self,
        resp: &mut LoginResponse,
        outcome: &LoginOutcome,
        target: &str,
        status: crate::login::LoginStatus,
        reason: &'static str,
        detail: String,
    ) -> Flow {
        self.shared.login_failed(crate::server::LoginFailureInfo {
            peer: self.peer,
            initiator: Some(outcome.initiator_name.clone()),
            target: Some(target.to_owned()),
            chap_user: None,
            status: status.code(),
            reason,
            detail,
        });
        resp.transit = false;
        resp.continue_bit = false;
        resp.tsih = 0;
        resp.status_class = status.class;
        resp.status_detail = status.detail;
        resp.data.clear();
        let _ = self.send_login(Pdu::LoginResponse(resp.clone()));
        Flow::Close
    }

    /// Login Responses are numbered by the login state machine and go
    /// without digests.
    fn send_login(&mut self, pdu: Pdu) -> Flow {
        self.out.push(&pdu, false, false);
        Flow::Continue
    }

    /// The session's type (a discovery session carries no SCSI command).
    pub(super) fn session_type(&self) -> SessionType {
        match self.phase {
            Phase::Discovery => SessionType::Discovery,
            _ => SessionType::Normal,
        }
    }

    /// The session's queue of `lun`, opened now for a LUN added since the
    /// login (or one whose queue was closed); `None` if there is no such LUN.
    pub(super) async fn queue_for(&mut self, lun: u64) -> Option<Arc<Queue>> {
        let session = self.session.as_mut()?;
        if let Some(q) = session.queues.get(&lun) {
            if !q.is_closed() {
                return Some(q.clone());
            }
        }
        // A LUN added (or re-added) since login.
        session.entry.core.device(lun)?;
        let q = session.entry.core.open_queue_for(lun, self.thread, Some(session.nexus.clone())).await.ok()?;
        session.queues.insert(lun, q.clone());
        Some(q)
    }
}

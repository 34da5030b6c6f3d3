//! One iSCSI connection, on the I/O thread it was given: one loop that
//! reads and frames PDUs, owns all the connection's state (login, sequence
//! numbers, tasks, task management) and answers in order. Completions from
//! the core reach it as events through a channel, so it never shares state
//! with another thread. A command whose backend answers at once costs one
//! wake-up of this loop: read, execute inline, answer, write.

mod io;
mod window;

use io::READ_CHUNK;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lunar_core::{Queue, Response, TaskManagement};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::limits::{Budget, LimitCounters};
use super::output::Output;
use super::task::{answer, Task};
use super::{ServerState, TargetEntry};
use crate::login::{LoginConfig, LoginOutcome, LoginSession, LoginStep};
use crate::params::{NegotiatedParams, SessionType};
use crate::pdu::{
    Bhs, DataOut, ErrorReaction, Isid, LogoutReason, LogoutRequest, LogoutResponse, LogoutResponseCode, NopIn, NopOut,
    Pdu, PduError, Reject, RejectReason, ScsiCommand, TaskMgmtFunction, TaskMgmtRequest, TaskMgmtResponse, TextRequest,
    TmfResponseCode, BHS_LEN, RESERVED_TAG,
};
use crate::text::{full_feature_answers, TextExchange};

/// Idle time before we ping the initiator (NOP-In), and time to answer it.
const PING_IDLE: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(30);
/// Time a session has to log out once the target asks it to (Async
/// Message "logout requested", at shutdown), before it is closed.
pub const LOGOUT_GRACE: Duration = Duration::from_secs(3);
enum Event {
    Done { itt: u32, response: Response },
    CoreTmfDone { itt: u32 },
    Tick,
}

#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

struct Session {
    entry: TargetEntry,
    /// The I_T nexus (SPC-5 7.6.4.6: initiator name, ",i,0x", ISID).
    nexus: lunar_scsi::Nexus,
    queues: HashMap<u64, Arc<Queue>>,
    initiator: String,
    isid: Isid,
    tsih: u16,
    closed_tx: watch::Sender<bool>,
}

struct PendingTmf {
    itt: u32,
    function: TaskMgmtFunction,
    lun: u64,
    /// When it arrived (its response says how long it waited).
    since: std::time::Instant,
    waiting: HashSet<u32>,
    core_pending: usize,
    close_after: bool,
}

enum Phase {
    Login(Box<LoginSession<Arc<ServerState>>>),
    Discovery,
    Normal,
}

struct Conn {
    shared: Arc<ServerState>,
    peer: SocketAddr,
    /// Our address on this connection (what a wildcard portal is
    /// advertised as in SendTargets).
    local: Option<SocketAddr>,
    thread: usize,
    wr: OwnedWriteHalf,
    tx: mpsc::UnboundedSender<Event>,
    /// Digests in force for PDUs we receive and send (after login).
    digests: (bool, bool),
    rd: OwnedReadHalf,
    rbuf: Vec<u8>,
    rstart: usize,
    params: NegotiatedParams,
    phase: Phase,
    session: Option<Session>,
    stat_sn: u32,
    exp_cmd_sn: u32,
    tasks: HashMap<u32, Task>,
    /// Commands received ahead of ExpCmdSN, by CmdSN.
    ahead: BTreeMap<u32, Pdu>,
    next_ttt: u32,
    tmfs: Vec<PendingTmf>,
    text: TextExchange,
    last_rx: Instant,
    ping: Option<(u32, Instant)>,
    kill: Option<watch::Receiver<super::End>>,
    /// Answers queued by the handlers, written once per batch.
    out: Output,
    /// MaxCmdSN granted so far (never decreases, RFC 7143 §4.2.2.1).
    max_cmd_sn: u32,
    /// Buffer space for solicited data-out and data-in.
    budget: Budget,
    /// Budget to give back once the answers queued in `out` are written.
    release_after_write: u64,
    /// Tasks waiting for buffer space (to be sent an R2T, or submitted), in
    /// arrival order.
    deferred: VecDeque<u32>,
    /// The window is held for lack of buffer space (counted once per stall).
    window_held: bool,
    /// Deadlines of the login phase, of a text exchange, of a PDU that
    /// started arriving.
    accepted: Instant,
    text_since: Option<Instant>,
    partial_since: Option<Instant>,
    /// Warnings caused by this peer's input.
    log: lunar_aio::LogLimit,
    /// The server's shutdown, and when the session asked to log out then
    /// must have done so.
    shutdown: watch::Receiver<bool>,
    logout_by: Option<Instant>,
}

/// Serves one accepted connection until it ends.
pub(crate) async fn serve(std_stream: std::net::TcpStream, peer: SocketAddr, shared: Arc<ServerState>, thread: usize) {
    let stream = match TcpStream::from_std(std_stream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(%peer, "cannot register connection: {e}");
            return;
        }
    };
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().ok();
    let (rd, wr) = stream.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let ticker = {
        let tx = tx.clone();
        tokio::task::spawn_local(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                if tx.send(Event::Tick).is_err() {
                    return;
                }
            }
        })
    };
    tracing::debug!(%peer, thread, "connection");
    let cmd_window = shared.resources.cmd_window.clamp(1, super::ResourceLimits::MAX_CMD_WINDOW);
    let login = LoginSession::new(
        shared.clone(),
        LoginConfig {
            limits: shared.limits.clone(),
            portal_group_tag: shared.portal_group_tag,
            initial_stat_sn: rand_u32(),
            cmd_window,
        },
    );
    let budget = Budget { limit: shared.resources.max_buffered_bytes, held: 0 };
    let shared_shutdown = shared.shutdown.subscribe();
    let mut conn = Conn {
        shared,
        peer,
        local,
        thread,
        wr,
        tx,
        digests: (false, false),
        rd,
        rbuf: Vec::with_capacity(READ_CHUNK),
        rstart: 0,
        params: NegotiatedParams::default(),
        phase: Phase::Login(Box::new(login)),
        session: None,
        stat_sn: 0,
        exp_cmd_sn: 0,
        tasks: HashMap::new(),
        ahead: BTreeMap::new(),
        next_ttt: 0,
        tmfs: Vec::new(),
        text: TextExchange::new(),
        last_rx: Instant::now(),
        ping: None,
        kill: None,
        out: Output::with_capacity(16 << 10),
        max_cmd_sn: 0,
        budget,
        release_after_write: 0,
        deferred: VecDeque::new(),
        window_held: false,
        accepted: Instant::now(),
        text_since: None,
        partial_since: None,
        log: lunar_aio::LogLimit::default(),
        shutdown: shared_shutdown,
        logout_by: None,
    };
    conn.run(&mut rx).await;
    ticker.abort();
    conn.cleanup().await;
}

fn rand_u32() -> u32 {
    use rand::Rng;
    rand::thread_rng().gen()
}

impl Conn {
    fn on_event(&mut self, ev: Event) -> Flow {
        match ev {
            Event::Done { itt, response } => self.on_done(itt, response),
            Event::CoreTmfDone { itt } => {
                if let Some(t) = self.tmfs.iter_mut().find(|t| t.itt == itt) {
                    t.core_pending = t.core_pending.saturating_sub(1);
                }
                self.finish_tmfs()
            }
            Event::Tick => self.on_tick(),
        }
    }

    async fn cleanup(&mut self) {
        // A TMF still waiting for its commands has no connection to be
        // answered on (ErrorRecoveryLevel 0): the initiator gave up on it.
        for t in std::mem::take(&mut self.tmfs) {
            tracing::info!(
                peer = %self.peer,
                function = super::tmf::function_name(t.function),
                lun = t.lun,
                waited_ms = t.since.elapsed().as_millis() as u64,
                "task management not answered: the connection ended first"
            );
        }
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

    // ----- output --------------------------------------------------------

    /// Lets the tasks waiting for buffer space go on, in order, while
    /// there is room: R2Ts for writes, submission for the others.
    async fn resume_deferred(&mut self) -> Flow {
        while let Some(&itt) = self.deferred.front() {
            // When every holder of buffer space is itself waiting, nothing
            // would ever give any back: the first in line goes on.
            let waiting: u64 = self.deferred.iter().filter_map(|i| self.tasks.get(i)).map(|t| t.reserved).sum();
            let overdraw = waiting == self.budget.held;
            let Some(task) = self.tasks.get_mut(&itt) else {
                self.deferred.pop_front();
                continue;
            };
            if task.submitted {
                self.deferred.pop_front();
                continue;
            }
            if !task.data_complete() || !task.solicited.is_empty() {
                let (r2ts, room) = task.next_r2ts(&self.params, &mut self.next_ttt, &mut self.budget, overdraw);
                let sent = !r2ts.is_empty();
                for r in r2ts {
                    self.queue_out(Pdu::R2t(r));
                }
                if !room && !sent {
                    return Flow::Continue;
                }
                if room {
                    self.deferred.pop_front();
                }
                continue;
            }
            if !task.take_data_in(&mut self.budget, overdraw) {
                return Flow::Continue;
            }
            self.deferred.pop_front();
            if let Some(task) = self.tasks.remove(&itt) {
                if self.submit_now(task).await == Flow::Close {
                    return Flow::Close;
                }
            }
        }
        Flow::Continue
    }

    /// The server shuts down: a logged-in session is asked to log out
    /// (Async Message, RFC 7143 §11.9.1, event 1) and given
    /// [`LOGOUT_GRACE`] to do so, so that initiators log out and come back
    /// when the target does, instead of waiting for a timeout; anything
    /// else ends now.
    fn on_shutdown(&mut self) -> Flow {
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

    /// A warning caused by the peer's input, rate-limited per connection.
    fn warn(&self, what: std::fmt::Arguments<'_>) {
        match self.log.allow() {
            Some(suppressed) => tracing::warn!(peer = %self.peer, suppressed, "{what}"),
            None => LimitCounters::bump(&self.shared.hits.log_suppressed),
        }
    }

    fn reject(&mut self, bhs: &Bhs, reason: RejectReason) -> Flow {
        self.send(Pdu::Reject(Reject::of(bhs, reason)))
    }

    fn reject_pdu(&mut self, pdu: &Pdu, reason: RejectReason) -> Flow {
        let raw = pdu.encode(false, false);
        match raw.first_chunk::<BHS_LEN>().and_then(|h| crate::pdu::decode_bhs(h).ok()) {
            Some(bhs) => self.reject(&bhs, reason),
            None => Flow::Close,
        }
    }

    // ----- input ---------------------------------------------------------

    fn on_bad(&mut self, e: PduError, bhs: Option<Box<Bhs>>) -> Flow {
        self.warn(format_args!("bad PDU: {e}"));
        match (e.reaction(), bhs, &self.phase) {
            (_, _, Phase::Login(_)) => Flow::Close,
            (ErrorReaction::Reject(reason), Some(bhs), _) => self.reject(&bhs, reason),
            _ => Flow::Close,
        }
    }

    async fn on_pdu(&mut self, pdu: Pdu) -> Flow {
        if let Phase::Login(login) = &mut self.phase {
            let step = login.handle_pdu(&pdu);
            return self.on_login_step(step).await;
        }
        match pdu {
            Pdu::DataOut(d) => self.on_data_out(d).await,
            Pdu::NopOut(n) if n.itt == RESERVED_TAG => {
                // An answer to our ping.
                if self.ping.is_some_and(|(ttt, _)| ttt == n.ttt) {
                    self.ping = None;
                }
                Flow::Continue
            }
            Pdu::ScsiCommand(_)
            | Pdu::TaskMgmtRequest(_)
            | Pdu::TextRequest(_)
            | Pdu::LogoutRequest(_)
            | Pdu::NopOut(_) => self.sequenced(pdu).await,
            Pdu::LoginRequest(_) => {
                self.warn(format_args!("Login Request in full feature phase"));
                let _ = self.reject_pdu(&pdu, RejectReason::ProtocolError);
                Flow::Close
            }
            other => {
                let reason = other.reject_at_target_erl0().unwrap_or(RejectReason::CommandNotSupported);
                self.reject_pdu(&other, reason)
            }
        }
    }

    async fn on_login_step(&mut self, step: LoginStep) -> Flow {
        match step {
            LoginStep::Continue(resp) => self.send_login(Pdu::LoginResponse(resp)),
            LoginStep::Fail(resp, failure) => {
                self.warn(format_args!("login failed ({:#06x}): {}", failure.status.code(), failure.reason));
                if let Phase::Login(login) = &self.phase {
                    self.shared.login_failed(super::LoginFailureInfo::new(login, &failure, self.peer));
                }
                let _ = self.send_login(Pdu::LoginResponse(resp));
                Flow::Close
            }
            LoginStep::Complete(mut resp, outcome) => {
                self.params = outcome.params.clone();
                self.exp_cmd_sn = outcome.exp_cmd_sn;
                self.max_cmd_sn = outcome.exp_cmd_sn.wrapping_add(self.cmd_window()).wrapping_sub(1);
                self.stat_sn = outcome.next_stat_sn;
                match outcome.session_type {
                    SessionType::Discovery => {
                        self.phase = Phase::Discovery;
                        tracing::info!(peer = %self.peer, initiator = %outcome.initiator_name, "discovery session");
                    }
                    SessionType::Normal => {
                        let name = outcome.target_name.clone().unwrap_or_default();
                        let Some(entry) = self.shared.targets.load().get(&name).cloned() else {
                            return Flow::Close;
                        };
                        let Some((kill, closed_tx)) = self
                            .shared
                            .register_session(&outcome.initiator_name, outcome.isid, &name, outcome.tsih)
                            .await
                        else {
                            return self.refuse_login(&mut resp, &outcome, &name);
                        };
                        // The target removed, or the initiator taken off its
                        // ACL, while this login went on.
                        if !self.shared.still_allowed(&entry, &outcome.initiator_name) {
                            self.shared.unregister_session(&outcome.initiator_name, outcome.isid, &name, outcome.tsih);
                            let _ = closed_tx.send(true);
                            return self.refuse_changed(&mut resp, &outcome, &name);
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

    /// A login that negotiated well but finds the target full: "out of
    /// resources" (RFC 7143 §11.13.5, 0x0302) instead of the final response.
    fn refuse_login(&mut self, resp: &mut crate::pdu::LoginResponse, outcome: &LoginOutcome, target: &str) -> Flow {
        let max = self.shared.resources.max_sessions_per_target;
        self.warn(format_args!("login to {target} refused: the target has {max} sessions"));
        let detail = format!("the target has {max} sessions (max-sessions-per-target)");
        self.refuse_final(resp, outcome, target, crate::login::LoginStatus::OUT_OF_RESOURCES, "limit", detail)
    }

    /// A login that negotiated well but whose target was removed, or whose
    /// initiator was taken off the ACL, meanwhile.
    fn refuse_changed(&mut self, resp: &mut crate::pdu::LoginResponse, outcome: &LoginOutcome, target: &str) -> Flow {
        self.warn(format_args!("login to {target} refused: the target or its ACL changed during the login"));
        let detail = "the target was removed or its ACL changed during the login".to_string();
        self.refuse_final(resp, outcome, target, crate::login::LoginStatus::TARGET_REMOVED, "not-found", detail)
    }

    /// Records the refused login and answers it with `status` in place of
    /// the final Login Response; the connection then closes.
    fn refuse_final(
        &mut self,
        resp: &mut crate::pdu::LoginResponse,
        outcome: &LoginOutcome,
        target: &str,
        status: crate::login::LoginStatus,
        reason: &'static str,
        detail: String,
    ) -> Flow {
        self.shared.login_failed(super::LoginFailureInfo {
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

    fn send_login(&mut self, pdu: Pdu) -> Flow {
        self.out.push(&pdu, false, false);
        Flow::Continue
    }

    // ----- SCSI commands ---------------------------------------------------

    fn session_type(&self) -> SessionType {
        match self.phase {
            Phase::Discovery => SessionType::Discovery,
            _ => SessionType::Normal,
        }
    }

    async fn queue_for(&mut self, lun: u64) -> Option<Arc<Queue>> {
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

    async fn on_command(&mut self, c: ScsiCommand) -> Flow {
        tracing::trace!(
            itt = c.itt,
            cmd_sn = c.cmd_sn,
            edtl = c.expected_data_transfer_length,
            imm = c.data.len(),
            last = c.final_bit,
            op = c.cdb.first().copied().unwrap_or(0),
            "SCSI Command"
        );
        if self.session.is_none() {
            // Discovery sessions carry no SCSI commands (RFC 7143 §4.3).
            return self.reject_pdu(&Pdu::ScsiCommand(c), RejectReason::ProtocolError);
        }
        if self.tasks.contains_key(&c.itt) {
            return self.reject_pdu(&Pdu::ScsiCommand(c), RejectReason::TaskInProgress);
        }
        let imm = c.data.len() as u32;
        if imm > 0
            && (!c.write
                || !self.params.immediate_data
                || imm > c.expected_data_transfer_length
                || imm > self.params.first_burst_length)
        {
            self.warn(format_args!("unexpected immediate data (ITT {:#x})", c.itt));
            return self.reject_pdu(&Pdu::ScsiCommand(c), RejectReason::ProtocolError);
        }
        let lun = lunar_scsi::lun::decode_lun(c.lun.to_be_bytes()).unwrap_or(u64::MAX);
        let mut task = Task {
            itt: c.itt,
            lun,
            lun_field: c.lun,
            cdb: c.cdb,
            read: c.read,
            write: c.write,
            edtl: if c.read || c.write { c.expected_data_transfer_length } else { 0 },
            want: 0,
            data: Vec::new(),
            received: 0,
            reserved: 0,
            granted: false,
            unsolicited_open: false,
            next_r2t_offset: 0,
            r2t_sn: 0,
            solicited: Vec::new(),
            submitted: false,
            aborted: false,
            data_sn: 0,
            unsolicited_data_sn: 0,
            scsi_write_len: None,
            early: None,
        };
        let itt = task.itt;
        if task.write {
            if let Err(response) = self.size_data_out(&mut task).await {
                // Answered without asking for any data-out (what arrives
                // unasked is drained and dropped).
                task.early = Some(response);
                task.want = 0;
            }
            let stored = task.accept(0, &c.data).unwrap_or(0);
            task.reserved += u64::from(stored);
            self.budget.force(u64::from(stored));
            let unsolicited_end = if c.final_bit || self.params.initial_r2t {
                imm
            } else {
                self.params.first_burst_length.min(task.edtl)
            };
            task.unsolicited_open = !c.final_bit && !self.params.initial_r2t && unsolicited_end > imm;
            task.next_r2t_offset = unsolicited_end.max(imm);
        }
        if task.data_complete() && !task.unsolicited_open {
            return self.submit(task).await;
        }
        self.tasks.insert(itt, task);
        self.solicit(itt);
        Flow::Continue
    }

    /// Sizes a write's data-out from its CDB before asking for any
    /// (RFC 7143 §11.4.5.2, SAM-5 5.4 residuals): an EDTL below what the
    /// CDB asks for cuts a block write to EDTL's whole blocks; above it,
    /// only what the CDB takes is asked for and stored. A command the unit
    /// will refuse without its data (no such LUN, transfer too long, LBA
    /// out of range, invalid CDB) is answered now: `Err` with the answer.
    async fn size_data_out(&mut self, task: &mut Task) -> Result<(), Response> {
        let Some(queue) = self.queue_for(task.lun).await else { return Err(self.no_such_lun(task)) };
        let disk = queue.device().disk();
        let block_size = disk.block_size();
        // A command that does not decode or validate is left to the core,
        // with no data: it answers the same error after the checks that
        // come first (unit attention, reservation conflict).
        let Ok(mut cmd) = lunar_scsi::Command::decode(&task.cdb) else {
            LimitCounters::bump(&self.shared.hits.refused_before_data);
            return Ok(());
        };
        let needed = cmd.data_out_len(block_size);
        task.scsi_write_len = Some(needed);
        if (task.edtl as usize) < needed {
            match lunar_scsi::cut_write(&task.cdb, task.edtl, block_size) {
                lunar_scsi::CutWrite::Cut(cdb) => {
                    task.cdb = cdb;
                    // A cut CDB decodes as the original did, but for its length.
                    let Ok(cut) = lunar_scsi::Command::decode(&task.cdb) else { return Ok(()) };
                    cmd = cut;
                }
                lunar_scsi::CutWrite::NotWholeBlocks => {
                    // INVALID FIELD IN INFORMATION UNIT (RFC 7143 11.4.7.2).
                    LimitCounters::bump(&self.shared.hits.refused_before_data);
                    let sense = lunar_scsi::Sense::new(lunar_scsi::SenseKey::IllegalRequest, 0x0e, 0x03);
                    return Err(Response::check_condition(sense.fixed()));
                }
                lunar_scsi::CutWrite::NotABlockWrite => {}
            }
        }
        if disk.validate(&cmd).is_err() {
            LimitCounters::bump(&self.shared.hits.refused_before_data);
            return Ok(());
        }
        match disk.data_out_checked(&cmd, task.edtl as usize) {
            Ok(n) => task.want = u32::try_from(n).unwrap_or(u32::MAX).min(task.edtl),
            Err(e) => {
                LimitCounters::bump(&self.shared.hits.refused_before_data);
                return Err(Response::check_condition(e.sense().fixed()));
            }
        }
        Ok(())
    }

    /// Sends the R2Ts a task may have now; one that finds no buffer space
    /// waits in `deferred` for completions to free some.
    fn solicit(&mut self, itt: u32) {
        let Some(task) = self.tasks.get_mut(&itt) else { return };
        let (r2ts, room) = task.next_r2ts(&self.params, &mut self.next_ttt, &mut self.budget, false);
        for r in r2ts {
            self.queue_out(Pdu::R2t(r));
        }
        if !room && !self.deferred.contains(&itt) {
            LimitCounters::bump(&self.shared.hits.buffer_waits);
            self.deferred.push_back(itt);
        }
    }

    async fn on_data_out(&mut self, d: DataOut) -> Flow {
        tracing::trace!(
            itt = d.itt,
            ttt = d.ttt,
            data_sn = d.data_sn,
            offset = d.buffer_offset,
            len = d.data.len(),
            last = d.final_bit,
            "Data-Out"
        );
        let params = self.params.clone();
        let Some(task) = self.tasks.get_mut(&d.itt) else {
            tracing::debug!(peer = %self.peer, itt = d.itt, "Data-Out for no task: ignored");
            return Flow::Continue;
        };
        if task.submitted {
            return Flow::Continue;
        }
        if d.data.len() as u32 > params.target_max_recv_data_segment_length {
            return self.reject_pdu(&Pdu::DataOut(d), RejectReason::ProtocolError);
        }
        if d.ttt == RESERVED_TAG {
            if d.data_sn != task.unsolicited_data_sn {
                return self.data_sn_error(d);
            }
            task.unsolicited_data_sn += 1;
            if !task.unsolicited_open || d.buffer_offset.saturating_add(d.data.len() as u32) > params.first_burst_length
            {
                return self.reject_pdu(&Pdu::DataOut(d), RejectReason::ProtocolError);
            }
            let Some(stored) = task.accept(d.buffer_offset, &d.data) else {
                return self.reject_pdu(&Pdu::DataOut(d), RejectReason::ProtocolError);
            };
            // Unasked-for data is held whatever the budget (it is bounded
            // by FirstBurstLength per command).
            task.reserved += u64::from(stored);
            self.budget.force(u64::from(stored));
            if d.final_bit {
                task.unsolicited_open = false;
            }
        } else {
            let Some(i) = task.solicited.iter().position(|s| s.ttt == d.ttt) else {
                return self.reject_pdu(&Pdu::DataOut(d), RejectReason::InvalidPduField);
            };
            let s = task.solicited[i];
            if d.data_sn != s.next_data_sn {
                return self.data_sn_error(d);
            }
            task.solicited[i].next_data_sn += 1;
            let end = d.buffer_offset.saturating_add(d.data.len() as u32);
            // Solicited data was counted against the budget by its R2T.
            if d.buffer_offset < s.offset || end > s.offset + s.len || task.accept(d.buffer_offset, &d.data).is_none() {
                return self.reject_pdu(&Pdu::DataOut(d), RejectReason::ProtocolError);
            }
            task.solicited[i].received += d.data.len() as u32;
            if d.final_bit {
                task.solicited.remove(i);
            }
        }
        if task.data_complete() && task.solicited.is_empty() && !task.unsolicited_open {
            if let Some(task) = self.tasks.remove(&d.itt) {
                return self.submit(task).await;
            }
            return Flow::Continue;
        }
        self.solicit(d.itt);
        Flow::Continue
    }

    /// A Data-Out out of sequence: at ErrorRecoveryLevel 0 the recovery is
    /// the session's (RFC 7143 §7.1.1, §7.3): reject it and drop the connection.
    fn data_sn_error(&mut self, d: DataOut) -> Flow {
        self.warn(format_args!(
            "Data-Out with a wrong DataSN {} (ITT {:#x}): dropping the connection",
            d.data_sn, d.itt
        ));
        let _ = self.reject_pdu(&Pdu::DataOut(d), RejectReason::ProtocolError);
        Flow::Close
    }

    /// A command with all its data: answered here if it was refused before
    /// its data, else handed to the core once its data-in has room in the
    /// connection's buffers (it waits in `deferred` otherwise, behind any
    /// task already waiting).
    async fn submit(&mut self, mut task: Task) -> Flow {
        let itt = task.itt;
        if let Some(response) = task.early.take() {
            task.submitted = true;
            self.tasks.insert(itt, task);
            return self.on_done(itt, response);
        }
        // A read waits behind the tasks already waiting; a write's data is
        // already here (its room taken), so it never waits.
        if task.read && (!self.deferred.is_empty() || !task.take_data_in(&mut self.budget, false)) {
            LimitCounters::bump(&self.shared.hits.buffer_waits);
            self.tasks.insert(itt, task);
            self.deferred.push_back(itt);
            return Flow::Continue;
        }
        self.submit_now(task).await
    }

    /// Hands a command with all its data to the core (or answers it here
    /// when its LUN does not exist).
    async fn submit_now(&mut self, mut task: Task) -> Flow {
        let itt = task.itt;
        let lun = task.lun;
        let Some(queue) = self.queue_for(lun).await else {
            let response = self.no_such_lun(&task);
            task.submitted = true;
            self.tasks.insert(itt, task);
            return self.on_done(itt, response);
        };
        let data = std::mem::take(&mut task.data);
        let tx = self.tx.clone();
        let req = lunar_core::request(u64::from(itt), lun, &task.cdb, data, move |response| {
            let _ = tx.send(Event::Done { itt, response });
        });
        task.submitted = true;
        self.tasks.insert(itt, task);
        queue.submit(req);
        Flow::Continue
    }

    /// INQUIRY, REPORT LUNS and others addressed to a LUN that does not
    /// exist (SPC-5 §4.6.4 and §6.7.2: peripheral qualifier 011b).
    fn no_such_lun(&self, task: &Task) -> Response {
        let luns = self.session.as_ref().map(|s| s.entry.core.luns()).unwrap_or_default();
        match lunar_scsi::answer_without_lun(&task.cdb, &luns) {
            Ok(data) => Response::good(data),
            Err(sense) => Response::check_condition(sense.fixed()),
        }
    }

    fn on_done(&mut self, itt: u32, response: Response) -> Flow {
        let Some(mut task) = self.tasks.remove(&itt) else { return Flow::Continue };
        self.release_after_write += task.reserved;
        for t in &mut self.tmfs {
            t.waiting.remove(&itt);
        }
        if !task.aborted {
            let write_len = task.scsi_write_len;
            let ans = answer(
                &mut task,
                response.status.code(),
                response.sense,
                response.data,
                write_len,
                self.params.initiator_max_recv_data_segment_length,
            );
            for d in ans.data_in {
                self.queue_out(Pdu::DataIn(d));
            }
            if let Some(r) = ans.response {
                self.queue_out(Pdu::ScsiResponse(r));
            }
        }
        self.finish_tmfs()
    }

    // ----- task management ---------------------------------------------------

    fn on_tmf(&mut self, t: TaskMgmtRequest) -> Flow {
        if self.session.is_none() {
            return self.reject_pdu(&Pdu::TaskMgmtRequest(t), RejectReason::ProtocolError);
        }
        let lun = lunar_scsi::lun::decode_lun(t.lun.to_be_bytes()).unwrap_or(u64::MAX);
        self.shared.tmfs.received(t.function);
        tracing::info!(
            peer = %self.peer,
            function = super::tmf::function_name(t.function),
            lun,
            referenced_itt = t.referenced_task_tag,
            "task management request"
        );
        let mut pending = PendingTmf {
            itt: t.itt,
            function: t.function,
            lun,
            since: std::time::Instant::now(),
            waiting: HashSet::new(),
            core_pending: 0,
            close_after: false,
        };
        let response = match t.function {
            TaskMgmtFunction::AbortTask => match self.tasks.get(&t.referenced_task_tag).map(|task| task.lun) {
                Some(task_lun) => {
                    let tag = t.referenced_task_tag;
                    self.abort_tasks(|task| task.itt == tag, &mut pending);
                    self.core_tmf(TaskManagement::AbortTask { tag: u64::from(tag) }, task_lun, t.itt, &mut pending);
                    TmfResponseCode::FunctionComplete
                }
                // Completed before the abort arrived (its status was
                // sent), or never received (RFC 7143 §11.6.1).
                None => TmfResponseCode::TaskDoesNotExist,
            },
            TaskMgmtFunction::AbortTaskSet | TaskMgmtFunction::ClearTaskSet => {
                self.abort_tasks(|task| task.lun == lun, &mut pending);
                let tmf = if t.function == TaskMgmtFunction::AbortTaskSet {
                    TaskManagement::AbortTaskSet
                } else {
                    TaskManagement::ClearTaskSet
                };
                self.core_tmf(tmf, lun, t.itt, &mut pending);
                TmfResponseCode::FunctionComplete
            }
            TaskMgmtFunction::LogicalUnitReset => {
                let exists = self.session.as_ref().is_some_and(|s| s.entry.core.device(lun).is_some());
                if exists {
                    self.abort_tasks(|task| task.lun == lun, &mut pending);
                    self.core_tmf(TaskManagement::LogicalUnitReset, lun, t.itt, &mut pending);
                    TmfResponseCode::FunctionComplete
                } else {
                    TmfResponseCode::LunDoesNotExist
                }
            }
            TaskMgmtFunction::TargetWarmReset | TaskMgmtFunction::TargetColdReset => {
                self.abort_tasks(|_| true, &mut pending);
                self.core_tmf(TaskManagement::TargetReset, lun, t.itt, &mut pending);
                if t.function == TaskMgmtFunction::TargetColdReset {
                    // Every session of the target ends; this one right after
                    // its response.
                    pending.close_after = true;
                    if let Some(s) = &self.session {
                        let name = s.entry.config.name.clone();
                        self.shared.kill_sessions_of(&name, s.tsih);
                    }
                }
                TmfResponseCode::FunctionComplete
            }
            TaskMgmtFunction::TaskReassign => TmfResponseCode::TaskAllegianceReassignmentNotSupported,
            _ => TmfResponseCode::FunctionNotSupported,
        };
        if response != TmfResponseCode::FunctionComplete || (pending.waiting.is_empty() && pending.core_pending == 0) {
            self.tmf_answered(&pending, response);
            let flow = self.send(Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response,
                itt: t.itt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
            }));
            return if pending.close_after { Flow::Close } else { flow };
        }
        self.tmfs.push(pending);
        Flow::Continue
    }

    /// The connection's part of an abort: this session's tasks matching
    /// `pred` that are still gathering data are dropped (the core never saw
    /// them); those in the core are marked, and the TMF waits for their
    /// completion as well as for the core's part ([`Conn::core_tmf`]).
    fn abort_tasks(&mut self, pred: impl Fn(&Task) -> bool, pending: &mut PendingTmf) {
        let itts: Vec<u32> = self.tasks.values().filter(|t| pred(t)).map(|t| t.itt).collect();
        for itt in itts {
            let Some(task) = self.tasks.get_mut(&itt) else { continue };
            if task.submitted {
                task.aborted = true;
                pending.waiting.insert(itt);
            } else if let Some(task) = self.tasks.remove(&itt) {
                self.release_after_write += task.reserved;
            }
        }
    }

    /// The core's part of a task management function, through the one API
    /// both front-ends use (`Target::task_management`), with this
    /// session's queues: of LU `lun`, or of every LU for a target reset.
    /// The TMF is answered once it resolved (every command it aborted has
    /// completed, its unit attentions are in place).
    fn core_tmf(&mut self, tmf: TaskManagement, lun: u64, itt: u32, pending: &mut PendingTmf) {
        let Some(s) = &self.session else { return };
        let queues: Vec<Arc<Queue>> = if tmf.all_luns() {
            s.queues.values().cloned().collect()
        } else {
            s.queues.get(&lun).cloned().into_iter().collect()
        };
        let core = s.entry.core.clone();
        pending.core_pending += 1;
        let tx = self.tx.clone();
        tokio::task::spawn_local(async move {
            if let Err(e) = core.task_management(tmf, lun, &queues).await {
                tracing::debug!(lun, tmf = tmf.name(), "task management: {e}");
            }
            let _ = tx.send(Event::CoreTmfDone { itt });
        });
    }

    /// Queues the responses of task management functions that are done.
    fn finish_tmfs(&mut self) -> Flow {
        let mut flow = Flow::Continue;
        let done: Vec<PendingTmf> = {
            let (done, keep): (Vec<_>, Vec<_>) =
                std::mem::take(&mut self.tmfs).into_iter().partition(|t| t.waiting.is_empty() && t.core_pending == 0);
            self.tmfs = keep;
            done
        };
        for t in done {
            self.tmf_answered(&t, TmfResponseCode::FunctionComplete);
            self.queue_out(Pdu::TaskMgmtResponse(TaskMgmtResponse {
                response: TmfResponseCode::FunctionComplete,
                itt: t.itt,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
            }));
            if t.close_after {
                flow = Flow::Close;
            }
        }
        flow
    }

    /// Counts and logs the response to a task management function.
    fn tmf_answered(&self, t: &PendingTmf, response: TmfResponseCode) {
        self.shared.tmfs.answered(response);
        tracing::info!(
            peer = %self.peer,
            function = super::tmf::function_name(t.function),
            lun = t.lun,
            response = super::tmf::response_name(response),
            waited_ms = t.since.elapsed().as_millis() as u64,
            "task management response"
        );
    }

    // ----- other requests ----------------------------------------------------

    fn on_nop(&mut self, n: NopOut) -> Flow {
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

    fn on_text(&mut self, t: TextRequest) -> Flow {
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

    fn on_logout(&mut self, l: LogoutRequest) -> Flow {
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

    fn on_tick(&mut self) -> Flow {
        if let Some((_, sent)) = self.ping {
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
        if self.last_rx.elapsed() > PING_IDLE {
            self.next_ttt = self.next_ttt.wrapping_add(1);
            if self.next_ttt == RESERVED_TAG {
                self.next_ttt = 1;
            }
            let ttt = self.next_ttt;
            self.ping = Some((ttt, Instant::now()));
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

//! One iSCSI connection, on the I/O thread it was given: one loop that
//! reads and frames PDUs, owns all the connection's state (login, sequence
//! numbers, tasks, task management) and answers in order. Completions from
//! the core reach it as events through a channel, so it never shares state
//! with another thread. A command whose backend answers at once costs one
//! wake-up of this loop: read, execute inline, answer, write.

mod io;
mod scsi;
mod session;
mod task_mgmt;
mod window;

use io::READ_CHUNK;
use task_mgmt::PendingTmf;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lunar_core::{Queue, Response};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::limits::{Budget, LimitCounters};
use super::output::Output;
use super::task::Task;
use super::{ServerState, TargetEntry};
use crate::login::{LoginConfig, LoginSession};
use crate::params::NegotiatedParams;
use crate::pdu::{
    Bhs, ErrorReaction, Isid, LogoutReason, LogoutRequest, LogoutResponse, LogoutResponseCode, NopIn, NopOut, Pdu,
    PduError, Reject, RejectReason, TextRequest, BHS_LEN, RESERVED_TAG,
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
            Event::CoreTmfDone { itt } => self.on_core_tmf_done(itt),
            Event::Tick => self.on_tick(),
        }
    }

    // ----- output --------------------------------------------------------

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

    // ----- SCSI commands ---------------------------------------------------

    // ----- task management ---------------------------------------------------

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

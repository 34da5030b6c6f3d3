//! One iSCSI connection, on the I/O thread it was given: one loop that
//! reads and frames PDUs, owns all the connection's state (login, sequence
//! numbers, tasks, task management) and answers in order. Completions from
//! the core reach it as events through a channel, so it never shares state
//! with another thread. A command whose backend answers at once costs one
//! wake-up of this loop: read, execute inline, answer, write.

mod io;
mod logout;
mod nop;
mod scsi;
mod session;
mod task_mgmt;
mod text;
mod window;

pub use logout::LOGOUT_GRACE;

use io::Reader;
use nop::Liveness;
use scsi::Buffers;
use task_mgmt::PendingTmf;
use window::CmdWindow;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lunar_core::{Queue, Response};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::limits::LimitCounters;
use super::output::Output;
use super::task::Task;
use super::{ServerState, TargetEntry};
use crate::login::{LoginConfig, LoginSession};
use crate::params::NegotiatedParams;
use crate::pdu::{Bhs, ErrorReaction, Isid, Pdu, PduError, Reject, RejectReason, BHS_LEN, RESERVED_TAG};
use crate::text::TextExchange;

/// What reaches the loop from elsewhere on its thread.
enum Event {
    /// A command's completion, from the core.
    Done { itt: u32, response: Response },
    /// The core's part of task management function `itt` resolved.
    CoreTmfDone { itt: u32 },
    /// Every 5 s: the ping's clock.
    Tick,
}

/// Whether the connection goes on after a handler.
#[derive(PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// A logged-in normal session (this connection is its only one: ERL 0,
/// MaxConnections 1).
struct Session {
    entry: TargetEntry,
    /// The I_T nexus (SPC-5 7.6.4.6: initiator name, ",i,0x", ISID).
    nexus: lunar_scsi::Nexus,
    /// The core queue of each LUN, opened on this thread.
    queues: HashMap<u64, Arc<Queue>>,
    initiator: String,
    isid: Isid,
    tsih: u16,
    /// Told when the session has closed (a reinstating login waits for it).
    closed_tx: watch::Sender<bool>,
}

enum Phase {
    Login(Box<LoginSession<Arc<ServerState>>>),
    Discovery,
    Normal,
}

/// All of one connection's state, owned by its loop.
struct Conn {
    // Where the connection is.
    shared: Arc<ServerState>,
    peer: SocketAddr,
    /// Our address on this connection (what a wildcard portal is
    /// advertised as in SendTargets).
    local: Option<SocketAddr>,
    /// The I/O thread the connection and its queues live on.
    thread: usize,
    /// Where completions are sent to this loop.
    tx: mpsc::UnboundedSender<Event>,
    /// Warnings caused by this peer's input.
    log: lunar_aio::LogLimit,

    // The socket.
    reader: Reader,
    /// The socket's adaptive poll window.
    poll: io::Poll,
    wr: OwnedWriteHalf,
    /// Answers queued by the handlers, written once per batch.
    out: Output,
    /// Digests in force for PDUs we receive and send (after login).
    digests: (bool, bool),

    // Login and the session.
    phase: Phase,
    /// When the connection was accepted: the login phase's deadline.
    accepted: Instant,
    params: NegotiatedParams,
    session: Option<Session>,
    /// Once logged in, how the server asks the session to end.
    kill: Option<watch::Receiver<super::End>>,

    // Commands and their answers.
    stat_sn: u32,
    window: CmdWindow,
    tasks: HashMap<u32, Task>,
    /// The last Target Transfer Tag given (R2Ts and pings).
    next_ttt: u32,
    /// Buffer space for solicited data-out and data-in.
    buffers: Buffers,
    tmfs: Vec<PendingTmf>,

    // Other requests.
    text: TextExchange,
    /// When the text exchange in progress began (it has a deadline).
    text_since: Option<Instant>,
    liveness: Liveness,
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
    let cmd_window = window::size(&shared);
    let login = LoginSession::new(
        shared.clone(),
        LoginConfig {
            limits: shared.limits.clone(),
            portal_group_tag: shared.portal_group_tag,
            initial_stat_sn: rand_u32(),
            cmd_window,
        },
    );
    let shutdown = shared.shutdown.subscribe();
    let buffers = Buffers::new(shared.resources.max_buffered_bytes);
    let poll = io::Poll::new(shared.resources.poll.min(super::MAX_POLL));
    let mut conn = Conn {
        shared,
        peer,
        local,
        thread,
        tx,
        log: lunar_aio::LogLimit::default(),
        reader: Reader::new(rd),
        poll,
        wr,
        out: Output::with_capacity(16 << 10),
        digests: (false, false),
        phase: Phase::Login(Box::new(login)),
        accepted: Instant::now(),
        params: NegotiatedParams::default(),
        session: None,
        kill: None,
        stat_sn: 0,
        window: CmdWindow::default(),
        tasks: HashMap::new(),
        next_ttt: 0,
        buffers,
        tmfs: Vec::new(),
        text: TextExchange::new(),
        text_since: None,
        liveness: Liveness::new(),
        shutdown,
        logout_by: None,
    };
    conn.run(&mut rx).await;
    conn.poll.flush(&conn.shared.polls_caught);
    ticker.abort();
    conn.cleanup().await;
}

fn rand_u32() -> u32 {
    use rand::Rng;
    rand::thread_rng().gen()
}

impl Conn {
    /// Something from the connection's channel.
    fn on_event(&mut self, ev: Event) -> Flow {
        match ev {
            Event::Done { itt, response } => self.on_done(itt, response),
            Event::CoreTmfDone { itt } => self.on_core_tmf_done(itt),
            Event::Tick => self.on_tick(),
        }
    }

    /// A warning caused by the peer's input, rate-limited per connection.
    fn warn(&self, what: std::fmt::Arguments<'_>) {
        match self.log.allow() {
            Some(suppressed) => tracing::warn!(peer = %self.peer, suppressed, "{what}"),
            None => LimitCounters::bump(&self.shared.hits.log_suppressed),
        }
    }

    /// Rejects the PDU whose header is `bhs` (§11.17).
    fn reject(&mut self, bhs: &Bhs, reason: RejectReason) -> Flow {
        self.send(Pdu::Reject(Reject::of(bhs, reason)))
    }

    /// Rejects a PDU that decoded but is not accepted here.
    fn reject_pdu(&mut self, pdu: &Pdu, reason: RejectReason) -> Flow {
        let raw = pdu.encode(false, false);
        match raw.first_chunk::<BHS_LEN>().and_then(|h| crate::pdu::decode_bhs(h).ok()) {
            Some(bhs) => self.reject(&bhs, reason),
            None => Flow::Close,
        }
    }

    /// A PDU that did not decode: rejected when RFC 7143 §7.8 says so and
    /// its header is known; otherwise, and always during login, the
    /// connection closes.
    fn on_bad(&mut self, e: PduError, bhs: Option<Box<Bhs>>) -> Flow {
        self.warn(format_args!("bad PDU: {e}"));
        match (e.reaction(), bhs, &self.phase) {
            (_, _, Phase::Login(_)) => Flow::Close,
            (ErrorReaction::Reject(reason), Some(bhs), _) => self.reject(&bhs, reason),
            _ => Flow::Close,
        }
    }

    /// Dispatches a PDU: to the login state machine during login; then
    /// Data-Out and answers to our pings at once, requests in CmdSN order.
    async fn on_pdu(&mut self, pdu: Pdu) -> Flow {
        if let Phase::Login(login) = &mut self.phase {
            let step = login.handle_pdu(&pdu);
            return self.on_login_step(step).await;
        }
        match pdu {
            Pdu::DataOut(d) => self.on_data_out(d).await,
            Pdu::NopOut(n) if n.itt == RESERVED_TAG => self.on_ping_answer(&n),
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
}

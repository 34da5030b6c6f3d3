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
    reader: Reader,
    params: NegotiatedParams,
    phase: Phase,
    session: Option<Session>,
    stat_sn: u32,
    window: CmdWindow,
    tasks: HashMap<u32, Task>,
    next_ttt: u32,
    tmfs: Vec<PendingTmf>,
    text: TextExchange,
    liveness: Liveness,
    kill: Option<watch::Receiver<super::End>>,
    /// Answers queued by the handlers, written once per batch.
    out: Output,
    /// Buffer space for solicited data-out and data-in.
    buffers: Buffers,
    /// Deadlines of the login phase and of a text exchange (that of a PDU
    /// that started arriving is the reader's).
    accepted: Instant,
    text_since: Option<Instant>,
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
    let buffers = Buffers::new(shared.resources.max_buffered_bytes);
    let shared_shutdown = shared.shutdown.subscribe();
    let mut conn = Conn {
        shared,
        peer,
        local,
        thread,
        wr,
        tx,
        digests: (false, false),
        reader: Reader::new(rd),
        params: NegotiatedParams::default(),
        phase: Phase::Login(Box::new(login)),
        session: None,
        stat_sn: 0,
        window: CmdWindow::default(),
        tasks: HashMap::new(),
        next_ttt: 0,
        tmfs: Vec::new(),
        text: TextExchange::new(),
        liveness: Liveness::new(),
        kill: None,
        out: Output::with_capacity(16 << 10),
        buffers,
        accepted: Instant::now(),
        text_since: None,
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

    // ----- SCSI commands ---------------------------------------------------

    // ----- task management ---------------------------------------------------

    // ----- other requests ----------------------------------------------------
}

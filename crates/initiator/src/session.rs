//! A logged-in iSCSI session over one TCP connection.
//!
//! Three parties share the connection:
//!
//! - the caller's thread(s) submit commands ([`Session::submit`]) and wait
//!   for their responses ([`Session::wait`], [`Session::wait_any`]);
//! - a reader thread decodes every PDU from the target into a typed value,
//!   then acts on it: assembles Data-In, answers R2Ts with Data-Out,
//!   answers NOP-In pings, follows StatSN and the CmdSN window, completes
//!   commands;
//! - a writer thread owns the socket's sending side and writes the frames
//!   the others queue, in queue order.
//!
//! Frames are queued under the state lock, so their order on the wire is
//! the order of the CmdSNs they carry; nobody blocks on the socket while
//! holding that lock (the target may itself be waiting for us to read).
//! Every wait is bounded by a timeout.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use lunar_iscsi::keys::{self, KeyValue};
use lunar_iscsi::pdu::{
    decode_bhs, decode_frame, AsyncMessage, DataIn, DataOut, Isid, LoginRequest, LoginResponse, LoginStage,
    LogoutReason, LogoutRequest, LogoutResponse, LogoutResponseCode, NopIn, NopOut, Pdu, R2t, Reject, ScsiCommand,
    ScsiResponse, ServiceResponse, TaskMgmtFunction, TaskMgmtRequest, TextRequest, TmfResponseCode, BHS_LEN,
    RESERVED_TAG,
};

use crate::error::Error;
use crate::negotiate::{operational_offer, plan_write, security_keys, split, Config, Negotiation, Params};
use crate::scsi::{encode_lun, Capacity, Command, Residual, Response, Sense, Status, Tag};

/// Serial number arithmetic (RFC 1982) on 32-bit sequence numbers.
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// A command the target has not answered yet.
struct Task {
    lun_field: u64,
    data_out: Arc<Vec<u8>>,
    read_len: u32,
    data_in: Vec<u8>,
    next_data_sn: u32,
    /// R2Ts left unanswered until [`Session::release`] (`None`: answered
    /// as they come).
    held_r2ts: Option<Vec<R2t>>,
}

struct State {
    /// Frames for the writer; `None` once the session is closed.
    tx: Option<mpsc::Sender<Vec<u8>>>,
    params: Params,
    cmd_sn: u32,
    exp_cmd_sn: u32,
    max_cmd_sn: u32,
    exp_stat_sn: u32,
    next_itt: u32,
    tasks: HashMap<u32, Task>,
    done: HashMap<u32, Result<Response, Error>>,
    /// Completion order, for `wait_any`.
    order: VecDeque<u32>,
    closed: Option<String>,
    pings_answered: u64,
    async_messages: Vec<AsyncMessage>,
    nop_replies: HashSet<u32>,
    logout: Option<LogoutResponse>,
    /// Task management responses not yet collected, by ITT.
    tmf_replies: HashMap<u32, TmfResponseCode>,
}

impl State {
    fn send(&mut self, pdu: &Pdu) -> Result<(), Error> {
        let frame = pdu.encode(self.params.header_digest, self.params.data_digest);
        let closed = || Error::Closed(self.closed.clone().unwrap_or_else(|| "writer gone".into()));
        let tx = self.tx.as_ref().ok_or_else(closed)?;
        tx.send(frame).map_err(|_| closed())
    }

    fn closed_error(&self) -> Option<Error> {
        self.closed.as_ref().map(|r| Error::Closed(r.clone()))
    }

    /// Ends the session: every outstanding command fails.
    fn fail(&mut self, reason: String) {
        if self.closed.is_none() {
            self.closed = Some(reason.clone());
        }
        self.tx = None;
        let reason = self.closed.clone().unwrap_or(reason);
        let mut itts: Vec<u32> = self.tasks.keys().copied().collect();
        itts.sort_unstable();
        for itt in itts {
            self.tasks.remove(&itt);
            self.complete(itt, Err(Error::Closed(reason.clone())));
        }
    }

    fn complete(&mut self, itt: u32, result: Result<Response, Error>) {
        self.done.insert(itt, result);
        self.order.push_back(itt);
    }

    fn alloc_itt(&mut self) -> u32 {
        loop {
            let itt = self.next_itt;
            self.next_itt = self.next_itt.wrapping_add(1);
            if itt != RESERVED_TAG && !self.tasks.contains_key(&itt) && !self.done.contains_key(&itt) {
                return itt;
            }
        }
    }

    /// ExpCmdSN / MaxCmdSN of a target PDU (RFC 7143 §4.2.2.1): taken when
    /// newer; a window with MaxCmdSN < ExpCmdSN - 1 is invalid and ignored.
    fn window(&mut self, exp: u32, max: u32) {
        if sn_lt(max, exp.wrapping_sub(1)) {
            return;
        }
        if sn_lt(self.exp_cmd_sn, exp) {
            self.exp_cmd_sn = exp;
        }
        if sn_lt(self.max_cmd_sn, max) {
            self.max_cmd_sn = max;
        }
    }

    /// A PDU with status: its StatSN must be the next one (ERL 0 has no
    /// status recovery, a gap is a lost response).
    fn status_sn(&mut self, stat_sn: u32) -> Result<(), Error> {
        if stat_sn != self.exp_stat_sn {
            return Err(Error::Protocol(format!("StatSN {stat_sn}, expected {}", self.exp_stat_sn)));
        }
        self.exp_stat_sn = self.exp_stat_sn.wrapping_add(1);
        Ok(())
    }

    fn on_pdu(&mut self, pdu: Pdu) -> Result<(), Error> {
        match pdu {
            Pdu::DataIn(d) => {
                self.window(d.exp_cmd_sn, d.max_cmd_sn);
                if d.status.is_some() {
                    self.status_sn(d.stat_sn)?;
                }
                self.on_data_in(d)
            }
            Pdu::ScsiResponse(r) => {
                self.window(r.exp_cmd_sn, r.max_cmd_sn);
                self.status_sn(r.stat_sn)?;
                self.on_response(r)
            }
            Pdu::R2t(r) => {
                self.window(r.exp_cmd_sn, r.max_cmd_sn);
                self.on_r2t(r)
            }
            Pdu::NopIn(n) => {
                self.window(n.exp_cmd_sn, n.max_cmd_sn);
                self.on_nop_in(n)
            }
            Pdu::AsyncMessage(a) => {
                self.window(a.exp_cmd_sn, a.max_cmd_sn);
                self.status_sn(a.stat_sn)?;
                self.async_messages.push(a);
                Ok(())
            }
            Pdu::Reject(r) => {
                self.window(r.exp_cmd_sn, r.max_cmd_sn);
                self.on_reject(r)
            }
            Pdu::LogoutResponse(l) => {
                self.window(l.exp_cmd_sn, l.max_cmd_sn);
                self.status_sn(l.stat_sn)?;
                self.logout = Some(l);
                Ok(())
            }
            Pdu::TaskMgmtResponse(t) => {
                self.window(t.exp_cmd_sn, t.max_cmd_sn);
                self.status_sn(t.stat_sn)?;
                self.tmf_replies.insert(t.itt, t.response);
                Ok(())
            }
            other => Err(Error::Protocol(format!("unexpected {:?} in the full feature phase", other.opcode()))),
        }
    }

    fn on_data_in(&mut self, d: DataIn) -> Result<(), Error> {
        let task = self
            .tasks
            .get_mut(&d.itt)
            .ok_or_else(|| Error::Protocol(format!("Data-In for ITT {:#x}, no such task", d.itt)))?;
        if d.data_sn != task.next_data_sn {
            return Err(Error::Protocol(format!("Data-In DataSN {}, expected {}", d.data_sn, task.next_data_sn)));
        }
        task.next_data_sn += 1;
        // DataPDUInOrder=Yes, DataSequenceInOrder=Yes: each PDU follows the last.
        if d.buffer_offset as usize != task.data_in.len() {
            return Err(Error::Protocol(format!(
                "Data-In at offset {}, expected {}",
                d.buffer_offset,
                task.data_in.len()
            )));
        }
        if task.data_in.len() + d.data.len() > task.read_len as usize {
            return Err(Error::Protocol(format!(
                "Data-In past the expected length {} (offset {}, {} bytes)",
                task.read_len,
                d.buffer_offset,
                d.data.len()
            )));
        }
        task.data_in.extend_from_slice(&d.data);
        if let Some(status) = d.status {
            if let Some(task) = self.tasks.remove(&d.itt) {
                let response = Response {
                    status: Status(status),
                    sense: None,
                    data: task.data_in,
                    residual: Residual::from_flags(d.overflow, d.underflow, d.residual_count),
                };
                self.complete(d.itt, Ok(response));
            }
        }
        Ok(())
    }

    fn on_response(&mut self, r: ScsiResponse) -> Result<(), Error> {
        let task = self
            .tasks
            .remove(&r.itt)
            .ok_or_else(|| Error::Protocol(format!("SCSI Response for ITT {:#x}, no such task", r.itt)))?;
        let result = if r.response != ServiceResponse::CommandCompleted {
            Err(Error::ServiceResponse(r.response.code()))
        } else if !r.sense.is_empty() && Sense::parse(&r.sense).is_none() {
            Err(Error::Protocol(format!("undecodable sense data {:02x?}", r.sense)))
        } else {
            Ok(Response {
                status: Status(r.status),
                sense: Sense::parse(&r.sense),
                data: task.data_in,
                residual: Residual::from_flags(r.overflow, r.underflow, r.residual_count),
            })
        };
        self.complete(r.itt, result);
        Ok(())
    }

    fn on_r2t(&mut self, r: R2t) -> Result<(), Error> {
        let task = self
            .tasks
            .get_mut(&r.itt)
            .ok_or_else(|| Error::Protocol(format!("R2T for ITT {:#x}, no such task", r.itt)))?;
        if let Some(held) = &mut task.held_r2ts {
            held.push(r);
            return Ok(());
        }
        let end = u64::from(r.buffer_offset) + u64::from(r.desired_data_transfer_length);
        if end > task.data_out.len() as u64 || r.desired_data_transfer_length == 0 {
            return Err(Error::Protocol(format!(
                "R2T for {} bytes at {} of a {}-byte write",
                r.desired_data_transfer_length,
                r.buffer_offset,
                task.data_out.len()
            )));
        }
        let (data, lun_field) = (task.data_out.clone(), task.lun_field);
        let max = self.params.target_max_recv_data_segment_length;
        for p in split(r.buffer_offset, r.desired_data_transfer_length, max) {
            let bytes = data.get(p.offset as usize..(p.offset + p.len) as usize).unwrap_or_default().to_vec();
            let out = DataOut {
                final_bit: p.final_bit,
                lun: lun_field,
                itt: r.itt,
                ttt: r.ttt,
                exp_stat_sn: self.exp_stat_sn,
                data_sn: p.data_sn,
                buffer_offset: p.offset,
                data: bytes,
            };
            self.send(&Pdu::DataOut(out))?;
        }
        Ok(())
    }

    fn on_nop_in(&mut self, n: NopIn) -> Result<(), Error> {
        if n.itt != RESERVED_TAG {
            // The answer to our ping; it carries a StatSN.
            self.status_sn(n.stat_sn)?;
            self.nop_replies.insert(n.itt);
            return Ok(());
        }
        if n.ttt == RESERVED_TAG {
            // A NOP-In that wants no answer.
            return Ok(());
        }
        let out = NopOut {
            immediate: true,
            lun: n.lun,
            itt: RESERVED_TAG,
            ttt: n.ttt,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data: n.data,
        };
        self.send(&Pdu::NopOut(out))?;
        self.pings_answered += 1;
        Ok(())
    }

    fn on_reject(&mut self, r: Reject) -> Result<(), Error> {
        let itt = r.header.get(16..20).and_then(|b| <[u8; 4]>::try_from(b).ok()).map(u32::from_be_bytes);
        match itt.filter(|i| self.tasks.contains_key(i)) {
            Some(itt) => {
                self.tasks.remove(&itt);
                self.complete(itt, Err(Error::Rejected { tag: Tag(itt), reason: r.reason }));
                Ok(())
            }
            None => Err(Error::Protocol(format!("Reject ({:?}) of a PDU that is no task of ours", r.reason))),
        }
    }
}

struct Monitor {
    state: Mutex<State>,
    cv: Condvar,
}

impl Monitor {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits on the condition variable until `deadline`; false once it passed.
    fn wait_until<'a>(&self, guard: MutexGuard<'a, State>, deadline: Instant) -> (MutexGuard<'a, State>, bool) {
        let now = Instant::now();
        if now >= deadline {
            return (guard, false);
        }
        let (g, _) = self.cv.wait_timeout(guard, deadline - now).unwrap_or_else(|e| e.into_inner());
        (g, true)
    }

    fn close(&self, reason: String) {
        self.lock().fail(reason);
        self.cv.notify_all();
    }
}

/// Reads one whole PDU: the BHS, then what it announces.
fn read_pdu(stream: &mut TcpStream, hd: bool, dd: bool, max_data: u32) -> Result<Pdu, Error> {
    let mut frame = vec![0u8; BHS_LEN];
    stream.read_exact(&mut frame).map_err(|e| Error::io("read", e))?;
    let head: [u8; BHS_LEN] = frame.as_slice().try_into().map_err(|_| Error::Protocol("short BHS".into()))?;
    let bhs = decode_bhs(&head)?;
    bhs.check_data_segment_length(max_data)?;
    let rest = bhs.remaining_length(hd, dd);
    frame.resize(BHS_LEN + rest, 0);
    stream.read_exact(&mut frame[BHS_LEN..]).map_err(|e| Error::io("read", e))?;
    match decode_frame(&frame, hd, dd)? {
        Some((pdu, _)) => Ok(pdu),
        None => Err(Error::Protocol("incomplete frame".into())),
    }
}

fn write_pdu(stream: &mut TcpStream, pdu: &Pdu) -> Result<(), Error> {
    stream.write_all(&pdu.encode(false, false)).map_err(|e| Error::io("write", e))
}

fn reader(shared: Arc<Monitor>, mut stream: TcpStream, hd: bool, dd: bool, max_data: u32) {
    loop {
        let pdu = match read_pdu(&mut stream, hd, dd, max_data) {
            Ok(p) => p,
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::UnexpectedEof => {
                shared.close("the target closed the connection".into());
                return;
            }
            Err(e) => {
                shared.close(format!("reading from the target: {e}"));
                let _ = stream.shutdown(Shutdown::Both);
                return;
            }
        };
        let mut st = shared.lock();
        if let Err(e) = st.on_pdu(pdu) {
            st.fail(e.to_string());
            drop(st);
            shared.cv.notify_all();
            let _ = stream.shutdown(Shutdown::Both);
            return;
        }
        drop(st);
        shared.cv.notify_all();
    }
}

fn writer(shared: Arc<Monitor>, mut stream: TcpStream, rx: mpsc::Receiver<Vec<u8>>) {
    while let Ok(frame) = rx.recv() {
        if let Err(e) = stream.write_all(&frame) {
            shared.close(format!("writing to the target: {e}"));
            return;
        }
    }
}

/// A fresh ISID of the "random" type (RFC 7143 §11.12.5): unique per
/// session of this process (a counter) and unlikely to collide with other
/// processes (pid and clock).
fn new_isid() -> Isid {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed) as u16;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let mix = std::process::id() ^ nanos.rotate_left(16);
    let m = mix.to_be_bytes();
    let c = n.to_be_bytes();
    Isid([0x80, m[1], m[2], m[3], c[0], c[1]])
}

/// The login exchanges, on the blocking socket (before the threads start).
struct Login<'a> {
    stream: &'a mut TcpStream,
    isid: Isid,
    cmd_sn: u32,
    exp_stat_sn: u32,
    max_data: u32,
}

impl Login<'_> {
    fn request(&mut self, transit: bool, csg: LoginStage, nsg: LoginStage, data: Vec<u8>) -> LoginRequest {
        LoginRequest {
            transit,
            continue_bit: false,
            csg,
            nsg,
            version_max: 0,
            version_min: 0,
            isid: self.isid,
            tsih: 0,
            itt: 0,
            cid: 0,
            cmd_sn: self.cmd_sn,
            exp_stat_sn: self.exp_stat_sn,
            data,
        }
    }

    fn response(&mut self) -> Result<LoginResponse, Error> {
        match read_pdu(self.stream, false, false, self.max_data)? {
            Pdu::LoginResponse(r) => {
                if r.status_class != 0 {
                    return Err(Error::LoginRefused { class: r.status_class, detail: r.status_detail });
                }
                if r.itt != 0 || r.isid != self.isid {
                    return Err(Error::Protocol("Login Response for another login".into()));
                }
                self.exp_stat_sn = r.stat_sn.wrapping_add(1);
                Ok(r)
            }
            other => Err(Error::Protocol(format!("{:?} during login", other.opcode()))),
        }
    }

    /// One stage: offers `keys` and moves on to `nsg` once the target agrees,
    /// answering its offers meanwhile.
    fn stage(
        &mut self,
        csg: LoginStage,
        nsg: LoginStage,
        keys_out: Vec<KeyValue>,
        neg: &mut Negotiation,
    ) -> Result<LoginResponse, Error> {
        neg.sent(&keys_out);
        let mut out = keys_out;
        for _ in 0..16 {
            let req = self.request(true, csg, nsg, keys::encode(&out));
            write_pdu(self.stream, &Pdu::LoginRequest(req))?;
            let mut text = Vec::new();
            let resp = loop {
                let r = self.response()?;
                text.extend_from_slice(&r.data);
                if !r.continue_bit {
                    break r;
                }
                // The target's text continues: ask for the rest (§6.4).
                let more = self.request(false, csg, csg, Vec::new());
                write_pdu(self.stream, &Pdu::LoginRequest(more))?;
            };
            if resp.csg != csg {
                return Err(Error::Protocol(format!("Login Response for stage {:?}, in {csg:?}", resp.csg)));
            }
            let answers = neg.receive(&keys::parse(&text)?)?;
            if resp.transit {
                if resp.nsg != nsg {
                    return Err(Error::Protocol(format!("target moved to {:?}, not {nsg:?}", resp.nsg)));
                }
                if !answers.is_empty() {
                    return Err(Error::Negotiation("target moved on with offers unanswered".into()));
                }
                return Ok(resp);
            }
            out = answers;
        }
        Err(Error::Negotiation(format!("stage {csg:?} did not end after 16 exchanges")))
    }
}

/// One target of a SendTargets answer: its name and its `TargetAddress`
/// values (`ip:port,tpgt`), in the order the target gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovered {
    pub name: String,
    pub addresses: Vec<String>,
}

/// A TCP connection to the first address `addr` resolves to, within the
/// session's timeout.
fn connect(addr: impl ToSocketAddrs, config: &Config) -> Result<TcpStream, Error> {
    let addr = addr
        .to_socket_addrs()
        .map_err(|e| Error::io("resolve", e))?
        .next()
        .ok_or_else(|| Error::Invalid("no address to connect to".into()))?;
    TcpStream::connect_timeout(&addr, config.timeout).map_err(|e| Error::io("connect", e))
}

/// Connects, logs in to a discovery session (no authentication; from the
/// security stage straight to the full feature phase), asks
/// `SendTargets=All` (RFC 7143 Appendix C) and closes the connection.
/// `config.target_name` is not used.
pub fn discover(addr: impl ToSocketAddrs, config: &Config) -> Result<Vec<Discovered>, Error> {
    let mut stream = connect(addr, config)?;
    stream.set_read_timeout(Some(config.timeout)).map_err(|e| Error::io("socket options", e))?;
    stream.set_write_timeout(Some(config.timeout)).map_err(|e| Error::io("socket options", e))?;
    let mut neg = Negotiation::new(config);
    let mut login = Login {
        stream: &mut stream,
        isid: new_isid(),
        cmd_sn: 1,
        exp_stat_sn: 0,
        max_data: config.max_recv_data_segment_length,
    };
    let offer = vec![
        KeyValue::new("InitiatorName", &config.initiator_name),
        KeyValue::new("SessionType", "Discovery"),
        KeyValue::new("AuthMethod", "None"),
    ];
    let last = login.stage(LoginStage::Security, LoginStage::FullFeature, offer, &mut neg)?;
    let mut exp_stat_sn = login.exp_stat_sn;
    let mut request = TextRequest {
        immediate: true,
        final_bit: true,
        continue_bit: false,
        lun: 0,
        itt: 1,
        ttt: RESERVED_TAG,
        cmd_sn: last.exp_cmd_sn,
        exp_stat_sn,
        data: keys::encode(&[KeyValue::new("SendTargets", "All")]),
    };
    let mut text = Vec::new();
    for _ in 0..64 {
        write_pdu(&mut stream, &Pdu::TextRequest(request.clone()))?;
        let r = match read_pdu(&mut stream, false, false, config.max_recv_data_segment_length)? {
            Pdu::TextResponse(r) if r.itt == request.itt => r,
            other => return Err(Error::Protocol(format!("{:?} in answer to SendTargets", other.opcode()))),
        };
        exp_stat_sn = r.stat_sn.wrapping_add(1);
        text.extend_from_slice(&r.data);
        if r.final_bit {
            let mut found: Vec<Discovered> = Vec::new();
            for kv in keys::parse_allowing_duplicates(&text)? {
                match (kv.key.as_str(), found.last_mut()) {
                    ("TargetName", _) => found.push(Discovered { name: kv.value, addresses: Vec::new() }),
                    ("TargetAddress", Some(t)) => t.addresses.push(kv.value),
                    _ => return Err(Error::Protocol(format!("unexpected {}={} in SendTargets", kv.key, kv.value))),
                }
            }
            return Ok(found);
        }
        // More to come: continue the exchange with the target's TTT (§11.10.4).
        request = TextRequest { ttt: r.ttt, exp_stat_sn, data: Vec::new(), ..request };
    }
    Err(Error::Protocol("SendTargets answer did not end after 64 Text Responses".into()))
}

/// A completed command: its tag and its outcome.
pub type Completion = (Tag, Result<Response, Error>);

/// What [`Session::execute_retrying_ua`] saw: the final response and the
/// unit attentions it retried through, in order.
#[derive(Debug, Clone)]
pub struct Retried {
    pub response: Response,
    pub unit_attentions: Vec<Sense>,
}

/// A logged-in normal session. Dropping it closes the connection (without
/// a logout); outstanding commands then fail with [`Error::Closed`].
pub struct Session {
    shared: Arc<Monitor>,
    stream: TcpStream,
    params: Params,
    timeout: Duration,
    tsih: u16,
    isid: Isid,
    block_sizes: Mutex<HashMap<u64, u32>>,
    threads: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("tsih", &self.tsih).field("isid", &self.isid.to_string()).finish()
    }
}

impl Session {
    /// Connects and logs in (no authentication): security negotiation,
    /// then operational negotiation, then the full feature phase.
    pub fn login(addr: impl ToSocketAddrs, config: &Config) -> Result<Session, Error> {
        let mut stream = connect(addr, config)?;
        let setup = |s: &TcpStream| -> std::io::Result<()> {
            s.set_nodelay(true)?;
            s.set_read_timeout(Some(config.timeout))?;
            s.set_write_timeout(Some(config.timeout))
        };
        setup(&stream).map_err(|e| Error::io("socket options", e))?;
        let isid = config.isid.unwrap_or_else(new_isid);
        let mut neg = Negotiation::new(config);
        let mut login = Login {
            stream: &mut stream,
            isid,
            cmd_sn: 1,
            exp_stat_sn: 0,
            max_data: config.max_recv_data_segment_length,
        };
        login.stage(LoginStage::Security, LoginStage::Operational, security_keys(config), &mut neg)?;
        let last =
            login.stage(LoginStage::Operational, LoginStage::FullFeature, operational_offer(config), &mut neg)?;
        let exp_stat_sn = login.exp_stat_sn;
        let params = neg.finish();

        // Full feature phase: the reader blocks without a timeout (waits
        // are bounded on the callers' side); writes keep theirs.
        stream.set_read_timeout(None).map_err(|e| Error::io("socket options", e))?;
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Monitor {
            state: Mutex::new(State {
                tx: Some(tx),
                params: params.clone(),
                cmd_sn: last.exp_cmd_sn,
                exp_cmd_sn: last.exp_cmd_sn,
                max_cmd_sn: last.max_cmd_sn,
                exp_stat_sn,
                next_itt: 1,
                tasks: HashMap::new(),
                done: HashMap::new(),
                order: VecDeque::new(),
                closed: None,
                pings_answered: 0,
                async_messages: Vec::new(),
                nop_replies: HashSet::new(),
                logout: None,
                tmf_replies: HashMap::new(),
            }),
            cv: Condvar::new(),
        });
        let clone = |s: &TcpStream| s.try_clone().map_err(|e| Error::io("socket clone", e));
        let (rd, wr) = (clone(&stream)?, clone(&stream)?);
        let mut threads = Vec::new();
        let (s, hd, dd, max) =
            (shared.clone(), params.header_digest, params.data_digest, params.initiator_max_recv_data_segment_length);
        let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
            std::thread::Builder::new().name(name.into()).spawn(f).map_err(|e| Error::io("spawn", e))
        };
        threads.push(spawn("iscsi-reader", Box::new(move || reader(s, rd, hd, dd, max)))?);
        let s = shared.clone();
        threads.push(spawn("iscsi-writer", Box::new(move || writer(s, wr, rx)))?);
        Ok(Session {
            shared,
            stream,
            params,
            timeout: config.timeout,
            tsih: last.tsih,
            isid,
            block_sizes: Mutex::new(HashMap::new()),
            threads,
        })
    }

    /// The negotiated parameters.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// The session's TSIH, as the target's control plane names it.
    pub fn tsih(&self) -> u16 {
        self.tsih
    }

    pub fn isid(&self) -> Isid {
        self.isid
    }

    /// The default bound of waits.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Why the session ended, if it did.
    pub fn closed(&self) -> Option<String> {
        self.shared.lock().closed.clone()
    }

    /// Commands submitted and not yet answered.
    pub fn outstanding(&self) -> usize {
        self.shared.lock().tasks.len()
    }

    /// NOP-In pings of the target this session answered.
    pub fn pings_answered(&self) -> u64 {
        self.shared.lock().pings_answered
    }

    /// Asynchronous Messages received so far.
    pub fn async_messages(&self) -> Vec<AsyncMessage> {
        self.shared.lock().async_messages.clone()
    }

    /// The session's state once the target's CmdSN window has room for a
    /// command, waiting at most the session's timeout.
    fn window_open(&self) -> Result<MutexGuard<'_, State>, Error> {
        let deadline = Instant::now() + self.timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(e) = st.closed_error() {
                return Err(e);
            }
            if !sn_lt(st.max_cmd_sn, st.cmd_sn) {
                return Ok(st);
            }
            let (g, ok) = self.shared.wait_until(st, deadline);
            st = g;
            if !ok {
                return Err(Error::Timeout { what: "the CmdSN window to open", after: self.timeout });
            }
        }
    }

    /// Sends a command; returns at once with its tag (several may be
    /// outstanding). Waits, at most the session's timeout, while the
    /// target's CmdSN window is closed.
    pub fn submit(&self, cmd: Command) -> Result<Tag, Error> {
        let len = u32::try_from(cmd.data_out.len()).map_err(|_| Error::Invalid("write data over 4 GiB".into()))?;
        if len > 0 && cmd.read_len > 0 {
            return Err(Error::Invalid("bidirectional commands are not supported".into()));
        }
        if cmd.cdb.is_empty() || cmd.cdb.len() > 16 {
            return Err(Error::Invalid(format!("CDB of {} bytes", cmd.cdb.len())));
        }
        let mut st = self.window_open()?;
        let itt = st.alloc_itt();
        let cmd_sn = st.cmd_sn;
        let write = len > 0;
        let plan = plan_write(&st.params, len);
        let data = Arc::new(cmd.data_out);
        let lun_field = encode_lun(cmd.lun);
        let pdu = ScsiCommand {
            immediate: false,
            final_bit: plan.command_final,
            read: cmd.read_len > 0,
            write,
            attr: cmd.attr,
            lun: lun_field,
            itt,
            expected_data_transfer_length: if write { len } else { cmd.read_len },
            cmd_sn,
            exp_stat_sn: st.exp_stat_sn,
            cdb: cmd.cdb,
            bidi_read_length: None,
            data: data.get(..plan.immediate as usize).unwrap_or_default().to_vec(),
        };
        st.send(&Pdu::ScsiCommand(pdu))?;
        st.cmd_sn = st.cmd_sn.wrapping_add(1);
        for p in &plan.unsolicited {
            let out = DataOut {
                final_bit: p.final_bit,
                lun: lun_field,
                itt,
                ttt: RESERVED_TAG,
                exp_stat_sn: st.exp_stat_sn,
                data_sn: p.data_sn,
                buffer_offset: p.offset,
                data: data.get(p.offset as usize..(p.offset + p.len) as usize).unwrap_or_default().to_vec(),
            };
            st.send(&Pdu::DataOut(out))?;
        }
        st.tasks.insert(
            itt,
            Task {
                lun_field,
                data_out: data,
                read_len: cmd.read_len,
                data_in: Vec::new(),
                next_data_sn: 0,
                held_r2ts: None,
            },
        );
        Ok(Tag(itt))
    }

    /// Sends a write command that announces `edtl` bytes of data-out (the
    /// Expected Data Transfer Length, whatever `cmd.data_out` holds) and
    /// sends none: no immediate or unsolicited data, and the target's R2Ts
    /// are left unanswered until [`Session::release`] (then answered from
    /// `cmd.data_out`). What a slow or hostile initiator does; for tests.
    pub fn submit_withheld(&self, cmd: Command, edtl: u32) -> Result<Tag, Error> {
        if cmd.cdb.is_empty() || cmd.cdb.len() > 16 {
            return Err(Error::Invalid(format!("CDB of {} bytes", cmd.cdb.len())));
        }
        let mut st = self.window_open()?;
        let itt = st.alloc_itt();
        let cmd_sn = st.cmd_sn;
        let lun_field = encode_lun(cmd.lun);
        let pdu = ScsiCommand {
            immediate: false,
            final_bit: true,
            read: false,
            write: true,
            attr: cmd.attr,
            lun: lun_field,
            itt,
            expected_data_transfer_length: edtl,
            cmd_sn,
            exp_stat_sn: st.exp_stat_sn,
            cdb: cmd.cdb,
            bidi_read_length: None,
            data: Vec::new(),
        };
        st.send(&Pdu::ScsiCommand(pdu))?;
        st.cmd_sn = st.cmd_sn.wrapping_add(1);
        st.tasks.insert(
            itt,
            Task {
                lun_field,
                data_out: Arc::new(cmd.data_out),
                read_len: 0,
                data_in: Vec::new(),
                next_data_sn: 0,
                held_r2ts: Some(Vec::new()),
            },
        );
        Ok(Tag(itt))
    }

    /// Answers the R2Ts held for a [`Session::submit_withheld`] command, and
    /// those that come later; false if the command is no longer outstanding.
    pub fn release(&self, tag: Tag) -> Result<bool, Error> {
        let mut st = self.shared.lock();
        let Some(held) = st.tasks.get_mut(&tag.0).and_then(|t| t.held_r2ts.take()) else { return Ok(false) };
        for r in held {
            st.on_r2t(r)?;
        }
        Ok(true)
    }

    /// R2Ts held so far for a [`Session::submit_withheld`] command.
    pub fn held_r2ts(&self, tag: Tag) -> usize {
        self.shared.lock().tasks.get(&tag.0).and_then(|t| t.held_r2ts.as_ref()).map_or(0, Vec::len)
    }

    /// The response of `tag`, waiting at most `timeout`; `Ok(None)` if it
    /// has not come by then (the command stays outstanding).
    pub fn wait_timeout(&self, tag: Tag, timeout: Duration) -> Result<Option<Response>, Error> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            if let Some(r) = st.done.remove(&tag.0) {
                st.order.retain(|t| *t != tag.0);
                return r.map(Some);
            }
            if !st.tasks.contains_key(&tag.0) {
                return Err(Error::UnknownTag(tag));
            }
            let (g, ok) = self.shared.wait_until(st, deadline);
            st = g;
            if !ok {
                return Ok(None);
            }
        }
    }

    /// The response of `tag`, waiting at most the session's timeout.
    pub fn wait(&self, tag: Tag) -> Result<Response, Error> {
        self.wait_timeout(tag, self.timeout)?
            .ok_or(Error::Timeout { what: "a command's response", after: self.timeout })
    }

    /// The first completed command not yet waited for (in completion order),
    /// waiting at most `timeout`; `Ok(None)` if none completed by then.
    pub fn wait_any_timeout(&self, timeout: Duration) -> Result<Option<Completion>, Error> {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        loop {
            while let Some(itt) = st.order.pop_front() {
                if let Some(r) = st.done.remove(&itt) {
                    return Ok(Some((Tag(itt), r)));
                }
            }
            if st.tasks.is_empty() {
                return Err(Error::Invalid("no command outstanding".into()));
            }
            let (g, ok) = self.shared.wait_until(st, deadline);
            st = g;
            if !ok {
                return Ok(None);
            }
        }
    }

    /// Like [`Session::wait_any_timeout`] with the session's timeout; a
    /// command that failed (closed, rejected) gives its error here.
    pub fn wait_any(&self) -> Result<(Tag, Response), Error> {
        match self.wait_any_timeout(self.timeout)? {
            Some((tag, r)) => r.map(|r| (tag, r)),
            None => Err(Error::Timeout { what: "any command's response", after: self.timeout }),
        }
    }

    /// Submits and waits.
    pub fn execute(&self, cmd: Command) -> Result<Response, Error> {
        let tag = self.submit(cmd)?;
        self.wait(tag)
    }

    /// Executes `cmd`, again while it ends in UNIT ATTENTION (at most
    /// `max_retries` times), and reports the unit attentions seen.
    pub fn execute_retrying_ua(&self, cmd: &Command, max_retries: usize) -> Result<Retried, Error> {
        let mut unit_attentions = Vec::new();
        loop {
            let response = self.execute(cmd.clone())?;
            if !response.is_unit_attention() || unit_attentions.len() >= max_retries {
                return Ok(Retried { response, unit_attentions });
            }
            if let Some(s) = response.sense {
                unit_attentions.push(s);
            }
        }
    }

    /// Pings the target (NOP-Out with a tag) and waits for its NOP-In.
    pub fn ping(&self) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        let mut st = self.shared.lock();
        let itt = st.alloc_itt();
        let out = NopOut {
            immediate: true,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: st.cmd_sn,
            exp_stat_sn: st.exp_stat_sn,
            data: b"lunar".to_vec(),
        };
        st.send(&Pdu::NopOut(out))?;
        loop {
            if st.nop_replies.remove(&itt) {
                return Ok(());
            }
            if let Some(e) = st.closed_error() {
                return Err(e);
            }
            let (g, ok) = self.shared.wait_until(st, deadline);
            st = g;
            if !ok {
                return Err(Error::Timeout { what: "the NOP-In answer", after: self.timeout });
            }
        }
    }

    /// Sends a task management function (immediate) about `lun` and, for
    /// ABORT TASK, the command `referenced`, and waits (at most the
    /// session's timeout) for the target's response. A command a TMF
    /// aborted stays outstanding here (the target sends no status for it).
    pub fn task_management(
        &self,
        function: TaskMgmtFunction,
        lun: u64,
        referenced: Option<Tag>,
    ) -> Result<TmfResponseCode, Error> {
        let deadline = Instant::now() + self.timeout;
        let mut st = self.shared.lock();
        let itt = st.alloc_itt();
        let req = TaskMgmtRequest {
            immediate: true,
            function,
            lun: encode_lun(lun),
            itt,
            referenced_task_tag: referenced.map_or(RESERVED_TAG, |t| t.0),
            cmd_sn: st.cmd_sn,
            exp_stat_sn: st.exp_stat_sn,
            // The referenced task's CmdSN is not kept; the previous one is
            // a CmdSN already sent (§11.5.3 lets the target ignore it when
            // the tag names the task).
            ref_cmd_sn: st.cmd_sn.wrapping_sub(1),
            exp_data_sn: 0,
        };
        st.send(&Pdu::TaskMgmtRequest(req))?;
        loop {
            if let Some(r) = st.tmf_replies.remove(&itt) {
                return Ok(r);
            }
            if let Some(e) = st.closed_error() {
                return Err(e);
            }
            let (g, ok) = self.shared.wait_until(st, deadline);
            st = g;
            if !ok {
                return Err(Error::Timeout { what: "the task management response", after: self.timeout });
            }
        }
    }

    /// Logs out (closing the session) and closes the connection. Commands
    /// still outstanding fail with [`Error::Closed`].
    pub fn logout(self) -> Result<(), Error> {
        let deadline = Instant::now() + self.timeout;
        let mut st = self.shared.lock();
        let itt = st.alloc_itt();
        let req = LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseSession,
            itt,
            cid: 0,
            cmd_sn: st.cmd_sn,
            exp_stat_sn: st.exp_stat_sn,
        };
        st.send(&Pdu::LogoutRequest(req))?;
        let response = loop {
            if let Some(l) = st.logout.take() {
                break l;
            }
            if let Some(e) = st.closed_error() {
                return Err(e);
            }
            let (g, ok) = self.shared.wait_until(st, deadline);
            st = g;
            if !ok {
                return Err(Error::Timeout { what: "the Logout Response", after: self.timeout });
            }
        };
        drop(st);
        if response.itt != itt || response.response != LogoutResponseCode::Closed {
            return Err(Error::Protocol(format!("logout answered {:?}", response.response)));
        }
        Ok(())
    }

    // ----- helpers ---------------------------------------------------------

    /// The block size the read/write helpers use for `lun`: 512 until
    /// [`Session::read_capacity16`] or [`Session::set_block_size`] says otherwise.
    pub fn block_size(&self, lun: u64) -> u32 {
        self.block_sizes.lock().unwrap_or_else(|e| e.into_inner()).get(&lun).copied().unwrap_or(512)
    }

    pub fn set_block_size(&self, lun: u64, block_size: u32) {
        self.block_sizes.lock().unwrap_or_else(|e| e.into_inner()).insert(lun, block_size);
    }

    pub fn test_unit_ready(&self, lun: u64) -> Result<Response, Error> {
        self.execute(Command::test_unit_ready(lun))
    }

    pub fn inquiry(&self, lun: u64) -> Result<Response, Error> {
        self.execute(Command::inquiry(lun, 96))
    }

    /// REPORT LUNS to `lun`; the list is [`crate::parse_report_luns`] of the data.
    pub fn report_luns(&self, lun: u64) -> Result<Response, Error> {
        self.execute(Command::report_luns(lun, 8 + 8 * 1024))
    }

    /// READ CAPACITY (16); when GOOD, the LUN's block size is remembered for
    /// the read/write helpers. Parse the data with [`Capacity::parse`].
    pub fn read_capacity16(&self, lun: u64) -> Result<Response, Error> {
        let r = self.execute(Command::read_capacity16(lun))?;
        if let Some(c) = r.is_good().then(|| Capacity::parse(&r.data)).flatten() {
            self.set_block_size(lun, c.block_size);
        }
        Ok(r)
    }

    /// READ (16) command for `blocks` blocks at `lba`.
    pub fn read_command(&self, lun: u64, lba: u64, blocks: u32) -> Command {
        Command::read16(lun, lba, blocks, self.block_size(lun), false)
    }

    /// WRITE (16) command for `data` at `lba` (FUA when asked).
    pub fn write_command(&self, lun: u64, lba: u64, data: Vec<u8>, fua: bool) -> Result<Command, Error> {
        let bs = self.block_size(lun);
        if data.is_empty() || !data.len().is_multiple_of(bs as usize) {
            return Err(Error::Invalid(format!("{} bytes is not a whole number of {bs}-byte blocks", data.len())));
        }
        Ok(Command::write16(lun, lba, data, bs, fua))
    }

    pub fn read(&self, lun: u64, lba: u64, blocks: u32) -> Result<Response, Error> {
        self.execute(self.read_command(lun, lba, blocks))
    }

    pub fn write(&self, lun: u64, lba: u64, data: Vec<u8>) -> Result<Response, Error> {
        self.execute(self.write_command(lun, lba, data, false)?)
    }

    pub fn write_fua(&self, lun: u64, lba: u64, data: Vec<u8>) -> Result<Response, Error> {
        self.execute(self.write_command(lun, lba, data, true)?)
    }

    pub fn submit_read(&self, lun: u64, lba: u64, blocks: u32) -> Result<Tag, Error> {
        self.submit(self.read_command(lun, lba, blocks))
    }

    pub fn submit_write(&self, lun: u64, lba: u64, data: Vec<u8>, fua: bool) -> Result<Tag, Error> {
        self.submit(self.write_command(lun, lba, data, fua)?)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.shared.close("session closed by the initiator".into());
        let _ = self.stream.shutdown(Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

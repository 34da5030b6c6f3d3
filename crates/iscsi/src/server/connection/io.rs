//! The connection's loop and its socket: it frames PDUs from the bytes
//! read, hands them and the events of the connection's channel to the
//! handlers, then writes the answers they queued, once per batch; it
//! sleeps until the socket, the channel, a deadline or the server's
//! shutdown wakes it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::tcp::OwnedReadHalf;
use tokio::sync::mpsc;

use super::{Conn, Event, Flow, Phase, LOGOUT_GRACE};
use crate::pdu::{decode_frame, frame_length, Bhs, Pdu, PduError, BHS_LEN};
use crate::server::limits::LimitCounters;
use crate::server::End;

/// Time a write of our answers may wait for the peer to read: a peer that
/// stops reading is disconnected rather than left holding its answers.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Bytes the reader asks the socket for at a time.
const READ_CHUNK: usize = 64 << 10;

/// Largest AHS (TotalAHSLength is a byte of 4-byte words), header and
/// data digests: what a PDU adds to its data segment.
const PDU_OVERHEAD: usize = BHS_LEN + 255 * 4 + 4 + 3 + 4;

/// The shortest poll: below it the connection sleeps at once.
const POLL_MIN: Duration = Duration::from_micros(2);

/// A connection's adaptive poll window. After writing its answers the loop
/// reads the socket (and looks at its channel) for up to the window before
/// it sleeps, as a vhost-user request queue polls its ring: an initiator
/// at queue depth 1 sends its next command tens of microseconds after
/// reading an answer, and catching it then costs no wake-up of the thread
/// (the epoll wait, the scheduler's wake-up and the runtime's turn). The
/// window follows the initiator: after a sleep that a command ended sooner
/// than the longest window, it is twice the time the command took to come;
/// it halves when a poll finds nothing, so an idle connection stops
/// polling within a few windows.
pub(super) struct Poll {
    max: Duration,
    window: Duration,
    /// When the last poll that found nothing began (the loop then slept).
    missed_at: Option<Instant>,
    /// Polls that found something, not yet added to the server's count
    /// (added when the connection sleeps or ends: no shared counter is
    /// touched while polling catches every command).
    caught: u64,
}

impl Poll {
    pub(super) fn new(max: Duration) -> Poll {
        Poll { max, window: max, missed_at: None, caught: 0 }
    }

    fn window(&self) -> Duration {
        self.window
    }

    /// A poll found something `after` it began.
    fn caught(&mut self, after: Duration) {
        self.missed_at = None;
        self.caught += 1;
        self.window = self.window.max(after * 2).min(self.max);
    }

    /// A poll that began at `began` found nothing: the loop sleeps.
    fn missed(&mut self, began: Instant) {
        self.missed_at = Some(began);
        self.window /= 2;
        if self.window < POLL_MIN {
            self.window = Duration::ZERO;
        }
    }

    /// Adds the polls that found something to the server's count.
    pub(super) fn flush(&mut self, to: &AtomicU64) {
        if self.caught > 0 {
            to.fetch_add(std::mem::take(&mut self.caught), Ordering::Relaxed);
        }
    }

    /// The loop woke for the socket or its channel: if that came sooner
    /// than the longest window after the poll began, the next window is
    /// long enough to catch it.
    fn woke(&mut self) {
        if let Some(began) = self.missed_at.take() {
            let gap = began.elapsed();
            if gap < self.max {
                self.window = (gap * 2).max(self.window * 2).clamp(POLL_MIN, self.max);
            }
        }
    }
}

/// A frame that did not decode, with its header when it had one.
type BadFrame = (PduError, Option<Box<Bhs>>);

/// What woke the connection loop.
enum Wake {
    Event(Option<Event>),
    Killed,
    Read(std::io::Result<usize>),
    Deadline,
    Shutdown,
}

/// The read half of the socket and what was read from it, not yet framed.
pub(super) struct Reader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
    /// Where the next PDU starts in `buf`.
    start: usize,
    /// When the first bytes of a PDU not yet whole arrived: the PDU must
    /// be whole within the negotiation timeout.
    partial_since: Option<Instant>,
}

impl Reader {
    pub(super) fn new(half: OwnedReadHalf) -> Reader {
        Reader { half, buf: Vec::with_capacity(READ_CHUNK), start: 0, partial_since: None }
    }

    /// Reads what the socket has, at least [`READ_CHUNK`] bytes' room
    /// given. Cancel-safe (nothing is read unless it completes), so the
    /// loop may wait for it beside other things.
    async fn read(&mut self) -> std::io::Result<usize> {
        self.make_room();
        self.half.read_buf(&mut self.buf).await
    }

    /// Reads what the socket has without waiting: `WouldBlock` when it
    /// has nothing.
    fn try_read(&mut self) -> std::io::Result<usize> {
        self.make_room();
        self.half.try_read_buf(&mut self.buf)
    }

    /// At least [`READ_CHUNK`] bytes of room after what was read.
    fn make_room(&mut self) {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK {
            self.buf.reserve(READ_CHUNK);
        }
    }

    /// The next whole PDU in the buffer, if there is one. PDUs are framed
    /// only up to `max_data` bytes of data (our MaxRecvDataSegmentLength,
    /// also during login, where the initiator is held to 8192): a longer
    /// one is refused (and counted in `oversized`) before its data arrives.
    fn next_frame(
        &mut self,
        (hd, dd): (bool, bool),
        max_data: u32,
        oversized: &AtomicU64,
    ) -> Option<Result<Pdu, BadFrame>> {
        let max_frame = max_data as usize + PDU_OVERHEAD;
        let avail = &self.buf[self.start..];
        if avail.is_empty() {
            self.partial_since = None;
        } else if self.partial_since.is_none() {
            self.partial_since = Some(Instant::now());
        }
        let need = match frame_length(avail, hd, dd) {
            Err(e) => return Some(Err((e, None))),
            Ok(None) => return None,
            Ok(Some(n)) if n > max_frame => {
                // Refused before its data arrives: no buffer is sized from
                // a length the peer only announced.
                LimitCounters::bump(oversized);
                return Some(Err((PduError::DataSegmentTooLong { length: n, max: max_data }, None)));
            }
            Ok(Some(n)) => n,
        };
        if avail.len() < need {
            // Make room for the rest of this PDU, and keep the buffer from growing forever.
            if self.start > 0 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            if self.buf.capacity() < need {
                self.buf.reserve(need - self.buf.len());
            }
            return None;
        }
        let frame = &avail[..need];
        let result = match decode_frame(frame, hd, dd) {
            Ok(Some((pdu, _))) => Ok(pdu),
            Ok(None) => return None,
            Err(e) => {
                let bhs = frame.first_chunk::<BHS_LEN>().and_then(|h| crate::pdu::decode_bhs(h).ok());
                Err((e, bhs.map(Box::new)))
            }
        };
        self.start += need;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        // The next PDU's clock starts with its first byte.
        self.partial_since = (self.start < self.buf.len()).then(Instant::now);
        Some(result)
    }
}

impl Conn {
    /// When the connection must have made progress: the end of the login
    /// phase, of a text exchange, or of a PDU whose first bytes arrived.
    fn deadline(&self) -> Option<Instant> {
        let timeout = self.shared.resources.negotiation_timeout;
        let login = matches!(self.phase, Phase::Login(_)).then_some(self.accepted);
        let negotiation =
            [login, self.text_since, self.reader.partial_since].into_iter().flatten().min().map(|t| t + timeout);
        [negotiation, self.logout_by].into_iter().flatten().min()
    }

    /// Runs the connection until it closes (the caller then cleans up).
    pub(super) async fn run(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>) {
        loop {
            // Everything ready first: whole PDUs already read, then events
            // (completions), then one write for all the answers.
            let mut flow = Flow::Continue;
            while flow == Flow::Continue {
                match self.next_frame() {
                    Some(Ok(pdu)) => {
                        self.liveness.heard();
                        flow = self.on_pdu(pdu).await;
                    }
                    Some(Err((e, bhs))) => flow = self.on_bad(e, bhs),
                    None => break,
                }
            }
            while flow == Flow::Continue {
                match rx.try_recv() {
                    Ok(ev) => flow = self.on_event(ev),
                    Err(_) => break,
                }
            }
            let written = self.write_out().await;
            if flow == Flow::Close || written == Flow::Close {
                return;
            }
            // Poll the socket and the channel a little before sleeping:
            // an initiator that sends its next command within the window
            // costs no wake-up (see `Poll`).
            if let Some(wake) = self.poll(rx).await {
                match wake {
                    Wake::Read(Ok(n)) if n > 0 => continue,
                    Wake::Event(Some(ev)) => {
                        if self.on_event(ev) == Flow::Close {
                            let _ = self.write_out().await;
                            return;
                        }
                        continue;
                    }
                    _ => {
                        let _ = self.write_out().await;
                        return;
                    }
                }
            }
            // Then sleep until the socket or the channel has something.
            let deadline = self.deadline();
            let asked_to_logout = self.logout_by.is_some();
            let (reader, kill, shutdown) = (&mut self.reader, &mut self.kill, &mut self.shutdown);
            let wake = tokio::select! {
                biased;
                ev = rx.recv() => Wake::Event(ev),
                how = async {
                    match kill {
                        // Once asked to log out, only a kill "now" wakes us again.
                        Some(k) => match k.wait_for(|k| *k == End::Now || (*k == End::Logout && !asked_to_logout)).await {
                            Ok(how) => *how,
                            Err(_) => std::future::pending::<End>().await,
                        },
                        None => std::future::pending::<End>().await,
                    }
                } => if how == End::Logout { Wake::Shutdown } else { Wake::Killed },
                r = reader.read() => Wake::Read(r),
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d.into()).await,
                        None => std::future::pending::<()>().await,
                    }
                } => Wake::Deadline,
                _ = async {
                    if asked_to_logout || shutdown.wait_for(|s| *s).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                } => Wake::Shutdown,
            };
            if matches!(wake, Wake::Read(Ok(1..)) | Wake::Event(Some(_))) {
                self.poll.woke();
            }
            let flow = match wake {
                Wake::Shutdown => self.on_shutdown(),
                Wake::Deadline if self.logout_by.is_some_and(|t| t <= Instant::now()) => {
                    tracing::info!(peer = %self.peer, "no logout within {LOGOUT_GRACE:?} of the request: closing");
                    Flow::Close
                }
                Wake::Deadline => {
                    LimitCounters::bump(&self.shared.hits.negotiation_timeouts);
                    self.warn(format_args!(
                        "login, text negotiation or PDU not finished within {:?}: dropping the connection",
                        self.shared.resources.negotiation_timeout
                    ));
                    Flow::Close
                }
                Wake::Event(Some(ev)) => self.on_event(ev),
                Wake::Event(None) | Wake::Killed => {
                    tracing::debug!(peer = %self.peer, "connection ended by the target");
                    let _ = self.write_out().await;
                    return;
                }
                Wake::Read(Ok(0)) | Wake::Read(Err(_)) => Flow::Close,
                Wake::Read(Ok(_)) => Flow::Continue,
            };
            if flow == Flow::Close {
                let _ = self.write_out().await;
                return;
            }
        }
    }

    /// Polls the socket and the connection's channel for up to the poll
    /// window; `None` when neither had anything (the loop then sleeps).
    async fn poll(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>) -> Option<Wake> {
        let window = self.poll.window();
        if window.is_zero() || !matches!(self.phase, Phase::Normal) {
            return None;
        }
        let polled = Instant::now();
        while polled.elapsed() < window {
            // Yield, then look. The yield is what makes looking worth it:
            // the socket's readiness is what the runtime's last look at
            // its epoll said (a read of a socket not marked readable
            // returns at once, without a system call), and a yielding task
            // runs again only after the runtime has looked (an epoll wait
            // without timeout). Spinning between yields would look at stale
            // readiness: a 20 µs spin here cost 10 µs per command at QD1.
            // The yield also runs the thread's other tasks (a command whose
            // backend waited, other connections).
            tokio::task::yield_now().await;
            if let Ok(ev) = rx.try_recv() {
                self.poll.caught(polled.elapsed());
                return Some(Wake::Event(Some(ev)));
            }
            match self.reader.try_read() {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                r => {
                    self.poll.caught(polled.elapsed());
                    return Some(Wake::Read(r));
                }
            }
        }
        self.poll.missed(polled);
        self.poll.flush(&self.shared.polls_caught);
        None
    }

    /// The next whole PDU read, if there is one.
    fn next_frame(&mut self) -> Option<Result<Pdu, BadFrame>> {
        let max_data = self.shared.limits.max_recv_data_segment_length;
        self.reader.next_frame(self.digests, max_data, &self.shared.hits.oversized_pdus)
    }

    /// Numbers a PDU and queues it for the next write, with the digests
    /// in force.
    pub(super) fn queue_out(&mut self, mut pdu: Pdu) {
        self.number(&mut pdu);
        let (hd, dd) = self.digests;
        self.out.push(&pdu, hd, dd);
    }

    /// Writes what the handlers queued, with as few vectored writes as the
    /// socket allows (the run loop calls it once per batch of events, so
    /// responses to pipelined commands share system calls).
    ///
    /// Once the answers are out, the buffer space of the tasks they
    /// finished is free again, and tasks that waited for it go on (which
    /// may queue more to write: R2Ts).
    async fn write_out(&mut self) -> Flow {
        loop {
            if !self.out.is_empty() {
                let r = tokio::time::timeout(WRITE_TIMEOUT, self.out.write_to(&mut self.wr)).await;
                self.out.clear();
                match r {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(peer = %self.peer, "write: {e}");
                        return Flow::Close;
                    }
                    Err(_) => {
                        LimitCounters::bump(&self.shared.hits.write_stalls);
                        self.warn(format_args!(
                            "the initiator reads nothing for {WRITE_TIMEOUT:?}: dropping the connection"
                        ));
                        return Flow::Close;
                    }
                }
            }
            self.buffers.written();
            if !self.buffers.waiting() {
                return Flow::Continue;
            }
            if self.resume_deferred().await == Flow::Close {
                return Flow::Close;
            }
            if self.out.is_empty() {
                return Flow::Continue;
            }
        }
    }

    /// Queues an answer; the connection goes on.
    pub(super) fn send(&mut self, pdu: Pdu) -> Flow {
        self.queue_out(pdu);
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(200);

    #[test]
    fn an_idle_connection_stops_polling_within_a_few_windows() {
        let mut p = Poll::new(MAX);
        assert_eq!(p.window(), MAX);
        let mut spent = Duration::ZERO;
        let mut polls = 0;
        while !p.window().is_zero() {
            spent += p.window();
            p.missed(Instant::now());
            polls += 1;
        }
        // 200 + 100 + 50 + ... µs: under twice the longest window.
        assert!(polls <= 8, "{polls} polls");
        assert!(spent < MAX * 2, "{spent:?} spent polling");
        // A wake-up after a long sleep does not start polling again...
        p.missed_at = Some(Instant::now() - MAX * 10);
        p.woke();
        assert_eq!(p.window(), Duration::ZERO);
    }

    #[test]
    fn the_window_follows_the_initiator() {
        let mut p = Poll::new(MAX);
        for _ in 0..10 {
            p.missed(Instant::now());
        }
        assert_eq!(p.window(), Duration::ZERO);
        // ...one that came sooner than the longest window does: twice the gap.
        p.missed_at = Some(Instant::now() - Duration::from_micros(40));
        p.woke();
        assert!(p.window() >= Duration::from_micros(80) && p.window() <= MAX, "{:?}", p.window());
        // Never beyond the longest window.
        p.missed_at = Some(Instant::now() - Duration::from_micros(150));
        p.woke();
        assert_eq!(p.window(), MAX);
        // A catch late in the window keeps it long enough to catch the next.
        let mut p = Poll::new(MAX);
        p.missed(Instant::now());
        p.caught(Duration::from_micros(90));
        assert_eq!(p.window(), Duration::from_micros(180));
        p.caught(Duration::from_micros(10));
        assert_eq!(p.window(), Duration::from_micros(180));
    }

    #[test]
    fn catches_are_added_to_the_server_s_count_once() {
        let count = AtomicU64::new(0);
        let mut p = Poll::new(MAX);
        p.caught(Duration::ZERO);
        p.caught(Duration::ZERO);
        p.flush(&count);
        p.flush(&count);
        assert_eq!(count.load(Ordering::Relaxed), 2);
    }
}

//! Requests and their life cycle.
//!
//! ```text
//! New ──submit──▶ Enqueued ──start──▶ Executing ──▶ Completed
//!                    ▲                   │  │ (status, sense, data)
//!                    │ restart on resume ▼  └─▶ Waiting ──▶ Completed
//!                    └────────────── Parked     (a detached operation's end)
//!                        (retry flag; `stop` error policy)
//! any state ──cancel──▶ Completed with TASK ABORTED (Executing: when its I/O ends)
//! ```
//! A request completes exactly once: its [`Completion`] is `FnOnce` (at most
//! once) and completes with TASK ABORTED if dropped unrun (at least once).

use lunar_scsi::Status;

/// What the initiator gets back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    /// Encoded sense data (empty unless CHECK CONDITION).
    pub sense: Vec<u8>,
    /// Data-in (empty when it went into the request's lent memory).
    pub data: Vec<u8>,
    /// Bytes of data-in placed in the memory the front-end lent the
    /// request ([`Request::data_in`]) instead of `data`.
    pub placed: usize,
}

impl Response {
    pub fn good(data: Vec<u8>) -> Self {
        Response { status: Status::Good, sense: Vec::new(), data, placed: 0 }
    }

    pub fn check_condition(sense: Vec<u8>) -> Self {
        Response { status: Status::CheckCondition, sense, data: Vec::new(), placed: 0 }
    }

    /// The status and sense of a failed command (CHECK CONDITION, or e.g.
    /// RESERVATION CONFLICT, which carries no sense).
    pub fn from_error(e: &lunar_scsi::ScsiError, descriptor_sense: bool) -> Self {
        let status = e.status();
        let sense = if status == Status::CheckCondition { e.sense().encode(descriptor_sense) } else { Vec::new() };
        Response { status, sense, data: Vec::new(), placed: 0 }
    }

    /// The request was aborted (task management, reset, removal, shutdown).
    pub fn aborted() -> Self {
        Response { status: Status::TaskAborted, sense: Vec::new(), data: Vec::new(), placed: 0 }
    }

    pub fn is_aborted(&self) -> bool {
        self.status == Status::TaskAborted
    }

    /// Bytes of data-in, wherever they are.
    pub fn data_in_len(&self) -> usize {
        self.data.len() + self.placed
    }
}

type Sink = Box<dyn FnOnce(Response) + Send + 'static>;

/// Where a request's response goes (to the front-end). Runs exactly once.
pub struct Completion {
    sink: Option<Sink>,
}

impl Completion {
    pub fn new(f: impl FnOnce(Response) + Send + 'static) -> Self {
        Completion { sink: Some(Box::new(f)) }
    }

    pub fn complete(mut self, response: Response) {
        if let Some(sink) = self.sink.take() {
            sink(response);
        }
    }

    /// Drops the completion without telling anyone (only for a target whose
    /// state was saved and handed over, where the loaded copy will complete).
    pub(crate) fn disarm(mut self) {
        self.sink = None;
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        if let Some(sink) = self.sink.take() {
            tracing::warn!("request dropped without completion; completing it as aborted");
            sink(Response::aborted());
        }
    }
}

impl std::fmt::Debug for Completion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.sink.is_some() { "Completion(pending)" } else { "Completion(done)" })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestState {
    /// In the list, not started (target stopped, queue moving, or just arrived).
    Enqueued,
    /// Backend I/O in flight on the owner thread.
    Executing,
    /// Failed under the `stop` error policy; re-issued on resume.
    Parked,
    /// Waiting for a device operation that runs detached from it (SANITIZE
    /// with IMMED=0, see `background.rs`): none of its I/O is in flight, a
    /// cancel completes it at once (the operation goes on), the operation's
    /// end completes it.
    Waiting,
}

/// A SCSI command in the target core. Plain data, `Send`: it lives in a
/// thread-confined list while the target runs, and moves with the list.
#[derive(Debug)]
pub struct Request {
    /// Initiator task tag.
    pub tag: u64,
    pub lun: u64,
    /// Inline up to 16 bytes (every fixed-length CDB): no allocation.
    pub cdb: CdbBytes,
    /// Data-out, complete (the front-end gathers it before submitting).
    /// Shared with the backend while a write runs: a request that may be
    /// retried keeps it without a copy.
    pub data_out: lunar_block::Bytes,
    /// Memory the front-end lent for the data-in (the guest's buffers of a
    /// virtio chain): a READ reads into it, any other command's data-in is
    /// copied in, and the response says how much ([`Response::placed`]).
    /// Not saved with the request: a loaded request answers in `data`.
    pub data_in: Option<lunar_block::SgBuf>,
    /// Opaque front-end state, saved and loaded with the request.
    pub frontend_data: Vec<u8>,
    pub(crate) id: u64,
    pub(crate) retry: bool,
    pub(crate) state: RequestState,
    pub(crate) cancelled: bool,
    pub(crate) completion: Option<Completion>,
    /// Arrival in its list and data-out size, for the statistics.
    pub(crate) stamp: Option<crate::stats::Stamp>,
}

/// A CDB as a request holds it.
pub type CdbBytes = smallvec::SmallVec<[u8; 16]>;

impl Request {
    pub fn new(
        tag: u64,
        lun: u64,
        cdb: impl Into<CdbBytes>,
        data_out: impl Into<lunar_block::Bytes>,
        completion: Completion,
    ) -> Self {
        Request {
            tag,
            lun,
            cdb: cdb.into(),
            data_out: data_out.into(),
            data_in: None,
            frontend_data: Vec::new(),
            id: 0,
            retry: false,
            state: RequestState::Enqueued,
            cancelled: false,
            completion: Some(completion),
            stamp: None,
        }
    }

    /// Lends memory for the data-in ([`Request::data_in`]).
    pub fn with_data_in(mut self, dest: lunar_block::SgBuf) -> Self {
        self.data_in = Some(dest);
        self
    }

    pub fn with_frontend_data(mut self, data: Vec<u8>) -> Self {
        self.frontend_data = data;
        self
    }

    pub fn retry(&self) -> bool {
        self.retry
    }

    pub fn state(&self) -> RequestState {
        self.state
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancelled
    }

    /// Completes the request (exactly once; later calls do nothing). Front-ends
    /// use it for a request they cannot submit (no such LUN).
    pub fn complete(&mut self, response: Response) {
        if let Some(c) = self.completion.take() {
            c.complete(response);
        }
    }
}

/// What an iteration callback asks the core to do with a request. Callbacks
/// only decide; the core acts after the list is no longer borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Leave it as it is.
    Keep,
    /// Cancel it (complete with TASK ABORTED; an executing one when its I/O ends).
    Cancel,
    /// If it carries the retry flag: clear it and issue it again.
    Restart,
}

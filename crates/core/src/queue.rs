//! Queues: the unit that lives on a thread.
//!
//! A [`Queue`] is what a front-end queue (an iSCSI connection, a virtqueue)
//! holds to reach one device. Its request list, a [`LocalQueue`], is `!Send`
//! (`Rc<RefCell<..>>`) and lives in the registry of the one thread that holds
//! it: the queue's I/O thread while the target runs, the main loop while it
//! is stopped. Other threads reach it only by sending a job there
//! ([`follow::dispatch`]); the list itself moves between threads only as a
//! [`Parcel`] of plain `Send` requests, after the holder drained its I/O.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use lunar_aio::{InFlight, IoContext};
use lunar_scsi::{Command, ExecContext, Nexus, ScsiError, Sense};

use crate::device::Device;
use crate::follow::{self, Arrival, Home};
use crate::policy::Verdict;
use crate::request::{Action, Completion, Request, RequestState, Response};
use crate::request_list::RequestList;
use crate::stats::{Cells, Recorder, Stamp};
use crate::sync::Arc as SyncArc;
use crate::threads::Contexts;
use crate::ua::UnitAttentions;
use std::sync::Arc;

thread_local! {
    /// The request lists held by this thread, by queue id.
    static REGISTRY: RefCell<HashMap<u64, Rc<RefCell<LocalQueue>>>> = RefCell::new(HashMap::new());
}

fn holds(home: &Home) -> bool {
    REGISTRY.with(|r| r.borrow().contains_key(&home.id()))
}

fn local(id: u64) -> Option<Rc<RefCell<LocalQueue>>> {
    REGISTRY.with(|r| r.borrow().get(&id).cloned())
}

/// The `Send + Sync` handle of a queue of one device.
pub struct Queue {
    home: SyncArc<Home>,
    device: Arc<Device>,
    /// The I/O thread the queue runs on while the target runs.
    io_thread: AtomicUsize,
    contexts: Arc<Contexts>,
    /// The I_T nexus of the front-end queue (reservations, unit attentions).
    nexus: Option<Nexus>,
    /// The pending unit attentions of the I_T_L nexus (SAM-5 5.14): shared
    /// by every queue of the device opened for the same nexus (see `ua.rs`),
    /// so not part of the list and never moved with it.
    unit_attentions: Arc<UnitAttentions>,
    /// This queue's counters, written by whichever thread holds its list.
    stats: Arc<Cells>,
    /// Commands of this queue inside the device's gate (written by the
    /// holder thread; read by a COMPARE AND WRITE waiting to enter).
    active: AtomicU64,
}

/// A queue's request list, on the thread that holds it.
pub(crate) struct LocalQueue {
    queue: Arc<Queue>,
    requests: RequestList,
    next_id: u64,
    /// Requests executing (backend I/O in flight) on this thread.
    inflight: InFlight,
    /// Hold new starts (target stopped, or the queue is about to move).
    held: bool,
    /// The context of ordinary commands, shared by their tasks (no per-command allocation).
    ctx: Rc<ExecContext>,
    /// Where completions are counted: the queue's cells and this thread's.
    recorder: Recorder,
}

/// A request list in transit between threads: plain `Send` data.
pub(crate) struct Parcel {
    queue: Arc<Queue>,
    requests: RequestList,
    next_id: u64,
}

impl std::fmt::Debug for Queue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Queue(#{} lun {} on {})", self.home.id(), self.device.lun(), self.home.owner())
    }
}

impl Queue {
    pub(crate) fn new(
        id: u64,
        device: Arc<Device>,
        io_thread: usize,
        holder: usize,
        contexts: Arc<Contexts>,
        nexus: Option<Nexus>,
    ) -> Arc<Queue> {
        let stats = Cells::new();
        device.stats().attach(id, stats.clone());
        let unit_attentions = device.share_unit_attentions(nexus.as_ref());
        Arc::new(Queue {
            stats,
            unit_attentions,
            home: SyncArc::new(Home::new(id, holder)),
            device,
            io_thread: AtomicUsize::new(io_thread),
            contexts,
            nexus,
            active: AtomicU64::new(0),
        })
    }

    pub(crate) fn active(&self) -> &AtomicU64 {
        &self.active
    }

    /// The I_T nexus of this queue (`None`: the anonymous one).
    pub fn nexus(&self) -> Option<&Nexus> {
        self.nexus.as_ref()
    }

    /// Whether commands of this queue come from `nexus`.
    pub(crate) fn is_nexus(&self, nexus: &Nexus) -> bool {
        match &self.nexus {
            Some(n) => n == nexus,
            None => *nexus == Nexus::anonymous(),
        }
    }

    /// I_T nexus loss of this queue's nexus on its LU (SAM-5 6.3.4, SPC-5
    /// 5.13, SBC-4 4.24), the one place both front-ends end a nexus: an
    /// iSCSI session that ends, a vhost-user I_T NEXUS RESET. The nexus's
    /// SPC-2 reservation is released and its held copy results dropped,
    /// the PREVENT ALLOW MEDIUM REMOVAL state ends, and, with `report`, I_T
    /// NEXUS LOSS OCCURRED (29h/07h) is established for the nexus. Call it
    /// once per LU (any one of the nexus's queues of the LU), from any
    /// thread; its effects are in place when it returns.
    pub fn nexus_lost(&self, report: bool) {
        let disk = self.device.disk();
        disk.reset_prevent();
        disk.nexus_lost(self.nexus.as_ref().unwrap_or(&Nexus::anonymous()));
        if report {
            self.push_unit_attention(lunar_scsi::sense::I_T_NEXUS_LOSS.sense());
        }
    }

    /// Establishes a unit attention for this queue's I_T_L nexus, from any
    /// thread, in place when this returns: every queue of the device opened
    /// for the same I_T nexus shares it, and reports it once (on whichever
    /// of them the nexus sends its next command that is not exempt), unless
    /// the same condition is pending already.
    pub fn push_unit_attention(&self, sense: Sense) {
        self.unit_attentions.push(sense);
    }

    /// The number of unit attentions pending for this queue's I_T_L nexus.
    pub fn pending_unit_attentions(&self) -> usize {
        self.unit_attentions.pending()
    }

    pub(crate) fn unit_attentions(&self) -> &Arc<UnitAttentions> {
        &self.unit_attentions
    }

    pub fn id(&self) -> u64 {
        self.home.id()
    }

    pub fn device(&self) -> &Arc<Device> {
        &self.device
    }

    /// The I/O thread this queue runs on while the target runs.
    pub fn io_thread(&self) -> usize {
        self.io_thread.load(Ordering::Acquire)
    }

    pub(crate) fn set_io_thread(&self, t: usize) {
        self.io_thread.store(t, Ordering::Release);
    }

    /// The thread that holds the list now (hint; see `follow`).
    pub fn holder(&self) -> usize {
        self.home.owner()
    }

    pub fn is_closed(&self) -> bool {
        self.home.is_closed()
    }

    /// Runs `job` on the thread holding this queue's list.
    pub(crate) fn dispatch(self: &Arc<Self>, job: impl FnOnce(Arrival) + Send + 'static) {
        if holds(&self.home) {
            job(Arrival::Here);
        } else {
            follow::dispatch(&self.contexts, &self.home, holds, Box::new(job));
        }
    }

    /// Submits a command from any thread. Its completion runs on the thread
    /// that holds the list when the command completes.
    pub fn submit(self: &Arc<Self>, request: Request) {
        let id = self.id();
        self.dispatch(move |arrival| match (arrival, local(id)) {
            (Arrival::Here, Some(lq)) => LocalQueue::insert(&lq, request),
            _ => {
                let mut request = request;
                request.complete(Response::check_condition(lunar_scsi::sense::LUN_NOT_SUPPORTED.sense().fixed()));
            }
        });
    }
}

impl Queue {
    /// Cancels the requests of this queue that match `pred` (task management:
    /// ABORT TASK, ABORT TASK SET). Runs on the holder; each cancelled
    /// request completes through its own completion (TASK ABORTED, or its
    /// real status if it finished first), an executing one once its I/O ends.
    pub fn cancel_where(self: &Arc<Self>, pred: impl Fn(&Request) -> bool + Send + Sync + 'static) {
        self.iterate_here(move |r: &mut Request| if pred(r) { Action::Cancel } else { Action::Keep }, || {});
    }

    /// Runs `f` for every request of this queue's list on the thread that
    /// holds it (following a move), acts on what it decided, then runs
    /// `after` there; only `after` if the queue closed first.
    pub(crate) fn iterate_here(
        self: &Arc<Self>,
        f: impl Fn(&mut Request) -> Action + Send + Sync + 'static,
        after: impl FnOnce() + Send + 'static,
    ) {
        let id = self.id();
        self.dispatch(move |arrival| {
            if let (Arrival::Here, Some(lq)) = (arrival, local(id)) {
                LocalQueue::iterate(&lq, &f);
            }
            after();
        });
    }
}

/// Outcome of deciding what to do with a request while the list is borrowed;
/// acted on after the borrow ends ("collect, then act").
enum Plan {
    Nothing,
    Complete(Request, Response),
    Execute(Command, lunar_block::Bytes, Option<lunar_block::SgBuf>, Rc<ExecContext>, lunar_aio::InFlightGuard),
}

impl LocalQueue {
    /// Installs a parcel in this thread's registry; starts its enqueued
    /// requests unless `held`.
    pub(crate) fn install(parcel: Parcel, held: bool) {
        let id = parcel.queue.id();
        let ctx = Rc::new(ExecContext { nexus: parcel.queue.nexus.clone(), ..ExecContext::default() });
        let thread = IoContext::current().map_or(crate::threads::MAIN_LOOP, |c| c.index());
        let recorder = Recorder {
            queue: parcel.queue.stats.clone(),
            thread: parcel.queue.contexts.stats().cells(thread).cloned().unwrap_or_else(Cells::new),
        };
        let lq = Rc::new(RefCell::new(LocalQueue {
            ctx,
            recorder,
            queue: parcel.queue,
            requests: parcel.requests,
            next_id: parcel.next_id,
            inflight: InFlight::new(),
            held,
        }));
        REGISTRY.with(|r| r.borrow_mut().insert(id, lq.clone()));
        if !held {
            LocalQueue::start_enqueued(&lq);
        }
    }

    /// A new, empty parcel for a queue.
    pub(crate) fn empty_parcel(queue: Arc<Queue>) -> Parcel {
        Parcel { queue, requests: RequestList::default(), next_id: 1 }
    }

    /// Removes the list of `queue_id` from this thread's registry, as a parcel.
    /// Call only once its in-flight I/O has drained.
    pub(crate) fn take(queue_id: u64) -> Option<Parcel> {
        let lq = REGISTRY.with(|r| r.borrow_mut().remove(&queue_id))?;
        let mut q = lq.borrow_mut();
        debug_assert_eq!(q.inflight.count(), 0, "list moved with I/O in flight");
        Some(Parcel { queue: q.queue.clone(), requests: std::mem::take(&mut q.requests), next_id: q.next_id })
    }

    pub(crate) fn get(queue_id: u64) -> Option<Rc<RefCell<LocalQueue>>> {
        local(queue_id)
    }

    pub(crate) fn inflight(&self) -> InFlight {
        self.inflight.clone()
    }

    /// Holds or releases new starts; releasing starts what was enqueued.
    pub(crate) fn set_held(lq: &Rc<RefCell<LocalQueue>>, held: bool) {
        lq.borrow_mut().held = held;
        if !held {
            LocalQueue::start_enqueued(lq);
        }
    }

    pub(crate) fn hold(&mut self) {
        self.held = true;
    }

    pub(crate) fn len(&self) -> usize {
        self.requests.len()
    }

    /// Read-only walk of the requests (main loop, stopped: `for_each_request_sync`).
    pub(crate) fn requests(&self) -> impl Iterator<Item = &Request> {
        self.requests.in_order()
    }

    /// Disarms every completion (the state was saved and handed over).
    pub(crate) fn disarm_all(&mut self) {
        for mut r in self.requests.take_all() {
            if let Some(c) = r.completion.take() {
                c.disarm();
            }
        }
    }

    fn insert(lq: &Rc<RefCell<LocalQueue>>, mut request: Request) {
        let (id, held) = {
            let mut q = lq.borrow_mut();
            let id = q.next_id;
            q.next_id += 1;
            request.id = id;
            if request.stamp.is_none() {
                request.stamp = Some(Stamp::now(request.data_out.len()));
            }
            if request.state != RequestState::Parked {
                request.state = RequestState::Enqueued;
            }
            q.requests.insert(id, request);
            (id, q.held)
        };
        if !held {
            LocalQueue::start(lq, id);
        }
    }

    fn start_enqueued(lq: &Rc<RefCell<LocalQueue>>) {
        let ids: Vec<u64> = lq.borrow().requests.ids(|r| r.state == RequestState::Enqueued);
        for id in ids {
            LocalQueue::start(lq, id);
        }
    }

    fn start(lq: &Rc<RefCell<LocalQueue>>, id: u64) {
        let plan = lq.borrow_mut().plan_start(id);
        match plan {
            Plan::Nothing => {}
            Plan::Complete(req, resp) => LocalQueue::deliver(lq, req, resp),
            Plan::Execute(cmd, data, data_in, ctx, guard) => {
                let lq = lq.clone();
                let mut run = Box::pin(async move {
                    // The queue's handle, not the device's: its count is
                    // touched by this thread only, where the device's is
                    // shared by every I/O thread serving the device.
                    let queue = lq.borrow().queue.clone();
                    let device = &queue.device;
                    if let Command::Sanitize(s) = &cmd {
                        let started = {
                            let _inside = device.gate().shared(queue.active()).await;
                            device.disk().start_sanitize(s, data, &ctx)
                        };
                        LocalQueue::start_detached(&lq, id, device, &cmd, started);
                        drop(guard);
                        return;
                    }
                    let executed = if matches!(cmd, Command::CompareAndWrite { .. }) {
                        let _inside = device.gate().exclusive(|| device.queues()).await;
                        device.disk().execute_into(&cmd, data, &ctx, data_in.as_ref()).await
                    } else {
                        let _inside = device.gate().shared(queue.active()).await;
                        device.disk().execute_into(&cmd, data, &ctx, data_in.as_ref()).await
                    };
                    let mut result = executed.result;
                    if !executed.effects.is_empty() {
                        if let Err(e) = device.apply_effects(&queue, executed.effects) {
                            result = Err(e);
                        }
                    }
                    let placed = data_in.as_ref().map_or(0, |d| d.filled());
                    LocalQueue::finish_placed(&lq, id, &cmd, result, placed);
                    drop(guard);
                });
                // Run it here up to its first wait: a command whose backend
                // answers at once (RAM, page cache) completes without a task
                // switch. If it waits, a task takes it over (and polls it
                // again at once, registering its own waker).
                let waker = std::task::Waker::noop();
                let mut cx = std::task::Context::from_waker(waker);
                if run.as_mut().poll(&mut cx).is_pending() {
                    tokio::task::spawn_local(run);
                }
            }
        }
    }

    /// A SANITIZE has been checked and, unless it failed or was EXIT
    /// FAILURE MODE, its operation begun: the operation runs detached (see
    /// `background.rs`). With IMMED=0 the request waits for it, in state
    /// `Waiting`: its I/O is no longer in flight, and a cancel completes it
    /// at once; if it was cancelled while it started, it completes now.
    fn start_detached(
        lq: &Rc<RefCell<LocalQueue>>,
        id: u64,
        device: &Arc<Device>,
        cmd: &Command,
        started: Result<Option<lunar_scsi::SanitizeOperation>, ScsiError>,
    ) {
        let immed = matches!(cmd, Command::Sanitize(s) if s.immed);
        let op = match started {
            Ok(Some(op)) => op,
            Ok(None) => return LocalQueue::finish(lq, id, cmd, Ok(Vec::new())),
            Err(e) => return LocalQueue::finish(lq, id, cmd, Err(e)),
        };
        let (queue, waits) = {
            let mut q = lq.borrow_mut();
            let waits = match q.requests.get_mut(id) {
                Some(r) if !immed && !r.cancelled => {
                    r.state = RequestState::Waiting;
                    true
                }
                _ => false,
            };
            (q.queue.clone(), waits)
        };
        let waiter = waits.then(|| crate::background::Waiter { queue, id, cmd: cmd.clone() });
        crate::background::run_sanitize(device.clone(), op, waiter);
        if !waits {
            LocalQueue::finish(lq, id, cmd, Ok(Vec::new()));
        }
    }

    fn remove_with(&mut self, id: u64, resp: Response) -> Plan {
        match self.requests.remove(id) {
            Some(req) => Plan::Complete(req, resp),
            None => Plan::Nothing,
        }
    }

    fn plan_start(&mut self, id: u64) -> Plan {
        if self.held || self.queue.device.is_paused() {
            return Plan::Nothing;
        }
        let queue = self.queue.clone();
        let device = &queue.device;
        let Some(req) = self.requests.get_mut(id) else { return Plan::Nothing };
        if matches!(req.state, RequestState::Executing | RequestState::Waiting) {
            return Plan::Nothing;
        }
        if req.cancelled {
            return self.remove_with(id, Response::aborted());
        }
        if device.is_removed() {
            return self
                .remove_with(id, Response::check_condition(lunar_scsi::sense::LUN_NOT_SUPPORTED.sense().fixed()));
        }
        let descriptor = device.disk().descriptor_sense();
        let cmd = match Command::decode(&req.cdb) {
            Ok(cmd) => cmd,
            Err(e) => return self.remove_with(id, Response::from_error(&e, descriptor)),
        };
        if !cmd.is_unit_attention_exempt() {
            if let Some(ua) = self.queue.unit_attentions.pop() {
                return self.remove_with(id, Response::check_condition(ua.encode(descriptor)));
            }
        }
        if device.offline().is_some() && cmd.needs_medium() {
            return self.remove_with(
                id,
                Response::check_condition(
                    lunar_scsi::sense::NOT_READY_MANUAL_INTERVENTION_REQUIRED.sense().encode(descriptor),
                ),
            );
        }
        if self.ctx.descriptor_sense != descriptor {
            self.ctx = Rc::new(ExecContext { descriptor_sense: descriptor, ..(*self.ctx).clone() });
        }
        let ctx = match cmd {
            // REQUEST SENSE reports and clears a pending unit attention (SPC-5 6.39).
            Command::RequestSense { .. } => {
                Rc::new(ExecContext { pending_sense: self.queue.unit_attentions.pop(), ..(*self.ctx).clone() })
            }
            Command::ReportLuns { .. } => Rc::new(ExecContext { luns: device.luns(), ..(*self.ctx).clone() }),
            Command::ExtendedCopy(_) => Rc::new(ExecContext {
                copy_resolver: device.copy_targets().map(|c| c as Arc<dyn lunar_scsi::CopyResolver>),
                ..(*self.ctx).clone()
            }),
            _ => self.ctx.clone(),
        };
        let Some(req) = self.requests.get_mut(id) else { return Plan::Nothing };
        req.state = RequestState::Executing;
        req.retry = false;
        // Keep the data-out only where a failure could park the request for
        // a retry, or where the request may wait in the list to be saved
        // (a SANITIZE waiting for its operation). Kept is shared with the
        // backend, not copied (`Bytes`: a reference count).
        let may_park = device.policy_for(cmd.is_write()).verdict(lunar_block::ErrorKind::NoSpace) == Verdict::Stop;
        let keep = may_park || matches!(cmd, Command::Sanitize(_));
        let data = if keep { req.data_out.clone() } else { std::mem::take(&mut req.data_out) };
        // The lent memory likewise: a handle of its own (the keeper's count)
        // only if the request may be run again.
        let data_in = if may_park { req.data_in.clone() } else { req.data_in.take() };
        Plan::Execute(cmd, data, data_in, ctx, self.inflight.enter())
    }

    /// Completes request `id` with the outcome of `cmd` (the error policy
    /// decides for backend errors); nothing if it is no longer in the list.
    pub(crate) fn finish(lq: &Rc<RefCell<LocalQueue>>, id: u64, cmd: &Command, result: Result<Vec<u8>, ScsiError>) {
        LocalQueue::finish_placed(lq, id, cmd, result, 0)
    }

    /// [`LocalQueue::finish`] of a command that placed `placed` bytes of
    /// data-in in the request's lent memory.
    pub(crate) fn finish_placed(
        lq: &Rc<RefCell<LocalQueue>>,
        id: u64,
        cmd: &Command,
        result: Result<Vec<u8>, ScsiError>,
        placed: usize,
    ) {
        let plan = {
            let mut q = lq.borrow_mut();
            let queue = q.queue.clone();
            let device = &queue.device;
            let cancelled = match q.requests.get(id) {
                Some(r) => r.cancelled,
                None => return,
            };
            if matches!(result, Err(ScsiError::Backend(_))) {
                q.recorder.io_error();
            }
            if cancelled {
                q.remove_with(id, Response::aborted())
            } else {
                match result {
                    Ok(data) => q.remove_with(id, Response { placed, ..Response::good(data) }),
                    // Storage gone for this process: no policy can bring it
                    // back (retrying a fenced client would only wait), so the
                    // error is reported and the LUN goes offline.
                    Err(ScsiError::Backend(e)) if e.kind == lunar_block::ErrorKind::Offline => {
                        device.went_offline(&e);
                        let sense = ScsiError::Backend(e).sense().encode(device.disk().descriptor_sense());
                        q.remove_with(id, Response::check_condition(sense))
                    }
                    Err(ScsiError::Backend(e)) => match device.policy_for(cmd.is_write()).verdict(e.kind) {
                        Verdict::Report => {
                            let sense = ScsiError::Backend(e).sense().encode(device.disk().descriptor_sense());
                            q.remove_with(id, Response::check_condition(sense))
                        }
                        Verdict::Ignore => q.remove_with(id, Response::good(Vec::new())),
                        Verdict::Stop => {
                            if let Some(r) = q.requests.get_mut(id) {
                                r.retry = true;
                                r.state = RequestState::Parked;
                            }
                            drop(q);
                            device.paused_on_error(&e, cmd.is_write());
                            Plan::Nothing
                        }
                    },
                    Err(e) => q.remove_with(id, Response::from_error(&e, device.disk().descriptor_sense())),
                }
            }
        };
        if let Plan::Complete(req, resp) = plan {
            LocalQueue::deliver(lq, req, resp);
        }
    }

    /// Runs `f` once for every request in the list now, then acts on what it
    /// decided. The request is out of the list while `f` runs, so nothing
    /// `f` does can re-enter a borrow of the list.
    pub(crate) fn iterate(lq: &Rc<RefCell<LocalQueue>>, f: &(dyn Fn(&mut Request) -> Action + Send + Sync)) {
        let ids = lq.borrow().requests.ids(|_| true);
        for id in ids {
            let Some(mut req) = lq.borrow_mut().requests.remove(id) else { continue };
            let action = f(&mut req);
            lq.borrow_mut().requests.insert(id, req);
            LocalQueue::act(lq, id, action);
        }
    }

    fn act(lq: &Rc<RefCell<LocalQueue>>, id: u64, action: Action) {
        match action {
            Action::Keep => {}
            Action::Cancel => {
                let plan = {
                    let mut q = lq.borrow_mut();
                    match q.requests.get_mut(id) {
                        Some(r) if r.state == RequestState::Executing => {
                            r.cancelled = true;
                            Plan::Nothing
                        }
                        Some(_) => q.remove_with(id, Response::aborted()),
                        None => Plan::Nothing,
                    }
                };
                if let Plan::Complete(req, resp) = plan {
                    LocalQueue::deliver(lq, req, resp);
                }
            }
            Action::Restart => {
                let restart = {
                    let mut q = lq.borrow_mut();
                    // A paused device keeps its parked requests (with their
                    // retry flag) for the resume of the device.
                    let paused = q.queue.device.is_paused();
                    match q.requests.get_mut(id) {
                        Some(r) if r.retry && !paused => {
                            r.retry = false;
                            r.state = RequestState::Enqueued;
                            true
                        }
                        _ => false,
                    }
                };
                if restart {
                    LocalQueue::start(lq, id);
                }
            }
        }
    }

    /// The device was resumed: re-issues the requests parked by the error
    /// policy, then starts the held ones, in arrival order. Nothing while
    /// the list is held (target stopped: its `cont` restarts them) or the
    /// device is still paused.
    pub(crate) fn resume(lq: &Rc<RefCell<LocalQueue>>) {
        {
            let mut q = lq.borrow_mut();
            if q.held || q.queue.device.is_paused() {
                return;
            }
            for r in q.requests.values_mut().filter(|r| r.retry) {
                r.retry = false;
                r.state = RequestState::Enqueued;
            }
        }
        LocalQueue::start_enqueued(lq);
    }

    /// Completes a request taken out of the list, counting it first (the
    /// one place where the core completes a request of a list).
    fn deliver(lq: &Rc<RefCell<LocalQueue>>, mut req: Request, resp: Response) {
        lq.borrow().recorder.completed(&req, &resp);
        req.complete(resp);
    }

    /// Cancels everything left (queue closing): completes them as aborted.
    pub(crate) fn abort_all(lq: &Rc<RefCell<LocalQueue>>) {
        let reqs: Vec<Request> = lq.borrow_mut().requests.take_all();
        for r in reqs {
            LocalQueue::deliver(lq, r, Response::aborted());
        }
    }
}

impl Queue {
    pub(crate) fn home(&self) -> &SyncArc<Home> {
        &self.home
    }

    pub(crate) fn contexts(&self) -> &Arc<Contexts> {
        &self.contexts
    }
}

/// Builds a request ready to submit, completing into `f`.
pub fn request(
    tag: u64,
    lun: u64,
    cdb: &[u8],
    data_out: impl Into<lunar_block::Bytes>,
    f: impl FnOnce(Response) + Send + 'static,
) -> Request {
    Request::new(tag, lun, crate::request::CdbBytes::from_slice(cdb), data_out, Completion::new(f))
}

/// Invariant 1, at compile time: the request list cannot leave its thread.
/// `LocalQueue` must not be `Send`; if it ever became `Send`, the call below
/// would be ambiguous (two impls apply) and the crate would not compile.
#[allow(dead_code)]
fn _local_queue_is_not_send() {
    trait AmbiguousIfSend<A> {
        fn check() {}
    }
    impl<T: ?Sized> AmbiguousIfSend<()> for T {}
    struct IsSend;
    impl<T: ?Sized + Send> AmbiguousIfSend<IsSend> for T {}
    <LocalQueue as AmbiguousIfSend<_>>::check();
    <std::rc::Rc<RefCell<LocalQueue>> as AmbiguousIfSend<_>>::check();
}

/// The parts that do cross threads must be `Send` (and `Queue` also `Sync`).
#[allow(dead_code)]
fn _shared_parts_are_send() {
    fn is_send<T: Send>() {}
    fn is_sync<T: Sync>() {}
    is_send::<Queue>();
    is_sync::<Queue>();
    is_send::<Parcel>();
    is_send::<Request>();
}

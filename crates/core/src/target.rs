//! Targets: the devices, the threads, and the control-plane operations
//! (stop/cont, reset, move, hot add/remove, save), all run on the main loop.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use lunar_aio::{IoContext, RunState, RunStateHub};
use lunar_block::Backend;
use lunar_scsi::{Disk, DiskConfig};
use thiserror::Error;
use tokio::sync::{broadcast, oneshot};

use crate::device::{Device, PAUSE_IO_ERROR, PAUSE_OPERATOR, PAUSE_REOPEN, PAUSE_RESIZE};
use crate::event::Event;
use crate::follow::Arrival;
use crate::policy::ErrorPolicies;
use crate::queue::{LocalQueue, Queue};
use crate::request::{Action, Request};
use crate::state;
use crate::threads::{Contexts, ThreadSet, MAIN_LOOP};

#[derive(Debug, Error)]
pub enum TargetError {
    #[error("cannot start threads: {0}")]
    Threads(#[from] lunar_aio::ThreadError),
    #[error("LUN {0} already exists")]
    LunExists(u64),
    #[error("no LUN {0}")]
    NoSuchLun(u64),
    #[error("no I/O thread {0} (there are {1})")]
    NoSuchThread(usize, usize),
    #[error("the target must be stopped for this")]
    NotStopped,
    #[error("must be called on the main loop")]
    NotMainLoop,
    #[error("the target is shut down")]
    ShutDown,
    #[error("bad saved state: {0}")]
    State(#[from] state::StateError),
    #[error("cannot resize: {0}")]
    Resize(#[from] lunar_scsi::ResizeError),
    #[error("LUN {0} has no asymmetric access (no gateways configured)")]
    NoAlua(u64),
    #[error("{0}")]
    Alua(#[from] lunar_scsi::AluaError),
    #[error("cannot reopen: {0}")]
    Reopen(String),
}

pub type Callback = dyn Fn(&mut Request) -> Action + Send + Sync + 'static;

/// A SCSI target: its LUNs and the threads that serve them.
pub struct Target {
    name: String,
    contexts: Arc<Contexts>,
    /// The threads, shared by every target of a daemon; joined when the
    /// last target holding them shuts down.
    threads: Mutex<Option<Arc<ThreadSet>>>,
    devices: Mutex<BTreeMap<u64, Arc<Device>>>,
    run_state: Arc<RunStateHub>,
    /// Serializes control-plane operations (held across their awaits on the
    /// main loop; never taken on the I/O path).
    control: tokio::sync::Mutex<()>,
    events: broadcast::Sender<Event>,
    me: Weak<Target>,
}

/// Shared by the jobs of one async iteration; finishing drops the device.
struct IterState {
    device: Arc<Device>,
    f: Arc<Callback>,
    remaining: AtomicUsize,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

impl IterState {
    fn one_done(&self) {
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(tx) = self.done.lock().unwrap_or_else(|e| e.into_inner()).take() {
                let _ = tx.send(());
            }
        }
    }
}

impl Drop for IterState {
    fn drop(&mut self) {
        self.device.iteration_finished();
    }
}

impl Target {
    /// Starts a target with `io_threads` I/O threads and a main loop.
    pub fn new(name: &str, io_threads: usize) -> Result<Arc<Target>, TargetError> {
        Ok(Target::with_threads(name, Arc::new(ThreadSet::start(io_threads)?)))
    }

    /// A target served by threads it shares with other targets.
    pub fn with_threads(name: &str, threads: Arc<ThreadSet>) -> Arc<Target> {
        let contexts = threads.contexts().clone();
        let run_state = RunStateHub::new(contexts.main_loop().clone());
        let (events, _) = broadcast::channel(4096);
        Arc::new_cyclic(|me| Target {
            name: name.to_string(),
            contexts,
            threads: Mutex::new(Some(threads)),
            devices: Mutex::new(BTreeMap::new()),
            run_state,
            control: tokio::sync::Mutex::new(()),
            events,
            me: me.clone(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn contexts(&self) -> &Arc<Contexts> {
        &self.contexts
    }

    pub fn io_threads(&self) -> usize {
        self.contexts.io_threads()
    }

    pub fn run_state(&self) -> RunState {
        self.run_state.get()
    }

    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    pub(crate) fn emit(&self, e: Event) {
        let _ = self.events.send(e);
    }

    /// Tells the event stream that this gateway fenced `clients` of LUN
    /// `lun`'s storage, and why (see [`Event::Fenced`]).
    pub fn report_fencing(&self, lun: u64, reason: &'static str, clients: Vec<String>) {
        self.emit(Event::Fenced { lun, reason, clients });
    }

    pub fn device(&self, lun: u64) -> Option<Arc<Device>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner()).get(&lun).cloned()
    }

    pub fn devices(&self) -> Vec<Arc<Device>> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    pub fn luns(&self) -> Vec<u64> {
        self.devices.lock().unwrap_or_else(|e| e.into_inner()).keys().copied().collect()
    }

    fn arc(&self) -> Result<Arc<Target>, TargetError> {
        self.me.upgrade().ok_or(TargetError::ShutDown)
    }

    /// Runs a control-plane operation on the main loop, one at a time.
    async fn control<R, F, Fut>(&self, f: F) -> Result<R, TargetError>
    where
        R: Send + 'static,
        F: FnOnce(Arc<Target>) -> Fut + Send + 'static,
        Fut: Future<Output = R> + 'static,
    {
        let me = self.arc()?;
        let (tx, rx) = oneshot::channel();
        self.contexts
            .main_loop()
            .spawn(move || async move {
                let _serial = me.control.lock().await;
                let r = f(me.clone()).await;
                let _ = tx.send(r);
            })
            .map_err(|_| TargetError::ShutDown)?;
        rx.await.map_err(|_| TargetError::ShutDown)
    }

    fn check_thread(&self, t: usize) -> Result<(), TargetError> {
        if t == MAIN_LOOP || t > self.io_threads() {
            return Err(TargetError::NoSuchThread(t, self.io_threads()));
        }
        Ok(())
    }

    // ----- devices -------------------------------------------------------

    /// Adds a LUN (hot plug). Initiators on the other LUNs get REPORTED LUNS
    /// DATA HAS CHANGED.
    pub async fn add_device(
        &self,
        lun: u64,
        config: DiskConfig,
        backend: Backend,
        policies: ErrorPolicies,
    ) -> Result<Arc<Device>, TargetError> {
        self.control(move |t| async move {
            let dev = Device::new(lun, Disk::new(config, backend), policies, t.me.clone());
            dev.observe_alua();
            {
                let mut devices = t.devices.lock().unwrap_or_else(|e| e.into_inner());
                if devices.contains_key(&lun) {
                    return Err(TargetError::LunExists(lun));
                }
                devices.insert(lun, dev.clone());
            }
            t.raise_unit_attention_others(lun, lunar_scsi::sense::REPORTED_LUNS_DATA_HAS_CHANGED.sense());
            t.emit(Event::DeviceAdded { lun });
            Ok(dev)
        })
        .await?
    }

    /// Removes a LUN (hot unplug): its requests are aborted and completed,
    /// pending iterations finish, an operation running detached from its
    /// command (sanitize) stops at its next step, its queues close; the
    /// device itself is freed when the last handle (a front-end's queue) goes.
    pub async fn remove_device(&self, lun: u64) -> Result<(), TargetError> {
        self.control(move |t| async move {
            let dev =
                t.devices.lock().unwrap_or_else(|e| e.into_inner()).remove(&lun).ok_or(TargetError::NoSuchLun(lun))?;
            dev.mark_removed();
            t.iterate(&dev, Arc::new(|_| Action::Cancel), true).await;
            dev.iterations_drained().await;
            dev.background().ended().await;
            dev.gate().foreign_drained().await;
            for q in dev.clear_queues() {
                close_queue_list(&q).await;
            }
            t.raise_unit_attention_others(lun, lunar_scsi::sense::REPORTED_LUNS_DATA_HAS_CHANGED.sense());
            t.emit(Event::DeviceRemoved { lun });
            Ok(())
        })
        .await?
    }

    /// Opens a queue of LUN `lun` served by I/O thread `io_thread` (1-based),
    /// for the anonymous I_T nexus.
    pub async fn open_queue(&self, lun: u64, io_thread: usize) -> Result<Arc<Queue>, TargetError> {
        self.open_queue_for(lun, io_thread, None).await
    }

    /// Opens a queue of LUN `lun` on I/O thread `io_thread` for the I_T nexus
    /// `nexus` (`None`: anonymous).
    pub async fn open_queue_for(
        &self,
        lun: u64,
        io_thread: usize,
        nexus: Option<lunar_scsi::Nexus>,
    ) -> Result<Arc<Queue>, TargetError> {
        self.check_thread(io_thread)?;
        self.control(move |t| async move {
            let dev = t.device(lun).ok_or(TargetError::NoSuchLun(lun))?;
            // A device moved to a thread keeps its queues there.
            let io_thread = dev.pinned_thread().unwrap_or(io_thread);
            let stopped = t.run_state.get() == RunState::Stopped;
            let holder = if stopped { MAIN_LOOP } else { io_thread };
            // Queue ids are global: targets sharing threads share registries.
            static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);
            let id = NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed);
            // The queue shares the unit attentions of its nexus's other queues
            // of this device (given back when it closes, or here if it fails).
            let q = Queue::new(id, dev.clone(), io_thread, holder, t.contexts.clone(), nexus);
            let parcel = LocalQueue::empty_parcel(q.clone());
            let installed = if holder == MAIN_LOOP {
                LocalQueue::install(parcel, true);
                Ok(())
            } else {
                match t.contexts.get(holder) {
                    Some(ctx) => {
                        ctx.schedule(move || LocalQueue::install(parcel, false)).map_err(|_| TargetError::ShutDown)
                    }
                    None => Err(TargetError::NoSuchThread(holder, t.io_threads())),
                }
            };
            if let Err(e) = installed {
                dev.release_unit_attentions(q.nexus());
                return Err(e);
            }
            dev.add_queue(q.clone());
            Ok(q)
        })
        .await?
    }

    /// Closes a queue: its requests are aborted (executing ones finish first).
    pub async fn close_queue(&self, queue: Arc<Queue>) -> Result<(), TargetError> {
        self.control(move |_t| async move {
            queue.device().remove_queue(queue.id());
            close_queue_list(&queue).await;
        })
        .await
    }

    // ----- run state -----------------------------------------------------

    /// Stops the target: every queue holds new starts, drains its I/O, and
    /// hands its list to the main loop. Returns once all lists are there.
    pub async fn stop(&self) -> Result<(), TargetError> {
        self.control(|t| async move { t.stop_locked().await }).await
    }

    async fn stop_locked(&self) {
        if self.run_state.get() == RunState::Stopped {
            return;
        }
        self.run_state.set(RunState::Stopped);
        let mut waits = Vec::new();
        for dev in self.devices() {
            dev.background().set_held(true);
            for q in dev.queues() {
                waits.push(relocate(&q, MAIN_LOOP, true));
            }
        }
        for w in waits {
            let _ = w.await;
        }
        for dev in self.devices() {
            dev.background().idle().await;
        }
        self.emit(Event::Stopped);
    }

    /// Resumes: lists go back to their I/O threads, and every request that
    /// failed under the `stop` policy is re-issued there (the seed's DMA
    /// restart). LUNs paused by the error policy resume too (running or
    /// stopped target); LUNs the operator paused stay paused until their
    /// own [`Target::cont_device`].
    pub async fn cont(&self) -> Result<(), TargetError> {
        self.control(|t| async move {
            let mut unpaused = Vec::new();
            for dev in t.devices() {
                if dev.unpause(PAUSE_IO_ERROR) & PAUSE_IO_ERROR != 0 {
                    unpaused.push(dev);
                }
            }
            if t.run_state.get() == RunState::Running {
                for dev in &unpaused {
                    t.iterate_queues(dev, LocalQueue::resume).await;
                }
            } else {
                t.run_state.set(RunState::Running);
                for dev in t.devices() {
                    dev.background().set_held(false);
                }
                let mut waits = Vec::new();
                for dev in t.devices() {
                    for q in dev.queues() {
                        waits.push(relocate(&q, q.io_thread(), false));
                    }
                }
                for w in waits {
                    let _ = w.await;
                }
                for dev in t.devices() {
                    t.iterate(&dev, Arc::new(|_| Action::Restart), false).await;
                }
                t.emit(Event::Resumed);
            }
            for dev in unpaused {
                if !dev.is_paused() {
                    t.emit(Event::DeviceResumed { lun: dev.lun() });
                }
            }
        })
        .await
    }

    // ----- one device's run state ------------------------------------------

    /// Pauses one LUN (operator): its new commands are held (accepted, not
    /// started), its executing I/O drains (a sanitize operation running
    /// detached ends its step and waits; copies from other LUNs' EXTENDED
    /// COPY finish their I/O inside and are refused from then on), other
    /// LUNs go on. Returns once
    /// every queue of the LUN has drained. The lists stay on their threads.
    pub async fn stop_device(&self, lun: u64) -> Result<(), TargetError> {
        self.control(move |t| async move {
            let dev = t.device(lun).ok_or(TargetError::NoSuchLun(lun))?;
            let before = dev.pause(PAUSE_OPERATOR);
            t.drain_queues(&dev).await;
            dev.background().idle().await;
            dev.gate().foreign_drained().await;
            if before & PAUSE_OPERATOR == 0 {
                t.emit(Event::DevicePaused { lun });
            }
            Ok(())
        })
        .await?
    }

    /// Resumes one LUN paused by the operator or by the error policy: the
    /// requests the policy parked are re-issued and the held ones start.
    /// While the whole target is stopped, they start at its `cont`.
    pub async fn cont_device(&self, lun: u64) -> Result<(), TargetError> {
        self.control(move |t| async move {
            let dev = t.device(lun).ok_or(TargetError::NoSuchLun(lun))?;
            let before = dev.unpause(PAUSE_OPERATOR | PAUSE_IO_ERROR);
            t.iterate_queues(&dev, LocalQueue::resume).await;
            if before & (PAUSE_OPERATOR | PAUSE_IO_ERROR) != 0 && !dev.is_paused() {
                t.emit(Event::DeviceResumed { lun });
            }
            Ok(())
        })
        .await?
    }

    /// Changes the capacity of a LUN to `size` bytes (a non-zero multiple of
    /// its block size; shrinking allowed). The LUN is quiesced meanwhile
    /// (new commands held, executing ones drained, as for `stop_device`), so
    /// no command straddles the change; then every I_T nexus of the LUN gets
    /// CAPACITY DATA HAS CHANGED (SPC-5) and the held commands start.
    /// Returns the new number of blocks.
    pub async fn resize_device(&self, lun: u64, size: u64) -> Result<u64, TargetError> {
        self.control(move |t| async move {
            let dev = t.device(lun).ok_or(TargetError::NoSuchLun(lun))?;
            dev.disk().check_resize(size)?;
            dev.pause(PAUSE_RESIZE);
            t.drain_queues(&dev).await;
            dev.background().idle().await;
            dev.gate().foreign_drained().await;
            let old = dev.disk().num_blocks();
            let resized = dev.disk().resize(size);
            let changed = matches!(resized, Ok(blocks) if blocks != old);
            // In place before anything starts again (held commands included).
            if changed {
                dev.raise_unit_attention(&lunar_scsi::sense::CAPACITY_DATA_HAS_CHANGED.sense(), |_| true);
            }
            dev.unpause(PAUSE_RESIZE);
            t.iterate_queues(&dev, LocalQueue::resume).await;
            let blocks = resized?;
            if changed {
                tracing::info!(lun, old, blocks, "LUN resized");
                t.emit(Event::DeviceResized { lun, blocks, block_size: dev.disk().block_size() });
            }
            Ok(blocks)
        })
        .await?
    }

    /// Sets the asymmetric access state of target port group `group` of
    /// LUN `lun` in this process (an implicit transition, STATUS CODE 02h:
    /// the operator's or the cluster's decision, not a SET TARGET PORT
    /// GROUPS). Every I_T nexus of the LUN gets ASYMMETRIC ACCESS STATE
    /// CHANGED if the state changed (returned). Commands read the new state
    /// as they start; one already executing finishes under the old one.
    pub async fn set_alua_state(
        &self,
        lun: u64,
        group: u16,
        state: lunar_scsi::AccessState,
    ) -> Result<bool, TargetError> {
        self.control(move |t| async move {
            let dev = t.device(lun).ok_or(TargetError::NoSuchLun(lun))?;
            let alua = dev.disk().alua().ok_or(TargetError::NoAlua(lun))?;
            let request = [lunar_scsi::SetGroupState { group, state }];
            Ok(alua.set_states(&request, lunar_scsi::StatusCode::AlteredByImplicitTransition, None)?)
        })
        .await?
    }

    /// Opens a LUN's backend again ([`lunar_block::Backend::reopen`]: an RBD
    /// image as a new client of the cluster), quiesced as for a resize,
    /// and brings an offline LUN back online. The storage is the same, so
    /// no unit attention; commands held meanwhile start after. On failure
    /// the LUN stays as it was (offline if it was).
    pub async fn reopen_device(&self, lun: u64) -> Result<(), TargetError> {
        self.control(move |t| async move {
            let dev = t.device(lun).ok_or(TargetError::NoSuchLun(lun))?;
            dev.pause(PAUSE_REOPEN);
            t.drain_queues(&dev).await;
            dev.background().idle().await;
            dev.gate().foreign_drained().await;
            let backend = dev.disk().backend().clone();
            // Blocking (connecting to a cluster takes up to its timeout):
            // off the main loop.
            let reopened = match tokio::task::spawn_blocking(move || backend.reopen()).await {
                Ok(r) => r.map_err(|e| e.to_string()),
                Err(e) => Err(format!("the reopen task failed: {e}")),
            };
            let was_offline = reopened.is_ok() && dev.back_online();
            dev.unpause(PAUSE_REOPEN);
            t.iterate_queues(&dev, LocalQueue::resume).await;
            reopened.map_err(TargetError::Reopen)?;
            tracing::info!(lun, was_offline, "LUN reopened");
            if was_offline {
                t.emit(Event::DeviceOnline { lun });
            }
            Ok(())
        })
        .await?
    }

    /// Main loop: resolves once every queue of `device` has no executing
    /// I/O. Call after pausing the device (so that nothing new starts).
    fn drain_queues(&self, device: &Arc<Device>) -> impl Future<Output = ()> + 'static {
        let mut waits = Vec::new();
        for q in device.queues() {
            let (tx, rx) = oneshot::channel();
            let id = q.id();
            q.dispatch(move |arrival| {
                let Some(lq) = (if arrival == Arrival::Here { LocalQueue::get(id) } else { None }) else {
                    let _ = tx.send(());
                    return;
                };
                let inflight = lq.borrow().inflight();
                tokio::task::spawn_local(async move {
                    inflight.drained().await;
                    let _ = tx.send(());
                });
            });
            waits.push(rx);
        }
        async move {
            for w in waits {
                let _ = w.await;
            }
        }
    }

    // ----- device operations ---------------------------------------------

    /// Moves every queue of LUN `lun` to I/O thread `io_thread`, under
    /// I/O; queues opened for it later go there too, whichever thread
    /// opens them.
    pub async fn move_device(&self, lun: u64, io_thread: usize) -> Result<(), TargetError> {
        self.check_thread(io_thread)?;
        self.control(move |t| async move {
            let dev = t.device(lun).ok_or(TargetError::NoSuchLun(lun))?;
            dev.pin(io_thread);
            let running = t.run_state.get() == RunState::Running;
            let mut waits = Vec::new();
            for q in dev.queues() {
                q.set_io_thread(io_thread);
                if running {
                    waits.push(relocate(&q, io_thread, false));
                }
            }
            for w in waits {
                let _ = w.await;
            }
            t.emit(Event::DeviceMoved { lun, io_thread });
            Ok(())
        })
        .await?
    }

    /// Moves one queue to I/O thread `io_thread`, under I/O.
    pub async fn move_queue(&self, queue: Arc<Queue>, io_thread: usize) -> Result<(), TargetError> {
        self.check_thread(io_thread)?;
        self.control(move |t| async move {
            queue.set_io_thread(io_thread);
            if t.run_state.get() == RunState::Running {
                let _ = relocate(&queue, io_thread, false).await;
            }
        })
        .await
    }

    /// LOGICAL UNIT RESET (SAM-5 7.7): cancels every request on its owner,
    /// waits for the backend to drain and for pending iterations, releases
    /// SPC-2 reservations and the medium-removal prevention, discards the
    /// copy results held for RECEIVE COPY RESULTS, then raises BUS
    /// DEVICE RESET FUNCTION OCCURRED on every I_T nexus of the LUN.
    /// The unit attention goes to the issuing nexus too (libiscsi's
    /// MultipathIO.Reset checks every path).
    pub async fn reset_device(&self, lun: u64) -> Result<(), TargetError> {
        self.reset_device_except(lun, None).await
    }

    /// A reset on behalf of a TARGET WARM RESET received on I_T nexus
    /// `issuer` (RFC 7143 §11.5.1): as [`Target::reset_device`], but the
    /// issuer learns of it from the task management response rather than a
    /// unit attention.
    ///
    /// When the LU is served by other gateways too (its reservations are
    /// the cluster's), they reset their side of it before this resolves
    /// ([`lunar_scsi::Disk::announce_reset`]).
    pub async fn reset_device_except(&self, lun: u64, issuer: Option<lunar_scsi::Nexus>) -> Result<(), TargetError> {
        let dev = self.reset_here(lun, issuer).await?;
        dev.disk().announce_reset().await;
        Ok(())
    }

    /// The reset of LU `lun` that another gateway announced: as
    /// [`Target::reset_device`] for this process's side (every command on
    /// it aborted, BUS DEVICE RESET FUNCTION OCCURRED for each of its
    /// nexuses), without announcing it again.
    pub(crate) async fn reset_device_for_peer(&self, lun: u64) -> Result<(), TargetError> {
        self.reset_here(lun, None).await.map(|_| ())
    }

    async fn reset_here(&self, lun: u64, issuer: Option<lunar_scsi::Nexus>) -> Result<Arc<Device>, TargetError> {
        self.control(move |t| async move {
            let dev = t.device(lun).ok_or(TargetError::NoSuchLun(lun))?;
            t.iterate(&dev, Arc::new(|_| Action::Cancel), true).await;
            dev.iterations_drained().await;
            dev.disk().reset_reservations();
            dev.disk().reset_prevent();
            dev.disk().discard_copy_results();
            dev.raise_unit_attention(&lunar_scsi::sense::BUS_DEVICE_RESET.sense(), |q| {
                issuer.as_ref().is_none_or(|n| !q.is_nexus(n))
            });
            t.emit(Event::DeviceReset { lun });
            Ok(dev)
        })
        .await?
    }

    // ----- iteration -----------------------------------------------------

    /// Runs `f` once for every request of `device`, on the thread that holds
    /// each request's list when the job gets there (following moves), and
    /// completes when all have run. Keeps the device alive until then.
    pub async fn for_each_request_async(
        &self,
        device: &Arc<Device>,
        f: impl Fn(&mut Request) -> Action + Send + Sync + 'static,
    ) -> Result<(), TargetError> {
        let dev = device.clone();
        let f: Arc<Callback> = Arc::new(f);
        let me = self.arc()?;
        let (tx, rx) = oneshot::channel();
        self.contexts
            .main_loop()
            .spawn(move || async move {
                me.iterate(&dev, f, false).await;
                let _ = tx.send(());
            })
            .map_err(|_| TargetError::ShutDown)?;
        rx.await.map_err(|_| TargetError::ShutDown)
    }

    /// Main loop: fan `f` out to every queue of `device`. With `wait_drained`,
    /// each queue also waits for its executing requests to finish (so that a
    /// cancel completes only after what it cancelled has).
    fn iterate(
        &self,
        device: &Arc<Device>,
        f: Arc<Callback>,
        wait_drained: bool,
    ) -> impl Future<Output = ()> + 'static {
        device.iteration_started();
        let queues = device.queues();
        let (tx, rx) = oneshot::channel();
        let state = Arc::new(IterState {
            device: device.clone(),
            f,
            remaining: AtomicUsize::new(queues.len() + 1),
            done: Mutex::new(Some(tx)),
        });
        for q in queues {
            let state = state.clone();
            let id = q.id();
            q.dispatch(move |arrival| match (arrival, LocalQueue::get(id)) {
                (Arrival::Here, Some(lq)) => {
                    LocalQueue::iterate(&lq, &*state.f);
                    if wait_drained {
                        let inflight = lq.borrow().inflight();
                        tokio::task::spawn_local(async move {
                            inflight.drained().await;
                            state.one_done();
                        });
                    } else {
                        state.one_done();
                    }
                }
                _ => state.one_done(),
            });
        }
        state.one_done();
        drop(state);
        async move {
            let _ = rx.await;
        }
    }

    /// Main loop: runs `f` on the list of every queue of `device`.
    fn iterate_queues(
        &self,
        device: &Arc<Device>,
        f: impl Fn(&std::rc::Rc<std::cell::RefCell<LocalQueue>>) + Send + Sync + 'static,
    ) -> impl Future<Output = ()> + 'static {
        let f = Arc::new(f);
        let queues = device.queues();
        let mut waits = Vec::new();
        for q in queues {
            let (tx, rx) = oneshot::channel();
            let f = f.clone();
            let id = q.id();
            q.dispatch(move |arrival| {
                if let (Arrival::Here, Some(lq)) = (arrival, LocalQueue::get(id)) {
                    f(&lq);
                }
                let _ = tx.send(());
            });
            waits.push(rx);
        }
        async move {
            for w in waits {
                let _ = w.await;
            }
        }
    }

    /// Establishes `sense` for every I_T nexus of every LU but `except_lun`.
    fn raise_unit_attention_others(&self, except_lun: u64, sense: lunar_scsi::Sense) {
        for dev in self.devices() {
            if dev.lun() != except_lun {
                dev.raise_unit_attention(&sense, |_| true);
            }
        }
    }

    /// Runs `f` for every request of `device`, right here. Main loop only, and
    /// only while the target is stopped (then the main loop holds every list).
    pub fn for_each_request_sync(&self, device: &Device, mut f: impl FnMut(&Request)) -> Result<(), TargetError> {
        if !IoContext::in_main_loop() {
            return Err(TargetError::NotMainLoop);
        }
        if self.run_state.get() != RunState::Stopped {
            return Err(TargetError::NotStopped);
        }
        for q in device.queues() {
            if let Some(lq) = LocalQueue::get(q.id()) {
                for r in lq.borrow().requests() {
                    f(r);
                }
            }
        }
        Ok(())
    }

    // ----- state ---------------------------------------------------------

    /// Saves the in-flight requests of a stopped target into a versioned
    /// byte stream (see [`state`]).
    pub async fn save(&self) -> Result<Vec<u8>, TargetError> {
        self.control(|t| async move {
            let mut w = state::Writer::new();
            for dev in t.devices() {
                t.for_each_request_sync(&dev, |r| w.put(r))?;
            }
            Ok(w.finish())
        })
        .await?
    }

    /// After a save handed the requests over, forgets them here without
    /// completing them (the loading side completes them).
    pub async fn discard_saved(&self) -> Result<(), TargetError> {
        self.control(|t| async move {
            if t.run_state.get() != RunState::Stopped {
                return Err(TargetError::NotStopped);
            }
            for dev in t.devices() {
                for q in dev.queues() {
                    if let Some(lq) = LocalQueue::get(q.id()) {
                        lq.borrow_mut().disarm_all();
                    }
                }
            }
            Ok(())
        })
        .await?
    }

    /// Number of requests in the lists of `device` now (for status and tests).
    pub async fn in_flight(&self, device: &Arc<Device>) -> usize {
        let count = Arc::new(AtomicUsize::new(0));
        let (c, dev) = (count.clone(), device.clone());
        let Ok(me) = self.arc() else { return 0 };
        let main = self.contexts.main_loop().clone();
        let (tx, rx) = oneshot::channel();
        let spawned = main.spawn(move || async move {
            me.iterate_queues(&dev, move |lq| {
                c.fetch_add(lq.borrow().len(), Ordering::Relaxed);
            })
            .await;
            let _ = tx.send(());
        });
        if spawned.is_ok() {
            let _ = rx.await;
        }
        count.load(Ordering::Relaxed)
    }

    /// Removes every device (aborting what is left) and joins the threads.
    /// Call from outside the target's threads.
    pub fn shutdown(&self) {
        for lun in self.luns() {
            let _ = wait(self.remove_device(lun));
        }
        let threads = self.threads.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(threads);
    }

    /// The threads of this target, to start other targets on them.
    pub fn threads(&self) -> Option<Arc<ThreadSet>> {
        self.threads.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let threads = self.threads.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(threads) = threads.and_then(|t| Arc::try_unwrap(t).ok()) {
            if self.contexts.current().is_some() {
                // Dropped on one of our own threads: they cannot be joined
                // from here; detach them (they exit when their handles go).
                std::mem::forget(threads);
            } else {
                drop(threads);
            }
        }
    }
}

/// Moves a queue's list to thread `to` (from whichever thread holds it):
/// hold starts, drain executing I/O, hand over as a parcel, install there.
/// Resolves once installed.
fn relocate(q: &Arc<Queue>, to: usize, held: bool) -> oneshot::Receiver<()> {
    let (tx, rx) = oneshot::channel();
    let queue = q.clone();
    q.dispatch(move |arrival| {
        let id = queue.id();
        let Some(lq) = (if arrival == Arrival::Here { LocalQueue::get(id) } else { None }) else {
            let _ = tx.send(());
            return;
        };
        if queue.contexts().current() == Some(to) {
            // Already there: only the hold changes.
            LocalQueue::set_held(&lq, held);
            let _ = tx.send(());
            return;
        }
        lq.borrow_mut().hold();
        let inflight = lq.borrow().inflight();
        drop(lq);
        tokio::task::spawn_local(async move {
            inflight.drained().await;
            let Some(parcel) = LocalQueue::take(id) else {
                let _ = tx.send(());
                return;
            };
            let home = queue.home().clone();
            let arrive: crate::follow::Job = Box::new(move || {
                LocalQueue::install(parcel, held);
                home.arrived(to);
                let _ = tx.send(());
            });
            if let Err(arrive) = queue.home().transfer(&**queue.contexts(), to, arrive) {
                tracing::error!(queue = id, to, "destination thread gone; keeping the list here");
                arrive();
            }
        });
    });
    rx
}

/// Closes a queue's list: waits for executing I/O, aborts the rest, destroys it.
async fn close_queue_list(q: &Arc<Queue>) {
    let (tx, rx) = oneshot::channel();
    let queue = q.clone();
    q.dispatch(move |arrival| {
        let id = queue.id();
        let Some(lq) = (if arrival == Arrival::Here { LocalQueue::get(id) } else { None }) else {
            let _ = tx.send(());
            return;
        };
        LocalQueue::iterate(&lq, &|_| Action::Cancel);
        let inflight = lq.borrow().inflight();
        drop(lq);
        tokio::task::spawn_local(async move {
            inflight.drained().await;
            if let Some(lq) = LocalQueue::get(id) {
                LocalQueue::abort_all(&lq);
            }
            drop(LocalQueue::take(id));
            queue.home().close();
            let _ = tx.send(());
        });
    });
    let _ = rx.await;
    // Nothing counts on this queue any more: its counts join the device's total.
    q.device().stats().retire(q.id());
}

/// Blocks the calling (non-event-loop) thread on a future of this crate.
pub fn wait<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime").block_on(f)
}

//! The controller: the listening socket, one frontend (QEMU) at a time,
//! and what outlives a connection (the device, its core queues, the event task).

use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use lunar_core::Target;
use lunar_scsi::Nexus;
use tokio::sync::Notify;
use vhost::vhost_user::{BackendListener, Listener};

use crate::connection::Connection;
use crate::device::ScsiBackend;
use crate::hotplug::{event_task, EventVq};
use crate::limits::HitCounters;
use crate::pending::PendingTable;
use crate::request_queue::RequestVq;
use crate::virtio::{DEFAULT_CDB_SIZE, DEFAULT_SENSE_SIZE};
use crate::{ControllerConfig, ControllerState, RateLimit, VhostError, VhostLimitHits, VhostLimits};

/// A running vhost-user-scsi controller: listens on its socket and serves
/// one frontend (QEMU) at a time; a frontend that goes away may reconnect.
pub struct Controller {
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    current: Arc<Mutex<Option<UnixStream>>>,
    /// The listening socket (a second handle on it): shut down to wake the
    /// listener thread from `accept`, whatever became of the socket's path.
    listening: UnixListener,
    /// The socket file as bound (device, inode): removed at the end only
    /// if the path still names it (not another process's socket since).
    bound: Option<(u64, u64)>,
    thread: Option<JoinHandle<()>>,
    pub(crate) backend: Arc<ScsiBackend>,
    /// Closed (or sent on) when the event task ends.
    event_task: Option<std::sync::mpsc::Receiver<()>>,
}

impl Controller {
    /// Opens the core queues (request queue `i` on I/O thread
    /// `i % io_threads + 1`) and starts listening; returns once the socket
    /// accepts connections. Blocking: call it off the I/O threads.
    pub fn start(target: Arc<Target>, config: ControllerConfig) -> Result<Controller, VhostError> {
        if !(1..=1022).contains(&config.num_queues) {
            return Err(VhostError::NumQueues(config.num_queues));
        }
        config.limits.validate()?;
        let shared = Arc::new(ControllerState {
            target: target.clone(),
            cdb_size: AtomicU32::new(DEFAULT_CDB_SIZE),
            sense_size: AtomicU32::new(DEFAULT_SENSE_SIZE),
            log: RateLimit::new(),
            poll: config.poll,
            limits: config.limits,
            hits: HitCounters::default(),
        });
        let nexus = Nexus::new(format!("vhost-user:{}", config.socket.display()), 1);
        let threads = target.io_threads().max(1);
        // Subscribe before listing the LUNs: a LUN added meanwhile is seen
        // at least once (attaching twice is a no-op).
        let events = target.events();
        let initial: Vec<u64> =
            target.luns().into_iter().filter(|lun| config.luns.as_ref().is_none_or(|l| l.contains(lun))).collect();
        let mut vqs = Vec::new();
        for i in 0..config.num_queues {
            let io_thread = i % threads + 1;
            let mut queues = BTreeMap::new();
            for &lun in &initial {
                let q = lunar_core::wait(target.open_queue_for(lun, io_thread, Some(nexus.clone())))
                    .map_err(|e| VhostError::Queue(lun, e))?;
                queues.insert(lun, q);
            }
            vqs.push(Arc::new(RequestVq {
                shared: shared.clone(),
                index: i,
                io_thread,
                queues: Mutex::new(Arc::new(queues)),
                mem: Mutex::new(None),
                scheduled: AtomicBool::new(false),
                busy: AtomicBool::new(false),
                kick: Mutex::new(None),
                inflight: PendingTable::new(crate::MAX_QUEUE_SIZE),
                served: AtomicU64::new(0),
                notify_queued: AtomicBool::new(false),
                completed_in_pass: AtomicBool::new(false),
                since_notify: AtomicU32::new(0),
                track: Mutex::new(None),
                resubmit: Mutex::new(Vec::new()),
            }));
        }
        let backend = Arc::new(ScsiBackend {
            shared,
            vqs,
            ctrl_mem: Mutex::new(None),
            ctrl_pending: Arc::new(AtomicUsize::new(0)),
            nexus,
            initial,
            hotplug: config.hotplug,
            event: EventVq {
                vring: Mutex::new(None),
                kick: Notify::new(),
                reset: AtomicBool::new(false),
                stop: AtomicBool::new(false),
            },
        });
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        {
            let backend = backend.clone();
            target
                .contexts()
                .main_loop()
                .spawn(move || event_task(backend, events, done_tx))
                .map_err(|e| VhostError::Thread(io::Error::other(e.to_string())))?;
        }
        let listen_err = |e: io::Error| VhostError::Listen(config.socket.clone(), e.to_string());
        // A socket left by an earlier process is replaced.
        let _ = std::fs::remove_file(&config.socket);
        let std_listener = UnixListener::bind(&config.socket).map_err(listen_err)?;
        let listening = std_listener.try_clone().map_err(listen_err)?;
        let bound = std::fs::metadata(&config.socket).ok().map(|m| (m.dev(), m.ino()));
        let mut listener = Listener::from(std_listener);
        let stop = Arc::new(AtomicBool::new(false));
        let current = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, current, backend) = (stop.clone(), current.clone(), backend.clone());
            let name = format!("vhost-user {}", config.socket.display());
            std::thread::Builder::new()
                .name("vhost-listen".into())
                .spawn(move || serve(&mut listener, &name, backend, &stop, &current))
                .map_err(VhostError::Thread)?
        };
        tracing::info!(socket = %config.socket.display(), queues = config.num_queues, "vhost-user-scsi controller listening");
        Ok(Controller {
            socket: config.socket,
            stop,
            current,
            listening,
            bound,
            thread: Some(thread),
            backend,
            event_task: Some(done_rx),
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The LUNs the guest can use now (hot plug included).
    pub fn luns(&self) -> Vec<u64> {
        self.backend.vqs.first().map(|v| v.queues().keys().copied().collect()).unwrap_or_default()
    }

    /// Commands each request queue submitted to the core since the start.
    pub fn requests_served(&self) -> Vec<u64> {
        self.backend.vqs.iter().map(|v| v.served.load(Ordering::Relaxed)).collect()
    }

    /// The controller's limits ([`ControllerConfig::limits`]).
    pub fn limits(&self) -> VhostLimits {
        self.backend.shared.limits
    }

    /// How many times the guest ran into a limit, or sent a malformed
    /// request, since the controller started.
    pub fn limit_hits(&self) -> VhostLimitHits {
        let shared = &self.backend.shared;
        shared.hits.snapshot(shared.log.suppressed_total())
    }

    /// [`Controller::limit_hits`] for the control plane, which outlives no
    /// controller but does not own them.
    pub fn limit_hits_probe(&self) -> Arc<dyn Fn() -> VhostLimitHits + Send + Sync> {
        let backend = self.backend.clone();
        Arc::new(move || {
            let shared = &backend.shared;
            shared.hits.snapshot(shared.log.suppressed_total())
        })
    }

    /// Disconnects the frontend, stops listening, closes the core queues.
    pub fn shutdown(mut self) {
        self.stop_thread();
        let target = self.backend.shared.target.clone();
        for v in &self.backend.vqs {
            for q in v.queues().values() {
                let _ = lunar_core::wait(target.close_queue(q.clone()));
            }
        }
    }

    /// Ends the event task (it may be attaching a LUN: bounded wait).
    fn stop_events(&mut self) {
        self.backend.event.stop.store(true, Ordering::Release);
        self.backend.event.kick.notify_one();
        if let Some(done) = self.event_task.take() {
            let _ = done.recv_timeout(Duration::from_secs(10));
        }
    }

    fn stop_thread(&mut self) {
        self.stop_events();
        self.stop.store(true, Ordering::Release);
        if let Some(c) = self.current.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        // Wake a listener blocked in accept(): it fails once the listening
        // socket is shut down (connecting to the path would not reach it if
        // the file was removed or replaced meanwhile).
        let _ = socket2::SockRef::from(&self.listening).shutdown(std::net::Shutdown::Both);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let ours = std::fs::metadata(&self.socket).ok().map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.bound {
            let _ = std::fs::remove_file(&self.socket);
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stop_thread();
        }
    }
}

fn serve(
    listener: &mut Listener,
    name: &str,
    backend: Arc<ScsiBackend>,
    stop: &AtomicBool,
    current: &Mutex<Option<UnixStream>>,
) {
    while !stop.load(Ordering::Acquire) {
        let conn = match Connection::new(backend.clone()) {
            Ok(c) => Arc::new(Mutex::new(c)),
            Err(e) => {
                tracing::error!("vhost-user: cannot set up a connection: {e}");
                return;
            }
        };
        let accepted = BackendListener::new(listener, conn.clone()).and_then(|mut l| l.accept());
        let mut handler = match accepted {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(_) if stop.load(Ordering::Acquire) => break,
            Err(e) => {
                tracing::warn!("vhost-user: accept: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        *current.lock().unwrap_or_else(|e| e.into_inner()) = handler.try_clone_connection().ok();
        if stop.load(Ordering::Acquire) {
            break;
        }
        tracing::info!("{name}: frontend connected");
        let why = loop {
            if let Err(e) = handler.handle_request() {
                break e;
            }
        };
        tracing::info!("{name}: frontend gone: {why}");
        *current.lock().unwrap_or_else(|e| e.into_inner()) = None;
        conn.lock().unwrap_or_else(|e| e.into_inner()).stop();
        for v in &backend.vqs {
            v.drain(Duration::from_secs(30));
            *v.mem.lock().unwrap_or_else(|e| e.into_inner()) = None;
            v.set_tracking(None, Vec::new());
        }
        *backend.ctrl_mem.lock().unwrap_or_else(|e| e.into_inner()) = None;
        *backend.event.vring.lock().unwrap_or_else(|e| e.into_inner()) = None;
        backend.event.reset.store(true, Ordering::Release);
        backend.event.kick.notify_one();
    }
}

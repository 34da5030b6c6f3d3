//! The control plane: JSON-RPC 2.0 over a Unix socket.
//!
//! One request per line (a JSON object, or a batch array), one response per
//! line. The socket is served by a thread of its own (`lunar-control`, a
//! tokio current-thread runtime), so a slow request or client never blocks
//! an I/O thread or the main loop; the core's operations it calls run on the
//! main loop and are awaited here. See [`methods`] for the methods and
//! `lunarctl` for the command-line client.

mod alua;
pub mod client;
mod events;
mod manage;
/// Public only for the fuzz target `control_rpc` (fuzz/); not an API.
#[doc(hidden)]
pub mod methods;
pub mod rpc;

use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lunar_core::{Event, Target};
use lunar_iscsi::server::ServerHandle;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};

use crate::config::{Config, LunConfig};
use rpc::{Incoming, RpcError};

/// Longest request line accepted (bytes).
pub const MAX_REQUEST: u64 = 1 << 20;
/// Clients served at once; more are answered with an error and closed.
pub const MAX_CLIENTS: usize = 64;

/// The default control socket path (as `lunard` computes it).
pub fn default_socket_path() -> PathBuf {
    crate::config::Env::current().default_control()
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the directory of the control socket {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error("{} exists and is not a socket; refusing to replace it", path.display())]
    NotASocket { path: PathBuf },
    #[error("another daemon is serving the control socket {}", path.display())]
    InUse { path: PathBuf },
    #[error("cannot listen on the control socket {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot start the control thread: {0}")]
    Thread(io::Error),
}

/// Why a target is stopped, as `status` shows it (a LUN paused on its own,
/// by the operator or on an I/O error, is the core's to tell: `Device::paused`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Pause {
    /// "operator".
    pub by: Option<&'static str>,
}

/// What the control plane works on: the daemon's targets and iSCSI server,
/// and what it remembers about them.
pub struct Context {
    /// The core targets, in the order of the configuration (targets added
    /// at run time last). Changed only by `target.add`/`target.remove`,
    /// under `write_lock`; the I/O path never reads it.
    pub(crate) targets: Mutex<Vec<Arc<Target>>>,
    /// The threads every target runs on (a target added at run time too).
    pub(crate) threads: Arc<lunar_core::threads::Contexts>,
    pub(crate) thread_set: Option<Arc<lunar_core::ThreadSet>>,
    pub(crate) server: ServerHandle,
    pub(crate) iothreads: usize,
    pub(crate) socket: PathBuf,
    /// (target, lun) -> how the LUN was configured (startup or `lun.add`).
    pub(crate) luns: Mutex<HashMap<(String, u64), LunConfig>>,
    pub(crate) pauses: Mutex<HashMap<String, Pause>>,
    pub(crate) events: broadcast::Sender<Arc<str>>,
    /// Each vhost-user controller's socket, limits and limit counts.
    pub(crate) vhost: Vec<VhostProbe>,
    /// The configuration the daemon started from: where changes are
    /// written back, and what does not change at run time.
    pub(crate) config: Config,
    /// The running configuration but for the LUNs (those are in `luns`):
    /// targets with their ACLs and CHAP, portals as configured.
    pub(crate) live: Mutex<Config>,
    /// Each portal as configured (port 0 possible) and as bound.
    pub(crate) portals: Mutex<Vec<(std::net::SocketAddr, std::net::SocketAddr)>>,
    /// Held by a change from its write of the configuration file to its
    /// end in the core, so that changes reach the file in the order they
    /// reach the daemon.
    pub(crate) write_lock: tokio::sync::Mutex<()>,
}

/// What the control plane reads of a vhost-user controller.
pub struct VhostProbe {
    pub socket: PathBuf,
    pub limits: lunar_vhost::VhostLimits,
    pub hits: Arc<dyn Fn() -> lunar_vhost::VhostLimitHits + Send + Sync>,
}

impl VhostProbe {
    pub fn of(c: &lunar_vhost::Controller) -> VhostProbe {
        VhostProbe { socket: c.socket().to_path_buf(), limits: c.limits(), hits: c.limit_hits_probe() }
    }
}

impl Context {
    /// The control plane of a daemon started from `config`, whose targets
    /// are `targets` (at least one: the threads are theirs).
    pub fn new(
        config: &Config,
        targets: Vec<Arc<Target>>,
        server: ServerHandle,
        vhost: Vec<VhostProbe>,
    ) -> Arc<Context> {
        let mut luns = HashMap::new();
        for t in &config.targets {
            for (i, l) in t.numbered() {
                luns.insert((t.name.clone(), i), l.clone());
            }
        }
        let first = targets.first().expect("a daemon serves at least one target");
        let threads = first.contexts().clone();
        let thread_set = first.threads();
        let portals = config.portals.iter().copied().zip(server.portals()).collect();
        let mut live = config.clone();
        for t in &mut live.targets {
            t.luns.clear();
        }
        Arc::new(Context {
            targets: Mutex::new(targets),
            threads,
            thread_set,
            server,
            iothreads: config.iothreads,
            socket: config.control.clone(),
            luns: Mutex::new(luns),
            pauses: Mutex::new(HashMap::new()),
            events: broadcast::channel(4096).0,
            vhost,
            config: config.clone(),
            live: Mutex::new(live),
            portals: Mutex::new(portals),
            write_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The core targets now.
    pub fn targets(&self) -> Vec<Arc<Target>> {
        self.targets.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The running configuration: targets (with their ACLs and CHAP),
    /// portals and the rest as they are now, each target's LUNs numbered
    /// explicitly.
    pub fn running_config(&self) -> Config {
        let mut c = self.live.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let luns = self.luns.lock().unwrap_or_else(|e| e.into_inner());
        for t in &mut c.targets {
            let mut mine: Vec<(u64, LunConfig)> =
                luns.iter().filter(|((tn, _), _)| *tn == t.name).map(|((_, n), l)| (*n, l.clone())).collect();
            mine.sort_by_key(|(n, _)| *n);
            t.luns = mine
                .into_iter()
                .map(|(n, mut l)| {
                    l.number = Some(n);
                    l
                })
                .collect();
        }
        c
    }

    pub(crate) fn pause_of(&self, target: &str) -> Pause {
        self.pauses.lock().unwrap_or_else(|e| e.into_inner()).get(target).cloned().unwrap_or_default()
    }

    pub(crate) fn set_paused_by_operator(&self, target: &str) {
        let mut p = self.pauses.lock().unwrap_or_else(|e| e.into_inner());
        p.entry(target.to_string()).or_default().by.get_or_insert("operator");
    }

    pub(crate) fn note_core_event(&self, target: &str, e: &Event) {
        let mut p = self.pauses.lock().unwrap_or_else(|e| e.into_inner());
        match e {
            Event::Stopped => {
                p.entry(target.to_string()).or_default().by.get_or_insert("operator");
            }
            Event::Resumed => {
                p.remove(target);
            }
            _ => {}
        }
    }
}

/// The running control socket. Dropping it stops serving and removes the socket.
pub struct ControlServer {
    path: PathBuf,
    shutdown: watch::Sender<bool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ControlServer {
    /// Binds the socket (creating its directory, replacing a stale socket,
    /// mode 0600) and starts serving it on a thread of its own.
    pub fn start(ctx: Arc<Context>) -> Result<ControlServer, ControlError> {
        let path = ctx.socket.clone();
        let listener = bind(&path)?;
        let sources: Vec<_> = ctx.targets().iter().map(|t| (t.clone(), t.events())).collect();
        let sessions = ctx.server.session_events();
        let (shutdown, shutdown_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("lunar-control".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!("control plane: cannot start its runtime: {e}");
                        return;
                    }
                };
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    events::spawn(ctx.clone(), sources, sessions);
                    serve(listener, ctx, shutdown_rx).await;
                });
            })
            .map_err(ControlError::Thread)?;
        tracing::info!(socket = %path.display(), "control socket listening");
        Ok(ControlServer { path, shutdown, thread: Some(thread) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving (open connections are closed) and removes the socket.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn bind(path: &Path) -> Result<std::os::unix::net::UnixListener, ControlError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| ControlError::Dir { path: dir.to_path_buf(), source })?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse { path: path.to_path_buf() });
            }
            tracing::info!(socket = %path.display(), "removing a stale control socket");
            std::fs::remove_file(path).map_err(|source| ControlError::Bind { path: path.to_path_buf(), source })?;
        }
        Ok(_) => return Err(ControlError::NotASocket { path: path.to_path_buf() }),
        Err(_) => {}
    }
    let bind_err = |source| ControlError::Bind { path: path.to_path_buf(), source };
    let l = std::os::unix::net::UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    l.set_nonblocking(true).map_err(bind_err)?;
    Ok(l)
}

async fn serve(listener: std::os::unix::net::UnixListener, ctx: Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let listener = match tokio::net::UnixListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("control socket: {e}");
            return;
        }
    };
    let clients = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let mut stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("control socket accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if clients.fetch_add(1, Ordering::AcqRel) >= MAX_CLIENTS {
            clients.fetch_sub(1, Ordering::AcqRel);
            let e = RpcError::new(rpc::INTERNAL_ERROR, format!("too many control clients (at most {MAX_CLIENTS})"));
            let line = format!("{}\n", rpc::error_response(&Value::Null, &e));
            tokio::task::spawn_local(async move {
                let _ = stream.write_all(line.as_bytes()).await;
            });
            continue;
        }
        let (ctx, clients, shutdown) = (ctx.clone(), clients.clone(), shutdown.clone());
        tokio::task::spawn_local(async move {
            serve_client(stream, &ctx, shutdown).await;
            clients.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

enum Line {
    Data(Vec<u8>),
    Eof,
    TooLong,
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(rd: &mut R) -> io::Result<Line> {
    let mut buf = Vec::new();
    let n = (&mut *rd).take(MAX_REQUEST + 1).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(Line::Eof);
    }
    if buf.last() != Some(&b'\n') {
        // A line cut by the limit, or by the client going away mid-request
        // (then it is not executed).
        return Ok(if n as u64 > MAX_REQUEST { Line::TooLong } else { Line::Eof });
    }
    Ok(Line::Data(buf))
}

async fn write_value<W: tokio::io::AsyncWrite + Unpin>(wr: &mut W, v: &Value) -> io::Result<()> {
    let mut line = v.to_string();
    line.push('\n');
    wr.write_all(line.as_bytes()).await
}

async fn serve_client(stream: UnixStream, ctx: &Arc<Context>, mut shutdown: watch::Receiver<bool>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let line = tokio::select! {
            l = read_line(&mut rd) => l,
            _ = shutdown.changed() => return,
        };
        let line = match line {
            Ok(Line::Data(l)) => l,
            Ok(Line::Eof) | Err(_) => return,
            Ok(Line::TooLong) => {
                let e = RpcError::new(rpc::INVALID_REQUEST, format!("request longer than {MAX_REQUEST} bytes"));
                let _ = write_value(&mut wr, &rpc::error_response(&Value::Null, &e)).await;
                return;
            }
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match rpc::parse_line(&line) {
            Incoming::Invalid(e) => {
                if write_value(&mut wr, &rpc::error_response(&Value::Null, &e)).await.is_err() {
                    return;
                }
            }
            Incoming::Single(Ok(call)) if call.method == "events" => {
                let id = call.id.clone().unwrap_or(Value::Null);
                if let Err(e) = rpc::Params::new(&call.params, &[]) {
                    if write_value(&mut wr, &rpc::error_response(&id, &e)).await.is_err() {
                        return;
                    }
                    continue;
                }
                // Subscribe before acknowledging: nothing after the ack is missed.
                let rx = ctx.events.subscribe();
                let ack = rpc::response(&id, serde_json::json!({ "subscribed": true }));
                if write_value(&mut wr, &ack).await.is_err() {
                    return;
                }
                stream_events(rd, wr, rx, shutdown).await;
                return;
            }
            Incoming::Single(call) => {
                if let Some(v) = methods::answer(ctx, call).await {
                    if write_value(&mut wr, &v).await.is_err() {
                        return;
                    }
                }
            }
            Incoming::Batch(calls) => {
                let mut out = Vec::new();
                for call in calls {
                    if let Some(v) = methods::answer(ctx, call).await {
                        out.push(v);
                    }
                }
                if !out.is_empty() && write_value(&mut wr, &Value::Array(out)).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// An `events` connection: one notification line per event until the
/// client goes away (what it sends from then on is ignored).
async fn stream_events(
    mut rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    mut wr: tokio::net::unix::OwnedWriteHalf,
    mut rx: broadcast::Receiver<Arc<str>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut sink = [0u8; 512];
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let line = match ev {
                    Ok(l) => l,
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        let v = rpc::notification("event", serde_json::json!({ "event": "events.lost", "count": n }));
                        Arc::from(v.to_string())
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if wr.write_all(line.as_bytes()).await.is_err() || wr.write_all(b"\n").await.is_err() {
                    return;
                }
            }
            r = rd.read(&mut sink) => {
                if !matches!(r, Ok(n) if n > 0) {
                    return;
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

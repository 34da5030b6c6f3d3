//! The iSCSI target server: portals, sessions and connections on Lunar's
//! I/O threads, serving the devices of the target core.
//!
//! Each accepted connection is handed to one I/O thread (round robin) and
//! lives there: its socket, its PDU reader, its tasks, and the request lists
//! of the queues it opens on the core (one per LUN) are all on that thread,
//! so a LUN used by several connections is served by several threads at
//! once, with no lock between them.

mod connection;
mod limits;
mod output;
mod task;
mod tmf;

pub use connection::LOGOUT_GRACE;
pub use limits::{LimitHits, ResourceLimits, DEFAULT_POLL, IMMEDIATE_EXTRA, MAX_POLL};
pub use tmf::TmfCounts;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use lunar_core::threads::Contexts;
use lunar_core::Target;
use tokio::sync::{broadcast, watch};

use crate::login::{AuthPolicy, LoginTarget, TargetRegistry};
use crate::negotiation::TargetLimits;
use crate::pdu::Isid;
use crate::text::SendTargetsEntry;

/// One iSCSI target: its name, access rules and the core target whose LUNs it serves.
#[derive(Clone)]
pub struct TargetEntry {
    pub config: LoginTarget,
    pub core: Arc<Target>,
}

impl std::fmt::Debug for TargetEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TargetEntry").field("config", &self.config).finish()
    }
}

/// What the server serves.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub portals: Vec<SocketAddr>,
    pub targets: Vec<TargetEntry>,
    /// `None` refuses discovery sessions.
    pub discovery_auth: Option<AuthPolicy>,
    pub limits: TargetLimits,
    /// Target Portal Group Tag of every portal.
    pub portal_group_tag: u16,
    /// The portals of the other gateways serving the same targets, with
    /// their Target Portal Group Tags: SendTargets lists them after this
    /// server's own (issue 16: several gateways, one target).
    pub peer_portals: Vec<(SocketAddr, u16)>,
    /// What one initiator may claim: sessions, connections, commands,
    /// buffered data, time.
    pub resources: ResourceLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("no target to serve")]
    NoTargets,
    #[error("the target's threads are gone")]
    ThreadsGone,
    #[error("a target named {0} already exists")]
    TargetExists(String),
    #[error("no target named {0}")]
    NoSuchTarget(String),
    #[error("already listening on {0}")]
    PortalExists(SocketAddr),
}

/// How a session is asked to end (the value of its kill channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// Not asked.
    No,
    /// Asked to log out (Async Message "logout requested", RFC 7143
    /// §11.9.1 event 1) within [`LOGOUT_GRACE`], closed after it.
    Logout,
    /// Closed now.
    Now,
}

/// Key of a session for reinstatement (RFC 7143 §6.3.5): same initiator,
/// same ISID, same target.
type SessionKey = (String, [u8; 6], String);

/// A live session: how to end it, and its TSIH.
#[derive(Debug)]
struct SessionHandle {
    tsih: u16,
    kill: watch::Sender<End>,
    closed: watch::Receiver<bool>,
    /// When it logged in (for the control plane).
    since: std::time::SystemTime,
    /// Its logout was answered: it is closing and no longer counts against
    /// the target's sessions (it stays registered until closed, so that a
    /// login with the same ISID still waits for it).
    logged_out: bool,
}

/// A live session as the control plane sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// TSIH: unique among the live sessions of a server.
    pub tsih: u16,
    pub initiator: String,
    /// ISID, 12 hex digits.
    pub isid: String,
    pub target: String,
    pub since: std::time::SystemTime,
}

/// Session life-cycle events (for the control plane's event stream).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SessionEvent {
    Login(SessionInfo),
    Logout(SessionInfo),
    /// A login was refused (wrong CHAP secret, initiator not allowed, no
    /// such target...).
    LoginFailed(LoginFailureInfo),
}

/// A refused login, as the control plane reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginFailureInfo {
    /// Where the connection came from.
    pub peer: SocketAddr,
    /// The InitiatorName, if the initiator got as far as giving it.
    pub initiator: Option<String>,
    /// The TargetName asked for (`None`: discovery, or not given).
    pub target: Option<String>,
    /// The CHAP name the initiator answered with, if any.
    pub chap_user: Option<String>,
    /// The login status sent (class and detail, e.g. 0x0201).
    pub status: u16,
    /// A short category: `chap` (CHAP refused: wrong secret or name,
    /// malformed or out of order), `authentication` (no acceptable
    /// method), `authorization` (initiator not allowed), `not-found` (no
    /// such target), `initiator-error`, `target-error`.
    pub reason: &'static str,
    /// What went wrong, in words (for the log; never sent to the initiator).
    pub detail: String,
}

impl LoginFailureInfo {
    /// Describes a failed login of `login`.
    pub(crate) fn new<R: crate::login::TargetRegistry>(
        login: &crate::login::LoginSession<R>,
        failure: &crate::login::LoginFailure,
        peer: SocketAddr,
    ) -> LoginFailureInfo {
        use crate::login::LoginStatus as S;
        let reason = match failure.status {
            S::AUTHENTICATION_FAILURE if login.requires_chap() => "chap",
            S::AUTHENTICATION_FAILURE => "authentication",
            S::AUTHORIZATION_FAILURE => "authorization",
            S::NOT_FOUND | S::TARGET_REMOVED => "not-found",
            s if s.class == 0x03 => "target-error",
            _ => "initiator-error",
        };
        LoginFailureInfo {
            peer,
            initiator: login.initiator_name().map(str::to_owned),
            target: login.requested_target().map(str::to_owned),
            chap_user: login.chap_name().map(str::to_owned),
            status: failure.status.code(),
            reason,
            detail: failure.reason.clone(),
        }
    }
}

/// The threads connections are served on.
struct Threads(Arc<Contexts>);

impl std::fmt::Debug for Threads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Threads({} I/O threads)", self.0.io_threads())
    }
}

/// A listening portal.
#[derive(Debug)]
struct Portal {
    /// The address bound (port 0 resolved).
    addr: SocketAddr,
    /// Set to stop accepting.
    stop: watch::Sender<bool>,
    /// Becomes true (or its sender is dropped) once the listener is closed.
    closed: watch::Receiver<bool>,
}

/// State shared by all connections of a server.
///
/// The targets (names, ACLs, authentication, cores) are an immutable
/// table swapped whole by the control plane ([`ServerHandle::add_target`],
/// [`ServerHandle::update_target`], [`ServerHandle::remove_target`]) and
/// read, without a lock, at login and discovery; the I/O path never reads
/// it (a session holds its own [`TargetEntry`]).
#[derive(Debug)]
pub(crate) struct ServerState {
    pub(crate) targets: ArcSwap<HashMap<String, TargetEntry>>,
    pub(crate) discovery_auth: ArcSwap<Option<AuthPolicy>>,
    pub(crate) limits: TargetLimits,
    pub(crate) portal_group_tag: u16,
    pub(crate) peer_portals: Vec<(SocketAddr, u16)>,
    pub(crate) resources: ResourceLimits,
    pub(crate) hits: limits::LimitCounters,
    pub(crate) tmfs: tmf::TmfCounters,
    /// Commands and completions that connections caught by polling their
    /// socket, without sleeping (see `ResourceLimits::poll`).
    pub(crate) polls_caught: AtomicU64,
    connection_counts: limits::ConnectionCounts,
    /// Warnings about connections refused at accept (a flood of them must
    /// not flood the log).
    accept_log: lunar_aio::LogLimit,
    portals: Mutex<Vec<Portal>>,
    /// Numbers portals for the per-portal connection counts.
    next_portal: AtomicUsize,
    /// Round robin of accepted connections over the I/O threads.
    next_thread: AtomicUsize,
    contexts: Threads,
    next_tsih: AtomicU16,
    sessions: Mutex<HashMap<SessionKey, SessionHandle>>,
    connections: AtomicUsize,
    shutdown: watch::Sender<bool>,
    session_events: broadcast::Sender<SessionEvent>,
}

fn session_info(key: &SessionKey, s: &SessionHandle) -> SessionInfo {
    SessionInfo {
        tsih: s.tsih,
        initiator: key.0.clone(),
        isid: Isid(key.1).to_string(),
        target: key.2.clone(),
        since: s.since,
    }
}

impl TargetRegistry for ServerState {
    fn target(&self, name: &str) -> Option<LoginTarget> {
        self.targets.load().get(name).map(|t| t.config.clone())
    }

    fn discovery_auth(&self) -> Option<AuthPolicy> {
        self.discovery_auth.load().as_ref().clone()
    }

    fn allocate_tsih(&self) -> Option<u16> {
        loop {
            let t = self.next_tsih.fetch_add(1, Ordering::Relaxed);
            if t != 0 {
                return Some(t);
            }
        }
    }
}

impl ServerState {
    /// The SendTargets entries for a discovery that arrived on a connection
    /// whose local address is `local` (see [`advertised_portals`]).
    pub(crate) fn send_targets_entries(&self, local: Option<SocketAddr>) -> Vec<SendTargetsEntry> {
        let portals = advertised_portals(&self.portal_addrs(), local);
        let mut v: Vec<SendTargetsEntry> = self
            .targets
            .load()
            .values()
            .map(|t| SendTargetsEntry {
                name: t.config.name.clone(),
                portals: portals
                    .iter()
                    .map(|p| (*p, self.portal_group_tag))
                    .chain(self.peer_portals.iter().filter(|(p, _)| !portals.contains(p)).copied())
                    .collect(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    fn portal_addrs(&self) -> Vec<SocketAddr> {
        self.portals.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|p| p.addr).collect()
    }

    /// Whether a session of `initiator` on `entry` may go on with the
    /// targets as they are now: the target is still served (by the same
    /// core) and its ACL still lets the initiator in. Checked by a login
    /// after it registered its session, so that a change of the table made
    /// meanwhile either sees the session (and ends it) or is seen here.
    pub(crate) fn still_allowed(&self, entry: &TargetEntry, initiator: &str) -> bool {
        self.targets
            .load()
            .get(&entry.config.name)
            .is_some_and(|now| Arc::ptr_eq(&now.core, &entry.core) && now.config.allows(initiator))
    }

    /// Registers a new session; an existing one with the same key is ended
    /// first (reinstatement), and this waits until it has closed. `None`
    /// when the target already has `max_sessions_per_target` other sessions.
    pub(crate) async fn register_session(
        &self,
        initiator: &str,
        isid: Isid,
        target: &str,
        tsih: u16,
    ) -> Option<(watch::Receiver<End>, watch::Sender<bool>)> {
        let key = (initiator.to_ascii_lowercase(), isid.0, target.to_string());
        let (kill_tx, kill_rx) = watch::channel(End::No);
        let (closed_tx, closed_rx) = watch::channel(false);
        let handle = SessionHandle {
            tsih,
            kill: kill_tx,
            closed: closed_rx,
            since: std::time::SystemTime::now(),
            logged_out: false,
        };
        let login = SessionEvent::Login(session_info(&key, &handle));
        let old = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let of_target = sessions.iter().filter(|(k, s)| k.2 == target && **k != key && !s.logged_out).count();
            if of_target >= self.resources.max_sessions_per_target {
                limits::LimitCounters::bump(&self.hits.sessions_refused);
                return None;
            }
            sessions.insert(key.clone(), handle)
        };
        if let Some(old) = &old {
            let _ = self.session_events.send(SessionEvent::Logout(session_info(&key, old)));
        }
        let _ = self.session_events.send(login);
        if let Some(old) = old {
            tracing::info!(initiator, %isid, target, old_tsih = old.tsih, "session reinstatement: closing the old session");
            let _ = old.kill.send(End::Now);
            let mut closed = old.closed;
            let _ = closed.wait_for(|c| *c).await;
        }
        Some((kill_rx, closed_tx))
    }

    /// Reports a refused login to the control plane.
    pub(crate) fn login_failed(&self, info: LoginFailureInfo) {
        let _ = self.session_events.send(SessionEvent::LoginFailed(info));
    }

    /// The session's logout was answered (see `SessionHandle::logged_out`).
    pub(crate) fn logged_out(&self, initiator: &str, isid: Isid, target: &str, tsih: u16) {
        let key = (initiator.to_ascii_lowercase(), isid.0, target.to_string());
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = sessions.get_mut(&key).filter(|s| s.tsih == tsih) {
            s.logged_out = true;
        }
    }

    pub(crate) fn unregister_session(&self, initiator: &str, isid: Isid, target: &str, tsih: u16) {
        let key = (initiator.to_ascii_lowercase(), isid.0, target.to_string());
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        if sessions.get(&key).is_some_and(|s| s.tsih == tsih) {
            if let Some(s) = sessions.remove(&key) {
                let _ = self.session_events.send(SessionEvent::Logout(session_info(&key, &s)));
            }
        }
    }

    /// Ends every session of `target` but `except_tsih` (TARGET COLD RESET).
    pub(crate) fn kill_sessions_of(&self, target: &str, except_tsih: u16) {
        for (key, s) in self.sessions.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if key.2 == target && s.tsih != except_tsih {
                let _ = s.kill.send(End::Now);
            }
        }
    }

    /// Asks the sessions that `which` selects (by key: initiator, ISID,
    /// target) to end as `how`; the receivers that say when each has closed.
    fn end_sessions(&self, how: End, which: impl Fn(&SessionKey) -> bool) -> Vec<watch::Receiver<bool>> {
        let sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut closed = Vec::new();
        for (_, s) in sessions.iter().filter(|(k, _)| which(k)) {
            s.kill.send_if_modified(|k| {
                let more = matches!((*k, how), (End::No, _) | (End::Logout, End::Now));
                if more {
                    *k = how;
                }
                more
            });
            closed.push(s.closed.clone());
        }
        closed
    }
}

/// Waits until every session of `closed` has closed.
async fn all_closed(closed: Vec<watch::Receiver<bool>>) {
    for mut c in closed {
        let _ = c.wait_for(|c| *c).await;
    }
}

/// The portals as an initiator can reach them (RFC 7143 Appendix C:
/// `TargetAddress` is an address to connect to): a wildcard portal
/// (0.0.0.0 or [::]) becomes `local`, the local address of the connection
/// the discovery arrived on, with the wildcard's port; an IPv4-mapped local
/// address (an IPv4 connection to [::]) is given as IPv4, and an IPv4
/// wildcard is left out when the connection is IPv6 (no IPv4 address of
/// ours is known). Specific portals stay as configured; no duplicates.
pub(crate) fn advertised_portals(portals: &[SocketAddr], local: Option<SocketAddr>) -> Vec<SocketAddr> {
    let local = local.map(|l| l.ip().to_canonical());
    let mut out: Vec<SocketAddr> = Vec::new();
    for p in portals {
        let a = if !p.ip().is_unspecified() {
            *p
        } else {
            match local {
                Some(ip) if p.is_ipv6() || ip.is_ipv4() => SocketAddr::new(ip, p.port()),
                _ => continue,
            }
        };
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

fn bind(addr: SocketAddr) -> Result<(std::net::TcpListener, SocketAddr), ServerError> {
    let err = |source| ServerError::Bind { addr, source };
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    let bound = l.local_addr().map_err(err)?;
    Ok((l, bound))
}

/// Accepts on `l` (bound to `addr`) on the main loop until the server
/// shuts down or the portal is removed; each connection goes to an I/O
/// thread, round robin.
fn listen(shared: &Arc<ServerState>, l: std::net::TcpListener, addr: SocketAddr) -> Result<(), ServerError> {
    let portal = shared.next_portal.fetch_add(1, Ordering::Relaxed);
    let (stop, mut stop_rx) = watch::channel(false);
    let (closed_tx, closed) = watch::channel(false);
    shared.portals.lock().unwrap_or_else(|e| e.into_inner()).push(Portal { addr, stop, closed });
    let task_shared = shared.clone();
    let spawned = shared.contexts.0.main_loop().clone().spawn(move || async move {
        let shared = task_shared;
        let listener = match tokio::net::TcpListener::from_std(l) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!("cannot register listener: {e}");
                return;
            }
        };
        let mut shutdown = shared.shutdown.subscribe();
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = shutdown.changed() => break,
                _ = stop_rx.wait_for(|s| *s) => break,
            };
            let (stream, peer) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            if !shared.connection_counts.admit(&shared.resources, portal, peer.ip()) {
                limits::LimitCounters::bump(&shared.hits.connections_refused);
                lunar_aio::warn_limited!(shared.accept_log, %peer,
                    "connection refused: too many connections on this portal or from this address");
                continue;
            }
            let slot = ConnectionSlot { shared: shared.clone(), portal, addr: peer.ip() };
            let Ok(std_stream) = stream.into_std() else { continue };
            let n = shared.contexts.0.io_threads().max(1);
            let thread = 1 + shared.next_thread.fetch_add(1, Ordering::Relaxed) % n;
            let Some(ctx) = shared.contexts.0.get(thread) else { continue };
            let conn_shared = shared.clone();
            let spawned = ctx.spawn(move || async move {
                let shared = conn_shared;
                shared.connections.fetch_add(1, Ordering::Relaxed);
                connection::serve(std_stream, peer, shared.clone(), thread).await;
                shared.connections.fetch_sub(1, Ordering::Relaxed);
                drop(slot);
            });
            if spawned.is_err() {
                tracing::warn!(%peer, "I/O thread gone; connection dropped");
            }
        }
        drop(listener);
        let _ = closed_tx.send(true);
    });
    if spawned.is_err() {
        shared.portals.lock().unwrap_or_else(|e| e.into_inner()).retain(|p| p.addr != addr);
        return Err(ServerError::ThreadsGone);
    }
    Ok(())
}

/// A connection counted against the portal and address limits, until dropped.
struct ConnectionSlot {
    shared: Arc<ServerState>,
    portal: usize,
    addr: std::net::IpAddr,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shared.connection_counts.release(self.portal, self.addr);
    }
}

/// A running iSCSI server.
#[derive(Debug)]
pub struct Server {
    shared: Arc<ServerState>,
    addrs: Vec<SocketAddr>,
}

impl Server {
    /// Binds every portal (errors now, not later) and starts accepting on
    /// the main loop of the first target's threads.
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let first = config.targets.first().ok_or(ServerError::NoTargets)?.core.clone();
        let contexts = first.contexts().clone();
        let mut listeners = Vec::new();
        for addr in &config.portals {
            listeners.push(bind(*addr)?);
        }
        let (shutdown, _) = watch::channel(false);
        let mut limits = config.limits.clamped();
        limits.first_burst_length = config.resources.first_burst_cap(limits.first_burst_length);
        let shared = Arc::new(ServerState {
            targets: ArcSwap::from_pointee(config.targets.iter().map(|t| (t.config.name.clone(), t.clone())).collect()),
            discovery_auth: ArcSwap::from_pointee(config.discovery_auth),
            limits,
            portal_group_tag: config.portal_group_tag,
            peer_portals: config.peer_portals,
            resources: config.resources,
            hits: limits::LimitCounters::default(),
            tmfs: tmf::TmfCounters::default(),
            polls_caught: AtomicU64::new(0),
            connection_counts: limits::ConnectionCounts::default(),
            accept_log: lunar_aio::LogLimit::default(),
            portals: Mutex::new(Vec::new()),
            next_portal: AtomicUsize::new(0),
            next_thread: AtomicUsize::new(0),
            contexts: Threads(contexts),
            next_tsih: AtomicU16::new(1),
            sessions: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
            shutdown,
            session_events: broadcast::channel(1024).0,
        });
        let mut addrs = Vec::new();
        for (l, addr) in listeners {
            listen(&shared, l, addr)?;
            addrs.push(addr);
        }
        Ok(Server { shared, addrs })
    }

    /// The addresses actually bound (port 0 resolved).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// A handle for the control plane (session list, kill, events).
    pub fn handle(&self) -> ServerHandle {
        ServerHandle { shared: self.shared.clone() }
    }

    /// Stops accepting and ends every connection: a logged-in session is
    /// asked to log out (Async Message "logout requested") and closed if it
    /// has not within [`LOGOUT_GRACE`]; logins in progress and discovery
    /// sessions end at once. Their commands complete or are aborted
    /// through the core; [`Server::connections`] falls to zero.
    pub fn shutdown(&self) {
        let _ = self.shared.shutdown.send(true);
    }
}

/// What the control plane needs of a running server; cheap to clone.
#[derive(Debug, Clone)]
pub struct ServerHandle {
    shared: Arc<ServerState>,
}

impl ServerHandle {
    /// The live sessions, by TSIH.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        let sessions = self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<SessionInfo> = sessions.iter().map(|(k, s)| session_info(k, s)).collect();
        v.sort_by_key(|s| s.tsih);
        v
    }

    /// Ends the session with this TSIH (its commands complete or are
    /// aborted through the core). False if there is none.
    pub fn kill_session(&self, tsih: u16) -> bool {
        let sessions = self.shared.sessions.lock().unwrap_or_else(|e| e.into_inner());
        match sessions.values().find(|s| s.tsih == tsih) {
            Some(s) => {
                let _ = s.kill.send(End::Now);
                true
            }
            None => false,
        }
    }

    /// Session logins, logouts and refused logins from now on.
    pub fn session_events(&self) -> broadcast::Receiver<SessionEvent> {
        self.shared.session_events.subscribe()
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::Relaxed)
    }

    /// How often each resource limit was met since the server started.
    pub fn limit_hits(&self) -> LimitHits {
        self.shared.hits.snapshot()
    }

    /// Task management functions received and answered since the server started.
    pub fn tmf_counts(&self) -> TmfCounts {
        self.shared.tmfs.snapshot()
    }

    /// How many times a connection's poll of its socket found a command or
    /// a completion, so that its thread did not sleep for it (counted
    /// when the connection sleeps or ends).
    pub fn polls_caught(&self) -> u64 {
        self.shared.polls_caught.load(Ordering::Relaxed)
    }

    /// The resource limits in force.
    pub fn resource_limits(&self) -> &ResourceLimits {
        &self.shared.resources
    }

    /// The addresses of the portals.
    pub fn portals(&self) -> Vec<SocketAddr> {
        self.shared.portal_addrs()
    }

    /// Starts listening on `addr` as well (port 0: any free port); the
    /// address bound. Discovery advertises it from now on.
    pub fn add_portal(&self, addr: SocketAddr) -> Result<SocketAddr, ServerError> {
        if addr.port() != 0 && self.portals().contains(&addr) {
            return Err(ServerError::PortalExists(addr));
        }
        let (l, bound) = bind(addr)?;
        listen(&self.shared, l, bound)?;
        Ok(bound)
    }

    /// Stops listening on the portal bound to `addr` and waits until its
    /// socket is closed (the address can be bound again). Connections
    /// accepted through it go on. False if there is no such portal.
    pub async fn remove_portal(&self, addr: SocketAddr) -> bool {
        let portal = {
            let mut portals = self.shared.portals.lock().unwrap_or_else(|e| e.into_inner());
            let Some(i) = portals.iter().position(|p| p.addr == addr) else { return false };
            portals.remove(i)
        };
        let _ = portal.stop.send(true);
        let mut closed = portal.closed;
        let _ = closed.wait_for(|c| *c).await;
        true
    }

    /// The targets served now.
    pub fn targets(&self) -> Vec<TargetEntry> {
        let mut v: Vec<TargetEntry> = self.shared.targets.load().values().cloned().collect();
        v.sort_by(|a, b| a.config.name.cmp(&b.config.name));
        v
    }

    /// Serves one more target (logins and discovery see it at once).
    pub fn add_target(&self, entry: TargetEntry) -> Result<(), ServerError> {
        let name = entry.config.name.clone();
        let mut exists = false;
        self.shared.targets.rcu(|old| {
            exists = old.contains_key(&name);
            let mut new = HashMap::clone(old);
            if !exists {
                new.insert(name.clone(), entry.clone());
            }
            new
        });
        if exists {
            return Err(ServerError::TargetExists(name));
        }
        Ok(())
    }

    /// Changes the login rules of target `name` (ACL, authentication,
    /// alias): new logins follow the new rules at once; a session whose
    /// initiator the new ACL does not allow is asked to log out and closed
    /// (this waits until it has); other sessions go on (they authenticated
    /// under the rules of their login).
    pub async fn update_target(
        &self,
        name: &str,
        change: impl Fn(&mut LoginTarget),
    ) -> Result<LoginTarget, ServerError> {
        let mut updated = None;
        self.shared.targets.rcu(|old| {
            let mut new = HashMap::clone(old);
            updated = new.get_mut(name).map(|e| {
                change(&mut e.config);
                e.config.clone()
            });
            new
        });
        let config = updated.ok_or_else(|| ServerError::NoSuchTarget(name.to_string()))?;
        let closed = self.shared.end_sessions(End::Logout, |k| k.2 == name && !config.allows(&k.0));
        all_closed(closed).await;
        Ok(config)
    }

    /// Stops serving target `name`: new logins and discovery no longer see
    /// it, its sessions are asked to log out and closed after
    /// [`LOGOUT_GRACE`] (their commands complete or are aborted through
    /// the core); returns once all have closed, with the entry removed.
    pub async fn remove_target(&self, name: &str) -> Result<TargetEntry, ServerError> {
        let mut removed = None;
        self.shared.targets.rcu(|old| {
            let mut new = HashMap::clone(old);
            removed = new.remove(name);
            new
        });
        let entry = removed.ok_or_else(|| ServerError::NoSuchTarget(name.to_string()))?;
        all_closed(self.shared.end_sessions(End::Logout, |k| k.2 == name)).await;
        Ok(entry)
    }

    /// Replaces the authentication of discovery sessions (`None` refuses them).
    pub fn set_discovery_auth(&self, auth: Option<AuthPolicy>) {
        self.shared.discovery_auth.store(Arc::new(auth));
    }
}

#[cfg(test)]
mod tests {
    use super::advertised_portals;
    use std::net::SocketAddr;

    fn addrs(list: &[&str]) -> Vec<SocketAddr> {
        list.iter().map(|a| a.parse().unwrap()).collect()
    }

    #[test]
    fn wildcard_portals_are_advertised_as_the_connection_address() {
        let local = Some("10.0.0.5:3260".parse().unwrap());
        assert_eq!(advertised_portals(&addrs(&["0.0.0.0:3260"]), local), addrs(&["10.0.0.5:3260"]));
        assert_eq!(advertised_portals(&addrs(&["[::]:3260"]), local), addrs(&["10.0.0.5:3260"]));
        let mapped = Some("[::ffff:10.0.0.5]:3260".parse().unwrap());
        assert_eq!(advertised_portals(&addrs(&["[::]:3260"]), mapped), addrs(&["10.0.0.5:3260"]));
        let v6 = Some("[fd00::5]:3261".parse().unwrap());
        assert_eq!(
            advertised_portals(&addrs(&["0.0.0.0:3260", "[::]:3261", "10.1.1.1:3262"]), v6),
            addrs(&["[fd00::5]:3261", "10.1.1.1:3262"]),
            "no IPv4 address is known for the IPv4 wildcard"
        );
        assert_eq!(
            advertised_portals(&addrs(&["0.0.0.0:3260", "10.0.0.5:3260"]), local),
            addrs(&["10.0.0.5:3260"]),
            "no duplicates"
        );
        assert_eq!(advertised_portals(&addrs(&["0.0.0.0:3260", "127.0.0.1:3261"]), None), addrs(&["127.0.0.1:3261"]));
    }
}

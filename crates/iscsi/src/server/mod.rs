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
mod task;
mod tmf;

pub use connection::LOGOUT_GRACE;
pub use limits::{LimitHits, ResourceLimits, IMMEDIATE_EXTRA};
pub use tmf::TmfCounts;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use lunar_target::Target;
use tokio::sync::{broadcast, watch};

use crate::login::{AuthPolicy, TargetConfig, TargetRegistry};
use crate::negotiation::TargetLimits;
use crate::pdu::Isid;
use crate::text::SendTargetsEntry;

/// One iSCSI target: its name, access rules and the core target whose LUNs it serves.
#[derive(Clone)]
pub struct TargetEntry {
    pub config: TargetConfig,
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
}

/// Key of a session for reinstatement (RFC 7143 §6.3.5): same initiator,
/// same ISID, same target.
type SessionKey = (String, [u8; 6], String);

/// A live session: how to end it, and its TSIH.
#[derive(Debug)]
struct SessionHandle {
    tsih: u16,
    kill: watch::Sender<bool>,
    closed: watch::Receiver<bool>,
    /// When it logged in (for the control plane).
    since: std::time::SystemTime,
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

/// State shared by all connections of a server.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) targets: HashMap<String, TargetEntry>,
    pub(crate) discovery_auth: Option<AuthPolicy>,
    pub(crate) limits: TargetLimits,
    pub(crate) portal_group_tag: u16,
    pub(crate) resources: ResourceLimits,
    pub(crate) hits: limits::LimitCounters,
    pub(crate) tmfs: tmf::TmfCounters,
    connection_counts: limits::ConnectionCounts,
    /// Warnings about connections refused at accept (a flood of them must
    /// not flood the log).
    accept_log: lunar_aio::LogLimit,
    pub(crate) portals: Mutex<Vec<SocketAddr>>,
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

impl TargetRegistry for Shared {
    fn target(&self, name: &str) -> Option<TargetConfig> {
        self.targets.get(name).map(|t| t.config.clone())
    }

    fn discovery_auth(&self) -> Option<AuthPolicy> {
        self.discovery_auth.clone()
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

impl Shared {
    /// The SendTargets entries for a discovery that arrived on a connection
    /// whose local address is `local` (see [`advertised_portals`]).
    pub(crate) fn send_targets_entries(&self, local: Option<SocketAddr>) -> Vec<SendTargetsEntry> {
        let portals = advertised_portals(&self.portals.lock().unwrap_or_else(|e| e.into_inner()), local);
        let mut v: Vec<SendTargetsEntry> = self
            .targets
            .values()
            .map(|t| SendTargetsEntry {
                name: t.config.name.clone(),
                portals: portals.iter().map(|p| (*p, self.portal_group_tag)).collect(),
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
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
    ) -> Option<(watch::Receiver<bool>, watch::Sender<bool>)> {
        let key = (initiator.to_ascii_lowercase(), isid.0, target.to_string());
        let (kill_tx, kill_rx) = watch::channel(false);
        let (closed_tx, closed_rx) = watch::channel(false);
        let handle = SessionHandle { tsih, kill: kill_tx, closed: closed_rx, since: std::time::SystemTime::now() };
        let login = SessionEvent::Login(session_info(&key, &handle));
        let old = {
            let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
            let of_target = sessions.keys().filter(|k| k.2 == target && **k != key).count();
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
            let _ = old.kill.send(true);
            let mut closed = old.closed;
            let _ = closed.wait_for(|c| *c).await;
        }
        Some((kill_rx, closed_tx))
    }

    /// Reports a refused login to the control plane.
    pub(crate) fn login_failed(&self, info: LoginFailureInfo) {
        let _ = self.session_events.send(SessionEvent::LoginFailed(info));
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
                let _ = s.kill.send(true);
            }
        }
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

/// A connection counted against the portal and address limits, until dropped.
struct ConnectionSlot {
    shared: Arc<Shared>,
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
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
}

impl Server {
    /// Binds every portal (errors now, not later) and starts accepting on
    /// the main loop of the first target's threads.
    pub fn start(config: ServerConfig) -> Result<Server, ServerError> {
        let first = config.targets.first().ok_or(ServerError::NoTargets)?.core.clone();
        let contexts = first.contexts().clone();
        let mut listeners = Vec::new();
        let mut addrs = Vec::new();
        for addr in &config.portals {
            let l = std::net::TcpListener::bind(addr).map_err(|source| ServerError::Bind { addr: *addr, source })?;
            l.set_nonblocking(true).map_err(|source| ServerError::Bind { addr: *addr, source })?;
            addrs.push(l.local_addr().map_err(|source| ServerError::Bind { addr: *addr, source })?);
            listeners.push(l);
        }
        let (shutdown, _) = watch::channel(false);
        let mut limits = config.limits.clamped();
        limits.first_burst_length = config.resources.first_burst_cap(limits.first_burst_length);
        let shared = Arc::new(Shared {
            targets: config.targets.iter().map(|t| (t.config.name.clone(), t.clone())).collect(),
            discovery_auth: config.discovery_auth,
            limits,
            portal_group_tag: config.portal_group_tag,
            resources: config.resources,
            hits: limits::LimitCounters::default(),
            tmfs: tmf::TmfCounters::default(),
            connection_counts: limits::ConnectionCounts::default(),
            accept_log: lunar_aio::LogLimit::default(),
            portals: Mutex::new(addrs.clone()),
            next_tsih: AtomicU16::new(1),
            sessions: Mutex::new(HashMap::new()),
            connections: AtomicUsize::new(0),
            shutdown,
            session_events: broadcast::channel(1024).0,
        });
        let next_thread = Arc::new(AtomicUsize::new(0));
        for (portal, l) in listeners.into_iter().enumerate() {
            let shared = shared.clone();
            let contexts = contexts.clone();
            let next = next_thread.clone();
            contexts
                .main_loop()
                .clone()
                .spawn(move || async move {
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
                        let n = contexts.io_threads().max(1);
                        let thread = 1 + next.fetch_add(1, Ordering::Relaxed) % n;
                        let Some(ctx) = contexts.get(thread) else { continue };
                        let shared = shared.clone();
                        let spawned = ctx.spawn(move || async move {
                            shared.connections.fetch_add(1, Ordering::Relaxed);
                            connection::serve(std_stream, peer, shared.clone(), thread).await;
                            shared.connections.fetch_sub(1, Ordering::Relaxed);
                            drop(slot);
                        });
                        if spawned.is_err() {
                            tracing::warn!(%peer, "I/O thread gone; connection dropped");
                        }
                    }
                })
                .map_err(|_| ServerError::ThreadsGone)?;
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
    shared: Arc<Shared>,
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
                let _ = s.kill.send(true);
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

    /// The resource limits in force.
    pub fn resource_limits(&self) -> &ResourceLimits {
        &self.shared.resources
    }

    /// The addresses of the portals.
    pub fn portals(&self) -> Vec<SocketAddr> {
        self.shared.portals.lock().unwrap_or_else(|e| e.into_inner()).clone()
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

//! Assembling the daemon from a validated [`Config`]: threads, core targets
//! and their LUNs, the iSCSI server; and shutting it down cleanly.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lunar_block::{Backend, FileBackend, FileOptions, RbdBackend, RbdOptions};
use lunar_core::{wait, ErrorPolicies, ErrorPolicy, Target, ThreadSet};
use lunar_iscsi::chap::{ChapAlgorithm, ChapCredential, ChapPolicy};
use lunar_iscsi::login::{AuthPolicy, LoginTarget};
use lunar_iscsi::negotiation::TargetLimits;
use lunar_iscsi::server::{Server, ServerConfig, TargetEntry};
use lunar_scsi::DiskConfig;

use crate::config::{BackendSpec, Chap, Config, LunConfig, Policy};
use crate::ownership::Gateways;

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot start the I/O threads: {0}")]
    Threads(#[from] lunar_aio::ThreadError),
    #[error("target {target} LUN {lun}: {what}")]
    Lun { target: String, lun: u64, what: String },
    #[error("{0}")]
    Server(#[from] lunar_iscsi::server::ServerError),
    #[error("vhost-user: {0}")]
    Vhost(#[from] lunar_vhost::VhostError),
}

/// A running daemon.
pub struct Daemon {
    pub targets: Vec<Arc<Target>>,
    pub server: Server,
    /// vhost-user-scsi controllers (`--vhost-user`).
    pub vhost: Vec<lunar_vhost::Controller>,
    threads: Option<Arc<ThreadSet>>,
    /// The thread that follows RBD images resized by other clients.
    rbd_watch: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

/// How often the RBD follower looks at the images' update watches.
const RBD_WATCH_PERIOD: Duration = Duration::from_millis(500);

/// Follows RBD images resized outside this daemon (`rbd resize`, another
/// gateway): librbd's update watch counts header changes; when the count
/// moved, the image's size in the cluster is read and, if the LUN's size
/// differs, the LUN is resized through the core like `lunarctl lun resize`
/// (drained, then CAPACITY DATA HAS CHANGED for every I_T nexus). Control
/// plane only: a thread of its own, never an I/O thread.
///
/// With gateways it also keeps each rbd LUN's ALUA state on the image's
/// lock ([`crate::ownership::check`]).
fn follow_rbd_resizes(targets: Vec<Arc<Target>>, gateways: Option<Gateways>, stop: Arc<AtomicBool>) {
    let mut seen: HashMap<(usize, u64), u64> = HashMap::new();
    while !stop.load(Ordering::Acquire) {
        std::thread::sleep(RBD_WATCH_PERIOD);
        for (i, t) in targets.iter().enumerate() {
            for dev in t.devices() {
                let Backend::Rbd(r) = dev.disk().backend() else { continue };
                let changes = r.header_changes();
                let key = (i, dev.lun());
                // First seen: compared once, as it may have changed before.
                let changed = seen.insert(key, changes) != Some(changes);
                if let Some(g) = &gateways {
                    crate::ownership::check(t, &dev, g, changed);
                }
                if !changed {
                    continue;
                }
                let Ok(size) = r.cluster_size() else { continue };
                let bs = u64::from(dev.disk().block_size());
                if size == r.size() || size % bs != 0 {
                    continue;
                }
                tracing::info!(lun = dev.lun(), image = %r.options().spec(), size, "rbd image resized outside lunard");
                if let Err(e) = wait(t.resize_device(dev.lun(), size)) {
                    tracing::warn!(lun = dev.lun(), error = %e, "following the rbd image's new size failed");
                    seen.remove(&key);
                }
            }
        }
    }
}

pub(crate) fn policy(p: Policy) -> ErrorPolicy {
    match p {
        Policy::Report => ErrorPolicy::Report,
        Policy::Ignore => ErrorPolicy::Ignore,
        Policy::Stop => ErrorPolicy::Stop,
        Policy::Enospc => ErrorPolicy::Enospc,
    }
}

pub(crate) fn auth(chap: &Option<Chap>, mutual: &Option<Chap>) -> AuthPolicy {
    match chap {
        None => AuthPolicy::None,
        Some(c) => AuthPolicy::Chap(ChapPolicy {
            initiator: ChapCredential::new(c.user.clone(), c.secret.as_bytes().to_vec()),
            target: mutual.as_ref().map(|m| ChapCredential::new(m.user.clone(), m.secret.as_bytes().to_vec())),
            require_mutual: false,
            algorithms: vec![ChapAlgorithm::Sha256, ChapAlgorithm::Md5],
        }),
    }
}

/// How the iSCSI server lets initiators into target `t`: its name, ACL
/// and authentication (at start and after each runtime change).
pub(crate) fn login_target(t: &crate::config::TargetConfig) -> LoginTarget {
    LoginTarget {
        name: t.name.clone(),
        alias: t.alias.clone(),
        allowed_initiators: (!t.allow_initiators.is_empty()).then(|| t.allow_initiators.clone()),
        auth: auth(&t.chap, &t.mutual_chap),
    }
}

/// A stable 64-bit identity for a LUN (the NAA designator of VPD 0x83).
fn naa_id(target: &str, lun: u64) -> u64 {
    let mut h = DefaultHasher::new();
    target.hash(&mut h);
    lun.hash(&mut h);
    h.finish() & 0x0000_000f_ffff_ffff
}

pub(crate) fn open_backend(spec: &BackendSpec, readonly: bool) -> Result<Backend, String> {
    match spec {
        BackendSpec::Mem { size } => Ok(Backend::mem(*size)),
        BackendSpec::Null { size } => Ok(Backend::null(*size)),
        BackendSpec::File { path, size, direct } => {
            if let Some(n) = size {
                create_sparse(path, *n)?;
            }
            let f = FileBackend::open(path, &FileOptions { direct: *direct, readonly })
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            if let Some(n) = size {
                if f.size() != *n {
                    return Err(format!("{} is {} bytes but size= says {n}", path.display(), f.size()));
                }
            }
            if f.size() == 0 {
                return Err(format!("{} is empty", path.display()));
            }
            Ok(Backend::File(Arc::new(f)))
        }
        BackendSpec::Rbd(r) => {
            let options = rbd_options(r, readonly);
            let b = RbdBackend::open(&options).map_err(|e| e.to_string())?;
            if b.size() == 0 {
                return Err(format!("rbd image {} is empty", options.spec()));
            }
            Ok(Backend::Rbd(Arc::new(b)))
        }
    }
}

fn rbd_options(r: &crate::config::RbdSpec, readonly: bool) -> RbdOptions {
    RbdOptions {
        pool: r.pool.clone(),
        image: r.image.clone(),
        namespace: r.namespace.clone(),
        conf: r.conf.clone(),
        id: r.id.clone(),
        keyring: r.keyring.clone(),
        exclusive: r.exclusive,
        multi_writer: r.all_active,
        readonly,
    }
}

/// `pr=cluster`: the LUN's persistent reservations become the cluster's
/// (`lunar_core::cluster_reservations`), shared with every gateway serving
/// the image so. Blocking (connects to the cluster); call it right after
/// the device is added, before initiators can reach it. The watcher thread
/// it starts ends with the device.
pub(crate) fn share_reservations(dev: &Arc<lunar_core::Device>, l: &LunConfig) -> Result<(), String> {
    let BackendSpec::Rbd(r) = &l.backend else { return Ok(()) };
    if !r.pr_cluster {
        return Ok(());
    }
    let options = rbd_options(r, l.readonly);
    lunar_core::cluster_reservations::ClusterReservations::attach(dev, &options, Default::default())
        .map(|_| ())
        .map_err(|e| format!("reservations shared by the cluster: {e}"))
}

/// The backend of a LUN: [`open_backend`], wrapped for fault injection
/// with `fault=on`.
pub(crate) fn open_lun_backend(l: &LunConfig) -> Result<Backend, String> {
    let b = open_backend(&l.backend, l.readonly)?;
    Ok(if l.fault { Backend::Fault(Arc::new(lunar_block::FaultBackend::new(b))) } else { b })
}

/// Persistent reservations of a `file` LUN live beside its image
/// (`<image>.pr`, SPC-5 APTPL): restored at start, saved by the core on change.
fn restore_reservations(dev: &lunar_core::Device, image: &Path) -> Result<(), String> {
    let mut name = image.as_os_str().to_owned();
    name.push(".pr");
    let file = std::path::PathBuf::from(name);
    match std::fs::read(&file) {
        Ok(bytes) => {
            dev.disk().restore_reservations(&bytes).map_err(|e| format!("reservations in {}: {e}", file.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    }
    dev.set_reservation_file(file);
    Ok(())
}

fn create_sparse(path: &Path, size: u64) -> Result<(), String> {
    if path.exists() {
        return Ok(());
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    f.set_len(size).map_err(|e| format!("cannot size {}: {e}", path.display()))
}

/// What the disk of LUN `lun` of `target` presents; `alua`: the gateways'
/// target port groups ([`crate::config::Config::alua`]), whose local group
/// is also the relative target port.
pub(crate) fn disk_config(target: &str, lun: u64, l: &LunConfig, alua: Option<lunar_scsi::AluaConfig>) -> DiskConfig {
    let naa = naa_id(target, lun);
    DiskConfig {
        block_size: l.block_size,
        readonly: l.readonly,
        removable: l.removable,
        thin: l.thin,
        serial: l.serial.clone().unwrap_or_else(|| format!("LUNAR{naa:015X}")),
        vendor: l.vendor.clone(),
        product: l.product.clone(),
        naa_id: naa,
        target_name: target.to_string(),
        relative_port: alua.as_ref().map_or(1, |a| a.local_group()),
        alua,
        ..DiskConfig::default()
    }
}

impl Daemon {
    /// Starts everything the configuration asks for.
    pub fn start(config: &Config) -> Result<Daemon, DaemonError> {
        let threads = Arc::new(ThreadSet::start(config.iothreads)?);
        let mut targets = Vec::new();
        let mut entries = Vec::new();
        for t in &config.targets {
            let core = Target::with_threads(&t.name, threads.clone());
            for (lun, l) in t.numbered() {
                let err = |what: String| DaemonError::Lun { target: t.name.clone(), lun, what };
                let backend = open_lun_backend(l).map_err(err)?;
                let policies = ErrorPolicies { read: policy(l.rerror), write: policy(l.werror) };
                let dev = wait(core.add_device(lun, disk_config(&t.name, lun, l, config.alua()), backend, policies))
                    .map_err(|e| DaemonError::Lun { target: t.name.clone(), lun, what: e.to_string() })?;
                if let BackendSpec::File { path, .. } = &l.backend {
                    restore_reservations(&dev, path).map_err(err)?;
                }
                share_reservations(&dev, l).map_err(err)?;
                if let Some(g) = Gateways::of(config) {
                    if let BackendSpec::Rbd(r) = &l.backend {
                        if !r.pr_cluster {
                            tracing::warn!(
                                target = %t.name, lun,
                                "an rbd LUN of several gateways with pr=local: its persistent reservations are this gateway's alone (add pr=cluster on every gateway)"
                            );
                        }
                    }
                    crate::ownership::attach(&dev, &g);
                }
                if let Some(n) = l.iothread {
                    // The LUN's queues go to that I/O thread, whichever
                    // connection opens them (`lunarctl lun move` writes it).
                    wait(core.move_device(lun, n + 1)).map_err(|e| err(e.to_string()))?;
                }
            }
            entries.push(TargetEntry { config: login_target(t), core: core.clone() });
            targets.push(core);
        }
        let server = Server::start(ServerConfig {
            portals: config.portals.clone(),
            targets: entries,
            discovery_auth: Some(auth(&config.discovery_chap, &None)),
            limits: TargetLimits::default(),
            portal_group_tag: config.portal_group_tag(),
            peer_portals: config.peer_portals(),
            resources: config.limits.clone(),
        })?;
        // vhost-user-scsi: the first target's LUNs (those not bound to
        // another controller by `controller=`) as target 0, LUN 0..N.
        let mut vhost = Vec::new();
        if let (Some(t), Some(core)) = (config.targets.first(), targets.first()) {
            for v in &config.vhost_user {
                let luns = t
                    .numbered()
                    .into_iter()
                    .filter(|(_, l)| l.controller.as_ref().is_none_or(|c| *c == v.socket))
                    .map(|(n, _)| n)
                    .collect();
                let num_queues = v.num_queues.map(usize::from).unwrap_or(config.iothreads.max(1));
                // Hot-added LUNs (`lunarctl lun add`) go to the controller when it is the only one.
                let hotplug = config.vhost_user.len() == 1;
                let poll = v.poll_us.map_or(lunar_vhost::DEFAULT_POLL, |us| Duration::from_micros(us.into()));
                let cfg = lunar_vhost::ControllerConfig {
                    socket: v.socket.clone(),
                    num_queues,
                    luns: Some(luns),
                    hotplug,
                    poll,
                    limits: v.limits,
                };
                vhost.push(lunar_vhost::Controller::start(core.clone(), cfg)?);
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let follower = {
            let (targets, stop) = (targets.clone(), stop.clone());
            let gateways = Gateways::of(config);
            std::thread::Builder::new()
                .name("rbd-follow".into())
                .spawn(move || follow_rbd_resizes(targets, gateways, stop))
        };
        let rbd_watch = match follower {
            Ok(h) => Some((stop, h)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot start the thread that follows RBD resizes");
                None
            }
        };
        Ok(Daemon { targets, server, vhost, threads: Some(threads), rbd_watch })
    }

    /// The core's threads (main loop and I/O threads), while running.
    pub fn contexts(&self) -> Option<Arc<lunar_core::threads::Contexts>> {
        self.threads.as_ref().map(|t| t.contexts().clone())
    }

    /// Clean shutdown: stop accepting, end the sessions (their commands
    /// complete or are aborted), flush every backend, join the threads.
    pub fn shutdown(mut self) {
        self.stop_rbd_follower();
        self.server.shutdown();
        for v in self.vhost.drain(..) {
            v.shutdown();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.server.connections() > 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for t in &self.targets {
            for dev in t.devices() {
                let backend = dev.disk().backend().clone();
                if let Some(ctx) = t.contexts().get(1) {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let _ = ctx.spawn(move || async move {
                        let _ = tx.send(backend.flush().await);
                    });
                    match rx.recv_timeout(Duration::from_secs(30)) {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => tracing::error!(lun = dev.lun(), "flush at shutdown: {e}"),
                        Err(_) => tracing::error!(lun = dev.lun(), "flush at shutdown timed out"),
                    }
                }
            }
        }
        for t in self.targets.drain(..) {
            t.shutdown();
        }
        drop(self.threads.take());
    }
}

impl Daemon {
    fn stop_rbd_follower(&mut self) {
        if let Some((stop, h)) = self.rbd_watch.take() {
            stop.store(true, Ordering::Release);
            let _ = h.join();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop_rbd_follower();
    }
}

/// The startup banner: what is served and how to connect.
pub fn banner(config: &Config, daemon: &Daemon) -> String {
    let mut s = String::new();
    let addrs = daemon.server.local_addrs();
    for t in &config.targets {
        s.push_str(&format!("lunard: target {}\n", t.name));
        for (i, l) in t.numbered() {
            s.push_str(&format!("  LUN {i}: {}\n", l.describe()));
        }
    }
    for a in addrs {
        s.push_str(&format!("  portal {a}\n"));
    }
    if let Some((i, g)) = config.local_gateway() {
        s.push_str(&format!(
            "  gateway {} of {}: target port group {} (ALUA; `lunarctl alua show`)\n",
            g.name,
            config.gateways.len(),
            i + 1
        ));
    }
    if let (Some(t), Some(a)) = (config.targets.first(), addrs.first()) {
        let host = if a.is_ipv6() { format!("[{}]:{}", a.ip(), a.port()) } else { a.to_string() };
        s.push_str(&format!(
            "connect:\n  iscsi-inq iscsi://{host}/{}/0\n  iscsiadm -m discovery -t sendtargets -p {host} && iscsiadm -m node -T {} -p {host} --login\n",
            t.name, t.name
        ));
    }
    s
}

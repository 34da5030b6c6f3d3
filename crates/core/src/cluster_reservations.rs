//! Persistent reservations of a logical unit served by several gateways
//! (`pr=cluster` on an rbd LUN): the state lives in one RADOS object of the
//! image's pool and namespace, changed only by compare-and-set; each
//! gateway keeps a copy in its [`lunar_scsi::Disk`] that commands are
//! checked against without a lock, and learns of changes by watch/notify.
//!
//! A PERSISTENT RESERVE OUT (on tokio's blocking pool, never on the I/O
//! thread) is a loop: read the object (content and RADOS version), apply
//! the PR OUT to that state with the SPC-5 rules of `lunar-scsi`
//! ([`ReservationState::apply_pr_out`]), write the result with a write
//! operation that asserts the version read, and start again from the read
//! when someone else changed the object meanwhile ([`apply_pr_out`]). Then
//! it publishes the new state into its own copy and notifies the object's
//! watchers; it completes when every watcher has acknowledged (each one
//! re-read the object, published it and raised the unit attentions of its
//! own I_T nexuses before acknowledging) or has been fenced: a watcher that
//! did not answer within the notify timeout is blocklisted, by the address
//! it recorded in an xattr of the object when it started to watch.
//!
//! A gateway whose watch broke (a watch error, or `rados_watch_check`
//! failing) may have missed changes: its copy is marked stale (commands but
//! the unrestricted ones answer NOT READY, LOGICAL UNIT IS IN PROCESS OF
//! BECOMING READY, which initiators retry) until it has watched again and
//! re-read the object; if its client was blocklisted it connects as a new
//! client first.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use lunar_block::rbd::shared_object::{SharedObject, SharedObjectError, WatchEvent};
use lunar_block::RbdOptions;
use lunar_scsi::{
    decode_shared, encode_shared, monotonic_nanos, unit_attentions, Change, Nexus, PrOutAction, PrOutRequest,
    ReservationState, ReservationStore, RestoreError, ScsiError, SideEffect, StoreFuture,
};
use thiserror::Error;

use crate::device::Device;

/// The RADOS object that holds the reservations of `image`. Named after the
/// image (not its id) so that an operator finds it with `rados ls` next to
/// the image and every gateway derives the same name from its configuration
/// alone; in the image's pool and namespace, so that it goes where the
/// image goes and the same credentials reach it.
pub fn object_name(image: &str) -> String {
    format!("lunar.pr.{image}")
}

/// The xattr in which a watching gateway records its client address, under
/// its client id, for whoever must blocklist it.
const GATEWAY_XATTR: &str = "lunar.gateway.";

/// Why a change of the shared state failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ClusterPrError {
    /// The SPC-5 rules refused the command (RESERVATION CONFLICT, ...).
    #[error(transparent)]
    Scsi(#[from] ScsiError),
    #[error(transparent)]
    Store(#[from] SharedObjectError),
    #[error("reservation object {object} holds no valid state: {error}")]
    Corrupt { object: String, error: RestoreError },
    #[error("watcher client.{gid} of {object} did not answer and has no recorded address to blocklist")]
    Unfenceable { object: String, gid: u64 },
}

impl ClusterPrError {
    /// The SCSI error the command completes with.
    pub fn to_scsi(&self) -> ScsiError {
        use lunar_scsi::sense;
        match self {
            ClusterPrError::Scsi(e) => e.clone(),
            ClusterPrError::Store(e) if e.errno() == Some(libc::ETIMEDOUT) => {
                ScsiError::Sense(sense::COMMAND_TIMEOUT_DURING_PROCESSING.sense())
            }
            ClusterPrError::Store(e) if e.is_blocklisted() => {
                ScsiError::Sense(sense::NOT_READY_MANUAL_INTERVENTION_REQUIRED.sense())
            }
            _ => ScsiError::Sense(sense::INTERNAL_TARGET_FAILURE.sense()),
        }
    }
}

/// The object's state: its RADOS version (`None`: no object yet), the
/// state and the change that made it.
pub struct Read {
    pub version: Option<u64>,
    pub state: ReservationState,
    pub change: Option<Change>,
}

/// Reads and decodes the object (absent or empty: the empty state).
pub fn read_state(obj: &SharedObject) -> Result<Read, ClusterPrError> {
    match obj.read()? {
        None => Ok(Read { version: None, state: ReservationState::default(), change: None }),
        Some((v, b)) if b.is_empty() => Ok(Read { version: Some(v), state: ReservationState::default(), change: None }),
        Some((v, b)) => {
            let (state, change) =
                decode_shared(&b).map_err(|error| ClusterPrError::Corrupt { object: obj.name().to_string(), error })?;
            Ok(Read { version: Some(v), state, change })
        }
    }
}

/// What [`apply_pr_out`] did.
#[derive(Debug)]
pub struct Applied {
    /// The state the command was applied to (the object's, when it won).
    pub old: ReservationState,
    pub new: ReservationState,
    /// The object's version now (unchanged when the command changed nothing).
    pub version: Option<u64>,
    /// Whether the object was written.
    pub changed: bool,
    /// Unit attentions and aborts the rules call for.
    pub effects: Vec<SideEffect>,
    /// How many times another writer got in first.
    pub retries: u32,
}

/// Applies a PERSISTENT RESERVE OUT received on `nexus` to the shared
/// object: read, apply the rules, compare-and-set, again from the read on a
/// version mismatch. `on_read` sees every state read (a gateway catches up
/// its copy with it). Blocking.
pub fn apply_pr_out(
    obj: &SharedObject,
    nexus: &Nexus,
    req: &PrOutRequest,
    mut on_read: impl FnMut(&Read),
) -> Result<Applied, ClusterPrError> {
    let mut retries = 0;
    loop {
        let read = read_state(obj)?;
        on_read(&read);
        let mut next = read.state.clone();
        let mut effects = Vec::new();
        next.apply_pr_out(nexus, req, &mut effects)?;
        if next == read.state {
            return Ok(Applied { old: read.state, new: next, version: read.version, changed: false, effects, retries });
        }
        let change = Change { by: nexus.clone(), preempt_and_abort: req.action() == PrOutAction::PreemptAndAbort };
        if let Some(v) = obj.compare_and_set(read.version, &encode_shared(&next, Some(&change)))? {
            return Ok(Applied { old: read.state, new: next, version: Some(v), changed: true, effects, retries });
        }
        retries += 1;
    }
}

/// The payload of the notify that announces a logical unit reset (the
/// other notifies carry an 8-byte version).
const RESET_PAYLOAD: &[u8] = b"lunar.lu-reset";

/// Settings of a gateway's shared reservations.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// How long a PR OUT waits for the other gateways to acknowledge before
    /// it blocklists those that did not.
    pub notify_timeout: Duration,
    /// How often the watch is checked (and the lease renewed).
    pub check_interval: Duration,
    /// How long after its watch was last confirmed a gateway trusts its
    /// copy. Shorter than `notify_timeout` by more than a check interval,
    /// so that a gateway that did not acknowledge a change has stopped
    /// trusting its copy when the change completes; longer than the ping
    /// interval (1 s) and a check interval, so that a live one never stops.
    pub lease: Duration,
    /// Seconds a fenced client stays blocklisted (0: the cluster's default).
    pub blocklist_secs: u32,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            notify_timeout: Duration::from_secs(5),
            check_interval: Duration::from_millis(500),
            lease: Duration::from_secs(3),
            blocklist_secs: 3600,
        }
    }
}

/// The cluster's reservations of one logical unit, as this gateway sees
/// them: the [`ReservationStore`] of its disk, and a watcher thread that
/// ends (unwatches, and removes its fence record) once the device is gone.
/// Dropping this handle changes nothing.
pub struct ClusterReservations {
    inner: Arc<Inner>,
}

struct Inner {
    options: RbdOptions,
    settings: ClusterOptions,
    /// The client and object; replaced when the client was blocklisted.
    obj: Mutex<Arc<SharedObject>>,
    device: Weak<Device>,
    /// Tells the watcher thread of notifies, watch errors and the end.
    events: Mutex<mpsc::Sender<Signal>>,
    /// The addresses recorded in this gateway's fence record (its
    /// reservation client, then the image's data client); re-recorded
    /// when the image was reopened as a new client.
    recorded: Mutex<String>,
}

enum Signal {
    Watch(WatchEvent),
}

impl ClusterReservations {
    /// Connects to the image's cluster, reads the object into `device`'s
    /// copy, watches it, records this gateway's address, starts the watcher
    /// thread and makes this the store of `device`'s disk. Blocking (control
    /// plane). The returned handle only answers questions: the store and
    /// the thread live as long as the device.
    pub fn attach(
        device: &Arc<Device>,
        options: &RbdOptions,
        settings: ClusterOptions,
    ) -> Result<ClusterReservations, ClusterPrError> {
        let obj = Arc::new(SharedObject::open(options, &object_name(&options.image))?);
        let (tx, rx) = mpsc::channel();
        let inner = Arc::new(Inner {
            options: options.clone(),
            settings,
            obj: Mutex::new(obj.clone()),
            device: Arc::downgrade(device),
            events: Mutex::new(tx),
            recorded: Mutex::new(String::new()),
        });
        inner.establish(&obj)?;
        device.disk().set_reservation_store(Arc::new(Store(inner.clone())));
        let thread_inner = inner.clone();
        std::thread::Builder::new()
            .name(format!("pr-watch-{}", device.lun()))
            .spawn(move || thread_inner.run(rx))
            .map_err(|e| {
                ClusterPrError::Store(SharedObjectError::Rados {
                    object: obj.name().to_string(),
                    op: "spawn watcher thread",
                    errno: e.raw_os_error().unwrap_or(0),
                    reason: e.to_string(),
                })
            })?;
        Ok(ClusterReservations { inner })
    }

    /// This gateway's client id (what notify replies and `ceph` name).
    pub fn client_id(&self) -> u64 {
        self.inner.object().instance_id()
    }

    /// This gateway's client address (what a fence blocklists).
    pub fn client_addrs(&self) -> Result<String, ClusterPrError> {
        Ok(self.inner.object().addrs()?)
    }
}

/// The [`ReservationStore`] handed to the disk.
struct Store(Arc<Inner>);

impl ReservationStore for Store {
    fn announce_reset(&self) -> lunar_scsi::ResetFuture {
        let inner = self.0.clone();
        Box::pin(async move {
            let done = tokio::task::spawn_blocking(move || {
                let obj = inner.object();
                inner.notify_and_fence(&obj, RESET_PAYLOAD, "the logical unit reset")
            })
            .await;
            match done {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!("logical unit reset not confirmed by every gateway: {e}"),
                Err(e) => tracing::error!("logical unit reset announcement failed: {e}"),
            }
        })
    }

    fn apply(&self, nexus: Nexus, req: PrOutRequest) -> StoreFuture {
        let inner = self.0.clone();
        Box::pin(async move {
            match tokio::task::spawn_blocking(move || inner.apply_blocking(&nexus, &req)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!("reservation update task failed: {e}");
                    Err(ScsiError::Sense(lunar_scsi::sense::INTERNAL_TARGET_FAILURE.sense()))
                }
            }
        })
    }
}

impl Inner {
    fn object(&self) -> Arc<SharedObject> {
        self.obj.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn device(&self) -> Option<Arc<Device>> {
        self.device.upgrade()
    }

    /// Watches the object, records this client's address, reads the state
    /// and publishes it (the copy is then current: not stale).
    fn establish(&self, obj: &SharedObject) -> Result<(), ClusterPrError> {
        let tx = self.events.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let tx = Mutex::new(tx);
        // A watch needs the object: the first gateway creates it, empty
        // (the empty state); if another did meanwhile, nothing happens.
        if obj.read()?.is_none() {
            obj.compare_and_set(None, b"")?;
        }
        obj.watch(Box::new(move |ev| {
            let _ = tx.lock().unwrap_or_else(|e| e.into_inner()).send(Signal::Watch(ev));
        }))?;
        self.record_addresses(obj)?;
        let before = monotonic_nanos();
        self.refresh(obj)?;
        self.renew_from(before);
        Ok(())
    }

    /// This client's addresses, then those of the client that writes the
    /// image (its data path), recorded as this gateway's fence record: a
    /// fence must cut both, or a write admitted before the gateway stalled
    /// could still land after the change.
    fn addresses(&self, obj: &SharedObject) -> Result<String, ClusterPrError> {
        let mut addr = obj.addrs()?;
        if let Some(lunar_block::Backend::Rbd(r)) = self.device().as_ref().map(|d| d.disk().backend().clone()) {
            match r.client_addrs() {
                Ok(data) => {
                    addr.push('\n');
                    addr.push_str(&data);
                }
                Err(e) => {
                    tracing::warn!("{}: the image client's address is unknown ({e}): it is not fenced", obj.name())
                }
            }
        }
        Ok(addr)
    }

    fn record_addresses(&self, obj: &SharedObject) -> Result<(), ClusterPrError> {
        let addr = self.addresses(obj)?;
        obj.set_xattr(&format!("{GATEWAY_XATTR}{}", obj.instance_id()), addr.as_bytes())?;
        *self.recorded.lock().unwrap_or_else(|e| e.into_inner()) = addr;
        Ok(())
    }

    /// Re-records the fence record when the image's data client changed
    /// (the LUN was reopened: `lunarctl lun reopen`, a fenced owner
    /// rejoining): the old record would name a client no longer in use.
    fn refresh_addresses(&self) {
        let obj = self.object();
        let Ok(now) = self.addresses(&obj) else { return };
        if *self.recorded.lock().unwrap_or_else(|e| e.into_inner()) == now {
            return;
        }
        match self.record_addresses(&obj) {
            Ok(()) => tracing::info!("{}: this gateway's fence record now names its new image client", obj.name()),
            Err(e) => tracing::warn!("{}: re-recording this gateway's addresses failed: {e}", obj.name()),
        }
    }

    /// Trusts the copy until a lease after `confirmed` (a
    /// [`monotonic_nanos`] instant at which the watch was known good).
    fn renew_from(&self, confirmed: u64) {
        if let Some(d) = self.device() {
            let lease = u64::try_from(self.settings.lease.as_nanos()).unwrap_or(u64::MAX);
            d.disk().renew_reservations(confirmed.saturating_add(lease));
        }
    }

    /// Checks the watch; renews the lease from the time the OSD last
    /// confirmed it. `false` when it broke.
    fn check_and_renew(&self) -> bool {
        let now = monotonic_nanos();
        match self.object().watch_check() {
            Ok(age_ms) => {
                self.renew_from(now.saturating_sub(age_ms.saturating_mul(1_000_000)));
                true
            }
            Err(e) => {
                tracing::warn!("reservation watch check: {e}");
                false
            }
        }
    }

    /// Reads the object and publishes it, raising the unit attentions the
    /// change calls for on this gateway's nexuses.
    fn refresh(&self, obj: &SharedObject) -> Result<(), ClusterPrError> {
        let read = read_state(obj)?;
        self.catch_up(&read);
        Ok(())
    }

    /// Publishes a state read from the object if it is newer than the copy,
    /// with the unit attentions of this gateway's nexuses.
    fn catch_up(&self, read: &Read) {
        let (Some(version), Some(dev)) = (read.version, self.device()) else { return };
        if let Some(old) = dev.disk().publish_reservations(version, read.state.clone()) {
            for e in unit_attentions(&old, &read.state, read.change.as_ref()) {
                match e {
                    SideEffect::UnitAttention { nexus, sense } => {
                        dev.raise_unit_attention(&sense, |q| q.is_nexus(&nexus));
                    }
                    // PREEMPT AND ABORT through another gateway: this one's
                    // tasks of the preempted nexus go too.
                    SideEffect::AbortTasks { nexus } => {
                        for q in dev.queues() {
                            if q.is_nexus(&nexus) {
                                q.cancel_where(|_| true);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    fn apply_blocking(&self, nexus: &Nexus, req: &PrOutRequest) -> Result<Vec<SideEffect>, ScsiError> {
        let obj = self.object();
        let applied = apply_pr_out(&obj, nexus, req, |r| self.catch_up(r)).map_err(|e| {
            if !matches!(e, ClusterPrError::Scsi(_)) {
                tracing::error!("{}: persistent reserve out: {e}", obj.name());
            }
            e.to_scsi()
        })?;
        if !applied.changed {
            return Ok(applied.effects);
        }
        if let (Some(v), Some(dev)) = (applied.version, self.device()) {
            dev.disk().publish_reservations(v, applied.new.clone());
        }
        let version = applied.version.unwrap_or(0);
        self.notify_and_fence(&obj, &version.to_le_bytes(), &format!("reservation change {version}")).map_err(|e| {
            tracing::error!("{}: reservation change {version} not confirmed by every gateway: {e}", obj.name());
            e.to_scsi()
        })?;
        Ok(applied.effects)
    }

    /// Notifies the watchers of `payload` (a new version, or
    /// [`RESET_PAYLOAD`]), `what` it is, and blocklists those that do not
    /// acknowledge in time.
    fn notify_and_fence(&self, obj: &SharedObject, payload: &[u8], what: &str) -> Result<(), ClusterPrError> {
        let outcome = obj.notify(payload, self.settings.notify_timeout)?;
        if outcome.timed_out.is_empty() {
            return Ok(());
        }
        let me = obj.instance_id();
        let members: HashMap<u64, String> = obj
            .xattrs()?
            .into_iter()
            .filter_map(|(k, v)| {
                let gid = k.strip_prefix(GATEWAY_XATTR)?.parse().ok()?;
                Some((gid, String::from_utf8_lossy(&v).into_owned()))
            })
            .collect();
        let mut late = Vec::new();
        for w in &outcome.timed_out {
            if w.gid == me {
                // Our own watcher thread is late; this gateway's copy is
                // already current (published above).
                continue;
            }
            let addr = members
                .get(&w.gid)
                .ok_or(ClusterPrError::Unfenceable { object: obj.name().to_string(), gid: w.gid })?;
            late.push((w.gid, addr));
        }
        // Every address at once: each blocklist is a monitor proposal
        // (about 2 s here), and gateways killed together (or a killed one
        // and the one fenced by its take-over) would otherwise add up.
        let addrs: Vec<String> = late.iter().flat_map(|(_, addr)| split_addrs(addr)).collect();
        std::thread::scope(|scope| {
            let jobs: Vec<_> =
                addrs.iter().map(|a| scope.spawn(move || obj.blocklist(a, self.settings.blocklist_secs))).collect();
            jobs.into_iter().try_for_each(|job| job.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
        })?;
        if let Some((dev, target)) = self.device().and_then(|d| d.target().map(|t| (d, t))) {
            target.report_fencing(dev.lun(), "reservation", addrs.clone());
        }
        for (gid, addr) in late {
            tracing::warn!(
                "{}: gateway client.{gid} ({addr}) did not acknowledge {what} within {:?}: blocklisted",
                obj.name(),
                self.settings.notify_timeout
            );
            let _ = obj.remove_xattr(&format!("{GATEWAY_XATTR}{gid}"));
        }
        Ok(())
    }

    /// The watcher thread: answers notifies (re-read, publish, unit
    /// attentions, then acknowledge), checks the watch, and re-establishes
    /// it when it broke.
    fn run(self: Arc<Self>, rx: mpsc::Receiver<Signal>) {
        loop {
            if self.device().is_none() {
                break;
            }
            let healthy = match rx.recv_timeout(self.settings.check_interval) {
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Ok(Signal::Watch(WatchEvent::Notify { notify_id, notifier_id, payload }))
                    if payload == RESET_PAYLOAD =>
                {
                    let obj = self.object();
                    if notifier_id != obj.instance_id() {
                        self.reset_for_peer();
                    }
                    if let Err(e) = obj.ack(notify_id, b"") {
                        tracing::warn!("{}: cannot acknowledge a notify: {e}", obj.name());
                    }
                    self.check_and_renew()
                }
                Ok(Signal::Watch(WatchEvent::Notify { notify_id, .. })) => {
                    // The payload is the writer's new version; the object is
                    // read whatever it says (a later change may be there too).
                    let obj = self.object();
                    match self.refresh(&obj) {
                        Ok(()) => {
                            if let Err(e) = obj.ack(notify_id, b"") {
                                tracing::warn!("{}: cannot acknowledge a notify: {e}", obj.name());
                            }
                            self.check_and_renew()
                        }
                        Err(e) => {
                            // No acknowledgement: the writer fences this
                            // client, and the copy is stale until re-read.
                            tracing::warn!("{}: cannot re-read the reservations: {e}", obj.name());
                            false
                        }
                    }
                }
                Ok(Signal::Watch(WatchEvent::Error { errno })) => {
                    tracing::warn!("reservation watch broke (errno {errno}): re-reading before trusting the copy");
                    false
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    self.refresh_addresses();
                    self.check_and_renew()
                }
            };
            if !healthy {
                if let Some(d) = self.device() {
                    d.disk().set_reservations_stale();
                }
                if !self.reestablish() {
                    std::thread::sleep(self.settings.check_interval);
                }
            }
        }
        // Leaving cleanly: nobody needs to fence this client any more.
        let obj = self.object();
        obj.unwatch();
        let _ = obj.remove_xattr(&format!("{GATEWAY_XATTR}{}", obj.instance_id()));
    }

    /// Another gateway reset the logical unit: this gateway's side of it is
    /// reset too (its commands on it aborted, the unit attention for its
    /// nexuses), before the notify is acknowledged.
    fn reset_for_peer(&self) {
        let Some(dev) = self.device() else { return };
        let Some(target) = dev.target() else { return };
        let lun = dev.lun();
        tracing::info!(lun, "logical unit reset by another gateway: resetting this gateway's side");
        if let Err(e) = crate::wait(target.reset_device_for_peer(lun)) {
            tracing::warn!(lun, "resetting after another gateway's logical unit reset failed: {e}");
        }
    }

    /// Watches again and re-reads; a blocklisted client is replaced by a
    /// new one first. `true` when the copy is current again.
    fn reestablish(&self) -> bool {
        let obj = self.object();
        obj.unwatch();
        let blocklisted = matches!(obj.read(), Err(ref e) if e.is_blocklisted());
        let obj = if blocklisted {
            match SharedObject::open(&self.options, &object_name(&self.options.image)) {
                Ok(o) => {
                    let o = Arc::new(o);
                    *self.obj.lock().unwrap_or_else(|e| e.into_inner()) = o.clone();
                    tracing::warn!("{}: this gateway's client was blocklisted; connected again", o.name());
                    o
                }
                Err(e) => {
                    tracing::warn!("reservations: cannot connect again: {e}");
                    return false;
                }
            }
        } else {
            obj
        };
        match self.establish(&obj) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("{}: cannot watch the reservations again: {e}", obj.name());
                false
            }
        }
    }
}

/// The addresses in what `rados_getaddrs` returns: one (`v1:1.2.3.4:0/5`)
/// or a vector (`[v2:...,v1:...]`).
/// Several clients' on lines of their own (the reservation client's, then
/// the image's data client's).
fn split_addrs(s: &str) -> Vec<String> {
    s.lines()
        .flat_map(|line| {
            line.trim()
                .trim_start_matches('[')
                .trim_end_matches(']')
                .split(',')
                .map(|a| a.trim().to_string())
                .filter(|a| !a.is_empty())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_split() {
        assert_eq!(split_addrs("127.0.0.1:0/123"), vec!["127.0.0.1:0/123"]);
        assert_eq!(split_addrs("[v2:127.0.0.1:0/5,v1:127.0.0.1:0/5]"), vec!["v2:127.0.0.1:0/5", "v1:127.0.0.1:0/5"]);
        assert_eq!(
            split_addrs("[v2:127.0.0.1:0/5,v1:127.0.0.1:0/5]\n127.0.0.1:0/9"),
            vec!["v2:127.0.0.1:0/5", "v1:127.0.0.1:0/5", "127.0.0.1:0/9"]
        );
        assert_eq!(object_name("disk0"), "lunar.pr.disk0");
    }
}

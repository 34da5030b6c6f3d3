//! Which gateway owns an RBD image (issue 16): ALUA driven by the image's
//! exclusive lock.
//!
//! With `[[gateway]]` tables every rbd LUN is served by several `lunard`
//! processes. Exactly one of them writes the image: the one holding its
//! RBD exclusive lock *for good* (`rbd_lock_acquire`: librbd then refuses
//! to hand it to another client, whose writes fail with EROFS). That
//! gateway's target port group is Active/Optimized; the others are
//! Standby, which refuses media access before any data moves (NOT READY,
//! 04h/0Bh). The model:
//!
//! - **Start**: a gateway takes the lock if nobody holds it, or takes it
//!   over (fencing the holder) if the image's metadata (`lunar.owner`,
//!   which each new owner writes) names this gateway: the holder is then
//!   its own previous process, dead. Otherwise it is Standby behind the
//!   owner the metadata names, even if that owner is dead: a held lock
//!   moves only when a host or an operator asks (a take-over, below).
//! - **SET TARGET PORT GROUPS** asking for this gateway's group to be
//!   active (what Linux's `scsi_dh_alua` sends to the path it activates
//!   when multipath fails over) is a *take-over*: the group is
//!   Transitioning meanwhile, every other owner of the lock is blocklisted
//!   and its lock broken (librbd waits until the OSDs know of the
//!   blocklist, so nothing the old owner still sends can land after), then
//!   this gateway takes the lock, records itself as owner, and reports
//!   itself Active/Optimized and the others Standby. Asking for another
//!   group to be active (or this one to be standby) gives the lock up.
//! - **A fenced owner** notices when its I/O fails with ESHUTDOWN (the LUN
//!   goes offline) or, idle, when librbd says it no longer owns the lock;
//!   the follower thread ([`check`]) then reopens the image as a new
//!   client and puts the gateway back as Standby: a gateway that comes
//!   back rejoins by itself. Standby gateways refresh their view of the
//!   owner when the image's header changes (the owner's metadata write).
//!
//! A write from a fenced gateway can therefore never land after a
//! take-over; the cost is that a take-over interrupts the old owner's
//! in-flight I/O (its initiators retry it on the new owner). Control-plane
//! work only: the lock calls block, so they run on tokio's blocking pool
//! (SET TARGET PORT GROUPS) or on the follower thread, never on an I/O
//! thread.

use std::sync::Arc;

use lunar_block::{Backend, RbdBackend};
use lunar_core::{wait, Device, Target};
use lunar_scsi::{sense, AccessState, Alua, AluaControl, AluaFuture, Nexus, ScsiError, SetGroupState, StatusCode};

/// With `alua=all-active`: how long writes may wait for the image's lock
/// before its holder is taken for dead and fenced. librbd hands the lock
/// over in milliseconds; this stays well below the 30 s command timeout
/// of Linux initiators and above any hand-over under load.
pub const ALL_ACTIVE_STALL: std::time::Duration = std::time::Duration::from_secs(5);

/// The image metadata key naming the owning gateway.
pub const OWNER_KEY: &str = "lunar.owner";

/// The gateways of the configuration, by index (group = index + 1), and
/// which one this process is.
#[derive(Clone, Debug)]
pub struct Gateways {
    pub names: Vec<String>,
    pub local: u16,
}

impl Gateways {
    /// The gateways of `config`, `None` without `[[gateway]]` tables.
    pub fn of(config: &crate::config::Config) -> Option<Gateways> {
        let (index, _) = config.local_gateway()?;
        Some(Gateways {
            names: config.gateways.iter().map(|g| g.name.clone()).collect(),
            local: u16::try_from(index + 1).ok()?,
        })
    }

    fn group_of(&self, name: &str) -> Option<u16> {
        self.names.iter().position(|n| n == name).and_then(|i| u16::try_from(i + 1).ok())
    }

    fn local_name(&self) -> &str {
        self.names.get(usize::from(self.local).wrapping_sub(1)).map_or("", String::as_str)
    }

    /// Every group's state with `owner` Active/Optimized and the others Standby.
    fn states(&self, owner: Option<u16>) -> Vec<SetGroupState> {
        (1..=self.names.len())
            .filter_map(|i| u16::try_from(i).ok())
            .map(|group| SetGroupState {
                group,
                state: if Some(group) == owner { AccessState::ActiveOptimized } else { AccessState::Standby },
            })
            .collect()
    }
}

/// The decision-maker of an rbd LUN's SET TARGET PORT GROUPS.
pub struct RbdOwnership {
    backend: Arc<RbdBackend>,
    gateways: Gateways,
    /// The LU, to report the clients a take-over fenced.
    device: std::sync::Weak<Device>,
}

/// Reports to `dev`'s target's event stream that a take-over fenced `clients`.
fn report_take_over(dev: &Device, clients: &[String]) {
    if let Some(t) = dev.target() {
        t.report_fencing(dev.lun(), "take-over", clients.to_vec());
    }
}

/// Makes an rbd LUN's ALUA state follow its image's lock (see the module
/// documentation): the lock becomes managed, this gateway takes it if it
/// is free, and SET TARGET PORT GROUPS moves it. Blocking (cluster round
/// trips): call on the control plane. Other LUNs are left as they are.
pub fn attach(dev: &Arc<Device>, gateways: &Gateways) {
    let (Backend::Rbd(r), Some(alua)) = (dev.disk().backend(), dev.disk().alua()) else { return };
    if r.options().multi_writer {
        attach_all_active(dev, alua, gateways);
        return;
    }
    r.set_lock_managed(true);
    // A free lock is taken. A held one is not asked for (librbd would wait
    // for its owner to answer and, the owner dead, break its lock many
    // seconds later, racing the take-over that the hosts' multipath asks
    // of another gateway meanwhile) unless the image names this gateway
    // its owner: then the holder is this gateway's previous process, dead,
    // and the lock is taken over at once (fenced and broken). Any other
    // held lock moves by a take-over only (SET TARGET PORT GROUPS,
    // `lunarctl alua set`).
    let taken = r.lock_owners().and_then(|owners| {
        if owners.is_empty() {
            r.try_take_lock()
        } else if r.metadata(OWNER_KEY)?.as_deref() == Some(gateways.local_name()) {
            let fenced = r.take_over_lock()?;
            tracing::warn!(image = %r.options().spec(), ?fenced, "rbd lock of this gateway's previous process taken over");
            report_take_over(dev, &fenced);
            Ok(true)
        } else {
            Ok(false)
        }
    });
    let owner = match taken {
        Ok(true) => {
            record_owner(r, gateways);
            Some(gateways.local)
        }
        Ok(false) => owner_from_metadata(r, gateways),
        Err(e) => {
            tracing::warn!(lun = dev.lun(), error = %e, "rbd lock: cannot take or query it; standby");
            None
        }
    };
    tracing::info!(lun = dev.lun(), image = %r.options().spec(), ?owner, local = gateways.local, "rbd ownership");
    if let Err(e) = alua.set_states(&gateways.states(owner), StatusCode::AlteredByImplicitTransition, None) {
        tracing::warn!(lun = dev.lun(), error = %e, "setting the ALUA states from the rbd lock failed");
    }
    alua.set_control(Arc::new(RbdOwnership {
        backend: r.clone(),
        gateways: gateways.clone(),
        device: Arc::downgrade(dev),
    }));
}

/// `alua=all-active`: every gateway's group Active/Optimized for good.
/// librbd hands the lock to whichever gateway writes (the holder finishes
/// its writes in flight first, and a dead holder's lock is broken with a
/// blocklist), so no write of a gateway fenced that way lands after
/// another's; SET TARGET PORT GROUPS can change nothing.
fn attach_all_active(dev: &Device, alua: &Alua, gateways: &Gateways) {
    let all: Vec<SetGroupState> =
        gateways.states(None).into_iter().map(|s| SetGroupState { state: AccessState::ActiveOptimized, ..s }).collect();
    tracing::info!(lun = dev.lun(), "rbd image served by every gateway (alua=all-active)");
    if let Err(e) = alua.set_states(&all, StatusCode::AlteredByImplicitTransition, None) {
        tracing::warn!(lun = dev.lun(), error = %e, "setting the ALUA states failed");
    }
    alua.set_control(Arc::new(AllActive));
}

/// The decision-maker of an `alua=all-active` LUN: every group stays
/// Active/Optimized.
struct AllActive;

impl AluaControl for AllActive {
    fn set_target_port_groups<'a>(
        &'a self,
        _alua: &'a Alua,
        request: &'a [SetGroupState],
        _nexus: &'a Nexus,
    ) -> AluaFuture<'a> {
        Box::pin(async move {
            if request.iter().all(|r| r.state == AccessState::ActiveOptimized) {
                Ok(())
            } else {
                // Every gateway writes this image: there is no standby to make.
                Err(ScsiError::Sense(sense::SET_TARGET_PORT_GROUPS_COMMAND_FAILED.sense()))
            }
        })
    }
}

/// The owner named in the image's metadata, unless that is this gateway
/// (a stale record: it does not hold the lock). A cluster round trip.
fn owner_from_metadata(backend: &RbdBackend, gateways: &Gateways) -> Option<u16> {
    match backend.metadata(OWNER_KEY) {
        Ok(Some(name)) => gateways.group_of(&name).filter(|g| *g != gateways.local),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "reading the rbd image's owner failed");
            None
        }
    }
}

/// Writes this gateway's name as the image's owner. A cluster round trip.
fn record_owner(backend: &RbdBackend, gateways: &Gateways) {
    if let Err(e) = backend.set_metadata(OWNER_KEY, gateways.local_name()) {
        tracing::warn!(error = %e, "recording this gateway as the rbd image's owner failed");
    }
}

impl RbdOwnership {
    async fn take_over(&self, alua: &Alua, nexus: &Nexus) -> Result<(), ScsiError> {
        let local = self.gateways.local;
        if self.backend.owns_lock() {
            return apply(alua, &self.gateways.states(Some(local)), Some(nexus));
        }
        let transitioning = [SetGroupState { group: local, state: AccessState::Transitioning }];
        let _ = alua.set_states(&transitioning, StatusCode::AlteredBySetTargetPortGroups, Some(nexus));
        let backend = self.backend.clone();
        let taken = tokio::task::spawn_blocking(move || backend.take_over_lock()).await;
        match taken {
            Ok(Ok(fenced)) => {
                tracing::warn!(image = %self.backend.options().spec(), ?fenced, "rbd lock taken over: previous owners fenced");
                if let Some(dev) = self.device.upgrade() {
                    report_take_over(&dev, &fenced);
                }
                let (backend, gateways) = (self.backend.clone(), self.gateways.clone());
                let _ = tokio::task::spawn_blocking(move || record_owner(&backend, &gateways)).await;
                apply(alua, &self.gateways.states(Some(local)), Some(nexus))
            }
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => unreachable!("handled above"),
                };
                tracing::error!(image = %self.backend.options().spec(), error = %why, "rbd lock take-over failed");
                let standby = [SetGroupState { group: local, state: AccessState::Standby }];
                let _ = alua.set_states(&standby, StatusCode::AlteredBySetTargetPortGroups, Some(nexus));
                Err(ScsiError::Sense(sense::SET_TARGET_PORT_GROUPS_COMMAND_FAILED.sense()))
            }
        }
    }

    async fn give_up(&self, alua: &Alua, next: Option<u16>, nexus: &Nexus) -> Result<(), ScsiError> {
        let backend = self.backend.clone();
        match tokio::task::spawn_blocking(move || backend.release_lock()).await {
            Ok(Ok(())) => apply(alua, &self.gateways.states(next), Some(nexus)),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "giving the rbd lock up failed");
                Err(ScsiError::Sense(sense::SET_TARGET_PORT_GROUPS_COMMAND_FAILED.sense()))
            }
            Err(_) => Err(ScsiError::Sense(sense::SET_TARGET_PORT_GROUPS_COMMAND_FAILED.sense())),
        }
    }
}

fn apply(alua: &Alua, states: &[SetGroupState], nexus: Option<&Nexus>) -> Result<(), ScsiError> {
    alua.set_states(states, StatusCode::AlteredBySetTargetPortGroups, nexus)
        .map(|_| ())
        .map_err(|_| ScsiError::Sense(sense::SET_TARGET_PORT_GROUPS_COMMAND_FAILED.sense()))
}

impl AluaControl for RbdOwnership {
    fn set_target_port_groups<'a>(
        &'a self,
        alua: &'a Alua,
        request: &'a [SetGroupState],
        nexus: &'a Nexus,
    ) -> AluaFuture<'a> {
        Box::pin(async move {
            let local = self.gateways.local;
            let wanted = request.iter().find(|r| r.group == local).map(|r| r.state);
            let other_active = request.iter().find(|r| r.group != local && r.state.is_active()).map(|r| r.group);
            match wanted {
                Some(s) if s.is_active() => self.take_over(alua, nexus).await,
                Some(_) => self.give_up(alua, other_active, nexus).await,
                None if other_active.is_some() && alua.local_state().is_active() => {
                    self.give_up(alua, other_active, nexus).await
                }
                // Only other groups named, none made active here: only
                // their owner can change what they are.
                None => Ok(()),
            }
        })
    }
}

/// The follower thread's look at one rbd LUN under ownership (every
/// half second; blocking calls allowed): a fenced or displaced owner
/// reopens the image as a new client and becomes Standby; a Standby
/// gateway follows the owner named in the metadata when the header
/// changed. Returns whether anything was done.
pub fn check(target: &Target, dev: &Device, gateways: &Gateways, header_changed: bool) -> bool {
    let (Backend::Rbd(r), Some(alua)) = (dev.disk().backend(), dev.disk().alua()) else { return false };
    if r.options().multi_writer {
        // Writes wait for a lock holder that does not hand the lock over:
        // dead (librbd would break its lock only once the OSD dropped its
        // watch, 30 s by default) or hung. Fence it now.
        if r.write_stalled_for() >= ALL_ACTIVE_STALL && !r.owns_lock() {
            match r.fence_lock_holders() {
                Ok(fenced) if !fenced.is_empty() => {
                    tracing::warn!(
                        lun = dev.lun(), image = %r.options().spec(), ?fenced,
                        "writes waited {:?} for the rbd lock: its holder fenced", ALL_ACTIVE_STALL
                    );
                    target.report_fencing(dev.lun(), "unresponsive-lock-holder", fenced);
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(lun = dev.lun(), error = %e, "fencing the rbd lock's holder failed"),
            }
            return true;
        }
        // Fenced (librbd broke this client's lock as a dead holder's, or a
        // reservation change it did not acknowledge): a new client, and
        // the gateway serves again, Active/Optimized as before.
        if dev.offline().is_none() {
            return false;
        }
        tracing::warn!(lun = dev.lun(), image = %r.options().spec(), "this gateway's rbd client was fenced: reopening");
        if let Err(e) = wait(target.reopen_device(dev.lun())) {
            tracing::warn!(lun = dev.lun(), error = %e, "reopening the fenced rbd image failed");
        }
        return true;
    }
    if !r.is_exclusive() || r.options().exclusive {
        return false;
    }
    let lun = dev.lun();
    let active = alua.local_state().is_active();
    let fenced = dev.offline().is_some() || (active && !r.owns_lock());
    if fenced {
        tracing::warn!(lun, image = %r.options().spec(), "this gateway lost the rbd image's lock: rejoining as standby");
        let standby = [SetGroupState { group: gateways.local, state: AccessState::Standby }];
        let _ = alua.set_states(&standby, StatusCode::AlteredByImplicitTransition, None);
        if let Err(e) = wait(target.reopen_device(lun)) {
            tracing::warn!(lun, error = %e, "reopening the rbd image after losing its lock failed");
            return true;
        }
    } else if active || !header_changed {
        return false;
    }
    let owner = owner_from_metadata(r, gateways);
    let _ = alua.set_states(&gateways.states(owner), StatusCode::AlteredByImplicitTransition, None);
    true
}

//! Events raised by the target core (the control plane forwards them).

use lunar_block::ErrorKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request failed under the `stop`/`enospc` policy: its LUN pauses
    /// (raised once per pause; other LUNs go on).
    PausedOnIoError {
        lun: u64,
        errno: i32,
        kind: ErrorKind,
        write: bool,
    },
    Stopped,
    Resumed,
    DeviceAdded {
        lun: u64,
    },
    DeviceRemoved {
        lun: u64,
    },
    DeviceMoved {
        lun: u64,
        io_thread: usize,
    },
    DeviceReset {
        lun: u64,
    },
    /// The operator paused a LUN: its in-flight I/O has drained, new
    /// commands are held.
    DevicePaused {
        lun: u64,
    },
    /// A paused LUN runs again (held commands start, parked ones are re-issued).
    DeviceResumed {
        lun: u64,
    },
    /// The asymmetric access state of a target port group of a LUN changed
    /// (this process's view); every I_T nexus of the LUN here has the unit
    /// attention ASYMMETRIC ACCESS STATE CHANGED, but the one whose SET
    /// TARGET PORT GROUPS asked for it.
    AluaStateChanged {
        lun: u64,
        /// (target port group, state before, state after) of each group whose state changed.
        changes: Vec<(u16, lunar_scsi::AccessState, lunar_scsi::AccessState)>,
        /// This process's target port group and its state now.
        local_group: u16,
        local_state: lunar_scsi::AccessState,
        /// Asked for by SET TARGET PORT GROUPS (else an implicit change).
        explicit: bool,
    },
    /// A LUN's capacity changed; every I_T nexus of it has the unit
    /// attention CAPACITY DATA HAS CHANGED.
    DeviceResized {
        lun: u64,
        blocks: u64,
        block_size: u32,
    },
    /// The backend said the LUN's storage is gone for this process (an RBD
    /// client blocklisted, ESHUTDOWN): the LUN answers NOT READY, MANUAL
    /// INTERVENTION REQUIRED to every command that needs the medium until
    /// it is reopened (raised once per outage).
    DeviceOffline {
        lun: u64,
        errno: i32,
    },
    /// An offline LUN was reopened and serves the medium again.
    DeviceOnline {
        lun: u64,
    },
    /// This gateway fenced other clients of the LUN's storage
    /// (blocklisted them in the cluster): to take the image over
    /// (`take-over`), or because they did not acknowledge a change of the
    /// shared reservations or a logical unit reset in time (`reservation`).
    Fenced {
        lun: u64,
        reason: &'static str,
        /// The clients' addresses, as the blocklist took them.
        clients: Vec<String>,
    },
}

//! Events raised by the target core (the control plane forwards them).

use lunar_block::ErrorKind;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request failed under the `stop`/`enospc` policy: the target stops.
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
}

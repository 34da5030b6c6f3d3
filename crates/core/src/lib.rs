//! Lunar layer 4: the target core.
//!
//! Devices (LUNs), the queues that reach them, requests and their life cycle,
//! iteration over in-flight requests (`for_each_request_sync` /
//! `for_each_request_async`), error policies, reset, moving queues between I/O
//! threads, hot add/remove, and saving/loading in-flight requests.
//!
//! Thread model (see docs/architecture.md): each queue's request list is
//! `!Send` state of the one thread that holds it (its I/O thread while the
//! target runs, the main loop while it is stopped). Everything else reaches
//! it by sending a job there, through [`follow`].

mod background;
pub mod cluster_reservations;
pub mod device;
pub mod event;
pub mod follow;
mod gate;
pub mod policy;
pub mod queue;
pub mod request;
mod request_list;
pub mod state;
pub mod stats;
mod sync;
pub mod target;
pub mod task_management;
pub mod threads;
mod ua;

pub use device::{Device, IoErrorPause, Paused};
pub use event::Event;
pub use policy::{ErrorPolicies, ErrorPolicy};
pub use queue::{request, Queue};
pub use request::{Action, CdbBytes, Completion, Request, RequestState, Response};
pub use state::SavedRequest;
pub use target::{wait, Target, TargetError};
pub use task_management::{TaskManagement, TaskManagementDone};
pub use threads::{ThreadSet, MAIN_LOOP};

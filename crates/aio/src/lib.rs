//! Lunar layer 1: event loops.
//!
//! - [`IoThread`]: a named OS thread running a tokio current-thread runtime
//!   inside a `LocalSet`, fed by one-shot bottom halves ([`IoContext::schedule`]).
//! - The main loop is an `IoThread` too, flagged as such ([`IoThread::main_loop`]).
//! - [`IoContext`]: the `Send + Clone` handle of a thread: schedule work on it,
//!   ask whether we are on it.
//! - [`RunState`] with change handlers that run on the main loop.
//! - [`InFlight`]: a thread-confined counter of in-flight work with `drained()`.
//! - [`LogLimit`] and [`warn_limited!`]: warnings caused by a peer, rate-limited.

mod drain;
mod log_limit;
mod runstate;
mod thread;

pub use drain::{InFlight, InFlightGuard};
pub use log_limit::LogLimit;
pub use runstate::{RunState, RunStateHub};
pub use thread::{BottomHalf, IoContext, IoThread, ThreadError};

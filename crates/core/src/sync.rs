//! Sync primitives of the ownership-following protocol: std's normally,
//! shuttle's when model-checking (`--features shuttle`).

#[cfg(not(feature = "shuttle"))]
pub use std::sync::{atomic, Arc};

#[cfg(feature = "shuttle")]
pub use shuttle::sync::{atomic, Arc};

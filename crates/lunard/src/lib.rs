//! Lunar layer 6: the daemon (`lunard`), its configuration and its control plane.
pub mod config;
pub mod control;
pub mod ctl_cli;
pub mod daemon;
pub mod metrics;
pub mod notify;
pub mod ownership;
pub mod top;

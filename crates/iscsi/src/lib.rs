//! Lunar layer 5: the iSCSI protocol (RFC 7143), pure and transport-agnostic.
//!
//! This crate holds byte codecs and state machines only: no sockets, no
//! threads. The connection code drives them.
//!
//! - [`pdu`]: every PDU as a typed value; [`pdu::decode_bhs`],
//!   [`pdu::Pdu::decode`], [`pdu::Pdu::encode`], [`pdu::decode_frame`].
//! - [`digest`]: CRC32C header and data digests.
//! - [`keys`]: `key=value` text (RFC 7143 §6).
//! - [`params`]: negotiated parameters and their defaults (§13).
//! - [`negotiation`]: the operational key negotiation rules (§6, §13).
//! - [`chap`]: CHAP authentication (§12.1.3).
//! - [`login`]: the login state machine (§6.3, §11.12, §11.13).
//! - [`text`]: full-feature Text Request exchanges and SendTargets (§11.10,
//!   Appendix C).
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

pub mod chap;
pub mod digest;
pub mod keys;
pub mod login;
pub mod negotiation;
pub mod params;
pub mod pdu;
pub mod server;
pub mod text;

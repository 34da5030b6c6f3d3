//! A small iSCSI initiator over a real TCP connection, used only by Lunar's
//! tests and benchmarks.
//!
//! [`Session::login`] connects and logs in to a target (no authentication,
//! digests optional); commands are then submitted and waited for, several
//! at once ([`Session::submit`], [`Session::wait`], [`Session::wait_any`]):
//! write data goes out as immediate data, unsolicited Data-Out or answers to
//! R2Ts as the negotiated keys say; Data-In is assembled; the target's
//! NOP-In pings are answered; CmdSN, the target's CmdSN window and StatSN
//! are followed. SCSI outcomes come back as a [`Response`] (status, parsed
//! sense, data, residual): a UNIT ATTENTION reaches the caller like any
//! other CHECK CONDITION; [`Session::execute_retrying_ua`] retries through
//! them and lists the ones it saw.
//!
//! [`discover`] runs a discovery session (`SendTargets=All`).
//!
//! Every wait is bounded (by [`Config::timeout`] or an explicit duration).
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations)]

mod error;
mod negotiate;
mod scsi;
mod session;

pub use error::Error;
pub use lunar_iscsi::pdu::{TaskMgmtFunction, TmfResponseCode};
pub use negotiate::{plan_write, split, Config, DataOutPdu, Params, WritePlan};
pub use scsi::{
    decode_lun, encode_lun, opcode, parse_report_luns, sense_key, Capacity, Command, Residual, Response, Sense, Status,
    Tag,
};
pub use session::{discover, Completion, Discovered, Retried, Session};

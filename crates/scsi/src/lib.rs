//! Lunar layer 3: SCSI. Decodes CDBs into typed commands ([`Command::decode`]),
//! executes disk commands (SBC-4 / SPC-5) against a block backend
//! ([`Disk::execute`]), and encodes status and sense ([`Status`], [`Sense`]).
//! Knows nothing of threads, transports, request lists, unit attention
//! bookkeeping or LUN lists: the target core (layer 4) does those and calls in.
//!
//! Layout: [`cdb`] holds the [`Command`] type and the opcode table that is
//! the one source of truth for decoding and REPORT SUPPORTED OPERATION
//! CODES; [`commands`] has one file per command family (decoder and
//! execution); [`vpd`] the VPD pages; [`sense`], [`status`], [`lun`] the
//! wire formats of SPC-5 and SAM-5.

//! What the target core does around [`Disk::execute`]:
//! - encodes sense with [`Disk::descriptor_sense`] (D_SENSE) and completes
//!   with [`ScsiError::status`];
//! - may call [`Disk::validate`] before receiving data-out, and passes
//!   exactly [`Command::data_out_len`] bytes;
//! - holds unit attentions; gives REQUEST SENSE the pending one through
//!   [`ExecContext::pending_sense`], and the LUN list through
//!   [`ExecContext::luns`];
//! - after a successful MODE SELECT, raises MODE PARAMETERS CHANGED for the
//!   other I_T nexuses; on I_T nexus loss or reset, calls
//!   [`Disk::reset_prevent`];
//! - serializes overlapping COMPARE AND WRITE / ORWRITE (atomicity).

#![forbid(unsafe_code)]

pub mod cdb;
pub mod commands;
pub mod disk;
pub mod error;
pub mod lun;
pub mod sense;
pub mod status;
pub mod vpd;

#[cfg(test)]
mod test_util;

pub use cdb::{table::OPCODES, Command, DataDirection};
pub use commands::{
    inquiry::Inquiry, log::LogSense, mode::ModeSelect, mode::ModeSense, opcodes::ReportOpcodes, unit::StartStopUnit,
};
pub use disk::{
    Disk, DiskConfig, ExecContext, TmfSupport, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_TRANSFER_BYTES, MAX_UNMAP_BLOCKS,
    MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS,
};
pub use error::ScsiError;
pub use lun::report_luns_data;
pub use lunar_block::Backend;
pub use sense::{FieldPointer, Sense, SenseCode, SenseKey};
pub use status::Status;

//! Lunar layer 3: SCSI. Decodes CDBs into typed commands ([`Command::decode`]),
//! executes disk commands (SBC-4 / SPC-5) against a block backend
//! ([`Disk::execute`]), and encodes status and sense ([`Status`], [`Sense`]).
//! Knows nothing of threads, transports, request lists, unit attention
//! bookkeeping or LUN lists: the target core (layer 4) does those and calls in.
//!
//! Layout: [`cdb`] holds the [`Command`] type and the opcode table that is
//! the one source of truth for decoding and REPORT SUPPORTED OPERATION
//! CODES; [`commands`] has one file per command family (decoder and
//! execution); [`reservation`] the reservation state and conflict check;
//! [`vpd`] the VPD pages; [`alua`] asymmetric logical unit access; [`sense`], [`status`], [`lun`] the
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
//! - serializes overlapping COMPARE AND WRITE / ORWRITE / WRITE ATOMIC
//!   (atomicity; see [`commands::write_atomic`]);
//! - runs a sanitize operation detached from its SANITIZE command
//!   ([`commands::sanitize`]): [`Disk::start_sanitize`] begins it and
//!   returns it as a [`SanitizeOperation`], which the core steps to its end
//!   whatever happens to the command (abort, reset: SBC-4 4.11), completing
//!   the command when it ends (IMMED=0) or at once (IMMED=1);
//! - EXTENDED COPY between LUNs: fills [`ExecContext::copy_resolver`],
//!   e.g. with `Arc::new(CopyTargets::with_gates(units))` over the
//!   target's [`Disk`]s, each with the [`CopyGate`] that admits a copy's
//!   I/O to that unit as the unit's own commands are admitted (COMPARE AND
//!   WRITE atomicity; a copy within one LUN needs nothing);
//! - reservations ([`reservation`]): passes the I_T nexus in
//!   [`ExecContext::nexus`], calls [`Disk::execute_with_effects`] and carries
//!   out its [`SideEffect`]s (unit attentions per nexus, PREEMPT AND ABORT,
//!   saving [`Disk::reservation_state_bytes`] beside the backend), restores
//!   them with [`Disk::restore_reservations`] at start, and calls
//!   [`Disk::nexus_lost`] / [`Disk::reset_reservations`] on I_T nexus loss
//!   and on logical unit or target reset, and [`Disk::discard_copy_results`]
//!   on logical unit or target reset.

#![forbid(unsafe_code)]

pub mod alua;
pub mod cdb;
pub mod commands;
pub mod disk;
pub mod error;
pub mod lun;
pub mod reservation;
pub mod sense;
pub mod status;
pub mod vpd;

#[cfg(test)]
mod test_util;

pub use alua::{
    AccessState, Alua, AluaChange, AluaConfig, AluaConfigError, AluaControl, AluaError, AluaFuture, GroupState,
    LocalAluaControl, PortGroupConfig, SetGroupState, StatusCode, SupportedStates, Tpgs,
};
pub use cdb::table::{cdb_length, IoClass, OPCODES};
pub use cdb::{cut_write, Command, CutWrite, DataDirection};
pub use commands::extended_copy::{CopyGate, CopyPass, CopyResolver, CopyTarget, CopyTargets};
pub use commands::persistent_reserve::{PrOut, PrOutAction, PrOutRequest};
pub use commands::sanitize::SanitizeOperation;
pub use commands::{
    inquiry::Inquiry, log::LogSense, mode::ModeSelect, mode::ModeSense, opcodes::ReportOpcodes, unit::StartStopUnit,
};
pub use disk::{
    Disk, DiskConfig, ExecContext, Executed, ResizeError, TmfSupport, MAX_COMPARE_AND_WRITE_BLOCKS, MAX_DATA_OUT_BYTES,
    MAX_TRANSFER_BYTES, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS,
};
pub use error::{CopyAbort, ScsiError};
pub use lun::{answer_without_lun, report_luns_data};
pub use lunar_block::Backend;
pub use reservation::{
    decode_shared, encode_shared, monotonic_nanos, unit_attentions, Change, Nexus, PrType, ReservationState,
    ReservationStore, ResetFuture, RestoreError, SideEffect, StoreFuture,
};
pub use sense::{FieldPointer, Sense, SenseCode, SenseKey};
pub use status::Status;

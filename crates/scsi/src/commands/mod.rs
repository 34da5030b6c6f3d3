//! One file per command family: typed fields, the decoder the opcode table
//! points at, and the execution against a [`Disk`]. `validate` and
//! `execute` dispatch on the decoded [`Command`].

pub mod capacity;
pub mod compare_and_write;
pub mod defect;
pub mod extended_copy;
pub mod inquiry;
pub mod lba_status;
pub mod log;
pub mod mode;
pub mod opcodes;
pub mod persistent_reserve;
pub mod read_write;
pub mod report_luns;
pub mod reserve;
pub mod sanitize;
pub mod sync_cache;
pub mod target_port_groups;
pub mod unit;
pub mod unmap;
pub mod verify;
pub mod write_atomic;
pub mod write_same;

use crate::cdb::{table, Command};
use crate::disk::{Disk, ExecContext};
use crate::error::ScsiError;
use crate::reservation::SideEffect;
use crate::{sense, Nexus};
use lunar_block::Bytes;
use read_write::transfer_length_byte;

/// The checks that need the disk but no data-out: the command is offered
/// by this disk, LBAs are in range, transfers within limits.
pub(crate) fn validate(disk: &Disk, cmd: &Command) -> Result<(), ScsiError> {
    if let Some(e) = table::lookup(cmd.opcode(), cmd.service_action()) {
        if !disk.offers(e) {
            return Err(match e.service_action {
                Some(_) => ScsiError::field(1, 4),
                None => ScsiError::InvalidOpcode(e.opcode),
            });
        }
    }
    use Command::*;
    match *cmd {
        Read { lba, blocks, cdb_len, .. }
        | Write { lba, blocks, cdb_len, .. }
        | WriteAndVerify { lba, blocks, cdb_len, .. }
        | Verify { lba, blocks, cdb_len, .. } => {
            disk.check_range(lba, u64::from(blocks))?;
            disk.check_transfer(blocks, transfer_length_byte(cdb_len))
        }
        OrWrite { lba, blocks, .. } => {
            disk.check_range(lba, u64::from(blocks))?;
            disk.check_transfer(blocks, 10)
        }
        WriteAtomic { lba, blocks, .. } => disk.validate_write_atomic(lba, blocks),
        CompareAndWrite { lba, blocks, .. } => {
            disk.check_range(lba, u64::from(blocks))?;
            if blocks > disk.max_compare_and_write_blocks() {
                return Err(ScsiError::field_byte(13));
            }
            Ok(())
        }
        WriteSame { lba, blocks, anchor, cdb_len, .. } => disk.validate_write_same(lba, blocks, anchor, cdb_len),
        PreFetch { lba, blocks, .. } | SynchronizeCache { lba, blocks, .. } => disk.check_range(lba, u64::from(blocks)),
        GetLbaStatus { lba, .. } => disk.check_range(lba, 0),
        PersistentReserveOut(ref p) => p.validate(),
        Sanitize(ref s) => disk.validate_sanitize(s),
        ExtendedCopy(ref x) => disk.validate_extended_copy(x),
        SetTargetPortGroups { param_len } => target_port_groups::validate_stpg(param_len),
        _ => Ok(()),
    }
}

/// Runs a validated command; what the core must do besides completing it
/// goes to `fx`. A READ given lent memory (`data_in`) reads into it.
pub(crate) async fn execute(
    disk: &Disk,
    cmd: &Command,
    data: Bytes,
    ctx: &ExecContext,
    data_in: Option<&lunar_block::SgBuf>,
    fx: &mut Vec<SideEffect>,
) -> Result<Vec<u8>, ScsiError> {
    use Command::*;
    match cmd {
        TestUnitReady => Ok(Vec::new()),
        RequestSense { desc, alloc_len } => Ok(disk.request_sense(*desc, *alloc_len, ctx)),
        Inquiry(i) => disk.inquiry(i),
        ModeSense(m) => disk.mode_sense(m),
        ModeSelect(m) => {
            if disk.mode_select(m, data)? {
                let except = ctx.nexus.clone().unwrap_or_else(Nexus::anonymous);
                fx.push(SideEffect::UnitAttentionOthers { except, sense: sense::MODE_PARAMETERS_CHANGED.sense() });
            }
            Ok(Vec::new())
        }
        LogSense(l) => log::log_sense(l),
        StartStopUnit(s) => disk.start_stop(s).await,
        PreventAllowMediumRemoval { prevent } => Ok(disk.prevent_allow(*prevent)),
        ReadCapacity10 => Ok(disk.read_capacity10()),
        ReadCapacity16 { alloc_len } => Ok(disk.read_capacity16(*alloc_len)),
        Read { lba, blocks, .. } => disk.read_blocks(*lba, *blocks, data_in).await,
        Write { lba, blocks, fua, .. } | WriteAtomic { lba, blocks, fua, .. } => {
            disk.write_blocks(*lba, *blocks, *fua, data).await
        }
        WriteAndVerify { lba, blocks, .. } => disk.write_and_verify(*lba, *blocks, data).await,
        Verify { lba, blocks, bytchk, .. } => disk.verify(*lba, *blocks, *bytchk, data).await,
        CompareAndWrite { lba, blocks, fua, .. } => disk.compare_and_write(*lba, *blocks, *fua, data).await,
        OrWrite { lba, blocks, fua, .. } => disk.or_write(*lba, *blocks, *fua, data).await,
        WriteSame { lba, blocks, unmap, ndob, .. } => disk.write_same(*lba, *blocks, *unmap, *ndob, data).await,
        Unmap { param_len, .. } => disk.unmap(*param_len, data).await,
        Sanitize(s) => disk.sanitize(s, data).await,
        PreFetch { .. } => Ok(Vec::new()),
        SynchronizeCache { .. } => disk.synchronize_cache().await,
        GetLbaStatus { lba, alloc_len } => disk.get_lba_status(*lba, *alloc_len).await,
        ReadDefectData { plist, glist, format, alloc_len, cdb_len, .. } => {
            Ok(defect::read_defect_data(*plist, *glist, *format, *alloc_len, *cdb_len))
        }
        ReportLuns { select_report, alloc_len } => Ok(report_luns::report_luns(*select_report, &ctx.luns, *alloc_len)),
        ReportSupportedOperationCodes(r) => disk.report_opcodes(r),
        ReportSupportedTaskManagementFunctions { repd, alloc_len } => {
            Ok(opcodes::report_tmfs(&ctx.tmf.unwrap_or_default(), *repd, *alloc_len))
        }
        PersistentReserveIn(p) => Ok(disk.persistent_reserve_in(p)),
        PersistentReserveOut(p) => disk.persistent_reserve_out(p, &data, ctx, fx).await,
        Reserve { .. } => disk.reserve_unit(ctx, fx),
        Release { .. } => disk.release_unit(ctx, fx),
        ExtendedCopy(x) => disk.extended_copy(x, data, ctx).await,
        ReceiveCopyResults(r) => disk.receive_copy_results(r, ctx),
        ReportTargetPortGroups { format, alloc_len } => disk.report_target_port_groups(*format, *alloc_len),
        SetTargetPortGroups { param_len } => disk.set_target_port_groups(*param_len, &data, ctx).await,
    }
}

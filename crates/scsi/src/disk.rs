//! The SBC-4 direct access block device: configuration, device-wide state,
//! and command execution against a [`Backend`].
//!
//! `Disk` is shared by `Arc` across I/O threads. Its mutable state (mode
//! page bits, medium and prevent state) is a handful of `AtomicBool`s:
//! lock-free, and each bit is independent, so relaxed ordering suffices (a
//! MODE SELECT racing a WRITE may see either value, as SAM-5 allows for
//! overlapping commands).

use lunar_block::Bytes;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use lunar_block::{Backend, BlockError, SgBuf};

use crate::alua::{Alua, AluaConfig};
use crate::cdb::Command;
use crate::commands;
use crate::commands::extended_copy::{CopyResolver, HeldResults};
use crate::commands::sanitize::{allowed_while_sanitizing, SanitizeState};
use crate::error::ScsiError;
use crate::reservation::{Nexus, Reservations, SideEffect};
use crate::sense::Sense;

/// Largest data transfer of one command, in bytes (reported as MAXIMUM
/// TRANSFER LENGTH in the block limits VPD page, SBC-4 6.6.4).
pub const MAX_TRANSFER_BYTES: u64 = 8 * 1024 * 1024;
/// Most data-out bytes any command that passes [`Disk::validate`] takes:
/// block writes are held to [`MAX_TRANSFER_BYTES`], COMPARE AND WRITE to
/// twice [`MAX_COMPARE_AND_WRITE_BLOCKS`] blocks, parameter lists to 64 KiB.
pub const MAX_DATA_OUT_BYTES: usize = MAX_TRANSFER_BYTES as usize;
/// Largest WRITE SAME, in logical blocks (MAXIMUM WRITE SAME LENGTH): it
/// bounds how long one command keeps the I/O thread writing (256 MiB with
/// 4 KiB blocks). libiscsi's WriteSame16.Unmap writes the range it unmaps
/// with one WRITE(16) whatever MAXIMUM TRANSFER LENGTH says, so a limit of
/// 65536 or more would also need 32 MiB transfers.
pub const MAX_WRITE_SAME_BLOCKS: u64 = 0xFFFF;
/// Largest UNMAP, in logical blocks (MAXIMUM UNMAP LBA COUNT); libiscsi
/// holds more than 2^20 "insanely big".
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 20;
/// Most block descriptors in one UNMAP parameter list.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 256;
/// Largest WRITE ATOMIC, in bytes (MAXIMUM ATOMIC TRANSFER LENGTH, in
/// blocks, in the block limits VPD page); see [`crate::commands::write_atomic`].
pub const MAX_ATOMIC_TRANSFER_BYTES: u64 = 1 << 20;
/// Largest COMPARE AND WRITE, in logical blocks.
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 128;

/// What the disk presents to initiators.
#[derive(Clone, Debug)]
pub struct DiskConfig {
    /// Logical block length: 512 or 4096.
    pub block_size: u32,
    pub readonly: bool,
    /// RMB in the standard INQUIRY data: the medium may be ejected.
    pub removable: bool,
    /// Logical block provisioning management (SBC-4 4.7): UNMAP, WRITE SAME
    /// with UNMAP, GET LBA STATUS; deallocated blocks read as zeros.
    pub thin: bool,
    /// Unit serial number (VPD 0x80).
    pub serial: String,
    /// T10 vendor identification, 8 ASCII characters (padded or cut).
    pub vendor: String,
    /// Product identification, 16 ASCII characters.
    pub product: String,
    /// Product revision level, 4 ASCII characters.
    pub revision: String,
    /// Unique per LUN: the low 64 bits of the NAA 6 designator (VPD 0x83).
    pub naa_id: u64,
    /// SCSI name of the target (e.g. an iSCSI IQN) for the target device
    /// designator of VPD 0x83; empty to leave it out.
    pub target_name: String,
    /// Relative target port identifier (VPD 0x83).
    pub relative_port: u16,
    /// Asymmetric logical unit access (SPC-5 5.16): the target port groups
    /// and this process's; `None`: none (TPGS 00b, as a single gateway).
    pub alua: Option<AluaConfig>,
}

impl Default for DiskConfig {
    fn default() -> Self {
        DiskConfig {
            block_size: 512,
            readonly: false,
            removable: false,
            thin: true,
            serial: "0".to_string(),
            vendor: "LUNAR".to_string(),
            product: "Lunar disk".to_string(),
            revision: "0001".to_string(),
            naa_id: 0,
            target_name: String::new(),
            relative_port: 1,
            alua: None,
        }
    }
}

/// Task management functions the transport supports, reported by REPORT
/// SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-5 6.36).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TmfSupport {
    pub abort_task: bool,
    pub abort_task_set: bool,
    pub clear_aca: bool,
    pub clear_task_set: bool,
    pub logical_unit_reset: bool,
    pub query_task: bool,
    pub i_t_nexus_reset: bool,
    pub query_task_set: bool,
    pub query_async_event: bool,
}

impl Default for TmfSupport {
    /// The functions both iSCSI and virtio-scsi carry.
    fn default() -> Self {
        TmfSupport {
            abort_task: true,
            abort_task_set: true,
            clear_aca: false,
            clear_task_set: true,
            logical_unit_reset: true,
            query_task: false,
            i_t_nexus_reset: false,
            query_task_set: false,
            query_async_event: false,
        }
    }
}

/// What the target core knows and the disk does not, per command.
#[derive(Clone, Debug, Default)]
pub struct ExecContext {
    /// Report sense in descriptor format (the core passes
    /// [`Disk::descriptor_sense`] here unless it knows better).
    pub descriptor_sense: bool,
    /// The LUNs of the target visible to this I_T nexus, for REPORT LUNS.
    pub luns: Vec<u64>,
    /// Sense to return from REQUEST SENSE (a pending unit attention or
    /// deferred error the core holds for this I_T nexus); `None` for NO SENSE.
    pub pending_sense: Option<Sense>,
    /// Task management functions of the transport; `None` for [`TmfSupport::default`].
    pub tmf: Option<TmfSupport>,
    /// The I_T nexus the command came on, for reservations (SPC-5 5.13);
    /// `None`: one anonymous nexus ([`Nexus::anonymous`]).
    pub nexus: Option<Nexus>,
    /// The other logical units of the target, for EXTENDED COPY between
    /// them (see [`crate::CopyTargets`]); `None`: a copy reaches only this one.
    pub copy_resolver: Option<Arc<dyn CopyResolver>>,
}

/// A command's completion and what the core must do besides.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Executed {
    /// Data-in (cut to the allocation length), or the error to complete with.
    pub result: Result<Vec<u8>, ScsiError>,
    /// Unit attentions to establish, tasks to abort, state to save; in
    /// order, and only from commands that succeeded.
    pub effects: Vec<SideEffect>,
}

/// Device-wide bits changed by MODE SELECT (SPC-5 7.5) and medium commands.
#[derive(Debug)]
pub(crate) struct DiskState {
    /// WCE in the caching mode page (SBC-4 6.5.6).
    pub wce: AtomicBool,
    /// D_SENSE in the control mode page (SPC-5 7.5.8).
    pub d_sense: AtomicBool,
    /// SWP in the control mode page.
    pub swp: AtomicBool,
    /// A removable medium is loaded.
    pub medium_present: AtomicBool,
    /// PREVENT ALLOW MEDIUM REMOVAL: removal prevented.
    pub prevent: AtomicBool,
    /// A sanitize operation running, or failed (SBC-4 4.11).
    pub sanitize: SanitizeState,
    /// Capacity in logical blocks: read once per check, changed by
    /// [`Disk::resize`] (shared with the disk's [`crate::CopyTarget`]s).
    pub num_blocks: AtomicU64,
}

/// Why [`Disk::resize`] refused a size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResizeError {
    #[error("a size of 0 bytes: a disk has at least one block")]
    Zero,
    #[error("{size} bytes is not a multiple of the logical block size ({block_size} bytes)")]
    NotBlockMultiple { size: u64, block_size: u32 },
    #[error("the backend cannot take the new size: {0}")]
    Backend(#[from] BlockError),
}

/// A SCSI direct access block device (SBC-4) over a block backend.
pub struct Disk {
    config: DiskConfig,
    backend: Backend,
    /// Shared with [`crate::CopyTarget`]s of this disk.
    pub(crate) state: Arc<DiskState>,
    /// Copy status held for RECEIVE COPY RESULTS.
    pub(crate) copy_results: HeldResults,
    /// Persistent and SPC-2 reservations (see [`crate::reservation`]);
    /// shared with the disk's [`crate::CopyTarget`]s.
    pub(crate) reservations: Arc<Reservations>,
    /// Asymmetric access states, when configured ([`DiskConfig::alua`]).
    alua: Option<Arc<Alua>>,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("config", &self.config)
            .field("backend", &self.backend.kind_name())
            .field("num_blocks", &self.num_blocks())
            .field("state", &self.state)
            .field("reservations", &self.reservations)
            .finish()
    }
}

impl Disk {
    /// A disk of `backend.size() / block_size` blocks. A block size other
    /// than 512 or 4096 is replaced by 512.
    pub fn new(mut config: DiskConfig, backend: Backend) -> Disk {
        if config.block_size != 512 && config.block_size != 4096 {
            tracing::warn!(block_size = config.block_size, "unsupported block size, using 512");
            config.block_size = 512;
        }
        let num_blocks = backend.size() / u64::from(config.block_size);
        let alua = config.alua.clone().map(|c| {
            let local_ports = c.groups().iter().find(|g| g.id == c.local_group()).map(|g| g.relative_ports.clone());
            if !local_ports.unwrap_or_default().contains(&config.relative_port) {
                tracing::warn!(
                    relative_port = config.relative_port,
                    group = c.local_group(),
                    "the relative target port is not in this process's target port group"
                );
            }
            Arc::new(Alua::new(c))
        });
        Disk {
            alua,
            config,
            backend,
            copy_results: HeldResults::default(),
            state: Arc::new(DiskState {
                wce: AtomicBool::new(true),
                d_sense: AtomicBool::new(false),
                swp: AtomicBool::new(false),
                medium_present: AtomicBool::new(true),
                prevent: AtomicBool::new(false),
                sanitize: SanitizeState::default(),
                num_blocks: AtomicU64::new(num_blocks),
            }),
            reservations: Arc::default(),
        }
    }

    pub fn config(&self) -> &DiskConfig {
        &self.config
    }

    /// The asymmetric access states of this logical unit, if configured.
    pub fn alua(&self) -> Option<&Arc<Alua>> {
        self.alua.as_ref()
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Capacity in logical blocks.
    pub fn num_blocks(&self) -> u64 {
        self.state.num_blocks.load(Ordering::Acquire)
    }

    /// The number of blocks `size` bytes make, if [`Disk::resize`] may take
    /// it (checks the size only; the backend may still refuse it).
    pub fn check_resize(&self, size: u64) -> Result<u64, ResizeError> {
        let block_size = self.config.block_size;
        if size == 0 {
            return Err(ResizeError::Zero);
        }
        if !size.is_multiple_of(u64::from(block_size)) {
            return Err(ResizeError::NotBlockMultiple { size, block_size });
        }
        Ok(size / u64::from(block_size))
    }

    /// Changes the capacity to `size` bytes (a non-zero multiple of the
    /// block size) and returns the new number of blocks. Growing resizes the
    /// backend before the new capacity shows; shrinking shows it first, so a
    /// command checked against either capacity stays within the backend.
    /// Commands past the new end get LBA OUT OF RANGE. The core quiesces
    /// the logical unit around this (so no command straddles the change)
    /// and raises CAPACITY DATA HAS CHANGED on every I_T nexus.
    pub fn resize(&self, size: u64) -> Result<u64, ResizeError> {
        let blocks = self.check_resize(size)?;
        let old = self.num_blocks();
        if blocks >= old {
            self.backend.resize(size)?;
            self.state.num_blocks.store(blocks, Ordering::Release);
        } else {
            self.state.num_blocks.store(blocks, Ordering::Release);
            if let Err(e) = self.backend.resize(size) {
                self.state.num_blocks.store(old, Ordering::Release);
                return Err(e.into());
            }
        }
        Ok(blocks)
    }

    pub fn block_size(&self) -> u32 {
        self.config.block_size
    }

    /// D_SENSE of the control mode page: the core reports sense in
    /// descriptor format when this is set.
    pub fn descriptor_sense(&self) -> bool {
        self.state.d_sense.load(Ordering::Relaxed)
    }

    /// WCE of the caching mode page: when clear every write is FUA.
    pub fn write_cache_enabled(&self) -> bool {
        self.state.wce.load(Ordering::Relaxed)
    }

    /// Clears the PREVENT state. The core calls this on I_T nexus loss and
    /// on logical unit, target or power-on reset (SBC-4 5.13).
    pub fn reset_prevent(&self) {
        self.state.prevent.store(false, Ordering::Relaxed);
    }

    /// Whether PREVENT ALLOW MEDIUM REMOVAL prevents removal now.
    pub fn medium_removal_prevented(&self) -> bool {
        self.state.prevent.load(Ordering::Relaxed)
    }

    /// Largest COMPARE AND WRITE, in logical blocks (Block Limits VPD):
    /// [`MAX_COMPARE_AND_WRITE_BLOCKS`], or what the backend does atomically
    /// against its other writers (`rbd`: 512 bytes, so 1 block of 512 bytes,
    /// and none of 4096: COMPARE AND WRITE is then refused rather than done
    /// without atomicity across gateways).
    pub fn max_compare_and_write_blocks(&self) -> u8 {
        match self.backend().atomic_compare_and_write() {
            None => MAX_COMPARE_AND_WRITE_BLOCKS,
            Some(bytes) => u8::try_from(bytes / u64::from(self.config.block_size))
                .unwrap_or(u8::MAX)
                .min(MAX_COMPARE_AND_WRITE_BLOCKS),
        }
    }

    /// Largest transfer of one command, in logical blocks.
    pub fn max_transfer_blocks(&self) -> u32 {
        u32::try_from(MAX_TRANSFER_BYTES / u64::from(self.config.block_size)).unwrap_or(u32::MAX)
    }

    /// Byte offset of an LBA.
    pub(crate) fn offset(&self, lba: u64) -> u64 {
        lba.saturating_mul(u64::from(self.config.block_size))
    }

    /// Bytes in `blocks` logical blocks.
    pub(crate) fn bytes(&self, blocks: u64) -> usize {
        usize::try_from(blocks.saturating_mul(u64::from(self.config.block_size))).unwrap_or(usize::MAX)
    }

    /// SBC-4 4.5: every LBA of `[lba, lba + blocks)` must exist, and `lba`
    /// itself must, even when `blocks` is zero.
    pub(crate) fn check_range(&self, lba: u64, blocks: u64) -> Result<(), ScsiError> {
        let num_blocks = self.num_blocks();
        match lba.checked_add(blocks) {
            Some(end) if lba < num_blocks && end <= num_blocks => Ok(()),
            _ => Err(ScsiError::LbaOutOfRange { lba }),
        }
    }

    /// A transfer of `blocks` must not exceed MAXIMUM TRANSFER LENGTH;
    /// `byte` points at the TRANSFER LENGTH field of the CDB.
    pub(crate) fn check_transfer(&self, blocks: u32, byte: usize) -> Result<(), ScsiError> {
        if blocks > self.max_transfer_blocks() {
            return Err(ScsiError::field_byte(byte));
        }
        Ok(())
    }

    /// Write protection: readonly configuration or SWP.
    pub(crate) fn check_writable(&self) -> Result<(), ScsiError> {
        if self.config.readonly {
            return Err(ScsiError::WriteProtected);
        }
        if self.state.swp.load(Ordering::Relaxed) {
            return Err(ScsiError::SoftwareWriteProtected);
        }
        Ok(())
    }

    /// Whether writes are write protected (WP in the mode parameter header).
    pub(crate) fn write_protected(&self) -> bool {
        self.config.readonly || self.state.swp.load(Ordering::Relaxed)
    }

    /// Every check that needs no data-out, in this order: sanitize state,
    /// medium present, LBA ranges and transfer limits, write protect. The core may call this before
    /// receiving data-out, to fail early instead of receiving a transfer it
    /// will refuse; [`Disk::execute`] calls it too.
    pub fn validate(&self, cmd: &Command) -> Result<(), ScsiError> {
        // SPC-5 5.16.2.4: what this target port's asymmetric access state
        // admits (one atomic load), before anything else about the unit.
        if let Some(alua) = &self.alua {
            alua.admit(cmd)?;
        }
        if let Some(progress) = self.state.sanitize.in_progress() {
            if !allowed_while_sanitizing(cmd) {
                return Err(ScsiError::SanitizeInProgress { progress });
            }
        }
        if self.state.sanitize.failed() && cmd.is_medium_access() && !matches!(cmd, Command::Sanitize(_)) {
            return Err(ScsiError::SanitizeFailed);
        }
        if cmd.is_medium_access() && !self.state.medium_present.load(Ordering::Relaxed) {
            return Err(ScsiError::MediumNotPresent);
        }
        // Invalid fields and LBAs out of range first: ILLEGAL REQUEST is about
        // the CDB, DATA PROTECT about carrying it out.
        commands::validate(self, cmd)?;
        if cmd.is_write() {
            self.check_writable()?;
        }
        Ok(())
    }

    /// Before a front-end receives any data-out: how many bytes the command
    /// takes ([`Command::data_out_len`]), or the error it will end with
    /// without them ([`Disk::validate`], then [`Disk::data_out_checked`]).
    /// A transport sizes its buffers from this, never from the length the
    /// initiator announces, so a command the unit refuses claims no memory
    /// for its data. The bound [`MAX_DATA_OUT_BYTES`] holds for every
    /// command that validates.
    pub fn data_out_expected(&self, cmd: &Command, announced: usize) -> Result<usize, ScsiError> {
        self.validate(cmd)?;
        self.data_out_checked(cmd, announced)
    }

    /// The data-out length of a command that passed [`Disk::validate`],
    /// or the error its data-out alone makes. `announced` is the length
    /// the transport was told (iSCSI's EDTL, the readable part of a virtio
    /// chain): the only command whose outcome it changes is a COMPARE AND
    /// WRITE of zero blocks with data, which is how 256 blocks wrap in the
    /// one-byte field and must fail (see [`Disk::compare_and_write`]). A
    /// transport answers these errors itself: the command's execution,
    /// given no data, would not fail.
    pub fn data_out_checked(&self, cmd: &Command, announced: usize) -> Result<usize, ScsiError> {
        if matches!(cmd, Command::CompareAndWrite { blocks: 0, .. }) && announced > 0 {
            return Err(ScsiError::DataOutLength { expected: 0, actual: announced });
        }
        let n = cmd.data_out_len(self.config.block_size);
        if n > MAX_DATA_OUT_BYTES {
            // Unreachable for the commands validate() checks; kept so that a
            // new command with an unchecked length cannot claim memory.
            return Err(ScsiError::ParameterListLengthError);
        }
        Ok(n)
    }

    /// Executes a decoded command and drops its side effects: see
    /// [`Disk::execute_with_effects`], which a core that holds unit
    /// attentions per I_T nexus must call instead.
    pub async fn execute(
        &self,
        cmd: &Command,
        data_out: impl Into<Bytes>,
        ctx: &ExecContext,
    ) -> Result<Vec<u8>, ScsiError> {
        let done = self.execute_with_effects(cmd, data_out, ctx).await;
        if !done.effects.is_empty() {
            tracing::debug!(command = cmd.name(), effects = ?done.effects, "side effects dropped");
        }
        done.result
    }

    /// Executes a decoded command. `data_out` holds what the initiator sent
    /// (exactly [`Command::data_out_len`] bytes; fewer is a parameter list
    /// length error or, for writes, a failure). Checks reservations first
    /// (RESERVATION CONFLICT), then [`Disk::validate`]. Returns the data-in,
    /// already cut to the allocation length, and the side effects the core
    /// must carry out (unit attentions for other I_T nexuses, aborts). The
    /// future is not `Send`: run it on the I/O thread that owns the request.
    pub async fn execute_with_effects(&self, cmd: &Command, data_out: impl Into<Bytes>, ctx: &ExecContext) -> Executed {
        self.execute_into(cmd, data_out, ctx, None).await
    }

    /// [`Disk::execute_with_effects`] with the data-in going into memory
    /// the front-end lent (`data_in`), so that it moves once: a READ reads
    /// into it, any other command's data-in is copied in (as much as fits).
    /// The data-in of [`Executed::result`] is then empty, and
    /// [`SgBuf::filled`] says how many bytes the command returned.
    pub async fn execute_into(
        &self,
        cmd: &Command,
        data_out: impl Into<Bytes>,
        ctx: &ExecContext,
        data_in: Option<&SgBuf>,
    ) -> Executed {
        let mut effects = Vec::new();
        let mut result = self.execute_inner(cmd, data_out.into(), ctx, data_in, &mut effects).await;
        match (&mut result, data_in) {
            (Err(_), _) => effects.clear(),
            (Ok(data), Some(dest)) if !data.is_empty() => {
                dest.write_at(0, data);
                data.clear();
            }
            _ => {}
        }
        Executed { result, effects }
    }

    async fn execute_inner(
        &self,
        cmd: &Command,
        data_out: Bytes,
        ctx: &ExecContext,
        data_in: Option<&SgBuf>,
        effects: &mut Vec<SideEffect>,
    ) -> Result<Vec<u8>, ScsiError> {
        if let Some(alua) = &self.alua {
            alua.admit(cmd)?;
        }
        self.check_reservation(cmd, ctx)?;
        self.validate(cmd)?;
        commands::execute(self, cmd, data_out, ctx, data_in, effects).await
    }
}

/// Cuts data-in to the allocation length (SPC-5 4.2.5.6).
pub(crate) fn truncate(mut data: Vec<u8>, alloc_len: usize) -> Vec<u8> {
    data.truncate(alloc_len);
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send_sync<T: Send + Sync>() {}

    #[test]
    fn disk_is_send_and_sync() {
        assert_send_sync::<Disk>();
    }

    #[test]
    fn range_checks() {
        let d = Disk::new(DiskConfig::default(), Backend::mem(100 * 512));
        assert_eq!(d.num_blocks(), 100);
        assert!(d.check_range(0, 100).is_ok());
        assert!(d.check_range(99, 1).is_ok());
        assert!(d.check_range(99, 0).is_ok());
        assert_eq!(d.check_range(100, 0), Err(ScsiError::LbaOutOfRange { lba: 100 }));
        assert_eq!(d.check_range(99, 2), Err(ScsiError::LbaOutOfRange { lba: 99 }));
        assert_eq!(d.check_range(u64::MAX, 2), Err(ScsiError::LbaOutOfRange { lba: u64::MAX }));
    }

    #[test]
    fn resize_changes_every_capacity_check() {
        let d = Disk::new(DiskConfig::default(), Backend::mem(100 * 512));
        let copy = d.copy_target();
        assert_eq!(d.resize(0), Err(ResizeError::Zero));
        assert_eq!(d.resize(1000), Err(ResizeError::NotBlockMultiple { size: 1000, block_size: 512 }));
        assert_eq!(d.num_blocks(), 100, "a refused size changes nothing");
        assert_eq!(d.resize(200 * 512), Ok(200));
        assert_eq!((d.num_blocks(), d.backend().size()), (200, 200 * 512));
        assert!(d.check_range(199, 1).is_ok());
        assert!(copy.holds(199, 512), "copy targets see the new capacity");
        assert_eq!(d.resize(10 * 512), Ok(10));
        assert_eq!(d.check_range(10, 1), Err(ScsiError::LbaOutOfRange { lba: 10 }));
        assert!(!copy.holds(10, 512));
        assert_eq!(d.backend().size(), 10 * 512);
    }

    #[test]
    fn resize_refused_by_the_backend_keeps_the_capacity() {
        let f = tempfile::NamedTempFile::new().unwrap();
        f.as_file().set_len(8 * 4096).unwrap();
        let opts = lunar_block::FileOptions { readonly: true, ..Default::default() };
        let b = Backend::File(Arc::new(lunar_block::FileBackend::open(f.path(), &opts).unwrap()));
        let d = Disk::new(DiskConfig { block_size: 4096, readonly: true, ..Default::default() }, b);
        for size in [4 * 4096, 16 * 4096] {
            assert!(matches!(d.resize(size), Err(ResizeError::Backend(_))), "{size}");
            assert_eq!(d.num_blocks(), 8);
        }
    }

    #[test]
    fn odd_block_size_falls_back() {
        let d = Disk::new(DiskConfig { block_size: 1000, ..Default::default() }, Backend::mem(4096));
        assert_eq!(d.block_size(), 512);
    }
}

#[cfg(test)]
mod write_protect_tests {
    use crate::test_util::*;
    use crate::*;

    /// Every command that modifies the medium, one CDB each.
    fn write_cdbs() -> Vec<(Vec<u8>, usize)> {
        let mut caw = cdb16(0x89, 0, 0, 0);
        caw[13] = 1;
        vec![
            (vec![0x0A, 0, 0, 0, 1, 0], 512),
            (cdb10(0x2A, 0, 0, 1), 512),
            (cdb12(0xAA, 0, 0, 1), 512),
            (cdb16(0x8A, 0, 0, 1), 512),
            (cdb10(0x2E, 0, 0, 1), 512),
            (cdb12(0xAE, 0, 0, 1), 512),
            (cdb16(0x8E, 0, 0, 1), 512),
            (cdb10(0x41, 0, 0, 1), 512),
            (cdb16(0x93, 0, 0, 1), 512),
            (cdb16(0x8B, 0, 0, 1), 512),
            (caw, 1024),
            (
                {
                    let mut c = cdb16(0x9C, 0, 0, 0);
                    c[13] = 1;
                    c
                },
                512,
            ),
            (cdb10(0x42, 0, 0, 24), 24),
            (cdb10(0x48, 0x02, 0, 0), 0),
            (cdb10(0x48, 0x01, 0, 8), 8),
        ]
    }

    #[test]
    fn every_write_type_command_is_data_protect() {
        for swp in [false, true] {
            let d = disk_with(10, DiskConfig { readonly: !swp, ..Default::default() });
            if swp {
                d.state.swp.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            for (cdb, len) in write_cdbs() {
                let cmd = Command::decode(&cdb).unwrap();
                assert!(cmd.is_write(), "{}", cmd.name());
                assert_eq!(cmd.data_out_len(512), len, "{}", cmd.name());
                let e = run_data(&d, &cdb, vec![0; len]).unwrap_err();
                assert_eq!(e.sense().key, SenseKey::DataProtect, "{}", cmd.name());
                assert_eq!(e.sense().asc, 0x27, "{}", cmd.name());
            }
            // Reads, flushes and verification still work.
            assert!(run(&d, &cdb10(0x28, 0, 0, 1)).is_ok());
            assert!(run(&d, &cdb10(0x35, 0, 0, 0)).is_ok());
            assert!(run(&d, &cdb10(0x2F, 0, 0, 1)).is_ok());
        }
    }

    #[test]
    fn illegal_requests_before_data_protect() {
        let ro = disk_with(10, DiskConfig { readonly: true, ..Default::default() });
        assert_eq!(run_data(&ro, &cdb10(0x2A, 0, 10, 1), vec![0; 512]), Err(ScsiError::LbaOutOfRange { lba: 10 }));
        assert_eq!(run_data(&ro, &cdb10(0x41, 0, 0, 0), vec![0; 512]), Err(ScsiError::field_byte(7)), "WSNZ");
        assert_eq!(run_data(&ro, &cdb10(0x48, 0x02, 0, 8), vec![0; 8]), Err(ScsiError::field_byte(7)));
        assert_eq!(run_data(&ro, &cdb10(0x2A, 0, 9, 1), vec![0; 512]), Err(ScsiError::WriteProtected));
    }

    #[test]
    fn validate_fails_before_data_out() {
        let d = disk(10);
        let cmd = Command::decode(&cdb10(0x2A, 0, 9, 2)).unwrap();
        assert_eq!(d.validate(&cmd), Err(ScsiError::LbaOutOfRange { lba: 9 }));
        let ok = Command::decode(&cdb10(0x2A, 0, 8, 2)).unwrap();
        assert_eq!(d.validate(&ok), Ok(()));
    }

    #[test]
    fn wce_off_still_writes() {
        let d = disk(10);
        d.state.wce.store(false, std::sync::atomic::Ordering::Relaxed);
        run_data(&d, &cdb10(0x2A, 0, 1, 1), vec![7; 512]).unwrap();
        run_data(&d, &cdb10(0x41, 0, 2, 2), vec![0; 512]).unwrap();
        assert_eq!(run(&d, &cdb10(0x28, 0, 1, 1)).unwrap(), vec![7; 512]);
    }
}

#[cfg(test)]
mod data_out_tests {
    use crate::test_util::*;
    use crate::*;

    #[test]
    fn data_out_is_sized_from_the_cdb_and_refused_before_any_data() {
        let d = disk(1 << 16);
        let expected = |cdb: &[u8]| d.data_out_expected(&Command::decode(cdb).unwrap(), 1 << 20);
        assert_eq!(expected(&cdb10(0x2A, 0, 0, 8)), Ok(8 * 512));
        assert_eq!(expected(&cdb10(0x28, 0, 0, 8)), Ok(0), "reads take no data-out");
        // Longer than MAXIMUM TRANSFER LENGTH, or past the end: refused now.
        let too_long = d.max_transfer_blocks() + 1;
        assert!(matches!(expected(&cdb16(0x8A, 0, 0, too_long)), Err(ScsiError::InvalidFieldInCdb { .. })));
        assert!(expected(&cdb16(0x8A, 0, 0, u32::MAX)).is_err());
        assert_eq!(expected(&cdb16(0x8A, 0, 1 << 16, 1)), Err(ScsiError::LbaOutOfRange { lba: 1 << 16 }));
        // A parameter list longer than the command allows.
        let mut pr_out = vec![0x5F, 0x00, 0, 0, 0, 0xFF, 0xFF, 0xFF, 0xFF, 0];
        assert!(expected(&pr_out).is_err());
        pr_out[5..9].copy_from_slice(&24u32.to_be_bytes());
        assert_eq!(expected(&pr_out), Ok(24));
        let mut xcopy = vec![0u8; 16];
        xcopy[0] = 0x83;
        xcopy[10..14].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(expected(&xcopy), Err(ScsiError::ParameterListLengthError));
        // COMPARE AND WRITE of 256 blocks wraps to zero: refused, not a no-op.
        let caw0 = Command::decode(&cdb16(0x89, 0, 0, 0)).unwrap();
        assert!(d.data_out_expected(&caw0, 512 * 512).is_err());
        assert_eq!(d.data_out_expected(&caw0, 0), Ok(0));
    }

    proptest::proptest! {
        /// Whatever the CDB, a command that validates takes at most
        /// MAX_DATA_OUT_BYTES of data-out.
        #[test]
        fn no_cdb_asks_for_more_than_the_bound(
            op in proptest::sample::select(vec![
                0x0A_u8, 0x2A, 0xAA, 0x8A, 0x2E, 0xAE, 0x8E, 0x2F, 0xAF, 0x8F, 0x89, 0x41, 0x93, 0x42, 0x15, 0x55,
                0x5F, 0x83, 0x48, 0x9C, 0xA4,
            ]),
            rest in proptest::collection::vec(proptest::num::u8::ANY, 15),
            len in 6usize..=16,
        ) {
            // With ALUA (Active/Optimized here), so that SET TARGET PORT GROUPS is offered.
            let d = disk_with(1 << 20, DiskConfig { alua: crate::AluaConfig::gateways(2, 0).ok(), ..Default::default() });
            let mut cdb = vec![op];
            cdb.extend_from_slice(&rest[..len - 1]);
            if let Ok(cmd) = Command::decode(&cdb) {
                if let Ok(n) = d.data_out_expected(&cmd, usize::MAX) {
                    proptest::prop_assert!(n <= MAX_DATA_OUT_BYTES, "{cdb:02x?} takes {n}");
                }
            }
        }
    }
}

#[cfg(test)]
mod data_in_tests {
    use crate::test_util::*;
    use crate::*;
    use lunar_block::SgBuf;

    fn into(d: &Disk, cdb: &[u8], dest: &SgBuf) -> Result<Vec<u8>, ScsiError> {
        let cmd = Command::decode(cdb)?;
        block_on(d.execute_into(&cmd, Vec::new(), &ExecContext::default(), Some(dest))).result
    }

    #[test]
    fn data_in_lands_in_lent_memory() {
        let d = disk(64);
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
        run_data(&d, &cdb10(0x2A, 0, 8, 8), data.clone()).unwrap();
        // A READ reads into it: nothing comes back in the result.
        let dest = SgBuf::zeroed(4096 + 512, 3);
        assert_eq!(into(&d, &cdb10(0x28, 0, 8, 8), &dest), Ok(Vec::new()));
        assert_eq!(dest.filled(), 4096);
        assert_eq!(dest.to_vec(4096), data);
        // A READ larger than the memory: read apart, copied as far as it fits.
        let small = SgBuf::zeroed(1024, 2);
        assert_eq!(into(&d, &cdb10(0x28, 0, 8, 8), &small), Ok(Vec::new()));
        assert_eq!((small.filled(), small.to_vec(1024)), (1024, data[..1024].to_vec()));
        // Another command's data-in is copied in.
        let inq = SgBuf::zeroed(96, 1);
        assert_eq!(into(&d, &[0x12, 0, 0, 0, 96, 0], &inq), Ok(Vec::new()));
        assert_eq!(inq.to_vec(96), run(&d, &[0x12, 0, 0, 0, 96, 0]).unwrap());
        assert_eq!(inq.filled(), 96);
        // An error leaves it empty.
        let none = SgBuf::zeroed(512, 1);
        assert!(into(&d, &cdb10(0x28, 0, 64, 1), &none).is_err());
        assert_eq!(none.filled(), 0);
    }
}

//! CDB decoding: untrusted bytes in, a typed [`Command`] out (parse, then
//! act). Every field is checked here, once; execution only sees types.

pub(crate) mod reader;
pub mod table;

use crate::commands::extended_copy::{ExtendedCopy, ReceiveCopyResults};
use crate::commands::persistent_reserve::{PrIn, PrOut};
use crate::commands::{inquiry::Inquiry, log::LogSense, mode::ModeSelect, mode::ModeSense};
use crate::commands::{
    opcodes::ReportOpcodes, sanitize::Sanitize, target_port_groups::RtpgFormat, unit::StartStopUnit,
};
use crate::error::ScsiError;
use reader::Cdb;

/// The direction of a command's data transfer (SAM-5 5.4.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDirection {
    None,
    /// Data-in: device to initiator.
    FromDevice,
    /// Data-out: initiator to device.
    ToDevice,
}

/// A decoded command. Block counts are in logical blocks; `cdb_len` says
/// which of the 6/10/12/16-byte forms it came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// TEST UNIT READY (SPC-5 6.47).
    TestUnitReady,
    /// REQUEST SENSE (SPC-5 6.39).
    RequestSense { desc: bool, alloc_len: u8 },
    /// INQUIRY (SPC-5 6.6).
    Inquiry(Inquiry),
    /// MODE SENSE(6)/(10) (SPC-5 6.13, 6.14).
    ModeSense(ModeSense),
    /// MODE SELECT(6)/(10) (SPC-5 6.11, 6.12).
    ModeSelect(ModeSelect),
    /// LOG SENSE (SPC-5 6.8).
    LogSense(LogSense),
    /// START STOP UNIT (SBC-4 5.25).
    StartStopUnit(StartStopUnit),
    /// PREVENT ALLOW MEDIUM REMOVAL (SBC-4 5.13).
    PreventAllowMediumRemoval { prevent: bool },
    /// READ CAPACITY(10) (SBC-4 5.20).
    ReadCapacity10,
    /// READ CAPACITY(16) (SBC-4 5.21).
    ReadCapacity16 { alloc_len: u32 },
    /// READ(6)/(10)/(12)/(16) (SBC-4 5.14-5.18).
    Read { lba: u64, blocks: u32, fua: bool, dpo: bool, group: u8, cdb_len: u8 },
    /// WRITE(6)/(10)/(12)/(16) (SBC-4 5.36-5.40).
    Write { lba: u64, blocks: u32, fua: bool, dpo: bool, group: u8, cdb_len: u8 },
    /// WRITE AND VERIFY(10)/(12)/(16) (SBC-4 5.41-5.43).
    WriteAndVerify { lba: u64, blocks: u32, bytchk: u8, dpo: bool, group: u8, cdb_len: u8 },
    /// VERIFY(10)/(12)/(16) (SBC-4 5.32-5.34).
    Verify { lba: u64, blocks: u32, bytchk: u8, dpo: bool, group: u8, cdb_len: u8 },
    /// COMPARE AND WRITE (SBC-4 5.3).
    CompareAndWrite { lba: u64, blocks: u8, fua: bool, dpo: bool, group: u8 },
    /// WRITE ATOMIC(16) (SBC-4 5.48).
    WriteAtomic { lba: u64, blocks: u32, fua: bool, dpo: bool, group: u8 },
    /// ORWRITE(16) (SBC-4 5.10).
    OrWrite { lba: u64, blocks: u32, fua: bool, dpo: bool, group: u8 },
    /// WRITE SAME(10)/(16) (SBC-4 5.45, 5.46).
    WriteSame { lba: u64, blocks: u32, unmap: bool, anchor: bool, ndob: bool, group: u8, cdb_len: u8 },
    /// SANITIZE (SBC-4 5.30).
    Sanitize(Sanitize),
    /// UNMAP (SBC-4 5.31).
    Unmap { anchor: bool, group: u8, param_len: u16 },
    /// PRE-FETCH(10)/(16) (SBC-4 5.11, 5.12).
    PreFetch { lba: u64, blocks: u32, immed: bool, group: u8, cdb_len: u8 },
    /// SYNCHRONIZE CACHE(10)/(16) (SBC-4 5.27, 5.28).
    SynchronizeCache { lba: u64, blocks: u32, immed: bool, cdb_len: u8 },
    /// GET LBA STATUS (SBC-4 5.7).
    GetLbaStatus { lba: u64, alloc_len: u32 },
    /// READ DEFECT DATA(10)/(12) (SBC-4 5.19, 5.20).
    ReadDefectData { plist: bool, glist: bool, format: u8, index: u32, alloc_len: u32, cdb_len: u8 },
    /// REPORT LUNS (SPC-5 6.33).
    ReportLuns { select_report: u8, alloc_len: u32 },
    /// REPORT SUPPORTED OPERATION CODES (SPC-5 6.35).
    ReportSupportedOperationCodes(ReportOpcodes),
    /// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS (SPC-5 6.36).
    ReportSupportedTaskManagementFunctions { repd: bool, alloc_len: u32 },
    /// REPORT TARGET PORT GROUPS (SPC-5 6.37).
    ReportTargetPortGroups { format: RtpgFormat, alloc_len: u32 },
    /// SET TARGET PORT GROUPS (SPC-5 6.45).
    SetTargetPortGroups { param_len: u32 },
    /// PERSISTENT RESERVE IN (SPC-5 6.16).
    PersistentReserveIn(PrIn),
    /// PERSISTENT RESERVE OUT (SPC-5 6.17).
    PersistentReserveOut(PrOut),
    /// RESERVE(6)/(10) (SPC-2 7.21, 7.22).
    Reserve { cdb_len: u8 },
    /// RELEASE(6)/(10) (SPC-2 7.17, 7.18).
    Release { cdb_len: u8 },
    /// EXTENDED COPY (LID1) (SPC-4 6.3).
    ExtendedCopy(ExtendedCopy),
    /// RECEIVE COPY RESULTS (SPC-4 6.18).
    ReceiveCopyResults(ReceiveCopyResults),
}

impl Command {
    /// Decodes a CDB. The slice may be longer than the command (transports
    /// pad CDBs to 16 or 32 bytes); bytes past the command's length are
    /// ignored. Checks the CDB length, every reserved bit (via the usage
    /// data of [`table::OPCODES`]), the CONTROL byte and every field's
    /// value. Never panics.
    pub fn decode(cdb: &[u8]) -> Result<Command, ScsiError> {
        let Some(&opcode) = cdb.first() else {
            return Err(ScsiError::CdbTooShort { opcode: 0, len: 0, needed: 1 });
        };
        if !table::has_opcode(opcode) {
            return Err(ScsiError::InvalidOpcode(opcode));
        }
        let entry = if table::has_service_actions(opcode) {
            let Some(&b1) = cdb.get(1) else {
                return Err(ScsiError::CdbTooShort { opcode, len: cdb.len(), needed: 2 });
            };
            // SPC-5 4.2.5.2: an unsupported service action is an invalid field.
            table::lookup(opcode, Some(b1 & 0x1F)).ok_or(ScsiError::field(1, 4))?
        } else {
            table::lookup(opcode, None).ok_or(ScsiError::InvalidOpcode(opcode))?
        };
        let len = entry.cdb_len();
        let Some(bytes) = cdb.get(..len) else {
            return Err(ScsiError::CdbTooShort { opcode, len: cdb.len(), needed: len });
        };
        for (i, &b) in bytes.iter().enumerate().skip(1) {
            let bad = b & !entry.allowed(i);
            if bad != 0 {
                return Err(ScsiError::field(i, 7 - bad.leading_zeros() as u8));
            }
        }
        // SAM-5 5.2: NACA=1 with NORMACA=0 in the standard INQUIRY data.
        if bytes[len - 1] & 0x04 != 0 {
            return Err(ScsiError::field(len - 1, 2));
        }
        (entry.decode)(Cdb::new(bytes))
    }

    /// The operation code of the CDB this command was decoded from.
    pub fn opcode(&self) -> u8 {
        use Command::*;
        let by_len = |len: u8, ops: [u8; 4]| match len {
            6 => ops[0],
            10 => ops[1],
            12 => ops[2],
            _ => ops[3],
        };
        match self {
            TestUnitReady => 0x00,
            RequestSense { .. } => 0x03,
            Inquiry(_) => 0x12,
            ModeSense(m) => by_len(m.cdb_len, [0x1A, 0x5A, 0x5A, 0x5A]),
            ModeSelect(m) => by_len(m.cdb_len, [0x15, 0x55, 0x55, 0x55]),
            LogSense(_) => 0x4D,
            StartStopUnit(_) => 0x1B,
            PreventAllowMediumRemoval { .. } => 0x1E,
            ReadCapacity10 => 0x25,
            ReadCapacity16 { .. } => 0x9E,
            Read { cdb_len, .. } => by_len(*cdb_len, [0x08, 0x28, 0xA8, 0x88]),
            Write { cdb_len, .. } => by_len(*cdb_len, [0x0A, 0x2A, 0xAA, 0x8A]),
            WriteAndVerify { cdb_len, .. } => by_len(*cdb_len, [0x2E, 0x2E, 0xAE, 0x8E]),
            Verify { cdb_len, .. } => by_len(*cdb_len, [0x2F, 0x2F, 0xAF, 0x8F]),
            CompareAndWrite { .. } => 0x89,
            OrWrite { .. } => 0x8B,
            WriteAtomic { .. } => 0x9C,
            WriteSame { cdb_len, .. } => by_len(*cdb_len, [0x41, 0x41, 0x41, 0x93]),
            Unmap { .. } => 0x42,
            Sanitize(_) => 0x48,
            PreFetch { cdb_len, .. } => by_len(*cdb_len, [0x34, 0x34, 0x34, 0x90]),
            SynchronizeCache { cdb_len, .. } => by_len(*cdb_len, [0x35, 0x35, 0x35, 0x91]),
            GetLbaStatus { .. } => 0x9E,
            ReadDefectData { cdb_len, .. } => by_len(*cdb_len, [0x37, 0x37, 0xB7, 0xB7]),
            ReportLuns { .. } => 0xA0,
            ReportSupportedOperationCodes(_)
            | ReportSupportedTaskManagementFunctions { .. }
            | ReportTargetPortGroups { .. } => 0xA3,
            SetTargetPortGroups { .. } => 0xA4,
            PersistentReserveIn(_) => 0x5E,
            PersistentReserveOut(_) => 0x5F,
            Reserve { cdb_len } => by_len(*cdb_len, [0x16, 0x56, 0x56, 0x56]),
            Release { cdb_len } => by_len(*cdb_len, [0x17, 0x57, 0x57, 0x57]),
            ExtendedCopy(_) => 0x83,
            ReceiveCopyResults(_) => 0x84,
        }
    }

    /// The service action, for commands that have one.
    pub fn service_action(&self) -> Option<u8> {
        match self {
            Command::ReadCapacity16 { .. } => Some(0x10),
            Command::GetLbaStatus { .. } => Some(0x12),
            Command::ReportSupportedOperationCodes(_) => Some(0x0C),
            Command::ReportSupportedTaskManagementFunctions { .. } => Some(0x0D),
            Command::ReportTargetPortGroups { .. } | Command::SetTargetPortGroups { .. } => Some(0x0A),
            Command::PersistentReserveIn(p) => Some(p.action as u8),
            Command::PersistentReserveOut(p) => Some(p.action as u8),
            Command::Sanitize(s) => Some(s.action as u8),
            Command::ExtendedCopy(_) => Some(0x00),
            Command::ReceiveCopyResults(r) => Some(r.action as u8),
            _ => None,
        }
    }

    /// The command's name in the standard, e.g. "READ(10)".
    pub fn name(&self) -> &'static str {
        table::lookup(self.opcode(), self.service_action()).map_or("UNKNOWN", |e| e.name)
    }

    /// The direction of the data transfer. Commands that would transfer
    /// zero bytes report [`DataDirection::None`].
    pub fn direction(&self) -> DataDirection {
        use Command::*;
        match self {
            Write { blocks, .. }
            | WriteAndVerify { blocks, .. }
            | OrWrite { blocks, .. }
            | WriteAtomic { blocks, .. }
                if *blocks > 0 =>
            {
                DataDirection::ToDevice
            }
            CompareAndWrite { blocks, .. } if *blocks > 0 => DataDirection::ToDevice,
            Verify { blocks, bytchk, .. } if *blocks > 0 && *bytchk != 0 => DataDirection::ToDevice,
            WriteSame { ndob: false, .. } => DataDirection::ToDevice,
            Unmap { param_len, .. } if *param_len > 0 => DataDirection::ToDevice,
            Sanitize(s) if s.param_len > 0 => DataDirection::ToDevice,
            ModeSelect(m) if m.param_len > 0 => DataDirection::ToDevice,
            SetTargetPortGroups { param_len } if *param_len > 0 => DataDirection::ToDevice,
            Read { blocks, .. } if *blocks > 0 => DataDirection::FromDevice,
            RequestSense { alloc_len, .. } if *alloc_len > 0 => DataDirection::FromDevice,
            Inquiry(i) if i.alloc_len > 0 => DataDirection::FromDevice,
            ModeSense(m) if m.alloc_len > 0 => DataDirection::FromDevice,
            LogSense(l) if l.alloc_len > 0 => DataDirection::FromDevice,
            ReadCapacity10 => DataDirection::FromDevice,
            ReadCapacity16 { alloc_len }
            | GetLbaStatus { alloc_len, .. }
            | ReadDefectData { alloc_len, .. }
            | ReportLuns { alloc_len, .. }
            | ReportSupportedTaskManagementFunctions { alloc_len, .. }
            | ReportTargetPortGroups { alloc_len, .. }
                if *alloc_len > 0 =>
            {
                DataDirection::FromDevice
            }
            ReportSupportedOperationCodes(r) if r.alloc_len > 0 => DataDirection::FromDevice,
            PersistentReserveIn(p) if p.alloc_len > 0 => DataDirection::FromDevice,
            PersistentReserveOut(p) if p.param_len > 0 => DataDirection::ToDevice,
            ExtendedCopy(x) if x.param_len > 0 => DataDirection::ToDevice,
            ReceiveCopyResults(r) if r.alloc_len > 0 => DataDirection::FromDevice,
            _ => DataDirection::None,
        }
    }

    /// Bytes of data-out the initiator must send for this command with
    /// logical blocks of `block_size` bytes (saturating; the core should
    /// compare it with its own maximum, see [`crate::Disk::validate`]).
    pub fn data_out_len(&self, block_size: u32) -> usize {
        use Command::*;
        let blocks = |n: u64| usize::try_from(n.saturating_mul(u64::from(block_size))).unwrap_or(usize::MAX);
        match self {
            Write { blocks: n, .. } | OrWrite { blocks: n, .. } | WriteAtomic { blocks: n, .. } => {
                blocks(u64::from(*n))
            }
            WriteAndVerify { blocks: n, .. } => blocks(u64::from(*n)),
            Verify { blocks: n, bytchk, .. } if *n > 0 => match bytchk {
                1 => blocks(u64::from(*n)),
                3 => blocks(1),
                _ => 0,
            },
            CompareAndWrite { blocks: n, .. } => blocks(2 * u64::from(*n)),
            WriteSame { ndob: false, .. } => blocks(1),
            Unmap { param_len, .. } | Sanitize(crate::commands::sanitize::Sanitize { param_len, .. }) => {
                usize::from(*param_len)
            }
            ModeSelect(m) => usize::from(m.param_len),
            PersistentReserveOut(p) => usize::try_from(p.param_len).unwrap_or(usize::MAX),
            ExtendedCopy(x) => usize::try_from(x.param_len).unwrap_or(usize::MAX),
            SetTargetPortGroups { param_len } => usize::try_from(*param_len).unwrap_or(usize::MAX),
            _ => 0,
        }
    }

    /// Commands that complete normally with a unit attention pending
    /// (SAM-5 5.14: INQUIRY, REPORT LUNS, REQUEST SENSE); the core does
    /// not report the unit attention for these.
    pub fn is_unit_attention_exempt(&self) -> bool {
        matches!(self, Command::Inquiry(_) | Command::ReportLuns { .. } | Command::RequestSense { .. })
    }

    /// Whether the command needs the medium (or the logical unit being
    /// ready): refused with NOT READY by a logical unit whose storage is
    /// gone. Those that do not are answered from the unit's own state:
    /// inventory, sense, mode and log pages, reservations.
    pub fn needs_medium(&self) -> bool {
        !matches!(
            self,
            Command::Inquiry(_)
                | Command::RequestSense { .. }
                | Command::ReportLuns { .. }
                | Command::ModeSense(_)
                | Command::LogSense(_)
                | Command::ReportSupportedOperationCodes(_)
                | Command::ReportSupportedTaskManagementFunctions { .. }
                | Command::PersistentReserveIn(_)
        )
    }

    /// Whether the command modifies the medium: refused on a write protected
    /// unit, and subject to the write error policy.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Command::Write { .. }
                | Command::WriteAndVerify { .. }
                | Command::CompareAndWrite { .. }
                | Command::OrWrite { .. }
                | Command::WriteAtomic { .. }
                | Command::WriteSame { .. }
                | Command::Unmap { .. }
                | Command::Sanitize(_)
        )
    }

    /// Whether a backend failure of this command falls under the write
    /// error policy (`werror`): writes and SYNCHRONIZE CACHE.
    pub fn uses_write_error_policy(&self) -> bool {
        self.is_write() || matches!(self, Command::SynchronizeCache { .. })
    }

    /// Whether the command accesses the medium (refused with NOT READY when
    /// the medium is absent or the unit is stopped, SBC-4 4.17).
    pub fn is_medium_access(&self) -> bool {
        use Command::*;
        !matches!(
            self,
            RequestSense { .. }
                | Inquiry(_)
                | ModeSense(_)
                | ModeSelect(_)
                | LogSense(_)
                | StartStopUnit(_)
                | PreventAllowMediumRemoval { .. }
                | ReportLuns { .. }
                | ReportSupportedOperationCodes(_)
                | ReportSupportedTaskManagementFunctions { .. }
                | ReportTargetPortGroups { .. }
                | SetTargetPortGroups { .. }
                | ReadDefectData { .. }
                | PersistentReserveIn(_)
                | PersistentReserveOut(_)
                | Reserve { .. }
                | Release { .. }
                | ReceiveCopyResults(_)
        )
    }
}

#[cfg(test)]
mod tests;

/// A block write's CDB with its TRANSFER LENGTH cut to `bytes`: see [`cut_write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CutWrite {
    /// The CDB, now asking for `bytes / block_size` blocks.
    Cut(Vec<u8>),
    /// A block write, but `bytes` is no whole number of blocks (a
    /// transport answers INVALID FIELD IN INFORMATION UNIT).
    NotWholeBlocks,
    /// Not WRITE or WRITE AND VERIFY (10/12/16): nothing to cut.
    NotABlockWrite,
}

/// When an initiator sends less data than a write's CDB asks for (iSCSI's
/// EDTL below the TRANSFER LENGTH), only what it sends is written (RFC
/// 7143 11.4.5.1 permits it; libiscsi's residual tests expect it): the
/// CDB of WRITE and WRITE AND VERIFY (10/12/16) with TRANSFER LENGTH cut to
/// the whole blocks of `bytes`.
pub fn cut_write(cdb: &[u8], bytes: u32, block_size: u32) -> CutWrite {
    // SBC-4 5: where TRANSFER LENGTH sits in each write CDB.
    let field = match cdb.first() {
        Some(0x2a | 0x2e) => 7..9,   // WRITE (10), WRITE AND VERIFY (10)
        Some(0xaa | 0xae) => 6..10,  // WRITE (12), WRITE AND VERIFY (12)
        Some(0x8a | 0x8e) => 10..14, // WRITE (16), WRITE AND VERIFY (16)
        _ => return CutWrite::NotABlockWrite,
    };
    if block_size == 0 || !bytes.is_multiple_of(block_size) {
        return CutWrite::NotWholeBlocks;
    }
    let blocks = bytes / block_size;
    let mut c = cdb.to_vec();
    let Some(dst) = c.get_mut(field) else { return CutWrite::NotABlockWrite };
    let n = dst.len();
    if n == 2 && blocks > u32::from(u16::MAX) {
        return CutWrite::NotWholeBlocks;
    }
    dst.copy_from_slice(&blocks.to_be_bytes()[4 - n..]);
    CutWrite::Cut(c)
}

#[cfg(test)]
mod cut_write_tests {
    use super::*;

    #[test]
    fn cuts_each_write_cdb_to_whole_blocks() {
        let mut w10 = [0u8; 10];
        w10[0] = 0x2a;
        w10[8] = 2;
        let CutWrite::Cut(c) = cut_write(&w10, 512, 512) else { panic!() };
        assert_eq!(&c[7..9], &[0, 1]);
        let CutWrite::Cut(c) = cut_write(&w10, 0, 512) else { panic!() };
        assert_eq!(c[7..9], [0, 0]);
        assert_eq!(cut_write(&w10, 200, 512), CutWrite::NotWholeBlocks);
        let mut w16 = [0u8; 16];
        w16[0] = 0x8e;
        w16[13] = 4;
        let CutWrite::Cut(c) = cut_write(&w16, 1024, 512) else { panic!() };
        assert_eq!(&c[10..14], &[0, 0, 0, 2]);
        let mut w12 = [0u8; 12];
        w12[0] = 0xaa;
        w12[9] = 3;
        let CutWrite::Cut(c) = cut_write(&w12, 4096, 4096) else { panic!() };
        assert_eq!(&c[6..10], &[0, 0, 0, 1]);
        assert_eq!(cut_write(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 0, 512), CutWrite::NotABlockWrite);
        assert_eq!(cut_write(&[], 0, 512), CutWrite::NotABlockWrite);
        assert_eq!(cut_write(&[0x2a, 0, 0], 512, 512), CutWrite::NotABlockWrite, "a short CDB");
    }
}

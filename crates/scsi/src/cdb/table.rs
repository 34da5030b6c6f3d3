//! The opcode table: the one source of truth for which commands this disk
//! supports. [`super::Command::decode`] dispatches through it and checks
//! every CDB against its usage data; REPORT SUPPORTED OPERATION CODES
//! (SPC-5 6.35) reports it.
//!
//! `usage` is the CDB USAGE DATA of SPC-5 6.35.3: byte 0 is the operation
//! code, the SERVICE ACTION bits hold the service action, every other bit is
//! set when the device server looks at it. A CDB bit outside the mask is
//! reserved (or an unsupported feature such as RDPROTECT) and makes the
//! command fail with INVALID FIELD IN CDB pointing at it.

use super::reader::Cdb;
use super::Command;
use crate::commands::*;
use crate::error::ScsiError;
use crate::reservation::Access;

/// What a command needs from the logical unit to be offered at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Requires {
    /// Every disk.
    Always,
    /// Only a thin provisioned disk (logical block provisioning management, SBC-4 4.7).
    Thin,
    /// Only a disk with asymmetric logical unit access configured (SPC-5 5.16).
    Alua,
}

/// One supported command.
#[derive(Clone, Copy)]
pub struct OpcodeEntry {
    pub opcode: u8,
    /// Service action (byte 1, bits 4..0) for opcodes that have them.
    pub service_action: Option<u8>,
    pub name: &'static str,
    /// CDB USAGE DATA; its length is the CDB length.
    pub usage: &'static [u8],
    /// Nominal and recommended command timeouts in seconds (SPC-5 6.35.4).
    pub timeouts: (u32, u32),
    pub requires: Requires,
    /// How reservations restrict the command (SPC-5 table 63, SBC-4 table
    /// 13): the one input of [`crate::Disk::check_reservation`].
    pub access: Access,
    /// What the command does with the medium's data, for statistics.
    pub io: IoClass,
    pub(crate) decode: fn(Cdb<'_>) -> Result<Command, ScsiError>,
}

impl std::fmt::Debug for OpcodeEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpcodeEntry")
            .field("opcode", &self.opcode)
            .field("service_action", &self.service_action)
            .field("name", &self.name)
            .finish()
    }
}

impl OpcodeEntry {
    pub fn cdb_len(&self) -> usize {
        self.usage.len()
    }

    /// The bits of byte `i` a CDB may set (the service action bits were
    /// matched by the lookup already).
    pub(crate) fn allowed(&self, i: usize) -> u8 {
        let m = self.usage.get(i).copied().unwrap_or(0);
        if i == 1 && self.service_action.is_some() {
            m | 0x1F
        } else {
            m
        }
    }
}

const IO_TIMEOUTS: (u32, u32) = (1, 30);
const LONG_TIMEOUTS: (u32, u32) = (10, 120);
const FAST_TIMEOUTS: (u32, u32) = (1, 10);

const X: u8 = 0xFF;
/// CONTROL byte: only NACA is evaluated (SAM-5 5.2); it is then rejected, as ACA is not supported.
const C: u8 = 0x04;

macro_rules! op {
    ($op:expr, $sa:expr, $name:expr, [$($u:expr),*], $t:expr, $req:ident, $acc:ident, $io:ident, $dec:path) => {
        OpcodeEntry {
            opcode: $op,
            service_action: $sa,
            name: $name,
            usage: &[$($u),*],
            timeouts: $t,
            requires: Requires::$req,
            access: Access::$acc,
            io: IoClass::$io,
            decode: $dec,
        }
    };
}

/// Every command the disk implements, sorted by operation code and service action.
#[rustfmt::skip]
pub static OPCODES: &[OpcodeEntry] = &[
    op!(0x00, None, "TEST UNIT READY", [0x00, 0, 0, 0, 0, C], FAST_TIMEOUTS, Always, Shared, Other, unit::decode_test_unit_ready),
    op!(0x03, None, "REQUEST SENSE", [0x03, 0x01, 0, 0, X, C], FAST_TIMEOUTS, Always, Unrestricted, Other, unit::decode_request_sense),
    op!(0x08, None, "READ(6)", [0x08, 0x1F, X, X, X, C], IO_TIMEOUTS, Always, Read, Read, read_write::decode_read6),
    op!(0x0A, None, "WRITE(6)", [0x0A, 0x1F, X, X, X, C], IO_TIMEOUTS, Always, Write, Write, read_write::decode_write6),
    op!(0x12, None, "INQUIRY", [0x12, 0x01, X, X, X, C], FAST_TIMEOUTS, Always, Unrestricted, Other, inquiry::decode),
    op!(0x15, None, "MODE SELECT(6)", [0x15, 0x11, 0, 0, X, C], FAST_TIMEOUTS, Always, Write, Other, mode::decode_select6),
    op!(0x16, None, "RESERVE(6)", [0x16, 0, 0, 0, 0, C], FAST_TIMEOUTS, Always, Shared, Other, reserve::decode_reserve6),
    op!(0x17, None, "RELEASE(6)", [0x17, 0, 0, 0, 0, C], FAST_TIMEOUTS, Always, Unrestricted, Other, reserve::decode_release6),
    op!(0x1A, None, "MODE SENSE(6)", [0x1A, 0x08, X, X, X, C], FAST_TIMEOUTS, Always, Read, Other, mode::decode_sense6),
    op!(0x1B, None, "START STOP UNIT", [0x1B, 0x01, 0, 0x0F, 0xF7, C], LONG_TIMEOUTS, Always, ByField, Other, unit::decode_start_stop),
    op!(0x1E, None, "PREVENT ALLOW MEDIUM REMOVAL", [0x1E, 0, 0, 0, 0x03, C], FAST_TIMEOUTS, Always, ByField, Other, unit::decode_prevent_allow),
    op!(0x25, None, "READ CAPACITY(10)", [0x25, 0, X, X, X, X, 0, 0, 0x01, C], FAST_TIMEOUTS, Always, Shared, Other, capacity::decode10),
    op!(0x28, None, "READ(10)", [0x28, 0x18, X, X, X, X, 0x1F, X, X, C], IO_TIMEOUTS, Always, Read, Read, read_write::decode_read10),
    op!(0x2A, None, "WRITE(10)", [0x2A, 0x18, X, X, X, X, 0x1F, X, X, C], IO_TIMEOUTS, Always, Write, Write, read_write::decode_write10),
    op!(0x2E, None, "WRITE AND VERIFY(10)", [0x2E, 0x16, X, X, X, X, 0x1F, X, X, C], IO_TIMEOUTS, Always, Write, Write, verify::decode_write_verify10),
    op!(0x2F, None, "VERIFY(10)", [0x2F, 0x16, X, X, X, X, 0x1F, X, X, C], LONG_TIMEOUTS, Always, Read, Other, verify::decode_verify10),
    op!(0x34, None, "PRE-FETCH(10)", [0x34, 0x02, X, X, X, X, 0x1F, X, X, C], IO_TIMEOUTS, Always, Read, Other, sync_cache::decode_prefetch10),
    op!(0x35, None, "SYNCHRONIZE CACHE(10)", [0x35, 0x06, X, X, X, X, 0x1F, X, X, C], LONG_TIMEOUTS, Always, Write, Other, sync_cache::decode_sync10),
    op!(0x37, None, "READ DEFECT DATA(10)", [0x37, 0, 0x1F, 0, 0, 0, 0, X, X, C], FAST_TIMEOUTS, Always, Read, Other, defect::decode10),
    op!(0x41, None, "WRITE SAME(10)", [0x41, 0x18, X, X, X, X, 0x1F, X, X, C], LONG_TIMEOUTS, Always, Write, Write, write_same::decode10),
    op!(0x42, None, "UNMAP", [0x42, 0x01, 0, 0, 0, 0, 0x1F, X, X, C], LONG_TIMEOUTS, Thin, Write, Other, unmap::decode),
    op!(0x48, Some(0x01), "SANITIZE", [0x48, 0xA1, 0, 0, 0, 0, 0, X, X, C], LONG_TIMEOUTS, Always, Write, Other, sanitize::decode),
    op!(0x48, Some(0x02), "SANITIZE", [0x48, 0xA2, 0, 0, 0, 0, 0, X, X, C], LONG_TIMEOUTS, Thin, Write, Other, sanitize::decode),
    op!(0x48, Some(0x03), "SANITIZE", [0x48, 0xA3, 0, 0, 0, 0, 0, X, X, C], LONG_TIMEOUTS, Thin, Write, Other, sanitize::decode),
    op!(0x48, Some(0x1F), "SANITIZE", [0x48, 0xBF, 0, 0, 0, 0, 0, X, X, C], FAST_TIMEOUTS, Always, Write, Other, sanitize::decode),
    op!(0x4D, None, "LOG SENSE", [0x4D, 0x03, X, X, 0, X, X, X, X, C], FAST_TIMEOUTS, Always, Unrestricted, Other, log::decode),
    op!(0x55, None, "MODE SELECT(10)", [0x55, 0x11, 0, 0, 0, 0, 0, X, X, C], FAST_TIMEOUTS, Always, Write, Other, mode::decode_select10),
    op!(0x56, None, "RESERVE(10)", [0x56, 0, 0, 0, 0, 0, 0, 0, 0, C], FAST_TIMEOUTS, Always, Shared, Other, reserve::decode_reserve10),
    op!(0x57, None, "RELEASE(10)", [0x57, 0, 0, 0, 0, 0, 0, 0, 0, C], FAST_TIMEOUTS, Always, Unrestricted, Other, reserve::decode_release10),
    op!(0x5A, None, "MODE SENSE(10)", [0x5A, 0x18, X, X, 0, 0, 0, X, X, C], FAST_TIMEOUTS, Always, Read, Other, mode::decode_sense10),
    op!(0x5E, Some(0x00), "PERSISTENT RESERVE IN", [0x5E, 0x00, 0, 0, 0, 0, 0, X, X, C], FAST_TIMEOUTS, Always, Shared, Other, persistent_reserve::decode_in),
    op!(0x5E, Some(0x01), "PERSISTENT RESERVE IN", [0x5E, 0x01, 0, 0, 0, 0, 0, X, X, C], FAST_TIMEOUTS, Always, Shared, Other, persistent_reserve::decode_in),
    op!(0x5E, Some(0x02), "PERSISTENT RESERVE IN", [0x5E, 0x02, 0, 0, 0, 0, 0, X, X, C], FAST_TIMEOUTS, Always, Shared, Other, persistent_reserve::decode_in),
    op!(0x5E, Some(0x03), "PERSISTENT RESERVE IN", [0x5E, 0x03, 0, 0, 0, 0, 0, X, X, C], FAST_TIMEOUTS, Always, Shared, Other, persistent_reserve::decode_in),
    op!(0x5F, Some(0x00), "PERSISTENT RESERVE OUT", [0x5F, 0x00, X, 0, 0, X, X, X, X, C], FAST_TIMEOUTS, Always, Shared, Other, persistent_reserve::decode_out),
    op!(0x5F, Some(0x01), "PERSISTENT RESERVE OUT", [0x5F, 0x01, X, 0, 0, X, X, X, X, C], FAST_TIMEOUTS, Always, Shared, Other, persistent_reserve::decode_out),
    op!(0x5F, Some(0x02), "PERSISTENT RESERVE OUT", [0x5F, 0x02, X, 0, 0, X, X, X, X, C], FAST_TIMEOUTS, Always, Shared, Other, persistent_reserve::decode_out),
    op!(0x5F, Some(0x03), "PERSISTENT RESERVE OUT", [0x5F, 0x03, X, 0, 0, X, X, X, X, C], FAST_TIMEOUTS, Always, Shared, Other, persistent_reserve::decode_out),
    op!(0x5F, Some(0x04), "PERSISTENT RESERVE OUT", [0x5F, 0x04, X, 0, 0, X, X, X, X, C], FAST_TIMEOUTS, Always, Shared, Other, persistent_reserve::decode_out),
    op!(0x5F, Some(0x05), "PERSISTENT RESERVE OUT", [0x5F, 0x05, X, 0, 0, X, X, X, X, C], FAST_TIMEOUTS, Always, Shared, Other, persistent_reserve::decode_out),
    op!(0x5F, Some(0x06), "PERSISTENT RESERVE OUT", [0x5F, 0x06, X, 0, 0, X, X, X, X, C], FAST_TIMEOUTS, Always, Shared, Other, persistent_reserve::decode_out),
    op!(0x5F, Some(0x07), "PERSISTENT RESERVE OUT", [0x5F, 0x07, X, 0, 0, X, X, X, X, C], FAST_TIMEOUTS, Always, Shared, Other, persistent_reserve::decode_out),
    op!(0x83, Some(0x00), "EXTENDED COPY", [0x83, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, X, X, X, X, 0, C], LONG_TIMEOUTS, Always, Write, Other, extended_copy::decode),
    op!(0x84, Some(0x00), "RECEIVE COPY RESULTS", [0x84, 0x00, X, 0, 0, 0, 0, 0, 0, 0, X, X, X, X, 0, C], FAST_TIMEOUTS, Always, Write, Other, extended_copy::decode_results),
    op!(0x84, Some(0x03), "RECEIVE COPY RESULTS", [0x84, 0x03, 0, 0, 0, 0, 0, 0, 0, 0, X, X, X, X, 0, C], FAST_TIMEOUTS, Always, Write, Other, extended_copy::decode_results),
    op!(0x88, None, "READ(16)", [0x88, 0x18, X, X, X, X, X, X, X, X, X, X, X, X, 0x3F, C], IO_TIMEOUTS, Always, Read, Read, read_write::decode_read16),
    op!(0x89, None, "COMPARE AND WRITE", [0x89, 0x18, X, X, X, X, X, X, X, X, 0, 0, 0, X, 0x3F, C], IO_TIMEOUTS, Always, Write, Write, compare_and_write::decode),
    op!(0x8A, None, "WRITE(16)", [0x8A, 0x18, X, X, X, X, X, X, X, X, X, X, X, X, 0x3F, C], IO_TIMEOUTS, Always, Write, Write, read_write::decode_write16),
    op!(0x8B, None, "ORWRITE(16)", [0x8B, 0x18, X, X, X, X, X, X, X, X, X, X, X, X, 0x1F, C], IO_TIMEOUTS, Always, Write, Write, read_write::decode_orwrite16),
    op!(0x8E, None, "WRITE AND VERIFY(16)", [0x8E, 0x16, X, X, X, X, X, X, X, X, X, X, X, X, 0x3F, C], IO_TIMEOUTS, Always, Write, Write, verify::decode_write_verify16),
    op!(0x8F, None, "VERIFY(16)", [0x8F, 0x16, X, X, X, X, X, X, X, X, X, X, X, X, 0x3F, C], LONG_TIMEOUTS, Always, Read, Other, verify::decode_verify16),
    op!(0x90, None, "PRE-FETCH(16)", [0x90, 0x02, X, X, X, X, X, X, X, X, X, X, X, X, 0x3F, C], IO_TIMEOUTS, Always, Read, Other, sync_cache::decode_prefetch16),
    op!(0x91, None, "SYNCHRONIZE CACHE(16)", [0x91, 0x06, X, X, X, X, X, X, X, X, X, X, X, X, 0x3F, C], LONG_TIMEOUTS, Always, Write, Other, sync_cache::decode_sync16),
    op!(0x93, None, "WRITE SAME(16)", [0x93, 0x19, X, X, X, X, X, X, X, X, X, X, X, X, 0x3F, C], LONG_TIMEOUTS, Always, Write, Write, write_same::decode16),
    op!(0x9C, None, "WRITE ATOMIC(16)", [0x9C, 0x18, X, X, X, X, X, X, X, X, 0, 0, X, X, 0x3F, C], IO_TIMEOUTS, Always, Write, Write, write_atomic::decode16),
    op!(0x9E, Some(0x10), "READ CAPACITY(16)", [0x9E, 0x10, X, X, X, X, X, X, X, X, X, X, X, X, 0x01, C], FAST_TIMEOUTS, Always, Shared, Other, capacity::decode16),
    op!(0x9E, Some(0x12), "GET LBA STATUS", [0x9E, 0x12, X, X, X, X, X, X, X, X, X, X, X, X, 0, C], FAST_TIMEOUTS, Thin, Read, Other, lba_status::decode),
    op!(0xA0, None, "REPORT LUNS", [0xA0, 0, X, 0, 0, 0, X, X, X, X, 0, C], FAST_TIMEOUTS, Always, Unrestricted, Other, report_luns::decode),
    op!(0xA3, Some(0x0A), "REPORT TARGET PORT GROUPS", [0xA3, 0xEA, 0, 0, 0, 0, X, X, X, X, 0, C], FAST_TIMEOUTS, Alua, Unrestricted, Other, target_port_groups::decode_rtpg),
    op!(0xA3, Some(0x0C), "REPORT SUPPORTED OPERATION CODES", [0xA3, 0x0C, 0x87, X, X, X, X, X, X, X, 0, C], FAST_TIMEOUTS, Always, Read, Other, opcodes::decode_rsoc),
    op!(0xA3, Some(0x0D), "REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS", [0xA3, 0x0D, 0x80, 0, 0, 0, X, X, X, X, 0, C], FAST_TIMEOUTS, Always, Read, Other, opcodes::decode_rstmf),
    op!(0xA4, Some(0x0A), "SET TARGET PORT GROUPS", [0xA4, 0x0A, 0, 0, 0, 0, X, X, X, X, 0, C], LONG_TIMEOUTS, Alua, Write, Other, target_port_groups::decode_stpg),
    op!(0xA8, None, "READ(12)", [0xA8, 0x18, X, X, X, X, X, X, X, X, 0x1F, C], IO_TIMEOUTS, Always, Read, Read, read_write::decode_read12),
    op!(0xAA, None, "WRITE(12)", [0xAA, 0x18, X, X, X, X, X, X, X, X, 0x1F, C], IO_TIMEOUTS, Always, Write, Write, read_write::decode_write12),
    op!(0xAE, None, "WRITE AND VERIFY(12)", [0xAE, 0x16, X, X, X, X, X, X, X, X, 0x1F, C], IO_TIMEOUTS, Always, Write, Write, verify::decode_write_verify12),
    op!(0xAF, None, "VERIFY(12)", [0xAF, 0x16, X, X, X, X, X, X, X, X, 0x1F, C], LONG_TIMEOUTS, Always, Read, Other, verify::decode_verify12),
    op!(0xB7, None, "READ DEFECT DATA(12)", [0xB7, 0x1F, X, X, X, X, X, X, X, X, 0, C], FAST_TIMEOUTS, Always, Read, Other, defect::decode12),
];

/// What a command does with the medium's data, known from its operation
/// code alone (before decoding; for statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoClass {
    /// READ(6)/(10)/(12)/(16).
    Read,
    /// Writes the medium with data from the initiator: WRITE, WRITE AND
    /// VERIFY, COMPARE AND WRITE, ORWRITE, WRITE ATOMIC, WRITE SAME.
    Write,
    Other,
}

impl IoClass {
    /// The class of the command whose CDB this is (unknown or empty: `Other`).
    pub fn of_cdb(cdb: &[u8]) -> IoClass {
        static BY_OPCODE: std::sync::LazyLock<[IoClass; 256]> = std::sync::LazyLock::new(|| {
            let mut t = [IoClass::Other; 256];
            for e in OPCODES.iter().filter(|e| e.service_action.is_none()) {
                t[e.opcode as usize] = e.io;
            }
            t
        });
        cdb.first().map_or(IoClass::Other, |&op| BY_OPCODE[op as usize])
    }
}

/// The length of a CDB from its operation code's group (SPC-5 4.2.5.1),
/// or byte 7 of a variable-length CDB (group 3); for a group without a
/// fixed length (vendor specific), all of `cdb`.
pub fn cdb_length(cdb: &[u8]) -> usize {
    match cdb.first().map(|op| op >> 5) {
        Some(0) => 6,
        Some(1) | Some(2) => 10,
        Some(4) => 16,
        Some(5) => 12,
        Some(3) => cdb.get(7).map_or(cdb.len(), |&n| 8 + n as usize),
        _ => cdb.len(),
    }
}

/// The entries of each operation code (most have one; those with service
/// actions a few): decoding and validating a command look here instead of
/// scanning the whole table, several times per command.
static BY_OPCODE: std::sync::LazyLock<Vec<Vec<&'static OpcodeEntry>>> = std::sync::LazyLock::new(|| {
    let mut t = vec![Vec::new(); 256];
    for e in OPCODES {
        t[usize::from(e.opcode)].push(e);
    }
    t
});

fn entries_of(opcode: u8) -> &'static [&'static OpcodeEntry] {
    &BY_OPCODE[usize::from(opcode)]
}

/// Whether any entry has this operation code.
pub fn has_opcode(opcode: u8) -> bool {
    !entries_of(opcode).is_empty()
}

/// Whether this operation code takes a service action.
pub fn has_service_actions(opcode: u8) -> bool {
    entries_of(opcode).iter().any(|e| e.service_action.is_some())
}

/// The entry for an operation code and, for opcodes that have them, service action.
pub fn lookup(opcode: u8, service_action: Option<u8>) -> Option<&'static OpcodeEntry> {
    entries_of(opcode).iter().copied().find(|e| e.service_action == service_action)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The per-opcode index answers as a scan of the whole table would.
    #[test]
    fn the_index_agrees_with_the_table() {
        for op in 0..=255u8 {
            assert_eq!(has_opcode(op), OPCODES.iter().any(|e| e.opcode == op), "{op:#04x}");
            let sa = OPCODES.iter().any(|e| e.opcode == op && e.service_action.is_some());
            assert_eq!(has_service_actions(op), sa, "{op:#04x}");
            for action in std::iter::once(None).chain((0..32).map(Some)) {
                let scan = OPCODES.iter().find(|e| e.opcode == op && e.service_action == action);
                assert_eq!(
                    lookup(op, action).map(|e| e as *const _),
                    scan.map(|e| e as *const _),
                    "{op:#04x}/{action:?}"
                );
            }
        }
    }

    /// SPC-5 4.2.5.1: the group code (bits 7..5) fixes the CDB length.
    fn group_len(opcode: u8) -> Option<usize> {
        match opcode >> 5 {
            0 => Some(6),
            1 | 2 => Some(10),
            4 => Some(16),
            5 => Some(12),
            _ => None,
        }
    }

    #[test]
    fn table_is_consistent() {
        let mut prev: Option<(u8, Option<u8>)> = None;
        for e in OPCODES {
            assert_eq!(Some(e.cdb_len()), group_len(e.opcode), "{}", e.name);
            assert_eq!(e.usage[0], e.opcode, "{}", e.name);
            if let Some(sa) = e.service_action {
                assert_eq!(e.usage[1] & 0x1F, sa, "{}", e.name);
            }
            assert_eq!(e.usage[e.cdb_len() - 1], C, "{}", e.name);
            let key = (e.opcode, e.service_action);
            assert!(prev < Some(key), "{} out of order or duplicated", e.name);
            prev = Some(key);
            // Mixing service action and plain entries for one opcode would make lookup ambiguous.
            assert_eq!(has_service_actions(e.opcode), e.service_action.is_some(), "{}", e.name);
        }
    }
}

//! REPORT SUPPORTED OPERATION CODES (SPC-5 6.35) and REPORT SUPPORTED TASK
//! MANAGEMENT FUNCTIONS (SPC-5 6.36). Both read [`crate::cdb::table::OPCODES`],
//! the table that drives decoding, so the report cannot drift from what
//! the device actually accepts.

use crate::cdb::reader::Cdb;
use crate::cdb::table::{self, OpcodeEntry, Requires, OPCODES};
use crate::cdb::Command;
use crate::disk::{truncate, Disk, TmfSupport};
use crate::error::ScsiError;

/// REPORT SUPPORTED OPERATION CODES fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReportOpcodes {
    /// Return command timeouts descriptors.
    pub rctd: bool,
    /// REPORTING OPTIONS (SPC-5 table 228): 0 all, 1 one opcode, 2 one
    /// opcode and service action, 3 one opcode with or without service action.
    pub options: u8,
    pub opcode: u8,
    pub service_action: u16,
    pub alloc_len: u32,
}

pub(crate) fn decode_rsoc(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let options = c.bits(2, 0, 3);
    if options > 3 {
        return Err(ScsiError::field(2, 2));
    }
    Ok(Command::ReportSupportedOperationCodes(ReportOpcodes {
        rctd: c.bit(2, 7),
        options,
        opcode: c.u8(3),
        service_action: c.be16(4),
        alloc_len: c.be32(6),
    }))
}

pub(crate) fn decode_rstmf(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::ReportSupportedTaskManagementFunctions { repd: c.bit(2, 7), alloc_len: c.be32(6) })
}

/// Command timeouts descriptor (SPC-5 6.35.4).
fn timeouts(e: &OpcodeEntry) -> [u8; 12] {
    let mut t = [0u8; 12];
    t[1] = 0x0A;
    t[4..8].copy_from_slice(&e.timeouts.0.to_be_bytes());
    t[8..12].copy_from_slice(&e.timeouts.1.to_be_bytes());
    t
}

impl Disk {
    /// Whether this disk offers the command of a table entry.
    pub(crate) fn offers(&self, e: &OpcodeEntry) -> bool {
        match e.requires {
            Requires::Always => true,
            Requires::Thin => self.config().thin,
            Requires::Alua => self.alua().is_some(),
        }
    }

    pub(crate) fn report_opcodes(&self, r: &ReportOpcodes) -> Result<Vec<u8>, ScsiError> {
        let alloc = usize::try_from(r.alloc_len).unwrap_or(usize::MAX);
        if r.options == 0 {
            // All commands format (SPC-5 6.35.2).
            let mut d = vec![0u8; 4];
            for e in OPCODES.iter().filter(|e| self.offers(e)) {
                let sa = e.service_action.unwrap_or(0);
                let flags = (u8::from(r.rctd) << 1) | u8::from(e.service_action.is_some());
                d.extend_from_slice(&[e.opcode, 0, 0, sa, 0, flags]);
                d.extend_from_slice(&(e.cdb_len() as u16).to_be_bytes());
                if r.rctd {
                    d.extend_from_slice(&timeouts(e));
                }
            }
            let len = (d.len() - 4) as u32;
            d[..4].copy_from_slice(&len.to_be_bytes());
            return Ok(truncate(d, alloc));
        }
        // One command format (SPC-5 6.35.3).
        let has_sa = table::has_service_actions(r.opcode);
        let sa = match (r.options, has_sa) {
            (1, true) => return Err(ScsiError::field_byte(3)),
            (1, false) | (3, false) => None,
            (2, false) => return Err(ScsiError::field_byte(3)),
            _ => match u8::try_from(r.service_action) {
                Ok(sa) if sa <= 0x1F => Some(sa),
                _ => return Err(ScsiError::field_byte(4)),
            },
        };
        let entry = table::lookup(r.opcode, sa).filter(|e| self.offers(e));
        let mut d = vec![0u8; 4];
        match entry {
            None => d[1] = 0x01, // SUPPORT 001b: not supported
            Some(e) => {
                d[1] = (u8::from(r.rctd) << 7) | 0x03; // SUPPORT 011b: as in the standard
                d[2..4].copy_from_slice(&(e.cdb_len() as u16).to_be_bytes());
                d.extend_from_slice(e.usage);
                if r.rctd {
                    d.extend_from_slice(&timeouts(e));
                }
            }
        }
        Ok(truncate(d, alloc))
    }
}

/// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS parameter data; REPD selects
/// the 16-byte extended format.
pub(crate) fn report_tmfs(t: &TmfSupport, repd: bool, alloc_len: u32) -> Vec<u8> {
    let b = |v: bool, bit: u8| u8::from(v) << bit;
    let mut d = vec![
        b(t.abort_task, 7)
            | b(t.abort_task_set, 6)
            | b(t.clear_aca, 5)
            | b(t.clear_task_set, 4)
            | b(t.logical_unit_reset, 3)
            | b(t.query_task, 2),
        b(t.query_async_event, 2) | b(t.query_task_set, 1) | b(t.i_t_nexus_reset, 0),
        0,
        0,
    ];
    if repd {
        d[3] = 0x0C;
        d.resize(16, 0);
    }
    truncate(d, usize::try_from(alloc_len).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use crate::test_util::*;
    use crate::*;

    fn rsoc(b2: u8, op: u8, sa: u16, alloc: u32) -> Vec<u8> {
        let mut c = vec![0xA3, 0x0C, b2, op, 0, 0, 0, 0, 0, 0, 0, 0];
        c[4..6].copy_from_slice(&sa.to_be_bytes());
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    #[test]
    fn all_commands_match_the_table() {
        let d = disk(10);
        let r = run(&d, &rsoc(0, 0, 0, 65535)).unwrap();
        let len = u32::from_be_bytes([r[0], r[1], r[2], r[3]]) as usize;
        assert_eq!(len, r.len() - 4);
        let offered = |d: &Disk| cdb::table::OPCODES.iter().filter(|e| d.offers(e)).count();
        assert_eq!(len / 8, offered(&d));
        assert_eq!(offered(&d), cdb::table::OPCODES.len() - 2, "all but the two ALUA commands");
        assert!(r[4..].chunks(8).all(|d| d[0] != 0xA4 && !(d[0] == 0xA3 && d[3] == 0x0A)));
        // With ALUA: REPORT and SET TARGET PORT GROUPS too.
        let alua = disk_with(10, DiskConfig { alua: AluaConfig::gateways(2, 0).ok(), ..Default::default() });
        let r = run(&alua, &rsoc(0, 0, 0, 65535)).unwrap();
        assert_eq!(r.len() - 4, cdb::table::OPCODES.len() * 8);
        assert!(r[4..].chunks(8).any(|d| d[0] == 0xA4 && d[3] == 0x0A && d[5] == 1));
        assert!(r[4..].chunks(8).any(|d| d[0] == 0xA3 && d[3] == 0x0A && d[5] == 1));
        assert_eq!(run(&alua, &rsoc(2, 0xA4, 0x0A, 100)).unwrap()[1], 0x03, "supported");
        assert_eq!(run(&d, &rsoc(2, 0xA4, 0x0A, 100)).unwrap(), vec![0, 0x01, 0, 0], "not supported");
        // Every reported command decodes with an all-zero CDB of its length (plus its service action).
        for desc in r[4..].chunks(8) {
            let mut cdb = vec![0u8; u16::from_be_bytes([desc[6], desc[7]]) as usize];
            cdb[0] = desc[0];
            if desc[5] & 1 != 0 {
                cdb[1] = desc[3];
            }
            assert!(!matches!(Command::decode(&cdb), Err(ScsiError::InvalidOpcode(_))), "{:#x}", desc[0]);
        }
        let rc16 = r[4..].chunks(8).find(|d| d[0] == 0x9E && d[3] == 0x10).unwrap();
        assert_eq!(rc16[5], 0x01, "SERVACTV");
        let with_t = run(&d, &rsoc(0x80, 0, 0, 65535)).unwrap();
        assert_eq!(with_t.len() - 4, offered(&d) * 20);
        assert_eq!(with_t[4 + 5] & 0x02, 0x02, "CTDP");
        assert_eq!(&with_t[12..14], &[0, 0x0A]);
        let fat = disk_with(10, DiskConfig { thin: false, ..Default::default() });
        let r = run(&fat, &rsoc(0, 0, 0, 65535)).unwrap();
        assert!(r[4..].chunks(8).all(|d| d[0] != 0x42));
        assert_eq!(run(&d, &rsoc(0, 0, 0, 10)).unwrap().len(), 10);
    }

    #[test]
    fn one_command() {
        let d = disk(10);
        let r = run(&d, &rsoc(1, 0x28, 0, 100)).unwrap();
        assert_eq!(&r[..4], &[0, 0x03, 0, 10]);
        assert_eq!(&r[4..], &[0x28, 0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0x1F, 0xFF, 0xFF, 0x04]);
        let r = run(&d, &rsoc(0x82, 0x9E, 0x10, 100)).unwrap();
        assert_eq!(r[1], 0x83);
        assert_eq!(r.len(), 4 + 16 + 12);
        assert_eq!(&r[4..6], &[0x9E, 0x10]);
        assert_eq!(run(&d, &rsoc(1, 0xFF, 0, 100)).unwrap(), vec![0, 0x01, 0, 0], "unsupported");
        assert_eq!(run(&d, &rsoc(2, 0x9E, 0x1F, 100)).unwrap(), vec![0, 0x01, 0, 0]);
        assert_eq!(run(&d, &rsoc(3, 0x28, 0, 100)).unwrap()[1], 0x03);
        assert_eq!(run(&d, &rsoc(1, 0x9E, 0, 100)), Err(ScsiError::field_byte(3)), "opcode has service actions");
        assert_eq!(run(&d, &rsoc(2, 0x28, 0, 100)), Err(ScsiError::field_byte(3)), "opcode has none");
        assert_eq!(run(&d, &rsoc(4, 0x28, 0, 100)), Err(ScsiError::field(2, 2)));
        assert_eq!(run(&d, &rsoc(0x40, 0x28, 0, 100)), Err(ScsiError::field(2, 6)));
    }

    #[test]
    fn task_management_functions() {
        let d = disk(10);
        let cdb = |b2: u8| vec![0xA3, 0x0D, b2, 0, 0, 0, 0, 0, 0, 64, 0, 0];
        assert_eq!(run(&d, &cdb(0)).unwrap(), vec![0xD8, 0, 0, 0]);
        let r = run(&d, &cdb(0x80)).unwrap();
        assert_eq!((r.len(), r[3]), (16, 0x0C));
        let ctx = ExecContext {
            tmf: Some(TmfSupport { query_task: true, i_t_nexus_reset: true, ..Default::default() }),
            ..Default::default()
        };
        assert_eq!(run_ctx(&d, &cdb(0), vec![], &ctx).unwrap(), vec![0xDC, 0x01, 0, 0]);
    }
}

//! The SCSI side: commands (CDBs) the initiator builds, and the responses,
//! status and sense it decodes.

use std::fmt;

use lunar_iscsi::pdu::TaskAttribute;

/// A command's Initiator Task Tag: the handle to wait for its response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(pub u32);

/// SCSI status byte (SAM-5 5.3).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u8);

impl Status {
    pub const GOOD: Status = Status(0x00);
    pub const CHECK_CONDITION: Status = Status(0x02);
    pub const CONDITION_MET: Status = Status(0x04);
    pub const BUSY: Status = Status(0x08);
    pub const RESERVATION_CONFLICT: Status = Status(0x18);
    pub const TASK_SET_FULL: Status = Status(0x28);
    pub const ACA_ACTIVE: Status = Status(0x30);
    pub const TASK_ABORTED: Status = Status(0x40);

    /// The status's name in SAM, when it has one.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            Status::GOOD => "GOOD",
            Status::CHECK_CONDITION => "CHECK CONDITION",
            Status::CONDITION_MET => "CONDITION MET",
            Status::BUSY => "BUSY",
            Status::RESERVATION_CONFLICT => "RESERVATION CONFLICT",
            Status::TASK_SET_FULL => "TASK SET FULL",
            Status::ACA_ACTIVE => "ACA ACTIVE",
            Status::TASK_ABORTED => "TASK ABORTED",
            _ => return None,
        })
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => f.write_str(n),
            None => write!(f, "Status({:#04x})", self.0),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Sense keys (SPC-5 4.4.8).
pub mod sense_key {
    pub const NO_SENSE: u8 = 0x0;
    pub const RECOVERED_ERROR: u8 = 0x1;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const ABORTED_COMMAND: u8 = 0xb;
}

/// Decoded sense data: the key and additional sense code/qualifier, with
/// the bytes they came from.
#[derive(Clone, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    pub raw: Vec<u8>,
}

impl Sense {
    /// Decodes fixed (70h/71h) or descriptor (72h/73h) format sense data
    /// (SPC-5 4.4.2, 4.4.3). `None` when the bytes are neither.
    pub fn parse(raw: &[u8]) -> Option<Sense> {
        let code = raw.first()? & 0x7f;
        let (key, asc, ascq) = match code {
            0x70 | 0x71 => (raw.get(2)? & 0x0f, *raw.get(12).unwrap_or(&0), *raw.get(13).unwrap_or(&0)),
            0x72 | 0x73 => (raw.get(1)? & 0x0f, *raw.get(2)?, *raw.get(3)?),
            _ => return None,
        };
        Some(Sense { key, asc, ascq, raw: raw.to_vec() })
    }

    /// (key, ASC, ASCQ).
    pub fn code(&self) -> (u8, u8, u8) {
        (self.key, self.asc, self.ascq)
    }

    /// True when the sense names (key, ASC, ASCQ).
    pub fn is(&self, key: u8, asc: u8, ascq: u8) -> bool {
        self.code() == (key, asc, ascq)
    }

    pub fn key_name(&self) -> &'static str {
        match self.key {
            0x0 => "NO SENSE",
            0x1 => "RECOVERED ERROR",
            0x2 => "NOT READY",
            0x3 => "MEDIUM ERROR",
            0x4 => "HARDWARE ERROR",
            0x5 => "ILLEGAL REQUEST",
            0x6 => "UNIT ATTENTION",
            0x7 => "DATA PROTECT",
            0x8 => "BLANK CHECK",
            0x9 => "VENDOR SPECIFIC",
            0xa => "COPY ABORTED",
            0xb => "ABORTED COMMAND",
            0xd => "VOLUME OVERFLOW",
            0xe => "MISCOMPARE",
            _ => "RESERVED",
        }
    }
}

impl fmt::Debug for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {:02X}h/{:02X}h", self.key_name(), self.asc, self.ascq)
    }
}

impl fmt::Display for Sense {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Residual of a command (RFC 7143 §11.4.5): how much of the Expected Data
/// Transfer Length was not used, or did not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Residual {
    #[default]
    None,
    Underflow(u32),
    Overflow(u32),
}

impl Residual {
    pub(crate) fn from_flags(overflow: bool, underflow: bool, count: u32) -> Residual {
        match (overflow, underflow) {
            (true, _) => Residual::Overflow(count),
            (_, true) => Residual::Underflow(count),
            _ => Residual::None,
        }
    }
}

/// The outcome of a SCSI command: its status, the sense data if any, and
/// the data read.
#[derive(Clone, PartialEq, Eq)]
pub struct Response {
    pub status: Status,
    pub sense: Option<Sense>,
    pub data: Vec<u8>,
    pub residual: Residual,
}

impl Response {
    pub fn is_good(&self) -> bool {
        self.status == Status::GOOD
    }

    /// CHECK CONDITION with a UNIT ATTENTION sense key.
    pub fn is_unit_attention(&self) -> bool {
        self.status == Status::CHECK_CONDITION
            && self.sense.as_ref().is_some_and(|s| s.key == sense_key::UNIT_ATTENTION)
    }

    /// CHECK CONDITION with this (key, ASC, ASCQ).
    pub fn is_check(&self, key: u8, asc: u8, ascq: u8) -> bool {
        self.status == Status::CHECK_CONDITION && self.sense.as_ref().is_some_and(|s| s.is(key, asc, ascq))
    }

    /// (key, ASC, ASCQ) of the sense, if there is sense data.
    pub fn sense_code(&self) -> Option<(u8, u8, u8)> {
        self.sense.as_ref().map(Sense::code)
    }
}

impl fmt::Debug for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Response");
        d.field("status", &self.status);
        if let Some(s) = &self.sense {
            d.field("sense", s);
        }
        d.field("data_len", &self.data.len());
        if self.residual != Residual::None {
            d.field("residual", &self.residual);
        }
        d.finish()
    }
}

/// One SCSI command to send: LUN, CDB, the data to write and the length
/// of the data to read.
#[derive(Clone, PartialEq, Eq)]
pub struct Command {
    pub lun: u64,
    pub cdb: Vec<u8>,
    /// Data-out (write) buffer; empty for commands that do not write.
    pub data_out: Vec<u8>,
    /// Expected data-in length; 0 for commands that do not read.
    pub read_len: u32,
    pub attr: TaskAttribute,
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Command")
            .field("lun", &self.lun)
            .field("opcode", &format_args!("{:#04x}", self.cdb.first().copied().unwrap_or(0)))
            .field("data_out", &self.data_out.len())
            .field("read_len", &self.read_len)
            .finish()
    }
}

/// Operation codes the helpers use (SPC-5, SBC-4).
pub mod opcode {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const INQUIRY: u8 = 0x12;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const READ_CAPACITY_16: u8 = 0x10;
    pub const REPORT_LUNS: u8 = 0xa0;
}

impl Command {
    /// A command with no data.
    pub fn new(lun: u64, cdb: Vec<u8>) -> Command {
        Command { lun, cdb, data_out: Vec::new(), read_len: 0, attr: TaskAttribute::Simple }
    }

    /// A command that reads up to `len` bytes.
    pub fn reading(lun: u64, cdb: Vec<u8>, len: u32) -> Command {
        Command { read_len: len, ..Command::new(lun, cdb) }
    }

    /// A command that writes `data`.
    pub fn writing(lun: u64, cdb: Vec<u8>, data: Vec<u8>) -> Command {
        Command { data_out: data, ..Command::new(lun, cdb) }
    }

    pub fn test_unit_ready(lun: u64) -> Command {
        Command::new(lun, vec![opcode::TEST_UNIT_READY, 0, 0, 0, 0, 0])
    }

    /// Standard INQUIRY data, `len` bytes at most.
    pub fn inquiry(lun: u64, len: u16) -> Command {
        let l = len.to_be_bytes();
        Command::reading(lun, vec![opcode::INQUIRY, 0, 0, l[0], l[1], 0], u32::from(len))
    }

    /// REPORT LUNS (SELECT REPORT 0), sent to `lun` (usually 0).
    pub fn report_luns(lun: u64, len: u32) -> Command {
        let mut cdb = vec![0u8; 12];
        cdb[0] = opcode::REPORT_LUNS;
        cdb[6..10].copy_from_slice(&len.to_be_bytes());
        Command::reading(lun, cdb, len)
    }

    /// READ CAPACITY (16), 32 bytes of parameter data.
    pub fn read_capacity16(lun: u64) -> Command {
        let mut cdb = vec![0u8; 16];
        cdb[0] = opcode::SERVICE_ACTION_IN_16;
        cdb[1] = opcode::READ_CAPACITY_16;
        cdb[10..14].copy_from_slice(&32u32.to_be_bytes());
        Command::reading(lun, cdb, 32)
    }

    fn rw16(op: u8, lba: u64, blocks: u32, fua: bool) -> Vec<u8> {
        let mut cdb = vec![0u8; 16];
        cdb[0] = op;
        if fua {
            cdb[1] = 0x08;
        }
        cdb[2..10].copy_from_slice(&lba.to_be_bytes());
        cdb[10..14].copy_from_slice(&blocks.to_be_bytes());
        cdb
    }

    /// READ (16) of `blocks` blocks of `block_size` bytes.
    pub fn read16(lun: u64, lba: u64, blocks: u32, block_size: u32, fua: bool) -> Command {
        Command::reading(lun, Command::rw16(opcode::READ_16, lba, blocks, fua), blocks.saturating_mul(block_size))
    }

    /// WRITE (16) of `data`, a whole number of blocks of `block_size` bytes.
    pub fn write16(lun: u64, lba: u64, data: Vec<u8>, block_size: u32, fua: bool) -> Command {
        let blocks = u32::try_from(data.len() / block_size.max(1) as usize).unwrap_or(u32::MAX);
        Command::writing(lun, Command::rw16(opcode::WRITE_16, lba, blocks, fua), data)
    }

    /// SYNCHRONIZE CACHE (16) of the whole medium.
    pub fn synchronize_cache16(lun: u64) -> Command {
        let mut cdb = vec![0u8; 16];
        cdb[0] = opcode::SYNCHRONIZE_CACHE_16;
        Command::new(lun, cdb)
    }
}

/// Encodes a LUN for the iSCSI LUN field (SAM-5 single level: peripheral
/// addressing below 256, flat space below 16384).
pub fn encode_lun(lun: u64) -> u64 {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else if lun < 0x4000 {
        b[0] = 0x40 | (lun >> 8) as u8;
        b[1] = lun as u8;
    } else {
        return lun;
    }
    u64::from_be_bytes(b)
}

/// Decodes a single level LUN in the forms [`encode_lun`] writes; other
/// forms come back as the raw 8 bytes, big endian.
pub fn decode_lun(raw: [u8; 8]) -> u64 {
    let rest_zero = raw[2..].iter().all(|b| *b == 0);
    match raw[0] >> 6 {
        0b00 if raw[0] == 0 && rest_zero => u64::from(raw[1]),
        0b01 if rest_zero => (u64::from(raw[0] & 0x3f) << 8) | u64::from(raw[1]),
        _ => u64::from_be_bytes(raw),
    }
}

/// The LUN list of REPORT LUNS parameter data (SPC-5 6.33.2).
pub fn parse_report_luns(data: &[u8]) -> Option<Vec<u64>> {
    let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
    let list = data.get(8..)?;
    let list = list.get(..len.min(list.len()))?;
    Some(list.chunks_exact(8).map(|c| decode_lun(c.try_into().unwrap_or([0xff; 8]))).collect())
}

/// READ CAPACITY (16) parameter data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    pub last_lba: u64,
    pub block_size: u32,
}

impl Capacity {
    pub fn parse(data: &[u8]) -> Option<Capacity> {
        Some(Capacity {
            last_lba: u64::from_be_bytes(data.get(..8)?.try_into().ok()?),
            block_size: u32::from_be_bytes(data.get(8..12)?.try_into().ok()?),
        })
    }

    pub fn blocks(&self) -> u64 {
        self.last_lba.saturating_add(1)
    }

    pub fn bytes(&self) -> u64 {
        self.blocks().saturating_mul(u64::from(self.block_size))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_descriptor_sense() {
        let mut fixed = vec![0u8; 18];
        fixed[0] = 0x70;
        fixed[2] = 0x07;
        fixed[7] = 10;
        fixed[12] = 0x27;
        fixed[13] = 0x07;
        let s = Sense::parse(&fixed).unwrap();
        assert_eq!(s.code(), (sense_key::DATA_PROTECT, 0x27, 0x07));
        assert_eq!(format!("{s}"), "DATA PROTECT 27h/07h");
        let desc = [0x72, 0x06, 0x3f, 0x0e, 0, 0, 0, 0];
        assert!(Sense::parse(&desc).unwrap().is(sense_key::UNIT_ATTENTION, 0x3f, 0x0e));
        assert_eq!(Sense::parse(&[0x7f, 0, 0]), None);
        assert_eq!(Sense::parse(&[]), None);
        // Short fixed sense without ASC: still the key.
        assert_eq!(Sense::parse(&[0x70, 0, 0x05]).unwrap().code(), (5, 0, 0));
    }

    #[test]
    fn luns_round_trip() {
        for lun in [0u64, 1, 255, 256, 1000, 0x3fff] {
            assert_eq!(decode_lun(encode_lun(lun).to_be_bytes()), lun);
        }
        assert_eq!(encode_lun(1).to_be_bytes(), [0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(encode_lun(300).to_be_bytes(), [0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
        let mut data = vec![0, 0, 0, 16, 0, 0, 0, 0];
        data.extend_from_slice(&encode_lun(0).to_be_bytes());
        data.extend_from_slice(&encode_lun(300).to_be_bytes());
        assert_eq!(parse_report_luns(&data), Some(vec![0, 300]));
        // Truncated by the allocation length: only whole entries.
        assert_eq!(parse_report_luns(&data[..20]), Some(vec![0]));
        assert_eq!(parse_report_luns(&data[..3]), None);
    }

    #[test]
    fn cdbs() {
        let w = Command::write16(3, 0x0102_0304_0506_0708, vec![0; 4096], 512, true);
        assert_eq!(w.cdb[0], 0x8a);
        assert_eq!(w.cdb[1], 0x08);
        assert_eq!(&w.cdb[2..10], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&w.cdb[10..14], &8u32.to_be_bytes());
        let r = Command::read16(0, 9, 4, 4096, false);
        assert_eq!((r.cdb[0], r.cdb[1], r.read_len), (0x88, 0, 16384));
        let c = Command::read_capacity16(0);
        assert_eq!((c.cdb[0], c.cdb[1] & 0x1f, c.read_len), (0x9e, 0x10, 32));
        let cap = Capacity::parse(&[0, 0, 0, 0, 0, 0, 0x0f, 0xff, 0, 0, 2, 0]).unwrap();
        assert_eq!((cap.blocks(), cap.block_size, cap.bytes()), (4096, 512, 2 << 20));
    }

    #[test]
    fn response_predicates() {
        let ua = Response {
            status: Status::CHECK_CONDITION,
            sense: Sense::parse(&[0x72, 0x06, 0x3f, 0x0e]),
            data: Vec::new(),
            residual: Residual::None,
        };
        assert!(ua.is_unit_attention() && ua.is_check(6, 0x3f, 0x0e) && !ua.is_good());
        assert_eq!(
            format!("{ua:?}"),
            "Response { status: CHECK CONDITION, sense: UNIT ATTENTION 3Fh/0Eh, data_len: 0 }"
        );
        assert_eq!(Residual::from_flags(false, true, 7), Residual::Underflow(7));
        assert_eq!(Residual::from_flags(true, false, 7), Residual::Overflow(7));
    }
}

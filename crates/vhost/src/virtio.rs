//! virtio-scsi wire format (virtio 1.2, section 5.6): constants and the
//! parsing of requests out of descriptor chains. Nothing here trusts the
//! guest: every length is checked, every guest access goes through
//! `vm-memory`'s bounds-checked API, and errors are values, never panics.

use smallvec::SmallVec;
use vm_memory::{Bytes, GuestAddress, GuestMemory};

// The numbers are Linux's uapi headers as `virtio-bindings` carries them;
// here they get the types the device uses them with.
use virtio_bindings::virtio_config as config;
use virtio_bindings::virtio_ring as ring;
use virtio_bindings::virtio_scsi as scsi;

// Feature bits (5.6.3), as bit numbers.
pub const VIRTIO_SCSI_F_INOUT: u64 = scsi::VIRTIO_SCSI_F_INOUT as u64;
pub const VIRTIO_SCSI_F_HOTPLUG: u64 = scsi::VIRTIO_SCSI_F_HOTPLUG as u64;
/// "Parameter change" (QEMU's `param_change`).
pub const VIRTIO_SCSI_F_CHANGE: u64 = scsi::VIRTIO_SCSI_F_CHANGE as u64;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = ring::VIRTIO_RING_F_INDIRECT_DESC as u64;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = ring::VIRTIO_RING_F_EVENT_IDX as u64;
pub const VIRTIO_F_VERSION_1: u64 = config::VIRTIO_F_VERSION_1 as u64;

// Response codes (5.6.6.1), as the response byte.
pub const S_OK: u8 = scsi::VIRTIO_SCSI_S_OK as u8;
pub const S_OVERRUN: u8 = scsi::VIRTIO_SCSI_S_OVERRUN as u8;
pub const S_ABORTED: u8 = scsi::VIRTIO_SCSI_S_ABORTED as u8;
pub const S_BAD_TARGET: u8 = scsi::VIRTIO_SCSI_S_BAD_TARGET as u8;
/// Cancelled by a reset (LOGICAL UNIT RESET, I_T NEXUS RESET).
pub const S_RESET: u8 = scsi::VIRTIO_SCSI_S_RESET as u8;
pub const S_FAILURE: u8 = scsi::VIRTIO_SCSI_S_FAILURE as u8;
pub const S_FUNCTION_SUCCEEDED: u8 = scsi::VIRTIO_SCSI_S_FUNCTION_SUCCEEDED as u8;
pub const S_FUNCTION_REJECTED: u8 = scsi::VIRTIO_SCSI_S_FUNCTION_REJECTED as u8;
pub const S_INCORRECT_LUN: u8 = scsi::VIRTIO_SCSI_S_INCORRECT_LUN as u8;
/// Task management: the function completed (same value as `S_OK`).
pub const S_FUNCTION_COMPLETE: u8 = scsi::VIRTIO_SCSI_S_OK as u8;

// Control queue (5.6.6.2).
pub const T_TMF: u32 = scsi::VIRTIO_SCSI_T_TMF;
pub const T_AN_QUERY: u32 = scsi::VIRTIO_SCSI_T_AN_QUERY;
pub const T_AN_SUBSCRIBE: u32 = scsi::VIRTIO_SCSI_T_AN_SUBSCRIBE;
pub const TMF_ABORT_TASK: u32 = scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK;
pub const TMF_ABORT_TASK_SET: u32 = scsi::VIRTIO_SCSI_T_TMF_ABORT_TASK_SET;
pub const TMF_CLEAR_ACA: u32 = scsi::VIRTIO_SCSI_T_TMF_CLEAR_ACA;
pub const TMF_CLEAR_TASK_SET: u32 = scsi::VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET;
pub const TMF_I_T_NEXUS_RESET: u32 = scsi::VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET;
pub const TMF_LOGICAL_UNIT_RESET: u32 = scsi::VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET;
pub const TMF_QUERY_TASK: u32 = scsi::VIRTIO_SCSI_T_TMF_QUERY_TASK;
pub const TMF_QUERY_TASK_SET: u32 = scsi::VIRTIO_SCSI_T_TMF_QUERY_TASK_SET;

/// Default and largest CDB and sense sizes (the config space's defaults are 32 and 96).
pub const DEFAULT_CDB_SIZE: u32 = scsi::VIRTIO_SCSI_CDB_DEFAULT_SIZE;
pub const DEFAULT_SENSE_SIZE: u32 = scsi::VIRTIO_SCSI_SENSE_DEFAULT_SIZE;
pub const MAX_CDB_SIZE: u32 = 256;
pub const MAX_SENSE_SIZE: u32 = 256;

/// Request header before the CDB: lun[8], id u64, task_attr, prio, crn
/// (`struct virtio_scsi_cmd_req` without its CDB).
pub const REQ_HEADER: usize = std::mem::offset_of!(scsi::virtio_scsi_cmd_req, cdb);
/// Response header before the sense: sense_len u32, residual u32,
/// status_qualifier u16, status, response (`struct virtio_scsi_cmd_resp`
/// without its sense).
pub const RESP_HEADER: usize = std::mem::offset_of!(scsi::virtio_scsi_cmd_resp, sense);

/// Offsets of the driver-writable fields of `struct virtio_scsi_config`.
pub const CONFIG_SENSE_SIZE: u32 = std::mem::offset_of!(scsi::virtio_scsi_config, sense_size) as u32;
pub const CONFIG_CDB_SIZE: u32 = std::mem::offset_of!(scsi::virtio_scsi_config, cdb_size) as u32;
pub const CONFIG_LEN: usize = std::mem::size_of::<scsi::virtio_scsi_config>();

// The layout virtio 1.2 section 5.6 fixes, checked when this compiles.
const _: () = assert!(REQ_HEADER == 19 && RESP_HEADER == 12);
const _: () = assert!(CONFIG_SENSE_SIZE == 20 && CONFIG_CDB_SIZE == 24 && CONFIG_LEN == 36);

/// One buffer of a descriptor chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    pub addr: u64,
    pub len: u32,
}

/// Why a descriptor chain was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("device-readable descriptor after a device-writable one")]
    Order,
    /// More descriptors than the limit (the limit).
    #[error("descriptor chain longer than {0} descriptors (max_chain_descriptors)")]
    TooLong(u32),
    #[error("request too short: {0} readable bytes")]
    ShortRequest(usize),
    #[error("response area too short: {0} writable bytes")]
    ShortResponse(usize),
    #[error("buffer outside guest memory")]
    Memory,
    /// More bytes one way than the limit.
    #[error("request of {bytes} bytes one way, over {limit} (max_request_bytes)")]
    TooLarge { bytes: u64, limit: u64 },
}

/// A chain refused by [`Buffers::collect`]: why, and the buffers taken
/// before the refusal (the response area may be among them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadChain {
    pub error: ChainError,
    pub partial: Buffers,
}

/// The buffers of a chain: device-readable first, then device-writable.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Buffers {
    /// Inline for the chains Linux's driver sends for small I/O (header,
    /// data-out; response, data-in): no allocation per command.
    pub readable: SmallVec<[Seg; 4]>,
    pub writable: SmallVec<[Seg; 4]>,
}

impl Buffers {
    /// Splits descriptors (address, length, device-writable) as the spec
    /// requires, looking at `max_descriptors` of them at most: a longer
    /// chain is [`ChainError::TooLong`], and the rest of it is not walked.
    // The error carries the buffers seen, inline like the `Ok` value's: as
    // large, and rarer.
    #[allow(clippy::result_large_err)]
    pub fn collect(descs: impl Iterator<Item = (u64, u32, bool)>, max_descriptors: u32) -> Result<Buffers, BadChain> {
        let mut b = Buffers::default();
        for (n, (addr, len, write)) in descs.enumerate() {
            if n >= max_descriptors as usize {
                return Err(BadChain { error: ChainError::TooLong(max_descriptors), partial: b });
            }
            if write {
                b.writable.push(Seg { addr, len });
            } else {
                if !b.writable.is_empty() {
                    return Err(BadChain { error: ChainError::Order, partial: b });
                }
                b.readable.push(Seg { addr, len });
            }
        }
        Ok(b)
    }

    pub fn readable_len(&self) -> u64 {
        self.readable.iter().map(|s| s.len as u64).sum()
    }

    pub fn writable_len(&self) -> u64 {
        self.writable.iter().map(|s| s.len as u64).sum()
    }

    /// `len` bytes of the device-readable part from `offset` (checked
    /// against the chain: a short chain is [`ChainError::ShortRequest`]).
    pub fn read_at<M: GuestMemory>(&self, mem: &M, offset: u64, len: usize) -> Result<Vec<u8>, ChainError> {
        let mut out = Vec::new();
        self.read_into(mem, offset, len, |n| {
            out = vec![0u8; n];
            &mut out[..]
        })?;
        Ok(out)
    }

    /// [`Buffers::read_at`] into a buffer of the caller's, `alloc(len)`,
    /// asked for once the chain was checked (a header on the stack).
    pub fn read_into<'a, M: GuestMemory>(
        &self,
        mem: &M,
        offset: u64,
        len: usize,
        alloc: impl FnOnce(usize) -> &'a mut [u8],
    ) -> Result<(), ChainError> {
        let total = self.readable_len();
        if offset.checked_add(len as u64).is_none_or(|end| end > total) {
            return Err(ChainError::ShortRequest(total as usize));
        }
        // Every piece is checked against guest memory before the buffer is
        // allocated: a chain that points outside it claims no memory here.
        for piece in self.readable_pieces(offset, len) {
            let (addr, n) = piece?;
            if !mem.check_range(GuestAddress(addr), n, vm_memory::Permissions::Read) {
                return Err(ChainError::Memory);
            }
        }
        let out = alloc(len);
        let mut done = 0usize;
        for piece in self.readable_pieces(offset, len) {
            let (addr, n) = piece?;
            mem.read_slice(&mut out[done..done + n], GuestAddress(addr)).map_err(|_| ChainError::Memory)?;
            done += n;
        }
        Ok(())
    }

    /// The (guest address, length) pieces of `len` readable bytes from
    /// `offset` (which the caller checked are within the chain).
    fn readable_pieces(
        &self,
        mut offset: u64,
        len: usize,
    ) -> impl Iterator<Item = Result<(u64, usize), ChainError>> + '_ {
        let mut done = 0usize;
        self.readable.iter().filter_map(move |s| {
            if done == len {
                return None;
            }
            let seg = u64::from(s.len);
            if offset >= seg {
                offset -= seg;
                return None;
            }
            let n = ((seg - offset) as usize).min(len - done);
            let addr = s.addr.checked_add(offset).ok_or(ChainError::Memory);
            offset = 0;
            done += n;
            Some(addr.map(|a| (a, n)))
        })
    }

    /// Writes `data` into the writable buffers starting `offset` bytes in;
    /// returns how many bytes were written (stops at the end of the buffers).
    pub fn write_at<M: GuestMemory>(&self, mem: &M, mut offset: u64, data: &[u8]) -> Result<usize, ChainError> {
        let mut done = 0usize;
        for s in &self.writable {
            if done == data.len() {
                break;
            }
            let len = s.len as u64;
            if offset >= len {
                offset -= len;
                continue;
            }
            let room = (len - offset) as usize;
            let n = room.min(data.len() - done);
            let addr = s.addr.checked_add(offset).ok_or(ChainError::Memory)?;
            mem.write_slice(&data[done..done + n], GuestAddress(addr)).map_err(|_| ChainError::Memory)?;
            done += n;
            offset = 0;
        }
        Ok(done)
    }
}

const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;

/// The buffers of the chain that starts at descriptor `head` of a split
/// ring's descriptor table (`table`, `size` entries), as (address, length,
/// device-writable), indirect tables followed: how a chain taken off the
/// available ring by a previous process is read again (inflight resubmission).
/// Stops after `limit` descriptors (the chain may be longer: pass one more
/// than [`Buffers::collect`]'s limit to let it tell).
pub fn chain_at<M: GuestMemory>(
    mem: &M,
    table: u64,
    size: u16,
    head: u16,
    limit: u32,
) -> Result<Vec<(u64, u32, bool)>, ChainError> {
    let read_desc = |table: u64, i: u16| -> Result<(u64, u32, u16, u16), ChainError> {
        let at = table.checked_add(16 * i as u64).ok_or(ChainError::Memory)?;
        let mut d = [0u8; 16];
        mem.read_slice(&mut d, GuestAddress(at)).map_err(|_| ChainError::Memory)?;
        let addr = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
        Ok((addr, len, u16::from_le_bytes([d[12], d[13]]), u16::from_le_bytes([d[14], d[15]])))
    };
    if head >= size {
        return Err(ChainError::Memory);
    }
    let mut out = Vec::new();
    let (mut table, mut size, mut i, mut indirect) = (table, size, head, false);
    loop {
        if out.len() >= limit as usize {
            return Ok(out);
        }
        let (addr, len, flags, next) = read_desc(table, i)?;
        if flags & DESC_F_INDIRECT != 0 {
            // Only the chain's one descriptor may point at an indirect table.
            if indirect || !out.is_empty() || flags & DESC_F_NEXT != 0 || len % 16 != 0 || len == 0 {
                return Err(ChainError::Order);
            }
            let n = len / 16;
            if n > u16::MAX as u32 {
                return Err(ChainError::TooLong(u16::MAX as u32));
            }
            (table, size, i, indirect) = (addr, n as u16, 0, true);
            continue;
        }
        out.push((addr, len, flags & DESC_F_WRITE != 0));
        if flags & DESC_F_NEXT == 0 {
            return Ok(out);
        }
        if next >= size {
            return Err(ChainError::Memory);
        }
        i = next;
    }
}

/// A decoded LUN address (virtio 1.2, 5.6.6: byte 0 is 1, byte 1 the target,
/// bytes 2-3 the LUN in flat (01b) or peripheral (00b) addressing).
pub fn decode_lun(lun: &[u8; 8]) -> Option<(u8, u64)> {
    if lun[0] != 1 {
        return None;
    }
    let method = lun[2] >> 6;
    if method > 1 || lun[4..].iter().any(|&b| b != 0) {
        return None;
    }
    Some((lun[1], (((lun[2] & 0x3f) as u64) << 8) | lun[3] as u64))
}

/// A parsed command request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdHeader {
    pub lun: [u8; 8],
    pub tag: u64,
    /// Inline up to the default CDB size (32 bytes).
    pub cdb: SmallVec<[u8; 32]>,
}

/// Splits the readable bytes of a command request into header, CDB and data-out.
pub fn parse_cmd(bytes: &[u8], cdb_size: usize) -> Result<(CmdHeader, &[u8]), ChainError> {
    let need = REQ_HEADER + cdb_size;
    if bytes.len() < need {
        return Err(ChainError::ShortRequest(bytes.len()));
    }
    let mut lun = [0u8; 8];
    lun.copy_from_slice(&bytes[0..8]);
    let mut tag = [0u8; 8];
    tag.copy_from_slice(&bytes[8..16]);
    let cdb = SmallVec::from_slice(&bytes[REQ_HEADER..need]);
    Ok((CmdHeader { lun, tag: u64::from_le_bytes(tag), cdb }, &bytes[need..]))
}

/// An encoded command response: inline up to the default sense size.
pub type RespBytes = SmallVec<[u8; RESP_HEADER + 96]>;

/// Encodes a command response header plus sense (truncated to `sense_size`).
pub fn encode_resp(sense: &[u8], sense_size: usize, residual: u32, status: u8, response: u8) -> RespBytes {
    let sense = &sense[..sense.len().min(sense_size)];
    let mut out = RespBytes::new();
    out.extend_from_slice(&(sense.len() as u32).to_le_bytes());
    out.extend_from_slice(&residual.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.push(status);
    out.push(response);
    out.extend_from_slice(sense);
    out.resize(RESP_HEADER + sense_size, 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lun_addressing() {
        assert_eq!(decode_lun(&[1, 0, 0x40, 3, 0, 0, 0, 0]), Some((0, 3)));
        assert_eq!(decode_lun(&[1, 2, 0x00, 7, 0, 0, 0, 0]), Some((2, 7)));
        assert_eq!(decode_lun(&[1, 0, 0x41, 0x02, 0, 0, 0, 0]), Some((0, 0x102)));
        assert_eq!(decode_lun(&[0, 0, 0x40, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[1, 0, 0x80, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[1, 0, 0x40, 0, 1, 0, 0, 0]), None);
    }

    #[test]
    fn chain_order_and_parse() {
        assert_eq!(
            Buffers::collect([(0, 1, true), (0, 1, false)].into_iter(), 8).unwrap_err().error,
            ChainError::Order
        );
        let b = Buffers::collect([(0, 51, false), (100, 108, true)].into_iter(), 8).unwrap();
        assert_eq!((b.readable_len(), b.writable_len()), (51, 108));
        let mut req = vec![0u8; 51];
        req[0] = 1;
        req[2] = 0x40;
        req[8] = 0x2a;
        req[19] = 0x12;
        let (h, rest) = parse_cmd(&req, 32).unwrap();
        assert_eq!((h.tag, h.cdb[0], rest.len()), (0x2a, 0x12, 0));
        assert!(matches!(parse_cmd(&req[..40], 32), Err(ChainError::ShortRequest(40))));
        let r = encode_resp(&[0x70; 200], 96, 5, 2, 0);
        assert_eq!(r.len(), 108);
        assert_eq!(&r[0..4], &96u32.to_le_bytes());
        assert_eq!(&r[4..8], &5u32.to_le_bytes());
        assert_eq!((r[10], r[11]), (2, 0));
        assert_eq!(lunar_scsi::cdb_length(&[0x28, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]), 10);
    }

    /// `collect` looks at `max_descriptors` descriptors at most: a longer
    /// chain is refused with what came before (its response area, if any),
    /// and the rest of the chain is never walked.
    #[test]
    fn collect_stops_at_the_descriptor_limit() {
        let walked = std::cell::Cell::new(0);
        let chain = (0..10_000u64).map(|i| {
            walked.set(walked.get() + 1);
            (i, 8, i > 0)
        });
        let bad = Buffers::collect(chain, 4).unwrap_err();
        assert_eq!(bad.error, ChainError::TooLong(4));
        assert_eq!((bad.partial.readable.len(), bad.partial.writable.len()), (1, 3));
        assert_eq!(walked.get(), 5, "the rest of the chain not walked");
        assert!(Buffers::collect((0..4u64).map(|i| (i, 8, false)), 4).is_ok());
    }

    /// `read_at` reads across readable segments from any offset, and
    /// refuses a range past the chain or outside guest memory.
    #[test]
    fn read_at_spans_segments() {
        use vm_memory::GuestMemoryMmap;
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let bytes: Vec<u8> = (0..=255u8).collect();
        mem.write_slice(&bytes, GuestAddress(0)).unwrap();
        // Segments [10..15) [100..103) [200..208), then a writable one.
        let b = Buffers::collect([(10, 5, false), (100, 3, false), (200, 8, false), (300, 4, true)].into_iter(), 8)
            .unwrap();
        assert_eq!(
            b.read_at(&mem, 0, 16).unwrap(),
            [10, 11, 12, 13, 14, 100, 101, 102, 200, 201, 202, 203, 204, 205, 206, 207]
        );
        assert_eq!(b.read_at(&mem, 4, 5).unwrap(), [14, 100, 101, 102, 200]);
        assert_eq!(b.read_at(&mem, 8, 0).unwrap(), Vec::<u8>::new());
        assert_eq!(b.read_at(&mem, 16, 0).unwrap(), Vec::<u8>::new());
        assert_eq!(b.read_at(&mem, 10, 7).unwrap_err(), ChainError::ShortRequest(16));
        assert_eq!(b.read_at(&mem, u64::MAX, 2).unwrap_err(), ChainError::ShortRequest(16));
        let outside = Buffers::collect([(0xff0, 0x20, false)].into_iter(), 8).unwrap();
        assert_eq!(outside.read_at(&mem, 0, 0x20).unwrap_err(), ChainError::Memory);
    }
}

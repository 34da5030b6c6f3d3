//! virtio-scsi requests read from a hostile guest's memory.
//!
//! Input: a 32-byte header, then the image of the guest's low memory.
//!
//! ```text
//! 0      flags: bit 0 high regions, bit 1 EVENT_IDX, bits 2-3 cdb_size,
//!        bits 4-5 sense_size
//! 1..3   head (u16le): the chain chain_at reads (inflight resubmission)
//! 3..5   queue size (u16le) for chain_at and the ring
//! 5..13  descriptor table address (u64le)
//! 13..21 available ring address (u64le)
//! 21..29 used ring address (u64le)
//! 29..32 data-in pattern seed and length (the "command's" answer)
//! 32..   guest memory from address 0 (rounded up to 4 KiB, at most 64 KiB)
//! ```
//!
//! With flag bit 0, guest memory also has a region straddling 4 GiB
//! (0xffff_f000..0x1_0000_1000) and one just below 2^64, both filled with
//! the same image: descriptors may point across regions, across the 4 GiB
//! line and at addresses whose end overflows.
//!
//! Runs, as `lunar-vhost` does: (1) `chain_at` (the descriptor chain a
//! previous process left in flight, indirect tables followed) then
//! `Buffers::collect`; (2) virtio-queue's own available ring and
//! descriptor chain iteration (`pop_descriptor_chain`, up to 8 chains)
//! mapped through `Buffers::collect`; each chain then goes through the
//! request path of `Controller::submit`/`complete`: `read_at` of the
//! header, `parse_cmd`, `decode_lun`, `lunar_scsi::cdb_length`, `read_at` of the
//! data-out, `write_at` of data-in and of `encode_resp`, `add_used`.
//!
//! Checked: no panic, lengths consistent, no single allocation beyond
//! `-malloc_limit_mb` (see docs/fuzzing.md for the limit this target runs with).
#![no_main]

use libfuzzer_sys::fuzz_target;
use lunar_vhost::virtio::{
    chain_at, decode_lun, encode_resp, parse_cmd, Buffers, ChainError, REQ_HEADER, RESP_HEADER, S_BAD_TARGET,
    S_FAILURE, S_OK,
};
use lunar_vhost::VhostLimits;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const HEADER: usize = 32;
const MAX_LOW: usize = 64 * 1024;
const STRADDLE: u64 = 0xffff_f000;
const TOP: u64 = 0xffff_ffff_ffff_e000;

fn u16_at(d: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([d[i], d[i + 1]])
}

fn u64_at(d: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(d[i..i + 8].try_into().unwrap())
}

/// The request path of `Controller::submit` and `complete` on one chain.
fn serve(mem: &GuestMemoryMmap, b: &Buffers, cdb_size: usize, sense_size: usize, answer: &[u8]) -> u32 {
    assert_eq!(b.readable_len(), b.readable.iter().map(|s| u64::from(s.len)).sum::<u64>());
    // As `submit`: a request over the byte limit is refused before anything is read.
    let limits = VhostLimits::default();
    if b.readable_len().max(b.writable_len()) > limits.max_request_bytes {
        return 0;
    }
    if b.readable_len() <= 64 * 1024 {
        if let Ok(all) = b.read_at(mem, 0, b.readable_len() as usize) {
            assert_eq!(all.len() as u64, b.readable_len());
        }
    }
    let resp_len = (RESP_HEADER + sense_size) as u64;
    if b.writable_len() < resp_len {
        return 0;
    }
    let fail = |response: u8| {
        let r = encode_resp(&[], sense_size, 0, 0, response);
        assert_eq!(r.len(), RESP_HEADER + sense_size);
        b.write_at(mem, 0, &r).unwrap_or(0) as u32
    };
    let header_len = REQ_HEADER + cdb_size;
    let header = b.read_at(mem, 0, header_len.min(b.readable_len() as usize));
    let hdr = match header.and_then(|h| parse_cmd(&h, cdb_size).map(|(hdr, rest)| (hdr, rest.len()))) {
        Ok((hdr, rest)) => {
            assert_eq!(rest, 0);
            assert_eq!(hdr.cdb.len(), cdb_size);
            hdr
        }
        Err(_) => return fail(S_FAILURE),
    };
    if decode_lun(&hdr.lun).is_none() {
        return fail(S_BAD_TARGET);
    }
    let cdb = &hdr.cdb[..lunar_scsi::cdb_length(&hdr.cdb).min(hdr.cdb.len())];
    let data_in_cap = b.writable_len() - resp_len;
    let data_out_len = (b.readable_len() - header_len as u64) as usize;
    let data_out = match b.read_at(mem, header_len as u64, data_out_len) {
        Ok(d) => d,
        Err(ChainError::Memory) => return fail(S_FAILURE),
        Err(e) => panic!("read_at of a checked length: {e:?}"),
    };
    assert_eq!(data_out.len(), data_out_len);
    // The command's answer: data-in, and sense made of the CDB.
    let data = &answer[..answer.len().min(data_in_cap as usize)];
    let written = match b.write_at(mem, resp_len, data) {
        Ok(n) => n,
        Err(_) => 0,
    };
    assert!(written <= data.len());
    let residual = (data_in_cap - written as u64).min(u32::MAX as u64) as u32;
    let header = encode_resp(cdb, sense_size, residual, 2, S_OK);
    let n = b.write_at(mem, 0, &header).unwrap_or(0);
    (n + written) as u32
}

fuzz_target!(|data: &[u8]| {
    if data.len() < HEADER {
        return;
    }
    let (h, image) = data.split_at(HEADER);
    let flags = h[0];
    let head = u16_at(h, 1);
    let qsize = u16_at(h, 3);
    let table = u64_at(h, 5);
    let avail = u64_at(h, 13);
    let used = u64_at(h, 21);
    let cdb_size = [32usize, 24, 6, 256][usize::from(flags >> 2 & 3)];
    let sense_size = [96usize, 20, 0, 256][usize::from(flags >> 4 & 3)];
    let answer: Vec<u8> = (0..usize::from(h[30]) * 16 + usize::from(h[31] & 1) * 8192)
        .map(|i| (i as u8).wrapping_mul(h[29] | 1))
        .collect();

    let image = &image[..image.len().min(MAX_LOW)];
    let low = image.len().div_ceil(4096).max(1) * 4096;
    let mut ranges = vec![(GuestAddress(0), low)];
    if flags & 1 != 0 {
        ranges.push((GuestAddress(STRADDLE), 0x2000));
        ranges.push((GuestAddress(TOP), 0x1000));
    }
    let mem = GuestMemoryMmap::<()>::from_ranges(&ranges).expect("guest memory");
    mem.write_slice(image, GuestAddress(0)).expect("image");
    if flags & 1 != 0 {
        let n = image.len().min(0x1000);
        mem.write_slice(&image[..n], GuestAddress(STRADDLE)).expect("image");
        mem.write_slice(&image[..n], GuestAddress(TOP)).expect("image");
    }

    // (1) A chain read again by its head (inflight resubmission).
    let max = VhostLimits::default().max_chain_descriptors;
    if let Ok(descs) = chain_at(&mem, table, qsize, head, max) {
        assert!(!descs.is_empty() && descs.len() <= max as usize);
        if let Ok(b) = Buffers::collect(descs.into_iter(), max) {
            serve(&mem, &b, cdb_size, sense_size, &answer);
        }
    }

    // (2) The rings, through virtio-queue.
    let Ok(mut q) = Queue::new(1024) else { return };
    q.set_size(qsize);
    q.set_desc_table_address(Some(table as u32), Some((table >> 32) as u32));
    q.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
    q.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
    q.set_event_idx(flags & 2 != 0);
    q.set_ready(true);
    if !q.is_valid(&mem) {
        return;
    }
    let _ = q.disable_notification(&mem);
    for _ in 0..8 {
        let Some(chain) = q.pop_descriptor_chain(&mem) else { break };
        let head = chain.head_index();
        let len = match Buffers::collect(chain.map(|d| (d.addr().0, d.len(), d.is_write_only())), max) {
            Ok(b) => serve(&mem, &b, cdb_size, sense_size, &answer),
            Err(_) => 0,
        };
        let _ = q.add_used(&mem, head, len);
    }
    let _ = q.enable_notification(&mem);
    let _ = q.needs_notification(&mem);
});

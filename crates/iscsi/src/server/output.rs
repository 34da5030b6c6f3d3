//! A connection's output: the PDUs its handlers queued, written with
//! vectored writes so that a read's data goes from the backend's buffer to
//! the socket without a copy in user space.
//!
//! The parts an encoder builds (BHS, AHS, digests, padding) are copied
//! into one arena, reused from write to write; a data segment shared with
//! its producer (Data-In's [`bytes::Bytes`]) is kept by reference. The
//! queue is a list of parts in wire order, consecutive arena bytes merged
//! into one part, so a batch of small answers is still one buffer.

use std::io::{self, IoSlice};
use std::ops::Range;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::pdu::{Pdu, Sink};

/// Most buffers handed to one write: beyond it the rest waits for the
/// next call of the loop (Linux takes up to 1024, UIO_MAXIOV; a batch of
/// answers rarely has more than a few dozen parts).
const MAX_IOV: usize = 64;

/// One stretch of the output.
#[derive(Debug)]
enum Part {
    /// Bytes of the arena.
    Arena(Range<usize>),
    /// A data segment, by reference.
    Shared(Bytes),
}

/// What a connection has to write, in order.
#[derive(Debug, Default)]
pub(crate) struct Output {
    arena: Vec<u8>,
    parts: Vec<Part>,
    /// The first part not wholly written yet, and how many of its bytes
    /// were: where the next write starts after a partial one.
    next: usize,
    written: usize,
}

impl Output {
    pub fn with_capacity(arena: usize) -> Output {
        Output { arena: Vec::with_capacity(arena), ..Output::default() }
    }

    /// Queues a PDU.
    pub fn push(&mut self, pdu: &Pdu, header_digest: bool, data_digest: bool) {
        pdu.encode_to(self, header_digest, data_digest);
    }

    pub fn is_empty(&self) -> bool {
        self.next == self.parts.len()
    }

    /// Forgets what is queued (written or not), keeping the arena's room.
    pub fn clear(&mut self) {
        self.arena.clear();
        self.parts.clear();
        self.next = 0;
        self.written = 0;
    }

    /// Writes everything queued, then clears the queue. A write may take
    /// any part of what it is given: the loop goes on from where it
    /// stopped. An error leaves the queue as it was after the last
    /// successful write.
    pub async fn write_to<W: AsyncWrite + Unpin>(&mut self, w: &mut W) -> io::Result<()> {
        while !self.is_empty() {
            let mut iov = [IoSlice::new(&[]); MAX_IOV];
            let n = self.slices(&mut iov);
            let wrote = w.write_vectored(&iov[..n]).await?;
            if wrote == 0 {
                return Err(io::Error::new(io::ErrorKind::WriteZero, "the socket took no bytes"));
            }
            self.advance(wrote);
        }
        self.clear();
        Ok(())
    }

    /// Fills `iov` with what is left to write, from where the last write
    /// stopped; returns how many it filled.
    fn slices<'a>(&'a self, iov: &mut [IoSlice<'a>]) -> usize {
        let mut skip = self.written;
        let mut n = 0;
        for (part, slot) in self.parts[self.next..].iter().zip(iov.iter_mut()) {
            let bytes = self.bytes(part);
            *slot = IoSlice::new(bytes.get(skip..).unwrap_or_default());
            skip = 0;
            n += 1;
        }
        n
    }

    fn bytes<'a>(&'a self, part: &'a Part) -> &'a [u8] {
        match part {
            Part::Arena(r) => self.arena.get(r.clone()).unwrap_or_default(),
            Part::Shared(b) => b,
        }
    }

    /// Accounts for `n` bytes written.
    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(part) = self.parts.get(self.next) else { return };
            let left = self.bytes(part).len().saturating_sub(self.written);
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.next += 1;
            self.written = 0;
        }
    }

    /// The data segments queued, in order (for tests: they must be the
    /// producer's buffers, not copies).
    #[cfg(test)]
    fn shared(&self) -> impl Iterator<Item = &Bytes> {
        self.parts.iter().filter_map(|p| match p {
            Part::Shared(b) => Some(b),
            Part::Arena(_) => None,
        })
    }
}

impl Sink for Output {
    fn put(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let start = self.arena.len();
        self.arena.extend_from_slice(bytes);
        let end = self.arena.len();
        match self.parts.last_mut() {
            Some(Part::Arena(r)) if r.end == start => r.end = end,
            _ => self.parts.push(Part::Arena(start..end)),
        }
    }

    fn put_shared(&mut self, data: &Bytes) {
        if !data.is_empty() {
            self.parts.push(Part::Shared(data.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::*;
    use crate::pdu::{decode_frame, NopIn, R2t, ScsiResponse, ServiceResponse, RESERVED_TAG};
    use crate::server::task::{answer, tests::read_task};

    /// A socket that takes at most a few bytes per call (a different
    /// number each time, across buffer boundaries) and is not ready every
    /// other call.
    struct Trickle {
        got: Vec<u8>,
        calls: usize,
        vectored_calls: usize,
    }

    impl Trickle {
        fn new() -> Trickle {
            Trickle { got: Vec::new(), calls: 0, vectored_calls: 0 }
        }

        fn budget(&mut self, cx: &mut Context<'_>) -> Option<usize> {
            self.calls += 1;
            if self.calls.is_multiple_of(2) {
                cx.waker().wake_by_ref();
                return None;
            }
            Some(1 + self.calls % 7)
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            let Some(n) = self.budget(cx) else { return Poll::Pending };
            let n = n.min(buf.len());
            self.got.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }

        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let Some(mut left) = self.budget(cx) else { return Poll::Pending };
            self.vectored_calls += 1;
            let mut n = 0;
            for b in bufs {
                let take = left.min(b.len());
                self.got.extend_from_slice(&b[..take]);
                n += take;
                left -= take;
                if left == 0 {
                    break;
                }
            }
            Poll::Ready(Ok(n))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread().build().expect("runtime").block_on(f)
    }

    /// A read's answer cut into several Data-In PDUs (the last one short
    /// and padded), with small PDUs before and after.
    fn pdus(data: Vec<u8>, max_pdu: u32, status: u8) -> Vec<Pdu> {
        let mut task = read_task(7, data.len() as u32 + 100);
        let sense = if status == 0 { Vec::new() } else { vec![0x70, 0, 5, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x24] };
        let ans = answer(&mut task, status, sense, data, None, max_pdu);
        let mut out = vec![Pdu::R2t(R2t {
            lun: 0,
            itt: 1,
            ttt: 2,
            stat_sn: 3,
            exp_cmd_sn: 4,
            max_cmd_sn: 5,
            r2t_sn: 0,
            buffer_offset: 0,
            desired_data_transfer_length: 512,
        })];
        out.extend(ans.data_in.into_iter().map(Pdu::DataIn));
        out.extend(ans.response.map(Pdu::ScsiResponse));
        out.push(Pdu::NopIn(NopIn {
            lun: 0,
            itt: 9,
            ttt: RESERVED_TAG,
            stat_sn: 1,
            exp_cmd_sn: 2,
            max_cmd_sn: 3,
            data: b"ping!".to_vec(),
        }));
        out
    }

    #[test]
    fn partial_vectored_writes_give_the_bytes_of_encode() {
        let data: Vec<u8> = (0..20_001u32).map(|i| (i * 7 + i / 251) as u8).collect();
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            for (max_pdu, status) in [(8192, 0), (4096, 2), (65536, 0)] {
                let pdus = pdus(data.clone(), max_pdu, status);
                let expected: Vec<u8> = pdus.iter().flat_map(|p| p.encode(hd, dd)).collect();
                let mut out = Output::default();
                for p in &pdus {
                    out.push(p, hd, dd);
                }
                let mut w = Trickle::new();
                block_on(out.write_to(&mut w)).expect("write");
                assert!(out.is_empty());
                assert!(w.got == expected, "digests {hd}/{dd}, max {max_pdu}: bytes differ");
                assert!(w.vectored_calls > expected.len() / 8, "written in many partial writes");
                // And each PDU decodes back, digests checked on the bytes as sent.
                let mut at = 0;
                for p in &pdus {
                    let (got, len) = decode_frame(&w.got[at..], hd, dd).expect("decodes").expect("whole");
                    assert_eq!(&got, p);
                    at += len;
                }
                assert_eq!(at, w.got.len());
            }
        }
    }

    #[test]
    fn data_in_is_queued_by_reference() {
        let data = vec![0xa5u8; 3 * 8192 + 12];
        let (start, len) = (data.as_ptr(), data.len());
        let pdus = pdus(data, 8192, 0);
        let mut out = Output::default();
        for p in &pdus {
            out.push(p, true, true);
        }
        // Each data segment points into the data-in, in order, none copied.
        let mut offset = 0;
        for b in out.shared() {
            assert_eq!(b.as_ptr(), start.wrapping_add(offset), "segment at {offset} is a copy");
            offset += b.len();
        }
        assert_eq!(offset, len);
        // The arena holds only the small parts: headers, digests, padding, NOP-In's data.
        assert!(out.arena.len() < 1024, "{} bytes in the arena", out.arena.len());
    }

    #[test]
    fn the_queue_is_reused_after_a_write() {
        let data = vec![1u8; 10_000];
        let mut out = Output::with_capacity(4096);
        for round in 0..3 {
            let pdus = pdus(data.clone(), 4096, 0);
            for p in &pdus {
                out.push(p, false, true);
            }
            let mut w = Trickle::new();
            block_on(out.write_to(&mut w)).expect("write");
            let expected: Vec<u8> = pdus.iter().flat_map(|p| p.encode(false, true)).collect();
            assert!(w.got == expected, "round {round}");
            assert!(out.is_empty() && out.parts.is_empty() && out.arena.is_empty());
        }
    }

    #[test]
    fn a_socket_that_takes_nothing_is_an_error() {
        struct Closed;
        impl AsyncWrite for Closed {
            fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, _: &[u8]) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(0))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut out = Output::default();
        out.push(
            &Pdu::ScsiResponse(ScsiResponse {
                bidi_read_overflow: false,
                bidi_read_underflow: false,
                overflow: false,
                underflow: false,
                response: ServiceResponse::CommandCompleted,
                status: 0,
                itt: 1,
                snack_tag: 0,
                stat_sn: 0,
                exp_cmd_sn: 0,
                max_cmd_sn: 0,
                exp_data_sn: 0,
                bidi_read_residual_count: 0,
                residual_count: 0,
                sense: Vec::new(),
                response_data: Vec::new(),
            }),
            false,
            false,
        );
        let err = block_on(out.write_to(&mut Closed)).expect_err("no progress");
        assert_eq!(err.kind(), io::ErrorKind::WriteZero);
        assert!(!out.is_empty());
    }
}

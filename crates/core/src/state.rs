//! The saved state of in-flight requests: a versioned byte stream.
//!
//! ```text
//! "LUNARRQS" u16 version(=1)
//! repeated: u8 marker (1 = retry, 2 = in flight), u64 lun, u64 tag,
//!           u32 len + CDB, u32 len + front-end data, u32 len + device data (data-out)
//! u8 0 (end)
//! ```
//! All integers big-endian. Decoding checks every length against the input.

use thiserror::Error;

use crate::request::{Completion, Request, RequestState};

const MAGIC: &[u8; 8] = b"LUNARRQS";
const VERSION: u16 = 1;
/// Limits of one saved request's fields (a CDB is at most 260 bytes; data at most 256 MiB).
const MAX_CDB: usize = 260;
const MAX_DATA: usize = 256 << 20;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum StateError {
    #[error("not a Lunar request stream (bad magic)")]
    BadMagic,
    #[error("unsupported version {0} (this build reads version {VERSION})")]
    Version(u16),
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("bad marker {0:#x} at byte {1}")]
    BadMarker(u8, usize),
    #[error("{field} length {len} too large at byte {at}")]
    TooLarge { field: &'static str, len: usize, at: usize },
    #[error("{0} trailing bytes after the end marker")]
    Trailing(usize),
}

/// A request as saved: enough to re-issue it in another process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedRequest {
    pub retry: bool,
    pub lun: u64,
    pub tag: u64,
    pub cdb: Vec<u8>,
    pub frontend_data: Vec<u8>,
    /// The device's data of the request: its data-out.
    pub data_out: Vec<u8>,
}

impl SavedRequest {
    /// Rebuilds the request for submission to a queue of the loading target.
    /// A request saved with its retry flag is parked and re-issued on resume.
    pub fn into_request(self, completion: Completion) -> Request {
        let mut r = Request::new(self.tag, self.lun, self.cdb, self.data_out, completion)
            .with_frontend_data(self.frontend_data);
        if self.retry {
            r.retry = true;
            r.state = RequestState::Parked;
        }
        r
    }
}

pub(crate) struct Writer {
    out: Vec<u8>,
}

impl Writer {
    pub(crate) fn new() -> Self {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&VERSION.to_be_bytes());
        Writer { out }
    }

    pub(crate) fn put(&mut self, r: &Request) {
        self.out.push(if r.retry { 1 } else { 2 });
        self.out.extend_from_slice(&r.lun.to_be_bytes());
        self.out.extend_from_slice(&r.tag.to_be_bytes());
        for field in [&r.cdb[..], &r.frontend_data[..], &r.data_out[..]] {
            self.out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            self.out.extend_from_slice(field);
        }
    }

    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.out.push(0);
        self.out
    }
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len()).ok_or(StateError::Truncated(self.at))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, StateError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, StateError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    fn bytes(&mut self, field: &'static str, max: usize) -> Result<Vec<u8>, StateError> {
        let at = self.at;
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        let len = u32::from_be_bytes(b) as usize;
        if len > max {
            return Err(StateError::TooLarge { field, len, at });
        }
        Ok(self.take(len)?.to_vec())
    }
}

/// Decodes a saved stream.
pub fn load(buf: &[u8]) -> Result<Vec<SavedRequest>, StateError> {
    let mut r = Reader { buf, at: 0 };
    if r.take(8).map_err(|_| StateError::BadMagic)? != MAGIC {
        return Err(StateError::BadMagic);
    }
    let v = r.take(2)?;
    let version = u16::from_be_bytes([v[0], v[1]]);
    if version != VERSION {
        return Err(StateError::Version(version));
    }
    let mut out = Vec::new();
    loop {
        let at = r.at;
        let retry = match r.u8()? {
            0 => break,
            1 => true,
            2 => false,
            m => return Err(StateError::BadMarker(m, at)),
        };
        let lun = r.u64()?;
        let tag = r.u64()?;
        let cdb = r.bytes("cdb", MAX_CDB)?;
        let frontend_data = r.bytes("front-end data", MAX_DATA)?;
        let data_out = r.bytes("device data", MAX_DATA)?;
        out.push(SavedRequest { retry, lun, tag, cdb, frontend_data, data_out });
    }
    if r.at != buf.len() {
        return Err(StateError::Trailing(buf.len() - r.at));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(tag: u64, retry: bool) -> Request {
        let mut r = Request::new(tag, 3, vec![0x2a, 0, 0, 0, 0, 8, 0, 0, 1, 0], vec![7; 512], Completion::new(|_| ()))
            .with_frontend_data(vec![1, 2, 3]);
        r.retry = retry;
        r
    }

    #[test]
    fn round_trip() {
        let mut w = Writer::new();
        w.put(&req(1, true));
        w.put(&req(2, false));
        let bytes = w.finish();
        let got = load(&bytes).unwrap();
        assert_eq!(got.len(), 2);
        assert!(got[0].retry && !got[1].retry);
        assert_eq!(got[1].tag, 2);
        assert_eq!(got[0].data_out, vec![7; 512]);
        assert_eq!(got[0].frontend_data, vec![1, 2, 3]);
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error() {
        let mut w = Writer::new();
        w.put(&req(1, true));
        let bytes = w.finish();
        for n in 0..bytes.len() {
            assert!(load(&bytes[..n]).is_err(), "prefix {n}");
        }
        let mut bad = bytes.clone();
        bad[10] = 9;
        assert_eq!(load(&bad), Err(StateError::BadMarker(9, 10)));
        let mut v2 = bytes.clone();
        v2[9] = 2;
        assert_eq!(load(&v2), Err(StateError::Version(2)));
        let mut trailing = bytes;
        trailing.push(0);
        assert_eq!(load(&trailing), Err(StateError::Trailing(1)));
    }
}

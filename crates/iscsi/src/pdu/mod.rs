//! iSCSI PDUs (RFC 7143 §11): typed values for every opcode, decoded from
//! and encoded to bytes.
//!
//! Reading a PDU from a stream takes two steps, so that the reader never
//! guesses a length:
//!
//! 1. read 48 bytes and call [`decode_bhs`], which gives
//!    [`Bhs::remaining_length`];
//! 2. read that many bytes, check the digests with [`crate::digest`] (or let
//!    [`decode_frame`] do all of it), and call [`Pdu::decode`].
//!
//! Decoding never panics: any byte string yields a PDU or a [`PduError`]
//! whose [`PduError::reaction`] says what RFC 7143 prescribes.

mod async_msg;
mod bhs;
mod data;
mod error;
mod header;
mod login;
mod logout;
mod nop;
mod r2t;
mod reject;
mod scsi_command;
mod scsi_response;
mod snack;
mod task_mgmt;
mod text;

use std::ops::Deref;

use bytes::Bytes;

pub use async_msg::{AsyncEvent, AsyncMessage};
pub use bhs::{decode_bhs, pad4, Bhs, Opcode, BHS_LEN, DIGEST_LEN, MAX_DATA_SEGMENT_LENGTH, RESERVED_TAG};
pub use data::{DataIn, DataOut};
pub use error::{ErrorReaction, PduError};
pub use login::{Isid, LoginRequest, LoginResponse, LoginStage};
pub use logout::{LogoutReason, LogoutRequest, LogoutResponse, LogoutResponseCode};
pub use nop::{NopIn, NopOut};
pub use r2t::R2t;
pub use reject::{Reject, RejectReason};
pub use scsi_command::{ScsiCommand, TaskAttribute, MAX_CDB_LEN};
pub use scsi_response::{ScsiResponse, ServiceResponse};
pub use snack::SnackRequest;
pub use task_mgmt::{TaskMgmtFunction, TaskMgmtRequest, TaskMgmtResponse, TmfResponseCode};
pub use text::{TextRequest, TextResponse};

use crate::digest;
use header::{byte0, Framing};

/// One PDU type's codec. `decode` receives the BHS, the AHS (already
/// checked against TotalAHSLength) and the unpadded data segment.
pub(crate) trait PduCodec: Sized {
    const OPCODE: Opcode;
    fn decode(h: &[u8; BHS_LEN], ahs: &[u8], data: &[u8]) -> Result<Self, PduError>;
    /// The BHS, through the PDU's header declaration in [`header`]; the
    /// caller computes byte 0 (opcode and I bit) and the framing lengths.
    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN];
    fn immediate(&self) -> bool {
        false
    }
    fn data_segment(&self) -> DataSegment<'_> {
        DataSegment::Borrowed(&[])
    }
    /// The AHS bytes, a multiple of 4 long.
    fn ahs(&self) -> Vec<u8> {
        Vec::new()
    }
}

/// A PDU's data segment, as its codec hands it to the encoder.
#[derive(Debug)]
pub(crate) enum DataSegment<'a> {
    /// Held by the PDU.
    Borrowed(&'a [u8]),
    /// Built for the encoding (a length prefix before sense data...).
    Owned(Vec<u8>),
    /// Shared with whoever produced it (a read's data-in, from the
    /// backend): a [`Sink`] that can keep a reference does, instead of
    /// copying the bytes.
    Shared(&'a Bytes),
}

impl Deref for DataSegment<'_> {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            DataSegment::Borrowed(b) => b,
            DataSegment::Owned(v) => v,
            DataSegment::Shared(b) => b,
        }
    }
}

/// Zeros for the padding of a data segment to 4 bytes (RFC 7143 §11.2.3).
pub(crate) static PADDING: [u8; 3] = [0; 3];

/// Where an encoded PDU goes, in wire order. The encoder hands over the
/// parts it builds (headers, digests, padding) to be copied, and a shared
/// data segment separately, so that a sink which keeps references (the
/// server's output queue) need not copy a read's data.
pub(crate) trait Sink {
    /// Makes room for `additional` more bytes, when the sink can.
    fn reserve(&mut self, _additional: usize) {}

    /// Appends bytes (copied).
    fn put(&mut self, bytes: &[u8]);

    /// Appends a shared data segment; by default a copy.
    fn put_shared(&mut self, data: &Bytes) {
        self.put(data);
    }
}

impl Sink for Vec<u8> {
    fn reserve(&mut self, additional: usize) {
        Vec::reserve(self, additional);
    }

    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// Every iSCSI PDU, both directions (RFC 7143 §11).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pdu {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

macro_rules! for_each_pdu {
    ($self:expr, $p:ident => $e:expr) => {
        match $self {
            Pdu::NopOut($p) => $e,
            Pdu::ScsiCommand($p) => $e,
            Pdu::TaskMgmtRequest($p) => $e,
            Pdu::LoginRequest($p) => $e,
            Pdu::TextRequest($p) => $e,
            Pdu::DataOut($p) => $e,
            Pdu::LogoutRequest($p) => $e,
            Pdu::SnackRequest($p) => $e,
            Pdu::NopIn($p) => $e,
            Pdu::ScsiResponse($p) => $e,
            Pdu::TaskMgmtResponse($p) => $e,
            Pdu::LoginResponse($p) => $e,
            Pdu::TextResponse($p) => $e,
            Pdu::DataIn($p) => $e,
            Pdu::LogoutResponse($p) => $e,
            Pdu::R2t($p) => $e,
            Pdu::AsyncMessage($p) => $e,
            Pdu::Reject($p) => $e,
        }
    };
}

fn opcode_of<T: PduCodec>(_: &T) -> Opcode {
    T::OPCODE
}

impl Pdu {
    /// The PDU's opcode.
    pub fn opcode(&self) -> Opcode {
        for_each_pdu!(self, p => opcode_of(p))
    }

    /// Decodes a PDU from its BHS, its AHS (exactly TotalAHSLength bytes)
    /// and its data segment (DataSegmentLength bytes, with or without the
    /// padding). Digests must already be stripped and checked.
    pub fn decode(bhs: &Bhs, ahs: &[u8], data: &[u8]) -> Result<Pdu, PduError> {
        if ahs.len() != bhs.total_ahs_length() {
            return Err(PduError::AhsLength { expected: bhs.total_ahs_length(), actual: ahs.len() });
        }
        let dsl = bhs.data_segment_length();
        if data.len() != dsl && data.len() != pad4(dsl) {
            return Err(PduError::DataLength { expected: dsl, actual: data.len() });
        }
        let data = data.get(..dsl).unwrap_or(data);
        let h = bhs.raw();
        let op = bhs.opcode().ok_or(PduError::UnsupportedOpcode(bhs.opcode_raw()))?;
        Ok(match op {
            Opcode::NopOut => Pdu::NopOut(NopOut::decode(h, ahs, data)?),
            Opcode::ScsiCommand => Pdu::ScsiCommand(ScsiCommand::decode(h, ahs, data)?),
            Opcode::TaskMgmtRequest => Pdu::TaskMgmtRequest(TaskMgmtRequest::decode(h, ahs, data)?),
            Opcode::LoginRequest => Pdu::LoginRequest(LoginRequest::decode(h, ahs, data)?),
            Opcode::TextRequest => Pdu::TextRequest(TextRequest::decode(h, ahs, data)?),
            Opcode::DataOut => Pdu::DataOut(DataOut::decode(h, ahs, data)?),
            Opcode::LogoutRequest => Pdu::LogoutRequest(LogoutRequest::decode(h, ahs, data)?),
            Opcode::SnackRequest => Pdu::SnackRequest(SnackRequest::decode(h, ahs, data)?),
            Opcode::NopIn => Pdu::NopIn(NopIn::decode(h, ahs, data)?),
            Opcode::ScsiResponse => Pdu::ScsiResponse(ScsiResponse::decode(h, ahs, data)?),
            Opcode::TaskMgmtResponse => Pdu::TaskMgmtResponse(TaskMgmtResponse::decode(h, ahs, data)?),
            Opcode::LoginResponse => Pdu::LoginResponse(LoginResponse::decode(h, ahs, data)?),
            Opcode::TextResponse => Pdu::TextResponse(TextResponse::decode(h, ahs, data)?),
            Opcode::DataIn => Pdu::DataIn(DataIn::decode(h, ahs, data)?),
            Opcode::LogoutResponse => Pdu::LogoutResponse(LogoutResponse::decode(h, ahs, data)?),
            Opcode::R2t => Pdu::R2t(R2t::decode(h, ahs, data)?),
            Opcode::AsyncMessage => Pdu::AsyncMessage(AsyncMessage::decode(h, ahs, data)?),
            Opcode::Reject => Pdu::Reject(Reject::decode(h, ahs, data)?),
        })
    }

    /// Encodes the PDU for the wire: BHS, AHS, header digest, data segment
    /// padded with zeros to 4 bytes, data digest (RFC 7143 §11.2). The data
    /// digest covers the padding and is omitted for an empty data segment.
    ///
    /// # Panics
    ///
    /// If the data segment is longer than 2^24 - 1 bytes or the AHS longer
    /// than 1020 bytes: the caller must split data by the negotiated
    /// MaxRecvDataSegmentLength first. Untrusted input never reaches this.
    pub fn encode(&self, header_digest: bool, data_digest: bool) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out, header_digest, data_digest);
        out
    }

    /// Like [`Pdu::encode`], appending to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>, header_digest: bool, data_digest: bool) {
        self.encode_to(out, header_digest, data_digest);
    }

    /// Like [`Pdu::encode`], into any [`Sink`].
    pub(crate) fn encode_to(&self, out: &mut impl Sink, header_digest: bool, data_digest: bool) {
        for_each_pdu!(self, p => encode_pdu(p, out, header_digest, data_digest))
    }

    /// The reject reason for a PDU that is well formed but that a target at
    /// ErrorRecoveryLevel 0 does not accept: a SNACK needs ERL ≥ 1
    /// (RFC 7143 §11.16, §13.20), and target→initiator opcodes are never
    /// valid from an initiator (§11.2.1.2).
    pub fn reject_at_target_erl0(&self) -> Option<RejectReason> {
        match self {
            Pdu::SnackRequest(_) => Some(RejectReason::ProtocolError),
            p if !p.opcode().is_initiator_opcode() => Some(RejectReason::ProtocolError),
            _ => None,
        }
    }
}

fn encode_pdu<T: PduCodec>(p: &T, out: &mut impl Sink, header_digest: bool, data_digest: bool) {
    let ahs = p.ahs();
    let data = p.data_segment();
    assert!(
        data.len() <= MAX_DATA_SEGMENT_LENGTH,
        "data segment of {} bytes does not fit DataSegmentLength",
        data.len()
    );
    assert!(ahs.len().is_multiple_of(4), "AHS of {} bytes", ahs.len());
    let Some(framing) = Framing::new(ahs.len() / 4, data.len()) else {
        panic!("AHS of {} bytes does not fit TotalAHSLength", ahs.len());
    };
    let h = p.encode_header(byte0::new(T::OPCODE as u8, p.immediate()), framing);

    out.reserve(BHS_LEN + ahs.len() + 2 * DIGEST_LEN + pad4(data.len()));
    out.put(&h);
    out.put(&ahs);
    if header_digest {
        out.put(&digest::to_wire(digest::crc32c_parts(&[&h, &ahs])));
    }
    if !data.is_empty() {
        let padding = &PADDING[..pad4(data.len()) - data.len()];
        match &data {
            DataSegment::Shared(shared) => out.put_shared(shared),
            other => out.put(other),
        }
        out.put(padding);
        if data_digest {
            // Over the data where it is, then the padding: no copy.
            out.put(&digest::to_wire(digest::crc32c_parts(&[&data, padding])));
        }
    }
}

/// Decodes one whole PDU from the front of `buf` (BHS, AHS, digests, data),
/// checking digests when they are negotiated.
///
/// Returns `Ok(None)` when `buf` does not yet hold the whole PDU, otherwise
/// the PDU and the number of bytes it took. On a data digest error the
/// length is still known: the caller may skip the PDU and send the Reject
/// that [`PduError::reaction`] names (RFC 7143 §7.8.1); see
/// [`frame_length`].
pub fn decode_frame(buf: &[u8], header_digest: bool, data_digest: bool) -> Result<Option<(Pdu, usize)>, PduError> {
    let Some(total) = frame_length(buf, header_digest, data_digest)? else {
        return Ok(None);
    };
    let Some(frame) = buf.get(..total) else {
        return Ok(None);
    };
    let Some((head, rest)) = frame.split_first_chunk::<BHS_LEN>() else {
        return Ok(None);
    };
    let bhs = decode_bhs(head)?;
    let ahs_len = bhs.total_ahs_length();
    let (ahs, rest) =
        rest.split_at_checked(ahs_len).ok_or(PduError::Truncated { needed: total, available: buf.len() })?;
    let rest = if header_digest {
        let (hd, rest) =
            rest.split_at_checked(DIGEST_LEN).ok_or(PduError::Truncated { needed: total, available: buf.len() })?;
        let covered = frame.get(..BHS_LEN + ahs_len).unwrap_or_default();
        digest::verify(covered, hd, true)?;
        rest
    } else {
        rest
    };
    let padded = bhs.padded_data_length();
    let (data, rest) =
        rest.split_at_checked(padded).ok_or(PduError::Truncated { needed: total, available: buf.len() })?;
    if data_digest && padded > 0 {
        digest::verify(data, rest, false)?;
    }
    let pdu = Pdu::decode(&bhs, ahs, data)?;
    Ok(Some((pdu, total)))
}

/// The total length on the wire of the PDU at the front of `buf` (which may
/// hold only part of it), or `None` when fewer than 48 bytes are available.
pub fn frame_length(buf: &[u8], header_digest: bool, data_digest: bool) -> Result<Option<usize>, PduError> {
    let Some(head) = buf.first_chunk::<BHS_LEN>() else {
        return Ok(None);
    };
    let bhs = decode_bhs(head)?;
    Ok(Some(BHS_LEN + bhs.remaining_length(header_digest, data_digest)))
}

pub(crate) fn invalid(opcode: Opcode, field: &'static str, value: impl Into<u32>) -> PduError {
    PduError::InvalidField { opcode, field, value: value.into() }
}

/// Fails unless the data segment is empty, for PDUs whose
/// DataSegmentLength RFC 7143 fixes at 0.
pub(crate) fn expect_no_data(opcode: Opcode, data: &[u8]) -> Result<(), PduError> {
    if data.is_empty() {
        Ok(())
    } else {
        Err(invalid(opcode, "DataSegmentLength", u32::try_from(data.len()).unwrap_or(u32::MAX)))
    }
}

#[cfg(test)]
mod rfc_layout_tests;
#[cfg(test)]
mod tests;

//! The initiator's errors.

use std::sync::Arc;
use std::time::Duration;

use lunar_iscsi::keys::KeyError;
use lunar_iscsi::pdu::{PduError, RejectReason};

use crate::scsi::Tag;

/// Everything that can go wrong between the initiator and a target.
///
/// SCSI-level failures (CHECK CONDITION, BUSY...) are not errors: they come
/// back as a [`crate::Response`] for the caller to judge.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The socket failed (connect, read or write).
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The target sent bytes that do not decode as a PDU.
    #[error("bad PDU from the target: {0}")]
    Pdu(#[from] PduError),
    /// The target sent a text segment that is not a key list.
    #[error("bad login text from the target: {0}")]
    Keys(#[from] KeyError),
    /// The target refused the login (RFC 7143 §11.13.5).
    #[error("login refused: status class {class:#04x} detail {detail:#04x}")]
    LoginRefused { class: u8, detail: u8 },
    /// The login negotiation did not reach an agreement we can use.
    #[error("login negotiation: {0}")]
    Negotiation(String),
    /// The target broke a rule of RFC 7143; the session is closed.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// A bounded wait ran out.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout { what: &'static str, after: Duration },
    /// The connection is gone; outstanding commands will never complete.
    #[error("connection closed: {0}")]
    Closed(String),
    /// The target rejected the command's PDU (RFC 7143 §11.17).
    #[error("the target rejected task {tag:?}: {reason:?}")]
    Rejected { tag: Tag, reason: RejectReason },
    /// The target answered with iSCSI response "target failure" or another
    /// non-completion service response (RFC 7143 §11.4.3).
    #[error("service response {0:#04x} (not \"command completed\")")]
    ServiceResponse(u8),
    /// The tag is not an outstanding command of this session (already
    /// waited for, or never submitted).
    #[error("no outstanding command with tag {0:?}")]
    UnknownTag(Tag),
    /// The caller asked for something this initiator cannot send.
    #[error("invalid request: {0}")]
    Invalid(String),
}

impl Error {
    pub(crate) fn io(context: &'static str, source: std::io::Error) -> Error {
        Error::Io { context, source: Arc::new(source) }
    }

    /// True for [`Error::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout { .. })
    }
}

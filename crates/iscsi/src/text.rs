//! Full-feature Text Request exchanges (RFC 7143 §11.10, §11.11) and the
//! SendTargets answer (§13.3, Appendix C).
//!
//! A request may span several PDUs (C bit); the target answers each
//! non-final piece with an empty response carrying a Target Transfer Tag.
//! A response longer than the initiator's MaxRecvDataSegmentLength is sent
//! in pieces: C=1 and a TTT, and the initiator fetches the next piece with
//! an empty Text Request echoing the TTT.

use std::collections::VecDeque;
use std::net::SocketAddr;

use crate::keys::{self, KeyError, KeyValue, NOT_UNDERSTOOD, REJECT};
use crate::params::SessionType;
use crate::pdu::{RejectReason, TextRequest, TextResponse, RESERVED_TAG};

/// A target as SendTargets reports it: its name and the portals it is
/// reachable through, each with its portal group tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendTargetsEntry {
    pub name: String,
    pub portals: Vec<(SocketAddr, u16)>,
}

/// Answers `SendTargets=<value>` (RFC 7143 Appendix C): `TargetName=` for
/// each matching target, each followed by its `TargetAddress=ip:port,tpgt`
/// entries (IPv6 in brackets).
///
/// - `All`: every entry, only in discovery sessions (§13.3);
/// - a target name: that target, if listed;
/// - empty: the session's own target, only in normal sessions.
///
/// `visible` holds only the targets this initiator may see.
pub fn send_targets(
    value: &str,
    session_type: SessionType,
    session_target: Option<&str>,
    visible: &[SendTargetsEntry],
) -> Vec<KeyValue> {
    let wanted: Vec<&SendTargetsEntry> = match (value, session_type) {
        ("All", SessionType::Discovery) => visible.iter().collect(),
        ("All", SessionType::Normal) => return vec![KeyValue::new("SendTargets", REJECT)],
        ("", SessionType::Normal) => match session_target {
            Some(t) => visible.iter().filter(|e| e.name == t).collect(),
            None => Vec::new(),
        },
        ("", SessionType::Discovery) => return vec![KeyValue::new("SendTargets", REJECT)],
        (name, _) => visible.iter().filter(|e| e.name == name).collect(),
    };
    let mut out = Vec::new();
    for e in wanted {
        out.push(KeyValue::new("TargetName", e.name.clone()));
        for (addr, tpgt) in &e.portals {
            out.push(KeyValue::new("TargetAddress", format!("{addr},{tpgt}")));
        }
    }
    out
}

/// Keys defined by RFC 7143 that Lunar does not renegotiate in the full
/// feature phase; they are answered `Reject`, unknown keys
/// `NotUnderstood` (§6.2).
const KNOWN_KEYS: &[&str] = &[
    "HeaderDigest",
    "DataDigest",
    "MaxConnections",
    "TargetName",
    "InitiatorName",
    "TargetAlias",
    "InitiatorAlias",
    "TargetAddress",
    "TargetPortalGroupTag",
    "InitialR2T",
    "ImmediateData",
    "MaxRecvDataSegmentLength",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "SessionType",
    "AuthMethod",
    "TaskReporting",
    "iSCSIProtocolLevel",
];

/// The full-feature answer to a Text Request's keys: SendTargets is
/// answered, everything else refused.
pub fn full_feature_answers(
    pairs: &[KeyValue],
    session_type: SessionType,
    session_target: Option<&str>,
    visible: &[SendTargetsEntry],
) -> Vec<KeyValue> {
    let mut out = Vec::new();
    for kv in pairs {
        if kv.key == "SendTargets" {
            out.extend(send_targets(&kv.value, session_type, session_target, visible));
        } else if KNOWN_KEYS.contains(&kv.key.as_str()) {
            out.push(KeyValue::new(kv.key.clone(), REJECT));
        } else {
            out.push(KeyValue::new(kv.key.clone(), NOT_UNDERSTOOD));
        }
    }
    out
}

/// A Text Request the target cannot process.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("text protocol error: {0}")]
    Protocol(&'static str),
}

impl TextError {
    /// RFC 7143 §11.17.1: the request is rejected with a protocol error.
    pub fn reject_reason(&self) -> RejectReason {
        RejectReason::ProtocolError
    }
}

/// The text part of a Text Response; the connection adds the sequence
/// numbers with [`TextReply::into_response`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextReply {
    pub final_bit: bool,
    pub continue_bit: bool,
    pub ttt: u32,
    pub data: Vec<u8>,
}

impl TextReply {
    pub fn into_response(self, req: &TextRequest, stat_sn: u32, exp_cmd_sn: u32, max_cmd_sn: u32) -> TextResponse {
        TextResponse {
            final_bit: self.final_bit,
            continue_bit: self.continue_bit,
            lun: req.lun,
            itt: req.itt,
            ttt: self.ttt,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn,
            data: self.data,
        }
    }
}

/// The state of Text Request exchanges on one connection.
#[derive(Debug, Default)]
pub struct TextExchange {
    itt: Option<u32>,
    inbound: Vec<u8>,
    outbound: VecDeque<Vec<u8>>,
    ttt: u32,
    next_ttt: u32,
}

impl TextExchange {
    pub fn new() -> TextExchange {
        TextExchange::default()
    }

    fn fresh_ttt(&mut self) -> u32 {
        self.next_ttt = self.next_ttt.wrapping_add(1);
        if self.next_ttt == RESERVED_TAG {
            self.next_ttt = 1;
        }
        self.ttt = self.next_ttt;
        self.ttt
    }

    /// Whether an exchange is under way: a request or a response spans
    /// several PDUs and not all have gone by.
    pub fn in_progress(&self) -> bool {
        self.itt.is_some()
    }

    /// Drops an unfinished exchange (after a Reject ended it).
    pub fn reset(&mut self) {
        self.itt = None;
        self.inbound.clear();
        self.outbound.clear();
    }

    /// Handles one Text Request. `max_data` is the initiator's
    /// MaxRecvDataSegmentLength; `answer` computes the response keys of a
    /// complete request (e.g. with [`full_feature_answers`]).
    pub fn handle(
        &mut self,
        req: &TextRequest,
        max_data: u32,
        answer: impl FnOnce(&[KeyValue]) -> Vec<KeyValue>,
    ) -> Result<TextReply, TextError> {
        let continuing = self.itt == Some(req.itt) && req.ttt != RESERVED_TAG;
        if continuing && req.ttt != self.ttt {
            return Err(TextError::Protocol("Text Request with a stale TTT"));
        }
        if !continuing {
            // §11.10.4: TTT 0xffffffff starts a new exchange and drops
            // any unfinished one.
            self.itt = Some(req.itt);
            self.inbound.clear();
            self.outbound.clear();
        }
        if !self.outbound.is_empty() {
            if !req.data.is_empty() {
                return Err(TextError::Protocol("text sent while a response continues"));
            }
            return Ok(self.next_piece());
        }
        if self.inbound.len() + req.data.len() > keys::MAX_TEXT_LEN {
            return Err(KeyError::TextTooLong(self.inbound.len() + req.data.len()).into());
        }
        self.inbound.extend_from_slice(&req.data);
        if req.continue_bit {
            let ttt = self.fresh_ttt();
            return Ok(TextReply { final_bit: false, continue_bit: false, ttt, data: Vec::new() });
        }
        let text = std::mem::take(&mut self.inbound);
        let pairs = keys::parse(&text)?;
        let data = keys::encode(&answer(&pairs));
        let max = (max_data as usize).max(512);
        self.outbound = data.chunks(max).map(<[u8]>::to_vec).collect();
        Ok(self.next_piece())
    }

    fn next_piece(&mut self) -> TextReply {
        let data = self.outbound.pop_front().unwrap_or_default();
        if self.outbound.is_empty() {
            self.itt = None;
            TextReply { final_bit: true, continue_bit: false, ttt: RESERVED_TAG, data }
        } else {
            let ttt = self.fresh_ttt();
            TextReply { final_bit: false, continue_bit: true, ttt, data }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries() -> Vec<SendTargetsEntry> {
        vec![
            SendTargetsEntry {
                name: "iqn.2024-01.org.lunar:a".into(),
                portals: vec![("10.0.0.1:3260".parse().unwrap(), 1), ("[fe80::1]:3260".parse().unwrap(), 2)],
            },
            SendTargetsEntry {
                name: "iqn.2024-01.org.lunar:b".into(),
                portals: vec![("10.0.0.2:3261".parse().unwrap(), 1)],
            },
        ]
    }

    fn text(kvs: &[KeyValue]) -> String {
        String::from_utf8(keys::encode(kvs)).unwrap().replace('\0', ";")
    }

    #[test]
    fn send_targets_all_in_discovery() {
        let out = send_targets("All", SessionType::Discovery, None, &entries());
        assert_eq!(
            text(&out),
            "TargetName=iqn.2024-01.org.lunar:a;TargetAddress=10.0.0.1:3260,1;\
             TargetAddress=[fe80::1]:3260,2;TargetName=iqn.2024-01.org.lunar:b;\
             TargetAddress=10.0.0.2:3261,1;"
        );
    }

    #[test]
    fn send_targets_variants() {
        let e = entries();
        let one = send_targets("iqn.2024-01.org.lunar:b", SessionType::Discovery, None, &e);
        assert_eq!(one.len(), 2);
        assert!(send_targets("iqn.x:none", SessionType::Discovery, None, &e).is_empty());
        let own = send_targets("", SessionType::Normal, Some("iqn.2024-01.org.lunar:a"), &e);
        assert_eq!(own.len(), 3);
        assert_eq!(
            send_targets("All", SessionType::Normal, Some("iqn.2024-01.org.lunar:a"), &e),
            vec![KeyValue::new("SendTargets", "Reject")]
        );
        assert_eq!(send_targets("", SessionType::Discovery, None, &e), vec![KeyValue::new("SendTargets", "Reject")]);
    }

    fn request(itt: u32, ttt: u32, cont: bool, data: &[u8]) -> TextRequest {
        TextRequest {
            immediate: false,
            final_bit: !cont,
            continue_bit: cont,
            lun: 0,
            itt,
            ttt,
            cmd_sn: 1,
            exp_stat_sn: 1,
            data: data.to_vec(),
        }
    }

    fn answer(pairs: &[KeyValue]) -> Vec<KeyValue> {
        full_feature_answers(pairs, SessionType::Discovery, None, &entries())
    }

    #[test]
    fn single_pdu_exchange() {
        let mut x = TextExchange::new();
        let r = x
            .handle(&request(5, RESERVED_TAG, false, b"SendTargets=All\0X-Foo=1\0MaxBurstLength=512\0"), 8192, answer)
            .unwrap();
        assert!(r.final_bit && !r.continue_bit);
        assert_eq!(r.ttt, RESERVED_TAG);
        let pairs = keys::parse_allowing_duplicates(&r.data).unwrap();
        assert_eq!(pairs.iter().filter(|kv| kv.key == "TargetName").count(), 2);
        assert!(pairs.contains(&KeyValue::new("X-Foo", "NotUnderstood")));
        assert!(pairs.contains(&KeyValue::new("MaxBurstLength", "Reject")));
        let resp = r.into_response(&request(5, RESERVED_TAG, false, b""), 9, 2, 10);
        assert_eq!((resp.itt, resp.stat_sn, resp.max_cmd_sn), (5, 9, 10));
    }

    #[test]
    fn multi_pdu_request_and_response() {
        let mut x = TextExchange::new();
        // The request arrives in two pieces.
        let r = x.handle(&request(5, RESERVED_TAG, true, b"SendTar"), 512, answer).unwrap();
        assert!(!r.final_bit && !r.continue_bit && r.data.is_empty());
        assert_ne!(r.ttt, RESERVED_TAG);
        let r = x.handle(&request(5, r.ttt, false, b"gets=All\0"), 512, |p| {
            // A long answer: many targets.
            let many: Vec<SendTargetsEntry> = (0..40)
                .map(|i| SendTargetsEntry {
                    name: format!("iqn.2024-01.org.lunar:disk{i}"),
                    portals: vec![("192.168.100.200:3260".parse().unwrap(), 1)],
                })
                .collect();
            full_feature_answers(p, SessionType::Discovery, None, &many)
        });
        let mut r = r.unwrap();
        let mut all = Vec::new();
        let mut pieces = 1;
        while r.continue_bit {
            assert!(!r.final_bit);
            assert!(r.data.len() <= 512);
            all.extend_from_slice(&r.data);
            r = x.handle(&request(5, r.ttt, false, b""), 512, |_| unreachable!()).unwrap();
            pieces += 1;
        }
        assert!(r.final_bit);
        all.extend_from_slice(&r.data);
        assert!(pieces > 2);
        let pairs = keys::parse_allowing_duplicates(&all).unwrap();
        assert_eq!(pairs.iter().filter(|kv| kv.key == "TargetName").count(), 40);
    }

    #[test]
    fn errors() {
        let mut x = TextExchange::new();
        let r = x.handle(&request(5, RESERVED_TAG, true, b"A=1\0"), 8192, answer).unwrap();
        let err = x.handle(&request(5, r.ttt.wrapping_add(1), false, b""), 8192, answer);
        assert_eq!(err, Err(TextError::Protocol("Text Request with a stale TTT")));
        let mut x = TextExchange::new();
        let err = x.handle(&request(6, RESERVED_TAG, false, b"A=1\0A=2\0"), 8192, answer);
        assert!(matches!(err, Err(TextError::Keys(KeyError::Duplicate(_)))));
        assert_eq!(err.unwrap_err().reject_reason(), RejectReason::ProtocolError);
        // A new request (TTT 0xffffffff) abandons the old one.
        let mut x = TextExchange::new();
        x.handle(&request(5, RESERVED_TAG, true, b"Send"), 8192, answer).unwrap();
        let r = x.handle(&request(7, RESERVED_TAG, false, b"SendTargets=All\0"), 8192, answer).unwrap();
        assert!(r.final_bit);
    }
}

//! Operational parameter negotiation (RFC 7143 §6.2, §13).
//!
//! The target is the responder for almost every key: the initiator offers,
//! the [`Negotiator`] answers with the result of the key's rule (minimum,
//! maximum, Boolean AND/OR, first acceptable list value) against the
//! target's configured [`TargetLimits`]. Where the target cannot live with
//! a default the initiator did not negotiate (say, a MaxBurstLength below
//! 262144), the target makes its own offer before leaving the operational
//! stage ([`Negotiator::target_offers`]).

use std::collections::{HashMap, HashSet};

use crate::keys::{self, KeyValue, IRRELEVANT, NOT_UNDERSTOOD, REJECT};
use crate::params::{
    Digest, NegotiatedParams, SessionType, DEFAULT_FIRST_BURST_LENGTH, DEFAULT_MAX_BURST_LENGTH, MAX_LENGTH, MIN_LENGTH,
};

/// Which digests the target accepts (RFC 7143 §13.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DigestPolicy {
    /// Only `None`.
    Off,
    /// `None` or `CRC32C`, as the initiator prefers.
    #[default]
    Optional,
    /// Only `CRC32C`; the target offers it if the initiator does not.
    Required,
}

impl DigestPolicy {
    fn accepts(self, d: Digest) -> bool {
        match self {
            DigestPolicy::Off => d == Digest::None,
            DigestPolicy::Optional => true,
            DigestPolicy::Required => d == Digest::Crc32c,
        }
    }
}

/// The target's side of every negotiable key: what it supports and
/// prefers. The defaults suit Lunar's connection code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetLimits {
    /// Our MaxRecvDataSegmentLength, declared to the initiator (§13.12).
    pub max_recv_data_segment_length: u32,
    /// Upper bound of MaxBurstLength (§13.13).
    pub max_burst_length: u32,
    /// Upper bound of FirstBurstLength (§13.14).
    pub first_burst_length: u32,
    /// Upper bound of MaxOutstandingR2T (§13.17).
    pub max_outstanding_r2t: u16,
    /// Upper bound of MaxConnections (§13.2).
    pub max_connections: u16,
    /// Our InitialR2T value; `false` accepts unsolicited data (§13.10).
    pub initial_r2t: bool,
    /// Our ImmediateData value (§13.11).
    pub immediate_data: bool,
    pub header_digest: DigestPolicy,
    pub data_digest: DigestPolicy,
    /// Our DefaultTime2Wait (maximum rule, §13.15).
    pub default_time2wait: u16,
    /// Our DefaultTime2Retain (minimum rule, §13.16).
    pub default_time2retain: u16,
    /// Highest ErrorRecoveryLevel supported (§13.20); Lunar supports 0.
    pub max_error_recovery_level: u8,
}

impl Default for TargetLimits {
    fn default() -> Self {
        TargetLimits {
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 256 << 10,
            max_outstanding_r2t: 1,
            max_connections: 1,
            initial_r2t: false,
            immediate_data: true,
            header_digest: DigestPolicy::Optional,
            data_digest: DigestPolicy::Optional,
            default_time2wait: 2,
            default_time2retain: 20,
            max_error_recovery_level: 0,
        }
    }
}

impl TargetLimits {
    /// The limits brought into the ranges RFC 7143 §13 allows.
    pub fn clamped(&self) -> TargetLimits {
        let len = |v: u32| v.clamp(MIN_LENGTH, MAX_LENGTH);
        TargetLimits {
            max_recv_data_segment_length: len(self.max_recv_data_segment_length),
            max_burst_length: len(self.max_burst_length),
            first_burst_length: len(self.first_burst_length),
            max_outstanding_r2t: self.max_outstanding_r2t.max(1),
            max_connections: self.max_connections.max(1),
            default_time2wait: self.default_time2wait.min(3600),
            default_time2retain: self.default_time2retain.min(3600),
            max_error_recovery_level: self.max_error_recovery_level.min(2),
            ..self.clone()
        }
    }
}

/// A negotiation the login cannot survive; the target answers with a
/// Login Response of status "initiator error" (0x0200, RFC 7143 §6.2,
/// §11.13.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// §6.2: a key may not be redeclared or renegotiated during login.
    #[error("key {0} was already negotiated")]
    Redeclared(String),
    /// The initiator's answer to a target offer breaks the key's rule.
    #[error("invalid answer {value:?} to the target's offer of {key}")]
    BadAnswer { key: String, value: String },
}

/// Keys scoped to the session that only the leading connection may
/// negotiate (LO, RFC 7143 §13).
const LEADING_ONLY: &[&str] = &[
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "DefaultTime2Wait",
    "DefaultTime2Retain",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
    "ErrorRecoveryLevel",
    "iSCSIProtocolLevel",
    "TaskReporting",
];

/// Keys irrelevant to discovery sessions (RFC 7143 §13: "Irrelevant when:
/// SessionType=Discovery").
const DISCOVERY_IRRELEVANT: &[&str] = &[
    "MaxConnections",
    "InitialR2T",
    "ImmediateData",
    "MaxBurstLength",
    "FirstBurstLength",
    "MaxOutstandingR2T",
    "DataPDUInOrder",
    "DataSequenceInOrder",
];

/// Negotiates the operational keys of one login (RFC 7143 §6.2, §13).
#[derive(Debug, Clone)]
pub struct Negotiator {
    limits: TargetLimits,
    session_type: SessionType,
    leading: bool,
    params: NegotiatedParams,
    negotiated: HashSet<String>,
    /// Target offers awaiting the initiator's answer.
    offered: HashMap<String, String>,
    declared: bool,
}

impl Negotiator {
    /// A negotiator for a session of `session_type`; `leading` is false
    /// when the connection joins an existing session (TSIH ≠ 0).
    pub fn new(limits: &TargetLimits, session_type: SessionType, leading: bool) -> Negotiator {
        let limits = limits.clamped();
        let params = NegotiatedParams {
            target_max_recv_data_segment_length: limits.max_recv_data_segment_length,
            ..NegotiatedParams::default()
        };
        Negotiator {
            limits,
            session_type,
            leading,
            params,
            negotiated: HashSet::new(),
            offered: HashMap::new(),
            declared: false,
        }
    }

    /// Changes the session type once the login learns it (first PDU).
    pub fn set_session_type(&mut self, session_type: SessionType, leading: bool) {
        self.session_type = session_type;
        self.leading = leading;
    }

    /// Answers one key the initiator sent. `Ok(None)` means no answer is
    /// due (a declaration we accept, or an answer to our own offer).
    pub fn negotiate(&mut self, kv: &KeyValue) -> Result<Option<KeyValue>, NegotiationError> {
        let key = kv.key.as_str();
        if let Some(offer) = self.offered.remove(key) {
            self.take_answer(key, &offer, &kv.value)?;
            self.negotiated.insert(key.to_owned());
            return Ok(None);
        }
        if !self.negotiated.insert(key.to_owned()) {
            return Err(NegotiationError::Redeclared(key.to_owned()));
        }
        let answer = |v: &str| Ok(Some(KeyValue::new(key, v)));
        if (!self.leading && LEADING_ONLY.contains(&key))
            || (self.session_type == SessionType::Discovery && DISCOVERY_IRRELEVANT.contains(&key))
        {
            return answer(IRRELEVANT);
        }
        let v = kv.value.as_str();
        let l = &self.limits;
        let p = &mut self.params;
        match key {
            "HeaderDigest" => answer(&pick_digest(v, l.header_digest, &mut p.header_digest)),
            "DataDigest" => answer(&pick_digest(v, l.data_digest, &mut p.data_digest)),
            "MaxConnections" => {
                answer(&min_rule(v, 1, 65535, l.max_connections.into(), |r| p.max_connections = r as u16))
            }
            "InitialR2T" => answer(&bool_rule(v, l.initial_r2t, true, |r| p.initial_r2t = r)),
            "ImmediateData" => answer(&bool_rule(v, l.immediate_data, false, |r| p.immediate_data = r)),
            "MaxRecvDataSegmentLength" => {
                // Declarative (§13.12): the initiator's receive limit.
                match keys::parse_number(v) {
                    Some(n) if (u64::from(MIN_LENGTH)..=u64::from(MAX_LENGTH)).contains(&n) => {
                        p.initiator_max_recv_data_segment_length = n as u32;
                        Ok(None)
                    }
                    _ => answer(REJECT),
                }
            }
            "MaxBurstLength" => {
                answer(&min_rule(v, MIN_LENGTH.into(), MAX_LENGTH.into(), l.max_burst_length.into(), |r| {
                    p.max_burst_length = r as u32
                }))
            }
            "FirstBurstLength" => {
                answer(&min_rule(v, MIN_LENGTH.into(), MAX_LENGTH.into(), l.first_burst_length.into(), |r| {
                    p.first_burst_length = r as u32
                }))
            }
            "DefaultTime2Wait" => {
                answer(&max_rule(v, 0, 3600, l.default_time2wait.into(), |r| p.default_time2wait = r as u16))
            }
            "DefaultTime2Retain" => {
                answer(&min_rule(v, 0, 3600, l.default_time2retain.into(), |r| p.default_time2retain = r as u16))
            }
            "MaxOutstandingR2T" => {
                answer(&min_rule(v, 1, 65535, l.max_outstanding_r2t.into(), |r| p.max_outstanding_r2t = r as u16))
            }
            "DataPDUInOrder" => answer(&bool_rule(v, true, true, |r| p.data_pdu_in_order = r)),
            "DataSequenceInOrder" => answer(&bool_rule(v, true, true, |r| p.data_sequence_in_order = r)),
            "ErrorRecoveryLevel" => {
                answer(&min_rule(v, 0, 2, l.max_error_recovery_level.into(), |r| p.error_recovery_level = r as u8))
            }
            "iSCSIProtocolLevel" => answer(&min_rule(v, 0, 31, 1, |r| p.protocol_level = r as u8)),
            // §13.23: we implement the RFC 3720 task reporting semantics.
            "TaskReporting" => answer(if keys::parse_list(v).any(|x| x == "RFC3720") { "RFC3720" } else { REJECT }),
            // Markers were removed by RFC 7143 (§13.25 lists them as
            // obsolete); initiators still offer them off.
            "OFMarker" | "IFMarker" => answer(&bool_rule(v, false, false, |_| {})),
            "OFMarkInt" | "IFMarkInt" => answer(IRRELEVANT),
            // Sent only by targets (§13.7, §13.8, §13.9); SendTargets only in
            // the full feature phase (§13.3).
            "TargetAlias" | "TargetAddress" | "TargetPortalGroupTag" | "SendTargets" => answer(REJECT),
            _ => answer(NOT_UNDERSTOOD),
        }
    }

    /// Our MaxRecvDataSegmentLength declaration, returned once (§13.12:
    /// each side declares its own).
    pub fn declarations(&mut self) -> Vec<KeyValue> {
        if self.declared {
            return Vec::new();
        }
        self.declared = true;
        vec![KeyValue::new("MaxRecvDataSegmentLength", self.limits.max_recv_data_segment_length.to_string())]
    }

    /// Offers for keys the initiator left at defaults the target cannot
    /// accept. The login must wait for the answers (T=0) when this is not
    /// empty (RFC 7143 §6.2: the target may originate a negotiation).
    pub fn target_offers(&mut self) -> Vec<KeyValue> {
        let mut out = Vec::new();
        let l = self.limits.clone();
        let normal = self.session_type == SessionType::Normal && self.leading;
        let mut offer = |key: &str, value: String, out: &mut Vec<KeyValue>| {
            if !self.negotiated.contains(key) && !self.offered.contains_key(key) {
                self.offered.insert(key.to_owned(), value.clone());
                out.push(KeyValue::new(key, value));
            }
        };
        if l.header_digest == DigestPolicy::Required {
            offer("HeaderDigest", "CRC32C".into(), &mut out);
        }
        if l.data_digest == DigestPolicy::Required {
            offer("DataDigest", "CRC32C".into(), &mut out);
        }
        if normal && l.max_burst_length < DEFAULT_MAX_BURST_LENGTH {
            offer("MaxBurstLength", l.max_burst_length.to_string(), &mut out);
        }
        if normal && l.first_burst_length < DEFAULT_FIRST_BURST_LENGTH {
            offer("FirstBurstLength", l.first_burst_length.to_string(), &mut out);
        }
        if normal && !l.immediate_data {
            offer("ImmediateData", "No".into(), &mut out);
        }
        out
    }

    /// True while target offers await answers.
    pub fn awaiting_answers(&self) -> bool {
        !self.offered.is_empty()
    }

    /// The negotiated parameters; FirstBurstLength is capped by
    /// MaxBurstLength (§13.14).
    pub fn finish(&self) -> NegotiatedParams {
        let mut p = self.params.clone();
        p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
        p
    }

    fn take_answer(&mut self, key: &str, offer: &str, answer: &str) -> Result<(), NegotiationError> {
        let bad = || NegotiationError::BadAnswer { key: key.to_owned(), value: answer.to_owned() };
        let p = &mut self.params;
        match key {
            "HeaderDigest" | "DataDigest" => {
                let d = Digest::from_value(answer).ok_or_else(bad)?;
                if Digest::from_value(offer) != Some(d) {
                    return Err(bad());
                }
                if key == "HeaderDigest" {
                    p.header_digest = d;
                } else {
                    p.data_digest = d;
                }
            }
            "MaxBurstLength" | "FirstBurstLength" => {
                let n = keys::parse_number(answer).ok_or_else(bad)?;
                let ours = keys::parse_number(offer).unwrap_or(0);
                if n < u64::from(MIN_LENGTH) || n > ours {
                    return Err(bad());
                }
                if key == "MaxBurstLength" {
                    p.max_burst_length = n as u32;
                } else {
                    p.first_burst_length = n as u32;
                }
            }
            "ImmediateData" => {
                if keys::parse_bool(answer) != Some(false) {
                    return Err(bad());
                }
                p.immediate_data = false;
            }
            _ => return Err(bad()),
        }
        Ok(())
    }
}

/// List rule (§6.2.1): the first value of the initiator's list that the
/// target accepts, else Reject.
fn pick_digest(v: &str, policy: DigestPolicy, out: &mut Digest) -> String {
    for d in keys::parse_list(v).filter_map(Digest::from_value) {
        if policy.accepts(d) {
            *out = d;
            return d.as_str().to_owned();
        }
    }
    REJECT.to_owned()
}

/// Numerical minimum rule (§6.2.2): min(offer, ours); out of range → Reject.
fn min_rule(v: &str, lo: u64, hi: u64, ours: u64, set: impl FnOnce(u64)) -> String {
    match keys::parse_number(v) {
        Some(n) if (lo..=hi).contains(&n) => {
            let r = n.min(ours);
            set(r);
            r.to_string()
        }
        _ => REJECT.to_owned(),
    }
}

/// Numerical maximum rule (§6.2.2).
fn max_rule(v: &str, lo: u64, hi: u64, ours: u64, set: impl FnOnce(u64)) -> String {
    match keys::parse_number(v) {
        Some(n) if (lo..=hi).contains(&n) => {
            let r = n.max(ours);
            set(r);
            r.to_string()
        }
        _ => REJECT.to_owned(),
    }
}

/// Boolean rule (§6.2.2): OR when `or`, else AND.
fn bool_rule(v: &str, ours: bool, or: bool, set: impl FnOnce(bool)) -> String {
    match keys::parse_bool(v) {
        Some(b) => {
            let r = if or { b || ours } else { b && ours };
            set(r);
            keys::bool_str(r).to_owned()
        }
        None => REJECT.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n() -> Negotiator {
        Negotiator::new(&TargetLimits::default(), SessionType::Normal, true)
    }

    fn ask(neg: &mut Negotiator, key: &str, value: &str) -> Option<String> {
        neg.negotiate(&KeyValue::new(key, value)).unwrap().map(|kv| {
            assert_eq!(kv.key, key);
            kv.value
        })
    }

    #[test]
    fn digests_pick_first_acceptable() {
        let mut neg = n();
        assert_eq!(ask(&mut neg, "HeaderDigest", "CRC32C,None").as_deref(), Some("CRC32C"));
        assert_eq!(ask(&mut neg, "DataDigest", "None,CRC32C").as_deref(), Some("None"));
        let p = neg.finish();
        assert_eq!(p.header_digest, Digest::Crc32c);
        assert_eq!(p.data_digest, Digest::None);

        let limits = TargetLimits {
            header_digest: DigestPolicy::Required,
            data_digest: DigestPolicy::Off,
            ..TargetLimits::default()
        };
        let mut neg = Negotiator::new(&limits, SessionType::Normal, true);
        assert_eq!(ask(&mut neg, "HeaderDigest", "None").as_deref(), Some("Reject"));
        assert_eq!(ask(&mut neg, "DataDigest", "CRC32C,X-Foo").as_deref(), Some("Reject"));
        let mut neg = Negotiator::new(&limits, SessionType::Normal, true);
        assert_eq!(ask(&mut neg, "DataDigest", "X-Foo,CRC32C,None").as_deref(), Some("None"));
    }

    #[test]
    fn max_connections_is_min() {
        let mut neg = n();
        assert_eq!(ask(&mut neg, "MaxConnections", "8").as_deref(), Some("1"));
        assert_eq!(neg.finish().max_connections, 1);
        let mut neg = n();
        assert_eq!(ask(&mut neg, "MaxConnections", "0").as_deref(), Some("Reject"));
        let mut neg = n();
        assert_eq!(ask(&mut neg, "MaxConnections", "65536").as_deref(), Some("Reject"));
    }

    #[test]
    fn initial_r2t_is_or() {
        let mut neg = n();
        assert_eq!(ask(&mut neg, "InitialR2T", "No").as_deref(), Some("No"));
        assert!(!neg.finish().initial_r2t);
        let mut neg = n();
        assert_eq!(ask(&mut neg, "InitialR2T", "Yes").as_deref(), Some("Yes"));
        let limits = TargetLimits { initial_r2t: true, ..TargetLimits::default() };
        let mut neg = Negotiator::new(&limits, SessionType::Normal, true);
        assert_eq!(ask(&mut neg, "InitialR2T", "No").as_deref(), Some("Yes"));
        assert!(neg.finish().initial_r2t);
        let mut neg = n();
        assert_eq!(ask(&mut neg, "InitialR2T", "maybe").as_deref(), Some("Reject"));
    }

    #[test]
    fn immediate_data_is_and() {
        let mut neg = n();
        assert_eq!(ask(&mut neg, "ImmediateData", "Yes").as_deref(), Some("Yes"));
        let mut neg = n();
        assert_eq!(ask(&mut neg, "ImmediateData", "No").as_deref(), Some("No"));
        assert!(!neg.finish().immediate_data);
        let limits = TargetLimits { immediate_data: false, ..TargetLimits::default() };
        let mut neg = Negotiator::new(&limits, SessionType::Normal, true);
        assert_eq!(ask(&mut neg, "ImmediateData", "Yes").as_deref(), Some("No"));
    }

    #[test]
    fn max_recv_data_segment_length_is_declarative() {
        let mut neg = n();
        assert_eq!(ask(&mut neg, "MaxRecvDataSegmentLength", "65536"), None);
        let p = neg.finish();
        assert_eq!(p.initiator_max_recv_data_segment_length, 65536);
        assert_eq!(p.target_max_recv_data_segment_length, 262_144);
        assert_eq!(neg.declarations(), vec![KeyValue::new("MaxRecvDataSegmentLength", "262144")]);
        assert!(neg.declarations().is_empty());
        // Our declaration does not count as the initiator's.
        let mut neg = n();
        neg.declarations();
        assert_eq!(ask(&mut neg, "MaxRecvDataSegmentLength", "8192"), None);
        for bad in ["511", "16777216", "x"] {
            let mut neg = n();
            assert_eq!(ask(&mut neg, "MaxRecvDataSegmentLength", bad).as_deref(), Some("Reject"));
        }
    }

    #[test]
    fn burst_lengths_are_min_and_first_capped_by_max() {
        let mut neg = n();
        assert_eq!(ask(&mut neg, "MaxBurstLength", "16776192").as_deref(), Some("1048576"));
        assert_eq!(ask(&mut neg, "FirstBurstLength", "8192").as_deref(), Some("8192"));
        let p = neg.finish();
        assert_eq!(p.max_burst_length, 1 << 20);
        assert_eq!(p.first_burst_length, 8192);

        let mut neg = n();
        assert_eq!(ask(&mut neg, "MaxBurstLength", "4096").as_deref(), Some("4096"));
        assert_eq!(ask(&mut neg, "FirstBurstLength", "262144").as_deref(), Some("262144"));
        assert_eq!(neg.finish().first_burst_length, 4096);
        let mut neg = n();
        assert_eq!(ask(&mut neg, "MaxBurstLength", "511").as_deref(), Some("Reject"));
        let mut neg = n();
        assert_eq!(ask(&mut neg, "FirstBurstLength", "0x1000000").as_deref(), Some("Reject"));
    }

    #[test]
    fn time2wait_is_max_and_time2retain_is_min() {
        let mut neg = n();
        assert_eq!(ask(&mut neg, "DefaultTime2Wait", "0").as_deref(), Some("2"));
        assert_eq!(ask(&mut neg, "DefaultTime2Retain", "0").as_deref(), Some("0"));
        let p = neg.finish();
        assert_eq!((p.default_time2wait, p.default_time2retain), (2, 0));
        let mut neg = n();
        assert_eq!(ask(&mut neg, "DefaultTime2Wait", "10").as_deref(), Some("10"));
        assert_eq!(ask(&mut neg, "DefaultTime2Retain", "60").as_deref(), Some("20"));
        let mut neg = n();
        assert_eq!(ask(&mut neg, "DefaultTime2Wait", "3601").as_deref(), Some("Reject"));
    }

    #[test]
    fn max_outstanding_r2t_is_min() {
        let mut neg = n();
        assert_eq!(ask(&mut neg, "MaxOutstandingR2T", "16").as_deref(), Some("1"));
        let limits = TargetLimits { max_outstanding_r2t: 8, ..TargetLimits::default() };
        let mut neg = Negotiator::new(&limits, SessionType::Normal, true);
        assert_eq!(ask(&mut neg, "MaxOutstandingR2T", "4").as_deref(), Some("4"));
        assert_eq!(neg.finish().max_outstanding_r2t, 4);
        let mut neg = n();
        assert_eq!(ask(&mut neg, "MaxOutstandingR2T", "0").as_deref(), Some("Reject"));
    }

    #[test]
    fn in_order_keys_are_or() {
        let mut neg = n();
        assert_eq!(ask(&mut neg, "DataPDUInOrder", "No").as_deref(), Some("Yes"));
        assert_eq!(ask(&mut neg, "DataSequenceInOrder", "No").as_deref(), Some("Yes"));
        let p = neg.finish();
        assert!(p.data_pdu_in_order && p.data_sequence_in_order);
    }

    #[test]
    fn error_recovery_level_is_min() {
        let mut neg = n();
        assert_eq!(ask(&mut neg, "ErrorRecoveryLevel", "2").as_deref(), Some("0"));
        assert_eq!(neg.finish().error_recovery_level, 0);
        let mut neg = n();
        assert_eq!(ask(&mut neg, "ErrorRecoveryLevel", "3").as_deref(), Some("Reject"));
    }

    #[test]
    fn misc_keys() {
        let mut neg = n();
        assert_eq!(ask(&mut neg, "iSCSIProtocolLevel", "2").as_deref(), Some("1"));
        assert_eq!(ask(&mut neg, "TaskReporting", "FastAbort,RFC3720").as_deref(), Some("RFC3720"));
        assert_eq!(ask(&mut neg, "IFMarker", "No").as_deref(), Some("No"));
        assert_eq!(ask(&mut neg, "OFMarker", "Yes").as_deref(), Some("No"));
        assert_eq!(ask(&mut neg, "OFMarkInt", "2048~8192").as_deref(), Some("Irrelevant"));
        assert_eq!(ask(&mut neg, "X-com.example.Foo", "1").as_deref(), Some("NotUnderstood"));
        assert_eq!(ask(&mut neg, "TargetAlias", "me").as_deref(), Some("Reject"));
        assert_eq!(ask(&mut neg, "SendTargets", "All").as_deref(), Some("Reject"));
    }

    #[test]
    fn redeclaration_fails() {
        let mut neg = n();
        ask(&mut neg, "MaxBurstLength", "8192");
        assert_eq!(
            neg.negotiate(&KeyValue::new("MaxBurstLength", "8192")),
            Err(NegotiationError::Redeclared("MaxBurstLength".into()))
        );
    }

    #[test]
    fn discovery_and_non_leading_irrelevance() {
        let mut neg = Negotiator::new(&TargetLimits::default(), SessionType::Discovery, true);
        for key in DISCOVERY_IRRELEVANT {
            assert_eq!(ask(&mut neg, key, "1").as_deref(), Some("Irrelevant"), "{key}");
        }
        assert_eq!(ask(&mut neg, "HeaderDigest", "None").as_deref(), Some("None"));
        assert_eq!(ask(&mut neg, "ErrorRecoveryLevel", "0").as_deref(), Some("0"));
        let mut neg = Negotiator::new(&TargetLimits::default(), SessionType::Normal, false);
        assert_eq!(ask(&mut neg, "ErrorRecoveryLevel", "0").as_deref(), Some("Irrelevant"));
        assert_eq!(ask(&mut neg, "DataDigest", "None").as_deref(), Some("None"));
    }

    #[test]
    fn target_offers_for_unacceptable_defaults() {
        let limits = TargetLimits {
            max_burst_length: 65536,
            first_burst_length: 4096,
            immediate_data: false,
            header_digest: DigestPolicy::Required,
            ..TargetLimits::default()
        };
        let mut neg = Negotiator::new(&limits, SessionType::Normal, true);
        ask(&mut neg, "FirstBurstLength", "1024");
        let offers = neg.target_offers();
        let keys: Vec<_> = offers.iter().map(|kv| kv.key.as_str()).collect();
        assert_eq!(keys, ["HeaderDigest", "MaxBurstLength", "ImmediateData"]);
        assert!(neg.awaiting_answers());
        assert!(neg.target_offers().is_empty());
        assert_eq!(ask(&mut neg, "HeaderDigest", "CRC32C"), None);
        assert_eq!(ask(&mut neg, "MaxBurstLength", "32768"), None);
        assert_eq!(ask(&mut neg, "ImmediateData", "No"), None);
        assert!(!neg.awaiting_answers());
        let p = neg.finish();
        assert_eq!(p.header_digest, Digest::Crc32c);
        assert_eq!(p.max_burst_length, 32768);
        assert_eq!(p.first_burst_length, 1024);
        assert!(!p.immediate_data);

        let mut neg = Negotiator::new(&limits, SessionType::Normal, true);
        neg.target_offers();
        assert!(neg.negotiate(&KeyValue::new("MaxBurstLength", "65537")).is_err());
        assert!(neg.negotiate(&KeyValue::new("HeaderDigest", "Reject")).is_err());
        assert!(neg.negotiate(&KeyValue::new("ImmediateData", "Yes")).is_err());
    }

    #[test]
    fn default_limits_need_no_offers() {
        let mut neg = n();
        assert!(neg.target_offers().is_empty());
    }
}

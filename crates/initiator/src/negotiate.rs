//! The initiator's side of login negotiation (RFC 7143 §6, §13), and the
//! plan of a write's Data-Out PDUs under the negotiated keys (§13.10,
//! §13.11, §13.14). Pure code: no sockets.

use std::collections::HashSet;
use std::time::Duration;

use lunar_iscsi::keys::{self, KeyValue};

use crate::error::Error;

/// What the initiator asks for at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub initiator_name: String,
    pub target_name: String,
    /// Our MaxRecvDataSegmentLength (declared, §13.12).
    pub max_recv_data_segment_length: u32,
    pub max_burst_length: u32,
    pub first_burst_length: u32,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    /// Offer CRC32C digests (the target may still choose None).
    pub header_digest: bool,
    pub data_digest: bool,
    /// Bound of every wait of the session (login answers, command
    /// responses, the CmdSN window) unless a call names its own.
    pub timeout: Duration,
    /// The ISID to log in with; `None`: a new one for every login. The
    /// ISID of a live session to the same target reinstates it (RFC 7143
    /// §6.3.5: the target ends the old session first).
    pub isid: Option<lunar_iscsi::pdu::Isid>,
}

impl Config {
    /// Defaults for a normal session to `target_name`: no digests,
    /// ImmediateData=Yes, InitialR2T=No, 256 KiB data segments.
    pub fn new(target_name: impl Into<String>) -> Config {
        Config {
            initiator_name: "iqn.2026-11.dev.lunar:initiator".into(),
            target_name: target_name.into(),
            max_recv_data_segment_length: 262_144,
            max_burst_length: 1 << 20,
            first_burst_length: 65_536,
            immediate_data: true,
            initial_r2t: false,
            header_digest: false,
            data_digest: false,
            timeout: Duration::from_secs(60),
            isid: None,
        }
    }
}

/// The parameters in force after login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub header_digest: bool,
    pub data_digest: bool,
    pub immediate_data: bool,
    pub initial_r2t: bool,
    pub first_burst_length: u32,
    pub max_burst_length: u32,
    /// Largest data segment we may send (the target's declaration).
    pub target_max_recv_data_segment_length: u32,
    /// Largest data segment the target may send us (ours).
    pub initiator_max_recv_data_segment_length: u32,
    pub max_outstanding_r2t: u32,
    pub error_recovery_level: u32,
    pub target_portal_group_tag: Option<u16>,
    pub target_alias: Option<String>,
}

impl Default for Params {
    /// RFC 7143 §13 defaults.
    fn default() -> Self {
        Params {
            header_digest: false,
            data_digest: false,
            immediate_data: true,
            initial_r2t: true,
            first_burst_length: 65_536,
            max_burst_length: 262_144,
            target_max_recv_data_segment_length: 8192,
            initiator_max_recv_data_segment_length: 8192,
            max_outstanding_r2t: 1,
            error_recovery_level: 0,
            target_portal_group_tag: None,
            target_alias: None,
        }
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

fn digest_offer(on: bool) -> &'static str {
    if on {
        "CRC32C,None"
    } else {
        "None"
    }
}

/// The keys of the security stage (no authentication).
pub fn security_keys(config: &Config) -> Vec<KeyValue> {
    vec![
        KeyValue::new("InitiatorName", &config.initiator_name),
        KeyValue::new("TargetName", &config.target_name),
        KeyValue::new("SessionType", "Normal"),
        KeyValue::new("AuthMethod", "None"),
    ]
}

/// The operational keys we offer (or declare).
pub fn operational_offer(config: &Config) -> Vec<KeyValue> {
    vec![
        KeyValue::new("HeaderDigest", digest_offer(config.header_digest)),
        KeyValue::new("DataDigest", digest_offer(config.data_digest)),
        KeyValue::new("MaxConnections", "1"),
        KeyValue::new("InitialR2T", yes_no(config.initial_r2t)),
        KeyValue::new("ImmediateData", yes_no(config.immediate_data)),
        KeyValue::new("MaxRecvDataSegmentLength", config.max_recv_data_segment_length.to_string()),
        KeyValue::new("MaxBurstLength", config.max_burst_length.to_string()),
        KeyValue::new("FirstBurstLength", config.first_burst_length.to_string()),
        KeyValue::new("DefaultTime2Wait", "2"),
        KeyValue::new("DefaultTime2Retain", "0"),
        KeyValue::new("MaxOutstandingR2T", "1"),
        KeyValue::new("DataPDUInOrder", "Yes"),
        KeyValue::new("DataSequenceInOrder", "Yes"),
        KeyValue::new("ErrorRecoveryLevel", "0"),
    ]
}

/// Folds the target's keys into the parameters, judging answers to our
/// offers and answering the target's own offers.
#[derive(Debug)]
pub struct Negotiation {
    config: Config,
    params: Params,
    offered: HashSet<String>,
}

impl Negotiation {
    pub fn new(config: &Config) -> Negotiation {
        Negotiation {
            config: config.clone(),
            params: Params {
                initiator_max_recv_data_segment_length: config.max_recv_data_segment_length,
                ..Params::default()
            },
            offered: HashSet::new(),
        }
    }

    /// Remembers keys we sent, so that the target's values for them are
    /// taken as answers.
    pub fn sent(&mut self, pairs: &[KeyValue]) {
        self.offered.extend(pairs.iter().map(|kv| kv.key.clone()));
    }

    fn bad(key: &str, value: &str) -> Error {
        Error::Negotiation(format!("unacceptable {key}={value}"))
    }

    fn number(key: &str, value: &str) -> Result<u32, Error> {
        keys::parse_number(value).and_then(|n| u32::try_from(n).ok()).ok_or_else(|| Negotiation::bad(key, value))
    }

    fn boolean(key: &str, value: &str) -> Result<bool, Error> {
        match value {
            "Yes" => Ok(true),
            "No" => Ok(false),
            _ => Err(Negotiation::bad(key, value)),
        }
    }

    /// Takes the keys of one Login Response. Returns our answers to the
    /// target's offers (to send in the next Login Request).
    pub fn receive(&mut self, pairs: &[KeyValue]) -> Result<Vec<KeyValue>, Error> {
        let mut answers = Vec::new();
        for kv in pairs {
            let (key, value) = (kv.key.as_str(), kv.value.as_str());
            // Declarations and target-only keys.
            match key {
                "MaxRecvDataSegmentLength" => {
                    let n = Negotiation::number(key, value)?;
                    if !(512..=16_777_215).contains(&n) {
                        return Err(Negotiation::bad(key, value));
                    }
                    self.params.target_max_recv_data_segment_length = n;
                    continue;
                }
                "TargetPortalGroupTag" => {
                    let n = Negotiation::number(key, value)?;
                    self.params.target_portal_group_tag =
                        Some(u16::try_from(n).map_err(|_| Negotiation::bad(key, value))?);
                    continue;
                }
                "TargetAlias" => {
                    self.params.target_alias = Some(value.to_string());
                    continue;
                }
                "TargetAddress" => continue,
                "AuthMethod" => {
                    if value != "None" {
                        return Err(Negotiation::bad(key, value));
                    }
                    continue;
                }
                _ => {}
            }
            if matches!(value, keys::NOT_UNDERSTOOD | keys::IRRELEVANT | keys::REJECT) {
                // The default stays in force.
                continue;
            }
            let answer = !self.offered.contains(key);
            let c = &self.config;
            let p = &mut self.params;
            match key {
                "HeaderDigest" | "DataDigest" => {
                    let ours = if key == "HeaderDigest" { c.header_digest } else { c.data_digest };
                    // An answer is one value; an offer may be a list.
                    let pick = keys::parse_list(value)
                        .find(|v| *v == "None" || (ours && *v == "CRC32C"))
                        .ok_or_else(|| Negotiation::bad(key, value))?;
                    let on = pick == "CRC32C";
                    if key == "HeaderDigest" {
                        p.header_digest = on;
                    } else {
                        p.data_digest = on;
                    }
                    if answer {
                        answers.push(KeyValue::new(key, pick));
                    }
                }
                "ImmediateData" => {
                    // AND rule.
                    let v = Negotiation::boolean(key, value)?;
                    if !answer && v && !c.immediate_data {
                        return Err(Negotiation::bad(key, value));
                    }
                    p.immediate_data = v && c.immediate_data;
                    if answer {
                        answers.push(KeyValue::new(key, yes_no(p.immediate_data)));
                    }
                }
                "InitialR2T" => {
                    // OR rule.
                    let v = Negotiation::boolean(key, value)?;
                    if !answer && !v && c.initial_r2t {
                        return Err(Negotiation::bad(key, value));
                    }
                    p.initial_r2t = v || c.initial_r2t;
                    if answer {
                        answers.push(KeyValue::new(key, yes_no(p.initial_r2t)));
                    }
                }
                "MaxBurstLength" | "FirstBurstLength" => {
                    // Minimum rule.
                    let v = Negotiation::number(key, value)?;
                    let ours = if key == "MaxBurstLength" { c.max_burst_length } else { c.first_burst_length };
                    if (!answer && v > ours) || v < 512 {
                        return Err(Negotiation::bad(key, value));
                    }
                    let r = v.min(ours);
                    if key == "MaxBurstLength" {
                        p.max_burst_length = r;
                    } else {
                        p.first_burst_length = r;
                    }
                    if answer {
                        answers.push(KeyValue::new(key, r.to_string()));
                    }
                }
                "MaxOutstandingR2T" | "ErrorRecoveryLevel" | "MaxConnections" => {
                    let v = Negotiation::number(key, value)?;
                    let ours = if key == "MaxOutstandingR2T" || key == "MaxConnections" { 1 } else { 0 };
                    if v > ours && !answer {
                        return Err(Negotiation::bad(key, value));
                    }
                    let r = v.min(ours);
                    match key {
                        "MaxOutstandingR2T" => p.max_outstanding_r2t = r.max(1),
                        "ErrorRecoveryLevel" => p.error_recovery_level = r,
                        _ => {}
                    }
                    if answer {
                        answers.push(KeyValue::new(key, r.to_string()));
                    }
                }
                // Nothing of ours depends on these; take the target's offer.
                "DefaultTime2Wait" | "DefaultTime2Retain" | "DataPDUInOrder" | "DataSequenceInOrder" if answer => {
                    answers.push(KeyValue::new(key, value));
                }
                _ if answer => answers.push(KeyValue::new(key, keys::NOT_UNDERSTOOD)),
                _ => {}
            }
        }
        // Every answer is an offer taken: do not answer it twice.
        self.sent(&answers);
        Ok(answers)
    }

    /// The parameters in force; FirstBurstLength is capped by
    /// MaxBurstLength (§13.14).
    pub fn finish(&self) -> Params {
        let mut p = self.params.clone();
        p.first_burst_length = p.first_burst_length.min(p.max_burst_length);
        p
    }
}

/// One Data-Out PDU to send: its range of the write buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataOutPdu {
    pub offset: u32,
    pub len: u32,
    pub data_sn: u32,
    pub final_bit: bool,
}

/// How a write's data goes out at submission: immediate data in the
/// command PDU, then unsolicited Data-Out PDUs; the rest waits for R2Ts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WritePlan {
    /// Bytes carried in the SCSI Command PDU.
    pub immediate: u32,
    /// The command's F bit: no unsolicited Data-Out follows.
    pub command_final: bool,
    pub unsolicited: Vec<DataOutPdu>,
}

/// Splits `[offset, offset+len)` into PDUs of at most `max` bytes, DataSN
/// from 0, F on the last.
pub fn split(offset: u32, len: u32, max: u32) -> Vec<DataOutPdu> {
    let max = max.max(1);
    let mut out = Vec::new();
    let mut at = 0u32;
    while at < len {
        let n = (len - at).min(max);
        out.push(DataOutPdu { offset: offset + at, len: n, data_sn: out.len() as u32, final_bit: at + n == len });
        at += n;
    }
    out
}

/// The data a write sends without waiting for an R2T (RFC 7143 §13.10,
/// §13.11, §13.14): up to FirstBurstLength, immediate data first (at most
/// one data segment), then unsolicited Data-Out PDUs when InitialR2T=No.
pub fn plan_write(params: &Params, len: u32) -> WritePlan {
    let unsolicited_limit = if params.initial_r2t { 0 } else { params.first_burst_length };
    let immediate = if params.immediate_data {
        len.min(params.first_burst_length).min(params.target_max_recv_data_segment_length)
    } else {
        0
    };
    let end = len.min(unsolicited_limit).max(immediate);
    let unsolicited = split(immediate, end - immediate, params.target_max_recv_data_segment_length);
    WritePlan { immediate, command_final: unsolicited.is_empty(), unsolicited }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue::new(k, v)
    }

    fn params(immediate: bool, initial_r2t: bool, first: u32, mrdsl: u32) -> Params {
        Params {
            immediate_data: immediate,
            initial_r2t,
            first_burst_length: first,
            target_max_recv_data_segment_length: mrdsl,
            ..Params::default()
        }
    }

    #[test]
    fn write_plans() {
        // Everything immediate.
        let p = plan_write(&params(true, false, 65536, 262_144), 4096);
        assert_eq!((p.immediate, p.command_final, p.unsolicited.len()), (4096, true, 0));
        // Immediate limited by the data segment, the rest unsolicited up to FirstBurstLength.
        let p = plan_write(&params(true, false, 65536, 8192), 100_000);
        assert_eq!(p.immediate, 8192);
        assert!(!p.command_final);
        let total: u32 = p.unsolicited.iter().map(|d| d.len).sum();
        assert_eq!(8192 + total, 65536);
        assert_eq!(p.unsolicited.first().unwrap().offset, 8192);
        assert_eq!(p.unsolicited.iter().map(|d| d.data_sn).collect::<Vec<_>>(), (0..7).collect::<Vec<_>>());
        assert!(p.unsolicited.last().unwrap().final_bit && p.unsolicited.iter().filter(|d| d.final_bit).count() == 1);
        // InitialR2T=Yes: only immediate data.
        let p = plan_write(&params(true, true, 65536, 8192), 100_000);
        assert_eq!((p.immediate, p.command_final, p.unsolicited.len()), (8192, true, 0));
        // Neither: everything waits for R2T.
        let p = plan_write(&params(false, true, 65536, 8192), 100_000);
        assert_eq!((p.immediate, p.command_final, p.unsolicited.len()), (0, true, 0));
        // No immediate data but unsolicited Data-Out.
        let p = plan_write(&params(false, false, 16384, 8192), 100_000);
        assert_eq!(p.immediate, 0);
        assert_eq!(p.unsolicited, split(0, 16384, 8192));
        assert_eq!(p.unsolicited.len(), 2);
    }

    #[test]
    fn split_ranges() {
        assert!(split(0, 0, 512).is_empty());
        let s = split(1000, 1025, 512);
        assert_eq!(s.iter().map(|d| (d.offset, d.len)).collect::<Vec<_>>(), vec![(1000, 512), (1512, 512), (2024, 1)]);
    }

    #[test]
    fn answers_and_offers() {
        let c = Config::new("iqn.x:t");
        let mut n = Negotiation::new(&c);
        n.sent(&operational_offer(&c));
        let answers = n
            .receive(&[
                kv("HeaderDigest", "None"),
                kv("DataDigest", "None"),
                kv("InitialR2T", "No"),
                kv("ImmediateData", "Yes"),
                kv("MaxBurstLength", "262144"),
                kv("FirstBurstLength", "65536"),
                kv("MaxRecvDataSegmentLength", "131072"),
                kv("TargetPortalGroupTag", "1"),
                kv("DefaultTime2Wait", "2"),
                kv("MaxConnections", "1"),
            ])
            .unwrap();
        assert!(answers.is_empty(), "{answers:?}");
        let p = n.finish();
        assert_eq!(p.target_max_recv_data_segment_length, 131_072);
        assert_eq!(p.max_burst_length, 262_144);
        assert!(!p.initial_r2t && p.immediate_data);
        assert_eq!(p.target_portal_group_tag, Some(1));
        // A target that answers above our offer breaks the minimum rule.
        let mut n = Negotiation::new(&c);
        n.sent(&operational_offer(&c));
        assert!(n.receive(&[kv("FirstBurstLength", "10000000")]).is_err());
        // A target offer is answered, by the key's rule.
        let mut n = Negotiation::new(&c);
        let answers = n.receive(&[kv("MaxBurstLength", "4096"), kv("ImmediateData", "No"), kv("X-Foo", "1")]).unwrap();
        assert_eq!(
            answers,
            vec![kv("MaxBurstLength", "4096"), kv("ImmediateData", "No"), kv("X-Foo", "NotUnderstood")]
        );
        let p = n.finish();
        assert_eq!((p.max_burst_length, p.first_burst_length, p.immediate_data), (4096, 4096, false));
        // Digests: an offer list is answered with what we allow.
        let mut n = Negotiation::new(&c);
        assert_eq!(n.receive(&[kv("HeaderDigest", "CRC32C,None")]).unwrap(), vec![kv("HeaderDigest", "None")]);
        let mut n = Negotiation::new(&c);
        assert!(n.receive(&[kv("DataDigest", "CRC32C")]).is_err());
    }
}

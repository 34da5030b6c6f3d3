//! CHAP authentication (RFC 7143 §12.1.3, RFC 1994).
//!
//! The target sends `CHAP_A`, `CHAP_I` (identifier) and `CHAP_C`
//! (challenge); the initiator answers `CHAP_N` (name) and `CHAP_R` =
//! H(I ‖ secret ‖ C). For mutual CHAP the initiator adds its own `CHAP_I`
//! and `CHAP_C`, and the target answers with its name and response.
//!
//! Algorithms are the PPP authentication algorithm numbers (IANA "PPP
//! Authentication Algorithms"): 5 = MD5, the one RFC 7143 requires, and
//! 7 = SHA-256, which current initiators (Linux open-iscsi) offer.

use md5::Md5;
use rand::RngCore;
use sha2::{Digest as _, Sha256};

use crate::keys;

/// Length floor of the challenges we generate; ours are as long as the
/// hash output (16 or 32 bytes).
pub const MIN_CHALLENGE_LEN: usize = 16;

/// Longest CHAP_C / CHAP_R binary value (RFC 7143 §12.1.3: 1024 bytes).
pub const MAX_BINARY_LEN: usize = 1024;

/// A CHAP hash algorithm (the CHAP_A value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChapAlgorithm {
    /// CHAP_A=5.
    Md5,
    /// CHAP_A=7.
    Sha256,
}

impl ChapAlgorithm {
    /// The CHAP_A number.
    pub fn code(self) -> u8 {
        match self {
            ChapAlgorithm::Md5 => 5,
            ChapAlgorithm::Sha256 => 7,
        }
    }

    /// The algorithm for a CHAP_A number.
    pub fn from_code(code: u64) -> Option<ChapAlgorithm> {
        match code {
            5 => Some(ChapAlgorithm::Md5),
            7 => Some(ChapAlgorithm::Sha256),
            _ => None,
        }
    }

    /// Hash output length in bytes.
    pub fn digest_len(self) -> usize {
        match self {
            ChapAlgorithm::Md5 => 16,
            ChapAlgorithm::Sha256 => 32,
        }
    }

    /// The CHAP response H(identifier ‖ secret ‖ challenge) (RFC 1994 §4.1).
    pub fn response(self, identifier: u8, secret: &[u8], challenge: &[u8]) -> Vec<u8> {
        match self {
            ChapAlgorithm::Md5 => {
                let mut h = Md5::new();
                h.update([identifier]);
                h.update(secret);
                h.update(challenge);
                h.finalize().to_vec()
            }
            ChapAlgorithm::Sha256 => {
                let mut h = Sha256::new();
                h.update([identifier]);
                h.update(secret);
                h.update(challenge);
                h.finalize().to_vec()
            }
        }
    }
}

/// A CHAP name and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapCredential {
    pub user: String,
    pub secret: Vec<u8>,
}

impl ChapCredential {
    pub fn new(user: impl Into<String>, secret: impl Into<Vec<u8>>) -> ChapCredential {
        ChapCredential { user: user.into(), secret: secret.into() }
    }
}

impl std::fmt::Debug for ChapCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapCredential").field("user", &self.user).field("secret", &"<redacted>").finish()
    }
}

/// How a target (or discovery) authenticates initiators with CHAP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChapPolicy {
    /// The name and secret the initiator must prove.
    pub initiator: ChapCredential,
    /// The target's own name and secret, for mutual CHAP. When `None`, an
    /// initiator asking for mutual authentication is refused.
    pub target: Option<ChapCredential>,
    /// Whether the initiator must ask for mutual authentication.
    pub require_mutual: bool,
    /// Algorithms accepted; the initiator's order decides among them.
    pub algorithms: Vec<ChapAlgorithm>,
}

impl ChapPolicy {
    /// One-way CHAP with both algorithms.
    pub fn one_way(initiator: ChapCredential) -> ChapPolicy {
        ChapPolicy {
            initiator,
            target: None,
            require_mutual: false,
            algorithms: vec![ChapAlgorithm::Sha256, ChapAlgorithm::Md5],
        }
    }

    /// Mutual CHAP (allowed, not required) with both algorithms.
    pub fn mutual(initiator: ChapCredential, target: ChapCredential) -> ChapPolicy {
        ChapPolicy { target: Some(target), ..ChapPolicy::one_way(initiator) }
    }
}

/// Why CHAP failed; the login ends with status 0x0201 "authentication
/// failure" (RFC 7143 §11.13.5).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChapError {
    #[error("no offered CHAP_A algorithm is supported")]
    NoAlgorithm,
    #[error("malformed {0}")]
    Malformed(&'static str),
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("unknown CHAP name")]
    UnknownUser,
    #[error("wrong CHAP response")]
    WrongResponse,
    #[error("mutual CHAP requested but no target credentials are configured")]
    MutualNotConfigured,
    #[error("mutual CHAP required but not requested")]
    MutualRequired,
    #[error("initiator challenge equals the target's (reflection attack)")]
    ReflectedChallenge,
    #[error("CHAP key out of sequence: {0}")]
    OutOfSequence(&'static str),
}

/// The challenge the target sent, kept to check the answer.
#[derive(Clone, PartialEq, Eq)]
pub struct ChapChallenge {
    pub algorithm: ChapAlgorithm,
    pub identifier: u8,
    pub challenge: Vec<u8>,
}

impl std::fmt::Debug for ChapChallenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChapChallenge")
            .field("algorithm", &self.algorithm)
            .field("identifier", &self.identifier)
            .finish_non_exhaustive()
    }
}

impl ChapChallenge {
    /// A fresh random identifier and challenge as long as the hash output
    /// (at least 16 bytes), from a cryptographic RNG.
    pub fn generate(algorithm: ChapAlgorithm, rng: &mut impl RngCore) -> ChapChallenge {
        let mut challenge = vec![0u8; algorithm.digest_len().max(MIN_CHALLENGE_LEN)];
        rng.fill_bytes(&mut challenge);
        let mut id = [0u8; 1];
        rng.fill_bytes(&mut id);
        ChapChallenge { algorithm, identifier: id[0], challenge }
    }

    /// The keys the target sends: CHAP_A, CHAP_I, CHAP_C.
    pub fn keys(&self) -> [keys::KeyValue; 3] {
        [
            keys::KeyValue::new("CHAP_A", self.algorithm.code().to_string()),
            keys::KeyValue::new("CHAP_I", self.identifier.to_string()),
            keys::KeyValue::new("CHAP_C", keys::encode_hex(&self.challenge)),
        ]
    }

    /// Checks the initiator's CHAP_R (in binary) in constant time.
    pub fn verify(&self, secret: &[u8], response: &[u8]) -> bool {
        let expected = self.algorithm.response(self.identifier, secret, &self.challenge);
        constant_time_eq(&expected, response)
    }
}

/// Chooses the first algorithm of the initiator's CHAP_A list that the
/// policy accepts (RFC 7143 §12.1.3, list negotiation).
pub fn choose_algorithm(offer: &str, accepted: &[ChapAlgorithm]) -> Option<ChapAlgorithm> {
    keys::parse_list(offer)
        .filter_map(keys::parse_number)
        .filter_map(ChapAlgorithm::from_code)
        .find(|a| accepted.contains(a))
}

/// Parses a CHAP_I value (0-255, decimal or hex).
pub fn parse_identifier(v: &str) -> Option<u8> {
    keys::parse_number(v).and_then(|n| u8::try_from(n).ok())
}

/// Parses a CHAP_C or CHAP_R value (hex `0x` or base64 `0b`, at most
/// 1024 bytes).
pub fn parse_binary(v: &str) -> Option<Vec<u8>> {
    keys::decode_binary(v).filter(|b| !b.is_empty() && b.len() <= MAX_BINARY_LEN)
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimiser from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::mock::StepRng;

    /// RFC 1321 MD5 test vector, through the CHAP framing: with an empty
    /// secret and challenge "bc" and identifier b'a', the hashed string is
    /// "abc".
    #[test]
    fn md5_known_answer() {
        let r = ChapAlgorithm::Md5.response(b'a', b"", b"bc");
        assert_eq!(keys::encode_hex(&r), "0x900150983cd24fb0d6963f7d28e17f72");
        let r = ChapAlgorithm::Md5.response(b'a', b"b", b"c");
        assert_eq!(keys::encode_hex(&r), "0x900150983cd24fb0d6963f7d28e17f72");
    }

    /// FIPS 180-2 SHA-256 test vector ("abc").
    #[test]
    fn sha256_known_answer() {
        let r = ChapAlgorithm::Sha256.response(b'a', b"b", b"c");
        assert_eq!(keys::encode_hex(&r), "0xba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn challenge_round_trip() {
        let mut rng = StepRng::new(7, 3);
        for alg in [ChapAlgorithm::Md5, ChapAlgorithm::Sha256] {
            let c = ChapChallenge::generate(alg, &mut rng);
            assert!(c.challenge.len() >= MIN_CHALLENGE_LEN);
            assert_eq!(c.challenge.len(), alg.digest_len());
            let [a, i, ch] = c.keys();
            assert_eq!(a.value, alg.code().to_string());
            assert_eq!(parse_identifier(&i.value), Some(c.identifier));
            assert_eq!(parse_binary(&ch.value), Some(c.challenge.clone()));
            let good = alg.response(c.identifier, b"secretsecret", &c.challenge);
            assert!(c.verify(b"secretsecret", &good));
            assert!(!c.verify(b"secretsecreT", &good));
            assert!(!c.verify(b"secretsecret", &good[1..]));
        }
    }

    #[test]
    fn algorithm_choice_follows_initiator_order() {
        let both = [ChapAlgorithm::Sha256, ChapAlgorithm::Md5];
        assert_eq!(choose_algorithm("5,7", &both), Some(ChapAlgorithm::Md5));
        assert_eq!(choose_algorithm("7,5", &both), Some(ChapAlgorithm::Sha256));
        assert_eq!(choose_algorithm("8,6,7", &both), Some(ChapAlgorithm::Sha256));
        assert_eq!(choose_algorithm("7", &[ChapAlgorithm::Md5]), None);
        assert_eq!(choose_algorithm("x", &both), None);
    }

    #[test]
    fn values() {
        assert_eq!(parse_identifier("255"), Some(255));
        assert_eq!(parse_identifier("256"), None);
        assert_eq!(parse_identifier("0x10"), Some(16));
        assert_eq!(parse_binary("0x"), None);
        assert_eq!(parse_binary(&keys::encode_hex(&[1; 1025])), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        let dbg = format!("{:?}", ChapCredential::new("u", "topsecret"));
        assert!(!dbg.contains("topsecret"));
    }
}

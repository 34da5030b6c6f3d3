//! Text keys: `key=value\0` lists (RFC 7143 §6.1) and their value forms
//! (§5.1: numbers, booleans, lists, binary values in hex or base64).

use std::collections::HashSet;

/// Longest key name (RFC 7143 §6.1: 63 bytes).
pub const MAX_KEY_LEN: usize = 63;

/// Longest value the parser accepts. Most values are limited to 255 bytes
/// (§6.1) and the negotiation checks that per key; large binary values
/// (CHAP_C, CHAP_R: up to 1024 bytes, §12.1.3) need more room in hex.
pub const MAX_VALUE_LEN: usize = 8192;

/// Longest text (all PDUs of one request, C bit) this crate accepts; more
/// is a denial-of-service attempt, not a negotiation.
pub const MAX_TEXT_LEN: usize = 64 * 1024;

/// Longest ordinary text value (RFC 7143 §6.1).
pub const MAX_TEXT_VALUE_LEN: usize = 255;

/// Special values (RFC 7143 §6.2).
pub const NOT_UNDERSTOOD: &str = "NotUnderstood";
pub const IRRELEVANT: &str = "Irrelevant";
pub const REJECT: &str = "Reject";

/// Why a text segment is not a valid key list.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("text is {0} bytes, over the {MAX_TEXT_LEN}-byte limit")]
    TextTooLong(usize),
    #[error("text does not end with a NUL")]
    Unterminated,
    #[error("entry without '=': {0:?}")]
    MissingEquals(String),
    #[error("invalid key name {0:?}")]
    InvalidKey(String),
    #[error("key {0:?} is longer than {MAX_KEY_LEN} bytes")]
    KeyTooLong(String),
    #[error("value of {key:?} is {len} bytes long")]
    ValueTooLong { key: String, len: usize },
    #[error("value of {0:?} is not UTF-8")]
    NotUtf8(String),
    /// §6.2: a key sent twice in one negotiation; the target answers with
    /// a Login reject, initiator error.
    #[error("key {0:?} appears more than once")]
    Duplicate(String),
}

/// One `key=value` pair, in the order received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

impl KeyValue {
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> KeyValue {
        KeyValue { key: key.into(), value: value.into() }
    }
}

/// True for characters allowed in key names (RFC 7143 §6.1: letters,
/// digits, '.', '-', '+', '@', '_').
fn key_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b'+' | b'@' | b'_')
}

/// Parses a complete text (every PDU of a request joined, RFC 7143 §6.1)
/// into pairs, rejecting duplicates (§6.2).
///
/// Empty entries (a stray extra NUL, as some initiators pad) are skipped.
pub fn parse(text: &[u8]) -> Result<Vec<KeyValue>, KeyError> {
    parse_allowing_duplicates(text).and_then(|pairs| {
        let mut seen = HashSet::new();
        for kv in &pairs {
            if !seen.insert(kv.key.as_str()) {
                return Err(KeyError::Duplicate(kv.key.clone()));
            }
        }
        Ok(pairs)
    })
}

/// Like [`parse`] but keeps repeated keys, as some responses may carry
/// (e.g. `TargetAddress`, Appendix C).
pub fn parse_allowing_duplicates(text: &[u8]) -> Result<Vec<KeyValue>, KeyError> {
    if text.len() > MAX_TEXT_LEN {
        return Err(KeyError::TextTooLong(text.len()));
    }
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if text.last() != Some(&0) {
        return Err(KeyError::Unterminated);
    }
    let mut out = Vec::new();
    // The final NUL leaves one empty piece at the end, skipped like others.
    for entry in text.split(|b| *b == 0) {
        if entry.is_empty() {
            continue;
        }
        let Some(eq) = entry.iter().position(|b| *b == b'=') else {
            return Err(KeyError::MissingEquals(lossy(entry)));
        };
        let (key, value) = entry.split_at(eq);
        let value = value.get(1..).unwrap_or_default();
        if key.len() > MAX_KEY_LEN {
            return Err(KeyError::KeyTooLong(lossy(key)));
        }
        if key.is_empty() || !key.iter().all(|c| key_char(*c)) {
            return Err(KeyError::InvalidKey(lossy(key)));
        }
        let key = lossy(key);
        if value.len() > MAX_VALUE_LEN {
            return Err(KeyError::ValueTooLong { key, len: value.len() });
        }
        let value = std::str::from_utf8(value).map_err(|_| KeyError::NotUtf8(key.clone()))?.to_owned();
        out.push(KeyValue { key, value });
    }
    Ok(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Encodes pairs as `key=value\0...` (RFC 7143 §6.1).
pub fn encode<'a>(pairs: impl IntoIterator<Item = &'a KeyValue>) -> Vec<u8> {
    let mut out = Vec::new();
    for kv in pairs {
        out.extend_from_slice(kv.key.as_bytes());
        out.push(b'=');
        out.extend_from_slice(kv.value.as_bytes());
        out.push(0);
    }
    out
}

/// Parses a numerical value: decimal, or hex with a `0x` prefix
/// (RFC 7143 §5.1, numerical-value up to 64 bits).
pub fn parse_number(v: &str) -> Option<u64> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        if hex.is_empty() || hex.len() > 16 {
            return None;
        }
        return u64::from_str_radix(hex, 16).ok();
    }
    if v.is_empty() || v.len() > 20 || !v.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

/// Parses a boolean value (`Yes` or `No`, RFC 7143 §5.1).
pub fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "Yes" => Some(true),
        "No" => Some(false),
        _ => None,
    }
}

/// The literal for a boolean.
pub fn bool_str(b: bool) -> &'static str {
    if b {
        "Yes"
    } else {
        "No"
    }
}

/// Splits a list-of-values (RFC 7143 §6.2: comma-separated).
pub fn parse_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',')
}

/// Decodes a binary value: `0x`/`0X` followed by hex digits, or `0b`/`0B`
/// followed by base64 (RFC 7143 §5.1). An odd number of hex digits is read
/// with an implied leading zero.
pub fn decode_binary(v: &str) -> Option<Vec<u8>> {
    if let Some(hex) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        decode_hex(hex)
    } else if let Some(b64) = v.strip_prefix("0b").or_else(|| v.strip_prefix("0B")) {
        decode_base64(b64)
    } else {
        None
    }
}

/// Encodes a binary value in hex form (`0x...`, RFC 7143 §5.1).
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(2 + bytes.len() * 2);
    s.push_str("0x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.is_empty() {
        return None;
    }
    let digits: Vec<u8> =
        hex.chars().map(|c| c.to_digit(16).and_then(|d| u8::try_from(d).ok())).collect::<Option<_>>()?;
    let mut out = Vec::with_capacity(digits.len().div_ceil(2));
    let mut iter = digits.iter();
    if digits.len() % 2 == 1 {
        out.push(*iter.next()?);
    }
    while let (Some(hi), Some(lo)) = (iter.next(), iter.next()) {
        out.push(hi << 4 | lo);
    }
    Some(out)
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Encodes a binary value in base64 form (`0b...`, RFC 7143 §5.1, RFC 4648).
pub fn encode_base64(bytes: &[u8]) -> String {
    let mut s = String::from("0b");
    for chunk in bytes.chunks(3) {
        let b = [
            chunk.first().copied().unwrap_or(0),
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                let idx = (n >> (18 - 6 * i)) & 63;
                s.push(char::from(B64.get(idx as usize).copied().unwrap_or(b'A')));
            } else {
                s.push('=');
            }
        }
    }
    s
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let body = s.trim_end_matches('=');
    if s.len() - body.len() > 2 || body.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(body.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in body.bytes() {
        let v = B64.iter().position(|x| *x == c)? as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    // A single leftover character (6 bits) cannot encode a byte.
    if body.len() % 4 == 1 {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parse_and_encode() {
        let text = b"InitiatorName=iqn.1993-08.org.debian:01:abc\0SessionType=Normal\0";
        let pairs = parse(text).unwrap();
        assert_eq!(pairs.len(), 2);
        assert_eq!(pairs[0].key, "InitiatorName");
        assert_eq!(pairs[1].value, "Normal");
        assert_eq!(encode(&pairs), text.to_vec());
        assert_eq!(parse(b"").unwrap(), vec![]);
        assert_eq!(parse(b"A=\0\0").unwrap(), vec![KeyValue::new("A", "")]);
    }

    #[test]
    fn syntax_errors() {
        assert_eq!(parse(b"A=1"), Err(KeyError::Unterminated));
        assert!(matches!(parse(b"A\0"), Err(KeyError::MissingEquals(_))));
        assert!(matches!(parse(b"=1\0"), Err(KeyError::InvalidKey(_))));
        assert!(matches!(parse(b"A B=1\0"), Err(KeyError::InvalidKey(_))));
        let long_key = format!("{}=1\0", "K".repeat(64));
        assert!(matches!(parse(long_key.as_bytes()), Err(KeyError::KeyTooLong(_))));
        let long_value = format!("K={}\0", "v".repeat(MAX_VALUE_LEN + 1));
        assert!(matches!(parse(long_value.as_bytes()), Err(KeyError::ValueTooLong { .. })));
        assert!(matches!(parse(b"K=\xff\0"), Err(KeyError::NotUtf8(_))));
        assert_eq!(parse(b"A=1\0B=2\0A=3\0"), Err(KeyError::Duplicate("A".into())));
        assert_eq!(parse_allowing_duplicates(b"A=1\0A=3\0").unwrap().len(), 2);
        let huge = vec![b'a'; MAX_TEXT_LEN + 1];
        assert!(matches!(parse(&huge), Err(KeyError::TextTooLong(_))));
    }

    #[test]
    fn numbers_and_booleans() {
        assert_eq!(parse_number("8192"), Some(8192));
        assert_eq!(parse_number("0x2000"), Some(8192));
        assert_eq!(parse_number("0X2000"), Some(8192));
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("-1"), None);
        assert_eq!(parse_number("+1"), None);
        assert_eq!(parse_number("12a"), None);
        assert_eq!(parse_number("99999999999999999999999"), None);
        assert_eq!(parse_bool("Yes"), Some(true));
        assert_eq!(parse_bool("yes"), None);
        assert_eq!(parse_list("CRC32C,None").collect::<Vec<_>>(), ["CRC32C", "None"]);
    }

    #[test]
    fn binary_forms() {
        assert_eq!(decode_binary("0x0102ff"), Some(vec![1, 2, 255]));
        assert_eq!(decode_binary("0XABC"), Some(vec![0x0a, 0xbc]));
        assert_eq!(decode_binary("0x"), None);
        assert_eq!(decode_binary("0xzz"), None);
        assert_eq!(decode_binary("1234"), None);
        // RFC 4648 test vectors.
        assert_eq!(decode_binary("0bZm9vYmFy"), Some(b"foobar".to_vec()));
        assert_eq!(decode_binary("0bZm9vYg=="), Some(b"foob".to_vec()));
        assert_eq!(decode_binary("0bZm9vYg"), Some(b"foob".to_vec()));
        assert_eq!(decode_binary("0bZm9vYmE="), Some(b"fooba".to_vec()));
        assert_eq!(decode_binary("0bZ"), None);
        assert_eq!(decode_binary("0b!!!!"), None);
        assert_eq!(encode_base64(b"fooba"), "0bZm9vYmE=");
        assert_eq!(encode_hex(&[0, 0xab]), "0x00ab");
    }

    proptest! {
        #[test]
        fn binary_round_trip(bytes in prop::collection::vec(any::<u8>(), 1..100)) {
            prop_assert_eq!(decode_binary(&encode_hex(&bytes)), Some(bytes.clone()));
            prop_assert_eq!(decode_binary(&encode_base64(&bytes)), Some(bytes));
        }

        #[test]
        fn parse_never_panics(text in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse(&text);
        }

        #[test]
        fn text_round_trip(pairs in prop::collection::vec(
            ("[A-Za-z0-9._@+-]{1,63}", "[^\u{0}]{0,40}"), 0..10)) {
            let pairs: Vec<KeyValue> = pairs.into_iter().map(|(k, v)| KeyValue::new(k, v)).collect();
            let text = encode(&pairs);
            prop_assert_eq!(parse_allowing_duplicates(&text).unwrap(), pairs);
        }
    }
}

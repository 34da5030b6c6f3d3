//! Resource limits of the iSCSI front-end: `--limit KEY=VALUE` on the
//! command line, a `[limits]` table in the TOML file, the same keys in both.

use std::time::Duration;

use lunar_iscsi::server::ResourceLimits;

use super::check::parse_size;
use super::ConfigError;

/// The keys, in `--help` order.
pub const KEYS: &[&str] = &[
    "sessions-per-target",
    "connections-per-portal",
    "connections-per-address",
    "cmd-window",
    "unsolicited-bytes",
    "buffered-bytes",
    "negotiation-timeout",
    "poll-us",
];

/// Most seconds `negotiation-timeout` may be.
const MAX_TIMEOUT_SECS: u64 = 3600;

fn count(key: &str, value: &str, max: u64) -> Result<u64, ConfigError> {
    value
        .parse::<u64>()
        .ok()
        .filter(|n| (1..=max).contains(n) && value.bytes().all(|c| c.is_ascii_digit()))
        .ok_or_else(|| ConfigError::invalid_value(key, value, format!("expected 1..={max}")))
}

fn bytes(key: &str, value: &str, min: u64) -> Result<u64, ConfigError> {
    let n = parse_size(value).map_err(|r| ConfigError::invalid_value(key, value, r))?;
    if n < min {
        return Err(ConfigError::invalid_value(key, value, format!("at least {min} bytes")));
    }
    Ok(n)
}

/// Sets one limit from its text (the value of `--limit` or of a key of
/// `[limits]`).
pub(crate) fn set(limits: &mut ResourceLimits, key: &str, value: &str) -> Result<(), ConfigError> {
    match key {
        "sessions-per-target" => limits.max_sessions_per_target = count(key, value, 65535)? as usize,
        "connections-per-portal" => limits.max_connections_per_portal = count(key, value, 1 << 20)? as usize,
        "connections-per-address" => limits.max_connections_per_address = count(key, value, 1 << 20)? as usize,
        "cmd-window" => limits.cmd_window = count(key, value, u64::from(ResourceLimits::MAX_CMD_WINDOW))? as u32,
        // Below 512 bytes per command FirstBurstLength cannot go (RFC 7143 §13.14).
        "unsolicited-bytes" => limits.max_unsolicited_bytes = bytes(key, value, 0)?,
        // At least one R2T's worth (MaxBurstLength is at least 512).
        "buffered-bytes" => limits.max_buffered_bytes = bytes(key, value, 512)?,
        "negotiation-timeout" => {
            limits.negotiation_timeout = Duration::from_secs(count(key, value, MAX_TIMEOUT_SECS)?);
        }
        "poll-us" => {
            let max = lunar_iscsi::server::MAX_POLL.as_micros() as u64;
            let us = value
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= max && value.bytes().all(|c| c.is_ascii_digit()))
                .ok_or_else(|| ConfigError::invalid_value(key, value, format!("expected 0..={max}")))?;
            limits.poll = Duration::from_micros(us);
        }
        _ => {
            return Err(ConfigError::UnknownKey { what: "limits", key: key.escape_default().to_string(), valid: KEYS })
        }
    }
    Ok(())
}

/// `KEY=VALUE` of `--limit`.
pub(crate) fn set_pair(limits: &mut ResourceLimits, pair: &str) -> Result<(), ConfigError> {
    let (key, value) = pair.split_once('=').ok_or_else(|| {
        ConfigError::invalid_value("--limit", pair, format!("expected KEY=VALUE, KEY one of {}", KEYS.join(", ")))
    })?;
    set(limits, key, value).map_err(|e| e.context(format!("--limit `{pair}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_sets_its_limit_and_bad_values_are_refused() {
        let mut l = ResourceLimits::default();
        for pair in [
            "sessions-per-target=3",
            "connections-per-portal=10",
            "connections-per-address=4",
            "cmd-window=16",
            "unsolicited-bytes=1M",
            "buffered-bytes=2M",
            "negotiation-timeout=5",
            "poll-us=0",
        ] {
            set_pair(&mut l, pair).unwrap();
        }
        assert_eq!(
            l,
            ResourceLimits {
                max_sessions_per_target: 3,
                max_connections_per_portal: 10,
                max_connections_per_address: 4,
                cmd_window: 16,
                max_unsolicited_bytes: 1 << 20,
                max_buffered_bytes: 2 << 20,
                negotiation_timeout: Duration::from_secs(5),
                poll: Duration::ZERO,
            }
        );
        for bad in
            ["cmd-window=0", "cmd-window=65537", "sessions-per-target=-1", "buffered-bytes=100", "nope=1", "cmd-window"]
        {
            let e = set_pair(&mut l, bad).unwrap_err().to_string();
            assert!(e.contains("--limit"), "{bad}: {e}");
        }
        let e = set_pair(&mut l, "negotiation-timeout=0").unwrap_err().to_string();
        assert!(e.contains("expected 1..=3600"), "{e}");
        for bad in ["poll-us=1001", "poll-us=-1", "poll-us=+5", "poll-us="] {
            let e = set_pair(&mut l, bad).unwrap_err().to_string();
            assert!(e.contains("expected 0..=1000"), "{bad}: {e}");
        }
        set_pair(&mut l, "poll-us=1000").unwrap();
        assert_eq!(l.poll, Duration::from_millis(1));
    }
}

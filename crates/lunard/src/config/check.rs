//! Checks of single values: sizes, iSCSI names, addresses, paths, CHAP.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::{Chap, ConfigError, CHAP_SECRET_MAX, CHAP_SECRET_MIN, ISCSI_PORT};

/// Parse a size: a decimal number of bytes with an optional binary suffix
/// `K`, `M`, `G`, `T` (or `KiB`, `MiB`, `GiB`, `TiB`, or `B`), in any case.
/// The error is a reason, without the value.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const HELP: &str = "expected a number of bytes with an optional suffix K, M, G, T (or KiB, MiB, GiB, TiB), e.g. 64M";
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(HELP.to_string());
    }
    let n: u64 = s[..digits]
        .parse()
        .map_err(|_| "the number does not fit in 64 bits".to_string())?;
    let suffix = &s[digits..];
    let shift = match suffix.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        "kb" | "mb" | "gb" | "tb" => {
            return Err(format!(
                "decimal suffix `{suffix}` is not supported; sizes are binary: use {u} or {u}iB",
                u = suffix[..1].to_ascii_uppercase()
            ))
        }
        _ => return Err(format!("unknown suffix `{suffix}`; {HELP}")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| "the size does not fit in 64 bits".to_string())
}

/// Check an iSCSI name (RFC 7143 4.2.7.2, loosely): `iqn.yyyy-mm.authority[:anything]`
/// in lowercase `a-z 0-9 - . :`, `eui.` + 16 hex digits, or `naa.` + 16 or
/// 32 hex digits; at most 223 bytes. The error is a reason.
pub fn check_iscsi_name(name: &str) -> Result<(), String> {
    const FORMS: &str = "expected iqn.YYYY-MM.reversed.domain[:name], eui.<16 hex digits> or naa.<16 or 32 hex digits>";
    if name.is_empty() {
        return Err(format!("empty name; {FORMS}"));
    }
    if name.len() > 223 {
        return Err(format!("{} bytes, at most 223", name.len()));
    }
    let lower = name.to_ascii_lowercase();
    if let Some(rest) = lower.strip_prefix("iqn.") {
        if lower != name {
            return Err(format!("iSCSI names are lowercase; use `{lower}`"));
        }
        if let Some(c) = rest
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':')))
        {
            return Err(format!(
                "character {c:?} is not allowed (use a-z, 0-9, '-', '.', ':')"
            ));
        }
        let b = rest.as_bytes();
        let date_ok = b.len() >= 7
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && matches!(&rest[5..7], "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12");
        if !date_ok {
            return Err(format!(
                "`iqn.` must be followed by a date YYYY-MM (month 01..12); {FORMS}"
            ));
        }
        let after = &rest[7..];
        let authority = match after.strip_prefix('.') {
            Some(a) => a.split(':').next().unwrap_or(""),
            None => "",
        };
        if authority.is_empty() || authority.split('.').any(str::is_empty) {
            return Err(format!(
                "the date must be followed by `.` and a reversed domain name, like `.com.example`; {FORMS}"
            ));
        }
        Ok(())
    } else if let Some(hex) = lower.strip_prefix("eui.") {
        if name.starts_with("eui.") && hex.len() == 16 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
            Ok(())
        } else {
            Err(format!("`eui.` must be followed by exactly 16 hex digits; {FORMS}"))
        }
    } else if let Some(hex) = lower.strip_prefix("naa.") {
        if name.starts_with("naa.")
            && (hex.len() == 16 || hex.len() == 32)
            && hex.chars().all(|c| c.is_ascii_hexdigit())
        {
            Ok(())
        } else {
            Err(format!("`naa.` must be followed by 16 or 32 hex digits; {FORMS}"))
        }
    } else {
        Err(format!("unknown name type; {FORMS}"))
    }
}

/// An iSCSI name as a [`ConfigError`] naming `key`.
pub(crate) fn iscsi_name(key: &str, name: &str) -> Result<(), ConfigError> {
    check_iscsi_name(name).map_err(|r| ConfigError::invalid_value(key, name, r))
}

/// A portal: `ADDR:PORT`, `[IPv6]:PORT`, or an address alone (port 3260).
pub(crate) fn portal(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    let bare = s
        .strip_prefix('[')
        .and_then(|r| r.strip_suffix(']'))
        .unwrap_or(s);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, ISCSI_PORT));
    }
    Err(addr_reason(s))
}

/// A socket address with a port: `ADDR:PORT` or `[IPv6]:PORT`.
pub(crate) fn socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().map_err(|_| addr_reason(s))
}

fn addr_reason(s: &str) -> String {
    let host = match s.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => h,
        _ => s,
    };
    if !host.is_empty()
        && host.chars().any(|c| c.is_ascii_alphabetic())
        && !host.contains(':')
        && !host.starts_with('[')
    {
        "host names are not resolved; use an IP address, e.g. 127.0.0.1:3260 or [::1]:3260".to_string()
    } else {
        "expected ADDR:PORT with an IP address, e.g. 127.0.0.1:3260 or [::1]:3260 (IPv6 in brackets)".to_string()
    }
}

/// A unix socket path: not empty, fits `sun_path` (107 bytes and a NUL).
pub(crate) fn unix_socket_path(p: &Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let len = p.as_os_str().as_bytes().len();
    if len == 0 {
        return Err("empty path".to_string());
    }
    if p.as_os_str().as_bytes().contains(&0) {
        return Err("the path contains a NUL byte".to_string());
    }
    if len > 107 {
        return Err(format!(
            "{len} bytes; a unix socket path has at most 107 bytes"
        ));
    }
    Ok(())
}

/// A CHAP name and secret; `key` is `chap`, `mutual-chap` or
/// `discovery-chap`. The secret never appears in the message.
pub(crate) fn chap(key: &str, c: &Chap) -> Result<(), ConfigError> {
    if c.user.is_empty() || c.user.len() > 255 {
        return Err(ConfigError::invalid_value(
            format!("{key} user"),
            c.user.clone(),
            "expected 1..=255 bytes",
        ));
    }
    if c.user.chars().any(char::is_control) {
        return Err(ConfigError::invalid_value(
            format!("{key} user"),
            c.user.escape_default().to_string(),
            "control characters are not allowed",
        ));
    }
    let n = c.secret.len();
    if n < CHAP_SECRET_MIN {
        return Err(ConfigError::invalid(
            format!("{key} secret"),
            format!(
                "too short: {n} bytes, at least {CHAP_SECRET_MIN} (RFC 7143 12.1.3 asks for secrets of 12 bytes or more)"
            ),
        ));
    }
    if n > CHAP_SECRET_MAX {
        return Err(ConfigError::invalid(
            format!("{key} secret"),
            format!("too long: {n} bytes, at most {CHAP_SECRET_MAX}"),
        ));
    }
    if c.secret.contains('\0') {
        return Err(ConfigError::invalid(
            format!("{key} secret"),
            "contains a NUL byte",
        ));
    }
    Ok(())
}

/// A tracing `EnvFilter` directive string.
pub(crate) fn log_filter(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("empty filter; expected a level (error, warn, info, debug, trace) or directives like `info,lunar_iscsi=debug`".to_string());
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| ())
        .map_err(|e| format!("{e}; expected a level (error, warn, info, debug, trace) or directives like `info,lunar_iscsi=debug`"))
}

/// `on|off` (also `yes|no`, `true|false`).
pub(crate) fn on_off(key: &str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(ConfigError::invalid_value(key, v, "expected on or off")),
    }
}

/// Printable ASCII, `1..=max` characters.
pub(crate) fn printable_ascii(key: &str, v: &str, max: usize) -> Result<(), ConfigError> {
    if v.is_empty() || v.len() > max {
        return Err(ConfigError::invalid_value(
            key,
            v,
            format!("expected 1..={max} characters, got {}", v.chars().count()),
        ));
    }
    if let Some(c) = v.chars().find(|c| !(' '..='~').contains(c)) {
        return Err(ConfigError::invalid_value(
            key,
            v.escape_default().to_string(),
            format!("character {c:?} is not printable ASCII"),
        ));
    }
    Ok(())
}

//! Checks of single values: sizes, iSCSI names, addresses, paths, CHAP.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use super::{Chap, ConfigError, CHAP_SECRET_MAX, CHAP_SECRET_MIN, ISCSI_PORT};

/// Parse a size: a decimal number of bytes with an optional binary suffix
/// `K`, `M`, `G`, `T` (or `KiB`, `MiB`, `GiB`, `TiB`, or `B`), in any case.
/// The error is a reason, without the value.
pub fn parse_size(s: &str) -> Result<u64, String> {
    const HELP: &str =
        "expected a number of bytes with an optional suffix K, M, G, T (or KiB, MiB, GiB, TiB), e.g. 64M";
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(HELP.to_string());
    }
    let n: u64 = s[..digits].parse().map_err(|_| "the number does not fit in 64 bits".to_string())?;
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
    n.checked_mul(1u64 << shift).ok_or_else(|| "the size does not fit in 64 bits".to_string())
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
        if let Some(c) =
            rest.chars().find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':')))
        {
            return Err(format!("character {c:?} is not allowed (use a-z, 0-9, '-', '.', ':')"));
        }
        let b = rest.as_bytes();
        let date_ok = b.len() >= 7
            && b[..4].iter().all(u8::is_ascii_digit)
            && b[4] == b'-'
            && b[5..7].iter().all(u8::is_ascii_digit)
            && matches!(&rest[5..7], "01" | "02" | "03" | "04" | "05" | "06" | "07" | "08" | "09" | "10" | "11" | "12");
        if !date_ok {
            return Err(format!("`iqn.` must be followed by a date YYYY-MM (month 01..12); {FORMS}"));
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
/// A gateway's name: 1..=64 characters of `A-Z a-z 0-9 . _ -`.
pub(crate) fn gateway_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 64 {
        return Err("expected 1..=64 characters".into());
    }
    if !s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
        return Err("only letters, digits, `.`, `_` and `-`".into());
    }
    Ok(())
}

pub(crate) fn portal(s: &str) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Some(v6) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']')) {
        if let Ok(ip) = v6.parse::<std::net::Ipv6Addr>() {
            return Ok(SocketAddr::new(IpAddr::V6(ip), ISCSI_PORT));
        }
    }
    if let Ok(ip) = s.parse::<std::net::Ipv4Addr>() {
        return Ok(SocketAddr::new(IpAddr::V4(ip), ISCSI_PORT));
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        // `::1:3260` would be ambiguous: an address, or ::1 and a port?
        return Err(format!("an IPv6 address needs brackets: [{s}] or [{s}]:PORT (e.g. [::1]:3260)"));
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
        return Err(format!("{len} bytes; a unix socket path has at most 107 bytes"));
    }
    Ok(())
}

/// A CHAP name and secret; `key` is `chap`, `mutual-chap` or
/// `discovery-chap` (messages name `chap.user`, `chap.secret`), or the
/// flag prefix `--chap` (messages name `--chap-user`, `--chap-secret`).
/// The secret never appears in the message.
pub(crate) fn chap(key: &str, c: &Chap) -> Result<(), ConfigError> {
    let sep = if key.starts_with("--") { '-' } else { '.' };
    let user_key = format!("{key}{sep}user");
    let secret_key = format!("{key}{sep}secret");
    if c.user.is_empty() || c.user.len() > 255 {
        return Err(ConfigError::invalid_value(user_key.as_str(), c.user.clone(), "expected 1..=255 bytes"));
    }
    if c.user.chars().any(char::is_control) {
        return Err(ConfigError::invalid_value(
            user_key.as_str(),
            c.user.escape_default().to_string(),
            "control characters are not allowed",
        ));
    }
    let n = c.secret.len();
    if n < CHAP_SECRET_MIN {
        return Err(ConfigError::invalid(
            secret_key.as_str(),
            format!(
                "too short: {n} bytes, at least {CHAP_SECRET_MIN} (RFC 7143 12.1.3 asks for secrets of 12 bytes or more)"
            ),
        ));
    }
    if n > CHAP_SECRET_MAX {
        return Err(ConfigError::invalid(
            secret_key.as_str(),
            format!("too long: {n} bytes, at most {CHAP_SECRET_MAX}"),
        ));
    }
    if c.secret.contains('\0') {
        return Err(ConfigError::invalid(secret_key.as_str(), "contains a NUL byte"));
    }
    Ok(())
}

/// A TargetAlias (RFC 7143 §13.6): UTF-8 text of 1..=255 bytes (the
/// longest text value a key may have without an exception), no control
/// characters.
pub(crate) fn alias(key: &str, a: &str) -> Result<(), ConfigError> {
    if a.is_empty() || a.len() > 255 {
        return Err(ConfigError::invalid_value(key, a, format!("expected 1..=255 bytes, got {}", a.len())));
    }
    if a.chars().any(char::is_control) {
        return Err(ConfigError::invalid_value(
            key,
            a.escape_default().to_string(),
            "control characters are not allowed",
        ));
    }
    Ok(())
}

/// A tracing `EnvFilter` directive string.
pub(crate) fn log_filter(s: &str) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err("empty filter; expected a level (error, warn, info, debug, trace) or directives like `info,lunar_iscsi=debug`".to_string());
    }
    tracing_subscriber::EnvFilter::try_new(s).map(|_| ()).map_err(|e| {
        format!("{e}; expected a level (error, warn, info, debug, trace) or directives like `info,lunar_iscsi=debug`")
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iscsi_names_good() {
        for n in [
            "iqn.2026-11.dev.lunar:disk0",
            "iqn.1994-05.com.redhat:client",
            "iqn.2001-04.com.example",
            "iqn.2001-04.com.example:storage:diskarrays-sn-a8675309",
            "iqn.2001-04.com.example:storage.tape1.sys1.xyz",
            "eui.02004567A425678D",
            "eui.02004567a425678d",
            "naa.52004567BA64678D",
            "naa.62004567BA64678D0123456789ABCDEF",
        ] {
            assert_eq!(check_iscsi_name(n), Ok(()), "{n}");
        }
        let long = format!("iqn.2001-04.com.example:{}", "a".repeat(223 - 24));
        assert_eq!(long.len(), 223);
        assert_eq!(check_iscsi_name(&long), Ok(()));
    }

    #[test]
    fn iscsi_names_bad() {
        for (n, why) in [
            ("", "empty"),
            ("IQN.2026-11.dev.lunar:disk0", "lowercase; use `iqn.2026-11.dev.lunar:disk0`"),
            ("iqn.2026-11.dev.Lunar:disk0", "lowercase"),
            ("iqn.2026-11.dev.lunar:disk_0", "'_' is not allowed"),
            ("iqn.2026-11.dev.lunar:disk 0", "' ' is not allowed"),
            ("iqn.2026-13.dev.lunar:x", "date YYYY-MM"),
            ("iqn.26-11.dev.lunar:x", "date YYYY-MM"),
            ("iqn.2026-11", "reversed domain"),
            ("iqn.2026-11:x", "reversed domain"),
            ("iqn.2026-11.:x", "reversed domain"),
            ("iqn.2026-11.com..example", "reversed domain"),
            ("iqn.2026-11x.com.example", "reversed domain"),
            ("eui.02004567A425678", "16 hex digits"),
            ("eui.02004567A425678G", "16 hex digits"),
            ("EUI.02004567A425678D", "16 hex digits"),
            ("naa.1234", "16 or 32 hex digits"),
            ("disk0", "unknown name type"),
            ("iqn.é", "not allowed"),
        ] {
            let e = check_iscsi_name(n).expect_err(n);
            assert!(e.contains(why), "{n}: `{e}` lacks `{why}`");
        }
        let long = format!("iqn.2001-04.com.example:{}", "a".repeat(200));
        assert!(check_iscsi_name(&long).unwrap_err().contains("at most 223"));
    }

    #[test]
    fn portals() {
        assert_eq!(portal("127.0.0.1:3260"), Ok("127.0.0.1:3260".parse().unwrap()));
        assert_eq!(portal("0.0.0.0:13260"), Ok("0.0.0.0:13260".parse().unwrap()));
        assert_eq!(portal("[::1]:3261"), Ok("[::1]:3261".parse().unwrap()));
        assert_eq!(portal("[fe80::1%2]:3260").map(|a| a.port()), Ok(3260));
        // Without a port: the iSCSI port.
        assert_eq!(portal("10.0.0.1"), Ok("10.0.0.1:3260".parse().unwrap()));
        assert_eq!(portal("[::]"), Ok("[::]:3260".parse().unwrap()));
        assert!(portal("::").unwrap_err().contains("needs brackets: [::]"));
        assert!(portal("localhost:3260").unwrap_err().contains("host names are not resolved"));
        assert!(portal("::1:3260").unwrap_err().contains("needs brackets"));
        for bad in ["", "1.2.3.4:99999", "1.2.3.4:", "[::1:3260", "1.2.3:3260", ":3260"] {
            assert!(portal(bad).unwrap_err().contains("expected ADDR:PORT"), "{bad}");
        }
        assert!(socket_addr("127.0.0.1").is_err(), "metrics needs a port");
        assert_eq!(socket_addr("[::1]:9100").map(|a| a.port()), Ok(9100));
    }

    #[test]
    fn chap_rules() {
        let c = |user: &str, secret: &str| Chap { user: user.into(), secret: secret.into() };
        assert!(chap("chap", &c("alice", "twelve bytes")).is_ok());
        assert!(chap("chap", &c("alice", &"s".repeat(255))).is_ok());
        let e = chap("chap", &c("alice", "elevenbytes")).unwrap_err().to_string();
        assert!(e.contains("`chap.secret`") && e.contains("too short: 11 bytes, at least 12"), "{e}");
        assert!(!e.contains("elevenbytes"), "the secret is not shown: {e}");
        let e = chap("mutual-chap", &c("a", &"s".repeat(256))).unwrap_err().to_string();
        assert!(e.contains("`mutual-chap.secret`") && e.contains("at most 255"), "{e}");
        let e = chap("chap", &c("", "twelve bytes")).unwrap_err().to_string();
        assert!(e.contains("`chap.user`"), "{e}");
        let e = chap("--chap", &c("a\nb", "twelve bytes")).unwrap_err().to_string();
        assert!(e.contains("`--chap-user`"), "{e}");
        assert!(e.contains("control characters"), "{e}");
        let dbg = format!("{:?}", c("alice", "twelve bytes"));
        assert!(dbg.contains("alice") && !dbg.contains("twelve"), "{dbg}");
    }

    #[test]
    fn log_filters() {
        for ok in ["info", "debug", "warn,lunar_iscsi=trace", "lunar_core[dev]=debug"] {
            assert_eq!(log_filter(ok), Ok(()), "{ok}");
        }
        for bad in ["", "  ", "info,foo=loud", "lunar=[["] {
            assert!(log_filter(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn socket_paths() {
        assert!(unix_socket_path(Path::new("/run/lunar/lunard.sock")).is_ok());
        assert!(unix_socket_path(Path::new("")).is_err());
        let p = format!("/{}", "x".repeat(106));
        assert!(unix_socket_path(Path::new(&p)).is_ok());
        let p = format!("/{}", "x".repeat(107));
        assert!(unix_socket_path(Path::new(&p)).unwrap_err().contains("at most 107"));
    }
}

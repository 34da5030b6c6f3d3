//! LUN SPEC strings (`backend=mem,size=1G,thin=on`) and the checks of a
//! [`LunConfig`]. The TOML form of a LUN goes through the same builder.

use std::path::PathBuf;
use std::str::FromStr;

use super::check::{on_off, parse_size, printable_ascii, unix_socket_path};
use super::{BackendSpec, ConfigError, LunConfig, Policy, MAX_IOTHREADS, MAX_MEM_SIZE};

/// Every key of a LUN SPEC, in the order of the `--help`.
pub(crate) const LUN_KEYS: &[&str] = &[
    "backend",
    "size",
    "path",
    "direct",
    "block-size",
    "readonly",
    "removable",
    "thin",
    "rerror",
    "werror",
    "serial",
    "vendor",
    "product",
    "controller",
    "iothread",
];

pub(crate) const BACKENDS: &[&str] = &["mem", "null", "file"];
pub(crate) const DEFAULT_VENDOR: &str = "LUNAR";
pub(crate) const DEFAULT_PRODUCT: &str = "Lunar disk";
/// Largest size of any backend: the largest file offset (`off_t`).
const MAX_SIZE: u64 = i64::MAX as u64;

/// Split at `,`; `,,` is a literal comma. Always at least one item.
pub(crate) fn split_items(spec: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut cur = String::new();
    let mut chars = spec.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                items.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    items.push(cur);
    items
}

/// `key=value` items of a SPEC (after unescaping).
pub(crate) fn split_pairs(spec: &str) -> Result<Vec<(String, String)>, ConfigError> {
    if spec.is_empty() {
        return Err(ConfigError::invalid(
            "spec",
            "empty; expected key=value pairs separated by commas, e.g. backend=mem,size=1G",
        ));
    }
    split_items(spec)
        .into_iter()
        .map(|item| match item.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ if item.is_empty() => Err(ConfigError::invalid(
                "spec",
                "empty item (a stray comma? write `,,` for a comma inside a value)",
            )),
            _ => Err(ConfigError::invalid_value(
                "spec",
                item.escape_default().to_string(),
                "expected key=value",
            )),
        })
        .collect()
}

pub(crate) fn parse_spec(spec: &str) -> Result<LunConfig, ConfigError> {
    let mut b = LunBuilder::default();
    for (k, v) in split_pairs(spec)? {
        b.set(&k, &v)?;
    }
    b.finish()
}

/// Collects the keys of one LUN, from a SPEC or a TOML table.
#[derive(Default)]
pub(crate) struct LunBuilder {
    seen: Vec<&'static str>,
    backend: Option<&'static str>,
    size: Option<u64>,
    path: Option<PathBuf>,
    direct: Option<bool>,
    block_size: Option<u32>,
    readonly: Option<bool>,
    removable: Option<bool>,
    thin: Option<bool>,
    rerror: Option<Policy>,
    werror: Option<Policy>,
    serial: Option<String>,
    vendor: Option<String>,
    product: Option<String>,
    controller: Option<PathBuf>,
    iothread: Option<usize>,
}

impl LunBuilder {
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<(), ConfigError> {
        let Some(&k) = LUN_KEYS.iter().find(|k| **k == key) else {
            return Err(ConfigError::UnknownKey {
                what: "LUN spec",
                key: key.escape_default().to_string(),
                valid: LUN_KEYS,
            });
        };
        if self.seen.contains(&k) {
            return Err(ConfigError::DuplicateKey {
                what: "LUN spec",
                key: k.to_string(),
            });
        }
        self.seen.push(k);
        if value.is_empty() {
            return Err(ConfigError::invalid_value(k, "", "empty value"));
        }
        let bad = |reason: &str| ConfigError::invalid_value(k, value.escape_default().to_string(), reason);
        match k {
            "backend" => {
                let b = BACKENDS
                    .iter()
                    .find(|b| **b == value)
                    .ok_or_else(|| bad("expected one of mem, null, file"))?;
                self.backend = Some(b);
            }
            "size" => self.size = Some(parse_size(value).map_err(|r| bad(&r))?),
            "path" => self.path = Some(PathBuf::from(value)),
            "direct" => self.direct = Some(on_off(k, value)?),
            "block-size" => {
                self.block_size = Some(match value {
                    "512" => 512,
                    "4096" => 4096,
                    _ => return Err(bad("expected 512 or 4096")),
                })
            }
            "readonly" => self.readonly = Some(on_off(k, value)?),
            "removable" => self.removable = Some(on_off(k, value)?),
            "thin" => self.thin = Some(on_off(k, value)?),
            "rerror" | "werror" => {
                let p = Policy::from_str(value).map_err(|_| {
                    bad(&format!("expected one of {}", Policy::NAMES.join(", ")))
                })?;
                if k == "rerror" {
                    self.rerror = Some(p);
                } else {
                    self.werror = Some(p);
                }
            }
            "serial" => {
                printable_ascii(k, value, 20)?;
                self.serial = Some(value.to_string());
            }
            "vendor" => {
                printable_ascii(k, value, 8)?;
                self.vendor = Some(value.to_string());
            }
            "product" => {
                printable_ascii(k, value, 16)?;
                self.product = Some(value.to_string());
            }
            "controller" => self.controller = Some(PathBuf::from(value)),
            "iothread" => {
                let reason = format!("expected an I/O thread number 0..{MAX_IOTHREADS}");
                let n: usize = value
                    .parse()
                    .ok()
                    .filter(|n| *n < MAX_IOTHREADS && value.bytes().all(|c| c.is_ascii_digit()))
                    .ok_or_else(|| bad(&reason))?;
                self.iothread = Some(n);
            }
            _ => unreachable!("every key of LUN_KEYS is handled"),
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> Result<LunConfig, ConfigError> {
        let kind = match (self.backend, &self.path) {
            (Some(b), _) => b,
            (None, Some(_)) => "file",
            (None, None) => {
                return Err(ConfigError::invalid(
                    "backend",
                    "missing: give backend=mem|null|file (or path=FILE for a file)",
                ))
            }
        };
        let backend = if kind == "file" {
            let Some(path) = self.path else {
                return Err(ConfigError::invalid(
                    "path",
                    "missing: backend=file needs path=FILE",
                ));
            };
            BackendSpec::File {
                path,
                size: self.size,
                direct: self.direct.unwrap_or(false),
            }
        } else {
            if self.path.is_some() {
                return Err(ConfigError::invalid(
                    "path",
                    format!("only for backend=file, not backend={kind}"),
                ));
            }
            if self.direct.is_some() {
                return Err(ConfigError::invalid(
                    "direct",
                    format!("only for backend=file, not backend={kind}"),
                ));
            }
            let Some(size) = self.size else {
                return Err(ConfigError::invalid(
                    "size",
                    format!("missing: backend={kind} needs size=, e.g. size=1G"),
                ));
            };
            if kind == "mem" {
                BackendSpec::Mem { size }
            } else {
                BackendSpec::Null { size }
            }
        };
        let lun = LunConfig {
            backend,
            block_size: self.block_size.unwrap_or(512),
            readonly: self.readonly.unwrap_or(false),
            removable: self.removable.unwrap_or(false),
            thin: self.thin.unwrap_or(true),
            rerror: self.rerror.unwrap_or(Policy::Report),
            werror: self.werror.unwrap_or(Policy::Enospc),
            serial: self.serial,
            vendor: self.vendor.unwrap_or_else(|| DEFAULT_VENDOR.to_string()),
            product: self.product.unwrap_or_else(|| DEFAULT_PRODUCT.to_string()),
            controller: self.controller,
            iothread: self.iothread,
        };
        validate(&lun)?;
        Ok(lun)
    }
}

pub(crate) fn validate(lun: &LunConfig) -> Result<(), ConfigError> {
    let bs = lun.block_size;
    if bs != 512 && bs != 4096 {
        return Err(ConfigError::invalid_value(
            "block-size",
            bs.to_string(),
            "expected 512 or 4096",
        ));
    }
    if let Some(size) = lun.backend.size() {
        let bad = |reason: String| ConfigError::invalid_value("size", size.to_string(), reason);
        if size == 0 {
            return Err(bad("must be more than 0".into()));
        }
        if size % u64::from(bs) != 0 {
            return Err(bad(format!(
                "not a multiple of the block size ({bs} bytes)"
            )));
        }
        if size > MAX_SIZE {
            return Err(bad("larger than the largest file offset (2^63 - 1)".into()));
        }
        if matches!(lun.backend, BackendSpec::Mem { .. }) && size > MAX_MEM_SIZE {
            return Err(bad(format!(
                "{} is more than 1 TiB, the limit of backend=mem",
                human_size(size)
            )));
        }
    }
    if let BackendSpec::File { path, .. } = &lun.backend {
        use std::os::unix::ffi::OsStrExt;
        let bytes = path.as_os_str().as_bytes();
        if bytes.is_empty() || bytes.contains(&0) {
            return Err(ConfigError::invalid_value(
                "path",
                path.display().to_string().escape_default().to_string(),
                "expected a non-empty path without NUL bytes",
            ));
        }
    }
    if let Some(s) = &lun.serial {
        printable_ascii("serial", s, 20)?;
    }
    printable_ascii("vendor", &lun.vendor, 8)?;
    printable_ascii("product", &lun.product, 16)?;
    if let Some(c) = &lun.controller {
        unix_socket_path(c).map_err(|r| {
            ConfigError::invalid_value("controller", c.display().to_string(), r)
        })?;
    }
    if let Some(n) = lun.iothread {
        if n >= MAX_IOTHREADS {
            return Err(ConfigError::invalid_value(
                "iothread",
                n.to_string(),
                format!("expected an I/O thread number 0..{MAX_IOTHREADS}"),
            ));
        }
    }
    Ok(())
}

/// `512 B`, `64.0 MiB`, `1.0 GiB`.
pub(crate) fn human_size(n: u64) -> String {
    const UNITS: &[&str] = &["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut unit = 0;
    let mut scale = 1024u64;
    while unit + 1 < UNITS.len() && n / scale >= 1024 {
        unit += 1;
        scale *= 1024;
    }
    // u64 -> f64 rounds above 2^53; fine for one decimal.
    format!("{:.1} {}", n as f64 / scale as f64, UNITS[unit])
}

pub(crate) fn describe(lun: &LunConfig) -> String {
    let mut parts = vec![match &lun.backend {
        BackendSpec::Mem { size } => format!("mem {}", human_size(*size)),
        BackendSpec::Null { size } => format!("null {}", human_size(*size)),
        BackendSpec::File { path, size, direct } => {
            let size = size.map_or_else(|| "size of the file".to_string(), human_size);
            let direct = if *direct { ", O_DIRECT" } else { "" };
            format!("file {} ({size}){direct}", path.display())
        }
    }];
    parts.push(format!("{}-byte blocks", lun.block_size));
    for (on, what) in [
        (lun.readonly, "readonly"),
        (lun.removable, "removable"),
        (lun.thin, "thin"),
    ] {
        if on {
            parts.push(what.to_string());
        }
    }
    if lun.rerror != Policy::Report {
        parts.push(format!("rerror={}", lun.rerror));
    }
    if lun.werror != Policy::Enospc {
        parts.push(format!("werror={}", lun.werror));
    }
    if let Some(n) = lun.iothread {
        parts.push(format!("iothread {n}"));
    }
    if let Some(c) = &lun.controller {
        parts.push(format!("vhost-user {}", c.display()));
    }
    parts.join(", ")
}

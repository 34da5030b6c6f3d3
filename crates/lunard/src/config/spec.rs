//! LUN SPEC strings (`backend=mem,size=1G,thin=on`) and the checks of a
//! [`LunConfig`]. The TOML form of a LUN goes through the same builder.

use std::path::PathBuf;
use std::str::FromStr;

use super::check::{on_off, parse_size, printable_ascii, unix_socket_path};
use super::{BackendSpec, ConfigError, LunConfig, Policy, RbdSpec, MAX_IOTHREADS, MAX_MEM_SIZE};

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
    "fault",
    "pool",
    "image",
    "namespace",
    "conf",
    "id",
    "keyring",
    "exclusive",
    "pr",
    "alua",
];

/// The keys only `backend=rbd` takes.
const RBD_KEYS: &[&str] = &["pool", "image", "namespace", "conf", "id", "keyring", "exclusive", "pr", "alua"];

pub(crate) const BACKENDS: &[&str] = &["mem", "null", "file", "rbd"];
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
            _ if item.is_empty() => {
                Err(ConfigError::invalid("spec", "empty item (a stray comma? write `,,` for a comma inside a value)"))
            }
            _ => Err(ConfigError::invalid_value("spec", item.escape_default().to_string(), "expected key=value")),
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
    fault: Option<bool>,
    rbd: RbdSpec,
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
            return Err(ConfigError::DuplicateKey { what: "LUN spec", key: k.to_string() });
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
                    .ok_or_else(|| bad("expected one of mem, null, file, rbd"))?;
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
            "fault" => self.fault = Some(on_off(k, value)?),
            "removable" => self.removable = Some(on_off(k, value)?),
            "thin" => self.thin = Some(on_off(k, value)?),
            "rerror" | "werror" => {
                let p = Policy::from_str(value)
                    .map_err(|_| bad(&format!("expected one of {}", Policy::NAMES.join(", "))))?;
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
            "pool" | "image" | "namespace" | "id" => {
                if value.contains('/') && k != "id" {
                    return Err(bad("must not contain `/`"));
                }
                printable_ascii(k, value, 256)?;
                let v = Some(value.to_string());
                match k {
                    "pool" => self.rbd.pool = value.to_string(),
                    "image" => self.rbd.image = value.to_string(),
                    "namespace" => self.rbd.namespace = v,
                    _ => self.rbd.id = v,
                }
            }
            "conf" => self.rbd.conf = Some(PathBuf::from(value)),
            "keyring" => self.rbd.keyring = Some(PathBuf::from(value)),
            "exclusive" => self.rbd.exclusive = on_off(k, value)?,
            "pr" => {
                self.rbd.pr_cluster = match value {
                    "local" => false,
                    "cluster" => true,
                    _ => return Err(bad("expected `local` or `cluster`")),
                }
            }
            "alua" => {
                self.rbd.all_active = match value {
                    "owner" => false,
                    "all-active" => true,
                    _ => return Err(bad("expected `owner` or `all-active`")),
                }
            }
            // Every key of LUN_KEYS is handled above; keep this total.
            _ => return Err(ConfigError::UnknownKey { what: "LUN spec", key: k.to_string(), valid: LUN_KEYS }),
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
                    "missing: give backend=mem|null|file|rbd (or path=FILE for a file)",
                ))
            }
        };
        if kind != "rbd" {
            if let Some(k) = RBD_KEYS.iter().find(|k| self.seen.contains(k)) {
                return Err(ConfigError::invalid(*k, format!("only for backend=rbd, not backend={kind}")));
            }
        }
        let backend = if kind == "rbd" {
            for (k, what) in [("path", "the image is pool= and image="), ("direct", "librbd has no O_DIRECT")] {
                if self.seen.contains(&k) {
                    return Err(ConfigError::invalid(k, format!("not for backend=rbd ({what})")));
                }
            }
            if self.size.is_some() {
                return Err(ConfigError::invalid(
                    "size",
                    "not for backend=rbd: the LUN has the image's size (create it with `rbd create`, change it with `lunarctl lun resize`)",
                ));
            }
            for (k, v) in [("pool", &self.rbd.pool), ("image", &self.rbd.image)] {
                if v.is_empty() {
                    return Err(ConfigError::invalid(k, "missing: backend=rbd needs pool=POOL,image=NAME"));
                }
            }
            if self.rbd.all_active && self.rbd.exclusive {
                return Err(ConfigError::invalid(
                    "alua",
                    "all-active lets every gateway write the image; exclusive=on keeps its lock in one client",
                ));
            }
            if self.rbd.all_active && !self.rbd.pr_cluster {
                return Err(ConfigError::invalid(
                    "alua",
                    "all-active needs pr=cluster: with every gateway writing, reservations and resets must be shared",
                ));
            }
            BackendSpec::Rbd(self.rbd)
        } else if kind == "file" {
            let Some(path) = self.path else {
                return Err(ConfigError::invalid("path", "missing: backend=file needs path=FILE"));
            };
            BackendSpec::File { path, size: self.size, direct: self.direct.unwrap_or(false) }
        } else {
            if self.path.is_some() {
                return Err(ConfigError::invalid("path", format!("only for backend=file, not backend={kind}")));
            }
            if self.direct.is_some() {
                return Err(ConfigError::invalid("direct", format!("only for backend=file, not backend={kind}")));
            }
            let Some(size) = self.size else {
                return Err(ConfigError::invalid("size", format!("missing: backend={kind} needs size=, e.g. size=1G")));
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
            fault: self.fault.unwrap_or(false),
            number: None,
        };
        validate(&lun)?;
        Ok(lun)
    }
}

pub(crate) fn validate(lun: &LunConfig) -> Result<(), ConfigError> {
    let bs = lun.block_size;
    if bs != 512 && bs != 4096 {
        return Err(ConfigError::invalid_value("block-size", bs.to_string(), "expected 512 or 4096"));
    }
    if let Some(size) = lun.backend.size() {
        let bad = |reason: String| ConfigError::invalid_value("size", size.to_string(), reason);
        if size == 0 {
            return Err(bad("must be more than 0".into()));
        }
        if size % u64::from(bs) != 0 {
            return Err(bad(format!("not a multiple of the block size ({bs} bytes)")));
        }
        if size > MAX_SIZE {
            return Err(bad("larger than the largest file offset (2^63 - 1)".into()));
        }
        if matches!(lun.backend, BackendSpec::Mem { .. }) && size > MAX_MEM_SIZE {
            return Err(bad(format!("{} is more than 1 TiB, the limit of backend=mem", human_size(size))));
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
        unix_socket_path(c).map_err(|r| ConfigError::invalid_value("controller", c.display().to_string(), r))?;
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
        BackendSpec::Rbd(r) => {
            let mut s = format!("rbd {}/", r.pool);
            if let Some(ns) = &r.namespace {
                s.push_str(&format!("{ns}/"));
            }
            s.push_str(&r.image);
            if let Some(c) = &r.conf {
                s.push_str(&format!(" (conf {})", c.display()));
            }
            if let Some(id) = &r.id {
                s.push_str(&format!(" as client.{id}"));
            }
            if r.exclusive {
                s.push_str(", exclusive lock held");
            }
            if r.pr_cluster {
                s.push_str(", reservations shared by the cluster");
            }
            if r.all_active {
                s.push_str(", every gateway active");
            }
            s
        }
    }];
    parts.push(format!("{}-byte blocks", lun.block_size));
    for (on, what) in
        [(lun.readonly, "readonly"), (lun.removable, "removable"), (lun.thin, "thin"), (lun.fault, "fault injection")]
    {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(spec: &str) -> LunConfig {
        parse_spec(spec).unwrap_or_else(|e| panic!("{spec}: {e}"))
    }

    /// The error message for a SPEC that must be refused.
    fn err(spec: &str) -> String {
        match parse_spec(spec) {
            Ok(l) => panic!("{spec} was accepted: {l:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn has(msg: &str, parts: &[&str]) {
        for p in parts {
            assert!(msg.contains(p), "`{msg}` lacks `{p}`");
        }
    }

    #[test]
    fn minimal_mem_and_defaults() {
        let l = ok("backend=mem,size=1G");
        assert_eq!(l.backend, BackendSpec::Mem { size: 1 << 30 });
        assert_eq!(l.block_size, 512);
        assert!(!l.readonly && !l.removable && l.thin);
        assert_eq!((l.rerror, l.werror), (Policy::Report, Policy::Enospc));
        assert_eq!(l.serial, None);
        assert_eq!((l.vendor.as_str(), l.product.as_str()), ("LUNAR", "Lunar disk"));
        assert_eq!((&l.controller, l.iothread), (&None, None));
        assert_eq!(l.describe(), "mem 1.0 GiB, 512-byte blocks, thin");
    }

    #[test]
    fn every_key_accepted() {
        let l = ok("backend=file,path=/srv/a.img,size=4T,direct=on,block-size=4096,readonly=on,\
                    removable=yes,thin=off,rerror=stop,werror=ignore,serial=SN-0001 x,vendor=ACME,\
                    product=Fast Disk 9000,controller=/run/lunar/vm0.sock,iothread=3");
        assert_eq!(l.backend, BackendSpec::File { path: "/srv/a.img".into(), size: Some(4 << 40), direct: true });
        assert_eq!(l.block_size, 4096);
        assert!(l.readonly && l.removable && !l.thin);
        assert_eq!((l.rerror, l.werror), (Policy::Stop, Policy::Ignore));
        assert_eq!(l.serial.as_deref(), Some("SN-0001 x"));
        assert_eq!((l.vendor.as_str(), l.product.as_str()), ("ACME", "Fast Disk 9000"));
        assert_eq!(l.controller, Some(PathBuf::from("/run/lunar/vm0.sock")));
        assert_eq!(l.iothread, Some(3));
        assert_eq!(
            l.describe(),
            "file /srv/a.img (4.0 TiB), O_DIRECT, 4096-byte blocks, readonly, removable, \
             rerror=stop, werror=ignore, iothread 3, vhost-user /run/lunar/vm0.sock"
        );
    }

    #[test]
    fn backends() {
        assert_eq!(ok("backend=null,size=1T").backend, BackendSpec::Null { size: 1 << 40 });
        // path= implies file; size optional for file.
        assert_eq!(
            ok("path=/dev/sdb").backend,
            BackendSpec::File { path: "/dev/sdb".into(), size: None, direct: false }
        );
        assert_eq!(ok("path=/x").describe(), "file /x (size of the file), 512-byte blocks, thin");
        has(&err("size=1G"), &["`backend`", "missing", "mem|null|file"]);
        has(&err("backend=disk,size=1G"), &["`disk`", "`backend`", "mem, null, file"]);
        has(&err("backend=MEM,size=1G"), &["`MEM`", "`backend`"]);
        has(&err("backend=file"), &["`path`", "missing"]);
        has(&err("backend=mem"), &["`size`", "missing", "backend=mem"]);
        has(&err("backend=null"), &["`size`", "missing", "backend=null"]);
        has(&err("backend=mem,size=1G,path=/x"), &["`path`", "only for backend=file"]);
        has(&err("backend=null,size=1G,direct=on"), &["`direct`", "only for backend=file"]);
    }

    #[test]
    fn rbd_specs() {
        let l = ok("backend=rbd,pool=rbd,image=disk0");
        assert_eq!(
            l.backend,
            BackendSpec::Rbd(RbdSpec { pool: "rbd".into(), image: "disk0".into(), ..Default::default() })
        );
        assert_eq!(l.backend.size(), None);
        assert_eq!(l.describe(), "rbd rbd/disk0, 512-byte blocks, thin");
        let l = ok("backend=rbd,pool=p,image=i,namespace=ns,conf=/etc/ceph/x.conf,id=lunar,keyring=/k,werror=stop");
        assert_eq!(
            l.backend,
            BackendSpec::Rbd(RbdSpec {
                pool: "p".into(),
                image: "i".into(),
                namespace: Some("ns".into()),
                conf: Some("/etc/ceph/x.conf".into()),
                id: Some("lunar".into()),
                keyring: Some("/k".into()),
                exclusive: false,
                pr_cluster: false,
                all_active: false,
            })
        );
        assert_eq!(
            l.describe(),
            "rbd p/ns/i (conf /etc/ceph/x.conf) as client.lunar, 512-byte blocks, thin, werror=stop"
        );
        has(&err("backend=rbd,image=i"), &["`pool`", "missing", "pool=POOL,image=NAME"]);
        has(&err("backend=rbd,pool=p"), &["`image`", "missing"]);
        has(&err("backend=rbd,pool=p,image=i,size=1G"), &["`size`", "image's size", "lun resize"]);
        has(&err("backend=rbd,pool=p,image=i,path=/x"), &["`path`", "not for backend=rbd"]);
        has(&err("backend=rbd,pool=p,image=i,direct=on"), &["`direct`", "not for backend=rbd"]);
        has(&err("backend=rbd,pool=p/q,image=i"), &["`pool`", "`/`"]);
        has(&err("backend=mem,size=1G,pool=p"), &["`pool`", "only for backend=rbd"]);
        has(&err("path=/x,image=i"), &["`image`", "only for backend=rbd"]);
        has(&err("backend=tape,size=1G"), &["mem, null, file, rbd"]);
        let l = ok("backend=rbd,pool=p,image=i,exclusive=on");
        assert!(matches!(&l.backend, BackendSpec::Rbd(r) if r.exclusive));
        assert_eq!(l.describe(), "rbd p/i, exclusive lock held, 512-byte blocks, thin");
        has(&err("backend=rbd,pool=p,image=i,exclusive=maybe"), &["`exclusive`", "`maybe`"]);
        has(&err("backend=mem,size=1G,exclusive=on"), &["`exclusive`", "only for backend=rbd"]);
        let l = ok("backend=rbd,pool=p,image=i,pr=cluster");
        assert!(matches!(&l.backend, BackendSpec::Rbd(r) if r.pr_cluster));
        assert_eq!(l.describe(), "rbd p/i, reservations shared by the cluster, 512-byte blocks, thin");
        assert!(matches!(&ok("backend=rbd,pool=p,image=i,pr=local").backend, BackendSpec::Rbd(r) if !r.pr_cluster));
        has(&err("backend=rbd,pool=p,image=i,pr=everywhere"), &["`pr`", "`local` or `cluster`"]);
        has(&err("backend=mem,size=1G,pr=cluster"), &["`pr`", "only for backend=rbd"]);
        has(&err("backend=rbd,pool=p,image=i,alua=all-active"), &["`alua`", "needs pr=cluster"]);
        let l = ok("backend=rbd,pool=p,image=i,pr=cluster,alua=all-active");
        assert!(matches!(&l.backend, BackendSpec::Rbd(r) if r.all_active && r.pr_cluster));
        assert_eq!(
            l.describe(),
            "rbd p/i, reservations shared by the cluster, every gateway active, 512-byte blocks, thin"
        );
        assert!(matches!(&ok("backend=rbd,pool=p,image=i,alua=owner").backend, BackendSpec::Rbd(r) if !r.all_active));
        has(&err("backend=rbd,pool=p,image=i,alua=some"), &["`alua`", "`owner` or `all-active`"]);
        has(&err("backend=rbd,pool=p,image=i,pr=cluster,alua=all-active,exclusive=on"), &["`alua`", "exclusive=on"]);
        has(&err("backend=file,path=/x,alua=all-active"), &["`alua`", "only for backend=rbd"]);
    }

    #[test]
    fn sizes() {
        for (s, n) in [
            ("512", 512),
            ("4k", 4096),
            ("4K", 4096),
            ("4KiB", 4096),
            ("4kib", 4096),
            ("3M", 3 << 20),
            ("3MiB", 3 << 20),
            ("2g", 2 << 30),
            ("2GiB", 2 << 30),
            ("1t", 1 << 40),
            ("1TiB", 1 << 40),
            ("1024B", 1024),
        ] {
            assert_eq!(parse_size(s), Ok(n), "{s}");
            assert_eq!(ok(&format!("backend=null,size={s}")).backend.size(), Some(n));
        }
        has(&err("backend=mem,size=1Q"), &["`1Q`", "`size`", "unknown suffix `Q`", "K, M, G, T"]);
        has(&err("backend=mem,size=1GB"), &["`1GB`", "`size`", "decimal", "G or GiB"]);
        has(&err("backend=mem,size=1.5G"), &["`1.5G`", "`size`"]);
        has(&err("backend=mem,size=G"), &["`G`", "`size`"]);
        has(&err("backend=mem,size=-1"), &["`-1`", "`size`"]);
        has(&err("backend=mem,size=+512"), &["`+512`", "`size`"]);
        has(&err("backend=mem,size= 1G"), &["`size`"]);
        has(&err("backend=null,size=99999999999999999999"), &["`size`", "64 bits"]);
        has(&err("backend=null,size=17179869184T"), &["`size`", "64 bits"]);
        has(&err("backend=null,size=0"), &["`0`", "`size`", "more than 0"]);
        has(&err("backend=null,size=1000"), &["`1000`", "`size`", "multiple of the block size (512"]);
        has(&err("backend=null,size=6K,block-size=4096"), &["`6144`", "multiple", "4096"]);
        has(&err("path=/x,size=100"), &["`size`", "multiple"]);
        // mem is capped at 1 TiB; null is not.
        assert_eq!(ok("backend=mem,size=1T").backend.size(), Some(1 << 40));
        has(&err("backend=mem,size=1025G"), &["`size`", "1 TiB"]);
        assert_eq!(ok("backend=null,size=8000T").backend.size(), Some(8000 << 40));
        has(&err("backend=null,size=8388608T"), &["`size`", "largest file offset"]);
    }

    #[test]
    fn block_size() {
        assert_eq!(ok("backend=mem,size=1M,block-size=512").block_size, 512);
        assert_eq!(ok("backend=mem,size=1M,block-size=4096").block_size, 4096);
        for bad in ["1024", "0", "4k", "-512", "x"] {
            has(
                &err(&format!("backend=mem,size=1M,block-size={bad}")),
                &[&format!("`{bad}`"), "`block-size`", "512 or 4096"],
            );
        }
    }

    #[test]
    fn on_off_values() {
        for key in ["readonly", "removable", "thin"] {
            for (v, b) in [("on", true), ("off", false), ("true", true), ("no", false), ("ON", true)] {
                let l = ok(&format!("backend=mem,size=1M,{key}={v}"));
                let got = match key {
                    "readonly" => l.readonly,
                    "removable" => l.removable,
                    _ => l.thin,
                };
                assert_eq!(got, b, "{key}={v}");
            }
            has(&err(&format!("backend=mem,size=1M,{key}=maybe")), &["`maybe`", &format!("`{key}`"), "on or off"]);
        }
        assert!(!ok("path=/x,direct=off").backend_direct());
        has(&err("path=/x,direct=1"), &["`1`", "`direct`", "on or off"]);
    }

    impl LunConfig {
        fn backend_direct(&self) -> bool {
            matches!(self.backend, BackendSpec::File { direct: true, .. })
        }
    }

    #[test]
    fn fault_injection_key() {
        assert!(!ok("backend=mem,size=1M").fault);
        assert!(ok("backend=mem,size=1M,fault=on").fault);
        assert!(ok("path=/x,fault=on").fault);
        assert!(describe(&ok("backend=mem,size=1M,fault=on")).contains("fault injection"));
        has(&err("backend=mem,size=1M,fault=maybe"), &["`fault`", "on or off"]);
    }

    #[test]
    fn policies() {
        for (name, p) in
            [("report", Policy::Report), ("ignore", Policy::Ignore), ("stop", Policy::Stop), ("enospc", Policy::Enospc)]
        {
            let l = ok(&format!("backend=mem,size=1M,rerror={name},werror={name}"));
            assert_eq!((l.rerror, l.werror), (p, p));
            assert_eq!(p.to_string(), name);
        }
        has(&err("backend=mem,size=1M,werror=retry"), &["`retry`", "`werror`", "report, ignore, stop, enospc"]);
        has(&err("backend=mem,size=1M,rerror=Stop"), &["`Stop`", "`rerror`"]);
    }

    #[test]
    fn strings() {
        ok("backend=mem,size=1M,serial=12345678901234567890");
        has(&err("backend=mem,size=1M,serial=123456789012345678901"), &["`serial`", "1..=20", "got 21"]);
        has(&err("backend=mem,size=1M,serial=caf\u{e9}"), &["`serial`", "not printable ASCII"]);
        has(&err("backend=mem,size=1M,serial=a\tb"), &["`serial`", "\\t"]);
        has(&err("backend=mem,size=1M,vendor=ABCDEFGHI"), &["`ABCDEFGHI`", "`vendor`", "1..=8"]);
        has(&err("backend=mem,size=1M,product=ABCDEFGHIJKLMNOPQ"), &["`product`", "1..=16"]);
        has(&err("backend=mem,size=1M,serial="), &["`serial`", "empty value"]);
        has(&err("backend=mem,size=1M,controller="), &["`controller`", "empty value"]);
        let long = format!("backend=mem,size=1M,controller=/{}", "s".repeat(107));
        has(&err(&long), &["`controller`", "108 bytes", "107"]);
        assert_eq!(ok("backend=mem,size=1M,iothread=63").iothread, Some(63));
        for bad in ["64", "-1", "x", "+1", "1.0"] {
            has(&err(&format!("backend=mem,size=1M,iothread={bad}")), &["`iothread`", "0..64"]);
        }
    }

    #[test]
    fn unknown_and_duplicate_keys() {
        let m = err("backend=mem,size=1M,sise=2M");
        has(&m, &["unknown key `sise`", "valid keys: backend, size, path, direct, block-size"]);
        has(&m, &["iothread"]);
        has(&err("backend=mem,size=1M,Size=2M"), &["unknown key `Size`"]);
        has(&err("backend=mem,size=1M,size=2M"), &["duplicate key `size`"]);
        has(&err("backend=mem,backend=null,size=1M"), &["duplicate key `backend`"]);
        has(&err("backend=mem,size=1M,mem"), &["`mem`", "expected key=value"]);
        has(&err("=1,backend=mem"), &["expected key=value"]);
        has(&err(""), &["empty"]);
        has(&err("backend=mem,size=1M,"), &["empty item"]);
        has(&err(",backend=mem,size=1M"), &["empty item"]);
    }

    #[test]
    fn comma_escape() {
        let l = ok("backend=file,path=/srv/a,,b.img,size=1M");
        assert_eq!(l.backend, BackendSpec::File { path: "/srv/a,b.img".into(), size: Some(1 << 20), direct: false });
        let l = ok("path=/x,,,,y,,,serial=a,,b");
        assert_eq!(l.backend, BackendSpec::File { path: "/x,,y,".into(), size: None, direct: false });
        assert_eq!(l.serial.as_deref(), Some("a,b"));
        // A value may hold '='.
        let l = ok("path=/a=b");
        assert_eq!(l.backend, BackendSpec::File { path: "/a=b".into(), size: None, direct: false });
        assert_eq!(split_items("a,,b,c"), vec!["a,b", "c"]);
        assert_eq!(split_items(",,,"), vec![",", ""]);
        assert_eq!(split_items(""), vec![""]);
    }

    #[test]
    fn human_sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(64 << 20), "64.0 MiB");
        assert_eq!(human_size(1536 << 20), "1.5 GiB");
        assert_eq!(human_size(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn validate_hand_built() {
        let mut l = ok("backend=mem,size=1M");
        l.block_size = 1000;
        has(&l.validate().unwrap_err().to_string(), &["`block-size`", "`1000`"]);
        l.block_size = 4096;
        l.backend = BackendSpec::Mem { size: 1000 };
        has(&l.validate().unwrap_err().to_string(), &["`size`", "multiple"]);
        l.backend = BackendSpec::File { path: PathBuf::new(), size: None, direct: false };
        has(&l.validate().unwrap_err().to_string(), &["`path`", "non-empty"]);
        l.backend = BackendSpec::Mem { size: 4096 };
        l.vendor = String::new();
        has(&l.validate().unwrap_err().to_string(), &["`vendor`"]);
    }

    proptest::proptest! {
        #[test]
        fn parse_spec_never_panics(s in "\\PC*") {
            let _ = parse_spec(&s);
        }

        #[test]
        fn parse_spec_never_panics_on_near_misses(
            items in proptest::collection::vec(
                (proptest::sample::select(LUN_KEYS), "[a-zA-Z0-9,=./ ]{0,12}"), 0..8)
        ) {
            let spec: Vec<String> = items.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let spec = spec.join(",");
            if let Ok(l) = parse_spec(&spec) {
                proptest::prop_assert!(l.validate().is_ok());
                let _ = l.describe();
            }
        }

        #[test]
        fn sizes_round_trip(n in 1u64..(1 << 20), unit in 0usize..4) {
            let suffix = ["K", "M", "G", "T"][unit];
            let shift = 10 * (unit as u32 + 1);
            let expect = n.checked_mul(1u64 << shift);
            proptest::prop_assert_eq!(parse_size(&format!("{n}{suffix}")).ok(), expect);
        }
    }
}

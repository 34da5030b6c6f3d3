//! The TOML configuration file: several targets, the same settings as the
//! command line, converted into the same validated types.
//!
//! Relative paths in the file (`control`, `[[vhost-user]] socket`, a LUN's
//! `path` and `controller`) are relative to the directory of the file.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use super::check;
use super::spec::{split_pairs, LunBuilder};
use super::{
    BackendSpec, Chap, ConfigError, GatewayConfig, LunConfig, TargetConfig, VhostUserConfig, MAX_IOTHREADS,
    MAX_VHOST_POLL_US, MAX_VHOST_QUEUES,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileRoot {
    iothreads: Option<u64>,
    listen: Option<Vec<String>>,
    control: Option<PathBuf>,
    metrics: Option<String>,
    log: Option<String>,
    discovery_chap: Option<FileChap>,
    #[serde(default)]
    vhost_user: Vec<FileVhostUser>,
    #[serde(default)]
    target: Vec<FileTarget>,
    /// `[[gateway]]`: the gateways (lunard processes) that serve the same
    /// targets and LUNs, one target port group each (issue 16).
    #[serde(default)]
    gateway: Vec<FileGateway>,
    /// Which `[[gateway]]` this process is (a key of its own: TOML cannot
    /// have `gateway` both as a string and as the array of tables).
    local_gateway: Option<String>,
    /// `[limits]`: the keys of `--limit`, with numbers or strings as values.
    limits: Option<toml::Table>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileChap {
    user: String,
    secret: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileGateway {
    name: String,
    portal: String,
    preferred: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileVhostUser {
    socket: PathBuf,
    num_queues: Option<u64>,
    poll_us: Option<u64>,
    max_chain: Option<u64>,
    max_request_bytes: Option<Size>,
    max_inflight: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileTarget {
    name: String,
    alias: Option<String>,
    #[serde(default)]
    allow_initiators: Vec<String>,
    chap: Option<FileChap>,
    mutual_chap: Option<FileChap>,
    #[serde(default)]
    lun: Vec<FileLun>,
}

/// A LUN: either `spec = "..."` alone, or the SPEC keys as TOML keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileLun {
    /// The LUN number; default: the previous LUN's + 1 (0 for the first).
    lun: Option<u64>,
    spec: Option<String>,
    backend: Option<String>,
    size: Option<Size>,
    path: Option<String>,
    direct: Option<bool>,
    block_size: Option<u64>,
    readonly: Option<bool>,
    removable: Option<bool>,
    thin: Option<bool>,
    rerror: Option<String>,
    werror: Option<String>,
    serial: Option<String>,
    vendor: Option<String>,
    product: Option<String>,
    controller: Option<String>,
    iothread: Option<u64>,
    fault: Option<bool>,
    pool: Option<String>,
    image: Option<String>,
    namespace: Option<String>,
    conf: Option<String>,
    id: Option<String>,
    keyring: Option<String>,
    exclusive: Option<bool>,
    pr: Option<String>,
    alua: Option<String>,
}

/// `size = 1073741824` or `size = "1G"`.
struct Size(String);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Size;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size in bytes or a string like \"64M\"")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Size, E> {
                Ok(Size(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Size, E> {
                if v < 0 {
                    Err(E::invalid_value(de::Unexpected::Signed(v), &self))
                } else {
                    Ok(Size(v.to_string()))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Size, E> {
                Ok(Size(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The file's settings, each checked; merged with the command line later.
#[derive(Debug, Default)]
pub(crate) struct FileSettings {
    pub limits: lunar_iscsi::server::ResourceLimits,
    pub iothreads: Option<usize>,
    pub portals: Option<Vec<SocketAddr>>,
    pub control: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    pub log: Option<String>,
    pub discovery_chap: Option<Chap>,
    pub vhost_user: Vec<VhostUserConfig>,
    pub targets: Vec<TargetConfig>,
    pub gateways: Vec<GatewayConfig>,
    pub local_gateway: Option<String>,
}

/// Read and convert the file at `path`.
pub(crate) fn load(path: &Path) -> Result<FileSettings, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io { path: path.to_path_buf(), source })?;
    parse(&text, path)
}

/// Convert the text of a file; `path` names it in messages and anchors
/// relative paths.
pub(crate) fn parse(text: &str, path: &Path) -> Result<FileSettings, ConfigError> {
    let root: FileRoot = ::toml::from_str(text).map_err(|e| {
        let place = e.span().and_then(|span| place_of(text, span.start));
        let message = e.to_string().trim_end().to_string();
        ConfigError::Toml {
            path: path.to_path_buf(),
            message: match place {
                Some(place) => format!("{place}: {message}"),
                None => message,
            },
        }
    })?;
    let base = path.parent().unwrap_or(Path::new(""));
    convert(root, base).map_err(|e| e.context(format!("config file {}", path.display())))
}

/// `target 1, LUN 0` for a byte offset of the text, from the `[[target]]`
/// and `[[target.lun]]` headers before it (a hint for serde's errors).
fn place_of(text: &str, offset: usize) -> Option<String> {
    let (mut target, mut lun): (Option<usize>, Option<usize>) = (None, None);
    let mut start = 0;
    for line in text.split_inclusive('\n') {
        if start > offset {
            break;
        }
        start += line.len();
        let header: String = line.chars().filter(|c| !c.is_whitespace()).collect();
        if header.starts_with("[[target]]") {
            target = Some(target.map_or(0, |t| t + 1));
            lun = None;
        } else if header.starts_with("[[target.lun]]") {
            lun = Some(lun.map_or(0, |l| l + 1));
        } else if header.starts_with('[') && !header.starts_with("[target.") {
            target = None;
            lun = None;
        }
    }
    match (target, lun) {
        (Some(t), Some(l)) => Some(format!("target {t}, LUN {l}")),
        (Some(t), None) => Some(format!("target {t}")),
        _ => None,
    }
}

fn rebase(base: &Path, p: PathBuf) -> PathBuf {
    if p.is_relative() && !base.as_os_str().is_empty() {
        base.join(p)
    } else {
        p
    }
}

fn chap(key: &str, c: Option<FileChap>) -> Result<Option<Chap>, ConfigError> {
    let Some(c) = c else { return Ok(None) };
    let chap = Chap { user: c.user, secret: c.secret };
    check::chap(key, &chap)?;
    Ok(Some(chap))
}

fn convert(root: FileRoot, base: &Path) -> Result<FileSettings, ConfigError> {
    let iothreads = match root.iothreads {
        None => None,
        Some(n) if (1..=MAX_IOTHREADS as u64).contains(&n) => Some(n as usize),
        Some(n) => {
            return Err(ConfigError::invalid_value("iothreads", n.to_string(), format!("expected 1..={MAX_IOTHREADS}")))
        }
    };
    let portals = match root.listen {
        None => None,
        Some(list) => Some(
            list.iter()
                .map(|s| check::portal(s).map_err(|r| ConfigError::invalid_value("listen", s.as_str(), r)))
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let metrics = match root.metrics {
        None => None,
        Some(s) => Some(check::socket_addr(&s).map_err(|r| ConfigError::invalid_value("metrics", s.as_str(), r))?),
    };
    if let Some(log) = &root.log {
        check::log_filter(log).map_err(|r| ConfigError::invalid_value("log", log.as_str(), r))?;
    }
    let control = root.control.map(|p| rebase(base, p));
    if let Some(c) = &control {
        check::unix_socket_path(c).map_err(|r| ConfigError::invalid_value("control", c.display().to_string(), r))?;
    }
    let vhost_user = root
        .vhost_user
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let num_queues = match v.num_queues {
                None => None,
                Some(n) if (1..=u64::from(MAX_VHOST_QUEUES)).contains(&n) => Some(n as u16),
                Some(n) => {
                    return Err(ConfigError::invalid_value(
                        "num-queues",
                        n.to_string(),
                        format!("expected 1..={MAX_VHOST_QUEUES}"),
                    )
                    .context(format!("vhost-user {i}")))
                }
            };
            let poll_us = match v.poll_us {
                None => None,
                Some(n) if n <= u64::from(MAX_VHOST_POLL_US) => Some(n as u16),
                Some(n) => {
                    return Err(ConfigError::invalid_value(
                        "poll-us",
                        n.to_string(),
                        format!("expected 0..={MAX_VHOST_POLL_US}"),
                    )
                    .context(format!("vhost-user {i}")))
                }
            };
            let mut limits = lunar_vhost::VhostLimits::default();
            let texts = [
                ("max-chain", v.max_chain.map(|n| n.to_string())),
                ("max-request-bytes", v.max_request_bytes.map(|s| s.0)),
                ("max-inflight", v.max_inflight.map(|n| n.to_string())),
            ];
            for (key, text) in texts {
                if let Some(text) = text {
                    super::cli::set_vhost_limit(&mut limits, key, &text)
                        .map_err(|e| e.context(format!("vhost-user {i}")))?;
                }
            }
            limits.validate().map_err(|r| ConfigError::invalid(format!("vhost-user {i}"), r.to_string()))?;
            Ok(VhostUserConfig { socket: rebase(base, v.socket), num_queues, poll_us, limits })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let targets = root
        .target
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let ctx = format!("target {i} (`{}`)", t.name);
            target(t, base).map_err(|e| e.context(ctx))
        })
        .collect::<Result<Vec<TargetConfig>, _>>()?;
    for (i, t) in targets.iter().enumerate() {
        if targets[..i].iter().any(|u| u.name == t.name) {
            return Err(ConfigError::invalid_value("name", t.name.as_str(), "target defined twice")
                .context(format!("target {i} (`{}`)", t.name)));
        }
    }
    let mut limits = lunar_iscsi::server::ResourceLimits::default();
    for (key, value) in root.limits.unwrap_or_default() {
        let text = match &value {
            toml::Value::String(s) => s.clone(),
            toml::Value::Integer(n) => n.to_string(),
            other => {
                return Err(ConfigError::invalid_value(
                    key.as_str(),
                    other.to_string(),
                    "expected a number or a string",
                )
                .context("[limits]"))
            }
        };
        super::limits::set(&mut limits, &key, &text).map_err(|e| e.context("[limits]"))?;
    }
    let gateways = root
        .gateway
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            let portal = check::portal(&g.portal).map_err(|r| {
                ConfigError::invalid_value("portal", g.portal.as_str(), r).context(format!("gateway {i}"))
            })?;
            Ok(GatewayConfig { name: g.name, portal, preferred: g.preferred.unwrap_or(false) })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    super::check_gateways(&gateways)?;
    Ok(FileSettings {
        gateways,
        local_gateway: root.local_gateway,
        limits,
        iothreads,
        portals,
        control,
        metrics,
        log: root.log,
        discovery_chap: chap("discovery-chap", root.discovery_chap)?,
        vhost_user,
        targets,
    })
}

fn target(t: FileTarget, base: &Path) -> Result<TargetConfig, ConfigError> {
    check::iscsi_name("name", &t.name)?;
    for name in &t.allow_initiators {
        check::iscsi_name("allow-initiators", name)?;
    }
    if let Some(a) = &t.alias {
        check::alias("alias", a)?;
    }
    let luns = t
        .lun
        .into_iter()
        .enumerate()
        .map(|(i, l)| lun(l, base).map_err(|e| e.context(format!("LUN {i}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let target = TargetConfig {
        name: t.name,
        luns,
        chap: chap("chap", t.chap)?,
        mutual_chap: chap("mutual-chap", t.mutual_chap)?,
        allow_initiators: t.allow_initiators,
        alias: t.alias,
    };
    target.check_numbers()?;
    Ok(target)
}

fn lun(l: FileLun, base: &Path) -> Result<LunConfig, ConfigError> {
    let number = l.lun;
    let on = |b: bool| if b { "on" } else { "off" }.to_string();
    let keyed: Vec<(&str, Option<String>)> = vec![
        ("backend", l.backend),
        ("size", l.size.map(|s| s.0)),
        ("path", l.path),
        ("direct", l.direct.map(on)),
        ("block-size", l.block_size.map(|n| n.to_string())),
        ("readonly", l.readonly.map(on)),
        ("removable", l.removable.map(on)),
        ("thin", l.thin.map(on)),
        ("rerror", l.rerror),
        ("werror", l.werror),
        ("serial", l.serial),
        ("vendor", l.vendor),
        ("product", l.product),
        ("controller", l.controller),
        ("iothread", l.iothread.map(|n| n.to_string())),
        ("fault", l.fault.map(on)),
        ("pool", l.pool),
        ("image", l.image),
        ("namespace", l.namespace),
        ("conf", l.conf),
        ("id", l.id),
        ("keyring", l.keyring),
        ("exclusive", l.exclusive.map(on)),
        ("pr", l.pr),
        ("alua", l.alua),
    ];
    let pairs: Vec<(String, String)> = keyed.into_iter().filter_map(|(k, v)| v.map(|v| (k.to_string(), v))).collect();
    let pairs = match l.spec {
        Some(spec) => {
            if let Some((k, _)) = pairs.first() {
                return Err(ConfigError::invalid(
                    "spec",
                    format!("cannot be combined with other keys (found `{k}`): give either `spec` or the keys"),
                ));
            }
            split_pairs(&spec).map_err(|e| e.context(format!("spec `{spec}`")))?
        }
        None => pairs,
    };
    let mut b = LunBuilder::default();
    for (k, v) in &pairs {
        b.set(k, v)?;
    }
    let mut lun = b.finish()?;
    if let BackendSpec::File { path, .. } = &mut lun.backend {
        *path = rebase(base, std::mem::take(path));
    }
    if let BackendSpec::Rbd(r) = &mut lun.backend {
        r.conf = r.conf.take().map(|c| rebase(base, c));
        r.keyring = r.keyring.take().map(|k| rebase(base, k));
    }
    lun.controller = lun.controller.map(|c| rebase(base, c));
    lun.number = number;
    Ok(lun)
}

//! The configuration of `lunard`: parsed and validated in one place.
//!
//! Sources: the command line ([`Config::from_args`]) and, with `--config
//! FILE`, a TOML file. Both are turned into the same validated types; the
//! daemon acts on a [`Config`] only, never on raw strings. Nothing here
//! touches the file system except reading the TOML file (and `/proc/self`
//! to tell whether we run as root): files of the `file` backend are opened,
//! created or sized by the daemon later, see [`BackendSpec::File`].
//!
//! # Precedence (command line over file)
//!
//! * Scalars (`--iothreads`, `--control`, `--metrics`, `--log`, the
//!   discovery CHAP pair): the command line wins over the file, which wins
//!   over the built-in default.
//! * `--listen`: if given at least once, the command-line list *replaces*
//!   the file's `listen` list (so a file can be reused on other portals).
//! * `--vhost-user`: *appended* to the file's `[[vhost-user]]` list.
//! * Target flags (`--lun`, `--chap-*`, `--mutual-chap-*`,
//!   `--allow-initiator`) apply to one target: the one named by `--target`
//!   (taken from the file if it defines it, else added after the file's
//!   targets); without `--target`, the file's only target, or the default
//!   target `iqn.2026-11.dev.lunar:disk0` if the file defines none (if it
//!   defines several, `--target` is required). On that target `--lun`
//!   LUNs are appended after the file's LUNs (numbering continues),
//!   `--allow-initiator` entries are added to the file's list, and a CHAP
//!   pair replaces the file's.
//! * If no target results, the default target is used. A target that
//!   comes from the command line without any `--lun` gets the default LUN
//!   0 (`backend=mem,size=1G`); a target in the file may have none
//!   (`lunarctl lun add` adds them).
//!
//! # Write-back
//!
//! [`Config::write_back`] says where changes made through the control
//! socket are written ([`persist`]): into the `--config` file, unless the
//! command line adds targets or LUNs the file does not hold, or the file
//! defines no target.

mod check;
mod cli;
mod limits;
pub mod persist;
mod spec;
mod toml;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub(crate) use check::{chap as check_chap, portal as parse_portal};
pub use check::{check_iscsi_name, parse_size};

/// The target served when none is configured.
pub const DEFAULT_TARGET: &str = "iqn.2026-11.dev.lunar:disk0";
/// LUN 0 of a target given without LUNs on the command line.
pub const DEFAULT_LUN_SPEC: &str = "backend=mem,size=1G";
/// The iSCSI port (IANA).
pub const ISCSI_PORT: u16 = 3260;
/// The portal used when none is configured.
pub const DEFAULT_PORTAL: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), ISCSI_PORT);
/// The tracing filter used when none is configured.
pub const DEFAULT_LOG: &str = "info";
/// Bounds of `iothreads`.
pub const MAX_IOTHREADS: usize = 64;
/// Largest `mem` LUN: memory is allocated on first write, but a LUN larger
/// than this is almost surely a typo.
pub const MAX_MEM_SIZE: u64 = 1 << 40;
/// LUNs per target: the SAM-5 flat space addressing method covers 0..16384.
pub const MAX_LUNS_PER_TARGET: usize = 16384;
/// Bounds of a CHAP secret in bytes (RFC 7143 12.1.3 asks for at least 12
/// bytes of secret; the text value of CHAP_R limits it from above).
pub const CHAP_SECRET_MIN: usize = 12;
pub const CHAP_SECRET_MAX: usize = 255;
/// virtio allows 1024 virtqueues; virtio-scsi uses 2 for control and events.
pub const MAX_VHOST_QUEUES: u16 = 1022;
/// Longest ring poll of a vhost-user request queue (`poll-us`), in microseconds.
pub const MAX_VHOST_POLL_US: u16 = 1000;

/// The whole, validated configuration of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Number of I/O threads, `1..=MAX_IOTHREADS`.
    pub iothreads: usize,
    /// iSCSI portals to listen on; never empty, no duplicates.
    pub portals: Vec<SocketAddr>,
    /// iSCSI targets; never empty, names unique.
    pub targets: Vec<TargetConfig>,
    /// CHAP required by the discovery session, if any.
    pub discovery_chap: Option<Chap>,
    /// Path of the JSON-RPC control socket.
    pub control: PathBuf,
    /// Address of the metrics endpoint; off if `None`.
    pub metrics: Option<SocketAddr>,
    /// vhost-user-scsi controllers (sockets to listen on).
    pub vhost_user: Vec<VhostUserConfig>,
    /// A `tracing_subscriber::EnvFilter` directive string, already checked.
    pub log: String,
    /// What one iSCSI initiator may claim (`--limit`, `[limits]`).
    pub limits: lunar_iscsi::server::ResourceLimits,
    /// Where changes made through the control socket are written.
    pub write_back: WriteBack,
    /// The portals came from `--listen`, which replaces the file's
    /// `listen`: portal changes are then not written back.
    pub listen_from_cli: bool,
    /// The discovery CHAP pair came from `--discovery-chap-*`, which wins
    /// over the file's: its changes are then not written back.
    pub discovery_chap_from_cli: bool,
    /// The gateways serving the same targets (`[[gateway]]`); empty: this
    /// process alone, without ALUA.
    pub gateways: Vec<GatewayConfig>,
    /// Which gateway this process is (`local-gateway`, `--gateway`);
    /// required with `gateways`, refused without.
    pub local_gateway: Option<String>,
    /// `local_gateway` came from `--gateway`.
    pub gateway_from_cli: bool,
}

/// One gateway of the target (issue 16): a `lunard` process and the
/// portal its initiators reach it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayConfig {
    /// 1..=64 characters of `A-Z a-z 0-9 . _ -`; unique.
    pub name: String,
    /// A specific address and port (no wildcard, no port 0); unique.
    pub portal: SocketAddr,
    /// PREF of its target port group in REPORT TARGET PORT GROUPS (a hint
    /// to multipath software; default false).
    pub preferred: bool,
}

/// Most gateways of one configuration (a REPORT TARGET PORT GROUPS
/// descriptor count is one byte).
pub const MAX_GATEWAYS: usize = 255;

/// Where the changes made through the control socket (`lun.add`, ...)
/// are written, so that they survive a restart.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteBack {
    /// Into the `--config` file (edited in place: comments and order kept).
    File(PathBuf),
    /// Nowhere: the changes last until the daemon stops. Why.
    Off(String),
}

/// One iSCSI target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetConfig {
    /// iSCSI name (`iqn.`, `eui.` or `naa.`).
    pub name: String,
    /// The LUNs, in order; see [`TargetConfig::numbered`] for their numbers.
    /// May be empty (a target that exposes no LUN yet).
    pub luns: Vec<LunConfig>,
    /// One-way CHAP: the initiator must authenticate with this.
    pub chap: Option<Chap>,
    /// Mutual CHAP: the target authenticates to the initiator with this.
    /// Only with `chap`, and with a different secret.
    pub mutual_chap: Option<Chap>,
    /// Initiator names allowed to log in; empty = allow all.
    pub allow_initiators: Vec<String>,
    /// TargetAlias sent in the login answer of normal sessions (RFC 7143
    /// §13.6: a human-readable name); none sent if `None`.
    pub alias: Option<String>,
}

/// A CHAP name and secret. `Debug` does not show the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Chap {
    pub user: String,
    /// `CHAP_SECRET_MIN..=CHAP_SECRET_MAX` bytes.
    pub secret: String,
}

impl fmt::Debug for Chap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Chap").field("user", &self.user).field("secret", &"<redacted>").finish()
    }
}

/// A vhost-user-scsi controller: `--vhost-user PATH[,num-queues=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VhostUserConfig {
    /// The unix socket the daemon listens on (QEMU connects to it).
    pub socket: PathBuf,
    /// Request virtqueues; `None` = the daemon's choice.
    pub num_queues: Option<u16>,
    /// Longest poll of a request ring before its I/O thread sleeps, in
    /// microseconds; `None` = the default.
    pub poll_us: Option<u16>,
    /// What the guest may claim: descriptors per chain, bytes per request,
    /// requests in flight per queue (checked with `VhostLimits::validate`).
    pub limits: lunar_vhost::VhostLimits,
}

/// What stores a LUN's blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendSpec {
    /// RAM, allocated on first write; `size <= MAX_MEM_SIZE`.
    Mem { size: u64 },
    /// Discards writes, reads zeros.
    Null { size: u64 },
    /// A raw file or block device.
    ///
    /// `size: None`: the LUN has the size of the file, which must exist.
    /// `size: Some(n)`: if the file is missing, the daemon creates it sparse
    /// with `n` bytes; if it exists, its size must be `n` (it is never grown
    /// or cut implicitly). `n` is a multiple of the block size.
    File {
        path: PathBuf,
        size: Option<u64>,
        /// Open with `O_DIRECT`.
        direct: bool,
    },
    /// A Ceph RBD image (which must exist; the LUN has its size).
    Rbd(RbdSpec),
}

/// Where a `backend=rbd` LUN's image is and how to reach its cluster.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RbdSpec {
    pub pool: String,
    pub image: String,
    pub namespace: Option<String>,
    /// ceph.conf; librados' default search when `None`.
    pub conf: Option<PathBuf>,
    /// Client name without `client.` (`admin` when `None`).
    pub id: Option<String>,
    pub keyring: Option<PathBuf>,
    /// Take the image's exclusive lock at open and keep it (`exclusive=on`):
    /// no other client can write the image, and COMPARE AND WRITE of any
    /// size is atomic.
    pub exclusive: bool,
    /// Persistent reservations live in the cluster, shared with the other
    /// gateways serving the image (`pr=cluster`; default `pr=local`: this
    /// process's memory). See docs/cluster.md.
    pub pr_cluster: bool,
    /// With `[[gateway]]`: every gateway serves the image Active/Optimized
    /// and writes it (`alua=all-active`); default `alua=owner`: the holder
    /// of the image's lock is the only Active/Optimized gateway, the others
    /// Standby. See docs/cluster.md.
    pub all_active: bool,
}

impl BackendSpec {
    /// `mem`, `null`, `file` or `rbd`.
    pub fn kind(&self) -> &'static str {
        match self {
            BackendSpec::Mem { .. } => "mem",
            BackendSpec::Null { .. } => "null",
            BackendSpec::File { .. } => "file",
            BackendSpec::Rbd(_) => "rbd",
        }
    }

    /// The configured size, if known before opening the backend.
    pub fn size(&self) -> Option<u64> {
        match self {
            BackendSpec::Mem { size } | BackendSpec::Null { size } => Some(*size),
            BackendSpec::File { size, .. } => *size,
            BackendSpec::Rbd(_) => None,
        }
    }
}

/// Error policy of a direction (QEMU's `rerror=` / `werror=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// CHECK CONDITION to the initiator.
    Report,
    /// Complete as if it succeeded.
    Ignore,
    /// Stop the target; the request is retried on resume.
    Stop,
    /// `Stop` on ENOSPC, `Report` otherwise.
    Enospc,
}

impl Policy {
    pub const NAMES: &'static [&'static str] = &["report", "ignore", "stop", "enospc"];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Report => "report",
            Policy::Ignore => "ignore",
            Policy::Stop => "stop",
            Policy::Enospc => "enospc",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Policy {
    type Err = ConfigError;
    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "report" => Ok(Policy::Report),
            "ignore" => Ok(Policy::Ignore),
            "stop" => Ok(Policy::Stop),
            "enospc" => Ok(Policy::Enospc),
            _ => Err(ConfigError::invalid_value("policy", s, format!("expected one of {}", Policy::NAMES.join(", ")))),
        }
    }
}

/// One SCSI logical unit (a disk).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunConfig {
    pub backend: BackendSpec,
    /// 512 or 4096; the size is a multiple of it.
    pub block_size: u32,
    pub readonly: bool,
    /// RMB bit of INQUIRY.
    pub removable: bool,
    /// Logical block provisioning (UNMAP). Default on.
    pub thin: bool,
    /// Default `report`.
    pub rerror: Policy,
    /// Default `enospc` (as QEMU).
    pub werror: Policy,
    /// Unit serial number: 1..=20 printable ASCII characters.
    pub serial: Option<String>,
    /// T10 vendor identification: 1..=8 printable ASCII. Default `LUNAR`.
    pub vendor: String,
    /// Product identification: 1..=16 printable ASCII. Default `Lunar disk`.
    pub product: String,
    /// The vhost-user controller (its socket path) that exposes this LUN.
    pub controller: Option<PathBuf>,
    /// Home I/O thread, `< iothreads`; `None` = the daemon's choice.
    pub iothread: Option<usize>,
    /// The backend is wrapped for fault injection (tests): `lunarctl lun
    /// fault` then delays or fails its operations at run time.
    pub fault: bool,
    /// The LUN number given in the TOML file (`lun = N`); `None`: the
    /// number after the previous LUN's (0 for the first).
    pub number: Option<u64>,
}

/// Why a configuration was refused (or `--help` / `--version`).
///
/// Messages name the key (a flag like `--listen`, a TOML key or a SPEC
/// key) and the bad value, except for CHAP secrets, which are never shown.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// From clap: `--help`, `--version` (see
    /// [`ConfigError::is_help_or_version`]) or a malformed command line.
    #[error("{0}")]
    Cli(#[source] clap::Error),
    #[error("unknown key `{key}` in {what}; valid keys: {}", valid.join(", "))]
    UnknownKey { what: &'static str, key: String, valid: &'static [&'static str] },
    #[error("duplicate key `{key}` in {what}")]
    DuplicateKey { what: &'static str, key: String },
    #[error("invalid value `{value}` for `{key}`: {reason}")]
    InvalidValue { key: String, value: String, reason: String },
    /// A missing key, a conflict between keys, or a value not echoed.
    #[error("`{key}`: {reason}")]
    Invalid { key: String, reason: String },
    #[error("cannot read config file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Syntax or type error in a TOML file (the message shows the line).
    #[error("config file {}: {message}", path.display())]
    Toml { path: PathBuf, message: String },
    /// An error inside a part of the configuration (a file, a target, a LUN).
    #[error("{context}: {source}")]
    In {
        context: String,
        #[source]
        source: Box<ConfigError>,
    },
}

impl ConfigError {
    pub(crate) fn invalid_value(key: impl Into<String>, value: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::InvalidValue { key: key.into(), value: value.into(), reason: reason.into() }
    }

    pub(crate) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { key: key.into(), reason: reason.into() }
    }

    pub(crate) fn context(self, context: impl Into<String>) -> Self {
        ConfigError::In { context: context.into(), source: Box::new(self) }
    }

    /// `--help` or `--version`: print `self` to stdout and exit 0.
    pub fn is_help_or_version(&self) -> bool {
        use clap::error::ErrorKind as K;
        matches!(self, ConfigError::Cli(e) if matches!(e.kind(), K::DisplayHelp | K::DisplayVersion))
    }

    /// The exit status for this error: 0 for help/version, 2 (usage) else.
    pub fn exit_code(&self) -> i32 {
        if self.is_help_or_version() {
            0
        } else {
            2
        }
    }

    /// Print the error as the user should see it: help and version to
    /// stdout (colored by clap if a terminal), errors to stderr.
    pub fn print(&self) {
        match self {
            ConfigError::Cli(e) => {
                let _ = e.print();
            }
            other => eprintln!("lunard: {other}"),
        }
    }

    /// The innermost error, without the [`ConfigError::In`] contexts.
    pub fn root(&self) -> &ConfigError {
        match self {
            ConfigError::In { source, .. } => source.root(),
            other => other,
        }
    }
}

/// What the defaults depend on, injectable for tests.
#[derive(Debug, Clone)]
pub(crate) struct Env {
    pub uid: Option<u32>,
    pub xdg_runtime_dir: Option<PathBuf>,
    pub cpus: usize,
}

impl Env {
    pub(crate) fn current() -> Env {
        use std::os::unix::fs::MetadataExt;
        Env {
            // /proc/self belongs to the process's effective user id.
            uid: std::fs::metadata("/proc/self").ok().map(|m| m.uid()),
            xdg_runtime_dir: std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    pub(crate) fn default_iothreads(&self) -> usize {
        self.cpus.clamp(1, MAX_IOTHREADS)
    }

    /// `/run/lunar/lunard.sock` as root, `$XDG_RUNTIME_DIR/lunar/lunard.sock`
    /// otherwise, `$TMPDIR/lunar-$UID/lunard.sock` without XDG_RUNTIME_DIR.
    pub(crate) fn default_control(&self) -> PathBuf {
        if self.uid == Some(0) {
            return PathBuf::from("/run/lunar/lunard.sock");
        }
        match &self.xdg_runtime_dir {
            Some(dir) if dir.is_absolute() => dir.join("lunar").join("lunard.sock"),
            _ => {
                let sub = match self.uid {
                    Some(uid) => format!("lunar-{uid}"),
                    None => "lunar".to_string(),
                };
                std::env::temp_dir().join(sub).join("lunard.sock")
            }
        }
    }
}

/// The clap definition of `lunard`'s command line (for the man page and
/// the shell completions).
pub fn command() -> clap::Command {
    <cli::Cli as clap::CommandFactory>::command()
}

impl Config {
    /// Parse and validate the command line (`args` includes the program
    /// name, as `std::env::args_os()`), reading `--config FILE` if given.
    ///
    /// ```no_run
    /// # use lunard::config::Config;
    /// let config = match Config::from_args(std::env::args_os()) {
    ///     Ok(c) => c,
    ///     Err(e) => {
    ///         e.print();
    ///         std::process::exit(e.exit_code());
    ///     }
    /// };
    /// ```
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Self::from_args_in(args, &Env::current())
    }

    pub(crate) fn from_args_in<I, T>(args: I, env: &Env) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let cli = cli::parse(args)?;
        let file = match &cli.config {
            Some(path) => Some(toml::load(path)?),
            None => None,
        };
        let config = cli::merge(cli, file, env)?;
        config.validate()?;
        Ok(config)
    }

    /// Parse and validate a TOML configuration (as `--config`, without any
    /// other flag). `origin` names the text in messages.
    pub fn from_toml_str(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        Self::from_toml_str_in(text, origin, &Env::current())
    }

    pub(crate) fn from_toml_str_in(text: &str, origin: &Path, env: &Env) -> Result<Config, ConfigError> {
        let file = toml::parse(text, origin)?;
        let config = cli::merge(cli::Cli::default(), Some(file), env)?;
        config.validate()?;
        Ok(config)
    }

    /// Check the rules that tie several fields together. [`from_args`]
    /// already did; call it on a `Config` built or changed by hand.
    ///
    /// [`from_args`]: Config::from_args
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(1..=MAX_IOTHREADS).contains(&self.iothreads) {
            return Err(ConfigError::invalid_value(
                "iothreads",
                self.iothreads.to_string(),
                format!("expected 1..={MAX_IOTHREADS}"),
            ));
        }
        if self.portals.is_empty() {
            return Err(ConfigError::invalid("listen", "no portal to listen on"));
        }
        let mut seen = HashSet::new();
        for p in &self.portals {
            if !seen.insert(p) {
                return Err(ConfigError::invalid_value("listen", p.to_string(), "portal listed twice"));
            }
        }
        if let Some(m) = self.metrics {
            if m.port() != 0 && self.portals.contains(&m) {
                return Err(ConfigError::invalid_value("metrics", m.to_string(), "also an iSCSI portal"));
            }
        }
        check::unix_socket_path(&self.control)
            .map_err(|r| ConfigError::invalid_value("control", self.control.display().to_string(), r))?;
        if let Some(c) = &self.discovery_chap {
            check::chap("discovery-chap", c)?;
        }
        let mut sockets = HashSet::new();
        for v in &self.vhost_user {
            let shown = v.socket.display().to_string();
            check::unix_socket_path(&v.socket)
                .map_err(|r| ConfigError::invalid_value("vhost-user", shown.clone(), r))?;
            if v.socket == self.control {
                return Err(ConfigError::invalid_value("vhost-user", shown, "same path as the control socket"));
            }
            if !sockets.insert(&v.socket) {
                return Err(ConfigError::invalid_value("vhost-user", shown, "controller listed twice"));
            }
            if let Some(n) = v.poll_us.filter(|n| *n > MAX_VHOST_POLL_US) {
                return Err(ConfigError::invalid_value(
                    "poll-us",
                    n.to_string(),
                    format!("expected 0..={MAX_VHOST_POLL_US}"),
                ));
            }
            if let Some(n) = v.num_queues {
                if !(1..=MAX_VHOST_QUEUES).contains(&n) {
                    return Err(ConfigError::invalid_value(
                        "num-queues",
                        n.to_string(),
                        format!("expected 1..={MAX_VHOST_QUEUES}"),
                    ));
                }
            }
        }
        if self.targets.is_empty() {
            return Err(ConfigError::invalid("target", "no target configured"));
        }
        let mut names = HashSet::new();
        // file path -> (target, lun, readonly) of its first user
        let mut files: Vec<(&Path, String, bool)> = Vec::new();
        for (ti, t) in self.targets.iter().enumerate() {
            let ctx = format!("target {ti} (`{}`)", t.name);
            let in_target = |e: ConfigError| e.context(ctx.clone());
            check::iscsi_name("name", &t.name).map_err(in_target)?;
            if !names.insert(&t.name) {
                return Err(in_target(ConfigError::invalid_value("name", t.name.clone(), "target defined twice")));
            }
            t.validate(&sockets, self.iothreads).map_err(in_target)?;
            for (li, lun) in t.numbered() {
                if let BackendSpec::File { path, .. } = &lun.backend {
                    if let Some((_, first, ro)) = files.iter().find(|(p, _, _)| *p == path.as_path()) {
                        if !(*ro && lun.readonly) {
                            return Err(ConfigError::invalid_value(
                                "path",
                                path.display().to_string(),
                                format!(
                                    "already used by {first}; a file may back several LUNs only if all are readonly"
                                ),
                            )
                            .context(format!("{ctx}, LUN {li}")));
                        }
                    } else {
                        files.push((path, format!("{ctx}, LUN {li}"), lun.readonly));
                    }
                }
            }
        }
        check::log_filter(&self.log).map_err(|r| ConfigError::invalid_value("log", self.log.clone(), r))?;
        self.validate_gateways()
    }

    /// The gateway this process is, with its index (0-based), if gateways
    /// are configured.
    pub fn local_gateway(&self) -> Option<(usize, &GatewayConfig)> {
        let name = self.local_gateway.as_deref()?;
        self.gateways.iter().enumerate().find(|(_, g)| g.name == name)
    }

    /// The ALUA configuration every LUN gets: a target port group per
    /// gateway, this process's; the first gateway starts Active/Optimized,
    /// the others Standby (the cluster side overrides that from the
    /// image's lock). `None` without gateways.
    pub fn alua(&self) -> Option<lunar_scsi::AluaConfig> {
        let (index, _) = self.local_gateway()?;
        let config = lunar_scsi::AluaConfig::gateways(self.gateways.len(), index).ok()?;
        Some(
            self.gateways
                .iter()
                .enumerate()
                .fold(config, |c, (i, g)| c.with_preferred(u16::try_from(i + 1).unwrap_or(u16::MAX), g.preferred)),
        )
    }

    /// The portals of the other gateways with their Target Portal Group
    /// Tags (gateway index + 1), for SendTargets.
    pub fn peer_portals(&self) -> Vec<(SocketAddr, u16)> {
        let Some((local, _)) = self.local_gateway() else { return Vec::new() };
        self.gateways
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != local)
            .map(|(i, g)| (g.portal, u16::try_from(i + 1).unwrap_or(u16::MAX)))
            .collect()
    }

    /// This process's Target Portal Group Tag: its gateway index + 1, or 1.
    pub fn portal_group_tag(&self) -> u16 {
        self.local_gateway().map_or(1, |(i, _)| u16::try_from(i + 1).unwrap_or(u16::MAX))
    }

    fn validate_gateways(&self) -> Result<(), ConfigError> {
        let key = if self.gateway_from_cli { "--gateway" } else { "local-gateway" };
        if self.gateways.is_empty() {
            return match &self.local_gateway {
                Some(n) => Err(ConfigError::invalid_value(key, n.as_str(), "no [[gateway]] is configured")),
                None => Ok(()),
            };
        }
        check_gateways(&self.gateways)?;
        let names = || self.gateways.iter().map(|g| g.name.as_str()).collect::<Vec<_>>().join(", ");
        let Some(name) = &self.local_gateway else {
            return Err(ConfigError::invalid(
                "local-gateway",
                format!("[[gateway]] is configured: say which one this process is (local-gateway = \"NAME\" or --gateway NAME; one of {})", names()),
            ));
        };
        let Some((_, g)) = self.local_gateway() else {
            return Err(ConfigError::invalid_value(
                key,
                name.as_str(),
                format!("no such gateway; the gateways are {}", names()),
            ));
        };
        let listened = self.portals.iter().any(|p| {
            *p == g.portal
                || (p.ip().is_unspecified() && p.port() == g.portal.port() && p.is_ipv4() == g.portal.is_ipv4())
                || (p.ip().is_unspecified() && p.is_ipv6() && p.port() == g.portal.port())
        });
        if !listened {
            return Err(ConfigError::invalid_value(
                key,
                name.as_str(),
                format!(
                    "its portal {} is not among the addresses lunard listens on ({})",
                    g.portal,
                    self.portals.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// Each gateway's name and portal, and that none is listed twice (also
/// checked where the file is read, so that the message names the file).
pub(crate) fn check_gateways(gateways: &[GatewayConfig]) -> Result<(), ConfigError> {
    if gateways.len() > MAX_GATEWAYS {
        return Err(ConfigError::invalid("gateway", format!("{} gateways, at most {MAX_GATEWAYS}", gateways.len())));
    }
    for (i, g) in gateways.iter().enumerate() {
        let ctx = format!("gateway {i} (`{}`)", g.name);
        check::gateway_name(&g.name)
            .map_err(|r| ConfigError::invalid_value("name", g.name.as_str(), r).context(ctx.clone()))?;
        if let Some(j) = gateways[..i].iter().position(|o| o.name == g.name) {
            return Err(ConfigError::invalid_value("name", g.name.as_str(), format!("also the name of gateway {j}"))
                .context(ctx));
        }
        if g.portal.ip().is_unspecified() || g.portal.port() == 0 {
            return Err(ConfigError::invalid_value(
                "portal",
                g.portal.to_string(),
                "a gateway's portal is where initiators connect: a specific address and port",
            )
            .context(ctx));
        }
        if let Some(j) = gateways[..i].iter().position(|o| o.portal == g.portal) {
            return Err(ConfigError::invalid_value(
                "portal",
                g.portal.to_string(),
                format!("also the portal of gateway {j} (`{}`)", gateways[j].name),
            )
            .context(ctx));
        }
    }
    Ok(())
}

impl TargetConfig {
    /// A target with the given name and no LUNs, no CHAP, open to all.
    pub fn new(name: impl Into<String>) -> TargetConfig {
        TargetConfig {
            name: name.into(),
            luns: Vec::new(),
            chap: None,
            mutual_chap: None,
            allow_initiators: Vec::new(),
            alias: None,
        }
    }

    /// Each LUN with its number: `number` if given, else the previous
    /// LUN's number + 1 (0 for the first).
    pub fn numbered(&self) -> Vec<(u64, &LunConfig)> {
        let mut next = 0u64;
        self.luns
            .iter()
            .map(|l| {
                let n = l.number.unwrap_or(next);
                next = n.saturating_add(1);
                (n, l)
            })
            .collect()
    }

    /// The first LUN number used twice or out of range, as an error.
    pub(crate) fn check_numbers(&self) -> Result<(), ConfigError> {
        let mut seen = HashSet::new();
        for (n, _) in self.numbered() {
            if n >= MAX_LUNS_PER_TARGET as u64 {
                return Err(ConfigError::invalid_value(
                    "lun",
                    n.to_string(),
                    format!("LUN numbers go from 0 to {}", MAX_LUNS_PER_TARGET - 1),
                ));
            }
            if !seen.insert(n) {
                return Err(ConfigError::invalid_value("lun", n.to_string(), "LUN number used twice"));
            }
        }
        Ok(())
    }

    /// Checks the ACL and the CHAP pairs (also of a change made at run time).
    pub fn check_access(&self) -> Result<(), ConfigError> {
        if let Some(c) = &self.chap {
            check::chap("chap", c)?;
        }
        if let Some(m) = &self.mutual_chap {
            check::chap("mutual-chap", m)?;
            match &self.chap {
                None => {
                    return Err(ConfigError::invalid(
                        "mutual-chap",
                        "mutual CHAP needs one-way CHAP (`chap`) too: the initiator authenticates first",
                    ))
                }
                Some(c) if c.secret == m.secret => {
                    return Err(ConfigError::invalid(
                        "mutual-chap",
                        "the mutual CHAP secret must differ from the one-way secret (RFC 7143 12.1.3)",
                    ))
                }
                Some(_) => {}
            }
        }
        for name in &self.allow_initiators {
            check::iscsi_name("allow-initiators", name)?;
        }
        Ok(())
    }

    fn validate(&self, sockets: &HashSet<&PathBuf>, iothreads: usize) -> Result<(), ConfigError> {
        self.check_numbers()?;
        if self.luns.len() > MAX_LUNS_PER_TARGET {
            return Err(ConfigError::invalid(
                "lun",
                format!("{} LUNs, at most {MAX_LUNS_PER_TARGET} per target", self.luns.len()),
            ));
        }
        self.check_access()?;
        if let Some(a) = &self.alias {
            check::alias("alias", a)?;
        }
        for (li, lun) in self.numbered() {
            let in_lun = |e: ConfigError| e.context(format!("LUN {li}"));
            lun.validate().map_err(in_lun)?;
            if let Some(n) = lun.iothread {
                if n >= iothreads {
                    return Err(in_lun(ConfigError::invalid_value(
                        "iothread",
                        n.to_string(),
                        format!("only {iothreads} I/O threads (0..{iothreads})"),
                    )));
                }
            }
            if let Some(c) = &lun.controller {
                if !sockets.contains(c) {
                    return Err(in_lun(ConfigError::invalid_value(
                        "controller",
                        c.display().to_string(),
                        "no such vhost-user controller (add it with --vhost-user or [[vhost-user]])",
                    )));
                }
            }
        }
        Ok(())
    }
}

impl LunConfig {
    /// Parse a QEMU-style SPEC: `backend=mem,size=1G,thin=on`; `,,` is a
    /// literal comma inside a value. See the `--help` for the keys.
    pub fn parse_spec(spec: &str) -> Result<LunConfig, ConfigError> {
        spec::parse_spec(spec)
    }

    /// Check a `LunConfig` (one built by hand; `parse_spec` already did).
    pub fn validate(&self) -> Result<(), ConfigError> {
        spec::validate(self)
    }

    /// One line for the startup banner: `mem 1.0 GiB, 512-byte blocks, thin`.
    pub fn describe(&self) -> String {
        spec::describe(self)
    }
}

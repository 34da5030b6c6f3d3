//! The command line, and its merge with the TOML file.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::Parser;

use super::check;
use super::spec::split_items;
use super::toml::FileSettings;
use super::{
    Chap, Config, ConfigError, Env, LunConfig, TargetConfig, VhostUserConfig, WriteBack, DEFAULT_LOG, DEFAULT_LUN_SPEC,
    DEFAULT_PORTAL, DEFAULT_TARGET, MAX_IOTHREADS, MAX_VHOST_POLL_US, MAX_VHOST_QUEUES,
};

const AFTER_HELP: &str = "\
LUN SPEC (comma-separated key=value; write ,, for a comma inside a value):
  backend=mem|null|file|rbd  required, unless path= is given (implies file)
  size=N[K|M|G|T]          binary suffixes (also KiB..TiB); required for mem
                           and null; for file: optional; if given, a missing
                           file is created sparse with this size and an
                           existing file must have exactly this size
  path=FILE                the file or block device (backend=file)
  direct=on|off            O_DIRECT (file only; default off)
  block-size=512|4096      default 512; size must be a multiple of it
  readonly=on|off          default off
  removable=on|off         default off
  thin=on|off              UNMAP / thin provisioning; default on
  rerror=, werror=         report|ignore|stop|enospc; default report, enospc
  serial=S                 unit serial number, 1..20 printable ASCII
  vendor=S, product=S      INQUIRY strings, at most 8 and 16 characters
  controller=PATH          expose on this --vhost-user controller
  iothread=N               home I/O thread, 0..iothreads
  fault=on|off             wrap the backend for fault injection (tests): `lunarctl
                           lun fault` delays or fails its I/O at run time
  mem LUNs are at most 1 TiB; memory is allocated on first write.
  pool=P,image=I           backend=rbd: the Ceph RBD image P/I (it must
                           exist; the LUN has its size; no size=)
  namespace=NS, id=NAME    rbd: RADOS namespace; client name (default admin)
  conf=PATH, keyring=PATH  rbd: ceph.conf (default: librados' search),
                           keyring; an unreachable cluster fails the start
                           after 10 s with the pool and image named
  exclusive=on|off         rbd: take the image's exclusive lock and keep it
                           (no other client writes the image; COMPARE AND
                           WRITE of any size) [default: off]
  pr=local|cluster         rbd: persistent reservations in this process, or
                           in the cluster, shared by every gateway serving
                           the image with pr=cluster [default: local]
  alua=owner|all-active    rbd with [[gateway]]: one gateway (the holder of
                           the image's lock) Active/Optimized, the others
                           Standby; or every gateway Active/Optimized and
                           writing, the lock handed to whichever writes
                           (reads scale; writes through several gateways
                           at once pay a hand-over each; needs pr=cluster)
                           [default: owner]

With --config FILE, the command line overrides the file: single values
replace the file's; --listen replaces the file's portals; --vhost-user adds
controllers; --target-alias, --lun, --chap-*, --mutual-chap-* and --allow-initiator apply to
the target named by --target (the file's, or a new one), or without
--target to the file's only target; --lun LUNs come after the file's.

GATEWAYS (several lunard processes serving the same targets and LUNs, e.g.
on one shared RBD image; ALUA, SPC-5 5.16): each [[gateway]] table of the
file names one, with the portal initiators reach it on; local-gateway =
\"NAME\" (or --gateway NAME) says which one this process is. Gateway i (from
0) is target port group i+1 with relative target port i+1; SendTargets lists
every gateway's portal with tag i+1; preferred = true sets PREF of its group.
Without [[gateway]]: no ALUA (TPGS 0).
  [[gateway]]
  name = \"gw1\"
  portal = \"127.0.0.1:3260\"
  [[gateway]]
  name = \"gw2\"
  portal = \"127.0.0.2:3260\"

LIMITS (--limit KEY=VALUE, or KEY = VALUE in the file's [limits] table):
  sessions-per-target=N      sessions per target; more: login refused with
                             0x0302 out of resources           [default: 64]
  connections-per-portal=N   TCP connections per portal; more: closed at
                             accept                            [default: 256]
  connections-per-address=N  TCP connections from one address  [default: 64]
  cmd-window=N               commands a session may have outstanding (the
                             CmdSN window; MaxCmdSN moves as they complete)
                                                               [default: 128]
  unsolicited-bytes=SIZE     immediate + unsolicited data per session: caps
                             the FirstBurstLength accepted     [default: 64M]
  buffered-bytes=SIZE        solicited data-out and data-in a connection
                             buffers; beyond it R2Ts and reads wait and
                             MaxCmdSN stops                    [default: 32M]
  negotiation-timeout=SECS   login, a text negotiation, or one PDU once
                             begun must finish within this     [default: 15]
  poll-us=N                  microseconds (0..=1000) a connection's thread
                             may poll its socket after answering before it
                             sleeps (adaptive; 0: never): a command that
                             comes within it costs no wake-up [default: 200]
  Each hit is counted in `lunarctl status` and the metrics.

CHANGES AT RUN TIME (lunarctl): LUNs (add, remove, resize, error policies),
targets, ACLs, CHAP and portals are written back into the --config file
(comments kept; the previous version as FILE.bak) before they are made, so a
restart serves the same configuration; a file lunard cannot write fails the
change. Not with target flags on the command line (--target, --lun, --chap-*,
--allow-initiator); portals not when --listen is given.

CHAP secrets on the command line are visible to other local users (ps);
prefer the config file, readable by root only.

Examples:
  lunard
      iqn.2026-11.dev.lunar:disk0 with a 1 GiB RAM disk on 127.0.0.1:3260
  lunard --listen 0.0.0.0:3260 --listen [::]:3260 --target iqn.2026-11.com.example:store \\
         --lun path=/var/lib/lunar/disk0.img,direct=on --lun backend=null,size=1T
  lunard --lun backend=file,path=/srv/disk.img,size=10G,block-size=4096,werror=stop
  lunard --lun backend=rbd,pool=rbd,image=disk0,conf=/etc/ceph/ceph.conf
  lunard --chap-user alice --chap-secret 'twelve+bytes!' --allow-initiator iqn.1994-05.com.redhat:client
  lunard --vhost-user /run/lunar/vm0.sock,num-queues=4 --lun backend=mem,size=8G,controller=/run/lunar/vm0.sock
  lunard --config /etc/lunar/lunard.toml --log info,lunar_iscsi=debug
";

/// Lunar: a userspace SCSI target (iSCSI and vhost-user-scsi).
///
/// Without arguments, serves a 1 GiB RAM disk as LUN 0 of
/// iqn.2026-11.dev.lunar:disk0 on 127.0.0.1:3260.
#[derive(Parser, Debug, Default)]
#[command(name = "lunard", version, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// TOML configuration file (several targets); flags override it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// iSCSI portal to listen on, IPv4 or [IPv6] (repeatable; default 127.0.0.1:3260)
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Vec<String>,

    /// Number of I/O threads, 1..=64 (default: number of CPUs)
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    pub iothreads: Option<String>,

    /// iSCSI name of the target that the target flags below apply to
    #[arg(long, value_name = "IQN")]
    pub target: Option<String>,

    /// The target's TargetAlias, a human-readable name sent to initiators
    /// at login (1..=255 bytes of UTF-8) [default: none]
    #[arg(long, value_name = "ALIAS")]
    pub target_alias: Option<String>,

    /// A LUN of the target, numbered 0, 1, 2... in order (repeatable; see LUN SPEC)
    #[arg(long, value_name = "SPEC")]
    pub lun: Vec<String>,

    /// One-way CHAP: the name the initiator must log in with
    #[arg(long, value_name = "USER", requires = "chap_secret")]
    pub chap_user: Option<String>,

    /// One-way CHAP secret, 12..=255 bytes
    #[arg(long, value_name = "SECRET", requires = "chap_user")]
    pub chap_secret: Option<String>,

    /// Mutual CHAP: the name the target answers with
    #[arg(long, value_name = "USER", requires = "mutual_chap_secret")]
    pub mutual_chap_user: Option<String>,

    /// Mutual CHAP secret, 12..=255 bytes, not the one-way secret
    #[arg(long, value_name = "SECRET", requires = "mutual_chap_user")]
    pub mutual_chap_secret: Option<String>,

    /// CHAP for discovery sessions: the name
    #[arg(long, value_name = "USER", requires = "discovery_chap_secret")]
    pub discovery_chap_user: Option<String>,

    /// CHAP for discovery sessions: the secret, 12..=255 bytes
    #[arg(long, value_name = "SECRET", requires = "discovery_chap_user")]
    pub discovery_chap_secret: Option<String>,

    /// Initiator allowed to log in to the target (repeatable; none = all)
    #[arg(long, value_name = "IQN")]
    pub allow_initiator: Vec<String>,

    /// vhost-user-scsi controller socket to listen on (repeatable).
    /// num-queues=N: request queues [default: --iothreads]; poll-us=N: how
    /// long a request queue's I/O thread polls its ring before sleeping,
    /// adaptive, up to N microseconds [default: 200; 0: never];
    /// max-chain=N: descriptors per request [default: 1024];
    /// max-request-bytes=SIZE: data each way per request [default: 8 MiB +
    /// 275]; max-inflight=N: requests in flight per queue, more wait in the
    /// ring [default: 1024]
    #[arg(long, value_name = "PATH[,num-queues=N][,poll-us=N][,max-chain=N]...")]
    pub vhost_user: Vec<String>,

    /// JSON-RPC control socket [default: /run/lunar/lunard.sock as root,
    /// $XDG_RUNTIME_DIR/lunar/lunard.sock otherwise]
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,

    /// Serve Prometheus metrics over HTTP on this address: GET /metrics
    /// (per-LUN and per-I/O-thread commands, bytes, errors, latency
    /// histograms; in-flight and paused gauges) [default: off]
    #[arg(long, value_name = "ADDR:PORT")]
    pub metrics: Option<String>,

    /// Log filter: a level or tracing directives, e.g. info,lunar_iscsi=debug [default: info]
    #[arg(long, value_name = "LEVEL")]
    pub log: Option<String>,

    /// A resource limit of the iSCSI front-end (repeatable; see LIMITS)
    #[arg(long, value_name = "KEY=VALUE")]
    pub limit: Vec<String>,

    /// Which of the file's `[[gateway]]` entries this process is (overrides
    /// the file's local-gateway); see GATEWAYS
    #[arg(long, value_name = "NAME")]
    pub gateway: Option<String>,
}

impl Cli {
    fn has_target_flags(&self) -> bool {
        self.target.is_some()
            || self.target_alias.is_some()
            || !self.lun.is_empty()
            || self.chap_user.is_some()
            || self.mutual_chap_user.is_some()
            || !self.allow_initiator.is_empty()
    }
}

pub(crate) fn parse<I, T>(args: I) -> Result<Cli, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Cli::try_parse_from(args).map_err(ConfigError::Cli)
}

fn chap_pair(flag: &str, user: Option<String>, secret: Option<String>) -> Result<Option<Chap>, ConfigError> {
    match (user, secret) {
        (Some(user), Some(secret)) => {
            let c = Chap { user, secret };
            check::chap(&format!("--{flag}"), &c)?;
            Ok(Some(c))
        }
        (None, None) => Ok(None),
        // clap's `requires` catches these first; keep the rule here too.
        _ => Err(ConfigError::invalid(flag, format!("--{flag}-user and --{flag}-secret go together"))),
    }
}

/// `PATH[,num-queues=N][,poll-us=N]`; `,,` is a comma in the path.
fn vhost_user(s: &str) -> Result<VhostUserConfig, ConfigError> {
    let mut items = split_items(s).into_iter();
    let socket = PathBuf::from(items.next().unwrap_or_default());
    check::unix_socket_path(&socket).map_err(|r| ConfigError::invalid_value("vhost-user", s, r))?;
    let mut num_queues = None;
    let mut poll_us = None;
    let mut limits = lunar_vhost::VhostLimits::default();
    let mut seen = Vec::new();
    for item in items {
        if let Some((key, value)) = item.split_once('=') {
            if VHOST_LIMIT_KEYS.contains(&key) {
                if seen.contains(&key.to_string()) {
                    return Err(ConfigError::DuplicateKey { what: "--vhost-user", key: key.into() });
                }
                seen.push(key.to_string());
                set_vhost_limit(&mut limits, key, value)?;
                continue;
            }
        }
        match item.split_once('=') {
            Some(("num-queues", v)) => {
                if num_queues.is_some() {
                    return Err(ConfigError::DuplicateKey { what: "--vhost-user", key: "num-queues".into() });
                }
                let n = v
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (1..=MAX_VHOST_QUEUES).contains(n) && v.bytes().all(|c| c.is_ascii_digit()))
                    .ok_or_else(|| {
                        ConfigError::invalid_value("num-queues", v, format!("expected 1..={MAX_VHOST_QUEUES}"))
                    })?;
                num_queues = Some(n);
            }
            Some(("poll-us", v)) => {
                if poll_us.is_some() {
                    return Err(ConfigError::DuplicateKey { what: "--vhost-user", key: "poll-us".into() });
                }
                let n = v
                    .parse::<u16>()
                    .ok()
                    .filter(|n| *n <= MAX_VHOST_POLL_US && v.bytes().all(|c| c.is_ascii_digit()))
                    .ok_or_else(|| {
                        ConfigError::invalid_value("poll-us", v, format!("expected 0..={MAX_VHOST_POLL_US}"))
                    })?;
                poll_us = Some(n);
            }
            _ => {
                let key = item.split_once('=').map_or(item.as_str(), |(k, _)| k);
                return Err(ConfigError::UnknownKey {
                    what: "--vhost-user",
                    key: key.escape_default().to_string(),
                    valid: &["num-queues", "poll-us", "max-chain", "max-request-bytes", "max-inflight"],
                });
            }
        }
    }
    limits.validate().map_err(|r| ConfigError::invalid_value("vhost-user", s, r.to_string()))?;
    Ok(VhostUserConfig { socket, num_queues, poll_us, limits })
}

/// The limit keys of `--vhost-user` and `[[vhost-user]]`.
pub(crate) const VHOST_LIMIT_KEYS: &[&str] = &["max-chain", "max-request-bytes", "max-inflight"];

/// Sets one limit of a vhost-user controller from its text.
pub(crate) fn set_vhost_limit(
    limits: &mut lunar_vhost::VhostLimits,
    key: &str,
    value: &str,
) -> Result<(), ConfigError> {
    let number = |max: u64| {
        value
            .parse::<u64>()
            .ok()
            .filter(|n| (1..=max).contains(n) && value.bytes().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| ConfigError::invalid_value(key, value, format!("expected 1..={max}")))
    };
    match key {
        "max-chain" => limits.max_chain_descriptors = number(u64::from(u32::MAX))? as u32,
        "max-inflight" => limits.max_inflight_per_queue = number(u64::from(u32::MAX))? as u32,
        "max-request-bytes" => {
            limits.max_request_bytes =
                super::check::parse_size(value).map_err(|r| ConfigError::invalid_value(key, value, r))?;
        }
        _ => {
            return Err(ConfigError::UnknownKey {
                what: "--vhost-user",
                key: key.escape_default().to_string(),
                valid: VHOST_LIMIT_KEYS,
            })
        }
    }
    Ok(())
}

fn default_lun() -> Result<LunConfig, ConfigError> {
    LunConfig::parse_spec(DEFAULT_LUN_SPEC)
}

/// Apply the command line on top of the file (see the module docs).
pub(crate) fn merge(cli: Cli, file: Option<FileSettings>, env: &Env) -> Result<Config, ConfigError> {
    let file = file.unwrap_or_default();
    let has_target_flags = cli.has_target_flags();
    let iothreads = match &cli.iothreads {
        Some(s) => s
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_IOTHREADS).contains(n) && s.bytes().all(|c| c.is_ascii_digit()))
            .ok_or_else(|| ConfigError::invalid_value("--iothreads", s, format!("expected 1..={MAX_IOTHREADS}")))?,
        None => file.iothreads.unwrap_or_else(|| env.default_iothreads()),
    };

    let portals = if cli.listen.is_empty() {
        file.portals.unwrap_or_else(|| vec![DEFAULT_PORTAL])
    } else {
        cli.listen
            .iter()
            .map(|s| check::portal(s).map_err(|r| ConfigError::invalid_value("--listen", s, r)))
            .collect::<Result<_, _>>()?
    };

    let metrics = match &cli.metrics {
        Some(s) => Some(check::socket_addr(s).map_err(|r| ConfigError::invalid_value("--metrics", s, r))?),
        None => file.metrics,
    };

    let log = match cli.log {
        Some(s) => {
            check::log_filter(&s).map_err(|r| ConfigError::invalid_value("--log", s.as_str(), r))?;
            s
        }
        None => file.log.unwrap_or_else(|| DEFAULT_LOG.to_string()),
    };

    let control = match cli.control {
        Some(p) => {
            check::unix_socket_path(&p)
                .map_err(|r| ConfigError::invalid_value("--control", p.display().to_string(), r))?;
            p
        }
        None => file.control.unwrap_or_else(|| env.default_control()),
    };

    let discovery_chap =
        chap_pair("discovery-chap", cli.discovery_chap_user.clone(), cli.discovery_chap_secret.clone())?
            .or(file.discovery_chap);

    let mut vhost = file.vhost_user;
    for s in &cli.vhost_user {
        vhost.push(vhost_user(s).map_err(|e| e.context(format!("--vhost-user `{s}`")))?);
    }

    let file_has_targets = !file.targets.is_empty();
    let mut targets = file.targets;
    if has_target_flags {
        let name = match &cli.target {
            Some(n) => {
                check::iscsi_name("--target", n)?;
                n.clone()
            }
            None => match targets.len() {
                0 => DEFAULT_TARGET.to_string(),
                1 => targets[0].name.clone(),
                n => {
                    return Err(ConfigError::invalid(
                        "--target",
                        format!(
                            "the config file defines {n} targets; say which one --lun, --chap-*, --mutual-chap-* and --allow-initiator apply to"
                        ),
                    ))
                }
            },
        };
        let idx = match targets.iter().position(|t| t.name == name) {
            Some(i) => i,
            None => {
                targets.push(TargetConfig::new(name));
                targets.len() - 1
            }
        };
        let t = &mut targets[idx];
        for spec in &cli.lun {
            let lun =
                LunConfig::parse_spec(spec).map_err(|e| e.context(format!("--lun `{spec}` (LUN {})", t.luns.len())))?;
            t.luns.push(lun);
        }
        if let Some(a) = cli.target_alias {
            check::alias("--target-alias", &a)?;
            t.alias = Some(a);
        }
        if let Some(c) = chap_pair("chap", cli.chap_user, cli.chap_secret)? {
            t.chap = Some(c);
        }
        if let Some(c) = chap_pair("mutual-chap", cli.mutual_chap_user, cli.mutual_chap_secret)? {
            t.mutual_chap = Some(c);
        }
        for name in cli.allow_initiator {
            check::iscsi_name("--allow-initiator", &name)?;
            if !t.allow_initiators.contains(&name) {
                t.allow_initiators.push(name);
            }
        }
        if t.luns.is_empty() {
            t.luns.push(default_lun()?);
        }
    }
    if targets.is_empty() {
        let mut t = TargetConfig::new(DEFAULT_TARGET);
        t.luns.push(default_lun()?);
        targets.push(t);
    }

    let mut limits = file.limits;
    for pair in &cli.limit {
        super::limits::set_pair(&mut limits, pair)?;
    }

    let write_back = match &cli.config {
        None => WriteBack::Off("lunard runs without --config: changes last until it stops".into()),
        Some(_) if has_target_flags => WriteBack::Off(
            "the target flags on the command line (--target, --lun, --chap-*, --allow-initiator) are not in the \
             --config file: changes last until lunard stops"
                .into(),
        ),
        Some(p) if !file_has_targets => WriteBack::Off(format!(
            "{} defines no [[target]] (the default target is served): changes last until lunard stops",
            p.display()
        )),
        Some(p) => WriteBack::File(std::path::absolute(p).unwrap_or_else(|_| p.clone())),
    };
    Ok(Config {
        iothreads,
        portals,
        targets,
        discovery_chap,
        control,
        metrics,
        vhost_user: vhost,
        log,
        limits,
        write_back,
        gateways: file.gateways,
        gateway_from_cli: cli.gateway.is_some(),
        local_gateway: cli.gateway.or(file.local_gateway),
        listen_from_cli: !cli.listen.is_empty(),
        discovery_chap_from_cli: cli.discovery_chap_user.is_some(),
    })
}

//! The command line of `lunarctl` (its clap definitions), in the library
//! so that the man page and the shell completions are generated from it
//! (`cargo run -p lunard --example gen-docs`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "lunarctl", version, about = "Control a running lunard")]
pub struct Cli {
    /// The control socket [default: /run/lunar/lunard.sock as root,
    /// $XDG_RUNTIME_DIR/lunar/lunard.sock otherwise]
    #[arg(long, value_name = "PATH", global = true)]
    pub control: Option<PathBuf>,
    /// Print the daemon's JSON answers (for scripts)
    #[arg(long, global = true)]
    pub json: bool,
    /// The target to act on (needed when the daemon serves several)
    #[arg(long, global = true)]
    pub target: Option<String>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run state, I/O threads, targets, LUNs and sessions
    Status,
    /// Stop the target(s), or one LUN with --lun: drain in-flight I/O, start nothing until `cont`
    Stop {
        /// Only this LUN (the target's other LUNs keep running)
        #[arg(long)]
        lun: Option<u64>,
    },
    /// Resume the target(s), or one LUN with --lun; requests parked by an error policy are re-issued
    Cont {
        /// Only this LUN
        #[arg(long)]
        lun: Option<u64>,
    },
    /// LUN operations
    #[command(subcommand)]
    Lun(LunCmd),
    /// iSCSI sessions
    #[command(subcommand)]
    Session(SessionCmd),
    /// Print events (LUN paused, resumed, added, removed, moved, logins, refused logins...) until interrupted
    Events,
    /// The running configuration
    #[command(subcommand)]
    Config(ConfigCmd),
    /// Add or remove iSCSI targets (written to the --config file)
    #[command(subcommand)]
    Target(TargetCmd),
    /// Initiators allowed to log in to a target (empty list: all)
    #[command(subcommand)]
    Acl(AclCmd),
    /// CHAP authentication of a target (secrets are never printed back)
    #[command(subcommand)]
    Chap(ChapCmd),
    /// iSCSI portals (addresses lunard listens on)
    #[command(subcommand)]
    Portal(PortalCmd),
    /// Asymmetric access (ALUA) of the gateways (`[[gateway]]`): each target
    /// port group's state per LUN, as this gateway sees it
    #[command(subcommand)]
    Alua(AluaCmd),
    /// Live I/O per LUN and per I/O thread, refreshed every interval (like `iostat -x 1`)
    ///
    /// Columns: IOPS (commands completed per second), RD MB/s and WR MB/s
    /// (10^6 bytes read and written per second), P50 and P99 (latency of the commands completed in
    /// the interval, from the daemon's histograms), QD (average queue depth:
    /// the time commands spent in flight per second, as iostat's aqu-sz), and
    /// INFLT (commands in flight at the end of the interval, LUNs only).
    Top {
        /// Seconds between refreshes (fractions allowed)
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
        /// Stop after N intervals [default: until interrupted]
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum TargetCmd {
    /// Serve a new target NAME (iqn., eui. or naa.), without LUNs: add them with `lun add --target NAME`
    Add { name: String },
    /// Stop serving target NAME: its sessions are asked to log out (then closed), its LUNs flushed and removed
    Remove { name: String },
}

#[derive(Subcommand, Debug)]
pub enum AclCmd {
    /// Allow INITIATOR (an iSCSI name) to log in; the first one closes the target to all others
    Add { initiator: String },
    /// Disallow INITIATOR; its sessions are asked to log out
    Remove {
        initiator: String,
        /// Allow the removal of the last name, which opens the target to every initiator
        #[arg(long)]
        open: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ChapCmd {
    /// Require CHAP: the initiator logs in as USER with the secret read from
    /// standard input (one line) or --secret-file; new logins only
    Set {
        user: String,
        /// Read the secret from this file (first line) instead of standard input
        #[arg(long, value_name = "PATH")]
        secret_file: Option<PathBuf>,
        /// Set the mutual pair instead (the target authenticates to the initiator)
        #[arg(long, conflicts_with = "discovery")]
        mutual: bool,
        /// Set the pair discovery sessions must use (SendTargets), not a target's
        #[arg(long)]
        discovery: bool,
    },
    /// Stop requiring CHAP (with --mutual, only the mutual pair goes)
    Clear {
        #[arg(long, conflicts_with = "discovery")]
        mutual: bool,
        /// Of discovery sessions, not of a target
        #[arg(long)]
        discovery: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PortalCmd {
    /// Listen on ADDRESS too (IPv4 or [IPv6], port 3260 if left out; port 0: any free port)
    Add { address: String },
    /// Stop listening on ADDRESS (connections made through it go on)
    Remove { address: String },
}

#[derive(Subcommand, Debug)]
pub enum ConfigCmd {
    /// Print the running configuration as TOML (CHAP secrets redacted)
    Show,
    /// Write the running configuration (secrets included, mode 0600 for a new
    /// file) to PATH, by lunard [default: its --config file, comments not kept]
    Save {
        /// An absolute path (relative ones are made absolute here)
        path: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum LunCmd {
    /// Hot-add a LUN: SPEC as `lunard --lun` (e.g. backend=mem,size=1G)
    Add {
        spec: String,
        /// LUN number [default: the lowest free]
        #[arg(long)]
        lun: Option<u64>,
    },
    /// Hot-remove a LUN (its in-flight commands finish or are aborted)
    Remove { lun: u64 },
    /// Move a LUN's queues to another I/O thread (0-based), live
    Move {
        lun: u64,
        #[arg(long)]
        iothread: u64,
    },
    /// Change the error policies (report, ignore, stop, enospc)
    SetErrorPolicy {
        lun: u64,
        #[arg(long)]
        rerror: Option<String>,
        #[arg(long)]
        werror: Option<String>,
    },
    /// Change a LUN's size (SIZE in bytes or with a suffix: 512M, 2G); initiators
    /// get CAPACITY DATA HAS CHANGED
    Resize { lun: u64, size: String },
    /// Open a LUN's backend again: an rbd image as a new client of the
    /// cluster, which brings back a LUN that went offline when its client
    /// was blocklisted (I/O held meanwhile; not written to the configuration)
    Reopen { lun: u64 },
    /// Inject a delay or errors into a LUN added with `fault=on` (tests;
    /// not written to the configuration)
    Fault {
        lun: u64,
        /// Delay every backend operation by this many milliseconds (0: none)
        #[arg(long)]
        delay_ms: Option<u64>,
        /// Fail every read with this errno (0: none)
        #[arg(long)]
        read_errno: Option<u64>,
        /// Fail every write, flush, discard with this errno (0: none)
        #[arg(long)]
        write_errno: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AluaCmd {
    /// Each LUN's target port groups (one per gateway) and their states
    Show,
    /// Set the state of target port group GROUP (a number, or a gateway's
    /// name) of LUN: active-optimized (ao), active-non-optimized (an),
    /// standby, unavailable or transitioning. This gateway's view only (an
    /// implicit transition: every initiator of the LUN here gets ASYMMETRIC
    /// ACCESS STATE CHANGED); not written to the configuration
    Set { lun: u64, group: String, state: String },
}

#[derive(Subcommand, Debug)]
pub enum SessionCmd {
    /// List the iSCSI sessions
    List,
    /// End a session (ID as shown by `session list`)
    Kill { id: u64 },
}

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
pub enum SessionCmd {
    /// List the iSCSI sessions
    List,
    /// End a session (ID as shown by `session list`)
    Kill { id: u64 },
}

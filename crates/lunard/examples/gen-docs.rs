//! Generates the man pages and shell completions of `lunard` and
//! `lunarctl` from their clap definitions:
//!
//! ```sh
//! cargo run -p lunard --example gen-docs -- OUTDIR
//! ```
//!
//! writes `OUTDIR/man/lunard.8`, `OUTDIR/man/lunarctl.8` (and a page per
//! subcommand, `lunarctl-lun-add.8`...) and
//! `OUTDIR/completions/{bash,zsh,fish}/...` (`scripts/package.sh` packs them).

use std::path::{Path, PathBuf};

use clap::CommandFactory;
use clap_complete::Shell;

fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, bytes)
}

/// The page of `cmd` and of each of its subcommands (`lunarctl-lun-add.8`...), section 8.
fn pages(cmd: clap::Command, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()).cloned() {
        pages(sub, dir)?;
    }
    clap_mangen::Man::new(cmd).section("8").manual("Lunar").generate_to(dir)?;
    Ok(())
}

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(std::env::args_os().nth(1).unwrap_or_else(|| "target/docs".into()));
    let commands = [
        lunard::config::command().about("Lunar: a userspace SCSI target (iSCSI and vhost-user-scsi)"),
        lunard::ctl_cli::Cli::command(),
    ];
    for cmd in commands {
        let name = cmd.get_name().to_string();
        let man = out.join("man");
        std::fs::create_dir_all(&man)?;
        let mut built = cmd.clone().disable_help_subcommand(true);
        built.build();
        pages(built, &man)?;
        for (shell, file) in [
            (Shell::Bash, format!("bash/{name}")),
            (Shell::Zsh, format!("zsh/_{name}")),
            (Shell::Fish, format!("fish/{name}.fish")),
        ] {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd.clone(), &name, &mut script);
            write(&out.join("completions").join(file), &script)?;
        }
    }
    println!("man pages and completions in {}", out.display());
    Ok(())
}

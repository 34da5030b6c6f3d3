//! Configuration that survives restarts: every runtime change made through
//! `lunarctl` is written back into the `--config` file, so a `lunard`
//! killed with SIGKILL and started again from the same file serves the
//! same LUNs (compared with `lunarctl config show`) with the same data; a
//! file that cannot be written makes the change fail and leaves the
//! daemon as it was.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use lunar_initiator::{Command, Config, Session};
use serde_json::{json, Value};

mod common;
use common::{Daemon, IQN};

const BS: u32 = 512;

const FILE: &str = r#"# Lunar test configuration: keep this comment
iothreads = 2 # two threads

[[target]]
name = "iqn.2026-11.dev.lunar:disk0"

# the first disk
[[target.lun]]
path = "disk0.img"
size = "4M" # grows to 8M

[[target.lun]]
spec = "backend=mem,size=1M"

[[target.lun]]
backend = "mem"
size = "2M" # the third
"#;

fn login(d: &Daemon) -> Session {
    let config = Config { timeout: Duration::from_secs(60), ..Config::new(IQN) };
    Session::login(d.addr(), &config).unwrap_or_else(|e| panic!("login: {e}\n{}", d.log_tail()))
}

fn pattern(lun: u64, lba: u64) -> Vec<u8> {
    (0..BS as usize * 8).map(|i| (lun as usize * 31 + lba as usize * 7 + i) as u8).collect()
}

fn write(s: &Session, lun: u64, lba: u64) {
    let r = s.execute_retrying_ua(&Command::write16(lun, lba, pattern(lun, lba), BS, true), 4).unwrap();
    assert!(r.response.is_good(), "write LUN {lun} LBA {lba}: {:?}", r.response.sense);
}

fn read_back(s: &Session, lun: u64, lba: u64) {
    let r = s.execute_retrying_ua(&Command::read16(lun, lba, 8, BS, false), 4).unwrap();
    assert!(r.response.is_good(), "read LUN {lun} LBA {lba}: {:?}", r.response.sense);
    assert!(r.response.data == pattern(lun, lba), "LUN {lun} LBA {lba}: other data after the restart");
}

/// `lunarctl config show` without the lines the test harness sets per run
/// (the portal's port and the control socket's directory).
fn shown(d: &Daemon) -> String {
    d.ctl_ok(&["config", "show"])
        .lines()
        .filter(|l| !l.starts_with("listen =") && !l.starts_with("control ="))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn luns(d: &Daemon) -> Vec<(u64, u64, String, String)> {
    let s = d.call("status", json!({})).unwrap();
    s["targets"][0]["luns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let str_of = |v: &Value| v.as_str().unwrap_or("").to_string();
            (l["lun"].as_u64().unwrap(), l["size"].as_u64().unwrap(), str_of(&l["rerror"]), str_of(&l["werror"]))
        })
        .collect()
}

fn setup() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lunard.toml");
    std::fs::write(&cfg, FILE).unwrap();
    (dir, cfg)
}

fn kill_9(mut d: Daemon) {
    d.child.kill().unwrap();
    d.child.wait().unwrap();
}

#[test]
fn every_runtime_change_survives_kill_9() {
    let (dir, cfg) = setup();
    let cfg_s = cfg.to_str().unwrap();
    let d = Daemon::start(&["--config", cfg_s]);
    let status = d.ctl_json(&["status"]);
    assert_eq!(status["config"], json!({ "persistent": true, "file": cfg_s }), "{status}");
    assert!(d.ctl_ok(&["status"]).contains(&format!("config: {cfg_s} (changes are written back)")));

    // Every kind of change.
    let disk5 = dir.path().join("disk5.img");
    let out =
        d.ctl_ok(&["lun", "add", &format!("backend=file,path={},size=1M,werror=stop", disk5.display()), "--lun", "5"]);
    assert!(out.contains(&format!("written to {cfg_s}")), "{out}");
    let added = d.ctl_json(&["lun", "add", "backend=mem,size=3M,serial=ADDED1"]);
    assert_eq!((added["lun"].as_u64(), added["persistent"].as_bool()), (Some(3), Some(true)), "{added}");
    d.ctl_ok(&["lun", "remove", "1"]); // the file's `spec = ...` LUN
    d.ctl_ok(&["lun", "resize", "0", "8M"]);
    d.ctl_ok(&["lun", "resize", "5", "2M"]);
    d.ctl_ok(&["lun", "set-error-policy", "2", "--rerror", "ignore", "--werror", "report"]);
    // A move is written as the LUN's I/O thread.
    let moved = d.ctl_ok(&["lun", "move", "2", "--iothread", "1"]);
    assert!(moved.contains(&format!("written to {cfg_s}")), "{moved}");

    // Data: on the grown part of LUN 0 and on the new LUN 5, FUA.
    let s = login(&d);
    for (lun, lba) in [(0, 0), (0, 12_000), (5, 100), (5, 4000)] {
        write(&s, lun, lba);
    }
    drop(s);
    let before = shown(&d);
    let before_luns = luns(&d);
    assert_eq!(before_luns.iter().map(|l| l.0).collect::<Vec<_>>(), [0, 2, 3, 5], "{before_luns:?}\n{before}");
    kill_9(d);

    // The file kept the user's comments and its previous version.
    let text = std::fs::read_to_string(&cfg).unwrap();
    for comment in ["# Lunar test configuration: keep this comment", "# two threads", "# grows to 8M", "# the third"] {
        assert!(text.contains(comment), "`{comment}` lost:\n{text}");
    }
    assert!(cfg.with_file_name("lunard.toml.bak").exists());

    let d = Daemon::start(&["--config", cfg_s]);
    assert_eq!(shown(&d), before, "the configuration after the restart differs");
    assert_eq!(luns(&d), before_luns);
    let s = login(&d);
    for (lun, lba) in [(0, 0), (0, 12_000), (5, 100), (5, 4000)] {
        read_back(&s, lun, lba);
    }
}

#[test]
fn a_config_file_that_cannot_be_written_fails_the_change_and_changes_nothing() {
    let (dir, cfg) = setup();
    let cfg_s = cfg.to_str().unwrap();
    let d = Daemon::start(&["--config", cfg_s]);
    let luns_before = luns(&d);
    let show_before = shown(&d);

    // A read-only file (as root the kernel would let lunard write: the mode is the operator's word).
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o444)).unwrap();
    let tries: [&[&str]; 4] = [
        &["lun", "add", "backend=mem,size=1M"],
        &["lun", "remove", "1"],
        &["lun", "resize", "0", "8M"],
        &["lun", "set-error-policy", "0", "--werror", "stop"],
    ];
    for args in tries {
        let o = d.ctl(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(
            err.contains(&format!(
                "cannot write {}: the file is read-only (mode 0444); nothing was changed",
                cfg.display()
            )),
            "{args:?}: {err}"
        );
        assert_eq!(luns(&d), luns_before, "{args:?} changed the daemon");
    }
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), FILE);

    // A directory where the new file would be written: as a full disk or
    // a read-only directory, for root too.
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::create_dir(dir.path().join(".lunard.toml.tmp")).unwrap();
    let err = d.call("lun.remove", json!({ "lun": 1 })).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot write {}", cfg.display())) && err.ends_with("nothing was changed"),
        "{err}"
    );
    assert_eq!(luns(&d), luns_before);
    assert_eq!(shown(&d), show_before);
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), FILE);

    // Writable again: the change goes through.
    std::fs::remove_dir(dir.path().join(".lunard.toml.tmp")).unwrap();
    d.ctl_ok(&["lun", "remove", "1"]);
    assert_eq!(luns(&d).len(), luns_before.len() - 1);
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains("backend=mem,size=1M"));
}

#[test]
fn without_a_config_file_changes_say_they_do_not_persist_and_config_save_writes_one() {
    let d = Daemon::start(&[]);
    let status = d.ctl_json(&["status"]);
    assert_eq!(status["config"]["persistent"], false, "{status}");
    assert!(d.ctl_ok(&["status"]).contains("config: changes are not persistent: lunard runs without --config"));
    let out = d.ctl_ok(&["lun", "add", "backend=mem,size=2M,werror=stop"]);
    assert!(out.contains("not persistent: lunard runs without --config"), "{out}");
    let a = d.ctl_json(&["lun", "resize", "1", "4M"]);
    assert_eq!((a["persistent"].as_bool(), a["config"].as_str()), (Some(false), None), "{a}");

    // Save what runs, and start from it.
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("saved.toml");
    let out = d.ctl_ok(&["config", "save", saved.to_str().unwrap()]);
    assert!(out.contains(&format!("saved to {}", saved.display())), "{out}");
    assert_eq!(std::fs::metadata(&saved).unwrap().permissions().mode() & 0o777, 0o600);
    let before = shown(&d);
    let e = d.call("config.save", json!({})).unwrap_err().to_string();
    assert!(e.contains("without --config"), "{e}");
    drop(d);
    let d = Daemon::start(&["--config", saved.to_str().unwrap()]);
    assert_eq!(shown(&d), before);
    assert_eq!(d.ctl_json(&["status"])["config"]["persistent"], true);
}

#[test]
fn config_show_redacts_secrets() {
    let (dir, cfg) = setup();
    let text = FILE.replace(
        "name = \"iqn.2026-11.dev.lunar:disk0\"\n",
        "name = \"iqn.2026-11.dev.lunar:disk0\"\nchap = { user = \"alice\", secret = \"twelve+bytes!\" }\n",
    );
    std::fs::write(&cfg, text).unwrap();
    let d = Daemon::start(&["--config", cfg.to_str().unwrap()]);
    let shown = d.ctl_ok(&["config", "show"]);
    assert!(shown.contains("user = \"alice\"") && shown.contains("secret = \"<redacted>\""), "{shown}");
    assert!(!shown.contains("twelve+bytes!"));
    // config save writes the secret (the file is for lunard to start from).
    let saved = dir.path().join("copy.toml");
    d.ctl_ok(&["config", "save", saved.to_str().unwrap()]);
    assert!(std::fs::read_to_string(&saved).unwrap().contains("twelve+bytes!"));
}

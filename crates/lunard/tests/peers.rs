//! End-to-end: the `lunard` binary against libiscsi's command-line tools
//! (Debian's libiscsi-bin; `scripts/test-all.sh` installs it): inquiry,
//! listing, capacity, discovery, CHAP accepted and refused, a bad LUN spec
//! refused at start, and a clean shutdown on SIGTERM.

use std::process::{Command, Output};

mod common;
use common::{tool, Daemon, IQN};

/// lunard with two I/O threads.
fn start(args: &[&str]) -> Daemon {
    let mut a = vec!["--iothreads", "2"];
    a.extend_from_slice(args);
    Daemon::start(&a)
}

fn ok(out: Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

#[test]
fn libiscsi_tools_see_the_default_disk() {
    let d = start(&[]);
    let inq = ok(tool("iscsi-inq").arg(d.url(0)).output().unwrap(), "iscsi-inq");
    assert!(inq.contains("Vendor:LUNAR"), "{inq}");
    assert!(inq.contains("DIRECT_ACCESS"), "{inq}");
    let cap = ok(tool("iscsi-readcapacity16").arg(d.url(0)).output().unwrap(), "iscsi-readcapacity16");
    assert!(cap.contains("Total size:1073741824"), "{cap}");
    let ls = ok(tool("iscsi-ls").arg("-s").arg(d.portal()).output().unwrap(), "iscsi-ls");
    assert!(ls.contains(&format!("Target:{IQN}")), "{ls}");
    assert!(ls.contains("Lun:0") && ls.contains("DIRECT_ACCESS"), "{ls}");
    // A LUN that does not exist is an error, not a hang.
    let bad = tool("iscsi-readcapacity16").arg(d.url(7)).output().unwrap();
    assert!(!bad.status.success());
    assert!(d.stop().success());
}

#[test]
fn chap_accepts_the_secret_and_refuses_a_wrong_one() {
    let d = start(&[
        "--chap-user",
        "alice",
        "--chap-secret",
        "correct-horse-battery",
        "--discovery-chap-user",
        "bob",
        "--discovery-chap-secret",
        "discovery-secret-1",
    ]);
    ok(tool("iscsi-inq").arg(d.url_as("alice%correct-horse-battery@", IQN, 0)).output().unwrap(), "CHAP login");
    let wrong = tool("iscsi-inq").arg(d.url_as("alice%wrong-secret-123@", IQN, 0)).output().unwrap();
    assert!(!wrong.status.success(), "a wrong CHAP secret was accepted");
    let none = tool("iscsi-inq").arg(d.url(0)).output().unwrap();
    assert!(!none.status.success(), "a login without CHAP was accepted");
    // Discovery with its own CHAP.
    let ls = ok(
        tool("iscsi-ls").arg(format!("iscsi://bob%discovery-secret-1@127.0.0.1:{}", d.port)).output().unwrap(),
        "discovery with CHAP",
    );
    assert!(ls.contains(&format!("Target:{IQN}")), "{ls}");
    let bad = tool("iscsi-ls").arg(format!("iscsi://bob%nope-nope-nope@127.0.0.1:{}", d.port)).output().unwrap();
    assert!(!bad.status.success() || !String::from_utf8_lossy(&bad.stdout).contains("Target:"));
}

#[test]
fn bad_lun_spec_is_refused_at_start_naming_the_key() {
    let out =
        Command::new(env!("CARGO_BIN_EXE_lunard")).args(["--lun", "backend=mem,size=1G,colour=blue"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("colour"), "{err}");
    let help = Command::new(env!("CARGO_BIN_EXE_lunard")).arg("--help").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--lun"));
}

#[test]
fn file_lun_survives_a_restart() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = dir.path().join("disk.img");
    let spec = format!("backend=file,path={},size=16M", img.display());
    let d = start(&["--lun", &spec]);
    // Write through iscsi-perf? Not available for writes: use the size only,
    // then check the image is there with that size after a clean stop.
    let cap = ok(tool("iscsi-readcapacity16").arg(d.url(0)).output().unwrap(), "readcapacity");
    assert!(cap.contains("Total size:16777216"), "{cap}");
    assert!(d.stop().success());
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
    let d = start(&["--lun", &format!("backend=file,path={}", img.display())]);
    let cap = ok(tool("iscsi-readcapacity16").arg(d.url(0)).output().unwrap(), "readcapacity after restart");
    assert!(cap.contains("Total size:16777216"), "{cap}");
    assert!(d.stop().success());
}

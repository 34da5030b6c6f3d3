//! End-to-end: the `lunard` binary against libiscsi's command-line tools
//! (Debian's libiscsi-bin; `scripts/test-all.sh` installs it): inquiry,
//! listing, capacity, discovery, CHAP accepted and refused, a bad LUN spec
//! refused at start, and a clean shutdown on SIGTERM.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const IQN: &str = "iqn.2026-11.dev.lunar:disk0";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn tool(name: &str) -> Command {
    let found = Command::new("sh").arg("-c").arg(format!("command -v {name}")).output().unwrap();
    assert!(found.status.success(), "{name} is missing: install libiscsi-bin (scripts/test-all.sh does)");
    Command::new(name)
}

struct Daemon {
    child: Child,
    port: u16,
}

impl Daemon {
    fn start(args: &[&str]) -> Daemon {
        // A free port can be taken by another test between the probe and
        // lunard's bind: then try another one (and say why it exited otherwise).
        for _ in 0..5 {
            match Daemon::try_start(args) {
                Ok(d) => return d,
                Err(e) if e.contains("Address already in use") => continue,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("no free port for lunard after 5 tries");
    }

    fn try_start(args: &[&str]) -> Result<Daemon, String> {
        let port = free_port();
        let err = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_lunard"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--iothreads")
            .arg("2")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(err.reopen().unwrap())
            .spawn()
            .unwrap();
        // The banner is printed once the portal listens.
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            assert!(Instant::now() < deadline, "lunard did not start");
            match lines.next() {
                Some(Ok(l)) if l.contains("portal") => break,
                Some(Ok(_)) => continue,
                _ => {
                    let status = child.wait();
                    let stderr = std::fs::read_to_string(err.path()).unwrap_or_default();
                    return Err(format!("lunard exited before listening: {status:?}: {stderr}"));
                }
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Ok(Daemon { child, port })
    }

    fn url(&self, auth: &str, lun: u32) -> String {
        format!("iscsi://{auth}127.0.0.1:{}/{IQN}/{lun}", self.port)
    }

    fn stop(mut self) -> std::process::ExitStatus {
        // SAFETY-free: signal through the kill command.
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "lunard did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ok(out: Output, what: &str) -> String {
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed: {text}");
    text
}

#[test]
fn libiscsi_tools_see_the_default_disk() {
    let d = Daemon::start(&[]);
    let inq = ok(tool("iscsi-inq").arg(d.url("", 0)).output().unwrap(), "iscsi-inq");
    assert!(inq.contains("Vendor:LUNAR"), "{inq}");
    assert!(inq.contains("DIRECT_ACCESS"), "{inq}");
    let cap = ok(tool("iscsi-readcapacity16").arg(d.url("", 0)).output().unwrap(), "iscsi-readcapacity16");
    assert!(cap.contains("Total size:1073741824"), "{cap}");
    let ls = ok(tool("iscsi-ls").arg("-s").arg(format!("iscsi://127.0.0.1:{}", d.port)).output().unwrap(), "iscsi-ls");
    assert!(ls.contains(&format!("Target:{IQN}")), "{ls}");
    assert!(ls.contains("Lun:0") && ls.contains("DIRECT_ACCESS"), "{ls}");
    // A LUN that does not exist is an error, not a hang.
    let bad = tool("iscsi-readcapacity16").arg(d.url("", 7)).output().unwrap();
    assert!(!bad.status.success());
    assert!(d.stop().success());
}

#[test]
fn chap_accepts_the_secret_and_refuses_a_wrong_one() {
    let d = Daemon::start(&[
        "--chap-user",
        "alice",
        "--chap-secret",
        "correct-horse-battery",
        "--discovery-chap-user",
        "bob",
        "--discovery-chap-secret",
        "discovery-secret-1",
    ]);
    ok(tool("iscsi-inq").arg(d.url("alice%correct-horse-battery@", 0)).output().unwrap(), "CHAP login");
    let wrong = tool("iscsi-inq").arg(d.url("alice%wrong-secret-123@", 0)).output().unwrap();
    assert!(!wrong.status.success(), "a wrong CHAP secret was accepted");
    let none = tool("iscsi-inq").arg(d.url("", 0)).output().unwrap();
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
    let d = Daemon::start(&["--lun", &spec]);
    // Write through iscsi-perf? Not available for writes: use the size only,
    // then check the image is there with that size after a clean stop.
    let cap = ok(tool("iscsi-readcapacity16").arg(d.url("", 0)).output().unwrap(), "readcapacity");
    assert!(cap.contains("Total size:16777216"), "{cap}");
    assert!(d.stop().success());
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 16 << 20);
    let d = Daemon::start(&["--lun", &format!("backend=file,path={}", img.display())]);
    let cap = ok(tool("iscsi-readcapacity16").arg(d.url("", 0)).output().unwrap(), "readcapacity after restart");
    assert!(cap.contains("Total size:16777216"), "{cap}");
    assert!(d.stop().success());
}

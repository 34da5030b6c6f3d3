//! The acceptance test of "operating Lunar as a service": start from a
//! configuration file, make every kind of runtime change (targets, LUNs,
//! error policies, sizes, ACLs, CHAP, portals), kill -9, start again from
//! the same file: the same configuration (`lunarctl config show`), the
//! same access rules, the data intact. And a read-only file makes each of
//! those changes fail with its reason, the daemon left as it was.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

use lunar_initiator::{Command, Config, Session};
use serde_json::{json, Value};

mod common;
use common::{free_port, tool, Daemon};

const T0: &str = "iqn.2026-11.dev.lunar:disk0";
const T2: &str = "iqn.2026-11.dev.lunar:second";
const T3: &str = "iqn.2026-11.dev.lunar:secure";
const T4: &str = "iqn.2026-11.dev.lunar:doomed";
/// The in-process initiator's name (`lunar_initiator::Config::new`).
const ME: &str = "iqn.2026-11.dev.lunar:initiator";
const OTHER: &str = "iqn.1993-08.org.debian:01:other";
const SECRET: &str = "twelve+bytes!";
const MUTUAL_SECRET: &str = "mutual-secret-99";
const BS: u32 = 512;

fn file(dir: &Path, ports: &[u16]) -> String {
    let listen: Vec<String> = ports.iter().map(|p| format!("\"127.0.0.1:{p}\"")).collect();
    format!(
        r#"# a service configuration: keep this comment
iothreads = 2
listen = [{}]

[[target]]
name = "{T0}"

# the first disk
[[target.lun]]
path = "{}"
size = "4M" # grows to 8M
"#,
        listen.join(", "),
        dir.join("disk0.img").display()
    )
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn login_as(port: u16, target: &str, initiator: &str) -> Result<Session, lunar_initiator::Error> {
    let config = Config { timeout: Duration::from_secs(30), initiator_name: initiator.into(), ..Config::new(target) };
    Session::login(addr(port), &config)
}

fn login(d: &Daemon, port: u16, target: &str) -> Session {
    login_as(port, target, ME).unwrap_or_else(|e| panic!("login to {target}: {e}\n{}", d.log_tail()))
}

fn pattern(tag: u64, lba: u64) -> Vec<u8> {
    (0..BS as usize * 8).map(|i| (tag as usize * 31 + lba as usize * 7 + i) as u8).collect()
}

fn write(s: &Session, tag: u64, lun: u64, lba: u64) {
    let r = s.execute_retrying_ua(&Command::write16(lun, lba, pattern(tag, lba), BS, true), 4).unwrap();
    assert!(r.response.is_good(), "write LUN {lun} LBA {lba}: {:?}", r.response.sense);
}

fn read_back(s: &Session, tag: u64, lun: u64, lba: u64) {
    let r = s.execute_retrying_ua(&Command::read16(lun, lba, 8, BS, false), 4).unwrap();
    assert!(r.response.is_good(), "read LUN {lun} LBA {lba}: {:?}", r.response.sense);
    assert!(r.response.data == pattern(tag, lba), "LUN {lun} LBA {lba}: other data after the restart");
}

/// `config show` without the control socket's path (the test harness
/// gives each daemon its own).
fn shown(d: &Daemon) -> String {
    d.ctl_ok(&["config", "show"]).lines().filter(|l| !l.starts_with("control =")).map(|l| format!("{l}\n")).collect()
}

/// What `status` says of the targets' access rules, LUNs and the portals.
fn served(d: &Daemon) -> Value {
    let s = d.ctl_json(&["status"]);
    let targets: Vec<Value> = s["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let luns: Vec<Value> = t["luns"]
                .as_array()
                .unwrap()
                .iter()
                .map(|l| json!([l["lun"], l["size"], l["rerror"], l["werror"], l["backend"]]))
                .collect();
            json!({ "name": t["name"], "acl": t["acl"], "chap": t["chap"], "luns": luns })
        })
        .collect();
    json!({ "targets": targets, "portals": s["portals"] })
}

fn refused(port: u16) -> bool {
    TcpStream::connect_timeout(&addr(port), Duration::from_secs(2)).is_err()
}

fn kill_9(mut d: Daemon) {
    d.child.kill().unwrap();
    d.child.wait().unwrap();
}

#[test]
fn every_kind_of_runtime_change_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lunard.toml");
    let port1 = free_port();
    std::fs::write(&cfg, file(dir.path(), &[port1])).unwrap();
    let cfg_s = cfg.to_str().unwrap();
    let d = Daemon::start_on_file_portal(&["--config", cfg_s], port1);
    let written = format!("written to {cfg_s}");

    // Targets, and LUNs on them.
    assert!(d.ctl_ok(&["target", "add", T2]).contains(&written));
    let img2 = dir.path().join("second.img");
    d.ctl_ok(&["--target", T2, "lun", "add", &format!("backend=file,path={},size=2M,werror=stop", img2.display())]);
    d.ctl_ok(&["target", "add", T3]);
    d.ctl_ok(&["--target", T3, "lun", "add", "backend=mem,size=1M"]);
    let e = d.ctl(&["target", "add", T2]);
    assert!(String::from_utf8_lossy(&e.stderr).contains(&format!("a target named {T2} already exists")));
    let e = d.ctl(&["target", "add", "iqn.2026-11.dev.Lunar:upper"]);
    assert!(String::from_utf8_lossy(&e.stderr).contains("lowercase"), "{e:?}");

    // LUNs, sizes and policies of the first target (several targets now: --target).
    d.ctl_ok(&["--target", T0, "lun", "add", "backend=mem,size=3M,serial=ADDED1"]);
    d.ctl_ok(&["--target", T0, "lun", "resize", "0", "8M"]);
    d.ctl_ok(&["--target", T0, "lun", "set-error-policy", "0", "--rerror", "ignore", "--werror", "report"]);
    // LUN 1 moved to I/O thread 1: written as its `iothread`, so that its
    // queues go there again after a restart.
    assert!(d.ctl_ok(&["--target", T0, "lun", "move", "1", "--iothread", "1"]).contains(&written));

    // ACL of the second target: two names, one taken away again.
    d.ctl_ok(&["--target", T2, "acl", "add", OTHER]);
    let out = d.ctl_ok(&["--target", T2, "acl", "add", ME]);
    assert!(out.contains(&format!("initiators allowed: {OTHER},{ME}")) && out.contains(&written), "{out}");
    d.ctl_ok(&["--target", T2, "acl", "remove", OTHER]);
    let last = d.ctl(&["--target", T2, "acl", "remove", ME]);
    let err = String::from_utf8_lossy(&last.stderr);
    assert!(!last.status.success() && err.contains("last initiator") && err.contains("--open"), "{err}");

    // CHAP of the third: the secret on standard input, the mutual one from a file.
    let o = d.ctl_stdin(&["--target", T3, "chap", "set", "alice"], &format!("{SECRET}\n"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("CHAP on (user alice)") && !out.contains(SECRET), "{out}");
    let secret_file = dir.path().join("mutual.secret");
    std::fs::write(&secret_file, format!("{MUTUAL_SECRET}\n")).unwrap();
    d.ctl_ok(&["--target", T3, "chap", "set", "bob", "--mutual", "--secret-file", secret_file.to_str().unwrap()]);
    let short = d.ctl_stdin(&["--target", T3, "chap", "set", "carol"], "short\n");
    let err = String::from_utf8_lossy(&short.stderr);
    assert!(!short.status.success() && err.contains("too short") && !err.contains("short\n"), "{err}");

    // Portals: a second one, then the first one goes.
    let port2 = free_port();
    assert!(d.ctl_ok(&["portal", "add", &format!("127.0.0.1:{port2}")]).contains(&written));
    d.ctl_ok(&["portal", "remove", &format!("127.0.0.1:{port1}")]);
    assert!(refused(port1), "still listening on the removed portal");

    // Secrets are never printed back; that CHAP is on is.
    let status = d.ctl_ok(&["status"]);
    assert!(status.contains("access: any initiator; CHAP on (user alice), mutual (user bob)"), "{status}");
    assert!(status.contains(&format!("access: {ME}; CHAP off")), "{status}");
    for l in status.lines() {
        assert!(l.chars().count() <= 80, "wider than 80 columns: {l:?}\n{status}");
    }
    let show = d.ctl_ok(&["config", "show"]);
    let json_status = d.ctl_json(&["status"]).to_string();
    for text in [&status, &show, &json_status] {
        assert!(!text.contains(SECRET) && !text.contains(MUTUAL_SECRET), "a secret printed: {text}");
    }
    assert!(show.contains("secret = \"<redacted>\""), "{show}");

    // The rules hold: ACL and CHAP.
    assert!(login_as(port2, T2, OTHER).is_err(), "an initiator outside the ACL logged in");
    login(&d, port2, T2).logout().unwrap();
    assert!(login_as(port2, T3, ME).is_err(), "a login without CHAP to a CHAP target");
    let inq = |auth: &str| {
        tool("iscsi-inq").arg(format!("iscsi://{auth}127.0.0.1:{port2}/{T3}/0")).output().unwrap().status.success()
    };
    assert!(inq(&format!("alice%{SECRET}@")), "CHAP login refused\n{}", d.log_tail());
    assert!(!inq("alice%wrong-secret-123@"), "a wrong CHAP secret let in");

    // A target removed while a session is logged in: the session ends.
    d.ctl_ok(&["target", "add", T4]);
    d.ctl_ok(&["--target", T4, "lun", "add", "backend=mem,size=1M"]);
    let s4 = login(&d, port2, T4);
    write(&s4, 4, 0, 0);
    let started = Instant::now();
    let removed = d.ctl_json(&["target", "remove", T4]);
    assert_eq!((removed["removed"].as_bool(), removed["sessions_closed"].as_u64()), (Some(true), Some(1)), "{removed}");
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert!(d.call("session.list", json!({})).unwrap().as_array().unwrap().is_empty());
    assert!(s4.execute(Command::read16(0, 0, 1, BS, false)).is_err(), "the removed target's session still works");
    assert!(login_as(port2, T4, ME).is_err());
    // Discovery follows the targets (and the portals).
    let found = lunar_initiator::discover(addr(port2), &Config::new("")).unwrap();
    let names: Vec<&str> = found.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, [T0, T2, T3], "{found:?}");
    assert!(
        found.iter().all(|t| !t.addresses.is_empty() && t.addresses.iter().all(|a| a.contains(&format!(":{port2}")))),
        "{found:?}"
    );
    // Discovery CHAP, set at run time too.
    d.ctl_stdin(&["chap", "set", "dave", "--discovery"], "discovery-secret-1\n");
    assert!(d.ctl_ok(&["status"]).contains("discovery: CHAP on (user dave)"));
    assert!(lunar_initiator::discover(addr(port2), &Config::new("")).is_err(), "discovery without CHAP");
    let ls = |auth: &str| tool("iscsi-ls").arg(format!("iscsi://{auth}127.0.0.1:{port2}")).output().unwrap();
    let listed = ls("dave%discovery-secret-1@");
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&format!("Target:{T2}")), "{listed:?}");
    assert!(!std::fs::read_to_string(&cfg).unwrap().contains(T4));

    // Data: on the grown part of disk0 LUN 0 and on the second target's file LUN, FUA.
    let s0 = login(&d, port2, T0);
    write(&s0, 0, 0, 12_000);
    write(&s0, 0, 0, 3);
    let s2 = login(&d, port2, T2);
    write(&s2, 2, 0, 100);
    drop((s0, s2));

    let before = shown(&d);
    let before_served = served(&d);
    assert_eq!(before_served["targets"].as_array().unwrap().len(), 3, "{before_served}");
    assert!(before.contains(&format!("listen = [\"127.0.0.1:{port2}\"]")), "{before}");
    kill_9(d);

    let text = std::fs::read_to_string(&cfg).unwrap();
    for kept in ["# a service configuration: keep this comment", "# the first disk", "# grows to 8M"] {
        assert!(text.contains(kept), "`{kept}` lost:\n{text}");
    }

    let d = Daemon::start_on_file_portal(&["--config", cfg_s], port2);
    assert_eq!(shown(&d), before, "the configuration after the restart differs");
    assert_eq!(served(&d), before_served);
    assert!(refused(port1));
    let s0 = login(&d, port2, T0);
    read_back(&s0, 0, 0, 12_000);
    read_back(&s0, 0, 0, 3);
    assert!(shown(&d).contains("iothread = 1"), "{}", shown(&d));
    // The session's queue of LUN 1 is on I/O thread 1 (where the move put
    // it before the restart), whichever thread serves the connection.
    let threads = d.ctl_json(&["status"])["iothreads"].clone();
    let on = |i: usize, what: &str| threads[i]["luns"].as_array().unwrap().iter().any(|l| l == what);
    assert!(on(1, &format!("{T0}/1")) && !on(0, &format!("{T0}/1")), "{threads}");
    let s2 = login(&d, port2, T2);
    read_back(&s2, 2, 0, 100);
    assert!(login_as(port2, T2, OTHER).is_err(), "the ACL did not survive");
    assert!(login_as(port2, T3, ME).is_err(), "CHAP did not survive");
    assert!(inq(&format!("alice%{SECRET}@")), "the CHAP secret did not survive\n{}", d.log_tail());
    assert!(lunar_initiator::discover(addr(port2), &Config::new("")).is_err(), "discovery CHAP did not survive");
    let listed = ls("dave%discovery-secret-1@");
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&format!("Target:{T3}")), "{listed:?}");
}

#[test]
fn a_read_only_config_file_fails_each_change_and_leaves_the_daemon_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("lunard.toml");
    let (port1, port1b) = (free_port(), free_port());
    let text = file(dir.path(), &[port1, port1b])
        + &format!(
            "\n[[target]]\nname = \"{T2}\"\nallow-initiators = [\"{ME}\"]\nchap = {{ user = \"alice\", secret = \"{SECRET}\" }}\n"
        );
    std::fs::write(&cfg, &text).unwrap();
    let d = Daemon::start_on_file_portal(&["--config", cfg.to_str().unwrap()], port1);
    let show = shown(&d);
    let before = served(&d);
    let secret_file = dir.path().join("s");
    std::fs::write(&secret_file, "another-secret-1\n").unwrap();
    let port3 = free_port();

    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o444)).unwrap();
    let (p3, p1b) = (format!("127.0.0.1:{port3}"), format!("127.0.0.1:{port1b}"));
    let tries: Vec<Vec<&str>> = vec![
        vec!["target", "add", T3],
        vec!["target", "remove", T2],
        vec!["--target", T2, "acl", "add", OTHER],
        vec!["--target", T0, "acl", "add", OTHER],
        vec!["--target", T2, "acl", "remove", ME, "--open"],
        vec!["--target", T2, "chap", "set", "bob", "--secret-file", secret_file.to_str().unwrap()],
        vec!["--target", T2, "chap", "clear"],
        vec!["chap", "set", "dave", "--discovery", "--secret-file", secret_file.to_str().unwrap()],
        vec!["portal", "add", &p3],
        vec!["portal", "remove", &p1b],
        vec!["--target", T0, "lun", "add", "backend=mem,size=1M"],
        vec!["--target", T0, "lun", "resize", "0", "8M"],
        vec!["--target", T0, "lun", "set-error-policy", "0", "--werror", "stop"],
        vec!["--target", T0, "lun", "move", "0", "--iothread", "1"],
    ];
    let want = format!("cannot write {}: the file is read-only (mode 0444); nothing was changed", cfg.display());
    for args in &tries {
        let o = d.ctl(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(err.contains(&want), "{args:?}: {err}");
        assert_eq!(served(&d), before, "{args:?} changed the daemon");
    }
    assert_eq!(shown(&d), show);
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);
    assert!(refused(port3), "the refused portal listens");
    assert!(!refused(port1b), "the portal whose removal failed is gone");
    // The access rules are the old ones: CHAP still asked.
    assert!(login_as(port1, T2, ME).is_err(), "CHAP was cleared");

    // Writable again: the changes go through.
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    d.ctl_ok(&["target", "add", T3]);
    d.ctl_ok(&["portal", "add", &p3]);
    assert!(!refused(port3));
    assert_eq!(served(&d)["targets"].as_array().unwrap().len(), 3);
}

#[test]
fn top_shows_each_interval_per_lun_and_thread() {
    let d = Daemon::start(&["--iothreads", "2"]);
    let port = d.port;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let s = login(&d, port, T0);
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                write(&s, 1, 0, n % 1000);
                n += 1;
            }
            n
        })
    };
    let out = d.ctl_ok(&["--json", "top", "--count", "3", "--interval", "0.3"]);
    let text = d.ctl_ok(&["top", "--count", "2", "--interval", "0.2"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 0);

    let intervals: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(intervals.len(), 3, "{out}");
    for v in &intervals {
        let secs = v["interval_s"].as_f64().unwrap();
        assert!((0.25..2.0).contains(&secs), "{v}");
        let lun = &v["luns"][0];
        assert_eq!((lun["target"].as_str(), lun["lun"].as_u64()), (Some(T0), Some(0)), "{v}");
        assert!(lun["write_iops"].as_f64().unwrap() > 0.0, "no writes seen in an interval: {v}");
        assert!(lun["write_mbps"].as_f64().unwrap() > 0.0, "{v}");
        assert!(lun["p50_us"].as_f64().is_some() && lun["p99_us"].as_f64() >= lun["p50_us"].as_f64(), "{v}");
        assert!(lun["queue_depth"].as_f64().unwrap() > 0.0, "{v}");
        assert_eq!(v["iothreads"].as_array().unwrap().len(), 2, "{v}");
        let thread_iops: f64 = v["iothreads"].as_array().unwrap().iter().map(|t| t["iops"].as_f64().unwrap()).sum();
        assert!(thread_iops > 0.0, "{v}");
    }
    assert!(text.contains("   LUN/THR     IOPS  RD MB/s  WR MB/s      P50      P99      QD  INFLT"), "{text}");
    assert!(text.contains(&format!("target {T0}\n")) && text.contains("     thr 1 "), "{text}");
    for l in text.lines() {
        assert!(l.chars().count() <= 80, "wider than 80 columns: {l:?}");
    }
    let bad = d.ctl(&["top", "--interval", "0"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--interval 0: give a number of seconds"), "{bad:?}");
}

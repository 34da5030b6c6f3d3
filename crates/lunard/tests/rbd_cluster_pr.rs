//! `pr=cluster`: two `lunard` processes (gateways) serving one RBD image
//! share its persistent reservations through the cluster. Lunar's own
//! initiator logs in to each; what one gateway is told, the other enforces.
//!
//! Needs a cluster: `LUNAR_CEPH_CONF=<ceph.conf>` (tests/ceph/micro-cluster.sh
//! `run` sets it). Without it each test prints why it is skipped and passes,
//! unless `LUNAR_REQUIRE_CEPH=1` makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command as Process;
use std::time::{Duration, Instant};

use lunar_initiator::{sense_key, Command, Config, Response, Session, Status};

mod common;
use common::{Daemon, IQN};

#[path = "../../../tests/ceph/harness.rs"]
mod harness;
use harness::{ceph, cluster, rbd};

/// An image for one test, with its reservation object, removed when dropped.
struct Image {
    conf: PathBuf,
    name: String,
}

impl Image {
    fn create(conf: &Path, test: &str) -> Image {
        let img = Image { conf: conf.to_path_buf(), name: format!("lunard-{test}-{}", std::process::id()) };
        img.remove();
        rbd(conf, &["create", "--size", "16M", &format!("rbd/{}", img.name)]);
        img
    }

    fn lun(&self) -> String {
        format!("backend=rbd,pool=rbd,image={},conf={},pr=cluster", self.name, self.conf.display())
    }

    fn object(&self) -> String {
        format!("lunar.pr.{}", self.name)
    }

    fn rados(&self, args: &[&str]) -> String {
        let out = Process::new("rados").arg("-c").arg(&self.conf).args(["-p", "rbd"]).args(args).output().unwrap();
        assert!(out.status.success(), "rados {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The gateways recorded in the reservation object: (xattr, address).
    fn gateways(&self) -> Vec<(String, String)> {
        self.rados(&["listxattr", &self.object()])
            .lines()
            .filter(|l| l.starts_with("lunar.gateway."))
            .map(|l| (l.to_string(), self.rados(&["getxattr", &self.object(), l]).trim().to_string()))
            .collect()
    }

    fn remove(&self) {
        let _ = Process::new("rbd")
            .arg("-c")
            .arg(&self.conf)
            .args(["rm", "--no-progress", &format!("rbd/{}", self.name)])
            .output();
        let _ = Process::new("rados").arg("-c").arg(&self.conf).args(["-p", "rbd", "rm", &self.object()]).output();
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        self.remove();
    }
}

fn login(d: &Daemon, initiator: &str) -> Session {
    let config = Config { timeout: Duration::from_secs(60), initiator_name: initiator.into(), ..Config::new(IQN) };
    let s = Session::login(d.addr(), &config).unwrap_or_else(|e| panic!("login: {e}\n{}", d.log_tail()));
    for _ in 0..4 {
        if s.test_unit_ready(0).unwrap().is_good() {
            return s;
        }
    }
    panic!("LUN 0 not ready through {}", d.addr());
}

const REGISTER: u8 = 0x00;
const RESERVE: u8 = 0x01;
const PREEMPT: u8 = 0x04;
const WRITE_EXCLUSIVE: u8 = 0x01;

fn pr_out(s: &Session, action: u8, key: u64, sa_key: u64) -> Response {
    let cdb = vec![0x5F, action, WRITE_EXCLUSIVE, 0, 0, 0, 0, 0, 24, 0];
    let mut data = vec![0u8; 24];
    data[..8].copy_from_slice(&key.to_be_bytes());
    data[8..16].copy_from_slice(&sa_key.to_be_bytes());
    s.execute(Command::writing(0, cdb, data)).unwrap()
}

/// PERSISTENT RESERVE IN: (PRGENERATION, the keys or the reservation's key and type).
fn pr_in(s: &Session, action: u8) -> Response {
    s.execute(Command::reading(0, vec![0x5E, action, 0, 0, 0, 0, 0, 1, 0, 0], 256)).unwrap()
}

fn keys(s: &Session) -> (u32, Vec<u64>) {
    let r = pr_in(s, 0);
    assert!(r.is_good(), "READ KEYS: {r:?}");
    let g = u32::from_be_bytes(r.data[0..4].try_into().unwrap());
    let n = u32::from_be_bytes(r.data[4..8].try_into().unwrap()) as usize;
    (g, r.data[8..8 + n].chunks(8).map(|c| u64::from_be_bytes(c.try_into().unwrap())).collect())
}

fn reservation(s: &Session) -> Option<(u64, u8)> {
    let r = pr_in(s, 1);
    assert!(r.is_good(), "READ RESERVATION: {r:?}");
    (r.data.len() >= 24).then(|| (u64::from_be_bytes(r.data[8..16].try_into().unwrap()), r.data[21] & 0x0F))
}

fn good(r: Response, what: &str) {
    assert!(r.is_good(), "{what}: {r:?}");
}

#[test]
fn a_reservation_made_through_one_gateway_holds_through_the_other() {
    let Some((conf, _cluster)) = cluster("a_reservation_made_through_one_gateway_holds_through_the_other") else {
        return;
    };
    let img = Image::create(&conf, "prshared");
    let g1 = Daemon::start(&["--lun", &img.lun()]);
    let g2 = Daemon::start(&["--lun", &img.lun()]);
    assert!(g1.banner.iter().any(|l| l.contains("reservations shared by the cluster")), "{:?}", g1.banner);
    let a = login(&g1, "iqn.2026-12.test:host-a");
    let b = login(&g2, "iqn.2026-12.test:host-b");
    let c = login(&g2, "iqn.2026-12.test:host-c");

    // Host A registers and reserves Write Exclusive through gateway 1.
    good(pr_out(&a, REGISTER, 0, 0xA), "A REGISTER");
    good(pr_out(&a, RESERVE, 0xA, 0), "A RESERVE");
    // Gateway 2 reports them.
    assert_eq!(keys(&c), (1, vec![0xA]));
    assert_eq!(reservation(&c), Some((0xA, WRITE_EXCLUSIVE)));
    // And enforces them: an unregistered host's write conflicts, its read does not.
    let w = c.write(0, 0, vec![7; 512]).unwrap();
    assert_eq!(w.status, Status::RESERVATION_CONFLICT, "write through gateway 2 by an unregistered host");
    good(c.read(0, 0, 1).unwrap(), "read through gateway 2 under Write Exclusive");
    good(a.write(0, 0, vec![1; 512]).unwrap(), "the holder's write through gateway 1");

    // Host B registers and preempts A through gateway 2.
    good(pr_out(&b, REGISTER, 0, 0xB), "B REGISTER");
    good(pr_out(&b, PREEMPT, 0xB, 0xA), "B PREEMPT");
    // Gateway 1 has told host A: REGISTRATIONS PREEMPTED, then it conflicts.
    let r = a.test_unit_ready(0).unwrap();
    assert!(
        r.status == Status::CHECK_CONDITION
            && r.sense.as_ref().is_some_and(|s| s.is(sense_key::UNIT_ATTENTION, 0x2A, 0x05)),
        "REGISTRATIONS PREEMPTED for host A on gateway 1: {r:?}"
    );
    assert_eq!(a.write(0, 0, vec![2; 512]).unwrap().status, Status::RESERVATION_CONFLICT);
    assert_eq!(keys(&a), (3, vec![0xB]));
    assert_eq!(reservation(&a), Some((0xB, WRITE_EXCLUSIVE)));
    good(b.write(0, 0, vec![3; 512]).unwrap(), "the new holder's write through gateway 2");
    // Not shared, so refused: SPC-2 RESERVE.
    let r = c.execute(Command::new(0, vec![0x16, 0, 0, 0, 0, 0])).unwrap();
    assert!(r.sense.as_ref().is_some_and(|s| s.is(sense_key::ILLEGAL_REQUEST, 0x20, 0x00)), "RESERVE(6): {r:?}");
    stop_all([a, b, c], [g1, g2]);
}

/// Logs out and stops the gateways cleanly (a killed one's watch on the
/// image would hold its removal for the OSD's watch timeout).
fn stop_all<const S: usize, const D: usize>(sessions: [Session; S], gateways: [Daemon; D]) {
    for s in sessions {
        let _ = s.logout();
    }
    for g in gateways {
        let log = g.log_tail();
        assert!(g.stop().success(), "a gateway did not stop cleanly\n{log}");
    }
}

#[test]
fn a_gateway_that_does_not_answer_is_blocklisted_and_the_pr_out_completes() {
    let Some((conf, _cluster)) = cluster("a_gateway_that_does_not_answer_is_blocklisted_and_the_pr_out_completes")
    else {
        return;
    };
    let img = Image::create(&conf, "prfence");
    let g1 = Daemon::start(&["--lun", &img.lun()]);
    let first = img.gateways();
    assert_eq!(first.len(), 1, "{first:?}");
    let g2 = Daemon::start(&["--lun", &img.lun()]);
    let g2_addr = img.gateways().into_iter().find(|g| !first.contains(g)).expect("gateway 2 recorded").1;
    let a = login(&g1, "iqn.2026-12.test:host-a");
    let b = login(&g2, "iqn.2026-12.test:host-b");
    good(pr_out(&a, REGISTER, 0, 0xA), "A REGISTER, both gateways up");

    // Gateway 2 stops answering (SIGSTOP: its watch stays registered).
    let mut events = common::Events::subscribe(&g1);
    let pid = g2.child.id().to_string();
    assert!(Process::new("kill").args(["-STOP", &pid]).status().unwrap().success());
    let t = Instant::now();
    good(pr_out(&a, REGISTER, 0xA, 0xAA), "A re-REGISTER with gateway 2 stopped");
    let took = t.elapsed();
    let list = String::from_utf8(ceph(&conf, &["osd", "blocklist", "ls"])).unwrap();
    assert!(Process::new("kill").args(["-CONT", &pid]).status().unwrap().success());
    println!("PR OUT with a stopped gateway completed in {took:?}; gateway 2 ({g2_addr}) blocklisted");
    assert!(took >= Duration::from_secs(4), "completed before the notify timeout: {took:?}");
    // Both of gateway 2's clients: the reservations' and the image's (its
    // data path: a write it admitted before it stopped cannot land now).
    let clients: Vec<&str> = g2_addr.lines().collect();
    assert_eq!(clients.len(), 2, "gateway 2 recorded its two clients: {g2_addr:?}");
    for c in &clients {
        let one = c.trim_start_matches('[').split(',').next().unwrap().trim_end_matches(']');
        let bare = one.trim_start_matches("v2:").trim_start_matches("v1:").trim_start_matches("any:");
        assert!(list.contains(bare), "gateway 2's client {c} not in the blocklist:\n{list}");
    }
    assert_eq!(keys(&a), (2, vec![0xAA]));
    let e = events.wait_for("gateway.fenced");
    assert_eq!((e["lun"].as_u64(), e["reason"].as_str()), (Some(0), Some("reservation")), "{e}");
    assert_eq!(e["clients"].as_array().map(Vec::len), Some(clients.len()), "both of gateway 2's clients: {e}");

    // Gateway 2, back, connects again and re-reads before it answers again.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = pr_in(&b, 0);
        if r.is_good() {
            let g = u32::from_be_bytes(r.data[0..4].try_into().unwrap());
            if g == 2 {
                break;
            }
            panic!("gateway 2 answered from a stale copy (generation {g}): {r:?}");
        }
        assert!(
            r.sense.as_ref().is_some_and(|s| s.key == sense_key::NOT_READY || s.key == sense_key::UNIT_ATTENTION),
            "gateway 2 while re-reading: {r:?}"
        );
        assert!(Instant::now() < deadline, "gateway 2 did not come back: {}", g2.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(keys(&b), (2, vec![0xAA]));
    good(pr_out(&b, REGISTER, 0, 0xB), "B REGISTER through the gateway that came back");
    assert_eq!(keys(&a), (3, vec![0xAA, 0xB]));
    stop_all([a, b], [g1, g2]);
}

/// A gateway whose image was reopened as a new client (`lunarctl lun
/// reopen`, as a fenced owner rejoining does) re-records its fence record:
/// the reservation client's line stays, the image client's line names the
/// new client, so a later fence cuts the data path in use.
#[test]
fn a_reopened_gateway_records_its_new_image_client() {
    let Some((conf, _cluster)) = cluster("a_reopened_gateway_records_its_new_image_client") else {
        return;
    };
    let img = Image::create(&conf, "prreopen");
    let g = Daemon::start(&["--lun", &img.lun()]);
    let before = img.gateways();
    assert_eq!(before.len(), 1, "{before:?}");
    let (key, addr) = before[0].clone();
    let lines: Vec<String> = addr.lines().map(str::to_string).collect();
    assert_eq!(lines.len(), 2, "the reservation client and the image client: {addr:?}");
    assert!(g.ctl_ok(&["lun", "reopen", "0"]).contains("reopened"));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now: Vec<String> = img
            .gateways()
            .into_iter()
            .find(|(k, _)| *k == key)
            .map(|(_, a)| a.lines().map(str::to_string).collect())
            .unwrap_or_default();
        if now.len() == 2 && now[1] != lines[1] {
            assert_eq!(now[0], lines[0], "the reservation client is the same");
            break;
        }
        assert!(Instant::now() < deadline, "the fence record still names the old image client: {now:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    drop(g);
}

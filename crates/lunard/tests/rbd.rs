//! `backend=rbd` end to end: the real `lunard` serving Ceph RBD images over
//! iSCSI to Lunar's own initiator, checked against Ceph's own `rbd` tool.
//!
//! Needs a cluster: `LUNAR_CEPH_CONF=<ceph.conf>` (tests/ceph/micro-cluster.sh
//! `run` sets it). Without it each test prints why it is skipped and passes,
//! unless `LUNAR_REQUIRE_CEPH=1` (CI) makes that a failure.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use lunar_initiator::{sense_key, Config, Session};
use serde_json::json;

mod common;
use common::{Daemon, IQN};

const BS: usize = 512;

#[path = "../../../tests/ceph/harness.rs"]
mod harness;
use harness::{ceph, cluster, conf_with_timeout, rbd, FrozenOsd, TestPool, CLUSTER};

/// An image for one test, removed when dropped.
struct Image {
    conf: PathBuf,
    name: String,
}

impl Image {
    fn create(conf: &Path, test: &str, size: &str) -> Image {
        let img = Image::named(conf, test);
        rbd(conf, &["create", "--size", size, &img.spec()]);
        img
    }

    /// An image made by `rbd import` from `data`.
    fn import(conf: &Path, test: &str, data: &[u8]) -> Image {
        let img = Image::named(conf, test);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("data");
        std::fs::write(&file, data).unwrap();
        rbd(conf, &["import", "--no-progress", file.to_str().unwrap(), &img.spec()]);
        img
    }

    fn named(conf: &Path, test: &str) -> Image {
        let name = format!("lunard-{test}-{}", std::process::id());
        let img = Image { conf: conf.to_path_buf(), name };
        let _ = Command::new("rbd").arg("-c").arg(conf).args(["rm", "--no-progress", &img.spec()]).output();
        img
    }

    fn spec(&self) -> String {
        format!("rbd/{}", self.name)
    }

    fn lun(&self) -> String {
        format!("backend=rbd,pool=rbd,image={},conf={}", self.name, self.conf.display())
    }

    fn export(&self) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("export");
        rbd(&self.conf, &["export", "--no-progress", &self.spec(), file.to_str().unwrap()]);
        std::fs::read(file).unwrap()
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = Command::new("rbd").arg("-c").arg(&self.conf).args(["rm", "--no-progress", &self.spec()]).output();
    }
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn login(d: &Daemon) -> Session {
    let config = Config { timeout: Duration::from_secs(60), ..Config::new(IQN) };
    Session::login(d.addr(), &config).unwrap_or_else(|e| panic!("login: {e}\n{}", d.log_tail()))
}

fn read(s: &Session, lun: u64, lba: u64, blocks: u32) -> Vec<u8> {
    let r = s.read(lun, lba, blocks).unwrap();
    assert!(r.is_good(), "read LUN {lun} at {lba}: {r:?}");
    r.data
}

/// Reads until a unit attention (power on, capacity changed) has been reported.
fn settle(s: &Session, lun: u64) {
    for _ in 0..4 {
        if s.test_unit_ready(lun).unwrap().is_good() {
            return;
        }
    }
    panic!("LUN {lun} not ready");
}

#[test]
fn lunard_and_the_rbd_tool_see_the_same_data() {
    let Some((conf, _cluster)) = cluster("lunard_and_the_rbd_tool_see_the_same_data") else { return };
    let written = Image::create(&conf, "written", "32M");
    let theirs = pattern(7, 8 << 20);
    let imported = Image::import(&conf, "imported", &theirs);
    let d = Daemon::start(&["--lun", &written.lun(), "--lun", &imported.lun()]);
    assert!(d.banner.iter().any(|l| l.contains(&format!("LUN 0: rbd {}", written.spec()))), "{:?}", d.banner);
    let s = login(&d);
    settle(&s, 0);
    settle(&s, 1);
    // Lunar writes, `rbd export` reads.
    let ours = pattern(1, 32 << 20);
    for (i, chunk) in ours.chunks(1 << 20).enumerate() {
        let r = s.write_fua(0, (i * ((1 << 20) / BS)) as u64, chunk.to_vec()).unwrap();
        assert!(r.is_good(), "write {i}: {r:?}");
    }
    assert!(written.export() == ours, "rbd export differs from what was written through lunard");
    // `rbd import` wrote, Lunar reads.
    let mut got = Vec::new();
    for i in 0..8u64 {
        got.extend(read(&s, 1, i * 2048, 2048));
    }
    assert!(got == theirs, "lunard reads something else than rbd import wrote");
    // Status names the image.
    let st = d.call("status", json!({})).unwrap();
    let lun0 = &st["targets"][0]["luns"][0];
    assert_eq!(lun0["backend"], "rbd");
    assert!(lun0["description"].as_str().unwrap().contains(&written.spec()), "{lun0}");
    // lun resize grows the image in the cluster.
    d.ctl_ok(&["lun", "resize", "0", "64M"]);
    let info = String::from_utf8(rbd(&conf, &["info", "--format", "json", &written.spec()])).unwrap();
    assert!(info.contains("\"size\":67108864"), "{info}");
    settle(&s, 0);
    let cap = s.read_capacity16(0).unwrap();
    assert!(cap.is_good(), "{cap:?}");
    assert_eq!(u64::from_be_bytes(cap.data[..8].try_into().unwrap()) + 1, (64 << 20) / BS as u64);
    assert_eq!(read(&s, 0, (32 << 20) / BS as u64, 8), vec![0; 8 * BS], "the grown range reads zeros");
    s.logout().unwrap();
    stop(d);
}

/// SIGTERM, and a clean exit within 20 s (the log on failure).
fn stop(mut d: Daemon) {
    let _ = Command::new("kill").arg("-TERM").arg(d.child.id().to_string()).status();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if let Some(status) = d.child.try_wait().unwrap() {
            assert!(status.success(), "lunard exited with {status}\n{}", d.log_tail());
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("lunard did not stop on SIGTERM\n{}", d.log_tail());
}

fn caw(lba: u64, blocks: u8, verify: Vec<u8>, write: Vec<u8>) -> lunar_initiator::Command {
    let mut cdb = vec![0u8; 16];
    cdb[0] = 0x89;
    cdb[2..10].copy_from_slice(&lba.to_be_bytes());
    cdb[13] = blocks;
    let mut data = verify;
    data.extend(write);
    lunar_initiator::Command::writing(0, cdb, data)
}

#[test]
fn compare_and_write_is_the_clusters_and_at_most_one_block() {
    let Some((conf, _cluster)) = cluster("compare_and_write_is_the_clusters_and_at_most_one_block") else { return };
    let img = Image::create(&conf, "caw", "16M");
    let d = Daemon::start(&["--lun", &img.lun()]);
    let s = login(&d);
    settle(&s, 0);
    // Block Limits VPD: MAXIMUM COMPARE AND WRITE LENGTH 1 (librbd 16 does 512 bytes atomically).
    let r = s.execute(lunar_initiator::Command::reading(0, vec![0x12, 1, 0xB0, 0, 64, 0], 64)).unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data[5], 1, "MAXIMUM COMPARE AND WRITE LENGTH");
    let r = s.execute(caw(8, 1, vec![0; BS], vec![0xAB; BS])).unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(read(&s, 0, 8, 1), vec![0xAB; BS]);
    let r = s.execute(caw(8, 1, vec![0; BS], vec![0xCD; BS])).unwrap();
    let sense = r.sense.clone().expect("MISCOMPARE");
    assert_eq!((sense.key, sense.asc, sense.ascq), (0x0E, 0x1D, 0x00), "{r:?}");
    assert_eq!(read(&s, 0, 8, 1), vec![0xAB; BS], "nothing written on a miscompare");
    let r = s.execute(caw(8, 2, vec![0; 2 * BS], vec![0; 2 * BS])).unwrap();
    let sense = r.sense.clone().expect("refused");
    assert_eq!((sense.key, sense.asc), (0x05, 0x24), "two blocks: INVALID FIELD IN CDB: {r:?}");
    // The rbd tool sees the compare-and-written block.
    assert!(img.export()[8 * BS..9 * BS] == [0xAB; BS]);
    // A clean stop closes the image (its watch goes at once, so `rbd rm` need not wait it out).
    s.logout().unwrap();
    stop(d);
}

#[test]
fn an_image_resized_outside_lunard_is_followed() {
    let Some((conf, _cluster)) = cluster("an_image_resized_outside_lunard_is_followed") else { return };
    let img = Image::create(&conf, "grown", "16M");
    let d = Daemon::start(&["--lun", &img.lun()]);
    let s = login(&d);
    settle(&s, 0);
    // Past the follower's first look (so that the update watch is what tells it).
    std::thread::sleep(Duration::from_millis(1500));
    rbd(&conf, &["resize", "--size", "48M", &img.spec()]);
    // The update watch fires; the LUN follows and says so with a unit attention.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let r = s.test_unit_ready(0).unwrap();
        if let Some(sense) = &r.sense {
            assert_eq!((sense.key, sense.asc, sense.ascq), (0x06, 0x2A, 0x09), "CAPACITY DATA HAS CHANGED: {r:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "no CAPACITY DATA HAS CHANGED\n{}", d.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    let cap = s.read_capacity16(0).unwrap();
    assert_eq!(u64::from_be_bytes(cap.data[..8].try_into().unwrap()) + 1, (48 << 20) / BS as u64);
    assert_eq!(read(&s, 0, (40 << 20) / BS as u64, 8), vec![0; 8 * BS]);
    let st = d.call("status", json!({})).unwrap();
    assert_eq!(st["targets"][0]["luns"][0]["size"], 48 << 20);
    s.logout().unwrap();
    stop(d);
}

#[test]
fn acknowledged_writes_survive_a_killed_lunard() {
    let Some((conf, _cluster)) = cluster("acknowledged_writes_survive_a_killed_lunard") else { return };
    let img = Image::create(&conf, "restart", "16M");
    let mut d = Daemon::start(&["--lun", &img.lun()]);
    let s = login(&d);
    settle(&s, 0);
    let data = pattern(3, 4 << 20);
    for (i, chunk) in data.chunks(256 << 10).enumerate() {
        // FUA writes and plain writes followed by SYNCHRONIZE CACHE are acknowledged as durable.
        let lba = (i * ((256 << 10) / BS)) as u64;
        let r = if i % 2 == 0 { s.write_fua(0, lba, chunk.to_vec()) } else { s.write(0, lba, chunk.to_vec()) };
        assert!(r.unwrap().is_good());
    }
    let mut sync = vec![0u8; 10];
    sync[0] = 0x35;
    let r = s.execute(lunar_initiator::Command::new(0, sync)).unwrap();
    assert!(r.is_good(), "SYNCHRONIZE CACHE: {r:?}");
    drop(s);
    d.child.kill().unwrap();
    d.child.wait().unwrap();
    assert!(img.export()[..4 << 20] == data[..], "the cluster has every acknowledged write");
    let d = Daemon::start(&["--lun", &img.lun()]);
    let s = login(&d);
    settle(&s, 0);
    assert!(read(&s, 0, 0, 8192) == data, "a restarted lunard reads them back");
    s.logout().unwrap();
    stop(d);
}

#[test]
fn an_unreachable_cluster_fails_the_start_naming_pool_and_image() {
    if cluster("an_unreachable_cluster_fails_the_start_naming_pool_and_image").is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let conf = dir.path().join("ceph.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nmon host = v2:127.0.0.1:{port}\nauth client required = none\nlog file = {}/client.log\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let lun = format!("backend=rbd,pool=tank,image=vol7,conf={}", conf.display());
    let e = Daemon::try_start(&["--lun", &lun]).err().expect("lunard must not start");
    assert!(e.contains("tank/vol7") && e.contains("cannot reach the cluster") && e.contains("10 s"), "{e}");
}

#[test]
fn an_osd_gone_under_writes_pauses_the_lun_and_cont_completes_them() {
    let Some((conf, shared)) = cluster("an_osd_gone_under_writes_pauses_the_lun_and_cont_completes_them") else {
        return;
    };
    // The OSD freezes: no other test of this binary may use the cluster meanwhile.
    drop(shared);
    let _alone = CLUSTER.write().unwrap_or_else(|e| e.into_inner());
    let img = Image::create(&conf, "osdaway", "16M");
    let dir = tempfile::tempdir().unwrap();
    const SECS: u64 = 3;
    let timed = conf_with_timeout(&conf, dir.path(), SECS);
    let lun = format!("backend=rbd,pool=rbd,image={},conf={},werror=stop", img.name, timed.display());
    let d = Daemon::start(&["--iothreads", "2", "--lun", &lun]);
    let mut events = common::Events::subscribe(&d);
    let s = login(&d);
    settle(&s, 0);
    const CHUNK: usize = 64 << 10;
    let data = pattern(11, 16 * CHUNK);
    let lba = |i: usize| (i * CHUNK / BS) as u64;
    // Acknowledged before the OSD goes.
    for i in 0..8 {
        assert!(s.write(0, lba(i), data[i * CHUNK..(i + 1) * CHUNK].to_vec()).unwrap().is_good());
    }
    let osd = FrozenOsd::freeze(&conf);
    let frozen = std::time::Instant::now();
    // Eight writes in flight while the OSD is away.
    let tags: Vec<_> = (8..16)
        .map(|i| {
            let cmd = s.write_command(0, lba(i), data[i * CHUNK..(i + 1) * CHUNK].to_vec(), false).unwrap();
            s.submit(cmd).unwrap()
        })
        .collect();
    let paused = events.wait_for("lun.paused");
    let after = frozen.elapsed();
    println!("OSD frozen, rados_osd_op_timeout {SECS} s: lun.paused after {after:?}: {paused}");
    assert_eq!(paused["reason"], "io-error", "{paused}");
    assert_eq!((paused["errno_name"].clone(), paused["error"].clone()), (json!("ETIMEDOUT"), json!("TimedOut")));
    assert_eq!(paused["direction"], "write");
    let st = d.call("status", json!({})).unwrap();
    let l = &st["targets"][0]["luns"][0];
    assert_eq!((l["paused"].clone(), l["paused_reason"].clone()), (json!(true), json!("io-error")), "{l}");
    // Parked, not failed: nothing answered while the LUN is paused.
    assert_eq!(s.wait_timeout(tags[0], Duration::from_secs(2)).unwrap(), None, "a parked write was answered");
    assert_eq!(s.outstanding(), tags.len());
    // The cluster comes back; the operator resumes the LUN.
    osd.thaw();
    assert_eq!(d.ctl_ok(&["cont"]).trim(), "running");
    for (i, tag) in tags.into_iter().enumerate() {
        let r = s.wait(tag).unwrap_or_else(|e| panic!("write {i}: {e}\n{}", d.log_tail()));
        assert!(r.is_good(), "parked write {i} after cont: {r:?}");
    }
    assert_eq!(events.wait_for("lun.resumed")["lun"], 0);
    let mut sync = vec![0u8; 10];
    sync[0] = 0x35;
    assert!(s.execute(lunar_initiator::Command::new(0, sync)).unwrap().is_good());
    assert!(read(&s, 0, 0, (data.len() / BS) as u32) == data, "lunard reads back every write");
    s.logout().unwrap();
    stop(d);
    assert!(img.export()[..data.len()] == data[..], "the cluster has every write");
}

#[test]
fn a_full_pool_pauses_an_enospc_lun_and_cont_completes_the_write() {
    let Some((conf, _cluster)) = cluster("a_full_pool_pauses_an_enospc_lun_and_cont_completes_the_write") else {
        return;
    };
    let pool = TestPool::new(&conf, "lunard-full");
    rbd(&conf, &["create", "--size", "128M", &format!("{}/disk", pool.name)]);
    let lun = format!("backend=rbd,pool={},image=disk,conf={},werror=enospc", pool.name, conf.display());
    let d = Daemon::start(&["--lun", &lun]);
    let mut events = common::Events::subscribe(&d);
    let s = login(&d);
    settle(&s, 0);
    ceph(&conf, &["osd", "pool", "set-quota", &pool.name, "max_bytes", &(4u64 << 20).to_string()]);
    const CHUNK: usize = 1 << 20;
    let chunk = |i: usize| pattern(100 + i as u64, CHUNK);
    let lba = |i: usize| (i * CHUNK / BS) as u64;
    // The cluster marks the pool full from its statistics, a few seconds
    // after the quota is reached: write until a write is held.
    let mut acked = 0;
    let held = loop {
        assert!(acked < 120, "120 writes of 1 MiB into a pool with a 4 MiB quota, none held");
        let tag = s.submit(s.write_command(0, lba(acked), chunk(acked), false).unwrap()).unwrap();
        match s.wait_timeout(tag, Duration::from_secs(5)).unwrap() {
            Some(r) => {
                assert!(r.is_good(), "write {acked}: {r:?}");
                acked += 1;
                std::thread::sleep(Duration::from_millis(250));
            }
            None => break tag,
        }
    };
    let paused = events.wait_for("lun.paused");
    println!("pool quota 4 MiB: write {acked} held after {acked} acknowledged: {paused}");
    assert_eq!((paused["reason"].clone(), paused["error"].clone()), (json!("io-error"), json!("NoSpace")), "{paused}");
    assert_eq!(paused["direction"], "write");
    assert_eq!(s.outstanding(), 1);
    // Room again; `cont` re-issues the held write (once more if the cluster
    // has not yet cleared the pool's full flag: the LUN pauses again).
    ceph(&conf, &["osd", "pool", "set-quota", &pool.name, "max_bytes", "0"]);
    let mut conts = 0;
    let r = loop {
        conts += 1;
        assert!(conts <= 12, "the write is still held after 12 cont\n{}", d.log_tail());
        assert_eq!(d.ctl_ok(&["cont"]).trim(), "running");
        if let Some(r) = s.wait_timeout(held, Duration::from_secs(5)).unwrap() {
            break r;
        }
        events.wait_for("lun.paused");
    };
    assert!(r.is_good(), "the held write after cont: {r:?}");
    println!("the held write completed GOOD after {conts} cont");
    for i in 0..=acked {
        assert!(read(&s, 0, lba(i), (CHUNK / BS) as u32) == chunk(i), "chunk {i} reads back");
    }
    s.logout().unwrap();
    stop(d);
}

/// The address of the image's watcher: the client lunard connected as.
fn watcher_address(conf: &Path, spec: &str) -> String {
    let status = String::from_utf8(rbd(conf, &["status", "--format", "json", spec])).unwrap();
    let at = status.find("\"address\":\"").expect("a watcher") + "\"address\":\"".len();
    status[at..at + status[at..].find('"').unwrap()].to_string()
}

#[test]
fn a_blocklisted_client_takes_the_lun_offline_and_reopen_brings_it_back() {
    let Some((conf, _cluster)) = cluster("a_blocklisted_client_takes_the_lun_offline_and_reopen_brings_it_back") else {
        return;
    };
    let img = Image::create(&conf, "fenced", "16M");
    // `werror=stop`: even a policy that parks failed writes reports this one.
    let d = Daemon::start(&["--lun", &format!("{},werror=stop", img.lun())]);
    let mut events = common::Events::subscribe(&d);
    let s = login(&d);
    settle(&s, 0);
    let before = pattern(21, 64 << 10);
    assert!(s.write(0, 0, before.clone()).unwrap().is_good());
    // Fenced as a takeover by another gateway would: blocklist lunard's client.
    let addr = watcher_address(&conf, &img.spec());
    ceph(&conf, &["osd", "blocklist", "add", &addr]);
    let r = s.write(0, 1024, pattern(22, 4096)).unwrap();
    assert!(r.is_check(sense_key::NOT_READY, 0x04, 0x03), "a write of a fenced client: {r:?}");
    let offline = events.wait_for("lun.offline");
    assert_eq!((offline["lun"].clone(), offline["errno_name"].clone()), (json!(0), json!("ESHUTDOWN")), "{offline}");
    // Offline: the medium is refused at once (a path checker's TEST UNIT
    // READY included); what the LUN knows of itself is still answered.
    assert!(s.test_unit_ready(0).unwrap().is_check(sense_key::NOT_READY, 0x04, 0x03));
    assert!(s.read(0, 0, 8).unwrap().is_check(sense_key::NOT_READY, 0x04, 0x03));
    assert!(s.inquiry(0).unwrap().is_good());
    let st = d.call("status", json!({})).unwrap();
    let l = &st["targets"][0]["luns"][0];
    assert_eq!(l["offline"]["errno_name"], "ESHUTDOWN", "{l}");
    assert!(d.ctl_ok(&["status"]).contains("offline (ESHUTDOWN)"));
    // The operator reopens it as a new client (the old one stays fenced).
    assert_eq!(d.ctl_ok(&["lun", "reopen", "0"]).trim(), "LUN 0 reopened: online again");
    assert_eq!(events.wait_for("lun.online")["lun"], 0);
    assert_ne!(watcher_address(&conf, &img.spec()), addr, "a new client watches the image");
    assert!(d.call("status", json!({})).unwrap()["targets"][0]["luns"][0]["offline"].is_null());
    let after = pattern(23, 4096);
    assert!(s.write(0, 1024, after.clone()).unwrap().is_good());
    assert!(read(&s, 0, 0, (before.len() / BS) as u32) == before, "acknowledged before the fence");
    assert_eq!(read(&s, 0, 1024, 8), after);
    s.logout().unwrap();
    stop(d);
    let _ = Command::new("ceph").arg("-c").arg(&conf).args(["osd", "blocklist", "rm", &addr]).output();
    let export = img.export();
    assert!(export[..before.len()] == before[..] && export[1024 * BS..1024 * BS + 4096] == after[..]);
}

/// `exclusive=on`: lunard takes the image's exclusive lock at start and
/// keeps it, so it is the image's only writer (another client's write
/// fails, a second exclusive gateway does not start) and COMPARE AND WRITE
/// of any size, on 4096-byte blocks too, is atomic.
#[test]
fn an_exclusive_lun_is_the_only_writer_and_compares_and_writes_any_size() {
    let Some((conf, _cluster)) = cluster("an_exclusive_lun_is_the_only_writer_and_compares_and_writes_any_size") else {
        return;
    };
    const BS4K: usize = 4096;
    let img = Image::create(&conf, "exclusive", "16M");
    let d = Daemon::start(&["--lun", &format!("{},exclusive=on,block-size=4096", img.lun())]);
    let s = login(&d);
    s.set_block_size(0, BS4K as u32);
    settle(&s, 0);
    // Block Limits VPD: MAXIMUM COMPARE AND WRITE LENGTH is the core's (128), not librbd's one sector.
    let r = s.execute(lunar_initiator::Command::reading(0, vec![0x12, 1, 0xB0, 0, 64, 0], 64)).unwrap();
    assert!(r.is_good(), "{r:?}");
    assert_eq!(r.data[5], 128, "MAXIMUM COMPARE AND WRITE LENGTH");
    let first = pattern(31, 2 * BS4K);
    let r = s.execute(caw(4, 2, vec![0; 2 * BS4K], first.clone())).unwrap();
    assert!(r.is_good(), "two 4096-byte blocks: {r:?}");
    assert!(read(&s, 0, 4, 2) == first, "the compared-and-written blocks read back");
    let mut stale = first.clone();
    stale[BS4K + 100] ^= 0xFF;
    let r = s.execute(caw(4, 2, stale, vec![0xCD; 2 * BS4K])).unwrap();
    assert!(r.is_check(0x0E, 0x1D, 0x00), "MISCOMPARE: {r:?}");
    assert!(read(&s, 0, 4, 2) == first, "nothing written on a miscompare");
    // Another client cannot write while lunard holds the lock.
    let out = Command::new("rbd")
        .arg("-c")
        .arg(&conf)
        .args(["bench", "--io-type", "write", "--io-size", "4096", "--io-total", "4096", &img.spec()])
        .output()
        .unwrap();
    assert!(!out.status.success(), "another client wrote the image of an exclusive LUN");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Read-only file system"), "{out:?}");
    // Nor can a second exclusive gateway start.
    let e = Daemon::try_start(&["--lun", &format!("{},exclusive=on", img.lun())]).err().expect("a second owner");
    assert!(e.contains("exclusive lock") && e.contains("another client holds it"), "{e}");
    assert!(s.write(0, 8, pattern(32, BS4K)).unwrap().is_good(), "lunard still writes");
    s.logout().unwrap();
    stop(d);
    let export = img.export();
    assert!(export[4 * BS4K..6 * BS4K] == first[..] && export[8 * BS4K..9 * BS4K] == pattern(32, BS4K)[..]);
}

/// A gateway's configuration: the two gateways of one target, LUN 0 the image.
fn gateway_config(dir: &Path, me: &str, ports: [u16; 2], img: &Image) -> PathBuf {
    let lun = format!("backend = \"rbd\"\npool = \"rbd\"\nimage = \"{}\"\nconf = \"{}\"", img.name, img.conf.display());
    common::two_gateway_config(dir, me, ports, IQN, &lun)
}

/// REPORT TARGET PORT GROUPS: (group, state code) of each descriptor.
fn alua_states(s: &Session) -> Vec<(u16, u8)> {
    let cdb = vec![0xA3, 0x0A, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0];
    let r = s.execute(lunar_initiator::Command::reading(0, cdb, 256)).unwrap();
    assert!(r.is_good(), "REPORT TARGET PORT GROUPS: {r:?}");
    let mut out = Vec::new();
    let mut at = 4;
    while at + 8 <= r.data.len() {
        let d = &r.data[at..];
        out.push((u16::from_be_bytes([d[2], d[3]]), d[0] & 0x0F));
        at += 8 + 4 * usize::from(d[7]);
    }
    out
}

/// SET TARGET PORT GROUPS: `group` to Active/Optimized.
fn activate(s: &Session, group: u16) -> lunar_initiator::Response {
    set_group(s, group, 0)
}

/// SET TARGET PORT GROUPS: `group` to `state` (SPC-5 Table 115 codes).
fn set_group(s: &Session, group: u16, state: u8) -> lunar_initiator::Response {
    let mut cdb = vec![0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0];
    cdb[6..10].copy_from_slice(&8u32.to_be_bytes());
    let mut list = vec![0u8; 8];
    list[4] = state;
    list[6..8].copy_from_slice(&group.to_be_bytes());
    s.execute(lunar_initiator::Command::writing(0, cdb, list)).unwrap()
}

/// Waits until TEST UNIT READY through `s` gives `want` (GOOD when `None`),
/// unit attentions aside.
fn wait_ready(s: &Session, want: Option<(u8, u8, u8)>, what: &str) -> Duration {
    let start = std::time::Instant::now();
    loop {
        let r = s.test_unit_ready(0).unwrap();
        let got = if r.is_good() { None } else { r.sense_code() };
        if got == want {
            return start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(20), "{what}: TEST UNIT READY still {r:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two gateways serve one image; its exclusive lock says which one writes
/// (ALUA Active/Optimized), the other is Standby. SET TARGET PORT GROUPS
/// through the standby takes the lock over and fences the owner, which
/// rejoins as Standby by itself; `lunarctl alua set` moves it back; after
/// the owner is killed, the other takes over again; a gateway restarted
/// while the other owns the image is standby, and an owner killed and
/// restarted takes its own lock back at start. Every acknowledged write
/// reads back, through lunard and `rbd export`.
#[test]
fn two_gateways_own_an_rbd_image_by_its_lock() {
    let Some((conf, _cluster)) = cluster("two_gateways_own_an_rbd_image_by_its_lock") else { return };
    let img = Image::create(&conf, "gateways", "16M");
    let dir = tempfile::tempdir().unwrap();
    let ports = [common::free_port(), common::free_port()];
    let f1 = gateway_config(dir.path(), "gw1", ports, &img);
    let f2 = gateway_config(dir.path(), "gw2", ports, &img);
    let gw1 = Daemon::start_on_file_portal(&["--config", f1.to_str().unwrap()], ports[0]);
    let gw2 = Daemon::start_on_file_portal(&["--config", f2.to_str().unwrap()], ports[1]);
    let (s1, s2) = (login(&gw1), login(&gw2));
    const STANDBY: Option<(u8, u8, u8)> = Some((sense_key::NOT_READY, 0x04, 0x0B));
    // gw1 started first and took the lock: it is the owner.
    wait_ready(&s1, None, "gw1, the first owner");
    wait_ready(&s2, STANDBY, "gw2, standby");
    assert_eq!(alua_states(&s1), vec![(1, 0), (2, 2)]);
    assert_eq!(alua_states(&s2), vec![(1, 0), (2, 2)], "gw2 names gw1 the owner (image metadata)");
    let a = pattern(41, 64 << 10);
    assert!(s1.write(0, 0, a.clone()).unwrap().is_good());
    assert!(s2.write(0, 256, pattern(42, 4096)).unwrap().is_check(sense_key::NOT_READY, 0x04, 0x0B));

    // Failover as multipath does it: STPG through the standby path.
    let mut events2 = common::Events::subscribe(&gw2);
    let r = activate(&s2, 2);
    assert!(r.is_good(), "STPG through gw2: {r:?}");
    wait_ready(&s2, None, "gw2 after its take-over");
    let e = events2.wait_for("gateway.fenced");
    assert_eq!((e["lun"].as_u64(), e["reason"].as_str()), (Some(0), Some("take-over")), "{e}");
    assert!(e["clients"].as_array().is_some_and(|c| !c.is_empty()), "the fenced owner's client: {e}");
    let b = pattern(43, 64 << 10);
    assert!(s2.write(0, 128, b.clone()).unwrap().is_good(), "gw2 writes once it owns the image");
    // The old owner was fenced; it rejoins as standby by itself.
    let rejoined = wait_ready(&s1, STANDBY, "gw1 after being fenced");
    println!("gw1 standby again {rejoined:?} after gw2's take-over");
    assert_eq!(alua_states(&s1), vec![(1, 2), (2, 0)]);
    assert_eq!(alua_states(&s2), vec![(1, 2), (2, 0)]);
    let (v1, v2) = (gw1.ctl_json(&["alua", "show"]), gw2.ctl_json(&["alua", "show"]));
    assert_eq!(v2["luns"][0]["ownership"]["by"], "rbd-lock", "{v2}");
    assert_eq!(
        (v1["luns"][0]["ownership"]["lock_held"].clone(), v2["luns"][0]["ownership"]["lock_held"].clone()),
        (json!(false), json!(true))
    );
    assert!(gw2.ctl_ok(&["alua", "show"]).contains("rbd-lock of rbd/"), "lunarctl alua show names the lock");
    assert!(read(&s2, 0, 0, (a.len() / BS) as u32) == a, "gw1's acknowledged writes");

    // The operator moves it back: `lunarctl alua set` on gw1 is a take-over too.
    let out = gw1.ctl_ok(&["alua", "set", "0", "gw1", "active-optimized"]);
    assert!(out.contains("active-optimized"), "{out}");
    wait_ready(&s1, None, "gw1 after lunarctl alua set");
    wait_ready(&s2, STANDBY, "gw2 fenced by the operator's move");
    let c = pattern(44, 4096);
    assert!(s1.write(0, 512, c.clone()).unwrap().is_good());

    // The owner dies; the standby takes over the dead owner's lock.
    let mut gw1 = gw1;
    gw1.child.kill().unwrap();
    gw1.child.wait().unwrap();
    let killed = std::time::Instant::now();
    let r = activate(&s2, 2);
    assert!(r.is_good(), "STPG through gw2 after gw1 died: {r:?}");
    wait_ready(&s2, None, "gw2 after taking over from a dead owner");
    println!("gw2 owner again {:?} after gw1 was killed", killed.elapsed());
    let d = pattern(45, 4096);
    assert!(s2.write(0, 600, d.clone()).unwrap().is_good());
    assert!(read(&s2, 0, 512, 8) == c, "gw1's last acknowledged write");

    // gw1 comes back while gw2 (alive) holds the lock: standby, at once.
    let gw1 = Daemon::start_on_file_portal(&["--config", f1.to_str().unwrap()], ports[0]);
    let s1 = login(&gw1);
    wait_ready(&s1, STANDBY, "gw1 restarted while gw2 owns the image");
    assert_eq!(alua_states(&s1), vec![(1, 2), (2, 0)]);
    // The owner is killed and restarted (as systemd would): its previous
    // process's lock is taken over at start, before hosts need to fail
    // over; the other gateway, which did not ask, stays standby.
    let mut gw2 = gw2;
    gw2.child.kill().unwrap();
    gw2.child.wait().unwrap();
    let restarted = std::time::Instant::now();
    let gw2 = Daemon::start_on_file_portal(&["--config", f2.to_str().unwrap()], ports[1]);
    let s2 = login(&gw2);
    wait_ready(&s2, None, "gw2 restarted after being killed as the owner");
    println!("gw2 owner again {:?} after its restart", restarted.elapsed());
    assert!(
        std::fs::read_to_string(&gw2.log).unwrap().contains("previous process taken over"),
        "the start took the dead process's lock over"
    );
    let e = pattern(46, 4096);
    assert!(s2.write(0, 700, e.clone()).unwrap().is_good());
    assert!(read(&s2, 0, 600, 8) == d, "gw2's write before it was killed");
    wait_ready(&s1, STANDBY, "gw1 standby behind the restarted gw2");
    s1.logout().unwrap();
    stop(gw1);
    s2.logout().unwrap();
    stop(gw2);
    let export = img.export();
    assert!(export[..a.len()] == a[..], "the cluster has gw1's first writes");
    assert!(export[128 * BS..128 * BS + b.len()] == b[..], "the cluster has gw2's writes");
    assert!(export[512 * BS..512 * BS + 4096] == c[..], "the cluster has gw1's last write");
    assert!(export[600 * BS..600 * BS + 4096] == d[..], "the cluster has gw2's write before it was killed");
    assert!(export[700 * BS..700 * BS + 4096] == e[..], "the cluster has the restarted gw2's write");
}

/// `alua=all-active`: both gateways Active/Optimized and writing one image
/// (the lock moves to whichever writes; librbd's cache is off), each
/// reading what the other wrote; no standby to make; a LOGICAL UNIT RESET
/// through one raises the unit attention on the other's nexuses too.
#[test]
fn two_gateways_write_one_rbd_image_all_active() {
    let Some((conf, _cluster)) = cluster("two_gateways_write_one_rbd_image_all_active") else { return };
    let img = Image::create(&conf, "allactive", "16M");
    let dir = tempfile::tempdir().unwrap();
    let ports = [common::free_port(), common::free_port()];
    let lun = format!(
        "backend = \"rbd\"\npool = \"rbd\"\nimage = \"{}\"\nconf = \"{}\"\npr = \"cluster\"\nalua = \"all-active\"",
        img.name,
        img.conf.display()
    );
    let f1 = common::two_gateway_config(dir.path(), "gw1", ports, IQN, &lun);
    let f2 = common::two_gateway_config(dir.path(), "gw2", ports, IQN, &lun);
    let gw1 = Daemon::start_on_file_portal(&["--config", f1.to_str().unwrap()], ports[0]);
    let gw2 = Daemon::start_on_file_portal(&["--config", f2.to_str().unwrap()], ports[1]);
    let (s1, s2) = (login(&gw1), login(&gw2));
    wait_ready(&s1, None, "gw1");
    wait_ready(&s2, None, "gw2");
    assert_eq!(alua_states(&s1), vec![(1, 0), (2, 0)], "both Active/Optimized, as gw1 says");
    assert_eq!(alua_states(&s2), vec![(1, 0), (2, 0)], "and as gw2 says");
    // Writes alternate between the gateways (the lock is handed over each
    // time); each reads the other's at once.
    for i in 0..12u64 {
        let (w, r) = if i % 2 == 0 { (&s1, &s2) } else { (&s2, &s1) };
        let data = pattern(100 + i, 8192);
        let lba = (i % 3) * 16;
        assert!(w.write(0, lba, data.clone()).unwrap().is_good(), "write {i}");
        assert!(read(r, 0, lba, 16) == data, "write {i} read through the other gateway");
    }
    // Nothing to move: asking for a standby is refused, asking for what is
    // there is done.
    let r = set_group(&s1, 2, 2);
    assert!(!r.is_good() && r.sense_code().is_some(), "STPG to standby refused with a sense: {r:?}");
    assert!(activate(&s2, 2).is_good(), "STPG to Active/Optimized: nothing to do");
    let v = gw1.ctl_json(&["alua", "show"]);
    assert_eq!(v["luns"][0]["ownership"]["by"], "all-active", "{v}");

    // LOGICAL UNIT RESET through gw1: gw2's nexus gets BUS DEVICE RESET
    // FUNCTION OCCURRED (29h/03h) before gw1 answers.
    let tmf = s1.task_management(lunar_initiator::TaskMgmtFunction::LogicalUnitReset, 0, None).unwrap();
    assert_eq!(tmf, lunar_initiator::TmfResponseCode::FunctionComplete, "LU reset through gw1");
    let r = s2.test_unit_ready(0).unwrap();
    assert_eq!(
        r.sense_code(),
        Some((sense_key::UNIT_ATTENTION, 0x29, 0x03)),
        "gw2's nexus after gw1's LU reset: {r:?}"
    );
    assert!(s2.test_unit_ready(0).unwrap().is_good());

    // gw1 holds the lock (it wrote last) and dies: gw2's next write waits
    // for it, and after ownership::ALL_ACTIVE_STALL gw2 fences the holder
    // (librbd alone would break the dead holder's lock only once the OSD
    // dropped its watch: osd_client_watch_timeout, 30 s by default).
    let mut events2 = common::Events::subscribe(&gw2);
    assert_eq!(
        s1.test_unit_ready(0).unwrap().sense_code(),
        Some((sense_key::UNIT_ATTENTION, 0x29, 0x03)),
        "the issuer too"
    );
    assert!(s1.write(0, 64, pattern(200, 4096)).unwrap().is_good());
    let mut gw1 = gw1;
    gw1.child.kill().unwrap();
    gw1.child.wait().unwrap();
    let killed = std::time::Instant::now();
    let data = pattern(201, 4096);
    assert!(s2.write(0, 72, data.clone()).unwrap().is_good(), "gw2 writes after gw1 died");
    println!("gw2's first write after the lock holder was killed: {:?}", killed.elapsed());
    let e = events2.wait_for("gateway.fenced");
    assert_eq!(e["reason"], "unresponsive-lock-holder", "{e}");
    assert!(read(&s2, 0, 72, 8) == data);
    s2.logout().unwrap();
    stop(gw2);
}

//! Test support for the tests that run against the single-node cluster of
//! `tests/ceph/micro-cluster.sh` (`LUNAR_CEPH_CONF`): the hold on the
//! cluster, the `rbd` and `ceph` tools, a frozen OSD, a pool of a test's
//! own. Included by path (`#[path]`) from the test crates that need it
//! (crates/block/tests/rbd_backend.rs, crates/lunard/tests/rbd.rs).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard};

/// The tests that freeze the cluster's OSD take this exclusively; every
/// other test holds it shared while it uses the cluster (tests of one binary
/// run in parallel, and a frozen OSD would stall them).
pub static CLUSTER: RwLock<()> = RwLock::new(());

/// The cluster's ceph.conf and a shared hold on it, or `None` (skip) when no
/// cluster is given; with `LUNAR_REQUIRE_CEPH` set, no cluster fails the test.
pub fn cluster(test: &str) -> Option<(PathBuf, RwLockReadGuard<'static, ()>)> {
    match std::env::var_os("LUNAR_CEPH_CONF") {
        Some(c) if !c.is_empty() => Some((PathBuf::from(c), CLUSTER.read().unwrap_or_else(|e| e.into_inner()))),
        _ => {
            assert!(
                std::env::var("LUNAR_REQUIRE_CEPH").map_or(true, |v| v.is_empty() || v == "0"),
                "{test}: LUNAR_REQUIRE_CEPH is set but LUNAR_CEPH_CONF is not"
            );
            eprintln!("{test}: skipped: no Ceph cluster (set LUNAR_CEPH_CONF, see tests/ceph/micro-cluster.sh)");
            None
        }
    }
}

/// Runs a Ceph tool (`rbd`, `ceph`) on the cluster; its standard output.
fn tool(name: &str, conf: &Path, args: &[&str]) -> Vec<u8> {
    let out = Command::new(name).arg("-c").arg(conf).args(args).output().unwrap_or_else(|e| panic!("run {name}: {e}"));
    assert!(out.status.success(), "{name} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

pub fn rbd(conf: &Path, args: &[&str]) -> Vec<u8> {
    tool("rbd", conf, args)
}

pub fn ceph(conf: &Path, args: &[&str]) -> Vec<u8> {
    tool("ceph", conf, args)
}

/// tests/ceph/micro-cluster.sh `cmd` on the cluster whose ceph.conf is `conf`.
pub fn micro_cluster(conf: &Path, cmd: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/ceph/micro-cluster.sh");
    let dir = conf.parent().expect("the cluster's directory");
    let out = Command::new("bash").arg(&script).arg(cmd).arg(dir).output().expect("run micro-cluster.sh");
    assert!(out.status.success(), "micro-cluster.sh {cmd}: {}", String::from_utf8_lossy(&out.stderr));
}

/// The cluster's only OSD frozen (micro-cluster.sh stop-osd: it answers
/// nothing, as an OSD gone away, and keeps its in-memory data) until
/// thawed or dropped, even when the test fails.
pub struct FrozenOsd(PathBuf);

impl FrozenOsd {
    pub fn freeze(conf: &Path) -> FrozenOsd {
        micro_cluster(conf, "stop-osd");
        FrozenOsd(conf.to_path_buf())
    }

    /// Thaws it (through Drop).
    pub fn thaw(self) {}
}

impl Drop for FrozenOsd {
    fn drop(&mut self) {
        micro_cluster(&self.0, "start-osd");
    }
}

/// A copy of the cluster's ceph.conf in `dir` with `rados osd op timeout = secs`.
pub fn conf_with_timeout(conf: &Path, dir: &Path, secs: u64) -> PathBuf {
    let mut text = std::fs::read_to_string(conf).unwrap();
    text.push_str(&format!("\n[client.admin]\nrados osd op timeout = {secs}\n"));
    let path = dir.join("ceph.conf");
    std::fs::write(&path, text).unwrap();
    path
}

/// A pool of a test's own (a quota on `rbd` would stop the other tests),
/// removed with its images when dropped.
pub struct TestPool {
    conf: PathBuf,
    pub name: String,
}

impl TestPool {
    pub fn new(conf: &Path, name: &str) -> TestPool {
        let name = format!("{name}-{}", std::process::id());
        ceph(conf, &["osd", "pool", "create", &name, "8"]);
        let pool = TestPool { conf: conf.to_path_buf(), name };
        rbd(conf, &["pool", "init", &pool.name]);
        pool
    }
}

impl Drop for TestPool {
    fn drop(&mut self) {
        let n = &self.name;
        let _ = Command::new("ceph")
            .arg("-c")
            .arg(&self.conf)
            .args(["osd", "pool", "rm", n, n, "--yes-i-really-really-mean-it"])
            .output();
    }
}

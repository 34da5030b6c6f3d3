//! Integration tests of the `rbd` backend against a real Ceph cluster.
//!
//! They need a cluster: `LUNAR_CEPH_CONF=<ceph.conf>` (for instance
//! `tests/ceph/micro-cluster.sh run -- cargo test -p lunar-block --test
//! rbd_backend`). Without it every test prints why it is skipped and passes,
//! unless `LUNAR_REQUIRE_CEPH=1` (CI) makes that a failure. Each test creates
//! its own images in pool `rbd` with the `rbd` tool and removes them.

use std::future::Future;
use std::path::PathBuf;
use std::pin::pin;
use std::process::Command;
use std::sync::Arc;
use std::task::Poll;

use lunar_block::{Backend, ErrorKind, RbdBackend, RbdError, RbdOptions};

fn run<F: Future>(f: F) -> F::Output {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    tokio::task::LocalSet::new().block_on(&rt, f)
}

#[path = "../../../tests/ceph/harness.rs"]
mod harness;
use harness::{ceph, conf_with_timeout, rbd, FrozenOsd, TestPool, CLUSTER};

/// [`harness::cluster`], in a build that must have librbd when a cluster is given.
fn cluster(test: &str) -> Option<(PathBuf, std::sync::RwLockReadGuard<'static, ()>)> {
    let c = harness::cluster(test)?;
    assert!(lunar_block::rbd::available(), "LUNAR_CEPH_CONF is set but this build has no librbd");
    Some(c)
}

/// An image created for one test and removed afterwards.
struct TestImage {
    conf: PathBuf,
    name: String,
}

impl TestImage {
    fn new(conf: &std::path::Path, test: &str, size: &str) -> TestImage {
        let name = format!("{test}-{}", std::process::id());
        let _ = Command::new("rbd").arg("-c").arg(conf).args(["rm", "--no-progress", &format!("rbd/{name}")]).output();
        rbd(conf, &["create", "--size", size, &format!("rbd/{name}")]);
        TestImage { conf: conf.to_path_buf(), name }
    }

    fn options(&self) -> RbdOptions {
        RbdOptions { pool: "rbd".into(), image: self.name.clone(), conf: Some(self.conf.clone()), ..Default::default() }
    }

    fn open(&self) -> Arc<RbdBackend> {
        Arc::new(RbdBackend::open(&self.options()).unwrap_or_else(|e| panic!("open {}: {e}", self.name)))
    }

    fn spec(&self) -> String {
        format!("rbd/{}", self.name)
    }
}

impl Drop for TestImage {
    fn drop(&mut self) {
        let _ = Command::new("rbd").arg("-c").arg(&self.conf).args(["rm", "--no-progress", &self.spec()]).output();
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8).collect()
}

#[test]
fn read_write_flush_fua() {
    let Some((conf, _cluster)) = cluster("read_write_flush_fua") else { return };
    let img = TestImage::new(&conf, "rw", "16M");
    let b = Backend::Rbd(img.open());
    assert_eq!(b.size(), 16 << 20);
    assert_eq!(b.kind_name(), "rbd");
    run(async {
        assert_eq!(b.read(0, 4096).await.unwrap(), vec![0; 4096], "a new image reads zeros");
        let data = pattern(1, 1 << 20);
        // Across an object boundary (4 MiB objects).
        b.write((4 << 20) - 4096, data.clone(), false).await.unwrap();
        assert_eq!(b.read((4 << 20) - 4096, 1 << 20).await.unwrap(), data);
        b.write(512, pattern(2, 512), true).await.unwrap();
        assert_eq!(b.read(512, 512).await.unwrap(), pattern(2, 512));
        b.flush().await.unwrap();
        assert_eq!(b.read(0, 0).await.unwrap(), Vec::<u8>::new());
        // Out of range: refused before librbd.
        assert_eq!(b.read(16 << 20, 512).await.unwrap_err().kind, ErrorKind::OutOfRange);
        assert_eq!(b.write((16 << 20) - 512, vec![0; 1024], false).await.unwrap_err().kind, ErrorKind::OutOfRange);
        // Many requests in flight at once, completed in any order.
        let futs = (0..64u64).map(|i| {
            let b = b.clone();
            async move { b.write(i * 65536, pattern(i as u8, 65536), false).await }
        });
        for r in futures_join(futs.collect()).await {
            r.unwrap();
        }
        for i in 0..64u64 {
            assert_eq!(b.read(i * 65536, 65536).await.unwrap(), pattern(i as u8, 65536), "block {i}");
        }
        // Into lent memory (rbd_aio_readv), across segments and an object
        // boundary; a write of shared bytes (librbd reads them in place).
        let sg = lunar_block::SgBuf::zeroed(1 << 20, 7);
        b.read_into((4 << 20) - 4096, &sg, 1 << 20).await.unwrap();
        let expected = b.read((4 << 20) - 4096, 1 << 20).await.unwrap();
        assert_eq!(expected[4096..], data[4096..], "(the first 4 KiB were written again since)");
        assert_eq!(sg.filled(), 1 << 20);
        assert!(sg.to_vec(1 << 20) == expected, "read_into and read disagree");
        let shared = lunar_block::Bytes::from(pattern(9, 8192));
        b.write(8 << 20, shared.clone(), true).await.unwrap();
        let sg = lunar_block::SgBuf::zeroed(8192, 3);
        b.read_into(8 << 20, &sg, 8192).await.unwrap();
        assert_eq!(sg.to_vec(8192), &shared[..]);
        let small = lunar_block::SgBuf::zeroed(512, 1);
        assert_eq!(b.read_into(16 << 20, &small, 512).await.unwrap_err().kind, ErrorKind::OutOfRange);
    });
}

/// Polls every future to completion concurrently (no extra crates).
async fn futures_join<F: Future + 'static>(futs: Vec<F>) -> Vec<F::Output>
where
    F::Output: 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::task::spawn_local).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[test]
fn discard_write_zeroes_and_allocation() {
    let Some((conf, _cluster)) = cluster("discard_write_zeroes_and_allocation") else { return };
    let img = TestImage::new(&conf, "alloc", "16M");
    let b = Backend::Rbd(img.open());
    run(async {
        assert_eq!(b.allocation_async(0, 16 << 20).await.unwrap(), vec![(0, 16 << 20, false)]);
        b.write(1 << 20, vec![7; 64 << 10], false).await.unwrap();
        b.write(8 << 20, vec![9; 4096], false).await.unwrap();
        let ext = b.allocation_async(0, 16 << 20).await.unwrap();
        // librbd knows extents within an object only as far as the OSD's
        // store tells (memstore: from the object's start to its end), so
        // the written ranges are mapped and objects never written are not.
        let mapped = |at: u64| ext.iter().any(|&(o, l, m)| m && o <= at && at < o + l);
        assert!(mapped(1 << 20) && mapped((1 << 20) + (64 << 10) - 1) && mapped(8 << 20), "{ext:?}");
        assert!(!mapped(2 << 20) && !mapped(4 << 20) && !mapped(12 << 20), "{ext:?}");
        assert_eq!(ext.iter().map(|e| e.1).sum::<u64>(), 16 << 20, "a cover: {ext:?}");
        assert_eq!(b.allocation(0, 16 << 20).unwrap(), ext, "blocking and async agree");
        // A partial discard inside an object reads back as zeros.
        b.discard((1 << 20) + 4096, 8192).await.unwrap();
        let mut want = vec![7u8; 64 << 10];
        want[4096..12288].fill(0);
        assert_eq!(b.read(1 << 20, 64 << 10).await.unwrap(), want);
        // Discarding a whole object deallocates it.
        b.discard(0, 4 << 20).await.unwrap();
        assert_eq!(b.read(1 << 20, 64 << 10).await.unwrap(), vec![0; 64 << 10]);
        assert_eq!(b.allocation_async(0, 4 << 20).await.unwrap(), vec![(0, 4 << 20, false)]);
        // Write zeroes.
        b.write_zeroes(8 << 20, 4096).await.unwrap();
        assert_eq!(b.read(8 << 20, 4096).await.unwrap(), vec![0; 4096]);
        b.write(12 << 20, vec![3; 8192], false).await.unwrap();
        b.write_zeroes((12 << 20) + 512, 1024).await.unwrap();
        let mut want = vec![3u8; 8192];
        want[512..1536].fill(0);
        assert_eq!(b.read(12 << 20, 8192).await.unwrap(), want);
        assert_eq!(b.discard(16 << 20, 512).await.unwrap_err().kind, ErrorKind::OutOfRange);
    });
}

#[test]
fn resize_changes_the_image() {
    let Some((conf, _cluster)) = cluster("resize_changes_the_image") else { return };
    let img = TestImage::new(&conf, "resize", "8M");
    let b = Backend::Rbd(img.open());
    run(async { b.write((8 << 20) - 4096, vec![5; 4096], false).await.unwrap() });
    b.resize(16 << 20).unwrap();
    assert_eq!(b.size(), 16 << 20);
    let info = String::from_utf8(rbd(&conf, &["info", "--format", "json", &img.spec()])).unwrap();
    assert!(info.contains("\"size\":16777216"), "{info}");
    run(async {
        assert_eq!(b.read((8 << 20) - 4096, 4096).await.unwrap(), vec![5; 4096]);
        assert_eq!(b.read((16 << 20) - 4096, 4096).await.unwrap(), vec![0; 4096]);
    });
    b.resize(4 << 20).unwrap();
    run(async { assert_eq!(b.read(4 << 20, 512).await.unwrap_err().kind, ErrorKind::OutOfRange) });
}

#[test]
fn export_and_import_agree_with_lunar() {
    let Some((conf, _cluster)) = cluster("export_and_import_agree_with_lunar") else { return };
    let img = TestImage::new(&conf, "export", "8M");
    let dir = tempfile::tempdir().unwrap();
    let b = Backend::Rbd(img.open());
    let data = pattern(42, 8 << 20);
    run(async { b.write(0, data.clone(), true).await.unwrap() });
    let out = dir.path().join("exported");
    rbd(&conf, &["export", "--no-progress", &img.spec(), out.to_str().unwrap()]);
    assert!(std::fs::read(&out).unwrap() == data, "rbd export reads what Lunar wrote");
    // The reverse: an image imported with the rbd tool, read through Lunar.
    let input = dir.path().join("input");
    let data2 = pattern(7, 4 << 20);
    std::fs::write(&input, &data2).unwrap();
    let imported = TestImage { conf: conf.clone(), name: format!("imported-{}", std::process::id()) };
    let _ = Command::new("rbd").arg("-c").arg(&conf).args(["rm", "--no-progress", &imported.spec()]).output();
    rbd(&conf, &["import", "--no-progress", input.to_str().unwrap(), &imported.spec()]);
    let b2 = Backend::Rbd(imported.open());
    assert_eq!(b2.size(), 4 << 20);
    run(async { assert!(b2.read(0, 4 << 20).await.unwrap() == data2, "Lunar reads what rbd import wrote") });
}

#[test]
fn cancelled_requests_keep_their_buffers_until_librbd_is_done() {
    let Some((conf, _cluster)) = cluster("cancelled_requests_keep_their_buffers_until_librbd_is_done") else { return };
    let img = TestImage::new(&conf, "cancel", "16M");
    let r = img.open();
    run(async {
        for i in 0..32u64 {
            // Submitted, then dropped before librbd completes it.
            let mut read = pin!(r.read(0, 1 << 20));
            let _ = std::future::poll_fn(|cx| Poll::Ready(read.as_mut().poll(cx))).await;
            let mut write = pin!(r.write(i * 4096, vec![i as u8; 4096], false));
            let _ = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
        }
        r.flush().await.unwrap();
        assert_eq!(r.read(31 * 4096, 4096).await.unwrap(), vec![31; 4096], "dropped futures still wrote");
    });
    // Closing waits for whatever is still in flight.
    drop(r);
}

#[test]
fn several_io_threads_share_one_image() {
    let Some((conf, _cluster)) = cluster("several_io_threads_share_one_image") else { return };
    let img = TestImage::new(&conf, "threads", "16M");
    let r = img.open();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                run(async {
                    for i in 0..32u64 {
                        let at = (t * 32 + i) * 65536;
                        r.write(at, pattern((t * 32 + i) as u8, 65536), false).await.unwrap();
                        assert_eq!(r.read(at, 65536).await.unwrap(), pattern((t * 32 + i) as u8, 65536));
                    }
                })
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
fn open_errors_name_pool_and_image() {
    let Some((conf, _cluster)) = cluster("open_errors_name_pool_and_image") else { return };
    let o = RbdOptions {
        pool: "rbd".into(),
        image: "no-such-image".into(),
        conf: Some(conf.clone()),
        ..Default::default()
    };
    let e = RbdBackend::open(&o).unwrap_err();
    assert!(matches!(e, RbdError::Open { errno: libc::ENOENT, .. }), "{e:?}");
    assert!(e.to_string().contains("rbd/no-such-image"), "{e}");
    let o =
        RbdOptions { pool: "no-such-pool".into(), image: "x".into(), conf: Some(conf.clone()), ..Default::default() };
    let e = RbdBackend::open(&o).unwrap_err();
    assert!(e.to_string().contains("no pool named no-such-pool"), "{e}");
    let o = RbdOptions {
        pool: "rbd".into(),
        image: "x".into(),
        conf: Some("/nonexistent/ceph.conf".into()),
        ..Default::default()
    };
    let e = RbdBackend::open(&o).unwrap_err();
    assert!(e.to_string().contains("/nonexistent/ceph.conf"), "{e}");
}

#[test]
fn unreachable_cluster_fails_within_the_timeout() {
    if cluster("unreachable_cluster_fails_within_the_timeout").is_none() {
        return;
    }
    // A monitor address where nothing listens.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.path().join("ceph.conf");
    std::fs::write(
        &conf,
        format!(
            "[global]\nmon host = v2:127.0.0.1:{port}\nauth cluster required = none\n\
             auth service required = none\nauth client required = none\nlog file = {}/client.log\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let o = RbdOptions { pool: "rbd".into(), image: "disk0".into(), conf: Some(conf.clone()), ..Default::default() };
    let e = RbdBackend::open(&o).unwrap_err();
    assert!(matches!(e, RbdError::Unreachable { secs: lunar_block::rbd::CONNECT_TIMEOUT_SECS, .. }), "{e:?}");
    let text = e.to_string();
    assert!(text.contains("rbd/disk0") && text.contains(conf.to_str().unwrap()), "{text}");
}

#[test]
fn compare_and_write_is_atomic_across_clients() {
    let Some((conf, _cluster)) = cluster("compare_and_write_is_atomic_across_clients") else { return };
    let img = TestImage::new(&conf, "caw", "8M");
    // Two opens: two RADOS clients, as two gateways would be.
    let (a, b) = (img.open(), img.open());
    assert_eq!(Backend::Rbd(a.clone()).atomic_compare_and_write(), Some(512));
    let sector = |n: u64| {
        let mut v = vec![0u8; 512];
        v[..8].copy_from_slice(&n.to_le_bytes());
        v
    };
    run(async {
        // Match: written. Miscompare: the first differing byte, nothing written.
        assert_eq!(a.compare_and_write(4096, vec![0; 512], sector(1)).await.unwrap(), None);
        assert_eq!(b.read(4096, 512).await.unwrap(), sector(1));
        let mut wrong = sector(1);
        wrong[100] = 9;
        assert_eq!(b.compare_and_write(4096, wrong, sector(2)).await.unwrap(), Some(100));
        assert_eq!(a.read(4096, 512).await.unwrap(), sector(1));
        // In another object, too.
        let far = (4 << 20) + 1024;
        assert_eq!(a.compare_and_write(far, vec![0; 512], sector(5)).await.unwrap(), None);
        let mut wrong = sector(5);
        wrong[511] ^= 1;
        assert_eq!(a.compare_and_write(far, wrong, sector(6)).await.unwrap(), Some(511));
        // Only one aligned 512-byte unit (librbd 16).
        let e = a.compare_and_write(4096 + 256, vec![0; 512], vec![0; 512]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
        let e = a.compare_and_write(0, vec![0; 1024], vec![0; 1024]).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unsupported);
    });
    // A counter incremented by compare-and-write from two clients on two
    // threads: every successful increment counts exactly once (a read,
    // compare, write emulation would lose some: both clients would read
    // the same value and both "succeed").
    let workers: Vec<_> = [a, b]
        .into_iter()
        .map(|r| {
            std::thread::spawn(move || {
                run(async {
                    let mut won = 0u64;
                    let mut tries = 0u64;
                    while won < 50 {
                        tries += 1;
                        assert!(tries < 10_000, "no progress");
                        let cur = r.read(0, 512).await.unwrap();
                        let n = u64::from_le_bytes(cur[..8].try_into().unwrap());
                        if r.compare_and_write(0, cur, sector(n + 1)).await.unwrap().is_none() {
                            won += 1;
                        }
                    }
                    won
                })
            })
        })
        .collect();
    let won: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
    let b = img.open();
    let end = run(async { b.read(0, 512).await.unwrap() });
    assert_eq!(u64::from_le_bytes(end[..8].try_into().unwrap()), won, "an increment was lost or doubled");
}

#[test]
fn a_blocklisted_client_is_offline() {
    let Some((conf, _cluster)) = cluster("a_blocklisted_client_is_offline") else { return };
    let img = TestImage::new(&conf, "blocklist", "8M");
    let r = img.open();
    run(async { r.write(0, vec![1; 4096], false).await.unwrap() });
    // Fence this client as a takeover would: blocklist its address (the watcher's).
    let status = String::from_utf8(rbd(&conf, &["status", "--format", "json", &img.spec()])).unwrap();
    let at = status.find("\"address\":\"").expect("a watcher") + "\"address\":\"".len();
    let addr = &status[at..at + status[at..].find('"').unwrap()];
    let out = Command::new("ceph").arg("-c").arg(&conf).args(["osd", "blocklist", "add", addr]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    run(async {
        let e = r.write(4096, vec![2; 4096], false).await.unwrap_err();
        assert_eq!((e.kind, e.errno), (ErrorKind::Offline, libc::ESHUTDOWN), "{e}");
    });
    let _ = Command::new("ceph").arg("-c").arg(&conf).args(["osd", "blocklist", "rm", addr]).output();
    // A new client of the image is not fenced, and sees what the old one wrote before.
    let fresh = img.open();
    run(async { assert_eq!(fresh.read(0, 4096).await.unwrap(), vec![1; 4096]) });
}

#[test]
fn the_default_io_timeout_is_bounded() {
    let Some((conf, _cluster)) = cluster("the_default_io_timeout_is_bounded") else { return };
    let img = TestImage::new(&conf, "iotimeout", "8M");
    // The test cluster's configuration leaves rados_osd_op_timeout at 0:
    // requests would wait for ever; the backend's default bounds them.
    assert_eq!(img.open().io_timeout_secs(), lunar_block::rbd::IO_TIMEOUT_SECS);
}

#[test]
fn an_osd_gone_away_fails_requests_as_timed_out_then_they_work_again() {
    let Some((conf, shared)) = cluster("an_osd_gone_away_fails_requests_as_timed_out_then_they_work_again") else {
        return;
    };
    // The OSD freezes: no other test of this binary may use the cluster meanwhile.
    drop(shared);
    let _alone = CLUSTER.write().unwrap_or_else(|e| e.into_inner());
    let img = TestImage::new(&conf, "osdaway", "8M");
    let dir = tempfile::tempdir().unwrap();
    const SECS: u64 = 3;
    let options = RbdOptions { conf: Some(conf_with_timeout(&conf, dir.path(), SECS)), ..img.options() };
    let r = Arc::new(RbdBackend::open(&options).unwrap());
    assert_eq!(r.io_timeout_secs(), SECS);
    run(async { r.write(0, vec![1; 4096], false).await.unwrap() });
    let osd = FrozenOsd::freeze(&conf);
    // A watchdog far above the bound: the requests must fail, not hang.
    let watchdog = std::time::Duration::from_secs(20 * SECS);
    let (write, read) = run(async {
        let t = std::time::Instant::now();
        let e = tokio::time::timeout(watchdog, r.write(4096, vec![2; 4096], false))
            .await
            .expect("a write to a frozen OSD hung")
            .unwrap_err();
        assert_eq!((e.kind, e.errno), (ErrorKind::TimedOut, libc::ETIMEDOUT), "{e}");
        let write = t.elapsed();
        let t = std::time::Instant::now();
        let e =
            tokio::time::timeout(watchdog, r.read(0, 4096)).await.expect("a read from a frozen OSD hung").unwrap_err();
        assert_eq!(e.kind, ErrorKind::TimedOut, "{e}");
        (write, t.elapsed())
    });
    println!("OSD frozen, rados_osd_op_timeout {SECS} s: the write failed after {write:?}, the read after {read:?}");
    osd.thaw();
    run(async {
        r.write(4096, vec![2; 4096], false).await.unwrap();
        r.flush().await.unwrap();
        assert_eq!(r.read(0, 4096).await.unwrap(), vec![1; 4096]);
        assert_eq!(r.read(4096, 4096).await.unwrap(), vec![2; 4096]);
    });
}

#[test]
fn a_full_pool_fails_writes_as_no_space() {
    let Some((conf, _cluster)) = cluster("a_full_pool_fails_writes_as_no_space") else { return };
    let pool = TestPool::new(&conf, "lunarfull");
    let spec = format!("{}/disk", pool.name);
    rbd(&conf, &["create", "--size", "64M", &spec]);
    let options =
        RbdOptions { pool: pool.name.clone(), image: "disk".into(), conf: Some(conf.clone()), ..Default::default() };
    let r = Arc::new(RbdBackend::open(&options).unwrap());
    ceph(&conf, &["osd", "pool", "set-quota", &pool.name, "max_bytes", &(4u64 << 20).to_string()]);
    // The cluster marks the pool full once its statistics show the quota
    // reached (a few seconds): write until a write fails.
    let chunk = 1usize << 20;
    let (written, e) = run(async {
        for i in 0..120u64 {
            match r.write((i % 64) * chunk as u64, vec![i as u8 + 1; chunk], false).await {
                Ok(()) => tokio::time::sleep(std::time::Duration::from_millis(250)).await,
                Err(e) => return (i, e),
            }
        }
        panic!("120 writes of 1 MiB (30 s) into a pool with a 4 MiB quota, none refused");
    });
    println!("pool quota 4 MiB: write {written} failed: {e}");
    assert_eq!(e.kind, ErrorKind::NoSpace, "{e}");
    // Room again: the quota lifted, writes succeed once the cluster knows.
    ceph(&conf, &["osd", "pool", "set-quota", &pool.name, "max_bytes", "0"]);
    run(async {
        for _ in 0..120 {
            if r.write(0, vec![7; 4096], false).await.is_ok() {
                assert_eq!(r.read(0, 4096).await.unwrap(), vec![7; 4096]);
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
        panic!("writes still fail 30 s after the quota was lifted");
    });
    drop(r);
    let _ = Command::new("rbd").arg("-c").arg(&conf).args(["rm", "--no-progress", &spec]).output();
}

/// The ownership primitives of several gateways: one client takes the
/// exclusive lock for good and the other cannot write; a take-over fences
/// the owner (blocklisted: its writes fail as Offline) and moves the lock;
/// the new owner writes; image metadata carries who owns it.
#[test]
fn a_take_over_fences_the_owner_and_moves_the_lock() {
    let Some((conf, _cluster)) = cluster("a_take_over_fences_the_owner_and_moves_the_lock") else { return };
    let img = TestImage::new(&conf, "takeover", "8M");
    let (a, b) = (img.open(), img.open());
    a.set_lock_managed(true);
    b.set_lock_managed(true);
    assert!(a.is_exclusive() && !a.owns_lock());
    assert!(a.check_sole_writer(0, 512).is_err(), "not the only writer before taking the lock");
    assert!(a.try_take_lock().unwrap(), "a free lock is taken");
    assert!(a.owns_lock() && a.check_sole_writer(0, 512).is_ok());
    a.set_metadata("lunar.owner", "gw1").unwrap();
    run(async { a.write(0, vec![1; 4096], false).await.unwrap() });
    assert!(!b.try_take_lock().unwrap(), "the owner keeps its lock");
    assert_eq!(b.lock_owners().unwrap().len(), 1);
    assert_eq!(b.metadata("lunar.owner").unwrap().as_deref(), Some("gw1"));
    assert_eq!(b.metadata("lunar.nothing").unwrap(), None);
    let e = run(async { b.write(4096, vec![2; 4096], false).await.unwrap_err() });
    assert_eq!(e.errno, libc::EROFS, "a write of a non-owner: {e}");

    let fenced = b.take_over_lock().unwrap();
    assert_eq!(fenced.len(), 1, "{fenced:?}");
    assert!(b.owns_lock() && !b.lock_owners().unwrap().is_empty());
    b.set_metadata("lunar.owner", "gw2").unwrap();
    run(async { b.write(4096, vec![2; 4096], false).await.unwrap() });
    let e = run(async { a.write(0, vec![9; 4096], false).await.unwrap_err() });
    assert_eq!(e.kind, ErrorKind::Offline, "the fenced owner's write: {e}");
    assert_eq!(run(async { b.read(0, 8192).await.unwrap() }), [vec![1; 4096], vec![2; 4096]].concat());
    // The fenced client comes back as a new one, not the owner.
    a.reopen().unwrap();
    assert!(!a.owns_lock() && !a.try_take_lock().unwrap());
    b.release_lock().unwrap();
    assert!(!b.owns_lock());
    assert!(a.try_take_lock().unwrap(), "a released lock is free");
}

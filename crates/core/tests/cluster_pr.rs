//! Persistent reservations shared by several gateways through one RADOS
//! object, against a real cluster (`LUNAR_CEPH_CONF`; see
//! tests/ceph/micro-cluster.sh). Without a cluster the tests are skipped,
//! unless `LUNAR_REQUIRE_CEPH=1`.
//!
//!     tests/ceph/micro-cluster.sh run -- env LUNAR_REQUIRE_CEPH=1 \
//!         cargo test -p lunar-core --test cluster_pr -- --nocapture

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use lunar_block::rbd::shared_object::SharedObject;
use lunar_block::RbdOptions;
use lunar_core::cluster_reservations::{apply_pr_out, object_name, read_state, ClusterPrError};
use lunar_scsi::{Command, Nexus, PrOutRequest, PrType, ScsiError};

#[path = "../../../tests/ceph/harness.rs"]
mod harness;

fn cluster(test: &str) -> Option<(PathBuf, std::sync::RwLockReadGuard<'static, ()>)> {
    let c = harness::cluster(test)?;
    assert!(lunar_block::rbd::available(), "LUNAR_CEPH_CONF is set but this build has no librados");
    Some(c)
}

fn options(conf: &Path, image: &str) -> RbdOptions {
    RbdOptions { pool: "rbd".into(), image: image.into(), conf: Some(conf.to_path_buf()), ..Default::default() }
}

/// A PERSISTENT RESERVE OUT as an initiator sends it: CDB and parameter list.
fn pr_out(action: u8, pr_type: PrType, key: u64, sa_key: u64) -> PrOutRequest {
    let cdb = [0x5F, action, pr_type as u8, 0, 0, 0, 0, 0, 24, 0];
    let Ok(Command::PersistentReserveOut(p)) = Command::decode(&cdb) else { panic!("PR OUT CDB") };
    let mut data = vec![0u8; 24];
    data[..8].copy_from_slice(&key.to_be_bytes());
    data[8..16].copy_from_slice(&sa_key.to_be_bytes());
    PrOutRequest::decode(&p, &data).expect("PR OUT parameters")
}

const REGISTER: u8 = 0x00;
const RESERVE: u8 = 0x01;
const RELEASE: u8 = 0x02;
const REGISTER_AND_IGNORE: u8 = 0x06;

/// What a gateway's books record once its command succeeded: the keys of
/// its nexuses, and which of them holds the reservation.
type After = Box<dyn Fn(&mut Vec<Option<u64>>, &mut Option<usize>)>;

/// A small deterministic generator per thread.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Removes the test's object when dropped.
struct Cleanup(SharedObject);

impl Drop for Cleanup {
    fn drop(&mut self) {
        // An empty state is as good as none for the next run of the test.
        let _ = self.0.read().map(|r| r.map(|(v, _)| self.0.compare_and_set(Some(v), b"")));
    }
}

/// The race: several simulated gateways, each a client of the cluster of
/// its own on a thread of its own, run PERSISTENT RESERVE OUT commands
/// concurrently against one image's reservation object: each registers its
/// own I_T nexuses, changes their keys (REGISTER with the old key, REGISTER
/// AND IGNORE EXISTING KEY), unregisters them, and competes for one Write
/// Exclusive reservation (RESERVE / RELEASE). No update may be lost: the
/// final PRGENERATION is the number of generation-changing commands that
/// succeeded, every nexus that should be registered is, with its last key,
/// and the reservation is held by the one nexus that believes it holds it.
#[test]
fn concurrent_pr_out_from_several_gateways_loses_no_update() {
    let Some((conf, _hold)) = cluster("concurrent_pr_out_from_several_gateways_loses_no_update") else { return };
    const GATEWAYS: u64 = 4;
    const NEXUSES: u64 = 4;
    let total_ops: u64 = std::env::var("LUNAR_PR_RACE_OPS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let per_gateway = total_ops / GATEWAYS;
    let image = format!("race-{}", std::process::id());
    let opts = options(&conf, &image);
    let cleanup = Cleanup(SharedObject::open(&opts, &object_name(&image)).expect("open"));
    if let Some((v, _)) = cleanup.0.read().unwrap() {
        assert!(cleanup.0.compare_and_set(Some(v), b"").unwrap().is_some());
    }
    let retries = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..GATEWAYS)
        .map(|g| {
            let opts = opts.clone();
            let retries = retries.clone();
            std::thread::spawn(move || {
                let obj = SharedObject::open(&opts, &object_name(&opts.image)).expect("open");
                let nexus: Vec<Nexus> = (0..NEXUSES)
                    .map(|k| Nexus::new(format!("iqn.2026-12.test:gw{g}-host{k},i,0x40000000000{k}"), 1 + g as u16))
                    .collect();
                let mut keys: Vec<Option<u64>> = vec![None; NEXUSES as usize];
                let mut holder: Option<usize> = None;
                let mut serial = 0u64;
                let mut fresh = || {
                    serial += 1;
                    (g + 1) << 48 | serial
                };
                let (mut bumps, mut reserves, mut conflicts) = (0u64, 0u64, 0u64);
                let mut rng = Lcg(g * 7919 + 1);
                for _ in 0..per_gateway {
                    let k = rng.next(NEXUSES) as usize;
                    let n = &nexus[k];
                    let roll = rng.next(100);
                    let (req, bumping, after): (PrOutRequest, bool, After) = match keys[k] {
                        None => {
                            let key = fresh();
                            let action = if roll < 50 { REGISTER } else { REGISTER_AND_IGNORE };
                            (
                                pr_out(action, PrType::WriteExclusive, 0, key),
                                true,
                                Box::new(move |ks, _| ks[k] = Some(key)),
                            )
                        }
                        Some(old) if roll < 30 => {
                            let key = fresh();
                            (
                                pr_out(REGISTER, PrType::WriteExclusive, old, key),
                                true,
                                Box::new(move |ks, _| ks[k] = Some(key)),
                            )
                        }
                        Some(_) if roll < 50 => {
                            let key = fresh();
                            (
                                pr_out(REGISTER_AND_IGNORE, PrType::WriteExclusive, 0, key),
                                true,
                                Box::new(move |ks, _| ks[k] = Some(key)),
                            )
                        }
                        Some(old) if roll < 60 => (
                            pr_out(REGISTER, PrType::WriteExclusive, old, 0),
                            true,
                            Box::new(move |ks, h| {
                                ks[k] = None;
                                if *h == Some(k) {
                                    *h = None; // the holder's unregistration releases it
                                }
                            }),
                        ),
                        Some(old) if holder == Some(k) => {
                            (pr_out(RELEASE, PrType::WriteExclusive, old, 0), false, Box::new(|_, h| *h = None))
                        }
                        Some(old) => {
                            (pr_out(RESERVE, PrType::WriteExclusive, old, 0), false, Box::new(move |_, h| *h = Some(k)))
                        }
                    };
                    match apply_pr_out(&obj, n, &req, |_| {}) {
                        Ok(a) => {
                            retries.fetch_add(u64::from(a.retries), Ordering::Relaxed);
                            if bumping {
                                assert!(a.changed, "{req:?} changed nothing");
                                assert_eq!(a.new.generation, a.old.generation.wrapping_add(1));
                                bumps += 1;
                            } else {
                                reserves += 1;
                            }
                            after(&mut keys, &mut holder);
                        }
                        Err(ClusterPrError::Scsi(ScsiError::ReservationConflict)) if !bumping => conflicts += 1,
                        Err(e) => panic!("gateway {g}: {req:?} by {n:?}: {e}"),
                    }
                }
                (nexus, keys, holder, bumps, reserves, conflicts)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().expect("gateway thread")).collect();
    let elapsed = started.elapsed();
    let fin = read_state(&cleanup.0).expect("read").state;
    let bumps: u64 = results.iter().map(|r| r.3).sum();
    let reserves: u64 = results.iter().map(|r| r.4).sum();
    let conflicts: u64 = results.iter().map(|r| r.5).sum();
    let ops = bumps + reserves + conflicts;
    println!(
        "PR OUT race: {GATEWAYS} gateways, {ops} commands ({bumps} changing PRGENERATION, {reserves} RESERVE/RELEASE \
         done, {conflicts} refused RESERVATION CONFLICT), {} compare-and-set retries, in {:.2} s ({:.0}/s)",
        retries.load(Ordering::Relaxed),
        elapsed.as_secs_f64(),
        ops as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(ops, per_gateway * GATEWAYS);
    assert!(ops >= 10_000 || std::env::var("LUNAR_PR_RACE_OPS").is_ok());
    assert_eq!(u64::from(fin.generation), bumps, "PRGENERATION: an update was lost");
    let mut expected_regs = 0;
    for (nexus, keys, _, _, _, _) in &results {
        for (n, key) in nexus.iter().zip(keys) {
            assert_eq!(fin.registration(n).map(|r| r.key), *key, "registration of {n:?}");
            expected_regs += usize::from(key.is_some());
        }
    }
    assert_eq!(fin.registrations.len(), expected_regs, "registrations");
    let believers: Vec<&Nexus> =
        results.iter().filter_map(|(nexus, _, holder, _, _, _)| holder.map(|k| &nexus[k])).collect();
    assert!(believers.len() <= 1, "two holders believed in: {believers:?}");
    match (&fin.reservation, believers.first()) {
        (None, None) => {}
        (Some(r), Some(n)) => {
            assert_eq!(&r.holder, *n);
            assert_eq!(r.pr_type, PrType::WriteExclusive);
        }
        (r, b) => panic!("reservation {r:?}, believed held by {b:?}"),
    }
}

/// The object's compare-and-set refuses a stale version and a second
/// create, and a notify reaches a watcher, which acknowledges it.
#[test]
fn shared_object_compare_and_set_and_notify() {
    let Some((conf, _hold)) = cluster("shared_object_compare_and_set_and_notify") else { return };
    let image = format!("cas-{}", std::process::id());
    let opts = options(&conf, &image);
    let a = SharedObject::open(&opts, &object_name(&image)).unwrap();
    let b = SharedObject::open(&opts, &object_name(&image)).unwrap();
    let _cleanup = Cleanup(SharedObject::open(&opts, &object_name(&image)).unwrap());
    let v0 = match a.read().unwrap() {
        None => {
            let v = a.compare_and_set(None, b"one").unwrap().expect("created");
            assert_eq!(b.compare_and_set(None, b"two").unwrap(), None, "second create");
            v
        }
        Some((v, _)) => a.compare_and_set(Some(v), b"one").unwrap().expect("set"),
    };
    assert_eq!(b.read().unwrap(), Some((v0, b"one".to_vec())));
    let v1 = b.compare_and_set(Some(v0), b"two").unwrap().expect("b wins");
    assert!(v1 > v0);
    assert_eq!(a.compare_and_set(Some(v0), b"three").unwrap(), None, "a's version is stale");
    assert_eq!(a.read().unwrap(), Some((v1, b"two".to_vec())));

    let (tx, rx) = std::sync::mpsc::channel();
    let tx = std::sync::Mutex::new(tx);
    b.watch(Box::new(move |ev| {
        let _ = tx.lock().unwrap().send(ev);
    }))
    .unwrap();
    let b = Arc::new(b);
    let acker = {
        let b = b.clone();
        std::thread::spawn(move || {
            if let Ok(lunar_block::rbd::shared_object::WatchEvent::Notify { notify_id, payload, .. }) =
                rx.recv_timeout(std::time::Duration::from_secs(10))
            {
                assert_eq!(payload, b"hello");
                b.ack(notify_id, b"seen").unwrap();
            }
        })
    };
    let out = a.notify(b"hello", std::time::Duration::from_secs(10)).unwrap();
    acker.join().unwrap();
    assert_eq!(out.timed_out, vec![]);
    assert_eq!(out.acked.len(), 1);
    assert_eq!(out.acked[0].0.gid, b.instance_id());
    assert_eq!(out.acked[0].1, b"seen");
    assert!(b.watch_check().is_ok());
    println!("a: client.{} {}", a.instance_id(), a.addrs().unwrap());
}

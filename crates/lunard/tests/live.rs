//! Live operations end to end: the real `lunard` binary, Lunar's own
//! initiator (`lunar-initiator`) over TCP with verified reads and writes,
//! and the control plane (`lunarctl` and JSON-RPC) acting meanwhile:
//! thin storage running out (ENOSPC pause and resume, and the report
//! policy's sense), `lun move` under load, hot add and remove under load,
//! and `stop` / `cont` under load.
//!
//! Every wait is bounded; the daemon is killed and tmpfs mounts are
//! unmounted when a test ends, passed or not.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lunar_initiator::{parse_report_luns, sense_key, Config, Response, Session, Status, Tag};
use serde_json::{json, Value};

const BS: usize = 512;
/// Bound of every single wait of these tests.
const WAIT: Duration = Duration::from_secs(60);

// ----- the daemon ------------------------------------------------------------

mod common;
use common::{Daemon, Events, IQN};

/// What these tests ask of the daemon beyond `common::Daemon`.
trait Live {
    fn login(&self) -> Session;
    fn lun_status(&self, lun: u64) -> Value;
}

impl Live for Daemon {
    fn login(&self) -> Session {
        let config = Config { timeout: WAIT, ..Config::new(IQN) };
        Session::login(self.addr(), &config).unwrap_or_else(|e| panic!("login: {e}\n{}", self.log_tail()))
    }

    fn lun_status(&self, lun: u64) -> Value {
        let s = self.call("status", json!({})).unwrap();
        s["targets"][0]["luns"].as_array().unwrap().iter().find(|l| l["lun"] == lun).cloned().unwrap_or(Value::Null)
    }
}

// ----- verified data -----------------------------------------------------------

/// The content of block `lba` written with generation `gen` (0: never
/// written, zeros). Every 16 bytes name both, so a block mixing two writes
/// (torn) or holding another block's data (misplaced) is told apart.
fn block(lba: u64, gen: u64) -> Vec<u8> {
    if gen == 0 {
        return vec![0; BS];
    }
    let mut b = vec![0u8; BS];
    for (i, chunk) in b.chunks_mut(16).enumerate() {
        chunk[..8].copy_from_slice(&lba.to_le_bytes());
        chunk[8..].copy_from_slice(&(gen ^ ((i as u64) << 56)).to_le_bytes());
    }
    b
}

fn blocks(lba: u64, n: u64, gen: u64) -> Vec<u8> {
    (lba..lba + n).flat_map(|l| block(l, gen)).collect()
}

/// What a block holds, for failure messages.
fn describe(b: &[u8]) -> String {
    if b.iter().all(|x| *x == 0) {
        return "zeros".into();
    }
    let lba = u64::from_le_bytes(b[..8].try_into().unwrap());
    let gen = u64::from_le_bytes(b[8..16].try_into().unwrap());
    let whole = b == block(lba, gen);
    format!("lba {lba} gen {gen:#x}{}", if whole { "" } else { " (torn or corrupt)" })
}

/// Checks `data` read at `lba` against the generations expected per block.
fn verify(lba: u64, data: &[u8], gens: &[u64]) -> Result<u64, String> {
    if data.len() != gens.len() * BS {
        return Err(format!("read at LBA {lba}: {} bytes, expected {}", data.len(), gens.len() * BS));
    }
    for (i, (b, &g)) in data.chunks(BS).zip(gens).enumerate() {
        let l = lba + i as u64;
        if b != block(l, g) {
            return Err(format!("LBA {l}: expected gen {g:#x}, found {}", describe(b)));
        }
    }
    Ok(gens.len() as u64)
}

struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone, Copy)]
struct Op {
    write: bool,
    lba: u64,
    n: u64,
    gen: u64,
}

#[derive(Debug, Default, Clone)]
struct Stats {
    writes: u64,
    reads: u64,
    verified_blocks: u64,
    /// Unit attentions seen (and retried through), as text.
    unit_attentions: Vec<String>,
}

/// One session's verified random load on its own LBA region: random
/// writes whose blocks encode (LBA, generation), random reads checked
/// against the last acknowledged generation of every block; commands
/// pipelined, never two overlapping where one is a write.
struct Worker {
    id: u64,
    s: Session,
    lun: u64,
    start: u64,
    model: Vec<u64>,
    next_gen: u64,
    rng: Rng,
    inflight: HashMap<Tag, Op>,
    depth: usize,
    /// Retry commands that end in REPORTED LUNS DATA HAS CHANGED.
    allow_luns_changed: bool,
    stats: Stats,
}

impl Worker {
    fn new(id: u64, s: Session, lun: u64, start: u64, len: u64) -> Worker {
        Worker {
            id,
            s,
            lun,
            start,
            model: vec![0; len as usize],
            next_gen: (id + 1) << 40,
            rng: Rng::new(id + 7),
            inflight: HashMap::new(),
            depth: 8,
            allow_luns_changed: false,
            stats: Stats::default(),
        }
    }

    fn gens(&self, lba: u64, n: u64) -> &[u64] {
        let i = (lba - self.start) as usize;
        &self.model[i..i + n as usize]
    }

    fn pick(&mut self) -> Option<Op> {
        for _ in 0..16 {
            let n = 1 + self.rng.below(8);
            let lba = self.start + self.rng.below(self.model.len() as u64 - n + 1);
            let write = self.rng.below(2) == 0;
            let op = Op { write, lba, n, gen: 0 };
            let clash = self.inflight.values().any(|o| (o.write || write) && o.lba < lba + n && lba < o.lba + o.n);
            if !clash {
                return Some(op);
            }
        }
        None
    }

    fn submit(&mut self, mut op: Op) -> Result<(), String> {
        let tag = if op.write {
            if op.gen == 0 {
                self.next_gen += 1;
                op.gen = self.next_gen;
            }
            self.s.submit_write(self.lun, op.lba, blocks(op.lba, op.n, op.gen), false)
        } else {
            self.s.submit_read(self.lun, op.lba, op.n as u32)
        }
        .map_err(|e| format!("worker {}: submit {op:?}: {e}", self.id))?;
        self.inflight.insert(tag, op);
        Ok(())
    }

    fn complete_one(&mut self) -> Result<(), String> {
        let (tag, r) = match self.s.wait_any_timeout(WAIT) {
            Ok(Some(x)) => x,
            Ok(None) => {
                return Err(format!(
                    "worker {}: no completion in {WAIT:?}, {} outstanding",
                    self.id,
                    self.inflight.len()
                ))
            }
            Err(e) => return Err(format!("worker {}: {e}", self.id)),
        };
        let op = self.inflight.remove(&tag).ok_or_else(|| format!("worker {}: unknown tag {tag:?}", self.id))?;
        let r = r.map_err(|e| format!("worker {}: {op:?}: {e}", self.id))?;
        if self.allow_luns_changed && r.is_check(sense_key::UNIT_ATTENTION, 0x3f, 0x0e) {
            self.stats.unit_attentions.push(r.sense.as_ref().map(|s| s.to_string()).unwrap_or_default());
            return self.submit(op);
        }
        if !r.is_good() {
            return Err(format!("worker {}: {op:?} -> {r:?}", self.id));
        }
        if op.write {
            let i = (op.lba - self.start) as usize;
            self.model[i..i + op.n as usize].fill(op.gen);
            self.stats.writes += 1;
        } else {
            let n = verify(op.lba, &r.data, self.gens(op.lba, op.n)).map_err(|e| format!("worker {}: {e}", self.id))?;
            self.stats.verified_blocks += n;
            self.stats.reads += 1;
        }
        Ok(())
    }

    /// Runs until `stop`, counting completions in `done`; then drains.
    fn run(&mut self, stop: &AtomicBool, done: &AtomicU64) -> Result<(), String> {
        while !stop.load(Ordering::Relaxed) {
            while self.inflight.len() < self.depth {
                match self.pick() {
                    Some(op) => self.submit(op)?,
                    None => break,
                }
            }
            self.complete_one()?;
            done.fetch_add(1, Ordering::Relaxed);
        }
        while !self.inflight.is_empty() {
            self.complete_one()?;
            done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Reads the whole region back and checks every block.
    fn verify_all(&mut self) -> Result<u64, String> {
        let len = self.model.len() as u64;
        let mut total = 0;
        let mut at = 0;
        while at < len {
            let n = (len - at).min(256);
            let lba = self.start + at;
            let mut tries = 0;
            let r = loop {
                let r = self.s.read(self.lun, lba, n as u32).map_err(|e| format!("worker {}: {e}", self.id))?;
                tries += 1;
                if tries > 8 || !(self.allow_luns_changed && r.is_check(sense_key::UNIT_ATTENTION, 0x3f, 0x0e)) {
                    break r;
                }
            };
            if !r.is_good() {
                return Err(format!("worker {}: final read at {lba}: {r:?}", self.id));
            }
            total += verify(lba, &r.data, self.gens(lba, n)).map_err(|e| format!("worker {}: final: {e}", self.id))?;
            at += n;
        }
        Ok(total)
    }
}

type Outcome = Result<(Stats, u64), String>;

/// Starts `workers` on threads; each runs until `stop`, drains and
/// verifies its whole region.
fn spawn_load(
    workers: Vec<Worker>,
    stop: &Arc<AtomicBool>,
    done: &Arc<AtomicU64>,
) -> Vec<std::thread::JoinHandle<Outcome>> {
    workers
        .into_iter()
        .map(|mut w| {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let r = w.run(&stop, &done).and_then(|()| w.verify_all());
                if r.is_err() {
                    // Let the others end too.
                    stop.store(true, Ordering::Relaxed);
                }
                r.map(|verified| (w.stats.clone(), verified))
            })
        })
        .collect()
}

fn join_load(handles: Vec<std::thread::JoinHandle<Outcome>>, d: &Daemon) -> Vec<(Stats, u64)> {
    let results: Vec<Outcome> = handles.into_iter().map(|h| h.join().expect("worker panicked")).collect();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(errors.is_empty(), "load failed: {errors:#?}\n{}", d.log_tail());
    results.into_iter().map(Result::unwrap).collect()
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ----- thin storage running out --------------------------------------------------

/// These tests mount a tmpfs: they fail, saying why, when not run as root
/// (`scripts/test-all.sh` and CI run as root), rather than pass untested.
fn require_root() {
    let root = Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    assert!(root, "this test mounts a tmpfs and needs root: run it as root (scripts/test-all.sh and CI do)");
}

/// A tmpfs mounted on a temporary directory; unmounted on drop.
struct Tmpfs {
    mnt: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let o = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(&mnt).output();
        let o = o.unwrap();
        assert!(o.status.success(), "mount tmpfs: {}", String::from_utf8_lossy(&o.stderr));
        Tmpfs { mnt, _dir: dir }
    }

    fn resize(&self, size: &str) {
        let o = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.mnt).output().unwrap();
        assert!(o.status.success(), "remount tmpfs: {}", String::from_utf8_lossy(&o.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.mnt).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// 256 KiB writes, one at a time from LBA 0, until one does not answer
/// GOOD within `patience`. Returns the acknowledged writes (LBA, gen) and
/// the tag and LBA of the one that did not complete GOOD, with its
/// response if it came.
fn fill(s: &Session, patience: Duration, total_blocks: u64) -> (Vec<(u64, u64)>, Tag, u64, Option<Response>) {
    const N: u64 = 512;
    let mut acked = Vec::new();
    let mut lba = 0;
    while lba + N <= total_blocks {
        let gen = 1 + lba / N;
        let tag = s.submit_write(0, lba, blocks(lba, N, gen), false).unwrap();
        match s.wait_timeout(tag, patience).unwrap() {
            Some(r) if r.is_good() => acked.push((lba, gen)),
            other => return (acked, tag, lba, other),
        }
        lba += N;
    }
    panic!("{} MiB written and the space never ran out", (total_blocks * BS as u64) >> 20);
}

fn verify_acked(s: &Session, acked: &[(u64, u64)]) -> u64 {
    let mut n = 0;
    for &(lba, gen) in acked {
        let r = s.read(0, lba, 512).unwrap();
        assert!(r.is_good(), "read back at {lba}: {r:?}");
        n += verify(lba, &r.data, &[gen; 512]).unwrap_or_else(|e| panic!("acknowledged data lost: {e}"));
    }
    n
}

#[test]
fn thin_storage_running_out_pauses_then_cont_completes() {
    require_root();
    let fs = Tmpfs::mount("8m");
    let image = fs.mnt.join("disk.img");
    let spec = format!("backend=file,path={},size=64M,thin=on,werror=enospc", image.display());
    let d = Daemon::start(&["--iothreads", "2", "--lun", &spec]);
    let mut events = Events::subscribe(&d);
    let s = d.login();
    let (acked, tag, lba, answer) = fill(&s, Duration::from_secs(5), 64 << 11);
    assert!(answer.is_none(), "the write at LBA {lba} answered {answer:?} instead of waiting");
    let paused = events.wait_for("lun.paused");
    println!("event: {paused}");
    assert_eq!((paused["lun"].clone(), paused["errno_name"].clone()), (json!(0), json!("ENOSPC")), "{paused}");
    assert_eq!(paused["direction"], "write");
    let status = d.lun_status(0);
    println!("status while paused: errors {} in_flight {}", status["errors"], status["in_flight"]);
    // The command stays outstanding: still no answer a few seconds on.
    assert_eq!(s.wait_timeout(tag, Duration::from_secs(3)).unwrap(), None, "the paused write was answered");
    assert_eq!(s.outstanding(), 1);
    fs.resize("80m");
    assert_eq!(d.ctl_ok(&["cont"]).trim(), "running");
    let r = s.wait(tag).unwrap_or_else(|e| panic!("{e}\n{}", d.log_tail()));
    assert_eq!(r.status, Status::GOOD, "{r:?}");
    assert_eq!(events.wait_for("lun.resumed")["lun"], 0);
    let mut acked = acked;
    acked.push((lba, 1 + lba / 512));
    // The LUN goes on: a few more writes, then everything reads back.
    for i in 1..=4 {
        let l = lba + 512 * i;
        assert!(s.write(0, l, blocks(l, 512, 1 + l / 512)).unwrap().is_good());
        acked.push((l, 1 + l / 512));
    }
    let verified = verify_acked(&s, &acked);
    println!(
        "ENOSPC after {} writes of 256 KiB; paused write held, completed GOOD after remount + cont; {verified} blocks verified; events {:?}",
        acked.len() - 5,
        events.seen
    );
    s.logout().unwrap();
}

#[test]
fn thin_storage_running_out_reports_space_allocation_failed() {
    require_root();
    let fs = Tmpfs::mount("8m");
    let image = fs.mnt.join("disk.img");
    let spec = format!("backend=file,path={},size=64M,thin=on,werror=report", image.display());
    let d = Daemon::start(&["--iothreads", "2", "--lun", &spec]);
    let s = d.login();
    let (acked, _tag, lba, answer) = fill(&s, WAIT, 64 << 11);
    let failed = answer.expect("the failing write answered");
    println!("write at LBA {lba} after {} acknowledged: {failed:?}", acked.len());
    // SBC-4 4.7.3.7: DATA PROTECT, SPACE ALLOCATION FAILED WRITE PROTECT.
    assert!(failed.is_check(sense_key::DATA_PROTECT, 0x27, 0x07), "{failed:?}");
    // Reads still work and every acknowledged write is intact.
    let verified = verify_acked(&s, &acked);
    // Room again: the same write now succeeds (no pause, no cont needed).
    fs.resize("80m");
    assert!(s.write(0, lba, blocks(lba, 512, 99)).unwrap().is_good());
    let r = s.read(0, lba, 512).unwrap();
    verify(lba, &r.data, &[99; 512]).unwrap();
    assert_eq!(d.call("status", json!({})).unwrap()["state"], "running");
    println!("{verified} acknowledged blocks verified after {failed:?}; the same write GOOD once the tmpfs grew");
}

// ----- lun move under load ----------------------------------------------------------

#[test]
fn lun_move_1000_times_under_verified_load() {
    let d = Daemon::start(&["--iothreads", "2", "--lun", "backend=mem,size=64M"]);
    let region = 2048;
    let workers: Vec<Worker> = (0..4).map(|i| Worker::new(i, d.login(), 0, i * 8192, region)).collect();
    wait_until("4 queues on LUN 0", || d.lun_status(0)["queues"].as_array().is_some_and(|q| q.len() == 4));
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let handles = spawn_load(workers, &stop, &done);
    let mut c = d.client();
    let started = Instant::now();
    let mut moves = 0;
    let mut per_thread = BTreeMap::new();
    for i in 0..1000u64 {
        if stop.load(Ordering::Relaxed) {
            break; // a worker failed: join_load reports it
        }
        let thread = i % 2;
        let r = c.call("lun.move", json!({"lun": 0, "iothread": thread}));
        let r = r.unwrap_or_else(|e| panic!("move {i}: {e}\n{}", d.log_tail()));
        assert_eq!(r["iothread"], thread);
        *per_thread.entry(thread).or_insert(0) += 1;
        moves += 1;
    }
    let during = done.load(Ordering::Relaxed);
    let elapsed = started.elapsed();
    // The queues are where the last move put them.
    let st = d.lun_status(0);
    for q in st["queues"].as_array().unwrap() {
        assert_eq!(q["iothread"], json!(1), "{st}");
    }
    stop.store(true, Ordering::Relaxed);
    let results = join_load(handles, &d);
    assert_eq!(moves, 1000);
    let (mut writes, mut reads, mut verified) = (0, 0, 0);
    for (i, (st, final_blocks)) in results.iter().enumerate() {
        println!(
            "session {i}: {} writes, {} reads ({} blocks checked), final verification {final_blocks} blocks",
            st.writes, st.reads, st.verified_blocks
        );
        assert!(st.writes > 0 && st.reads > 0, "session {i} did no I/O");
        assert_eq!(*final_blocks, region);
        writes += st.writes;
        reads += st.reads;
        verified += final_blocks;
    }
    println!(
        "{moves} lun.move calls ({per_thread:?}) in {elapsed:.1?} with {during} commands completing meanwhile; \
         total {writes} writes + {reads} reads, no error, {verified} blocks verified at the end"
    );
}

// ----- hot add and remove under load ----------------------------------------------------

fn luns(s: &Session) -> Vec<u64> {
    let r = s.report_luns(0).unwrap();
    assert!(r.is_good(), "REPORT LUNS: {r:?}");
    parse_report_luns(&r.data).unwrap()
}

/// TEST UNIT READY on `lun` until GOOD; the unit attentions it went through.
fn unit_attentions(s: &Session, lun: u64) -> Vec<String> {
    let r = s.execute_retrying_ua(&lunar_initiator::Command::test_unit_ready(lun), 8).unwrap();
    assert!(r.response.is_good(), "{:?}", r.response);
    r.unit_attentions.iter().map(|u| u.to_string()).collect()
}

#[test]
fn hot_add_and_remove_during_load_on_other_luns() {
    let d = Daemon::start(&["--iothreads", "2", "--lun", "backend=mem,size=64M"]);
    let probe = d.login();
    let mut workers: Vec<Worker> = (0..2).map(|i| Worker::new(i, d.login(), 0, i * 8192, 2048)).collect();
    for w in &mut workers {
        w.allow_luns_changed = true;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let handles = spawn_load(workers, &stop, &done);
    let luns_changed = "UNIT ATTENTION 3Fh/0Eh".to_string();
    let mut probe_uas = Vec::new();
    for round in 0..6u64 {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        // Add LUN 1: lunarctl on even rounds, JSON-RPC on odd ones.
        if round % 2 == 0 {
            let out = d.ctl_ok(&["lun", "add", "backend=mem,size=16M"]);
            assert!(out.contains("added LUN 1"), "{out}");
        } else {
            let r = d.call("lun.add", json!({"spec": "backend=mem,size=16M", "lun": 1})).unwrap();
            assert_eq!(r["lun"], 1);
        }
        let uas = unit_attentions(&probe, 0);
        assert_eq!(uas, vec![luns_changed.clone()], "after add {round}");
        probe_uas.extend(uas);
        assert_eq!(luns(&probe), vec![0, 1], "after add {round}");
        let data = blocks(round * 8, 8, round + 1);
        let w = probe.write(1, round * 8, data.clone()).unwrap();
        assert!(w.is_good(), "write to the new LUN: {w:?}");
        assert_eq!(probe.read(1, round * 8, 8).unwrap().data, data);
        // Remove it: JSON-RPC on even rounds, lunarctl on odd ones.
        if round % 2 == 0 {
            assert_eq!(d.call("lun.remove", json!({"lun": 1})).unwrap()["removed"], true);
        } else {
            assert!(d.ctl_ok(&["lun", "remove", "1"]).contains("removed LUN 1"));
        }
        let uas = unit_attentions(&probe, 0);
        assert_eq!(uas, vec![luns_changed.clone()], "after remove {round}");
        probe_uas.extend(uas);
        assert_eq!(luns(&probe), vec![0], "after remove {round}");
        let gone = probe.test_unit_ready(1).unwrap();
        assert!(gone.is_check(sense_key::ILLEGAL_REQUEST, 0x25, 0x00), "removed LUN: {gone:?}");
    }
    stop.store(true, Ordering::Relaxed);
    let results = join_load(handles, &d);
    for (i, (st, verified)) in results.iter().enumerate() {
        println!(
            "LUN 0 session {i}: {} writes, {} reads, unit attentions {:?}, {verified} blocks verified",
            st.writes,
            st.reads,
            st.unit_attentions.len()
        );
        assert!(!st.unit_attentions.is_empty(), "session {i} never saw REPORTED LUNS DATA HAS CHANGED");
        assert!(st.unit_attentions.iter().all(|u| *u == luns_changed), "{:?}", st.unit_attentions);
    }
    println!("probe saw {} unit attentions over 6 add/remove rounds", probe_uas.len());

    // Remove a LUN with I/O in flight on it.
    let img = d.path("lun2.img");
    let spec = format!("backend=file,path={},size=64M", img.display());
    d.call("lun.add", json!({"spec": spec, "lun": 2})).unwrap();
    unit_attentions(&probe, 0);
    let submit = |i: u64| {
        let lba = i * 1024;
        let tag = if i % 3 == 2 {
            probe.submit_read(2, lba, 1024)
        } else {
            probe.submit_write(2, lba, blocks(lba, 1024, i + 1), i.is_multiple_of(2))
        };
        tag.unwrap()
    };
    // 32 commands of 512 KiB sent, the LUN removed while they stream in and
    // run, then 16 more sent after the removal returned.
    let during: Vec<Tag> = (0..32).map(submit).collect();
    d.call("lun.remove", json!({"lun": 2})).unwrap();
    let after: Vec<Tag> = (32..48).map(submit).collect();
    let mut outcomes: BTreeMap<String, usize> = BTreeMap::new();
    for tag in during {
        let r = probe.wait(tag).unwrap_or_else(|e| panic!("a command on the removed LUN: {e}\n{}", d.log_tail()));
        let allowed = r.is_good()
            || r.status == Status::TASK_ABORTED
            || r.is_check(sense_key::ILLEGAL_REQUEST, 0x25, 0x00)
            || r.is_check(sense_key::ABORTED_COMMAND, 0, 0);
        assert!(allowed, "command on the removed LUN: {r:?}");
        let key = match &r.sense {
            Some(s) => format!("{} {s}", r.status),
            None => r.status.to_string(),
        };
        *outcomes.entry(key).or_default() += 1;
    }
    for tag in after {
        let r = probe.wait(tag).unwrap_or_else(|e| panic!("a command sent after the removal: {e}\n{}", d.log_tail()));
        assert!(r.is_check(sense_key::ILLEGAL_REQUEST, 0x25, 0x00), "sent after the removal: {r:?}");
    }
    assert_eq!(probe.outstanding(), 0);
    println!(
        "32 commands in flight on LUN 2 when it was removed: {outcomes:?}; \
         16 sent after: LOGICAL UNIT NOT SUPPORTED"
    );
    let after = probe.read(2, 0, 1).unwrap();
    assert!(after.is_check(sense_key::ILLEGAL_REQUEST, 0x25, 0x00), "{after:?}");
}

// ----- stop during load -------------------------------------------------------------

#[test]
fn stop_during_load_holds_new_commands_until_cont() {
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("backend=file,path={},size=64M", dir.path().join("disk.img").display());
    let d = Daemon::start(&["--iothreads", "2", "--lun", &spec]);
    let probe = d.login();
    let workers: Vec<Worker> = (0..3).map(|i| Worker::new(i, d.login(), 0, 4096 + i * 8192, 2048)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let handles = spawn_load(workers, &stop, &done);
    wait_until("some load", || done.load(Ordering::Relaxed) > 200);
    assert_eq!(d.ctl_ok(&["stop"]).trim(), "stopped");
    let st = d.lun_status(0);
    for q in st["queues"].as_array().unwrap() {
        assert_eq!(q["held_by"], "main", "a queue not drained to the main loop: {st}");
    }
    let at_stop = done.load(Ordering::Relaxed);
    // Sent after the stop: neither starts nor answers until cont.
    let data = blocks(0, 16, 0xabc);
    let w = probe.submit_write(0, 0, data.clone(), true).unwrap();
    let r = probe.submit_read(0, 0, 16).unwrap();
    wait_until("commands held by the stopped target", || d.lun_status(0)["in_flight"].as_u64().is_some_and(|n| n >= 2));
    std::thread::sleep(Duration::from_secs(1));
    let before = done.load(Ordering::Relaxed);
    assert_eq!(probe.wait_timeout(w, Duration::from_secs(2)).unwrap(), None, "a write completed while stopped");
    assert_eq!(probe.wait_timeout(r, Duration::from_millis(10)).unwrap(), None, "a read completed while stopped");
    let after = done.load(Ordering::Relaxed);
    assert_eq!(before, after, "the load's commands completed while the target was stopped");
    let held = d.lun_status(0)["in_flight"].clone();
    assert_eq!(d.ctl_ok(&["cont"]).trim(), "running");
    let wr = probe.wait(w).unwrap();
    let rr = probe.wait(r).unwrap();
    assert!(wr.is_good() && rr.is_good(), "{wr:?} {rr:?}");
    // SIMPLE tasks may run in any order, and at once: each block the read
    // saw holds the old or the new data, whole.
    for (i, b) in rr.data.chunks(BS).enumerate() {
        let l = i as u64;
        assert!(b == block(l, 0xabc).as_slice() || b == block(l, 0).as_slice(), "torn block {l}: {}", describe(b));
    }
    verify(0, &probe.read(0, 0, 16).unwrap().data, &[0xabc; 16]).unwrap();
    wait_until("load after cont", || done.load(Ordering::Relaxed) > after + 200);
    stop.store(true, Ordering::Relaxed);
    let results = join_load(handles, &d);
    let total: u64 = results.iter().map(|(s, _)| s.writes + s.reads).sum();
    let verified: u64 = results.iter().map(|(_, v)| v).sum();
    println!(
        "completions: {at_stop} before stop, {} during a 3 s stop ({held} commands held), {} in all; \
         {total} verified-load commands, {verified} blocks verified at the end",
        after - at_stop,
        done.load(Ordering::Relaxed)
    );
}

// ----- crash of the daemon (kill -9) -----------------------------------------------

/// Invariant 6: writes acknowledged with FUA, or followed by an
/// acknowledged SYNCHRONIZE CACHE, are on the `file` image after `lunard`
/// is killed with SIGKILL mid-load; a restarted daemon serves them. (A
/// process crash leaves the kernel's page cache intact, so this proves that
/// nothing acknowledged was still held in Lunar's own memory; power loss is
/// the FUA / fdatasync contract of the backend, tested in crates/block.)
#[test]
fn invariant_6_acknowledged_writes_survive_kill_9() {
    const BLOCKS: u64 = 4096;
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("disk.img");
    let spec = format!("backend=file,path={},size={}", image.display(), BLOCKS * BS as u64);
    let mut d = Daemon::start(&["--iothreads", "2", "--lun", &spec]);
    let s = d.login();
    s.execute_retrying_ua(&lunar_initiator::Command::test_unit_ready(0), 4).unwrap();
    // durable[lba]: the last generation acknowledged as durable; maybe[lba]:
    // generations written since without durability (may or may not be there).
    let mut durable = vec![0u64; BLOCKS as usize];
    let mut maybe: Vec<Vec<u64>> = vec![Vec::new(); BLOCKS as usize];
    let mut rng = Rng::new(6);
    let mut gen = 0;
    let (mut fua, mut synced, mut plain) = (0, 0, 0);
    for round in 0..200 {
        // 8 pipelined writes of 1..8 blocks in disjoint places.
        let mut batch: Vec<(Tag, u64, u64, u64, bool)> = Vec::new();
        for k in 0..8u64 {
            let n = 1 + rng.below(8);
            let lba = k * (BLOCKS / 8) + rng.below(BLOCKS / 8 - n);
            gen += 1;
            let with_fua = rng.below(2) == 0;
            let tag = s.submit_write(0, lba, blocks(lba, n, gen), with_fua).unwrap();
            batch.push((tag, lba, n, gen, with_fua));
        }
        for (tag, lba, n, g, with_fua) in batch {
            let r = s.wait(tag).unwrap();
            assert!(r.is_good(), "write at {lba}: {r:?}");
            for l in lba..lba + n {
                if with_fua {
                    durable[l as usize] = g;
                    maybe[l as usize].clear();
                    fua += 1;
                } else {
                    maybe[l as usize].push(g);
                    plain += 1;
                }
            }
        }
        if round % 5 == 4 {
            let r = s.execute(lunar_initiator::Command::synchronize_cache16(0)).unwrap();
            assert!(r.is_good(), "SYNCHRONIZE CACHE: {r:?}");
            for (l, m) in maybe.iter_mut().enumerate() {
                if let Some(&g) = m.last() {
                    durable[l] = g;
                    synced += 1;
                }
                m.clear();
            }
        }
    }
    // Writes still in flight when the daemon dies: not acknowledged, either outcome is fine.
    for k in 0..8u64 {
        let lba = k * (BLOCKS / 8);
        gen += 1;
        let _ = s.submit_write(0, lba, blocks(lba, 8, gen), false).unwrap();
        for l in lba..lba + 8 {
            maybe[l as usize].push(gen);
        }
    }
    d.child.kill().unwrap(); // SIGKILL
    let status = d.child.wait().unwrap();
    assert!(!status.success(), "lunard was killed: {status:?}");
    drop(s);
    drop(d);

    let d = Daemon::start(&["--iothreads", "2", "--lun", &spec]);
    let s = d.login();
    s.execute_retrying_ua(&lunar_initiator::Command::test_unit_ready(0), 4).unwrap();
    let (mut exact, mut newer) = (0, 0);
    for start in (0..BLOCKS).step_by(256) {
        let r = s.read(0, start, 256).unwrap();
        assert!(r.is_good(), "read back at {start}: {r:?}");
        for (i, b) in r.data.chunks(BS).enumerate() {
            let l = start as usize + i;
            if b == block(l as u64, durable[l]).as_slice() {
                exact += 1;
            } else if maybe[l].iter().any(|&g| b == block(l as u64, g).as_slice()) {
                newer += 1;
            } else {
                panic!("LBA {l}: acknowledged gen {:#x} lost, found {}", durable[l], describe(b));
            }
        }
    }
    println!(
        "kill -9 after {fua} FUA block writes, {plain} plain block writes, {synced} blocks made durable by \
         SYNCHRONIZE CACHE: {exact} blocks hold their durable generation, {newer} a later unacknowledged or \
         unsynced one, 0 lost"
    );
}

/// PERSISTENT RESERVE OUT with APTPL: the registration and the reservation
/// are stored beside the image and are there after `lunard` is killed
/// (SIGKILL) and started again.
#[test]
fn persistent_reservation_with_aptpl_survives_kill_9() {
    const KEY: u64 = 0x1234_5678_9abc_def0;
    let images = tempfile::tempdir().unwrap();
    let image = images.path().join("disk.img");
    let spec = format!("backend=file,path={},size=8M", image.display());
    let pr_out = |sa: u8, ty: u8, key: u64, sa_key: u64, aptpl: bool| {
        let mut params = vec![0u8; 24];
        params[..8].copy_from_slice(&key.to_be_bytes());
        params[8..16].copy_from_slice(&sa_key.to_be_bytes());
        params[20] = u8::from(aptpl);
        let mut cdb = vec![0x5f, sa, ty, 0, 0, 0, 0, 0, 24, 0];
        cdb[5..9].copy_from_slice(&24u32.to_be_bytes());
        lunar_initiator::Command::writing(0, cdb, params)
    };
    let pr_in = |sa: u8| lunar_initiator::Command::reading(0, vec![0x5e, sa, 0, 0, 0, 0, 0, 0x01, 0x00, 0], 256);
    let mut d = Daemon::start(&["--lun", &spec]);
    let s = d.login();
    s.execute_retrying_ua(&lunar_initiator::Command::test_unit_ready(0), 4).unwrap();
    let r = s.execute(pr_out(0x00, 0, 0, KEY, true)).unwrap();
    assert!(r.is_good(), "REGISTER with APTPL: {r:?}");
    let r = s.execute(pr_out(0x01, 0x01, KEY, 0, false)).unwrap();
    assert!(r.is_good(), "RESERVE (write exclusive): {r:?}");
    d.child.kill().unwrap();
    let _ = d.child.wait();
    drop(s);
    drop(d);

    let d = Daemon::start(&["--lun", &spec]);
    let s = d.login();
    s.execute_retrying_ua(&lunar_initiator::Command::test_unit_ready(0), 4).unwrap();
    let keys = s.execute_retrying_ua(&pr_in(0x00), 4).unwrap().response;
    assert!(keys.is_good(), "READ KEYS: {keys:?}");
    let listed = u32::from_be_bytes(keys.data[4..8].try_into().unwrap()) as usize;
    let found: Vec<u64> =
        keys.data[8..8 + listed].chunks(8).map(|k| u64::from_be_bytes(k.try_into().unwrap())).collect();
    assert_eq!(found, vec![KEY], "registrations after the restart");
    let res = s.execute(pr_in(0x01)).unwrap();
    assert!(res.is_good(), "READ RESERVATION: {res:?}");
    assert_eq!(u32::from_be_bytes(res.data[4..8].try_into().unwrap()), 16, "a reservation is held");
    assert_eq!(u64::from_be_bytes(res.data[8..16].try_into().unwrap()), KEY);
    assert_eq!(res.data[21] & 0x0f, 0x01, "type write exclusive");
    // The other nexus (this new session) is not the holder: its write conflicts.
    let w = s.write(0, 0, vec![0xab; BS]).unwrap();
    assert_eq!(w.status, Status::RESERVATION_CONFLICT, "write from a non-registrant: {w:?}");
    println!("after kill -9 and restart: keys {found:x?}, reservation by {KEY:#x}, type 1; a write from another nexus conflicts");
}

//! End-to-end: the `lunard` binary against libiscsi's command-line tools
//! (Debian's libiscsi-bin; `scripts/test-all.sh` installs it): inquiry,
//! listing, capacity, discovery, CHAP accepted and refused, a bad LUN spec
//! refused at start, and a clean shutdown on SIGTERM; and a file LUN's
//! acknowledged writes (FUA, SYNCHRONIZE CACHE) across a SIGKILL and a
//! restart, written and read back with Lunar's initiator.

use std::process::{Command, Output};
use std::time::Duration;

use lunar_initiator::{Command as InitCommand, Config, Session};

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

/// Block `lba` as written the `gen`-th time (0: never written, zeros):
/// every 16 bytes name both, so a stale, torn or misplaced block shows.
fn pattern(lba: u64, gen: u32) -> Vec<u8> {
    let mut b = vec![0u8; BS];
    if gen > 0 {
        for (i, c) in b.chunks_mut(16).enumerate() {
            c[..8].copy_from_slice(&lba.to_le_bytes());
            c[8..12].copy_from_slice(&gen.to_le_bytes());
            c[12..].copy_from_slice(&(i as u32).to_le_bytes());
        }
    }
    b
}

fn describe(b: &[u8]) -> String {
    if b.iter().all(|x| *x == 0) {
        return "zeros".into();
    }
    let lba = u64::from_le_bytes(b[..8].try_into().unwrap());
    let gen = u32::from_le_bytes(b[8..12].try_into().unwrap());
    format!("lba {lba} gen {gen}{}", if b == pattern(lba, gen) { "" } else { " (torn or corrupt)" })
}

const BS: usize = 512;

/// Invariant 6 with a daemon crash: writes acknowledged with FUA, or
/// followed by an acknowledged SYNCHRONIZE CACHE (16 or 10), are on the
/// `file` image after `lunard` is killed with SIGKILL, and a `lunard`
/// restarted on that image serves every one of them (and libiscsi sees the
/// LUN's size unchanged). Nothing is in flight at the kill, so every
/// written block must read back exactly as last acknowledged: none may be
/// lost, stale or torn. A SIGKILL leaves the kernel's page cache intact, so
/// this proves that lunard acknowledges a write only once the data left
/// its own memory; that FUA and SYNCHRONIZE CACHE reach stable storage
/// (fdatasync, RWF_DSYNC) is the file backend's contract, tested in
/// crates/block.
#[test]
fn file_lun_keeps_acknowledged_writes_across_sigkill() {
    const BLOCKS: u64 = 32768; // 16 MiB
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let img = dir.path().join("disk.img");
    let spec = format!("backend=file,path={},size=16M", img.display());
    let mut d = start(&["--lun", &spec]);
    let config = Config { timeout: Duration::from_secs(60), ..Config::new(IQN) };
    let s = Session::login(d.addr(), &config).unwrap_or_else(|e| panic!("login: {e}\n{}", d.log_tail()));
    s.execute_retrying_ua(&InitCommand::test_unit_ready(0), 4).unwrap();
    // The last acknowledged generation of every block (0: never written).
    let mut model = vec![0u32; BLOCKS as usize];
    let mut rng: u64 = 0x6c75_6e61_7206; // fixed: the same writes every run
    let mut next = move |n: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % n
    };
    let mut gen = 0u32;
    let mut write = |s: &Session, lba: u64, n: u64, fua: bool| {
        gen += 1;
        let data: Vec<u8> = (lba..lba + n).flat_map(|l| pattern(l, gen)).collect();
        let r = if fua { s.write_fua(0, lba, data) } else { s.write(0, lba, data) }.unwrap();
        assert!(r.is_good(), "write of {n} blocks at {lba} (FUA {fua}): {r:?}");
        gen
    };
    let (mut fua_blocks, mut synced_blocks) = (0u64, 0u64);
    // 1. FUA writes, overlapping each other, in the first half; one of
    //    2 MiB (several R2T bursts).
    for i in 0..96 {
        let n = if i == 40 { 4096 } else { 1 + next(64) };
        let lba = next(BLOCKS / 2 - n);
        let g = write(&s, lba, n, true);
        model[lba as usize..(lba + n) as usize].fill(g);
        fua_blocks += n;
    }
    // 2. Plain writes in the second half, each batch made durable by an
    //    acknowledged SYNCHRONIZE CACHE: (16) for the first, (10) for the second.
    for sync in [
        InitCommand::synchronize_cache16(0),
        InitCommand::new(0, vec![0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]), // SYNCHRONIZE CACHE (10), whole LUN
    ] {
        let mut batch = Vec::new();
        for _ in 0..64 {
            let n = 1 + next(64);
            let lba = BLOCKS / 2 + next(BLOCKS / 2 - n);
            batch.push((lba, n, write(&s, lba, n, false)));
        }
        let r = s.execute(sync).unwrap();
        assert!(r.is_good(), "SYNCHRONIZE CACHE: {r:?}");
        for (lba, n, g) in batch {
            model[lba as usize..(lba + n) as usize].fill(g);
            synced_blocks += n;
        }
    }
    let written = model.iter().filter(|g| **g > 0).count();
    drop(s);
    d.child.kill().unwrap(); // SIGKILL: no shutdown path runs
    let status = d.child.wait().unwrap();
    assert!(!status.success(), "lunard was killed: {status:?}");
    drop(d);

    let d = start(&["--lun", &format!("backend=file,path={}", img.display())]);
    let cap = ok(tool("iscsi-readcapacity16").arg(d.url(0)).output().unwrap(), "readcapacity after restart");
    assert!(cap.contains("Total size:16777216"), "{cap}");
    let s = Session::login(d.addr(), &config).unwrap_or_else(|e| panic!("login after restart: {e}\n{}", d.log_tail()));
    s.execute_retrying_ua(&InitCommand::test_unit_ready(0), 4).unwrap();
    let mut lost = Vec::new();
    for start in (0..BLOCKS).step_by(512) {
        let r = s.read(0, start, 512).unwrap();
        assert!(r.is_good(), "read back at {start}: {r:?}");
        assert_eq!(r.data.len(), 512 * BS, "read back at {start}");
        for (i, b) in r.data.chunks(BS).enumerate() {
            let lba = start + i as u64;
            let want = model[lba as usize];
            if b != pattern(lba, want).as_slice() {
                lost.push(format!("LBA {lba}: acknowledged gen {want}, found {}", describe(b)));
            }
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {written} acknowledged blocks lost after SIGKILL and restart; first: {:#?}",
        lost.len(),
        &lost[..lost.len().min(8)]
    );
    println!(
        "SIGKILL after {fua_blocks} FUA block writes and {synced_blocks} block writes made durable by SYNCHRONIZE \
         CACHE (16, 10): all {written} written blocks and {} never written read back as acknowledged",
        BLOCKS as usize - written
    );
    s.logout().unwrap();
    assert!(d.stop().success());
}

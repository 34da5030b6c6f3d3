//! Resource limits of the iSCSI front-end, end to end against the real
//! `lunard`: each limit is met, the peer gets the answer RFC 7143 gives,
//! the hit is counted in `status`, and other sessions go on.
//!
//! The first test is the security issue's acceptance test: 128 WRITEs that
//! announce 4 GiB of data (EDTL 0xFFFFFFFF) and send none must not make
//! the daemon claim memory for it.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use lunar_initiator::{Command, Config, Error, Residual, Session};
use serde_json::{json, Value};

mod common;
use common::{Daemon, IQN};

const BS: usize = 512;
/// Resident memory the daemon may gain from the 128 hostile writes.
const HOSTILE_RSS_BOUND: u64 = 64 << 20;

fn rss(d: &Daemon) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", d.child.id())).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib << 10
}

fn login_as(d: &Daemon, initiator: &str, timeout: Duration) -> Result<Session, Error> {
    let config = Config { initiator_name: initiator.into(), timeout, ..Config::new(IQN) };
    Session::login(d.addr(), &config)
}

fn login(d: &Daemon, initiator: &str) -> Session {
    login_as(d, initiator, Duration::from_secs(30)).unwrap_or_else(|e| panic!("login of {initiator}: {e}"))
}

fn hits(d: &Daemon) -> Value {
    d.call("status", json!({})).unwrap()["limits"]["iscsi"]["hits"].clone()
}

fn hit(d: &Daemon, name: &str) -> u64 {
    hits(d)[name].as_u64().unwrap_or_else(|| panic!("no count {name} in {}", hits(d)))
}

fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (seed.wrapping_mul(31).wrapping_add(i as u64 / 7) % 251) as u8).collect()
}

fn write16(lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x8a;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A write and its read-back, on a session that must still work.
fn verified_io(s: &Session, lba: u64, seed: u64) {
    let data = pattern(seed, 64 * BS);
    let w = s.write(0, lba, data.clone()).unwrap();
    assert!(w.is_good(), "write: {w:?}");
    let r = s.read(0, lba, 64).unwrap();
    assert!(r.is_good() && r.data == data, "read back: {r:?}");
}

#[test]
fn withheld_writes_claim_no_memory_and_every_session_goes_on() {
    let d = Daemon::start(&["--iothreads", "2"]);
    let hostile = login(&d, "iqn.2026-12.dev.lunar:hostile");
    let before = rss(&d);
    // 128 WRITE(16)s announcing EDTL 0xFFFFFFFF, none sending data. The
    // even ones are refused before any data is asked for: 0xFFFFFFFF blocks
    // (more than EDTL, and EDTL is no whole number of blocks: INVALID FIELD
    // IN INFORMATION UNIT) or 65536 blocks (over MAXIMUM TRANSFER LENGTH:
    // INVALID FIELD IN CDB). The odd ones ask for 1 MiB (R2Ts, left
    // unanswered).
    let mut refused = Vec::new();
    let mut withheld = Vec::new();
    for i in 0..128u64 {
        if i % 2 == 0 {
            let blocks = if i % 4 == 0 { u32::MAX } else { 65536 };
            let tag = hostile.submit_withheld(Command::new(0, write16(i, blocks)), u32::MAX).unwrap();
            refused.push((blocks, tag));
        } else {
            let data = pattern(i, 1 << 20);
            let cmd = Command::writing(0, write16(i * 2048, 2048), data);
            withheld.push((i, hostile.submit_withheld(cmd, u32::MAX).unwrap()));
        }
    }
    for (blocks, tag) in refused {
        let r = hostile.wait(tag).unwrap();
        let sense = if blocks == u32::MAX { (0x05, 0x0e, 0x03) } else { (0x05, 0x24, 0x00) };
        assert!(r.is_check(sense.0, sense.1, sense.2), "WRITE(16) of {blocks} blocks: {r:?}");
    }
    std::thread::sleep(Duration::from_millis(500));
    let grown = rss(&d).saturating_sub(before);
    println!("RSS grew by {} KiB after 128 hostile writes", grown >> 10);
    assert!(grown < HOSTILE_RSS_BOUND, "RSS grew by {grown} bytes");
    // Buffer space is given to a few writes at a time (32 MiB by default):
    // the others wait, and the window stops moving.
    let asked: usize = withheld.iter().filter(|(_, t)| hostile.held_r2ts(*t) > 0).count();
    assert!((1..64).contains(&asked), "{asked} of 64 writes were sent an R2T");
    assert!(hit(&d, "refused_before_data") >= 64, "{}", hits(&d));
    assert!(hit(&d, "buffer_waits") >= 1 && hit(&d, "window_held") >= 1, "{}", hits(&d));

    // Another initiator is not held up.
    let other = login(&d, "iqn.2026-12.dev.lunar:other");
    verified_io(&other, 1_000_000, 1);

    // The hostile session sends its data after all: every write completes
    // (underflow residual: it announced more than the CDB takes), and the
    // session goes on.
    for (_, tag) in &withheld {
        assert!(hostile.release(*tag).unwrap());
    }
    for (i, tag) in withheld {
        let r = hostile.wait(tag).unwrap();
        assert!(r.is_good(), "write {i}: {r:?}");
        assert_eq!(r.residual, Residual::Underflow(u32::MAX - (1 << 20)), "write {i}");
    }
    let back = hostile.read(0, 3 * 2048, 2048).unwrap();
    assert!(back.is_good() && back.data == pattern(3, 1 << 20), "write 3 read back");
    verified_io(&hostile, 1_500_000, 2);
    hostile.logout().unwrap();
    other.logout().unwrap();
}

#[test]
fn sessions_per_target_refused_with_out_of_resources() {
    let d = Daemon::start(&["--limit", "sessions-per-target=2"]);
    let a = login(&d, "iqn.2026-12.dev.lunar:a");
    let b = login(&d, "iqn.2026-12.dev.lunar:b");
    match login_as(&d, "iqn.2026-12.dev.lunar:c", Duration::from_secs(10)) {
        Err(Error::LoginRefused { class: 0x03, detail: 0x02 }) => {}
        other => panic!("third session: {other:?}"),
    }
    assert_eq!(hit(&d, "sessions_refused"), 1);
    verified_io(&a, 0, 1);
    verified_io(&b, 64, 2);
    // A session that ends frees its place.
    b.logout().unwrap();
    let c = login(&d, "iqn.2026-12.dev.lunar:c");
    verified_io(&c, 128, 3);
    let status = d.ctl_ok(&["status"]);
    assert!(status.contains("iscsi limits met: sessions_refused 1"), "{status}");
}

/// Connects from `source` (any 127.x address) to the daemon.
fn connect_from(d: &Daemon, source: &str) -> TcpStream {
    use socket2::{Domain, SockAddr, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let src: SocketAddr = format!("{source}:0").parse().unwrap();
    sock.bind(&SockAddr::from(src)).unwrap();
    sock.connect(&SockAddr::from(d.addr())).unwrap();
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

/// Whether the daemon closed `s` (EOF) within a few seconds.
fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(s.read(&mut buf), Ok(0))
        || matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
}

#[test]
fn connections_per_address_and_per_portal_are_closed_at_accept() {
    let d = Daemon::start(&["--limit", "connections-per-address=2", "--limit", "connections-per-portal=3"]);
    let session = login(&d, "iqn.2026-12.dev.lunar:first");
    let _second = connect_from(&d, "127.0.0.1");
    let mut third = connect_from(&d, "127.0.0.1");
    assert!(closed_by_peer(&mut third), "a third connection from 127.0.0.1 is closed");
    let _fourth = connect_from(&d, "127.0.0.2");
    let mut fifth = connect_from(&d, "127.0.0.3");
    assert!(closed_by_peer(&mut fifth), "a fourth connection on the portal is closed");
    assert_eq!(hit(&d, "connections_refused"), 2, "{}", hits(&d));
    verified_io(&session, 0, 1);
    // Closing one frees its place.
    drop(_second);
    let deadline = Instant::now() + Duration::from_secs(10);
    let s = loop {
        match login_as(&d, "iqn.2026-12.dev.lunar:again", Duration::from_secs(5)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                println!("not yet: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("login after a connection closed: {e}"),
        }
    };
    verified_io(&s, 64, 2);
}

#[test]
fn silent_and_trickling_peers_are_dropped_after_the_negotiation_timeout() {
    let d = Daemon::start(&["--limit", "negotiation-timeout=1"]);
    let session = login(&d, "iqn.2026-12.dev.lunar:patient");
    let started = Instant::now();
    // Sends nothing at all.
    let mut silent = connect_from(&d, "127.0.0.1");
    // Sends a Login Request one byte every 200 ms.
    let mut trickle = connect_from(&d, "127.0.0.1");
    let trickler = std::thread::spawn(move || {
        let mut bhs = [0u8; 48];
        bhs[0] = 0x43;
        for b in bhs {
            if trickle.write_all(&[b]).is_err() {
                return (trickle, true);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        (trickle, false)
    });
    assert!(closed_by_peer(&mut silent), "a silent connection is closed");
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(8), "closed after {waited:?}");
    let (mut trickle, cut_short) = trickler.join().unwrap();
    assert!(cut_short || closed_by_peer(&mut trickle), "a trickling login is closed");
    assert!(hit(&d, "negotiation_timeouts") >= 2, "{}", hits(&d));
    // A logged-in, idle session is not a negotiation.
    std::thread::sleep(Duration::from_millis(1500));
    verified_io(&session, 0, 1);
}

#[test]
fn the_command_window_opens_as_commands_complete() {
    let d = Daemon::start(&["--limit", "cmd-window=4"]);
    let config = Config {
        initiator_name: "iqn.2026-12.dev.lunar:w".into(),
        timeout: Duration::from_secs(2),
        ..Config::new(IQN)
    };
    let s = Session::login(d.addr(), &config).unwrap();
    let tags: Vec<_> = (0..4u64)
        .map(|i| {
            s.submit_withheld(Command::writing(0, write16(i * 8, 8), pattern(i, 8 * BS)), (8 * BS) as u32).unwrap()
        })
        .collect();
    match s.submit(Command::test_unit_ready(0)) {
        Err(Error::Timeout { .. }) => {}
        other => panic!("a fifth command while four are outstanding: {other:?}"),
    }
    assert!(s.release(tags[0]).unwrap());
    assert!(s.wait(tags[0]).unwrap().is_good());
    // One done: one more may go.
    let tur = s.submit(Command::test_unit_ready(0)).unwrap();
    assert!(s.wait(tur).unwrap().is_good());
    for t in &tags[1..] {
        assert!(s.release(*t).unwrap());
        assert!(s.wait(*t).unwrap().is_good());
    }
    verified_io(&s, 64, 1);
}

#[test]
fn buffered_bytes_hold_r2ts_until_room_is_freed() {
    let d = Daemon::start(&["--limit", "buffered-bytes=1M"]);
    let s = login(&d, "iqn.2026-12.dev.lunar:b");
    let tags: Vec<_> = (0..4u64)
        .map(|i| {
            let cmd = Command::writing(0, write16(i * 1024, 1024), pattern(i, 1024 * BS));
            s.submit_withheld(cmd, (1024 * BS) as u32).unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let asked: Vec<usize> = tags.iter().map(|t| s.held_r2ts(*t)).collect();
    assert_eq!(asked.iter().filter(|&&n| n > 0).count(), 2, "two 512 KiB writes fit in 1 MiB: {asked:?}");
    assert!(hit(&d, "buffer_waits") >= 2 && hit(&d, "window_held") >= 1, "{}", hits(&d));
    for (i, t) in tags.iter().enumerate() {
        assert!(s.release(*t).unwrap());
        assert!(s.wait(*t).unwrap().is_good(), "write {i}");
    }
    for i in 0..4u64 {
        let r = s.read(0, i * 1024, 1024).unwrap();
        assert!(r.is_good() && r.data == pattern(i, 1024 * BS), "read back {i}");
    }
}

#[test]
fn unsolicited_bytes_cap_first_burst_length() {
    // 64 KiB over (8 + 8) commands: FirstBurstLength at most 4 KiB.
    let d = Daemon::start(&["--limit", "cmd-window=8", "--limit", "unsolicited-bytes=64K"]);
    let s = login(&d, "iqn.2026-12.dev.lunar:u");
    assert_eq!(s.params().first_burst_length, 4096);
    // Writes larger than it still work (the rest by R2T).
    verified_io(&s, 0, 1);
    let limits = &d.call("status", json!({})).unwrap()["limits"]["iscsi"];
    assert_eq!((limits["cmd_window"].as_u64(), limits["unsolicited_bytes"].as_u64()), (Some(8), Some(65536)));
}

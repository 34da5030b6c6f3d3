//! A load generator for benchmarks (bench/rbd.sh): 4 KiB (or N-block)
//! random reads or writes at a fixed queue depth through this crate's
//! initiator, for a fixed time; prints `iops N`. libiscsi's iscsi-perf only
//! reads, and Debian's fio has no libiscsi engine: this gives writes over
//! iSCSI, the same client for every target measured.
//!
//!   cargo run --example iscsi-load -- HOST:PORT TARGET_IQN LUN read|write QD SECONDS [BLOCKS]

use std::time::{Duration, Instant};

use lunar_initiator::{Config, Session};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 7 {
        eprintln!("usage: iscsi-load HOST:PORT TARGET_IQN LUN read|write QD SECONDS [BLOCKS [rand|seq]]");
        std::process::exit(2);
    }
    let num = |i: usize, what: &str| -> u64 {
        args[i].parse().unwrap_or_else(|_| {
            eprintln!("iscsi-load: {what} must be a number, not {:?}", args[i]);
            std::process::exit(2)
        })
    };
    let (addr, iqn, lun) = (&args[1], &args[2], num(3, "LUN"));
    let write = match args[4].as_str() {
        "read" => false,
        "write" => true,
        other => {
            eprintln!("iscsi-load: read or write, not {other:?}");
            std::process::exit(2)
        }
    };
    let (qd, secs) = (num(5, "QD").max(1), num(6, "SECONDS"));
    let blocks = if args.len() > 7 { num(7, "BLOCKS").max(1) } else { 8 };
    let sequential = match args.get(8).map(String::as_str) {
        None | Some("rand") => false,
        Some("seq") => true,
        Some(other) => {
            eprintln!("iscsi-load: rand or seq, not {other:?}");
            std::process::exit(2)
        }
    };
    let shape = Shape { write, qd: qd as usize, time: Duration::from_secs(secs), blocks: blocks as u32, sequential };
    if let Err(e) = run(addr, iqn, lun, &shape) {
        eprintln!("iscsi-load: {e}");
        std::process::exit(1);
    }
}

/// What to send: direction, depth, duration, blocks per command, and
/// whether the LBAs follow each other (wrapping at the end) or are random.
struct Shape {
    write: bool,
    qd: usize,
    time: Duration,
    blocks: u32,
    sequential: bool,
}

fn run(addr: &str, iqn: &str, lun: u64, shape: &Shape) -> Result<(), Box<dyn std::error::Error>> {
    let Shape { write, qd, time, blocks, sequential } = *shape;
    let s = Session::login(addr, &Config::new(iqn))?;
    // Unit attentions (power on) first.
    let mut capacity = None;
    for _ in 0..4 {
        let r = s.read_capacity16(lun)?;
        if r.is_good() {
            capacity = Some(u64::from_be_bytes(r.data[..8].try_into()?) + 1);
            break;
        }
    }
    let capacity = capacity.ok_or("READ CAPACITY (16) failed")?;
    let bs = u64::from(s.block_size(lun));
    let slots = (capacity / u64::from(blocks)).max(1);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15 ^ u64::from(std::process::id());
    let mut seq = 0u64;
    let mut next_lba = move || {
        let slot = if sequential {
            seq = (seq + 1) % slots;
            seq
        } else {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % slots
        };
        slot * u64::from(blocks)
    };
    let data = vec![0x5Au8; (u64::from(blocks) * bs) as usize];
    let submit = |lba: u64| {
        if write {
            s.submit_write(lun, lba, data.clone(), false)
        } else {
            s.submit_read(lun, lba, blocks)
        }
    };
    for _ in 0..qd {
        submit(next_lba())?;
    }
    let start = Instant::now();
    let mut done = 0u64;
    while start.elapsed() < time {
        let (_, r) = s.wait_any()?;
        if !r.is_good() {
            return Err(format!("a command failed: {r:?}").into());
        }
        done += 1;
        submit(next_lba())?;
    }
    let elapsed = start.elapsed().as_secs_f64();
    while s.outstanding() > 0 {
        s.wait_any()?;
    }
    println!("iops {}", (done as f64 / elapsed).round() as u64);
    s.logout()?;
    Ok(())
}

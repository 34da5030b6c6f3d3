//! `vhost-driver`: drive one vhost-user-scsi controller at a queue depth and
//! block size, print IOPS and MiB/s. A benchmark tool, not a test.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use lunar_vhost_driver::{run, Options, Workload};

/// Drives a vhost-user-scsi backend (lunard --vhost-user, vhost-device-scsi,
/// ...) the way a guest would, without a guest: guest memory is a shared
/// file on /dev/shm, one thread per request queue keeps QD requests in its
/// ring. Prints one line: workload, IOPS, MiB/s, errors.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The backend's vhost-user socket.
    socket: PathBuf,
    /// Request queues to use (the backend must offer at least this many).
    #[arg(long, default_value_t = 1)]
    queues: usize,
    /// Requests kept in flight on each queue.
    #[arg(long, default_value_t = 32)]
    qd: usize,
    /// Bytes per request (a multiple of the LUN's block size).
    #[arg(long, default_value_t = 4096)]
    bs: u64,
    #[arg(long, value_enum, default_value_t = Workload::RandRead)]
    rw: Workload,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0, value_parser = seconds)]
    seconds: f64,
    /// LUN of target 0.
    #[arg(long, default_value_t = 0)]
    lun: u16,
    /// Virtqueue size (a power of two; 3 descriptors a request). 128 is
    /// QEMU's default, and the most some backends accept.
    #[arg(long, default_value_t = 128)]
    ring: u16,
    /// Do not negotiate VIRTIO_RING_F_EVENT_IDX (by default it is, when the
    /// backend offers it, as Linux's virtio-scsi driver does).
    #[arg(long)]
    no_event_idx: bool,
    /// After the run, stay connected this many seconds without posting a
    /// request (measure the backend's idle CPU meanwhile).
    #[arg(long, default_value_t = 0.0, value_parser = seconds)]
    idle: f64,
}

/// A duration in seconds: finite, not negative, at most a day.
fn seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=86_400.0).contains(&v) => Ok(v),
        _ => Err(format!("`{s}`: expected seconds, 0 to 86400")),
    }
}

fn main() -> ExitCode {
    let a = Args::parse();
    let opts = Options {
        socket: a.socket,
        queues: a.queues,
        queue_depth: a.qd,
        block_size: a.bs,
        workload: a.rw,
        duration: Duration::from_secs_f64(a.seconds),
        lun: a.lun,
        ring_size: a.ring,
        event_idx: !a.no_event_idx,
        idle: Duration::from_secs_f64(a.idle),
    };
    match run(&opts) {
        Ok(r) => {
            println!(
                "{:?} bs={} qd={} queues={}: {:.0} IOPS, {:.1} MiB/s, {} errors{}",
                a.rw,
                a.bs,
                a.qd,
                a.queues,
                r.iops(),
                r.mib_per_s(),
                r.errors(),
                r.queues
                    .iter()
                    .find_map(|q| q.first_error.clone())
                    .map(|e| format!(" (first: {e})"))
                    .unwrap_or_default()
            );
            if r.errors() > 0 || r.completed() == 0 {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(e) => {
            eprintln!("vhost-driver: {e}");
            ExitCode::FAILURE
        }
    }
}

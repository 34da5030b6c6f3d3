//! `lunarctl top`: what happened between two `status` answers, per LUN and
//! per I/O thread, as a table of 80 columns or one JSON object.
//!
//! Everything comes from the counters the daemon keeps anyway (see
//! `lunar_core::stats`: per-queue cells written by their own thread
//! only, summed when read): completed commands, bytes, the sum of the
//! latencies and the latency histogram. An interval's figures are the
//! differences of two samples: IOPS and MB/s from the counts, p50/p99
//! from the difference of the histograms (so they describe the commands
//! of that interval only), and the average queue depth from the latency
//! sum (Little's law: the time commands spent in flight per second, what
//! iostat calls aqu-sz). `in_flight` is the LUN's count at the end of the
//! interval.

use std::collections::BTreeMap;

use lunar_core::stats::{Snapshot, LATENCY_BUCKETS};
use serde_json::{json, Value};

/// What `top` reads of one LUN or I/O thread in a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counters {
    pub commands: u64,
    pub reads: u64,
    pub writes: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub latency_us: u64,
    pub buckets: [u64; LATENCY_BUCKETS],
    pub in_flight: Option<u64>,
}

impl Counters {
    /// From a `stats` object of `status` (and a LUN's `in_flight`).
    fn of(stats: &Value, in_flight: Option<u64>) -> Counters {
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let mut buckets = [0u64; LATENCY_BUCKETS];
        for (i, b) in stats["latency"]["buckets"].as_array().into_iter().flatten().take(LATENCY_BUCKETS).enumerate() {
            buckets[i] = n(b);
        }
        Counters {
            commands: n(&stats["commands"]["total"]),
            reads: n(&stats["commands"]["read"]),
            writes: n(&stats["commands"]["write"]),
            bytes_read: n(&stats["bytes"]["read"]),
            bytes_written: n(&stats["bytes"]["written"]),
            latency_us: n(&stats["latency"]["sum_us"]),
            buckets,
            in_flight,
        }
    }

    /// `self - before`; a counter that went down (the LUN was removed and
    /// added again) counts from zero.
    fn since(&self, before: &Counters) -> Counters {
        let reset = self.commands < before.commands;
        let d = |a: u64, b: u64| if reset { a } else { a.saturating_sub(b) };
        let mut buckets = [0u64; LATENCY_BUCKETS];
        for (i, b) in buckets.iter_mut().enumerate() {
            *b = d(self.buckets[i], before.buckets[i]);
        }
        Counters {
            commands: d(self.commands, before.commands),
            reads: d(self.reads, before.reads),
            writes: d(self.writes, before.writes),
            bytes_read: d(self.bytes_read, before.bytes_read),
            bytes_written: d(self.bytes_written, before.bytes_written),
            latency_us: d(self.latency_us, before.latency_us),
            buckets,
            in_flight: self.in_flight,
        }
    }
}

/// Which row: a LUN of a target, or an I/O thread (from 0).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Key {
    Lun(String, u64),
    Thread(u64),
}

/// One sample: the counters of every LUN and I/O thread.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub rows: BTreeMap<Key, Counters>,
}

impl Sample {
    /// From a `status` answer.
    pub fn of_status(status: &Value) -> Sample {
        let mut rows = BTreeMap::new();
        for t in status["targets"].as_array().into_iter().flatten() {
            let name = t["name"].as_str().unwrap_or("?").to_string();
            for l in t["luns"].as_array().into_iter().flatten() {
                let Some(lun) = l["lun"].as_u64() else { continue };
                rows.insert(Key::Lun(name.clone(), lun), Counters::of(&l["stats"], l["in_flight"].as_u64()));
            }
        }
        for th in status["iothreads"].as_array().into_iter().flatten() {
            let Some(i) = th["iothread"].as_u64() else { continue };
            rows.insert(Key::Thread(i), Counters::of(&th["stats"], None));
        }
        Sample { rows }
    }
}

/// One row of an interval.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub key: Key,
    pub iops: f64,
    pub read_iops: f64,
    pub write_iops: f64,
    /// 10^6 bytes per second.
    pub read_mbps: f64,
    pub write_mbps: f64,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    /// Average number of commands in flight over the interval.
    pub queue_depth: f64,
    /// At the end of the interval (LUNs only).
    pub in_flight: Option<u64>,
}

/// The rows of the interval of `secs` seconds from `before` to `after`
/// (rows of `after` only: a LUN that appeared counts from zero).
pub fn interval(before: &Sample, after: &Sample, secs: f64) -> Vec<Row> {
    let secs = if secs > 0.0 { secs } else { 1.0 };
    after
        .rows
        .iter()
        .map(|(key, now)| {
            let d = now.since(&before.rows.get(key).copied().unwrap_or_default());
            let hist = Snapshot { buckets: d.buckets, ..Snapshot::default() };
            Row {
                key: key.clone(),
                iops: d.commands as f64 / secs,
                read_iops: d.reads as f64 / secs,
                write_iops: d.writes as f64 / secs,
                read_mbps: d.bytes_read as f64 / 1e6 / secs,
                write_mbps: d.bytes_written as f64 / 1e6 / secs,
                p50_us: hist.quantile_us(0.5),
                p99_us: hist.quantile_us(0.99),
                queue_depth: d.latency_us as f64 / 1e6 / secs,
                in_flight: d.in_flight,
            }
        })
        .collect()
}

/// A latency in microseconds in at most 7 characters: 12us, 1.5ms, 2.10s.
fn latency(us: Option<f64>) -> String {
    match us {
        None => "-".into(),
        Some(x) if x < 10.0 => format!("{x:.1}us"),
        Some(x) if x < 1000.0 => format!("{x:.0}us"),
        Some(x) if x < 1e6 => format!("{:.1}ms", x / 1e3),
        Some(x) => format!("{:.1}s", x / 1e6),
    }
}

/// A rate in at most `w` characters: one decimal while it fits, then
/// whole numbers, then k and M.
fn rate(x: f64, w: usize) -> String {
    let scaled =
        [(1e3, "k"), (1e6, "M"), (1e9, "G"), (1e12, "T"), (1e15, "P")].map(|(d, u)| format!("{:.0}{u}", x / d));
    for s in [format!("{x:.1}"), format!("{x:.0}")].into_iter().chain(scaled) {
        if s.len() <= w {
            return s;
        }
    }
    "-".into()
}

/// Cuts `s` to `w` characters, keeping its end (the distinctive part of
/// an iSCSI name), with `~` where it was cut.
fn fit(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        return s.to_string();
    }
    let tail: String = s.chars().skip(n - (w - 1)).collect();
    format!("~{tail}")
}

/// The header of the table.
pub const HEADER: &str = "   LUN/THR     IOPS  RD MB/s  WR MB/s      P50      P99      QD  INFLT";

fn line(name: &str, r: &Row) -> String {
    let inflt = r.in_flight.map_or("-".to_string(), |n| if n < 100_000 { n.to_string() } else { rate(n as f64, 6) });
    format!(
        "{:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>7} {:>6}",
        fit(name, 10),
        rate(r.iops, 8),
        rate(r.read_mbps, 8),
        rate(r.write_mbps, 8),
        latency(r.p50_us),
        latency(r.p99_us),
        rate(r.queue_depth, 7),
        inflt
    )
}

/// The table of one interval, each line at most 80 columns: a title, then
/// each target's name and its LUNs, then the I/O threads.
pub fn render(rows: &[Row], title: &str) -> String {
    let mut out = format!("{}\n{HEADER}\n", fit(title, 80));
    let mut target: Option<&str> = None;
    for r in rows {
        if let Key::Lun(t, lun) = &r.key {
            if target != Some(t.as_str()) {
                out.push_str(&format!("target {}\n", fit(t, 73)));
                target = Some(t);
            }
            out.push_str(&line(&lun.to_string(), r));
            out.push('\n');
        }
    }
    let threads: Vec<&Row> = rows.iter().filter(|r| matches!(r.key, Key::Thread(_))).collect();
    if !threads.is_empty() {
        out.push_str("I/O threads\n");
        for r in threads {
            if let Key::Thread(i) = r.key {
                out.push_str(&line(&format!("thr {i}"), r));
                out.push('\n');
            }
        }
    }
    out
}

/// One interval as a JSON object (`lunarctl --json top`: one per line).
pub fn to_json(rows: &[Row], time: f64, secs: f64) -> Value {
    let round = |x: f64| (x * 1000.0).round() / 1000.0;
    let fields = |r: &Row| {
        json!({
            "iops": round(r.iops), "read_iops": round(r.read_iops), "write_iops": round(r.write_iops),
            "read_mbps": round(r.read_mbps), "write_mbps": round(r.write_mbps),
            "p50_us": r.p50_us.map(round), "p99_us": r.p99_us.map(round),
            "queue_depth": round(r.queue_depth),
        })
    };
    let mut luns = Vec::new();
    let mut threads = Vec::new();
    for r in rows {
        let mut v = fields(r);
        match &r.key {
            Key::Lun(t, lun) => {
                v["target"] = json!(t);
                v["lun"] = json!(lun);
                v["in_flight"] = json!(r.in_flight);
                luns.push(v);
            }
            Key::Thread(i) => {
                v["iothread"] = json!(i);
                threads.push(v);
            }
        }
    }
    json!({ "time": time, "interval_s": round(secs), "luns": luns, "iothreads": threads })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `stats` object as `status` gives it: `n` reads of 4 KiB taking
    /// `us` microseconds each (all in the bucket of `us`), `w` writes of 1 MB.
    fn stats(n: u64, w: u64, us: u64) -> Value {
        let mut buckets = vec![0u64; LATENCY_BUCKETS];
        buckets[lunar_core::stats::bucket_of(us * 1000)] += n + w;
        json!({
            "commands": { "total": n + w, "read": n, "write": w, "other": 0 },
            "bytes": { "read": n * 4096, "written": w * 1_000_000 },
            "latency": { "sum_us": (n + w) * us, "buckets": buckets },
        })
    }

    fn status(lun0: Value, thread0: Value, in_flight: u64) -> Value {
        json!({
            "targets": [{ "name": "iqn.2026-11.dev.lunar:a-rather-long-target-name-for-the-table",
                          "luns": [{ "lun": 0, "in_flight": in_flight, "stats": lun0 }] }],
            "iothreads": [{ "iothread": 0, "stats": thread0 }],
        })
    }

    #[test]
    fn an_interval_is_the_difference_of_two_samples() {
        let a = Sample::of_status(&status(stats(1000, 10, 100), stats(1000, 10, 100), 0));
        let b = Sample::of_status(&status(stats(3000, 30, 100), stats(3000, 30, 100), 7));
        let rows = interval(&a, &b, 2.0);
        assert_eq!(rows.len(), 2);
        let lun = &rows[0];
        assert_eq!(lun.key, Key::Lun("iqn.2026-11.dev.lunar:a-rather-long-target-name-for-the-table".into(), 0));
        assert_eq!((lun.iops, lun.read_iops, lun.write_iops), (1010.0, 1000.0, 10.0));
        assert!((lun.read_mbps - 2000.0 * 4096.0 / 1e6 / 2.0).abs() < 1e-9);
        assert!((lun.write_mbps - 10.0).abs() < 1e-9);
        // 2020 commands of 100 us in 2 s: 0.101 in flight on average.
        assert!((lun.queue_depth - 0.101).abs() < 1e-9, "{}", lun.queue_depth);
        let p50 = lun.p50_us.unwrap();
        assert!((64.0..=128.0).contains(&p50), "{p50}");
        assert_eq!(lun.in_flight, Some(7));
        assert_eq!(rows[1].key, Key::Thread(0));
        assert_eq!(rows[1].in_flight, None);
    }

    #[test]
    fn latency_quantiles_describe_the_interval_only() {
        // Before: a million slow commands; in the interval: fast ones only.
        let a = Sample::of_status(&status(stats(1_000_000, 0, 50_000), stats(0, 0, 1), 0));
        let mut after = stats(1_000_000, 0, 50_000);
        let fast = stats(500, 0, 20);
        after["commands"]["total"] = json!(1_000_500);
        after["commands"]["read"] = json!(1_000_500);
        let mut buckets: Vec<u64> = serde_json::from_value(after["latency"]["buckets"].clone()).unwrap();
        let fb: Vec<u64> = serde_json::from_value(fast["latency"]["buckets"].clone()).unwrap();
        for (b, f) in buckets.iter_mut().zip(fb) {
            *b += f;
        }
        after["latency"]["buckets"] = json!(buckets);
        let b = Sample::of_status(&status(after, stats(0, 0, 1), 0));
        let rows = interval(&a, &b, 1.0);
        assert!(rows[0].p99_us.unwrap() <= 32.0, "{:?}", rows[0].p99_us);
        // An idle thread: no latency at all.
        assert_eq!((rows[1].iops, rows[1].p50_us), (0.0, None));
    }

    #[test]
    fn a_counter_that_went_down_counts_from_zero() {
        let a = Sample::of_status(&status(stats(5000, 0, 10), stats(0, 0, 1), 0));
        let b = Sample::of_status(&status(stats(40, 0, 10), stats(0, 0, 1), 0));
        assert_eq!(interval(&a, &b, 1.0)[0].iops, 40.0);
    }

    #[test]
    fn the_table_fits_80_columns() {
        let a = Sample::default();
        let b = Sample::of_status(&status(stats(1 << 40, 1 << 30, 4_000_000), stats(123, 4, 3), 123_456_789));
        let text = render(&interval(&a, &b, 0.001), &format!("lunard at {} {}", "x".repeat(60), "y".repeat(40)));
        for l in text.lines() {
            assert!(l.chars().count() <= 80, "{} columns: {l:?}\n{text}", l.chars().count());
        }
        assert!(text.starts_with("~xxx"), "{text}");
        assert!(text.contains(" 1100585G 4503600M ") && text.contains(" 123M\n"), "{text}");
        assert!(text.contains("I/O threads\n     thr 0"), "{text}");
        let v = to_json(&interval(&a, &b, 1.0), 1.5, 1.0);
        assert_eq!(v["luns"][0]["lun"], 0);
        assert_eq!(v["iothreads"][0]["iothread"], 0);
        assert_eq!(v["iothreads"][0]["iops"], 127.0);
    }
}

//! `lunarctl`: drives a running `lunard` over its JSON-RPC control socket.

use std::process::ExitCode;

use clap::Parser;
use lunard::control::client::{Client, ClientError};
use lunard::ctl_cli::{AclCmd, AluaCmd, ChapCmd, Cli, Cmd, ConfigCmd, LunCmd, PortalCmd, SessionCmd, TargetCmd};
use serde_json::{json, Value};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("lunarctl: {e}");
            ExitCode::from(1)
        }
    }
}

fn with_target(cli: &Cli, mut params: Value) -> Value {
    if let (Some(t), Some(o)) = (&cli.target, params.as_object_mut()) {
        o.insert("target".into(), json!(t));
    }
    params
}

fn run(cli: &Cli) -> Result<(), ClientError> {
    let path = cli.control.clone().unwrap_or_else(lunard::control::default_socket_path);
    let mut c = Client::connect(&path)?;
    let (method, params) = match &cli.cmd {
        Cmd::Status => ("status", json!({})),
        Cmd::Stop { lun: None } => ("stop", json!({})),
        Cmd::Stop { lun: Some(lun) } => ("stop", json!({ "lun": lun })),
        Cmd::Cont { lun: None } => ("cont", json!({})),
        Cmd::Cont { lun: Some(lun) } => ("cont", json!({ "lun": lun })),
        Cmd::Lun(LunCmd::Add { spec, lun }) => ("lun.add", json!({ "spec": spec, "lun": lun })),
        Cmd::Lun(LunCmd::Remove { lun }) => ("lun.remove", json!({ "lun": lun })),
        Cmd::Lun(LunCmd::Move { lun, iothread }) => ("lun.move", json!({ "lun": lun, "iothread": iothread })),
        Cmd::Lun(LunCmd::SetErrorPolicy { lun, rerror, werror }) => {
            ("lun.set_error_policy", json!({ "lun": lun, "rerror": rerror, "werror": werror }))
        }
        Cmd::Lun(LunCmd::Resize { lun, size }) => ("lun.resize", json!({ "lun": lun, "size": size })),
        Cmd::Lun(LunCmd::Reopen { lun }) => ("lun.reopen", json!({ "lun": lun })),
        Cmd::Lun(LunCmd::Fault { lun, delay_ms, read_errno, write_errno }) => (
            "lun.fault",
            json!({ "lun": lun, "delay_ms": delay_ms, "read_errno": read_errno, "write_errno": write_errno }),
        ),
        Cmd::Session(SessionCmd::List) => ("session.list", json!({})),
        Cmd::Session(SessionCmd::Kill { id }) => ("session.kill", json!({ "id": id })),
        Cmd::Events => return events(cli, &mut c),
        Cmd::Top { interval, count } => return top(cli, &mut c, *interval, *count),
        Cmd::Target(TargetCmd::Add { name }) => ("target.add", json!({ "name": name })),
        Cmd::Target(TargetCmd::Remove { name }) => ("target.remove", json!({ "name": name })),
        Cmd::Acl(AclCmd::Add { initiator }) => ("acl.add", json!({ "initiator": initiator })),
        Cmd::Acl(AclCmd::Remove { initiator, open }) => ("acl.remove", json!({ "initiator": initiator, "open": open })),
        Cmd::Chap(ChapCmd::Set { user, secret_file, mutual, discovery }) => {
            let secret = read_secret(secret_file.as_deref())?;
            ("chap.set", json!({ "user": user, "secret": secret, "mutual": mutual, "discovery": discovery }))
        }
        Cmd::Chap(ChapCmd::Clear { mutual, discovery }) => {
            ("chap.clear", json!({ "mutual": mutual, "discovery": discovery }))
        }
        Cmd::Portal(PortalCmd::Add { address }) => ("portal.add", json!({ "address": address })),
        Cmd::Portal(PortalCmd::Remove { address }) => ("portal.remove", json!({ "address": address })),
        Cmd::Alua(AluaCmd::Show) => ("alua.show", json!({})),
        Cmd::Alua(AluaCmd::Set { lun, group, state }) => {
            ("alua.set", json!({ "lun": lun, "group": group, "state": state }))
        }
        Cmd::Config(ConfigCmd::Show) => ("config.show", json!({})),
        Cmd::Config(ConfigCmd::Save { path }) => {
            let path = match path {
                Some(p) => {
                    Some(std::path::absolute(p).map_err(|e| ClientError::Protocol(format!("{}: {e}", p.display())))?)
                }
                None => None,
            };
            ("config.save", json!({ "path": path }))
        }
    };
    let params = match &cli.cmd {
        Cmd::Session(_) | Cmd::Config(_) | Cmd::Target(_) | Cmd::Portal(_) => params,
        Cmd::Chap(ChapCmd::Set { discovery: true, .. } | ChapCmd::Clear { discovery: true, .. }) => params,
        _ => with_target(cli, params),
    };
    let result = c.call(method, params)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&result).unwrap_or_default());
        return Ok(());
    }
    match &cli.cmd {
        Cmd::Status => print_status(&result),
        Cmd::Stop { lun: None } => println!("stopped"),
        Cmd::Stop { lun: Some(lun) } => println!("LUN {lun} paused"),
        Cmd::Cont { lun: None } => println!("running"),
        Cmd::Cont { lun: Some(lun) } => println!("LUN {lun} running"),
        Cmd::Lun(LunCmd::Add { .. }) => {
            println!("added LUN {}: {}", result["lun"], result["description"].as_str().unwrap_or(""))
        }
        Cmd::Lun(LunCmd::Remove { lun }) => println!("removed LUN {lun}"),
        Cmd::Lun(LunCmd::Move { lun, iothread }) => println!("LUN {lun} now on I/O thread {iothread}"),
        Cmd::Lun(LunCmd::SetErrorPolicy { lun, .. }) => println!(
            "LUN {lun}: rerror={} werror={}",
            result["rerror"].as_str().unwrap_or("?"),
            result["werror"].as_str().unwrap_or("?")
        ),
        Cmd::Lun(LunCmd::Reopen { lun }) => match result["was_offline"].as_bool() {
            Some(true) => println!("LUN {lun} reopened: online again"),
            _ => println!("LUN {lun} reopened"),
        },
        Cmd::Lun(LunCmd::Resize { lun, .. }) => println!(
            "LUN {lun} resized to {} ({} blocks of {} bytes)",
            size(result["size"].as_u64().unwrap_or(0)),
            result["blocks"],
            result["block_size"]
        ),
        Cmd::Lun(LunCmd::Fault { lun, .. }) => {
            let f = &result["fault"];
            println!(
                "LUN {lun}: delay {} ms, read errno {}, write errno {} (until changed or lunard stops)",
                s(&f["delay_ms"]),
                s(&f["read_errno"]),
                s(&f["write_errno"])
            )
        }
        Cmd::Session(SessionCmd::List) => print_sessions(&result),
        Cmd::Session(SessionCmd::Kill { id }) => println!("session {id} ended"),
        Cmd::Events | Cmd::Top { .. } => {}
        Cmd::Target(TargetCmd::Add { name }) => {
            println!("target {name} added (no LUN yet: lunarctl --target {name} lun add SPEC)")
        }
        Cmd::Target(TargetCmd::Remove { name }) => {
            println!("target {name} removed ({} sessions closed)", s(&result["sessions_closed"]))
        }
        Cmd::Acl(_) => match result["acl"].as_array().map(Vec::len) {
            Some(0) | None => println!("target {}: every initiator may log in", s(&result["target"])),
            Some(_) => println!("target {}: initiators allowed: {}", s(&result["target"]), s(&result["acl"])),
        },
        Cmd::Chap(_) if result["discovery"] == true => println!("discovery: {}", chap_text(&result["chap"])),
        Cmd::Chap(_) => println!("target {}: {}", s(&result["target"]), chap_text(&result["chap"])),
        Cmd::Portal(PortalCmd::Add { .. }) => println!("listening on {}", s(&result["portal"])),
        Cmd::Portal(PortalCmd::Remove { .. }) => println!("no longer listening on {}", s(&result["portal"])),
        Cmd::Alua(AluaCmd::Show) => print_alua(&result),
        Cmd::Alua(AluaCmd::Set { lun, .. }) => println!(
            "LUN {lun}: target port group {} ({}) {}{}",
            s(&result["group"]),
            s(&result["gateway"]),
            s(&result["state"]),
            if result["changed"] == true { "" } else { " (unchanged)" }
        ),
        Cmd::Config(ConfigCmd::Show) => print!("{}", result["toml"].as_str().unwrap_or("")),
        Cmd::Config(ConfigCmd::Save { .. }) => println!("saved to {}", s(&result["path"])),
    }
    // A change says whether it outlives the daemon.
    if let Cmd::Lun(_) | Cmd::Target(_) | Cmd::Acl(_) | Cmd::Chap(_) | Cmd::Portal(_) = &cli.cmd {
        match (result["persistent"].as_bool(), result["config"].as_str()) {
            (Some(true), Some(file)) => println!("written to {file}"),
            (Some(false), _) => println!("not persistent: {}", s(&result["note"])),
            _ => {}
        }
    }
    Ok(())
}

/// The CHAP secret: the first line of `file`, or of standard input (a
/// secret on the command line would be visible to every user in `ps`).
fn read_secret(file: Option<&std::path::Path>) -> Result<String, ClientError> {
    let text = match file {
        Some(f) => std::fs::read_to_string(f)
            .map_err(|e| ClientError::Protocol(format!("cannot read the secret from {}: {e}", f.display())))?,
        None => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprint!("CHAP secret (12 to 255 bytes; the input is shown): ");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .map_err(|e| ClientError::Protocol(format!("cannot read the secret from standard input: {e}")))?;
            line
        }
    };
    let secret = text.lines().next().unwrap_or("").to_string();
    if secret.is_empty() {
        return Err(ClientError::Protocol(
            "no CHAP secret: give it on standard input (one line) or with --secret-file PATH".into(),
        ));
    }
    Ok(secret)
}

/// `lunarctl alua show`: one line per LUN and target port group.
fn print_alua(v: &Value) {
    if let Some(g) = v["gateway"].as_object() {
        println!("this gateway: {} (target port group {}, {})", s(&g["name"]), s(&g["group"]), s(&g["portal"]));
    }
    println!("{:<40} {:>5} {:>5} {:<12} {:<22} STATUS", "TARGET", "LUN", "GROUP", "GATEWAY", "STATE");
    for l in v["luns"].as_array().into_iter().flatten() {
        for g in l["groups"].as_array().into_iter().flatten() {
            let here = if g["group"] == l["local_group"] { " (this gateway)" } else { "" };
            println!(
                "{:<40} {:>5} {:>5} {:<12} {:<22} {}{here}",
                s(&l["target"]),
                s(&l["lun"]),
                s(&g["group"]),
                s(&g["gateway"]),
                s(&g["state"]),
                s(&g["status"])
            );
        }
        let o = &l["ownership"];
        if o["by"] != "local" && !o["by"].is_null() {
            let held = if o["lock_held"].as_bool() == Some(true) { "held here" } else { "not held here" };
            println!("    ownership: {} of {} ({held})", s(&o["by"]), s(&o["image"]));
        }
        let r = &l["reservation"];
        let regs = r["registrations"].as_array().map_or(0, Vec::len);
        match r["holder"].as_object() {
            Some(h) => println!(
                "    reservation: {} by {} (port {}), {regs} registration(s), generation {}",
                s(&h["type"]),
                s(&h["initiator_port"]),
                s(&h["target_port"]),
                s(&r["generation"])
            ),
            None if regs > 0 => {
                println!("    reservation: none, {regs} registration(s), generation {}", s(&r["generation"]))
            }
            None => {}
        }
    }
}

/// `on (user alice), mutual (user bob)`, `off`.
fn chap_text(c: &Value) -> String {
    if c["enabled"].as_bool() != Some(true) {
        return "CHAP off".into();
    }
    let mut t = format!("CHAP on (user {})", s(&c["user"]));
    if c["mutual"].as_bool() == Some(true) {
        t.push_str(&format!(", mutual (user {})", s(&c["mutual_user"])));
    }
    t
}

/// `lunarctl top`: a `status` per interval, the differences printed.
fn top(cli: &Cli, c: &mut Client, interval: f64, count: Option<u64>) -> Result<(), ClientError> {
    if !(0.05..=3600.0).contains(&interval) {
        return Err(ClientError::Protocol(format!(
            "--interval {interval}: give a number of seconds from 0.05 to 3600"
        )));
    }
    let params = with_target(cli, json!({}));
    let mut before = lunard::top::Sample::of_status(&c.call("status", params.clone())?);
    let mut at = std::time::Instant::now();
    let mut n = 0u64;
    while count.is_none_or(|c| n < c) {
        std::thread::sleep(std::time::Duration::from_secs_f64(interval));
        let status = c.call("status", params.clone())?;
        let now = std::time::Instant::now();
        let secs = now.duration_since(at).as_secs_f64();
        let after = lunard::top::Sample::of_status(&status);
        let rows = lunard::top::interval(&before, &after, secs);
        let time =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        if cli.json {
            println!("{}", lunard::top::to_json(&rows, time, secs));
        } else {
            if n > 0 {
                println!();
            }
            let title = format!(
                "lunard {} (pid {}): {}, {:.2} s interval, {} sessions",
                s(&status["version"]),
                s(&status["pid"]),
                s(&status["state"]),
                secs,
                status["sessions"].as_array().map_or(0, Vec::len)
            );
            print!("{}", lunard::top::render(&rows, &title));
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
        before = after;
        at = now;
        n += 1;
    }
    Ok(())
}

fn events(cli: &Cli, c: &mut Client) -> Result<(), ClientError> {
    c.call("events", json!({}))?;
    loop {
        let v = c.read_value()?;
        let ev = &v["params"];
        if cli.json {
            println!("{ev}");
        } else {
            let mut line =
                format!("{:.6} {}", ev["timestamp"].as_f64().unwrap_or(0.0), ev["event"].as_str().unwrap_or("?"));
            if let Some(o) = ev.as_object() {
                for (k, v) in o {
                    if k != "event" && k != "timestamp" && !v.is_null() {
                        let shown = v.as_str().map_or_else(|| v.to_string(), str::to_string);
                        line.push_str(&format!(" {k}={shown}"));
                    }
                }
            }
            println!("{line}");
        }
        use std::io::Write;
        let _ = std::io::stdout().flush();
    }
}

/// Bytes for humans: 1.0 GiB.
fn size(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Array(a) if a.is_empty() => "-".into(),
        Value::Array(a) => a.iter().map(s).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

/// Terminal width the tables fit in.
const COLUMNS: usize = 80;

/// Cuts `c` to `w` characters, keeping its end (the distinctive part of an
/// iSCSI name or a path), with `~` where it was cut.
fn fit(c: &str, w: usize) -> String {
    let n = c.chars().count();
    if n <= w || w == 0 {
        return c.to_string();
    }
    let tail: String = c.chars().skip(n - (w - 1)).collect();
    format!("~{tail}")
}

/// Prints rows as columns separated by two spaces, indented by two, in
/// at most [`COLUMNS`] columns where it can: while too wide, the widest of
/// the columns `squeeze` (names, paths) is cut, its cells keeping their
/// ends, down to 12 characters.
fn table(rows: &[Vec<String>], squeeze: &[usize]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths: Vec<usize> =
        (0..cols).map(|i| rows.iter().map(|r| r.get(i).map_or(0, |c| c.chars().count())).max().unwrap_or(0)).collect();
    let total = |w: &[usize]| 2 + w.iter().sum::<usize>() + 2 * w.len().saturating_sub(1);
    while total(&widths) > COLUMNS {
        let Some(&i) = squeeze.iter().filter(|&&i| i < cols).max_by_key(|&&i| widths[i]) else { break };
        if widths[i] <= 12 {
            break;
        }
        widths[i] = (widths[i] - (total(&widths) - COLUMNS)).max(12);
    }
    for r in rows {
        let mut line = String::new();
        for (i, c) in r.iter().enumerate() {
            let c = fit(c, widths[i]);
            if i + 1 == r.len() {
                line.push_str(&c);
            } else {
                line.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        println!("  {}", line.trim_end());
    }
}

/// `label` and the items, joined with ", ", wrapped at [`COLUMNS`].
fn wrapped(label: &str, items: &[String]) {
    let mut line = label.to_string();
    for (i, it) in items.iter().enumerate() {
        let piece = if i + 1 < items.len() { format!("{it},") } else { it.clone() };
        if line.chars().count() + 1 + piece.chars().count() > COLUMNS && line.len() > label.len() {
            println!("{line}");
            line = " ".repeat(label.chars().count());
        }
        line.push(' ');
        line.push_str(&piece);
    }
    println!("{line}");
}

fn print_status(r: &Value) {
    println!("lunard {} (pid {}): {}; control {}", s(&r["version"]), s(&r["pid"]), s(&r["state"]), s(&r["control"]));
    println!(
        "portals: {}; connections: {}; discovery: {}",
        s(&r["portals"]),
        s(&r["connections"]),
        chap_text(&r["discovery_chap"])
    );
    match (r["config"]["persistent"].as_bool(), r["config"]["file"].as_str()) {
        (Some(true), Some(f)) => println!("config: {f} (changes are written back)"),
        (Some(false), _) => println!("config: changes are not persistent: {}", s(&r["config"]["note"])),
        _ => {}
    }
    println!("I/O threads:");
    let mut rows = vec![[vec!["THREAD".to_string(), "QUEUES".into()], stats_header()].concat()];
    for t in r["iothreads"].as_array().into_iter().flatten() {
        rows.push([vec![s(&t["iothread"]), s(&t["queues"])], stats_columns(&t["stats"])].concat());
    }
    table(&rows, &[]);
    for t in r["iothreads"].as_array().into_iter().flatten() {
        let luns: Vec<String> = t["luns"].as_array().into_iter().flatten().map(s).collect();
        if !luns.is_empty() {
            wrapped(&format!("  thread {} serves", s(&t["iothread"])), &luns);
        }
    }
    for t in r["targets"].as_array().into_iter().flatten() {
        let by = if t["paused_by"].is_null() { String::new() } else { format!(" (by {})", s(&t["paused_by"])) };
        println!("target {}: {}{by}", s(&t["name"]), s(&t["state"]));
        let acl = match t["acl"].as_array().map(Vec::len) {
            Some(0) | None => "any initiator".to_string(),
            Some(_) => s(&t["acl"]),
        };
        println!("  access: {acl}; {}", chap_text(&t["chap"]));
        let mut rows = vec![vec![
            "LUN".to_string(),
            "BACKEND".into(),
            "SIZE".into(),
            "THREADS".into(),
            "Q".into(),
            "INFL".into(),
            "RERROR/WERROR".into(),
            "STATE".into(),
        ]];
        for l in t["luns"].as_array().into_iter().flatten() {
            let backend = match l["path"].as_str() {
                Some(p) => format!("{} {p}", s(&l["backend"])),
                None => s(&l["backend"]),
            };
            let mut state = if !l["offline"].is_null() {
                format!("offline ({})", s(&l["offline"]["errno_name"]))
            } else if l["paused"].as_bool() == Some(true) {
                format!("paused ({})", s(&l["paused_reason"]))
            } else {
                "running".into()
            };
            for e in l["errors"].as_array().into_iter().flatten() {
                state.push_str(&format!(" {} {}", s(&e["direction"]), s(&e["errno_name"])));
            }
            rows.push(vec![
                s(&l["lun"]),
                backend,
                size(l["size"].as_u64().unwrap_or(0)),
                s(&l["iothreads"]),
                l["queues"].as_array().map_or(0, Vec::len).to_string(),
                s(&l["in_flight"]),
                format!("{}/{}", s(&l["rerror"]), s(&l["werror"])),
                state,
            ]);
        }
        table(&rows, &[1]);
        let mut rows = vec![[vec!["LUN".to_string()], stats_header()].concat()];
        for l in t["luns"].as_array().into_iter().flatten() {
            rows.push([vec![s(&l["lun"])], stats_columns(&l["stats"])].concat());
        }
        if rows.len() > 1 {
            table(&rows, &[]);
        }
    }
    print_sessions(&r["sessions"]);
    print_limits(&r["limits"]);
    print_tmfs(&r["task_management"]);
}

/// The task management functions received (those with a non-zero count).
fn print_tmfs(v: &Value) {
    let nonzero = |o: &Value| -> Vec<String> {
        o.as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
            .map(|(k, n)| format!("{k} {n}"))
            .collect()
    };
    let received = nonzero(&v["received"]);
    if !received.is_empty() {
        println!("task management received: {}; answered: {}", received.join(", "), nonzero(&v["answered"]).join(", "));
    }
}

/// The limits met (those with a non-zero count), per front-end.
fn print_limits(v: &Value) {
    for (frontend, l) in v.as_object().into_iter().flatten() {
        let hits: Vec<String> = l["hits"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, n)| n.as_u64().is_some_and(|n| n > 0))
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let hits = if hits.is_empty() { "none".to_string() } else { hits.join(", ") };
        println!("{frontend} limits met: {hits}");
    }
}

fn stats_header() -> Vec<String> {
    ["CMDS", "READS", "WRITES", "MB RD", "MB WR", "ERRORS", "P50", "P99"].map(String::from).to_vec()
}

/// A `stats` object of `status` as table cells (see `stats_header`).
fn stats_columns(v: &Value) -> Vec<String> {
    let n = |x: &Value| x.as_u64().unwrap_or(0);
    let mb = |x: &Value| format!("{:.1}", n(x) as f64 / 1e6);
    let mut errors = n(&v["errors"]).to_string();
    for (key, label) in [("io_errors", "io"), ("aborted", "aborted")] {
        if n(&v[key]) > 0 {
            errors.push_str(&format!(" {label}:{}", n(&v[key])));
        }
    }
    vec![
        n(&v["commands"]["total"]).to_string(),
        n(&v["commands"]["read"]).to_string(),
        n(&v["commands"]["write"]).to_string(),
        mb(&v["bytes"]["read"]),
        mb(&v["bytes"]["written"]),
        errors,
        latency(&v["latency"]["p50_us"]),
        latency(&v["latency"]["p99_us"]),
    ]
}

/// A latency in microseconds for humans: 12us, 1.5ms, 2.10s.
fn latency(us: &Value) -> String {
    match us.as_f64() {
        None => "-".into(),
        Some(x) if x < 10.0 => format!("{x:.1}us"),
        Some(x) if x < 1000.0 => format!("{x:.0}us"),
        Some(x) if x < 1e6 => format!("{:.1}ms", x / 1e3),
        Some(x) => format!("{:.2}s", x / 1e6),
    }
}

fn print_sessions(v: &Value) {
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        println!("sessions: none");
        return;
    }
    println!("sessions:");
    let mut rows = vec![vec!["ID".to_string(), "INITIATOR".into(), "ISID".into(), "TARGET".into()]];
    for x in &list {
        rows.push(vec![s(&x["id"]), s(&x["initiator"]), s(&x["isid"]), s(&x["target"])]);
    }
    table(&rows, &[1, 3]);
}

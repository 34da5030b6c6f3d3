//! End-to-end tests of the control plane: the real `lunard` binary, its
//! control socket, `lunarctl`, and libiscsi's tools as initiators. The
//! tools are required: a test fails, naming the package, when one is
//! missing (`scripts/test-all.sh` installs libiscsi-bin).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lunard::control::client::{Client, ClientError};
use serde_json::{json, Value};

mod common;
use common::{free_port, tool, Daemon, IQN};

/// lunard with two I/O threads (moves need a second one).
fn start(args: &[&str]) -> Daemon {
    let mut a = vec!["--iothreads", "2"];
    a.extend_from_slice(args);
    Daemon::start(&a)
}

/// A raw connection to the control socket, for malformed input.
fn raw(socket: &Path) -> (UnixStream, BufReader<UnixStream>) {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let r = BufReader::new(s.try_clone().unwrap());
    (s, r)
}

fn roundtrip(w: &mut UnixStream, r: &mut BufReader<UnixStream>, line: &str) -> Value {
    w.write_all(line.as_bytes()).unwrap();
    w.write_all(b"\n").unwrap();
    let mut answer = String::new();
    r.read_line(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

fn error_code(v: &Value) -> i64 {
    v["error"]["code"].as_i64().unwrap_or_else(|| panic!("not an error: {v}"))
}

fn luns_seen(d: &Daemon) -> String {
    let o = tool("iscsi-ls").arg("-s").arg(d.portal()).output().unwrap();
    assert!(o.status.success(), "iscsi-ls: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// A background initiator holding a session (reads on LUN `lun`).
fn perf(d: &Daemon, lun: u32) -> Child {
    tool("iscsi-perf")
        .args(["-m", "4", "-b", "8", "-r"])
        .arg(d.url(lun))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for a command that was held to complete successfully;
/// returns its standard output.
fn finished_ok(mut child: Child, what: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "{what} did not complete");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(status.success(), "{out}");
    out
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn status_shape_and_socket() {
    let d = start(&["--lun", "backend=mem,size=64M", "--lun", "backend=null,size=1G,werror=stop"]);
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket permissions");
    let s = d.ctl_json(&["status"]);
    assert_eq!(s["state"], "running");
    assert_eq!(s["iothreads"].as_array().unwrap().len(), 2);
    let t = &s["targets"][0];
    assert_eq!(t["name"], IQN);
    assert_eq!(t["state"], "running");
    let luns = t["luns"].as_array().unwrap();
    assert_eq!(luns.len(), 2);
    assert_eq!(luns[0]["backend"], "mem");
    assert_eq!(luns[0]["size"], 64 << 20);
    assert_eq!(luns[1]["backend"], "null");
    assert_eq!(luns[1]["werror"], "stop");
    for l in luns {
        for key in ["lun", "block_size", "queues", "iothreads", "in_flight", "paused", "paused_reason", "rerror"] {
            assert!(l.get(key).is_some(), "LUN field {key} missing: {l}");
        }
    }
    assert!(s["sessions"].as_array().unwrap().is_empty());
    let human = d.ctl_ok(&["status"]);
    assert!(human.contains("BACKEND") && human.contains("64.0 MiB") && human.contains("running"), "{human}");
    println!("{human}");
}

#[test]
fn lunarctl_without_daemon_names_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nothing.sock");
    let o = Command::new(env!("CARGO_BIN_EXE_lunarctl")).arg("--control").arg(&sock).arg("status").output().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("not running") && err.contains(&*sock.to_string_lossy()), "{err}");
}

#[test]
fn stale_socket_is_replaced_and_socket_removed_at_exit() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("lunard.sock");
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap()); // stale: nobody listens
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lunard"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--iothreads", "1", "--control"])
        .arg(&sock)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while !line.contains("control ") {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "lunard exited: {:?}", child.wait());
    }
    let mut c = Client::connect(&sock).unwrap();
    assert_eq!(c.call("status", json!({})).unwrap()["state"], "running");
    Command::new("kill").arg("-TERM").arg(child.id().to_string()).status().unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists(), "socket left behind");
}

#[test]
fn stop_then_cont() {
    let mut d = start(&[]);
    assert_eq!(d.ctl_ok(&["stop"]).trim(), "stopped");
    let s = d.ctl_json(&["status"]);
    assert_eq!(s["state"], "stopped");
    assert_eq!(s["targets"][0]["paused_by"], "operator");
    assert_eq!(s["targets"][0]["luns"][0]["paused"], true);
    assert_eq!(s["targets"][0]["luns"][0]["paused_reason"], "operator");
    // Per-LUN stop of a LUN that does not exist is a clear error.
    let e = d.call("stop", json!({"lun": 9})).unwrap_err();
    assert!(matches!(e, ClientError::Rpc { code: -32002, .. }), "{e}");
    // A command sent while stopped does not complete until cont.
    let mut rc =
        tool("iscsi-readcapacity16").arg(d.url(0)).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(rc.try_wait().unwrap().is_none(), "a command completed while the target was stopped");
    assert_eq!(d.ctl_ok(&["cont"]).trim(), "running");
    let out = finished_ok(rc, "the command held while stopped");
    println!("READ CAPACITY held while stopped, completed after cont:\n{out}");
    let s = d.ctl_json(&["status"]);
    assert_eq!(s["state"], "running");
    assert_eq!(s["targets"][0]["paused_by"], Value::Null);
    assert!(d.alive());
}

#[test]
fn lun_add_and_remove() {
    let d = start(&["--lun", "backend=mem,size=64M"]);
    let added = d.ctl_ok(&["lun", "add", "backend=mem,size=32M"]);
    assert!(added.contains("added LUN 1"), "{added}");
    let r = d.call("lun.add", json!({"spec": "backend=null,size=16M,block-size=4096", "lun": 5})).unwrap();
    assert_eq!(r["lun"], 5);
    assert_eq!(r["size"], 16 << 20);
    // Errors: duplicate LUN, bad spec, wrong type.
    assert!(matches!(
        d.call("lun.add", json!({"spec": "backend=mem,size=1M", "lun": 5})),
        Err(ClientError::Rpc { code: -32003, .. })
    ));
    assert!(matches!(d.call("lun.add", json!({"spec": "backend=tape"})), Err(ClientError::Rpc { code: -32602, .. })));
    assert!(matches!(d.call("lun.add", json!({"spec": 5})), Err(ClientError::Rpc { code: -32602, .. })));
    let o = d.ctl(&["lun", "add", "backend=mem,size=banana"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("size"), "{}", String::from_utf8_lossy(&o.stderr));
    let s = d.ctl_json(&["status"]);
    let luns: Vec<u64> =
        s["targets"][0]["luns"].as_array().unwrap().iter().map(|l| l["lun"].as_u64().unwrap()).collect();
    assert_eq!(luns, vec![0, 1, 5]);
    let seen = luns_seen(&d);
    assert!(seen.contains("Lun:1") && seen.contains("Lun:5"), "{seen}");
    d.ctl_ok(&["lun", "remove", "1"]);
    assert!(matches!(d.call("lun.remove", json!({"lun": 1})), Err(ClientError::Rpc { code: -32002, .. })));
    let seen = luns_seen(&d);
    assert!(seen.contains("Lun:0") && !seen.contains("Lun:1") && seen.contains("Lun:5"), "{seen}");
    println!("REPORT LUNS after remove:\n{seen}");
}

#[test]
fn lun_move_under_io() {
    let d = start(&["--lun", "backend=mem,size=64M"]);
    assert!(matches!(d.call("lun.move", json!({"lun": 0, "iothread": 2})), Err(ClientError::Rpc { code: -32004, .. })));
    assert!(matches!(d.call("lun.move", json!({"lun": 9, "iothread": 1})), Err(ClientError::Rpc { code: -32002, .. })));
    let mut load = perf(&d, 0);
    wait_for("a session with a queue", || {
        d.call("status", json!({})).unwrap()["targets"][0]["luns"][0]["queues"]
            .as_array()
            .is_some_and(|q| !q.is_empty())
    });
    let mut moves = 0;
    for i in 0..40 {
        let to = (i % 2).to_string();
        d.ctl_ok(&["lun", "move", "0", "--iothread", &to]);
        let s = d.ctl_json(&["status"]);
        for q in s["targets"][0]["luns"][0]["queues"].as_array().unwrap() {
            assert_eq!(q["iothread"].to_string(), to, "{s}");
        }
        moves += 1;
    }
    assert!(load.try_wait().unwrap().is_none(), "the initiator failed during the moves");
    let _ = load.kill();
    let _ = load.wait();
    println!("{moves} moves under iscsi-perf load");
}

#[test]
fn set_error_policy() {
    let d = start(&[]);
    let out = d.ctl_ok(&["lun", "set-error-policy", "0", "--werror", "stop"]);
    assert!(out.contains("werror=stop") && out.contains("rerror=report"), "{out}");
    let s = d.ctl_json(&["status"]);
    assert_eq!(s["targets"][0]["luns"][0]["werror"], "stop");
    let e = d.call("lun.set_error_policy", json!({"lun": 0, "rerror": "halt"})).unwrap_err();
    assert!(matches!(&e, ClientError::Rpc { code: -32602, message, .. } if message.contains("halt")), "{e}");
    assert!(matches!(d.call("lun.set_error_policy", json!({"lun": 0})), Err(ClientError::Rpc { code: -32602, .. })));
}

fn readcapacity(d: &Daemon, lun: u32) -> String {
    let o = tool("iscsi-readcapacity16").arg(d.url(lun)).output().unwrap();
    assert!(o.status.success(), "iscsi-readcapacity16: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn lun_resize() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    let file_spec = format!("backend=file,path={},size=16M", image.display());
    let d = start(&["--lun", "backend=mem,size=64M", "--lun", &file_spec]);
    let mut sub = d.client();
    sub.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    sub.call("events", json!({})).unwrap();
    let before = readcapacity(&d, 0);
    assert!(before.contains(&format!("Total size:{}", 64u64 << 20)), "{before}");
    // Grow the mem LUN with a human-readable size.
    let out = d.ctl_ok(&["lun", "resize", "0", "2G"]);
    assert!(out.contains("2.0 GiB") && out.contains("4194304 blocks"), "{out}");
    let v = loop {
        // Session events of the tools come in between.
        let v = sub.read_value().unwrap();
        if !v["params"]["event"].as_str().unwrap().starts_with("session.") {
            break v;
        }
    };
    assert_eq!(v["params"]["event"], "lun.resized", "{v}");
    assert_eq!((v["params"]["lun"].clone(), v["params"]["size"].clone()), (json!(0), json!(2u64 << 30)));
    let s = d.ctl_json(&["status"]);
    let l0 = &s["targets"][0]["luns"][0];
    assert_eq!((l0["size"].clone(), l0["blocks"].clone()), (json!(2u64 << 30), json!(4194304)), "{l0}");
    assert!(l0["description"].as_str().unwrap().contains("2.0 GiB"), "{l0}");
    assert!(d.ctl_ok(&["status"]).contains("2.0 GiB"));
    let after = readcapacity(&d, 0);
    assert!(after.contains(&format!("Total size:{}", 2u64 << 30)), "{after}");
    println!("READ CAPACITY(16) after `lunarctl lun resize 0 2G`:\n{after}");
    // Shrink the file LUN: the image follows.
    let r = d.call("lun.resize", json!({"lun": 1, "size": 8u64 << 20})).unwrap();
    assert_eq!(r["blocks"], 16384);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 8 << 20);
    assert!(readcapacity(&d, 1).contains(&format!("Total size:{}", 8u64 << 20)));
    // Refused: clear errors, nothing changes.
    for (size, what) in [(json!(0), "0 bytes"), (json!(1000), "multiple of the logical block size")] {
        let e = d.call("lun.resize", json!({"lun": 0, "size": size})).unwrap_err();
        assert!(matches!(&e, ClientError::Rpc { code: -32602, message, .. } if message.contains(what)), "{e}");
    }
    let e = d.call("lun.resize", json!({"lun": 0, "size": "2T"})).unwrap_err();
    assert!(matches!(&e, ClientError::Rpc { code: -32602, .. }), "a mem LUN above its limit: {e}");
    assert!(matches!(
        d.call("lun.resize", json!({"lun": 9, "size": "1G"})),
        Err(ClientError::Rpc { code: -32002, .. })
    ));
    let o = d.ctl(&["lun", "resize", "0", "banana"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("size"));
    assert_eq!(d.ctl_json(&["status"])["targets"][0]["luns"][0]["size"], json!(2u64 << 30));
}

#[test]
fn stop_and_cont_one_lun_under_load_on_another() {
    let mut d = start(&["--lun", "backend=mem,size=64M", "--lun", "backend=mem,size=64M"]);
    let mut sub = d.client();
    sub.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    sub.call("events", json!({})).unwrap();
    let mut load = perf(&d, 1);
    wait_for("a session on LUN 1", || {
        d.call("status", json!({})).unwrap()["targets"][0]["luns"][1]["queues"]
            .as_array()
            .is_some_and(|q| !q.is_empty())
    });
    assert_eq!(d.ctl_ok(&["stop", "--lun", "0"]).trim(), "LUN 0 paused");
    let s = d.ctl_json(&["status"]);
    let t = &s["targets"][0];
    assert_eq!((s["state"].clone(), t["state"].clone()), (json!("running"), json!("running")), "{s}");
    assert_eq!(
        (t["luns"][0]["paused"].clone(), t["luns"][0]["paused_reason"].clone()),
        (json!(true), json!("operator"))
    );
    assert_eq!((t["luns"][1]["paused"].clone(), t["luns"][1]["paused_reason"].clone()), (json!(false), Value::Null));
    assert!(d.ctl_ok(&["status"]).contains("paused (operator)"));
    // A command for the paused LUN is held...
    let mut held =
        tool("iscsi-readcapacity16").arg(d.url(0)).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(800));
    assert!(held.try_wait().unwrap().is_none(), "a command of the paused LUN completed");
    // ...while the other LUN serves.
    assert!(readcapacity(&d, 1).contains("Total size:"));
    assert!(load.try_wait().unwrap().is_none(), "the initiator of LUN 1 failed while LUN 0 was paused");
    assert_eq!(d.ctl_ok(&["cont", "--lun", "0"]).trim(), "LUN 0 running");
    let out = finished_ok(held, "the command held while LUN 0 was paused");
    println!("READ CAPACITY held while LUN 0 was paused, completed after `cont --lun 0`:\n{out}");
    let mut names = Vec::new();
    while !names.contains(&"lun.resumed".to_string()) {
        let v = sub.read_value().unwrap();
        let p = &v["params"];
        if p["event"] == "lun.paused" {
            assert_eq!((p["lun"].clone(), p["reason"].clone()), (json!(0), json!("operator")), "{p}");
        }
        names.push(p["event"].as_str().unwrap().to_string());
    }
    let core: Vec<&String> = names.iter().filter(|n| n.starts_with("lun.")).collect();
    assert_eq!(core, ["lun.paused", "lun.resumed"]);
    println!("events: {names:?}");
    let s = d.ctl_json(&["status"]);
    assert_eq!(s["targets"][0]["luns"][0]["paused"], false);
    assert!(load.try_wait().unwrap().is_none(), "the initiator of LUN 1 failed");
    let _ = load.kill();
    let _ = load.wait();
    assert!(d.alive());
}

#[test]
fn protocol_errors_keep_the_daemon_serving() {
    let mut d = start(&[]);
    let (mut w, mut r) = raw(&d.socket);
    assert_eq!(error_code(&roundtrip(&mut w, &mut r, "{\"jsonrpc\": \"2.0\", \"method\": ")), -32700);
    assert_eq!(error_code(&roundtrip(&mut w, &mut r, "\u{1}\u{2}garbage")), -32700);
    assert_eq!(error_code(&roundtrip(&mut w, &mut r, "[]")), -32600);
    assert_eq!(error_code(&roundtrip(&mut w, &mut r, "\"status\"")), -32600);
    assert_eq!(error_code(&roundtrip(&mut w, &mut r, r#"{"jsonrpc":"2.0","id":1}"#)), -32600);
    let v = roundtrip(&mut w, &mut r, r#"{"jsonrpc":"2.0","id":7,"method":"frobnicate"}"#);
    assert_eq!((error_code(&v), v["id"].clone()), (-32601, json!(7)));
    let v = roundtrip(
        &mut w,
        &mut r,
        r#"{"jsonrpc":"2.0","id":8,"method":"lun.move","params":{"lun":"zero","iothread":0}}"#,
    );
    assert_eq!(error_code(&v), -32602);
    let v =
        roundtrip(&mut w, &mut r, r#"{"jsonrpc":"2.0","id":9,"method":"lun.move","params":{"lun":0,"iothread":-1}}"#);
    assert_eq!(error_code(&v), -32602);
    let v = roundtrip(&mut w, &mut r, r#"{"jsonrpc":"2.0","id":10,"method":"status","params":{"bogus":1}}"#);
    assert_eq!(error_code(&v), -32602);
    // A notification gets no answer; the next request's answer comes next.
    w.write_all(b"{\"jsonrpc\":\"2.0\",\"method\":\"status\"}\n").unwrap();
    let v = roundtrip(&mut w, &mut r, r#"{"jsonrpc":"2.0","id":"s","method":"status"}"#);
    assert_eq!((v["id"].clone(), v["result"]["state"].clone()), (json!("s"), json!("running")));
    // A batch: answers for the calls, in order.
    let v = roundtrip(
        &mut w,
        &mut r,
        r#"[{"jsonrpc":"2.0","id":1,"method":"session.list"},{"jsonrpc":"2.0","id":2,"method":"nope"},3]"#,
    );
    let b = v.as_array().unwrap();
    assert_eq!(b.len(), 3);
    assert!(b[0]["result"].is_array());
    assert_eq!(error_code(&b[1]), -32601);
    assert_eq!(error_code(&b[2]), -32600);
    drop((w, r));

    // Clients that go away mid-request, or before reading the answer.
    for partial in ["{\"jsonrpc\":\"2.0\",\"id\":1,\"meth", "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"status\"}\n"] {
        let mut s = UnixStream::connect(&d.socket).unwrap();
        s.write_all(partial.as_bytes()).unwrap();
        drop(s);
    }
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"stop\"}\n").unwrap();
    s.shutdown(std::net::Shutdown::Both).unwrap();
    drop(s);
    // An over-long line is refused and the connection closed.
    let (mut w, mut r) = raw(&d.socket);
    let big = vec![b'x'; (1 << 20) + 10];
    let _ = w.write_all(&big);
    let mut answer = String::new();
    let _ = r.read_line(&mut answer);
    assert!(answer.is_empty() || answer.contains("-32600"), "{answer}");
    // Several clients at once, and the daemon keeps serving.
    let clients: Vec<Client> = (0..8).map(|_| d.client()).collect();
    for mut c in clients {
        assert!(c.call("status", json!({})).unwrap().is_object());
    }
    wait_for("the stop sent by the vanished client", || d.call("status", json!({})).unwrap()["state"] == "stopped");
    d.ctl_ok(&["cont"]);
    assert_eq!(d.call("status", json!({})).unwrap()["state"], "running");
    assert!(d.alive());
}

#[test]
fn events_stream() {
    let d = start(&[]);
    let mut sub = d.client();
    assert_eq!(sub.call("events", json!({})).unwrap()["subscribed"], true);
    d.call("lun.add", json!({"spec": "backend=mem,size=8M"})).unwrap();
    d.call("lun.move", json!({"lun": 1, "iothread": 1})).unwrap();
    d.call("stop", json!({})).unwrap();
    d.call("cont", json!({})).unwrap();
    d.call("lun.remove", json!({"lun": 1})).unwrap();
    let mut names = Vec::new();
    luns_seen(&d);
    let want: &[&str] = &[
        "lun.added",
        "lun.moved",
        "target.stopped",
        "target.resumed",
        "lun.removed",
        "session.login",
        "session.logout",
    ];
    while names.len() < want.len() {
        let v = sub.read_value().unwrap();
        assert_eq!(v["method"], "event");
        assert!(v["params"]["timestamp"].as_f64().unwrap() > 0.0);
        names.push(v["params"]["event"].as_str().unwrap().to_string());
    }
    // Session events come from another source than core events: compare as sets per source.
    let core: Vec<&String> = names.iter().filter(|n| !n.starts_with("session")).collect();
    assert_eq!(core, want.iter().filter(|n| !n.starts_with("session")).collect::<Vec<_>>());
    for w in want {
        assert!(names.iter().any(|n| n == w), "{w} missing from {names:?}");
    }
    println!("events: {names:?}");
    // The subscriber goes away; the daemon keeps serving.
    drop(sub);
    assert_eq!(d.call("status", json!({})).unwrap()["state"], "running");
}

#[test]
fn session_list_and_kill() {
    let d = start(&["--lun", "backend=mem,size=64M"]);
    let mut sub = d.client();
    sub.call("events", json!({})).unwrap();
    assert!(matches!(d.call("session.kill", json!({"id": 999})), Err(ClientError::Rpc { code: -32005, .. })));
    let mut load = perf(&d, 0);
    wait_for("a session", || !d.call("session.list", json!({})).unwrap().as_array().unwrap().is_empty());
    let list = d.ctl_json(&["session", "list"]);
    let s = &list[0];
    assert_eq!(s["target"], IQN);
    assert!(s["initiator"].as_str().unwrap().starts_with("iqn."));
    let human = d.ctl_ok(&["session", "list"]);
    assert!(human.contains("INITIATOR") && human.contains(IQN), "{human}");
    let id = s["id"].as_u64().unwrap();
    d.ctl_ok(&["session", "kill", &id.to_string()]);
    let mut seen = Vec::new();
    while !seen.contains(&"session.logout".to_string()) {
        let v = sub.read_value().unwrap();
        let p = &v["params"];
        if p["event"] == "session.logout" {
            assert_eq!(p["id"], id);
        }
        seen.push(p["event"].as_str().unwrap().to_string());
    }
    println!("session events: {seen:?}");
    // The killed session is gone from the list (iscsi-perf may have logged in again: a new id).
    let ids: Vec<u64> =
        d.ctl_json(&["session", "list"]).as_array().unwrap().iter().map(|s| s["id"].as_u64().unwrap()).collect();
    assert!(!ids.contains(&id), "session {id} still listed after kill: {ids:?}");
    let _ = load.kill();
    let _ = load.wait();
}

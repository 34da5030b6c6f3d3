//! Tests of the whole configuration: defaults, the command line, the file
//! under the command line.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::*;

pub(super) fn env() -> Env {
    Env { uid: Some(1000), xdg_runtime_dir: Some(PathBuf::from("/run/user/1000")), cpus: 4 }
}

fn cli(args: &[&str]) -> Result<Config, ConfigError> {
    Config::from_args_in(std::iter::once("lunard").chain(args.iter().copied()), &env())
}

fn ok(args: &[&str]) -> Config {
    cli(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn err(args: &[&str]) -> String {
    match cli(args) {
        Ok(c) => panic!("{args:?} was accepted: {c:?}"),
        Err(e) => e.to_string(),
    }
}

pub(super) fn has(msg: &str, parts: &[&str]) {
    for p in parts {
        assert!(msg.contains(p), "`{msg}` lacks `{p}`");
    }
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    f.write_all(text.as_bytes()).unwrap();
    f
}

#[test]
fn no_arguments_is_a_useful_default() {
    let c = ok(&[]);
    assert_eq!(c.iothreads, 4);
    assert_eq!(c.portals, vec![addr("127.0.0.1:3260")]);
    assert_eq!(c.targets.len(), 1);
    let t = &c.targets[0];
    assert_eq!(t.name, "iqn.2026-11.dev.lunar:disk0");
    assert_eq!(t.luns.len(), 1);
    assert_eq!(t.luns[0].backend, BackendSpec::Mem { size: 1 << 30 });
    assert_eq!(t.luns[0].describe(), "mem 1.0 GiB, 512-byte blocks, thin");
    assert!(t.chap.is_none() && t.mutual_chap.is_none() && t.allow_initiators.is_empty());
    assert_eq!(c.discovery_chap, None);
    assert_eq!(c.control, PathBuf::from("/run/user/1000/lunar/lunard.sock"));
    assert_eq!(c.metrics, None);
    assert!(c.vhost_user.is_empty());
    assert_eq!(c.log, "info");
    // The real environment also gives a valid configuration.
    let real = Config::from_args(["lunard"]).unwrap();
    assert!((1..=MAX_IOTHREADS).contains(&real.iothreads));
}

#[test]
fn defaults_depend_on_the_environment() {
    let root = Env { uid: Some(0), ..env() };
    assert_eq!(root.default_control(), PathBuf::from("/run/lunar/lunard.sock"));
    let no_xdg = Env { xdg_runtime_dir: None, ..env() };
    assert_eq!(no_xdg.default_control(), std::env::temp_dir().join("lunar-1000/lunard.sock"));
    let relative_xdg = Env { xdg_runtime_dir: Some("run".into()), ..env() };
    assert!(relative_xdg.default_control().is_absolute());
    assert_eq!(Env { cpus: 0, ..env() }.default_iothreads(), 1);
    assert_eq!(Env { cpus: 256, ..env() }.default_iothreads(), 64);
    let many = Config::from_args_in(["lunard"], &Env { cpus: 1000, ..env() }).unwrap();
    assert_eq!(many.iothreads, 64);
}

#[test]
fn help_and_version_are_distinguishable() {
    for flag in ["--help", "-h", "--version", "-V"] {
        let e = cli(&[flag]).unwrap_err();
        assert!(e.is_help_or_version(), "{flag}");
        assert_eq!(e.exit_code(), 0);
    }
    let help = cli(&["--help"]).unwrap_err().to_string();
    has(&help, &["--listen", "--lun <SPEC>", "LUN SPEC", "block-size=512|4096", "Examples:", "override"]);
    let e = cli(&["--frobnicate"]).unwrap_err();
    assert!(!e.is_help_or_version());
    assert_eq!(e.exit_code(), 2);
    has(&e.to_string(), &["--frobnicate"]);
    let e = cli(&["--listen"]).unwrap_err();
    assert!(!e.is_help_or_version());
}

#[test]
fn repeated_listen_and_lun() {
    let c = ok(&[
        "--listen",
        "0.0.0.0:3260",
        "--listen",
        "[::1]:3261",
        "--listen",
        "10.1.2.3",
        "--lun",
        "backend=mem,size=64M",
        "--lun",
        "backend=null,size=1T,block-size=4096",
        "--lun",
        "path=/srv/a.img",
    ]);
    assert_eq!(c.portals, vec![addr("0.0.0.0:3260"), addr("[::1]:3261"), addr("10.1.2.3:3260")]);
    let t = &c.targets[0];
    assert_eq!(t.name, DEFAULT_TARGET);
    let kinds: Vec<_> = t.luns.iter().map(|l| l.backend.kind()).collect();
    assert_eq!(kinds, ["mem", "null", "file"], "LUN 0, 1, 2 in order");
    assert_eq!(t.luns[1].block_size, 4096);
}

#[test]
fn ipv6_portal() {
    let c = ok(&["--listen", "[::]:3260"]);
    assert!(c.portals[0].is_ipv6());
    let c = ok(&["--listen", "[fe80::1]"]);
    assert_eq!(c.portals, vec![addr("[fe80::1]:3260")]);
    has(&err(&["--listen", "::1"]), &["`--listen`", "`::1`", "brackets"]);
    has(&err(&["--listen", "localhost:3260"]), &["`--listen`", "host names"]);
    has(&err(&["--listen", "1.2.3.4:3260", "--listen", "1.2.3.4:3260"]), &["`listen`", "twice"]);
}

#[test]
fn scalar_flags() {
    let c = ok(&[
        "--iothreads",
        "7",
        "--control",
        "/tmp/l.sock",
        "--metrics",
        "[::1]:9100",
        "--log",
        "debug,lunar_iscsi=trace",
    ]);
    assert_eq!(c.iothreads, 7);
    assert_eq!(c.control, PathBuf::from("/tmp/l.sock"));
    assert_eq!(c.metrics, Some(addr("[::1]:9100")));
    assert_eq!(c.log, "debug,lunar_iscsi=trace");
    for bad in ["0", "65", "-1", "two", "+3"] {
        has(&err(&["--iothreads", bad]), &["`--iothreads`", &format!("`{bad}`"), "1..=64"]);
    }
    has(&err(&["--metrics", "9100"]), &["`--metrics`", "`9100`"]);
    has(&err(&["--metrics", "127.0.0.1:3260"]), &["`metrics`", "also an iSCSI portal"]);
    has(&err(&["--log", "info,x=loud"]), &["`--log`", "`info,x=loud`"]);
    has(&err(&["--control", ""]), &["--control"]);
    has(&err(&["--control", &format!("/{}", "s".repeat(200))]), &["`--control`", "at most 107"]);
}

#[test]
fn target_and_lun_errors_name_the_flag() {
    let c = ok(&["--target", "iqn.2001-04.com.example:store"]);
    assert_eq!(c.targets[0].name, "iqn.2001-04.com.example:store");
    assert_eq!(c.targets[0].luns.len(), 1, "the default LUN");
    has(&err(&["--target", "iqn.2001-04.com.Example:x"]), &["`--target`", "lowercase"]);
    has(&err(&["--target", "store"]), &["`--target`", "`store`"]);
    let m = err(&["--lun", "backend=mem,size=1M", "--lun", "backend=mem,size=1X"]);
    has(&m, &["--lun `backend=mem,size=1X` (LUN 1)", "`size`", "`1X`"]);
    has(&err(&["--lun", "backend=mem,size=1M,iothread=4"]), &["LUN 0", "`iothread`", "only 4 I/O threads"]);
    ok(&["--iothreads", "5", "--lun", "backend=mem,size=1M,iothread=4"]);
}

#[test]
fn chap_flags() {
    let c = ok(&[
        "--chap-user",
        "alice",
        "--chap-secret",
        "twelve bytes",
        "--mutual-chap-user",
        "target",
        "--mutual-chap-secret",
        "another secret",
        "--discovery-chap-user",
        "disco",
        "--discovery-chap-secret",
        "discovery secret",
        "--allow-initiator",
        "iqn.1994-05.com.redhat:client",
        "--allow-initiator",
        "iqn.1994-05.com.redhat:other",
        "--allow-initiator",
        "iqn.1994-05.com.redhat:client",
    ]);
    let t = &c.targets[0];
    assert_eq!(t.chap.as_ref().map(|c| c.user.as_str()), Some("alice"));
    assert_eq!(t.mutual_chap.as_ref().map(|c| c.secret.as_str()), Some("another secret"));
    assert_eq!(c.discovery_chap.as_ref().map(|c| c.user.as_str()), Some("disco"));
    assert_eq!(t.allow_initiators, ["iqn.1994-05.com.redhat:client", "iqn.1994-05.com.redhat:other"]);

    let m = err(&["--chap-user", "alice", "--chap-secret", "short"]);
    has(&m, &["`--chap-secret`", "too short: 5 bytes", "at least 12"]);
    assert!(!m.contains("short`"), "the secret is not echoed: {m}");
    has(
        &err(&["--discovery-chap-user", "d", "--discovery-chap-secret", "x"]),
        &["`--discovery-chap-secret`", "too short"],
    );
    // Pairs go together (clap says which flag is missing).
    has(&err(&["--chap-user", "alice"]), &["--chap-secret"]);
    has(&err(&["--mutual-chap-secret", "twelve bytes"]), &["--mutual-chap-user"]);
    has(
        &err(&["--mutual-chap-user", "t", "--mutual-chap-secret", "twelve bytes"]),
        &["`mutual-chap`", "needs one-way CHAP"],
    );
    has(
        &err(&[
            "--chap-user",
            "a",
            "--chap-secret",
            "twelve bytes",
            "--mutual-chap-user",
            "t",
            "--mutual-chap-secret",
            "twelve bytes",
        ]),
        &["`mutual-chap`", "must differ"],
    );
    has(&err(&["--allow-initiator", "client"]), &["`--allow-initiator`", "`client`"]);
}

#[test]
fn vhost_user_flags() {
    let c = ok(&[
        "--vhost-user",
        "/run/lunar/vm0.sock,num-queues=4,poll-us=0,max-chain=130,max-request-bytes=1M,max-inflight=16",
        "--vhost-user",
        "/run/lunar/vm,,1.sock",
        "--lun",
        "backend=mem,size=1G,controller=/run/lunar/vm0.sock",
    ]);
    assert_eq!(
        c.vhost_user,
        vec![
            VhostUserConfig {
                socket: "/run/lunar/vm0.sock".into(),
                num_queues: Some(4),
                poll_us: Some(0),
                limits: lunar_vhost::VhostLimits {
                    max_chain_descriptors: 130,
                    max_request_bytes: 1 << 20,
                    max_inflight_per_queue: 16,
                },
            },
            VhostUserConfig {
                socket: "/run/lunar/vm,1.sock".into(),
                num_queues: None,
                poll_us: None,
                limits: lunar_vhost::VhostLimits::default(),
            },
        ]
    );
    assert_eq!(c.targets[0].luns[0].controller, Some(PathBuf::from("/run/lunar/vm0.sock")));
    has(&err(&["--vhost-user", "/a.sock,num-queues=0"]), &["`num-queues`", "`0`", "1..=1022"]);
    has(&err(&["--vhost-user", "/a.sock,num-queues=x"]), &["`num-queues`", "`x`"]);
    has(&err(&["--vhost-user", "/a.sock,queues=2"]), &["unknown key `queues`", "num-queues"]);
    has(&err(&["--vhost-user", "/a.sock,max-inflight=0"]), &["`max-inflight`", "`0`"]);
    has(&err(&["--vhost-user", "/a.sock,max-chain=2"]), &["vhost-user"]);
    has(&err(&["--vhost-user", "/a.sock,max-chain=8,max-chain=9"]), &["duplicate key `max-chain`"]);
    has(&err(&["--vhost-user", "/a.sock,max-request-bytes=lots"]), &["`max-request-bytes`", "`lots`"]);
    has(&err(&["--vhost-user", "/a.sock,num-queues=1,num-queues=2"]), &["duplicate key `num-queues`"]);
    has(&err(&["--vhost-user", ",num-queues=2"]), &["`vhost-user`", "empty path"]);
    has(&err(&["--vhost-user", "/a.sock,poll-us=1001"]), &["`poll-us`", "`1001`", "0..=1000"]);
    has(&err(&["--vhost-user", "/a.sock,poll-us=-1"]), &["`poll-us`", "`-1`"]);
    has(&err(&["--vhost-user", "/a.sock,poll-us=1,poll-us=2"]), &["duplicate key `poll-us`"]);
    has(&err(&["--vhost-user", "/a.sock", "--vhost-user", "/a.sock"]), &["`vhost-user`", "twice"]);
    has(
        &err(&["--lun", "backend=mem,size=1G,controller=/nope.sock"]),
        &["`controller`", "`/nope.sock`", "no such vhost-user controller"],
    );
    has(&err(&["--control", "/a.sock", "--vhost-user", "/a.sock"]), &["`vhost-user`", "control socket"]);
}

#[test]
fn one_writable_file_per_lun() {
    has(
        &err(&["--lun", "path=/srv/a.img", "--lun", "path=/srv/a.img,readonly=on"]),
        &["LUN 1", "`path`", "already used by target 0", "LUN 0"],
    );
    ok(&["--lun", "path=/srv/a.img,readonly=on", "--lun", "path=/srv/a.img,readonly=on"]);
}

const FILE: &str = r#"
iothreads = 2
listen = ["127.0.0.1:3260", "[::1]:3260"]
control = "/tmp/lunard.sock"
metrics = "127.0.0.1:9100"
log = "debug"
discovery-chap = { user = "disco", secret = "discoverysecret" }

[limits]
sessions-per-target = 8
cmd-window = "32"
buffered-bytes = "4M"

[[vhost-user]]
socket = "vm0.sock"
num-queues = 2
poll-us = 50
max-inflight = 64

[[target]]
name = "iqn.2026-11.dev.lunar:disk0"
allow-initiators = ["iqn.1994-05.com.redhat:client"]
chap = { user = "u", secret = "secretsecret12" }
mutual-chap = { user = "t", secret = "othersecret12" }

[[target.lun]]
backend = "file"
path = "/var/lib/lunar/disk0.img"
thin = true
werror = "enospc"

[[target.lun]]
spec = "backend=mem,size=64M"     # a LUN may also be given as a SPEC string

[[target]]
name = "iqn.2026-11.dev.lunar:disk1"

[[target.lun]]
backend = "null"
size = 1099511627776
block-size = 4096
readonly = false
rerror = "stop"
serial = "NULL0"
vendor = "ACME"
product = "Null"
controller = "vm0.sock"
iothread = 1
"#;

#[test]
fn a_good_file() {
    let f = toml_file(FILE);
    let dir = f.path().parent().unwrap();
    let c = ok(&["--config", f.path().to_str().unwrap()]);
    assert_eq!(c.iothreads, 2);
    assert_eq!(c.portals, vec![addr("127.0.0.1:3260"), addr("[::1]:3260")]);
    assert_eq!(c.control, PathBuf::from("/tmp/lunard.sock"));
    assert_eq!(c.metrics, Some(addr("127.0.0.1:9100")));
    assert_eq!(c.log, "debug");
    assert_eq!(c.discovery_chap.as_ref().map(|c| c.user.as_str()), Some("disco"));
    // Relative paths are relative to the file's directory.
    assert_eq!(
        c.vhost_user,
        vec![VhostUserConfig {
            socket: dir.join("vm0.sock"),
            num_queues: Some(2),
            poll_us: Some(50),
            limits: lunar_vhost::VhostLimits { max_inflight_per_queue: 64, ..Default::default() },
        }]
    );
    assert_eq!((c.limits.max_sessions_per_target, c.limits.cmd_window, c.limits.max_buffered_bytes), (8, 32, 4 << 20));
    assert_eq!(c.targets.len(), 2);
    let t0 = &c.targets[0];
    assert_eq!(t0.allow_initiators, ["iqn.1994-05.com.redhat:client"]);
    assert_eq!(t0.chap, Some(Chap { user: "u".into(), secret: "secretsecret12".into() }));
    assert_eq!(t0.mutual_chap.as_ref().map(|c| c.user.as_str()), Some("t"));
    assert_eq!(
        t0.luns[0].backend,
        BackendSpec::File { path: "/var/lib/lunar/disk0.img".into(), size: None, direct: false }
    );
    assert!(t0.luns[0].thin);
    assert_eq!(t0.luns[0].werror, Policy::Enospc);
    assert_eq!(t0.luns[1].backend, BackendSpec::Mem { size: 64 << 20 });
    let l = &c.targets[1].luns[0];
    assert_eq!(l.backend, BackendSpec::Null { size: 1 << 40 });
    assert_eq!((l.block_size, l.rerror, l.iothread), (4096, Policy::Stop, Some(1)));
    assert_eq!((l.serial.as_deref(), l.vendor.as_str(), l.product.as_str()), (Some("NULL0"), "ACME", "Null"));
    assert_eq!(l.controller, Some(dir.join("vm0.sock")));
    // The same through from_toml_str.
    let same = Config::from_toml_str_in(FILE, f.path(), &env()).unwrap();
    assert_eq!(same, Config { write_back: same.write_back.clone(), ..c.clone() });
    // Changes are written back into the file it came from, not into a text.
    assert_eq!(c.write_back, WriteBack::File(f.path().to_path_buf()));
    assert!(matches!(same.write_back, WriteBack::Off(_)));
}

#[test]
fn an_empty_file_gives_the_defaults() {
    let f = toml_file("# nothing\n");
    let c = ok(&["--config", f.path().to_str().unwrap()]);
    assert_eq!(
        Config { write_back: WriteBack::Off(String::new()), ..c.clone() },
        Config { write_back: WriteBack::Off(String::new()), ..ok(&[]) }
    );
    // The default target is not in the file: nothing to write changes into.
    assert!(matches!(&c.write_back, WriteBack::Off(why) if why.contains("defines no [[target]]")), "{c:?}");
    let f = toml_file("iothreads = 3\n");
    let c = ok(&["--config", f.path().to_str().unwrap()]);
    assert_eq!(c.iothreads, 3);
    assert_eq!(c.targets[0].name, DEFAULT_TARGET);
}

#[test]
fn command_line_overrides_the_file() {
    let f = toml_file(FILE);
    let path = f.path().to_str().unwrap();
    let c = ok(&[
        "--config",
        path,
        "--iothreads",
        "6",
        "--listen",
        "0.0.0.0:3261",
        "--control",
        "/tmp/other.sock",
        "--metrics",
        "127.0.0.1:9200",
        "--log",
        "warn",
        "--discovery-chap-user",
        "d2",
        "--discovery-chap-secret",
        "discovery secret 2",
        "--vhost-user",
        "/tmp/vm9.sock",
    ]);
    assert_eq!(c.iothreads, 6);
    assert_eq!(c.portals, vec![addr("0.0.0.0:3261")], "--listen replaces the file's portals");
    assert_eq!(c.control, PathBuf::from("/tmp/other.sock"));
    assert_eq!(c.metrics, Some(addr("127.0.0.1:9200")));
    assert_eq!(c.log, "warn");
    assert_eq!(c.discovery_chap.as_ref().map(|c| c.user.as_str()), Some("d2"));
    assert_eq!(c.vhost_user.len(), 2, "--vhost-user adds to the file's");
    assert_eq!(c.vhost_user[1].socket, PathBuf::from("/tmp/vm9.sock"));
    assert_eq!(c.targets.len(), 2, "targets untouched without target flags");

    // Target flags on a target of the file: LUNs appended, CHAP replaced,
    // initiators added.
    let c = ok(&[
        "--config",
        path,
        "--target",
        "iqn.2026-11.dev.lunar:disk1",
        "--lun",
        "backend=mem,size=1M",
        "--chap-user",
        "v",
        "--chap-secret",
        "new secret 12",
        "--allow-initiator",
        "iqn.1994-05.com.redhat:client",
    ]);
    let t = &c.targets[1];
    assert_eq!(t.luns.len(), 2);
    assert_eq!(t.luns[1].backend, BackendSpec::Mem { size: 1 << 20 }, "LUN 1 follows the file's LUN 0");
    assert_eq!(t.chap.as_ref().map(|c| c.user.as_str()), Some("v"));
    assert_eq!(t.allow_initiators, ["iqn.1994-05.com.redhat:client"]);
    assert_eq!(c.targets[0].chap.as_ref().map(|c| c.user.as_str()), Some("u"));

    // A new target is added after the file's, with the default LUN.
    let c = ok(&["--config", path, "--target", "iqn.2026-11.dev.lunar:disk2"]);
    assert_eq!(c.targets.len(), 3);
    assert_eq!(c.targets[2].luns[0].backend, BackendSpec::Mem { size: 1 << 30 });

    // Without --target, the file must have a single target.
    has(&err(&["--config", path, "--lun", "backend=mem,size=1M"]), &["`--target`", "defines 2 targets"]);
    let one = toml_file(
        "[[target]]\nname = \"iqn.2026-11.dev.lunar:only\"\n[[target.lun]]\nspec = \"backend=null,size=1G\"\n",
    );
    let c = ok(&["--config", one.path().to_str().unwrap(), "--lun", "backend=mem,size=1M"]);
    assert_eq!(c.targets.len(), 1);
    assert_eq!(c.targets[0].name, "iqn.2026-11.dev.lunar:only");
    assert_eq!(c.targets[0].luns.len(), 2);

    // Cross-field rules see the merged result: the file's LUN on I/O
    // thread 1 does not fit one I/O thread.
    has(&err(&["--config", path, "--iothreads", "1"]), &["target 1", "LUN 0", "`iothread`", "`1`"]);
}

fn file_err(text: &str) -> String {
    let f = toml_file(text);
    let name = f.path().display().to_string();
    let m = match cli(&["--config", &name]) {
        Ok(c) => panic!("accepted: {c:?}"),
        Err(e) => e.to_string(),
    };
    has(&m, &[&name]);
    m
}

const T: &str = "[[target]]\nname = \"iqn.2026-11.dev.lunar:t\"\n";

#[test]
fn file_errors_name_file_target_lun_and_key() {
    // Unknown fields, at each level.
    has(&file_err("iothread = 2\n"), &["unknown field `iothread`", "iothreads"]);
    has(&file_err(&format!("{T}lun-count = 1\n")), &["unknown field `lun-count`"]);
    has(
        &file_err(&format!("{T}[[target.lun]]\nbackend = \"mem\"\nsize = \"1G\"\nsise = 1\n")),
        &["unknown field `sise`", "size"],
    );
    has(&file_err(&format!("{T}chap = {{ user = \"u\", password = \"p\" }}\n")), &["unknown field `password`"]);
    // Bad types: the message shows the line with the key.
    has(&file_err("iothreads = \"two\"\n"), &["iothreads", "invalid type"]);
    has(
        &file_err(&format!("{T}[[target.lun]]\nbackend = \"mem\"\nsize = \"1G\"\nthin = \"yes\"\n")),
        &["target 0, LUN 0: ", "thin", "invalid type", "boolean"],
    );
    let m = file_err(&format!(
        "{T}[[target.lun]]\nspec = \"backend=null,size=1G\"\n{}[[target.lun]]\nspec = \"backend=null,size=1G\"\n[[target.lun]]\nreadonly = 1\n",
        T.replace(":t", ":u")
    ));
    has(&m, &["target 1, LUN 1: ", "readonly", "invalid type"]);
    has(&file_err(&format!("{T}chap = 5\n")), &["target 0: ", "chap", "invalid type"]);
    let m = file_err(&format!("{T}[[target.lun]]\nspec = \"backend=null,size=1G\"\n[[vhost-user]]\nsocket = 1\n"));
    has(&m, &["socket", "invalid type"]);
    assert!(!m.contains("target 0"), "{m}");
    has(&file_err(&format!("{T}[[target.lun]]\nbackend = \"mem\"\nsize = true\n")), &["size", "a size in bytes"]);
    has(&file_err(&format!("{T}[[target.lun]]\nbackend = \"mem\"\nsize = -1\n")), &["size", "a size in bytes"]);
    has(&file_err("listen = \"127.0.0.1:3260\"\n"), &["listen", "invalid type"]);
    // Syntax.
    has(&file_err("iothreads = \n"), &["TOML parse error", "line 1"]);
    // Bad values, with the place.
    has(&file_err("iothreads = 0\n"), &["`iothreads`", "`0`", "1..=64"]);
    has(&file_err("listen = [\"nowhere\"]\n"), &["`listen`", "`nowhere`"]);
    has(&file_err("metrics = \"x\"\n"), &["`metrics`", "`x`"]);
    has(&file_err("log = \"info,a=loud\"\n"), &["`log`"]);
    has(&file_err("[[vhost-user]]\nsocket = \"/a\"\nnum-queues = 5000\n"), &["vhost-user 0", "`num-queues`", "`5000`"]);
    has(&file_err("[[target]]\nname = \"disk0\"\n"), &["target 0 (`disk0`)", "`name`", "`disk0`"]);
    // A target without LUNs is served (it exposes none until `lunarctl lun add`).
    assert!(cli(&["--config", toml_file(T).path().to_str().unwrap()]).unwrap().targets[0].luns.is_empty());
    has(
        &file_err(&format!("{T}[[target.lun]]\nlun = 3\nspec = \"backend=null,size=1G\"\n[[target.lun]]\nlun = 3\nbackend = \"mem\"\nsize = 512\n")),
        &["target 0", "`lun`", "`3`", "used twice"],
    );
    has(
        &file_err(&format!("{T}[[target.lun]]\nlun = 16384\nbackend = \"mem\"\nsize = 512\n")),
        &["target 0", "`lun`", "`16384`", "0 to 16383"],
    );
    has(
        &file_err(&format!("{T}allow-initiators = [\"client\"]\n[[target.lun]]\nspec = \"backend=null,size=1G\"\n")),
        &["target 0", "`allow-initiators`", "`client`"],
    );
    has(
        &file_err(&format!(
            "{T}chap = {{ user = \"u\", secret = \"short\" }}\n[[target.lun]]\nspec = \"backend=null,size=1G\"\n"
        )),
        &["target 0", "`chap.secret`", "too short"],
    );
    let two_luns = format!("{T}[[target.lun]]\nspec = \"backend=null,size=1G\"\n[[target.lun]]\n");
    has(
        &file_err(&format!("{two_luns}spec = \"backend=mem,size=1G,werror=retry\"\n")),
        &["target 0 (`iqn.2026-11.dev.lunar:t`)", "LUN 1", "`werror`", "`retry`", "report, ignore, stop, enospc"],
    );
    has(
        &file_err(&format!("{two_luns}spec = \"backend=mem,size=1G,colour=red\"\n")),
        &["LUN 1", "unknown key `colour`"],
    );
    has(&file_err(&format!("{two_luns}spec = \"backend=mem,size=1G,size=2G\"\n")), &["LUN 1", "duplicate key `size`"]);
    has(&file_err(&format!("{two_luns}spec = \"\"\n")), &["LUN 1", "`spec`", "empty"]);
    has(
        &file_err(&format!("{two_luns}spec = \"backend=mem,size=1G\"\nthin = false\n")),
        &["LUN 1", "`spec`", "cannot be combined", "`thin`"],
    );
    has(&file_err(&format!("{two_luns}backend = \"mem\"\nsize = \"1.5G\"\n")), &["LUN 1", "`size`", "`1.5G`"]);
    has(&file_err(&format!("{two_luns}backend = \"mem\"\nsize = 1000\n")), &["LUN 1", "`size`", "multiple"]);
    has(
        &file_err(&format!("{two_luns}backend = \"mem\"\nsize = \"1G\"\nblock-size = 1024\n")),
        &["LUN 1", "`block-size`", "`1024`"],
    );
    has(
        &file_err(&format!("{two_luns}backend = \"mem\"\nsize = \"1G\"\niothread = 99\n")),
        &["LUN 1", "`iothread`", "`99`"],
    );
    has(&file_err(&format!("{two_luns}backend = \"tape\"\n")), &["LUN 1", "`backend`", "`tape`"]);
    has(&file_err(&format!("{two_luns}size = \"1G\"\n")), &["LUN 1", "`backend`", "missing"]);
    // Two targets with one name.
    let dup = format!("{T}[[target.lun]]\nspec = \"backend=null,size=1G\"\n");
    has(&file_err(&format!("{dup}{dup}")), &["target 1", "defined twice"]);
}

#[test]
fn missing_file() {
    let m = err(&["--config", "/nonexistent/lunard.toml"]);
    has(&m, &["cannot read config file /nonexistent/lunard.toml"]);
}

#[test]
fn from_toml_str_names_its_origin() {
    let e = Config::from_toml_str_in("iothreads = 0", Path::new("inline.toml"), &env()).unwrap_err();
    has(&e.to_string(), &["config file inline.toml", "`iothreads`"]);
    assert!(matches!(e.root(), ConfigError::InvalidValue { key, .. } if key == "iothreads"));
}

#[test]
fn validate_catches_hand_made_configs() {
    let mut c = ok(&[]);
    c.iothreads = 0;
    has(&c.validate().unwrap_err().to_string(), &["`iothreads`"]);
    let mut c = ok(&[]);
    c.targets.push(c.targets[0].clone());
    has(&c.validate().unwrap_err().to_string(), &["target 1", "defined twice"]);
    let mut c = ok(&[]);
    c.targets[0].luns.clear();
    c.validate().unwrap();
    c.targets[0].luns = vec![LunConfig::parse_spec("backend=mem,size=1M").unwrap(); 2];
    c.targets[0].luns[1].number = Some(0);
    has(&c.validate().unwrap_err().to_string(), &["`lun`", "used twice"]);
    let mut c = ok(&[]);
    c.targets.clear();
    has(&c.validate().unwrap_err().to_string(), &["no target"]);
    let mut c = ok(&[]);
    c.portals.clear();
    has(&c.validate().unwrap_err().to_string(), &["no portal"]);
}

#[test]
fn the_default_lun_spec_is_valid() {
    assert_eq!(LunConfig::parse_spec(DEFAULT_LUN_SPEC).unwrap().backend, BackendSpec::Mem { size: 1 << 30 });
    assert_eq!(check_iscsi_name(DEFAULT_TARGET), Ok(()));
}

const FLAGS: &[&str] = &[
    "--listen",
    "--iothreads",
    "--target",
    "--lun",
    "--control",
    "--metrics",
    "--chap-user",
    "--chap-secret",
    "--allow-initiator",
    "--vhost-user",
    "--log",
];

proptest::proptest! {
    /// Any command line gives a valid `Config` or an error, never a panic.
    #[test]
    fn from_args_never_panics(
        args in proptest::collection::vec((proptest::sample::select(FLAGS), "\\PC{0,24}"), 0..6)
    ) {
        let argv: Vec<String> = args.iter().flat_map(|(f, v)| [f.to_string(), v.clone()]).collect();
        if let Ok(c) = cli(&argv.iter().map(String::as_str).collect::<Vec<_>>()) {
            proptest::prop_assert!(c.validate().is_ok());
        }
    }

    /// Any TOML text gives a valid `Config` or an error, never a panic.
    #[test]
    fn from_toml_never_panics(text in "(\\[\\[target(\\.lun)?\\]\\]\n|[a-z-]{1,10} = (\"[ -~]{0,12}\"|[0-9]{1,4}|true)\n){0,8}") {
        if let Ok(c) = Config::from_toml_str_in(&text, Path::new("p.toml"), &env()) {
            proptest::prop_assert!(c.validate().is_ok());
        }
    }
}

/// The iSCSI poll window: `--limit poll-us=N` or `[limits] poll-us = N`,
/// 0 allowed (never poll), written back only when not the default, and
/// read back the same.
#[test]
fn the_iscsi_poll_window_is_set_checked_and_written_back() {
    let c = ok(&["--limit", "poll-us=0"]);
    assert_eq!(c.limits.poll, std::time::Duration::ZERO);
    let text = persist::to_toml(&c, true).unwrap();
    assert!(text.contains("poll-us = 0"), "{text}");
    let written = toml_file(&text);
    let again = ok(&["--config", written.path().to_str().unwrap()]);
    assert_eq!(again.limits.poll, std::time::Duration::ZERO);
    let default = ok(&[]);
    assert_eq!(default.limits.poll, lunar_iscsi::server::DEFAULT_POLL);
    assert!(!persist::to_toml(&default, true).unwrap().contains("poll-us"));
    has(&err(&["--limit", "poll-us=5000"]), &["`poll-us`", "0..=1000"]);
    has(
        &file_err(&format!("{T}[[target.lun]]\nspec = \"backend=null,size=1G\"\n[limits]\npoll-us = -1\n")),
        &["poll-us"],
    );
}

#[test]
fn limit_flags_override_the_file_and_are_checked() {
    let c = ok(&["--limit", "cmd-window=7", "--limit", "negotiation-timeout=3"]);
    assert_eq!((c.limits.cmd_window, c.limits.negotiation_timeout.as_secs()), (7, 3));
    assert_eq!(
        c.limits.max_sessions_per_target,
        lunar_iscsi::server::ResourceLimits::default().max_sessions_per_target
    );
    has(&err(&["--limit", "cmd-window=0"]), &["--limit `cmd-window=0`", "1..=65536"]);
    has(&err(&["--limit", "windows=3"]), &["unknown key `windows`", "cmd-window"]);
    has(
        &file_err(&format!("{T}[[target.lun]]\nspec = \"backend=null,size=1G\"\n[limits]\ncmd-window = true\n")),
        &["[limits]", "cmd-window"],
    );
}

#[test]
fn target_alias_from_the_file_and_the_command_line() {
    // None by default.
    assert_eq!(ok(&[]).targets[0].alias, None);
    let f = toml_file(
        r#"
[[target]]
name = "iqn.2026-11.dev.lunar:a"
alias = "disks of the lab"
lun = [{ spec = "backend=mem,size=1M" }]

[[target]]
name = "iqn.2026-11.dev.lunar:b"
lun = [{ spec = "backend=mem,size=1M" }]
"#,
    );
    let path = f.path().to_str().unwrap();
    let c = ok(&["--config", path]);
    assert_eq!(c.targets[0].alias.as_deref(), Some("disks of the lab"));
    assert_eq!(c.targets[1].alias, None);
    // --target-alias sets the alias of the target named by --target.
    let c = ok(&["--config", path, "--target", "iqn.2026-11.dev.lunar:b", "--target-alias", "Bé 2"]);
    assert_eq!(c.targets[1].alias.as_deref(), Some("Bé 2"));
    assert_eq!(ok(&["--target-alias", "lab"]).targets[0].alias.as_deref(), Some("lab"));
    // Written back by config show / save.
    let text = persist::to_toml(&c, true).unwrap();
    assert!(text.contains("alias = \"disks of the lab\""), "{text}");
    assert!(text.contains("alias = \"Bé 2\""), "{text}");
    // Refused: empty, too long, control characters.
    has(&err(&["--target-alias", ""]), &["`--target-alias`", "1..=255 bytes"]);
    has(&err(&["--target-alias", &"x".repeat(256)]), &["`--target-alias`", "1..=255 bytes"]);
    has(&err(&["--target-alias", "a\nb"]), &["`--target-alias`", "control characters"]);
    let bad = toml_file("[[target]]\nname = \"iqn.2026-11.dev.lunar:a\"\nalias = \"\"\n");
    has(&err(&["--config", bad.path().to_str().unwrap()]), &["`alias`", "1..=255 bytes"]);
}

#[test]
fn rbd_luns_in_toml() {
    const FILE: &str = r#"
[[target]]
name = "iqn.2026-12.dev.lunar:ceph"

[[target.lun]]
backend = "rbd"
pool = "rbd"
image = "disk0"
conf = "ceph/ceph.conf"
id = "lunar"
werror = "stop"

[[target.lun]]
spec = "backend=rbd,pool=p,namespace=ns,image=disk1,keyring=/etc/ceph/k"

[[target.lun]]
backend = "rbd"
pool = "rbd"
image = "disk2"
exclusive = true
pr = "cluster"

[[target.lun]]
backend = "rbd"
pool = "rbd"
image = "disk3"
pr = "cluster"
alua = "all-active"
"#;
    let origin = Path::new("/etc/lunar/lunard.toml");
    let c = Config::from_toml_str_in(FILE, origin, &env()).unwrap();
    let t = &c.targets[0];
    let BackendSpec::Rbd(r) = &t.luns[0].backend else { panic!("{:?}", t.luns[0].backend) };
    assert_eq!((r.pool.as_str(), r.image.as_str(), r.id.as_deref()), ("rbd", "disk0", Some("lunar")));
    assert_eq!(r.conf.as_deref(), Some(Path::new("/etc/lunar/ceph/ceph.conf")), "relative to the file");
    assert_eq!(t.luns[0].werror, Policy::Stop);
    let BackendSpec::Rbd(r) = &t.luns[1].backend else { panic!() };
    assert_eq!((r.namespace.as_deref(), r.keyring.as_deref()), (Some("ns"), Some(Path::new("/etc/ceph/k"))));
    let BackendSpec::Rbd(r) = &t.luns[2].backend else { panic!() };
    assert!(r.exclusive && r.pr_cluster && !r.all_active, "{r:?}");
    let BackendSpec::Rbd(r) = &t.luns[3].backend else { panic!() };
    assert!(!r.exclusive && r.pr_cluster && r.all_active, "{r:?}");
    // Written back (lunarctl lun add) in the form the file is read in.
    for l in &t.luns {
        let table = persist::lun_table(None, l).unwrap();
        let text = format!("[[target]]\nname = \"iqn.2026-12.dev.lunar:x\"\n[[target.lun]]\n{table}");
        let back = Config::from_toml_str_in(&text, origin, &env()).unwrap();
        assert_eq!(back.targets[0].luns[0].backend, l.backend, "{text}");
    }
    let bad = "[[target]]\nname = \"iqn.2026-12.dev.lunar:x\"\n[[target.lun]]\nbackend = \"rbd\"\npool = \"rbd\"\n";
    let e = Config::from_toml_str_in(bad, origin, &env()).unwrap_err().to_string();
    assert!(e.contains("image") && e.contains("missing"), "{e}");
}

const GATEWAYS: &str = r#"listen = ["127.0.0.2:3260"]
local-gateway = "gw2"

[[gateway]]
name = "gw1"
portal = "127.0.0.1:3260"

[[gateway]]
name = "gw2"
portal = "127.0.0.2:3260"

[[target]]
name = "iqn.2026-11.dev.lunar:t"

[[target.lun]]
backend = "mem"
size = "1M"
"#;

#[test]
fn gateways_in_the_file_and_on_the_command_line() {
    let f = toml_file(GATEWAYS);
    let path = f.path().to_str().unwrap();
    let c = ok(&["--config", path]);
    assert_eq!(c.gateways.len(), 2);
    assert_eq!(c.gateways[1], GatewayConfig { name: "gw2".into(), portal: addr("127.0.0.2:3260"), preferred: false });
    assert_eq!(c.local_gateway().map(|(i, g)| (i, g.name.as_str())), Some((1, "gw2")));
    assert_eq!(c.portal_group_tag(), 2);
    assert_eq!(c.peer_portals(), vec![(addr("127.0.0.1:3260"), 1)]);
    let alua = c.alua().unwrap();
    assert_eq!(alua.local_group(), 2);
    let states: Vec<_> = alua.groups().iter().map(|g| (g.id, g.relative_ports.clone(), g.state)).collect();
    assert_eq!(
        states,
        vec![(1, vec![1], lunar_scsi::AccessState::ActiveOptimized), (2, vec![2], lunar_scsi::AccessState::Standby)]
    );
    let pref = toml_file(&GATEWAYS.replace("name = \"gw1\"", "name = \"gw1\"\npreferred = true"));
    let c = ok(&["--config", pref.path().to_str().unwrap()]);
    let prefs: Vec<bool> = c.alua().unwrap().groups().iter().map(|g| g.preferred).collect();
    assert_eq!(prefs, [true, false]);
    // --gateway overrides the file's local-gateway (its portal must be listened on).
    let c = ok(&["--config", path, "--gateway", "gw1", "--listen", "127.0.0.1:3260"]);
    assert_eq!((c.portal_group_tag(), c.peer_portals()), (1, vec![(addr("127.0.0.2:3260"), 2)]));
    // A wildcard listen address covers the gateway's portal.
    ok(&["--config", path, "--gateway", "gw1", "--listen", "0.0.0.0:3260"]);
    // Errors name the key and the value.
    has(&err(&["--config", path, "--gateway", "gw3"]), &["`--gateway`", "`gw3`", "no such gateway", "gw1, gw2"]);
    has(
        &err(&["--config", path, "--gateway", "gw1"]),
        &["`--gateway`", "127.0.0.1:3260", "not among the addresses lunard listens on", "127.0.0.2:3260"],
    );
    has(&err(&["--gateway", "gw1"]), &["`--gateway`", "no [[gateway]] is configured"]);
    // Without gateways nothing changes.
    let plain = ok(&[]);
    assert!(plain.gateways.is_empty() && plain.alua().is_none() && plain.peer_portals().is_empty());
    assert_eq!(plain.portal_group_tag(), 1);
}

#[test]
fn gateway_errors_in_the_file() {
    // Against the rest of the configuration (the command line may change it).
    let whole_err = |text: &str| {
        let f = toml_file(text);
        err(&["--config", f.path().to_str().unwrap()])
    };
    let without_local = GATEWAYS.replace("local-gateway = \"gw2\"\n", "");
    has(&whole_err(&without_local), &["`local-gateway`", "say which one this process is", "gw1, gw2"]);
    let unknown = GATEWAYS.replace("local-gateway = \"gw2\"", "local-gateway = \"gw9\"");
    has(&whole_err(&unknown), &["`local-gateway`", "`gw9`", "no such gateway"]);
    let not_listened = GATEWAYS.replace("listen = [\"127.0.0.2:3260\"]", "listen = [\"127.0.0.2:3261\"]");
    has(&whole_err(&not_listened), &["`local-gateway`", "127.0.0.2:3260", "not among the addresses"]);
    let local_without_gateways = format!("local-gateway = \"gw1\"\n{T}");
    has(&whole_err(&local_without_gateways), &["`local-gateway`", "no [[gateway]] is configured"]);
    // Each gateway, where the file is read: the message names the file.
    let same_name = GATEWAYS.replace("name = \"gw2\"", "name = \"gw1\"");
    has(&file_err(&same_name), &["gateway 1 (`gw1`)", "`name`", "also the name of gateway 0"]);
    let same_portal = GATEWAYS.replace("portal = \"127.0.0.1:3260\"", "portal = \"127.0.0.2:3260\"");
    has(&file_err(&same_portal), &["gateway 1 (`gw2`)", "`portal`", "127.0.0.2:3260", "also the portal of gateway 0"]);
    let wildcard = GATEWAYS.replace("portal = \"127.0.0.1:3260\"", "portal = \"0.0.0.0:3260\"");
    has(&file_err(&wildcard), &["gateway 0", "`portal`", "a specific address and port"]);
    let bad_portal = GATEWAYS.replace("portal = \"127.0.0.1:3260\"", "portal = \"nowhere\"");
    has(&file_err(&bad_portal), &["gateway 0", "`portal`", "`nowhere`"]);
    let bad_name = GATEWAYS.replace("name = \"gw1\"", "name = \"g w\"");
    has(&file_err(&bad_name), &["`name`", "`g w`", "only letters"]);
    let stray_key = GATEWAYS.replace("name = \"gw1\"", "name = \"gw1\"\nstate = \"standby\"");
    has(&file_err(&stray_key), &["state"]);
}

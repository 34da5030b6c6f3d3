//! Two `lunard` processes configured as the two gateways of one target
//! (issue 16: `[[gateway]]`, `local-gateway`): each is its own target port
//! group; SendTargets on either lists both portals with their tags; the
//! second starts Standby (it refuses READ with NOT READY, TARGET PORT IN
//! STANDBY STATE) until `lunarctl alua set` makes it Active/Optimized, which
//! its initiators hear of as ASYMMETRIC ACCESS STATE CHANGED and lunarctl's
//! events as `alua.changed`. Without `[[gateway]]`, `alua show` says ALUA
//! is off. (No cluster here: each process decides alone.)

use std::time::Duration;

use lunar_initiator::{sense_key, Command, Config, Session};

mod common;
use common::{free_port, Daemon, Events};

const IQN: &str = "iqn.2026-11.dev.lunar:gw";

fn config(dir: &std::path::Path, me: &str, ports: [u16; 2]) -> std::path::PathBuf {
    common::two_gateway_config(dir, me, ports, IQN, "backend = \"mem\"\nsize = \"1M\"")
}

fn read10(lba: u32) -> Command {
    let mut c = vec![0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    Command::reading(0, c, 512)
}

#[test]
fn two_gateways_of_one_target() {
    let dir = tempfile::tempdir().unwrap();
    let ports = [free_port(), free_port()];
    let f1 = config(dir.path(), "gw1", ports);
    let f2 = config(dir.path(), "gw2", ports);
    let gw1 = Daemon::start_on_file_portal(&["--config", f1.to_str().unwrap()], ports[0]);
    let gw2 = Daemon::start_on_file_portal(&["--config", f2.to_str().unwrap()], ports[1]);

    // SendTargets on either gateway: both portals, each with its group's tag.
    let want = |first: usize| {
        let mut v = vec![format!("127.0.0.1:{},{}", ports[first], first + 1)];
        v.push(format!("127.0.0.1:{},{}", ports[1 - first], 2 - first));
        v
    };
    for (i, d) in [&gw1, &gw2].into_iter().enumerate() {
        let found = lunar_initiator::discover(d.addr(), &Config::new("")).expect("discovery");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].addresses, want(i), "SendTargets on gw{}", i + 1);
    }

    // `alua show`: gateway 2 is group 2, Standby; gateway 1 Active/Optimized.
    let v = gw2.ctl_json(&["alua", "show"]);
    assert_eq!(v["gateway"]["name"], "gw2");
    let lun = &v["luns"][0];
    assert_eq!((lun["lun"].as_u64(), lun["local_group"].as_u64()), (Some(0), Some(2)), "{v}");
    assert_eq!(lun["local_state"], "standby");
    assert_eq!(lun["groups"][0]["gateway"], "gw1");
    assert_eq!(lun["groups"][0]["state"], "active-optimized");
    assert_eq!(lun["groups"][1]["state"], "standby");
    let status = gw2.ctl_json(&["status"]);
    assert_eq!(status["targets"][0]["luns"][0]["alua"], serde_json::json!({ "group": 2, "state": "standby" }));
    assert!(gw1.ctl_json(&["status"])["targets"][0]["luns"][0]["alua"]["state"] == "active-optimized");
    let text = gw2.ctl_ok(&["alua", "show"]);
    assert!(text.contains("this gateway: gw2 (target port group 2"), "{text}");

    // Through gateway 2: its own TPGT, NOT READY for READ, INQUIRY fine.
    let cfg = Config { timeout: Duration::from_secs(30), ..Config::new(IQN) };
    let s2 = Session::login(gw2.addr(), &cfg).expect("login to gw2");
    assert_eq!(s2.params().target_portal_group_tag, Some(2));
    let r = s2.execute(read10(0)).unwrap();
    assert!(r.sense.as_ref().is_some_and(|s| s.is(sense_key::NOT_READY, 0x04, 0x0B)), "{r:?}");
    assert_eq!(s2.execute(Command::inquiry(0, 96)).unwrap().data[5] & 0x30, 0x30, "TPGS");
    let s1 = Session::login(gw1.addr(), &cfg).expect("login to gw1");
    assert_eq!(s1.params().target_portal_group_tag, Some(1));
    assert!(s1.execute(read10(0)).unwrap().is_good(), "gw1 is Active/Optimized");

    // The operator moves gateway 2 to Active/Optimized (its view).
    let mut events = Events::subscribe(&gw2);
    let out = gw2.ctl_ok(&["alua", "set", "0", "gw2", "ao"]);
    assert!(out.contains("target port group 2 (gw2) active-optimized"), "{out}");
    let e = events.wait_for("alua.changed");
    assert_eq!((e["lun"].as_u64(), e["local_state"].as_str()), (Some(0), Some("active-optimized")), "{e}");
    assert_eq!(e["cause"], "implicit");
    let r = s2.execute(read10(0)).unwrap();
    assert!(r.sense.as_ref().is_some_and(|s| s.is(sense_key::UNIT_ATTENTION, 0x2A, 0x06)), "{r:?}");
    assert!(s2.execute(read10(0)).unwrap().is_good());
    let again = gw2.ctl_json(&["alua", "set", "0", "2", "active-optimized"]);
    assert_eq!(again["changed"], false);

    // Errors name what is wrong.
    for (args, want) in [
        (vec!["alua", "set", "0", "gw9", "standby"], "neither a target port group number nor a gateway"),
        (vec!["alua", "set", "0", "1", "sleepy"], "is not one of"),
        (vec!["alua", "set", "0", "1", "offline"], "not supported"),
        (vec!["alua", "set", "7", "1", "standby"], "no LUN 7"),
    ] {
        let o = gw2.ctl(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(want), "{args:?}: {err}");
    }

    // A LUN added at run time is served with the gateways' groups too.
    gw2.ctl_ok(&["lun", "add", "backend=mem,size=1M"]);
    let v = gw2.ctl_json(&["alua", "show"]);
    assert_eq!(v["luns"][1]["lun"].as_u64(), Some(1), "{v}");
    assert_eq!(
        (v["luns"][1]["local_group"].as_u64(), v["luns"][1]["local_state"].as_str()),
        (Some(2), Some("standby"))
    );

    // `config show` keeps the gateways.
    let shown = gw2.ctl_ok(&["config", "show"]);
    assert!(shown.contains("local-gateway = \"gw2\"") && shown.contains("[[gateway]]"), "{shown}");
    drop((s1, s2));
}

#[test]
fn without_gateways_alua_is_off() {
    let d = Daemon::start(&[]);
    let o = d.ctl(&["alua", "show"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("no gateways are configured"));
}

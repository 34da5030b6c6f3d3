//! Writing the configuration back.
//!
//! * Edits of the `--config` file for the changes made through the control
//!   socket ([`add_lun`], [`remove_lun`], [`set_lun_key`]): the file is
//!   parsed with `toml_edit`, only the tables of the LUN concerned change,
//!   and everything else (comments, blank lines, order, the user's way of
//!   writing a LUN: `spec = "..."` or keys) is kept.
//! * The running configuration as TOML ([`to_toml`]: `config.show`,
//!   `config.save`).
//! * [`write_atomic`]: a new file beside the old one, fsync, the previous
//!   version kept as `FILE.bak`, rename, fsync of the directory; a reader
//!   (or a crash) sees the old file or the new one, never a mix.
//!
//! LUN numbers: a `[[target.lun]]` table may say `lun = N`; one that does
//! not has the number after the previous table's (0 for the first). A
//! removal therefore first writes `lun = N` into the tables after the one
//! removed that relied on their place, so that no LUN changes number.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use toml_edit::{value, Array, ArrayOfTables, DocumentMut, Item, Table, Value};

use super::spec::{split_pairs, DEFAULT_PRODUCT, DEFAULT_VENDOR};
use super::{BackendSpec, Chap, Config, LunConfig, Policy, TargetConfig};

/// A value a change sets on a LUN.
#[derive(Debug, Clone, Copy)]
pub enum LunValue {
    /// A size in bytes (`size`).
    Size(u64),
    /// An error policy (`rerror`, `werror`).
    Policy(Policy),
    /// An I/O thread number (`iothread`).
    Thread(u64),
}

impl LunValue {
    /// As it is written in a SPEC.
    fn text(self) -> String {
        match self {
            LunValue::Size(n) => size_text(n),
            LunValue::Policy(p) => p.as_str().to_string(),
            LunValue::Thread(n) => n.to_string(),
        }
    }

    /// As it is written as a TOML key.
    fn toml(self) -> Value {
        match self {
            LunValue::Size(n) => size_value(n),
            LunValue::Policy(p) => Value::from(p.as_str()),
            LunValue::Thread(n) => Value::from(n as i64),
        }
    }
}

/// `2G` for 2 GiB, `1536M`, `4096` (bytes) when no suffix fits exactly.
pub fn size_text(n: u64) -> String {
    for (shift, suffix) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if n != 0 && n.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", n >> shift);
        }
    }
    n.to_string()
}

/// A size as a TOML value: `"2G"`, or an integer of bytes.
fn size_value(n: u64) -> Value {
    let t = size_text(n);
    if t.ends_with(|c: char| c.is_ascii_digit()) {
        match i64::try_from(n) {
            Ok(i) => Value::from(i),
            Err(_) => Value::from(t),
        }
    } else {
        Value::from(t)
    }
}

/// The `[[target]]` table named `name`.
fn target_table<'d>(doc: &'d mut DocumentMut, name: &str) -> Result<&'d mut Table, String> {
    let targets = match doc.get_mut("target") {
        Some(Item::ArrayOfTables(a)) => a,
        Some(_) => return Err("`target` is not written as [[target]] tables; cannot edit it".into()),
        None => return Err("the file has no [[target]] table".into()),
    };
    targets
        .iter_mut()
        .find(|t| t.get("name").and_then(Item::as_str) == Some(name))
        .ok_or_else(|| format!("the file has no [[target]] named `{name}`"))
}

/// The target's `[[target.lun]]` tables, created (empty) if it has none.
fn lun_tables<'t>(target: &'t mut Table, name: &str) -> Result<&'t mut ArrayOfTables, String> {
    let item = target.entry("lun").or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
    match item {
        Item::ArrayOfTables(a) => Ok(a),
        _ => Err(format!("the LUNs of target `{name}` are not written as [[target.lun]] tables; cannot edit them")),
    }
}

fn explicit_number(t: &Table) -> Option<u64> {
    t.get("lun").and_then(Item::as_integer).and_then(|n| u64::try_from(n).ok())
}

/// The number of each table, by the rule of the module docs.
fn numbers(luns: &ArrayOfTables) -> Vec<u64> {
    let mut next = 0u64;
    luns.iter()
        .map(|t| {
            let n = explicit_number(t).unwrap_or(next);
            next = n.saturating_add(1);
            n
        })
        .collect()
}

fn find_lun(luns: &ArrayOfTables, target: &str, lun: u64) -> Result<usize, String> {
    numbers(luns)
        .iter()
        .position(|&n| n == lun)
        .ok_or_else(|| format!("the file has no LUN {lun} in target `{target}` (was it edited by hand?)"))
}

fn path_text(p: &Path) -> Result<String, String> {
    p.to_str().map(str::to_string).ok_or_else(|| format!("the path {} is not UTF-8; TOML cannot hold it", p.display()))
}

/// The keys of a LUN table, defaults left out (`number`: the `lun` key).
pub fn lun_table(number: Option<u64>, l: &LunConfig) -> Result<Table, String> {
    let mut t = Table::new();
    if let Some(n) = number {
        t.insert("lun", value(n as i64));
    }
    t.insert("backend", value(l.backend.kind()));
    match &l.backend {
        BackendSpec::Mem { size } | BackendSpec::Null { size } => {
            t.insert("size", Item::Value(size_value(*size)));
        }
        BackendSpec::File { path, size, direct } => {
            t.insert("path", value(path_text(path)?));
            if let Some(size) = size {
                t.insert("size", Item::Value(size_value(*size)));
            }
            if *direct {
                t.insert("direct", value(true));
            }
        }
        BackendSpec::Rbd(r) => {
            t.insert("pool", value(r.pool.as_str()));
            t.insert("image", value(r.image.as_str()));
            for (k, v) in [("namespace", &r.namespace), ("id", &r.id)] {
                if let Some(v) = v {
                    t.insert(k, value(v.as_str()));
                }
            }
            for (k, p) in [("conf", &r.conf), ("keyring", &r.keyring)] {
                if let Some(p) = p {
                    t.insert(k, value(path_text(p)?));
                }
            }
            if r.exclusive {
                t.insert("exclusive", value(true));
            }
            if r.pr_cluster {
                t.insert("pr", value("cluster"));
            }
            if r.all_active {
                t.insert("alua", value("all-active"));
            }
        }
    }
    if l.block_size != 512 {
        t.insert("block-size", value(i64::from(l.block_size)));
    }
    if l.readonly {
        t.insert("readonly", value(true));
    }
    if l.removable {
        t.insert("removable", value(true));
    }
    if !l.thin {
        t.insert("thin", value(false));
    }
    if l.rerror != Policy::Report {
        t.insert("rerror", value(l.rerror.as_str()));
    }
    if l.werror != Policy::Enospc {
        t.insert("werror", value(l.werror.as_str()));
    }
    if let Some(s) = &l.serial {
        t.insert("serial", value(s.as_str()));
    }
    if l.vendor != DEFAULT_VENDOR {
        t.insert("vendor", value(l.vendor.as_str()));
    }
    if l.product != DEFAULT_PRODUCT {
        t.insert("product", value(l.product.as_str()));
    }
    if let Some(c) = &l.controller {
        t.insert("controller", value(path_text(c)?));
    }
    if let Some(n) = l.iothread {
        t.insert("iothread", value(n as i64));
    }
    if l.fault {
        t.insert("fault", value(true));
    }
    Ok(t)
}

/// Adds LUN `lun` of `target` (a new `[[target.lun]]` table with `lun =
/// N`, after the target's other LUNs). A relative `path` is written as it
/// is: give an absolute one.
pub fn add_lun(doc: &mut DocumentMut, target: &str, lun: u64, config: &LunConfig) -> Result<(), String> {
    let table = lun_table(Some(lun), config)?;
    let luns = lun_tables(target_table(doc, target)?, target)?;
    if numbers(luns).contains(&lun) {
        return Err(format!("the file already has a LUN {lun} in target `{target}`"));
    }
    luns.push(table);
    Ok(())
}

/// Removes LUN `lun` of `target`; the LUNs after it keep their numbers.
pub fn remove_lun(doc: &mut DocumentMut, target: &str, lun: u64) -> Result<(), String> {
    let luns = lun_tables(target_table(doc, target)?, target)?;
    let idx = find_lun(luns, target, lun)?;
    let nums = numbers(luns);
    for (i, t) in luns.iter_mut().enumerate().skip(idx + 1) {
        if explicit_number(t).is_none() {
            t.insert("lun", value(nums[i] as i64));
        }
    }
    luns.remove(idx);
    Ok(())
}

/// Sets `key` of LUN `lun` of `target`: in its `spec` string if it is
/// written as one, else as a key (the value's comment kept). With
/// `only_if_present`, a LUN that does not give the key is left as it is
/// (a `file` LUN without `size` has the size of its file).
pub fn set_lun_key(
    doc: &mut DocumentMut,
    target: &str,
    lun: u64,
    key: &str,
    new: LunValue,
    only_if_present: bool,
) -> Result<(), String> {
    let luns = lun_tables(target_table(doc, target)?, target)?;
    let idx = find_lun(luns, target, lun)?;
    let Some(t) = luns.get_mut(idx) else { return Err(format!("no LUN {lun}")) };
    if let Some(spec) = t.get("spec").and_then(Item::as_str).map(str::to_string) {
        let mut pairs = split_pairs(&spec).map_err(|e| format!("LUN {lun}: {e}"))?;
        match pairs.iter_mut().find(|(k, _)| k == key) {
            Some(pair) => pair.1 = new.text(),
            None if only_if_present => return Ok(()),
            None => pairs.push((key.to_string(), new.text())),
        }
        let text: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", v.replace(',', ",,"))).collect::<Vec<_>>();
        replace_value(t, "spec", Value::from(text.join(",")));
        return Ok(());
    }
    if only_if_present && !t.contains_key(key) {
        return Ok(());
    }
    replace_value(t, key, new.toml());
    Ok(())
}

/// `t[key] = v`, keeping the decoration (spaces, comment) of the old value.
fn replace_value(t: &mut Table, key: &str, mut v: Value) {
    match t.get_mut(key).and_then(Item::as_value_mut) {
        Some(old) => {
            *v.decor_mut() = old.decor().clone();
            *old = v;
        }
        None => {
            t.insert(key, Item::Value(v));
        }
    }
}

/// Adds target `name`, without LUN, ACL or CHAP (a new `[[target]]`
/// table after the others).
pub fn add_target(doc: &mut DocumentMut, name: &str) -> Result<(), String> {
    let item = doc.entry("target").or_insert_with(|| Item::ArrayOfTables(ArrayOfTables::new()));
    let Item::ArrayOfTables(targets) = item else {
        return Err("`target` is not written as [[target]] tables; cannot edit it".into());
    };
    if targets.iter().any(|t| t.get("name").and_then(Item::as_str) == Some(name)) {
        return Err(format!("the file already has a [[target]] named `{name}`"));
    }
    let mut t = Table::new();
    t.insert("name", value(name));
    targets.push(t);
    Ok(())
}

/// Removes target `name` with its LUNs (its `[[target]]` and
/// `[[target.lun]]` tables).
pub fn remove_target(doc: &mut DocumentMut, name: &str) -> Result<(), String> {
    target_table(doc, name)?;
    if let Some(Item::ArrayOfTables(targets)) = doc.get_mut("target") {
        targets.retain(|t| t.get("name").and_then(Item::as_str) != Some(name));
    }
    Ok(())
}

/// Sets the `allow-initiators` list of target `name` (removed when empty:
/// every initiator allowed).
pub fn set_acl(doc: &mut DocumentMut, name: &str, initiators: &[String]) -> Result<(), String> {
    let t = target_table(doc, name)?;
    if initiators.is_empty() {
        t.remove("allow-initiators");
        return Ok(());
    }
    let mut a = Array::new();
    for i in initiators {
        a.push(i.as_str());
    }
    replace_value(t, "allow-initiators", Value::Array(a));
    Ok(())
}

/// Sets (`Some`) or removes (`None`) the CHAP pair `key` (`chap` or
/// `mutual-chap`) of target `name`. A pair written as a `[target.chap]`
/// table keeps its table (and comments); otherwise it is written inline.
pub fn set_chap(doc: &mut DocumentMut, name: &str, key: &str, chap: Option<&Chap>) -> Result<(), String> {
    set_chap_in(target_table(doc, name)?, key, chap)
}

/// Sets (`Some`) or removes (`None`) the `discovery-chap` pair.
pub fn set_discovery_chap(doc: &mut DocumentMut, chap: Option<&Chap>) -> Result<(), String> {
    set_chap_in(doc.as_table_mut(), "discovery-chap", chap)
}

fn set_chap_in(t: &mut Table, key: &str, chap: Option<&Chap>) -> Result<(), String> {
    let Some(c) = chap else {
        t.remove(key);
        return Ok(());
    };
    if let Some(Item::Table(table)) = t.get_mut(key) {
        replace_value(table, "user", Value::from(c.user.as_str()));
        replace_value(table, "secret", Value::from(c.secret.as_str()));
        table.retain(|k, _| k == "user" || k == "secret");
        return Ok(());
    }
    let mut inline = toml_edit::InlineTable::new();
    inline.insert("user", Value::from(c.user.as_str()));
    inline.insert("secret", Value::from(c.secret.as_str()));
    replace_value(t, key, Value::InlineTable(inline));
    Ok(())
}

/// Sets the `listen` list (the portals).
pub fn set_listen(doc: &mut DocumentMut, portals: &[std::net::SocketAddr]) -> Result<(), String> {
    let mut a = Array::new();
    for p in portals {
        a.push(p.to_string());
    }
    // Before the first table, like any top-level key.
    replace_value(doc.as_table_mut(), "listen", Value::Array(a));
    Ok(())
}

/// Checks a text about to be written as the file `path`: lunard must be
/// able to start from it.
pub fn check_text(text: &str, path: &Path) -> Result<(), String> {
    super::toml::parse(text, path).map(|_| ()).map_err(|e| e.to_string())
}

fn chap_table(c: &Chap, redact: bool) -> Item {
    let mut t = Table::new();
    t.insert("user", value(c.user.as_str()));
    t.insert("secret", value(if redact { "<redacted>" } else { c.secret.as_str() }));
    Item::Table(t)
}

fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Item {
    let mut a = Array::new();
    for s in items {
        a.push(s);
    }
    value(a)
}

fn target_toml(t: &TargetConfig, redact: bool) -> Result<Table, String> {
    let mut tt = Table::new();
    tt.insert("name", value(t.name.as_str()));
    if let Some(a) = &t.alias {
        tt.insert("alias", value(a.as_str()));
    }
    if !t.allow_initiators.is_empty() {
        tt.insert("allow-initiators", strings(t.allow_initiators.iter().map(String::as_str)));
    }
    if let Some(c) = &t.chap {
        tt.insert("chap", chap_table(c, redact));
    }
    if let Some(c) = &t.mutual_chap {
        tt.insert("mutual-chap", chap_table(c, redact));
    }
    let mut luns = ArrayOfTables::new();
    for (n, l) in t.numbered() {
        luns.push(lun_table(Some(n), l)?);
    }
    tt.insert("lun", Item::ArrayOfTables(luns));
    Ok(tt)
}

/// `config` as a TOML file lunard can start from (with `redact`, CHAP
/// secrets are replaced by `<redacted>`, which lunard refuses). Defaults
/// are left out, except `iothreads`, `listen`, `control` and `log`.
pub fn to_toml(config: &Config, redact: bool) -> Result<String, String> {
    let mut doc = DocumentMut::new();
    doc.insert("iothreads", value(config.iothreads as i64));
    doc.insert(
        "listen",
        strings(config.portals.iter().map(|p| p.to_string()).collect::<Vec<_>>().iter().map(String::as_str)),
    );
    doc.insert("control", value(path_text(&config.control)?));
    if let Some(m) = config.metrics {
        doc.insert("metrics", value(m.to_string()));
    }
    doc.insert("log", value(config.log.as_str()));
    if let Some(c) = &config.discovery_chap {
        doc.insert("discovery-chap", chap_table(c, redact));
    }
    let (l, d) = (&config.limits, lunar_iscsi::server::ResourceLimits::default());
    let mut limits = Table::new();
    let counts = [
        ("sessions-per-target", l.max_sessions_per_target as u64, d.max_sessions_per_target as u64),
        ("connections-per-portal", l.max_connections_per_portal as u64, d.max_connections_per_portal as u64),
        ("connections-per-address", l.max_connections_per_address as u64, d.max_connections_per_address as u64),
        ("cmd-window", u64::from(l.cmd_window), u64::from(d.cmd_window)),
        ("negotiation-timeout", l.negotiation_timeout.as_secs(), d.negotiation_timeout.as_secs()),
        ("poll-us", l.poll.as_micros() as u64, d.poll.as_micros() as u64),
    ];
    for (k, v, default) in counts {
        if v != default {
            limits.insert(k, value(v as i64));
        }
    }
    for (k, v, default) in [
        ("unsolicited-bytes", l.max_unsolicited_bytes, d.max_unsolicited_bytes),
        ("buffered-bytes", l.max_buffered_bytes, d.max_buffered_bytes),
    ] {
        if v != default {
            limits.insert(k, Item::Value(size_value(v)));
        }
    }
    if !limits.is_empty() {
        doc.insert("limits", Item::Table(limits));
    }
    let mut vhost = ArrayOfTables::new();
    for v in &config.vhost_user {
        let mut t = Table::new();
        t.insert("socket", value(path_text(&v.socket)?));
        if let Some(n) = v.num_queues {
            t.insert("num-queues", value(i64::from(n)));
        }
        if let Some(n) = v.poll_us {
            t.insert("poll-us", value(i64::from(n)));
        }
        let d = lunar_vhost::VhostLimits::default();
        if v.limits.max_chain_descriptors != d.max_chain_descriptors {
            t.insert("max-chain", value(i64::from(v.limits.max_chain_descriptors)));
        }
        if v.limits.max_request_bytes != d.max_request_bytes {
            t.insert("max-request-bytes", Item::Value(size_value(v.limits.max_request_bytes)));
        }
        if v.limits.max_inflight_per_queue != d.max_inflight_per_queue {
            t.insert("max-inflight", value(i64::from(v.limits.max_inflight_per_queue)));
        }
        vhost.push(t);
    }
    if !vhost.is_empty() {
        doc.insert("vhost-user", Item::ArrayOfTables(vhost));
    }
    if let Some(name) = &config.local_gateway {
        doc.insert("local-gateway", value(name.as_str()));
    }
    let mut gateways = ArrayOfTables::new();
    for g in &config.gateways {
        let mut t = Table::new();
        t.insert("name", value(g.name.as_str()));
        t.insert("portal", value(g.portal.to_string()));
        if g.preferred {
            t.insert("preferred", value(true));
        }
        gateways.push(t);
    }
    if !gateways.is_empty() {
        doc.insert("gateway", Item::ArrayOfTables(gateways));
    }
    let mut targets = ArrayOfTables::new();
    for t in &config.targets {
        targets.push(target_toml(t, redact)?);
    }
    doc.insert("target", Item::ArrayOfTables(targets));
    Ok(doc.to_string())
}

/// Replaces the file at `path` with `text`, atomically: `.NAME.tmp` in
/// the same directory, written and fsynced, renamed over `path`, then the
/// directory fsynced. With `keep_bak` the previous file is first copied
/// to `NAME.bak` (also atomically). A symbolic link is followed (its
/// target is replaced). A file whose mode has no write bit is refused:
/// that is how an operator says "do not write my configuration" (root
/// would be let through by the kernel). A file that does not exist is
/// created with mode 0600. The error names the file and the reason; the
/// file is then as it was.
pub fn write_atomic(path: &Path, text: &str, keep_bak: bool) -> Result<(), String> {
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let old = match fs::metadata(&path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot write {}: {e}", path.display())),
    };
    let mode = old.as_ref().map_or(0o600, |m| m.permissions().mode() & 0o7777);
    if old.is_some() && mode & 0o222 == 0 {
        return Err(format!("cannot write {}: the file is read-only (mode {mode:04o})", path.display()));
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let bak = dir.join(format!("{name}.bak"));
    let bak_tmp = dir.join(format!(".{name}.bak.tmp"));
    let result = (|| -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        drop(f);
        if keep_bak && old.is_some() {
            fs::copy(&path, &bak_tmp)?;
            File::open(&bak_tmp)?.sync_all()?;
            fs::rename(&bak_tmp, &bak)?;
        }
        fs::rename(&tmp, &path)?;
        File::open(&dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        let _ = fs::remove_file(&bak_tmp);
        format!("cannot write {}: {e}", path.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = r#"# my lunar
iothreads = 2 # two

[[target]]
name = "iqn.2026-11.dev.lunar:a"

# the RAM disk
[[target.lun]]
backend = "mem"
size = "64M" # small

[[target.lun]]
spec = "backend=null,size=1G,werror=stop"

[[target.lun]]
backend = "mem"
size = 1048576

[[target]]
name = "iqn.2026-11.dev.lunar:b"

[[target.lun]]
backend = "mem"
size = "1M"
"#;

    fn doc() -> DocumentMut {
        FILE.parse().unwrap()
    }

    fn luns_of(text: &str, target: usize) -> Vec<(u64, LunConfig)> {
        let f = super::super::toml::parse(text, Path::new("/etc/lunar/x.toml")).unwrap();
        f.targets[target].numbered().into_iter().map(|(n, l)| (n, l.clone())).collect()
    }

    #[test]
    fn set_keeps_comments_and_the_spec_form() {
        let mut d = doc();
        set_lun_key(&mut d, "iqn.2026-11.dev.lunar:a", 0, "size", LunValue::Size(128 << 20), false).unwrap();
        set_lun_key(&mut d, "iqn.2026-11.dev.lunar:a", 1, "size", LunValue::Size(2 << 30), false).unwrap();
        set_lun_key(&mut d, "iqn.2026-11.dev.lunar:a", 1, "rerror", LunValue::Policy(Policy::Stop), false).unwrap();
        set_lun_key(&mut d, "iqn.2026-11.dev.lunar:a", 2, "werror", LunValue::Policy(Policy::Report), false).unwrap();
        let text = d.to_string();
        assert!(text.starts_with("# my lunar\niothreads = 2 # two\n"), "{text}");
        assert!(
            text.contains("# the RAM disk\n[[target.lun]]\nbackend = \"mem\"\nsize = \"128M\" # small\n"),
            "{text}"
        );
        assert!(text.contains("spec = \"backend=null,size=2G,werror=stop,rerror=stop\""), "{text}");
        let luns = luns_of(&text, 0);
        assert_eq!(luns[0].1.backend, BackendSpec::Mem { size: 128 << 20 });
        assert_eq!(luns[1].1.rerror, Policy::Stop);
        assert_eq!(luns[2].1.werror, Policy::Report);
        check_text(&text, Path::new("/x.toml")).unwrap();
    }

    #[test]
    fn remove_keeps_the_numbers_of_the_others() {
        let mut d = doc();
        remove_lun(&mut d, "iqn.2026-11.dev.lunar:a", 0).unwrap();
        let text = d.to_string();
        let nums: Vec<u64> = luns_of(&text, 0).iter().map(|l| l.0).collect();
        assert_eq!(nums, [1, 2]);
        assert!(!text.contains("the RAM disk"));
        remove_lun(&mut d, "iqn.2026-11.dev.lunar:a", 2).unwrap();
        remove_lun(&mut d, "iqn.2026-11.dev.lunar:a", 1).unwrap();
        let text = d.to_string();
        assert!(luns_of(&text, 0).is_empty(), "{text}");
        assert_eq!(luns_of(&text, 1).len(), 1, "{text}");
        assert!(remove_lun(&mut d, "iqn.2026-11.dev.lunar:a", 1).unwrap_err().contains("no LUN 1"));
        assert!(remove_lun(&mut d, "iqn.2026-11.dev.lunar:c", 0).unwrap_err().contains("no [[target]] named"));
    }

    #[test]
    fn add_goes_under_its_target() {
        let mut d = doc();
        let l = LunConfig::parse_spec("backend=file,path=/srv/a,,b.img,size=10G,werror=stop,iothread=1").unwrap();
        add_lun(&mut d, "iqn.2026-11.dev.lunar:a", 7, &l).unwrap();
        add_lun(&mut d, "iqn.2026-11.dev.lunar:b", 3, &LunConfig::parse_spec("backend=null,size=4096").unwrap())
            .unwrap();
        assert!(add_lun(&mut d, "iqn.2026-11.dev.lunar:b", 3, &l).unwrap_err().contains("already"));
        let text = d.to_string();
        let a = luns_of(&text, 0);
        assert_eq!(a.iter().map(|l| l.0).collect::<Vec<_>>(), [0, 1, 2, 7], "{text}");
        let mut want = l.clone();
        want.number = Some(7);
        assert_eq!(a[3].1, want);
        let b = luns_of(&text, 1);
        assert_eq!(b.iter().map(|l| l.0).collect::<Vec<_>>(), [0, 3], "{text}");
        assert_eq!(b[1].1.backend, BackendSpec::Null { size: 4096 });
        // A target with no LUN yet gets its first table.
        let mut d: DocumentMut = "[[target]]\nname = \"iqn.2026-11.dev.lunar:e\"\n".parse().unwrap();
        add_lun(&mut d, "iqn.2026-11.dev.lunar:e", 0, &LunConfig::parse_spec("backend=mem,size=1M").unwrap()).unwrap();
        assert_eq!(luns_of(&d.to_string(), 0).len(), 1);
    }

    #[test]
    fn the_running_configuration_round_trips() {
        let f = super::super::Config::from_toml_str(FILE, Path::new("/etc/lunar/x.toml")).unwrap();
        let text = to_toml(&f, false).unwrap();
        let g = super::super::Config::from_toml_str(&text, Path::new("/etc/lunar/x.toml")).unwrap();
        assert_eq!(to_toml(&g, false).unwrap(), text);
        let n = |c: &Config| {
            c.targets.iter().map(|t| t.numbered().iter().map(|l| l.0).collect::<Vec<_>>()).collect::<Vec<_>>()
        };
        assert_eq!(n(&f), n(&g));
    }

    /// `[[gateway]]` and `local-gateway` survive `config show` / `config
    /// save` and the edits of run-time changes.
    #[test]
    fn gateways_round_trip_and_survive_edits() {
        let file = format!(
            "listen = [\"127.0.0.1:3260\"]\nlocal-gateway = \"gw1\" # me\n\n[[gateway]]\nname = \"gw1\"\nportal = \"127.0.0.1:3260\"\npreferred = true\n\n[[gateway]]\nname = \"gw2\"\nportal = \"127.0.0.2:3260\"\n\n{FILE}"
        )
        .replace("iothreads = 2 # two\n", "");
        let f = super::super::Config::from_toml_str(&file, Path::new("/etc/lunar/x.toml")).unwrap();
        assert_eq!(f.gateways.len(), 2);
        let text = to_toml(&f, false).unwrap();
        let g = super::super::Config::from_toml_str(&text, Path::new("/etc/lunar/x.toml")).unwrap();
        assert_eq!((&g.gateways, &g.local_gateway), (&f.gateways, &f.local_gateway));
        assert_eq!(to_toml(&g, false).unwrap(), text);
        let mut d: DocumentMut = file.parse().unwrap();
        add_lun(&mut d, "iqn.2026-11.dev.lunar:a", 9, &LunConfig::parse_spec("backend=mem,size=1M").unwrap()).unwrap();
        remove_target(&mut d, "iqn.2026-11.dev.lunar:b").unwrap();
        set_listen(&mut d, &["127.0.0.1:3260".parse().unwrap(), "127.0.0.3:3260".parse().unwrap()]).unwrap();
        let text = d.to_string();
        assert!(text.contains("local-gateway = \"gw1\" # me\n"), "{text}");
        let h = super::super::Config::from_toml_str(&text, Path::new("/etc/lunar/x.toml")).unwrap();
        assert_eq!((&h.gateways, &h.local_gateway), (&f.gateways, &f.local_gateway));
    }

    #[test]
    fn targets_acls_chap_and_portals_are_edited_in_place() {
        let mut d = doc();
        add_target(&mut d, "iqn.2026-11.dev.lunar:c").unwrap();
        assert!(add_target(&mut d, "iqn.2026-11.dev.lunar:c").unwrap_err().contains("already"));
        let acl = ["iqn.1993-08.org.debian:01:aa".to_string(), "iqn.1993-08.org.debian:01:bb".to_string()];
        set_acl(&mut d, "iqn.2026-11.dev.lunar:c", &acl).unwrap();
        let alice = Chap { user: "alice".into(), secret: "twelve+bytes!".into() };
        let bob = Chap { user: "bob".into(), secret: "other+secret!".into() };
        set_chap(&mut d, "iqn.2026-11.dev.lunar:c", "chap", Some(&alice)).unwrap();
        set_chap(&mut d, "iqn.2026-11.dev.lunar:c", "mutual-chap", Some(&bob)).unwrap();
        set_discovery_chap(&mut d, Some(&bob)).unwrap();
        remove_target(&mut d, "iqn.2026-11.dev.lunar:b").unwrap();
        assert!(remove_target(&mut d, "iqn.2026-11.dev.lunar:b").unwrap_err().contains("no [[target]] named"));
        set_listen(&mut d, &["127.0.0.1:3261".parse().unwrap(), "[::1]:3260".parse().unwrap()]).unwrap();
        let text = d.to_string();
        assert!(text.starts_with("# my lunar\niothreads = 2 # two\n"), "{text}");
        assert!(text.contains("# the RAM disk"), "{text}");
        let f = super::super::Config::from_toml_str(&text, Path::new("/etc/lunar/x.toml")).unwrap();
        let names: Vec<&str> = f.targets.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["iqn.2026-11.dev.lunar:a", "iqn.2026-11.dev.lunar:c"]);
        assert_eq!(f.targets[1].allow_initiators, acl);
        assert_eq!((f.targets[1].chap.as_ref(), f.targets[1].mutual_chap.as_ref()), (Some(&alice), Some(&bob)));
        assert_eq!(f.portals.iter().map(|p| p.to_string()).collect::<Vec<_>>(), ["127.0.0.1:3261", "[::1]:3260"]);
        assert_eq!(f.targets[0].luns.len(), 3);
        assert_eq!(f.discovery_chap.as_ref(), Some(&bob));
        set_discovery_chap(&mut d, None).unwrap();
        // Cleared again: the keys go.
        set_acl(&mut d, "iqn.2026-11.dev.lunar:c", &[]).unwrap();
        set_chap(&mut d, "iqn.2026-11.dev.lunar:c", "mutual-chap", None).unwrap();
        set_chap(&mut d, "iqn.2026-11.dev.lunar:c", "chap", None).unwrap();
        let text = d.to_string();
        assert!(!text.contains("allow-initiators") && !text.contains("chap"), "{text}");
        // A [target.chap] table keeps its form and its comment.
        let mut d: DocumentMut =
            "[[target]]\nname = \"iqn.2026-11.dev.lunar:e\"\n# who may log in\n[target.chap]\nuser = \"x\"\nsecret = \"0123456789ab\"\n"
                .parse()
                .unwrap();
        set_chap(&mut d, "iqn.2026-11.dev.lunar:e", "chap", Some(&alice)).unwrap();
        let text = d.to_string();
        assert!(
            text.contains("# who may log in\n[target.chap]\nuser = \"alice\"\nsecret = \"twelve+bytes!\"\n"),
            "{text}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(size_text(2 << 30), "2G");
        assert_eq!(size_text(1536 << 20), "1536M");
        assert_eq!(size_text(4096), "4K");
        assert_eq!(size_text(512), "512");
        assert_eq!(size_value(512).as_integer(), Some(512));
    }

    #[test]
    fn atomic_write_keeps_a_backup_and_refuses_read_only_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.toml");
        fs::write(&p, "a = 1\n").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, "a = 2\n", true).unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "a = 2\n");
        assert_eq!(fs::read_to_string(dir.path().join("l.toml.bak")).unwrap(), "a = 1\n");
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o640);
        fs::set_permissions(&p, fs::Permissions::from_mode(0o440)).unwrap();
        let e = write_atomic(&p, "a = 3\n", true).unwrap_err();
        assert!(e.contains("read-only (mode 0440)"), "{e}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "a = 2\n");
        // A directory in the way of the temporary file: as an unwritable directory.
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        fs::create_dir(dir.path().join(".l.toml.tmp")).unwrap();
        let e = write_atomic(&p, "a = 4\n", true).unwrap_err();
        assert!(e.starts_with(&format!("cannot write {}", p.display())), "{e}");
        assert_eq!(fs::read_to_string(&p).unwrap(), "a = 2\n");
        // A new file.
        let q = dir.path().join("new.toml");
        write_atomic(&q, "b = 1\n", true).unwrap();
        assert_eq!(fs::metadata(&q).unwrap().permissions().mode() & 0o777, 0o600);
    }
}

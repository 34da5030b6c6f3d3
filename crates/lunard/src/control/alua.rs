//! `alua.show` and `alua.set`: the asymmetric access states of each LUN's
//! target port groups as this gateway sees them (issue 16), and the local
//! decision-maker's way to change them (an implicit transition: every I_T
//! nexus of the LUN gets ASYMMETRIC ACCESS STATE CHANGED, and the event
//! `alua.changed` goes out). States are run-time state: not written to the
//! configuration file (each gateway starts from its configuration; the
//! cluster side will take them from the image's lock).

use std::sync::Arc;

use lunar_scsi::AccessState;
use serde_json::{json, Value};

use super::methods::{select_one, MethodError};
use super::rpc::{Params, RpcError};
use super::Context;

/// The gateways as configured, and this one.
fn gateways_json(ctx: &Context) -> Value {
    let c = &ctx.config;
    json!({
        "gateway": c.local_gateway().map(|(i, g)| json!({ "name": g.name, "group": i + 1, "portal": g.portal.to_string() })),
        "gateways": c.gateways.iter().enumerate().map(|(i, g)| json!({
            "name": g.name, "portal": g.portal.to_string(), "group": i + 1,
        })).collect::<Vec<_>>(),
    })
}

/// The gateway name of target port group `id` (gateway index + 1).
fn gateway_of(ctx: &Context, id: u16) -> Option<String> {
    ctx.config.gateways.get(usize::from(id).checked_sub(1)?).map(|g| g.name.clone())
}

fn no_alua() -> RpcError {
    MethodError::NotSupported("no gateways are configured ([[gateway]]): asymmetric access (ALUA) is off".into()).into()
}

pub(super) fn show(ctx: &Arc<Context>, p: &Params<'_>) -> Result<Value, RpcError> {
    if ctx.config.gateways.is_empty() {
        return Err(no_alua());
    }
    let targets = match p.opt_str("target")? {
        Some(name) => vec![select_one(ctx, Some(name))?],
        None => ctx.targets(),
    };
    let mut luns = Vec::new();
    for t in targets {
        for dev in t.devices() {
            let Some(alua) = dev.disk().alua() else { continue };
            let groups: Vec<Value> = alua
                .groups()
                .iter()
                .map(|g| {
                    json!({
                        "group": g.id,
                        "gateway": gateway_of(ctx, g.id),
                        "state": g.state.name(),
                        "status": match g.status {
                            lunar_scsi::StatusCode::None => "none",
                            lunar_scsi::StatusCode::AlteredBySetTargetPortGroups => "set-target-port-groups",
                            lunar_scsi::StatusCode::AlteredByImplicitTransition => "implicit",
                        },
                        "preferred": g.preferred,
                        "relative_ports": g.relative_ports,
                    })
                })
                .collect();
            // Who decides: an rbd LUN's owner is its image's lock holder.
            let ownership = match dev.disk().backend() {
                lunar_block::Backend::Rbd(r) if r.options().multi_writer => json!({
                    "by": "all-active", "image": r.options().spec(), "lock_held": r.owns_lock(),
                }),
                lunar_block::Backend::Rbd(r) if r.is_exclusive() && !r.options().exclusive => json!({
                    "by": "rbd-lock", "image": r.options().spec(), "lock_held": r.owns_lock(),
                }),
                lunar_block::Backend::Rbd(r) if r.options().exclusive => {
                    json!({ "by": "exclusive=on", "image": r.options().spec(), "lock_held": r.owns_lock() })
                }
                _ => json!({ "by": "local" }),
            };
            let pr = dev.disk().reservation_state();
            let reservation = json!({
                "generation": pr.generation,
                "registrations": pr.registrations.iter().map(|r| json!({
                    "initiator_port": r.nexus.initiator_port, "target_port": r.nexus.target_port,
                    "key": format!("{:#018x}", r.key),
                })).collect::<Vec<_>>(),
                "holder": pr.reservation.as_ref().map(|h| json!({
                    "initiator_port": h.holder.initiator_port, "target_port": h.holder.target_port,
                    "type": format!("{:?}", h.pr_type),
                })),
            });
            luns.push(json!({
                "target": t.name(), "lun": dev.lun(), "local_group": alua.local_group(),
                "local_state": alua.local_state().name(), "groups": groups,
                "ownership": ownership, "reservation": reservation,
            }));
        }
    }
    let mut v = gateways_json(ctx);
    if let Some(o) = v.as_object_mut() {
        o.insert("luns".into(), Value::Array(luns));
    }
    Ok(v)
}

pub(super) async fn set(ctx: &Arc<Context>, p: &Params<'_>) -> Result<Value, RpcError> {
    if ctx.config.gateways.is_empty() {
        return Err(no_alua());
    }
    let t = select_one(ctx, p.opt_str("target")?)?;
    let lun = p.u64("lun")?;
    // A group by number or by its gateway's name.
    let group_text = match p.opt_u64("group") {
        Ok(Some(n)) => n.to_string(),
        _ => p.str("group")?.to_string(),
    };
    let group = match group_text.parse::<u16>() {
        Ok(n) => n,
        Err(_) => match ctx.config.gateways.iter().position(|g| g.name == group_text) {
            Some(i) => u16::try_from(i + 1).unwrap_or(u16::MAX),
            None => {
                let names: Vec<&str> = ctx.config.gateways.iter().map(|g| g.name.as_str()).collect();
                return Err(RpcError::invalid_params(format!(
                    "`group`: {group_text:?} is neither a target port group number nor a gateway ({})",
                    names.join(", ")
                )));
            }
        },
    };
    let state_text = p.str("state")?;
    let state = AccessState::parse(state_text).ok_or_else(|| {
        let names: Vec<&str> = AccessState::ALL.iter().map(|s| s.name()).collect();
        RpcError::invalid_params(format!("`state`: {state_text:?} is not one of {}", names.join(", ")))
    })?;
    // An rbd LUN's ownership is its image's lock: moving it goes through
    // the same decision-maker as SET TARGET PORT GROUPS (a take-over, or
    // giving the lock up); other LUNs change this process's view only.
    let dev = t.device(lun).ok_or(MethodError::NoSuchLun(lun))?;
    let owned =
        matches!(dev.disk().backend(), lunar_block::Backend::Rbd(r) if r.is_exclusive() && !r.options().exclusive);
    let changed = match dev.disk().alua() {
        Some(alua) if owned => {
            let before = alua.groups();
            let request = [lunar_scsi::SetGroupState { group, state }];
            alua.request(&request, &lunar_scsi::Nexus::anonymous())
                .await
                .map_err(|e| MethodError::Backend(format!("moving the image's ownership failed: {e}")))?;
            *alua.groups() != *before
        }
        _ => t.set_alua_state(lun, group, state).await.map_err(MethodError::from)?,
    };
    Ok(json!({
        "target": t.name(), "lun": lun, "group": group, "gateway": gateway_of(ctx, group),
        "state": state.name(), "changed": changed, "persistent": false,
        "note": "ALUA states are run-time state: not written to the configuration",
    }))
}

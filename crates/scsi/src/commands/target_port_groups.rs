//! REPORT TARGET PORT GROUPS (MAINTENANCE IN, SPC-5 6.37) and SET TARGET
//! PORT GROUPS (MAINTENANCE OUT, SPC-5 6.45): the commands of asymmetric
//! logical unit access ([`crate::alua`]). Offered only by a disk with ALUA
//! configured ([`crate::cdb::table::Requires::Alua`]).

use crate::alua::{AccessState, Alua, GroupState, SetGroupState, SupportedStates};
use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{truncate, Disk, ExecContext};
use crate::error::ScsiError;
use crate::reservation::Nexus;

/// Largest SET TARGET PORT GROUPS parameter list: the header and a
/// descriptor for each of 255 groups.
pub const MAX_STPG_PARAM_LEN: u32 = 4 + 4 * 255;

/// PARAMETER DATA FORMAT of REPORT TARGET PORT GROUPS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RtpgFormat {
    /// 000b: a 4-byte header with the RETURN DATA LENGTH only.
    LengthOnly,
    /// 001b: an 8-byte header with FORMAT TYPE and IMPLICIT TRANSITION TIME.
    Extended,
}

pub(crate) fn decode_rtpg(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let format = match c.bits(1, 5, 3) {
        0 => RtpgFormat::LengthOnly,
        1 => RtpgFormat::Extended,
        _ => return Err(ScsiError::field(1, 7)),
    };
    Ok(Command::ReportTargetPortGroups { format, alloc_len: c.be32(6) })
}

pub(crate) fn decode_stpg(c: Cdb<'_>) -> Result<Command, ScsiError> {
    Ok(Command::SetTargetPortGroups { param_len: c.be32(6) })
}

/// The checks of SET TARGET PORT GROUPS that need no data-out.
pub(crate) fn validate_stpg(param_len: u32) -> Result<(), ScsiError> {
    if param_len > MAX_STPG_PARAM_LEN {
        return Err(ScsiError::field_byte(6));
    }
    Ok(())
}

/// Decodes a SET TARGET PORT GROUPS parameter list (SPC-5 6.45): a 4-byte
/// reserved header, then 4-byte descriptors (state in bits 3:0 of byte 0,
/// byte 1 reserved, TARGET PORT GROUP in bytes 2-3). A list that cuts the
/// header or a descriptor is a PARAMETER LIST LENGTH ERROR (SPC-5 4.2.5.5);
/// reserved bits and codes are INVALID FIELD IN PARAMETER LIST. Transitioning
/// cannot be asked for; offline names a target port, not a group, and Lunar
/// supports no offline port: both are invalid too.
pub fn parse_stpg(data: &[u8]) -> Result<Vec<SetGroupState>, ScsiError> {
    if data.is_empty() {
        return Ok(Vec::new());
    }
    if data.len() < 4 || !(data.len() - 4).is_multiple_of(4) {
        return Err(ScsiError::ParameterListLengthError);
    }
    for (i, &b) in data[..4].iter().enumerate() {
        if b != 0 {
            return Err(ScsiError::param(i, Some(7 - b.leading_zeros() as u8)));
        }
    }
    data[4..]
        .chunks_exact(4)
        .enumerate()
        .map(|(k, d)| {
            let at = 4 + 4 * k;
            if d[0] & 0xF0 != 0 {
                return Err(ScsiError::param(at, Some(7 - d[0].leading_zeros() as u8)));
            }
            if d[1] != 0 {
                return Err(ScsiError::param(at + 1, Some(7 - d[1].leading_zeros() as u8)));
            }
            let state = match AccessState::from_code(d[0] & 0x0F) {
                Some(s) if !matches!(s, AccessState::Transitioning | AccessState::Offline) => s,
                _ => return Err(ScsiError::param(at, Some(3))),
            };
            Ok(SetGroupState { state, group: u16::from_be_bytes([d[2], d[3]]) })
        })
        .collect()
}

/// Encodes a SET TARGET PORT GROUPS parameter list (for tests and initiators).
pub fn encode_stpg(request: &[SetGroupState]) -> Vec<u8> {
    let mut d = vec![0u8; 4];
    for r in request {
        d.extend_from_slice(&[r.state.code(), 0]);
        d.extend_from_slice(&r.group.to_be_bytes());
    }
    d
}

/// One target port group descriptor (SPC-5 6.37): PREF and state, the
/// supported states, TARGET PORT GROUP, STATUS CODE, TARGET PORT COUNT, then
/// a 4-byte target port descriptor per port (RELATIVE TARGET PORT
/// IDENTIFIER in bytes 2-3).
fn group_descriptor(g: &GroupState, supported: SupportedStates) -> Vec<u8> {
    let mut d = vec![0u8; 8];
    d[0] = (u8::from(g.preferred) << 7) | g.state.code();
    d[1] = supported.0;
    d[2..4].copy_from_slice(&g.id.to_be_bytes());
    d[5] = g.status.code();
    d[7] = u8::try_from(g.relative_ports.len()).unwrap_or(u8::MAX);
    for p in g.relative_ports.iter().take(255) {
        d.extend_from_slice(&[0, 0]);
        d.extend_from_slice(&p.to_be_bytes());
    }
    d
}

/// REPORT TARGET PORT GROUPS parameter data, whole. RETURN DATA LENGTH is
/// the length of the descriptor list in both formats (the extended
/// header's 4 bytes are not counted).
pub fn report_target_port_groups(alua: &Alua, format: RtpgFormat) -> Vec<u8> {
    let groups = alua.groups();
    let descriptors: Vec<u8> = groups.iter().flat_map(|g| group_descriptor(g, SupportedStates::LUNAR)).collect();
    let mut d = u32::try_from(descriptors.len()).unwrap_or(u32::MAX).to_be_bytes().to_vec();
    if format == RtpgFormat::Extended {
        // FORMAT TYPE 001b in bits 6:4, IMPLICIT TRANSITION TIME, reserved.
        d.extend_from_slice(&[0x10, alua.config().implicit_transition_secs(), 0, 0]);
    }
    d.extend(descriptors);
    d
}

impl Disk {
    pub(crate) fn report_target_port_groups(&self, format: RtpgFormat, alloc_len: u32) -> Result<Vec<u8>, ScsiError> {
        let alua = self.alua().ok_or(ScsiError::field(1, 4))?;
        let d = report_target_port_groups(alua, format);
        Ok(truncate(d, usize::try_from(alloc_len).unwrap_or(usize::MAX)))
    }

    /// SET TARGET PORT GROUPS: decodes and checks the parameter list, then
    /// hands the request to the logical unit's [`crate::alua::AluaControl`].
    pub(crate) async fn set_target_port_groups(
        &self,
        param_len: u32,
        data: &[u8],
        ctx: &ExecContext,
    ) -> Result<Vec<u8>, ScsiError> {
        let alua = self.alua().ok_or(ScsiError::field(1, 4))?;
        validate_stpg(param_len)?;
        let len = usize::try_from(param_len).unwrap_or(usize::MAX);
        let data = data.get(..len).ok_or(ScsiError::ParameterListLengthError)?;
        let request = parse_stpg(data)?;
        if request.is_empty() {
            return Ok(Vec::new());
        }
        // A group that does not exist, one named twice or an unsupported
        // state: an invalid combination (SPC-5 6.45), pointing at its descriptor.
        let groups = alua.groups();
        for (k, r) in request.iter().enumerate() {
            let at = 4 + 4 * k;
            if !groups.iter().any(|g| g.id == r.group) || request[..k].iter().any(|o| o.group == r.group) {
                return Err(ScsiError::param(at + 2, None));
            }
            if !SupportedStates::LUNAR.supports(r.state) {
                return Err(ScsiError::param(at, Some(3)));
            }
        }
        let nexus = ctx.nexus.clone().unwrap_or_else(Nexus::anonymous);
        let control = alua.control();
        control.set_target_port_groups(alua, &request, &nexus).await?;
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alua::{AluaConfig, StatusCode};
    use crate::test_util::*;
    use crate::*;

    fn alua_disk(gateways: usize, local: usize) -> Disk {
        disk_with(
            10,
            DiskConfig {
                alua: Some(AluaConfig::gateways(gateways, local).unwrap()),
                relative_port: u16::try_from(local + 1).unwrap(),
                ..Default::default()
            },
        )
    }

    fn rtpg(format: u8, alloc: u32) -> Vec<u8> {
        let mut c = vec![0xA3, (format << 5) | 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        c[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }

    fn stpg(len: u32) -> Vec<u8> {
        let mut c = vec![0xA4, 0x0A, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        c[6..10].copy_from_slice(&len.to_be_bytes());
        c
    }

    /// The bytes of SPC-5 6.37 for two gateways, this one the second.
    #[test]
    fn report_in_both_formats_matches_the_layout() {
        let d = alua_disk(2, 1);
        let descriptors = [
            // Group 1: Active/Optimized, T_SUP U_SUP S_SUP AN_SUP AO_SUP, id 1,
            // status none, one port: relative port 1.
            0x00, 0x8F, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, //
            // Group 2: Standby, id 2, port 2.
            0x02, 0x8F, 0x00, 0x02, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02,
        ];
        let mut want = vec![0, 0, 0, 24];
        want.extend_from_slice(&descriptors);
        assert_eq!(run(&d, &rtpg(0, 1000)).unwrap(), want);
        let mut want = vec![0, 0, 0, 24, 0x10, 10, 0, 0];
        want.extend_from_slice(&descriptors);
        assert_eq!(run(&d, &rtpg(1, 1000)).unwrap(), want);
        // The allocation length cuts; the RETURN DATA LENGTH stays.
        assert_eq!(run(&d, &rtpg(0, 6)).unwrap(), vec![0, 0, 0, 24, 0x00, 0x8F]);
        assert_eq!(run(&d, &rtpg(1, 0)).unwrap(), Vec::<u8>::new());
        // Reserved formats and bits.
        assert_eq!(run(&d, &rtpg(2, 100)), Err(ScsiError::field(1, 7)));
        assert_eq!(run(&d, &rtpg(7, 100)), Err(ScsiError::field(1, 7)));
        let mut c = rtpg(0, 100);
        c[2] = 1;
        assert_eq!(run(&d, &c), Err(ScsiError::field(2, 0)));
    }

    #[test]
    fn without_alua_neither_command_is_offered() {
        let d = disk(10);
        assert_eq!(run(&d, &rtpg(0, 100)), Err(ScsiError::field(1, 4)));
        assert_eq!(run_data(&d, &stpg(0), vec![]), Err(ScsiError::field(1, 4)));
        assert_eq!(run(&d, &[0x12, 0, 0, 0, 96, 0]).unwrap()[5] & 0x30, 0, "TPGS 00b");
    }

    #[test]
    fn set_target_port_groups_applies_and_reports_the_status() {
        let d = alua_disk(2, 1);
        // Standby admits SET TARGET PORT GROUPS but not READ.
        assert_eq!(
            run(&d, &cdb10(0x28, 0, 0, 1)).unwrap_err().sense().code(),
            sense::LU_NOT_ACCESSIBLE_TARGET_PORT_IN_STANDBY
        );
        let list = encode_stpg(&[SetGroupState { group: 2, state: AccessState::ActiveOptimized }]);
        run_data(&d, &stpg(list.len() as u32), list).unwrap();
        let r = run(&d, &rtpg(0, 1000)).unwrap();
        assert_eq!((r[16], r[21]), (0x00, StatusCode::AlteredBySetTargetPortGroups.code()), "group 2 A/O, status 01h");
        assert_eq!((r[4], r[9]), (0x00, 0x00), "group 1 untouched");
        assert_eq!(run(&d, &cdb10(0x28, 0, 0, 1)).unwrap().len(), 512);
        // An empty list changes nothing.
        run_data(&d, &stpg(0), vec![]).unwrap();
    }

    #[test]
    fn pref_is_reported() {
        let cfg = AluaConfig::gateways(2, 0).unwrap().with_preferred(2, true);
        let d = disk_with(10, DiskConfig { alua: Some(cfg), ..Default::default() });
        let r = run(&d, &rtpg(0, 1000)).unwrap();
        assert_eq!((r[4], r[16]), (0x00, 0x82), "group 1 A/O, group 2 PREF and standby");
    }

    #[test]
    fn set_target_port_groups_errors() {
        let d = alua_disk(2, 0);
        let one = |state: u8, group: u16| {
            let mut l = vec![0, 0, 0, 0, state, 0];
            l.extend_from_slice(&group.to_be_bytes());
            l
        };
        let go = |list: Vec<u8>| run_data(&d, &stpg(list.len() as u32), list);
        assert_eq!(go(one(0x0, 3)), Err(ScsiError::param(6, None)), "no group 3");
        assert_eq!(go(one(0xF, 1)), Err(ScsiError::param(4, Some(3))), "transitioning");
        assert_eq!(go(one(0xE, 1)), Err(ScsiError::param(4, Some(3))), "offline");
        assert_eq!(go(one(0x4, 1)), Err(ScsiError::param(4, Some(3))), "logical block dependent");
        assert_eq!(go(one(0x12, 1)), Err(ScsiError::param(4, Some(4))), "reserved bits of byte 0");
        let mut l = one(0, 1);
        l[5] = 0x80;
        assert_eq!(go(l), Err(ScsiError::param(5, Some(7))), "byte 1 reserved");
        let mut l = one(0, 1);
        l[0] = 1;
        assert_eq!(go(l), Err(ScsiError::param(0, Some(0))), "header reserved");
        let mut l = one(0x2, 1);
        l.extend_from_slice(&[0x3, 0, 0, 1]);
        assert_eq!(go(l), Err(ScsiError::param(10, None)), "group named twice");
        assert_eq!(go(vec![0, 0, 0, 0, 0, 0]), Err(ScsiError::ParameterListLengthError), "cut descriptor");
        assert_eq!(go(vec![0, 0]), Err(ScsiError::ParameterListLengthError), "cut header");
        assert_eq!(run_data(&d, &stpg(8), vec![0, 0, 0, 0]), Err(ScsiError::ParameterListLengthError), "short data");
        assert_eq!(
            d.data_out_expected(&Command::decode(&stpg(MAX_STPG_PARAM_LEN + 1)).unwrap(), usize::MAX),
            Err(ScsiError::field_byte(6))
        );
        assert_eq!(d.data_out_expected(&Command::decode(&stpg(8)).unwrap(), usize::MAX), Ok(8));
        // Nothing changed.
        assert_eq!(d.alua().unwrap().groups()[0].state, AccessState::ActiveOptimized);
        assert_eq!(d.alua().unwrap().groups()[1].status, StatusCode::None);
    }

    proptest::proptest! {
        /// Whatever the bytes, parsing never panics, and what parses
        /// encodes back to the same bytes.
        #[test]
        fn stpg_lists_parse_or_fail_cleanly(data in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            if let Ok(request) = parse_stpg(&data) {
                if !data.is_empty() {
                    proptest::prop_assert_eq!(encode_stpg(&request), data);
                }
            }
        }

        #[test]
        fn stpg_lists_round_trip(
            request in proptest::collection::vec((0u8..4, proptest::num::u16::ANY), 1..20),
        ) {
            let request: Vec<SetGroupState> = request
                .into_iter()
                .map(|(s, group)| SetGroupState { state: AccessState::from_code(s).unwrap(), group })
                .collect();
            proptest::prop_assert_eq!(parse_stpg(&encode_stpg(&request)).unwrap(), request);
        }

        /// Every REPORT TARGET PORT GROUPS CDB decodes or fails as an
        /// invalid field, and the answer never exceeds the allocation length.
        #[test]
        fn rtpg_cdbs(b1 in proptest::num::u8::ANY, alloc in 0u32..200) {
            let d = alua_disk(3, 2);
            let mut c = rtpg(0, alloc);
            c[1] = (b1 & 0xE0) | 0x0A;
            match run(&d, &c) {
                Ok(r) => proptest::prop_assert!(r.len() <= alloc as usize),
                Err(e) => proptest::prop_assert_eq!(e, ScsiError::field(1, 7)),
            }
        }
    }
}

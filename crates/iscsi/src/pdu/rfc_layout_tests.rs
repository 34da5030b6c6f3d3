//! Every PDU type encoded with distinct field values, its bytes checked at
//! the offsets RFC 7143 §11 gives for each field.
//!
//! The offsets below are copied from the RFC's figures, independent of the
//! codec's own header declarations: a field declared at the wrong place, with
//! the wrong width, or swapped with a neighbour of the same width fails here.
//! Every BHS byte that no field covers is reserved and must be zero.

use super::*;

/// One field of a PDU on the wire: its name in the RFC, its byte offset from
/// the start of the PDU and the bytes expected there.
struct Field {
    name: &'static str,
    at: usize,
    bytes: Vec<u8>,
}

fn u8_at(name: &'static str, at: usize, v: u8) -> Field {
    Field { name, at, bytes: vec![v] }
}

fn u16_at(name: &'static str, at: usize, v: u16) -> Field {
    Field { name, at, bytes: v.to_be_bytes().to_vec() }
}

fn u32_at(name: &'static str, at: usize, v: u32) -> Field {
    Field { name, at, bytes: v.to_be_bytes().to_vec() }
}

fn u64_at(name: &'static str, at: usize, v: u64) -> Field {
    Field { name, at, bytes: v.to_be_bytes().to_vec() }
}

fn bytes_at(name: &'static str, at: usize, v: &[u8]) -> Field {
    Field { name, at, bytes: v.to_vec() }
}

/// Bytes 0 and 4-7 of every BHS (§11.2.1): opcode with the I bit,
/// TotalAHSLength, DataSegmentLength.
fn common(opcode: u8, immediate: bool, ahs_words: u8, data_len: usize) -> Vec<Field> {
    let dsl = u32::try_from(data_len).unwrap().to_be_bytes();
    vec![
        u8_at("opcode", 0, opcode | if immediate { 0x40 } else { 0 }),
        u8_at("TotalAHSLength", 4, ahs_words),
        bytes_at("DataSegmentLength", 5, &dsl[1..]),
    ]
}

// Distinct values: every byte of every field differs from its neighbours',
// so a field at a shifted offset or swapped with another shows.
const LUN: u64 = 0x0102_0304_0506_0708;
const ITT: u32 = 0x1112_1314;
const TTT: u32 = 0x2122_2324;
const SN24: u32 = 0x3132_3334;
const SN28: u32 = 0x4142_4344;
const SN32: u32 = 0x5152_5354;
const SN36: u32 = 0x6162_6364;
const SN40: u32 = 0x7172_7374;
const SN44: u32 = 0x8182_8384;
const ISID: [u8; 6] = [0x91, 0x92, 0x93, 0x94, 0x95, 0x96];

/// A data segment whose length has all three DataSegmentLength bytes set.
fn big_data() -> Vec<u8> {
    (0..0x01_0203u32).map(|i| (i % 251) as u8 + 1).collect()
}

/// (what, PDU, fields) for every PDU type, from the RFC 7143 §11 figures.
fn cases() -> Vec<(&'static str, Pdu, Vec<Field>)> {
    let data = big_data();
    let n = data.len();
    let mut cases = Vec::new();

    // §11.18 NOP-Out.
    let mut f = common(0x00, true, 0, n);
    f.extend([
        u8_at("flags (1)", 1, 0x80),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("TTT", 20, TTT),
        u32_at("CmdSN", 24, SN24),
        u32_at("ExpStatSN", 28, SN28),
        bytes_at("ping data", 48, &data[..8]),
    ]);
    cases.push((
        "NOP-Out",
        Pdu::NopOut(NopOut {
            immediate: true,
            lun: LUN,
            itt: ITT,
            ttt: TTT,
            cmd_sn: SN24,
            exp_stat_sn: SN28,
            data: data.clone(),
        }),
        f,
    ));

    // §11.3 SCSI Command with an Extended CDB AHS and a Bidirectional
    // Expected Read-Data Length AHS (§11.2.2.3, §11.2.2.4).
    let cdb: Vec<u8> = (0xa0..0xa0 + 20).collect();
    let mut f = common(0x01, true, 4, 0);
    f.extend([
        u8_at("F R W ATTR", 1, 0x80 | 0x40 | 0x20 | 3),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("Expected Data Transfer Length", 20, TTT),
        u32_at("CmdSN", 24, SN24),
        u32_at("ExpStatSN", 28, SN28),
        bytes_at("CDB", 32, &cdb[..16]),
        // Extended CDB AHS: AHSLength = CDB length - 15, type 1, reserved.
        u16_at("AHSLength (extended CDB)", 48, 5),
        u8_at("AHSType (extended CDB)", 50, 1),
        u8_at("AHS reserved", 51, 0),
        bytes_at("CDB bytes 16..", 52, &cdb[16..]),
        // Bidirectional Expected Read-Data Length AHS: length 5, type 2.
        u16_at("AHSLength (bidi)", 56, 5),
        u8_at("AHSType (bidi)", 58, 2),
        u8_at("AHS reserved", 59, 0),
        u32_at("Bidirectional Expected Read-Data Length", 60, SN32),
    ]);
    cases.push((
        "SCSI Command (bidi, extended CDB)",
        Pdu::ScsiCommand(ScsiCommand {
            immediate: true,
            final_bit: true,
            read: true,
            write: true,
            attr: TaskAttribute::HeadOfQueue,
            lun: LUN,
            itt: ITT,
            expected_data_transfer_length: TTT,
            cmd_sn: SN24,
            exp_stat_sn: SN28,
            cdb: cdb.clone(),
            bidi_read_length: Some(SN32),
            data: Vec::new(),
        }),
        f,
    ));

    // §11.3 SCSI Command, read only: R without F or W.
    let mut f = common(0x01, false, 0, 0);
    f.extend([
        u8_at("F R W ATTR", 1, 0x40 | 2),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("Expected Data Transfer Length", 20, TTT),
        u32_at("CmdSN", 24, SN24),
        u32_at("ExpStatSN", 28, SN28),
        bytes_at("CDB", 32, &cdb[..16]),
    ]);
    cases.push((
        "SCSI Command (read)",
        Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_bit: false,
            read: true,
            write: false,
            attr: TaskAttribute::Ordered,
            lun: LUN,
            itt: ITT,
            expected_data_transfer_length: TTT,
            cmd_sn: SN24,
            exp_stat_sn: SN28,
            cdb: cdb[..16].to_vec(),
            bidi_read_length: None,
            data: Vec::new(),
        }),
        f,
    ));

    // §11.3 SCSI Command, write with immediate data: W alone.
    let mut f = common(0x01, false, 0, n);
    f.extend([
        u8_at("F R W ATTR", 1, 0x20 | 1),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("Expected Data Transfer Length", 20, TTT),
        u32_at("CmdSN", 24, SN24),
        u32_at("ExpStatSN", 28, SN28),
        bytes_at("CDB", 32, &cdb[..16]),
        bytes_at("immediate data", 48, &data[..8]),
    ]);
    cases.push((
        "SCSI Command (write)",
        Pdu::ScsiCommand(ScsiCommand {
            immediate: false,
            final_bit: false,
            read: false,
            write: true,
            attr: TaskAttribute::Simple,
            lun: LUN,
            itt: ITT,
            expected_data_transfer_length: TTT,
            cmd_sn: SN24,
            exp_stat_sn: SN28,
            cdb: cdb[..16].to_vec(),
            bidi_read_length: None,
            data: data.clone(),
        }),
        f,
    ));

    // §11.4 SCSI Response; §11.4.7 data segment: SenseLength, sense,
    // response data.
    let sense: Vec<u8> = (0xc0..0xc0 + 18).collect();
    for (o, u, big_o, big_u, flags) in
        [(true, false, false, true, 0x80 | 0x10 | 0x02), (false, true, true, false, 0x80 | 0x08 | 0x04)]
    {
        let mut f = common(0x21, false, 0, 2 + sense.len() + 3);
        f.extend([
            u8_at("flags (1 . . o u O U .)", 1, flags),
            u8_at("Response", 2, 0x01),
            u8_at("Status", 3, 0x02),
            u32_at("ITT", 16, ITT),
            u32_at("SNACK Tag", 20, TTT),
            u32_at("StatSN", 24, SN24),
            u32_at("ExpCmdSN", 28, SN28),
            u32_at("MaxCmdSN", 32, SN32),
            u32_at("ExpDataSN", 36, SN36),
            u32_at("Bidirectional Read Residual Count", 40, SN40),
            u32_at("Residual Count", 44, SN44),
            u16_at("SenseLength", 48, 18),
            bytes_at("Sense Data", 50, &sense),
            bytes_at("Response Data", 68, &[0xe1, 0xe2, 0xe3]),
        ]);
        cases.push((
            "SCSI Response",
            Pdu::ScsiResponse(ScsiResponse {
                bidi_read_overflow: o,
                bidi_read_underflow: u,
                overflow: big_o,
                underflow: big_u,
                response: ServiceResponse::TargetFailure,
                status: 0x02,
                itt: ITT,
                snack_tag: TTT,
                stat_sn: SN24,
                exp_cmd_sn: SN28,
                max_cmd_sn: SN32,
                exp_data_sn: SN36,
                bidi_read_residual_count: SN40,
                residual_count: SN44,
                sense: sense.clone(),
                response_data: vec![0xe1, 0xe2, 0xe3],
            }),
            f,
        ));
    }

    // §11.5 Task Management Function Request.
    let mut f = common(0x02, true, 0, 0);
    f.extend([
        u8_at("1 Function", 1, 0x80 | 5),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("Referenced Task Tag", 20, TTT),
        u32_at("CmdSN", 24, SN24),
        u32_at("ExpStatSN", 28, SN28),
        u32_at("RefCmdSN", 32, SN32),
        u32_at("ExpDataSN", 36, SN36),
    ]);
    cases.push((
        "Task Management Function Request",
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: TaskMgmtFunction::LogicalUnitReset,
            lun: LUN,
            itt: ITT,
            referenced_task_tag: TTT,
            cmd_sn: SN24,
            exp_stat_sn: SN28,
            ref_cmd_sn: SN32,
            exp_data_sn: SN36,
        }),
        f,
    ));

    // §11.6 Task Management Function Response.
    let mut f = common(0x22, false, 0, 0);
    f.extend([
        u8_at("flags (1)", 1, 0x80),
        u8_at("Response", 2, 5),
        u32_at("ITT", 16, ITT),
        u32_at("StatSN", 24, SN24),
        u32_at("ExpCmdSN", 28, SN28),
        u32_at("MaxCmdSN", 32, SN32),
    ]);
    cases.push((
        "Task Management Function Response",
        Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: TmfResponseCode::FunctionNotSupported,
            itt: ITT,
            stat_sn: SN24,
            exp_cmd_sn: SN28,
            max_cmd_sn: SN32,
        }),
        f,
    ));

    // §11.12 Login Request: always immediate.
    let mut f = common(0x03, true, 0, n);
    f.extend([
        u8_at("T C . . CSG NSG", 1, 0x80 | 1 << 2 | 3),
        u8_at("Version-max", 2, 0xd1),
        u8_at("Version-min", 3, 0xd2),
        bytes_at("ISID", 8, &ISID),
        u16_at("TSIH", 14, 0xd3d4),
        u32_at("ITT", 16, ITT),
        u16_at("CID", 20, 0xd5d6),
        u32_at("CmdSN", 24, SN24),
        u32_at("ExpStatSN", 28, SN28),
        bytes_at("text", 48, &data[..8]),
    ]);
    cases.push((
        "Login Request",
        Pdu::LoginRequest(LoginRequest {
            transit: true,
            continue_bit: false,
            csg: LoginStage::Operational,
            nsg: LoginStage::FullFeature,
            version_max: 0xd1,
            version_min: 0xd2,
            isid: Isid(ISID),
            tsih: 0xd3d4,
            itt: ITT,
            cid: 0xd5d6,
            cmd_sn: SN24,
            exp_stat_sn: SN28,
            data: data.clone(),
        }),
        f,
    ));

    // §11.13 Login Response.
    let mut f = common(0x23, false, 0, n);
    f.extend([
        u8_at("T C . . CSG NSG", 1, 0x40 | 1),
        u8_at("Version-max", 2, 0xd1),
        u8_at("Version-active", 3, 0xd2),
        bytes_at("ISID", 8, &ISID),
        u16_at("TSIH", 14, 0xd3d4),
        u32_at("ITT", 16, ITT),
        u32_at("StatSN", 24, SN24),
        u32_at("ExpCmdSN", 28, SN28),
        u32_at("MaxCmdSN", 32, SN32),
        u8_at("Status-Class", 36, 0xd7),
        u8_at("Status-Detail", 37, 0xd8),
    ]);
    cases.push((
        "Login Response",
        Pdu::LoginResponse(LoginResponse {
            transit: false,
            continue_bit: true,
            csg: LoginStage::Security,
            nsg: LoginStage::Operational,
            version_max: 0xd1,
            version_active: 0xd2,
            isid: Isid(ISID),
            tsih: 0xd3d4,
            itt: ITT,
            stat_sn: SN24,
            exp_cmd_sn: SN28,
            max_cmd_sn: SN32,
            status_class: 0xd7,
            status_detail: 0xd8,
            data: data.clone(),
        }),
        f,
    ));

    // §11.10 Text Request.
    let mut f = common(0x04, true, 0, n);
    f.extend([
        u8_at("F C", 1, 0x40),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("TTT", 20, TTT),
        u32_at("CmdSN", 24, SN24),
        u32_at("ExpStatSN", 28, SN28),
    ]);
    cases.push((
        "Text Request",
        Pdu::TextRequest(TextRequest {
            immediate: true,
            final_bit: false,
            continue_bit: true,
            lun: LUN,
            itt: ITT,
            ttt: TTT,
            cmd_sn: SN24,
            exp_stat_sn: SN28,
            data: data.clone(),
        }),
        f,
    ));

    // §11.11 Text Response.
    let mut f = common(0x24, false, 0, n);
    f.extend([
        u8_at("F C", 1, 0x80),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("TTT", 20, TTT),
        u32_at("StatSN", 24, SN24),
        u32_at("ExpCmdSN", 28, SN28),
        u32_at("MaxCmdSN", 32, SN32),
    ]);
    cases.push((
        "Text Response",
        Pdu::TextResponse(TextResponse {
            final_bit: true,
            continue_bit: false,
            lun: LUN,
            itt: ITT,
            ttt: TTT,
            stat_sn: SN24,
            exp_cmd_sn: SN28,
            max_cmd_sn: SN32,
            data: data.clone(),
        }),
        f,
    ));

    // §11.7.1 SCSI Data-Out.
    let mut f = common(0x05, false, 0, n);
    f.extend([
        u8_at("F", 1, 0x80),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("TTT", 20, TTT),
        u32_at("ExpStatSN", 28, SN28),
        u32_at("DataSN", 36, SN36),
        u32_at("Buffer Offset", 40, SN40),
        bytes_at("data", 48, &data[..8]),
    ]);
    cases.push((
        "SCSI Data-Out",
        Pdu::DataOut(DataOut {
            final_bit: true,
            lun: LUN,
            itt: ITT,
            ttt: TTT,
            exp_stat_sn: SN28,
            data_sn: SN36,
            buffer_offset: SN40,
            data: data.clone(),
        }),
        f,
    ));

    // §11.7.1 SCSI Data-In with status (S), and without.
    let mut f = common(0x25, false, 0, n);
    f.extend([
        u8_at("F A 0 0 0 O U S", 1, 0x80 | 0x40 | 0x02 | 0x01),
        u8_at("Status", 3, 0x08),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("TTT", 20, TTT),
        u32_at("StatSN", 24, SN24),
        u32_at("ExpCmdSN", 28, SN28),
        u32_at("MaxCmdSN", 32, SN32),
        u32_at("DataSN", 36, SN36),
        u32_at("Buffer Offset", 40, SN40),
        u32_at("Residual Count", 44, SN44),
        bytes_at("data", 48, &data[..8]),
    ]);
    let data_in = DataIn {
        final_bit: true,
        acknowledge: true,
        overflow: false,
        underflow: true,
        status: Some(0x08),
        lun: LUN,
        itt: ITT,
        ttt: TTT,
        stat_sn: SN24,
        exp_cmd_sn: SN28,
        max_cmd_sn: SN32,
        data_sn: SN36,
        buffer_offset: SN40,
        residual_count: SN44,
        data: data.clone().into(),
    };
    cases.push(("SCSI Data-In (status)", Pdu::DataIn(data_in.clone()), f));
    let mut f = common(0x25, false, 0, n);
    f.extend([
        u8_at("F A 0 0 0 O U S", 1, 0x04),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("TTT", 20, TTT),
        u32_at("StatSN", 24, SN24),
        u32_at("ExpCmdSN", 28, SN28),
        u32_at("MaxCmdSN", 32, SN32),
        u32_at("DataSN", 36, SN36),
        u32_at("Buffer Offset", 40, SN40),
        u32_at("Residual Count", 44, SN44),
    ]);
    cases.push((
        "SCSI Data-In",
        Pdu::DataIn(DataIn {
            final_bit: false,
            acknowledge: false,
            overflow: true,
            underflow: false,
            status: None,
            ..data_in
        }),
        f,
    ));

    // §11.14 Logout Request.
    let mut f = common(0x06, true, 0, 0);
    f.extend([
        u8_at("1 Reason Code", 1, 0x80 | 1),
        u32_at("ITT", 16, ITT),
        u16_at("CID", 20, 0xd5d6),
        u32_at("CmdSN", 24, SN24),
        u32_at("ExpStatSN", 28, SN28),
    ]);
    cases.push((
        "Logout Request",
        Pdu::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: LogoutReason::CloseConnection,
            itt: ITT,
            cid: 0xd5d6,
            cmd_sn: SN24,
            exp_stat_sn: SN28,
        }),
        f,
    ));

    // §11.15 Logout Response.
    let mut f = common(0x26, false, 0, 0);
    f.extend([
        u8_at("flags (1)", 1, 0x80),
        u8_at("Response", 2, 3),
        u32_at("ITT", 16, ITT),
        u32_at("StatSN", 24, SN24),
        u32_at("ExpCmdSN", 28, SN28),
        u32_at("MaxCmdSN", 32, SN32),
        u16_at("Time2Wait", 40, 0xe5e6),
        u16_at("Time2Retain", 42, 0xe7e8),
    ]);
    cases.push((
        "Logout Response",
        Pdu::LogoutResponse(LogoutResponse {
            response: LogoutResponseCode::CleanupFailed,
            itt: ITT,
            stat_sn: SN24,
            exp_cmd_sn: SN28,
            max_cmd_sn: SN32,
            time2wait: 0xe5e6,
            time2retain: 0xe7e8,
        }),
        f,
    ));

    // §11.16 SNACK Request.
    let mut f = common(0x10, false, 0, 0);
    f.extend([
        u8_at("1 . . . Type", 1, 0x80 | 3),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("TTT or SNACK Tag", 20, TTT),
        u32_at("ExpStatSN", 28, SN28),
        u32_at("BegRun", 40, SN40),
        u32_at("RunLength", 44, SN44),
    ]);
    cases.push((
        "SNACK Request",
        Pdu::SnackRequest(SnackRequest {
            snack_type: 3,
            lun: LUN,
            itt: ITT,
            ttt_or_snack_tag: TTT,
            exp_stat_sn: SN28,
            beg_run: SN40,
            run_length: SN44,
        }),
        f,
    ));

    // §11.19 NOP-In.
    let mut f = common(0x20, false, 0, n);
    f.extend([
        u8_at("flags (1)", 1, 0x80),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("TTT", 20, TTT),
        u32_at("StatSN", 24, SN24),
        u32_at("ExpCmdSN", 28, SN28),
        u32_at("MaxCmdSN", 32, SN32),
    ]);
    cases.push((
        "NOP-In",
        Pdu::NopIn(NopIn {
            lun: LUN,
            itt: ITT,
            ttt: TTT,
            stat_sn: SN24,
            exp_cmd_sn: SN28,
            max_cmd_sn: SN32,
            data: data.clone(),
        }),
        f,
    ));

    // §11.8 Ready To Transfer.
    let mut f = common(0x31, false, 0, 0);
    f.extend([
        u8_at("flags (1)", 1, 0x80),
        u64_at("LUN", 8, LUN),
        u32_at("ITT", 16, ITT),
        u32_at("TTT", 20, TTT),
        u32_at("StatSN", 24, SN24),
        u32_at("ExpCmdSN", 28, SN28),
        u32_at("MaxCmdSN", 32, SN32),
        u32_at("R2TSN", 36, SN36),
        u32_at("Buffer Offset", 40, SN40),
        u32_at("Desired Data Transfer Length", 44, SN44),
    ]);
    cases.push((
        "R2T",
        Pdu::R2t(R2t {
            lun: LUN,
            itt: ITT,
            ttt: TTT,
            stat_sn: SN24,
            exp_cmd_sn: SN28,
            max_cmd_sn: SN32,
            r2t_sn: SN36,
            buffer_offset: SN40,
            desired_data_transfer_length: SN44,
        }),
        f,
    ));

    // §11.9 Asynchronous Message; §11.9.4 data segment as for §11.4.7.
    let mut f = common(0x32, false, 0, 2 + sense.len() + 2);
    f.extend([
        u8_at("flags (1)", 1, 0x80),
        u64_at("LUN", 8, LUN),
        u32_at("0xffffffff", 16, 0xffff_ffff),
        u32_at("StatSN", 24, SN24),
        u32_at("ExpCmdSN", 28, SN28),
        u32_at("MaxCmdSN", 32, SN32),
        u8_at("AsyncEvent", 36, 4),
        u8_at("AsyncVCode", 37, 0xf1),
        u16_at("Parameter1", 38, 0xf2f3),
        u16_at("Parameter2", 40, 0xf4f5),
        u16_at("Parameter3", 42, 0xf6f7),
        u16_at("SenseLength", 48, 18),
        bytes_at("Sense Data", 50, &sense),
        bytes_at("iSCSI Event Data", 68, &[0xe1, 0xe2]),
    ]);
    cases.push((
        "Asynchronous Message",
        Pdu::AsyncMessage(AsyncMessage {
            lun: LUN,
            stat_sn: SN24,
            exp_cmd_sn: SN28,
            max_cmd_sn: SN32,
            event: AsyncEvent::RequestRenegotiation,
            vcode: 0xf1,
            parameter1: 0xf2f3,
            parameter2: 0xf4f5,
            parameter3: 0xf6f7,
            sense: sense.clone(),
            event_data: vec![0xe1, 0xe2],
        }),
        f,
    ));

    // §11.17 Reject: the data segment is the rejected header.
    let rejected: Vec<u8> = (1..=48).collect();
    let mut f = common(0x3f, false, 0, 48);
    f.extend([
        u8_at("flags (1)", 1, 0x80),
        u8_at("Reason", 2, 0x09),
        u32_at("0xffffffff", 16, 0xffff_ffff),
        u32_at("StatSN", 24, SN24),
        u32_at("ExpCmdSN", 28, SN28),
        u32_at("MaxCmdSN", 32, SN32),
        u32_at("DataSN/R2TSN", 36, SN36),
        bytes_at("Header of the rejected PDU", 48, &rejected),
    ]);
    cases.push((
        "Reject",
        Pdu::Reject(Reject {
            reason: RejectReason::InvalidPduField,
            stat_sn: SN24,
            exp_cmd_sn: SN28,
            max_cmd_sn: SN32,
            data_sn_or_r2t_sn: SN36,
            header: rejected,
        }),
        f,
    ));

    cases
}

#[test]
fn every_pdu_field_is_at_its_rfc_7143_offset() {
    let cases = cases();
    let mut seen: Vec<Opcode> = cases.iter().map(|(_, p, _)| p.opcode()).collect();
    seen.sort_by_key(|op| *op as u8);
    seen.dedup();
    assert_eq!(seen.len(), Opcode::ALL.len(), "a PDU type has no case");

    for (what, pdu, fields) in cases {
        let wire = pdu.encode(false, false);
        let mut covered = [false; BHS_LEN];
        for field in &fields {
            let got = wire.get(field.at..field.at + field.bytes.len());
            assert_eq!(got, Some(&field.bytes[..]), "{what}: {} at byte {}", field.name, field.at);
            for c in covered.iter_mut().skip(field.at).take(field.bytes.len()) {
                assert!(!*c, "{what}: {} overlaps another field", field.name);
                *c = true;
            }
        }
        for (i, c) in covered.iter().enumerate() {
            assert!(*c || wire[i] == 0, "{what}: reserved byte {i} is {:#04x}, not 0", wire[i]);
        }
        // What the RFC table says is also what decoding reads back.
        let (back, used) = decode_frame(&wire, false, false).unwrap().unwrap();
        assert_eq!(used, wire.len(), "{what}");
        assert_eq!(back, pdu, "{what}");
    }
}

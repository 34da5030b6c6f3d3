//! Round trips of every PDU type and robustness of decoding arbitrary bytes.

use proptest::prelude::*;

use super::*;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

fn isid() -> impl Strategy<Value = Isid> {
    any::<[u8; 6]>().prop_map(Isid)
}

fn stage() -> impl Strategy<Value = LoginStage> {
    (0u8..4).prop_map(LoginStage::from_code)
}

fn attr() -> impl Strategy<Value = TaskAttribute> {
    (0u8..5).prop_map(|v| TaskAttribute::from_code(v).unwrap())
}

fn nop_out() -> impl Strategy<Value = Pdu> {
    (any::<bool>(), any::<u64>(), any::<[u32; 4]>(), bytes(300)).prop_map(|(i, lun, n, data)| {
        Pdu::NopOut(NopOut { immediate: i, lun, itt: n[0], ttt: n[1], cmd_sn: n[2], exp_stat_sn: n[3], data })
    })
}

fn nop_in() -> impl Strategy<Value = Pdu> {
    (any::<u64>(), any::<[u32; 5]>(), bytes(300)).prop_map(|(lun, n, data)| {
        Pdu::NopIn(NopIn { lun, itt: n[0], ttt: n[1], stat_sn: n[2], exp_cmd_sn: n[3], max_cmd_sn: n[4], data })
    })
}

fn scsi_command() -> impl Strategy<Value = Pdu> {
    (
        any::<[bool; 4]>(),
        attr(),
        any::<u64>(),
        (0u32..u32::MAX, any::<[u32; 3]>()),
        prop::collection::vec(any::<u8>(), 16..=MAX_CDB_LEN),
        any::<Option<u32>>(),
        bytes(300),
    )
        .prop_map(|(b, attr, lun, (itt, n), cdb, bidi, data)| {
            let [immediate, final_bit, read, mut write] = b;
            if !data.is_empty() {
                write = true;
            }
            let bidi = bidi.filter(|_| read && write);
            Pdu::ScsiCommand(ScsiCommand {
                immediate,
                final_bit,
                read,
                write,
                attr,
                lun,
                itt,
                expected_data_transfer_length: n[0],
                cmd_sn: n[1],
                exp_stat_sn: n[2],
                cdb,
                bidi_read_length: bidi,
                data,
            })
        })
}

fn scsi_response() -> impl Strategy<Value = Pdu> {
    ((0u8..3, 0u8..3), any::<(u8, u8)>(), any::<[u32; 8]>(), bytes(260), bytes(40)).prop_map(
        |((o, b), (resp, status), n, sense, response_data)| {
            Pdu::ScsiResponse(ScsiResponse {
                overflow: o == 1,
                underflow: o == 2,
                bidi_read_overflow: b == 1,
                bidi_read_underflow: b == 2,
                response: ServiceResponse::from_code(resp),
                status,
                itt: n[0],
                snack_tag: n[1],
                stat_sn: n[2],
                exp_cmd_sn: n[3],
                max_cmd_sn: n[4],
                exp_data_sn: n[5],
                bidi_read_residual_count: n[6],
                residual_count: n[7],
                sense,
                response_data,
            })
        },
    )
}

fn tmf_request() -> impl Strategy<Value = Pdu> {
    (any::<bool>(), any::<u8>(), any::<u64>(), any::<[u32; 6]>()).prop_map(|(i, f, lun, n)| {
        Pdu::TaskMgmtRequest(TaskMgmtRequest {
            immediate: i,
            function: TaskMgmtFunction::from_code(f),
            lun,
            itt: n[0],
            referenced_task_tag: n[1],
            cmd_sn: n[2],
            exp_stat_sn: n[3],
            ref_cmd_sn: n[4],
            exp_data_sn: n[5],
        })
    })
}

fn tmf_response() -> impl Strategy<Value = Pdu> {
    (any::<u8>(), any::<[u32; 4]>()).prop_map(|(r, n)| {
        Pdu::TaskMgmtResponse(TaskMgmtResponse {
            response: TmfResponseCode::from_code(r),
            itt: n[0],
            stat_sn: n[1],
            exp_cmd_sn: n[2],
            max_cmd_sn: n[3],
        })
    })
}

fn login_request() -> impl Strategy<Value = Pdu> {
    (any::<[bool; 2]>(), stage(), stage(), any::<(u8, u8, u16, u16)>(), isid(), any::<[u32; 3]>(), bytes(300)).prop_map(
        |(b, csg, nsg, (vmax, vmin, tsih, cid), isid, n, data)| {
            Pdu::LoginRequest(LoginRequest {
                transit: b[0],
                continue_bit: b[1],
                csg,
                nsg,
                version_max: vmax,
                version_min: vmin,
                isid,
                tsih,
                itt: n[0],
                cid,
                cmd_sn: n[1],
                exp_stat_sn: n[2],
                data,
            })
        },
    )
}

fn login_response() -> impl Strategy<Value = Pdu> {
    (any::<[bool; 2]>(), stage(), stage(), any::<(u8, u8, u16, u8, u8)>(), isid(), any::<[u32; 4]>(), bytes(300))
        .prop_map(|(b, csg, nsg, (vmax, vact, tsih, sc, sd), isid, n, data)| {
            Pdu::LoginResponse(LoginResponse {
                transit: b[0],
                continue_bit: b[1],
                csg,
                nsg,
                version_max: vmax,
                version_active: vact,
                isid,
                tsih,
                itt: n[0],
                stat_sn: n[1],
                exp_cmd_sn: n[2],
                max_cmd_sn: n[3],
                status_class: sc,
                status_detail: sd,
                data,
            })
        })
}

fn text_request() -> impl Strategy<Value = Pdu> {
    (any::<bool>(), 0u8..3, any::<u64>(), any::<[u32; 4]>(), bytes(300)).prop_map(|(i, fc, lun, n, data)| {
        Pdu::TextRequest(TextRequest {
            immediate: i,
            final_bit: fc == 1,
            continue_bit: fc == 2,
            lun,
            itt: n[0],
            ttt: n[1],
            cmd_sn: n[2],
            exp_stat_sn: n[3],
            data,
        })
    })
}

fn text_response() -> impl Strategy<Value = Pdu> {
    (0u8..3, any::<u64>(), any::<[u32; 5]>(), bytes(300)).prop_map(|(fc, lun, n, data)| {
        Pdu::TextResponse(TextResponse {
            final_bit: fc == 1,
            continue_bit: fc == 2,
            lun,
            itt: n[0],
            ttt: n[1],
            stat_sn: n[2],
            exp_cmd_sn: n[3],
            max_cmd_sn: n[4],
            data,
        })
    })
}

fn data_out() -> impl Strategy<Value = Pdu> {
    (any::<bool>(), any::<u64>(), any::<[u32; 5]>(), bytes(600)).prop_map(|(f, lun, n, data)| {
        Pdu::DataOut(DataOut {
            final_bit: f,
            lun,
            itt: n[0],
            ttt: n[1],
            exp_stat_sn: n[2],
            data_sn: n[3],
            buffer_offset: n[4],
            data,
        })
    })
}

fn data_in() -> impl Strategy<Value = Pdu> {
    (any::<[bool; 2]>(), 0u8..3, any::<Option<u8>>(), any::<u64>(), any::<[u32; 8]>(), bytes(600)).prop_map(
        |(b, ou, status, lun, n, data)| {
            Pdu::DataIn(DataIn {
                final_bit: b[0] || status.is_some(),
                acknowledge: b[1],
                overflow: ou == 1,
                underflow: ou == 2,
                status,
                lun,
                itt: n[0],
                ttt: n[1],
                stat_sn: n[2],
                exp_cmd_sn: n[3],
                max_cmd_sn: n[4],
                data_sn: n[5],
                buffer_offset: n[6],
                residual_count: n[7],
                data: data.into(),
            })
        },
    )
}

fn logout_request() -> impl Strategy<Value = Pdu> {
    (any::<bool>(), any::<u8>(), any::<u16>(), any::<[u32; 3]>()).prop_map(|(i, r, cid, n)| {
        Pdu::LogoutRequest(LogoutRequest {
            immediate: i,
            reason: LogoutReason::from_code(r),
            itt: n[0],
            cid,
            cmd_sn: n[1],
            exp_stat_sn: n[2],
        })
    })
}

fn logout_response() -> impl Strategy<Value = Pdu> {
    (any::<u8>(), any::<[u32; 4]>(), any::<(u16, u16)>()).prop_map(|(r, n, (w, t))| {
        Pdu::LogoutResponse(LogoutResponse {
            response: LogoutResponseCode::from_code(r),
            itt: n[0],
            stat_sn: n[1],
            exp_cmd_sn: n[2],
            max_cmd_sn: n[3],
            time2wait: w,
            time2retain: t,
        })
    })
}

fn snack() -> impl Strategy<Value = Pdu> {
    (0u8..16, any::<u64>(), any::<[u32; 5]>()).prop_map(|(t, lun, n)| {
        Pdu::SnackRequest(SnackRequest {
            snack_type: t,
            lun,
            itt: n[0],
            ttt_or_snack_tag: n[1],
            exp_stat_sn: n[2],
            beg_run: n[3],
            run_length: n[4],
        })
    })
}

fn r2t() -> impl Strategy<Value = Pdu> {
    (any::<u64>(), any::<[u32; 8]>()).prop_map(|(lun, n)| {
        Pdu::R2t(R2t {
            lun,
            itt: n[0],
            ttt: n[1],
            stat_sn: n[2],
            exp_cmd_sn: n[3],
            max_cmd_sn: n[4],
            r2t_sn: n[5],
            buffer_offset: n[6],
            desired_data_transfer_length: n[7],
        })
    })
}

fn async_message() -> impl Strategy<Value = Pdu> {
    (any::<u64>(), any::<[u32; 3]>(), any::<(u8, u8, u16, u16, u16)>(), bytes(100), bytes(100)).prop_map(
        |(lun, n, (e, v, p1, p2, p3), sense, event_data)| {
            Pdu::AsyncMessage(AsyncMessage {
                lun,
                stat_sn: n[0],
                exp_cmd_sn: n[1],
                max_cmd_sn: n[2],
                event: AsyncEvent::from_code(e),
                vcode: v,
                parameter1: p1,
                parameter2: p2,
                parameter3: p3,
                sense,
                event_data,
            })
        },
    )
}

fn reject() -> impl Strategy<Value = Pdu> {
    (any::<u8>(), any::<[u32; 4]>(), bytes(100)).prop_map(|(r, n, header)| {
        Pdu::Reject(Reject {
            reason: RejectReason::from_code(r),
            stat_sn: n[0],
            exp_cmd_sn: n[1],
            max_cmd_sn: n[2],
            data_sn_or_r2t_sn: n[3],
            header,
        })
    })
}

fn any_pdu() -> impl Strategy<Value = Pdu> {
    prop_oneof![
        nop_out(),
        nop_in(),
        scsi_command(),
        scsi_response(),
        tmf_request(),
        tmf_response(),
        login_request(),
        login_response(),
        text_request(),
        text_response(),
        data_out(),
        data_in(),
        logout_request(),
        logout_response(),
        snack(),
        r2t(),
        async_message(),
        reject(),
    ]
}

/// Decodes one encoded PDU the way a stream reader would, in two steps.
fn decode_two_step(wire: &[u8], hd: bool, dd: bool) -> Result<Pdu, PduError> {
    let head: &[u8; BHS_LEN] = wire.first_chunk().expect("at least a BHS");
    let bhs = decode_bhs(head)?;
    assert_eq!(wire.len(), BHS_LEN + bhs.remaining_length(hd, dd));
    let ahs_end = BHS_LEN + bhs.total_ahs_length();
    let mut pos = ahs_end;
    if hd {
        crate::digest::verify_header_digest(&wire[..ahs_end], &wire[pos..pos + 4])?;
        pos += 4;
    }
    let data = &wire[pos..pos + bhs.padded_data_length()];
    if dd && !data.is_empty() {
        let end = pos + data.len();
        crate::digest::verify_data_digest(data, &wire[end..end + 4])?;
    }
    Pdu::decode(&bhs, &wire[BHS_LEN..ahs_end], data)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn round_trip(pdu in any_pdu(), hd in any::<bool>(), dd in any::<bool>()) {
        let wire = pdu.encode(hd, dd);
        prop_assert_eq!(wire.len() % 4, 0);
        let back = decode_two_step(&wire, hd, dd).unwrap();
        prop_assert_eq!(&back, &pdu);
        let (framed, used) = decode_frame(&wire, hd, dd).unwrap().unwrap();
        prop_assert_eq!(used, wire.len());
        prop_assert_eq!(&framed, &pdu);
        // A frame cut short is "need more", never an error or a panic.
        let cut = &wire[..wire.len() - 1];
        prop_assert!(matches!(decode_frame(cut, hd, dd), Ok(None)));
    }

    #[test]
    fn corrupted_digest_is_detected(pdu in any_pdu(), flip in any::<usize>()) {
        let mut wire = pdu.encode(true, true);
        let i = flip % wire.len();
        wire[i] ^= 0x01;
        // Flipping one bit anywhere is either caught by a digest or, when
        // it hits the framing, yields an incomplete or failed decode.
        let decoded = decode_frame(&wire, true, true);
        prop_assert!(!matches!(decoded, Ok(Some(_))), "undetected corruption: {:?}", decoded);
    }

    #[test]
    fn random_bytes_never_panic(buf in prop::collection::vec(any::<u8>(), 0..600),
                                hd in any::<bool>(), dd in any::<bool>()) {
        let _ = decode_frame(&buf, hd, dd);
        if let Some(head) = buf.first_chunk::<BHS_LEN>() {
            let bhs = decode_bhs(head).unwrap();
            let rest = &buf[BHS_LEN..];
            let ahs_len = bhs.total_ahs_length().min(rest.len());
            let _ = Pdu::decode(&bhs, &rest[..ahs_len], &rest[ahs_len..]);
        }
    }

    #[test]
    fn random_headers_with_exact_lengths_never_panic(
        head in any::<[u8; BHS_LEN]>(),
        fill in any::<u8>(),
    ) {
        let mut head = head;
        head[5] = 0; // keep data segments small
        let bhs = decode_bhs(&head).unwrap();
        let ahs = vec![fill; bhs.total_ahs_length()];
        let data = vec![fill; bhs.data_segment_length()];
        if let Ok(pdu) = Pdu::decode(&bhs, &ahs, &data) {
            // Whatever decodes must encode and decode to itself.
            let wire = pdu.encode(false, false);
            let (again, _) = decode_frame(&wire, false, false).unwrap().unwrap();
            prop_assert_eq!(again, pdu);
        }
    }
}

#[test]
fn unknown_opcode_is_command_not_supported() {
    let mut head = [0u8; BHS_LEN];
    head[0] = 0x1c;
    let bhs = decode_bhs(&head).unwrap();
    let err = Pdu::decode(&bhs, &[], &[]).unwrap_err();
    assert_eq!(err, PduError::UnsupportedOpcode(0x1c));
    assert_eq!(err.reaction(), ErrorReaction::Reject(RejectReason::CommandNotSupported));
}

#[test]
fn extended_cdb_uses_ahs() {
    let cmd = ScsiCommand {
        immediate: false,
        final_bit: true,
        read: true,
        write: false,
        attr: TaskAttribute::Simple,
        lun: 0,
        itt: 7,
        expected_data_transfer_length: 512,
        cmd_sn: 1,
        exp_stat_sn: 1,
        cdb: (0..32).collect(),
        bidi_read_length: None,
        data: Vec::new(),
    };
    let wire = Pdu::ScsiCommand(cmd.clone()).encode(false, false);
    // 16 extra CDB bytes + 4 header bytes = 20 bytes = 5 words.
    assert_eq!(wire[4], 5);
    assert_eq!(&wire[48..52], &[0, 17, 1, 0]);
    let (back, _) = decode_frame(&wire, false, false).unwrap().unwrap();
    assert_eq!(back, Pdu::ScsiCommand(cmd));
}

#[test]
fn bad_ahs_is_rejected_not_panicking() {
    let mut head = [0u8; BHS_LEN];
    head[0] = 0x01;
    head[1] = 0x81;
    head[4] = 1;
    let bhs = decode_bhs(&head).unwrap();
    for ahs in [[0, 0, 1, 0], [0, 9, 1, 0], [0, 1, 9, 0], [0, 5, 2, 0]] {
        let err = Pdu::decode(&bhs, &ahs, &[]).unwrap_err();
        assert!(matches!(err, PduError::MalformedAhs(_)), "{ahs:?}: {err}");
        assert_eq!(err.reaction(), ErrorReaction::Reject(RejectReason::InvalidPduField));
    }
}

#[test]
fn reserved_task_attribute_is_invalid_field() {
    let mut head = [0u8; BHS_LEN];
    head[0] = 0x01;
    head[1] = 0x85;
    let bhs = decode_bhs(&head).unwrap();
    assert!(matches!(Pdu::decode(&bhs, &[], &[]), Err(PduError::InvalidField { field: "ATTR", .. })));
}

#[test]
fn snack_is_rejected_at_erl0() {
    let snack = Pdu::SnackRequest(SnackRequest {
        snack_type: 1,
        lun: 0,
        itt: 1,
        ttt_or_snack_tag: 0,
        exp_stat_sn: 0,
        beg_run: 0,
        run_length: 0,
    });
    assert_eq!(snack.reject_at_target_erl0(), Some(RejectReason::ProtocolError));
    let reject = Reject::of(
        &decode_bhs(snack.encode(false, false).first_chunk().unwrap()).unwrap(),
        RejectReason::ProtocolError,
    );
    assert_eq!(reject.header.len(), BHS_LEN);
}

#[test]
fn data_digest_error_keeps_framing() {
    let pdu = Pdu::DataOut(DataOut {
        final_bit: true,
        lun: 0,
        itt: 1,
        ttt: 2,
        exp_stat_sn: 3,
        data_sn: 0,
        buffer_offset: 0,
        data: vec![1, 2, 3, 4, 5],
    });
    let mut wire = pdu.encode(true, true);
    let n = wire.len();
    wire[n - 6] ^= 0xff; // inside the padded data
    let err = decode_frame(&wire, true, true).unwrap_err();
    assert!(matches!(err, PduError::DataDigest { .. }));
    assert_eq!(frame_length(&wire, true, true).unwrap(), Some(n));
}

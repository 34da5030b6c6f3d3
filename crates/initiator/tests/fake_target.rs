//! The initiator against a scripted target on a real socket: what Lunar's
//! own server rarely or never does (a closed CmdSN window, a NOP-In ping,
//! several R2Ts and Data-In PDUs with phase collapse and a residual, a
//! StatSN gap) is played here PDU by PDU.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use lunar_initiator::{Command, Config, Error, Residual, Session, Status};
use lunar_iscsi::keys::{self, KeyValue};
use lunar_iscsi::pdu::{
    decode_bhs, decode_frame, DataIn, LoginResponse, LoginStage, NopIn, Pdu, R2t, ScsiResponse, ServiceResponse,
    BHS_LEN, RESERVED_TAG,
};

const IQN: &str = "iqn.2026-11.dev.lunar:fake";

fn read_pdu(s: &mut TcpStream) -> Pdu {
    let mut frame = vec![0u8; BHS_LEN];
    s.read_exact(&mut frame).expect("read BHS");
    let bhs = decode_bhs(frame.as_slice().try_into().unwrap()).unwrap();
    frame.resize(BHS_LEN + bhs.remaining_length(false, false), 0);
    s.read_exact(&mut frame[BHS_LEN..]).expect("read PDU");
    decode_frame(&frame, false, false).unwrap().unwrap().0
}

fn write_pdu(s: &mut TcpStream, pdu: Pdu) {
    s.write_all(&pdu.encode(false, false)).unwrap();
}

/// Plays the target's side; returns what it saw, for the test to check.
fn target(mut s: TcpStream) -> Vec<String> {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut seen = Vec::new();
    let mut stat_sn = 100u32;
    // Login: security stage, then operational; the window starts closed
    // (MaxCmdSN = ExpCmdSN - 1).
    let mut offers = Vec::new();
    for stage in [LoginStage::Security, LoginStage::Operational] {
        let Pdu::LoginRequest(req) = read_pdu(&mut s) else { panic!("not a login request") };
        assert_eq!(req.csg, stage);
        let pairs = keys::parse(&req.data).unwrap();
        let mut answer = Vec::new();
        for kv in &pairs {
            let v = match kv.key.as_str() {
                "AuthMethod" | "HeaderDigest" | "DataDigest" => "None",
                "InitialR2T" => "Yes",
                "ImmediateData" => "No",
                "MaxBurstLength" => "8192",
                "FirstBurstLength" => "4096",
                "InitiatorName" | "TargetName" | "SessionType" | "MaxRecvDataSegmentLength" => continue,
                _ => kv.value.as_str(),
            };
            answer.push(KeyValue::new(kv.key.clone(), v));
        }
        if stage == LoginStage::Operational {
            answer.push(KeyValue::new("MaxRecvDataSegmentLength", "4096"));
            offers = pairs.iter().map(|kv| format!("{}={}", kv.key, kv.value)).collect();
        }
        write_pdu(
            &mut s,
            Pdu::LoginResponse(LoginResponse {
                transit: true,
                continue_bit: false,
                csg: stage,
                nsg: if stage == LoginStage::Security { LoginStage::Operational } else { LoginStage::FullFeature },
                version_max: 0,
                version_active: 0,
                isid: req.isid,
                tsih: if stage == LoginStage::Security { 0 } else { 7 },
                itt: req.itt,
                stat_sn,
                exp_cmd_sn: 10,
                max_cmd_sn: 9,
                status_class: 0,
                status_detail: 0,
                data: keys::encode(&answer),
            }),
        );
    }
    seen.push(format!("offers {}", offers.join(" ")));
    stat_sn += 1;
    // A ping; the answer must echo TTT and data, immediate, with CmdSN 10.
    write_pdu(
        &mut s,
        Pdu::NopIn(NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt: 0x1234,
            stat_sn,
            exp_cmd_sn: 10,
            max_cmd_sn: 9,
            data: b"ping".to_vec(),
        }),
    );
    let Pdu::NopOut(n) = read_pdu(&mut s) else { panic!("no NOP-Out answer") };
    assert_eq!((n.itt, n.ttt, n.immediate, n.cmd_sn, n.exp_stat_sn), (RESERVED_TAG, 0x1234, true, 10, stat_sn));
    assert_eq!(n.data, b"ping");
    seen.push("ping answered".into());
    // Open the window by one command (a NOP-In that wants no answer).
    write_pdu(
        &mut s,
        Pdu::NopIn(NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt: RESERVED_TAG,
            stat_sn,
            exp_cmd_sn: 10,
            max_cmd_sn: 10,
            data: Vec::new(),
        }),
    );
    // The write: 10000 bytes, no immediate data, InitialR2T=Yes: two R2Ts.
    let Pdu::ScsiCommand(c) = read_pdu(&mut s) else { panic!("no SCSI command") };
    assert_eq!((c.cmd_sn, c.write, c.final_bit, c.data.len()), (10, true, true, 0));
    assert_eq!(c.expected_data_transfer_length, 10_000);
    seen.push(format!("write CmdSN {}", c.cmd_sn));
    let mut received = vec![0u8; 10_000];
    for (r2t_sn, (offset, len)) in [(0u32, 8192u32), (8192, 1808)].into_iter().enumerate() {
        write_pdu(
            &mut s,
            Pdu::R2t(R2t {
                lun: c.lun,
                itt: c.itt,
                ttt: 0x100 + r2t_sn as u32,
                stat_sn,
                exp_cmd_sn: 11,
                max_cmd_sn: 10,
                r2t_sn: r2t_sn as u32,
                buffer_offset: offset,
                desired_data_transfer_length: len,
            }),
        );
        let mut got = 0;
        let mut pdus = Vec::new();
        while got < len {
            let Pdu::DataOut(d) = read_pdu(&mut s) else { panic!("no Data-Out") };
            assert_eq!((d.itt, d.ttt, d.buffer_offset), (c.itt, 0x100 + r2t_sn as u32, offset + got));
            assert!(d.data.len() <= 4096, "Data-Out over the target's MaxRecvDataSegmentLength");
            received[d.buffer_offset as usize..][..d.data.len()].copy_from_slice(&d.data);
            got += d.data.len() as u32;
            assert_eq!(d.final_bit, got == len);
            pdus.push(format!("{}@{}#{}", d.data.len(), d.buffer_offset, d.data_sn));
        }
        seen.push(format!("R2T {r2t_sn}: {}", pdus.join(" ")));
    }
    assert!(received.iter().enumerate().all(|(i, b)| *b == (i % 251) as u8), "write data differs");
    let good = |itt: u32, stat_sn: u32, exp_cmd_sn: u32| {
        Pdu::ScsiResponse(ScsiResponse {
            bidi_read_overflow: false,
            bidi_read_underflow: false,
            overflow: false,
            underflow: false,
            response: ServiceResponse::CommandCompleted,
            status: 0,
            itt,
            snack_tag: 0,
            stat_sn,
            exp_cmd_sn,
            max_cmd_sn: exp_cmd_sn + 8,
            exp_data_sn: 0,
            bidi_read_residual_count: 0,
            residual_count: 0,
            sense: Vec::new(),
            response_data: Vec::new(),
        })
    };
    write_pdu(&mut s, good(c.itt, stat_sn, 11));
    stat_sn += 1;
    // The read: 8192 expected, 6000 sent in two Data-In, status in the last.
    let Pdu::ScsiCommand(c) = read_pdu(&mut s) else { panic!("no SCSI command") };
    assert_eq!((c.cmd_sn, c.read, c.expected_data_transfer_length), (11, true, 8192));
    let data: Vec<u8> = (0..6000).map(|i| (i % 13) as u8).collect();
    for (sn, (offset, end)) in [(0usize, 4096usize), (4096, 6000)].into_iter().enumerate() {
        let last = end == 6000;
        write_pdu(
            &mut s,
            Pdu::DataIn(DataIn {
                final_bit: last,
                acknowledge: false,
                overflow: false,
                underflow: last,
                status: last.then_some(0),
                lun: c.lun,
                itt: c.itt,
                ttt: RESERVED_TAG,
                stat_sn: if last { stat_sn } else { 0 },
                exp_cmd_sn: 12,
                max_cmd_sn: 20,
                data_sn: sn as u32,
                buffer_offset: offset as u32,
                residual_count: if last { 2192 } else { 0 },
                data: data[offset..end].to_vec().into(),
            }),
        );
    }
    stat_sn += 1;
    seen.push("read answered in 2 Data-In".into());
    // Then a response whose StatSN skips one: a lost status at ERL 0.
    let Pdu::ScsiCommand(c) = read_pdu(&mut s) else { panic!("no SCSI command") };
    write_pdu(&mut s, good(c.itt, stat_sn + 1, 13));
    seen.push("StatSN gap sent".into());
    // The initiator closes the connection.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    seen
}

#[test]
fn scripted_target() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let fake = std::thread::spawn(move || target(l.accept().unwrap().0));
    let config = Config { timeout: Duration::from_secs(20), ..Config::new(IQN) };
    let s = Session::login(addr, &config).unwrap();
    let p = s.params().clone();
    assert!(p.initial_r2t && !p.immediate_data);
    assert_eq!((p.max_burst_length, p.first_burst_length, p.target_max_recv_data_segment_length), (8192, 4096, 4096));
    assert_eq!(s.tsih(), 7);
    // The window is closed until the target opens it (after the ping).
    let data: Vec<u8> = (0..10_000).map(|i| (i % 251) as u8).collect();
    let w = s.submit(Command::writing(0, vec![0x8a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 20, 0, 0], data)).unwrap();
    assert!(s.wait(w).unwrap().is_good());
    assert_eq!(s.pings_answered(), 1);
    let r = s.execute(Command::reading(0, vec![0x88; 16], 8192)).unwrap();
    assert_eq!((r.status, r.data.len(), r.residual), (Status::GOOD, 6000, Residual::Underflow(2192)));
    assert!(r.data.iter().enumerate().all(|(i, b)| *b == (i % 13) as u8));
    // A StatSN gap is a protocol error: the session ends, the command fails.
    let e = s.execute(Command::test_unit_ready(0)).unwrap_err();
    assert!(matches!(&e, Error::Closed(m) if m.contains("StatSN")), "{e}");
    drop(s);
    let seen = fake.join().unwrap();
    for l in &seen {
        println!("target: {l}");
    }
    assert!(seen[0].contains("MaxRecvDataSegmentLength=262144") && seen[0].contains("ErrorRecoveryLevel=0"));
}

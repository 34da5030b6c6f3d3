use std::sync::Arc;

use super::*;
use crate::sense::{self, SenseKey};
use crate::test_util::*;
use crate::{Backend, DiskConfig};

fn xcopy_cdb(len: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x83;
    c[10..14].copy_from_slice(&len.to_be_bytes());
    c
}

fn rcr_cdb(sa: u8, list_id: u8, alloc: u32) -> Vec<u8> {
    let mut c = vec![0u8; 16];
    c[0] = 0x84;
    c[1] = sa;
    c[2] = list_id;
    c[10..14].copy_from_slice(&alloc.to_be_bytes());
    c
}

/// An identification CSCD descriptor naming `d`.
fn cscd(d: &Disk) -> Vec<u8> {
    let mut c = vec![0u8; 32];
    c[0] = IDENTIFICATION_CSCD;
    let desig = d.copy_designator();
    c[4..4 + desig.len()].copy_from_slice(&desig);
    c[29..32].copy_from_slice(&d.block_size().to_be_bytes()[1..]);
    c
}

fn b2b(src: u16, dst: u16, blocks: u16, src_lba: u64, dst_lba: u64) -> Vec<u8> {
    let mut s = vec![0u8; 28];
    s[0] = BLOCK_TO_BLOCK;
    s[3] = 0x18;
    s[4..6].copy_from_slice(&src.to_be_bytes());
    s[6..8].copy_from_slice(&dst.to_be_bytes());
    s[10..12].copy_from_slice(&blocks.to_be_bytes());
    s[12..20].copy_from_slice(&src_lba.to_be_bytes());
    s[20..28].copy_from_slice(&dst_lba.to_be_bytes());
    s
}

/// A parameter list: header (LIST ID USAGE `usage`), then the descriptors.
fn list<T: AsRef<[u8]>, S: AsRef<[u8]>>(list_id: u8, usage: u8, cscds: &[T], segs: &[S]) -> Vec<u8> {
    let t: Vec<u8> = cscds.iter().flat_map(|c| c.as_ref().to_vec()).collect();
    let s: Vec<u8> = segs.iter().flat_map(|c| c.as_ref().to_vec()).collect();
    let mut d = vec![0u8; 16];
    d[0] = list_id;
    d[1] = usage << 3;
    d[2..4].copy_from_slice(&(t.len() as u16).to_be_bytes());
    d[8..12].copy_from_slice(&(s.len() as u32).to_be_bytes());
    d.extend(t);
    d.extend(s);
    d
}

fn xcopy(d: &Disk, data: Vec<u8>, ctx: &ExecContext) -> Result<Vec<u8>, ScsiError> {
    run_ctx(d, &xcopy_cdb(data.len() as u32), data, ctx)
}

fn named(blocks: u64, naa_id: u64) -> Disk {
    disk_with(blocks, DiskConfig { naa_id, ..Default::default() })
}

fn write(d: &Disk, lba: u32, data: Vec<u8>) {
    let blocks = (data.len() / 512) as u16;
    run_data(d, &cdb10(0x2A, 0, lba, blocks), data).unwrap();
}

fn read(d: &Disk, lba: u32, blocks: u16) -> Vec<u8> {
    run(d, &cdb10(0x28, 0, lba, blocks)).unwrap()
}

#[test]
fn decodes() {
    assert_eq!(Command::decode(&xcopy_cdb(76)), Ok(Command::ExtendedCopy(ExtendedCopy { param_len: 76 })));
    let r = Command::decode(&rcr_cdb(0x00, 7, 1024)).unwrap();
    assert_eq!(
        r,
        Command::ReceiveCopyResults(ReceiveCopyResults {
            action: CopyResultsAction::CopyStatus,
            list_id: 7,
            alloc_len: 1024
        })
    );
    assert_eq!(r.direction(), crate::DataDirection::FromDevice);
    assert!(!r.is_medium_access());
    assert_eq!(Command::decode(&rcr_cdb(0x01, 0, 1024)), Err(ScsiError::field(1, 4)), "RECEIVE DATA");
    assert_eq!(Command::decode(&rcr_cdb(0x03, 1, 1024)), Err(ScsiError::field(2, 0)), "list id with OP PARAMS");
    let x = Command::decode(&xcopy_cdb(76)).unwrap();
    assert_eq!((x.data_out_len(512), x.direction()), (76, crate::DataDirection::ToDevice));
    assert_eq!(x.name(), "EXTENDED COPY");
    let mut bad = xcopy_cdb(76);
    bad[2] = 1;
    assert_eq!(Command::decode(&bad), Err(ScsiError::field(2, 0)));
}

#[test]
fn copies_within_the_unit_and_holds_status() {
    let d = disk(1000);
    let data = pattern(8 * 512, 3);
    write(&d, 0, data.clone());
    let ctx = ExecContext::default();
    let l = list(1, 0b00, &[cscd(&d)], &[b2b(0, 0, 8, 0, 900)]);
    assert_eq!(xcopy(&d, l, &ctx), Ok(vec![]));
    assert_eq!(read(&d, 900, 8), data);
    // Allocation length cuts the data (and what was not returned stays held).
    assert_eq!(run(&d, &rcr_cdb(0x00, 1, 4)).unwrap().len(), 4);
    let st = run(&d, &rcr_cdb(0x00, 1, 1024)).unwrap();
    assert_eq!(&st[..4], &8u32.to_be_bytes());
    assert_eq!(st[4], 0x01, "completed without error");
    assert_eq!(&st[5..7], &1u16.to_be_bytes(), "segments processed");
    assert_eq!((st[7], &st[8..12]), (0, &(8u32 * 512).to_be_bytes()[..]));
    // Returned whole: discarded.
    assert_eq!(run(&d, &rcr_cdb(0x00, 1, 1024)), Err(ScsiError::field_byte(2)));
    // List id 2 was never used; list id 3 with LIST ID USAGE 10b is not held.
    assert_eq!(run(&d, &rcr_cdb(0x00, 2, 1024)), Err(ScsiError::field_byte(2)));
    assert_eq!(xcopy(&d, list(3, 0b10, &[cscd(&d)], &[b2b(0, 0, 1, 0, 1)]), &ctx), Ok(vec![]));
    assert_eq!(run(&d, &rcr_cdb(0x00, 3, 1024)), Err(ScsiError::field_byte(2)));
    // LIST ID USAGE 11b: no list identifier.
    assert_eq!(xcopy(&d, list(0, 0b11, &[cscd(&d)], &[b2b(0, 0, 1, 0, 1)]), &ctx), Ok(vec![]));
}

#[test]
fn failed_copy_is_held_with_error_and_per_nexus() {
    let d = disk(1000);
    let a = ExecContext { nexus: Some(Nexus::new("iqn.a,i,0x1", 1)), ..Default::default() };
    let b = ExecContext { nexus: Some(Nexus::new("iqn.b,i,0x1", 1)), ..Default::default() };
    let l = list(5, 0b00, &[cscd(&d)], &[b2b(0, 0, 1, 0, 1), b2b(0, 0, 8, 0, 999)]);
    assert_eq!(xcopy(&d, l, &a), Err(ScsiError::CopyAborted(CopyAbort::TargetNotReachable)));
    let st = run_ctx(&d, &rcr_cdb(0x00, 5, 8), vec![], &a).unwrap();
    assert_eq!((st[4], st[6]), (0x02, 1), "completed with error after one segment");
    assert_eq!(run_ctx(&d, &rcr_cdb(0x00, 5, 1024), vec![], &b), Err(ScsiError::field_byte(2)));
    d.nexus_lost(a.nexus.as_ref().unwrap());
    assert_eq!(run_ctx(&d, &rcr_cdb(0x00, 5, 1024), vec![], &a), Err(ScsiError::field_byte(2)));
}

/// The events after which held copy status is discarded (SPC-2 7.14.2):
/// returned whole, asked for with ALLOCATION LENGTH 0, replaced by another
/// EXTENDED COPY with the same list identifier, a logical unit reset, and
/// (above) the loss of the nexus.
#[test]
fn held_status_is_discarded_when_the_standard_says() {
    let d = disk(1000);
    let ctx = ExecContext::default();
    let ok = |id| list(id, 0b00, &[cscd(&d)], &[b2b(0, 0, 1, 0, 1)]);
    let status = |id, alloc| run(&d, &rcr_cdb(0x00, id, alloc));
    let gone = Err(ScsiError::field_byte(2));
    for id in [1, 2, 3] {
        assert_eq!(xcopy(&d, ok(id), &ctx), Ok(vec![]));
    }
    // Partial reads keep it; the whole of it (12 bytes) discards it.
    assert_eq!(status(1, 11).unwrap().len(), 11);
    assert_eq!(status(1, 12).unwrap()[4], 0x01);
    assert_eq!(status(1, 12), gone);
    // ALLOCATION LENGTH 0: nothing returned, and discarded.
    assert_eq!(status(2, 0), Ok(vec![]));
    assert_eq!(status(2, 1024), gone);
    // A new EXTENDED COPY with the same list identifier replaces it, even
    // one that is not to be held (LIST ID USAGE 10b), or that fails.
    assert_eq!(xcopy(&d, list(3, 0b10, &[cscd(&d)], &[b2b(0, 0, 1, 0, 1)]), &ctx), Ok(vec![]));
    assert_eq!(status(3, 1024), gone);
    assert_eq!(xcopy(&d, ok(3), &ctx), Ok(vec![]));
    let beyond = list(3, 0b00, &[cscd(&d)], &[b2b(0, 0, 8, 0, 999)]);
    assert_eq!(xcopy(&d, beyond, &ctx), Err(ScsiError::CopyAborted(CopyAbort::TargetNotReachable)));
    assert_eq!(status(3, 1024).unwrap()[4], 0x02, "the failed copy's status replaced the good one");
    // A logical unit reset discards everything held.
    assert_eq!(xcopy(&d, ok(4), &ctx), Ok(vec![]));
    assert_eq!(xcopy(&d, ok(5), &ctx), Ok(vec![]));
    d.discard_copy_results();
    assert_eq!(status(4, 1024), gone);
    assert_eq!(status(5, 1024), gone);
}

/// While a copy runs, COPY STATUS of its list identifier says so, and
/// another EXTENDED COPY with that list identifier on the same nexus is
/// refused with OPERATION IN PROGRESS (another nexus may use it).
#[test]
fn a_copy_in_progress_is_reported_and_its_list_id_is_busy() {
    let fault = Arc::new(lunar_block::FaultBackend::new(Backend::mem(1000 * 512)));
    let d = Disk::new(DiskConfig::default(), Backend::Fault(fault.clone()));
    let a = ExecContext { nexus: Some(Nexus::new("iqn.a,i,0x1", 1)), ..Default::default() };
    let b = ExecContext { nexus: Some(Nexus::new("iqn.b,i,0x1", 1)), ..Default::default() };
    let two = list(7, 0b00, &[cscd(&d)], &[b2b(0, 0, 1, 0, 1), b2b(0, 0, 1, 2, 3)]);
    let cmd = Command::decode(&xcopy_cdb(two.len() as u32)).unwrap();
    fault.hold_writes(true);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let status = |ctx: &ExecContext| {
        let ctx = ctx.clone();
        let d = &d;
        async move { d.execute(&Command::decode(&rcr_cdb(0x00, 7, 1024)).unwrap(), vec![], &ctx).await }
    };
    rt.block_on(async {
        let running = d.execute(&cmd, two.clone(), &a);
        tokio::pin!(running);
        // Poll the copy until it waits for its first (held) write.
        assert!(futures_poll_once(running.as_mut()).await.is_none());
        let st = status(&a).await.unwrap();
        assert_eq!((st[4], st[6]), (0x00, 0), "in progress, no segment done yet");
        assert_eq!(status(&a).await.unwrap()[4], 0x00, "not discarded");
        let again = Command::decode(&xcopy_cdb(two.len() as u32)).unwrap();
        let busy = d.execute(&again, two.clone(), &a).await;
        assert_eq!(busy, Err(ScsiError::OperationInProgress));
        assert_eq!(busy.unwrap_err().sense().code(), sense::OPERATION_IN_PROGRESS);
        // Another nexus's list identifier 7 is its own.
        assert_eq!(status(&b).await, Err(ScsiError::field_byte(2)));
        fault.hold_writes(false);
        assert_eq!(running.await, Ok(vec![]));
    });
    let st = run_ctx(&d, &rcr_cdb(0x00, 7, 1024), vec![], &a).unwrap();
    assert_eq!((st[4], st[6]), (0x01, 2), "completed, two segments");
}

/// Polls `f` once: its output if it is ready.
async fn futures_poll_once<F: std::future::Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| match std::pin::Pin::new(&mut f).poll(cx) {
        std::task::Poll::Ready(v) => std::task::Poll::Ready(Some(v)),
        std::task::Poll::Pending => std::task::Poll::Ready(None),
    })
    .await
}

#[derive(Debug)]
struct Fixed(CopyTargets);

impl CopyResolver for Fixed {
    fn disk_by_designator(&self, desig: &[u8]) -> Option<CopyTarget> {
        self.0.disk_by_designator(desig)
    }
}

#[test]
fn copies_between_units_through_the_resolver() {
    let a = named(100, 1);
    let b = named(100, 2);
    let data = pattern(4 * 512, 9);
    write(&a, 10, data.clone());
    let l = list(1, 0b10, &[cscd(&a), cscd(&b)], &[b2b(0, 1, 4, 10, 50)]);
    // Without the core's resolver the other unit is unreachable.
    assert_eq!(xcopy(&a, l.clone(), &ExecContext::default()), Err(ScsiError::CopyAborted(CopyAbort::Unreachable)));
    let resolver: Arc<dyn CopyResolver> = Arc::new(Fixed(CopyTargets::new([&a, &b])));
    let ctx = ExecContext { copy_resolver: Some(resolver), ..Default::default() };
    assert_eq!(xcopy(&a, l, &ctx), Ok(vec![]));
    assert_eq!(read(&b, 50, 4), data);
    // A unit the resolver does not know.
    let c = named(100, 3);
    let l = list(1, 0b10, &[cscd(&a), cscd(&c)], &[b2b(0, 1, 4, 10, 50)]);
    assert_eq!(xcopy(&a, l, &ctx), Err(ScsiError::CopyAborted(CopyAbort::Unreachable)));
    // The destination's write protection counts, not the issuing unit's.
    let ro = disk_with(100, DiskConfig { naa_id: 4, readonly: true, ..Default::default() });
    let ctx = ExecContext { copy_resolver: Some(Arc::new(CopyTargets::new([&a, &ro]))), ..Default::default() };
    let l = list(1, 0b10, &[cscd(&a), cscd(&ro)], &[b2b(0, 1, 4, 10, 50)]);
    assert_eq!(xcopy(&a, l, &ctx), Err(ScsiError::WriteProtected));
    let l = list(1, 0b10, &[cscd(&ro), cscd(&a)], &[b2b(0, 1, 4, 10, 60)]);
    assert_eq!(xcopy(&a, l, &ctx), Ok(vec![]), "a read-only source");
}

#[test]
fn overlapping_copy_moves_like_memmove() {
    // Larger than one chunk, destination past the source, overlapping.
    let n = 40_000_u16;
    assert!(u64::from(n) * 512 > 2 * MAX_TRANSFER_BYTES);
    let blocks = u32::from(n) + 2000;
    let data = pattern(usize::from(n) * 512, 7);
    let d = disk(u64::from(blocks));
    block_on(d.backend().write(0, data.clone(), false)).unwrap();
    let l = list(0, 0b11, &[cscd(&d)], &[b2b(0, 0, n, 0, 1000)]);
    assert_eq!(xcopy(&d, l, &ExecContext::default()), Ok(vec![]));
    let got = block_on(d.backend().read(1000 * 512, usize::from(n) * 512)).unwrap();
    assert_eq!(got, data[..usize::from(n) * 512]);
    // And backwards (destination before the source).
    let d = disk(u64::from(blocks));
    block_on(d.backend().write(1000 * 512, data.clone(), false)).unwrap();
    let l = list(0, 0b11, &[cscd(&d)], &[b2b(0, 0, n, 1000, 0)]);
    assert_eq!(xcopy(&d, l, &ExecContext::default()), Ok(vec![]));
    let got = block_on(d.backend().read(0, usize::from(n) * 512)).unwrap();
    assert_eq!(got, data[..usize::from(n) * 512]);
}

#[test]
fn parameter_list_errors() {
    let d = disk(10000);
    let ctx = ExecContext::default();
    let t = cscd(&d);
    let s = b2b(0, 0, 16, 0, 100);
    assert_eq!(run(&d, &xcopy_cdb(0)), Ok(vec![]), "an empty list is no copy");
    let full = list(1, 0, &[&t], &[&s]);
    for cut in [15, 16 + 31, 16 + 32 + 27] {
        assert_eq!(xcopy(&d, full[..cut].to_vec(), &ctx), Err(ScsiError::ParameterListLengthError), "cut at {cut}");
    }
    // Data-out shorter than the CDB's parameter list length.
    assert_eq!(run_ctx(&d, &xcopy_cdb(76), vec![0; 40], &ctx), Err(ScsiError::ParameterListLengthError));
    assert_eq!(run(&d, &xcopy_cdb(MAX_PARAMETER_LIST_LENGTH + 1)), Err(ScsiError::ParameterListLengthError));
    let many_t = vec![t.clone(); usize::from(MAX_CSCD_DESCRIPTORS) + 1];
    let many_s = vec![s.clone(); usize::from(MAX_SEGMENT_DESCRIPTORS) + 1];
    assert_eq!(xcopy(&d, list(1, 0, &many_t, &[&s]), &ctx), Err(ScsiError::TooManyDescriptors { segments: false }));
    assert_eq!(xcopy(&d, list(1, 0, &[&t], &many_s), &ctx), Err(ScsiError::TooManyDescriptors { segments: true }));
    assert_eq!(xcopy(&d, list(1, 0, &many_t, &many_s), &ctx), Err(ScsiError::ParameterListLengthError));
    let mut fc = t.clone();
    fc[0] = 0xE0; // Fibre Channel N_Port_Name
    assert_eq!(
        xcopy(&d, list(1, 0, &[fc], &[&s]), &ctx),
        Err(ScsiError::UnsupportedDescriptorType { segment: false, byte: 16 })
    );
    let mut stream = vec![0u8; 20];
    stream[0] = 0x03; // stream to stream
    stream[3] = 0x10;
    assert_eq!(
        xcopy(&d, list(1, 0, &[&t], &[stream]), &ctx),
        Err(ScsiError::UnsupportedDescriptorType { segment: true, byte: 48 })
    );
    // LU ID TYPE and NUL are obsolete (SPC-4) and ignored.
    let mut luid = t.clone();
    luid[1] = 0xE0;
    assert_eq!(xcopy(&d, list(1, 0b10, &[luid], &[&s]), &ctx), Ok(vec![]));
    let mut tape = t.clone();
    tape[1] = 0x01;
    assert_eq!(xcopy(&d, list(1, 0, &[tape], &[&s]), &ctx), Err(ScsiError::param(17, Some(4))));
    let mut long = t.clone();
    long[7] = 21;
    assert_eq!(xcopy(&d, list(1, 0, &[long], &[&s]), &ctx), Err(ScsiError::param(23, None)));
    let mut odd = t.clone();
    odd.truncate(30);
    assert_eq!(xcopy(&d, list(1, 0, &[odd], &[&s]), &ctx), Err(ScsiError::param(2, None)));
    let mut cat = s.clone();
    cat[1] = 0x01;
    assert_eq!(xcopy(&d, list(1, 0, &[&t], &[cat]), &ctx), Err(ScsiError::param(49, Some(0))));
    let mut dl = s.clone();
    dl.push(0);
    dl[3] = 0x19;
    assert_eq!(xcopy(&d, list(1, 0, &[&t], &[dl]), &ctx), Err(ScsiError::param(50, None)));
    assert_eq!(xcopy(&d, list(1, 0b01, &[&t], &[&s]), &ctx), Err(ScsiError::param(1, Some(4))));
    assert_eq!(xcopy(&d, list(1, 0b11, &[&t], &[&s]), &ctx), Err(ScsiError::param(0, None)));
    let mut inline = full.clone();
    inline[15] = 4;
    inline.extend([0; 4]);
    assert_eq!(xcopy(&d, inline, &ctx), Err(ScsiError::param(12, None)));
    // Nothing held for failures found while decoding.
    assert_eq!(run(&d, &rcr_cdb(0x00, 1, 1024)), Err(ScsiError::field_byte(2)));
}

#[test]
fn copy_aborted_errors() {
    let d = disk(10000);
    let ctx = ExecContext::default();
    let t = cscd(&d);
    let abort = |c: CopyAbort| Err(ScsiError::CopyAborted(c));
    assert_eq!(xcopy(&d, list(1, 0, &[&t], &[b2b(0, 1, 1, 0, 9)]), &ctx), abort(CopyAbort::Unreachable));
    assert_eq!(xcopy(&d, list(1, 0, &[&t], &[b2b(0, 0, 16, 0, 9999)]), &ctx), abort(CopyAbort::TargetNotReachable));
    assert_eq!(xcopy(&d, list(1, 0, &[&t], &[b2b(0, 0, 16, 9999, 0)]), &ctx), abort(CopyAbort::TargetNotReachable));
    assert_eq!(xcopy(&d, list(1, 0, &[&t], &[b2b(0, 0, 1, u64::MAX, 0)]), &ctx), abort(CopyAbort::TargetNotReachable));
    let mut bl = t.clone();
    bl[29..32].copy_from_slice(&[0, 0x10, 0]);
    assert_eq!(xcopy(&d, list(1, 0, &[bl], &[b2b(0, 0, 1, 0, 9)]), &ctx), abort(CopyAbort::IncorrectDeviceType));
    // Software write protect of the destination.
    d.state.swp.store(true, Ordering::Relaxed);
    assert_eq!(xcopy(&d, list(1, 0, &[&t], &[b2b(0, 0, 1, 0, 9)]), &ctx), Err(ScsiError::SoftwareWriteProtected));
    d.state.swp.store(false, Ordering::Relaxed);
    d.state.medium_present.store(false, Ordering::Relaxed);
    assert_eq!(
        block_on(d.copy_target().backend.read(0, 512)).map(|b| b.len()),
        Ok(512),
        "the backend itself still reads"
    );
    let target = d.copy_target();
    assert_eq!(target.check(false), Err(ScsiError::CopyAborted(CopyAbort::TargetNotReachable)));
    // Zero blocks copy nothing and succeed.
    d.state.medium_present.store(true, Ordering::Relaxed);
    assert_eq!(xcopy(&d, list(1, 0, &[&t], &[b2b(0, 0, 0, 0, 9)]), &ctx), Ok(vec![]));
}

#[test]
fn sense_of_copy_errors() {
    let s = |e: ScsiError| e.sense().code();
    assert_eq!(s(ScsiError::TooManyDescriptors { segments: false }), sense::TOO_MANY_TARGET_DESCRIPTORS);
    assert_eq!(s(ScsiError::TooManyDescriptors { segments: true }), sense::TOO_MANY_SEGMENT_DESCRIPTORS);
    let e = ScsiError::UnsupportedDescriptorType { segment: false, byte: 16 };
    assert_eq!(s(e.clone()), sense::UNSUPPORTED_TARGET_DESCRIPTOR_TYPE_CODE);
    assert_eq!(e.sense().field_pointer, Some(crate::FieldPointer::data(16, None)));
    assert_eq!(
        s(ScsiError::UnsupportedDescriptorType { segment: true, byte: 48 }),
        sense::UNSUPPORTED_SEGMENT_DESCRIPTOR_TYPE_CODE
    );
    for (c, asc) in [
        (CopyAbort::Unreachable, (0x08, 0x04)),
        (CopyAbort::TargetNotReachable, (0x0D, 0x02)),
        (CopyAbort::IncorrectDeviceType, (0x0D, 0x03)),
    ] {
        let sense = ScsiError::CopyAborted(c).sense();
        assert_eq!((sense.key, sense.asc, sense.ascq), (SenseKey::CopyAborted, asc.0, asc.1));
    }
}

#[test]
fn operating_parameters_report_the_limits() {
    let d = disk(100);
    let r = run(&d, &rcr_cdb(0x03, 0, 1024)).unwrap();
    assert_eq!(u32::from_be_bytes([r[0], r[1], r[2], r[3]]) as usize, r.len() - 4);
    assert!(r.len() >= 44);
    assert_eq!(r[4] & 1, 1, "SNLID");
    assert_eq!(u16::from_be_bytes([r[8], r[9]]), MAX_CSCD_DESCRIPTORS);
    assert_eq!(u16::from_be_bytes([r[10], r[11]]), MAX_SEGMENT_DESCRIPTORS);
    assert_eq!(u32::from_be_bytes([r[12], r[13], r[14], r[15]]), MAX_DESCRIPTOR_LIST_LENGTH);
    assert_eq!(u32::from_be_bytes([r[16], r[17], r[18], r[19]]), 0xFFFF * 512);
    assert_eq!(&r[43..], &[2, BLOCK_TO_BLOCK, IDENTIFICATION_CSCD]);
    // libiscsi's limit test: one descriptor over each count still fits the
    // list length, both over it do not.
    let one_over = |n: u16, len: usize| (u32::from(n) + 1) * len as u32;
    assert!(one_over(MAX_CSCD_DESCRIPTORS, CSCD_LEN) + B2B_LEN as u32 <= MAX_DESCRIPTOR_LIST_LENGTH);
    assert!(one_over(MAX_SEGMENT_DESCRIPTORS, B2B_LEN) + CSCD_LEN as u32 <= MAX_DESCRIPTOR_LIST_LENGTH);
    assert!(
        one_over(MAX_CSCD_DESCRIPTORS, CSCD_LEN) + one_over(MAX_SEGMENT_DESCRIPTORS, B2B_LEN)
            > MAX_DESCRIPTOR_LIST_LENGTH
    );
}

#[test]
fn third_party_copy_vpd_page() {
    let d = disk(100);
    let r = run(&d, &[0x12, 1, 0x8F, 0x10, 0, 0]).unwrap();
    assert_eq!(r[1], 0x8F);
    assert_eq!(u16::from_be_bytes([r[2], r[3]]) as usize, r.len() - 4);
    let mut kinds = Vec::new();
    let mut pos = 4;
    while pos < r.len() {
        let kind = u16::from_be_bytes([r[pos], r[pos + 1]]);
        let len = usize::from(u16::from_be_bytes([r[pos + 2], r[pos + 3]]));
        assert_eq!((len + 4) % 4, 0, "descriptor {kind:#x} padded");
        if kind == 0x0001 {
            assert_eq!(&r[pos + 4..pos + 12], &[7, 0x83, 1, 0x00, 0x84, 2, 0x00, 0x03]);
        }
        if kind == 0x0004 {
            assert_eq!(u16::from_be_bytes([r[pos + 8], r[pos + 9]]), MAX_CSCD_DESCRIPTORS);
            assert_eq!(len, 0x1C);
        }
        kinds.push(kind);
        pos += 4 + len;
    }
    assert_eq!(pos, r.len());
    assert_eq!(kinds, vec![0x0001, 0x0004, 0x0008, 0x000C, 0x8001]);
    let std = run(&d, &[0x12, 0, 0, 0, 96, 0]).unwrap();
    assert_eq!(std[5] & 0x08, 0x08, "3PC");
}

#[test]
fn designators_match_without_protocol_or_piv() {
    let a = named(10, 1);
    let targets = CopyTargets::new([&a]);
    let mut desig = a.copy_designator();
    desig[0] |= 0x50; // a PROTOCOL IDENTIFIER
    desig[1] |= 0x80; // PIV
    assert!(targets.disk_by_designator(&desig).is_some());
    desig[4 + 15] ^= 1;
    assert!(targets.disk_by_designator(&desig).is_none());
    assert!(targets.disk_by_designator(&[1, 3, 0]).is_none(), "short");
    let _ = Backend::mem(512);
}

/// A gate that admits (counting) or refuses every I/O.
#[derive(Debug, Default)]
struct CountingGate {
    refuse: bool,
    entered: std::sync::atomic::AtomicUsize,
}

impl CopyGate for CountingGate {
    fn enter(&self) -> Pin<Box<dyn Future<Output = Result<CopyPass, ScsiError>> + '_>> {
        Box::pin(async move {
            if self.refuse {
                return Err(ScsiError::CopyAborted(CopyAbort::TargetNotReachable));
            }
            self.entered.fetch_add(1, Ordering::SeqCst);
            Ok(CopyPass::new(()))
        })
    }
}

/// Another unit is reached through its gate, one pass per chunk, and
/// checked against its reservations for the copy's nexus; the command's
/// own unit is not (the command was admitted and checked as a whole).
#[test]
fn another_unit_is_reached_through_its_gate_and_reservations() {
    let a = named(100, 1);
    let b = named(100, 2);
    write(&a, 0, pattern(2 * 512, 4));
    let gate_a = Arc::new(CountingGate::default());
    let gate_b = Arc::new(CountingGate::default());
    let units: [(&Disk, Arc<dyn CopyGate>); 2] = [(&a, gate_a.clone()), (&b, gate_b.clone())];
    let x = Nexus::new("iqn.x,i,0x1", 1);
    let ctx = ExecContext { copy_resolver: Some(Arc::new(CopyTargets::with_gates(units))), ..Default::default() };
    let x_ctx = ExecContext { nexus: Some(x.clone()), ..ctx.clone() };
    let l = list(0, 0b11, &[cscd(&a), cscd(&b)], &[b2b(0, 1, 2, 0, 10)]);
    assert_eq!(xcopy(&a, l.clone(), &ctx), Ok(vec![]));
    assert_eq!(read(&b, 10, 2), pattern(2 * 512, 4));
    let entered = |g: &CountingGate| g.entered.load(Ordering::SeqCst);
    assert_eq!((entered(&gate_a), entered(&gate_b)), (0, 1), "only the other unit's gate, once per chunk");
    // b reserved (SPC-2) by x: the copy sent by another nexus may not write it.
    run_ctx(&b, &[0x16, 0, 0, 0, 0, 0], vec![], &x_ctx).unwrap();
    assert_eq!(xcopy(&a, l.clone(), &ctx), Err(ScsiError::CopyAborted(CopyAbort::TargetNotReachable)));
    assert_eq!(xcopy(&a, l.clone(), &x_ctx), Ok(vec![]), "the holder's copy");
    // A gate that refuses aborts the copy before any I/O.
    let refusing: Arc<dyn CopyGate> = Arc::new(CountingGate { refuse: true, ..Default::default() });
    let units: [(&Disk, Arc<dyn CopyGate>); 2] = [(&a, gate_a.clone()), (&b, refusing)];
    let ctx = ExecContext { copy_resolver: Some(Arc::new(CopyTargets::with_gates(units))), ..x_ctx };
    block_on(b.backend().write(10 * 512, vec![0; 1024], false)).unwrap();
    assert_eq!(xcopy(&a, l, &ctx), Err(ScsiError::CopyAborted(CopyAbort::TargetNotReachable)));
    assert_eq!(block_on(b.backend().read(10 * 512, 1024)).unwrap(), vec![0; 1024], "nothing written");
}

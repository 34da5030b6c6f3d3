//! SANITIZE (SBC-4 5.30; sanitize operations, SBC-4 4.11).
//!
//! OVERWRITE writes the initialization pattern over every LBA (an all-zero
//! pattern on a thin disk deallocates instead: same data, no RAM); BLOCK
//! ERASE and CRYPTOGRAPHIC ERASE deallocate every LBA (thin disks only:
//! the `mem` backend frees its chunks' mapping, `file` punches holes; with
//! LBPRZ the medium then reads as zeros, which is as unreadable as a
//! destroyed key). EXIT FAILURE MODE leaves the state a failed sanitize
//! left the unit in.
//!
//! While an operation runs, every command but INQUIRY, REPORT LUNS and
//! REQUEST SENSE fails with NOT READY, SANITIZE IN PROGRESS (SBC-4 4.11.2);
//! a second SANITIZE too. The operation advances in steps and yields the
//! I/O thread between them, so those commands are answered meanwhile. If
//! it fails (or its command is dropped before the end), medium access
//! commands fail with MEDIUM ERROR, SANITIZE COMMAND FAILED until a
//! sanitize succeeds or, if AUSE was set, EXIT FAILURE MODE.
//!
//! IMMED is refused: the operation is the command's own future, and there
//! is no one to run it after the command completes (the core would have to
//! run it detached, see the crate docs).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::task::{Context, Poll};

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::Disk;
use crate::error::ScsiError;

/// SERVICE ACTION of SANITIZE (SBC-4 table 59).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SanitizeAction {
    Overwrite = 0x01,
    BlockErase = 0x02,
    CryptoErase = 0x03,
    ExitFailureMode = 0x1F,
}

/// A decoded SANITIZE CDB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sanitize {
    pub action: SanitizeAction,
    /// AUSE: a failure of this operation may be left by EXIT FAILURE MODE.
    pub ause: bool,
    pub param_len: u16,
}

pub(crate) fn decode(c: Cdb<'_>) -> Result<Command, ScsiError> {
    let action = match c.bits(1, 0, 5) {
        0x01 => SanitizeAction::Overwrite,
        0x02 => SanitizeAction::BlockErase,
        0x03 => SanitizeAction::CryptoErase,
        0x1F => SanitizeAction::ExitFailureMode,
        _ => return Err(ScsiError::field(1, 4)),
    };
    Ok(Command::Sanitize(Sanitize { action, ause: c.bit(1, 5), param_len: c.be16(7) }))
}

/// The OVERWRITE parameter list (SBC-4 5.30.3), checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverwriteParams {
    pub invert: bool,
    /// OVERWRITE COUNT: passes, 1 to 31.
    pub count: u8,
    /// INITIALIZATION PATTERN, 1 to a logical block's length of bytes.
    pub pattern: Vec<u8>,
}

impl OverwriteParams {
    /// Parses `data` (PARAMETER LIST LENGTH bytes) for blocks of `block_size`.
    pub fn parse(data: &[u8], block_size: usize) -> Result<OverwriteParams, ScsiError> {
        let [b0, b1, l0, l1, rest @ ..] = data else {
            return Err(ScsiError::ParameterListLengthError);
        };
        if b0 & 0x60 != 0 {
            // TEST: vendor specific, none defined here.
            return Err(ScsiError::param(0, Some(6)));
        }
        let count = b0 & 0x1F;
        if count == 0 {
            return Err(ScsiError::param(0, Some(4)));
        }
        if *b1 != 0 {
            return Err(ScsiError::param(1, None));
        }
        let len = usize::from(u16::from_be_bytes([*l0, *l1]));
        if len == 0 || len > block_size || len > rest.len() {
            return Err(ScsiError::param(2, None));
        }
        Ok(OverwriteParams { invert: b0 & 0x80 != 0, count, pattern: rest[..len].to_vec() })
    }

    /// One logical block of the pattern (repeated to fill it) for pass `pass`.
    fn block(&self, block_size: usize, pass: u8) -> Vec<u8> {
        let invert = self.invert && pass % 2 == 1;
        self.pattern.iter().cycle().take(block_size).map(|&b| if invert { !b } else { b }).collect()
    }
}

/// Failure mode after a failed sanitize (SBC-4 4.11.4).
const NOT_FAILED: u8 = 0;
/// Failed, AUSE was zero: only a successful sanitize leaves it.
const FAILED: u8 = 1;
/// Failed, AUSE was one: EXIT FAILURE MODE leaves it too.
const FAILED_AUSE: u8 = 2;

/// The device-wide sanitize state (lock-free: one operation at a time is
/// enforced by `active`).
#[derive(Debug, Default)]
pub(crate) struct SanitizeState {
    active: AtomicBool,
    /// Fraction done, of 65536 (the PROGRESS INDICATION of SPC-5 4.4.2.4.3).
    progress: AtomicU16,
    failed: AtomicU8,
}

/// Marks the operation running; on drop, not running, and failed unless
/// [`Running::succeeded`] was called.
struct Running<'a> {
    state: &'a SanitizeState,
    ause: bool,
    done: bool,
}

impl Running<'_> {
    fn succeeded(mut self) {
        self.done = true;
        self.state.failed.store(NOT_FAILED, Ordering::Relaxed);
    }
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.state.failed.store(if self.ause { FAILED_AUSE } else { FAILED }, Ordering::Relaxed);
        }
        self.state.active.store(false, Ordering::Release);
    }
}

impl SanitizeState {
    fn begin(&self, ause: bool) -> Result<Running<'_>, ScsiError> {
        if self.active.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return Err(ScsiError::SanitizeInProgress);
        }
        self.progress.store(0, Ordering::Relaxed);
        Ok(Running { state: self, ause, done: false })
    }

    /// The progress of the running operation (of 65536), if one runs.
    pub(crate) fn in_progress(&self) -> Option<u16> {
        self.active.load(Ordering::Acquire).then(|| self.progress.load(Ordering::Relaxed))
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed) != NOT_FAILED
    }
}

/// Lets the other tasks of the I/O thread run once.
struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.0 {
            return Poll::Ready(());
        }
        this.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

/// Bytes written between two yields.
const WRITE_STEP: u64 = 1 << 20;
/// Bytes deallocated between two yields.
const DISCARD_STEP: u64 = 64 << 20;

/// Whether `cmd` may run while a sanitize operation is in progress (SBC-4 4.11.2).
pub(crate) fn allowed_while_sanitizing(cmd: &Command) -> bool {
    matches!(cmd, Command::Inquiry(_) | Command::ReportLuns { .. } | Command::RequestSense { .. })
}

impl Disk {
    /// The checks that need no parameter list: its length (SBC-4 5.30.2).
    pub(crate) fn validate_sanitize(&self, s: &Sanitize) -> Result<(), ScsiError> {
        let len = usize::from(s.param_len);
        let ok = match s.action {
            SanitizeAction::Overwrite => len > 4 && len <= self.bytes(1) + 4,
            _ => len == 0,
        };
        if !ok {
            return Err(ScsiError::field_byte(7));
        }
        Ok(())
    }

    /// The progress of a running sanitize operation (of 65536), if one runs.
    pub fn sanitize_in_progress(&self) -> Option<u16> {
        self.state.sanitize.in_progress()
    }

    pub(crate) async fn sanitize(&self, s: &Sanitize, data: Vec<u8>) -> Result<Vec<u8>, ScsiError> {
        let state = &self.state.sanitize;
        if s.action == SanitizeAction::ExitFailureMode {
            return match state.failed.load(Ordering::Relaxed) {
                FAILED_AUSE => {
                    state.failed.store(NOT_FAILED, Ordering::Relaxed);
                    Ok(Vec::new())
                }
                // SBC-4 5.30.2: a failure without AUSE can only be left by a sanitize.
                FAILED => Err(ScsiError::field(1, 4)),
                _ => Err(ScsiError::CommandSequenceError),
            };
        }
        let overwrite = match s.action {
            SanitizeAction::Overwrite => {
                let len = usize::from(s.param_len);
                let params = data.get(..len).ok_or(ScsiError::ParameterListLengthError)?;
                Some(OverwriteParams::parse(params, self.bytes(1))?)
            }
            _ => None,
        };
        let running = state.begin(s.ause)?;
        match overwrite {
            Some(p) => self.overwrite_all(&p).await?,
            None => self.discard_all(0, 1).await?,
        }
        self.backend().flush().await?;
        running.succeeded();
        Ok(Vec::new())
    }

    fn set_progress(&self, done: u64, total: u64) {
        let p = (u128::from(done) * 65536 / u128::from(total.max(1))).min(65535);
        self.state.sanitize.progress.store(p as u16, Ordering::Relaxed);
    }

    /// Deallocates the whole medium; it is pass `pass` of `passes`.
    async fn discard_all(&self, pass: u64, passes: u64) -> Result<(), ScsiError> {
        let size = self.offset(self.num_blocks());
        let mut at = 0;
        while at < size {
            let n = DISCARD_STEP.min(size - at);
            self.backend().discard(at, n).await?;
            at += n;
            self.set_progress(pass * size + at, passes * size);
            YieldNow(false).await;
        }
        Ok(())
    }

    async fn overwrite_all(&self, p: &OverwriteParams) -> Result<(), ScsiError> {
        let bs = self.bytes(1);
        let size = self.offset(self.num_blocks());
        let passes = u64::from(p.count);
        for pass in 0..p.count {
            let block = p.block(bs, pass);
            if self.config().thin && block.iter().all(|&b| b == 0) {
                self.discard_all(u64::from(pass), passes).await?;
                continue;
            }
            let step = WRITE_STEP - WRITE_STEP % bs as u64;
            let buf = block.repeat((step / bs as u64) as usize);
            let mut at = 0;
            while at < size {
                let n = step.min(size - at);
                let data = buf.get(..n as usize).map(<[u8]>::to_vec).unwrap_or_default();
                self.backend().write(at, data, false).await?;
                at += n;
                self.set_progress(u64::from(pass) * size + at, passes * size);
                YieldNow(false).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::*;
    use crate::*;

    fn sanitize_cdb(sa: u8, param_len: u16) -> Vec<u8> {
        cdb10(0x48, sa, 0, param_len)
    }

    fn overwrite_list(b0: u8, pattern: &[u8]) -> Vec<u8> {
        let mut l = vec![b0, 0];
        l.extend_from_slice(&(pattern.len() as u16).to_be_bytes());
        l.extend_from_slice(pattern);
        l
    }

    fn status(d: &Disk) -> Vec<u8> {
        run(d, &cdb16(0x9E, 0x12, 0, 1000)).unwrap()
    }

    #[test]
    fn decode_and_table() {
        let c = Command::decode(&sanitize_cdb(0x21, 0)).unwrap();
        let want = Sanitize { action: SanitizeAction::Overwrite, ause: true, param_len: 0 };
        assert_eq!(c, Command::Sanitize(want));
        assert_eq!((c.name(), c.opcode(), c.service_action()), ("SANITIZE", 0x48, Some(1)));
        assert!(c.is_write() && c.is_medium_access());
        let c = Command::decode(&sanitize_cdb(0x01, 516)).unwrap();
        assert_eq!((c.direction(), c.data_out_len(512)), (DataDirection::ToDevice, 516));
        for sa in (0..0x1F).filter(|sa| !(1..=3).contains(sa)) {
            assert_eq!(Command::decode(&sanitize_cdb(sa, 0)), Err(ScsiError::field(1, 4)), "SA {sa:#x}");
        }
        assert_eq!(Command::decode(&sanitize_cdb(0x81, 8)), Err(ScsiError::field(1, 7)), "IMMED");
        assert_eq!(Command::decode(&sanitize_cdb(0x41, 8)), Err(ScsiError::field(1, 6)), "ZNR");
        for byte in 2..7 {
            let mut c = sanitize_cdb(0x01, 8);
            c[byte] = 1;
            assert_eq!(Command::decode(&c), Err(ScsiError::field(byte, 0)), "reserved byte {byte}");
        }
    }

    #[test]
    fn overwrite_writes_the_pattern_everywhere() {
        let d = disk(3000);
        run_data(&d, &cdb10(0x2A, 0, 0, 4), vec![b'a'; 2048]).unwrap();
        let l = overwrite_list(0x01, &[0xAA; 512]);
        assert_eq!(run_data(&d, &sanitize_cdb(0x01, l.len() as u16), l), Ok(vec![]));
        let all = run(&d, &cdb16(0x88, 0, 0, 3000)).unwrap();
        assert!(all.iter().all(|&b| b == 0xAA));
        // A short pattern repeats; INVERT flips it on every second pass.
        let l = overwrite_list(0x82, &[1, 2, 3, 4]);
        assert_eq!(run_data(&d, &sanitize_cdb(0x01, 8), l), Ok(vec![]));
        let block = run(&d, &cdb10(0x28, 0, 2999, 1)).unwrap();
        assert_eq!(&block[..8], &[0xFE, 0xFD, 0xFC, 0xFB, 0xFE, 0xFD, 0xFC, 0xFB]);
        // A zero pattern on a thin disk deallocates.
        let l = overwrite_list(0x01, &[0; 16]);
        assert_eq!(run_data(&d, &sanitize_cdb(0x01, 20), l), Ok(vec![]));
        assert_eq!(status(&d)[20], 1, "deallocated");
        assert_eq!(run(&d, &cdb10(0x28, 0, 7, 1)).unwrap(), vec![0; 512]);
        assert_eq!(d.sanitize_in_progress(), None);
    }

    #[test]
    fn block_and_crypto_erase_deallocate() {
        for sa in [0x02, 0x03] {
            let d = disk(3000);
            run_data(&d, &cdb10(0x2A, 0, 2990, 10), vec![b'a'; 5120]).unwrap();
            assert_eq!(status(&d)[..4], [0, 0, 0, 4 + 2 * 16]);
            assert_eq!(run(&d, &sanitize_cdb(sa, 0)), Ok(vec![]));
            let r = status(&d);
            assert_eq!(&r[..4], &[0, 0, 0, 20], "one descriptor");
            assert_eq!(&r[16..21], &[0, 0, 0x0B, 0xB8, 1], "3000 blocks deallocated");
            assert_eq!(run(&d, &cdb10(0x28, 0, 2990, 10)).unwrap(), vec![0; 5120]);
        }
        let fat = disk_with(10, DiskConfig { thin: false, ..Default::default() });
        assert_eq!(run(&fat, &sanitize_cdb(0x02, 0)), Err(ScsiError::field(1, 4)));
        assert_eq!(run(&fat, &sanitize_cdb(0x03, 0)), Err(ScsiError::field(1, 4)));
    }

    #[test]
    fn parameter_list_errors() {
        let d = disk(100);
        for len in 0..5 {
            assert_eq!(run_data(&d, &sanitize_cdb(0x01, len), vec![1; len as usize]), Err(ScsiError::field_byte(7)));
        }
        assert_eq!(run_data(&d, &sanitize_cdb(0x01, 517), vec![0; 520]), Err(ScsiError::field_byte(7)));
        for sa in [0x02, 0x03, 0x1F] {
            assert_eq!(run_data(&d, &sanitize_cdb(sa, 8), vec![0; 8]), Err(ScsiError::field_byte(7)));
        }
        let mut l = overwrite_list(0x00, &[0xAA; 512]);
        assert_eq!(run_data(&d, &sanitize_cdb(0x01, 516), l.clone()), Err(ScsiError::param(0, Some(4))), "count 0");
        l[0] = 0x21;
        assert_eq!(run_data(&d, &sanitize_cdb(0x01, 516), l.clone()), Err(ScsiError::param(0, Some(6))), "TEST");
        l[0] = 0x01;
        l[1] = 1;
        assert_eq!(run_data(&d, &sanitize_cdb(0x01, 516), l.clone()), Err(ScsiError::param(1, None)), "reserved");
        l[1] = 0;
        l[2..4].copy_from_slice(&0u16.to_be_bytes());
        assert_eq!(run_data(&d, &sanitize_cdb(0x01, 516), l.clone()), Err(ScsiError::param(2, None)), "IPL 0");
        l[2..4].copy_from_slice(&516u16.to_be_bytes());
        assert_eq!(run_data(&d, &sanitize_cdb(0x01, 516), l.clone()), Err(ScsiError::param(2, None)), "IPL > block");
        l[2..4].copy_from_slice(&16u16.to_be_bytes());
        assert_eq!(run_data(&d, &sanitize_cdb(0x01, 12), l.clone()), Err(ScsiError::param(2, None)), "IPL > list");
        assert_eq!(run_data(&d, &sanitize_cdb(0x01, 516), vec![0; 8]), Err(ScsiError::ParameterListLengthError));
        // Nothing was written by the refused commands.
        assert_eq!(status(&d)[20], 1);
        let ro = disk_with(10, DiskConfig { readonly: true, ..Default::default() });
        assert_eq!(run(&ro, &sanitize_cdb(0x02, 0)), Err(ScsiError::WriteProtected));
    }

    #[test]
    fn commands_wait_while_sanitizing_and_failure_mode() {
        let d = disk(100);
        let running = d.state.sanitize.begin(true).unwrap();
        assert_eq!(d.sanitize_in_progress(), Some(0));
        assert_eq!(run(&d, &cdb10(0x28, 0, 0, 1)), Err(ScsiError::SanitizeInProgress));
        assert_eq!(run(&d, &[0, 0, 0, 0, 0, 0]), Err(ScsiError::SanitizeInProgress), "TEST UNIT READY");
        assert_eq!(run(&d, &[0x1B, 0, 0, 0, 1, 0]), Err(ScsiError::SanitizeInProgress), "START STOP UNIT");
        assert_eq!(run(&d, &sanitize_cdb(0x02, 0)), Err(ScsiError::SanitizeInProgress));
        assert!(run(&d, &[0x12, 0, 0, 0, 96, 0]).is_ok(), "INQUIRY");
        assert!(run(&d, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]).is_ok(), "REPORT LUNS");
        let s = run(&d, &[0x03, 0, 0, 0, 18, 0]).unwrap();
        assert_eq!((s[2], s[12], s[13]), (0x02, 0x04, 0x1B), "REQUEST SENSE: SANITIZE IN PROGRESS");
        assert_eq!(ScsiError::SanitizeInProgress.sense().code(), sense::SANITIZE_IN_PROGRESS);
        // Dropped before the end: failed, with AUSE.
        drop(running);
        assert_eq!(d.sanitize_in_progress(), None);
        assert_eq!(run(&d, &cdb10(0x28, 0, 0, 1)), Err(ScsiError::SanitizeFailed));
        assert_eq!(ScsiError::SanitizeFailed.sense().code(), sense::SANITIZE_COMMAND_FAILED);
        assert!(run(&d, &[0x12, 0, 0, 0, 96, 0]).is_ok(), "INQUIRY still works");
        assert_eq!(run(&d, &sanitize_cdb(0x1F, 0)), Ok(vec![]), "EXIT FAILURE MODE");
        assert!(run(&d, &cdb10(0x28, 0, 0, 1)).is_ok());
        assert_eq!(run(&d, &sanitize_cdb(0x1F, 0)), Err(ScsiError::CommandSequenceError), "not failed");
        assert_eq!(ScsiError::CommandSequenceError.sense().code(), sense::COMMAND_SEQUENCE_ERROR);
        // Without AUSE only a sanitize that succeeds leaves the failure mode.
        drop(d.state.sanitize.begin(false).unwrap());
        assert_eq!(run(&d, &sanitize_cdb(0x1F, 0)), Err(ScsiError::field(1, 4)));
        assert_eq!(run(&d, &cdb10(0x28, 0, 0, 1)), Err(ScsiError::SanitizeFailed));
        assert_eq!(run(&d, &sanitize_cdb(0x02, 0)), Ok(vec![]));
        assert!(run(&d, &cdb10(0x28, 0, 0, 1)).is_ok());
    }

    #[test]
    fn a_backend_failure_fails_the_sanitize() {
        let fault = std::sync::Arc::new(lunar_block::FaultBackend::new(Backend::mem(100 * 512)));
        let d = Disk::new(DiskConfig::default(), Backend::Fault(fault.clone()));
        fault.fail_writes(5); // EIO
        let l = overwrite_list(0x01, &[0xAA; 4]);
        let e = run_data(&d, &sanitize_cdb(0x01, 8), l).unwrap_err();
        assert!(e.backend_error().is_some());
        assert_eq!(run(&d, &cdb10(0x28, 0, 0, 1)), Err(ScsiError::SanitizeFailed));
    }

    #[test]
    fn progress_is_reported() {
        let d = disk(100);
        d.set_progress(1, 4);
        assert_eq!(d.state.sanitize.progress.load(Ordering::Relaxed), 16384);
        d.set_progress(4, 4);
        assert_eq!(d.state.sanitize.progress.load(Ordering::Relaxed), 65535);
        d.set_progress(0, 0);
        assert_eq!(d.state.sanitize.progress.load(Ordering::Relaxed), 0);
    }
}

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
//! A sanitize operation is not the command's: once begun it goes on to its
//! end whatever happens to the SANITIZE command (SBC-4 4.11: an abort of
//! the command, a logical unit reset, a hard reset or an I_T nexus loss do
//! not stop it). [`Disk::start_sanitize`] checks the command and begins
//! the operation, returned as a [`SanitizeOperation`] that owns what it
//! needs (`'static`): the target core runs it detached from the command,
//! step by step ([`SanitizeOperation::step`]), and completes the command
//! when it ends (IMMED=0) or at once (IMMED=1). [`Disk::execute`] without a
//! core runs it inside the command.
//!
//! While it runs, every command but INQUIRY, REPORT LUNS and REQUEST SENSE
//! fails with NOT READY, LOGICAL UNIT NOT READY, SANITIZE IN PROGRESS, with
//! the progress indication in the sense-key-specific field (SBC-4 4.11.2,
//! SPC-5 4.4.2.4.4); REQUEST SENSE reports the same. If it fails (or is
//! dropped before its end: the unit was removed), medium access commands
//! fail with MEDIUM ERROR, SANITIZE COMMAND FAILED until a sanitize
//! succeeds or, if AUSE was set, EXIT FAILURE MODE (SBC-4 4.11.4).

use lunar_block::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use lunar_block::Backend;

use crate::cdb::reader::Cdb;
use crate::cdb::Command;
use crate::disk::{Disk, DiskState, ExecContext};
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
    /// IMMED: complete the command once the operation has begun.
    pub immed: bool,
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
    Ok(Command::Sanitize(Sanitize { action, immed: c.bit(1, 7), ause: c.bit(1, 5), param_len: c.be16(7) }))
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
    /// Fraction done, of 65536 (the PROGRESS INDICATION of SPC-5 4.4.2.4.4).
    progress: AtomicU16,
    failed: AtomicU8,
}

impl SanitizeState {
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

/// Bytes written by one step.
const WRITE_STEP: u64 = 1 << 20;
/// Bytes deallocated by one step.
const DISCARD_STEP: u64 = 64 << 20;

/// Whether `cmd` may run while a sanitize operation is in progress (SBC-4 4.11.2).
pub(crate) fn allowed_while_sanitizing(cmd: &Command) -> bool {
    matches!(cmd, Command::Inquiry(_) | Command::ReportLuns { .. } | Command::RequestSense { .. })
}

/// How one pass changes the medium.
#[derive(Debug)]
enum Pass {
    /// Write this block (the pattern of the pass) over every LBA.
    Write(Vec<u8>),
    /// Deallocate every LBA.
    Deallocate,
}

/// A sanitize operation in progress: it owns the disk's state and backend,
/// so it can outlive the command that began it (see the module docs).
/// While it exists the unit reports SANITIZE IN PROGRESS; dropped before it
/// completed, it leaves the unit in the failure mode.
pub struct SanitizeOperation {
    state: Arc<DiskState>,
    backend: Backend,
    block_size: u64,
    ause: bool,
    params: Option<OverwriteParams>,
    thin: bool,
    /// Current pass (0-based) and how many there are.
    pass: u8,
    passes: u8,
    /// What the current pass does (built when it starts).
    current: Option<Pass>,
    /// Bytes of the current pass done.
    at: u64,
    /// Completed (successfully or not): dropping it changes nothing.
    ended: bool,
}

impl std::fmt::Debug for SanitizeOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SanitizeOperation")
            .field("pass", &self.pass)
            .field("passes", &self.passes)
            .field("at", &self.at)
            .field("ended", &self.ended)
            .finish()
    }
}

impl SanitizeOperation {
    /// Does the next step of the operation: writes at most 1 MiB or
    /// deallocates at most 64 MiB, or, after the last pass, flushes the
    /// backend. Returns `Ok(true)` once the operation has completed (the
    /// unit is then ready), `Ok(false)` while steps remain. An error ends
    /// the operation, failed (the unit enters the failure mode); a step
    /// after the end does nothing.
    pub async fn step(&mut self) -> Result<bool, ScsiError> {
        if self.ended {
            return Ok(true);
        }
        match self.next().await {
            Ok(done) => {
                if done {
                    self.end(NOT_FAILED);
                }
                Ok(done)
            }
            Err(e) => {
                self.end(if self.ause { FAILED_AUSE } else { FAILED });
                Err(e)
            }
        }
    }

    /// Runs the remaining steps, letting the I/O thread's other tasks run
    /// between them (so that the commands refused meanwhile are answered).
    pub async fn run(mut self) -> Result<(), ScsiError> {
        while !self.step().await? {
            YieldNow(false).await;
        }
        Ok(())
    }

    /// The fraction of the operation done, of 65536.
    pub fn progress(&self) -> u16 {
        self.state.sanitize.progress.load(Ordering::Relaxed)
    }

    async fn next(&mut self) -> Result<bool, ScsiError> {
        // The capacity is read at every step: a resize meanwhile moves the end.
        let size = self.state.num_blocks.load(Ordering::Acquire).saturating_mul(self.block_size);
        if self.pass == self.passes || size == 0 {
            self.backend.flush().await?;
            return Ok(true);
        }
        let pass = match self.current.take() {
            Some(p) => p,
            None => self.pass_kind(),
        };
        if self.at < size {
            let n = match &pass {
                Pass::Write(block) => {
                    let step = (WRITE_STEP - WRITE_STEP % self.block_size).min(size - self.at);
                    let blocks = usize::try_from(step / self.block_size).unwrap_or(0);
                    self.backend.write(self.at, block.repeat(blocks), false).await?;
                    step
                }
                Pass::Deallocate => {
                    let step = DISCARD_STEP.min(size - self.at);
                    self.backend.discard(self.at, step).await?;
                    step
                }
            };
            self.at += n;
        }
        if self.at >= size {
            self.pass += 1;
            self.at = 0;
        } else {
            self.current = Some(pass);
        }
        let done = u64::from(self.pass) * size + self.at;
        self.set_progress(done, u64::from(self.passes) * size);
        Ok(false)
    }

    /// What pass `self.pass` does.
    fn pass_kind(&self) -> Pass {
        match &self.params {
            None => Pass::Deallocate,
            Some(p) => {
                let block = p.block(usize::try_from(self.block_size).unwrap_or(512), self.pass);
                if self.thin && block.iter().all(|&b| b == 0) {
                    Pass::Deallocate
                } else {
                    Pass::Write(block)
                }
            }
        }
    }

    fn set_progress(&self, done: u64, total: u64) {
        let p = (u128::from(done) * 65536 / u128::from(total.max(1))).min(65535);
        self.state.sanitize.progress.store(p as u16, Ordering::Relaxed);
    }

    /// Ends the operation: the failure mode, then not in progress.
    fn end(&mut self, failed: u8) {
        self.ended = true;
        self.state.sanitize.failed.store(failed, Ordering::Relaxed);
        self.state.sanitize.active.store(false, Ordering::Release);
    }
}

impl Drop for SanitizeOperation {
    fn drop(&mut self) {
        if !self.ended {
            self.end(if self.ause { FAILED_AUSE } else { FAILED });
        }
    }
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

    /// SANITIZE for a target core that runs the operation detached from
    /// the command: the checks of [`Disk::execute`] (reservations, then
    /// [`Disk::validate`]), then the parameter list; then EXIT FAILURE MODE
    /// completes here (`Ok(None)`), and the other service actions begin
    /// their operation and return it. From then until the operation ends
    /// the unit reports SANITIZE IN PROGRESS.
    pub fn start_sanitize(
        &self,
        s: &Sanitize,
        data: impl Into<Bytes>,
        ctx: &ExecContext,
    ) -> Result<Option<SanitizeOperation>, ScsiError> {
        let cmd = Command::Sanitize(*s);
        self.check_reservation(&cmd, ctx)?;
        self.validate(&cmd)?;
        self.begin_sanitize(s, data.into())
    }

    /// Checks the parameter list and begins the operation (`None`: EXIT
    /// FAILURE MODE, done).
    fn begin_sanitize(&self, s: &Sanitize, data: Bytes) -> Result<Option<SanitizeOperation>, ScsiError> {
        let state = &self.state.sanitize;
        if s.action == SanitizeAction::ExitFailureMode {
            return match state.failed.load(Ordering::Relaxed) {
                FAILED_AUSE => {
                    state.failed.store(NOT_FAILED, Ordering::Relaxed);
                    Ok(None)
                }
                // SBC-4 5.30.2: a failure without AUSE can only be left by a sanitize.
                FAILED => Err(ScsiError::field(1, 4)),
                _ => Err(ScsiError::CommandSequenceError),
            };
        }
        let params = match s.action {
            SanitizeAction::Overwrite => {
                let len = usize::from(s.param_len);
                let params = data.get(..len).ok_or(ScsiError::ParameterListLengthError)?;
                Some(OverwriteParams::parse(params, self.bytes(1))?)
            }
            _ => None,
        };
        if state.active.compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return Err(ScsiError::SanitizeInProgress { progress: state.progress.load(Ordering::Relaxed) });
        }
        state.progress.store(0, Ordering::Relaxed);
        Ok(Some(SanitizeOperation {
            state: Arc::clone(&self.state),
            backend: self.backend().clone(),
            block_size: u64::from(self.block_size()),
            ause: s.ause,
            passes: params.as_ref().map_or(1, |p| p.count),
            params,
            thin: self.config().thin,
            pass: 0,
            current: None,
            at: 0,
            ended: false,
        }))
    }

    /// SANITIZE without a core to run the operation detached: it runs
    /// inside the command. With IMMED the command reports GOOD whatever the
    /// operation's outcome (a failure shows as the failure mode, as when
    /// the operation runs detached).
    pub(crate) async fn sanitize(&self, s: &Sanitize, data: Bytes) -> Result<Vec<u8>, ScsiError> {
        let Some(op) = self.begin_sanitize(s, data)? else { return Ok(Vec::new()) };
        let result = op.run().await;
        if s.immed {
            return Ok(Vec::new());
        }
        result.map(|()| Vec::new())
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
        let want = Sanitize { action: SanitizeAction::Overwrite, immed: false, ause: true, param_len: 0 };
        assert_eq!(c, Command::Sanitize(want));
        assert_eq!((c.name(), c.opcode(), c.service_action()), ("SANITIZE", 0x48, Some(1)));
        assert!(c.is_write() && c.is_medium_access());
        let c = Command::decode(&sanitize_cdb(0x01, 516)).unwrap();
        assert_eq!((c.direction(), c.data_out_len(512)), (DataDirection::ToDevice, 516));
        for sa in (0..0x1F).filter(|sa| !(1..=3).contains(sa)) {
            assert_eq!(Command::decode(&sanitize_cdb(sa, 0)), Err(ScsiError::field(1, 4)), "SA {sa:#x}");
        }
        let immed = Sanitize { action: SanitizeAction::Overwrite, immed: true, ause: false, param_len: 8 };
        assert_eq!(Command::decode(&sanitize_cdb(0x81, 8)), Ok(Command::Sanitize(immed)), "IMMED");
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

    fn erase(ause: bool) -> Sanitize {
        Sanitize { action: SanitizeAction::BlockErase, immed: false, ause, param_len: 0 }
    }

    #[test]
    fn commands_wait_while_sanitizing_and_failure_mode() {
        let d = disk(100);
        let running = d.start_sanitize(&erase(true), vec![], &ExecContext::default()).unwrap().unwrap();
        assert_eq!(d.sanitize_in_progress(), Some(0));
        let busy = Err(ScsiError::SanitizeInProgress { progress: 0 });
        assert_eq!(run(&d, &cdb10(0x28, 0, 0, 1)), busy);
        assert_eq!(run(&d, &[0, 0, 0, 0, 0, 0]), busy, "TEST UNIT READY");
        assert_eq!(run(&d, &[0x1B, 0, 0, 0, 1, 0]), busy, "START STOP UNIT");
        assert_eq!(run(&d, &sanitize_cdb(0x02, 0)), busy);
        let again = d.start_sanitize(&erase(false), vec![], &ExecContext::default());
        assert_eq!(again.unwrap_err(), ScsiError::SanitizeInProgress { progress: 0 });
        assert!(run(&d, &[0x12, 0, 0, 0, 96, 0]).is_ok(), "INQUIRY");
        assert!(run(&d, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 16, 0, 0]).is_ok(), "REPORT LUNS");
        let s = run(&d, &[0x03, 0, 0, 0, 18, 0]).unwrap();
        assert_eq!((s[2], s[12], s[13]), (0x02, 0x04, 0x1B), "REQUEST SENSE: SANITIZE IN PROGRESS");
        assert_eq!(ScsiError::SanitizeInProgress { progress: 7 }.sense().code(), sense::SANITIZE_IN_PROGRESS);
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
        drop(d.start_sanitize(&erase(false), vec![], &ExecContext::default()).unwrap());
        assert_eq!(run(&d, &sanitize_cdb(0x1F, 0)), Err(ScsiError::field(1, 4)));
        assert_eq!(run(&d, &cdb10(0x28, 0, 0, 1)), Err(ScsiError::SanitizeFailed));
        assert_eq!(run(&d, &sanitize_cdb(0x02, 0)), Ok(vec![]));
        assert!(run(&d, &cdb10(0x28, 0, 0, 1)).is_ok());
    }

    #[test]
    fn start_sanitize_checks_like_execute() {
        let ctx = ExecContext::default();
        let ro = disk_with(10, DiskConfig { readonly: true, ..Default::default() });
        assert_eq!(ro.start_sanitize(&erase(false), vec![], &ctx).unwrap_err(), ScsiError::WriteProtected);
        assert_eq!(ro.sanitize_in_progress(), None);
        let d = disk(10);
        let bad_len = Sanitize { param_len: 8, ..erase(false) };
        assert_eq!(d.start_sanitize(&bad_len, vec![0; 8], &ctx).unwrap_err(), ScsiError::field_byte(7));
        let overwrite = Sanitize { action: SanitizeAction::Overwrite, immed: true, ause: false, param_len: 8 };
        let short = d.start_sanitize(&overwrite, vec![0; 4], &ctx).unwrap_err();
        assert_eq!(short, ScsiError::ParameterListLengthError);
        assert_eq!(d.sanitize_in_progress(), None, "nothing begun by a refused command");
        let exit = Sanitize { action: SanitizeAction::ExitFailureMode, ..erase(false) };
        assert_eq!(d.start_sanitize(&exit, vec![], &ctx).unwrap_err(), ScsiError::CommandSequenceError);
    }

    /// The operation is the caller's to run, one step at a time; it
    /// reports its progress meanwhile, in the sense data of the commands
    /// it refuses, and leaves the unit ready when it ends.
    #[test]
    fn an_operation_advances_step_by_step_with_progress() {
        // 3 MiB of 512-byte blocks: 3 write steps a pass, 2 passes, then a flush.
        let d = disk(3 * 2048);
        let l = overwrite_list(0x82, &[0x5A; 512]);
        let s = Sanitize { action: SanitizeAction::Overwrite, immed: false, ause: false, param_len: 516 };
        let mut op = d.start_sanitize(&s, l, &ExecContext::default()).unwrap().unwrap();
        let mut seen = vec![op.progress()];
        for _ in 0..6 {
            assert_eq!(block_on(op.step()), Ok(false));
            let p = op.progress();
            assert_eq!(run(&d, &[0, 0, 0, 0, 0, 0]), Err(ScsiError::SanitizeInProgress { progress: p }));
            let sense = run(&d, &[0x03, 0, 0, 0, 18, 0]).unwrap();
            assert_eq!((sense[15], u16::from_be_bytes([sense[16], sense[17]])), (0x80, p), "REQUEST SENSE");
            seen.push(p);
        }
        assert_eq!(seen, vec![0, 10922, 21845, 32768, 43690, 54613, 65535]);
        assert_eq!(block_on(op.step()), Ok(true), "the flush ends it");
        assert_eq!(d.sanitize_in_progress(), None);
        assert_eq!(block_on(op.step()), Ok(true), "a step after the end does nothing");
        drop(op);
        // Two passes with INVERT: the second wrote the inverted pattern.
        assert_eq!(run(&d, &cdb10(0x28, 0, 6143, 1)), Ok(vec![0xA5; 512]));
        assert!(!d.state.sanitize.failed(), "completed: not failed, even once dropped");
    }

    #[test]
    fn an_operation_follows_a_resize() {
        let d = disk(4096);
        let mut op = d.start_sanitize(&erase(false), vec![], &ExecContext::default()).unwrap().unwrap();
        run_data(&d, &cdb10(0x2A, 0, 0, 1), vec![1; 512]).unwrap_err();
        d.resize(1024 * 512).unwrap();
        while !block_on(op.step()).unwrap() {}
        assert_eq!(d.sanitize_in_progress(), None);
        assert_eq!(status(&d)[16..21], [0, 0, 0x04, 0x00, 1], "all 1024 blocks deallocated");
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
}

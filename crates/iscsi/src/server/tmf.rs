//! Counts of the task management functions received and of the answers
//! given, since the server started ([`TmfCounts`], for `lunarctl status`
//! and the metrics): what an initiator's error handler did shows there.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::pdu::{TaskMgmtFunction, TmfResponseCode};

/// The functions counted, by name (RFC 7143 §11.5.1; `other`: any code
/// not defined there).
const FUNCTIONS: [&str; 9] = [
    "abort_task",
    "abort_task_set",
    "clear_aca",
    "clear_task_set",
    "lu_reset",
    "target_warm_reset",
    "target_cold_reset",
    "task_reassign",
    "other",
];

/// The answers counted, by name (§11.6.1).
const RESPONSES: [&str; 9] = [
    "function_complete",
    "task_does_not_exist",
    "lun_does_not_exist",
    "task_still_allegiant",
    "reassignment_not_supported",
    "function_not_supported",
    "authorization_failed",
    "function_rejected",
    "other",
];

fn function_index(f: TaskMgmtFunction) -> usize {
    match f {
        TaskMgmtFunction::AbortTask => 0,
        TaskMgmtFunction::AbortTaskSet => 1,
        TaskMgmtFunction::ClearAca => 2,
        TaskMgmtFunction::ClearTaskSet => 3,
        TaskMgmtFunction::LogicalUnitReset => 4,
        TaskMgmtFunction::TargetWarmReset => 5,
        TaskMgmtFunction::TargetColdReset => 6,
        TaskMgmtFunction::TaskReassign => 7,
        TaskMgmtFunction::Other(_) => 8,
    }
}

fn response_index(r: TmfResponseCode) -> usize {
    match r {
        TmfResponseCode::FunctionComplete => 0,
        TmfResponseCode::TaskDoesNotExist => 1,
        TmfResponseCode::LunDoesNotExist => 2,
        TmfResponseCode::TaskStillAllegiant => 3,
        TmfResponseCode::TaskAllegianceReassignmentNotSupported => 4,
        TmfResponseCode::FunctionNotSupported => 5,
        TmfResponseCode::FunctionAuthorizationFailed => 6,
        TmfResponseCode::FunctionRejected => 7,
        TmfResponseCode::Other(_) => 8,
    }
}

/// The name a function is counted (and logged) under.
pub(crate) fn function_name(f: TaskMgmtFunction) -> &'static str {
    FUNCTIONS[function_index(f)]
}

/// The name a response is counted (and logged) under.
pub(crate) fn response_name(r: TmfResponseCode) -> &'static str {
    RESPONSES[response_index(r)]
}

/// The counters behind [`TmfCounts`]; bumped once per TMF received and
/// once per TMF response sent (task management is rare: no hot path).
#[derive(Debug, Default)]
pub(crate) struct TmfCounters {
    received: [AtomicU64; 9],
    answered: [AtomicU64; 9],
}

impl TmfCounters {
    pub(crate) fn received(&self, f: TaskMgmtFunction) {
        self.received[function_index(f)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn answered(&self, r: TmfResponseCode) {
        self.answered[response_index(r)].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> TmfCounts {
        let load = |a: &[AtomicU64; 9]| -> [u64; 9] { std::array::from_fn(|i| a[i].load(Ordering::Relaxed)) };
        TmfCounts { received: load(&self.received), answered: load(&self.answered) }
    }
}

/// Task management functions received and responses sent, since the
/// server started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TmfCounts {
    received: [u64; 9],
    answered: [u64; 9],
}

impl TmfCounts {
    /// Requests received, by function: `abort_task`, `abort_task_set`,
    /// `clear_aca`, `clear_task_set`, `lu_reset`, `target_warm_reset`,
    /// `target_cold_reset`, `task_reassign`, `other`.
    pub fn received(&self) -> Vec<(&'static str, u64)> {
        FUNCTIONS.iter().copied().zip(self.received).collect()
    }

    /// Responses sent, by response: `function_complete`,
    /// `task_does_not_exist`, `lun_does_not_exist`, ... `other`.
    pub fn answered(&self) -> Vec<(&'static str, u64)> {
        RESPONSES.iter().copied().zip(self.answered).collect()
    }

    /// Requests received of one function.
    pub fn of(&self, f: TaskMgmtFunction) -> u64 {
        self.received[function_index(f)]
    }

    /// Responses sent with one response code.
    pub fn answered_with(&self, r: TmfResponseCode) -> u64 {
        self.answered[response_index(r)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_function_and_response() {
        let c = TmfCounters::default();
        c.received(TaskMgmtFunction::AbortTask);
        c.received(TaskMgmtFunction::AbortTask);
        c.received(TaskMgmtFunction::LogicalUnitReset);
        c.received(TaskMgmtFunction::Other(42));
        c.answered(TmfResponseCode::FunctionComplete);
        c.answered(TmfResponseCode::TaskDoesNotExist);
        c.answered(TmfResponseCode::FunctionNotSupported);
        let s = c.snapshot();
        assert_eq!(s.of(TaskMgmtFunction::AbortTask), 2);
        assert_eq!(s.of(TaskMgmtFunction::LogicalUnitReset), 1);
        assert_eq!(s.of(TaskMgmtFunction::Other(9)), 1);
        assert_eq!(s.of(TaskMgmtFunction::TargetWarmReset), 0);
        assert_eq!(s.answered_with(TmfResponseCode::TaskDoesNotExist), 1);
        let named: Vec<_> = s.received().into_iter().filter(|(_, n)| *n > 0).collect();
        assert_eq!(named, [("abort_task", 2), ("lu_reset", 1), ("other", 1)]);
        let named: Vec<_> = s.answered().into_iter().filter(|(_, n)| *n > 0).collect();
        assert_eq!(named, [("function_complete", 1), ("task_does_not_exist", 1), ("function_not_supported", 1)]);
        assert_eq!(function_name(TaskMgmtFunction::TargetColdReset), "target_cold_reset");
        assert_eq!(response_name(TmfResponseCode::LunDoesNotExist), "lun_does_not_exist");
    }
}

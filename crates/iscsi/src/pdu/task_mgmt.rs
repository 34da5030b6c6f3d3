//! Task Management Function Request (RFC 7143 §11.5) and Response (§11.6).

use zerocopy::{transmute, transmute_ref};

use super::bhs::*;
use super::header::{byte0, Framing, TaskMgmtRequestHeader, TaskMgmtResponseHeader, FINAL};
use super::{expect_no_data, PduCodec, PduError};

/// Task management functions (RFC 7143 §11.5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskMgmtFunction {
    AbortTask,
    AbortTaskSet,
    ClearAca,
    ClearTaskSet,
    LogicalUnitReset,
    TargetWarmReset,
    TargetColdReset,
    TaskReassign,
    /// Any other value: answered with "Task management function not
    /// supported" (§11.6.1).
    Other(u8),
}

impl TaskMgmtFunction {
    pub fn code(self) -> u8 {
        match self {
            TaskMgmtFunction::AbortTask => 1,
            TaskMgmtFunction::AbortTaskSet => 2,
            TaskMgmtFunction::ClearAca => 3,
            TaskMgmtFunction::ClearTaskSet => 4,
            TaskMgmtFunction::LogicalUnitReset => 5,
            TaskMgmtFunction::TargetWarmReset => 6,
            TaskMgmtFunction::TargetColdReset => 7,
            TaskMgmtFunction::TaskReassign => 8,
            TaskMgmtFunction::Other(v) => v & 0x7f,
        }
    }

    pub fn from_code(v: u8) -> TaskMgmtFunction {
        match v & 0x7f {
            1 => TaskMgmtFunction::AbortTask,
            2 => TaskMgmtFunction::AbortTaskSet,
            3 => TaskMgmtFunction::ClearAca,
            4 => TaskMgmtFunction::ClearTaskSet,
            5 => TaskMgmtFunction::LogicalUnitReset,
            6 => TaskMgmtFunction::TargetWarmReset,
            7 => TaskMgmtFunction::TargetColdReset,
            8 => TaskMgmtFunction::TaskReassign,
            v => TaskMgmtFunction::Other(v),
        }
    }
}

/// Task Management Function Request (initiator→target, opcode 0x02,
/// RFC 7143 §11.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: TaskMgmtFunction,
    pub lun: u64,
    pub itt: u32,
    /// ITT of the task to abort (ABORT TASK, TASK REASSIGN), else
    /// 0xffffffff (§11.5.2).
    pub referenced_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    /// CmdSN of the referenced task (§11.5.3).
    pub ref_cmd_sn: u32,
    /// For TASK REASSIGN (§11.5.4).
    pub exp_data_sn: u32,
}

impl PduCodec for TaskMgmtRequest {
    const OPCODE: Opcode = Opcode::TaskMgmtRequest;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        expect_no_data(Self::OPCODE, data)?;
        let w: &TaskMgmtRequestHeader = transmute_ref!(h);
        Ok(TaskMgmtRequest {
            immediate: w.opcode & byte0::IMMEDIATE != 0,
            function: TaskMgmtFunction::from_code(w.function),
            lun: w.lun.get(),
            itt: w.itt.get(),
            referenced_task_tag: w.referenced_task_tag.get(),
            cmd_sn: w.cmd_sn.get(),
            exp_stat_sn: w.exp_stat_sn.get(),
            ref_cmd_sn: w.ref_cmd_sn.get(),
            exp_data_sn: w.exp_data_sn.get(),
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(TaskMgmtRequestHeader {
            opcode,
            function: FINAL | self.function.code(),
            _reserved1: [0; 2],
            framing,
            lun: self.lun.into(),
            itt: self.itt.into(),
            referenced_task_tag: self.referenced_task_tag.into(),
            cmd_sn: self.cmd_sn.into(),
            exp_stat_sn: self.exp_stat_sn.into(),
            ref_cmd_sn: self.ref_cmd_sn.into(),
            exp_data_sn: self.exp_data_sn.into(),
            _reserved2: [0; 8],
        })
    }

    fn immediate(&self) -> bool {
        self.immediate
    }
}

/// Task management responses (RFC 7143 §11.6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TmfResponseCode {
    FunctionComplete,
    TaskDoesNotExist,
    LunDoesNotExist,
    TaskStillAllegiant,
    TaskAllegianceReassignmentNotSupported,
    FunctionNotSupported,
    FunctionAuthorizationFailed,
    FunctionRejected,
    Other(u8),
}

impl TmfResponseCode {
    pub fn code(self) -> u8 {
        match self {
            TmfResponseCode::FunctionComplete => 0,
            TmfResponseCode::TaskDoesNotExist => 1,
            TmfResponseCode::LunDoesNotExist => 2,
            TmfResponseCode::TaskStillAllegiant => 3,
            TmfResponseCode::TaskAllegianceReassignmentNotSupported => 4,
            TmfResponseCode::FunctionNotSupported => 5,
            TmfResponseCode::FunctionAuthorizationFailed => 6,
            TmfResponseCode::FunctionRejected => 255,
            TmfResponseCode::Other(v) => v,
        }
    }

    pub fn from_code(v: u8) -> TmfResponseCode {
        match v {
            0 => TmfResponseCode::FunctionComplete,
            1 => TmfResponseCode::TaskDoesNotExist,
            2 => TmfResponseCode::LunDoesNotExist,
            3 => TmfResponseCode::TaskStillAllegiant,
            4 => TmfResponseCode::TaskAllegianceReassignmentNotSupported,
            5 => TmfResponseCode::FunctionNotSupported,
            6 => TmfResponseCode::FunctionAuthorizationFailed,
            255 => TmfResponseCode::FunctionRejected,
            v => TmfResponseCode::Other(v),
        }
    }
}

/// Task Management Function Response (target→initiator, opcode 0x22,
/// RFC 7143 §11.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskMgmtResponse {
    pub response: TmfResponseCode,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

impl PduCodec for TaskMgmtResponse {
    const OPCODE: Opcode = Opcode::TaskMgmtResponse;

    fn decode(h: &[u8; BHS_LEN], _ahs: &[u8], data: &[u8]) -> Result<Self, PduError> {
        expect_no_data(Self::OPCODE, data)?;
        let w: &TaskMgmtResponseHeader = transmute_ref!(h);
        Ok(TaskMgmtResponse {
            response: TmfResponseCode::from_code(w.response),
            itt: w.itt.get(),
            stat_sn: w.stat_sn.get(),
            exp_cmd_sn: w.exp_cmd_sn.get(),
            max_cmd_sn: w.max_cmd_sn.get(),
        })
    }

    fn encode_header(&self, opcode: u8, framing: Framing) -> [u8; BHS_LEN] {
        transmute!(TaskMgmtResponseHeader {
            opcode,
            flags: FINAL,
            response: self.response.code(),
            _reserved1: 0,
            framing,
            _reserved2: [0; 8],
            itt: self.itt.into(),
            _reserved3: [0; 4],
            stat_sn: self.stat_sn.into(),
            exp_cmd_sn: self.exp_cmd_sn.into(),
            max_cmd_sn: self.max_cmd_sn.into(),
            _reserved4: [0; 12],
        })
    }
}

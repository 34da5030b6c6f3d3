//! Error policies (QEMU's `rerror=` / `werror=`), per direction.

use std::str::FromStr;

use lunar_block::ErrorKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ErrorPolicy {
    /// Return the error to the initiator as CHECK CONDITION.
    #[default]
    Report,
    /// Complete the command as if it succeeded.
    Ignore,
    /// Keep the request (retry flag), stop the target, raise an event; the
    /// request is re-issued on resume.
    Stop,
    /// `Stop` on ENOSPC, `Report` otherwise.
    Enospc,
}

/// What to do with one failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Report,
    Ignore,
    Stop,
}

impl ErrorPolicy {
    pub fn verdict(self, kind: ErrorKind) -> Verdict {
        match self {
            ErrorPolicy::Report => Verdict::Report,
            ErrorPolicy::Ignore => Verdict::Ignore,
            ErrorPolicy::Stop => Verdict::Stop,
            ErrorPolicy::Enospc if kind == ErrorKind::NoSpace => Verdict::Stop,
            ErrorPolicy::Enospc => Verdict::Report,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorPolicy::Report => "report",
            ErrorPolicy::Ignore => "ignore",
            ErrorPolicy::Stop => "stop",
            ErrorPolicy::Enospc => "enospc",
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown error policy {0:?} (expected report, ignore, stop or enospc)")]
pub struct UnknownPolicy(String);

impl FromStr for ErrorPolicy {
    type Err = UnknownPolicy;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "report" => Ok(ErrorPolicy::Report),
            "ignore" => Ok(ErrorPolicy::Ignore),
            "stop" => Ok(ErrorPolicy::Stop),
            "enospc" => Ok(ErrorPolicy::Enospc),
            other => Err(UnknownPolicy(other.to_string())),
        }
    }
}

/// The policies of one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ErrorPolicies {
    pub read: ErrorPolicy,
    pub write: ErrorPolicy,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enospc_stops_only_on_no_space() {
        assert_eq!(ErrorPolicy::Enospc.verdict(ErrorKind::NoSpace), Verdict::Stop);
        assert_eq!(ErrorPolicy::Enospc.verdict(ErrorKind::Io), Verdict::Report);
        assert_eq!(ErrorPolicy::Stop.verdict(ErrorKind::Io), Verdict::Stop);
        assert_eq!(ErrorPolicy::Ignore.verdict(ErrorKind::NoSpace), Verdict::Ignore);
        assert_eq!("enospc".parse::<ErrorPolicy>().unwrap(), ErrorPolicy::Enospc);
        assert!("halt".parse::<ErrorPolicy>().is_err());
    }
}

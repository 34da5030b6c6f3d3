//! The login phase (RFC 7143 §6): a pure state machine fed Login Request
//! PDUs that produces Login Response PDUs and, at the end, the session's
//! identity and negotiated parameters.
//!
//! Stages (§6.3): SecurityNegotiation (AuthMethod, CHAP) →
//! LoginOperationalNegotiation (operational keys) → FullFeaturePhase. The
//! initiator asks to move on with the T bit and NSG; the target agrees by
//! echoing T=1, or holds it back (T=0) while authentication or its own
//! offers are pending. Text may span PDUs with the C bit (§6.4), in both
//! directions.
//!
//! Every failure ends the login: the response carries a Status-Class and
//! Status-Detail (§11.13.5) and the connection is then closed.

use std::collections::{HashSet, VecDeque};

use rand::rngs::StdRng;
use rand::SeedableRng;

use crate::chap::{self, ChapChallenge, ChapError, ChapPolicy};
use crate::keys::{self, KeyValue};
use crate::negotiation::{Negotiator, TargetLimits};
use crate::params::{NegotiatedParams, SessionType, DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH};
use crate::pdu::{Isid, LoginRequest, LoginResponse, LoginStage, Pdu};

/// The only protocol version, 0x00 (RFC 7143 §11.12.4).
pub const ISCSI_VERSION: u8 = 0;

/// Longest iSCSI name (RFC 7143 §4.2.7.1: 223 bytes).
pub const MAX_NAME_LEN: usize = 223;

/// Login status (Status-Class, Status-Detail), RFC 7143 §11.13.5.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoginStatus {
    pub class: u8,
    pub detail: u8,
}

impl LoginStatus {
    pub const SUCCESS: LoginStatus = LoginStatus::new(0x00, 0x00);
    pub const TARGET_MOVED_TEMPORARILY: LoginStatus = LoginStatus::new(0x01, 0x01);
    pub const TARGET_MOVED_PERMANENTLY: LoginStatus = LoginStatus::new(0x01, 0x02);
    /// 0x0200: miscellaneous initiator error.
    pub const INITIATOR_ERROR: LoginStatus = LoginStatus::new(0x02, 0x00);
    pub const AUTHENTICATION_FAILURE: LoginStatus = LoginStatus::new(0x02, 0x01);
    pub const AUTHORIZATION_FAILURE: LoginStatus = LoginStatus::new(0x02, 0x02);
    pub const NOT_FOUND: LoginStatus = LoginStatus::new(0x02, 0x03);
    pub const TARGET_REMOVED: LoginStatus = LoginStatus::new(0x02, 0x04);
    pub const UNSUPPORTED_VERSION: LoginStatus = LoginStatus::new(0x02, 0x05);
    pub const TOO_MANY_CONNECTIONS: LoginStatus = LoginStatus::new(0x02, 0x06);
    pub const MISSING_PARAMETER: LoginStatus = LoginStatus::new(0x02, 0x07);
    pub const CANT_INCLUDE_IN_SESSION: LoginStatus = LoginStatus::new(0x02, 0x08);
    pub const SESSION_TYPE_NOT_SUPPORTED: LoginStatus = LoginStatus::new(0x02, 0x09);
    pub const SESSION_DOES_NOT_EXIST: LoginStatus = LoginStatus::new(0x02, 0x0a);
    pub const INVALID_DURING_LOGIN: LoginStatus = LoginStatus::new(0x02, 0x0b);
    /// 0x0300: miscellaneous target error.
    pub const TARGET_ERROR: LoginStatus = LoginStatus::new(0x03, 0x00);
    pub const SERVICE_UNAVAILABLE: LoginStatus = LoginStatus::new(0x03, 0x01);
    pub const OUT_OF_RESOURCES: LoginStatus = LoginStatus::new(0x03, 0x02);

    pub const fn new(class: u8, detail: u8) -> LoginStatus {
        LoginStatus { class, detail }
    }

    /// Class and detail as one number, e.g. 0x0201.
    pub fn code(self) -> u16 {
        u16::from(self.class) << 8 | u16::from(self.detail)
    }
}

/// How initiators authenticate to a target or to discovery.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum AuthPolicy {
    /// AuthMethod=None is accepted (and CHAP is refused: no secrets).
    #[default]
    None,
    /// CHAP is required.
    Chap(ChapPolicy),
}

/// What the login needs to know about a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginTarget {
    /// The iSCSI name (iqn./eui./naa.).
    pub name: String,
    /// TargetAlias, sent to initiators of normal sessions (§13.6).
    pub alias: Option<String>,
    /// Initiator names allowed to log in; `None` allows every initiator.
    pub allowed_initiators: Option<Vec<String>>,
    pub auth: AuthPolicy,
}

impl LoginTarget {
    /// An open target: no ACL, no authentication.
    pub fn open(name: impl Into<String>) -> LoginTarget {
        LoginTarget { name: name.into(), alias: None, allowed_initiators: None, auth: AuthPolicy::None }
    }

    /// Whether the ACL lets `initiator` in. iSCSI names compare
    /// case-insensitively (they are normalised to lower case, §4.2.7.2).
    pub fn allows(&self, initiator: &str) -> bool {
        self.allowed_initiators.as_ref().is_none_or(|acl| acl.iter().any(|a| a.eq_ignore_ascii_case(initiator)))
    }
}

/// The target-side directory the login consults. Implementations are
/// shared between connections, so the methods take `&self`.
pub trait TargetRegistry {
    /// The target named `name`, if it exists.
    fn target(&self, name: &str) -> Option<LoginTarget>;
    /// The authentication policy of discovery sessions, or `None` when
    /// discovery sessions are refused.
    fn discovery_auth(&self) -> Option<AuthPolicy>;
    /// A fresh, non-zero TSIH for a new session (§11.12.7), or `None` when
    /// no more sessions fit.
    fn allocate_tsih(&self) -> Option<u16>;
    /// Whether the session (initiator, ISID, TSIH) exists, for a login
    /// that adds a connection to it (TSIH ≠ 0).
    fn session_exists(&self, _initiator: &str, _isid: Isid, _tsih: u16) -> bool {
        false
    }
}

impl<T: TargetRegistry + ?Sized> TargetRegistry for &T {
    fn target(&self, name: &str) -> Option<LoginTarget> {
        (**self).target(name)
    }
    fn discovery_auth(&self) -> Option<AuthPolicy> {
        (**self).discovery_auth()
    }
    fn allocate_tsih(&self) -> Option<u16> {
        (**self).allocate_tsih()
    }
    fn session_exists(&self, initiator: &str, isid: Isid, tsih: u16) -> bool {
        (**self).session_exists(initiator, isid, tsih)
    }
}

impl<T: TargetRegistry + ?Sized> TargetRegistry for std::sync::Arc<T> {
    fn target(&self, name: &str) -> Option<LoginTarget> {
        (**self).target(name)
    }
    fn discovery_auth(&self) -> Option<AuthPolicy> {
        (**self).discovery_auth()
    }
    fn allocate_tsih(&self) -> Option<u16> {
        (**self).allocate_tsih()
    }
    fn session_exists(&self, initiator: &str, isid: Isid, tsih: u16) -> bool {
        (**self).session_exists(initiator, isid, tsih)
    }
}

/// Settings of one login, from the portal the connection came in on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginConfig {
    pub limits: TargetLimits,
    /// The Target Portal Group Tag of the portal (§13.9).
    pub portal_group_tag: u16,
    /// StatSN of the first Login Response (any value, §11.13.4).
    pub initial_stat_sn: u32,
    /// Commands the initiator may queue once logged in: the final
    /// response's MaxCmdSN is ExpCmdSN + window - 1 (§4.2.2.1).
    pub cmd_window: u32,
}

impl Default for LoginConfig {
    fn default() -> Self {
        LoginConfig { limits: TargetLimits::default(), portal_group_tag: 1, initial_stat_sn: 0, cmd_window: 128 }
    }
}

/// The result of a successful login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginOutcome {
    pub session_type: SessionType,
    pub initiator_name: String,
    pub initiator_alias: Option<String>,
    /// `None` for a discovery session without TargetName.
    pub target_name: Option<String>,
    pub isid: Isid,
    pub tsih: u16,
    /// True when the login created the session (TSIH was 0).
    pub new_session: bool,
    pub cid: u16,
    /// The authenticated CHAP name, when CHAP was used.
    pub chap_user: Option<String>,
    pub params: NegotiatedParams,
    /// The CmdSN the initiator will use next (its login CmdSN, §4.2.2.1).
    pub exp_cmd_sn: u32,
    /// The MaxCmdSN sent in the final Login Response.
    pub max_cmd_sn: u32,
    /// The StatSN for the next response on this connection.
    pub next_stat_sn: u32,
}

/// Why a login failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginFailure {
    pub status: LoginStatus,
    /// For logs; never sent to the initiator.
    pub reason: String,
}

impl LoginFailure {
    fn new(status: LoginStatus, reason: impl Into<String>) -> LoginFailure {
        LoginFailure { status, reason: reason.into() }
    }
}

impl From<ChapError> for LoginFailure {
    fn from(e: ChapError) -> LoginFailure {
        LoginFailure::new(LoginStatus::AUTHENTICATION_FAILURE, e.to_string())
    }
}

/// What the connection does after feeding one PDU to the login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginStep {
    /// Send the response, then read the next Login Request.
    Continue(LoginResponse),
    /// Send the response; the connection enters the full feature phase
    /// with these parameters (digests apply from the next PDU).
    Complete(LoginResponse, Box<LoginOutcome>),
    /// Send the response, then close the connection.
    Fail(LoginResponse, LoginFailure),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Start,
    Running,
    Done,
}

#[derive(Debug, Clone)]
enum Auth {
    /// No AuthMethod agreed yet.
    NotStarted,
    /// AuthMethod=None agreed.
    NoneAgreed,
    AwaitAlgorithm(ChapPolicy),
    AwaitResponse(ChapPolicy, ChapChallenge),
    Done,
}

#[derive(Debug, Clone, Copy)]
struct First {
    isid: Isid,
    tsih: u16,
    cid: u16,
}

/// A response whose text did not fit one PDU: chunks still to send, then
/// the flags and outcome of the last one.
#[derive(Debug)]
struct Outbound {
    chunks: VecDeque<Vec<u8>>,
    last: LoginResponse,
    outcome: Option<Box<LoginOutcome>>,
}

/// Keys the login itself handles; the rest go to the [`Negotiator`].
const IDENTITY_KEYS: &[&str] = &["InitiatorName", "TargetName", "SessionType"];

/// The login state machine of one connection (RFC 7143 §6).
#[derive(Debug)]
pub struct LoginSession<R> {
    registry: R,
    config: LoginConfig,
    rng: StdRng,
    phase: Phase,
    stage: LoginStage,
    first: Option<First>,
    stat_sn: u32,
    inbound: Vec<u8>,
    outbound: Option<Outbound>,
    session_type: SessionType,
    initiator_name: String,
    initiator_alias: Option<String>,
    target: Option<LoginTarget>,
    policy: AuthPolicy,
    auth: Auth,
    chap_user: Option<String>,
    /// The TargetName asked for (also when refused), for failure reports.
    requested_target: Option<String>,
    /// The CHAP_N the initiator gave (also when refused), for failure reports.
    chap_name: Option<String>,
    negotiator: Negotiator,
    seen: HashSet<String>,
}

impl<R: TargetRegistry> LoginSession<R> {
    pub fn new(registry: R, config: LoginConfig) -> LoginSession<R> {
        let negotiator = Negotiator::new(&config.limits, SessionType::Normal, true);
        LoginSession {
            registry,
            stat_sn: config.initial_stat_sn,
            config,
            rng: StdRng::from_entropy(),
            phase: Phase::Start,
            stage: LoginStage::Security,
            first: None,
            inbound: Vec::new(),
            outbound: None,
            session_type: SessionType::Normal,
            initiator_name: String::new(),
            initiator_alias: None,
            target: None,
            policy: AuthPolicy::None,
            auth: Auth::NotStarted,
            chap_user: None,
            requested_target: None,
            chap_name: None,
            negotiator,
            seen: HashSet::new(),
        }
    }

    /// Feeds any PDU received during login. A PDU other than a Login
    /// Request ends the login with "invalid request during login"
    /// (0x020b, §11.13.5).
    pub fn handle_pdu(&mut self, pdu: &Pdu) -> LoginStep {
        match pdu {
            Pdu::LoginRequest(req) => self.handle(req),
            other => {
                let itt = match other {
                    Pdu::NopOut(p) => p.itt,
                    Pdu::ScsiCommand(p) => p.itt,
                    Pdu::TextRequest(p) => p.itt,
                    Pdu::LogoutRequest(p) => p.itt,
                    Pdu::TaskMgmtRequest(p) => p.itt,
                    Pdu::DataOut(p) => p.itt,
                    _ => crate::pdu::RESERVED_TAG,
                };
                let first = self.first.unwrap_or(First { isid: Isid::default(), tsih: 0, cid: 0 });
                self.phase = Phase::Done;
                let mut resp = self.response(itt, first.isid, first.tsih, 0, 0);
                let failure = LoginFailure::new(
                    LoginStatus::INVALID_DURING_LOGIN,
                    format!("{:?} PDU during login", other.opcode()),
                );
                resp.status_class = failure.status.class;
                resp.status_detail = failure.status.detail;
                LoginStep::Fail(resp, failure)
            }
        }
    }

    /// Feeds one Login Request.
    pub fn handle(&mut self, req: &LoginRequest) -> LoginStep {
        match self.step(req) {
            Ok(step) => step,
            Err(failure) => {
                self.phase = Phase::Done;
                let mut resp = self.response(req.itt, req.isid, req.tsih, req.cmd_sn, req.cmd_sn);
                resp.csg = req.csg;
                resp.nsg = req.nsg;
                resp.status_class = failure.status.class;
                resp.status_detail = failure.status.detail;
                LoginStep::Fail(resp, failure)
            }
        }
    }

    /// True once the login completed or failed.
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The InitiatorName declared so far (`None` before the first text).
    pub fn initiator_name(&self) -> Option<&str> {
        (!self.initiator_name.is_empty()).then_some(self.initiator_name.as_str())
    }

    /// The TargetName the initiator asked for, also if it was refused.
    pub fn requested_target(&self) -> Option<&str> {
        self.requested_target.as_deref()
    }

    /// The CHAP name (CHAP_N) the initiator answered with, also if refused.
    pub fn chap_name(&self) -> Option<&str> {
        self.chap_name.as_deref()
    }

    /// Whether this login must authenticate with CHAP (known once the
    /// initiator named its target or asked for discovery).
    pub fn requires_chap(&self) -> bool {
        matches!(self.policy, AuthPolicy::Chap(_))
    }

    fn response(&mut self, itt: u32, isid: Isid, tsih: u16, exp: u32, max: u32) -> LoginResponse {
        let stat_sn = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        LoginResponse {
            transit: false,
            continue_bit: false,
            csg: self.stage,
            nsg: self.stage,
            version_max: ISCSI_VERSION,
            version_active: ISCSI_VERSION,
            isid,
            tsih,
            itt,
            stat_sn,
            exp_cmd_sn: exp,
            max_cmd_sn: max,
            status_class: 0,
            status_detail: 0,
            data: Vec::new(),
        }
    }

    fn step(&mut self, req: &LoginRequest) -> Result<LoginStep, LoginFailure> {
        let init_err = |why: &str| LoginFailure::new(LoginStatus::INITIATOR_ERROR, why);
        match self.phase {
            Phase::Done => return Err(LoginFailure::new(LoginStatus::INVALID_DURING_LOGIN, "login already finished")),
            Phase::Start => {
                // §11.12.4: we speak version 0 only.
                if req.version_min > ISCSI_VERSION || req.version_max < req.version_min {
                    return Err(LoginFailure::new(
                        LoginStatus::UNSUPPORTED_VERSION,
                        format!("versions {}..={}", req.version_min, req.version_max),
                    ));
                }
                if !matches!(req.csg, LoginStage::Security | LoginStage::Operational) {
                    return Err(init_err("first login PDU not in a negotiation stage"));
                }
                self.first = Some(First { isid: req.isid, tsih: req.tsih, cid: req.cid });
                self.stage = req.csg;
                self.phase = Phase::Running;
            }
            Phase::Running => {
                let f = self.first.ok_or_else(|| init_err("no first PDU"))?;
                if f.isid != req.isid || f.tsih != req.tsih || f.cid != req.cid {
                    return Err(init_err("ISID, TSIH or CID changed during login"));
                }
            }
        }
        // §11.12.2: C=1 requires T=0.
        if req.transit && req.continue_bit {
            return Err(init_err("T and C both set"));
        }
        if req.csg != self.stage {
            return Err(init_err("CSG does not match the current stage"));
        }
        // §11.12.3: a transition goes forward, to Operational or FFP.
        if req.transit && (req.nsg <= req.csg || !matches!(req.nsg, LoginStage::Operational | LoginStage::FullFeature))
        {
            return Err(init_err("invalid NSG"));
        }

        // The initiator fetches the rest of a long response with empty
        // requests (§6.4, C bit).
        if self.outbound.is_some() {
            if !req.data.is_empty() || req.continue_bit {
                return Err(init_err("text sent while a response was continuing"));
            }
            return Ok(self.next_outbound(req));
        }

        if req.continue_bit {
            if self.inbound.len() + req.data.len() > keys::MAX_TEXT_LEN {
                return Err(init_err("login text too long"));
            }
            self.inbound.extend_from_slice(&req.data);
            let resp = self.response(req.itt, req.isid, req.tsih, req.cmd_sn, req.cmd_sn);
            return Ok(LoginStep::Continue(resp));
        }
        let mut text = std::mem::take(&mut self.inbound);
        text.extend_from_slice(&req.data);
        if text.len() > keys::MAX_TEXT_LEN {
            return Err(init_err("login text too long"));
        }
        let pairs = keys::parse(&text).map_err(|e| init_err(&e.to_string()))?;

        let mut answers: Vec<KeyValue> = Vec::new();
        if self.first_text_pending() {
            self.identify(req, &pairs, &mut answers)?;
        }

        let mut auth_keys: Vec<&KeyValue> = Vec::new();
        for kv in &pairs {
            let key = kv.key.as_str();
            if IDENTITY_KEYS.contains(&key) {
                if !self.seen.insert(key.to_owned()) {
                    return Err(init_err("identity key redeclared"));
                }
                continue;
            }
            if key == "InitiatorAlias" {
                if !self.seen.insert(key.to_owned()) {
                    return Err(init_err("InitiatorAlias redeclared"));
                }
                self.initiator_alias = Some(kv.value.clone());
                continue;
            }
            if key == "AuthMethod" || key.starts_with("CHAP_") {
                if self.stage != LoginStage::Security {
                    return Err(init_err("security key outside the security stage"));
                }
                if !self.seen.insert(key.to_owned()) {
                    return Err(init_err("security key repeated"));
                }
                auth_keys.push(kv);
                continue;
            }
            match self.negotiator.negotiate(kv) {
                Ok(Some(answer)) => answers.push(answer),
                Ok(None) => {}
                Err(e) => return Err(init_err(&e.to_string())),
            }
        }
        if self.stage == LoginStage::Security {
            self.authenticate(&auth_keys, &mut answers)?;
        }
        self.decide(req, answers)
    }

    fn first_text_pending(&self) -> bool {
        !self.seen.contains("InitiatorName")
    }

    /// Handles the declarations of the first complete login text:
    /// InitiatorName, SessionType, TargetName (§6.3, §13.4-§13.6, §13.21).
    fn identify(
        &mut self,
        req: &LoginRequest,
        pairs: &[KeyValue],
        answers: &mut Vec<KeyValue>,
    ) -> Result<(), LoginFailure> {
        let get = |k: &str| pairs.iter().find(|kv| kv.key == k).map(|kv| kv.value.as_str());
        let missing = |k: &str| LoginFailure::new(LoginStatus::MISSING_PARAMETER, format!("{k} missing"));
        let initiator = get("InitiatorName").ok_or_else(|| missing("InitiatorName"))?;
        if initiator.is_empty() || initiator.len() > MAX_NAME_LEN {
            return Err(LoginFailure::new(LoginStatus::INITIATOR_ERROR, "bad InitiatorName"));
        }
        self.initiator_name = initiator.to_owned();
        self.session_type = match get("SessionType") {
            None => SessionType::Normal,
            Some(v) => SessionType::from_value(v).ok_or_else(|| {
                LoginFailure::new(LoginStatus::SESSION_TYPE_NOT_SUPPORTED, format!("SessionType={v}"))
            })?,
        };
        let leading = req.tsih == 0;
        if !leading && !self.registry.session_exists(initiator, req.isid, req.tsih) {
            return Err(LoginFailure::new(
                LoginStatus::SESSION_DOES_NOT_EXIST,
                format!("no session with TSIH {}", req.tsih),
            ));
        }
        let target_name = get("TargetName");
        self.requested_target = target_name.map(str::to_owned);
        match self.session_type {
            SessionType::Discovery => {
                self.policy = self.registry.discovery_auth().ok_or_else(|| {
                    LoginFailure::new(LoginStatus::SESSION_TYPE_NOT_SUPPORTED, "discovery sessions are disabled")
                })?;
            }
            SessionType::Normal => {
                let name = target_name.ok_or_else(|| missing("TargetName"))?;
                let target = self
                    .registry
                    .target(name)
                    .ok_or_else(|| LoginFailure::new(LoginStatus::NOT_FOUND, format!("no target {name}")))?;
                if !target.allows(initiator) {
                    return Err(LoginFailure::new(
                        LoginStatus::AUTHORIZATION_FAILURE,
                        format!("{initiator} not in the ACL of {name}"),
                    ));
                }
                self.policy = target.auth.clone();
                if let Some(alias) = &target.alias {
                    answers.push(KeyValue::new("TargetAlias", alias.clone()));
                }
                self.target = Some(target);
            }
        }
        // §13.9: returned in the first response when TargetName was given.
        if target_name.is_some() {
            answers.push(KeyValue::new("TargetPortalGroupTag", self.config.portal_group_tag.to_string()));
        }
        self.negotiator.set_session_type(self.session_type, leading);
        // A login that skips the security stage must not need it.
        if self.stage != LoginStage::Security && matches!(self.policy, AuthPolicy::Chap(_)) {
            return Err(LoginFailure::new(
                LoginStatus::AUTHENTICATION_FAILURE,
                "authentication required but the security stage was skipped",
            ));
        }
        Ok(())
    }

    /// Runs the security stage's keys (RFC 7143 §12.1.3 for CHAP).
    fn authenticate(&mut self, keys_in: &[&KeyValue], answers: &mut Vec<KeyValue>) -> Result<(), LoginFailure> {
        let get = |k: &str| keys_in.iter().find(|kv| kv.key == k).map(|kv| kv.value.as_str());
        let auth_fail = |why: &str| LoginFailure::new(LoginStatus::AUTHENTICATION_FAILURE, why);
        if let Some(methods) = get("AuthMethod") {
            if !matches!(self.auth, Auth::NotStarted) {
                return Err(auth_fail("AuthMethod after authentication started"));
            }
            let offered: Vec<&str> = keys::parse_list(methods).collect();
            match &self.policy {
                AuthPolicy::None if offered.contains(&"None") => {
                    answers.push(KeyValue::new("AuthMethod", "None"));
                    self.auth = Auth::NoneAgreed;
                }
                AuthPolicy::Chap(p) if offered.contains(&"CHAP") => {
                    answers.push(KeyValue::new("AuthMethod", "CHAP"));
                    self.auth = Auth::AwaitAlgorithm(p.clone());
                }
                _ => return Err(auth_fail("no acceptable AuthMethod")),
            }
        }
        let chap_keys = keys_in.iter().any(|kv| kv.key.starts_with("CHAP_"));
        if !chap_keys {
            return Ok(());
        }
        match std::mem::replace(&mut self.auth, Auth::Done) {
            Auth::AwaitAlgorithm(policy) => {
                let offer = get("CHAP_A").ok_or(ChapError::OutOfSequence("CHAP_A expected"))?;
                if keys_in.iter().any(|kv| kv.key.starts_with("CHAP_") && kv.key != "CHAP_A") {
                    return Err(ChapError::OutOfSequence("only CHAP_A expected").into());
                }
                let alg = chap::choose_algorithm(offer, &policy.algorithms).ok_or(ChapError::NoAlgorithm)?;
                let challenge = ChapChallenge::generate(alg, &mut self.rng);
                answers.extend(challenge.keys());
                self.auth = Auth::AwaitResponse(policy, challenge);
                Ok(())
            }
            Auth::AwaitResponse(policy, challenge) => {
                self.verify_chap(&policy, &challenge, &get, answers)?;
                Ok(())
            }
            _ => Err(ChapError::OutOfSequence("CHAP key without AuthMethod=CHAP").into()),
        }
    }

    fn verify_chap<'a>(
        &mut self,
        policy: &ChapPolicy,
        challenge: &ChapChallenge,
        get: &dyn Fn(&str) -> Option<&'a str>,
        answers: &mut Vec<KeyValue>,
    ) -> Result<(), ChapError> {
        if get("CHAP_A").is_some() {
            return Err(ChapError::OutOfSequence("CHAP_A repeated"));
        }
        let name = get("CHAP_N").ok_or(ChapError::Missing("CHAP_N"))?;
        self.chap_name = Some(name.to_owned());
        let response = get("CHAP_R").ok_or(ChapError::Missing("CHAP_R"))?;
        let response = chap::parse_binary(response).ok_or(ChapError::Malformed("CHAP_R"))?;
        let user_ok = chap::constant_time_eq(name.as_bytes(), policy.initiator.user.as_bytes());
        let response_ok = challenge.verify(&policy.initiator.secret, &response);
        if !user_ok {
            return Err(ChapError::UnknownUser);
        }
        if !response_ok {
            return Err(ChapError::WrongResponse);
        }
        match (get("CHAP_I"), get("CHAP_C")) {
            (None, None) => {
                if policy.require_mutual {
                    return Err(ChapError::MutualRequired);
                }
            }
            (Some(id), Some(c)) => {
                let id = chap::parse_identifier(id).ok_or(ChapError::Malformed("CHAP_I"))?;
                let c = chap::parse_binary(c).ok_or(ChapError::Malformed("CHAP_C"))?;
                // §12.1.3: a target must not answer its own challenge.
                if c == challenge.challenge {
                    return Err(ChapError::ReflectedChallenge);
                }
                let target = policy.target.as_ref().ok_or(ChapError::MutualNotConfigured)?;
                let r = challenge.algorithm.response(id, &target.secret, &c);
                answers.push(KeyValue::new("CHAP_N", target.user.clone()));
                answers.push(KeyValue::new("CHAP_R", keys::encode_hex(&r)));
            }
            (None, Some(_)) => return Err(ChapError::Missing("CHAP_I")),
            (Some(_), None) => return Err(ChapError::Missing("CHAP_C")),
        }
        self.chap_user = Some(name.to_owned());
        self.auth = Auth::Done;
        Ok(())
    }

    /// Decides whether to move to the next stage and builds the response.
    fn decide(&mut self, req: &LoginRequest, mut answers: Vec<KeyValue>) -> Result<LoginStep, LoginFailure> {
        let auth_done = match &self.auth {
            Auth::NoneAgreed | Auth::Done => true,
            // AuthMethod defaults to None (§12).
            Auth::NotStarted => matches!(self.policy, AuthPolicy::None),
            Auth::AwaitAlgorithm(_) | Auth::AwaitResponse(..) => false,
        };
        let mut transit = req.transit;
        if transit && self.stage == LoginStage::Security && !auth_done {
            if matches!(self.auth, Auth::NotStarted) {
                return Err(LoginFailure::new(
                    LoginStatus::AUTHENTICATION_FAILURE,
                    "authentication required but not offered",
                ));
            }
            transit = false;
        }
        let entering_operational =
            self.stage == LoginStage::Operational || (transit && req.nsg == LoginStage::FullFeature);
        if entering_operational {
            answers.extend(self.negotiator.declarations());
        }
        if transit && req.nsg == LoginStage::FullFeature {
            let offers = self.negotiator.target_offers();
            if !offers.is_empty() || self.negotiator.awaiting_answers() {
                answers.extend(offers);
                transit = false;
            }
        }

        let data = keys::encode(&answers);
        let f = self.first.ok_or_else(|| LoginFailure::new(LoginStatus::TARGET_ERROR, "login state lost"))?;
        let mut outcome = None;
        let mut tsih = req.tsih;
        let mut max_cmd_sn = req.cmd_sn;
        if transit && req.nsg == LoginStage::FullFeature {
            if tsih == 0 {
                tsih = self
                    .registry
                    .allocate_tsih()
                    .filter(|t| *t != 0)
                    .ok_or_else(|| LoginFailure::new(LoginStatus::OUT_OF_RESOURCES, "no TSIH available"))?;
            }
            max_cmd_sn = req.cmd_sn.wrapping_add(self.config.cmd_window.max(1)).wrapping_sub(1);
            outcome = Some(LoginOutcome {
                session_type: self.session_type,
                initiator_name: self.initiator_name.clone(),
                initiator_alias: self.initiator_alias.clone(),
                target_name: self.target.as_ref().map(|t| t.name.clone()),
                isid: f.isid,
                tsih,
                new_session: req.tsih == 0,
                cid: f.cid,
                chap_user: self.chap_user.clone(),
                params: self.negotiator.finish(),
                exp_cmd_sn: req.cmd_sn,
                max_cmd_sn,
                next_stat_sn: 0,
            });
        }
        let mut last = LoginResponse {
            transit,
            continue_bit: false,
            csg: self.stage,
            nsg: if transit { req.nsg } else { self.stage },
            version_max: ISCSI_VERSION,
            version_active: ISCSI_VERSION,
            isid: req.isid,
            tsih,
            itt: req.itt,
            stat_sn: 0,
            exp_cmd_sn: req.cmd_sn,
            max_cmd_sn,
            status_class: 0,
            status_detail: 0,
            data: Vec::new(),
        };
        // §6.4: during login, PDUs carry at most 8192 bytes of text (the
        // default MaxRecvDataSegmentLength); longer text uses the C bit.
        let limit = DEFAULT_MAX_RECV_DATA_SEGMENT_LENGTH as usize;
        let mut chunks: VecDeque<Vec<u8>> = data.chunks(limit).map(<[u8]>::to_vec).collect();
        let first_chunk = chunks.pop_front().unwrap_or_default();
        if chunks.is_empty() {
            last.data = first_chunk;
            return Ok(self.finish_step(last, outcome.map(Box::new)));
        }
        let mut resp = last.clone();
        resp.transit = false;
        resp.continue_bit = true;
        resp.nsg = resp.csg;
        resp.tsih = req.tsih;
        resp.max_cmd_sn = req.cmd_sn;
        resp.data = first_chunk;
        resp.stat_sn = self.next_stat_sn();
        self.outbound = Some(Outbound { chunks, last, outcome: outcome.map(Box::new) });
        Ok(LoginStep::Continue(resp))
    }

    fn next_stat_sn(&mut self) -> u32 {
        let s = self.stat_sn;
        self.stat_sn = self.stat_sn.wrapping_add(1);
        s
    }

    fn finish_step(&mut self, mut resp: LoginResponse, outcome: Option<Box<LoginOutcome>>) -> LoginStep {
        resp.stat_sn = self.next_stat_sn();
        // The stage changes only once the response with T=1 is sent.
        if resp.transit {
            self.stage = resp.nsg;
        }
        match outcome {
            Some(mut o) => {
                o.next_stat_sn = self.stat_sn;
                self.phase = Phase::Done;
                LoginStep::Complete(resp, o)
            }
            None => LoginStep::Continue(resp),
        }
    }

    fn next_outbound(&mut self, req: &LoginRequest) -> LoginStep {
        let Some(mut out) = self.outbound.take() else {
            let resp = self.response(req.itt, req.isid, req.tsih, req.cmd_sn, req.cmd_sn);
            return LoginStep::Continue(resp);
        };
        let chunk = out.chunks.pop_front().unwrap_or_default();
        if out.chunks.is_empty() {
            let mut last = out.last;
            last.data = chunk;
            last.itt = req.itt;
            return self.finish_step(last, out.outcome);
        }
        let mut resp = out.last.clone();
        resp.transit = false;
        resp.continue_bit = true;
        resp.nsg = resp.csg;
        resp.tsih = req.tsih;
        resp.max_cmd_sn = req.cmd_sn;
        resp.itt = req.itt;
        resp.data = chunk;
        resp.stat_sn = self.next_stat_sn();
        self.outbound = Some(out);
        LoginStep::Continue(resp)
    }
}

#[cfg(test)]
mod tests;

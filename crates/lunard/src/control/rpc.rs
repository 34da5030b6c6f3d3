//! JSON-RPC 2.0 framing: one request (or batch) per line in, one response
//! per line out. Parsing never panics on client input; every failure is a
//! JSON-RPC error object.

use serde_json::{json, Map, Value};

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid request object.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// Invalid method parameters.
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error.
pub const INTERNAL_ERROR: i64 = -32603;

/// An error answer: code, message, optional data.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> RpcError {
        RpcError { code, message: message.into(), data: None }
    }

    pub fn invalid_params(message: impl Into<String>) -> RpcError {
        RpcError::new(INVALID_PARAMS, message)
    }

    pub fn to_value(&self) -> Value {
        let mut e = json!({ "code": self.code, "message": self.message });
        if let (Some(d), Some(obj)) = (&self.data, e.as_object_mut()) {
            obj.insert("data".into(), d.clone());
        }
        e
    }
}

/// One call: `id` is `None` for a notification (no answer is sent).
#[derive(Debug, Clone)]
pub struct Call {
    pub id: Option<Value>,
    pub method: String,
    pub params: Map<String, Value>,
}

/// A successful answer to `id`.
pub fn response(id: &Value, result: Value) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "result": result })
}

/// An error answer to `id` (`null` when the id could not be read).
pub fn error_response(id: &Value, e: &RpcError) -> Value {
    json!({ "jsonrpc": "2.0", "id": id, "error": e.to_value() })
}

/// A notification from the server (used for events).
pub fn notification(method: &str, params: Value) -> Value {
    json!({ "jsonrpc": "2.0", "method": method, "params": params })
}

/// What one line holds.
#[derive(Debug)]
pub enum Incoming {
    Single(Result<Call, (Value, RpcError)>),
    /// A batch; each element parsed on its own.
    Batch(Vec<Result<Call, (Value, RpcError)>>),
    /// Not JSON, or an empty batch: answer with this error (id null).
    Invalid(RpcError),
}

/// Parses one line.
pub fn parse_line(line: &[u8]) -> Incoming {
    let v: Value = match serde_json::from_slice(line) {
        Ok(v) => v,
        Err(e) => return Incoming::Invalid(RpcError::new(PARSE_ERROR, format!("parse error: {e}"))),
    };
    match v {
        Value::Array(items) if items.is_empty() => {
            Incoming::Invalid(RpcError::new(INVALID_REQUEST, "invalid request: empty batch"))
        }
        Value::Array(items) => Incoming::Batch(items.into_iter().map(parse_call).collect()),
        other => Incoming::Single(parse_call(other)),
    }
}

/// Checks one request object.
pub fn parse_call(v: Value) -> Result<Call, (Value, RpcError)> {
    let Value::Object(mut obj) = v else {
        return Err((Value::Null, RpcError::new(INVALID_REQUEST, "invalid request: expected a JSON object")));
    };
    let id = obj.remove("id");
    let reply_id = match &id {
        None => Value::Null,
        // A numeric id must come back exactly as sent: an integer that
        // fits 64 bits does; a fraction or a larger number (parsed as a
        // float) would not, and JSON-RPC 2.0 says ids SHOULD NOT have one.
        Some(Value::Number(n)) if !n.is_i64() && !n.is_u64() => {
            return Err((
                Value::Null,
                RpcError::new(INVALID_REQUEST, "invalid request: a numeric `id` must be an integer of 64 bits at most"),
            ))
        }
        Some(v @ (Value::String(_) | Value::Number(_) | Value::Null)) => v.clone(),
        Some(_) => {
            return Err((
                Value::Null,
                RpcError::new(INVALID_REQUEST, "invalid request: `id` must be a string or number"),
            ))
        }
    };
    let bad = |msg: &str| Err((reply_id.clone(), RpcError::new(INVALID_REQUEST, format!("invalid request: {msg}"))));
    match obj.remove("jsonrpc") {
        Some(Value::String(s)) if s == "2.0" => {}
        _ => return bad("`jsonrpc` must be \"2.0\""),
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        Some(_) => return bad("`method` must be a string"),
        None => return bad("`method` is missing"),
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m,
        Some(Value::Array(a)) if a.is_empty() => Map::new(),
        Some(Value::Array(_)) => {
            return Err((reply_id, RpcError::invalid_params("invalid params: pass parameters by name (a JSON object)")))
        }
        Some(_) => return bad("`params` must be an object or an array"),
    };
    if let Some(k) = obj.keys().next() {
        return bad(&format!("unknown member `{k}`"));
    }
    Ok(Call { id, method, params })
}

/// Typed access to the parameters of one method, with clear messages.
pub struct Params<'a> {
    map: &'a Map<String, Value>,
}

impl<'a> Params<'a> {
    /// Refuses parameters other than `allowed`.
    pub fn new(map: &'a Map<String, Value>, allowed: &[&str]) -> Result<Params<'a>, RpcError> {
        for k in map.keys() {
            if !allowed.contains(&k.as_str()) {
                let expected = if allowed.is_empty() { "none".to_string() } else { allowed.join(", ") };
                return Err(RpcError::invalid_params(format!("unknown parameter `{k}` (expected: {expected})")));
            }
        }
        Ok(Params { map })
    }

    fn get(&self, name: &str) -> Option<&'a Value> {
        self.map.get(name).filter(|v| !v.is_null())
    }

    pub fn opt_u64(&self, name: &str) -> Result<Option<u64>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| {
                RpcError::invalid_params(format!("`{name}` must be a non-negative integer, not {}", kind(v)))
            }),
        }
    }

    pub fn u64(&self, name: &str) -> Result<u64, RpcError> {
        self.opt_u64(name)?.ok_or_else(|| missing(name))
    }

    pub fn opt_str(&self, name: &str) -> Result<Option<&'a str>, RpcError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(RpcError::invalid_params(format!("`{name}` must be a string, not {}", kind(v)))),
        }
    }

    pub fn str(&self, name: &str) -> Result<&'a str, RpcError> {
        self.opt_str(name)?.ok_or_else(|| missing(name))
    }

    /// A boolean, `false` when absent.
    pub fn flag(&self, name: &str) -> Result<bool, RpcError> {
        match self.get(name) {
            None => Ok(false),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(RpcError::invalid_params(format!("`{name}` must be a boolean, not {}", kind(v)))),
        }
    }
}

fn missing(name: &str) -> RpcError {
    RpcError::invalid_params(format!("missing parameter `{name}`"))
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_u64() => "a number",
        Value::Number(n) if n.is_i64() => "a negative integer",
        Value::Number(_) => "a fractional number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_code(i: Incoming) -> i64 {
        match i {
            Incoming::Invalid(e) | Incoming::Single(Err((_, e))) => e.code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn framing_errors() {
        assert_eq!(err_code(parse_line(b"{not json")), PARSE_ERROR);
        assert_eq!(err_code(parse_line(b"[]")), INVALID_REQUEST);
        assert_eq!(err_code(parse_line(b"42")), INVALID_REQUEST);
        assert_eq!(err_code(parse_line(br#"{"jsonrpc":"1.0","method":"status","id":1}"#)), INVALID_REQUEST);
        assert_eq!(err_code(parse_line(br#"{"jsonrpc":"2.0","method":7,"id":1}"#)), INVALID_REQUEST);
        assert_eq!(err_code(parse_line(br#"{"jsonrpc":"2.0","method":"x","id":[1]}"#)), INVALID_REQUEST);
        // Ids that could not be echoed exactly (found by the control_rpc fuzz target).
        assert_eq!(err_code(parse_line(br#"{"jsonrpc":"2.0","method":"x","id":1.5}"#)), INVALID_REQUEST);
        let big = br#"{"jsonrpc":"2.0","method":"x","id":4444444444444000000005633534067010495374}"#;
        assert_eq!(err_code(parse_line(big)), INVALID_REQUEST);
        assert_eq!(err_code(parse_line(br#"{"jsonrpc":"2.0","method":"x","id":1,"params":3}"#)), INVALID_REQUEST);
        assert_eq!(err_code(parse_line(br#"{"jsonrpc":"2.0","method":"x","id":1,"params":[1]}"#)), INVALID_PARAMS);
        assert_eq!(err_code(parse_line(br#"{"jsonrpc":"2.0","method":"x","id":1,"extra":1}"#)), INVALID_REQUEST);
    }

    #[test]
    fn good_calls() {
        let Incoming::Single(Ok(c)) =
            parse_line(br#"{"jsonrpc":"2.0","method":"lun.move","id":"a","params":{"lun":1}}"#)
        else {
            panic!()
        };
        assert_eq!(c.id, Some(json!("a")));
        assert_eq!(c.method, "lun.move");
        let p = Params::new(&c.params, &["lun", "iothread"]).unwrap();
        assert_eq!(p.u64("lun").unwrap(), 1);
        assert_eq!(p.u64("iothread").unwrap_err().code, INVALID_PARAMS);
        assert!(Params::new(&c.params, &["iothread"]).is_err());
        let Incoming::Single(Ok(n)) = parse_line(br#"{"jsonrpc":"2.0","method":"status"}"#) else { panic!() };
        assert_eq!(n.id, None, "a notification");
        let Incoming::Batch(b) = parse_line(br#"[{"jsonrpc":"2.0","method":"status","id":1}, 5]"#) else { panic!() };
        assert!(b[0].is_ok() && b[1].is_err());
    }

    #[test]
    fn param_types() {
        let m = json!({"lun": "1", "spec": 3, "neg": -1});
        let p = Params::new(m.as_object().unwrap(), &["lun", "spec", "neg"]).unwrap();
        assert!(p.u64("lun").unwrap_err().message.contains("a string"));
        assert!(p.str("spec").unwrap_err().message.contains("a number"));
        assert!(p.u64("neg").unwrap_err().message.contains("negative"));
    }
}

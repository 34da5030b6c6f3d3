//! A small blocking client of the control socket (`lunarctl` and tests).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("lunard is not running: no control socket at {} (start lunard, or pass --control PATH)", path.display())]
    NotRunning { path: PathBuf },
    #[error("cannot connect to lunard at {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("control socket {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("lunard closed the connection without answering")]
    Closed,
    #[error("lunard sent something that is not JSON-RPC: {0}")]
    Protocol(String),
    /// An error answer of the daemon.
    #[error("{message}")]
    Rpc { code: i64, message: String, data: Option<Value> },
}

/// One connection to the control socket.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
}

impl Client {
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| match source.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => {
                ClientError::NotRunning { path: path.to_path_buf() }
            }
            _ => ClientError::Connect { path: path.to_path_buf(), source },
        })?;
        let writer = stream.try_clone().map_err(|source| ClientError::Io { path: path.to_path_buf(), source })?;
        Ok(Client { path: path.to_path_buf(), reader: BufReader::new(stream), writer, next_id: 1 })
    }

    fn io(&self, source: io::Error) -> ClientError {
        ClientError::Io { path: self.path.clone(), source }
    }

    /// Sends one raw line (no newline needed).
    pub fn send_line(&mut self, line: &str) -> Result<(), ClientError> {
        let mut l = line.to_string();
        l.push('\n');
        self.writer.write_all(l.as_bytes()).map_err(|e| self.io(e))
    }

    /// Bounds how long [`Client::read_value`] waits (`None`: forever).
    pub fn set_read_timeout(&self, timeout: Option<std::time::Duration>) -> Result<(), ClientError> {
        self.reader.get_ref().set_read_timeout(timeout).map_err(|e| self.io(e))
    }

    /// Reads one line as JSON.
    pub fn read_value(&mut self) -> Result<Value, ClientError> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| self.io(e))?;
        if n == 0 {
            return Err(ClientError::Closed);
        }
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {}", line.trim_end())))
    }

    /// Calls `method` and returns its result, or its error as [`ClientError::Rpc`].
    pub fn call(&mut self, method: &str, params: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = json!({ "jsonrpc": "2.0", "id": id, "method": method, "params": params });
        self.send_line(&req.to_string())?;
        let mut resp = self.read_value()?;
        if resp.get("id") != Some(&json!(id)) {
            return Err(ClientError::Protocol(format!("answer to another request: {resp}")));
        }
        if let Some(e) = resp.get_mut("error") {
            return Err(ClientError::Rpc {
                code: e.get("code").and_then(Value::as_i64).unwrap_or(0),
                message: e.get("message").and_then(Value::as_str).unwrap_or("unknown error").to_string(),
                data: e.get_mut("data").map(Value::take),
            });
        }
        resp.get_mut("result").map(Value::take).ok_or_else(|| ClientError::Protocol(resp.to_string()))
    }
}

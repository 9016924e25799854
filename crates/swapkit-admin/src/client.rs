//! A blocking client: one request, one reply, over a connection that can be reused.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::proto::{Envelope, Failure, Outcome, Reply, Request, MAX_LINE, VERSION};

/// Why a request got no [`Outcome`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The socket could not be reached.
    #[error("cannot connect to {path}: {source}; is the host running with its admin socket enabled, and may you open it (mode 0600, owner only)?")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The connection failed mid-request.
    #[error("the admin connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The host closed the connection without replying.
    #[error("the host closed the connection without a reply")]
    Closed,
    /// The reply was not a reply of this protocol version.
    #[error("the host's reply does not read as protocol v{VERSION}: {0}")]
    Protocol(String),
    /// The host refused the request or could not carry it out.
    #[error("{0}")]
    Refused(Failure),
}

/// A connection to a host's admin socket.
#[derive(Debug)]
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the admin socket at `path`. Replies are awaited for up to two minutes,
    /// since a reload may compile wasm modules.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref();
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.to_owned(),
            source,
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `request` and waits for its reply.
    pub fn request(&mut self, request: &Request) -> Result<Outcome, ClientError> {
        let mut line = serde_json::to_string(&Envelope::new(request))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        self.send_raw(&line)
    }

    /// Sends one raw line (which should end in `\n`) and reads the reply: for tools and tests
    /// that speak the protocol by hand.
    pub fn send_raw(&mut self, line: &str) -> Result<Outcome, ClientError> {
        let sent = self
            .writer
            .write_all(line.as_bytes())
            .and_then(|()| self.writer.flush());
        match sent {
            Ok(()) => {}
            // The host may answer a connection it refuses (busy, forbidden) and close it
            // before the request is written: its reply is still there to read.
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) => {}
            Err(e) => return Err(e.into()),
        }
        let mut reply = String::new();
        let read = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut reply)?;
        if read == 0 {
            return Err(ClientError::Closed);
        }
        let reply: Envelope<Reply> =
            serde_json::from_str(&reply).map_err(|e| ClientError::Protocol(e.to_string()))?;
        if reply.v != VERSION {
            return Err(ClientError::Protocol(format!(
                "the host speaks v{}",
                reply.v
            )));
        }
        match reply.body {
            Reply::Ok(outcome) => Ok(outcome),
            Reply::Error(failure) => Err(ClientError::Refused(failure)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Failure, FailureKind};

    /// A host that refuses a connection answers and closes it before reading: the request's
    /// write then fails, and the client still reads why it was refused.
    #[test]
    fn a_refusal_sent_before_the_request_is_read() {
        let dir = std::env::temp_dir().join(format!("swapkit-admin-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let refusal = Reply::Error(Failure {
                kind: FailureKind::Busy,
                message: "busy".into(),
            });
            let mut line = serde_json::to_vec(&Envelope::new(&refusal)).unwrap();
            line.push(b'\n');
            stream.write_all(&line).unwrap();
        });
        let mut client = Client::connect(&path).unwrap();
        server.join().unwrap();
        match client.request(&Request::Status) {
            Err(ClientError::Refused(f)) => assert_eq!(f.kind, FailureKind::Busy),
            other => panic!("expected the refusal, got {other:?}"),
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! A keep-alive connection to the HTTP API, reading one whole response per request.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::{read_to_eof, Server, WAIT};

/// One response read off a keep-alive connection.
#[derive(Debug)]
pub struct Reply {
    /// Its status code.
    pub status: u16,
    /// Its head, status line and headers.
    pub head: String,
    /// Its body.
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            key.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }
}

/// A keep-alive connection to the API.
pub struct Api {
    /// The connection.
    pub stream: TcpStream,
    received: Vec<u8>,
}

impl Api {
    pub fn connect(server: &Server) -> Api {
        let stream = super::connect(server.api_port());
        stream.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        Api { stream, received: Vec::new() }
    }

    /// Sends `request` (bytes as they go on the wire) and reads one response.
    pub fn send(&mut self, request: &[u8]) -> Reply {
        self.stream.write_all(request).expect("send the request");
        self.read_reply()
    }

    pub fn get(&mut self, path: &str, headers: &str) -> Reply {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}\r\n").as_bytes())
    }

    pub fn post(&mut self, content_type: &str, body: &str) -> Reply {
        let request = format!(
            "POST /publish HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.send(request.as_bytes())
    }

    pub fn read_reply(&mut self) -> Reply {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(end) = self.received.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8(self.received[..end].to_vec()).expect("a UTF-8 head");
                let length: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned())
                    })
                    .expect("a Content-Length")
                    .parse()
                    .unwrap();
                if self.received.len() >= end + 4 + length {
                    let body = self.received[end + 4..end + 4 + length].to_vec();
                    self.received.drain(..end + 4 + length);
                    let status = head[9..12].parse().unwrap();
                    return Reply { status, head, body };
                }
            }
            assert!(
                Instant::now() < deadline,
                "no whole response in {:?}",
                String::from_utf8_lossy(&self.received)
            );
            let mut chunk = [0; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    panic!("closed before a whole response: {:?}", String::from_utf8_lossy(&self.received))
                }
                Ok(n) => self.received.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Whether the server closed the connection within `timeout` (what it sent before is read).
    pub fn closed_within(&mut self, timeout: Duration) -> bool {
        read_to_eof(&mut self.stream, std::mem::take(&mut self.received), timeout).is_some()
    }
}

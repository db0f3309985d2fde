//! The publisher: one persistent TCP connection to the server's control port, speaking the
//! line protocol, and the payloads the receivers parse (see [`crate::parse`]).
//!
//! Payloads: `b<seq>:<ts>:` (to token `all`) and `t<seq>:<ts>:<target>:` (to token
//! `c<target>`), padded with `x` up to the requested size; `ts` is the send time in ns on
//! CLOCK_MONOTONIC. Lines are collected in one buffer and written together, so a burst or a
//! batch of targeted messages is pipelined in as few writes as the socket takes. With acks
//! ([`Control::acked`]) each publish is answered, and the answers are read line by line.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Padding source; longer payloads take it several times.
const PAD: &[u8] = &[b'x'; 1024];
/// The reply to `tcpnumberofclients` must come within this.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);

/// The control connection and its outbound buffer.
pub struct Control {
    stream: TcpStream,
    buf: Vec<u8>,
    payload: usize,
    /// Answers read but not yet taken (acks).
    answers: Vec<u8>,
}

impl Control {
    /// Connects; writes that block longer than `timeout` fail.
    pub fn connect(addr: SocketAddr, payload: usize, timeout: Duration) -> io::Result<Control> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Control { stream, buf: Vec::with_capacity(128 * 1024), payload, answers: Vec::new() })
    }

    /// Connects as [`Control::connect`] and asks for an answer to every publish (`ack on`).
    pub fn acked(addr: SocketAddr, payload: usize, timeout: Duration) -> io::Result<Control> {
        let mut control = Control::connect(addr, payload, timeout)?;
        control.stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        control.stream.write_all(b"ack on\n")?;
        match control.answer_line()?.as_str() {
            "OK ack on" => Ok(control),
            other => Err(io::Error::new(io::ErrorKind::InvalidData, format!("ack on: {other:?}"))),
        }
    }

    /// The answer to the oldest unanswered publish (on a connection with acks): its event id,
    /// or why it was refused.
    pub fn answer(&mut self) -> io::Result<Result<u64, String>> {
        let line = self.answer_line()?;
        match line.strip_prefix("OK ").map(str::parse::<u64>) {
            Some(Ok(id)) => Ok(Ok(id)),
            _ => Ok(Err(line)),
        }
    }

    /// The next line the server answered, without its end.
    fn answer_line(&mut self) -> io::Result<String> {
        let mut chunk = [0u8; 256];
        loop {
            if let Some(end) = self.answers.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.answers.drain(..=end).collect();
                return Ok(String::from_utf8_lossy(&line).trim_end().to_string());
            }
            let got = self.stream.read(&mut chunk)?;
            if got == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "control connection closed"));
            }
            self.answers.extend_from_slice(&chunk[..got]);
        }
    }

    /// Bytes waiting to be written.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Queues `all=b<seq>:<ts>:<pad>`.
    pub fn broadcast(&mut self, seq: u64, ts: u64) {
        let start = self.buf.len();
        let _ = write!(self.buf, "all=b{seq}:{ts}:");
        self.pad(start + 4);
    }

    /// Queues `c<target>=t<seq>:<ts>:<target>:<pad>`.
    pub fn targeted(&mut self, seq: u64, target: u64, ts: u64) {
        let _ = write!(self.buf, "c{target}=");
        let start = self.buf.len();
        let _ = write!(self.buf, "t{seq}:{ts}:{target}:");
        self.pad(start);
    }

    /// Pads the message that starts at `data_start` and ends the line.
    fn pad(&mut self, data_start: usize) {
        let mut missing = self.payload.saturating_sub(self.buf.len() - data_start);
        while missing > 0 {
            let take = missing.min(PAD.len());
            self.buf.extend_from_slice(&PAD[..take]);
            missing -= take;
        }
        self.buf.push(b'\n');
    }

    /// Writes everything queued.
    pub fn flush(&mut self) -> io::Result<()> {
        let res = self.stream.write_all(&self.buf);
        self.buf.clear();
        res
    }

    /// Asks `tcpnumberofclients` and returns the number.
    pub fn number_of_clients(&mut self) -> io::Result<u64> {
        self.flush()?;
        self.stream.write_all(b"tcpnumberofclients\n")?;
        self.stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut reply = Vec::new();
        let mut chunk = [0u8; 256];
        while !reply.contains(&b'}') {
            let got = self.stream.read(&mut chunk)?;
            if got == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "control connection closed"));
            }
            reply.extend_from_slice(&chunk[..got]);
        }
        let end = reply.iter().position(|&b| b == b'}').map_or(reply.len(), |p| p + 1);
        let value: serde_json::Value = serde_json::from_slice(&reply[..end])
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("tcpnumberofclients: {e}")))?;
        value
            .get("numberofclients")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "tcpnumberofclients: no number"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse::StreamParser;
    use std::net::TcpListener;

    fn control(payload: usize) -> Control {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        Control::connect(addr, payload, Duration::from_secs(1)).unwrap()
    }

    /// What a receiver would parse from the data of `line` (after the token's `=`).
    fn parse_data(line: &[u8]) -> crate::parse::Event {
        let data = &line[line.iter().position(|&b| b == b'=').unwrap() + 1..line.len() - 1];
        let event = format!("id: 1\ndata: {}\n\n", String::from_utf8_lossy(data));
        let mut wire = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
        wire.extend(format!("{:x}\r\n{event}\r\n", event.len()).into_bytes());
        let mut got = None;
        StreamParser::new().feed(&wire, |e| got = Some(*e)).unwrap();
        got.unwrap()
    }

    #[test]
    fn lines_round_trip_through_the_parser() {
        let mut c = control(64);
        c.broadcast(7, 123_456_789);
        let line = c.buf.clone();
        assert!(line.starts_with(b"all=b7:123456789:x"));
        assert_eq!(line.len(), 4 + 64 + 1);
        let ev = parse_data(&line);
        assert_eq!((ev.kind, ev.nums[0], ev.nums[1], ev.count), (b'b', 7, 123_456_789, 2));

        c.buf.clear();
        c.targeted(42, 17, 99);
        let line = c.buf.clone();
        assert!(line.starts_with(b"c17=t42:99:17:x"));
        assert_eq!(line.len(), 4 + 64 + 1);
        let ev = parse_data(&line);
        assert_eq!((ev.kind, ev.nums, ev.count), (b't', [42, 99, 17], 3));
    }

    #[test]
    fn small_payload_is_never_cut() {
        let mut c = control(0);
        c.broadcast(1, 2);
        assert_eq!(c.buf, b"all=b1:2:\n");
    }
}

//! The presence phase: `GET /presence?token=all&count` on the HTTP API, one poll after the
//! other down one keep-alive connection, each answer timed and its count read.
//!
//! Owns the polls and reading their answers; what the count should be and how the figures are
//! shown is [`crate::run`]'s and [`crate::report`]'s business.

use std::io::{self, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::publish::read_answer;

/// The token every connection subscribes to (`subscribe=all-c<i>`).
const TOKEN: &str = "all";

/// What the polls saw.
#[derive(Debug, Clone, Default)]
pub struct Polled {
    /// Each poll's time from its request to its whole answer, ns, in order.
    pub times_ns: Vec<u64>,
    /// Each answer's count, in order.
    pub counts: Vec<u64>,
}

/// Polls the API at `api` `polls` times, each waiting `timeout` at most.
pub fn poll(api: SocketAddr, polls: u32, timeout: Duration) -> io::Result<Polled> {
    let mut stream = TcpStream::connect(api)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let request = format!("GET /presence?token={TOKEN}&count HTTP/1.1\r\nHost: {api}\r\n\r\n");
    let mut polled = Polled::default();
    for _ in 0..polls {
        let start = Instant::now();
        stream.write_all(request.as_bytes())?;
        let (status, body) = read_answer(&mut reader)?;
        polled.times_ns.push(u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX));
        if !status.starts_with("HTTP/1.1 200") {
            let body = String::from_utf8_lossy(&body);
            return Err(io::Error::other(format!("{}: {body}", status.trim_end())));
        }
        polled.counts.push(count_of(&body)?);
    }
    Ok(polled)
}

/// The `count` of a presence answer.
fn count_of(body: &[u8]) -> io::Result<u64> {
    let answer: serde_json::Value = serde_json::from_slice(body).map_err(io::Error::other)?;
    answer["count"].as_u64().ok_or_else(|| io::Error::other(format!("no count in {answer}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_count_is_read_from_the_answer() {
        assert_eq!(count_of(br#"{"token":"all","count":18000}"#).unwrap(), 18000);
        assert!(count_of(br#"{"error":"no"}"#).is_err());
        assert!(count_of(b"not json").is_err());
    }
}

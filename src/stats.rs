//! The server's figures and how they are shown: the `status` block, `tcpstatus` JSON, the client
//! list as text and JSON.
//!
//! Owns the exact text of hasses 1.30's reports (labels, typos and all: log watchers grep for
//! them) and the keys of the JSON replies, but for the shards' figures: `figures` declares
//! those with their keys, and `tcpstatus` takes them from there. The status block names each
//! figure by hand: its lines are hasses' own, in hasses' order, then ours, several of which join
//! figures in one sentence. It only formats what it is given: the shards count, the control
//! thread asks and merges.

use std::time::Duration;

use serde_json::json;

use crate::figures::{ClientRow, ClusterFigures, HistoryFigures, HistoryFileFigures, ShardFigures};
use crate::tls::TlsFiles;

/// Everything the status block and `tcpstatus` report.
#[derive(Debug, Clone)]
pub struct Status {
    /// Our version.
    pub version: &'static str,
    /// When this binary was built (`Mon DD YYYY`, as C's `__DATE__`).
    pub compiled: &'static str,
    /// Our process id.
    pub pid: u32,
    /// Our user id now.
    pub uid: u32,
    /// The user we dropped privileges to, if any.
    pub user: Option<String>,
    /// How long the server has run.
    pub running: Duration,
    /// Current log level, 0–2.
    pub log_level: u8,
    /// Whether reinit is allowed now.
    pub reinit: bool,
    /// The CORS base.
    pub cors_base: String,
    /// Peak simultaneous connections since start.
    pub peak_connections: u64,
    /// Valid messages received from publishers.
    pub processed: u64,
    /// Messages refused (malformed, too long).
    pub refused: u64,
    /// Worker threads.
    pub workers: usize,
    /// The shards' counters, summed.
    pub shards: ShardFigures,
    /// The certificate and key files, when serving HTTPS.
    pub tls: Option<TlsFiles>,
    /// What is kept for resume.
    pub history: HistoryFigures,
    /// The cluster, in cluster mode.
    pub cluster: Option<ClusterFigures>,
    /// The history file, with `--history-file`.
    pub history_file: Option<HistoryFileFigures>,
}

impl Status {
    /// The status block, line by line, as hasses writes it, then our own lines.
    pub fn lines(&self) -> Vec<String> {
        let uid_note = self.user.as_deref().unwrap_or("not set");
        let s = &self.shards;
        let mut lines = vec![
            "------- status of hasses -------".to_string(),
            format!("Version: {}", self.version),
            format!("Compiled: {}", self.compiled),
            format!("Pid: {}", self.pid),
            format!("Uid: {} ({uid_note})", self.uid),
            format!("Running time: {}", running_time(self.running)),
            format!("Mode: {}", self.mode()),
        ];
        if let Some(files) = &self.tls {
            lines.extend([
                format!("SSL Cert key file: {}", files.cert.display()),
                format!("SSL Prvt key file: {}", files.key.display()),
            ]);
        }
        lines.extend([
            format!("Loglevel: {}", self.log_level),
            format!("Reinit allowed: {}", if self.reinit { "yes" } else { "no" }),
            format!("CORS-base url: {}", self.cors_base),
            format!("Count of connected clients: {}", s.connections),
            format!("Current registred SSE clients: {}", s.streaming),
            format!("Maximum number of connections: {}", self.peak_connections),
            format!("Total client handshaked: {}", s.handshakes),
            format!("Total reinit connection: {}", s.reinits),
            format!("Total message processed: {}", self.processed),
            format!("Total message sent: {}", s.deliveries),
            format!("Total message refused: {}", self.refused),
            format!("Dropped slow clients: {}", s.dropped_slow),
            format!("Refused connections: {}", s.refused),
            format!("Worker threads: {}", self.workers),
            format!("Resumed clients: {} (told of a gap: {})", s.resumes(), s.resumes_with_gap),
            format!("Refused subscriptions (token): {}", s.auth_refusals()),
            format!("Streams ended by order: {} (banned reconnects: {})", s.disconnected, s.banned),
        ]);
        if self.tls.is_some() {
            lines.push(format!(
                "TLS handshakes: {} full, {} resumed",
                s.tls_full_handshakes, s.tls_resumed_handshakes
            ));
        }
        lines.extend([format!(
            "History: {} events, {} bytes, oldest id {}",
            self.history.events,
            self.history.bytes,
            self.history.oldest.map_or_else(|| "-".to_string(), |id| id.to_string())
        )]);
        if let Some(f) = &self.history_file {
            lines.push(format!(
                "History file: {} bytes, {} events written{}",
                f.bytes,
                f.written,
                if f.writing { "" } else { ", no longer written (a write failed)" }
            ));
        }
        if let Some(c) = &self.cluster {
            lines.push(format!(
                "Cluster: {}, {} nodes, tail lag {} ms, {} publishes buffered",
                if c.connected { "connected" } else { "disconnected" },
                c.nodes,
                c.lag_ms,
                c.buffered
            ));
        }
        lines.push("------------- end --------------".to_string());
        lines
    }

    /// hasses' words for the mode, in the status block and `tcpstatus` alike: scripts compare them.
    fn mode(&self) -> &'static str {
        if self.tls.is_some() {
            "SSL encrypted (https)"
        } else {
            "unencrypted (http)"
        }
    }

    /// The `tcpstatus` reply: hasses' keys and ours. The shards' figures come from their
    /// declaration, each under its own key; the rest are the control thread's, the history's,
    /// and two sums of shard figures.
    pub fn json(&self) -> serde_json::Value {
        let s = &self.shards;
        let mut json = json!({
            "version": self.version,
            "runningtime": running_time(self.running),
            "mode": self.mode(),
            "loglevel": self.log_level,
            "maxconncli": self.peak_connections,
            "msgproccnt": self.processed,
            "msgrefusedcnt": self.refused,
            "workers": self.workers,
            "reinit": self.reinit,
            "resumecnt": s.resumes(),
            "authrefusedcnt": s.auth_refusals(),
            "historyevents": self.history.events,
            "historybytes": self.history.bytes,
            "historyoldest": self.history.oldest.map(|id| id.to_string()),
        });
        let keys = json.as_object_mut().expect("a JSON object");
        for (figure, value) in s.figures() {
            let taken = keys.insert(figure.json.to_string(), value.into());
            // A declared key must not hide one of the keys above: the test of every figure's
            // key would catch it here.
            debug_assert!(taken.is_none(), "tcpstatus key {} twice", figure.json);
        }
        if let Some(f) = &self.history_file {
            json["historyfile"] = json!({ "bytes": f.bytes, "written": f.written, "writing": f.writing });
        }
        if let Some(c) = &self.cluster {
            json["cluster"] = json!({
                "connected": c.connected,
                "nodes": c.nodes,
                "lagms": c.lag_ms,
                "buffered": c.buffered,
            });
        }
        json
    }
}

/// The client list block, line by line, as hasses writes it.
pub fn client_list_lines(rows: &[ClientRow]) -> Vec<String> {
    let mut lines = vec!["------- requested client list -------".to_string(), "List of clients:".to_string()];
    for (n, row) in rows.iter().enumerate() {
        // A client is closed at its first socket error, so a listed client never has one.
        lines.push(format!(
            "#{} - <{}> info: {} S:{} Err: 0 Messages: {} Reinit: {} SSL:{}",
            n + 1,
            row.fd,
            row.peer,
            row.state,
            row.messages,
            row.reinits,
            if row.tls.is_some() { "Yes" } else { "No" }
        ));
        lines.push(format!(
            "  Connection time: {}  Handshaked time: {} UniqId:{}",
            running_time(Duration::from_secs(row.connected_secs)),
            // hasses counts this from the connection until the first handshake.
            running_time(Duration::from_secs(row.handshaked_secs.unwrap_or(row.connected_secs))),
            row.id
        ));
        // hasses leaves the line out for a client that sent no User-Agent.
        if !row.agent.is_empty() {
            lines.push(format!("  Agent: {}", row.agent));
        }
        if let Some(tls) = &row.tls {
            lines.push(format!("  SSL: {tls}"));
        }
        if let Some(stream) = row.h2_stream {
            lines.push(format!("  HTTP/2 stream: {stream} (shares <{}>)", row.fd));
        }
        lines.push(format!("  Subscribes: {}", row.tokens.join(",")));
    }
    lines.push("---------------- end ----------------".to_string());
    lines
}

/// The `tcpclientlist` reply.
pub fn client_list_json(rows: &[ClientRow]) -> serde_json::Value {
    json!({ "clients": rows })
}

/// `HH:MM:SS`, or `Nday HH:MM:SS` past a day, as hasses prints running times.
pub fn running_time(elapsed: Duration) -> String {
    let secs = elapsed.as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let hms = format!("{:02}:{:02}:{:02}", rest / 3600, rest % 3600 / 60, rest % 60);
    if days > 0 {
        format!("{days}day {hms}")
    } else {
        hms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn running_time_matches_hasses() {
        assert_eq!(running_time(Duration::from_secs(26)), "00:00:26");
        assert_eq!(running_time(Duration::from_secs(3 * 3600 + 61)), "03:01:01");
        assert_eq!(running_time(Duration::from_secs(2 * 86_400 + 5)), "2day 00:00:05");
    }

    fn row() -> ClientRow {
        ClientRow {
            fd: 6,
            peer: "192.168.1.151:50190".parse().unwrap(),
            state: "SSE",
            messages: 3,
            reinits: 0,
            connected_secs: 180,
            handshaked_secs: Some(180),
            id: String::new(),
            agent: "Mozilla/5.0".into(),
            tokens: vec!["room624".into()],
            worker: 0,
            tls: None,
            last_event_id: 7,
            sub: None,
            h2_stream: None,
        }
    }

    #[test]
    fn client_list_has_hasses_layout() {
        let lines = client_list_lines(&[row()]);
        assert_eq!(
            lines,
            vec![
                "------- requested client list -------",
                "List of clients:",
                "#1 - <6> info: 192.168.1.151:50190 S:SSE Err: 0 Messages: 3 Reinit: 0 SSL:No",
                "  Connection time: 00:03:00  Handshaked time: 00:03:00 UniqId:",
                "  Agent: Mozilla/5.0",
                "  Subscribes: room624",
                "---------------- end ----------------",
            ]
        );
    }

    #[test]
    fn status_keeps_hasses_labels_in_order() {
        let status = Status {
            version: "2.0.0",
            compiled: "May  7 2020",
            pid: 3217,
            uid: 0,
            user: None,
            running: Duration::from_secs(26),
            log_level: 2,
            reinit: false,
            cors_base: "*".into(),
            peak_connections: 4,
            processed: 7,
            refused: 1,
            workers: 2,
            shards: ShardFigures {
                connections: 3,
                streaming: 2,
                handshakes: 5,
                reinits: 1,
                deliveries: 9,
                dropped_slow: 0,
                refused: 0,
                resumes_complete: 2,
                resumes_with_gap: 1,
                ..ShardFigures::default()
            },
            tls: None,
            history: HistoryFigures { events: 5, bytes: 320, oldest: Some(1001) },
            cluster: None,
            history_file: None,
        };
        let lines = status.lines();
        assert_eq!(lines[0], "------- status of hasses -------");
        assert_eq!(lines[4], "Uid: 0 (not set)");
        assert_eq!(lines[5], "Running time: 00:00:26");
        assert_eq!(lines[11], "Current registred SSE clients: 2");
        assert_eq!(lines[16], "Total message sent: 9");
        assert_eq!(lines.last().unwrap(), "------------- end --------------");
        let json = status.json();
        assert_eq!(json["allconncli"], 3);
        assert_eq!(json["maxconncli"], 4);
        assert_eq!(json["msgproccnt"], 7);
        assert_eq!(json["msgsendcnt"], 9);
        assert_eq!(json["mode"], "unencrypted (http)");
        let ours = [
            lines[lines.len() - 5].as_str(),
            lines[lines.len() - 3].as_str(),
            lines[lines.len() - 2].as_str(),
        ];
        assert_eq!(
            ours,
            [
                "Resumed clients: 3 (told of a gap: 1)",
                "Streams ended by order: 0 (banned reconnects: 0)",
                "History: 5 events, 320 bytes, oldest id 1001"
            ]
        );
        assert_eq!((json["resumecnt"].clone(), json["historyoldest"].clone()), (3.into(), "1001".into()));
        let as_user = Status { user: Some("www-data".into()), uid: 33, ..status.clone() };
        assert_eq!(as_user.lines()[4], "Uid: 33 (www-data)");
        let tls = TlsFiles { cert: "/etc/c.pem".into(), key: "/etc/k.pem".into() };
        let shards = ShardFigures { tls_full_handshakes: 4, tls_resumed_handshakes: 6, ..status.shards };
        let https = Status { tls: Some(tls), shards, ..status };
        let lines = https.lines();
        assert_eq!(
            lines[6..9],
            ["Mode: SSL encrypted (https)", "SSL Cert key file: /etc/c.pem", "SSL Prvt key file: /etc/k.pem"]
        );
        assert_eq!(lines[9], "Loglevel: 2");
        assert_eq!(lines[lines.len() - 3], "TLS handshakes: 4 full, 6 resumed");
        assert_eq!(https.json()["mode"], "SSL encrypted (https)");
        assert_eq!(
            (https.json()["tlsfullhandshakes"].clone(), https.json()["tlsresumedhandshakes"].clone()),
            (4.into(), 6.into())
        );
        assert!(https.json().get("cluster").is_none(), "alone, status says nothing of a cluster");
        let cluster = ClusterFigures { connected: false, lag_ms: 12, buffered: 40, nodes: 2 };
        let clustered = Status { cluster: Some(cluster), ..https };
        let lines = clustered.lines();
        assert_eq!(
            lines[lines.len() - 2],
            "Cluster: disconnected, 2 nodes, tail lag 12 ms, 40 publishes buffered"
        );
        let json = clustered.json();
        assert_eq!(
            json["cluster"],
            serde_json::json!({"connected": false, "nodes": 2, "lagms": 12, "buffered": 40})
        );
    }

    #[test]
    fn a_client_without_agent_or_handshake_is_listed_as_hasses_does() {
        let waiting = ClientRow {
            state: "NEW",
            agent: String::new(),
            handshaked_secs: None,
            connected_secs: 7,
            ..row()
        };
        let lines = client_list_lines(&[waiting]);
        assert_eq!(
            lines[2..5],
            [
                "#1 - <6> info: 192.168.1.151:50190 S:NEW Err: 0 Messages: 3 Reinit: 0 SSL:No",
                "  Connection time: 00:00:07  Handshaked time: 00:00:07 UniqId:",
                "  Subscribes: room624",
            ]
        );
    }

    #[test]
    fn every_declared_shard_figure_is_in_tcpstatus_under_its_key() {
        let status = Status {
            version: "2.0.0",
            compiled: "May  7 2020",
            pid: 1,
            uid: 0,
            user: None,
            running: Duration::ZERO,
            log_level: 0,
            reinit: false,
            cors_base: "*".into(),
            peak_connections: 0,
            processed: 0,
            refused: 0,
            workers: 1,
            shards: ShardFigures::numbered(),
            tls: None,
            history: HistoryFigures::default(),
            cluster: None,
            history_file: None,
        };
        let json = status.json();
        for (figure, value) in status.shards.figures() {
            assert_eq!(json[figure.json], value, "{} in {json}", figure.json);
        }
    }
}

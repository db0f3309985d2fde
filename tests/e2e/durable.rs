//! The history file (`--history-file`): a restart resumes everyone exactly, a SIGKILL loses
//! nothing that was written, a damaged tail is cut, a file of another version is refused.

use std::time::Duration;

use nix::sys::signal::Signal;

use crate::common::*;

/// Publishes `t=0` … `t=N-1` and returns their ids, read by a client subscribed throughout.
fn publish_numbered(server: &Server, count: usize) -> Vec<u64> {
    let mut witness = server.subscribe("subscribe=t");
    for n in 0..count {
        server.publish(&format!("t={n}"));
    }
    (0..count).map(|n| witness.expect_data(&n.to_string()).id).collect()
}

/// Resumes on `t` after `id`: the events it gets before nothing comes for a moment.
fn resume(server: &Server, id: u64) -> Vec<Event> {
    let mut client = SseClient::connect(server.sse_port);
    let request =
        get_request("subscribe=t").replacen("\r\n\r\n", &format!("\r\nLast-Event-ID: {id}\r\n\r\n"), 1);
    client.handshake(request.as_bytes());
    let mut events = Vec::new();
    while let Ok(event) = client.try_next_event(Duration::from_millis(500)) {
        events.push(event);
    }
    events
}

fn datas(events: &[Event]) -> Vec<&str> {
    events.iter().filter(|e| e.event.is_none()).map(|e| e.data.as_str()).collect()
}

fn resets(events: &[Event]) -> usize {
    events.iter().filter(|e| e.event.as_deref() == Some("reset")).count()
}

fn with_file(file: &TempFile, extra: &[&str]) -> Server {
    Server::start(&[&["--history-file", file.arg()], extra].concat())
}

#[test]
fn a_clean_restart_resumes_everyone_exactly_with_no_reset() {
    let file = TempFile::new("history");
    let mut first = with_file(&file, &[]);
    let ids = publish_numbered(&first, 5);
    // Status says what the file holds, once the writer took the events.
    let file_status = || first.tcp_json("tcpstatus")["historyfile"].clone();
    wait_until(WAIT, "the writer wrote the 5 events", || file_status()["written"] == 5);
    let said = file_status();
    assert_eq!(said["writing"], true, "{said}");
    assert!(said["bytes"].as_u64() > Some(5 * 40), "{said}");
    first.stop().expect("stopped");
    let second = with_file(&file, &[]);
    let events = resume(&second, ids[1]);
    assert_eq!((resets(&events), datas(&events)), (0, vec!["2", "3", "4"]), "{events:?}");
    let mut back = SseClient::connect(second.sse_port);
    let request =
        get_request("subscribe=t").replacen("\r\n\r\n", &format!("\r\nLast-Event-ID: {}\r\n\r\n", ids[4]), 1);
    back.handshake(request.as_bytes());
    second.publish("t=live");
    let live = back.next_event();
    assert_eq!((live.data.as_str(), live.event), ("live", None), "no reset, no duplicate, no gap");
    assert!(live.id > ids[4], "ids go on growing: {} after {}", live.id, ids[4]);
    let events = resume(&second, ids[0] - 1);
    assert_eq!(resets(&events), 1, "from before the first run: a gap, as always");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(file.path()).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the events are the server's alone");
}

#[test]
fn a_sigkill_loses_nothing_that_was_written() {
    let file = TempFile::new("history");
    let mut first = with_file(&file, &["--history-fsync", "0"]);
    let ids = publish_numbered(&first, 3);
    // The writer writes each batch at once; give it a moment on a busy machine.
    std::thread::sleep(Duration::from_millis(500));
    first.signal(Signal::SIGKILL);
    first.wait_exit(WAIT).expect("killed");
    let second = with_file(&file, &[]);
    second.log.wait_for_line(|l| l.contains("did not stop cleanly"), WAIT);
    let events = resume(&second, ids[0]);
    // What the last moment before the kill sequenced may be missing: told, and the rest given.
    assert_eq!((resets(&events), datas(&events)), (1, vec!["1", "2"]), "{events:?}");
    second.publish("t=live");
    let mut live = second.subscribe("subscribe=t");
    second.publish("t=after");
    assert!(live.expect_data("after").id > ids[2]);
}

#[test]
fn a_damaged_tail_is_cut_at_the_last_whole_record_and_the_server_starts() {
    let file = TempFile::new("history");
    let mut first = with_file(&file, &[]);
    let ids = publish_numbered(&first, 3);
    first.stop().expect("stopped");
    let whole = std::fs::read(file.path()).unwrap();

    let mut garbage = whole.clone();
    garbage.extend_from_slice(b"\x04\0\0\0\x01\x02\x03 not a record");
    std::fs::write(file.path(), &garbage).unwrap();
    let second = with_file(&file, &[]);
    second.log.wait_for_line(|l| l.contains("checksum does not match") && l.contains("dropped"), WAIT);
    let events = resume(&second, ids[0]);
    assert_eq!((resets(&events), datas(&events)), (0, vec!["1", "2"]), "the stop was whole: {events:?}");
    drop(second);

    // Cut inside the last event (the stop after it goes too).
    std::fs::write(file.path(), &whole[..whole.len() - 25]).unwrap();
    let third = with_file(&file, &[]);
    third.log.wait_for_line(|l| l.contains("cut short"), WAIT);
    let events = resume(&third, ids[0]);
    assert_eq!((resets(&events), datas(&events)), (1, vec!["1"]), "{events:?}");
}

#[test]
fn a_file_of_another_version_or_one_that_cannot_be_written_is_refused() {
    let file = TempFile::new("history");
    let mut header = b"hassesHF".to_vec();
    header.extend_from_slice(&99u32.to_le_bytes());
    std::fs::write(file.path(), &header).unwrap();
    let base = ["--port", "0", "--control-port", "0", "--no-api", "--history-file"];
    let (status, _, stderr) = run_to_exit(&[&base[..], &[file.arg()]].concat());
    assert!(!status.success());
    assert!(stderr.contains(&format!("history file {}: format version 99", file.arg())), "{stderr}");
    assert_eq!(std::fs::read(file.path()).unwrap(), header, "left as it was");

    let (status, _, stderr) = run_to_exit(&[&base[..], &["/nonexistent-hasses-dir/history"]].concat());
    assert!(!status.success());
    assert!(stderr.contains("history file /nonexistent-hasses-dir/history"), "{stderr}");

    let (status, _, stderr) = run_to_exit(&[&base[..], &["relative/history"]].concat());
    assert!(!status.success());
    assert!(stderr.contains("--history-file: path must be absolute"), "{stderr}");
}

/// Two servers writing one file would interleave their records: the second is refused, and
/// the first goes on.
#[test]
fn a_second_server_on_the_same_file_is_refused() {
    let file = TempFile::new("history");
    let first = with_file(&file, &[]);
    let mut client = first.subscribe("subscribe=t");
    let base = ["--port", "0", "--control-port", "0", "--no-api", "--history-file"];
    let (status, _, stderr) = run_to_exit(&[&base[..], &[file.arg()]].concat());
    assert!(!status.success());
    assert!(stderr.contains(&format!("history file {}: in use by another hasses", file.arg())), "{stderr}");
    first.publish("t=still here");
    assert_eq!(client.next_data(), "still here");
    let _ = std::fs::remove_file(format!("{}.lock", file.arg()));
}

#[test]
fn without_the_flag_a_restart_is_a_gap_as_before() {
    let file = TempFile::new("history");
    let mut first = with_file(&file, &[]);
    let ids = publish_numbered(&first, 2);
    first.stop().expect("stopped");
    let second = Server::start(&[]);
    let events = resume(&second, ids[0]);
    assert_eq!((resets(&events), datas(&events)), (1, vec![]), "{events:?}");
}

#[test]
fn the_file_stays_within_the_history_limits_and_is_read_back_whole() {
    let file = TempFile::new("history");
    let mut first = with_file(&file, &["--history", "3"]);
    let mut witness = first.subscribe("subscribe=t");
    let big = "x".repeat(50_000);
    let mut ids = Vec::new();
    // 3 MB in all: the file is rewritten from the rings (3 events) once it passes 1 MiB.
    for n in 0..60 {
        first.publish(&format!("t={n}{big}"));
        ids.push(witness.expect_data(&format!("{n}{big}")).id);
    }
    first.stop().expect("stopped");
    let size = std::fs::metadata(file.path()).unwrap().len();
    assert!(size < 1_200_000, "the file holds about what the rings hold: {size} bytes");
    let second = with_file(&file, &["--history", "3"]);
    let events = resume(&second, ids[56]);
    let expected: Vec<String> = (57..60).map(|n| format!("{n}{big}")).collect();
    assert_eq!((resets(&events), datas(&events)), (0, expected.iter().map(String::as_str).collect()));
    let events = resume(&second, ids[55]);
    assert_eq!((resets(&events), datas(&events).len()), (1, 3), "56 was let go before the restart");
}

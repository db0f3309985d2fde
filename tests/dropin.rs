//! A drop-in for hasses 1.30: what monitoring scripts, log watchers and old installs compare
//! or rely on, checked against the real binary. The values are hasses' (its status block,
//! client list and log lines, its `tcpstatus` words), except where README's "What differs"
//! table says why not.

mod common;

use std::time::Duration;

use common::Server;

// ----- subscribing -----

#[test]
fn an_escaped_dash_is_part_of_a_token_not_a_separator() {
    let server = Server::start(&[]);
    let mut client = server.subscribe("subscribe=x%2Dy-z");
    assert_eq!(server.wait_json("tcpsubscribedclients:x-y", "subscribedclients", 1)["subscribedclients"], 1);
    assert_eq!(server.tcp_json("tcpsubscribedclients:x")["subscribedclients"], 0);
    assert_eq!(server.tcp_json("tcpsubscribedclients:z")["subscribedclients"], 1);
    let list = server.client_list();
    assert!(list.iter().any(|line| line == "  Subscribes: x-y,z"), "{list:?}");
    // `x=…` is for the token x; the token x-y is reached through its prefix.
    server.publish("x=not for x-y");
    server.publish("x*=for x-y");
    client.expect_data("for x-y");
    assert!(client.still_open_after(Duration::from_millis(100)));
}

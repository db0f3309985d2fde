#!/usr/bin/env python3
"""Publish an event through hasses' TCP control port and print the id it got.

    python3 publish_control.py room1 hello

The connection asks for acknowledgments (`ack on`), so every publish is answered
`OK <id>` or `ERR <reason>` (`OK queued`: a cluster node holds it while Redis is unreachable).
Keep the connection open to publish many events.
Standard library only. Settings come from the environment:
    HASSES_CONTROL         the control port (default 127.0.0.1:8085)
    HASSES_CONTROL_SECRET  the secret hasses was started with (--control-secret), if any
"""
import json
import os
import socket
import sys

CONTROL = os.environ.get("HASSES_CONTROL", "127.0.0.1:8085")
SECRET = os.environ.get("HASSES_CONTROL_SECRET", "")


class Control:
    """One control connection with acknowledgments on."""

    def __init__(self):
        host, port = CONTROL.rsplit(":", 1)
        self.conn = socket.create_connection((host, int(port)), timeout=5)
        self.replies = self.conn.makefile("r", encoding="utf-8", newline="\n")
        if SECRET:
            # A right secret gets no reply; a wrong one ERR unauthorized, and hasses closes.
            self.send(f"auth {SECRET}")
        self.send("ack on")
        self.expect_ok()  # "OK ack on"

    def send(self, line):
        self.conn.sendall((line + "\n").encode())

    def expect_ok(self):
        reply = self.replies.readline().rstrip("\n")
        if not reply.startswith("OK "):
            raise RuntimeError(reply or "hasses closed the connection")
        return reply[3:]

    def publish(self, target, data):
        """Publishes `data` to `target` ("room1", "user*", "*") and returns the event's id."""
        if "\n" in data or ";" in data:
            # The line form ends at a newline or a ';': a JSON line carries any data.
            self.send(json.dumps({"to": target, "data": data}))
        else:
            self.send(f"{target}={data}")
        return self.expect_ok()  # "OK 1765100000000001", or "ERR <reason>"

    def close(self):
        self.conn.close()


def main():
    if len(sys.argv) != 3:
        sys.exit(f"usage: {sys.argv[0]} TARGET DATA")
    try:
        control = Control()
        print(control.publish(sys.argv[1], sys.argv[2]))
        control.close()
    except (OSError, RuntimeError) as e:
        sys.exit(f"hasses control port {CONTROL}: {e}")


if __name__ == "__main__":
    main()

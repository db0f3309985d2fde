//go:build ignore

// Publish an event through hasses' TCP control port and print the id it got.
//
//	go run publish_control.go room1 hello
//
// The connection asks for acknowledgments (`ack on`), so every publish is answered
// `OK <id>` or `ERR <reason>` (`OK queued`: a cluster node holds it while Redis is unreachable).
// Keep the connection open to publish many events.
// Standard library only. Settings come from the environment:
//
//	HASSES_CONTROL         the control port (default 127.0.0.1:8085)
//	HASSES_CONTROL_SECRET  the secret hasses was started with (--control-secret), if any
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

// control is one control connection with acknowledgments on.
type control struct {
	conn    net.Conn
	replies *bufio.Reader
}

// dial connects to address, authenticates with secret if it is not empty, and turns acks on.
func dial(address, secret string) (*control, error) {
	conn, err := net.DialTimeout("tcp", address, 5*time.Second)
	if err != nil {
		return nil, err
	}
	c := &control{conn: conn, replies: bufio.NewReader(conn)}
	if secret != "" {
		// A right secret gets no reply; a wrong one ERR unauthorized, then the connection closes.
		c.send("auth " + secret)
	}
	c.send("ack on")
	if _, err := c.expectOK(); err != nil { // "OK ack on"
		conn.Close()
		return nil, err
	}
	return c, nil
}

func (c *control) send(line string) {
	// A failed write shows as a missing reply in expectOK.
	c.conn.Write([]byte(line + "\n"))
}

// expectOK reads one reply line: what follows "OK ", or an error for "ERR <reason>" or a close.
func (c *control) expectOK() (string, error) {
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	reply, err := c.replies.ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("no reply: %w", err)
	}
	reply = strings.TrimSuffix(reply, "\n")
	if !strings.HasPrefix(reply, "OK ") {
		return "", errors.New(reply)
	}
	return reply[3:], nil
}

// publish sends data to target ("room1", "user*", "*") and returns the event's id.
func (c *control) publish(target, data string) (string, error) {
	if strings.ContainsAny(data, "\n;") {
		// The line form ends at a newline or a ';': a JSON line carries any data.
		line, _ := json.Marshal(map[string]string{"to": target, "data": data})
		c.send(string(line))
	} else {
		c.send(target + "=" + data)
	}
	return c.expectOK() // "OK 1765100000000001", or "ERR <reason>"
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go run publish_control.go TARGET DATA")
		os.Exit(2)
	}
	address := os.Getenv("HASSES_CONTROL")
	if address == "" {
		address = "127.0.0.1:8085"
	}
	c, err := dial(address, os.Getenv("HASSES_CONTROL_SECRET"))
	if err != nil {
		fail(address, err)
	}
	id, err := c.publish(os.Args[1], os.Args[2])
	c.conn.Close()
	if err != nil {
		fail(address, err)
	}
	fmt.Println(id)
}

func fail(address string, err error) {
	fmt.Fprintf(os.Stderr, "hasses control port %s: %v\n", address, err)
	os.Exit(1)
}

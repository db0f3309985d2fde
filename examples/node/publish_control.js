#!/usr/bin/env node
// Publish an event through hasses' TCP control port and print the id it got.
//
//     node publish_control.js room1 hello
//
// The connection asks for acknowledgments (`ack on`), so every publish is answered
// `OK <id>` or `ERR <reason>` (`OK queued`: a cluster node holds it while Redis is unreachable).
// Keep the connection open to publish many events.
// Standard library only. Settings come from the environment:
//     HASSES_CONTROL         the control port (default 127.0.0.1:8085)
//     HASSES_CONTROL_SECRET  the secret hasses was started with (--control-secret), if any

const net = require('node:net');
const readline = require('node:readline');

const CONTROL = process.env.HASSES_CONTROL || '127.0.0.1:8085';
const SECRET = process.env.HASSES_CONTROL_SECRET || '';

// One control connection with acknowledgments on. Replies come in the order of the commands.
class Control {
  static async open() {
    const colon = CONTROL.lastIndexOf(':');
    const [host, port] = [CONTROL.slice(0, colon), Number(CONTROL.slice(colon + 1))];
    const socket = net.connect({ host, port });
    socket.setTimeout(5000, () => socket.destroy(new Error('no answer within 5 s')));
    await new Promise((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const control = new Control(socket);
    // A right secret gets no reply; a wrong one ERR unauthorized, then the connection closes.
    if (SECRET) control.send(`auth ${SECRET}`);
    control.send('ack on');
    await control.expectOk(); // "OK ack on"
    return control;
  }

  constructor(socket) {
    this.socket = socket;
    this.lines = readline.createInterface({ input: socket })[Symbol.asyncIterator]();
    // Rejects when the connection fails or closes, so a pending reply does not wait forever.
    this.closed = new Promise((_, reject) => {
      socket.once('error', reject);
      socket.once('close', () => reject(new Error('hasses closed the connection')));
    });
    this.closed.catch(() => {}); // nobody may be waiting for a reply then
  }

  send(line) {
    this.socket.write(`${line}\n`);
  }

  // The next reply: what follows "OK ", or an error for "ERR <reason>" or a close.
  async expectOk() {
    const next = await Promise.race([this.lines.next(), this.closed]);
    if (next.done) throw new Error('hasses closed the connection');
    if (!next.value.startsWith('OK ')) throw new Error(next.value);
    return next.value.slice(3);
  }

  // Publishes `data` to `target` ("room1", "user*", "*") and returns the event's id.
  publish(target, data) {
    if (/[\n;]/.test(data)) {
      // The line form ends at a newline or a ';': a JSON line carries any data.
      this.send(JSON.stringify({ to: target, data }));
    } else {
      this.send(`${target}=${data}`);
    }
    return this.expectOk(); // "OK 1765100000000001", or "ERR <reason>"
  }

  close() {
    this.socket.end();
  }
}

async function main() {
  const [target, data] = process.argv.slice(2);
  if (data === undefined || process.argv.length > 4) {
    console.error('usage: node publish_control.js TARGET DATA');
    process.exit(2);
  }
  const control = await Control.open();
  console.log(await control.publish(target, data));
  control.close();
}

main().catch((error) => {
  console.error(`hasses control port ${CONTROL}: ${error.message}`);
  process.exit(1);
});

<?php
// Publish an event through hasses' TCP control port and print the id it got.
//
//     php publish_control.php room1 hello
//
// The connection asks for acknowledgments (`ack on`), so every publish is answered
// `OK <id>` or `ERR <reason>` (`OK queued`: a cluster node holds it while Redis is unreachable).
// Keep the connection open to publish many events.
// Standard library only. Settings come from the environment:
//     HASSES_CONTROL         the control port (default 127.0.0.1:8085)
//     HASSES_CONTROL_SECRET  the secret hasses was started with (--control-secret), if any

$control = getenv('HASSES_CONTROL') ?: '127.0.0.1:8085';
$secret = getenv('HASSES_CONTROL_SECRET') ?: '';

// Reads one reply line; returns what follows "OK ", throws on "ERR <reason>" or a close.
function expectOk($conn): string
{
    $reply = fgets($conn);
    if ($reply === false) {
        throw new RuntimeException('hasses closed the connection or did not answer');
    }
    $reply = rtrim($reply, "\n");
    if (strncmp($reply, 'OK ', 3) !== 0) {
        throw new RuntimeException($reply);
    }
    return substr($reply, 3);
}

// Opens a control connection with acknowledgments on.
function connect(string $control, string $secret)
{
    $conn = @stream_socket_client("tcp://$control", $errno, $error, 5);
    if ($conn === false) {
        throw new RuntimeException("cannot connect: $error");
    }
    stream_set_timeout($conn, 5);
    if ($secret !== '') {
        // A right secret gets no reply; a wrong one ERR unauthorized, then the connection closes.
        fwrite($conn, "auth $secret\n");
    }
    fwrite($conn, "ack on\n");
    expectOk($conn); // "OK ack on"
    return $conn;
}

// Publishes $data to $target ("room1", "user*", "*") and returns the event's id.
function publish($conn, string $target, string $data): string
{
    if (strpbrk($data, "\n;") !== false) {
        // The line form ends at a newline or a ';': a JSON line carries any data.
        fwrite($conn, json_encode(['to' => $target, 'data' => $data]) . "\n");
    } else {
        fwrite($conn, "$target=$data\n");
    }
    return expectOk($conn); // "OK 1765100000000001", or "ERR <reason>"
}

if ($argc !== 3) {
    fwrite(STDERR, "usage: php $argv[0] TARGET DATA\n");
    exit(2);
}
try {
    $conn = connect($control, $secret);
    echo publish($conn, $argv[1], $argv[2]), "\n";
    fclose($conn);
} catch (RuntimeException $e) {
    fwrite(STDERR, "hasses control port $control: " . $e->getMessage() . "\n");
    exit(1);
}

<?php
// Publish an event through hasses' HTTP API and print the id it got.
//
//     php publish_http.php room1 hello [EVENT]
//
// Standard library only (no curl extension needed). Settings come from the environment:
//     HASSES_API      the API's base URL (default http://127.0.0.1:8086)
//     HASSES_API_KEY  the key hasses was started with (--api-key), if any

$api = getenv('HASSES_API') ?: 'http://127.0.0.1:8086';
$apiKey = getenv('HASSES_API_KEY') ?: '';

// Publishes $data to $to and returns the event's id, as subscribers see it in `id:`.
function publish(
    string $api,
    string $apiKey,
    $to,
    string $data,
    ?string $event = null,
    ?string $except = null
): string {
    $body = ['to' => $to, 'data' => $data]; // to: "room1", "user*", "*", or an array of them
    if ($event !== null) {
        $body['event'] = $event; // the page listens with addEventListener(event, ...)
    }
    if ($except !== null) {
        $body['except'] = $except; // the client (its id= or token's sub) that must not get it
    }
    $headers = "Content-Type: application/json\r\n";
    if ($apiKey !== '') {
        $headers .= "Authorization: Bearer $apiKey\r\n";
    }
    $context = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => $headers,
        'content' => json_encode($body),
        'timeout' => 5,
        'ignore_errors' => true, // read the body of a 4xx too: it says why
    ]]);
    $answer = @file_get_contents("$api/publish", false, $context);
    if ($answer === false) {
        throw new RuntimeException("cannot reach hasses at $api");
    }
    // $http_response_header[0] is the status line: "HTTP/1.1 200 OK".
    $status = (int) explode(' ', $http_response_header[0])[1];
    if ($status === 202) {
        // {"queued":true}: a cluster node holds it while Redis is unreachable; no id yet.
        return 'queued';
    }
    if ($status !== 200) {
        throw new RuntimeException("hasses answered $status: $answer"); // {"error":"why"}
    }
    return json_decode($answer, true)['id']; // {"id":"1765100000000001"}
}

if ($argc < 3 || $argc > 4) {
    fwrite(STDERR, "usage: php $argv[0] TARGET DATA [EVENT]\n");
    exit(2);
}
try {
    echo publish($api, $apiKey, $argv[1], $argv[2], $argv[3] ?? null), "\n";
} catch (RuntimeException $e) {
    fwrite(STDERR, $e->getMessage() . "\n");
    exit(1);
}

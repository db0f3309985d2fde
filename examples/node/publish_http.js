#!/usr/bin/env node
// Publish an event through hasses' HTTP API and print the id it got.
//
//     node publish_http.js room1 hello [EVENT]
//
// Standard library only (Node 18+: the built-in fetch). Settings come from the environment:
//     HASSES_API      the API's base URL (default http://127.0.0.1:8086)
//     HASSES_API_KEY  the key hasses was started with (--api-key), if any

const API = process.env.HASSES_API || 'http://127.0.0.1:8086';
const API_KEY = process.env.HASSES_API_KEY || '';

// Publishes `data` to `to` and returns the event's id, as subscribers see it in `id:`.
async function publish(to, data, { event, except } = {}) {
  const body = { to, data }; // to: "room1", "user*", "*", or an array of them
  if (event) body.event = event; // the page listens with addEventListener(event, ...)
  if (except) body.except = except; // the client (its id= or token's sub) that must not get it
  const headers = { 'Content-Type': 'application/json' };
  if (API_KEY) headers.Authorization = `Bearer ${API_KEY}`;
  const response = await fetch(`${API}/publish`, {
    method: 'POST',
    headers,
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(5000),
  });
  const answer = await response.json(); // {"id":"1765100000000001"} or {"error":"why"}
  // 202 {"queued":true}: a cluster node holds it while Redis is unreachable; no id yet.
  if (response.status === 202) return 'queued';
  if (response.status !== 200) {
    throw new Error(`hasses answered ${response.status}: ${answer.error}`);
  }
  return answer.id;
}

const [target, data, event] = process.argv.slice(2);
if (data === undefined || process.argv.length > 5) {
  console.error('usage: node publish_http.js TARGET DATA [EVENT]');
  process.exit(2);
}
publish(target, data, { event }).then(
  (id) => console.log(id),
  (error) => {
    // fetch says why it could not connect in error.cause.
    const why = error.cause ? `cannot reach ${API}: ${error.cause.message}` : error.message;
    console.error(why);
    process.exit(1);
  },
);

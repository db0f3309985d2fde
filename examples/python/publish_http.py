#!/usr/bin/env python3
"""Publish an event through hasses' HTTP API and print the id it got.

    python3 publish_http.py room1 hello [EVENT]

Standard library only. Settings come from the environment:
    HASSES_API      the API's base URL (default http://127.0.0.1:8086)
    HASSES_API_KEY  the key hasses was started with (--api-key), if any
"""
import json
import os
import sys
import urllib.error
import urllib.request

API = os.environ.get("HASSES_API", "http://127.0.0.1:8086")
API_KEY = os.environ.get("HASSES_API_KEY", "")

# hasses runs next to the backend: never reach it through an HTTP proxy from the environment.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def publish(to, data, event=None, except_id=None):
    """Publishes `data` to `to` and returns the event's id, as subscribers see it in `id:`."""
    body = {"to": to, "data": data}  # to: "room1", "user*", "*", or a list of them
    if event:
        body["event"] = event  # the page listens with addEventListener(event, ...)
    if except_id:
        body["except"] = except_id  # the client (its id= or token's sub) that must not get it
    request = urllib.request.Request(
        API + "/publish",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if API_KEY:
        request.add_header("Authorization", "Bearer " + API_KEY)
    with opener.open(request, timeout=5) as response:  # 200 {"id":"1765100000000001"}
        answer = json.load(response)
    # 202 {"queued":true}: a cluster node holds it while Redis is unreachable; no id yet.
    return answer.get("id", "queued")


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(f"usage: {sys.argv[0]} TARGET DATA [EVENT]")
    try:
        print(publish(sys.argv[1], sys.argv[2], *sys.argv[3:]))
    except urllib.error.HTTPError as e:  # 400, 401, 413 ... with {"error":"why"}
        sys.exit(f"hasses answered {e.code}: {e.read().decode()}")
    except OSError as e:
        sys.exit(f"cannot reach hasses at {API}: {e}")


if __name__ == "__main__":
    main()

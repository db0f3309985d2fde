#!/usr/bin/env python3
"""Mint a subscriber token (a JWT signed with HS256) and print it.

    HASSES_JWT_SECRET=... python3 mint_token.py room1 'user*'

The arguments are the grants: tokens (room1), prefixes (user*) or *. The page then subscribes
with EventSource('/sse?subscribe=room1-user42&access_token=' + token).
Standard library only. Settings come from the environment:
    HASSES_JWT_SECRET    the secret hasses was started with (--jwt-secret); required
    HASSES_JWT_SUB       the client's id (sub), if any: hasses refuses a different id=
    HASSES_JWT_TTL       seconds until the token expires (default 3600); the stream ends then
    HASSES_JWT_ISSUER    iss, when hasses checks one (--jwt-issuer)
    HASSES_JWT_AUDIENCE  aud, when hasses checks one (--jwt-audience)
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time


def b64url(raw):
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def compact(value):
    return json.dumps(value, separators=(",", ":")).encode()


def mint(secret, grants, sub=None, ttl=3600, issuer=None, audience=None):
    claims = {"subscribe": grants, "exp": int(time.time()) + ttl}  # exp is required
    for name, value in (("sub", sub), ("iss", issuer), ("aud", audience)):
        if value:
            claims[name] = value
    header = {"alg": "HS256", "typ": "JWT"}
    signed = b64url(compact(header)) + "." + b64url(compact(claims))
    signature = hmac.new(secret.encode(), signed.encode(), hashlib.sha256).digest()
    return signed + "." + b64url(signature)


def main():
    secret = os.environ.get("HASSES_JWT_SECRET")
    if not secret or len(sys.argv) < 2:
        sys.exit(f"usage: HASSES_JWT_SECRET=... {sys.argv[0]} GRANT...")
    print(mint(
        secret,
        sys.argv[1:],
        sub=os.environ.get("HASSES_JWT_SUB"),
        ttl=int(os.environ.get("HASSES_JWT_TTL", "3600")),
        issuer=os.environ.get("HASSES_JWT_ISSUER"),
        audience=os.environ.get("HASSES_JWT_AUDIENCE"),
    ))


if __name__ == "__main__":
    main()

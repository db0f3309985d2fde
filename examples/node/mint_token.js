#!/usr/bin/env node
// Mint a subscriber token (a JWT signed with HS256) and print it.
//
//     HASSES_JWT_SECRET=... node mint_token.js room1 'user*'
//
// The arguments are the grants: tokens (room1), prefixes (user*) or *. The page then subscribes
// with new EventSource('/sse?subscribe=room1-user42&access_token=' + token).
// Standard library only. Settings come from the environment:
//     HASSES_JWT_SECRET    the secret hasses was started with (--jwt-secret); required
//     HASSES_JWT_SUB       the client's id (sub), if any: hasses refuses a different id=
//     HASSES_JWT_TTL       seconds until the token expires (default 3600); the stream ends then
//     HASSES_JWT_ISSUER    iss, when hasses checks one (--jwt-issuer)
//     HASSES_JWT_AUDIENCE  aud, when hasses checks one (--jwt-audience)

const crypto = require('node:crypto');

const b64url = (text) => Buffer.from(text).toString('base64url');

function mintToken(secret, grants, { sub, ttl = 3600, issuer, audience } = {}) {
  const claims = { subscribe: grants, exp: Math.floor(Date.now() / 1000) + ttl }; // exp is required
  if (sub) claims.sub = sub;
  if (issuer) claims.iss = issuer;
  if (audience) claims.aud = audience;
  const header = { alg: 'HS256', typ: 'JWT' };
  const signed = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = crypto.createHmac('sha256', secret).update(signed).digest('base64url');
  return `${signed}.${signature}`;
}

const secret = process.env.HASSES_JWT_SECRET;
const grants = process.argv.slice(2);
if (!secret || grants.length === 0) {
  console.error('usage: HASSES_JWT_SECRET=... node mint_token.js GRANT...');
  process.exit(2);
}
console.log(mintToken(secret, grants, {
  sub: process.env.HASSES_JWT_SUB,
  ttl: Number(process.env.HASSES_JWT_TTL || 3600),
  issuer: process.env.HASSES_JWT_ISSUER,
  audience: process.env.HASSES_JWT_AUDIENCE,
}));

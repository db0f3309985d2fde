<?php
// Mint a subscriber token (a JWT signed with HS256) and print it.
//
//     HASSES_JWT_SECRET=... php mint_token.php room1 'user*'
//
// The arguments are the grants: tokens (room1), prefixes (user*) or *. The page then subscribes
// with new EventSource('/sse?subscribe=room1-user42&access_token=' + token).
// Standard library only. Settings come from the environment:
//     HASSES_JWT_SECRET    the secret hasses was started with (--jwt-secret); required
//     HASSES_JWT_SUB       the client's id (sub), if any: hasses refuses a different id=
//     HASSES_JWT_TTL       seconds until the token expires (default 3600); the stream ends then
//     HASSES_JWT_ISSUER    iss, when hasses checks one (--jwt-issuer)
//     HASSES_JWT_AUDIENCE  aud, when hasses checks one (--jwt-audience)

function b64url(string $raw): string
{
    return rtrim(strtr(base64_encode($raw), '+/', '-_'), '=');
}

function mintToken(
    string $secret,
    array $grants,
    ?string $sub,
    int $ttl,
    ?string $issuer,
    ?string $audience
): string {
    $claims = ['subscribe' => $grants, 'exp' => time() + $ttl]; // exp is required
    foreach (['sub' => $sub, 'iss' => $issuer, 'aud' => $audience] as $name => $value) {
        if ($value !== null && $value !== '') {
            $claims[$name] = $value;
        }
    }
    $header = ['alg' => 'HS256', 'typ' => 'JWT'];
    $signed = b64url(json_encode($header)) . '.' . b64url(json_encode($claims));
    return $signed . '.' . b64url(hash_hmac('sha256', $signed, $secret, true));
}

$secret = getenv('HASSES_JWT_SECRET') ?: '';
if ($secret === '' || $argc < 2) {
    fwrite(STDERR, "usage: HASSES_JWT_SECRET=... php $argv[0] GRANT...\n");
    exit(2);
}
echo mintToken(
    $secret,
    array_slice($argv, 1),
    getenv('HASSES_JWT_SUB') ?: null,
    (int) (getenv('HASSES_JWT_TTL') ?: 3600),
    getenv('HASSES_JWT_ISSUER') ?: null,
    getenv('HASSES_JWT_AUDIENCE') ?: null,
), "\n";

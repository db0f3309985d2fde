//go:build ignore

// Mint a subscriber token (a JWT signed with HS256) and print it.
//
//	HASSES_JWT_SECRET=... go run mint_token.go room1 'user*'
//
// The arguments are the grants: tokens (room1), prefixes (user*) or *. The page then subscribes
// with new EventSource('/sse?subscribe=room1-user42&access_token=' + token).
// Standard library only. Settings come from the environment:
//
//	HASSES_JWT_SECRET    the secret hasses was started with (--jwt-secret); required
//	HASSES_JWT_SUB       the client's id (sub), if any: hasses refuses a different id=
//	HASSES_JWT_TTL       seconds until the token expires (default 3600); the stream ends then
//	HASSES_JWT_ISSUER    iss, when hasses checks one (--jwt-issuer)
//	HASSES_JWT_AUDIENCE  aud, when hasses checks one (--jwt-audience)
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"time"
)

// The claims hasses reads. Exp is required; the empty optional ones are left out.
type claims struct {
	Subscribe []string `json:"subscribe"`
	Exp       int64    `json:"exp"`
	Sub       string   `json:"sub,omitempty"`
	Iss       string   `json:"iss,omitempty"`
	Aud       string   `json:"aud,omitempty"`
}

func b64url(raw []byte) string {
	return base64.RawURLEncoding.EncodeToString(raw)
}

func mintToken(secret string, c claims) string {
	header, _ := json.Marshal(map[string]string{"alg": "HS256", "typ": "JWT"})
	payload, _ := json.Marshal(c)
	signed := b64url(header) + "." + b64url(payload)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(signed))
	return signed + "." + b64url(mac.Sum(nil))
}

func main() {
	secret := os.Getenv("HASSES_JWT_SECRET")
	if secret == "" || len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: HASSES_JWT_SECRET=... go run mint_token.go GRANT...")
		os.Exit(2)
	}
	ttl := int64(3600)
	if text := os.Getenv("HASSES_JWT_TTL"); text != "" {
		var err error
		if ttl, err = strconv.ParseInt(text, 10, 64); err != nil {
			fmt.Fprintln(os.Stderr, "HASSES_JWT_TTL is not a number of seconds")
			os.Exit(2)
		}
	}
	fmt.Println(mintToken(secret, claims{
		Subscribe: os.Args[1:],
		Exp:       time.Now().Unix() + ttl,
		Sub:       os.Getenv("HASSES_JWT_SUB"),
		Iss:       os.Getenv("HASSES_JWT_ISSUER"),
		Aud:       os.Getenv("HASSES_JWT_AUDIENCE"),
	}))
}

# Sourced by the benchmark scripts: `certificate KEY CERT` writes a fresh self-signed ECDSA P-256
# certificate for localhost and 127.0.0.1, valid a day. CA:FALSE: rustls refuses a CA
# certificate as a server's own.
certificate() {
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -keyout "$1" -out "$2" -subj /CN=localhost \
        -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -addext basicConstraints=critical,CA:FALSE 2>/dev/null
}

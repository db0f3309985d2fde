//! The backend examples in `examples/` (PHP, Python, Node and Go, standard libraries only), run
//! with Debian's interpreters against the real server, as a user runs them: each publishes over
//! the HTTP API and over the control port (acks on) and prints an id that the subscriber then
//! sees in `id:`, and mints a subscriber token that the server accepts for its grants and
//! refuses for anything else. The server runs with `--api-key`, `--control-secret`,
//! `--jwt-secret`, `--jwt-issuer` and `--jwt-audience`, so what each example sends to be let in
//! is checked too. The page (`examples/page.html`) is loaded in headless Chromium.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use crate::common::*;
use crate::programs::{find_program, repo_path, Devtools, TempDir};

const API_KEY: &str = "example-api-key";
const CONTROL_SECRET: &str = "example-control-secret";
const JWT_SECRET: &str = "example-jwt-secret";
const ISSUER: &str = "https://backend.example";
const AUDIENCE: &str = "hasses";

/// How long one example may run: `go run` compiles first (cached after the first run).
const RUN: Duration = Duration::from_secs(120);

/// An interpreter and how it runs a file of `examples/DIR`.
struct Language {
    /// The directory under `examples/`.
    dir: &'static str,
    /// The files' extension.
    extension: &'static str,
    /// The program, then its arguments before the file.
    command: &'static [&'static str],
    /// The Debian package that provides the program.
    package: &'static str,
}

const PHP: Language = Language { dir: "php", extension: "php", command: &["php"], package: "php-cli" };
const PYTHON: Language =
    Language { dir: "python", extension: "py", command: &["python3"], package: "python3" };
const NODE: Language = Language { dir: "node", extension: "js", command: &["node"], package: "nodejs" };
const GO: Language = Language { dir: "go", extension: "go", command: &["go", "run"], package: "golang-go" };

/// The server every example talks to, with every kind of authorization on.
fn secured_server() -> Server {
    Server::start(&[
        "--api-key",
        API_KEY,
        "--control-secret",
        CONTROL_SECRET,
        "--jwt-secret",
        JWT_SECRET,
        "--jwt-issuer",
        ISSUER,
        "--jwt-audience",
        AUDIENCE,
    ])
}

/// The settings the examples read, pointing at `server`.
fn settings(server: &Server) -> Vec<(&'static str, String)> {
    vec![
        ("HASSES_API", format!("http://127.0.0.1:{}", server.api_port())),
        ("HASSES_API_KEY", API_KEY.into()),
        ("HASSES_CONTROL", format!("127.0.0.1:{}", server.cport())),
        ("HASSES_CONTROL_SECRET", CONTROL_SECRET.into()),
        ("HASSES_JWT_SECRET", JWT_SECRET.into()),
        ("HASSES_JWT_ISSUER", ISSUER.into()),
        ("HASSES_JWT_AUDIENCE", AUDIENCE.into()),
    ]
}

/// Runs `examples/DIR/NAME.EXT ARGS` with `settings` (a later pair wins): its standard output
/// trimmed when it exits 0, else its standard error.
fn run_example(
    language: &Language,
    name: &str,
    args: &[&str],
    settings: &[(&str, String)],
) -> Result<String, String> {
    let (program, before) = language.command.split_first().unwrap();
    let mut command = Command::new(find_program(program, language.package));
    command
        .args(before)
        .arg(format!("{name}.{}", language.extension))
        .args(args)
        .current_dir(repo_path("examples").join(language.dir))
        .envs(go_settings())
        .envs(settings.iter().map(|(k, v)| (k, v)));
    let (status, out, err) = run_bounded(command, RUN);
    if status.success() {
        Ok(out.trim().to_owned())
    } else {
        Err(err.trim().to_owned())
    }
}

/// `go run` offline: its build cache in the target directory (kept, so later runs do not
/// compile again), no module proxy, no toolchain download. The other interpreters ignore these.
fn go_settings() -> [(&'static str, PathBuf); 4] {
    [
        ("GOCACHE", PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("go-build")),
        ("GOPROXY", "off".into()),
        ("GOTOOLCHAIN", "local".into()),
        ("GOFLAGS", "".into()),
    ]
}

/// Runs an example that must succeed; panics with what it said otherwise.
fn run_ok(language: &Language, name: &str, args: &[&str], settings: &[(&str, String)]) -> String {
    run_example(language, name, args, settings)
        .unwrap_or_else(|err| panic!("{name}.{}: {err}", language.extension))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A token the test signs itself, granting `room1`, for the subscriber that watches the publishes.
fn test_token() -> String {
    let claims = json!({ "exp": unix_now() + 600, "subscribe": ["room1"], "iss": ISSUER, "aud": AUDIENCE });
    encode(&Header::default(), &claims, &EncodingKey::from_secret(JWT_SECRET.as_bytes())).unwrap()
}

/// The status code the SSE port answers `GET /sse?QUERY` with.
fn handshake_status(server: &Server, query: &str) -> u16 {
    let mut client = SseClient::connect(server.sse_port);
    client.send(get_request(query).as_bytes());
    client.read_head(WAIT).expect("a response head").status
}

/// Asserts the subscriber's next event carries `data` (and `event`), with the id the example printed.
fn expect_event(client: &mut SseClient, printed: &str, event: Option<&str>, data: &str) {
    let got = client.next_event();
    assert_eq!((got.event.as_deref(), got.data.as_str()), (event, data), "{got:?}");
    assert_eq!(printed, got.id.to_string(), "the printed id is the subscriber's `id:`");
}

/// Publishes over the API and over the control port, with the settings and with wrong secrets.
fn publishes_and_prints_the_id(language: &Language) {
    let server = secured_server();
    let mut client = server.subscribe(&format!("subscribe=room1&access_token={}", test_token()));
    let mut settings = settings(&server);

    let id = run_ok(language, "publish_http", &["room1", "over the API", "chat"], &settings);
    expect_event(&mut client, &id, Some("chat"), "over the API");
    let id = run_ok(language, "publish_control", &["room1", "over the control port"], &settings);
    expect_event(&mut client, &id, None, "over the control port");
    // The line form would cut this at the ';' and the newline: the example sends it as JSON.
    let id = run_ok(language, "publish_control", &["room1", "a;b\nc"], &settings);
    expect_event(&mut client, &id, None, "a;b\nc");

    settings.push(("HASSES_API_KEY", "wrong".into()));
    settings.push(("HASSES_CONTROL_SECRET", "wrong".into()));
    let refused = run_example(language, "publish_http", &["room1", "x"], &settings).unwrap_err();
    assert!(refused.contains("401"), "the API's refusal is shown: {refused}");
    let refused = run_example(language, "publish_control", &["room1", "x"], &settings).unwrap_err();
    assert!(refused.contains("ERR unauthorized"), "the control port's refusal is shown: {refused}");
    assert_eq!(client.try_next_event(Duration::from_millis(300)), Err(NoEvent::Timeout), "nothing published");
}

/// Mints a token that lets a subscriber in for its grants and as its `sub`, and for nothing else.
fn mints_a_token_for_its_grants_only(language: &Language) {
    let server = secured_server();
    let mut settings = settings(&server);
    settings.push(("HASSES_JWT_SUB", "u42".into()));
    let token = run_ok(language, "mint_token", &["room1", "user*"], &settings);

    let mut client = server.subscribe(&format!("subscribe=room1-user42&access_token={token}"));
    let reply = control(server.cport(), &format!("auth {CONTROL_SECRET}\nuser42=for u42\n"));
    assert_eq!(reply, "", "published");
    client.expect_data("for u42");
    for query in ["subscribe=room2", "subscribe=*", "subscribe=room1&id=someone-else"] {
        let status = handshake_status(&server, &format!("{query}&access_token={token}"));
        assert_eq!(status, 403, "{query} is not granted");
    }
    settings.push(("HASSES_JWT_TTL", "-120".into()));
    let expired = run_ok(language, "mint_token", &["room1"], &settings);
    assert_eq!(handshake_status(&server, &format!("subscribe=room1&access_token={expired}")), 401);
}

#[test]
#[ignore = "needs php-cli: run by the README's test command"]
fn php_publishes_and_prints_the_id() {
    publishes_and_prints_the_id(&PHP);
}

#[test]
#[ignore = "needs php-cli: run by the README's test command"]
fn php_mints_a_token_for_its_grants_only() {
    mints_a_token_for_its_grants_only(&PHP);
}

#[test]
#[ignore = "needs python3: run by the README's test command"]
fn python_publishes_and_prints_the_id() {
    publishes_and_prints_the_id(&PYTHON);
}

#[test]
#[ignore = "needs python3: run by the README's test command"]
fn python_mints_a_token_for_its_grants_only() {
    mints_a_token_for_its_grants_only(&PYTHON);
}

#[test]
#[ignore = "needs nodejs: run by the README's test command"]
fn node_publishes_and_prints_the_id() {
    publishes_and_prints_the_id(&NODE);
}

#[test]
#[ignore = "needs nodejs: run by the README's test command"]
fn node_mints_a_token_for_its_grants_only() {
    mints_a_token_for_its_grants_only(&NODE);
}

#[test]
#[ignore = "needs golang-go: run by the README's test command"]
fn go_publishes_and_prints_the_id() {
    publishes_and_prints_the_id(&GO);
}

#[test]
#[ignore = "needs golang-go: run by the README's test command"]
fn go_mints_a_token_for_its_grants_only() {
    mints_a_token_for_its_grants_only(&GO);
}

/// The page, opened from its file as the examples' README says, with a token in its address:
/// its EventSource subscribes, and it lists each event with the id the publisher got.
#[test]
#[ignore = "needs chromium: run by the README's test command"]
fn the_page_subscribes_with_its_token_and_lists_the_events() {
    let server =
        Server::start(&["--jwt-secret", JWT_SECRET, "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE]);
    let url = format!(
        "file://{}?token={}&subscribe=room1&server=http://127.0.0.1:{}",
        repo_path("examples/page.html").display(),
        test_token(),
        server.sse_port
    );
    let profile = TempDir::new("chromium-example-page");
    let mut browser = Devtools::launch(&url, &profile);
    let connected = server.wait_json("tcpstatus", "sseconncli", 1);
    assert_eq!(connected["sseconncli"], 1, "the page subscribed\n{}", browser.output());
    // A second subscriber tells the id the page must show.
    let mut client = server.subscribe(&format!("subscribe=room1&access_token={}", test_token()));
    server.publish("room1=to the page");
    let id = client.expect_data("to the page").id;
    browser.wait_until(&format!(
        "document.querySelector('#events li')?.textContent === {}",
        json!(format!("{id}: to the page"))
    ));
}

/// The examples' README names every example file, so none is left out of its index.
#[test]
fn the_examples_readme_names_every_example() {
    let readme = std::fs::read_to_string(repo_path("examples/README.md")).expect("examples/README.md");
    for language in [&PHP, &PYTHON, &NODE, &GO] {
        let dir = repo_path("examples").join(language.dir);
        for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let name = format!("{}/{}", language.dir, entry.unwrap().file_name().to_string_lossy());
            assert!(readme.contains(&format!("({name})")), "examples/README.md links {name}");
        }
    }
}

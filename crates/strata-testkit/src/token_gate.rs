//! Bearer tokens that expire, in front of a real registry: an HTTP gate on
//! 127.0.0.1 that answers `/token` with a fresh opaque token, refuses any
//! other request whose token is missing or older than the lifetime (401
//! with the `WWW-Authenticate: Bearer realm=...` challenge a token-auth
//! registry sends), and passes the rest to the registry behind it. It is
//! how tests see a client outlive its token, as a long pull or a lazy
//! mount does against Docker Hub, whose tokens last minutes.
//!
//! The gate reads requests without bodies only (pulls); each passed
//! request goes to the registry on its own connection, and its answer
//! closes the client's connection.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running gate; it lives as long as the process.
#[derive(Debug, Clone)]
pub struct TokenGate {
    /// `127.0.0.1:PORT`, to use instead of the registry's address.
    pub addr: String,
    state: Arc<State>,
}

#[derive(Debug)]
struct State {
    upstream: String,
    realm: String,
    lifetime: Duration,
    /// Token -> when it was issued.
    tokens: Mutex<HashMap<String, Instant>>,
    issued: AtomicU64,
    refused: AtomicU64,
}

impl TokenGate {
    /// Starts a gate to the registry at `upstream` whose tokens last
    /// `lifetime`.
    pub fn start(upstream: &str, lifetime: Duration) -> TokenGate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gate");
        let addr = listener.local_addr().expect("gate address").to_string();
        let state = Arc::new(State {
            upstream: upstream.to_owned(),
            realm: format!("http://{addr}/token"),
            lifetime,
            tokens: Mutex::new(HashMap::new()),
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        });
        let shared = state.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || serve(&state, client));
            }
        });
        TokenGate { addr, state }
    }

    /// Tokens handed out so far.
    pub fn tokens_issued(&self) -> u64 {
        self.state.issued.load(Ordering::SeqCst)
    }

    /// Requests refused so far for a missing, unknown or expired token.
    pub fn refusals(&self) -> u64 {
        self.state.refused.load(Ordering::SeqCst)
    }
}

/// One request's head: its first line and its header lines, as sent.
struct Head {
    line: String,
    headers: Vec<String>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn path(&self) -> &str {
        self.line.split(' ').nth(1).unwrap_or("/")
    }
}

/// Reads a head, or `None` at the end of the connection.
fn read_head(r: &mut impl BufRead) -> Option<Head> {
    let mut line = String::new();
    if r.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end().to_owned();
        if h.is_empty() {
            break;
        }
        headers.push(h);
    }
    Some(Head {
        line: line.trim_end().to_owned(),
        headers,
    })
}

fn respond(to: &mut TcpStream, status: &str, headers: &[String], body: &[u8]) -> bool {
    let mut out = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for h in headers {
        out.push_str(h);
        out.push_str("\r\n");
    }
    out.push_str("\r\n");
    to.write_all(out.as_bytes()).is_ok() && to.write_all(body).is_ok()
}

fn serve(state: &State, client: TcpStream) {
    let Ok(mut writer) = client.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(client);
    while let Some(head) = read_head(&mut reader) {
        if head.path().starts_with("/token") {
            let token = format!("t{}", state.issued.fetch_add(1, Ordering::SeqCst));
            state
                .tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(token.clone(), Instant::now());
            let body = format!(
                r#"{{"token":"{token}","access_token":"{token}","expires_in":{}}}"#,
                state.lifetime.as_secs().max(1)
            );
            let json = ["Content-Type: application/json".to_owned()];
            if !respond(&mut writer, "200 OK", &json, body.as_bytes()) {
                return;
            }
            continue;
        }
        let fresh = head
            .header("Authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .and_then(|t| {
                let tokens = state.tokens.lock().unwrap_or_else(|e| e.into_inner());
                tokens.get(t).map(|at| at.elapsed() < state.lifetime)
            })
            .unwrap_or(false);
        if !fresh {
            state.refused.fetch_add(1, Ordering::SeqCst);
            let challenge = format!(
                r#"WWW-Authenticate: Bearer realm="{}",service="strata-gate""#,
                state.realm
            );
            // A HEAD answer has no body (its length is the header's).
            let body: &[u8] = if head.line.starts_with("HEAD ") {
                b""
            } else {
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
            };
            let headers = [challenge, "Content-Type: application/json".to_owned()];
            if !respond(&mut writer, "401 Unauthorized", &headers, body) {
                return;
            }
            continue;
        }
        pass(state, &head, &mut writer);
        return;
    }
}

/// Sends `head` to the registry on a new connection and its whole answer
/// back, marked to close the client's connection after it.
fn pass(state: &State, head: &Head, to: &mut TcpStream) {
    let Ok(upstream) = TcpStream::connect(&state.upstream) else {
        return;
    };
    let mut request = format!("{}\r\n", head.line);
    for h in &head.headers {
        let name = h.split(':').next().unwrap_or_default().trim();
        if !name.eq_ignore_ascii_case("Authorization") && !name.eq_ignore_ascii_case("Connection") {
            request.push_str(h);
            request.push_str("\r\n");
        }
    }
    request.push_str("Connection: close\r\n\r\n");
    let Ok(mut w) = upstream.try_clone() else {
        return;
    };
    if w.write_all(request.as_bytes()).is_err() {
        return;
    }
    let mut from = BufReader::new(upstream);
    let Some(answer) = read_head(&mut from) else {
        return;
    };
    let mut out = format!("{}\r\n", answer.line);
    for h in &answer.headers {
        let name = h.split(':').next().unwrap_or_default().trim();
        if !name.eq_ignore_ascii_case("Connection") {
            out.push_str(h);
            out.push_str("\r\n");
        }
    }
    out.push_str("Connection: close\r\n\r\n");
    if to.write_all(out.as_bytes()).is_ok() {
        let _ = std::io::copy(&mut from, to);
    }
}

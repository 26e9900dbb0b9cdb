//! Bearer tokens that expire, in front of a real registry: an HTTP gate on
//! 127.0.0.1 that answers `/token` with a fresh opaque token, refuses any
//! other request whose token is missing or older than the lifetime (401
//! with the `WWW-Authenticate: Bearer realm=...` challenge a token-auth
//! registry sends), and passes the rest to the registry behind it. It is
//! how tests see a client outlive its token, as a long pull or a lazy
//! mount does against Docker Hub, whose tokens last minutes.
//!
//! A token holds the scopes asked for with it (`scope=repository:NAME:
//! ACTIONS`, repeated or blank-separated): a request to a repository the
//! token cannot pull from (GET, HEAD) or push to (the rest) is refused with
//! 401 `insufficient_scope`, and a cross-repository mount
//! (`POST .../blobs/uploads/?mount=D&from=NAME`) whose token cannot pull
//! from NAME starts an ordinary upload instead (202), one of the two
//! answers registries give, or, after [`TokenGate::refuse_mounts`], is
//! refused with 401 as distribution's own does. [`TokenGate::deny`] makes
//! the token service leave out every scope on a repository, as a
//! registry does for a user who may not read it.
//!
//! After [`TokenGate::accept_identity`], the token service hands out
//! tokens only for that identity token (an OAuth2 refresh token), posted
//! as a `grant_type=refresh_token` form as docker posts it; an identity
//! token sent to the registry itself is counted and refused.
//!
//! A gate may also end each token after a number of requests
//! ([`TokenGate::start_counted`]): the same refusal arrives at a chosen
//! point of an upload, without an upload slow enough to outlive a clock.
//!
//! It can also answer chosen requests (upload pieces, manifest reads) with
//! 503 Service Unavailable ([`TokenGate::fail_next`]), as a registry under
//! load does.
//!
//! The gate reads bodies sized by `Content-Length` (the client's upload
//! pieces); a request with another framing is refused (411). Each passed
//! request goes to the registry on its own connection, and its answer
//! closes the client's connection.

use std::collections::HashMap;
use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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
    /// How many requests a token is good for, if it is counted.
    uses: Option<u64>,
    tokens: Mutex<HashMap<String, Token>>,
    issued: AtomicU64,
    refused: AtomicU64,
    /// Refusals of upload pieces (`PATCH` requests).
    refused_pieces: AtomicU64,
    /// What request lines to answer with 503 (those containing the
    /// text), and how many more.
    to_fail: Mutex<(String, u64)>,
    /// Requests answered with 503.
    failed: AtomicU64,
    /// Mounts turned into uploads or refused for want of the source's
    /// scope.
    unmounted: AtomicU64,
    /// Repositories no token gets a scope on.
    denied: Mutex<HashSet<String>>,
    /// Whether a mount without the source's scope is refused (401)
    /// rather than started as an upload.
    mounts_refused_401: AtomicBool,
    /// The one identity token tokens are handed out for, once set.
    identity: Mutex<Option<String>>,
    /// Requests that sent the identity token to the registry itself.
    identity_leaks: AtomicU64,
    /// The scopes each identity token exchange asked for, in order.
    exchanges: Mutex<Vec<Vec<String>>>,
}

/// A token handed out: when, the requests it has passed, and what
/// repositories it may act on (name -> actions).
#[derive(Debug)]
struct Token {
    at: Instant,
    used: u64,
    scopes: HashMap<String, Vec<String>>,
}

impl Token {
    fn allows(&self, repo: &str, action: &str) -> bool {
        self.scopes
            .get(repo)
            .is_some_and(|actions| actions.iter().any(|a| a == action || a == "*"))
    }
}

impl TokenGate {
    /// Starts a gate to the registry at `upstream` whose tokens last
    /// `lifetime`.
    pub fn start(upstream: &str, lifetime: Duration) -> TokenGate {
        TokenGate::open(upstream, lifetime, None)
    }

    /// Starts a gate to the registry at `upstream` whose tokens are each
    /// good for `uses` requests (and an hour).
    pub fn start_counted(upstream: &str, uses: u64) -> TokenGate {
        TokenGate::open(upstream, Duration::from_secs(3600), Some(uses))
    }

    fn open(upstream: &str, lifetime: Duration, uses: Option<u64>) -> TokenGate {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the gate");
        let addr = listener.local_addr().expect("gate address").to_string();
        let state = Arc::new(State {
            upstream: upstream.to_owned(),
            realm: format!("http://{addr}/token"),
            lifetime,
            uses,
            tokens: Mutex::new(HashMap::new()),
            issued: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            refused_pieces: AtomicU64::new(0),
            to_fail: Mutex::new((String::new(), 0)),
            failed: AtomicU64::new(0),
            unmounted: AtomicU64::new(0),
            denied: Mutex::default(),
            mounts_refused_401: AtomicBool::new(false),
            identity: Mutex::new(None),
            identity_leaks: AtomicU64::new(0),
            exchanges: Mutex::default(),
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

    /// Of the refusals, those of upload pieces (`PATCH`): uploads whose
    /// token ran out between their pieces.
    pub fn refused_pieces(&self) -> u64 {
        self.state.refused_pieces.load(Ordering::SeqCst)
    }

    /// Answers the next `n` requests (with a valid token, or to the token
    /// service) whose request line contains `what` with 503 Service
    /// Unavailable: `"PATCH "` for upload pieces, `"/manifests/"` for
    /// manifests, `"/token"` for token requests.
    pub fn fail_next(&self, what: &str, n: u64) {
        *self.state.to_fail.lock().unwrap_or_else(|e| e.into_inner()) = (what.to_owned(), n);
    }

    /// Requests answered with 503 so far.
    pub fn failed(&self) -> u64 {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// Cross-repository mounts started as uploads (or refused) so far,
    /// their token not allowing pulls from the repository named to mount
    /// from.
    pub fn mounts_refused(&self) -> u64 {
        self.state.unmounted.load(Ordering::SeqCst)
    }

    /// From now on, tokens get no scope on repository `repo`.
    pub fn deny(&self, repo: &str) {
        let mut denied = self.state.denied.lock().unwrap_or_else(|e| e.into_inner());
        denied.insert(repo.to_owned());
    }

    /// From now on, tokens are handed out only for a refresh grant of
    /// identity token `token` (a token request without it is refused
    /// with 401, one with another with 400 `invalid_grant`).
    pub fn accept_identity(&self, token: &str) {
        *self
            .state
            .identity
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(token.to_owned());
    }

    /// Requests so far that sent the identity token to the registry as
    /// their bearer token.
    pub fn identity_leaks(&self) -> u64 {
        self.state.identity_leaks.load(Ordering::SeqCst)
    }

    /// The scopes (`repository:NAME:ACTIONS`) asked for by each identity
    /// token exchange granted so far, in the order they came.
    pub fn exchanges(&self) -> Vec<Vec<String>> {
        self.state
            .exchanges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// From now on, a mount whose token cannot pull from its source is
    /// refused with 401, as distribution refuses it, instead of starting
    /// an upload.
    pub fn refuse_mounts(&self) {
        self.state.mounts_refused_401.store(true, Ordering::SeqCst);
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

    /// The values of query parameter `name`, decoded.
    fn query(&self, name: &str) -> Vec<String> {
        let Some((_, query)) = self.path().split_once('?') else {
            return Vec::new();
        };
        params(query, name)
    }

    /// The repository a registry request is about and the action it
    /// needs, `None` for the API's root (`/v2/`).
    fn needs(&self) -> Option<(String, &'static str)> {
        let path = self.path().split('?').next().unwrap_or_default();
        let rest = path.strip_prefix("/v2/")?;
        let end = ["/blobs/", "/manifests/", "/tags/", "/referrers/"]
            .iter()
            .filter_map(|k| rest.find(k))
            .min()?;
        let read = self.line.starts_with("GET ") || self.line.starts_with("HEAD ");
        Some((rest[..end].to_owned(), if read { "pull" } else { "push" }))
    }

    /// The body's length, `None` when its framing is not a length.
    fn body_len(&self) -> Option<u64> {
        if self.header("Transfer-Encoding").is_some() {
            return None;
        }
        match self.header("Content-Length") {
            Some(n) => n.parse().ok(),
            None => Some(0),
        }
    }
}

/// The values of parameter `name` in `encoded` (`k=v&k=v`, as a query
/// or a form body), decoded.
fn params(encoded: &str, name: &str) -> Vec<String> {
    encoded
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| decode(v))
        .collect()
}

/// `v` with `+` as a blank and `%XX` escapes decoded.
fn decode(v: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = v.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'+' => out.push(b' '),
            b'%' => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                match std::str::from_utf8(&hex)
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(c) => out.push(c),
                    None => out.extend_from_slice(&hex),
                }
            }
            b => out.push(b),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a token request (`head`, with body `form`) is granted: the
/// scopes it asks for, less those on denied repositories; or the status
/// and body of its refusal.
fn granted(
    state: &State,
    head: &Head,
    form: &str,
) -> Result<HashMap<String, Vec<String>>, (&'static str, String)> {
    let form = |name: &str| params(form, name);
    let identity = state.identity.lock().unwrap_or_else(|e| e.into_inner());
    let mut scopes = match identity.as_deref() {
        None => scopes_in(head.query("scope")),
        Some(want) => {
            if !head.line.starts_with("POST ") || form("grant_type") != ["refresh_token"] {
                let body =
                    r#"{"errors":[{"code":"UNAUTHORIZED","message":"a refresh grant is needed"}]}"#;
                return Err(("401 Unauthorized", body.to_owned()));
            }
            if form("refresh_token") != [want] || form("client_id").is_empty() {
                return Err(("400 Bad Request", r#"{"error":"invalid_grant"}"#.to_owned()));
            }
            let asked = form("scope");
            let mut exchanges = state.exchanges.lock().unwrap_or_else(|e| e.into_inner());
            exchanges.push(asked.clone());
            scopes_in(asked)
        }
    };
    drop(identity);
    let denied = state.denied.lock().unwrap_or_else(|e| e.into_inner());
    scopes.retain(|repo, _| !denied.contains(repo));
    Ok(scopes)
}

/// The scopes a token request asks for: `repository:NAME:ACTIONS`, in
/// repeated parameters or separated by blanks.
fn scopes_in(asked: Vec<String>) -> HashMap<String, Vec<String>> {
    let mut scopes: HashMap<String, Vec<String>> = HashMap::new();
    for scope in asked {
        for one in scope.split_whitespace() {
            let Some((name, actions)) = one
                .strip_prefix("repository:")
                .and_then(|r| r.rsplit_once(':'))
            else {
                continue;
            };
            scopes
                .entry(name.to_owned())
                .or_default()
                .extend(actions.split(',').map(str::to_owned));
        }
    }
    scopes
}

/// Reads a body of `len` bytes.
fn read_body(r: &mut impl Read, len: u64) -> Option<Vec<u8>> {
    let mut body = Vec::new();
    r.take(len).read_to_end(&mut body).ok()?;
    (body.len() as u64 == len).then_some(body)
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
            let Some(form) = head.body_len().and_then(|n| read_body(&mut reader, n)) else {
                return;
            };
            if failed_on_purpose(state, &head, &mut writer) {
                return;
            }
            let form = String::from_utf8_lossy(&form).into_owned();
            let scopes = match granted(state, &head, &form) {
                Ok(scopes) => scopes,
                Err((status, body)) => {
                    let json = ["Content-Type: application/json".to_owned()];
                    if !respond(&mut writer, status, &json, body.as_bytes()) {
                        return;
                    }
                    continue;
                }
            };
            let token = format!("t{}", state.issued.fetch_add(1, Ordering::SeqCst));
            state
                .tokens
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(
                    token.clone(),
                    Token {
                        at: Instant::now(),
                        used: 0,
                        scopes,
                    },
                );
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
        let Some(len) = head.body_len() else {
            let close = ["Connection: close".to_owned()];
            respond(&mut writer, "411 Length Required", &close, b"");
            return;
        };
        let Some(body) = read_body(&mut reader, len) else {
            return;
        };
        let needs = head.needs();
        // Whether the token is fresh and may do what is asked, and whether
        // it may pull from the repository a mount names.
        let bearer = head
            .header("Authorization")
            .and_then(|a| a.strip_prefix("Bearer "));
        let identity = state.identity.lock().unwrap_or_else(|e| e.into_inner());
        if bearer.is_some() && bearer == identity.as_deref() {
            state.identity_leaks.fetch_add(1, Ordering::SeqCst);
        }
        drop(identity);
        let (fresh, may_mount) = bearer
            .and_then(|t| {
                let mut tokens = state.tokens.lock().unwrap_or_else(|e| e.into_inner());
                let token = tokens.get_mut(t)?;
                token.used += 1;
                let fresh = token.at.elapsed() < state.lifetime
                    && state.uses.is_none_or(|n| token.used <= n)
                    && needs
                        .as_ref()
                        .is_none_or(|(repo, action)| token.allows(repo, action));
                let may_mount = head
                    .query("from")
                    .iter()
                    .all(|from| token.allows(from, "pull"));
                Some((fresh, may_mount))
            })
            .unwrap_or((false, false));
        if !fresh {
            state.refused.fetch_add(1, Ordering::SeqCst);
            if head.line.starts_with("PATCH ") {
                state.refused_pieces.fetch_add(1, Ordering::SeqCst);
            }
            let scope = match &needs {
                Some((repo, "pull")) => format!("repository:{repo}:pull"),
                Some((repo, _)) => format!("repository:{repo}:pull,push"),
                None => String::new(),
            };
            if !unauthorized(state, &head, &scope, &mut writer) {
                return;
            }
            continue;
        }
        if !may_mount && state.mounts_refused_401.load(Ordering::SeqCst) {
            state.unmounted.fetch_add(1, Ordering::SeqCst);
            let scope = head
                .query("from")
                .iter()
                .map(|from| format!("repository:{from}:pull"))
                .collect::<Vec<_>>()
                .join(" ");
            if !unauthorized(state, &head, &scope, &mut writer) {
                return;
            }
            continue;
        }
        if failed_on_purpose(state, &head, &mut writer) {
            return;
        }
        let mut head = head;
        if !may_mount {
            // Not allowed to read the source: an ordinary upload starts.
            state.unmounted.fetch_add(1, Ordering::SeqCst);
            let path = head.path().split('?').next().unwrap_or("/").to_owned();
            let (method, version) = (
                head.line.split(' ').next().unwrap_or("POST").to_owned(),
                head.line
                    .rsplit(' ')
                    .next()
                    .unwrap_or("HTTP/1.1")
                    .to_owned(),
            );
            head.line = format!("{method} {path} {version}");
        }
        pass(state, &head, &body, &mut writer);
        return;
    }
}

/// Whether `head` is one [`TokenGate::fail_next`] asked to fail; then it
/// has been answered with 503 (and the connection is to be closed).
fn failed_on_purpose(state: &State, head: &Head, to: &mut TcpStream) -> bool {
    let fail = {
        let mut to_fail = state.to_fail.lock().unwrap_or_else(|e| e.into_inner());
        let (what, left) = &mut *to_fail;
        let fail = *left > 0 && head.line.contains(what.as_str());
        *left -= u64::from(fail);
        fail
    };
    if fail {
        state.failed.fetch_add(1, Ordering::SeqCst);
        let body = br#"{"errors":[{"code":"UNAVAILABLE","message":"try again later"}]}"#;
        let headers = [
            "Content-Type: application/json".to_owned(),
            "Connection: close".to_owned(),
        ];
        respond(to, "503 Service Unavailable", &headers, body);
    }
    fail
}

/// Answers `head` with 401 and the challenge for `scope` (none when
/// empty); whether the answer went out.
fn unauthorized(state: &State, head: &Head, scope: &str, to: &mut TcpStream) -> bool {
    let scope = if scope.is_empty() {
        String::new()
    } else {
        format!(r#",scope="{scope}""#)
    };
    let challenge = format!(
        r#"WWW-Authenticate: Bearer realm="{}",service="strata-gate"{scope}"#,
        state.realm
    );
    // A HEAD answer has no body (its length is the header's).
    let body: &[u8] = if head.line.starts_with("HEAD ") {
        b""
    } else {
        br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#
    };
    let headers = [challenge, "Content-Type: application/json".to_owned()];
    respond(to, "401 Unauthorized", &headers, body)
}

/// Sends `head` and `body` to the registry on a new connection and its
/// whole answer back, marked to close the client's connection after it.
fn pass(state: &State, head: &Head, body: &[u8], to: &mut TcpStream) {
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
    if w.write_all(request.as_bytes()).is_err() || w.write_all(body).is_err() {
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

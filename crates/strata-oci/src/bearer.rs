//! Bearer tokens for more than one repository. oci-client asks a token
//! for the one repository a client works on; a cross-repository mount
//! also needs the right to pull from the repository the blob is mounted
//! from, or a registry that hands out tokens (Docker Hub, GHCR, a
//! distribution registry with token auth) refuses the mount (401) or
//! starts an upload instead (202). This asks the registry's token service
//! itself, as its `WWW-Authenticate: Bearer` challenge says, for every
//! scope at once.
//!
//! It is also how an identity token (an OAuth2 refresh token) becomes a
//! token oci-client can send: oci-client would send it to the registry
//! as the bearer token itself, which registries refuse. It is posted to
//! the token service instead (`grant_type=refresh_token`), as docker does.

use std::time::Duration;

use http_auth::parser::ChallengeParser;
use oci_client::secrets::RegistryAuth;

use crate::auth::Credentials;
use crate::registry::{may_change, may_pass};

/// The `client_id` an OAuth2 token request names (the token service
/// requires one; it identifies the program, not the user).
const CLIENT_ID: &str = "strata";

/// Where a registry's challenge sends a client for a token.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: Option<String>,
}

/// The first `Bearer` challenge of a `WWW-Authenticate` value that names
/// a realm; `None` when there is none.
fn bearer_challenge(header: &str) -> Option<Challenge> {
    ChallengeParser::new(header)
        .map_while(Result::ok)
        .filter(|c| c.scheme.eq_ignore_ascii_case("bearer"))
        .find_map(|c| {
            let param = |name: &str| {
                c.params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_unescaped())
            };
            Some(Challenge {
                realm: param("realm").filter(|r| !r.is_empty())?,
                service: param("service"),
            })
        })
}

/// Whether credentials may go to the token service at `realm` for the
/// registry at `base` (`SCHEME://HOST`): over HTTPS, or over plain HTTP
/// only when the registry itself is reached so.
fn may_send_credentials(base: &str, realm: &str) -> bool {
    let https = |url: &str| {
        url.get(..8)
            .is_some_and(|s| s.eq_ignore_ascii_case("https://"))
    };
    https(realm) || !https(base)
}

/// Why no token came, and whether asking again may give one (the token
/// service or registry unreachable, busy or failing).
#[derive(Debug)]
pub(crate) struct TokenError {
    pub(crate) transient: bool,
    message: String,
}

impl std::fmt::Display for TokenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// A failure that asking again will not mend.
fn lasting(message: String) -> TokenError {
    TokenError {
        transient: false,
        message,
    }
}

/// A failure to reach `url`.
fn unreached(url: &str, e: &reqwest::Error) -> TokenError {
    TokenError {
        transient: may_pass(e),
        message: format!("{url}: {e}"),
    }
}

/// An answer of `status` (with `headers` and body `said`) from `url`
/// that is not what was asked: transient when it may change when asked
/// again ([`may_change`]).
fn refused(
    url: &str,
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    said: &[u8],
) -> TokenError {
    let mut message = format!("{url} answered {status}");
    if status.is_redirection() {
        let to = headers.get(reqwest::header::LOCATION);
        let to = to.and_then(|l| l.to_str().ok()).unwrap_or("nowhere said");
        message.push_str(&format!(" to {to}, which is not followed"));
    }
    if !said.is_empty() {
        message.push_str(": ");
        message.push_str(&String::from_utf8_lossy(&said[..said.len().min(200)]));
    }
    TokenError {
        transient: may_change(status.as_u16()),
        message,
    }
}

/// How a token is asked for.
enum Ask<'a> {
    Anonymous,
    /// A GET with a user and password.
    Basic(&'a str, &'a str),
    /// A POST of an OAuth2 refresh grant.
    Refresh(&'a str),
}

/// A token covering every one of `scopes` (`repository:NAME:ACTIONS`)
/// from the registry at `base` (`SCHEME://HOST`), asked with `creds`:
/// `Ok(None)` when the registry hands out no bearer tokens (it asks no
/// credentials, or Basic ones, which hold for every repository) or the
/// credentials are a registry token already. An error says why none
/// came; an identity token for a registry that takes no bearer tokens
/// is one.
pub(crate) async fn token(
    base: &str,
    creds: &Credentials,
    scopes: &[String],
) -> Result<Option<String>, TokenError> {
    let ask = match creds {
        Credentials::Direct(RegistryAuth::Anonymous) => Ask::Anonymous,
        Credentials::Direct(RegistryAuth::Basic(user, password)) => Ask::Basic(user, password),
        Credentials::Direct(RegistryAuth::Bearer(_)) => return Ok(None),
        Credentials::Identity(refresh) => Ask::Refresh(refresh),
    };
    // No redirect is followed: one would take the credentials (a refresh
    // token in a form is sent again on a 307 or 308) where the checks
    // below never looked, perhaps over plain HTTP.
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| lasting(format!("cannot make a client: {e}")))?;
    let probe = format!("{base}/v2/");
    let answer = http
        .get(&probe)
        .send()
        .await
        .map_err(|e| unreached(&probe, &e))?;
    let status = answer.status();
    if status.is_success() {
        return Ok(None);
    }
    if status != reqwest::StatusCode::UNAUTHORIZED {
        return Err(refused(&probe, status, answer.headers(), b""));
    }
    let Some(challenge) = answer
        .headers()
        .get_all(reqwest::header::WWW_AUTHENTICATE)
        .iter()
        .filter_map(|h| h.to_str().ok())
        .find_map(bearer_challenge)
    else {
        return match ask {
            Ask::Refresh(_) => Err(lasting(format!(
                "{probe} names no token service (no Bearer challenge): an identity token has nowhere to go"
            ))),
            _ => Ok(None),
        };
    };
    let realm = &challenge.realm;
    if !matches!(ask, Ask::Anonymous) && !may_send_credentials(base, realm) {
        return Err(lasting(format!(
            "the registry sends credentials to {realm}, not over HTTPS: not sent"
        )));
    }
    let service = challenge.service.as_deref();
    let request = match ask {
        Ask::Refresh(refresh) => {
            let scope = scopes.join(" ");
            let mut form = vec![
                ("grant_type", "refresh_token"),
                ("refresh_token", refresh),
                ("client_id", CLIENT_ID),
                ("scope", &scope),
            ];
            form.extend(service.map(|s| ("service", s)));
            http.post(realm).form(&form)
        }
        Ask::Anonymous | Ask::Basic(..) => {
            let mut query: Vec<(&str, &str)> =
                scopes.iter().map(|s| ("scope", s.as_str())).collect();
            query.extend(service.map(|s| ("service", s)));
            let request = http.get(realm).query(&query);
            match ask {
                Ask::Basic(user, password) => request.basic_auth(user, Some(password)),
                _ => request,
            }
        }
    };
    let answer = request.send().await.map_err(|e| unreached(realm, &e))?;
    let (status, headers) = (answer.status(), answer.headers().clone());
    if !status.is_success() {
        let said = answer.bytes().await.unwrap_or_default();
        return Err(refused(realm, status, &headers, &said));
    }
    let body = answer.bytes().await.map_err(|e| unreached(realm, &e))?;
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let answer: Answer =
        serde_json::from_slice(&body).map_err(|e| lasting(format!("{realm}: not a token: {e}")))?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or_else(|| lasting(format!("{realm}: the answer holds no token")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn challenges_are_read_as_registries_send_them() {
        let c = bearer_challenge;
        let docker_hub = Challenge {
            realm: "https://auth.docker.io/token".into(),
            service: Some("registry.docker.io".into()),
        };
        assert_eq!(
            c(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#),
            Some(docker_hub)
        );
        // Other orders, case, blanks around commas, bare values, escapes,
        // a comma in a quoted value and extra parameters (read as
        // oci-client reads them, through http-auth).
        assert_eq!(
            c(r#"bearer scope="repository:a:pull,push", service=svc ,REALM="http://h/t\"x""#),
            Some(Challenge {
                realm: r#"http://h/t"x"#.into(),
                service: Some("svc".into()),
            })
        );
        assert_eq!(c(r#"Bearer realm="http://h/token""#).unwrap().service, None);
        // The Bearer one of several.
        assert_eq!(
            c(r#"Basic realm="registry", Bearer realm="http://h/token",service="s""#)
                .map(|c| c.realm),
            Some("http://h/token".into())
        );
        // Not a bearer challenge, or no realm to go to.
        assert_eq!(c(r#"Basic realm="registry""#), None);
        assert_eq!(c(r#"Bearer service="s""#), None);
        assert_eq!(c(r#"Bearer realm="""#), None);
        assert_eq!(c("Bearer"), None);
    }

    #[test]
    fn credentials_go_to_a_token_service_over_https_only() {
        let (https, http) = ("https://registry.example", "http://127.0.0.1:5000");
        assert!(may_send_credentials(https, "https://auth.example/token"));
        assert!(!may_send_credentials(https, "http://auth.example/token"));
        assert!(!may_send_credentials(https, "HTTP://auth.example/token"));
        assert!(may_send_credentials(https, "HTTPS://auth.example/token"));
        // A registry reached over plain HTTP may name one so too.
        assert!(may_send_credentials(http, "http://127.0.0.1:5001/token"));
    }

    /// A server on 127.0.0.1 that answers every request with `answer`
    /// (its status line and headers), counting the requests it got.
    fn server(answer: String) -> (String, Arc<AtomicU64>) {
        use std::io::{BufRead, BufReader, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicU64::new(0));
        let counted = count.clone();
        std::thread::spawn(move || {
            for mut client in listener.incoming().flatten() {
                counted.fetch_add(1, Ordering::SeqCst);
                let mut reader = BufReader::new(client.try_clone().unwrap());
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let whole = format!("{answer}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                let _ = client.write_all(whole.as_bytes());
            }
        });
        (addr, count)
    }

    #[tokio::test]
    async fn an_identity_token_follows_no_redirect() {
        let (elsewhere, reached) = server("HTTP/1.1 200 OK".into());
        let (token_service, _) = server(format!(
            "HTTP/1.1 307 Temporary Redirect\r\nLocation: {elsewhere}/stolen"
        ));
        let (registry, _) = server(format!(
            "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{token_service}/token\",service=\"s\""
        ));
        let creds = Credentials::Identity("refresh".into());
        let e = token(&registry, &creds, &["repository:a:pull".into()])
            .await
            .unwrap_err();
        assert!(e.to_string().contains("which is not followed"), "{e}");
        assert!(!e.transient);
        assert_eq!(
            reached.load(Ordering::SeqCst),
            0,
            "the redirect was followed"
        );
    }
}

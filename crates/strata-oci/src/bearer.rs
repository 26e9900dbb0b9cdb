//! Bearer tokens for more than one repository. oci-client asks a token
//! for the one repository a client works on; a cross-repository mount
//! also needs the right to pull from the repository the blob is mounted
//! from, or a registry that hands out tokens (Docker Hub, GHCR, a
//! distribution registry with token auth) quietly starts an upload
//! instead. This asks the registry's token service itself, as its
//! `WWW-Authenticate: Bearer` challenge says, for every scope at once.

use std::time::Duration;

use oci_client::secrets::RegistryAuth;

/// Where a registry's challenge sends a client for a token.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: Option<String>,
}

/// The parameters of a `Bearer` challenge (`realm="...",service="..."`,
/// values quoted or bare, `\` escaping in quotes); `None` for another
/// scheme or a challenge without a realm.
fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let (mut realm, mut service) = (None, None);
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if name.is_empty() || chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            let bare: String = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
            value.push_str(bare.trim_end());
        }
        match name.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value),
            "service" => service = Some(value),
            _ => {}
        }
    }
    Some(Challenge {
        realm: realm.filter(|r| !r.is_empty())?,
        service,
    })
}

/// A token covering every one of `scopes` (`repository:NAME:ACTIONS`)
/// from the registry at `base` (`SCHEME://HOST`), asked with `auth`'s
/// credentials: `Ok(None)` when the registry hands out no bearer tokens
/// (it asks none, or Basic credentials, which hold for every repository)
/// or the credentials are a token already. An error says why none came.
pub(crate) async fn token(
    base: &str,
    auth: &RegistryAuth,
    scopes: &[String],
) -> Result<Option<String>, String> {
    let basic = match auth {
        RegistryAuth::Anonymous => None,
        RegistryAuth::Basic(user, password) => Some((user, password)),
        RegistryAuth::Bearer(_) => return Ok(None),
    };
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| format!("cannot make a client: {e}"))?;
    let probe = format!("{base}/v2/");
    let answer = http
        .get(&probe)
        .send()
        .await
        .map_err(|e| format!("{probe}: {e}"))?;
    if answer.status() != reqwest::StatusCode::UNAUTHORIZED {
        return Ok(None);
    }
    let Some(challenge) = answer
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .and_then(|h| h.to_str().ok())
        .and_then(parse_challenge)
    else {
        return Ok(None);
    };
    let mut query: Vec<(&str, &str)> = scopes.iter().map(|s| ("scope", s.as_str())).collect();
    if let Some(service) = &challenge.service {
        query.push(("service", service));
    }
    let realm = &challenge.realm;
    // Credentials go to a token service over HTTPS only, unless the
    // registry itself is reached over plain HTTP.
    if basic.is_some() && !realm.starts_with("https://") && base.starts_with("https://") {
        return Err(format!(
            "the registry sends credentials to {realm}, not over HTTPS: not sent"
        ));
    }
    let mut ask = http.get(realm).query(&query);
    if let Some((user, password)) = basic {
        ask = ask.basic_auth(user, Some(password));
    }
    let answer = ask.send().await.map_err(|e| format!("{realm}: {e}"))?;
    let status = answer.status();
    let body = answer.bytes().await.map_err(|e| format!("{realm}: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "{realm} answered {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let answer: Answer =
        serde_json::from_slice(&body).map_err(|e| format!("{realm}: not a token: {e}"))?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .map(Some)
        .ok_or_else(|| format!("{realm}: the answer holds no token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_are_read_as_registries_send_them() {
        let c = |h| parse_challenge(h);
        assert_eq!(
            c(r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io""#),
            Some(Challenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
            })
        );
        // Other orders, blanks, bare values, escapes and extra parameters.
        assert_eq!(
            c(r#"bearer  scope="repository:a:pull", service=svc ,realm="http://h/t\"x""#),
            Some(Challenge {
                realm: r#"http://h/t"x"#.into(),
                service: Some("svc".into()),
            })
        );
        assert_eq!(c(r#"Bearer realm="http://h/token""#).unwrap().service, None);
        // Not a bearer challenge, or no realm to go to.
        assert_eq!(c(r#"Basic realm="registry""#), None);
        assert_eq!(c(r#"Bearer service="s""#), None);
        assert_eq!(c(r#"Bearer realm="""#), None);
        assert_eq!(c("Bearer"), None);
    }
}

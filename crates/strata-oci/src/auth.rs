//! Registry credentials from docker's `config.json` (`$DOCKER_CONFIG` or
//! `~/.docker`): a credential helper named for the host (`credHelpers`),
//! else the default helper (`credsStore`), else the `auths` entry.
//!
//! An identity token (`identitytoken`, or a helper's answer for the user
//! `<token>`) is an OAuth2 refresh token, as docker reads it: it goes
//! only to the registry's token service, which exchanges it for a token
//! per scope (`bearer.rs`), never to the registry itself.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use base64::Engine;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

use crate::error::{OciError, Result};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: HashMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
}

/// Credentials for one registry, as docker's config gives them.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Credentials {
    /// What oci-client takes as it is: none, a user and password, or a
    /// registry token (`registrytoken`), sent to the registry as the
    /// bearer token itself.
    Direct(RegistryAuth),
    /// An identity token: an OAuth2 refresh token that the registry's
    /// token service exchanges for a token per scope.
    Identity(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets stay out of logs and panics.
        f.write_str(match self {
            Credentials::Direct(RegistryAuth::Anonymous) => "Anonymous",
            Credentials::Direct(RegistryAuth::Basic(..)) => "Basic(..)",
            Credentials::Direct(RegistryAuth::Bearer(_)) => "RegistryToken(..)",
            Credentials::Identity(_) => "IdentityToken(..)",
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// `https://host/v1/` and `host` alike.
fn host_of(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// Runs `docker-credential-NAME get` for `host`; `None` when the helper
/// has no credentials for it.
fn ask_helper(name: &str, host: &str) -> Result<Option<Credentials>> {
    let program = format!("docker-credential-{name}");
    let object = format!("credential helper {program}");
    let mut child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| OciError::io("run", &object, e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(host.as_bytes())
            .map_err(|e| OciError::io("write to", &object, e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| OciError::io("run", &object, e))?;
    if !out.status.success() {
        let said = String::from_utf8_lossy(&out.stdout).trim().to_owned()
            + String::from_utf8_lossy(&out.stderr).trim();
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(OciError::invalid(
            &object,
            format!("failed for {host}: {said}"),
        ));
    }
    let answer: HelperAnswer = serde_json::from_slice(&out.stdout).map_err(|e| {
        OciError::invalid(
            &object,
            format!("answered something that is not credentials: {e}"),
        )
    })?;
    Ok(Some(if answer.username == "<token>" {
        Credentials::Identity(answer.secret)
    } else {
        Credentials::Direct(RegistryAuth::Basic(answer.username, answer.secret))
    }))
}

/// The credentials for registry `host` found under docker's config
/// directory `dir`; anonymous when there are none.
pub fn credentials(dir: Option<&Path>, host: &str) -> Result<Credentials> {
    const ANONYMOUS: Credentials = Credentials::Direct(RegistryAuth::Anonymous);
    let Some(dir) = dir else {
        return Ok(ANONYMOUS);
    };
    let path = dir.join("config.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ANONYMOUS),
        Err(e) => return Err(OciError::io("read", path.display(), e)),
    };
    let config: ConfigFile = serde_json::from_slice(&bytes)
        .map_err(|e| OciError::invalid(path.display(), format!("is not a docker config: {e}")))?;
    let helper = config
        .cred_helpers
        .iter()
        .find(|(k, _)| host_of(k) == host)
        .map(|(_, v)| v)
        .or(config.creds_store.as_ref());
    if let Some(name) = helper
        && let Some(auth) = ask_helper(name, host)?
    {
        return Ok(auth);
    }
    let Some(entry) = config
        .auths
        .iter()
        .find(|(k, _)| host_of(k) == host)
        .map(|(_, v)| v)
    else {
        return Ok(ANONYMOUS);
    };
    // Before `auth`, which then holds only a user name.
    if let Some(token) = &entry.identitytoken {
        return Ok(Credentials::Identity(token.clone()));
    }
    if let Some(token) = &entry.registrytoken {
        return Ok(Credentials::Direct(RegistryAuth::Bearer(token.clone())));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(Credentials::Direct(RegistryAuth::Basic(
            u.clone(),
            p.clone(),
        )));
    }
    if let Some(encoded) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|e| {
                OciError::invalid(path.display(), format!("auth of {host} is not base64: {e}"))
            })?;
        let text = String::from_utf8(decoded).map_err(|_| {
            OciError::invalid(path.display(), format!("auth of {host} is not UTF-8"))
        })?;
        let (u, p) = text.split_once(':').ok_or_else(|| {
            OciError::invalid(
                path.display(),
                format!("auth of {host} is not USER:PASSWORD"),
            )
        })?;
        return Ok(Credentials::Direct(RegistryAuth::Basic(
            u.to_owned(),
            p.to_owned(),
        )));
    }
    Ok(ANONYMOUS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct(a: RegistryAuth) -> Credentials {
        Credentials::Direct(a)
    }

    #[test]
    fn reads_auths_and_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        let user_only = base64::engine::general_purpose::STANDARD.encode("00000000-0000:");
        std::fs::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"auths":{{"https://127.0.0.1:5000/v1/":{{"auth":"{encoded}"}},"other:1":{{"registrytoken":"tok"}},
                              "refreshed:1":{{"auth":"{user_only}","identitytoken":"refresh"}}}},
                   "credHelpers":{{"helped:1":"strata-test-missing-helper"}}}}"#
            ),
        )
        .unwrap();
        let creds = |host| credentials(Some(dir.path()), host);
        assert_eq!(
            creds("127.0.0.1:5000").unwrap(),
            direct(RegistryAuth::Basic("alice".into(), "s3cret".into()))
        );
        assert_eq!(
            creds("other:1").unwrap(),
            direct(RegistryAuth::Bearer("tok".into()))
        );
        // An identity token wins over the user name `auth` holds beside it.
        assert_eq!(
            creds("refreshed:1").unwrap(),
            Credentials::Identity("refresh".into())
        );
        assert_eq!(
            format!("{:?}", creds("refreshed:1").unwrap()),
            "IdentityToken(..)"
        );
        assert_eq!(creds("nobody:1").unwrap(), direct(RegistryAuth::Anonymous));
        let e = creds("helped:1").unwrap_err();
        assert!(
            e.to_string()
                .contains("docker-credential-strata-test-missing-helper"),
            "{e}"
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            credentials(Some(empty.path()), "x").unwrap(),
            direct(RegistryAuth::Anonymous)
        );
    }
}

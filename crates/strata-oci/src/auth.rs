//! Registry credentials from docker's `config.json` (`$DOCKER_CONFIG` or
//! `~/.docker`): a credential helper named for the host (`credHelpers`),
//! else the default helper (`credsStore`), else the `auths` entry.

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
fn ask_helper(name: &str, host: &str) -> Result<Option<RegistryAuth>> {
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
        RegistryAuth::Bearer(answer.secret)
    } else {
        RegistryAuth::Basic(answer.username, answer.secret)
    }))
}

/// The credentials for registry `host` found under docker's config
/// directory `dir`; anonymous when there are none.
pub fn credentials(dir: Option<&Path>, host: &str) -> Result<RegistryAuth> {
    let Some(dir) = dir else {
        return Ok(RegistryAuth::Anonymous);
    };
    let path = dir.join("config.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(RegistryAuth::Anonymous),
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
        return Ok(RegistryAuth::Anonymous);
    };
    if let Some(token) = &entry.registrytoken {
        return Ok(RegistryAuth::Bearer(token.clone()));
    }
    if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
        return Ok(RegistryAuth::Basic(u.clone(), p.clone()));
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
        return Ok(RegistryAuth::Basic(u.to_owned(), p.to_owned()));
    }
    Ok(RegistryAuth::Anonymous)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(a: &RegistryAuth) -> Option<(&str, &str)> {
        match a {
            RegistryAuth::Basic(u, p) => Some((u, p)),
            _ => None,
        }
    }

    #[test]
    fn reads_auths_and_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let encoded = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
        std::fs::write(
            dir.path().join("config.json"),
            format!(
                r#"{{"auths":{{"https://127.0.0.1:5000/v1/":{{"auth":"{encoded}"}},"other:1":{{"registrytoken":"tok"}}}},
                   "credHelpers":{{"helped:1":"strata-test-missing-helper"}}}}"#
            ),
        )
        .unwrap();
        let a = credentials(Some(dir.path()), "127.0.0.1:5000").unwrap();
        assert_eq!(basic(&a), Some(("alice", "s3cret")));
        assert!(matches!(
            credentials(Some(dir.path()), "other:1").unwrap(),
            RegistryAuth::Bearer(t) if t == "tok"
        ));
        assert!(matches!(
            credentials(Some(dir.path()), "nobody:1").unwrap(),
            RegistryAuth::Anonymous
        ));
        let e = credentials(Some(dir.path()), "helped:1").unwrap_err();
        assert!(
            e.to_string()
                .contains("docker-credential-strata-test-missing-helper"),
            "{e}"
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            credentials(Some(empty.path()), "x").unwrap(),
            RegistryAuth::Anonymous
        ));
    }
}

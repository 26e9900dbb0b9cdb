//! Registries, through `oci-client`: pull (a [`Source`]) and push, with
//! credentials from docker's config, plain HTTP only for loopback hosts
//! and hosts named insecure, retries with backoff, resumed downloads, and
//! pushes that upload nothing the registry has (an existence check, then a
//! cross-repository mount from a repository the blob was pulled from, with
//! a token covering both repositories where the registry hands out
//! tokens: `bearer.rs`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use oci_client::client::{BlobResponse, ClientConfig, ClientProtocol};
use oci_client::errors::OciDistributionError;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use oci_spec::image as oci;
use strata_content::{ContentError, ContentStore};
use strata_core::{Algorithm, Descriptor, Digest, ErrorKind, Labels, media};
use strata_leases::{OpCtx, ProgressTracker};

use crate::auth::Credentials;
use crate::error::{OciError, Result};
use crate::image::{
    Image, MAX_DOCUMENT_SIZE, MAX_INDEX_DEPTH, check_document_size, parse_described,
    parse_document, read_blob,
};
use crate::platform::{Platform, pick};
use crate::remote::{PushReport, RegistryOptions};
use crate::source::{Roots, Source, config_of, image_checked, ingest_ref};

/// The content label listing the repositories of a registry a blob came
/// from (containerd's), so a push to another repository there can mount
/// it instead of uploading it.
pub const DISTRIBUTION_SOURCE_LABEL: &str = "containerd.io/distribution.source.";

/// The manifest media types asked for.
const ACCEPTED: &[&str] = &[
    media::OCI_INDEX,
    media::OCI_MANIFEST,
    media::DOCKER_MANIFEST_LIST,
    media::DOCKER_MANIFEST,
];

/// A repository of a registry, connected and authenticated.
pub struct Registry {
    client: Client,
    /// A client that never authenticates, for a registry that asks no
    /// credentials of anyone (`open`): oci-client's own client finds no
    /// token to keep for such a registry and asks it again, one more
    /// round trip, before every request. Only calls that take no
    /// credentials go through it, so it never learns any. Made on its own,
    /// never cloned from `client`: a clone shares its credentials and
    /// tokens.
    bare: Client,
    /// Whether the registry asked for no credentials when last
    /// authenticated (and none were given, or an identity token the
    /// registry had no use for).
    open: std::sync::atomic::AtomicBool,
    /// Clients whose token also covers pulls from another repository of
    /// this registry, by that repository (`None`: the registry hands out
    /// no such tokens), for cross-repository mounts.
    mounters: tokio::sync::Mutex<std::collections::HashMap<String, Option<Arc<Client>>>>,
    /// Repositories mounts from which were refused for want of access
    /// (401 with a fresh token, or 403): not asked again.
    unmountable: std::sync::Mutex<std::collections::HashSet<String>>,
    reference: Reference,
    opts: RegistryOptions,
    /// What `connect` authenticated with, kept to authenticate again when
    /// the registry refuses a token that has expired.
    auth: Credentials,
    op: RegistryOperation,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("reference", &self.reference.whole())
            .finish_non_exhaustive()
    }
}

fn is_loopback(host: &str) -> bool {
    let name = host
        .strip_prefix('[')
        .and_then(|h| h.split_once(']'))
        .map_or_else(
            || host.rsplit_once(':').map_or(host, |(h, _)| h),
            |(h, _)| h,
        );
    name == "localhost"
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether the registry refused the request's credentials (401): a
/// token that has expired, which a new one may cure.
fn unauthorized(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::UnauthorizedError { .. })
        || answered(e, 401, &oci_client::errors::OciErrorCode::Unauthorized)
}

/// Whether the registry answered 403 Forbidden (access denied).
fn forbidden(e: &OciDistributionError) -> bool {
    answered(e, 403, &oci_client::errors::OciErrorCode::Denied)
}

/// Whether the registry answered with HTTP status `status`, or with
/// error `code` in its error envelope.
fn answered(
    e: &OciDistributionError,
    status: u16,
    code: &oci_client::errors::OciErrorCode,
) -> bool {
    match e {
        OciDistributionError::ServerError { code: got, .. } => *got == status,
        OciDistributionError::RequestError(r) => r.status().is_some_and(|s| s.as_u16() == status),
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|x| x.code == *code)
        }
        _ => false,
    }
}

/// Whether an upload failed because the stream it sent found its bytes
/// not to be the blob's ([`checked_stream`]): corrupt data, not a failure
/// of the target.
fn served_corrupt(e: &OciDistributionError) -> bool {
    // The client's I/O variant is transparent, and an I/O error's source
    // is its inner error's source: both are looked into by hand.
    let mut cause: Option<&(dyn std::error::Error + 'static)> = match e {
        OciDistributionError::IoError(io) => Some(io),
        e => Some(e),
    };
    while let Some(c) = cause {
        let inner = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|i| i as &(dyn std::error::Error + 'static));
        if c.is::<SourceCorrupt>() || inner.is_some_and(|i| i.is::<SourceCorrupt>()) {
            return true;
        }
        cause = c.source();
    }
    false
}

/// Whether a request that failed with `e` may pass when sent again (to
/// the registry or its token service): the connection failed, timed out
/// or broke off.
pub(crate) fn may_pass(e: &reqwest::Error) -> bool {
    e.is_connect() || e.is_timeout() || e.is_request() || e.is_body()
}

/// Whether an answer of HTTP status `code` may change when asked again:
/// a server's failure, a request to slow down, or a server (or a proxy in
/// front of it) that gave up waiting for the request (408).
pub(crate) fn may_change(code: u16) -> bool {
    code >= 500 || code == 429 || code == 408
}

/// Whether a failed request may pass when tried again.
fn transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => may_pass(r),
        OciDistributionError::ServerError { code, .. } => may_change(*code),
        OciDistributionError::IoError(_) => !served_corrupt(e),
        // An answer the registry explained in an error body (oci-client
        // keeps no status for it): only a request to slow down may pass.
        OciDistributionError::RegistryError { .. } => {
            answered(e, 429, &oci_client::errors::OciErrorCode::Toomanyrequests)
        }
        _ => false,
    }
}

/// One operation's tries: a failure that may pass is tried again after a
/// doubling wait, and a refused token is renewed once.
struct Tries {
    attempt: u32,
    wait: Duration,
    reauthenticated: bool,
}

/// Whether the registry `host` is reached over plain HTTP: a loopback
/// host, or one `opts` names insecure.
fn plain_http(host: &str, opts: &RegistryOptions) -> bool {
    is_loopback(host) || opts.insecure.iter().any(|h| h == host)
}

/// A client for the registry `host`, over plain HTTP as [`plain_http`]
/// says.
fn new_client(host: &str, opts: &RegistryOptions) -> Result<Client> {
    let config = ClientConfig {
        protocol: if plain_http(host, opts) {
            ClientProtocol::HttpsExcept(vec![host.to_owned()])
        } else {
            ClientProtocol::Https
        },
        connect_timeout: Some(Duration::from_secs(30)),
        read_timeout: Some(Duration::from_secs(300)),
        ..ClientConfig::default()
    };
    Client::try_from(config).map_err(|e| OciError::Registry {
        registry: host.to_owned(),
        reason: format!("cannot make a client: {e}"),
        kind: ErrorKind::Internal,
    })
}

impl Registry {
    /// Connects to the repository of `reference` (`HOST/REPO[:TAG|@DIGEST]`)
    /// and authenticates for `op`.
    pub async fn connect(
        reference: &str,
        op: RegistryOperation,
        opts: &RegistryOptions,
    ) -> Result<Registry> {
        let parsed = parse_reference(reference)?;
        let host = parsed.resolve_registry().to_owned();
        let (client, bare) = (new_client(&host, opts)?, new_client(&host, opts)?);
        let auth = crate::auth::credentials(opts.docker_config.as_deref(), &host)?;
        let registry = Registry {
            client,
            bare,
            open: std::sync::atomic::AtomicBool::new(false),
            mounters: tokio::sync::Mutex::default(),
            unmountable: std::sync::Mutex::default(),
            reference: parsed,
            opts: opts.clone(),
            auth,
            op,
        };
        registry.authenticate().await?;
        // Requests carry what `auth` settled; anonymous needs nothing.
        Ok(registry)
    }

    /// Authenticates (again) for the operation `connect` was given: a
    /// bearer token is fetched anew and replaces the one kept. Returns
    /// what oci-client was given ([`Registry::client_auth`]), which is
    /// good for pulls too.
    async fn authenticate(&self) -> Result<RegistryAuth> {
        // A refused login is not answered by logging in again.
        let tries = Tries {
            reauthenticated: true,
            ..self.tries()
        };
        let auth = self.client_auth().await?;
        let token = self
            .retry_from(tries, "authenticate", || {
                self.client.auth(&self.reference, &auth, self.op)
            })
            .await?;
        // Also for an identity token on a registry that asks for nothing.
        let open = token.is_none() && auth == RegistryAuth::Anonymous;
        self.open.store(open, std::sync::atomic::Ordering::Relaxed);
        Ok(auth)
    }

    /// What oci-client is given to authenticate for the operation
    /// `connect` was given: the credentials as they are, or for an
    /// identity token, the token the registry's token service exchanges
    /// it for (anonymous where the registry asks for nothing). A push's
    /// token covers pulls as well.
    async fn client_auth(&self) -> Result<RegistryAuth> {
        if let Credentials::Direct(auth) = &self.auth {
            return Ok(auth.clone());
        }
        let actions = match self.op {
            RegistryOperation::Pull => "pull",
            RegistryOperation::Push => "pull,push",
        };
        let scope = [format!(
            "repository:{}:{actions}",
            self.reference.repository()
        )];
        let what = "exchange the identity token from docker's config";
        let mut tries = self.tries();
        loop {
            match crate::bearer::token(&self.base(), &self.auth, &scope).await {
                Ok(Some(token)) => return Ok(RegistryAuth::Bearer(token)),
                Ok(None) => return Ok(RegistryAuth::Anonymous),
                Err(e) if e.transient && self.wait_turn(&mut tries, what, &e).await => {}
                Err(e) => {
                    return Err(OciError::Registry {
                        registry: self.repo(),
                        reason: format!("{what}: {e}"),
                        kind: if e.transient {
                            ErrorKind::Unavailable
                        } else {
                            ErrorKind::FailedPrecondition
                        },
                    });
                }
            }
        }
    }

    /// `SCHEME://HOST` of the registry.
    fn base(&self) -> String {
        let host = self.reference.resolve_registry();
        let scheme = if plain_http(host, &self.opts) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{host}")
    }

    /// The client for calls that take no credentials: the bare one while
    /// the registry asks none (see `bare`).
    fn http(&self) -> &Client {
        match self.open.load(std::sync::atomic::Ordering::Relaxed) {
            true => &self.bare,
            false => &self.client,
        }
    }

    /// `HOST/REPO`.
    fn repo(&self) -> String {
        format!(
            "{}/{}",
            self.reference.resolve_registry(),
            self.reference.repository()
        )
    }

    /// The registry's refusal as an error naming the repository.
    fn error(&self, what: &str, err: OciDistributionError) -> OciError {
        let status = match &err {
            OciDistributionError::RequestError(r) => r.status().map(|s| s.as_u16()),
            OciDistributionError::ServerError { code, .. } => Some(*code),
            _ => None,
        };
        // The words of every cause: "error sending request" alone does not
        // say that the connection was refused.
        let mut said = err.to_string();
        let mut cause = std::error::Error::source(&err);
        while let Some(c) = cause {
            let text = c.to_string();
            if !said.contains(&text) {
                said.push_str(": ");
                said.push_str(&text);
            }
            cause = c.source();
        }
        let e = said;
        let (kind, reason) = match &err {
            _ if status == Some(401) || status == Some(403) => (
                ErrorKind::FailedPrecondition,
                format!(
                    "{what}: unauthorized ({}): give credentials in docker's config.json: {e}",
                    status.unwrap_or(401)
                ),
            ),
            _ if status == Some(404) => {
                (ErrorKind::NotFound, format!("{what}: not found (404): {e}"))
            }
            OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_) => (
                ErrorKind::FailedPrecondition,
                format!(
                    "{what}: unauthorized (401): give credentials in docker's config.json: {e}"
                ),
            ),
            OciDistributionError::ImageManifestNotFoundError(_) => {
                (ErrorKind::NotFound, format!("{what}: not found (404): {e}"))
            }
            OciDistributionError::ServerError { code: 404, .. } => {
                (ErrorKind::NotFound, format!("{what}: not found (404): {e}"))
            }
            OciDistributionError::ServerError {
                code: 401 | 403, ..
            } => (
                ErrorKind::FailedPrecondition,
                format!("{what}: refused: give credentials in docker's config.json: {e}"),
            ),
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| {
                    matches!(
                        x.code,
                        oci_client::errors::OciErrorCode::ManifestUnknown
                            | oci_client::errors::OciErrorCode::NameUnknown
                            | oci_client::errors::OciErrorCode::BlobUnknown
                            | oci_client::errors::OciErrorCode::NotFound
                    )
                }) =>
            {
                (ErrorKind::NotFound, format!("{what}: not found: {e}"))
            }
            OciDistributionError::RegistryError { envelope, .. }
                if envelope.errors.iter().any(|x| {
                    matches!(
                        x.code,
                        oci_client::errors::OciErrorCode::Unauthorized
                            | oci_client::errors::OciErrorCode::Denied
                    )
                }) =>
            {
                (
                    ErrorKind::FailedPrecondition,
                    format!("{what}: unauthorized: give credentials in docker's config.json: {e}"),
                )
            }
            OciDistributionError::DigestError(_) => (ErrorKind::Invalid, format!("{what}: {e}")),
            _ if served_corrupt(&err) => (ErrorKind::Invalid, format!("{what}: {e}")),
            OciDistributionError::UnsupportedMediaTypeError(_) => (
                ErrorKind::Invalid,
                format!("{what}: unsupported media type: {e}"),
            ),
            _ if transient(&err) => (ErrorKind::Unavailable, format!("{what}: {e}")),
            _ => (ErrorKind::Internal, format!("{what}: {e}")),
        };
        OciError::Registry {
            registry: self.repo(),
            reason,
            kind,
        }
    }

    /// Runs `call` until it succeeds or fails for good, as
    /// [`Registry::again`] decides: a failure that may pass is tried again
    /// after a doubling wait, and when the registry refuses the token
    /// (expired: a long pull or a lazy mount outlives the minutes a
    /// registry's token lasts) a new one is taken once.
    async fn retry<T, F, Fut>(&self, what: &str, call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        self.retry_from(self.tries(), what, call).await
    }

    /// [`Registry::retry`] from `tries`.
    async fn retry_from<T, F, Fut>(&self, mut tries: Tries, what: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        loop {
            match call().await {
                Ok(done) => return Ok(done),
                Err(e) if self.again(&mut tries, what, &e).await? => {}
                Err(e) => return Err(self.error(what, e)),
            }
        }
    }

    /// The first try of an operation [`Registry::again`] decides on.
    fn tries(&self) -> Tries {
        Tries {
            attempt: 1,
            wait: self.opts.backoff,
            reauthenticated: false,
        }
    }

    /// Whether `what`, having failed with `e`, is worth trying again: a
    /// failure that may pass (once the wait is over) while attempts are
    /// left, or the first refused token (once a new one is taken).
    async fn again(&self, tries: &mut Tries, what: &str, e: &OciDistributionError) -> Result<bool> {
        if transient(e) && self.wait_turn(tries, what, e).await {
            Ok(true)
        } else if unauthorized(e) && !tries.reauthenticated {
            self.reauthenticate(what, e).await?;
            tries.reauthenticated = true;
            Ok(true)
        } else {
            Ok(false)
        }
    }

    /// After a failure of `what` that may pass (`error`): whether attempts
    /// are left, and if so, once the wait before the next is over.
    async fn wait_turn(
        &self,
        tries: &mut Tries,
        what: &str,
        error: &(dyn std::fmt::Display + Sync),
    ) -> bool {
        if tries.attempt >= self.opts.attempts.max(1) {
            return false;
        }
        tracing::warn!(registry = %self.repo(), what, attempt = tries.attempt, error = %error, wait = ?tries.wait, "interrupted; trying again");
        tokio::time::sleep(tries.wait).await;
        tries.wait *= 2;
        tries.attempt += 1;
        true
    }

    /// Takes a new token after `refused` (a 401 to `what`).
    async fn reauthenticate(&self, what: &str, refused: &OciDistributionError) -> Result<()> {
        tracing::info!(registry = %self.repo(), what, error = %refused, "the registry refused the token (expired?); authenticating again");
        // Boxed: authenticating retries through `again`, which may call
        // this.
        let auth = Box::pin(self.authenticate()).await?;
        if matches!(self.op, RegistryOperation::Push) {
            // oci-client keeps the token of a push's reads (existence
            // checks) apart, under the pull operation: it is renewed too.
            let tries = Tries {
                reauthenticated: true,
                ..self.tries()
            };
            // A failure here leaves the old pull token in place, as it was
            // before this renewal existed: the request tried again may
            // need only the push token, which was renewed. The push's
            // credentials serve: an identity token exchanged for the push
            // is not exchanged a second time.
            let renewed = Box::pin(self.retry_from(tries, "authenticate", || {
                self.client
                    .auth(&self.reference, &auth, RegistryOperation::Pull)
            }))
            .await;
            if let Err(e) = renewed {
                tracing::warn!(registry = %self.repo(), error = %e, "could not renew the token for a push's reads");
            }
        }
        Ok(())
    }

    /// Fetches the manifest or index `reference` names; checks it against
    /// `expected` (or the reference's digest) and stores it; whether the
    /// store is new to it.
    async fn fetch_manifest(
        &self,
        store: &ContentStore,
        reference: &Reference,
        expected: Option<&Descriptor>,
    ) -> Result<(Descriptor, bool)> {
        let (desc, bytes) = self.manifest_bytes(reference, expected).await?;
        let got = store.ingest(
            &ingest_ref(&desc.digest),
            &bytes[..],
            Some(bytes.len() as u64),
            Some(&desc.digest),
            &Labels::new(),
        )?;
        Ok((
            Descriptor::new(desc.media_type, got.digest, got.size),
            !got.already_existed,
        ))
    }

    /// The manifest or index `reference` names, checked against
    /// `expected` (or the reference's digest) and bounded in size, with
    /// its descriptor.
    async fn manifest_bytes(
        &self,
        reference: &Reference,
        expected: Option<&Descriptor>,
    ) -> Result<(Descriptor, Vec<u8>)> {
        let what = format!("manifest {}", reference.whole());
        let (bytes, _) = self
            .retry(&what, || {
                self.client
                    .pull_manifest_raw(reference, &RegistryAuth::Anonymous, ACCEPTED)
            })
            .await?;
        if bytes.len() as u64 > MAX_DOCUMENT_SIZE {
            return Err(OciError::invalid(
                &what,
                format!(
                    "is {} bytes; documents over {MAX_DOCUMENT_SIZE} bytes are refused",
                    bytes.len()
                ),
            ));
        }
        let digest = Digest::of_bytes(Algorithm::Sha256, &bytes);
        let want = expected
            .map(|d| d.digest.clone())
            .or_else(|| reference.digest().and_then(|d| Digest::parse(d).ok()));
        if let Some(want) = want
            && want != digest
        {
            return Err(OciError::invalid(
                &what,
                format!("the registry served bytes that hash to {digest}, not {want}"),
            ));
        }
        let media_type = match expected {
            Some(d) => d.media_type.clone(),
            None => media_type_of(&what, &bytes)?,
        };
        let size = bytes.len() as u64;
        Ok((Descriptor::new(media_type, digest, size), bytes.to_vec()))
    }

    /// The image this repository's reference names for `platform`, read
    /// without storing anything (for lazy use: its layers stay in the
    /// registry, read by [`Registry::read_range`]).
    pub async fn resolve(&self, platform: &Platform) -> Result<Image> {
        self.resolve_read(platform).await.map(|read| read.image)
    }

    /// [`Registry::resolve`], with the bytes of the image's manifest and
    /// config.
    async fn resolve_read(&self, platform: &Platform) -> Result<Resolved> {
        let mut reference = self.reference.clone();
        let mut expected: Option<Descriptor> = None;
        for _ in 0..=MAX_INDEX_DEPTH {
            let (desc, bytes) = self.manifest_bytes(&reference, expected.as_ref()).await?;
            let what = format!("manifest {}", desc.digest);
            if media::is_index(&desc.media_type) {
                let index: oci::ImageIndex = parse_described(&what, &bytes, &desc.media_type)?;
                let chosen = Descriptor::try_from(pick(&what, index.manifests(), platform)?)
                    .map_err(|e| OciError::invalid(&what, format!("names a bad digest: {e}")))?;
                reference = self.reference.clone_with_digest(chosen.digest.to_string());
                expected = Some(chosen);
                continue;
            }
            let manifest: oci::ImageManifest = parse_described(&what, &bytes, &desc.media_type)?;
            let config_desc = config_of(&desc, &manifest)?;
            check_document_size("config", &config_desc)?;
            let config_bytes = self.read_range(&config_desc, 0, config_desc.size).await?;
            if Digest::of_bytes(config_desc.digest.algorithm(), &config_bytes) != config_desc.digest
            {
                return Err(OciError::invalid(
                    format!("config {}", config_desc.digest),
                    "the registry served bytes of another digest",
                ));
            }
            let config: oci::ImageConfiguration = parse_document("config", &config_bytes)?;
            let image = image_checked(
                &self.name(),
                &desc,
                &manifest,
                config_desc,
                &config,
                platform,
            )?;
            return Ok(Resolved {
                image,
                manifest: bytes,
                config: config_bytes,
            });
        }
        Err(OciError::invalid(
            self.name(),
            format!("nests indexes deeper than {MAX_INDEX_DEPTH}"),
        ))
    }

    /// `len` bytes of blob `desc` from `offset`, in one ranged request
    /// (retried as every request is). A registry that answers with the
    /// whole blob, or with fewer bytes, is refused.
    pub async fn read_range(&self, desc: &Descriptor, offset: u64, len: u64) -> Result<Vec<u8>> {
        let what = format!("bytes {offset}..{} of blob {}", offset + len, desc.digest);
        if len == 0 {
            return Ok(Vec::new());
        }
        let bytes = self
            .retry(&what, || async {
                let response = self
                    .http()
                    .pull_blob_stream_partial(
                        &self.reference,
                        desc.digest.as_str(),
                        offset,
                        Some(len),
                    )
                    .await?;
                let mut stream = match response {
                    BlobResponse::Partial(s) => s,
                    BlobResponse::Full(s) if offset == 0 && desc.size == len => s,
                    BlobResponse::Full(_) => {
                        return Err(OciDistributionError::GenericError(Some(
                            "the registry does not serve byte ranges".into(),
                        )));
                    }
                };
                let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
                while let Some(chunk) = stream.next().await {
                    buf.extend_from_slice(&chunk?);
                    if buf.len() as u64 > len {
                        break;
                    }
                }
                Ok(buf)
            })
            .await?;
        if bytes.len() as u64 != len {
            return Err(OciError::Registry {
                registry: self.repo(),
                reason: format!("{what}: the registry served {} bytes", bytes.len()),
                kind: ErrorKind::Invalid,
            });
        }
        Ok(bytes)
    }

    /// Downloads blob `desc` into `store`, resuming what an earlier attempt
    /// wrote when the registry serves ranges.
    async fn fetch_blob(
        &self,
        store: &ContentStore,
        desc: &Descriptor,
        progress: &ProgressTracker,
    ) -> Result<()> {
        let what = format!("blob {}", desc.digest);
        let layer = desc.digest.as_str();
        let reference = ingest_ref(&desc.digest);
        let mut tries = self.tries();
        loop {
            let mut w = store.writer(&reference, Some(desc.size), Some(&desc.digest))?;
            // Another operation stored it while this one waited for the
            // ingest (two pulls sharing a layer): nothing to download.
            if store.info(&desc.digest).is_ok() {
                return Err(ContentError::AlreadyExists(desc.digest.clone()).into());
            }
            let offset = w.status().offset;
            let response = match offset {
                0 => self
                    .http()
                    .pull_blob_stream(&self.reference, layer)
                    .await
                    .map(BlobResponse::Full),
                n if n < desc.size => {
                    self.http()
                        .pull_blob_stream_partial(&self.reference, layer, n, None)
                        .await
                }
                _ => Ok(BlobResponse::Partial(oci_client::client::SizedStream {
                    content_length: Some(0),
                    digest_header_value: None,
                    stream: futures_util::stream::empty().boxed(),
                })),
            };
            let streamed = match response {
                Ok(r) => {
                    let stream = match r {
                        BlobResponse::Full(s) => {
                            w.truncate(0)?;
                            s
                        }
                        BlobResponse::Partial(s) => s,
                    };
                    copy_stream(stream, &mut w, desc, progress).await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = streamed {
                // What was written stays in the ingest, resumed from.
                drop(w);
                if self.again(&mut tries, &what, &e).await? {
                    continue;
                }
                return Err(self.error(&what, e));
            }
            let committed = w.commit(desc.size, Some(&desc.digest), &Labels::new());
            drop(w);
            let result = match committed {
                Ok(_) | Err(ContentError::AlreadyExists(_)) => {
                    progress.finish();
                    self.label_source(store, &desc.digest)
                }
                Err(
                    e @ (ContentError::DigestMismatch { .. } | ContentError::SizeMismatch { .. }),
                ) => {
                    if let Err(abort) = store.abort(&reference) {
                        tracing::warn!(reference, error = %abort, "could not abandon a corrupt download");
                    }
                    if offset > 0 && tries.attempt < self.opts.attempts.max(1) {
                        // The bytes kept from an earlier attempt may be
                        // what was wrong: once more from the start.
                        tracing::warn!(blob = %desc.digest, error = %e, "resumed download does not verify; starting over");
                        tries.attempt += 1;
                        continue;
                    }
                    Err(OciError::Registry {
                        registry: self.repo(),
                        reason: format!("{what}: the registry served corrupt data: {e}"),
                        kind: ErrorKind::Invalid,
                    })
                }
                Err(e) => Err(e.into()),
            };
            return result;
        }
    }

    /// Records on blob `d` (in `store`) that this repository has it, so a
    /// push to another repository of this registry mounts it from here.
    fn label_source(&self, store: &ContentStore, d: &Digest) -> Result<()> {
        let key = format!(
            "{DISTRIBUTION_SOURCE_LABEL}{}",
            self.reference.resolve_registry()
        );
        let repo = self.reference.repository();
        let listed = |v: Option<&str>| v.is_some_and(|v| v.split(',').any(|r| r == repo));
        // Read first: most pulls find the repository recorded already.
        if listed(store.info(d)?.labels.get(&key).map(String::as_str)) {
            return Ok(());
        }
        // One transaction: two pulls of a blob from two repositories at
        // once both stay recorded.
        let added = store.edit_label(d, &key, |current| {
            if listed(current) {
                return None;
            }
            let mut repos: Vec<&str> = current.map(|v| v.split(',').collect()).unwrap_or_default();
            repos.push(repo);
            Some(repos.join(","))
        });
        match added {
            Ok(_) => Ok(()),
            // A long list is not worth failing a pull for.
            Err(ContentError::Invalid(why)) => {
                tracing::debug!(blob = %d, why, "distribution source label not recorded");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Pushes `image` (its blobs in `store`) to this repository under its
    /// tag (or by digest): each blob the repository lacks is mounted from
    /// another repository of the registry that has it, else uploaded; then
    /// the manifest. A layer blob `store` lacks (an image pulled lazily)
    /// comes from the repository `from` names as [`Registry::copy_from`]
    /// copies one: mounted when both are on one registry and it allows
    /// that, else streamed through, checked against its digest, and not
    /// stored. `from` is connected to (with `opts`) only when a blob is
    /// read from it: a push whose blobs the target has needs nothing of it.
    pub async fn push(
        &self,
        ctx: &OpCtx,
        store: &ContentStore,
        image: &Image,
        from: Option<(&str, &RegistryOptions)>,
    ) -> Result<PushReport> {
        let mut report = PushReport::default();
        let mut elsewhere = std::collections::HashSet::new();
        let source = match from {
            Some((reference, opts)) => Some((
                parse_reference(reference)?,
                reference,
                opts,
                tokio::sync::OnceCell::new(),
            )),
            None => None,
        };
        for desc in blobs_of(image) {
            ctx.check()?;
            match &source {
                Some((parsed, reference, opts, connected)) if is_absent(store, desc)? => {
                    elsewhere.insert(&desc.digest);
                    let siblings = self.mountable_from(parsed);
                    let open = || async {
                        connected
                            .get_or_try_init(|| {
                                Registry::connect(reference, RegistryOperation::Pull, opts)
                            })
                            .await?
                            .checked_blob(ctx, desc)
                            .await
                    };
                    self.send_blob(desc, &siblings, &mut report, open).await?;
                }
                _ => {
                    let siblings = self.siblings(store, desc)?;
                    self.send_blob(desc, &siblings, &mut report, || async {
                        let tracker =
                            ProgressTracker::new(ctx, desc.digest.as_str(), desc.size, "bytes");
                        Ok(blob_stream(store, desc, tracker)?.boxed())
                    })
                    .await?;
                }
            }
        }
        let bytes = read_blob(store, &image.manifest)?;
        self.push_manifest(image, bytes).await?;
        for desc in image.layers.iter().chain([&image.config, &image.manifest]) {
            if !elsewhere.contains(&desc.digest) {
                self.label_source(store, &desc.digest)?;
            }
        }
        report.manifest = Some(image.manifest.digest.clone());
        Ok(report)
    }

    /// The repositories a blob of `src` can be mounted from into this one:
    /// `src`'s, when both are on one registry.
    fn mountable_from(&self, src: &Reference) -> Vec<String> {
        match src.resolve_registry() == self.reference.resolve_registry() {
            true => vec![src.repository().to_owned()],
            false => Vec::new(),
        }
    }

    /// Blob `desc` of this repository as a stream checked against its
    /// digest (a stream that turns out to be other bytes ends in an error),
    /// reporting its bytes to `ctx`.
    async fn checked_blob(&self, ctx: &OpCtx, desc: &Descriptor) -> Result<BlobStream> {
        let what = format!("blob {}", desc.digest);
        let got = self
            .retry(&what, || {
                self.http()
                    .pull_blob_stream(&self.reference, desc.digest.as_str())
            })
            .await?;
        let tracker = ProgressTracker::new(ctx, desc.digest.as_str(), desc.size, "bytes");
        Ok(checked_stream(got, desc, tracker).boxed())
    }

    /// Copies the image `src`'s reference names for `platform` (its
    /// manifest, config and layers; of an index, the one manifest picked)
    /// to this repository, storing nothing: each blob this repository
    /// lacks is mounted from `src`'s repository when both are on one
    /// registry and it allows that, else streamed from `src` to here,
    /// checked against its digest on the way.
    pub async fn copy_from(
        &self,
        ctx: &OpCtx,
        src: &Registry,
        platform: &Platform,
    ) -> Result<(Image, PushReport)> {
        let Resolved {
            image,
            manifest,
            config,
        } = src.resolve_read(platform).await?;
        let config = bytes::Bytes::from(config);
        let mut report = PushReport::default();
        let siblings = self.mountable_from(&src.reference);
        for desc in blobs_of(&image) {
            ctx.check()?;
            let open = || async {
                // The config was read (and checked) to resolve the image.
                if desc.digest == image.config.digest {
                    let whole: BlobStream =
                        futures_util::stream::once(std::future::ready(Ok(config.clone()))).boxed();
                    return Ok(whole);
                }
                src.checked_blob(ctx, desc).await
            };
            self.send_blob(desc, &siblings, &mut report, open).await?;
        }
        self.push_manifest(&image, manifest).await?;
        report.manifest = Some(image.manifest.digest.clone());
        Ok((image, report))
    }

    /// Pushes `image`'s manifest, `bytes`, under this reference's tag (or
    /// its digest, which must be the manifest's).
    async fn push_manifest(&self, image: &Image, bytes: Vec<u8>) -> Result<()> {
        let content_type: http::HeaderValue = image.manifest.media_type.parse().map_err(|_| {
            OciError::invalid(&image.manifest.digest, "media type is not a header value")
        })?;
        let target = match (self.reference.tag(), self.reference.digest()) {
            (None, Some(d)) if d != image.manifest.digest.as_str() => {
                return Err(OciError::invalid(
                    self.reference.whole(),
                    format!(
                        "names digest {d} but the image's manifest is {}",
                        image.manifest.digest
                    ),
                ));
            }
            _ => self.reference.clone(),
        };
        self.retry("push manifest", || {
            self.http()
                .push_manifest_raw(&target, bytes.clone(), content_type.clone())
        })
        .await
        .map(drop)
    }

    /// The other repositories of this registry that `store` records as
    /// having blob `desc` (from pulls and pushes).
    fn siblings(&self, store: &ContentStore, desc: &Descriptor) -> Result<Vec<String>> {
        let key = format!(
            "{DISTRIBUTION_SOURCE_LABEL}{}",
            self.reference.resolve_registry()
        );
        Ok(store
            .info(&desc.digest)?
            .labels
            .get(&key)
            .map(|v| v.split(',').map(str::to_owned).collect())
            .unwrap_or_default())
    }

    /// Sends blob `desc` here unless this repository has it: mounted from
    /// one of `siblings` (repositories of this registry), else uploaded
    /// from a stream `open` makes, made anew for each try (an interrupted
    /// upload, a token that expired during it); counted in `report`.
    async fn send_blob<F, Fut>(
        &self,
        desc: &Descriptor,
        siblings: &[String],
        report: &mut PushReport,
        mut open: F,
    ) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<BlobStream>>,
    {
        let what = format!("blob {}", desc.digest);
        let digest = desc.digest.to_string();
        if self
            .retry(&what, || self.http().blob_exists(&self.reference, &digest))
            .await?
        {
            report.present += 1;
            return Ok(());
        }
        if self.mount_from(siblings, desc).await? {
            report.mounted += 1;
            return Ok(());
        }
        let mut tries = self.tries();
        loop {
            let stream = open().await?;
            match self
                .http()
                .push_blob_stream(&self.reference, stream, &digest, Some(desc.size))
                .await
            {
                Ok(_) => break,
                Err(e) if self.again(&mut tries, &what, &e).await? => {}
                Err(e) => return Err(self.error(&what, e)),
            }
        }
        report.uploaded += 1;
        Ok(())
    }

    /// Mounts `desc` from one of `repos` (other repositories of this
    /// registry); whether that worked. A repository these credentials
    /// may not read is tried once, not once per blob.
    async fn mount_from(&self, repos: &[String], desc: &Descriptor) -> Result<bool> {
        let host = self.reference.resolve_registry();
        let digest = desc.digest.to_string();
        for repo in repos.iter().filter(|r| **r != self.reference.repository()) {
            if self.unmountable().contains(repo) {
                continue;
            }
            let from = Reference::with_tag(host.to_owned(), repo.clone(), "latest".to_owned());
            match self.mount_one(repo, &from, &digest).await {
                Ok(()) => {
                    if self
                        .retry("check a mounted blob", || {
                            self.http().blob_exists(&self.reference, &digest)
                        })
                        .await?
                    {
                        return Ok(true);
                    }
                }
                Err(e) => {
                    tracing::info!(blob = %desc.digest, from = repo, error = %e, "cross-repository mount refused; uploading");
                }
            }
        }
        Ok(false)
    }

    /// One mount of blob `digest` from repository `repo` (`from`), with a
    /// token covering both repositories where the registry hands them
    /// out; a token refused (expired) is replaced once.
    async fn mount_one(
        &self,
        repo: &str,
        from: &Reference,
        digest: &str,
    ) -> std::result::Result<(), OciDistributionError> {
        let mut again = true;
        loop {
            let mounter = self.mounter(repo).await;
            let mounted = mounter
                .as_deref()
                .unwrap_or(self.http())
                .mount_blob(&self.reference, from, digest)
                .await;
            match mounted {
                Err(e) if again && mounter.is_some() && unauthorized(&e) => {
                    again = false;
                    self.mounters.lock().await.remove(repo);
                }
                // Refused for want of access: with a token just taken, or
                // denied outright.
                Err(e) if forbidden(&e) || (!again && mounter.is_some() && unauthorized(&e)) => {
                    tracing::info!(from = repo, error = %e, "cross-repository mounts from there refused for want of access; not asked again");
                    self.unmountable().insert(repo.to_owned());
                    return Err(e);
                }
                mounted => return mounted,
            }
        }
    }

    /// The repositories mounts from which were refused for want of access.
    fn unmountable(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<String>> {
        self.unmountable
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A client whose token covers pushes here and pulls from `repo`, for
    /// a mount from there; `None` when the one client serves (the
    /// registry asks no credentials, takes Basic ones, the credentials are
    /// a registry token, or no such token came: the mount is tried anyway
    /// and may turn into an upload). An identity token is exchanged for
    /// this token as for the client's own.
    async fn mounter(&self, repo: &str) -> Option<Arc<Client>> {
        if self.open.load(std::sync::atomic::Ordering::Relaxed) {
            return None;
        }
        let mut mounters = self.mounters.lock().await;
        if let Some(known) = mounters.get(repo) {
            return known.clone();
        }
        let host = self.reference.resolve_registry();
        let scopes = [
            format!("repository:{}:pull,push", self.reference.repository()),
            format!("repository:{repo}:pull"),
        ];
        // What fails is not asked again for this repository: mounts go
        // with the one client, as they would without this.
        let made = match crate::bearer::token(&self.base(), &self.auth, &scopes).await {
            Ok(Some(token)) => match new_client(host, &self.opts) {
                Ok(client) => {
                    client
                        .store_auth_if_needed(host, &RegistryAuth::Bearer(token))
                        .await;
                    Some(Arc::new(client))
                }
                Err(e) => {
                    tracing::info!(from = repo, error = %e, "no client for a cross-repository mount");
                    None
                }
            },
            Ok(None) => None,
            Err(e) if e.transient => {
                // Asked again for the next blob.
                tracing::info!(from = repo, error = %e, "no token for a cross-repository mount this time");
                return None;
            }
            Err(e) => {
                tracing::info!(from = repo, error = %e, "no token for a cross-repository mount");
                None
            }
        };
        mounters.insert(repo.to_owned(), made.clone());
        made
    }
}

/// The blobs of `image` to send before its manifest: its layers, then its
/// config, each once.
fn blobs_of(image: &Image) -> Vec<&Descriptor> {
    let mut seen = std::collections::HashSet::new();
    image
        .layers
        .iter()
        .chain([&image.config])
        .filter(|d| seen.insert(&d.digest))
        .collect()
}

/// The media type a manifest's JSON declares, or what its fields say (an
/// index when it lists manifests; one that also has layers is refused as
/// ambiguous when it is read).
fn media_type_of(what: &str, bytes: &[u8]) -> Result<String> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        layers: Option<serde_json::Value>,
    }
    let p: Probe = parse_document(what, bytes)?;
    match (p.media_type, p.manifests, p.layers) {
        (Some(m), _, _) => Ok(m),
        (None, Some(_), _) => Ok(media::OCI_INDEX.to_owned()),
        (None, None, Some(_)) => Ok(media::OCI_MANIFEST.to_owned()),
        _ => Err(OciError::invalid(
            what,
            "is neither an image manifest nor an index",
        )),
    }
}

/// Writes a download stream into an ingest, reporting progress.
async fn copy_stream(
    mut stream: oci_client::client::SizedStream,
    w: &mut strata_content::Writer,
    desc: &Descriptor,
    progress: &ProgressTracker,
) -> std::result::Result<(), OciDistributionError> {
    use std::io::Write;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        w.write_all(&chunk)?;
        let done = w.status().offset;
        if done > desc.size {
            // More than described: the commit will say so; stop reading.
            break;
        }
        progress.update(done);
    }
    Ok(())
}

/// An image resolved in a registry, with the bytes read to resolve it.
struct Resolved {
    image: Image,
    manifest: Vec<u8>,
    config: Vec<u8>,
}

/// A blob's bytes on their way to a registry.
type BlobStream = futures_util::stream::BoxStream<
    'static,
    std::result::Result<bytes::Bytes, OciDistributionError>,
>;

/// What a copied blob's stream ends with when the source registry served
/// other bytes than the blob's: how [`served_corrupt`] tells it from any
/// other failed upload.
#[derive(Debug)]
struct SourceCorrupt(String);

impl std::fmt::Display for SourceCorrupt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SourceCorrupt {}

/// The most a copied blob's stream holds before passing it on: the client
/// sends each piece as one upload request, and the source's network
/// frames are a few KiB.
const PIECE: usize = 1 << 20;

/// `stream` (blob `desc` as another registry serves it) passed on in
/// 1 MiB pieces, counted and hashed: past its size, or short of it or of
/// its digest at the end, it fails with [`SourceCorrupt`], so a copy never
/// completes with other bytes.
fn checked_stream(
    stream: oci_client::client::SizedStream,
    desc: &Descriptor,
    progress: ProgressTracker,
) -> impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, OciDistributionError>>
+ Send
+ 'static {
    struct Copying {
        stream: futures_util::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>,
        verifier: strata_core::digest::Verifier,
        progress: ProgressTracker,
        held: bytes::BytesMut,
    }
    type Item = std::result::Result<bytes::Bytes, OciDistributionError>;
    let size = desc.size;
    let bad = |why: String| -> Item {
        Err(OciDistributionError::IoError(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            SourceCorrupt(format!("the source registry served {why}")),
        )))
    };
    let start = Copying {
        stream: stream.stream,
        verifier: strata_core::digest::Verifier::new(desc.digest.clone()),
        progress,
        held: bytes::BytesMut::new(),
    };
    futures_util::stream::unfold(Some(start), move |state| async move {
        let mut st = state?;
        loop {
            if st.held.len() >= PIECE {
                let piece = st.held.split().freeze();
                return Some((Ok(piece), Some(st)));
            }
            match st.stream.next().await {
                Some(Ok(chunk)) => {
                    st.verifier.update(&chunk);
                    st.progress.update(st.verifier.written());
                    if st.verifier.written() > size {
                        return Some((bad(format!("more than its {size} bytes")), None));
                    }
                    st.held.extend_from_slice(&chunk);
                }
                // The client checks the digest itself at the end.
                Some(Err(e))
                    if e.get_ref()
                        .is_some_and(|i| i.is::<oci_client::errors::DigestError>()) =>
                {
                    return Some((bad(format!("bytes of another digest: {e}")), None));
                }
                Some(Err(e)) => {
                    let e =
                        std::io::Error::new(e.kind(), format!("reading the source registry: {e}"));
                    return Some((Err(OciDistributionError::IoError(e)), None));
                }
                None => {
                    let written = st.verifier.written();
                    if written != size {
                        return Some((bad(format!("{written} bytes, not {size}")), None));
                    }
                    if let Err(e) = st.verifier.verify() {
                        return Some((bad(format!("bytes of another digest: {e}")), None));
                    }
                    st.progress.finish();
                    return (!st.held.is_empty()).then(|| (Ok(st.held.split().freeze()), None));
                }
            }
        }
    })
}

/// Blob `desc` of `store` as a stream of 1 MiB chunks.
fn blob_stream(
    store: &ContentStore,
    desc: &Descriptor,
    progress: ProgressTracker,
) -> Result<
    impl futures_util::Stream<Item = std::result::Result<bytes::Bytes, OciDistributionError>>
    + Send
    + 'static,
> {
    let reader = store.reader_at(&desc.digest)?;
    let size = desc.size;
    Ok(futures_util::stream::unfold(
        (reader, 0u64, progress),
        move |(reader, at, progress)| async move {
            if at >= size {
                progress.finish();
                return None;
            }
            let mut buf = vec![0u8; (size - at).min(1 << 20) as usize];
            match reader.read_at(&mut buf, at) {
                Ok(0) => Some((
                    Err(OciDistributionError::IoError(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "stored blob is shorter than its descriptor",
                    ))),
                    (reader, size, progress),
                )),
                Ok(n) => {
                    buf.truncate(n);
                    progress.update(at + n as u64);
                    Some((
                        Ok(bytes::Bytes::from(buf)),
                        (reader, at + n as u64, progress),
                    ))
                }
                Err(e) => Some((
                    Err(OciDistributionError::IoError(e)),
                    (reader, size, progress),
                )),
            }
        },
    ))
}

#[async_trait::async_trait]
impl Source for Registry {
    fn name(&self) -> String {
        format!("docker://{}", self.reference.whole())
    }

    async fn roots(&self, store: &ContentStore) -> Result<Roots> {
        let (desc, new) = self.fetch_manifest(store, &self.reference, None).await?;
        Ok(Roots {
            entries: vec![oci::Descriptor::from(&desc)],
            stored: usize::from(new),
        })
    }

    async fn fetch(
        &self,
        store: &ContentStore,
        desc: &Descriptor,
        progress: &Arc<ProgressTracker>,
    ) -> Result<()> {
        if media::is_manifest(&desc.media_type) || media::is_index(&desc.media_type) {
            let by_digest = self.reference.clone_with_digest(desc.digest.to_string());
            self.fetch_manifest(store, &by_digest, Some(desc)).await?;
            return Ok(());
        }
        self.fetch_blob(store, desc, progress).await
    }

    fn present(&self, store: &ContentStore, desc: &Descriptor) -> Result<()> {
        self.label_source(store, &desc.digest)
    }

    async fn read_range(
        &self,
        desc: &Descriptor,
        offset: u64,
        len: u64,
    ) -> Result<Option<Vec<u8>>> {
        Registry::read_range(self, desc, offset, len)
            .await
            .map(Some)
    }
}

/// The source of the image `reference` names, connected for pulls.
pub(crate) async fn source(reference: &str, opts: &RegistryOptions) -> Result<Arc<dyn Source>> {
    Ok(Arc::new(
        Registry::connect(reference, RegistryOperation::Pull, opts).await?,
    ))
}

/// Connects to the repository of `reference` for pushes and pushes
/// `image` there; the layer blobs `store` lacks are copied from the
/// repository `from` names, when given ([`Registry::push`]).
pub async fn push(
    ctx: &OpCtx,
    store: &ContentStore,
    image: &Image,
    reference: &str,
    from: Option<&str>,
    opts: &RegistryOptions,
) -> Result<PushReport> {
    Registry::connect(reference, RegistryOperation::Push, opts)
        .await?
        .push(ctx, store, image, from.map(|r| (r, opts)))
        .await
}

/// `reference` parsed, with a registry host (HOST/REPO[:TAG|@DIGEST]).
fn parse_reference(reference: &str) -> Result<Reference> {
    let parsed: Reference = reference
        .parse()
        .map_err(|e| OciError::invalid(format!("image reference {reference:?}"), format!("{e}")))?;
    let first = reference.split('/').next().unwrap_or_default();
    if !(first.contains('.') || first.contains(':') || first == "localhost") {
        return Err(OciError::invalid(
            format!("image reference {reference:?}"),
            "needs a registry host (HOST/REPO[:TAG|@DIGEST])",
        ));
    }
    Ok(parsed)
}

/// True when `store` has no blob `desc`.
fn is_absent(store: &ContentStore, desc: &Descriptor) -> Result<bool> {
    match store.info(&desc.digest) {
        Ok(_) => Ok(false),
        Err(e) if strata_core::Classify::is_not_found(&e) => Ok(true),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_answer_is_asked_again_only_when_it_may_change() {
        let answer = |code| OciDistributionError::ServerError {
            code,
            url: "http://127.0.0.1:5000/v2/x/blobs/sha256:0".to_owned(),
            message: String::new(),
        };
        for code in [408, 429, 500, 502, 503, 504] {
            assert!(transient(&answer(code)), "{code} may change");
        }
        for code in [400, 401, 403, 404, 405, 409, 413, 416] {
            assert!(!transient(&answer(code)), "{code} is lasting");
        }
        // The same with an error body, which oci-client keeps instead of
        // the status.
        use oci_client::errors::{OciEnvelope, OciError, OciErrorCode};
        let explained = |code| OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: String::new(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "http://127.0.0.1:5000/v2/x/manifests/latest".to_owned(),
        };
        assert!(transient(&explained(OciErrorCode::Toomanyrequests)));
        for code in [
            OciErrorCode::ManifestUnknown,
            OciErrorCode::Denied,
            OciErrorCode::Unsupported,
        ] {
            let name = format!("{code:?}");
            assert!(!transient(&explained(code)), "{name} is lasting");
        }
    }

    #[test]
    fn loopback_hosts() {
        for h in ["127.0.0.1:5000", "localhost:80", "[::1]:5000", "127.1.2.3"] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["10.0.0.1:5000", "registry.example:443", "example.com"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}

//! A Strata [`Snapshotter`] that is a client of containerd's snapshots
//! service over a unix socket: the wire path (client, socket, server,
//! backend) held to the same conformance suite as the backends, and a way
//! for Strata to use any proxy snapshotter.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use strata_api::containerd::services::snapshots::v1 as wire;
use strata_api::containerd::services::snapshots::v1::snapshots_client::SnapshotsClient;
use strata_core::{Filter, Labels, Mount};
use strata_snapshot::{Info, SnapshotError, Snapshotter, Usage, WalkFn};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::convert;

/// A snapshotter reached over containerd's snapshots API.
#[derive(Clone, Debug)]
pub struct GrpcSnapshotter {
    client: SnapshotsClient<Channel>,
    name: String,
    socket: PathBuf,
    /// Set by `close`: every later call is refused, as containerd's proxy
    /// refuses calls on a closed connection.
    closed: Arc<AtomicBool>,
}

impl GrpcSnapshotter {
    /// A client of the server on `socket`, which it names `name` (the
    /// backend name used in lease resource types); connects on first use.
    pub fn lazy(socket: &Path, name: &str) -> GrpcSnapshotter {
        let path = socket.to_owned();
        let channel = Endpoint::from_static("http://strata.invalid").connect_with_connector_lazy(
            tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(stream))
                }
            }),
        );
        GrpcSnapshotter {
            client: SnapshotsClient::new(channel),
            name: name.to_owned(),
            socket: socket.to_owned(),
            closed: Arc::new(AtomicBool::new(false)),
        }
    }

    fn client(&self) -> Result<SnapshotsClient<Channel>, SnapshotError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(SnapshotError::closed());
        }
        Ok(self.client.clone())
    }
}

fn labels(l: Labels) -> std::collections::HashMap<String, String> {
    l.into_iter().collect()
}

fn info(i: Option<wire::Info>) -> Result<Info, SnapshotError> {
    let i = i.ok_or_else(|| SnapshotError::Task("the server sent no info".into()))?;
    convert::info_from_wire(i)
}

fn mounts(m: &[strata_api::containerd::types::Mount]) -> Vec<Mount> {
    m.iter().map(convert::mount_from_wire).collect()
}

#[async_trait::async_trait]
impl Snapshotter for GrpcSnapshotter {
    fn name(&self) -> &str {
        &self.name
    }

    async fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        l: Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let r = self
            .client()?
            .prepare(wire::PrepareSnapshotRequest {
                snapshotter: self.name.clone(),
                key: key.to_owned(),
                parent: parent.unwrap_or_default().to_owned(),
                labels: labels(l),
            })
            .await
            .map_err(|s| convert::error(&s))?;
        Ok(mounts(&r.into_inner().mounts))
    }

    async fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        l: Labels,
    ) -> Result<Vec<Mount>, SnapshotError> {
        let r = self
            .client()?
            .view(wire::ViewSnapshotRequest {
                snapshotter: self.name.clone(),
                key: key.to_owned(),
                parent: parent.unwrap_or_default().to_owned(),
                labels: labels(l),
            })
            .await
            .map_err(|s| convert::error(&s))?;
        Ok(mounts(&r.into_inner().mounts))
    }

    async fn mounts(&self, key: &str) -> Result<Vec<Mount>, SnapshotError> {
        let r = self
            .client()?
            .mounts(wire::MountsRequest {
                snapshotter: self.name.clone(),
                key: key.to_owned(),
            })
            .await
            .map_err(|s| convert::error(&s))?;
        Ok(mounts(&r.into_inner().mounts))
    }

    async fn commit(&self, name: &str, key: &str, l: Labels) -> Result<(), SnapshotError> {
        self.client()?
            .commit(wire::CommitSnapshotRequest {
                snapshotter: self.name.clone(),
                name: name.to_owned(),
                key: key.to_owned(),
                labels: labels(l),
            })
            .await
            .map_err(|s| convert::error(&s))?;
        Ok(())
    }

    async fn remove(&self, key: &str) -> Result<(), SnapshotError> {
        self.client()?
            .remove(wire::RemoveSnapshotRequest {
                snapshotter: self.name.clone(),
                key: key.to_owned(),
            })
            .await
            .map_err(|s| convert::error(&s))?;
        Ok(())
    }

    async fn stat(&self, key: &str) -> Result<Info, SnapshotError> {
        let r = self
            .client()?
            .stat(wire::StatSnapshotRequest {
                snapshotter: self.name.clone(),
                key: key.to_owned(),
            })
            .await
            .map_err(|s| convert::error(&s))?;
        info(r.into_inner().info)
    }

    async fn update(&self, i: Info, fieldpaths: &[String]) -> Result<Info, SnapshotError> {
        let r = self
            .client()?
            .update(wire::UpdateSnapshotRequest {
                snapshotter: self.name.clone(),
                info: Some(convert::info_to_wire(i)),
                update_mask: Some(prost_types::FieldMask {
                    paths: fieldpaths.to_vec(),
                }),
            })
            .await
            .map_err(|s| convert::error(&s))?;
        info(r.into_inner().info)
    }

    async fn usage(&self, key: &str) -> Result<Usage, SnapshotError> {
        let r = self
            .client()?
            .usage(wire::UsageRequest {
                snapshotter: self.name.clone(),
                key: key.to_owned(),
            })
            .await
            .map_err(|s| convert::error(&s))?
            .into_inner();
        Ok(Usage {
            size: u64::try_from(r.size).unwrap_or(0),
            inodes: u64::try_from(r.inodes).unwrap_or(0),
        })
    }

    async fn walk(&self, filter: &Filter, f: WalkFn<'_>) -> Result<(), SnapshotError> {
        // The filter is applied here: it is already parsed, and the server
        // applies the same language to what it is sent.
        let mut stream = self
            .client()?
            .list(wire::ListSnapshotsRequest {
                snapshotter: self.name.clone(),
                filters: Vec::new(),
            })
            .await
            .map_err(|s| convert::error(&s))?
            .into_inner();
        let mut all = Vec::new();
        while let Some(batch) = stream.next().await {
            for i in batch.map_err(|s| convert::error(&s))?.info {
                all.push(info(Some(i))?);
            }
        }
        for i in all {
            if filter.matches(&i) {
                f(i).await?;
            }
        }
        Ok(())
    }

    async fn close(&self) -> Result<(), SnapshotError> {
        self.closed.store(true, Ordering::Release);
        tracing::debug!(socket = %self.socket.display(), "client closed");
        Ok(())
    }
}

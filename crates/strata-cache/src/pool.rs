//! The shared mount pool (seed §4.7): all users of one cache-mount ref
//! share one kernel mount under `<root>/mounts/`, handed out as binds of
//! it, because an overlay upper directory must never be mounted twice. The
//! mount goes when its last user lets go; the next open empties the
//! directory of anything a crash left.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use strata_core::Mount;
use strata_snapshot::mounts::{LocalMount, MountOptions};

use crate::error::Result;

#[derive(Debug)]
struct Shared {
    mount: LocalMount,
    users: usize,
}

/// Shared mounts by ref id.
#[derive(Debug, Clone)]
pub(crate) struct MountPool {
    dir: PathBuf,
    shared: Arc<Mutex<HashMap<String, Shared>>>,
}

/// One user's share; the last one dropped unmounts.
#[derive(Debug)]
pub(crate) struct PoolGuard {
    pool: MountPool,
    id: String,
}

impl MountPool {
    pub(crate) fn new(dir: PathBuf) -> MountPool {
        MountPool {
            dir,
            shared: Arc::default(),
        }
    }

    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Shared>> {
        self.shared.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A bind of the one mount of `id` (made from `mounts` on first use).
    pub(crate) fn share(&self, id: &str, mounts: &[Mount]) -> Result<(Vec<Mount>, PoolGuard)> {
        let mut map = self.map();
        let entry = match map.entry(id.to_owned()) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mount = LocalMount::mount(
                    mounts,
                    &self.dir,
                    MountOptions {
                        force_remount: true,
                        temporary: false,
                    },
                )?;
                v.insert(Shared { mount, users: 0 })
            }
        };
        entry.users += 1;
        let bind = Mount::bind(entry.mount.path().to_path_buf(), false);
        Ok((
            vec![bind],
            PoolGuard {
                pool: self.clone(),
                id: id.to_owned(),
            },
        ))
    }
}

impl Drop for PoolGuard {
    fn drop(&mut self) {
        let mut map = self.pool.map();
        let last = map.get_mut(&self.id).is_some_and(|s| {
            s.users -= 1;
            s.users == 0
        });
        if last
            && let Some(s) = map.remove(&self.id)
            && let Err(e) = s.mount.unmount()
        {
            tracing::warn!(id = self.id, error = %e, "could not unmount a shared cache mount");
        }
    }
}

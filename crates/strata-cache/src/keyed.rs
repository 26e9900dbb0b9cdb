//! Per-key async locks, made on demand and dropped when nobody holds or
//! waits for them: imports of one (parent, diffID), attach and remove of
//! one owner lease, exports and sizes of one snapshot.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// A family of locks by key.
#[derive(Debug, Default)]
pub(crate) struct KeyedLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds one key; releases (and forgets the key when unused) on drop.
#[derive(Debug)]
pub(crate) struct KeyGuard<'a> {
    family: &'a KeyedLocks,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl KeyedLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for `key`.
    pub(crate) async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let lock = Arc::clone(self.map().entry(key.to_owned()).or_default());
        let guard = lock.lock_owned().await;
        KeyGuard {
            family: self,
            key: key.to_owned(),
            guard: Some(guard),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut map = self.family.map();
        // Only the map's own reference left: nobody holds or waits.
        if map
            .get(&self.key)
            .is_some_and(|l| Arc::strong_count(l) == 1)
        {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_independent_and_forgotten() {
        let locks = KeyedLocks::default();
        let a = locks.lock("a").await;
        let b = locks.lock("b").await;
        assert_eq!(locks.map().len(), 2);
        drop(a);
        drop(b);
        assert!(locks.map().is_empty());
    }

    #[tokio::test]
    async fn one_holder_per_key() {
        let locks = Arc::new(KeyedLocks::default());
        let held = locks.lock("k").await;
        let l2 = Arc::clone(&locks);
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("k").await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        waiter.await.unwrap();
        assert!(locks.map().is_empty());
    }
}

//! A JetStream KV bucket holding JSON values of one type, with the revision-checked writes
//! that make claims, rotations and counters safe across nodes.

use async_nats::jetstream::kv::{self, CreateErrorKind, Operation, UpdateErrorKind};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::marker::PhantomData;

/// Why a KV operation failed.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    /// The server did not answer or refused the operation.
    #[error("kv {op} on {bucket}: {source}")]
    Nats {
        /// What was attempted.
        op: &'static str,
        /// Which bucket.
        bucket: String,
        /// The cause.
        #[source]
        source: crate::NatsSource,
    },
    /// A stored value does not decode.
    #[error("corrupt value in {0}: {1}")]
    Corrupt(String, #[source] serde_json::Error),
    /// A value does not encode.
    #[error("cannot encode value: {0}")]
    Encode(#[from] serde_json::Error),
}

/// A bucket of `T` as JSON. Cheap to clone.
#[derive(Debug)]
pub struct JsonKv<T> {
    store: kv::Store,
    bucket: String,
    _value: PhantomData<fn() -> T>,
}

impl<T> Clone for JsonKv<T> {
    fn clone(&self) -> Self {
        Self { store: self.store.clone(), bucket: self.bucket.clone(), _value: PhantomData }
    }
}

impl<T: Serialize + DeserializeOwned> JsonKv<T> {
    /// Typed access to `store`.
    pub fn new(store: kv::Store) -> Self {
        let bucket = store.name.clone();
        Self { store, bucket, _value: PhantomData }
    }

    fn err(&self, op: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> KvError {
        KvError::Nats { op, bucket: self.bucket.clone(), source: Box::new(e) }
    }

    /// The current value and its revision; `None` if the key is absent or deleted.
    pub async fn get(&self, key: &str) -> Result<Option<(T, u64)>, KvError> {
        let entry = self.store.entry(key).await.map_err(|e| self.err("get", e))?;
        match entry {
            Some(e) if e.operation == Operation::Put => {
                let value = serde_json::from_slice(&e.value)
                    .map_err(|err| KvError::Corrupt(format!("{}/{key}", self.bucket), err))?;
                Ok(Some((value, e.revision)))
            }
            _ => Ok(None),
        }
    }

    /// Writes `value` only if the key is absent; `None` if it exists.
    pub async fn create(&self, key: &str, value: &T) -> Result<Option<u64>, KvError> {
        let bytes = serde_json::to_vec(value)?;
        match self.store.create(key, bytes.into()).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Ok(None),
            Err(e) => Err(self.err("create", e)),
        }
    }

    /// Writes `value` only if the key is still at `revision`; `None` if it moved on.
    pub async fn update(&self, key: &str, value: &T, revision: u64) -> Result<Option<u64>, KvError> {
        let bytes = serde_json::to_vec(value)?;
        match self.store.update(key, bytes.into(), revision).await {
            Ok(rev) => Ok(Some(rev)),
            Err(e) if e.kind() == UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(self.err("update", e)),
        }
    }

    /// Writes `value` unconditionally.
    pub async fn put(&self, key: &str, value: &T) -> Result<u64, KvError> {
        let bytes = serde_json::to_vec(value)?;
        self.store.put(key, bytes.into()).await.map_err(|e| self.err("put", e))
    }

    /// Deletes the key, only if it is still at `revision` when one is given.
    pub async fn delete(&self, key: &str, revision: Option<u64>) -> Result<(), KvError> {
        self.store.delete_expect_revision(key, revision).await.map_err(|e| self.err("delete", e))
    }
}

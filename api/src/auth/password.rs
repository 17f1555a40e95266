//! Password hashing with argon2id. Hashing runs on the blocking pool: it is meant to be slow.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};

/// argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HashParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Lanes.
    pub parallelism: u32,
}

impl Default for HashParams {
    /// OWASP's recommended minimum for argon2id: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        Self { memory_kib: 19 * 1024, iterations: 2, parallelism: 1 }
    }
}

/// Why hashing failed.
#[derive(Debug, thiserror::Error)]
pub enum HashError {
    /// The parameters are out of argon2's range.
    #[error("invalid argon2 parameters: {0}")]
    Params(argon2::Error),
    /// Hashing failed or its task died.
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Hashes and verifies passwords.
#[derive(Clone)]
pub struct Hasher {
    argon: Argon2<'static>,
    /// Each hash holds its memory cost (19 MiB by default) for its duration: without a bound,
    /// a burst of logins would run hundreds at once on the blocking pool and exhaust memory.
    running: std::sync::Arc<tokio::sync::Semaphore>,
    /// A hash of nothing anyone knows, verified against when an account does not exist, so
    /// that an unknown email costs the same time as a wrong password.
    decoy: String,
}

impl std::fmt::Debug for Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hasher").field("params", self.argon.params()).finish_non_exhaustive()
    }
}

impl Hasher {
    /// A hasher with `params`.
    pub fn new(params: HashParams) -> Result<Self, HashError> {
        let p = Params::new(params.memory_kib, params.iterations, params.parallelism, None)
            .map_err(HashError::Params)?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, p);
        let decoy = hash_with(&argon, &super::tokens::random_token(24))?;
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
        let running = std::sync::Arc::new(tokio::sync::Semaphore::new(cores * 2));
        Ok(Self { argon, running, decoy })
    }

    /// The PHC string of `password` with a fresh salt.
    pub async fn hash(&self, password: String) -> Result<String, HashError> {
        let argon = self.argon.clone();
        let _slot = self.running.acquire().await.map_err(|e| HashError::Hash(e.to_string()))?;
        tokio::task::spawn_blocking(move || hash_with(&argon, &password))
            .await
            .map_err(|e| HashError::Hash(e.to_string()))?
    }

    /// Whether `password` matches `phc`; with `None` it checks against the decoy (always
    /// false) so that the caller's timing does not reveal whether the account exists.
    pub async fn verify(&self, password: String, phc: Option<String>) -> bool {
        let argon = self.argon.clone();
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| self.decoy.clone());
        let Ok(_slot) = self.running.acquire().await else { return false };
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc).is_ok_and(|h| argon.verify_password(password.as_bytes(), &h).is_ok())
        })
        .await
        .unwrap_or(false);
        known && matched
    }
}

fn hash_with(argon: &Argon2<'_>, password: &str) -> Result<String, HashError> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt).map_err(|_| HashError::Hash("no randomness".into()))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| HashError::Hash(e.to_string()))?;
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| HashError::Hash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cheap() -> Hasher {
        Hasher::new(HashParams { memory_kib: 1024, iterations: 1, parallelism: 1 }).expect("params")
    }

    #[tokio::test]
    async fn hashes_are_argon2id_salted_and_verify() {
        let h = cheap();
        let a = h.hash("correct horse battery".into()).await.expect("hash");
        let b = h.hash("correct horse battery".into()).await.expect("hash");
        assert!(a.starts_with("$argon2id$v=19$m=1024,t=1,p=1$"), "{a}");
        assert_ne!(a, b, "each hash has its own salt");
        assert!(h.verify("correct horse battery".into(), Some(a.clone())).await);
        assert!(!h.verify("correct horse batterY".into(), Some(a)).await);
        assert!(!h.verify("anything".into(), None).await, "the decoy never matches");
        assert!(!h.verify("anything".into(), Some("not a phc string".into())).await);
    }

    #[test]
    fn out_of_range_parameters_are_refused() {
        assert!(Hasher::new(HashParams { memory_kib: 1, iterations: 0, parallelism: 1 }).is_err());
    }
}

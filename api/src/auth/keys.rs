//! Token signing keys: Ed25519 key pairs, each named by its RFC 7638 thumbprint (`kid`).
//! The newest key signs; every key verifies, so keys can be rotated without logging anyone
//! out. The public halves are published as a JWKS.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use jsonwebtoken::{DecodingKey, EncodingKey};
use serde_json::{Value, json};
use std::collections::HashMap;

/// Why keys could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key was given.
    #[error("no signing key")]
    Empty,
    /// A PEM block does not parse.
    #[error("not a PEM file: {0}")]
    Pem(#[from] pem::PemError),
    /// A PEM block is not an Ed25519 PKCS#8 private key.
    #[error("key {0} is not an Ed25519 private key (PKCS#8 `PRIVATE KEY`)")]
    NotEd25519(usize),
    /// Key generation failed.
    #[error("cannot generate a key")]
    Generate,
}

struct Verifier {
    key: DecodingKey,
}

/// The signing key and every verifying key.
pub struct KeySet {
    signing_kid: String,
    signing: EncodingKey,
    verifying: HashMap<String, Verifier>,
    jwks: Value,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("signing_kid", &self.signing_kid)
            .field("keys", &self.verifying.len())
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// Keys from PEM text (one or more `PRIVATE KEY` blocks, oldest first): the last signs.
    pub fn from_pems<S: AsRef<str>>(pems: &[S]) -> Result<Self, KeyError> {
        let mut blocks = Vec::new();
        for p in pems {
            blocks.extend(pem::parse_many(p.as_ref())?);
        }
        let mut verifying = HashMap::new();
        let mut jwks = Vec::new();
        let mut signing = None;
        for (i, block) in blocks.iter().enumerate() {
            if block.tag() != "PRIVATE KEY" {
                return Err(KeyError::NotEd25519(i));
            }
            let pair = Ed25519KeyPair::from_pkcs8(block.contents()).map_err(|_| KeyError::NotEd25519(i))?;
            let x = B64.encode(pair.public_key().as_ref());
            let kid = thumbprint(&x);
            let key = DecodingKey::from_ed_components(&x).map_err(|_| KeyError::NotEd25519(i))?;
            if !verifying.contains_key(&kid) {
                jwks.push(
                    json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"}),
                );
            }
            verifying.insert(kid.clone(), Verifier { key });
            signing = Some((kid, EncodingKey::from_ed_der(block.contents())));
        }
        let (signing_kid, signing) = signing.ok_or(KeyError::Empty)?;
        Ok(Self { signing_kid, signing, verifying, jwks: json!({ "keys": jwks }) })
    }

    /// The id of the key that signs.
    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    pub(crate) fn signing_key(&self) -> &EncodingKey {
        &self.signing
    }

    pub(crate) fn verifying_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.verifying.get(kid).map(|v| &v.key)
    }

    /// The public keys as a JSON Web Key Set.
    pub fn jwks(&self) -> &Value {
        &self.jwks
    }
}

/// A new Ed25519 private key as PKCS#8 PEM.
pub fn generate_pem() -> Result<String, KeyError> {
    let rng = aws_lc_rs::rand::SystemRandom::new();
    // PKCS#8 v1, the form OpenSSL and most tools write and read for Ed25519.
    let doc = Ed25519KeyPair::generate_pkcs8v1(&rng).map_err(|_| KeyError::Generate)?;
    Ok(pem::encode_config(&pem::Pem::new("PRIVATE KEY", doc.as_ref().to_vec()), lf()))
}

/// PEM with Unix line endings, as OpenSSL writes it.
pub fn lf() -> pem::EncodeConfig {
    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)
}

/// The RFC 7638 thumbprint of an Ed25519 public key (`x`, base64url).
fn thumbprint(x: &str) -> String {
    // Members in lexicographic order, no whitespace, as RFC 7638 §3 requires.
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    B64.encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_load_and_the_last_one_signs() {
        let (a, b) = (generate_pem().expect("a"), generate_pem().expect("b"));
        let keys = KeySet::from_pems(&[a.clone(), b]).expect("load");
        let only_a = KeySet::from_pems(&[a]).expect("load");
        assert_ne!(keys.signing_kid(), only_a.signing_kid());
        assert!(keys.verifying_key(only_a.signing_kid()).is_some(), "older keys still verify");
        assert_eq!(keys.jwks()["keys"].as_array().map(Vec::len), Some(2));
        assert_eq!(keys.jwks()["keys"][1]["kid"], keys.signing_kid());
    }

    #[test]
    fn anything_but_an_ed25519_private_key_is_refused() {
        assert!(matches!(KeySet::from_pems::<&str>(&[]), Err(KeyError::Empty)));
        let public = pem::encode(&pem::Pem::new("PUBLIC KEY", vec![1, 2, 3]));
        assert!(KeySet::from_pems(&[public]).is_err());
        assert!(KeySet::from_pems(&["not pem"]).is_err());
    }
}

//! Token signing keys for a node: from configured files or PEM text, or else the key the
//! cluster shares (created by the first node that needs one). And `souk keys generate`.

use crate::config::Config;
use anyhow::Context as _;
use souk_api::auth::keys::{KeySet, generate_pem};
use souk_nats::accounts::{Accounts, SHARED_KEYS, SharedKeys};
use std::path::Path;

/// The keys this node signs and verifies with.
pub async fn load(cfg: &Config, accounts: &Accounts) -> anyhow::Result<KeySet> {
    let mut pems = Vec::new();
    for file in cfg.auth_keys.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|s| !s.is_empty()) {
        pems.push(std::fs::read_to_string(file).with_context(|| format!("cannot read key file {file}"))?);
    }
    pems.extend(cfg.auth_keys_pem.clone());
    if !pems.is_empty() {
        return KeySet::from_pems(&pems).context("auth_keys");
    }
    // No keys configured: every node must still verify every other node's tokens, so they
    // share one key through the cluster bucket. The first node creates it.
    let shared = match accounts.keys.get(SHARED_KEYS).await? {
        Some((keys, _)) => keys,
        None => {
            let fresh = SharedKeys { pems: vec![generate_pem()?] };
            match accounts.keys.create(SHARED_KEYS, &fresh).await? {
                Some(_) => {
                    tracing::info!("generated the cluster's shared token signing key");
                    fresh
                }
                None => {
                    accounts.keys.get(SHARED_KEYS).await?.map(|(k, _)| k).context("shared keys vanished")?
                }
            }
        }
    };
    KeySet::from_pems(&shared.pems).context("the cluster's shared signing keys")
}

/// `souk keys generate`: writes a new private key (mode 0600) or prints it, and reports its id.
pub fn generate(out: Option<&Path>) -> anyhow::Result<()> {
    let pem = generate_pem()?;
    let kid = KeySet::from_pems(&[pem.as_str()])?.signing_kid().to_owned();
    match out {
        Some(path) => {
            write_private(path, &pem)?;
            let public = path.with_extension("pub.pem");
            std::fs::write(&public, public_pem(&pem)?)
                .with_context(|| format!("cannot write {}", public.display()))?;
            eprintln!(
                "wrote Ed25519 signing key {kid} to {} (public key: {})",
                path.display(),
                public.display()
            );
        }
        None => {
            print!("{pem}");
            eprintln!("generated Ed25519 signing key {kid}");
        }
    }
    Ok(())
}

/// The SubjectPublicKeyInfo PEM of an Ed25519 private key, for tools that want a file rather
/// than the JWKS.
fn public_pem(private_pem: &str) -> anyhow::Result<String> {
    use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair as _};
    let block = pem::parse(private_pem)?;
    let pair = Ed25519KeyPair::from_pkcs8(block.contents()).map_err(|e| anyhow::anyhow!("{e}"))?;
    // RFC 8410: SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING { key } }.
    let mut der = vec![0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];
    der.extend_from_slice(pair.public_key().as_ref());
    Ok(pem::encode_config(&pem::Pem::new("PUBLIC KEY", der), souk_api::auth::keys::lf()))
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut f = options
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist)", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

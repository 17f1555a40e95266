//! `souk admin create`: ensure an admin account on a running cluster, from the command line.

use crate::config::Config;
use std::io::BufRead as _;

/// Creates (or promotes) the admin `email`. The password comes from `SOUK_ADMIN_PASSWORD`
/// or, if unset, from the first line of standard input; it is used only if the account is
/// created here.
pub async fn create(cfg: &Config, email: &str) -> anyhow::Result<()> {
    let password = match &cfg.admin_password {
        Some(p) => p.clone(),
        None => {
            eprintln!("password for {email} (one line on stdin):");
            let mut line = String::new();
            std::io::stdin().lock().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    let cluster = crate::client::ClusterClient::connect(cfg, "souk admin").await?;
    let auth = crate::serve::auth(cfg, &cluster.jet, cluster.bus.clone()).await?;
    crate::serve::ensure_admin(&auth, email, password).await?;
    cluster.close().await?;
    eprintln!("{email} is an admin");
    Ok(())
}

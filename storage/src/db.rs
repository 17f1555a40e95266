//! Connecting to SurrealDB and applying schema migrations.

use crate::StorageError;
use surrealdb::Surreal;
use surrealdb::engine::any::Any;
use surrealdb::opt::auth::Root;

/// The database handle: the same type for embedded (`mem://`, `surrealkv://`) and remote
/// (`ws://`) databases.
pub type Db = Surreal<Any>;

/// Where the read models live.
#[derive(Debug, Clone)]
pub struct DbSettings {
    /// `mem://`, `surrealkv://<path>` or `ws://host:port`.
    pub endpoint: String,
    /// Namespace.
    pub namespace: String,
    /// Database.
    pub database: String,
    /// Root user and password, for a remote server.
    pub root: Option<(String, String)>,
}

/// Connects, signs in when credentials are given, selects the namespace and database, and
/// applies pending migrations.
pub async fn connect(s: &DbSettings) -> Result<Db, StorageError> {
    let db = surrealdb::engine::any::connect(s.endpoint.as_str()).await?;
    if let Some((user, pass)) = &s.root {
        db.signin(Root { username: user.clone(), password: pass.clone() }).await?;
    }
    db.use_ns(&s.namespace).use_db(&s.database).await?;
    migrate(&db).await?;
    Ok(db)
}

/// Schema versions, applied in order, each exactly once. Never edit a released one: add a
/// new version instead.
const MIGRATIONS: &[(u32, &str)] = &[(
    1,
    r"
    DEFINE TABLE IF NOT EXISTS stock SCHEMAFULL;
    DEFINE FIELD IF NOT EXISTS sku ON stock TYPE string;
    DEFINE FIELD IF NOT EXISTS on_hand ON stock TYPE int;
    DEFINE FIELD IF NOT EXISTS reserved ON stock TYPE int;
    DEFINE FIELD IF NOT EXISTS available ON stock TYPE int;
    DEFINE FIELD IF NOT EXISTS version ON stock TYPE int;
    DEFINE FIELD IF NOT EXISTS seq ON stock TYPE int;
    DEFINE INDEX IF NOT EXISTS stock_sku ON stock FIELDS sku UNIQUE;
    DEFINE INDEX IF NOT EXISTS stock_available ON stock FIELDS available;
    DEFINE TABLE IF NOT EXISTS projection SCHEMAFULL;
    DEFINE FIELD IF NOT EXISTS seq ON projection TYPE int;
    ",
)];

/// Applies every migration newer than the database's schema version.
pub async fn migrate(db: &Db) -> Result<(), StorageError> {
    db.query("DEFINE TABLE IF NOT EXISTS migration SCHEMALESS").await?.check()?;
    let mut res = db.query("SELECT VALUE version FROM migration").await?;
    let applied: Vec<i64> = res.take(0)?;
    for (version, sql) in MIGRATIONS {
        if applied.contains(&i64::from(*version)) {
            continue;
        }
        db.query("BEGIN TRANSACTION")
            .query(*sql)
            .query("CREATE type::record('migration', $version) SET version = $version")
            .query("COMMIT TRANSACTION")
            .bind(("version", i64::from(*version)))
            .await?
            .check()?;
        tracing::info!(version, "applied schema migration");
    }
    Ok(())
}

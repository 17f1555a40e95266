//! `souk`: run a node, or drive load against one.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tracing_subscriber::EnvFilter;

// glibc's malloc spent about 40% of a node's CPU under load (arena contention and
// consolidation across worker threads); mimalloc removes most of that (docs/benchmarks.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(name = "souk", version, about = "Souk e-commerce backend")]
struct Cli {
    /// A TOML configuration file; `SOUK_*` environment variables override it.
    #[arg(long, short, env = "SOUK_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a node until SIGTERM or SIGINT.
    Serve {
        /// Create the demo stock once the node is ready (skipping SKUs that exist).
        #[arg(long)]
        seed: bool,
    },
    /// Measure reservations per second against a running node.
    Load(souk::load::LoadArgs),
    /// Token signing keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Account administration.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// Bulk import into a running cluster.
    Import {
        #[command(subcommand)]
        command: ImportCommand,
    },
    /// Print the AsyncAPI document of every subject Souk publishes or serves (YAML).
    Asyncapi,
    /// Print the OpenAPI document of the HTTP API (JSON), as a node serves it at `/openapi.json`.
    Openapi,
    /// Follow the logs of every node of a running cluster.
    Logs {
        #[command(subcommand)]
        command: LogsCommand,
    },
    /// Notifications of a running cluster.
    Notify {
        #[command(subcommand)]
        command: NotifyCommand,
    },
    /// Load the demo catalog (products, stock, accounts) into a running cluster; existing
    /// products and stock are left as they are.
    Seed,
    /// Snapshot every stream and bucket of a running cluster into a new folder.
    Backup {
        /// The folder to create (it must not exist, or be empty).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore a backup into a NATS that holds none of Souk's streams, before any node starts.
    Restore {
        /// The backup's folder.
        #[arg(long)]
        from: PathBuf,
        /// Delete Souk's streams already in NATS first (refused while any node runs there).
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ImportCommand {
    /// Products from JSON lines (one product per line) or CSV (one variant per row),
    /// idempotent by SKU.
    Products {
        /// The file.
        file: PathBuf,
        /// `jsonl` or `csv`; by default from the file's extension.
        #[arg(long, value_parser = parse_format)]
        format: Option<souk_api::import::Format>,
    },
}

fn parse_format(s: &str) -> Result<souk_api::import::Format, String> {
    match s {
        "jsonl" | "ndjson" => Ok(souk_api::import::Format::Jsonl),
        "csv" => Ok(souk_api::import::Format::Csv),
        other => Err(format!("unknown format {other:?}: use jsonl or csv")),
    }
}

#[derive(Debug, Subcommand)]
enum LogsCommand {
    /// Print records as nodes log them, one JSON line each, until interrupted.
    Tail {
        /// The least severe level to show: error, warn, info, debug or trace.
        #[arg(long, value_parser = parse_level)]
        level: Option<souk_messages::log::Level>,
        /// Only this node's records.
        #[arg(long)]
        node: Option<String>,
        /// Only records of this request (its `x-request-id`) or correlation id.
        #[arg(long)]
        request_id: Option<String>,
        /// Only records containing this text (case-insensitive).
        #[arg(long)]
        grep: Option<String>,
    },
}

fn parse_level(s: &str) -> Result<souk_messages::log::Level, String> {
    souk_messages::log::Level::parse(s)
        .ok_or_else(|| format!("unknown level {s:?}: error, warn, info, debug or trace"))
}

#[derive(Debug, Subcommand)]
enum NotifyCommand {
    /// The dead-letter stream: notifications that could not be delivered.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Print the dead letters, oldest first, one JSON object per line.
    List,
    /// Queue dead letters again (and remove them from the dead-letter stream).
    Retry {
        /// The sequences to retry, as `list` shows them.
        seqs: Vec<u64>,
        /// Retry every dead letter.
        #[arg(long, conflicts_with = "seqs")]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Write a new Ed25519 signing key (PKCS#8 PEM) and print its key id.
    Generate {
        /// The file to create (mode 0600); standard output when omitted.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum AdminCommand {
    /// Create an admin account (or make an existing account admin) on a running cluster.
    /// The password comes from SOUK_ADMIN_PASSWORD or the first line of stdin.
    Create {
        /// The admin's email address.
        #[arg(long)]
        email: String,
    },
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The error and its causes on one line: a backtrace helps nobody mend a setting.
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Runs the command the command line names.
async fn run(cli: Cli) -> anyhow::Result<()> {
    let cfg = souk::config::Config::load(cli.config.as_deref())?;
    let filter = EnvFilter::try_new(&cfg.log).unwrap_or_else(|_| EnvFilter::new("info"));
    match cli.command {
        Command::Serve { seed } => {
            use tracing_subscriber::layer::SubscriberExt as _;
            use tracing_subscriber::util::SubscriberInitExt as _;
            let forward = match cfg.log_forward.as_str() {
                "off" => None,
                l => Some(parse_level(l).map_err(anyhow::Error::msg)?),
            };
            let sink = souk::logs::LogSink::new(forward);
            let json = cfg.log_format == souk::config::LogFormat::Json;
            // Text goes to the terminal through `fmt`; the JSON layer still forwards.
            let text = (!json).then(|| {
                let colour = std::io::IsTerminal::is_terminal(&std::io::stdout());
                tracing_subscriber::fmt::layer().with_writer(std::io::stdout).with_ansi(colour)
            });
            tracing_subscriber::registry()
                .with(filter)
                .with(souk::logs::JsonLayer::new(sink.clone(), json))
                .with(text)
                .init();
            souk::serve::run(cfg, seed, sink).await
        }
        Command::Load(args) => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            souk::load::run(args).await
        }
        Command::Keys { command: KeysCommand::Generate { out } } => souk::keys::generate(out.as_deref()),
        Command::Admin { command: AdminCommand::Create { email } } => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            souk::admin::create(&cfg, &email).await
        }
        Command::Import { command: ImportCommand::Products { file, format } } => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            souk::import::products(&cfg, &file, format).await
        }
        Command::Asyncapi => {
            print!("{}", souk::asyncapi::yaml());
            Ok(())
        }
        Command::Openapi => {
            println!("{}", serde_json::to_string_pretty(&souk_api::openapi())?);
            Ok(())
        }
        Command::Logs { command: LogsCommand::Tail { level, node, request_id, grep } } => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            souk::logs::tail(&cfg, level, node.as_deref(), request_id.as_deref(), grep.as_deref()).await
        }
        Command::Notify { command: NotifyCommand::Dlq { command } } => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            match command {
                DlqCommand::List => souk::notify::list(&cfg).await,
                DlqCommand::Retry { seqs, all } => souk::notify::retry(&cfg, &seqs, all).await,
            }
        }
        Command::Backup { out } => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            souk::backup::backup(&cfg, &out).await
        }
        Command::Restore { from, replace } => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            souk::backup::restore(&cfg, &from, replace).await
        }
        Command::Seed => {
            tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
            souk::seed::standalone(&cfg).await
        }
    }
}

//! A local `nats-server` child process: what `souk serve` starts when no NATS URL is
//! configured, and what the test harness starts for every test.

use prometheus_client::metrics::counter::Counter;
use std::io::Write as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Why a local server could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No `nats-server` binary was found.
    #[error(
        "nats-server not found: set NATS_SERVER_BIN, put it on PATH, or run `./dev setup` to install it into .tools/"
    )]
    NotFound,
    /// The binary could not be started or its files written.
    #[error("could not start nats-server: {0}")]
    Io(#[from] std::io::Error),
    /// The server started but never said it was listening (it exited, or took too long).
    #[error("nats-server did not start listening (it exited, or took over {0:?}); see {1}")]
    NotListening(Duration, PathBuf),
}

/// How often JetStream flushes to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// fsync every write before acknowledging it: nothing acknowledged is lost on power loss.
    Always,
    /// fsync on an interval: faster, but a power loss loses up to one interval of
    /// acknowledged writes.
    Every(Duration),
}

/// Cluster membership of one server of a local cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The cluster's name.
    pub name: String,
    /// This server's route port on 127.0.0.1.
    pub port: u16,
    /// Every server's route port, this one's included.
    pub peers: Vec<u16>,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Where JetStream keeps its files, and where the config and log go.
    pub dir: PathBuf,
    /// The server's name (unique within a cluster).
    pub name: String,
    /// Client port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// JetStream's flush policy.
    pub sync: SyncPolicy,
    /// Routes to peers, for a cluster.
    pub cluster: Option<ClusterOptions>,
}

/// A running `nats-server` child. Killed on drop.
#[derive(Debug)]
pub struct LocalServer {
    child: Option<Child>,
    options: ServerOptions,
    url: String,
}

impl LocalServer {
    /// Finds the binary: `$NATS_SERVER_BIN`, then `.tools/venv/bin/nats-server` in the current
    /// directory or any parent (where `./dev setup` installs it), then next to the running
    /// executable's project, then `PATH`.
    pub fn find_binary() -> Result<PathBuf, ServerError> {
        if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
            return Ok(PathBuf::from(p));
        }
        let local = |start: &Path| {
            start.ancestors().map(|d| d.join(".tools/venv/bin/nats-server")).find(|p| p.is_file())
        };
        let from_cwd = std::env::current_dir().ok().and_then(|d| local(&d));
        let from_exe = std::env::current_exe().ok().and_then(|e| local(&e));
        if let Some(p) = from_cwd.or(from_exe) {
            return Ok(p);
        }
        std::env::var_os("PATH")
            .into_iter()
            .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
            .map(|d| d.join("nats-server"))
            .find(|p| p.is_file())
            .ok_or(ServerError::NotFound)
    }

    /// Starts a server and waits until it accepts clients.
    pub fn start(options: ServerOptions) -> Result<Self, ServerError> {
        let mut server = Self { child: None, url: String::new(), options };
        server.spawn()?;
        Ok(server)
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.url.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or(0)
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Asks the server to shut down (SIGTERM) and waits for it, killing it after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// How the server ended, if it has ended without being stopped (a crash, an OOM kill).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Starts the server again on the same port and store, after [`kill`](Self::kill) or
    /// [`stop`](Self::stop).
    pub fn restart(&mut self) -> Result<(), ServerError> {
        self.kill();
        self.options.port = Some(self.port());
        self.spawn()
    }

    fn spawn(&mut self) -> Result<(), ServerError> {
        let o = &self.options;
        std::fs::create_dir_all(&o.dir)?;
        reap_orphan(&o.dir.join("nats.pid"));
        let conf = o.dir.join("nats.conf");
        let log = o.dir.join("nats.log");
        // A fresh log each start, so waiting for "Listening" sees this start's line; the last
        // run's stays beside it, to say why a server that crashed did.
        let _ = std::fs::rename(&log, o.dir.join("nats.log.prev"));
        std::fs::File::create(&conf)?.write_all(render_config(o).as_bytes())?;
        let child = Command::new(Self::find_binary()?)
            .arg("-c")
            .arg(&conf)
            .arg("-l")
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: a Ctrl-C in the terminal reaches only the node, which
            // hands its shards off over this server before stopping it.
            .process_group(0)
            .spawn()?;
        let child = self.child.insert(child);
        let timeout = Duration::from_secs(20);
        let addr = wait_for_line(&log, "Listening for client connections on ", timeout, child)
            .ok_or_else(|| ServerError::NotListening(timeout, log.clone()))?;
        self.url = format!("nats://{addr}");
        Ok(())
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A node's own server, started again on the same port and store whenever it ends without
/// being stopped. Without this a node whose server crashed would stay up and unready for
/// good, its liveness check still passing; with it the node's clients reconnect and carry on
/// with everything the store had acknowledged.
#[derive(Debug)]
pub struct Supervised {
    server: Arc<Mutex<LocalServer>>,
    stopping: Arc<AtomicBool>,
    watcher: JoinHandle<()>,
}

/// How often the watcher looks at the server.
const WATCH_EVERY: Duration = Duration::from_millis(250);

/// The longest wait between two starts of a server that keeps failing, and how long it must
/// then stay up for the next failure to be started again at once.
const MOST_BACKOFF: Duration = Duration::from_secs(30);

impl Supervised {
    /// Watches `server` from a thread of its own (its start is blocking), counting in `exits`
    /// each time it ended without being stopped.
    pub fn new(server: LocalServer, exits: Counter) -> Self {
        let server = Arc::new(Mutex::new(server));
        let stopping = Arc::new(AtomicBool::new(false));
        let watcher = {
            let (server, stopping) = (server.clone(), stopping.clone());
            std::thread::Builder::new()
                .name("nats-server watcher".into())
                .spawn(move || watch(&server, &stopping, &exits))
                .expect("a thread for the nats-server watcher")
        };
        Self { server, stopping, watcher }
    }

    /// Stops watching, then stops the server as [`LocalServer::stop`] does.
    pub fn stop(self, grace: Duration) {
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.watcher.join();
        self.server.lock().unwrap_or_else(PoisonError::into_inner).stop(grace);
    }
}

fn watch(server: &Mutex<LocalServer>, stopping: &AtomicBool, exits: &Counter) {
    // Starts since the server last stayed up for `MOST_BACKOFF`: the first comes at once, the
    // next ones after 1 s, 2 s, … so a server that cannot stay up is not started in a loop.
    let mut starts: u32 = 0;
    let mut started = Instant::now();
    while pause(stopping, WATCH_EVERY) {
        let mut server = server.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(status) = server.exited() {
            exits.inc();
            let log = server.options.dir.join("nats.log.prev");
            tracing::error!(%status, log = %log.display(), "the local nats-server exited; starting it again");
        } else if server.child.is_some() {
            if started.elapsed() >= MOST_BACKOFF {
                starts = 0;
            }
            continue;
        }
        if starts > 0 {
            let delay = Duration::from_secs(1 << (starts - 1).min(5)).min(MOST_BACKOFF);
            if !pause(stopping, delay) {
                return;
            }
        }
        starts += 1;
        started = Instant::now();
        match server.restart() {
            Ok(()) => tracing::info!(url = server.url(), "the local nats-server runs again"),
            Err(e) => {
                // No child left behind: the next look finds it down and tries again.
                server.kill();
                tracing::error!(error = %e, "the local nats-server did not start again");
            }
        }
    }
}

/// Sleeps for `d` unless told to stop first; whether to go on.
fn pause(stopping: &AtomicBool, d: Duration) -> bool {
    let deadline = Instant::now() + d;
    loop {
        if stopping.load(Ordering::SeqCst) {
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        std::thread::sleep(left.min(WATCH_EVERY));
    }
}

fn render_config(o: &ServerOptions) -> String {
    let port = o.port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
    let sync = match o.sync {
        SyncPolicy::Always => "always".to_owned(),
        SyncPolicy::Every(d) => format!("\"{}ms\"", d.as_millis().max(1)),
    };
    let store = o.dir.join("jetstream");
    let mut conf = format!(
        "server_name: \"{name}\"\nlisten: \"127.0.0.1:{port}\"\npid_file: \"{pid}\"\njetstream {{\n  store_dir: \"{store}\"\n  sync_interval: {sync}\n}}\n",
        name = o.name,
        pid = o.dir.join("nats.pid").display(),
        store = store.display(),
    );
    if let Some(c) = &o.cluster {
        let routes: Vec<String> = c.peers.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
        conf.push_str(&format!(
            "cluster {{\n  name: \"{}\"\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
            c.name,
            c.port,
            routes.join(", ")
        ));
    }
    conf
}

/// Kills a server left running by a previous owner of this directory that died without
/// stopping it (kill -9), so that it does not hold the JetStream store.
fn reap_orphan(pid_file: &Path) {
    let Some(pid) = std::fs::read_to_string(pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok()) else {
        return;
    };
    let is_nats = std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|c| String::from_utf8_lossy(&c).contains("nats-server"));
    if is_nats {
        let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = std::fs::remove_file(pid_file);
}

/// Polls `path` until a line contains `marker`, and returns the rest of that line; `None` at
/// once if `child` exits first.
fn wait_for_line(path: &Path, marker: &str, timeout: Duration, child: &mut Child) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
        if let Ok(text) = std::fs::read_to_string(path)
            && let Some(rest) = text.lines().find_map(|l| l.split_once(marker).map(|(_, r)| r))
        {
            return Some(rest.trim().to_owned());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_names_sync_policy_and_routes() {
        let o = ServerOptions {
            dir: PathBuf::from("/tmp/x"),
            name: "n1".into(),
            port: None,
            sync: SyncPolicy::Always,
            cluster: Some(ClusterOptions { name: "c".into(), port: 7001, peers: vec![7001, 7002] }),
        };
        let c = render_config(&o);
        assert!(c.contains("sync_interval: always"));
        assert!(c.contains("listen: \"127.0.0.1:-1\""));
        assert!(c.contains("nats-route://127.0.0.1:7002"));
        let o = ServerOptions { sync: SyncPolicy::Every(Duration::from_secs(2)), cluster: None, ..o };
        assert!(render_config(&o).contains("sync_interval: \"2000ms\""));
    }
}

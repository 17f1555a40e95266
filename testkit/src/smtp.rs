//! A real SMTP server for tests: it speaks enough of RFC 5321 (EHLO/HELO, MAIL, RCPT, DATA,
//! RSET, NOOP, QUIT) for a real client, keeps every message it accepts, and can be told to
//! refuse messages for a while or to hold its answer to a message's end.

use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;

/// A message the server accepted.
#[derive(Debug, Clone)]
pub struct Mail {
    /// `MAIL FROM` address.
    pub from: String,
    /// `RCPT TO` addresses.
    pub to: Vec<String>,
    /// The message as sent (headers and body), dot-unstuffed.
    pub data: String,
}

#[derive(Debug, Default)]
struct Inner {
    mails: Vec<Mail>,
    failing: bool,
    hold: Option<Duration>,
    refused: usize,
}

/// The server; clones share it. Runs until the test's runtime ends.
#[derive(Debug, Clone)]
pub struct SmtpPeer {
    port: u16,
    inner: Arc<Mutex<Inner>>,
}

impl SmtpPeer {
    /// Starts listening on a free loopback port.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind smtp");
        let port = listener.local_addr().expect("addr").port();
        let peer = Self { port, inner: Arc::default() };
        let p = peer.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                let p = p.clone();
                tokio::spawn(async move {
                    let _ = p.session(socket).await;
                });
            }
        });
        peer
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every message accepted so far.
    pub fn mails(&self) -> Vec<Mail> {
        self.inner.lock().expect("lock").mails.clone()
    }

    /// While `true`, every message is refused with a temporary failure (451).
    pub fn set_failing(&self, failing: bool) {
        self.inner.lock().expect("lock").failing = failing;
    }

    /// How many messages were refused while failing.
    pub fn refused(&self) -> usize {
        self.inner.lock().expect("lock").refused
    }

    /// Keeps each accepted message, then waits `hold` before answering the client (a slow
    /// server), so a test can kill the sender mid-send.
    pub fn set_hold(&self, hold: Option<Duration>) {
        self.inner.lock().expect("lock").hold = hold;
    }

    async fn session(&self, socket: tokio::net::TcpStream) -> std::io::Result<()> {
        let (read, mut write) = socket.into_split();
        let mut lines = BufReader::new(read).lines();
        write.write_all(b"220 souk-test ESMTP\r\n").await?;
        let (mut from, mut to) = (String::new(), Vec::new());
        while let Some(line) = lines.next_line().await? {
            let upper = line.to_ascii_uppercase();
            let reply: &[u8] = if upper.starts_with("EHLO") {
                b"250-souk-test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"
            } else if upper.starts_with("HELO") || upper.starts_with("NOOP") {
                b"250 OK\r\n"
            } else if upper.starts_with("RSET") {
                (from, to) = (String::new(), Vec::new());
                b"250 OK\r\n"
            } else if upper.starts_with("MAIL FROM:") {
                from = address(&line["MAIL FROM:".len()..]);
                b"250 OK\r\n"
            } else if upper.starts_with("RCPT TO:") {
                to.push(address(&line["RCPT TO:".len()..]));
                b"250 OK\r\n"
            } else if upper.starts_with("DATA") {
                write.write_all(b"354 end with <CRLF>.<CRLF>\r\n").await?;
                let mut data = String::new();
                while let Some(l) = lines.next_line().await? {
                    if l == "." {
                        break;
                    }
                    data.push_str(l.strip_prefix('.').unwrap_or(&l));
                    data.push('\n');
                }
                let (failing, hold) = {
                    let mut inner = self.inner.lock().expect("lock");
                    if inner.failing {
                        inner.refused += 1;
                    } else {
                        inner.mails.push(Mail { from: from.clone(), to: to.clone(), data });
                    }
                    (inner.failing, inner.hold)
                };
                if let Some(h) = hold {
                    tokio::time::sleep(h).await;
                }
                if failing { b"451 4.3.0 try again later\r\n" } else { b"250 OK queued\r\n" }
            } else if upper.starts_with("QUIT") {
                write.write_all(b"221 bye\r\n").await?;
                return Ok(());
            } else {
                b"502 command not implemented\r\n"
            };
            write.write_all(reply).await?;
        }
        Ok(())
    }
}

fn address(s: &str) -> String {
    s.trim().trim_start_matches('<').split('>').next().unwrap_or("").to_owned()
}

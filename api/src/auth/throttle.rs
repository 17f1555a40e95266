//! Login throttling, shared by every node through a KV bucket: after a number of failures in
//! a row, an account (or a client address) must wait before its next attempt is checked, and
//! the wait doubles with each further failure.

use souk_nats::accounts::{Failures, hex};
use souk_nats::{JsonKv, KvError};
use std::time::Duration;
use time::OffsetDateTime;

/// Failures an account may have before it is slowed down.
pub const ACCOUNT_FREE: u32 = 5;
/// Failures one client address may have (across accounts) before it is slowed down: higher,
/// because many people can share an address.
pub const ADDRESS_FREE: u32 = 20;
/// The longest wait.
pub const MAX_WAIT: Duration = Duration::from_secs(15 * 60);

/// One throttled subject: an account or a client address.
#[derive(Debug, Clone)]
pub struct Subject {
    key: String,
    free: u32,
}

impl Subject {
    /// The account with this email key.
    pub fn account(email_key: &str) -> Self {
        Self { key: format!("acct.{email_key}"), free: ACCOUNT_FREE }
    }

    /// A client address.
    pub fn address(ip: std::net::IpAddr) -> Self {
        Self { key: format!("ip.{}", hex(ip.to_string().as_bytes())), free: ADDRESS_FREE }
    }
}

/// The wait after `count` failures in a row of a subject allowed `free` of them.
pub fn wait_after(count: u32, free: u32) -> Option<Duration> {
    let over = count.checked_sub(free)?;
    let secs = 1u64.checked_shl(over).unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs).min(MAX_WAIT))
}

/// Login throttling over the failures bucket.
#[derive(Debug, Clone)]
pub struct Throttle {
    kv: JsonKv<Failures>,
}

impl Throttle {
    /// Throttling over `kv`.
    pub fn new(kv: JsonKv<Failures>) -> Self {
        Self { kv }
    }

    /// How long the caller must still wait, if any subject is blocked.
    pub async fn wait(&self, subjects: &[Subject], now: OffsetDateTime) -> Result<Option<Duration>, KvError> {
        let mut longest: Option<Duration> = None;
        for s in subjects {
            if let Some((f, _)) = self.kv.get(&s.key).await?
                && let Some(until) = f.blocked_until.filter(|u| *u > now)
            {
                let left = Duration::try_from(until - now).unwrap_or_default().max(Duration::from_secs(1));
                longest = Some(longest.map_or(left, |l| l.max(left)));
            }
        }
        Ok(longest)
    }

    /// Counts a failure against every subject.
    pub async fn failed(&self, subjects: &[Subject], now: OffsetDateTime) -> Result<(), KvError> {
        for s in subjects {
            // Revision-checked, so failures on several nodes at once are all counted.
            for _ in 0..5 {
                let current = self.kv.get(&s.key).await?;
                let mut f = current.as_ref().map(|(f, _)| f.clone()).unwrap_or_default();
                f.count = f.count.saturating_add(1);
                f.blocked_until = wait_after(f.count, s.free).map(|w| now + w);
                let written = match current {
                    Some((_, rev)) => self.kv.update(&s.key, &f, rev).await?,
                    None => self.kv.create(&s.key, &f).await?,
                };
                if written.is_some() {
                    break;
                }
            }
        }
        Ok(())
    }

    /// Forgets a subject's failures (after a successful login).
    pub async fn succeeded(&self, subject: &Subject) -> Result<(), KvError> {
        self.kv.delete(&subject.key, None).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn back_off_starts_after_the_free_failures_doubles_and_is_capped() {
        assert_eq!(wait_after(4, 5), None);
        assert_eq!(wait_after(5, 5), Some(Duration::from_secs(1)));
        assert_eq!(wait_after(6, 5), Some(Duration::from_secs(2)));
        assert_eq!(wait_after(9, 5), Some(Duration::from_secs(16)));
        assert_eq!(wait_after(40, 5), Some(MAX_WAIT));
        assert_eq!(wait_after(u32::MAX, 5), Some(MAX_WAIT));
    }
}

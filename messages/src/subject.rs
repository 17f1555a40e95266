//! Entity kinds, shard hashing, and the typed subject builder: the only place where Souk's
//! NATS subjects are spelled.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A kind of entity, each with its own shards, command subjects and event subjects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntityKind {
    /// A stock item: the inventory of one SKU.
    Stock,
    /// A user account.
    User,
    /// A catalog product.
    Product,
    /// A shopping cart.
    Cart,
    /// An order and its checkout saga.
    Order,
    /// A notification's delivery attempts. Not sharded: no actor owns it, so it is not in
    /// [`EntityKind::ALL`] and has no shards.
    Notification,
}

impl EntityKind {
    /// Every sharded kind, in a stable order.
    pub const ALL: [Self; 5] = [Self::Stock, Self::User, Self::Product, Self::Cart, Self::Order];
    /// Every kind with a history of events, in a stable order.
    pub const WITH_HISTORY: [Self; 6] =
        [Self::Stock, Self::User, Self::Product, Self::Cart, Self::Order, Self::Notification];

    /// The kind as a subject token.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Stock => "stock",
            Self::User => "user",
            Self::Product => "product",
            Self::Cart => "cart",
            Self::Order => "order",
            Self::Notification => "notification",
        }
    }
}

impl fmt::Display for EntityKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How many shards each entity kind has. Fixed for the life of a cluster: every node must
/// agree, because it decides which shard (and so which subject) owns an entity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardCounts {
    /// Shards of stock items.
    pub stock: u32,
    /// Shards of user accounts.
    #[serde(default = "default_shards")]
    pub user: u32,
    /// Shards of products.
    #[serde(default = "default_shards")]
    pub product: u32,
    /// Shards of carts.
    #[serde(default = "default_shards")]
    pub cart: u32,
    /// Shards of orders.
    #[serde(default = "default_shards")]
    pub order: u32,
}

const fn default_shards() -> u32 {
    64
}

impl Default for ShardCounts {
    fn default() -> Self {
        Self {
            stock: default_shards(),
            user: default_shards(),
            product: default_shards(),
            cart: default_shards(),
            order: default_shards(),
        }
    }
}

impl ShardCounts {
    /// The shard count of `kind`.
    pub const fn of(&self, kind: EntityKind) -> u32 {
        match kind {
            EntityKind::Stock => self.stock,
            EntityKind::User => self.user,
            EntityKind::Product => self.product,
            EntityKind::Cart => self.cart,
            EntityKind::Order => self.order,
            EntityKind::Notification => 0,
        }
    }

    /// Every shard of every kind.
    pub fn all(&self) -> impl Iterator<Item = ShardId> + '_ {
        EntityKind::ALL
            .into_iter()
            .flat_map(move |kind| (0..self.of(kind)).map(move |index| ShardId { kind, index }))
    }
}

/// A shard of one entity kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ShardId {
    /// The entity kind.
    pub kind: EntityKind,
    /// The shard number, below the kind's shard count.
    pub index: u32,
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind, self.index)
    }
}

/// 64-bit FNV-1a: stable across processes, platforms and releases, unlike `std`'s hasher.
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A separator, so ("ab", "c") and ("a", "bc") differ.
            h ^= 0xff;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        for b in *part {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    // FNV's low bits mix poorly; a final avalanche (from splitmix64) spreads them.
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The shard that owns entity `id` of `kind` when the kind has `shards` shards.
pub fn shard_of(kind: EntityKind, id: &str, shards: u32) -> ShardId {
    let index = (stable_hash(&[id.as_bytes()]) % u64::from(shards.max(1))) as u32;
    ShardId { kind, index }
}

/// Builds every subject Souk uses. Ids are validated tokens, so formatting them is safe.
#[derive(Debug, Clone, Copy, Default)]
pub struct Subjects;

impl Subjects {
    /// Commands for one shard: `souk.cmd.<kind>.<shard>`, served by the shard's owner.
    pub fn command(self, shard: ShardId) -> String {
        format!("souk.cmd.{}.{}", shard.kind, shard.index)
    }

    /// Events of one entity: `souk.evt.<kind>.<id>`.
    pub fn entity_events(self, kind: EntityKind, id: &str) -> String {
        format!("souk.evt.{kind}.{id}")
    }

    /// Events of every entity of one kind: `souk.evt.<kind>.>`.
    pub fn kind_events(self, kind: EntityKind) -> String {
        format!("souk.evt.{kind}.>")
    }

    /// Every event: `souk.evt.>`, what a subscriber to every kind listens on (and what the legacy
    /// single `SOUK_EVENTS` stream captured).
    pub fn all_events(self) -> &'static str {
        "souk.evt.>"
    }

    /// Notifications queued for `channel`: `souk.notify.<channel>`, the `SOUK_NOTIFY` stream.
    pub fn notify(self, channel: crate::notify::Channel) -> String {
        format!("souk.notify.{channel}")
    }

    /// Every queued notification: `souk.notify.>`.
    pub fn notify_all(self) -> &'static str {
        "souk.notify.>"
    }

    /// Dead letters of `channel`: `souk.dlq.<channel>`, the `SOUK_DLQ` stream.
    pub fn dead_letters(self, channel: crate::notify::Channel) -> String {
        format!("souk.dlq.{channel}")
    }

    /// Every dead letter: `souk.dlq.>`.
    pub fn dead_letters_all(self) -> &'static str {
        "souk.dlq.>"
    }

    /// Log records of `node` at `level`: `souk.log.<node>.<level>`, the `SOUK_LOGS` stream.
    pub fn log(self, node: &str, level: crate::log::Level) -> String {
        format!("souk.log.{node}.{}", level.as_str())
    }

    /// Every log record: `souk.log.>`.
    pub fn logs_all(self) -> &'static str {
        "souk.log.>"
    }

    /// Log records of `node` at every level (of every node when `None`): `souk.log.<node>.*`.
    pub fn logs_of(self, node: Option<&str>) -> String {
        format!("souk.log.{}.*", node.unwrap_or("*"))
    }

    /// The `n`-th subject of `souk load`'s bare JetStream probe run `run`, in its scratch
    /// stream `stream`: `souk.load.<run>.<stream>.<n>`.
    pub fn load_probe(self, run: &str, stream: usize, n: usize) -> String {
        format!("souk.load.{run}.{stream}.{n}")
    }

    /// Every subject of scratch stream `stream` of the probe run `run`: `souk.load.<run>.<stream>.>`.
    pub fn load_probe_stream(self, run: &str, stream: usize) -> String {
        format!("souk.load.{run}.{stream}.>")
    }

    /// The entity id in an event subject, if `subject` is one of `kind`'s.
    pub fn entity_id_of(self, kind: EntityKind, subject: &str) -> Option<String> {
        let rest = subject.strip_prefix("souk.evt.")?;
        let id = rest.strip_prefix(kind.as_str())?.strip_prefix('.')?;
        (!id.is_empty() && !id.contains('.')).then(|| id.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_is_stable_and_in_range() {
        let a = shard_of(EntityKind::Stock, "SKU-1", 64);
        assert_eq!(a, shard_of(EntityKind::Stock, "SKU-1", 64));
        assert!(a.index < 64);
    }

    #[test]
    fn shards_spread_evenly() {
        let mut counts = [0u32; 16];
        for i in 0..16_000 {
            counts[shard_of(EntityKind::Stock, &format!("SKU-{i}"), 16).index as usize] += 1;
        }
        for c in counts {
            assert!((800..1200).contains(&c), "uneven shard spread: {counts:?}");
        }
    }

    #[test]
    fn subjects_round_trip() {
        let s = Subjects;
        let subj = s.entity_events(EntityKind::Stock, "SKU-1");
        assert_eq!(subj, "souk.evt.stock.SKU-1");
        assert_eq!(s.entity_id_of(EntityKind::Stock, &subj).as_deref(), Some("SKU-1"));
        assert_eq!(s.entity_id_of(EntityKind::Stock, "souk.evt.stockx.A"), None);
        assert_eq!(s.command(ShardId { kind: EntityKind::Stock, index: 7 }), "souk.cmd.stock.7");
    }
}

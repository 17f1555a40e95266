//! The shelf: every active product and every SKU's availability, indexed in memory so a
//! shopper's product page, catalog page or search is answered without a database query.
//! Pure data: [`super::feed`] folds events into it, handlers read it.

use rustc_hash::FxHashMap as HashMap;
use souk_messages::Sku;
use souk_messages::event::{Event, Fold};
use souk_messages::product::{ProductEvent, ProductId, ProductState, ProductStatus, ProductView};
use souk_storage::{CatalogQuery, Sort};
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

/// The most words of a search that count; the rest are ignored.
const MAX_SEARCH_WORDS: usize = 8;

/// One active product as shoppers see it.
#[derive(Debug)]
pub struct Listing {
    /// The product.
    pub view: Arc<ProductView>,
    /// When it was created, in Unix nanoseconds (the `newest` order).
    created: i128,
    price_min: i64,
    price_max: i64,
    /// `name=value` (value lower-cased) of the product's and its variants' attributes.
    attrs: BTreeSet<String>,
    /// The distinct words of its title and description (to unindex it).
    words: Vec<String>,
    /// Its dense number on this shelf, for search postings.
    slot: u32,
}

/// How often a word occurs in a product's title and in its description.
#[derive(Debug, Clone, Copy, Default)]
struct Hits {
    title: u16,
    description: u16,
}

/// A product's folded state, kept for every product (also drafts), so later events fold.
#[derive(Debug, Default)]
struct Folded {
    state: ProductState,
    created: i128,
}

/// A SKU's availability, with the stock item's version so an older event never wins.
#[derive(Debug, Clone, Copy)]
struct Level {
    version: u64,
    available: u64,
}

use souk_storage::BadCursor;

/// A page of listings.
#[derive(Debug)]
pub struct Page {
    /// The listings, in order.
    pub items: Vec<Arc<Listing>>,
    /// The cursor of the next page; absent on the last one.
    pub next: Option<String>,
}

/// The in-memory catalog.
#[derive(Debug, Default)]
pub struct Shelf {
    products: HashMap<ProductId, Folded>,
    listings: HashMap<ProductId, Arc<Listing>>,
    slugs: HashMap<String, ProductId>,
    skus: HashMap<Sku, ProductId>,
    newest: BTreeMap<(i128, ProductId), Arc<Listing>>,
    by_price: BTreeMap<(i64, ProductId), Arc<Listing>>,
    /// Word → slot → hits. Slots are small numbers, so a search tallies into a vector
    /// instead of hashing product ids.
    words: BTreeMap<String, HashMap<u32, Hits>>,
    slots: HashMap<ProductId, u32>,
    by_slot: Vec<Option<Arc<Listing>>>,
    stock: HashMap<Sku, Level>,
}

/// Lower-cased alphanumeric words of `text`, in order.
fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase)
}

impl Shelf {
    /// Folds one product's events (in order); versions already applied are skipped, so a
    /// redelivery changes nothing.
    pub fn apply_product<'a>(
        &mut self,
        id: &ProductId,
        events: impl IntoIterator<Item = &'a Event<ProductEvent>>,
    ) {
        let folded = self.products.entry(id.clone()).or_default();
        let before = folded.state.version;
        for e in events {
            if e.version <= folded.state.version {
                continue;
            }
            if folded.state.version == 0 {
                folded.created = e.time.unix_timestamp_nanos();
            }
            folded.state.apply(&e.body);
        }
        if folded.state.version == before {
            return;
        }
        let listing = match (&folded.state.data, folded.state.status, folded.state.deleted) {
            (Some(data), Some(ProductStatus::Active), false) => {
                let view = Arc::new(souk_messages::Entity::view(&folded.state, id));
                let prices = data.variants.iter().map(|v| v.price.amount);
                let mut attrs: BTreeSet<String> =
                    data.attributes.iter().map(|(k, v)| format!("{k}={}", v.to_lowercase())).collect();
                for v in &data.variants {
                    attrs.extend(v.attributes.iter().map(|(k, v)| format!("{k}={}", v.to_lowercase())));
                }
                let words: BTreeSet<String> = words(&data.title).chain(words(&data.description)).collect();
                Some(Listing {
                    created: folded.created,
                    price_min: prices.clone().min().unwrap_or(0),
                    price_max: prices.max().unwrap_or(0),
                    attrs,
                    words: words.into_iter().collect(),
                    view,
                    slot: 0,
                })
            }
            _ => None,
        };
        if folded.state.deleted {
            self.products.remove(id);
        }
        self.unlist(id);
        if let Some(listing) = listing {
            self.list(id, listing);
        }
    }

    /// Records a SKU's availability after the stock item's event `version`.
    pub fn apply_stock(&mut self, sku: Sku, version: u64, available: u64) {
        let level = self.stock.entry(sku).or_insert(Level { version: 0, available: 0 });
        if version > level.version {
            *level = Level { version, available };
        }
    }

    fn list(&mut self, id: &ProductId, mut listing: Listing) {
        let next = u32::try_from(self.by_slot.len()).unwrap_or(u32::MAX);
        let slot = *self.slots.entry(id.clone()).or_insert(next);
        if slot == next {
            self.by_slot.push(None);
        }
        listing.slot = slot;
        let listing = Arc::new(listing);
        let data = &listing.view.data;
        self.slugs.insert(data.slug.as_str().to_owned(), id.clone());
        for v in &data.variants {
            self.skus.insert(v.sku.clone(), id.clone());
        }
        self.newest.insert((listing.created, id.clone()), listing.clone());
        self.by_price.insert((listing.price_min, id.clone()), listing.clone());
        let title: Vec<String> = words(&data.title).collect();
        let description: Vec<String> = words(&data.description).collect();
        for w in &listing.words {
            let hits = Hits { title: count(&title, w), description: count(&description, w) };
            self.words.entry(w.clone()).or_default().insert(slot, hits);
        }
        self.by_slot[slot as usize] = Some(listing.clone());
        self.listings.insert(id.clone(), listing);
    }

    fn unlist(&mut self, id: &ProductId) {
        let Some(old) = self.listings.remove(id) else { return };
        if self.slugs.get(old.view.data.slug.as_str()) == Some(id) {
            self.slugs.remove(old.view.data.slug.as_str());
        }
        for v in &old.view.data.variants {
            if self.skus.get(&v.sku) == Some(id) {
                self.skus.remove(&v.sku);
            }
        }
        self.newest.remove(&(old.created, id.clone()));
        self.by_price.remove(&(old.price_min, id.clone()));
        self.by_slot[old.slot as usize] = None;
        for w in &old.words {
            if let Some(postings) = self.words.get_mut(w) {
                postings.remove(&old.slot);
                if postings.is_empty() {
                    self.words.remove(w);
                }
            }
        }
    }

    /// The active product with this id or slug.
    pub fn get(&self, id_or_slug: &str) -> Option<Arc<Listing>> {
        let id = match ProductId::parse(id_or_slug) {
            Ok(id) => id,
            Err(_) => self.slugs.get(id_or_slug)?.clone(),
        };
        self.listings.get(&id).cloned()
    }

    /// The active product offering `sku`, and the variant's index in it.
    pub fn variant(&self, sku: &Sku) -> Option<(Arc<Listing>, usize)> {
        let listing = self.listings.get(self.skus.get(sku)?)?;
        let index = listing.view.data.variants.iter().position(|v| v.sku == *sku)?;
        Some((listing.clone(), index))
    }

    /// Units available of `sku` (0 for a SKU never stocked).
    pub fn available(&self, sku: &Sku) -> u64 {
        self.stock.get(sku).map_or(0, |l| l.available)
    }

    /// Units available of each of the listing's variants.
    pub fn availability(&self, listing: &Listing) -> BTreeMap<String, u64> {
        listing.view.data.variants.iter().map(|v| (v.sku.to_string(), self.available(&v.sku))).collect()
    }

    fn matches(&self, l: &Listing, q: &CatalogQuery, attr: Option<&str>) -> bool {
        q.category.as_ref().is_none_or(|c| l.view.data.categories.contains(c))
            && q.min_price.is_none_or(|p| l.price_max >= p)
            && q.max_price.is_none_or(|p| l.price_min <= p)
            && attr.is_none_or(|a| l.attrs.contains(a))
            && (!q.in_stock || l.view.data.variants.iter().any(|v| self.available(&v.sku) > 0))
    }

    /// A page of active products. `q.all_statuses` is ignored: the shelf holds what shoppers
    /// may see. Cursors are `<key>|<id>` for keyed orders and an offset for relevance.
    pub fn page(&self, q: &CatalogQuery) -> Result<Page, BadCursor> {
        let search: Vec<String> =
            q.search.as_deref().map(|s| words(s).take(MAX_SEARCH_WORDS).collect()).unwrap_or_default();
        let sort = if search.is_empty() && q.sort == Sort::Relevance { Sort::Newest } else { q.sort };
        let attr = q.attribute.as_ref().map(|(k, v)| format!("{k}={}", v.to_lowercase()));
        let limit = q.limit as usize;
        let wanted = |l: &&Arc<Listing>| self.matches(l, q, attr.as_deref());

        let matched = (!search.is_empty()).then(|| self.search(&search));
        let hit = |l: &Listing| matched.as_ref().is_none_or(|m| m[l.slot as usize].0 == search.len());
        if sort == Sort::Relevance {
            let offset: usize = souk_storage::cursor::offset(q.after.as_deref())?;
            let tally = matched.as_deref().unwrap_or_default();
            let mut found: Vec<(bool, u32, &Arc<Listing>)> = tally
                .iter()
                .zip(&self.by_slot)
                .filter(|((words, _, _), _)| *words == search.len())
                .filter_map(|((_, in_title, score), l)| Some((*in_title, *score, l.as_ref()?)))
                .filter(|(_, _, l)| wanted(l))
                .collect();
            found.sort_unstable_by(|a, b| {
                b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then_with(|| a.2.view.id.cmp(&b.2.view.id))
            });
            let items: Vec<Arc<Listing>> =
                found.iter().skip(offset).take(limit + 1).map(|(_, _, l)| Arc::clone(l)).collect();
            return Ok(finish(items, limit, |_| (offset + limit).to_string()));
        }

        let cursor = match souk_storage::cursor::keyed::<i128>(q.after.as_deref())? {
            Some((key, pid)) => Some((key, ProductId::parse(&pid).map_err(|_| BadCursor)?)),
            None => None,
        };
        // Walk the order's index from the cursor; a search only narrows which products qualify.
        let walk: Box<dyn Iterator<Item = &Arc<Listing>>> = match (sort, cursor) {
            (Sort::PriceAsc, c) => {
                let from = c.map_or(Bound::Unbounded, |(p, id)| Bound::Excluded((price(p), id)));
                Box::new(self.by_price.range((from, Bound::Unbounded)).map(|(_, l)| l))
            }
            (Sort::PriceDesc, c) => {
                let to = c.map_or(Bound::Unbounded, |(p, id)| Bound::Excluded((price(p), id)));
                Box::new(self.by_price.range((Bound::Unbounded, to)).rev().map(|(_, l)| l))
            }
            (_, c) => {
                let to = c.map_or(Bound::Unbounded, Bound::Excluded);
                Box::new(self.newest.range((Bound::Unbounded, to)).rev().map(|(_, l)| l))
            }
        };
        let items: Vec<Arc<Listing>> =
            walk.filter(|l| hit(l)).filter(wanted).take(limit + 1).cloned().collect();
        Ok(finish(items, limit, |l| match sort {
            Sort::Newest => format!("{}|{}", l.created, l.view.id.as_str()),
            _ => format!("{}|{}", l.price_min, l.view.id.as_str()),
        }))
    }

    /// Tallies, by slot, how many words of `search` each product matches (a word matches the
    /// words it is a prefix of, in the title or the description), whether every one matched in
    /// the title, and a score that counts title hits three times.
    fn search(&self, search: &[String]) -> Vec<(usize, bool, u32)> {
        let mut tally = vec![(0, true, 0); self.by_slot.len()];
        for (n, word) in search.iter().enumerate() {
            let keys = self.words.range::<str, _>((Bound::Included(word.as_str()), Bound::Unbounded));
            let mut seen_title: Vec<u32> = Vec::new();
            for (_, postings) in keys.take_while(|(k, _)| k.starts_with(word.as_str())) {
                for (slot, h) in postings {
                    let t = &mut tally[*slot as usize];
                    // Only products that matched every earlier word stay in the running.
                    if t.0 < n {
                        continue;
                    }
                    t.0 = n + 1;
                    t.2 += 3 * u32::from(h.title) + u32::from(h.description);
                    if h.title > 0 {
                        seen_title.push(*slot);
                    }
                }
            }
            // A word found only in descriptions takes the product out of the title matches.
            let mut in_title = vec![false; tally.len()];
            for s in seen_title {
                in_title[s as usize] = true;
            }
            for (t, title) in tally.iter_mut().zip(in_title) {
                t.1 &= title;
            }
        }
        tally
    }

    /// How many products are listed.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.listings.len()
    }

    /// Whether nothing is listed.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.listings.is_empty()
    }
}

/// A price cursor key back in `i64`; an out-of-range key sorts at the end it falls off.
fn price(k: i128) -> i64 {
    i64::try_from(k).unwrap_or(if k < 0 { i64::MIN } else { i64::MAX })
}

fn count(words: &[String], w: &str) -> u16 {
    u16::try_from(words.iter().filter(|x| *x == w).count()).unwrap_or(u16::MAX)
}

/// Cuts `items` (fetched with one extra) to `limit`, with a cursor when there is more.
fn finish(mut items: Vec<Arc<Listing>>, limit: usize, cursor: impl Fn(&Listing) -> String) -> Page {
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(|l| cursor(l)) } else { None };
    Page { items, next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use souk_messages::product::{Currency, Money, ProductData, Slug, Variant};

    fn product(
        n: usize,
        title: &str,
        description: &str,
        price: i64,
        category: &str,
        size: &str,
    ) -> ProductData {
        ProductData {
            title: title.into(),
            slug: Slug::parse(&format!("p-{n}")).expect("slug"),
            description: description.into(),
            categories: BTreeSet::from([category.to_owned()]),
            attributes: BTreeMap::new(),
            images: Vec::new(),
            variants: vec![Variant {
                sku: Sku::parse(format!("SKU-{n}")).expect("sku"),
                price: Money::new(price, Currency::parse("EUR").expect("eur")).expect("money"),
                attributes: BTreeMap::from([("size".to_owned(), size.to_owned())]),
            }],
        }
    }

    fn event(version: u64, at: i64, body: ProductEvent) -> Event<ProductEvent> {
        Event {
            event_id: uuid::Uuid::now_v7(),
            id: String::new(),
            version,
            time: time::OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(at),
            correlation_id: None,
            actor: None,
            body,
        }
    }

    fn titles(page: &Page) -> Vec<&str> {
        page.items.iter().map(|l| l.view.data.title.as_str()).collect()
    }

    fn query(f: impl FnOnce(&mut CatalogQuery)) -> CatalogQuery {
        let mut q = CatalogQuery { limit: 10, ..CatalogQuery::default() };
        f(&mut q);
        q
    }

    /// Four products (one a draft), created one second apart.
    fn shelf() -> (Shelf, Vec<ProductId>) {
        let rows = [
            ("Linen shirt", "A light shirt for summer", 3000, "shirts", "M", ProductStatus::Active),
            ("Wool scarf", "Goes with any shirt", 2000, "scarves", "S", ProductStatus::Active),
            ("Denim jacket", "Sturdy", 9000, "jackets", "L", ProductStatus::Active),
            ("Secret shirt", "Not yet", 100, "shirts", "M", ProductStatus::Draft),
        ];
        let mut shelf = Shelf::default();
        let mut ids = Vec::new();
        for (i, (t, d, p, c, s, status)) in rows.into_iter().enumerate() {
            let id = ProductId::generate();
            let created =
                event(1, i as i64, ProductEvent::Created { product: product(i, t, d, p, c, s), status });
            shelf.apply_product(&id, [&created]);
            shelf.apply_product(&id, [&created]);
            ids.push(id);
        }
        (shelf, ids)
    }

    #[test]
    fn filters_sorts_and_searches_active_products_with_title_matches_first() {
        let (mut shelf, _) = shelf();
        let page = |shelf: &Shelf, q: CatalogQuery| shelf.page(&q).expect("page");
        assert_eq!(shelf.len(), 3, "drafts are not listed; a replay adds nothing");
        assert_eq!(titles(&page(&shelf, query(|_| {}))), ["Denim jacket", "Wool scarf", "Linen shirt"]);
        let cheap = page(&shelf, query(|q| q.sort = Sort::PriceAsc));
        assert_eq!(titles(&cheap), ["Wool scarf", "Linen shirt", "Denim jacket"]);
        let dear = page(&shelf, query(|q| q.sort = Sort::PriceDesc));
        assert_eq!(titles(&dear), ["Denim jacket", "Linen shirt", "Wool scarf"]);
        assert_eq!(titles(&page(&shelf, query(|q| q.category = Some("shirts".into())))), ["Linen shirt"]);
        let mid = page(
            &shelf,
            query(|q| {
                q.min_price = Some(2500);
                q.max_price = Some(5000);
            }),
        );
        assert_eq!(titles(&mid), ["Linen shirt"]);
        let large = page(&shelf, query(|q| q.attribute = Some(("size".into(), "l".into()))));
        assert_eq!(titles(&large), ["Denim jacket"]);

        let found = page(
            &shelf,
            query(|q| {
                q.search = Some("Shirt".into());
                q.sort = Sort::Relevance;
            }),
        );
        assert_eq!(titles(&found), ["Linen shirt", "Wool scarf"], "title matches first");
        assert_eq!(titles(&page(&shelf, query(|q| q.search = Some("jack".into())))), ["Denim jacket"]);
        assert_eq!(titles(&page(&shelf, query(|q| q.search = Some("light summer".into())))), ["Linen shirt"]);
        assert!(page(&shelf, query(|q| q.search = Some("light winter".into()))).items.is_empty());

        assert!(page(&shelf, query(|q| q.in_stock = true)).items.is_empty());
        shelf.apply_stock(Sku::parse("SKU-1").expect("sku"), 2, 5);
        shelf.apply_stock(Sku::parse("SKU-1").expect("sku"), 1, 0);
        assert_eq!(titles(&page(&shelf, query(|q| q.in_stock = true))), ["Wool scarf"], "older levels lose");
    }

    #[test]
    fn pages_walk_every_order_once_and_bad_cursors_are_refused() {
        let (shelf, _) = shelf();
        for (sort, search) in [
            (Sort::Newest, None),
            (Sort::PriceAsc, None),
            (Sort::PriceDesc, None),
            (Sort::PriceAsc, Some("shirt")),
            (Sort::Newest, Some("s")),
            (Sort::Relevance, Some("shirt jacket scarf")),
            (Sort::Relevance, Some("s")),
        ] {
            let all = shelf.page(&query(|q| {
                q.sort = sort;
                q.search = search.map(str::to_owned);
            }));
            let all = titles(&all.expect("page")).into_iter().map(str::to_owned).collect::<Vec<_>>();
            let mut seen = Vec::new();
            let mut after = None;
            loop {
                let page = shelf
                    .page(&query(|q| {
                        q.limit = 1;
                        q.sort = sort;
                        q.search = search.map(str::to_owned);
                        q.after.clone_from(&after);
                    }))
                    .expect("page");
                seen.extend(titles(&page).into_iter().map(str::to_owned));
                match page.next {
                    Some(n) => after = Some(n),
                    None => break,
                }
            }
            assert_eq!(seen, all, "{sort:?} {search:?}");
        }
        assert!(shelf.page(&query(|q| q.after = Some("nonsense".into()))).is_err());
        assert!(shelf.page(&query(|q| q.after = Some("1|prd-x".into()))).is_err());
    }

    #[test]
    fn archiving_and_deleting_unlist_and_a_changed_slug_moves() {
        let (mut shelf, ids) = shelf();
        assert!(shelf.get("p-0").is_some());
        shelf.apply_product(&ids[0], [&event(2, 9, ProductEvent::Archived {})]);
        assert!(shelf.get("p-0").is_none() && shelf.get(ids[0].as_str()).is_none());
        assert!(shelf.page(&query(|q| q.search = Some("linen".into()))).expect("page").items.is_empty());
        shelf
            .apply_product(&ids[0], [&event(3, 9, ProductEvent::Restored { status: ProductStatus::Active })]);
        assert_eq!(shelf.get("p-0").expect("restored").view.version, 3);

        let mut renamed = product(0, "Linen tunic", "", 3000, "shirts", "M");
        renamed.slug = Slug::parse("tunic").expect("slug");
        let update = ProductEvent::Updated {
            product: renamed,
            status: ProductStatus::Active,
            added_skus: Vec::new(),
            removed_skus: Vec::new(),
        };
        shelf.apply_product(&ids[0], [&event(4, 9, update)]);
        assert!(shelf.get("p-0").is_none());
        assert_eq!(shelf.get("tunic").expect("moved").view.data.title, "Linen tunic");
        let sku = Sku::parse("SKU-0").expect("sku");
        assert_eq!(shelf.variant(&sku).expect("variant").0.view.data.title, "Linen tunic");
        assert!(shelf.variant(&Sku::parse("SKU-3").expect("sku")).is_none(), "drafts sell nothing");
        assert_eq!(shelf.page(&query(|q| q.search = Some("tunic".into()))).expect("page").items.len(), 1);
        assert!(shelf.page(&query(|q| q.search = Some("summer".into()))).expect("page").items.is_empty());

        shelf.apply_product(&ids[3], [&event(2, 9, ProductEvent::Deleted { skus: Vec::new() })]);
        assert_eq!(shelf.len(), 3);
        assert!(!shelf.is_empty());
    }
}

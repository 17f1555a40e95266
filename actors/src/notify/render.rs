//! Renders notifications from the templates in `actors/templates/` (minijinja): text and HTML
//! for email, text for SMS. An email template sets `subject`; HTML is escaped automatically.

use minijinja::{AutoEscape, Environment, Value};
use serde::Serialize;
use souk_messages::notify::{Channel, Topic};
use souk_messages::order::{Address, CancelReason, OrderId, OrderLine, OrderStatus, OrderView};
use souk_messages::product::{Currency, Money, ProductId};
use souk_messages::stock::Levels;
use souk_messages::user::Locale;
use souk_messages::{Sku, UserId};
use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// The shop, as its messages name it.
#[derive(Debug, Clone, Serialize)]
pub struct Shop {
    /// The shop's name.
    pub name: String,
    /// Its storefront's address, without a trailing slash.
    pub url: String,
    /// The language of its default templates.
    pub locale: Locale,
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// The email subject (email only).
    pub subject: Option<String>,
    /// The text body.
    pub text: String,
    /// The HTML body (email only).
    pub html: Option<String>,
}

/// Why the templates could not be loaded or a message rendered.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A defect in a template.
    #[error("template {name}: {source}")]
    Template {
        /// The template.
        name: String,
        /// What is wrong.
        #[source]
        source: minijinja::Error,
    },
    /// The shop's templates folder could not be read.
    #[error("templates folder {path}: {source}")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file in the shop's templates folder that replaces no template: misnamed or misplaced.
    #[error(
        "{path} replaces no template; the names are those under actors/templates/ (e.g. email/order_confirmed.html), optionally under a language folder (fr/email/order_confirmed.html)"
    )]
    Unknown {
        /// The file.
        path: PathBuf,
    },
}

fn template_error(name: &str) -> impl FnOnce(minijinja::Error) -> RenderError + '_ {
    move |source| RenderError::Template { name: name.to_owned(), source }
}

macro_rules! templates {
    ($($name:literal),* $(,)?) => {
        [$(($name, include_str!(concat!("../../templates/", $name)))),*]
    };
}

/// Every template, compiled into the binary so a node never runs without them.
const TEMPLATES: &[(&str, &str)] = &templates![
    "email/layout.html",
    "email/lines.html",
    "email/lines.txt",
    "email/order_confirmed.txt",
    "email/order_confirmed.html",
    "email/order_shipped.txt",
    "email/order_shipped.html",
    "email/order_delivered.txt",
    "email/order_delivered.html",
    "email/order_cancelled.txt",
    "email/order_cancelled.html",
    "email/order_cancel_refused.txt",
    "email/order_cancel_refused.html",
    "email/order_refunded.txt",
    "email/order_refunded.html",
    "email/payment_failed.txt",
    "email/payment_failed.html",
    "email/password_reset.txt",
    "email/password_reset.html",
    "email/stock_low.txt",
    "email/stock_low.html",
    "email/order_disputed.txt",
    "email/order_disputed.html",
    "sms/order_confirmed.txt",
    "sms/order_shipped.txt",
    "sms/order_delivered.txt",
    "sms/order_cancelled.txt",
    "sms/order_cancel_refused.txt",
    "sms/order_refunded.txt",
    "sms/payment_failed.txt",
];

/// The template set and the shop. Cheap to share.
#[derive(Debug)]
pub struct Renderer {
    env: Environment<'static>,
    shop: Shop,
}

/// `name` as a template of the language folder `tag`: `fr/email/order_confirmed.html`.
fn in_language(tag: &str, name: &str) -> String {
    format!("{tag}/{name}")
}

impl Renderer {
    /// Compiles the templates, each replaced by the file of the same name under `overrides`
    /// where the shop has one (`email/order_confirmed.html`, `sms/order_shipped.txt`, …): its
    /// own words, language and look. Under a folder named by a language tag
    /// (`fr/email/order_confirmed.html`, `pt-BR/sms/order_shipped.txt`) are the same
    /// templates in that language, for the people who chose it. A file there that replaces
    /// no template is refused, so a misnamed one cannot be silently ignored; hidden files (a
    /// Kubernetes volume's `..data`) are skipped.
    pub fn new(shop: Shop, overrides: Option<&Path>) -> Result<Self, RenderError> {
        let mut env = Environment::new();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".html") { AutoEscape::Html } else { AutoEscape::None }
        });
        env.set_keep_trailing_newline(true);
        let replaced = overrides.map(shop_templates).transpose()?.unwrap_or_default();
        let names: HashSet<String> = replaced.iter().map(|(n, _)| n.clone()).collect();
        // The default templates, then each language folder the shop has.
        let mut folders: Vec<Option<Locale>> = vec![None];
        for name in &names {
            let tag = split_language(name).0.trim_end_matches('/');
            if let Some(locale) = Locale::parse(tag).ok().filter(|l| !folders.contains(&Some(l.clone()))) {
                folders.push(Some(locale));
            }
        }
        for (name, _) in &replaced {
            // An email's subject and text come from its `.txt`, its HTML part from its `.html`:
            // a shop that replaces one and not the other mixes words.
            let (language, template) = split_language(name);
            let Some(email) = template.strip_prefix("email/") else { continue };
            let other = match email.rsplit_once('.') {
                // Parts other templates include, not emails.
                Some(("layout" | "lines", _)) => continue,
                Some((topic, "txt")) => format!("email/{topic}.html"),
                Some((topic, "html")) => format!("email/{topic}.txt"),
                _ => continue,
            };
            let theirs = format!("{language}{other}");
            if TEMPLATES.iter().any(|(n, _)| *n == other) && !names.contains(&theirs) {
                tracing::warn!(template = %theirs, "{name} is the shop's own but {theirs} is not: those emails mix its words with the default templates'");
            }
        }
        // A template in a language folder extends and includes that language's layout and
        // parts where the shop has them (`email/layout.html` from `fr/email/…` is
        // `fr/email/layout.html`), the default ones otherwise.
        let languages = names;
        env.set_path_join_callback(move |name, parent| {
            let tag = parent.split_once('/').map(|(tag, _)| tag).and_then(|t| Locale::parse(t).ok());
            tag.iter()
                .flat_map(|t| t.fallbacks().map(|tag| in_language(tag, name)).collect::<Vec<_>>())
                .find(|candidate| languages.contains(candidate))
                .map_or(Cow::Borrowed(name), Cow::Owned)
        });
        for (name, source) in TEMPLATES {
            env.add_template(name, source).map_err(template_error(name))?;
        }
        for (name, source) in replaced {
            let compiled = env.add_template_owned(name.clone(), source);
            compiled.map_err(template_error(&name))?;
        }
        let renderer = Self { env, shop };
        renderer.check(&folders)?;
        Ok(renderer)
    }

    /// Renders every message in each of `languages` with a sample of everything the planner
    /// gives templates, so a template that cannot render (an unknown filter, a field misspelt
    /// and read through) stops the node at start-up, as a syntax error does, rather than
    /// holding back every message of its topic once the node runs.
    fn check(&self, languages: &[Option<Locale>]) -> Result<(), RenderError> {
        let order = sample_order();
        let levels = Levels { on_hand: 5, reserved: 3, low_stock: 3, ..Levels::default() };
        for locale in languages {
            let language = locale.as_ref().unwrap_or(&self.shop.locale);
            let reset_url = format!("{}/reset-password?token=sample", self.shop.url);
            let ctx = minijinja::context! {
                ..minijinja::context! { customer => customer_context("Ada Lovelace") },
                ..order_message(&order, Some(500), order.tracking.as_deref(), language),
                ..reset_message(&reset_url, "2026-01-01T00:00:00Z", 30),
                ..stock_message("SAMPLE-1", &levels),
                ..dispute_message(&order, language),
            };
            for topic in Topic::ALL {
                for channel in [Channel::Email, Channel::Sms] {
                    self.render(topic, channel, locale.as_ref(), &ctx).map_err(|e| match (e, locale) {
                        (RenderError::Template { name, source }, Some(l)) => {
                            RenderError::Template { name: format!("{name} (for {l})"), source }
                        }
                        (e, _) => e,
                    })?;
                }
            }
        }
        Ok(())
    }

    /// Whether `topic` has a message for `channel`.
    pub fn has(&self, topic: Topic, channel: Channel) -> bool {
        self.env.get_template(&format!("{channel}/{}.txt", topic.as_str())).is_ok()
    }

    /// The template `name` in the most specific of `locale`'s languages the shop has it in,
    /// with that language's tag, or the default one.
    fn find(
        &self,
        name: &str,
        locale: Option<&Locale>,
    ) -> Option<(minijinja::Template<'_, '_>, Option<String>)> {
        let localised = locale.into_iter().flat_map(Locale::fallbacks).find_map(|tag| {
            self.env.get_template(&in_language(tag, name)).ok().map(|t| (t, Some(tag.to_owned())))
        });
        localised.or_else(|| self.env.get_template(name).ok().map(|t| (t, None)))
    }

    /// The language `topic`'s message on `channel` is written in for a reader of `locale`:
    /// that of the most specific language folder with its text, else the shop's.
    pub fn language(&self, topic: Topic, channel: Channel, locale: Option<&Locale>) -> Locale {
        let name = format!("{channel}/{}.txt", topic.as_str());
        match self.find(&name, locale) {
            Some((_, Some(tag))) => Locale::parse(&tag).unwrap_or_else(|_| self.shop.locale.clone()),
            _ => self.shop.locale.clone(),
        }
    }

    /// Renders `topic` for `channel` with `context` (plus `shop`, and `locale`: the language
    /// tag of the templates used, the shop's for the default ones), in `locale` where the shop
    /// has templates in it, or `None` if the topic has no message on that channel.
    pub fn render(
        &self,
        topic: Topic,
        channel: Channel,
        locale: Option<&Locale>,
        context: &Value,
    ) -> Result<Option<Rendered>, RenderError> {
        let ctx = minijinja::context! { shop => self.shop.clone(), ..context.clone() };
        let name = format!("{channel}/{}.txt", topic.as_str());
        let Some((text, language)) = self.find(&name, locale) else { return Ok(None) };
        let captured = text
            .render_captured(minijinja::context! { locale => language.unwrap_or_else(|| self.shop.locale.to_string()), ..ctx.clone() })
            .map_err(template_error(&name))?;
        let subject = captured.state().lookup("subject").map(|s| s.to_string());
        let text = captured.output().to_owned();
        let html_name = format!("{channel}/{}.html", topic.as_str());
        let html = match self.find(&html_name, locale) {
            Some((t, language)) => Some(
                t.render(minijinja::context! {
                    subject => subject.clone(),
                    locale => language.unwrap_or_else(|| self.shop.locale.to_string()),
                    ..ctx.clone()
                })
                .map_err(template_error(&html_name))?,
            ),
            None => None,
        };
        let text = if channel == Channel::Sms { text.trim().to_owned() } else { text };
        Ok(Some(Rendered { subject, text, html }))
    }
}

/// A template name as its language folder's prefix (`fr/`, or empty for the default ones)
/// and the template it replaces.
fn split_language(name: &str) -> (&str, &str) {
    match name.split_once('/') {
        Some((tag, rest)) if Locale::parse(tag).is_ok() && TEMPLATES.iter().any(|(n, _)| *n == rest) => {
            name.split_at(tag.len() + 1)
        }
        _ => ("", name),
    }
}

/// The files under `dir` as (template name, source), every one of them naming a template.
fn shop_templates(dir: &Path) -> Result<Vec<(String, String)>, RenderError> {
    let read = |path: &Path| {
        let path = path.to_owned();
        move |source| RenderError::Read { path, source }
    };
    let mut found = Vec::new();
    let mut folders = vec![dir.to_owned()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).map_err(read(&folder))? {
            let path = entry.map_err(read(&folder))?.path();
            if path.file_name().and_then(|n| n.to_str()).is_none_or(|n| n.starts_with('.')) {
                continue;
            }
            // Followed through symbolic links, as a mounted ConfigMap's files are.
            if std::fs::metadata(&path).map_err(read(&path))?.is_dir() {
                folders.push(path);
                continue;
            }
            let name = path
                .strip_prefix(dir)
                .ok()
                .and_then(Path::to_str)
                .map(|n| n.replace(std::path::MAIN_SEPARATOR, "/"))
                .and_then(|n| template_name(&n))
                .ok_or_else(|| RenderError::Unknown { path: path.clone() })?;
            found.push((name, std::fs::read_to_string(&path).map_err(read(&path))?));
        }
    }
    Ok(found)
}

/// The template a file at `relative` in the shop's folder replaces: a built-in name, or one
/// under a language folder, its tag in the usual case (`fr-ca/…` is `fr-CA/…`).
fn template_name(relative: &str) -> Option<String> {
    let known = |n: &str| TEMPLATES.iter().any(|(known, _)| *known == n);
    if known(relative) {
        return Some(relative.to_owned());
    }
    let (tag, rest) = relative.split_once('/')?;
    let locale = Locale::parse(tag).ok()?;
    known(rest).then(|| in_language(locale.as_str(), rest))
}

/// Where a language puts a currency's symbol.
#[derive(Clone, Copy)]
enum Symbol {
    /// `€1,234.50`
    Before,
    /// `€ 1.234,50`
    BeforeSpaced,
    /// `1 234,50 €`
    After,
}

/// How a language writes amounts: thousands separator, decimal mark, symbol position. Close
/// to CLDR's for the languages named, English's for the rest.
fn number_style(locale: Option<&Locale>) -> (&'static str, char, Symbol) {
    let language = locale.and_then(|l| l.fallbacks().last()).unwrap_or("en");
    match language {
        "fr" | "sv" | "nb" | "nn" | "no" | "fi" | "pl" | "cs" | "sk" | "ru" | "uk" | "hu" | "bg" | "lt"
        | "lv" | "et" => ("\u{202f}", ',', Symbol::After),
        "de" | "es" | "it" | "pt" | "da" | "el" | "ro" | "hr" | "sl" | "sr" | "id" => {
            (".", ',', Symbol::After)
        }
        "nl" => (".", ',', Symbol::BeforeSpaced),
        "tr" => (".", ',', Symbol::Before),
        _ => (",", '.', Symbol::Before),
    }
}

/// `amount` minor units of `currency` the way a reader of `locale` (English if none) writes
/// it: `€1,234.50`, `¥1,200`, `1,234.50 SEK`; in French `1 234,50 €`, in German `1.234,50 €`.
pub fn money(amount: i64, currency: Currency, locale: Option<&Locale>) -> String {
    let code = currency.as_str();
    let exponent = match code {
        "JPY" | "KRW" | "VND" | "CLP" | "ISK" | "UGX" | "XAF" | "XOF" | "PYG" => 0,
        "BHD" | "KWD" | "OMR" | "JOD" | "TND" | "IQD" | "LYD" => 3,
        _ => 2,
    };
    let (group, decimal, position) = number_style(locale);
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    let unit = 10u64.pow(exponent);
    let whole = group_thousands(abs / unit, group);
    let number = if exponent == 0 {
        whole
    } else {
        format!("{whole}{decimal}{:0width$}", abs % unit, width = exponent as usize)
    };
    let symbol = match code {
        "EUR" => "€",
        "USD" => "$",
        "GBP" => "£",
        "JPY" => "¥",
        _ => return format!("{sign}{number} {code}"),
    };
    match position {
        Symbol::Before => format!("{sign}{symbol}{number}"),
        Symbol::BeforeSpaced => format!("{symbol}\u{a0}{sign}{number}"),
        Symbol::After => format!("{sign}{number}\u{a0}{symbol}"),
    }
}

fn group_thousands(n: u64, separator: &str) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 * separator.len());
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push_str(separator);
        }
        out.push(c);
    }
    out
}

/// Why an order was cancelled, in words for its customer.
pub fn cancel_reason(reason: CancelReason) -> &'static str {
    match reason {
        CancelReason::OutOfStock => "an item ran out of stock",
        CancelReason::PaymentDeclined => "the card was declined",
        CancelReason::InsufficientFunds => "the card has insufficient funds",
        CancelReason::PaymentFailed => "the payment could not be completed",
        CancelReason::ReservationLapsed => "the items held for it were released before payment",
        CancelReason::CustomerRequest => "you asked us to cancel it",
        CancelReason::StaffRequest => "we had to cancel it",
    }
}

/// An order with every field a message can show, for [`Renderer::check`].
fn sample_order() -> OrderView {
    let currency = Currency::parse("EUR").unwrap_or(Currency::NONE);
    let line = |sku: &str, title: &str, quantity, amount| {
        Sku::parse(sku).ok().map(|sku| OrderLine {
            sku,
            product: ProductId::generate(),
            title: title.into(),
            quantity,
            unit_price: Money { amount, currency },
        })
    };
    OrderView {
        id: OrderId::generate(),
        customer: UserId::generate(),
        status: OrderStatus::Cancelled,
        lines: [line("SAMPLE-1", "Brass lamp", 2, 2500), line("SAMPLE-2", "Linen shade", 1, 1250)]
            .into_iter()
            .flatten()
            .collect(),
        total: 6250,
        currency,
        shipping_address: Address {
            name: "Ada Lovelace".into(),
            line1: "12 St James's Square".into(),
            line2: Some("Flat 2".into()),
            city: "London".into(),
            postal_code: "SW1Y 4JH".into(),
            country: "GB".into(),
        },
        payment_authorized: true,
        payment_method: None,
        payment: None,
        cancel_reason: Some(CancelReason::CustomerRequest),
        cancel_requested: None,
        cancel_without_refund: false,
        tracking: Some("1Z999AA10123456784".into()),
        refunded: 500,
        refund_pending: None,
        refunds: 1,
        refunds_refused: 0,
        cancels_refused: 0,
        payment_unsettled: false,
        dispute: None,
        placed_at: None,
        updated_at: None,
        timeline: Vec::new(),
        version: 1,
    }
}

/// The customer as templates see them.
pub fn customer_context(name: &str) -> Value {
    minijinja::context! { name => name }
}

/// What an order message's templates see besides `customer`: the order, with the amount of the
/// refund a refund message is about and the tracking number a shipping message gives.
pub fn order_message(
    order: &OrderView,
    refund: Option<i64>,
    tracking: Option<&str>,
    language: &Locale,
) -> Value {
    let mut octx = order_context(order, Some(language));
    if let Some(amount) = refund {
        octx = minijinja::context! { refund => money(amount, order.currency, Some(language)), ..octx };
    }
    if let Some(tracking) = tracking {
        octx = minijinja::context! { tracking => tracking, ..octx };
    }
    minijinja::context! { order => octx }
}

/// What a dispute's templates see: the order, and the dispute with its amount formatted for
/// a reader of `language` and its deadline (RFC 3339, absent when the provider gave none).
pub fn dispute_message(order: &OrderView, language: &Locale) -> Value {
    let d = order.dispute.as_ref();
    let due_by =
        d.and_then(|d| d.due_by).and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
    minijinja::context! {
        order => order_context(order, Some(language)),
        dispute => minijinja::context! {
            id => d.map(|d| d.id.clone()),
            amount => money(d.map_or(order.total, |d| d.amount), order.currency, Some(language)),
            reason => d.map(|d| d.reason.clone()),
            due_by => due_by,
        },
    }
}

/// What a password reset's templates see: the link, when it stops working (RFC 3339) and how
/// many minutes it works for.
pub fn reset_message(reset_url: &str, expires_at: &str, valid_minutes: i64) -> Value {
    minijinja::context! { reset_url => reset_url, expires_at => expires_at, valid_minutes => valid_minutes }
}

/// What a low-stock message's templates see.
pub fn stock_message(sku: &str, levels: &Levels) -> Value {
    minijinja::context! { stock => minijinja::context! {
        sku => sku,
        available => levels.available(),
        on_hand => levels.on_hand,
        reserved => levels.reserved,
        threshold => levels.low_stock,
    }}
}

/// The order as templates see it: money already formatted for a reader of `locale`.
fn order_context(order: &OrderView, locale: Option<&Locale>) -> Value {
    let lines: Vec<Value> = order
        .lines
        .iter()
        .map(|l| {
            minijinja::context! {
                sku => l.sku.as_str(),
                title => l.title.clone(),
                quantity => l.quantity,
                unit_price => money(l.unit_price.amount, l.unit_price.currency, locale),
                total => money(l.unit_price.amount.saturating_mul(i64::from(l.quantity)), l.unit_price.currency, locale),
            }
        })
        .collect();
    let a = &order.shipping_address;
    let address = [
        Some(&a.name),
        Some(&a.line1),
        a.line2.as_ref(),
        Some(&a.city),
        Some(&a.postal_code),
        Some(&a.country),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .map(String::as_str)
    .collect::<Vec<_>>()
    .join(", ");
    let reason = order.cancel_reason.map(cancel_reason);
    let refunded = (order.refunded > 0).then(|| money(order.refunded, order.currency, locale));
    minijinja::context! {
        id => order.id.as_str(),
        number => order.id.as_str(),
        lines => lines,
        total => money(order.total, order.currency, locale),
        address => address,
        tracking => order.tracking.clone(),
        reason => reason,
        reason_code => order.cancel_reason,
        refunded => refunded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_reads_as_shoppers_expect() {
        let c = |s| Currency::parse(s).expect("currency");
        assert_eq!(money(123_450, c("EUR"), None), "€1,234.50");
        assert_eq!(money(5, c("USD"), None), "$0.05");
        assert_eq!(money(1200, c("JPY"), None), "¥1,200");
        assert_eq!(money(1_234_567, c("KWD"), None), "1,234.567 KWD");
        assert_eq!(money(99, c("SEK"), None), "0.99 SEK");
        let tag = |t: &str| Locale::parse(t).expect("tag");
        assert_eq!(money(123_450, c("EUR"), Some(&tag("fr-CA"))), "1\u{202f}234,50\u{a0}€");
        assert_eq!(money(-123_450, c("EUR"), Some(&tag("de"))), "-1.234,50\u{a0}€");
        assert_eq!(money(123_450, c("EUR"), Some(&tag("nl"))), "€\u{a0}1.234,50");
        assert_eq!(money(1_234_567, c("SEK"), Some(&tag("sv"))), "12\u{202f}345,67 SEK");
        assert_eq!(money(123_450, c("EUR"), Some(&tag("en-GB"))), "€1,234.50");
        assert_eq!(money(123_450, c("EUR"), Some(&tag("ja"))), "€1,234.50", "English's where not known");
    }

    /// A shop named `name` whose default templates are in `locale`.
    fn shop_in(name: &str, locale: &str) -> Shop {
        let url = format!("https://{}.test", name.to_lowercase());
        Shop { name: name.into(), url, locale: Locale::parse(locale).expect("tag") }
    }

    fn write_template(dir: &Path, name: &str, text: &str) {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        std::fs::write(path, text).expect("write");
    }

    #[test]
    fn a_shop_s_templates_replace_the_built_in_ones_and_misnamed_or_broken_ones_are_refused() {
        let shop = || shop_in("Laden", "de");
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| write_template(dir.path(), name, text);
        write(
            "email/order_cancelled.txt",
            "{% set subject = \"Bestellung \" ~ order.number ~ \" storniert\" %}Hallo {{ customer.name }}, \
             {% if order.reason_code == \"out_of_stock\" %}ein Artikel ist ausverkauft{% endif %}.",
        );
        write("sms/order_cancelled.txt", "{{ shop.name }}: Bestellung {{ order.number }} storniert");
        write("..data/ignored.txt", "a volume's own bookkeeping");
        write(".hidden", "skipped too");
        let r = Renderer::new(shop(), Some(dir.path())).expect("templates");
        let order: OrderView = serde_json::from_value(serde_json::json!({
            "id": "ord-0123456789abcdef0123456789abcdef", "customer": "usr-0123456789abcdef0123456789abcdef", "status": "cancelled", "lines": [], "total": 0,
            "currency": "EUR", "payment_authorized": false, "version": 3, "cancel_reason": "out_of_stock",
            "shipping_address": {"name": "A", "line1": "1", "city": "B", "postal_code": "1", "country": "DE"},
        }))
        .expect("order");
        let ctx = minijinja::context! { customer => minijinja::context! { name => "Ada" }, order => order_context(&order, None) };
        let email =
            r.render(Topic::OrderCancelled, Channel::Email, None, &ctx).expect("render").expect("email");
        assert_eq!(
            email.subject.as_deref(),
            Some("Bestellung ord-0123456789abcdef0123456789abcdef storniert")
        );
        assert_eq!(email.text, "Hallo Ada, ein Artikel ist ausverkauft.");
        // The HTML part was not replaced: the built-in one, with the shop's subject.
        assert!(
            email.html.expect("html").contains("Bestellung ord-0123456789abcdef0123456789abcdef storniert")
        );
        let sms = r.render(Topic::OrderCancelled, Channel::Sms, None, &ctx).expect("render").expect("sms");
        assert_eq!(sms.text, "Laden: Bestellung ord-0123456789abcdef0123456789abcdef storniert");
        let shipped = r.render(Topic::OrderShipped, Channel::Sms, None, &ctx).expect("render").expect("sms");
        assert!(
            shipped.text.contains("ord-0123456789abcdef0123456789abcdef")
                && !shipped.text.contains("Bestellung"),
            "built in"
        );

        write("email/order_canceled.txt", "misspelt");
        let refused = Renderer::new(shop(), Some(dir.path())).expect_err("a misnamed file");
        assert!(matches!(refused, RenderError::Unknown { .. }), "{refused}");
        std::fs::remove_file(dir.path().join("email/order_canceled.txt")).expect("rm");
        write("sms/order_shipped.txt", "{% if %}");
        let refused = Renderer::new(shop(), Some(dir.path())).expect_err("a broken template");
        assert!(refused.to_string().contains("sms/order_shipped.txt"), "{refused}");
        let missing = Renderer::new(shop(), Some(&dir.path().join("nowhere"))).expect_err("no folder");
        assert!(matches!(missing, RenderError::Read { .. }), "{missing}");
    }

    #[test]
    fn people_get_their_language_s_templates_where_the_shop_has_them_and_the_default_otherwise() {
        let shop = || shop_in("Souk", "en");
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| write_template(dir.path(), name, text);
        write(
            "fr/email/order_delivered.txt",
            "{% set subject = \"Commande livrée\" %}Bonjour {{ customer.name }}",
        );
        write(
            "fr/email/order_delivered.html",
            "{% extends \"email/layout.html\" %}{% block body %}<p>Bonjour {{ customer.name }}</p>{% endblock %}",
        );
        write(
            "fr/email/layout.html",
            "<html lang=\"{{ locale }}\">{% block body %}{% endblock %}<p>À bientôt</p></html>",
        );
        write("pt-br/sms/order_delivered.txt", "{{ shop.name }}: pedido entregue ({{ locale }})");
        let r = Renderer::new(shop(), Some(dir.path())).expect("templates");
        let ctx = minijinja::context! {
            customer => minijinja::context! { name => "Ada" },
            order => minijinja::context! { id => "ord-1", number => "ord-1", lines => Vec::<Value>::new() },
        };
        let tag = |t: &str| Locale::parse(t).expect("tag");
        let render = |channel, locale: Option<&Locale>| {
            r.render(Topic::OrderDelivered, channel, locale, &ctx).expect("render").expect("message")
        };

        // Each message is written in the most specific language the shop has it in, else the
        // shop's own.
        let language =
            |channel, t: &str| r.language(Topic::OrderDelivered, channel, Some(&tag(t))).to_string();
        assert_eq!(language(Channel::Email, "fr-CA"), "fr");
        assert_eq!(language(Channel::Sms, "fr-CA"), "en", "no French text messages");
        assert_eq!(language(Channel::Sms, "pt-BR"), "pt-BR");
        assert_eq!(r.language(Topic::OrderDelivered, Channel::Email, None).as_str(), "en");
        // A regional tag falls back to its language; the French email uses the French layout.
        let fr = render(Channel::Email, Some(&tag("fr-CA")));
        assert_eq!((fr.subject.as_deref(), fr.text.as_str()), (Some("Commande livrée"), "Bonjour Ada"));
        assert_eq!(fr.html.as_deref(), Some("<html lang=\"fr\"><p>Bonjour Ada</p><p>À bientôt</p></html>"));
        // The folder's tag is read in its usual case; a language without templates of a topic
        // (French text messages) or at all (German) gets the default ones.
        assert_eq!(render(Channel::Sms, Some(&tag("pt-BR"))).text, "Souk: pedido entregue (pt-BR)");
        let fr_sms = render(Channel::Sms, Some(&tag("fr"))).text;
        let de = render(Channel::Email, Some(&tag("de")));
        assert_eq!((render(Channel::Sms, None).text, de.clone()), (fr_sms, render(Channel::Email, None)));
        assert!(
            de.html.expect("html").starts_with("<!doctype html>\n<html lang=\"en\">"),
            "the default layout"
        );

        write("french/email/order_delivered.txt", "not a language tag");
        let refused = Renderer::new(shop(), Some(dir.path())).expect_err("a misnamed folder");
        assert!(matches!(refused, RenderError::Unknown { .. }), "{refused}");
        std::fs::remove_dir_all(dir.path().join("french")).expect("rm");
        write("fr/email/order_delivred.txt", "misspelt");
        let refused = Renderer::new(shop(), Some(dir.path())).expect_err("a misnamed file");
        assert!(matches!(refused, RenderError::Unknown { .. }), "{refused}");
    }

    #[test]
    fn templates_that_cannot_render_stop_the_node_at_start_up() {
        let shop = || shop_in("Souk", "en");
        let dir = tempfile::tempdir().expect("dir");
        let write = |name: &str, text: &str| write_template(dir.path(), name, text);
        // Every field a message is given reads, in the default templates and a language's.
        write(
            "email/order_refunded.txt",
            "{% set subject = \"Refund \" ~ order.number %}{{ order.refund }} of {{ order.total }}: {% for l in order.lines %}{{ l.title | upper }}{% endfor %}",
        );
        write("fr/sms/order_shipped.txt", "{{ shop.name }} : suivi {{ order.tracking | lower }}");
        Renderer::new(shop(), Some(dir.path())).expect("templates that render");

        // A filter that does not exist, or a misspelt field read through, is found at start.
        write("email/order_shipped.txt", "{% set subject = \"Shipped\" %}{{ order.tracking | track }}");
        let refused = Renderer::new(shop(), Some(dir.path())).expect_err("an unknown filter");
        assert!(refused.to_string().contains("email/order_shipped.txt"), "{refused}");
        assert!(refused.to_string().contains("unknown filter"), "{refused}");
        std::fs::remove_file(dir.path().join("email/order_shipped.txt")).expect("rm");
        write("fr/sms/order_delivered.txt", "Livré à {{ order.shiping.city }}");
        let refused = Renderer::new(shop(), Some(dir.path())).expect_err("a misspelt field");
        assert!(refused.to_string().contains("sms/order_delivered.txt (for fr)"), "{refused}");
    }

    #[test]
    fn every_template_compiles_and_email_sets_a_subject() {
        let r = Renderer::new(
            Shop {
                name: "Shop <&>".into(),
                url: "https://shop.test".into(),
                locale: Locale::parse("en").expect("tag"),
            },
            None,
        )
        .expect("templates");
        let ctx = minijinja::context! {
            customer => minijinja::context! { name => "Ada" },
            order => minijinja::context! { id => "ord-1", number => "ord-1", lines => Vec::<Value>::new(), total => "€1.00", reason => "x", refund => "€1.00" },
            stock => minijinja::context! { sku => "SKU-1", available => 1, on_hand => 1, reserved => 0, threshold => 5 },
            dispute => minijinja::context! { id => "dp_1", amount => "€1.00", reason => "fraudulent", due_by => "2026-12-01T00:00:00Z" },
            reset_url => "https://shop.test/reset?token=t",
            expires_at => "soon", valid_minutes => 30,
        };
        // Every topic but webhooks' (their body is the event) is an email.
        for topic in Topic::ALL.into_iter().filter(|t| *t != Topic::Event) {
            let email = r.render(topic, Channel::Email, None, &ctx).expect("render").expect("email template");
            assert!(email.subject.as_deref().is_some_and(|s| !s.is_empty()), "{topic:?} has no subject");
            let html = email.html.expect("html");
            assert!(html.contains("Shop &lt;&amp;&gt;"), "{topic:?}: HTML must escape: {html}");
            assert!(email.text.contains("Shop <&>"), "{topic:?}: text is not escaped");
        }
        assert!(r.render(Topic::PasswordReset, Channel::Sms, None, &ctx).expect("render").is_none());
        let sms = r.render(Topic::OrderConfirmed, Channel::Sms, None, &ctx).expect("render").expect("sms");
        assert!(sms.text.contains("ord-1") && sms.html.is_none() && sms.subject.is_none());
    }
}

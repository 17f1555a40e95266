//! The catalog over HTTP: staff manage products, shoppers browse and search them.

use crate::{bin, ready};
use futures::future::join_all;
use futures::{StreamExt as _, stream};
use reqwest::{Client, Response, StatusCode};
use serde_json::{Value, json};
use souk_testkit::{NatsServer, SoukNode, admin_http, eventually, http, souk_command};
use std::collections::BTreeSet;
use std::time::Duration;

/// How long stock may take to follow a catalog change. It follows through a shared consumer;
/// a follower restarted while it held the product's event (a missed heartbeat on a loaded
/// machine) gets it back only after the consumer's 10 s ack wait, so this allows for one
/// redelivery.
const FOLLOWS_WITHIN: Duration = Duration::from_secs(30);

/// A ready node on its own nats-server, a plain client, and a client signed in as admin.
pub(crate) async fn staff_node() -> (NatsServer, SoukNode, Client, Client) {
    staff_node_with(&[]).await
}

/// [`staff_node`] with `env` set for the node.
pub(crate) async fn staff_node_with(env: &[(&str, &str)]) -> (NatsServer, SoukNode, Client, Client) {
    let nats = NatsServer::start();
    let node = SoukNode::start(bin(), nats.url(), env).expect("node");
    let http = http();
    ready(&http, &node).await;
    let staff = admin_http(node.url()).await;
    (nats, node, http, staff)
}

pub(crate) fn product(
    slug: &str,
    title: &str,
    description: &str,
    sku: &str,
    price: i64,
    status: &str,
) -> Value {
    json!({
        "title": title, "slug": slug, "description": description, "status": status,
        "categories": ["demo"],
        "variants": [{"sku": sku, "price": {"amount": price, "currency": "EUR"}, "attributes": {"size": "M"}}],
    })
}

pub(crate) async fn create(staff: &Client, base: &str, body: &Value) -> Response {
    staff.post(format!("{base}/v1/products")).json(body).send().await.expect("create")
}

pub(crate) async fn body(r: Response, status: StatusCode) -> Value {
    let got = r.status();
    let text = r.text().await.expect("body");
    assert_eq!(got, status, "{text}");
    serde_json::from_str(&text).expect("json")
}

/// Every product the anonymous catalog lists, following `next`, with `query` appended.
async fn walk(http: &Client, base: &str, query: &str, limit: u32) -> Vec<Value> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut url = format!("{base}/v1/products?limit={limit}{query}");
        if let Some(a) = &after {
            url.push_str(&format!("&after={}", urlencode(a)));
        }
        let page = body(http.get(url).send().await.expect("page"), StatusCode::OK).await;
        out.extend(page["items"].as_array().expect("items").iter().cloned());
        match page["next"].as_str() {
            Some(n) => after = Some(n.to_owned()),
            None => return out,
        }
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_manage_products_and_shoppers_see_only_active_ones() {
    let (_nats, node, http, staff) = staff_node().await;
    let base = node.url();

    let shirt = body(
        create(
            &staff,
            base,
            &product("linen-shirt", "Linen shirt", "Light and cool", "LINEN-M", 3900, "active"),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = shirt["id"].as_str().expect("id").to_owned();
    let draft = body(
        create(&staff, base, &product("secret-coat", "Secret coat", "Not yet", "COAT-1", 19900, "draft"))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let draft_id = draft["id"].as_str().expect("id").to_owned();

    // Shoppers find the active product by id or slug (from the storefront, within moments),
    // not the draft; staff see both.
    for key in [id.as_str(), "linen-shirt"] {
        let got = eventually("the product in the storefront", Duration::from_secs(10), || async {
            let r = http.get(format!("{base}/v1/products/{key}")).send().await.ok()?;
            (r.status() == StatusCode::OK).then_some(r)
        })
        .await;
        assert_eq!(
            body(got, StatusCode::OK).await["available"],
            json!({"LINEN-M": 0}),
            "a new variant has no stock"
        );
    }
    let hidden = http.get(format!("{base}/v1/products/secret-coat")).send().await.expect("get");
    assert_eq!(hidden.status(), StatusCode::NOT_FOUND);
    let seen = staff.get(format!("{base}/v1/products/secret-coat")).send().await.expect("get");
    assert_eq!(seen.status(), StatusCode::OK);
    eventually("the catalog to list both for staff", Duration::from_secs(10), || async {
        let page: Value = souk_testkit::json_at(&staff, format!("{base}/v1/products")).await?;
        (page["items"].as_array()?.len() == 2).then_some(())
    })
    .await;
    let shopper_view = walk(&http, base, "", 10).await;
    assert_eq!(shopper_view.len(), 1);
    assert_eq!(shopper_view[0]["slug"], "linen-shirt");

    // Conditional GET.
    let r = http.get(format!("{base}/v1/products/linen-shirt")).send().await.expect("get");
    let etag = r.headers()["etag"].to_str().expect("etag").to_owned();
    let again =
        http.get(format!("{base}/v1/products/linen-shirt")).header("if-none-match", &etag).send().await;
    assert_eq!(again.expect("get").status(), StatusCode::NOT_MODIFIED);

    // Updates need the current version in If-Match.
    let mut changed = product("linen-shirt", "Linen shirt", "Light and cool", "LINEN-M", 3500, "active");
    let put = |v: Option<&str>, b: Value| {
        let mut r = staff.put(format!("{base}/v1/products/{id}")).json(&b);
        if let Some(v) = v {
            r = r.header("if-match", v);
        }
        r.send()
    };
    assert_eq!(put(None, changed.clone()).await.expect("put").status(), StatusCode::PRECONDITION_REQUIRED);
    assert_eq!(
        put(Some("\"9\""), changed.clone()).await.expect("put").status(),
        StatusCode::PRECONDITION_FAILED
    );
    let updated = body(put(Some("\"1\""), changed.clone()).await.expect("put"), StatusCode::OK).await;
    assert_eq!(updated["version"], 2);
    assert_eq!(
        put(Some("\"1\""), changed.clone()).await.expect("put").status(),
        StatusCode::PRECONDITION_FAILED
    );

    // A slug or SKU of another product is refused and changes nothing.
    changed["slug"] = json!("secret-coat");
    let r = put(Some("\"2\""), changed.clone()).await.expect("put");
    assert_eq!(body(r, StatusCode::CONFLICT).await["code"], "slug_taken");
    let r = create(&staff, base, &product("another", "Another", "", "LINEN-M", 100, "draft")).await;
    assert_eq!(body(r, StatusCode::CONFLICT).await["code"], "sku_taken");
    let r = staff.get(format!("{base}/v1/products/{id}")).send().await.expect("get");
    assert_eq!(body(r, StatusCode::OK).await["version"], 2);

    // Archive hides it from shoppers; restore brings it back; only never-sold drafts delete.
    let r = staff.post(format!("{base}/v1/products/{id}/archive")).send().await.expect("archive");
    assert_eq!(body(r, StatusCode::OK).await["status"], "archived");
    eventually("the archived product gone from the storefront", Duration::from_secs(10), || async {
        let r = http.get(format!("{base}/v1/products/{id}")).send().await.ok()?;
        (r.status() == StatusCode::NOT_FOUND).then_some(())
    })
    .await;
    let r = staff.post(format!("{base}/v1/products/{id}/restore")).send().await.expect("restore");
    assert_eq!(body(r, StatusCode::OK).await["status"], "active");
    let r = staff.delete(format!("{base}/v1/products/{id}")).send().await.expect("delete");
    assert_eq!(body(r, StatusCode::CONFLICT).await["code"], "product_conflict");
    let r = staff.delete(format!("{base}/v1/products/{draft_id}")).send().await.expect("delete");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    // Its slug and SKU are free again.
    let r = create(&staff, base, &product("secret-coat", "Coat", "", "COAT-1", 100, "draft")).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    // Restocking the variant shows in the catalog.
    let r =
        staff.post(format!("{base}/v1/inventory/LINEN-M/restock")).json(&json!({"quantity": 4})).send().await;
    assert_eq!(r.expect("restock").status(), StatusCode::OK);
    eventually("availability in the catalog", Duration::from_secs(10), || async {
        let v: Value = souk_testkit::json_at(&http, format!("{base}/v1/products/linen-shirt")).await?;
        (v["available"]["LINEN-M"] == 4).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_racing_for_one_slug_or_sku_create_one_product() {
    let nats = NatsServer::start();
    let a = SoukNode::start(bin(), nats.url(), &[]).expect("node a");
    let b = SoukNode::start(bin(), nats.url(), &[]).expect("node b");
    let http = http();
    ready(&http, &a).await;
    ready(&http, &b).await;
    let staff = admin_http(a.url()).await;
    let attempts = (0..12).map(|i| {
        let (staff, base) = (staff.clone(), if i % 2 == 0 { a.url().to_owned() } else { b.url().to_owned() });
        // Half race for one slug, half for one SKU.
        let body = if i < 6 {
            product("the-one", "The one", "", &format!("UNIQUE-{i}"), 100, "draft")
        } else {
            product(&format!("slug-{i}"), "Twin", "", "TWIN-SKU", 100, "draft")
        };
        async move { create(&staff, &base, &body).await.status() }
    });
    let statuses = join_all(attempts).await;
    let created = statuses.iter().filter(|s| **s == StatusCode::CREATED).count();
    let refused = statuses.iter().filter(|s| **s == StatusCode::CONFLICT).count();
    assert_eq!((created, refused), (2, 10), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_ranks_titles_first_and_pages_walk_a_growing_catalog_without_gaps() {
    let nats = NatsServer::start();
    let node = SoukNode::start(bin(), nats.url(), &[]).expect("node");
    let http = http();
    ready(&http, &node).await;
    let base = node.url().to_owned();
    let staff = admin_http(&base).await;

    let make = {
        let (staff, base) = (staff.clone(), base.clone());
        move |i: usize| {
            let (staff, base) = (staff.clone(), base.clone());
            async move {
                let title = format!("Item {i}");
                let r = create(
                    &staff,
                    &base,
                    &product(&format!("item-{i}"), &title, "plain", &format!("IT-{i}"), i as i64, "active"),
                )
                .await;
                assert_eq!(r.status(), StatusCode::CREATED);
            }
        }
    };
    stream::iter(0..1000).for_each_concurrent(32, make.clone()).await;
    for (slug, title, description) in [
        ("desc-match", "Garden chair", "A chair for your lantern-lit garden"),
        ("title-match", "Brass lantern", "Warm light"),
    ] {
        let r = create(&staff, &base, &product(slug, title, description, &slug.to_uppercase(), 5, "active"))
            .await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    eventually("all products in the catalog", Duration::from_secs(60), || async {
        let page: Value =
            souk_testkit::json_at(&http, format!("{base}/v1/products?limit=1&sort=price_asc&min_price=999"))
                .await?;
        (page["items"].as_array()?.len() == 1).then_some(())
    })
    .await;

    let found = body(
        http.get(format!("{base}/v1/products?q=lantern&sort=relevance")).send().await.expect("search"),
        StatusCode::OK,
    )
    .await;
    let slugs: Vec<&str> =
        found["items"].as_array().expect("items").iter().filter_map(|p| p["slug"].as_str()).collect();
    assert_eq!(slugs, ["title-match", "desc-match"]);
    let prefix =
        body(http.get(format!("{base}/v1/products?q=lant")).send().await.expect("search"), StatusCode::OK)
            .await;
    assert_eq!(prefix["items"].as_array().expect("items").len(), 2, "prefixes match");

    // Walk the whole catalog by price while more products are being added: every product
    // that existed before the walk appears exactly once.
    let adding = tokio::spawn(async move { stream::iter(1000..1100).for_each_concurrent(8, make).await });
    let walked = walk(&http, &base, "&sort=price_asc", 37).await;
    adding.await.expect("adding");
    let slugs: Vec<String> = walked.iter().filter_map(|p| p["slug"].as_str().map(str::to_owned)).collect();
    let unique: BTreeSet<&String> = slugs.iter().collect();
    assert_eq!(unique.len(), slugs.len(), "no product twice");
    for i in 0..1000 {
        assert!(unique.contains(&format!("item-{i}")), "item-{i} missing");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_product_input_gets_problem_json_and_creates_nothing() {
    let (_nats, node, http, staff) = staff_node().await;
    let base = node.url();
    let good = product("good", "Good", "", "GOOD-1", 100, "draft");
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        v
    };
    let cases: Vec<(Value, u16, &str)> = vec![
        (with(&|v| v["title"] = json!("")), 422, "invalid_input"),
        (with(&|v| v["title"] = json!("t".repeat(201))), 422, "invalid_input"),
        (with(&|v| v["slug"] = json!("Not A Slug")), 422, "invalid_body"),
        (with(&|v| v["variants"] = json!([])), 422, "invalid_input"),
        (with(&|v| v["variants"][0]["sku"] = json!("bad.sku")), 422, "invalid_body"),
        (with(&|v| v["variants"][0]["price"]["amount"] = json!(-1)), 422, "invalid_input"),
        (with(&|v| v["variants"][0]["price"]["currency"] = json!("euro")), 422, "invalid_body"),
        (with(&|v| v["status"] = json!("archived")), 422, "invalid_input"),
        (with(&|v| v["images"] = json!(["javascript:alert(1)"])), 422, "invalid_input"),
        (with(&|v| v["unknown"] = json!(1)), 422, "invalid_body"),
        (with(&|v| v["variants"][0]["colour"] = json!("red")), 422, "invalid_body"),
        (with(&|v| v["variants"][0]["price"]["cents"] = json!(1)), 422, "invalid_body"),
        (json!({"title": "No variants", "slug": "x"}), 422, "invalid_body"),
    ];
    for (b, status, code) in cases {
        let r = create(&staff, base, &b).await;
        assert_eq!(r.headers()["content-type"], "application/problem+json", "{b}");
        let got = body(r, StatusCode::from_u16(status).expect("status")).await;
        assert_eq!(got["code"], code, "{b}");
    }
    for q in ["limit=0", "limit=101", "min_price=-1", "attribute=nocolon", "sort=cheapest"] {
        let r = http.get(format!("{base}/v1/products?{q}")).send().await.expect("list");
        assert!(r.status().is_client_error(), "{q}: {}", r.status());
    }
    // Nothing was claimed by the refused requests: the good product goes in.
    assert_eq!(create(&staff, base, &good).await.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_follows_variants_and_low_stock_fires_once_per_crossing() {
    let (_nats, node, http, staff) = staff_node().await;
    let base = node.url();

    // A variant created over HTTP becomes a stock item with nothing on hand.
    let mut shirt = product("tee", "Tee", "", "TEE-M", 1500, "active");
    shirt["variants"]
        .as_array_mut()
        .expect("variants")
        .push(json!({"sku": "TEE-L", "price": {"amount": 1500, "currency": "EUR"}}));
    let created = body(create(&staff, base, &shirt).await, StatusCode::CREATED).await;
    let id = created["id"].as_str().expect("id").to_owned();
    let item = eventually("the stock item to follow the variant", FOLLOWS_WITHIN, || async {
        let r = staff.get(format!("{base}/v1/inventory/TEE-M")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())?;
        r.json::<Value>().await.ok()
    })
    .await;
    assert_eq!((item["on_hand"].as_u64(), item["retired"].as_bool()), (Some(0), Some(false)));

    // Adjustments are recorded with their reason; on hand cannot drop below what is reserved.
    let adjust = |delta: i64, reason: &str| {
        staff
            .post(format!("{base}/v1/inventory/TEE-M/adjustments"))
            .json(&json!({"delta": delta, "reason": reason}))
            .send()
    };
    assert_eq!(adjust(10, "received").await.expect("adjust").status(), StatusCode::OK);
    let r =
        staff.put(format!("{base}/v1/inventory/TEE-M/low-stock")).json(&json!({"threshold": 5})).send().await;
    assert_eq!(r.expect("threshold").status(), StatusCode::OK);
    let reserve = |id: &str, qty: i64| {
        staff
            .post(format!("{base}/v1/inventory/TEE-M/reservations"))
            .json(&json!({"reservation_id": id, "quantity": qty}))
            .send()
    };
    assert_eq!(reserve("a", 6).await.expect("reserve").status(), StatusCode::CREATED); // 4 left: low
    assert_eq!(reserve("b", 1).await.expect("reserve").status(), StatusCode::CREATED); // 3 left: still low
    let r = adjust(-4, "damaged").await.expect("adjust");
    assert_eq!(
        body(r, StatusCode::UNPROCESSABLE_ENTITY).await["code"],
        "invalid_quantity",
        "7 reserved of 10"
    );
    assert_eq!(adjust(-2, "damaged").await.expect("adjust").status(), StatusCode::OK); // 1 left
    let counted = staff
        .post(format!("{base}/v1/inventory/TEE-M/adjustments"))
        .json(&json!({"on_hand": 28, "reason": "count_correction"}))
        .send()
        .await
        .expect("count");
    assert_eq!(body(counted, StatusCode::OK).await["available"], 21); // 28 counted, 7 reserved
    assert_eq!(reserve("c", 18).await.expect("reserve").status(), StatusCode::CREATED); // 3 left: low again
    let history = body(
        staff.get(format!("{base}/v1/inventory/TEE-M/history?limit=100")).send().await.expect("history"),
        StatusCode::OK,
    )
    .await;
    let types: Vec<&str> =
        history["events"].as_array().expect("events").iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(types.iter().filter(|t| **t == "stock.low").count(), 2, "once per crossing: {types:?}");
    let reasons: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "stock.adjusted")
        .filter_map(|e| e["data"]["reason"].as_str())
        .collect();
    assert_eq!(reasons, ["received", "damaged", "count_correction"]);
    let deltas: Vec<i64> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "stock.adjusted")
        .filter_map(|e| e["data"]["delta"].as_i64())
        .collect();
    assert_eq!(deltas, [10, -2, 20], "a count is recorded as the difference");
    let both = staff
        .post(format!("{base}/v1/inventory/TEE-M/adjustments"))
        .json(&json!({"delta": 1, "on_hand": 1, "reason": "received"}))
        .send()
        .await
        .expect("adjust");
    assert_eq!(body(both, StatusCode::UNPROCESSABLE_ENTITY).await["code"], "invalid_input");

    // The catalog shows availability; removing the variant retires its stock item.
    eventually("availability in the catalog", Duration::from_secs(10), || async {
        let v: Value = souk_testkit::json_at(&http, format!("{base}/v1/products/tee")).await?;
        (v["available"]["TEE-M"] == 3).then_some(())
    })
    .await;
    let version = staff
        .get(format!("{base}/v1/products/{id}"))
        .send()
        .await
        .expect("get")
        .json::<Value>()
        .await
        .expect("json")["version"]
        .clone();
    shirt["variants"].as_array_mut().expect("variants").remove(0);
    let r = staff
        .put(format!("{base}/v1/products/{id}"))
        .header("if-match", format!("\"{version}\""))
        .json(&shirt)
        .send()
        .await;
    assert_eq!(r.expect("put").status(), StatusCode::OK);
    let refused = eventually("the removed variant's stock to be retired", FOLLOWS_WITHIN, || async {
        let r = reserve("late", 1).await.ok()?;
        (r.status() == StatusCode::CONFLICT).then_some(r)
    })
    .await;
    assert_eq!(body(refused, StatusCode::CONFLICT).await["code"], "sku_retired");
    // Reservations made before still settle.
    let r =
        staff.post(format!("{base}/v1/inventory/TEE-M/reservations/a/commit")).send().await.expect("commit");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsettled_reservation_lapses_once_even_across_a_restart() {
    let nats = NatsServer::start();
    let mut node = SoukNode::start(bin(), nats.url(), &[]).expect("node");
    let http = http();
    ready(&http, &node).await;
    let staff = admin_http(node.url()).await;
    let base = node.url().to_owned();
    let r =
        staff.post(format!("{base}/v1/inventory/LAPSE-1/restock")).json(&json!({"quantity": 5})).send().await;
    assert_eq!(r.expect("restock").status(), StatusCode::OK);
    let hold = |id: &str, ttl: u64| {
        staff
            .post(format!("{base}/v1/inventory/LAPSE-1/reservations"))
            .json(&json!({"reservation_id": id, "quantity": 2, "ttl_seconds": ttl}))
            .send()
    };
    assert_eq!(hold("short", 3).await.expect("reserve").status(), StatusCode::CREATED);
    assert_eq!(hold("long", 3600).await.expect("reserve").status(), StatusCode::CREATED);
    let r = staff
        .post(format!("{base}/v1/inventory/LAPSE-1/reservations"))
        .json(&json!({"reservation_id": "x", "quantity": 1, "ttl_seconds": 0}))
        .send()
        .await;
    assert_eq!(body(r.expect("reserve"), StatusCode::UNPROCESSABLE_ENTITY).await["code"], "invalid_input");

    // The node goes down before the hold is due and comes back after.
    node.kill();
    tokio::time::sleep(Duration::from_secs(4)).await;
    node.restart().expect("restart");
    ready(&http, &node).await;
    let base = node.url().to_owned();
    let item = eventually("the short hold to lapse", Duration::from_secs(20), || async {
        let v: Value = souk_testkit::json_at(&staff, format!("{base}/v1/inventory/LAPSE-1")).await?;
        (v["reserved"] == 2).then_some(v)
    })
    .await;
    assert_eq!((item["on_hand"].as_u64(), item["available"].as_u64()), (Some(5), Some(3)));
    // Give further sweeps time to run: the lapse is recorded exactly once.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let history: Value = staff
        .get(format!("{base}/v1/inventory/LAPSE-1/history"))
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    let lapses: Vec<&Value> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] == "stock.released")
        .collect();
    assert_eq!(lapses.len(), 1, "{history}");
    assert_eq!(
        (lapses[0]["data"]["reservation"].as_str(), lapses[0]["data"]["expired"].as_bool()),
        (Some("short"), Some(true))
    );
    // A lapsed hold cannot be committed; the long one still can.
    let r = staff
        .post(format!("{base}/v1/inventory/LAPSE-1/reservations/short/commit"))
        .send()
        .await
        .expect("commit");
    assert_eq!(r.status(), StatusCode::CONFLICT);
    let r = staff
        .post(format!("{base}/v1/inventory/LAPSE-1/reservations/long/commit"))
        .send()
        .await
        .expect("commit");
    assert_eq!(r.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_takes_the_good_lines_reports_the_bad_ones_and_is_idempotent_by_sku() {
    let (nats, node, http, staff) = staff_node().await;
    let base = node.url();

    // CSV through the admin route: one product with two variants, one bad row, one bad product.
    let csv = "slug,title,description,status,categories,images,sku,price,currency,attributes\n\
               tee,Tee,Soft cotton,active,shirts,,TEE-S,1500,EUR,size=S\n\
               tee,Tee,Soft cotton,active,shirts,,TEE-L,1500,EUR,size=L\n\
               mug,Mug,,active,,,MUG 1,900,EUR,\n\
               cap,Cap,,active,,,CAP-1,-5,EUR,\n";
    let r = staff
        .post(format!("{base}/v1/admin/import?format=csv"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .expect("import");
    let summary = body(r, StatusCode::OK).await;
    assert_eq!((summary["created"].as_u64(), summary["updated"].as_u64()), (Some(1), Some(0)));
    let lines: Vec<u64> =
        summary["rejected"].as_array().expect("rejected").iter().filter_map(|r| r["line"].as_u64()).collect();
    assert_eq!(lines, [4, 5], "{summary}");
    let tee =
        body(http.get(format!("{base}/v1/products/tee")).send().await.expect("get"), StatusCode::OK).await;
    assert_eq!(tee["variants"].as_array().expect("variants").len(), 2);

    // JSON lines through the command line: again (unchanged), changed (updated), new, bad.
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("products.jsonl");
    let tee_line = json!({"title": "Tee", "slug": "tee", "description": "Soft cotton", "status": "active",
        "categories": ["shirts"], "variants": [
            {"sku": "TEE-S", "price": {"amount": 1500, "currency": "EUR"}, "attributes": {"size": "S"}},
            {"sku": "TEE-L", "price": {"amount": 1500, "currency": "EUR"}, "attributes": {"size": "L"}}]});
    let mut cheaper = tee_line.clone();
    cheaper["variants"][0]["price"]["amount"] = json!(1200);
    let new_line = product("scarf", "Scarf", "Warm", "SCARF-1", 2500, "active");
    let text = format!("{tee_line}\n{new_line}\nnot json\n");
    std::fs::write(&file, text).expect("write");
    let run = |file: std::path::PathBuf| {
        let url = nats.url().to_owned();
        async move {
            let path = file.to_str().expect("utf-8 path").to_owned();
            souk_command(bin(), &url, file.parent().expect("dir"), &["import", "products", &path])
                .output()
                .await
                .expect("souk import")
        }
    };
    let out = run(file.clone()).await;
    assert!(!out.status.success(), "a refused line makes the command fail");
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary json");
    assert_eq!((summary["created"].as_u64(), summary["unchanged"].as_u64()), (Some(1), Some(1)), "{summary}");
    assert_eq!(summary["rejected"][0]["line"], 3);
    std::fs::write(&file, format!("{cheaper}\n{new_line}\n")).expect("write");
    let out = run(file.clone()).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary json");
    assert_eq!((summary["updated"].as_u64(), summary["unchanged"].as_u64()), (Some(1), Some(1)), "{summary}");
    let tee =
        body(http.get(format!("{base}/v1/products/tee")).send().await.expect("get"), StatusCode::OK).await;
    assert_eq!(tee["variants"][0]["price"]["amount"], 1200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn souk_seed_loads_a_demo_catalog_once() {
    let nats = NatsServer::start();
    let node = SoukNode::start(bin(), nats.url(), &[]).expect("node");
    let http = http();
    ready(&http, &node).await;
    let dir = tempfile::tempdir().expect("dir");
    let seed = || souk_command(bin(), nats.url(), dir.path(), &["seed"]).output();
    let out = seed().await.expect("seed");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("demo admin account: admin@demo.souk.dev / demo-"));
    let base = node.url();
    let active = eventually("the demo catalog in the read model", Duration::from_secs(60), || async {
        let all = walk(&http, base, "", 100).await;
        (all.len() >= 285).then_some(all)
    })
    .await;
    assert_eq!(active.len(), 285, "300 products, one in twenty a draft");
    let categories: BTreeSet<String> =
        active.iter().filter_map(|p| p["categories"][0].as_str().map(str::to_owned)).collect();
    assert!(categories.len() >= 8, "{categories:?}");
    assert!(
        active
            .iter()
            .any(|p| p["available"].as_object().is_some_and(|a| a.values().any(|n| n.as_u64() > Some(0))))
    );
    // Seeding again creates nothing and changes no stock.
    let before = walk(&http, base, "&sort=price_asc", 100).await;
    let out = seed().await.expect("seed");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("0 products created"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(walk(&http, base, "&sort=price_asc", 100).await, before);
}

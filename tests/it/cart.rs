//! Carts over HTTP: lines checked against the catalog, priced now, guest carts merged on
//! sign-in, and bad input refused without changing the cart.

use crate::catalog::{body, create, product, staff_node};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use souk_testkit::{access_token, eventually, http_with_token};
use std::time::Duration;

pub(crate) const PASSWORD: &str = "a long customer password";

pub(crate) async fn customer(http: &Client, base: &str, email: &str) -> Client {
    let r = http
        .post(format!("{base}/v1/auth/register"))
        .json(&json!({"email": email, "password": PASSWORD, "name": "Shopper"}))
        .send()
        .await
        .expect("register");
    assert_eq!(r.status(), StatusCode::CREATED);
    http_with_token(&access_token(base, email, PASSWORD).await)
}

async fn cart(c: &Client, base: &str, token: Option<&str>) -> Value {
    let mut r = c.get(format!("{base}/v1/cart"));
    if let Some(t) = token {
        r = r.header("cart-token", t);
    }
    body(r.send().await.expect("cart"), StatusCode::OK).await
}

pub(crate) async fn add(
    c: &Client,
    base: &str,
    token: Option<&str>,
    sku: &str,
    quantity: i64,
) -> reqwest::Response {
    let mut r = c.post(format!("{base}/v1/cart/items")).json(&json!({"sku": sku, "quantity": quantity}));
    if let Some(t) = token {
        r = r.header("cart-token", t);
    }
    r.send().await.expect("add")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn carts_hold_checked_lines_at_current_prices_and_guest_carts_merge_on_sign_in() {
    let (_nats, node, http, staff) = staff_node().await;
    let base = node.url();
    let shirt = body(
        create(&staff, base, &product("cart-shirt", "Cart shirt", "", "CART-M", 2500, "active")).await,
        StatusCode::CREATED,
    )
    .await;
    let r = create(&staff, base, &product("cart-draft", "Not on sale", "", "CART-DRAFT", 100, "draft")).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    eventually("the product on sale", Duration::from_secs(10), || async {
        let r = http.get(format!("{base}/v1/products/cart-shirt")).send().await.ok()?;
        (r.status() == StatusCode::OK).then_some(())
    })
    .await;

    // A customer adds, raises, sets and removes lines; the cart is priced in minor units.
    let ada = customer(&http, base, "ada@cart.test").await;
    let c = body(add(&ada, base, None, "CART-M", 2).await, StatusCode::OK).await;
    assert_eq!((c["total"].as_i64(), c["item_count"].as_i64()), (Some(5000), Some(2)));
    assert_eq!(c["currency"], "EUR");
    assert!(c.get("cart_token").is_none(), "customers need no token");
    let c = body(add(&ada, base, None, "CART-M", 1).await, StatusCode::OK).await;
    assert_eq!(c["lines"][0]["quantity"], 3);
    assert_eq!(c["lines"][0]["line_total"], 7500);

    // Bad input is refused and changes nothing.
    let version = cart(&ada, base, None).await["version"].clone();
    for (sku, quantity, status, code) in [
        ("CART-M", 0, StatusCode::UNPROCESSABLE_ENTITY, "invalid_quantity"),
        ("CART-M", 10_000, StatusCode::UNPROCESSABLE_ENTITY, "invalid_quantity"),
        ("CART-M", 97, StatusCode::UNPROCESSABLE_ENTITY, "invalid_quantity"),
        ("NO-SUCH-SKU", 1, StatusCode::NOT_FOUND, "unknown_sku"),
        ("CART-DRAFT", 1, StatusCode::NOT_FOUND, "unknown_sku"),
    ] {
        let p = body(add(&ada, base, None, sku, quantity).await, status).await;
        assert_eq!(p["code"], code, "{sku} × {quantity}");
    }
    let r = ada
        .post(format!("{base}/v1/cart/items"))
        .json(&json!({"sku": "bad sku!", "quantity": 1}))
        .send()
        .await;
    assert_eq!(r.expect("add").status(), StatusCode::UNPROCESSABLE_ENTITY);
    let r = ada.patch(format!("{base}/v1/cart/items/NOT-IN-CART")).json(&json!({"quantity": 1})).send().await;
    assert_eq!(body(r.expect("patch"), StatusCode::NOT_FOUND).await["code"], "unknown_cart_line");
    assert_eq!(cart(&ada, base, None).await["version"], version, "nothing changed");

    let r = ada.patch(format!("{base}/v1/cart/items/CART-M")).json(&json!({"quantity": 1})).send().await;
    assert_eq!(body(r.expect("patch"), StatusCode::OK).await["total"], 2500);

    // A price change shows: the line keeps what it was added at, and totals use today's price.
    let mut cheaper = product("cart-shirt", "Cart shirt", "", "CART-M", 2000, "active");
    cheaper["status"] = json!("active");
    let id = shirt["id"].as_str().expect("id");
    let r =
        staff.put(format!("{base}/v1/products/{id}")).header("if-match", "\"1\"").json(&cheaper).send().await;
    assert_eq!(r.expect("put").status(), StatusCode::OK);
    let c = eventually("the new price in the cart", Duration::from_secs(10), || async {
        let c = cart(&ada, base, None).await;
        (c["lines"][0]["price_changed"] == true).then_some(c)
    })
    .await;
    assert_eq!(c["lines"][0]["added_price"]["amount"], 2500);
    assert_eq!(c["lines"][0]["unit_price"]["amount"], 2000);
    assert_eq!(c["total"], 2000);

    // A guest's first line creates a cart and hands out its token; the token finds it again.
    let guest = Client::new();
    let r = add(&guest, base, None, "CART-M", 2).await;
    let header = r.headers()["cart-token"].to_str().expect("token").to_owned();
    let c = body(r, StatusCode::OK).await;
    let token = c["cart_token"].as_str().expect("cart_token").to_owned();
    assert_eq!(token, header);
    assert_eq!(cart(&guest, base, Some(&token)).await["item_count"], 2);
    assert_eq!(cart(&guest, base, None).await["item_count"], 0, "no token, no cart");
    let r = guest.get(format!("{base}/v1/cart")).header("cart-token", "nonsense").send().await;
    assert_eq!(r.expect("cart").status(), StatusCode::UNPROCESSABLE_ENTITY);

    // Signing in with the token moves its lines into the customer's cart.
    let r = http
        .post(format!("{base}/v1/auth/login"))
        .header("cart-token", &token)
        .json(&json!({"email": "ada@cart.test", "password": PASSWORD}))
        .send()
        .await
        .expect("login");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(cart(&ada, base, None).await["lines"][0]["quantity"], 3, "1 + 2 guest units");
    assert_eq!(cart(&guest, base, Some(&token)).await["item_count"], 0, "the guest cart is empty");

    // Another customer's cart is their own; emptying works.
    let bob = customer(&http, base, "bob@cart.test").await;
    assert_eq!(cart(&bob, base, None).await["item_count"], 0);
    let r = ada.delete(format!("{base}/v1/cart/items/CART-M")).send().await.expect("remove");
    assert_eq!(body(r, StatusCode::OK).await["item_count"], 0);
    body(add(&ada, base, None, "CART-M", 1).await, StatusCode::OK).await;
    let r = ada.delete(format!("{base}/v1/cart")).send().await.expect("clear");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(cart(&ada, base, None).await["item_count"], 0);
}

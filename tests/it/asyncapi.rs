//! The event contract: `docs/asyncapi.yaml` is what the code generates, a valid AsyncAPI 3
//! document by `@asyncapi/parser`, and names every event type the code can publish, no more.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn the_committed_document_is_the_generated_one() {
    let committed = std::fs::read_to_string(root().join("docs/asyncapi.yaml")).expect("docs/asyncapi.yaml");
    assert!(
        committed == souk::asyncapi::yaml(),
        "docs/asyncapi.yaml is stale: run `cargo run -- asyncapi > docs/asyncapi.yaml`"
    );
}

#[test]
fn the_document_is_valid_asyncapi_and_names_exactly_the_events_the_code_publishes() {
    let modules = root().join(".tools/node/node_modules");
    assert!(
        modules.join("@asyncapi/parser").is_dir(),
        "@asyncapi/parser is not installed in .tools/node: ./dev test installs it"
    );
    let out = Command::new("node")
        .arg(root().join("scripts/check-asyncapi.js"))
        .arg(root().join("docs/asyncapi.yaml"))
        .env("NODE_PATH", &modules)
        .output()
        .expect("node");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    assert_eq!(report["valid"], true, "{report}");
    let documented: Vec<String> = report["types"]
        .as_array()
        .expect("types")
        .iter()
        .filter_map(|t| t.as_str().map(str::to_owned))
        .collect();
    assert_eq!(documented, souk_messages::asyncapi::event_types());
    // Spot checks against the events' own names, so an empty list cannot pass.
    for t in [
        souk_messages::order::OrderEvent::Confirmed {}.type_name(),
        "stock.low",
        "user.password_reset_requested",
        "notification.attempted",
        "cart.merged",
        "product.created",
    ] {
        assert!(documented.iter().any(|d| d == t), "{t} is documented");
    }
}

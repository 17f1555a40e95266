//! The crates' dependencies point one way (docs/architecture.md). Checked from the manifests,
//! so a forbidden edge fails CI the moment it is added.

use std::collections::BTreeSet;
use std::path::Path;

/// The `souk-*` crates a manifest depends on (normal dependencies only).
fn souk_deps(dir: &str) -> BTreeSet<String> {
    let manifest =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join("Cargo.toml"))
            .expect("manifest");
    let mut deps = BTreeSet::new();
    let mut in_deps = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_deps = line == "[dependencies]";
        } else if in_deps && line.starts_with("souk-") {
            deps.insert(line.split(['.', ' ', '=']).next().unwrap_or_default().to_owned());
        }
    }
    deps
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn crate_dependencies_point_inward() {
    assert_eq!(souk_deps("messages"), set(&[]));
    assert_eq!(souk_deps("nats"), set(&["souk-messages"]));
    assert_eq!(souk_deps("storage"), set(&["souk-messages"]));
    assert_eq!(souk_deps("actors"), set(&["souk-messages", "souk-nats", "souk-storage"]));
    assert_eq!(
        souk_deps("api"),
        set(&["souk-messages", "souk-nats", "souk-storage"]),
        "the edge never links actors"
    );
    assert_eq!(souk_deps("testkit"), set(&["souk-nats"]));
}

#[test]
fn messages_has_no_io_or_framework_dependencies() {
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("messages/Cargo.toml"))
        .expect("manifest");
    for banned in ["tokio", "async-nats", "axum", "surrealdb", "ractor", "reqwest"] {
        assert!(!manifest.contains(&format!("\n{banned}")), "messages must not depend on {banned}");
    }
}

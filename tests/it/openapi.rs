//! The HTTP contract: the OpenAPI document a node serves (and `souk openapi` prints) is valid
//! OpenAPI by `openapi-spec-validator`, so clients generated from it work: every response is
//! described, every schema it refers to is in it, each operation has its own id, and query
//! strings are query parameters, not path ones. And a node answers as the document says, by
//! `schemathesis`: no 5xx for any input it generates, and every answer in its documented
//! content type and schema.

use crate::{bin, ready};
use souk_testkit::{ADMIN_EMAIL, ADMIN_PASSWORD, NatsServer, SoukNode};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A Python tool `./dev test` installed into `.tools/` (a virtual environment where one can be
/// made, a plain folder where not).
fn python_tool(name: &str) -> PathBuf {
    let tools = root().join(".tools");
    [tools.join("venv/bin").join(name), tools.join("py/bin").join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed in .tools/: ./dev test installs it"))
}

#[test]
fn the_document_is_valid_openapi() {
    let doc = souk_api::openapi();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    serde_json::to_writer(&file, &doc).expect("write the document");
    let out = Command::new(python_tool("openapi-spec-validator"))
        .args(["--errors", "all"])
        .arg(file.path())
        .env("PYTHONPATH", root().join(".tools/py"))
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "openapi-spec-validator (./dev test installs it into .tools/):\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // So an empty or truncated document cannot pass: the routes clients page through take
    // their filters from the query string.
    let doc = serde_json::to_value(&doc).expect("json");
    for (path, name) in [("/v1/inventory", "below"), ("/v1/products", "q"), ("/v1/orders", "status")] {
        let params = doc["paths"][path]["get"]["parameters"].as_array().expect(path);
        let param = params.iter().find(|p| p["name"] == name).unwrap_or_else(|| panic!("{path} ?{name}"));
        assert_eq!(param["in"], "query", "{path} ?{name}");
        assert_eq!(param["required"], false, "{path} ?{name}");
    }
    // A response that extends a request body's schema must not inherit its refusal of
    // unlisted properties, or no response could satisfy it (the validator cannot tell).
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    assert!(schemas["ProductView"]["allOf"].is_array(), "a product view extends the product's data");
    for (name, schema) in schemas {
        for part in schema["allOf"].as_array().into_iter().flatten() {
            let target =
                part["$ref"].as_str().and_then(|r| schemas.get(r.rsplit('/').next()?)).unwrap_or(part);
            assert_ne!(
                target["additionalProperties"], false,
                "{name} extends a schema that refuses its own properties"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_answers_as_its_document_says() {
    let nats = NatsServer::start();
    let node = SoukNode::start(bin(), nats.url(), &[]).expect("node");
    ready(&souk_testkit::http(), &node).await;
    let token = souk_testkit::access_token(node.url(), ADMIN_EMAIL, ADMIN_PASSWORD).await;
    // Its caches and reports go to a folder of its own.
    let scratch = tempfile::tempdir().expect("tempdir");
    let out = tokio::process::Command::new(python_tool("schemathesis"))
        .arg("run")
        .arg(format!("{}/openapi.json", node.url()))
        .args(["--max-examples", "20", "--seed", "1", "--generation-database", "none"])
        .args(["--checks", "not_a_server_error,content_type_conformance,response_schema_conformance"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .current_dir(scratch.path())
        .env("PYTHONPATH", root().join(".tools/py"))
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("schemathesis");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis:\n{report}{}", String::from_utf8_lossy(&out.stderr));
    // So a run that tested nothing cannot pass: every operation of the document was tried.
    let doc = serde_json::to_value(souk_api::openapi()).expect("json");
    let operations: usize = doc["paths"]
        .as_object()
        .expect("paths")
        .values()
        .map(|p| p.as_object().map_or(0, serde_json::Map::len))
        .sum();
    assert!(operations > 50, "{operations} operations");
    assert!(report.contains(&format!("Tested: {operations}\n")), "{report}");
}

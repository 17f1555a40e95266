//! The HTTP contract: the OpenAPI document a node serves (and `souk openapi` prints) is valid
//! OpenAPI by `openapi-spec-validator`, so clients generated from it work: every response is
//! described, every schema it refers to is in it, each operation has its own id, and query
//! strings are query parameters, not path ones.

use std::path::Path;
use std::process::Command;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The Python that has `openapi-spec-validator`: `./dev test` installs it into `.tools/`,
/// in a virtual environment where one can be made and a plain folder where not.
fn validator() -> Command {
    let tools = root().join(".tools");
    let venv = tools.join("venv/bin/python");
    if venv.is_file() {
        return Command::new(venv);
    }
    let mut python = Command::new("python3");
    python.env("PYTHONPATH", tools.join("py"));
    python
}

#[test]
fn the_document_is_valid_openapi() {
    let doc = souk_api::openapi();
    let file = tempfile::NamedTempFile::new().expect("temp file");
    serde_json::to_writer(&file, &doc).expect("write the document");
    let out = validator()
        .args(["-m", "openapi_spec_validator", "--errors", "all"])
        .arg(file.path())
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

//! The OpenAPI document describes every answer a route can give, so clients and
//! schemathesis (scripts/schemathesis.sh) can rely on it.

use crate::helpers::{Backend, TestApp};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_protected_operation_documents_its_error_answers() {
    let app = TestApp::builder()
        .with_backend(Backend::Sqlite)
        .spawn()
        .await;
    let doc: Value = app
        .get_anonymous("/openapi.json")
        .await
        .json()
        .await
        .unwrap();
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("security").is_none() {
                continue;
            }
            checked += 1;
            let responses = op["responses"].as_object().unwrap();
            let mut want = vec!["401", "403", "429", "503"];
            if op.get("requestBody").is_some() {
                want.extend(["400", "413", "415", "422"]);
            }
            if path.contains('{') {
                want.extend(["404", "422"]);
            }
            for status in want {
                let r = responses
                    .get(status)
                    .unwrap_or_else(|| panic!("{method} {path}: no {status} documented"));
                assert_eq!(
                    r["content"]["application/json"]["schema"]["$ref"],
                    "#/components/schemas/ErrorBody",
                    "{method} {path} {status}"
                );
            }
        }
    }
    assert!(checked >= 18, "only {checked} protected operations found");
}

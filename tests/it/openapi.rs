//! The OpenAPI document: valid, complete, and true to what the endpoints really answer.

use serde_json::{Value, json};

use crate::helpers::{MAIN_BOT, Stack, deliver_update, text_update};

/// Checks `value` against an OpenAPI schema (the subset the document uses: `$ref`, `type`,
/// `required`, `properties`, `items`); returns what does not match.
fn mismatches(doc: &Value, schema: &Value, value: &Value, at: &str) -> Vec<String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let path = reference.trim_start_matches("#/").split('/');
        let target = path.fold(doc, |node, key| &node[key]);
        return mismatches(doc, target, value, at);
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(t) => vec![t.as_str()],
        Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let actual = match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    };
    let fits =
        types.is_empty() || types.contains(&actual) || (actual == "integer" && types.contains(&"number"));
    if !fits {
        return vec![format!("{at}: {actual} where the document says {types:?}")];
    }
    let mut problems = Vec::new();
    for key in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
        if value.get(key).is_none() {
            problems.push(format!("{at}.{key}: required but missing"));
        }
    }
    if let (Some(properties), Some(object)) = (schema["properties"].as_object(), value.as_object()) {
        for (key, field) in object {
            match properties.get(key) {
                Some(property) => problems.extend(mismatches(doc, property, field, &format!("{at}.{key}"))),
                None => problems.push(format!("{at}.{key}: not in the document")),
            }
        }
    }
    if let (Some(items), Some(array)) = (schema.get("items"), value.as_array()) {
        for (n, item) in array.iter().enumerate() {
            problems.extend(mismatches(doc, items, item, &format!("{at}[{n}]")));
        }
    }
    problems
}

fn schema_of(doc: &Value, path: &str, status: &str) -> Value {
    let response = &doc["paths"][path]["get"]["responses"][status];
    let response = match response["$ref"].as_str() {
        Some(reference) => {
            reference.trim_start_matches("#/").split('/').fold(doc, |node, key| &node[key]).clone()
        }
        None => response.clone(),
    };
    response["content"]["application/json"]["schema"].clone()
}

#[tokio::test]
async fn the_openapi_document_matches_the_real_answers() {
    let Stack { worker, api, .. } = &Stack::start(false).await;
    for n in 1..=3 {
        deliver_update(worker, &MAIN_BOT, &text_update(n, 40 + n, &format!("a post for the document {n}")))
            .await;
    }
    let doc: Value = reqwest::get(api.url("/api/openapi.json")).await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    for path in doc["paths"].as_object().unwrap().keys() {
        let concrete = path.replace("{id}", "1");
        let response = reqwest::get(api.url(&concrete)).await.unwrap();
        if response.status() == 404 {
            let body: Value = response.json().await.unwrap();
            assert_ne!(body["error"], "no such endpoint", "{path} is documented but not served");
        }
    }

    let cases = [
        ("/api/feed?limit=2", "/api/feed", "200"),
        ("/api/feed?limit=0", "/api/feed", "400"),
        ("/api/posts/1", "/api/posts/{id}", "200"),
        ("/api/posts/999999", "/api/posts/{id}", "404"),
        ("/api/posts/abc", "/api/posts/{id}", "400"),
        ("/api/media/1", "/api/media/{id}", "404"),
    ];
    for (url, path, status) in cases {
        let response = reqwest::get(api.url(url)).await.unwrap();
        assert_eq!(response.status().as_str(), status, "{url}");
        let body: Value = response.json().await.unwrap();
        let problems = mismatches(&doc, &schema_of(&doc, path, status), &body, url);
        assert!(problems.is_empty(), "{url} answers what the document does not say: {problems:#?}");
    }
    // The validator itself catches a lie.
    let lie = json!({ "posts": [{ "id": "one" }], "next_cursor": null, "extra": 1 });
    assert_eq!(mismatches(&doc, &schema_of(&doc, "/api/feed", "200"), &lie, "lie").len(), 7);
}

//! Completes the generated OpenAPI document with the answers every protected route can
//! give whatever its handler does: the authentication layer's 401, the limiter's 429,
//! the 503 of a dependency that is down, and for routes with a body or an id the 400,
//! 413, 415 and 422 of the extractors. Each is the JSON `{"detail": …}` of `ErrorBody`,
//! so a client (or schemathesis) can rely on the document for every status it sees.

use utoipa::openapi::path::Operation;
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, ResponseBuilder};

/// Adds the common error answers to every operation that needs a token.
pub fn add_common_responses(doc: &mut OpenApi) {
    for (path, item) in doc.paths.paths.iter_mut() {
        let has_id = path.contains('{');
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
            &mut item.head,
            &mut item.options,
            &mut item.trace,
        ]
        .into_iter()
        .flatten()
        {
            if op.security.as_ref().is_none_or(Vec::is_empty) {
                continue;
            }
            let has_body = op.request_body.is_some();
            add(op, "401", "Missing, invalid or expired token");
            add(op, "403", "Not the owner of the profile nor an admin");
            add(
                op,
                "429",
                "Rate limited (per caller, or per address after failed authentication)",
            );
            add(
                op,
                "503",
                "A dependency needed right now (database, limiter, token keys) is down",
            );
            if has_id || has_body {
                add(op, "422", "An invalid id or field");
            }
            if has_id {
                add(op, "404", "Not found");
            }
            if has_body {
                add(op, "400", "Malformed JSON body");
                add(op, "413", "Body over 64 KiB");
                add(op, "415", "Content-Type is not JSON");
            }
        }
    }
}

fn add(op: &mut Operation, status: &str, description: &str) {
    op.responses
        .responses
        .entry(status.to_owned())
        .or_insert_with(|| {
            RefOr::T(
                ResponseBuilder::new()
                    .description(description)
                    .content(
                        "application/json",
                        ContentBuilder::new()
                            .schema(Some(Ref::from_schema_name("ErrorBody")))
                            .build(),
                    )
                    .build(),
            )
        });
}

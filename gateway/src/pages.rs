//! Built-in web pages and the browser client SDK, compiled into the binary:
//! `/demo` (chat with presence and a task log), `/status` (the cluster for
//! operators, fed by the HTTP API), their assets under `/static/`, and the
//! SDK's ES module at `/sdk/gateway-client.js` (built from `clients/js`, whose
//! `dist/` is committed so `cargo build` needs no npm).
//!
//! Served only with the `pages` setting on (the default). Every response
//! carries a strong `ETag` and `Cache-Control: no-cache`, so browsers
//! revalidate and get `304 Not Modified` until the binary changes; HTML
//! pages also carry a Content-Security-Policy that allows only this origin's
//! scripts and styles (and WebSocket connections to any node).

use std::sync::OnceLock;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

/// One file served at a fixed path.
#[derive(Debug)]
pub struct Asset {
    /// URL path.
    pub path: &'static str,
    /// File contents.
    pub body: &'static [u8],
    /// `Content-Type` header.
    pub content_type: &'static str,
}

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Content-Security-Policy of the HTML pages. `ws:`/`wss:` let the demo
/// fail over to other nodes' `/ws`.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Every served file.
pub const ASSETS: &[Asset] = &[
    Asset {
        path: "/demo",
        body: include_bytes!("../static/demo.html"),
        content_type: HTML,
    },
    Asset {
        path: "/status",
        body: include_bytes!("../static/status.html"),
        content_type: HTML,
    },
    Asset {
        path: "/static/pages.css",
        body: include_bytes!("../static/pages.css"),
        content_type: CSS,
    },
    Asset {
        path: "/static/demo.js",
        body: include_bytes!("../static/demo.js"),
        content_type: JS,
    },
    Asset {
        path: "/static/status.js",
        body: include_bytes!("../static/status.js"),
        content_type: JS,
    },
    Asset {
        path: "/sdk/gateway-client.js",
        body: include_bytes!("../../clients/js/dist/gateway-client.js"),
        content_type: JS,
    },
    Asset {
        path: "/sdk/gateway-client.d.ts",
        body: include_bytes!("../../clients/js/dist/gateway-client.d.ts"),
        content_type: TEXT,
    },
];

/// Strong ETags of [`ASSETS`], by index: FNV-1a 64 of the contents.
fn etags() -> &'static [String] {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let mut h: u64 = 0xcbf2_9ce4_8422_2325;
                for b in a.body {
                    h ^= u64::from(*b);
                    h = h.wrapping_mul(0x0000_0100_0000_01b3);
                }
                format!("\"{h:016x}\"")
            })
            .collect()
    })
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn not_modified(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == etag || t == "*")
}

/// The response for asset `index` given the request headers.
pub fn serve(index: usize, headers: &HeaderMap) -> Response {
    let (Some(asset), Some(etag)) = (ASSETS.get(index), etags().get(index)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let etag_value = HeaderValue::from_str(etag).unwrap_or(HeaderValue::from_static("\"0\""));
    let mut response = if not_modified(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(asset.content_type),
            )],
            asset.body,
        )
            .into_response()
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag_value);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if asset.path.starts_with("/sdk/") {
        // The SDK is public code: an app on another origin may import it
        // as a module (which needs CORS); it carries no credentials.
        h.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    if asset.content_type == HTML {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        );
        h.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
    }
    response
}

/// Routes for every asset (GET and HEAD).
pub fn router() -> Router {
    ASSETS
        .iter()
        .enumerate()
        .fold(Router::new(), |router, (index, asset)| {
            router.route(
                asset.path,
                get(move |headers: HeaderMap| async move { serve(index, &headers) }),
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(path: &str) -> usize {
        ASSETS
            .iter()
            .position(|a| a.path == path)
            .unwrap_or(usize::MAX)
    }

    #[test]
    fn serves_with_type_etag_and_cache_headers() {
        let r = serve(index("/sdk/gateway-client.js"), &HeaderMap::new());
        assert_eq!(r.status(), StatusCode::OK);
        let h = r.headers();
        assert_eq!(h[header::CONTENT_TYPE], JS);
        assert_eq!(h[header::CACHE_CONTROL], "no-cache");
        assert_eq!(h[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert!(h.get(header::CONTENT_SECURITY_POLICY).is_none());
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_ORIGIN],
            "*",
            "importable as a module from another origin"
        );
        let etag = h[header::ETAG].clone();
        assert!(etag.to_str().is_ok_and(|e| e.len() == 18));

        let mut req = HeaderMap::new();
        req.insert(header::IF_NONE_MATCH, etag.clone());
        let r = serve(index("/sdk/gateway-client.js"), &req);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert_eq!(r.headers()[header::ETAG], etag);

        req.insert(header::IF_NONE_MATCH, HeaderValue::from_static("\"other\""));
        assert_eq!(
            serve(index("/sdk/gateway-client.js"), &req).status(),
            StatusCode::OK
        );

        let r = serve(index("/demo"), &HeaderMap::new());
        assert_eq!(r.headers()[header::CONTENT_TYPE], HTML);
        assert!(r.headers().get(header::CONTENT_SECURITY_POLICY).is_some());
        assert_eq!(
            serve(usize::MAX, &HeaderMap::new()).status(),
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn every_local_reference_of_the_pages_is_served() {
        let served: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        for asset in ASSETS
            .iter()
            .filter(|a| a.path.starts_with("/static/") || a.content_type == HTML)
        {
            let text = String::from_utf8_lossy(asset.body);
            for quote in ['"', '\''] {
                for part in text.split(quote).skip(1).step_by(2) {
                    let is_ref = part.starts_with("/static/") || part.starts_with("/sdk/");
                    if is_ref {
                        assert!(
                            served.contains(&part),
                            "{} refers to {part}, which is not served",
                            asset.path
                        );
                    }
                }
            }
        }
        let sdk = String::from_utf8_lossy(ASSETS[index("/sdk/gateway-client.js")].body);
        assert!(sdk.contains("export class GatewayClient"));
    }
}

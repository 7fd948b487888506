//! The page, its script and its style, shipped inside the binary (no build step, no external
//! assets: servers often have no internet).

use axum::http::header;
use axum::response::{Html, IntoResponse};

const INDEX: &str = include_str!("page/index.html");
const SCRIPT: &str = include_str!("page/app.js");
const STYLE: &str = include_str!("page/app.css");

/// Pages and assets change with the binary: no caching beyond a revalidation.
const NO_STORE: (header::HeaderName, &str) = (header::CACHE_CONTROL, "no-cache");

pub async fn index() -> impl IntoResponse {
    ([NO_STORE], Html(INDEX))
}

pub async fn script() -> impl IntoResponse {
    ([NO_STORE, (header::CONTENT_TYPE, "text/javascript; charset=utf-8")], SCRIPT)
}

pub async fn style() -> impl IntoResponse {
    ([NO_STORE, (header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE)
}

/// What a login with a wrong token answers.
pub fn login_refused() -> Html<&'static str> {
    Html(
        "<!doctype html><html lang=\"en\"><meta charset=\"utf-8\"><title>nuwax: not logged in</title>\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <main><h1>Not logged in</h1><p>The token in this link is not this server's. Open the login \
         URL <code>nuwax serve</code> printed when it started, or make a new one with \
         <code>nuwax token new</code>.</p></main></html>",
    )
}

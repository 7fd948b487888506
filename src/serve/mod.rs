//! `nuwax serve`: the web console. One page (shipped inside the binary) and a JSON API for the
//! project (see docs/API.md), on axum. Every operation runs the CLI's flows under the same
//! project lock; the console is another front end, like `cli/`, and never a flow of its own.

mod api;
mod auth;
pub mod ops;
mod page;
mod upload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

pub use auth::{TOKEN_FILE, new_token};

use crate::flows::Ctx;
use crate::interrupt::Interrupt;
use crate::lock::ProjectLock;

/// How `nuwax serve` runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub dir: PathBuf,
    pub listen: SocketAddr,
    /// Listening on an address other than loopback is allowed.
    pub allow_remote: bool,
    /// The largest upload (archive or package) taken, in bytes.
    pub max_upload: u64,
}

/// What every handler shares.
pub struct App {
    dir: PathBuf,
    gate: auth::Gate,
    ops: Arc<ops::Ops>,
    interrupt: Interrupt,
    max_upload: u64,
}

impl App {
    /// The project as it is now (a rollback may have brought other settings back).
    async fn ctx(&self, engine: bool) -> Result<Ctx> {
        crate::cli::context_at(&self.dir, engine, self.interrupt.clone()).await
    }

    /// [`App::ctx`] with the project lock held: a running operation (CLI or console) refuses.
    async fn locked(&self, engine: bool) -> Result<(Ctx, ProjectLock), ApiError> {
        let ctx = self.ctx(engine).await?;
        let lock = ProjectLock::acquire(&ctx.project.state_dir)?;
        Ok((ctx, lock))
    }
}

/// An error as the API answers it: the status, and the CLI's message, hint and exit code.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    pub(crate) doc: Value,
}

impl ApiError {
    fn new(status: StatusCode, error: String, hint: Option<String>) -> ApiError {
        ApiError {
            status,
            doc: json!({ "error": error, "hint": hint, "exit_code": crate::error::exit::FAILED }),
        }
    }

    fn with_code(mut self, code: u8) -> ApiError {
        self.doc["exit_code"] = json!(code);
        self
    }
}

/// `{"error", "hint", "exit_code"}` of `e`, as the CLI would report it.
pub fn error_doc(e: &anyhow::Error) -> Value {
    json!({ "error": format!("{e:#}"), "hint": crate::cli::hint_of(e), "exit_code": crate::cli::exit_code(e) })
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> ApiError {
        use crate::error::exit;
        let code = crate::cli::exit_code(&e);
        let status = match code {
            exit::LOCKED => StatusCode::CONFLICT,
            exit::ENGINE_UNREACHABLE => StatusCode::SERVICE_UNAVAILABLE,
            exit::PREFLIGHT | exit::VERIFY_FAILED => StatusCode::UNPROCESSABLE_ENTITY,
            exit::NOT_FOUND => StatusCode::NOT_FOUND,
            exit::NOT_CONFIRMED | exit::USAGE => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError { status, doc: error_doc(&e) }
    }
}

macro_rules! from_error {
    ($($t:ty),*) => {$(
        impl From<$t> for ApiError {
            fn from(e: $t) -> ApiError {
                anyhow::Error::from(e).into()
            }
        }
    )*};
}
from_error!(
    crate::lock::LockError,
    serde_json::Error,
    axum::http::header::InvalidHeaderValue,
    axum::http::header::ToStrError,
    tokio::task::JoinError
);

impl From<std::convert::Infallible> for ApiError {
    fn from(e: std::convert::Infallible) -> ApiError {
        match e {}
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(self.doc)).into_response()
    }
}

/// Every `/api` request: the token or a session (and, for a session's requests that change
/// something, its CSRF token); refused before its handler runs otherwise.
async fn gatekeeper(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    match app.gate.check(req.method(), req.headers()) {
        Ok(_) => next.run(req).await,
        Err(auth::Refusal::Unauthenticated) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "not logged in: a token is needed".into(),
            Some(
                "open the login URL `nuwax serve` printed, or send `Authorization: Bearer TOKEN` (the token \
                 is in the project's state dir, file serve-token; `nuwax token new` makes a new one)"
                    .into(),
            ),
        )
        .into_response(),
        Err(auth::Refusal::Csrf) => ApiError::new(
            StatusCode::FORBIDDEN,
            "refused: a request that changes something needs the session's CSRF token".into(),
            Some(format!("send the header {} with the csrf value of GET /api/session", auth::CSRF_HEADER)),
        )
        .into_response(),
    }
}

#[derive(serde::Deserialize)]
struct LoginQuery {
    token: Option<String>,
}

async fn login(State(app): State<Arc<App>>, Query(q): Query<LoginQuery>) -> Result<Response, ApiError> {
    match app.gate.login(q.token.as_deref().unwrap_or_default())? {
        Some((id, _csrf)) => {
            let cookie = format!("{}={id}; HttpOnly; SameSite=Strict; Path=/", auth::COOKIE);
            Ok(([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response())
        }
        None => Ok((StatusCode::UNAUTHORIZED, page::login_refused()).into_response()),
    }
}

async fn logout(State(app): State<Arc<App>>, headers: HeaderMap) -> Response {
    app.gate.logout(&headers);
    let cookie = format!("{}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0", auth::COOKIE);
    ([(header::SET_COOKIE, cookie)], Redirect::to("/")).into_response()
}

fn router(app: Arc<App>) -> Router {
    let api = Router::new()
        .route("/session", get(api::session))
        .route("/status", get(api::status))
        .route("/backups", get(api::backups).post(api::start_backup))
        .route("/backups/{id}", get(api::show))
        .route("/backups/{id}/download", get(api::download))
        .route("/backups/{id}/verify", post(api::verify))
        .route("/backups/{id}/plan", get(api::plan))
        .route("/backups/{id}/rollback", post(api::rollback))
        .route("/imports", post(api::import))
        .route("/packages", post(api::package))
        .route("/upgrades", get(api::upgrades).post(api::upgrade))
        .route("/upgrades/plan", post(api::upgrade_plan))
        .route("/prune/plan", get(api::prune_plan))
        .route("/prune", post(api::prune))
        .route("/operations", get(api::operations))
        .route("/operations/{id}", get(api::operation))
        .route("/operations/{id}/events", get(api::events))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such API endpoint".into(), None) })
        .layer(axum::middleware::from_fn_with_state(app.clone(), gatekeeper))
        // Uploads stream past the extractors' default limit; ours is `--max-upload`.
        .layer(axum::extract::DefaultBodyLimit::disable());
    Router::new()
        .route("/", get(page::index))
        .route("/assets/app.js", get(page::script))
        .route("/assets/app.css", get(page::style))
        .route("/login", get(login))
        .route("/logout", post(logout))
        .nest("/api", api)
        .with_state(app)
}

/// Runs the console until SIGINT/SIGTERM; then waits for a running operation to end (it
/// starts what it stopped) before returning.
pub async fn serve(opts: ServeOptions, interrupt: Interrupt) -> Result<()> {
    let mut ctx = crate::cli::context_at(&opts.dir, false, interrupt.clone()).await?;
    if !opts.listen.ip().is_loopback() && !opts.allow_remote {
        anyhow::bail!(crate::Error::Config(format!(
            "{} is not a loopback address: anyone who can reach it may try the token; pass --allow-remote \
             to listen there anyway (behind a TLS proxy)",
            opts.listen
        )));
    }
    {
        // What a dead nuwax left, before anything is offered.
        let lock = ProjectLock::acquire(&ctx.project.state_dir)?;
        crate::cli::recover_if_needed(&mut ctx, Some(&lock)).await?;
    }
    upload::sweep(&ctx.project.state_dir);
    let token = auth::load_or_create(&ctx.project.state_dir)?;
    let ops = Arc::new(ops::Ops::default());
    ops::register(ops.clone());
    let app = Arc::new(App {
        dir: opts.dir.clone(),
        gate: auth::Gate::new(ctx.project.state_dir.clone()),
        ops: ops.clone(),
        interrupt: interrupt.clone(),
        max_upload: opts.max_upload,
    });
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() {
        tracing::warn!(
            "listening on {addr} without TLS: the token and the backups cross the network in the clear; put \
             a TLS proxy in front"
        );
    }
    crate::cli::announce(&format!("nuwax serve: project {} at http://{addr}/", ctx.project.name));
    crate::cli::announce(&format!("log in: http://{addr}/login?token={token}"));
    let stop = interrupt.clone();
    axum::serve(listener, router(app))
        .with_graceful_shutdown(async move {
            while stop.received().is_none() {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        })
        .await
        .context("serving")?;
    ops.drain().await;
    Ok(())
}

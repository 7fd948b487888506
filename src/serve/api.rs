//! The JSON API: each handler sets up what the CLI's command would, calls the same flow, and
//! answers with the same JSON. Operations that change something run in a task of their own,
//! holding the project lock, and answer at once with the operation's id.

use std::convert::Infallible;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tracing::Instrument;

use super::ops::{self, Event, Kind, Op};
use super::{ApiError, App, upload};
use crate::catalog::BackupKind;
use crate::cli::{commands::StatusFacts, recover_after_panic, recover_if_needed, render};
use crate::flows::Ctx;
use crate::flows::backup::BackupOptions;

type ApiResult<T> = std::result::Result<T, ApiError>;

pub async fn session(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Json<Value>> {
    let csrf = match app.gate.check(&axum::http::Method::GET, &headers) {
        Ok(super::auth::Access::Session { csrf }) => Some(csrf),
        _ => None,
    };
    let ctx = app.ctx(false).await?;
    Ok(Json(json!({ "project": ctx.project.name, "csrf": csrf, "version": crate::VERSION })))
}

/// Reads only: what a dead nuwax left is recovered by the next operation (or `serve`'s start),
/// and shown here as unfinished until then. (A recovery check here would hold the project lock
/// for a moment, and a status read at that moment would take it for a running operation.)
pub async fn status(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    let ctx = app.ctx(false).await?;
    let facts = StatusFacts::gather(&ctx).await?;
    Ok(Json(render::status_value(&facts.status(&ctx))))
}

pub async fn backups(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    let ctx = app.ctx(false).await?;
    Ok(Json(serde_json::to_value(ctx.catalog.list(&ctx.project.name).await?)?))
}

pub async fn show(State(app): State<Arc<App>>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    let ctx = app.ctx(false).await?;
    let rec = ctx.record(id).await?;
    let manifest =
        rec.path.as_ref().and_then(|p| crate::archive::read_manifest(std::path::Path::new(p)).ok());
    Ok(Json(render::show_value(&rec, manifest.as_ref())))
}

/// The archive, as an attachment; `Range` and conditional requests as a static file server
/// answers them.
pub async fn download(State(app): State<Arc<App>>, Path(id): Path<i64>, req: Request) -> ApiResult<Response> {
    use tower::ServiceExt;
    let ctx = app.ctx(false).await?;
    let rec = ctx.record(id).await?;
    let path = std::path::PathBuf::from(rec.path.clone().unwrap_or_default());
    if !rec.is_complete() || !path.is_file() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("backup {id} has no archive to download (status {})", rec.status),
            None,
        ));
    }
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut res = tower_http::services::ServeFile::new(&path)
        .oneshot(req)
        .await
        .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?
        .map(Body::new);
    let disposition = format!("attachment; filename=\"{}\"", name.replace(['"', '\\'], "_"));
    res.headers_mut().insert(header::CONTENT_DISPOSITION, disposition.parse()?);
    res.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/octet-stream"));
    Ok(res)
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackupBody {
    note: Option<String>,
}

pub async fn start_backup(
    State(app): State<Arc<App>>,
    body: Option<Json<BackupBody>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let note = body.and_then(|b| b.0.note);
    start(&app, Kind::Backup, true, move |ctx, op| async move {
        let mut opts = BackupOptions::for_project(&ctx.project, BackupKind::Manual, None, None)?;
        opts.note = note;
        let mut outcome = crate::flows::backup::backup(&ctx, &opts, op.clone()).await?;
        outcome.copies = crate::flows::offsite::after_backup(&ctx, outcome.id, &*op).await?;
        Ok(serde_json::to_value(outcome)?)
    })
    .await
}

pub async fn verify(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    start(&app, Kind::Verify, false, move |ctx, op| async move {
        let rec = ctx.record(id).await?;
        if !rec.is_complete() {
            anyhow::bail!(crate::Error::VerifyFailed {
                id,
                detail: format!("status is {}, not complete: not restorable", rec.status)
            });
        }
        let path = std::path::PathBuf::from(rec.path.clone().unwrap_or_default());
        let (sum, cancel, progress) = (rec.checksum.clone(), ctx.interrupt.cancel().clone(), op.clone());
        let res = tokio::task::spawn_blocking(move || {
            crate::archive::verify(&path, sum.as_deref(), &cancel, &*progress)
        })
        .await?;
        ctx.interrupt.check()?;
        let res = res.map_err(|e| format!("{:#}", anyhow::Error::from(e)));
        if let Err(detail) = &res {
            anyhow::bail!(crate::Error::VerifyFailed { id, detail: detail.clone() });
        }
        Ok(render::verify_value(&rec, &res))
    })
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RollbackBody {
    confirm: bool,
    accept_live: bool,
}

fn rollback_options(
    ctx: &Ctx,
    id: i64,
    accept_live: bool,
) -> anyhow::Result<crate::flows::rollback::RollbackOptions> {
    Ok(crate::flows::rollback::RollbackOptions {
        keep_data: Vec::new(),
        id,
        data: true,
        config: true,
        safety: BackupOptions::for_project(&ctx.project, BackupKind::PreRollback, None, None)?,
        note: None,
        accept_live,
    })
}

/// `rollback ID --dry-run`: everything checked (the whole archive read), nothing touched.
pub async fn plan(State(app): State<Arc<App>>, Path(id): Path<i64>) -> ApiResult<Json<Value>> {
    let (ctx, _lock) = app.locked(true).await?;
    let opts = rollback_options(&ctx, id, true)?;
    let plan = crate::flows::rollback::plan(&ctx, &opts).await?;
    Ok(Json(serde_json::to_value(plan)?))
}

pub async fn rollback(
    State(app): State<Arc<App>>,
    Path(id): Path<i64>,
    body: Option<Json<RollbackBody>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let body = body.map(|b| b.0).unwrap_or_default();
    if !body.confirm {
        return Err(not_confirmed("rollback", "Restore will replace all data"));
    }
    start(&app, Kind::Rollback, true, move |ctx, op| async move {
        let opts = rollback_options(&ctx, id, body.accept_live)?;
        crate::flows::offsite::ensure_local(&ctx, ctx.record(id).await?, &*op).await?;
        let plan = crate::flows::rollback::plan(&ctx, &opts).await?;
        let outcome = crate::flows::rollback::rollback(&ctx, &opts, plan, op).await?;
        Ok(serde_json::to_value(outcome)?)
    })
    .await
}

fn not_confirmed(what: &str, why: &str) -> ApiError {
    let e = anyhow::Error::new(crate::Error::NotConfirmed { what: "rollback" });
    ApiError::new(
        StatusCode::BAD_REQUEST,
        format!("{what} not confirmed: {why}; send {{\"confirm\": true}} to go ahead"),
        crate::cli::hint_of(&e),
    )
    .with_code(crate::error::exit::NOT_CONFIRMED)
}

/// An archive uploaded: streamed to the state dir (up to the limit), then verified, checked
/// safe to extract and recorded, as `nuwax import` does; refused otherwise, nothing recorded.
pub async fn import(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> ApiResult<Json<Value>> {
    let ctx = app.ctx(false).await?;
    let name = upload::file_name(&headers, "upload.tar.zst");
    let up = upload::receive(&ctx.project.state_dir, "uploads", &name, body, app.max_upload).await?;
    let (mut ctx, lock) = match app.locked(false).await {
        Ok(l) => l,
        Err(e) => {
            let _ = std::fs::remove_file(&up.path);
            return Err(e);
        }
    };
    recover_if_needed(&mut ctx, Some(&lock)).await?;
    let imported = crate::flows::import::import_with(
        &ctx,
        &up.path,
        crate::flows::import::Take::Move { origin: format!("the upload {name} (web console)") },
    )
    .await;
    let _ = std::fs::remove_file(&up.path);
    // The temp file's name means nothing to the one who uploaded it.
    let imported = imported.map_err(|e| {
        let mut err = ApiError::from(e);
        let shown = format!("the upload {name}");
        if let Some(msg) =
            err.doc["error"].as_str().map(|m| m.replace(&up.path.display().to_string(), &shown))
        {
            err.doc["error"] = json!(msg);
        }
        err
    })?;
    let rec = ctx.record(imported.id).await?;
    Ok(Json(json!({ "imported": imported, "record": rec })))
}

/// An upgrade package uploaded into the state dir, for `upgrades/plan` and `upgrades`.
pub async fn package(State(app): State<Arc<App>>, headers: HeaderMap, body: Body) -> ApiResult<Json<Value>> {
    let ctx = app.ctx(false).await?;
    let name = upload::file_name(&headers, "package.tar.zst");
    let up = upload::receive(&ctx.project.state_dir, "packages", &name, body, app.max_upload).await?;
    let dest = up.path.with_file_name(&name);
    std::fs::rename(&up.path, &dest).with_context(|| format!("keeping {}", dest.display()))?;
    Ok(Json(json!({ "package": dest, "sha256": up.sha256, "size_bytes": up.bytes })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpgradeBody {
    package: String,
    sha256: Option<String>,
    confirm: bool,
    allow_downgrade: bool,
}

fn upgrade_options(ctx: &Ctx, b: &UpgradeBody) -> anyhow::Result<crate::flows::upgrade::UpgradeOptions> {
    if b.package.is_empty() {
        anyhow::bail!(crate::Error::Config("no package: send {\"package\": PATH or URL}".into()));
    }
    Ok(crate::flows::upgrade::UpgradeOptions {
        package: b.package.clone(),
        sha256: b.sha256.clone(),
        allow_downgrade: b.allow_downgrade,
        auto_rollback: true,
        backup: BackupOptions::for_project(&ctx.project, BackupKind::PreUpgrade, None, None)?,
        health_timeout: ctx.timeouts().ready,
    })
}

/// `upgrade --dry-run`: the preflight, nothing changed.
pub async fn upgrade_plan(
    State(app): State<Arc<App>>,
    Json(body): Json<UpgradeBody>,
) -> ApiResult<Json<Value>> {
    let (ctx, _lock) = app.locked(true).await?;
    let opts = upgrade_options(&ctx, &body)?;
    let plan = crate::flows::upgrade::plan(&ctx, &opts, Arc::new(crate::archive::NoProgress)).await?;
    Ok(Json(serde_json::to_value(&plan)?))
}

pub async fn upgrade(
    State(app): State<Arc<App>>,
    Json(body): Json<UpgradeBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !body.confirm {
        return Err(not_confirmed("upgrade", "the services will be stopped and the new version started"));
    }
    start(&app, Kind::Upgrade, true, move |ctx, op| async move {
        let opts = upgrade_options(&ctx, &body)?;
        let plan = crate::flows::upgrade::plan(&ctx, &opts, op.clone()).await?;
        let outcome = crate::flows::upgrade::upgrade(&ctx, &opts, plan, op).await?;
        Ok(serde_json::to_value(outcome)?)
    })
    .await
}

pub async fn upgrades(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    let ctx = app.ctx(false).await?;
    Ok(Json(serde_json::to_value(ctx.catalog.upgrades(&ctx.project.name).await?)?))
}

fn policy(ctx: &Ctx) -> crate::retention::Policy {
    ctx.project.settings.retention.clone().unwrap_or_default()
}

/// `prune --dry-run` with the project's policy.
pub async fn prune_plan(State(app): State<Arc<App>>) -> ApiResult<Json<Value>> {
    let (ctx, _lock) = app.locked(false).await?;
    let out = crate::flows::prune::prune(&ctx, &policy(&ctx), true, chrono::Utc::now()).await?;
    Ok(Json(serde_json::to_value(out)?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConfirmBody {
    confirm: bool,
}

pub async fn prune(
    State(app): State<Arc<App>>,
    body: Option<Json<ConfirmBody>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    if !body.is_some_and(|b| b.confirm) {
        return Err(not_confirmed("prune", "backups the policy does not keep will be deleted"));
    }
    start(&app, Kind::Prune, false, move |mut ctx, _op| async move {
        // Kept image tags are released with their backups when the engine answers.
        ctx.engine = crate::cli::connect().await.ok();
        let out = crate::flows::prune::prune(&ctx, &policy(&ctx), false, chrono::Utc::now()).await?;
        Ok(serde_json::to_value(out)?)
    })
    .await
}

pub async fn operations(State(app): State<Arc<App>>) -> Json<Value> {
    Json(serde_json::to_value(app.ops.docs()).unwrap_or_default())
}

pub async fn operation(State(app): State<Arc<App>>, Path(id): Path<u64>) -> ApiResult<Json<Value>> {
    let op = app.ops.get(id).ok_or_else(|| no_operation(id))?;
    Ok(Json(serde_json::to_value(op.doc())?))
}

fn no_operation(id: u64) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, format!("no operation {id} in this nuwax serve"), None)
        .with_code(crate::error::exit::NOT_FOUND)
}

/// The operation's log so far and its progress, then what follows live, ending with `done`.
pub async fn events(
    State(app): State<Arc<App>>,
    Path(id): Path<u64>,
) -> ApiResult<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>> {
    let op = app.ops.get(id).ok_or_else(|| no_operation(id))?;
    let (doc, rx) = op.follow();
    let mut first: Vec<Event> = doc.log.iter().cloned().map(Event::Log).collect();
    first.push(Event::Progress(doc.progress.clone()));
    let live = match doc.status {
        ops::Status::Running => Some(rx),
        _ => {
            first.push(Event::Done(Box::new(doc)));
            None
        }
    };
    let first = futures_util::stream::iter(first);
    let rest = futures_util::stream::unfold(live, |rx| async move {
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(e @ Event::Done(_)) => return Some((e, None)),
                Ok(e) => return Some((e, Some(rx))),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    use futures_util::StreamExt;
    let stream = first.chain(rest).map(|e| Ok(sse(&e)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn sse(e: &Event) -> SseEvent {
    let (name, data) = match e {
        Event::Progress(p) => ("progress", serde_json::to_string(p)),
        Event::Log(l) => ("log", serde_json::to_string(l)),
        Event::Done(d) => ("done", serde_json::to_string(d)),
    };
    SseEvent::default().event(name).data(data.unwrap_or_default())
}

/// Starts `work` as an operation: the project lock taken (a running CLI or console operation
/// refuses it with the CLI's message), what a dead nuwax left recovered, then the work in a
/// task of its own, inside the operation's span (its log lines become the operation's). A
/// panic in it is recovered as the CLI recovers one: the journal starts what was stopped.
async fn start<F, Fut>(
    app: &Arc<App>,
    kind: Kind,
    engine: bool,
    work: F,
) -> ApiResult<(StatusCode, Json<Value>)>
where
    F: FnOnce(Ctx, Arc<Op>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<Value>> + Send + 'static,
{
    let (mut ctx, lock) = app.locked(engine).await?;
    recover_if_needed(&mut ctx, Some(&lock)).await?;
    let op = app.ops.start(kind);
    let id = op.id();
    let span = tracing::info_span!(ops::SPAN, op = id);
    let dir = app.dir.clone();
    let task = tokio::spawn(async move {
        let inner = tokio::spawn(work(ctx, op.clone()).instrument(span));
        let outcome = match inner.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(super::error_doc(&e)),
            Err(join) => {
                drop(lock);
                if let Err(e) = recover_after_panic(Some(dir)).await {
                    tracing::error!("recovery after the internal error failed: {e:#}");
                }
                let e = anyhow::anyhow!("internal error: {join}; stopped services were started again");
                op.finish(Err(super::error_doc(&e)));
                return;
            }
        };
        drop(lock);
        op.finish(outcome);
    });
    app.ops.track(task);
    Ok((StatusCode::ACCEPTED, Json(json!({ "operation": id }))))
}

//! The runner against the fake engine and compose: the order of stops and starts, the journal
//! written before the first stop, starting on every path, the handover to compose.

use std::sync::Arc;

use anyhow::anyhow;
use serde::{Deserialize, Serialize};

use super::*;
use crate::engine::Engine;
use crate::engine::fake::FakeEngine;

#[derive(Debug, Default, Serialize, Deserialize)]
struct TestJournal {
    step: u32,
}

impl Journal for TestJournal {
    const KIND: OperationKind = OperationKind::Backup;
}

struct Fixture {
    _tmp: tempfile::TempDir,
    ctx: Ctx,
    engine: Arc<FakeEngine>,
}

/// db ← app ← worker running, batch (depends on db) stopped.
async fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let (ctx, engine) = crate::engine::fake::fake_ctx(
        tmp.path(),
        "services: {db: {image: x}, app: {image: x, depends_on: [db]}, worker: {image: x, depends_on: [app]}, \
         batch: {image: x, depends_on: [db]}, search: {image: x}}\n",
        &[("db", true, &[]), ("app", true, &["db"]), ("worker", true, &["app"]), ("batch", false, &["db"])],
    )
    .await;
    Fixture { _tmp: tmp, ctx, engine }
}

fn running(engine: &FakeEngine) -> Vec<String> {
    let mut r = engine.running();
    r.sort();
    r
}

#[tokio::test]
async fn stops_dependents_first_journals_first_and_starts_only_what_ran() {
    let f = fixture().await;
    let mut op = Operation::begin(&f.ctx, TestJournal::default()).await.unwrap();
    let containers = f.engine.project_containers("p").await.unwrap();
    let seen = op
        .with_stopped(&containers, |op, _scope| {
            Box::pin(async move {
                // Inside the scope the journal already names every stopped service.
                let open = op.ctx().catalog.unfinished(&op.ctx().project.name).await?;
                let scope: ScopeJournal = serde_json::from_value(open[0].scope.clone().unwrap())?;
                Ok(scope.services.into_iter().collect::<Vec<_>>())
            })
        })
        .await
        .unwrap();
    assert_eq!(seen, ["app", "db", "worker"]);
    assert_eq!(
        f.engine.calls(),
        ["stop worker", "stop app", "stop db", "start db", "start app", "start worker"]
    );
    assert_eq!(running(&f.engine), ["app", "db", "worker"]);
    assert!(op.scope().unwrap().downtime_ms.is_some());
    op.close(None).await.unwrap();
    assert!(f.ctx.catalog.unfinished(&f.ctx.project.name).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_failing_body_still_starts_everything_and_its_error_comes_back() {
    let f = fixture().await;
    let mut op = Operation::begin(&f.ctx, TestJournal::default()).await.unwrap();
    let containers = f.engine.project_containers("p").await.unwrap();
    let err = op
        .with_stopped(&containers, |_, _| Box::pin(async { Err::<(), _>(anyhow!("the body failed")) }))
        .await
        .unwrap_err();
    assert_eq!(format!("{err:#}"), "the body failed");
    assert_eq!(running(&f.engine), ["app", "db", "worker"]);
}

#[tokio::test]
async fn services_that_do_not_start_are_services_down_and_recovery_only_starts_them() {
    let f = fixture().await;
    f.engine.fail_start("app");
    let mut op = Operation::begin(&f.ctx, TestJournal { step: 7 }).await.unwrap();
    let containers = f.engine.project_containers("p").await.unwrap();
    let err = op
        .with_stopped(&containers, |_, _| Box::pin(async { Err::<(), _>(anyhow!("the body failed")) }))
        .await
        .unwrap_err();
    assert!(matches!(err.downcast_ref::<crate::Error>(), Some(crate::Error::ServicesDown { .. })), "{err:#}");
    assert!(format!("{err:#}").contains("the body failed; and then starting the services again failed"));
    // Every other service is tried and runs; the operation stays open, marked as only needing
    // its services.
    assert_eq!(running(&f.engine), ["db", "worker"]);
    op.close(Some("failed")).await.unwrap();
    let open = f.ctx.catalog.unfinished(&f.ctx.project.name).await.unwrap();
    let scope: ScopeJournal = serde_json::from_value(open[0].scope.clone().unwrap()).unwrap();
    assert!(scope.ended);
    ensure_running(&f.ctx, &scope).await.unwrap_err();
}

#[tokio::test]
async fn services_handed_to_compose_come_back_as_new_containers_never_the_old_ones() {
    let f = fixture().await;
    let mut op = Operation::begin(&f.ctx, TestJournal::default()).await.unwrap();
    let containers = f.engine.project_containers("p").await.unwrap();
    let old_app = containers.iter().find(|c| c.service == "app").unwrap().id.clone();
    op.with_stopped(&containers, |_, scope| {
        Box::pin(async move {
            scope.via_compose(["app".to_string()]).await?;
            // The operation adds a service and leaves one it stopped to compose too.
            let mut run = scope.services().clone();
            run.insert("search".into());
            scope.set_services(run).await
        })
    })
    .await
    .unwrap();
    let calls = f.engine.calls();
    assert!(
        calls.contains(&"compose up app".to_string()) && calls.contains(&"compose up search".to_string()),
        "{calls:?}"
    );
    assert!(!calls.contains(&"start app".to_string()), "the old app container was started: {calls:?}");
    let now = f.engine.project_containers("p").await.unwrap();
    assert!(now.iter().all(|c| c.id != old_app), "the old app container is still there");
    assert_eq!(running(&f.engine), ["app", "db", "search", "worker"]);
}

#[tokio::test]
async fn a_second_stop_inside_the_scope_adds_to_what_its_end_starts() {
    let f = fixture().await;
    let mut op = Operation::begin(&f.ctx, TestJournal::default()).await.unwrap();
    let containers = f.engine.project_containers("p").await.unwrap();
    let db_only: Vec<_> = containers.iter().filter(|c| c.service == "db").cloned().collect();
    op.with_stopped(&db_only, |op, scope| {
        Box::pin(async move {
            let engine = op.ctx().engine()?;
            let now = engine.project_containers("p").await?;
            scope.stop(&now).await?;
            assert!(scope.keeps_running("worker") && !scope.keeps_running("batch"));
            Ok(())
        })
    })
    .await
    .unwrap();
    assert_eq!(running(&f.engine), ["app", "db", "worker"]);
}

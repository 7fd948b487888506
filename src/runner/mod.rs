//! The operation runner: the shape every flow that changes something takes.
//!
//! - An [`Operation`] is a row of the operations journal holding a typed [`Journal`] (a serde
//!   struct whose phase is an enum), written before the operation's first side effect and
//!   again before each step that changes what recovery must do.
//! - [`Operation::with_stopped`] is the only way to stop services: it journals them, stops
//!   them (dependents first), runs the body, and always starts them again (dependencies
//!   first, healthy), merging the body's error with any start error. Work nested inside (the
//!   pre-upgrade backup, a rollback's safety backup, an upgrade's automatic rollback) gets the
//!   [`Scope`] as an argument and never stops or starts on its own.
//! - After a crash, `flows::recover` dispatches each open operation on its [`OperationKind`]
//!   to that kind's own `recover`, then brings the scope's services back with
//!   [`ensure_running`].

mod scope;

use anyhow::Result;
use futures_util::future::BoxFuture;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::catalog::OperationKind;
use crate::engine::Container;
use crate::flows::Ctx;
pub use scope::{Scope, ScopeJournal, ScopeReport, dependencies, ensure_running};

/// The journal of one kind of operation.
pub trait Journal: Serialize + DeserializeOwned + Send + Sync {
    const KIND: OperationKind;

    /// The backup the operation writes, when it writes one (also kept in its own column, so a
    /// pending backup row is never mistaken for an orphan).
    fn backup_id(&self) -> Option<i64> {
        None
    }
}

/// What a kind's recovery did.
#[derive(Debug, Clone)]
pub struct Recovery {
    /// What it did to the data, for the operator.
    pub note: String,
    /// It brought the services back itself (with an operation of its own, e.g. an upgrade's
    /// rollback): the dead operation's scope is not started again.
    pub services_handled: bool,
}

impl Recovery {
    pub fn note(note: impl Into<String>) -> Recovery {
        Recovery { note: note.into(), services_handled: false }
    }

    pub fn services_handled(note: impl Into<String>) -> Recovery {
        Recovery { note: note.into(), services_handled: true }
    }
}

/// One running operation of this process.
pub struct Operation<'c, J: Journal> {
    ctx: &'c Ctx,
    id: i64,
    pub journal: J,
    scope: Option<ScopeReport>,
    /// The last scope could not start every service: closing leaves the row open, so that the
    /// next nuwax command (or `nuwax recover`) tries again.
    services_down: Option<ScopeJournal>,
}

impl<'c, J: Journal> Operation<'c, J> {
    /// Opens the journal entry, holding `journal`, before anything else happens.
    pub async fn begin(ctx: &'c Ctx, journal: J) -> Result<Self> {
        let detail = serde_json::to_value(&journal)?;
        let id =
            ctx.catalog.begin_operation(J::KIND, &ctx.project.name, journal.backup_id(), &detail).await?;
        Ok(Operation { ctx, id, journal, scope: None, services_down: None })
    }

    pub fn id(&self) -> i64 {
        self.id
    }

    pub fn ctx(&self) -> &'c Ctx {
        self.ctx
    }

    /// Changes the journal and writes it: call before the step it announces.
    pub async fn advance(&mut self, change: impl FnOnce(&mut J)) -> Result<()> {
        change(&mut self.journal);
        self.ctx.catalog.set_detail(self.id, &serde_json::to_value(&self.journal)?).await
    }

    /// Stops the running containers among `containers` (journaled first), runs `body`, and
    /// always starts every service the scope keeps again. The body's error comes back with
    /// any start failure attached; a start failure alone is [`crate::Error::ServicesDown`].
    ///
    /// The body is `|op, scope| Box::pin(async move { ... })`: a boxed future, because the
    /// command runs in a spawned task and must be provably `Send`.
    pub async fn with_stopped<T, F>(&mut self, containers: &[Container], body: F) -> Result<T>
    where
        F: for<'a> FnOnce(&'a mut Self, &'a mut Scope<'c>) -> BoxFuture<'a, Result<T>>,
    {
        match self.with_stopped_apart(containers, body).await {
            (r, Ok(())) => r,
            (Ok(_), Err(s)) => Err(s),
            // Services left down outrank the first error: they decide the exit code.
            (Err(e), Err(s)) => Err(s.context(format!("{e:#}; and then starting the services again failed"))),
        }
    }

    /// [`Self::with_stopped`], with the body's result and the start's apart: for a flow whose
    /// outcome must be recorded even when the services did not all come back.
    pub async fn with_stopped_apart<T, F>(
        &mut self,
        containers: &[Container],
        body: F,
    ) -> (Result<T>, Result<()>)
    where
        F: for<'a> FnOnce(&'a mut Self, &'a mut Scope<'c>) -> BoxFuture<'a, Result<T>>,
    {
        let mut scope = Scope::new(self.ctx, self.id, containers.to_vec());
        let result = match scope.stop(containers).await {
            Ok(()) => body(self, &mut scope).await,
            Err(e) => Err(e),
        };
        let (started, report) = scope.finish().await;
        self.scope = Some(report);
        if started.is_err() {
            self.services_down = Some(scope.journal().clone());
        }
        (result, started)
    }

    /// What the last [`Self::with_stopped`] did.
    pub fn scope(&self) -> Option<&ScopeReport> {
        self.scope.as_ref()
    }

    /// Closes the operation (`note` says how it ended). When services stayed down, the row
    /// stays open for recovery, which then only starts them.
    pub async fn close(&mut self, note: Option<&str>) -> Result<()> {
        match self.services_down.take() {
            Some(mut scope) => {
                scope.ended = true;
                self.ctx.catalog.set_scope(self.id, &scope).await
            }
            None => {
                self.ctx.catalog.finish_operation(self.id, crate::catalog::OperationState::Done, note).await
            }
        }
    }
}

#[cfg(test)]
mod tests;

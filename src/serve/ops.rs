//! The operations a console started: each runs a flow in a task of its own, holding the project
//! lock; its progress (bytes, the current item), its log lines and its outcome are kept here and
//! sent to whoever follows its events.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use tokio::sync::broadcast;

/// What an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Backup,
    Verify,
    Rollback,
    Upgrade,
    Prune,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Running,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Progress {
    /// The last thing the flow said it is doing.
    pub phase: String,
    pub bytes: u64,
    pub total: u64,
    /// The entry or dump being read or written.
    pub item: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    pub level: String,
    pub message: String,
}

/// An operation as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Doc {
    pub id: u64,
    pub kind: Kind,
    pub status: Status,
    pub started_at: String,
    pub ended_at: Option<String>,
    pub progress: Progress,
    pub log: Vec<LogLine>,
    /// The CLI's `--json` output of the command, once it succeeded.
    pub result: Option<Value>,
    /// `{"error", "hint", "exit_code"}`, once it failed.
    pub error: Option<Value>,
}

/// What followers of an operation are sent.
#[derive(Debug, Clone)]
pub enum Event {
    Progress(Progress),
    Log(LogLine),
    Done(Box<Doc>),
}

/// The most log lines an operation keeps (the first ones and the last ones are what matter).
const MAX_LOG: usize = 500;
/// Progress is sent at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

pub struct Op {
    doc: Mutex<Doc>,
    events: broadcast::Sender<Event>,
    last_sent: Mutex<Option<Instant>>,
}

impl Op {
    fn lock(&self) -> std::sync::MutexGuard<'_, Doc> {
        self.doc.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn id(&self) -> u64 {
        self.lock().id
    }

    pub fn doc(&self) -> Doc {
        self.lock().clone()
    }

    /// The doc and a receiver of what follows it, taken together so nothing falls between.
    pub fn follow(&self) -> (Doc, broadcast::Receiver<Event>) {
        let doc = self.lock();
        (doc.clone(), self.events.subscribe())
    }

    pub fn log(&self, level: &str, message: String) {
        let line = LogLine { level: level.to_string(), message };
        {
            let mut doc = self.lock();
            if doc.status != Status::Running {
                return;
            }
            doc.progress.phase.clone_from(&line.message);
            if doc.log.len() < MAX_LOG {
                doc.log.push(line.clone());
            }
        }
        let _ = self.events.send(Event::Log(line));
        self.send_progress(true);
    }

    fn send_progress(&self, now: bool) {
        let mut last = self.last_sent.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if !now && last.is_some_and(|t| t.elapsed() < PROGRESS_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        let p = self.lock().progress.clone();
        let _ = self.events.send(Event::Progress(p));
    }

    /// The outcome: `Ok(result)` or `Err(error doc)`.
    pub fn finish(&self, outcome: std::result::Result<Value, Value>) {
        // The last bytes, which the throttle may have held back.
        self.send_progress(true);
        let doc = {
            let mut doc = self.lock();
            doc.ended_at = Some(now());
            match outcome {
                Ok(v) => {
                    doc.status = Status::Succeeded;
                    doc.result = Some(v);
                }
                Err(e) => {
                    doc.status = Status::Failed;
                    doc.error = Some(e);
                }
            }
            doc.clone()
        };
        let _ = self.events.send(Event::Done(Box::new(doc)));
    }
}

impl crate::archive::Progress for Op {
    fn set_total(&self, bytes: u64) {
        {
            let mut doc = self.lock();
            doc.progress.total = bytes;
            doc.progress.bytes = 0;
        }
        self.send_progress(true);
    }

    fn inc(&self, bytes: u64) {
        self.lock().progress.bytes += bytes;
        self.send_progress(false);
    }

    fn item(&self, name: &str) {
        self.lock().progress.item = name.to_string();
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Every operation this server started, oldest first.
#[derive(Default)]
pub struct Ops {
    next: AtomicU64,
    all: Mutex<Vec<Arc<Op>>>,
    running: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Ops {
    pub fn start(&self, kind: Kind) -> Arc<Op> {
        let id = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        let doc = Doc {
            id,
            kind,
            status: Status::Running,
            started_at: now(),
            ended_at: None,
            progress: Progress::default(),
            log: Vec::new(),
            result: None,
            error: None,
        };
        let (events, _) = broadcast::channel(1024);
        let op = Arc::new(Op { doc: Mutex::new(doc), events, last_sent: Mutex::new(None) });
        self.all.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(op.clone());
        op
    }

    pub fn get(&self, id: u64) -> Option<Arc<Op>> {
        self.all
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .find(|o| o.id() == id)
            .cloned()
    }

    /// Newest first.
    pub fn docs(&self) -> Vec<Doc> {
        let all = self.all.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        all.iter().rev().map(|o| o.doc()).collect()
    }

    /// Keeps the task of a running operation, so the server can wait for it before it exits.
    pub fn track(&self, task: tokio::task::JoinHandle<()>) {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        running.retain(|t| !t.is_finished());
        running.push(task);
    }

    /// Waits for every running operation to end (a signal has told them to stop at their next
    /// safe point; a scope starts what it stopped on the way).
    pub async fn drain(&self) {
        let tasks: Vec<_> =
            std::mem::take(&mut *self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// The operations whose log lines the tracing layer routes (set once, by `serve`).
static REGISTRY: OnceLock<Arc<Ops>> = OnceLock::new();

pub fn register(ops: Arc<Ops>) {
    let _ = REGISTRY.set(ops);
}

/// The name of the span an operation's task runs in; its field `op` is the operation's id.
pub const SPAN: &str = "nuwax_op";

/// A tracing layer that adds the log lines (info and above) emitted inside an operation's span
/// to that operation. Installed with the CLI's own subscriber; inert outside `serve`.
pub struct LogLayer;

struct OpId(u64);

impl<S> tracing_subscriber::Layer<S> for LogLayer
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::span::Id,
        ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        if attrs.metadata().name() != SPAN {
            return;
        }
        let mut v = U64Field(None);
        attrs.record(&mut v);
        if let (Some(op), Some(span)) = (v.0, ctx.span(id)) {
            span.extensions_mut().insert(OpId(op));
        }
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: tracing_subscriber::layer::Context<'_, S>) {
        let Some(ops) = REGISTRY.get() else { return };
        let Some(scope) = ctx.event_scope(event) else { return };
        let Some(id) = scope.into_iter().find_map(|s| s.extensions().get::<OpId>().map(|o| o.0)) else {
            return;
        };
        let Some(op) = ops.get(id) else { return };
        let mut msg = Message::default();
        event.record(&mut msg);
        op.log(&event.metadata().level().as_str().to_lowercase(), msg.line());
    }
}

struct U64Field(Option<u64>);

impl tracing::field::Visit for U64Field {
    fn record_u64(&mut self, field: &tracing::field::Field, value: u64) {
        if field.name() == "op" {
            self.0 = Some(value);
        }
    }
    fn record_debug(&mut self, _: &tracing::field::Field, _: &dyn std::fmt::Debug) {}
}

/// The event's message, then its other fields as `name=value`.
#[derive(Default)]
struct Message {
    message: String,
    fields: Vec<String>,
}

impl tracing::field::Visit for Message {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.push(field.name(), value.to_string());
    }
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.push(field.name(), format!("{value:?}"));
    }
}

impl Message {
    fn push(&mut self, name: &str, value: String) {
        match name {
            "message" => self.message = value,
            _ => self.fields.push(format!("{name}={value}")),
        }
    }

    fn line(self) -> String {
        std::iter::once(self.message)
            .chain(self.fields)
            .filter(|s| !s.is_empty())
            .collect::<Vec<_>>()
            .join(" ")
    }
}

// The nuwax console: one page over the JSON API of `nuwax serve` (docs/API.md). Plain JS, no
// build step, no framework; every value from the API reaches the page as text (textContent),
// never as HTML.
//
// What tests/console.rs clicks and reads (keep these stable):
//   #project #version #nuwax-version   project name, its version, nuwax's version
//   #services li[data-service=NAME]    one per service; data-state, data-health
//   #running-operation #unfinished     another operation holding the project / unfinished ones
//   #login-needed                      shown on a 401
//   #op                                the operation being followed; data-op-id, data-kind,
//                                      data-status = running | succeeded | failed | rolled-back
//   #op-title #op-state #op-phase #op-progress #op-bytes #op-item #op-outcome #op-log
//   .error .hint                       an error's message and hint, wherever one is shown
//   #backup-note #backup-now           the note and the button that starts a backup
//   #backups-body tr[data-backup-id=N] one row per backup; data-status
//   [data-testid=download-N]           the archive's download link (a plain GET)
//   [data-testid=verify-N]             verify it
//   [data-testid=restore-N]            show its restore plan
//   #restore-file #restore-upload #upload-progress #restore-msg
//   #restore-plan #plan-title #plan-version #plan-current #plan-created #plan-stop
//   #plan-images #plan-databases #plan-warnings #plan-items
//   #restore-accept-live #restore-start #restore-cancel
//   #confirm #confirm-title #confirm-text #confirm-detail #confirm-ok #confirm-cancel
//   #package-file #package-upload #package-progress #package-path #package-sha256
//   #upgrade-allow-downgrade #upgrade-check #upgrade-msg
//   #upgrade-plan #upgrade-plan-title #upgrade-facts #upgrade-warnings #upgrade-start #upgrade-cancel
//   #upgrades-body tr[data-upgrade-id=N]        one row per upgrade; data-status
//   #prune-check #prune-msg #prune-plan #prune-summary #prune-start
//   #prune-body tr[data-backup-id=N]            one row per backup; class going when removed
'use strict';

const $ = (id) => document.getElementById(id);

/** An element: h('td', {class: 'num'}, 'text', child...). Strings become text nodes. */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : v);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

// ---- formatting (as the CLI prints it) ----

function bytes(n) {
  if (n === null || n === undefined) return '–';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n} B` : `${n.toFixed(1)} ${units[i]}`;
}

function duration(ms) {
  if (ms === null || ms === undefined) return '–';
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  return s < 120 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

/** A catalog timestamp (RFC 3339, nanoseconds) as local "YYYY-MM-DD HH:MM" in a <time>. */
function when(iso) {
  if (!iso) return '–';
  const d = new Date(iso.replace(/(\.\d{3})\d+/, '$1'));
  if (Number.isNaN(d.getTime())) return iso;
  const p = (n) => String(n).padStart(2, '0');
  const text = `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}`;
  return h('time', { datetime: iso, title: d.toString() }, text);
}

function list(items) {
  return items && items.length ? items.join(', ') : 'none';
}

// ---- the API ----

let csrf = null;

class ApiError extends Error {
  constructor(status, doc) {
    super((doc && doc.error) || `HTTP ${status}`);
    this.status = status;
    this.doc = doc || { error: this.message };
  }
}

function notLoggedIn() {
  $('login-needed').hidden = false;
  return new ApiError(401, {
    error: 'Not logged in: open the login URL nuwax serve printed',
    hint: 'the login URL is on the terminal where `nuwax serve` started; `nuwax token new` makes a new one',
  });
}

/** A JSON request; resolves to the answer's JSON, rejects with an ApiError. */
async function api(method, path, body) {
  const headers = {};
  // The session cookie proves who we are; this proves the request comes from this page.
  if (method !== 'GET') headers['X-Nuwax-CSRF'] = csrf || '';
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let res;
  try {
    res = await fetch(`/api${path}`, {
      method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, { error: `cannot reach nuwax serve: ${e.message}`, hint: 'is it still running?' });
  }
  if (res.status === 401) throw notLoggedIn();
  const doc = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, doc);
  return doc;
}

/** POSTs a file as the raw body (an archive or a package), showing the upload in `bar`. */
function upload(path, file, bar) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', `/api${path}`);
    xhr.setRequestHeader('Content-Type', 'application/octet-stream');
    // Header values are Latin-1; the server keeps only safe characters of the name anyway.
    xhr.setRequestHeader('X-Nuwax-Filename', file.name.replace(/[^\x20-\x7e]/g, '_'));
    xhr.setRequestHeader('X-Nuwax-CSRF', csrf || '');
    bar.hidden = false;
    bar.max = file.size || 1;
    bar.value = 0;
    xhr.upload.onprogress = (e) => { bar.value = e.loaded; };
    xhr.upload.onload = () => bar.removeAttribute('value'); // sent: the server verifies it now
    xhr.onload = () => {
      bar.hidden = true;
      let doc = null;
      try { doc = JSON.parse(xhr.responseText); } catch { /* not JSON */ }
      if (xhr.status === 401) reject(notLoggedIn());
      else if (xhr.status >= 200 && xhr.status < 300) resolve(doc);
      else reject(new ApiError(xhr.status, doc));
    };
    xhr.onerror = () => {
      bar.hidden = true;
      reject(new ApiError(0, { error: 'the upload broke off', hint: 'is nuwax serve still running?' }));
    };
    xhr.send(file);
  });
}

// ---- messages ----

/** An error (an ApiError, or an error doc `{error, hint}`) as the CLI shows it: the message,
 * then the hint. */
function errorView(e) {
  let doc = { error: String(e && e.message ? e.message : e) };
  if (e instanceof ApiError) doc = e.doc;
  else if (e && typeof e.error === 'string') doc = e;
  const shown = [h('p', { class: 'error' }, h('strong', {}, 'error: '), doc.error || 'failed')];
  if (doc.hint) shown.push(h('p', { class: 'hint' }, h('strong', {}, 'hint: '), doc.hint));
  return shown;
}

/** Shows `content` in the message area `id` (a string, nodes, or an error), or hides it. */
function say(id, content, kind) {
  const el = $(id);
  if (content === null || content === undefined) {
    el.hidden = true;
    el.replaceChildren();
    return;
  }
  const isError = content instanceof Error;
  el.className = `msg ${isError ? 'bad' : kind || 'info'}`;
  el.setAttribute('role', isError ? 'alert' : 'status');
  el.replaceChildren(...(isError ? errorView(content) : [content].flat()));
  el.hidden = false;
}

// ---- the header: services and unfinished operations ----

let status = null;

async function loadStatus() {
  try {
    status = await api('GET', '/status');
    say('status-msg', null);
  } catch (e) {
    say('status-msg', e);
    return;
  }
  $('version').textContent = status.service_version || 'unknown';
  $('project').textContent = status.project;
  const services = status.services || [];
  // Redrawn only when something changed (it is polled).
  const key = JSON.stringify([services, status.engine_error]);
  if (key !== shownServices) renderServices(services);
  shownServices = key;
  const running = $('running-operation');
  // The operation this page follows holds the lock too: that one is shown below.
  const busy = following ? null : status.running_operation;
  running.hidden = !busy;
  running.textContent = busy ? `Busy: ${busy}` : '';
  // While an operation runs, its own journal row is "unfinished": that one is not news.
  const unfinished = status.running_operation ? [] : status.unfinished_operations || [];
  const box = $('unfinished');
  box.hidden = !unfinished.length;
  box.replaceChildren(
    h('strong', {}, `Unfinished operation${unfinished.length > 1 ? 's' : ''}: `),
    unfinished.map((o) => `${o.kind} (operation ${o.id}, started ${o.started_at}, pid ${o.pid}) `),
    'A nuwax process ended in the middle of it. The next operation finishes or undoes it first ',
    '(or run ', h('code', {}, 'nuwax recover'), ' on the host).',
  );
}

let shownServices = null;

function renderServices(services) {
  $('services').replaceChildren(...services.map((s) => {
    const good = s.state === 'running' && (!s.health || s.health === 'healthy');
    const bad = s.health === 'unhealthy' || ['exited', 'dead', 'restarting'].includes(s.state);
    return h('li', {
      'data-service': s.service, 'data-state': s.state, 'data-health': s.health || '',
      class: good ? 'ok' : bad ? 'bad' : 'warn',
    }, h('span', { class: 'dot', 'aria-hidden': 'true' }), h('strong', {}, s.service), ' ',
    h('span', { class: 'state' }, s.health ? `${s.state}, ${s.health}` : s.state),
    h('span', { class: 'muted small image', title: s.image }, s.image));
  }));
  if (!services.length) {
    $('services').replaceChildren(h('li', { class: 'warn' }, status.engine_error
      ? `The Docker engine does not answer: ${status.engine_error}` : 'No containers of this project.'));
  }
}

// ---- backups ----

let backups = [];

async function loadBackups() {
  try {
    backups = await api('GET', '/backups');
  } catch (e) {
    say('backups-msg', e);
    return;
  }
  const rows = [...backups].sort((a, b) => b.id - a.id).map(backupRow);
  $('backups-body').replaceChildren(...rows);
  $('backups-empty').hidden = rows.length > 0;
  $('backups').hidden = rows.length === 0;
}

function backupRow(b) {
  const complete = b.status === 'complete';
  const flags = [b.live ? 'live' : null, b.stop_killed.length ? `killed at stop: ${b.stop_killed.join(', ')}` : null]
    .filter(Boolean);
  const actions = complete ? [
    h('a', { class: 'button', href: `/api/backups/${b.id}/download`, download: '', 'data-testid': `download-${b.id}`,
      'aria-label': `Download backup ${b.id}` }, 'Download'),
    h('button', { type: 'button', class: 'op-action', 'data-testid': `verify-${b.id}`,
      'aria-label': `Verify backup ${b.id}`, onclick: () => verify(b.id) }, 'Verify'),
    h('button', { type: 'button', class: 'op-action', 'data-testid': `restore-${b.id}`,
      'aria-label': `Restore backup ${b.id}…`, onclick: () => showPlan(b.id) }, 'Restore…'),
  ] : [];
  return h('tr', { 'data-backup-id': b.id, 'data-status': b.status },
    h('td', { 'data-label': 'ID' }, String(b.id)),
    h('td', { 'data-label': 'Kind' }, b.kind, b.note ? h('span', { class: 'note' }, b.note) : null),
    h('td', { 'data-label': 'Status' }, h('span', { class: `pill ${complete ? 'ok' : 'bad'}` }, b.status),
      flags.map((f) => h('span', { class: 'pill warn' }, f)),
      b.error ? h('span', { class: 'note' }, b.error) : null),
    h('td', { 'data-label': 'Version' }, b.service_version),
    h('td', { 'data-label': 'Created' }, when(b.created_at)),
    h('td', { 'data-label': 'Size', class: 'num' }, bytes(b.size_bytes)),
    h('td', { 'data-label': 'Downtime', class: 'num' }, duration(b.downtime_ms)),
    h('td', { class: 'actions' }, actions));
}

async function startBackup(ev) {
  ev.preventDefault();
  const note = $('backup-note').value.trim();
  say('backups-msg', null);
  try {
    const { operation } = await api('POST', '/backups', note ? { note } : {});
    $('backup-note').value = '';
    follow(operation, 'backup', 'Backup');
  } catch (e) {
    say('backups-msg', e);
  }
}

async function verify(id) {
  say('backups-msg', null);
  try {
    const { operation } = await api('POST', `/backups/${id}/verify`);
    follow(operation, 'verify', `Verify backup ${id}`);
  } catch (e) {
    say('backups-msg', e);
  }
}

// ---- following an operation ----

let following = null;

function setBusy(busy) {
  for (const b of document.querySelectorAll('.op-action')) b.disabled = busy;
}

/** Shows operation `id` in the panel, live from its events, until it ends. */
function follow(id, kind, title) {
  if (following) following.close();
  const panel = $('op');
  Object.assign(panel.dataset, { opId: id, kind, status: 'running' });
  panel.hidden = false;
  $('op-title').textContent = title;
  $('op-state').textContent = 'running';
  $('op-state').className = 'pill warn';
  $('op-phase').textContent = 'starting…';
  $('op-outcome').replaceChildren();
  $('op-log').replaceChildren();
  $('op-log-count').textContent = '0';
  $('op-log-box').hidden = true;
  showProgress({ bytes: 0, total: 0, item: '' });
  setBusy(true);
  panel.scrollIntoView({ block: 'nearest' });
  const events = new EventSource(`/api/operations/${id}/events`);
  following = events;
  // Each (re)connection starts with the whole log so far.
  events.onopen = () => { $('op-log').replaceChildren(); };
  events.addEventListener('progress', (e) => showProgress(JSON.parse(e.data)));
  events.addEventListener('log', (e) => addLog(JSON.parse(e.data)));
  events.addEventListener('done', (e) => {
    events.close();
    finished(JSON.parse(e.data));
  });
  events.onerror = () => {
    // Closed for good (a 401, a 404): ask for the operation itself instead.
    if (events.readyState === EventSource.CLOSED) poll(id);
  };
}

async function poll(id) {
  following = null;
  for (;;) {
    try {
      const op = await api('GET', `/operations/${id}`);
      if (op.status !== 'running') return finished(op);
      showProgress(op.progress);
    } catch (e) {
      $('op-outcome').replaceChildren(...errorView(e));
      setBusy(false);
      return undefined;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function showProgress(p) {
  if (p.phase) $('op-phase').textContent = p.phase;
  const bar = $('op-progress');
  if (p.total > 0) {
    bar.max = p.total;
    bar.value = Math.min(p.bytes, p.total);
    $('op-bytes').textContent = `${bytes(p.bytes)} of ${bytes(p.total)} (${Math.floor((100 * p.bytes) / p.total)}%)`;
  } else {
    bar.removeAttribute('value'); // indeterminate
    $('op-bytes').textContent = p.bytes ? bytes(p.bytes) : '';
  }
  $('op-item').textContent = p.item || '';
}

function addLog(line) {
  const log = $('op-log');
  log.append(h('li', { class: `level-${line.level}` }, h('span', { class: 'level' }, line.level), ' ', line.message));
  $('op-log-count').textContent = String(log.children.length);
  $('op-log-box').hidden = false;
  log.scrollTop = log.scrollHeight;
}

function finished(op) {
  following = null;
  const rolledBack = op.status === 'failed' && op.error && op.error.exit_code === 11;
  const status = rolledBack ? 'rolled-back' : op.status;
  $('op').dataset.status = status;
  const state = $('op-state');
  state.textContent = { succeeded: 'done', failed: 'failed', 'rolled-back': 'failed, rolled back' }[status] || status;
  state.className = `pill ${status === 'succeeded' ? 'ok' : 'bad'}`;
  if (op.log && $('op-log').children.length === 0) op.log.forEach(addLog);
  if (op.status === 'succeeded') {
    // Progress is sent at most a few times a second: the last bytes may not have been.
    showProgress({ ...op.progress, bytes: op.progress.total, item: '' });
    if (!op.progress.total) {
      $('op-progress').max = 1;
      $('op-progress').value = 1;
    }
    $('op-phase').textContent = 'Done.';
  } else {
    $('op-item').textContent = '';
    $('op-phase').textContent = rolledBack
      ? 'The upgrade failed and was rolled back: the services run the version from before it.'
      : 'Failed.';
  }
  const shown = op.status === 'succeeded' ? outcome(op.kind, op.result) : errorView(op.error || {});
  $('op-outcome').replaceChildren(...shown.filter(Boolean));
  setBusy(false);
  refresh();
  if (op.kind === 'prune') $('prune-plan').hidden = true;
  if (op.kind === 'rollback') $('restore-plan').hidden = true;
  if (op.kind === 'upgrade') $('upgrade-plan').hidden = true;
}

/** What a succeeded operation did, from its result (the CLI's --json output). */
function outcome(kind, r) {
  const p = (...parts) => h('p', { class: 'result' }, ...parts);
  switch (kind) {
    case 'backup':
      return [p(h('strong', {}, `Backup ${r.id} complete`), `: ${bytes(r.size_bytes)}, ${r.file_count} files, `
        + `downtime ${duration(r.downtime_ms)}, took ${duration(r.duration_ms)}.`),
      r.live ? p('It was copied while the services ran: not one point in time.') : null];
    case 'verify':
      return [p(h('strong', {}, `Backup ${r.id} verified`), ': every byte matches its checksum.')];
    case 'rollback':
      return [p(h('strong', {}, `Restored backup ${r.backup_id}`), ` in ${duration(r.duration_ms)} `
        + `(downtime ${duration(r.downtime_ms)}); services started: ${list(r.services_started)}.`),
      p(`The state before it is kept as backup ${r.safety_backup_id}: restore that one to undo this restore.`)];
    case 'upgrade':
      return [p(h('strong', {}, `Upgraded from ${r.from_version} to ${r.to_version}`), ` (upgrade ${r.upgrade_id}) `
        + `in ${duration(r.duration_ms)}, downtime ${duration(r.downtime_ms)}.`),
      p(`Backup ${r.backup_id} holds the state before it; running: ${list(r.services)}.`)];
    case 'prune':
      return [p(h('strong', {}, r.removed.length ? `Removed ${r.removed.length} backup(s)` : 'Nothing removed'),
        r.removed.length ? ` (${r.removed.join(', ')}), freed ${bytes(r.freed_bytes)}.` : '.')];
    default:
      return [p('Done.')];
  }
}

// ---- restore ----

let planned = null;

async function showPlan(id) {
  $('restore-plan').hidden = true;
  planned = null;
  say('restore-msg', `Checking backup ${id}: reading the whole archive…`);
  $('restore').scrollIntoView({ block: 'start' });
  let plan;
  try {
    plan = await api('GET', `/backups/${id}/plan`);
  } catch (e) {
    say('restore-msg', e);
    return;
  }
  say('restore-msg', null);
  planned = plan;
  const rec = backups.find((b) => b.id === id) || {};
  $('plan-title').textContent = `Restore backup ${id}`;
  $('plan-version').textContent = plan.service_version || 'unknown';
  $('plan-current').textContent = (status && status.service_version) || 'unknown';
  $('plan-created').replaceChildren(when(plan.created_at));
  $('plan-stop').textContent = list(plan.services_to_stop);
  const moved = (plan.images || []).filter((i) => i.image_id !== i.current_id);
  $('plan-images').textContent = moved.length
    ? moved.map((i) => `${i.service}: ${i.image} back to ${i.image_id.replace('sha256:', '').slice(0, 12)}`).join(', ')
    : 'as they are';
  $('plan-databases').textContent = list((plan.loads || []).map((l) => `${l.service} (${l.server}, `
    + `${l.dumps.length} dump${l.dumps.length === 1 ? '' : 's'})`));
  const warnings = [...(plan.warnings || [])];
  if (status && plan.service_version && status.service_version && plan.service_version !== status.service_version) {
    warnings.unshift(`Version ${status.service_version} runs now; this backup brings back version ${plan.service_version}.`);
  }
  $('plan-warnings').replaceChildren(...warnings.map((w) => h('li', {}, w)));
  $('plan-items').replaceChildren(...plan.items.map((it) => h('tr', {},
    h('td', { 'data-label': 'What' }, it.kind === 'bind' ? 'bind mount' : it.kind, it.create ? ' (created)' : ''),
    h('td', { 'data-label': 'Where' }, h('span', { class: 'mono' }, it.kind === 'volume' ? it.name : it.dest)),
    h('td', { 'data-label': 'Size', class: 'num' }, bytes(it.size)),
    h('td', { 'data-label': 'Files', class: 'num' }, String(it.file_count)))));
  $('plan-live-row').hidden = !rec.live;
  $('restore-accept-live').checked = false;
  $('restore-plan').hidden = false;
  $('plan-title').focus();
}

async function startRestore() {
  if (!planned) return;
  const id = planned.backup_id;
  const counts = {};
  for (const it of planned.items) counts[it.kind] = (counts[it.kind] || 0) + 1;
  const what = Object.entries(counts).map(([k, n]) => `${n} ${k === 'bind' ? 'bind mount' : k}${n > 1 ? 's' : ''}`);
  const ok = await confirmDialog('Restore', 'Restore will replace all data. Continue?',
    `Backup ${id} (version ${planned.service_version}) replaces ${what.join(', ')}; the services stop meanwhile. `
    + 'A safety backup of the current state is made first.', 'Restore');
  if (!ok) return;
  try {
    const { operation } = await api('POST', `/backups/${id}/rollback`,
      { confirm: true, accept_live: $('restore-accept-live').checked });
    follow(operation, 'rollback', `Restore backup ${id}`);
  } catch (e) {
    say('restore-msg', e);
  }
}

async function uploadArchive(ev) {
  ev.preventDefault();
  const file = $('restore-file').files[0];
  if (!file) return;
  $('restore-plan').hidden = true;
  say('restore-msg', `Uploading ${file.name} (${bytes(file.size)}); it is verified once it is here…`);
  try {
    const doc = await upload('/imports', file, $('upload-progress'));
    const id = doc.record ? doc.record.id : doc.id;
    $('restore-file').value = '';
    await loadBackups();
    await showPlan(id);
    if (!$('restore-plan').hidden) {
      $('restore-msg').hidden = false;
      say('restore-msg', `${file.name} verified and added as backup ${id}.`, 'ok');
    }
  } catch (e) {
    say('restore-msg', e);
  }
}

// ---- upgrade ----

let upgradePlan = null;
/** What the upload of a package said (its path and sha256), kept beside the plan. */
let uploadNote = null;

async function uploadPackage(ev) {
  ev.preventDefault();
  const file = $('package-file').files[0];
  if (!file) return;
  say('upgrade-msg', `Uploading ${file.name} (${bytes(file.size)})…`);
  try {
    const doc = await upload('/packages', file, $('package-progress'));
    $('package-file').value = '';
    $('package-path').value = doc.package;
    const given = $('package-sha256').value.trim();
    if (!given) $('package-sha256').value = doc.sha256;
    uploadNote = given ? `Uploaded as ${doc.package}.` : `Uploaded as ${doc.package}, sha256 ${doc.sha256}: `
      + 'compare it with the one its publisher gives.';
    await checkUpgrade();
  } catch (e) {
    say('upgrade-msg', e);
  }
}

function packageBody() {
  const sha = $('package-sha256').value.trim();
  const body = { package: $('package-path').value.trim(), ...(sha ? { sha256: sha } : {}) };
  if ($('upgrade-allow-downgrade').checked) body.allow_downgrade = true;
  return body;
}

async function checkUpgrade(ev) {
  if (ev) ev.preventDefault();
  $('upgrade-plan').hidden = true;
  upgradePlan = null;
  const body = packageBody();
  if (!body.package) return;
  say('upgrade-msg', `${uploadNote || ''} Checking the package (preflight)…`);
  let plan;
  try {
    plan = await api('POST', '/upgrades/plan', body);
  } catch (e) {
    say('upgrade-msg', e);
    return;
  }
  say('upgrade-msg', uploadNote, 'ok');
  upgradePlan = { plan, body };
  $('upgrade-plan-title').textContent = `Upgrade ${plan.package_name} from ${plan.from_version} to ${plan.to_version}`;
  const env = plan.env || { set: {}, unset: [] };
  const envChanges = [...Object.entries(env.set || {}).map(([k, v]) => `${k}=${v}`), ...(env.unset || []).map((k) => `unset ${k}`)];
  const facts = [
    ['Package', h('span', { class: 'mono' }, plan.package_source)],
    ['sha256', h('span', { class: 'mono' }, plan.package_sha256)],
    ['Files', list((plan.files || []).map((f) => `${f.action} ${f.dest}`))],
    [`Changes in ${env.file || '.env'}`, list(envChanges)],
    ['Images', list((plan.images || []).map((i) => `${i.service}: ${i.image} (${i.source})`))],
    ['Services stopped', list(plan.services_to_stop)],
    ['Hooks', list((plan.hooks || []).map((x) => x.name))],
    ['Health checks', list((plan.probes || []).map((x) => x.name))],
    ['Backup first', plan.backup],
  ];
  $('upgrade-facts').replaceChildren(...facts.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  $('upgrade-warnings').replaceChildren(...(plan.warnings || []).map((w) => h('li', {}, w)));
  $('upgrade-plan').hidden = false;
  $('upgrade-plan-title').focus();
}

async function startUpgrade() {
  if (!upgradePlan) return;
  const { plan, body } = upgradePlan;
  const ok = await confirmDialog('Upgrade', `Upgrade from version ${plan.from_version} to ${plan.to_version}?`,
    `The services stop (${list(plan.services_to_stop)}), a backup is made, then version ${plan.to_version} starts. `
    + 'If it fails, nuwax rolls back to that backup.', 'Upgrade');
  if (!ok) return;
  try {
    const { operation } = await api('POST', '/upgrades', { ...body, confirm: true });
    follow(operation, 'upgrade', `Upgrade to ${plan.to_version}`);
  } catch (e) {
    say('upgrade-msg', e);
  }
}

async function loadUpgrades() {
  let ups;
  try {
    ups = await api('GET', '/upgrades');
  } catch {
    return; // the status line says what is wrong
  }
  $('upgrades-body').replaceChildren(...ups.map((u) => {
    const tone = { upgraded: 'ok', running: 'warn', rolled_back: 'warn' }[u.status] || 'bad';
    return h('tr', { 'data-upgrade-id': u.id, 'data-status': u.status },
      h('td', { 'data-label': 'ID' }, String(u.id)),
      h('td', { 'data-label': 'Versions' }, `${u.from_version} → ${u.to_version}`),
      h('td', { 'data-label': 'Outcome' }, h('span', { class: `pill ${tone}` }, u.status.replace('_', ' ')),
        u.cause ? h('span', { class: 'note' }, u.cause) : null),
      h('td', { 'data-label': 'Started' }, when(u.started_at)),
      h('td', { 'data-label': 'Downtime', class: 'num' }, duration(u.downtime_ms)),
      h('td', { 'data-label': 'Backup' }, u.backup_id ? String(u.backup_id) : '–'),
      h('td', { 'data-label': 'Package' }, h('span', { class: 'mono' }, u.package_name)));
  }));
  $('upgrades-empty').hidden = ups.length > 0;
  $('upgrades').hidden = ups.length === 0;
}

// ---- prune ----

let prunePlan = null;

async function checkPrune() {
  $('prune-plan').hidden = true;
  say('prune-msg', 'Asking the retention policy…');
  try {
    prunePlan = await api('GET', '/prune/plan');
  } catch (e) {
    say('prune-msg', e);
    return;
  }
  say('prune-msg', null);
  const going = prunePlan.items.filter((i) => !i.keep);
  const freed = going.reduce((n, i) => n + (i.size_bytes || 0), 0);
  $('prune-summary').textContent = going.length
    ? `${going.length} backup(s) would be removed (${going.map((i) => i.id).join(', ')}), freeing ${bytes(freed)}.`
    : 'Nothing would be removed: the policy keeps every backup.';
  $('prune-body').replaceChildren(...prunePlan.items.map((i) => h('tr', { 'data-backup-id': i.id, class: i.keep ? '' : 'going' },
    h('td', { 'data-label': 'ID' }, String(i.id)),
    h('td', { 'data-label': 'Kind' }, i.kind),
    h('td', { 'data-label': 'Created' }, when(i.created_at)),
    h('td', { 'data-label': 'Size', class: 'num' }, bytes(i.size_bytes)),
    h('td', { 'data-label': 'Verdict' }, h('span', { class: `pill ${i.keep ? 'ok' : 'bad'}` }, i.keep ? 'keep' : 'remove')),
    h('td', { 'data-label': 'Why' }, (i.reasons || []).join('; ')))));
  $('prune-start').hidden = going.length === 0;
  $('prune-plan').hidden = false;
  $('prune-summary').focus();
}

async function startPrune() {
  const going = prunePlan ? prunePlan.items.filter((i) => !i.keep) : [];
  if (!going.length) return;
  const ok = await confirmDialog('Prune', `Delete ${going.length} backup(s)? This cannot be undone.`,
    `Backups ${going.map((i) => i.id).join(', ')} and their archives are removed; the newest complete backup is verified first.`,
    'Delete');
  if (!ok) return;
  try {
    const { operation } = await api('POST', '/prune', { confirm: true });
    follow(operation, 'prune', 'Prune');
  } catch (e) {
    say('prune-msg', e);
  }
}

// ---- the confirmation dialog ----

/** Asks in the modal dialog; resolves to true when the user confirms. */
function confirmDialog(title, text, detail, okLabel) {
  const dialog = $('confirm');
  $('confirm-title').textContent = title;
  $('confirm-text').textContent = text;
  $('confirm-detail').textContent = detail;
  $('confirm-ok').textContent = okLabel;
  dialog.returnValue = '';
  const opener = document.activeElement;
  dialog.showModal();
  $('confirm-cancel').focus(); // the safe choice first
  return new Promise((resolve) => {
    dialog.addEventListener('close', () => {
      if (opener && opener.focus) opener.focus();
      resolve(dialog.returnValue === 'ok');
    }, { once: true });
  });
}

// ---- start ----

async function refresh() {
  // Not side by side: a listing briefly takes the project lock (to finish what a dead nuwax
  // left), and the status would take that for another operation.
  await loadBackups();
  await loadStatus();
  await loadUpgrades();
}

async function start() {
  $('backup-form').addEventListener('submit', startBackup);
  $('restore-form').addEventListener('submit', uploadArchive);
  $('restore-start').addEventListener('click', startRestore);
  $('restore-cancel').addEventListener('click', () => { $('restore-plan').hidden = true; planned = null; });
  $('package-form').addEventListener('submit', uploadPackage);
  $('upgrade-form').addEventListener('submit', checkUpgrade);
  $('package-path').addEventListener('input', () => { uploadNote = null; });
  $('upgrade-start').addEventListener('click', startUpgrade);
  $('upgrade-cancel').addEventListener('click', () => { $('upgrade-plan').hidden = true; upgradePlan = null; });
  $('prune-check').addEventListener('click', checkPrune);
  $('prune-start').addEventListener('click', startPrune);
  let session;
  try {
    session = await api('GET', '/session');
  } catch (e) {
    say('status-msg', e);
    return;
  }
  csrf = session.csrf;
  $('project').textContent = session.project;
  $('nuwax-version').textContent = session.version;
  document.title = `${session.project}: nuwax console`;
  await refresh();
  // An operation still running (the page was reloaded): follow it again.
  const ops = await api('GET', '/operations').catch(() => []);
  const running = ops.find((o) => o.status === 'running');
  if (running) follow(running.id, running.kind, `${running.kind[0].toUpperCase()}${running.kind.slice(1)} (operation ${running.id})`);
  // Services change state on their own (a crash, another operator's CLI).
  setInterval(() => { if (!document.hidden && !following) loadStatus(); }, 5000);
}

start();

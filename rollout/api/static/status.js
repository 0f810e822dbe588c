// The status page: every rollout with its progress, last verdict and a chart of its windows.
//
// People watch rollouts here; the page reads the same HTTP API as the `rollout` CLI
// (GET /api/v1/rollouts, GET /api/v1/rollouts/{id}/series) and redraws in place every few
// seconds. The list comes as summaries, page by page (cheap however many rollouts there are
// and however long they ran); a rollout's whole document and chart are fetched only for the
// cards shown in detail: the first DETAILED ones (active on top) and any a person opens. Only parts whose data changed are rebuilt, so nothing flickers and the reading
// position stays put. Every string from the API goes into the page as text, never as markup.
// Nothing here loads from anywhere but the controller that served the page.
//
// Operators also steer rollouts from here: GET /api/v1/session says what the token may do, and
// an operator's card of an active rollout offers the commands of its phase, sent like the
// CLI's (POST /api/v1/rollouts/{id}/pause|resume|promote|abort). The engine applies them at
// its next look; the card shows the new phase at the next refresh, which the page asks for at
// once.
(function () {
  "use strict";

  const REFRESH_MS = 2500;
  const HIDDEN_REFRESH_MS = 15000; // a background tab needs no fresh numbers every 2.5 s
  const REQUEST_TIMEOUT_MS = 8000;
  const SERIES_WINDOWS = 240;
  const RECENT = 100; // finished rollouts shown: the newest ones
  const DETAILED = 12; // cards shown in detail without being opened: the first ones
  const PAGE = 1000; // summaries per list request (the API's most)
  const MAX_PAGES = 50; // a bound on one refresh's list requests
  const ACTIVE_QUERY = ["pending", "preparing", "progressing", "paused", "promoting",
    "rolling_back"].map((phase) => "phase=" + phase).join("&");
  const TOKEN_KEY = "rollout.api-token";
  const TERMINAL = new Set(["succeeded", "rolled_back", "aborted", "failed"]);
  // A glyph with each word: the phase reads without colour.
  const PHASES = {
    pending: ["\u2026", "pending"],
    preparing: ["\u25d4", "preparing"],
    progressing: ["\u25b6", "progressing"],
    paused: ["\u275a\u275a", "paused"],
    promoting: ["\u21e7", "promoting"],
    succeeded: ["\u2713", "succeeded"],
    rolling_back: ["\u21b6", "rolling back"],
    rolled_back: ["\u21a9", "rolled back"],
    aborted: ["\u25a0", "aborted"],
    failed: ["\u2717", "failed"],
  };
  const STRATEGIES = { canary: "canary", ab: "A/B", blue_green: "blue/green" };
  const OUTCOMES = {
    pass: ["\u2713", "pass"],
    fail: ["\u2717", "fail"],
    inconclusive: ["?", "inconclusive"],
  };
  // The chart's geometry, in viewBox units.
  const CHART = { width: 640, height: 336, left: 58, right: 14 };
  const PANELS = [
    { metric: "error_rate", title: "5xx error rate", top: 44, bottom: 154, format: percent,
      floor: 0.001 },
    { metric: "p99_ms", title: "p99 latency", top: 204, bottom: 314, format: millis, floor: 1 },
  ];
  const ARMS = ["candidate", "baseline"];
  const MAX_POINT_MARKERS = 90;
  // The commands, keyed by data-action (the API's command kinds). A destructive one asks for
  // a second click within CONFIRM_MS instead of a dialog; `says` names the command with its
  // rollout, for screen readers.
  const ACTIONS = {
    pause: { label: "Pause", word: "pause", path: "pause", body: {},
      says: (name) => "pause " + name, title: "Hold the rollout at its current step" },
    resume: { label: "Resume", word: "resume", path: "resume", body: {},
      says: (name) => "resume " + name,
      title: "Resume the rollout, re-asserting its current step" },
    promote: { label: "Promote", word: "promote", path: "promote", body: {},
      says: (name) => "promote " + name + " to its next step", title: "Skip to the next step" },
    promote_full: { label: "Promote fully", word: "promote fully", path: "promote",
      body: { full: true }, confirm: true, says: (name) => "promote " + name + " fully, to 100 %",
      title: "Send all traffic to the candidate now" },
    abort: { label: "Abort", word: "abort", path: "abort", body: {}, confirm: true,
      says: (name) => "abort " + name,
      title: "Roll back to the baseline and end the rollout as aborted" },
  };
  // What each phase may be told; promoting and rolling back run to their end.
  const OFFERED = {
    pending: ["abort"],
    preparing: ["abort"],
    progressing: ["pause", "promote", "promote_full", "abort"],
    paused: ["resume", "promote", "abort"],
  };
  const CONFIRM_MS = 5000;

  const byId = (id) => document.getElementById(id);
  const SVG_NS = byId("svg-proto").namespaceURI;
  const LOGIN_MESSAGE = byId("login-message").textContent;
  const cards = new Map(); // rollout id -> card
  const seriesCache = new Map(); // rollout id -> {key, data}
  const detailCache = new Map(); // rollout id -> {key, data}: whole documents of detailed cards
  const opened = new Set(); // ids of the cards a person opened beyond the first DETAILED
  let token = readToken();
  let timer = null;
  let busy = false;
  let lastSuccess = null;
  let failingSince = null;
  let waitingForToken = false;
  let again = false; // a refresh was asked for while one ran: run another right after it
  let session = null; // {role, auth} of the current token; null: not known yet

  class ApiError extends Error {
    constructor(status, body) {
      const error = body && body.error ? body.error : {};
      super(error.message || "HTTP " + status);
      this.status = status;
      this.code = error.code || null;
    }
  }

  class Unreachable extends Error {}

  // ---- talking to the API ----------------------------------------------------------------

  function readToken() {
    try {
      return window.sessionStorage.getItem(TOKEN_KEY);
    } catch (_error) {
      return null; // storage disabled: the token lives as long as the page
    }
  }

  function keepToken(value) {
    token = value;
    try {
      if (value) {
        window.sessionStorage.setItem(TOKEN_KEY, value);
      } else {
        window.sessionStorage.removeItem(TOKEN_KEY);
      }
    } catch (_error) {
      // Storage disabled: keep it in memory only.
    }
    byId("forget-token").hidden = !value;
    // Another token may have another role: ask again before offering anything.
    showSession(null);
  }

  // GET by default; with `body`, a POST of that body as JSON.
  async function api(path, body) {
    const headers = { Accept: "application/json" };
    if (token) {
      headers.Authorization = "Bearer " + token;
    }
    const init = { headers, cache: "no-store" };
    if (body !== undefined) {
      init.method = "POST";
      // Both need a CORS preflight, which the API never grants: a page on another origin
      // cannot send them, and the API refuses a state-changing request without them.
      headers["Content-Type"] = "application/json";
      headers["X-Rollout-Client"] = "status-page";
      init.body = JSON.stringify(body);
    }
    const abort = new AbortController();
    init.signal = abort.signal;
    const timeout = window.setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      throw new Unreachable(error && error.name === "AbortError"
        ? "no answer within " + REQUEST_TIMEOUT_MS / 1000 + " s" : "connection failed");
    } finally {
      window.clearTimeout(timeout);
    }
    if (!response.ok) {
      let body = null;
      try {
        body = await response.json();
      } catch (_error) {
        body = null; // a proxy's HTML error page, say
      }
      throw new ApiError(response.status, body);
    }
    return response.json();
  }

  async function listAll(query) {
    // Every page of a list: follow next_cursor until the API says there is no more.
    let rollouts = [];
    let cursor = null;
    for (let pages = 0; pages < MAX_PAGES; pages += 1) {
      const answer = await api("/api/v1/rollouts?view=summary&limit=" + PAGE + "&" + query +
        (cursor ? "&cursor=" + encodeURIComponent(cursor) : ""));
      rollouts = rollouts.concat(answer.rollouts || []);
      cursor = answer.next_cursor;
      if (!cursor) {
        break;
      }
    }
    return rollouts;
  }

  async function loadDetail(summary) {
    // The whole document of one rollout, fetched again only when the rollout changed.
    const key = summary.updated_at + "|" + summary.phase;
    const cached = detailCache.get(summary.id);
    if (cached && cached.key === key) {
      return cached.data;
    }
    try {
      const data = await api("/api/v1/rollouts/" + encodeURIComponent(summary.id));
      detailCache.set(summary.id, { key, data });
      return data;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        throw error;
      }
      return cached ? cached.data : null;
    }
  }

  async function loadSeries(rollout) {
    // A rollout changes its updated_at with every decision; until then its series is the same.
    const key = rollout.updated_at + "|" + rollout.phase;
    const cached = seriesCache.get(rollout.id);
    if (cached && cached.key === key) {
      return cached.data;
    }
    try {
      const data = await api("/api/v1/rollouts/" + encodeURIComponent(rollout.id) +
        "/series?limit=" + SERIES_WINDOWS);
      seriesCache.set(rollout.id, { key, data });
      return data;
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        throw error;
      }
      // One chart that cannot be read now does not stop the rest of the page.
      return cached ? cached.data : { error: error.message };
    }
  }

  async function loadSession() {
    const asked = token;
    let answer = null;
    try {
      answer = await api("/api/v1/session");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        throw error;
      }
      // No commands offered until the role is known; the next refresh asks again.
      return;
    }
    if (token === asked) {
      showSession({ role: answer.role === "operator" ? "operator" : "viewer",
        auth: answer.auth !== false });
    }
  }

  function showSession(value) {
    session = value;
    const box = byId("session");
    if (value) {
      document.body.dataset.role = value.role;
      box.textContent = value.auth ? value.role + " token" +
        (value.role === "viewer" ? ", read only" : "") : "open API, no token needed";
    } else {
      delete document.body.dataset.role;
    }
    box.hidden = !value;
  }

  // ---- the refresh loop --------------------------------------------------------------------

  function schedule() {
    window.clearTimeout(timer);
    const soon = again;
    again = false;
    if (waitingForToken) {
      return;
    }
    timer = window.setTimeout(refresh, soon ? 0 : document.hidden ? HIDDEN_REFRESH_MS
      : REFRESH_MS);
  }

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    try {
      // Every active rollout, however old, and the newest others: summaries only.
      const [active, recent] = await Promise.all([
        listAll(ACTIVE_QUERY),
        api("/api/v1/rollouts?view=summary&limit=" + RECENT),
      ]);
      const byRollout = new Map();
      for (const rollout of (recent.rollouts || []).concat(active)) {
        byRollout.set(rollout.id, rollout); // the later answer wins
      }
      const summaries = ordered([...byRollout.values()]);
      const detailed = summaries.map((rollout, index) => index < DETAILED ||
        opened.has(rollout.id));
      // Details and charts for the cards shown in detail only, each cached until it changes.
      const [details, series] = await Promise.all([
        Promise.all(summaries.map((rollout, index) => detailed[index] ? loadDetail(rollout)
          : null)),
        Promise.all(summaries.map((rollout, index) => detailed[index] ? loadSeries(rollout)
          : null)),
      ]);
      if (!session) {
        await loadSession();
      }
      byId("login").hidden = true;
      const rollouts = summaries.map((rollout, index) => details[index]
        ? Object.assign({}, details[index], { phase: rollout.phase }) : rollout);
      const shown = summaries.map((rollout, index) => Boolean(details[index]));
      render(rollouts, series, shown, (recent.rollouts || []).length >= RECENT);
      lastSuccess = new Date();
      failingSince = null;
      setConnection("live", "Live", "updated " + clock(lastSuccess) + ", every " +
        REFRESH_MS / 1000 + " s");
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) {
        askForToken(token ? "The token was refused. Enter a valid one." : null);
        keepToken(null);
      } else {
        failingSince = failingSince || new Date();
        const since = " since " + clock(failingSince);
        const last = lastSuccess ? "; last update " + clock(lastSuccess) : "";
        if (error instanceof ApiError) {
          setConnection("error", "Error", "the controller answered " + error.status + ": " +
            error.message + since + last + "; retrying");
        } else if (error instanceof Unreachable) {
          setConnection("down", "Unreachable", "controller unreachable (" + error.message +
            ")" + since + last + "; retrying");
        } else {
          // A fault of the page itself (an answer it could not read or draw): say so.
          window.console.error(error);
          setConnection("error", "Error", "the page could not show the answer (" +
            error.message + ")" + since + last + "; retrying");
        }
        byId("rollouts").classList.add("stale");
      }
    } finally {
      busy = false;
      schedule();
    }
  }

  function setConnection(state, word, detail) {
    const box = byId("connection");
    box.dataset.state = state;
    byId("connection-state").textContent = word;
    byId("connection-detail").textContent = detail;
    if (state === "live") {
      byId("rollouts").classList.remove("stale");
    }
  }

  function askForToken(message) {
    waitingForToken = true;
    const login = byId("login");
    byId("login-message").textContent = message || LOGIN_MESSAGE;
    login.hidden = false;
    byId("summary").hidden = true;
    byId("empty").hidden = true;
    byId("rollouts").replaceChildren();
    for (const card of cards.values()) {
      window.clearTimeout(card.confirmTimer);
    }
    cards.clear();
    seriesCache.clear();
    detailCache.clear();
    setConnection("auth", "Token needed", "the API answered 401 Unauthorized");
    byId("token-input").focus();
  }

  function ordered(rollouts) {
    // Active rollouts on top, then newest first within each group.
    return rollouts.slice().sort((a, b) => {
      const activeA = TERMINAL.has(a.phase) ? 1 : 0;
      const activeB = TERMINAL.has(b.phase) ? 1 : 0;
      if (activeA !== activeB) {
        return activeA - activeB;
      }
      return Date.parse(b.created_at) - Date.parse(a.created_at);
    });
  }

  // ---- rendering ---------------------------------------------------------------------------

  function render(rollouts, series, shown, truncated) {
    const container = byId("rollouts");
    const seen = new Set();
    rollouts.forEach((rollout, index) => {
      let card = cards.get(rollout.id);
      if (!card) {
        card = createCard(rollout);
        cards.set(rollout.id, card);
      }
      updateCard(card, rollout, series[index], shown[index], index < DETAILED);
      // Move a card only when its place changed: nodes left alone do not repaint.
      const here = container.children[index];
      if (here !== card.root) {
        container.insertBefore(card.root, here || null);
      }
      seen.add(rollout.id);
    });
    for (const [id, card] of cards) {
      if (!seen.has(id)) {
        window.clearTimeout(card.confirmTimer);
        card.root.remove();
        cards.delete(id);
        seriesCache.delete(id);
        detailCache.delete(id);
        opened.delete(id);
      }
    }
    renderSummary(rollouts, truncated);
  }

  function renderSummary(rollouts, truncated) {
    const summary = byId("summary");
    byId("empty").hidden = rollouts.length > 0;
    summary.hidden = rollouts.length === 0;
    const counts = new Map();
    let active = 0;
    for (const rollout of rollouts) {
      if (TERMINAL.has(rollout.phase)) {
        const word = phaseWord(rollout.phase);
        counts.set(word, (counts.get(word) || 0) + 1);
      } else {
        active += 1;
      }
    }
    const parts = [active + " active"];
    for (const [word, count] of counts) {
      parts.push(count + " " + word);
    }
    const text = plural(rollouts.length, "rollout") + ": " + parts.join(", ") +
      (truncated ? " (older finished rollouts: rollout list)" : "");
    if (summary.textContent !== text) {
      summary.textContent = text;
    }
  }

  function createCard(rollout) {
    const root = el("article", { class: "rollout", id: "rollout-" + rollout.id });
    root.dataset.rolloutId = rollout.id;
    root.setAttribute("aria-labelledby", "title-" + rollout.id);
    const head = el("div", { class: "card-head" });
    const body = el("div", { class: "card-body" });
    const details = el("div", { class: "details" });
    const card = {
      root,
      rollout,
      title: el("h2", { class: "title", id: "title-" + rollout.id }),
      actions: el("div", { class: "actions", role: "group", hidden: "" }),
      phase: el("p", { class: "phase" }),
      actionStatus: el("p", { class: "action-status", role: "status", hidden: "" }),
      facts: el("dl", { class: "facts" }),
      progress: el("div", { class: "progress" }),
      note: el("p", { class: "note" }),
      next: el("p", { class: "next", role: "status" }),
      verdict: el("section", { class: "verdict" }),
      report: el("section", { class: "report", hidden: "" }),
      body,
      brief: el("p", { class: "brief", hidden: "" }),
      toggle: el("button", { type: "button", class: "details-toggle", hidden: "" },
        "Show details"),
      chart: el("figure", { class: "chart" }),
      signatures: {},
      buttons: new Map(), // data-action -> button
      confirming: null, // the action waiting for its second click
      confirmTimer: null,
      sending: null, // the action in flight
      outcome: null, // {text, state} of the last action
    };
    card.verdict.setAttribute("aria-label", "Last verdict");
    card.report.setAttribute("aria-label", "A/B report");
    card.toggle.addEventListener("click", () => {
      // Opening fetches the rollout's document and chart at once; closing forgets them.
      if (opened.has(card.rollout.id)) {
        opened.delete(card.rollout.id);
      } else {
        opened.add(card.rollout.id);
      }
      again = true;
      schedule();
    });
    card.actions.addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (button) {
        act(card, button.dataset.action);
      }
    });
    card.actions.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && card.confirming) {
        setConfirming(card, null);
      }
    });
    head.append(card.title, el("div", { class: "head-side" }, card.actions, card.phase));
    details.append(card.facts, card.progress, card.next, card.note, card.verdict, card.report);
    body.append(details, card.chart);
    root.append(head, card.actionStatus, card.brief, card.toggle, body);
    return card;
  }

  // Rebuild one part of a card only when what it shows changed.
  function part(card, name, inputs, build) {
    const signature = JSON.stringify(inputs);
    if (card.signatures[name] === signature) {
      return;
    }
    card.signatures[name] = signature;
    build();
  }

  function updateCard(card, rollout, series, detailed, always) {
    card.rollout = rollout;
    card.body.hidden = !detailed;
    card.brief.hidden = detailed;
    card.toggle.hidden = always;
    card.toggle.textContent = detailed ? "Hide details" : "Show details";
    card.toggle.setAttribute("aria-expanded", detailed ? "true" : "false");
    card.root.dataset.phase = rollout.phase;
    part(card, "title", [rollout.endpoint, rollout.name], () => {
      card.title.replaceChildren(
        el("span", { class: "endpoint" }, rollout.endpoint),
        rollout.name ? el("span", { class: "label" }, rollout.name) : "",
      );
    });
    part(card, "phase", [rollout.phase], () => {
      card.phase.dataset.phase = rollout.phase;
      card.phase.replaceChildren(
        el("span", { class: "glyph", "aria-hidden": "true" }, phaseGlyph(rollout.phase)),
        el("span", { class: "visually-hidden" }, "Phase: "),
        el("span", { class: "word" }, phaseWord(rollout.phase)),
      );
    });
    if (!detailed) {
      // A summary: one line, and the commands; the rest waits until the card is opened.
      part(card, "brief", briefInputs(rollout), () => {
        card.brief.textContent = briefText(rollout);
      });
      part(card, "actions", [session && session.role, rollout.phase, rollout.endpoint,
        rollout.name], () => renderActions(card, rollout));
      return;
    }
    part(card, "facts", factsInputs(rollout), () => renderFacts(card.facts, rollout));
    const following = rollout.next || {};
    part(card, "progress", [rollout.phase, rollout.step, rollout.steps, rollout.strategy,
      rollout.candidate_weight, rollout.skipped_steps, following.stage, following.live_step,
      following.step], () => renderProgress(card.progress, rollout));
    part(card, "next", [following.summary, rollout.phase], () => {
      // What happens next, in the API's words: time left, what the next step waits on.
      const text = TERMINAL.has(rollout.phase) ? "" : following.summary || "";
      card.next.replaceChildren(el("strong", {}, "Next: "), text);
      card.next.dataset.stage = following.stage || "";
      card.next.hidden = !text;
    });
    part(card, "report", [rollout.report, rollout.strategy, rollout.plan && rollout.plan.objective],
      () => renderReport(card.report, rollout));
    part(card, "note", [rollout.pause_reason, rollout.ending_reason], () => {
      const text = rollout.ending_reason
        ? (TERMINAL.has(rollout.phase) ? "Ended: " : "Ending: ") + rollout.ending_reason
        : rollout.pause_reason ? "Paused: " + rollout.pause_reason : "";
      card.note.textContent = text;
      card.note.hidden = !text;
    });
    part(card, "verdict", [rollout.last_verdict], () => renderVerdict(card.verdict, rollout));
    part(card, "chart", [series, rollout.phase], () => renderChart(card.chart, rollout, series));
    part(card, "actions", [session && session.role, rollout.phase, rollout.endpoint,
      rollout.name], () => renderActions(card, rollout));
  }

  function briefInputs(rollout) {
    const verdict = rollout.last_verdict || {};
    return [rollout.candidate, rollout.strategy, rollout.candidate_weight, rollout.step,
      rollout.step_count, verdict.outcome, verdict.reason];
  }

  function briefText(rollout) {
    // From a summary: candidate, strategy, where it is and the judge's last word.
    const parts = [rollout.candidate + " (" + (STRATEGIES[rollout.strategy] ||
      rollout.strategy) + ")", "candidate at " + rollout.candidate_weight + "%"];
    if (Number.isInteger(rollout.step_count) && !TERMINAL.has(rollout.phase)) {
      parts.push("step " + (Math.min(rollout.step, rollout.step_count - 1) + 1) + " of " +
        rollout.step_count);
    }
    const verdict = rollout.last_verdict;
    if (verdict && verdict.outcome) {
      parts.push("last verdict " + verdict.outcome + (verdict.reason ? ": " +
        verdict.reason : ""));
    }
    return parts.join(", ");
  }

  function factsInputs(rollout) {
    // The running time changes every refresh only while the rollout is active.
    const clockTick = TERMINAL.has(rollout.phase) ? rollout.updated_at
      : Math.floor(Date.now() / 1000);
    return [rollout.id, rollout.candidate, rollout.baseline, rollout.strategy, rollout.policy,
      rollout.started_at, clockTick];
  }

  function renderFacts(facts, rollout) {
    const rows = [
      ["Candidate", rollout.candidate],
      ["Baseline", rollout.baseline || "\u2013 (resolved when the rollout prepares)"],
      ["Strategy", (STRATEGIES[rollout.strategy] || rollout.strategy) + ", policy " +
        rollout.policy],
      ["Started", null],
      [TERMINAL.has(rollout.phase) ? "Took" : "Running for", duration(rollout)],
      ["Rollout", rollout.id],
    ];
    const nodes = [];
    for (const [term, value] of rows) {
      nodes.push(el("dt", {}, term));
      if (value === null) {
        const time = el("time", { datetime: rollout.started_at }, when(rollout.started_at));
        nodes.push(el("dd", {}, time));
      } else {
        nodes.push(el("dd", term === "Rollout" ? { class: "mono" } : {}, value));
      }
    }
    facts.replaceChildren(...nodes);
  }

  function stages(rollout) {
    // The candidate weights a rollout goes through; a canary's last stage is 100 %.
    const steps = (rollout.steps || []).filter((w) => Number.isInteger(w));
    if (rollout.strategy === "canary" && (steps.length === 0 || steps[steps.length - 1] !== 100)) {
      steps.push(100);
    }
    return steps.length ? steps : [100];
  }

  function renderProgress(box, rollout) {
    const weights = stages(rollout);
    const total = weights.length;
    const phase = rollout.phase;
    const following = rollout.next || {};
    let current = Math.min(Number.isInteger(rollout.step) ? rollout.step : 0, total - 1);
    let done = current;
    // Before the first split is live (pending, deploying, blue/green preflight and warm-up at
    // 0 %) no stage is live: the first one is only next.
    let before = phase === "pending" || phase === "preparing";
    if (phase === "succeeded") {
      current = -1;
      done = total;
    } else if (phase === "promoting") {
      current = total - 1;
      done = total - 1;
    } else if (before) {
      current = 0;
      done = 0;
    }
    const stopped = ["rolling_back", "rolled_back", "aborted", "failed"].includes(phase);
    // Between deciding a step and the endpoint showing it, the step's weight is not live yet.
    const applying = phase === "progressing" && current >= 0 &&
      (following.stage === "applying" || weights[current] !== rollout.candidate_weight);
    // Steps an operator's promote skipped were never judged to the end: never shown as done.
    const skipped = new Set((rollout.skipped_steps || []).filter((s) => Number.isInteger(s)));
    const list = el("ol", { class: "steps" });
    list.setAttribute("aria-label", "Steps, candidate share of the traffic");
    weights.forEach((weight, index) => {
      let state = index < done ? "done" : "todo";
      let mark = index < done ? "\u2713" : "";
      let said = index < done ? "done" : "to come";
      if (index < done && skipped.has(index)) {
        state = "skipped";
        mark = "\u21b7";
        said = "skipped by an operator, not judged";
      }
      if (index === current && before) {
        state = "todo next";
        mark = "\u2192";
        said = "next, not live yet";
      } else if (index === current) {
        state = stopped ? "stopped" : phase === "paused" ? "current paused"
          : applying ? "current applying" : "current";
        mark = stopped ? "\u2717" : phase === "paused" ? "\u275a\u275a"
          : applying ? "\u2026" : "\u25b6";
        said = stopped ? "stopped here" : phase === "paused" ? "paused here"
          : applying ? "being applied" : "now";
      }
      const item = el("li", { class: "step " + state });
      item.dataset.weight = String(weight);
      if (state === "skipped") {
        item.title = "Skipped by an operator: not judged";
      }
      if (index === current && !stopped && !before) {
        item.setAttribute("aria-current", "step");
      }
      item.append(
        el("span", { class: "mark", "aria-hidden": "true" }, mark),
        el("span", { class: "weight" }, weight + " %"),
        el("span", { class: "visually-hidden" }, " (" + said + ")"),
      );
      list.append(item);
    });
    const skippedCount = weights.filter((_, index) => skipped.has(index)).length;
    let words = stepWords(rollout, weights, done, before);
    if (skippedCount) {
      words += " (" + plural(skippedCount, "step") + " skipped by an operator)";
    }
    const weight = rollout.candidate_weight;
    const split = el("p", { class: "split" },
      el("strong", {}, "Split now: "),
      "candidate " + weight + " %, baseline " + (100 - weight) + " %" +
        (applying ? " (moving to " + weights[current] + " %)" : ""),
      el("span", { class: "muted" }, " \u00b7 " + words));
    const bar = el("div", { class: "split-bar", role: "presentation" });
    const fill = el("div", { class: "split-fill" });
    fill.style.width = Math.max(0, Math.min(100, weight)) + "%";
    bar.append(fill);
    box.replaceChildren(list, split, bar);
  }

  // Where the rollout is, numbered from 1 as in get, events and alerts:
  // "step 2 of 3, then 100 %" (the weights after the judged steps end at 100 %).
  function stepWords(rollout, weights, done, before) {
    const judged = rollout.strategy === "canary" ? weights.length - 1 : weights.length;
    if (rollout.phase === "succeeded") {
      return "all " + plural(judged, "step") + " done";
    }
    if (rollout.strategy === "ab") {
      return "A/B split";
    }
    if (rollout.strategy === "blue_green") {
      return before ? "before the switch" : "blue/green bake";
    }
    if (before) {
      return "before step 1 of " + judged;
    }
    const step = Math.min(done, judged - 1);
    return "step " + (step + 1) + " of " + judged + ", then " + weights[step + 1] + " %";
  }

  // The A/B report once written (objective, winner, each metric per arm with its 95 %
  // interval, the guards); before that, what the report will decide.
  function renderReport(box, rollout) {
    if (rollout.strategy !== "ab") {
      box.hidden = true;
      box.replaceChildren();
      return;
    }
    box.hidden = false;
    const report = rollout.report;
    const plan = rollout.plan || {};
    if (!report) {
      box.replaceChildren(el("h3", {}, "A/B report"),
        el("p", { class: "muted" }, "Written when the split's duration is over: the candidate " +
          "wins if its " + metricName(plan.objective || "latency_p99_ms") + " is clearly " +
          (plan.objective_direction || "lower") + " (the whole 95 % interval on that side) " +
          "and no guard check failed or leaned towards a regression."));
      return;
    }
    const objective = String(report.objective || "");
    const winner = el("span", { class: "winner" }, String(report.winner || "?"));
    winner.dataset.winner = String(report.winner || "");
    const head = el("h3", {}, "A/B report: winner ", winner);
    const about = el("p", { class: "objective" }, "Objective: " + metricName(objective) +
      ", " + (report.direction || "lower") + " is better");
    const table = el("table", { class: "checks ab" });
    table.append(
      el("caption", { class: "visually-hidden" }, "Each metric per arm with its interval"),
      el("thead", {}, el("tr", {},
        el("th", { scope: "col" }, "Metric"),
        el("th", { scope: "col", class: "num" }, "Candidate"),
        el("th", { scope: "col", class: "num" }, "Baseline"),
        el("th", { scope: "col", class: "num" }, "Candidate vs baseline (95 % interval)"))));
    const body = el("tbody");
    for (const row of report.metrics || []) {
      const metric = String(row.metric || "");
      const tr = el("tr", {},
        el("th", { scope: "row" }, metricName(metric),
          metric === objective ? el("span", { class: "terms" }, "objective") : ""),
        el("td", { class: "num" }, value(metric, row.candidate),
          el("span", { class: "n" }, "n = " + count(row.candidate_n))),
        el("td", { class: "num" }, value(metric, row.baseline),
          el("span", { class: "n" }, "n = " + count(row.baseline_n))),
        el("td", { class: "num interval" }, interval(metric, row)));
      tr.dataset.metric = metric;
      body.append(tr);
    }
    table.append(body);
    const guards = (report.guard_problems || []).length
      ? "Guards: " + report.guard_problems.join("; ")
      : "Guards: none failed or leaned towards a regression";
    box.replaceChildren(head, about, el("div", { class: "table-scroll" }, table),
      el("p", { class: "guards" }, guards), el("p", { class: "muted" }, String(report.summary || "")));
  }

  function interval(metric, row) {
    const ci = row.ci95;
    if (!Array.isArray(ci) || ci.length !== 2 || typeof ci[0] !== "number") {
      return "\u2013";
    }
    if ("ratio" in row) {
      const ratio = typeof row.ratio === "number" ? significant(row.ratio) + "x" : "\u2013";
      return ratio + " [" + significant(ci[0]) + "x, " + significant(ci[1]) + "x]";
    }
    const points = (x) => (x >= 0 ? "+" : "\u2212") + significant(Math.abs(x * 100));
    const diff = typeof row.difference === "number" ? points(row.difference) + " points" : "\u2013";
    return diff + " [" + points(ci[0]) + ", " + points(ci[1]) + "]";
  }

  function renderVerdict(box, rollout) {
    const verdict = rollout.last_verdict;
    if (!verdict || !verdict.outcome) {
      box.replaceChildren(el("h3", {}, "Last verdict"),
        el("p", { class: "muted" }, TERMINAL.has(rollout.phase)
          ? "No verdict was recorded." : "No verdict yet: waiting for metric windows."));
      return;
    }
    const meta = [];
    if (verdict.look !== undefined && verdict.look !== null) {
      meta.push("look " + verdict.look);
    }
    if (verdict.judge) {
      meta.push(verdict.judge + " judge");
    }
    if (typeof verdict.at === "number") {
      meta.push(clock(new Date(verdict.at * 1000)));
    }
    const heading = el("h3", {}, "Last verdict: ", outcomeBadge(verdict.outcome),
      meta.length ? el("span", { class: "muted meta" }, " " + meta.join(" \u00b7 ")) : "");
    // The blue/green bake is judged against the baseline's windows from the warm-up at 0 %.
    const against = rollout.strategy === "blue_green" ? "Control" : "Baseline";
    const table = el("table", { class: "checks" });
    table.append(
      el("caption", { class: "visually-hidden" }, "Checks of the last verdict"),
      el("thead", {}, el("tr", {},
        el("th", { scope: "col" }, "Check"),
        el("th", { scope: "col" }, "Outcome"),
        el("th", { scope: "col", class: "num" }, "Candidate"),
        el("th", { scope: "col", class: "num",
          title: against === "Control" ? "The baseline over the warm-up at 0 %" : "" }, against),
        el("th", { scope: "col" }, "Limit"))),
    );
    const body = el("tbody");
    for (const check of verdict.checks || []) {
      const metric = check.metric || "";
      // "error_rate vs baseline: max_ratio 2" -> the comparison, then its terms in small print.
      const text = String(check.check || metric);
      const colon = text.indexOf(":");
      const head = colon > 0 ? text.slice(0, colon) : text;
      const terms = colon > 0 ? text.slice(colon + 1).trim() : "";
      const row = el("tr", {},
        el("th", { scope: "row" }, metricName(head),
          terms ? el("span", { class: "terms" }, terms.replace(/_/g, " ")) : ""),
        el("td", {}, outcomeBadge(check.outcome)),
        el("td", { class: "num" }, value(metric, check.candidate_value),
          el("span", { class: "n" }, "n = " + count(check.candidate_n))),
        el("td", { class: "num" }, value(metric, check.baseline_value),
          el("span", { class: "n" }, "n = " + count(check.baseline_n))),
        el("td", { class: "limit" }, check.limit || "\u2013"));
      if (check.reason) {
        row.title = check.reason;
      }
      body.append(row);
    }
    table.append(body);
    const parts = [heading];
    if (verdict.summary) {
      parts.push(el("p", { class: "verdict-summary" }, String(verdict.summary)));
    }
    if ((verdict.checks || []).length) {
      parts.push(el("div", { class: "table-scroll" }, table));
    }
    if (verdict.reason) {
      // The full reasoning (with the evidence) is long: folded, and kept open across redraws.
      const previous = box.querySelector("details.why");
      // The statistics (each check's e-values against its boundaries) only here.
      const evidence = (verdict.checks || [])
        .filter((c) => c.detail && c.detail.e_values)
        .map((c) => el("li", {}, String(c.check || c.metric) + ": " + c.detail.e_values));
      const why = el("details", { class: "why" },
        el("summary", {}, "Details: the judge's reasoning and evidence"),
        el("p", {}, verdict.reason),
        evidence.length ? el("ul", { class: "evidence" }, ...evidence) : "");
      why.open = Boolean(previous && previous.open);
      parts.push(why);
    }
    box.replaceChildren(...parts);
  }

  function outcomeBadge(outcome) {
    const [glyph, word] = OUTCOMES[outcome] || ["\u00b7", outcome || "unknown"];
    const badge = el("span", { class: "outcome" },
      el("span", { class: "glyph", "aria-hidden": "true" }, glyph), word);
    badge.dataset.outcome = outcome || "unknown";
    return badge;
  }

  // ---- commands ----------------------------------------------------------------------------

  // The buttons of the card's phase, for operators only. Rebuilt when the phase changes; a
  // pending confirmation or a command in flight is card state, carried over to the new buttons.
  function renderActions(card, rollout) {
    const offered = session && session.role === "operator" ? OFFERED[rollout.phase] || [] : [];
    const focused = card.actions.contains(document.activeElement)
      ? document.activeElement.dataset.action : null;
    if (card.confirming && !offered.includes(card.confirming)) {
      setConfirming(card, null);
    }
    const subject = rolloutName(rollout);
    card.actions.setAttribute("aria-label", "Commands for " + subject);
    card.buttons = new Map();
    for (const action of offered) {
      const spec = ACTIONS[action];
      const button = el("button", { type: "button", class: "action", "data-action": action,
        title: spec.title }, spec.label);
      if (spec.confirm) {
        button.classList.add("danger");
      }
      card.buttons.set(action, button);
    }
    card.actions.replaceChildren(...card.buttons.values());
    card.actions.hidden = offered.length === 0;
    syncActions(card);
    if (focused) {
      // Keyboard users stay in the card: on the same command if it is still offered.
      const next = card.buttons.get(focused) || card.buttons.values().next().value;
      if (next) {
        next.focus();
      }
    }
  }

  // Labels, confirmation and disabled state of the buttons, and the status line; only what
  // differs is written.
  function syncActions(card) {
    const subject = rolloutName(card.rollout);
    for (const [action, button] of card.buttons) {
      const spec = ACTIONS[action];
      const asking = card.confirming === action;
      const says = spec.says(subject);
      setText(button, asking ? "Confirm " + spec.word + "?" : spec.label);
      setAttribute(button, "aria-label", asking ? "Confirm: " + says
        : says.charAt(0).toUpperCase() + says.slice(1));
      setAttribute(button, "data-confirming", asking ? "true" : "false");
      if (button.disabled !== Boolean(card.sending)) {
        button.disabled = Boolean(card.sending);
      }
    }
    let line = card.outcome || { text: "", state: "" };
    if (card.sending) {
      line = { text: "Sending " + ACTIONS[card.sending].word + "\u2026", state: "busy" };
    } else if (card.confirming) {
      line = { text: "Press \u201cConfirm " + ACTIONS[card.confirming].word + "?\u201d within " +
        CONFIRM_MS / 1000 + " s to go ahead.", state: "confirm" };
    }
    setText(card.actionStatus, line.text);
    setAttribute(card.actionStatus, "data-state", line.state);
    card.actionStatus.hidden = !line.text;
  }

  function act(card, action) {
    const spec = ACTIONS[action];
    if (!spec || card.sending || !card.buttons.has(action)) {
      return;
    }
    if (spec.confirm && card.confirming !== action) {
      setConfirming(card, action);
      return;
    }
    setConfirming(card, null);
    send(card, action);
  }

  function setConfirming(card, action) {
    window.clearTimeout(card.confirmTimer);
    card.confirming = action;
    card.confirmTimer = action
      ? window.setTimeout(() => setConfirming(card, null), CONFIRM_MS) : null;
    syncActions(card);
  }

  async function send(card, action) {
    const spec = ACTIONS[action];
    const rollout = card.rollout;
    // Disabling the pressed button takes the focus away; it is given back afterwards.
    const hadFocus = card.actions.contains(document.activeElement);
    card.sending = action;
    syncActions(card);
    try {
      await api("/api/v1/rollouts/" + encodeURIComponent(rollout.id) + "/" + spec.path,
        spec.body);
      card.outcome = { text: spec.word + " requested at " + clock(new Date()), state: "ok" };
    } catch (error) {
      if (error instanceof ApiError && error.status === 403) {
        showSession(null); // the token's role is not what the page was told: ask again
      }
      card.outcome = { text: spec.word + (error instanceof ApiError ? " refused: " : " failed: ") +
        error.message, state: "error" };
    } finally {
      card.sending = null;
      syncActions(card);
      const button = card.buttons.get(action);
      const lost = !document.activeElement || document.activeElement === document.body;
      if (hadFocus && lost && button && button.isConnected) {
        button.focus();
      }
    }
    refresh();
  }

  function rolloutName(rollout) {
    return "rollout " + (rollout.name ? rollout.name + " " : "") + "on " + rollout.endpoint;
  }

  // ---- the chart ---------------------------------------------------------------------------

  function renderChart(figure, rollout, series) {
    const caption = el("figcaption", {},
      el("span", { class: "chart-title" }, "Candidate vs baseline per metric window"),
      legend(rollout));
    if (!series || series.error) {
      figure.replaceChildren(caption, el("p", { class: "no-data" },
        "The chart cannot be read now" + (series ? ": " + series.error : ".")));
      return;
    }
    const windows = series.windows || [];
    if (!windows.length) {
      figure.replaceChildren(caption, el("p", { class: "no-data" }, series.note ||
        "No metric windows yet: they appear once the endpoint exports its first window."));
      return;
    }
    figure.replaceChildren(caption, drawChart(rollout, series));
  }

  function legend(rollout) {
    const list = el("ul", { class: "legend" });
    for (const arm of ARMS) {
      const swatch = svg("svg", { class: "swatch", viewBox: "0 0 34 12", width: 34, height: 12,
        "aria-hidden": "true", focusable: "false" });
      swatch.append(svg("line", { class: "line " + arm, x1: 1, y1: 6, x2: 33, y2: 6 }));
      swatch.append(pointMarker(arm, 17, 6));
      const name = arm === "candidate" ? rollout.candidate : rollout.baseline || "(not known yet)";
      const style = arm === "candidate" ? "solid line, dots" : "dashed line, squares";
      list.append(el("li", {}, swatch, el("span", {}, arm + " " + name),
        el("span", { class: "visually-hidden" }, " (" + style + ")")));
    }
    const mark = svg("svg", { class: "swatch", viewBox: "0 0 12 12", width: 12, height: 12,
      "aria-hidden": "true", focusable: "false" });
    mark.append(svg("line", { class: "step-line", x1: 6, y1: 0, x2: 6, y2: 12 }));
    list.append(el("li", {}, mark, el("span", {}, "split change")));
    return list;
  }

  function drawChart(rollout, series) {
    const windows = series.windows;
    const marks = series.steps || [];
    const times = windows.map((w) => w.start_ms).concat(marks.map((m) => m.at_ms));
    let t0 = Math.min(...times);
    let t1 = Math.max(...times);
    if (t1 - t0 < 2000) {
      t0 -= 1000;
      t1 += 1000;
    }
    const xOf = (t) => CHART.left + (t - t0) / (t1 - t0) * (CHART.width - CHART.left - CHART.right);
    const chart = svg("svg", { class: "plot", viewBox: "0 0 " + CHART.width + " " + CHART.height,
      role: "img", preserveAspectRatio: "xMidYMid meet" });
    chart.setAttribute("aria-label", describe(rollout, series));
    chart.dataset.windows = String(windows.length);

    if (series.split_applied_at && !TERMINAL.has(rollout.phase)) {
      // The windows the judge is reading for the current step.
      const from = xOf(Math.max(t0, Date.parse(series.split_applied_at)));
      const band = svg("rect", { class: "judged", x: from, y: PANELS[0].top - 8,
        width: Math.max(0, CHART.width - CHART.right - from),
        height: PANELS[1].bottom - PANELS[0].top + 8 });
      band.append(svg("title", {}, "windows judged for the current step"));
      chart.append(band);
    }
    for (const panel of PANELS) {
      drawPanel(chart, panel, windows, xOf);
    }
    drawTimeAxis(chart, t0, t1);
    drawMarks(chart, marks, xOf);
    return chart;
  }

  function drawPanel(chart, panel, windows, xOf) {
    const values = [];
    for (const w of windows) {
      for (const arm of ARMS) {
        const v = w[arm] ? w[arm][panel.metric] : null;
        if (typeof v === "number") {
          values.push(v);
        }
      }
    }
    const top = niceCeiling(Math.max(panel.floor, ...values) * 1.1);
    const yOf = (v) => panel.bottom - v / top * (panel.bottom - panel.top);
    const group = svg("g", { class: "panel" });
    group.dataset.metric = panel.metric;
    group.append(svg("text", { class: "panel-title", x: CHART.left, y: panel.top - 8 },
      panel.title));
    for (const fraction of [0, 0.5, 1]) {
      const v = top * fraction;
      const y = yOf(v);
      group.append(svg("line", { class: "grid", x1: CHART.left, x2: CHART.width - CHART.right,
        y1: y, y2: y }));
      group.append(svg("text", { class: "tick", x: CHART.left - 6, y: y + 3.5,
        "text-anchor": "end" }, panel.format(v)));
    }
    for (const arm of ARMS) {
      let d = "";
      let points = 0;
      let gap = true;
      const markers = svg("g", { class: "points " + arm });
      for (const w of windows) {
        const v = w[arm] ? w[arm][panel.metric] : null;
        if (typeof v !== "number") {
          gap = true; // no data in this window: the line breaks instead of inventing a value
          continue;
        }
        const x = xOf(w.start_ms);
        const y = yOf(v);
        d += (gap ? "M" : "L") + x.toFixed(1) + " " + y.toFixed(1) + " ";
        gap = false;
        points += 1;
        if (windows.length <= MAX_POINT_MARKERS) {
          const marker = pointMarker(arm, x, y);
          marker.append(svg("title", {}, arm + " " + clock(new Date(w.start_ms)) + ": " +
            panel.format(v) + " (" + count(w[arm].requests) + " requests)"));
          markers.append(marker);
        }
      }
      const path = svg("path", { class: "line " + arm, d: d.trim() || "M0 0" });
      path.dataset.arm = arm;
      path.dataset.points = String(points);
      if (!points) {
        path.setAttribute("visibility", "hidden");
      }
      group.append(path, markers);
    }
    chart.append(group);
  }

  function drawTimeAxis(chart, t0, t1) {
    const y = PANELS[1].bottom + 16;
    const right = CHART.width - CHART.right;
    chart.append(svg("text", { class: "tick", x: CHART.left, y }, clock(new Date(t0))));
    chart.append(svg("text", { class: "tick", x: right, y, "text-anchor": "end" },
      clock(new Date(t1))));
  }

  function drawMarks(chart, marks, xOf) {
    let previousX = -Infinity;
    let row = 0;
    for (const mark of marks) {
      const x = xOf(mark.at_ms);
      // Labels of close marks go on alternate rows instead of on top of each other.
      row = x - previousX < 44 ? 1 - row : 0;
      previousX = x;
      const group = svg("g", { class: "step-marker " + mark.kind });
      group.dataset.kind = mark.kind;
      if (mark.weight !== null && mark.weight !== undefined) {
        group.dataset.weight = String(mark.weight);
      }
      group.append(svg("line", { class: "step-line", x1: x, x2: x, y1: 4 + row * 11,
        y2: PANELS[1].bottom }));
      // Near the right edge the label goes to the left of its line, inside the chart.
      const flip = x > CHART.width - CHART.right - 48;
      group.append(svg("text", { class: "step-label", x: flip ? x - 3 : x + 3, y: 12 + row * 11,
        "text-anchor": flip ? "end" : "start" }, markLabel(mark)));
      group.append(svg("title", {}, clock(new Date(mark.at_ms)) + ": " + mark.reason));
      chart.append(group);
    }
  }

  function markLabel(mark) {
    if (mark.kind === "rollback") {
      return "rollback";
    }
    if (mark.kind === "promoted") {
      return "100 % \u2713";
    }
    return (mark.weight === null || mark.weight === undefined ? "?" : mark.weight) + " %";
  }

  function pointMarker(arm, x, y) {
    if (arm === "candidate") {
      return svg("circle", { class: "point " + arm, cx: x, cy: y, r: 2.6 });
    }
    return svg("rect", { class: "point " + arm, x: x - 2.3, y: y - 2.3, width: 4.6,
      height: 4.6 });
  }

  function describe(rollout, series) {
    const windows = series.windows;
    const latest = (arm, metric, format) => {
      for (let i = windows.length - 1; i >= 0; i -= 1) {
        const v = windows[i][arm] ? windows[i][arm][metric] : null;
        if (typeof v === "number") {
          return format(v);
        }
      }
      return "no data";
    };
    const changes = (series.steps || []).map((m) => markLabel(m) + " at " +
      clock(new Date(m.at_ms)));
    return "Chart of " + plural(windows.length, "metric window") + " for " + rollout.endpoint +
      ". Latest 5xx error rate: candidate " + latest("candidate", "error_rate", percent) +
      ", baseline " + latest("baseline", "error_rate", percent) + ". Latest p99 latency: " +
      "candidate " + latest("candidate", "p99_ms", millis) + ", baseline " +
      latest("baseline", "p99_ms", millis) + ". " +
      (changes.length ? "Split changes: " + changes.join(", ") + "." : "No split change yet.");
  }

  // ---- formatting --------------------------------------------------------------------------

  function phaseGlyph(phase) {
    return (PHASES[phase] || ["\u00b7"])[0];
  }

  function phaseWord(phase) {
    return (PHASES[phase] || ["", phase])[1];
  }

  function metricName(text) {
    return String(text).replace(/_ms\b/g, " (ms)").replace(/_/g, " ");
  }

  function value(metric, v) {
    if (v === "+Inf") {
      return "\u221e";
    }
    if (v === "-Inf") {
      return "\u2212\u221e";
    }
    if (typeof v !== "number") {
      return "\u2013";
    }
    if (/rate|ratio|share/.test(metric)) {
      return percent(v);
    }
    if (/_ms$/.test(metric)) {
      return millis(v);
    }
    return significant(v);
  }

  function percent(v) {
    return v === 0 ? "0 %" : significant(v * 100) + " %";
  }

  function millis(v) {
    return (v >= 100 ? Math.round(v).toString() : significant(v)) + " ms";
  }

  // The smallest 1, 2, 2.5 or 5 times a power of ten at or above v: round axis labels.
  function niceCeiling(v) {
    const power = Math.pow(10, Math.floor(Math.log10(v)));
    for (const step of [1, 2, 2.5, 5, 10]) {
      if (step * power >= v) {
        return step * power;
      }
    }
    return 10 * power;
  }

  function significant(v) {
    if (v === 0) {
      return "0";
    }
    return String(Number(v.toPrecision(3)));
  }

  function count(n) {
    return typeof n === "number" ? Math.round(n).toLocaleString("en-US") : "\u2013";
  }

  function plural(n, word) {
    return n + " " + word + (n === 1 ? "" : "s");
  }

  function pad(n) {
    return String(n).padStart(2, "0");
  }

  function clock(date) {
    return pad(date.getHours()) + ":" + pad(date.getMinutes()) + ":" + pad(date.getSeconds());
  }

  function when(iso) {
    const date = new Date(iso);
    if (Number.isNaN(date.getTime())) {
      return String(iso);
    }
    return date.getFullYear() + "-" + pad(date.getMonth() + 1) + "-" + pad(date.getDate()) +
      " " + clock(date);
  }

  function duration(rollout) {
    const start = Date.parse(rollout.started_at);
    const end = TERMINAL.has(rollout.phase) ? Date.parse(rollout.updated_at) : Date.now();
    let seconds = Math.max(0, Math.round((end - start) / 1000));
    const hours = Math.floor(seconds / 3600);
    seconds -= hours * 3600;
    const minutes = Math.floor(seconds / 60);
    seconds -= minutes * 60;
    if (hours) {
      return hours + " h " + minutes + " min";
    }
    return minutes ? minutes + " min " + seconds + " s" : seconds + " s";
  }

  // ---- DOM helpers -------------------------------------------------------------------------

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [name, val] of Object.entries(attributes || {})) {
      node.setAttribute(name, val);
    }
    node.append(...children.filter((child) => child !== "" && child !== null));
    return node;
  }

  function setText(node, text) {
    if (node.textContent !== text) {
      node.textContent = text;
    }
  }

  function setAttribute(node, name, text) {
    if (node.getAttribute(name) !== text) {
      node.setAttribute(name, text);
    }
  }

  function svg(tag, attributes, text) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [name, val] of Object.entries(attributes || {})) {
      node.setAttribute(name, typeof val === "number" ? val.toFixed(1) : val);
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  // ---- start -------------------------------------------------------------------------------

  byId("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = byId("token-input").value.trim();
    if (!value) {
      return;
    }
    byId("token-input").value = "";
    keepToken(value);
    waitingForToken = false;
    byId("login").hidden = true;
    setConnection("loading", "Loading", "");
    refresh();
  });
  byId("forget-token").addEventListener("click", () => {
    keepToken(null);
    refresh();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && !waitingForToken) {
      refresh();
    }
  });
  keepToken(token);
  refresh();
})();

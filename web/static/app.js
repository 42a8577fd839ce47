// Rota's dashboard: one Alpine (CSP build) component over the HTTP API and one
// EventSource on /api/v1/events.
//
// Rules:
// - No build step, no inline script, no eval: this file registers the component on
//   `alpine:init`; directives in index.html only read properties and call methods.
// - The token lives in sessionStorage (this tab only). Its payload is decoded here
//   only to show or hide controls; the server enforces every role.
// - EventSource cannot send an Authorization header, so the stream takes the token
//   as ?access_token= (accepted on that route only). The stream is closed while the
//   tab is hidden and reopened, resuming after the last event id, when it is shown.
// - Everything kept is bounded: chart points (CHART_POINTS), pages (PAGE_SIZE).
// - Charts start from the stream's `history` event (the node's last snapshots' stats)
//   and go on with each snapshot; x is the server's `stats.at_s`, so the two join up.
// - The job form previews the typed schedule PREVIEW_DELAY_MS after the last keystroke
//   (POST /api/v1/schedules:preview); only the newest answer is shown.
"use strict";

const TOKEN_KEY = "rota.token";
const CHART_POINTS = 300;
const PREVIEW_DELAY_MS = 400;
const PAGE_SIZE = 50;
const RUN_STATES = ["queued", "running", "succeeded", "failed", "timed_out", "cancelled", "skipped"];
const OUTPUT_CHARS_MAX = 200000;

function decodeClaims(token) {
  const part = token.split(".")[1] || "";
  const text = atob(part.replace(/-/g, "+").replace(/_/g, "/"));
  return JSON.parse(text);
}

function problemMessage(problem) {
  return (problem && (problem.detail || problem.title)) || "request failed";
}

function dashboard() {
  return {
    // session
    token: "", tokenInput: "", loginError: "", subject: "", role: "", flash: "",
    // routing
    page: "cluster", pageArg: "",
    // live state
    cluster: { members: [], term: 0, commit_index: 0, leader: null, node: "", queues: [] },
    streamLive: false, lastEventId: null, source: null,
    // lists and details
    jobs: [], jobsCursor: null, jobFilter: { name_prefix: "", namespace: "" }, selected: [],
    job: {}, jobNext: [], jobRuns: [],
    runs: [], runsCursor: null, runPages: [null], runFilter: { state: "", job_id: "", node: "" },
    runStates: RUN_STATES,
    run: {}, output: "", outputSource: "", outputAbort: null,
    editing: false, form: { preview: [] }, errors: {}, previewTimer: null, previewSeq: 0,
    op: { target: "", newId: "", newAddress: "", removeId: "", result: "" },
    charts: null, series: [[], [], [], []],

    get loggedIn() { return this.token !== ""; },
    get isAdmin() { return this.role === "admin"; },
    get canOperate() { return this.role === "admin" || this.role === "operator"; },

    init() {
      this.useToken(sessionStorage.getItem(TOKEN_KEY) || "");
      window.addEventListener("hashchange", () => this.route());
      document.addEventListener("visibilitychange", () => this.onVisibility());
      this.route();
    },

    // ------------------------------------------------------------ session
    login() {
      this.loginError = "";
      try {
        decodeClaims(this.tokenInput.trim());
      } catch (e) {
        this.loginError = "that is not a JWT";
        return;
      }
      sessionStorage.setItem(TOKEN_KEY, this.tokenInput.trim());
      this.tokenInput = "";
      this.useToken(sessionStorage.getItem(TOKEN_KEY));
      this.route();
    },
    useToken(token) {
      this.token = "";
      if (!token) return;
      try {
        const claims = decodeClaims(token);
        if (claims.exp && claims.exp * 1000 < Date.now()) throw new Error("expired");
        this.subject = claims.sub || "";
        this.role = claims.role || "viewer";
        this.token = token;
        this.openStream();
      } catch (e) {
        sessionStorage.removeItem(TOKEN_KEY);
        this.loginError = "the token is expired or malformed";
      }
    },
    logout() {
      sessionStorage.removeItem(TOKEN_KEY);
      this.closeStream();
      this.token = ""; this.role = ""; this.subject = "";
    },

    // ------------------------------------------------------------ HTTP
    async api(method, path, body, extraHeaders) {
      const headers = Object.assign({ Authorization: "Bearer " + this.token }, extraHeaders || {});
      const init = { method: method, headers: headers };
      if (body !== undefined) {
        headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(body);
      }
      const response = await fetch(path, init);
      if (response.status === 401) {
        this.logout();
        this.loginError = "the server refused the token; log in again";
      }
      const text = await response.text();
      const data = text ? JSON.parse(text) : null;
      if (!response.ok) {
        const error = new Error(problemMessage(data));
        error.problem = data || {};
        throw error;
      }
      return data;
    },
    async attempt(work) {
      this.flash = "";
      try {
        return await work();
      } catch (e) {
        this.flash = e.message;
        return null;
      }
    },

    // ------------------------------------------------------------ routing
    route() {
      const parts = (location.hash || "#/cluster").slice(2).split("/");
      this.page = parts[0] || "cluster";
      this.pageArg = decodeURIComponent(parts.slice(1).join("/"));
      if (!this.loggedIn) return;
      this.loadPage();
    },
    loadPage() {
      this.stopOutput();
      if (this.page === "cluster") this.$nextTick(() => this.ensureCharts());
      if (this.page === "jobs") this.loadJobs();
      if (this.page === "job") this.loadJob();
      if (this.page === "runs") this.loadRuns();
      if (this.page === "run") this.loadRun();
    },

    // ------------------------------------------------------------ the event stream
    openStream() {
      this.closeStream();
      let url = "/api/v1/events?access_token=" + encodeURIComponent(this.token);
      if (this.lastEventId !== null) url += "&last_event_id=" + this.lastEventId;
      const source = new EventSource(url);
      source.addEventListener("open", () => { this.streamLive = true; });
      source.addEventListener("error", () => { this.streamLive = source.readyState === EventSource.OPEN; });
      source.addEventListener("history", (e) => this.onHistory(JSON.parse(e.data)));
      source.addEventListener("cluster", (e) => this.onSnapshot(JSON.parse(e.data)));
      source.addEventListener("run", (e) => this.onRun(JSON.parse(e.data), e.lastEventId));
      source.addEventListener("run_deleted", (e) => this.onRunDeleted(JSON.parse(e.data), e.lastEventId));
      source.addEventListener("reset", () => { this.lastEventId = null; this.loadPage(); });
      this.source = source;
    },
    closeStream() {
      if (this.source) this.source.close();
      this.source = null;
      this.streamLive = false;
    },
    onVisibility() {
      if (!this.loggedIn) return;
      if (document.hidden) {
        this.closeStream();
      } else {
        this.openStream();
        this.loadPage();
      }
    },
    rememberId(id) {
      if (id) this.lastEventId = Number(id);
    },
    onHistory(history) {
      this.series = [[], [], [], []];
      for (const s of history.points) this.addPoint(s);
      this.drawCharts();
    },
    onSnapshot(snap) {
      this.cluster = snap;
      this.streamLive = true;
      this.addPoint(snap.stats);
      this.drawCharts();
    },
    addPoint(s) {
      const x = s.at_s || Date.now() / 1000;
      const xs = this.series[0];
      if (xs.length > 0 && x <= xs[xs.length - 1]) return; // already drawn (from the history)
      xs.push(x);
      this.series[1].push(s.runs_finished / s.window_s);
      this.series[2].push(s.fire_lateness_s_max);
      this.series[3].push(s.fire_lateness_s_mean);
      for (const column of this.series) if (column.length > CHART_POINTS) column.shift();
    },
    onRun(run, id) {
      this.rememberId(id);
      const replace = (list) => {
        const i = list.findIndex((r) => r.id === run.id);
        if (i >= 0) list.splice(i, 1, run);
        return i >= 0;
      };
      replace(this.runs);
      if (!replace(this.jobRuns) && this.page === "job" && run.job_id === this.job.id) {
        this.jobRuns.unshift(run);
        if (this.jobRuns.length > PAGE_SIZE) this.jobRuns.pop();
      }
      if (this.page === "run" && run.id === this.run.id) {
        const wasRunning = this.run.state === "running";
        this.run = run;
        if (run.state === "running" && !wasRunning) this.loadOutput();
        if (!this.outputAbort && run.output_tail && !this.output) this.output = run.output_tail;
      }
    },
    onRunDeleted(gone, id) {
      this.rememberId(id);
      this.runs = this.runs.filter((r) => r.id !== gone.id);
      this.jobRuns = this.jobRuns.filter((r) => r.id !== gone.id);
    },

    // ------------------------------------------------------------ cluster page
    members() { return this.cluster.members || []; },
    lag(m) { return Math.max(0, this.cluster.commit_index - m.applied_index); },
    nodeLink(m) { return m.api_address ? "http://" + m.api_address + "/" : "#/cluster"; },
    loadText() {
      const l = this.cluster.load;
      if (!l) return "";
      return l.running + " running of " + l.slots + " slots, " + l.queue_depth + " queued";
    },
    queueRows() {
      return (this.cluster.queues || []).map((q) => ({
        key: (q.node || "-") + "/" + q.priority, node: q.node || "(unplaced)", priority: q.priority, depth: q.depth,
      }));
    },
    stealRows() {
      return (this.cluster.steals || []).slice().reverse().map((e, i) => Object.assign({ key: i + "/" + e.at }, e));
    },
    stealCounts() {
      const counts = {};
      const add = (node, side, runs) => {
        counts[node] = counts[node] || { node: node, runsIn: 0, runsOut: 0 };
        counts[node][side] += runs;
      };
      for (const e of this.cluster.steals || []) { add(e.from, "runsOut", e.runs); add(e.to, "runsIn", e.runs); }
      return Object.values(counts).sort((a, b) => (a.node < b.node ? -1 : 1));
    },
    ensureCharts() {
      if (this.charts || typeof uPlot === "undefined") return;
      const make = (id, labels) => {
        const el = document.getElementById(id);
        const series = [{}].concat(labels.map((label, i) => ({ label: label, stroke: ["#2b6cb0", "#c05621"][i], width: 2 })));
        return new uPlot({ width: 460, height: 180, series: series, axes: [{}, {}] }, [[], ...labels.map(() => [])], el);
      };
      this.charts = {
        throughput: make("chart-throughput", ["runs/s"]),
        lateness: make("chart-lateness", ["max s", "mean s"]),
      };
      this.drawCharts();
    },
    drawCharts() {
      if (!this.charts) return;
      const [x, rate, max, mean] = this.series;
      this.charts.throughput.setData([x.slice(), rate.slice()]);
      this.charts.lateness.setData([x.slice(), max.slice(), mean.slice()]);
    },

    // ------------------------------------------------------------ jobs
    query(params) {
      const q = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
      return q.toString();
    },
    async loadJobs() {
      const data = await this.attempt(() => this.api("GET", "/api/v1/jobs?" + this.query(Object.assign({ limit: PAGE_SIZE }, this.jobFilter))));
      if (data) { this.jobs = data.items; this.jobsCursor = data.next_cursor; this.selected = []; }
    },
    async moreJobs() {
      const params = Object.assign({ limit: PAGE_SIZE, cursor: this.jobsCursor }, this.jobFilter);
      const data = await this.attempt(() => this.api("GET", "/api/v1/jobs?" + this.query(params)));
      if (data) { this.jobs = this.jobs.concat(data.items); this.jobsCursor = data.next_cursor; }
    },
    isSelected(id) { return this.selected.includes(id); },
    toggleSelected(id) {
      this.selected = this.isSelected(id) ? this.selected.filter((s) => s !== id) : this.selected.concat([id]);
    },
    selectedCount() { return this.selected.length; },
    async bulk(action) {
      const ids = this.selected.slice();
      let done = 0;
      for (const id of ids) {
        const path = action === "delete" ? "/api/v1/jobs/" + id : "/api/v1/jobs/" + id + "/" + action;
        const ok = await this.attempt(() => this.api(action === "delete" ? "DELETE" : "POST", path));
        if (ok !== null || action === "delete") done += 1;
      }
      this.flash = this.flash || action + ": " + done + " of " + ids.length + " job(s)";
      this.loadJobs();
    },
    async jobAction(id, action) {
      const result = await this.attempt(() => this.api("POST", "/api/v1/jobs/" + id + "/" + action));
      if (result === null) return;
      if (action === "trigger" && result.id) this.flash = "triggered run " + result.id;
      if (this.page === "job") this.loadJob(); else this.loadJobs();
    },
    scheduleText(s) {
      if (!s) return "";
      if (s.cron) return s.cron + " (" + (s.tz || "UTC") + ")";
      if (s.every_s) return "every " + s.every_s + " s";
      if (s.at) return "at " + s.at;
      if (s.after_s !== undefined) return "after " + s.after_s + " s";
      return JSON.stringify(s);
    },
    executorText(e) {
      if (!e) return "";
      if (e.type === "shell") return (e.command || []).join(" ");
      if (e.type === "http") return (e.method || "POST") + " " + e.url;
      return e.handler || JSON.stringify(e);
    },
    newJob() {
      this.errors = {};
      this.form = { id: null, name: "", namespace: "default", cron: "*/1 * * * *", tz: "UTC", command: "", priority: 5, preview: [], version: null };
      this.editing = true;
      this.previewSchedule();
    },
    async editJob(job) {
      this.errors = {};
      const command = job.executor && job.executor.command ? job.executor.command.slice(-1)[0] : "";
      this.form = {
        id: job.id, name: job.name, namespace: job.namespace, cron: (job.schedule && job.schedule.cron) || "",
        tz: (job.schedule && job.schedule.tz) || "UTC", command: command, priority: job.priority, preview: [], version: job.version,
      };
      this.editing = true;
      const next = await this.attempt(() => this.api("GET", "/api/v1/jobs/" + job.id + "/next?count=5"));
      if (next) this.form.preview = next.next;
    },
    closeEditor() { this.editing = false; },
    previewSoon() {
      clearTimeout(this.previewTimer);
      this.previewTimer = setTimeout(() => this.previewSchedule(), PREVIEW_DELAY_MS);
    },
    async previewSchedule() {
      const seq = ++this.previewSeq;
      const body = { schedule: { cron: this.form.cron, tz: this.form.tz || "UTC" }, count: 5 };
      let preview = [];
      let error = null;
      try {
        preview = (await this.api("POST", "/api/v1/schedules:preview", body)).next;
      } catch (e) {
        const field = (e.problem && e.problem.field) || "schedule";
        error = { [field]: e.message.startsWith(field) ? e.message : field + ": " + e.message };
      }
      if (seq !== this.previewSeq) return; // a newer keystroke has its own answer coming
      const others = Object.entries(this.errors).filter(([field]) => !field.startsWith("schedule"));
      this.errors = Object.assign(Object.fromEntries(others), error || {});
      this.form.preview = preview;
    },
    fieldError(prefix) {
      for (const [field, message] of Object.entries(this.errors)) {
        if (prefix === "" ? !["name", "schedule", "executor", "priority"].some((p) => field.startsWith(p)) : field.startsWith(prefix)) return message;
      }
      return "";
    },
    async saveJob() {
      this.errors = {};
      const f = this.form;
      const body = {
        name: f.name, namespace: f.namespace || "default", priority: Number(f.priority),
        schedule: { cron: f.cron, tz: f.tz || "UTC" },
        executor: { type: "shell", command: ["/bin/sh", "-c", f.command] },
      };
      try {
        const saved = f.id
          ? await this.api("PUT", "/api/v1/jobs/" + f.id, body, { "If-Match": String(f.version) })
          : await this.api("POST", "/api/v1/jobs", body);
        const next = await this.api("GET", "/api/v1/jobs/" + saved.id + "/next?count=5");
        this.form.preview = next.next;
        this.form.id = saved.id;
        this.form.version = saved.version;
        await this.loadJobs();
        this.flash = "saved " + saved.name + " (" + saved.id + ")";
      } catch (e) {
        const field = (e.problem && e.problem.field) || "";
        this.errors = { [field]: field && !e.message.startsWith(field) ? field + ": " + e.message : e.message };
      }
    },
    async loadJob() {
      const id = this.pageArg;
      const job = await this.attempt(() => this.api("GET", "/api/v1/jobs/" + id));
      if (!job) return;
      this.job = job;
      const next = await this.attempt(() => this.api("GET", "/api/v1/jobs/" + id + "/next?count=5"));
      this.jobNext = next ? next.next : [];
      const runs = await this.attempt(() => this.api("GET", "/api/v1/jobs/" + id + "/runs?limit=" + PAGE_SIZE));
      this.jobRuns = runs ? runs.items.slice().reverse() : [];
    },

    // ------------------------------------------------------------ runs
    async fetchRuns(cursor) {
      const params = Object.assign({ limit: PAGE_SIZE, cursor: cursor }, this.runFilter);
      const data = await this.attempt(() => this.api("GET", "/api/v1/runs?" + this.query(params)));
      if (data) { this.runs = data.items; this.runsCursor = data.next_cursor; }
      return data;
    },
    loadRuns() { this.runPages = [null]; return this.fetchRuns(null); },
    async nextRuns() {
      const cursor = this.runsCursor;
      if (await this.fetchRuns(cursor)) this.runPages.push(cursor);
    },
    async prevRuns() {
      if (this.runPages.length < 2) return;
      this.runPages.pop();
      await this.fetchRuns(this.runPages[this.runPages.length - 1]);
    },
    async loadRun() {
      const run = await this.attempt(() => this.api("GET", "/api/v1/runs/" + this.pageArg));
      if (!run) return;
      this.run = run;
      this.output = run.output_tail || "";
      this.outputSource = "(tail from the run record)";
      if (run.state !== "queued") this.loadOutput();
    },
    stopOutput() {
      if (this.outputAbort) this.outputAbort.abort();
      this.outputAbort = null;
    },
    async loadOutput() {
      // Streams while the run runs; until that endpoint answers, the record's tail stays.
      this.stopOutput();
      const abort = new AbortController();
      this.outputAbort = abort;
      try {
        const response = await fetch("/api/v1/runs/" + this.run.id + "/output", {
          headers: { Authorization: "Bearer " + this.token }, signal: abort.signal,
        });
        if (!response.ok || !response.body) return;
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        let text = "";
        this.outputSource = "(from " + (response.headers.get("Rota-Output-Node") || "the node") + ")";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          text = (text + decoder.decode(value, { stream: true })).slice(-OUTPUT_CHARS_MAX);
          this.output = text;
        }
      } catch (e) {
        // aborted or unavailable: keep the tail
      } finally {
        if (this.outputAbort === abort) this.outputAbort = null;
      }
    },
    async cancelRun() {
      const run = await this.attempt(() => this.api("POST", "/api/v1/runs/" + this.run.id + "/cancel"));
      if (run) this.run = run;
    },

    // ------------------------------------------------------------ operator
    async operate(work, describe) {
      this.op.result = "";
      const result = await this.attempt(work);
      if (result !== null) this.op.result = describe(result);
    },
    transferLeader() {
      return this.operate(() => this.api("POST", "/api/v1/cluster/transfer-leader", this.op.target ? { target: this.op.target } : {}),
        (r) => "leader is now " + r.leader);
    },
    addMember() {
      const body = { id: this.op.newId };
      if (this.op.newAddress) body.address = this.op.newAddress;
      return this.operate(() => this.api("POST", "/api/v1/cluster/members", body), () => "added " + body.id + " as a learner");
    },
    removeMember() {
      const id = this.op.removeId;
      if (!id || !window.confirm("Remove " + id + " from the cluster?")) return null;
      return this.operate(() => this.api("DELETE", "/api/v1/cluster/members/" + id), () => "removed " + id);
    },
    snapshot() {
      return this.operate(() => this.api("POST", "/api/v1/cluster/snapshot"), (r) => "snapshot at index " + r.index);
    },
  };
}

document.addEventListener("alpine:init", () => {
  window.Alpine.data("dashboard", dashboard);
});

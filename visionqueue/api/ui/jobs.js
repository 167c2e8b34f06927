// Async jobs: submit, a live table from the listing endpoint, one job's detail.
import { apiKey, request } from "./api.js";
import {
  bars, clear, clock, el, errorBox, percent, preprocessing, seconds, statusBadge,
} from "./dom.js";

const UNFINISHED = new Set(["pending", "processing"]);
const POLL_MS = 2000;

function idempotencyKey() {
  const random = new Uint8Array(16);
  crypto.getRandomValues(random); // randomUUID needs a secure context; this does not
  return `web-${Array.from(random, (b) => b.toString(16).padStart(2, "0")).join("")}`;
}

function tookSeconds(job) {
  if (!job.finished_at || !job.created_at) return "";
  return seconds((new Date(job.finished_at) - new Date(job.created_at)) / 1000);
}

function topOf(job) {
  const predictions = (job.result && job.result.predictions) || [];
  return predictions[0] || null;
}

function fileName(job) {
  return (job.metadata && job.metadata.filename) || job.id.slice(0, 8);
}

// A job's image as the page may load it: a local signed link is fetched from this origin
// (the server may sign for another host name); an S3 presigned URL as given.
export function imageSource(url) {
  if (!url) return "";
  try {
    const parsed = new URL(url, location.href);
    if (parsed.pathname.startsWith("/v1/images/")) return parsed.pathname + parsed.search;
    return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : "";
  } catch {
    return "";
  }
}

export class JobsPanel {
  constructor(view, options) {
    this.view = view;
    this.options = options; // {config, modelField(), onStatusChange()}
    this.jobs = new Map();
    this.statuses = new Map();
    this.deliveriesSettled = true;
    this.mine = new Set();
    this.openId = null;
    this.openStatus = null;
    this.timer = null;
  }

  bind() {
    const v = this.view;
    v.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.submit();
    });
    v.filter.addEventListener("change", () => this.refresh());
    v.close.addEventListener("click", () => this.closeDetail());
    v.cancel.addEventListener("click", () => this.cancel());
    v.redeliver.addEventListener("click", () => this.redeliver());
    v.detailImage.addEventListener("error", () => {
      if (v.detailImage.getAttribute("src")) v.imageCaption.textContent = "The image could not be loaded (its link may have expired).";
    });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible") this.refresh();
    });
  }

  start() {
    this.refresh();
  }

  schedule() {
    clearTimeout(this.timer);
    // one listing request per tick, and none while the tab is hidden
    this.timer = setTimeout(() => {
      if (document.visibilityState === "visible") this.refresh();
      else this.schedule();
    }, POLL_MS);
  }

  async refresh() {
    if (this.options.config.api_keys && !apiKey()) {
      this.view.updated.textContent = "Waiting for an API key.";
      return; // nothing to list until there is a key (entering one refreshes)
    }
    const status = this.view.filter.value;
    const query = new URLSearchParams({ limit: "50" });
    if (status) query.set("status", status);
    try {
      const body = await request(`/v1/jobs?${query}`);
      this.jobs = new Map(body.jobs.map((job) => [job.id, job]));
      const statuses = new Map(body.jobs.map((job) => [job.id, job.status]));
      const changed = [...statuses].some(([id, st]) => this.statuses.get(id) !== st);
      this.statuses = statuses;
      if (changed) this.options.onStatusChange();
      this.renderTable(body.jobs);
      this.renderProgress();
      this.view.updated.textContent = `Updated ${new Date().toLocaleTimeString()}`;
      if (this.openId && this.jobs.has(this.openId)) this.renderDetail(this.jobs.get(this.openId));
    } catch (error) {
      this.view.updated.textContent = `Not updated: ${error.message}`;
    }
    this.schedule();
  }

  async submit() {
    const v = this.view;
    const { config } = this.options;
    const files = Array.from(v.files.files);
    v.message.replaceChildren();
    let metadata = v.metadata.value.trim();
    if (metadata) {
      let parsed;
      try {
        parsed = JSON.parse(metadata);
      } catch (error) {
        v.message.append(errorBox({ message: `Metadata is not valid JSON: ${error.message}`, code: "invalid_metadata" }));
        return;
      }
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) {
        v.message.append(errorBox({ message: "Metadata must be a JSON object, like {\"batch\": 3}.", code: "invalid_metadata" }));
        return;
      }
      metadata = JSON.stringify(parsed);
    }
    v.submit.disabled = true;
    let accepted = 0;
    try {
      const size = config.max_images_per_request;
      for (let start = 0; start < files.length; start += size) {
        const form = new FormData();
        for (const file of files.slice(start, start + size)) form.append("images", file, file.name);
        if (v.webhook.value.trim()) form.append("webhook_url", v.webhook.value.trim());
        if (metadata) form.append("metadata", metadata);
        const model = this.options.modelField();
        if (model) form.append("model", model);
        const body = await request("/v1/jobs", {
          method: "POST",
          body: form,
          headers: { "Idempotency-Key": idempotencyKey() },
        });
        for (const job of body.jobs) this.mine.add(job.id);
        accepted += body.jobs.length;
      }
      v.message.append(`${accepted} job${accepted === 1 ? "" : "s"} submitted.`);
      v.files.value = "";
    } catch (error) {
      if (accepted) v.message.append(`${accepted} submitted, then: `);
      v.message.append(errorBox(error, "Not submitted"));
    } finally {
      v.submit.disabled = false;
    }
    this.refresh();
  }

  renderTable(jobs) {
    const body = this.view.table.tBodies[0];
    const focused = document.activeElement && document.activeElement.dataset
      ? document.activeElement.dataset.jobId : null;
    clear(body);
    if (!jobs.length) {
      body.append(el("tr", {}, el("td", { colspan: 7 }, "No jobs yet.")));
      return;
    }
    for (const job of jobs) {
      const top = topOf(job);
      const open = el("button", { type: "button", "data-job-id": job.id, title: `Open job ${job.id}` }, fileName(job));
      open.addEventListener("click", () => this.openDetail(job.id));
      body.append(
        el(
          "tr",
          { "data-status": job.status, "data-job-id": job.id },
          el("td", {}, open),
          el("td", {}, statusBadge(job.status)),
          el("td", {}, job.model ? String(job.model.tag) : ""),
          el("td", {}, top ? String(top.class) : job.error ? String(job.error.code) : ""),
          el("td", { class: "num" }, top ? percent(top.confidence) : ""),
          el("td", {}, clock(job.created_at)),
          el("td", { class: "num" }, tookSeconds(job)),
        ),
      );
      if (focused === job.id) open.focus();
    }
  }

  renderProgress() {
    const mine = [...this.mine].map((id) => this.jobs.get(id)).filter(Boolean);
    const done = mine.filter((job) => !UNFINISHED.has(job.status)).length;
    this.view.progress.max = Math.max(1, mine.length);
    this.view.progress.value = done;
    this.view.progressText.textContent = mine.length ? `${done} of ${mine.length}` : "nothing submitted from this tab yet";
  }

  async openDetail(id) {
    this.openId = id;
    this.openStatus = null;
    this.awaitedAttempt = 0;
    this.deliveriesSettled = true;
    const v = this.view;
    v.detailImage.removeAttribute("src");
    v.imageCaption.textContent = "";
    v.detailMessage.textContent = "";
    v.detail.hidden = false;
    let job = this.jobs.get(id);
    if (!job) {
      try {
        job = await request(`/v1/jobs/${encodeURIComponent(id)}`);
      } catch (error) {
        v.detailMessage.replaceChildren(errorBox(error, "Could not load the job"));
        return;
      }
    }
    this.renderDetail(job);
    v.detail.focus();
  }

  closeDetail() {
    const id = this.openId;
    this.openId = null;
    this.view.detail.hidden = true;
    const back = this.view.table.querySelector(`button[data-job-id="${CSS.escape(id || "")}"]`);
    if (back) back.focus();
  }

  renderDetail(job) {
    const v = this.view;
    v.title.textContent = `Job ${fileName(job)}`;
    if (!v.detailImage.getAttribute("src")) {
      const src = imageSource(job.image && job.image.url);
      if (src) {
        v.detailImage.src = src;
        v.detailImage.alt = `The image of job ${job.id}`;
        const img = job.image;
        v.imageCaption.textContent = `${img.content_type || ""} ${img.width || "?"}×${img.height || "?"}`;
      }
    }
    const fields = [
      ["id", job.id],
      ["status", statusBadge(job.status)],
      ["model", job.model ? `${job.model.tag} (weights ${job.model.weights})` : "not yet"],
      ["submitted", clock(job.created_at)],
      ["started", clock(job.started_at)],
      ["finished", clock(job.finished_at)],
      ["attempts", String(job.attempts)],
      ["webhook", job.webhook_url || "none"],
      ["metadata", JSON.stringify(job.metadata || {})],
    ];
    if (job.result) {
      fields.push(["preprocessing", preprocessing(job.result.preprocessing)]);
      fields.push(["processing time", seconds(job.result.processing_time)]);
    }
    clear(v.fields);
    for (const [name, value] of fields) v.fields.append(el("dt", {}, name), el("dd", {}, value));
    const parts = [];
    if (job.result) parts.push(bars(job.result.predictions, "Predictions"));
    if (job.error) parts.push(errorBox(job.error, "Failed"));
    v.bars.replaceChildren(...parts);
    v.json.textContent = JSON.stringify(job, null, 2);
    v.cancel.hidden = job.status !== "pending";
    v.redeliver.hidden = !(job.webhook_url && (job.status === "completed" || job.status === "failed"));
    // deliveries: when the status changes, then each tick until the last attempt settled
    if (job.status !== this.openStatus || (job.webhook_url && !this.deliveriesSettled)) {
      this.openStatus = job.status;
      this.loadDeliveries(job.id);
    }
  }

  async loadDeliveries(id) {
    const body = this.view.deliveries.tBodies[0];
    try {
      const answer = await request(`/v1/jobs/${encodeURIComponent(id)}/deliveries`);
      if (id !== this.openId) return;
      const job = this.jobs.get(id);
      const last = answer.deliveries[answer.deliveries.length - 1];
      const awaited = this.awaitedAttempt || 0;
      this.deliveriesSettled = Boolean(
        !job || !job.webhook_url || UNFINISHED.has(job.status)
          || (last && last.attempt >= awaited && (last.succeeded || !last.next_attempt_at)),
      );
      clear(body);
      if (!answer.deliveries.length) {
        body.append(el("tr", {}, el("td", { colspan: 6 }, "No webhook deliveries.")));
      }
      for (const d of answer.deliveries) {
        const outcome = d.succeeded ? `delivered (${d.status_code})` : d.status_code ? `HTTP ${d.status_code}` : String(d.error || "failed");
        body.append(
          el(
            "tr",
            {},
            el("td", { class: "num" }, String(d.attempt)),
            el("td", {}, String(d.event_type)),
            el("td", {}, clock(d.attempted_at)),
            el("td", {}, outcome),
            el("td", { class: "num" }, `${Number(d.latency_ms).toFixed(0)} ms`),
            el("td", {}, clock(d.next_attempt_at)),
          ),
        );
      }
    } catch (error) {
      clear(body).append(el("tr", {}, el("td", { colspan: 6 }, errorBox(error, "Deliveries unavailable"))));
    }
  }

  async cancel() {
    const id = this.openId;
    try {
      const job = await request(`/v1/jobs/${encodeURIComponent(id)}`, { method: "DELETE" });
      this.view.detailMessage.textContent = "Cancelled.";
      this.renderDetail(job);
    } catch (error) {
      this.view.detailMessage.replaceChildren(errorBox(error, "Not cancelled"));
    }
    this.refresh();
  }

  async redeliver() {
    const id = this.openId;
    try {
      const answer = await request(`/v1/jobs/${encodeURIComponent(id)}/deliveries/redeliver`, { method: "POST" });
      this.view.detailMessage.textContent = `Redelivery scheduled (attempt ${answer.attempt}).`;
      this.deliveriesSettled = false; // the table follows until the new attempt shows
      this.awaitedAttempt = answer.attempt;
    } catch (error) {
      this.view.detailMessage.replaceChildren(errorBox(error, "Not redelivered"));
    }
  }
}

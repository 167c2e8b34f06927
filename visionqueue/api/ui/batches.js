// Dataset batches: a live table of the caller's batches from GET /v1/batches.
import { request } from "./api.js";
import { clear, clock, el, statusBadge } from "./dom.js";

const POLL_MS = 3000;
const FINAL = new Set(["completed", "failed", "cancelled"]);

function progressCell(batch) {
  const processed = batch.done + batch.failed;
  const total = batch.total ?? batch.planned ?? 0;
  const bar = el("progress", { max: Math.max(total, 1), value: processed, "aria-label": `batch ${batch.id} progress` });
  const text = `${processed}/${batch.total ?? `${total}+`}` + (batch.failed ? ` (${batch.failed} failed)` : "");
  return el("td", {}, bar, " ", text);
}

function rateCell(batch) {
  if (!batch.images_per_second) return el("td", {}, "");
  const eta = batch.eta_s && !FINAL.has(batch.status) ? `, ETA ${Math.round(batch.eta_s)} s` : "";
  return el("td", {}, `${batch.images_per_second} img/s${eta}`);
}

export class BatchesPanel {
  constructor(view) {
    this.view = view; // {section, body, updated}
    this.timer = null;
  }

  start() {
    this.refresh();
  }

  async refresh() {
    clearTimeout(this.timer);
    try {
      const listing = await request("/v1/batches?limit=20");
      this.render(listing.batches);
      this.view.updated.textContent = `Updated ${clock(new Date().toISOString())}`;
    } catch (error) {
      this.view.updated.textContent = `Batches could not be listed: ${error.message}`;
    }
    if (document.visibilityState === "visible") this.timer = setTimeout(() => this.refresh(), POLL_MS);
    else document.addEventListener("visibilitychange", () => this.refresh(), { once: true });
  }

  render(batches) {
    const body = this.view.body;
    clear(body);
    this.view.section.hidden = batches.length === 0;
    for (const batch of batches) {
      const results = el("a", { href: new URL(batch.results_url, location.href).pathname }, "results");
      body.append(
        el(
          "tr",
          { "data-batch": batch.id },
          el("td", {}, el("code", {}, batch.source)),
          el("td", {}, statusBadge(batch.status)),
          progressCell(batch),
          rateCell(batch),
          el("td", {}, (batch.model && batch.model.tag) || "default"),
          el("td", {}, clock(batch.created_at)),
          el("td", {}, results),
        ),
      );
    }
  }
}

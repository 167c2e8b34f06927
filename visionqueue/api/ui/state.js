// Serving state (readiness, queue depth, jobs by status) and the served models.
import { ApiError, request } from "./api.js";
import { clear, el } from "./dom.js";

// The gauges Prometheus scrapes from /metrics, read from the text exposition format.
export function parseGauges(text, name) {
  const values = {};
  const pattern = new RegExp(`^${name}\\{([^}]*)\\}\\s+(\\S+)`);
  for (const line of String(text).split("\n")) {
    const match = pattern.exec(line);
    if (!match) continue;
    const label = /="((?:[^"\\]|\\.)*)"/.exec(match[1]);
    const key = label ? label[1] : "";
    values[key] = (values[key] || 0) + Number(match[2]);
  }
  return values;
}

function listInto(node, entries, emptyText) {
  clear(node);
  if (!entries.length) {
    node.append(el("li", {}, el("span", {}, emptyText)));
    return;
  }
  for (const [name, value, kind] of entries) {
    node.append(
      el("li", {}, el("span", {}, name), el("span", { class: `value status-${kind || ""}` }, value)),
    );
  }
}

export async function refreshState(view) {
  let ready = null;
  try {
    ready = await request("/readyz", { accept: [503], auth: false });
  } catch (error) {
    ready = { status: "unreachable", checks: { server: error.message } };
  }
  const checks = Object.entries((ready && ready.checks) || {}).map(([name, value]) => [
    name,
    String(value),
    value === "ok" ? "ok" : "bad",
  ]);
  view.readySummary.textContent = ready ? String(ready.status) : "unknown";
  view.readySummary.className = `badge status-${ready && ready.ready ? "ready" : "not_ready"}`;
  listInto(view.readyChecks, checks, "no checks reported");

  try {
    const text = await request("/metrics", { auth: false });
    const depth = parseGauges(text, "celery_queue_depth");
    const statuses = parseGauges(text, "vq_jobs");
    listInto(view.queueDepth, Object.entries(depth).map(([q, n]) => [q, String(n)]),
      "not reported (no broker yet)");
    listInto(view.jobsByStatus, Object.entries(statuses).map(([s, n]) => [s, String(n)]),
      "not reported");
  } catch (error) {
    const why = error.status === 401 ? "/metrics needs its token (VQ_METRICS_TOKEN)" : error.message;
    listInto(view.queueDepth, [], `metrics unavailable: ${why}`);
    listInto(view.jobsByStatus, [], "metrics unavailable");
  }
  view.updated.textContent = `Updated ${new Date().toLocaleTimeString()}.`;
  return ready;
}

// The models a request may name. /v1/models lists them when the server serves several;
// without it the one default model (from /readyz) answers and no `model` field is sent.
export async function loadModels(ready) {
  try {
    const body = await request("/v1/models");
    const list = Array.isArray(body) ? body : (body && (body.models || body.data)) || [];
    const models = list
      .filter((m) => m && (m.name || m.id))
      .map((m) => ({
        name: String(m.name || m.id),
        tag: m.tag ? String(m.tag) : "",
        weights: m.weights || m.weights_origin || "",
        isDefault: Boolean(m.default) || (body && body.default === (m.name || m.id)),
        ready: m.ready !== false,
        demo: Boolean(m.demo),
      }));
    if (models.length) return { named: true, models };
  } catch (error) {
    if (!(error instanceof ApiError) || (error.status !== 404 && error.status !== 405)) {
      throw error;
    }
  }
  const model = (ready && ready.model) || {};
  return {
    named: false,
    models: [{
      name: "",
      tag: String(model.tag || ""),
      weights: String(model.weights || ""),
      isDefault: true,
      demo: String(model.weights || "").startsWith("random-init"),
    }],
  };
}

export function fillModelSelect(select, served) {
  clear(select);
  for (const m of served.models) {
    const label = served.named
      ? `${m.name}${m.tag ? ` (${m.tag})` : ""}${m.isDefault ? ", default" : ""}${m.ready ? "" : ", not ready"}`
      : `default${m.tag ? ` (${m.tag})` : ""}`;
    select.append(el("option", { value: m.name, selected: m.isDefault }, label));
  }
  select.disabled = !served.named || served.models.length < 2;
}

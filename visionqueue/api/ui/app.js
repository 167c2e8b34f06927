// The page's entry point: wires the API key prompt, serving state, "try it" and jobs.
import { apiKey, forgetApiKey, onUnauthorized, request, setApiKey } from "./api.js";
import { BatchesPanel } from "./batches.js";
import { JobsPanel } from "./jobs.js";
import { fillModelSelect, loadModels, refreshState } from "./state.js";
import { TryPanel } from "./try.js";

const STATE_POLL_MS = 5000;
const byId = (id) => document.getElementById(id);

const keyView = {
  panel: byId("key-panel"),
  message: byId("key-message"),
  form: byId("key-form"),
  input: byId("key-input"),
  state: byId("key-state"),
  forget: byId("key-forget"),
};

function showKeyState(config) {
  const key = apiKey();
  keyView.forget.hidden = !key;
  if (!config.api_keys) keyView.state.textContent = "No API key needed";
  else keyView.state.textContent = key ? "API key set for this tab" : "API key needed";
}

function askForKey(text) {
  keyView.panel.hidden = false;
  if (text) keyView.message.textContent = text;
  keyView.input.focus();
}

function showDemo(model) {
  const banner = byId("demo-banner");
  if (model && (model.demo || String(model.weights || "").startsWith("random-init"))) {
    banner.textContent = `Demo model: ${model.tag || "this model"} has random-init weights `
      + `(${model.weights}); its predictions mean nothing. Import real weights to serve a real model.`;
    banner.hidden = false;
  }
}

async function main() {
  let config;
  try {
    config = await request("/ui/config.json", { auth: false });
  } catch (error) {
    const box = byId("page-error");
    box.textContent = `The page could not load its settings: ${error.message}`;
    box.hidden = false;
    return;
  }
  let served = { named: false, models: [] };
  const modelSelect = byId("model");
  const modelField = () => (served.named ? modelSelect.value : "");
  byId("top-k").max = String(config.max_top_k);

  const stateView = {
    readySummary: byId("ready-summary"),
    readyChecks: byId("ready-checks"),
    queueDepth: byId("queue-depth"),
    jobsByStatus: byId("jobs-by-status"),
    updated: byId("state-updated"),
  };
  // a job changed status, so the gauges did too (the server caches them for a moment)
  let stateTimer = null;
  function stateSoon() {
    clearTimeout(stateTimer);
    stateTimer = setTimeout(() => refreshState(stateView), 2500);
  }
  const jobs = new JobsPanel(
    {
      form: byId("jobs-form"),
      files: byId("job-files"),
      webhook: byId("webhook-url"),
      metadata: byId("metadata"),
      submit: byId("jobs-submit"),
      message: byId("jobs-message"),
      progress: byId("jobs-progress"),
      progressText: byId("jobs-progress-text"),
      filter: byId("status-filter"),
      updated: byId("jobs-updated"),
      table: byId("jobs-table"),
      detail: byId("job-detail"),
      title: byId("detail-title"),
      close: byId("detail-close"),
      detailImage: byId("detail-image"),
      imageCaption: byId("detail-image-caption"),
      fields: byId("detail-fields"),
      bars: byId("detail-bars"),
      cancel: byId("detail-cancel"),
      redeliver: byId("detail-redeliver"),
      detailMessage: byId("detail-message"),
      deliveries: byId("deliveries-table"),
      json: byId("detail-json"),
    },
    { config, modelField, onStatusChange: stateSoon },
  );
  const tryPanel = new TryPanel(
    { files: byId("try-files"), drop: byId("drop"), topK: byId("top-k"), results: byId("try-results") },
    { config, modelField, onDemo: showDemo },
  );

  async function loadModelList(ready) {
    try {
      served = await loadModels(ready);
      fillModelSelect(modelSelect, served);
      const demo = served.models.find((m) => m.isDefault && m.demo);
      if (demo) showDemo(demo);
    } catch {
      // 401 (the key prompt shows) or a server error: keep the default model
    }
  }

  onUnauthorized((error) => {
    showKeyState(config);
    askForKey(apiKey()
      ? `The server refused this API key (${error.message}). Enter a valid key.`
      : "This server needs an API key. The page keeps it for this tab only and sends it in "
        + "the Authorization header, never in a URL.");
  });
  keyView.form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = keyView.input.value.trim();
    if (!key) return;
    setApiKey(key);
    keyView.input.value = "";
    keyView.panel.hidden = true;
    showKeyState(config);
    jobs.refresh();
    loadModelList(await refreshState(stateView));
  });
  keyView.forget.addEventListener("click", () => {
    forgetApiKey();
    showKeyState(config);
    if (config.api_keys) askForKey();
  });

  showKeyState(config);
  if (config.api_keys && !apiKey()) askForKey();
  tryPanel.bind();
  jobs.bind();

  const ready = await refreshState(stateView);
  if (ready && ready.model) showDemo(ready.model);
  await loadModelList(ready);
  jobs.start();
  const batchesSection = byId("batches");
  new BatchesPanel({
    section: batchesSection,
    body: batchesSection.querySelector("tbody"),
    updated: byId("batches-updated"),
  }).start();
  setInterval(() => {
    if (document.visibilityState === "visible") refreshState(stateView);
  }, STATE_POLL_MS);
}

main();

// "Try a model": each image goes to POST /predict; its top-k answer is shown beside it.
import { request } from "./api.js";
import { bars, bytes, el, errorBox, preprocessing, seconds } from "./dom.js";

function imageFiles(list) {
  return Array.from(list || []).filter((f) => f instanceof File);
}

function resultCard(file) {
  const preview = el("img", { alt: `The uploaded image ${file.name || "(pasted)"}` });
  const url = URL.createObjectURL(file);
  preview.src = url;
  preview.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  preview.addEventListener("error", () => URL.revokeObjectURL(url), { once: true });
  const body = el("div", { class: "result-body" }, el("p", { class: "working" }, "Classifying…"));
  const card = el(
    "article",
    { class: "result", "aria-busy": "true" },
    el("div", {}, preview),
    el("div", {}, el("h3", {}, file.name || "pasted image"), body),
  );
  return { card, body };
}

// "resnet18:abc" (a tag names its model already), else "name (tag)"
function modelName(model) {
  const tag = String(model.tag || "?");
  return !model.name || tag.startsWith(`${model.name}:`) ? tag : `${model.name} (${tag})`;
}

function showAnswer(body, answer, elapsedMs) {
  const model = answer.model || {};
  const top = (answer.predictions || [])[0];
  const parts = [
    bars(answer.predictions, "Top predictions"),
    el(
      "p",
      { class: "meta" },
      `Model ${modelName(model)} · weights ${model.weights || "?"}`,
      ` · preprocessing ${preprocessing(answer.preprocessing)} · server ${seconds(answer.processing_time)} · `,
      `round trip ${seconds(elapsedMs / 1000)}`,
    ),
  ];
  if (model.demo) {
    parts.push(el("p", { class: "meta demo-note" }, String(model.warning || "Demo model: predictions mean nothing.")));
  }
  body.replaceChildren(...parts);
  return top;
}

export class TryPanel {
  constructor(view, options) {
    this.view = view;
    this.options = options; // {config, modelField(), onDemo(model)}
    this.queue = Promise.resolve();
  }

  bind() {
    const { files, drop } = this.view;
    files.addEventListener("change", () => {
      this.classify(imageFiles(files.files));
      files.value = "";
    });
    drop.addEventListener("dragover", (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
    drop.addEventListener("dragleave", () => drop.classList.remove("over"));
    drop.addEventListener("drop", (event) => {
      event.preventDefault();
      drop.classList.remove("over");
      this.classify(imageFiles(event.dataTransfer && event.dataTransfer.files));
    });
    document.addEventListener("paste", (event) => {
      const pasted = imageFiles(event.clipboardData && event.clipboardData.files);
      if (pasted.length) {
        event.preventDefault();
        this.classify(pasted);
      }
    });
  }

  classify(files) {
    for (const file of files) {
      const { card, body } = resultCard(file);
      this.view.results.prepend(card);
      // one request at a time: a page that sent 50 photos at once would be the load spike
      this.queue = this.queue.then(() => this.classifyOne(file, card, body));
    }
  }

  async classifyOne(file, card, body) {
    const { config } = this.options;
    try {
      if (file.size > config.max_upload_bytes) {
        throw Object.assign(new Error(
          `${bytes(file.size)} is over the server's limit of ${bytes(config.max_upload_bytes)} per request.`,
        ), { code: "payload_too_large" });
      }
      const form = new FormData();
      form.append("image", file, file.name || "pasted.png");
      form.append("top_k", String(this.view.topK.value || 5));
      const model = this.options.modelField();
      if (model) form.append("model", model);
      const started = performance.now();
      const answer = await request("/predict", { method: "POST", body: form });
      showAnswer(body, answer, performance.now() - started);
      this.options.onDemo(answer.model);
    } catch (error) {
      body.replaceChildren(errorBox(error, "Not classified"));
    } finally {
      card.removeAttribute("aria-busy");
    }
  }
}

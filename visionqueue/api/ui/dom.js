// Building the page's elements. Data from users and model files only ever becomes text
// (text nodes, textContent); nothing is parsed as HTML.

// el("p", {class: "x"}, "text", child): attributes by setAttribute (never event handlers)
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.toLowerCase().startsWith("on")) throw new Error(`no inline handlers: ${name}`);
    node.setAttribute(name, value === true ? "" : String(value));
  }
  append(node, ...children);
  return node;
}

export function append(node, ...children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

export function percent(confidence) {
  return `${(100 * Number(confidence)).toFixed(1)}%`;
}

export function seconds(value) {
  const s = Number(value);
  if (!Number.isFinite(s)) return "";
  return s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`;
}

export function bytes(value) {
  const n = Number(value);
  if (n >= 1024 * 1024) return `${(n / 1024 / 1024).toFixed(1)} MB`;
  if (n >= 1024) return `${(n / 1024).toFixed(0)} KB`;
  return `${n} B`;
}

export function clock(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : date.toLocaleTimeString();
}

// How an image was preprocessed: a label ("exact") or a description of the steps.
export function preprocessing(value) {
  if (value === null || value === undefined || value === "") return "?";
  if (typeof value !== "object") return String(value);
  return Object.entries(value)
    .map(([k, v]) => `${k} ${Array.isArray(v) ? v.join("/") : typeof v === "object" ? JSON.stringify(v) : v}`)
    .join(", ");
}

// Top-k predictions as labelled bars; the percentage is text, the bar only repeats it.
export function bars(predictions, caption) {
  const list = el("ol", { class: "bars", "aria-label": caption });
  for (const p of predictions || []) {
    const fill = el("div", { class: "bar-fill" });
    // CSSOM, not a style attribute: the page's CSP allows no inline styles
    fill.style.width = `${Math.max(0, Math.min(100, 100 * Number(p.confidence)))}%`;
    list.append(
      el(
        "li",
        { class: "bar-row" },
        el("span", { class: "bar-label" }, String(p.class ?? p.label ?? p.index)),
        el("div", { class: "bar-track", "aria-hidden": "true" }, fill),
        el("span", { class: "bar-value" }, percent(p.confidence)),
      ),
    );
  }
  return list;
}

export function errorBox(error, prefix) {
  return el(
    "div",
    { class: "error-box", role: "alert" },
    prefix ? `${prefix}: ` : "",
    String(error.message || error),
    error.code ? el("span", {}, " (", el("code", {}, String(error.code)), ")") : "",
  );
}

export function statusBadge(status) {
  const working = status === "pending" || status === "processing";
  return el("span", { class: `badge status-${status}${working ? " working" : ""}` }, status);
}

// Calls to the VisionQueue API from the page: same origin only, API key in a header.
const KEY_NAME = "visionqueue.api-key";

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

const unauthorizedListeners = [];

export function onUnauthorized(listener) {
  unauthorizedListeners.push(listener);
}

// sessionStorage: the key lives as long as this tab, and never goes into a URL
export function apiKey() {
  try {
    return sessionStorage.getItem(KEY_NAME) || "";
  } catch {
    return "";
  }
}

export function setApiKey(value) {
  sessionStorage.setItem(KEY_NAME, value);
}

export function forgetApiKey() {
  sessionStorage.removeItem(KEY_NAME);
}

// Return the parsed body; throw ApiError with the server's {"error": {code, message}}.
// `accept` lists statuses whose body is an answer too (/readyz answers 503 with its checks);
// `auth: false` for routes API keys do not guard (/metrics may want its own token instead).
export async function request(
  path,
  { method = "GET", body, headers = {}, accept = [], auth = true } = {},
) {
  const sent = new Headers(headers);
  const key = auth ? apiKey() : "";
  if (key) sent.set("Authorization", `Bearer ${key}`);
  let response;
  try {
    response = await fetch(path, {
      method,
      body,
      headers: sent,
      cache: "no-store",
      credentials: "same-origin",
      redirect: "error",
    });
  } catch {
    throw new ApiError(0, "network_error",
      "The server could not be reached, or it closed the connection before answering.");
  }
  const type = response.headers.get("content-type") || "";
  let payload = null;
  try {
    payload = type.includes("json") ? await response.json() : await response.text();
  } catch {
    payload = null;
  }
  if (response.ok || accept.includes(response.status)) {
    return payload;
  }
  const error = payload && typeof payload === "object" && payload.error ? payload.error : {};
  const failure = new ApiError(
    response.status,
    String(error.code || `http_${response.status}`),
    String(error.message || `The server answered ${response.status} ${response.statusText}.`),
  );
  if (response.status === 401 && auth) {
    for (const listener of unauthorizedListeners) listener(failure);
  }
  throw failure;
}

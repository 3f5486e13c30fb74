/* The chores every Surge page shares, loaded by templates/base.html before a page's own
   script: window.Surge.api (fetch with the session's CSRF token; contract errors as
   Surge.ApiError), Surge.describe (an error in words), Surge.showError / Surge.submit
   (forms), Surge.say (the page's status line) and Surge.live (a WebSocket that reconnects
   and resumes). Plain script, no build step, no dependency. */
(function () {
  "use strict";

  function meta(name) {
    const element = document.querySelector('meta[name="' + name + '"]');
    return element ? element.content : "";
  }

  // ---- REST -----------------------------------------------------------------------------

  // The contract's error body {code, detail, fields?}, kept whole so a page can branch on
  // `code` (e.g. "sold_out") while people read `describe(error)`.
  class ApiError extends Error {
    constructor(status, body) {
      const data = body && typeof body === "object" ? body : {};
      super(data.detail || "Request failed (HTTP " + status + ").");
      this.name = "ApiError";
      this.status = status;
      this.code = data.code || "http_" + status;
      this.detail = data.detail || "";
      this.fields = data.fields || null;
      this.retryAfter = null;
    }
  }

  // Words for the codes every endpoint can answer; an app's own codes come with a detail.
  const WORDS = {
    not_authenticated: "You are not logged in (or your session expired). Log in and try again.",
    permission_denied: "You are not allowed to do that.",
    not_found: "That no longer exists, or it is not yours.",
    throttled: "Too many requests: wait a moment and try again.",
    server_error: "The server failed to answer. Try again in a moment.",
    service_unavailable: "The service is busy or restarting. Try again in a moment.",
    network: "The server could not be reached. Check the connection and try again.",
  };

  function fieldLabel(name) {
    if (name === "non_field_errors") return "";
    return name.replace(/_/g, " ").replace(/^./, (c) => c.toUpperCase()) + ": ";
  }

  function describe(error) {
    if (error instanceof ApiError) {
      let text = WORDS[error.code] && error.code !== "invalid" ? WORDS[error.code] : error.detail;
      if (!text) text = WORDS[error.code] || "Request failed (HTTP " + error.status + ").";
      if (error.fields) {
        const parts = Object.entries(error.fields).map(([name, messages]) =>
          fieldLabel(name) + [].concat(messages).join(" "));
        if (parts.length) text = (error.detail ? error.detail + " " : "") + parts.join("; ");
      }
      if (error.retryAfter) text += " (retry in " + error.retryAfter + " s)";
      return text;
    }
    if (error instanceof TypeError) return WORDS.network; // what fetch rejects with offline
    return (error && error.message) || String(error);
  }

  function csrfToken() {
    // base.html renders the token (which also sets the cookie); the cookie is the fallback.
    const fromMeta = meta("csrf-token");
    if (fromMeta) return fromMeta;
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    return match ? decodeURIComponent(match[1]) : "";
  }

  function newKey() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    // randomUUID needs a secure context; getRandomValues does not.
    const bytes = crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // api(path, {method, body, headers, idempotencyKey}) -> the JSON answer (null for 204).
  // Rejects with ApiError for a non-2xx answer and TypeError when the server is unreachable.
  // idempotencyKey: true makes a fresh key; pass a string to reuse one across retries.
  async function api(path, options) {
    const opts = options || {};
    const method = (opts.method || (opts.body === undefined ? "GET" : "POST")).toUpperCase();
    const headers = Object.assign({ Accept: "application/json" }, opts.headers || {});
    let body;
    if (opts.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.body);
    }
    if (!["GET", "HEAD", "OPTIONS"].includes(method)) headers["X-CSRFToken"] = csrfToken();
    if (opts.idempotencyKey) {
      headers["Idempotency-Key"] = opts.idempotencyKey === true ? newKey() : opts.idempotencyKey;
    }
    const response = await fetch(path, { method, headers, body, credentials: "same-origin" });
    const isJson = (response.headers.get("Content-Type") || "").includes("json");
    const data = response.status === 204 || !isJson ? null : await response.json().catch(() => null);
    if (!response.ok) {
      const error = new ApiError(response.status, data);
      error.retryAfter = response.headers.get("Retry-After");
      throw error;
    }
    return data;
  }

  // ---- Words on the page ----------------------------------------------------------------

  // The base template's status line is an ARIA live region: screen readers hear it too.
  function say(text, kind) {
    const line = document.getElementById("surge-status");
    if (!line) return;
    line.textContent = text;
    line.className = "status-line" + (kind ? " status-" + kind : "");
  }

  // Puts an error in words into `target` (an element or its id) and marks the form fields
  // the contract's `fields` name, so the message and the field are found by keyboard too.
  function showError(target, error, form) {
    const element = typeof target === "string" ? document.getElementById(target) : target;
    if (form) {
      for (const field of form.querySelectorAll("[aria-invalid]")) field.removeAttribute("aria-invalid");
      if (error && error.fields) {
        for (const name of Object.keys(error.fields)) {
          const field = form.elements.namedItem(name);
          if (field && field.setAttribute) field.setAttribute("aria-invalid", "true");
        }
      }
    }
    if (element) {
      element.setAttribute("role", "alert");
      element.textContent = error ? describe(error) : "";
    }
  }

  // submit(form, handler): runs `await handler(form)` on submit (Enter or the button), with
  // the submit buttons disabled meanwhile and any error shown in the form's [data-error].
  function submit(form, handler) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const buttons = form.querySelectorAll("button, input[type=submit]");
      const errorBox = form.querySelector("[data-error]");
      buttons.forEach((b) => { b.disabled = true; });
      try {
        showError(errorBox, null, form);
        await handler(form);
      } catch (error) {
        showError(errorBox, error, form);
      } finally {
        buttons.forEach((b) => { b.disabled = false; });
      }
    });
  }

  // ---- WebSocket ------------------------------------------------------------------------

  function isLoopback(host) {
    return ["localhost", "127.0.0.1", "[::1]", "::1"].includes(host);
  }

  // The ws process listens on its own port (settings WS_BASE_URL, from PUBLIC_HOST and
  // WS_PORT). On a development machine the page may be open as 127.0.0.1 while the setting
  // says localhost: the session cookie belongs to the page's host name, so keep that one.
  function wsUrl(path) {
    const configured = meta("surge-ws-base") || "ws://" + location.hostname + ":8001";
    const base = new URL(configured);
    if (isLoopback(base.hostname) && isLoopback(location.hostname)) base.hostname = location.hostname;
    if (location.protocol === "https:" && base.protocol === "ws:") base.protocol = "wss:";
    return base.origin + base.pathname.replace(/\/$/, "") + path;
  }

  // Close codes a consumer uses, after accepting, to refuse (not logged in, not allowed,
  // no such room): reconnecting would be refused again, so the helper stops and says why.
  // (A consumer that refuses before accepting fails the handshake: the browser only sees
  // 1006, and the helper keeps retrying with its backoff.)
  const REFUSED = { 4401: "not logged in", 4403: "not allowed", 4404: "not found" };

  // live(path, {onMessage, resume, onStatus, minDelay, maxDelay}) -> {send, close, socket}
  // - onMessage(frame): every JSON frame the server sends.
  // - resume(): called on every open, first and later; the frame it returns (say
  //   {type: "resume", after_seq: lastSeq}) is sent first, so a page that tracks the last
  //   seq/id it saw gets exactly what it missed while disconnected. Return null for none.
  // - onStatus(state, info): "connecting" | "open" | "waiting" ({delay} ms) | "refused"
  //   ({code, reason}) | "closed"; by default it is written to the page's status line.
  function live(path, options) {
    const opts = options || {};
    const minDelay = opts.minDelay || 500;
    const maxDelay = opts.maxDelay || 15000;
    const onStatus = opts.onStatus || defaultStatus;
    let socket = null;
    let attempt = 0;
    let timer = null;
    let stopped = false;

    function connect() {
      timer = null;
      onStatus("connecting", {});
      socket = new WebSocket(wsUrl(path));
      socket.onopen = () => {
        attempt = 0;
        onStatus("open", {});
        const frame = opts.resume ? opts.resume() : null;
        if (frame) socket.send(JSON.stringify(frame));
      };
      socket.onmessage = (event) => {
        let frame;
        try {
          frame = JSON.parse(event.data);
        } catch (error) {
          return; // not ours to show: the contract only sends JSON frames
        }
        if (opts.onMessage) opts.onMessage(frame);
      };
      socket.onclose = (event) => {
        socket = null;
        if (stopped) return;
        if (REFUSED[event.code]) {
          stopped = true;
          onStatus("refused", { code: event.code, reason: event.reason || REFUSED[event.code] });
          return;
        }
        // Exponential backoff with jitter: after a ws restart every open page would
        // otherwise come back in the same instant. Half fixed, half random.
        const ceiling = Math.min(maxDelay, minDelay * 2 ** attempt);
        const delay = Math.round(ceiling / 2 + Math.random() * (ceiling / 2));
        attempt += 1;
        onStatus("waiting", { delay });
        timer = setTimeout(connect, delay);
      };
    }

    // Back online: do not wait out a long backoff.
    window.addEventListener("online", () => {
      if (!stopped && timer) {
        clearTimeout(timer);
        connect();
      }
    });
    // Leaving the page closes the socket; that is not a failure to reconnect from. A page
    // restored from the back/forward cache connects (and resumes) again.
    let hidden = false;
    window.addEventListener("pagehide", () => {
      if (!stopped) hidden = stopped = true;
    });
    window.addEventListener("pageshow", (event) => {
      if (event.persisted && hidden) {
        hidden = stopped = false;
        if (!socket) connect();
      }
    });

    connect();
    return {
      send(frame) {
        if (!socket || socket.readyState !== WebSocket.OPEN) return false;
        socket.send(JSON.stringify(frame));
        return true;
      },
      close() {
        stopped = true;
        if (timer) clearTimeout(timer);
        if (socket) socket.close(1000);
        onStatus("closed", {});
      },
      get socket() { return socket; },
    };
  }

  function defaultStatus(state, info) {
    if (state === "open") say("Live: connected.", "ok");
    else if (state === "connecting") say("Live: connecting…");
    else if (state === "waiting") say("Live: disconnected, retrying in " + Math.ceil(info.delay / 1000) + " s…", "bad");
    else if (state === "refused") say("Live: refused (" + info.reason + ").", "bad");
    else if (state === "closed") say("");
  }

  window.Surge = { api, ApiError, describe, showError, submit, say, live, wsUrl, csrfToken };
})();

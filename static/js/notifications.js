/* /notifications/: the inbox newest first, live over /ws/notifications/ (every open resumes
   after the highest id this page has shown), the unread count, read marks, and Web Push for
   this browser through the service worker at /notifications/sw.js. */
(function () {
  "use strict";
  const API = "/api/notifications/";
  const SUBSCRIPTIONS = API + "webpush/subscriptions/";
  const $ = (id) => document.getElementById(id);
  const list = $("inbox");
  const inboxError = $("inbox-error");
  const pushError = $("push-error");
  const shown = new Map(); // id -> {item, element}
  let lastId = 0;
  let nextPage = null;
  let registration = null;

  const setUnread = (count) => { $("unread-count").textContent = String(count); };

  // Runs an action with its error, in words, in `box` (cleared first); `button`, if given,
  // is disabled meanwhile so a second press does not send it twice.
  async function run(box, action, button) {
    Surge.showError(box, null);
    if (button) button.disabled = true;
    await action().catch((error) => Surge.showError(box, error));
    if (button) button.disabled = false;
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  function safeHref(url) { // a link only to a web page, never to javascript: and the like
    try {
      const parsed = new URL(url, location.href);
      return /^https?:$/.test(parsed.protocol) ? parsed.href : null;
    } catch (error) {
      return null;
    }
  }

  function render(item) {
    const li = element("li");
    li.dataset.id = item.id;
    li.tabIndex = -1; // focus lands here after "Mark read", whose button then goes away
    li.append(element("strong", item.title));
    if (item.body) li.append(element("p", item.body));
    const meta = element("div", "", "meta");
    const time = element("time", new Date(item.created_at).toLocaleString());
    time.dateTime = item.created_at;
    meta.append(time);
    const href = item.url && safeHref(item.url);
    if (href) meta.appendChild(element("a", "Open")).href = href;
    const button = meta.appendChild(element("button", "Mark read", "secondary"));
    button.type = "button";
    button.setAttribute("aria-label", "Mark read: " + item.title);
    button.addEventListener("click", () => run(inboxError, () => markRead(item.id), button));
    li.append(meta);
    return li;
  }

  function showRead(entry, readAt) {
    entry.item.read_at = readAt;
    entry.element.classList.toggle("unread", !readAt);
    entry.element.querySelector("button").hidden = Boolean(readAt);
  }

  // Adds an item once (a resume may repeat what the list or a live event brought), in id
  // order, newest first. Returns whether it was new.
  function add(item) {
    if (shown.has(item.id)) return false;
    const entry = { item, element: render(item) };
    showRead(entry, item.read_at || null); // live frames carry no read_at: new is unread
    shown.set(item.id, entry);
    const after = Array.from(list.children).find((li) => Number(li.dataset.id) < item.id);
    list.insertBefore(entry.element, after || null);
    lastId = Math.max(lastId, item.id);
    $("inbox-empty").hidden = true;
    return true;
  }

  // Every answer carries the caller's unread count. The newest-first pages fill the list
  // (`next` for older ones); `?after_id=` (sync) brings anything newer than what is shown,
  // such as a live event the channel layer dropped.
  async function load(url, paging) {
    const data = await Surge.api(url);
    data.results.forEach(add);
    setUnread(data.unread_count);
    if (paging) $("older").hidden = !(nextPage = data.next);
    $("inbox-empty").hidden = shown.size > 0;
  }
  const sync = () => load(API + "?after_id=" + lastId, false);

  async function markRead(id) {
    const item = await Surge.api(API + id + "/read/", { method: "POST" });
    const entry = shown.get(id);
    showRead(entry, item.read_at);
    entry.element.focus();
    await sync();
  }

  async function markAllRead() {
    await Surge.api(API + "read-all/", { method: "POST" });
    shown.forEach((entry) => entry.item.read_at || showRead(entry, new Date().toISOString()));
    await sync();
  }

  function onFrame(frame) {
    if (frame.type === "notification") {
      if (add(frame)) setUnread(Number($("unread-count").textContent) + 1);
    } else if (frame.type === "resumed") {
      run(inboxError, sync); // exact again after whatever the socket missed
    }
  }

  $("read-all").addEventListener("click", (event) => run(inboxError, markAllRead, event.currentTarget));
  $("older").addEventListener("click", (event) => run(inboxError, () => load(nextPage, true), event.currentTarget));

  function showPush(subscription) {
    $("push-subscribe").hidden = Boolean(subscription);
    $("push-unsubscribe").hidden = !subscription;
    $("push-state").textContent = subscription
      ? "This browser receives your notifications as Web Push."
      : "This browser does not receive Web Push.";
  }

  function keyBytes(base64url) {
    const base64 = base64url.replace(/-/g, "+").replace(/_/g, "/");
    return Uint8Array.from(atob(base64 + "=".repeat((4 - (base64.length % 4)) % 4)), (c) => c.charCodeAt(0));
  }

  function register(subscription) {
    const { endpoint, keys } = subscription.toJSON();
    return Surge.api(SUBSCRIPTIONS, { body: { endpoint, keys } });
  }

  async function subscribe() {
    const { key } = await Surge.api(API + "webpush/vapid-public-key/");
    if (!key) throw new Error("Web Push is not set up on this server (it has no VAPID key).");
    const subscription = await registration.pushManager
      .subscribe({ userVisibleOnly: true, applicationServerKey: keyBytes(key) })
      .catch((error) => {
        if (error.name !== "NotAllowedError") throw error;
        throw new Error("Notifications are blocked for this site: allow them in the browser's site settings, then try again.");
      });
    await register(subscription).catch(async (error) => {
      await subscription.unsubscribe().catch(() => false); // refused: keep the browser in step
      throw error;
    });
    showPush(subscription);
  }

  async function unsubscribe() {
    const subscription = await registration.pushManager.getSubscription();
    if (subscription) {
      // The server first: if that fails, the browser stays subscribed and says so.
      await Surge.api(SUBSCRIPTIONS, { method: "DELETE", body: { endpoint: subscription.endpoint } });
      await subscription.unsubscribe();
    }
    showPush(null);
  }

  async function setUpPush() {
    if (!("serviceWorker" in navigator) || !("PushManager" in window)) {
      $("push-state").textContent = "This browser cannot receive Web Push here (it needs service workers and the Push API, over https or on localhost).";
      return;
    }
    $("push-state").textContent = "Web Push could not be set up in this browser.";
    registration = await navigator.serviceWorker.register("/notifications/sw.js", { scope: "/notifications/" });
    const subscription = await registration.pushManager.getSubscription();
    showPush(subscription);
    // Posted again on each visit: the server may have dropped it (its push service said
    // 410), or it was someone else's on this browser before (a repeat moves it to the caller).
    if (subscription) await register(subscription);
  }

  for (const [id, action] of [["push-subscribe", subscribe], ["push-unsubscribe", unsubscribe]]) {
    $(id).addEventListener("click", (event) => run(pushError, action, event.currentTarget));
  }

  run(pushError, setUpPush);
  run(inboxError, () => load(API, true)).then(() => {
    // After the first page, so the first resume starts from its newest id.
    Surge.live("/ws/notifications/", { resume: () => ({ type: "resume", after_id: lastId }), onMessage: onFrame });
  });
})();

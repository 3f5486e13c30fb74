/* /chat/: the caller's rooms with unread counts, the directory, and one open room live over
   /ws/chat/{id}/. The socket resumes after the last seq shown on every (re)connect, so a
   page that was offline shows exactly what it missed; messages not yet echoed are sent
   again with the same client_msg_id, which the server stores once. */
(function () {
  "use strict";
  const $ = (id) => document.getElementById(id);
  const WORDS = {
    too_large: "That message is too long.",
    rate_limited: "You are sending too fast: wait a second.",
    invalid: "That message could not be sent.",
  };

  let roomId = null;
  let lastSeq = 0;
  let live = null;
  const pending = new Map(); // client_msg_id -> {body, element}
  let typingTimer = null;
  let lastTypingSent = 0;
  let readTimer = null;

  function newId() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function roomLink(room) {
    const link = document.createElement("a");
    link.href = "/chat/?room=" + room.id;
    link.textContent = room.name;
    link.addEventListener("click", (event) => {
      event.preventDefault();
      openRoom(room.id, room.name);
    });
    if (room.id === roomId) link.setAttribute("aria-current", "true");
    return link;
  }

  async function loadRooms() {
    try {
      const mine = await Surge.api("/api/chat/rooms/");
      const others = await Surge.api("/api/chat/rooms/?discover=true");
      const list = $("my-rooms");
      list.replaceChildren();
      for (const room of mine.results) {
        const item = document.createElement("li");
        item.append(roomLink(room));
        if (room.unread && room.id !== roomId) {
          const badge = document.createElement("span");
          badge.className = "badge";
          badge.textContent = room.unread + " unread";
          item.append(badge);
        }
        list.append(item);
      }
      $("no-rooms").hidden = mine.results.length > 0;
      const otherList = $("other-rooms");
      otherList.replaceChildren();
      for (const room of others.results) {
        const item = document.createElement("li");
        item.append(document.createTextNode(room.name));
        const join = document.createElement("button");
        join.type = "button";
        join.className = "secondary";
        join.textContent = "Join";
        join.setAttribute("aria-label", "Join " + room.name);
        join.addEventListener("click", async () => {
          try {
            await Surge.api("/api/chat/rooms/" + room.id + "/join/", { method: "POST" });
            await openRoom(room.id, room.name);
          } catch (error) {
            Surge.showError("rooms-error", error);
          }
        });
        item.append(join);
        otherList.append(item);
      }
      Surge.showError("rooms-error", null);
      return mine.results;
    } catch (error) {
      Surge.showError("rooms-error", error);
      return [];
    }
  }

  function render(message) {
    let item = document.querySelector('#messages li[data-seq="' + message.seq + '"]');
    if (!item) {
      item = document.createElement("li");
      item.dataset.seq = message.seq;
      $("messages").append(item);
    }
    item.dataset.id = message.id;
    item.replaceChildren();
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = message.sender.username;
    const body = document.createElement("span");
    if (message.deleted) {
      body.className = "deleted";
      body.textContent = "(message deleted)";
    } else {
      body.textContent = message.body;
    }
    item.append(who, body);
    const own = pending.get(message.client_msg_id);
    if (own) {
      own.element.remove();
      pending.delete(message.client_msg_id);
    }
    item.scrollIntoView({ block: "nearest" });
  }

  function onMessage(message) {
    if (message.room !== roomId || message.seq <= lastSeq) return;
    render(message);
    lastSeq = message.seq;
    scheduleRead();
  }

  function scheduleRead() {
    if (readTimer) return;
    readTimer = setTimeout(() => {
      readTimer = null;
      if (live && document.visibilityState === "visible") live.send({ type: "read", seq: lastSeq });
    }, 300);
  }

  function onFrame(frame) {
    if (frame.type === "message") onMessage(frame);
    else if (frame.type === "resumed") {
      // Caught up: what was typed while offline goes now, under its first client_msg_id.
      for (const [id, item] of pending) live.send({ type: "message.send", body: item.body, client_msg_id: id });
    } else if (frame.type === "message.deleted") {
      const item = document.querySelector('#messages li[data-seq="' + frame.seq + '"]');
      if (item) {
        item.lastChild.className = "deleted";
        item.lastChild.textContent = "(message deleted)";
      }
    } else if (frame.type === "typing") {
      $("typing").textContent = frame.user.username + " is typing…";
      clearTimeout(typingTimer);
      typingTimer = setTimeout(() => { $("typing").textContent = ""; }, 3000);
    } else if (frame.type === "error") {
      Surge.say(WORDS[frame.code] || frame.detail || "Something went wrong.", "bad");
    }
  }

  async function openRoom(id, name) {
    if (live) live.close();
    live = null;
    roomId = id;
    lastSeq = 0;
    pending.clear();
    history.replaceState(null, "", "/chat/?room=" + id);
    $("messages").replaceChildren();
    $("typing").textContent = "";
    Surge.showError("room-error", null);
    const rooms = await loadRooms();
    const room = rooms.find((r) => r.id === id);
    if (!room) {
      $("room-heading").textContent = name || "Room " + id;
      $("messages").hidden = true;
      $("compose").hidden = true;
      Surge.showError("room-error", new Error("You are not in this room (or it does not exist). Join it from the list."));
      return;
    }
    $("room-heading").textContent = room.name;
    $("messages").hidden = false;
    $("compose").hidden = false;
    try {
      // The latest page, then the socket resumes after the newest seq shown.
      const page = await Surge.api("/api/chat/rooms/" + id + "/messages/?before_seq=" + (room.last_seq + 1));
      for (const message of page.results) onMessage(message);
    } catch (error) {
      Surge.showError("room-error", error);
    }
    live = Surge.live("/ws/chat/" + id + "/", {
      resume: () => ({ type: "resume", after_seq: lastSeq }),
      onMessage: onFrame,
    });
    $("body").focus();
  }

  function send() {
    const box = $("body");
    const body = box.value.trim();
    if (!body || roomId === null) return;
    const id = newId();
    const element = document.createElement("li");
    element.className = "pending";
    element.textContent = body + " (sending…)";
    $("messages").append(element);
    pending.set(id, { body, element });
    box.value = "";
    if (!live || !live.send({ type: "message.send", body, client_msg_id: id })) {
      Surge.say("Not connected: the message goes when the connection is back.", "bad");
    }
  }

  $("compose").addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  $("body").addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    } else if (live && Date.now() - lastTypingSent > 2000) {
      lastTypingSent = Date.now();
      live.send({ type: "typing" });
    }
  });
  Surge.submit($("create-room"), async (form) => {
    const room = await Surge.api("/api/chat/rooms/", {
      body: { name: form.elements.name.value },
      idempotencyKey: true,
    });
    form.reset();
    await openRoom(room.id, room.name);
  });
  document.addEventListener("visibilitychange", scheduleRead);

  const wanted = Number(new URLSearchParams(location.search).get("room"));
  if (wanted > 0) openRoom(wanted);
  else loadRooms();
})();

/* The home page's WebSocket check: the ping socket answers "hello" with the user it
   authenticated from the session cookie, which proves the ws process, its Origin check and
   the session all line up. Every (re)connect pings, so a reconnect shows up here too. */
(function () {
  "use strict";
  const out = document.getElementById("ws-check");
  let connects = 0;
  Surge.live("/ws/ping/", {
    resume: () => ({ type: "ping", echo: "connect-" + (connects += 1) }),
    onMessage: (frame) => {
      if (frame.type === "hello") out.textContent = "connected as " + frame.user.username;
      else if (frame.type === "pong") out.dataset.echo = frame.echo;
    },
  });
})();

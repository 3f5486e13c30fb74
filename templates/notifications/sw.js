{% load static %}/* The service worker of /notifications/ (served at /notifications/sw.js, so its scope is
   that page): shows each Web Push message as a notification, and a click on one opens its
   url (or focuses a window already there). A message is the JSON the server sends,
   {title, body, url, id?}; anything unreadable still shows, so a push is never lost silently
   (browsers punish workers that receive a push and show nothing). */
"use strict";

// A new version takes over at once, not after every tab of the old one has closed.
self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("push", (event) => {
  let message = {};
  try {
    message = event.data ? event.data.json() : {};
  } catch (error) {
    message = { body: event.data.text() };
  }
  const options = {
    body: message.body || "",
    icon: "{% static 'favicon.svg' %}",
    data: { url: message.url || "/notifications/" },
  };
  // One notification per inbox row, even if a retried push arrives twice.
  if (message.id) options.tag = "surge-notification-" + message.id;
  event.waitUntil(self.registration.showNotification(message.title || "Surge", options));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const url = new URL(event.notification.data.url, self.location.origin);
  if (!["http:", "https:"].includes(url.protocol)) return;
  event.waitUntil(
    self.clients.matchAll({ type: "window", includeUncontrolled: true }).then((windows) => {
      const open = windows.find((client) => client.url === url.href && "focus" in client);
      return open ? open.focus() : self.clients.openWindow(url.href);
    })
  );
});

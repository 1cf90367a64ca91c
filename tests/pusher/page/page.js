// The Chromium test's page: pusher-js's browser build (served by the
// backend) as an app uses it. Query: key, wsPort, api (the backend's origin
// for the auth endpoints), user. The test drives it through window.t.
"use strict";

(function () {
  const q = new URLSearchParams(location.search);
  const user = q.get("user");
  const pusher = new Pusher(q.get("key"), {
    wsHost: "127.0.0.1",
    wsPort: Number(q.get("wsPort")),
    forceTLS: false,
    enabledTransports: ["ws"],
    cluster: "mt1",
    channelAuthorization: {
      endpoint: q.get("api") + "/pusher/auth",
      transport: "ajax",
      headers: { Authorization: "Bearer " + user },
    },
    userAuthentication: {
      endpoint: q.get("api") + "/pusher/user-auth",
      transport: "ajax",
      headers: { Authorization: "Bearer " + user },
    },
  });

  const $ = (id) => document.getElementById(id);
  $("version").textContent = Pusher.VERSION;
  $("user").textContent = user;
  const events = [];
  const states = [];
  const errors = [];

  function show(text) {
    const li = document.createElement("li");
    li.textContent = text;
    $("events").appendChild(li);
  }

  pusher.connection.bind("state_change", (s) => {
    states.push(s.current);
    $("state").textContent = s.current;
    $("state").dataset.state = s.current;
    $("socket").textContent = pusher.connection.socket_id || "";
  });
  pusher.connection.bind("error", (e) => errors.push(JSON.parse(JSON.stringify(e))));

  function renderMembers(channel) {
    const ul = $("members");
    ul.replaceChildren();
    channel.members.each((m) => {
      const li = document.createElement("li");
      li.dataset.user = m.id;
      li.textContent = m.id + " (" + m.info.name + ")";
      ul.appendChild(li);
    });
  }

  window.t = {
    pusher,
    events,
    states,
    errors,
    socketId: () => pusher.connection.socket_id,
    state: () => pusher.connection.state,
    /** Subscribe; every event on the channel goes to `events` (and the page). */
    subscribe(name) {
      const channel = pusher.subscribe(name);
      channel.bind_global((event, data) => {
        if (event === "pusher:subscription_succeeded" && name.startsWith("presence-")) renderMembers(channel);
        if (event === "pusher:member_added" || event === "pusher:member_removed") renderMembers(channel);
        events.push({ channel: name, event, data: JSON.parse(JSON.stringify(data ?? null)) });
        show(name + " " + event + " " + JSON.stringify(data));
      });
      for (const ev of ["client-typing"]) {
        channel.bind(ev, (data, meta) => events.push({ channel: name, event: ev + "#meta", data, meta }));
      }
    },
    subscribed: (name) => !!pusher.channel(name)?.subscribed,
    members: (name) => {
      const ids = [];
      pusher.channel(name)?.members.each((m) => ids.push(m.id));
      return ids.sort();
    },
    trigger: (name, event, data) => pusher.channel(name).trigger(event, data),
    count: (name, event) => events.filter((e) => e.channel === name && e.event === event).length,
  };
})();

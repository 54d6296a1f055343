// Unit tests of edgenode.js's state machine, with a fake clock, fake
// sockets and a fake page (online, visibility): sdk/sdk_test.go runs every
// function named test* in a JavaScript runtime (goja) on the classic build
// that the node serves. Real sockets and a real browser are in
// cmd/edgenode's tests.

function fakeEnv() {
  const env = { t: 0, seq: 0, timers: [], sockets: [], sources: [], isOnline: true, isHidden: false, listeners: {}, rnd: 0.5 };
  env.setTimeout = (f, ms) => { const id = ++env.seq; env.timers.push({ id, at: env.t + (ms || 0), f }); return id; };
  env.clearTimeout = (id) => { env.timers = env.timers.filter((x) => x.id !== id); };
  env.now = () => env.t;
  env.random = () => env.rnd;
  env.online = () => env.isOnline;
  env.hidden = () => env.isHidden;
  env.listen = (name, fn) => {
    (env.listeners[name] = env.listeners[name] || []).push(fn);
    return () => { env.listeners[name] = env.listeners[name].filter((x) => x !== fn); };
  };
  env.fire = (name) => (env.listeners[name] || []).slice().forEach((f) => f());
  env.listenerCount = () => Object.keys(env.listeners).reduce((n, k) => n + env.listeners[k].length, 0);
  // advance runs the timers due within ms, in order, moving the clock.
  env.advance = (ms) => {
    const end = env.t + ms;
    for (;;) {
      let next = null;
      for (const x of env.timers) if (x.at <= end && (!next || x.at < next.at)) next = x;
      if (!next) break;
      env.timers = env.timers.filter((x) => x !== next);
      env.t = next.at;
      next.f();
    }
    env.t = end;
  };
  env.WebSocket = class {
    constructor(url) { this.url = url; this.sent = []; env.sockets.push(this); }
    send(s) { this.sent.push(JSON.parse(s)); }
    close(code) { this.closed = code || 1000; }
    open() { this.onopen({}); }
    recv(f) { this.onmessage({ data: JSON.stringify(f) }); }
    fail(code, reason) { this.onclose({ code: code || 1006, reason: reason || "" }); }
  };
  env.EventSource = class {
    constructor(url) { this.url = url; env.sources.push(this); }
    close() { this.closed = true; }
    open() { this.onopen({}); }
    recv(f) { this.onmessage({ data: JSON.stringify(f) }); }
    fail() { this.onerror({}); }
  };
  env.ws = () => env.sockets[env.sockets.length - 1];
  env.es = () => env.sources[env.sources.length - 1];
  return env;
}

function eq(got, want, what) {
  const g = JSON.stringify(got), w = JSON.stringify(want);
  if (g !== w) throw new Error(what + ": got " + g + ", want " + w);
}

const pos = (n) => ({ epoch: "s1." + n + "~1767225600", offset: n });

function setup(extra) {
  const env = fakeEnv();
  const states = [];
  const c = edgenode.connect(Object.assign({ url: "https://live.example.com", env }, extra || {}));
  c.on("state", (e) => states.push(e));
  env.advance(0);
  return { env, c, states };
}

function testConnectSubscribeReceive() {
  const { env, c, states } = setup();
  eq(env.sockets.length, 1, "sockets");
  eq(env.ws().url, "wss://live.example.com/ws", "websocket url");
  eq(c.state, "connecting", "state");
  const got = [];
  const sub = c.subscribe("demo/t1", { onMessage: (d, ctx) => got.push([d, ctx.position.offset]) });
  eq(env.ws().sent, [], "nothing sent before the socket opens");
  env.ws().open();
  eq(c.state, "connected", "state after open");
  eq(env.ws().sent, [{ type: "subscribe", channel: "demo/t1" }], "subscribe frame");
  env.ws().recv({ type: "subscribed", channel: "demo/t1", position: pos(4) });
  eq(sub.state, "subscribed", "sub state");
  env.ws().recv({ type: "message", channel: "demo/t1", position: pos(5), data: { text: "hi" } });
  env.ws().recv({ type: "message", channel: "demo/other", position: pos(9), data: {} });
  eq(got, [[{ text: "hi" }, 5]], "messages");
  eq(sub.position, pos(5), "position");
  eq(states.map((s) => s.state), ["connecting", "connected"], "states");
  let threw = "";
  try { c.subscribe("demo/t1", {}); } catch (e) { threw = e.message; }
  if (!/already subscribed/.test(threw)) throw new Error("a second subscribe to one channel: " + threw);
  try { edgenode.connect({ url: "live.example.com" }); threw = ""; } catch (e) { threw = e.message; }
  if (!/url must be/.test(threw)) throw new Error("bad url: " + threw);
}

function testBackoffFullJitterCapped() {
  const { env, states } = setup({ minReconnectDelay: 1000, maxReconnectDelay: 8000 });
  env.rnd = 0.999;
  env.ws().open();
  env.ws().fail(1006); // lost after it had opened: no SSE probe
  const delays = [];
  for (let i = 0; i < 6; i++) {
    const s = states[states.length - 1];
    eq(s.state, "disconnected", "state while waiting");
    delays.push(s.delay);
    const n = env.sockets.length;
    env.advance(s.delay - 1);
    eq(env.sockets.length, n, "no attempt before the delay");
    env.advance(1);
    eq(env.sockets.length, n + 1, "an attempt at the delay");
    env.ws().fail(1006); // does not open (no channel: no SSE probe)
  }
  eq(delays, [999, 1998, 3996, 7992, 7992, 7992], "windows double up to the cap");
}

// tick lets pending promise reactions (token fetches) run.
function tick() {
  let p = Promise.resolve();
  for (let i = 0; i < 6; i++) p = p.then(() => {});
  return p;
}

function testProbeFailureBacksOffThenWebsocket() {
  const { env, c, states } = setup();
  c.subscribe("demo/t1", {});
  env.ws().fail(1006);
  return tick().then(() => {
    eq(env.sources.length, 1, "SSE probe after a websocket that did not open");
    env.es().fail();
    const s = states[states.length - 1];
    eq([s.state, c.transport], ["disconnected", "websocket"], "neither opened: the node is down");
    env.advance(s.delay);
    eq(env.sockets.length, 2, "websocket first again");
  });
}

function testResumeSinceAfterReconnect() {
  const { env, c } = setup();
  const sub = c.subscribe("demo/t1", { since: pos(2), onMessage() {} });
  env.ws().open();
  eq(env.ws().sent[0].since, pos(2), "first subscribe since the given position");
  env.ws().recv({ type: "subscribed", channel: "demo/t1", position: pos(7), recovered: 5 });
  env.ws().recv({ type: "message", channel: "demo/t1", position: pos(8), data: 1 });
  env.ws().fail(1006);
  env.advance(30000);
  env.ws().open();
  eq(env.ws().sent, [{ type: "subscribe", channel: "demo/t1", since: pos(8) }], "resubscribe since the last position");
  eq(sub.state, "subscribing", "subscribing until answered");
}

function testReconnectElsewhereAndClose1012AreImmediate() {
  const { env, c, states } = setup();
  c.subscribe("demo/t1", {});
  env.ws().open();
  env.ws().recv({ type: "reconnect-elsewhere", reason: "node draining" });
  env.ws().fail(1012, "draining");
  eq(env.sockets.length, 2, "a new socket at once");
  eq(states[states.length - 2].delay, 0, "no delay");
  env.ws().open();
  env.ws().fail(1012);
  eq(env.sockets.length, 3, "close 1012 alone: at once too");
}

function testMustReloadIsOneEvent() {
  const { env, c } = setup();
  const ev = [];
  c.subscribe("demo/t1", { onMustReload: (e) => ev.push("reload:" + e.reason), onError: (e) => ev.push("error:" + e.code) });
  env.ws().open();
  env.ws().recv({ type: "error", code: "must_reload", reason: "gap", channel: "demo/t1" });
  env.ws().recv({ type: "subscribed", channel: "demo/t1", position: pos(1) });
  eq(ev, ["reload:gap"], "events");
}

function testWebsocketBlockedFallsBackToSSE() {
  const { env, c, states } = setup({ websocketRetryAfter: 60000 });
  const got = [];
  c.subscribe("demo/t1", { since: pos(3), onMessage: (d) => got.push(d) });
  env.ws().fail(1006); // never opened, browser online
  return tick().then(() => {
    eq(env.sources.length, 1, "an EventSource");
    eq(env.es().url, "https://live.example.com/sse?channel=demo%2Ft1&since=demo%2Ft1%40s1.3~1767225600%3A3", "stream url");
    env.es().open();
    eq(c.state, "connected", "connected over SSE");
    eq(c.transport, "sse", "transport");
    env.es().recv({ type: "subscribed", channel: "demo/t1", position: pos(3) });
    env.es().recv({ type: "message", channel: "demo/t1", position: pos(4), data: "x" });
    eq(got, ["x"], "message over SSE");
    // A later loss stays on SSE (backoff), resuming from the position.
    env.es().fail();
    eq(env.es().closed, true, "EventSource's own retry is stopped");
    eq(states[states.length - 1].state, "disconnected", "waiting");
    env.advance(2000);
  }).then(tick).then(() => {
    eq(env.sockets.length, 1, "still SSE within websocketRetryAfter");
    eq(env.sources.length, 2, "a second stream");
    if (env.es().url.indexOf("since=demo%2Ft1%40s1.4~1767225600%3A4") < 0) throw new Error("resumes from 4: " + env.es().url);
    env.es().open();
    env.t += 60000;
    env.es().fail();
    env.advance(2000);
    eq(env.sockets.length, 2, "websocket tried again after websocketRetryAfter");
  });
}

function testOfflineOnline() {
  const { env, c } = setup();
  c.subscribe("demo/t1", {});
  env.ws().open();
  env.isOnline = false;
  env.fire("offline");
  eq(env.ws().closed, 1000, "socket closed when the browser goes offline");
  eq(c.state, "disconnected", "state");
  eq(env.timers.length, 0, "no retries while offline");
  env.isOnline = true;
  env.fire("online");
  eq(env.sockets.length, 2, "a socket at once when back online");
}

function testHiddenPageWaitsForVisible() {
  const { env, c } = setup();
  env.ws().open();
  env.isHidden = true;
  env.ws().fail(1006);
  env.advance(30000);
  eq(env.sockets.length, 1, "no attempt while hidden");
  eq(c.state, "disconnected", "state");
  env.isHidden = false;
  env.fire("visibilitychange");
  eq(env.sockets.length, 2, "an attempt when shown");
}

function b64url(s) {
  const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  let out = "", bits = 0, n = 0;
  for (let i = 0; i < s.length; i++) {
    bits = (bits << 8) | s.charCodeAt(i); n += 8;
    while (n >= 6) { n -= 6; out += abc[(bits >> n) & 63]; }
  }
  if (n > 0) out += abc[(bits << (6 - n)) & 63];
  return out;
}
const jwt = (exp, tag) => "h." + b64url(JSON.stringify({ tenant: "demo", channel: "demo/p", exp })) + "." + tag;

function testTokenFetchedRefreshedAndRetried() {
  const { env, c } = setup({ tokenRefreshMargin: 60000, pingInterval: 1e9 });
  const asked = [];
  let n = 0;
  const getToken = (ctx) => { asked.push(ctx.channel); n++; return Promise.resolve(jwt(env.t / 1000 + 600, "t" + n)); };
  c.subscribe("demo/p", { getToken });
  env.ws().open();
  eq(env.ws().sent, [], "waits for the token");
  return tick().then(() => {
    eq(asked, ["demo/p"], "getToken called");
    eq(env.ws().sent[0].token.slice(-2), "t1", "subscribe with the token");
    env.ws().recv({ type: "subscribed", channel: "demo/p", position: pos(1) });
    env.advance(540000 - 1);
    eq(asked.length, 1, "no refresh before exp - margin");
    env.advance(1);
  }).then(tick).then(() => {
    eq(asked.length, 2, "refreshed a margin before exp");
    env.ws().fail(1006);
    env.advance(30000);
    env.ws().open();
    eq(env.ws().sent[0].token.slice(-2), "t2", "reconnect uses the refreshed token, no wait");
    env.ws().recv({ type: "error", code: "token_expired", reason: "token expired", channel: "demo/p" });
  }).then(tick).then(() => {
    eq(asked.length, 3, "a refused token is replaced once");
    eq(env.ws().sent[1].token.slice(-2), "t3", "resubscribed with the new one");
  });
}

function testPingTimeoutReplacesDeadConnection() {
  const { env, c } = setup({ pingInterval: 1000 });
  env.ws().open();
  env.advance(1000);
  eq(env.ws().sent, [{ type: "ping", id: "p" }], "ping");
  env.ws().recv({ type: "pong", id: "p" });
  env.advance(1000);
  eq(c.state, "connected", "answered: still connected");
  env.advance(1000);
  eq(c.state, "disconnected", "unanswered: replaced");
  eq(env.sockets[0].closed, 1000, "closed");
}

function testUnsubscribeAndClose() {
  const { env, c } = setup();
  const got = [];
  const sub = c.subscribe("demo/t1", { onMessage: (d) => got.push(d) });
  env.ws().open();
  sub.unsubscribe();
  eq(env.ws().sent[1], { type: "unsubscribe", channel: "demo/t1" }, "unsubscribe frame");
  env.ws().recv({ type: "message", channel: "demo/t1", position: pos(1), data: 1 });
  eq(got, [], "nothing after unsubscribe");
  c.subscribe("demo/t1", {});
  c.close();
  eq(c.state, "closed", "closed");
  eq(env.timers.length, 0, "no timers");
  eq(env.listenerCount(), 0, "no page listeners");
  eq(env.ws().closed, 1000, "socket closed");
}

// Hours of reconnects: the client's own state and what it hands the page
// stay the same size.
function testNoGrowthOverManyReconnects() {
  const { env, c, states } = setup({ pingInterval: 25000 });
  c.subscribe("demo/t1", { onMessage() {} });
  const listeners = env.listenerCount();
  for (let i = 0; i < 5000; i++) {
    env.ws().open();
    env.ws().recv({ type: "subscribed", channel: "demo/t1", position: pos(i) });
    env.ws().fail(i % 7 === 0 ? 1012 : 1006);
    env.advance(30000);
    if (env.timers.length > 2) throw new Error("cycle " + i + ": " + env.timers.length + " timers pending");
    states.length = 0;
  }
  eq(env.listenerCount(), listeners, "page listeners");
  eq(c._subs.size, 1, "subscriptions");
  eq(c._handlers.state.length, 1, "state handlers");
  for (let i = 0; i < env.sockets.length - 1; i++) {
    if (env.sockets[i].onmessage || env.sockets[i].onclose) throw new Error("socket " + i + " still holds the client");
  }
}

// presence: a question with its own id, answered by the frame with that
// id (count) or refused by an error frame with it (the subscription is not
// touched: a rate_limited answer does not resend the subscribe); refused
// at once before "subscribed" and over SSE; every question on the air is
// rejected when the connection ends or the subscription is left, so none
// stays pending.
function testPresence() {
  const { env, c } = setup({ pingInterval: 1e9 });
  const sub = c.subscribe("demo/t1", {});
  const codeOf = (p) => p.then(() => "resolved", (e) => e.code);
  const early = codeOf(sub.presence());
  env.ws().open();
  env.ws().recv({ type: "subscribed", channel: "demo/t1", position: pos(1) });
  const one = sub.presence();
  const two = sub.presence();
  eq(env.ws().sent.slice(1), [
    { type: "presence", channel: "demo/t1", id: "q1" },
    { type: "presence", channel: "demo/t1", id: "q2" },
  ], "presence frames");
  env.ws().recv({ type: "presence", channel: "demo/t1", id: "q2", count: 7 });
  env.ws().recv({ type: "error", code: "rate_limited", reason: "slow down", channel: "demo/t1", id: "q1" });
  eq(env.ws().sent.length, 3, "a refused question resends nothing");
  eq(sub.state, "subscribed", "a refused question leaves the subscription alone");
  const lost = codeOf(sub.presence());
  env.ws().fail(1006);
  eq(c._asks.size, 0, "questions forgotten when the connection ends");
  env.advance(30000);
  env.ws().open();
  env.ws().recv({ type: "subscribed", channel: "demo/t1", position: pos(1) });
  const left = codeOf(sub.presence());
  sub.unsubscribe();
  const after = codeOf(sub.presence());
  eq(c._asks.size, 0, "questions forgotten on unsubscribe");
  return Promise.all([early, one.then((r) => r, (e) => e.code), two, lost, left, after]).then((r) => {
    eq(r, ["not_subscribed", "rate_limited", { count: 7 }, "disconnected", "unsubscribed", "unsubscribed"], "answers");
  });
}

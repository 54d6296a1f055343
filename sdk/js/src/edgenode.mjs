// edgenode.js: the browser client of edgenode's live channels.
//
//   const c = edgenode.connect({ url: "https://live.example.com" });
//   const sub = c.subscribe("demo/thread-1", { onMessage(data, ctx) { ... } });
//   c.on("state", (e) => console.log(e.state));
//   sub.presence().then(({ count }) => ...);
//   sub.unsubscribe();
//
// One client holds one connection: a websocket (/ws), or Server-Sent Events
// (/sse) where websockets are blocked. It reconnects by itself with
// full-jitter exponential backoff, so the widgets of a failed node spread
// their return over the backoff window instead of arriving in one instant,
// and resumes every channel from the last position it received. The
// protocol is the internal/pubsub package doc of the edgenode repository.
//
// The code is written for every browser of the last years and for the
// tests' JavaScript runtime: no dependency, no build step beyond wrapping
// the module as a classic script (sdk/js/build).

export const version = "1.1.0";

// Connection states, as "state" events report them.
const CONNECTING = "connecting"; // opening a connection
const CONNECTED = "connected"; // open: subscriptions are (re)sent
const DISCONNECTED = "disconnected"; // waiting: backoff, offline, hidden page
const CLOSED = "closed"; // close() was called; final

// Subscription states.
const SUBSCRIBING = "subscribing";
const SUBSCRIBED = "subscribed";
const FAILED = "failed"; // refused for good (bad channel, token refused, ...)
const UNSUBSCRIBED = "unsubscribed";

// Error codes that refuse a subscription: it is not sent again on reconnect
// (the same frame would be refused again) unless a new token fixes it.
const REFUSALS = {
  bad_channel: 1, unknown_tenant: 1, tenant_mismatch: 1, origin_not_allowed: 1,
  token_required: 1, token_invalid: 1, token_expired: 1, token_tenant: 1,
  token_scope: 1, too_many_subscriptions: 1, too_many_channels: 1,
};
const TOKEN_ERRORS = { token_required: 1, token_invalid: 1, token_expired: 1 };

const defaults = {
  // Backoff: the n-th retry (from 0) waits a random time in
  // [0, min(maxReconnectDelay, minReconnectDelay * 2^n)] ("full jitter").
  minReconnectDelay: 2000,
  maxReconnectDelay: 30000,
  // A websocket that does not open while the browser is online is retried
  // as SSE at once; SSE that opens then means websockets are blocked on the
  // way, and the client stays on SSE, trying websockets again at a
  // reconnect after this long.
  websocketRetryAfter: 300000,
  // The client pings over websockets this often; a connection that brings
  // nothing back within the next interval is dead (a path that died
  // without a TCP reset) and is replaced.
  pingInterval: 20000,
  // A token is refreshed (getToken) this long before its exp.
  tokenRefreshMargin: 60000,
};

/**
 * connect makes a client and starts connecting; see Client.
 * @param {object} options
 */
export function connect(options) {
  return new Client(options);
}

// The environment: the browser's globals, replaceable (options.env) by
// tests (a fake clock and fake sockets) and non-browser runtimes.
function browserEnv() {
  const g = typeof globalThis !== "undefined" ? globalThis : {};
  const win = typeof window !== "undefined" ? window : null;
  const doc = typeof document !== "undefined" ? document : null;
  return {
    WebSocket: g.WebSocket,
    EventSource: g.EventSource,
    setTimeout: (f, ms) => g.setTimeout(f, ms),
    clearTimeout: (t) => g.clearTimeout(t),
    now: () => Date.now(),
    random: () => Math.random(),
    online: () => (typeof navigator !== "undefined" && navigator.onLine === false ? false : true),
    hidden: () => !!(doc && doc.visibilityState === "hidden"),
    // listen(event, fn) for "online", "offline", "visibilitychange"; returns
    // the function that removes the listener.
    listen(name, fn) {
      const target = name === "visibilitychange" ? doc : win;
      if (!target || !target.addEventListener) return () => {};
      target.addEventListener(name, fn);
      return () => target.removeEventListener(name, fn);
    },
  };
}

// endpoints turns the url option into the websocket and SSE URLs.
function endpoints(url) {
  const m = /^(https?|wss?):\/\/([^/?#]+)(\/[^?#]*)?$/i.exec(String(url || ""));
  if (!m) throw new TypeError("edgenode.connect: url must be the node's origin, e.g. https://live.example.com (got " + JSON.stringify(url) + ")");
  const scheme = m[1].toLowerCase();
  const secure = scheme === "https" || scheme === "wss";
  const path = (m[3] || "/").replace(/\/+$/, "");
  return {
    ws: (secure ? "wss://" : "ws://") + m[2] + path + "/ws",
    sse: (secure ? "https://" : "http://") + m[2] + path + "/sse",
  };
}

// tokenExp is a JWT's exp in milliseconds, 0 when it cannot be read.
function tokenExp(token) {
  try {
    const part = String(token).split(".")[1];
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/");
    const abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bits = 0, n = 0, s = "";
    for (let i = 0; i < b64.length; i++) {
      const v = abc.indexOf(b64[i]);
      if (v < 0) break;
      bits = (bits << 6) | v;
      n += 6;
      if (n >= 8) {
        n -= 8;
        s += String.fromCharCode((bits >> n) & 255);
      }
    }
    const exp = JSON.parse(s).exp;
    return typeof exp === "number" ? exp * 1000 : 0;
  } catch (e) {
    return 0;
  }
}

function call(fn, arg, ctx) {
  if (typeof fn !== "function") return;
  try {
    fn(arg, ctx);
  } catch (e) {
    // A widget's handler must not break the connection; report it late.
    setTimeoutSafe(() => { throw e; });
  }
}
function setTimeoutSafe(f) {
  if (typeof setTimeout === "function") setTimeout(f, 0);
}

/**
 * A Subscription is one channel of a client. Its position is the last one
 * received; a reconnect subscribes "since" it, on whichever node.
 */
export class Subscription {
  constructor(client, channel, opts) {
    this.client = client;
    this.channel = channel;
    this.state = SUBSCRIBING;
    this.position = opts.since || null;
    this._opts = opts;
    this._token = opts.token || "";
    this._tokenExp = this._token ? tokenExp(this._token) : 0;
    this._refreshTimer = null;
    this._retried = false; // a token error was answered with a new token once
    this._public = false; // getToken answered "": the channel needs none
    this._rateTimer = null;
    const since = opts.since;
    if (since != null && (typeof since !== "object" || typeof since.epoch !== "string" || typeof since.offset !== "number")) {
      throw new TypeError("edgenode: since must be a position {epoch, offset} as the node sent it");
    }
  }

  /**
   * presence asks the node how many subscriptions the channel has in the
   * whole cluster: a promise of {count} (a count only, never who). It needs
   * the subscription to be subscribed over a websocket (SSE has no way to
   * ask); otherwise, and when the node refuses or the connection ends
   * before the answer, the promise is rejected with an Error whose code
   * says why: not_subscribed, sse, disconnected, unsubscribed, or the
   * node's error code (e.g. rate_limited).
   */
  presence() {
    return this.client._presence(this);
  }

  /** unsubscribe leaves the channel; no callback is called after it. */
  unsubscribe() {
    if (this.state === UNSUBSCRIBED) return;
    this.client._remove(this);
  }

  // _needsToken: a token must be fetched before (re)subscribing.
  _needsToken(now, margin) {
    if (!this._getToken()) return false;
    if (!this._token) return !this._public;
    return this._tokenExp > 0 && this._tokenExp - now < margin;
  }

  _getToken() {
    return this._opts.getToken || this.client._opts.getToken || null;
  }

  _frame() {
    const f = { type: "subscribe", channel: this.channel };
    const tok = this._token || this.client._opts.token;
    if (tok) f.token = tok;
    if (this.position) f.since = this.position;
    return f;
  }

  _emit(name, arg, ctx) {
    if (this.state === UNSUBSCRIBED) return;
    call(this._opts[name], arg, ctx);
  }
}

/**
 * A Client is one connection to the nearest node, shared by its
 * subscriptions. Options: url (the node's origin, e.g.
 * https://live.example.com: DNS picks the node), token (for every private
 * channel) or getToken ({channel}) => Promise<string> (called before a
 * token expires, and when the node refuses one), and the tuning knobs of
 * `defaults` above.
 */
export class Client {
  constructor(options) {
    const o = Object.assign({}, defaults, options || {});
    this._opts = o;
    this._urls = endpoints(o.url);
    this._env = Object.assign(browserEnv(), o.env || {});
    this.state = DISCONNECTED;
    this.transport = "websocket";
    this._subs = new Map();
    this._handlers = { state: [], error: [] };
    this._conn = null; // the current transport connection
    this._timer = null; // backoff, or the SSE reopen
    this._pingTimer = null;
    this._asks = new Map(); // presence questions on the air: id -> {sub, resolve, reject}
    this._askSeq = 0;
    this._attempt = 0; // retries since the last connection that worked
    this._elsewhere = false; // the node said reconnect-elsewhere
    this._probing = false; // this SSE attempt follows a websocket that did not open
    this._sseSince = 0; // when SSE was found to work instead of websockets
    this._waiting = ""; // why no attempt is running: "offline", "hidden", ""
    this._unlisten = [
      this._env.listen("online", () => this._wake("online")),
      this._env.listen("offline", () => this._offline()),
      this._env.listen("visibilitychange", () => { if (!this._env.hidden()) this._wake("visible"); }),
    ];
    // The first attempt starts on the next turn, so that listeners added
    // right after connect() see every state.
    this._timer = this._env.setTimeout(() => this._open(), 0);
  }

  /**
   * on adds a listener: "state" ({state, previous, transport, reason,
   * delay}) or "error" ({code, reason}: errors that are not a channel's).
   * It returns the function that removes it.
   */
  on(event, fn) {
    const list = this._handlers[event];
    if (!list) throw new TypeError("edgenode: no event " + JSON.stringify(event) + " (state, error)");
    list.push(fn);
    return () => this.off(event, fn);
  }

  off(event, fn) {
    const list = this._handlers[event];
    const i = list ? list.indexOf(fn) : -1;
    if (i >= 0) list.splice(i, 1);
  }

  /**
   * subscribe joins a channel ("tenant/thread"). Options: since (a
   * position to resume from), token or getToken (this channel's),
   * onMessage(data, {channel, position}), onSubscribed({position,
   * recovered}), onError({code, reason}), onMustReload({reason}): the
   * messages since the last position cannot be replayed; fetch the state
   * again from the app server (the subscription goes on).
   */
  subscribe(channel, opts) {
    if (this.state === CLOSED) throw new Error("edgenode: subscribe on a closed client");
    if (typeof channel !== "string" || channel.indexOf("/") <= 0) {
      throw new TypeError("edgenode: channel must be \"tenant/thread\" (got " + JSON.stringify(channel) + ")");
    }
    if (this._subs.has(channel)) throw new Error("edgenode: already subscribed to " + channel + ": unsubscribe first");
    const sub = new Subscription(this, channel, opts || {});
    this._subs.set(channel, sub);
    this._scheduleRefresh(sub);
    if (this.state === CONNECTED) {
      if (this.transport === "sse") this._reopenSoon();
      else this._send(sub);
    }
    return sub;
  }

  /** close ends the connection for good. */
  close() {
    if (this.state === CLOSED) return;
    for (const sub of this._subs.values()) this._forget(sub);
    this._subs.clear();
    this._drop();
    this._env.clearTimeout(this._timer);
    this._timer = null;
    for (const f of this._unlisten) f();
    this._unlisten = [];
    this._setState(CLOSED, "closed by the page");
    this._handlers = { state: [], error: [] };
  }

  // ---- the state machine ----

  _setState(state, reason, delay) {
    const previous = this.state;
    if (previous === state && state !== DISCONNECTED) return;
    this.state = state;
    const e = { state, previous, transport: this.transport, reason: reason || "" };
    if (delay !== undefined) e.delay = delay;
    for (const fn of this._handlers.state.slice()) call(fn, e);
  }

  _open() {
    if (this.state === CLOSED) return;
    this._timer = null;
    if (!this._env.online()) {
      this._waiting = "offline";
      this._setState(DISCONNECTED, "offline");
      return;
    }
    if (this.state !== CONNECTED && this._attempt > 0 && this._env.hidden()) {
      // Nobody looks: retry when the page is shown (resume covers the gap).
      this._waiting = "hidden";
      this._setState(DISCONNECTED, "page hidden");
      return;
    }
    this._waiting = "";
    if (this.transport === "sse" && !this._probing &&
        this._env.now() - this._sseSince >= this._opts.websocketRetryAfter) {
      this.transport = "websocket";
    }
    this._setState(CONNECTING);
    if (this.transport === "websocket") this._openWS();
    else this._openSSE();
  }

  // _lost is every transport's end: opened says whether it had opened.
  _lost(conn, opened, code, reason) {
    if (conn !== this._conn) return; // an old connection's late event
    this._drop();
    if (this.state === CLOSED) return;
    for (const sub of this._subs.values()) if (sub.state === SUBSCRIBED) sub.state = SUBSCRIBING;
    const online = this._env.online();
    if (!opened && online && this.transport === "websocket" && !this._elsewhere && this._subs.size > 0) {
      // The websocket did not open: blocked on the way, or the node is
      // down. SSE tells which, at once. (Without a channel there is no
      // stream to try: SSE could not tell.)
      this.transport = "sse";
      this._probing = true;
      this._open();
      return;
    }
    if (this._probing) {
      // Neither opened: the node is unreachable, not websockets blocked.
      this._probing = false;
      this.transport = "websocket";
    }
    if (this._elsewhere || code === 1012) {
      // The node drains: reconnect now; DNS no longer names it.
      this._elsewhere = false;
      this._setState(DISCONNECTED, reason || "node draining", 0);
      this._open();
      return;
    }
    if (!online) {
      this._waiting = "offline";
      this._setState(DISCONNECTED, "offline");
      return;
    }
    const span = Math.min(this._opts.maxReconnectDelay, this._opts.minReconnectDelay * Math.pow(2, this._attempt));
    const delay = Math.floor(this._env.random() * span);
    this._attempt = Math.min(this._attempt + 1, 30);
    this._setState(DISCONNECTED, reason || (opened ? "connection lost" : "cannot connect"), delay);
    this._timer = this._env.setTimeout(() => this._open(), delay);
  }

  // _drop closes the current connection without telling anyone.
  _drop() {
    const conn = this._conn;
    this._conn = null;
    this._failAsks(null, "disconnected", "the connection ended before the answer");
    this._env.clearTimeout(this._pingTimer);
    this._pingTimer = null;
    if (conn) conn.close();
  }

  // _wake starts an attempt now when the browser is back online or the
  // page is shown again (timers of hidden pages are throttled, and the
  // client does not retry while hidden).
  _wake(why) {
    if (this.state !== DISCONNECTED) return;
    if (why === "online" && this._waiting !== "offline" && !this._timer) return;
    if (why === "visible" && this._waiting !== "hidden" && !this._timer) return;
    this._env.clearTimeout(this._timer);
    this._timer = null;
    this._open();
  }

  _offline() {
    if (this.state === CLOSED) return;
    this._env.clearTimeout(this._timer);
    this._timer = null;
    if (this._conn) {
      this._drop();
      for (const sub of this._subs.values()) if (sub.state === SUBSCRIBED) sub.state = SUBSCRIBING;
    }
    this._waiting = "offline";
    this._setState(DISCONNECTED, "offline");
  }

  _connected(conn) {
    if (conn !== this._conn) return;
    if (this._probing) {
      this._probing = false;
      this._sseSince = this._env.now();
    }
    this._setState(CONNECTED);
  }

  // ---- websocket ----

  _openWS() {
    const env = this._env;
    let ws;
    const conn = {
      opened: false,
      waitingPong: false,
      close() {
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try { ws.close(1000); } catch (e) { /* already closed */ }
      },
    };
    try {
      ws = new env.WebSocket(this._urls.ws);
    } catch (e) {
      ws = { close() {} };
      this._conn = conn;
      env.setTimeout(() => this._lost(conn, false, 0, "websocket: " + e.message), 0);
      return;
    }
    this._conn = conn;
    conn.send = (f) => ws.send(JSON.stringify(f));
    ws.onopen = () => {
      conn.opened = true;
      this._connected(conn);
      for (const sub of this._subs.values()) this._send(sub);
      this._ping(conn);
    };
    ws.onmessage = (e) => {
      conn.waitingPong = false;
      if (typeof e.data !== "string") return;
      let f;
      try { f = JSON.parse(e.data); } catch (err) { return; }
      this._frame(conn, f);
    };
    ws.onclose = (e) => this._lost(conn, conn.opened, e.code, e.reason);
    ws.onerror = null; // onclose follows every error
  }

  _ping(conn) {
    this._pingTimer = this._env.setTimeout(() => {
      if (conn !== this._conn) return;
      if (conn.waitingPong) {
        this._lost(conn, true, 0, "no answer to ping");
        return;
      }
      conn.waitingPong = true;
      conn.send({ type: "ping", id: "p" });
      this._ping(conn);
    }, this._opts.pingInterval);
  }

  // _send subscribes sub over the websocket, fetching a token first when
  // it needs one.
  _send(sub) {
    const conn = this._conn;
    if (!conn || !conn.send || sub.state === FAILED) return;
    sub.state = SUBSCRIBING;
    if (sub._needsToken(this._env.now(), this._opts.tokenRefreshMargin)) {
      this._fetchToken(sub).then(() => {
        if (this._conn === conn && this._subs.get(sub.channel) === sub) conn.send(sub._frame());
      });
      return;
    }
    conn.send(sub._frame());
  }

  // ---- Server-Sent Events ----

  _openSSE() {
    const env = this._env;
    const conn = { opened: false, streams: [], close() { for (const es of this.streams) { es.onopen = es.onmessage = es.onerror = null; es.close(); } } };
    this._conn = conn;
    const subs = [...this._subs.values()].filter((s) => s.state !== FAILED);
    const needs = subs.filter((s) => s._needsToken(env.now(), this._opts.tokenRefreshMargin));
    Promise.all(needs.map((s) => this._fetchToken(s))).then(() => {
      if (conn !== this._conn) return;
      // One stream per token (usually one): a stream carries one token.
      const groups = new Map();
      for (const s of subs) {
        const tok = s._token || this._opts.token || "";
        if (!groups.has(tok)) groups.set(tok, []);
        groups.get(tok).push(s);
      }
      if (groups.size === 0) {
        // Nothing to stream yet: SSE has no connection without channels.
        conn.opened = true;
        this._connected(conn);
        return;
      }
      let open = 0;
      for (const [tok, list] of groups) {
        let q = list.map((s) => "channel=" + encodeURIComponent(s.channel)).join("&");
        if (tok) q += "&token=" + encodeURIComponent(tok);
        for (const s of list) {
          if (s.position) q += "&since=" + encodeURIComponent(s.channel + "@" + s.position.epoch + ":" + s.position.offset);
          s.state = SUBSCRIBING;
        }
        let es;
        try {
          es = new env.EventSource(this._urls.sse + "?" + q, { withCredentials: false });
        } catch (e) {
          env.setTimeout(() => this._lost(conn, false, 0, "sse: " + e.message), 0);
          return;
        }
        conn.streams.push(es);
        es.onopen = () => {
          if (++open === groups.size) {
            conn.opened = true;
            this._connected(conn);
          }
        };
        es.onmessage = (e) => {
          let f;
          try { f = JSON.parse(e.data); } catch (err) { return; }
          this._frame(conn, f);
        };
        // EventSource would retry by itself, without our backoff and with
        // one channel's position only: take over.
        es.onerror = () => this._lost(conn, conn.opened, 0, "");
      }
    });
  }

  // _reopenSoon reopens the SSE streams once the page's subscribe and
  // unsubscribe calls of this turn are done.
  _reopenSoon() {
    if (this._timer) return;
    this._timer = this._env.setTimeout(() => {
      this._timer = null;
      if (this.state !== CONNECTED || this.transport !== "sse") return;
      this._drop();
      this._open();
    }, 0);
  }

  // ---- presence ----

  _presence(sub) {
    const fail = (code, reason) => {
      const e = new Error("edgenode: presence of " + sub.channel + ": " + reason);
      e.code = code;
      return Promise.reject(e);
    };
    if (sub.state === UNSUBSCRIBED) return fail("unsubscribed", "unsubscribed");
    if (this.state === CONNECTED && this.transport === "sse") return fail("sse", "not available over Server-Sent Events");
    const conn = this._conn;
    if (sub.state !== SUBSCRIBED || this.state !== CONNECTED || !conn || !conn.send) return fail("not_subscribed", "not subscribed yet");
    // Ids of their own ("q1", "q2", ...; pings use "p"): the answer, or
    // the error frame refusing the question, carries it back.
    const id = "q" + (++this._askSeq);
    return new Promise((resolve, reject) => {
      this._asks.set(id, { sub, resolve, reject });
      conn.send({ type: "presence", channel: sub.channel, id });
    });
  }

  // _failAsks rejects the questions of sub (all with sub null).
  _failAsks(sub, code, reason) {
    for (const [id, a] of this._asks) {
      if (sub && a.sub !== sub) continue;
      this._asks.delete(id);
      const e = new Error("edgenode: presence of " + a.sub.channel + ": " + reason);
      e.code = code;
      a.reject(e);
    }
  }

  // ---- frames ----

  _frame(conn, f) {
    if (conn !== this._conn) return;
    const ask = typeof f.id === "string" && f.id[0] === "q" ? this._asks.get(f.id) : undefined;
    if (ask && (f.type === "presence" || f.type === "error")) {
      this._asks.delete(f.id);
      if (f.type === "presence") ask.resolve({ count: f.count || 0 });
      else {
        const e = new Error("edgenode: presence of " + ask.sub.channel + ": " + (f.reason || f.code));
        e.code = f.code || "";
        ask.reject(e);
      }
      return;
    }
    const sub = f.channel ? this._subs.get(f.channel) : null;
    switch (f.type) {
      case "subscribed":
        if (!sub) return;
        sub.state = SUBSCRIBED;
        sub._retried = false;
        if (f.position) sub.position = f.position;
        // The node works: the next failure starts the backoff afresh.
        this._attempt = 0;
        sub._emit("onSubscribed", { position: f.position, recovered: f.recovered || 0 });
        return;
      case "message":
        if (!sub || sub.state === UNSUBSCRIBED) return;
        if (f.position) sub.position = f.position;
        sub._emit("onMessage", f.data, { channel: f.channel, position: f.position });
        return;
      case "error":
        this._error(sub, f);
        return;
      case "reconnect-elsewhere":
        this._elsewhere = true;
        return;
      default: // pong, unsubscribed
    }
  }

  _error(sub, f) {
    const err = { code: f.code || "", reason: f.reason || "" };
    if (!sub) {
      for (const fn of this._handlers.error.slice()) call(fn, err);
      return;
    }
    if (f.code === "must_reload") {
      sub._emit("onMustReload", { reason: err.reason });
      return;
    }
    if (f.code === "rate_limited") {
      // The frame was not acted on: send it again a little later.
      this._env.clearTimeout(sub._rateTimer);
      sub._rateTimer = this._env.setTimeout(() => { if (this.state === CONNECTED && this.transport === "websocket") this._send(sub); }, 500 + Math.floor(this._env.random() * 1000));
      return;
    }
    if (TOKEN_ERRORS[f.code] && sub._getToken() && !sub._retried) {
      sub._retried = true;
      sub._token = "";
      sub._public = false;
      if (this.transport === "sse") this._reopenSoon();
      else this._send(sub);
      return;
    }
    if (REFUSALS[f.code]) sub.state = FAILED;
    sub._emit("onError", err);
  }

  // ---- tokens ----

  _fetchToken(sub) {
    if (sub._pending) return sub._pending;
    const get = sub._getToken();
    sub._pending = Promise.resolve().then(() => get({ channel: sub.channel })).then((tok) => {
      sub._pending = null;
      if (typeof tok !== "string") throw new Error("getToken returned " + typeof tok + ", want a string");
      sub._public = tok === "";
      sub._token = tok;
      sub._tokenExp = tokenExp(tok);
      this._scheduleRefresh(sub);
    }, (e) => {
      sub._pending = null;
      throw e;
    }).catch((e) => {
      sub._emit("onError", { code: "token_refresh", reason: String(e && e.message || e) });
    });
    return sub._pending;
  }

  // _scheduleRefresh fetches the next token a margin before this one
  // expires, so a reconnect never waits for the app server.
  _scheduleRefresh(sub) {
    this._env.clearTimeout(sub._refreshTimer);
    sub._refreshTimer = null;
    if (!sub._getToken() || !sub._tokenExp || this.state === CLOSED) return;
    const wait = Math.max(0, sub._tokenExp - this._opts.tokenRefreshMargin - this._env.now());
    sub._refreshTimer = this._env.setTimeout(() => {
      sub._refreshTimer = null;
      if (this._subs.get(sub.channel) === sub) this._fetchToken(sub);
    }, wait);
  }

  _remove(sub) {
    this._forget(sub);
    this._subs.delete(sub.channel);
    if (this.state !== CONNECTED) return;
    if (this.transport === "sse") this._reopenSoon();
    else if (this._conn && this._conn.send) this._conn.send({ type: "unsubscribe", channel: sub.channel });
  }

  _forget(sub) {
    sub.state = UNSUBSCRIBED;
    this._failAsks(sub, "unsubscribed", "unsubscribed before the answer");
    this._env.clearTimeout(sub._refreshTimer);
    this._env.clearTimeout(sub._rateTimer);
    sub._refreshTimer = sub._rateTimer = null;
  }
}

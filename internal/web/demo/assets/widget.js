/* edgenode demo comment widget: an example of a real integration of
 * edgenode.js, the client library of live channels.
 *
 *   <div data-edgenode-thread="welcome"></div>
 *   <script src="https://NODE/demo/widget.js" async></script>
 *
 * It loads the thread from the node that served this script (the app's
 * API), loads edgenode.js from the same node, and subscribes to the
 * thread's channel with it: websocket, or SSE where websockets are
 * blocked; reconnects, resumes and token refresh are the library's. It
 * merges what arrives: comments by id, votes as one counter per node (the
 * larger value wins), so duplicates and reloads never double count, and it
 * loads the thread again when the library says the gap since the last
 * message cannot be replayed (must_reload).
 * Each new comment fires "edgenode:comment" on the widget's element
 * (detail: {id, text, node, source: "load" | "live" | "own"}).
 * It also loads /.well-known/edgenode/rtt.js, which times this node and one
 * other on a sampled share of page loads (see that script).
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var base = script && script.src ? new URL(script.src, location.href).origin : location.origin;

  var css =
    ".en-w{font:15px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:#1f2328;background:#fff;border:1px solid #d0d7de;border-radius:10px;max-width:42rem;overflow:hidden}" +
    ".en-h{display:flex;align-items:center;gap:.6rem;padding:.7rem 1rem;border-bottom:1px solid #d0d7de;background:#f6f8fa}" +
    ".en-h b{font-size:1rem}.en-n{color:#656d76;font-size:.85rem}" +
    ".en-s{margin-left:auto;font-size:.78rem;padding:.1rem .55rem;border-radius:1rem;background:#eaeef2;color:#656d76}" +
    ".en-w[data-state=live] .en-s{background:#dafbe1;color:#1a7f37}" +
    ".en-w[data-state=reconnecting] .en-s,.en-w[data-state=error] .en-s{background:#ffebe9;color:#cf222e}" +
    ".en-l{list-style:none;margin:0;padding:0;max-height:28rem;overflow-y:auto}" +
    ".en-c{display:grid;grid-template-columns:1fr auto;gap:.15rem .8rem;padding:.65rem 1rem;border-bottom:1px solid #eaeef2}" +
    ".en-c.en-new{animation:en-flash 1.2s ease-out}@keyframes en-flash{from{background:#fff8c5}to{background:#fff}}" +
    ".en-m{font-size:.8rem;color:#656d76}.en-m b{color:#1f2328;font-size:.9rem;margin-right:.35rem}" +
    ".en-t{grid-column:1;white-space:pre-wrap;word-break:break-word}" +
    ".en-v{grid-column:2;grid-row:1/span 2;align-self:center;display:flex;align-items:center;gap:.3rem;border:1px solid #d0d7de;background:#f6f8fa;border-radius:2rem;padding:.2rem .65rem;cursor:pointer;font:inherit;font-size:.85rem;color:#1f2328}" +
    ".en-v:hover{background:#eaeef2}.en-v:disabled{opacity:.6}" +
    ".en-e{padding:1rem;color:#656d76;text-align:center}" +
    ".en-f{display:grid;grid-template-columns:10rem 1fr auto;gap:.5rem;padding:.7rem 1rem;background:#f6f8fa;border-top:1px solid #d0d7de}" +
    ".en-f input,.en-f textarea{font:inherit;border:1px solid #d0d7de;border-radius:6px;padding:.35rem .55rem;background:#fff;min-width:0}" +
    ".en-f textarea{resize:vertical;min-height:2.3rem;height:2.3rem}" +
    ".en-f button{font:inherit;font-weight:600;border:0;border-radius:6px;padding:.35rem 1rem;background:#1f883d;color:#fff;cursor:pointer}" +
    ".en-f button:disabled{opacity:.6}.en-x{grid-column:1/-1;color:#cf222e;font-size:.85rem}.en-x:empty{display:none}" +
    "@media(max-width:32rem){.en-f{grid-template-columns:1fr auto}.en-f input{grid-column:1/-1}}";

  // edgenode.js from the node that served this script, loaded once; one
  // client (one connection) for every widget of the page.
  var sdkLoading = null, shared = null;
  function sdk() {
    if (window.edgenode) return Promise.resolve(window.edgenode);
    if (!sdkLoading) {
      sdkLoading = new Promise(function (resolve, reject) {
        var s = document.createElement("script");
        s.src = base + "/sdk/v1/edgenode.js";
        s.async = true;
        s.onload = function () {
          if (window.edgenode) resolve(window.edgenode);
          else reject(new Error("edgenode.js did not load"));
        };
        s.onerror = function () { sdkLoading = null; reject(new Error("edgenode.js did not load")); };
        document.head.appendChild(s);
      });
    }
    return sdkLoading;
  }
  function client(en) {
    if (!shared) shared = en.connect({ url: base });
    return shared;
  }

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  function sum(votes) {
    var t = 0;
    for (var k in votes) if (Object.prototype.hasOwnProperty.call(votes, k)) t += votes[k];
    return t;
  }
  function key(c) { return [c.at || 0, c.id]; }
  function before(a, b) { var x = key(a), y = key(b); return x[0] < y[0] || (x[0] === y[0] && x[1] < y[1]); }
  function when(ms) {
    var d = new Date(ms);
    return isNaN(d) ? "" : d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  }
  function api(path, body) {
    var init = body === undefined ? {} : { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    return fetch(base + "/demo/api/" + path, init).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (j) {
        if (!r.ok) throw new Error(j.error || ("HTTP " + r.status));
        return j;
      });
    });
  }

  function Widget(root) {
    var w = this;
    w.root = root;
    w.thread = root.getAttribute("data-edgenode-thread") || "welcome";
    w.comments = {};
    w.items = {};
    w.early = {}; // votes for comments not seen yet: id -> {node: count}
    w.sub = null;
    root.classList.add("en-w");
    root.textContent = "";
    var h = el("div", "en-h");
    h.appendChild(el("b", null, "Comments"));
    w.countEl = h.appendChild(el("span", "en-n", ""));
    w.stateEl = h.appendChild(el("span", "en-s", "connecting"));
    root.appendChild(h);
    w.list = root.appendChild(el("ul", "en-l"));
    w.empty = w.list.appendChild(el("li", "en-e", "No comments yet. Say hello!"));
    var f = root.appendChild(el("form", "en-f"));
    w.name = f.appendChild(el("input", "en-name"));
    w.name.placeholder = "Your name";
    w.name.maxLength = 40;
    try { w.name.value = localStorage.getItem("edgenode-demo-name") || ""; } catch (e) { /* storage off */ }
    w.input = f.appendChild(el("textarea", "en-input"));
    w.input.placeholder = "Write a comment…";
    w.input.maxLength = 1000;
    w.button = f.appendChild(el("button", "en-post", "Post"));
    w.button.type = "submit";
    w.error = f.appendChild(el("div", "en-x"));
    f.addEventListener("submit", function (e) { e.preventDefault(); w.post(); });
    w.input.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); w.post(); }
    });
    w.state("connecting");
    w.load().then(function () { w.subscribe(); }, function (e) { w.state("error", e.message); w.retry(); });
  }

  Widget.prototype.state = function (s, why) {
    this.root.setAttribute("data-state", s);
    var text = s === "live" ? "live on " + (this.node || "node") : s;
    this.stateEl.textContent = text;
    this.stateEl.title = why || "";
  };

  Widget.prototype.load = function () {
    var w = this;
    return api("threads/" + encodeURIComponent(w.thread)).then(function (st) {
      w.node = st.node;
      w.channel = st.channel;
      w.token = st.token || "";
      st.comments.forEach(function (c) { w.merge(c, "load"); });
    });
  };

  Widget.prototype.subscribe = function () {
    var w = this;
    sdk().then(function (en) {
      if (w.sub) return;
      var c = client(en);
      var first = true;
      var opts = {
        onSubscribed: function () {
          w.state("live");
          // Anything posted between the first load and the subscription
          // is in the store: load again (merging is idempotent).
          if (first) w.load().catch(function () {});
          first = false;
        },
        onMessage: function (d) { w.apply(d); },
        // The gap cannot be replayed: the store has everything.
        onMustReload: function () { w.load().catch(function () {}); },
        onError: function (e) { w.state("error", e.reason); }
      };
      if (w.token) {
        // A private thread: the app's API hands out a fresh token.
        opts.token = w.token;
        opts.getToken = function () {
          return api("threads/" + encodeURIComponent(w.thread)).then(function (st) { return st.token || ""; });
        };
      }
      w.sub = c.subscribe(w.channel, opts);
      c.on("state", function (e) {
        w.root.setAttribute("data-transport", e.transport);
        if (e.state === "disconnected") w.state("reconnecting", e.reason);
      });
    }, function (e) {
      w.state("error", e.message);
      w.retry();
    });
  };

  Widget.prototype.retry = function () {
    var w = this;
    clearTimeout(w.timer);
    w.timer = setTimeout(function () {
      w.load().then(function () { w.subscribe(); }, function () { w.retry(); });
    }, 3000);
  };

  Widget.prototype.apply = function (d) {
    if (d.kind === "comment" && d.comment) this.merge(d.comment, "live");
    else if (d.kind === "vote") this.vote(d.id, d.node, d.count);
  };

  Widget.prototype.merge = function (c, source) {
    if (!c || typeof c.id !== "string" || c.thread !== this.thread) return;
    var have = this.comments[c.id];
    if (!have) {
      have = this.comments[c.id] = { id: c.id, thread: c.thread, name: c.name, text: c.text, at: c.at, node: c.node, votes: {} };
      this.insert(have, source !== "load");
      var early = this.early[c.id];
      delete this.early[c.id];
      if (early) for (var n in early) this.vote(c.id, n, early[n]);
      this.root.dispatchEvent(new CustomEvent("edgenode:comment", { detail: { id: c.id, text: c.text, node: c.node, source: source } }));
    }
    for (var k in c.votes || {}) this.vote(c.id, k, c.votes[k]);
  };

  Widget.prototype.vote = function (id, node, count) {
    if (typeof count !== "number" || !node) return;
    var c = this.comments[id];
    if (!c) {
      var e = this.early[id] = this.early[id] || {};
      e[node] = Math.max(e[node] || 0, count);
      return;
    }
    if ((c.votes[node] || 0) >= count) return;
    c.votes[node] = count;
    var item = this.items[id];
    item.count.textContent = sum(c.votes);
    item.li.setAttribute("data-votes", sum(c.votes));
  };

  Widget.prototype.insert = function (c, fresh) {
    var w = this;
    var li = el("li", "en-c" + (fresh ? " en-new" : ""));
    li.setAttribute("data-id", c.id);
    li.setAttribute("data-node", c.node || "");
    li.setAttribute("data-votes", "0");
    var m = li.appendChild(el("div", "en-m"));
    m.appendChild(el("b", "en-who", c.name || "anonymous"));
    m.appendChild(document.createTextNode(when(c.at) + (c.node ? " · posted on " + c.node : "")));
    li.appendChild(el("div", "en-t", c.text));
    var b = li.appendChild(el("button", "en-v"));
    b.type = "button";
    b.title = "Vote";
    b.appendChild(document.createTextNode("\u25B2"));
    var count = b.appendChild(el("span", "en-votes", "0"));
    b.addEventListener("click", function () { w.upvote(c.id, b); });
    w.items[c.id] = { li: li, count: count };
    if (w.empty.parentNode) w.list.removeChild(w.empty);
    // Comments arrive nearly in order: look for the place from the end.
    var after = w.list.lastChild;
    while (after && before(c, w.comments[after.getAttribute("data-id")])) after = after.previousSibling;
    w.list.insertBefore(li, after ? after.nextSibling : w.list.firstChild);
    var n = Object.keys(w.comments).length;
    w.countEl.textContent = n + (n === 1 ? " comment" : " comments");
    if (fresh) w.list.scrollTop = w.list.scrollHeight;
  };

  Widget.prototype.post = function () {
    var w = this;
    var text = w.input.value.trim();
    if (!text || w.button.disabled) return;
    var name = w.name.value.trim();
    try { localStorage.setItem("edgenode-demo-name", name); } catch (e) { /* storage off */ }
    w.button.disabled = true;
    w.error.textContent = "";
    api("threads/" + encodeURIComponent(w.thread) + "/comments", { name: name, text: text }).then(function (j) {
      w.input.value = "";
      w.merge(j.comment, "own");
    }, function (e) {
      w.error.textContent = "Not posted: " + e.message;
    }).then(function () { w.button.disabled = false; });
  };

  Widget.prototype.upvote = function (id, button) {
    var w = this;
    button.disabled = true;
    api("threads/" + encodeURIComponent(w.thread) + "/comments/" + encodeURIComponent(id) + "/vote", {}).then(function (j) {
      for (var k in j.votes || {}) w.vote(id, k, j.votes[k]);
      w.vote(id, j.node, j.count);
    }, function (e) {
      w.error.textContent = "Vote not counted: " + e.message;
    }).then(function () { button.disabled = false; });
  };

  function boot() {
    if (!document.getElementById("edgenode-widget-css")) {
      var s = el("style", null, css);
      s.id = "edgenode-widget-css";
      document.head.appendChild(s);
    }
    var roots = document.querySelectorAll("[data-edgenode-thread]");
    if (!roots.length && script && script.getAttribute("data-thread")) {
      var d = el("div");
      d.setAttribute("data-edgenode-thread", script.getAttribute("data-thread"));
      script.parentNode.insertBefore(d, script.nextSibling);
      roots = [d];
    }
    for (var i = 0; i < roots.length; i++) {
      if (!roots[i].edgenodeWidget) roots[i].edgenodeWidget = new Widget(roots[i]);
    }
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", boot);
  else boot();

  // Real-user round trips (dns.measured): a separate script from the same
  // node, sampled and anonymous; a 404 (measuring off) costs nothing.
  var rtt = document.createElement("script");
  rtt.async = true;
  rtt.src = base + "/.well-known/edgenode/rtt.js";
  (document.head || document.documentElement).appendChild(rtt);
})();

/* edgenode real-user round trips.
 *
 *   <script src="https://NODE/.well-known/edgenode/rtt.js" async></script>
 *
 * On a sampled share of page loads (the node's dns.measured.sample_rate) it
 * times the node it was loaded from and one other node the mesh knows,
 * each with a tiny fetch of /.well-known/edgenode/rtt (204, no body, no
 * cookies, not cached), and posts the two figures to the node it was
 * loaded from: {"<node id>": milliseconds, ...}. Nothing else is sent: no
 * cookie, no identifier, no page address; the node keeps only figures per
 * client network (/24, /48), never per person.
 *
 * Each node is fetched twice and the second fetch is timed, so the figure
 * is one round trip on a warm connection, not the DNS, TCP and TLS setup.
 * It runs after the page has loaded and never throws.
 */
(function () {
  "use strict";
  var script = document.currentScript;
  var base = script && script.src ? new URL(script.src, location.href).origin : location.origin;
  var RTT = "/.well-known/edgenode/rtt";
  var opts = { credentials: "omit", cache: "no-store", mode: "cors" };
  if (!window.fetch || !window.performance || !navigator.sendBeacon) return;

  function time(url) {
    return fetch(url, opts).then(function () {
      var t0 = performance.now();
      return fetch(url, opts).then(function () { return performance.now() - t0; });
    });
  }

  function run() {
    fetch(base + "/.well-known/edgenode/rtt-targets", opts).then(function (r) { return r.json(); }).then(function (t) {
      if (!(Math.random() < t.sample_rate)) return;
      var others = (t.targets || []).filter(function (x) { return x.id !== t.self; });
      var jobs = [time(base + RTT).then(function (ms) { return [t.self, ms]; })];
      if (others.length) {
        var o = others[Math.floor(Math.random() * others.length)];
        jobs.push(time(o.url).then(function (ms) { return [o.id, ms]; }, function () { return null; }));
      }
      return Promise.all(jobs).then(function (rs) {
        var body = {};
        rs.forEach(function (r) { if (r && r[1] > 0) body[r[0]] = Math.round(r[1] * 10) / 10; });
        navigator.sendBeacon(base + "/.well-known/edgenode/beacon", JSON.stringify(body));
      });
    }).catch(function () {});
  }

  if (document.readyState === "complete") setTimeout(run, 0);
  else window.addEventListener("load", function () { setTimeout(run, 0); });
})();

package node

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/edgenode/edgenode/internal/config"
)

// Reload on SIGHUP. The node reads its whole config again (the main file,
// the drop-ins, the environment: whatever load does) and applies what can
// change while it runs, without closing a connection:
//
//   - log.level;
//   - dns.zones, dns.dynamic, dns.overrides, dns.slack_km, dns.rate_limit;
//   - pubsub.tenants (added, removed, their secret, public_key, origins and
//     public threads) and the limits history, history_ttl,
//     max_message_bytes, max_subscriptions_per_conn, max_conns_per_ip,
//     max_channels, max_channels_per_tenant, subscribe_rate,
//     subscribe_burst;
//   - cdn.max_bytes, cdn.max_entries;
//   - https.app_server, https.limits.max_body_bytes,
//     https.limits.max_conns_per_ip, https.limits.max_websocket_message_bytes;
//   - mesh.gossip_keys (one step of a rotation, see mesh.SetGossipKeys).
//
// Certificates and the GeoIP database are read again too (Reloader). Every
// other key needs a restart: a reload that changes one logs it by name and
// keeps the running value.
//
// A reload is all or nothing. The new config is validated, then every part
// prepares what it takes (PrepareReload: compiled zones, resolved secrets,
// a new app proxy), changing nothing; only when every part has prepared
// does each apply, and applying cannot fail. A config that does not
// validate, or that a part cannot take, is logged with every problem and
// changes nothing (certificates and the GeoIP database are not read again
// either; their files are also polled).

// A ConfigReloader is a part that takes the live keys of a reloaded
// config (see above). PrepareReload checks and builds what cfg asks of
// the part without changing anything; the apply func it returns swaps that
// in and cannot fail. cfg is the config the node will run: its restart
// keys hold the running values.
type ConfigReloader interface {
	PrepareReload(cfg *config.Config) (apply func(), err error)
}

// liveKeys copies the keys a reload applies from c into eff, so that eff
// is the running config with c's live values.
func liveKeys(eff, c *config.Config) {
	eff.Log.Level = c.Log.Level

	eff.DNS.Zones, eff.DNS.Dynamic, eff.DNS.Overrides = c.DNS.Zones, c.DNS.Dynamic, c.DNS.Overrides
	eff.DNS.SlackKM, eff.DNS.RRL = c.DNS.SlackKM, c.DNS.RRL

	ep, p := &eff.PubSub, &c.PubSub
	ep.Tenants, ep.History, ep.HistoryTTL, ep.MaxMessageBytes = p.Tenants, p.History, p.HistoryTTL, p.MaxMessageBytes
	ep.MaxSubsPerConn, ep.MaxConnsPerIP = p.MaxSubsPerConn, p.MaxConnsPerIP
	ep.MaxChannels, ep.MaxChannelsPerTenant = p.MaxChannels, p.MaxChannelsPerTenant
	ep.SubscribeRate, ep.SubscribeBurst = p.SubscribeRate, p.SubscribeBurst

	eff.CDN.MaxBytes, eff.CDN.MaxEntries = c.CDN.MaxBytes, c.CDN.MaxEntries

	eff.HTTPS.AppServer = c.HTTPS.AppServer
	el, l := &eff.HTTPS.Limits, &c.HTTPS.Limits
	el.MaxBodyBytes, el.MaxConnsPerIP, el.MaxWebsocketMessageBytes = l.MaxBodyBytes, l.MaxConnsPerIP, l.MaxWebsocketMessageBytes

	eff.Mesh.GossipKeys = c.Mesh.GossipKeys
}

// RestartKeys returns the key paths (node.id, mesh.seeds) whose values
// differ between running and loaded that a reload cannot apply: the
// node keeps running with the old values until it is restarted.
func RestartKeys(running, loaded *config.Config) []string {
	eff := *running
	liveKeys(&eff, loaded)
	var keys []string
	diffKeys(reflect.ValueOf(eff), reflect.ValueOf(*loaded), "", &keys)
	return keys
}

// diffKeys appends the key paths under path where a and b differ: into
// sections, whole otherwise (a list, a map, a secret is one key).
func diffKeys(a, b reflect.Value, path string, keys *[]string) {
	if a.Kind() == reflect.Struct && a.Type() != reflect.TypeFor[config.Secret]() {
		t := a.Type()
		for i := range t.NumField() {
			name, _, _ := strings.Cut(t.Field(i).Tag.Get("yaml"), ",")
			if name == "" || name == "-" {
				continue
			}
			p := name
			if path != "" {
				p = path + "." + name
			}
			diffKeys(a.Field(i), b.Field(i), p, keys)
		}
		return
	}
	if !reflect.DeepEqual(a.Interface(), b.Interface()) {
		*keys = append(*keys, path)
	}
}

// reloadMetrics count reloads and say whether the files ask for a restart.
type reloadMetrics struct {
	reloads        *prometheus.CounterVec
	restartPending prometheus.Gauge
}

// Results of a reload, as the result label of edgenode_config_reloads_total.
const (
	reloadOK      = "ok"      // applied (restart keys, if any, named in the log)
	reloadInvalid = "invalid" // the config did not load or validate: nothing changed
	reloadRefused = "refused" // a part could not take it: nothing changed
)

func newReloadMetrics(reg prometheus.Registerer) (*reloadMetrics, error) {
	m := &reloadMetrics{
		reloads: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_config_reloads_total",
			Help: "Config reloads (SIGHUP) by result: ok, invalid (did not validate: nothing changed), refused (a part could not take it: nothing changed)."},
			[]string{"result"}),
		restartPending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "edgenode_config_restart_pending",
			Help: "1 when the config files change keys that only a restart applies (named in the log at reload), else 0."}),
	}
	for _, r := range []string{reloadOK, reloadInvalid, reloadRefused} {
		m.reloads.WithLabelValues(r)
	}
	for _, c := range []prometheus.Collector{m.reloads, m.restartPending} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("metrics: register the reload metrics: %w", err)
		}
	}
	return m, nil
}

// SetReload gives the node what a SIGHUP needs: load reads the config
// again as at start (files, drop-ins, environment, command-line
// overrides), level is the level of the node's logger. Without it a
// SIGHUP only reads certificates and the GeoIP database again.
func (n *Node) SetReload(load func() (config.Config, error), level *slog.LevelVar) {
	n.load, n.level = load, level
}

// reloadConfig is what a SIGHUP does: see the comment at the top of this
// file. It runs on Run's goroutine, so reloads never overlap.
func (n *Node) reloadConfig(lc *lifecycle) {
	if n.load == nil {
		lc.reload()
		return
	}
	n.log.Info("reloading the config")
	loaded, err := n.load()
	if err != nil {
		var ps *config.Problems
		if errors.As(err, &ps) {
			problems := make([]string, len(ps.List))
			for i, p := range ps.List {
				problems[i] = p.String()
			}
			n.log.Error("config reload refused: the config has problems; nothing changed", "problems", problems)
		} else {
			n.log.Error("config reload refused; nothing changed", "err", err)
		}
		n.reloadMet.reloads.WithLabelValues(reloadInvalid).Inc()
		return
	}
	restart := RestartKeys(&n.cfg, &loaded)
	eff := n.cfg
	liveKeys(&eff, &loaded)
	if err := n.applyReload(lc, &eff); err != nil {
		n.log.Error("config reload refused; nothing changed", "err", err)
		n.reloadMet.reloads.WithLabelValues(reloadRefused).Inc()
		return
	}
	if len(restart) > 0 {
		n.log.Warn("config changed but needs a restart: "+strings.Join(restart, ", ")+"; the node keeps the running values", "keys", restart)
		n.reloadMet.restartPending.Set(1)
	} else {
		n.reloadMet.restartPending.Set(0)
	}
	n.reloadMet.reloads.WithLabelValues(reloadOK).Inc()
	lc.reload()
}

// applyReload prepares every started part for eff, then applies them all,
// or none when one cannot take it.
func (n *Node) applyReload(lc *lifecycle, eff *config.Config) error {
	var level slog.Level
	if err := level.UnmarshalText([]byte(eff.Log.Level)); err != nil {
		return fmt.Errorf("log.level: %w", err)
	}
	var applies []func()
	var errs []error
	for _, p := range lc.parts[:lc.started] {
		r, ok := p.(ConfigReloader)
		if !ok {
			continue
		}
		apply, err := r.PrepareReload(eff)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", p.Name(), err))
			continue
		}
		applies = append(applies, apply)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for _, apply := range applies {
		apply()
	}
	n.cfg = *eff
	running := *eff
	n.running.Store(&running)
	v := configVersion(eff)
	changed := v != n.cfgVersion
	n.cfgVersion = v
	n.log.Info("config reloaded", "config_version", v, "changed", changed)
	// Last, so this reload's lines follow the level it started with.
	if n.level != nil {
		n.level.Set(level)
	}
	if changed && n.static != nil {
		// dns.nodes needs a restart: the running config's list.
		n.static.Publish(staticNodes(&n.cfg, n.version, v))
	}
	if changed && n.mesh != nil {
		// Gossiped so the node map shows which config each node runs.
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := n.mesh.SetConfigVersion(ctx, v); err != nil {
			n.log.Warn("config version not announced yet; it goes with the next gossip", "err", err)
		}
	}
	return nil
}

// PrepareReload takes the DNS keys a reload applies (see Reconfigure).
func (p *dnsPart) PrepareReload(cfg *config.Config) (func(), error) {
	opts, err := dnsOptions(&cfg.DNS)
	if err != nil {
		return nil, err
	}
	return p.srv.Reconfigure(opts)
}

// PrepareReload takes pubsub's tenants and limits (see Reconfigure).
func (p *pubsubPart) PrepareReload(cfg *config.Config) (func(), error) {
	opts, err := pubsubOptions(&cfg.PubSub)
	if err != nil {
		return nil, err
	}
	return p.ps.Reconfigure(opts)
}

// PrepareReload takes the cache's budget.
func (p *cdnPart) PrepareReload(cfg *config.Config) (func(), error) {
	o := cdnOptions(&cfg.CDN, cfg.Node.DataDir, nil)
	return func() {
		p.cache.SetLimits(o.MaxBytes, o.MaxEntries)
		if p.maxBytes != nil {
			p.maxBytes.Set(float64(o.MaxBytes))
		}
	}, nil
}

// PrepareReload takes the gossip keyring: one step of a rotation (add a
// key, make it primary, remove the old one) per reload, on every node.
// Turning encryption on or off needs a restart.
func (p *meshPart) PrepareReload(cfg *config.Config) (func(), error) {
	keys, err := gossipKeys(cfg.Mesh.GossipKeys)
	if err != nil {
		return nil, err
	}
	if (len(keys) == 0) != (len(p.m.GossipKeys()) == 0) {
		return nil, errors.New("mesh.gossip_keys: turning gossip encryption on or off needs a restart")
	}
	if len(keys) == 0 {
		return func() {}, nil
	}
	for i, k := range keys {
		if l := len(k); l != 16 && l != 24 && l != 32 {
			return nil, fmt.Errorf("mesh.gossip_keys[%d]: %d bytes; want 16, 24 or 32 (AES-128, -192, -256)", i, l)
		}
	}
	if slices.EqualFunc(keys, p.m.GossipKeys(), bytes.Equal) {
		return func() {}, nil
	}
	return func() {
		// Cannot fail on keys of those sizes: the new primary is added
		// before it is used, and removed keys are not primary.
		if err := p.m.SetGossipKeys(keys); err != nil {
			p.log.Error("gossip keyring not changed", "err", err)
			return
		}
		p.log.Info("gossip keyring changed", "keys", len(keys))
	}, nil
}

// PrepareReload takes the app server and the limits that can change while
// the server runs (see transport.Server.SetLimits).
func (p *httpsPart) PrepareReload(cfg *config.Config) (func(), error) {
	var app func()
	if target := cfg.HTTPS.AppServer; target != p.appTarget {
		h, err := p.newApp(target)
		if err != nil {
			return nil, err
		}
		app = func() {
			p.app.set(h)
			p.appTarget = target
			p.log.Info("app server changed", "app_server", target)
		}
	}
	limits := httpsLimits(&cfg.HTTPS.Limits)
	return func() {
		if app != nil {
			app()
		}
		p.srv.SetLimits(limits)
	}, nil
}

// gossipKeys resolves and decodes mesh.gossip_keys.
func gossipKeys(ks []config.Secret) ([][]byte, error) {
	var keys [][]byte
	for i, k := range ks {
		v, err := k.Resolve()
		if err != nil {
			return nil, fmt.Errorf("mesh.gossip_keys[%d]: %w", i, err)
		}
		key, err := base64.StdEncoding.DecodeString(strings.TrimSpace(v))
		if err != nil {
			return nil, fmt.Errorf("mesh.gossip_keys[%d]: not base64: %w", i, err)
		}
		keys = append(keys, key)
	}
	return keys, nil
}

// Pending is what a reload would do now: GET /v1/config/pending, which
// `edgenode check-config -running` shows.
type Pending struct {
	// ConfigVersion is the running config's (as in the node map).
	ConfigVersion string `json:"config_version"`
	// Live are the keys whose values in the files differ from the running
	// ones and that a reload applies; Restart those that need a restart.
	Live    []string `json:"live"`
	Restart []string `json:"restart"`
	// Problems: the files do not validate (a reload would change nothing).
	Problems []string `json:"problems,omitempty"`
}

// servePending reads the config as a reload would, changing nothing, and
// answers with a Pending.
func (n *Node) servePending(w http.ResponseWriter, r *http.Request) {
	if n.load == nil {
		http.Error(w, "this node was not given a way to read its config again", http.StatusNotImplemented)
		return
	}
	running := n.running.Load()
	pd := Pending{ConfigVersion: configVersion(running), Live: []string{}, Restart: []string{}}
	loaded, err := n.load()
	if err != nil {
		var ps *config.Problems
		if errors.As(err, &ps) {
			for _, p := range ps.List {
				pd.Problems = append(pd.Problems, p.String())
			}
		} else {
			pd.Problems = []string{err.Error()}
		}
	} else {
		eff := *running
		liveKeys(&eff, &loaded)
		diffKeys(reflect.ValueOf(*running), reflect.ValueOf(eff), "", &pd.Live)
		pd.Restart = append(pd.Restart, RestartKeys(running, &loaded)...)
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(pd)
}

package pubsub

import (
	"container/list"
	"fmt"
)

// o returns the options in effect: opts with the limits of the latest
// reload (see Reconfigure).
func (p *PubSub) o() *Options { return p.live.Load() }

// tenant returns the tenant named name, nil when there is none.
func (p *PubSub) tenant(name string) *tenant { return (*p.tenants.Load())[name] }

// Reconfigure takes what a config reload may change while connections stay
// open: the tenants (added, removed, their keys, origins and public
// threads) and the limits History, HistoryTTL, MaxMessageBytes,
// MaxSubsPerConn, MaxConnsPerIP, MaxChannels, MaxChannelsPerTenant,
// SubscribeRate and SubscribeBurst. opts' other fields need a restart and
// are ignored. It checks everything first, changing nothing, and returns
// the func that swaps it in.
//
// Nothing already granted is taken back: subscriptions made with a
// secret that is now gone stay until they end, and a removed tenant's
// channels keep their subscribers and history until they go idle; new
// subscribes and publishes follow the new rules. A limit applies from its
// next check (a lower MaxSubsPerConn refuses further subscribes; a shorter
// history is trimmed as messages arrive).
func (p *PubSub) Reconfigure(opts Options) (commit func(), err error) {
	o := *p.o()
	o.Tenants = opts.Tenants
	o.History, o.HistoryTTL, o.MaxMessageBytes = opts.History, opts.HistoryTTL, opts.MaxMessageBytes
	o.MaxSubsPerConn, o.MaxConnsPerIP = opts.MaxSubsPerConn, opts.MaxConnsPerIP
	o.MaxChannels, o.MaxChannelsPerTenant = opts.MaxChannels, opts.MaxChannelsPerTenant
	o.SubscribeRate, o.SubscribeBurst = opts.SubscribeRate, opts.SubscribeBurst
	o = o.withDefaults()
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("pubsub: options: %w", err)
	}
	tenants, rules := p.tenantsFor(o.Tenants)
	return func() {
		for name, r := range rules {
			tenants[name].rules.Store(r)
		}
		p.tenants.Store(&tenants)
		p.live.Store(&o)
	}, nil
}

// tenantsFor returns the tenants of ts by name, and their rules (to store
// at once). A tenant that exists keeps its object, and with it the count
// and idle list of its channels.
func (p *PubSub) tenantsFor(ts []Tenant) (map[string]*tenant, map[string]*tenantRules) {
	var cur map[string]*tenant
	if m := p.tenants.Load(); m != nil {
		cur = *m
	}
	tenants := make(map[string]*tenant, len(ts))
	rules := make(map[string]*tenantRules, len(ts))
	for _, t := range ts {
		r := &tenantRules{secret: t.Secret, publicKey: t.PublicKey, public: t.Public}
		for _, s := range t.Origins {
			pat, _ := parseOriginPattern(s) // validated
			r.origins = append(r.origins, pat)
		}
		nt := cur[t.Name]
		if nt == nil {
			nt = &tenant{name: t.Name, idle: list.New()}
		}
		tenants[t.Name] = nt
		rules[t.Name] = r
	}
	return tenants, rules
}

package dns

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	mdns "github.com/miekg/dns"
)

// DNS constants used on the wire.
const (
	typeA     = 1
	typeNS    = 2
	typeCNAME = 5
	typeSOA   = 6
	typeHINFO = 13
	typeMX    = 15
	typeTXT   = 16
	typeAAAA  = 28
	typeOPT   = 41
	typeIXFR  = 251
	typeAXFR  = 252
	typeMAILB = 253
	typeMAILA = 254
	typeANY   = 255
	typeCAA   = 257
	classIN   = 1

	rcodeSuccess  = 0
	rcodeFormErr  = 1
	rcodeServFail = 2
	rcodeNXDomain = 3
	rcodeNotImp   = 4
	rcodeRefused  = 5
	rcodeNotAuth  = 9
	rcodeBadVers  = 16

	// rfc8482TTL is the TTL RFC 8482 suggests for the synthesized HINFO.
	rfc8482TTL = 3789
	// maxCNAMEHops bounds chasing in-zone CNAME chains (and loops).
	maxCNAMEHops = 8
)

var allowedStatic = map[uint16]bool{
	typeA: true, typeAAAA: true, typeCNAME: true, typeTXT: true, typeMX: true, typeCAA: true,
}

// rrset is one owner's records of one type, each kept as its wire-format
// tail: TYPE, CLASS, TTL, RDLENGTH, RDATA. The owner is written at answer
// time as a compression pointer to wherever the name already sits in the
// packet. Names inside RDATA are uncompressed so a tail never depends on
// its position.
type rrset struct {
	qtype uint16
	tails [][]byte
	// target is the lower-case wire-format CNAME target (CNAME sets only).
	target string
}

// zone is a compiled zone.
type zone struct {
	origin string // lower-case wire format
	name   string // presentation, for logs
	// negSOA is the SOA tail for negative answers: TTL = min(SOA TTL,
	// MINIMUM) per RFC 2308.
	negSOA []byte
}

// entry is a name that exists in a zone: it has records, is dynamic, or is
// an empty non-terminal (sets empty, dyn < 0).
type entry struct {
	zone  *zone
	sets  []rrset // sorted by type
	cname *rrset
	dyn   int // index into compiled.dynamics, or -1
}

func (e *entry) set(t uint16) *rrset {
	for i := range e.sets {
		if e.sets[i].qtype == t {
			return &e.sets[i]
		}
	}
	return nil
}

// hasData reports whether the name owns any record (for ANY).
func (e *entry) hasData() bool { return len(e.sets) > 0 || e.cname != nil || e.dyn >= 0 }

// dynamic is a compiled DynamicName.
type dynamic struct {
	name string // presentation
	pool int    // index into compiled.pools
	k    int
	ttl  uint32
}

// compiled is everything derived from the configuration alone. Immutable.
type compiled struct {
	zones    map[string]*zone  // by lower-case wire origin
	names    map[string]*entry // by lower-case wire name
	dynamics []dynamic
	pools    []string // tag per pool ("" = all nodes)
	zoneList []*zone  // in configuration order
	hinfo    []byte   // RFC 8482 HINFO tail
	slackKM  float64  // Options.SlackKM, with its default
}

// wireName returns the lower-case wire form of a presentation name.
func wireName(name string) (string, error) {
	name = mdns.CanonicalName(name)
	if _, ok := mdns.IsDomainName(name); !ok {
		return "", fmt.Errorf("invalid domain name %q", name)
	}
	buf := make([]byte, 256)
	n, err := mdns.PackDomainName(name, buf, 0, nil, false)
	if err != nil {
		return "", fmt.Errorf("domain name %q: %w", name, err)
	}
	return string(buf[:n]), nil
}

// tail packs rr and returns it without its owner name.
func tail(rr mdns.RR) ([]byte, error) {
	buf := make([]byte, 65535)
	n, err := mdns.PackRR(rr, buf, 0, nil, false)
	if err != nil {
		return nil, err
	}
	owner, err := wireName(rr.Header().Name)
	if err != nil {
		return nil, err
	}
	return slices.Clone(buf[len(owner):n]), nil
}

// absName resolves a record name relative to origin.
func absName(name, origin string) string {
	switch {
	case name == "" || name == "@":
		return origin
	case strings.HasSuffix(name, "."):
		return name
	default:
		return name + "." + origin
	}
}

func compile(opts *Options) (*compiled, error) {
	c := &compiled{
		zones: map[string]*zone{},
		names: map[string]*entry{},
	}
	hinfo, err := tail(&mdns.HINFO{
		Hdr: mdns.RR_Header{Name: ".", Rrtype: typeHINFO, Class: classIN, Ttl: rfc8482TTL},
		Cpu: "RFC8482",
	})
	if err != nil {
		return nil, err
	}
	c.hinfo = hinfo
	c.slackKM = opts.SlackKM
	if len(opts.Zones) == 0 {
		return nil, errors.New("dns: no zones configured")
	}
	origins := make([]string, 0, len(opts.Zones))
	for i := range opts.Zones {
		zc := &opts.Zones[i]
		origin := mdns.CanonicalName(mdns.Fqdn(zc.Origin))
		if origin == "." {
			return nil, errors.New("dns: the root zone is not supported")
		}
		for _, o := range origins {
			if mdns.IsSubDomain(o, origin) || mdns.IsSubDomain(origin, o) {
				return nil, fmt.Errorf("dns: zones %s and %s overlap; nested zones are not supported", o, origin)
			}
		}
		origins = append(origins, origin)
		z, err := c.addZone(zc, origin)
		if err != nil {
			return nil, fmt.Errorf("dns: zone %s: %w", origin, err)
		}
		c.zoneList = append(c.zoneList, z)
	}
	for i := range opts.Dynamic {
		if err := c.addDynamic(&opts.Dynamic[i]); err != nil {
			return nil, fmt.Errorf("dns: dynamic name %q: %w", opts.Dynamic[i].Name, err)
		}
	}
	// Every ancestor of a name up to its apex exists (empty non-terminals
	// answer NODATA, not NXDOMAIN).
	for key, e := range c.names {
		for k := key; len(k) > len(e.zone.origin); {
			k = k[1+int(k[0]):]
			if _, ok := c.names[k]; !ok {
				c.names[k] = &entry{zone: e.zone, dyn: -1}
			}
		}
	}
	for _, e := range c.names {
		slices.SortFunc(e.sets, func(a, b rrset) int { return int(a.qtype) - int(b.qtype) })
	}
	return c, nil
}

func (c *compiled) entry(key string, z *zone) *entry {
	e := c.names[key]
	if e == nil {
		e = &entry{zone: z, dyn: -1}
		c.names[key] = e
	}
	return e
}

func (c *compiled) addRR(e *entry, rr mdns.RR) error {
	t, err := tail(rr)
	if err != nil {
		return fmt.Errorf("%s: %w", rr, err)
	}
	typ := rr.Header().Rrtype
	if typ == typeCNAME {
		if e.cname == nil {
			target, err := wireName(rr.(*mdns.CNAME).Target)
			if err != nil {
				return err
			}
			e.cname = &rrset{qtype: typ, target: target}
		} else {
			return fmt.Errorf("%s: more than one CNAME", rr.Header().Name)
		}
		e.cname.tails = append(e.cname.tails, t)
		return nil
	}
	s := e.set(typ)
	if s == nil {
		e.sets = append(e.sets, rrset{qtype: typ})
		s = &e.sets[len(e.sets)-1]
	}
	for _, have := range s.tails {
		if string(have) == string(t) {
			return nil // duplicate records collapse, as in a zone file
		}
	}
	s.tails = append(s.tails, t)
	return nil
}

func durOr(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func (c *compiled) addZone(zc *Zone, origin string) (*zone, error) {
	ow, err := wireName(origin)
	if err != nil {
		return nil, err
	}
	z := &zone{origin: ow, name: origin}
	c.zones[ow] = z

	soaTTL := ttlSeconds(durOr(zc.SOA.TTL, time.Hour))
	minimum := ttlSeconds(durOr(zc.SOA.Minimum, time.Minute))
	mname := mdns.Fqdn(zc.SOA.MName)
	if zc.SOA.MName == "" {
		mname = "ns1." + origin
	}
	rname := mdns.Fqdn(zc.SOA.RName)
	if zc.SOA.RName == "" {
		rname = "hostmaster." + origin
	}
	for _, n := range []string{mname, rname} {
		if _, ok := mdns.IsDomainName(n); !ok {
			return nil, fmt.Errorf("SOA: invalid name %q", n)
		}
	}
	serial := zc.SOA.Serial
	if serial == 0 {
		serial = uint32(time.Now().Unix())
	}
	soa := &mdns.SOA{
		Hdr:     mdns.RR_Header{Name: origin, Rrtype: typeSOA, Class: classIN, Ttl: soaTTL},
		Ns:      mname,
		Mbox:    rname,
		Serial:  serial,
		Refresh: ttlSeconds(durOr(zc.SOA.Refresh, time.Hour)),
		Retry:   ttlSeconds(durOr(zc.SOA.Retry, 10*time.Minute)),
		Expire:  ttlSeconds(durOr(zc.SOA.Expire, 7*24*time.Hour)),
		Minttl:  minimum,
	}
	apex := c.entry(ow, z)
	if err := c.addRR(apex, soa); err != nil {
		return nil, err
	}
	neg := *soa
	neg.Hdr.Ttl = min(soaTTL, minimum)
	if z.negSOA, err = tail(&neg); err != nil {
		return nil, err
	}

	ns := zc.NS
	if len(ns) == 0 {
		ns = []string{mname}
	}
	nsTTL := ttlSeconds(durOr(zc.NSTTL, time.Duration(soaTTL)*time.Second))
	for _, n := range ns {
		n = mdns.Fqdn(absName(n, origin))
		if _, ok := mdns.IsDomainName(n); !ok {
			return nil, fmt.Errorf("NS: invalid name %q", n)
		}
		rr := &mdns.NS{Hdr: mdns.RR_Header{Name: origin, Rrtype: typeNS, Class: classIN, Ttl: nsTTL}, Ns: mdns.CanonicalName(n)}
		if err := c.addRR(apex, rr); err != nil {
			return nil, err
		}
	}

	nodesKey, err := wireName(NodesLabel + "." + origin)
	if err != nil {
		return nil, err
	}
	// nodes.<zone> always exists (NODATA); its children come from the node map.
	c.entry(nodesKey, z)

	for i, r := range zc.Records {
		typ, ok := mdns.StringToType[strings.ToUpper(r.Type)]
		if !ok || !allowedStatic[typ] {
			return nil, fmt.Errorf("record %d (%s): type %q not supported (A, AAAA, CNAME, TXT, MX, CAA)", i, r.Name, r.Type)
		}
		owner := mdns.CanonicalName(absName(r.Name, origin))
		if !mdns.IsSubDomain(origin, owner) {
			return nil, fmt.Errorf("record %d: %s is outside the zone", i, owner)
		}
		if mdns.IsSubDomain(NodesLabel+"."+origin, owner) {
			return nil, fmt.Errorf("record %d: %s is under %s.%s, which is reserved for per-node names", i, owner, NodesLabel, origin)
		}
		line := fmt.Sprintf("%s %d IN %s %s\n", owner, ttlSeconds(durOr(r.TTL, DefaultRecordTTL)),
			mdns.TypeToString[typ], r.Value)
		zp := mdns.NewZoneParser(strings.NewReader(line), origin, "")
		rr, ok := zp.Next()
		if err := zp.Err(); err != nil {
			return nil, fmt.Errorf("record %d (%s %s %s): %w", i, r.Name, r.Type, r.Value, err)
		}
		if !ok || rr == nil {
			return nil, fmt.Errorf("record %d (%s %s): no record parsed", i, r.Name, r.Type)
		}
		if _, more := zp.Next(); more {
			return nil, fmt.Errorf("record %d (%s %s): value holds more than one record", i, r.Name, r.Type)
		}
		rr.Header().Name = owner
		if cn, ok := rr.(*mdns.CNAME); ok {
			cn.Target = mdns.CanonicalName(cn.Target)
		}
		key, err := wireName(owner)
		if err != nil {
			return nil, err
		}
		if err := c.addRR(c.entry(key, z), rr); err != nil {
			return nil, err
		}
	}
	// CNAME excludes other data (RFC 1034 3.6.2), and the apex has SOA/NS.
	for k, e := range c.names {
		if e.zone == z && e.cname != nil && len(e.sets) > 0 {
			return nil, fmt.Errorf("%s has a CNAME and other records", presentation(k))
		}
	}
	return z, nil
}

func (c *compiled) addDynamic(d *DynamicName) error {
	if d.K > 32 {
		return fmt.Errorf("answer count %d is more than 32", d.K)
	}
	var name string
	var z *zone
	if strings.HasSuffix(d.Name, ".") {
		name = mdns.CanonicalName(d.Name)
	} else if len(c.zoneList) == 1 {
		name = mdns.CanonicalName(absName(d.Name, c.zoneList[0].name))
	} else {
		return errors.New("the name is relative but there is more than one zone; write it with a final dot")
	}
	key, err := wireName(name)
	if err != nil {
		return err
	}
	for _, zz := range c.zoneList {
		if mdns.IsSubDomain(zz.name, name) {
			z = zz
		}
	}
	if z == nil {
		return fmt.Errorf("%s is in none of the zones", name)
	}
	if mdns.IsSubDomain(NodesLabel+"."+z.name, name) {
		return fmt.Errorf("%s is under %s.%s, which is reserved for per-node names", name, NodesLabel, z.name)
	}
	e := c.entry(key, z)
	if e.dyn >= 0 {
		return fmt.Errorf("%s is configured twice", name)
	}
	if e.cname != nil || e.set(typeA) != nil || e.set(typeAAAA) != nil {
		return fmt.Errorf("%s also has static A, AAAA or CNAME records", name)
	}
	pool := slices.Index(c.pools, d.Tag)
	if pool < 0 {
		pool = len(c.pools)
		c.pools = append(c.pools, d.Tag)
	}
	e.dyn = len(c.dynamics)
	c.dynamics = append(c.dynamics, dynamic{name: name, pool: pool, k: d.K, ttl: ttlSeconds(d.TTL)})
	return nil
}

// presentation turns a wire-format name back into text, for messages.
func presentation(wire string) string {
	var b strings.Builder
	for i := 0; i < len(wire) && wire[i] != 0; {
		n := int(wire[i])
		b.WriteString(wire[i+1 : i+1+n])
		b.WriteByte('.')
		i += 1 + n
	}
	if b.Len() == 0 {
		return "."
	}
	return b.String()
}

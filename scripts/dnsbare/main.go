// Command dnsbare serves the DNS benchmark in `make bench`. It is not part
// of the product.
//
//	dnsbare [-listen ADDR] [-zone FILE]
//
// serves a zone file with a bare github.com/miekg/dns server: the baseline
// of what a Go server built the usual way (a dns.Msg per query) does. It
// answers the names in the file, follows in-zone CNAMEs, and gives NXDOMAIN
// or NODATA with the SOA; no wildcards, no delegations. Without -zone it
// answers every query with one fixed A record. It prints its address first.
//
//	dnsbare check -server ADDR -queries FILE
//
// sends each query of a dnsperf query file once and prints one line per
// query: the name, type, rcode and the records of the answer and authority
// sections, so the bench can tell that the servers it compares give the
// same answers.
//
//	dnsbare geodb -out FILE [-networks N]
//
// writes a synthetic GeoLite2-City-layout database (package geotest) for
// the bench's node, so its dynamic answers go through a real GeoIP index.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"

	"github.com/miekg/dns"

	"github.com/edgenode/edgenode/internal/dns/geoindex/geotest"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "check" {
		if err := check(os.Args[2:]); err != nil {
			fmt.Fprintln(os.Stderr, "dnsbare check:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == "geodb" {
		fs := flag.NewFlagSet("dnsbare geodb", flag.ExitOnError)
		out := fs.String("out", "", "database file to write")
		n := fs.Int("networks", 200_000, "how many networks")
		_ = fs.Parse(os.Args[2:])
		if _, err := geotest.WriteSynthetic(*out, *n, max(*n/10, 1), 1); err != nil {
			fmt.Fprintln(os.Stderr, "dnsbare geodb:", err)
			os.Exit(1)
		}
		return
	}
	if err := serve(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "dnsbare:", err)
		os.Exit(1)
	}
}

func serve(args []string) error {
	fs := flag.NewFlagSet("dnsbare", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "UDP address")
	zoneFile := fs.String("zone", "", "zone file to serve (empty: one fixed A record for every query)")
	_ = fs.Parse(args)

	var h dns.Handler
	if *zoneFile == "" {
		rr, _ := dns.NewRR("widget.edgenode.test. 30 IN A 127.0.0.1")
		h = dns.HandlerFunc(func(w dns.ResponseWriter, r *dns.Msg) {
			m := new(dns.Msg)
			m.SetReply(r)
			m.Authoritative = true
			m.Answer = []dns.RR{rr}
			_ = w.WriteMsg(m)
		})
	} else {
		z, err := loadZone(*zoneFile)
		if err != nil {
			return err
		}
		h = z
	}
	pc, err := net.ListenPacket("udp", *listen)
	if err != nil {
		return err
	}
	fmt.Println(pc.LocalAddr().String())
	srv := &dns.Server{PacketConn: pc, Handler: h}
	go func() {
		c := make(chan os.Signal, 1)
		signal.Notify(c, syscall.SIGTERM, syscall.SIGINT)
		<-c
		_ = srv.Shutdown()
	}()
	return srv.ActivateAndServe()
}

// zone is one zone's records by lower-cased owner name and type.
type zone struct {
	origin string
	soa    dns.RR
	neg    dns.RR // the SOA of negative answers: TTL min(SOA TTL, minimum) (RFC 2308 5)
	names  map[string]map[uint16][]dns.RR
}

func loadZone(path string) (*zone, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	z := &zone{names: map[string]map[uint16][]dns.RR{}}
	zp := dns.NewZoneParser(f, "", path)
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		h := rr.Header()
		name := strings.ToLower(h.Name)
		if h.Rrtype == dns.TypeSOA {
			z.origin, z.soa = name, rr
		}
		if z.names[name] == nil {
			z.names[name] = map[uint16][]dns.RR{}
		}
		z.names[name][h.Rrtype] = append(z.names[name][h.Rrtype], rr)
	}
	if err := zp.Err(); err != nil {
		return nil, fmt.Errorf("zone %s: %w", path, err)
	}
	if z.soa == nil {
		return nil, fmt.Errorf("zone %s: no SOA", path)
	}
	neg := dns.Copy(z.soa).(*dns.SOA)
	neg.Hdr.Ttl = min(neg.Hdr.Ttl, neg.Minttl)
	z.neg = neg
	return z, nil
}

func (z *zone) ServeDNS(w dns.ResponseWriter, r *dns.Msg) {
	m := new(dns.Msg)
	m.SetReply(r)
	if len(r.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		_ = w.WriteMsg(m)
		return
	}
	q := r.Question[0]
	name := strings.ToLower(q.Name)
	if !dns.IsSubDomain(z.origin, name) {
		m.Rcode = dns.RcodeRefused
		_ = w.WriteMsg(m)
		return
	}
	m.Authoritative = true
	for hop := 0; hop < 8; hop++ {
		set, ok := z.names[name]
		if !ok {
			if hop == 0 {
				m.Rcode = dns.RcodeNameError
			}
			m.Ns = []dns.RR{z.neg}
			break
		}
		if rrs := set[q.Qtype]; len(rrs) > 0 {
			m.Answer = append(m.Answer, rrs...)
			break
		}
		if c := set[dns.TypeCNAME]; len(c) > 0 {
			m.Answer = append(m.Answer, c...)
			name = strings.ToLower(c[0].(*dns.CNAME).Target)
			continue
		}
		m.Ns = []dns.RR{z.neg}
		break
	}
	_ = w.WriteMsg(m)
}

func check(args []string) error {
	fs := flag.NewFlagSet("dnsbare check", flag.ExitOnError)
	server := fs.String("server", "", "host:port to query")
	queries := fs.String("queries", "", "dnsperf query file: NAME TYPE per line")
	_ = fs.Parse(args)
	if *server == "" || *queries == "" {
		return errors.New("need -server and -queries")
	}
	f, err := os.Open(*queries)
	if err != nil {
		return err
	}
	defer f.Close()
	c := &dns.Client{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) != 2 {
			continue
		}
		t, ok := dns.StringToType[strings.ToUpper(fields[1])]
		if !ok {
			return fmt.Errorf("unknown type %q", fields[1])
		}
		q := new(dns.Msg)
		q.SetQuestion(dns.Fqdn(fields[0]), t)
		q.RecursionDesired = false
		r, _, err := c.Exchange(q, *server)
		if err != nil {
			return fmt.Errorf("%s %s: %w", fields[0], fields[1], err)
		}
		fmt.Printf("%s %s %s aa=%t an=[%s] ns=[%s]\n", fields[0], fields[1], dns.RcodeToString[r.Rcode],
			r.Authoritative, records(r.Answer), records(r.Ns))
	}
	return sc.Err()
}

// records lists RRs without their TTLs' decoration, sorted, so that servers
// that order an RRset differently still compare equal. SOA serials differ
// between servers and are left out.
func records(rrs []dns.RR) string {
	var out []string
	for _, rr := range rrs {
		if soa, ok := rr.(*dns.SOA); ok {
			c := *soa
			c.Serial = 0
			rr = &c
		}
		out = append(out, strings.Join(strings.Fields(rr.String()), " "))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

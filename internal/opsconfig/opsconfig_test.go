package opsconfig

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"go.yaml.in/yaml/v3"
)

// root is the repository's root (this package is internal/opsconfig).
const root = "../.."

var (
	dashboardFile = filepath.Join(root, "configs", "grafana", "edgenode.json")
	rulesFile     = filepath.Join(root, "configs", "prometheus", "alerts.yml")
	rulesTestFile = filepath.Join(root, "configs", "prometheus", "alerts_test.yml")
)

// promtool finds Debian's promtool (package prometheus, which .ci/run
// installs), or skips the test saying so.
func promtool(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("promtool")
	if err != nil {
		t.Skip("promtool not found: install Debian's prometheus package (apt-get install prometheus), as .ci/run does")
	}
	return p
}

// TestPrometheusRules runs `promtool check rules` on the alert rules and
// `promtool test rules` on their unit tests, whose input series make every
// alert fire for one node and not for the others.
func TestPrometheusRules(t *testing.T) {
	bin := promtool(t)
	for _, args := range [][]string{{"check", "rules", rulesFile}, {"test", "rules", rulesTestFile}} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Errorf("promtool %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
}

// TestRulesCoverTheAlerts: every alert the operators were promised exists,
// and the unit tests exercise every rule.
func TestRulesCoverTheAlerts(t *testing.T) {
	rules := readRules(t)
	var names []string
	for _, r := range rules {
		names = append(names, r.Alert)
	}
	for _, want := range []string{"EdgenodeDown", "EdgenodeMemberDead", "EdgenodeNotReady", "EdgenodeReplicationLag",
		"EdgenodeConflictsParked", "EdgenodeRelayingLong", "EdgenodeUpstreamPrimaryUnknown", "EdgenodeCertificateExpiresSoon",
		"EdgenodeCacheFull", "EdgenodeSlowConsumerCuts", "EdgenodeDNSRateLimitDrops"} {
		if !slices.Contains(names, want) {
			t.Errorf("alert %s is missing from %s", want, rulesFile)
		}
	}
	b, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(b, &tests); err != nil {
		t.Fatal(err)
	}
	fires := map[string]bool{}
	for _, tc := range tests.Tests {
		for _, a := range tc.AlertRuleTest {
			if len(a.ExpAlerts) > 0 {
				fires[a.Alertname] = true
			}
		}
	}
	for _, n := range names {
		if !fires[n] {
			t.Errorf("%s has no test in which alert %s fires", rulesTestFile, n)
		}
	}
}

type rule struct {
	Alert string `yaml:"alert"`
	Expr  string `yaml:"expr"`
}

func readRules(t *testing.T) []rule {
	t.Helper()
	b, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var f struct {
		Groups []struct {
			Rules []rule `yaml:"rules"`
		} `yaml:"groups"`
	}
	if err := yaml.Unmarshal(b, &f); err != nil {
		t.Fatalf("%s: %v", rulesFile, err)
	}
	var out []rule
	for _, g := range f.Groups {
		out = append(out, g.Rules...)
	}
	if len(out) == 0 {
		t.Fatalf("%s has no rules", rulesFile)
	}
	return out
}

type dashboard struct {
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		Targets []struct {
			Expr string `json:"expr"`
		} `json:"targets"`
	} `json:"panels"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// TestDashboardShape: the datasource is a variable every panel uses, and
// there is one row per part, each with panels.
func TestDashboardShape(t *testing.T) {
	d := readDashboard(t)
	hasDS := slices.ContainsFunc(d.Templating.List, func(v struct {
		Name  string `json:"name"`
		Type  string `json:"type"`
		Query any    `json:"query"`
	}) bool {
		return v.Name == "datasource" && v.Type == "datasource" && v.Query == "prometheus"
	})
	if !hasDS {
		t.Error("no datasource variable named datasource of type prometheus")
	}
	var rows []string
	inRow := 0
	for _, p := range d.Panels {
		if p.Type == "row" {
			if len(rows) > 0 && inRow == 0 {
				t.Errorf("row %q has no panel", rows[len(rows)-1])
			}
			rows, inRow = append(rows, p.Title), 0
			continue
		}
		inRow++
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
	}
	for _, want := range []string{"Mesh", "DNS", "HTTPS", "Pubsub", "CDN", "Mongo"} {
		if !slices.ContainsFunc(rows, func(r string) bool { return strings.Contains(r, want) }) {
			t.Errorf("no row for %s among %q", want, rows)
		}
	}
}

var metricName = regexp.MustCompile(`\bedgenode_[a-z0-9_]+`)

// TestMetricNamesExist: every edgenode_ metric the dashboard's queries and
// the rules' expressions (and the rules' test series) name is registered
// somewhere in the code, so renaming a metric without updating them fails
// here. The names are read from the sources (every prometheus *Opts literal
// and NewDesc call, constants resolved), not from a running node: a node
// serves a vector's series only once a label set is used, and only for the
// parts its config enables.
func TestMetricNamesExist(t *testing.T) {
	registered := registeredNames(t)
	for _, sure := range []string{"edgenode_mesh_members", "edgenode_dns_queries_total", "edgenode_pubsub_disconnects_total",
		"edgenode_http_requests_total", "edgenode_mongo_repl_lag_seconds"} {
		if !registered[sure] {
			t.Fatalf("the source scan missed %s (found %d names): fix registeredNames", sure, len(registered))
		}
	}
	known := func(n string) bool {
		if registered[n] {
			return true
		}
		for _, sfx := range []string{"_bucket", "_sum", "_count"} {
			if b, ok := strings.CutSuffix(n, sfx); ok && registered[b] {
				return true
			}
		}
		return false
	}
	check := func(where, expr string) {
		for _, n := range metricName.FindAllString(expr, -1) {
			if !known(n) {
				t.Errorf("%s uses %s, which no code registers", where, n)
			}
		}
	}
	for _, r := range readRules(t) {
		check(rulesFile+" "+r.Alert, r.Expr)
	}
	d := readDashboard(t)
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			check(dashboardFile+" panel "+strconv.Quote(p.Title), tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		b, _ := json.Marshal(v.Query)
		check(dashboardFile+" variable "+v.Name, string(b))
	}
	b, err := os.ReadFile(rulesTestFile)
	if err != nil {
		t.Fatal(err)
	}
	check(rulesTestFile, string(b))
}

// registeredNames scans every non-test Go file of the repository for
// metric names: Namespace/Subsystem/Name of prometheus.*Opts literals and
// the first argument of prometheus.NewDesc, with string constants of the
// same file resolved.
func registeredNames(t *testing.T) map[string]bool {
	t.Helper()
	names := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if n := d.Name(); path != root && (strings.HasPrefix(n, ".") || n == "tools" || n == "data" || n == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		consts := map[string]string{}
		ast.Inspect(f, func(n ast.Node) bool {
			if vs, ok := n.(*ast.ValueSpec); ok {
				for i, id := range vs.Names {
					if i < len(vs.Values) {
						if s, ok := stringLit(vs.Values[i], nil); ok {
							consts[id.Name] = s
						}
					}
				}
			}
			return true
		})
		ast.Inspect(f, func(n ast.Node) bool {
			switch n := n.(type) {
			case *ast.CompositeLit:
				sel, ok := n.Type.(*ast.SelectorExpr)
				if !ok || !strings.HasSuffix(sel.Sel.Name, "Opts") {
					return true
				}
				var ns, sub, name string
				for _, e := range n.Elts {
					kv, ok := e.(*ast.KeyValueExpr)
					if !ok {
						continue
					}
					k, _ := kv.Key.(*ast.Ident)
					if k == nil {
						continue
					}
					v, _ := stringLit(kv.Value, consts)
					switch k.Name {
					case "Namespace":
						ns = v
					case "Subsystem":
						sub = v
					case "Name":
						name = v
					}
				}
				if name != "" {
					names[prometheus.BuildFQName(ns, sub, name)] = true
				}
			case *ast.CallExpr:
				if sel, ok := n.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "NewDesc" && len(n.Args) > 0 {
					if s, ok := stringLit(n.Args[0], consts); ok {
						names[s] = true
					}
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// stringLit evaluates a string literal, a known constant, or a + of them.
func stringLit(e ast.Expr, consts map[string]string) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(e.Value)
		return s, err == nil
	case *ast.Ident:
		s, ok := consts[e.Name]
		return s, ok
	case *ast.BinaryExpr:
		if e.Op != token.ADD {
			return "", false
		}
		a, ok1 := stringLit(e.X, consts)
		b, ok2 := stringLit(e.Y, consts)
		return a + b, ok1 && ok2
	case *ast.ParenExpr:
		return stringLit(e.X, consts)
	}
	return "", false
}

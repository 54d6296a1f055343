package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// One config for a fleet is layers, each laid over the ones before:
//
//  1. the defaults (Default);
//  2. the main file (--config, e.g. /etc/edgenode/edgenode.yaml, the same
//     on every clone);
//  3. the drop-ins: DIR/conf.d/*.yaml next to the main file, in name order
//     (10-site.yaml before 20-node.yaml), typically one per machine;
//  4. the environment: EDGENODE_<KEY PATH> variables, for per-host values
//     (systemd's EnvironmentFile, a container's env).
//
// A layer sets only the keys it writes. Sections and maps (cdn.origin.s3.buckets)
// merge key by key; every other value, lists included, is replaced whole:
// a drop-in that writes mesh.seeds gives the whole list, and one that
// writes a secret gives the whole secret ({file: PATH} does not keep an
// {env: NAME} written before). Every layer is held to the same strict
// rules as a single file: an unknown key or a wrong value is a problem
// naming the file and line, or the variable.
//
// Environment variables. A key path is written upper-case after EDGENODE_,
// with a double underscore between keys (single underscores are part of
// key names), the convention of ASP.NET Core and pydantic-settings:
//
//	node.id                     EDGENODE_NODE__ID=node7
//	https.limits.max_body_bytes EDGENODE_HTTPS__LIMITS__MAX_BODY_BYTES=2MiB
//	mesh.seeds                  EDGENODE_MESH__SEEDS='["a:7946", "b:7946"]'
//	admin.token                 EDGENODE_ADMIN__TOKEN='{file: /etc/edgenode/token}'
//
// A scalar key (string, number, duration, size, boolean) takes the value as
// written, with no YAML quoting or comments, so any string works. A list, a
// section or a map takes YAML (JSON is YAML). A secret takes the value as
// written too, unless it starts with "{": then it is YAML, {file: PATH} or
// {env: NAME}. Variables apply after the files, shallower keys first, so
// EDGENODE_NODE__ID wins over an id inside EDGENODE_NODE='{...}'.
//
// Which variables are config: every EDGENODE_ variable with a double
// underscore in its name, and every one whose name starts with a
// top-level key (EDGENODE_NODE…, EDGENODE_MESH…). Such a variable that names
// no key is an error naming it (a single underscore, EDGENODE_NODE_ID, gets
// "did you mean EDGENODE_NODE__ID?"), unless a secret's {env: NAME} names
// it. Other EDGENODE_ variables (EDGENODE_BIN of scripts/cluster, or
// EDGENODE_TOKEN for a secret) are not read as config.

// EnvPrefix starts every environment variable that sets a config key.
const EnvPrefix = "EDGENODE_"

// envSep separates keys in a variable's name.
const envSep = "__"

// Source is where a value came from: a file and line, an environment
// variable, or (the zero Source) the default.
type Source struct {
	File string // the file, or "" (Parse's bytes have no name)
	Line int    // 1-based; 0 when unknown
	Env  string // the environment variable, for a value from the environment
}

// IsDefault reports whether the value is the default (no layer wrote it).
func (o Source) IsDefault() bool { return o == Source{} }

// String is "default", "FILE:LINE" or "env NAME".
func (o Source) String() string {
	switch {
	case o.Env != "":
		return "env " + o.Env
	case o.File != "" && o.Line > 0:
		return o.File + ":" + strconv.Itoa(o.Line)
	case o.File != "":
		return o.File
	case o.Line > 0:
		return "line " + strconv.Itoa(o.Line)
	}
	return "default"
}

// Loaded is a config with the layers it was made of and, for each value,
// its Source.
type Loaded struct {
	Config Config
	// Files are the files read, in the order they apply: the main file,
	// then the drop-ins.
	Files []string
	// Env are the environment variables applied, in the order they apply.
	Env []string

	origins map[string]Source // by key path: dns.zones[0].ttl
}

// Source returns where the value at a key path (as in a Problem) came
// from: the layer that last wrote it or the list, section or secret that
// holds it; the zero Source for a default.
func (l *Loaded) Source(path string) Source {
	for p := path; p != ""; p = parentPath(p) {
		if o, ok := l.origins[p]; ok {
			return o
		}
	}
	return Source{}
}

// parentPath is the path one key up: a.b[2].c → a.b[2] → a.b → a → "".
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// DropInDir is the folder of the drop-ins of the main config file at path:
// conf.d beside it.
func DropInDir(path string) string { return filepath.Join(filepath.Dir(path), "conf.d") }

// Load reads the config at path, its drop-ins and this process's
// environment, and validates the result. An empty path starts from the
// defaults alone (the environment still applies). The returned error,
// when it is a *Problems, lists every problem found.
func Load(path string) (Config, error) {
	l, err := LoadLayers(path, os.Environ())
	return l.Config, err
}

// LoadLayers is Load with the environment given (as os.Environ returns it),
// and with the origin of every value kept.
func LoadLayers(path string, environ []string) (Loaded, error) {
	var layers []layer
	var probs Problems
	if path != "" {
		data, err := os.ReadFile(path)
		if err != nil {
			return Loaded{Config: Default()}, fmt.Errorf("read config: %w", err)
		}
		layers = append(layers, fileLayer(&probs, path, data))
		dropIns, err := dropIns(DropInDir(path))
		if err != nil {
			return Loaded{Config: Default()}, err
		}
		for _, f := range dropIns {
			data, err := os.ReadFile(f)
			if err != nil {
				return Loaded{Config: Default()}, fmt.Errorf("read config drop-in: %w", err)
			}
			layers = append(layers, fileLayer(&probs, f, data))
		}
	}
	envLayers, unknown := envLayers(&probs, environ)
	layers = append(layers, envLayers...)
	return build(layers, &probs, unknown)
}

// dropIns lists DIR/*.yaml in name order. Other names are not read, so
// that a package manager's leftovers (x.yaml.dpkg-old), editor backups and
// hidden files do not apply; a missing folder is no drop-ins.
func dropIns(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir) // sorted by name
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read config drop-ins: %w", err)
	}
	var files []string
	for _, e := range ents {
		name := e.Name()
		if strings.HasPrefix(name, ".") || !strings.HasSuffix(name, ".yaml") {
			continue
		}
		files = append(files, filepath.Join(dir, name))
	}
	return files, nil
}

// Parse decodes a YAML config on top of the defaults and validates it.
func Parse(data []byte) (Config, error) {
	var probs Problems
	l, err := build([]layer{fileLayer(&probs, "", data)}, &probs, nil)
	return l.Config, err
}

// A layer is one file or one environment variable, as a mapping from
// the root of the config.
type layer struct {
	file string     // the file; "" for Parse's bytes or a variable
	env  string     // the variable, for an environment layer
	root *yaml.Node // a mapping node; nil for an empty file or a bad one
}

func (l layer) source(line int) Source {
	if l.env != "" {
		return Source{Env: l.env}
	}
	return Source{File: l.file, Line: line}
}

// fileLayer parses one file; a YAML syntax error is a problem naming it.
func fileLayer(probs *Problems, file string, data []byte) layer {
	l := layer{file: file}
	var doc yaml.Node
	if err := yaml.NewDecoder(bytes.NewReader(data)).Decode(&doc); err != nil && !errors.Is(err, io.EOF) {
		probs.List = append(probs.List, Problem{File: file, What: fmt.Sprintf("is not valid YAML: %v", err)})
		return l
	}
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		l.root = doc.Content[0]
	}
	return l
}

// envLayers turns the config variables of environ into layers, sorted
// shallower keys first, then by name. A variable that names no key is
// returned in unknown with its problem: build reports it unless a secret
// refers to it.
func envLayers(probs *Problems, environ []string) (layers []layer, unknown map[string]Problem) {
	type envVar struct {
		name, value string
		keys        []string
		t           reflect.Type
	}
	var vars []envVar
	unknown = map[string]Problem{}
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		rest, ok := strings.CutPrefix(name, EnvPrefix)
		if !ok || !isConfigVar(rest) {
			continue
		}
		keys, t, err := envPath(rest)
		if err != nil {
			unknown[name] = Problem{Env: name, What: err.Error()}
			continue
		}
		vars = append(vars, envVar{name, value, keys, t})
	}
	slices.SortFunc(vars, func(a, b envVar) int {
		if d := len(a.keys) - len(b.keys); d != 0 {
			return d
		}
		return strings.Compare(a.name, b.name)
	})
	for _, v := range vars {
		val, err := envValue(v.value, v.t)
		if err != nil {
			probs.List = append(probs.List, Problem{Path: strings.Join(v.keys, "."), Env: v.name, What: err.Error()})
			continue
		}
		// Wrap the value in one mapping per key: {node: {id: VALUE}}.
		for i := len(v.keys) - 1; i >= 0; i-- {
			val = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Content: []*yaml.Node{
				{Kind: yaml.ScalarNode, Tag: "!!str", Value: v.keys[i]}, val,
			}}
		}
		layers = append(layers, layer{env: v.name, root: val})
	}
	return layers, unknown
}

// isConfigVar: the name (without EDGENODE_) is meant as a key path.
func isConfigVar(rest string) bool {
	if strings.Contains(rest, envSep) {
		return true
	}
	lower := strings.ToLower(rest)
	for k := range yamlFields(typeOfConfig) {
		if lower == k || strings.HasPrefix(lower, k+"_") {
			return true
		}
	}
	return false
}

// envPath resolves a variable's name (without EDGENODE_) to key names
// and the type of the value it sets.
func envPath(rest string) ([]string, reflect.Type, error) {
	keys := strings.Split(strings.ToLower(rest), envSep)
	t := typeOfConfig
	for i, k := range keys {
		done := strings.Join(keys[:i], ".")
		switch {
		case t.Kind() == reflect.Map:
			if k == "" {
				return nil, nil, fmt.Errorf("names no config key: an empty key after %s", done)
			}
			t = t.Elem()
		case t.Kind() == reflect.Struct && !isLeaf(t):
			fields := yamlFields(t)
			ft, ok := fields[k]
			if !ok {
				return nil, nil, fmt.Errorf("names no config key: %s%s", join(done, k), envSuggest(keys[:i], keys[i:], t))
			}
			t = ft
		default:
			return nil, nil, fmt.Errorf("names no config key: %s has no keys below it; give its whole value in %s",
				done, envName(keys[:i]))
		}
		for t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
	}
	return keys, t, nil
}

// envName is the variable that sets the key path keys.
func envName(keys []string) string {
	return EnvPrefix + strings.ToUpper(strings.Join(keys, envSep))
}

// envSuggest hints at the variable meant, the keys done being right and
// the rest not: the same words with the underscores where they belong
// (EDGENODE_NODE_ID → EDGENODE_NODE__ID, EDGENODE_MESH__LINK__LISTEN →
// EDGENODE_MESH__LINK_LISTEN), else the closest key.
func envSuggest(done, rest []string, t reflect.Type) string {
	if keys := splitKeys(strings.Join(rest, "_"), t); keys != nil {
		name := envName(append(slices.Clone(done), keys...))
		if len(keys) > len(rest) {
			return "; keys are separated by a double underscore: did you mean " + name + "?"
		}
		return "; did you mean " + name + "?"
	}
	fields := yamlFields(t)
	best, bestD := "", 1<<30
	for f := range fields {
		if d := distance(rest[0], f); d < bestD || (d == bestD && f < best) {
			best, bestD = f, d
		}
	}
	if best != "" && bestD <= max(2, len(rest[0])/3) {
		return "; did you mean " + envName(append(slices.Clone(done), best)) + "?"
	}
	return ""
}

// splitKeys finds the key path that s, written with single underscores
// between keys, names below t; nil when there is none.
func splitKeys(s string, t reflect.Type) []string {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct || isLeaf(t) {
		return nil
	}
	for f, ft := range yamlFields(t) {
		if s == f {
			return []string{f}
		}
		if rest, ok := strings.CutPrefix(s, f+"_"); ok {
			if below := splitKeys(rest, ft); below != nil {
				return append([]string{f}, below...)
			}
		}
	}
	return nil
}

var secretType = reflect.TypeOf(Secret{})

// envValue is a variable's value as a YAML node for a key of type t.
func envValue(v string, t reflect.Type) (*yaml.Node, error) {
	structured := t.Kind() == reflect.Slice || t.Kind() == reflect.Map ||
		t.Kind() == reflect.Struct && !isLeaf(t) ||
		t == secretType && strings.HasPrefix(strings.TrimSpace(v), "{")
	if !structured {
		// As written: a plain scalar whose tag (number, boolean)
		// resolves like an unquoted YAML value.
		n := &yaml.Node{Kind: yaml.ScalarNode, Value: v}
		if v == "" || t.Kind() == reflect.String || t == secretType {
			n.Tag = "!!str"
		}
		return n, nil
	}
	var doc yaml.Node
	if err := yaml.Unmarshal([]byte(v), &doc); err != nil {
		return nil, fmt.Errorf("is not valid YAML: %v", cleanYAMLError(err))
	}
	if len(doc.Content) != 1 {
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: ""}, nil
	}
	return doc.Content[0], nil
}

// build checks each layer on its own (so that a problem names its file and
// line or its variable), merges them in order, decodes the result over the
// defaults and validates it.
func build(layers []layer, probs *Problems, unknownEnv map[string]Problem) (Loaded, error) {
	l := Loaded{Config: Default(), origins: map[string]Source{}}
	secretVars := map[string]bool{} // what the layers' {env: NAME} secrets name
	for _, ly := range layers {
		if ly.root == nil {
			continue
		}
		start := len(probs.List)
		checkKeys(probs, ly.root, "", typeOfConfig)
		if len(probs.List) == start {
			// Decode it alone too: yaml.v3 finds what only a whole
			// decode sees (a key written twice).
			c := Default()
			if err := ly.root.Decode(&c); err != nil {
				probs.add("", "%v", cleanYAMLError(err))
			}
			secretEnvs(reflect.ValueOf(c), secretVars)
		}
		for i := start; i < len(probs.List); i++ {
			probs.List[i].File, probs.List[i].Env = ly.file, ly.env
			if ly.env != "" {
				probs.List[i].Line = 0
			}
		}
	}
	// A config variable that names no key is a problem unless a secret
	// refers to it (secretVars may hold more names than the merged config
	// uses: one more exempted, never one wrongly refused).
	names := make([]string, 0, len(unknownEnv))
	for n := range unknownEnv {
		if !secretVars[n] {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	for _, n := range names {
		probs.List = append(probs.List, unknownEnv[n])
	}
	if len(probs.List) > 0 {
		return l, probs
	}
	merged := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
	for _, ly := range layers {
		if ly.file != "" {
			l.Files = append(l.Files, ly.file) // an empty one too: it was read
		}
		if ly.env != "" {
			l.Env = append(l.Env, ly.env)
		}
		if ly.root != nil {
			merged = l.merge(merged, ly.root, "", typeOfConfig, ly)
		}
	}
	if err := merged.Decode(&l.Config); err != nil {
		probs.add("", "%v", cleanYAMLError(err))
		return l, probs
	}
	l.Config.validate(probs)
	// Say where a wrong value was set, when that is more than "line N" of
	// the only file.
	for i := range probs.List {
		p := &probs.List[i]
		if o := l.Source(p.Path); o.File != "" || o.Env != "" {
			p.What += " (set at " + o.String() + ")"
		}
	}
	return l, probs.err()
}

// secretEnvs collects the variables the secrets in v refer to.
func secretEnvs(v reflect.Value, into map[string]bool) {
	switch v.Kind() {
	case reflect.Pointer:
		if !v.IsNil() {
			secretEnvs(v.Elem(), into)
		}
	case reflect.Struct:
		if v.Type() == secretType {
			if s := v.Interface().(Secret); s.Env != "" {
				into[s.Env] = true
			}
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				secretEnvs(v.Field(i), into)
			}
		}
	case reflect.Slice:
		for i := range v.Len() {
			secretEnvs(v.Index(i), into)
		}
	}
}

// merge lays src over dst at path (of type t) and returns the result.
// Sections and maps merge key by key; anything else is replaced. dst is
// never changed in place (it may be shared through a YAML alias): the
// mappings on the way are copied.
func (l *Loaded) merge(dst, src *yaml.Node, path string, t reflect.Type, ly layer) *yaml.Node {
	src, dst = resolveAlias(src), resolveAlias(dst)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	section := t.Kind() == reflect.Struct && !isLeaf(t)
	if section && src.Kind == yaml.ScalarNode && src.Tag == "!!null" {
		return dst // "node:" with nothing under it writes nothing
	}
	if !(section || t.Kind() == reflect.Map) || src.Kind != yaml.MappingNode || dst.Kind != yaml.MappingNode {
		l.replaced(path, src, ly)
		return src
	}
	out := *dst
	out.Content = slices.Clone(dst.Content)
	var fields map[string]reflect.Type
	if section {
		fields = yamlFields(t)
	}
	for i := 0; i+1 < len(src.Content); i += 2 {
		k, v := src.Content[i], src.Content[i+1]
		var ft reflect.Type
		if section {
			ft = fields[k.Value]
		} else {
			ft = t.Elem()
		}
		p := join(path, k.Value)
		j := mappingIndex(&out, k.Value)
		if j < 0 {
			// Merged over nothing, so that a section written is not
			// taken for the source of the keys it leaves out.
			out.Content = append(out.Content, k, l.merge(&yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}, v, p, ft, ly))
			continue
		}
		out.Content[j+1] = l.merge(out.Content[j+1], v, p, ft, ly)
	}
	return &out
}

func resolveAlias(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

// mappingIndex is the index of key in mapping m's Content, or -1.
func mappingIndex(m *yaml.Node, key string) int {
	for i := 0; i+1 < len(m.Content); i += 2 {
		if m.Content[i].Value == key {
			return i
		}
	}
	return -1
}

// replaced records that ly wrote the value n at path: it and everything
// below it now come from ly (what an earlier layer wrote below is gone).
func (l *Loaded) replaced(path string, n *yaml.Node, ly layer) {
	for p := range l.origins {
		if strings.HasPrefix(p, path+".") || strings.HasPrefix(p, path+"[") {
			delete(l.origins, p)
		}
	}
	l.record(path, n, ly, 0)
}

// record notes ly as the origin of n at path and of everything below it
// (as deep as a config goes: deeper is an alias loop).
func (l *Loaded) record(path string, n *yaml.Node, ly layer, depth int) {
	n = resolveAlias(n)
	l.origins[path] = ly.source(n.Line)
	if depth > 8 {
		return
	}
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			l.record(join(path, n.Content[i].Value), n.Content[i+1], ly, depth+1)
		}
	case yaml.SequenceNode:
		for i, c := range n.Content {
			l.record(path+"["+strconv.Itoa(i)+"]", c, ly, depth+1)
		}
	}
}

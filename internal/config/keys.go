package config

import (
	"fmt"
	"reflect"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

var typeOfConfig = reflect.TypeOf(Config{})

// checkKeys walks the YAML tree beside the Go type it decodes into and reports
// every key the type does not have. yaml.v3's KnownFields stops at the first
// one and names a Go type; operators need every key path and a hint instead.
func checkKeys(probs *Problems, n *yaml.Node, path string, t reflect.Type) {
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			checkKeys(probs, c, path, t)
		}
		return
	}
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t.Kind() != reflect.Struct && t.Kind() != reflect.Slice || isLeaf(t) {
		if t == durationType && n.Kind == yaml.ScalarNode && n.ShortTag() == "!!int" && n.Value == "0" {
			// A bare 0 is a duration too (yaml.v3 takes none without a
			// unit): the one that means none. The decode of the whole
			// config sees the same node.
			n.Tag = "!!str"
		}
		// A leaf: decode it alone so that a wrong value is reported with
		// its key path rather than as one anonymous type error.
		if err := n.Decode(reflect.New(t).Interface()); err != nil {
			probs.addLine(path, n.Line, "%s", strings.TrimPrefix(cleanYAMLError(err), fmt.Sprintf("line %d: ", n.Line)))
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return
			}
			probs.addLine(path, n.Line, "must be a mapping of keys, not %s", kindName(n))
			return
		}
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			ft, ok := fields[k.Value]
			if !ok {
				probs.addLine(p, k.Line, "unknown key%s", suggest(k.Value, fields))
				continue
			}
			checkKeys(probs, v, p, ft)
		}
	case reflect.Slice:
		if t.Elem().Kind() == reflect.Uint8 {
			return
		}
		if n.Kind != yaml.SequenceNode {
			if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
				return
			}
			probs.addLine(path, n.Line, "must be a list, not %s", kindName(n))
			return
		}
		for i, c := range n.Content {
			checkKeys(probs, c, path+"["+itoa(i)+"]", t.Elem())
		}
	}
}

var (
	durationType    = reflect.TypeOf(time.Duration(0))
	unmarshalerType = reflect.TypeOf((*yaml.Unmarshaler)(nil)).Elem()
	listElementType = reflect.TypeOf((*listElement)(nil)).Elem()
)

// A listElement is a struct whose UnmarshalYAML only presets the defaults
// of its keys (see defaultZone): checkKeys walks into it like any struct.
type listElement interface{ listElement() }

// isLeaf: t decodes itself (a Secret, a ByteSize), so checkKeys does not
// walk into it.
func isLeaf(t reflect.Type) bool {
	pt := reflect.PointerTo(t)
	if pt.Implements(listElementType) {
		return false
	}
	return t.Implements(unmarshalerType) || pt.Implements(unmarshalerType)
}

func yamlFields(t reflect.Type) map[string]reflect.Type {
	m := make(map[string]reflect.Type, t.NumField())
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		m[name] = f.Type
	}
	return m
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return "the value " + quote(n.Value)
	}
	return "this"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

func suggest(key string, fields map[string]reflect.Type) string {
	best, bestD := "", 1<<30
	for f := range fields {
		if d := distance(key, f); d < bestD || (d == bestD && f < best) {
			best, bestD = f, d
		}
	}
	if best != "" && bestD <= max(2, len(key)/3) {
		return "; did you mean " + quote(best) + "?"
	}
	names := make([]string, 0, len(fields))
	for f := range fields {
		names = append(names, f)
	}
	sortStrings(names)
	return "; known keys here: " + strings.Join(names, ", ")
}

// distance is the Levenshtein distance, for "did you mean" hints.
func distance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// cleanYAMLError turns yaml.v3's "yaml: unmarshal errors:\n  line 3: cannot
// unmarshal !!str `x` into int" into one readable line.
func cleanYAMLError(err error) string {
	msg := err.Error()
	msg = strings.TrimPrefix(msg, "yaml: unmarshal errors:\n")
	msg = strings.TrimSpace(msg)
	msg = strings.ReplaceAll(msg, "cannot unmarshal !!str", "cannot use the string")
	msg = strings.ReplaceAll(msg, "cannot unmarshal !!int", "cannot use the number")
	msg = strings.ReplaceAll(msg, "cannot unmarshal !!bool", "cannot use the boolean")
	msg = strings.ReplaceAll(msg, "cannot unmarshal !!float", "cannot use the number")
	msg = strings.ReplaceAll(msg, "into time.Duration", "as a duration (want e.g. 15s, 2m, 1h30m)")
	msg = strings.ReplaceAll(msg, "into int", "as an integer")
	msg = strings.ReplaceAll(msg, "into uint32", "as a non-negative integer")
	msg = strings.ReplaceAll(msg, "into float64", "as a number")
	msg = strings.ReplaceAll(msg, "into bool", "as true/false")
	msg = strings.ReplaceAll(msg, "into string", "as a string")
	return msg
}

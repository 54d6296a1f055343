package config

import (
	"bytes"
	"fmt"
	"reflect"
	"strconv"

	"go.yaml.in/yaml/v3"
)

// YAML renders c as YAML with secrets redacted, for `edgenode check-config -print`
// and the status page.
func (c *Config) YAML() ([]byte, error) {
	var b bytes.Buffer
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(c); err != nil {
		return nil, err
	}
	return b.Bytes(), enc.Close()
}

// Explain renders the config as YAML with secrets redacted, each value
// followed by a comment saying where it came from (see Source), for
// `edgenode check-config -print`. A secret shows its source ({file: PATH},
// {env: NAME} or <redacted>), never its value.
func (l *Loaded) Explain() ([]byte, error) {
	var root yaml.Node
	if err := root.Encode(&l.Config); err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	l.annotate(&root, "", typeOfConfig)
	var b bytes.Buffer
	b.WriteString("# Where each value comes from: default, FILE:LINE or env VARIABLE.\n")
	b.WriteString("# Layers, in order: defaults")
	for _, f := range l.Files {
		b.WriteString(", " + f)
	}
	for _, e := range l.Env {
		b.WriteString(", env " + e)
	}
	b.WriteString("\n")
	enc := yaml.NewEncoder(&b)
	enc.SetIndent(2)
	if err := enc.Encode(&root); err != nil {
		return nil, fmt.Errorf("render config: %w", err)
	}
	return b.Bytes(), enc.Close()
}

// annotate walks the rendered node n of type t at path and comments each
// value with its source. Sections are walked into, and so are maps, whose
// keys may come from different layers; a list of scalars is written on one
// line ([a, b]) so that one comment covers it.
func (l *Loaded) annotate(n *yaml.Node, path string, t reflect.Type) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if n.Kind == yaml.DocumentNode {
		for _, c := range n.Content {
			l.annotate(c, path, t)
		}
		return
	}
	switch {
	case t.Kind() == reflect.Struct && !isLeaf(t) && n.Kind == yaml.MappingNode:
		fields := yamlFields(t)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := join(path, k.Value)
			ft := fields[k.Value]
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			src := l.Source(p).String()
			switch {
			case ft.Kind() == reflect.Struct && !isLeaf(ft):
				l.annotate(v, p, ft)
			case ft.Kind() == reflect.Slice && v.Kind == yaml.SequenceNode && !scalars(v):
				k.LineComment = src
				for j, c := range v.Content {
					l.annotate(c, p+"["+strconv.Itoa(j)+"]", ft.Elem())
				}
			case ft.Kind() == reflect.Map && v.Kind == yaml.MappingNode && len(v.Content) > 0:
				for j := 0; j+1 < len(v.Content); j += 2 {
					v.Content[j+1].LineComment = l.Source(join(p, v.Content[j].Value)).String()
				}
			case v.Kind == yaml.ScalarNode:
				v.LineComment = src
			default: // a list of scalars, a map, a secret as {file:}/{env:}
				v.Style = yaml.FlowStyle
				v.LineComment = src
			}
		}
	}
}

// scalars reports whether every item of the sequence n is a scalar.
func scalars(n *yaml.Node) bool {
	for _, c := range n.Content {
		if c.Kind != yaml.ScalarNode {
			return false
		}
	}
	return true
}

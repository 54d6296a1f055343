package config

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Secret is a value that may be written inline, read from a file or taken
// from the environment:
//
//	token: s3cret            # inline
//	token: {file: /etc/edgenode/token}
//	token: {env: EDGENODE_TOKEN}
//
// A file's trailing newline is dropped. The value is resolved by Resolve, not
// at parse time, so check-config can report a missing file as a problem.
type Secret struct {
	Inline string
	File   string
	Env    string
}

// IsZero reports whether no value was configured.
func (s Secret) IsZero() bool { return s.Inline == "" && s.File == "" && s.Env == "" }

// UnmarshalYAML implements yaml.Unmarshaler.
func (s *Secret) UnmarshalYAML(n *yaml.Node) error {
	switch n.Kind {
	case yaml.ScalarNode:
		*s = Secret{Inline: n.Value}
		return nil
	case yaml.MappingNode:
		var m map[string]string
		if err := n.Decode(&m); err != nil {
			return err
		}
		var out Secret
		for k, v := range m {
			switch k {
			case "file":
				out.File = v
			case "env":
				out.Env = v
			default:
				return fmt.Errorf("line %d: secret key %q unknown: use {file: PATH} or {env: NAME}", n.Line, k)
			}
		}
		if (out.File == "") == (out.Env == "") {
			return fmt.Errorf("line %d: a secret needs exactly one of file or env", n.Line)
		}
		*s = out
		return nil
	}
	return fmt.Errorf("line %d: a secret is a string, {file: PATH} or {env: NAME}", n.Line)
}

// MarshalYAML implements yaml.Marshaler; inline values are never printed.
func (s Secret) MarshalYAML() (any, error) {
	switch {
	case s.File != "":
		return map[string]string{"file": s.File}, nil
	case s.Env != "":
		return map[string]string{"env": s.Env}, nil
	case s.Inline != "":
		return "<redacted>", nil
	}
	return "", nil
}

// Resolve returns the secret's value.
func (s Secret) Resolve() (string, error) {
	switch {
	case s.File != "":
		b, err := os.ReadFile(s.File)
		if err != nil {
			return "", fmt.Errorf("read secret file: %w", err)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	case s.Env != "":
		v, ok := os.LookupEnv(s.Env)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", s.Env)
		}
		return v, nil
	}
	return s.Inline, nil
}

// Path returns the file a key-file secret names. A key given inline or in the
// environment is PEM text instead; PEM reports which.
func (s Secret) Path() string { return s.File }

// ByteSize is a size in bytes, written as a number or with a unit: 512, 64KiB, 10MiB, 1GiB (also KB, MB, GB as powers of 1000).
type ByteSize int64

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30},
	{"KB", 1000}, {"MB", 1000 * 1000}, {"GB", 1000 * 1000 * 1000},
	{"B", 1},
}

// ParseByteSize parses the forms ByteSize accepts.
func ParseByteSize(s string) (ByteSize, error) {
	s = strings.TrimSpace(s)
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			s = strings.TrimSpace(strings.TrimSuffix(s, u.suffix))
			mult = u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("want a size such as 65536, 64KiB or 10MiB")
	}
	if n > (1<<62)/mult {
		return 0, errors.New("size too large")
	}
	return ByteSize(n * mult), nil
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: want a size such as 65536, 64KiB or 10MiB", n.Line)
	}
	v, err := ParseByteSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %q: %w", n.Line, n.Value, err)
	}
	*b = v
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (b ByteSize) MarshalYAML() (any, error) { return int64(b), nil }

func itoa(i int) string      { return strconv.Itoa(i) }
func quote(s string) string  { return strconv.Quote(s) }
func sortStrings(s []string) { slices.Sort(s) }

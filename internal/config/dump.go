package config

import (
	"bytes"

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

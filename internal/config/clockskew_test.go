package config

import (
	"strings"
	"testing"
)

func TestMaxClockSkew(t *testing.T) {
	for _, v := range []string{"500ms", "0s", "-1m", "48h"} {
		_, err := Parse([]byte("mongo:\n  max_clock_skew: " + v + "\n"))
		if err == nil || !strings.Contains(err.Error(), "mongo.max_clock_skew: ") || !strings.Contains(err.Error(), "want 1s") {
			t.Errorf("max_clock_skew %s: %v", v, err)
		}
	}
	c, err := Parse([]byte("mongo:\n  max_clock_skew: 5m\n"))
	if err != nil || c.Mongo.MaxClockSkew.String() != "5m0s" {
		t.Errorf("max_clock_skew 5m: %v %v", c.Mongo.MaxClockSkew, err)
	}
}

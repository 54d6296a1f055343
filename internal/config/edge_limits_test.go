package config

import (
	"strings"
	"testing"
)

// TestEdgeLimitKeys: the websocket relay and pubsub limits of issue 13
// parse, and bad values are reported with their key paths.
func TestEdgeLimitKeys(t *testing.T) {
	c, err := Parse([]byte(`
https:
  limits:
    max_websocket_message_bytes: 64KiB
pubsub:
  max_channels: 1000
  max_channels_per_tenant: 10
  subscribe_rate: 0.5
  subscribe_burst: 5
`))
	if err != nil {
		t.Fatal(err)
	}
	if c.HTTPS.Limits.MaxWebsocketMessageBytes != 64<<10 || c.PubSub.MaxChannels != 1000 || c.PubSub.MaxChannelsPerTenant != 10 ||
		c.PubSub.SubscribeRate != 0.5 || c.PubSub.SubscribeBurst != 5 {
		t.Errorf("parsed: %+v %+v", c.HTTPS.Limits, c.PubSub)
	}
	_, err = Parse([]byte(`
https:
  limits:
    max_websocket_message_bytes: 10
pubsub:
  max_channels: 100
  max_channels_per_tenant: 200
  subscribe_rate: -1
  subscribe_burst: 0
`))
	if err == nil {
		t.Fatal("bad values accepted")
	}
	for _, want := range []string{
		"https.limits.max_websocket_message_bytes: 10 is out of range",
		"pubsub.max_channels_per_tenant: 200 is out of range",
		"pubsub.subscribe_rate: must not be negative",
		"pubsub.subscribe_burst: must be at least 1",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("missing %q in:\n%v", want, err)
		}
	}
}

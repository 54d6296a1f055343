package pubsub

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

// Reconfigure adds and removes tenants, changes a tenant's rules and the
// limits, while a subscriber stays subscribed and keeps the history.
func TestReconfigure(t *testing.T) {
	n := newNode(t, testOptions(), nil)
	c := n.mustDial()
	c.subscribe("demo/open", "", nil)
	first := n.publish("demo/open", map[string]int{"n": 1})
	c.expect(typeMessage)

	o := testOptions()
	o.Tenants = append(o.Tenants, Tenant{Name: "acme", Public: []string{"*"}})
	o.Tenants[0].Public = []string{"open", "now-public"}
	o.MaxMessageBytes = 64
	commit, err := n.ps.Reconfigure(o)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := n.ps.Publish("acme/x", json.RawMessage(`{}`)); !errors.Is(err, ErrUnknownTenant) {
		t.Fatalf("prepared, not committed: publish to the new tenant: %v", err)
	}
	commit()
	if _, err := n.ps.Publish("acme/x", json.RawMessage(`{}`)); err != nil {
		t.Errorf("publish to the added tenant: %v", err)
	}
	if _, err := n.ps.Publish("demo/open", json.RawMessage(`{"text":"`+strings.Repeat("x", 100)+`"}`)); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a message over the new max_message_bytes: %v", err)
	}
	c.subscribe("demo/now-public", "", nil) // public by the new rules
	n.publish("demo/open", map[string]int{"n": 2})
	if f := c.expect(typeMessage); f.Channel != "demo/open" {
		t.Errorf("the subscriber after the reconfigure: %+v", f)
	}
	// The history goes on: a subscriber from the first message's position
	// recovers the second.
	c2 := n.mustDial()
	c2.subscribe("demo/open", "", &first)
	if f := c2.expect(typeMessage); !strings.Contains(string(f.Data), `"n":2`) {
		t.Errorf("recovered after the reconfigure: %s", f.Data)
	}

	o2 := testOptions() // acme removed again
	commit, err = n.ps.Reconfigure(o2)
	if err != nil {
		t.Fatal(err)
	}
	commit()
	if _, err := n.ps.Publish("acme/x", json.RawMessage(`{}`)); !errors.Is(err, ErrUnknownTenant) {
		t.Errorf("publish to the removed tenant: %v", err)
	}

	bad := testOptions()
	bad.Tenants = append(bad.Tenants, bad.Tenants[0]) // duplicate name
	if _, err := n.ps.Reconfigure(bad); err == nil {
		t.Error("duplicate tenants taken")
	}
}

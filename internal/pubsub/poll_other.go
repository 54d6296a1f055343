//go:build !linux

package pubsub

import "errors"

// poller is Linux-only; elsewhere every websocket has a reader goroutine.
type poller struct{}

func newPoller(*PubSub) (*poller, error) { return nil, errors.New("no epoll on this system") }
func (*poller) add(*conn) bool           { return false }
func (*poller) rearm(*conn) bool         { return false }
func (*poller) run()                     {}
func (*poller) wake()                    {}
func (*poller) close()                   {}

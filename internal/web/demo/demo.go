// Package demo is a tiny comment app built into the node to show the
// product working end to end: an embeddable widget (widget.js) and a page
// (/demo/) that show a comment thread, post comments and vote.
//
// The app is an ordinary client of the node, as a real app server would be:
// it stores comments through the node's Mongo proxy with the official driver
// (`$set` for a comment's fields, `$inc` of a per-node counter for a vote,
// both of which the proxy replicates to every node), and announces each
// change on the pubsub channel "{tenant}/comments-{thread}" through the
// function it is given (the admin listener's /v1/publish, or the node's
// pubsub directly). Browsers subscribe to that channel with edgenode.js,
// the client library every node serves at /sdk/v1/edgenode.js (websocket,
// SSE where websockets are blocked, reconnect and resume), so a comment
// posted on one node appears on every other node's page at once, before
// replication has even copied it.
//
// Votes are a grow-only counter per node: a comment's votes are
// {"node1": 3, "node2": 1} and its count is the sum. Each node increments
// only its own entry and announces that entry's new value, so a browser
// merges announcements and reloads by taking the larger value per node:
// duplicates, reordering and a reload racing an announcement all give the
// same total, and after replication every node stores the same counters.
//
// It is off by default and not meant for production: anyone who can reach
// the node can post.
//
// # HTTP API (public listener)
//
//	GET  /demo/                                   the demo page (?thread=welcome)
//	GET  /demo/widget.js                          the embeddable script
//	GET  /demo/api/threads/{thread}               {"thread","channel","node","token"?,"comments":[...]}
//	POST /demo/api/threads/{thread}/comments      {"name","text"} -> 201 {"comment":{...}}
//	POST /demo/api/threads/{thread}/comments/{id}/vote           -> 200 {"id","node","count","votes"}
//
// A comment is {"id","thread","name","text","at" (unix ms),"node" (where it
// was posted),"votes":{node: count}}. Announcements on the channel are
// {"kind":"comment","comment":{...}} and {"kind":"vote","id","node","count"}.
//
// # Embedding
//
//	<div data-edgenode-thread="welcome"></div>
//	<script src="https://NODE/demo/widget.js" async></script>
//
// The widget talks to the node that served the script. The API answers any
// origin (CORS), and so does edgenode.js; pubsub's /ws and /sse check the
// tenant's origin list, so the widget is live on other sites too.
package demo

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/edgenode/edgenode/internal/pubsub"
)

//go:embed assets
var assets embed.FS

// Options configure the demo app.
type Options struct {
	// NodeID is this node's id: the key of its vote counters and the
	// "node" of the comments posted here.
	NodeID string
	// MongoURI is the node's Mongo proxy, e.g. "mongodb://127.0.0.1:27018/".
	MongoURI string
	// Database and Collection hold the comments. Defaults "edgenode_demo"
	// and "comments". They must be replicated (mongo.replicate).
	Database   string
	Collection string
	// Tenant is the pubsub tenant of the demo's channels. Default "demo".
	// Its threads "comments-*" must be public, or TokenSecret set.
	Tenant string
	// TokenSecret, when set, is the tenant's HS256 secret: each thread's
	// state then carries a subscribe token for its channel.
	TokenSecret []byte
	// Publish sends data (JSON) to the channel's subscribers on every node.
	Publish func(ctx context.Context, channel string, data []byte) error
	// Timeout bounds each request's database work and publish. Default 10s.
	Timeout time.Duration
	// MaxComments is how many of a thread's newest comments are loaded.
	// Default 200.
	MaxComments int
}

// Defaults of Options.
const (
	DefaultDatabase    = "edgenode_demo"
	DefaultCollection  = "comments"
	DefaultTenant      = "demo"
	DefaultTimeout     = 10 * time.Second
	DefaultMaxComments = 200
	// ChannelPrefix starts the thread part of every demo channel.
	ChannelPrefix = "comments-"
)

// Limits on what a browser sends.
const (
	maxBodyBytes = 4 << 10
	maxTextRunes = 1000
	maxNameRunes = 40
)

var (
	threadRe = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)
	idRe     = regexp.MustCompile(`^c[0-9a-z]{9}[0-9a-f]{12}$`)
	tenantRe = regexp.MustCompile(`^[a-z0-9-]{1,32}$`)
)

// App is the demo app of one node.
type App struct {
	opts   Options
	log    *slog.Logger
	client *mongo.Client
	coll   *mongo.Collection

	writes  *prometheus.CounterVec
	seconds *prometheus.HistogramVec

	page     *template.Template
	widget   []byte
	widgetET string
}

// New builds the app. The Mongo client connects lazily; Start checks it.
func New(opts Options, log *slog.Logger, reg prometheus.Registerer) (*App, error) {
	if opts.NodeID == "" {
		return nil, errors.New("demo: no node id")
	}
	if opts.MongoURI == "" {
		return nil, errors.New("demo: no Mongo URI (the demo needs the Mongo proxy)")
	}
	if opts.Publish == nil {
		return nil, errors.New("demo: no publish function (the demo needs pubsub)")
	}
	if opts.Database == "" {
		opts.Database = DefaultDatabase
	}
	if opts.Collection == "" {
		opts.Collection = DefaultCollection
	}
	if opts.Tenant == "" {
		opts.Tenant = DefaultTenant
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.MaxComments <= 0 {
		opts.MaxComments = DefaultMaxComments
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if !tenantRe.MatchString(opts.Tenant) {
		return nil, fmt.Errorf("demo: tenant %q: want 1-32 of a-z, 0-9 and '-' (a pubsub tenant)", opts.Tenant)
	}
	client, err := mongo.Connect(options.Client().ApplyURI(opts.MongoURI).SetAppName("edgenode-demo").SetTimeout(opts.Timeout))
	if err != nil {
		return nil, fmt.Errorf("demo: mongo client: %w", err)
	}
	a := &App{
		opts:   opts,
		log:    log,
		client: client,
		coll:   client.Database(opts.Database).Collection(opts.Collection),
		writes: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "edgenode_demo_writes_total",
			Help: "Demo app writes (comment, vote) by result."}, []string{"kind", "result"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "edgenode_demo_write_seconds",
			Help:    "Demo app write through the Mongo proxy plus the publish, by kind.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}, []string{"kind"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{a.writes, a.seconds} {
			if err := reg.Register(c); err != nil {
				_ = client.Disconnect(context.Background())
				return nil, fmt.Errorf("demo: metrics: %w", err)
			}
		}
	}
	a.page = template.Must(template.ParseFS(assets, "assets/demo.html"))
	a.widget, err = assets.ReadFile("assets/widget.js")
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(a.widget)
	a.widgetET = `"` + hex.EncodeToString(sum[:8]) + `"`
	return a, nil
}

// Start checks that the Mongo proxy answers.
func (a *App) Start(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, a.opts.Timeout)
	defer cancel()
	if err := a.client.Ping(ctx, nil); err != nil {
		return fmt.Errorf("demo: mongo proxy %s: %w", a.opts.MongoURI, err)
	}
	return nil
}

// Stop closes the Mongo client.
func (a *App) Stop(ctx context.Context) error {
	if err := a.client.Disconnect(ctx); err != nil {
		return fmt.Errorf("demo: mongo disconnect: %w", err)
	}
	return nil
}

// Routes are the public listener's routes.
func (a *App) Routes() map[string]http.Handler {
	return map[string]http.Handler{
		"GET /demo/{$}":                                      http.HandlerFunc(a.servePage),
		"GET /demo/widget.js":                                http.HandlerFunc(a.serveWidget),
		"GET /demo/api/threads/{thread}":                     a.api(a.serveThread),
		"POST /demo/api/threads/{thread}/comments":           a.api(a.servePost),
		"POST /demo/api/threads/{thread}/comments/{id}/vote": a.api(a.serveVote),
		"OPTIONS /demo/api/": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			cors(w)
			w.Header().Set("Access-Control-Allow-Methods", "GET, POST")
			w.Header().Set("Access-Control-Allow-Headers", "Content-Type")
			w.Header().Set("Access-Control-Max-Age", "600")
			w.WriteHeader(http.StatusNoContent)
		}),
	}
}

func cors(w http.ResponseWriter) { w.Header().Set("Access-Control-Allow-Origin", "*") }

func (a *App) servePage(w http.ResponseWriter, r *http.Request) {
	thread := r.URL.Query().Get("thread")
	if thread == "" {
		thread = "welcome"
	}
	if !threadRe.MatchString(thread) {
		http.Error(w, "thread: 1-64 of a-z, 0-9 and '-'", http.StatusBadRequest)
		return
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_ = a.page.Execute(w, struct{ Node, Thread, Host string }{a.opts.NodeID, thread, r.Host})
}

func (a *App) serveWidget(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/javascript; charset=utf-8")
	h.Set("Cache-Control", "no-cache")
	h.Set("ETag", a.widgetET)
	cors(w)
	if r.Header.Get("If-None-Match") == a.widgetET {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	_, _ = w.Write(a.widget)
}

// apiError is an answer the browser is meant to show.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, args ...any) error {
	return &apiError{http.StatusBadRequest, fmt.Sprintf(format, args...)}
}

// api wraps a JSON handler: thread check, CORS, time limit, errors as JSON.
func (a *App) api(h func(ctx context.Context, r *http.Request, thread string) (int, any, error)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		cors(w)
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Type", "application/json")
		thread := r.PathValue("thread")
		var status int
		var body any
		var err error
		if !threadRe.MatchString(thread) {
			err = badRequest("thread: 1-64 of a-z, 0-9 and '-'")
		} else {
			ctx, cancel := context.WithTimeout(r.Context(), a.opts.Timeout)
			status, body, err = h(ctx, r, thread)
			cancel()
		}
		if err != nil {
			var ae *apiError
			if errors.As(err, &ae) {
				status = ae.status
			} else {
				status = http.StatusServiceUnavailable
				a.log.Warn("demo: request failed", "path", r.URL.Path, "err", err)
			}
			body = map[string]string{"error": err.Error()}
		}
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(body)
	})
}

// comment is a stored comment as the browser sees it.
type comment struct {
	ID     string           `json:"id" bson:"_id"`
	Thread string           `json:"thread" bson:"thread"`
	Name   string           `json:"name" bson:"name"`
	Text   string           `json:"text" bson:"text"`
	At     int64            `json:"at" bson:"at"`
	Node   string           `json:"node" bson:"node"`
	Votes  map[string]int64 `json:"votes" bson:"votes,omitempty"`
}

func (a *App) channel(thread string) string {
	return a.opts.Tenant + "/" + ChannelPrefix + thread
}

type threadState struct {
	Thread   string    `json:"thread"`
	Channel  string    `json:"channel"`
	Node     string    `json:"node"`
	Token    string    `json:"token,omitempty"`
	Comments []comment `json:"comments"`
}

func (a *App) serveThread(ctx context.Context, r *http.Request, thread string) (int, any, error) {
	st := threadState{Thread: thread, Channel: a.channel(thread), Node: a.opts.NodeID, Comments: []comment{}}
	if a.opts.TokenSecret != nil {
		tok, err := pubsub.SignHS256(pubsub.TokenClaims{Tenant: a.opts.Tenant, Channel: st.Channel,
			Exp: time.Now().Add(time.Hour).Unix()}, a.opts.TokenSecret)
		if err != nil {
			return 0, nil, fmt.Errorf("sign token: %w", err)
		}
		st.Token = tok
	}
	// The newest MaxComments, shown oldest first.
	cur, err := a.coll.Find(ctx, bson.D{{Key: "thread", Value: thread}},
		options.Find().SetSort(bson.D{{Key: "at", Value: -1}, {Key: "_id", Value: -1}}).SetLimit(int64(a.opts.MaxComments)))
	if err != nil {
		return 0, nil, fmt.Errorf("find comments: %w", err)
	}
	if err := cur.All(ctx, &st.Comments); err != nil {
		return 0, nil, fmt.Errorf("read comments: %w", err)
	}
	for i, j := 0, len(st.Comments)-1; i < j; i, j = i+1, j-1 {
		st.Comments[i], st.Comments[j] = st.Comments[j], st.Comments[i]
	}
	for i := range st.Comments {
		if st.Comments[i].Votes == nil {
			st.Comments[i].Votes = map[string]int64{}
		}
	}
	return http.StatusOK, st, nil
}

func readJSON(r *http.Request, v any) error {
	b, err := io.ReadAll(io.LimitReader(r.Body, maxBodyBytes+1))
	if err != nil {
		return badRequest("read body: %v", err)
	}
	if len(b) > maxBodyBytes {
		return &apiError{http.StatusRequestEntityTooLarge, "body over 4 KiB"}
	}
	if len(b) == 0 {
		return nil
	}
	if err := json.Unmarshal(b, v); err != nil {
		return badRequest("body is not the expected JSON: %v", err)
	}
	return nil
}

// cleanText trims s and checks it is 1..max characters of printable text
// (newlines and tabs allowed).
func cleanText(s string, max int, what string) (string, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return "", badRequest("%s is empty", what)
	}
	if !utf8.ValidString(s) {
		return "", badRequest("%s is not UTF-8", what)
	}
	if n := utf8.RuneCountInString(s); n > max {
		return "", badRequest("%s is %d characters; at most %d", what, n, max)
	}
	for _, c := range s {
		if c < 0x20 && c != '\n' && c != '\t' || c == 0x7f {
			return "", badRequest("%s has control characters", what)
		}
	}
	return s, nil
}

// newID is time-ordered: "c", the time in milliseconds in base 36 (9
// digits, good until 5188), then 48 random bits in hex.
func newID(now time.Time) string {
	var rnd [6]byte
	_, _ = rand.Read(rnd[:])
	ts := strconv.FormatInt(now.UnixMilli(), 36)
	return "c" + strings.Repeat("0", max(0, 9-len(ts))) + ts + hex.EncodeToString(rnd[:])
}

func (a *App) servePost(ctx context.Context, r *http.Request, thread string) (int, any, error) {
	start := time.Now()
	var in struct{ Name, Text string }
	if err := readJSON(r, &in); err != nil {
		return 0, nil, err
	}
	text, err := cleanText(in.Text, maxTextRunes, "text")
	if err != nil {
		return 0, nil, err
	}
	name := "anonymous"
	if strings.TrimSpace(in.Name) != "" {
		if name, err = cleanText(in.Name, maxNameRunes, "name"); err != nil {
			return 0, nil, err
		}
	}
	c := comment{ID: newID(start), Thread: thread, Name: name, Text: text, At: start.UnixMilli(), Node: a.opts.NodeID, Votes: map[string]int64{}}
	// $set, not an insert: the proxy replicates it as last-writer-wins per
	// field, and a vote that reached a node first (an upsert of the
	// counter) merges with it instead of conflicting.
	_, err = a.coll.UpdateOne(ctx, bson.D{{Key: "_id", Value: c.ID}}, bson.D{{Key: "$set", Value: bson.D{
		{Key: "thread", Value: c.Thread}, {Key: "name", Value: c.Name}, {Key: "text", Value: c.Text},
		{Key: "at", Value: c.At}, {Key: "node", Value: c.Node},
	}}}, options.UpdateOne().SetUpsert(true))
	if err != nil {
		a.writes.WithLabelValues("comment", "db_error").Inc()
		return 0, nil, fmt.Errorf("store comment: %w", err)
	}
	msg, _ := json.Marshal(struct {
		Kind    string  `json:"kind"`
		Comment comment `json:"comment"`
	}{"comment", c})
	// The comment is saved: a failed announcement only delays others
	// seeing it until they reload, so it is logged, not returned.
	if err := a.opts.Publish(ctx, a.channel(thread), msg); err != nil {
		a.writes.WithLabelValues("comment", "publish_error").Inc()
		a.log.Warn("demo: publish comment", "thread", thread, "err", err)
	} else {
		a.writes.WithLabelValues("comment", "ok").Inc()
	}
	a.seconds.WithLabelValues("comment").Observe(time.Since(start).Seconds())
	return http.StatusCreated, map[string]any{"comment": c}, nil
}

type voteReply struct {
	Kind  string           `json:"kind,omitempty"`
	ID    string           `json:"id"`
	Node  string           `json:"node"`
	Count int64            `json:"count"`
	Votes map[string]int64 `json:"votes,omitempty"`
}

func (a *App) serveVote(ctx context.Context, r *http.Request, thread string) (int, any, error) {
	start := time.Now()
	id := r.PathValue("id")
	if !idRe.MatchString(id) {
		return 0, nil, badRequest("comment id %q is not one of ours", id)
	}
	// $inc of this node's own counter; an upsert, so a vote for a comment
	// whose $set has not replicated here yet is kept and merges later.
	var doc struct {
		Votes map[string]int64 `bson:"votes"`
	}
	err := a.coll.FindOneAndUpdate(ctx, bson.D{{Key: "_id", Value: id}},
		bson.D{{Key: "$inc", Value: bson.D{{Key: "votes." + a.opts.NodeID, Value: int64(1)}}}},
		options.FindOneAndUpdate().SetUpsert(true).SetReturnDocument(options.After).SetProjection(bson.D{{Key: "votes", Value: 1}}),
	).Decode(&doc)
	if err != nil {
		a.writes.WithLabelValues("vote", "db_error").Inc()
		return 0, nil, fmt.Errorf("store vote: %w", err)
	}
	v := voteReply{Kind: "vote", ID: id, Node: a.opts.NodeID, Count: doc.Votes[a.opts.NodeID]}
	msg, _ := json.Marshal(v)
	if err := a.opts.Publish(ctx, a.channel(thread), msg); err != nil {
		a.writes.WithLabelValues("vote", "publish_error").Inc()
		a.log.Warn("demo: publish vote", "thread", thread, "err", err)
	} else {
		a.writes.WithLabelValues("vote", "ok").Inc()
	}
	a.seconds.WithLabelValues("vote").Observe(time.Since(start).Seconds())
	v.Kind, v.Votes = "", doc.Votes
	return http.StatusOK, v, nil
}

package replica

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/topology"

	"github.com/edgenode/edgenode/internal/mongoproxy/crdt"
)

// MongoDB error codes the core reports in an *Error.
const (
	CodeInternalError      int32 = 1
	CodeBadValue           int32 = 2
	CodeDuplicateKey       int32 = 11000
	CodeBSONObjectTooLarge int32 = 10334
	// CodeNotWritablePrimary: the write is logged, but the database was
	// between primaries (or unreachable) for longer than StoreRetry. The
	// front-end answers it as MongoDB does, retryably; see Settle.
	CodeNotWritablePrimary int32 = 10107
)

// Error is a write the core refused or could not complete, as the client
// should see it: a MongoDB error code and message.
type Error struct {
	Code int32
	Msg  string
}

func (e *Error) Error() string { return e.Msg }

func errorf(code int32, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// BlockedError is the answer of Admit while writes are blocked (see
// Replication.BlockWrites): captured writes and DDL are refused, Reason
// says why.
type BlockedError struct{ Reason string }

func (e *BlockedError) Error() string { return "replica: writes are blocked: " + e.Reason }

// ClockSkewError reports a peer's clock reading more than MaxClockSkew
// ahead of this node's wall clock. The reading was not folded into this
// node's clock, and nothing carrying it was logged or applied.
type ClockSkewError struct {
	TS    crdt.Timestamp
	Ahead time.Duration // how far TS is ahead of the wall clock
	Max   time.Duration // Config.MaxClockSkew
}

func (e *ClockSkewError) Error() string {
	return fmt.Sprintf("replica: clock reading %s is %v ahead of this node's wall clock (more than mongo.max_clock_skew, %v)", e.TS, e.Ahead.Round(time.Millisecond), e.Max)
}

// errCAS means the stored metadata version changed between read and write.
var errCAS = errors.New("replica: document changed underneath (metadata version mismatch)")

// applyError is a write the database refused for good (a unique index other
// than _id, a document it cannot store): retrying cannot help.
type applyError struct {
	unique bool
	err    error
}

func (e *applyError) Error() string { return e.err.Error() }
func (e *applyError) Unwrap() error { return e.err }

// classify wraps database errors that retrying cannot fix as *applyError.
func classify(err error) error {
	if isDuplicateKey(err) {
		return &applyError{unique: true, err: err}
	}
	if transient(err) {
		return err
	}
	var se mongo.ServerError
	if errors.As(err, &se) {
		return &applyError{err: err}
	}
	return err
}

// stateChangeCodes are the errors MongoDB answers while the member is not
// (or stops being) the primary, or is shutting down: the codes its
// retryable-writes specification calls retryable ("Determining Retryable
// Errors"). A write answered with one did not take effect there (or will
// be rolled back), and goes through once a primary is known again.
var stateChangeCodes = []int{
	6,     // HostUnreachable
	7,     // HostNotFound
	89,    // NetworkTimeout
	91,    // ShutdownInProgress
	134,   // ReadConcernMajorityNotAvailableYet
	189,   // PrimarySteppedDown
	262,   // ExceededTimeLimit
	9001,  // SocketException
	10107, // NotWritablePrimary
	11600, // InterruptedAtShutdown
	11602, // InterruptedDueToReplStateChange
	13435, // NotPrimaryNoSecondaryOk
	13436, // NotPrimaryOrSecondary
}

// transient reports an error that says nothing about the write itself:
// the database was unreachable, slow, between primaries or shutting down
// (any error labelled RetryableWriteError counts), or the caller gave up.
// Sending the same write again later may succeed; it must never be taken
// for a refusal, which would undo a logged op.
func transient(err error) bool {
	if mongo.IsNetworkError(err) || mongo.IsTimeout(err) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	if errors.As(err, &topology.ServerSelectionError{}) {
		return true // no primary selectable (yet)
	}
	var le mongo.LabeledError
	if errors.As(err, &le) && le.HasErrorLabel("RetryableWriteError") {
		return true
	}
	var se mongo.ServerError
	if errors.As(err, &se) {
		for _, c := range stateChangeCodes {
			if se.HasErrorCode(c) {
				return true
			}
		}
	}
	return false
}

// DBError turns a database error into the client's write error, keeping
// its code when it has one.
func DBError(err error) *Error {
	if isDuplicateKey(err) && !mongo.IsDuplicateKeyError(err) {
		return errorf(CodeDuplicateKey, "E11000 duplicate key error (%v)", err)
	}
	var we mongo.WriteException
	if errors.As(err, &we) && len(we.WriteErrors) > 0 {
		return &Error{Code: int32(we.WriteErrors[0].Code), Msg: we.WriteErrors[0].Message}
	}
	var ce mongo.CommandError
	if errors.As(err, &ce) {
		return &Error{Code: ce.Code, Msg: ce.Message}
	}
	if isDuplicateKey(err) {
		return &Error{Code: CodeDuplicateKey, Msg: err.Error()}
	}
	return errorf(CodeInternalError, "edgenode: %v", err)
}

// isDuplicateKey recognizes unique index violations: error 11000 (MongoDB,
// and FerretDB on insert) and FerretDB v1's update path, which reports the
// SQLite constraint as an internal error instead.
func isDuplicateKey(err error) bool {
	return mongo.IsDuplicateKeyError(err) || strings.Contains(err.Error(), "UNIQUE constraint failed")
}

// IsCode reports whether err is a database error with one of codes.
func IsCode(err error, codes ...int32) bool {
	var ce mongo.CommandError
	if errors.As(err, &ce) {
		return slices.Contains(codes, ce.Code)
	}
	var se mongo.ServerError
	if errors.As(err, &se) {
		for _, c := range codes {
			if se.HasErrorCode(int(c)) {
				return true
			}
		}
	}
	return false
}

package mongoproxy

import (
	"fmt"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/x/bsonx/bsoncore"
)

// MongoDB error codes the proxy answers with.
const (
	codeInternalError        int32 = 1
	codeBadValue             int32 = 2
	codeFailedToParse        int32 = 9
	codeTypeMismatch         int32 = 14
	codeInvalidLength        int32 = 16
	codePathNotViable        int32 = 28
	codeConflictingUpdateOps int32 = 40
	codeUnauthorized         int32 = 13
	codeInvalidIDField       int32 = 53
	codeImmutableField       int32 = 66
	codeUnsupportedOpQuery   int32 = 352
	codeDuplicateKey         int32 = 11000
	codeNotWritablePrimary   int32 = 10107
	codeBSONObjectTooLarge   int32 = 10334
)

var codeNames = map[int32]string{
	codeInternalError:        "InternalError",
	codeBadValue:             "BadValue",
	codeFailedToParse:        "FailedToParse",
	codeTypeMismatch:         "TypeMismatch",
	codeInvalidLength:        "InvalidLength",
	codePathNotViable:        "PathNotViable",
	codeConflictingUpdateOps: "ConflictingUpdateOperators",
	codeUnauthorized:         "Unauthorized",
	codeInvalidIDField:       "InvalidIdField",
	codeImmutableField:       "ImmutableField",
	codeUnsupportedOpQuery:   "UnsupportedOpQueryCommand",
	codeDuplicateKey:         "DuplicateKey",
	codeNotWritablePrimary:   "NotWritablePrimary",
	codeBSONObjectTooLarge:   "BSONObjectTooLarge",
}

// mongoError is an error the client sees as a MongoDB error (code + message).
type mongoError struct {
	Code int32
	Msg  string
	// retryable: the database was between primaries. The command is
	// answered with this error as a whole, labelled RetryableWriteError,
	// as MongoDB answers a write interrupted by a stepdown.
	retryable bool
}

func (e *mongoError) Error() string { return e.Msg }

func errorf(code int32, format string, args ...any) *mongoError {
	return &mongoError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// localOnlyHint ends every refusal: the escape hatch for operators that do not converge.
const localOnlyHint = "; to use it, mark the collection local-only in the config (mongo.local_only)"

// refuse is the error for an operator or feature that cannot be replicated.
func refuse(ns, what string) *mongoError {
	return errorf(codeBadValue, "edgenode: %s is not supported on the replicated collection %s (only operations that converge across nodes are accepted: $set, $unset, $inc, $min, $max, $addToSet, $setOnInsert, $currentDate, inserts and deletes)%s", what, ns, localOnlyHint)
}

// writeError is one entry of a write command's writeErrors.
type writeError struct {
	Index int
	Err   *mongoError
}

// errorReply encodes a command failure: {ok: 0, errmsg, code, codeName}.
func errorReply(e *mongoError) []byte {
	idx, b := bsoncore.AppendDocumentStart(nil)
	b = bsoncore.AppendDoubleElement(b, "ok", 0)
	b = bsoncore.AppendStringElement(b, "errmsg", e.Msg)
	b = bsoncore.AppendInt32Element(b, "code", e.Code)
	if n, ok := codeNames[e.Code]; ok {
		b = bsoncore.AppendStringElement(b, "codeName", n)
	}
	if e.retryable {
		b = bsoncore.AppendArrayElement(b, "errorLabels", bsoncore.BuildArray(nil, bsoncore.Value{Type: bsoncore.TypeString, Data: bsoncore.AppendString(nil, labelRetryableWrite)}))
	}
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b
}

// upserted is one entry of an update reply's upserted array.
type upserted struct {
	Index int
	ID    bson.RawValue
}

// writeResult accumulates what a write command reports.
type writeResult struct {
	N         int
	NModified int
	Upserted  []upserted
	Errors    []writeError
	isUpdate  bool
}

// reply encodes {n, nModified (updates), upserted, writeErrors, ok: 1}.
func (r *writeResult) reply() []byte {
	for _, we := range r.Errors {
		if we.Err.retryable {
			// Drivers retry on a command's error and its labels, never on
			// writeErrors: the whole command fails, retryably. Its
			// statements that were done are recorded, so a retry
			// answers them from their records.
			return errorReply(we.Err)
		}
	}
	idx, b := bsoncore.AppendDocumentStart(nil)
	b = bsoncore.AppendInt32Element(b, "n", int32(r.N))
	if r.isUpdate {
		b = bsoncore.AppendInt32Element(b, "nModified", int32(r.NModified))
	}
	if len(r.Upserted) > 0 {
		var ai int32
		ai, b = bsoncore.AppendArrayElementStart(b, "upserted")
		for i, u := range r.Upserted {
			var di int32
			di, b = bsoncore.AppendDocumentElementStart(b, fmt.Sprint(i))
			b = bsoncore.AppendInt32Element(b, "index", int32(u.Index))
			b = bsoncore.AppendValueElement(b, "_id", bsoncore.Value{Type: bsoncore.Type(u.ID.Type), Data: u.ID.Value})
			b, _ = bsoncore.AppendDocumentEnd(b, di)
		}
		b, _ = bsoncore.AppendArrayEnd(b, ai)
	}
	if len(r.Errors) > 0 {
		var ai int32
		ai, b = bsoncore.AppendArrayElementStart(b, "writeErrors")
		for i, we := range r.Errors {
			var di int32
			di, b = bsoncore.AppendDocumentElementStart(b, fmt.Sprint(i))
			b = bsoncore.AppendInt32Element(b, "index", int32(we.Index))
			b = bsoncore.AppendInt32Element(b, "code", we.Err.Code)
			if n, ok := codeNames[we.Err.Code]; ok {
				b = bsoncore.AppendStringElement(b, "codeName", n)
			}
			b = bsoncore.AppendStringElement(b, "errmsg", we.Err.Msg)
			b, _ = bsoncore.AppendDocumentEnd(b, di)
		}
		b, _ = bsoncore.AppendArrayEnd(b, ai)
	}
	b = bsoncore.AppendDoubleElement(b, "ok", 1)
	b, _ = bsoncore.AppendDocumentEnd(b, idx)
	return b
}

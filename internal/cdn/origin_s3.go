package cdn

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// S3Options configure an S3 origin (AWS or any S3-compatible server).
type S3Options struct {
	// Bucket holds the keys that no entry of Buckets claims; with
	// KeyPrefix prepended. Empty: such keys are not found.
	Bucket    string
	KeyPrefix string
	// Buckets maps a key's first segment (the tenant) to a bucket: the key
	// "acme/img/a.png" with Buckets{"acme": "acme-media"} is the object
	// "img/a.png" in bucket "acme-media".
	Buckets map[string]string

	Region    string // default "us-east-1"
	Endpoint  string // e.g. "http://127.0.0.1:7070"; empty: AWS's
	PathStyle bool   // path-style addressing (most S3-compatible servers)

	// Static credentials when AccessKeyID is set; otherwise the SDK's
	// standard chain (environment, shared files, Profile, instance role).
	AccessKeyID, SecretAccessKey, SessionToken string
	Profile                                    string   // shared-config profile
	CredentialsFiles                           []string // shared credentials files

	// MaxAttempts per GET including retries; default 2. The cache has its
	// own answer to failures (stale-if-error), so few retries are enough.
	MaxAttempts int
	// NoMD5Check turns off the check of single-part ETags as MD5 digests;
	// needed for buckets with SSE-KMS or SSE-C, whose ETags are not MD5s.
	NoMD5Check bool
	// HTTPClient overrides the SDK's HTTP client (tests count requests).
	HTTPClient *http.Client
}

// S3Origin fetches objects with aws-sdk-go-v2.
type S3Origin struct {
	opts   S3Options
	client *s3.Client
}

// NewS3Origin builds the client; it does not contact S3 (credentials are
// resolved on the first request).
func NewS3Origin(ctx context.Context, opts S3Options) (*S3Origin, error) {
	if opts.Bucket == "" && len(opts.Buckets) == 0 {
		return nil, errors.New("cdn: s3 origin: Bucket or Buckets is required")
	}
	if opts.Region == "" {
		opts.Region = "us-east-1"
	}
	if opts.MaxAttempts <= 0 {
		opts.MaxAttempts = 2
	}
	lo := []func(*config.LoadOptions) error{
		config.WithRegion(opts.Region),
		config.WithRetryMaxAttempts(opts.MaxAttempts),
		// The cache verifies length and MD5 itself; flexible checksums
		// would add headers some S3-compatible servers reject.
		config.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		config.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if opts.AccessKeyID != "" {
		lo = append(lo, config.WithCredentialsProvider(
			credentials.NewStaticCredentialsProvider(opts.AccessKeyID, opts.SecretAccessKey, opts.SessionToken)))
	}
	if opts.Profile != "" {
		lo = append(lo, config.WithSharedConfigProfile(opts.Profile))
	}
	if len(opts.CredentialsFiles) > 0 {
		lo = append(lo, config.WithSharedCredentialsFiles(opts.CredentialsFiles))
	}
	cfg, err := config.LoadDefaultConfig(ctx, lo...)
	if err != nil {
		return nil, fmt.Errorf("cdn: s3 origin: load config: %w", err)
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		o.UsePathStyle = opts.PathStyle
		// Set here rather than through LoadDefaultConfig, which refuses a
		// plain *http.Client when AWS_CA_BUNDLE is in the environment.
		if opts.HTTPClient != nil {
			o.HTTPClient = opts.HTTPClient
		}
		if opts.Endpoint != "" {
			o.BaseEndpoint = aws.String(opts.Endpoint)
		}
	})
	return &S3Origin{opts: opts, client: client}, nil
}

// Name implements Origin.
func (o *S3Origin) Name() string { return "s3" }

// Client is the underlying S3 client (tests and tools put objects with it).
func (o *S3Origin) Client() *s3.Client { return o.client }

// locate maps a cache key to a bucket and object key.
func (o *S3Origin) locate(key string) (bucket, objKey string, ok bool) {
	if t, rest := tenantOf(key); t != "" {
		if b, found := o.opts.Buckets[t]; found {
			return b, rest, true
		}
	}
	if o.opts.Bucket == "" {
		return "", "", false
	}
	return o.opts.Bucket, o.opts.KeyPrefix + key, true
}

// Fetch implements Origin.
func (o *S3Origin) Fetch(ctx context.Context, req OriginRequest) (*Object, error) {
	bucket, objKey, ok := o.locate(req.Key)
	if !ok {
		return nil, ErrNotFound
	}
	in := &s3.GetObjectInput{Bucket: &bucket, Key: &objKey}
	if req.IfNoneMatch != "" {
		in.IfNoneMatch = aws.String(req.IfNoneMatch)
	} else if !req.IfModifiedSince.IsZero() {
		in.IfModifiedSince = aws.Time(req.IfModifiedSince)
	}
	if req.IfMatch != "" {
		in.IfMatch = aws.String(req.IfMatch)
	}
	if req.Offset > 0 || req.Length > 0 {
		r := "bytes=" + strconv.FormatInt(req.Offset, 10) + "-"
		if req.Length > 0 {
			r += strconv.FormatInt(req.Offset+req.Length-1, 10)
		}
		in.Range = aws.String(r)
	}
	out, err := o.client.GetObject(ctx, in)
	if err != nil {
		return nil, o.mapError(bucket, objKey, err)
	}
	obj := &Object{Body: out.Body, Size: -1, Offset: 0, ContentType: aws.ToString(out.ContentType), ETag: aws.ToString(out.ETag)}
	if out.LastModified != nil {
		obj.LastModified = *out.LastModified
	}
	if cr := aws.ToString(out.ContentRange); cr != "" {
		start, total, ok := parseContentRange(cr)
		if !ok {
			out.Body.Close()
			return nil, fmt.Errorf("cdn: s3 origin: bad Content-Range %q for %s/%s", cr, bucket, objKey)
		}
		obj.Offset, obj.Size = start, total
	} else if out.ContentLength != nil {
		// The whole object (also when a range was asked for and the
		// server ignored it: Offset 0 tells the caller to skip).
		obj.Size = *out.ContentLength
	}
	if !o.opts.NoMD5Check {
		obj.MD5 = md5FromETag(obj.ETag)
	}
	return obj, nil
}

func (o *S3Origin) mapError(bucket, objKey string, err error) error {
	var nsk *types.NoSuchKey
	if errors.As(err, &nsk) {
		return ErrNotFound
	}
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		switch re.HTTPStatusCode() {
		case http.StatusNotModified:
			return ErrNotModified
		case http.StatusNotFound:
			return ErrNotFound
		case http.StatusPreconditionFailed:
			return ErrChanged
		case http.StatusRequestedRangeNotSatisfiable:
			return ErrRange
		}
	}
	return fmt.Errorf("cdn: s3 origin: get %s/%s: %w", bucket, objKey, err)
}

// md5FromETag returns the MD5 an ETag stands for when it is a single-part
// upload's (32 hex digits); multipart ETags ("…-N") and weak ones say
// nothing about the bytes.
func md5FromETag(etag string) []byte {
	t := strings.Trim(etag, `"`)
	if len(t) != 32 || strings.HasPrefix(etag, "W/") {
		return nil
	}
	b, err := hex.DecodeString(t)
	if err != nil {
		return nil
	}
	return b
}

// parseContentRange reads "bytes START-END/TOTAL".
func parseContentRange(s string) (start, total int64, ok bool) {
	s, found := strings.CutPrefix(s, "bytes ")
	if !found {
		return 0, 0, false
	}
	rng, tot, found := strings.Cut(s, "/")
	if !found {
		return 0, 0, false
	}
	a, _, found := strings.Cut(rng, "-")
	if !found {
		return 0, 0, false
	}
	start, err1 := strconv.ParseInt(a, 10, 64)
	total, err2 := strconv.ParseInt(tot, 10, 64)
	if err1 != nil || err2 != nil || start < 0 || total < 0 || start > total {
		return 0, 0, false
	}
	return start, total, true
}

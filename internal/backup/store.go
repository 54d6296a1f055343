package backup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/edgenode/edgenode/internal/atomicfile"
)

// Store is where backups are kept: a folder or an S3 prefix. Names are
// slash-separated: "<backup id>/<file>", or "<file>" when the location is
// one backup itself.
type Store interface {
	// Put stores data under name, whole or not at all.
	Put(ctx context.Context, name string, data []byte) error
	// Get returns name's contents; a missing name is fs.ErrNotExist.
	Get(ctx context.Context, name string) ([]byte, error)
	// Backups lists the ids of the backups with a manifest, sorted.
	Backups(ctx context.Context) ([]string, error)
	// String is the location, for messages.
	String() string
}

// S3Options reach an S3 (or S3-compatible) service. Empty credentials use
// the SDK's standard chain (AWS_ACCESS_KEY_ID, ~/.aws, instance roles).
type S3Options struct {
	Endpoint        string // e.g. http://127.0.0.1:7070; empty: AWS
	Region          string // default us-east-1
	PathStyle       bool
	AccessKeyID     string
	SecretAccessKey string
	HTTPClient      *http.Client // nil: the SDK's
}

// Open returns the store at loc: s3://BUCKET[/PREFIX] or a folder.
func Open(ctx context.Context, loc string, o S3Options) (Store, error) {
	rest, ok := strings.CutPrefix(loc, "s3://")
	if !ok {
		if loc == "" {
			return nil, errors.New("backup: no location (a folder or s3://BUCKET/PREFIX)")
		}
		return &DirStore{Root: loc}, nil
	}
	bucket, prefix, _ := strings.Cut(rest, "/")
	if bucket == "" {
		return nil, fmt.Errorf("backup: %q names no bucket (s3://BUCKET/PREFIX)", loc)
	}
	if o.Region == "" {
		o.Region = "us-east-1"
	}
	lo := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithRegion(o.Region),
		// Every part carries its own SHA-256 in the manifest; flexible
		// checksums would add headers some S3-compatible servers reject.
		awsconfig.WithRequestChecksumCalculation(aws.RequestChecksumCalculationWhenRequired),
		awsconfig.WithResponseChecksumValidation(aws.ResponseChecksumValidationWhenRequired),
	}
	if o.AccessKeyID != "" {
		lo = append(lo, awsconfig.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(o.AccessKeyID, o.SecretAccessKey, "")))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, lo...)
	if err != nil {
		return nil, fmt.Errorf("backup: s3: %w", err)
	}
	client := s3.NewFromConfig(cfg, func(so *s3.Options) {
		so.UsePathStyle = o.PathStyle
		if o.HTTPClient != nil {
			so.HTTPClient = o.HTTPClient
		}
		if o.Endpoint != "" {
			so.BaseEndpoint = aws.String(o.Endpoint)
		}
	})
	return &S3Store{Client: client, Bucket: bucket, Prefix: strings.Trim(prefix, "/")}, nil
}

// DirStore keeps backups in a folder, one subfolder per backup.
type DirStore struct{ Root string }

func (d *DirStore) String() string { return d.Root }

func (d *DirStore) path(name string) string { return filepath.Join(d.Root, filepath.FromSlash(name)) }

// Put writes the file atomically (temporary name, fsync, rename).
func (d *DirStore) Put(_ context.Context, name string, data []byte) error {
	p := d.path(name)
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	if err := atomicfile.Write(p, data, 0o640); err != nil {
		return fmt.Errorf("backup: %w", err)
	}
	return nil
}

func (d *DirStore) Get(_ context.Context, name string) ([]byte, error) {
	b, err := os.ReadFile(d.path(name))
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	return b, nil
}

func (d *DirStore) Backups(context.Context) ([]string, error) {
	ents, err := os.ReadDir(d.Root)
	if err != nil {
		return nil, fmt.Errorf("backup: %w", err)
	}
	var ids []string
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if _, err := os.Stat(filepath.Join(d.Root, e.Name(), ManifestName)); err == nil {
			ids = append(ids, e.Name())
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// S3Store keeps backups under a prefix of a bucket, one "folder" per
// backup.
type S3Store struct {
	Client *s3.Client
	Bucket string
	Prefix string // without leading or trailing slash; may be empty
}

func (s *S3Store) String() string { return "s3://" + path.Join(s.Bucket, s.Prefix) }

func (s *S3Store) key(name string) string {
	if s.Prefix == "" {
		return name
	}
	return s.Prefix + "/" + name
}

func (s *S3Store) Put(ctx context.Context, name string, data []byte) error {
	_, err := s.Client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        aws.String(s.Bucket),
		Key:           aws.String(s.key(name)),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
	})
	if err != nil {
		return fmt.Errorf("backup: put %s/%s: %w", s, name, err)
	}
	return nil
}

func (s *S3Store) Get(ctx context.Context, name string) ([]byte, error) {
	out, err := s.Client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(s.key(name))})
	if err != nil {
		var nk *s3types.NoSuchKey
		if errors.As(err, &nk) {
			return nil, fmt.Errorf("backup: %s/%s: %w", s, name, fs.ErrNotExist)
		}
		return nil, fmt.Errorf("backup: get %s/%s: %w", s, name, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(out.Body)
	if err != nil {
		return nil, fmt.Errorf("backup: get %s/%s: %w", s, name, err)
	}
	return b, nil
}

func (s *S3Store) Backups(ctx context.Context) ([]string, error) {
	prefix := ""
	if s.Prefix != "" {
		prefix = s.Prefix + "/"
	}
	var ids []string
	p := s3.NewListObjectsV2Paginator(s.Client, &s3.ListObjectsV2Input{Bucket: aws.String(s.Bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("backup: list %s: %w", s, err)
		}
		for _, o := range page.Contents {
			rest := strings.TrimPrefix(aws.ToString(o.Key), prefix)
			if id, f, ok := strings.Cut(rest, "/"); ok && f == ManifestName {
				ids = append(ids, id)
			}
		}
	}
	slices.Sort(ids)
	return ids, nil
}

// List returns the names under prefix (slash-separated, relative to the
// store), sorted. The op-log archive (package archive) lists its segments
// with it.
func (d *DirStore) List(_ context.Context, prefix string) ([]string, error) {
	var names []string
	root := d.path(prefix)
	err := filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			return err
		}
		if e.IsDir() || strings.HasPrefix(e.Name(), ".") {
			return nil // atomicfile's temporaries are hidden files
		}
		rel, err := filepath.Rel(d.Root, p)
		if err != nil {
			return err
		}
		names = append(names, filepath.ToSlash(rel))
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("backup: list %s: %w", root, err)
	}
	slices.Sort(names)
	return names, nil
}

// Delete removes name; a missing name is not an error.
func (d *DirStore) Delete(_ context.Context, name string) error {
	if err := os.Remove(d.path(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("backup: %w", err)
	}
	return nil
}

// List returns the names under prefix (relative to the store's prefix),
// sorted.
func (s *S3Store) List(ctx context.Context, prefix string) ([]string, error) {
	base := ""
	if s.Prefix != "" {
		base = s.Prefix + "/"
	}
	var names []string
	p := s3.NewListObjectsV2Paginator(s.Client, &s3.ListObjectsV2Input{Bucket: aws.String(s.Bucket), Prefix: aws.String(base + prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("backup: list %s/%s: %w", s, prefix, err)
		}
		for _, o := range page.Contents {
			names = append(names, strings.TrimPrefix(aws.ToString(o.Key), base))
		}
	}
	slices.Sort(names)
	return names, nil
}

// Delete removes name.
func (s *S3Store) Delete(ctx context.Context, name string) error {
	if _, err := s.Client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.Bucket), Key: aws.String(s.key(name))}); err != nil {
		return fmt.Errorf("backup: delete %s/%s: %w", s, name, err)
	}
	return nil
}

// Package gominio exists only so this module can pin github.com/minio/minio; the build is
// `go build -o <cache>/minio github.com/minio/minio` run from this folder (see ../minio.ts).
package gominio

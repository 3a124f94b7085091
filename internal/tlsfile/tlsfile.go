// Package tlsfile reads the PEM files a TLS configuration names: a
// certificate chain with its private key, and a bundle of CA
// certificates. config uses it to check the files at validation time
// (`proxy -check`, reload) and proxy to load them, so that both judge a
// file by the same rules and report it in the same words.
//
// It sits beside the request path, never on it: files are read when a
// listener or upstream is built and when a certificate is reloaded, never
// per request.
package tlsfile

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// MaxFileBytes bounds what one file may hold. Real chains and bundles are
// a few KiB (the Mozilla root bundle is about 250 KiB); the cap keeps a
// wrong path (a log, a device) from being read into memory whole.
const MaxFileBytes = 4 << 20

// Which file of a key pair was at fault.
const (
	FieldCert = "cert_file"
	FieldKey  = "key_file"
)

// Error is a problem with one file of a TLS configuration.
type Error struct {
	Field string // FieldCert, FieldKey, or the CA field of the caller
	File  string
	Err   error
}

func (e *Error) Error() string { return e.File + ": " + e.Err.Error() }
func (e *Error) Unwrap() error { return e.Err }

// ErrNotRegular is returned for a path that is not a regular file.
var ErrNotRegular = errors.New("not a regular file")

// ErrTooLarge is returned for a file over MaxFileBytes.
var ErrTooLarge = fmt.Errorf("larger than %d MiB; is this the right file?", MaxFileBytes>>20)

// Read returns the content of a regular file of at most MaxFileBytes. A
// FIFO or device at the path is refused without blocking on it.
func Read(path string) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		// Error already names the file: keep the cause only ("no such
		// file or directory"; errors.Is(err, fs.ErrNotExist) still holds).
		var pe *fs.PathError
		if errors.As(err, &pe) {
			return nil, pe.Err
		}
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%w (%s)", ErrNotRegular, fi.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(f, MaxFileBytes+1))
	if err != nil {
		return nil, err
	}
	if len(data) > MaxFileBytes {
		return nil, ErrTooLarge
	}
	return data, nil
}

// KeyPair loads a PEM certificate chain (leaf first) and its private key.
// The leaf is parsed (Certificate.Leaf is set). Errors are *Error, naming
// the file at fault.
func KeyPair(certFile, keyFile string) (*tls.Certificate, error) {
	certPEM, err := Read(certFile)
	if err != nil {
		return nil, &Error{Field: FieldCert, File: certFile, Err: err}
	}
	if err := hasBlock(certPEM, "CERTIFICATE"); err != nil {
		return nil, &Error{Field: FieldCert, File: certFile, Err: err}
	}
	keyPEM, err := Read(keyFile)
	if err != nil {
		return nil, &Error{Field: FieldKey, File: keyFile, Err: err}
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// The certificate parsed as PEM; what is left is the key, or the
		// pair not matching, which the key's line is the place to fix.
		return nil, &Error{Field: FieldKey, File: keyFile, Err: fmt.Errorf("with %s: %w", certFile, err)}
	}
	return &cert, nil
}

// hasBlock reports whether data holds a PEM block of the given type: a
// certificate file holding only a key (swapped paths) gets a plain answer.
func hasBlock(data []byte, typ string) error {
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			return fmt.Errorf("no PEM %s block found", typ)
		}
		if b.Type == typ {
			return nil
		}
	}
}

// CertPool loads a bundle of PEM CA certificates. It must hold at least
// one, and every CERTIFICATE block must parse: a bundle silently missing
// a CA would refuse peers for reasons nobody could see.
func CertPool(field, file string) (*x509.CertPool, error) {
	data, err := Read(file)
	if err != nil {
		return nil, &Error{Field: field, File: file, Err: err}
	}
	pool := x509.NewCertPool()
	n := 0
	for rest := data; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return nil, &Error{Field: field, File: file, Err: fmt.Errorf("certificate %d: %w", n+1, err)}
		}
		pool.AddCert(c)
		n++
	}
	if n == 0 {
		return nil, &Error{Field: field, File: file, Err: errors.New("no PEM CERTIFICATE block found")}
	}
	return pool, nil
}

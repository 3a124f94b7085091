package proxy

import (
	"bytes"
	"io"
	"math/rand/v2"
	"net"
	"testing"
)

// TestRelayReader: whatever the sizes written and read, the bytes come out
// as they went in, and the pooled buffer is held only while bytes wait in
// it: never once the reader has drained what arrived.
func TestRelayReader(t *testing.T) {
	cases := []struct {
		name          string
		writes, reads []int // sizes, cycled
	}{
		{"frame headers and small payloads", []int{9, 40, 9, 300}, []int{9, 40, 9, 300}},
		{"bursts larger than the idle buffer", []int{20000}, []int{9, 16384, 9, 3598}},
		{"one byte at a time", []int{1}, []int{9, 1, 100}},
		{"reads larger than the pooled buffer", []int{70000}, []int{relayIOBuf + 1}},
		{"mixed", []int{5, 513, 511, 512, 40000}, []int{9, 511, 16384, 2, 4096}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			a, b := net.Pipe()
			defer a.Close()
			defer b.Close()
			src := make([]byte, 200_000)
			for i := range src {
				src[i] = byte(rand.IntN(256))
			}
			go func() {
				for i, off := 0, 0; off < len(src); i++ {
					n := min(tc.writes[i%len(tc.writes)], len(src)-off)
					if _, err := a.Write(src[off : off+n]); err != nil {
						return
					}
					off += n
				}
			}()
			rd := &relayReader{nc: b}
			var got bytes.Buffer
			for i := 0; got.Len() < len(src); i++ {
				p := make([]byte, min(tc.reads[i%len(tc.reads)], len(src)-got.Len()))
				if _, err := io.ReadFull(rd, p); err != nil {
					t.Fatalf("after %d bytes: %v", got.Len(), err)
				}
				got.Write(p)
			}
			if !bytes.Equal(got.Bytes(), src) {
				t.Fatal("bytes differ")
			}
			// Drained, and the writer is done: the read that ends in
			// an error keeps no pooled buffer.
			done := make(chan struct{})
			go func() {
				rd.Read(make([]byte, 9))
				close(done)
			}()
			a.Close()
			<-done
			if rd.big != nil {
				t.Fatal("a pooled buffer is held by a reader with nothing buffered")
			}
		})
	}
}

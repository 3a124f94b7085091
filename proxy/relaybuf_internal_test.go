package proxy

import (
	"bytes"
	"strconv"
	"testing"
)

// TestRelayChunk: a DATA payload is copied whole into a pooled buffer of
// the smallest class that holds it, so a small frame never holds more than
// twice its size (or relayBufMin bytes): what a stream may hold stays
// bounded by its window, whatever its frames' sizes. Beyond the largest
// class (frames larger than the relay reads never come) the copy is not
// pooled.
func TestRelayChunk(t *testing.T) {
	const minBuf = 1 << relayBufMinShift
	tests := []struct {
		name       string
		size       int
		wantPooled bool
	}{
		{name: "one byte", size: 1, wantPooled: true},
		{name: "smallest class exactly", size: minBuf, wantPooled: true},
		{name: "just over a class", size: minBuf + 1, wantPooled: true},
		{name: "a unary message", size: 300, wantPooled: true},
		{name: "largest frame", size: http2MaxFrameSize, wantPooled: true},
		{name: "over the largest class", size: http2MaxFrameSize + 1, wantPooled: false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p := make([]byte, tc.size)
			for i := range p {
				p[i] = byte(i * 31)
			}
			ch := newRelayChunk(p)
			if !bytes.Equal(ch.b, p) {
				t.Fatalf("chunk holds %d bytes, not the %d given", len(ch.b), len(p))
			}
			if (ch.buf != nil) != tc.wantPooled {
				t.Fatalf("pooled %v, want %v", ch.buf != nil, tc.wantPooled)
			}
			if ch.buf == nil {
				return
			}
			if c := cap(ch.buf.b); c > max(minBuf, 2*tc.size-1) || c < tc.size {
				t.Errorf("a %d-byte payload holds a %d-byte buffer", tc.size, c)
			}
			p[0]++ // the chunk is a copy
			if ch.b[0] == p[0] {
				t.Error("the chunk shares the caller's bytes")
			}
			ch.buf.release()
		})
	}
}

// TestRelayChunkAllocs: once the pools are warm, copying a frame's payload
// and releasing it after the write allocates nothing.
func TestRelayChunkAllocs(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop items")
	}
	p := make([]byte, 1000)
	if n := testing.AllocsPerRun(1000, func() { newRelayChunk(p).buf.release() }); n != 0 {
		t.Fatalf("%v allocations per frame, want 0", n)
	}
}

// BenchmarkRelayChunk: a DATA payload copied into a pooled buffer and
// released, as the relay forwards a frame.
func BenchmarkRelayChunk(b *testing.B) {
	for _, size := range []int{16, 1000, http2MaxFrameSize} {
		p := make([]byte, size)
		b.Run(strconv.Itoa(size)+"B", func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(size))
			for b.Loop() {
				newRelayChunk(p).buf.release()
			}
		})
	}
}

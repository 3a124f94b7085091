package proxy

import (
	"bufio"
	"net"
	"sync"
)

// A relay connection's buffered I/O holds a large buffer only while bytes
// wait in it. An idle connection (most of a proxy's client connections
// are) then holds a few hundred bytes instead of two 32 KiB buffers: with
// bufio's own Reader and Writer, 1,000 idle connections held 55 MiB of
// heap in them alone.
const (
	// relayIOBuf is the size of the pooled read and write buffers: two
	// full DATA frames, so one syscall moves several frames when the
	// connection is busy.
	relayIOBuf = 32 << 10
	// relayIdleReadBuf is what a connection reads into when it had
	// nothing waiting: a unary call's request (HEADERS and a small DATA
	// frame) fits, and a read that fills it switches to a pooled buffer
	// for what follows.
	relayIdleReadBuf = 512
)

var (
	relayWriteBufs = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, relayIOBuf) }}
	relayReadBufs  = sync.Pool{New: func() any { b := make([]byte, relayIOBuf); return &b }}
)

// relayWriter is a bufio.Writer taken from a pool at the first write of a
// batch and given back once Flush wrote it all. The connection's writer
// goroutine is its only user (and, before it starts, the code that opens
// an upstream connection).
type relayWriter struct {
	nc net.Conn
	bw *bufio.Writer // nil while nothing is buffered
}

func (w *relayWriter) Write(p []byte) (int, error) {
	if w.bw == nil {
		w.bw = relayWriteBufs.Get().(*bufio.Writer)
		w.bw.Reset(w.nc)
	}
	return w.bw.Write(p)
}

// Buffered is the number of bytes waiting to be flushed.
func (w *relayWriter) Buffered() int {
	if w.bw == nil {
		return 0
	}
	return w.bw.Buffered()
}

// Flush writes what is buffered and gives the buffer back. After an error
// the buffer is kept (bufio keeps the error; the connection is closing).
func (w *relayWriter) Flush() error {
	if w.bw == nil {
		return nil
	}
	if err := w.bw.Flush(); err != nil {
		return err
	}
	w.bw.Reset(nil)
	relayWriteBufs.Put(w.bw)
	w.bw = nil
	return nil
}

// relayReader buffers a connection's reads like a bufio.Reader, but reads
// into a small array of its own after a small read, and into a pooled
// relayIOBuf buffer after a read of relayIdleReadBuf bytes or more (the
// connection is busy: more is probably coming, and one syscall should
// take it). The pooled buffer goes back whenever it is drained, so a
// connection that goes idle after small reads (a unary call's request,
// a WINDOW_UPDATE) waits holding only the small array; one that goes idle
// right after a large read waits in the pooled buffer until its next
// bytes. The connection's reader goroutine is its only user.
type relayReader struct {
	nc    net.Conn
	small [relayIdleReadBuf]byte
	big   *[]byte // the pooled buffer, while buf is it
	buf   []byte
	r, w  int  // buf[r:w] is unread
	busy  bool // the last read filled its buffer
}

func (rd *relayReader) Read(p []byte) (int, error) {
	if rd.r == rd.w {
		if rd.big != nil {
			relayReadBufs.Put(rd.big)
			rd.big = nil
		}
		size := relayIdleReadBuf
		if rd.busy {
			size = relayIOBuf
		}
		if len(p) >= size {
			// As bufio: a read as large as the buffer goes straight
			// into p.
			return rd.nc.Read(p)
		}
		buf := rd.small[:]
		if rd.busy {
			rd.big = relayReadBufs.Get().(*[]byte)
			buf = *rd.big
		}
		n, err := rd.nc.Read(buf)
		rd.buf, rd.r, rd.w = buf, 0, n
		rd.busy = n >= relayIdleReadBuf
		if n == 0 {
			if rd.big != nil {
				relayReadBufs.Put(rd.big)
				rd.big = nil
			}
			return 0, err
		}
		// An error with data: the data first; the connection reports
		// the error again on the next read (EOF, a closed connection
		// and a passed deadline all do).
	}
	n := copy(p, rd.buf[rd.r:rd.w])
	rd.r += n
	return n, nil
}

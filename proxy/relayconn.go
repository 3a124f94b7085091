package proxy

import (
	"bytes"
	"crypto/tls"
	"errors"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// The frame relay's HTTP/2 connections (see relay.go). One h2conn is
// either a client's connection to a relay listener or the relay's own
// connection to an upstream endpoint; both move the same frames and hold
// the same flow-control state, so they share this code.
//
// Each connection has one reader goroutine (the only one that reads its
// Framer) and one writer goroutine (the only one that writes it, and the
// owner of its HPACK encoder, whose state must follow the order in which
// header blocks reach the wire, RFC 7541 §2.2). Anyone may queue frames
// for the writer: a slow peer never blocks the reader of the other side.
// What the queue holds is bounded by flow control (DATA) and by the
// connection's stream limit (HEADERS, and the RST_STREAMs that end the
// relay's own streams); frames a peer provokes (PING and SETTINGS acks,
// RST_STREAMs answering its bad or refused streams) are bounded by
// relayMaxQueuedControl, since a peer can send those faster than it reads
// the answers: past it the connection's reader waits for the writer
// (throttle), so a peer that does not read stops being read.

const (
	// relayStreamWindow is the INITIAL_WINDOW_SIZE the relay advertises
	// on both sides (RFC 9113 §6.9.2): what one stream may have in flight
	// towards the relay. A stream's bytes are acknowledged only once the
	// other side took them, so this bounds the memory one stream can hold
	// in each direction, whatever its messages' sizes.
	relayStreamWindow = 256 << 10
	// relayConnWindow is the connection-level window advertised on both
	// sides. It is given back as soon as DATA is read (the stream windows
	// bound what is held), so one stalled stream never stalls the others.
	relayConnWindow = 16 << 20
	// relayMaxQueuedControl bounds queued answers to a peer's frames
	// (RFC 9113 §10.5): past it the reader stops reading until the
	// writer has taken them. A peer that floods PINGs, SETTINGS or
	// streams the relay must reset, without reading the answers, then
	// finds its own writes blocked, as grpc-go's server does (it stops
	// reading at 50 queued answers). Closing instead would also close on
	// a peer that reads but outpaces a busy writer.
	relayMaxQueuedControl = 1024
	// relayMinBatch: a writer that has less than this buffered yields
	// once before it flushes, so that frames being queued right now (a
	// response's DATA behind its HEADERS, the next call's frames) share
	// the write, as grpc-go's loopy writer does (minBatchSize).
	relayMinBatch = 1000
)

// errRelayConnClosed ends what was waiting on a connection that closed.
var errRelayConnClosed = errors.New("relay: connection closed")

// wKind is the kind of a queued frame.
type wKind uint8

const (
	wData wKind = iota
	wHeaders
	wRST
	wWindow
	wSettings
	wSettingsAck
	wPing
	wGoAway
	wTableSize
	wClose // flush, then close the connection
)

// wItem is one frame for the writer.
type wItem struct {
	kind   wKind
	end    bool // END_STREAM
	id     uint32
	n      uint32 // window increment, error code, table size
	data   []byte
	buf    *relayBuf // data's pooled buffer, released once written (nil: none)
	fields []hpack.HeaderField
	ping   [8]byte
	probe  bool // a PING of our own, not an ack
	answer bool // an RST_STREAM answering the peer's frame (see answerReset)
	set    []http2.Setting
}

// leg is one side of a relayed stream: its stream on one connection, and
// the flow-control state of the bytes going out on it.
type leg struct {
	st *relayStream
	c  *h2conn // nil until the upstream stream is opened
	id uint32

	// Outbound, guarded by c.mu (by st.mu before c is set).
	sendWin  int32 // the peer's stream window
	pending  []relayChunk
	one      [1]relayChunk       // pending's storage while it holds one chunk
	end      bool                // END_STREAM once pending is sent
	trailers []hpack.HeaderField // sent with END_STREAM once pending is sent
	endSent  bool                // END_STREAM queued

	// remoteEnded: the peer ended or reset its side of the stream.
	remoteEnded atomic.Bool

	// Inbound: recvWin is what the peer may still send on this stream;
	// unacked is what was forwarded but not yet given back to the peer.
	recvWin atomic.Int32
	unacked atomic.Int32
}

// h2conn is one HTTP/2 connection of the relay.
type h2conn struct {
	nc   net.Conn
	fr   *http2.Framer
	br   *relayReader
	bw   *relayWriter
	idle time.Duration // close after this long without streams (0: never)
	// tlsState is a TLS client connection's state (nil: cleartext), for
	// caller_from: client_cert.
	tlsState *tls.ConnectionState
	client   bool // the relay is the client (an upstream connection)

	hdec   *headerDecoder // reader goroutine only
	enc    *hpack.Encoder // writer goroutine only
	encBuf bytes.Buffer

	wmu      sync.Mutex
	wq       []wItem
	wctl     int        // answers to the peer in wq (see relayMaxQueuedControl)
	wdrained *sync.Cond // on wmu: the writer took the queue, or the connection closed
	wsig     chan struct{}
	closed   chan struct{}
	closeErr error
	once     sync.Once

	// pingReset (on wmu): HEADERS or DATA were queued since the peer's
	// last PING, which then never counts as a strike (pingAllowed).
	pingReset bool

	// peerMaxFrame is the peer's SETTINGS_MAX_FRAME_SIZE.
	peerMaxFrame atomic.Uint32
	// peerMaxStreams is the peer's SETTINGS_MAX_CONCURRENT_STREAMS.
	peerMaxStreams atomic.Uint32
	// peerMaxHeaderList is the peer's SETTINGS_MAX_HEADER_LIST_SIZE (0:
	// none stated).
	peerMaxHeaderList atomic.Uint32
	// reads counts the frames read, for keepalive.
	reads atomic.Uint64
	// dataSent counts the DATA frames written (writer goroutine), which
	// earn a client its WINDOW_UPDATEs (floodGuard).
	dataSent atomic.Uint64
	// flood holds a client connection to its share of frames that do no
	// work (reader goroutine only; relayflood.go).
	flood floodGuard
	// connUnacked is DATA read on the connection not yet given back.
	connUnacked int32 // reader goroutine only
	// lastPingAt and pingStrikes follow the client's PINGs (reader
	// goroutine only, see pingAllowed).
	lastPingAt  time.Time
	pingStrikes int

	mu       sync.Mutex // guards the fields below and legs' outbound state
	legs     map[uint32]*leg
	sendWin  int32 // connection-level send window
	peerInit int32 // the peer's INITIAL_WINDOW_SIZE
	nextID   uint32
	goAway   bool // no new streams: GOAWAY sent or received
	lastPeer uint32

	// An upstream connection's streams waiting for its stream quota, in
	// order, and the slots granted to them (openStream).
	quotaWait []*quotaWaiter
	reserved  int
}

func newH2Conn(nc net.Conn, client bool, maxHeaderList uint32) *h2conn {
	c := &h2conn{
		nc:       nc,
		bw:       &relayWriter{nc: nc},
		client:   client,
		wsig:     make(chan struct{}, 1),
		closed:   make(chan struct{}),
		legs:     map[uint32]*leg{},
		sendWin:  65535, // RFC 9113 §6.9.2: until the peer says otherwise
		peerInit: 65535,
		nextID:   1,
	}
	c.wdrained = sync.NewCond(&c.wmu)
	c.peerMaxFrame.Store(16384)
	if !client {
		c.peerMaxStreams.Store(^uint32(0))
	}
	// else 0 until the upstream's first SETTINGS (relayClient.read).
	c.br = &relayReader{nc: nc}
	c.fr = http2.NewFramer(c.bw, c.br)
	// HEADERS and CONTINUATION arrive as one MetaHeadersFrame (readFrame),
	// decoded with this connection's HPACK state; fields beyond the list
	// size are not emitted (the frame is marked Truncated), so references
	// to a large dynamic-table entry cannot expand into megabytes (RFC 7541
	// §7.3, RFC 9113 §10.5.1).
	c.hdec = newHeaderDecoder(maxHeaderList)
	c.fr.SetReuseFrames()
	// The relay never advertises SETTINGS_MAX_FRAME_SIZE: its peers'
	// frames are held to the initial 16 KiB (RFC 9113 §4.2; a larger one
	// is a connection error, FRAME_SIZE_ERROR).
	c.fr.SetMaxReadFrameSize(http2MaxFrameSize)
	c.enc = hpack.NewEncoder(&c.encBuf)
	return c
}

// keepalive pings a connection that has been silent for keepaliveTime and
// closes it when nothing (the ack or any other frame) arrives within
// keepaliveTimeout, as grpc-go's keepalive does on the other path: the
// streams of a peer that vanished without a FIN end. It runs on a timer,
// not a goroutine; the reader counts frames in c.reads.
func (c *h2conn) keepalive(every, timeout time.Duration) {
	var seen uint64
	var pinged bool
	var t *time.Timer
	t = time.AfterFunc(every, func() {
		if c.isClosed() {
			return
		}
		n := c.reads.Load()
		switch {
		case n != seen:
			seen, pinged = n, false
			t.Reset(every)
		case !pinged:
			pinged = true
			c.queue(wItem{kind: wPing, probe: true})
			t.Reset(timeout)
		default:
			c.close(errors.New("relay: keepalive ping not answered"))
		}
	})
}

// queue hands frames to the writer. It reports false when the connection
// is closed. It never blocks: other connections' readers queue here, and a
// slow peer must not stall them; the reader of this connection waits in
// throttle instead.
func (c *h2conn) queue(items ...wItem) bool {
	c.wmu.Lock()
	select {
	case <-c.closed:
		c.wmu.Unlock()
		return false
	default:
	}
	for _, it := range items {
		if it.kind == wPing || it.kind == wSettingsAck || it.answer {
			c.wctl++
		} else if it.kind == wData || it.kind == wHeaders {
			c.pingReset = true
		}
	}
	c.wq = append(c.wq, items...)
	c.wmu.Unlock()
	select {
	case c.wsig <- struct{}{}:
	default:
	}
	return true
}

// pingAllowed applies grpc-go's keepalive.EnforcementPolicy to a PING the
// client sent at now (RFC 9113 §10.5: PINGs are a way to make a server
// work for nothing): a PING that comes less than minTime after the
// previous one (noStreamPingMinTime when the connection has no streams,
// unless keepalivePermitWithoutStream) is a strike, unless headers or
// data went to the client since the previous PING, which clears the
// strikes (grpc-go's BDP pings follow the data it receives). It reports
// false at the strike that is one too many. Reader goroutine only.
func (c *h2conn) pingAllowed(now time.Time, minTime time.Duration) bool {
	c.wmu.Lock()
	reset := c.pingReset
	c.pingReset = false
	c.wmu.Unlock()
	last := c.lastPingAt
	c.lastPingAt = now
	if reset {
		c.pingStrikes = 0
		return true
	}
	if !keepalivePermitWithoutStream {
		c.mu.Lock()
		if len(c.legs) == 0 {
			minTime = noStreamPingMinTime
		}
		c.mu.Unlock()
	}
	if last.Add(minTime).After(now) {
		c.pingStrikes++
	}
	return c.pingStrikes <= maxPingStrikes
}

// throttle is called by the connection's reader between frames: while
// more than relayMaxQueuedControl answers to the peer wait for the writer,
// it waits too, so the peer's flood goes no further than TCP's buffers.
func (c *h2conn) throttle() {
	c.wmu.Lock()
	for c.wctl > relayMaxQueuedControl && !c.isClosed() {
		c.wdrained.Wait()
	}
	c.wmu.Unlock()
}

// writeLoop is the connection's writer goroutine.
func (c *h2conn) writeLoop() {
	var batch []wItem
	for {
		select {
		case <-c.wsig:
		case <-c.closed:
			return
		}
		for yielded := false; ; {
			c.wmu.Lock()
			batch, c.wq = c.wq, batch[:0]
			c.wctl = 0
			c.wdrained.Broadcast()
			c.wmu.Unlock()
			for i := range batch {
				if err := c.write(&batch[i]); err != nil {
					c.close(err)
					return
				}
				if batch[i].buf != nil {
					// The Framer copied the bytes out.
					batch[i].buf.release()
				}
				batch[i] = wItem{}
			}
			if yielded || c.bw.Buffered() >= relayMinBatch {
				break
			}
			// A small write: let whoever is queueing finish first (see
			// relayMinBatch), then take what came.
			yielded = true
			runtime.Gosched()
			c.wmu.Lock()
			more := len(c.wq) > 0
			c.wmu.Unlock()
			if !more {
				break
			}
		}
		if err := c.bw.Flush(); err != nil {
			c.close(err)
			return
		}
	}
}

func (c *h2conn) write(it *wItem) error {
	switch it.kind {
	case wData:
		c.dataSent.Add(1)
		return c.fr.WriteData(it.id, it.end, it.data)
	case wHeaders:
		c.encBuf.Reset()
		for i, f := range it.fields {
			if uniquePerCall(f.Name) {
				if i > 0 {
					// A pending dynamic table size update went out
					// before the block's first field (RFC 7541 §4.2).
					c.encBuf.Write(appendLiteral(c.encBuf.AvailableBuffer(), f))
					continue
				}
				// First: the encoder writes it (and the update before
				// it), never indexed, the one literal that keeps it out
				// of the table.
				f.Sensitive = true
			}
			if err := c.enc.WriteField(f); err != nil {
				return err
			}
		}
		block := c.encBuf.Bytes()
		max := int(c.peerMaxFrame.Load())
		first := true
		for first || len(block) > 0 {
			n := min(len(block), max)
			frag := block[:n]
			block = block[n:]
			var err error
			if first {
				err = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: it.id, BlockFragment: frag, EndStream: it.end, EndHeaders: len(block) == 0})
				first = false
			} else {
				err = c.fr.WriteContinuation(it.id, len(block) == 0, frag)
			}
			if err != nil {
				return err
			}
		}
		return nil
	case wRST:
		return c.fr.WriteRSTStream(it.id, http2.ErrCode(it.n))
	case wWindow:
		return c.fr.WriteWindowUpdate(it.id, it.n)
	case wSettings:
		return c.fr.WriteSettings(it.set...)
	case wSettingsAck:
		return c.fr.WriteSettingsAck()
	case wPing:
		return c.fr.WritePing(!it.probe, it.ping)
	case wGoAway:
		return c.fr.WriteGoAway(it.id, http2.ErrCode(it.n), it.data)
	case wTableSize:
		c.enc.SetMaxDynamicTableSize(it.n)
	case wClose:
		if err := c.bw.Flush(); err != nil {
			return err
		}
		return errRelayConnClosed
	}
	return nil
}

// answerReset queues the RST_STREAM that answers a peer's frame on stream
// id: a stream refused or malformed, a frame on a closed stream, a flow
// control violation. The peer decides how many of these it provokes, so
// they count against relayMaxQueuedControl; the relay's own resets (a
// cancelled call) do not, as an upstream connection carrying thousands of
// calls may legitimately owe many.
func (c *h2conn) answerReset(id uint32, code http2.ErrCode) {
	c.queue(wItem{kind: wRST, id: id, n: uint32(code), answer: true})
}

// close ends the connection once; the reader then tears its streams down.
// resetStream handles a stream error from the frame reader (a malformed
// frame of one stream, RFC 9113 §5.4.2): that stream is reset on this
// connection and its call ends as if the peer had reset it; the
// connection goes on. It reports whether err was one.
func (c *h2conn) resetStream(err error) bool {
	var se http2.StreamError
	if !errors.As(err, &se) {
		return false
	}
	c.answerReset(se.StreamID, se.Code)
	if l := c.leg(se.StreamID); l != nil {
		l.st.peerReset(l, se.Code)
	}
	return true
}

func (c *h2conn) close(err error) {
	c.once.Do(func() {
		c.wmu.Lock()
		c.closeErr = err
		close(c.closed)
		c.wdrained.Broadcast()
		c.wmu.Unlock()
		c.nc.Close()
	})
}

func (c *h2conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// handleSettings applies the peer's SETTINGS and acknowledges them.
func (c *h2conn) handleSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	err := f.ForeachSetting(func(s http2.Setting) error {
		if err := s.Valid(); err != nil {
			return err
		}
		switch s.ID {
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame.Store(s.Val)
		case http2.SettingMaxConcurrentStreams:
			c.peerMaxStreams.Store(s.Val)
		case http2.SettingMaxHeaderListSize:
			c.peerMaxHeaderList.Store(s.Val)
		case http2.SettingHeaderTableSize:
			// RFC 7541 §4.2: the encoder must not use more than this;
			// 4096 is all it ever uses.
			c.queue(wItem{kind: wTableSize, n: min(s.Val, 4096)})
		case http2.SettingInitialWindowSize:
			c.mu.Lock()
			delta := int32(s.Val) - c.peerInit
			c.peerInit = int32(s.Val)
			for _, l := range c.legs {
				l.sendWin += delta
			}
			c.flushAllLocked()
			c.mu.Unlock()
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.queue(wItem{kind: wSettingsAck})
	if c.client {
		// SETTINGS_MAX_CONCURRENT_STREAMS may have grown.
		c.mu.Lock()
		c.grantLocked()
		c.mu.Unlock()
	}
	return nil
}

// handleWindowUpdate grows a send window and sends what waited for it.
func (c *h2conn) handleWindowUpdate(f *http2.WindowUpdateFrame) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		if int64(c.sendWin)+int64(f.Increment) > 1<<31-1 {
			return http2.ConnectionError(http2.ErrCodeFlowControl)
		}
		c.sendWin += int32(f.Increment)
		c.flushAllLocked()
		return nil
	}
	if l := c.legs[f.StreamID]; l != nil {
		if int64(l.sendWin)+int64(f.Increment) > 1<<31-1 {
			c.answerReset(f.StreamID, http2.ErrCodeFlowControl)
			go l.st.peerReset(l, http2.ErrCodeFlowControl)
			return nil
		}
		l.sendWin += int32(f.Increment)
		c.flushLocked(l)
	}
	return nil
}

func (c *h2conn) flushAllLocked() {
	for _, l := range c.legs {
		if len(l.pending) > 0 || (l.end && !l.endSent) {
			c.flushLocked(l)
		}
	}
}

// send queues data (and END_STREAM, or trailers then END_STREAM) on l and
// writes as much as the windows allow. data must not be used by the
// caller afterwards.
func (c *h2conn) send(l *leg, data []byte, end bool, trailers []hpack.HeaderField) {
	c.sendChunk(l, relayChunk{b: data}, end, trailers)
}

// sendChunk is send with bytes that may live in a pooled buffer: it goes
// back to its pool once written (or to the garbage collector if the
// stream ends first).
func (c *h2conn) sendChunk(l *leg, data relayChunk, end bool, trailers []hpack.HeaderField) {
	c.mu.Lock()
	if l.endSent || l.end || c.legs[l.id] != l {
		c.mu.Unlock()
		return
	}
	if len(data.b) > 0 {
		if l.pending == nil {
			l.pending = l.one[:0]
		}
		l.pending = append(l.pending, data)
	}
	if end {
		l.end = true
		l.trailers = trailers
	}
	c.flushLocked(l)
	c.mu.Unlock()
}

// flushLocked writes l's pending bytes within the connection's and the
// stream's send windows, then its end, and gives the bytes it wrote back
// to the stream's other side: only now has the peer taken them (RFC 9113
// §5.2: flow control is hop by hop; the relay passes it through).
func (c *h2conn) flushLocked(l *leg) {
	max := int32(c.peerMaxFrame.Load())
	var sent int32
	// The frames go to the writer in one hand-off.
	var stack [4]wItem
	items := stack[:0]
	for len(l.pending) > 0 {
		win := min(c.sendWin, l.sendWin, max)
		if win <= 0 {
			break
		}
		ch := l.pending[0]
		n := min(int32(len(ch.b)), win)
		last := int(n) == len(ch.b)
		endNow := last && len(l.pending) == 1 && l.end && l.trailers == nil
		it := wItem{kind: wData, id: l.id, data: ch.b[:n], end: endNow}
		c.sendWin -= n
		l.sendWin -= n
		sent += n
		if last {
			// The buffer's last bytes: it is released once they are
			// written (the writer writes a connection's frames in
			// order, so the earlier parts are written by then).
			it.buf = ch.buf
			l.pending[0] = relayChunk{}
			l.pending = l.pending[1:]
		} else {
			l.pending[0].b = ch.b[n:]
		}
		items = append(items, it)
		if endNow {
			l.endSent = true
		}
	}
	if len(l.pending) == 0 {
		l.pending = nil
		if l.end && !l.endSent {
			l.endSent = true
			if l.trailers != nil {
				items = append(items, wItem{kind: wHeaders, id: l.id, fields: l.trailers, end: true})
			} else {
				items = append(items, wItem{kind: wData, id: l.id, end: true})
			}
		}
	}
	if len(items) > 0 {
		c.queue(items...)
	}
	if sent > 0 {
		l.st.credit(l, sent)
	}
	if l.endSent {
		l.st.sentEnd(l)
	}
}

// register adds l as stream id of c (under c.mu).
func (c *h2conn) registerLocked(l *leg, id uint32) {
	l.c = c
	l.id = id
	l.sendWin = c.peerInit
	c.legs[id] = l
	if len(c.legs) == 1 && c.idle > 0 {
		c.nc.SetReadDeadline(time.Time{})
	}
}

// setIdleDeadline arms the idle timeout of a connection without streams:
// the reader's next read fails then, and it closes the connection if it
// is still idle (as grpc-go's MaxConnectionIdle and net/http's
// IdleTimeout do).
func (c *h2conn) setIdleDeadline() {
	if c.idle > 0 {
		c.nc.SetReadDeadline(time.Now().Add(c.idle))
	}
}

// remove forgets l; its later frames are ignored.
func (c *h2conn) remove(l *leg) {
	if l == nil || l.c != c {
		return
	}
	c.mu.Lock()
	if c.legs[l.id] == l {
		delete(c.legs, l.id)
		l.pending = nil
		c.grantLocked()
		if len(c.legs) == 0 {
			c.setIdleDeadline()
			if c.goAway {
				// Draining (GOAWAY either way) and now idle: done.
				c.closeAfterFlush()
			}
		}
	}
	c.mu.Unlock()
}

// giveBack returns n bytes of a stream's window to the peer, batched:
// a WINDOW_UPDATE once a quarter of the window is owed.
func (c *h2conn) giveBack(l *leg, n int32) {
	l.recvWin.Add(n)
	if u := l.unacked.Add(n); u >= relayStreamWindow/4 {
		if l.unacked.CompareAndSwap(u, 0) {
			c.queue(wItem{kind: wWindow, id: l.id, n: uint32(u)})
		}
	}
}

// data handles a DATA frame read on c (by its reader): its bytes are
// accounted against the windows (readData), its padding, never forwarded,
// is given back at once, and its payload goes to the stream's other side
// through forward ((*relayStream).fromClient or fromUpstream). A frame
// that overruns the stream's window resets the stream (RFC 9113 §6.9.1,
// FLOW_CONTROL_ERROR); one of a stream the relay does not know is only
// accounted (the connection's window).
func (c *h2conn) data(f *http2.DataFrame, forward func(st *relayStream, data []byte, end bool)) {
	l := c.leg(f.StreamID)
	if !c.readData(l, int(f.Length)) {
		c.answerReset(f.StreamID, http2.ErrCodeFlowControl)
		l.st.peerReset(l, http2.ErrCodeFlowControl)
		return
	}
	if l == nil {
		return
	}
	if pad := int32(int(f.Length) - len(f.Data())); pad > 0 {
		c.giveBack(l, pad)
	}
	forward(l.st, f.Data(), f.StreamEnded())
}

// readData accounts a DATA frame's bytes against the connection window
// (given back at once, batched) and the stream's (given back as the other
// side takes them). It reports false when the peer overran the stream's
// window.
func (c *h2conn) readData(l *leg, n int) bool {
	if n == 0 {
		return true
	}
	c.connUnacked += int32(n)
	if c.connUnacked >= relayConnWindow/4 {
		c.queue(wItem{kind: wWindow, id: 0, n: uint32(c.connUnacked)})
		c.connUnacked = 0
	}
	if l == nil {
		return true
	}
	return l.recvWin.Add(-int32(n)) >= 0
}

// settings is what the relay advertises on a connection.
func relaySettings(maxStreams, maxHeaderList uint32) []http2.Setting {
	s := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: relayStreamWindow},
		{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderList},
	}
	if maxStreams > 0 {
		s = append(s, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: maxStreams})
	} else {
		s = append(s, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	}
	return s
}

// relayChunk is bytes waiting to go out on a leg, and the pooled buffer they
// live in (nil: none).
type relayChunk struct {
	b   []byte
	buf *relayBuf
}

// relayBuf is a pooled copy of a DATA frame's payload: the reader of one
// connection fills it, the writer of the other releases it once written,
// so forwarding a frame allocates nothing once the pools are warm.
// Buffers come in power-of-two sizes from relayBufMin to the largest frame
// a peer may send us (http2MaxFrameSize), so a small frame never holds
// more than twice its size (plus relayBufMin): what a stream may hold is
// still bounded by its window, whatever its frames' sizes.
type relayBuf struct {
	b     []byte
	class uint8
}

const (
	relayBufMinShift = 6 // 64 bytes
	relayBufClasses  = 9 // 64 B … 16 KiB
)

// relayBufPools are shared by all connections (a buffer is filled on one
// and released on another); a package-level pool, like grpc-go's buffer
// pools, as it holds nothing but free memory.
var relayBufPools [relayBufClasses]sync.Pool

func init() {
	for i := range relayBufPools {
		size := 1 << (relayBufMinShift + i)
		class := uint8(i)
		relayBufPools[i].New = func() any { return &relayBuf{b: make([]byte, size), class: class} }
	}
}

// newRelayChunk copies p into a pooled buffer (into a plain slice if p is
// larger than any class).
func newRelayChunk(p []byte) relayChunk {
	class := 0
	for len(p) > 1<<(relayBufMinShift+class) {
		class++
	}
	if class >= relayBufClasses {
		return relayChunk{b: append([]byte(nil), p...)}
	}
	rb := relayBufPools[class].Get().(*relayBuf)
	n := copy(rb.b, p)
	return relayChunk{b: rb.b[:n], buf: rb}
}

// release returns the buffer to its pool; nothing may use it afterwards.
func (rb *relayBuf) release() {
	relayBufPools[rb.class].Put(rb)
}

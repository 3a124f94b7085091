package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"

	"github.com/hopwatch/hopwatch/routes"
	"github.com/hopwatch/hopwatch/telemetry"
)

// The frame relay: a gRPC listener (relay "" or "frames") serves HTTP/2
// itself (golang.org/x/net/http2's Framer and HPACK) instead of through
// grpc-go. A call's HEADERS are decoded (HPACK state is per connection,
// so they are decoded and encoded again), routed and timed exactly as on
// the grpc-go path (handleGRPC, callGRPC), and its DATA frames are
// forwarded as they arrive, never assembled into messages: the 5-byte gRPC
// length prefixes are read as they pass, to hold messages to
// max_message_bytes. Flow control is passed through end to end: a
// stream's bytes are acknowledged to the sender only once the other side
// has taken them, so a stalled upstream stalls its client and one stream
// holds at most relayStreamWindow bytes in each direction.
//
// It must never forward a frame of a stream it did not route, nor hold a
// client's bytes beyond the windows it advertised.

// relayServer is a relay listener's server.
type relayServer struct {
	p        *Proxy
	listener string
	maxMsg   int
	lim      limits

	mu    sync.Mutex
	conns map[*h2conn]struct{}
	// draining is read by connection readers under their connection's
	// lock, which drain takes under mu: an atomic, so that no reader
	// ever waits for mu while holding a connection's lock (lock order
	// mu → c.mu, never the reverse).
	draining atomic.Bool
	wg       sync.WaitGroup // connection readers and stream handlers

	// Calls run on worker goroutines kept between calls (up to
	// relayIdleWorkers idle ones): a new goroutine per call would grow
	// its stack again for every call (serve's call chain, telemetry
	// included, is deeper than a fresh stack), as grpc-go's server
	// stream workers avoid too.
	work        chan relayWork // to an idle worker (unbuffered)
	idleWorkers atomic.Int32
	workers     sync.WaitGroup
	quit        chan struct{} // closed once drained: idle workers exit
	quitOnce    sync.Once
	// Idle workers end when no call came to them for relayWorkerIdle:
	// one timer for the listener (reap), not one per worker, whose
	// channel a worker would wait on between every two calls (and the
	// runtime add to and remove from its timer heap each time).
	retire     chan struct{} // to an idle worker: end (unbuffered)
	handed     atomic.Uint64 // calls handed to idle workers
	reaperOn   atomic.Bool   // reap is scheduled
	reapMu     sync.Mutex    // guards lastHanded (reap runs on timer goroutines)
	lastHanded uint64
}

// relayIdleWorkers bounds the workers a relay listener keeps idle between
// calls (each holds a grown stack, a few KiB); calls beyond them start
// goroutines that end with the call. Idle workers end too once none of
// them took a call for relayWorkerIdle (reap, within twice that): after a
// burst, the listener's goroutines go back to what its connections need.
const (
	relayIdleWorkers = 128
	relayWorkerIdle  = 2 * time.Second
)

// relayWork is one call for a worker: its stream and request headers.
type relayWork struct {
	st *relayStream
	in []hpack.HeaderField
}

func (p *Proxy) newRelayServer(listener string, maxMsg int, lim limits) *relayServer {
	return &relayServer{p: p, listener: listener, maxMsg: maxMsg, lim: lim, conns: map[*h2conn]struct{}{},
		work: make(chan relayWork), quit: make(chan struct{}), retire: make(chan struct{})}
}

// dispatch runs a call (counted in s.wg by the caller) on an idle worker,
// or on a new one.
func (s *relayServer) dispatch(w relayWork) {
	select {
	case s.work <- w:
		s.handed.Add(1)
	default:
		s.workers.Add(1)
		go s.worker(w)
	}
}

// armReaper schedules reap, unless it is scheduled already.
func (s *relayServer) armReaper() {
	if s.reaperOn.CompareAndSwap(false, true) {
		time.AfterFunc(relayWorkerIdle, s.reap)
	}
}

// reap ends the idle workers if none of them took a call since the last
// reap (at least relayWorkerIdle ago): after a burst, the listener's
// goroutines go back to what its connections need. It runs again while
// workers are idle.
func (s *relayServer) reap() {
	s.reapMu.Lock()
	handed := s.handed.Load()
	if handed == s.lastHanded {
		for retired := false; !retired; {
			select {
			case s.retire <- struct{}{}:
			default:
				retired = true
			}
		}
	}
	s.lastHanded = handed
	s.reapMu.Unlock()
	s.reaperOn.Store(false)
	if s.idleWorkers.Load() > 0 {
		s.armReaper()
	}
}

// worker runs calls until none comes while it is idle and enough others
// are idle, or the server is drained.
func (s *relayServer) worker(w relayWork) {
	defer s.workers.Done()
	for {
		w.st.serve(w.in)
		s.wg.Done()
		if s.idleWorkers.Add(1) > relayIdleWorkers {
			s.idleWorkers.Add(-1)
			return
		}
		s.armReaper()
		select {
		case w = <-s.work:
			s.idleWorkers.Add(-1)
		case <-s.retire:
			s.idleWorkers.Add(-1)
			return
		case <-s.quit:
			s.idleWorkers.Add(-1)
			return
		}
	}
}

// serve accepts connections until ln is closed.
func (s *relayServer) serve(ln net.Listener) error {
	for {
		nc, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			return err
		}
		s.mu.Lock()
		if s.draining.Load() {
			s.mu.Unlock()
			nc.Close()
			continue
		}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(nc)
	}
}

// drain sends GOAWAY on every connection and lets their streams finish
// until ctx is done (RFC 9113 §6.8), then closes what remains.
func (s *relayServer) drain(ctx context.Context) {
	s.mu.Lock()
	s.draining.Store(true)
	for c := range s.conns {
		c.mu.Lock()
		if !c.goAway {
			c.goAway = true
			c.queue(wItem{kind: wGoAway, id: c.lastPeer, n: uint32(http2.ErrCodeNo)})
		}
		idle := len(c.legs) == 0
		c.mu.Unlock()
		if idle {
			c.closeAfterFlush()
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		s.stop()
		<-done
	}
	// No call runs and none can start (the readers are gone): the idle
	// workers end.
	s.quitOnce.Do(func() { close(s.quit) })
	s.workers.Wait()
}

// stop closes every connection at once.
func (s *relayServer) stop() {
	s.mu.Lock()
	s.draining.Store(true)
	for c := range s.conns {
		c.close(errRelayConnClosed)
	}
	s.mu.Unlock()
}

// closeAfterFlush closes the connection once the frames queued so far (a
// GOAWAY) are written, or after a second if the peer does not read them.
func (c *h2conn) closeAfterFlush() {
	if c.queue(wItem{kind: wClose}) {
		time.AfterFunc(time.Second, func() { c.close(errRelayConnClosed) })
	}
}

// serveConn reads one client connection until it ends.
func (s *relayServer) serveConn(nc net.Conn) {
	defer s.wg.Done()
	lim := s.lim
	// The TLS handshake, the preface and the client's first SETTINGS
	// must all arrive within read_header_timeout (slowloris, RFC 9113
	// §3.4).
	nc.SetReadDeadline(time.Now().Add(lim.readHeaderTimeout))
	gc, _ := nc.(*guardedConn)
	var state *tls.ConnectionState
	if tc, ok := nc.(*tls.Conn); ok {
		gc, _ = tc.NetConn().(*guardedConn)
		nc.SetWriteDeadline(time.Now().Add(lim.readHeaderTimeout))
		err := tc.Handshake()
		nc.SetWriteDeadline(time.Time{})
		if err != nil {
			nc.Close()
			return
		}
		cs := tc.ConnectionState()
		if cs.NegotiatedProtocol != "h2" {
			// gRPC over TLS is HTTP/2 by ALPN (RFC 9113 §3.2).
			nc.Close()
			return
		}
		state = &cs
	}
	c := newH2Conn(nc, false, uint32(lim.maxHeaderBytes))
	c.idle = lim.idleTimeout
	c.tlsState = state
	s.mu.Lock()
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	go c.writeLoop()
	defer c.closeAfterFlush()

	pre := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.br, pre); err != nil || string(pre) != http2.ClientPreface {
		return
	}
	c.queue(wItem{kind: wSettings, set: relaySettings(uint32(lim.maxConcurrentStreams), uint32(lim.maxHeaderBytes))},
		wItem{kind: wWindow, id: 0, n: relayConnWindow - 65535})
	f, err := c.readFrame()
	if err != nil {
		return
	}
	sf, ok := f.(*http2.SettingsFrame)
	if !ok || sf.IsAck() {
		c.goAwayAndClose(http2.ErrCodeProtocol)
		return
	}
	if err := c.handleSettings(sf); err != nil {
		c.goAwayAndClose(http2.ErrCodeProtocol)
		return
	}
	c.setIdleDeadline()
	c.keepalive(s.p.relayPing[0], s.p.relayPing[1])

	defer c.teardown()
	for {
		c.throttle()
		f, err := c.readFrame()
		c.reads.Add(1)
		if err != nil {
			if c.resetStream(err) {
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.goAwayAndClose(http2.ErrCode(ce))
				return
			}
			if errors.Is(err, http2.ErrFrameTooLarge) {
				c.goAwayAndClose(http2.ErrCodeFrameSize)
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				// The idle deadline: close only if still idle.
				c.mu.Lock()
				idle := len(c.legs) == 0
				c.mu.Unlock()
				if idle {
					c.goAwayAndClose(http2.ErrCodeNo)
					return
				}
				nc.SetReadDeadline(time.Time{})
				continue
			}
			return
		}
		if err := s.frame(c, gc, f); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.goAwayAndClose(http2.ErrCode(ce))
			}
			return
		}
		c.mu.Lock()
		closing := c.goAway && len(c.legs) == 0 && s.isDraining()
		c.mu.Unlock()
		if closing {
			c.closeAfterFlush()
		}
	}
}

func (s *relayServer) isDraining() bool { return s.draining.Load() }

// frame handles one frame from a client.
func (s *relayServer) frame(c *h2conn, gc *guardedConn, f http2.Frame) error {
	if c.flood.see(f, c.dataSent.Load()) {
		s.flooded(c, gc)
		return errFrameFlood
	}
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		return s.headers(c, gc, f)
	case *http2.DataFrame:
		c.data(f, (*relayStream).fromClient)
	case *http2.RSTStreamFrame:
		if l := c.leg(f.StreamID); l != nil {
			l.st.peerReset(l, f.ErrCode)
		}
	case *http2.SettingsFrame:
		if err := c.handleSettings(f); err != nil {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
	case *http2.PingFrame:
		if f.IsAck() {
			return nil
		}
		c.queue(wItem{kind: wPing, ping: f.Data})
		if !c.pingAllowed(s.p.now(), s.p.pingMinTime) {
			// As grpc-go's server answers a client that pings more than
			// its keepalive policy allows; its calls end with the
			// connection.
			c.goAwayDebug(http2.ErrCodeEnhanceYourCalm, tooManyPings)
			return errTooManyPings
		}
	case *http2.WindowUpdateFrame:
		return c.handleWindowUpdate(f)
	case *http2.GoAwayFrame:
		c.mu.Lock()
		c.goAway = true
		c.mu.Unlock()
	case *http2.PushPromiseFrame:
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	return nil
}

// headers starts a call, or ends a request that ends with trailers.
func (s *relayServer) headers(c *h2conn, gc *guardedConn, f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	if l := c.leg(id); l != nil {
		if l.remoteEnded.Load() {
			// Half-closed (remote): RFC 9113 §5.1, STREAM_CLOSED.
			c.answerReset(id, http2.ErrCodeStreamClosed)
			l.st.peerReset(l, http2.ErrCodeStreamClosed)
			return nil
		}
		if !f.StreamEnded() {
			return http2.ConnectionError(http2.ErrCodeProtocol)
		}
		l.st.fromClient(nil, true)
		return nil
	}
	c.mu.Lock()
	if id%2 == 0 {
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeProtocol)
	}
	if id <= c.lastPeer {
		// A stream that was used and is closed now (RFC 9113 §5.1).
		c.mu.Unlock()
		return http2.ConnectionError(http2.ErrCodeStreamClosed)
	}
	c.lastPeer = id
	if c.goAway {
		c.mu.Unlock()
		c.answerReset(id, http2.ErrCodeRefusedStream)
		return nil
	}
	if malformedRequest(f.Fields) {
		// RFC 9113 §8.2.2: connection-specific fields make a request
		// malformed, a stream error of type PROTOCOL_ERROR (grpc-go's
		// server refuses "connection" too).
		c.mu.Unlock()
		c.answerReset(id, http2.ErrCodeProtocol)
		return nil
	}
	if f.Truncated {
		// Over max_header_bytes (SETTINGS_MAX_HEADER_LIST_SIZE): the
		// decoder kept nothing beyond it; the stream is refused before it
		// is a call, as grpc-go's server does (RST_STREAM FRAME_SIZE).
		c.mu.Unlock()
		c.answerReset(id, http2.ErrCodeFrameSize)
		return nil
	}
	if len(c.legs) >= s.lim.maxConcurrentStreams {
		// RFC 9113 §5.1.2: beyond the advertised limit. A client that
		// ignores the limit is flooding (its resets keep the streams of a
		// rapid-reset flood counted until their handlers ran): the
		// refusal counts as a premature reset, so such a flood closes
		// the connection even when the handlers fall behind.
		c.mu.Unlock()
		c.answerReset(id, http2.ErrCodeRefusedStream)
		gc.callEnded(true)
		return nil
	}
	st := &relayStream{srv: s, gc: gc, done: make(chan struct{}), ev: make(chan struct{}, 1), start: s.p.now()}
	st.down, st.up = &st.legs[0], &st.legs[1]
	st.down.st, st.up.st = st, st
	st.down.recvWin.Store(relayStreamWindow)
	st.up.recvWin.Store(relayStreamWindow)
	c.registerLocked(st.down, id)
	c.mu.Unlock()
	if f.StreamEnded() {
		st.reqEnd = true
		st.down.remoteEnded.Store(true)
	}
	// f.Fields is the block's own (readFrame copies each block's
	// fields out of its scratch): the handler may keep it.
	s.wg.Add(1)
	s.dispatch(relayWork{st: st, in: f.Fields})
	return nil
}

// leg finds the stream id of c.
func (c *h2conn) leg(id uint32) *leg {
	c.mu.Lock()
	l := c.legs[id]
	c.mu.Unlock()
	return l
}

func (c *h2conn) goAwayAndClose(code http2.ErrCode) {
	c.goAwayDebug(code, "")
}

// tooManyPings is the GOAWAY debug data grpc-go sends, and its clients
// look for, when a client pinged too often.
const tooManyPings = "too_many_pings"

// errTooManyPings ends a client connection that broke the keepalive
// policy (pingAllowed).
var errTooManyPings = errors.New("relay: too many pings from the client")

// goAwayDebug sends GOAWAY with code and debug data (RFC 9113 §6.8), then
// closes the connection.
func (c *h2conn) goAwayDebug(code http2.ErrCode, debug string) {
	c.mu.Lock()
	last := c.lastPeer
	c.goAway = true
	c.mu.Unlock()
	var data []byte
	if debug != "" {
		data = []byte(debug)
	}
	c.queue(wItem{kind: wGoAway, id: last, n: uint32(code), data: data})
	c.closeAfterFlush()
}

// teardown ends the streams of a connection whose reader ended.
func (c *h2conn) teardown() {
	c.closeAfterFlush()
	c.mu.Lock()
	legs := make([]*leg, 0, len(c.legs))
	for _, l := range c.legs {
		legs = append(legs, l)
	}
	c.mu.Unlock()
	for _, l := range legs {
		l.st.connLost(l)
	}
}

// relayStream is one call on the relay: its client stream (down) and its
// upstream stream (up).
type relayStream struct {
	srv   *relayServer
	gc    *guardedConn
	down  *leg // &legs[0]
	up    *leg // &legs[1]
	legs  [2]leg
	start time.Time
	hop   *telemetry.Hop

	// Read by the client connection's reader only.
	reqScan msgScan
	// capture takes the start of the first request message (guarded by
	// mu: the handler sets it while the reader may already forward).
	capture io.Writer
	capScan msgScan
	// Read by the upstream connection's reader only.
	respScan msgScan
	verdict  string

	done chan struct{} // closed once the call has ended
	// ev (capacity 1; sent under mu) tells the call's handler that
	// progressed or upEndedSet changed, or that the stream was refused.
	ev chan struct{}
	// reqSig (capacity 1; set under mu, by a relayMsgStream only) hears
	// that reqPending grew or the request ended.
	reqSig chan struct{}
	// sendSig (capacity 1; guarded by down.c.mu) hears that bytes queued
	// on down went out, for a relayMsgStream (nil: none).
	sendSig chan struct{}

	// endMu makes fail's decision and the trailers it sends one step as
	// cleanup sees it (cleanup takes it once finish has decided the end):
	// a status fail decided is queued before the stream is reset and
	// forgotten, whichever goroutine runs fail.
	endMu sync.Mutex

	mu          sync.Mutex
	opened      bool // the upstream stream exists; before, request bytes wait here
	reqPending  []relayChunk
	reqOne      [1]relayChunk // reqPending's storage while it holds one chunk
	reqEnd      bool
	respHeaders bool // HEADERS went to the client
	respDone    bool // the response's end is decided
	finished    bool
	code        codes.Code
	msg         string
	ownStatus   bool      // the status is the proxy's, not the upstream's
	canceled    bool      // the client reset the stream
	upReset     bool      // RST_STREAM already sent or received upstream
	answeredSet bool      // the upstream's first HEADERS arrived
	answeredAt  time.Time // when (for the breaker's slow-call measure)
	progressed  bool      // the client sent DATA (or the stream was refused) since the handler last looked
	upEndedSet  bool      // the upstream's trailers arrived
	dl          time.Time // the call's deadline (zero: none), set before the upstream stream opens
	// retry: the upstream stream may be opened again if the upstream
	// refuses it (retryRefused); retryBody is a copy of the request bytes
	// sent on it. refused: it was, and the handler opens it again.
	// sending: the client's reader is sending on it (fromClient); sent
	// (on mu, made when needed) hears that it is done.
	retry, refused, retried, sending bool
	retryBody                        []byte
	sent                             *sync.Cond
	// upCredited: request bytes written upstream (their window went back
	// to the client); recredited: those of them sent again after a
	// refusal, not to be given back twice. Guarded by up.c.mu.
	upCredited, recredited int64
	trailers               []hpack.HeaderField // the upstream's, until the handler sends them
}

// msgScan follows the gRPC length-prefixed messages in a DATA stream
// (gRPC over HTTP/2, "Length-Prefixed-Message"): 1 byte compressed flag,
// 4 bytes big-endian length, then the message.
type msgScan struct {
	hdr  [5]byte
	nhdr int
	left uint32 // bytes of the current message still to come
	seen int    // messages begun
}

// scan reads b and returns the length of a message over max (0: none),
// and the part of b that belongs to the first message, for the capture.
func (m *msgScan) scan(b []byte, max int) (over uint32, first []byte) {
	for len(b) > 0 {
		if m.left > 0 {
			n := min(uint32(len(b)), m.left)
			if m.seen == 1 {
				first = b[:n]
			}
			m.left -= n
			b = b[n:]
			continue
		}
		n := copy(m.hdr[m.nhdr:], b)
		m.nhdr += n
		b = b[n:]
		if m.nhdr < 5 {
			return 0, first
		}
		m.nhdr = 0
		m.seen++
		m.left = uint32(m.hdr[1])<<24 | uint32(m.hdr[2])<<16 | uint32(m.hdr[3])<<8 | uint32(m.hdr[4])
		if int64(m.left) > int64(max) {
			return m.left, first
		}
	}
	return 0, first
}

// fromClient forwards a client DATA frame's payload (and its end).
func (st *relayStream) fromClient(data []byte, end bool) {
	if end {
		st.down.remoteEnded.Store(true)
	}
	if len(data) > 0 {
		over, _ := st.reqScan.scan(data, st.srv.maxMsg)
		if over > 0 {
			st.fail(codes.ResourceExhausted, fmt.Sprintf("grpc: received message larger than max (%d vs. %d)", over, st.srv.maxMsg), true)
			return
		}
	}
	st.mu.Lock()
	if !st.answeredSet {
		// The handler restarts its first-response timer; once the
		// upstream answered, nothing waits for the client's progress.
		st.progressed = true
		st.signalLocked()
	}
	if st.respDone && st.finished {
		st.mu.Unlock()
		return
	}
	if st.capture != nil && len(data) > 0 {
		st.captureLocked(data)
	}
	var ch relayChunk
	if len(data) > 0 {
		// The Framer reuses data for its next frame.
		ch = newRelayChunk(data)
	}
	if !st.opened {
		if len(ch.b) > 0 {
			if st.reqPending == nil {
				st.reqPending = st.reqOne[:0]
			}
			st.reqPending = append(st.reqPending, ch)
		}
		st.reqEnd = st.reqEnd || end
		sig := st.reqSig
		st.mu.Unlock()
		if sig != nil {
			select {
			case sig <- struct{}{}:
			default:
			}
		}
		return
	}
	if !st.retry {
		st.mu.Unlock()
		st.up.c.sendChunk(st.up, ch, end, nil)
		return
	}
	// Until the upstream answers, what goes on its stream is kept to be
	// sent again if it refuses the stream (retryRefused), which waits for
	// this send to finish before it opens the stream again.
	if len(st.retryBody)+len(data) > relayRetryMaxBytes {
		st.retry, st.retryBody = false, nil
	} else {
		st.retryBody = append(st.retryBody, data...)
		st.reqEnd = st.reqEnd || end
		st.sending = true
	}
	sending := st.sending
	st.mu.Unlock()
	st.up.c.sendChunk(st.up, ch, end, nil)
	if sending {
		st.mu.Lock()
		st.sending = false
		if st.sent != nil {
			st.sent.Broadcast()
		}
		st.mu.Unlock()
	}
}

// fromUpstream forwards an upstream DATA frame's payload.
func (st *relayStream) fromUpstream(data []byte, end bool) {
	if len(data) > 0 {
		if over, _ := st.respScan.scan(data, st.srv.maxMsg); over > 0 {
			st.fail(codes.ResourceExhausted, fmt.Sprintf("grpc: received message larger than max (%d vs. %d)", over, st.srv.maxMsg), true)
			return
		}
	}
	if end {
		// A response must end with trailers (gRPC over HTTP/2); grpc-go
		// clients report INTERNAL without them.
		st.up.remoteEnded.Store(true)
		st.mu.Lock()
		if !st.respDone {
			st.respDone = true
			st.setResultLocked(codes.Internal, "server closed the stream without sending trailers", false)
		}
		st.mu.Unlock()
	}
	var ch relayChunk
	if len(data) > 0 {
		// The Framer reuses data for its next frame.
		ch = newRelayChunk(data)
	}
	st.down.c.sendChunk(st.down, ch, end, nil)
}

// captureLocked feeds the capture with the first message's part of b.
func (st *relayStream) captureLocked(b []byte) {
	if _, first := st.capScan.scan(b, 1<<31-1); len(first) > 0 {
		st.capture.Write(first)
	}
	if st.capScan.seen > 1 || (st.capScan.seen == 1 && st.capScan.left == 0 && st.capScan.nhdr == 0) {
		st.capture = nil // the first message is complete
	}
}

// credit gives n bytes, taken by l's peer, back to the stream's other side.
func (st *relayStream) credit(l *leg, n int32) {
	if l == st.up {
		st.upCredited += int64(n)
		if st.recredited > 0 {
			// Sent again after a refusal: the client has this window
			// back already.
			k := min(int64(n), st.recredited)
			st.recredited -= k
			if n -= int32(k); n == 0 {
				return
			}
		}
	}
	src := st.down
	if l == st.down {
		src = st.up
		if st.sendSig != nil {
			select {
			case st.sendSig <- struct{}{}:
			default:
			}
		}
	}
	if src.c != nil {
		src.c.giveBack(src, n)
	}
}

// sentEnd is called (under l.c.mu) when l's END_STREAM is queued.
func (st *relayStream) sentEnd(l *leg) {
	if l == st.down {
		st.finish()
	}
}

// signalLocked wakes the call's handler (under st.mu).
func (st *relayStream) signalLocked() {
	select {
	case st.ev <- struct{}{}:
	default:
	}
}

// finish ends the call; the handler then accounts it and frees its legs.
func (st *relayStream) finish() {
	st.mu.Lock()
	if !st.finished {
		st.finished = true
		st.respDone = true
		close(st.done)
	}
	st.mu.Unlock()
}

func (st *relayStream) setResultLocked(code codes.Code, msg string, own bool) {
	st.code, st.msg, st.ownStatus = code, msg, own
}

// fail ends the call with the proxy's own status, in trailers (or a
// trailers-only response if nothing was sent yet), and resets the
// upstream stream when rstUp.
func (st *relayStream) fail(code codes.Code, msg string, rstUp bool) {
	st.endMu.Lock()
	defer st.endMu.Unlock()
	st.mu.Lock()
	if st.respDone {
		st.mu.Unlock()
		return
	}
	st.respDone = true
	hdrs := st.respHeaders
	st.respHeaders = true
	st.setResultLocked(code, msg, true)
	up := rstUp && st.opened && !st.upReset
	if up {
		st.upReset = true
	}
	st.mu.Unlock()
	if up {
		st.up.c.queue(wItem{kind: wRST, id: st.up.id, n: uint32(http2.ErrCodeCancel)})
	}
	st.down.c.send(st.down, nil, true, statusFields(code, msg, !hdrs))
}

// statusFields are the trailers of a status, with the response's
// pseudo-header and content-type when they form a trailers-only response.
func statusFields(code codes.Code, msg string, only bool) []hpack.HeaderField {
	var f []hpack.HeaderField
	if only {
		f = append(f, hpack.HeaderField{Name: ":status", Value: "200"}, hpack.HeaderField{Name: "content-type", Value: "application/grpc"})
	}
	f = append(f, hpack.HeaderField{Name: "grpc-status", Value: strconv.Itoa(int(code))})
	if msg != "" {
		f = append(f, hpack.HeaderField{Name: "grpc-message", Value: encodeGRPCMessage(msg)})
	}
	return f
}

// peerReset handles RST_STREAM from either side (or a stream error).
func (st *relayStream) peerReset(l *leg, code http2.ErrCode) {
	if l == st.down {
		st.mu.Lock()
		st.canceled = true
		up := st.opened && !st.upReset
		if up {
			// Not before the upstream stream exists: cleanup resets
			// one opened after this.
			st.upReset = true
		}
		if !st.respDone {
			st.respDone = true
			st.setResultLocked(codes.Canceled, "client canceled", true)
		}
		st.mu.Unlock()
		st.down.remoteEnded.Store(true)
		if up {
			st.up.c.queue(wItem{kind: wRST, id: st.up.id, n: uint32(http2.ErrCodeCancel)})
		}
		st.finish()
		return
	}
	if code == http2.ErrCodeRefusedStream && st.retryRefused(l) {
		return
	}
	st.mu.Lock()
	st.upReset = true
	st.mu.Unlock()
	st.up.remoteEnded.Store(true)
	// As grpc-go's client maps an upstream's RST_STREAM (grpcreset.go).
	c := resetCodeAt(st.dl, code)
	st.fail(c, "hopwatch: "+errUpstreamReset.Error()+" ("+code.String()+")", false)
}

// relayRetryMaxBytes bounds the copy of a request's first bytes that a
// call keeps until the upstream answers, to send them again if the
// upstream refuses the stream: grpc-go's client's retry buffer
// (MaxRetryRPCBufferSize), which is also the stream window, so what the
// client sent before the stream opened always fits. A refusal after more
// was sent fails the call (UNAVAILABLE), as on grpc-go's path.
const relayRetryMaxBytes = 256 << 10

// retryRefused handles the upstream's refusal of st's stream (RST_STREAM
// REFUSED_STREAM, or a stream above a GOAWAY's last stream id): such a
// stream was not processed and is safe to retry (RFC 9113 §8.7), and
// grpc-go's client retries it once, transparently. So does the relay,
// if the upstream sent nothing on the stream and all the relay sent on
// it is in st.retryBody: the stream is forgotten on its connection and the
// handler opens it again (call). It reports whether it will.
func (st *relayStream) retryRefused(l *leg) bool {
	st.mu.Lock()
	ok := st.retry && !st.answeredSet && !st.respDone && !st.canceled && !st.upReset
	if ok {
		st.retry, st.retried = false, true
		st.opened = false
		if len(st.retryBody) > 0 {
			// Not pooled (buf nil): the writer leaves it alone.
			st.reqPending = append([]relayChunk{{b: st.retryBody}}, st.reqPending...)
		}
		st.retryBody = nil
	}
	st.mu.Unlock()
	if !ok {
		return false
	}
	l.c.remove(l)
	// Only now may the handler use l again (takeRefused).
	st.mu.Lock()
	st.refused = true
	st.signalLocked()
	st.mu.Unlock()
	return true
}

// takeRefused reports (once) that the upstream stream must be opened
// again, once the client's reader no longer sends on the refused one.
func (st *relayStream) takeRefused() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	r := st.refused
	st.refused = false
	if r && st.sending {
		if st.sent == nil {
			st.sent = sync.NewCond(&st.mu)
		}
		for st.sending {
			st.sent.Wait()
		}
	}
	return r
}

// resetCodeAt is resetCode for a call whose deadline is dl (zero: none).
func resetCodeAt(dl time.Time, code http2.ErrCode) codes.Code {
	ctx := context.Background()
	if !dl.IsZero() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, dl)
		defer cancel()
	}
	return resetCode(ctx, code)
}

// connLost ends a stream whose connection closed.
func (st *relayStream) connLost(l *leg) {
	if l == st.down {
		st.peerReset(l, http2.ErrCodeCancel)
		return
	}
	st.up.remoteEnded.Store(true)
	st.mu.Lock()
	st.upReset = true
	st.mu.Unlock()
	code, msg := classify(errBadGateway)
	st.fail(code, msg, false)
}

// relayHeader is a header list as routes.Header and as OpenTelemetry's
// TextMapCarrier (names are lowercase in HTTP/2, as propagators use).
type relayHeader []hpack.HeaderField

func (h *relayHeader) Get(key string) string {
	for _, f := range *h {
		if f.Name == key {
			return f.Value
		}
	}
	return ""
}

func (h *relayHeader) Set(key, value string) {
	h.del(key)
	*h = append(*h, hpack.HeaderField{Name: key, Value: value})
}

func (h *relayHeader) Keys() []string {
	keys := make([]string, 0, len(*h))
	for _, f := range *h {
		keys = append(keys, f.Name)
	}
	return keys
}

func (h *relayHeader) del(key string) {
	out := (*h)[:0]
	for _, f := range *h {
		if f.Name != key {
			out = append(out, f)
		}
	}
	*h = out
}

// malformedRequest reports connection-specific fields in a request
// (RFC 9113 §8.2.2): any of them, or te other than "trailers".
func malformedRequest(fields []hpack.HeaderField) bool {
	for _, f := range fields {
		switch f.Name {
		case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade":
			return true
		case "te":
			if f.Value != "trailers" {
				return true
			}
		}
	}
	return false
}

// hopByHop reports a header that belongs to one connection, never
// forwarded (RFC 9113 §8.2.2; grpc-go drops them too).
func hopByHop(name string) bool {
	switch name {
	case "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "host":
		return true
	}
	return false
}

// relayTimers are stopped timers for the relay's calls (deadline, first
// response), reused: with Go ≥ 1.23 semantics a stopped timer delivers
// nothing stale after Reset.
var relayTimers sync.Pool

func getRelayTimer(d time.Duration) *time.Timer {
	if t, ok := relayTimers.Get().(*time.Timer); ok {
		t.Reset(d)
		return t
	}
	return time.NewTimer(d)
}

func putRelayTimer(t *time.Timer) {
	t.Stop()
	relayTimers.Put(t)
}

// serve runs one call: route, time, open upstream, wait for its end.
func (st *relayStream) serve(in []hpack.HeaderField) {
	s := st.srv
	p := s.p
	gen := p.acquire()
	defer gen.release()
	defer st.cleanup()

	var method, authority, ctype string
	var dl time.Time
	// in is this call's own (readFrame copies each block out): the
	// metadata is filtered in place, md never passing the field read.
	md := relayHeader(in[:0])
	for _, f := range in {
		switch f.Name {
		case ":path":
			method = f.Value
		case ":authority":
			authority = f.Value
			md = append(md, f)
		case ":method", ":scheme":
			if f.Name == ":method" && f.Value != "POST" {
				ctype = "\x00bad"
			}
		case "grpc-timeout":
			if d, ok := parseGRPCTimeout(f.Value); ok {
				dl = st.start.Add(d)
			}
		case "content-type":
			if ctype != "\x00bad" {
				ctype = f.Value
			}
			md = append(md, f)
		default:
			if !hopByHop(f.Name) && !strings.HasPrefix(f.Name, ":") {
				md = append(md, f)
			}
		}
	}
	if st.isCanceled() {
		// Reset before its handler ran: nothing to forward (the reset
		// counts as premature in cleanup).
		return
	}
	if !strings.HasPrefix(ctype, "application/grpc") {
		// Not gRPC: grpc-go's server answers 415 too.
		st.mu.Lock()
		st.respDone = true
		st.mu.Unlock()
		st.down.c.send(st.down, nil, true, []hpack.HeaderField{{Name: ":status", Value: "415"}})
		return
	}
	if err := routes.CheckGRPCMethod(method); err != nil {
		p.tel.Unrouted(s.listener)
		code, msg := classify(fmt.Errorf("%w: %w", errBadRequest, err))
		st.fail(code, msg, false)
		return
	}
	req := routes.Request{Host: authority, Path: method, Method: "POST", Header: &md}
	idx := gen.table.Match(s.listener, &req)
	if idx < 0 {
		p.tel.Unrouted(s.listener)
		st.fail(codes.Unimplemented, "hopwatch: no route for "+method, false)
		return
	}
	rt := gen.routes[idx]
	if rt.res != nil {
		// Retry or fallback: the call needs whole messages.
		st.serveMessages(gen, rt, md, method, ctype, dl)
		return
	}
	if rt.spec.Timeout > 0 {
		if d := st.start.Add(rt.spec.Timeout); dl.IsZero() || d.Before(dl) {
			dl = d
		}
	}
	st.dl = dl
	ctx, hop := rt.tel.Start(p.ctx, &md, gen.listeners[s.listener].callerOf(&md, st.down.c.tlsState), method)
	st.hop = hop
	st.verdict = hop.VerdictKey()
	if w := hop.MessageCapture(); w != nil {
		st.mu.Lock()
		st.capture = w
		for _, ch := range st.reqPending {
			st.captureLocked(ch.b)
		}
		st.mu.Unlock()
	}
	code := st.call(ctx, rt, hop, md, method, dl)
	hop.End(code.String(), telemetry.GRPCOutcome(code, st.isCanceled()))
	// The upstream's trailers go to the client once the hop is recorded,
	// as on the grpc-go path: whoever sees the call end sees its
	// telemetry.
	st.mu.Lock()
	trailers := st.trailers
	st.trailers = nil
	st.mu.Unlock()
	if trailers != nil {
		st.down.c.send(st.down, nil, true, trailers)
		// The response may still wait for the client's window: the call
		// is over once all of it went out (or the client reset it, or
		// its connection closed), as a grpc-go server stream is.
		select {
		case <-st.done:
			// Mostly: the window had room and send queued all of it;
			// no timer to arm and stop.
		default:
			st.awaitSent(dl)
		}
	}
}

// awaitSent waits for the response to go out to the client, until the
// call's deadline (zero: none).
func (st *relayStream) awaitSent(dl time.Time) {
	if dl.IsZero() {
		<-st.done
		return
	}
	t := getRelayTimer(time.Until(dl))
	select {
	case <-st.done:
	case <-t.C:
	}
	putRelayTimer(t)
}

// endedEarly reports a call whose end is decided already, and its status.
func (st *relayStream) endedEarly() (codes.Code, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.code, st.respDone
}

func (st *relayStream) isCanceled() bool {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.canceled
}

// result is the call's status once it ended.
func (st *relayStream) result() (codes.Code, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.code, st.canceled
}

// call forwards the routed call, as callGRPC does on the grpc-go path.
func (st *relayStream) call(ctx context.Context, rt *route, hop *telemetry.Hop, md relayHeader, method string, dl time.Time) codes.Code {
	p := st.srv.p
	gate, err := rt.up.admit()
	if err != nil {
		hop.Rejected(reasonOf(err))
		code, msg := classify(err)
		st.fail(code, msg, false)
		return code
	}
	defer gate.release()

	// The call ends at its deadline (the client's grpc-timeout, shortened
	// by the route's timeout). Without a route timeout, the first
	// response (headers or a status) must also come within
	// FirstResponseTimeout of the client's last progress, as on the
	// grpc-go path (firstResponse).
	var deadline, first <-chan time.Time
	if !dl.IsZero() {
		t := getRelayTimer(time.Until(dl))
		defer putRelayTimer(t)
		deadline = t.C
	}
	var frTimer *time.Timer
	if rt.spec.Timeout == 0 {
		frTimer = getRelayTimer(p.firstResp)
		defer putRelayTimer(frTimer)
		first = frTimer.C
	}

	if code, ended := st.endedEarly(); ended {
		// The client reset the call, or it failed (a message over the
		// limit), before anything went upstream: nothing to open.
		return code
	}
	u := rt.up
	var tried uint64
	var ep *endpoint
	var att *telemetry.Attempt
	var lastErr error
	waitEnded := false
	var rc *relayClient
	var hdr relayHeader
	for attempt := 0; attempt < len(u.eps); attempt++ {
		i := u.pickRelay(tried)
		if i < 0 {
			break
		}
		tried |= 1 << min(i, 63)
		e := u.eps[i]
		_, a := hop.Attempt(ctx, e.addr)
		out := st.upstreamHeaders(md, method, e, dl, u.tls)
		a.Inject(&out, out.del)
		e.inflight.Add(1)
		err := u.relays[i].open(st, out, relayStop{done: st.done, deadline: deadline, first: first})
		if err == nil || errors.Is(err, errRelayWaitEnded) {
			// Ended while waiting for the upstream's stream quota: as a
			// call that timed out (or was reset) upstream.
			ep, att = e, a
			rc, hdr = u.relays[i], out
			waitEnded = err != nil
			break
		}
		var hle *headerListError
		if errors.As(err, &hle) {
			// The call's fault, not the endpoint's: it ends here.
			st.fail(codes.Internal, hle.Error(), false)
			ep, att = e, a
			waitEnded = true
			break
		}
		e.inflight.Add(-1)
		lastErr = err
		a.End(codes.Unavailable.String(), telemetry.OutcomeError)
		e.markDown(u.now())
		if st.isCanceled() {
			break
		}
	}
	if ep == nil {
		if lastErr == nil {
			lastErr = errNoEndpoint
		}
		code, msg := classify(upstreamError(lastErr))
		st.fail(code, msg, false)
		return code
	}
	callStart := p.now()
	waitAnswer := true
wait:
	for !waitEnded {
		firstFired := false
		select {
		case <-st.ev:
			if st.takeRefused() {
				// The upstream refused the stream unprocessed: open it
				// again (retryRefused). A GOAWAY may come before the
				// writer took the first HEADERS: a copy is sent.
				hdr = append(relayHeader(nil), hdr...)
				if !dl.IsZero() {
					setGRPCTimeout(hdr, time.Until(dl))
				}
				err := rc.open(st, hdr, relayStop{done: st.done, deadline: deadline, first: first})
				if errors.Is(err, errRelayWaitEnded) {
					break wait
				}
				if err != nil {
					code, msg := classify(upstreamError(err))
					st.fail(code, msg, false)
					break wait
				}
				continue
			}
		case <-first:
			// The upstream's answer does not wake the handler (one
			// wake-up less per call, see upstreamHeadersIn): whether it
			// came is looked up now.
			firstFired = true
		case <-st.done:
			break wait
		case <-deadline:
			break wait
		}
		st.mu.Lock()
		answered, answeredAt, progressed, upEnded := st.answeredSet, st.answeredAt, st.progressed, st.upEndedSet
		st.progressed = false
		st.mu.Unlock()
		switch {
		case waitAnswer && answered:
			waitAnswer = false
			gate.firstResponseAt(answeredAt)
			if frTimer != nil {
				frTimer.Stop()
				first = nil
			}
		case waitAnswer && firstFired:
			break wait
		case waitAnswer && progressed && frTimer != nil:
			// The client sent more: the upstream owes an answer
			// only once it has the request.
			frTimer.Reset(p.firstResp)
		}
		if upEnded {
			break
		}
	}
	if waitAnswer {
		// Ended before the handler looked: the breaker still times the
		// call to its first response.
		st.mu.Lock()
		answered, answeredAt := st.answeredSet, st.answeredAt
		st.mu.Unlock()
		if answered {
			gate.firstResponseAt(answeredAt)
		}
	}
	// Ended by a timer: reset upstream, DEADLINE_EXCEEDED to the client,
	// worded as on the grpc-go path; the call ends here even if the
	// client does not read (cleanup resets what is still open). Nothing
	// to do when the call has ended already (fail checks again).
	if _, ended := st.endedEarly(); !ended {
		code, msg := classify(errTimeout)
		st.fail(code, msg, true)
	}
	code, canceled := st.result()
	ep.inflight.Add(-1)
	if code != codes.Unavailable {
		ep.observe(p.now(), p.now().Sub(callStart))
	}
	c := classifyGRPC(code, canceled)
	u.outcome(ep, c)
	gate.report(c)
	att.End(code.String(), telemetry.GRPCOutcome(code, canceled))
	return code
}

// upstreamHeaders is the request's header block for the upstream: the
// pseudo-headers grpc-go's client would send to ep, then the metadata as
// received, and the deadline the proxy holds the call to as grpc-timeout.
func (st *relayStream) upstreamHeaders(md relayHeader, method string, ep *endpoint, dl time.Time, https bool) relayHeader {
	scheme := "http"
	if https {
		scheme = "https"
	}
	authority := ep.authority
	if authority == "" {
		authority = ep.addr
	}
	out := make(relayHeader, 0, len(md)+6)
	out = append(out,
		hpack.HeaderField{Name: ":method", Value: "POST"},
		hpack.HeaderField{Name: ":scheme", Value: scheme},
		hpack.HeaderField{Name: ":path", Value: method},
		hpack.HeaderField{Name: ":authority", Value: authority},
		hpack.HeaderField{Name: "te", Value: "trailers"},
	)
	if !dl.IsZero() {
		out = append(out, hpack.HeaderField{Name: "grpc-timeout", Value: encodeGRPCTimeout(time.Until(dl))})
	}
	for _, f := range md {
		if f.Name == ":authority" {
			continue
		}
		out = append(out, f)
	}
	return out
}

// setGRPCTimeout rewrites the grpc-timeout of a header list to d.
func setGRPCTimeout(h relayHeader, d time.Duration) {
	for i := range h {
		if h[i].Name == "grpc-timeout" {
			h[i].Value = encodeGRPCTimeout(d)
		}
	}
}

// upstreamHeadersIn handles a HEADERS block from the upstream: response
// headers, trailers, or a trailers-only response.
func (st *relayStream) upstreamHeadersIn(fields []hpack.HeaderField, end, truncated bool) {
	st.mu.Lock()
	if !st.answeredSet {
		// The handler is not woken for this (a unary call's trailers
		// follow at once, and they do wake it): it reads answeredSet
		// when it wakes, at the end or when the first-response timer
		// fires.
		st.answeredSet = true
		st.answeredAt = st.srv.p.now()
		st.hop.FirstByte()
		st.retry, st.retryBody = false, nil
	}
	st.mu.Unlock()
	if truncated {
		st.fail(codes.Internal, "hopwatch: "+errBadGateway.Error()+" (header list too large)", true)
		return
	}
	// fields is this header block's own (see relayClient.read): filtered
	// in place.
	out := fields[:0]
	var grpcStatus, grpcMsg, httpStatus string
	hasStatus := false
	for _, f := range fields {
		switch {
		case hopByHop(f.Name):
			continue
		case st.verdict != "" && f.Name == st.verdict:
			st.hop.Verdict(f.Value)
			continue
		case f.Name == "grpc-status":
			grpcStatus, hasStatus = f.Value, true
		case f.Name == "grpc-message":
			grpcMsg = f.Value
		case f.Name == ":status":
			httpStatus = f.Value
		}
		out = append(out, f)
	}
	if !end {
		st.mu.Lock()
		if st.respDone || st.respHeaders {
			st.mu.Unlock()
			return
		}
		st.respHeaders = true
		st.down.c.queue(wItem{kind: wHeaders, id: st.down.id, fields: out})
		st.mu.Unlock()
		return
	}
	st.up.remoteEnded.Store(true)
	code := codes.Unknown
	if hasStatus {
		if n, err := strconv.ParseUint(grpcStatus, 10, 32); err == nil {
			code = codes.Code(n)
		}
	} else if httpStatus != "" && httpStatus != "200" {
		code = httpStatusCode(httpStatus)
	} else {
		code = codes.Internal
	}
	st.mu.Lock()
	if st.respDone {
		st.mu.Unlock()
		return
	}
	st.respDone = true
	st.respHeaders = true
	st.setResultLocked(code, grpcMsg, false)
	// The handler sends them after recording the hop.
	st.trailers = out
	st.upEndedSet = true
	st.signalLocked()
	st.mu.Unlock()
}

// httpStatusCode is the status grpc-go's client gives a response with a
// non-200 HTTP status and no grpc-status (internal/transport
// HTTPStatusConvTab).
func httpStatusCode(s string) codes.Code {
	switch s {
	case "400":
		return codes.Internal
	case "401":
		return codes.Unauthenticated
	case "403":
		return codes.PermissionDenied
	case "404":
		return codes.Unimplemented
	case "429", "502", "503", "504":
		return codes.Unavailable
	}
	return codes.Unknown
}

// cleanup runs when the call has ended: the streams that are still open
// on the wire are reset (NO_ERROR after a complete response, as grpc-go
// does when the other half is still open; CANCEL otherwise), and both
// legs are forgotten.
func (st *relayStream) cleanup() {
	st.finish()
	// A fail that decided the end before finish has queued its trailers
	// once it lets go of endMu (later ones find the end decided), so what
	// it decided is read under endMu (fail's lock order: endMu, then mu).
	st.endMu.Lock()
	st.mu.Lock()
	own := st.ownStatus
	upReset := st.upReset
	opened := st.opened
	st.mu.Unlock()
	st.endMu.Unlock()
	code := http2.ErrCodeNo
	if own {
		code = http2.ErrCodeCancel
	}
	if !st.down.remoteEnded.Load() || !st.down.ended() {
		st.down.c.queue(wItem{kind: wRST, id: st.down.id, n: uint32(code)})
	}
	st.down.c.remove(st.down)
	if opened {
		if !upReset && (!st.up.remoteEnded.Load() || !st.up.ended()) {
			st.up.c.queue(wItem{kind: wRST, id: st.up.id, n: uint32(code)})
		}
		st.up.c.remove(st.up)
	}
	if st.gc != nil {
		st.gc.callEnded(st.isCanceled() && st.srv.p.now().Sub(st.start) < prematureResetLifetime)
	}
}

// ended reports whether l's END_STREAM went out.
func (l *leg) ended() bool {
	l.c.mu.Lock()
	defer l.c.mu.Unlock()
	return l.endSent
}

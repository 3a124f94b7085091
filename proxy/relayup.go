package proxy

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"golang.org/x/net/http2"
)

// relayClient is the relay's side of one upstream endpoint: HTTP/2
// connections with prior knowledge in cleartext (h2c, RFC 9113 §3.3) or
// by ALPN over TLS (§3.2), dialed on first use. New streams go to one
// connection, as grpc-go's client does: they wait there for the
// upstream's stream quota (its SETTINGS_MAX_CONCURRENT_STREAMS, from its
// first SETTINGS frame on) in the order they came, until the call's
// deadline or end. A connection the upstream sent GOAWAY on takes no new
// streams: the next one goes to a new connection, while its streams
// finish (RFC 9113 §6.8).
type relayClient struct {
	addr string
	// authority is the endpoint as written when addr is one of its
	// resolved addresses: with TLS, the name to verify (unless
	// tls.server_name says otherwise).
	authority string
	conf      upstreamConnConf

	mu     sync.Mutex
	conns  []*h2conn
	closed bool
	wg     sync.WaitGroup // readers
}

func newRelayClient(addr, authority string, conf upstreamConnConf) *relayClient {
	return &relayClient{addr: addr, authority: authority, conf: conf}
}

// errRelayClosed: the endpoint was released while a call wanted it.
var errRelayClosed = errors.New("relay: upstream endpoint closed")

// relayStop is what ends a call's wait for an upstream stream: the
// call's end (the client reset it), its deadline, its first-response
// timeout (nil channels: none).
type relayStop struct {
	done            <-chan struct{}
	deadline, first <-chan time.Time
}

// errNoSettings: an upstream connection closed before the endpoint's
// SETTINGS came (within dial_timeout): the endpoint is unreachable.
var errNoSettings = fmt.Errorf("%w: no HTTP/2 SETTINGS from the endpoint", errNoEndpoint)

// errRelayWaitEnded: the call ended (deadline, first-response timeout,
// the client's reset) while its stream waited for the upstream's quota.
// Not the endpoint's fault: it is not marked down.
var errRelayWaitEnded = errors.New("relay: the call ended while waiting for an upstream stream")

// open starts st's upstream stream with the header list hdr, on a
// connection that can take it, once its stream quota allows, and sends
// what the client already sent.
func (rc *relayClient) open(st *relayStream, hdr relayHeader, stop relayStop) error {
	for try := 0; try < 3; try++ {
		c, err := rc.conn()
		if err != nil {
			return err
		}
		if ok, err := c.openStream(st, hdr, stop); ok || err != nil {
			return err
		}
	}
	return fmt.Errorf("%w: no connection takes new streams", errNoEndpoint)
}

// quotaWaiter is a stream waiting for the upstream's stream quota.
type quotaWaiter struct {
	ch      chan struct{} // capacity 1: granted, or look again
	queued  bool          // in c.quotaWait (under c.mu)
	granted bool          // a slot is reserved for it (under c.mu)
}

// openStream opens st's stream on c once c has quota for it: the streams
// open on c (its legs, and the slots granted to waiters) are under the
// upstream's SETTINGS_MAX_CONCURRENT_STREAMS (RFC 9113 §5.1.2; a stream
// beyond it is refused, REFUSED_STREAM), which is 0 until the upstream's
// first SETTINGS: grpc-go's client waits for those too. Streams wait in
// order. It reports false (and no error) when c takes no new streams, and
// errRelayWaitEnded when stop ended the wait.
func (c *h2conn) openStream(st *relayStream, hdr relayHeader, stop relayStop) (bool, error) {
	var w *quotaWaiter
	c.mu.Lock()
	for {
		if c.goAway || c.isClosed() || c.nextID >= 1<<31-1 {
			c.goAway = true
			c.dropWaiterLocked(w)
			c.mu.Unlock()
			if err := c.closeError(); errors.Is(err, errNoSettings) {
				return false, err
			}
			return false, nil
		}
		if w != nil && w.granted {
			w.granted = false
			c.reserved--
			break
		}
		if w == nil && len(c.quotaWait) == 0 && c.hasQuotaLocked() {
			break
		}
		if w == nil {
			w = &quotaWaiter{ch: make(chan struct{}, 1)}
		}
		if !w.queued {
			w.queued = true
			c.quotaWait = append(c.quotaWait, w)
		}
		c.mu.Unlock()
		var err error
		select {
		case <-w.ch:
		case <-c.closed:
		case <-stop.done:
			err = errRelayWaitEnded
		case <-stop.deadline:
			err = errRelayWaitEnded
		case <-stop.first:
			err = errRelayWaitEnded
		}
		c.mu.Lock()
		if err != nil {
			c.dropWaiterLocked(w)
			c.mu.Unlock()
			return false, err
		}
	}
	if max := c.peerMaxHeaderList.Load(); max > 0 && headerListSize(hdr) > max {
		// RFC 9113 §10.5.1: the upstream would not take it, and a
		// grpc-go upstream ends the whole connection over it. grpc-go's
		// client fails the call instead, before sending it.
		c.grantLocked() // the slot goes to the next stream
		c.mu.Unlock()
		return false, &headerListError{max: max}
	}
	id := c.nextID
	c.nextID += 2
	// A stream opened again after a refusal (retryRefused) starts over.
	st.up.recvWin.Store(relayStreamWindow)
	st.up.unacked.Store(0)
	st.up.remoteEnded.Store(false)
	st.up.endSent, st.up.trailers = false, nil
	c.registerLocked(st.up, id)
	c.queue(wItem{kind: wHeaders, id: id, fields: hdr})
	st.mu.Lock()
	st.opened = true
	pending, end := st.reqPending, st.reqEnd
	st.reqPending = nil
	if !st.retried {
		// Kept until the upstream answers, to open the stream again if
		// it refuses it: the writer owns pending from now on.
		st.retry, st.retryBody = retainRequest(pending)
	} else {
		// The copy kept goes again: the window of what was written
		// of it went back to the client then.
		st.recredited, st.upCredited = st.upCredited, 0
	}
	st.mu.Unlock()
	st.up.pending = pending
	st.up.end = end
	c.flushLocked(st.up)
	c.mu.Unlock()
	return true, nil
}

// headerListError: the request's header list is over the upstream's
// SETTINGS_MAX_HEADER_LIST_SIZE. Its text is grpc-go's client's.
type headerListError struct{ max uint32 }

func (e *headerListError) Error() string {
	return fmt.Sprintf("header list size to send violates the maximum size (%d bytes) set by server", e.max)
}

// headerListSize is a header list's size as SETTINGS_MAX_HEADER_LIST_SIZE
// counts it (RFC 9113 §6.5.2).
func headerListSize(h relayHeader) uint32 {
	var n uint32
	for _, f := range h {
		n += f.Size()
	}
	return n
}

// retainRequest copies the request bytes sent when a stream opens, up to
// relayRetryMaxBytes; ok false: too many to keep.
func retainRequest(pending []relayChunk) (ok bool, body []byte) {
	n := 0
	for _, ch := range pending {
		n += len(ch.b)
	}
	if n > relayRetryMaxBytes {
		return false, nil
	}
	if n == 0 {
		return true, nil
	}
	body = make([]byte, 0, n)
	for _, ch := range pending {
		body = append(body, ch.b...)
	}
	return true, body
}

// closeError is why the connection closed (nil: open).
func (c *h2conn) closeError() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.closeErr
}

// hasQuotaLocked reports whether the upstream takes one more stream.
func (c *h2conn) hasQuotaLocked() bool {
	return uint32(len(c.legs)+c.reserved) < c.peerMaxStreams.Load()
}

// grantLocked reserves the slots that are free for the streams that wait
// longest; called whenever a stream ends or the upstream's SETTINGS
// change.
func (c *h2conn) grantLocked() {
	for len(c.quotaWait) > 0 && c.hasQuotaLocked() {
		w := c.quotaWait[0]
		c.quotaWait[0] = nil
		c.quotaWait = c.quotaWait[1:]
		w.queued = false
		w.granted = true
		c.reserved++
		w.ch <- struct{}{}
	}
	if len(c.quotaWait) == 0 {
		c.quotaWait = nil
	}
}

// wakeAllLocked sends every waiting stream to look again (c takes no new
// streams: GOAWAY).
func (c *h2conn) wakeAllLocked() {
	for i, w := range c.quotaWait {
		w.queued = false
		select {
		case w.ch <- struct{}{}:
		default:
		}
		c.quotaWait[i] = nil
	}
	c.quotaWait = nil
}

// dropWaiterLocked forgets a waiter that stops waiting; a slot granted to
// it goes to the next one.
func (c *h2conn) dropWaiterLocked(w *quotaWaiter) {
	switch {
	case w == nil:
	case w.granted:
		w.granted = false
		c.reserved--
		c.grantLocked()
	case w.queued:
		w.queued = false
		for i, x := range c.quotaWait {
			if x == w {
				c.quotaWait = append(c.quotaWait[:i], c.quotaWait[i+1:]...)
				break
			}
		}
	}
}

// conn returns a connection that takes new streams, dialing one if none
// does.
func (rc *relayClient) conn() (*h2conn, error) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	if rc.closed {
		return nil, errRelayClosed
	}
	live := rc.conns[:0]
	var pick *h2conn
	for _, c := range rc.conns {
		if c.isClosed() {
			continue
		}
		live = append(live, c)
		c.mu.Lock()
		ok := !c.goAway
		c.mu.Unlock()
		if ok && pick == nil {
			pick = c
		}
	}
	clear(rc.conns[len(live):])
	rc.conns = live
	if pick != nil {
		return pick, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), rc.conf.dialTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", rc.addr)
	if err != nil {
		return nil, err
	}
	if rc.conf.tls != nil {
		if nc, err = rc.handshake(ctx, nc); err != nil {
			return nil, err
		}
	}
	c := newH2Conn(nc, true, uint32(rc.conf.maxHeader))
	c.idle = rc.conf.idle
	// The upstream's SETTINGS are part of connecting (read).
	nc.SetReadDeadline(time.Now().Add(rc.conf.dialTimeout))
	if _, err := io.WriteString(c.bw, http2.ClientPreface); err != nil {
		nc.Close()
		return nil, err
	}
	c.queue(wItem{kind: wSettings, set: relaySettings(0, uint32(rc.conf.maxHeader))},
		wItem{kind: wWindow, id: 0, n: relayConnWindow - 65535})
	rc.conns = append(rc.conns, c)
	rc.wg.Add(1)
	go c.writeLoop()
	go rc.read(c)
	return c, nil
}

// handshake runs TLS on a new upstream connection: HTTP/2 by ALPN only
// (RFC 9113 §3.2), the endpoint's host (or tls.server_name) verified
// against its certificate, as grpc-go's client does.
func (rc *relayClient) handshake(ctx context.Context, nc net.Conn) (net.Conn, error) {
	conf := rc.conf.tls.Clone()
	conf.NextProtos = []string{"h2"}
	if conf.ServerName == "" {
		name := rc.addr
		if rc.authority != "" {
			name = rc.authority
		}
		if host, _, err := net.SplitHostPort(name); err == nil {
			name = host
		}
		conf.ServerName = name
	}
	tc := tls.Client(nc, conf)
	if err := tc.HandshakeContext(ctx); err != nil {
		nc.Close()
		return nil, err
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != "h2" {
		nc.Close()
		return nil, fmt.Errorf("%w: the endpoint negotiated %q, not h2", errUpstreamTLS, p)
	}
	return tc, nil
}

// close closes every connection of the endpoint (its pool released it).
func (rc *relayClient) close() {
	rc.mu.Lock()
	rc.closed = true
	conns := rc.conns
	rc.conns = nil
	rc.mu.Unlock()
	for _, c := range conns {
		c.close(errRelayConnClosed)
	}
	rc.wg.Wait()
}

// read is an upstream connection's reader goroutine.
func (rc *relayClient) read(c *h2conn) {
	defer rc.wg.Done()
	defer c.teardown()
	// No keepalive pings upstream, as on grpc-go's path (its ClientConn
	// sets none): grpc-go servers allow a ping every 5 minutes at most
	// by default and end connections that ping more often
	// (ENHANCE_YOUR_CALM, "too_many_pings").

	// The server's connection preface is a SETTINGS frame (RFC 9113
	// §3.4), within dial_timeout. Until it came, no stream opens: it may
	// hold the upstream's SETTINGS_MAX_CONCURRENT_STREAMS.
	f, err := c.readFrame()
	sf, ok := f.(*http2.SettingsFrame)
	if err != nil || !ok || sf.IsAck() {
		if err == nil {
			err = fmt.Errorf("first frame %v", f.Header().Type)
		}
		// The streams waiting on it fail as if the dial had (openStream).
		c.close(fmt.Errorf("%w: %w", errNoSettings, err))
		return
	}
	c.nc.SetReadDeadline(time.Time{})
	c.mu.Lock()
	c.setIdleDeadline()
	c.mu.Unlock()
	// No limit unless the upstream states one.
	c.peerMaxStreams.Store(^uint32(0))
	if err := c.handleSettings(sf); err != nil {
		c.goAwayAndClose(http2.ErrCodeProtocol)
		return
	}
	for {
		c.throttle()
		f, err := c.readFrame()
		c.reads.Add(1)
		if err != nil {
			if c.resetStream(err) {
				continue
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				c.mu.Lock()
				idle := len(c.legs) == 0
				if idle {
					c.goAway = true
				}
				c.mu.Unlock()
				if idle {
					c.queue(wItem{kind: wGoAway, n: uint32(http2.ErrCodeNo)})
					c.closeAfterFlush()
					return
				}
				c.nc.SetReadDeadline(time.Time{})
				continue
			}
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				c.queue(wItem{kind: wGoAway, n: uint32(ce)})
				c.closeAfterFlush()
			}
			return
		}
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			if l := c.leg(f.StreamID); l != nil {
				// f.Fields is the block's own: readFrame copies each
				// block's fields out of its scratch.
				l.st.upstreamHeadersIn(f.Fields, f.StreamEnded(), f.Truncated)
			}
		case *http2.DataFrame:
			c.data(f, (*relayStream).fromUpstream)
		case *http2.RSTStreamFrame:
			if l := c.leg(f.StreamID); l != nil {
				l.st.peerReset(l, f.ErrCode)
			}
		case *http2.SettingsFrame:
			if err := c.handleSettings(f); err != nil {
				c.queue(wItem{kind: wGoAway, n: uint32(http2.ErrCodeProtocol)})
				c.closeAfterFlush()
				return
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				c.queue(wItem{kind: wPing, ping: f.Data})
			}
		case *http2.WindowUpdateFrame:
			if err := c.handleWindowUpdate(f); err != nil {
				return
			}
		case *http2.GoAwayFrame:
			// Streams above LastStreamID were not processed and never
			// will be (RFC 9113 §6.8): they fail as grpc-go's client
			// fails them, UNAVAILABLE; the others finish here.
			c.mu.Lock()
			c.goAway = true
			c.wakeAllLocked()
			var refused []*leg
			for id, l := range c.legs {
				if id > f.LastStreamID {
					refused = append(refused, l)
				}
			}
			c.mu.Unlock()
			for _, l := range refused {
				l.st.peerReset(l, http2.ErrCodeRefusedStream)
			}
		case *http2.PushPromiseFrame:
			// SETTINGS_ENABLE_PUSH is 0.
			c.queue(wItem{kind: wGoAway, n: uint32(http2.ErrCodeProtocol)})
			c.closeAfterFlush()
			return
		}
	}
}

// pickRelay chooses an endpoint not marked down nor ejected.
func (u *upstream) pickRelay(tried uint64) int {
	now := u.now()
	return u.bal.pick(u.eps, tried, func(i int) bool { return !u.eps[i].isDown(now) && !u.ejected(i, now) })
}

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
// by ALPN over TLS (§3.2), dialed on first use. A connection the upstream sent GOAWAY on, or that is at the
// upstream's SETTINGS_MAX_CONCURRENT_STREAMS, takes no new streams: the
// next one goes to a new connection, while its streams finish
// (RFC 9113 §6.8).
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

// open starts st's upstream stream with the header list hdr, on a
// connection that can take it, and sends what the client already sent.
func (rc *relayClient) open(st *relayStream, hdr relayHeader) error {
	for try := 0; try < 3; try++ {
		c, err := rc.conn()
		if err != nil {
			return err
		}
		c.mu.Lock()
		if c.goAway || c.isClosed() || c.nextID >= 1<<31-1 {
			c.goAway = true
			c.mu.Unlock()
			continue
		}
		id := c.nextID
		c.nextID += 2
		st.up.recvWin.Store(relayStreamWindow)
		c.registerLocked(st.up, id)
		c.queue(wItem{kind: wHeaders, id: id, fields: hdr})
		st.mu.Lock()
		st.opened = true
		pending, end := st.reqPending, st.reqEnd
		st.reqPending = nil
		st.mu.Unlock()
		st.up.pending = pending
		st.up.end = end
		c.flushLocked(st.up)
		c.mu.Unlock()
		return nil
	}
	return fmt.Errorf("%w: no connection takes new streams", errNoEndpoint)
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
		ok := !c.goAway && uint32(len(c.legs)) < c.peerMaxStreams.Load()
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
	for {
		c.throttle()
		f, err := c.fr.ReadFrame()
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
				// f.Fields is the frame's own: the Framer decodes each
				// header block into a new MetaHeadersFrame.
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

package proxy

import (
	"errors"

	"golang.org/x/net/http2"
)

// Frame floods (RFC 9113 §10.5; CVE-2019-9512/9515/9518 and their kin): a
// client can make a server spend CPU with frames that cost it little to
// send and carry no work: PRIORITY, SETTINGS, WINDOW_UPDATE, frames of
// unknown types, DATA with nothing in it. The relay's queue bound and its
// throttle keep such a flood from growing memory (the answers it provokes
// wait for the peer to read them), and the ping policy bounds PINGs, but a
// client that reads its SETTINGS acks, or sends frames that need no
// answer, could keep a core busy for as long as it liked. floodGuard
// allows each kind in proportion to the work the connection does, as
// Envoy's HTTP/2 codec does (with Envoy's default ratios), and the relay
// closes a connection past it with GOAWAY ENHANCE_YOUR_CALM: legitimate
// clients send these frames a few at a time per stream or per DATA frame
// they receive, a flood sends them by the thousand.

const (
	// floodControlPerStream: PRIORITY, SETTINGS (not acks) and frames of
	// unknown types allowed per stream the client opened, and before any
	// (Envoy's max_inbound_priority_frames_per_stream).
	floodControlPerStream = 100
	// floodWindowsPerData: WINDOW_UPDATEs allowed per DATA frame the
	// relay sent the client, plus floodWindowsBase and two per stream
	// (Envoy's max_inbound_window_update_frames_per_data_frame_sent).
	floodWindowsPerData = 10
	floodWindowsBase    = 5
	// floodMaxEmpty: consecutive DATA frames without payload (or with
	// padding only) that do not end their stream (Envoy's
	// max_consecutive_inbound_frames_with_empty_payload).
	floodMaxEmpty = 1
)

// frameFlood is the GOAWAY debug data of a connection closed for a flood.
const frameFlood = "frame_flood"

// errFrameFlood ends a client connection that broke floodGuard's limits.
var errFrameFlood = errors.New("relay: frame flood from the client")

// floodGuard counts a client connection's frames; the connection's
// reader goroutine is its only user.
type floodGuard struct {
	streams  uint64 // streams the client opened (HEADERS with a new, higher id)
	lastID   uint32
	control  uint64 // PRIORITY, SETTINGS, unknown types
	windows  uint64 // WINDOW_UPDATE
	empty    int    // consecutive empty DATA frames that do not end a stream
	tripped  string // the kind that broke its limit, for the log
	received uint64 // frames seen, for the log
}

// see accounts one frame from the client, given the DATA frames the relay
// has sent it so far, and reports whether the connection is now a flood.
func (g *floodGuard) see(f http2.Frame, dataSent uint64) bool {
	g.received++
	switch f := f.(type) {
	case *http2.MetaHeadersFrame:
		if f.StreamID > g.lastID {
			g.lastID = f.StreamID
			g.streams++
		}
		g.empty = 0
	case *http2.DataFrame:
		if len(f.Data()) == 0 && !f.StreamEnded() {
			g.empty++
			if g.empty > floodMaxEmpty {
				g.tripped = "empty DATA"
				return true
			}
		} else {
			g.empty = 0
		}
	case *http2.WindowUpdateFrame:
		g.windows++
		if g.windows > floodWindowsBase+2*(g.streams+floodWindowsPerData*dataSent) {
			g.tripped = "WINDOW_UPDATE"
			return true
		}
	case *http2.SettingsFrame:
		if f.IsAck() {
			return false
		}
		return g.controlFrame("SETTINGS")
	case *http2.PriorityFrame:
		return g.controlFrame("PRIORITY")
	case *http2.UnknownFrame:
		return g.controlFrame("unknown type")
	}
	return false
}

func (g *floodGuard) controlFrame(kind string) bool {
	g.control++
	if g.control > floodControlPerStream*(1+g.streams) {
		g.tripped = kind
		return true
	}
	return false
}

// flooded closes a client connection that broke floodGuard's limits:
// GOAWAY ENHANCE_YOUR_CALM (RFC 9113 §7), its calls end with it. It is
// counted per listener and logged at most once a second per listener.
func (s *relayServer) flooded(c *h2conn, gc *guardedConn) {
	c.goAwayDebug(http2.ErrCodeEnhanceYourCalm, frameFlood)
	if gc == nil {
		return
	}
	g := gc.g
	g.counters.frameFloods.Add(1)
	now := g.now().UnixNano()
	last := g.lastFloodLog.Load()
	if now-last < int64(1e9) || !g.lastFloodLog.CompareAndSwap(last, now) {
		return
	}
	g.log.Warn("connection closed: frame flood (frames that do no work, out of proportion to the connection's streams and data)",
		"listener", g.listener, "remote", gc.key, "frame", c.flood.tripped, "frames", c.flood.received,
		"streams", c.flood.streams, "frame_floods_total", g.counters.frameFloods.Load())
}

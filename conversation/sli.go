package conversation

import (
	"time"
)

// The SLI series: per minute, ended sessions and good ones, turns, failed
// turns and a latency histogram, so that the good-session ratio can be
// shown next to turn latency and errors on the same time buckets. It is
// the in-process view for the dashboard; across replicas, use the
// hopwatch_conversation_sessions_total series (see README).

const (
	// SLIStep is the bucket width of the SLI series.
	SLIStep = time.Minute
	// SLIKeep is how far back the SLI series goes.
	SLIKeep  = 3 * time.Hour
	sliSlots = int(SLIKeep / SLIStep)
)

// latencyBounds are the turn latency histogram's upper bounds, in
// seconds, finer around the default 2 s turn SLO.
var latencyBounds = [...]float64{.025, .05, .1, .25, .5, .75, 1, 1.5, 2, 2.5, 3, 5, 10, 30}

type sliSlot struct {
	epoch    int64 // minute since the Unix epoch this slot holds
	sessions int
	good     int
	turns    int
	errors   int
	lat      [len(latencyBounds) + 1]int
}

type sliSeries struct {
	slots [sliSlots]sliSlot
}

func (s *sliSeries) slot(at time.Time) *sliSlot {
	e := at.Unix() / int64(SLIStep/time.Second)
	sl := &s.slots[slotIndex(e)]
	if sl.epoch != e {
		*sl = sliSlot{epoch: e}
	}
	return sl
}

// slotIndex places a minute in the ring; times before 1970 (a zero
// time.Time from a careless caller) must not index out of it.
func slotIndex(e int64) int {
	n := int64(sliSlots)
	return int((e%n + n) % n)
}

func (s *sliSeries) turn(at time.Time, latency time.Duration, failed bool) {
	sl := s.slot(at)
	sl.turns++
	if failed {
		sl.errors++
	}
	v, i := latency.Seconds(), 0
	for i < len(latencyBounds) && v > latencyBounds[i] {
		i++
	}
	sl.lat[i]++
}

func (s *sliSeries) session(at time.Time, good bool) {
	sl := s.slot(at)
	sl.sessions++
	if good {
		sl.good++
	}
}

// SLIPoint is one step of the SLI series. Ratios are nil when there is
// nothing to divide (no session ended, no turn).
type SLIPoint struct {
	Start    time.Time `json:"start"`
	Sessions int       `json:"sessions"`
	Good     int       `json:"good_sessions"`
	// GoodRatio = Good / Sessions: the good-session SLI.
	GoodRatio *float64 `json:"good_ratio"`
	Turns     int      `json:"turns"`
	Errors    int      `json:"error_turns"`
	// ErrorRatio = Errors / Turns.
	ErrorRatio *float64 `json:"error_ratio"`
	// P95 is the 95th percentile of turn latency, seconds (interpolated
	// within a histogram bucket).
	P95 *float64 `json:"p95"`
}

// SLI returns the series over the window ending at now, one point per
// step (a multiple of SLIStep; window at most SLIKeep), oldest first, and
// the totals over the whole window.
func (t *Tracker) SLI(now time.Time, window, step time.Duration) ([]SLIPoint, SLIPoint) {
	step = max(SLIStep, step/SLIStep*SLIStep)
	window = min(max(window, step), SLIKeep)
	n := int(window / step)
	per := int(step / SLIStep)
	last := now.Unix() / int64(SLIStep/time.Second) // the current, partial minute
	first := last - int64(n*per) + 1
	points := make([]SLIPoint, n)
	var total sliSlot
	var totalLat [len(latencyBounds) + 1]int
	t.mu.Lock()
	for i := range points {
		var agg sliSlot
		for k := 0; k < per; k++ {
			e := first + int64(i*per+k)
			sl := &t.sli.slots[slotIndex(e)]
			if sl.epoch != e {
				continue
			}
			agg.sessions += sl.sessions
			agg.good += sl.good
			agg.turns += sl.turns
			agg.errors += sl.errors
			for b := range sl.lat {
				agg.lat[b] += sl.lat[b]
				totalLat[b] += sl.lat[b]
			}
		}
		points[i] = agg.point(time.Unix((first+int64(i*per))*int64(SLIStep/time.Second), 0).UTC())
		total.sessions += agg.sessions
		total.good += agg.good
		total.turns += agg.turns
		total.errors += agg.errors
	}
	t.mu.Unlock()
	total.lat = totalLat
	sum := total.point(time.Unix(first*int64(SLIStep/time.Second), 0).UTC())
	return points, sum
}

func (s *sliSlot) point(start time.Time) SLIPoint {
	p := SLIPoint{Start: start, Sessions: s.sessions, Good: s.good, Turns: s.turns, Errors: s.errors}
	if s.sessions > 0 {
		p.GoodRatio = ratio(s.good, s.sessions)
	}
	if s.turns > 0 {
		p.ErrorRatio = ratio(s.errors, s.turns)
		q := quantile(&s.lat, 0.95)
		p.P95 = &q
	}
	return p
}

func ratio(a, b int) *float64 {
	r := float64(a) / float64(b)
	return &r
}

// quantile interpolates linearly within the bucket holding the q-th
// observation; the overflow bucket answers its lower bound.
func quantile(h *[len(latencyBounds) + 1]int, q float64) float64 {
	total := 0
	for _, c := range h {
		total += c
	}
	rank := q * float64(total)
	cum := 0
	for i, c := range h {
		if c == 0 || float64(cum+c) < rank {
			cum += c
			continue
		}
		if i == len(latencyBounds) {
			return latencyBounds[i-1]
		}
		lo := 0.0
		if i > 0 {
			lo = latencyBounds[i-1]
		}
		return lo + (latencyBounds[i]-lo)*(rank-float64(cum))/float64(c)
	}
	return latencyBounds[len(latencyBounds)-1]
}

package fallback

// Carry copies into e the health of the endpoints that it shares with old,
// an ejector of the same upstream before its endpoint set changed (DNS or
// xDS discovery): from[i] is the index in old of e's endpoint i, or -1 for
// an endpoint that is new. An ejected endpoint stays ejected, and a failure
// run goes on counting, across the change, so that a refresh of the set
// cannot give a failing instance its traffic back early. Call it before e
// is in use.
func (e *Ejector) Carry(old *Ejector, from []int) {
	if old == nil {
		return
	}
	for i, j := range from {
		if i >= len(e.eps) || j < 0 || j >= len(old.eps) {
			continue
		}
		src, dst := &old.eps[j], &e.eps[i]
		dst.consecutive.Store(src.consecutive.Load())
		dst.until.Store(src.until.Load())
		dst.ejections.Store(src.ejections.Load())
	}
}

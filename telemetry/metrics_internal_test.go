package telemetry

import "testing"

func TestBucketCount(t *testing.T) {
	if numBuckets != len(durationBuckets)+1 {
		t.Fatalf("numBuckets = %d, want len(durationBuckets)+1 = %d", numBuckets, len(durationBuckets)+1)
	}
}

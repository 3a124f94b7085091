package demo_test

import (
	"testing"

	"github.com/hopwatch/hopwatch/conversation"
	"github.com/hopwatch/hopwatch/demo"
)

// TestQuestionsNeverLookRepeated keeps the simulation's ground truth
// honest: any two different messages users send (questions and goodbyes)
// are below hopwatch's default repeat similarity, so every repeat hopwatch
// flags in a demo run is a question a user really asked again.
func TestQuestionsNeverLookRepeated(t *testing.T) {
	msgs := append(demo.Questions(), demo.Closings()...)
	fp := conversation.NewFingerprinter(nil)
	worst := 0.0
	for i, a := range msgs {
		for _, b := range msgs[i+1:] {
			s := conversation.Similarity(fp.Fingerprint(a), fp.Fingerprint(b))
			worst = max(worst, s)
			if s >= conversation.DefaultRepeatSimilarity {
				t.Errorf("%q and %q: similarity %.2f, hopwatch would call one a repeat of the other", a, b, s)
			}
		}
	}
	t.Logf("%d messages, highest similarity between two different ones: %.2f", len(msgs), worst)
}

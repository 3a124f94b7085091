package config_test

import (
	"errors"
	"testing"

	"github.com/hopwatch/hopwatch/config"
	"github.com/hopwatch/hopwatch/routes"
)

// FuzzParse checks that no input panics Parse, that every failure is
// reported as config.Errors with a message, and that whatever Parse accepts
// also passes routes.Validate after defaults are applied.
func FuzzParse(f *testing.F) {
	for _, tc := range invalidCases() {
		f.Add([]byte(tc.yaml))
	}
	f.Add([]byte(base))
	f.Add([]byte(upstreamLast))
	f.Add([]byte(fullExample))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, err := config.Parse("fuzz.yaml", data)
		if err != nil {
			if cfg != nil {
				t.Fatal("Parse returned both a config and an error")
			}
			var errs config.Errors
			if !errors.As(err, &errs) || len(errs) == 0 {
				t.Fatalf("Parse error %v (%T) is not a non-empty config.Errors", err, err)
			}
			for _, e := range errs {
				if e.Msg == "" {
					t.Fatalf("error without a message: %#v", e)
				}
			}
			return
		}
		if fe := routes.Validate(&cfg.Spec); len(fe) > 0 {
			t.Fatalf("accepted config does not validate: %v", fe)
		}
	})
}

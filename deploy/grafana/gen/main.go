// Command gen writes hopwatch's Grafana dashboard (package grafana) as
// JSON: go generate ./grafana, or make dashboard, from deploy/.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/hopwatch/hopwatch/deploy/grafana"
)

func main() {
	out := flag.String("o", "hopwatch.json", "file to write")
	flag.Parse()
	data, err := grafana.JSON()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, data, 0o644); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

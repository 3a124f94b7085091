// Command proxy runs hopwatch: it loads the YAML configuration, starts the
// admin server and the proxy's listeners, reloads on file change and SIGHUP,
// and drains gracefully on SIGTERM/SIGINT.
//
//	proxy -config hopwatch.yaml           run
//	proxy -check -config hopwatch.yaml    validate, list every error, exit 0 or 1
//	proxy -version
//
// It wires packages together and holds no request logic.
package main

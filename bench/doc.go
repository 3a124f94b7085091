// Package bench holds the proxy's benchmarks: a unary gRPC call and an HTTP
// request through hopwatch against real loopback servers, directly and
// through the proxy, with telemetry on and off. Run them with
//
//	make bench
//	go test -run '^$' -bench . -benchmem -count 6 ./bench/ | tee new.txt   (then benchstat)
//
// Tests never assert speed; numbers go into issue notes and the README.
package bench

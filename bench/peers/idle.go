package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// idleConns is what one idle-connection run found.
type idleConns struct {
	Open   int // connections that answered their request and stayed open
	Failed int // connections that could not be opened or were not answered
}

// openIdle opens n HTTP/1.1 keep-alive connections to addr, sends one
// request on each, reads the answer, and leaves the connection open and
// idle, as clients of a proxy that went quiet do. close closes them all.
func openIdle(ctx context.Context, addr string, n int) (idleConns, func()) {
	const parallel = 64
	var (
		mu    sync.Mutex
		conns []net.Conn
		res   idleConns
		wg    sync.WaitGroup
	)
	next := make(chan struct{})
	for range parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				c, err := oneIdle(ctx, addr)
				mu.Lock()
				if err != nil {
					res.Failed++
				} else {
					res.Open++
					conns = append(conns, c)
				}
				mu.Unlock()
			}
		}()
	}
	for range n {
		if ctx.Err() != nil {
			break
		}
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
	return res, func() {
		for _, c := range conns {
			c.Close()
		}
	}
}

func oneIdle(ctx context.Context, addr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "GET /nlu/idle HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		c.Close()
		return nil, err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("status %d", resp.StatusCode)
	}
	if err != nil || resp.Close {
		c.Close()
		return nil, fmt.Errorf("idle connection not kept: %v", err)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

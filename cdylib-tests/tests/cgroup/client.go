// A Go test client (CGO_ENABLED=0: static, raw syscalls) for the cgroup placement.
//
//	client tcp|udp HOST:PORT N   N flows held open: "ok tcp|udp PORT LOCALIP:LOCALPORT" or
//	                             "err tcp|udp PORT MESSAGE"
package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"time"
)

func main() {
	if len(os.Args) != 4 {
		fmt.Fprintln(os.Stderr, "usage: client tcp|udp HOST:PORT N")
		os.Exit(2)
	}
	proto, addr := os.Args[1], os.Args[2]
	n, _ := strconv.Atoi(os.Args[3])
	_, port, _ := net.SplitHostPort(addr)
	var held []net.Conn
	for i := 0; i < n; i++ {
		c, err := net.DialTimeout(proto, addr, 5*time.Second)
		if err != nil {
			fmt.Printf("err %s %s %v\n", proto, port, err)
			continue
		}
		if proto == "udp" {
			c.Write([]byte("hi"))
		}
		fmt.Printf("ok %s %s %s\n", proto, port, c.LocalAddr())
		held = append(held, c)
	}
	time.Sleep(200 * time.Millisecond)
	for _, c := range held {
		c.Close()
	}
}

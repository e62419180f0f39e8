// Connect to 127.0.0.1:PORT over TCP and print the local address. Go's net package makes raw
// syscalls: LD_PRELOAD cannot reach it.
package main

import (
	"fmt"
	"net"
	"os"
)

func main() {
	c, err := net.Dial("tcp", "127.0.0.1:"+os.Args[1])
	if err != nil {
		fmt.Println("connect", err)
		os.Exit(1)
	}
	a := c.LocalAddr().(*net.TCPAddr)
	fmt.Printf("local %s %d\n", a.IP, a.Port)
	c.Close()
}

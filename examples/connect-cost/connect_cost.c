// connect_cost PROTO(udp|tcp) PEER_IP PORT N: CPU µs (user+sys) and wall µs per socket+connect+close,
// failures. TCP sockets close with RST (SO_LINGER 0): no TIME_WAIT piles up. See connect_cost.sh.
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
static double cpu(){struct rusage r;getrusage(RUSAGE_SELF,&r);return r.ru_utime.tv_sec*1e6+r.ru_utime.tv_usec+r.ru_stime.tv_sec*1e6+r.ru_stime.tv_usec;}
static double wall(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec*1e6+t.tv_nsec/1e3;}
int main(int c,char**v){int tcp=!strcmp(v[1],"tcp");struct sockaddr_in p={.sin_family=AF_INET,.sin_port=htons(atoi(v[3]))};inet_pton(AF_INET,v[2],&p.sin_addr);int n=atoi(v[4]),fail=0;
double c0=cpu(),w0=wall();
for(int i=0;i<n;i++){int s=socket(AF_INET,tcp?SOCK_STREAM:SOCK_DGRAM,0);if(connect(s,(void*)&p,sizeof p))fail++;
 if(tcp){struct linger l={1,0};setsockopt(s,SOL_SOCKET,SO_LINGER,&l,sizeof l);}close(s);}
printf("%.2f %.2f %d\n",(cpu()-c0)/n,(wall()-w0)/n,fail);}

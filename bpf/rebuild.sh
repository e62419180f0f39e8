#!/bin/sh
# Rebuilds the committed fallback object from placement.c (same flags as build.rs).
# Needs Debian's clang and libbpf-dev; commit the result together with placement.c.
set -eu
cd "$(dirname "$0")"
clang -O2 -g -target bpf -Wall -Werror -fdebug-prefix-map="$(pwd)=bpf" -I"/usr/include/$(gcc -print-multiarch)" -c placement.c -o placement.bpf.o
llvm-strip -g placement.bpf.o 2>/dev/null || true
echo "bpf/placement.bpf.o rebuilt ($(wc -c < placement.bpf.o) bytes)"

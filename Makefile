# Build, install and package portrange without knowing cargo's layout.
#   make                       build the `dist` profile (release, stripped, no debug info)
#   make install PREFIX=/usr/local [DESTDIR=...]
#                              PREFIX/bin/portrange, PREFIX/lib/portrange/libportrange.so, the man
#                              page, README, contract and examples under PREFIX/share
#   make uninstall PREFIX=...
#   make deb                   the Debian package (cargo-deb): target/debian/portrange_*.deb
# PROFILE=release installs the developer build instead (what the tests do).

PREFIX     ?= /usr/local
DESTDIR    ?=
CARGO      ?= cargo
PROFILE    ?= dist
TARGET_DIR ?= $(if $(CARGO_TARGET_DIR),$(CARGO_TARGET_DIR),target)
OUT         = $(TARGET_DIR)/$(PROFILE)
BINDIR      = $(DESTDIR)$(PREFIX)/bin
LIBDIR      = $(DESTDIR)$(PREFIX)/lib/portrange
MANDIR      = $(DESTDIR)$(PREFIX)/share/man/man1
DOCDIR      = $(DESTDIR)$(PREFIX)/share/doc/portrange
EXAMPLES    = systemd nginx haproxy nft

.PHONY: all build install uninstall deb check-built

all: build

build:
	$(CARGO) build --profile $(PROFILE) -p portrange -p portrange-shim

check-built:
	@test -x $(OUT)/portrange && test -f $(OUT)/libportrange.so || \
	  { echo "make: $(OUT)/portrange or libportrange.so missing: run \`make\` (as your user) first" >&2; exit 1; }

install: check-built
	install -d $(BINDIR) $(LIBDIR) $(MANDIR) $(DOCDIR)/examples
	install -m 0755 $(OUT)/portrange $(BINDIR)/portrange
	install -m 0644 $(OUT)/libportrange.so $(LIBDIR)/libportrange.so
	install -m 0644 docs/portrange.1 $(MANDIR)/portrange.1
	install -m 0644 README.md docs/CONTRACT.md $(DOCDIR)/
	for d in $(EXAMPLES); do \
	  install -d $(DOCDIR)/examples/$$d && install -m 0644 examples/$$d/* $(DOCDIR)/examples/$$d/ || exit 1; \
	done

uninstall:
	rm -f $(BINDIR)/portrange $(LIBDIR)/libportrange.so $(MANDIR)/portrange.1
	rm -rf $(DOCDIR)
	-rmdir $(LIBDIR)

deb: build
	$(CARGO) deb -p portrange --no-build --profile $(PROFILE)

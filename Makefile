# jit-access — the two commands a newcomer needs:
#   make demo    the main job end to end (as root, on a scratch Debian 12 machine)
#   make check   every test: Swift unit tests, the PAM module's C tests, end-to-end tests (as root)
#   make deb     dist/jit-access_VERSION_amd64.deb and dist/jit-access-server_VERSION_amd64.deb (see packaging/README.md)
#   make demo-fleet / make bench-fleet   the fleet story (PostgreSQL, a server, two hosts) / its benchmark

SWIFT     ?= swift
export PATH := /opt/swift/usr/bin:$(PATH)
BUILD     := .build/debug
PYTEST    ?= python3 -m pytest

.PHONY: all deps build pam check unit pamcheck e2e demo demo-fleet deb bench bench-fleet clean

all: build

deps:
	@sh scripts/deps.sh

build: deps
	$(SWIFT) build --build-tests
	$(MAKE) -C pam

pam: deps
	$(MAKE) -C pam

## Every test. CI runs exactly this (.ci/run). The package is built first: tests/e2e/test_deb.py installs it.
check: build deb
	$(SWIFT) test
	$(MAKE) -C pam check
	JIT_BIN=$(CURDIR)/$(BUILD) JIT_PAM=$(CURDIR)/pam/pam_jit.so $(PYTEST) -q -p no:cacheprovider tests/e2e

unit: build
	$(SWIFT) test

e2e: build
	JIT_BIN=$(CURDIR)/$(BUILD) JIT_PAM=$(CURDIR)/pam/pam_jit.so $(PYTEST) -q -p no:cacheprovider tests/e2e

## The Debian packages, from a clean checkout: dist/jit-access_VERSION_amd64.deb (the host) and
## dist/jit-access-server_VERSION_amd64.deb (the control plane) (scripts/build-deb.sh).
deb: deps
	@sh scripts/build-deb.sh

## The main job, end to end, in plain words, on a throw-away agent, sshd and users.
demo: build
	@JIT_BIN=$(CURDIR)/$(BUILD) JIT_PAM=$(CURDIR)/pam/pam_jit.so python3 scripts/demo.py

## The fleet story: a throw-away PostgreSQL, a control plane, two hosts, request -> approve -> login on both -> revoke.
demo-fleet: build
	@JIT_BIN=$(CURDIR)/$(BUILD) JIT_PAM=$(CURDIR)/pam/pam_jit.so python3 scripts/demo_fleet.py

## Benchmarks (release build; prints a table, writes bench/results.json). Not a test.
bench: deps
	$(SWIFT) build -c release
	$(MAKE) -C pam release
	$(MAKE) -C bench
	JIT_BIN=$(CURDIR)/.build/release JIT_PAM=$(CURDIR)/pam/pam_jit.so python3 bench/run.py

## The fleet benchmark (release build): 10,000 simulated hosts streaming from two replicas. Not a test.
bench-fleet: deps
	$(SWIFT) build -c release
	$(MAKE) -C pam release
	$(MAKE) -C bench
	JIT_BIN=$(CURDIR)/.build/release JIT_PAM=$(CURDIR)/pam/pam_jit.so python3 bench/fleet.py

clean:
	rm -rf .build .build-release .build-deb dist
	$(MAKE) -C bench clean
	$(MAKE) -C pam clean

# The two commands a user needs: `make demo` and `make test`. Both set everything up.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := postfix rspamd openssh-server haproxy prometheus prometheus-blackbox-exporter swaks ca-certificates
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt venv demo test test-unit sandbox-up sandbox-down bench clean

setup: apt venv

# Debian packages. Postfix is preseeded to "No configuration" so the machine's own
# /etc/postfix stays unconfigured; the sandbox runs Postfix from its own directory.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
	    dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $(SUDO) debconf-set-selections; \
	  $(SUDO) apt-get update -qq && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml sandbox/pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --progress-bar off -e '.[test]' -e ./sandbox
	@touch $@

demo: setup
	$(BIN)/backupmx-sandbox up
	$(BIN)/pyinfra inventory/sandbox.py deploys/backupmx.py --dry

# pytest exits 5 when it collected no test: that must fail, not pass.
pytest = @$(BIN)/pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The whole suite: tests/unit, tests/integration and tests/cli (a sandbox world is brought up).
test: setup
	$(call pytest)

# The fast loop: tests/unit alone (pure: no apt, no sandbox world), in seconds.
test-unit: venv
	$(call pytest,tests/unit)

sandbox-up: setup
	$(BIN)/backupmx-sandbox up

sandbox-down:
	@[ ! -x $(BIN)/backupmx-sandbox ] || $(BIN)/backupmx-sandbox down

# Benchmarks (bench/, docs/performance.md): not part of `make test`; they print a table.
# Their own sandbox world (/var/tmp/backupmx-bench unless BACKUPMX_SANDBOX_DIR is set).
bench: setup
	$(BIN)/python -m pip install -q --progress-bar off -e '.[test,bench]' -e ./sandbox
	$(BIN)/python -m bench $(BENCH_ARGS)

clean: sandbox-down
	rm -rf .sandbox $(VENV)

# The two commands a user needs: `make demo` and `make test`. Both set everything up.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
APT_PACKAGES := postfix postfix-policyd-spf-python rspamd openssh-server haproxy prometheus prometheus-blackbox-exporter swaks ca-certificates
# Only for the docker-mailserver image (make dms-image, make test): `make demo` does without them.
DMS_APT_PACKAGES := podman runc debootstrap patch
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup apt apt-dms venv dms-image demo test test-unit sandbox-up sandbox-down bench clean

setup: apt venv

# Debian packages, those of $(1) not installed yet. Postfix is preseeded to "No configuration"
# so the machine's own /etc/postfix stays unconfigured; the sandbox runs Postfix from its own
# directory. The package lists are fetched once (not again if apt used them in the last hour).
define apt_install
	@missing=$$(for p in $(1); do \
	    dpkg-query -W -f='$${db:Status-Status}' $$p 2>/dev/null | grep -qx installed || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  echo "postfix postfix/main_mailer_type select No configuration" | $(SUDO) debconf-set-selections; \
	  if ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || \
	     [ -z "$$(find /var/cache/apt/pkgcache.bin -mmin -60 2>/dev/null)" ]; then \
	    $(SUDO) apt-get update -qq || exit 1; fi; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

apt:
	$(call apt_install,$(APT_PACKAGES))

apt-dms:
	$(call apt_install,$(DMS_APT_PACKAGES))

venv: $(VENV)/.installed

# Every version `make setup` installs is pinned, with hashes, in requirements/
# (docs/development.md; `make lock` refreshes them). The build backend goes in first so
# the one sdist and the two editable installs build with the locked setuptools, never
# with one fetched into an isolated build environment.
LOCK_DIR := requirements
LOCKS := $(LOCK_DIR)/build.txt $(LOCK_DIR)/setup.txt
BENCH_LOCK := $(LOCK_DIR)/bench.txt
PIP_INSTALL := $(BIN)/python -m pip install -q --progress-bar off

# One line on the terminal (`make demo`'s first screen is the demo, not pip): pip's own
# output goes to $(INSTALL_LOG), whose end is shown if an install fails.
INSTALL_LOG := $(VENV)/install.log
$(VENV)/.installed: $(LOCKS) pyproject.toml sandbox/pyproject.toml
	@echo "setting up $(VENV) (Python packages pinned in $(LOCK_DIR)/; log: $(INSTALL_LOG))"
	@python3 -m venv $(VENV)
	@{ $(PIP_INSTALL) --require-hashes -r $(LOCK_DIR)/build.txt && \
	  $(PIP_INSTALL) --require-hashes --use-pep517 --no-build-isolation -r $(LOCK_DIR)/setup.txt && \
	  $(PIP_INSTALL) --no-deps --use-pep517 --no-build-isolation -e . -e ./sandbox; } > $(INSTALL_LOG) 2>&1 || \
	  { tail -n 20 $(INSTALL_LOG) >&2; echo "make: installing into $(VENV) failed; the whole log: $(INSTALL_LOG)" >&2; exit 1; }
	@touch $@

# The real docker-mailserver 15.1.0 image for the sandbox's docker-mailserver primary
# (`backupmx-sandbox up --primary docker-mailserver`): built with podman from the
# vendored release (sandbox/vendor/), once, then cached (`podman images`); ~2 min cold.
dms-image: setup apt-dms
	@$(BIN)/python -m backupmx_sandbox.dms_image >/dev/null

# The review of a first deploy: the gate report, every diff, and at the end the verdict
# and what the deploy would change.
demo: setup
	@$(BIN)/backupmx-sandbox up
	@$(BIN)/pyinfra inventory/sandbox.py deploys/backupmx.py --dry

# pytest exits 5 when it collected no test: that must fail, not pass.
pytest = @$(BIN)/pytest $(1) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The whole suite: tests/unit, tests/integration and tests/cli, in TEST_WORKERS parallel
# pytest-xdist workers, each with a sandbox world of its own (.sandbox-gw0, ...; tests/conftest.py);
# tests/cli/dms brings up a worker's second world with the real docker-mailserver, whose image
# is built first. A module's tests stay on one worker (loadfile), modules go out heaviest first
# (tests/module_seconds.json). TEST_WORKERS=0 runs serially against .sandbox.
TEST_WORKERS ?= 3
test: setup dms-image
	$(call pytest,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)

# The fast loop: tests/unit alone (pure: no apt, no sandbox world), in seconds.
test-unit: venv
	$(call pytest,tests/unit)

sandbox-up: setup
	$(BIN)/backupmx-sandbox up

sandbox-down:
	@[ ! -x $(BIN)/backupmx-sandbox ] || $(BIN)/backupmx-sandbox down

# Benchmarks (bench/, docs/performance.md): not part of `make test`; they print a table.
# Their own sandbox world (/var/tmp/backupmx-bench unless BACKUPMX_SANDBOX_DIR is set).
bench: setup $(VENV)/.installed-bench
	$(BIN)/python -m bench $(BENCH_ARGS)

# The bench lock holds the setup lock's pins plus octoDNS: this adds octoDNS only.
$(VENV)/.installed-bench: $(BENCH_LOCK) $(VENV)/.installed
	$(PIP_INSTALL) --require-hashes --use-pep517 --no-build-isolation -r $(BENCH_LOCK)
	@touch $@

# Re-pin requirements/ from pyproject.toml and sandbox/pyproject.toml: keeps every pin
# the ranges still allow; UPGRADE=1 moves each to the newest release. pip-tools runs
# from its own venv (.venv-lock) with this machine's pip config, so the hashes cover
# the files pip picks here, from PyPI and the local indexes alike. It resolves for the
# interpreter it runs on: CPython 3.11 on Linux x86_64, the target.
.PHONY: lock
LOCK_VENV := .venv-lock
LOCK_PYTHON ?= python3
PIP_COMPILE = CUSTOM_COMPILE_COMMAND="make lock" $(LOCK_VENV)/bin/pip-compile --quiet \
	--generate-hashes --allow-unsafe --strip-extras --no-emit-index-url --no-emit-find-links \
	$(if $(UPGRADE),--upgrade) pyproject.toml sandbox/pyproject.toml
lock:
	@[ -x $(LOCK_VENV)/bin/pip-compile ] || { $(LOCK_PYTHON) -m venv $(LOCK_VENV) && \
	  $(LOCK_VENV)/bin/python -m pip install -q --progress-bar off 'pip-tools>=7.4,<8'; }
	@$(LOCK_VENV)/bin/python -c 'import platform, sys; \
	  target = ("CPython", (3, 11), "linux", "x86_64"); \
	  here = (platform.python_implementation(), sys.version_info[:2], sys.platform, platform.machine()); \
	  sys.exit(None if here == target else f"make lock: $(LOCK_VENV) runs {here}, the target is {target}: rm -r $(LOCK_VENV), then make lock LOCK_PYTHON=<that python>")'
	$(PIP_COMPILE) --all-build-deps --only-build-deps -o $(LOCK_DIR)/build.txt
	$(PIP_COMPILE) --all-build-deps --extra test -c $(LOCK_DIR)/build.txt -o $(LOCK_DIR)/setup.txt
	$(PIP_COMPILE) --all-build-deps --extra test --extra bench -c $(LOCK_DIR)/setup.txt -o $(BENCH_LOCK)

# Also the test workers' worlds (.sandbox-gw0, ...) and the lifecycle test's (.sandbox-lifecycle).
clean: sandbox-down
	@for dir in .sandbox-*; do \
	  [ ! -d "$$dir" ] || [ ! -x $(BIN)/backupmx-sandbox ] || \
	  BACKUPMX_SANDBOX_DIR="$$(realpath "$$dir")" $(BIN)/backupmx-sandbox down; done
	rm -rf .sandbox .sandbox-* $(VENV) $(LOCK_VENV)

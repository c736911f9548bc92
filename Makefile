# The two commands a user needs: `make demo` and `make test`. Both set up everything.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := postfix rspamd openssh-server prometheus prometheus-blackbox-exporter swaks util-linux ca-certificates
STAMP := $(VENV)/.installed

.PHONY: setup demo test sandbox-up sandbox-down clean

setup: .apt-installed $(STAMP)

# System packages: postfix is preseeded to "No configuration" so the machine's own
# /etc/postfix stays unused; rspamd without recommends (no redis).
.apt-installed:
	@if ! dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | grep -vq '^install ok installed$$' \
	    && [ "$$(dpkg-query -W -f='$${Status}\n' $(APT_PACKAGES) 2>/dev/null | wc -l)" = "$(words $(APT_PACKAGES))" ]; then \
	  echo "apt packages present"; \
	else \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; \
	fi
	@touch $@

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

demo: setup
	$(VENV)/bin/backupmx-sandbox up
	$(VENV)/bin/pyinfra inventory/sandbox.py deploys/backupmx.py --dry

test: setup
	$(VENV)/bin/pytest

sandbox-up: setup
	$(VENV)/bin/backupmx-sandbox up

sandbox-down:
	$(VENV)/bin/backupmx-sandbox down

clean: sandbox-down
	rm -rf .sandbox $(VENV) .apt-installed

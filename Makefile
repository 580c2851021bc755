# fenji — set-up and everyday commands.  Every target creates .venv if missing,
# installs the package with its extras and (as root) the Debian tools the tests
# need, so `make demo` and `make test` are all a fresh machine needs.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
# Debian packages the tests need, each with the file whose presence means it is
# installed.  Only the missing ones are installed: a machine whose Node.js comes
# from NodeSource has npm already, and Debian's npm package conflicts with it.
DEB_PROBES := dcmtk:/usr/bin/storescu dicom3tools:/usr/bin/dciodvfy orthanc:/usr/sbin/Orthanc \
  orthanc-dicomweb:/usr/share/orthanc/plugins/libOrthancDicomWeb.so \
  fonts-noto-cjk:/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc \
  poppler-utils:/usr/bin/pdftotext npm:/usr/bin/npm chromium:/usr/bin/chromium \
  chromium-driver:/usr/bin/chromedriver openssl:/usr/bin/openssl \
  postgresql:/usr/lib/postgresql/15/bin/initdb haproxy:/usr/sbin/haproxy \
  orthanc-postgresql:/usr/share/orthanc/plugins/libOrthancPostgreSQLIndex.so
PYTEST_ARGS ?=

.PHONY: all venv debs vendor install demo test test-long bench lint clean

all: test

$(VPY):
	@# Debian's python3 needs python3-venv for `-m venv`; install it when root.
	@$(PY) -m venv $(VENV) 2>/dev/null || { \
	  rm -rf $(VENV); \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; \
	  fi; $(PY) -m venv $(VENV); }
	$(VPY) -m pip install --quiet --upgrade pip setuptools wheel

# Dependencies are installed again only when pyproject.toml changes.
$(VENV)/.deps-stamp: pyproject.toml | $(VPY)
	$(VPY) -m pip install --quiet -e '.[test,bench,center]' --config-settings editable_mode=strict
	touch $@

venv: $(VENV)/.deps-stamp

# Strict editable mode links each source file into build/, so it is redone when
# a source file or the project file changed (no dependency resolution: seconds),
# and the Numba kernels are compiled into their cache now, not in a node's first
# case.  Nothing changed: nothing is redone (a second `make demo` starts at once).
SOURCES := $(shell find gateway codecs routing -name '*.py' -o -name '*.html' -o -name '*.css' -o -name '*.js' 2>/dev/null)
$(VENV)/.install-stamp: $(VENV)/.deps-stamp $(SOURCES)
	$(VPY) -m pip install --quiet --no-deps --no-build-isolation -e . --config-settings editable_mode=strict
	$(VPY) -m fenji.gateway.lab.warmup
	touch $@

# The web console's front-end, from npm, pinned, into vendor/ (git-ignored):
# the OHIF Viewer build (@ohif/app ships it in dist/) served at /viewer/, and
# htmx.  `npm pack` fetches exactly the package (integrity-checked by npm), not
# its development dependencies: the build is already built.  Done once per
# version: the stamp names both versions.
OHIF_VERSION := 3.13.2
HTMX_VERSION := 2.0.4
VENDOR_STAMP := vendor/.stamp-ohif-$(OHIF_VERSION)-htmx-$(HTMX_VERSION)
vendor: $(VENDOR_STAMP)
$(VENDOR_STAMP):
	@command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq npm >/dev/null; \
	  else echo "npm is missing: sudo apt-get install npm" >&2; exit 1; fi; }
	rm -rf vendor/ohif vendor/htmx vendor/.stamp-* vendor/.tmp && mkdir -p vendor/.tmp
	cd vendor/.tmp && npm pack --silent @ohif/app@$(OHIF_VERSION) htmx.org@$(HTMX_VERSION) >/dev/null
	mkdir -p vendor/.tmp/ohif vendor/.tmp/htmx vendor/htmx
	tar -xzf vendor/.tmp/ohif-app-$(OHIF_VERSION).tgz -C vendor/.tmp/ohif
	tar -xzf vendor/.tmp/htmx.org-$(HTMX_VERSION).tgz -C vendor/.tmp/htmx
	mv vendor/.tmp/ohif/package/dist vendor/ohif
	cp vendor/.tmp/ohif/package/LICENSE vendor/ohif/LICENSE.ohif
	cp vendor/.tmp/htmx/package/dist/htmx.min.js vendor/htmx/htmx.min.js
	cp vendor/.tmp/htmx/package/LICENSE vendor/htmx/LICENSE
	rm -rf vendor/.tmp
	touch $@

install: $(VENV)/.install-stamp $(VENDOR_STAMP)


debs:
	@missing=""; for pp in $(DEB_PROBES); do \
	  [ -e "$${pp#*:}" ] || missing="$$missing $${pp%%:*}"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing; run as root or: sudo apt-get install$$missing" >&2; exit 1; \
	  fi; \
	fi

demo: install debs
	$(VPY) -m fenji.gateway.lab.demo $(if $(KEEP),--keep,)

test: install debs
	$(VPY) -m pytest -m "not long" $(PYTEST_ARGS)

test-long: install debs
	$(VPY) -m pytest $(PYTEST_ARGS)

bench: install debs
	mkdir -p bench-results
	$(VPY) -m bench all --json bench-results/all.json

lint: install
	$(VENV)/bin/ruff check gateway codecs routing bench tests
	$(VENV)/bin/mypy -p fenji.gateway -p fenji.codecs -p fenji.routing

clean:
	rm -rf build *.egg-info .pytest_cache .mypy_cache .ruff_cache bench-results

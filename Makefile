# host-recover — build, test and demo entry points.
# `make demo` and `make test` install what they need on a fresh Debian 12 machine (as root).

SHELL        := /bin/bash
PYTHON       := /usr/bin/python3
VENV         := .venv
VPY          := $(VENV)/bin/python
# tpm2-pytss is built without FAPI (tss2-fapi.pc hidden from pkg-config): recover/ does
# not use FAPI, and its closure (curl, krb5, ldap: ~30 libraries) would otherwise ride
# into every initramfs. The wheel is built once and cached.
WHEELS       := /var/cache/host-recover/wheels-nofapi
PCDIR        := /var/cache/host-recover/pkgconfig-nofapi
APT_PACKAGES := swtpm swtpm-tools tpm2-tools libtss2-dev python3-venv python3-dev \
                pkg-config build-essential qemu-system-x86 ovmf dracut-core dracut-network zstd \
                squashfs-tools erofs-utils cpio shellcheck kmod openssl iproute2 \
                e2fsprogs busybox-static

.PHONY: deps venv test lint unit demo install clean

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "+ apt-get install $$missing"; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi

$(PCDIR)/.stamp:
	rm -rf $(PCDIR) && mkdir -p $(PCDIR)
	for d in $$(pkg-config --variable pc_path pkg-config | tr : ' '); do \
	  for f in "$$d"/*.pc; do \
	    b=$${f##*/}; \
	    [ -e "$$f" ] && [ "$$b" != tss2-fapi.pc ] && [ ! -e "$(PCDIR)/$$b" ] && ln -s "$$f" "$(PCDIR)/$$b"; \
	  done; \
	done; true
	touch $@

$(VENV)/.stamp: requirements.lock setup.cfg pyproject.toml $(PCDIR)/.stamp
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip wheel setuptools
	mkdir -p $(WHEELS)
	# Build tpm2-pytss (~20 s) once, without FAPI; later installs come from the wheel cache.
	pin=$$(grep '^tpm2-pytss==' requirements.lock); ver=$${pin#*==}; \
	ls $(WHEELS)/tpm2_pytss-$$ver-*.whl >/dev/null 2>&1 || \
	  PKG_CONFIG_LIBDIR=$(PCDIR) $(VPY) -m pip wheel -q --no-cache-dir --no-deps \
	    --no-binary tpm2-pytss -w $(WHEELS) "$$pin"
	$(VPY) -m pip wheel -q -w $(WHEELS) --find-links $(WHEELS) -r requirements.lock
	$(VPY) -m pip install -q --no-index --find-links $(WHEELS) -r requirements.lock
	if ldd $(VENV)/lib/python3*/site-packages/tpm2_pytss/_libtpm2_pytss*.so | grep -q fapi; then \
	  echo "tpm2-pytss links libtss2-fapi: remove $(WHEELS) and run make again" >&2; exit 1; fi
	$(VPY) -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

venv: deps $(VENV)/.stamp

LINTED := recover testing tests bench qemu-env

lint: venv
	$(VENV)/bin/ruff check $(LINTED)
	$(VENV)/bin/ruff format --check $(LINTED)
	$(VENV)/bin/mypy  # recover, testing and bench (pyproject.toml)
	shellcheck -s sh hooks/*.sh
	shellcheck -s bash dracut-module/*.sh qemu-env/*.sh .ci/run dev

# Every tier but the QEMU boots (what plain `pytest` runs): tests/unit, tpm, integration.
unit: venv
	$(VPY) -m pytest -q

# The whole suite: lint, then tests/unit, tpm, integration and e2e (QEMU) in one run;
# --require-e2e fails the run when an e2e test skips or none was collected.
test: venv lint
	$(VPY) -m pytest -q --require-e2e

demo: venv
	$(VPY) qemu-env/demo.py

# On a real host (root): the program in its own venv (Debian's python3 refuses system-wide
# pip installs), the CLI on PATH, the dracut module (dracut --add host-recover).
PREFIX  := /opt/host-recover
DRACUTMOD := $(DESTDIR)/usr/lib/dracut/modules.d/90host-recover
install: venv
	$(PYTHON) -m venv $(DESTDIR)$(PREFIX)
	$(DESTDIR)$(PREFIX)/bin/pip install -q --no-index --find-links $(WHEELS) \
	  $$(grep -E '^(tpm2-pytss|cryptography|pyelftools)==' requirements.lock)
	$(VPY) -m pip wheel -q --no-deps --no-build-isolation -w $(WHEELS) .
	$(DESTDIR)$(PREFIX)/bin/pip install -q --no-index --find-links $(WHEELS) --no-deps \
	  --force-reinstall host-recover
	install -d $(DESTDIR)/usr/local/sbin $(DRACUTMOD)
	ln -sf $(PREFIX)/bin/host-recover $(DESTDIR)/usr/local/sbin/host-recover
	install -m 0755 dracut-module/*.sh hooks/*.sh $(DRACUTMOD)/
	install -m 0644 dracut-module/host-recover.service $(DRACUTMOD)/
	install -D -m 0644 systemd/host-recover-agent.service $(DESTDIR)/usr/lib/systemd/system/host-recover-agent.service

clean:
	rm -rf $(VENV) qemu-env/build

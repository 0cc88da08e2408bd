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
                e2fsprogs busybox-static etcd-server etcd-client \
                mmdebstrap debhelper lintian fakeroot dpkg-dev osslsigncode

.PHONY: deps wheels venv test lint unit demo install deb clean

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

# The pinned wheels (all of requirements.lock) in $(WHEELS), built once in a throwaway
# build venv; no apt. Needs libtss2-dev, python3-venv, python3-dev, pkg-config.
WHEELENV := build/wheelenv
wheels: $(PCDIR)/.stamp
	@$(PYTHON) -c 'import glob, sys; pins = [l.split("==") for l in open("requirements.lock") if "==" in l and l[0] != "#"]; sys.exit(any(not glob.glob("$(WHEELS)/%s-%s-*.whl" % (n.replace("-", "_"), v.strip())) for n, v in pins))' || { \
	  rm -rf $(WHEELENV) && $(PYTHON) -m venv $(WHEELENV) && \
	  $(WHEELENV)/bin/python -m pip install -q --upgrade pip wheel setuptools && \
	  mkdir -p $(WHEELS) && \
	  pin=$$(grep '^tpm2-pytss==' requirements.lock); ver=$${pin#*==}; \
	  { ls $(WHEELS)/tpm2_pytss-$$ver-*.whl >/dev/null 2>&1 || \
	    PKG_CONFIG_LIBDIR=$(PCDIR) $(WHEELENV)/bin/python -m pip wheel -q --no-cache-dir --no-deps \
	      --no-binary tpm2-pytss -w $(WHEELS) "$$pin"; } && \
	  $(WHEELENV)/bin/python -m pip wheel -q -w $(WHEELS) --find-links $(WHEELS) -r requirements.lock; }

$(VENV)/.stamp: requirements.lock setup.cfg pyproject.toml $(PCDIR)/.stamp
	$(MAKE) wheels
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip wheel setuptools
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
	shellcheck -s sh hooks/*.sh kernel/zz-host-recover kernel/kernel-hook
	shellcheck -s bash dracut-module/*.sh qemu-env/*.sh .ci/run dev

# Every tier but the QEMU boots (what plain `pytest` runs): tests/unit, tpm, integration.
unit: venv
	$(VPY) -m pytest -q

# The whole suite: lint, then tests/unit, tpm, integration and e2e (QEMU) in one run;
# --require-e2e fails the run when an e2e test skips or none was collected; the 30
# slowest tests are listed at the end (where the CI time goes).
test: venv lint
	$(VPY) -m pytest -q --require-e2e --durations=30

demo: venv
	$(VPY) qemu-env/demo.py

# On a real host (root), without a package: the same tree the Debian package installs
# (debian/rules `tree`): the private environment /usr/lib/host-recover, the CLI in
# /usr/sbin (on dracut's PATH), the dracut module and its dracut.conf.d file, the kernel
# hook, the agent unit, man pages, bash completion, docs. Needs only python3-venv and the
# wheels (`make wheels`); no apt. Prefer `make deb` and apt-get install ./host-recover_*.deb.
install: wheels
	$(MAKE) -f debian/rules tree PKG=$(DESTDIR) BUILD=build/install WHEELS=$(WHEELS)
	if [ -z "$(DESTDIR)" ]; then \
	  /usr/lib/host-recover/bin/python3 -m compileall -q -j 0 /usr/lib/host-recover/lib >/dev/null; fi

# The Debian package, built from a copy of the tree (tracked and untracked, not ignored
# files) in $(DEBBUILD); the .deb and the lintian report land there, never in the tree.
DEBBUILD := build/deb
deb: wheels
	rm -rf $(DEBBUILD) && mkdir -p $(DEBBUILD)/host-recover
	git ls-files -co --exclude-standard -z | tar --null -T - -cf - | tar -xf - -C $(DEBBUILD)/host-recover
	cd $(DEBBUILD)/host-recover && WHEELS=$(WHEELS) dpkg-buildpackage -b -us -uc
	lintian --fail-on error --info $(DEBBUILD)/host-recover_*.deb | tee $(DEBBUILD)/lintian.txt

clean:
	rm -rf $(VENV) qemu-env/build

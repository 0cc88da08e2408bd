"""Benchmarks that print ratios against a baseline measured in the same run.

Run them as modules from the repository root, after ``make venv``::

    .venv/bin/python -m bench.coldstart --rounds 10

``-m`` puts the repository root on ``sys.path``, so the benches import this checkout's
``recover``, ``testing`` (swtpm, simulated peers, the QEMU lab) and each other
(``bench.perfdoc``) without path manipulation. See bench/README.md.
"""

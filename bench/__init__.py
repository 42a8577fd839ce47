"""Rota's benchmarks: ``python -m bench [SECTION ...]`` (``make bench`` runs them all).

Each section is a module with ``run(workdir: Path) -> SectionResult``, registered in
``bench.__main__.SECTIONS``. One run writes one JSON file,
``bench-results/bench.json``: each section replaces its own key and leaves the
others' results in place, so sections can be run one at a time.

Rules: a section measures on the disk of ``workdir`` (a temporary directory under
``bench-results/``, on the repository's filesystem, removed afterwards); it states
its goals next to its numbers; it keeps its own runtime bounded (storage: < 60 s;
the cluster sections take minutes, ``fires``/``rss`` the longest: registering 100k
jobs). Sections on real clusters use ``bench.agents`` and generate load with
``bench.load`` (wrk when installed). ``ROTA_BENCH_*`` variables shrink the sizes for
quick runs; each section's header names its own.
"""

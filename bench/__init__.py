"""Rota's benchmarks: ``python -m bench [SECTION ...]`` (``make bench`` runs them all).

Each section is a module with ``run(workdir: Path) -> SectionResult``, registered in
``bench.__main__.SECTIONS``. One run writes one JSON file,
``bench-results/bench.json``: each section replaces its own key and leaves the
others' results in place, so sections can be run one at a time.

Rules: a section measures on the disk of ``workdir`` (a temporary directory under
``bench-results/``, on the repository's filesystem, removed afterwards); it states
its goals next to its numbers; it keeps its own runtime bounded (storage: < 60 s).
"""

"""The package version (one place: setup.cfg reads it from here)."""

__version__ = "0.1.0"


def source_digest() -> str:
    """16 hex digits of sha256 over the library's Python sources (paths and bytes): stored measurements
    carry it, so a result measured with other code is not reused as if it were current."""
    import hashlib
    from pathlib import Path

    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for p in sorted(root.rglob("*.py")):
        h.update(p.relative_to(root).as_posix().encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]

"""Schema, hashing and content checks for one prior-text version folder.

A version folder ``prior_text/<version>/`` holds ``manifest.json``, one UTF-8 text file per
class (one description per line) and, once embedded, ``embeddings.safetensors``. The
manifest is the single source of the class list: order, label ids, files, the words that
must appear in each class's descriptions, and the class-specific part of the prompt.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from ..errors import AssetError

SCHEMA = "priorsam-prior-text/1"
MANIFEST = "manifest.json"
EMBEDDINGS = "embeddings.safetensors"
VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
SHA_RE = re.compile(r"^[0-9a-f]{64}$")

# Sanity bounds for one description; generous, since they exist to catch broken output
# (empty lines, a whole essay on one line), not to judge style.
MIN_ITEMS = 8
MIN_WORDS = 6
MAX_WORDS = 120

_TOP = {"schema": str, "version": str, "date": str, "modality": str, "generator": dict,
        "prompt_template": dict, "classes": list, "review": dict}
_CLASS = {"name": str, "label_id": int, "file": str, "sha256": str, "display": str, "mentions": list,
          "prompt_focus": str}
_EMB = {"file": str, "encoder_id": str, "encoder_sha256": str, "embedding_sha256": str, "shape": list}


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_descriptions(path: Path) -> list[str]:
    """Descriptions in a class file: one per non-blank line, surrounding whitespace removed."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def format_descriptions(items: list[str]) -> str:
    return "".join(item.strip() + "\n" for item in items)


def _need(obj: dict, spec: dict, where: str) -> None:
    for key, typ in spec.items():
        if key not in obj:
            raise AssetError(f"{where}: missing key '{key}'")
        if not isinstance(obj[key], typ) or (typ is int and isinstance(obj[key], bool)):
            raise AssetError(f"{where}: '{key}' must be {typ.__name__}, got {type(obj[key]).__name__}")


def validate_schema(man: dict, where: str = "manifest") -> None:
    """Structural check of a manifest dict; raises :class:`AssetError` naming the first problem."""
    if not isinstance(man, dict):
        raise AssetError(f"{where}: not a JSON object")
    _need(man, _TOP, where)
    if man["schema"] != SCHEMA:
        raise AssetError(f"{where}: schema '{man['schema']}' is not '{SCHEMA}'")
    if not VERSION_RE.match(man["version"]):
        raise AssetError(f"{where}: bad version name '{man['version']}'")
    _need(man["prompt_template"], {"file": str, "sha256": str}, f"{where}.prompt_template")
    _need(man["review"], {"reviewed": bool, "note": str}, f"{where}.review")
    _need(man["generator"], {"model": str, "method": str}, f"{where}.generator")
    classes = man["classes"]
    if len(classes) < 2:
        raise AssetError(f"{where}: needs background and at least one organ class")
    names, ids, files = set(), set(), set()
    for i, c in enumerate(classes):
        cw = f"{where}.classes[{i}]"
        if not isinstance(c, dict):
            raise AssetError(f"{cw}: not an object")
        _need(c, _CLASS, cw)
        if not SHA_RE.match(c["sha256"]):
            raise AssetError(f"{cw}: sha256 is not 64 hex digits")
        if not c["mentions"] or not all(isinstance(m, str) and m.strip() for m in c["mentions"]):
            raise AssetError(f"{cw}: 'mentions' must list at least one non-empty word")
        if "/" in c["file"] or "\\" in c["file"] or c["file"] in (MANIFEST, EMBEDDINGS):
            raise AssetError(f"{cw}: file must be a plain name inside the version folder")
        for seen, key in ((names, "name"), (ids, "label_id"), (files, "file")):
            if c[key] in seen:
                raise AssetError(f"{cw}: duplicate {key} {c[key]!r}")
            seen.add(c[key])
    if classes[0]["label_id"] != 0:
        raise AssetError(f"{where}: the first class must be background with label_id 0")
    order = [c["label_id"] for c in classes]
    if order != sorted(order):
        raise AssetError(f"{where}: classes must be listed in label-id order")
    if "embeddings" in man:
        _need(man["embeddings"], _EMB, f"{where}.embeddings")
        if not SHA_RE.match(man["embeddings"]["embedding_sha256"]):
            raise AssetError(f"{where}.embeddings: embedding_sha256 is not 64 hex digits")


def description_problems(items: list[str], mentions: list[str], min_items: int = MIN_ITEMS,
                         min_words: int = MIN_WORDS, max_words: int = MAX_WORDS) -> list[str]:
    """What is wrong with one class's descriptions (empty list when they pass).

    Checks: enough items, none empty, word counts within bounds, no duplicates (case and
    spacing ignored), and every item names the class by one of ``mentions`` (case-insensitive
    whole-word match, so "left kidney" does not match inside "right kidney's" by accident).
    """
    problems = []
    if len(items) < min_items:
        problems.append(f"{len(items)} descriptions, need at least {min_items}")
    seen = {}
    pats = [re.compile(r"(?<![a-z])" + re.escape(m.lower()) + r"(?![a-z])") for m in mentions]
    for i, item in enumerate(items, 1):
        text = " ".join(item.split())
        if not text:
            problems.append(f"item {i} is empty")
            continue
        n = len(text.split())
        if n < min_words or n > max_words:
            problems.append(f"item {i} has {n} words (allowed {min_words}-{max_words})")
        key = re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()
        if key in seen:
            problems.append(f"item {i} duplicates item {seen[key]}")
        seen.setdefault(key, i)
        if not any(p.search(text.lower()) for p in pats):
            problems.append(f"item {i} does not mention any of {mentions}")
    return problems


def read_manifest(folder: Path) -> dict:
    path = folder / MANIFEST
    if not path.is_file():
        raise AssetError(f"prior version folder {folder} has no {MANIFEST}")
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AssetError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno})") from exc
    validate_schema(man, str(path))
    if man["version"] != folder.name:
        raise AssetError(f"{path}: version '{man['version']}' does not match folder name '{folder.name}'")
    return man


def write_manifest(folder: Path, man: dict) -> None:
    validate_schema(man, str(folder / MANIFEST))
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(man, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(folder / MANIFEST)


def verify_files(folder: Path, man: dict, root: Path) -> list[list[str]]:
    """Check every class file and the prompt template against the manifest's sha256.

    Returns the descriptions per class, in manifest order. A changed text means a new
    version is needed; the error says so.
    """
    texts = []
    for c in man["classes"]:
        path = folder / c["file"]
        if not path.is_file():
            raise AssetError(f"prior text {man['version']}/{c['file']} is missing")
        actual = sha256_bytes(path.read_bytes())
        if actual != c["sha256"]:
            raise AssetError(f"prior text {man['version']}/{c['file']} was changed after release (sha256 {actual[:12]}… "
                             f"≠ manifest {c['sha256'][:12]}…); put edited texts in a new version")
        items = read_descriptions(path)
        if not items:
            raise AssetError(f"prior text {man['version']}/{c['file']} has no descriptions")
        texts.append(items)
    tpl = man["prompt_template"]
    tpl_path = (root / tpl["file"]) if not Path(tpl["file"]).is_absolute() else Path(tpl["file"])
    if tpl_path.is_file() and sha256_bytes(tpl_path.read_bytes()) != tpl["sha256"]:
        raise AssetError(f"prompt template {tpl['file']} differs from the one recorded for {man['version']}; "
                         "keep old templates unchanged and add a new file")
    if not tpl_path.is_file():
        raise AssetError(f"prompt template {tpl['file']} recorded for {man['version']} is missing")
    return texts


def text_hashes(man: dict) -> dict[str, str]:
    """Class name → sha256 of its text file, as recorded in the manifest."""
    return {c["name"]: c["sha256"] for c in man["classes"]}

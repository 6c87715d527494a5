"""Write a new prior-text version with a local causal language model.

One prompt per class (the template from ``prior_text/prompts/`` filled with that class's
``display`` and ``prompt_focus`` from an existing manifest), greedy decoding, offline. The
output is split into one description per line and checked with
:func:`~priorsam.priors.manifest.description_problems`; anything that fails stops the run
with one line naming the class and the problems. A passing run is written to a temporary
folder beside the target and renamed into place, so a version folder either exists
complete or not at all, and an existing version is never overwritten.
"""
from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import AssetError
from .manifest import (SCHEMA, VERSION_RE, description_problems, format_descriptions, read_manifest, sha256_bytes,
                       write_manifest)

Validator = Callable[[list[str], list[str]], list[str]]
_BULLET = re.compile(r"^\s*(?:[-*\u2022]+|\(?\d{1,2}[.):]|\(?[a-z][.)])\s+")


class PriorValidationError(AssetError):
    """Generated descriptions failed the content checks."""


def parse_items(text: str) -> list[str]:
    """Split model output into descriptions: one per non-blank line, list markers removed."""
    return [_BULLET.sub("", line).strip() for line in text.splitlines() if _BULLET.sub("", line).strip()]


def fill_prompt(template: str, cls: dict, n: int) -> str:
    """The prompt for one class: ``{n}``, ``{display}``, ``{name}`` and ``{focus}`` filled in."""
    try:
        return template.format(n=n, display=cls["display"], name=cls["name"], focus=cls["prompt_focus"]).strip() + "\n"
    except (KeyError, IndexError, ValueError) as exc:
        raise AssetError(f"prompt template has a placeholder it cannot fill ({exc}); use {{n}} {{display}} {{name}} {{focus}}") from exc


def folder_sha256(path: Path) -> str:
    """One hash over the files of a model folder (name + content of each, sorted), for provenance."""
    from ..assets import sha256_file

    parts = [f"{f.relative_to(path).as_posix()}:{sha256_file(f)}" for f in sorted(path.rglob("*")) if f.is_file()]
    return sha256_bytes("\n".join(parts).encode())


class LocalCausalLM:
    """A causal LM and its tokenizer from a local folder; :meth:`complete` decodes greedily."""

    def __init__(self, path: str | os.PathLike, max_new_tokens: int = 1024, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        self.path = Path(path).expanduser()
        if not (self.path / "config.json").is_file():
            raise AssetError(f"language model folder {self.path} has no config.json; give a local transformers model folder")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(str(self.path), local_files_only=True).to(device).eval()
        except (OSError, ValueError) as exc:
            raise AssetError(f"language model at {self.path} could not be loaded: {exc}") from exc
        self.max_new_tokens = int(max_new_tokens)
        self.device = device
        self.uses_chat_template = bool(getattr(self.tokenizer, "chat_template", None))

    def complete(self, prompt: str) -> str:
        """Greedy continuation of ``prompt`` (through the chat template when the tokenizer has one)."""
        import torch

        if self.uses_chat_template:
            enc = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                     return_dict=True, return_tensors="pt")
        else:
            enc = self.tokenizer(prompt, return_tensors="pt")
        ids = enc["input_ids"].to(self.device)
        mask = enc.get("attention_mask")
        mask = torch.ones_like(ids) if mask is None else mask.to(self.device)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.no_grad():
            out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, num_beams=1,
                                      max_new_tokens=self.max_new_tokens, pad_token_id=pad)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def provenance(self) -> dict:
        import torch
        import transformers

        name = getattr(self.model.config, "_name_or_path", "") or self.path.name
        return {"model": f"{self.model.config.model_type} from local folder {self.path.name} ({name})",
                "model_path": str(self.path), "model_files_sha256": folder_sha256(self.path),
                "method": (f"priorsam priors generate: one prompt per class, transformers {transformers.__version__} "
                           f"generate() with greedy decoding (do_sample=False, num_beams=1, "
                           f"max_new_tokens={self.max_new_tokens}), offline, on {self.device}; chat template "
                           f"{'applied' if self.uses_chat_template else 'not present, raw prompt'}"),
                "torch": torch.__version__}


def generate_version(model: str | os.PathLike | LocalCausalLM, version: str, root: str | os.PathLike | None = None,
                     classes_from: str | None = None, template: str | os.PathLike | None = None, n: int = 10,
                     max_new_tokens: int = 1024, validator: Validator = description_problems,
                     log: Callable[[str], None] = print) -> Path:
    """Generate, check and write ``<root>/<version>/``; returns the new folder.

    ``classes_from`` names the version whose manifest supplies the class list (default: the
    newest). ``validator`` exists so tests can relax the content checks; the CLI always
    uses the full checks.
    """
    from .bank import list_versions, prior_text_root, version_folder

    root = Path(root) if root is not None else prior_text_root()
    if not VERSION_RE.match(version or ""):
        raise AssetError(f"bad version name {version!r}: use letters, digits, '-' or '_', e.g. v2")
    target = root / version
    if target.exists():
        raise AssetError(f"prior version {version} already exists at {target}; versions are never overwritten, pick a new name")
    versions = list_versions(root)
    if classes_from is None:
        if not versions:
            raise AssetError(f"no prior version under {root} to take the class list from")
        classes_from = versions[-1]
    source = read_manifest(version_folder(classes_from, root))
    tpl_path = Path(template) if template is not None else root / source["prompt_template"]["file"]
    if not tpl_path.is_file():
        raise AssetError(f"prompt template {tpl_path} not found")
    tpl_text = tpl_path.read_text(encoding="utf-8")
    lm = model if isinstance(model, LocalCausalLM) else LocalCausalLM(model, max_new_tokens=max_new_tokens)

    outputs: list[list[str]] = []
    for cls in source["classes"]:
        log(f"generating {cls['name']} …")
        raw = lm.complete(fill_prompt(tpl_text, cls, n))
        items = parse_items(raw)[:n]
        problems = validator(items, cls["mentions"])
        if problems:
            shown = "; ".join(problems[:4]) + (f"; … {len(problems) - 4} more" if len(problems) > 4 else "")
            start = " ".join(raw.split())[:80]
            raise PriorValidationError(f"generated descriptions for '{cls['name']}' rejected, nothing written: {shown} "
                                       f"(output began: {start!r})")
        outputs.append(items)

    tpl_rel = _relative_or_none(tpl_path, root)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}.tmp-", dir=root))
    try:
        if tpl_rel is None:  # keep the exact template with the version when it is not one of prompts/
            shutil.copyfile(tpl_path, tmp / "prompt_template.txt")
            tpl_rel = f"{version}/prompt_template.txt"
        classes = []
        for cls, items in zip(source["classes"], outputs):
            data = format_descriptions(items).encode("utf-8")
            (tmp / cls["file"]).write_bytes(data)
            entry = {k: cls[k] for k in ("name", "label_id", "file", "display", "mentions", "prompt_focus")}
            classes.append({**entry, "sha256": sha256_bytes(data)})
        man = {"schema": SCHEMA, "version": version, "date": _dt.date.today().isoformat(),
               "modality": source["modality"], "generator": lm.provenance(),
               "prompt_template": {"file": tpl_rel, "sha256": sha256_bytes(tpl_path.read_bytes())},
               "classes": classes, "classes_from": classes_from,
               "review": {"reviewed": False, "note": "Generated automatically and checked only by the automatic "
                          "content checks; no person has reviewed these facts yet. Review them against radiology "
                          "references, record what was corrected in a new version, then embed."}}
        write_manifest(tmp, man)
        tmp.chmod(0o755)  # mkdtemp makes 0700; a released version should be readable like the others
        if target.exists():
            raise AssetError(f"prior version {version} appeared while generating; not overwriting it")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"wrote {target} ({sum(len(o) for o in outputs)} descriptions); next: priorsam priors embed --version {version}")
    return target


def _relative_or_none(path: Path, root: Path) -> str | None:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return None

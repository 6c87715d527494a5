"""``priorsam priors …``: generate a new prior version, embed a version, check all versions."""
from __future__ import annotations

from pathlib import Path

from ..errors import AssetError
from .flags import typed_flags


class PriorsCLI:
    """Versioned anatomical text priors (prior_text/). Commands: generate, embed, check."""

    def __init__(self, root: str | None = None) -> None:
        self._root = root

    def _rootpath(self) -> Path:
        from ..priors.bank import prior_text_root

        return Path(self._root) if self._root else prior_text_root()

    @typed_flags
    def generate(self, model: str, version: str, classes_from: str | None = None, template: str | None = None,
                 n: int = 10, max_new_tokens: int = 1024) -> str:
        """Write prior_text/VERSION with the local causal LM at MODEL (greedy, offline); refuses an existing VERSION."""
        from ..priors.generator import generate_version

        return str(generate_version(model, str(version), root=self._rootpath(), classes_from=classes_from,
                                    template=template, n=int(n), max_new_tokens=int(max_new_tokens)))

    @typed_flags
    def embed(self, version: str = "v1", encoder: str | None = None, force: bool = False) -> str:
        """Embed every description of VERSION with the frozen sentence encoder (default: packaged MiniLM).

        Keeps the stored file when the new vectors agree with it; replacing different stored
        embeddings needs --force, since checkpoints record the old embedding hash.
        """
        import torch

        from ..priors.bank import _read_embeddings, embedding_hash, pad_embeddings, save_embeddings, version_folder
        from ..priors.manifest import EMBEDDINGS, read_manifest, verify_files, write_manifest
        from ..priors.text_encoder import _max_tokens, _resolve, encode_texts, encoder_identity, token_counts

        root = self._rootpath()
        folder = version_folder(str(version), root)
        man = read_manifest(folder)
        texts = verify_files(folder, man, root)
        flat = [t for items in texts for t in items]
        limit = _max_tokens(_resolve(encoder))
        too_long = [(i, n) for i, n in enumerate(token_counts(flat, encoder)) if n > limit]
        if too_long:
            raise AssetError(f"{len(too_long)} descriptions exceed the encoder's {limit} tokens and would be cut "
                             f"(first: #{too_long[0][0]} with {too_long[0][1]})")
        enc_id, enc_sha = encoder_identity(encoder)
        emb, mask = pad_embeddings(encode_texts(flat, encoder), [len(t) for t in texts])
        if "embeddings" in man and (folder / man["embeddings"]["file"]).is_file():
            try:
                old, old_mask, meta = _read_embeddings(folder, man)
            except AssetError:
                old = None
            same = (old is not None and old.shape == emb.shape and torch.equal(old_mask, mask)
                    and meta.get("encoder_sha256") == enc_sha and float((old - emb).abs().max()) <= 1e-5
                    and embedding_hash(old) == man["embeddings"]["embedding_sha256"])
            if same:
                print(f"{version}: embeddings unchanged ({man['embeddings']['embedding_sha256'][:12]}…), kept")
                return str(folder / man["embeddings"]["file"])
            if not force:
                raise AssetError(f"{version} already has different embeddings ({man['embeddings']['embedding_sha256'][:12]}…) "
                                 "that checkpoints may record; pass --force to replace them")
        digest = save_embeddings(folder, man, emb, mask, enc_id, enc_sha)
        man["embeddings"] = {"file": EMBEDDINGS, "encoder_id": enc_id, "encoder_sha256": enc_sha,
                             "embedding_sha256": digest, "shape": list(emb.shape)}
        write_manifest(folder, man)
        print(f"{version}: {len(flat)} descriptions → {tuple(emb.shape)} embeddings, sha256 {digest[:12]}…")
        return str(folder / EMBEDDINGS)

    @typed_flags
    def check(self, version: str | None = None) -> str:
        """Validate VERSION (default: every version): schema, hashes, content checks, embeddings."""
        from ..priors.bank import list_versions, load_prior_bank, version_folder
        from ..priors.manifest import description_problems, read_manifest, verify_files

        root = self._rootpath()
        versions = [str(version)] if version else list_versions(root)
        if not versions:
            raise AssetError(f"no prior versions under {root}")
        failed = []
        for v in versions:
            try:
                folder = version_folder(v, root)
                man = read_manifest(folder)
                texts = verify_files(folder, man, root)
                for cls, items in zip(man["classes"], texts):
                    problems = description_problems(items, cls["mentions"])
                    if problems:
                        raise AssetError(f"{cls['file']}: {'; '.join(problems[:3])}")
                if "embeddings" in man:
                    bank = load_prior_bank(v, root)
                    emb = f"embeddings {tuple(bank.embeddings.shape)} {bank.embedding_sha256[:12]}…"
                else:
                    emb = "not embedded yet"
                reviewed = "reviewed" if man["review"]["reviewed"] else "NOT reviewed"
                print(f"{v}: ok — {len(texts)} classes, {sum(map(len, texts))} descriptions, {emb}, {reviewed}")
            except AssetError as exc:
                print(f"{v}: FAILED — {exc}")
                failed.append(v)
        if failed:
            raise AssetError(f"prior versions failed checks: {', '.join(failed)}")
        return "ok"

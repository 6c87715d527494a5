"""Time one training step of the PriorSAM heads from cached-feature-shaped inputs.

    python -m priorsam.models.bench --batch 8 --threads 2

Random LiteMedSAM-shaped features and a random prior bank; forward + loss + backward +
AdamW step, median over repeats after two warm-up steps. Reports wall and process CPU time
(on a machine shared with other jobs the CPU time is the steadier number).
"""
from __future__ import annotations

import argparse
import io
import time

import torch

from ..errors import one_line_errors
from .image_encoder import EncoderFeatures
from .losses import PriorSAMLoss
from .priorsam import PriorSAM


def run(batch: int = 8, classes: int = 9, repeats: int = 6, threads: int | None = None,
        refine_rounds: int = 2, full_res_every_round: bool = True) -> dict:
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(classes, 4, 384, generator=g), dim=-1)
    model = PriorSAM(None, text_embeddings=text, text_mask=torch.ones(classes, 4, dtype=torch.bool),
                     prior_version="bench", embedding_sha256="0" * 64, binary_path=False, pretrained=False,
                     refine_rounds=refine_rounds)
    feats = EncoderFeatures(torch.randn(batch, 256, 64, 64, generator=g),
                            (torch.randn(batch, 128, 128, 128, generator=g), torch.randn(batch, 160, 64, 64, generator=g)))
    labels = torch.randint(0, classes, (batch, 256, 256), generator=g)
    crit = PriorSAMLoss(full_res_every_round=full_res_every_round)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    walls, cpus = [], []
    for i in range(repeats + 2):
        c0, t0 = time.process_time(), time.perf_counter()
        loss, _ = crit(model(features=feats), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i >= 2:
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    buf = io.BytesIO()
    sd = model.trainable_state_dict()
    torch.save(sd, buf)
    return {"batch": batch, "threads": torch.get_num_threads(), "wall_s": sorted(walls)[len(walls) // 2],
            "cpu_s": sorted(cpus)[len(cpus) // 2],
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "state_dict_bytes": buf.tell()}


@one_line_errors
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--classes", type=int, default=9)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--refine-rounds", type=int, default=2)
    ap.add_argument("--final-round-only", action="store_true", help="256² loss on the final round only")
    a = ap.parse_args(argv)
    print(run(a.batch, a.classes, a.repeats, a.threads, a.refine_rounds, not a.final_round_only))


if __name__ == "__main__":
    raise SystemExit(main())

"""PriorSAM heads can learn: overfitting one small batch of label-correlated random features."""
from __future__ import annotations

import time

import torch

from priorsam.models import PriorSAM, PriorSAMLoss

from models_helpers import blob_labels, dice_per_class, features_for, random_bank


def test_overfit_small_batch_reaches_high_dice_and_text_matters():
    # One thread: on a shared 2-core machine, two OpenMP threads contending with other jobs
    # spin-wait and run several times slower than one.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        classes = 3
        bank = random_bank(classes)
        labels = blob_labels(2, 256, classes)
        feats = features_for(labels, classes)
        model = PriorSAM(None, bank, binary_path=False, pretrained=False)
        crit = PriorSAMLoss()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
        losses, dice, t0 = [], [0.0], time.time()
        for step in range(300):
            out = model(features=feats)
            loss, _ = crit(out, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if step % 5 == 4:
                dice = dice_per_class(out["semantic_logits"].argmax(1), labels, classes)
                if min(dice) > 0.9:
                    break
        elapsed = time.time() - t0
        assert min(dice) > 0.9, f"Dice {dice} after {step + 1} steps"
        assert sum(losses[-3:]) / 3 < 0.3 * sum(losses[:3]) / 3, "loss did not decrease"
        assert elapsed < 90, f"overfitting took {elapsed:.0f} s"

        # The trained model depends on its text: swapping two classes' descriptions wrecks the result.
        model.eval()
        with torch.no_grad():
            before = dice_per_class(model(features=feats)["semantic_logits"].argmax(1), labels, classes)
            model.text_embeddings[[1, 2]] = model.text_embeddings[[2, 1]].clone()
            model.text_mask[[1, 2]] = model.text_mask[[2, 1]].clone()
            after = dice_per_class(model(features=feats)["semantic_logits"].argmax(1), labels, classes)
        assert min(before) > 0.9
        assert min(after) < 0.6, f"swapping the priors left Dice at {after}"
    finally:
        torch.set_num_threads(threads)

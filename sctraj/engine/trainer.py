"""One training loop for every method: AdamW, a tqdm progress bar, NaN detection, loss history."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch

LossFn = Callable[[int], dict[str, torch.Tensor]]


def train(
    params: Iterable[torch.nn.Parameter],
    loss_fn: LossFn,
    n_steps: int,
    *,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    progress: bool = True,
    desc: str = "training",
    grad_clip: float | None = None,
    history: dict[str, list[float]] | None = None,
    prefix: str = "",
) -> dict[str, list[float]]:
    """Minimise ``loss_fn(step)["loss"]`` for ``n_steps`` AdamW steps.

    ``loss_fn`` returns a dict of scalar tensors; ``"loss"`` is minimised and every entry is logged (per step) in
    the returned history under ``prefix + name``. A non-finite loss stops training with a ``FloatingPointError``.
    """
    from tqdm.auto import tqdm

    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    history = {} if history is None else history
    bar = tqdm(range(n_steps), desc=desc, disable=not progress, leave=False, mininterval=0.5)
    for step in bar:
        out = loss_fn(step)
        loss = out["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()
        vals = {k: float(v.detach()) for k, v in out.items()}
        if not math.isfinite(vals["loss"]):
            raise FloatingPointError(
                f"{desc}: the loss became {vals['loss']} at step {step}. Lower the learning rate (lr=..., now {lr}) "
                "or check the scale of the embedding (very large values? try sctraj.pp.scale_embedding)."
            )
        for k, v in vals.items():
            history.setdefault(prefix + k, []).append(v)
        if progress and step % 50 == 0:
            bar.set_postfix(loss=f"{vals['loss']:.4g}", refresh=False)
    return history

"""The calling convention shared by the Fisher estimates, pruning and distillation.

A model's `heads(user, item, user_feats, item_feats, item_genres, **kw)` returns named
outputs ("rating", "score", optionally "repr"); losses are computed per example, where an
example is one user's list of L items. This module owns those two callable types and the
reshaping that calls flat heads on [N, L] lists, so that none of the modules using them
needs another.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from torch import Tensor

# heads(user, item, user_feats, item_feats, item_genres, **kw) -> {"rating", "score", ...}
HeadsFn = Callable[..., dict[str, Tensor]]
# (heads, examples: name -> [N, L, ...]) -> per-example losses [N]
ExampleLoss = Callable[[HeadsFn, Mapping[str, Tensor]], Tensor]


def run_heads(heads: HeadsFn, ex: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Calls a model's heads on [N, L] lists; outputs come back as [N, L] (repr [N, L, D])."""
    n, length = ex["user"].shape[:2]
    out = heads(
        ex["user"].reshape(-1),
        ex["item"].reshape(-1),
        ex["user_feats"].reshape(n * length, -1),
        ex["item_feats"].reshape(n * length, -1),
        ex["item_genres"].reshape(n * length, -1),
    )
    shaped = {k: v.reshape(n, length, *v.shape[1:]) for k, v in out.items()}
    return shaped

"""SeenIndex membership in torch, for the sampled-softmax negatives masked every batch.

The first version binary-searched the sorted pair keys (`torch.searchsorted`): on an
ML-1M-shaped set that was over half of an MF training step (docs/SCALE.md). A bitmap of
all (user, item) pairs answers with one gather; when users x items is too large for it
(million-item catalogues), the batch users' CSR rows are scattered into a small
[distinct users, distinct items] table instead. Both give exactly the searchsorted answer.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from training.seen import SeenIndex

# Largest bitmap kept (bits): 2^32 bits is 512 MiB; ML-1M needs 3 MiB, 50k items 38 MiB.
MAX_BITMAP_BITS = 1 << 32


@dataclass(frozen=True)
class SeenMask:
    """`mask(users, items)[b, n]`: whether user `users[b]` rated item `items[n]`."""

    stride: int
    bits: Tensor | None  # uint8, little-endian bit order over user * stride + item
    indptr: Tensor  # long [n_users + 2]
    indices: Tensor  # long

    @classmethod
    def from_index(cls, seen: SeenIndex, *, max_bits: int = MAX_BITMAP_BITS) -> SeenMask:
        cells = (seen.n_users + 1) * seen.stride
        bits = None
        if cells <= max_bits:
            flags = np.zeros(cells, dtype=bool)
            flags[seen.keys] = True
            bits = torch.from_numpy(np.packbits(flags, bitorder="little"))
        return cls(
            stride=seen.stride,
            bits=bits,
            indptr=torch.as_tensor(seen.indptr),
            indices=torch.as_tensor(seen.indices),
        )

    def to(self, device: torch.device) -> SeenMask:
        return SeenMask(
            stride=self.stride,
            bits=None if self.bits is None else self.bits.to(device),
            indptr=self.indptr.to(device),
            indices=self.indices.to(device),
        )

    def __call__(self, users: Tensor, items: Tensor) -> Tensor:
        """[B] users, [N] items -> bool [B, N]."""
        if self.bits is not None:
            keys = users.unsqueeze(1) * self.stride + items.unsqueeze(0)  # [B, N]
            byte = self.bits[keys >> 3]
            return ((byte >> (keys & 7).to(torch.uint8)) & 1).bool()
        return self._from_rows(users, items)

    def mask_catalogue_(self, logits: Tensor, users: Tensor) -> Tensor:
        """Sets `logits[b, j]` to -inf, in place, wherever user `users[b]` rated item j:
        the exact softmax's [B, 1 + n_items] logits (column j is item j; column 0, the
        unknown item, no one rated). Writing the B users' ratings into the logits costs a
        fraction of building a dense [B, 1 + n_items] mask and applying it, forward and
        backward, with the same values and gradients (about 5 ms of a 68 ms MF step on
        ml-100k)."""
        rows, items = self._rated(users)
        return logits.index_put_((rows, items), logits.new_tensor(float("-inf")))

    def _rated(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """Every (position in `users`, item) pair the users rated, from the CSR rows."""
        device = users.device
        starts = self.indptr[users]
        lens = self.indptr[users + 1] - starts
        rows = torch.repeat_interleave(torch.arange(users.numel(), device=device), lens)
        offset = torch.repeat_interleave(starts - (torch.cumsum(lens, 0) - lens), lens)
        return rows, self.indices[offset + torch.arange(rows.numel(), device=device)]

    def _from_rows(self, users: Tensor, items: Tensor) -> Tensor:
        device = users.device
        uniq_items, item_col = torch.unique(items, return_inverse=True)
        uniq_users, user_row = torch.unique(users, return_inverse=True)
        col_of = torch.full((self.stride,), -1, dtype=torch.long, device=device)
        col_of[uniq_items] = torch.arange(uniq_items.numel(), device=device)
        rows, rated = self._rated(uniq_users)
        cols = col_of[rated]
        hit = cols >= 0
        table = torch.zeros(uniq_users.numel(), uniq_items.numel(), dtype=torch.bool, device=device)
        table[rows[hit], cols[hit]] = True
        return table[user_row][:, item_col]

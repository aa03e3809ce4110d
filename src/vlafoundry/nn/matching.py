"""Instruction-to-token matching one attribute at a time (``model.grounding: attributes``).

A policy that reads "go to the red ball" must find the cell that is red *and* a ball. Trained on a few colour-object
pairs, a policy that matches the instruction against whole cell features can learn one detector per pair it saw;
such detectors say nothing about a pair it never heard (docs/benchmarks.md, held-out compositions).
:class:`AttributeMatching` builds the match from parts instead: for every attribute ``a`` (object type, colour, ...)
the instruction gives a query ``q_a`` and each token's embedding of that attribute a key ``k_a``; their scaled dot
product ``s_a`` says how well the token's value of that one attribute matches what the instruction asks for. The
match of a token to the whole description, ``prod_a sigmoid(s_a)``, is then a product of parts each learned from
every pair that shares that attribute value, so a new combination of known values is scored like a known one.

    instruction (B, D) ──norm, Linear──► queries (B, A, M)
    attributes  A x (B, N, D) ──Linear per attribute──► keys A x (B, N, M)
    s = <q_a, k_a> / sqrt(M)                     (B, N, A)
    features = Linear([tanh(s), prod sigmoid(s)])  (B, N, D)   added to the tokens by the caller

Trained by behaviour cloning alone, whether the scores come to mean "this attribute is named" is left to chance
(docs/benchmarks.md: two training seeds of ten met the held-out target). :meth:`AttributeMatching.loss_terms`
supervises them directly (``loss.grounding``): ``sigmoid(s_a)`` of a token is trained, by binary cross-entropy, to say
whether the instruction names the token's value of attribute ``a`` (:func:`named_values` reads the words), so each
part is learnt from every instruction naming its value and the product scores a new pair from known parts.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import torch
from torch import nn

from vlafoundry.nn._checks import check_tensor

__all__ = ["READOUTS", "AttributeMatching", "named_values"]

READOUTS = ("sigmoid", "softmax")
_WORD = re.compile(r"[a-z]+")


def named_values(instructions: Sequence[str], names: Sequence[Sequence[str]]) -> torch.Tensor:
    """Which values of one attribute each instruction names: (B, V) bool, ``True`` where one of value ``v``'s words
    (``names[v]``, e.g. ``("grey", "gray")``) is a whole word of the instruction, case-insensitive."""
    lookup: dict[str, list[int]] = {}
    for v, words in enumerate(names):
        for w in words:
            lookup.setdefault(w.lower(), []).append(v)
    out = torch.zeros(len(instructions), len(names), dtype=torch.bool)
    for i, text in enumerate(instructions):
        if not isinstance(text, str):
            raise TypeError(f"instructions[{i}]: expected a string, got {type(text).__name__}")
        for w in _WORD.findall(text.lower()):
            for v in lookup.get(w, ()):
                out[i, v] = True
    return out


class AttributeMatching(nn.Module):
    """Per-token, per-attribute match scores of an instruction, and token features made from them.

    ``forward(instruction (B, D), attributes: A tensors (B, N, D)) -> (features (B, N, D), scores (B, N, A))``.
    ``instruction`` is a pooled instruction feature; ``attributes[a]`` holds each token's embedding of attribute
    ``a`` alone (e.g. the object-type table's row for the cell's object). ``scores`` are the raw ``s_a``.
    ``readout`` ``sigmoid``: the features are ``Linear([tanh(s), prod_a sigmoid(s_a)])``, bounded whatever the scores'
    scale; ``softmax``: one attention over the N tokens of ``sum_a s_a`` (times N, so a uniform attention reads 1),
    ``Linear(N * attn)``. Either way the policy reads the scores through a learned projection, so a trained
    matching may mark the named token by its *lowest* score for an attribute (``bench/grounding_probe.py`` found
    this with both readouts).
    """

    def __init__(self, d_model: int, num_attributes: int = 2, match_dim: int = 32,
                 norm_layer: type[nn.Module] = nn.LayerNorm, readout: str = "sigmoid") -> None:
        super().__init__()
        if num_attributes < 1:
            raise ValueError(f"num_attributes: expected >= 1, got {num_attributes}")
        if match_dim < 1:
            raise ValueError(f"match_dim: expected >= 1, got {match_dim}")
        if readout not in READOUTS:
            raise ValueError(f"readout: expected 'sigmoid' or 'softmax', got {readout!r}")
        self.d_model, self.num_attributes, self.match_dim, self.readout = d_model, num_attributes, match_dim, readout
        self.cond_norm = norm_layer(d_model)
        self.query = nn.Linear(d_model, num_attributes * match_dim)
        self.keys = nn.ModuleList(nn.Linear(d_model, match_dim, bias=False) for _ in range(num_attributes))
        self.proj = nn.Linear(num_attributes + 1 if readout == "sigmoid" else 1, d_model)

    def queries(self, instruction: torch.Tensor) -> torch.Tensor:
        """Checked pooled instructions (B, D) -> one query per attribute (B, A, M)."""
        check_tensor("instruction", instruction, ndim=2, last_dim=self.d_model)
        return self.query(self.cond_norm(instruction)).view(-1, self.num_attributes, self.match_dim)

    def scores(self, instruction: torch.Tensor, attributes: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, D), A x (B, N, D) -> match scores (B, N, A)."""
        q = self.queries(instruction)  # (B, A, M)
        if len(attributes) != self.num_attributes:
            raise ValueError(f"attributes: expected {self.num_attributes} attribute embeddings, got {len(attributes)}")
        b = instruction.shape[0]
        for i, a in enumerate(attributes):
            check_tensor(f"attributes[{i}]", a, ndim=3, last_dim=self.d_model)
            if a.shape[0] != b or a.shape[1] != attributes[0].shape[1]:
                raise ValueError(f"attributes[{i}]: expected shape ({b}, {attributes[0].shape[1]}, {self.d_model}) "
                                 f"like the instruction's batch and attributes[0]'s tokens, got {tuple(a.shape)}")
        s = [torch.einsum("bm,bnm->bn", q[:, i], key(a)) for i, (key, a) in enumerate(zip(self.keys, attributes))]
        return torch.stack(s, dim=-1) / math.sqrt(self.match_dim)  # (B, N, A)

    def indexed_scores(self, instruction: torch.Tensor, tables: Sequence[torch.Tensor], indices: torch.Tensor
                       ) -> torch.Tensor:
        """:meth:`scores` when each token's attribute embedding is a row of a table: (B, D), A tables (V_a, D) and
        indices (B, N, A) int64 -> (B, N, A), the same numbers as ``scores(instruction, [tables[a][indices[..., a]]])``
        from ``V_a`` keys per attribute instead of ``B * N`` (the key projection is linear, so projecting the table
        and indexing commute)."""
        q = self.queries(instruction)  # (B, A, M)
        if len(tables) != self.num_attributes:
            raise ValueError(f"tables: expected {self.num_attributes} attribute tables, got {len(tables)}")
        if indices.dim() != 3 or indices.shape[0] != instruction.shape[0] or indices.shape[2] != self.num_attributes:
            raise ValueError(f"indices: expected shape ({instruction.shape[0]}, N, {self.num_attributes}), got "
                             f"{tuple(indices.shape)}")
        s = []
        for i, (key, table) in enumerate(zip(self.keys, tables)):
            check_tensor(f"tables[{i}]", table, ndim=2, last_dim=self.d_model)
            per_value = q[:, i] @ key(table).T  # (B, V_a): every value's match
            s.append(per_value.gather(1, indices[..., i]))  # (B, N)
        return torch.stack(s, dim=-1) / math.sqrt(self.match_dim)  # (B, N, A)

    def readout_features(self, s: torch.Tensor) -> torch.Tensor:
        """Raw scores (B, N, A) -> the features (B, N, D) added to the tokens (see the class docstring)."""
        if self.readout == "softmax":
            attn = torch.softmax(s.sum(dim=-1), dim=-1) * s.shape[1]  # (B, N): the tokens that match best
            return self.proj(attn.unsqueeze(-1))
        both = torch.sigmoid(s).prod(dim=-1, keepdim=True)  # (B, N, 1): every attribute matches
        return self.proj(torch.cat([torch.tanh(s), both], dim=-1))  # (B, N, D)

    @staticmethod
    def loss_terms(scores: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy of ``sigmoid(scores)`` against ``targets``, one term per kept entry.

        ``scores`` (B, N, A) raw ``s_a``; ``targets`` (B, N, A) bool or float in [0, 1] (1: the instruction names
        this token's value of attribute ``a``); ``mask`` (B, N, A) bool, the entries to supervise -> (M,) terms, M
        the number of ``True`` entries of ``mask`` (the caller averages them)."""
        if scores.shape != targets.shape or scores.shape != mask.shape:
            raise ValueError(f"loss_terms: expected scores, targets and mask of one shape, got {tuple(scores.shape)}, "
                             f"{tuple(targets.shape)}, {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"mask: expected dtype torch.bool, got {mask.dtype}")
        return nn.functional.binary_cross_entropy_with_logits(scores[mask], targets[mask].to(scores.dtype),
                                                              reduction="none")

    def forward(self, instruction: torch.Tensor, attributes: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scores(instruction, attributes)  # (B, N, A)
        return self.readout_features(s), s  # (B, N, D), (B, N, A)

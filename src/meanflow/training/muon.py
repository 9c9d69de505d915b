"""Muon for the weight matrices, Nesterov Adam for the rest: pMF's optimiser (`training.optimizer=muon`).

pMF trains with ``optax.contrib.muon(learning_rate=1e-3, adam_b2=0.95)`` and optax's other defaults
(``utils/trainstate_util.py:74-77`` of github.com/Lyy-iiis/pMF). That optimiser sends every 2-D leaf of
the flax parameter tree to Muon and every other leaf to optax's ``adamw(nesterov=True)``. In the
official network the 2-D leaves are exactly the ``Dense`` kernels: the class table, the in-context
tokens and the position embedding are ``[1, n, D]`` (3-D), the patch convolutions 4-D, biases, norms
and gates 1-D. Here the grouping is therefore by module, not by rank:

* **Muon** (``torch.optim.Muon``): the ``weight`` of every ``nn.Linear`` (the output layers and the
  embedders' MLPs included). A module may declare ``muon_row_blocks = {"qkv.weight": 3}`` when one
  weight stacks several matrices along its rows (the fused q/k/v, SwiGLU's ``W_1; W_3``); each block is
  then its own Muon matrix, as the official separate ``Dense`` layers (orthogonalised and scaled
  one by one).
* **Nesterov Adam** (``torch.optim.NAdam`` with a constant momentum ``mu_t = beta_1``): everything else
  (``nn.Embedding`` tables, tokens, position embeddings, convolutions, biases, norms, gates).

Per step, with ``g`` the (clipped) gradient, for a Muon matrix ``W [out, in]`` (torch.optim.Muon)::

    B <- mu B + (1 - mu) g;   U = (1 - mu) g + mu B            (Nesterov)
    O = NS_5(U / max(||U||_F, eps))                          (quintic Newton-Schulz, bf16)
    W <- W (1 - lr wd) - lr sqrt(max(1, out / in)) O

and for the other parameters (optax ``scale_by_adam(nesterov=True)`` == NAdam with ``mu_t = beta_1``)::

    m <- b1 m + (1 - b1) g;   v <- b2 v + (1 - b2) g^2
    p <- p (1 - lr wd) - lr [b1 m / (1 - b1^(t+1)) + (1 - b1) g / (1 - b1^t)] / (sqrt(v / (1 - b2^t)) + eps)

Hyper-parameters (`TrainingConfig`): ``lr`` (both halves, as optax's default ``adam_learning_rate``),
``muon_momentum`` (optax ``beta`` 0.95), ``betas`` (Adam; pMF (0.9, 0.95)), ``eps`` (both; optax 1e-8),
``weight_decay`` (both, decoupled; optax 0). Nesterov, 5 Newton-Schulz steps with coefficients
(3.4445, -4.7750, 2.0315) and the width scale ``sqrt(max(1, out / in))`` are optax's and torch's
defaults alike.

Known differences from optax (documented, not corrected): torch runs Newton-Schulz in bfloat16 (optax
in the parameters' float32); optax bias-corrects Muon's momentum (the two Nesterov terms are weighted
``mu / (1 - mu^(t+1))`` and ``(1 - mu) / (1 - mu^t)``: the direction differs from torch's in the first
~100 steps only; the Frobenius normalisation removes the scale); optax divides by ``||U|| + eps``
where torch clamps ``||U||`` at ``eps``.

Neither half has a fused kernel, so the non-finite guard skips a bad step on the host
(`phases.update.optimizer_step`). FSDP is not supported (Muon needs whole matrices).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

NADAM_CONSTANT_MOMENTUM = 1e9
"""`momentum_decay` of torch's NAdam that makes its momentum schedule ``mu_t = b1 (1 - 0.5 * 0.96^(t *
momentum_decay))`` the constant ``b1`` (0.96^(1e9) underflows to 0): optax's Nesterov Adam."""


@dataclass
class MuonGroups:
    """The split of a network's parameters between the two halves.

    Attributes:
        matrices: the Muon matrices: whole ``nn.Linear`` weights, or row-block views of them.
        owners: for each entry of `matrices`, the parameter it is (or is a view of).
        rows: for each entry of `matrices`, its row slice of the owner (``slice(None)``: whole).
        others: every other parameter (Nesterov Adam), in `net.parameters()` order.
        names: parameter name of each matrix (``name[a:b]`` for a block) and each other parameter.
    """

    matrices: list[Tensor]
    owners: list[nn.Parameter]
    rows: list[slice]
    others: list[nn.Parameter]
    names: dict[str, list[str]]


def muon_groups(net: nn.Module) -> MuonGroups:
    """Split `net`'s parameters (module docstring): ``nn.Linear`` weights to Muon, cut into the row
    blocks their modules declare in ``muon_row_blocks``; the rest to Nesterov Adam."""
    blocks: dict[int, int] = {}
    for mod in net.modules():
        for local, n in getattr(mod, "muon_row_blocks", {}).items():
            blocks[id(mod.get_parameter(local))] = int(n)
    linear = {id(m.weight) for m in net.modules() if isinstance(m, nn.Linear)}
    out = MuonGroups([], [], [], [], {"muon": [], "adam": []})
    for name, p in net.named_parameters():  # shared parameters are listed once
        if id(p) not in linear:
            out.others.append(p)
            out.names["adam"].append(name)
            continue
        n = blocks.get(id(p), 1)
        if p.shape[0] % n:
            raise ValueError(f"{name}: {p.shape[0]} rows do not split into {n} Muon blocks")
        size = p.shape[0] // n
        for i in range(n):
            rows = slice(None) if n == 1 else slice(i * size, (i + 1) * size)
            # A view that shares the parameter's storage: Muon's in-place update writes the weights.
            out.matrices.append(p if n == 1 else p.detach()[rows])
            out.owners.append(p)
            out.rows.append(rows)
            out.names["muon"].append(name if n == 1 else f"{name}[{rows.start}:{rows.stop}]")
    return out


class MuonAdam:
    """One optimizer made of ``torch.optim.Muon`` (matrices) and ``torch.optim.NAdam`` (the rest).

    It offers what the training loop uses of a ``torch.optim.Optimizer``: ``param_groups`` (Muon's
    groups, then Adam's: the same dicts, so the learning-rate schedule reaches both halves),
    ``step``, ``zero_grad``, and ``state_dict`` / ``load_state_dict`` in the plain-optimizer layout
    (parameter indices ``0..M-1`` for the Muon matrices, ``M..`` for the others), which the
    checkpoint stores as for Adam and restores bit for bit.

    Args:
        net: the (unwrapped) network.
        lr, momentum, betas, eps, weight_decay: see the module docstring.
    """

    def __init__(self, net: nn.Module, *, lr: float, momentum: float = 0.95,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, weight_decay: float = 0.0):
        self.groups = muon_groups(net)
        g = self.groups
        self._blocks = [(m, o, r) for m, o, r in zip(g.matrices, g.owners, g.rows) if m is not o]
        self._params = list(dict.fromkeys([*g.owners, *g.others]))
        self.muon = (torch.optim.Muon(g.matrices, lr=lr, momentum=momentum, nesterov=True, eps=eps,
                                      weight_decay=weight_decay) if g.matrices else None)
        self.adam = (torch.optim.NAdam(g.others, lr=lr, betas=tuple(betas), eps=eps,
                                       weight_decay=weight_decay, decoupled_weight_decay=True,
                                       momentum_decay=NADAM_CONSTANT_MOMENTUM) if g.others else None)

    @property
    def _parts(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.muon, self.adam) if o is not None]

    @property
    def param_groups(self) -> list[dict]:
        """Muon's parameter groups, then Adam's (the optimizers' own dicts)."""
        return [grp for o in self._parts for grp in o.param_groups]

    @torch.no_grad()
    def step(self) -> None:
        """One update of both halves from the parameters' current gradients."""
        for view, owner, rows in self._blocks:
            if view.untyped_storage().data_ptr() != owner.untyped_storage().data_ptr():
                raise RuntimeError("MuonAdam: a parameter was replaced after the optimizer was built "
                                   "(e.g. net.to() onto another device): build the optimizer afterwards")
            view.grad = None if owner.grad is None else owner.grad[rows]
        for o in self._parts:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients of every parameter (and of the row-block views)."""
        for view, _, _ in self._blocks:
            view.grad = None
        for p in self._params:
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.zero_()

    def state_dict(self) -> dict:
        """``{"state": {i: {...}}, "param_groups": [...]}`` over both halves, Muon's indices first."""
        state: dict[int, dict] = {}
        groups: list[dict] = []
        offset = 0
        for o in self._parts:
            sd = o.state_dict()
            state.update({offset + int(i): st for i, st in sd["state"].items()})
            groups += [{**grp, "params": [offset + i for i in grp["params"]]} for grp in sd["param_groups"]]
            offset += sum(len(grp["params"]) for grp in o.param_groups)
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict` (of an optimizer over the same network and grouping)."""
        groups = list(state_dict["param_groups"])
        offset = 0
        for o in self._parts:
            mine, groups = groups[:len(o.param_groups)], groups[len(o.param_groups):]
            count = sum(len(grp["params"]) for grp in o.param_groups)
            if len(mine) != len(o.param_groups) or sum(len(grp["params"]) for grp in mine) != count:
                raise ValueError("optimizer state does not match this network's Muon / Adam grouping")
            state = {int(i) - offset: st for i, st in state_dict["state"].items()
                     if offset <= int(i) < offset + count}
            o.load_state_dict({"state": state, "param_groups": [
                {**grp, "params": [int(i) - offset for i in grp["params"]]} for grp in mine]})
            offset += count
        if groups:
            raise ValueError("optimizer state has more parameter groups than this Muon / Adam optimizer")

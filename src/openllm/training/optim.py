"""Muon for the hidden weight matrices, AdamW for everything else, as one optimizer the `Trainer` can drive.

`torch.optim.Muon` orthogonalises each 2-D update with Newton–Schulz iterations; it suits the matrices inside the
decoder layers (attention and MLP projections), not the embeddings, the LM head, norms, or the MoE router and
experts, which keep AdamW (Keller Jordan's modded-nanogpt and Moonshot's Moonlight split them the same way). With
`adjust_lr_fn="match_rms_adamw"` Muon's updates have AdamW's RMS, so both halves share one learning rate and one
schedule: `optim: muon` in a recipe needs no other change.

    trainer = Trainer(model, args, optimizers=create_optimizers(model, args), ...)
"""

from __future__ import annotations

import torch

MUON = "muon"


def muon_parameter_names(model) -> list[str]:
    """Trainable parameters that Muon updates: the 2-D projection matrices inside the decoder layers."""
    names = []
    for name, param in model.named_parameters():
        if not param.requires_grad or param.ndim != 2 or ".layers." not in f".{name}":
            continue
        if ".mlp.gate." in name:  # the MoE router: few rows, trained like the head
            continue
        names.append(name)
    return names


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer over two: `torch.optim.Muon` for `muon_params`, `torch.optim.AdamW` for `adamw_params`.

    `param_groups` is the two optimizers' groups, so learning-rate schedulers, gradient clipping and the Trainer
    see one optimizer; `state_dict()` holds both, so checkpoints resume exactly.
    """

    def __init__(self, muon_params, adamw_params, lr: float, weight_decay: float = 0.1,
                 momentum: float = 0.95, nesterov: bool = True, ns_steps: int = 5,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8):
        self.muon = torch.optim.Muon(muon_params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                                     nesterov=nesterov, ns_steps=ns_steps, adjust_lr_fn="match_rms_adamw")
        self.adamw = torch.optim.AdamW(adamw_params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__([{"params": []}], {"lr": lr})  # hooks and bookkeeping of the base class
        self.param_groups = self.muon.param_groups + self.adamw.param_groups

    @property
    def state(self):
        return {**self.muon.state, **self.adamw.state}

    @state.setter
    def state(self, value):  # the base class assigns an empty state; the two inner optimizers own theirs
        pass

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        self.muon.zero_grad(set_to_none=set_to_none)
        self.adamw.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    def load_state_dict(self, state_dict):
        if set(state_dict) != {"muon", "adamw"}:
            raise ValueError("This optimizer state was not saved by MuonWithAdamW (`optim: muon`); resume with the "
                             "optimizer the checkpoint was trained with.")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self.param_groups = self.muon.param_groups + self.adamw.param_groups


def create_muon_optimizer(model, args) -> MuonWithAdamW:
    """`MuonWithAdamW` for `model` with the learning rate, weight decay and Adam betas of `args`
    (`TrainingArguments`). Biases and norm weights get no weight decay, as in the Trainer's own AdamW."""
    muon_names = set(muon_parameter_names(model))
    if not muon_names:
        raise ValueError("optim='muon' found no 2-D weight matrices inside decoder layers (`model.layers.*`) to "
                         "give to Muon; use an AdamW optimizer for this model.")
    params = dict(model.named_parameters())
    decay, no_decay = [], []
    for name, param in params.items():
        if param.requires_grad and name not in muon_names:
            (decay if param.ndim >= 2 else no_decay).append(param)
    adamw_groups = [{"params": decay, "weight_decay": args.weight_decay},
                    {"params": no_decay, "weight_decay": 0.0}]
    return MuonWithAdamW([params[n] for n in params if n in muon_names], adamw_groups, lr=args.learning_rate,
                         weight_decay=args.weight_decay, betas=(args.adam_beta1, args.adam_beta2),
                         eps=args.adam_epsilon)


def create_optimizers(model, args) -> tuple:
    """The Trainer's `optimizers=` argument: Muon + AdamW when `args.optim_muon` is set, else `(None, None)`, which
    lets the Trainer build the optimizer named in `args.optim`."""
    if getattr(args, "optim_muon", False):
        return create_muon_optimizer(model, args), None
    return None, None


__all__ = ["MUON", "MuonWithAdamW", "create_muon_optimizer", "create_optimizers", "muon_parameter_names"]

"""Which submodules a forward pass really calls (tracker hooks and PCA layers need calls)."""

from __future__ import annotations

from torch import nn


def weight_only_layers(model: nn.Module) -> set[str]:
    """Qualified names of Linear layers whose parent only reads their weights and never calls them:
    ``nn.MultiheadAttention`` hands ``out_proj``'s weight to a functional kernel, so a hook on it
    never fires and wrapping it breaks the attention."""
    return {f"{name}.out_proj" if name else "out_proj" for name, module in model.named_modules()
            if isinstance(module, nn.MultiheadAttention)}

"""State_dict adapters that more than one family registers (``ModelSpec.adapt_state_dict``)."""
from __future__ import annotations


def drop_aux_keys(prefixes):
    """torchvision's checkpoints hold the aux heads even though its builders drop them; a model
    built without them takes the rest strictly, as torchvision's builder does."""

    def adapt(state_dict, model):
        if getattr(model, "aux_logits", True):
            return state_dict
        return {k: v for k, v in state_dict.items() if not k.startswith(prefixes)}

    return adapt

"""Print the segmentation parity table: model, input size, max abs error of out/aux against
torchvision (float32), parameter counts ours vs torchvision.

    PYTHONPATH=.:tests python scripts/segmentation_parity_table.py [name ...]
"""
import sys

import jax
import jax.numpy as jnp
import torch
import torchvision

import jaxvision as jv
from seg_parity import check_segmenter, load, tv_segmenter
from tv_parity import param_count, torch_param_count

NAMES = ["fcn_resnet50", "fcn_resnet101", "deeplabv3_resnet50", "deeplabv3_resnet101",
         "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]
SIZES = [(97, 129), (128, 160)]

print("| model | input | out max abs | aux max abs | params ours | params torchvision |")
print("|---|---|---|---|---|---|")
for name in sys.argv[1:] or NAMES:
    kw = {} if name.startswith("lraspp") else {"aux_loss": True}
    tmodel = tv_segmenter(name, **kw)
    model, variables = load(name, tmodel, **kw)
    errs = check_segmenter(name, tmodel, variables, model, SIZES)  # asserts torch's own bar
    ours = param_count(variables)
    theirs = torch_param_count(tmodel)
    for size in SIZES:
        aux = errs.get((size, "aux"))
        print(f"| {name}{' (aux)' if kw else ''} | {size[0]}x{size[1]} | "
              f"{errs[(size, 'out')]:.2e} | {'-' if aux is None else f'{aux:.2e}'} | "
              f"{ours:,} | {theirs:,} |", flush=True)
    del tmodel, model, variables
    jax.clear_caches()

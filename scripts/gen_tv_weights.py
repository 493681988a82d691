"""Write jaxvision/tv_weights.json: what torchvision's DEFAULT classification weights publish
about themselves (``meta``: recipe URL, ImageNet-1K accuracy, GFLOPS, file size, notes).

    python scripts/gen_tv_weights.py

Only what the installed torchvision exposes is written; tests/test_tv_weights.py compares the
file with it, so a torchvision upgrade that changes a number fails there until this is re-run.
"""
import json
import os

import torchvision

OUT = os.path.join(os.path.dirname(__file__), "..", "jaxvision", "tv_weights.json")
FIELDS = ("weights", "recipe", "acc1", "acc5", "gflops", "file_size_mb", "docs")


def rows():
    out = {}
    for name in sorted(torchvision.models.list_models(module=torchvision.models)):
        w = torchvision.models.get_model_weights(name).DEFAULT
        m = w.meta
        acc = m["_metrics"]["ImageNet-1K"]
        out[name] = (str(w), m["recipe"], acc["acc@1"], acc["acc@5"], m["_ops"],
                     m["_file_size"], " ".join(m.get("_docs", "").split()))
    return out


def main():
    # one model a line: a diff of a torchvision upgrade reads model by model
    body = ",\n".join(f" {json.dumps(k)}: {json.dumps(dict(zip(FIELDS, v)))}"
                      for k, v in rows().items())
    with open(OUT, "w") as f:
        f.write(f'{{"torchvision": {json.dumps(torchvision.__version__.split("+")[0])},\n'
                f' "default_weights": {{\n{body}}}}}\n')


if __name__ == "__main__":
    main()

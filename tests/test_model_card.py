"""Model cards (convert/card.py): ``jaxvision info NAME`` against torchvision's own published
weight metadata; the card of a torchvision file, a timm name and a user's file. Directory cards
of real conversions and exports are checked where those are made (test_convert.py,
test_timm_weights.py, test_export_onnx.py)."""
import json

import torchvision

from jaxvision.cli import main as cli_main
from jaxvision.convert import card


def test_info_shows_torchvisions_published_weights_accuracy_and_licence(capsys):
    assert cli_main(["info", "resnet50"]) == 0
    shown = json.loads(capsys.readouterr().out)["card"]
    truth = torchvision.models.get_model_weights("resnet50").DEFAULT
    assert shown["weights"]["provenance"].startswith(f"torchvision {truth}")
    metrics = truth.meta["_metrics"]["ImageNet-1K"]
    assert shown["weights"]["accuracy"] == {"dataset": "ImageNet-1K", "acc@1": metrics["acc@1"],
                                            "acc@5": metrics["acc@5"]}
    assert shown["weights"]["recipe"] == truth.meta["recipe"]
    assert shown["weights"]["license"].startswith("BSD-3-Clause")
    assert shown["num_params"] == truth.meta["num_params"] == 25_557_032
    assert (shown["preprocessing"]["crop_size"], shown["preprocessing"]["mean"]) == (
        224, [0.485, 0.456, 0.406])
    # a model torchvision has no weights for says so
    assert cli_main(["info", "mobilenet_v1"]) == 0
    none = json.loads(capsys.readouterr().out)["card"]["weights"]
    assert none["provenance"].startswith("none published") and none["accuracy"] is None


def test_weights_cards_of_torchvision_timm_and_user_files():
    v1 = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    tv = card.weights_card("resnet18", "resnet18-f37072fd.pth", {"crop_size": 224}, 11_689_512, v1)
    assert tv["weights"]["accuracy"]["acc@1"] == v1.meta["_metrics"]["ImageNet-1K"]["acc@1"]
    assert tv["weights"]["provenance"] == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    timm = card.weights_card("resnet50", "timm:resnet50.a1_in1k", {"license": "apache-2.0"}, 1)
    assert timm["weights"]["license"] == "apache-2.0"
    assert "timm/resnet50.a1_in1k" in timm["weights"]["provenance"]
    assert card.weights_card("resnet50", "timm:resnet50.x", {}, 1)["weights"]["license"].startswith(
        "unknown")
    mine = card.weights_card("resnet50", "/runs/mine.pth", {}, 5)
    assert (mine["weights"]["provenance"], mine["weights"]["accuracy"]) == ("/runs/mine.pth", None)
    assert mine["weights"]["license"].startswith("unknown")


def test_info_on_a_directory_without_weights_says_so(tmp_path, capsys):
    assert cli_main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: not a jaxvision weights directory (no readable jaxvision.json" in err

"""The full config schema with defaults; configs/*.py start from ``default_config()``."""
import ml_collections

from jaxvision.data.config import default_data_config
from jaxvision.train.compile_cache import default_dir as default_compile_cache
from jaxvision.train.freeze import default_freeze_config
from jaxvision.train.optim import default_optimizer_config, default_schedule_config


def default_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.task = "classification"  # classification | segmentation | detection | distillation
    c.model = ml_collections.ConfigDict(dict(
        name="resnet18", num_classes=0,  # 0: the data's number of classes
        pretrained="", pretrained_strict=True, dtype="float32", kwargs={},
        # a torchvision classification state_dict (.pth) for a segmenter's or detector's
        # backbone (torchvision's --weights-backbone); the neck and head start from init
        pretrained_backbone=""))
    c.data = default_data_config()
    c.optimizer = default_optimizer_config()
    c.schedule = default_schedule_config()
    c.freeze = default_freeze_config()
    c.train = ml_collections.ConfigDict(dict(
        epochs=1, steps=0, seed=0, label_smoothing=0.0, grad_accum_steps=1,
        # classification: MixUp / CutMix on the device (0: off; both set: one per batch),
        # applied to a batch with probability mix_prob
        mixup_alpha=0.0, cutmix_alpha=0.0, mix_prob=1.0,
        # EMA of the weights and BatchNorm statistics (evaluated and checkpointed when on),
        # updated every ema_steps batches; ema_reference: torchvision's reference rule (decay
        # adjusted to batch, ema_steps and epochs; copies during the warm-up; train/ema.py)
        ema_decay=ml_collections.FieldReference(None, float), ema_steps=1, ema_reference=False,
        log_every=50, eval_every_epochs=1))
    # task "distillation" (tasks/distill.py): the student (``model``) learns from a frozen
    # classifier ``teacher.name`` whose weights are ``teacher.pretrained`` (a torchvision .pth,
    # a 'jaxvision convert' directory or a jaxvision train workdir);
    # loss = alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * CE
    c.teacher = ml_collections.ConfigDict(dict(name="", pretrained=""))
    c.distill = ml_collections.ConfigDict(dict(temperature=4.0, alpha=0.5))
    # best_metric "": the task's (val_top1 / val_miou; with EMA on, its EMA weights' val_top1_ema
    # / val_miou_ema: both weights are evaluated then); best_mode "": the task's for its own
    # metric, else inferred (a metric ending in "loss" is minimised)
    c.checkpoint = ml_collections.ConfigDict(dict(keep=3, best_metric="", best_mode="",
                                                  save_every_steps=0))
    c.segmentation = ml_collections.ConfigDict(dict(
        aux_loss=False,  # build the model's aux FCN head (torchvision's aux_loss)
        aux_weight=0.5, aux_lr_mult=10.0))  # torchvision's reference recipe
    c.logging = ml_collections.ConfigDict(dict(tensorboard=True, num_images=16,
                                               progress_bar=True))
    # XLA's persistent compilation cache: a directory, "" turns it off
    c.compile_cache = default_compile_cache()
    # how convolutions lower on the CPU: "auto" takes jaxvision.layers.lowering's exact rewrites
    # where XLA:CPU is slow (several times faster training of small models), "xla" XLA's own
    # convolution everywhere; "" the library's default ("auto", unless the code that calls
    # train() chose otherwise with lowering.using)
    c.conv_lowering = ""
    return c

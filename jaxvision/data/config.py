import ml_collections


def default_data_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.source = "shapes"  # shapes | imagefolder | voc | coco | tfds
    c.image_size = 224
    c.resize_size = ml_collections.FieldReference(None, field_type=int)  # None: from the model
    # classification's eval crop (torchvision's --val-crop-size); None: image_size
    c.eval_image_size = ml_collections.FieldReference(None, field_type=int)
    c.mean = ml_collections.FieldReference(None, field_type=tuple)  # None: the model's
    c.std = ml_collections.FieldReference(None, field_type=tuple)
    c.interpolation = "bilinear"
    c.batch_size = 64  # global
    c.eval_batch_size = 128
    c.num_workers = 0
    # classification: torchvision's repeated-augmentation sampler (--ra-sampler --ra-reps K):
    # K copies of each image per epoch, spread over the processes; 0: off
    c.repeated_augment = 0
    c.seed = 0
    # classification train transforms, in torchvision's order: RandomResizedCrop, flip, one
    # policy (None | autoaugment | randaugment | trivialaugment | augmix, its parameters below,
    # resampling with data.interpolation as torchvision's presets do), then after normalising
    # RandomErasing with probability random_erasing (value 0, or N(0, 1) noise with
    # random_erasing_noise: torchvision's value="random")
    c.augment = ml_collections.ConfigDict(dict(
        random_resized_crop=True, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), hflip=True,
        policy=ml_collections.FieldReference(None, field_type=str),
        autoaugment=dict(policy="imagenet"),  # imagenet | cifar10 | svhn
        randaugment=dict(num_ops=2, magnitude=9, num_magnitude_bins=31),
        trivialaugment=dict(num_magnitude_bins=31),
        augmix=dict(severity=3, mixture_width=3, chain_depth=-1, alpha=1.0, all_ops=True),
        random_erasing=0.0, random_erasing_scale=(0.02, 0.33),
        random_erasing_ratio=(0.3, 3.3), random_erasing_noise=False))
    # segmentation (task="segmentation"): image_size is the train crop, resize_size the base
    # size; train resizes the shorter side to a random size in scale_range * base, eval to base
    c.segmentation = ml_collections.ConfigDict(dict(
        scale_range=(0.5, 2.0), hflip=True,  # masks: 255 = ignore, always
        # eval batches are padded (mask 255) to this square; None: max(image_size, resize_size).
        # An image whose longer side would exceed it is resized to fit.
        eval_size=ml_collections.FieldReference(None, field_type=int)))
    # detection (task="detection"): image_size is torchvision's min_size (the shorter side);
    # the longer side is capped at max_size (None: image_size * 1333 / 800, torchvision's
    # ratio); images are padded to a canvas square (None: max_size rounded up to 32); train
    # draws the shorter side from scale_range * image_size (multi-scale training).
    # Instance segmentation / keypoints: masks adds each box's mask (max_boxes, canvas, canvas)
    # uint8 to a batch, keypoints its keypoints (max_boxes, K, 3) (coco, shapes: masks only);
    # crowd keeps COCO's crowd regions in the val batches (crowd_boxes, crowd_classes,
    # num_crowd, with masks crowd_masks) so that evaluation ignores detections on them
    c.detection = ml_collections.ConfigDict(dict(
        max_size=ml_collections.FieldReference(None, field_type=int),
        canvas=ml_collections.FieldReference(None, field_type=int),
        scale_range=(1.0, 1.0), hflip=True, max_boxes=100, masks=False, keypoints=False,
        crowd=False))
    c.voc = ml_collections.ConfigDict(dict(
        root="", train_split="train", val_split="val", num_classes=21))
    c.shapes = ml_collections.ConfigDict(dict(
        num_classes=4, num_train=4096, num_val=512, image_size=32, seed=0))
    c.imagefolder = ml_collections.ConfigDict(dict(
        root="", train_dir="train", val_dir="val", val_fraction=0.0, skip_corrupt=False,
        # decode train JPEGs at 1/2, 1/4 or 1/8 size (libjpeg DCT scaling) where the random
        # crop is that many times larger than image_size: 3.5x faster on 2000x1500 photos at
        # 224, nothing on ImageNet's ~500x375; pixels differ slightly from a full decode, and
        # torchvision never drafts, so off by default (docs/performance.md, "Data throughput")
        draft=False))
    c.tfds = ml_collections.ConfigDict(dict(
        name="", data_dir=ml_collections.FieldReference(None, field_type=str),
        train_split="train", val_split="validation", image_key="image", label_key="label",
        # segmentation: the mask feature, and the class names (their number: the class count)
        mask_key="segmentation_mask", class_names=()))
    # COCO-format detection (task="detection"): paths relative to root; labels are category
    # ids (91-class layout, 0 = background) unless contiguous numbers the categories 1..K
    c.coco = ml_collections.ConfigDict(dict(
        root="", train_ann="annotations/instances_train2017.json", train_images="train2017",
        val_ann="annotations/instances_val2017.json", val_images="val2017", contiguous=False))
    return c

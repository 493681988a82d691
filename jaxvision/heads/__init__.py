"""Task heads: segmentation (FCN, DeepLabV3, DeepLabV3+, LR-ASPP) and detection (RetinaNet,
FCOS, SSD, YOLO, the RPN of two-stage detectors)."""

"""Necks: dict of NHWC feature maps in (``feature_info`` order) -> dict of maps out."""

"""Label conventions shared by the data that writes them and the tasks that read them."""

IGNORE = 255  # mask value of pixels that count nowhere (VOC's object borders, crop padding)

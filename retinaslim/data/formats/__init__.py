"""Label formats retinaslim reads and writes besides its own COCO files: Pascal VOC, YOLO, Label Studio."""

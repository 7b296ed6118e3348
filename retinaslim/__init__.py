"""retinaslim: data distillation for object detection.

A ResNet50 RetinaNet teacher labels unlabelled images with multi-transform ensembling, the machine
labels are filtered, and a slim RetinaNet student learns from human and machine labels together.
"""

__version__ = "0.1.0"

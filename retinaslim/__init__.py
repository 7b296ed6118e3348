"""retinaslim: data distillation for object detection.

A ResNet50 RetinaNet teacher labels unlabelled images with multi-transform ensembling, the machine
labels are filtered, and a slim RetinaNet student learns from human and machine labels together.

Each command is a function here, with the command's options as keywords (see retinaslim/api.py and
docs/api.md)::

    import retinaslim
    data = retinaslim.synth("cards")
    run = retinaslim.train_student(labeled=data.files["labeled"], val=data.files["val"], out="runs/student")
"""

from retinaslim.api import (convert, evaluate, export, filter, import_teacher, predict, profile, pseudo_label, show,
                            synth, train_student, train_teacher)
from retinaslim.errors import UserError

__version__ = "0.1.0"
__all__ = ["UserError", "convert", "evaluate", "export", "filter", "import_teacher", "predict", "profile",
           "pseudo_label", "show", "synth", "train_student", "train_teacher"]

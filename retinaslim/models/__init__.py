"""Models: registered teacher and student builders, checkpoints, inference."""

from retinaslim.models import student, teacher  # noqa: F401  (importing registers the builders)

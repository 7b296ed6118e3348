"""Models: registered teacher and student builders, checkpoints, inference."""

from retinaslim.models import baselines, student, teacher  # noqa: F401  (importing registers the builders)

"""Tasks: what a sample's target is, the training loss, and the metrics of an evaluation.

`task._target_` picks one (conf/task/): `fedray.tasks.classification.Classification` (the
default) or `fedray.tasks.segmentation.Segmentation`. `build_task(cfg)` builds it.
"""

from fedray.tasks.base import Accumulator, Task, build_task

__all__ = ["Accumulator", "Task", "build_task"]

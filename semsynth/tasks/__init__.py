"""Training tasks: the `Task` interface (`base`), `crn` (`crn`) and the three SIMS networks
(`sims`: `sims-synthesis`, `sims-transform`, `sims-order`). Importing the package registers them
all in `TASKS`. Inference never imports this package."""

from .base import TASKS, Task, build_task, data_paths, open_training_data, register_task
from .crn import CRNTask
from .sims import OrderTask, SynthesisTask, TransformTask

__all__ = [
    "TASKS",
    "Task",
    "build_task",
    "data_paths",
    "open_training_data",
    "register_task",
    "CRNTask",
    "SynthesisTask",
    "TransformTask",
    "OrderTask",
]

"""Synthetic environments and sequence tasks -> token sequences + ground-truth latents."""

from tasks.base import IGNORE_INDEX, Batch, Task
from tasks.registry import TASKS, build_task, task_config

__all__ = ["IGNORE_INDEX", "TASKS", "Batch", "Task", "build_task", "task_config"]

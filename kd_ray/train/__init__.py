"""Plain-PyTorch training: teacher training, distillation epochs, evaluation, checkpoints.

Nothing here imports Ray: ``kd_ray.orchestration`` wraps these runs in Ray Train workers, and the
tests drive them directly in one process.
"""

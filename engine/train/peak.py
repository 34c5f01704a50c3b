"""Measured peak memory of a training run, to stand beside the estimate.

On a GPU, PyTorch's caching allocator already counts: `torch.cuda.max_memory_allocated`.
On the CPU there is no such counter, so we count ourselves: every tensor storage alive
when tracking starts, plus every storage an operator creates while tracking, each
removed again when PyTorch frees it. The running sum's maximum is the peak of live
tensor bytes, the same quantity the estimator's "allocated" level predicts.

Watching every operator costs Python time, so the trainer tracks only the first few
optimizer steps: by the end of step 2 the weights, gradients, optimizer states and one
step's activations have all coexisted, which is where the peak of a steady run lies.
"""

from __future__ import annotations

import functools
import gc
import weakref

CPU_TRACKED_STEPS = 2  # optimizer steps watched on the CPU (engine.estimate.lengths spans the same)


class LiveTensorPeak:
    """Peak of live CPU tensor storage bytes between `start()` and `stop()`."""

    def __init__(self):
        self.live = 0
        self.peak = 0
        self._refs: dict[int, weakref.ref] = {}  # storages we count, by id (removed when freed)
        self._mode = None

    # --- counting -------------------------------------------------------------------
    def _track(self, tensor) -> None:
        if tensor.is_meta or tensor.device.type != "cpu":
            return
        try:
            storage = tensor.untyped_storage()
        except Exception:  # sparse or otherwise storage-less tensors
            return
        key = id(storage)
        if key in self._refs:
            return
        # PyTorch keeps one Python object per storage for as long as the storage lives, so a
        # weak reference's callback runs exactly when the memory is released.
        nbytes = storage.nbytes()
        self._refs[key] = weakref.ref(storage, functools.partial(self._free, key, nbytes))
        self.live += nbytes
        if self.live > self.peak:
            self.peak = self.live

    def _free(self, key: int, nbytes: int, _ref=None) -> None:
        if self._refs.pop(key, None) is not None:
            self.live -= nbytes

    # --- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        tensor, track = torch.Tensor, self._track

        class _Watch(TorchDispatchMode):
            # Runs for every operator while tracking, so it is kept to plain type checks
            # (pytree's tree_map made a tracked step twice as slow as this).
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                if isinstance(out, tensor):
                    track(out)
                elif isinstance(out, (tuple, list)):
                    for item in out:
                        if isinstance(item, tensor):
                            track(item)
                return out

        # Everything already alive (weights, optimizer states, data) counts from the start. A set
        # lookup of the exact type is the cheapest test over the half a million objects a job holds.
        kinds, subclasses = set(), [tensor]
        while subclasses:
            kind = subclasses.pop()
            kinds.add(kind)
            subclasses += kind.__subclasses__()
        for obj in gc.get_objects():
            if type(obj) in kinds:
                track(obj)
        self._mode = _Watch()
        self._mode.__enter__()

    def stop(self) -> None:
        if self._mode is not None:
            self._mode.__exit__(None, None, None)
            self._mode = None

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


class PeakMeter:
    """The run's peak: CUDA allocator statistics on a GPU, `LiveTensorPeak` on the CPU."""

    def __init__(self, device: str, cpu_steps: int = CPU_TRACKED_STEPS):
        self.device = device
        self.cpu_steps = cpu_steps
        self._cpu: LiveTensorPeak | None = None
        self._cpu_peak = 0
        # live bytes at the start of each tracked step: [weights + data, + optimizer states, ...]
        self.marks: list[int] = []

    def begin(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.reset_peak_memory_stats()

    def step_begin(self, step: int, start_step: int) -> None:
        """Called before optimizer step `step + 1`; tracks the first `cpu_steps` of this process."""
        if self.device == "cpu" and self._cpu is None and step == start_step and self.cpu_steps > 0:
            self._cpu = LiveTensorPeak()
            self._cpu.start()
        if self._cpu is not None:
            self.marks.append(self._cpu.live)

    def step_end(self, step: int, start_step: int) -> None:
        if self._cpu is not None and step >= start_step + self.cpu_steps:
            self.finish()

    def finish(self) -> None:
        if self._cpu is not None:
            self._cpu.stop()
            self._cpu_peak = max(self._cpu_peak, self._cpu.peak)
            self._cpu = None
            self.cpu_steps = 0  # never track twice in one run

    @property
    def peak_bytes(self) -> int:
        import torch

        if self.device == "cuda":
            return int(torch.cuda.max_memory_allocated())
        if self._cpu is not None:
            return max(self._cpu_peak, self._cpu.peak)
        return self._cpu_peak

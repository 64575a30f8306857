"""The training step's forward, loss and backward as one CUDA graph, captured once per training phase.

On a GPU the step at the paper's sizes is bound by the host, not the device. Measured on an H100 (ResNet-50, CIFAR
stem, 32 px, batch 128, bf16, channels-last; ``benchmarks/gpu_adapter_paths.py``): the device was busy about 11 ms
of fine-tuning's 22 ms step and 12 ms of SPLoRA's 42 ms one; the rest is Python and kernel launches, and SPLoRA's
fused conv adds about ten small kernels per conv. A replayed graph launches all of them at once.

Shapes change only at pruning steps, so one capture serves a whole phase (``spa.experiment._train`` makes one
``CapturedStep`` per phase). The optimizer step stays eager: one foreach kernel per parameter group, and learning-rate
schedules keep working (a captured step would bake the learning rate in). The gradients are the graph's own tensors:
the capture starts with every ``.grad`` unset, so backward allocates them inside the graph, and each replay rewrites
them; ``zero_grad(set_to_none=True)`` between replays would drop them. A batch of another shape (an epoch's last
partial batch) runs eagerly into the same tensors (``eager``). The graph also reads what was built from the frozen
weights (``spa.fused`` keeps each layer's adapted kernel): a write to a frozen weight (its version counter moves)
makes the next call capture afresh.

Exactness: a replay runs the captured kernels on new inputs, so a phase computes what the eager loop computes. The
warm-up passes that capturing needs (cuDNN picks its algorithms; autograd and autocast allocate lazily) run forward
and backward without an optimizer step, and the BatchNorm running statistics they touch are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

__all__ = ["CapturedStep"]

WARMUP_PASSES = 3  # PyTorch's CUDA-graph notes ask for a few eager iterations on a side stream before capture


class CapturedStep:
    """Forward, loss and backward of ``model`` as a CUDA graph, captured at the first call."""

    def __init__(self, model: nn.Module, loss_fn: Callable[..., torch.Tensor], *, bf16: bool) -> None:
        self.model, self.loss_fn, self.bf16 = model, loss_fn, bf16
        self.parameters = [p for p in model.parameters() if p.requires_grad]
        self.graph: torch.cuda.CUDAGraph | None = None
        self.frozen: list[tuple[torch.Tensor, int]] = []  # the frozen weights and their versions at capture
        self.images = self.labels = self.loss = None

    def fits(self, images: torch.Tensor, labels: torch.Tensor) -> bool:
        """Whether a replay can take this batch: the first batch sets the shape, dtype and memory format."""
        if self.graph is None:
            return True
        return (
            images.shape == self.images.shape
            and images.stride() == self.images.stride()
            and images.dtype == self.images.dtype
            and labels.shape == self.labels.shape
        )

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Run forward, loss and backward on the batch; the gradients are in ``.grad``. Returns the loss (for a
        replay, the graph's own tensor, rewritten by the next call: read or copy it before then). A batch that does
        not ``fit`` runs ``eager``."""
        if not self.fits(images, labels):
            return self.eager(images, labels)
        if self.graph is not None and any(t._version != version for t, version in self.frozen):
            self.graph = None  # a frozen weight was written (a checkpoint load, say): what was built from it is stale
        if self.graph is None:
            self._capture(images, labels)
        self.images.copy_(images)
        self.labels.copy_(labels)
        self.graph.replay()
        return self.loss

    def eager(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The same pass without the graph (a batch that does not fit): gradients zeroed in place, not unset."""
        for parameter in self.parameters:
            if parameter.grad is not None:
                parameter.grad.zero_()
        with self._autocast():
            loss = self.loss_fn(self.model(images), labels)
        loss.backward()
        return loss

    def _capture(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images.clone(), labels.clone()
        saved = [buffer.clone() for buffer in self.model.buffers()]
        side = torch.cuda.Stream(images.device)
        side.wait_stream(torch.cuda.current_stream(images.device))
        with torch.cuda.stream(side):
            for _ in range(WARMUP_PASSES):
                self._unset_gradients()
                self._forward_backward()
        torch.cuda.current_stream(images.device).wait_stream(side)
        with torch.no_grad():
            for buffer, value in zip(self.model.buffers(), saved, strict=True):
                buffer.copy_(value)
        self._unset_gradients()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.loss = self._forward_backward()
        self.frozen = [(t, t._version) for t in self.model.parameters() if not t.requires_grad]

    def _forward_backward(self) -> torch.Tensor:
        with self._autocast():
            loss = self.loss_fn(self.model(self.images), self.labels)
        loss.backward()
        return loss.detach()

    def _autocast(self) -> torch.autocast:
        """``spa.training.autocast`` on CUDA, less the cast cache, which would hold tensors made outside the graph."""
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.bf16, cache_enabled=False)

    def _unset_gradients(self) -> None:
        for parameter in self.parameters:
            parameter.grad = None

"""Training-memory accounting: saved activations per layer, model state, and the peak of a step.

What a training step keeps between forward and backward is measured exactly and device-independently:

* every tensor handed to a ``torch.autograd.graph.saved_tensors_hooks`` pack hook (``save_for_backward``
  in custom Functions included), de-duplicated by storage (references are kept so a freed address is
  never mistaken for a hit), excluding parameters, buffers and the input batch, attributed to the
  innermost module running when it was saved;
* plus tensors a custom ``autograd.Function`` keeps on ``ctx`` by hand (found by walking the graph);
* plus the inputs that ``torch.utils.checkpoint`` segments keep (``strategy="checkpoint"``); with
  ``strategy="offload"`` (``torch.autograd.graph.save_on_cpu``) saved tensors are counted as moved to
  the host instead of kept on the device.

The peak of a whole step (forward, backward, optimizer step) is ``torch.cuda.max_memory_allocated`` on
CUDA and the allocation timeline of ``torch.profiler`` on CPU, both relative to the step's start.
"""
from __future__ import annotations

import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = [
    "LayerMemory",
    "MemoryReport",
    "SavedTensorRecorder",
    "count_ops",
    "make_optimizer",
    "measure_memory",
    "step_peak_bytes",
    "tensors_in",
    "unique_bytes",
]

STRATEGIES = ("none", "checkpoint", "offload")
MB = 2**20
OUTSIDE = "(outside)"  # saved by operations outside every module of the model


def _storage_key(t: torch.Tensor) -> tuple | None:
    try:
        storage = t.untyped_storage()
    except (RuntimeError, NotImplementedError):  # sparse or other storage-less tensors
        return None
    return (t.device.type, t.device.index, storage.data_ptr())


def _storage_bytes(t: torch.Tensor) -> int:
    try:
        return t.untyped_storage().nbytes()
    except (RuntimeError, NotImplementedError):
        return t.numel() * t.element_size()


@dataclass
class LayerMemory:
    """Saved-activation bytes attributed to one module ('' is the model itself, '(outside)' no module)."""

    name: str
    saved_bytes: int = 0
    tensors: int = 0
    density: float | None = None  # kept fraction of a spectral layer's spectra, when it has one


class SavedTensorRecorder:
    """Counts what autograd keeps for backward while active (a context manager around a forward).

    Args:
        model: module whose submodules saved tensors are attributed to.
        exclude: tensors whose storage is not an activation (parameters, buffers, the input batch).
        offload: move saved tensors to the host like ``save_on_cpu`` and count them as offloaded.
    """

    def __init__(self, model: nn.Module, exclude: Iterable[torch.Tensor] = (), offload: bool = False) -> None:
        self.model = model
        self.excluded = {k for k in map(_storage_key, exclude) if k is not None}
        self.offload = offload
        self.seen: dict[tuple, torch.Tensor] = {}  # storage -> a tensor keeping it alive
        self.layers: dict[str, LayerMemory] = {}
        self.by_hand_bytes = 0
        self.offloaded_bytes = 0
        self._stack: list[str] = [OUTSIDE]
        self._node_owner: dict[object, str] = {}
        self._stack_exit: ExitStack | None = None

    # -- recording ------------------------------------------------------------------------------
    def record(self, t: torch.Tensor, owner: str | None = None, by_hand: bool = False) -> bool:
        """Count ``t``'s storage once (unless excluded); returns whether it was new."""
        key = _storage_key(t)
        if key is None or key in self.excluded or key in self.seen:
            return False
        self.seen[key] = t
        nbytes = _storage_bytes(t)
        name = owner if owner is not None else self._stack[-1]
        layer = self.layers.setdefault(name, LayerMemory(name))
        layer.saved_bytes += nbytes
        layer.tensors += 1
        if by_hand:
            self.by_hand_bytes += nbytes
        return True

    def _pack(self, t: torch.Tensor):
        self.record(t)
        if self.offload:
            return self._offload.pack_hook(t)
        return t

    def _unpack(self, packed):
        return self._offload.unpack_hook(packed) if self.offload else packed

    def scan_graph(self, roots: Sequence[torch.Tensor]) -> None:
        """Count tensors custom autograd Functions keep on ``ctx`` outside ``save_for_backward``."""
        stack = [t.grad_fn for t in roots if isinstance(t, torch.Tensor) and t.grad_fn is not None]
        visited = set()
        while stack:
            node = stack.pop()
            if node is None or node in visited:
                continue
            visited.add(node)
            if hasattr(node, "_forward_cls"):  # a Python custom Function: the node is its ctx
                owner = self._node_owner.get(node, OUTSIDE)
                for value in vars(node).values():
                    for t in tensors_in(value):
                        self.record(t, owner=owner, by_hand=True)
            stack.extend(next_node for next_node, _ in node.next_functions)

    # -- module attribution ------------------------------------------------------------------------
    def _pre_hook(self, name: str):
        def hook(module, args):
            self._stack.append(name)

        return hook

    def _post_hook(self, name: str):
        def hook(module, args, output):
            self._stack.pop()
            for t in tensors_in(output):
                if t.grad_fn is not None and hasattr(t.grad_fn, "_forward_cls"):
                    self._node_owner.setdefault(t.grad_fn, name)

        return hook

    def __enter__(self) -> "SavedTensorRecorder":
        stack = ExitStack()
        for name, module in self.model.named_modules():
            stack.callback(module.register_forward_pre_hook(self._pre_hook(name)).remove)
            stack.callback(module.register_forward_hook(self._post_hook(name)).remove)
        if self.offload:
            self._offload = torch.autograd.graph.save_on_cpu(pin_memory=torch.cuda.is_available())
        stack.enter_context(torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack))
        self._stack_exit = stack
        return self

    def __exit__(self, *exc) -> None:
        assert self._stack_exit is not None
        self._stack_exit.close()
        self._stack = [OUTSIDE]

    @property
    def saved_bytes(self) -> int:
        return sum(layer.saved_bytes for layer in self.layers.values())


def tensors_in(value, depth: int = 2) -> list[torch.Tensor]:
    """The tensors in ``value``: a tensor, or lists/tuples/dicts of them up to ``depth`` levels deep."""
    if isinstance(value, torch.Tensor):
        return [value]
    if depth and isinstance(value, (list, tuple)):
        return [t for v in value for t in tensors_in(v, depth - 1)]
    if depth and isinstance(value, dict):
        return [t for v in value.values() for t in tensors_in(v, depth - 1)]
    return []


@dataclass
class MemoryReport:
    """What one training step of ``model`` on one batch costs in memory (bytes) and time (s)."""

    model: str
    batch_size: int
    strategy: str
    layers: list[LayerMemory]
    saved_bytes: int
    by_hand_bytes: int
    offloaded_bytes: int
    param_bytes: int
    grad_bytes: int
    optimizer_bytes: int
    peak_bytes: int | None
    peak_method: str
    step_time_s: float | None
    densities: dict[str, float] = field(default_factory=dict)

    def grouped(self, depth: int = 2) -> list[LayerMemory]:
        """Layers merged by their first ``depth`` name components (e.g. 'stages.3'), in model order."""
        merged: dict[str, LayerMemory] = {}
        for layer in self.layers:
            key = ".".join(layer.name.split(".")[:depth]) if layer.name else "(model)"
            entry = merged.setdefault(key, LayerMemory(key))
            entry.saved_bytes += layer.saved_bytes
            entry.tensors += layer.tensors
        for key, entry in merged.items():
            kept = [d for name, d in self.densities.items() if name == key or name.startswith(key + ".")]
            entry.density = sum(kept) / len(kept) if kept else None
        return list(merged.values())

    def table(self, depth: int = 2, twin: "MemoryReport | None" = None) -> str:
        """A plain-text per-layer table (MB), with the twin's bytes and the ratio when given."""
        rows = self.grouped(depth)
        other = {layer.name: layer for layer in twin.grouped(depth)} if twin is not None else {}
        head = f"{'layer':<22}{'saved MB':>10}{'tensors':>9}{'density':>9}"
        if twin is not None:
            head += f"{twin.model + ' MB':>22}{'ratio':>8}"
        lines = [head, "-" * len(head)]
        for layer in rows:
            density = f"{layer.density:.3f}" if layer.density is not None else "-"
            line = f"{layer.name:<22}{layer.saved_bytes / MB:>10.2f}{layer.tensors:>9}{density:>9}"
            if twin is not None:
                base = other.get(layer.name)
                line += f"{(base.saved_bytes / MB if base else 0):>22.2f}"
                line += f"{(layer.saved_bytes / base.saved_bytes if base and base.saved_bytes else float('nan')):>8.3f}"
            lines.append(line)
        lines.append("-" * len(head))
        total = f"{'total saved':<22}{self.saved_bytes / MB:>10.2f}{sum(r.tensors for r in rows):>9}{'':>9}"
        if twin is not None:
            total += f"{twin.saved_bytes / MB:>22.2f}{self.saved_bytes / max(twin.saved_bytes, 1):>8.3f}"
        lines.append(total)
        return "\n".join(lines)

    def summary(self) -> dict[str, float]:
        """Headline numbers in MB / seconds, for logging."""
        out = {
            "saved_activations_mb": self.saved_bytes / MB,
            "params_mb": self.param_bytes / MB,
            "grads_mb": self.grad_bytes / MB,
            "optimizer_mb": self.optimizer_bytes / MB,
        }
        if self.offloaded_bytes:
            out["offloaded_mb"] = self.offloaded_bytes / MB
        if self.peak_bytes is not None:
            out["step_peak_mb"] = self.peak_bytes / MB
        if self.step_time_s is not None:
            out["step_time_s"] = self.step_time_s
        return out

    def as_dict(self) -> dict:
        return asdict(self)


def unique_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    seen: dict[tuple, int] = {}
    for t in tensors:
        key = _storage_key(t)
        if key is not None:
            seen.setdefault(key, _storage_bytes(t))
    return sum(seen.values())


def _default_loss(output: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    if target is not None:
        return F.cross_entropy(output.float(), target)
    return output.float().square().mean()


def make_optimizer(name: str, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimizer whose state is counted: "sgd" (momentum 0.95, SpecNet's), "adam", "adamw" or "none"."""
    params = [p for p in params if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-3, momentum=0.95)
    if name == "adam":
        return torch.optim.Adam(params, lr=1e-3)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=1e-3)
    if name == "none":
        return torch.optim.SGD(params, lr=0.0)
    raise ValueError(f"unknown optimizer {name!r}; expected 'sgd', 'adam', 'adamw' or 'none'")


@contextmanager
def _checkpointed(modules: Sequence[nn.Module], recorder_ref: list):
    """Run each module under non-reentrant ``torch.utils.checkpoint``; count the inputs it keeps."""
    from torch.utils.checkpoint import checkpoint

    originals = []
    for module in modules:
        forward = module.forward

        def wrapped(*args, _forward=forward, **kwargs):
            if torch.is_grad_enabled() and recorder_ref and recorder_ref[0] is not None:
                for t in tensors_in(list(args)):
                    recorder_ref[0].record(t)
            return checkpoint(_forward, *args, use_reentrant=False, **kwargs)

        originals.append((module, forward))
        module.forward = wrapped
    try:
        yield
    finally:
        for module, _ in originals:
            del module.forward  # back to the class's forward


def _checkpoint_segments(model: nn.Module) -> list[nn.Module]:
    stages = getattr(model, "stages", None)
    return list(stages) if isinstance(stages, nn.Sequential) else list(model.children())


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.calls: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> Counter:
    """aten operator calls while ``fn()`` runs, by operator (views included: each is a dispatcher call).

    Deterministic for a given model and input shape, and on a GPU nearly every call that is not a view
    launches a kernel, so it measures the launch and Python overhead a device cannot hide.
    """
    with _OpCounter() as counter:
        fn()
    return counter.calls


def step_peak_bytes(step: Callable[[], None], device: torch.device) -> tuple[int, str]:
    """Peak bytes allocated above the start while ``step()`` runs: (bytes, how it was measured)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start, "cuda.max_memory_allocated"
    sizes = _profiled_allocations(step, device)
    running, peak = 0, 0
    for size in sizes:
        running += size
        peak = max(peak, running)
    return peak, "profiler allocation timeline"


def _profiled_allocations(fn: Callable[[], object], device: torch.device) -> list[int]:
    """Signed allocation sizes on ``device`` while ``fn()`` runs, in time order (torch.profiler)."""
    return [size for size, _, _ in _allocation_events(fn, device)]


def _allocation_events(fn: Callable[[], object], device: torch.device) -> list[tuple[int, int, str]]:
    """(signed size, address, allocating operator) of every allocation and free on ``device`` while ``fn()``
    runs, in time order (torch.profiler). The operator is the innermost one that is not a plain
    allocation (``aten::empty``, ``aten::empty_like``, ...)."""
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, profile_memory=True) as prof:
        fn()
    events = []
    pending = list(prof.profiler.kineto_results.experimental_event_tree())
    while pending:
        event = pending.pop()
        pending.extend(event.children)
        if event.tag == _EventType.Allocation and event.extra_fields.device.type == device.type:
            owner = event.parent
            while owner is not None and owner.name in _ALLOCATORS:
                owner = owner.parent
            events.append((event.start_time_ns, event.extra_fields.alloc_size, event.extra_fields.ptr,
                           _where(owner)))
    return [(size, ptr, owner) for _, size, ptr, owner in sorted(events, key=lambda e: e[0])]


def _where(op) -> str:
    """``op``'s name and the pass it ran in: "aten::bmm (spectral backward)"."""
    if op is None:
        return "?"
    stage, up = "forward", op.parent
    while up is not None:
        if up.name in ("CompactChain", "CompactChainBackward"):
            stage = "spectral forward" if up.name == "CompactChain" else "spectral backward"
            break
        if up.name.startswith("autograd::engine"):
            stage = "backward"
        up = up.parent
    return f"{op.name} ({stage})"


_ALLOCATORS = {"aten::empty", "aten::empty_like", "aten::empty_strided", "aten::new_empty", "aten::_to_copy",
               "aten::clone"}


def step_peak_breakdown(step: Callable[[], None], device: torch.device, top: int = 4) -> tuple[int, list[tuple[str, int, int]]]:
    """Peak bytes allocated above the start while ``step()`` runs, and what was live at that moment:
    (peak, [(allocating operator, bytes, tensors), ...] largest first, at most ``top`` rows).

    Only memory allocated during the step is seen (the profiler's allocation timeline): the model state
    and anything allocated before are outside it, as in :func:`step_peak_bytes`.
    """
    live: dict[int, tuple[int, str]] = {}
    running = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for size, ptr, owner in _allocation_events(step, device):
        running += size
        if size > 0:
            live[ptr] = (size, owner)
        else:
            live.pop(ptr, None)
        if running > peak:
            peak, at_peak = running, dict(live)
    groups: dict[str, list[int]] = {}
    for size, owner in at_peak.values():
        groups.setdefault(owner, [0, 0])
        groups[owner][0] += size
        groups[owner][1] += 1
    rows = sorted(((owner, b, n) for owner, (b, n) in groups.items()), key=lambda r: -r[1])
    return peak, rows[:top]


def measure_memory(
    model: nn.Module,
    inputs: torch.Tensor,
    target: torch.Tensor | None = None,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor] = _default_loss,
    optimizer: str = "sgd",
    strategy: str = "none",
    peak: bool = True,
    timing_steps: int = 0,
    name: str | None = None,
) -> MemoryReport:
    """Measure one training step of ``model`` on ``inputs`` (and ``target``), then restore the model.

    Args:
        model: in the mode it should be measured in (``train()`` for training memory).
        inputs: the batch, on the model's device. It is excluded from the saved bytes.
        target: class labels for the default cross-entropy loss (None: mean square of the output).
        loss_fn: ``loss_fn(output, target) -> scalar``.
        optimizer: whose state is counted (:func:`make_optimizer`); the step's updates are undone.
        strategy: "none"; "checkpoint" (each stage under ``torch.utils.checkpoint``, non-reentrant);
            "offload" (``torch.autograd.graph.save_on_cpu``).
        peak: also measure the peak of a full step (a second step, under the profiler on CPU).
        timing_steps: extra unprofiled steps whose median time is reported as ``step_time_s``.
        name: model name in the report (default: the class name).

    Returns:
        A :class:`MemoryReport`. Parameters, buffers and optimizer state are restored afterwards.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    if not isinstance(inputs, torch.Tensor):
        raise TypeError(f"measure_memory expects the input batch as a tensor, got {type(inputs).__name__}")
    device = inputs.device
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    saved_grads = {p: p.grad for p in model.parameters()}
    params = [p for p in model.parameters()]
    opt = make_optimizer(optimizer, params)
    recorder_ref: list = [None]

    def run_step(recorder: SavedTensorRecorder | None = None) -> None:
        opt.zero_grad(set_to_none=True)
        if recorder is not None:
            recorder_ref[0] = recorder
            with recorder:
                output = model(inputs)
            recorder_ref[0] = None
            recorder.scan_graph([output])
        elif strategy == "offload":
            with torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda"):
                output = model(inputs)
        else:
            output = model(inputs)
        loss_fn(output, target).backward()
        opt.step()

    try:
        with ExitStack() as stack:
            if strategy == "checkpoint":
                stack.enter_context(_checkpointed(_checkpoint_segments(model), recorder_ref))
            exclude = [*params, *model.buffers(), inputs]
            recorder = SavedTensorRecorder(model, exclude, offload=strategy == "offload")
            run_step(recorder)
            densities = _densities(model)
            grad_bytes = unique_bytes(p.grad for p in params if p.grad is not None)
            optimizer_bytes = unique_bytes(t for s in opt.state.values() for t in tensors_in(s) if t.dim() > 0)
            peak_bytes, peak_method = None, "off"
            if peak:
                peak_bytes, peak_method = step_peak_bytes(run_step, device)
            times = []
            for _ in range(timing_steps):
                _sync(device)
                start = time.perf_counter()
                run_step()
                _sync(device)
                times.append(time.perf_counter() - start)
    finally:
        with torch.no_grad():
            for key, value in model.state_dict(keep_vars=True).items():
                value.copy_(state[key])
        for p, grad in saved_grads.items():
            p.grad = grad
    layers = [recorder.layers[k] for k in recorder.layers]
    if recorder.offload:
        for layer in layers:
            recorder.offloaded_bytes += layer.saved_bytes
    return MemoryReport(
        model=name or type(model).__name__,
        batch_size=int(inputs.shape[0]),
        strategy=strategy,
        layers=layers,
        saved_bytes=0 if recorder.offload else recorder.saved_bytes,
        by_hand_bytes=recorder.by_hand_bytes,
        offloaded_bytes=recorder.offloaded_bytes,
        param_bytes=unique_bytes(params),
        grad_bytes=grad_bytes,
        optimizer_bytes=optimizer_bytes,
        peak_bytes=peak_bytes,
        peak_method=peak_method,
        step_time_s=statistics.median(times) if times else None,
        densities=densities,
    )


def _densities(model: nn.Module) -> dict[str, float]:
    from .layers.spectral_conv import spectral_densities

    return spectral_densities(model)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

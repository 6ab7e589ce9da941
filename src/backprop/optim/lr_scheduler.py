"""Learning-rate schedulers with PyTorch's API and exact arithmetic.

Each scheduler mirrors the class of the same name in ``torch.optim.lr_scheduler``
(PyTorch 2.x): same constructor signature, same *chainable* update rule in
:meth:`~LRScheduler.step` (the new lr is computed from the optimizer's current
``group["lr"]``, in the same order of floating-point operations), so the
sequence of learning rates is the same as PyTorch's, bit for bit in practice::

    opt = SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = StepLR(opt, step_size=30, gamma=0.1)
    for epoch in range(100):
        train_one_epoch(opt)          # calls opt.step()
        sched.step()                  # after the optimizer step, as in PyTorch

What PyTorch does and this module does too:

* Constructing a scheduler stores ``group["initial_lr"]`` in every parameter
  group (unless already there), sets :attr:`~LRScheduler.base_lrs` from them
  and performs the *initial step* (``last_epoch`` goes from ``-1`` to ``0``).
* ``step(epoch)`` (deprecated in PyTorch, warns) jumps to ``epoch`` using the
  closed form where one exists; :class:`SequentialLR` relies on it.
* ``state_dict()`` holds everything but the optimizer; restore a checkpoint by
  building the scheduler *first*, then loading the optimizer's and the
  scheduler's states.

Differences: ``optimizer.step`` is not monkey-patched, so there is no warning
about calling ``scheduler.step()`` before ``optimizer.step()``; ``get_lr()``
does not warn when called outside ``step()`` (use :meth:`~LRScheduler.get_last_lr`
to read the current values); arguments are validated (``ValueError`` naming
the argument and its value, ``TypeError`` for a wrong type) where PyTorch
accepts nonsense; ``state_dict()`` returns an independent copy made of plain
numbers, strings, lists and dicts.

:func:`get_scheduler` builds one from a short name (for the command line).
"""

from __future__ import annotations

import copy
import math
import types
import warnings
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from numbers import Integral, Real
from typing import Any

from backprop.engine.function import replayable

from .optimizer import Optimizer

__all__ = [
    "SCHEDULERS",
    "CosineAnnealingLR",
    "ExponentialLR",
    "LRScheduler",
    "LambdaLR",
    "LinearLR",
    "MultiStepLR",
    "OneCycleLR",
    "ReduceLROnPlateau",
    "SequentialLR",
    "StepLR",
    "get_scheduler",
]

EPOCH_DEPRECATION_WARNING = (
    "The epoch parameter in `scheduler.step()` was not necessary and is being deprecated where "
    "possible. Please use `scheduler.step()` to step the scheduler. During the deprecation, if epoch "
    "is different from None, the closed form is used instead of the new chainable form, where available."
)


# --------------------------------------------------------------------------- #
# Argument validation
# --------------------------------------------------------------------------- #
def _real(name: str, value: Any, *, lo: float | None = None, lo_open: bool = False,
          hi: float | None = None, hi_open: bool = False) -> float:
    """``value`` as a float, checked to be finite and within the given bounds."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"Invalid {name}: {value!r} ({name} must be a real number)")
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"Invalid {name}: {value!r} ({name} must be finite)")
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise ValueError(f"Invalid {name}: {value!r} ({name} must be {'>' if lo_open else '>='} {lo:g})")
    if hi is not None and (v >= hi if hi_open else v > hi):
        raise ValueError(f"Invalid {name}: {value!r} ({name} must be {'<' if hi_open else '<='} {hi:g})")
    return v


def _int(name: str, value: Any, *, lo: int) -> int:
    """``value`` as an int (integral floats accepted), checked to be ``>= lo``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"Invalid {name}: {value!r} ({name} must be an integer)")
    if not isinstance(value, Integral) and not (math.isfinite(value) and float(value).is_integer()):
        raise ValueError(f"Invalid {name}: {value!r} ({name} must be an integer)")
    v = int(value)
    if v < lo:
        what = "a positive integer" if lo == 1 else f"an integer >= {lo}"
        raise ValueError(f"Invalid {name}: {value!r} ({name} must be {what})")
    return v


def _per_group(name: str, optimizer: Optimizer, value: Any, check: Callable[[str, Any], Any]) -> list:
    """One checked value per parameter group: a scalar is repeated, a list/tuple must match."""
    n = len(optimizer.param_groups)
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(
                f"{name} must have the same length as optimizer.param_groups. "
                f"{name} has {len(value)} values, param_groups has {n}."
            )
        return [check(f"{name}[{i}]", v) for i, v in enumerate(value)]
    v = check(name, value)
    return [v] * n


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"{type(optimizer).__name__} is not an Optimizer")


def _milestone_list(name: str, milestones: Any, *, strict: bool) -> list[int]:
    """Milestones as a list of ints ``>= 0``, increasing (strictly when ``strict``)."""
    if isinstance(milestones, (str, bytes, Mapping)) or not isinstance(milestones, Iterable):
        raise TypeError(f"Invalid {name}: {milestones!r} ({name} must be a list of integers)")
    values = [_int(f"{name}[{i}]", m, lo=0) for i, m in enumerate(milestones)]
    for i in range(1, len(values)):
        if values[i] < values[i - 1] or (strict and values[i] == values[i - 1]):
            order = "strictly increasing" if strict else "increasing"
            raise ValueError(f"Invalid {name}: {list(milestones)!r} ({name} must be {order})")
    return values


# --------------------------------------------------------------------------- #
# Base class
# --------------------------------------------------------------------------- #
class LRScheduler:
    """Base class of the learning-rate schedulers (``torch.optim.lr_scheduler.LRScheduler``).

    Args:
        optimizer: the :class:`~backprop.optim.Optimizer` whose ``group["lr"]``
            values are scheduled.
        last_epoch: index of the last epoch seen; ``-1`` (default) starts a new
            schedule.  Any other value resumes one and needs ``"initial_lr"``
            in every group (a ``KeyError`` otherwise), as in PyTorch.

    Attributes:
        optimizer, last_epoch, base_lrs (the groups' ``initial_lr`` values).

    Subclasses implement :meth:`get_lr` (the chainable rule, reading the current
    ``group["lr"]``) and optionally ``_get_closed_form_lr`` (used by
    ``step(epoch)``).
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        # NOTE: a captured step (backprop.jit) replays a scheduler's step as a whole call
        super().__init_subclass__(**kwargs)
        fn = cls.__dict__.get("step")
        if fn is not None and not hasattr(fn, "__replayable__"):
            cls.step = replayable(fn)


    _is_initial: bool = False
    #: ``__dict__`` entries left out of :meth:`state_dict`.
    _state_exclude: tuple[str, ...] = ("optimizer", "_is_initial")

    def __init__(self, optimizer: Optimizer, last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        last_epoch = _int("last_epoch", last_epoch, lo=-1)
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when resuming a "
                        f"scheduler with last_epoch={last_epoch}; load the optimizer's state first "
                        "(or use last_epoch=-1 for a fresh schedule)"
                    )
        self.base_lrs: list[float] = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._initial_step()

    def _initial_step(self) -> None:
        """Reset the step count and perform the initial step (``last_epoch`` += 1)."""
        self._step_count = 0
        self._is_initial = True
        try:
            self.step()
        finally:
            self._is_initial = False

    # ------------------------------------------------------------------ stepping
    def get_lr(self) -> list[float]:
        """The next learning rates (called by :meth:`step`; use :meth:`get_last_lr` to read)."""
        raise NotImplementedError

    def get_last_lr(self) -> list[float]:
        """The learning rates set by the last :meth:`step` (a new list, one per group)."""
        return list(self._last_lr)

    @replayable
    def step(self, epoch: int | None = None) -> None:
        """Advance the schedule by one step and set every group's ``"lr"``.

        Call it after ``optimizer.step()``.  ``epoch`` is deprecated (as in
        PyTorch): it sets ``last_epoch`` and uses the closed form if available.
        """
        self._step_count += 1
        if epoch is not None:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self._update_lr(epoch)

    def _update_lr(self, epoch: int | None = None) -> None:
        if epoch is None:
            self.last_epoch += 1
            values = self.get_lr()
        else:
            self.last_epoch = epoch
            closed_form = getattr(self, "_get_closed_form_lr", None)
            values = closed_form() if closed_form is not None else self.get_lr()
        groups = self.optimizer.param_groups
        if len(values) != len(groups):
            raise RuntimeError(f"{type(self).__name__} computed {len(values)} learning rates "
                               f"for {len(groups)} parameter groups")
        for group, lr in zip(groups, values):
            group["lr"] = float(lr)
        self._last_lr: list[float] = [group["lr"] for group in groups]

    def _current_lrs(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The scheduler's state: every attribute but the optimizer, as an independent copy."""
        return {key: copy.deepcopy(value) for key, value in self.__dict__.items()
                if key not in self._state_exclude}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load a :meth:`state_dict` (values are copied; the optimizer is left alone)."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        self.__dict__.update({key: copy.deepcopy(value) for key, value in state_dict.items()
                              if key not in self._state_exclude})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(last_epoch={getattr(self, 'last_epoch', None)})"


# --------------------------------------------------------------------------- #
# Schedulers
# --------------------------------------------------------------------------- #
class LambdaLR(LRScheduler):
    """``lr = initial_lr * lr_lambda(last_epoch)`` for each group.

    Args:
        optimizer: wrapped optimizer.
        lr_lambda: a function ``epoch -> factor``, or a list of such functions,
            one per parameter group.
        last_epoch: index of the last epoch (``-1``: start).

    Note: the state dict cannot hold the functions.  As in PyTorch, plain
    functions and lambdas are saved as ``None`` (the scheduler you load into
    must be built with the same functions); for callable *objects* their
    ``__dict__`` is saved and restored.
    """

    _state_exclude = LRScheduler._state_exclude + ("lr_lambdas",)

    def __init__(self, optimizer: Optimizer, lr_lambda: Callable[[int], float] | list,
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"Expected {n} lr_lambdas, but got {len(lr_lambda)}")
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * n
        for i, fn in enumerate(lambdas):
            if not callable(fn):
                raise TypeError(f"Invalid lr_lambda[{i}]: {fn!r} (must be callable epoch -> factor)")
        self.optimizer = optimizer
        self.lr_lambdas: list[Callable[[int], float]] = lambdas
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [base_lr * lmbda(self.last_epoch) for lmbda, base_lr in zip(self.lr_lambdas, self.base_lrs)]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else copy.deepcopy(fn.__dict__)
                               for fn in self.lr_lambdas]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = state_dict.get("lr_lambdas")
        if saved is not None:
            for fn, attrs in zip(self.lr_lambdas, saved):
                if attrs is not None:
                    fn.__dict__.update(copy.deepcopy(attrs))


class StepLR(LRScheduler):
    """Multiply the lr by ``gamma`` every ``step_size`` epochs.

    Args:
        optimizer: wrapped optimizer.
        step_size: period of the decay (a positive integer).
        gamma: multiplicative factor (> 0).  Default: 0.1.
        last_epoch: index of the last epoch (``-1``: start).
    """

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.step_size = _int("step_size", step_size, lo=1)
        self.gamma = _real("gamma", gamma, lo=0.0, lo_open=True)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0 or self.last_epoch % self.step_size != 0:
            return self._current_lrs()
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base_lr * self.gamma ** (self.last_epoch // self.step_size) for base_lr in self.base_lrs]


class MultiStepLR(LRScheduler):
    """Multiply the lr by ``gamma`` when ``last_epoch`` reaches each milestone.

    Args:
        optimizer: wrapped optimizer.
        milestones: epoch indices (integers >= 0), increasing.  A milestone
            listed ``n`` times decays by ``gamma ** n`` (as in PyTorch).
        gamma: multiplicative factor (> 0).  Default: 0.1.
        last_epoch: index of the last epoch (``-1``: start).

    ``milestones`` is a :class:`collections.Counter` (as in PyTorch); the state
    dict stores it as a sorted list.
    """

    def __init__(self, optimizer: Optimizer, milestones: Iterable[int], gamma: float = 0.1,
                 last_epoch: int = -1) -> None:
        self.milestones = Counter(_milestone_list("milestones", milestones, strict=False))
        self.gamma = _real("gamma", gamma, lo=0.0, lo_open=True)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch not in self.milestones:
            return self._current_lrs()
        return [group["lr"] * self.gamma ** self.milestones[self.last_epoch]
                for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        milestones = sorted(self.milestones.elements())
        return [base_lr * self.gamma ** bisect_right(milestones, self.last_epoch) for base_lr in self.base_lrs]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state["milestones"] = sorted(self.milestones.elements())
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.milestones = Counter(self.milestones)


class LinearLR(LRScheduler):
    """Scale the lr by a factor going linearly from ``start_factor`` to ``end_factor`` (warm-up).

    Args:
        optimizer: wrapped optimizer.
        start_factor: factor at epoch 0, in ``(0, 1]``.  Default: 1/3.
        end_factor: factor from epoch ``total_iters`` on, in ``[0, 1]``.  Default: 1.
        total_iters: number of steps of the linear change (a positive integer).  Default: 5.
        last_epoch: index of the last epoch (``-1``: start).
    """

    def __init__(self, optimizer: Optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1) -> None:
        self.start_factor = _real("start_factor", start_factor, lo=0.0, lo_open=True, hi=1.0)
        self.end_factor = _real("end_factor", end_factor, lo=0.0, hi=1.0)
        self.total_iters = _int("total_iters", total_iters, lo=1)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        if self.last_epoch == 0:
            return [group["lr"] * self.start_factor for group in self.optimizer.param_groups]
        if self._is_initial or self.last_epoch > self.total_iters:
            return self._current_lrs()
        return [
            group["lr"] * (1.0 + (self.end_factor - self.start_factor)
                           / (self.total_iters * self.start_factor
                              + (self.last_epoch - 1) * (self.end_factor - self.start_factor)))
            for group in self.optimizer.param_groups
        ]

    def _get_closed_form_lr(self) -> list[float]:
        return [
            base_lr * (self.start_factor + (self.end_factor - self.start_factor)
                       * min(self.total_iters, self.last_epoch) / self.total_iters)
            for base_lr in self.base_lrs
        ]


class ExponentialLR(LRScheduler):
    """Multiply the lr by ``gamma`` every epoch.

    Args:
        optimizer: wrapped optimizer.
        gamma: multiplicative factor (> 0).
        last_epoch: index of the last epoch (``-1``: start).
    """

    def __init__(self, optimizer: Optimizer, gamma: float, last_epoch: int = -1) -> None:
        self.gamma = _real("gamma", gamma, lo=0.0, lo_open=True)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        # When resuming, the initial step must not move the lr one step ahead.
        if self._is_initial:
            return self._current_lrs()
        return [group["lr"] * self.gamma for group in self.optimizer.param_groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [base_lr * self.gamma ** self.last_epoch for base_lr in self.base_lrs]


class CosineAnnealingLR(LRScheduler):
    r"""Cosine annealing from ``initial_lr`` down to ``eta_min`` over ``T_max`` steps (no restarts).

    PyTorch's recursive form, applied to the current lr::

        lr_t = eta_min + (lr_{t-1} - eta_min) * (1 + cos(pi t / T_max)) / (1 + cos(pi (t-1) / T_max))

    with ``lr_t = lr_{t-1} + (base_lr - eta_min) (1 - cos(pi / T_max)) / 2`` when
    ``(t - 1 - T_max) % (2 T_max) == 0``.  Past ``T_max`` the lr therefore
    climbs back up (a cosine of period ``2 T_max``), exactly like PyTorch's.

    Args:
        optimizer: wrapped optimizer.
        T_max: half period, in steps (a positive integer).
        eta_min: minimum learning rate (>= 0).  Default: 0.
        last_epoch: index of the last epoch (``-1``: start).
    """

    def __init__(self, optimizer: Optimizer, T_max: int, eta_min: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.T_max = _int("T_max", T_max, lo=1)
        self.eta_min = _real("eta_min", eta_min, lo=0.0)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        groups = self.optimizer.param_groups
        if self._is_initial:
            return self._current_lrs()
        if self._step_count == 1 and self.last_epoch > 0:
            return [self.eta_min + (base_lr - self.eta_min)
                    * (1 + math.cos(self.last_epoch * math.pi / self.T_max)) / 2
                    for base_lr in self.base_lrs]
        if (self.last_epoch - 1 - self.T_max) % (2 * self.T_max) == 0:
            return [group["lr"] + (base_lr - self.eta_min) * (1 - math.cos(math.pi / self.T_max)) / 2
                    for base_lr, group in zip(self.base_lrs, groups)]
        return [(1 + math.cos(math.pi * self.last_epoch / self.T_max))
                / (1 + math.cos(math.pi * (self.last_epoch - 1) / self.T_max))
                * (group["lr"] - self.eta_min) + self.eta_min
                for group in groups]

    def _get_closed_form_lr(self) -> list[float]:
        return [self.eta_min + (base_lr - self.eta_min)
                * (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
                for base_lr in self.base_lrs]


class OneCycleLR(LRScheduler):
    """The 1cycle policy: lr from ``max_lr/div_factor`` up to ``max_lr``, then down to a minimum.

    The momentum (SGD/RMSprop's ``"momentum"``, Adam's ``betas[0]``) is cycled
    inversely, between ``max_momentum`` and ``base_momentum``.  Step it after
    every batch; stepping more than ``total_steps`` times raises ``ValueError``.
    Not chainable: it sets the lr from its own schedule.

    Args:
        optimizer: wrapped optimizer.
        max_lr: peak learning rate (>= 0), or a list with one per group.
        total_steps: number of steps in the cycle; if ``None``, ``epochs *
            steps_per_epoch`` (both then required).
        epochs, steps_per_epoch: see ``total_steps``.
        pct_start: fraction of the cycle spent increasing the lr, in ``[0, 1]``.
        anneal_strategy: ``"cos"`` or ``"linear"``.
        cycle_momentum: cycle the momentum (the optimizer must have a
            ``"momentum"`` or ``"betas"`` hyperparameter).
        base_momentum, max_momentum: momentum bounds (each in ``[0, 1)``), or lists per group.
        div_factor: ``initial_lr = max_lr / div_factor`` (> 0).
        final_div_factor: ``min_lr = initial_lr / final_div_factor`` (> 0).
        three_phase: use PyTorch's three-phase variant (symmetric warm-up /
            cool-down, then annihilation to ``min_lr``).
        last_epoch: index of the last *batch* (``-1``: start).

    Each group gets ``"initial_lr"``, ``"max_lr"``, ``"min_lr"`` (and, with
    ``cycle_momentum``, ``"max_momentum"``, ``"base_momentum"``) entries, as in PyTorch.
    """

    def __init__(self, optimizer: Optimizer, max_lr: float | list[float], total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None, pct_start: float = 0.3,
                 anneal_strategy: str = "cos", cycle_momentum: bool = True,
                 base_momentum: float | list[float] = 0.85, max_momentum: float | list[float] = 0.95,
                 div_factor: float = 25.0, final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        self.optimizer = optimizer

        if total_steps is not None:
            self.total_steps = _int("total_steps", total_steps, lo=1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = _int("epochs", epochs, lo=1) * _int("steps_per_epoch", steps_per_epoch, lo=1)
        else:
            raise ValueError(
                "You must define either total_steps OR (epochs AND steps_per_epoch) "
                f"(got total_steps={total_steps!r}, epochs={epochs!r}, steps_per_epoch={steps_per_epoch!r})"
            )
        pct_start = _real("pct_start", pct_start, lo=0.0, hi=1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"Invalid anneal_strategy: {anneal_strategy!r} (must be 'cos' or 'linear')")
        div_factor = _real("div_factor", div_factor, lo=0.0, lo_open=True)
        final_div_factor = _real("final_div_factor", final_div_factor, lo=0.0, lo_open=True)

        if three_phase:
            self._schedule_phases = [
                {"end_step": float(pct_start * self.total_steps) - 1, "start_lr": "initial_lr",
                 "end_lr": "max_lr", "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": float(2 * pct_start * self.total_steps) - 2, "start_lr": "max_lr",
                 "end_lr": "initial_lr", "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
                {"end_step": self.total_steps - 1, "start_lr": "initial_lr", "end_lr": "min_lr",
                 "start_momentum": "max_momentum", "end_momentum": "max_momentum"},
            ]
        else:
            self._schedule_phases = [
                {"end_step": float(pct_start * self.total_steps) - 1, "start_lr": "initial_lr",
                 "end_lr": "max_lr", "start_momentum": "max_momentum", "end_momentum": "base_momentum"},
                {"end_step": self.total_steps - 1, "start_lr": "max_lr", "end_lr": "min_lr",
                 "start_momentum": "base_momentum", "end_momentum": "max_momentum"},
            ]
        self._anneal_func_type = anneal_strategy

        max_lrs = _per_group("max_lr", optimizer, max_lr, lambda n, v: _real(n, v, lo=0.0))
        last_epoch = _int("last_epoch", last_epoch, lo=-1)
        if last_epoch == -1:
            for group, m in zip(optimizer.param_groups, max_lrs):
                group["initial_lr"] = m / div_factor
                group["max_lr"] = m
                group["min_lr"] = group["initial_lr"] / final_div_factor

        self.cycle_momentum = bool(cycle_momentum)
        if self.cycle_momentum:
            if "momentum" not in optimizer.defaults and "betas" not in optimizer.defaults:
                raise ValueError(
                    f"optimizer must support momentum or beta1 with `cycle_momentum` option enabled "
                    f"({type(optimizer).__name__} has neither 'momentum' nor 'betas')"
                )
            self.use_beta1 = "betas" in optimizer.defaults
            def unit(n: str, v: Any) -> float:
                return _real(n, v, lo=0.0, hi=1.0, hi_open=True)
            max_momentums = _per_group("max_momentum", optimizer, max_momentum, unit)
            base_momentums = _per_group("base_momentum", optimizer, base_momentum, unit)
            if last_epoch == -1:
                for m_mom, b_mom, group in zip(max_momentums, base_momentums, optimizer.param_groups):
                    if self.use_beta1:
                        group["betas"] = (m_mom, *group["betas"][1:])
                    else:
                        group["momentum"] = m_mom
                    group["max_momentum"] = m_mom
                    group["base_momentum"] = b_mom
        super().__init__(optimizer, last_epoch)

    def _anneal_func(self, start: float, end: float, pct: float) -> float:
        if self._anneal_func_type == "cos":
            return self._annealing_cos(start, end, pct)
        return self._annealing_linear(start, end, pct)

    @staticmethod
    def _annealing_cos(start: float, end: float, pct: float) -> float:
        """Cosine anneal from ``start`` to ``end`` as ``pct`` goes from 0 to 1."""
        cos_out = math.cos(math.pi * pct) + 1
        return end + (start - end) / 2.0 * cos_out

    @staticmethod
    def _annealing_linear(start: float, end: float, pct: float) -> float:
        """Linear anneal from ``start`` to ``end`` as ``pct`` goes from 0 to 1."""
        return (end - start) * pct + start

    def get_lr(self) -> list[float]:
        """The next lrs; also sets each group's momentum (or ``betas[0]``) when cycling it."""
        step_num = self.last_epoch
        if step_num > self.total_steps:
            raise ValueError(
                f"Tried to step {step_num} times. The specified number of total steps is {self.total_steps}"
            )
        lrs = []
        last = len(self._schedule_phases) - 1
        for group in self.optimizer.param_groups:
            start_step = 0.0
            for i, phase in enumerate(self._schedule_phases):
                end_step = phase["end_step"]
                if step_num <= end_step or i == last:
                    pct = (step_num - start_step) / (end_step - start_step)
                    computed_lr = self._anneal_func(group[phase["start_lr"]], group[phase["end_lr"]], pct)
                    if self.cycle_momentum:
                        computed_momentum = self._anneal_func(
                            group[phase["start_momentum"]], group[phase["end_momentum"]], pct)
                    break
                start_step = phase["end_step"]
            lrs.append(computed_lr)
            if self.cycle_momentum:
                if self.use_beta1:
                    group["betas"] = (computed_momentum, *group["betas"][1:])
                else:
                    group["momentum"] = computed_momentum
        return lrs


class SequentialLR(LRScheduler):
    """Run ``schedulers`` one after the other, switching at the ``milestones``.

    Typical warm-up then cosine decay::

        warmup = LinearLR(opt, start_factor=0.1, total_iters=5)
        cosine = CosineAnnealingLR(opt, T_max=95)
        sched = SequentialLR(opt, [warmup, cosine], milestones=[5])

    At a milestone the next scheduler restarts from epoch 0 (closed form), as in PyTorch.

    Args:
        optimizer: wrapped optimizer (every scheduler must use this one).
        schedulers: the schedulers (not :class:`ReduceLROnPlateau`).
        milestones: ``len(schedulers) - 1`` strictly increasing epoch indices (integers >= 0).
        last_epoch: index of the last epoch (``-1``: start).
    """

    _state_exclude = LRScheduler._state_exclude + ("_schedulers",)

    def __init__(self, optimizer: Optimizer, schedulers: Sequence[LRScheduler], milestones: Sequence[int],
                 last_epoch: int = -1) -> None:
        _check_optimizer(optimizer)
        schedulers = list(schedulers)
        if len(schedulers) < 1:
            raise ValueError(f"{type(self).__name__} expects at least one scheduler, but got no scheduler.")
        for idx, scheduler in enumerate(schedulers):
            if not isinstance(scheduler, LRScheduler):
                raise TypeError(f"{type(self).__name__}: schedulers[{idx}] is a "
                                f"{type(scheduler).__name__}, not an LRScheduler")
            if isinstance(scheduler, ReduceLROnPlateau):
                raise ValueError(  # noqa: TRY004 (PyTorch raises ValueError here)
                    f"{type(self).__name__} does not support `ReduceLROnPlateau` scheduler as it requires "
                    f"a metric when calling `step`, but got one at index {idx} in schedulers"
                )
            if scheduler.optimizer is not optimizer:
                raise ValueError(
                    f"{type(self).__name__} expects all schedulers to belong to the same optimizer, but "
                    f"scheduler {type(scheduler).__name__} at index {idx} has a different one"
                )
        milestones = _milestone_list("milestones", milestones, strict=True)
        if len(milestones) != len(schedulers) - 1:
            raise ValueError(
                "Sequential Schedulers expects number of schedulers provided to be one more than the number "
                f"of milestone points, but got number of schedulers {len(schedulers)} and the number of "
                f"milestones to be equal to {len(milestones)}"
            )
        last_epoch = _int("last_epoch", last_epoch, lo=-1)
        self._schedulers = schedulers
        self._milestones = milestones
        self.last_epoch = last_epoch + 1
        self.optimizer = optimizer

        # Reset the learning rates, undo the schedulers' initial steps, and
        # perform the initial step of the scheduler meant to run at epoch 0.
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"]
        self.recursive_undo()
        idx = bisect_right(self._milestones, 0)
        self._schedulers[idx]._initial_step()
        self._last_lr = schedulers[idx].get_last_lr()

    def recursive_undo(self, sched: Any = None) -> None:
        """Undo the initial steps performed by the (possibly nested) schedulers' constructors."""
        scheds = self if sched is None else sched
        if hasattr(scheds, "_schedulers"):
            for s in scheds._schedulers:
                self.recursive_undo(s)
        elif hasattr(scheds, "last_epoch"):
            scheds.last_epoch -= 1

    def step(self) -> None:  # type: ignore[override]
        """Advance by one step, delegating to the scheduler of the current phase."""
        self.last_epoch += 1
        idx = bisect_right(self._milestones, self.last_epoch)
        scheduler = self._schedulers[idx]
        if idx > 0 and self._milestones[idx - 1] == self.last_epoch:
            scheduler._update_lr(0)
        else:
            scheduler.step()
        self._last_lr = scheduler.get_last_lr()

    def state_dict(self) -> dict[str, Any]:
        """The state, with the wrapped schedulers' states under ``"_schedulers"``."""
        state = super().state_dict()
        state["_schedulers"] = [s.state_dict() for s in self._schedulers]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        saved = state_dict.get("_schedulers")
        if saved is not None:
            if len(saved) != len(self._schedulers):
                raise ValueError(f"state_dict has {len(saved)} schedulers, this SequentialLR has "
                                 f"{len(self._schedulers)}")
            for s, sd in zip(self._schedulers, saved):
                s.load_state_dict(sd)


class ReduceLROnPlateau(LRScheduler):
    """Reduce the lr by ``factor`` once a metric has stopped improving for ``patience`` epochs.

    Call ``step(metric)`` after each evaluation.

    Args:
        optimizer: wrapped optimizer.
        mode: ``"min"`` (the metric should decrease) or ``"max"``.
        factor: ``new_lr = lr * factor``, in ``[0, 1)``.  Default: 0.1.
        patience: number of epochs without improvement tolerated (integer >= 0).  Default: 10.
        threshold: minimal significant change (>= 0).  Default: 1e-4.
        threshold_mode: ``"rel"`` (``best * (1 -/+ threshold)``) or ``"abs"`` (``best -/+ threshold``).
        cooldown: epochs to wait after a reduction before counting bad epochs again (integer >= 0).
        min_lr: lower bound on the lr (>= 0), or a list with one per group.
        eps: a reduction smaller than this is skipped (>= 0).  Default: 1e-8.

    Unlike the other schedulers it does not touch the lr on construction (and
    sets no ``"initial_lr"``), as in PyTorch.
    """

    def __init__(self, optimizer: Optimizer, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0,
                 min_lr: list[float] | float = 0, eps: float = 1e-8) -> None:
        self.factor = _real("factor", factor, lo=0.0, hi=1.0, hi_open=True)
        _check_optimizer(optimizer)
        self.optimizer = optimizer
        if isinstance(min_lr, (list, tuple)):
            self.default_min_lr: float | None = None
            self.min_lrs = _per_group("min_lr", optimizer, min_lr, lambda n, v: _real(n, v, lo=0.0))
        else:
            self.default_min_lr = _real("min_lr", min_lr, lo=0.0)
            self.min_lrs = [self.default_min_lr] * len(optimizer.param_groups)
        self.patience = _int("patience", patience, lo=0)
        self.cooldown = _int("cooldown", cooldown, lo=0)
        self.eps = _real("eps", eps, lo=0.0)
        self.last_epoch = 0
        self._last_lr = self._current_lrs()
        self._init_is_better(mode=mode, threshold=threshold, threshold_mode=threshold_mode)
        self._reset()

    def _reset(self) -> None:
        """Reset the bad-epoch and cooldown counters."""
        self.best = self.mode_worse
        self.cooldown_counter = 0
        self.num_bad_epochs = 0

    def step(self, metrics: Any, epoch: int | None = None) -> None:  # type: ignore[override]
        """Record ``metrics`` (anything ``float()`` accepts) and reduce the lr if it has plateaued."""
        current = float(metrics)
        if epoch is None:
            epoch = self.last_epoch + 1
        else:
            warnings.warn(EPOCH_DEPRECATION_WARNING, UserWarning, stacklevel=2)
        self.last_epoch = epoch

        if self._is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0  # ignore any bad epochs in cooldown
        if self.num_bad_epochs > self.patience:
            self._reduce_lr(epoch)
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = self._current_lrs()

    def _reduce_lr(self, epoch: int) -> None:
        groups = self.optimizer.param_groups
        if len(groups) != len(self.min_lrs):
            if self.default_min_lr is None:
                raise RuntimeError(
                    f"The number of param groups in the optimizer ({len(groups)}) differs from when "
                    f"ReduceLROnPlateau was initialized ({len(self.min_lrs)}); set `min_lrs` to match."
                )
            self.min_lrs = [self.default_min_lr] * len(groups)
        for i, group in enumerate(groups):
            old_lr = float(group["lr"])
            new_lr = max(old_lr * self.factor, self.min_lrs[i])
            if old_lr - new_lr > self.eps:
                group["lr"] = new_lr

    @property
    def in_cooldown(self) -> bool:
        return self.cooldown_counter > 0

    def _is_better(self, a: float, best: float) -> bool:
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min" and self.threshold_mode == "abs":
            return a < best - self.threshold
        if self.mode == "max" and self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    def _init_is_better(self, mode: str, threshold: float, threshold_mode: str) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"Invalid mode: {mode!r} (must be 'min' or 'max')")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError(f"Invalid threshold_mode: {threshold_mode!r} (must be 'rel' or 'abs')")
        self.mode_worse = math.inf if mode == "min" else -math.inf
        self.mode = mode
        self.threshold = _real("threshold", threshold, lo=0.0)
        self.threshold_mode = threshold_mode

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._init_is_better(mode=self.mode, threshold=self.threshold, threshold_mode=self.threshold_mode)

    def __repr__(self) -> str:
        return (f"ReduceLROnPlateau(mode={self.mode!r}, factor={self.factor}, patience={self.patience}, "
                f"best={self.best}, num_bad_epochs={self.num_bad_epochs})")


# --------------------------------------------------------------------------- #
# Factory
# --------------------------------------------------------------------------- #
#: Scheduler classes by the (lower-case) names :func:`get_scheduler` accepts.
SCHEDULERS: dict[str, type[LRScheduler]] = {
    "step": StepLR,
    "multistep": MultiStepLR,
    "exponential": ExponentialLR,
    "cosine": CosineAnnealingLR,
    "onecycle": OneCycleLR,
    "linear": LinearLR,
    "plateau": ReduceLROnPlateau,
}


def get_scheduler(name: str, optimizer: Optimizer, **kwargs: Any) -> LRScheduler:
    """Build a scheduler from its short name: ``SCHEDULERS[name](optimizer, **kwargs)``.

    Names (case-insensitive; ``-`` and ``_`` ignored): ``"step"`` (:class:`StepLR`),
    ``"multistep"`` (:class:`MultiStepLR`), ``"exponential"`` (:class:`ExponentialLR`),
    ``"cosine"`` (:class:`CosineAnnealingLR`), ``"onecycle"`` (:class:`OneCycleLR`),
    ``"linear"`` (:class:`LinearLR`), ``"plateau"`` (:class:`ReduceLROnPlateau`;
    step it with the metric).

    Raises:
        ValueError: unknown name (the message lists the valid ones), or a bad argument.
        TypeError: ``name`` is not a string, or a required argument is missing.
    """
    if not isinstance(name, str):
        raise TypeError(f"scheduler name must be a string, got {type(name).__name__}")
    key = name.strip().lower().replace("-", "").replace("_", "")
    cls = SCHEDULERS.get(key)
    if cls is None:
        valid = ", ".join(repr(n) for n in SCHEDULERS)
        raise ValueError(f"Unknown scheduler {name!r}; valid names are: {valid}")
    return cls(optimizer, **kwargs)

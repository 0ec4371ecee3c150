"""Learning-rate schedules with PyTorch's names and semantics.

A scheduler changes ``group["lr"]`` of an optimizer's param groups each time its ``step()`` is
called — per iteration or per epoch, as *you* call it (the counter ``last_epoch`` counts calls,
whatever they stand for). As in PyTorch, building a scheduler counts as step 0 and records each
group's starting rate as ``group["initial_lr"]`` (the base rates); ``get_last_lr()`` is the list
of the rates it last set.

* :class:`StepLR` ``lr = base * gamma ** (t // step_size)``
* :class:`MultiStepLR` ``lr = base * gamma ** (number of milestones <= t)`` (ResNet CIFAR:
  ``MultiStepLR(opt, [32000, 48000], 0.1)`` stepped per iteration)
* :class:`ReduceLROnPlateau` ``lr *= factor`` when a metric stopped improving for ``patience``
  steps (AlexNet: /10 when the validation error stops improving)
* :class:`Warmup` a constant or linear warm-up that ends after a number of steps or when a
  condition on a metric holds (ResNet-110: 0.01 until the training error is below 80%, then 0.1),
  optionally followed by another schedule.

Every scheduler has ``state_dict()`` (JSON-able) and ``load_state_dict()``.
"""
import bisect
import math

# ----------------------------------------------------------------------------------------------
# base


class LRScheduler:
    """Base of the schedules whose rate is a function of the step count ``t = last_epoch``:
    subclasses define ``factor(t)`` (the multiplier of each base rate), or ``get_lr()``."""

    wants_metric = False  # True where step() uses a metric (the training loop passes one)

    def __init__(self, optimizer, last_epoch=-1):
        self.optimizer = optimizer
        if last_epoch == -1:
            for g in optimizer.param_groups:
                g.setdefault("initial_lr", g["lr"])
        else:
            for i, g in enumerate(optimizer.param_groups):
                if "initial_lr" not in g:
                    raise KeyError(f"param group {i} has no 'initial_lr': last_epoch={last_epoch}"
                                   " (resuming) needs an optimizer that was scheduled before")
        self.base_lrs = [g["initial_lr"] for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._last_lr = [g["lr"] for g in optimizer.param_groups]
        self.step()

    def factor(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def get_lr(self):
        """The rates for the current ``last_epoch``."""
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]

    def step(self, metric=None):
        """Advance the count by one and set the rates (``metric`` is ignored here)."""
        self.last_epoch += 1
        self._set(self.get_lr())

    def _set(self, lrs):
        for g, lr in zip(self.optimizer.param_groups, lrs):
            g["lr"] = lr
        self._last_lr = list(lrs)

    def get_last_lr(self):
        """The rates the scheduler set last (one per param group)."""
        return list(self._last_lr)

    def state_dict(self):
        """Everything but the optimizer (JSON-able numbers and lists)."""
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)
        self._last_lr = list(self._last_lr)
        self.base_lrs = list(self.base_lrs)

    def __repr__(self):
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self.get_last_lr()})"


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (t // step_size)``: divide by 1/gamma every ``step_size``
    steps."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        if int(step_size) != step_size or step_size < 1:
            raise ValueError(f"StepLR: step_size must be a positive integer, got {step_size!r}")
        self.step_size = int(step_size)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def factor(self, t):
        return self.gamma ** (t // self.step_size)


class MultiStepLR(LRScheduler):
    """``lr = base_lr * gamma ** k``, k = the number of milestones <= t (so the rate drops at
    the step whose count equals a milestone). A milestone listed twice counts twice, as in
    PyTorch."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        self.milestones = sorted(int(m) for m in milestones)
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def factor(self, t):
        return self.gamma ** bisect.bisect_right(self.milestones, t)


# ----------------------------------------------------------------------------------------------
# warm-up


class Warmup(LRScheduler):
    """A warm-up phase at ``factor * lr``, ending on a step count or on a condition.

    ``Warmup(optimizer, factor=0.1, steps=None, until=None, mode="constant", after=None)``

    While warming up, the rate of each group is ``f(t) * L``, where L is the rate the schedule
    ``after`` sets for that step (or the base rate, without ``after``) and

    * ``mode="constant"``: ``f(t) = factor``;
    * ``mode="linear"``: ``f(t) = factor + (1 - factor) * t / steps`` (needs ``steps``), rising
      from ``factor`` at t = 0 to 1 at t = steps.

    The warm-up ends, for good, at the first ``step(metric)`` after which ``t >= steps`` (if
    ``steps`` is given) or ``until(metric)`` is true (if ``until`` is given; it is called at every
    step with the metric passed to ``step``, None when none was passed). From then on the rate is
    L. ``finished`` says whether it has ended, ``finished_at`` at which step.

    ``after``, a step-count schedule (StepLR, MultiStepLR, ...) built on the same optimizer
    *before* the Warmup, is stepped by every ``Warmup.step()`` — during the warm-up too — so its
    milestones count from the start of training. ReduceLROnPlateau is not allowed as ``after``
    (its rate depends on the metric history); step it yourself once ``finished``.

    ResNet-110 on CIFAR-10 (lr 0.1, /10 at 32k and 48k iterations, 0.01 until the training error
    is below 80%), stepped per iteration with the batch's training error::

        main = MultiStepLR(opt, [32000, 48000], 0.1)
        sched = Warmup(opt, factor=0.1, until=lambda err: err is not None and err < 0.8,
                       after=main)
        ...
        sched.step(train_error)

    The condition is not saved by ``state_dict()`` (a function): pass it again when resuming.
    """

    def __init__(self, optimizer, factor=0.1, steps=None, until=None, mode="constant",
                 after=None, last_epoch=-1):
        if mode not in ("constant", "linear"):
            raise ValueError(f"Warmup: mode must be 'constant' or 'linear', got {mode!r}")
        if mode == "linear" and not steps:
            raise ValueError("Warmup: mode='linear' needs steps (the length of the ramp)")
        if steps is None and until is None:
            raise ValueError("Warmup: give steps, until, or both (when does the warm-up end?)")
        if steps is not None and (int(steps) != steps or steps < 0):
            raise ValueError(f"Warmup: steps must be a non-negative integer, got {steps!r}")
        if until is not None and not callable(until):
            raise TypeError(f"Warmup: until must be callable (metric -> bool), got {until!r}")
        if after is not None:
            if isinstance(after, ReduceLROnPlateau):
                raise TypeError("Warmup: ReduceLROnPlateau cannot be the 'after' schedule; step "
                                "it yourself once warmup.finished is True")
            if after.optimizer is not optimizer:
                raise ValueError("Warmup: 'after' must schedule the same optimizer")
        self.factor_ = float(factor)
        self.steps = None if steps is None else int(steps)
        self.until = until
        self.mode = mode
        self.after = after
        self.finished = self.steps == 0
        self.finished_at = 0 if self.finished else None
        self.wants_metric = until is not None
        # The constructor's step 0 must not advance `after` (built already, at its step 0).
        self._constructing = True
        super().__init__(optimizer, last_epoch)
        self._constructing = False

    def _warm_factor(self, t):
        if self.mode == "constant":
            return self.factor_
        return self.factor_ + (1.0 - self.factor_) * min(t, self.steps) / self.steps

    def step(self, metric=None):
        """Advance one step; ``metric`` is handed to the ``until`` condition."""
        self.last_epoch += 1
        if self.after is not None and not self._constructing:
            self.after.step()
        if not self.finished and not self._constructing:
            if (self.steps is not None and self.last_epoch >= self.steps) or \
                    (self.until is not None and self.until(metric)):
                self.finished = True
                self.finished_at = self.last_epoch
        if self.after is not None:
            target = self.after.get_last_lr()
        else:
            target = list(self.base_lrs)
        if self.finished:
            self._set(target)
        else:
            f = self._warm_factor(self.last_epoch)
            self._set([lr * f for lr in target])

    def state_dict(self):
        st = {k: v for k, v in self.__dict__.items()
              if k not in ("optimizer", "until", "after", "_constructing")}
        st["after"] = None if self.after is None else self.after.state_dict()
        return st

    def load_state_dict(self, state_dict):
        st = dict(state_dict)
        after = st.pop("after", None)
        if (after is None) != (self.after is None):
            raise ValueError("Warmup.load_state_dict: the saved warm-up "
                             f"{'had' if after is not None else 'had no'} 'after' schedule, this "
                             f"one {'has' if self.after is not None else 'has none'}")
        super().load_state_dict(st)
        if after is not None:
            self.after.load_state_dict(after)


# ----------------------------------------------------------------------------------------------
# plateau


class ReduceLROnPlateau:
    """Multiply the rate by ``factor`` when a metric has not improved for ``patience`` steps.

    PyTorch's arguments and rules: ``step(metric)`` counts a step as bad unless the metric beats
    the best so far — ``mode="min"``: ``metric < best * (1 - threshold)`` (``threshold_mode=
    "rel"``) or ``metric < best - threshold`` ("abs"); ``mode="max"`` mirrored. After more than
    ``patience`` bad steps in a row each group's rate becomes ``max(lr * factor, min_lr)``
    (changes smaller than ``eps`` are skipped) and the next ``cooldown`` steps are not counted.
    """

    wants_metric = True

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0, eps=1e-8):
        if factor >= 1.0:
            raise ValueError(f"ReduceLROnPlateau: factor must be < 1, got {factor}")
        if mode not in ("min", "max"):
            raise ValueError(f"ReduceLROnPlateau: mode must be 'min' or 'max', got {mode!r}")
        if threshold_mode not in ("rel", "abs"):
            raise ValueError("ReduceLROnPlateau: threshold_mode must be 'rel' or 'abs', got "
                             f"{threshold_mode!r}")
        self.optimizer = optimizer
        n = len(optimizer.param_groups)
        if isinstance(min_lr, (list, tuple)):
            if len(min_lr) != n:
                raise ValueError(f"ReduceLROnPlateau: {len(min_lr)} min_lr values for {n} "
                                 "param groups")
            self.min_lrs = [float(v) for v in min_lr]
        else:
            self.min_lrs = [float(min_lr)] * n
        self.mode = mode
        self.factor = float(factor)
        self.patience = int(patience)
        self.threshold = float(threshold)
        self.threshold_mode = threshold_mode
        self.cooldown = int(cooldown)
        self.eps = float(eps)
        self.best = math.inf if mode == "min" else -math.inf
        self.num_bad_epochs = 0
        self.cooldown_counter = 0
        self.last_epoch = 0
        self._last_lr = [g["lr"] for g in optimizer.param_groups]

    def is_better(self, a, best):
        if self.mode == "min" and self.threshold_mode == "rel":
            return a < best * (1.0 - self.threshold)
        if self.mode == "min":
            return a < best - self.threshold
        if self.threshold_mode == "rel":
            return a > best * (self.threshold + 1.0)
        return a > best + self.threshold

    @property
    def in_cooldown(self):
        return self.cooldown_counter > 0

    def step(self, metric):
        """Record ``metric`` (e.g. the validation error of this epoch) and maybe reduce."""
        if metric is None:
            raise TypeError("ReduceLROnPlateau.step needs the metric (e.g. validation error)")
        current = float(metric)
        self.last_epoch += 1
        if self.is_better(current, self.best):
            self.best = current
            self.num_bad_epochs = 0
        else:
            self.num_bad_epochs += 1
        if self.in_cooldown:
            self.cooldown_counter -= 1
            self.num_bad_epochs = 0
        if self.num_bad_epochs > self.patience:
            self._reduce_lr()
            self.cooldown_counter = self.cooldown
            self.num_bad_epochs = 0
        self._last_lr = [g["lr"] for g in self.optimizer.param_groups]

    def _reduce_lr(self):
        for g, min_lr in zip(self.optimizer.param_groups, self.min_lrs):
            old = g["lr"]
            new = max(old * self.factor, min_lr)
            if old - new > self.eps:
                g["lr"] = new

    def get_last_lr(self):
        return list(self._last_lr)

    def state_dict(self):
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state_dict):
        self.__dict__.update(state_dict)
        self.min_lrs = list(self.min_lrs)
        self._last_lr = list(self._last_lr)

    def __repr__(self):
        return (f"ReduceLROnPlateau(mode={self.mode!r}, factor={self.factor}, patience="
                f"{self.patience}, best={self.best}, lr={self.get_last_lr()})")

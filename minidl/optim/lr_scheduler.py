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
* :class:`LambdaLR` ``lr = base * lr_lambda(t)`` (a function per group)
* :class:`CosineAnnealingLR` ``lr = eta_min + (base - eta_min) * (1 + cos(pi t / T_max)) / 2``
* :class:`OneCycleLR` the 1cycle policy: up to ``max_lr``, then down, momentum the other way
* :class:`Warmup` a constant or linear warm-up that ends after a number of steps or when a
  condition on a metric holds (ResNet-110: 0.01 until the training error is below 80%, then 0.1),
  optionally followed by another schedule.

Every scheduler has ``state_dict()`` (JSON-able) and ``load_state_dict()``. Arguments are
checked where they enter: NaN or negative rates and factors, and milestones or step counts that
are not non-negative integers (``MultiStepLR(opt, "10")`` raises), give an error naming the
argument.
"""
import bisect
import math
import types

from minidl.optim.optimizer import check_index, check_number

# ----------------------------------------------------------------------------------------------
# base


class LRScheduler:
    """Base of the schedules: the count ``last_epoch``, the base rates, ``get_last_lr()``,
    ``state_dict()`` / ``load_state_dict()``.

    Schedules whose rate is a function of the step count ``t = last_epoch`` define
    ``multiplier(t)`` (the multiplier of each base rate) or ``get_lr()``; the others (Warmup,
    ReduceLROnPlateau) override ``step``."""

    wants_metric = False  # True where step() uses a metric (the training loop passes one)

    def __init__(self, optimizer, last_epoch=-1):
        self.optimizer = optimizer
        last_epoch = _last_epoch(type(self).__name__, last_epoch)
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

    def multiplier(self, t):  # pragma: no cover - abstract
        raise NotImplementedError(f"{type(self).__name__} defines neither multiplier(t) nor "
                                  "get_lr()")

    def get_lr(self):
        """The rates for the current ``last_epoch``."""
        f = self.multiplier(self.last_epoch)
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
        """Restore what :meth:`state_dict` returned (lists stay lists after a JSON round trip)."""
        self.__dict__.update(state_dict)
        for k in self._list_state:
            setattr(self, k, list(getattr(self, k)))

    _list_state = ("_last_lr", "base_lrs")

    def __repr__(self):
        return f"{type(self).__name__}(last_epoch={self.last_epoch}, lr={self.get_last_lr()})"


class StepLR(LRScheduler):
    """``lr = base_lr * gamma ** (t // step_size)``: divide by 1/gamma every ``step_size``
    steps."""

    def __init__(self, optimizer, step_size, gamma=0.1, last_epoch=-1):
        self.step_size = check_index("StepLR", "step_size", step_size, 1)
        self.gamma = float(check_number("StepLR", "gamma", gamma))
        super().__init__(optimizer, last_epoch)

    def multiplier(self, t):
        return self.gamma ** (t // self.step_size)


class MultiStepLR(LRScheduler):
    """``lr = base_lr * gamma ** k``, k = the number of milestones <= t (so the rate drops at
    the step whose count equals a milestone). A milestone listed twice counts twice, as in
    PyTorch."""

    def __init__(self, optimizer, milestones, gamma=0.1, last_epoch=-1):
        if isinstance(milestones, (str, bytes)) or not hasattr(milestones, "__iter__"):
            raise TypeError(f"MultiStepLR: milestones must be a list of non-negative integers, "
                            f"got {milestones!r}")
        self.milestones = sorted(check_index("MultiStepLR", f"milestones[{i}]", m)
                                 for i, m in enumerate(milestones))
        self.gamma = float(check_number("MultiStepLR", "gamma", gamma))
        super().__init__(optimizer, last_epoch)

    def multiplier(self, t):
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
        if steps is not None:
            steps = check_index("Warmup", "steps", steps)
        check_number("Warmup", "factor", factor)
        if until is not None and not callable(until):
            raise TypeError(f"Warmup: until must be callable (metric -> bool), got {until!r}")
        if after is not None:
            if isinstance(after, ReduceLROnPlateau):
                raise TypeError("Warmup: ReduceLROnPlateau cannot be the 'after' schedule; step "
                                "it yourself once warmup.finished is True")
            if after.optimizer is not optimizer:
                raise ValueError("Warmup: 'after' must schedule the same optimizer")
        self.factor = float(factor)
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
            return self.factor
        return self.factor + (1.0 - self.factor) * min(t, self.steps) / self.steps

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


class ReduceLROnPlateau(LRScheduler):
    """Multiply the rate by ``factor`` when a metric has not improved for ``patience`` steps.

    PyTorch's arguments and rules: ``step(metric)`` counts a step as bad unless the metric beats
    the best so far — ``mode="min"``: ``metric < best * (1 - threshold)`` (``threshold_mode=
    "rel"``) or ``metric < best - threshold`` ("abs"); ``mode="max"`` mirrored. After more than
    ``patience`` bad steps in a row each group's rate becomes ``max(lr * factor, min_lr)``
    (changes smaller than ``eps`` are skipped) and the next ``cooldown`` steps are not counted.

    Its rate depends on the metric history, not on the step count, so building it changes no
    rate (unlike the other schedules, it takes no ``step()`` in its constructor, as torch); the
    count, ``get_last_lr``, ``state_dict`` and ``load_state_dict`` are the base class's.
    """

    wants_metric = True

    def __init__(self, optimizer, mode="min", factor=0.1, patience=10, threshold=1e-4,
                 threshold_mode="rel", cooldown=0, min_lr=0, eps=1e-8):
        check_number("ReduceLROnPlateau", "factor", factor, 0.0, 1.0, high_open=True)
        check_index("ReduceLROnPlateau", "patience", patience)
        check_index("ReduceLROnPlateau", "cooldown", cooldown)
        check_number("ReduceLROnPlateau", "threshold", threshold)
        check_number("ReduceLROnPlateau", "eps", eps)
        for m in (min_lr if isinstance(min_lr, (list, tuple)) else [min_lr]):
            check_number("ReduceLROnPlateau", "min_lr", m)
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

    _list_state = ("_last_lr", "min_lrs")

    def __repr__(self):
        return (f"ReduceLROnPlateau(mode={self.mode!r}, factor={self.factor}, patience="
                f"{self.patience}, best={self.best}, lr={self.get_last_lr()})")


# ----------------------------------------------------------------------------------------------
# PyTorch's other schedules


class LambdaLR(LRScheduler):
    """``lr = base_lr * lr_lambda(t)``: ``lr_lambda`` is a function of the step count, or a
    list of such functions, one per param group (torch's ``LambdaLR``).

    ``state_dict()`` keeps, as torch does, the ``__dict__`` of callable *objects* (a lambda or a
    plain function is not saved: pass it again when resuming)."""

    def __init__(self, optimizer, lr_lambda, last_epoch=-1):
        n = len(optimizer.param_groups)
        if isinstance(lr_lambda, (list, tuple)):
            if len(lr_lambda) != n:
                raise ValueError(f"LambdaLR: expected {n} lr_lambdas (one per param group), got "
                                 f"{len(lr_lambda)}")
            lambdas = list(lr_lambda)
        else:
            lambdas = [lr_lambda] * n
        for i, fn in enumerate(lambdas):
            if not callable(fn):
                raise TypeError(f"LambdaLR: lr_lambda[{i}] must be callable (step -> factor), "
                                f"got {fn!r}")
        self.lr_lambdas = lambdas
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        return [base * fn(self.last_epoch) for base, fn in zip(self.base_lrs, self.lr_lambdas)]

    def state_dict(self):
        st = {k: v for k, v in self.__dict__.items() if k not in ("optimizer", "lr_lambdas")}
        st["lr_lambdas"] = [None if isinstance(fn, types.FunctionType) else dict(fn.__dict__)
                            for fn in self.lr_lambdas]
        return st

    def load_state_dict(self, state_dict):
        st = dict(state_dict)
        saved = st.pop("lr_lambdas", [None] * len(self.lr_lambdas))
        super().load_state_dict(st)
        for fn, d in zip(self.lr_lambdas, saved):
            if d is not None:
                fn.__dict__.update(d)


class CosineAnnealingLR(LRScheduler):
    """``lr = eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2`` (SGDR without
    restarts; torch's ``CosineAnnealingLR``).

    The closed form: torch computes the same values recursively from the group's current rate
    (equal while this is the only schedule writing the rate); here, as with the other schedules
    of this module, the rate is a function of ``t`` alone, so the schedule can serve as the
    ``after`` of a :class:`Warmup`. Past ``T_max`` the cosine goes on (back up over the next
    ``T_max`` steps), as torch's does."""

    def __init__(self, optimizer, T_max, eta_min=0.0, last_epoch=-1):
        self.T_max = check_index("CosineAnnealingLR", "T_max", T_max, 1)
        self.eta_min = check_number("CosineAnnealingLR", "eta_min", eta_min)
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        c = (1 + math.cos(math.pi * self.last_epoch / self.T_max)) / 2
        return [self.eta_min + (base - self.eta_min) * c for base in self.base_lrs]


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin 2017), torch's ``OneCycleLR`` with its arguments::

        OneCycleLR(optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                   pct_start=0.3, anneal_strategy="cos", cycle_momentum=True,
                   base_momentum=0.85, max_momentum=0.95, div_factor=25.0,
                   final_div_factor=1e4, three_phase=False, last_epoch=-1)

    Stepped once per batch (``total_steps`` or ``epochs * steps_per_epoch`` times). The rate
    rises from ``max_lr / div_factor`` to ``max_lr`` over the first ``pct_start`` of the steps,
    then falls to ``max_lr / div_factor / final_div_factor`` (``three_phase``: back to the
    start first, then down), cosine or linear. With ``cycle_momentum`` the momentum
    (``group["momentum"]``, or beta1 of ``group["betas"]`` for Adam/AdamW) moves the other way,
    between ``max_momentum`` and ``base_momentum``. ``max_lr`` and the momenta may be lists (one
    per group). Like torch, the constructor overwrites each group's ``initial_lr`` and records
    ``max_lr``, ``min_lr``, ``max_momentum``, ``base_momentum`` in the groups; stepping past
    ``total_steps`` raises."""

    def __init__(self, optimizer, max_lr, total_steps=None, epochs=None, steps_per_epoch=None,
                 pct_start=0.3, anneal_strategy="cos", cycle_momentum=True, base_momentum=0.85,
                 max_momentum=0.95, div_factor=25.0, final_div_factor=1e4, three_phase=False,
                 last_epoch=-1):
        name = "OneCycleLR"
        if total_steps is not None:
            self.total_steps = check_index(name, "total_steps", total_steps, 1)
        elif epochs is not None and steps_per_epoch is not None:
            self.total_steps = (check_index(name, "epochs", epochs, 1)
                                * check_index(name, "steps_per_epoch", steps_per_epoch, 1))
        else:
            raise ValueError("OneCycleLR: give total_steps, or epochs and steps_per_epoch")
        check_number(name, "pct_start", pct_start, 0.0, 1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"OneCycleLR: anneal_strategy must be 'cos' or 'linear', got "
                             f"{anneal_strategy!r}")
        check_number(name, "div_factor", div_factor, 0.0, low_open=True)
        check_number(name, "final_div_factor", final_div_factor, 0.0, low_open=True)
        self.anneal_strategy = anneal_strategy
        self.three_phase = bool(three_phase)
        t = self.total_steps
        if self.three_phase:
            self._schedule_phases = [
                dict(end_step=float(pct_start * t) - 1, start_lr="initial_lr", end_lr="max_lr",
                     start_momentum="max_momentum", end_momentum="base_momentum"),
                dict(end_step=float(2 * pct_start * t) - 2, start_lr="max_lr",
                     end_lr="initial_lr", start_momentum="base_momentum",
                     end_momentum="max_momentum"),
                dict(end_step=t - 1, start_lr="initial_lr", end_lr="min_lr",
                     start_momentum="max_momentum", end_momentum="max_momentum")]
        else:
            self._schedule_phases = [
                dict(end_step=float(pct_start * t) - 1, start_lr="initial_lr", end_lr="max_lr",
                     start_momentum="max_momentum", end_momentum="base_momentum"),
                dict(end_step=t - 1, start_lr="max_lr", end_lr="min_lr",
                     start_momentum="base_momentum", end_momentum="max_momentum")]
        groups = optimizer.param_groups
        max_lrs = _per_group(name, "max_lr", max_lr, len(groups))
        last_epoch = _last_epoch(name, last_epoch)
        if last_epoch == -1:
            for g, m in zip(groups, max_lrs):
                g["initial_lr"] = m / div_factor
                g["max_lr"] = m
                g["min_lr"] = g["initial_lr"] / final_div_factor
        self.cycle_momentum = bool(cycle_momentum)
        if self.cycle_momentum:
            defaults = getattr(optimizer, "defaults", {})
            if "momentum" not in defaults and "betas" not in defaults:
                raise ValueError("OneCycleLR: cycle_momentum=True needs an optimizer with "
                                 "momentum or betas (pass cycle_momentum=False)")
            self.use_beta1 = "betas" in defaults
            maxm = _per_group(name, "max_momentum", max_momentum, len(groups))
            basem = _per_group(name, "base_momentum", base_momentum, len(groups))
            if last_epoch == -1:
                for g, mm, bm in zip(groups, maxm, basem):
                    self._set_momentum(g, mm)
                    g["max_momentum"] = mm
                    g["base_momentum"] = bm
        super().__init__(optimizer, last_epoch)

    def _set_momentum(self, g, m):
        if self.use_beta1:
            g["betas"] = (m, *g["betas"][1:])
        else:
            g["momentum"] = m

    def _anneal(self, start, end, pct):
        if self.anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def get_lr(self):
        """The rates at ``last_epoch`` (and, with ``cycle_momentum``, sets the momenta)."""
        t = self.last_epoch
        if t > self.total_steps:
            raise ValueError(f"OneCycleLR: stepped {t} times, but total_steps is "
                             f"{self.total_steps}")
        lrs = []
        for g in self.optimizer.param_groups:
            start = 0.0
            for i, ph in enumerate(self._schedule_phases):
                end = ph["end_step"]
                if t <= end or i == len(self._schedule_phases) - 1:
                    pct = (t - start) / (end - start)
                    lr = self._anneal(g[ph["start_lr"]], g[ph["end_lr"]], pct)
                    if self.cycle_momentum:
                        self._set_momentum(g, self._anneal(g[ph["start_momentum"]],
                                                           g[ph["end_momentum"]], pct))
                    break
                start = end
            lrs.append(lr)
        return lrs


def _per_group(owner, name, value, n):
    """A number for every group, or a list/tuple with one per group; each checked >= 0."""
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{owner}: expected {n} values of {name} (one per param group), "
                             f"got {len(value)}")
        vals = list(value)
    else:
        vals = [value] * n
    for i, v in enumerate(vals):
        check_number(owner, name if n == 1 else f"{name}[{i}]", v)
    return vals


def _last_epoch(owner, last_epoch):
    """``last_epoch``: -1 (a fresh start) or the index of the last step taken (resuming)."""
    return check_index(owner, "last_epoch", last_epoch, -1)
